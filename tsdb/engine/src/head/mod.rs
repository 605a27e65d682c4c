//! The head: in-memory series receiving appends, backed by the write-ahead log in `<dir>/wal`.
//!
//! Concurrency: appends are serialized while they are validated, logged and stored (a few
//! microseconds per series), and overlap in the expensive part, the `fdatasync`, which one
//! appender performs for everyone waiting (group commit). The WAL therefore holds samples in the
//! order the head stored them, and replaying it rebuilds the same state. Readers take a shared
//! lock only to copy chunk bytes and decode after releasing it.

mod hash;
mod labelkey;
mod memseries;
mod postings;
mod slab;
mod symbols;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use thiserror::Error;

use crate::labels::{DisplayRefs, LabelRef, Labels, Matcher};
use crate::series::{Sample, Series};
use crate::wal::{Corruption, Record, RefSample, RefSeries, Wal, WalError, WalOptions};
use hash::hash_packed;
use labelkey::pack;
use memseries::{MemSeries, Stored};
use postings::Postings;
use slab::Slab;
use symbols::Symbols;

/// Default width of the aligned time ranges chunks never cross: Mimir's 2h block range.
pub const DEFAULT_CHUNK_RANGE_MS: i64 = 2 * 3600 * 1000;

/// How the head behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadOptions {
    /// How far behind a series' latest sample a sample may still be accepted; 0 (Mimir's
    /// default) rejects every out-of-order sample.
    pub out_of_order_window_ms: i64,
    /// Write-ahead log settings.
    pub wal: WalOptions,
    /// Chunks are cut at multiples of this (the block range), so a block cut never splits one.
    pub chunk_range_ms: i64,
}

impl Default for HeadOptions {
    fn default() -> Self {
        Self {
            out_of_order_window_ms: 0,
            wal: WalOptions::default(),
            chunk_range_ms: DEFAULT_CHUNK_RANGE_MS,
        }
    }
}

/// A head operation failed.
#[derive(Debug, Error)]
pub enum HeadError {
    /// Opening or replaying the WAL failed.
    #[error("replaying the WAL of head {dir}: {source}")]
    Replay {
        /// The head directory.
        dir: PathBuf,
        /// What failed.
        source: WalError,
    },
    /// Writing the WAL failed; the append was not stored.
    #[error("writing the WAL of head {dir}: {source}")]
    Wal {
        /// The head directory.
        dir: PathBuf,
        /// What failed.
        source: WalError,
    },
    /// Invalid options.
    #[error("invalid head options: {0}")]
    InvalidOptions(String),
}

/// Why a sample was rejected (Mimir's reason names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Older than the series' latest sample by more than the out-of-order window.
    SampleOutOfOrder,
    /// Same timestamp as a stored sample, different value.
    DuplicateTimestamp,
    /// Older than the head accepts (before its last truncation).
    SampleOutOfBounds,
}

impl RejectReason {
    /// The reason as Mimir names it in its discarded-samples metric.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::SampleOutOfOrder => "sample-out-of-order",
            RejectReason::DuplicateTimestamp => "new-value-for-timestamp",
            RejectReason::SampleOutOfBounds => "sample-out-of-bounds",
        }
    }
}

/// The rejected samples of one series of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRejection {
    /// Index of the series in the batch.
    pub index: usize,
    /// Number of rejected samples per reason.
    pub counts: Vec<(RejectReason, u64)>,
    /// The message for the first rejected sample, naming the series and timestamps.
    pub message: String,
}

impl SeriesRejection {
    /// Total rejected samples of this series.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.1).sum()
    }
}

/// One series of an append: its labels (sorted by name, names unique) and samples, borrowed.
pub type SeriesSamples<'a> = (&'a [LabelRef<'a>], &'a [Sample]);

/// Whether owned and borrowed labels are the same.
fn same_labels(a: &Labels, b: &[LabelRef<'_>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.name == y.name && x.value == y.value)
}

/// What an append stored and rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendSummary {
    /// Samples stored (durably, when the append returned `Ok`).
    pub samples_appended: u64,
    /// Samples identical to one already stored (same timestamp and value), accepted silently.
    pub samples_duplicate: u64,
    /// Series the batch created.
    pub series_created: u64,
    /// Series with rejected samples; the rest of their samples were stored.
    pub rejected: Vec<SeriesRejection>,
    /// Indices in the batch of new series refused because the head held `max_series` series
    /// (none of their samples were stored).
    pub series_limited: Vec<usize>,
}

