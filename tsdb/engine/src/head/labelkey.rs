//! A series' labels as the numbers of their strings in the head's [`Symbols`] (name, value,
//! name, value …, as uvarints), kept inline when they fit in 22 bytes (five to ten labels) so
//! most series need no allocation for their labels at all. Incoming labels are looked up
//! [`pack`]ed (`len name len value …`): hashing one byte string is cheap, and comparing it with a
//! key walks the key's symbols.

use super::hash::hash_packed;
use super::symbols::Symbols;
use crate::encoding::{put_uvarint, uvarint};
use crate::labels::{Label, LabelRef, Labels};

/// Bytes of symbol numbers kept inline.
const INLINE: usize = 22;

#[derive(Debug, PartialEq, Eq)]
enum Repr {
    Inline { len: u8, ids: [u8; INLINE] },
    Heap(Box<[u8]>),
}

/// The labels of one series, as symbol numbers; meaningful only with the [`Symbols`] that
/// interned them. Not `Clone`: every key holds one use of each of its symbols.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LabelKey(Repr);

impl LabelKey {
    /// Interns `labels` (one more use of each name and value) and keeps their numbers.
    pub(crate) fn intern(labels: &Labels, syms: &mut Symbols) -> Self {
        let mut b: Vec<u8> = Vec::with_capacity(INLINE);
        for l in labels.iter() {
            put_uvarint(&mut b, u64::from(syms.intern(&l.name)));
            put_uvarint(&mut b, u64::from(syms.intern(&l.value)));
        }
        Self(if b.len() <= INLINE {
            let mut ids = [0u8; INLINE];
            ids[..b.len()].copy_from_slice(&b);
            Repr::Inline {
                len: b.len() as u8,
                ids,
            }
        } else {
            Repr::Heap(b.into_boxed_slice())
        })
    }

    /// Gives back the uses [`LabelKey::intern`] took (when the series is dropped).
    pub(crate) fn release(&self, syms: &mut Symbols) {
        for id in self.ids() {
            syms.release(id);
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, ids } => &ids[..usize::from(*len)],
            Repr::Heap(b) => b,
        }
    }

    /// The symbol numbers: name, value, name, value …
    fn ids(&self) -> Ids<'_> {
        Ids(self.bytes())
    }

    /// The (name, value) pairs in order.
    pub(crate) fn pairs<'a>(
        &'a self,
        syms: &'a Symbols,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut ids = self.ids();
        std::iter::from_fn(move || Some((syms.get(ids.next()?), syms.get(ids.next()?))))
    }

    /// [`hash_packed`] of these labels.
    pub(crate) fn hash(&self, syms: &Symbols) -> u64 {
        let mut b = Vec::with_capacity(128);
        for (n, v) in self.pairs(syms) {
            put_field(&mut b, n);
            put_field(&mut b, v);
        }
        hash_packed(&b)
    }

    /// Whether these labels, packed, are exactly `packed` (see [`pack`]).
    pub(crate) fn is(&self, packed: &[u8], syms: &Symbols) -> bool {
        let mut rest = packed;
        for id in self.ids() {
            match raw_field(rest) {
                Some((f, tail)) if f == syms.get(id).as_bytes() => rest = tail,
                _ => return false,
            }
        }
        rest.is_empty()
    }

    /// The value of label `name`, if set.
    pub(crate) fn get<'a>(&'a self, name: &str, syms: &'a Symbols) -> Option<&'a str> {
        self.pairs(syms).find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The labels as a [`Labels`].
    pub(crate) fn to_labels(&self, syms: &Symbols) -> Labels {
        Labels::from_sorted(
            self.pairs(syms)
                .map(|(n, v)| Label {
                    name: n.to_owned(),
                    value: v.to_owned(),
                })
                .collect(),
        )
    }

    /// Bytes held on the heap (none when inline).
    pub(crate) fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Heap(b) => b.len(),
        }
    }
}

