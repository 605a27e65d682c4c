//! rimir's PromQL engine: queries are parsed by the `promql-parser` crate and evaluated here
//! against any [`Queryable`] (the head, blocks, ingesters, or [`MemQueryable`] in tests), with
//! Prometheus 2.42's semantics (5 minute lookback, stale markers, `offset`/`@`, subqueries,
//! vector matching, every function).
//!
//! What it must not import: HTTP, gRPC or AWS crates, nor rimir's server roles. It depends only on
//! the storage engine's label and series types (`rimir-tsdb`); the server wires it to storage
//! and to the HTTP API.
//!
//! Where to start reading: [`Engine`]. Evaluation runs step by step: each selector's series are
//! fetched once for the whole query range, and every step reads only the samples it needs.
//!
//! Modules, lowest first (each group imports only groups before it):
//! [`queryable`] (the storage interface and query errors), `format` (numbers as the API writes
//! them) → `parse`, `value` (evaluation values and the `Eval` interface) → `functions`, `binary`
//! → `aggregate` → `engine` (the evaluator, which implements `Eval`).

mod aggregate;
mod binary;
mod engine;
mod format;
mod functions;
mod parse;
pub mod queryable;
mod value;

pub use engine::{Engine, Limits, Sample, Value, now_ms};
pub use format::{format_timestamp, format_value, write_timestamp, write_u64};
pub use parse::{parse, selector_matchers};
pub use queryable::{MemQueryable, QueryError, Queryable};
pub use value::{STALE_NAN_BITS, is_stale_nan};
