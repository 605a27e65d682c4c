//! Reads one segment page by page and reassembles records from their fragments, checking every
//! fragment's CRC and the fragment sequence; the first inconsistency is reported with the offset
//! of the record it breaks, which is where a repair truncates.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::page::{
    FRAG_FIRST, FRAG_FULL, FRAG_LAST, HEADER_SIZE, PAGE_SIZE, SNAPPY_FLAG, TYPE_MASK,
};
use crate::encoding::crc32c;

/// Why reading a segment stopped early.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file could not be read.
    Io(io::Error),
    /// The segment is torn or corrupt; `offset` is the start of the record that is broken.
    Corrupt { offset: u64, reason: String },
}

/// A reader of the records of one segment file.
pub(crate) struct SegmentReader {
    path: PathBuf,
    file: File,
    page: Vec<u8>,
    page_len: usize,
    page_start: u64,
    pos: usize,
    loaded: bool,
    record: Vec<u8>,
    decompressed: Vec<u8>,
}

impl SegmentReader {
    /// Opens `path` for reading from its start.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: File::open(path)?,
            page: vec![0; PAGE_SIZE],
            page_len: 0,
            page_start: 0,
            pos: 0,
            loaded: false,
            record: Vec::new(),
            decompressed: Vec::new(),
        })
    }

    /// The segment's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn load_page(&mut self) -> io::Result<()> {
        if self.loaded {
            self.page_start += self.page_len as u64;
        }
        self.loaded = true;
        let mut n = 0;
        while n < PAGE_SIZE {
            match self.file.read(&mut self.page[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.page_len = n;
        self.pos = 0;
        Ok(())
    }

    /// The next record's bytes (decompressed) and the offset where it starts, or `None` at a clean
    /// end of the segment.
    pub(crate) fn next_record(&mut self) -> Result<Option<(u64, &[u8])>, ReadError> {
        self.record.clear();
        let mut start: Option<u64> = None;
        let mut compressed = false;
        loop {
            if self.pos >= self.page_len {
                if self.loaded && self.page_len < PAGE_SIZE {
                    return Self::end(start);
                }
                self.load_page().map_err(ReadError::Io)?;
                if self.page_len == 0 {
                    return Self::end(start);
                }
            }
            let at = self.page_start + self.pos as u64;
            let left = self.page_len - self.pos;
            let type_byte = self.page[self.pos];
            let corrupt = |reason: String| ReadError::Corrupt {
                offset: start.unwrap_or(at),
                reason: if start.is_some_and(|s| s != at) {
                    format!("{reason} (fragment at offset {at})")
                } else {
                    reason
                },
            };
            if type_byte == 0 {
                // Page terminator: the writer padded the rest of the page with zeros.
                if self.page[self.pos..self.page_len].iter().any(|&b| b != 0) {
                    return Err(corrupt("non-zero bytes after a page terminator".into()));
                }
                self.pos = self.page_len;
                continue;
            }
            if left < HEADER_SIZE {
                return Err(corrupt(if self.page_len < PAGE_SIZE {
                    "segment ends inside a fragment header".into()
                } else {
                    "fragment header crosses a page boundary".into()
                }));
            }
            let kind = type_byte & TYPE_MASK;
            if type_byte & !(TYPE_MASK | SNAPPY_FLAG) != 0
                || !(FRAG_FULL..=FRAG_LAST).contains(&kind)
            {
                return Err(corrupt(format!(
                    "invalid fragment type byte {type_byte:#04x}"
                )));
            }
            let p = &self.page[self.pos..self.page_len];
            let len = usize::from(u16::from_be_bytes([p[1], p[2]]));
            let crc = u32::from_be_bytes([p[3], p[4], p[5], p[6]]);
            if HEADER_SIZE + len > left {
                return Err(corrupt(if self.page_len < PAGE_SIZE {
                    format!("segment ends inside a fragment of {len} bytes")
                } else {
                    format!("fragment of {len} bytes crosses a page boundary")
                }));
            }
            let data = &p[HEADER_SIZE..HEADER_SIZE + len];
            let got = crc32c(data);
            if got != crc {
                return Err(corrupt(format!(
                    "fragment checksum mismatch: stored {crc:#010x}, computed {got:#010x}"
                )));
            }
            let flag = type_byte & SNAPPY_FLAG != 0;
            if kind == FRAG_FULL || kind == FRAG_FIRST {
                if start.is_some() {
                    return Err(corrupt("record restarts before its last fragment".into()));
                }
                start = Some(at);
                compressed = flag;
            } else if start.is_none() {
                return Err(corrupt(
                    "continuation fragment without a first fragment".into(),
                ));
            }
            self.record.extend_from_slice(data);
            self.pos += HEADER_SIZE + len;
            if kind == FRAG_FULL || kind == FRAG_LAST {
                break;
            }
        }
        let start = start.unwrap_or_default();
        if compressed {
            let n = snap::raw::decompress_len(&self.record).map_err(|e| ReadError::Corrupt {
                offset: start,
                reason: format!("snappy header: {e}"),
            })?;
            // Snappy expands at most ~32x (a 2-byte copy yields 64 bytes); a larger claim is a
            // damaged header, and must not make us allocate gigabytes.
            if n > self.record.len().saturating_mul(64).saturating_add(1024) {
                return Err(ReadError::Corrupt {
                    offset: start,
                    reason: format!(
                        "snappy header claims {n} bytes from {} compressed bytes",
                        self.record.len()
                    ),
                });
            }
            self.decompressed.resize(n, 0);
            snap::raw::Decoder::new()
                .decompress(&self.record, &mut self.decompressed)
                .map_err(|e| ReadError::Corrupt {
                    offset: start,
                    reason: format!("snappy: {e}"),
                })?;
            Ok(Some((start, &self.decompressed)))
        } else {
            Ok(Some((start, &self.record)))
        }
    }

    fn end(start: Option<u64>) -> Result<Option<(u64, &'static [u8])>, ReadError> {
        match start {
            Some(offset) => Err(ReadError::Corrupt {
                offset,
                reason: "segment ends before the record's last fragment".into(),
            }),
            None => Ok(None),
        }
    }
}
