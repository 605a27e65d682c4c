//! The head's write-ahead log: numbered segment files of 32 KiB pages holding CRC-checked record
//! fragments, in the layout of Prometheus' `wlog` package (see `docs/format.md`, section WAL).
//!
//! Lifecycle: [`Wal::open`] returns the log and a [`Replay`] of everything in it (latest
//! checkpoint first, then the segments after it). The replay must be read to its end before the
//! first [`Wal::log`]: a torn or corrupt tail it finds is reported, truncated away and every
//! record before it returned, and logging only starts once that repair is done. Writing always
//! starts a fresh segment after the last existing one. [`Wal::checkpoint`] compacts all closed
//! segments into `checkpoint.NNNNNNNN` and deletes them.

mod page;
mod reader;
pub mod record;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

pub use record::{Record, RefSample, RefSeries};

use crate::encoding::crc32c;
use page::{FRAG_FIRST, FRAG_FULL, FRAG_LAST, FRAG_MIDDLE, SNAPPY_FLAG};
pub use page::{HEADER_SIZE, PAGE_SIZE};
use reader::{ReadError, SegmentReader};

/// Default maximum size of a segment file.
pub const DEFAULT_SEGMENT_SIZE: usize = 128 * 1024 * 1024;
const CHECKPOINT_PREFIX: &str = "checkpoint.";

/// Per-record compression of the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Records stored as encoded.
    None,
    /// Each record compressed with Snappy's raw block format when that makes it smaller.
    #[default]
    Snappy,
}

impl FromStr for Compression {
    type Err = WalError;

    fn from_str(s: &str) -> Result<Self, WalError> {
        match s {
            "snappy" => Ok(Compression::Snappy),
            "none" => Ok(Compression::None),
            other => Err(WalError::InvalidOptions(format!(
                "compression {other:?}: expected snappy or none"
            ))),
        }
    }
}

/// How the WAL writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// Maximum size of a segment file in bytes; a multiple of [`PAGE_SIZE`]. A single record
    /// larger than a segment gets a segment of its own that exceeds this.
    pub segment_size: usize,
    /// Record compression.
    pub compression: Compression,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size: DEFAULT_SEGMENT_SIZE,
            compression: Compression::Snappy,
        }
    }
}

/// A WAL operation failed.
#[derive(Debug, Error)]
pub enum WalError {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The options cannot be used.
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
    /// The segment numbers have a gap, so records in the middle of the log are missing.
    #[error("WAL {dir}: segment {missing:08} is missing (segments must be consecutive)")]
    MissingSegment {
        /// The WAL directory.
        dir: PathBuf,
        /// The first missing segment number.
        missing: u32,
    },
    /// A checkpoint, which is written completely before it is renamed into place, is damaged.
    #[error("corrupt checkpoint segment {path} at offset {offset}: {reason}")]
    CorruptCheckpoint {
        /// The checkpoint's segment file.
        path: PathBuf,
        /// Offset of the damaged record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment that was already replayed became unreadable while checkpointing.
    #[error("corrupt WAL segment {path} at offset {offset} while checkpointing: {reason}")]
    CorruptSegment {
        /// The segment file.
        path: PathBuf,
        /// Offset of the damaged record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// [`Wal::log`] was called before the [`Replay`] was read to its end.
    #[error("WAL {dir}: cannot log before the replay has been read to its end")]
    ReplayPending {
        /// The WAL directory.
        dir: PathBuf,
    },
    /// An earlier write failed and the segment could not be cut back to its last good record.
    #[error("WAL {dir}: unusable after a failed write that could not be undone")]
    Poisoned {
        /// The WAL directory.
        dir: PathBuf,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The torn or corrupt tail found during replay, which was truncated away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// Number of the segment holding the damage.
    pub segment: u32,
    /// Path of that segment.
    pub path: PathBuf,
    /// Offset in the segment of the first record that could not be read; the segment was cut
    /// back to this length.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
    /// Bytes removed from the damaged segment.
    pub truncated_bytes: u64,
    /// Later segments that were deleted because they followed the damage.
    pub removed_segments: Vec<u32>,
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "segment {:08} ({}) at offset {}: {}; truncated {} bytes",
            self.segment,
            self.path.display(),
            self.offset,
            self.reason,
            self.truncated_bytes
        )?;
        if !self.removed_segments.is_empty() {
            write!(f, ", removed later segments {:?}", self.removed_segments)?;
        }
        Ok(())
    }
}

/// Where a replayed file comes from.
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    /// `Some(n)` for WAL segment `n`, `None` for a checkpoint segment.
    segment: Option<u32>,
}

