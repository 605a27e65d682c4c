//! One series in the head: its labels, closed XOR chunks, the chunk being appended to, and (with
//! an out-of-order window) the samples that arrived late.

use super::labelkey::LabelKey;
use super::symbols::Symbols;
use crate::chunkenc::{MAX_SAMPLES_PER_CHUNK, XorChunk, compute_chunk_end_time};
use crate::labels::Labels;
use crate::series::{Sample, merge_samples};

/// A full chunk, kept as its encoded bytes.
#[derive(Debug)]
pub(crate) struct ClosedChunk {
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    pub(crate) data: Box<[u8]>,
}

/// The chunk being appended to and the time at which it is cut.
#[derive(Debug)]
pub(crate) struct OpenChunk {
    pub(crate) chunk: XorChunk,
    next_at: i64,
}

/// What storing a sample did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Appended in order.
    InOrder,
    /// Kept among the out-of-order samples.
    OutOfOrder,
    /// Same timestamp as a stored sample: not stored again.
    Duplicate,
}

#[derive(Debug)]
pub(crate) struct MemSeries {
    /// The series' reference (in the WAL and the postings).
    pub(crate) r: u64,
    pub(crate) labels: LabelKey,
    /// Full chunks, oldest first; exactly sized (a chunk closes every 120 samples or so, and a
    /// `Vec` would keep room for four on the first).
    pub(crate) closed: Box<[ClosedChunk]>,
    pub(crate) open: Option<OpenChunk>,
    /// Late samples (inside the out-of-order window), sorted by time, unique timestamps; boxed,
    /// since most series never have any (the out-of-order window is off by default).
    #[allow(clippy::box_collection)] // 8 bytes in every series instead of a Vec's 24
    ooo: Option<Box<Vec<Sample>>>,
}

/// End of the `range`-wide, epoch-aligned time range holding `t` (chunks never cross it, so a
/// 2h block cut never splits a chunk).
fn range_end(t: i64, range: i64) -> i64 {
    t.div_euclid(range).saturating_add(1).saturating_mul(range)
}

impl MemSeries {
    /// A series without samples; interns its labels in `syms`.
    pub(crate) fn new(r: u64, labels: &Labels, syms: &mut Symbols) -> Self {
        Self {
            r,
            labels: LabelKey::intern(labels, syms),
            closed: Box::default(),
            open: None,
            ooo: None,
        }
    }

    /// The latest in-order sample: the open chunk's last one. A series whose open chunk was
    /// truncated away has no samples left at all (closed chunks are older), so it has none.
    pub(crate) fn last(&self) -> Option<Sample> {
        self.open.as_ref().and_then(|o| o.chunk.last())
    }

