//! The formats file (TOML) on arbitrary text: loaded or rejected, no panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use logpipe_analyzer::parse::{Formats, Parser};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = Formats::from_toml(text, Parser::Combined) {
        let p = f.for_source("/var/log/nginx/access.log");
        let _ = p.parse(b"127.0.0.1 - - [01/Jan/2024:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"");
    }
});
