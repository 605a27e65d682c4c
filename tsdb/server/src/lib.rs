//! The `rimir` server: it wires the roles for a `--target` (one role, or all of them with
//! `--target=all`), serves the write path's and the process' HTTP routes, and holds the
//! `rimir tsdb` CLI. The roles themselves are crates of their own beside this one, so a change
//! in one role recompiles that role and this thin crate, not the others:
//!
//! - `rimir-core` (`tsdb/server/core`): configuration and limits, metrics, tenant IDs,
//!   remote-write messages, the ingester's gRPC API, the ring, the ingester pool, metadata;
//! - `rimir-distributor`, `rimir-ingester`, `rimir-querier`, `rimir-compactor`
//!   (`tsdb/server/<role>`): one role each, built on `rimir-core` and never on one another.
//!
//! They are re-exported here under their former module names (`rimir::config`,
//! `rimir::distributor`, …). Below them sit `rimir-tsdb` (storage engine), `rimir-promql`
//! (query engine) and `rimir-objstore` (buckets); nothing below imports this crate.
//!
//! Where to start reading: [`server::start`] wires the roles; the write path is
//! [`remote_write`] → [`distributor`] → [`grpc`] → [`ingester`]; the read path is [`api`] →
//! [`querier`]; [`compactor`] merges the bucket's blocks.
//!
//! Modules, lowest first: [`cli`] (the `rimir tsdb` commands, on `rimir-tsdb` alone), then
//! [`server`], which `main.rs` runs.

pub use rimir_compactor as compactor;
pub use rimir_core::{
    config, grpc, metadata, metrics, pool, process, remote_write, ring, runtime, tenant,
};
pub use rimir_distributor as distributor;
pub use rimir_ingester::{ingester, storage};
pub use rimir_querier::{api, querier};

pub mod cli;
pub mod server;
