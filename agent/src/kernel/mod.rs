//! The kernel side: reading this kernel's layouts, loading and attaching the programs, their
//! maps, and the event ring from read to decoded event, in that order.
pub mod btf;
pub mod mem_layout; // where rss_stat, memcg counters and oom_group live, from BTF
pub mod tracefs;
pub mod config;
pub mod probes;
pub mod maps;
pub mod ring;
pub mod events;