/// The records of a WAL in log order, read lazily; see the module doc for the repair contract.
pub struct Replay {
    dir: PathBuf,
    sources: VecDeque<Source>,
    current: Option<(Source, SegmentReader)>,
    corruption: Option<Corruption>,
    done: Arc<AtomicBool>,
    /// Latest checkpoint the replay starts from.
    pub checkpoint: Option<u32>,
    records: u64,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("dir", &self.dir)
            .field("checkpoint", &self.checkpoint)
            .field("pending_files", &self.sources.len())
            .field("records", &self.records)
            .field("corruption", &self.corruption)
            .finish()
    }
}

impl Replay {
    /// The torn or corrupt tail that was found and removed, once the replay reached it.
    pub fn corruption(&self) -> Option<&Corruption> {
        self.corruption.as_ref()
    }

    /// Records returned so far.
    pub fn records_read(&self) -> u64 {
        self.records
    }

    /// Whether the replay was read to its end, so the WAL accepts writes.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn finish(&mut self) {
        self.current = None;
        self.sources.clear();
        self.done.store(true, Ordering::Release);
    }

    /// Cuts the damaged segment back to `offset`, deletes every later segment and records it.
    fn repair(&mut self, src: Source, offset: u64, reason: String) -> Result<(), WalError> {
        let segment = src.segment.unwrap_or_default();
        let len = fs::metadata(&src.path)
            .map_err(io_err("stat damaged WAL segment", &src.path))?
            .len();
        let f = OpenOptions::new()
            .write(true)
            .open(&src.path)
            .map_err(io_err("open damaged WAL segment", &src.path))?;
        f.set_len(offset)
            .map_err(io_err("truncate damaged WAL segment", &src.path))?;
        f.sync_all()
            .map_err(io_err("sync truncated WAL segment", &src.path))?;
        let mut removed = Vec::new();
        for later in self.sources.drain(..) {
            fs::remove_file(&later.path)
                .map_err(io_err("remove WAL segment after damage", &later.path))?;
            removed.extend(later.segment);
        }
        sync_dir(&self.dir)?;
        let c = Corruption {
            segment,
            path: src.path,
            offset,
            reason,
            truncated_bytes: len.saturating_sub(offset),
            removed_segments: removed,
        };
        tracing::warn!(wal = %self.dir.display(), "WAL replay stopped at a torn or corrupt tail, which was removed: {c}");
        self.corruption = Some(c);
        Ok(())
    }
}

