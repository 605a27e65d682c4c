use super::*;
use crate::labels::Labels;

fn series(r: u64) -> RefSeries {
    RefSeries {
        series_ref: r,
        labels: Labels::from_pairs([("__name__", "m"), ("i", r.to_string().as_str())]),
    }
}

/// Records with pseudo-random values (so snappy cannot shrink them to nothing).
fn records(n: usize, samples_per: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..n {
        if i % 5 == 0 {
            out.push(Record::Series(
                (0..3).map(|k| series((i * 3 + k) as u64)).collect(),
            ));
        }
        let s = (0..samples_per)
            .map(|k| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                RefSample {
                    series_ref: (k % 7) as u64,
                    t: (i * 1000 + k) as i64,
                    v: f64::from_bits(x),
                }
            })
            .collect();
        out.push(Record::Samples(s));
    }
    out
}

fn small(compression: Compression) -> WalOptions {
    WalOptions {
        segment_size: 2 * PAGE_SIZE,
        compression,
    }
}

fn replay_all(dir: &Path, opts: WalOptions) -> (Wal, Vec<Record>, Option<Corruption>) {
    let (wal, mut replay) = Wal::open(dir, opts).unwrap();
    let recs: Vec<Record> = replay.by_ref().map(|r| r.unwrap()).collect();
    assert!(replay.is_done());
    (wal, recs, replay.corruption().cloned())
}

fn same(a: &[Record], b: &[Record]) -> bool {
    // Compare through the encoding, which is bit-exact for NaN payloads.
    let enc = |r: &Record| {
        let mut v = Vec::new();
        r.encode(&mut v);
        v
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| enc(x) == enc(y))
}

#[test]
fn records_round_trip_across_pages_and_segments() {
    for c in [Compression::None, Compression::Snappy] {
        let dir = tempfile::tempdir().unwrap();
        let recs = records(400, 50);
        let (mut wal, got, _) = replay_all(dir.path(), small(c));
        assert!(got.is_empty());
        for chunk in recs.chunks(7) {
            wal.log_and_sync(chunk).unwrap();
        }
        // One record bigger than a whole segment: fragments first/middle/last, own segment.
        let big = records(1, 10_000);
        wal.log(&big).unwrap();
        drop(wal);
        let n = list_segments(dir.path()).unwrap().len();
        assert!(n > 3, "{c:?}: {n} segments");
        let (_, got, corruption) = replay_all(dir.path(), small(c));
        assert_eq!(corruption, None);
        let mut want = recs.clone();
        want.extend(big);
        assert!(same(&got, &want), "{c:?}: {} records back", got.len());
    }
}

#[test]
fn snappy_makes_compressible_records_smaller() {
    let size = |c| {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _, _) = replay_all(
            dir.path(),
            WalOptions {
                compression: c,
                ..Default::default()
            },
        );
        let s: Vec<RefSample> = (0..10_000)
            .map(|i| RefSample {
                series_ref: i,
                t: 1000,
                v: 1.0,
            })
            .collect();
        wal.log(&[Record::Samples(s)]).unwrap();
        wal.logged_bytes()
    };
    let (none, snappy) = (size(Compression::None), size(Compression::Snappy));
    assert!(snappy * 2 < none, "snappy {snappy} vs none {none}");
}

#[test]
fn logging_before_replay_finished_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _, _) = replay_all(dir.path(), small(Compression::Snappy));
    wal.log(&records(3, 2)).unwrap();
    drop(wal);
    let (mut wal, replay) = Wal::open(dir.path(), small(Compression::Snappy)).unwrap();
    assert!(matches!(
        wal.log(&records(1, 1)),
        Err(WalError::ReplayPending { .. })
    ));
    assert_eq!(replay.count(), 4);
    wal.log(&records(1, 1)).unwrap();
}

