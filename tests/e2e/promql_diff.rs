//! Differential test of rimir's PromQL engine against a real Prometheus 2.42.
//!
//! One synthetic data set (counters with resets, gauges with gaps and NaN, series ended by stale
//! markers, classic histograms, several jobs and instances) is remote-written into a fresh
//! Prometheus and loaded into rimir's engine through an in-memory `Queryable`. Every expression
//! of `promql_corpus.txt` then runs as instant queries at several times and as a range query on
//! both; results must agree: same result type, same label sets, values equal within 1e-9
//! relative (NaN equal to NaN), same missing points. Remote write is used instead of
//! `promtool tsdb create-blocks-from openmetrics` because OpenMetrics text cannot carry stale
//! markers.

#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use prometheus::{Answer, prometheus_query, push, start_prometheus};

use rimir::api::format_result;
use rimir_promql::MemQueryable;
use rimir_promql::{Engine, STALE_NAN_BITS};
use rimir_tsdb::labels::Labels;
use rimir_tsdb::series::Series;
use serde_json::Value as Json;

/// Start of the data (ms), hour-aligned.
const T0: i64 = 1_699_999_200_000;
const MIN: i64 = 60_000;
/// Scrape interval (ms).
const STEP: i64 = 15_000;
/// Data covers one hour.
const SPAN: i64 = 60 * MIN;

/// Deterministic xorshift generator, so both systems and every run see the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn series(pairs: &[(&str, &str)], samples: Vec<(i64, f64)>) -> Series {
    Series {
        labels: Labels::from_pairs(pairs.iter().copied()),
        samples,
    }
}

/// Scrape times with jitter of up to ±400 ms around the 15 s grid.
fn scrape_times(rng: &mut Rng) -> Vec<i64> {
    (0..=SPAN / STEP)
        .map(|i| T0 + i * STEP + (rng.f() * 800.0) as i64 - 400)
        .collect()
}

/// The synthetic data set.
fn dataset() -> Vec<Series> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    let stale = f64::from_bits(STALE_NAN_BITS);
    let jobs = ["api", "web", "db"];
    for (ji, job) in jobs.iter().enumerate() {
        for inst in 0..4 {
            let instance = format!("10.0.{ji}.{inst}:9100");
            let il = instance.as_str();
            // Counters with resets.
            for method in ["GET", "POST"] {
                let mut v = (rng.f() * 1000.0).floor();
                let times = scrape_times(&mut rng);
                let mut samples = Vec::new();
                for (i, &t) in times.iter().enumerate() {
                    if (inst == 1 && (i == 80 || i == 180))
                        || (inst == 2 && i == 120 && method == "GET")
                    {
                        v = (rng.f() * 5.0).floor();
                    } else {
                        v += (rng.f() * 20.0).floor() + if method == "GET" { 1.0 } else { 0.0 };
                    }
                    samples.push((t, v));
                }
                out.push(series(
                    &[
                        ("__name__", "http_requests_total"),
                        ("job", job),
                        ("instance", il),
                        ("method", method),
                    ],
                    samples,
                ));
            }
            // Gauges: random walk, some NaN values.
            let mut g = rng.f() * 40.0 - 10.0;
            let times = scrape_times(&mut rng);
            let mut samples = Vec::new();
            for (i, &t) in times.iter().enumerate() {
                g += rng.f() * 4.0 - 2.0;
                let v = if inst == 3 && ji == 0 && (i == 50 || i == 51 || i == 200) {
                    f64::NAN
                } else {
                    g
                };
                samples.push((t, v));
            }
            out.push(series(
                &[
                    ("__name__", "temperature_celsius"),
                    ("job", job),
                    ("instance", il),
                ],
                samples,
            ));
            // A gauge with a gap longer than the lookback (minutes 20 to 32) for some instances.
            let times = scrape_times(&mut rng);
            let samples = times
                .iter()
                .enumerate()
                .filter(|&(i, _)| inst % 2 == 1 || !(80..128).contains(&i))
                .map(|(_, &t)| (t, (rng.f() * 100.0).round() / 4.0))
                .collect();
            out.push(series(
                &[("__name__", "queue_depth"), ("job", job), ("instance", il)],
                samples,
            ));
            // A gauge ended by a stale marker at minute 30, back at minute 40 (instances 0, 1).
            let times = scrape_times(&mut rng);
            let samples = times
                .iter()
                .enumerate()
                .filter_map(|(i, &t)| match i {
                    120 if inst < 2 => Some((t, stale)),
                    121..=159 if inst < 2 => None,
                    _ => Some((t, 1.0 + (rng.f() * 8.0).floor())),
                })
                .collect();
            out.push(series(
                &[
                    ("__name__", "sessions_active"),
                    ("job", job),
                    ("instance", il),
                ],
                samples,
            ));
            // up: 0 or 1.
            let times = scrape_times(&mut rng);
            let samples = times
                .iter()
                .map(|&t| (t, if rng.f() < 0.1 { 0.0 } else { 1.0 }))
                .collect();
            out.push(series(
                &[("__name__", "up"), ("job", job), ("instance", il)],
                samples,
            ));
            // Info metric for group_left joins.
            let version = format!("1.{}.{}", ji, inst % 2);
            let times = scrape_times(&mut rng);
            out.push(series(
                &[
                    ("__name__", "build_info"),
                    ("job", job),
                    ("instance", il),
                    ("version", &version),
                ],
                times.iter().map(|&t| (t, 1.0)).collect(),
            ));
        }
        // Classic histograms for two instances per job.
        for inst in 0..2 {
            let instance = format!("10.0.{ji}.{inst}:9100");
            let bounds = ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"];
            let weights = [0.1, 0.15, 0.25, 0.2, 0.15, 0.1, 0.05];
            let mut counts = [0.0f64; 7];
            let mut sum = 0.0;
            let times = scrape_times(&mut rng);
            let mut per_bucket: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 7];
            let mut sums = Vec::new();
            let mut totals = Vec::new();
            for &t in &times {
                let n = (rng.f() * 30.0).floor() as usize;
                for _ in 0..n {
                    let x = rng.f();
                    let mut acc = 0.0;
                    let mut b = 6;
                    for (k, w) in weights.iter().enumerate() {
                        acc += w;
                        if x < acc {
                            b = k;
                            break;
                        }
                    }
                    for c in counts.iter_mut().skip(b) {
                        *c += 1.0;
                    }
                    sum += 0.03 * (b as f64 + 1.0) + rng.f() * 0.01;
                }
                for (k, pb) in per_bucket.iter_mut().enumerate() {
                    pb.push((t, counts[k]));
                }
                sums.push((t, sum));
                totals.push((t, counts[6]));
            }
            for (k, pb) in per_bucket.into_iter().enumerate() {
                out.push(series(
                    &[
                        ("__name__", "request_duration_seconds_bucket"),
                        ("job", job),
                        ("instance", &instance),
                        ("le", bounds[k]),
                    ],
                    pb,
                ));
            }
            out.push(series(
                &[
                    ("__name__", "request_duration_seconds_sum"),
                    ("job", job),
                    ("instance", &instance),
                ],
                sums,
            ));
            out.push(series(
                &[
                    ("__name__", "request_duration_seconds_count"),
                    ("job", job),
                    ("instance", &instance),
                ],
                totals,
            ));
        }
    }
    out
}

