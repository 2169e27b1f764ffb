//! The ring-buffer path: raw `EVENTS` records (probe-common's wire structs, as the kernel writes
//! them) through decode -> correlator -> cycle -> the output stream, in any order and at any
//! kernel time. Input: a sequence of operations, each a tag byte then its operands:
//! `0` u16 length + that many record bytes (one ring record); `1` u64 "now" (the time the loop
//! reads the next records at); `2` u32 pid + u64 RSS (a kubelet sample); `3` u64 (an expire
//! tick). Built from the golden ring recordings by `cargo xtask fuzz`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oomprobe::{
    cgroup::MemcgState,
    clock::Clock,
    cycle::{Cycle, CycleConfig, KubeletNow, Party},
    forensics::{Correlator, KillRecord, Node, ProcSnapshot},
    kernel::events::{self, Event},
    output::Output,
};

/// A node whose processes and cgroups are gone: what the records say comes from the ring.
struct GoneNode;

impl Node for GoneNode {
    fn snapshot(&self, _: u32) -> Option<ProcSnapshot> {
        None
    }
    fn oom_domain(&self, _: Option<&str>, _: Option<&str>) -> Option<MemcgState> {
        None
    }
    fn memcg_state(&self, _: &str) -> Option<MemcgState> {
        None
    }
    fn cgroup_by_id(&self, _: u64) -> Option<String> {
        None
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn kubelet_now(pid: u32, rss_bytes: u64) -> KubeletNow {
    KubeletNow {
        pid,
        rss_bytes,
        usage_bytes: Some(rss_bytes),
        limit_bytes: Some(512 << 20),
        mapped_bytes: rss_bytes,
        cpu_seconds: 1.5,
        node_available_bytes: None,
        node_total_bytes: None,
    }
}

fn render(rec: &KillRecord, cycle: &mut Cycle) {
    let out = Output::Kill(Box::new(rec.clone()));
    let _ = out.json();
    let _ = out.text();
    let party = if rec.victim.comm == "kubelet" {
        Party::Kubelet
    } else {
        Party::Other
    };
    if let Some(ev) = cycle.on_kill(rec, party) {
        let out = Output::Stage(ev);
        let _ = out.json();
        let _ = out.text();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut correlator = Correlator::new(GoneNode, Clock::with_offset(1_780_000_000_000_000_000));
    let mut cycle = Cycle::new(CycleConfig::default());
    let mut now = 0u64;
    while let Some(tag) = input.u8() {
        let mut records = Vec::new();
        let mut stages = Vec::new();
        match tag % 4 {
            0 => {
                let Some(len) = input.u16() else { break };
                let Some(bytes) = input.take(usize::from(len)) else {
                    break;
                };
                match events::decode(bytes) {
                    Ok(Event::KubeletExec(e)) => {
                        stages.extend(
                            cycle.on_kubelet_start(e.ktime_ns, kubelet_now(e.tgid, 300 << 20)),
                        );
                    }
                    Ok(ev) => {
                        let _ = ev.field_errors();
                        records.extend(correlator.on_event_at(ev, Some(now)));
                    }
                    Err(e) => {
                        let _ = (e.reason(), e.to_string());
                    }
                }
            }
            1 => {
                let Some(t) = input.u64() else { break };
                now = t;
            }
            2 => {
                let (Some(pid), Some(rss)) = (input.u32(), input.u64()) else {
                    break;
                };
                stages.extend(cycle.on_sample(now, kubelet_now(pid, rss)));
            }
            _ => {
                let Some(t) = input.u64() else { break };
                records.extend(correlator.expire(t));
            }
        }
        for rec in &records {
            render(rec, &mut cycle);
        }
        for ev in stages {
            let out = Output::Stage(ev);
            let _ = out.json();
            let _ = out.text();
        }
    }
    for rec in correlator.expire(now.saturating_add(10_000_000_000)) {
        render(&rec, &mut cycle);
    }
});