impl AppendSummary {
    /// Total rejected samples.
    pub fn rejected_samples(&self) -> u64 {
        self.rejected.iter().map(|r| r.total()).sum()
    }
}

/// Where a head's memory goes (see [`Head::memory_usage`]), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadMemory {
    /// What the series hold on the heap: chunk bytes, late samples, labels too long to keep
    /// inline.
    pub series_heap: usize,
    /// The slab pages holding the series themselves.
    pub series_slots: usize,
    /// The maps from series reference and from label hash to slot.
    pub maps: usize,
    /// The inverted index.
    pub postings: usize,
    /// The label strings, each held once.
    pub symbols: usize,
}

impl HeadMemory {
    /// All parts together.
    pub fn total(&self) -> usize {
        self.series_heap + self.series_slots + self.maps + self.postings + self.symbols
    }
}

/// What replaying the WAL on open found.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Records read.
    pub records: u64,
    /// Series restored.
    pub series: u64,
    /// Samples restored.
    pub samples: u64,
    /// Samples referring to series no record defines (dropped).
    pub unknown_series_samples: u64,
    /// Checkpoint the replay started from.
    pub checkpoint: Option<u32>,
    /// The torn or corrupt tail that was removed, if any.
    pub corruption: Option<Corruption>,
    /// Time the replay took.
    pub duration: Duration,
}

/// A hasher for maps keyed by series references and label hashes: one multiply-rotate step per
/// word instead of SipHash (keys are not attacker-chosen: references are sequential and label
/// hashes already mixed).
#[derive(Debug, Default, Clone, Copy)]
struct RefHasher(u64);

impl std::hash::Hasher for RefHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type RefMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<RefHasher>>;

/// Hash of a series reference for [`HeadData::by_ref`].
fn ref_hash(r: u64) -> u64 {
    hash_packed(&r.to_le_bytes())
}

