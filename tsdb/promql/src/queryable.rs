//! The querier's view of storage: the [`Queryable`] trait every source (head, blocks, ingesters)
//! implements for PromQL and the HTTP API, the errors a query can end with, and [`MemQueryable`],
//! an in-memory source for tests and tools.

use std::collections::BTreeSet;

use thiserror::Error;

use rimir_tsdb::labels::Matcher;
use rimir_tsdb::series::Series;

/// Why a query failed. The HTTP API maps each variant to Prometheus' error type and status.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QueryError {
    /// The query text or a parameter is invalid (`bad_data`, 400).
    #[error("{0}")]
    BadData(String),
    /// Evaluation failed on the data, e.g. a vector-matching conflict (`execution`, 422).
    #[error("{0}")]
    Execution(String),
    /// A storage source failed while selecting series (`internal`, 500).
    #[error("selecting series for {{{matchers}}} in [{mint}, {maxt}]: {message}")]
    Storage {
        /// The selector's matchers, formatted.
        matchers: String,
        /// Start of the selected time range (ms).
        mint: i64,
        /// End of the selected time range (ms).
        maxt: i64,
        /// What the source reported.
        message: String,
    },
    /// More series were fetched than `max_fetched_series_per_query` allows (422).
    #[error(
        "the query exceeded the maximum number of series (limit: {limit} series, max_fetched_series_per_query)"
    )]
    TooManySeries {
        /// The configured limit.
        limit: usize,
    },
    /// More samples were loaded than `max_samples` allows (422).
    #[error(
        "query processing would load too many samples into memory in query execution (limit: {limit} samples, max_samples)"
    )]
    TooManySamples {
        /// The configured limit.
        limit: usize,
    },
    /// Evaluation ran longer than the query `timeout` (`timeout`, 503).
    #[error("query timed out in expression evaluation (limit: {limit_ms} ms, timeout)")]
    Timeout {
        /// The configured timeout in milliseconds.
        limit_ms: u64,
    },
    /// Reading metric metadata from the ingesters failed (`internal`, 500).
    #[error("reading metric metadata: {0}")]
    Metadata(String),
}

/// A source of series for queries. Implementations return, for each series matching all
/// `matchers`, its samples with `mint <= t <= maxt` (series without samples there may be left
/// out), each series once, replicas' copies already merged.
pub trait Queryable: Send + Sync {
    /// Series matching `matchers` with their samples in `[mint, maxt]`.
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64)
    -> Result<Vec<Series>, QueryError>;

    /// Label sets of the series matching `matchers` with samples in `[mint, maxt]`. The default
    /// selects and drops the samples; sources that can list series from an index alone should
    /// override it.
    fn series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<rimir_tsdb::labels::Labels>, QueryError> {
        Ok(self
            .select(matchers, mint, maxt)?
            .into_iter()
            .map(|s| s.labels)
            .collect())
    }

    /// Sorted, unique label names of the series matching `matchers` (all series when empty)
    /// that have samples in `[mint, maxt]`.
    fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, QueryError>;

    /// Sorted, unique values of label `name` over the series matching `matchers` (all series
    /// when empty) that have samples in `[mint, maxt]`.
    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, QueryError>;

    /// Metric metadata (type, help, unit) received for the tenant, of `metric` only when given;
    /// replicas' copies may repeat. Only ingesters keep metadata (as in Mimir, blocks hold
    /// none), so other sources have none.
    fn metadata(
        &self,
        metric: Option<&str>,
    ) -> Result<Vec<rimir_tsdb::metadata::MetricMetadata>, QueryError> {
        let _ = metric;
        Ok(Vec::new())
    }
}

/// Series held in memory, sorted by labels: the reference [`Queryable`] for tests.
#[derive(Debug, Clone, Default)]
pub struct MemQueryable {
    series: Vec<Series>,
    metadata: Vec<rimir_tsdb::metadata::MetricMetadata>,
}

