//! `oomprobe replay`'s CSV reader and the detectors it runs over what it read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oomprobe::{
    cli::replay::evaluate_each,
    detect::{offline::csv, Engine},
    output::Output,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((samples, _unknown)) = csv::parse(text) else {
        return;
    };
    let mut engine = Engine::default();
    evaluate_each(&mut engine, &samples, 3600, |v| {
        let out = Output::Verdict(v.clone());
        let _ = out.json();
        let _ = out.text();
    });
});
