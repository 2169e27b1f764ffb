//! What the agent writes: one [`Output`] enum for every event of the stream, its JSON form (one
//! object a line, internally tagged by `event`) and its text form, and the [`Sink`] that routes
//! each by its type: in the text format, kills (and their classification), attribution,
//! verdicts and stage changes are stdout lines; the rest goes to the log.
use std::io::Write as _;

use serde::Serialize;

use crate::{
    act::ActionEvent,
    cycle::StageEvent,
    detect::Verdict,
    forensics::KillRecord,
    kubeapi::report::KillClassified,
    kubelet::tracker::{KubeletReport, KubeletStart},
    memcg_events::MemcgEvent,
    sampler::SampleEvent,
};

/// A verdict's slope for a text line: `<MB>MB/day` (decimal MB, whole), or `-` when unknown
/// (subject `insufficient_history`).
pub fn slope_text(v: &crate::detect::Verdict) -> String {
    v.slope_bytes_per_day
        .map_or_else(|| "-".to_string(), |s| format!("{:.0}MB/day", s / 1e6))
}

/// For a `workload` verdict, ` workload_slope=<MB>MB/day`: the pods' working-set growth the
/// workload detector fitted (its `workload_trend` finding), beside `slope=`, which is always the
/// kubelet's baseline slope (the JSON `slope_bytes_per_day`); empty for other subjects.
pub fn workload_slope_text(v: &crate::detect::Verdict) -> String {
    if v.subject != crate::detect::Subject::Workload {
        return String::new();
    }
    v.findings
        .iter()
        .find(|f| f.detector == "workload_trend")
        .map_or_else(String::new, |f| {
            format!(" workload_slope={:.0}MB/day", f.value / 1e6)
        })
}

/// The format of what a verb writes on stdout (the event stream, probe points, verdicts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum OutputFormat {
    /// One readable line per record (an event, a probe point, a verdict).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One event of the stream. JSON: one object, internally tagged by `event` (the variant in
/// snake_case), then the record's fields.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Output {
    /// A SIGKILL end to end (`"kill"`).
    Kill(Box<KillRecord>),
    /// What the API confirmed a kill was, after its kill record (`"kill_classified"`).
    KillClassified(Box<KillClassified>),
    /// A kubelet process (re)started (`"kubelet_start"`).
    KubeletStart(KubeletStart),
    /// The periodic attribution of the kubelet's mapped memory (`"kubelet_memory"`).
    KubeletMemory(KubeletReport),
    /// A memory cgroup notification, pressure or reclaim (`"memcg"`).
    Memcg(MemcgEvent),
    /// A periodic sample of the kubelet and the node (`"sample"`, with `--emit-samples`).
    Sample(SampleEvent),
    /// A change of the leak detectors' verdict (`"verdict"`).
    Verdict(Verdict),
    /// A change of the OOM cycle's stage (`"stage"`).
    Stage(StageEvent),
    /// The opt-in action, taken or dry-run (`"action"`).
    Action(ActionEvent),
}

/// Where an output goes in the text format.
pub enum Text {
    /// A line on stdout.
    Line(String),
    /// A log line (stderr), not part of the text stream.
    Log,
    /// Nothing: JSON only.
    Hidden,
}

impl Output {
    /// One JSON object, no newline.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The text format's rendering of this event.
    pub fn text(&self) -> Text {
        match self {
            Output::Kill(rec) => Text::Line(rec.text()),
            Output::KillClassified(c) => Text::Line(c.text()),
            Output::KubeletMemory(rep) => Text::Line(rep.text()),
            Output::Verdict(v) => Text::Line(format!(
                "{} LEAK subject={} cause={} slope={}{}",
                v.time,
                v.subject.as_str(),
                v.cause.as_str(),
                slope_text(v),
                workload_slope_text(v)
            )),
            Output::Stage(ev) => {
                let mut line = format!(
                    "STAGE {} cycles={} flapping={}",
                    ev.stage.as_str(),
                    ev.cycles,
                    ev.flapping
                );
                if let Some(e) = ev.ending {
                    line.push_str(&format!(" ending={}", e.as_str()));
                }
                if let Some(s) = ev.seconds_left {
                    line.push_str(&format!(" seconds_left={s:.0}"));
                }
                let caused: usize = ev.collateral_caused.values().map(Vec::len).sum();
                if caused > 0 {
                    line.push_str(&format!(" collateral_caused={caused}"));
                }
                line.push(' ');
                line.push_str(&ev.detail);
                Text::Line(line)
            }
            Output::KubeletStart(_) | Output::Action(_) | Output::Memcg(_) => Text::Log,
            Output::Sample(_) => Text::Hidden,
        }
    }

    /// The log line of an event the text stream leaves out.
    fn log(&self) {
        match self {
            Output::Memcg(ev) => {
                tracing::info!(cgroup = %ev.cgroup, kind = %ev.kind, count = ev.count, "{}", ev.detail)
            }
            other => tracing::info!("{}", other.json()),
        }
    }
}

