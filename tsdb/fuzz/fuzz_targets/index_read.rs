//! Opening arbitrary bytes as an index file must never panic: `IndexReader::open` returns an
//! error naming the file and offset, or a reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rimir_tsdb::index::IndexReader;

fuzz_target!(|data: &[u8]| {
    // One file per fuzzing process, rewritten for every input.
    let path = std::env::temp_dir().join(format!("rimir-fuzz-index-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = IndexReader::open(&path);
});
