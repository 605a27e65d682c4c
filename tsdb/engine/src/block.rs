//! A persistent block: `meta.json`, `index` and `chunks/` in a directory named by its ULID,
//! exactly as Prometheus lays it out. [`BlockWriter`] streams sorted series into a new block;
//! [`Block`] selects series through the index and reads only the chunks a query needs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use ulid::Ulid;

use crate::chunkenc::{ChunkError, ENCODING_XOR, MAX_SAMPLES_PER_CHUNK, XorChunk, decode_xor};
use crate::chunks::{ChunkMeta, ChunksError, SegmentReader, SegmentWriter};
pub use crate::framed::Compression;
use crate::framed::{
    DEFAULT_FRAME_BYTES, FRAMES_FILE, FileFrames, FrameCache, FrameTable, FramedReadAt,
    stream_decoder, write_framed,
};
use crate::index::{IndexError, IndexReader, write_index};
use crate::labels::{Labels, Matcher};
use crate::readat::{FileReadAt, ReadAt};
use crate::series::{Sample, Series, merge_samples};

/// Name of the metadata file; written last, so a block without it does not exist.
pub const META_FILE: &str = "meta.json";
/// Name of the index file.
pub const INDEX_FILE: &str = "index";
/// Name of the chunk segments directory.
pub const CHUNKS_DIR: &str = "chunks";
/// Suffix of a block directory still being written.
const TMP_SUFFIX: &str = ".tmp-for-creation";

/// Reading or writing a block failed.
#[derive(Debug, Error)]
pub enum BlockError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `meta.json` is not valid.
    #[error("parse {path}: {source}")]
    Meta {
        /// The meta.json file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The index could not be read or written.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A compressed block's frame table does not describe its files.
    #[error(transparent)]
    Frames(#[from] crate::framed::FramedError),
    /// The chunk segments could not be read or written.
    #[error(transparent)]
    Chunks(#[from] ChunksError),
    /// A chunk's data does not decode.
    #[error("decode chunk {chunk_ref:#x} of series {series} in block {block}: {source}")]
    Chunk {
        /// The block directory.
        block: PathBuf,
        /// The series.
        series: String,
        /// The chunk reference.
        chunk_ref: u64,
        /// Why it does not decode.
        source: ChunkError,
    },
    /// A chunk uses an encoding this reader does not know.
    #[error("chunk {chunk_ref:#x} in block {block} has unsupported encoding {encoding}")]
    UnsupportedEncoding {
        /// The block directory.
        block: PathBuf,
        /// The chunk reference.
        chunk_ref: u64,
        /// The encoding byte.
        encoding: u8,
    },
    /// Series were not added in strictly increasing label order.
    #[error("series {series} added after {previous}: block series must be sorted and unique")]
    Unsorted {
        /// The offending series.
        series: String,
        /// The series before it.
        previous: String,
    },
    /// Samples of a series are not sorted by time.
    #[error("series {series}: sample at {t} follows sample at {previous}")]
    UnsortedSamples {
        /// The series.
        series: String,
        /// The offending timestamp.
        t: i64,
        /// The timestamp before it.
        previous: i64,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BlockError + 'a {
    move |source| BlockError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A block's `meta.json`, with the Thanos section Mimir writes and rimir's own section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockMeta {
    /// The block's ULID (also its directory name).
    pub ulid: String,
    /// Smallest sample timestamp, inclusive (ms).
    pub min_time: i64,
    /// Largest sample timestamp, exclusive (ms).
    pub max_time: i64,
    /// Counts of what the block holds.
    pub stats: BlockStats,
    /// Compaction lineage.
    pub compaction: CompactionMeta,
    /// Meta format version; always 1.
    pub version: u32,
    /// Thanos/Mimir section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thanos: Option<ThanosMeta>,
    /// rimir's own section (compression of the files); absent on plain Prometheus blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rimir: Option<RimirMeta>,
}

/// Counts of what a block holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockStats {
    /// Samples.
    #[serde(default)]
    pub num_samples: u64,
    /// Series.
    #[serde(default)]
    pub num_series: u64,
    /// Chunks.
    #[serde(default)]
    pub num_chunks: u64,
}

/// Compaction lineage of a block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompactionMeta {
    /// 1 for blocks cut from a head, +1 per compaction.
    pub level: u32,
    /// ULIDs of the level-1 blocks whose data this block holds.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The blocks this one was compacted from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<BlockDesc>,
}

/// A parent block's identity and range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockDesc {
    /// ULID.
    pub ulid: String,
    /// Min time (ms, inclusive).
    pub min_time: i64,
    /// Max time (ms, exclusive).
    pub max_time: i64,
}

/// The `thanos` section Mimir writes into meta.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThanosMeta {
    /// External labels of the block.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Downsampling information.
    #[serde(default)]
    pub downsample: Downsample,
    /// Which component wrote the block (`ingester`, `compactor`, `rimir-cli`).
    #[serde(default)]
    pub source: String,
    /// Chunk segment file names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segment_files: Vec<String>,
    /// Every file of the block with its size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileMeta>,
}

