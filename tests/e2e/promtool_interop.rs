//! Interop of rimir's blocks with the real Prometheus 2.42 tools: promtool reads what rimir
//! writes, rimir reads what promtool writes with identical `dump` output, and a stock Prometheus
//! serves queries over rimir-written blocks.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rimir::cli::format_go_g;
use rimir_e2e::{ChildGuard, free_port, run_ok, workspace_bin};
use rimir_tsdb::block::{BlockOptions, write_block};
use rimir_tsdb::labels::Labels;

/// Start of the generated data: a 2h boundary, so 5h of data spans three blocks.
const T0: i64 = 1_699_999_200_000;
const STEP: i64 = 15_000;
const POINTS: i64 = 5 * 240;

type Data = Vec<(Labels, Vec<(i64, f64)>)>;

/// Counters with resets, gauges with fractional, negative, huge and special values.
fn data() -> Data {
    let mut out = Vec::new();
    for job in ["api", "db"] {
        for inst in 0..6 {
            let l = |name: &str| {
                Labels::from_pairs([
                    ("__name__", name.to_string()),
                    ("job", job.to_string()),
                    ("instance", format!("10.0.0.{inst}:9100")),
                ])
            };
            let counter = (0..POINTS)
                .map(|i| (T0 + i * STEP, ((i % 500) * (inst + 1)) as f64))
                .collect();
            out.push((l("requests_total"), counter));
            let gauge = (0..POINTS)
                .filter(|i| i % 7 != 3)
                .map(|i| {
                    let v = match i % 97 {
                        0 => f64::NAN,
                        1 => f64::INFINITY,
                        2 => -1.5e300,
                        _ => (i as f64 * 0.37 + inst as f64).sin() * 1e3 / 7.0,
                    };
                    (T0 + i * STEP + inst, v)
                })
                .collect();
            out.push((l("temperature_celsius"), gauge));
        }
    }
    out
}

fn openmetrics(data: &Data) -> String {
    let mut s = String::new();
    for (labels, samples) in data {
        let name = labels.get("__name__").unwrap();
        let rest: Vec<String> = labels
            .iter()
            .filter(|l| l.name != "__name__")
            .map(|l| format!("{}=\"{}\"", l.name, l.value))
            .collect();
        for (t, v) in samples {
            let v = if v.is_nan() {
                "NaN".to_string()
            } else if v.is_infinite() {
                "+Inf".to_string()
            } else {
                format!("{v:?}")
            };
            writeln!(
                s,
                "{name}{{{}}} {v} {}.{:03}",
                rest.join(","),
                t / 1000,
                t % 1000
            )
            .unwrap();
        }
    }
    s.push_str("# EOF\n");
    s
}

/// The lines `promtool tsdb dump` must print for `data`.
fn expected_dump(data: &Data) -> String {
    let mut sorted = data.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut s = String::new();
    for (labels, samples) in &sorted {
        for (t, v) in samples {
            writeln!(s, "{labels} {} {t}", format_go_g(*v)).unwrap();
        }
    }
    s
}

fn block_ulids(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("meta.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `promtool tsdb dump` 2.42 opens the directory as a database and insists on a `wal/` in it.
fn promtool_dump(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("wal")).unwrap();
    stdout(Command::new("promtool").args(["tsdb", "dump"]).arg(dir))
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd).stdout).unwrap()
}

#[test]
fn promtool_analyzes_and_dumps_rimir_blocks_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.om");
    let out = tmp.path().join("blocks");
    let d = data();
    std::fs::write(&input, openmetrics(&d)).unwrap();
    run_ok(
        Command::new(workspace_bin("rimir"))
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(&out),
    );
    let ulids = block_ulids(&out);
    assert_eq!(ulids.len(), 3, "5h of 2h-aligned data makes 3 blocks");
    for u in &ulids {
        let a = stdout(
            Command::new("promtool")
                .args(["tsdb", "analyze"])
                .arg(&out)
                .arg(u),
        );
        assert!(a.contains(&format!("Block ID: {u}")), "{a}");
    }
    let dump = promtool_dump(&out);
    assert_eq!(dump, expected_dump(&d));
}

