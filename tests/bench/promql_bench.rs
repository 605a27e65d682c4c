//! PromQL range-query benchmark: rimir against Prometheus 2.42, both real processes, same data.
//!
//! Generates 6 h of 15 s samples (ending now) for 6k counters, 1k gauges and 600 classic-histogram
//! buckets, remote-writes them in 30-minute slices, oldest first, into a fresh Prometheus
//! (`/api/v1/write`) and into a fresh `rimir --target=all` (`/api/v1/push`, filesystem bucket),
//! then times four range queries (6 h, 60 s step) over HTTP five times each on both, and prints
//! the median wall times, the ratio rimir/Prometheus, each server's CPU time per query, and both
//! servers' peak RSS (the whole process: ingestion, head and queries).
//!
//! Run (optimising only rimir's crates, so no dependency is rebuilt in release mode; build the
//! `rimir` binary with the same flags first, the benchmark runs it):
//! `cargo build -p rimir --bin rimir --config 'profile.dev.package."rimir".opt-level=3'`
//! `cargo run -p rimir-e2e --bin promql_bench --config 'profile.dev.package."rimir-promql".opt-level=3' --config 'profile.dev.package."rimir-tsdb".opt-level=3' --config 'profile.dev.package."rimir-e2e".opt-level=3'`
//!
//! `PROMQL_BENCH_QUERY=<n>` times only the n-th query (0-based).
//! `PROMQL_BENCH_RIMIR_ONLY=1` instead evaluates the queries in this process over an in-memory
//! source, without Prometheus or HTTP (for profiling the engine alone).

#[path = "../e2e/support/prometheus.rs"]
#[allow(dead_code)] // shared with the diff test, which uses all of it
mod prometheus;

use std::time::Instant;

use prometheus::{agent, push_body, snappy_literal, start_prometheus, write_request};
use rimir::api::format_result;
use rimir_e2e::rimir::{Rimir, now_ms};
use rimir_promql::Engine;
use rimir_promql::MemQueryable;
use rimir_tsdb::labels::Labels;
use rimir_tsdb::series::Series;

const STEP: i64 = 15_000;
const SPAN: i64 = 6 * 3_600_000;
const JOBS: usize = 10;
const COUNTERS_PER_JOB: usize = 600;
const GAUGES: usize = 1_000;
const HIST_INSTANCES: usize = 50;
const BOUNDS: [&str; 12] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
];

/// The benchmarked range queries.
const QUERIES: [&str; 4] = [
    "bench_requests_total",
    "sum by (job) (rate(bench_requests_total[5m]))",
    "topk(5, avg_over_time(bench_gauge[10m]))",
    "histogram_quantile(0.99, sum by (le) (rate(bench_latency_bucket[5m])))",
];

struct Rng(u64);

impl Rng {
    fn f(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn times(t0: i64) -> impl Iterator<Item = i64> {
    (0..=SPAN / STEP).map(move |i| t0 + i * STEP)
}

fn dataset(t0: i64) -> Vec<Series> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::new();
    for j in 0..JOBS {
        let job = format!("job-{j}");
        for i in 0..COUNTERS_PER_JOB {
            let instance = format!("10.{j}.{}.{}:9100", i / 250, i % 250);
            let mut v = 0.0;
            let samples = times(t0)
                .map(|t| {
                    v += (rng.f() * 10.0).floor();
                    if rng.f() < 0.0005 {
                        v = 0.0;
                    }
                    (t, v)
                })
                .collect();
            out.push(Series {
                labels: Labels::from_pairs([
                    ("__name__", "bench_requests_total"),
                    ("job", job.as_str()),
                    ("instance", instance.as_str()),
                ]),
                samples,
            });
        }
    }
    for g in 0..GAUGES {
        let job = format!("job-{}", g % JOBS);
        let instance = format!("g-{g}");
        let mut v = rng.f() * 100.0;
        let samples = times(t0)
            .map(|t| {
                v += rng.f() * 2.0 - 1.0;
                (t, v)
            })
            .collect();
        out.push(Series {
            labels: Labels::from_pairs([
                ("__name__", "bench_gauge"),
                ("job", job.as_str()),
                ("instance", instance.as_str()),
            ]),
            samples,
        });
    }
    for h in 0..HIST_INSTANCES {
        let instance = format!("h-{h}");
        let mut counts = [0.0f64; 12];
        let mut per: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 12];
        for t in times(t0) {
            for _ in 0..(rng.f() * 20.0) as usize {
                let b = (rng.f() * 12.0) as usize;
                for c in counts.iter_mut().skip(b) {
                    *c += 1.0;
                }
            }
            for (k, p) in per.iter_mut().enumerate() {
                p.push((t, counts[k]));
            }
        }
        for (k, samples) in per.into_iter().enumerate() {
            out.push(Series {
                labels: Labels::from_pairs([
                    ("__name__", "bench_latency_bucket"),
                    ("instance", instance.as_str()),
                    ("le", BOUNDS[k]),
                ]),
                samples,
            });
        }
    }
    out
}

/// Peak resident memory of a process in MiB, from /proc.
fn peak_rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system) a process has used, in seconds, from /proc (100 Hz ticks).
fn cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((u + st) / 100.0)
        })
        .unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The samples of `data` in `[from, from + len)`.
fn slice(data: &[Series], from: i64, len: i64) -> Vec<Series> {
    data.iter()
        .map(|s| Series {
            labels: s.labels.clone(),
            samples: s
                .samples
                .iter()
                .copied()
                .filter(|&(t, _)| t >= from && t < from + len)
                .collect(),
        })
        .collect()
}

