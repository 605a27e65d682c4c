//! Metric metadata — type, help and unit per metric family — as Prometheus remote-writes it:
//! the distributor's validation, the ingester's in-memory store, and the merge of ingesters'
//! answers into `/api/v1/metadata`. Like Mimir, ingesters keep metadata in memory only (it is
//! not in the WAL nor in blocks) and forget an entry not received again for
//! `ingester.metadata_retain_period`; Prometheus sends it again every minute by default.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::remote_write::{MetadataRef, MetricMetadata};

/// Distinct metadata kept per metric: beyond this the least recently received is replaced, so
/// a client varying its help text cannot grow an ingester without bound.
pub const MAX_PER_METRIC: usize = 10;

/// The API's name of a remote-write `MetricType` code (Prometheus' `textparse` names).
pub fn type_name(code: i32) -> &'static str {
    match code {
        1 => "counter",
        2 => "gauge",
        3 => "histogram",
        4 => "gaugehistogram",
        5 => "summary",
        6 => "info",
        7 => "stateset",
        _ => "unknown",
    }
}

/// Why metadata was refused: Mimir's discard reason and a message naming the metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidMetadata {
    /// Mimir's reason (`missing_metric_name`, `metric_name_too_long`, `help_too_long`,
    /// `unit_too_long`).
    pub reason: &'static str,
    /// What is wrong, naming the metric and the limit.
    pub message: String,
}

/// Checks one metadata entry against Mimir's rules: a metric name, and name, help and unit
/// each at most `max_length` characters (`limits.max_metadata_length`).
pub fn validate(m: &MetadataRef<'_>, max_length: usize) -> Result<(), InvalidMetadata> {
    if m.name.is_empty() {
        return Err(InvalidMetadata {
            reason: "missing_metric_name",
            message: "metadata missing metric name".into(),
        });
    }
    for (what, reason, value) in [
        ("metric name", "metric_name_too_long", m.name),
        ("help", "help_too_long", m.help),
        ("unit", "unit_too_long", m.unit),
    ] {
        let chars = value.chars().count();
        if chars > max_length {
            let shown: String = m.name.chars().take(100).collect();
            return Err(InvalidMetadata {
                reason,
                message: format!(
                    "metadata {what} of {chars} characters exceeds the limit of {max_length} (limits.max_metadata_length) for metric {shown:?}"
                ),
            });
        }
    }
    Ok(())
}

/// One distinct metadata of a metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricMeta {
    /// `MetricType` code.
    pub kind: i32,
    /// HELP text.
    pub help: String,
    /// UNIT.
    pub unit: String,
}

impl MetricMeta {
    fn of(m: &MetricMetadata) -> Self {
        Self {
            kind: m.r#type,
            help: m.help.clone(),
            unit: m.unit.clone(),
        }
    }
}

/// Metric → distinct metadata, each with the time it was last received.
type TenantMetadata = HashMap<String, Vec<(MetricMeta, Instant)>>;

/// An ingester's metadata, per tenant, in memory.
#[derive(Debug)]
pub struct MetadataStore {
    retain: Duration,
    tenants: Mutex<HashMap<String, TenantMetadata>>,
}

