//! A v2 record's headers and value on arbitrary bytes: its lines read, or the
//! record is refused whole — never a panic, never lines that are not the value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use logpipe_wire::RecordMeta;

fuzz_target!(|input: (u64, bool, Option<&[u8]>, Option<u64>, &[u8])| {
    let (lines, crlf, marks, offset, value) = input;
    let meta = RecordMeta {
        file: Some(b"f"),
        offset,
        lines: Some(lines),
        crlf,
        marks,
        ..RecordMeta::default()
    };
    if let Ok(run) = meta.lines(value) {
        let got: Vec<_> = run.collect();
        assert_eq!(got.len() as u64, lines);
        let joined: Vec<&[u8]> = got.iter().map(|l| l.value).collect();
        assert_eq!(joined.join(&b'\n'), value);
        // Offsets grow line by line.
        for w in got.windows(2) {
            if let (Some(a), Some(b)) = (w[0].offset, w[1].offset) {
                assert!(b >= a);
            }
        }
    }
});