fn rimir_answer(r: Result<rimir_promql::Value, rimir_promql::QueryError>) -> Answer {
    match r {
        Ok(v) => Answer::Data(serde_json::from_str(&format_result(&v)).expect("rimir json")),
        Err(e) => Answer::Error(e.to_string()),
    }
}

fn parse_value(v: &Json) -> f64 {
    match v.as_str().unwrap_or("") {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        s => s.parse().unwrap_or(f64::NAN),
    }
}

fn values_equal(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    diff <= 1e-9 * a.abs().max(b.abs()) || diff < 1e-12
}

fn point(p: &Json) -> (String, f64) {
    (p[0].to_string(), parse_value(&p[1]))
}

/// Compares two `data` objects; returns a description of the first difference.
fn compare(expr: &str, prom: &Json, ours: &Json) -> Result<(), String> {
    let (pt, ot) = (&prom["resultType"], &ours["resultType"]);
    if pt != ot {
        return Err(format!("result type {pt} vs {ot}"));
    }
    match pt.as_str().unwrap_or("") {
        "scalar" | "string" => {
            let (a, b) = (point(&prom["result"]), point(&ours["result"]));
            if a.0 != b.0 || !(values_equal(a.1, b.1) || prom["result"][1] == ours["result"][1]) {
                return Err(format!("{} vs {}", prom["result"], ours["result"]));
            }
        }
        "vector" => {
            let key = |e: &Json| e["metric"].to_string();
            let pr = prom["result"].as_array().cloned().unwrap_or_default();
            let or = ours["result"].as_array().cloned().unwrap_or_default();
            let pm: BTreeMap<String, &Json> = pr.iter().map(|e| (key(e), e)).collect();
            let om: BTreeMap<String, &Json> = or.iter().map(|e| (key(e), e)).collect();
            if pm.len() != pr.len() || om.len() != or.len() {
                return Err("duplicate label sets".into());
            }
            let pk: Vec<_> = pm.keys().collect();
            let ok: Vec<_> = om.keys().collect();
            if pk != ok {
                return Err(format!("label sets differ: {pk:?} vs {ok:?}"));
            }
            for (k, pe) in &pm {
                let (a, b) = (point(&pe["value"]), point(&om[k]["value"]));
                if a.0 != b.0 || !values_equal(a.1, b.1) {
                    return Err(format!("{k}: {} vs {}", pe["value"], om[k]["value"]));
                }
            }
            if expr.starts_with("sort") {
                let po: Vec<String> = pr.iter().map(key).collect();
                let oo: Vec<String> = or.iter().map(key).collect();
                if po != oo {
                    return Err(format!("order differs: {po:?} vs {oo:?}"));
                }
            }
        }
        "matrix" => {
            let key = |e: &Json| e["metric"].to_string();
            let pr = prom["result"].as_array().cloned().unwrap_or_default();
            let or = ours["result"].as_array().cloned().unwrap_or_default();
            let pm: BTreeMap<String, &Json> = pr.iter().map(|e| (key(e), e)).collect();
            let om: BTreeMap<String, &Json> = or.iter().map(|e| (key(e), e)).collect();
            let pk: Vec<_> = pm.keys().collect();
            let ok: Vec<_> = om.keys().collect();
            if pk != ok {
                return Err(format!("label sets differ: {pk:?} vs {ok:?}"));
            }
            for (k, pe) in &pm {
                let pv = pe["values"].as_array().cloned().unwrap_or_default();
                let ov = om[k]["values"].as_array().cloned().unwrap_or_default();
                let pp: Vec<_> = pv.iter().map(point).collect();
                let op: Vec<_> = ov.iter().map(point).collect();
                let pts: Vec<&String> = pp.iter().map(|p| &p.0).collect();
                let ots: Vec<&String> = op.iter().map(|p| &p.0).collect();
                if pts != ots {
                    return Err(format!("{k}: timestamps differ: {pts:?} vs {ots:?}"));
                }
                for (a, b) in pp.iter().zip(&op) {
                    if !values_equal(a.1, b.1) {
                        return Err(format!("{k} at {}: {} vs {}", a.0, a.1, b.1));
                    }
                }
            }
        }
        other => return Err(format!("unknown result type {other}")),
    }
    Ok(())
}

