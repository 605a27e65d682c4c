//! The wire formats rimir speaks over HTTP: Prometheus remote-write for the write path and the
//! Prometheus query API ([`prometheus`]) that Grafana and `promtool` use.

pub mod prometheus;
pub mod remote_write;