impl Iterator for Replay {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let Some(src) = self.sources.pop_front() else {
                    self.finish();
                    return None;
                };
                match SegmentReader::open(&src.path) {
                    Ok(r) => self.current = Some((src, r)),
                    Err(e) => return Some(Err(io_err("open WAL segment", &src.path)(e))),
                }
            }
            let (src, reader) = self.current.as_mut()?;
            let failure = match reader.next_record() {
                Ok(Some((offset, bytes))) => match Record::decode(bytes) {
                    Ok(Some(rec)) => {
                        self.records += 1;
                        return Some(Ok(rec));
                    }
                    Ok(None) => continue,
                    Err(e) => (offset, format!("undecodable record: {e} within the record")),
                },
                Ok(None) => {
                    self.current = None;
                    continue;
                }
                Err(ReadError::Io(e)) => {
                    let path = reader.path().to_owned();
                    return Some(Err(WalError::Io {
                        op: "read WAL segment",
                        path,
                        source: e,
                    }));
                }
                Err(ReadError::Corrupt { offset, reason }) => (offset, reason),
            };
            let src = src.clone();
            self.current = None;
            let (offset, reason) = failure;
            if src.segment.is_none() {
                return Some(Err(WalError::CorruptCheckpoint {
                    path: src.path,
                    offset,
                    reason,
                }));
            }
            let res = self.repair(src, offset, reason);
            self.finish();
            return match res {
                Ok(()) => None,
                Err(e) => Some(Err(e)),
            };
        }
    }
}

/// A point up to which logged bytes can be made durable without holding the [`Wal`]: lets many
/// appenders share one `fdatasync` (group commit).
#[derive(Debug, Clone)]
pub struct SyncPoint {
    file: Arc<File>,
    path: PathBuf,
    upto: u64,
}

impl SyncPoint {
    /// Total bytes logged (over the WAL's life in this process) that this sync covers.
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// `fdatasync` of the segment being written; earlier segments were synced when closed.
    pub fn sync(&self) -> Result<(), WalError> {
        self.file
            .sync_data()
            .map_err(io_err("fdatasync WAL segment", &self.path))
    }
}

/// The segment being written.
struct ActiveSegment {
    index: u32,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of the segment, including those still in `Wal::pending`.
    len: u64,
    /// Bytes written to the file.
    written: u64,
}

/// The write side of the log; not internally locked (the head wraps it in a mutex).
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    replay_done: Arc<AtomicBool>,
    active: Option<ActiveSegment>,
    pending: Vec<u8>,
    enc: Vec<u8>,
    comp: Vec<u8>,
    encoder: snap::raw::Encoder,
    logged: u64,
    poisoned: bool,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("opts", &self.opts)
            .field("segment", &self.active.as_ref().map(|a| a.index))
            .field("logged", &self.logged)
            .finish()
    }
}

/// Segment numbers in `dir` (files named by 8 decimal digits), ascending.
fn list_segments(dir: &Path) -> Result<Vec<u32>, WalError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list WAL directory", dir))? {
        let e = e.map_err(io_err("list WAL directory", dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 8
            && name.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = name.parse::<u32>()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Checkpoint numbers in `dir` (complete `checkpoint.NNNNNNNN` directories), ascending.
fn list_checkpoints(dir: &Path) -> Result<Vec<u32>, WalError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list WAL directory", dir))? {
        let e = e.map_err(io_err("list WAL directory", dir))?;
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(CHECKPOINT_PREFIX))
        else {
            continue;
        };
        if rest.len() == 8
            && rest.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = rest.parse::<u32>()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}"))
}

fn checkpoint_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{CHECKPOINT_PREFIX}{n:08}"))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync WAL directory", dir))
}