#[test]
fn torn_tail_is_reported_truncated_and_everything_before_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let recs = records(30, 40);
    let (mut wal, _, _) = replay_all(dir.path(), small(Compression::None));
    wal.log(&recs).unwrap();
    let last = wal.active_segment().unwrap();
    drop(wal);
    let path = segment_path(dir.path(), last);
    let len = fs::metadata(&path).unwrap().len();
    // Cut 5 bytes into the last record.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let (mut wal, got, corruption) = replay_all(dir.path(), small(Compression::None));
    let c = corruption.expect("torn tail reported");
    assert_eq!(c.segment, last);
    assert!(c.offset < len - 5 && c.offset > 0, "{c}");
    assert_eq!(fs::metadata(&path).unwrap().len(), c.offset);
    assert_eq!(c.truncated_bytes, len - 5 - c.offset);
    assert!(c.reason.contains("segment ends"), "{c}");
    assert!(
        same(&got, &recs[..recs.len() - 1]),
        "{} of {}",
        got.len(),
        recs.len()
    );
    // Logging continues in a fresh segment, and a second replay is clean.
    wal.log(&recs[recs.len() - 1..]).unwrap();
    drop(wal);
    let (_, got, corruption) = replay_all(dir.path(), small(Compression::None));
    assert_eq!(corruption, None);
    assert!(same(&got, &recs));
}

#[test]
fn flipped_byte_in_older_segment_drops_it_and_all_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let recs = records(600, 40);
    let (mut wal, _, _) = replay_all(dir.path(), small(Compression::Snappy));
    for r in &recs {
        wal.log(std::slice::from_ref(r)).unwrap();
    }
    drop(wal);
    let segs = list_segments(dir.path()).unwrap();
    assert!(segs.len() >= 4, "{segs:?}");
    let victim = segs[1];
    let path = segment_path(dir.path(), victim);
    let mut bytes = fs::read(&path).unwrap();
    let at = PAGE_SIZE + 100;
    bytes[at] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    // Records fully before the damaged one come back, in order.
    let (_, got, corruption) = replay_all(dir.path(), small(Compression::Snappy));
    let c = corruption.expect("corruption reported");
    assert_eq!(c.segment, victim);
    assert!(c.offset <= at as u64, "{c}");
    assert_eq!(c.removed_segments, segs[2..].to_vec());
    assert!(!got.is_empty() && same(&got, &recs[..got.len()]));
    assert_eq!(list_segments(dir.path()).unwrap(), vec![segs[0], victim]);
    assert!(
        c.to_string().contains(&format!("at offset {}", c.offset)),
        "{c}"
    );
}

#[test]
fn checkpoint_keeps_live_series_and_recent_samples_and_removes_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(Compression::Snappy);
    let (mut wal, _, _) = replay_all(dir.path(), opts.clone());
    let recs = records(40, 30);
    wal.log(&recs).unwrap();
    let before = list_segments(dir.path()).unwrap();
    let stats = wal.checkpoint(|r| r % 2 == 0, 20_000).unwrap().unwrap();
    assert_eq!(stats.index, *before.last().unwrap());
    assert!(stats.samples_dropped > 0 && stats.samples_kept > 0 && stats.series_dropped > 0);
    assert!(list_segments(dir.path()).unwrap().is_empty());
    let tail = records(2, 3);
    wal.log(&tail).unwrap();
    drop(wal);

    let (mut wal, got, corruption) = replay_all(dir.path(), opts.clone());
    assert_eq!(corruption, None);
    let mut want: Vec<Record> = Vec::new();
    for r in &recs {
        match r {
            Record::Series(s) => {
                let s: Vec<_> = s
                    .iter()
                    .filter(|s| s.series_ref % 2 == 0)
                    .cloned()
                    .collect();
                if !s.is_empty() {
                    want.push(Record::Series(s));
                }
            }
            Record::Samples(s) => {
                let s: Vec<_> = s
                    .iter()
                    .filter(|s| s.series_ref % 2 == 0 && s.t >= 20_000)
                    .copied()
                    .collect();
                if !s.is_empty() {
                    want.push(Record::Samples(s));
                }
            }
        }
    }
    want.extend(tail.iter().cloned());
    assert!(same(&got, &want), "{} vs {}", got.len(), want.len());

    // A second checkpoint folds the first one in and deletes it.
    wal.checkpoint(|_| true, 0).unwrap().unwrap();
    drop(wal);
    assert_eq!(list_checkpoints(dir.path()).unwrap().len(), 1);
    let (_, got2, _) = replay_all(dir.path(), opts);
    assert!(same(&got2, &want));
}

