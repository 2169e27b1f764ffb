//! The `kubelet_oom_kills` check, judged on recent kills. The cgroup's own counter
//! (`memory.events` or v1 `memory.oom_control`, `oom_kill`) counts since the cgroup was created:
//! one kill last month would make every run BAD. The kernel log dates each kill: its `oom-kill:`
//! summary line (Linux 4.19+, `dump_oom_summary` in mm/oom_kill.c) names the victim's cgroup
//! (`task_memcg`), and its record carries the time since boot. The check is BAD for kills of
//! tasks in the kubelet's cgroup (or below it, as the counter counts them) in the last
//! [`RECENT_S`]; the counter's total is shown as information.
use std::io::Read as _;

use super::{check, Check, Health};

/// How far back a kill counts as recent: an hour, the OOM flap cycle's scale (a kubelet
/// OOM-killed, restarted, reconciling); a kill before it no longer judges the node now.
pub const RECENT_S: f64 = 3600.0;

/// One OOM kill from the kernel log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogKill {
    /// Seconds since boot (the record's timestamp).
    pub t: f64,
    /// The victim's memory cgroup, as the kernel prints it (`/kubelet.slice/kubelet.service`).
    pub task_memcg: String,
    pub task: String,
    pub pid: u32,
}

/// What the kernel log holds: its OOM kills and how far back it reaches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelLog {
    pub kills: Vec<LogKill>,
    /// Seconds since boot of the oldest record still in the log (older ones were overwritten).
    pub from: Option<f64>,
}

/// Parses `/dev/kmsg` records (`PRI,SEQ,TS_USEC,FLAGS;MESSAGE`, continuation lines starting
/// with a space are skipped). Lines that are not records are ignored.
pub fn parse_kmsg(text: &str) -> KernelLog {
    let mut log = KernelLog::default();
    for line in text.lines().filter(|l| !l.starts_with(' ')) {
        let Some((head, msg)) = line.split_once(';') else {
            continue;
        };
        let Some(usec) = head.split(',').nth(2).and_then(|t| t.parse::<u64>().ok()) else {
            continue;
        };
        let t = usec as f64 / 1e6;
        log.from = Some(log.from.map_or(t, |f: f64| f.min(t)));
        let Some(fields) = msg.strip_prefix("oom-kill:") else {
            continue;
        };
        let field = |k: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
        };
        if let (Some(memcg), Some(task), Some(pid)) = (
            field("task_memcg"),
            field("task"),
            field("pid").and_then(|p| p.parse().ok()),
        ) {
            log.kills.push(LogKill {
                t,
                task_memcg: memcg.to_string(),
                task: task.to_string(),
                pid,
            });
        }
    }
    log
}

/// The most read from `/dev/kmsg` (its buffer is at most a few MiB).
const MAX_KMSG_BYTES: usize = 64 << 20;

