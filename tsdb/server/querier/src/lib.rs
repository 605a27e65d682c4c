//! The querier role: PromQL (`rimir-promql`) over the ingesters' recent samples, read over
//! gRPC, merged with the bucket's blocks, read through a page cache; and the Prometheus HTTP
//! API that Grafana and `promtool` call (`/prometheus/api/v1/query`, `query_range`, `series`,
//! `labels`, `label/{name}/values`, `metadata`).
//!
//! Built on `rimir-core`, `rimir-tsdb`, `rimir-promql` and `rimir-objstore`; it must not import
//! another role crate.
//!
//! Where to start reading: [`api::router`] (the routes), then [`querier::QuerierTenants`],
//! which gives each tenant its [`rimir_promql::Queryable`].
//!
//! Modules, lowest first: [`querier`], then [`api`].

pub mod api;
pub mod querier;
