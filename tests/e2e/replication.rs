//! A distributor and three ingesters as separate processes with replication factor 3: an
//! ingester SIGKILLed during load loses no acknowledged sample (after its restart and a flush,
//! the shipped blocks hold every sample a push was answered 200 for), and with two ingesters
//! down pushes fail with 5xx instead of being acknowledged.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rimir_e2e::free_port;
use rimir_e2e::rimir::{Rimir, now_ms, promtool_dump, snappy, write_request};

const SERIES: usize = 20;

#[test]
fn one_ingester_killed_loses_no_acknowledged_sample_and_two_down_fail_with_5xx() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut ingesters: Vec<Rimir> = (0..3)
        .map(|i| {
            Rimir::start(
                &[
                    "--target=ingester".into(),
                    format!("--ingester.ring.instance-id=ingester-{i}"),
                    format!("--blocks-storage.filesystem.dir={}", bucket.display()),
                    format!(
                        "--blocks-storage.tsdb.dir={}",
                        tmp.path().join(format!("ingester-{i}")).display()
                    ),
                ],
                Some(ports[i]),
                tmp.path(),
                &format!("ingester-{i}"),
            )
        })
        .collect();
    let ring: Vec<String> = (0..3)
        .map(|i| format!("ingester-{i}=127.0.0.1:{}", ports[i]))
        .collect();
    let distributor = Rimir::start(
        &[
            "--target=distributor".into(),
            format!("--ingester.ring.instances={}", ring.join(",")),
            "--ingester.ring.replication-factor=3".into(),
            "--distributor.ingestion-rate-limit=100000000".into(),
            "--distributor.ingestion-burst-size=100000000".into(),
        ],
        None,
        tmp.path(),
        "distributor",
    );
    for i in &ingesters {
        i.wait_ready();
    }
    distributor.wait_ready();

    // Load: each push carries one new sample for every series; remember the acknowledged ones.
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let failed = Arc::new(Mutex::new(Vec::<(u16, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = now_ms() - 60_000;
    let loader = {
        let (acked, failed, stop) = (acked.clone(), failed.clone(), stop.clone());
        let url = distributor.url.clone();
        std::thread::spawn(move || {
            let d = Rimir::attach(&url);
            let mut k = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let t = t0 + k;
                let series: Vec<_> = (0..SERIES)
                    .map(|s| {
                        (
                            vec![("__name__", "load".to_string()), ("s", s.to_string())],
                            vec![(t, k as f64)],
                        )
                    })
                    .collect();
                let (code, msg) = d.push(None, &snappy(&write_request(&series)));
                if code == 200 {
                    acked.lock().unwrap().push(t);
                } else {
                    failed.lock().unwrap().push((code, msg));
                }
                k += 1;
            }
        })
    };
    let wait_acked = |n: usize| {
        while acked.lock().unwrap().len() < n {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_acked(50);
    ingesters[1].kill();
    let at_kill = acked.lock().unwrap().len();
    wait_acked(at_kill + 50);
    ingesters[1].restart();
    ingesters[1].wait_ready();
    let at_restart = acked.lock().unwrap().len();
    wait_acked(at_restart + 50);
    stop.store(true, Ordering::SeqCst);
    loader.join().unwrap();
    let failures = failed.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "with one ingester down, pushes must still succeed: {:?}",
        &failures[..failures.len().min(3)]
    );

    for i in &ingesters {
        i.flush();
    }
    let dump = promtool_dump(&bucket.join("anonymous"));
    let stored: BTreeSet<(String, i64)> = dump
        .iter()
        .filter_map(|l| {
            let mut parts = l.rsplitn(3, ' ');
            let t: i64 = parts.next()?.parse().ok()?;
            let _v = parts.next()?;
            Some((parts.next()?.to_string(), t))
        })
        .collect();
    let acked = acked.lock().unwrap().clone();
    let mut missing = 0;
    for &t in &acked {
        for s in 0..SERIES {
            let key = (format!("{{__name__=\"load\", s=\"{s}\"}}"), t);
            if !stored.contains(&key) {
                missing += 1;
            }
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} acknowledged samples missing out of {}",
        acked.len() * SERIES
    );

    // Two of three down: no quorum, the push must fail with a 5xx.
    ingesters[0].kill();
    ingesters[2].kill();
    let t = now_ms();
    let (code, msg) = distributor.push(
        None,
        &snappy(&write_request(&[(
            vec![("__name__", "load".to_string()), ("s", "0".to_string())],
            vec![(t, 1.0)],
        )])),
    );
    assert!((500..600).contains(&code), "{code} {msg}");
    assert!(msg.contains("quorum not reached"), "{msg}");
}
