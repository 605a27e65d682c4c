//! Chunk segment files of a block (`<block>/chunks/000001`, `000002`, …), in Prometheus' format:
//! an 8-byte header (magic `0x85BD40DD`, version 1, 3 zero bytes) followed by chunks, each
//! `uvarint(len(data)) | encoding byte | data | CRC32-Castagnoli(encoding, data) big-endian`.
//!
//! A chunk reference is `(segment index << 32) | byte offset`, where the segment index counts the
//! block's segment files in name order from 0 (so `000001` is index 0). The reader serves each
//! chunk with positioned reads; it never maps or loads whole files.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use thiserror::Error;

use crate::encoding::{crc32c, crc32c_append, put_uvarint, uvarint};
use crate::readat::{FileReadAt, ReadAt};

/// Magic number at the start of every chunk segment file.
pub const MAGIC_CHUNKS: u32 = 0x85BD_40DD;
/// Segment format version this module reads and writes.
pub const CHUNKS_FORMAT_V1: u8 = 1;
/// Size of the segment header: magic, version and 3 bytes of padding.
pub const SEGMENT_HEADER_SIZE: u64 = 8;
/// Maximum size of a segment file before the writer starts the next one, as in Prometheus.
pub const DEFAULT_MAX_SEGMENT_SIZE: u64 = 512 * 1024 * 1024;
/// Most bytes the data length field of a chunk takes (a uvarint of at most 32 bits).
const MAX_LEN_FIELD: u64 = 5;
/// Bytes around the data of a chunk besides the length field: encoding and CRC.
const ENCODING_AND_CRC: u64 = 1 + 4;
/// Bytes the reader fetches at first: enough for a whole typical chunk in one read.
const FIRST_READ: u64 = 512;

/// Where a chunk of a series is and which time range it covers; the index stores these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkMeta {
    /// Timestamp of the chunk's first sample (ms).
    pub min_time: i64,
    /// Timestamp of the chunk's last sample (ms).
    pub max_time: i64,
    /// Reference of the chunk in the block's segment files: `(segment << 32) | offset`.
    pub chunk_ref: u64,
}

/// Builds a chunk reference from a segment index (0 for `000001`) and a byte offset in it.
pub fn chunk_ref(segment: u32, offset: u32) -> u64 {
    (u64::from(segment) << 32) | u64::from(offset)
}

/// Splits a chunk reference into segment index and byte offset.
pub fn split_chunk_ref(chunk_ref: u64) -> (u32, u32) {
    ((chunk_ref >> 32) as u32, chunk_ref as u32)
}

/// Name of the segment file with 1-based sequence number `seq` (`000001`, …).
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:06}")
}

