//! The values evaluation passes between nodes — instant-vector elements, scalars, strings and
//! range-vector windows — and [`Eval`], the interface through which the node evaluators
//! (functions, aggregations, binary operators) ask the engine to evaluate their arguments.
//!
//! This module sits below every evaluator: it imports only the query errors.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use promql_parser::parser::{Expr, VectorSelector};
use rimir_tsdb::labels::{Label, Labels, METRIC_NAME};

use crate::queryable::QueryError;

/// The bit pattern Prometheus writes as a staleness marker: a NaN that ends a series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is a staleness marker (compared by bits: other NaNs are ordinary values).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// A series' label set, shared between steps.
pub(crate) type Metric = Arc<Labels>;

/// One element of an instant vector during evaluation.
#[derive(Debug, Clone)]
pub(crate) struct Elem {
    pub metric: Metric,
    pub v: f64,
}

/// The value of a (sub)expression at one step.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Scalar(f64),
    Str(String),
    Vector(Vec<Elem>),
}

/// One series of a range vector at one step: its labels and the samples in the window.
pub(crate) struct RangeItem<'a> {
    pub metric: std::borrow::Cow<'a, Metric>,
    /// The labels without `__name__`, when already known.
    pub nameless: Option<&'a Metric>,
    pub samples: std::borrow::Cow<'a, [(i64, f64)]>,
    /// `Some(true)` when the window is known to hold no counter reset.
    pub no_resets: Option<bool>,
}

/// A range vector argument at one step, with the window it covers.
pub(crate) struct RangeArg<'a> {
    pub items: Vec<RangeItem<'a>>,
    /// Start of the window (ms, inclusive).
    pub range_start: i64,
    /// End of the window (ms, inclusive).
    pub range_end: i64,
    /// Window length (ms).
    pub range_ms: i64,
    /// Whether the series carry several metric names, when known for all steps.
    pub multi_name: Option<bool>,
}

/// Hashes pointers (already unique) with one multiplication instead of SipHash.
#[derive(Default, Clone, Copy)]
pub(crate) struct PtrHasher(u64);

impl std::hash::Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.write_usize(n as usize);
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64)
            .wrapping_mul(0x517c_c1b7_2722_0a95)
            .rotate_left(26);
    }
}

/// Grouping hashes of aggregation inputs by (aggregation node, label-set allocation); see
/// [`Eval::group_cache`].
pub(crate) type GroupCache = HashMap<
    (usize, *const Labels),
    (Metric, u64, Option<Metric>),
    std::hash::BuildHasherDefault<PtrHasher>,
>;

/// A label set without its metric name (`__name__`), as functions and arithmetic return it.
pub(crate) fn drop_name(l: &Labels) -> Labels {
    if l.get(METRIC_NAME).is_none() {
        return l.clone();
    }
    Labels::from_sorted(
        l.iter()
            .filter(|x| x.name != METRIC_NAME)
            .cloned()
            .collect::<Vec<Label>>(),
    )
}

/// What the node evaluators need from the engine: evaluate a sub-expression at a step, get a
/// range-vector argument's window, and the per-query caches.
pub(crate) trait Eval {
    /// The value of `e` at step time `t`.
    fn eval(&self, e: &Expr, t: i64) -> Result<Val, QueryError>;
    /// The value of `e` at `t`, which must be an instant vector.
    fn eval_vector(&self, e: &Expr, t: i64) -> Result<Vec<Elem>, QueryError>;
    /// The value of `e` at `t`, which must be a scalar.
    fn eval_scalar(&self, e: &Expr, t: i64) -> Result<f64, QueryError>;
    /// A range-vector argument (range selector or subquery) at `t`.
    fn range_arg(&self, e: &Expr, t: i64) -> Result<RangeArg<'_>, QueryError>;
    /// As [`Eval::range_arg`]; with `want_resets`, selector windows say whether they hold a
    /// counter reset.
    fn range_arg_resets(
        &self,
        e: &Expr,
        t: i64,
        want_resets: bool,
    ) -> Result<RangeArg<'_>, QueryError>;
    /// The series selected by `vs` at `t`, each as its labels without `__name__` and the
    /// timestamp of the sample the selector took (for `timestamp()`).
    fn sample_times(&self, vs: &VectorSelector, t: i64) -> Result<Vec<(Metric, i64)>, QueryError>;
    /// The vector computed ahead for node `node` at step time `t`, if any (handed out once).
    fn take_precomputed(&self, node: usize, t: i64) -> Option<Vec<Elem>>;
    /// The empty label set, shared.
    fn empty(&self) -> &Metric;
    /// Grouping hashes of aggregation inputs, kept for the whole query.
    fn group_cache(&self) -> &RefCell<GroupCache>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_marker_is_recognised_by_bits_only() {
        assert!(is_stale_nan(f64::from_bits(STALE_NAN_BITS)));
        assert!(!is_stale_nan(f64::NAN));
    }
}
