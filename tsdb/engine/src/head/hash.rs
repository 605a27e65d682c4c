//! The head's in-memory hash of byte strings (packed label sets, symbol text). The lowest module
//! of the head: it imports nothing from the crate.

/// Hash of packed labels, eight bytes per multiply instead of FNV's one, so hashing a series
/// costs a few nanoseconds. Never persisted (the WAL and blocks hold labels, not hashes), so it
/// may change between versions; collisions are resolved by comparing labels. Field lengths are
/// part of the packed bytes, so ("ab", "c") and ("a", "bc") differ.
pub(crate) fn hash_packed(b: &[u8]) -> u64 {
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(w));
    }
    // The last 1–7 bytes without a variable-length copy (as wyhash reads them): two
    // overlapping 4-byte words, or the first, middle and last byte.
    let t = chunks.remainder();
    let n = t.len();
    let last = if n >= 4 {
        let (mut lo, mut hi) = ([0u8; 4], [0u8; 4]);
        lo.copy_from_slice(&t[..4]);
        hi.copy_from_slice(&t[n - 4..]);
        u64::from(u32::from_le_bytes(lo)) | (u64::from(u32::from_le_bytes(hi)) << 32)
    } else if n > 0 {
        u64::from(t[0]) | (u64::from(t[n / 2]) << 8) | (u64::from(t[n - 1]) << 16)
    } else {
        0
    };
    mix(h, last)
}

/// Folded 64×64→128-bit multiply (as in wyhash): every input bit reaches every output bit.
#[inline]
fn mix(h: u64, w: u64) -> u64 {
    let m = u128::from(h ^ w) * u128::from(0x9e37_79b9_7f4a_7c15u64 ^ 0xa076_1d64_78bd_642f);
    (m as u64) ^ ((m >> 64) as u64)
}
