//! Application-log parsers and message templates on arbitrary bytes: the
//! first byte picks a format (Python Formatter strings with and without a
//! `datefmt` and a zone, the `app` layout, `python-json`), the rest is the
//! line. A line is a record start or an error inside it, never a panic; a
//! record's template is bounded and the same when made twice.
#![no_main]
use libfuzzer_sys::fuzz_target;
use logpipe_analyzer::parse::{AppFormat, Zone};
use logpipe_analyzer::template::{template_with_exception, MAX_TEMPLATE_BYTES};
use std::sync::OnceLock;

fn formats() -> &'static [AppFormat] {
    static F: OnceLock<Vec<AppFormat>> = OnceLock::new();
    F.get_or_init(|| {
        let berlin: Zone = "Europe/Berlin".parse().unwrap();
        let py = |spec: &str, datefmt: Option<&str>, zone: Zone| {
            AppFormat::new(spec, datefmt, zone).unwrap().unwrap()
        };
        vec![
            py("%(asctime)s - %(name)s - %(levelname)s - %(message)s", None, Zone::Utc),
            py("%(asctime)s - %(name)s - %(levelname)s - %(message)s", None, berlin),
            py(
                "[%(asctime)s.%(msecs)03d] %(levelname)-8s %(name)s: %(message)s (%(filename)s:%(lineno)d)",
                Some("%d/%m/%Y %H:%M:%S"),
                berlin,
            ),
            py("%(created)f %(levelno)s %(process)d %(message)s", None, Zone::Utc),
            AppFormat::Layout(berlin),
            AppFormat::PythonJson,
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, line)) = data.split_first() else {
        return;
    };
    let fs = formats();
    let f = &fs[usize::from(pick) % fs.len()];
    match f.parse(line) {
        Ok(l) => {
            let mut a = Vec::new();
            let mut b = Vec::new();
            template_with_exception(&l.message, l.exception.as_deref(), &mut a);
            template_with_exception(&l.message, l.exception.as_deref(), &mut b);
            assert_eq!(a, b);
            assert!(a.len() <= MAX_TEMPLATE_BYTES);
        }
        Err(e) => assert!(e.at <= line.len(), "error position {} beyond the line", e.at),
    }
});