/// Downsampling resolution; rimir never downsamples, so 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Downsample {
    /// Resolution in ms.
    pub resolution: i64,
}

/// One file of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Path relative to the block directory.
    pub rel_path: String,
    /// Size in bytes (absent for meta.json itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// rimir's section of meta.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RimirMeta {
    /// Compression applied to `index` and every chunk segment: `none`, `gzip` or `snappy`.
    #[serde(default)]
    pub compression: String,
    /// Plain bytes per compressed frame; the frames are listed in `frames.json`. Absent on
    /// blocks compressed as one stream per file (rimir before frames), which can only be read
    /// after decompressing them whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_bytes: Option<u64>,
}

/// What to record in a new block's meta.json.
#[derive(Debug, Clone)]
pub struct BlockOptions {
    /// ULID for the block; a new one when `None`.
    pub ulid: Option<Ulid>,
    /// Block range start (inclusive); the first sample's time when `None`.
    pub min_time: Option<i64>,
    /// Block range end (exclusive); last sample's time + 1 when `None`.
    pub max_time: Option<i64>,
    /// Compaction level.
    pub level: u32,
    /// Source block ULIDs; the block's own ULID when empty.
    pub sources: Vec<String>,
    /// Parent blocks.
    pub parents: Vec<BlockDesc>,
    /// Thanos external labels.
    pub thanos_labels: BTreeMap<String, String>,
    /// Thanos `source` field.
    pub source: String,
}

impl Default for BlockOptions {
    fn default() -> Self {
        Self {
            ulid: None,
            min_time: None,
            max_time: None,
            level: 1,
            sources: Vec::new(),
            parents: Vec::new(),
            thanos_labels: BTreeMap::new(),
            source: "rimir".into(),
        }
    }
}

/// Streams series, in label order, into a new block directory.
///
/// Chunks go to disk as series arrive; only labels and chunk metadata stay in memory until
/// [`BlockWriter::finish`] writes the index and, last, meta.json, then renames the directory into
/// place. A writer dropped before `finish` removes its temporary directory.
pub struct BlockWriter {
    parent: PathBuf,
    tmp: PathBuf,
    ulid: Ulid,
    chunks: Option<SegmentWriter>,
    series: Vec<(Labels, Vec<ChunkMeta>)>,
    stats: BlockStats,
    min_t: i64,
    max_t: i64,
}

impl BlockWriter {
    /// Starts a block under `parent` (created if missing) with a fresh ULID.
    pub fn new(parent: &Path) -> Result<Self, BlockError> {
        Self::with_ulid(parent, Ulid::new())
    }

