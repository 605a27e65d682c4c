//! XOR ("Gorilla") chunk encoding of float samples, bit-compatible with Prometheus' `EncXOR`
//! chunks: the bytes [`XorChunk`] produces are the bytes Prometheus writes for the same samples,
//! and [`decode_xor`] reads chunks written by Prometheus.
//!
//! Chunk data layout (all bit fields most significant bit first):
//! - 2 bytes: big-endian sample count;
//! - sample 0: timestamp as zig-zag varint bytes, value as its raw 64 bits;
//! - sample 1: timestamp delta as uvarint bytes, value XOR-encoded against sample 0;
//! - sample n ≥ 2: delta-of-delta of the timestamp (`0` → 0; `10` + 14 bits; `110` + 17 bits;
//!   `1110` + 20 bits; `1111` + 64 bits), then the value XOR-encoded against sample n-1
//!   (`0` → unchanged; `10` + significant bits reusing the previous leading/trailing zero counts;
//!   `11` + 5-bit leading zeros + 6-bit significant bit count (0 means 64) + significant bits);
//! - zero padding to the next byte.
//!
//! Prometheus 2.x (up to 2.55) ends the data with one extra zero byte whenever its last write
//! was a whole byte starting on a byte boundary (its bit writer pre-appends the next byte);
//! Prometheus 3 dropped that byte. Both decode identically. [`XorChunk::new`] writes the 2.x
//! layout, byte for byte what the `promtool`/Prometheus 2.42 this project is tested against
//! writes; [`XorChunk::new_compact`] writes the 3.x layout.
//!
//! Decoding is the hot path of every query: [`XorIter`] reads through a 64-bit buffer refilled a
//! word at a time and allocates nothing per sample.

use thiserror::Error;

/// Chunk encoding byte of XOR chunks in chunk segment files (Prometheus' `EncXOR`).
pub const ENCODING_XOR: u8 = 1;

/// Number of samples at which Prometheus' head aims to cut a chunk (its `samplesPerChunk`).
/// The head may cut earlier (see [`compute_chunk_end_time`]) and cuts at twice this at the latest.
pub const MAX_SAMPLES_PER_CHUNK: usize = 120;

/// Size of the sample count header at the start of XOR chunk data.
const HEADER_BYTES: usize = 2;

/// Leading-zero count marking "no leading/trailing window chosen yet" in the encoder.
const LEADING_UNSET: u8 = 0xff;

/// A failure decoding XOR chunk data. Bit offsets count from the first bit of the chunk data,
/// including its 2-byte sample count header.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// The data cannot even hold the sample count.
    #[error("decoding XOR chunk: {len} bytes is shorter than the 2-byte sample count header")]
    TooShort {
        /// Length of the data.
        len: usize,
    },
    /// The data ended before all announced samples were decoded.
    #[error(
        "decoding XOR chunk: data ends at bit offset {bit_offset} before sample {sample} of {total} is complete"
    )]
    Truncated {
        /// Bit offset of the end of the data.
        bit_offset: u64,
        /// Index of the sample being decoded.
        sample: usize,
        /// Number of samples the header announces.
        total: usize,
    },
    /// A field holds a value no encoder produces.
    #[error("decoding XOR chunk: corrupt {what} of sample {sample} at bit offset {bit_offset}")]
    Corrupt {
        /// Bit offset of the bad field.
        bit_offset: u64,
        /// Index of the sample being decoded.
        sample: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The data holds more than padding after its last sample, so appending would corrupt it.
    #[error(
        "restoring XOR chunk for appends: last sample ends at bit offset {bit_offset} but the data has {len} bytes or non-zero padding"
    )]
    TrailingData {
        /// Bit offset right after the last sample.
        bit_offset: u64,
        /// Length of the data in bytes.
        len: usize,
    },
}

/// An XOR chunk being built (or restored with [`XorChunk::from_bytes`] to continue appending).
#[derive(Debug, Clone)]
pub struct XorChunk {
    /// Sample count header followed by the bit stream.
    stream: Vec<u8>,
    /// Bits still free in the last byte of `stream`: 0 when the next bit starts a new byte, 8
    /// when the last byte is the empty byte Prometheus 2.x appends after a whole-byte write.
    free: u8,
    /// Write the Prometheus 3 layout (no empty trailing byte).
    compact: bool,
    num: u16,
    t: i64,
    v: u64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
}

impl Default for XorChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl XorChunk {
    /// An empty chunk writing Prometheus 2.x's layout (see the module documentation).
    pub fn new() -> Self {
        Self::with_layout(false)
    }

    /// An empty chunk writing Prometheus 3's layout, without the empty trailing byte 2.x adds.
    pub fn new_compact() -> Self {
        Self::with_layout(true)
    }

