//! Cold compression (`compression.cold`) in independently decodable frames, so a compressed
//! block file can still be read by byte range: [`write_framed`] compresses a file frame by frame,
//! the block's frame table ([`FrameTable`], `frames.json`) records each frame's compressed size,
//! and [`FramedReadAt`] serves plain byte ranges by fetching and decoding only the frames that
//! hold them (through any [`ReadAt`]: a local file, or a bucket object behind the page cache).
//!
//! Every frame is a complete stream of its format — a gzip member, or a snappy framing-format
//! stream with its own stream identifier — so the whole file is still one valid stream for
//! standard tools (`zcat`, multi-member gzip readers, snappy framing decoders).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::readat::ReadAt;

/// Name of a compressed block's frame table, beside its `meta.json`.
pub const FRAMES_FILE: &str = "frames.json";

/// Plain bytes per frame: large enough that gzip loses about 1 % against one stream per file
/// (measured on node_exporter chunks: 64 KiB frames lose 4 %), small enough that reading one
/// series entry decodes a quarter of a MiB at most.
pub const DEFAULT_FRAME_BYTES: u64 = 256 * 1024;

/// Compression of a block's `index` and chunk segment files in object storage (`cold`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain Prometheus files, readable by every Prometheus/Mimir tool.
    None,
    /// Each frame a gzip member (the file is a multi-member gzip stream).
    #[default]
    Gzip,
    /// Each frame a snappy framing-format stream (the file is one valid framed stream).
    Snappy,
}

impl Compression {
    /// The name used in config and meta.json.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
        }
    }

    /// Parses `none`, `gzip` or `snappy` (empty means none, as on plain Prometheus blocks).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "none" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "snappy" => Some(Compression::Snappy),
            _ => None,
        }
    }
}

/// Reading a framed file failed.
#[derive(Debug, Error)]
pub enum FramedError {
    /// The frame table does not describe the file.
    #[error("frame table of {name}: {reason}")]
    Table {
        /// The compressed file (path, or bucket location and key).
        name: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A frame does not decode to the bytes the table promises.
    #[error("frame {frame} (compressed bytes {}..{}) of {name}: {source}", range.start, range.end)]
    Decode {
        /// The compressed file.
        name: PathBuf,
        /// Frame number, from 0.
        frame: usize,
        /// Its compressed byte range.
        range: Range<u64>,
        /// What the decoder said.
        source: io::Error,
    },
}

/// A compressed block's frame table (`frames.json`): per data file, the plain size and the
/// compressed size of each frame, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameTable {
    /// Format version; 1.
    pub version: u32,
    /// Compression of every frame.
    pub compression: Compression,
    /// Plain bytes per frame (the last frame of a file may be shorter).
    pub frame_bytes: u64,
    /// Per data file (path relative to the block, e.g. `chunks/000001`).
    pub files: BTreeMap<String, FileFrames>,
}

/// The frames of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFrames {
    /// Size of the plain file.
    pub plain_bytes: u64,
    /// Compressed size of each frame.
    pub frames: Vec<u32>,
}

impl FileFrames {
    /// Size of the compressed file.
    pub fn compressed_bytes(&self) -> u64 {
        self.frames.iter().map(|&n| u64::from(n)).sum()
    }
}

/// Compresses one frame as a complete stream of `c`, appended to `out`.
pub fn compress_frame(c: Compression, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    match c {
        Compression::None => out.extend_from_slice(plain),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            e.write_all(plain)?;
            e.finish()?;
        }
        Compression::Snappy => {
            let mut e = snap::write::FrameEncoder::new(out);
            e.write_all(plain)?;
            e.into_inner()
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
    }
    Ok(())
}

/// Decodes one frame, which must hold exactly `plain_len` bytes.
pub fn decode_frame(c: Compression, data: &[u8], plain_len: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(plain_len);
    // One byte more than expected is read, so a frame holding too much is noticed.
    let limit = plain_len as u64 + 1;
    match c {
        Compression::None => out.extend_from_slice(data),
        Compression::Gzip => {
            // A single member: anything after it would belong to the next frame.
            let mut d = flate2::read::GzDecoder::new(data).take(limit);
            d.read_to_end(&mut out)?;
        }
        Compression::Snappy => {
            snap::read::FrameDecoder::new(data)
                .take(limit)
                .read_to_end(&mut out)?;
        }
    }
    if out.len() != plain_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decodes to {} bytes, the table says {plain_len}", out.len()),
        ));
    }
    Ok(out)
}

