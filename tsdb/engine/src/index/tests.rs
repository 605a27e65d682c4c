use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::chunks::ChunkMeta;
use crate::encoding::crc32c;
use crate::labels::{Label, Labels, MatchType, Matcher};

/// `n` sorted series with a metric name, a few labels of varying cardinality (some absent) and
/// increasing chunk references.
fn sample_series(n: usize) -> Vec<(Labels, Vec<ChunkMeta>)> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut set = BTreeSet::new();
    for i in 0..n {
        let mut pairs = vec![
            ("__name__", format!("metric_{}", i % 13)),
            ("instance", format!("host-{:04}", i % 211)),
            ("id", i.to_string()),
        ];
        if i % 3 == 0 {
            pairs.push(("job", ["api", "web", "db"][i % 9 / 3].to_string()));
        }
        if i % 7 == 0 {
            pairs.push(("path", format!("/v1/ü/{}\n\"x\"", i % 5)));
        }
        if i % 500 == 0 {
            pairs.push(("long", "x".repeat(600 + i)));
        }
        set.insert(Labels::from_pairs(pairs));
    }
    let mut chunk_ref = 8u64;
    set.into_iter()
        .map(|lset| {
            let mut t = rng.random_range(-5_000i64..1_000_000);
            // Series with a "long" label get enough chunks to make their entry longer than
            // the reader's speculative first read.
            let n = if lset.get("long").is_some() {
                150
            } else {
                rng.random_range(0..5)
            };
            let chunks = (0..n)
                .map(|_| {
                    let min_time = t + rng.random_range(1..100_000);
                    let max_time = min_time + rng.random_range(0..7_200_000);
                    t = max_time;
                    chunk_ref += rng.random_range(0..300);
                    ChunkMeta {
                        min_time,
                        max_time,
                        chunk_ref,
                    }
                })
                .collect();
            (lset, chunks)
        })
        .collect()
}

fn write_sample(dir: &Path, n: usize) -> (PathBuf, Vec<(Labels, Vec<ChunkMeta>)>, IndexStats) {
    let path = dir.join("index");
    let series = sample_series(n);
    let stats = write_index(&path, &series).unwrap();
    (path, series, stats)
}

/// The reference each series got, found by reading all postings back.
fn refs_by_position(r: &IndexReader) -> Vec<u64> {
    r.all_postings().unwrap()
}

#[test]
fn round_trip_preserves_series_postings_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let (path, series, stats) = write_sample(dir.path(), 3000);
    assert_eq!(stats.series, series.len() as u64);
    assert_eq!(stats.bytes, std::fs::metadata(&path).unwrap().len());

    // Once with the symbol table in memory, once reading it per lookup.
    for r in [
        IndexReader::open(&path).unwrap(),
        IndexReader::open_with(&path, 0).unwrap(),
    ] {
        assert_eq!(r.file_size(), stats.bytes);
        let refs = refs_by_position(&r);
        assert_eq!(refs.len(), series.len());
        assert!(refs.windows(2).all(|w| w[0] < w[1]));
        for (r_, (lset, chunks)) in refs.iter().zip(&series) {
            let (got_l, got_c) = r.series(*r_).unwrap();
            assert_eq!(&got_l, lset);
            assert_eq!(&got_c, chunks);
        }

        // Expected postings and values, computed from the input.
        let mut expected: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        let mut symbols = BTreeSet::from([String::new()]);
        for (r_, (lset, _)) in refs.iter().zip(&series) {
            for l in lset.iter() {
                expected
                    .entry((l.name.clone(), l.value.clone()))
                    .or_default()
                    .push(*r_);
                symbols.insert(l.name.clone());
                symbols.insert(l.value.clone());
            }
        }
        assert_eq!(stats.postings, expected.len() as u64 + 1);
        assert_eq!(stats.symbols, symbols.len() as u64);
        assert_eq!(
            r.symbols().unwrap(),
            symbols.into_iter().collect::<Vec<_>>()
        );
        for ((name, value), want) in &expected {
            assert_eq!(&r.postings(name, value).unwrap(), want, "{name}={value}");
        }
        let names: BTreeSet<String> = expected.keys().map(|(n, _)| n.clone()).collect();
        assert_eq!(
            r.label_names().unwrap(),
            names.iter().cloned().collect::<Vec<_>>()
        );
        for name in &names {
            let values: Vec<String> = expected
                .keys()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .collect();
            assert_eq!(r.label_values(name).unwrap(), values, "values of {name}");
        }
        assert!(r.postings("job", "nope").unwrap().is_empty());
        assert!(r.postings("job", "").unwrap().is_empty());
        assert!(r.postings("nope", "api").unwrap().is_empty());
        assert!(r.label_values("nope").unwrap().is_empty());
        assert!(r.label_values("").unwrap().is_empty());
    }
}

