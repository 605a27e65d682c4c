//! Nothing rimir does not store is acknowledged, with a real sender: Prometheus 2.42 with
//! exemplar storage scrapes an OpenMetrics target whose counter carries exemplars and
//! remote-writes them (`send_exemplars: true`). rimir stores the float samples, refuses the
//! exemplars with a 400 that names them, and counts them in `rimir_discarded_exemplars_total`;
//! Prometheus sees the refusal in its own failure counter instead of believing them delivered.
//! The remote-write 2.0 and native-histogram refusals are covered request by request in the
//! distributor's unit tests.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rimir_e2e::rimir::{Rimir, get, metric_values, now_ms};
use rimir_e2e::{ChildGuard, free_port, serve_page};

#[test]
fn exemplars_from_prometheus_are_refused_by_name_and_their_samples_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let rimir = Rimir::start(
        &[
            "--target=all".into(),
            format!(
                "--blocks-storage.filesystem.dir={}",
                tmp.path().join("bucket").display()
            ),
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

    let exemplar_ts = now_ms() as f64 / 1000.0;
    let target = serve_page(
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        format!(
            "# TYPE checkout_requests counter\n\
         # HELP checkout_requests Checkout requests served.\n\
         checkout_requests_total{{path=\"/pay\"}} 17 # {{trace_id=\"4bf92f3577b34da6\"}} 1.0 {exemplar_ts:.3}\n\
         # EOF\n"
        ),
    );
    let prom_port = free_port();
    let config = format!(
        r#"global:
  scrape_interval: 1s
scrape_configs:
  - job_name: shop
    static_configs: [{{targets: ["127.0.0.1:{target}"]}}]
remote_write:
  - url: {}/api/v1/push
    send_exemplars: true
    queue_config: {{batch_send_deadline: 200ms, max_shards: 1, min_backoff: 50ms, max_backoff: 1s}}
"#,
        rimir.url
    );
    let cfg_path = tmp.path().join("prometheus.yml");
    std::fs::write(&cfg_path, &config).unwrap();
    let log_path = tmp.path().join("prometheus.log");
    let prom_log = std::fs::File::create(&log_path).unwrap();
    let _prom = ChildGuard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("prom").display()
            ))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(prom_log)
            .spawn()
            .expect("spawn prometheus (tests/run.sh installs it)"),
    );

    // Prometheus scrapes the exemplar and sends it; rimir refuses and counts it.
    let deadline = Instant::now() + Duration::from_secs(40);
    let discarded = loop {
        let (_, text) = get(&format!("{}/metrics", rimir.url));
        let n: f64 = metric_values(&text, "rimir_discarded_exemplars_total").sum();
        if n > 0.0 {
            assert!(
                text.contains(r#"rimir_discarded_exemplars_total{user="anonymous",reason="exemplars_unsupported"}"#),
                "{text}"
            );
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no exemplar refused; prometheus log:\n{}\nrimir log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default(),
            rimir.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(discarded >= 1.0);

    // The float samples of those requests were stored and can be queried.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = get(&format!(
            "{}/prometheus/api/v1/query?query=checkout_requests_total",
            rimir.url
        ));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let result = &v["data"]["result"];
        if result.as_array().is_some_and(|r| !r.is_empty()) {
            assert_eq!(result[0]["metric"]["path"], "/pay", "{v}");
            assert_eq!(result[0]["value"][1], "17", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "sample not stored: {v}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // Prometheus was told: its remote-write failure counter moved, and its log names the reason.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = get(&format!("http://127.0.0.1:{prom_port}/metrics"));
        let failed: f64 = metric_values(&text, "prometheus_remote_storage_exemplars_failed_total")
            .chain(metric_values(
                &text,
                "prometheus_remote_storage_samples_failed_total",
            ))
            .sum();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if failed > 0.0 && log.contains("exemplars in 1 series were not stored") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not see the refusal (failed={failed}); log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
