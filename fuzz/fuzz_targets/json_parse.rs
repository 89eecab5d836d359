//! JSON lines on arbitrary bytes: an access line or an error inside the line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use logpipe_analyzer::parse::Parser;
use std::sync::OnceLock;

fuzz_target!(|line: &[u8]| {
    static P: OnceLock<Parser> = OnceLock::new();
    let p = P.get_or_init(|| Parser::new("json").unwrap());
    match p.parse(line) {
        Ok(l) => {
            for f in [Some(l.client), l.user, l.method, l.path, l.referer, l.user_agent, l.host]
                .into_iter()
                .flatten()
            {
                let _ = l.decoded(f);
            }
        }
        Err(e) => assert!(e.at <= line.len(), "error position {} beyond the line", e.at),
    }
});