    fn with_layout(compact: bool) -> Self {
        // Starts small and grows by a quarter (see `push`): a head holds one open chunk per
        // series, so slack in its buffer is paid once per series.
        let mut stream = Vec::with_capacity(32);
        stream.extend_from_slice(&[0, 0]);
        Self {
            stream,
            free: 0,
            compact,
            num: 0,
            t: 0,
            v: 0,
            t_delta: 0,
            leading: LEADING_UNSET,
            trailing: 0,
        }
    }

    /// Restores a chunk from its data, validating every sample, so that appending continues
    /// exactly as if all samples had been appended to this chunk without interruption.
    pub fn from_bytes(data: Vec<u8>) -> Result<XorChunk, ChunkError> {
        let mut it = decode_xor(&data);
        for r in it.by_ref() {
            r?;
        }
        let end = it.bit_position();
        let len = data.len();
        let total_bits = len as u64 * 8;
        let last = data.last().copied().unwrap_or(0);
        // Free bits in the last byte: 0..=7 of zero padding, or 8 for the empty byte that
        // Prometheus 2.x leaves after a whole-byte write ending on a byte boundary.
        let free = match total_bits.checked_sub(end) {
            Some(0) => Some(0),
            Some(pad @ 1..=7) if last & ((1u8 << pad) - 1) == 0 => Some(pad as u8),
            Some(8) if last == 0 && it.total > 0 => Some(8),
            _ => None,
        };
        let Some(free) = free else {
            return Err(ChunkError::TrailingData {
                bit_offset: end,
                len,
            });
        };
        Ok(XorChunk {
            free,
            compact: false,
            num: it.total,
            t: it.t,
            v: it.v,
            t_delta: it.t_delta,
            // A fresh appender has no window until the first non-zero XOR; keep that state so
            // the bytes equal those of an uninterrupted appender.
            leading: if it.window_set {
                it.leading
            } else {
                LEADING_UNSET
            },
            trailing: it.trailing,
            stream: data,
        })
    }

    /// Appends a sample. Timestamps should increase (the head rejects others before appending);
    /// arithmetic wraps like Prometheus' so any input round-trips.
    ///
    /// # Panics
    /// If the chunk already holds `u16::MAX` samples, the most its header can count; callers
    /// cut chunks long before (at about [`MAX_SAMPLES_PER_CHUNK`]).
    pub fn append(&mut self, t: i64, v: f64) {
        assert!(self.num < u16::MAX, "XOR chunk holds u16::MAX samples");
        let vbits = v.to_bits();
        let mut t_delta = 0;
        match self.num {
            0 => {
                self.write_uvarint(((t << 1) ^ (t >> 63)) as u64);
                self.write_bits(vbits, 64);
            }
            1 => {
                t_delta = t.wrapping_sub(self.t) as u64;
                self.write_uvarint(t_delta);
                self.write_value(vbits);
            }
            _ => {
                t_delta = t.wrapping_sub(self.t) as u64;
                let dod = t_delta.wrapping_sub(self.t_delta) as i64;
                if dod == 0 {
                    self.write_raw(0, 1);
                } else if bit_range(dod, 14) {
                    self.write_raw((0b10 << 14) | (dod as u64 & 0x3fff), 16);
                } else if bit_range(dod, 17) {
                    self.write_raw((0b110 << 17) | (dod as u64 & 0x1_ffff), 20);
                } else if bit_range(dod, 20) {
                    self.write_raw((0b1110 << 20) | (dod as u64 & 0xf_ffff), 24);
                } else {
                    self.write_raw(0b1111, 4);
                    self.write_bits(dod as u64, 64);
                }
                self.write_value(vbits);
            }
        }
        self.t = t;
        self.v = vbits;
        self.t_delta = t_delta;
        self.num += 1;
        self.stream[..HEADER_BYTES].copy_from_slice(&self.num.to_be_bytes());
    }

    /// Number of samples in the chunk.
    pub fn num_samples(&self) -> usize {
        usize::from(self.num)
    }

    /// The chunk data as Prometheus stores it (sample count header and bit stream).
    pub fn bytes(&self) -> &[u8] {
        &self.stream
    }

    /// Bytes the chunk holds on the heap (its buffer's capacity).
    pub fn heap_bytes(&self) -> usize {
        self.stream.capacity()
    }

    /// The last sample appended, if any.
    pub fn last(&self) -> Option<(i64, f64)> {
        (self.num > 0).then(|| (self.t, f64::from_bits(self.v)))
    }

    /// The chunk data, consuming the chunk.
    pub fn into_bytes(self) -> Vec<u8> {
        self.stream
    }

