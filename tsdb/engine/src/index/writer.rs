//! Writes a whole index file from series sorted by their label sets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::format::{
    FORMAT_V2, IndexError, IndexStats, MAGIC_INDEX, SECTION_ALIGN, SERIES_ALIGN, Toc,
};
use crate::chunks::ChunkMeta;
use crate::encoding::{Encbuf, crc32c};
use crate::labels::Labels;

/// Writes the index file at `path` (replacing any file there) for `series`, which must be sorted
/// by label set without duplicates, each with its chunk metas in time order. Chunk references
/// must not decrease from one chunk to the next, across series too, as Prometheus requires. The
/// symbol table is built from the label sets. The file is fsynced before returning.
pub fn write_index(
    path: &Path,
    series: &[(Labels, Vec<ChunkMeta>)],
) -> Result<IndexStats, IndexError> {
    validate(path, series)?;

    // Sorted, deduplicated strings; a symbol reference is the position in this list. Like
    // Prometheus, whose symbols come from postings keys including the all-postings key ("", ""),
    // we include the empty string when there are series, so our files match its byte for byte.
    let mut symbol_set: BTreeSet<&str> = BTreeSet::new();
    if !series.is_empty() {
        symbol_set.insert("");
    }
    for (lset, _) in series {
        for l in lset.iter() {
            symbol_set.insert(&l.name);
            symbol_set.insert(&l.value);
        }
    }
    let symbols: Vec<&str> = symbol_set.into_iter().collect();
    let symbol_ref: HashMap<&str, u32> = symbols
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, i as u32))
        .collect();
    let too_large = |what: &str| IndexError::InvalidInput {
        path: path.to_path_buf(),
        what: format!("{what} does not fit the format's 32-bit fields"),
    };
    if symbols.len() > u32::MAX as usize {
        return Err(too_large("number of symbols"));
    }

    let file = File::create(path).map_err(|e| IndexError::io("create", path, e))?;
    let mut out = Out {
        w: BufWriter::with_capacity(1 << 20, file),
        pos: 0,
        path,
    };
    let mut toc = Toc::default();

    let mut b = Encbuf::with_capacity(1 << 16);
    b.put_be32(MAGIC_INDEX);
    b.put_byte(FORMAT_V2);
    out.write(&b.buf)?;

    // Symbol table.
    toc.symbols = out.pos;
    b.reset();
    b.put_be32(symbols.len() as u32);
    for s in &symbols {
        b.put_uvarint_str(s);
    }
    out.section(&b.buf, || too_large("symbol table"))?;

    // Series, 16-byte aligned; collect postings (name ref, value ref) -> series refs meanwhile.
    toc.series = out.pos;
    let mut postings: BTreeMap<(u32, u32), Vec<u32>> = BTreeMap::new();
    let mut all = Vec::with_capacity(series.len());
    let mut body = Encbuf::with_capacity(1 << 10);
    for (lset, chunks) in series {
        out.pad(SERIES_ALIGN)?;
        let series_ref = u32::try_from(out.pos / SERIES_ALIGN)
            .map_err(|_| too_large("series section (64 GiB)"))?;
        all.push(series_ref);
        body.reset();
        body.put_uvarint(lset.len() as u64);
        for l in lset.iter() {
            let (n, v) = (symbol_ref[l.name.as_str()], symbol_ref[l.value.as_str()]);
            body.put_uvarint(u64::from(n));
            body.put_uvarint(u64::from(v));
            postings.entry((n, v)).or_default().push(series_ref);
        }
        encode_chunk_metas(&mut body, chunks);
        b.reset();
        b.put_uvarint(body.len() as u64);
        b.put_bytes(&body.buf);
        b.put_be32(crc32c(&body.buf));
        out.write(&b.buf)?;
    }

    // Label indices: one per label name listing its values' symbol references.
    toc.label_indices = out.pos;
    let mut label_index_offsets: Vec<(u32, u64)> = Vec::new();
    let mut keys = postings.keys().peekable();
    while let Some(&(name, first)) = keys.next() {
        let mut values = vec![first];
        while let Some(&&(n, v)) = keys.peek()
            && n == name
        {
            values.push(v);
            keys.next();
        }
        out.pad(SECTION_ALIGN)?;
        label_index_offsets.push((name, out.pos));
        b.reset();
        b.put_be32(1);
        b.put_be32(values.len() as u32);
        for v in values {
            b.put_be32(v);
        }
        out.section(&b.buf, || too_large("label index"))?;
    }

    // Postings lists: the all-postings list under ("", ""), then each label pair in order.
    toc.postings = out.pos;
    let mut postings_offsets: Vec<(&str, &str, u64)> = Vec::with_capacity(postings.len() + 1);
    for (name, value, refs) in std::iter::once(("", "", &all)).chain(
        postings
            .iter()
            .map(|(&(n, v), refs)| (symbols[n as usize], symbols[v as usize], refs)),
    ) {
        out.pad(SECTION_ALIGN)?;
        postings_offsets.push((name, value, out.pos));
        b.reset();
        b.put_be32(refs.len() as u32);
        for &r in refs {
            b.put_be32(r);
        }
        out.section(&b.buf, || too_large("postings list"))?;
    }

    // Label offset table.
    toc.label_indices_table = out.pos;
    b.reset();
    b.put_be32(label_index_offsets.len() as u32);
    for (name, off) in &label_index_offsets {
        b.put_uvarint(1);
        b.put_uvarint_str(symbols[*name as usize]);
        b.put_uvarint(*off);
    }
    out.section(&b.buf, || too_large("label offset table"))?;

    // Postings offset table.
    toc.postings_table = out.pos;
    b.reset();
    b.put_be32(postings_offsets.len() as u32);
    for (name, value, off) in &postings_offsets {
        b.put_uvarint(2);
        b.put_uvarint_str(name);
        b.put_uvarint_str(value);
        b.put_uvarint(*off);
    }
    out.section(&b.buf, || too_large("postings offset table"))?;

    // TOC.
    b.reset();
    for off in toc.entries() {
        b.put_be64(off);
    }
    b.put_crc32_of_tail(0);
    out.write(&b.buf)?;

    let file = out
        .w
        .into_inner()
        .map_err(|e| IndexError::io("write", path, e.into_error()))?;
    file.sync_all()
        .map_err(|e| IndexError::io("sync", path, e))?;
    Ok(IndexStats {
        series: series.len() as u64,
        symbols: symbols.len() as u64,
        postings: postings_offsets.len() as u64,
        bytes: out.pos,
    })
}

