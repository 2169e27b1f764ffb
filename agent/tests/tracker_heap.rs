//! The soak's 12 MiB step (`cargo xtask bench --only soak`, 1504 -> 13684 KiB of live heap
//! between its readings at 1208 s and 1228 s, flat after): a Go kubelet binary built on the
//! node during the soak (v1.36.1, 116,743 functions) ran once as `kubelet`, the agent followed
//! it, and the file's function table (12,486,752 bytes of heap) stayed in the tracker's probe
//! cache after the process was gone. Measured here with a counting allocator of this test's
//! own, on a real Go executable (the Go toolchain's `gofmt`, waiting on its stdin) followed
//! through the tracker's public API, then a libc binary (`sleep`, as the soak's stand-in): the
//! heap the table took must come back once the Go process is gone and another file's kubelet
//! came (the last kubelet's file keeps its table for a restart).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicI64, Ordering},
};

use oomprobe::{
    kernel::probes::{Kernel, ProbeError},
    kubelet::{
        symbols::ProbePoint,
        tracker::{Target, Tracker},
    },
};
use probe_common::{AllocKey, AllocVal, Counter, KubeletText, ReclaimStats};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A kernel that accepts every attachment and watch (the tracker's side is measured).
struct Accepting;

impl Kernel for Accepting {
    fn attach_allocator(
        &mut self,
        _binary: &Path,
        points: &[ProbePoint],
        _pid: Option<u32>,
    ) -> Result<usize, ProbeError> {
        Ok(points.len())
    }
    fn attach_syscalls(&mut self) -> Result<(), ProbeError> {
        Ok(())
    }
    fn watch_tgid(&mut self, _tgid: u32, _text: KubeletText) -> Result<(), ProbeError> {
        Ok(())
    }
    fn unwatch_tgid(&mut self, _tgid: u32) {}
    fn watch_memcg(&mut self, _id: u64) -> bool {
        true
    }
    fn reclaim_stats(&self) -> Vec<(u64, ReclaimStats)> {
        Vec::new()
    }
    fn alloc_stats(&self) -> Vec<(AllocKey, AllocVal)> {
        Vec::new()
    }
    fn stack(&self, _stack_id: i64) -> Vec<u64> {
        Vec::new()
    }
    fn counters(&self) -> Vec<(Counter, u64)> {
        Vec::new()
    }
}

fn gofmt() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/local/go/bin")])
        .map(|d| d.join("gofmt"))
        .find(|p| p.is_file())
}

#[test]
fn a_go_binarys_function_table_leaves_the_heap_when_another_kubelet_took_over() {
    // The machine's Go (`cargo xtask setup` checks it): without it this test fails loudly.
    let bin = gofmt().expect(
        "no gofmt (Go toolchain) in PATH or /usr/local/go/bin: this test needs a real Go executable to follow",
    );
    let mut t = Tracker::new(Target {
        name: "kubelet".into(),
        pid: None,
        binary: None,
    });
    let mut k = Accepting;
    // Follows one process of `program` until it is killed and reported gone; the live heap
    // while it was followed.
    let follow = |t: &mut Tracker, k: &mut Accepting, program: &Path, args: &[&str]| {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        t.on_exec(child.id(), k)
            .unwrap_or_else(|| panic!("{} followed", program.display()));
        let live = LIVE.load(Ordering::Relaxed);
        child.kill().expect("kill");
        child.wait().expect("reap");
        t.report(k);
        live
    };
    let before = LIVE.load(Ordering::Relaxed);
    // The Go binary once, then the soak's stand-in (a libc binary) as the kubelet.
    let held = follow(&mut t, &mut k, &bin, &[]) - before;
    follow(&mut t, &mut k, Path::new("sleep"), &["60"]);
    let kept = LIVE.load(Ordering::Relaxed) - before;
    eprintln!("heap while the Go binary was followed: +{held} B; after another kubelet came and went: +{kept} B");
    // gofmt's table is ~0.2 MB (a kubelet's 12 MiB); what stays is the file's cache entry
    // and the pids remembered.
    assert!(held > 128 * 1024, "the table was read: +{held} B");
    assert!(
        kept < 16 * 1024,
        "+{kept} B kept after the Go process is gone and another kubelet came (held +{held} B)"
    );
}
