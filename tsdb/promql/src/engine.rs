//! The evaluator: fetches every selector's series once for the whole query, then evaluates the
//! expression tree at each step time, as Prometheus' range evaluation does.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use promql_parser::parser::{
    AtModifier, Call, Expr, MatrixSelector, Offset, SubqueryExpr, VectorSelector,
};

use rimir_tsdb::labels::{Labels, METRIC_NAME};
use rimir_tsdb::series::Series;

use crate::parse::selector_matchers;
use crate::queryable::{QueryError, Queryable};
use crate::value::{
    Elem, Eval, GroupCache, Metric, PtrHasher, RangeArg, RangeItem, Val, drop_name, is_stale_nan,
};
use crate::{aggregate, binary, functions};

/// Limits applied to each query; zero means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most series all selectors of one query may fetch (`max_fetched_series_per_query`).
    pub max_fetched_series: usize,
    /// Most samples one query may load and produce (`max_samples`).
    pub max_samples: usize,
    /// Longest evaluation time (`timeout`).
    pub timeout: Duration,
}

impl Default for Limits {
    /// Prometheus' defaults: 50 million samples, 2 minutes; no series limit.
    fn default() -> Self {
        Self {
            max_fetched_series: 0,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Evaluates PromQL queries against a [`Queryable`].
#[derive(Debug, Clone)]
pub struct Engine {
    /// How far back an instant selector looks for a sample (ms); Prometheus' default is 5 min.
    pub lookback_ms: i64,
    /// Step of subqueries that give none (ms): Prometheus' default evaluation interval, 1 min.
    pub default_subquery_step_ms: i64,
    /// Per-query limits.
    pub limits: Limits,
}

impl Default for Engine {
    fn default() -> Self {
        Self {
            lookback_ms: 5 * 60 * 1000,
            default_subquery_step_ms: 60 * 1000,
            limits: Limits::default(),
        }
    }
}

/// One sample of an instant vector result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels.
    pub labels: Labels,
    /// Evaluation time (ms).
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// A query result, typed as Prometheus' API reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar at time `t` (ms).
    Scalar {
        /// Evaluation time (ms).
        t: i64,
        /// Value.
        v: f64,
    },
    /// A string at time `t` (ms).
    String {
        /// Evaluation time (ms).
        t: i64,
        /// The string.
        s: String,
    },
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector or range query result, series sorted by labels.
    Matrix(Vec<Series>),
}

impl Engine {
    /// Evaluates `query` at time `t` (ms).
    pub fn instant(&self, q: &dyn Queryable, query: &str, t: i64) -> Result<Value, QueryError> {
        let expr = crate::parse::parse(query)?;
        let ev = Evaluator::prepare(self, q, &expr, t, t, 0)?;
        let inner = unwrap_parens(&expr);
        match inner {
            Expr::MatrixSelector(ms) => {
                let items = ev.matrix_selector(&ms.vs, ms.range.as_millis() as i64, t)?;
                let mut out: Vec<Series> = items
                    .into_iter()
                    .map(|r| Series {
                        labels: (**r.metric).clone(),
                        samples: r.samples.to_vec(),
                    })
                    .collect();
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
                ev.count_samples(out.iter().map(|s| s.samples.len()).sum())?;
                return Ok(Value::Matrix(out));
            }
            Expr::Subquery(sq) => {
                let items = ev.subquery(sq, t)?;
                let mut out: Vec<Series> = items
                    .into_iter()
                    .map(|r| Series {
                        labels: (**r.metric).clone(),
                        samples: r.samples.to_vec(),
                    })
                    .collect();
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
                return Ok(Value::Matrix(out));
            }
            _ => {}
        }
        ev.check_deadline()?;
        Ok(match ev.eval(&expr, t)? {
            Val::Scalar(v) => Value::Scalar { t, v },
            Val::Str(s) => Value::String { t, s },
            Val::Vector(vec) => {
                ev.count_samples(vec.len())?;
                Value::Vector(
                    vec.into_iter()
                        .map(|e| Sample {
                            labels: (*e.metric).clone(),
                            t,
                            v: e.v,
                        })
                        .collect(),
                )
            }
        })
    }

    /// Evaluates `query` at every `step` (ms) from `start` to `end` (ms) inclusive.
    pub fn range(
        &self,
        q: &dyn Queryable,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Value, QueryError> {
        if step <= 0 {
            return Err(QueryError::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end < start {
            return Err(QueryError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        let expr = crate::parse::parse(query)?;
        match expr.value_type() {
            promql_parser::parser::value::ValueType::Vector
            | promql_parser::parser::value::ValueType::Scalar => {}
            other => {
                return Err(QueryError::BadData(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    value_type_name(other)
                )));
            }
        }
        let mut ev = Evaluator::prepare(self, q, &expr, start, end, step)?;
        if let Expr::VectorSelector(vs) = unwrap_parens(&expr) {
            return ev.selector_matrix(vs, start, end, step).map(Value::Matrix);
        }
        ev.precompute(&expr)?;
        // Output series by label set, and by label-set allocation: selectors hand out the same
        // allocation at every step, so most lookups hit by pointer. `by_ptr` holds each Arc it
        // was keyed with, so no allocation is freed and reused for other labels meanwhile.
        let mut index: HashMap<Arc<Labels>, usize> = HashMap::new();
        let mut by_ptr: PtrMap<(Metric, usize)> = PtrMap::default();
        let mut out: Vec<Series> = Vec::new();
        let mut t = start;
        while t <= end {
            ev.check_deadline()?;
            let elems = match ev.eval(&expr, t)? {
                Val::Scalar(v) => vec![Elem {
                    metric: ev.empty.clone(),
                    v,
                }],
                Val::Vector(v) => v,
                Val::Str(_) => {
                    return Err(QueryError::BadData(
                        "invalid expression type \"string\" for range query, must be Scalar or instant Vector".into(),
                    ));
                }
            };
            ev.count_samples(elems.len())?;
            for e in elems {
                let i = match by_ptr.get(&Arc::as_ptr(&e.metric)) {
                    Some(&(_, i)) => i,
                    None => {
                        let i = match index.get(&e.metric) {
                            Some(&i) => i,
                            None => {
                                out.push(Series {
                                    labels: (*e.metric).clone(),
                                    samples: Vec::new(),
                                });
                                index.insert(e.metric.clone(), out.len() - 1);
                                out.len() - 1
                            }
                        };
                        by_ptr.insert(Arc::as_ptr(&e.metric), (e.metric.clone(), i));
                        i
                    }
                };
                let s = &mut out[i].samples;
                if s.last().is_some_and(|&(lt, _)| lt == t) {
                    return Err(QueryError::Execution(
                        "vector cannot contain metrics with the same labelset".into(),
                    ));
                }
                s.push((t, e.v));
            }
            match t.checked_add(step) {
                Some(n) => t = n,
                None => break,
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(Value::Matrix(out))
    }
}

/// The current time in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn value_type_name(t: promql_parser::parser::value::ValueType) -> &'static str {
    use promql_parser::parser::value::ValueType;
    match t {
        ValueType::Vector => "instant vector",
        ValueType::Scalar => "scalar",
        ValueType::Matrix => "range vector",
        ValueType::String => "string",
    }
}

/// A selector's fetched series.
struct Fetched {
    series: Vec<FSeries>,
    /// Whether the series carry more than one metric name.
    multi_name: bool,
}

/// A fetched series, with cursors remembering where the previous step's window began and ended:
/// steps move forward, so the next window is found by a short forward walk instead of binary
/// searches that miss the cache at every level.
pub(super) struct FSeries {
    pub metric: Metric,
    pub nameless: Metric,
    pub samples: Vec<(i64, f64)>,
    lo: Cell<usize>,
    hi: Cell<usize>,
    /// Prefix counts of counter resets (`resets[i]`: drops among samples `1..=i`), built on first
    /// use by rate/increase so windows without a reset skip the correction loop.
    resets: std::cell::OnceCell<Vec<u32>>,
}

impl FSeries {
    /// Whether samples `lo..hi` contain no counter reset.
    fn no_resets(&self, lo: usize, hi: usize) -> bool {
        let r = self.resets.get_or_init(|| {
            let mut n = 0u32;
            let mut out = Vec::with_capacity(self.samples.len());
            for (i, &(_, v)) in self.samples.iter().enumerate() {
                if i > 0 && v < self.samples[i - 1].1 {
                    n += 1;
                }
                out.push(n);
            }
            out
        });
        r[hi - 1] == r[lo]
    }
}

/// The number of leading samples with a timestamp below `bound` (`<= bound` when `inclusive`),
/// starting from the cursor's previous answer; updates the cursor.
fn seek(samples: &[(i64, f64)], cursor: &Cell<usize>, bound: i64, inclusive: bool) -> usize {
    let before = |st: i64| if inclusive { st <= bound } else { st < bound };
    let mut i = cursor.get().min(samples.len());
    if i > 0 && !before(samples[i - 1].0) {
        i = samples.partition_point(|s| before(s.0));
    } else {
        let mut walked = 0;
        while i < samples.len() && before(samples[i].0) {
            i += 1;
            walked += 1;
            if walked == 16 {
                i += samples[i..].partition_point(|s| before(s.0));
                break;
            }
        }
    }
    cursor.set(i);
    i
}

/// A node [`Evaluator::precompute`] computes series by series.
enum Precompute<'e> {
    /// A selector whose vector is taken by `eval` (not by a function reading it directly).
    Selector(&'e VectorSelector),
    /// A window function over a range selector.
    Window(&'e Call, &'e MatrixSelector),
}

/// Collects the nodes below `e` that [`Evaluator::precompute`] handles; `in_call` when `e` is a
/// function argument (functions such as `timestamp` read selectors directly).
fn plan_precompute<'e>(e: &'e Expr, in_call: bool, out: &mut Vec<Precompute<'e>>) {
    match e {
        Expr::VectorSelector(vs) if !in_call => out.push(Precompute::Selector(vs)),
        Expr::Call(c) => {
            let args = &c.args.args;
            match args.first().map(|a| unwrap_parens(a)) {
                Some(Expr::MatrixSelector(ms))
                    if args.len() == 1 && functions::is_window_function(c.func.name) =>
                {
                    out.push(Precompute::Window(c, ms));
                }
                _ => {
                    for a in args {
                        plan_precompute(a, true, out);
                    }
                }
            }
        }
        Expr::Aggregate(a) => plan_precompute(&a.expr, false, out),
        Expr::Binary(b) => {
            plan_precompute(&b.lhs, false, out);
            plan_precompute(&b.rhs, false, out);
        }
        Expr::Paren(p) => plan_precompute(&p.expr, in_call, out),
        Expr::Unary(u) => plan_precompute(&u.expr, false, out),
        _ => {}
    }
}

/// Most threads one precomputed node is split over.
const MAX_PRECOMPUTE_THREADS: usize = 4;
/// Fewest series worth a thread of their own.
const MIN_SERIES_PER_THREAD: usize = 128;

/// A fetched series as precomputation reads it: samples, labels, labels without the name.
type SeriesRef<'a> = (&'a [(i64, f64)], &'a Metric, &'a Metric);

/// What [`Evaluator::precompute`] computes for one node, shareable between threads.
struct PrecomputeJob<'a> {
    /// Reference time (the window's end) at each step.
    ends: &'a [i64],
    /// For a window function: its name and range (ms); `None` for a plain selector.
    window: Option<(&'a str, i64)>,
    lookback: i64,
    deadline: Instant,
    timeout: Duration,
}

impl PrecomputeJob<'_> {
    /// The per-step vectors of `series`, in their order.
    fn run(&self, series: &[SeriesRef<'_>]) -> Result<Vec<Vec<Elem>>, QueryError> {
        let mut per_step: Vec<Vec<Elem>> = (0..self.ends.len()).map(|_| Vec::new()).collect();
        // For rate and increase: counter resets among samples 1..=i, so windows without one
        // skip the correction loop.
        let counts_resets = self
            .window
            .is_some_and(|(name, _)| matches!(name, "rate" | "increase"));
        let mut resets: Vec<u32> = Vec::new();
        for (n, &(samples, metric, nameless)) in series.iter().enumerate() {
            if n % 256 == 0 && Instant::now() > self.deadline {
                return Err(QueryError::Timeout {
                    limit_ms: self.timeout.as_millis() as u64,
                });
            }
            resets.clear();
            if counts_resets {
                let mut drops = 0u32;
                resets.extend(samples.iter().enumerate().map(|(i, &(_, v))| {
                    if i > 0 && v < samples[i - 1].1 {
                        drops += 1;
                    }
                    drops
                }));
            }
            let (mut lo, mut hi) = (0, 0);
            for (out, &end) in per_step.iter_mut().zip(self.ends) {
                while hi < samples.len() && samples[hi].0 <= end {
                    hi += 1;
                }
                match self.window {
                    None => {
                        if hi > 0 {
                            let (st, v) = samples[hi - 1];
                            if st >= end - self.lookback && !is_stale_nan(v) {
                                out.push(Elem {
                                    metric: metric.clone(),
                                    v,
                                });
                            }
                        }
                    }
                    Some((name, range_ms)) => {
                        let start = end.saturating_sub(range_ms);
                        while lo < hi && samples[lo].0 < start {
                            lo += 1;
                        }
                        if lo < hi {
                            let w = functions::Window {
                                start,
                                end,
                                range_ms,
                            };
                            let no_resets = counts_resets.then(|| resets[hi - 1] == resets[lo]);
                            if let Some(v) =
                                functions::window_value(name, &w, &samples[lo..hi], no_resets)
                            {
                                out.push(Elem {
                                    metric: nameless.clone(),
                                    v,
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(per_step)
    }
}

/// A map keyed by pointers.
type PtrMap<V> = HashMap<*const Labels, V, std::hash::BuildHasherDefault<PtrHasher>>;

/// Inner results of subqueries by (node address, inner step time).
type SubqueryCache = HashMap<(usize, i64), Rc<Vec<Elem>>>;

/// Evaluation state of one query.
pub(super) struct Evaluator {
    /// Query start and end (ms), for `@ start()` and `@ end()`.
    start: i64,
    end: i64,
    lookback: i64,
    sub_step: i64,
    /// Series per selector, keyed by the selector node's address in the (immutable) AST.
    fetched: HashMap<usize, Fetched>,
    /// Subquery inner results, keyed by (node address, inner step time).
    sub_cache: RefCell<SubqueryCache>,
    /// Grouping hashes of aggregation inputs by (aggregation node, label-set allocation): the
    /// same series reach an aggregation at every step, so each is hashed once. Each entry holds
    /// its `Arc`, so no allocation is freed and reused for other labels meanwhile.
    group_cache: RefCell<GroupCache>,
    /// Step of a range query (0 for an instant query).
    step: i64,
    /// Per-step vectors of nodes computed series by series before the step loop, keyed by the
    /// node's address; each step's vector is taken once (see [`Evaluator::take_precomputed`]).
    precomputed: RefCell<HashMap<usize, Vec<Option<Vec<Elem>>>>>,
    deadline: Instant,
    timeout: Duration,
    max_samples: usize,
    samples: Cell<usize>,
    empty: Metric,
}

fn unwrap_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unwrap_parens(&p.expr),
        other => other,
    }
}

fn dur_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => -dur_ms(d),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The node evaluators (functions, aggregations, binary operators) call back into the evaluator
/// through [`Eval`].
impl Eval for Evaluator {
    fn eval(&self, e: &Expr, t: i64) -> Result<Val, QueryError> {
        Evaluator::eval(self, e, t)
    }
    fn eval_vector(&self, e: &Expr, t: i64) -> Result<Vec<Elem>, QueryError> {
        Evaluator::eval_vector(self, e, t)
    }
    fn eval_scalar(&self, e: &Expr, t: i64) -> Result<f64, QueryError> {
        Evaluator::eval_scalar(self, e, t)
    }
    fn range_arg(&self, e: &Expr, t: i64) -> Result<RangeArg<'_>, QueryError> {
        Evaluator::range_arg_resets(self, e, t, false)
    }
    fn range_arg_resets(
        &self,
        e: &Expr,
        t: i64,
        want_resets: bool,
    ) -> Result<RangeArg<'_>, QueryError> {
        Evaluator::range_arg_resets(self, e, t, want_resets)
    }
    fn sample_times(&self, vs: &VectorSelector, t: i64) -> Result<Vec<(Metric, i64)>, QueryError> {
        Ok(self
            .vector_selector(vs, t)?
            .into_iter()
            .map(|(s, st, _)| (s.nameless.clone(), st))
            .collect())
    }
    fn take_precomputed(&self, node: usize, t: i64) -> Option<Vec<Elem>> {
        Evaluator::take_precomputed(self, node, t)
    }
    fn empty(&self) -> &Metric {
        &self.empty
    }
    fn group_cache(&self) -> &RefCell<GroupCache> {
        &self.group_cache
    }
}

impl Evaluator {
    /// Walks the tree, computing each selector's time range over all steps, and fetches.
    fn prepare(
        engine: &Engine,
        q: &dyn Queryable,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Self, QueryError> {
        let mut ev = Evaluator {
            start,
            end,
            lookback: engine.lookback_ms,
            sub_step: engine.default_subquery_step_ms,
            fetched: HashMap::new(),
            sub_cache: RefCell::new(HashMap::new()),
            group_cache: RefCell::new(GroupCache::default()),
            step,
            precomputed: RefCell::new(HashMap::new()),
            deadline: Instant::now() + engine.limits.timeout,
            timeout: engine.limits.timeout,
            max_samples: engine.limits.max_samples,
            samples: Cell::new(0),
            empty: Arc::new(Labels::default()),
        };
        let mut ranges: Vec<(&VectorSelector, usize, i64, i64, bool)> = Vec::new();
        ev.collect(expr, start, end, &mut ranges)?;
        let mut total_series = 0usize;
        for (vs, key, mint, maxt, drop_stale) in ranges {
            let matchers = selector_matchers(vs)?;
            let series = q.select(&matchers, mint, maxt)?;
            total_series += series.len();
            let limit = engine.limits.max_fetched_series;
            if limit > 0 && total_series > limit {
                return Err(QueryError::TooManySeries { limit });
            }
            let mut fs = Vec::with_capacity(series.len());
            for s in series {
                let mut samples = s.samples;
                if drop_stale {
                    samples.retain(|&(_, v)| !is_stale_nan(v));
                }
                ev.count_samples(samples.len())?;
                let nameless = Arc::new(drop_name(&s.labels));
                fs.push(FSeries {
                    metric: Arc::new(s.labels),
                    nameless,
                    samples,
                    lo: Cell::new(0),
                    hi: Cell::new(0),
                    resets: std::cell::OnceCell::new(),
                });
            }
            let multi_name = {
                let first = fs.first().and_then(|s| s.metric.get(METRIC_NAME));
                fs.iter().any(|s| s.metric.get(METRIC_NAME) != first)
            };
            ev.fetched.insert(
                key,
                Fetched {
                    series: fs,
                    multi_name,
                },
            );
        }
        Ok(ev)
    }

    /// The reference time of a selector or subquery evaluated at `t`.
    fn ref_time(&self, at: &Option<AtModifier>, offset: &Option<Offset>, t: i64) -> i64 {
        let base = match at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(st)) => system_time_ms(st),
        };
        base.saturating_sub(offset_ms(offset))
    }

    /// Collects (selector, key, mint, maxt, is-range) for every selector below `e`, which is
    /// evaluated at times in `[lo, hi]`.
    fn collect<'e>(
        &self,
        e: &'e Expr,
        lo: i64,
        hi: i64,
        out: &mut Vec<(&'e VectorSelector, usize, i64, i64, bool)>,
    ) -> Result<(), QueryError> {
        match e {
            Expr::VectorSelector(vs) => {
                let (a, b) = (
                    self.ref_time(&vs.at, &vs.offset, lo),
                    self.ref_time(&vs.at, &vs.offset, hi),
                );
                out.push((
                    vs,
                    vs as *const _ as usize,
                    a.saturating_sub(self.lookback),
                    b,
                    false,
                ));
            }
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                let (a, b) = (
                    self.ref_time(&vs.at, &vs.offset, lo),
                    self.ref_time(&vs.at, &vs.offset, hi),
                );
                out.push((
                    vs,
                    vs as *const _ as usize,
                    a.saturating_sub(dur_ms(&ms.range)),
                    b,
                    true,
                ));
            }
            Expr::Subquery(sq) => {
                let (a, b) = (
                    self.ref_time(&sq.at, &sq.offset, lo),
                    self.ref_time(&sq.at, &sq.offset, hi),
                );
                self.collect(&sq.expr, a.saturating_sub(dur_ms(&sq.range)), b, out)?;
            }
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    self.collect(p, lo, hi, out)?;
                }
                self.collect(&a.expr, lo, hi, out)?;
            }
            Expr::Unary(u) => self.collect(&u.expr, lo, hi, out)?,
            Expr::Binary(b) => {
                self.collect(&b.lhs, lo, hi, out)?;
                self.collect(&b.rhs, lo, hi, out)?;
            }
            Expr::Paren(p) => self.collect(&p.expr, lo, hi, out)?,
            Expr::Call(c) => {
                for a in &c.args.args {
                    self.collect(a, lo, hi, out)?;
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
            Expr::Extension(_) => {
                return Err(QueryError::BadData(
                    "extension expressions are not supported".into(),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn check_deadline(&self) -> Result<(), QueryError> {
        if Instant::now() > self.deadline {
            return Err(QueryError::Timeout {
                limit_ms: self.timeout.as_millis() as u64,
            });
        }
        Ok(())
    }

    pub(super) fn count_samples(&self, n: usize) -> Result<(), QueryError> {
        let total = self.samples.get() + n;
        self.samples.set(total);
        if self.max_samples > 0 && total > self.max_samples {
            return Err(QueryError::TooManySamples {
                limit: self.max_samples,
            });
        }
        Ok(())
    }

    /// Evaluates `e` at time `t` (ms).
    pub(super) fn eval(&self, e: &Expr, t: i64) -> Result<Val, QueryError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Val::Scalar(v) => Ok(Val::Scalar(-v)),
                Val::Vector(vec) => {
                    let out: Vec<Elem> = vec
                        .into_iter()
                        .map(|e| Elem {
                            metric: Arc::new(drop_name(&e.metric)),
                            v: -e.v,
                        })
                        .collect();
                    let mut seen = std::collections::HashSet::with_capacity(out.len());
                    if !out.iter().all(|e| seen.insert(e.metric.clone())) {
                        return Err(QueryError::Execution(
                            "vector cannot contain metrics with the same labelset".into(),
                        ));
                    }
                    Ok(Val::Vector(out))
                }
                Val::Str(_) => Err(QueryError::Execution(
                    "unary expression only allowed on expressions of type scalar or vector".into(),
                )),
            },
            Expr::VectorSelector(vs) => {
                if let Some(v) = self.take_precomputed(vs as *const _ as usize, t) {
                    return Ok(Val::Vector(v));
                }
                self.eval_selector(vs, t)
            }
            Expr::MatrixSelector(_) | Expr::Subquery(_) => Err(QueryError::Execution(
                "range vector used where an instant vector or scalar is required".into(),
            )),
            Expr::Call(c) => functions::call(self, c, t),
            Expr::Aggregate(a) => aggregate::eval(self, a, t),
            Expr::Binary(b) => binary::eval(self, b, t),
            Expr::Extension(_) => Err(QueryError::BadData(
                "extension expressions are not supported".into(),
            )),
        }
    }

    /// Evaluates `e` expecting an instant vector.
    pub(super) fn eval_vector(&self, e: &Expr, t: i64) -> Result<Vec<Elem>, QueryError> {
        match self.eval(e, t)? {
            Val::Vector(v) => Ok(v),
            _ => Err(QueryError::Execution(format!(
                "expected instant vector from {e}"
            ))),
        }
    }

    /// Evaluates `e` expecting a scalar.
    pub(super) fn eval_scalar(&self, e: &Expr, t: i64) -> Result<f64, QueryError> {
        match self.eval(e, t)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(QueryError::Execution(format!("expected scalar from {e}"))),
        }
    }

    /// The instant vector of a selector at `t`: per series the newest sample within the lookback
    /// window, unless it is a staleness marker; returns the series, the sample's time and value.
    pub(super) fn vector_selector(
        &self,
        vs: &VectorSelector,
        t: i64,
    ) -> Result<Vec<(&FSeries, i64, f64)>, QueryError> {
        let key = vs as *const _ as usize;
        let Some(Fetched { series, .. }) = self.fetched.get(&key) else {
            return Err(QueryError::Execution(format!(
                "selector {vs} was not fetched"
            )));
        };
        let rt = self.ref_time(&vs.at, &vs.offset, t);
        let mut out = Vec::with_capacity(series.len());
        for s in series {
            let i = seek(&s.samples, &s.hi, rt, true);
            if i == 0 {
                continue;
            }
            let (st, v) = s.samples[i - 1];
            if st < rt - self.lookback || is_stale_nan(v) {
                continue;
            }
            out.push((s, st, v));
        }
        Ok(out)
    }

    /// A selector's instant vector at `t`.
    fn eval_selector(&self, vs: &VectorSelector, t: i64) -> Result<Val, QueryError> {
        Ok(Val::Vector(
            self.vector_selector(vs, t)?
                .into_iter()
                .map(|(s, _, v)| Elem {
                    metric: s.metric.clone(),
                    v,
                })
                .collect(),
        ))
    }

    /// The vector precomputed for node `node` at step time `t`, if any (each is handed out once;
    /// a second evaluation at the same time computes it step-wise).
    pub(super) fn take_precomputed(&self, node: usize, t: i64) -> Option<Vec<Elem>> {
        if self.step <= 0 || t < self.start || (t - self.start) % self.step != 0 {
            return None;
        }
        let idx = usize::try_from((t - self.start) / self.step).ok()?;
        self.precomputed
            .borrow_mut()
            .get_mut(&node)?
            .get_mut(idx)?
            .take()
    }

    /// For a range query, computes series by series (each series' samples stay in cache while
    /// all steps are done, instead of visiting every series at every step) the per-step vectors
    /// of the selectors and window functions (`rate(x[5m])`, `avg_over_time(x[10m])`, …) that
    /// are evaluated at the query's steps, i.e. not inside a subquery.
    fn precompute(&mut self, expr: &Expr) -> Result<(), QueryError> {
        let steps = usize::try_from((self.end - self.start) / self.step.max(1)).unwrap_or(0) + 1;
        if self.step <= 0 || steps < 2 {
            return Ok(());
        }
        let mut nodes = Vec::new();
        plan_precompute(expr, false, &mut nodes);
        for node in nodes {
            let (vs, key, window) = match node {
                Precompute::Selector(vs) => (vs, vs as *const _ as usize, None),
                Precompute::Window(c, ms) => (&ms.vs, c as *const _ as usize, Some((c, ms))),
            };
            let Some(fetched) = self.fetched.get(&(vs as *const _ as usize)) else {
                continue;
            };
            // Dropping the names of several metrics may collide; the step-wise path reports it.
            if window.is_some() && fetched.multi_name {
                continue;
            }
            // Reference time of every step, and the window function's name and range.
            let ends: Vec<i64> = (0..steps)
                .map(|i| self.ref_time(&vs.at, &vs.offset, self.start + i as i64 * self.step))
                .collect();
            let job = PrecomputeJob {
                ends: &ends,
                window: window.map(|(c, ms)| (c.func.name, dur_ms(&ms.range))),
                lookback: self.lookback,
                deadline: self.deadline,
                timeout: self.timeout,
            };
            let items: Vec<SeriesRef<'_>> = fetched
                .series
                .iter()
                .map(|s| (s.samples.as_slice(), &s.metric, &s.nameless))
                .collect();
            // Series are independent: large selections are split over the cores, each part
            // keeping the series order, and the parts' vectors joined in order.
            let threads = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_PRECOMPUTE_THREADS)
                .min(items.len() / MIN_SERIES_PER_THREAD)
                .max(1);
            let parts: Vec<Result<Vec<Vec<Elem>>, QueryError>> = if threads == 1 {
                vec![job.run(&items)]
            } else {
                let per = items.len().div_ceil(threads);
                std::thread::scope(|sc| {
                    let handles: Vec<_> = items
                        .chunks(per)
                        .map(|part| sc.spawn(|| job.run(part)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(QueryError::Execution(
                                    "precomputing a selector's steps failed".into(),
                                ))
                            })
                        })
                        .collect()
                })
            };
            let mut per_step: Vec<Vec<Elem>> = Vec::new();
            for part in parts {
                let part = part?;
                if per_step.is_empty() {
                    per_step = part;
                } else {
                    for (all, mut p) in per_step.iter_mut().zip(part) {
                        all.append(&mut p);
                    }
                }
            }
            self.precomputed
                .get_mut()
                .insert(key, per_step.into_iter().map(Some).collect());
        }
        Ok(())
    }

    /// A plain selector over every step of a range query, series by series: per step the value
    /// [`Self::vector_selector`] would give, without building a vector per step. Each series'
    /// fetched samples are freed as soon as its points are computed.
    fn selector_matrix(
        &mut self,
        vs: &VectorSelector,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<Series>, QueryError> {
        let key = vs as *const _ as usize;
        let Some(Fetched { series, .. }) = self.fetched.remove(&key) else {
            return Err(QueryError::Execution(format!(
                "selector {vs} was not fetched"
            )));
        };
        let steps = usize::try_from((end - start) / step).map_or(usize::MAX, |n| n + 1);
        let mut out = Vec::with_capacity(series.len());
        for (n, s) in series.into_iter().enumerate() {
            if n % 256 == 0 {
                self.check_deadline()?;
            }
            let mut points = Vec::new();
            // Reference times only grow with the step, so one forward cursor serves them all.
            let mut i = 0;
            let mut t = start;
            while t <= end {
                let rt = self.ref_time(&vs.at, &vs.offset, t);
                while i < s.samples.len() && s.samples[i].0 <= rt {
                    i += 1;
                }
                if i > 0 {
                    let (st, v) = s.samples[i - 1];
                    if st >= rt - self.lookback && !is_stale_nan(v) {
                        if points.is_empty() {
                            points.reserve_exact(steps.min(s.samples.len().max(1) * 4));
                        }
                        points.push((t, v));
                    }
                }
                match t.checked_add(step) {
                    Some(next) => t = next,
                    None => break,
                }
            }
            if !points.is_empty() {
                self.count_samples(points.len())?;
                out.push(Series {
                    labels: Arc::unwrap_or_clone(s.metric),
                    samples: points,
                });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// The samples of a range selector at `t`: per series those in `[ref - range, ref]`.
    pub(super) fn matrix_selector(
        &self,
        vs: &VectorSelector,
        range_ms: i64,
        t: i64,
    ) -> Result<Vec<RangeItem<'_>>, QueryError> {
        Ok(self.matrix_arg_selector(vs, range_ms, t, false)?.items)
    }

    fn matrix_arg_selector(
        &self,
        vs: &VectorSelector,
        range_ms: i64,
        t: i64,
        want_resets: bool,
    ) -> Result<RangeArg<'_>, QueryError> {
        let key = vs as *const _ as usize;
        let Some(Fetched { series, multi_name }) = self.fetched.get(&key) else {
            return Err(QueryError::Execution(format!(
                "selector {vs} was not fetched"
            )));
        };
        let end = self.ref_time(&vs.at, &vs.offset, t);
        let start = end.saturating_sub(range_ms);
        let mut items = Vec::new();
        for s in series {
            let lo = seek(&s.samples, &s.lo, start, false);
            let hi = seek(&s.samples, &s.hi, end, true);
            if lo < hi {
                items.push(RangeItem {
                    metric: std::borrow::Cow::Borrowed(&s.metric),
                    nameless: Some(&s.nameless),
                    samples: std::borrow::Cow::Borrowed(&s.samples[lo..hi]),
                    no_resets: want_resets.then(|| s.no_resets(lo, hi)),
                });
            }
        }
        Ok(RangeArg {
            items,
            range_start: start,
            range_end: end,
            range_ms,
            multi_name: Some(*multi_name),
        })
    }

    /// A range-vector argument (range selector or subquery, in parentheses or not) at `t`; with `want_resets`, selector windows say whether they hold a
    /// counter reset.
    pub(super) fn range_arg_resets(
        &self,
        e: &Expr,
        t: i64,
        want_resets: bool,
    ) -> Result<RangeArg<'_>, QueryError> {
        match unwrap_parens(e) {
            Expr::MatrixSelector(ms) => {
                self.matrix_arg_selector(&ms.vs, dur_ms(&ms.range), t, want_resets)
            }
            Expr::Subquery(sq) => {
                let end = self.ref_time(&sq.at, &sq.offset, t);
                let range_ms = dur_ms(&sq.range);
                Ok(RangeArg {
                    items: self.subquery(sq, t)?,
                    range_start: end.saturating_sub(range_ms),
                    range_end: end,
                    range_ms,
                    multi_name: None,
                })
            }
            other => Err(QueryError::Execution(format!(
                "expected range vector, got {other}"
            ))),
        }
    }

    /// A subquery's series at `t`: the inner expression evaluated at every multiple of the step
    /// within `[ref - range, ref]`.
    pub(super) fn subquery(
        &self,
        sq: &SubqueryExpr,
        t: i64,
    ) -> Result<Vec<RangeItem<'static>>, QueryError> {
        let step = sq.step.as_ref().map_or(self.sub_step, dur_ms).max(1);
        let end = self.ref_time(&sq.at, &sq.offset, t);
        let start = end.saturating_sub(dur_ms(&sq.range));
        let mut ts = step * (start / step);
        if ts < start {
            ts += step;
        }
        let key = sq as *const _ as usize;
        let mut index: HashMap<Metric, usize> = HashMap::new();
        let mut items: Vec<(Metric, Vec<(i64, f64)>)> = Vec::new();
        while ts <= end {
            self.check_deadline()?;
            let cached = self.sub_cache.borrow().get(&(key, ts)).cloned();
            let vec = match cached {
                Some(v) => v,
                None => {
                    let v = match self.eval(&sq.expr, ts)? {
                        Val::Vector(v) => v,
                        Val::Scalar(v) => vec![Elem {
                            metric: self.empty.clone(),
                            v,
                        }],
                        Val::Str(_) => {
                            return Err(QueryError::Execution(
                                "subquery over a string expression".into(),
                            ));
                        }
                    };
                    self.count_samples(v.len())?;
                    let v = Rc::new(v);
                    // Empty steps are cheap to recompute; not caching them keeps a huge,
                    // mostly empty subquery window from filling memory before its timeout.
                    if !v.is_empty() {
                        self.sub_cache.borrow_mut().insert((key, ts), v.clone());
                    }
                    v
                }
            };
            for e in vec.iter() {
                let i = *index.entry(e.metric.clone()).or_insert_with(|| {
                    items.push((e.metric.clone(), Vec::new()));
                    items.len() - 1
                });
                items[i].1.push((ts, e.v));
            }
            match ts.checked_add(step) {
                Some(n) => ts = n,
                None => break,
            }
        }
        Ok(items
            .into_iter()
            .map(|(metric, samples)| RangeItem {
                metric: std::borrow::Cow::Owned(metric),
                no_resets: None,
                nameless: None,
                samples: std::borrow::Cow::Owned(samples),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queryable::MemQueryable;

    const M: i64 = 60_000;

    fn series(pairs: &[(&str, &str)], samples: Vec<(i64, f64)>) -> Series {
        Series {
            labels: Labels::from_pairs(pairs.iter().copied()),
            samples,
        }
    }

    fn source() -> MemQueryable {
        MemQueryable::new(vec![
            series(
                &[("__name__", "c"), ("job", "a")],
                (0..=20).map(|i| (i * M, (i * 10) as f64)).collect(),
            ),
            series(
                &[("__name__", "c"), ("job", "b")],
                (0..=20).map(|i| (i * M, (i % 5) as f64)).collect(),
            ),
            series(
                &[("__name__", "g"), ("job", "a")],
                vec![
                    (0, 1.0),
                    (M, 2.0),
                    (2 * M, f64::from_bits(crate::value::STALE_NAN_BITS)),
                    (10 * M, 3.0),
                ],
            ),
        ])
    }

    fn vector(v: Value) -> Vec<(String, f64)> {
        let Value::Vector(mut s) = v else {
            panic!("not a vector: {v:?}")
        };
        s.sort_by(|a, b| a.labels.cmp(&b.labels));
        s.into_iter().map(|s| (s.labels.to_string(), s.v)).collect()
    }

    #[test]
    fn series_major_range_evaluation_equals_instant_queries_at_each_step() {
        // Enough series to be split over threads; resets, gaps, stale markers and NaN.
        let stale = f64::from_bits(crate::value::STALE_NAN_BITS);
        let data: Vec<Series> = (0..700)
            .map(|i| {
                let job = format!("j{}", i % 7);
                let inst = format!("i{i}");
                let samples = (0..120)
                    .filter(|k| (k + i) % 37 != 0)
                    .map(|k| {
                        let v = match (k * 7 + i) % 53 {
                            0 => stale,
                            1 => f64::NAN,
                            _ => ((k * (i % 5 + 1)) % 90) as f64 + (i % 3) as f64 * 0.5,
                        };
                        (k * 15_000 + (i % 4) * 1000, v)
                    })
                    .collect();
                Series {
                    labels: Labels::from_pairs([
                        ("__name__", "m"),
                        ("job", job.as_str()),
                        ("instance", inst.as_str()),
                    ]),
                    samples,
                }
            })
            .collect();
        let src = MemQueryable::new(data);
        let e = Engine::default();
        for q in [
            "m",
            "sum by (job) (rate(m[2m]))",
            "avg without (instance) (increase(m[90s] offset 1m))",
            "topk(3, avg_over_time(m[3m]))",
            "max by (job) (m) - min by (job) (deriv(m[5m]))",
            "count by (job) (changes(m[4m]) > 1)",
            "sum(stddev_over_time(m[2m] @ 600))",
        ] {
            let Value::Matrix(range) = e.range(&src, q, 300_000, 1_500_000, 60_000).unwrap() else {
                panic!("{q}: not a matrix")
            };
            let mut from_steps: Vec<(String, i64, u64)> = Vec::new();
            let mut t = 300_000;
            while t <= 1_500_000 {
                if let Value::Vector(v) = e.instant(&src, q, t).unwrap() {
                    from_steps.extend(
                        v.into_iter()
                            .map(|s| (s.labels.to_string(), t, s.v.to_bits())),
                    );
                }
                t += 60_000;
            }
            let mut from_range: Vec<(String, i64, u64)> = range
                .into_iter()
                .flat_map(|s| {
                    let l = s.labels.to_string();
                    s.samples
                        .into_iter()
                        .map(move |(t, v)| (l.clone(), t, v.to_bits()))
                })
                .collect();
            from_steps.sort();
            from_range.sort();
            assert!(!from_range.is_empty(), "{q}: empty result");
            assert_eq!(from_range, from_steps, "{q}");
        }
    }

    #[test]
    fn lookback_stops_at_stale_marker_and_after_five_minutes() {
        let q = source();
        let e = Engine::default();
        assert_eq!(vector(e.instant(&q, "g", M + 1000).unwrap()).len(), 1);
        assert!(vector(e.instant(&q, "g", 2 * M + 1000).unwrap()).is_empty());
        assert_eq!(vector(e.instant(&q, "g", 15 * M).unwrap()).len(), 1);
        assert!(vector(e.instant(&q, "g", 15 * M + 1).unwrap()).is_empty());
    }

    #[test]
    fn rate_extrapolates_and_handles_resets() {
        let q = source();
        let e = Engine::default();
        let got = vector(e.instant(&q, "rate(c[5m])", 10 * M).unwrap());
        assert_eq!(got[0].0, "{job=\"a\"}");
        assert!((got[0].1 - 10.0 / 60.0).abs() < 1e-12, "{got:?}");
        // job b: 0,1,2,3,4 then reset to 0: increase 4 + 0 over samples 5..10.
        let inc = vector(e.instant(&q, "increase(c{job=\"b\"}[5m])", 10 * M).unwrap());
        // samples at 5..10 min: 0,1,2,3,4,0 → raw increase 4, extrapolated over 5m/5m.
        assert!((inc[0].1 - 4.0).abs() < 1e-12, "{inc:?}");
    }

    #[test]
    fn range_query_produces_points_per_step_sorted() {
        let q = source();
        let e = Engine::default();
        let Value::Matrix(m) = e.range(&q, "sum by (job) (c)", 0, 4 * M, M).unwrap() else {
            panic!("not a matrix")
        };
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].labels.to_string(), "{job=\"a\"}");
        assert_eq!(
            m[0].samples,
            vec![
                (0, 0.0),
                (M, 10.0),
                (2 * M, 20.0),
                (3 * M, 30.0),
                (4 * M, 40.0)
            ]
        );
    }

    #[test]
    fn subquery_and_at_modifier_evaluate_at_fixed_times() {
        let q = source();
        let e = Engine::default();
        let got = vector(
            e.instant(&q, "max_over_time(c{job=\"a\"}[5m:1m])", 10 * M)
                .unwrap(),
        );
        assert_eq!(got[0].1, 100.0);
        let got = vector(e.instant(&q, "c{job=\"a\"} @ 120", 10 * M).unwrap());
        assert_eq!(got[0].1, 20.0);
        let got = vector(e.instant(&q, "c{job=\"a\"} offset 3m", 10 * M).unwrap());
        assert_eq!(got[0].1, 70.0);
    }

    #[test]
    fn seek_matches_partition_point_in_any_order() {
        let samples: Vec<(i64, f64)> = (0..100).map(|i| (i * 10, 0.0)).collect();
        let cursor = Cell::new(0);
        for bound in [5, 15, 15, 300, 990, 40, 2000, -5, 500, 505, 510] {
            for inclusive in [true, false] {
                let want =
                    samples.partition_point(|s| if inclusive { s.0 <= bound } else { s.0 < bound });
                assert_eq!(
                    seek(&samples, &cursor, bound, inclusive),
                    want,
                    "{bound} {inclusive}"
                );
            }
        }
    }

    #[test]
    fn extreme_offsets_and_windows_neither_panic_nor_hang() {
        let q = source();
        let mut e = Engine::default();
        e.limits.timeout = Duration::from_millis(200);
        for query in [
            "c offset 100000000y",
            "c offset -100000000y",
            "rate(c[100000000y])",
            "c @ 9000000000000000",
        ] {
            assert!(e.instant(&q, query, M).is_ok(), "{query}");
        }
        let err = e.instant(&q, "max_over_time(c[1000y:1s])", M).unwrap_err();
        assert!(matches!(err, QueryError::Timeout { .. }), "{err}");
    }

    #[test]
    fn go_style_regex_braces_match_literally() {
        let q = MemQueryable::new(vec![series(
            &[("__name__", "m"), ("x", "a{b}")],
            vec![(0, 1.0)],
        )]);
        let got = vector(Engine::default().instant(&q, "m{x=~\"a{b}\"}", 0).unwrap());
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn limits_name_themselves() {
        let q = source();
        let mut e = Engine::default();
        e.limits.max_fetched_series = 1;
        let err = e.instant(&q, "c", M).unwrap_err();
        assert!(
            err.to_string().contains("max_fetched_series_per_query"),
            "{err}"
        );
        let mut e = Engine::default();
        e.limits.max_samples = 3;
        let err = e.instant(&q, "c", M).unwrap_err();
        assert!(err.to_string().contains("max_samples"), "{err}");
    }
}