/// The kernel log's records, read from `/dev/kmsg` without waiting for new ones (from the
/// oldest record kept). Errors: `/dev/kmsg` cannot be opened or read (without CAP_SYSLOG when
/// `kernel.dmesg_restrict` is 1).
pub fn read_kmsg() -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let mut out = Vec::new();
    // One record per read; a record is at most 8 KiB with its continuation lines.
    let mut buf = vec![0u8; 16 << 10];
    while out.len() < MAX_KMSG_BYTES {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // Records overwritten while reading: the next read goes on from the oldest kept.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Seconds since boot, now (`/proc/uptime`).
pub fn now_since_boot() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn within(memcg: &str, cgroup: &str) -> bool {
    let cg = cgroup.trim_end_matches('/');
    memcg == cgroup
        || memcg
            .strip_prefix(cg)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The check for the kubelet's `cgroup`: `total` its counter's `oom_kill` (since it was
/// created; `counter` the file it is in, `memory.events` or v1 `memory.oom_control`), `log`
/// the kernel log or why it could not be read, `now` seconds since boot. With a counter of 0
/// the counter answers (no kill ever) and the detail names it, not the kernel log (which
/// `diagnose` then does not read). Returns the check and the recent kills (None when they
/// cannot be told).
pub fn check_kills(
    cgroup: &str,
    counter: &str,
    total: u64,
    log: Result<&KernelLog, String>,
    now: f64,
) -> (Check, Option<u64>) {
    let since = now - RECENT_S;
    let (recent, how) = match log {
        Ok(l) => {
            let recent = l
                .kills
                .iter()
                .filter(|k| k.t >= since && within(&k.task_memcg, cgroup))
                .count() as u64;
            // The log reaches back over the whole window (or to boot within it).
            let covered = l.from.is_some_and(|f| f <= since.max(0.0) + 1.0);
            if recent > 0 || total == 0 || covered {
                (Some(recent), String::new())
            } else {
                let back = l.from.map_or(0.0, |f| (now - f).max(0.0));
                (
                    None,
                    format!(
                        "the kernel log reaches back only {:.0} min: older kills are not dated",
                        back / 60.0
                    ),
                )
            }
        }
        // Nothing to date, nothing to judge: no kill ever.
        Err(_) if total == 0 => (Some(0), String::new()),
        Err(why) => (None, format!("kills not dated: /dev/kmsg: {why}")),
    };
    let total_text = format!("{total} since the cgroup {cgroup} was created (information)");
    let (value, verdict, detail) = match recent {
        Some(0) if total == 0 => (
            "0 in 1 h (0 total)".to_string(),
            Health::Good,
            format!("no OOM kill in the kubelet's memory cgroup in the last hour (cgroup {counter} oom_kill: 0 since the cgroup {cgroup} was created; nothing for the kernel log to date)"),
        ),
        Some(0) => (
            format!("0 in 1 h ({total} total)"),
            Health::Good,
            format!("no OOM kill in the kubelet's memory cgroup in the last hour (kernel log); {total_text}"),
        ),
        Some(n) => (
            format!("{n} in 1 h ({total} total)"),
            Health::Bad,
            format!("{n} OOM kills in the kubelet's memory cgroup in the last hour (kernel log); {total_text}"),
        ),
        None => (
            format!("? in 1 h ({total} total)"),
            Health::Unknown,
            format!("recent OOM kills in the kubelet's memory cgroup unknown: {how}; {total_text}"),
        ),
    };
    let c = check("kubelet_oom_kills", value, verdict, detail)
        .quantity(recent, "count")
        .field("total", total)
        .field("window_seconds", RECENT_S)
        .field("cgroup", cgroup);
    (c, recent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as this machine's kernel (6.18) writes them to /dev/kmsg for a memcg OOM kill
    /// (the summary, the kill, a continuation line), around other records.
    fn kmsg(kills: &[(u64, &str, u32)], first_usec: u64) -> String {
        let mut s = format!("6,100,{first_usec},-;Linux version 6.18.44\n SUBSYSTEM=cpu\n");
        for (i, (usec, memcg, pid)) in kills.iter().enumerate() {
            s.push_str(&format!(
                "4,{},{usec},-;kubelet invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=-999\n\
                 6,{},{usec},-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={memcg},task_memcg={memcg},task=kubelet,pid={pid},uid=0\n\
                 3,{},{usec},-;Memory cgroup out of memory: Killed process {pid} (kubelet) total-vm:19500kB, anon-rss:16256kB, file-rss:1600kB, shmem-rss:0kB, UID:0 pgtables:80kB oom_score_adj:-999\n",
                200 + 3 * i,
                201 + 3 * i,
                202 + 3 * i
            ));
        }
        s
    }

    #[test]
    fn parses_the_kernels_oom_kill_summary() {
        let log = parse_kmsg(&kmsg(
            &[(47_362_714_897, "/kubelet.slice/kubelet.service", 25768)],
            12,
        ));
        assert_eq!(
            log,
            KernelLog {
                kills: vec![LogKill {
                    t: 47_362.714897,
                    task_memcg: "/kubelet.slice/kubelet.service".into(),
                    task: "kubelet".into(),
                    pid: 25768,
                }],
                from: Some(0.000012),
            }
        );
    }

    /// One kill two days ago: the counter says 1 forever, the check says GOOD with the total;
    /// a kill 10 minutes ago (or one of a process under the kubelet's cgroup) is BAD; a kill
    /// of another cgroup, or of one whose name only starts alike, does not count.
    #[test]
    fn judges_kills_of_the_last_hour_and_shows_the_total() {
        let cg = "/kubelet.slice";
        let now = 3.0 * 86400.0;
        let old = (86_400_000_000, "/kubelet.slice", 1);
        let log = parse_kmsg(&kmsg(&[old], 5_000_000));
        let (c, recent) = check_kills(cg, "memory.oom_control", 1, Ok(&log), now);
        assert_eq!((recent, c.verdict), (Some(0), Health::Good));
        assert_eq!(c.value, "0 in 1 h (1 total)");
        assert_eq!(
            c.detail,
            "no OOM kill in the kubelet's memory cgroup in the last hour (kernel log); 1 since the cgroup /kubelet.slice was created (information)"
        );
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(
            (&j["value"], &j["unit"], &j["total"], &j["window_seconds"]),
            (
                &serde_json::json!(0),
                &serde_json::json!("count"),
                &serde_json::json!(1),
                &serde_json::json!(3600.0)
            )
        );
        let fresh = (
            (now as u64 - 600) * 1_000_000,
            "/kubelet.slice/kubelet.service",
            2,
        );
        let other = ((now as u64 - 60) * 1_000_000, "/kubelet.slice-other", 3);
        let pods = ((now as u64 - 30) * 1_000_000, "/kubepods/pod1/c1", 4);
        let log = parse_kmsg(&kmsg(&[old, fresh, other, pods], 5_000_000));
        assert_eq!(log.kills.len(), 4);
        let (c, recent) = check_kills(cg, "memory.oom_control", 2, Ok(&log), now);
        assert_eq!((recent, c.verdict), (Some(1), Health::Bad), "{}", c.detail);
        assert_eq!(c.value, "1 in 1 h (2 total)");
    }

    /// A kernel log that no longer reaches back an hour, or cannot be read, cannot date the
    /// counter's kills: UNKNOWN, the total shown; with no kill ever, GOOD either way.
    #[test]
    fn undated_kills_are_unknown_not_bad() {
        let now = 3.0 * 86400.0;
        // The oldest record kept is 20 minutes old.
        let log = parse_kmsg(&kmsg(&[], (now as u64 - 1200) * 1_000_000));
        let (c, recent) = check_kills("/kubelet.slice", "memory.oom_control", 3, Ok(&log), now);
        assert_eq!((recent, c.verdict), (None, Health::Unknown));
        assert_eq!(
            c.detail,
            "recent OOM kills in the kubelet's memory cgroup unknown: the kernel log reaches back only 20 min: older kills are not dated; 3 since the cgroup /kubelet.slice was created (information)"
        );
        assert_eq!(
            serde_json::to_value(&c).unwrap()["value"],
            serde_json::Value::Null
        );
        let (c, _) = check_kills("/kubelet.slice", "memory.oom_control", 0, Ok(&log), now);
        assert_eq!(c.verdict, Health::Good);
        let (c, _) = check_kills(
            "/kubelet.slice",
            "memory.oom_control",
            3,
            Err("Operation not permitted (os error 1)".into()),
            now,
        );
        assert_eq!(c.verdict, Health::Unknown);
        assert!(c
            .detail
            .contains("kills not dated: /dev/kmsg: Operation not permitted"));
        // No kill ever: the counter answers, named as the source (not "(kernel log)", which
        // was not read, or could not be: EPERM without CAP_SYSLOG).
        let (c, _) = check_kills(
            "/kubelet.slice",
            "memory.oom_control",
            0,
            Err("Operation not permitted (os error 1)".into()),
            now,
        );
        assert_eq!(c.verdict, Health::Good);
        assert_eq!(
            c.detail,
            "no OOM kill in the kubelet's memory cgroup in the last hour (cgroup memory.oom_control oom_kill: 0 since the cgroup /kubelet.slice was created; nothing for the kernel log to date)"
        );
        assert!(!c.detail.contains("(kernel log)"));
        // Booted 10 minutes ago, the log from boot: the whole window is covered.
        let log = parse_kmsg(&kmsg(&[], 0));
        let (c, _) = check_kills("/kubelet.slice", "memory.oom_control", 0, Ok(&log), 600.0);
        assert_eq!(c.verdict, Health::Good);
    }

    /// This machine's /dev/kmsg is read to its end without waiting for new records.
    #[test]
    fn reads_the_real_kernel_log_without_blocking() {
        match read_kmsg() {
            Ok(text) => {
                let log = parse_kmsg(&text);
                let now = now_since_boot().expect("/proc/uptime");
                let from = log.from.expect("a kernel log with no record");
                assert!(from <= now, "{from} > {now}");
                assert!(log.kills.iter().all(|k| k.t >= from && k.t <= now + 1.0));
            }
            // Without CAP_SYSLOG under kernel.dmesg_restrict=1: the check says so.
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
        }
    }
}
