//! Records the golden test's real ring-buffer stream on this kernel:
//! `cargo xtask golden --record` (root, under `flock /tmp/oomprobe-priv.lock`).
//!
//! Starts `oomprobe run --record-ring <OUT>` and makes, in scratch memory cgroups that it removes
//! afterwards: a memcg OOM kill (memhog 64 MiB under a 32 MiB limit), an OOM kill whose trigger
//! is not the victim (64 MiB limit, victim at oom_score_adj 1000, trigger spared), and a
//! `kill -9`. Each kill is awaited in the agent's stream (deadlines, not sleeps) before the
//! next; the agent is then stopped. Writes `<OUT>` and `<OUT>.kernel` (`uname -r`).
//!
//! Usage: `record_golden OUT`.
use std::{path::PathBuf, process::Command};

use oomprobe_tests::{cgroup_name, spawn_in, Agent, ScratchCgroup};

const MIB: u64 = 1 << 20;

fn main() {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .expect("usage: record_golden OUT");
    let out = std::path::absolute(&out).expect("output path");
    let agent = Agent::builder()
        .args(&["--record-ring", out.to_str().expect("UTF-8 output path")])
        .start();

    // 1. A memcg OOM kill: the allocator is its own victim.
    let cg = ScratchCgroup::create(&cgroup_name("golden-oom"), Some(32 * MIB)).expect("cgroup");
    let mut hog = spawn_in(&cg, "memhog", &["64"]);
    hog.read_until("done");
    assert_eq!(hog.wait_signal(), Some(9), "memhog was not OOM-killed");
    agent.expect_kill(u64::from(hog.pid()));
    drop(cg);

    // 2. An OOM kill whose trigger is another process (the victim is the kernel's first choice).
    let cg = ScratchCgroup::create(&cgroup_name("golden-trigger"), Some(64 * MIB)).expect("cgroup");
    let mut victim = spawn_in(
        &cg,
        "memhog",
        &["40", "--step-mib", "4", "--hold", "--oom-score-adj", "1000"],
    );
    victim.read_until("done");
    let mut trigger = spawn_in(&cg, "memhog", &["48"]);
    trigger.read_until("done");
    assert_eq!(victim.wait_signal(), Some(9), "victim was not OOM-killed");
    assert_eq!(trigger.wait_signal(), None, "the trigger must survive");
    agent.expect_kill(u64::from(victim.pid()));
    drop(cg);

    // 3. kill -9 from a process.
    let cg = ScratchCgroup::create(&cgroup_name("golden-kill"), None).expect("cgroup");
    let mut target = spawn_in(&cg, "memhog", &["8", "--hold"]);
    target.read_until("done");
    let status = Command::new("/bin/kill")
        .args(["-9", &target.pid().to_string()])
        .status()
        .expect("run /bin/kill");
    assert!(status.success(), "kill -9 failed");
    assert_eq!(target.wait_signal(), Some(9));
    agent.expect_kill(u64::from(target.pid()));
    drop(cg);
    drop(agent);

    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .expect("run uname -r");
    let mut kernel = out.clone().into_os_string();
    kernel.push(".kernel");
    std::fs::write(&kernel, &uname.stdout).expect("write the kernel version");
    let records = std::fs::read_to_string(&out).expect("read the recording");
    eprintln!(
        "recorded {} ring records on {} into {}",
        records.lines().count(),
        String::from_utf8_lossy(&uname.stdout).trim(),
        out.display()
    );
}
