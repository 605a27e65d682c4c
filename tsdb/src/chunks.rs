//! Chunk segment files of a block (`chunks/000001…`) and the references that point into them.
//! (The segment writer and reader are being written; this holds the shared chunk metadata.)

/// Where one chunk of a series lives and which time range it covers, as recorded in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkMeta {
    /// Timestamp (ms) of the chunk's first sample.
    pub min_time: i64,
    /// Timestamp (ms) of the chunk's last sample.
    pub max_time: i64,
    /// Reference of the chunk in the segment files: segment sequence number in the upper
    /// 32 bits, byte offset within that segment in the lower 32 bits.
    pub chunk_ref: u64,
}
