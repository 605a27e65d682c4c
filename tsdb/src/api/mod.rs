//! The wire formats rimir speaks over HTTP: Prometheus remote-write (and, beside it, the
//! Prometheus query API).

pub mod remote_write;