/// Iterator over the symbol numbers of a key; keys are built valid, so it simply stops at
/// anything unexpected.
struct Ids<'a>(&'a [u8]);

impl Iterator for Ids<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        let (v, k) = match self.0.first() {
            Some(&b) if b < 0x80 => (u64::from(b), 1),
            Some(_) => uvarint(self.0)?,
            None => return None,
        };
        self.0 = &self.0[k..];
        u32::try_from(v).ok()
    }
}

fn put_field(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends labels to `out` packed as a [`LabelKey`] holds them: looking a series up compares
/// and hashes one byte string instead of each name and value.
pub(crate) fn pack(labels: &[LabelRef<'_>], out: &mut Vec<u8>) {
    for l in labels {
        put_field(out, l.name);
        put_field(out, l.value);
    }
}

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
        let mut syms = Symbols::default();
        let a = Labels::from_pairs([("__name__", "up"), ("job", "x".repeat(300).as_str())]);
        let k = LabelKey::intern(&a, &mut syms);
        assert_eq!(k.to_labels(&syms), a);
        assert!(k.is(&packed(&a), &syms));
        assert!(!k.is(&packed(&Labels::from_pairs([("__name__", "up")])), &syms));
        assert!(!k.is(
            &packed(&Labels::from_pairs([
                ("__name__", "up"),
                ("job", "x"),
                ("z", "1")
            ])),
            &syms
        ));
        assert_eq!(k.get("__name__", &syms), Some("up"));
        assert_eq!(k.get("nope", &syms), None);
        assert!(LabelKey::intern(&Labels::default(), &mut syms).is(&[], &syms));
    }

    #[test]
    fn keys_stay_inline_until_their_numbers_outgrow_22_bytes() {
        assert_eq!(std::mem::size_of::<LabelKey>(), 24);
        let mut syms = Symbols::default();
        let small = Labels::from_pairs([
            ("__name__", "node_cpu_seconds_total"),
            ("cpu", "3"),
            ("instance", "host-0001:9100"),
            ("job", "node"),
            ("mode", "idle"),
        ]);
        let k = LabelKey::intern(&small, &mut syms);
        assert_eq!(k.heap_bytes(), 0);
        let pairs: Vec<(String, String)> = (0..20)
            .map(|i| (format!("l{i:02}"), format!("v{i}")))
            .collect();
        let big = Labels::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let kb = LabelKey::intern(&big, &mut syms);
        assert!(kb.heap_bytes() >= 40);
        assert_eq!(kb.to_labels(&syms), big);
        assert_eq!(k.to_labels(&syms), small);
    }

    #[test]
    fn releasing_a_key_drops_strings_no_other_key_uses() {
        let mut syms = Symbols::default();
        let a = LabelKey::intern(
            &Labels::from_pairs([("job", "a"), ("x", "only-a")]),
            &mut syms,
        );
        let b = LabelKey::intern(&Labels::from_pairs([("job", "b"), ("x", "1")]), &mut syms);
        a.release(&mut syms);
        assert_eq!(syms.find("only-a"), None);
        assert_eq!(syms.find("a"), None);
        assert!(syms.find("job").is_some(), "still used by b");
        // New strings reuse the freed numbers; b still reads back the same.
        let c = LabelKey::intern(&Labels::from_pairs([("job", "c"), ("y", "z")]), &mut syms);
        assert_eq!(
            b.to_labels(&syms),
            Labels::from_pairs([("job", "b"), ("x", "1")])
        );
        assert_eq!(
            c.to_labels(&syms),
            Labels::from_pairs([("job", "c"), ("y", "z")])
        );
    }

    #[test]
    fn key_hash_equals_packed_hash_and_separates_fields() {
        let mut syms = Symbols::default();
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
            assert_eq!(LabelKey::intern(l, &mut syms).hash(&syms), *h, "{l}");
        }
        let mut unique = hashes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), hashes.len(), "{hashes:?}");
    }
}
