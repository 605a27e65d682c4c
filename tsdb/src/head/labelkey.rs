//! A series' labels packed into one allocation (`len name len value …`, lengths as uvarints):
//! a tenth of the allocations of a [`Labels`], and comparing it with incoming labels touches one
//! cache line run instead of one per string — the head's lookup is bound by those misses.

use crate::encoding::{put_uvarint, uvarint};
use crate::labels::{Label, LabelRef, Labels};

/// Packed labels of one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelKey(Box<[u8]>);

impl LabelKey {
    pub(crate) fn new(labels: &Labels) -> Self {
        Self::from_pairs(labels.iter().map(|l| (l.name.as_str(), l.value.as_str())))
    }

    fn from_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Self {
        let n: usize = pairs.clone().map(|(n, v)| n.len() + v.len() + 2).sum();
        let mut b = Vec::with_capacity(n);
        for (name, value) in pairs {
            put_uvarint(&mut b, name.len() as u64);
            b.extend_from_slice(name.as_bytes());
            put_uvarint(&mut b, value.len() as u64);
            b.extend_from_slice(value.as_bytes());
        }
        Self(b.into_boxed_slice())
    }

    /// The (name, value) pairs in order.
    pub(crate) fn pairs(&self) -> Pairs<'_> {
        Pairs(&self.0)
    }

    /// [`hash_packed`] of these labels.
    pub(crate) fn hash(&self) -> u64 {
        hash_packed(&self.0)
    }

    /// Whether these labels packed are exactly `packed` (see [`pack`]).
    pub(crate) fn is(&self, packed: &[u8]) -> bool {
        *self.0 == *packed
    }

    /// The value of label `name`, if set.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The labels as a [`Labels`].
    pub(crate) fn to_labels(&self) -> Labels {
        Labels::from_sorted(
            self.pairs()
                .map(|(n, v)| Label {
                    name: n.to_owned(),
                    value: v.to_owned(),
                })
                .collect(),
        )
    }

    /// Bytes held on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.0.len()
    }
}

/// Appends labels to `out` packed as a [`LabelKey`] holds them: looking a series up compares
/// and hashes one byte string instead of each name and value.
pub(crate) fn pack(labels: &[LabelRef<'_>], out: &mut Vec<u8>) {
    for l in labels {
        put_uvarint(out, l.name.len() as u64);
        out.extend_from_slice(l.name.as_bytes());
        put_uvarint(out, l.value.len() as u64);
        out.extend_from_slice(l.value.as_bytes());
    }
}

/// Hash of packed labels, eight bytes per multiply instead of FNV's one, so hashing a series
/// costs a few nanoseconds. Never persisted (the WAL and blocks hold labels, not hashes), so it
/// may change between versions; collisions are resolved by comparing labels. Field lengths are
/// part of the packed bytes, so ("ab", "c") and ("a", "bc") differ.
pub(crate) fn hash_packed(b: &[u8]) -> u64 {
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(w));
    }
    // The last 1–7 bytes without a variable-length copy (as wyhash reads them): two
    // overlapping 4-byte words, or the first, middle and last byte.
    let t = chunks.remainder();
    let n = t.len();
    let last = if n >= 4 {
        let (mut lo, mut hi) = ([0u8; 4], [0u8; 4]);
        lo.copy_from_slice(&t[..4]);
        hi.copy_from_slice(&t[n - 4..]);
        u64::from(u32::from_le_bytes(lo)) | (u64::from(u32::from_le_bytes(hi)) << 32)
    } else if n > 0 {
        u64::from(t[0]) | (u64::from(t[n / 2]) << 8) | (u64::from(t[n - 1]) << 16)
    } else {
        0
    };
    mix(h, last)
}

/// Folded 64×64→128-bit multiply (as in wyhash): every input bit reaches every output bit.
#[inline]
fn mix(h: u64, w: u64) -> u64 {
    let m = u128::from(h ^ w) * u128::from(0x9e37_79b9_7f4a_7c15u64 ^ 0xa076_1d64_78bd_642f);
    (m as u64) ^ ((m >> 64) as u64)
}

/// Iterator over the pairs of a [`LabelKey`]; built only from valid keys, so it simply stops at
/// anything unexpected instead of failing.
pub(crate) struct Pairs<'a>(&'a [u8]);

/// Splits one length-prefixed field off the front of `b`.
#[inline]
fn raw_field(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (n, k) = match b.first() {
        Some(&len) if len < 0x80 => (usize::from(len), 1),
        _ => {
            let (n, k) = uvarint(b)?;
            (usize::try_from(n).ok()?, k)
        }
    };
    let end = k.checked_add(n)?;
    Some((b.get(k..end)?, b.get(end..)?))
}

impl<'a> Pairs<'a> {
    fn field(&mut self) -> Option<&'a str> {
        let (f, tail) = raw_field(self.0)?;
        self.0 = tail;
        std::str::from_utf8(f).ok()
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let name = self.field()?;
        let value = self.field()?;
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(l: &Labels) -> Vec<u8> {
        let mut b = Vec::new();
        pack(&l.refs(), &mut b);
        b
    }

    #[test]
    fn key_round_trips_and_compares_exactly() {
        let a = Labels::from_pairs([("__name__", "up"), ("job", "x".repeat(300).as_str())]);
        let k = LabelKey::new(&a);
        assert_eq!(k.to_labels(), a);
        assert!(k.is(&packed(&a)));
        assert!(!k.is(&packed(&Labels::from_pairs([("__name__", "up")]))));
        assert!(!k.is(&packed(&Labels::from_pairs([
            ("__name__", "up"),
            ("job", "x"),
            ("z", "1")
        ]))));
        assert_eq!(k.get("__name__"), Some("up"));
        assert_eq!(k.get("nope"), None);
        assert!(LabelKey::new(&Labels::default()).is(&[]));
    }

    #[test]
    fn key_hash_equals_packed_hash_and_separates_fields() {
        let sets = [
            Labels::from_pairs([("ab", "c")]),
            Labels::from_pairs([("a", "bc")]),
            Labels::from_pairs([("__name__", "node_cpu_seconds_total"), ("cpu", "1")]),
            Labels::from_pairs([("__name__", "node_cpu_seconds_total"), ("cpu", "10")]),
            Labels::from_pairs([("__name__", "node_cpu_seconds_total"), ("cpu", "11")]),
            Labels::from_pairs([("exactly8", "12345678"), ("long", "y".repeat(300).as_str())]),
            Labels::from_pairs([("x", "1234567")]),
            Labels::from_pairs([("x", "1234576")]),
            Labels::default(),
        ];
        let hashes: Vec<u64> = sets.iter().map(|l| hash_packed(&packed(l))).collect();
        for (l, h) in sets.iter().zip(&hashes) {
            assert_eq!(LabelKey::new(l).hash(), *h, "{l}");
        }
        let mut unique = hashes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), hashes.len(), "{hashes:?}");
    }
}
