//! Runtime overrides with the real binary: a tenant's limits come from Mimir's runtime-config
//! file and change while the process runs; a bad file keeps the last good limits in force and
//! says so in the log and in `rimir_runtime_config_last_reload_successful`.

use std::time::{Duration, Instant};

use rimir_e2e::rimir::{Rimir, get, metric_values, now_ms, snappy, write_request};

/// A push of one series with `__name__` and two more labels (three in all).
fn push_three_labels(rimir: &Rimir, value: f64) -> (u16, String) {
    let body = snappy(&write_request(&[(
        vec![
            ("__name__", "orders_total".to_string()),
            ("shop", "north".to_string()),
            ("till", "7".to_string()),
        ],
        vec![(now_ms(), value)],
    )]));
    rimir.push(None, &body)
}

/// Waits until `f` holds, failing with `what` and the log after 15 s.
fn eventually(rimir: &Rimir, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} never happened; rimir log:\n{}",
            rimir.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn last_reload_successful(rimir: &Rimir) -> Option<f64> {
    let (_, text) = get(&format!("{}/metrics", rimir.url));
    metric_values(&text, "rimir_runtime_config_last_reload_successful").next()
}

#[test]
fn limits_change_without_restart_and_a_bad_file_keeps_the_last_good_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tmp.path().join("runtime.yaml");
    std::fs::write(
        &runtime,
        "overrides:\n  anonymous:\n    max_label_names_per_series: 2\n",
    )
    .unwrap();
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
            format!("--runtime-config.file={}", runtime.display()),
            "--runtime-config.reload-period=200ms".into(),
        ],
        None,
        tmp.path(),
        "rimir",
    );
    rimir.wait_ready();
    let pid = rimir.pid();

    // The file's limit is in force from the start.
    let (code, msg) = push_three_labels(&rimir, 1.0);
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("limits.max_label_names_per_series"), "{msg}");
    assert_eq!(last_reload_successful(&rimir), Some(1.0));

    // Raised in the file: the same push is accepted, by the same process.
    std::fs::write(
        &runtime,
        "overrides:\n  anonymous:\n    max_label_names_per_series: 10\n",
    )
    .unwrap();
    eventually(&rimir, "the raised limit applying", || {
        push_three_labels(&rimir, 2.0).0 == 200
    });
    assert_eq!(rimir.pid(), pid, "rimir restarted");

    // A file with a misspelt limit is refused; the raised limit stays in force.
    std::fs::write(
        &runtime,
        "overrides:\n  anonymous:\n    max_label_names_per_serie: 2\n",
    )
    .unwrap();
    eventually(&rimir, "the bad file being reported", || {
        last_reload_successful(&rimir) == Some(0.0)
    });
    let log = rimir.log_text();
    assert!(
        log.contains("runtime config not applied") && log.contains("max_label_names_per_serie"),
        "{log}"
    );
    let (code, msg) = push_three_labels(&rimir, 3.0);
    assert_eq!(code, 200, "the last good limits were dropped: {msg}");

    // What was accepted was stored.
    let (code, body) = get(&format!(
        "{}/prometheus/api/v1/query?query=orders_total",
        rimir.url
    ));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], "3", "{v}");
    assert_eq!(rimir.pid(), pid, "rimir restarted");
}