/// The replay sources of a WAL directory: the latest checkpoint's segments, then the segments
/// after it, which must be consecutive.
fn replay_sources(dir: &Path, checkpoint: Option<u32>) -> Result<VecDeque<Source>, WalError> {
    let mut sources = VecDeque::new();
    if let Some(cp) = checkpoint {
        let cdir = checkpoint_path(dir, cp);
        for n in list_segments(&cdir)? {
            sources.push_back(Source {
                path: segment_path(&cdir, n),
                segment: None,
            });
        }
    }
    let segs: Vec<u32> = list_segments(dir)?
        .into_iter()
        .filter(|&n| checkpoint.is_none_or(|cp| n > cp))
        .collect();
    let mut expect = match (checkpoint, segs.first()) {
        (Some(cp), _) => cp.checked_add(1),
        (None, Some(&first)) => Some(first),
        (None, None) => None,
    };
    for n in segs {
        if Some(n) != expect {
            return Err(WalError::MissingSegment {
                dir: dir.to_owned(),
                missing: expect.unwrap_or(n),
            });
        }
        expect = n.checked_add(1);
        sources.push_back(Source {
            path: segment_path(dir, n),
            segment: Some(n),
        });
    }
    Ok(sources)
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`. Leftovers of an interrupted checkpoint are
    /// cleaned up; the returned [`Replay`] yields every record, and must be read to its end
    /// before anything is logged.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Replay), WalError> {
        if opts.segment_size < PAGE_SIZE || !opts.segment_size.is_multiple_of(PAGE_SIZE) {
            return Err(WalError::InvalidOptions(format!(
                "segment_size {} must be a positive multiple of the page size {PAGE_SIZE}",
                opts.segment_size
            )));
        }
        fs::create_dir_all(dir).map_err(io_err("create WAL directory", dir))?;
        // A checkpoint is renamed into place only when complete: `.tmp` ones are debris.
        for e in fs::read_dir(dir).map_err(io_err("list WAL directory", dir))? {
            let e = e.map_err(io_err("list WAL directory", dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(CHECKPOINT_PREFIX) && name.ends_with(".tmp") {
                fs::remove_dir_all(e.path())
                    .map_err(io_err("remove unfinished checkpoint", &e.path()))?;
            }
        }
        let checkpoint = list_checkpoints(dir)?.last().copied();
        if let Some(cp) = checkpoint {
            // Finish the deletions an interrupted checkpoint left behind.
            remove_covered(dir, cp)?;
        }
        let sources = replay_sources(dir, checkpoint)?;
        let done = Arc::new(AtomicBool::new(sources.is_empty()));
        let replay = Replay {
            dir: dir.to_owned(),
            sources,
            current: None,
            corruption: None,
            done: done.clone(),
            checkpoint,
            records: 0,
        };
        let wal = Wal {
            dir: dir.to_owned(),
            opts,
            replay_done: done,
            active: None,
            pending: Vec::new(),
            enc: Vec::new(),
            comp: Vec::new(),
            encoder: snap::raw::Encoder::new(),
            logged: 0,
            poisoned: false,
        };
        Ok((wal, replay))
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Total bytes written by this process (a monotonic position used for group commit).
    pub fn logged_bytes(&self) -> u64 {
        self.logged
    }

    /// Number of the segment being written, if one was started.
    pub fn active_segment(&self) -> Option<u32> {
        self.active.as_ref().map(|a| a.index)
    }

    fn ensure_writable(&mut self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        if !self.replay_done.load(Ordering::Acquire) {
            return Err(WalError::ReplayPending {
                dir: self.dir.clone(),
            });
        }
        if self.active.is_none() {
            self.start_segment()?;
        }
        Ok(())
    }

    /// Creates the segment after the last existing one (or after the latest checkpoint).
    fn start_segment(&mut self) -> Result<(), WalError> {
        let last_seg = list_segments(&self.dir)?.last().copied();
        let last_cp = list_checkpoints(&self.dir)?.last().copied();
        let index = last_seg.max(last_cp).map_or(0, |n| n + 1);
        let path = segment_path(&self.dir, index);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io_err("create WAL segment", &path))?;
        sync_dir(&self.dir)?;
        self.active = Some(ActiveSegment {
            index,
            path,
            file: Arc::new(file),
            len: 0,
            written: 0,
        });
        Ok(())
    }

    /// Writes out pending bytes, syncs and closes the active segment; the next record starts a
    /// new one.
    fn close_segment(&mut self) -> Result<(), WalError> {
        self.flush_pending()?;
        if let Some(a) = self.active.take() {
            a.file
                .sync_data()
                .map_err(io_err("fdatasync closed WAL segment", &a.path))?;
        }
        Ok(())
    }

    /// Writes the pending bytes to the active segment. On failure, cuts the segment back to its
    /// last complete write so no torn record stays in front of later ones.
    fn flush_pending(&mut self) -> Result<(), WalError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        match (&*a.file).write_all(&self.pending) {
            Ok(()) => {
                a.written += self.pending.len() as u64;
                self.logged += self.pending.len() as u64;
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                self.pending.clear();
                a.len = a.written;
                if a.file.set_len(a.written).is_err() {
                    self.poisoned = true;
                }
                Err(io_err("write WAL segment", &a.path)(e))
            }
        }
    }

    /// Bytes a record could still hold in the active segment, given fragment headers per page.
    fn room(&self, seg_len: u64) -> u64 {
        let page = PAGE_SIZE as u64;
        let header = HEADER_SIZE as u64;
        if seg_len >= self.opts.segment_size as u64 {
            return 0;
        }
        let page_left = page - seg_len % page;
        let mut room = page_left.saturating_sub(header);
        let after = (self.opts.segment_size as u64).saturating_sub(seg_len + page_left);
        room += after / page * (page - header);
        room
    }

    /// Appends one encoded record (in `self.enc`) to the pending bytes, fragmenting it at page
    /// boundaries and moving to a new segment when it does not fit the active one.
    fn add_encoded(&mut self) -> Result<(), WalError> {
        let mut compressed = None;
        if self.opts.compression == Compression::Snappy {
            self.comp
                .resize(snap::raw::max_compress_len(self.enc.len()), 0);
            if let Ok(n) = self.encoder.compress(&self.enc, &mut self.comp)
                && n < self.enc.len()
            {
                compressed = Some(n);
            }
        }
        let (buf, len, flag) = match compressed {
            Some(n) => (std::mem::take(&mut self.comp), n, SNAPPY_FLAG),
            None => {
                let b = std::mem::take(&mut self.enc);
                let n = b.len();
                (b, n, 0)
            }
        };
        let res = self.place(&buf[..len], flag);
        if flag != 0 {
            self.comp = buf;
        } else {
            self.enc = buf;
        }
        res
    }

    fn place(&mut self, data: &[u8], flag: u8) -> Result<(), WalError> {
        let seg_len = self.active.as_ref().map_or(0, |a| a.len);
        if data.len() as u64 > self.room(seg_len) && seg_len > 0 {
            self.close_segment()?;
            self.start_segment()?;
        }
        self.add_fragments(data, flag)
    }

    fn add_fragments(&mut self, mut rest: &[u8], flag: u8) -> Result<(), WalError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mut first = true;
        loop {
            let page_left = PAGE_SIZE - (a.len % PAGE_SIZE as u64) as usize;
            if page_left <= HEADER_SIZE {
                self.pending.resize(self.pending.len() + page_left, 0);
                a.len += page_left as u64;
                continue;
            }
            let n = rest.len().min(page_left - HEADER_SIZE);
            let last = n == rest.len();
            let kind = match (first, last) {
                (true, true) => FRAG_FULL,
                (true, false) => FRAG_FIRST,
                (false, false) => FRAG_MIDDLE,
                (false, true) => FRAG_LAST,
            };
            let (frag, tail) = rest.split_at(n);
            self.pending.push(kind | flag);
            self.pending.extend_from_slice(&(n as u16).to_be_bytes());
            self.pending.extend_from_slice(&crc32c(frag).to_be_bytes());
            self.pending.extend_from_slice(frag);
            a.len += (HEADER_SIZE + n) as u64;
            rest = tail;
            first = false;
            if last {
                return Ok(());
            }
        }
    }

    /// Encodes, writes (one `write` per call) and thereby hands `records` to the OS. Not durable
    /// against power loss until [`Wal::sync`] (or a [`SyncPoint`]) returns.
    pub fn log(&mut self, records: &[Record]) -> Result<(), WalError> {
        self.ensure_writable()?;
        for r in records {
            self.enc.clear();
            r.encode(&mut self.enc);
            self.add_encoded()?;
        }
        self.flush_pending()
    }

    /// Logs already encoded records (see [`record`]), one `write` for all of them.
    pub fn log_encoded(&mut self, encoded: &[&[u8]]) -> Result<(), WalError> {
        self.ensure_writable()?;
        for r in encoded {
            self.enc.clear();
            self.enc.extend_from_slice(r);
            self.add_encoded()?;
        }
        self.flush_pending()
    }

    /// `fdatasync` of the active segment: everything logged so far is on disk.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if let Some(a) = &self.active {
            a.file
                .sync_data()
                .map_err(io_err("fdatasync WAL segment", &a.path))?;
        }
        Ok(())
    }

    /// [`Wal::log`] then [`Wal::sync`]: when this returns `Ok`, the records are on disk.
    pub fn log_and_sync(&mut self, records: &[Record]) -> Result<(), WalError> {
        self.log(records)?;
        self.sync()
    }

    /// What a sync right now would cover; sync it after releasing the WAL's lock.
    pub fn sync_point(&self) -> Option<SyncPoint> {
        self.active.as_ref().map(|a| SyncPoint {
            file: a.file.clone(),
            path: a.path.clone(),
            upto: self.logged,
        })
    }

    /// Closes the active segment (so everything logged so far is in closed segments) and plans
    /// a checkpoint of all closed segments; `None` when there is nothing to checkpoint. The plan
    /// is written without the WAL (other appends may continue) and then finished.
    pub fn begin_checkpoint(&mut self) -> Result<Option<CheckpointPlan>, WalError> {
        if !self.replay_done.load(Ordering::Acquire) {
            return Err(WalError::ReplayPending {
                dir: self.dir.clone(),
            });
        }
        if self.active.as_ref().is_some_and(|a| a.len > 0) {
            self.close_segment()?;
        }
        let active = self.active.as_ref().map(|a| a.index);
        let prev = list_checkpoints(&self.dir)?.last().copied();
        let upto = list_segments(&self.dir)?
            .into_iter()
            .filter(|&n| Some(n) != active && prev.is_none_or(|p| n > p))
            .max();
        Ok(upto.map(|upto| CheckpointPlan {
            dir: self.dir.clone(),
            prev,
            upto,
            opts: self.opts.clone(),
        }))
    }

    /// Rewrites all closed segments (and the previous checkpoint) into `checkpoint.NNNNNNNN`,
    /// keeping series records whose reference `keep_series` accepts and their samples at or
    /// after `before_time`, then deletes the covered segments and older checkpoints.
    pub fn checkpoint(
        &mut self,
        keep_series: impl Fn(u64) -> bool,
        before_time: i64,
    ) -> Result<Option<CheckpointStats>, WalError> {
        let Some(plan) = self.begin_checkpoint()? else {
            return Ok(None);
        };
        let stats = plan.write(keep_series, before_time)?;
        plan.finish()?;
        Ok(Some(stats))
    }
}

/// Deletes segments numbered up to `cp` and checkpoints older than `cp`.
fn remove_covered(dir: &Path, cp: u32) -> Result<Vec<u32>, WalError> {
    let mut removed = Vec::new();
    for n in list_segments(dir)?.into_iter().filter(|&n| n <= cp) {
        let p = segment_path(dir, n);
        fs::remove_file(&p).map_err(io_err("remove checkpointed WAL segment", &p))?;
        removed.push(n);
    }
    for n in list_checkpoints(dir)?.into_iter().filter(|&n| n < cp) {
        let p = checkpoint_path(dir, n);
        fs::remove_dir_all(&p).map_err(io_err("remove old checkpoint", &p))?;
    }
    sync_dir(dir)?;
    Ok(removed)
}

/// What a checkpoint kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// The checkpoint's number: the last segment it covers.
    pub index: u32,
    /// Series definitions kept.
    pub series_kept: u64,
    /// Series definitions dropped.
    pub series_dropped: u64,
    /// Samples kept.
    pub samples_kept: u64,
    /// Samples dropped.
    pub samples_dropped: u64,
}

/// A checkpoint to write: segments after the previous checkpoint up to `upto`, all closed.
#[derive(Debug, Clone)]
pub struct CheckpointPlan {
    dir: PathBuf,
    prev: Option<u32>,
    upto: u32,
    opts: WalOptions,
}

impl CheckpointPlan {
    /// Number of the last segment the checkpoint covers.
    pub fn upto(&self) -> u32 {
        self.upto
    }

    /// Writes `checkpoint.NNNNNNNN` (through a `.tmp` directory renamed when complete).
    pub fn write(
        &self,
        keep_series: impl Fn(u64) -> bool,
        before_time: i64,
    ) -> Result<CheckpointStats, WalError> {
        let final_dir = checkpoint_path(&self.dir, self.upto);
        let tmp = self
            .dir
            .join(format!("{CHECKPOINT_PREFIX}{:08}.tmp", self.upto));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err("remove unfinished checkpoint", &tmp))?;
        }
        let mut stats = CheckpointStats {
            index: self.upto,
            ..Default::default()
        };
        let (mut out, _) = Wal::open(&tmp, self.opts.clone())?;
        let mut sources = replay_sources(&self.dir, self.prev)?;
        sources.retain(|s| s.segment.is_none_or(|n| n <= self.upto));
        let mut batch: Vec<Record> = Vec::new();
        for src in sources {
            let mut r =
                SegmentReader::open(&src.path).map_err(io_err("open WAL segment", &src.path))?;
            loop {
                let (offset, bytes) = match r.next_record() {
                    Ok(Some(x)) => x,
                    Ok(None) => break,
                    Err(ReadError::Io(e)) => return Err(io_err("read WAL segment", &src.path)(e)),
                    Err(ReadError::Corrupt { offset, reason }) => {
                        return Err(corrupt_source(&src, offset, reason));
                    }
                };
                let rec = match Record::decode(bytes) {
                    Ok(Some(rec)) => rec,
                    Ok(None) => continue,
                    Err(e) => return Err(corrupt_source(&src, offset, e.to_string())),
                };
                match rec {
                    Record::Series(mut s) => {
                        let n = s.len() as u64;
                        s.retain(|s| keep_series(s.series_ref));
                        stats.series_kept += s.len() as u64;
                        stats.series_dropped += n - s.len() as u64;
                        if !s.is_empty() {
                            batch.push(Record::Series(s));
                        }
                    }
                    Record::Samples(mut s) => {
                        let n = s.len() as u64;
                        s.retain(|s| s.t >= before_time && keep_series(s.series_ref));
                        stats.samples_kept += s.len() as u64;
                        stats.samples_dropped += n - s.len() as u64;
                        if !s.is_empty() {
                            batch.push(Record::Samples(s));
                        }
                    }
                }
                if batch.len() >= 64 {
                    out.log(&batch)?;
                    batch.clear();
                }
            }
        }
        out.log(&batch)?;
        out.close_segment()?;
        drop(out);
        sync_dir(&tmp)?;
        fs::rename(&tmp, &final_dir).map_err(io_err("rename finished checkpoint", &final_dir))?;
        sync_dir(&self.dir)?;
        Ok(stats)
    }

    /// Deletes the segments the written checkpoint covers and older checkpoints; returns the
    /// removed segment numbers.
    pub fn finish(self) -> Result<Vec<u32>, WalError> {
        remove_covered(&self.dir, self.upto)
    }
}

fn corrupt_source(src: &Source, offset: u64, reason: String) -> WalError {
    match src.segment {
        Some(_) => WalError::CorruptSegment {
            path: src.path.clone(),
            offset,
            reason,
        },
        None => WalError::CorruptCheckpoint {
            path: src.path.clone(),
            offset,
            reason,
        },
    }
}

#[cfg(test)]
mod tests;