    /// The late samples, sorted by time.
    pub(crate) fn ooo(&self) -> &[Sample] {
        self.ooo.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Stores a sample that passed validation (or comes from the WAL): newer than the latest one
    /// goes into the open chunk, cutting it like Prometheus does (aiming at
    /// [`MAX_SAMPLES_PER_CHUNK`] samples, never across a `chunk_range` boundary); older goes to the
    /// out-of-order list; an already stored timestamp is a duplicate.
    pub(crate) fn store(&mut self, t: i64, v: f64, chunk_range: i64) -> Stored {
        match self.last() {
            Some((lt, _)) if t == lt => return Stored::Duplicate,
            Some((lt, _)) if t < lt => {
                let ooo = self.ooo.get_or_insert_with(Box::default);
                return match ooo.binary_search_by_key(&t, |s| s.0) {
                    Ok(_) => Stored::Duplicate,
                    Err(i) => {
                        ooo.insert(i, (t, v));
                        Stored::OutOfOrder
                    }
                };
            }
            _ => {}
        }
        let cut = match &mut self.open {
            None => true,
            Some(o) => {
                let n = o.chunk.num_samples();
                if n == MAX_SAMPLES_PER_CHUNK / 4
                    && let (Some(min), Some(max)) = (o.chunk.min_time(), o.chunk.max_time())
                {
                    o.next_at = compute_chunk_end_time(min, max, o.next_at);
                }
                t >= o.next_at || n >= 2 * MAX_SAMPLES_PER_CHUNK
            }
        };
        if cut {
            if let Some(o) = self.open.take() {
                self.close(o);
            }
            self.open = Some(OpenChunk {
                chunk: XorChunk::new(),
                next_at: range_end(t, chunk_range),
            });
        }
        if let Some(o) = self.open.as_mut() {
            o.chunk.append(t, v);
        }
        Stored::InOrder
    }

    fn close(&mut self, o: OpenChunk) {
        let (Some(min_t), Some(max_t)) = (o.chunk.min_time(), o.chunk.max_time()) else {
            return;
        };
        let mut closed = std::mem::take(&mut self.closed).into_vec();
        closed.reserve_exact(1);
        closed.push(ClosedChunk {
            min_t,
            max_t,
            data: o.chunk.into_bytes().into_boxed_slice(),
        });
        self.closed = closed.into_boxed_slice();
    }

    /// Copies what is needed to read samples in `[mint, maxt]` (labels, chunk bytes, late
    /// samples), so decoding can happen outside the head's lock.
    pub(crate) fn snapshot(&self, mint: i64, maxt: i64, syms: &Symbols) -> SeriesSnapshot {
        SeriesSnapshot {
            labels: self.labels.to_labels(syms),
            ..self.data_snapshot(mint, maxt)
        }
    }

    /// [`MemSeries::snapshot`] without the labels.
    pub(crate) fn data_snapshot(&self, mint: i64, maxt: i64) -> SeriesSnapshot {
        let mut chunks: Vec<Vec<u8>> = self
            .closed
            .iter()
            .filter(|c| c.max_t >= mint && c.min_t <= maxt)
            .map(|c| c.data.to_vec())
            .collect();
        if let Some(o) = &self.open
            && let (Some(min), Some(max)) = (o.chunk.min_time(), o.chunk.max_time())
            && max >= mint
            && min <= maxt
        {
            chunks.push(o.chunk.bytes().to_vec());
        }
        let ooo = self
            .ooo()
            .iter()
            .filter(|s| s.0 >= mint && s.0 <= maxt)
            .copied()
            .collect();
        SeriesSnapshot {
            labels: Labels::default(),
            chunks,
            ooo,
        }
    }

    /// Drops chunks and late samples entirely before `t`; returns how many samples went.
    pub(crate) fn truncate_before(&mut self, t: i64) -> u64 {
        let mut dropped = 0u64;
        if self.closed.iter().any(|c| c.max_t < t) {
            let mut closed = std::mem::take(&mut self.closed).into_vec();
            closed.retain(|c| {
                let keep = c.max_t >= t;
                if !keep {
                    dropped += u64::from(u16::from_be_bytes([c.data[0], c.data[1]]));
                }
                keep
            });
            self.closed = closed.into_boxed_slice();
        }
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.chunk.max_time().is_some_and(|m| m < t))
        {
            dropped += self.open.take().map_or(0, |o| o.chunk.num_samples() as u64);
        }
        if let Some(ooo) = self.ooo.as_mut() {
            let before = ooo.len();
            ooo.retain(|s| s.0 >= t);
            dropped += (before - ooo.len()) as u64;
            if ooo.is_empty() {
                self.ooo = None;
            }
        }
        dropped
    }

    /// Whether no samples are left.
    pub(crate) fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.open.is_none() && self.ooo().is_empty()
    }

    /// Earliest stored timestamp.
    pub(crate) fn min_time(&self) -> Option<i64> {
        let chunk_min = self
            .closed
            .first()
            .map(|c| c.min_t)
            .or_else(|| self.open.as_ref().and_then(|o| o.chunk.min_time()));
        match (chunk_min, self.ooo().first()) {
            (Some(a), Some(b)) => Some(a.min(b.0)),
            (a, b) => a.or(b.map(|s| s.0)),
        }
    }

    /// Heap bytes this series holds (labels, chunks, late samples); its inline size is counted
    /// with the slab holding it.
    pub(crate) fn heap_bytes(&self) -> usize {
        let labels = self.labels.heap_bytes();
        let closed: usize = self
            .closed
            .iter()
            .map(|c| std::mem::size_of::<ClosedChunk>() + c.data.len())
            .sum::<usize>();
        let open = self.open.as_ref().map_or(0, |o| o.chunk.heap_bytes());
        let ooo = self.ooo.as_ref().map_or(0, |v| {
            std::mem::size_of::<Vec<Sample>>() + v.capacity() * std::mem::size_of::<Sample>()
        });
        labels + closed + open + ooo
    }
}