fn secs(t: i64) -> String {
    format!("{}.{:03}", t / 1000, t % 1000)
}

#[test]
fn promql_matches_prometheus_on_corpus() {
    let started = Instant::now();
    let corpus_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/promql_corpus.txt");
    let corpus = std::fs::read_to_string(&corpus_path).expect("read corpus");
    let exprs: Vec<&str> = corpus
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        exprs.len() >= 150,
        "corpus has only {} expressions",
        exprs.len()
    );

    let data = dataset();
    let prom = start_prometheus(&[]);
    push(&prom, &data);
    let source = MemQueryable::new(data);
    let engine = Engine::default();

    // Instant times: inside the data, in the gap, just after the stale marker, at and after
    // the end (lookback), and a range covering before, during and after the data.
    let instants = [
        T0 + 10 * MIN + 7_000,
        T0 + 25 * MIN,
        T0 + 30 * MIN + 20_000,
        T0 + SPAN,
        T0 + SPAN + 4 * MIN,
    ];
    // Ranges: a minute grid over the whole data, and an odd step from an unaligned start.
    let ranges = [
        (T0 - 2 * MIN, T0 + SPAN + 7 * MIN, 60_000),
        (T0 + 13_500, T0 + 40 * MIN, 37_000),
    ];

    let mut passed = 0;
    let mut both_errors = 0;
    let mut empty = 0;
    let mut failures = Vec::new();
    let mut total = 0;
    for expr in &exprs {
        for &t in &instants {
            total += 1;
            let p = prometheus_query(
                &prom,
                "query",
                &[("query", expr.to_string()), ("time", secs(t))],
            );
            let o = rimir_answer(engine.instant(&source, expr, t));
            tally(&p, &mut both_errors, &mut empty);
            match check(expr, &p, &o) {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!("instant {expr} @ {}: {e}", secs(t))),
            }
        }
        for &(start, end, step) in &ranges {
            total += 1;
            let p = prometheus_query(
                &prom,
                "query_range",
                &[
                    ("query", expr.to_string()),
                    ("start", secs(start)),
                    ("end", secs(end)),
                    ("step", format!("{}", step as f64 / 1000.0)),
                ],
            );
            let o = rimir_answer(engine.range(&source, expr, start, end, step));
            tally(&p, &mut both_errors, &mut empty);
            match check(expr, &p, &o) {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!("range {expr} step {step}: {e}")),
            }
        }
    }
    let mut report = std::io::stderr();
    let _ = writeln!(
        report,
        "promql_diff: {passed}/{total} queries match Prometheus ({} expressions; {both_errors} are errors in Prometheus, {empty} empty results; {:.1}s)",
        exprs.len(),
        started.elapsed().as_secs_f64()
    );
    for f in failures.iter().take(60) {
        let _ = writeln!(report, "  MISMATCH {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {total} queries differ",
        failures.len()
    );
}

/// Counts Prometheus answers that are errors or empty, to show how much the corpus really tests.
fn tally(p: &Answer, errors: &mut usize, empty: &mut usize) {
    match p {
        Answer::Error(_) => *errors += 1,
        Answer::Data(d) if d["result"].as_array().is_some_and(|r| r.is_empty()) => *empty += 1,
        Answer::Data(_) => {}
    }
}

fn check(expr: &str, p: &Answer, o: &Answer) -> Result<(), String> {
    match (p, o) {
        (Answer::Error(_), Answer::Error(_)) => Ok(()),
        (Answer::Error(e), Answer::Data(_)) => {
            Err(format!("prometheus failed ({e}), rimir answered"))
        }
        (Answer::Data(_), Answer::Error(e)) => Err(format!("rimir failed: {e}")),
        (Answer::Data(a), Answer::Data(b)) => compare(expr, a, b),
    }
}