    /// Iterates over the samples.
    pub fn iter(&self) -> XorIter<'_> {
        decode_xor(&self.stream)
    }

    /// Timestamp of the first sample, `None` when empty (decoded: it is the stream's first
    /// field, and keeping it would cost every open chunk of the head 8 bytes).
    pub fn min_time(&self) -> Option<i64> {
        if self.num == 0 {
            return None;
        }
        decode_xor(&self.stream).next()?.ok().map(|(t, _)| t)
    }

    /// Timestamp of the last sample, `None` when empty.
    pub fn max_time(&self) -> Option<i64> {
        (self.num > 0).then_some(self.t)
    }

    /// XOR-encodes `vbits` against the previous value.
    fn write_value(&mut self, vbits: u64) {
        let delta = vbits ^ self.v;
        if delta == 0 {
            self.write_raw(0, 1);
            return;
        }
        // Leading zeros are clamped to 31: the field has 5 bits.
        let leading = (delta.leading_zeros() as u8).min(31);
        let trailing = delta.trailing_zeros() as u8;
        if self.leading != LEADING_UNSET && leading >= self.leading && trailing >= self.trailing {
            let sig = 64 - u32::from(self.leading) - u32::from(self.trailing);
            self.write_raw(0b10, 2);
            self.write_bits(delta >> self.trailing, sig);
            return;
        }
        self.leading = leading;
        self.trailing = trailing;
        let sig = 64 - u32::from(leading) - u32::from(trailing);
        // Control `11`, 5 bits leading, 6 bits significant count (64 is written as 0).
        let header = (0b11 << 11) | (u64::from(leading) << 6) | u64::from(sig & 0x3f);
        self.write_raw(header, 13);
        self.write_bits(delta >> trailing, sig);
    }

    /// Writes bytes of an unsigned varint into the bit stream.
    fn write_uvarint(&mut self, mut x: u64) {
        while x >= 0x80 {
            self.write_bits((x & 0x7f) | 0x80, 8);
            x >>= 7;
        }
        self.write_bits(x, 8);
    }

    /// Appends the low `n` bits of `v` as one Prometheus `writeBits`/`writeByte` call: in the 2.x
    /// layout a call made of whole bytes that ends on a byte boundary leaves an empty byte.
    fn write_bits(&mut self, v: u64, n: u32) {
        self.write_raw(v, n);
        if !self.compact && n.is_multiple_of(8) && self.free == 0 {
            self.push(0);
            self.free = 8;
        }
    }

    /// Appends the low `n` bits of `v` (1 ≤ n ≤ 64), most significant first, for writes whose
    /// last Prometheus call does not end in a whole byte.
    fn write_raw(&mut self, v: u64, n: u32) {
        let mut n = n;
        let v = if n >= 64 { v } else { v & ((1u64 << n) - 1) };
        if self.free > 0 {
            let free = self.free;
            if let Some(last) = self.stream.last_mut() {
                if n <= u32::from(free) {
                    *last |= (v << (u32::from(free) - n)) as u8;
                    self.free -= n as u8;
                    return;
                }
                *last |= (v >> (n - u32::from(free))) as u8;
            }
            n -= u32::from(free);
            self.free = 0;
        }
        while n >= 8 {
            n -= 8;
            self.push((v >> n) as u8);
        }
        if n > 0 {
            self.push((v << (8 - n)) as u8);
            self.free = 8 - n as u8;
        }
    }

    /// Appends a byte, growing the buffer by a quarter rather than doubling it (chunks grow a
    /// byte or two per sample, so the unused tail stays near an eighth of the chunk).
    #[inline]
    fn push(&mut self, b: u8) {
        crate::encoding::reserve_quarter(&mut self.stream, 1, 16);
        self.stream.push(b);
    }
}

/// Whether `x` fits the `nbits`-bit delta-of-delta bucket. The range is Prometheus' and is
/// asymmetric: `-(2^(n-1) - 1) ..= 2^(n-1)`.
fn bit_range(x: i64, nbits: u32) -> bool {
    let half = 1i64 << (nbits - 1);
    -(half - 1) <= x && x <= half
}

/// Prometheus' head chunk cutting: when a chunk reaches a quarter of [`MAX_SAMPLES_PER_CHUNK`]
/// samples between `start` and `cur`, it predicts the end time so that the remaining samples
/// up to `max` (the end of the block range) are spread evenly over equally full chunks.
pub fn compute_chunk_end_time(start: i64, cur: i64, max: i64) -> i64 {
    let denom = (cur - start + 1).saturating_mul(4);
    if denom <= 0 {
        return max;
    }
    let n = (max - start) / denom;
    if n <= 1 {
        return max;
    }
    start + (max - start) / n
}

