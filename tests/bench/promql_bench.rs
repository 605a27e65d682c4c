//! PromQL range-query benchmark: rimir's engine against Prometheus 2.42 on the same data.
//!
//! Generates 6 h of 15 s samples for ~6k counters, 1k gauges and 600 classic-histogram buckets,
//! remote-writes them into a fresh Prometheus and loads them into an in-memory `Queryable`, then
//! times four range queries (6 h, 60 s step) five times each on both and prints the medians and
//! the ratio rimir/Prometheus. Prometheus is timed over HTTP (evaluation and JSON); rimir in
//! process (evaluation and the same JSON formatting the API uses).
//!
//! Run (optimising only rimir's crates, so no dependency is rebuilt in release mode):
//! `cargo run -p rimir-e2e --bin promql_bench --config 'profile.dev.package."rimir-tsdb".opt-level=3' --config 'profile.dev.package."rimir-e2e".opt-level=3'`

#[path = "../e2e/support/prometheus.rs"]
#[allow(dead_code)] // shared with the diff test, which uses all of it
mod prometheus;

use std::time::Instant;

use prometheus::{agent, push, start_prometheus};
use rimir_tsdb::api::prometheus::format_result;
use rimir_tsdb::labels::Labels;
use rimir_tsdb::promql::Engine;
use rimir_tsdb::querier::MemQueryable;
use rimir_tsdb::series::Series;

const T0: i64 = 1_699_999_200_000;
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

fn times() -> impl Iterator<Item = i64> {
    (0..=SPAN / STEP).map(|i| T0 + i * STEP)
}

fn dataset() -> Vec<Series> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::new();
    for j in 0..JOBS {
        let job = format!("job-{j}");
        for i in 0..COUNTERS_PER_JOB {
            let instance = format!("10.{j}.{}.{}:9100", i / 250, i % 250);
            let mut v = 0.0;
            let samples = times()
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
        let samples = times()
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
        for t in times() {
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

fn main() {
    let data = dataset();
    let series = data.len();
    let samples: usize = data.iter().map(|s| s.samples.len()).sum();
    println!("data: {series} series, {samples} samples over 6h");
    // PROMQL_BENCH_RIMIR_ONLY=1 skips Prometheus (for profiling rimir alone).
    let rimir_only = std::env::var_os("PROMQL_BENCH_RIMIR_ONLY").is_some();
    if rimir_only {
        let source = MemQueryable::new(data);
        let mut engine = Engine::default();
        engine.limits.max_samples = 500_000_000;
        for q in QUERIES {
            let mut rt = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let v = engine
                    .range(&source, q, T0, T0 + SPAN, 60_000)
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
        "--storage.tsdb.min-block-duration=24h",
        "--storage.tsdb.max-block-duration=24h",
        "--query.max-samples=500000000",
    ]);
    let started = Instant::now();
    // Push in 30-minute slices, oldest first, as a scraper would.
    let slice = 30 * 60_000;
    let mut from = T0;
    while from <= T0 + SPAN {
        let part: Vec<Series> = data
            .iter()
            .map(|s| Series {
                labels: s.labels.clone(),
                samples: s
                    .samples
                    .iter()
                    .copied()
                    .filter(|&(t, _)| t >= from && t < from + slice)
                    .collect(),
            })
            .collect();
        push(&prom, &part);
        from += slice;
    }
    println!(
        "pushed to prometheus in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let source = MemQueryable::new(data);
    let mut engine = Engine::default();
    engine.limits.max_samples = 500_000_000;

    let (start, end, step) = (T0, T0 + SPAN, 60_000);
    let http = agent();
    let rss_before_queries = peak_rss_mib("self");
    println!(
        "{:<75} {:>12} {:>12} {:>7}",
        "query (range 6h, step 60s)", "prometheus", "rimir", "ratio"
    );
    for q in QUERIES {
        let mut pt = Vec::new();
        let mut rt = Vec::new();
        let mut pc = Vec::new();
        let mut rc = Vec::new();
        let ppid = prom.child.id().to_string();
        let mut prom_len = 0;
        let mut rimir_len = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let c0 = cpu_seconds(&ppid);
            let mut r = http
                .get(format!("{}/api/v1/query_range", prom.base))
                .query("query", q)
                .query("start", (start / 1000).to_string())
                .query("end", (end / 1000).to_string())
                .query("step", "60")
                .call()
                .expect("prometheus query");
            let body = r
                .body_mut()
                .with_config()
                .limit(2_000_000_000)
                .read_to_string()
                .expect("prometheus body");
            pt.push(t.elapsed().as_secs_f64());
            pc.push(cpu_seconds(&ppid) - c0);
            prom_len = body.len();

            let t = Instant::now();
            let c0 = cpu_seconds("self");
            let v = engine
                .range(&source, q, start, end, step)
                .expect("rimir query");
            let body = format_result(&v);
            rt.push(t.elapsed().as_secs_f64());
            rc.push(cpu_seconds("self") - c0);
            rimir_len = body.len() + 31;
        }
        let (p, r) = (median(pt), median(rt));
        let (pcpu, rcpu) = (median(pc), median(rc));
        println!(
            "{q:<75} {:>10.1}ms {:>10.1}ms {:>7.2}   cpu {:>7.0}ms vs {:>7.0}ms ratio {:.2}   (json {prom_len} vs {rimir_len} bytes)",
            p * 1e3,
            r * 1e3,
            r / p,
            pcpu * 1e3,
            rcpu * 1e3,
            rcpu / pcpu.max(0.01)
        );
    }
    let rss_after = peak_rss_mib("self");
    println!(
        "peak RSS: prometheus {:.0} MiB; benchmark process {:.0} MiB, of which {:.0} MiB before the first query (generated data and in-memory source) and {:.0} MiB added by query evaluation",
        peak_rss_mib(&prom.child.id().to_string()),
        rss_after,
        rss_before_queries,
        rss_after - rss_before_queries
    );
}
