//! What every rimir role shares, and nothing role-specific: the `rimir.yaml` configuration and
//! the per-tenant limits in force, the process' metrics, tenant IDs, the remote-write messages,
//! the ingester's gRPC API (messages, service, client), the hash ring, the pool of ingester
//! clients, the HA tracker's elections, metric metadata, and the process' logging, HTTP serving and signal handling.
//!
//! It must not import a role crate (`rimir-distributor`, `rimir-ingester`, `rimir-querier`,
//! `rimir-compactor`) nor the `rimir` binary's crate — Cargo refuses the circle — and it holds
//! no route: [`process`] serves the routers the crates above build.
//!
//! Where to start reading: [`config`] (every key of `rimir.yaml`), then [`remote_write`] (what
//! a push carries) and [`grpc`] (what the distributor sends an ingester).
//!
//! Modules, lowest first (each group imports only groups before it):
//! 1. [`config`], [`metrics`], [`tenant`], [`remote_write`];
//! 2. [`runtime`], [`ring`], [`grpc`], [`metadata`], [`process`];
//! 3. [`pool`], [`ha`].

pub mod config;
pub mod grpc;
pub mod ha;
pub mod metadata;
pub mod metrics;
pub mod pool;
pub mod process;
pub mod remote_write;
pub mod ring;
pub mod runtime;
pub mod tenant;

/// A boxed future. The async entry points other crates call return one, so that their bodies
/// are compiled once in the crate that defines them: an `async fn`'s body is otherwise compiled
/// again in every crate that polls it, and a change in one role would recompile them all.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