/// A failure writing or reading chunk segment files.
#[derive(Debug, Error)]
pub enum ChunksError {
    /// An I/O operation on a file or directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A segment file does not start with the chunks magic number.
    #[error("chunk segment {path}: bad magic {found:#010x} at offset 0, want {MAGIC_CHUNKS:#010x}")]
    BadMagic {
        /// The segment file.
        path: PathBuf,
        /// The number found.
        found: u32,
    },
    /// A segment file has an unsupported format version.
    #[error("chunk segment {path}: unsupported format version {found} at offset 4")]
    BadVersion {
        /// The segment file.
        path: PathBuf,
        /// The version found.
        found: u8,
    },
    /// A segment file is shorter than its header.
    #[error("chunk segment {path}: {size} bytes is shorter than the 8-byte header")]
    ShortHeader {
        /// The segment file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A chunk reference names a segment the block does not have.
    #[error(
        "reading chunk ref {chunk_ref:#x}: segment index {segment} not in {dir} ({segments} segment files)"
    )]
    UnknownSegment {
        /// The reference.
        chunk_ref: u64,
        /// Its segment index.
        segment: u32,
        /// The chunks directory.
        dir: PathBuf,
        /// How many segment files it has.
        segments: usize,
    },
    /// A chunk reference points into the header or past the end of its segment.
    #[error("reading chunk ref {chunk_ref:#x}: offset {offset} is outside {path} ({size} bytes)")]
    RefOutOfRange {
        /// The reference.
        chunk_ref: u64,
        /// The segment file.
        path: PathBuf,
        /// The offset in it.
        offset: u64,
        /// The file size.
        size: u64,
    },
    /// The data length of a chunk is not a valid uvarint.
    #[error("chunk in {path} at offset {offset}: invalid data length field")]
    BadLength {
        /// The segment file.
        path: PathBuf,
        /// Offset of the chunk.
        offset: u64,
    },
    /// A chunk extends past the end of its segment file.
    #[error(
        "chunk in {path} at offset {offset}: truncated, needs bytes up to {end} but the file has {size}"
    )]
    Truncated {
        /// The segment file.
        path: PathBuf,
        /// Offset of the chunk.
        offset: u64,
        /// Offset of the chunk's end.
        end: u64,
        /// The file size.
        size: u64,
    },
    /// A chunk's checksum does not match its encoding and data.
    #[error(
        "chunk in {path} at offset {offset}: CRC32C mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    BadCrc {
        /// The segment file.
        path: PathBuf,
        /// Offset of the chunk.
        offset: u64,
        /// Checksum in the file.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// The writer cannot reference a chunk: its data or offset does not fit 32 bits.
    #[error(
        "writing chunk to {path} at offset {offset}: {len}-byte chunk does not fit a 32-bit offset"
    )]
    TooLarge {
        /// The segment file.
        path: PathBuf,
        /// Offset the chunk would start at.
        offset: u64,
        /// Length of its data.
        len: usize,
    },
    /// The writer was pointed at a directory that already holds segment files.
    #[error("creating chunk segments in {dir}: it already holds segment file {file}")]
    NotEmpty {
        /// The chunks directory.
        dir: PathBuf,
        /// A segment file found there.
        file: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ChunksError + 'a {
    move |source| ChunksError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Numeric file names in `dir`, sorted as Prometheus sorts them (by name).
fn segment_names(dir: &Path) -> Result<Vec<String>, ChunksError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing chunks directory", dir))? {
        let entry = entry.map_err(io_err("listing chunks directory", dir))?;
        if let Some(name) = entry.file_name().to_str()
            && !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_digit())
            && name.parse::<u64>().is_ok()
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Writes chunks into a block's `chunks/` directory, cutting a new segment file before one
/// would exceed the maximum segment size.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    max_segment_size: u64,
    /// The open segment, its path, and the bytes written to it.
    current: Option<(BufWriter<File>, PathBuf, u64)>,
    /// Number of segment files started.
    segments: u32,
    /// Bytes in finished segments.
    finished_bytes: u64,
    scratch: Vec<u8>,
}

impl SegmentWriter {
    /// Prepares to write segments into `chunks_dir`, creating it if needed. Segment files are
    /// created with the first chunk, so a block without chunks gets an empty directory.
    pub fn create(chunks_dir: &Path) -> Result<Self, ChunksError> {
        fs::create_dir_all(chunks_dir).map_err(io_err("creating chunks directory", chunks_dir))?;
        if let Some(file) = segment_names(chunks_dir)?.into_iter().next() {
            return Err(ChunksError::NotEmpty {
                dir: chunks_dir.to_path_buf(),
                file,
            });
        }
        Ok(Self {
            dir: chunks_dir.to_path_buf(),
            max_segment_size: DEFAULT_MAX_SEGMENT_SIZE,
            current: None,
            segments: 0,
            finished_bytes: 0,
            scratch: Vec::with_capacity(16),
        })
    }

    /// Sets the size at which a new segment is started (default 512 MiB; small sizes are for
    /// tests). A chunk larger than this still gets a segment of its own.
    pub fn with_max_segment_size(mut self, bytes: u64) -> Self {
        self.max_segment_size = bytes;
        self
    }

