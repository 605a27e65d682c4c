//! rimir's storage engine: Prometheus-compatible TSDB blocks, the in-memory head with its
//! write-ahead log, compaction, and object storage. Start at [`block`] for the on-disk block,
//! [`head`] for appends, [`objstore`] for the bucket layout.
//!
//! Layering: `encoding`, `labels`, `readat`, `framed` → `chunkenc`, `chunks`, `index` → `block` → `head`,
//! `wal`, `compact` → `objstore` → the server roles. Lower modules never call upper ones.

pub mod api;
pub mod block;
pub mod chunkenc;
pub mod chunks;
pub mod cli;
pub mod compact;
pub mod compactor;
pub mod config;
pub mod distributor;
pub mod encoding;
pub mod framed;
pub mod grpc;
pub mod head;
pub mod index;
pub mod ingester;
pub mod labels;
pub mod metadata;
pub mod metrics;
pub mod objstore;
pub mod openmetrics;
pub mod promql;
pub mod querier;
pub mod readat;
pub mod ring;
pub mod series;
pub mod server;
pub mod storage;
pub mod wal;
