//! HA deduplication with real senders: two Prometheus 2.42 replicas scrape the same target and
//! remote-write through two different distributors (external labels `cluster: prom` and
//! `__replica__: replica-a|b`) to one ingester. rimir stores one replica's series — as many as
//! one replica scraped, without the replica label — while the other distributor answers 202.
//! When the elected replica is killed, the other takes over after the failover timeout and
//! its samples are stored.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rimir_e2e::rimir::{Rimir, get, metric_values};
use rimir_e2e::{ChildGuard, free_port, serve_page};

const SERIES: usize = 40;

const HA_FLAGS: [&str; 5] = [
    "--distributor.ha-tracker.enable=true",
    "--distributor.ha-tracker.enable-for-all-users=true",
    "--distributor.ha-tracker.update-timeout=1s",
    "--distributor.ha-tracker.update-timeout-jitter-max=0s",
    "--distributor.ha-tracker.failover-timeout=4s",
];

/// The `data.result` of an instant query, or an empty list while the query fails.
fn query(base: &str, promql: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "{base}/api/v1/query?query={}",
        promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let (code, body) = get(&url);
    if code != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The single value of an instant query's only series.
fn scalar(base: &str, promql: &str) -> Option<f64> {
    let r = query(base, promql);
    r.first()?["value"][1].as_str()?.parse().ok()
}

fn prometheus(dir: &std::path::Path, replica: &str, target: u16, push_to: &str) -> ChildGuard {
    let port = free_port();
    let cfg = format!(
        r#"global:
  scrape_interval: 1s
  external_labels: {{cluster: prom, __replica__: {replica}}}
scrape_configs:
  - job_name: app
    static_configs: [{{targets: ["127.0.0.1:{target}"]}}]
remote_write:
  - url: {push_to}/api/v1/push
    queue_config: {{batch_send_deadline: 200ms, max_shards: 1, min_backoff: 50ms, max_backoff: 1s}}
"#
    );
    let cfg_path = dir.join(format!("{replica}.yml"));
    std::fs::write(&cfg_path, cfg).unwrap();
    let log = std::fs::File::create(dir.join(format!("{replica}.log"))).unwrap();
    ChildGuard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join(format!("{replica}-data")).display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus (tests/run.sh installs it)"),
    )
}

fn deduped(d: &Rimir) -> f64 {
    let (_, text) = get(&format!("{}/metrics", d.url));
    metric_values(&text, "rimir_distributor_deduped_samples_total").sum()
}

fn wait_for(what: &str, secs: u64, logs: &dyn Fn() -> String, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn two_prometheus_replicas_are_stored_once_and_the_other_takes_over_when_one_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = |extra: &[String]| -> Vec<String> {
        HA_FLAGS
            .iter()
            .map(|f| f.to_string())
            .chain(extra.iter().cloned())
            .collect()
    };
    // The ingester and querier (`all`: it holds the elections), and two distributors.
    let store = Rimir::start(
        &flags(&[
            "--target=all".into(),
            "--ingester.ring.instance-id=ingester-0".into(),
            format!(
                "--blocks-storage.filesystem.dir={}",
                tmp.path().join("bucket").display()
            ),
            format!(
                "--blocks-storage.tsdb.dir={}",
                tmp.path().join("tsdb").display()
            ),
        ]),
        None,
        tmp.path(),
        "store",
    );
    let ring = format!(
        "--ingester.ring.instances=ingester-0=127.0.0.1:{}",
        store.grpc_port
    );
    let distributors: Vec<Rimir> = ["distributor-a", "distributor-b"]
        .iter()
        .map(|name| {
            Rimir::start(
                &flags(&["--target=distributor".into(), ring.clone()]),
                None,
                tmp.path(),
                name,
            )
        })
        .collect();
    store.wait_ready();
    for d in &distributors {
        d.wait_ready();
    }
    let page: String = (0..SERIES)
        .map(|i| format!("ha_test_value{{i=\"{i}\"}} {i}\n"))
        .collect();
    let target = serve_page("text/plain; version=0.0.4", page);
    let mut replicas = vec![
        Some(prometheus(
            tmp.path(),
            "replica-a",
            target,
            &distributors[0].url,
        )),
        Some(prometheus(
            tmp.path(),
            "replica-b",
            target,
            &distributors[1].url,
        )),
    ];
    let api = format!("{}/prometheus", store.url);
    let logs = || {
        let mut out = String::new();
        for name in ["replica-a", "replica-b"] {
            out += &format!(
                "--- {name}:\n{}\n",
                std::fs::read_to_string(tmp.path().join(format!("{name}.log"))).unwrap_or_default()
            );
        }
        for d in &distributors {
            out += &format!("--- distributor:\n{}\n", d.log_text());
        }
        out + &format!("--- store:\n{}", store.log_text())
    };

    // Both replicas push; one is stored, the other's distributor answers 202 and counts it.
    wait_for("both replicas to push, one deduplicated", 60, &logs, || {
        scalar(&api, "count(ha_test_value)") == Some(SERIES as f64)
            && distributors.iter().any(|d| deduped(d) > 0.0)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        scalar(&api, "count(ha_test_value)"),
        Some(SERIES as f64),
        "as many series as one replica scraped"
    );
    assert!(
        query(&api, r#"{__replica__=~".+"}"#).is_empty(),
        "the replica label is not stored"
    );
    assert_eq!(
        scalar(&api, r#"count(ha_test_value{cluster="prom"})"#),
        Some(SERIES as f64)
    );
    let (elected, other) = match (deduped(&distributors[0]), deduped(&distributors[1])) {
        (a, b) if a == 0.0 && b > 0.0 => (0, 1),
        (a, b) if b == 0.0 && a > 0.0 => (1, 0),
        (a, b) => panic!(
            "exactly one distributor deduplicates: a={a} b={b}\n{}",
            logs()
        ),
    };

    // The elected replica dies; after the failover timeout the other one's samples are stored.
    replicas[elected] = None;
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    wait_for("the other replica to take over", 40, &logs, || {
        scalar(&api, "max(timestamp(ha_test_value))").is_some_and(|t| t > killed + 1.0)
    });
    let (_, text) = get(&format!("{}/metrics", store.url));
    assert_eq!(
        metric_values(&text, "rimir_ha_tracker_elected_replica_changes_total").sum::<f64>(),
        1.0,
        "{text}"
    );
    let before = deduped(&distributors[other]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        deduped(&distributors[other]),
        before,
        "the new elected replica is no longer deduplicated"
    );
    assert_eq!(scalar(&api, "count(ha_test_value)"), Some(SERIES as f64));
    drop(replicas);
}