    /// Appends a chunk and returns its reference.
    pub fn write_chunk(&mut self, encoding: u8, data: &[u8]) -> Result<u64, ChunksError> {
        // Like Prometheus, reserve the largest length field when deciding whether it fits.
        let reserve = MAX_LEN_FIELD + ENCODING_AND_CRC + data.len() as u64;
        let must_cut = match &self.current {
            None => true,
            Some((_, _, n)) => *n > SEGMENT_HEADER_SIZE && n + reserve > self.max_segment_size,
        };
        if must_cut {
            self.cut()?;
        }
        let Some((w, path, n)) = self.current.as_mut() else {
            return Err(ChunksError::Io {
                op: "writing chunk segment",
                path: self.dir.clone(),
                source: io::Error::other("no open segment file"),
            });
        };
        let offset = *n;
        if offset > u64::from(u32::MAX) || data.len() as u64 > u64::from(u32::MAX) {
            return Err(ChunksError::TooLarge {
                path: path.clone(),
                offset,
                len: data.len(),
            });
        }
        self.scratch.clear();
        put_uvarint(&mut self.scratch, data.len() as u64);
        self.scratch.push(encoding);
        let crc = crc32c_append(crc32c(&[encoding]), data);
        let write = |w: &mut BufWriter<File>, b: &[u8]| w.write_all(b);
        write(w, &self.scratch)
            .and_then(|_| write(w, data))
            .and_then(|_| write(w, &crc.to_be_bytes()))
            .map_err(io_err("writing chunk segment", path))?;
        *n += self.scratch.len() as u64 + data.len() as u64 + 4;
        Ok(chunk_ref(self.segments - 1, offset as u32))
    }

    /// Flushes and fsyncs the open segment and starts the next one.
    fn cut(&mut self) -> Result<(), ChunksError> {
        self.finish_current()?;
        let path = self
            .dir
            .join(segment_file_name(u64::from(self.segments) + 1));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("creating chunk segment", &path))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut header = [0u8; SEGMENT_HEADER_SIZE as usize];
        header[..4].copy_from_slice(&MAGIC_CHUNKS.to_be_bytes());
        header[4] = CHUNKS_FORMAT_V1;
        w.write_all(&header)
            .map_err(io_err("writing chunk segment header", &path))?;
        self.segments += 1;
        self.current = Some((w, path, SEGMENT_HEADER_SIZE));
        Ok(())
    }

    fn finish_current(&mut self) -> Result<(), ChunksError> {
        if let Some((w, path, n)) = self.current.take() {
            let file = w
                .into_inner()
                .map_err(|e| io_err("flushing chunk segment", &path)(e.into_error()))?;
            file.sync_all()
                .map_err(io_err("syncing chunk segment", &path))?;
            self.finished_bytes += n;
        }
        Ok(())
    }

    /// Flushes and fsyncs every segment and the directory; returns the total bytes written.
    pub fn finish(mut self) -> Result<u64, ChunksError> {
        self.finish_current()?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing chunks directory", &self.dir))?;
        Ok(self.finished_bytes)
    }
}

#[derive(Debug)]
struct Segment {
    /// Names the segment in errors: a local path, or `<bucket>/<key>`.
    path: PathBuf,
    src: Box<dyn ReadAt>,
    size: u64,
    /// Set once the header was read and found valid.
    checked: OnceLock<()>,
}

impl Segment {
    /// Checks the segment's size and 8-byte header.
    fn check_header(&self) -> Result<(), ChunksError> {
        if self.checked.get().is_some() {
            return Ok(());
        }
        let path = &self.path;
        if self.size < SEGMENT_HEADER_SIZE {
            return Err(ChunksError::ShortHeader {
                path: path.clone(),
                size: self.size,
            });
        }
        let mut header = [0u8; SEGMENT_HEADER_SIZE as usize];
        self.src
            .read_exact_at(&mut header, 0)
            .map_err(io_err("reading chunk segment header", path))?;
        let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if magic != MAGIC_CHUNKS {
            return Err(ChunksError::BadMagic {
                path: path.clone(),
                found: magic,
            });
        }
        if header[4] != CHUNKS_FORMAT_V1 {
            return Err(ChunksError::BadVersion {
                path: path.clone(),
                found: header[4],
            });
        }
        let _ = self.checked.set(());
        Ok(())
    }
}

