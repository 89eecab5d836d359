//! Everything an analyzer does between a Kafka record and an InfluxDB point.
//!
//! - [`anomaly`]: robust baselines of a source's window series and the
//!   windows they flag (pure; the window core scores final windows).
//! - [`applog`]: what a window keeps of application records (per logger
//!   and level, top templates per level).
//! - `config`: [`AnalyzerConfig`] and its [`defaults`].
//! - [`parse`]: every parser (the built-in `combined`, compiled nginx/Apache
//!   `log_format` strings, JSON lines) and which one reads which source.
//! - `pieces`: lines the producer published in pieces, joined again (pure).
//! - [`window`]: event-time tumbling windows of one partition (pure core:
//!   watermark, closing, late lines, restore points, latency and client
//!   sketches), with `distinct` counts (exact up to 7 168 values).
//! - [`template`]: message templates (variable parts masked) and their ids.
//! - [`top`]: top-K per window (paths, clients, user agents, referrers,
//!   4xx and 5xx paths), deterministic Space-Saving summaries.
//! - `line_protocol`: InfluxDB line protocol encoding of window points.
//! - [`store`]: where points go and restore points live — InfluxDB, a
//!   line-protocol file, a dry run.
//! - `counters`: the analyzer's self-metrics (`logpipe` measurement).
//! - `dlq`: dead letters to `logs.dlq`, and how they are shown.
//! - `run`: the I/O shell — consume as a group member, aggregate, flush,
//!   commit only what the sink accepted.
//! - `replay`: what makes a run a replay (fixed offsets, event-time range).

pub mod anomaly;
pub mod applog;
mod config;
mod counters;
mod distinct;
mod dlq;
pub mod fleet;
mod line_protocol;
pub mod parse;
mod pieces;
mod replay;
pub mod rollup;
mod run;
pub mod store;
pub mod template;
pub mod top;
pub mod window;

pub use config::{defaults, AnalyzerConfig};
pub use counters::{Counters, DeadLetterKinds};
pub use dlq::{render as render_dead_letter, DeadLetter, DlqReader};
pub use parse::{AccessLine, ErrorKind, Formats, LogFormat, ParseError, Parser};
pub use replay::{Range, Replay};
pub use run::{run, AnalyzeError, Control, Observer, Status, WindowReport, DEAD_LETTER_LOG};
pub use store::{DryRunSink, InfluxApi, InfluxConfig, InfluxSink, LpFileSink, Sink, SinkError};
pub use window::{Hit, Metrics, WindowSpec, WindowValue};

pub use logpipe_wire::FastMap;