/// Decoder of a whole compressed file, frame after frame (also a file compressed as one
/// stream, as rimir wrote them before frames).
pub fn stream_decoder<'a>(c: Compression, r: impl Read + 'a) -> Box<dyn Read + 'a> {
    match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Snappy => Box::new(snap::read::FrameDecoder::new(r)),
    }
}

/// Reads `r` to its end and writes it to `w` compressed in frames of `frame_bytes` plain bytes;
/// returns the frames written.
pub fn write_framed(
    r: &mut dyn Read,
    w: &mut dyn Write,
    c: Compression,
    frame_bytes: u64,
) -> io::Result<FileFrames> {
    let frame_len = usize::try_from(frame_bytes)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame size must be > 0"))?;
    let mut table = FileFrames::default();
    let mut plain = vec![0u8; frame_len];
    let mut packed = Vec::new();
    loop {
        let n = read_full(r, &mut plain)?;
        if n == 0 {
            break;
        }
        packed.clear();
        compress_frame(c, &plain[..n], &mut packed)?;
        let size = u32::try_from(packed.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "compressed frame over 4 GiB")
        })?;
        w.write_all(&packed)?;
        table.plain_bytes += n as u64;
        table.frames.push(size);
        if n < frame_len {
            break;
        }
    }
    Ok(table)
}

/// Fills `buf` as far as `r` has bytes; returns how many it got.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a [`FrameCache`] counts (the querier exports them on `/metrics`).
#[derive(Debug, Clone, Default)]
pub struct FrameCacheMetrics {
    /// Reads served from a decoded frame in memory.
    pub hits: Counter,
    /// Frames decoded because they were not in memory.
    pub misses: Counter,
    /// Decoded bytes held.
    pub bytes: Gauge,
}

/// Decoded frames kept in memory, shared by every framed file of a process part (the querier
/// has one for all tenants), evicting the least recently used beyond a byte budget.
#[derive(Debug)]
pub struct FrameCache {
    budget: usize,
    state: Mutex<CacheState>,
    metrics: FrameCacheMetrics,
}

/// A frame in the cache: (source, frame number).
type FrameKey = (u64, usize);

#[derive(Debug, Default)]
struct CacheState {
    /// Decoded frames with the clock reading of their last use.
    frames: HashMap<FrameKey, (Arc<[u8]>, u64)>,
    bytes: usize,
    clock: u64,
}

/// Identity of each [`FramedReadAt`] in the caches.
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(1);

impl FrameCache {
    /// A cache holding at most `budget_bytes` of decoded frames (and always the last one
    /// decoded).
    pub fn new(budget_bytes: usize) -> Arc<Self> {
        Self::with_metrics(budget_bytes, FrameCacheMetrics::default())
    }

    /// A cache of `budget_bytes` counting into `metrics`.
    pub fn with_metrics(budget_bytes: usize, metrics: FrameCacheMetrics) -> Arc<Self> {
        Arc::new(Self {
            budget: budget_bytes,
            state: Mutex::new(CacheState::default()),
            metrics,
        })
    }

    /// Decoded bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Reads served from a decoded frame in memory.
    pub fn hits(&self) -> u64 {
        self.metrics.hits.get()
    }

    /// Frames decoded because they were not in memory.
    pub fn misses(&self) -> u64 {
        self.metrics.misses.get()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: FrameKey) -> Option<Arc<[u8]>> {
        let mut st = self.lock();
        st.clock += 1;
        let now = st.clock;
        let (data, used) = st.frames.get_mut(&key)?;
        *used = now;
        Some(data.clone())
    }

    fn contains(&self, key: FrameKey) -> bool {
        self.lock().frames.contains_key(&key)
    }

    fn insert(&self, key: FrameKey, data: Arc<[u8]>) {
        let mut st = self.lock();
        st.clock += 1;
        let now = st.clock;
        st.bytes += data.len();
        if let Some((old, _)) = st.frames.insert(key, (data, now)) {
            st.bytes -= old.len();
        }
        while st.bytes > self.budget && st.frames.len() > 1 {
            let Some(oldest) = st
                .frames
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((gone, _)) = st.frames.remove(&oldest) {
                st.bytes -= gone.len();
            }
        }
        self.metrics.bytes.set(st.bytes as i64);
    }

