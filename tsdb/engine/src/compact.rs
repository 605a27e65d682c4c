//! Merging blocks: N blocks (adjacent or overlapping) become one, series merged in label order
//! and identical samples of overlapping blocks (replicas' copies) deduplicated. Memory holds one
//! series' samples at a time plus the new block's index entries.

use std::path::Path;

use crate::block::{Block, BlockDesc, BlockError, BlockMeta, BlockOptions, BlockWriter};
use crate::labels::Labels;
use crate::series::{Sample, merge_samples};

/// Merges `blocks` into one new block under `parent` and returns its meta.
///
/// The result's level is one more than the highest input level; its sources are the union of
/// the inputs' sources and its parents are the inputs.
pub fn compact_blocks(
    blocks: &[Block],
    parent: &Path,
    source: &str,
) -> Result<BlockMeta, BlockError> {
    let mut cursors = Vec::with_capacity(blocks.len());
    for b in blocks {
        let refs = b.index().all_postings()?;
        cursors.push(Cursor {
            block: b,
            refs,
            pos: 0,
            head: None,
        });
    }
    for c in &mut cursors {
        c.advance()?;
    }
    let mut w = BlockWriter::new(parent)?;
    while let Some(min) = cursors
        .iter()
        .filter_map(|c| c.head.as_ref().map(|h| &h.0))
        .min()
        .cloned()
    {
        let mut parts: Vec<Vec<Sample>> = Vec::new();
        for c in &mut cursors {
            if c.head.as_ref().is_some_and(|h| h.0 == min) {
                let (labels, metas) = c.head.take().expect("checked");
                parts.push(c.block.read_samples(&labels, &metas, i64::MIN, i64::MAX)?);
                c.advance()?;
            }
        }
        let merged = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            let refs: Vec<&[Sample]> = parts.iter().map(|p| p.as_slice()).collect();
            merge_samples(&refs)
        };
        w.add_series(min, &merged)?;
    }
    let metas: Vec<&BlockMeta> = blocks.iter().map(|b| b.meta()).collect();
    let mut sources: Vec<String> = metas
        .iter()
        .flat_map(|m| m.compaction.sources.iter().cloned())
        .collect();
    sources.sort();
    sources.dedup();
    let thanos_labels = metas
        .first()
        .and_then(|m| m.thanos.as_ref())
        .map(|t| t.labels.clone())
        .unwrap_or_default();
    let opts = BlockOptions {
        ulid: None,
        min_time: metas.iter().map(|m| m.min_time).min(),
        max_time: metas.iter().map(|m| m.max_time).max(),
        level: metas.iter().map(|m| m.compaction.level).max().unwrap_or(0) + 1,
        sources,
        parents: metas
            .iter()
            .map(|m| BlockDesc {
                ulid: m.ulid.clone(),
                min_time: m.min_time,
                max_time: m.max_time,
            })
            .collect(),
        thanos_labels,
        source: source.to_string(),
    };
    w.finish(&opts)
}

struct Cursor<'a> {
    block: &'a Block,
    refs: Vec<u64>,
    pos: usize,
    head: Option<(Labels, Vec<crate::chunks::ChunkMeta>)>,
}

impl Cursor<'_> {
    fn advance(&mut self) -> Result<(), BlockError> {
        self.head = match self.refs.get(self.pos) {
            Some(&r) => {
                self.pos += 1;
                Some(self.block.index().series(r)?)
            }
            None => None,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::write_block;
    use crate::labels::Matcher;

    fn lbl(i: usize) -> Labels {
        Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())])
    }

    #[test]
    fn overlapping_replicas_deduplicate_and_adjacent_ranges_concatenate() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<(Labels, Vec<Sample>)> = (0..5)
            .map(|i| (lbl(i), (0..100).map(|t| (t * 10, t as f64)).collect()))
            .collect();
        let mut b = a.clone();
        b.push((lbl(9), vec![(5, 1.0)]));
        let c: Vec<(Labels, Vec<Sample>)> = (0..5)
            .map(|i| (lbl(i), (100..200).map(|t| (t * 10, t as f64)).collect()))
            .collect();
        let metas: Vec<BlockMeta> = [a, b, c]
            .into_iter()
            .map(|s| write_block(dir.path(), s, &BlockOptions::default()).unwrap())
            .collect();
        let blocks: Vec<Block> = metas
            .iter()
            .map(|m| Block::open(&dir.path().join(&m.ulid)).unwrap())
            .collect();
        let out = tempfile::tempdir().unwrap();
        let meta = compact_blocks(&blocks, out.path(), "test").unwrap();
        assert_eq!(meta.compaction.level, 2);
        assert_eq!(meta.compaction.sources.len(), 3);
        assert_eq!(meta.stats.num_series, 6);
        assert_eq!(meta.stats.num_samples, 5 * 200 + 1);
        let merged = Block::open(&out.path().join(&meta.ulid)).unwrap();
        let s = merged
            .select(&[Matcher::equal("i", "3")], i64::MIN, i64::MAX)
            .unwrap();
        assert_eq!(
            s[0].samples,
            (0..200).map(|t| (t * 10, t as f64)).collect::<Vec<_>>()
        );
    }
}
