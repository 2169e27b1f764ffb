//! The picture of an episode (`oomprobe report`): the kubelet's memory over time with its
//! baseline, its limit, the leak slope and the time-to-OOM band, every kill as a marker, the
//! cycle's stages as bands and the storm's peak, as one SVG (inline in an HTML page).
//!
//! The SVG is written by a small builder rather than a plotting crate: the chart is a handful
//! of lines, rectangles and markers, and every element gets an id or class and `data-`
//! attributes (kind, victim, pod, stage) so the page can be checked in a browser's DOM and read
//! by tools; a plotting crate's output would need post-processing for that.
use std::fmt::Write as _;

use serde_json::Value;

use crate::detect::series::{baseline, Sample};

/// One kill record from the event log (`"event":"kill"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Kill {
    /// Unix seconds.
    pub t: f64,
    pub kind: String,
    pub pid: u64,
    pub comm: String,
    pub pod: Option<String>,
}

/// The leak verdict's figures (`"event":"verdict"`), times in unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub t: f64,
    pub slope_bytes_per_day: f64,
    pub earliest_seconds: Option<f64>,
    pub expected_seconds: Option<f64>,
    pub latest_seconds: Option<f64>,
    pub cause: String,
}

/// What the report draws.
#[derive(Debug, Default, Clone)]
pub struct Episode {
    /// (unix seconds, kubelet RSS, kubelet cgroup limit) from the persisted series.
    pub memory: Vec<(i64, f64, Option<f64>)>,
    pub kills: Vec<Kill>,
    /// (unix seconds, stage name), in order.
    pub stages: Vec<(f64, String)>,
    /// (unix seconds, bytes): the highest storm RSS a stage event reported.
    pub storm_peak: Option<(f64, f64)>,
    pub forecast: Option<Forecast>,
    /// Lines of the event log that were not JSON events (counted, not fatal).
    pub skipped_lines: usize,
    /// Lines of the event log longer than [`MAX_EVENT_LINE_BYTES`]: skipped unparsed and
    /// counted (not in `skipped_lines`), so one huge line cannot grow memory with its size.
    pub long_lines: usize,
    /// Stage events that could not be placed in time (no kill record to relate the kernel's
    /// monotonic clock to UTC).
    pub unplaced_stages: usize,
    /// Events (kills, stages, the verdict) set aside for their time: outside the series' own
    /// span ([`Episode::window`]), or, without a series, outside the plausible years.
    pub set_aside: SetAside,
}

/// Events not drawn because of their time, and the window they had to fall in.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SetAside {
    pub kills: usize,
    pub stages: usize,
    pub verdicts: usize,
    /// The window events had to fall in (unix seconds, inclusive).
    pub window: Option<(f64, f64)>,
    /// Where the window came from: `the series' span` or `plausible times`.
    pub reason: &'static str,
}

/// `1 kill`, `2 kills`, `0 kills`: a count with its noun, singular for one.
pub fn count(n: usize, one: &str) -> String {
    format!("{n} {one}{}", if n == 1 { "" } else { "s" })
}

impl SetAside {
    pub fn total(&self) -> usize {
        self.kills + self.stages + self.verdicts
    }

    /// One line for a person: how many of what were set aside, and the window, in UTC; empty
    /// when nothing was.
    pub fn describe(&self) -> String {
        let Some((from, to)) = self.window.filter(|_| self.total() > 0) else {
            return String::new();
        };
        let mut what = Vec::new();
        for (n, one) in [
            (self.kills, "kill"),
            (self.stages, "stage"),
            (self.verdicts, "verdict"),
        ] {
            if n > 0 {
                what.push(count(n, one));
            }
        }
        format!(
            "{} set aside, dated outside {} ({} to {})",
            what.join(", "),
            self.reason,
            rfc3339(from),
            rfc3339(to)
        )
    }
}

/// `t` (unix seconds) to the second, `2026-11-29T05:26:40Z`.
fn rfc3339(t: f64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.floor() as i64)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{t} s"))
}

/// The longest event log line read: 1 MiB. The agent's longest records (a kill with its OOM
/// domain, group and cgroup paths) are a few KiB; a longer line is skipped without being
/// parsed (parsing it would hold a JSON tree several times its size) and counted in
/// [`Episode::long_lines`].
pub const MAX_EVENT_LINE_BYTES: usize = 1 << 20;

/// The longest text kept from one event field (a kind, a comm, a pod UID, a stage, a cause):
/// 256 bytes, cut at a character boundary; the agent's own values are far shorter.
pub const MAX_FIELD_BYTES: usize = 256;

