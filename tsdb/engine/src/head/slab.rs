//! Where the head's series live: fixed-size pages of slots, reused after series are dropped.
//! A hash map of series would keep a quarter to a half of its slots empty and, when it grows,
//! hold its old and new tables at once (a spike of one and a half times all series); pages
//! grow one at a time and nothing moves.

/// Slots per page (a page of 120-byte series is 60 KiB).
const PAGE: usize = 512;

/// A slab of `T`, addressed by slot number.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    pages: Vec<Box<[Option<T>]>>,
    /// Free slots below the high-water mark, reused last-freed first.
    free: Vec<u32>,
    /// Slots ever handed out (the high-water mark).
    used: u32,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            pages: Vec::new(),
            free: Vec::new(),
            used: 0,
            len: 0,
        }
    }
}

fn split(slot: u32) -> (usize, usize) {
    (slot as usize / PAGE, slot as usize % PAGE)
}

impl<T> Slab<T> {
    /// Stores `v`, returning its slot.
    pub(crate) fn insert(&mut self, v: T) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = self.used;
                self.used += 1;
                if split(s).0 == self.pages.len() {
                    self.pages
                        .push(std::iter::repeat_with(|| None).take(PAGE).collect());
                }
                s
            }
        };
        let (p, i) = split(slot);
        self.pages[p][i] = Some(v);
        self.len += 1;
        slot
    }

    /// Takes the value out of `slot`, freeing it.
    pub(crate) fn remove(&mut self, slot: u32) -> Option<T> {
        let (p, i) = split(slot);
        let v = self.pages.get_mut(p)?.get_mut(i)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(v)
    }

    #[inline]
    pub(crate) fn get(&self, slot: u32) -> Option<&T> {
        let (p, i) = split(slot);
        self.pages.get(p)?.get(i)?.as_ref()
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        let (p, i) = split(slot);
        self.pages.get_mut(p)?.get_mut(i)?.as_mut()
    }

    /// Occupied slots with their values, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.pages
            .iter()
            .flat_map(|p| p.iter())
            .enumerate()
            .filter_map(|(s, v)| v.as_ref().map(|v| (s as u32, v)))
    }

    /// [`Slab::iter`], mutable.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut T)> {
        self.pages
            .iter_mut()
            .flat_map(|p| p.iter_mut())
            .enumerate()
            .filter_map(|(s, v)| v.as_mut().map(|v| (s as u32, v)))
    }

    /// Values stored.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the pages and the free list (not what the values hold on the heap).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.pages.len() * PAGE * std::mem::size_of::<Option<T>>()
            + self.pages.capacity() * std::mem::size_of::<Box<[Option<T>]>>()
            + self.free.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_pages_added_only_when_full() {
        let mut s: Slab<String> = Slab::default();
        let slots: Vec<u32> = (0..PAGE + 3).map(|i| s.insert(i.to_string())).collect();
        assert_eq!(slots, (0..(PAGE + 3) as u32).collect::<Vec<_>>());
        assert_eq!((s.len(), s.pages.len()), (PAGE + 3, 2));
        assert_eq!(s.get(PAGE as u32 + 1).map(String::as_str), Some("513"));

        assert_eq!(s.remove(7).as_deref(), Some("7"));
        assert_eq!(s.remove(7), None, "already free");
        assert_eq!(s.get(7), None);
        assert_eq!(s.remove(10_000), None, "beyond the pages");
        assert_eq!(s.insert("again".into()), 7, "freed slot reused");
        assert_eq!(s.len(), PAGE + 3);
        if let Some(v) = s.get_mut(7) {
            v.push('!');
        }
        assert_eq!(s.get(7).map(String::as_str), Some("again!"));

        s.remove(0);
        let seen: Vec<u32> = s.iter().map(|(slot, _)| slot).collect();
        assert_eq!(seen.len(), PAGE + 2);
        assert!(!seen.contains(&0) && seen.windows(2).all(|w| w[0] < w[1]));
        for (_, v) in s.iter_mut() {
            v.clear();
        }
        assert!(s.iter().all(|(_, v)| v.is_empty()));
        assert_eq!(s.pages.len(), 2);
    }
}