/// Decodes XOR chunk data (as stored in a chunk segment file, header included).
pub fn decode_xor(data: &[u8]) -> XorIter<'_> {
    if data.len() < HEADER_BYTES {
        return XorIter {
            r: BitReader::new(&[]),
            total: 0,
            read: 0,
            t: 0,
            t_delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
            window_set: false,
            pending: Some(ChunkError::TooShort { len: data.len() }),
        };
    }
    XorIter {
        r: BitReader::new(&data[HEADER_BYTES..]),
        total: u16::from_be_bytes([data[0], data[1]]),
        read: 0,
        t: 0,
        t_delta: 0,
        v: 0,
        leading: 0,
        trailing: 0,
        window_set: false,
        pending: None,
    }
}

/// Iterator over the samples of XOR chunk data. Yields `Err` once on corrupt or truncated data
/// and then ends.
#[derive(Debug, Clone)]
pub struct XorIter<'a> {
    r: BitReader<'a>,
    total: u16,
    read: u16,
    t: i64,
    t_delta: u64,
    v: u64,
    leading: u8,
    trailing: u8,
    /// Whether a `11` value control has set the leading/trailing window.
    window_set: bool,
    /// An error to yield next (then the iterator ends).
    pending: Option<ChunkError>,
}

impl XorIter<'_> {
    /// Number of samples the chunk header announces.
    pub fn num_samples(&self) -> usize {
        usize::from(self.total)
    }

    /// Bit offset, within the chunk data, of the next unread bit (the end of the data once a
    /// read ran past it).
    fn bit_position(&self) -> u64 {
        (HEADER_BYTES as u64) * 8 + self.r.position()
    }

    /// Decodes the next sample into the iterator state. Reads past the end of the data return
    /// zero bits and set the reader's `overrun` flag, checked once per sample by the caller;
    /// the `Err` is the bit offset and description of a corrupt field.
    #[inline]
    fn decode_next(&mut self) -> Result<(), (u64, &'static str)> {
        match self.read {
            0 => {
                let zz = self.read_uvarint()?;
                self.t = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
                self.v = self.r.read_wide(64);
            }
            1 => {
                self.t_delta = self.read_uvarint()?;
                self.t = self.t.wrapping_add(self.t_delta as i64);
                self.read_value()?;
            }
            _ => {
                // Fast path for the most common sample of regular scrapes of a steady series:
                // delta-of-delta 0 and value unchanged, two zero bits.
                let r = &mut self.r;
                if r.valid >= 2 && (r.buf >> (r.valid - 2)) & 0b11 == 0 {
                    r.valid -= 2;
                    self.t = self.t.wrapping_add(self.t_delta as i64);
                    return Ok(());
                }
                let dod = self.read_dod();
                self.t_delta = self.t_delta.wrapping_add(dod as u64);
                self.t = self.t.wrapping_add(self.t_delta as i64);
                self.read_value()?;
            }
        }
        Ok(())
    }

    fn read_uvarint(&mut self) -> Result<u64, (u64, &'static str)> {
        let start = self.bit_position();
        let mut x = 0u64;
        let mut shift = 0u32;
        for i in 0..10 {
            let b = self.r.read_bits(8);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    break;
                }
                return Ok(x | (b << shift));
            }
            x |= (b & 0x7f) << shift;
            shift += 7;
        }
        Err((start, "timestamp varint (longer than 64 bits)"))
    }

    #[inline]
    fn read_dod(&mut self) -> i64 {
        let r = &mut self.r;
        let sz = if r.read_bits(1) == 0 {
            return 0;
        } else if r.read_bits(1) == 0 {
            14
        } else if r.read_bits(1) == 0 {
            17
        } else if r.read_bits(1) == 0 {
            20
        } else {
            return r.read_wide(64) as i64;
        };
        let mut bits = r.read_bits(sz);
        // Negative values come back as large unsigned ones; the bucket range is asymmetric.
        if bits > 1 << (sz - 1) {
            bits = bits.wrapping_sub(1 << sz);
        }
        bits as i64
    }

    #[inline]
    fn read_value(&mut self) -> Result<(), (u64, &'static str)> {
        if self.r.read_bits(1) == 0 {
            return Ok(());
        }
        if self.r.read_bits(1) == 1 {
            let at = self.bit_position();
            let header = self.r.read_bits(11) as u32;
            let leading = header >> 6;
            let sig = match header & 0x3f {
                0 => 64,
                s => s,
            };
            if leading + sig > 64 {
                return Err((
                    at,
                    "value window (leading zeros plus significant bits exceed 64)",
                ));
            }
            self.leading = leading as u8;
            self.trailing = (64 - leading - sig) as u8;
            self.window_set = true;
        }
        let trailing = u32::from(self.trailing);
        // The window sums to at most 64 and leaves at least one significant bit.
        let sig = 64 - u32::from(self.leading) - trailing;
        let bits = self.r.read_wide(sig);
        self.v ^= bits << trailing;
        Ok(())
    }

    /// Ends the iteration with `e`.
    #[cold]
    fn fail(&mut self, e: ChunkError) -> Option<Result<(i64, f64), ChunkError>> {
        self.total = self.read;
        Some(Err(e))
    }
}

