//! HTTP APIs served by rimir. [`prometheus`] is the read API Grafana and `promtool` use.

pub mod prometheus;