    fn forget(&self, source: u64) {
        let mut st = self.lock();
        let mut freed = 0;
        st.frames.retain(|(s, _), (data, _)| {
            let keep = *s != source;
            if !keep {
                freed += data.len();
            }
            keep
        });
        st.bytes -= freed;
        self.metrics.bytes.set(st.bytes as i64);
    }
}

/// The plain bytes of a framed file, read by position: each read fetches the compressed frames
/// it needs from `inner` (one request for neighbouring frames) and decodes them, keeping them
/// in the shared [`FrameCache`].
pub struct FramedReadAt {
    name: PathBuf,
    inner: Box<dyn ReadAt>,
    compression: Compression,
    frame_bytes: u64,
    plain_bytes: u64,
    /// Compressed offset of each frame, and the compressed size at the end.
    offsets: Vec<u64>,
    cache: Arc<FrameCache>,
    id: u64,
}

impl std::fmt::Debug for FramedReadAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedReadAt")
            .field("name", &self.name)
            .field("compression", &self.compression)
            .field("frames", &(self.offsets.len() - 1))
            .finish()
    }
}

impl FramedReadAt {
    /// Reads the compressed file `inner` (named `name` in errors) as described by `frames`;
    /// checks that the table covers the file exactly.
    pub fn new(
        name: &Path,
        inner: Box<dyn ReadAt>,
        compression: Compression,
        frame_bytes: u64,
        frames: &FileFrames,
        cache: Arc<FrameCache>,
    ) -> Result<Self, FramedError> {
        let bad = |reason: String| FramedError::Table {
            name: name.to_path_buf(),
            reason,
        };
        if frame_bytes == 0 {
            return Err(bad("frame size 0".into()));
        }
        let want = frames.plain_bytes.div_ceil(frame_bytes);
        if frames.frames.len() as u64 != want {
            return Err(bad(format!(
                "{} frames listed, {want} needed for {} plain bytes in frames of {frame_bytes}",
                frames.frames.len(),
                frames.plain_bytes
            )));
        }
        let mut offsets = Vec::with_capacity(frames.frames.len() + 1);
        let mut at = 0u64;
        offsets.push(0);
        for &n in &frames.frames {
            at += u64::from(n);
            offsets.push(at);
        }
        if at != inner.size() {
            return Err(bad(format!(
                "frames add up to {at} compressed bytes, the file has {}",
                inner.size()
            )));
        }
        Ok(Self {
            name: name.to_path_buf(),
            inner,
            compression,
            frame_bytes,
            plain_bytes: frames.plain_bytes,
            offsets,
            cache,
            id: NEXT_SOURCE.fetch_add(1, Ordering::Relaxed),
        })
    }

    fn frames_of(&self, r: &Range<u64>) -> Range<usize> {
        let end = r.end.min(self.plain_bytes);
        if r.start >= end {
            return 0..0;
        }
        (r.start / self.frame_bytes) as usize..(end.div_ceil(self.frame_bytes)) as usize
    }

    fn compressed_range(&self, frames: Range<usize>) -> Range<u64> {
        self.offsets[frames.start]..self.offsets[frames.end]
    }

    /// The compressed ranges of the frames of `frames` not decoded yet, neighbours merged.
    fn missing(&self, frames: impl Iterator<Item = usize>) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for f in frames {
            if self.cache.contains((self.id, f)) {
                continue;
            }
            let r = self.compressed_range(f..f + 1);
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }

    fn frame(&self, f: usize) -> io::Result<Arc<[u8]>> {
        if let Some(d) = self.cache.get((self.id, f)) {
            self.cache.metrics.hits.inc();
            return Ok(d);
        }
        self.cache.metrics.misses.inc();
        let range = self.compressed_range(f..f + 1);
        let mut packed = vec![0u8; (range.end - range.start) as usize];
        let plain_len = (self.plain_bytes - f as u64 * self.frame_bytes).min(self.frame_bytes);
        let decoded = self
            .inner
            .read_exact_at(&mut packed, range.start)
            .and_then(|()| decode_frame(self.compression, &packed, plain_len as usize))
            .map_err(|source| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    FramedError::Decode {
                        name: self.name.clone(),
                        frame: f,
                        range: range.clone(),
                        source,
                    },
                )
            })?;
        let data: Arc<[u8]> = decoded.into();
        self.cache.insert((self.id, f), data.clone());
        Ok(data)
    }
}