#[test]
fn series_sections_are_aligned_and_refs_are_offsets_over_16() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = write_sample(dir.path(), 50);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..5], &[0xBA, 0xAA, 0xD7, 0x00, 2]);
    let r = IndexReader::open(&path).unwrap();
    let mut longest = 0;
    for series_ref in r.all_postings().unwrap() {
        let off = (series_ref * 16) as usize;
        // A series entry starts with the uvarint length of its body, followed by the label count.
        let (len, n) = crate::encoding::uvarint(&bytes[off..]).unwrap();
        let body = &bytes[off + n..off + n + len as usize];
        let crc = &bytes[off + n + len as usize..off + n + len as usize + 4];
        assert_eq!(crc32c(body).to_be_bytes(), crc);
        longest = longest.max(len);
    }
    // Entries both shorter and longer than the reader's speculative first read occur.
    assert!(longest > 512, "longest series entry {longest}");
}

#[test]
fn empty_index_has_no_series_or_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let stats = write_index(&path, &[]).unwrap();
    assert_eq!((stats.series, stats.symbols, stats.postings), (0, 0, 1));
    let r = IndexReader::open(&path).unwrap();
    assert!(r.all_postings().unwrap().is_empty());
    assert!(r.label_names().unwrap().is_empty());
    assert!(r.symbols().unwrap().is_empty());
    assert!(r.series(0).is_err());
}

fn matcher(kind: MatchType, name: &str, value: &str) -> Matcher {
    Matcher::new(kind, name, value).unwrap()
}

#[test]
fn postings_for_matchers_agree_with_matching_each_series() {
    use MatchType::*;
    let dir = tempfile::tempdir().unwrap();
    let (path, series, _) = write_sample(dir.path(), 1500);
    let r = IndexReader::open(&path).unwrap();
    let refs = r.all_postings().unwrap();
    let cases: Vec<Vec<Matcher>> = vec![
        vec![matcher(Equal, "__name__", "metric_3")],
        vec![
            matcher(Equal, "__name__", "metric_3"),
            matcher(Equal, "job", "web"),
        ],
        vec![
            matcher(Equal, "__name__", "metric_3"),
            matcher(NotEqual, "job", "web"),
        ],
        vec![matcher(Equal, "job", "")],
        vec![matcher(NotEqual, "job", "")],
        vec![matcher(Regex, "job", ".*")],
        vec![matcher(Regex, "job", ".+")],
        vec![matcher(Regex, "job", "a.*|d.*")],
        vec![matcher(Regex, "job", "a.*|")],
        vec![matcher(NotRegex, "job", "a.*")],
        vec![matcher(NotRegex, "job", "")],
        vec![matcher(NotRegex, "job", ".*")],
        vec![
            matcher(Regex, "instance", "host-00[0-4]."),
            matcher(NotRegex, "job", "db|api"),
        ],
        vec![
            matcher(Regex, "path", ".*3.*"),
            matcher(Regex, "instance", ".+"),
        ],
        vec![matcher(Regex, "job", ".+"), matcher(NotEqual, "job", "api")],
        vec![matcher(NotEqual, "nope", "x")],
        vec![matcher(Equal, "nope", "x")],
        vec![matcher(Equal, "nope", "")],
        vec![matcher(Regex, "id", "1.."), matcher(Equal, "path", "")],
        vec![matcher(Equal, "", "")],
    ];
    for ms in &cases {
        let want: Vec<u64> = refs
            .iter()
            .zip(&series)
            .filter(|(_, (l, _))| {
                ms.iter()
                    .all(|m| m.name.is_empty() && m.value.is_empty() || m.matches_labels(l))
            })
            .map(|(r, _)| *r)
            .collect();
        let got = r.postings_for_matchers(ms).unwrap();
        let shown: Vec<String> = ms.iter().map(|m| m.to_string()).collect();
        assert_eq!(got, want, "matchers {shown:?}");
    }
    assert!(r.postings_for_matchers(&[]).unwrap().is_empty());
}