/// Appends a series' chunk metas: count, then the first chunk's mint, its length and reference,
/// then for each later chunk the gap to the previous maxt, its length and the reference delta.
fn encode_chunk_metas(b: &mut Encbuf, chunks: &[ChunkMeta]) {
    b.put_uvarint(chunks.len() as u64);
    let Some(first) = chunks.first() else {
        return;
    };
    b.put_varint(first.min_time);
    b.put_uvarint(first.max_time.wrapping_sub(first.min_time) as u64);
    b.put_uvarint(first.chunk_ref);
    let (mut t0, mut ref0) = (first.max_time, first.chunk_ref);
    for c in &chunks[1..] {
        b.put_uvarint(c.min_time.wrapping_sub(t0) as u64);
        b.put_uvarint(c.max_time.wrapping_sub(c.min_time) as u64);
        b.put_varint(c.chunk_ref.wrapping_sub(ref0) as i64);
        t0 = c.max_time;
        ref0 = c.chunk_ref;
    }
}

/// Checks the invariants Prometheus' writer enforces, so what we write is what it would write.
fn validate(path: &Path, series: &[(Labels, Vec<ChunkMeta>)]) -> Result<(), IndexError> {
    let invalid = |what: String| IndexError::InvalidInput {
        path: path.to_path_buf(),
        what,
    };
    let mut last_ref = 0u64;
    for (i, (lset, chunks)) in series.iter().enumerate() {
        if i > 0 && series[i - 1].0 >= *lset {
            return Err(invalid(format!(
                "series {lset} is not after {}: series must be sorted by label set and unique",
                series[i - 1].0
            )));
        }
        let names = lset.as_slice();
        if names.is_empty() {
            return Err(invalid(format!("series #{i} has no labels")));
        }
        if names[0].name.is_empty() || names.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(invalid(format!(
                "series {lset} has an empty or repeated label name, or labels out of order"
            )));
        }
        for (j, c) in chunks.iter().enumerate() {
            if c.chunk_ref < last_ref {
                return Err(invalid(format!(
                    "series {lset}: chunk reference {} is below the previous one {last_ref}",
                    c.chunk_ref
                )));
            }
            if c.max_time < c.min_time {
                return Err(invalid(format!(
                    "series {lset}: chunk max time {} is before its min time {}",
                    c.max_time, c.min_time
                )));
            }
            if j > 0 && c.min_time <= chunks[j - 1].max_time {
                return Err(invalid(format!(
                    "series {lset}: chunk min time {} is not after the previous chunk's max time {}",
                    c.min_time,
                    chunks[j - 1].max_time
                )));
            }
            last_ref = c.chunk_ref;
        }
    }
    Ok(())
}

/// The file being written and the offset of the next byte.
struct Out<'a> {
    w: BufWriter<File>,
    pos: u64,
    path: &'a Path,
}

impl Out<'_> {
    fn write(&mut self, b: &[u8]) -> Result<(), IndexError> {
        self.w
            .write_all(b)
            .map_err(|e| IndexError::io("write", self.path, e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Writes zero bytes up to the next multiple of `align`.
    fn pad(&mut self, align: u64) -> Result<(), IndexError> {
        let rem = self.pos % align;
        if rem != 0 {
            self.write(&[0u8; 16][..(align - rem) as usize])?;
        }
        Ok(())
    }

    /// Writes a section as `len <4b> | body | CRC32(body) <4b>`.
    fn section(
        &mut self,
        body: &[u8],
        too_large: impl FnOnce() -> IndexError,
    ) -> Result<(), IndexError> {
        let len = u32::try_from(body.len()).map_err(|_| too_large())?;
        self.write(&len.to_be_bytes())?;
        self.write(body)?;
        self.write(&crc32c(body).to_be_bytes())
    }
}