#[test]
fn unfinished_checkpoint_and_covered_segments_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(Compression::None);
    let (mut wal, _, _) = replay_all(dir.path(), opts.clone());
    let recs = records(10, 5);
    wal.log(&recs).unwrap();
    let plan = wal.begin_checkpoint().unwrap().unwrap();
    plan.write(|_| true, i64::MIN).unwrap();
    // Crash before `finish`: covered segments still there, plus a stray temporary directory.
    drop(wal);
    fs::create_dir(dir.path().join("checkpoint.00000099.tmp")).unwrap();
    let (_, got, _) = replay_all(dir.path(), opts);
    assert!(same(&got, &recs));
    assert!(!dir.path().join("checkpoint.00000099.tmp").exists());
    assert!(
        list_segments(dir.path())
            .unwrap()
            .iter()
            .all(|&n| n > plan.upto())
    );
}

#[test]
fn gap_in_segment_numbers_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("00000001"), b"").unwrap();
    fs::write(dir.path().join("00000003"), b"").unwrap();
    let e = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(
        matches!(e, WalError::MissingSegment { missing: 2, .. }),
        "{e}"
    );
}

#[test]
fn bad_options_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_size: 1000,
        ..Default::default()
    };
    assert!(matches!(
        Wal::open(dir.path(), opts),
        Err(WalError::InvalidOptions(_))
    ));
    assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
    assert!("zstd".parse::<Compression>().is_err());
}

#[test]
fn full_segment_has_no_room_and_pages_lose_only_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = replay_all(dir.path(), small(Compression::None));
    let page = PAGE_SIZE as u64;
    let h = HEADER_SIZE as u64;
    assert_eq!(wal.room(0), 2 * (page - h));
    assert_eq!(
        wal.room(page - 3),
        page - h,
        "a page with 3 bytes left is padded"
    );
    assert_eq!(wal.room(2 * page - 100), 100 - h);
    assert_eq!(wal.room(2 * page), 0);
    assert_eq!(wal.room(5 * page), 0, "an oversized segment is full");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Byte flips anywhere and truncation of the last segment (what a crash can do) always replay
/// a prefix of what was logged; anything lost is reported, except a cut exactly at a record
/// boundary of the last segment, which is indistinguishable from stopping before that write.
#[test]
fn any_single_damage_replays_a_prefix_and_never_panics() {
    use rand::{Rng, SeedableRng};
    let src = tempfile::tempdir().unwrap();
    let recs = records(600, 20);
    let (mut wal, _, _) = replay_all(src.path(), small(Compression::Snappy));
    for r in recs.chunks(3) {
        wal.log(r).unwrap();
    }
    drop(wal);
    let segs = list_segments(src.path()).unwrap();
    assert!(segs.len() >= 3, "{segs:?}");
    let last = *segs.last().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut reported = 0;
    for round in 0..150 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let flip = round % 2 == 0;
        let seg = if flip {
            segs[rng.random_range(0..segs.len())]
        } else {
            last
        };
        let path = segment_path(dir.path(), seg);
        let mut bytes = fs::read(&path).unwrap();
        let at = rng.random_range(0..bytes.len());
        if flip {
            bytes[at] ^= rng.random_range(1..=255u8);
        } else {
            bytes.truncate(at);
        }
        fs::write(&path, &bytes).unwrap();
        let (wal, mut replay) = Wal::open(dir.path(), small(Compression::Snappy)).unwrap();
        let got: Vec<Record> = replay.by_ref().map(|r| r.unwrap()).collect();
        assert!(
            same(&got, &recs[..got.len()]),
            "round {round}: not a prefix"
        );
        match replay.corruption() {
            Some(c) => {
                assert_eq!(c.segment, seg, "round {round}");
                reported += 1;
            }
            None => assert!(
                got.len() == recs.len() || !flip,
                "round {round}: byte flip at {at} of segment {seg} lost records silently"
            ),
        }
        drop(wal);
    }
    assert!(reported > 100, "only {reported} damages reported");
}
