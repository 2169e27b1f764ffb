//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time, mapped once.
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC now, in the same timebase as `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// Maps monotonic nanoseconds to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// A clock with a fixed offset (tests and replays).
    pub fn with_offset(offset_ns: i128) -> Clock {
        Clock { offset_ns }
    }

    pub fn wall(&self, ktime_ns: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ktime_ns) + self.offset_ns)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// RFC 3339, UTC, nanoseconds.
    pub fn rfc3339(&self, ktime_ns: u64) -> String {
        rfc3339(self.wall(ktime_ns))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    // Rfc3339 prints the fraction without trailing zeros; keep nanoseconds fixed-width.
    let t = t.to_offset(time::UtcOffset::UTC);
    let base = t
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    let secs = base.trim_end_matches('Z');
    format!("{secs}.{:09}Z", t.nanosecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_nanoseconds_in_utc() {
        let c = Clock::with_offset(1_700_000_000_000_000_000);
        assert_eq!(c.rfc3339(5), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(c.rfc3339(123_456_789_012), "2023-11-14T22:15:23.456789012Z");
    }
}
