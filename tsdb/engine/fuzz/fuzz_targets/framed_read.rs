//! Reading arbitrary bytes as a cold-compressed file must never panic: the first bytes choose
//! the compression and a frame table, the rest is the "compressed" file; every read either
//! returns bytes or an error. Real frames of the same plain bytes always read back exactly.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rimir_tsdb::framed::{Compression, FileFrames, FrameCache, FramedReadAt, write_framed};
use rimir_tsdb::readat::ReadAt;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let compression = match head % 3 {
        0 => Compression::Gzip,
        1 => Compression::Snappy,
        _ => Compression::None,
    };
    let frame_bytes = u64::from(head / 3 % 16 + 1) * 64;
    // Arbitrary bytes under an arbitrary (but self-consistent) table.
    let n = rest.len();
    let frames: Vec<u32> = rest.chunks(97).map(|c| c.len() as u32).collect();
    let table = FileFrames {
        plain_bytes: frames.len() as u64 * frame_bytes,
        frames,
    };
    if let Ok(r) = FramedReadAt::new(
        Path::new("fuzz"),
        Box::new(rest.to_vec()),
        compression,
        frame_bytes,
        &table,
        FrameCache::new(4096),
    ) {
        let mut buf = vec![0u8; 100];
        for off in [0u64, 1, frame_bytes - 1, frame_bytes, n as u64] {
            let _ = r.read_exact_at(&mut buf, off);
        }
        r.prefetch(&[0..r.size()]);
    }
    // The same bytes as plain data, framed for real, read back exactly.
    let mut packed = Vec::new();
    let t = write_framed(&mut &rest[..], &mut packed, compression, frame_bytes).unwrap();
    let r = FramedReadAt::new(
        Path::new("fuzz"),
        Box::new(packed),
        compression,
        frame_bytes,
        &t,
        FrameCache::new(1024),
    )
    .unwrap();
    let mut all = vec![0u8; n];
    r.read_exact_at(&mut all, 0).unwrap();
    assert_eq!(all, rest);
});
