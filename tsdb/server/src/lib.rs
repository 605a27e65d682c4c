//! The `rimir` server: configuration, the hash ring, the roles (distributor, ingester, querier,
//! compactor), the HTTP and gRPC APIs, and the `rimir tsdb` CLI. One binary runs any role with
//! `--target`, or all of them (`--target=all`).
//!
//! Built on `rimir-tsdb` (storage engine), `rimir-promql` (query engine) and `rimir-objstore`
//! (buckets); nothing in those crates imports this one.
//!
//! Where to start reading: [`server`] wires the roles for a `--target`; the write path is
//! [`remote_write`] → [`distributor`] → [`grpc`] → [`ingester`]; the read path is [`api`] →
//! [`querier`]; [`compactor`] merges the bucket's blocks.
//!
//! Modules, lowest first (each group imports only groups before it):
//! 1. [`config`], [`metrics`], [`tenant`], [`remote_write`], [`cli`], [`runtime`];
//! 2. [`ring`], [`grpc`], [`metadata`], [`compactor`];
//! 3. [`ingester`], [`pool`];
//! 4. [`storage`], [`distributor`], [`querier`];
//! 5. [`api`];
//! 6. [`server`], which `main.rs` runs.

pub mod api;
pub mod cli;
pub mod compactor;
pub mod config;
pub mod distributor;
pub mod grpc;
pub mod ingester;
pub mod metadata;
pub mod metrics;
pub mod pool;
pub mod querier;
pub mod remote_write;
pub mod ring;
pub mod runtime;
pub mod server;
pub mod storage;
pub mod tenant;
