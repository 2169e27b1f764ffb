//! Reading the kernel's event ring buffer from one blocked thread per CPU (up to a cap).
//!
//! Why not one reader: the kernel wakes ring-buffer waiters from the CPU that produced the
//! record, and an OOM kill is produced by the task that ran out of memory, which stays in the
//! kernel after the SIGKILL (it writes the "Killed process" line to the console, then exits).
//! On kernels without forced preemption a reader woken on that CPU waits until the task leaves
//! the kernel: measured here at 3.8-5 ms when the console is a serial port, against 0.2-0.4 ms
//! when the reader sits on another CPU. One reader pinned to each CPU, each with its own epoll
//! registration, means a reader on a free CPU is always among those woken; whichever runs first
//! drains the ring, and the rest find it empty. Blocked readers cost nothing while idle.
//!
//! Records are decoded in the reader (timestamped with CLOCK_MONOTONIC when read) and handed to
//! the agent's loop through a bounded channel; when the channel is full the draining reader
//! blocks, so the ring buffer stays the one place records wait (its overflow is counted by the
//! kernel probes) and nothing read is ever dropped.
//!
//! After each drain the reader also sends a quiet mark ([`Item::Quiet`]): a CLOCK_MONOTONIC
//! reading (the kernel's `bpf_ktime_get_ns` clock) taken just before it found the ring empty,
//! less [`QUIET_MARGIN_NS`]. Every record stamped earlier than the mark was read before it, so
//! the marks are the event stream's own clock: the correlator expires pending kills against
//! them, not against the wall clock, and a stalled agent loop (records waiting in the channel)
//! never expires a kill whose events are still queued. One reader also wakes every
//! [`QUIET_EVERY_MS`] ms without records and drains: a quiet stream's clock still advances.
//!
//! With a [`Recorder`] (`oomprobe run --record-ring FILE`) the draining reader also writes each
//! record's raw bytes, exactly as read from the ring, to a file: one line per record,
//! `<CLOCK_MONOTONIC ns when read> <bytes as lowercase hex>\n`, flushed after each drain. This
//! is the framing of the golden test's `ring-recorded.hex` (`agent/tests/data/golden/README.md`).
//! Off, it costs one `Option` check per record.
use std::{
    fs::File,
    io::{self, BufWriter, Write as _},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;

use crate::{
    clock::monotonic_ns,
    kernel::events::{self, DecodeError, Event},
};

/// What the readers hand to the agent's loop, in the order they read it.
#[derive(Debug)]
pub enum Item {
    /// One decoded record and when userspace read it (CLOCK_MONOTONIC ns). Boxed: a record is
    /// a few hundred bytes, a quiet mark 8.
    Record(Box<Result<Event, DecodeError>>, u64),
    /// The ring was drained: every record whose kernel timestamp (CLOCK_MONOTONIC ns) is below
    /// this came before this mark.
    Quiet(u64),
}

/// Subtracted from a quiet mark: a record's timestamp is taken a few microseconds before it
/// is committed to the ring, so a record stamped just before the reading may not be visible yet.
pub const QUIET_MARGIN_NS: u64 = 10_000_000;
/// Without records, the first reader drains (and marks) this often.
pub const QUIET_EVERY_MS: i32 = 200;

/// Where the raw records go with `--record-ring`: shared by the readers (only the one holding
/// the ring lock writes).
#[derive(Clone)]
pub struct Recorder(Arc<Mutex<BufWriter<File>>>);

impl Recorder {
    /// Creates (truncates) `path`, a regular file. Errors: it cannot be created, or it is not a
    /// regular file afterwards (`/proc/version`, a directory, a device): records written there
    /// would be lost, so the agent refuses at start rather than at the first record.
    pub fn create(path: &std::path::Path) -> io::Result<Recorder> {
        if let Ok(m) = std::fs::metadata(path) {
            if !m.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a regular file",
                ));
            }
        }
        // procfs and sysfs files say they are regular files: refuse them by place, before
        // opening (and truncating) anything.
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let real = std::fs::canonicalize(&dir)?;
        if real.starts_with("/proc") || real.starts_with("/sys") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a procfs/sysfs file, not a place to record to",
            ));
        }
        let f = File::create(path)?;
        Ok(Recorder(Arc::new(Mutex::new(BufWriter::new(f)))))
    }

    /// Appends one record line; see the module docs for the framing.
    fn record(&self, seen_ns: u64, bytes: &[u8]) -> io::Result<()> {
        let mut w = self.0.lock().map_err(poisoned)?;
        write!(w, "{seen_ns} ")?;
        for b in bytes {
            write!(w, "{b:02x}")?;
        }
        w.write_all(b"\n")
    }

    fn flush(&self) -> io::Result<()> {
        self.0.lock().map_err(poisoned)?.flush()
    }
}

/// Blocked readers; stop them with `stop` (or drop).
pub struct Readers {
    stop_fd: Arc<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    /// CPUs with a reader.
    pub cpus: Vec<usize>,
}