#[test]
fn writer_rejects_unsorted_series_and_bad_chunk_metas() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let a = Labels::from_pairs([("a", "1")]);
    let b = Labels::from_pairs([("a", "2")]);
    let chunk = |min_time, max_time, chunk_ref| ChunkMeta {
        min_time,
        max_time,
        chunk_ref,
    };
    let cases = vec![
        (vec![(b.clone(), vec![]), (a.clone(), vec![])], "sorted"),
        (vec![(a.clone(), vec![]), (a.clone(), vec![])], "sorted"),
        (vec![(Labels::default(), vec![])], "no labels"),
        (
            vec![(
                Labels::from_sorted(vec![Label {
                    name: String::new(),
                    value: "x".into(),
                }]),
                vec![],
            )],
            "empty or repeated label name",
        ),
        (
            vec![(a.clone(), vec![chunk(5, 4, 8)])],
            "before its min time",
        ),
        (
            vec![(a.clone(), vec![chunk(1, 4, 8), chunk(4, 6, 9)])],
            "not after",
        ),
        (
            vec![
                (a.clone(), vec![chunk(1, 4, 9)]),
                (b.clone(), vec![chunk(5, 6, 8)]),
            ],
            "below",
        ),
    ];
    for (series, want) in cases {
        let e = write_index(&path, &series).unwrap_err();
        assert!(matches!(e, IndexError::InvalidInput { .. }), "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}

/// Asserts that opening or reading `path` fails with an error naming the file and `offset`.
fn assert_error_names(e: &IndexError, path: &Path, offset: u64) {
    let s = e.to_string();
    assert!(s.contains(&path.display().to_string()), "path missing: {s}");
    assert!(
        s.contains(&format!("offset {offset}")),
        "offset {offset} missing: {s}"
    );
}

#[test]
fn truncated_index_reports_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, stats) = write_sample(dir.path(), 100);
    let bytes = std::fs::read(&path).unwrap();
    // Cut in the middle: the "TOC" read now sees other bytes, so the CRC fails at the new end.
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = IndexReader::open(&cut).unwrap_err();
    assert_error_names(&e, &cut, (bytes.len() / 2) as u64 - TOC_LEN);
    // Shorter than header and TOC.
    std::fs::write(&cut, &bytes[..20]).unwrap();
    let e = IndexReader::open(&cut).unwrap_err();
    assert!(matches!(e, IndexError::Truncated { .. }), "{e}");
    assert_error_names(&e, &cut, 0);
    // A TOC pointing past a file cut short after the TOC was rewritten.
    let toc_at = stats.bytes - TOC_LEN;
    let mut short = bytes[..(toc_at as usize) / 2].to_vec();
    short.extend_from_slice(&bytes[toc_at as usize..]);
    std::fs::write(&cut, &short).unwrap();
    let e = IndexReader::open(&cut).unwrap_err();
    assert!(matches!(e, IndexError::OutOfRange { .. }), "{e}");
    assert!(e.to_string().contains(&cut.display().to_string()), "{e}");
}

#[test]
fn bad_crc_names_section_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = write_sample(dir.path(), 100);
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip a byte inside the first symbol (the symbol table starts at 5: len, count, strings).
    bytes[5 + 8 + 1] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let e = IndexReader::open(&path).unwrap_err();
    assert!(
        matches!(
            e,
            IndexError::Checksum {
                section: "symbol table",
                ..
            }
        ),
        "{e}"
    );
    assert_error_names(&e, &path, 5);

    // A corrupted series is only noticed when read.
    let (path, _, _) = write_sample(dir.path(), 100);
    let r = IndexReader::open(&path).unwrap();
    let first = r.all_postings().unwrap()[3];
    drop(r);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(first * 16) as usize + 2] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let r = IndexReader::open(&path).unwrap();
    let e = r.series(first).unwrap_err();
    assert!(
        matches!(
            e,
            IndexError::Checksum {
                section: "series",
                ..
            }
        ),
        "{e}"
    );
    assert_error_names(&e, &path, first * 16);
}

#[test]
fn bad_magic_and_version_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = write_sample(dir.path(), 10);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4] = 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = IndexReader::open(&path).unwrap_err();
    assert!(
        matches!(e, IndexError::UnsupportedVersion { version: 1, .. }),
        "{e}"
    );
    assert_error_names(&e, &path, 4);
    bytes[0] = 0;
    std::fs::write(&path, &bytes).unwrap();
    let e = IndexReader::open(&path).unwrap_err();
    assert!(
        matches!(
            e,
            IndexError::BadMagic {
                found: 0x00AA_D700,
                ..
            }
        ),
        "{e}"
    );
    assert_error_names(&e, &path, 0);
}