/// Reads chunks of a block by reference, with positioned reads of the segment files (local
/// files or bucket objects, see [`ReadAt`]).
#[derive(Debug)]
pub struct SegmentReader {
    dir: PathBuf,
    segments: Vec<Segment>,
    total: u64,
}

impl SegmentReader {
    /// Opens every segment file in `chunks_dir` and checks its header.
    pub fn open(chunks_dir: &Path) -> Result<Self, ChunksError> {
        let mut sources = Vec::new();
        for name in segment_names(chunks_dir)? {
            let path = chunks_dir.join(name);
            let file = File::open(&path).map_err(io_err("opening chunk segment", &path))?;
            let src =
                FileReadAt::new(file).map_err(io_err("reading size of chunk segment", &path))?;
            sources.push((path, Box::new(src) as Box<dyn ReadAt>));
        }
        let r = Self::from_sources(chunks_dir, sources);
        for seg in &r.segments {
            seg.check_header()?;
        }
        Ok(r)
    }

    /// A reader over the given segments, in segment index order (`000001` first), each with the
    /// name that stands for it in errors; `dir` names the chunks directory. Headers are checked
    /// on the first read of each segment, so opening costs no reads.
    pub fn from_sources(dir: &Path, sources: Vec<(PathBuf, Box<dyn ReadAt>)>) -> Self {
        let segments: Vec<Segment> = sources
            .into_iter()
            .map(|(path, src)| Segment {
                path,
                size: src.size(),
                src,
                checked: OnceLock::new(),
            })
            .collect();
        Self {
            dir: dir.to_path_buf(),
            total: segments.iter().map(|s| s.size).sum(),
            segments,
        }
    }

    /// Hints that the chunks at `refs` will be read: a bucket-backed reader fetches them
    /// together (local files ignore it). Asks for the bytes one first read of a chunk takes.
    pub fn prefetch(&self, refs: &[u64]) {
        let mut per_segment: Vec<Vec<Range<u64>>> = vec![Vec::new(); self.segments.len()];
        for &r in refs {
            let (seg, offset) = split_chunk_ref(r);
            if let (Some(seg), Some(ranges)) = (
                self.segments.get(seg as usize),
                per_segment.get_mut(seg as usize),
            ) {
                let offset = u64::from(offset);
                if offset < seg.size {
                    ranges.push(offset..(offset + FIRST_READ).min(seg.size));
                }
            }
        }
        for (seg, ranges) in self.segments.iter().zip(&per_segment) {
            if !ranges.is_empty() {
                seg.src.prefetch(ranges);
            }
        }
    }

    /// Total size of the segment files in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Number of segment files.
    pub fn num_segments(&self) -> usize {
        self.segments.len()
    }