/// `s` cut to at most [`MAX_FIELD_BYTES`] bytes at a character boundary.
fn field(s: &str) -> String {
    let mut end = s.len().min(MAX_FIELD_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The earliest plausible event time: 2014-01-01T00:00:00Z, before eBPF's `bpf(2)` (Linux
/// 3.18, December 2014); no agent can have recorded anything earlier.
pub const EARLIEST_PLAUSIBLE: f64 = 1_388_534_400.0;
/// How far past the clock of the machine drawing the report an event may be (clock skew).
pub const FUTURE_SLACK_S: f64 = 86_400.0;
/// The least margin around the series' span within which events are kept.
pub const SPAN_MARGIN_S: f64 = 600.0;

fn unix_of(rfc3339: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

impl Episode {
    /// The times events must fall in to be drawn, and why: with samples, the series' span
    /// widened on each side by its largest gap between samples (at least [`SPAN_MARGIN_S`]); without,
    /// [`EARLIEST_PLAUSIBLE`] to `now` (unix seconds) plus [`FUTURE_SLACK_S`].
    pub fn window(samples: &[Sample], now: i64) -> ((f64, f64), &'static str) {
        match (samples.first(), samples.last()) {
            (Some(a), Some(b)) => {
                let gap = samples
                    .windows(2)
                    .map(|w| w[1].t.saturating_sub(w[0].t))
                    .max()
                    .unwrap_or(0) as f64;
                let m = gap.max(SPAN_MARGIN_S);
                ((a.t as f64 - m, b.t as f64 + m), "the series' span")
            }
            _ => (
                (EARLIEST_PLAUSIBLE, now as f64 + FUTURE_SLACK_S),
                "plausible times",
            ),
        }
    }

    /// From the persisted samples and the agent's JSON event log (`run --format json`); `now`
    /// (unix seconds) bounds plausible event times when there are no samples. Events dated
    /// outside [`Episode::window`] are set aside and counted ([`Episode::set_aside`]), never
    /// drawn: one wrong clock would otherwise stretch the axis over centuries.
    pub fn new(samples: &[Sample], events: &str, now: i64) -> Episode {
        let (window, reason) = Episode::window(samples, now);
        let inside = |t: f64| t >= window.0 && t <= window.1;
        let mut ep = Episode {
            memory: samples
                .iter()
                .map(|s| (s.t, s.kubelet_rss_bytes, s.kubelet_limit_bytes))
                .collect(),
            set_aside: SetAside {
                window: Some(window),
                reason,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut offset: Option<f64> = None;
        let mut staged: Vec<(u64, String, Option<f64>)> = Vec::new();
        for line in events.lines().filter(|l| !l.trim().is_empty()) {
            if line.len() > MAX_EVENT_LINE_BYTES {
                ep.long_lines += 1;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                ep.skipped_lines += 1;
                continue;
            };
            match v["event"].as_str() {
                Some("kill") => {
                    let Some(t) = v["time"].as_str().and_then(unix_of) else {
                        ep.skipped_lines += 1;
                        continue;
                    };
                    if !inside(t) {
                        ep.set_aside.kills += 1;
                        continue;
                    }
                    if let Some(k) = v["ktime_ns"].as_u64() {
                        offset.get_or_insert(t - k as f64 / 1e9);
                    }
                    ep.kills.push(Kill {
                        t,
                        kind: field(v["kind"].as_str().unwrap_or("?")),
                        pid: v["victim"]["pid"].as_u64().unwrap_or(0),
                        comm: field(v["victim"]["comm"].as_str().unwrap_or("?")),
                        pod: v["victim"]["pod"]["pod_uid"].as_str().map(field),
                    });
                }
                Some("stage") => {
                    if let (Some(k), Some(s)) = (v["ktime_ns"].as_u64(), v["stage"].as_str()) {
                        // A byte count the agent could have written (finite, not negative,
                        // within a u64): 1e308 made the memory axis read "inf MiB" and put
                        // its grid at y="-inf".
                        let peak = v["storm"]["peak_rss_bytes"].as_f64().filter(|p| {
                            crate::detect::series::invalid_value("kubelet_rss_bytes", *p).is_none()
                        });
                        staged.push((k, field(s), peak));
                    }
                }
                Some("verdict") => {
                    let f = &v["forecast"];
                    let t = v["time"].as_str().and_then(unix_of);
                    if t.is_some_and(|t| !inside(t)) {
                        ep.set_aside.verdicts += 1;
                        continue;
                    }
                    // A time to OOM is never negative: -1e308 drew the band at
                    // x="-1.3e307" and titled it with empty times.
                    let secs = |k: &str| f[k].as_f64().filter(|s| *s >= 0.0);
                    ep.forecast = t.map(|t| Forecast {
                        t,
                        slope_bytes_per_day: v["slope_bytes_per_day"].as_f64().unwrap_or(0.0),
                        earliest_seconds: secs("earliest_seconds"),
                        expected_seconds: secs("expected_seconds"),
                        latest_seconds: secs("latest_seconds"),
                        cause: field(v["cause"].as_str().unwrap_or("")),
                    });
                }
                Some(_) => {}
                None => ep.skipped_lines += 1,
            }
        }
        for (k, stage, peak) in staged {
            let Some(off) = offset else {
                ep.unplaced_stages += 1;
                continue;
            };
            let t = off + k as f64 / 1e9;
            if !inside(t) {
                ep.set_aside.stages += 1;
                continue;
            }
            if let Some(p) = peak {
                if ep.storm_peak.is_none_or(|(_, b)| p > b) {
                    ep.storm_peak = Some((t, p));
                }
            }
            ep.stages.push((t, stage));
        }
        ep
    }

    /// Keeps what happened at or after `end - seconds`, `end` being the newest sample or event.
    pub fn since(mut self, seconds: f64) -> Episode {
        let end = self
            .memory
            .iter()
            .map(|m| m.0 as f64)
            .chain(self.kills.iter().map(|k| k.t))
            .chain(self.stages.iter().map(|s| s.0))
            .fold(f64::MIN, f64::max);
        let from = end - seconds;
        self.memory.retain(|m| m.0 as f64 >= from);
        self.kills.retain(|k| k.t >= from);
        // The stage in force at `from` is kept, starting there.
        let before = self.stages.iter().rposition(|s| s.0 < from);
        if let Some(i) = before {
            self.stages.drain(..i);
            if let Some(s) = self.stages.first_mut() {
                s.0 = s.0.max(from);
            }
        }
        self.storm_peak = self.storm_peak.filter(|p| p.0 >= from);
        self
    }
}

/// `30s`, `15m`, `6h`, `2d` to seconds.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s}: a number followed by s, m, h or d"))?;
    let mul = match unit {
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("{s}: unit must be s, m, h or d")),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{s}: must be positive"));
    }
    if n * mul > MAX_SINCE_SECONDS {
        return Err(format!("{s}: at most 3650d"));
    }
    Ok(n * mul)
}

/// The longest `--since`: ten years, far beyond any series kept.
const MAX_SINCE_SECONDS: f64 = 3650.0 * 86400.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn utc(t: f64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t as i64)
        .map(|d| format!("{:02}:{:02}:{:02}", d.hour(), d.minute(), d.second()))
        .unwrap_or_default()
}

/// An axis label for `t`: the time of day, with the date (`MM-DD`) when the axis spans more
/// than a day (a multi-day history otherwise shows the same hours twice).
fn axis_label(t: f64, span: f64) -> String {
    if span <= 86_400.0 {
        return utc(t);
    }
    time::OffsetDateTime::from_unix_timestamp(t as i64)
        .map(|d| {
            format!(
                "{:02}-{:02} {:02}:{:02}",
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute()
            )
        })
        .unwrap_or_default()
}

fn mib(b: f64) -> String {
    format!("{:.0} MiB", b / 1048576.0)
}

const W: f64 = 1000.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 45.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 60.0;

/// Stage band colours (steady is left blank).
fn stage_color(stage: &str) -> Option<&'static str> {
    Some(match stage {
        "pre_oom" => "#fde68a",
        "active_oom" => "#fca5a5",
        "reconciliation_storm" => "#fdba74",
        "recovery" => "#bbf7d0",
        "re_oom" => "#f87171",
        _ => return None,
    })
}

/// The chart as a standalone SVG document.
pub fn svg(ep: &Episode) -> String {
    let mut t0 = f64::MAX;
    let mut t1 = f64::MIN;
    for t in ep
        .memory
        .iter()
        .map(|m| m.0 as f64)
        .chain(ep.kills.iter().map(|k| k.t))
        .chain(ep.stages.iter().map(|s| s.0))
    {
        t0 = t0.min(t);
        t1 = t1.max(t);
    }
    if t0 > t1 {
        (t0, t1) = (0.0, 1.0);
    }
    let span = (t1 - t0).max(1.0);
    // The forecast widens the time axis, by half the episode's span at most.
    let band = ep.forecast.as_ref().and_then(|f| {
        let e = f.t + f.earliest_seconds?;
        Some((
            e,
            f.latest_seconds.map(|l| f.t + l),
            f.expected_seconds.map(|x| f.t + x),
        ))
    });
    let t_end = match band {
        Some((e, l, xp)) => t1.max(l.or(xp).unwrap_or(e).min(t1 + span * 0.5)),
        None => t1,
    };
    let limit = ep.memory.iter().filter_map(|m| m.2).fold(0.0, f64::max);
    let ymax = ep
        .memory
        .iter()
        .map(|m| m.1)
        .chain(std::iter::once(limit))
        .chain(ep.storm_peak.map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.08;
    let x = |t: f64| LEFT + (t - t0) / (t_end - t0).max(1.0) * (W - LEFT - RIGHT);
    let y = |b: f64| TOP + (1.0 - b / ymax) * (H - TOP - BOTTOM);
    let (px0, px1, py0, py1) = (x(t0), x(t_end), y(0.0), y(ymax));

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" id="oomprobe-report" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"##
    );
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>"##
    );
    // Stage bands, each until the next stage (the last one until the end of the axis).
    s.push_str(r#"<g id="stages">"#);
    for (i, (t, stage)) in ep.stages.iter().enumerate() {
        let next = ep.stages.get(i + 1).map_or(t1, |n| n.0);
        if let Some(c) = stage_color(stage) {
            let _ = write!(
                s,
                r#"<rect class="stage" data-stage="{st}" x="{:.1}" y="{py1:.1}" width="{:.1}" height="{:.1}" fill="{c}" opacity="0.55"><title>{st} from {}</title></rect>"#,
                x(*t),
                (x(next) - x(*t)).max(1.0),
                py0 - py1,
                utc(*t),
                st = esc(stage)
            );
        }
    }
    s.push_str("</g>");
    // Axes and grid.
    s.push_str(r##"<g id="axes" stroke="#9ca3af">"##);
    for i in 0..=5 {
        let b = ymax / 1.08 * i as f64 / 5.0;
        let _ = write!(
            s,
            r##"<line x1="{px0}" x2="{px1:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke-opacity="0.3"/><text x="{:.1}" y="{:.1}" text-anchor="end" stroke="none" fill="#374151">{}</text>"##,
            px0 - 6.0,
            y(b) + 4.0,
            mib(b),
            yy = y(b)
        );
    }
    for i in 0..=6 {
        let t = t0 + (t_end - t0) * i as f64 / 6.0;
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{py0:.1}" y2="{:.1}"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle" stroke="none" fill="#374151">{}</text>"##,
            py0 + 5.0,
            py0 + 18.0,
            axis_label(t, t_end - t0),
            xx = x(t)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" stroke="none" fill="#374151">UTC</text></g>"##,
        (px0 + px1) / 2.0,
        py0 + 34.0
    );
    // Limit.
    if limit > 0.0 {
        let _ = write!(
            s,
            r##"<line id="limit" x1="{px0}" x2="{px1:.1}" y1="{yl:.1}" y2="{yl:.1}" stroke="#dc2626" stroke-dasharray="6 4" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#dc2626">limit {}</text>"##,
            px1 - 4.0,
            y(limit) - 5.0,
            mib(limit),
            yl = y(limit)
        );
    }
    // Time-to-OOM band and the expected time.
    if let Some((e, l, xp)) = band {
        let right = l.unwrap_or(t_end).min(t_end);
        let _ = write!(
            s,
            r##"<rect id="time-to-oom-band" x="{:.1}" y="{py1:.1}" width="{:.1}" height="{:.1}" fill="#dc2626" fill-opacity="0.18" stroke="#dc2626" stroke-dasharray="3 3"><title>time to OOM: earliest {}, latest {}</title></rect>"##,
            x(e.min(t_end)),
            (x(right) - x(e.min(t_end))).max(2.0),
            py0 - py1,
            utc(e),
            l.map_or("beyond the chart".into(), utc)
        );
        if let Some(xp) = xp.filter(|xp| *xp <= t_end) {
            let _ = write!(
                s,
                r##"<line id="time-to-oom-expected" x1="{xx:.1}" x2="{xx:.1}" y1="{py0:.1}" y2="{py1:.1}" stroke="#dc2626" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" fill="#dc2626">OOM expected {}</text>"##,
                x(xp) + 4.0,
                py1 + 14.0,
                utc(xp),
                xx = x(xp)
            );
        }
    }
    // Memory, then its baseline.
    let pts: Vec<String> = ep
        .memory
        .iter()
        .map(|m| format!("{:.1},{:.1}", x(m.0 as f64), y(m.1)))
        .collect();
    let _ = write!(
        s,
        r##"<polyline id="memory" points="{}" fill="none" stroke="#2563eb" stroke-width="1.5"/>"##,
        pts.join(" ")
    );
    let series: Vec<(i64, f64)> = ep.memory.iter().map(|m| (m.0, m.1)).collect();
    let bucket = ((span / 24.0) as i64).max(10);
    // Baseline points are bucket times: keep those on the axis (a last bucket's time may lie
    // past the last sample).
    let base: Vec<(f64, f64)> = baseline(&series, bucket, 0.1)
        .into_iter()
        .filter(|(t, _)| (t0..=t_end).contains(t))
        .collect();
    if base.len() >= 2 {
        let pts: Vec<String> = base
            .iter()
            .map(|(t, b)| format!("{:.1},{:.1}", x(*t), y(*b)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline id="baseline" points="{}" fill="none" stroke="#111827" stroke-width="2" stroke-dasharray="2 3"/>"##,
            pts.join(" ")
        );
    }
    // The leak slope through the baseline where the verdict was made (its last point at or
    // before the verdict), on to the limit or the axis's end.
    let anchor = ep.forecast.as_ref().and_then(|f| {
        base.iter()
            .rev()
            .find(|(t, _)| *t <= f.t)
            .or(base.first())
            .copied()
    });
    if let (Some(f), Some((tb, bb))) = (&ep.forecast, anchor) {
        if f.slope_bytes_per_day > 0.0 {
            let per_s = f.slope_bytes_per_day / 86400.0;
            let mut t_to = t_end;
            if limit > bb {
                t_to = t_to.min(tb + (limit - bb) / per_s);
            }
            let from = t0.max(tb - span / 4.0);
            let _ = write!(
                s,
                r##"<line id="leak-slope" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#7c3aed" stroke-width="1.5" stroke-dasharray="8 4"><title>leak slope {:.0} MB/day ({})</title></line>"##,
                x(from),
                y((bb + per_s * (from - tb)).max(0.0)),
                x(t_to),
                y(bb + per_s * (t_to - tb)),
                f.slope_bytes_per_day / 1e6,
                esc(&f.cause)
            );
        }
    }
    // The storm's peak.
    if let Some((t, b)) = ep.storm_peak {
        let _ = write!(
            s,
            r##"<g id="storm-peak"><path d="M{xx:.1},{:.1} l6,10 h-12 z" fill="#ea580c"/><text x="{:.1}" y="{:.1}" fill="#ea580c">storm peak {}</text></g>"##,
            y(b) - 12.0,
            x(t) + 8.0,
            y(b) - 4.0,
            mib(b),
            xx = x(t)
        );
    }
    // Kills: a tick at the bottom and a marker, the title names kind, victim and pod.
    s.push_str(r#"<g id="kills">"#);
    for k in &ep.kills {
        let color = match k.kind.as_str() {
            "oom_memcg" => "#b91c1c",
            "oom_global" => "#7f1d1d",
            _ => "#4b5563",
        };
        let pod = k.pod.as_deref().unwrap_or("");
        let _ = write!(
            s,
            r#"<g class="kill" data-kind="{kind}" data-victim="{pid}" data-comm="{comm}" data-pod="{pod}"><line x1="{xx:.1}" x2="{xx:.1}" y1="{py0:.1}" y2="{:.1}" stroke="{color}" stroke-width="1"/><circle cx="{xx:.1}" cy="{:.1}" r="5" fill="{color}"/><title>{} {kind} {comm}({pid}){}</title><text x="{:.1}" y="{:.1}" font-size="10" fill="{color}" transform="rotate(-90 {:.1} {:.1})">{comm} {kind}</text></g>"#,
            py1,
            py0 - 6.0,
            utc(k.t),
            if pod.is_empty() {
                String::new()
            } else {
                format!(" pod {}", esc(pod))
            },
            x(k.t) - 3.0,
            py0 - 14.0,
            x(k.t) - 3.0,
            py0 - 14.0,
            kind = esc(&k.kind),
            pid = k.pid,
            comm = esc(&k.comm),
            pod = esc(pod),
            xx = x(k.t)
        );
    }
    s.push_str("</g>");
    // Events not drawn for their time, said under the chart.
    if ep.set_aside.total() > 0 {
        let _ = write!(
            s,
            r##"<text id="set-aside" data-count="{}" x="{LEFT}" y="{:.1}" font-size="11" fill="#b45309">{}</text>"##,
            ep.set_aside.total(),
            H - 4.0,
            esc(&ep.set_aside.describe())
        );
    }
    // Legend: only what the chart shows.
    let mut legend: Vec<(&str, &str)> = vec![("#2563eb", "kubelet RSS")];
    if s.contains(r#"id="baseline""#) {
        legend.push(("#111827", "baseline"));
    }
    if s.contains(r#"id="leak-slope""#) {
        legend.push(("#7c3aed", "leak slope"));
    }
    match (limit > 0.0, s.contains(r#"id="time-to-oom-band""#)) {
        (true, true) => legend.push(("#dc2626", "limit, time-to-OOM band")),
        (true, false) => legend.push(("#dc2626", "limit")),
        (false, true) => legend.push(("#dc2626", "time-to-OOM band")),
        (false, false) => {}
    }
    if !ep.kills.is_empty() {
        legend.push(("#b91c1c", "kills"));
    }
    if ep.stages.iter().any(|(_, st)| stage_color(st).is_some()) {
        legend.push(("#9a3412", "stages: pre_oom, active_oom, storm, recovery"));
    }
    s.push_str(r#"<g id="legend" font-size="11">"#);
    let mut lx = LEFT;
    for (color, text) in legend {
        let _ = write!(
            s,
            r#"<text x="{lx:.0}" y="18" fill="{color}">{text}</text>"#
        );
        // About 6 px per character at 11 px, and a gap.
        lx += 6.0 * text.len() as f64 + 16.0;
    }
    s.push_str("</g>");
    s.push_str("</svg>\n");
    s
}

/// The HTML page: a summary, the chart inline, and the kills as a table.
pub fn html(ep: &Episode) -> String {
    let mut h = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>oomprobe report</title>\
         <style>body{font-family:sans-serif;margin:24px;color:#111827}table{border-collapse:collapse}\
         td,th{border:1px solid #d1d5db;padding:3px 8px;text-align:left}</style></head><body>\n",
    );
    let ooms = ep
        .kills
        .iter()
        .filter(|k| k.kind.starts_with("oom"))
        .count();
    let _ = write!(
        h,
        "<h1>oomprobe: the kubelet's memory and the kills</h1>\n<p id=\"summary\">{}, {} ({}), {}{}{}.</p>\n",
        count(ep.memory.len(), "sample"),
        count(ep.kills.len(), "kill"),
        count(ooms, "OOM kill"),
        count(ep.stages.len(), "stage change"),
        ep.forecast.as_ref().map_or(String::new(), |f| format!(
            ", leak slope {:.0} MB/day ({}){}",
            f.slope_bytes_per_day / 1e6,
            esc(&f.cause),
            f.expected_seconds
                .map_or(String::new(), |e| format!(", OOM expected {:.1} h after the verdict", e / 3600.0))
        )),
        ep.storm_peak
            .map_or(String::new(), |(_, b)| format!(", storm peak {}", mib(b)))
    );
    if ep.set_aside.total() > 0 {
        let _ = writeln!(
            h,
            "<p id=\"set-aside\">Not drawn: {}.</p>",
            esc(&ep.set_aside.describe())
        );
    }
    h.push_str(&svg(ep));
    h.push_str("<table id=\"kill-table\"><tr><th>time (UTC)</th><th>kind</th><th>victim</th><th>pod</th></tr>\n");
    for k in &ep.kills {
        let _ = writeln!(
            h,
            "<tr class=\"kill-row\"><td>{}</td><td>{}</td><td>{}({})</td><td>{}</td></tr>",
            utc(k.t),
            esc(&k.kind),
            esc(&k.comm),
            k.pid,
            esc(k.pod.as_deref().unwrap_or("-"))
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episode() -> Episode {
        let samples: Vec<Sample> = (0..120)
            .map(|i| Sample {
                t: 1_795_900_000 + i * 10,
                kubelet_rss_bytes: 50e6 + i as f64 * 0.3e6,
                kubelet_limit_bytes: Some(100e6),
                ..Default::default()
            })
            .collect();
        let events = r#"{"event":"kill","time":"2026-11-28T21:20:00Z","ktime_ns":1000000000000,"kind":"oom_memcg","victim":{"pid":42,"comm":"kubelet","pod":null}}
{"event":"kill","time":"2026-11-28T21:20:20Z","ktime_ns":1020000000000,"kind":"signal","victim":{"pid":77,"comm":"app","pod":{"pod_uid":"aa-bb"}}}
{"event":"stage","ktime_ns":990000000000,"stage":"pre_oom"}
{"event":"stage","ktime_ns":1000000000000,"stage":"active_oom"}
{"event":"stage","ktime_ns":1010000000000,"stage":"reconciliation_storm","storm":{"peak_rss_bytes":80000000}}
not json
{"event":"verdict","time":"2026-11-28T21:25:00Z","cause":"unknown","slope_bytes_per_day":2.0e9,"forecast":{"earliest_seconds":120,"expected_seconds":300,"latest_seconds":1500}}"#;
        Episode::new(&samples, events, 1_800_000_000)
    }

    /// A line longer than [`MAX_EVENT_LINE_BYTES`] is skipped unparsed and counted on its
    /// own; a huge field in a line under it is kept cut to [`MAX_FIELD_BYTES`].
    #[test]
    fn huge_lines_are_skipped_and_huge_fields_cut() {
        let kill = |comm: &str| {
            format!(
                r#"{{"event":"kill","time":"2026-11-28T21:20:00Z","ktime_ns":1000000000000,"kind":"oom_memcg","victim":{{"pid":42,"comm":"{comm}"}}}}"#
            )
        };
        let huge = kill(&"x".repeat(MAX_EVENT_LINE_BYTES));
        let long = kill(&"é".repeat(1000));
        let events = format!("{huge}\n{long}\n{}\n", kill("kubelet"));
        let ep = Episode::new(&[], &events, 1_800_000_000);
        assert_eq!((ep.long_lines, ep.skipped_lines), (1, 0));
        assert_eq!(ep.kills.len(), 2);
        // 'é' is two bytes: 128 of them fill the 256.
        assert_eq!(ep.kills[0].comm, "é".repeat(128));
        assert_eq!(ep.kills[1].comm, "kubelet");
    }

    #[test]
    fn events_are_placed_in_utc() {
        let ep = episode();
        assert_eq!(ep.kills.len(), 2);
        assert_eq!(ep.kills[1].pod.as_deref(), Some("aa-bb"));
        assert_eq!(ep.skipped_lines, 1);
        // ktime 1000 s was 21:20:00Z: the stage at ktime 990 s was ten seconds earlier.
        assert_eq!(ep.stages[0], (ep.kills[0].t - 10.0, "pre_oom".to_string()));
        assert_eq!(ep.storm_peak, Some((ep.kills[0].t + 10.0, 80e6)));
        assert_eq!(ep.forecast.as_ref().unwrap().expected_seconds, Some(300.0));
    }

    /// Figures the agent never writes (a storm peak of 1e308 or below zero, a negative time to
    /// OOM) are not drawn: the axis stays on the series, every coordinate finite.
    #[test]
    fn impossible_figures_from_the_event_log_are_not_drawn() {
        let samples: Vec<Sample> = (0..4)
            .map(|i| Sample {
                t: 1_790_000_000 + i * 3600,
                kubelet_rss_bytes: 100e6,
                pods: 3.0,
                kubelet_limit_bytes: Some(200e6),
                ..Default::default()
            })
            .collect();
        for peak in ["1e308", "-5"] {
            let events = format!(
                r#"{{"event":"kill","time":"2026-09-21T14:00:00Z","ktime_ns":1000000000,"kind":"oom_memcg","victim":{{"pid":1,"comm":"x"}}}}
{{"event":"stage","ktime_ns":1000000001,"stage":"reconciliation_storm","storm":{{"peak_rss_bytes":{peak}}}}}
{{"event":"verdict","time":"2026-09-21T14:30:00Z","slope_bytes_per_day":1e6,"forecast":{{"earliest_seconds":-1e308,"expected_seconds":-1,"latest_seconds":-2}},"cause":"x"}}"#
            );
            let ep = Episode::new(&samples, &events, 1_800_000_000);
            assert_eq!(ep.storm_peak, None, "{peak}");
            let f = ep.forecast.as_ref().unwrap();
            assert_eq!(
                (f.earliest_seconds, f.expected_seconds, f.latest_seconds),
                (None, None, None)
            );
            let svg = svg(&ep);
            assert!(!svg.contains("inf"), "{peak}: {svg}");
            assert!(!svg.contains("time-to-oom-band"), "{peak}");
            assert!(!svg.contains("e+"), "{peak}");
        }
    }

    /// Events dated 1970 and 9999 (a wrong clock, a hand-edited log) beside a series of
    /// 2026 are set aside and counted, and said under the chart and in the page; the axis
    /// stays on the series. Without a series, the plausible years bound them instead.
    #[test]
    fn events_outside_the_series_span_are_set_aside_and_said() {
        let samples: Vec<Sample> = (0..120)
            .map(|i| Sample {
                t: 1_795_900_000 + i * 10,
                kubelet_rss_bytes: 50e6,
                ..Default::default()
            })
            .collect();
        // The series: 21:06:40 to 21:26:30 on 2026-11-28, 10 s apart: kept from 20:56:40 to
        // 21:36:30 (a 10-minute margin).
        let events = r#"{"event":"kill","time":"1970-01-01T00:00:01Z","ktime_ns":1000000000,"kind":"oom_memcg","victim":{"pid":1,"comm":"a"}}
{"event":"kill","time":"9999-12-31T23:59:59Z","ktime_ns":2000000000,"kind":"oom_memcg","victim":{"pid":2,"comm":"b"}}
{"event":"kill","time":"2026-11-28T21:40:00Z","ktime_ns":3000000000,"kind":"signal","victim":{"pid":3,"comm":"c"}}
{"event":"kill","time":"2026-11-28T21:20:00Z","ktime_ns":1000000000000,"kind":"oom_memcg","victim":{"pid":42,"comm":"kubelet"}}
{"event":"stage","ktime_ns":990000000000,"stage":"pre_oom"}
{"event":"stage","ktime_ns":9000000000000,"stage":"recovery"}
{"event":"verdict","time":"9999-01-01T00:00:00Z","cause":"unknown","slope_bytes_per_day":2.0e9,"forecast":{"earliest_seconds":120,"expected_seconds":300,"latest_seconds":1500}}"#;
        let ep = Episode::new(&samples, events, 1_800_000_000);
        let pids: Vec<u64> = ep.kills.iter().map(|k| k.pid).collect();
        assert_eq!(pids, [42]);
        // The stage 10 s before the kept kill is placed by it (not by the 1970 kill's clock).
        assert_eq!(ep.stages, [(ep.kills[0].t - 10.0, "pre_oom".to_string())]);
        assert_eq!(ep.forecast, None);
        assert_eq!(
            ep.set_aside,
            SetAside {
                kills: 3,
                stages: 1,
                verdicts: 1,
                window: Some((1_795_899_400.0, 1_795_901_790.0)),
                reason: "the series' span",
            }
        );
        let said = "3 kills, 1 stage, 1 verdict set aside, dated outside the series' span (2026-11-28T20:56:40Z to 2026-11-28T21:36:30Z)";
        assert_eq!(ep.set_aside.describe(), said);
        let s = svg(&ep);
        assert!(s.contains(r#"data-count="5""#), "{s}");
        assert!(s.contains(&esc(said)));
        // The axis stays on the series: its first and last ticks are 21:06:40 and 21:26:30.
        assert!(s.contains(">21:06:40<") && s.contains(">21:26:30<"), "{s}");
        assert!(html(&ep).contains(&format!(
            "<p id=\"set-aside\">Not drawn: {}.</p>",
            esc(said)
        )));
        // The event log alone: only the plausible years bound it.
        let ep = Episode::new(&[], events, 1_800_000_000);
        assert_eq!(ep.kills.len(), 2);
        assert_eq!(
            ep.set_aside.describe(),
            "2 kills, 1 verdict set aside, dated outside plausible times (2014-01-01T00:00:00Z to 2027-01-16T08:00:00Z)"
        );
        // Nothing set aside, nothing said.
        let ep = episode();
        assert_eq!(ep.set_aside.total(), 0);
        assert!(!svg(&ep).contains("set-aside") && !html(&ep).contains("set-aside"));
    }

    #[test]
    fn svg_has_every_element() {
        let s = svg(&episode());
        for id in [
            "id=\"memory\"",
            "id=\"baseline\"",
            "id=\"limit\"",
            "id=\"leak-slope\"",
            "id=\"time-to-oom-band\"",
            "id=\"time-to-oom-expected\"",
            "id=\"storm-peak\"",
        ] {
            assert!(s.contains(id), "{id} missing");
        }
        assert_eq!(s.matches("class=\"kill\"").count(), 2);
        // steady has no band; the three others do.
        assert_eq!(s.matches("class=\"stage\"").count(), 3);
        assert!(s.contains(r#"data-pod="aa-bb""#));
    }

    /// A history without events (`report --csv` alone) draws no slope, band, kills or stages,
    /// and its legend lists none of them; a five-day axis carries dates; the baseline stays on
    /// the axis.
    #[test]
    fn legend_lists_only_what_is_drawn_and_long_axes_have_dates() {
        let samples: Vec<Sample> = (0..5 * 24 * 6)
            .map(|i| Sample {
                t: 1_790_000_000 + i * 600,
                kubelet_rss_bytes: 2e8 + (i % 7) as f64 * 1e6,
                pods: 10.0,
                ..Default::default()
            })
            .collect();
        let s = svg(&Episode::new(&samples, "", 1_800_000_000));
        let legend = &s[s.find(r#"<g id="legend""#).unwrap()..];
        assert!(legend.contains(">kubelet RSS<") && legend.contains(">baseline<"));
        for absent in ["leak slope", "time-to-OOM", "kills", "stages", "limit"] {
            assert!(!legend.contains(absent), "{absent} in the legend");
        }
        // 1790000000 is 2026-09-21 14:13:20 UTC; the first tick carries the date.
        assert!(s.contains(">09-21 14:13<"), "no dated tick");
        let end = LEFT + (W - LEFT - RIGHT) + 0.05;
        let base = &s[s.find(r#"id="baseline" points=""#).unwrap() + 22..];
        let base = &base[..base.find('"').unwrap()];
        for p in base.split(' ') {
            let x: f64 = p.split(',').next().unwrap().parse().unwrap();
            assert!(
                (LEFT - 0.05..=end).contains(&x),
                "baseline point {p} off the axis"
            );
        }
    }

    /// Every string from the event log is escaped: a pod UID taken from a cgroup name a
    /// workload chose (`pod_identity` takes what follows `pod`), a comm, a kind, a stage.
    #[test]
    fn hostile_strings_from_the_event_log_are_escaped() {
        let events = r#"{"event":"kill","time":"2026-11-28T21:20:20Z","ktime_ns":1020000000000,"kind":"<k>","victim":{"pid":77,"comm":"<c>&","pod":{"pod_uid":"\"><img src=x onerror=alert(1)>"}}}
{"event":"stage","ktime_ns":1000000000000,"stage":"<s>"}"#;
        // 21:06:40 to 21:26:30: the kill is within the series' span.
        let samples: Vec<Sample> = (0..120)
            .map(|i| Sample {
                t: 1_795_900_000 + i * 10,
                kubelet_rss_bytes: 50e6,
                ..Default::default()
            })
            .collect();
        let ep = Episode::new(&samples, events, 1_800_000_000);
        assert_eq!(ep.kills.len(), 1);
        for out in [svg(&ep), html(&ep)] {
            assert!(!out.contains("<img"), "{out}");
            assert!(!out.contains("<k>") && !out.contains("<c>") && !out.contains("<s>"));
            assert!(out.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
        }
    }

    #[test]
    fn since_keeps_the_stage_in_force() {
        let ep = episode().since(375.0);
        assert_eq!(ep.kills.len(), 1);
        assert_eq!(ep.stages.len(), 1);
        assert_eq!(ep.stages[0].1, "reconciliation_storm");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90.0));
        assert_eq!(parse_duration("6h"), Ok(21600.0));
        assert_eq!(parse_duration("2d"), Ok(172800.0));
        assert!(parse_duration("6x").is_err());
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(parse_duration("3650d"), Ok(315_360_000.0));
        assert_eq!(
            parse_duration("18446744073709551616s"),
            Err("18446744073709551616s: at most 3650d".into())
        );
        assert_eq!(parse_duration("3651d"), Err("3651d: at most 3650d".into()));
    }
}