    /// Starts a block under `parent` with the given ULID.
    pub fn with_ulid(parent: &Path, ulid: Ulid) -> Result<Self, BlockError> {
        let tmp = parent.join(format!("{ulid}{TMP_SUFFIX}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err("remove stale", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err("create block dir", &tmp))?;
        let chunks = SegmentWriter::create(&tmp.join(CHUNKS_DIR))?;
        Ok(Self {
            parent: parent.to_path_buf(),
            tmp,
            ulid,
            chunks: Some(chunks),
            series: Vec::new(),
            stats: BlockStats::default(),
            min_t: i64::MAX,
            max_t: i64::MIN,
        })
    }

    /// The new block's ULID.
    pub fn ulid(&self) -> Ulid {
        self.ulid
    }

    /// Adds a series; series must come in strictly increasing label order and samples sorted by
    /// time without duplicates. A series without samples is skipped.
    pub fn add_series(&mut self, labels: Labels, samples: &[Sample]) -> Result<(), BlockError> {
        if samples.is_empty() {
            return Ok(());
        }
        if let Some((prev, _)) = self.series.last()
            && *prev >= labels
        {
            return Err(BlockError::Unsorted {
                series: labels.to_string(),
                previous: prev.to_string(),
            });
        }
        if let Some(w) = samples.windows(2).find(|w| w[1].0 <= w[0].0) {
            return Err(BlockError::UnsortedSamples {
                series: labels.to_string(),
                t: w[1].0,
                previous: w[0].0,
            });
        }
        let writer = self
            .chunks
            .as_mut()
            .expect("chunk writer lives until finish");
        let mut metas = Vec::with_capacity(samples.len().div_ceil(MAX_SAMPLES_PER_CHUNK));
        for part in samples.chunks(MAX_SAMPLES_PER_CHUNK) {
            let mut c = XorChunk::new();
            for &(t, v) in part {
                c.append(t, v);
            }
            let chunk_ref = writer.write_chunk(ENCODING_XOR, c.bytes())?;
            metas.push(ChunkMeta {
                min_time: part[0].0,
                max_time: part[part.len() - 1].0,
                chunk_ref,
            });
        }
        self.min_t = self.min_t.min(samples[0].0);
        self.max_t = self.max_t.max(samples[samples.len() - 1].0);
        self.stats.num_samples += samples.len() as u64;
        self.stats.num_series += 1;
        self.stats.num_chunks += metas.len() as u64;
        self.series.push((labels, metas));
        Ok(())
    }

    /// Writes the index and meta.json and moves the block into place; returns its meta.
    pub fn finish(mut self, opts: &BlockOptions) -> Result<BlockMeta, BlockError> {
        let chunks = self.chunks.take().expect("finish runs once");
        chunks.finish()?;
        let index_path = self.tmp.join(INDEX_FILE);
        write_index(&index_path, &self.series)?;
        let ulid = opts.ulid.unwrap_or(self.ulid).to_string();
        let (min_time, max_time) = if self.stats.num_samples == 0 {
            (opts.min_time.unwrap_or(0), opts.max_time.unwrap_or(0))
        } else {
            (
                opts.min_time.unwrap_or(self.min_t),
                opts.max_time.unwrap_or(self.max_t.saturating_add(1)),
            )
        };
        let mut files = Vec::new();
        let mut segment_files = Vec::new();
        let chunks_dir = self.tmp.join(CHUNKS_DIR);
        let mut names: Vec<String> = fs::read_dir(&chunks_dir)
            .map_err(io_err("list", &chunks_dir))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        for n in names {
            let p = chunks_dir.join(&n);
            let size = fs::metadata(&p).map_err(io_err("stat", &p))?.len();
            files.push(FileMeta {
                rel_path: format!("{CHUNKS_DIR}/{n}"),
                size_bytes: Some(size),
            });
            segment_files.push(n);
        }
        let index_size = fs::metadata(&index_path)
            .map_err(io_err("stat", &index_path))?
            .len();
        files.push(FileMeta {
            rel_path: INDEX_FILE.into(),
            size_bytes: Some(index_size),
        });
        files.push(FileMeta {
            rel_path: META_FILE.into(),
            size_bytes: None,
        });
        let sources = if opts.sources.is_empty() {
            vec![ulid.clone()]
        } else {
            opts.sources.clone()
        };
        let meta = BlockMeta {
            ulid: ulid.clone(),
            min_time,
            max_time,
            stats: self.stats.clone(),
            compaction: CompactionMeta {
                level: opts.level,
                sources,
                parents: opts.parents.clone(),
            },
            version: 1,
            thanos: Some(ThanosMeta {
                labels: opts.thanos_labels.clone(),
                downsample: Downsample::default(),
                source: opts.source.clone(),
                segment_files,
                files,
            }),
            rimir: None,
        };
        write_meta(&self.tmp, &meta)?;
        let dst = self.parent.join(&ulid);
        fs::rename(&self.tmp, &dst).map_err(io_err("rename block into place", &dst))?;
        sync_dir(&self.parent)?;
        self.tmp = PathBuf::new();
        Ok(meta)
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Writes `meta.json` into `dir` atomically (temp file, fsync, rename).
pub fn write_meta(dir: &Path, meta: &BlockMeta) -> Result<(), BlockError> {
    let path = dir.join(META_FILE);
    let tmp = dir.join("meta.json.tmp");
    let body = serde_json::to_vec_pretty(meta).map_err(|source| BlockError::Meta {
        path: path.clone(),
        source,
    })?;
    let mut f = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(&body).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)
}

/// Reads and parses `dir/meta.json`.
pub fn read_meta(dir: &Path) -> Result<BlockMeta, BlockError> {
    let path = dir.join(META_FILE);
    let body = fs::read(&path).map_err(io_err("read", &path))?;
    serde_json::from_slice(&body).map_err(|source| BlockError::Meta { path, source })
}

fn sync_dir(dir: &Path) -> Result<(), BlockError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync dir", dir))
}

/// Writes the given series (any order; duplicates merged) as one block under `parent`.
pub fn write_block(
    parent: &Path,
    mut series: Vec<(Labels, Vec<Sample>)>,
    opts: &BlockOptions,
) -> Result<BlockMeta, BlockError> {
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let mut w = match opts.ulid {
        Some(u) => BlockWriter::with_ulid(parent, u)?,
        None => BlockWriter::new(parent)?,
    };
    let mut it = series.into_iter().peekable();
    while let Some((labels, mut samples)) = it.next() {
        while it.peek().is_some_and(|(l, _)| *l == labels) {
            let (_, more) = it.next().expect("peeked");
            samples = merge_samples(&[&samples, &more]);
        }
        samples.sort_by_key(|s| s.0);
        samples.dedup_by_key(|s| s.0);
        w.add_series(labels, &samples)?;
    }
    w.finish(opts)
}

/// Total bytes of the files below `path`.
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The block directories (those holding a meta.json) directly under `dir`, sorted by name.
pub fn list_block_dirs(dir: &Path) -> Result<Vec<PathBuf>, BlockError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        let p = e.path();
        let name = e.file_name();
        if p.is_dir()
            && Ulid::from_string(&name.to_string_lossy()).is_ok()
            && p.join(META_FILE).is_file()
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The compression recorded in a block's meta.json.
pub fn block_compression(meta: &BlockMeta) -> Compression {
    meta.rimir
        .as_ref()
        .and_then(|r| Compression::parse(&r.compression))
        .unwrap_or(Compression::None)
}

/// The data files of a block directory (`index` and chunk segments), relative paths, sorted.
fn data_files(dir: &Path) -> Result<Vec<String>, BlockError> {
    let chunks_dir = dir.join(CHUNKS_DIR);
    let mut names: Vec<String> = fs::read_dir(&chunks_dir)
        .map_err(io_err("list", &chunks_dir))?
        .filter_map(|e| {
            e.ok()
                .map(|e| format!("{CHUNKS_DIR}/{}", e.file_name().to_string_lossy()))
        })
        .collect();
    names.sort();
    names.push(INDEX_FILE.to_string());
    Ok(names)
}

/// Rewrites `src` (compressed with `from`) into `dst` compressed with `to`, in frames of
/// `frame_bytes`; returns the new file's size and, when compressed, its frames.
fn transcode(
    src: &Path,
    dst: &Path,
    from: Compression,
    to: Compression,
    frame_bytes: u64,
) -> Result<(u64, Option<FileFrames>), BlockError> {
    let input = fs::File::open(src).map_err(io_err("open", src))?;
    let mut reader = stream_decoder(from, std::io::BufReader::new(input));
    let out = fs::File::create(dst).map_err(io_err("create", dst))?;
    let mut w = std::io::BufWriter::new(out);
    let copy_err = |source| BlockError::Io {
        op: "transcode",
        path: src.to_path_buf(),
        source,
    };
    let frames = match to {
        Compression::None => {
            std::io::copy(&mut reader, &mut w).map_err(copy_err)?;
            None
        }
        c => Some(write_framed(&mut reader, &mut w, c, frame_bytes).map_err(copy_err)?),
    };
    let file = w.into_inner().map_err(|e| copy_err(e.into_error()))?;
    file.sync_all().map_err(io_err("fsync", dst))?;
    let size = fs::metadata(dst).map_err(io_err("stat", dst))?.len();
    Ok((size, frames))
}

/// The frame table of a block compressed in frames (`frames.json`); `None` for plain blocks
/// and blocks compressed as one stream per file.
pub fn read_frame_table(dir: &Path, meta: &BlockMeta) -> Result<Option<FrameTable>, BlockError> {
    if block_compression(meta) == Compression::None
        || meta.rimir.as_ref().and_then(|r| r.frame_bytes).is_none()
    {
        return Ok(None);
    }
    let path = dir.join(FRAMES_FILE);
    let body = fs::read(&path).map_err(io_err("read", &path))?;
    parse_frame_table(&body, &path).map(Some)
}

/// Parses a `frames.json` read from `path` (a file, or the bucket location and key).
pub fn parse_frame_table(body: &[u8], path: &Path) -> Result<FrameTable, BlockError> {
    let t: FrameTable = serde_json::from_slice(body).map_err(|source| BlockError::Meta {
        path: path.to_path_buf(),
        source,
    })?;
    if t.version != 1 {
        return Err(crate::framed::FramedError::Table {
            name: path.to_path_buf(),
            reason: format!("unsupported version {}", t.version),
        }
        .into());
    }
    Ok(t)
}

/// Compresses the `index` and chunk files of the block in `dir` in place (file by file, so the
/// extra disk needed is one file's compressed size) in frames of [`DEFAULT_FRAME_BYTES`],
/// writes the frame table (`frames.json`), records the compression in meta.json, and returns
/// (plain bytes, stored bytes). `Compression::None` turns a compressed block back into a plain
/// Prometheus block.
pub fn compress_block(dir: &Path, to: Compression) -> Result<(u64, u64), BlockError> {
    let mut meta = read_meta(dir)?;
    let from = block_compression(&meta);
    let existing = read_frame_table(dir, &meta)?;
    let files = data_files(dir)?;
    let stored_size = |rel: &String| {
        let path = dir.join(rel);
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(io_err("stat", &path))
    };
    if from == to && (to == Compression::None || existing.is_some()) {
        let mut plain = 0;
        let mut stored = 0;
        for rel in &files {
            let n = stored_size(rel)?;
            stored += n;
            plain += existing
                .as_ref()
                .and_then(|t| t.files.get(rel))
                .map_or(n, |f| f.plain_bytes);
        }
        return Ok((plain, stored));
    }
    let mut table = FrameTable {
        version: 1,
        compression: to,
        frame_bytes: DEFAULT_FRAME_BYTES,
        files: BTreeMap::new(),
    };
    let mut plain = 0;
    let mut stored = 0;
    let mut sizes = BTreeMap::new();
    for rel in files {
        let path = dir.join(&rel);
        let tmp = dir.join(format!("{}.transcode", rel.replace('/', "_")));
        let (after, frames) = transcode(&path, &tmp, from, to, DEFAULT_FRAME_BYTES)?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        plain += frames.as_ref().map_or(after, |f| f.plain_bytes);
        stored += after;
        sizes.insert(rel.clone(), after);
        if let Some(f) = frames {
            table.files.insert(rel, f);
        }
    }
    let frames_path = dir.join(FRAMES_FILE);
    let frames_size = if to == Compression::None {
        match fs::remove_file(&frames_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("remove", &frames_path)(e));
            }
            _ => None,
        }
    } else {
        let body = serde_json::to_vec(&table).map_err(|source| BlockError::Meta {
            path: frames_path.clone(),
            source,
        })?;
        let mut f = fs::File::create(&frames_path).map_err(io_err("create", &frames_path))?;
        f.write_all(&body).map_err(io_err("write", &frames_path))?;
        f.sync_all().map_err(io_err("fsync", &frames_path))?;
        Some(body.len() as u64)
    };
    if let Some(t) = meta.thanos.as_mut() {
        t.files.retain(|f| f.rel_path != FRAMES_FILE);
        for f in &mut t.files {
            if let Some(n) = sizes.get(&f.rel_path) {
                f.size_bytes = Some(*n);
            }
        }
        if let Some(n) = frames_size {
            t.files.push(FileMeta {
                rel_path: FRAMES_FILE.into(),
                size_bytes: Some(n),
            });
            t.files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
        }
    }
    meta.rimir = match to {
        Compression::None => None,
        c => Some(RimirMeta {
            compression: c.as_str().into(),
            frame_bytes: Some(DEFAULT_FRAME_BYTES),
        }),
    };
    write_meta(dir, &meta)?;
    Ok((plain, stored))
}

