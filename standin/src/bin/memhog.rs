//! memhog: allocates and touches anonymous memory step by step, printing what it holds.
//!
//! usage: memhog TOTAL_MIB [--step-mib N] [--interval-ms N] [--hold] [--oom-score-adj N]
//!        [--comm NAME] [--child MIB] [--ignore-term] [--fill PATH MIB]
//!
//! After each step it prints `held <KiB>` (anonymous bytes it has written), so a test can compare
//! what the kernel reports at the kill with what the process held. `--hold` keeps the memory and
//! sleeps after reaching TOTAL_MIB; otherwise it exits. `--comm` renames the process
//! (`PR_SET_NAME`, at most 15 bytes). `--child MIB`, once TOTAL_MIB is held: starts a child
//! memhog (comm `memhog-child`) that allocates MIB at the same interval, prints `child <pid>`,
//! waits for it, prints `child exited <status>` and goes on (holding, with `--hold`).
//! `--ignore-term` ignores SIGTERM, so that a stop ends in the runtime's SIGKILL.
//! `--fill PATH MIB`, once TOTAL_MIB is held: writes MIB MiB to the file PATH (synced) and
//! prints `filled <KiB>` (disk use, for a kubelet's ephemeral-storage eviction).
use std::io::Write as _;

fn arg_value(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(total_mib) = args.get(1).and_then(|a| a.parse::<u64>().ok()) else {
        eprintln!(
            "usage: memhog TOTAL_MIB [--step-mib N] [--interval-ms N] [--hold] [--oom-score-adj N]"
        );
        std::process::exit(2);
    };
    let step_mib = arg_value(&args, "--step-mib").unwrap_or(1).max(1);
    let interval_ms = arg_value(&args, "--interval-ms").unwrap_or(0);
    let hold = args.iter().any(|a| a == "--hold");
    if let Some(i) = args.iter().position(|a| a == "--oom-score-adj") {
        if let Some(v) = args.get(i + 1) {
            if let Err(e) = std::fs::write("/proc/self/oom_score_adj", v) {
                eprintln!("memhog: cannot set oom_score_adj: {e}");
                std::process::exit(2);
            }
        }
    }
    if let Some(i) = args.iter().position(|a| a == "--comm") {
        let name = args.get(i + 1).map(String::as_str).unwrap_or("");
        let Ok(c) = std::ffi::CString::new(name) else {
            eprintln!("memhog: --comm with a NUL byte");
            std::process::exit(2);
        };
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (the kernel copies 16 bytes at most).
        if unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) } != 0 {
            eprintln!("memhog: PR_SET_NAME: {}", std::io::Error::last_os_error());
            std::process::exit(2);
        }
    }
    if args.iter().any(|a| a == "--ignore-term") {
        // SAFETY: SIG_IGN needs no handler.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    let child_mib = arg_value(&args, "--child");
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut held_kib = 0u64;
    let mut out = std::io::stdout();
    while held_kib < total_mib * 1024 {
        // Non-zero bytes so every page is really backed (no zero-page sharing).
        let block = vec![0x5au8; (step_mib * 1024 * 1024) as usize];
        blocks.push(block);
        held_kib += step_mib * 1024;
        let _ = writeln!(out, "held {held_kib}");
        let _ = out.flush();
        if interval_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(interval_ms));
        }
    }
    let _ = writeln!(out, "done {held_kib}");
    let _ = out.flush();
    if let Some(i) = args.iter().position(|a| a == "--fill") {
        let mib = args.get(i + 2).and_then(|m| m.parse::<u64>().ok());
        let (Some(path), Some(mib)) = (args.get(i + 1), mib) else {
            eprintln!("memhog: --fill PATH MIB");
            std::process::exit(2);
        };
        let chunk = vec![0xa5u8; 1 << 20];
        let written = std::fs::File::create(path).and_then(|mut f| {
            for _ in 0..mib {
                f.write_all(&chunk)?;
            }
            f.sync_all()
        });
        if let Err(e) = written {
            eprintln!("memhog: cannot fill {path}: {e}");
            std::process::exit(2);
        }
        let _ = writeln!(out, "filled {}", mib * 1024);
        let _ = out.flush();
    }
    if let Some(mib) = child_mib {
        let child = std::process::Command::new("/proc/self/exe")
            .args([
                &mib.to_string(),
                "--interval-ms",
                "10",
                "--comm",
                "memhog-child",
            ])
            .stdout(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(mut c) => {
                let _ = writeln!(out, "child {}", c.id());
                let _ = out.flush();
                match c.wait() {
                    Ok(s) => {
                        let _ = writeln!(out, "child exited {s}");
                    }
                    Err(e) => {
                        let _ = writeln!(out, "child wait failed {e}");
                    }
                }
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("memhog: cannot start the child: {e}");
                std::process::exit(2);
            }
        }
    }
    if hold {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    std::hint::black_box(&blocks);
}
