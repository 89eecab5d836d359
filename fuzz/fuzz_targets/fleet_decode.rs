//! The fleet record decoder on arbitrary bytes (what `logpipe rollup`
//! reads from a topic anyone may write to): an error or a window, never a
//! panic; a decoded window merges with another and summarises, and
//! encodes to bytes that decode to the same summary.
#![no_main]
use libfuzzer_sys::fuzz_target;
use logpipe_analyzer::fleet;

fuzz_target!(|data: &[u8]| {
    let Ok(w) = fleet::decode(data) else {
        return;
    };
    let m = w.agg.summary();
    assert!(m.unique_clients <= m.count);
    let mut merged = w.agg.clone();
    merged.merge(&w.agg);
    assert_eq!(merged.summary().count, m.count * 2);
    let mut again = Vec::new();
    fleet::encode(&mut again, &w.host, &w.source, w.start_ms, w.window_ms, &w.agg);
    let back = fleet::decode(&again).expect("re-encoded record");
    assert_eq!(back.agg.summary(), m);
});
