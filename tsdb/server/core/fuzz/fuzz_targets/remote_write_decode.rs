//! Decoding arbitrary bytes as a remote-write `WriteRequest` must never panic; what decodes
//! re-encodes (series through `encode_series`, metadata through prost) to bytes that decode to
//! the same series and metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rimir_core::remote_write::{MetricMetadata, WriteRequest, WriteRequestRef, encode_series};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = WriteRequestRef::decode(data) else {
        return;
    };
    let mut again = Vec::new();
    for (labels, samples) in req.iter() {
        encode_series(&mut again, labels, samples);
    }
    let metadata: Vec<MetricMetadata> = req.metadata().iter().map(|m| m.to_owned()).collect();
    again.extend(
        WriteRequest {
            timeseries: Vec::new(),
            metadata: metadata.clone(),
        }
        .encode_to_vec(),
    );
    let back = WriteRequestRef::decode(&again).expect("re-encoded request decodes");
    assert_eq!(back.len(), req.len());
    for (a, b) in back.iter().zip(req.iter()) {
        assert_eq!(a.0, b.0, "labels");
        assert_eq!(a.1.len(), b.1.len(), "sample count");
        for (x, y) in a.1.iter().zip(b.1) {
            assert_eq!(x.0, y.0);
            assert_eq!(x.1.to_bits(), y.1.to_bits());
        }
    }
    let meta_back: Vec<MetricMetadata> = back.metadata().iter().map(|m| m.to_owned()).collect();
    assert_eq!(meta_back, metadata);
});
