//! Byte-level encoding shared by every on-disk format: big-endian integers, Go-style varints,
//! length-prefixed strings and CRC32-Castagnoli, with decoders that report the offset of bad input.

use thiserror::Error;

/// A decoding failure at a byte offset of the buffer being decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{what} at offset {offset}")]
pub struct DecodeError {
    /// Offset, from the start of the decoded buffer, where decoding failed.
    pub offset: usize,
    /// What was being decoded and why it failed.
    pub what: String,
}

/// CRC32 with the Castagnoli polynomial, as Prometheus uses in index, chunks and WAL.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continues a CRC32-Castagnoli over more data.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// An append-only encoding buffer.
#[derive(Debug, Default, Clone)]
pub struct Encbuf {
    /// The encoded bytes.
    pub buf: Vec<u8>,
}

impl Encbuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    /// Number of bytes written.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Drops everything written.
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// Appends one byte.
    pub fn put_byte(&mut self, b: u8) {
        self.buf.push(b);
    }

    /// Appends raw bytes.
    pub fn put_bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Appends a big-endian u16.
    pub fn put_be16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a big-endian u32.
    pub fn put_be32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a big-endian u64.
    pub fn put_be64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends an unsigned varint (Go's `binary.PutUvarint`).
    pub fn put_uvarint(&mut self, v: u64) {
        put_uvarint(&mut self.buf, v);
    }

    /// Appends a signed zig-zag varint (Go's `binary.PutVarint`).
    pub fn put_varint(&mut self, v: i64) {
        put_varint(&mut self.buf, v);
    }

    /// Appends a uvarint length followed by the string's bytes.
    pub fn put_uvarint_str(&mut self, s: &str) {
        self.put_uvarint_bytes(s.as_bytes());
    }

    /// Appends a uvarint length followed by the bytes.
    pub fn put_uvarint_bytes(&mut self, b: &[u8]) {
        self.put_uvarint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// Appends the CRC32-Castagnoli of `buf[start..]` as a big-endian u32.
    pub fn put_crc32_of_tail(&mut self, start: usize) {
        let c = crc32c(&self.buf[start..]);
        self.put_be32(c);
    }
}

/// Makes room for `additional` more bytes in `buf`, growing it by a quarter (at least `min`
/// bytes) instead of doubling. For buffers kept per series in memory, where doubling's unused
/// tail (up to half) would be paid by every series; the allocator's size classes are about a
/// quarter apart, so finer steps gain nothing.
#[inline]
pub(crate) fn reserve_quarter(buf: &mut Vec<u8>, additional: usize, min: usize) {
    if buf.len() + additional > buf.capacity() {
        buf.reserve_exact((buf.len() / 4).max(min).max(additional));
    }
}

/// Appends an unsigned varint to `out`.
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a signed zig-zag varint to `out`.
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Decodes an unsigned varint from the start of `b`, returning the value and its length.
pub fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x: u64 = 0;
    let mut s: u32 = 0;
    for (i, &byte) in b.iter().enumerate() {
        if i == 10 {
            return None;
        }
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return None;
            }
            return Some((x | (u64::from(byte) << s), i + 1));
        }
        x |= u64::from(byte & 0x7f) << s;
        s += 7;
    }
    None
}

/// Decodes a signed zig-zag varint from the start of `b`, returning the value and its length.
pub fn varint(b: &[u8]) -> Option<(i64, usize)> {
    let (ux, n) = uvarint(b)?;
    let mut x = (ux >> 1) as i64;
    if ux & 1 != 0 {
        x = !x;
    }
    Some((x, n))
}

/// A cursor decoding a byte slice; every error carries the absolute offset where it happened.
#[derive(Debug, Clone)]
pub struct Decbuf<'a> {
    data: &'a [u8],
    pos: usize,
    /// Added to positions in errors, so they are relative to the start of the file.
    base: usize,
}

