//! The head's inverted index: for every label name and value, the sorted references of the
//! series carrying it, so that selection touches only matching series.

use std::collections::{BTreeMap, HashMap};

use crate::encoding::{put_uvarint, reserve_quarter, uvarint};
use crate::labels::{Labels, MatchType, Matcher};

/// Label name → value → series references (ascending).
#[derive(Debug, Default)]
pub(crate) struct Postings {
    by_name: BTreeMap<String, BTreeMap<String, PostingList>>,
}

/// One label value's series references, ascending, as uvarint deltas. References are handed
/// out in increasing order, so adding a series appends a byte or two instead of eight: a series
/// is in one list per label, which made the lists a tenth of a head's memory.
#[derive(Debug, Default)]
struct PostingList {
    deltas: Vec<u8>,
    last: u64,
    len: u32,
}

impl PostingList {
    fn from_sorted(refs: impl IntoIterator<Item = u64>) -> Self {
        let mut l = PostingList::default();
        for r in refs {
            l.push(r);
        }
        l.deltas.shrink_to_fit();
        l
    }

    /// Appends `r`, which must be above every reference held.
    fn push(&mut self, r: u64) {
        // Room for the longest uvarint; most lists stop growing once their series exist.
        reserve_quarter(&mut self.deltas, 10, 10);
        put_uvarint(&mut self.deltas, r - self.last);
        self.last = r;
        self.len += 1;
    }

    /// Adds `r` anywhere (replay may see references out of order); a no-op when held.
    fn insert(&mut self, r: u64) {
        if self.len == 0 || r > self.last {
            self.push(r);
            return;
        }
        let mut all = self.to_vec();
        if let Err(i) = all.binary_search(&r) {
            all.insert(i, r);
            *self = PostingList::from_sorted(all);
        }
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut rest = self.deltas.as_slice();
        let mut at = 0u64;
        std::iter::from_fn(move || {
            let (d, k) = uvarint(rest)?;
            rest = &rest[k..];
            at += d;
            Some(at)
        })
    }

    fn to_vec(&self) -> Vec<u64> {
        let mut v = Vec::with_capacity(self.len as usize);
        v.extend(self.iter());
        v
    }

    /// Keeps the references `keep` accepts.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let kept: Vec<u64> = self.iter().filter(|r| keep(*r)).collect();
        if kept.len() != self.len as usize {
            *self = PostingList::from_sorted(kept);
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.deltas.capacity()
    }
}

impl Postings {
    /// Adds a series. References are handed out in increasing order, so pushing keeps lists
    /// sorted; replay of a checkpoint followed by segments also sees them increasing, and the
    /// rare out-of-order insert falls back to a sorted insert.
    pub(crate) fn add(&mut self, r: u64, labels: &Labels) {
        for l in labels.iter() {
            let vals = match self.by_name.get_mut(&l.name) {
                Some(v) => v,
                None => self.by_name.entry(l.name.clone()).or_default(),
            };
            match vals.get_mut(&l.value) {
                Some(list) => list.insert(r),
                None => {
                    let mut list = PostingList::default();
                    list.push(r);
                    vals.insert(l.value.clone(), list);
                }
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
                    list.retain(|r| !removed.contains_key(&r));
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

    /// Approximate bytes held: lists, key strings and map entries.
    pub(crate) fn memory_bytes(&self) -> usize {
        // A B-tree entry costs about its key and value plus a third for node slack.
        let entry =
            |k: &String, v: usize| (std::mem::size_of::<String>() + k.capacity() + v) * 4 / 3;
        self.by_name
            .iter()
            .map(|(n, vals)| {
                entry(n, std::mem::size_of::<BTreeMap<String, PostingList>>())
                    + vals
                        .iter()
                        .map(|(v, l)| entry(v, l.memory_bytes()))
                        .sum::<usize>()
            })
            .sum()
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
            let lists: Vec<&PostingList> = match (m.kind, self.by_name.get(&m.name)) {
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

fn union(lists: &[&PostingList]) -> Vec<u64> {
    match lists {
        [] => Vec::new(),
        [one] => one.to_vec(),
        _ => {
            let mut all: Vec<u64> = lists.iter().flat_map(|l| l.iter()).collect();
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
        p.remove(&HashMap::from([(3, c.clone())]));
        // Out-of-order adds (replay) and re-adds keep lists sorted and unique.
        p.add(300, &a);
        p.add(3, &c);
        p.add(3, &c);
        p.add(200, &c);
        assert_eq!(
            p.select(&[Matcher::equal("job", "a")]),
            Some(vec![1, 3, 200, 300])
        );
        p.remove(&HashMap::from([(3, c.clone()), (200, c)]));
        assert_eq!(p.values("__name__"), vec!["up"]);
        assert_eq!(p.names(), vec!["__name__", "job"]);
    }

    #[test]
    fn posting_lists_hold_deltas_of_a_byte_or_two() {
        let mut l = PostingList::default();
        let refs: Vec<u64> = (1..=10_000u64).map(|i| i * 3 + (i % 7) * 1000).collect();
        let mut sorted = refs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        for &r in &sorted {
            l.push(r);
        }
        assert_eq!(l.to_vec(), sorted);
        assert!(l.memory_bytes() < sorted.len() * 3, "{}", l.memory_bytes());
        l.retain(|r| r % 2 == 0);
        assert_eq!(
            l.to_vec(),
            sorted
                .iter()
                .copied()
                .filter(|r| r % 2 == 0)
                .collect::<Vec<_>>()
        );
        // References far apart still round-trip.
        let wide = PostingList::from_sorted([1, 1 << 40, u64::MAX - 1]);
        assert_eq!(wide.to_vec(), vec![1, 1 << 40, u64::MAX - 1]);
    }
}
