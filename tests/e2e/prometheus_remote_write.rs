//! A real Prometheus 2.42 scraping itself and node_exporter remote-writes to `rimir
//! --target=all`; after Prometheus stops (flushing its queue) and rimir flushes, the blocks
//! rimir shipped hold exactly the series and samples of Prometheus' own TSDB.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rimir_e2e::rimir::{Rimir, bucket_blocks, get, promtool_dump};
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
    metadata_config: {{send: false}}
"#,
        rimir.url
    );
    let cfg_path = tmp.path().join("prometheus.yml");
    std::fs::write(&cfg_path, config).unwrap();
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
        let received = text
            .lines()
            .find(|l| l.starts_with("rimir_distributor_received_samples_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
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

    // SIGTERM: Prometheus writes stale markers, flushes its remote-write queue and exits.
    let pid = prom.0.id().to_string();
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
