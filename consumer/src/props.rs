//! Which librdkafka properties a client applies. A property of the other
//! kind of client (`fetch.wait.max.ms` to a producer, `linger.ms` to a
//! consumer) is ignored with a `CONFWARN` at start-up; logpipe gives one
//! `--kafka` list to every client of a role (its consumer, its dead-letter
//! producer, the outage watcher), so each client takes only the properties
//! of its kind. The kinds are librdkafka's own, as the linked version lists
//! them (`rd_kafka_conf_properties_show`, the table of CONFIGURATION.md).

use std::collections::HashMap;
use std::sync::OnceLock;

use rdkafka::ClientConfig;

/// The kind of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Producer,
    Consumer,
}

/// What librdkafka's table says a property applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applies {
    Producer,
    Consumer,
    Both,
}

/// The linked librdkafka's table of properties, read once.
fn table() -> &'static HashMap<String, Applies> {
    static TABLE: OnceLock<HashMap<String, Applies>> = OnceLock::new();
    TABLE.get_or_init(|| parse(&properties_text()))
}

/// `rd_kafka_conf_properties_show`'s text: the markdown tables of global
/// and topic properties.
fn properties_text() -> String {
    let mut buf: *mut libc::c_char = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: open_memstream gives a FILE that writes to a buffer it
    // allocates; librdkafka writes its table to it; after fclose `buf`
    // holds `len` bytes, which are copied, then freed with free(3).
    unsafe {
        let fp = libc::open_memstream(&mut buf, &mut len);
        if fp.is_null() {
            return String::new();
        }
        rdkafka::bindings::rd_kafka_conf_properties_show(fp.cast());
        libc::fclose(fp);
        if buf.is_null() {
            return String::new();
        }
        let text =
            String::from_utf8_lossy(std::slice::from_raw_parts(buf.cast::<u8>(), len)).into_owned();
        libc::free(buf.cast());
        text
    }
}

/// Rows `name | C/P | …` of the table; a property listed in both tables
/// (global and topic) applies to what either says.
fn parse(text: &str) -> HashMap<String, Applies> {
    let mut t = HashMap::new();
    for line in text.lines() {
        let mut cols = line.split('|').map(str::trim);
        let (Some(name), Some(cp)) = (cols.next(), cols.next()) else {
            continue;
        };
        let applies = match cp {
            "C" => Applies::Consumer,
            "P" => Applies::Producer,
            "*" => Applies::Both,
            _ => continue,
        };
        t.entry(name.to_string())
            .and_modify(|a| {
                if *a != applies {
                    *a = Applies::Both
                }
            })
            .or_insert(applies);
    }
    t
}

/// Whether a client of `kind` applies `key`. A property librdkafka does not
/// list is given (librdkafka names an unknown property in its error, which
/// is what the operator needs to see).
pub fn applies(kind: ClientKind, key: &str) -> bool {
    match table().get(key) {
        None | Some(Applies::Both) => true,
        Some(Applies::Producer) => kind == ClientKind::Producer,
        Some(Applies::Consumer) => kind == ClientKind::Consumer,
    }
}

/// Sets on `cc` the properties of `extra` that a client of `kind` applies.
pub fn set_for(cc: &mut ClientConfig, kind: ClientKind, extra: &[(String, String)]) {
    for (k, v) in extra {
        if applies(kind, k) {
            cc.set(k, v);
        } else {
            tracing::debug!(property = %k, ?kind, "not given to this client: librdkafka applies it only to the other kind");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::client::ClientContext;
    use rdkafka::config::RDKafkaLogLevel;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;
    use std::sync::{Arc, Mutex};

    /// Keeps what librdkafka logs.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<String>>>);

    impl ClientContext for Kept {
        fn log(&self, _: RDKafkaLogLevel, fac: &str, msg: &str) {
            self.0.lock().unwrap().push(format!("{fac} {msg}"));
        }
    }
    impl rdkafka::consumer::ConsumerContext for Kept {}
    impl rdkafka::producer::ProducerContext for Kept {
        type DeliveryOpaque = ();
        fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
    }

    fn mixed() -> Vec<(String, String)> {
        [
            ("fetch.wait.max.ms", "50"),
            ("session.timeout.ms", "6000"),
            ("auto.offset.reset", "earliest"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            ("acks", "all"),
            ("client.id", "x"),
            ("socket.timeout.ms", "30000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The warnings a client of `kind` logs at creation with `extra`.
    fn warnings(kind: ClientKind, filtered: bool) -> Vec<String> {
        let kept = Kept::default();
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", "127.0.0.1:1");
        if kind == ClientKind::Consumer {
            cc.set("group.id", "g");
        }
        if filtered {
            set_for(&mut cc, kind, &mixed());
        } else {
            for (k, v) in mixed() {
                cc.set(k, v);
            }
        }
        // The log is queued (rdkafka sets `log.queue`) and served by poll.
        let wait = std::time::Duration::from_millis(200);
        match kind {
            ClientKind::Producer => {
                let p: BaseProducer<Kept> = cc.create_with_context(kept.clone()).unwrap();
                p.poll(wait);
            }
            ClientKind::Consumer => {
                let c: BaseConsumer<Kept> = cc.create_with_context(kept.clone()).unwrap();
                // Polling ends at an error too (nothing listens on port 1).
                let until = std::time::Instant::now() + wait;
                while std::time::Instant::now() < until {
                    drop(c.poll(wait));
                }
            }
        }
        let logs = kept.0.lock().unwrap().clone();
        logs.into_iter()
            .filter(|l| l.starts_with("CONFWARN"))
            .collect()
    }

    #[test]
    fn the_table_is_librdkafkas() {
        assert!(applies(ClientKind::Consumer, "fetch.wait.max.ms"));
        assert!(!applies(ClientKind::Producer, "fetch.wait.max.ms"));
        assert!(
            !applies(ClientKind::Producer, "auto.offset.reset"),
            "a topic property"
        );
        assert!(applies(ClientKind::Producer, "linger.ms"));
        assert!(!applies(ClientKind::Consumer, "compression.type"));
        assert!(applies(ClientKind::Consumer, "client.id"));
        assert!(applies(ClientKind::Producer, "no.such.property"));
        assert!(table().len() > 150, "{} properties", table().len());
    }

    #[test]
    fn each_kind_of_client_takes_only_its_properties() {
        for kind in [ClientKind::Producer, ClientKind::Consumer] {
            // Given everything, librdkafka warns: the check can fail.
            let unfiltered = warnings(kind, false);
            assert!(
                unfiltered.iter().any(|w| w.contains("will be ignored")),
                "{kind:?}: {unfiltered:?}"
            );
            assert_eq!(warnings(kind, true), Vec::<String>::new(), "{kind:?}");
        }
    }
}
