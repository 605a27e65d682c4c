//! The head's symbol table: every label name and value string is held once, and series refer to
//! it by number, so a series' labels cost a few bytes instead of their text (names, `job`,
//! `instance` and most values are shared by many series).

use hashbrown::HashTable;

use super::hash::hash_packed;

/// Interned strings with use counts; a string whose last use is released is dropped and its
/// number reused.
#[derive(Debug, Default)]
pub(crate) struct Symbols {
    /// Numbers of the live strings, found by the hash of their text.
    table: HashTable<u32>,
    /// The text of each number (empty when free).
    strs: Vec<Box<str>>,
    /// Uses of each number; 0 when free.
    uses: Vec<u32>,
    /// Free numbers, reused before new ones (numbers stay small, so they encode short).
    free: Vec<u32>,
}

fn hash_str(s: &str) -> u64 {
    hash_packed(s.as_bytes())
}

impl Symbols {
    /// The text of symbol `id` (empty for a number not in use).
    #[inline]
    pub(crate) fn get(&self, id: u32) -> &str {
        self.strs.get(id as usize).map_or("", |s| s)
    }

    /// The number of `s`, if interned.
    #[cfg(test)]
    pub(crate) fn find(&self, s: &str) -> Option<u32> {
        self.table
            .find(hash_str(s), |&id| &*self.strs[id as usize] == s)
            .copied()
    }

    /// The number of `s`, interning it when new; counts one more use either way.
    pub(crate) fn intern(&mut self, s: &str) -> u32 {
        let hash = hash_str(s);
        if let Some(&id) = self.table.find(hash, |&id| &*self.strs[id as usize] == s) {
            self.uses[id as usize] += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.strs[id as usize] = s.into();
                self.uses[id as usize] = 1;
                id
            }
            None => {
                let id = u32::try_from(self.strs.len()).unwrap_or(u32::MAX);
                self.strs.push(s.into());
                self.uses.push(1);
                id
            }
        };
        let strs = &self.strs;
        self.table
            .insert_unique(hash, id, |&i| hash_str(&strs[i as usize]));
        id
    }

    /// Counts one use of `id` less; the string is dropped with its last use.
    pub(crate) fn release(&mut self, id: u32) {
        let Some(uses) = self.uses.get_mut(id as usize) else {
            return;
        };
        if *uses == 0 {
            return;
        }
        *uses -= 1;
        if *uses > 0 {
            return;
        }
        let hash = hash_str(&self.strs[id as usize]);
        if let Ok(entry) = self.table.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        self.strs[id as usize] = Box::default();
        self.free.push(id);
    }

    /// Strings in use.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes held: texts, the number arrays and the hash table.
    pub(crate) fn memory_bytes(&self) -> usize {
        let text: usize = self.strs.iter().map(|s| s.len()).sum();
        text + self.strs.capacity() * std::mem::size_of::<Box<str>>()
            + self.uses.capacity() * 4
            + self.free.capacity() * 4
            + self.table.capacity() * 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_counts_uses_and_reuses_freed_numbers() {
        let mut s = Symbols::default();
        let a = s.intern("job");
        let b = s.intern("node");
        assert_ne!(a, b);
        assert_eq!(s.intern("job"), a);
        assert_eq!((s.get(a), s.get(b), s.len()), ("job", "node", 2));
        assert_eq!(s.find("node"), Some(b));
        assert_eq!(s.find("nope"), None);

        s.release(b);
        assert_eq!(s.find("node"), None, "last use released");
        assert_eq!(s.get(b), "");
        s.release(a);
        assert_eq!(s.find("job"), Some(a), "one use left");
        let c = s.intern("instance");
        assert_eq!(c, b, "freed number reused");
        assert_eq!(s.get(c), "instance");
        assert_eq!(s.len(), 2);
        // Releasing more than was interned does not underflow or free a live number twice.
        s.release(a);
        s.release(a);
        assert_eq!(s.find("job"), None);
        assert_eq!(s.intern("x"), a);
        assert_eq!(
            s.intern("y") as usize,
            2,
            "free list used up, then new numbers"
        );
    }

    #[test]
    fn many_symbols_survive_table_growth() {
        let mut s = Symbols::default();
        let ids: Vec<u32> = (0..5000).map(|i| s.intern(&format!("v{i}"))).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(s.get(*id), format!("v{i}"));
            assert_eq!(s.find(&format!("v{i}")), Some(*id));
        }
        for id in ids.iter().step_by(2) {
            s.release(*id);
        }
        assert_eq!(s.len(), 2500);
        assert_eq!(s.find("v1"), Some(ids[1]));
        assert_eq!(s.find("v0"), None);
    }
}
