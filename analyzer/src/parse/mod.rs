//! From a line's bytes to an [`AccessLine`]: every parser, and which one
//! reads which source.
//!
//! - [`line`]: the parsed line, its escapes, [`ParseError`].
//! - `scan`: the byte helpers every parser shares (literals, `-` fields,
//!   seconds, the request line).
//! - `time`: `$time_local`, ISO 8601 and strftime times.
//! - `combined`: the built-in nginx/Apache `combined` parser.
//! - [`log_format`]: nginx `log_format` / Apache `LogFormat` strings
//!   compiled into byte-level matchers.
//! - `json`: JSON lines with configurable field names.
//! - [`app`]: application logs (Python `logging` JSON records and
//!   Formatter strings, a generic `time level [logger] message` layout).
//! - [`sources`]: which parser reads which source (`--format`, a formats
//!   file), and the analyzer's table of the sources it has seen.

pub mod app;
mod combined;
mod json;
pub mod line;
pub mod log_format;
mod scan;
pub mod sources;
mod time;

pub use app::{AppFormat, AppLine, Level, Zone};
pub use combined::{parse_combined, parse_combined_cut};
pub use json::{JsonFields, JsonFormat, JsonFormatError, Names};
pub use line::{unescape, AccessLine, ErrorKind, Escape, ParseError};
pub use log_format::{FormatError, LogFormat};
pub use sources::{Formats, Parser};
pub use time::{parse_clf_time, parse_iso8601};
