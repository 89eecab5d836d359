//! The Python logging input on arbitrary bytes: the plain-data pickle
//! decoder, `msg % args`, and the JSON line. Never a panic; a record it
//! accepts is one line of valid JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use logpipe_producer::collect::python::record_line;

fuzz_target!(|frame: &[u8]| {
    if let Ok((_name, line)) = record_line(frame) {
        assert!(!line.contains(&b'\n'), "a record is one line");
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&line) {
            panic!("not JSON ({e}): {}", String::from_utf8_lossy(&line));
        }
    }
});
