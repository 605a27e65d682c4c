//! Decoding arbitrary bytes as an XOR chunk must never panic: it yields samples and at most one
//! error, and restoring an appendable chunk from the same bytes either fails cleanly or yields a
//! chunk that decodes to the same samples.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rimir_tsdb::chunkenc::{XorChunk, decode_xor};

fuzz_target!(|data: &[u8]| {
    let mut samples = Vec::new();
    let mut errors = 0;
    for r in decode_xor(data) {
        match r {
            Ok(s) => samples.push(s),
            Err(_) => errors += 1,
        }
    }
    assert!(errors <= 1, "decoder yielded {errors} errors");
    if let Ok(mut chunk) = XorChunk::from_bytes(data.to_vec()) {
        assert_eq!(errors, 0, "from_bytes accepted data the decoder rejects");
        let again: Vec<(i64, f64)> = chunk.iter().map(|r| r.expect("valid chunk")).collect();
        assert_eq!(again.len(), samples.len());
        // Appending to a restored chunk keeps every earlier sample.
        if chunk.num_samples() < usize::from(u16::MAX) {
            let t = chunk.max_time().unwrap_or(0).wrapping_add(15_000);
            chunk.append(t, 1.5);
            let after: Vec<(i64, f64)> = chunk.iter().map(|r| r.expect("appended chunk")).collect();
            assert_eq!(after.len(), samples.len() + 1);
            for (a, b) in after.iter().zip(&samples) {
                assert_eq!(a.0, b.0);
                assert_eq!(a.1.to_bits(), b.1.to_bits());
            }
            assert_eq!(after.last().map(|s| s.0), Some(t));
        }
    }
});
