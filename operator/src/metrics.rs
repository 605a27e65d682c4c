//! The operator's Prometheus metrics (`rimir_operator_*`) and the `/metrics` HTTP endpoint.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of the reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or the error kind (`AwsError`, `InvalidSpec`, …).
    pub result: String,
}

/// Labels of the AWS request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsLabels {
    /// `s3`, `iam`, `sts`.
    pub service: String,
    /// API operation.
    pub operation: String,
    /// `OK` or the AWS error code.
    pub code: String,
}

/// Labels of the clusters-by-phase gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The MimirCluster phase.
    pub phase: String,
}

/// All operator metrics, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result.
    pub reconciles: Family<ResultLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// AWS API requests by service, operation and result code.
    pub aws_requests: Family<AwsLabels, Counter>,
    /// MimirClusters by phase.
    pub clusters: Family<PhaseLabels, Gauge>,
    /// 1 while this replica holds the leader lease (or runs without leader election), else 0.
    pub leader: Gauge,
    /// Phase of each known cluster, to keep `clusters` consistent as phases change.
    phases: Mutex<std::collections::HashMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rimir_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "MimirCluster reconciles by result",
            reconciles.clone(),
        );
        let reconcile_duration =
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one MimirCluster reconcile",
            reconcile_duration.clone(),
        );
        let aws_requests = Family::<AwsLabels, Counter>::default();
        registry.register(
            "aws_requests",
            "AWS API requests by service, operation and result code",
            aws_requests.clone(),
        );
        let clusters = Family::<PhaseLabels, Gauge>::default();
        registry.register("clusters", "MimirClusters by phase", clusters.clone());
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica is the one reconciling (holds the leader lease)",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            aws_requests,
            clusters,
            leader,
            phases: Mutex::default(),
        }
    }

    /// Counts one finished reconcile.
    pub fn reconciled(&self, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Counts one AWS call.
    pub fn aws_request(&self, service: &str, operation: &str, code: &str) {
        self.aws_requests
            .get_or_create(&AwsLabels {
                service: service.to_string(),
                operation: operation.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// Records the phase of a cluster (`None` when it is gone).
    pub fn set_phase(&self, cluster: &str, phase: Option<&str>) {
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        let old = match phase {
            Some(p) => phases.insert(cluster.to_string(), p.to_string()),
            None => phases.remove(cluster),
        };
        if old.as_deref() == phase {
            return;
        }
        if let Some(o) = old {
            self.clusters.get_or_create(&PhaseLabels { phase: o }).dec();
        }
        if let Some(p) = phase {
            self.clusters
                .get_or_create(&PhaseLabels {
                    phase: p.to_string(),
                })
                .inc();
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_the_operator_prefix() {
        let m = Metrics::new();
        m.reconciled("success", Duration::from_millis(20));
        m.aws_request("s3", "CreateBucket", "OK");
        m.set_phase("ns/a", Some("Provisioning"));
        m.set_phase("ns/a", Some("Ready"));
        m.set_phase("ns/b", Some("Ready"));
        let text = m.encode();
        assert!(
            text.contains("rimir_operator_reconciles_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rimir_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("rimir_operator_aws_requests_total{service=\"s3\",operation=\"CreateBucket\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rimir_operator_clusters{phase=\"Ready\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("rimir_operator_clusters{phase=\"Provisioning\"} 0"),
            "{text}"
        );
        m.set_phase("ns/b", None);
        assert!(
            m.encode()
                .contains("rimir_operator_clusters{phase=\"Ready\"} 1")
        );
    }

    /// The chart's Grafana dashboard only queries series the operator exports.
    #[test]
    fn dashboard_queries_only_exported_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/rimir-operator/dashboards/rimir-operator.json"
        );
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let m = Metrics::new();
        m.reconciled("success", Duration::from_millis(1));
        m.aws_request("s3", "HeadBucket", "OK");
        m.set_phase("ns/a", Some("Ready"));
        let exposition = m.encode();
        let mut checked = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let mut rest = expr;
                while let Some(i) = rest.find("rimir_operator_") {
                    let name: String = rest[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        exposition.contains(&format!("\n{name}")),
                        "{name} (in {expr}) is not exported"
                    );
                    checked += 1;
                    rest = &rest[i + name.len()..];
                }
            }
        }
        assert!(checked >= 6, "{checked}");
    }
}