/// Runs one range query over HTTP: (wall seconds, server CPU seconds, body bytes).
fn timed_query(base: &str, pid: &str, q: &str, start: i64, end: i64) -> (f64, f64, usize) {
    let t = Instant::now();
    let c0 = cpu_seconds(pid);
    let mut r = agent()
        .get(format!("{base}/api/v1/query_range"))
        .query("query", q)
        .query("start", (start / 1000).to_string())
        .query("end", (end / 1000).to_string())
        .query("step", "60")
        .call()
        .unwrap_or_else(|e| panic!("query {q} on {base}: {e}"));
    let status = r.status();
    let body = r
        .body_mut()
        .with_config()
        .limit(2_000_000_000)
        .read_to_string()
        .expect("query body");
    let wall = t.elapsed().as_secs_f64();
    assert!(
        status.is_success() && body.contains("\"status\":\"success\""),
        "query {q} on {base}: {status} {}",
        &body[..body.len().min(300)]
    );
    (wall, cpu_seconds(pid) - c0, body.len())
}

fn main() {
    // End on a whole minute so both servers see the same steps.
    let t0 = (now_ms() / 60_000) * 60_000 - SPAN;
    let data = dataset(t0);
    let series = data.len();
    let samples: usize = data.iter().map(|s| s.samples.len()).sum();
    println!("data: {series} series, {samples} samples over 6h");
    let (start, end, step) = (t0, t0 + SPAN, 60_000);
    if std::env::var_os("PROMQL_BENCH_RIMIR_ONLY").is_some() {
        let source = MemQueryable::new(data);
        let mut engine = Engine::default();
        engine.limits.max_samples = 500_000_000;
        for q in QUERIES {
            let mut rt = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let v = engine
                    .range(&source, q, start, end, step)
                    .expect("rimir query");
                let body = format_result(&v);
                rt.push(t.elapsed().as_secs_f64());
                assert!(!body.is_empty());
            }
            println!("{q:<75} {:>10.1}ms", median(rt) * 1e3);
        }
        return;
    }
    let prom = start_prometheus(&[
        "--storage.tsdb.min-block-duration=2h",
        "--storage.tsdb.max-block-duration=24h",
        "--query.max-samples=500000000",
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("rimir.yaml");
    std::fs::write(
        &config,
        "limits:\n  ingestion_rate: 1000000000\n  ingestion_burst_size: 1000000000\n  \
         max_global_series_per_user: 0\nquerier:\n  max_samples: 500000000\n",
    )
    .expect("write rimir config");
    let rimir = Rimir::start(
        &[
            "--target=all".into(),
            format!("--config.file={}", config.display()),
            format!(
                "--blocks-storage.filesystem.dir={}",
                dir.path().join("bucket").display()
            ),
            format!(
                "--blocks-storage.tsdb.dir={}",
                dir.path().join("tsdb").display()
            ),
        ],
        None,
        dir.path(),
        "rimir",
    );
    rimir.wait_ready();
    let started = Instant::now();
    // Push in 30-minute slices, oldest first, as a scraper would; the same bytes to both.
    let len = 30 * 60_000;
    let mut from = t0;
    while from <= t0 + SPAN {
        let body = snappy_literal(&write_request(&slice(&data, from, len)));
        push_body(&prom, &body);
        let (code, msg) = rimir.push(None, &body);
        assert_eq!(code, 200, "push to rimir: {msg}");
        from += len;
    }
    println!("pushed to both in {:.1}s", started.elapsed().as_secs_f64());
    drop(data);

    let prom_pid = prom.child.id().to_string();
    let rimir_pid = rimir.pid().expect("rimir running").to_string();
    let rimir_base = format!("{}/prometheus", rimir.url);
    let rss_before = (peak_rss_mib(&prom_pid), peak_rss_mib(&rimir_pid));
    println!(
        "{:<75} {:>12} {:>12} {:>7}",
        "query (range 6h, step 60s)", "prometheus", "rimir", "ratio"
    );
    // PROMQL_BENCH_QUERY=<n> runs only the n-th query (0-based), e.g. to profile it.
    let only: Option<usize> = std::env::var("PROMQL_BENCH_QUERY")
        .ok()
        .and_then(|v| v.parse().ok());
    for (n, q) in QUERIES.iter().enumerate() {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        let (mut pt, mut rt, mut pc, mut rc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut plen, mut rlen) = (0, 0);
        for _ in 0..5 {
            let (w, c, n) = timed_query(&prom.base, &prom_pid, q, start, end);
            pt.push(w);
            pc.push(c);
            plen = n;
            let (w, c, n) = timed_query(&rimir_base, &rimir_pid, q, start, end);
            rt.push(w);
            rc.push(c);
            rlen = n;
        }
        let (p, r) = (median(pt), median(rt));
        let (pcpu, rcpu) = (median(pc), median(rc));
        println!(
            "{q:<75} {:>10.1}ms {:>10.1}ms {:>7.2}   cpu {:>5.0}ms vs {:>5.0}ms   (json {plen} vs {rlen} bytes)",
            p * 1e3,
            r * 1e3,
            r / p,
            pcpu * 1e3,
            rcpu * 1e3,
        );
    }
    println!(
        "peak RSS: prometheus {:.0} MiB (after ingestion {:.0}), rimir {:.0} MiB (after ingestion {:.0})",
        peak_rss_mib(&prom_pid),
        rss_before.0,
        peak_rss_mib(&rimir_pid),
        rss_before.1,
    );
}