/// Copies the block in `dir` into `dst_parent/<ULID>` as a plain Prometheus block, undoing any
/// cold compression; returns the new directory.
pub fn decompress_block_to(dir: &Path, dst_parent: &Path) -> Result<PathBuf, BlockError> {
    let meta = read_meta(dir)?;
    let from = block_compression(&meta);
    let dst = dst_parent.join(&meta.ulid);
    fs::create_dir_all(dst.join(CHUNKS_DIR)).map_err(io_err("create", &dst))?;
    for rel in data_files(dir)? {
        transcode(
            &dir.join(&rel),
            &dst.join(&rel),
            from,
            Compression::None,
            DEFAULT_FRAME_BYTES,
        )?;
    }
    let mut plain = meta;
    plain.rimir = None;
    if let Some(t) = plain.thanos.as_mut() {
        t.files.retain(|f| f.rel_path != FRAMES_FILE);
        for f in &mut t.files {
            if f.rel_path != META_FILE {
                let path = dst.join(&f.rel_path);
                f.size_bytes = Some(fs::metadata(&path).map_err(io_err("stat", &path))?.len());
            }
        }
    }
    write_meta(&dst, &plain)?;
    Ok(dst)
}

/// Decoded frames a locally opened compressed block keeps in memory: a few per file, enough
/// for reading series and chunks in order (the compactor, the CLI).
const LOCAL_FRAME_CACHE_BYTES: usize = 16 * DEFAULT_FRAME_BYTES as usize;

