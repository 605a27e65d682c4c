//! Reads an index file with ranged reads: only the header, the TOC, the symbol table and the
//! postings offset table are read at open; series and postings lists are read when asked for.
//!
//! What stays in memory, as in Prometheus' reader: the position of every 32nd symbol, and per
//! label name the position and value of every 32nd postings offset table entry. A lookup reads
//! at most one such run of 32 entries. When the symbol table is small (≤ 4 MiB, which covers
//! blocks up to some hundred thousand distinct label values) its bytes are kept as well, so a
//! series read costs two reads of the file instead of one per label; larger tables are read per
//! lookup so that memory stays bounded by the sampling.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::format::{
    FORMAT_V2, HEADER_LEN, IndexError, MAGIC_INDEX, SAMPLE_EVERY, SERIES_ALIGN, TOC_LEN, Toc,
};
use super::postings::{intersect, union, without};
use crate::chunks::ChunkMeta;
use crate::encoding::{Decbuf, crc32c};
use crate::labels::{Label, Labels, MatchType, Matcher};
use crate::readat::{FileReadAt, ReadAt};

/// Symbol tables up to this size are kept in memory.
const SYMBOLS_IN_MEMORY_MAX: u64 = 4 << 20;
/// Bytes read at once for a series entry: most entries are shorter, so one read does.
const SERIES_FIRST_READ: u64 = 512;

/// An open index file, local or in the bucket (see [`ReadAt`]).
#[derive(Debug)]
pub struct IndexReader {
    /// Names the file in errors: a local path, or `<bucket>/<key>` for a bucket object.
    path: PathBuf,
    src: Box<dyn ReadAt>,
    size: u64,
    toc: Toc,
    /// End of the series section: series references must point below it.
    series_end: u64,
    symbols: Symbols,
    /// Label name → sampled postings offset table entries; "" holds the all-postings list.
    names: BTreeMap<String, NameEntries>,
}

/// The symbol table: sampled positions and, if small, its bytes.
#[derive(Debug)]
struct Symbols {
    count: u64,
    /// File offset of the first symbol.
    start: u64,
    /// File offset just after the last symbol.
    end: u64,
    /// File offset of every `SAMPLE_EVERY`th symbol.
    samples: Vec<u64>,
    /// The bytes `start..end`, when kept in memory.
    bytes: Option<Vec<u8>>,
}

/// The postings offset table entries of one label name.
#[derive(Debug)]
struct NameEntries {
    /// Every `SAMPLE_EVERY`th value with the file offset of its entry, starting with the first.
    samples: Vec<(String, u64)>,
    /// File offset just after the name's last entry.
    end: u64,
}

/// One decoded postings offset table entry.
struct Entry<'a> {
    name: &'a str,
    value: &'a str,
    postings_offset: u64,
}

