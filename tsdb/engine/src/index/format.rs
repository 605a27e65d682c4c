//! The index file's fixed format: magic, version, alignment, the table of contents, and the
//! errors and statistics reading and writing report. Shared by the reader and the writer.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::encoding::DecodeError;

/// Why an index file could not be written or read. Format errors name the file and byte offset.
#[derive(Debug, Error)]
pub enum IndexError {
    /// Reading, writing or syncing the file failed.
    #[error("{op} index file {}: {source}", .path.display())]
    Io {
        /// What was being done (`open`, `read`, `write`, `sync`).
        op: &'static str,
        /// The index file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the index magic number.
    #[error("index file {}: bad magic number {found:#010x} at offset 0, want 0xbaaad700", .path.display())]
    BadMagic {
        /// The index file.
        path: PathBuf,
        /// The four bytes found.
        found: u32,
    },
    /// The file has an index format version other than 2.
    #[error("index file {}: unsupported format version {version} at offset 4, only version 2 is supported", .path.display())]
    UnsupportedVersion {
        /// The index file.
        path: PathBuf,
        /// The version byte found.
        version: u8,
    },
    /// A section's stored CRC32-Castagnoli does not match its bytes.
    #[error("index file {}: CRC32 mismatch in {section} at offset {offset}: stored {stored:#010x}, computed {computed:#010x}", .path.display())]
    Checksum {
        /// The index file.
        path: PathBuf,
        /// Which section (`TOC`, `symbol table`, `series`, `postings list`, …).
        section: &'static str,
        /// File offset where the section starts.
        offset: u64,
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum computed over the section.
        computed: u32,
    },
    /// A section or entry extends past the end of the file.
    #[error("index file {}: truncated: {what} at offset {offset} needs {need} bytes, but the file has {size}", .path.display())]
    Truncated {
        /// The index file.
        path: PathBuf,
        /// What was being read.
        what: &'static str,
        /// File offset where it starts.
        offset: u64,
        /// Bytes it needs from that offset.
        need: u64,
        /// File size.
        size: u64,
    },
    /// A section's contents cannot be decoded.
    #[error("index file {}: corrupt {section} at offset {offset}: {what}", .path.display())]
    Corrupt {
        /// The index file.
        path: PathBuf,
        /// Which section.
        section: &'static str,
        /// File offset of the bad bytes.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A reference (series, symbol, postings offset) points outside what it may point to.
    #[error("index file {}: {what} reference {reference} at offset {offset} out of range (limit {limit})", .path.display())]
    OutOfRange {
        /// The index file.
        path: PathBuf,
        /// Kind of reference.
        what: &'static str,
        /// The reference value.
        reference: u64,
        /// File offset the reference was read from, or where it points.
        offset: u64,
        /// The bound it exceeds.
        limit: u64,
    },
    /// The series handed to the writer break an invariant of the format.
    #[error("writing index file {}: {what}", .path.display())]
    InvalidInput {
        /// The index file being written.
        path: PathBuf,
        /// Which invariant is broken, and by what.
        what: String,
    },
}

impl IndexError {
    pub(crate) fn corrupt(path: &Path, section: &'static str, e: DecodeError) -> Self {
        IndexError::Corrupt {
            path: path.to_path_buf(),
            section,
            offset: e.offset as u64,
            what: e.what,
        }
    }

    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        IndexError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What [`write_index`](super::write_index) wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    /// Number of series.
    pub series: u64,
    /// Number of strings in the symbol table.
    pub symbols: u64,
    /// Number of postings lists, including the all-postings list.
    pub postings: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
}

/// The four bytes every index file starts with.
pub const MAGIC_INDEX: u32 = 0xBAAA_D700;
/// The only format version written and read.
pub const FORMAT_V2: u8 = 2;
/// Length of magic number and version.
pub const HEADER_LEN: u64 = 5;
/// Length of the table of contents at the end of the file: six offsets and a CRC.
pub const TOC_LEN: u64 = 6 * 8 + 4;
/// Series entries start at multiples of this; a series reference is its offset divided by it.
pub const SERIES_ALIGN: u64 = 16;
/// Label indices and postings lists start at multiples of this.
pub(crate) const SECTION_ALIGN: u64 = 4;
/// Every this many symbols (and postings offset table entries per label name) one position is
/// kept in memory, as Prometheus does.
pub(crate) const SAMPLE_EVERY: usize = 32;

/// Table of contents: file offsets of the sections, 0 for an absent section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Toc {
    pub(crate) symbols: u64,
    pub(crate) series: u64,
    pub(crate) label_indices: u64,
    pub(crate) label_indices_table: u64,
    pub(crate) postings: u64,
    pub(crate) postings_table: u64,
}

impl Toc {
    pub(crate) fn entries(&self) -> [u64; 6] {
        [
            self.symbols,
            self.series,
            self.label_indices,
            self.label_indices_table,
            self.postings,
            self.postings_table,
        ]
    }
}
