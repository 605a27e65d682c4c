//! A series with its samples: what every read path (block, head, ingester, querier) returns.

use crate::labels::Labels;

/// One float sample: timestamp in milliseconds since the Unix epoch, and value.
pub type Sample = (i64, f64);

/// A series and its samples in a queried time range, samples sorted by timestamp, no duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: Labels,
    /// Samples sorted by timestamp.
    pub samples: Vec<Sample>,
}

/// Merges sample lists sorted by time into one, keeping the first of samples with equal
/// timestamps (replicas' copies of the same sample are identical).
pub fn merge_samples(lists: &[&[Sample]]) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::with_capacity(lists.iter().map(|l| l.len()).sum());
    let mut idx = vec![0usize; lists.len()];
    loop {
        let mut best: Option<(usize, i64)> = None;
        for (i, l) in lists.iter().enumerate() {
            if let Some(&(t, _)) = l.get(idx[i])
                && best.is_none_or(|(_, bt)| t < bt)
            {
                best = Some((i, t));
            }
        }
        let Some((i, t)) = best else { break };
        out.push(lists[i][idx[i]]);
        for (j, l) in lists.iter().enumerate() {
            while l.get(idx[j]).is_some_and(|&(tj, _)| tj == t) {
                idx[j] += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_deduplicates_equal_timestamps_and_keeps_order() {
        let a = [(1, 1.0), (3, 3.0), (5, 5.0)];
        let b = [(1, 1.0), (2, 2.0), (5, 5.0), (6, 6.0)];
        let m = merge_samples(&[&a, &b]);
        assert_eq!(m, vec![(1, 1.0), (2, 2.0), (3, 3.0), (5, 5.0), (6, 6.0)]);
        assert!(merge_samples(&[]).is_empty());
    }
}
