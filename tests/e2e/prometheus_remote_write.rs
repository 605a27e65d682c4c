//! A real Prometheus 2.42 scraping itself and node_exporter remote-writes to `rimir
//! --target=all`: the metric metadata it sends makes rimir's `/api/v1/metadata` answer what
//! Prometheus' own does, and after Prometheus stops scraping (writing staleness markers), has
//! sent everything and exits, and rimir flushes, the blocks rimir shipped hold exactly the series
//! and samples of Prometheus' own TSDB.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rimir_e2e::rimir::{Rimir, bucket_blocks, get, metric_values, promtool_dump};
use rimir_e2e::{ChildGuard, free_port};

#[test]
fn shipped_blocks_match_prometheus_tsdb() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let rimir = Rimir::start(
        &[
            "--target=all".into(),
            format!("--blocks-storage.filesystem.dir={}", bucket.display()),
            format!(
                "--blocks-storage.tsdb.dir={}",
                tmp.path().join("tsdb").display()
            ),
        ],
        None,
        tmp.path(),
        "rimir",
    );
    rimir.wait_ready();

    let node_port = free_port();
    let _node = ChildGuard(
        Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{node_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus-node-exporter"),
    );
    let prom_port = free_port();
    let prom_data = tmp.path().join("prom");
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1m
scrape_configs:
  - job_name: prometheus
    static_configs: [{{targets: ["127.0.0.1:{prom_port}"]}}]
  - job_name: node
    static_configs: [{{targets: ["127.0.0.1:{node_port}"]}}]
remote_write:
  - url: {}/api/v1/push
    queue_config: {{batch_send_deadline: 200ms, max_shards: 2, min_backoff: 50ms, max_backoff: 1s}}
    metadata_config: {{send: true, send_interval: 1s}}
"#,
        rimir.url
    );
    let cfg_path = tmp.path().join("prometheus.yml");
    std::fs::write(&cfg_path, &config).unwrap();
    let prom_log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let mut prom = ChildGuard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg(format!("--storage.tsdb.path={}", prom_data.display()))
            .stdout(Stdio::null())
            .stderr(prom_log)
            .spawn()
            .expect("spawn prometheus"),
    );

    // Let it scrape both targets a few times and remote-write the samples.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = get(&format!("{}/metrics", rimir.url));
        let received = metric_values(&text, "rimir_distributor_received_samples_total")
            .next()
            .unwrap_or(0.0);
        if received > 5000.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rimir received only {received} samples; prometheus log:\n{}",
            std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));

    // Metadata: once Prometheus has sent both targets' metadata, rimir answers the same map
    // (metric → its type/help/unit entries) as Prometheus' own API.
    let metadata = |base: &str, query: &str| -> (u16, serde_json::Value) {
        let (code, body) = get(&format!("{base}/api/v1/metadata{query}"));
        (
            code,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    };
    let as_sets = |v: &serde_json::Value| -> BTreeMap<String, BTreeSet<String>> {
        v["data"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, entries)| {
                        let set = entries
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|e| e.to_string())
                            .collect();
                        (k.clone(), set)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    let rimir_api = format!("{}/prometheus", rimir.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (theirs_md, ours_md) = loop {
        let theirs = as_sets(&metadata(&prom_url, "").1);
        let ours = as_sets(&metadata(&rimir_api, "").1);
        if theirs.contains_key("node_cpu_seconds_total") && theirs == ours {
            break (theirs, ours);
        }
        if Instant::now() > deadline {
            let only_theirs: Vec<_> = theirs
                .keys()
                .filter(|k| !ours.contains_key(*k))
                .take(5)
                .collect();
            let differ: Vec<_> = theirs
                .iter()
                .filter(|(k, v)| ours.get(*k).is_some_and(|o| o != *v))
                .take(3)
                .collect();
            panic!(
                "metadata differs: {} metrics in Prometheus, {} in rimir; only in Prometheus {only_theirs:?}; different {differ:?}",
                theirs.len(),
                ours.len()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(ours_md.len() > 100, "{} metrics compared", theirs_md.len());
    assert!(
        ours_md["node_cpu_seconds_total"]
            .iter()
            .any(|e| e.contains("\"type\":\"counter\"")),
        "{:?}",
        ours_md["node_cpu_seconds_total"]
    );
    for query in [
        "?metric=prometheus_http_requests_total",
        "?metric=no_such_metric",
        "?limit=0",
        "?limit=lots",
    ] {
        let (tc, theirs) = metadata(&prom_url, query);
        let (oc, ours) = metadata(&rimir_api, query);
        assert_eq!(tc, oc, "{query}: status");
        assert_eq!(as_sets(&theirs), as_sets(&ours), "{query}");
        assert_eq!(theirs["errorType"], ours["errorType"], "{query}");
        assert_eq!(theirs["error"], ours["error"], "{query}");
    }
    let (_, limited) = metadata(&rimir_api, "?limit=5");
    assert_eq!(limited["data"].as_object().unwrap().len(), 5);

    // Stop scraping by reloading a configuration without targets: Prometheus writes the
    // staleness markers of every series and remote-writes them. Then wait until its queue has
    // sent everything its WAL holds. (Stopping with SIGTERM alone races: the remote-write
    // queue stops reading the WAL before it has read the markers written on the way out, and
    // Prometheus exits without sending them, now and then.)
    let remote_write = config
        .split("remote_write:")
        .nth(1)
        .expect("remote_write section");
    std::fs::write(
        &cfg_path,
        format!("global:\n  scrape_interval: 1s\nscrape_configs: []\nremote_write:{remote_write}"),
    )
    .unwrap();
    let pid = prom.0.id().to_string();
    rimir_e2e::run_ok(Command::new("kill").args(["-HUP", &pid]));
    let gauge = |text: &str, name: &str| -> f64 { metric_values(text, name).fold(0.0, f64::max) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut caught_up = 0;
    while caught_up < 3 {
        std::thread::sleep(Duration::from_millis(500));
        let (_, text) = get(&format!("{prom_url}/metrics"));
        let written = gauge(
            &text,
            "prometheus_remote_storage_highest_timestamp_in_seconds",
        );
        let sent = gauge(
            &text,
            "prometheus_remote_storage_queue_highest_sent_timestamp_seconds",
        );
        let pending = gauge(&text, "prometheus_remote_storage_samples_pending");
        let scraping = text
            .lines()
            .any(|l| l.starts_with("prometheus_target_scrape_pool_targets") && !l.ends_with(" 0"));
        caught_up = if written > 0.0 && sent >= written && pending == 0.0 && !scraping {
            caught_up + 1
        } else {
            0
        };
        assert!(
            Instant::now() < deadline,
            "prometheus did not send everything: written {written}, sent {sent}, pending {pending}, scraping {scraping}"
        );
    }

    // SIGTERM: nothing is left to send; Prometheus exits.
    rimir_e2e::run_ok(Command::new("kill").args(["-TERM", &pid]));
    let status = prom.0.wait().unwrap();
    assert!(status.success(), "prometheus exited with {status}");

    rimir.flush();
    let blocks = bucket_blocks(&bucket, "anonymous");
    assert!(
        !blocks.is_empty(),
        "no block shipped; log:\n{}",
        rimir.log_text()
    );

    let ours = promtool_dump(&bucket.join("anonymous"));
    let theirs = promtool_dump(&prom_data);
    let missing: Vec<&String> = theirs
        .iter()
        .filter(|l| ours.binary_search(l).is_err())
        .collect();
    let extra: Vec<&String> = ours
        .iter()
        .filter(|l| theirs.binary_search(l).is_err())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} samples only in Prometheus (e.g. {:?}), {} only in rimir (e.g. {:?}) of {}",
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(3).collect::<Vec<_>>(),
        theirs.len()
    );
    assert!(
        theirs.len() > 5000,
        "only {} samples compared",
        theirs.len()
    );
    let series: std::collections::BTreeSet<&str> = ours
        .iter()
        .filter_map(|l| l.rsplitn(3, ' ').nth(2))
        .collect();
    assert!(
        series.iter().any(|s| s.contains("node_cpu_seconds_total")),
        "node_exporter series shipped"
    );
    assert!(
        series.iter().any(|s| s.contains("job=\"prometheus\"")),
        "Prometheus' own series shipped"
    );
}
