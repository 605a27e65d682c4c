//! PromQL 2.42's functions, evaluated at one step.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use promql_parser::parser::{Call, Expr};
use regex::Regex;

use rimir_tsdb::labels::{Labels, METRIC_NAME, MatchType};

use crate::parse::selector_matchers;
use crate::queryable::QueryError;
use crate::value::{Elem, Eval, Metric, RangeArg, Val, drop_name};

/// Evaluates the function call `c` at time `t`.
pub(super) fn call(ev: &impl Eval, c: &Call, t: i64) -> Result<Val, QueryError> {
    if let Some(v) = ev.take_precomputed(c as *const Call as usize, t) {
        return Ok(Val::Vector(v));
    }
    let args = &c.args.args;
    let name = c.func.name;
    let arg = |i: usize| -> Result<&Expr, QueryError> {
        args.get(i)
            .map(|b| b.as_ref())
            .ok_or_else(|| QueryError::BadData(format!("missing argument {i} of {name}()")))
    };
    let scalar_arg = |i: usize| -> Result<f64, QueryError> { ev.eval_scalar(arg(i)?, t) };
    // Set by the arms whose input holds several metric names (see `has_multiple_names`).
    let mut multi_name = true;
    let out = match name {
        "time" => return Ok(Val::Scalar(t as f64 / 1000.0)),
        "pi" => return Ok(Val::Scalar(std::f64::consts::PI)),
        "scalar" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            return Ok(Val::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }));
        }
        "vector" => {
            return Ok(Val::Vector(vec![Elem {
                metric: ev.empty().clone(),
                v: scalar_arg(0)?,
            }]));
        }
        "timestamp" => timestamp(ev, arg(0)?, t)?,
        "absent" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            if !v.is_empty() {
                return Ok(Val::Vector(Vec::new()));
            }
            return Ok(Val::Vector(vec![Elem {
                metric: Arc::new(absent_labels(arg(0)?)),
                v: 1.0,
            }]));
        }
        "absent_over_time" => {
            let r = ev.range_arg(arg(0)?, t)?;
            if !r.items.is_empty() {
                return Ok(Val::Vector(Vec::new()));
            }
            return Ok(Val::Vector(vec![Elem {
                metric: Arc::new(absent_labels(arg(0)?)),
                v: 1.0,
            }]));
        }
        "sort" | "sort_desc" => {
            let mut v = ev.eval_vector(arg(0)?, t)?;
            let desc = name == "sort_desc";
            v.sort_by(|a, b| {
                use std::cmp::Ordering;
                match (a.v.is_nan(), b.v.is_nan()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    _ if desc => b.v.partial_cmp(&a.v).unwrap_or(Ordering::Equal),
                    _ => a.v.partial_cmp(&b.v).unwrap_or(Ordering::Equal),
                }
            });
            return Ok(Val::Vector(v));
        }
        "label_replace" => return label_replace(ev, c, t),
        "label_join" => return label_join(ev, c, t),
        "histogram_quantile" => {
            let q = scalar_arg(0)?;
            let v = ev.eval_vector(arg(1)?, t)?;
            histogram_quantile(q, v)
        }
        // Native-histogram functions: float series carry no histograms, so nothing comes out.
        "histogram_count" | "histogram_sum" | "histogram_fraction" => {
            return Ok(Val::Vector(Vec::new()));
        }
        "rate" | "increase" | "delta" | "irate" | "idelta" | "deriv" | "changes" | "resets"
        | "avg_over_time" | "count_over_time" | "sum_over_time" | "min_over_time"
        | "max_over_time" | "stddev_over_time" | "stdvar_over_time" | "present_over_time" => {
            let r = ev.range_arg_resets(arg(0)?, t, matches!(name, "rate" | "increase"))?;
            let w = Window::of(&r);
            over_range(&r, &mut multi_name, |s, no_resets| {
                window_value(name, &w, s, no_resets)
            })
        }
        "predict_linear" => {
            let r = ev.range_arg(arg(0)?, t)?;
            let d = scalar_arg(1)?;
            over_range(&r, &mut multi_name, |s, _| {
                (s.len() >= 2).then(|| {
                    let (slope, icept) = linear_regression(s, t);
                    slope * d + icept
                })
            })
        }
        "holt_winters" => {
            let r = ev.range_arg(arg(0)?, t)?;
            let sf = scalar_arg(1)?;
            let tf = scalar_arg(2)?;
            if sf <= 0.0 || sf >= 1.0 {
                return Err(QueryError::Execution(format!(
                    "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
                )));
            }
            if tf <= 0.0 || tf >= 1.0 {
                return Err(QueryError::Execution(format!(
                    "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
                )));
            }
            over_range(&r, &mut multi_name, |s, _| holt_winters(s, sf, tf))
        }
        "quantile_over_time" => {
            let q = scalar_arg(0)?;
            over_time(ev, arg(1)?, t, &mut multi_name, |s| {
                let mut v: Vec<f64> = s.iter().map(|p| p.1).collect();
                quantile(q, &mut v)
            })?
        }
        "last_over_time" => {
            let r = ev.range_arg(arg(0)?, t)?;
            r.items
                .iter()
                .map(|it| Elem {
                    metric: (*it.metric).clone(),
                    v: it.samples[it.samples.len() - 1].1,
                })
                .collect()
        }
        "clamp" => {
            let (lo, hi) = (scalar_arg(1)?, scalar_arg(2)?);
            if hi < lo {
                return Ok(Val::Vector(Vec::new()));
            }
            simple(ev.eval_vector(arg(0)?, t)?, &mut multi_name, |v| {
                go_max(lo, go_min(hi, v))
            })
        }
        "clamp_min" => {
            let lo = scalar_arg(1)?;
            simple(ev.eval_vector(arg(0)?, t)?, &mut multi_name, |v| {
                go_max(lo, v)
            })
        }
        "clamp_max" => {
            let hi = scalar_arg(1)?;
            simple(ev.eval_vector(arg(0)?, t)?, &mut multi_name, |v| {
                go_min(hi, v)
            })
        }
        "round" => {
            let to = if args.len() > 1 { scalar_arg(1)? } else { 1.0 };
            let inv = 1.0 / to;
            simple(ev.eval_vector(arg(0)?, t)?, &mut multi_name, |v| {
                (v * inv + 0.5).floor() / inv
            })
        }
        "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute"
        | "month" | "year" => {
            let f = date_fn(name);
            if args.is_empty() {
                return Ok(Val::Vector(vec![Elem {
                    metric: ev.empty().clone(),
                    v: f(t.div_euclid(1000)),
                }]));
            }
            simple(
                ev.eval_vector(arg(0)?, t)?,
                &mut multi_name,
                |v| f(v as i64),
            )
        }
        _ => {
            let Some(f) = math_fn(name) else {
                return Err(QueryError::BadData(format!(
                    "unknown function with name \"{name}\""
                )));
            };
            simple(ev.eval_vector(arg(0)?, t)?, &mut multi_name, f)
        }
    };
    if multi_name {
        check_unique(&out)?;
    }
    Ok(Val::Vector(out))
}