/// The file `rel` of a block compressed in frames, read in place as plain bytes.
fn framed_file(
    dir: &Path,
    rel: &str,
    table: &FrameTable,
    cache: &Arc<FrameCache>,
) -> Result<Box<dyn ReadAt>, BlockError> {
    let path = dir.join(rel);
    let frames = table
        .files
        .get(rel)
        .ok_or_else(|| crate::framed::FramedError::Table {
            name: dir.join(FRAMES_FILE),
            reason: format!("no frames listed for {rel}"),
        })?;
    let file = fs::File::open(&path).map_err(io_err("open", &path))?;
    let src = FileReadAt::new(file).map_err(io_err("stat", &path))?;
    Ok(Box::new(FramedReadAt::new(
        &path,
        Box::new(src),
        table.compression,
        table.frame_bytes,
        frames,
        cache.clone(),
    )?))
}

/// An open block, reading its index and chunks on demand.
pub struct Block {
    dir: PathBuf,
    meta: BlockMeta,
    index: IndexReader,
    chunks: SegmentReader,
    /// Decompressed copy of a cold-compressed block, removed with the block.
    _scratch: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("dir", &self.dir)
            .field("ulid", &self.meta.ulid)
            .finish()
    }
}

impl Block {
    /// Opens the block in `dir`. A block compressed as one stream per file (rimir before
    /// frames) is first decompressed into a temporary directory (removed with the block).
    pub fn open(dir: &Path) -> Result<Self, BlockError> {
        Self::open_with_scratch(dir, &std::env::temp_dir())
    }

