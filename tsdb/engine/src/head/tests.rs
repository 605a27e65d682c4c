use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::labels::MatchType;

fn l(name: &str, job: &str) -> Labels {
    Labels::from_pairs([("__name__", name), ("job", job)])
}

fn open(dir: &Path) -> (Head, ReplayReport) {
    Head::open(dir, HeadOptions::default()).unwrap()
}

#[test]
fn appended_samples_are_selected_by_matchers_sorted_by_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = open(dir.path());
    let s = head
        .append(&[
            (l("up", "b"), vec![(10, 1.0), (20, 2.0)]),
            (l("up", "a"), vec![(10, 3.0)]),
            (l("down", "a"), vec![(15, 4.0)]),
        ])
        .unwrap();
    assert_eq!((s.samples_appended, s.series_created), (4, 3));
    let got = head.select(&[Matcher::equal("__name__", "up")], 0, 100);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].labels, l("up", "a"));
    assert_eq!(got[1].samples, vec![(10, 1.0), (20, 2.0)]);
    let re = Matcher::new(MatchType::Regex, "job", "a").unwrap();
    let ne = Matcher::new(MatchType::NotEqual, "__name__", "up").unwrap();
    let got = head.select(&[re, ne], 0, 100);
    assert_eq!(
        got.iter().map(|s| s.labels.clone()).collect::<Vec<_>>(),
        vec![l("down", "a")]
    );
    // Both ends inclusive; series without samples in range are left out.
    assert_eq!(
        head.select(&[Matcher::equal("job", "b")], 20, 20)[0].samples,
        vec![(20, 2.0)]
    );
    assert!(
        head.select(&[Matcher::equal("job", "a")], 16, 100)
            .is_empty()
    );
    assert_eq!(head.label_names(), vec!["__name__", "job"]);
    assert_eq!(head.label_values("job"), vec!["a", "b"]);
    assert_eq!((head.min_time(), head.max_time()), (Some(10), Some(20)));
    assert_eq!((head.num_series(), head.num_samples()), (3, 4));
}

#[test]
fn out_of_order_sample_is_rejected_naming_series_and_timestamps_rest_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = open(dir.path());
    head.append(&[(l("up", "a"), vec![(100, 1.0)])]).unwrap();
    let s = head
        .append(&[
            (
                l("up", "a"),
                vec![(50, 9.0), (100, 1.0), (100, 2.0), (200, 3.0)],
            ),
            (l("up", "b"), vec![(10, 1.0)]),
        ])
        .unwrap();
    assert_eq!(s.samples_appended, 2);
    assert_eq!(s.samples_duplicate, 1);
    assert_eq!(s.rejected.len(), 1);
    let r = &s.rejected[0];
    assert_eq!(r.index, 0);
    assert_eq!(
        r.counts,
        vec![
            (RejectReason::SampleOutOfOrder, 1),
            (RejectReason::DuplicateTimestamp, 1)
        ]
    );
    assert!(
        r.message.contains("err-mimir-sample-out-of-order"),
        "{}",
        r.message
    );
    assert!(r.message.contains("timestamp 50"), "{}", r.message);
    assert!(
        r.message.contains("latest timestamp is 100"),
        "{}",
        r.message
    );
    assert!(
        r.message.contains(r#"{__name__="up", job="a"}"#),
        "{}",
        r.message
    );
    let got = head.select(&[Matcher::equal("job", "a")], 0, 1000);
    assert_eq!(got[0].samples, vec![(100, 1.0), (200, 3.0)]);
}

#[test]
fn samples_inside_the_out_of_order_window_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let opts = HeadOptions {
        out_of_order_window_ms: 100,
        ..Default::default()
    };
    let (head, _) = Head::open(dir.path(), opts.clone()).unwrap();
    head.append(&[(l("up", "a"), vec![(1000, 1.0), (1010, 2.0)])])
        .unwrap();
    let s = head
        .append(&[(
            l("up", "a"),
            vec![(950, 0.5), (915, 0.4), (800, 0.1), (1000, 7.0), (950, 0.5)],
        )])
        .unwrap();
    assert_eq!(s.samples_appended, 2);
    assert_eq!(s.samples_duplicate, 1);
    assert_eq!(
        s.rejected[0].counts,
        vec![
            (RejectReason::SampleOutOfOrder, 1),
            (RejectReason::DuplicateTimestamp, 1)
        ]
    );
    let want = vec![(915, 0.4), (950, 0.5), (1000, 1.0), (1010, 2.0)];
    assert_eq!(
        head.select(&[Matcher::equal("job", "a")], 0, 2000)[0].samples,
        want
    );
    drop(head);
    let (head, report) = Head::open(dir.path(), opts).unwrap();
    assert_eq!(report.samples, 4);
    assert_eq!(
        head.select(&[Matcher::equal("job", "a")], 0, 2000)[0].samples,
        want
    );
}

