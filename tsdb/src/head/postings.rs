//! The head's inverted index: for every label name and value, the sorted references of the
//! series carrying it, so that selection touches only matching series.

use std::collections::{BTreeMap, HashMap};

use crate::labels::{Labels, MatchType, Matcher};

/// Label name → value → series references (ascending).
#[derive(Debug, Default)]
pub(crate) struct Postings {
    by_name: BTreeMap<String, BTreeMap<String, Vec<u64>>>,
}

impl Postings {
    /// Adds a series. References are handed out in increasing order, so pushing keeps lists
    /// sorted; replay of a checkpoint followed by segments also sees them increasing, and the
    /// rare out-of-order insert falls back to a sorted insert.
    pub(crate) fn add(&mut self, r: u64, labels: &Labels) {
        for l in labels.iter() {
            let list = self
                .by_name
                .entry(l.name.clone())
                .or_default()
                .entry(l.value.clone())
                .or_default();
            match list.last() {
                Some(&last) if last >= r => {
                    if let Err(i) = list.binary_search(&r) {
                        list.insert(i, r);
                    }
                }
                _ => list.push(r),
            }
        }
    }

    /// Removes a set of series, dropping values and names left without series.
    pub(crate) fn remove(&mut self, removed: &HashMap<u64, Labels>) {
        let mut touched: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for labels in removed.values() {
            for l in labels.iter() {
                touched.entry(&l.name).or_default().push(&l.value);
            }
        }
        for (name, values) in touched {
            let Some(vals) = self.by_name.get_mut(name) else {
                continue;
            };
            for v in values {
                if let Some(list) = vals.get_mut(v) {
                    list.retain(|r| !removed.contains_key(r));
                    if list.is_empty() {
                        vals.remove(v);
                    }
                }
            }
            if vals.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    /// Label names with at least one series, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Values of `name` with at least one series, sorted.
    pub(crate) fn values(&self, name: &str) -> Vec<String> {
        self.by_name
            .get(name)
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// References of the series matching every matcher: matchers that cannot match the empty
    /// value are resolved through the postings and intersected; the others (`!=`, `!~`, `=~""`
    /// …) filter the candidates. `None` means "no restricting matcher: every series", which the
    /// caller resolves with its own series list.
    pub(crate) fn select(&self, matchers: &[Matcher]) -> Option<Vec<u64>> {
        let mut result: Option<Vec<u64>> = None;
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let lists: Vec<&Vec<u64>> = match (m.kind, self.by_name.get(&m.name)) {
                (_, None) => Vec::new(),
                (MatchType::Equal, Some(vals)) => vals.get(&m.value).into_iter().collect(),
                (_, Some(vals)) => vals
                    .iter()
                    .filter(|(v, _)| m.matches(v))
                    .map(|(_, l)| l)
                    .collect(),
            };
            let set = union(&lists);
            result = Some(match result {
                None => set,
                Some(prev) => intersect(&prev, &set),
            });
            if result.as_ref().is_some_and(|r| r.is_empty()) {
                break;
            }
        }
        result
    }
}

fn union(lists: &[&Vec<u64>]) -> Vec<u64> {
    match lists {
        [] => Vec::new(),
        [one] => (*one).clone(),
        _ => {
            let mut all: Vec<u64> = lists.iter().flat_map(|l| l.iter().copied()).collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    }
}

fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postings_intersect_and_forget_removed_series() {
        let mut p = Postings::default();
        let a = Labels::from_pairs([("__name__", "up"), ("job", "a")]);
        let b = Labels::from_pairs([("__name__", "up"), ("job", "b")]);
        let c = Labels::from_pairs([("__name__", "down"), ("job", "a")]);
        p.add(1, &a);
        p.add(2, &b);
        p.add(3, &c);
        let re = Matcher::new(MatchType::Regex, "job", "a|b").unwrap();
        assert_eq!(
            p.select(&[Matcher::equal("__name__", "up"), re]),
            Some(vec![1, 2])
        );
        assert_eq!(p.select(&[Matcher::equal("job", "a")]), Some(vec![1, 3]));
        assert_eq!(p.select(&[Matcher::equal("job", "zzz")]), Some(vec![]));
        let ne = Matcher::new(MatchType::NotEqual, "job", "a").unwrap();
        assert_eq!(p.select(&[ne]), None);
        p.remove(&HashMap::from([(3, c)]));
        assert_eq!(p.values("__name__"), vec!["up"]);
        assert_eq!(p.names(), vec!["__name__", "job"]);
    }
}