#[test]
fn out_of_range_series_ref_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = write_sample(dir.path(), 10);
    let r = IndexReader::open(&path).unwrap();
    for bad in [0, 1, u64::MAX, u64::MAX / 16, r.file_size() / 16] {
        let e = r.series(bad).unwrap_err();
        assert!(matches!(e, IndexError::OutOfRange { .. }), "{e}");
    }
    // A reference inside the series section but not at a series start is caught by the CRC or
    // decoding, not by a panic.
    let refs = r.all_postings().unwrap();
    assert!(r.series(refs[0] + 1).is_err() || refs.contains(&(refs[0] + 1)));
}

/// Framed sections of a valid index: (offset of the length field, whether it is a uvarint).
fn framed_sections(bytes: &[u8], r: &IndexReader) -> Vec<(usize, bool)> {
    let toc = &bytes[bytes.len() - TOC_LEN as usize..];
    let toc_entry = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&toc[i * 8..i * 8 + 8]);
        u64::from_be_bytes(a) as usize
    };
    let mut v = vec![
        (toc_entry(0), false),
        (toc_entry(3), false),
        (toc_entry(5), false),
    ];
    for s in r.all_postings().unwrap() {
        v.push(((s * 16) as usize, true));
    }
    v
}

/// Changes a byte inside the framed section at `at` and recomputes its CRC, so that the
/// corruption reaches the decoder instead of stopping at the checksum.
fn corrupt_behind_crc(b: &mut [u8], at: usize, uvarint_len: bool, rng: &mut StdRng) {
    let (len, body_at) = if uvarint_len {
        let (len, n) = crate::encoding::uvarint(&b[at..]).unwrap();
        (len as usize, at + n)
    } else {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[at..at + 4]);
        (u32::from_be_bytes(a) as usize, at + 4)
    };
    if len == 0 {
        return;
    }
    let pos = body_at + rng.random_range(0..len);
    b[pos] = match rng.random_range(0..4) {
        0 => 0,
        1 => 0xff,
        2 => b[pos].wrapping_add(1),
        _ => rng.random(),
    };
    let crc = crc32c(&b[body_at..body_at + len]);
    b[body_at + len..body_at + len + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Corrupting or truncating a valid index anywhere never panics the reader.
#[test]
fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = write_sample(dir.path(), 40);
    let good = std::fs::read(&path).unwrap();
    let sections = framed_sections(&good, &IndexReader::open(&path).unwrap());
    let bad = dir.path().join("bad");
    let mut rng = StdRng::seed_from_u64(11);
    let (mut opened, mut failed_later) = (0, 0);
    for i in 0..600 {
        let mut b = good.clone();
        match i % 3 {
            0 => b.truncate(rng.random_range(0..good.len())),
            1 => {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
            }
            _ => {
                let (at, uvarint_len) = sections[rng.random_range(0..sections.len())];
                corrupt_behind_crc(&mut b, at, uvarint_len, &mut rng);
            }
        }
        std::fs::write(&bad, &b).unwrap();
        let Ok(r) = IndexReader::open_with(&bad, if i % 2 == 0 { 0 } else { 1 << 20 }) else {
            continue;
        };
        opened += 1;
        let mut errors = r.symbols().is_err() as usize;
        for name in r.label_names().unwrap_or_default() {
            errors += r.label_values(&name).is_err() as usize;
            for v in r.label_values(&name).unwrap_or_default() {
                errors += r.postings(&name, &v).is_err() as usize;
            }
        }
        for s in r.all_postings().unwrap_or_default() {
            errors += r.series(s).is_err() as usize;
        }
        let m = [matcher(MatchType::Regex, "instance", ".*1.*")];
        errors += r.postings_for_matchers(&m).is_err() as usize;
        failed_later += (errors > 0) as usize;
    }
    assert!(opened > 0, "some corruptions leave the index readable");
    assert!(
        failed_later > 0,
        "some corruptions are only found when reading"
    );
}

// --- Compatibility with Prometheus' own tools. ---

fn promtool(args: &[&str]) -> std::process::Output {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is installed (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Block directories (ULID-named) below `dir`.
fn blocks_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("meta.json").exists())
        .collect();
    v.sort();
    v
}

