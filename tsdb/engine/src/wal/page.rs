//! The WAL's page format, as Prometheus writes it: segments of 32 KiB pages holding record
//! fragments, each with a 7-byte header (type and flags, length, CRC32-Castagnoli). Shared by
//! the writer and the segment reader.

/// Size of a page; fragments never cross page boundaries.
pub const PAGE_SIZE: usize = 32 * 1024;
/// Bytes of a fragment header: type byte, 2-byte length, 4-byte CRC32-Castagnoli.
pub const HEADER_SIZE: usize = 7;

/// Type-byte flag: the fragment's record is snappy-compressed.
pub(crate) const SNAPPY_FLAG: u8 = 0x08;
/// Type-byte bits holding the fragment type.
pub(crate) const TYPE_MASK: u8 = 0x07;
/// A whole record in one fragment.
pub(crate) const FRAG_FULL: u8 = 1;
/// The first fragment of a record.
pub(crate) const FRAG_FIRST: u8 = 2;
/// A middle fragment of a record.
pub(crate) const FRAG_MIDDLE: u8 = 3;
/// The last fragment of a record.
pub(crate) const FRAG_LAST: u8 = 4;
