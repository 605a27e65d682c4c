//! Set operations over sorted lists of series references.

use std::cmp::Ordering;

/// Elements present in both sorted lists.
pub(crate) fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Elements of sorted `a` not in sorted `b`.
pub(crate) fn without(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j < b.len() && b[j] == x {
            continue;
        }
        out.push(x);
    }
    out
}

/// The sorted, deduplicated union of lists.
pub(crate) fn union(lists: Vec<Vec<u64>>) -> Vec<u64> {
    let mut lists = lists;
    match lists.len() {
        0 => Vec::new(),
        1 => lists.pop().unwrap_or_default(),
        _ => {
            let mut out: Vec<u64> = lists.into_iter().flatten().collect();
            out.sort_unstable();
            out.dedup();
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations_on_sorted_lists() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[2, 3, 4, 7, 9]), vec![3, 7]);
        assert_eq!(intersect(&[], &[1]), Vec::<u64>::new());
        assert_eq!(without(&[1, 3, 5, 7], &[0, 3, 7, 8]), vec![1, 5]);
        assert_eq!(without(&[1, 2], &[]), vec![1, 2]);
        assert_eq!(
            union(vec![vec![5, 9], vec![1, 5], vec![2]]),
            vec![1, 2, 5, 9]
        );
        assert_eq!(union(vec![vec![4, 6]]), vec![4, 6]);
        assert!(union(vec![]).is_empty());
    }
}
