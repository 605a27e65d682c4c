//! rimir's storage engine and its formats: everything needed to read and write heads, write-ahead
//! logs and Prometheus TSDB blocks on a local directory, and to merge blocks.
//!
//! What it must not import: any async runtime or network crate (tokio, hyper, h2, axum, tonic,
//! reqwest, aws-*), nor rimir's query engine or server roles. Those crates build on this one;
//! `tests/e2e/layering.rs` checks the dependency tree.
//!
//! Where to start reading: [`block`] for the on-disk block (`meta.json`, `index`, `chunks/`),
//! [`head`] for appends and its [`wal`], [`compact`] for merging blocks.
//!
//! Modules, lowest first (each group imports only groups before it; `farm-studio look
//! tsdb/engine` draws the same floors):
//! 1. [`encoding`], [`labels`], [`readat`], [`metadata`]: varints and CRCs, label sets and
//!    matchers, positioned byte sources, metric metadata;
//! 2. [`series`], [`openmetrics`], [`framed`], [`chunkenc`], [`chunks`], [`wal`]: samples of a
//!    series, the OpenMetrics text format, framed cold compression, Prometheus' chunk encodings,
//!    chunk segment files, the write-ahead log;
//! 3. [`index`], [`head`]: the block index, the in-memory head;
//! 4. [`block`]: whole blocks (`meta.json`, index, chunks, frames);
//! 5. [`compact`]: merging blocks.

pub mod block;
pub mod chunkenc;
pub mod chunks;
pub mod compact;
pub mod encoding;
pub mod framed;
pub mod head;
pub mod index;
pub mod labels;
pub mod metadata;
pub mod openmetrics;
pub mod readat;
pub mod series;
pub mod wal;