    /// Reads the chunk at `chunk_ref`, verifying its checksum; returns its encoding and data.
    pub fn read(&self, chunk_ref: u64) -> Result<(u8, Vec<u8>), ChunksError> {
        let (seg_idx, offset) = split_chunk_ref(chunk_ref);
        let offset = u64::from(offset);
        let Some(seg) = self.segments.get(seg_idx as usize) else {
            return Err(ChunksError::UnknownSegment {
                chunk_ref,
                segment: seg_idx,
                dir: self.dir.clone(),
                segments: self.segments.len(),
            });
        };
        seg.check_header()?;
        if offset < SEGMENT_HEADER_SIZE || offset >= seg.size {
            return Err(ChunksError::RefOutOfRange {
                chunk_ref,
                path: seg.path.clone(),
                offset,
                size: seg.size,
            });
        }
        let first = FIRST_READ.min(seg.size - offset);
        let mut buf = vec![0u8; first as usize];
        seg.src
            .read_exact_at(&mut buf, offset)
            .map_err(io_err("reading chunk segment", &seg.path))?;
        let (len, n) = match uvarint(&buf) {
            Some((len, n)) if n as u64 <= MAX_LEN_FIELD => (len, n as u64),
            Some(_) => {
                return Err(ChunksError::BadLength {
                    path: seg.path.clone(),
                    offset,
                });
            }
            None if first >= MAX_LEN_FIELD => {
                return Err(ChunksError::BadLength {
                    path: seg.path.clone(),
                    offset,
                });
            }
            None => {
                return Err(ChunksError::Truncated {
                    path: seg.path.clone(),
                    offset,
                    end: offset + MAX_LEN_FIELD,
                    size: seg.size,
                });
            }
        };
        let chunk_len = n + len + ENCODING_AND_CRC;
        let end = offset + chunk_len;
        if end > seg.size {
            return Err(ChunksError::Truncated {
                path: seg.path.clone(),
                offset,
                end,
                size: seg.size,
            });
        }
        if chunk_len > first {
            let have = buf.len();
            buf.resize(chunk_len as usize, 0);
            seg.src
                .read_exact_at(&mut buf[have..], offset + have as u64)
                .map_err(io_err("reading chunk segment", &seg.path))?;
        } else {
            buf.truncate(chunk_len as usize);
        }
        let crc_at = buf.len() - 4;
        let stored = u32::from_be_bytes([
            buf[crc_at],
            buf[crc_at + 1],
            buf[crc_at + 2],
            buf[crc_at + 3],
        ]);
        let computed = crc32c(&buf[n as usize..crc_at]);
        if stored != computed {
            return Err(ChunksError::BadCrc {
                path: seg.path.clone(),
                offset,
                stored,
                computed,
            });
        }
        let encoding = buf[n as usize];
        buf.truncate(crc_at);
        buf.drain(..n as usize + 1);
        Ok((encoding, buf))
    }

    /// References of every chunk in the segment files, in file order, found by walking the
    /// length fields (for tools such as `analyze`; queries get references from the index).
    pub fn chunk_refs(&self) -> Result<Vec<u64>, ChunksError> {
        let mut refs = Vec::new();
        for (i, seg) in self.segments.iter().enumerate() {
            seg.check_header()?;
            let mut offset = SEGMENT_HEADER_SIZE;
            while offset < seg.size {
                let mut head = [0u8; MAX_LEN_FIELD as usize];
                let avail = (seg.size - offset).min(MAX_LEN_FIELD) as usize;
                seg.src
                    .read_exact_at(&mut head[..avail], offset)
                    .map_err(io_err("reading chunk segment", &seg.path))?;
                let Some((len, n)) = uvarint(&head[..avail]) else {
                    return Err(ChunksError::BadLength {
                        path: seg.path.clone(),
                        offset,
                    });
                };
                let end = offset + n as u64 + len + ENCODING_AND_CRC;
                if end > seg.size || offset > u64::from(u32::MAX) {
                    return Err(ChunksError::Truncated {
                        path: seg.path.clone(),
                        offset,
                        end,
                        size: seg.size,
                    });
                }
                refs.push(chunk_ref(i as u32, offset as u32));
                offset = end;
            }
        }
        Ok(refs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkenc::{ENCODING_XOR, XorChunk, decode_xor};
    use std::process::Command;

    fn sample_chunk(seed: i64, n: i64) -> Vec<u8> {
        let mut c = XorChunk::new();
        for i in 0..n {
            c.append(seed * 1_000_000 + i * 15_000, (seed * 7 + i) as f64 * 0.25);
        }
        c.into_bytes()
    }

    fn write_all(dir: &Path, max: u64, chunks: &[Vec<u8>]) -> (Vec<u64>, u64) {
        let mut w = SegmentWriter::create(dir)
            .unwrap()
            .with_max_segment_size(max);
        let refs = chunks
            .iter()
            .map(|c| w.write_chunk(ENCODING_XOR, c).unwrap())
            .collect();
        (refs, w.finish().unwrap())
    }

    #[test]
    fn chunks_round_trip_across_cut_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("chunks");
        let chunks: Vec<Vec<u8>> = (0..200).map(|i| sample_chunk(i, 1 + i % 130)).collect();
        let (refs, total) = write_all(&dir, 4096, &chunks);
        let r = SegmentReader::open(&dir).unwrap();
        assert!(r.num_segments() > 3, "{} segments", r.num_segments());
        assert_eq!(r.total_bytes(), total);
        let on_disk: u64 = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, total);
        for name in segment_names(&dir).unwrap() {
            let size = fs::metadata(dir.join(&name)).unwrap().len();
            // Only a segment holding a single oversized chunk may pass the limit.
            assert!(size <= 4096, "{name} has {size} bytes");
        }
        assert_eq!(segment_names(&dir).unwrap()[0], "000001");
        assert_eq!(split_chunk_ref(refs[0]), (0, 8));
        for (r_, c) in refs.iter().zip(&chunks) {
            let (enc, data) = r.read(*r_).unwrap();
            assert_eq!(enc, ENCODING_XOR);
            assert_eq!(&data, c);
        }
        assert_eq!(r.chunk_refs().unwrap(), refs);
    }

