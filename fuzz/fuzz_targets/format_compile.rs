//! The format compiler on arbitrary text: a format is accepted or rejected
//! with a message, never a panic; an accepted one parses its own spec text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use logpipe_analyzer::parse::Parser;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    match Parser::new(spec) {
        Ok(p) => {
            let _ = p.parse(spec.as_bytes());
            let _ = p.describe();
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
});
