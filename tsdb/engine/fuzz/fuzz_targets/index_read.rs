//! Reading arbitrary bytes as an index file must never panic: `IndexReader::open` and the reads
//! a query makes return errors naming the file and offset, or data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rimir_tsdb::index::IndexReader;

fuzz_target!(|data: &[u8]| {
    // One file per fuzzing process, rewritten for every input.
    let path = std::env::temp_dir().join(format!("rimir-fuzz-index-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(reader) = IndexReader::open(&path) else {
        return;
    };
    if let Ok(refs) = reader.all_postings() {
        for r in refs.into_iter().take(256) {
            let _ = reader.series(r);
        }
    }
    if let Ok(names) = reader.label_names() {
        for name in names.iter().take(64) {
            if let Ok(values) = reader.label_values(name) {
                for value in values.iter().take(64) {
                    let _ = reader.postings(name, value);
                }
            }
        }
    }
    let _ = reader.symbols();
});