/// Starts readers on up to `max` of the CPUs this process may run on, at `SCHED_FIFO`
/// priority `rt_priority` (0: normal scheduling). Returns the channel the records arrive on
/// (`capacity` records deep). With `recorder`, every record read is also written there.
pub fn spawn(
    ring: RingBuf<MapData>,
    max: usize,
    rt_priority: u8,
    capacity: usize,
    recorder: Option<Recorder>,
) -> io::Result<(Readers, mpsc::Receiver<Item>)> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let ring = Arc::new(Mutex::new(ring));
    // Written once by `stop`: wakes every reader (they block in epoll without a timeout, so
    // an idle agent's readers never run).
    let stop_fd = Arc::new(event_fd()?);
    let mut cpus = allowed_cpus()?;
    cpus.truncate(max.max(1));
    let mut threads = Vec::new();
    let first = cpus[0];
    for &cpu in &cpus {
        let (ring, tx, recorder) = (ring.clone(), tx.clone(), recorder.clone());
        // One reader keeps the stream clock going when no record comes.
        let timeout_ms = if cpu == first { QUIET_EVERY_MS } else { -1 };
        let epoll = Epoll::watching(
            ring.lock().map_err(poisoned)?.as_fd().as_raw_fd(),
            stop_fd.as_raw_fd(),
        )?;
        threads.push(
            std::thread::Builder::new()
                .name(format!("ring-cpu{cpu}"))
                .stack_size(128 * 1024)
                .spawn(move || {
                    pin_to(cpu);
                    if rt_priority > 0 {
                        // One warning for all readers when it is refused.
                        realtime(rt_priority, cpu == first);
                    }
                    read_loop(&epoll, timeout_ms, &ring, &tx, recorder.as_ref());
                })?,
        );
    }
    Ok((
        Readers {
            stop_fd,
            threads,
            cpus,
        },
        rx,
    ))
}

fn poisoned<T>(_: T) -> io::Error {
    io::Error::other("ring buffer lock poisoned")
}

fn read_loop(
    epoll: &Epoll,
    timeout_ms: i32,
    ring: &Mutex<RingBuf<MapData>>,
    tx: &mpsc::Sender<Item>,
    recorder: Option<&Recorder>,
) {
    loop {
        let timed_out = match epoll.wait(timeout_ms) {
            Ok(Some(STOP_TOKEN)) => return,
            Ok(Some(_)) => false,
            Ok(None) => true,
            // EINTR and the like: the next wait decides.
            Err(_) => continue,
        };
        // Blocking, not try_lock: the ring is level-triggered, so a reader that skipped a busy
        // lock would spin on epoll until the drainer finished.
        let Ok(mut rb) = ring.lock() else {
            return;
        };
        let mut read = 0u64;
        loop {
            // Read before looking: when the ring turns out empty, everything stamped before
            // this reading has been read.
            let before = monotonic_ns();
            let Some(item) = rb.next() else {
                if (read > 0 || timed_out)
                    && tx
                        .blocking_send(Item::Quiet(before.saturating_sub(QUIET_MARGIN_NS)))
                        .is_err()
                {
                    return;
                }
                break;
            };
            read += 1;
            let seen = monotonic_ns();
            if let Some(r) = recorder {
                if let Err(e) = r.record(seen, &item) {
                    tracing::warn!(error = %e, "cannot record a ring record");
                }
            }
            let msg = Item::Record(Box::new(events::decode(&item)), seen);
            drop(item);
            // A full channel blocks this reader (the others wait on the lock), so records
            // wait in the ring, not in memory, and none is dropped here.
            if tx.blocking_send(msg).is_err() {
                return;
            }
        }
        if let Some(r) = recorder {
            if let Err(e) = r.flush() {
                tracing::warn!(error = %e, "cannot flush the ring recording");
            }
        }
    }
}

impl Readers {
    pub fn stop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.stop_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop();
    }
}

const RING_TOKEN: u64 = 0;
const STOP_TOKEN: u64 = 1;

fn owned(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn event_fd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// An epoll instance watching the ring buffer and the stop eventfd for input.
struct Epoll(OwnedFd);

impl Epoll {
    fn watching(ring: i32, stop: i32) -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let ep = owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        for (fd, token) in [(ring, RING_TOKEN), (stop, STOP_TOKEN)] {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token,
            };
            // SAFETY: valid epoll fd, valid event pointer.
            if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Epoll(ep))
    }

    /// Blocks until an fd is readable (its token) or `timeout_ms` passed (None; -1 waits
    /// for ever).
    fn wait(&self, timeout_ms: i32) -> io::Result<Option<u64>> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: one event slot, valid for the call.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut ev, 1, timeout_ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((n > 0).then_some(ev.u64))
    }
}

/// CPUs this process may run on (its affinity mask), ascending.
fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: index below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(io::Error::other("empty CPU affinity mask"));
    }
    Ok(cpus)
}

/// Raises the calling thread to `SCHED_FIFO` at `priority`: a woken reader then preempts
/// whatever ordinary task runs on its CPU instead of waiting for its time slice (measured:
/// burst p99 4 ms -> 0.2 ms). A reader cannot hog the CPU: it blocks in epoll when the ring is
/// empty and in the channel when the agent's loop lags. Refused without CAP_SYS_NICE: the
/// reader stays at normal priority and says so.
fn realtime(priority: u8, warn: bool) {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: valid param pointer; 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } < 0 && warn {
        let e = io::Error::last_os_error();
        tracing::warn!(error = %e, "ring readers run at normal priority (SCHED_FIFO refused)");
    }
}

/// Pins the calling thread to `cpu`; a refusal (a cpuset that changed) leaves it unpinned,
/// which only costs latency.
fn pin_to(cpu: usize) {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu comes from the affinity mask, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: valid pointer and size; 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } < 0 {
        tracing::debug!(cpu, error = %io::Error::last_os_error(), "ring reader not pinned");
    }
}
