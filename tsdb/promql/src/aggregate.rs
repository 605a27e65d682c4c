//! Aggregation operators (`sum`, `topk`, `count_values`, …) with `by`/`without`.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use promql_parser::parser::{AggregateExpr, Expr, LabelModifier, token};

use rimir_tsdb::labels::{Labels, METRIC_NAME};

use crate::format::format_float_plain;
use crate::functions::quantile;
use crate::queryable::QueryError;
use crate::value::{Elem, Eval, Metric, PtrHasher, Val};

/// Per-group accumulator.
struct Group {
    metric: Metric,
    value: f64,
    mean: f64,
    count: f64,
    /// Values (quantile) or elements (topk/bottomk).
    values: Vec<f64>,
    heap: Vec<Elem>,
}

/// FNV-1a over the grouping labels of `m`: the group key, as Prometheus hashes label subsets.
fn group_hash(m: &Labels, names: &[String], include: bool) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for l in m.iter() {
        let listed = names.contains(&l.name);
        let keep = if include {
            listed
        } else {
            !listed && l.name != METRIC_NAME
        };
        if keep {
            for b in l
                .name
                .bytes()
                .chain([0xff])
                .chain(l.value.bytes())
                .chain([0xff])
            {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    h
}

fn group_labels(m: &Labels, names: &[String], include: bool) -> Labels {
    Labels::from_sorted(
        m.iter()
            .filter(|l| {
                let listed = names.contains(&l.name);
                if include {
                    listed
                } else {
                    !listed && l.name != METRIC_NAME
                }
            })
            .cloned()
            .collect(),
    )
}

/// Evaluates aggregation `a` at time `t`.
pub(super) fn eval<E: Eval>(ev: &E, a: &AggregateExpr, t: i64) -> Result<Val, QueryError> {
    let op = a.op.id();
    let mut input = ev.eval_vector(&a.expr, t)?;
    let (mut names, mut include): (Vec<String>, bool) = match &a.modifier {
        None => (Vec::new(), true),
        Some(LabelModifier::Include(l)) => (l.labels.clone(), true),
        Some(LabelModifier::Exclude(l)) => (l.labels.clone(), false),
    };
    let param = |ev: &E| -> Result<f64, QueryError> {
        match &a.param {
            Some(p) => ev.eval_scalar(p, t),
            None => Err(QueryError::BadData(format!(
                "aggregation {} needs a parameter",
                a.op
            ))),
        }
    };
    let mut k = 0usize;
    let mut q = 0.0;
    match op {
        token::T_TOPK | token::T_BOTTOMK => {
            let p = param(ev)?;
            if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&p) {
                return Err(QueryError::Execution(format!(
                    "Scalar value {} overflows int64",
                    format_float_plain(p)
                )));
            }
            if p < 1.0 {
                return Ok(Val::Vector(Vec::new()));
            }
            k = if p >= input.len() as f64 {
                input.len()
            } else {
                p as usize
            };
            if k == 0 {
                return Ok(Val::Vector(Vec::new()));
            }
        }
        token::T_QUANTILE => q = param(ev)?,
        token::T_COUNT_VALUES => {
            let label = match a.param.as_deref() {
                Some(Expr::StringLiteral(s)) => s.val.clone(),
                Some(Expr::Paren(p)) => match p.expr.as_ref() {
                    Expr::StringLiteral(s) => s.val.clone(),
                    _ => return Err(QueryError::BadData("count_values needs a string".into())),
                },
                _ => return Err(QueryError::BadData("count_values needs a string".into())),
            };
            let valid = label
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(QueryError::Execution(format!(
                    "invalid label name {label:?}"
                )));
            }
            for e in input.iter_mut() {
                let pairs = e
                    .metric
                    .iter()
                    .filter(|l| l.name != label)
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .chain(std::iter::once((label.clone(), format_float_plain(e.v))));
                e.metric = Arc::new(Labels::from_pairs(pairs));
            }
            if include {
                names.push(label);
            } else {
                names.retain(|n| *n != label);
            }
        }
        _ => {}
    }
    if a.modifier.is_none() && op != token::T_COUNT_VALUES {
        include = true;
    }

    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<u64, usize, BuildHasherDefault<PtrHasher>> = HashMap::default();
    let node = a as *const AggregateExpr as usize;
    let mut cache = ev.group_cache().borrow_mut();
    // Inputs built anew at every step (e.g. by count_values) would only grow the cache.
    if cache.len() > 4 * input.len() + 4096 {
        cache.clear();
    }
    for e in input {
        let key = (node, Arc::as_ptr(&e.metric));
        let entry = cache.entry(key).or_insert_with(|| {
            let h = group_hash(&e.metric, &names, include);
            (e.metric.clone(), h, None)
        });
        let h = entry.1;
        let gi = match index.get(&h) {
            Some(&gi) => gi,
            None => {
                // The group's label set, built once per input series and reused at later steps.
                let metric = entry
                    .2
                    .get_or_insert_with(|| Arc::new(group_labels(&e.metric, &names, include)))
                    .clone();
                groups.push(Group {
                    metric,
                    value: e.v,
                    mean: e.v,
                    count: 1.0,
                    values: Vec::new(),
                    heap: Vec::new(),
                });
                index.insert(h, groups.len() - 1);
                let g = groups.last_mut().expect("just pushed");
                match op {
                    token::T_STDDEV | token::T_STDVAR => g.value = 0.0,
                    token::T_COUNT | token::T_GROUP | token::T_COUNT_VALUES => g.value = 1.0,
                    token::T_QUANTILE => g.values.push(e.v),
                    token::T_TOPK | token::T_BOTTOMK => g.heap.push(e),
                    _ => {}
                }
                continue;
            }
        };
        let g = &mut groups[gi];
        match op {
            token::T_SUM => g.value += e.v,
            token::T_AVG => {
                g.count += 1.0;
                if g.mean.is_infinite() {
                    if e.v.is_infinite() && (g.mean > 0.0) == (e.v > 0.0) {
                        continue;
                    }
                    if !e.v.is_infinite() && !e.v.is_nan() {
                        continue;
                    }
                }
                g.mean += e.v / g.count - g.mean / g.count;
            }
            token::T_GROUP => {}
            token::T_COUNT | token::T_COUNT_VALUES => g.value += 1.0,
            token::T_MAX => {
                if g.value < e.v || g.value.is_nan() {
                    g.value = e.v;
                }
            }
            token::T_MIN => {
                if g.value > e.v || g.value.is_nan() {
                    g.value = e.v;
                }
            }
            token::T_STDDEV | token::T_STDVAR => {
                g.count += 1.0;
                let delta = e.v - g.mean;
                g.mean += delta / g.count;
                g.value += delta * (e.v - g.mean);
            }
            token::T_QUANTILE => g.values.push(e.v),
            token::T_TOPK | token::T_BOTTOMK => {
                let top = op == token::T_TOPK;
                if g.heap.len() < k {
                    g.heap.push(e);
                    continue;
                }
                // Replace the weakest kept element if the new one beats it (NaN is weakest).
                let weaker = |a: f64, b: f64| -> bool {
                    if a.is_nan() {
                        return !b.is_nan();
                    }
                    if top { a < b } else { a > b }
                };
                let mut wi = 0;
                for (i, h) in g.heap.iter().enumerate() {
                    if weaker(h.v, g.heap[wi].v) {
                        wi = i;
                    }
                }
                if weaker(g.heap[wi].v, e.v) {
                    g.heap[wi] = e;
                }
            }
            _ => {
                return Err(QueryError::BadData(format!(
                    "unsupported aggregation {}",
                    a.op
                )));
            }
        }
    }

    let mut out = Vec::with_capacity(groups.len());
    for mut g in groups {
        let v = match op {
            token::T_AVG => g.mean,
            token::T_STDDEV => (g.value / g.count).sqrt(),
            token::T_STDVAR => g.value / g.count,
            token::T_QUANTILE => quantile(q, &mut g.values),
            token::T_TOPK | token::T_BOTTOMK => {
                let top = op == token::T_TOPK;
                g.heap.sort_by(|a, b| {
                    use std::cmp::Ordering;
                    let o = match (a.v.is_nan(), b.v.is_nan()) {
                        (true, true) => Ordering::Equal,
                        (true, false) => Ordering::Greater,
                        (false, true) => Ordering::Less,
                        _ => a.v.partial_cmp(&b.v).unwrap_or(Ordering::Equal),
                    };
                    if top && !(a.v.is_nan() || b.v.is_nan()) {
                        o.reverse()
                    } else {
                        o
                    }
                });
                out.extend(g.heap);
                continue;
            }
            _ => g.value,
        };
        out.push(Elem {
            metric: g.metric,
            v,
        });
    }
    Ok(Val::Vector(out))
}
