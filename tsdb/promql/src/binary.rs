//! Binary operators: arithmetic, comparisons (with and without `bool`), set operators, and
//! vector matching with `on`/`ignoring`/`group_left`/`group_right`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality, token};

use rimir_tsdb::labels::{Labels, METRIC_NAME};

use crate::queryable::QueryError;
use crate::value::{Elem, Eval, Metric, Val, drop_name};

/// Evaluates `b` at time `t`.
pub(super) fn eval(ev: &impl Eval, b: &BinaryExpr, t: i64) -> Result<Val, QueryError> {
    let op = b.op.id();
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    let lhs = ev.eval(&b.lhs, t)?;
    let rhs = ev.eval(&b.rhs, t)?;
    match (lhs, rhs) {
        (Val::Scalar(l), Val::Scalar(r)) => {
            let (v, keep) = elem_op(op, l, r)?;
            if is_comparison(op) {
                Ok(Val::Scalar(if keep { 1.0 } else { 0.0 }))
            } else {
                Ok(Val::Scalar(v))
            }
        }
        (Val::Vector(l), Val::Scalar(r)) => vector_scalar(op, l, r, false, return_bool),
        (Val::Scalar(l), Val::Vector(r)) => vector_scalar(op, r, l, true, return_bool),
        (Val::Vector(l), Val::Vector(r)) => {
            let (on, names) = match b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
                Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
                None => (false, Vec::new()),
            };
            let card = b
                .modifier
                .as_ref()
                .map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
            match op {
                token::T_LAND => Ok(Val::Vector(and_unless(l, r, on, &names, true))),
                token::T_LUNLESS => Ok(Val::Vector(and_unless(l, r, on, &names, false))),
                token::T_LOR => Ok(Val::Vector(or(l, r, on, &names))),
                _ => vector_vector(op, l, r, on, &names, card, return_bool).map(Val::Vector),
            }
        }
        _ => Err(QueryError::Execution(format!(
            "binary operator {} is not defined on strings",
            b.op
        ))),
    }
}

fn is_comparison(op: u16) -> bool {
    matches!(
        op,
        token::T_EQLC | token::T_NEQ | token::T_GTR | token::T_LSS | token::T_GTE | token::T_LTE
    )
}

/// Arithmetic operators drop `__name__` (2.42 keeps it for `atan2`); comparisons keep it unless
/// `bool` is given.
fn drops_name(op: u16) -> bool {
    matches!(
        op,
        token::T_ADD | token::T_SUB | token::T_MUL | token::T_DIV | token::T_MOD | token::T_POW
    )
}

/// The operation on two values: the result and whether a comparison holds (always true for
/// arithmetic).
fn elem_op(op: u16, l: f64, r: f64) -> Result<(f64, bool), QueryError> {
    Ok(match op {
        token::T_ADD => (l + r, true),
        token::T_SUB => (l - r, true),
        token::T_MUL => (l * r, true),
        token::T_DIV => (l / r, true),
        token::T_POW => (l.powf(r), true),
        token::T_MOD => (l % r, true),
        token::T_ATAN2 => (l.atan2(r), true),
        token::T_EQLC => (l, l == r),
        token::T_NEQ => (l, l != r),
        token::T_GTR => (l, l > r),
        token::T_LSS => (l, l < r),
        token::T_GTE => (l, l >= r),
        token::T_LTE => (l, l <= r),
        _ => {
            return Err(QueryError::Execution(format!(
                "operator {} not allowed between these operands",
                token::TokenType::new(op)
            )));
        }
    })
}