impl Iterator for XorIter<'_> {
    type Item = Result<(i64, f64), ChunkError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.read >= self.total {
            return self.pending.take().map(Err);
        }
        let res = self.decode_next();
        if self.r.overrun {
            let e = ChunkError::Truncated {
                bit_offset: self.bit_position(),
                sample: usize::from(self.read),
                total: usize::from(self.total),
            };
            return self.fail(e);
        }
        if let Err((bit_offset, what)) = res {
            let e = ChunkError::Corrupt {
                bit_offset,
                sample: usize::from(self.read),
                what,
            };
            return self.fail(e);
        }
        self.read += 1;
        Some(Ok((self.t, f64::from_bits(self.v))))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::from(self.total - self.read) + usize::from(self.pending.is_some());
        (0, Some(left))
    }
}

/// Reads a byte slice as a stream of bits, most significant bit first, through a 64-bit buffer
/// refilled a word at a time.
#[derive(Debug, Clone)]
struct BitReader<'a> {
    data: &'a [u8],
    /// Index of the next byte to load into `buf`.
    next: usize,
    /// The low `valid` bits are the next unread bits, the highest of them first.
    buf: u64,
    valid: u32,
    /// A read ran past the end of the data (and returned zeros).
    overrun: bool,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            next: 0,
            buf: 0,
            valid: 0,
            overrun: false,
        }
    }

    /// Number of bits consumed so far.
    fn position(&self) -> u64 {
        self.next as u64 * 8 - u64::from(self.valid)
    }

    /// Loads whole bytes until the buffer holds more than 56 bits or the data ends.
    #[inline]
    fn refill(&mut self) {
        if let Some(word) = self.data.get(self.next..self.next + 8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(word);
            let w = u64::from_be_bytes(a);
            let take = (64 - self.valid) / 8;
            if take == 8 {
                self.buf = w;
            } else if take > 0 {
                self.buf = (self.buf << (take * 8)) | (w >> (64 - take * 8));
            }
            self.next += take as usize;
            self.valid += take * 8;
        } else {
            while self.valid <= 56 && self.next < self.data.len() {
                self.buf = (self.buf << 8) | u64::from(self.data[self.next]);
                self.next += 1;
                self.valid += 8;
            }
        }
    }

    /// Reads `n` ≤ 56 bits; past the end of the data, returns 0 and sets `overrun`.
    #[inline]
    fn read_bits(&mut self, n: u32) -> u64 {
        if self.valid < n {
            self.refill();
            if self.valid < n {
                return self.overrun();
            }
        }
        self.valid -= n;
        (self.buf >> self.valid) & ((1u64 << n) - 1)
    }

    /// Reads `n` ≤ 64 bits.
    #[inline]
    fn read_wide(&mut self, n: u32) -> u64 {
        if n <= 56 {
            return self.read_bits(n);
        }
        let hi = self.read_bits(n - 32);
        let lo = self.read_bits(32);
        (hi << 32) | lo
    }

    #[cold]
    fn overrun(&mut self) -> u64 {
        self.overrun = true;
        self.next = self.data.len();
        self.valid = 0;
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::path::Path;
    use std::process::Command;

    const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

    fn encode(samples: &[(i64, f64)]) -> XorChunk {
        let mut c = XorChunk::new();
        for &(t, v) in samples {
            c.append(t, v);
        }
        c
    }

    fn decode_all(data: &[u8]) -> Vec<(i64, u64)> {
        decode_xor(data)
            .map(|r| r.map(|(t, v)| (t, v.to_bits())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn bits_of(samples: &[(i64, f64)]) -> Vec<(i64, u64)> {
        samples.iter().map(|&(t, v)| (t, v.to_bits())).collect()
    }

    /// Random scrape-like series: jittered intervals with rare gaps, values chosen by `kind`.
    fn random_series(rng: &mut StdRng, n: usize, kind: u8) -> Vec<(i64, f64)> {
        let mut t: i64 = rng.random_range(-1_000_000_000_000..2_000_000_000_000);
        let mut v = 0.0f64;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            t += match rng.random_range(0..100) {
                0 => rng.random_range(1..10_000_000_000),
                1..=5 => rng.random_range(1..600_000),
                _ => 15_000 + rng.random_range(-50..50),
            };
            v = match kind {
                // counter
                0 => v + f64::from(rng.random_range(0..1000u32)),
                // gauge
                1 => v + rng.random_range(-10.0..10.0),
                // special floats mixed with ordinary ones
                _ => match rng.random_range(0..8) {
                    0 => f64::NAN,
                    1 => f64::from_bits(STALE_NAN),
                    2 => f64::INFINITY,
                    3 => f64::NEG_INFINITY,
                    4 => -0.0,
                    5 => f64::from_bits(rng.random()),
                    _ => rng.random_range(-1e300..1e300),
                },
            };
            out.push((t, v));
        }
        out
    }

    #[test]
    fn chunk_buffer_grows_by_a_quarter_not_double() {
        let mut c = XorChunk::new();
        let mut worst = 0.0f64;
        for i in 0..240i64 {
            c.append(i * 15_000, (i * i) as f64 * 1.37);
            let (len, cap) = (c.bytes().len(), c.heap_bytes());
            assert!(cap >= len);
            if len > 64 {
                worst = worst.max(cap as f64 / len as f64);
            }
        }
        assert!(worst <= 1.3, "capacity up to {worst:.2}× the bytes");
        assert_eq!(
            c.min_time(),
            Some(0),
            "first timestamp decoded from the stream"
        );
        assert_eq!(c.max_time(), Some(239 * 15_000));
    }

    #[test]
    fn random_series_round_trip_bit_exactly() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..300 {
            let n = rng.random_range(0..=240);
            let s = random_series(&mut rng, n, (round % 3) as u8);
            let c = encode(&s);
            assert_eq!(c.num_samples(), n);
            assert_eq!(decode_all(c.bytes()), bits_of(&s), "round {round}");
            assert_eq!(c.min_time(), s.first().map(|x| x.0));
            assert_eq!(c.max_time(), s.last().map(|x| x.0));
        }
    }

    #[test]
    fn special_floats_and_stale_marker_round_trip() {
        let vals = [
            f64::NAN,
            f64::from_bits(STALE_NAN),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::from_bits(STALE_NAN),
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::from_bits(1),
            f64::from_bits(STALE_NAN),
        ];
        let s: Vec<_> = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as i64 * 1000, v))
            .collect();
        let c = encode(&s);
        assert_eq!(decode_all(c.bytes()), bits_of(&s));
    }

    #[test]
    fn extreme_timestamps_and_every_dod_bucket_round_trip() {
        // dods at each bucket edge, including the asymmetric upper bounds.
        let dods = [
            0i64,
            1,
            -1,
            8191,
            -8191,
            8192,
            -8192,
            65535,
            -65535,
            65536,
            -65536,
            524287,
            -524287,
            524288,
            -524288,
            1 << 40,
            -(1 << 40),
        ];
        let mut s = vec![(i64::MIN + 5, 1.0), (i64::MIN + 10, 2.0)];
        let mut delta = 5i64;
        for (i, d) in dods.iter().enumerate() {
            delta += d;
            let t = s.last().unwrap().0.wrapping_add(delta);
            s.push((t, i as f64));
        }
        s.push((i64::MAX, 3.0));
        s.push((i64::MIN, 4.0));
        let c = encode(&s);
        assert_eq!(decode_all(c.bytes()), bits_of(&s));
    }

    #[test]
    fn known_bytes_of_a_small_chunk() {
        // Hand-derived from the format: t0=1000 → zig-zag 2000 = varint d0 0f; v0=1.0 raw;
        // t1 delta 10 → 0a; v1=1.0 → '0'; t2: dod 0 → '0'; v2=2.0: xor 0x7ff0...→ leading 1,
        // trailing 52, sig 11: '11' 00001 001011 then 11 bits 0b11111111111.
        let c = encode(&[(1000, 1.0), (1010, 1.0), (1020, 2.0)]);
        let mut want = vec![0x00, 0x03, 0xd0, 0x0f, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x0a];
        let bits = ["0", "0", "11", "00001", "001011", "11111111111"].concat();
        let mut byte = 0u8;
        for (i, b) in bits.chars().enumerate() {
            byte = (byte << 1) | u8::from(b == '1');
            if i % 8 == 7 {
                want.push(byte);
                byte = 0;
            }
        }
        let rem = bits.len() % 8;
        want.push(byte << (8 - rem));
        assert_eq!(c.bytes(), &want[..]);
    }

    #[test]
    fn restored_chunk_appends_identically_to_uninterrupted_one() {
        let mut rng = StdRng::seed_from_u64(11);
        for round in 0..200 {
            let n = rng.random_range(0..150);
            let s = random_series(&mut rng, n, (round % 3) as u8);
            let split = rng.random_range(0..=n);
            let mut restored =
                XorChunk::from_bytes(encode(&s[..split]).into_bytes()).expect("valid chunk");
            assert_eq!(restored.min_time(), s[..split].first().map(|x| x.0));
            for &(t, v) in &s[split..] {
                restored.append(t, v);
            }
            assert_eq!(
                restored.bytes(),
                encode(&s).bytes(),
                "round {round} split {split}"
            );
        }
        // A chunk whose values never changed has no window yet.
        let same: Vec<_> = (0..5).map(|i| (i * 10, 1.0)).collect();
        let mut r = XorChunk::from_bytes(encode(&same).into_bytes()).unwrap();
        r.append(50, 2.0);
        let mut all = same.clone();
        all.push((50, 2.0));
        assert_eq!(r.bytes(), encode(&all).bytes());
    }

    #[test]
    fn compact_layout_differs_only_by_the_empty_trailing_byte() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut with_extra = 0;
        for round in 0..300 {
            let n = rng.random_range(1..130);
            let s = random_series(&mut rng, n, (round % 3) as u8);
            let mut compact = XorChunk::new_compact();
            for &(t, v) in &s {
                compact.append(t, v);
            }
            let v2 = encode(&s);
            let (a, b) = (compact.bytes(), v2.bytes());
            if a.len() != b.len() {
                with_extra += 1;
                assert_eq!(b.len(), a.len() + 1);
                assert_eq!(b.last(), Some(&0));
            }
            assert_eq!(a, &b[..a.len()]);
            assert_eq!(decode_all(a), bits_of(&s));
        }
        // A single sample always ends with whole bytes, so 2.x adds the byte there at least.
        assert!(with_extra > 0);
        assert_eq!(encode(&[(0, 1.0)]).bytes().len(), 2 + 1 + 8 + 1);
        assert_eq!(
            {
                let mut c = XorChunk::new_compact();
                c.append(0, 1.0);
                c.into_bytes().len()
            },
            2 + 1 + 8
        );
    }

    #[test]
    fn from_bytes_rejects_trailing_bytes_and_dirty_padding() {
        let mut data = encode(&[(1, 1.0), (2, 5.0), (3, 7.0)]).into_bytes();
        data.push(0);
        assert!(matches!(
            XorChunk::from_bytes(data.clone()),
            Err(ChunkError::TrailingData { .. })
        ));
        data.pop();
        *data.last_mut().unwrap() |= 1;
        let e = XorChunk::from_bytes(data).unwrap_err();
        assert!(e.to_string().contains("bit offset"), "{e}");
        assert!(matches!(
            XorChunk::from_bytes(vec![0]),
            Err(ChunkError::TooShort { len: 1 })
        ));
    }

    #[test]
    fn truncated_chunk_reports_bit_offset_and_ends() {
        let s: Vec<_> = (0..50)
            .map(|i| (i * 15_000 + i % 3, i as f64 * 1.5))
            .collect();
        let data = encode(&s).into_bytes();
        for cut in 0..data.len() {
            let mut it = decode_xor(&data[..cut]);
            let results: Vec<_> = it.by_ref().collect();
            let errs: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
            assert_eq!(errs.len(), 1, "cut {cut}: exactly one error");
            assert!(
                results.last().unwrap().is_err(),
                "cut {cut}: error comes last"
            );
            match errs[0] {
                Err(ChunkError::Truncated { bit_offset, .. }) => {
                    assert!(*bit_offset <= cut as u64 * 8, "cut {cut}: {bit_offset}");
                }
                Err(ChunkError::TooShort { len }) => assert!(*len < 2),
                other => panic!("cut {cut}: unexpected {other:?}"),
            }
            assert!(it.next().is_none());
            // Samples before the error are the real ones.
            let ok: Vec<_> = results.iter().filter_map(|r| r.clone().ok()).collect();
            assert_eq!(ok[..], s[..ok.len()]);
        }
    }

    #[test]
    fn corrupt_value_window_is_an_error_not_a_panic() {
        // sample 1 with control '11', leading 31, sig 63 → 94 > 64.
        let mut c = XorChunk::new_compact();
        c.append(0, 0.0);
        let mut data = c.into_bytes();
        data[1] = 2;
        data.push(0x01); // t delta 1
        // bits: 1 1 11111 111111 then zeros
        data.extend_from_slice(&[0b1111_1111, 0b1111_1000, 0, 0, 0, 0, 0, 0, 0, 0]);
        let r: Vec<_> = decode_xor(&data).collect();
        assert_eq!(r.len(), 2);
        match &r[1] {
            Err(ChunkError::Corrupt { bit_offset, .. }) => assert_eq!(*bit_offset, 16 + 72 + 8 + 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..5000 {
            let n = rng.random_range(0..64);
            let data: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            let count = decode_xor(&data).count();
            assert!(count <= 65536);
            let _ = XorChunk::from_bytes(data);
        }
    }

    #[test]
    fn chunk_end_time_prediction_matches_prometheus_rule() {
        // 30 samples at 15s from 0: range ends at 7_200_000 → n = 7.2e6 / (435_001*4) = 4.
        assert_eq!(compute_chunk_end_time(0, 435_000, 7_200_000), 1_800_000);
        // Too few chunks left: keep the block end.
        assert_eq!(compute_chunk_end_time(0, 1_000_000, 7_200_000), 7_200_000);
    }

    // --- Interop with real Prometheus (promtool) ---------------------------------------------

    /// Chunks (encoding, data) of a segment file, read sequentially.
    fn chunks_of_segment(path: &Path) -> Vec<(u8, Vec<u8>)> {
        let b = std::fs::read(path).unwrap();
        assert_eq!(&b[..4], &[0x85, 0xbd, 0x40, 0xdd], "segment magic");
        let mut pos = 8;
        let mut out = Vec::new();
        while pos < b.len() {
            let (len, n) = crate::encoding::uvarint(&b[pos..]).unwrap();
            pos += n;
            let enc = b[pos];
            let data = b[pos + 1..pos + 1 + len as usize].to_vec();
            let crc_at = pos + 1 + len as usize;
            let crc = u32::from_be_bytes(b[crc_at..crc_at + 4].try_into().unwrap());
            assert_eq!(crc, crate::encoding::crc32c(&b[pos..crc_at]));
            pos = crc_at + 4;
            out.push((enc, data));
        }
        out
    }

    #[test]
    fn promtool_blocks_decode_and_reencode_bit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(42);
        // A 2h-aligned start so all samples land in one block.
        let start_ms: i64 = 1_699_999_200_000;
        let mut text = String::new();
        let mut expected: Vec<Vec<(i64, f64)>> = Vec::new();
        for (name, kind) in [("a_counter", 0u8), ("b_gauge", 1), ("c_special", 2)] {
            text.push_str(&format!("# TYPE {name} gauge\n"));
            let mut t = start_ms;
            let mut v = 0.0f64;
            let mut samples = Vec::new();
            while t < start_ms + 7_000_000 {
                v = match kind {
                    0 => v + f64::from(rng.random_range(0..500u32)),
                    1 => (v + rng.random_range(-3.0..3.0) * 1000.0).round() / 1000.0,
                    _ => match rng.random_range(0..10) {
                        0 => f64::NAN,
                        1 => f64::INFINITY,
                        2 => f64::NEG_INFINITY,
                        _ => rng.random_range(-1e6..1e6),
                    },
                };
                let vs = if v.is_nan() {
                    "NaN".to_string()
                } else if v.is_infinite() {
                    if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
                } else {
                    format!("{v:?}")
                };
                let secs = format!("{}.{:03}", t / 1000, t % 1000);
                text.push_str(&format!("{name} {vs} {secs}\n"));
                // promtool's parser turns seconds into milliseconds by truncating secs*1000.
                let parsed: f64 = secs.parse().unwrap();
                samples.push(((parsed * 1000.0) as i64, v));
                t += match rng.random_range(0..60) {
                    0 => rng.random_range(1..700_000),
                    1 => rng.random_range(1..70_000),
                    _ => 15_000 + rng.random_range(-20..20),
                };
            }
            expected.push(samples);
        }
        text.push_str("# EOF\n");
        let input = dir.path().join("in.om");
        std::fs::write(&input, text).unwrap();
        let out = dir.path().join("out");
        let res = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(&out)
            .output()
            .expect("promtool must be installed (tests/run.sh installs it)");
        assert!(
            res.status.success(),
            "promtool failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let blocks: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("chunks").is_dir())
            .collect();
        assert_eq!(blocks.len(), 1, "one 2h block");
        let chunks = chunks_of_segment(&blocks[0].join("chunks/000001"));
        assert!(chunks.len() > 3, "several chunks per series");
        // Chunks are stored series by series (sorted by labels), each series in time order.
        let mut got: Vec<Vec<(i64, f64)>> = vec![Vec::new(); expected.len()];
        let mut series = 0;
        for (enc, data) in &chunks {
            assert_eq!(*enc, ENCODING_XOR);
            let samples: Vec<(i64, f64)> = decode_xor(data).collect::<Result<_, _>>().unwrap();
            // Our encoder produces the same bytes for the same samples.
            assert_eq!(encode(&samples).bytes(), &data[..], "re-encoding differs");
            // And a chunk restored from Prometheus' bytes continues identically.
            let mut restored = XorChunk::from_bytes(data.clone()).unwrap();
            assert_eq!(restored.num_samples(), samples.len());
            let (t, _) = samples[samples.len() - 1];
            restored.append(t + 15_000, 0.5);
            let mut more = samples.clone();
            more.push((t + 15_000, 0.5));
            assert_eq!(restored.bytes(), encode(&more).bytes());
            while got[series].len() >= expected[series].len() {
                series += 1;
            }
            got[series].extend(samples);
        }
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.len(), e.len());
            for (a, b) in g.iter().zip(e) {
                assert_eq!(a.0, b.0);
                if b.1.is_nan() {
                    assert!(a.1.is_nan());
                } else {
                    assert_eq!(a.1.to_bits(), b.1.to_bits());
                }
            }
        }
    }
}
