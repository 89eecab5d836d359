//! Everything an analyzer does between a Kafka record and an InfluxDB point.
//!
//! - [`parse`]: the nginx/Apache `combined` parser, byte-level, borrowing.
//! - [`format`]: nginx `log_format` / Apache `LogFormat` strings compiled
//!   into byte-level matchers.
//! - [`window`]: event-time tumbling windows of one partition (pure core:
//!   watermark, closing, late lines, restore points, latency and client sketches).
//! - [`line_protocol`]: InfluxDB line protocol encoding of window points.
//! - [`distinct`]: distinct counts per window, exact up to 7 168 values, never above the count.
//! - [`pieces`]: lines the producer published in pieces, joined again (pure).
//! - [`sink`]: where points go — InfluxDB (v1 `/write`, v2 `/api/v2/write`)
//!   or a line-protocol file.
//! - [`state`]: restore points stored beside the windows they vouch for.
//! - [`counters`]: the analyzer's self-metrics (`logpipe` measurement).
//! - [`run`]: the I/O shell — consume as a group member, aggregate, flush,
//!   commit only what the sink accepted.
//! - [`replay`]: what makes a run a replay (fixed offsets, event-time range).
//! - [`generate`]: deterministic realistic traffic for the demo, tests, benchmarks.

pub mod counters;
pub mod distinct;
pub mod dlq;
pub mod format;
pub mod formats;
pub mod generate;
pub mod json;
pub mod line_protocol;
pub mod parse;
pub mod pieces;
pub mod replay;
pub mod run;
mod scan;
pub mod sink;
mod sink_error;
pub mod state;
pub mod window;

pub use counters::{Counters, DeadLetterKinds};
pub use replay::{Range, Replay};
pub use run::{run, AnalyzeError, AnalyzerConfig, Control, Observer, WindowReport};
pub use sink::{DryRunSink, InfluxApi, InfluxConfig, InfluxSink, LpFileSink, Sink, SinkError};
pub use window::{Metrics, WindowSpec, WindowValue};

pub use logpipe_wire::FastMap;
