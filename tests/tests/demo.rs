//! `cargo xtask demo` for real: the built xtask runs the whole story (the Go stand-in kubelet,
//! its supervisor, the agent, the report), and every step of its output is checked against the
//! agent's own records in the event log the demo saved.
use std::process::{Command, Stdio};

use oomprobe_tests::{bin, require_root, scratch_dir};
use serde_json::Value;

/// The story's lines for one step (`who`, the step's name): what follows the name.
fn steps<'a>(out: &'a str, who: &str, what: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let _time = w.next()?;
            (w.next()? == who && w.next()? == what).then_some(())?;
            let at = l.find(&format!(" {what} "))? + what.len() + 2;
            Some(l[at..].trim())
        })
        .collect()
}

fn one<'a>(out: &'a str, who: &str, what: &str) -> Vec<&'a str> {
    let s = steps(out, who, what);
    assert!(!s.is_empty(), "no `{who} {what}` line in:\n{out}");
    s
}

/// The number after `prefix` in `line`.
fn number_after(line: &str, prefix: &str) -> u64 {
    let at = line
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix:?} in {line:?}"))
        + prefix.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix:?} in {line:?}"))
}

#[test]
fn demo_tells_the_whole_flap_story_from_the_agents_records() {
    require_root();
    let dir = scratch_dir("demo");
    let run = Command::new(bin("xtask"))
        .args(["demo", "--no-build", "--out"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run xtask demo");
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    eprintln!("{out}");
    assert!(run.status.success(), "demo failed: {}\n{out}", run.status);
    let records: Vec<Value> = std::fs::read_to_string(dir.join("events.jsonl"))
        .expect("the demo's event log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    let find = |pred: &dyn Fn(&Value) -> bool, what: &str| -> Value {
        records
            .iter()
            .find(|v| pred(v))
            .cloned()
            .unwrap_or_else(|| panic!("no {what} record in the demo's event log"))
    };

    // The set-up: the cgroup the kills must name.
    let setup = one(&out, "demo", "setup")[0];
    let cgroup = setup
        .strip_prefix("memory cgroup ")
        .and_then(|s| s.split_whitespace().next())
        .expect("the cgroup in the setup line")
        .to_string();

    // The supervisor's three starts.
    let sup = one(&out, "demo", "supervisor");
    assert_eq!(sup.len(), 3, "{sup:?}");
    let p1 = number_after(sup[0], "kubelet pid ");
    let p2 = number_after(sup[1], "new pid ");
    let p3 = number_after(sup[2], "new pid ");

    // The agent followed each, the restarts with how the previous one ended.
    let starts = one(&out, "agent", "kubelet");
    for (i, (pid, prev)) in [(p1, None), (p2, Some(p1)), (p3, Some(p2))]
        .into_iter()
        .enumerate()
    {
        let s = find(
            &|v| v["event"] == "kubelet_start" && v["pid"].as_u64() == Some(pid),
            "kubelet_start",
        );
        assert_eq!(s["previous_pid"].as_u64(), prev, "{s}");
        assert_eq!(s["restarts"].as_u64(), Some(i as u64), "{s}");
        assert!(
            starts[i].starts_with(&format!("kubelet pid {pid} ")),
            "{starts:?}"
        );
        if let Some(prev) = prev {
            assert_eq!(s["previous_end"], "oom_memcg", "{s}");
            assert!(
                starts[i].ends_with(&format!("pid {prev}, ended by oom_memcg")),
                "{starts:?}"
            );
        }
    }

    // Allocator attribution: the leak's call site, as the agent reported it for the first pid.
    let attr = one(&out, "agent", "attribution");
    assert!(
        attr[0].starts_with(&format!("pid {p1}: top call site main.leakPodCache = ")),
        "{attr:?}"
    );
    let rep = find(
        &|v| {
            v["event"] == "kubelet_memory"
                && v["pid"].as_u64() == Some(p1)
                && v["top_call_sites"][0]["function"] == "main.leakPodCache"
        },
        "kubelet_memory led by main.leakPodCache",
    );
    assert_eq!(rep["mode"], "uprobes", "{rep}");
    let mib = rep["top_call_sites"][0]["bytes"].as_u64().unwrap() as f64 / 1048576.0;
    assert!(
        attr[0].contains(&format!(" = {mib:.1} MiB in ")),
        "{attr:?} vs {rep}"
    );

    // The pre-OOM warning with the seconds left, the agent's figure.
    let pre = find(
        &|v| v["event"] == "stage" && v["stage"] == "pre_oom",
        "pre_oom stage",
    );
    let left = pre["seconds_left"].as_f64().expect("seconds_left");
    assert!(left > 0.0, "{pre}");
    assert_eq!(pre["ending"], "kubelet_limit", "{pre}");
    assert_eq!(
        one(&out, "agent", "pre_oom")[0],
        format!(
            "{left:.1} s left before the limit (kubelet_limit): {}",
            pre["detail"].as_str().unwrap()
        )
    );

    // The kernel's kills: the victims are the supervisor's stand-ins, in the demo's cgroup.
    let kills = one(&out, "agent", "kill");
    assert_eq!(kills.len(), 2, "{kills:?}");
    for (line, pid) in kills.iter().zip([p1, p2]) {
        let k = find(
            &|v| v["event"] == "kill" && v["victim"]["pid"].as_u64() == Some(pid),
            "kill",
        );
        assert_eq!(k["kind"], "oom_memcg", "{k}");
        assert_eq!(k["victim"]["comm"], "kubelet", "{k}");
        assert_eq!(k["victim"]["cgroup"], cgroup.as_str(), "{k}");
        assert_eq!(k["oom"]["domain"]["path"], cgroup.as_str(), "{k}");
        assert_eq!(
            k["oom"]["domain"]["limit_bytes"].as_u64(),
            Some(64 << 20),
            "{k}"
        );
        assert_eq!(k["sender"]["code"], "SI_KERNEL", "{k}");
        assert!(
            line.starts_with(&format!("oom_memcg victim {pid}(kubelet) in {cgroup}: ")),
            "{line}"
        );
    }

    // The cycle: every stage in order, the storm of each restart, the re-OOM flapping.
    let stages: Vec<&Value> = records
        .iter()
        .filter(|v| v["event"] == "stage" && v["stage"] != "pre_oom")
        .collect();
    let names: Vec<&str> = stages
        .iter()
        .map(|v| v["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "active_oom",
            "reconciliation_storm",
            "re_oom",
            "reconciliation_storm",
            "recovery"
        ]
    );
    assert_eq!(stages[0]["cycles"].as_u64(), Some(1));
    assert_eq!(stages[1]["storm"]["pid"].as_u64(), Some(p2));
    assert_eq!(stages[3]["storm"]["pid"].as_u64(), Some(p3));
    let reoom = stages[2];
    assert_eq!(reoom["cycles"].as_u64(), Some(2), "{reoom}");
    assert_eq!(reoom["flapping"], true, "{reoom}");
    let period = reoom["period_seconds"].as_f64().unwrap();
    assert!(
        one(&out, "agent", "re_oom")[0].starts_with(&format!(
            "cycle 2, {period:.1} s after the previous kubelet OOM kill, flapping=true: "
        )),
        "{out}"
    );
    assert_eq!(one(&out, "agent", "reconciliation_storm").len(), 2);
    assert!(
        one(&out, "agent", "recovery")[0].starts_with(stages[4]["detail"].as_str().unwrap()),
        "{out}"
    );

    // The recommendation is the re-OOM's, word for word; the cordon is not configured.
    let recs: Vec<&str> = reoom["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        recs.iter().any(|r| r.starts_with("cordon the node")),
        "{recs:?}"
    );
    assert_eq!(one(&out, "agent", "recommend"), [recs.join("; ")]);
    assert!(one(&out, "demo", "cordon")[0].starts_with("not configured: "));
    assert!(
        !records.iter().any(|v| v["event"] == "action"),
        "no action without --act"
    );

    // The picture, written at the end, from these records.
    let pic = one(&out, "demo", "picture")[0];
    let html = dir.join("oomprobe-demo.html");
    let svg = dir.join("oomprobe-demo.svg");
    assert!(pic.contains(&html.display().to_string()), "{pic}");
    assert!(pic.contains(&svg.display().to_string()), "{pic}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg"), "the page has the chart");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.contains("<svg"), "{}", &chart[..chart.len().min(200)]);

    // Nothing left behind: the cgroup and the processes.
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory").join(cgroup.trim_start_matches('/'));
    let v2 = std::path::Path::new("/sys/fs/cgroup").join(cgroup.trim_start_matches('/'));
    assert!(!v1.exists() && !v2.exists(), "{cgroup} left behind");
    let agent = number_after(setup, "oomprobe run (pid ");
    for pid in [agent, p1, p2, p3] {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left running"
        );
    }
    assert!(out.contains("demo: wall time "), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