/// Whether the label sets carry more than one metric name: only then can dropping the names
/// make two of them equal (inputs are distinct).
fn has_multiple_names<'a>(mut it: impl Iterator<Item = &'a Metric>) -> bool {
    let Some(first) = it.next() else {
        return false;
    };
    let name = first.get(METRIC_NAME);
    it.any(|m| m.get(METRIC_NAME) != name)
}

/// Errors when dropping `__name__` left two elements with the same labels.
fn check_unique(v: &[Elem]) -> Result<(), QueryError> {
    if v.len() < 2 {
        return Ok(());
    }
    let mut seen: HashSet<&Labels> = HashSet::with_capacity(v.len());
    for e in v {
        if !seen.insert(&e.metric) {
            return Err(QueryError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(())
}

/// Caches label sets with `__name__` removed, per input label set, within one step.
fn nameless(cache: &mut HashMap<*const Labels, Metric>, m: &Metric) -> Metric {
    if m.get(METRIC_NAME).is_none() {
        return m.clone();
    }
    cache
        .entry(Arc::as_ptr(m))
        .or_insert_with(|| Arc::new(drop_name(m)))
        .clone()
}

/// Applies `f` to each value, dropping `__name__`.
fn simple(v: Vec<Elem>, multi: &mut bool, f: impl Fn(f64) -> f64) -> Vec<Elem> {
    *multi = has_multiple_names(v.iter().map(|e| &e.metric));
    let mut cache = HashMap::new();
    v.into_iter()
        .map(|e| Elem {
            metric: nameless(&mut cache, &e.metric),
            v: f(e.v),
        })
        .collect()
}

/// The bounds of a range-vector window.
pub(super) struct Window {
    /// Start (ms, inclusive).
    pub start: i64,
    /// End (ms, inclusive).
    pub end: i64,
    /// Length (ms).
    pub range_ms: i64,
}

impl Window {
    fn of(r: &RangeArg<'_>) -> Self {
        Self {
            start: r.range_start,
            end: r.range_end,
            range_ms: r.range_ms,
        }
    }
}

/// The range functions of one range-vector argument and nothing else, whose value for a series
/// depends only on that series' samples in the window: [`window_value`] computes them.
pub(super) fn is_window_function(name: &str) -> bool {
    matches!(
        name,
        "rate"
            | "increase"
            | "delta"
            | "irate"
            | "idelta"
            | "deriv"
            | "changes"
            | "resets"
            | "avg_over_time"
            | "count_over_time"
            | "sum_over_time"
            | "min_over_time"
            | "max_over_time"
            | "stddev_over_time"
            | "stdvar_over_time"
            | "present_over_time"
    )
}

/// The value of window function `name` (see [`is_window_function`]) over one series' samples
/// `s` in window `w` (never empty); `None` when the series gives no output. `no_resets` is
/// `Some(true)` when the window is known to hold no counter reset.
pub(super) fn window_value(
    name: &str,
    w: &Window,
    s: &[(i64, f64)],
    no_resets: Option<bool>,
) -> Option<f64> {
    match name {
        "rate" | "increase" | "delta" => {
            extrapolated_rate(w, s, no_resets, name != "delta", name == "rate")
        }
        "irate" | "idelta" => instant_value(s, name == "irate"),
        "deriv" => (s.len() >= 2).then(|| linear_regression(s, s[0].0).0),
        "changes" => Some(
            s.windows(2)
                .filter(|w| w[0].1 != w[1].1 && !(w[0].1.is_nan() && w[1].1.is_nan()))
                .count() as f64,
        ),
        "resets" => Some(s.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
        "avg_over_time" => Some(avg_over_time(s)),
        "count_over_time" => Some(s.len() as f64),
        "sum_over_time" => Some(kahan_sum(s.iter().map(|p| p.1))),
        "min_over_time" => Some(
            s.iter()
                .skip(1)
                .fold(s[0].1, |m, p| if p.1 < m || m.is_nan() { p.1 } else { m }),
        ),
        "max_over_time" => Some(
            s.iter()
                .skip(1)
                .fold(s[0].1, |m, p| if p.1 > m || m.is_nan() { p.1 } else { m }),
        ),
        "stddev_over_time" => Some(stdvar_over_time(s).sqrt()),
        "stdvar_over_time" => Some(stdvar_over_time(s)),
        "present_over_time" => Some(1.0),
        _ => None,
    }
}

/// Applies `f` to each series' samples in the window (never empty), dropping `__name__`; `None`
/// drops the series.
fn over_range(
    r: &RangeArg<'_>,
    multi: &mut bool,
    f: impl Fn(&[(i64, f64)], Option<bool>) -> Option<f64>,
) -> Vec<Elem> {
    *multi = r
        .multi_name
        .unwrap_or_else(|| has_multiple_names(r.items.iter().map(|it| &*it.metric)));
    let mut out = Vec::with_capacity(r.items.len());
    for it in &r.items {
        if let Some(v) = f(&it.samples, it.no_resets) {
            let metric = match it.nameless {
                Some(n) => n.clone(),
                None => Arc::new(drop_name(&it.metric)),
            };
            out.push(Elem { metric, v });
        }
    }
    out
}

fn over_time(
    ev: &impl Eval,
    e: &Expr,
    t: i64,
    multi: &mut bool,
    f: impl Fn(&[(i64, f64)]) -> f64,
) -> Result<Vec<Elem>, QueryError> {
    let r = ev.range_arg(e, t)?;
    Ok(over_range(&r, multi, |s, _| Some(f(s))))
}

fn timestamp(ev: &impl Eval, e: &Expr, t: i64) -> Result<Vec<Elem>, QueryError> {
    let mut inner = e;
    while let Expr::Paren(p) = inner {
        inner = &p.expr;
    }
    if let Expr::VectorSelector(vs) = inner {
        return Ok(ev
            .sample_times(vs, t)?
            .into_iter()
            .map(|(metric, st)| Elem {
                metric,
                v: st as f64 / 1000.0,
            })
            .collect());
    }
    Ok(simple(ev.eval_vector(e, t)?, &mut true, |_| {
        t as f64 / 1000.0
    }))
}

/// The labels `absent()` reports: the selector's equality matchers, except names matched twice
/// or by other matcher types.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::default(),
    };
    let Ok(matchers) = selector_matchers(vs) else {
        return Labels::default();
    };
    let mut set: Vec<(String, String)> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    for m in &matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if m.kind == MatchType::Equal && !set.iter().any(|(n, _)| *n == m.name) {
            set.push((m.name.clone(), m.value.clone()));
        } else {
            removed.push(m.name.clone());
        }
    }
    set.retain(|(n, _)| !removed.contains(n));
    Labels::from_pairs(set)
}

fn string_arg(e: &Expr) -> Result<String, QueryError> {
    match e {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        Expr::Paren(p) => string_arg(&p.expr),
        other => Err(QueryError::BadData(format!(
            "expected string literal, got {other}"
        ))),
    }
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn with_label(l: &Labels, name: &str, value: &str) -> Labels {
    Labels::from_pairs(
        l.iter()
            .filter(|x| x.name != name)
            .map(|x| (x.name.clone(), x.value.clone()))
            .chain(std::iter::once((name.to_string(), value.to_string()))),
    )
}

fn label_replace(ev: &impl Eval, c: &Call, t: i64) -> Result<Val, QueryError> {
    let a = &c.args.args;
    if a.len() != 5 {
        return Err(QueryError::BadData(
            "label_replace() takes 5 arguments".into(),
        ));
    }
    let dst = string_arg(&a[1])?;
    let repl = string_arg(&a[2])?;
    let src = string_arg(&a[3])?;
    let re_str = string_arg(&a[4])?;
    let re = Regex::new(&format!("^(?:{re_str})$")).map_err(|_| {
        QueryError::Execution(format!(
            "invalid regular expression in label_replace(): {re_str}"
        ))
    })?;
    if !valid_label_name(&dst) {
        return Err(QueryError::Execution(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let v = ev.eval_vector(&a[0], t)?;
    let mut out = Vec::with_capacity(v.len());
    let mut seen: HashSet<Metric> = HashSet::new();
    for e in v {
        let src_val = e.metric.get(&src).unwrap_or("");
        let metric = match re.captures(src_val) {
            None => e.metric.clone(),
            Some(caps) => {
                let mut res = String::new();
                caps.expand(&repl, &mut res);
                Arc::new(with_label(&e.metric, &dst, &res))
            }
        };
        if !seen.insert(metric.clone()) {
            return Err(QueryError::Execution(format!(
                "duplicated label set in output of label_replace(): {}",
                e.metric
            )));
        }
        out.push(Elem { metric, v: e.v });
    }
    Ok(Val::Vector(out))
}

fn label_join(ev: &impl Eval, c: &Call, t: i64) -> Result<Val, QueryError> {
    let a = &c.args.args;
    if a.len() < 3 {
        return Err(QueryError::BadData(
            "label_join() takes at least 3 arguments".into(),
        ));
    }
    let dst = string_arg(&a[1])?;
    let sep = string_arg(&a[2])?;
    let srcs = a[3..]
        .iter()
        .map(|e| string_arg(e))
        .collect::<Result<Vec<_>, _>>()?;
    for s in &srcs {
        if !valid_label_name(s) {
            return Err(QueryError::Execution(format!(
                "invalid source label name in label_join(): {s}"
            )));
        }
    }
    if !valid_label_name(&dst) {
        return Err(QueryError::Execution(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    let v = ev.eval_vector(&a[0], t)?;
    let mut out = Vec::with_capacity(v.len());
    let mut seen: HashSet<Metric> = HashSet::new();
    for e in v {
        let joined = srcs
            .iter()
            .map(|s| e.metric.get(s).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(&sep);
        let metric = Arc::new(with_label(&e.metric, &dst, &joined));
        if !seen.insert(metric.clone()) {
            return Err(QueryError::Execution(format!(
                "duplicated label set in output of label_join(): {}",
                e.metric
            )));
        }
        out.push(Elem { metric, v: e.v });
    }
    Ok(Val::Vector(out))
}

/// Prometheus' rate/increase/delta: the change over the window, extrapolated towards the window's
/// edges when the first and last samples lie near them.
fn extrapolated_rate(
    r: &Window,
    s: &[(i64, f64)],
    no_resets: Option<bool>,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let (first, last) = (s[0], s[s.len() - 1]);
    let mut result = last.1 - first.1;
    // Without a reset in the window the correction loop adds nothing (a first sample below 0
    // adds the initial 0).
    if is_counter && no_resets != Some(true) {
        let mut prev = 0.0;
        for &(_, v) in s {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first.0 - r.start) as f64 / 1000.0;
    let to_end = (r.end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let avg_step = sampled / (s.len() - 1) as f64;
    if is_counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_step * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_step / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_step / 2.0
    };
    let mut factor = interval / sampled;
    if is_rate {
        factor /= r.range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// irate/idelta: from the last two samples.
fn instant_value(s: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let (prev, last) = (s[s.len() - 2], s[s.len() - 1]);
    let mut v = if is_rate && last.1 < prev.1 {
        last.1
    } else {
        last.1 - prev.1
    };
    let dt = last.0 - prev.0;
    if dt == 0 {
        return None;
    }
    if is_rate {
        v /= dt as f64 / 1000.0;
    }
    Some(v)
}

fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

fn kahan_sum(vals: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for v in vals {
        (sum, c) = kahan_inc(v, sum, c);
    }
    if sum.is_infinite() { sum } else { sum + c }
}

/// Least-squares fit of the samples, time relative to `intercept_time`: (slope, intercept).
fn linear_regression(s: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = s[0].1;
    let mut const_y = true;
    for (i, &(st, v)) in s.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (st - intercept_time) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn holt_winters(s: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, s[0].1);
    let mut b = s[1].1 - s[0].1;
    for (i, &(_, v)) in s.iter().enumerate().skip(1) {
        let x = sf * v;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

fn avg_over_time(s: &[(i64, f64)]) -> f64 {
    let (mut mean, mut c, mut count) = (0.0f64, 0.0, 0.0);
    for &(_, v) in s {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() { mean } else { mean + c }
}

fn stdvar_over_time(s: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut cmean, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in s {
        count += 1.0;
        let delta = v - (mean + cmean);
        (mean, cmean) = kahan_inc(delta / count, mean, cmean);
        (aux, caux) = kahan_inc(delta * (v - (mean + cmean)), aux, caux);
    }
    (aux + caux) / count
}

/// The φ-quantile of `v` by linear interpolation between closest ranks; sorts `v`.
pub(super) fn quantile(q: f64, v: &mut [f64]) -> f64 {
    if v.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    v.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = v.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let w = rank - rank.floor();
    v[lower as usize] * (1.0 - w) + v[upper as usize] * w
}

/// Go's `math.Max`: NaN wins.
pub(super) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { b } else { a }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Go's `math.Min`: NaN wins.
pub(super) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { a } else { b }
    } else if a < b {
        a
    } else {
        b
    }
}

fn math_fn(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "deg" => |v| v * 180.0 / std::f64::consts::PI,
        "rad" => |v| v * std::f64::consts::PI / 180.0,
        "sgn" => |v| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        },
        _ => return None,
    })
}

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A date function of UTC seconds since the epoch.
fn date_fn(name: &str) -> fn(i64) -> f64 {
    match name {
        "days_in_month" => |s| {
            let (y, m, _) = civil_from_days(s.div_euclid(86_400));
            days_in_month(y, m) as f64
        },
        "day_of_month" => |s| civil_from_days(s.div_euclid(86_400)).2 as f64,
        "day_of_week" => |s| (s.div_euclid(86_400) + 4).rem_euclid(7) as f64,
        "day_of_year" => |s| {
            let (y, m, d) = civil_from_days(s.div_euclid(86_400));
            ((1..m).map(|mm| days_in_month(y, mm)).sum::<i64>() + d) as f64
        },
        "hour" => |s| s.rem_euclid(86_400).div_euclid(3600) as f64,
        "minute" => |s| s.rem_euclid(3600).div_euclid(60) as f64,
        "month" => |s| civil_from_days(s.div_euclid(86_400)).1 as f64,
        _ => |s| civil_from_days(s.div_euclid(86_400)).0 as f64,
    }
}

/// histogram_quantile over classic `le` buckets, grouped by all other labels.
fn histogram_quantile(q: f64, v: Vec<Elem>) -> Vec<Elem> {
    let mut groups: Vec<(Metric, Vec<(f64, f64)>)> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for e in v {
        let Some(le) = e.metric.get("le") else {
            continue;
        };
        let Some(upper) = parse_go_float(le) else {
            continue;
        };
        let key = Labels::from_sorted(
            e.metric
                .iter()
                .filter(|l| l.name != "le")
                .cloned()
                .collect(),
        );
        let i = match index.get(&key) {
            Some(&i) => i,
            None => {
                let metric = Arc::new(drop_name(&key));
                index.insert(key, groups.len());
                groups.push((metric, Vec::new()));
                groups.len() - 1
            }
        };
        groups[i].1.push((upper, e.v));
    }
    groups
        .into_iter()
        .filter(|(_, b)| !b.is_empty())
        .map(|(metric, mut b)| Elem {
            metric,
            v: bucket_quantile(q, &mut b),
        })
        .collect()
}

/// Parses a float as Go's `strconv.ParseFloat` accepts it (incl. `+Inf`, `Inf`, `NaN`).
pub(super) fn parse_go_float(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => s.parse::<f64>().ok(),
    }
}

fn bucket_quantile(q: f64, b: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.last().is_none_or(|l| l.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Coalesce equal bounds.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for &(u, c) in b.iter() {
        match merged.last_mut() {
            Some(l) if l.0 == u => l.1 += c,
            _ => merged.push((u, c)),
        }
    }
    // Ensure monotonic counts.
    let mut max = f64::NEG_INFINITY;
    for x in merged.iter_mut() {
        if x.1 > max {
            max = x.1;
        } else if x.1 < max {
            x.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let obs = merged[merged.len() - 1].1;
    if obs == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * obs;
    let n = merged.len() - 1;
    let idx = merged[..n].partition_point(|x| x.1 < rank);
    if idx == n {
        return merged[n - 1].0;
    }
    if idx == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let mut start = 0.0;
    let end = merged[idx].0;
    let mut count = merged[idx].1;
    if idx > 0 {
        start = merged[idx - 1].0;
        count -= merged[idx - 1].1;
        rank -= merged[idx - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_quantile_interpolates_within_bucket() {
        let mut b = vec![(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)];
        assert!((bucket_quantile(0.75, &mut b) - 1.5).abs() < 1e-12);
        let mut b = vec![(1.0, 10.0), (2.0, 20.0)];
        assert!(bucket_quantile(0.5, &mut b).is_nan());
        let mut b = vec![(1.0, 10.0), (f64::INFINITY, 20.0)];
        assert_eq!(bucket_quantile(0.99, &mut b), 1.0);
    }

    #[test]
    fn date_functions_use_utc_civil_dates() {
        // 2024-02-29T13:45:00Z
        let s = 1_709_214_300;
        assert_eq!(date_fn("year")(s), 2024.0);
        assert_eq!(date_fn("month")(s), 2.0);
        assert_eq!(date_fn("day_of_month")(s), 29.0);
        assert_eq!(date_fn("days_in_month")(s), 29.0);
        assert_eq!(date_fn("day_of_year")(s), 60.0);
        assert_eq!(date_fn("day_of_week")(s), 4.0);
        assert_eq!(date_fn("hour")(s), 13.0);
        assert_eq!(date_fn("minute")(s), 45.0);
    }

    #[test]
    fn quantile_interpolates_and_clamps() {
        assert_eq!(quantile(0.5, &mut [3.0, 1.0, 2.0, 4.0]), 2.5);
        assert_eq!(quantile(-1.0, &mut [1.0]), f64::NEG_INFINITY);
        assert!(quantile(0.5, &mut []).is_nan());
    }

    #[test]
    fn go_min_max_propagate_nan() {
        assert!(go_max(1.0, f64::NAN).is_nan());
        assert!(go_min(f64::NAN, 1.0).is_nan());
        assert_eq!(go_max(1.0, 2.0), 2.0);
    }
}