#[test]
fn promtool_reads_stale_markers_and_special_values_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let l = Labels::from_pairs([("__name__", "x"), ("k", "v \"quoted\"\n")]);
    let samples = vec![
        (T0, 1.0),
        (T0 + 1, stale),
        (T0 + 2, f64::NEG_INFINITY),
        (T0 + 3, -0.0),
        (T0 + 4, f64::MIN_POSITIVE),
        (T0 + 5, 123456789.125),
    ];
    write_block(
        tmp.path(),
        vec![(l.clone(), samples.clone())],
        &BlockOptions::default(),
    )
    .unwrap();
    let dump = promtool_dump(tmp.path());
    assert_eq!(dump, expected_dump(&vec![(l, samples)]));
}

#[test]
fn rimir_dump_of_promtool_blocks_equals_promtool_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.om");
    let out = tmp.path().join("blocks");
    std::fs::write(&input, openmetrics(&data())).unwrap();
    run_ok(
        Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(&out),
    );
    assert!(!block_ulids(&out).is_empty());
    let theirs = promtool_dump(&out);
    let ours = stdout(
        Command::new(workspace_bin("rimir"))
            .args(["tsdb", "dump"])
            .arg(&out),
    );
    assert_eq!(ours.lines().count(), theirs.lines().count());
    assert_eq!(ours, theirs);
    let sel = r#"requests_total{job="db",instance=~"10.0.0.[12]:9100"}"#;
    let ours = stdout(
        Command::new(workspace_bin("rimir"))
            .args(["tsdb", "dump", "--match", sel])
            .arg(&out),
    );
    let want: String = theirs
        .lines()
        .filter(|l| {
            l.starts_with(r#"{__name__="requests_total", instance="10.0.0.1:9100", job="db"}"#)
                || l.starts_with(
                    r#"{__name__="requests_total", instance="10.0.0.2:9100", job="db"}"#,
                )
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(ours, want);
}

#[test]
fn stock_prometheus_queries_rimir_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let d = data();
    for start in [T0, T0 + 2 * 3600 * 1000, T0 + 4 * 3600 * 1000] {
        let window: Data = d
            .iter()
            .map(|(l, s)| {
                let s = s
                    .iter()
                    .copied()
                    .filter(|(t, _)| *t >= start && *t < start + 2 * 3600 * 1000)
                    .collect();
                (l.clone(), s)
            })
            .collect();
        write_block(&data_dir, window, &BlockOptions::default()).unwrap();
    }
    let cfg = tmp.path().join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 1h\n").unwrap();
    let port = free_port();
    let _prom = ChildGuard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", data_dir.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=100y")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus (tests/run.sh installs it)"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("{base}/-/ready")).call().is_err() {
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // At an instant in the third block, sum the counters of job="db" as Prometheus sees them.
    let i = 4 * 240 + 17;
    let at = T0 + i * STEP;
    let want: f64 = (0..6).map(|inst| ((i % 500) * (inst + 1)) as f64).sum();
    let url = format!(
        "{base}/api/v1/query?query=sum(requests_total%7Bjob%3D%22db%22%7D)&time={}",
        at as f64 / 1000.0
    );
    let body: serde_json::Value = serde_json::from_str(
        &ureq::get(&url)
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["status"], "success", "{body}");
    let got: f64 = body["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(got, want, "{body}");
    // A range query across the first block boundary returns every sample of one series.
    let url = format!(
        "{base}/api/v1/query_range?query=requests_total%7Bjob%3D%22api%22%2Cinstance%3D%2210.0.0.3%3A9100%22%7D&start={}&end={}&step=15",
        (T0 + 470 * STEP) as f64 / 1000.0,
        (T0 + 490 * STEP) as f64 / 1000.0
    );
    let body: serde_json::Value = serde_json::from_str(
        &ureq::get(&url)
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    let values = body["data"]["result"][0]["values"].as_array().unwrap();
    assert_eq!(values.len(), 21, "{body}");
    for (k, v) in values.iter().enumerate() {
        let i = 470 + k as i64;
        assert_eq!(v[1].as_str().unwrap(), format!("{}", (i % 500) * 4));
    }
}