#[test]
fn reads_index_written_by_promtool_create_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.om");
    // 3 series × 300 samples 15 s apart, all in one 2h block.
    let mut om = String::new();
    om.push_str("# TYPE http_requests counter\n");
    let t0 = 1_700_000_000i64; // seconds, aligned to no block boundary problems below
    let series = [
        ("http_requests_total", r#"code="200",job="api""#),
        ("http_requests_total", r#"code="500",job="api""#),
        ("http_requests_total", r#"code="200",job="web",path="/a b""#),
    ];
    for (name, labels) in series {
        for i in 0..300 {
            om.push_str(&format!("{name}{{{labels}}} {} {}\n", i * 2, t0 + i * 15));
        }
    }
    om.push_str("# EOF\n");
    let om = om.replace("# TYPE http_requests counter\n", "");
    std::fs::write(&input, om).unwrap();
    let out = dir.path().join("out");
    promtool(&[
        "tsdb",
        "create-blocks-from",
        "openmetrics",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let blocks = blocks_in(&out);
    assert!(!blocks.is_empty(), "promtool wrote no block");

    let mut seen = Vec::new();
    let mut total_samples_span = Vec::new();
    for block in &blocks {
        let r = IndexReader::open(&block.join("index")).unwrap();
        assert_eq!(
            r.label_names().unwrap(),
            vec!["__name__", "code", "job", "path"]
        );
        assert_eq!(r.label_values("job").unwrap(), vec!["api", "web"]);
        assert_eq!(r.label_values("path").unwrap(), vec!["/a b"]);
        let all = r.all_postings().unwrap();
        assert_eq!(all.len(), 3);
        let api = r
            .postings_for_matchers(&[matcher(MatchType::Equal, "job", "api")])
            .unwrap();
        assert_eq!(api.len(), 2);
        let no_path = r
            .postings_for_matchers(&[matcher(MatchType::Equal, "path", "")])
            .unwrap();
        assert_eq!(no_path, api);
        let mut prev_ref = 0;
        for s in all {
            let (lset, chunks) = r.series(s).unwrap();
            assert_eq!(lset.get("__name__"), Some("http_requests_total"));
            assert!(!chunks.is_empty());
            for c in &chunks {
                assert!(c.min_time <= c.max_time);
                assert!(c.chunk_ref >= prev_ref);
                prev_ref = c.chunk_ref;
                // Samples are 15 s apart starting at t0, in milliseconds.
                assert_eq!((c.min_time - t0 * 1000) % 15_000, 0);
            }
            total_samples_span.push((
                chunks.first().unwrap().min_time,
                chunks.last().unwrap().max_time,
            ));
            seen.push(lset.to_string());
        }
        for sym in ["http_requests_total", "code", "200", "500", "/a b"] {
            assert!(r.symbols().unwrap().iter().any(|s| s == sym), "{sym}");
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        vec![
            r#"{__name__="http_requests_total", code="200", job="api"}"#,
            r#"{__name__="http_requests_total", code="200", job="web", path="/a b"}"#,
            r#"{__name__="http_requests_total", code="500", job="api"}"#,
        ]
    );
    let first = total_samples_span.iter().map(|s| s.0).min().unwrap();
    let last = total_samples_span.iter().map(|s| s.1).max().unwrap();
    assert_eq!(first, t0 * 1000);
    assert_eq!(last, (t0 + 299 * 15) * 1000);
}

/// XOR chunk holding one sample: sample count, the timestamp as varint, the value's 64 bits.
fn one_sample_xor_chunk(t: i64, v: f64) -> Vec<u8> {
    let mut c = vec![0u8, 1];
    crate::encoding::put_varint(&mut c, t);
    c.extend_from_slice(&v.to_bits().to_be_bytes());
    c
}

/// Writes a block whose index comes from `write_index` and whose chunks hold one sample each,
/// with a minimal segment file and meta.json written here.
fn write_test_block(dir: &Path, series: &[(Labels, i64, f64)]) -> PathBuf {
    let id = ulid::Ulid::from_parts(1_700_000_000_000, 42).to_string();
    let block = dir.join(&id);
    std::fs::create_dir_all(block.join("chunks")).unwrap();
    let mut seg = Vec::new();
    seg.extend_from_slice(&0x85BD_40DDu32.to_be_bytes());
    seg.extend_from_slice(&[1, 0, 0, 0]);
    let mut index_series = Vec::new();
    for (lset, t, v) in series {
        let chunk_ref = seg.len() as u64; // segment 0 in the upper 32 bits
        let data = one_sample_xor_chunk(*t, *v);
        crate::encoding::put_uvarint(&mut seg, data.len() as u64);
        let enc_at = seg.len();
        seg.push(1); // XOR encoding
        seg.extend_from_slice(&data);
        let crc = crc32c(&seg[enc_at..]);
        seg.extend_from_slice(&crc.to_be_bytes());
        index_series.push((
            lset.clone(),
            vec![ChunkMeta {
                min_time: *t,
                max_time: *t,
                chunk_ref,
            }],
        ));
    }
    std::fs::write(block.join("chunks").join("000001"), seg).unwrap();
    write_index(&block.join("index"), &index_series).unwrap();
    let min_t = series.iter().map(|s| s.1).min().unwrap();
    let max_t = series.iter().map(|s| s.1).max().unwrap() + 1;
    let meta = format!(
        r#"{{"ulid":"{id}","minTime":{min_t},"maxTime":{max_t},"stats":{{"numSamples":{n},"numSeries":{n},"numChunks":{n}}},"compaction":{{"level":1,"sources":["{id}"]}},"version":1}}"#,
        n = series.len()
    );
    std::fs::write(block.join("meta.json"), meta).unwrap();
    block
}

#[test]
fn promtool_reads_index_written_here() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_700_000_000_000i64;
    let mut series: Vec<(Labels, i64, f64)> = (0..200)
        .map(|i| {
            let lset = Labels::from_pairs([
                ("__name__", format!("m{}", i % 4)),
                ("instance", format!("i{i:03}")),
                ("job", if i % 2 == 0 { "a" } else { "b" }.to_string()),
            ]);
            (lset, t0 + i as i64 * 1000, i as f64 * 0.5)
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let block = write_test_block(dir.path(), &series);

    let analyze = promtool(&["tsdb", "analyze", dir.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&analyze.stdout);
    assert!(text.contains("Series: 200"), "{text}");
    assert!(text.contains("Label names: 3"), "{text}");
    assert!(
        text.contains("Postings (unique label pairs): 206"),
        "{text}"
    );

    // dump opens the directory as a read-only DB, which wants a (here empty) WAL directory.
    std::fs::create_dir(dir.path().join("wal")).unwrap();
    let dump = promtool(&["tsdb", "dump", dir.path().to_str().unwrap()]);
    let mut got: Vec<String> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let mut want: Vec<String> = series
        .iter()
        .map(|(l, t, v)| format!("{l} {v} {t}"))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(block.join("index").exists());
}

/// Rewriting the series of an index written by promtool yields the same bytes: our writer lays
/// out every section (padding, label indices, offset tables, TOC) exactly as Prometheus does.
#[test]
fn rewriting_a_promtool_index_reproduces_it_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.om");
    let t0 = 1_700_000_000i64;
    let mut om = String::new();
    for i in 0..120 {
        let labels = format!(
            r#"instance="host-{}",job="{}",le="{}""#,
            i % 17,
            ["api", "web", "db"][i % 3],
            i
        );
        for k in 0..3 {
            om.push_str(&format!(
                "metric_{}{{{labels}}} {k} {}\n",
                i % 5,
                t0 + k * 60
            ));
        }
    }
    om.push_str("# EOF\n");
    std::fs::write(&input, om).unwrap();
    let out = dir.path().join("out");
    promtool(&[
        "tsdb",
        "create-blocks-from",
        "openmetrics",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let blocks = blocks_in(&out);
    assert_eq!(blocks.len(), 1);
    let theirs = blocks[0].join("index");
    let r = IndexReader::open(&theirs).unwrap();
    let series: Vec<(Labels, Vec<ChunkMeta>)> = r
        .all_postings()
        .unwrap()
        .into_iter()
        .map(|s| r.series(s).unwrap())
        .collect();
    assert_eq!(series.len(), 120);
    let ours = dir.path().join("index");
    write_index(&ours, &series).unwrap();
    let (a, b) = (
        std::fs::read(&theirs).unwrap(),
        std::fs::read(&ours).unwrap(),
    );
    let first_diff = a.iter().zip(&b).position(|(x, y)| x != y);
    let around = |v: &[u8], d: usize| v[d.saturating_sub(8)..(d + 24).min(v.len())].to_vec();
    assert_eq!(
        (a.len(), first_diff.map(|d| around(&a, d))),
        (b.len(), first_diff.map(|d| around(&b, d))),
        "promtool's index vs ours: length and bytes around the first difference"
    );
}

#[test]
fn reader_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<IndexReader>();
}
