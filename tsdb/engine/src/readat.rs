//! Positioned byte sources the block readers ([`crate::index::IndexReader`],
//! [`crate::chunks::SegmentReader`]) read from: a local file ([`FileReadAt`]), or an object in
//! the bucket behind the querier's page cache (`objstore::pagecache::BucketObject`). The readers
//! only ever ask for byte ranges, so where the bytes live is this trait's business alone.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// A fixed-size sequence of bytes read by position, from any thread.
pub trait ReadAt: Send + Sync + std::fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`; an error when they are not
    /// all there.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Hints that the byte ranges `ranges` (sorted or not) will be read soon, so a remote source
    /// can fetch them together; local files ignore it. Errors are left to the reads.
    fn prefetch(&self, ranges: &[Range<u64>]) {
        let _ = ranges;
    }
}

/// A local file: positioned reads straight from the OS, nothing cached here.
#[derive(Debug)]
pub struct FileReadAt {
    file: File,
    size: u64,
}

impl FileReadAt {
    /// Wraps an open file; its size is taken now (the file must not change while read).
    pub fn new(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }
}

impl ReadAt for FileReadAt {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// Bytes in memory (tests, small objects).
impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "bytes {offset}..{} past the end ({} bytes)",
                        offset + buf.len() as u64,
                        self.len()
                    ),
                )
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let f = FileReadAt::new(File::open(&p).unwrap()).unwrap();
        let v = b"0123456789".to_vec();
        for src in [&f as &dyn ReadAt, &v] {
            assert_eq!(src.size(), 10);
            let mut buf = [0u8; 4];
            src.read_exact_at(&mut buf, 6).unwrap();
            assert_eq!(&buf, b"6789");
            let e = src.read_exact_at(&mut buf, 7).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        }
    }
}