    /// Opens the block in `dir`. A block compressed in frames is read in place; one
    /// compressed as one stream per file (rimir before frames) is decompressed under `scratch`.
    pub fn open_with_scratch(dir: &Path, scratch: &Path) -> Result<Self, BlockError> {
        let meta = read_meta(dir)?;
        if let Some(table) = read_frame_table(dir, &meta)? {
            let cache = FrameCache::new(LOCAL_FRAME_CACHE_BYTES);
            let index = IndexReader::open_source(
                &dir.join(INDEX_FILE),
                framed_file(dir, INDEX_FILE, &table, &cache)?,
            )?;
            let mut segments = Vec::new();
            for rel in data_files(dir)? {
                if rel != INDEX_FILE {
                    segments.push((dir.join(&rel), framed_file(dir, &rel, &table, &cache)?));
                }
            }
            let chunks = SegmentReader::from_sources(&dir.join(CHUNKS_DIR), segments);
            return Ok(Self::from_readers(dir.to_path_buf(), meta, index, chunks));
        }
        let (files, tmp) = if block_compression(&meta) == Compression::None {
            (dir.to_path_buf(), None)
        } else {
            fs::create_dir_all(scratch).map_err(io_err("create", scratch))?;
            let tmp = tempfile::Builder::new()
                .prefix("rimir-block-")
                .tempdir_in(scratch)
                .map_err(io_err("create scratch dir in", scratch))?;
            (decompress_block_to(dir, tmp.path())?, Some(tmp))
        };
        let index = IndexReader::open(&files.join(INDEX_FILE))?;
        let chunks = SegmentReader::open(&files.join(CHUNKS_DIR))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            index,
            chunks,
            _scratch: tmp,
        })
    }

    /// A block over readers opened elsewhere (e.g. on bucket objects); `dir` names it in errors.
    pub fn from_readers(
        dir: PathBuf,
        meta: BlockMeta,
        index: IndexReader,
        chunks: SegmentReader,
    ) -> Self {
        Self {
            dir,
            meta,
            index,
            chunks,
            _scratch: None,
        }
    }

    /// The block's meta.json.
    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    /// The block's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The block's index.
    pub fn index(&self) -> &IndexReader {
        &self.index
    }

    /// The block's chunk segments.
    pub fn chunk_reader(&self) -> &SegmentReader {
        &self.chunks
    }

    /// Calls `f` for each series matching all `matchers` that has samples in `[mint, maxt]`
    /// (both inclusive), in label order, reading only the chunks overlapping the range.
    pub fn for_each_series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        mut f: impl FnMut(Series) -> Result<(), BlockError>,
    ) -> Result<(), BlockError> {
        if maxt < self.meta.min_time || mint >= self.meta.max_time {
            return Ok(());
        }
        // In batches: each batch's series entries, then its chunks, are announced to the
        // readers first, so a bucket-backed block fetches them with a few requests instead of
        // one per series (local files ignore the hints).
        const BATCH: usize = 1024;
        for refs in self.index.postings_for_matchers(matchers)?.chunks(BATCH) {
            self.index.prefetch_series(refs);
            let mut batch = Vec::with_capacity(refs.len());
            for &r in refs {
                batch.push(self.index.series(r)?);
            }
            let chunk_refs: Vec<u64> = batch
                .iter()
                .flat_map(|(_, metas)| metas)
                .filter(|m| m.max_time >= mint && m.min_time <= maxt)
                .map(|m| m.chunk_ref)
                .collect();
            self.chunks.prefetch(&chunk_refs);
            for (labels, metas) in batch {
                let samples = self.read_samples(&labels, &metas, mint, maxt)?;
                if !samples.is_empty() {
                    f(Series { labels, samples })?;
                }
            }
        }
        Ok(())
    }

    /// Label sets of the series matching `matchers` that have a chunk overlapping `[mint, maxt]`,
    /// in label order, from the index alone (as Prometheus answers the series API from blocks:
    /// a chunk's time range, not its samples, decides).
    pub fn series_labels(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Labels>, BlockError> {
        let mut out = Vec::new();
        if maxt < self.meta.min_time || mint >= self.meta.max_time {
            return Ok(out);
        }
        const BATCH: usize = 1024;
        for refs in self.index.postings_for_matchers(matchers)?.chunks(BATCH) {
            self.index.prefetch_series(refs);
            for &r in refs {
                let (labels, metas) = self.index.series(r)?;
                if metas
                    .iter()
                    .any(|m| m.max_time >= mint && m.min_time <= maxt)
                {
                    out.push(labels);
                }
            }
        }
        Ok(out)
    }

    /// The series matching `matchers` with their samples in `[mint, maxt]`, in label order.
    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, BlockError> {
        let mut out = Vec::new();
        self.for_each_series(matchers, mint, maxt, |s| {
            out.push(s);
            Ok(())
        })?;
        Ok(out)
    }

    /// Decodes the samples in `[mint, maxt]` from the chunks `metas` of series `labels`.
    pub fn read_samples(
        &self,
        labels: &Labels,
        metas: &[ChunkMeta],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Sample>, BlockError> {
        let mut samples = Vec::new();
        for m in metas
            .iter()
            .filter(|m| m.max_time >= mint && m.min_time <= maxt)
        {
            let (encoding, data) = self.chunks.read(m.chunk_ref)?;
            if encoding != ENCODING_XOR {
                return Err(BlockError::UnsupportedEncoding {
                    block: self.dir.clone(),
                    chunk_ref: m.chunk_ref,
                    encoding,
                });
            }
            for s in decode_xor(&data) {
                let (t, v) = s.map_err(|source| BlockError::Chunk {
                    block: self.dir.clone(),
                    series: labels.to_string(),
                    chunk_ref: m.chunk_ref,
                    source,
                })?;
                if t >= mint && t <= maxt {
                    samples.push((t, v));
                }
            }
        }
        if samples.windows(2).any(|w| w[1].0 <= w[0].0) {
            samples.sort_by_key(|s| s.0);
            samples.dedup_by_key(|s| s.0);
        }
        Ok(samples)
    }

    /// Label names present in the block.
    pub fn label_names(&self) -> Result<Vec<String>, BlockError> {
        Ok(self.index.label_names()?)
    }

    /// Values of label `name` in the block.
    pub fn label_values(&self, name: &str) -> Result<Vec<String>, BlockError> {
        Ok(self.index.label_values(name)?)
    }
}

/// Compresses a plain block the way rimir did before frames: each data file one gzip stream,
/// no `frames.json`. For tests (here and in the crates above, through the `test-util` feature)
/// that read such blocks; panics on any I/O error.
#[cfg(any(test, feature = "test-util"))]
pub fn gzip_as_one_stream_per_file(dir: &Path) {
    for rel in data_files(dir).unwrap() {
        let path = dir.join(&rel);
        let plain = fs::read(&path).unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&plain).unwrap();
        fs::write(&path, e.finish().unwrap()).unwrap();
    }
    let mut m = read_meta(dir).unwrap();
    m.rimir = Some(RimirMeta {
        compression: "gzip".into(),
        frame_bytes: None,
    });
    if let Some(t) = m.thanos.as_mut() {
        for f in &mut t.files {
            if f.rel_path != META_FILE {
                f.size_bytes = Some(fs::metadata(dir.join(&f.rel_path)).unwrap().len());
            }
        }
    }
    write_meta(dir, &m).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::MatchType;

    #[test]
    fn a_block_reads_the_same_from_memory_as_from_its_files() {
        let tmp = tempfile::tempdir().unwrap();
        let series = (0..40)
            .map(|i| {
                let l = Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())]);
                (l, (0..300).map(|j| (j * 1000, (i * j) as f64)).collect())
            })
            .collect();
        let meta = write_block(tmp.path(), series, &BlockOptions::default()).unwrap();
        let dir = tmp.path().join(&meta.ulid);
        let files = Block::open(&dir).unwrap();
        let index = std::fs::read(dir.join(INDEX_FILE)).unwrap();
        let seg = dir.join(CHUNKS_DIR).join("000001");
        let chunks: Box<dyn crate::readat::ReadAt> = Box::new(std::fs::read(&seg).unwrap());
        let memory = Block::from_readers(
            dir.clone(),
            meta,
            crate::index::IndexReader::open_source(&dir.join(INDEX_FILE), Box::new(index)).unwrap(),
            crate::chunks::SegmentReader::from_sources(&dir.join(CHUNKS_DIR), vec![(seg, chunks)]),
        );
        let ms = [Matcher::new(MatchType::Regex, "i", "1.*").unwrap()];
        let want = files.select(&ms, 5_000, 200_000).unwrap();
        assert_eq!(want.len(), 11);
        assert_eq!(memory.select(&ms, 5_000, 200_000).unwrap(), want);
    }

    fn series(n: usize, samples: usize) -> Vec<(Labels, Vec<Sample>)> {
        (0..n)
            .map(|i| {
                let l = Labels::from_pairs([
                    ("__name__", "m".to_string()),
                    ("i", format!("{i:03}")),
                    ("parity", (i % 2).to_string()),
                ]);
                let s = (0..samples)
                    .map(|j| (1_000 * j as i64, (i * j) as f64))
                    .collect();
                (l, s)
            })
            .collect()
    }

    #[test]
    fn written_block_reads_back_every_sample_by_matcher() {
        let dir = tempfile::tempdir().unwrap();
        let input = series(20, 300);
        let meta = write_block(dir.path(), input.clone(), &BlockOptions::default()).unwrap();
        assert_eq!(meta.stats.num_series, 20);
        assert_eq!(meta.stats.num_samples, 6000);
        assert_eq!(meta.stats.num_chunks, 60);
        assert_eq!((meta.min_time, meta.max_time), (0, 299_001));
        let b = Block::open(&dir.path().join(&meta.ulid)).unwrap();
        let all = b
            .select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
            .unwrap();
        assert_eq!(all.len(), 20);
        for (got, (l, s)) in all.iter().zip(&input) {
            assert_eq!(&got.labels, l);
            assert_eq!(&got.samples, s);
        }
        let odd = Matcher::new(MatchType::Regex, "parity", "1").unwrap();
        let sel = b.select(&[odd], 5_000, 7_000).unwrap();
        assert_eq!(sel.len(), 10);
        assert!(
            sel.iter()
                .all(|s| s.samples.len() == 3 && s.samples[0].0 == 5_000)
        );
    }

    #[test]
    fn cold_compressed_blocks_shrink_and_read_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let input = series(50, 500);
        for c in [Compression::Gzip, Compression::Snappy] {
            let meta = write_block(dir.path(), input.clone(), &BlockOptions::default()).unwrap();
            let bdir = dir.path().join(&meta.ulid);
            let (plain, packed) = compress_block(&bdir, c).unwrap();
            assert!(packed < plain, "{c:?}: {packed} >= {plain}");
            let table = read_frame_table(&bdir, &read_meta(&bdir).unwrap())
                .unwrap()
                .expect("frames.json");
            assert_eq!(
                table.files.keys().collect::<Vec<_>>(),
                ["chunks/000001", "index"]
            );
            // Read in place: nothing is decompressed into the scratch directory.
            let scratch = tempfile::tempdir().unwrap();
            let b = Block::open_with_scratch(&bdir, scratch.path()).unwrap();
            assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0);
            assert_eq!(block_compression(b.meta()), c);
            let got = b
                .select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
                .unwrap();
            assert_eq!(got.len(), 50);
            assert_eq!(got[7].samples, input[7].1);
            let plain_dir = tempfile::tempdir().unwrap();
            let p = decompress_block_to(&bdir, plain_dir.path()).unwrap();
            assert!(read_meta(&p).unwrap().rimir.is_none());
            assert!(!p.join(FRAMES_FILE).exists());
            assert_eq!(
                fs::metadata(p.join(INDEX_FILE)).unwrap().len()
                    + fs::metadata(p.join("chunks/000001")).unwrap().len(),
                plain
            );
            // Back to plain in place: the same bytes, no frame table, no rimir section.
            assert_eq!(compress_block(&bdir, Compression::None).unwrap().0, plain);
            assert!(!bdir.join(FRAMES_FILE).exists());
            let meta = read_meta(&bdir).unwrap();
            assert!(meta.rimir.is_none());
            assert!(
                meta.thanos
                    .unwrap()
                    .files
                    .iter()
                    .all(|f| f.rel_path != FRAMES_FILE)
            );
            assert_eq!(
                fs::read(bdir.join(INDEX_FILE)).unwrap(),
                fs::read(p.join(INDEX_FILE)).unwrap()
            );
        }
    }

    #[test]
    fn a_block_compressed_as_one_stream_per_file_still_opens() {
        // What rimir wrote before frames: each file one gzip stream, no frames.json.
        let dir = tempfile::tempdir().unwrap();
        let input = series(30, 200);
        let meta = write_block(dir.path(), input.clone(), &BlockOptions::default()).unwrap();
        let bdir = dir.path().join(&meta.ulid);
        gzip_as_one_stream_per_file(&bdir);
        let scratch = tempfile::tempdir().unwrap();
        let b = Block::open_with_scratch(&bdir, scratch.path()).unwrap();
        assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 1);
        let got = b
            .select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
            .unwrap();
        assert_eq!(got.len(), 30);
        assert_eq!(got[29].samples, input[29].1);
        // Recompressing turns it into frames.
        compress_block(&bdir, Compression::Snappy).unwrap();
        let b = Block::open(&bdir).unwrap();
        assert_eq!(block_compression(b.meta()), Compression::Snappy);
        assert_eq!(b.select(&[], 0, 1).unwrap().len(), 0);
        let got = b
            .select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
            .unwrap();
        assert_eq!(got[3].samples, input[3].1);
    }

    #[test]
    fn unsorted_series_are_refused_and_leave_no_block() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::new(dir.path()).unwrap();
        let s = series(2, 3);
        w.add_series(s[1].0.clone(), &s[1].1).unwrap();
        let e = w.add_series(s[0].0.clone(), &s[0].1).unwrap_err();
        assert!(matches!(e, BlockError::Unsorted { .. }), "{e}");
        drop(w);
        assert!(list_block_dirs(dir.path()).unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