    #[test]
    fn segment_header_and_chunk_layout_are_prometheus_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let data = vec![0u8, 1, 2, 3, 4];
        let mut w = SegmentWriter::create(tmp.path()).unwrap();
        assert_eq!(w.write_chunk(1, &data).unwrap(), 8);
        assert_eq!(w.finish().unwrap(), 8 + 1 + 1 + 5 + 4);
        let b = fs::read(tmp.path().join("000001")).unwrap();
        assert_eq!(&b[..8], &[0x85, 0xbd, 0x40, 0xdd, 1, 0, 0, 0]);
        assert_eq!(&b[8..15], &[5, 1, 0, 1, 2, 3, 4]);
        let crc = crc32c(&[1, 0, 1, 2, 3, 4]);
        assert_eq!(&b[15..], &crc.to_be_bytes());
    }

    #[test]
    fn oversized_chunk_gets_a_segment_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let big = vec![7u8; 3000];
        let (refs, _) = write_all(tmp.path(), 1000, &[vec![1, 2], big.clone(), vec![3, 4]]);
        let segs: Vec<u32> = refs.iter().map(|r| split_chunk_ref(*r).0).collect();
        assert_eq!(segs, vec![0, 1, 2]);
        let r = SegmentReader::open(tmp.path()).unwrap();
        assert_eq!(r.read(refs[1]).unwrap().1, big);
    }

    #[test]
    fn empty_writer_creates_no_segment_and_refuses_used_directory() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            SegmentWriter::create(tmp.path()).unwrap().finish().unwrap(),
            0
        );
        assert_eq!(SegmentReader::open(tmp.path()).unwrap().num_segments(), 0);
        write_all(tmp.path(), DEFAULT_MAX_SEGMENT_SIZE, &[vec![1, 2]]);
        let e = SegmentWriter::create(tmp.path()).unwrap_err();
        assert!(matches!(e, ChunksError::NotEmpty { .. }), "{e}");
    }

    #[test]
    fn bad_magic_and_version_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_all(tmp.path(), DEFAULT_MAX_SEGMENT_SIZE, &[vec![1, 2]]);
        let path = tmp.path().join("000001");
        let orig = fs::read(&path).unwrap();
        let mut b = orig.clone();
        b[0] = 0x12;
        fs::write(&path, &b).unwrap();
        let e = SegmentReader::open(tmp.path()).unwrap_err();
        assert!(matches!(e, ChunksError::BadMagic { .. }));
        let msg = e.to_string();
        assert!(msg.contains("000001") && msg.contains("offset 0"), "{msg}");
        let mut b = orig.clone();
        b[4] = 2;
        fs::write(&path, &b).unwrap();
        let e = SegmentReader::open(tmp.path()).unwrap_err();
        assert!(e.to_string().contains("version 2 at offset 4"), "{e}");
        fs::write(&path, &orig[..5]).unwrap();
        let e = SegmentReader::open(tmp.path()).unwrap_err();
        assert!(matches!(e, ChunksError::ShortHeader { size: 5, .. }), "{e}");
    }

    #[test]
    fn corrupt_chunk_reports_bad_crc_with_file_and_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let (refs, _) = write_all(
            tmp.path(),
            DEFAULT_MAX_SEGMENT_SIZE,
            &[sample_chunk(1, 10), sample_chunk(2, 10)],
        );
        let path = tmp.path().join("000001");
        let mut b = fs::read(&path).unwrap();
        let second = split_chunk_ref(refs[1]).1 as usize;
        b[second + 5] ^= 0x40;
        fs::write(&path, &b).unwrap();
        let r = SegmentReader::open(tmp.path()).unwrap();
        assert!(r.read(refs[0]).is_ok());
        let e = r.read(refs[1]).unwrap_err();
        assert!(matches!(e, ChunksError::BadCrc { offset, .. } if offset == second as u64));
        let msg = e.to_string();
        assert!(
            msg.contains("000001") && msg.contains(&format!("offset {second}")),
            "{msg}"
        );
    }

    #[test]
    fn bad_references_and_truncation_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let (refs, _) = write_all(
            tmp.path(),
            DEFAULT_MAX_SEGMENT_SIZE,
            &[sample_chunk(1, 10), sample_chunk(2, 100)],
        );
        let path = tmp.path().join("000001");
        let size = fs::metadata(&path).unwrap().len();
        let r = SegmentReader::open(tmp.path()).unwrap();
        assert!(matches!(
            r.read(chunk_ref(1, 8)).unwrap_err(),
            ChunksError::UnknownSegment { segment: 1, .. }
        ));
        let e = r.read(chunk_ref(0, size as u32)).unwrap_err();
        assert!(matches!(e, ChunksError::RefOutOfRange { .. }), "{e}");
        assert!(matches!(
            r.read(chunk_ref(0, 3)).unwrap_err(),
            ChunksError::RefOutOfRange { .. }
        ));
        drop(r);
        let b = fs::read(&path).unwrap();
        fs::write(&path, &b[..b.len() - 10]).unwrap();
        let r = SegmentReader::open(tmp.path()).unwrap();
        assert!(r.read(refs[0]).is_ok());
        let e = r.read(refs[1]).unwrap_err();
        assert!(matches!(e, ChunksError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("000001"), "{e}");
        assert!(matches!(
            r.chunk_refs().unwrap_err(),
            ChunksError::Truncated { .. }
        ));
        // An overlong length field.
        let mut b = b.clone();
        let at = split_chunk_ref(refs[1]).1 as usize;
        b[at..at + 6].copy_from_slice(&[0xff; 6]);
        fs::write(&path, &b).unwrap();
        let r = SegmentReader::open(tmp.path()).unwrap();
        assert!(matches!(
            r.read(refs[1]).unwrap_err(),
            ChunksError::BadLength { .. }
        ));
    }

    #[test]
    fn promtool_segment_is_read_and_rewritten_byte_for_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let start: i64 = 1_699_999_200;
        let mut text = String::from("# TYPE m gauge\n");
        for s in 0..4 {
            for i in 0..400i64 {
                let v = ((i * 37 + s * 11) % 101) as f64 / 4.0;
                text.push_str(&format!("m{{s=\"{s}\"}} {v} {}\n", start + i * 15));
            }
        }
        text.push_str("# EOF\n");
        let input = tmp.path().join("in.om");
        fs::write(&input, text).unwrap();
        let out = tmp.path().join("out");
        let res = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(&out)
            .output()
            .expect("promtool must be installed (tests/run.sh installs it)");
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        let block = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.join("chunks").is_dir())
            .expect("a block");
        let theirs = block.join("chunks");
        let r = SegmentReader::open(&theirs).unwrap();
        let refs = r.chunk_refs().unwrap();
        assert!(refs.len() >= 4 * 3, "{} chunks", refs.len());
        let mut samples = 0;
        let mine = tmp.path().join("mine");
        let mut w = SegmentWriter::create(&mine).unwrap();
        for &cr in &refs {
            let (enc, data) = r.read(cr).unwrap();
            samples += decode_xor(&data)
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .len();
            assert_eq!(w.write_chunk(enc, &data).unwrap(), cr);
        }
        assert_eq!(samples, 4 * 400);
        w.finish().unwrap();
        assert_eq!(
            fs::read(mine.join("000001")).unwrap(),
            fs::read(theirs.join("000001")).unwrap()
        );
    }
}