impl IndexReader {
    /// Opens the index file at `path`: checks magic, version and TOC, and reads (and CRC-checks)
    /// the symbol table and the postings offset table.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        Self::open_with(path, SYMBOLS_IN_MEMORY_MAX)
    }

    pub(super) fn open_with(path: &Path, symbols_in_memory_max: u64) -> Result<Self, IndexError> {
        let file = File::open(path).map_err(|e| IndexError::io("open", path, e))?;
        let src = FileReadAt::new(file).map_err(|e| IndexError::io("stat", path, e))?;
        Self::open_source_with(path, Box::new(src), symbols_in_memory_max)
    }

    /// Opens an index read from `src`; `name` stands for it in errors (a path, or the bucket
    /// location and key). Reads what [`IndexReader::open`] reads, nothing more.
    pub fn open_source(name: &Path, src: Box<dyn ReadAt>) -> Result<Self, IndexError> {
        Self::open_source_with(name, src, SYMBOLS_IN_MEMORY_MAX)
    }

    fn open_source_with(
        path: &Path,
        src: Box<dyn ReadAt>,
        symbols_in_memory_max: u64,
    ) -> Result<Self, IndexError> {
        let size = src.size();
        let mut r = IndexReader {
            path: path.to_path_buf(),
            src,
            size,
            toc: Toc::default(),
            series_end: 0,
            symbols: Symbols {
                count: 0,
                start: 0,
                end: 0,
                samples: Vec::new(),
                bytes: None,
            },
            names: BTreeMap::new(),
        };

        let header = r.read(0, HEADER_LEN, "header")?;
        let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if magic != MAGIC_INDEX {
            return Err(IndexError::BadMagic {
                path: r.path.clone(),
                found: magic,
            });
        }
        if header[4] != FORMAT_V2 {
            return Err(IndexError::UnsupportedVersion {
                path: r.path.clone(),
                version: header[4],
            });
        }
        r.read_toc()?;
        r.read_symbols(symbols_in_memory_max)?;
        r.read_postings_offset_table()?;
        Ok(r)
    }

    /// Size of the index file in bytes.
    pub fn file_size(&self) -> u64 {
        self.size
    }

    /// The labels and chunk metas of the series with reference `series_ref` (its offset / 16).
    pub fn series(&self, series_ref: u64) -> Result<(Labels, Vec<ChunkMeta>), IndexError> {
        let offset = series_ref
            .checked_mul(SERIES_ALIGN)
            .filter(|o| *o >= self.toc.series && *o < self.series_end && self.toc.series != 0)
            .ok_or_else(|| IndexError::OutOfRange {
                path: self.path.clone(),
                what: "series",
                reference: series_ref,
                offset: series_ref.saturating_mul(SERIES_ALIGN),
                limit: self.series_end / SERIES_ALIGN,
            })?;
        let (body, body_at) = self.read_uvarint_section(offset, "series")?;
        let mut d = Decbuf::with_base(&body, body_at as usize);
        let corrupt = |e| IndexError::corrupt(&self.path, "series", e);

        let n = d
            .uvarint_usize(d.remaining() / 2, "label count")
            .map_err(corrupt)?;
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.symbol_ref(&mut d)?;
            let value = self.symbol_ref(&mut d)?;
            labels.push(Label { name, value });
        }
        if labels.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(IndexError::Corrupt {
                path: self.path.clone(),
                section: "series",
                offset,
                what: "label names not sorted and unique".into(),
            });
        }

        let n = d
            .uvarint_usize(d.remaining() / 3, "chunk count")
            .map_err(corrupt)?;
        let mut chunks = Vec::with_capacity(n);
        if n > 0 {
            let min_time = d.varint().map_err(corrupt)?;
            let max_time = min_time.wrapping_add(d.uvarint().map_err(corrupt)? as i64);
            let chunk_ref = d.uvarint().map_err(corrupt)?;
            chunks.push(ChunkMeta {
                min_time,
                max_time,
                chunk_ref,
            });
            let (mut t0, mut ref0) = (max_time, chunk_ref);
            for _ in 1..n {
                let min_time = t0.wrapping_add(d.uvarint().map_err(corrupt)? as i64);
                let max_time = min_time.wrapping_add(d.uvarint().map_err(corrupt)? as i64);
                let chunk_ref = ref0.wrapping_add(d.varint().map_err(corrupt)? as u64);
                chunks.push(ChunkMeta {
                    min_time,
                    max_time,
                    chunk_ref,
                });
                (t0, ref0) = (max_time, chunk_ref);
            }
        }
        Ok((Labels::from_sorted(labels), chunks))
    }

    /// Hints that the series `refs` will be read: a bucket-backed index fetches their entries
    /// together (a local file ignores it). Asks for the bytes the first read of each entry
    /// takes.
    pub fn prefetch_series(&self, refs: &[u64]) {
        let ranges: Vec<Range<u64>> = refs
            .iter()
            .filter_map(|r| r.checked_mul(SERIES_ALIGN))
            .filter(|&o| o >= self.toc.series && o < self.series_end)
            .map(|o| o..(o + SERIES_FIRST_READ).min(self.size))
            .collect();
        if !ranges.is_empty() {
            self.src.prefetch(&ranges);
        }
    }

    /// Sorted references of the series with label `name="value"`; empty if there are none.
    pub fn postings(&self, name: &str, value: &str) -> Result<Vec<u64>, IndexError> {
        let Some(entries) = self.names.get(name) else {
            return Ok(Vec::new());
        };
        let i = entries
            .samples
            .partition_point(|(v, _)| v.as_str() <= value);
        if i == 0 {
            return Ok(Vec::new());
        }
        let start = entries.samples[i - 1].1;
        let end = entries.samples.get(i).map_or(entries.end, |s| s.1);
        let bytes = self.read(start, end - start, "postings offset table entries")?;
        let mut found = None;
        self.decode_entries(&bytes, start, name, |e| {
            if e.value == value {
                found = Some(e.postings_offset);
            }
            Ok(())
        })?;
        match found {
            Some(off) => self.read_postings(off),
            None => Ok(Vec::new()),
        }
    }

    /// References of all series, sorted.
    pub fn all_postings(&self) -> Result<Vec<u64>, IndexError> {
        self.postings("", "")
    }

    /// Sorted references of the series selected by all `matchers`, with Prometheus' semantics:
    /// a matcher that matches the empty value also selects series without the label; positive
    /// matchers are intersected and negative ones subtracted. No matchers select nothing.
    pub fn postings_for_matchers(&self, matchers: &[Matcher]) -> Result<Vec<u64>, IndexError> {
        // Names some matcher requires to be set (that matcher rejects the empty value).
        let must_be_set: Vec<&str> = matchers
            .iter()
            .filter(|m| !m.matches_empty())
            .map(|m| m.name.as_str())
            .collect();
        let mut its: Vec<Vec<u64>> = Vec::new();
        let mut not_its: Vec<Vec<u64>> = Vec::new();
        for m in matchers {
            if m.name.is_empty() && m.value.is_empty() {
                its.push(self.all_postings()?);
            } else if must_be_set.contains(&m.name.as_str()) {
                let is_not = matches!(m.kind, MatchType::NotEqual | MatchType::NotRegex);
                if is_not && m.matches_empty() {
                    // l!="foo" next to a matcher requiring l: subtract the series with l="foo".
                    not_its.push(self.postings_where(m, true)?);
                } else {
                    let p = self.postings_where(m, false)?;
                    if p.is_empty() {
                        return Ok(Vec::new());
                    }
                    its.push(p);
                }
            } else {
                // The matcher matches "", so it selects series without the label too: subtract
                // the series whose value it rejects.
                not_its.push(self.postings_where(m, true)?);
            }
        }
        if its.is_empty() && !not_its.is_empty() {
            its.push(self.all_postings()?);
        }
        let mut its = its.into_iter();
        let Some(mut result) = its.next() else {
            return Ok(Vec::new());
        };
        for p in its {
            result = intersect(&result, &p);
        }
        for n in &not_its {
            result = without(&result, n);
        }
        Ok(result)
    }

    /// All label names, sorted.
    pub fn label_names(&self) -> Result<Vec<String>, IndexError> {
        Ok(self
            .names
            .keys()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect())
    }

    /// All values of label `name`, sorted; empty if no series has it.
    pub fn label_values(&self, name: &str) -> Result<Vec<String>, IndexError> {
        let mut values = Vec::new();
        if name.is_empty() {
            // "" keys the all-postings list; it is no label.
            return Ok(values);
        }
        self.for_each_entry(name, |e| {
            values.push(e.value.to_string());
            Ok(())
        })?;
        Ok(values)
    }

    /// All strings of the symbol table, sorted.
    pub fn symbols(&self) -> Result<Vec<String>, IndexError> {
        let s = &self.symbols;
        let bytes = self.symbol_bytes(s.start, s.end)?;
        let mut d = Decbuf::with_base(&bytes, s.start as usize);
        let mut out = Vec::with_capacity(s.count as usize);
        for _ in 0..s.count {
            let sym = d
                .uvarint_str()
                .map_err(|e| IndexError::corrupt(&self.path, "symbol table", e))?;
            out.push(sym.to_string());
        }
        Ok(out)
    }

    /// Union of the postings of the values of `m.name` that `m` matches, or with `invert`, that
    /// it does not match.
    fn postings_where(&self, m: &Matcher, invert: bool) -> Result<Vec<u64>, IndexError> {
        let equal = match m.kind {
            MatchType::Equal => !invert,
            MatchType::NotEqual => invert,
            _ => false,
        };
        if equal {
            return self.postings(&m.name, &m.value);
        }
        let mut offsets = Vec::new();
        self.for_each_entry(&m.name, |e| {
            if m.matches(e.value) != invert {
                offsets.push(e.postings_offset);
            }
            Ok(())
        })?;
        Ok(union(self.read_postings_many(offsets)?))
    }

    /// Calls `f` for every postings offset table entry of label `name`, in value order.
    fn for_each_entry(
        &self,
        name: &str,
        f: impl FnMut(Entry<'_>) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let Some(entries) = self.names.get(name) else {
            return Ok(());
        };
        let start = entries.samples.first().map_or(entries.end, |s| s.1);
        let bytes = self.read(start, entries.end - start, "postings offset table entries")?;
        self.decode_entries(&bytes, start, name, f)
    }

    /// Decodes the postings offset table entries in `bytes` (read from file offset `base`), all
    /// of which must belong to label `name`.
    fn decode_entries(
        &self,
        bytes: &[u8],
        base: u64,
        name: &str,
        mut f: impl FnMut(Entry<'_>) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let mut d = Decbuf::with_base(bytes, base as usize);
        while d.remaining() > 0 {
            let at = d.offset() as u64;
            let e = decode_entry(&mut d)
                .map_err(|e| IndexError::corrupt(&self.path, "postings offset table", e))?;
            if e.name != name {
                return Err(IndexError::Corrupt {
                    path: self.path.clone(),
                    section: "postings offset table",
                    offset: at,
                    what: format!("entry for label {:?} where {name:?} was expected", e.name),
                });
            }
            f(e)?;
        }
        Ok(())
    }

    /// Reads and checks the postings list at file offset `offset`.
    fn read_postings(&self, offset: u64) -> Result<Vec<u64>, IndexError> {
        let body = self.read_section(offset, "postings list")?;
        self.decode_postings(&body, offset)
    }

    /// Reads the postings lists at `offsets`. Lists of one label name lie one after the other in
    /// value order, so lists close together are read with one call: a regex matching thousands
    /// of values costs a few reads, not thousands.
    fn read_postings_many(&self, mut offsets: Vec<u64>) -> Result<Vec<Vec<u64>>, IndexError> {
        /// Lists at most this far apart are read together.
        const MAX_GAP: u64 = 64 << 10;
        offsets.sort_unstable();
        let mut lists = Vec::with_capacity(offsets.len());
        let mut i = 0;
        while i < offsets.len() {
            let mut j = i + 1;
            while j < offsets.len() && offsets[j] - offsets[j - 1] <= MAX_GAP {
                j += 1;
            }
            if j - i == 1 {
                lists.push(self.read_postings(offsets[i])?);
                i = j;
                continue;
            }
            let (start, last) = (offsets[i], offsets[j - 1]);
            let len = self.read(last, 4, "postings list")?;
            let len = u64::from(u32::from_be_bytes([len[0], len[1], len[2], len[3]]));
            let end = last.saturating_add(len + 8);
            let buf = self.read(start, end - start, "postings lists")?;
            for &off in &offsets[i..j] {
                let rel = (off - start) as usize;
                let l = u32::from_be_bytes([buf[rel], buf[rel + 1], buf[rel + 2], buf[rel + 3]]);
                let body_end = rel + 4 + l as usize;
                if body_end + 4 > buf.len() {
                    // Longer than the lists around it claim: read it alone for a precise error.
                    lists.push(self.read_postings(off)?);
                    continue;
                }
                let body = &buf[rel + 4..body_end];
                self.check_crc("postings list", off, body, &buf[body_end..body_end + 4])?;
                lists.push(self.decode_postings(body, off)?);
            }
            i = j;
        }
        Ok(lists)
    }

    /// Decodes the body of the postings list at file offset `offset`.
    fn decode_postings(&self, body: &[u8], offset: u64) -> Result<Vec<u64>, IndexError> {
        let mut d = Decbuf::with_base(body, offset as usize + 4);
        let n = d
            .be32()
            .map_err(|e| IndexError::corrupt(&self.path, "postings list", e))?;
        if d.remaining() as u64 != u64::from(n) * 4 {
            return Err(IndexError::Corrupt {
                path: self.path.clone(),
                section: "postings list",
                offset,
                what: format!(
                    "{n} entries need {} bytes, the list has {}",
                    u64::from(n) * 4,
                    d.remaining()
                ),
            });
        }
        Ok(d.rest()
            .chunks_exact(4)
            .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect())
    }

    /// Decodes a symbol reference and looks the symbol up.
    fn symbol_ref(&self, d: &mut Decbuf<'_>) -> Result<String, IndexError> {
        let at = d.offset() as u64;
        let r = d
            .uvarint()
            .map_err(|e| IndexError::corrupt(&self.path, "series", e))?;
        let s = &self.symbols;
        if r >= s.count {
            return Err(IndexError::OutOfRange {
                path: self.path.clone(),
                what: "symbol",
                reference: r,
                offset: at,
                limit: s.count,
            });
        }
        let block = (r / SAMPLE_EVERY as u64) as usize;
        let start = s.samples[block];
        let end = s.samples.get(block + 1).copied().unwrap_or(s.end);
        let bytes = self.symbol_bytes(start, end)?;
        let mut d = Decbuf::with_base(&bytes, start as usize);
        let corrupt = |e| IndexError::corrupt(&self.path, "symbol table", e);
        for _ in 0..r % SAMPLE_EVERY as u64 {
            d.uvarint_bytes().map_err(corrupt)?;
        }
        Ok(d.uvarint_str().map_err(corrupt)?.to_string())
    }

    /// The symbol table bytes between file offsets `start` and `end`.
    fn symbol_bytes(&self, start: u64, end: u64) -> Result<Cow<'_, [u8]>, IndexError> {
        match &self.symbols.bytes {
            Some(b) => {
                let base = self.symbols.start;
                Ok(Cow::Borrowed(
                    &b[(start - base) as usize..(end - base) as usize],
                ))
            }
            None => Ok(Cow::Owned(self.read(start, end - start, "symbol table")?)),
        }
    }

    fn read_toc(&mut self) -> Result<(), IndexError> {
        if self.size < HEADER_LEN + TOC_LEN {
            return Err(self.truncated("TOC", self.size.saturating_sub(TOC_LEN), TOC_LEN));
        }
        let at = self.size - TOC_LEN;
        let b = self.read(at, TOC_LEN, "TOC")?;
        let (body, crc) = b.split_at(48);
        self.check_crc("TOC", at, body, crc)?;
        let mut d = Decbuf::with_base(body, at as usize);
        let mut e = [0u64; 6];
        for (i, v) in e.iter_mut().enumerate() {
            *v = d
                .be64()
                .map_err(|e| IndexError::corrupt(&self.path, "TOC", e))?;
            if *v != 0 && (*v < HEADER_LEN || *v >= at) {
                return Err(IndexError::OutOfRange {
                    path: self.path.clone(),
                    what: "TOC section",
                    reference: *v,
                    offset: at + 8 * i as u64,
                    limit: at,
                });
            }
        }
        self.toc = Toc {
            symbols: e[0],
            series: e[1],
            label_indices: e[2],
            label_indices_table: e[3],
            postings: e[4],
            postings_table: e[5],
        };
        // The series section ends where the next section starts.
        self.series_end = e
            .iter()
            .copied()
            .filter(|&o| o > self.toc.series)
            .min()
            .unwrap_or(at);
        Ok(())
    }

    fn read_symbols(&mut self, in_memory_max: u64) -> Result<(), IndexError> {
        if self.toc.symbols == 0 {
            return Ok(());
        }
        let at = self.toc.symbols;
        let body = self.read_section(at, "symbol table")?;
        let mut d = Decbuf::with_base(&body, at as usize + 4);
        let corrupt = |e| IndexError::corrupt(&self.path, "symbol table", e);
        let count = d.be32().map_err(corrupt)?;
        let start = d.offset() as u64;
        let mut samples = Vec::with_capacity((count as usize).min(body.len()) / SAMPLE_EVERY + 1);
        for i in 0..count as usize {
            if i.is_multiple_of(SAMPLE_EVERY) {
                samples.push(d.offset() as u64);
            }
            d.uvarint_str().map_err(corrupt)?;
        }
        let end = d.offset() as u64;
        let bytes = (end - start <= in_memory_max).then(|| {
            let from = (start - at - 4) as usize;
            body[from..from + (end - start) as usize].to_vec()
        });
        self.symbols = Symbols {
            count: u64::from(count),
            start,
            end,
            samples,
            bytes,
        };
        Ok(())
    }

    fn read_postings_offset_table(&mut self) -> Result<(), IndexError> {
        if self.toc.postings_table == 0 {
            return Ok(());
        }
        let at = self.toc.postings_table;
        let body = self.read_section(at, "postings offset table")?;
        let mut d = Decbuf::with_base(&body, at as usize + 4);
        let corrupt = |e| IndexError::corrupt(&self.path, "postings offset table", e);
        let count = d.be32().map_err(corrupt)?;
        let mut names: BTreeMap<String, NameEntries> = BTreeMap::new();
        let mut prev: Option<(String, String)> = None;
        let mut in_name = 0usize;
        for _ in 0..count {
            let entry_at = d.offset() as u64;
            let e = decode_entry(&mut d).map_err(corrupt)?;
            if let Some((pn, pv)) = &prev
                && (pn.as_str(), pv.as_str()) >= (e.name, e.value)
            {
                return Err(IndexError::Corrupt {
                    path: self.path.clone(),
                    section: "postings offset table",
                    offset: entry_at,
                    what: format!(
                        "entry {:?}={:?} does not sort after {pn:?}={pv:?}",
                        e.name, e.value
                    ),
                });
            }
            if prev.as_ref().is_none_or(|(pn, _)| pn != e.name) {
                in_name = 0;
            }
            let entry_end = d.offset() as u64;
            let entries = names
                .entry(e.name.to_string())
                .or_insert_with(|| NameEntries {
                    samples: Vec::new(),
                    end: entry_end,
                });
            if in_name.is_multiple_of(SAMPLE_EVERY) {
                entries.samples.push((e.value.to_string(), entry_at));
            }
            entries.end = entry_end;
            in_name += 1;
            prev = Some((e.name.to_string(), e.value.to_string()));
        }
        self.names = names;
        Ok(())
    }

    /// Reads a section laid out as `len <4b> | body | CRC32(body) <4b>` at file offset `at`,
    /// checks the CRC and returns the body.
    fn read_section(&self, at: u64, section: &'static str) -> Result<Vec<u8>, IndexError> {
        let len = self.read(at, 4, section)?;
        let len = u64::from(u32::from_be_bytes([len[0], len[1], len[2], len[3]]));
        self.checked_body(at, at + 4, len, section)
    }

    /// Reads a section laid out as `len <uvarint> | body | CRC32(body) <4b>`, as series are.
    /// Returns the body and its file offset.
    fn read_uvarint_section(
        &self,
        at: u64,
        section: &'static str,
    ) -> Result<(Vec<u8>, u64), IndexError> {
        let head = self.read(
            at,
            SERIES_FIRST_READ.min(self.size.saturating_sub(at)),
            section,
        )?;
        let mut d = Decbuf::with_base(&head, at as usize);
        let len = d
            .uvarint()
            .map_err(|e| IndexError::corrupt(&self.path, section, e))?;
        let body_at = at + d.position() as u64;
        let start = d.position();
        if let Some(end) = (len as usize)
            .checked_add(start)
            .filter(|end| end.checked_add(4).is_some_and(|e| e <= head.len()))
        {
            let (body, crc) = (&head[start..end], &head[end..end + 4]);
            self.check_crc(section, at, body, crc)?;
            return Ok((body.to_vec(), body_at));
        }
        Ok((self.checked_body(at, body_at, len, section)?, body_at))
    }

    fn checked_body(
        &self,
        at: u64,
        body_at: u64,
        len: u64,
        section: &'static str,
    ) -> Result<Vec<u8>, IndexError> {
        let fits = |n: &u64| body_at.checked_add(*n).is_some_and(|end| end <= self.size);
        let Some(need) = len.checked_add(4).filter(fits) else {
            let need = (body_at - at).saturating_add(len).saturating_add(4);
            return Err(self.truncated(section, at, need));
        };
        let mut b = self.read(body_at, need, section)?;
        let (body, crc) = b.split_at(len as usize);
        self.check_crc(section, at, body, crc)?;
        b.truncate(len as usize);
        Ok(b)
    }

    fn check_crc(
        &self,
        section: &'static str,
        at: u64,
        body: &[u8],
        crc: &[u8],
    ) -> Result<(), IndexError> {
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32c(body);
        if stored != computed {
            return Err(IndexError::Checksum {
                path: self.path.clone(),
                section,
                offset: at,
                stored,
                computed,
            });
        }
        Ok(())
    }

    /// Reads `len` bytes at file offset `at`, failing if they are not all in the file.
    fn read(&self, at: u64, len: u64, what: &'static str) -> Result<Vec<u8>, IndexError> {
        if at.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(self.truncated(what, at, len));
        }
        let mut buf = vec![0u8; len as usize];
        self.src
            .read_exact_at(&mut buf, at)
            .map_err(|e| IndexError::io("read", &self.path, e))?;
        Ok(buf)
    }

    fn truncated(&self, what: &'static str, offset: u64, need: u64) -> IndexError {
        IndexError::Truncated {
            path: self.path.clone(),
            what,
            offset,
            need,
            size: self.size,
        }
    }
}

/// Decodes one postings offset table entry: key count 2, name, value, postings offset.
fn decode_entry<'a>(d: &mut Decbuf<'a>) -> Result<Entry<'a>, crate::encoding::DecodeError> {
    let at = d.offset();
    let keys = d.uvarint()?;
    if keys != 2 {
        return Err(crate::encoding::DecodeError {
            offset: at,
            what: format!("entry has {keys} keys, want 2"),
        });
    }
    let name = d.uvarint_str()?;
    let value = d.uvarint_str()?;
    let postings_offset = d.uvarint()?;
    Ok(Entry {
        name,
        value,
        postings_offset,
    })
}
