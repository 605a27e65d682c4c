//! The block `index` file in Prometheus' index format version 2: symbol table, series with their
//! chunk metas, label indices, postings lists, label and postings offset tables and the TOC, each
//! section CRC32-Castagnoli checked. Blocks written here are read by Prometheus and promtool, and
//! blocks they write are read here; the byte layout is described in `docs/format.md`.
//!
//! [`write_index`] builds a whole file from sorted series; [`IndexReader`] opens one and reads
//! what a query needs with ranged reads.

mod format;
mod postings;
mod reader;
mod writer;

pub use format::{
    FORMAT_V2, HEADER_LEN, IndexError, IndexStats, MAGIC_INDEX, SERIES_ALIGN, TOC_LEN,
};
pub use reader::IndexReader;
pub use writer::write_index;

#[cfg(test)]
mod tests;