impl<'a> Decbuf<'a> {
    /// A decoder over `data`; errors report offsets from the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self::with_base(data, 0)
    }

    /// A decoder over `data`, which starts at `base` in its file; errors report file offsets.
    pub fn with_base(data: &'a [u8], base: usize) -> Self {
        Self { data, pos: 0, base }
    }

    /// Offset in the file of the next byte to decode.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Position of the next byte within the decoded slice.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left to decode.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// The undecoded rest.
    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.pos..]
    }

    /// An error at the current offset.
    pub fn error(&self, what: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.offset(),
            what: what.into(),
        }
    }

    fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.remaining() < n {
            return Err(self.error(format!(
                "unexpected end of data reading {what}: need {n} bytes, have {}",
                self.remaining()
            )));
        }
        Ok(())
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.need(n, "skipped bytes")?;
        self.pos += n;
        Ok(())
    }

    /// Reads one byte.
    pub fn byte(&mut self) -> Result<u8, DecodeError> {
        self.need(1, "byte")?;
        let b = self.data[self.pos];
        self.pos += 1;
        Ok(b)
    }

    /// Reads `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        self.need(n, "bytes")?;
        let b = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    /// Reads a big-endian u16.
    pub fn be16(&mut self) -> Result<u16, DecodeError> {
        self.need(2, "u16")?;
        let v = u16::from_be_bytes([self.data[self.pos], self.data[self.pos + 1]]);
        self.pos += 2;
        Ok(v)
    }

    /// Reads a big-endian u32.
    pub fn be32(&mut self) -> Result<u32, DecodeError> {
        self.need(4, "u32")?;
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.data[self.pos..self.pos + 4]);
        self.pos += 4;
        Ok(u32::from_be_bytes(a))
    }

    /// Reads a big-endian u64.
    pub fn be64(&mut self) -> Result<u64, DecodeError> {
        self.need(8, "u64")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.data[self.pos..self.pos + 8]);
        self.pos += 8;
        Ok(u64::from_be_bytes(a))
    }

    /// Reads an unsigned varint.
    pub fn uvarint(&mut self) -> Result<u64, DecodeError> {
        match uvarint(self.rest()) {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(self.error("invalid or truncated uvarint")),
        }
    }

    /// Reads an unsigned varint that must fit a `usize` no larger than `max`.
    pub fn uvarint_usize(&mut self, max: usize, what: &str) -> Result<usize, DecodeError> {
        let at = self.offset();
        let v = self.uvarint()?;
        if v > max as u64 {
            return Err(DecodeError {
                offset: at,
                what: format!("{what} {v} exceeds limit {max}"),
            });
        }
        Ok(v as usize)
    }

    /// Reads a signed zig-zag varint.
    pub fn varint(&mut self) -> Result<i64, DecodeError> {
        match varint(self.rest()) {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(self.error("invalid or truncated varint")),
        }
    }

    /// Reads a uvarint length and that many bytes.
    pub fn uvarint_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.uvarint_usize(self.remaining(), "length")?;
        self.bytes(n)
    }

    /// Reads a uvarint length and that many bytes as UTF-8.
    pub fn uvarint_str(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.offset();
        let b = self.uvarint_bytes()?;
        std::str::from_utf8(b).map_err(|_| DecodeError {
            offset: at,
            what: "string is not valid UTF-8".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_uvarint(&mut b, v);
            assert_eq!(uvarint(&b), Some((v, b.len())));
        }
        for v in [0i64, -1, 1, -64, 64, i64::MIN, i64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(varint(&b), Some((v, b.len())));
        }
    }

    #[test]
    fn truncated_input_reports_its_offset() {
        let mut d = Decbuf::with_base(&[1, 2, 3], 100);
        d.byte().unwrap();
        let e = d.be32().unwrap_err();
        assert_eq!(e.offset, 101);
        assert!(e.what.contains("u32"), "{e}");
        let mut d = Decbuf::new(&[0x80, 0x80]);
        assert_eq!(d.uvarint().unwrap_err().offset, 0);
    }

    #[test]
    fn overlong_uvarint_is_rejected() {
        assert_eq!(uvarint(&[0xff; 11]), None);
        assert_eq!(
            uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            None
        );
    }
}