impl MetadataStore {
    /// A store forgetting entries not received for `retain`.
    pub fn new(retain: Duration) -> Self {
        Self {
            retain,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantMetadata>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records metadata received for `tenant` now.
    pub fn add(&self, tenant: &str, entries: &[MetricMetadata]) {
        if entries.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut tenants = self.lock();
        let metrics = tenants.entry(tenant.to_string()).or_default();
        for m in entries {
            let meta = MetricMeta::of(m);
            let known = metrics.entry(m.metric_family_name.clone()).or_default();
            if let Some(e) = known.iter_mut().find(|(k, _)| *k == meta) {
                e.1 = now;
            } else if known.len() < MAX_PER_METRIC {
                known.push((meta, now));
            } else if let Some(oldest) = known.iter_mut().min_by_key(|(_, seen)| *seen) {
                *oldest = (meta, now);
            }
        }
    }

    /// The tenant's metadata received within the retain period (of `metric` only, when given),
    /// sorted by metric name; older entries are dropped.
    pub fn get(&self, tenant: &str, metric: Option<&str>) -> Vec<MetricMetadata> {
        let mut tenants = self.lock();
        let Some(metrics) = tenants.get_mut(tenant) else {
            return Vec::new();
        };
        let retain = self.retain;
        metrics.retain(|_, known| {
            known.retain(|(_, seen)| seen.elapsed() <= retain);
            !known.is_empty()
        });
        let mut out: Vec<MetricMetadata> = metrics
            .iter()
            .filter(|(name, _)| metric.is_none_or(|m| m == name.as_str()))
            .flat_map(|(name, known)| {
                known.iter().map(move |(k, _)| MetricMetadata {
                    r#type: k.kind,
                    metric_family_name: name.clone(),
                    help: k.help.clone(),
                    unit: k.unit.clone(),
                })
            })
            .collect();
        if metrics.is_empty() {
            tenants.remove(tenant);
        }
        out.sort_by(|a, b| {
            (&a.metric_family_name, a.r#type, &a.help, &a.unit).cmp(&(
                &b.metric_family_name,
                b.r#type,
                &b.help,
                &b.unit,
            ))
        });
        out
    }
}

/// Merges ingesters' answers (each replica holds a copy) into the API's map: metric → its
/// distinct metadata, at most `limit` metrics (by name) and `limit_per_metric` entries each
/// (`None`: no limit).
pub fn merge(
    answers: impl IntoIterator<Item = MetricMetadata>,
    limit: Option<usize>,
    limit_per_metric: Option<usize>,
) -> BTreeMap<String, Vec<MetricMeta>> {
    let mut all: BTreeMap<String, Vec<MetricMeta>> = BTreeMap::new();
    for m in answers {
        let meta = MetricMeta::of(&m);
        let known = all.entry(m.metric_family_name).or_default();
        if !known.contains(&meta) {
            known.push(meta);
        }
    }
    if let Some(limit) = limit {
        while all.len() > limit {
            all.pop_last();
        }
    }
    for known in all.values_mut() {
        known.sort();
        if let Some(n) = limit_per_metric {
            known.truncate(n);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(kind: i32, name: &str, help: &str, unit: &str) -> MetricMetadata {
        MetricMetadata {
            r#type: kind,
            metric_family_name: name.into(),
            help: help.into(),
            unit: unit.into(),
        }
    }

    #[test]
    fn validation_names_the_metric_and_the_limit() {
        let ok = MetadataRef {
            kind: 1,
            name: "up_total",
            help: "h",
            unit: "",
        };
        assert!(validate(&ok, 1024).is_ok());
        let e = validate(&MetadataRef { name: "", ..ok }, 1024).unwrap_err();
        assert_eq!(e.reason, "missing_metric_name");
        let long = "x".repeat(30);
        let e = validate(&MetadataRef { help: &long, ..ok }, 20).unwrap_err();
        assert_eq!(e.reason, "help_too_long");
        assert!(
            e.message.contains("30 characters")
                && e.message.contains("limit of 20")
                && e.message.contains("\"up_total\""),
            "{}",
            e.message
        );
        assert_eq!(
            validate(&MetadataRef { unit: &long, ..ok }, 20)
                .unwrap_err()
                .reason,
            "unit_too_long"
        );
        assert_eq!(
            validate(&MetadataRef { name: &long, ..ok }, 20)
                .unwrap_err()
                .reason,
            "metric_name_too_long"
        );
    }

    #[test]
    fn store_keeps_distinct_entries_per_tenant_and_forgets_old_ones() {
        let s = MetadataStore::new(Duration::from_secs(3600));
        s.add("a", &[md(1, "reqs_total", "Requests.", "")]);
        s.add(
            "a",
            &[
                md(1, "reqs_total", "Requests.", ""),
                md(2, "temp", "Temperature.", "celsius"),
            ],
        );
        s.add("b", &[md(2, "only_b", "", "")]);
        assert_eq!(
            s.get("a", None),
            [
                md(1, "reqs_total", "Requests.", ""),
                md(2, "temp", "Temperature.", "celsius")
            ]
        );
        assert_eq!(s.get("a", Some("temp")).len(), 1);
        assert_eq!(s.get("b", None), [md(2, "only_b", "", "")]);
        assert!(s.get("c", None).is_empty());
        // Different help: a second entry, up to MAX_PER_METRIC.
        for i in 0..(MAX_PER_METRIC + 5) {
            s.add("a", &[md(1, "reqs_total", &format!("v{i}"), "")]);
        }
        assert_eq!(s.get("a", Some("reqs_total")).len(), MAX_PER_METRIC);
        let gone = MetadataStore::new(Duration::ZERO);
        gone.add("a", &[md(1, "x", "", "")]);
        std::thread::sleep(Duration::from_millis(5));
        assert!(gone.get("a", None).is_empty());
    }

    #[test]
    fn merge_dedups_replicas_and_applies_limits() {
        let answers = vec![
            md(1, "b_total", "B.", ""),
            md(1, "a_total", "A.", ""),
            md(1, "b_total", "B.", ""),
            md(2, "b_total", "B as gauge.", ""),
            md(2, "c", "C.", "bytes"),
        ];
        let all = merge(answers.clone(), None, None);
        assert_eq!(all.keys().collect::<Vec<_>>(), ["a_total", "b_total", "c"]);
        assert_eq!(all["b_total"].len(), 2);
        let limited = merge(answers, Some(2), Some(1));
        assert_eq!(limited.keys().collect::<Vec<_>>(), ["a_total", "b_total"]);
        assert_eq!(limited["b_total"].len(), 1);
        assert_eq!(type_name(limited["b_total"][0].kind), "counter");
        assert_eq!(type_name(0), "unknown");
        assert_eq!(type_name(7), "stateset");
    }
}