fn vector_scalar(
    op: u16,
    v: Vec<Elem>,
    s: f64,
    swap: bool,
    return_bool: bool,
) -> Result<Val, QueryError> {
    let drop = drops_name(op) || return_bool;
    // Dropping names can only make elements collide when they carry different names.
    let may_collide = drop && {
        let first = v.first().and_then(|e| e.metric.get(METRIC_NAME));
        v.iter().any(|e| e.metric.get(METRIC_NAME) != first)
    };
    let mut cache: HashMap<*const Labels, Metric> = HashMap::new();
    let mut out = Vec::with_capacity(v.len());
    for e in v {
        let (l, r) = if swap { (s, e.v) } else { (e.v, s) };
        let (mut value, mut keep) = elem_op(op, l, r)?;
        if is_comparison(op) && swap {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if !keep {
            continue;
        }
        let metric = if drop && e.metric.get(METRIC_NAME).is_some() {
            cache
                .entry(Arc::as_ptr(&e.metric))
                .or_insert_with(|| Arc::new(drop_name(&e.metric)))
                .clone()
        } else {
            e.metric
        };
        out.push(Elem { metric, v: value });
    }
    if may_collide && out.len() > 1 {
        let mut seen = HashSet::with_capacity(out.len());
        if !out.iter().all(|e| seen.insert(e.metric.clone())) {
            return Err(QueryError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(Val::Vector(out))
}

/// Hash of the labels used for matching: the `on` labels, or all but the `ignoring` labels and
/// `__name__`.
fn signature(m: &Labels, on: bool, names: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for l in m.iter() {
        let listed = names.contains(&l.name);
        let keep = if on {
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

fn match_labels(m: &Labels, on: bool, names: &[String]) -> Labels {
    Labels::from_sorted(
        m.iter()
            .filter(|l| {
                let listed = names.contains(&l.name);
                if on {
                    listed
                } else {
                    !listed && l.name != METRIC_NAME
                }
            })
            .cloned()
            .collect(),
    )
}

fn and_unless(l: Vec<Elem>, r: Vec<Elem>, on: bool, names: &[String], and: bool) -> Vec<Elem> {
    if l.is_empty() || r.is_empty() {
        return if and { Vec::new() } else { l };
    }
    let right: HashSet<u64> = r.iter().map(|e| signature(&e.metric, on, names)).collect();
    l.into_iter()
        .filter(|e| right.contains(&signature(&e.metric, on, names)) == and)
        .collect()
}

fn or(l: Vec<Elem>, r: Vec<Elem>, on: bool, names: &[String]) -> Vec<Elem> {
    if l.is_empty() {
        return r;
    }
    if r.is_empty() {
        return l;
    }
    let left: HashSet<u64> = l.iter().map(|e| signature(&e.metric, on, names)).collect();
    let mut out = l;
    out.extend(
        r.into_iter()
            .filter(|e| !left.contains(&signature(&e.metric, on, names))),
    );
    out
}

fn vector_vector(
    op: u16,
    lhs: Vec<Elem>,
    rhs: Vec<Elem>,
    on: bool,
    names: &[String],
    card: &VectorMatchCardinality,
    return_bool: bool,
) -> Result<Vec<Elem>, QueryError> {
    let (include, one_to_many, one_to_one) = match card {
        VectorMatchCardinality::OneToOne => (Vec::new(), false, true),
        VectorMatchCardinality::ManyToOne(l) => (l.labels.clone(), false, false),
        VectorMatchCardinality::OneToMany(l) => (l.labels.clone(), true, false),
        VectorMatchCardinality::ManyToMany => {
            return Err(QueryError::Execution(
                "many-to-many matching is only allowed for set operators".into(),
            ));
        }
    };
    let (lhs, rhs) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut right: HashMap<u64, Elem> = HashMap::with_capacity(rhs.len());
    for rs in rhs {
        let sig = signature(&rs.metric, on, names);
        if let Some(dup) = right.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(QueryError::Execution(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                match_labels(&rs.metric, on, names),
                rs.metric,
                dup.metric
            )));
        }
        right.insert(sig, rs);
    }
    let mut matched: HashMap<u64, HashSet<Labels>> = HashMap::new();
    let mut cache: HashMap<(*const Labels, *const Labels), Metric> = HashMap::new();
    let mut out = Vec::with_capacity(lhs.len());
    for ls in lhs {
        let sig = signature(&ls.metric, on, names);
        let Some(rs) = right.get(&sig) else {
            continue;
        };
        let (vl, vr) = if one_to_many {
            (rs.v, ls.v)
        } else {
            (ls.v, rs.v)
        };
        let (mut value, keep) = elem_op(op, vl, vr)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let metric = cache
            .entry((Arc::as_ptr(&ls.metric), Arc::as_ptr(&rs.metric)))
            .or_insert_with(|| {
                Arc::new(result_metric(
                    &ls.metric,
                    &rs.metric,
                    op,
                    on,
                    names,
                    one_to_one,
                    &include,
                    return_bool,
                ))
            })
            .clone();
        match matched.get_mut(&sig) {
            Some(set) => {
                if one_to_one {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
                if !set.insert((*metric).clone()) {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: grouping labels must ensure unique results"
                            .into(),
                    ));
                }
            }
            None => {
                let mut set = HashSet::new();
                if !one_to_one {
                    set.insert((*metric).clone());
                }
                matched.insert(sig, set);
            }
        }
        out.push(Elem { metric, v: value });
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn result_metric(
    l: &Labels,
    r: &Labels,
    op: u16,
    on: bool,
    names: &[String],
    one_to_one: bool,
    include: &[String],
    return_bool: bool,
) -> Labels {
    let mut pairs: Vec<(String, String)> = l
        .iter()
        .filter(|x| {
            if (drops_name(op) || return_bool) && x.name == METRIC_NAME {
                return false;
            }
            if one_to_one {
                let listed = names.contains(&x.name);
                return if on { listed } else { !listed };
            }
            true
        })
        .map(|x| (x.name.clone(), x.value.clone()))
        .collect();
    for n in include {
        pairs.retain(|(k, _)| k != n);
        if let Some(v) = r.get(n) {
            pairs.push((n.clone(), v.to_string()));
        }
    }
    Labels::from_pairs(pairs)
}
