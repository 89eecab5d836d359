//! Compiled parsers on arbitrary lines. The first byte picks one of the
//! real-world formats of the golden tests; the rest is the line. Fields of a
//! parsed line lie inside the line and decode without panicking. With the
//! pick byte's high bit set the line is parsed as one the producer cut at
//! `--max-line-bytes`. An error saying the line ends points at its end.
#![no_main]
use libfuzzer_sys::fuzz_target;
use logpipe_analyzer::parse::Parser;
use std::sync::OnceLock;

const SPECS: &[&str] = &[
    "combined",
    "common",
    "apache-combined",
    r#"log_format combined '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"';"#,
    r#"log_format main '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_x_forwarded_for"';"#,
    r#"'$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time $upstream_response_time'"#,
    r#"log_format upstreaminfo '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_length $request_time [$proxy_upstream_name] [$proxy_alternative_upstream_name] $upstream_addr $upstream_response_length $upstream_response_time $upstream_status $req_id';"#,
    r#"log_format j escape=json '{"time":"$time_iso8601","remote_addr":"$remote_addr","request":"$request","status":$status,"body_bytes_sent":$body_bytes_sent,"request_time":$request_time}';"#,
    r#"$msec $host $remote_addr "$request" $status $bytes_sent"#,
    r#"LogFormat "%v:%p %h %l %u %t \"%r\" %>s %O \"%{Referer}i\" \"%{User-Agent}i\" %D" vhost_combined"#,
    r#"%h %l %u %{%d/%b/%Y:%H:%M:%S %z}t "%r" %>s %b %T"#,
];

fn parsers() -> &'static [Parser] {
    static P: OnceLock<Vec<Parser>> = OnceLock::new();
    P.get_or_init(|| SPECS.iter().map(|s| Parser::new(s).expect(s)).collect())
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, line)) = data.split_first() else {
        return;
    };
    let ps = parsers();
    let p = &ps[(pick & 0x7f) as usize % ps.len()];
    let parsed = if pick & 0x80 != 0 {
        p.parse_cut(line)
    } else {
        p.parse(line)
    };
    match parsed {
        Ok(l) => {
            let range = line.as_ptr_range();
            for f in [Some(l.client), l.user, l.method, l.path, l.referer, l.user_agent, l.host]
                .into_iter()
                .flatten()
            {
                assert!(f.is_empty() || range.contains(&f.as_ptr()), "field outside the line");
                let d = l.decoded(f);
                assert!(d.len() <= f.len() * 3, "decoding grew a field too much");
            }
            assert!((100..=999).contains(&l.status));
        }
        Err(e) => {
            assert!(e.at <= line.len(), "error position {} beyond the line", e.at);
            if e.kind == logpipe_analyzer::parse::ErrorKind::Ends {
                assert_eq!(e.at, line.len(), "the line ends at its end: {e}");
            }
        }
    }
});