#[test]
fn reopening_replays_every_acknowledged_sample() {
    let dir = tempfile::tempdir().unwrap();
    let want;
    {
        let (head, report) = open(dir.path());
        assert_eq!(report.samples, 0);
        for round in 0..50i64 {
            let batch: Vec<(Labels, Vec<Sample>)> = (0..20)
                .map(|i| {
                    (
                        l("m", &format!("j{i}")),
                        vec![(round * 15_000, (round * i) as f64)],
                    )
                })
                .collect();
            head.append(&batch).unwrap();
        }
        want = head.select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX);
        assert_eq!(want.len(), 20);
    }
    let (head, report) = open(dir.path());
    assert_eq!((report.series, report.samples), (20, 1000));
    assert!(report.corruption.is_none());
    assert_eq!(
        head.select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX),
        want
    );
    // References continue after the replayed ones: a new series does not collide.
    head.append(&[(l("new", "x"), vec![(1, 1.0)])]).unwrap();
    drop(head);
    let (head, _) = open(dir.path());
    assert_eq!(head.num_series(), 21);
}

#[test]
fn truncation_drops_old_data_checkpoints_and_rejects_older_samples() {
    let dir = tempfile::tempdir().unwrap();
    let h2 = DEFAULT_CHUNK_RANGE_MS;
    let (head, _) = open(dir.path());
    // "old" only has samples in the first 2h; "live" spans both ranges.
    for i in 0..480i64 {
        let t = i * 30_000;
        let mut batch = vec![(l("live", "a"), vec![(t, i as f64)])];
        if t < h2 {
            batch.push((l("old", "a"), vec![(t, 1.0)]));
        }
        head.append(&batch).unwrap();
    }
    let block = head.series_for_block(0, h2);
    assert_eq!(block.len(), 2);
    assert!(
        block
            .iter()
            .all(|(_, s)| s.len() == 240 && s.last().unwrap().0 < h2)
    );
    head.truncate_before(h2).unwrap();
    assert_eq!(head.num_series(), 1);
    assert_eq!(head.num_samples(), 240);
    assert_eq!(head.min_time(), Some(h2));
    assert_eq!(head.label_values("__name__"), vec!["live"]);
    let s = head
        .append(&[(l("late", "a"), vec![(h2 - 1, 1.0), (h2 + 5, 1.0)])])
        .unwrap();
    assert_eq!(
        s.rejected[0].counts,
        vec![(RejectReason::SampleOutOfBounds, 1)]
    );
    assert!(
        dir.path()
            .join("wal")
            .join(format!("checkpoint.{:08}", 0))
            .exists()
    );
    drop(head);
    let (head, report) = open(dir.path());
    assert!(report.checkpoint.is_some());
    assert_eq!(head.num_series(), 2);
    assert_eq!(head.num_samples(), 241);
    assert_eq!(head.series_for_block(0, h2).len(), 0);
    // The bound is not persisted; the owner restores it from its newest block.
    head.set_min_valid_time(h2);
    let s = head
        .append(&[(l("late", "b"), vec![(h2 - 1, 1.0)])])
        .unwrap();
    assert_eq!(
        s.rejected[0].counts,
        vec![(RejectReason::SampleOutOfBounds, 1)]
    );
    assert!(
        s.rejected[0]
            .message
            .contains("err-mimir-sample-timestamp-too-old")
    );
}