/// Buffers the stream's lines and writes them to stdout at [`Sink::flush`].
pub struct Sink {
    format: OutputFormat,
    lines: Vec<String>,
    /// Where flushed lines go instead of stdout ([`Sink::capturing`]).
    captured: Option<Vec<String>>,
}

impl Sink {
    pub fn new(format: OutputFormat) -> Sink {
        Sink {
            format,
            lines: Vec::new(),
            captured: None,
        }
    }

    /// A sink whose flushed lines are kept (see [`Sink::take_captured`]) instead of written to
    /// stdout: the golden test reads the stream the pipeline would print.
    pub fn capturing(format: OutputFormat) -> Sink {
        Sink {
            captured: Some(Vec::new()),
            ..Sink::new(format)
        }
    }

    /// The lines flushed so far by a capturing sink (none for a stdout one).
    pub fn take_captured(&mut self) -> Vec<String> {
        self.captured
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn format(&self) -> OutputFormat {
        self.format
    }

    pub fn push(&mut self, out: Output) {
        match self.format {
            OutputFormat::Json => self.lines.push(out.json()),
            OutputFormat::Text => match out.text() {
                Text::Line(line) => self.lines.push(line),
                Text::Log => out.log(),
                Text::Hidden => {}
            },
        }
    }

    /// Writes the buffered lines. A closed stdout (piped to a reader that left) must not kill
    /// the agent: write errors are ignored.
    pub fn flush(&mut self) {
        if self.lines.is_empty() {
            return;
        }
        if let Some(c) = self.captured.as_mut() {
            c.append(&mut self.lines);
            return;
        }
        let mut out = std::io::stdout().lock();
        for l in self.lines.drain(..) {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_comes_first_then_the_record() {
        let memcg = Output::Memcg(MemcgEvent {
            time: "2026-11-30T07:29:28.719774736Z".into(),
            cgroup: "/kubepods".into(),
            kind: "oom_kill".into(),
            count: 2,
            detail: "2 OOM kills".into(),
        });
        assert_eq!(
            memcg.json(),
            r#"{"event":"memcg","time":"2026-11-30T07:29:28.719774736Z","cgroup":"/kubepods","kind":"oom_kill","count":2,"detail":"2 OOM kills"}"#
        );
        let action = Output::Action(ActionEvent {
            action: "cordon",
            node: "n1".into(),
            dry_run: true,
            ok: true,
            detail: "would PATCH".into(),
        });
        assert_eq!(
            action.json(),
            r#"{"event":"action","action":"cordon","node":"n1","dry_run":true,"ok":true,"detail":"would PATCH"}"#
        );
        let start = Output::KubeletStart(KubeletStart {
            time: "2026-11-30T07:29:30.000000001Z".into(),
            pid: 7,
            exe: "/usr/bin/kubelet".into(),
            previous_pid: Some(6),
            previous_end: Some("oom_memcg".into()),
            restarts: 1,
        });
        assert_eq!(
            start.json(),
            r#"{"event":"kubelet_start","time":"2026-11-30T07:29:30.000000001Z","pid":7,"exe":"/usr/bin/kubelet","previous_pid":6,"previous_end":"oom_memcg","restarts":1}"#
        );
        assert!(matches!(memcg.text(), Text::Log));
        assert!(matches!(start.text(), Text::Log));
    }

    /// The follow-up of an eviction's kill record: JSON and text, exactly.
    #[test]
    fn a_classified_kill_names_the_kill_the_pod_and_the_evidence() {
        use crate::kubeapi::report::{ClassifiedPod, ClassifiedSender};
        let c = Output::KillClassified(Box::new(KillClassified {
            time: "2026-11-29T22:10:01.123456789Z".into(),
            ktime_ns: 681688118634,
            pid: 8557,
            sender: ClassifiedSender {
                pid: 8501,
                comm: "containerd-shim".into(),
            },
            pod: ClassifiedPod {
                pod_uid: "0b6c".into(),
                namespace: "default".into(),
                name: "hog".into(),
                container_id: Some("5f1e".into()),
            },
            reason: "evicted",
            evidence: "pod status reason Evicted: Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. ".into(),
        }));
        assert_eq!(
            c.json(),
            r#"{"event":"kill_classified","time":"2026-11-29T22:10:01.123456789Z","ktime_ns":681688118634,"pid":8557,"sender":{"pid":8501,"comm":"containerd-shim"},"pod":{"pod_uid":"0b6c","namespace":"default","name":"hog","container_id":"5f1e"},"reason":"evicted","evidence":"pod status reason Evicted: Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. "}"#
        );
        let Text::Line(line) = c.text() else {
            panic!("not a stream line")
        };
        assert_eq!(
            line,
            "2026-11-29T22:10:01.123456789Z KILL_CLASSIFIED evicted victim=8557 sender=8501(containerd-shim) pod=default/hog container=5f1e pod status reason Evicted: Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. "
        );
    }
}