impl MemQueryable {
    /// Builds a source from series; samples of series with equal labels are merged.
    pub fn new(series: Vec<Series>) -> Self {
        let mut series = series;
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        let mut out: Vec<Series> = Vec::with_capacity(series.len());
        for s in series {
            match out.last_mut() {
                Some(last) if last.labels == s.labels => {
                    last.samples = rimir_tsdb::series::merge_samples(&[&last.samples, &s.samples]);
                }
                _ => out.push(s),
            }
        }
        Self {
            series: out,
            metadata: Vec::new(),
        }
    }

    /// The same source answering `metadata` with these entries.
    pub fn with_metadata(mut self, metadata: Vec<rimir_tsdb::metadata::MetricMetadata>) -> Self {
        self.metadata = metadata;
        self
    }

    fn matching<'a>(
        &'a self,
        matchers: &'a [Matcher],
        mint: i64,
        maxt: i64,
    ) -> impl Iterator<Item = (&'a Series, &'a [(i64, f64)])> + 'a {
        self.series.iter().filter_map(move |s| {
            if !matchers.iter().all(|m| m.matches_labels(&s.labels)) {
                return None;
            }
            let lo = s.samples.partition_point(|&(t, _)| t < mint);
            let hi = s.samples.partition_point(|&(t, _)| t <= maxt);
            (lo < hi).then(|| (s, &s.samples[lo..hi]))
        })
    }
}

impl Queryable for MemQueryable {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, QueryError> {
        Ok(self
            .matching(matchers, mint, maxt)
            .map(|(s, samples)| Series {
                labels: s.labels.clone(),
                samples: samples.to_vec(),
            })
            .collect())
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, QueryError> {
        Ok(label_names_of(
            self.matching(matchers, mint, maxt).map(|(s, _)| &s.labels),
        ))
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, QueryError> {
        Ok(label_values_of(
            name,
            self.matching(matchers, mint, maxt).map(|(s, _)| &s.labels),
        ))
    }

    fn metadata(
        &self,
        metric: Option<&str>,
    ) -> Result<Vec<rimir_tsdb::metadata::MetricMetadata>, QueryError> {
        Ok(self
            .metadata
            .iter()
            .filter(|m| metric.is_none_or(|n| n == m.metric_family_name))
            .cloned()
            .collect())
    }
}

/// Sorted, unique label names of the given label sets.
pub fn label_names_of<'a>(
    sets: impl IntoIterator<Item = &'a rimir_tsdb::labels::Labels>,
) -> Vec<String> {
    let mut names = BTreeSet::new();
    for l in sets {
        names.extend(l.iter().map(|l| l.name.as_str()));
    }
    names.into_iter().map(String::from).collect()
}

/// Sorted, unique values of label `name` over the given label sets.
pub fn label_values_of<'a>(
    name: &str,
    sets: impl IntoIterator<Item = &'a rimir_tsdb::labels::Labels>,
) -> Vec<String> {
    let values: BTreeSet<&str> = sets.into_iter().filter_map(|l| l.get(name)).collect();
    values.into_iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rimir_tsdb::labels::{Labels, MatchType};

    fn series(pairs: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
        Series {
            labels: Labels::from_pairs(pairs.iter().copied()),
            samples: samples.to_vec(),
        }
    }

    #[test]
    fn mem_queryable_selects_by_matchers_and_time() {
        let q = MemQueryable::new(vec![
            series(&[("__name__", "up"), ("job", "a")], &[(1, 1.0), (5, 2.0)]),
            series(&[("__name__", "up"), ("job", "b")], &[(10, 1.0)]),
            series(&[("__name__", "x"), ("job", "a")], &[(1, 3.0)]),
        ]);
        let m = [Matcher::equal("__name__", "up")];
        let got = q.select(&m, 0, 6).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].samples, vec![(1, 1.0), (5, 2.0)]);
        let m = [Matcher::new(MatchType::Regex, "job", "a|b").unwrap()];
        assert_eq!(q.select(&m, 0, 100).unwrap().len(), 3);
        assert_eq!(q.label_names(&[], 0, 100).unwrap(), vec!["__name__", "job"]);
        assert_eq!(
            q.label_values("job", &[Matcher::equal("__name__", "up")], 0, 100)
                .unwrap(),
            vec!["a", "b"]
        );
        assert_eq!(
            q.label_values("job", &[], 6, 9).unwrap(),
            Vec::<String>::new()
        );
    }
}
