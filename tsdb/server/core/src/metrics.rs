//! The process' Prometheus metrics (`rimir_*`), shared by every role and served on `/metrics`.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label pairs of a metric.
pub type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the write path exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Samples received by the distributor, by tenant.
    pub received_samples: Family<Labels, Counter>,
    /// Samples dropped, by tenant and reason.
    pub discarded_samples: Family<Labels, Counter>,
    /// Exemplars dropped, by tenant and reason.
    pub discarded_exemplars: Family<Labels, Counter>,
    /// Metric metadata received by the distributor, by tenant.
    pub received_metadata: Family<Labels, Counter>,
    /// Metric metadata dropped, by tenant and reason.
    pub discarded_metadata: Family<Labels, Counter>,
    /// Push requests by HTTP status code.
    pub requests: Family<Labels, Counter>,
    /// Distributor push latency (whole request, seconds).
    pub push_duration: Histogram,
    /// Latency of pushes to each ingester, seconds.
    pub ingester_push_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Ring members by state (`ACTIVE`, `UNHEALTHY`).
    pub ring_members: Family<Labels, Gauge>,
    /// Active series in the ingester, by tenant.
    pub active_series: Family<Labels, Gauge>,
    /// Samples appended by the ingester, by tenant.
    pub ingested_samples: Family<Labels, Counter>,
    /// Pushes the ingester dropped unread because their caller had stopped waiting (deadline
    /// passed or connection gone), by tenant.
    pub abandoned_pushes: Family<Labels, Counter>,
    /// Blocks uploaded to the bucket, by tenant.
    pub shipped_blocks: Family<Labels, Counter>,
    /// Failed block uploads, by tenant.
    pub ship_failures: Family<Labels, Counter>,
    /// Whether WAL replay finished (1) or not (0).
    pub ready: Gauge,
    /// Samples of a non-elected HA replica, accepted (202) and not stored, by tenant and
    /// cluster.
    pub deduped_samples: Family<Labels, Counter>,
    /// Elections held by this ingester that moved to another replica, by tenant and cluster.
    pub ha_elected_replica_changes: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            received_samples: Family::default(),
            discarded_samples: Family::default(),
            discarded_exemplars: Family::default(),
            received_metadata: Family::default(),
            discarded_metadata: Family::default(),
            requests: Family::default(),
            push_duration: latency_histogram(),
            ingester_push_duration: Family::new_with_constructor(latency_histogram),
            ring_members: Family::default(),
            active_series: Family::default(),
            ingested_samples: Family::default(),
            abandoned_pushes: Family::default(),
            shipped_blocks: Family::default(),
            ship_failures: Family::default(),
            ready: Gauge::default(),
            deduped_samples: Family::default(),
            ha_elected_replica_changes: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "rimir_distributor_received_samples",
                "Samples received by the distributor",
                m.received_samples.clone(),
            );
            r.register(
                "rimir_discarded_samples",
                "Samples discarded, by tenant and reason",
                m.discarded_samples.clone(),
            );
            r.register(
                "rimir_discarded_exemplars",
                "Exemplars discarded, by tenant and reason",
                m.discarded_exemplars.clone(),
            );
            r.register(
                "rimir_distributor_received_metadata",
                "Metric metadata received by the distributor",
                m.received_metadata.clone(),
            );
            r.register(
                "rimir_discarded_metadata",
                "Metric metadata discarded, by tenant and reason",
                m.discarded_metadata.clone(),
            );
            r.register(
                "rimir_distributor_deduped_samples",
                "Samples of a non-elected HA replica, accepted and not stored",
                m.deduped_samples.clone(),
            );
            r.register(
                "rimir_ha_tracker_elected_replica_changes",
                "Elections of an HA cluster that moved to another replica",
                m.ha_elected_replica_changes.clone(),
            );
            r.register(
                "rimir_distributor_requests",
                "Push requests by status code",
                m.requests.clone(),
            );
            r.register(
                "rimir_distributor_push_duration_seconds",
                "Latency of remote-write pushes",
                m.push_duration.clone(),
            );
            r.register(
                "rimir_distributor_ingester_push_duration_seconds",
                "Latency of pushes to one ingester",
                m.ingester_push_duration.clone(),
            );
            r.register(
                "rimir_ring_members",
                "Ingesters in the ring by state",
                m.ring_members.clone(),
            );
            r.register(
                "rimir_ingester_active_series",
                "Series in the ingester's heads",
                m.active_series.clone(),
            );
            r.register(
                "rimir_ingester_ingested_samples",
                "Samples appended to the heads",
                m.ingested_samples.clone(),
            );
            r.register(
                "rimir_ingester_abandoned_pushes",
                "Pushes dropped before decoding because their caller had stopped waiting",
                m.abandoned_pushes.clone(),
            );
            r.register(
                "rimir_ingester_shipped_blocks",
                "Blocks uploaded to object storage",
                m.shipped_blocks.clone(),
            );
            r.register(
                "rimir_ingester_shipper_upload_failures",
                "Failed block uploads",
                m.ship_failures.clone(),
            );
            r.register(
                "rimir_ready",
                "Whether the process is ready",
                m.ready.clone(),
            );
        }
        m
    }

    /// The text exposition of every metric.
    /// Registers more metrics (another role's) into the same registry.
    pub fn register_with(&self, f: impl FnOnce(&mut Registry)) {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r);
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if encode(&mut out, &r).is_err() {
            out.push_str("# encoding metrics failed\n");
        }
        out
    }

    /// One label set `[(name, value)]`.
    pub fn label(name: &'static str, value: &str) -> Labels {
        vec![(name, value.to_string())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_carry_rimir_names_and_labels() {
        let m = Metrics::new();
        m.received_samples
            .get_or_create(&Metrics::label("user", "t1"))
            .inc_by(5);
        m.push_duration.observe(0.01);
        let text = m.render();
        assert!(
            text.contains("rimir_distributor_received_samples_total{user=\"t1\"} 5"),
            "{text}"
        );
        assert!(text.contains("rimir_distributor_push_duration_seconds_bucket"));
        assert!(text.ends_with("# EOF\n"));
    }
}