/// A copy of one series' data for a time range, decoded outside the head's lock.
pub(crate) struct SeriesSnapshot {
    pub(crate) labels: Labels,
    chunks: Vec<Vec<u8>>,
    ooo: Vec<Sample>,
}

impl SeriesSnapshot {
    /// Samples with `mint <= t <= maxt`, sorted, unique timestamps.
    pub(crate) fn samples(&self, mint: i64, maxt: i64) -> Vec<Sample> {
        // Each chunk starts with its sample count: size the result once.
        let total: usize = self
            .chunks
            .iter()
            .map(|c| {
                c.get(..2)
                    .map_or(0, |n| usize::from(u16::from_be_bytes([n[0], n[1]])))
            })
            .sum();
        let mut in_order = Vec::with_capacity(total);
        for c in &self.chunks {
            for s in crate::chunkenc::decode_xor(c) {
                match s {
                    Ok(s) if s.0 >= mint && s.0 <= maxt => in_order.push(s),
                    Ok(_) => {}
                    Err(e) => {
                        // The head wrote these bytes itself; report rather than panic.
                        tracing::error!(series = %self.labels, "decoding head chunk: {e}");
                        break;
                    }
                }
            }
        }
        if self.ooo.is_empty() {
            in_order
        } else {
            merge_samples(&[&in_order, &self.ooo])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H2: i64 = 2 * 3600 * 1000;

    #[test]
    fn chunks_are_cut_near_120_samples_and_at_range_boundaries() {
        let mut s = MemSeries::new(1, &Labels::default(), &mut Symbols::default());
        // 15 s scrape over 4 hours: 960 samples, two 2h ranges.
        for i in 0..960 {
            assert_eq!(s.store(i * 15_000, i as f64, H2), Stored::InOrder);
        }
        let mut sizes: Vec<u16> = s
            .closed
            .iter()
            .map(|c| u16::from_be_bytes([c.data[0], c.data[1]]))
            .collect();
        sizes.push(s.open.as_ref().unwrap().chunk.num_samples() as u16);
        assert_eq!(sizes, vec![120; 8]);
        assert!(s.closed.iter().all(|c| c.min_t / H2 == c.max_t / H2));
        let snap = s.data_snapshot(0, i64::MAX);
        assert_eq!(snap.samples(0, i64::MAX).len(), 960);
    }

    #[test]
    fn late_samples_merge_and_duplicates_are_not_stored_twice() {
        let mut s = MemSeries::new(1, &Labels::default(), &mut Symbols::default());
        assert_eq!(s.store(100, 1.0, H2), Stored::InOrder);
        assert_eq!(s.store(300, 3.0, H2), Stored::InOrder);
        assert_eq!(s.store(200, 2.0, H2), Stored::OutOfOrder);
        assert_eq!(s.store(200, 9.0, H2), Stored::Duplicate);
        assert_eq!(s.store(300, 9.0, H2), Stored::Duplicate);
        let got = s.data_snapshot(0, 1000).samples(0, 1000);
        assert_eq!(got, vec![(100, 1.0), (200, 2.0), (300, 3.0)]);
        assert_eq!(
            s.truncate_before(250),
            1,
            "the late sample goes, the chunk holding 300 stays"
        );
        assert!(s.ooo.is_none(), "the emptied late-sample list is freed");
        assert_eq!(s.min_time(), Some(100));
    }
}
