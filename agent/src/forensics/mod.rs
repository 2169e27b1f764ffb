//! Per-kill forensics: the record and its rendering, the correlator that builds it from the
//! decoded kernel events, and the live node view the correlator consults.
pub mod correlator;
pub mod kill_group;
pub mod node;
pub mod record;

pub use self::{
    correlator::{Correlator, CorrelatorStats, EXIT_TIMEOUT_NS, VICTIM_GRACE_NS},
    node::{LiveNode, Node, ProcSnapshot},
    record::{delivery_name, si_code_name, KillKind, KillRecord},
};