#[test]
fn concurrent_appenders_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = open(dir.path());
    let head = Arc::new(head);
    let threads: Vec<_> = (0..4)
        .map(|k| {
            let head = head.clone();
            std::thread::spawn(move || {
                for t in 0..100i64 {
                    let batch = vec![
                        (l("c", &format!("t{k}")), vec![(t, t as f64)]),
                        (l("shared", "x"), vec![(t * 4 + k, 1.0)]),
                    ];
                    head.append(&batch).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(head.num_series(), 5);
    drop(Arc::try_unwrap(head).unwrap());
    let (head, _) = open(dir.path());
    for k in 0..4 {
        let s = head.select(&[Matcher::equal("job", format!("t{k}"))], 0, 1000);
        assert_eq!(s[0].samples.len(), 100);
    }
}

#[test]
fn memory_per_series_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = open(dir.path());
    let n = 1000;
    for round in 0..120i64 {
        let batch: Vec<(Labels, Vec<Sample>)> = (0..n)
            .map(|i| {
                let labels = Labels::from_pairs([
                    ("__name__", "node_cpu_seconds_total".to_string()),
                    ("cpu", (i % 16).to_string()),
                    ("instance", format!("host-{}:9100", i / 16)),
                    ("job", "node".to_string()),
                    ("mode", "idle".to_string()),
                ]);
                (labels, vec![(round * 15_000, (round * 7 + i) as f64)])
            })
            .collect();
        head.append(&batch).unwrap();
    }
    let m = head.memory_usage();
    let per_series = m.total() / head.num_series();
    // 120 samples of these values take about 230 bytes of chunk; the series itself, its index
    // entries and its share of the label strings about 200 more.
    assert!(
        per_series > 300 && per_series < 600,
        "{per_series} bytes per series: {m:?}"
    );
    assert!(m.symbols < 40 * 1000, "label strings are shared: {m:?}");
    assert!(
        m.postings < 30 * 1000,
        "a few bytes per series and label: {m:?}"
    );
}

#[test]
fn series_with_colliding_label_hashes_stay_apart() {
    let mut d = HeadData::default();
    let (a, b, c) = (l("a", "x"), l("b", "x"), l("c", "x"));
    let ins = |d: &mut HeadData, r: u64, x: &Labels| {
        let mut packed = Vec::new();
        labelkey::pack(&x.refs(), &mut packed);
        d.insert_series_packed(r, x, &packed, 7)
    };
    assert!(ins(&mut d, 1, &a));
    assert!(ins(&mut d, 2, &b));
    assert!(ins(&mut d, 3, &c));
    assert!(!ins(&mut d, 4, &b), "same labels: alias");
    assert_eq!(d.aliases.get(&4), Some(&2));
    let find = |d: &HeadData, x: &Labels| {
        let mut packed = Vec::new();
        labelkey::pack(&x.refs(), &mut packed);
        d.lookup(&packed, 7).map(|(r, _)| r)
    };
    assert_eq!(
        (find(&d, &a), find(&d, &b), find(&d, &c)),
        (Some(1), Some(2), Some(3))
    );
    d.remove_series_hashed(1, 7);
    assert_eq!(
        (find(&d, &a), find(&d, &b), find(&d, &c)),
        (None, Some(2), Some(3))
    );
    d.remove_series_hashed(2, 7);
    d.remove_series_hashed(3, 7);
    assert!(d.by_hash.is_empty() && d.by_ref.is_empty());
    assert_eq!(d.series.len(), 0);
    assert_eq!(
        d.symbols.len(),
        0,
        "every label string released with its series"
    );
    // The freed slots are reused, and the reference map points at them.
    assert!(ins(&mut d, 5, &c));
    assert_eq!(find(&d, &c), Some(5));
    assert!(d.get(5).is_some() && d.get(3).is_none());
}

#[test]
fn truncation_concurrent_with_appends_keeps_every_recent_sample() {
    let dir = tempfile::tempdir().unwrap();
    let opts = HeadOptions {
        wal: WalOptions {
            segment_size: 2 * crate::wal::PAGE_SIZE,
            ..Default::default()
        },
        ..Default::default()
    };
    let (head, _) = Head::open(dir.path(), opts.clone()).unwrap();
    let head = Arc::new(head);
    let writer = {
        let head = head.clone();
        std::thread::spawn(move || {
            for t in 1..=600i64 {
                let batch: Vec<_> = (0..10)
                    .map(|i| {
                        (
                            l("conc", &format!("s{i}")),
                            vec![(t * 1000, (t + i) as f64)],
                        )
                    })
                    .collect();
                head.append(&batch).unwrap();
            }
        })
    };
    let mut cut = 0;
    while !writer.is_finished() {
        let max = head.max_time().unwrap_or(0);
        cut = cut.max(max - 50_000);
        head.truncate_before(cut).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.join().unwrap();
    drop(Arc::try_unwrap(head).unwrap());
    let (head, report) = Head::open(dir.path(), opts).unwrap();
    assert!(report.checkpoint.is_some(), "no checkpoint was written");
    for i in 0..10i64 {
        let s = head.select(&[Matcher::equal("job", format!("s{i}"))], cut, i64::MAX);
        let want: Vec<Sample> = (1..=600i64)
            .filter(|t| t * 1000 >= cut)
            .map(|t| (t * 1000, (t + i) as f64))
            .collect();
        assert_eq!(s[0].samples, want, "series s{i} after cut {cut}");
    }
}

#[test]
fn series_limit_refuses_only_series_the_head_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = open(dir.path());
    let (a, b, c) = (l("up", "a"), l("up", "b"), l("up", "c"));
    let (ra, rb, rc) = (a.refs(), b.refs(), c.refs());
    // A series twice in one batch is one series.
    let s = head
        .append_refs(
            &[
                (&ra, &[(1, 1.0)]),
                (&ra, &[(2, 2.0)]),
                (&rb, &[(1, 1.0)]),
                (&rc, &[(1, 1.0)]),
            ],
            2,
        )
        .unwrap();
    assert_eq!(s.series_limited, vec![3]);
    assert_eq!((s.samples_appended, s.series_created), (3, 2));
    let s = head
        .append_refs(&[(&rc, &[(2, 1.0)]), (&rb, &[(2, 1.0)])], 2)
        .unwrap();
    assert_eq!((s.series_limited, s.samples_appended), (vec![0], 1));
    // Without a limit the same series is taken, and survives a restart.
    head.append_refs(&[(&rc, &[(3, 3.0)])], 0).unwrap();
    drop(head);
    let (head, _) = open(dir.path());
    assert_eq!(head.num_series(), 3);
    let got = head.select(&[Matcher::equal("job", "c")], 0, 10);
    assert_eq!(got[0].samples, vec![(3, 3.0)]);
}

#[test]
fn series_churn_reuses_slots_and_strings_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let h2 = DEFAULT_CHUNK_RANGE_MS;
    let (head, _) = open(dir.path());
    let pod_series = |generation: i64, i: i64| {
        Labels::from_pairs([
            ("__name__", "container_cpu_usage_seconds_total".to_string()),
            ("job", "kubelet".to_string()),
            ("pod", format!("web-{generation}-{i}")),
        ])
    };
    let mut memory_after_first_churn = 0;
    // Each generation of pods lives in its own 2h range; truncating drops the previous one.
    for generation in 0..6i64 {
        let t0 = generation * h2;
        let batch: Vec<(Labels, Vec<Sample>)> = (0..600)
            .map(|i| (pod_series(generation, i), vec![(t0 + 1000, i as f64)]))
            .collect();
        let s = head.append(&batch).unwrap();
        assert_eq!(s.series_created, 600);
        if generation > 0 {
            head.truncate_before(t0).unwrap();
        }
        assert_eq!(head.num_series(), 600, "generation {generation}");
        if generation == 1 {
            memory_after_first_churn = head.memory_bytes();
            // Dropped series gave back their slots and their pod names.
            let data = read(&head.data);
            assert_eq!(data.symbols.find("web-0-1"), None);
            assert!(data.symbols.find("web-1-1").is_some());
        }
    }
    // Churn does not accumulate memory.
    let after = head.memory_bytes();
    assert!(
        after <= memory_after_first_churn * 5 / 4,
        "{after} bytes, {memory_after_first_churn} after the first churn"
    );
    let data = read(&head.data);
    // At most 1200 series lived at once (a generation and the next, before truncation): three
    // pages of 512 slots. Without reuse, 3600 series would have taken eight.
    assert!(
        data.series.memory_bytes() <= 3 * 512 * 128,
        "slab pages reused"
    );
    assert!(
        data.symbols.len() < 620,
        "{} strings held",
        data.symbols.len()
    );
    drop(data);
    // Reused slots hold the right series: every label and sample reads back.
    let got = head.select(&[Matcher::equal("job", "kubelet")], 0, i64::MAX);
    assert_eq!(got.len(), 600);
    for s in &got {
        let pod = s.labels.get("pod").unwrap();
        let i: i64 = pod.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(pod, format!("web-5-{i}"));
        assert_eq!(s.samples, vec![(5 * h2 + 1000, i as f64)]);
    }
    let one = head.select(&[Matcher::equal("pod", "web-5-7")], 0, i64::MAX);
    assert_eq!(one.len(), 1);
    assert_eq!(
        head.select(&[Matcher::equal("pod", "web-4-7")], 0, i64::MAX)
            .len(),
        0
    );
    drop(head);
    let (head, report) = open(dir.path());
    assert_eq!(report.series, 600);
    assert_eq!(
        head.select(&[Matcher::equal("job", "kubelet")], 0, i64::MAX),
        got
    );
}

/// Random appends, truncations and reopenings checked against a plain model after every step:
/// every series and sample reads back, single-label selections match, and the symbol table
/// holds exactly the strings of the live series (use counts neither leak nor drop early).
#[test]
fn random_appends_truncations_and_restarts_match_a_model() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeMap, BTreeSet};

    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0x005e_ed1a_be15);
    // Truncation drops whole chunks, and chunks never cross a range boundary; truncating at
    // boundaries of a 5 s range (as the ingester does at 2h block boundaries) is exact.
    const RANGE: i64 = 5000;
    let opts = HeadOptions {
        chunk_range_ms: RANGE,
        ..Default::default()
    };
    let reopen = || Head::open(dir.path(), opts.clone()).unwrap().0;
    let mut head = reopen();
    let mut model: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    let mut t = 0i64;
    let mut truncated_to = i64::MIN;
    let series_of = |rng: &mut StdRng| -> Labels {
        let mut pairs = vec![
            (
                "__name__".to_string(),
                format!("m{}", rng.random_range(0..4)),
            ),
            ("job".to_string(), format!("j{}", rng.random_range(0..3))),
        ];
        if rng.random_bool(0.7) {
            pairs.push((
                "pod".to_string(),
                format!("pod-{}", rng.random_range(0..40)),
            ));
        }
        if rng.random_bool(0.1) {
            // Long enough to need the heap form of a label key.
            for i in 0..12 {
                pairs.push((
                    format!("extra{i:02}"),
                    format!("v{}", rng.random_range(0..3)),
                ));
            }
        }
        Labels::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    };
    for step in 0..300 {
        match rng.random_range(0..10) {
            0 if t > 0 => {
                let cut = (t / RANGE - rng.random_range(0..4)) * RANGE;
                if cut > truncated_to {
                    head.truncate_before(cut).unwrap();
                    truncated_to = cut;
                    for s in model.values_mut() {
                        s.retain(|x| x.0 >= cut);
                    }
                    model.retain(|_, s| !s.is_empty());
                }
            }
            1 => {
                drop(head);
                head = reopen();
                head.set_min_valid_time(truncated_to);
            }
            _ => {
                t += 1000;
                let mut batch: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
                for _ in 0..rng.random_range(1..30) {
                    batch.insert(series_of(&mut rng), vec![(t, step as f64)]);
                }
                let batch: Vec<(Labels, Vec<Sample>)> = batch.into_iter().collect();
                let s = head.append(&batch).unwrap();
                assert_eq!(s.samples_appended as usize, batch.len(), "step {step}");
                for (l, samples) in batch {
                    model.entry(l).or_default().extend(samples);
                }
            }
        }
        let got = head.select(&[], 0, i64::MAX);
        let want: Vec<(Labels, Vec<Sample>)> =
            model.iter().map(|(l, s)| (l.clone(), s.clone())).collect();
        let got_pairs: Vec<(Labels, Vec<Sample>)> =
            got.into_iter().map(|s| (s.labels, s.samples)).collect();
        assert_eq!(got_pairs, want, "step {step}");
        assert_eq!(head.num_series(), model.len(), "step {step}");
        let pod = format!("pod-{}", step % 40);
        let by_pod = head.select(&[Matcher::equal("pod", &pod)], 0, i64::MAX);
        assert_eq!(
            by_pod.len(),
            model
                .keys()
                .filter(|l| l.get("pod") == Some(pod.as_str()))
                .count(),
            "step {step}"
        );
        let strings: BTreeSet<&str> = model
            .keys()
            .flat_map(|l| l.iter().flat_map(|x| [x.name.as_str(), x.value.as_str()]))
            .collect();
        assert_eq!(read(&head.data).symbols.len(), strings.len(), "step {step}");
    }
}
