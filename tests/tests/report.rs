//! `oomprobe report` rendered by a real browser (Debian's chromium, headless): the page of an
//! episode (tests/fixtures/episode: a kubelet leaking to its limit, OOM-killed, a storm with
//! collateral kills, recovery, and a re-OOM, in the agent's own event format) is parsed into a
//! DOM holding every element of the chart, and a screenshot is drawn.
use std::{path::PathBuf, process::Command};

use oomprobe_tests::bin;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/episode")
        .join(name)
}

struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Headless chromium with a fresh profile and nothing that reaches the network.
fn chromium(profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium (Debian's `chromium` package) is needed: apt-get install chromium");
    assert!(out.status.success(), "chromium failed: {:?}", out);
    out
}

#[test]
fn report_renders_every_element_in_a_browser() {
    let dir = Scratch(std::env::temp_dir().join(format!("oomprobe-report-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let html = dir.0.join("report.html");
    let svg = dir.0.join("report.svg");
    let out = Command::new(bin("oomprobe"))
        .args(["report", "--csv"])
        .arg(fixture("series.csv"))
        .arg("--events")
        .arg(fixture("events.jsonl"))
        .arg("--html")
        .arg(&html)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let url = format!("file://{}", html.display());
    let dom = chromium(&dir.0.join("profile"), &["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in [
        "oomprobe-report",
        "memory",
        "baseline",
        "limit",
        "leak-slope",
        "time-to-oom-band",
        "time-to-oom-expected",
        "storm-peak",
        "kill-table",
    ] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "#{id} not in the DOM"
        );
    }
    // Four kills in the log: two kubelet OOM kills, a collateral pod OOM kill, an eviction.
    assert_eq!(dom.matches("class=\"kill\"").count(), 4);
    assert_eq!(dom.matches("class=\"kill-row\"").count(), 4);
    assert_eq!(dom.matches("data-kind=\"oom_memcg\"").count(), 3);
    assert!(dom.contains("data-pod=\"9b7e1a44-52c3-4d6f-8e21-0c5a3b9d7e66\""));
    // Seven stage changes, none of them back to steady: seven bands.
    assert_eq!(dom.matches("class=\"stage\"").count(), 7);
    assert_eq!(dom.matches("data-stage=\"re_oom\"").count(), 1);
    assert!(dom.contains("storm peak 141 MiB"));

    let png = dir.0.join("report.png");
    chromium(
        &dir.0.join("profile"),
        &[
            "--window-size=1060,760",
            &format!("--screenshot={}", png.display()),
            &url,
        ],
    );
    let data = std::fs::read(&png).expect("screenshot written");
    assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(data[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(data[20..24].try_into().unwrap());
    assert_eq!((width, height), (1060, 760));
    // A blank page compresses to a few KiB; the chart does not.
    assert!(data.len() > 40_000, "screenshot of {} bytes", data.len());
    // The standalone SVG is the same chart.
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_eq!(svg.matches("class=\"kill\"").count(), 4);
}