impl Drop for FramedReadAt {
    fn drop(&mut self) {
        self.cache.forget(self.id);
    }
}

impl ReadAt for FramedReadAt {
    fn size(&self) -> u64 {
        self.plain_bytes
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.plain_bytes {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "bytes {offset}..{end} of {} past its end ({} bytes)",
                    self.name.display(),
                    self.plain_bytes
                ),
            ));
        }
        let frames = self.frames_of(&(offset..end));
        if frames.len() > 1 {
            // Neighbouring frames in one request rather than one each.
            let missing = self.missing(frames.clone());
            if !missing.is_empty() {
                self.inner.prefetch(&missing);
            }
        }
        let mut written = 0usize;
        for f in frames {
            let data = self.frame(f)?;
            let frame_start = f as u64 * self.frame_bytes;
            let from = (offset + written as u64 - frame_start) as usize;
            let n = (data.len() - from).min(buf.len() - written);
            buf[written..written + n].copy_from_slice(&data[from..from + n]);
            written += n;
        }
        Ok(())
    }

    fn prefetch(&self, ranges: &[Range<u64>]) {
        let mut frames: Vec<usize> = ranges.iter().flat_map(|r| self.frames_of(r)).collect();
        frames.sort_unstable();
        frames.dedup();
        let missing = self.missing(frames.into_iter());
        if !missing.is_empty() {
            self.inner.prefetch(&missing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that compress somewhat, like chunk data: runs and noise.
    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 7 < 4 { (i / 64) as u8 } else { x as u8 }
            })
            .collect()
    }

    /// Records the ranges asked of it, to check what a framed read fetches.
    #[derive(Debug)]
    struct Recording {
        data: Vec<u8>,
        reads: Mutex<Vec<Range<u64>>>,
        prefetches: Mutex<Vec<Range<u64>>>,
    }

    impl ReadAt for Arc<Recording> {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.reads
                .lock()
                .unwrap()
                .push(offset..offset + buf.len() as u64);
            self.data.read_exact_at(buf, offset)
        }
        fn prefetch(&self, ranges: &[Range<u64>]) {
            self.prefetches.lock().unwrap().extend_from_slice(ranges);
        }
    }

    fn framed(
        c: Compression,
        plain: &[u8],
        frame_bytes: u64,
        cache: Arc<FrameCache>,
    ) -> (FramedReadAt, Arc<Recording>, FileFrames) {
        let mut packed = Vec::new();
        let table = write_framed(&mut &plain[..], &mut packed, c, frame_bytes).unwrap();
        let rec = Arc::new(Recording {
            data: packed,
            reads: Mutex::new(Vec::new()),
            prefetches: Mutex::new(Vec::new()),
        });
        let r = FramedReadAt::new(
            Path::new("blk/chunks/000001"),
            Box::new(rec.clone()),
            c,
            frame_bytes,
            &table,
            cache,
        )
        .unwrap();
        (r, rec, table)
    }

    #[test]
    fn every_range_reads_the_plain_bytes_in_both_formats() {
        let plain = data(10_000);
        for c in [Compression::Gzip, Compression::Snappy, Compression::None] {
            let (r, _, table) = framed(c, &plain, 1_000, FrameCache::new(1 << 20));
            assert_eq!(table.frames.len(), 10);
            assert_eq!(r.size(), 10_000);
            for (start, len) in [
                (0, 1),
                (999, 2),
                (1_000, 1_000),
                (1_500, 3_700),
                (0, 10_000),
            ] {
                let mut buf = vec![0u8; len];
                r.read_exact_at(&mut buf, start as u64).unwrap();
                assert_eq!(buf, plain[start..start + len], "{c:?} {start}+{len}");
            }
            let e = r.read_exact_at(&mut [0u8; 2], 9_999).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            assert!(e.to_string().contains("blk/chunks/000001"), "{e}");
        }
    }

    #[test]
    fn the_framed_file_is_one_valid_stream_for_standard_decoders() {
        let plain = data(70_000);
        for c in [Compression::Gzip, Compression::Snappy] {
            let mut packed = Vec::new();
            let t = write_framed(&mut &plain[..], &mut packed, c, 16_384).unwrap();
            assert_eq!(t.frames.len(), 5);
            assert_eq!(t.compressed_bytes(), packed.len() as u64);
            let mut back = Vec::new();
            stream_decoder(c, &packed[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, plain, "{c:?}");
        }
    }

    #[test]
    fn a_file_of_exactly_whole_frames_and_an_empty_file_have_consistent_tables() {
        let plain = data(4_096);
        let mut packed = Vec::new();
        let t = write_framed(&mut &plain[..], &mut packed, Compression::Gzip, 1_024).unwrap();
        assert_eq!((t.plain_bytes, t.frames.len()), (4_096, 4));
        let mut none = Vec::new();
        let t = write_framed(&mut &[][..], &mut none, Compression::Gzip, 1_024).unwrap();
        assert_eq!((t.plain_bytes, t.frames.len(), none.len()), (0, 0, 0));
    }

    #[test]
    fn a_read_fetches_only_the_frames_it_needs_and_decodes_each_once() {
        let plain = data(100_000);
        let cache = FrameCache::new(1 << 20);
        let (r, rec, _) = framed(Compression::Gzip, &plain, 10_000, cache.clone());
        let mut buf = [0u8; 100];
        r.read_exact_at(&mut buf, 55_000).unwrap();
        r.read_exact_at(&mut buf, 55_100).unwrap();
        assert_eq!(buf[..], plain[55_100..55_200]);
        let reads = rec.reads.lock().unwrap().clone();
        assert_eq!(reads, vec![r.compressed_range(5..6)], "frame 5 only, once");
        assert_eq!((cache.misses(), cache.hits()), (1, 1));
        // A read over three frames asks for the two missing ones in one prefetch.
        let mut big = vec![0u8; 25_000];
        r.read_exact_at(&mut big, 50_000).unwrap();
        assert_eq!(big, plain[50_000..75_000]);
        assert_eq!(
            *rec.prefetches.lock().unwrap(),
            vec![r.compressed_range(6..8)]
        );
        r.prefetch(&[0..5, 95_000..96_000, 55_000..55_001]);
        let p = rec.prefetches.lock().unwrap().clone();
        assert_eq!(
            p[1..],
            [r.compressed_range(0..1), r.compressed_range(9..10)]
        );
    }

    #[test]
    fn the_cache_keeps_its_budget_and_forgets_a_dropped_file() {
        let plain = data(50_000);
        let cache = FrameCache::new(25_000);
        let (r, _, _) = framed(Compression::Snappy, &plain, 10_000, cache.clone());
        let mut all = vec![0u8; 50_000];
        r.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(all, plain);
        assert!(cache.bytes() <= 25_000, "{}", cache.bytes());
        assert!(cache.bytes() >= 10_000);
        drop(r);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn a_damaged_frame_is_an_error_naming_the_file_and_frame() {
        let plain = data(30_000);
        let mut packed = Vec::new();
        let table = write_framed(&mut &plain[..], &mut packed, Compression::Gzip, 10_000).unwrap();
        let second = table.frames[0] as usize + 20;
        packed[second] ^= 0xff;
        let r = FramedReadAt::new(
            Path::new("s3://b/t/01ABC/index"),
            Box::new(packed),
            Compression::Gzip,
            10_000,
            &table,
            FrameCache::new(1 << 20),
        )
        .unwrap();
        let mut buf = [0u8; 10];
        r.read_exact_at(&mut buf, 100).unwrap();
        let e = r.read_exact_at(&mut buf, 10_500).unwrap_err().to_string();
        assert!(
            e.contains("frame 1 (compressed bytes") && e.contains("s3://b/t/01ABC/index"),
            "{e}"
        );
    }

    #[test]
    fn a_table_that_does_not_cover_the_file_is_refused() {
        let plain = data(30_000);
        let mut packed = Vec::new();
        let mut table =
            write_framed(&mut &plain[..], &mut packed, Compression::Gzip, 10_000).unwrap();
        let open = |t: &FileFrames, p: &Vec<u8>| {
            FramedReadAt::new(
                Path::new("x/index"),
                Box::new(p.clone()),
                Compression::Gzip,
                10_000,
                t,
                FrameCache::new(1 << 20),
            )
            .map(|_| ())
        };
        let short = packed[..packed.len() - 1].to_vec();
        let e = open(&table, &short).unwrap_err().to_string();
        assert!(e.contains("the file has"), "{e}");
        table.frames.pop();
        let e = open(&table, &packed).unwrap_err().to_string();
        assert!(e.contains("2 frames listed, 3 needed"), "{e}");
    }
}
