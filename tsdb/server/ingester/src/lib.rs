//! The ingester role: it receives the distributors' pushes over gRPC, appends them to one head
//! and WAL per tenant on local disk (`blocks_storage.tsdb.dir`), cuts a block every block
//! range, ships it to the bucket, and answers the queriers' reads of recent samples.
//!
//! Built on `rimir-core` (configuration, gRPC API) and `rimir-tsdb` (heads, WALs, blocks); it
//! must not import another role crate.
//!
//! Where to start reading: [`ingester::Ingester`] (the role, over the [`ingester::Tsdb`] and
//! [`ingester::Shipper`] traits), then [`storage`], which implements them with `rimir-tsdb` and
//! an object store.
//!
//! Modules, lowest first: [`ingester`], then [`storage`].

pub mod ingester;
pub mod storage;