/// The half of a label hash [`HeadData::by_hash`] keeps.
fn upper_half(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// Hash of a kept half for [`HeadData::by_hash`] (computable again when the table grows). The
/// half is already well mixed, so it is not hashed again, only repeated to fill both ends of the
/// word (the table takes its tag from the top bits and the bucket from the bottom ones).
fn table_hash_of_half(upper: u32) -> u64 {
    let u = u64::from(upper);
    (u << 32) | u
}

/// The in-memory state, under one reader-writer lock.
#[derive(Debug, Default)]
struct HeadData {
    /// The series, each in a slot of the slab.
    series: Slab<MemSeries>,
    /// Slot of each series reference; only slots are stored (4 bytes an entry), the reference
    /// is the series' own.
    by_ref: HashTable<u32>,
    /// (upper half of the label hash, slot): enough to find candidates, whose labels are then
    /// compared, so series whose hashes collide simply share a bucket chain.
    by_hash: HashTable<(u32, u32)>,
    /// WAL references of duplicate series records, mapped to the series they name.
    aliases: RefMap<u64>,
    postings: Postings,
    /// The label strings of all series, each once.
    symbols: Symbols,
    num_samples: u64,
    min_time: Option<i64>,
    max_time: Option<i64>,
    /// Samples older than this are out of bounds (set by truncation).
    min_valid_time: i64,
}

impl HeadData {
    /// Slot of the series with reference `r` (not following aliases).
    fn slot(&self, r: u64) -> Option<u32> {
        let series = &self.series;
        self.by_ref
            .find(ref_hash(r), |&slot| {
                series.get(slot).is_some_and(|s| s.r == r)
            })
            .copied()
    }

    /// The series with reference `r` (not following aliases).
    fn get(&self, r: u64) -> Option<&MemSeries> {
        self.series.get(self.slot(r)?)
    }

    /// [`HeadData::get`], following an alias first.
    fn get_mut_aliased(&mut self, r: u64) -> Option<&mut MemSeries> {
        let r = self.aliases.get(&r).copied().unwrap_or(r);
        let slot = self.slot(r)?;
        self.series.get_mut(slot)
    }

    /// The series with exactly these labels (packed, see [`pack`]), found by their hash.
    fn lookup(&self, packed: &[u8], hash: u64) -> Option<(u64, &MemSeries)> {
        let upper = upper_half(hash);
        let mut found = None;
        // Candidates share the upper hash half; the labels decide.
        self.by_hash.find(table_hash_of_half(upper), |&(u, slot)| {
            if u != upper {
                return false;
            }
            let s = self.series.get(slot);
            let hit = s.filter(|s| s.labels.is(packed, &self.symbols));
            found = hit.map(|s| (s.r, s));
            hit.is_some()
        });
        found
    }

    fn remove_series_hashed(&mut self, r: u64, hash: u64) {
        let series = &self.series;
        let Ok(entry) = self.by_ref.find_entry(ref_hash(r), |&slot| {
            series.get(slot).is_some_and(|s| s.r == r)
        }) else {
            return;
        };
        let (slot, _) = entry.remove();
        let upper = upper_half(hash);
        if let Ok(entry) = self
            .by_hash
            .find_entry(table_hash_of_half(upper), |&e| e == (upper, slot))
        {
            entry.remove();
        }
        if let Some(s) = self.series.remove(slot) {
            s.labels.release(&mut self.symbols);
        }
    }

    /// Adds a series under `r`; when the labels already have a series, `r` becomes its alias.
    fn insert_series(&mut self, r: u64, labels: &Labels) -> bool {
        let mut packed = Vec::with_capacity(128);
        pack(&labels.refs(), &mut packed);
        self.insert_series_packed(r, labels, &packed, hash_packed(&packed))
    }

    /// [`HeadData::insert_series`] of labels already packed and hashed.
    fn insert_series_packed(&mut self, r: u64, labels: &Labels, packed: &[u8], hash: u64) -> bool {
        if let Some((existing, _)) = self.lookup(packed, hash) {
            if existing != r {
                self.aliases.insert(r, existing);
            }
            return false;
        }
        if self.slot(r).is_some() {
            // The same reference with other labels: a corrupt WAL. Keep the first.
            return false;
        }
        let slot = self
            .series
            .insert(MemSeries::new(r, labels, &mut self.symbols));
        let series = &self.series;
        self.by_ref.insert_unique(ref_hash(r), slot, |&s| {
            series.get(s).map_or(0, |x| ref_hash(x.r))
        });
        let upper = upper_half(hash);
        self.by_hash
            .insert_unique(table_hash_of_half(upper), (upper, slot), |e| {
                table_hash_of_half(e.0)
            });
        self.postings.add(r, labels);
        true
    }

    /// Stores a sample that was validated (or is replayed); returns what happened.
    fn store(&mut self, r: u64, t: i64, v: f64, chunk_range: i64) -> Option<Stored> {
        let s = self.get_mut_aliased(r)?;
        let stored = s.store(t, v, chunk_range);
        if stored != Stored::Duplicate {
            self.note_stored(t, t, 1);
        }
        Some(stored)
    }

    /// Stores validated samples, grouped by series (one series lookup per run of samples).
    fn store_all(&mut self, samples: &[RefSample], chunk_range: i64) {
        let (mut n, mut min, mut max) = (0u64, i64::MAX, i64::MIN);
        for run in samples.chunk_by(|a, b| a.series_ref == b.series_ref) {
            let Some(s) = self.get_mut_aliased(run[0].series_ref) else {
                continue;
            };
            for x in run {
                if s.store(x.t, x.v, chunk_range) != Stored::Duplicate {
                    n += 1;
                    min = min.min(x.t);
                    max = max.max(x.t);
                }
            }
        }
        if n > 0 {
            self.note_stored(min, max, n);
        }
    }

    fn note_stored(&mut self, min: i64, max: i64, n: u64) {
        self.num_samples += n;
        self.min_time = Some(self.min_time.map_or(min, |m| m.min(min)));
        self.max_time = Some(self.max_time.map_or(max, |m| m.max(max)));
    }
}

/// Serialized append state: the WAL and the next series reference.
struct Appender {
    wal: Wal,
    next_ref: u64,
}

/// The in-memory head of a TSDB with its WAL. `Send + Sync`; share it behind an `Arc`.
pub struct Head {
    dir: PathBuf,
    opts: HeadOptions,
    appender: Mutex<Appender>,
    /// Bytes of WAL known to be on disk (group commit).
    synced: Mutex<u64>,
    data: RwLock<HeadData>,
    truncating: Mutex<()>,
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field("dir", &self.dir)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Per-series state while a batch is validated.
#[derive(Clone, Copy)]
struct Pending {
    last: Option<Sample>,
}

impl Head {
    /// Opens the head in `dir` (WAL in `dir/wal`), replaying the WAL into memory. A torn or
    /// corrupt WAL tail is reported in the [`ReplayReport`] and removed.
    pub fn open(dir: &Path, opts: HeadOptions) -> Result<(Head, ReplayReport), HeadError> {
        if opts.out_of_order_window_ms < 0 || opts.chunk_range_ms <= 0 {
            return Err(HeadError::InvalidOptions(format!(
                "out_of_order_window_ms {} must be >= 0 and chunk_range_ms {} > 0",
                opts.out_of_order_window_ms, opts.chunk_range_ms
            )));
        }
        let started = Instant::now();
        let replay_err = |source| HeadError::Replay {
            dir: dir.to_owned(),
            source,
        };
        let (wal, mut replay) =
            Wal::open(&dir.join("wal"), opts.wal.clone()).map_err(replay_err)?;
        let mut data = HeadData {
            min_valid_time: i64::MIN,
            ..Default::default()
        };
        let mut report = ReplayReport {
            checkpoint: replay.checkpoint,
            ..Default::default()
        };
        let mut next_ref = 1u64;
        for rec in replay.by_ref() {
            match rec.map_err(replay_err)? {
                Record::Series(series) => {
                    for s in series {
                        next_ref = next_ref.max(s.series_ref + 1);
                        if data.insert_series(s.series_ref, &s.labels) {
                            report.series += 1;
                        }
                    }
                }
                Record::Samples(samples) => {
                    for s in samples {
                        match data.store(s.series_ref, s.t, s.v, opts.chunk_range_ms) {
                            Some(Stored::Duplicate) => {}
                            Some(_) => report.samples += 1,
                            None => report.unknown_series_samples += 1,
                        }
                    }
                }
            }
        }
        report.records = replay.records_read();
        report.corruption = replay.corruption().cloned();
        report.duration = started.elapsed();
        tracing::info!(
            dir = %dir.display(),
            series = report.series,
            samples = report.samples,
            records = report.records,
            ms = report.duration.as_millis() as u64,
            "head WAL replayed"
        );
        let head = Head {
            dir: dir.to_owned(),
            opts,
            appender: Mutex::new(Appender { wal, next_ref }),
            synced: Mutex::new(0),
            data: RwLock::new(data),
            truncating: Mutex::new(()),
        };
        Ok((head, report))
    }

    /// The head's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a batch of owned series: [`Head::append_refs`] without a series limit.
    pub fn append(&self, batch: &[(Labels, Vec<Sample>)]) -> Result<AppendSummary, HeadError> {
        let refs: Vec<Vec<LabelRef<'_>>> = batch.iter().map(|(l, _)| l.refs()).collect();
        let batch: Vec<SeriesSamples<'_>> = refs
            .iter()
            .zip(batch)
            .map(|(l, (_, s))| (l.as_slice(), s.as_slice()))
            .collect();
        self.append_refs(&batch, 0)
    }

    /// Stores a batch. Labels are borrowed (sorted by name, names unique): a series the head
    /// holds is found without building owned labels. New series are logged to the WAL before
    /// their samples, and the WAL is synced before this returns `Ok`: every sample counted in
    /// `samples_appended` survives a crash. Rejected samples (out of order beyond the window, a
    /// new value for a stored timestamp, older than the head accepts) are counted per series;
    /// the rest of the batch is stored. With `max_series > 0`, a series the head does not hold
    /// is refused (listed in `series_limited`) once the head holds that many series. A WAL
    /// error fails the whole call and stores nothing.
    ///
    /// Blocks on disk I/O (`write` + `fdatasync`): call it from `spawn_blocking` in async code.
    pub fn append_refs(
        &self,
        batch: &[SeriesSamples<'_>],
        max_series: usize,
    ) -> Result<AppendSummary, HeadError> {
        let mut summary = AppendSummary::default();
        let wal_err = |source| HeadError::Wal {
            dir: self.dir.clone(),
            source,
        };
        let target = {
            let mut app = lock(&self.appender);
            let window = self.opts.out_of_order_window_ms;
            let mut new_series: Vec<RefSeries> = Vec::new();
            let mut new_hashes: Vec<u64> = Vec::new();
            let mut new_by_hash: RefMap<Vec<usize>> = RefMap::default();
            let mut pending: RefMap<Pending> = RefMap::default();
            pending.reserve(batch.len());
            let mut samples: Vec<RefSample> =
                Vec::with_capacity(batch.iter().map(|b| b.1.len()).sum());
            let mut packed: Vec<u8> = Vec::with_capacity(batch.len() * 112);
            let mut ends: Vec<usize> = Vec::with_capacity(batch.len());
            for (l, _) in batch {
                pack(l, &mut packed);
                ends.push(packed.len());
            }
            let key = |i: usize| {
                let start = if i == 0 { 0 } else { ends[i - 1] };
                &packed[start..ends[i]]
            };
            // Batch index of each new series.
            let mut new_index: Vec<usize> = Vec::new();
            {
                let data = read(&self.data);
                // Most series exist. Their lookups are cache misses (label hash → reference →
                // series → label symbols); done as passes of independent iterations over the
                // batch, the processor overlaps the misses instead of waiting on each in turn.
                let hashes: Vec<u64> = (0..batch.len()).map(|i| hash_packed(key(i))).collect();
                let firsts: Vec<Option<u32>> = hashes
                    .iter()
                    .map(|&h| {
                        let upper = upper_half(h);
                        data.by_hash
                            .find(table_hash_of_half(upper), |e| e.0 == upper)
                            .map(|e| e.1)
                    })
                    .collect();
                let found: Vec<Option<(u64, &MemSeries)>> = firsts
                    .iter()
                    .map(|slot| slot.and_then(|slot| data.series.get(slot).map(|s| (s.r, s))))
                    .collect();
                let found: Vec<Option<(u64, &MemSeries)>> = found
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| f.filter(|(_, s)| s.labels.is(key(i), &data.symbols)))
                    .collect();
                for (index, &(labels, batch_samples)) in batch.iter().enumerate() {
                    if batch_samples.is_empty() {
                        continue;
                    }
                    let hash = hashes[index];
                    let (r, existing) = match found[index].or_else(|| data.lookup(key(index), hash))
                    {
                        Some((r, s)) => (r, Some(s)),
                        None => {
                            let known = new_by_hash.get(&hash).and_then(|ix| {
                                ix.iter()
                                    .map(|&i| &new_series[i])
                                    .find(|s| same_labels(&s.labels, labels))
                                    .map(|s| s.series_ref)
                            });
                            match known {
                                Some(r) => (r, None),
                                None => {
                                    if max_series > 0
                                        && data.series.len() + new_series.len() >= max_series
                                    {
                                        summary.series_limited.push(index);
                                        continue;
                                    }
                                    let r = app.next_ref;
                                    app.next_ref += 1;
                                    new_by_hash.entry(hash).or_default().push(new_series.len());
                                    new_hashes.push(hash);
                                    new_index.push(index);
                                    new_series.push(RefSeries {
                                        series_ref: r,
                                        labels: Labels::from_refs(labels),
                                    });
                                    (r, None)
                                }
                            }
                        }
                    };
                    let p = pending.entry(r).or_insert_with(|| Pending {
                        last: existing.and_then(MemSeries::last),
                    });
                    let mut rejection: Option<SeriesRejection> = None;
                    for &(t, v) in batch_samples {
                        let verdict =
                            check(p, existing, &samples, r, t, v, window, data.min_valid_time);
                        match verdict {
                            Ok(true) => {
                                if p.last.is_none_or(|(lt, _)| t > lt) {
                                    p.last = Some((t, v));
                                }
                                samples.push(RefSample {
                                    series_ref: r,
                                    t,
                                    v,
                                });
                            }
                            Ok(false) => summary.samples_duplicate += 1,
                            Err(reason) => {
                                let rej = rejection.get_or_insert_with(|| SeriesRejection {
                                    index,
                                    counts: Vec::new(),
                                    message: reject_message(
                                        reason,
                                        labels,
                                        t,
                                        p.last,
                                        window,
                                        data.min_valid_time,
                                    ),
                                });
                                match rej.counts.iter_mut().find(|c| c.0 == reason) {
                                    Some(c) => c.1 += 1,
                                    None => rej.counts.push((reason, 1)),
                                }
                            }
                        }
                    }
                    summary.rejected.extend(rejection);
                }
            }
            let mut records = Vec::with_capacity(2);
            let created = new_series.len();
            if !new_series.is_empty() {
                records.push(Record::Series(new_series));
            }
            let n_samples = samples.len();
            if !samples.is_empty() {
                records.push(Record::Samples(samples));
            }
            if records.is_empty() {
                // Nothing new, but accepted duplicates may match samples another appender logged
                // and has not synced yet: wait for what is logged so far.
                let target = app.wal.logged_bytes();
                drop(app);
                self.wait_durable(target).map_err(wal_err)?;
                return Ok(summary);
            }
            app.wal.log(&records).map_err(wal_err)?;
            let target = app.wal.logged_bytes();
            let mut data = write(&self.data);
            for rec in records {
                match rec {
                    Record::Series(s) => {
                        for ((s, hash), &i) in s.into_iter().zip(&new_hashes).zip(&new_index) {
                            data.insert_series_packed(s.series_ref, &s.labels, key(i), *hash);
                        }
                    }
                    Record::Samples(s) => data.store_all(&s, self.opts.chunk_range_ms),
                }
            }
            summary.series_created = created as u64;
            summary.samples_appended = n_samples as u64;
            target
        };
        self.wait_durable(target).map_err(wal_err)?;
        Ok(summary)
    }

    /// Group commit: returns once WAL bytes up to `target` are on disk, syncing if no one else
    /// already did.
    fn wait_durable(&self, target: u64) -> Result<(), WalError> {
        let mut synced = lock(&self.synced);
        if *synced >= target {
            return Ok(());
        }
        let point = lock(&self.appender).wal.sync_point();
        if let Some(point) = point {
            point.sync()?;
            *synced = (*synced).max(point.upto());
        }
        Ok(())
    }

    /// Series matching all `matchers` with their samples in `[mint, maxt]` (both inclusive),
    /// sorted by labels; series without samples in the range are left out.
    pub fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
        let snaps = {
            let data = read(&self.data);
            let candidates: Vec<u64> = match data.postings.select(matchers) {
                Some(refs) => refs,
                None => data.series.iter().map(|(_, s)| s.r).collect(),
            };
            candidates
                .into_iter()
                .filter_map(|r| data.get(r))
                .filter(|s| {
                    matchers
                        .iter()
                        .all(|m| m.matches(s.labels.get(&m.name, &data.symbols).unwrap_or("")))
                })
                .map(|s| s.snapshot(mint, maxt, &data.symbols))
                .collect::<Vec<_>>()
        };
        let mut out: Vec<Series> = snaps
            .into_iter()
            .filter_map(|s| {
                let samples = s.samples(mint, maxt);
                (!samples.is_empty()).then_some(Series {
                    labels: s.labels,
                    samples,
                })
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Rejects samples older than `t` from now on (as [`RejectReason::SampleOutOfBounds`]). The
    /// limit is not persisted: after a restart, the owner sets it from the newest block already
    /// cut (Prometheus does the same), so the head does not take samples that block covers.
    pub fn set_min_valid_time(&self, t: i64) {
        let mut data = write(&self.data);
        data.min_valid_time = data.min_valid_time.max(t);
    }

    /// Label names of the series in the head, sorted.
    pub fn label_names(&self) -> Vec<String> {
        read(&self.data).postings.names()
    }

    /// Values of label `name` in the head, sorted.
    pub fn label_values(&self, name: &str) -> Vec<String> {
        read(&self.data).postings.values(name)
    }

    /// Earliest sample timestamp held.
    pub fn min_time(&self) -> Option<i64> {
        read(&self.data).min_time
    }

    /// Latest sample timestamp held.
    pub fn max_time(&self) -> Option<i64> {
        read(&self.data).max_time
    }

    /// Number of series held.
    pub fn num_series(&self) -> usize {
        read(&self.data).series.len()
    }

    /// Number of samples held.
    pub fn num_samples(&self) -> u64 {
        read(&self.data).num_samples
    }

    /// Approximate bytes of memory the head's series, chunks and index use (walks all series).
    pub fn memory_bytes(&self) -> usize {
        self.memory_usage().total()
    }

    /// [`Head::memory_bytes`], by part.
    pub fn memory_usage(&self) -> HeadMemory {
        let data = read(&self.data);
        HeadMemory {
            series_heap: data.series.iter().map(|(_, s)| s.heap_bytes()).sum(),
            series_slots: data.series.memory_bytes(),
            // 16-byte slots and a control byte each.
            // 4- and 8-byte entries and a control byte each.
            maps: data.by_ref.capacity() * 5 + data.by_hash.capacity() * 9,
            postings: data.postings.memory_bytes(),
            symbols: data.symbols.memory_bytes(),
        }
    }

    /// All series with their samples in `[mint, maxt)`, sorted by labels, for cutting a block.
    pub fn series_for_block(&self, mint: i64, maxt: i64) -> Vec<(Labels, Vec<Sample>)> {
        if maxt <= mint {
            return Vec::new();
        }
        let snaps: Vec<_> = {
            let data = read(&self.data);
            data.series
                .iter()
                .map(|(_, s)| s.snapshot(mint, maxt - 1, &data.symbols))
                .collect()
        };
        let mut out: Vec<(Labels, Vec<Sample>)> = snaps
            .into_iter()
            .filter_map(|s| {
                let samples = s.samples(mint, maxt - 1);
                (!samples.is_empty()).then_some((s.labels, samples))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Drops chunks entirely before `t` and series left without samples, makes samples older
    /// than `t` out of bounds for later appends, and checkpoints the WAL (keeping live series
    /// and samples at or after `t`). Call after the data before `t` was written to a block.
    pub fn truncate_before(&self, t: i64) -> Result<(), HeadError> {
        let _one_at_a_time = lock(&self.truncating);
        let wal_err = |source| HeadError::Wal {
            dir: self.dir.clone(),
            source,
        };
        let (plan, live) = {
            let mut app = lock(&self.appender);
            let mut data = write(&self.data);
            data.min_valid_time = data.min_valid_time.max(t);
            let mut dropped = 0u64;
            let mut removed: HashMap<u64, Labels> = HashMap::new();
            let mut removed_hashes: Vec<(u64, u64)> = Vec::new();
            let HeadData {
                series, symbols, ..
            } = &mut *data;
            for (_, s) in series.iter_mut() {
                dropped += s.truncate_before(t);
                if s.is_empty() {
                    removed.insert(s.r, s.labels.to_labels(symbols));
                    removed_hashes.push((s.r, s.labels.hash(symbols)));
                }
            }
            for (r, hash) in removed_hashes {
                data.remove_series_hashed(r, hash);
            }
            data.postings.remove(&removed);
            let HeadData {
                aliases,
                by_ref,
                series,
                ..
            } = &mut *data;
            aliases.retain(|_, &mut target| {
                by_ref
                    .find(ref_hash(target), |&slot| {
                        series.get(slot).is_some_and(|s| s.r == target)
                    })
                    .is_some()
            });
            data.num_samples -= dropped.min(data.num_samples);
            data.min_time = data.series.iter().filter_map(|(_, s)| s.min_time()).min();
            if data.series.len() == 0 {
                data.max_time = None;
            }
            let live: HashSet<u64> = data
                .series
                .iter()
                .map(|(_, s)| s.r)
                .chain(data.aliases.keys().copied())
                .collect();
            let plan = app.wal.begin_checkpoint().map_err(wal_err)?;
            (plan, live)
        };
        if let Some(plan) = plan {
            let stats = plan.write(|r| live.contains(&r), t).map_err(wal_err)?;
            plan.finish().map_err(wal_err)?;
            tracing::info!(
                dir = %self.dir.display(),
                checkpoint = stats.index,
                series = stats.series_kept,
                samples = stats.samples_kept,
                "head truncated and WAL checkpointed"
            );
        }
        Ok(())
    }
}

/// Validates one sample against the series' state: `Ok(true)` to store, `Ok(false)` for an
/// identical duplicate (accepted, not stored again), `Err` to reject.
#[allow(clippy::too_many_arguments)]
fn check(
    p: &Pending,
    existing: Option<&MemSeries>,
    batch: &[RefSample],
    r: u64,
    t: i64,
    v: f64,
    window: i64,
    min_valid: i64,
) -> Result<bool, RejectReason> {
    if t < min_valid {
        return Err(RejectReason::SampleOutOfBounds);
    }
    let Some((lt, lv)) = p.last else {
        return Ok(true);
    };
    if t > lt {
        return Ok(true);
    }
    if t == lt {
        return if v.to_bits() == lv.to_bits() {
            Ok(false)
        } else {
            Err(RejectReason::DuplicateTimestamp)
        };
    }
    if window == 0 || t < lt.saturating_sub(window) {
        return Err(RejectReason::SampleOutOfOrder);
    }
    // Inside the window: compare with stored late samples, in-order samples of this batch and
    // stored in-order samples at the same timestamp.
    let same_t = existing
        .and_then(|s| {
            let ooo = s.ooo();
            ooo.binary_search_by_key(&t, |x| x.0).ok().map(|i| ooo[i].1)
        })
        .or_else(|| {
            batch
                .iter()
                .rev()
                .find(|s| s.series_ref == r && s.t == t)
                .map(|s| s.v)
        })
        .or_else(|| existing.and_then(|s| stored_value_at(s, t)));
    match same_t {
        Some(old) if old.to_bits() == v.to_bits() => Ok(false),
        Some(_) => Err(RejectReason::DuplicateTimestamp),
        None => Ok(true),
    }
}

/// The in-order sample stored at `t`, if any (decodes the chunk that may hold it).
fn stored_value_at(s: &MemSeries, t: i64) -> Option<f64> {
    let snap = s.data_snapshot(t, t);
    snap.samples(t, t).first().map(|x| x.1)
}

fn reject_message(
    reason: RejectReason,
    labels: &[LabelRef<'_>],
    t: i64,
    last: Option<Sample>,
    window: i64,
    min_valid: i64,
) -> String {
    let latest = last.map_or_else(|| "none".to_string(), |l| l.0.to_string());
    let labels = DisplayRefs(labels);
    match reason {
        RejectReason::SampleOutOfOrder => format!(
            "the sample has been rejected because another sample with a more recent timestamp has already been ingested and {} (err-mimir-sample-out-of-order). The affected sample has timestamp {t} and is from series {labels}; the series' latest timestamp is {latest}",
            if window == 0 {
                "out-of-order samples are not allowed".to_string()
            } else {
                format!("the sample is older than the out-of-order window of {window} ms")
            }
        ),
        RejectReason::DuplicateTimestamp => format!(
            "the sample has been rejected because another sample with the same timestamp, but a different value, has already been ingested (err-mimir-sample-duplicate-timestamp). The affected sample has timestamp {t} and is from series {labels}; the series' latest timestamp is {latest}"
        ),
        RejectReason::SampleOutOfBounds => format!(
            "the sample has been rejected because its timestamp {t} is older than the oldest the head accepts ({min_valid}) (err-mimir-sample-timestamp-too-old). The affected sample is from series {labels}; the series' latest timestamp is {latest}"
        ),
    }
}

#[cfg(test)]
mod tests;
