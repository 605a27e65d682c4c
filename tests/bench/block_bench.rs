//! Block size and compaction benchmark against promtool 2.42, side by side on one input.
//!
//! `cargo run --release -p rimir-e2e --bin block_bench -- [SERIES] [HOURS] [STEP_SECONDS]`
//!
//! 1. Writes node_exporter-shaped series as one OpenMetrics file, builds 2h blocks from it with
//!    `promtool tsdb create-blocks-from openmetrics` and with `rimir tsdb create-blocks-from
//!    openmetrics`, and prints bytes/sample (chunks, chunks+index) and the ratio rimir/promtool.
//! 2. Runs `rimir --target=compactor --compactor.run-once` over rimir's blocks (as one tenant's
//!    bucket) with `cold: none` and `cold: gzip`, and prints compaction throughput, peak RSS,
//!    the data directory's peak bytes and the compacted bytes/sample against promtool's blocks.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rimir_e2e::rimir::rimir_bin;

fn dir_bytes(p: &Path, pred: &dyn Fn(&Path) -> bool) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                dir_bytes(&path, pred)
            } else if pred(&path) {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            } else {
                0
            }
        })
        .sum()
}

fn is_chunk(p: &Path) -> bool {
    p.parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "chunks")
}

fn is_index(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == "index")
}

/// Runs a command, sampling its RSS; returns (wall time, peak RSS bytes, stdout).
fn measured(cmd: &mut Command) -> (Duration, u64, String) {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let mut peak = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kb: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
                    peak = peak.max(kb * 1024);
                }
            }
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{cmd:?} failed");
    (
        start.elapsed(),
        peak,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let series: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let hours: i64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(6);
    let step: i64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(15);
    let tmp = tempfile::tempdir().expect("tempdir");
    let t0: i64 = 1_700_006_400; // a 2h boundary (seconds)
    let points = hours * 3600 / step;

    // node_exporter shapes: CPU counters, network byte counters, memory gauges, filesystem
    // gauges that rarely change.
    let om = tmp.path().join("in.om");
    let mut text = String::with_capacity(series * points as usize * 64);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..series {
        let (name, labels) = match i % 4 {
            0 => (
                "node_cpu_seconds_total",
                format!(
                    "cpu=\"{}\",mode=\"user\",instance=\"host{}:9100\"",
                    i % 64,
                    i / 64
                ),
            ),
            1 => (
                "node_network_receive_bytes_total",
                format!("device=\"eth{}\",instance=\"host{}:9100\"", i % 64, i / 64),
            ),
            2 => (
                "node_memory_Active_bytes",
                format!("instance=\"host{}:9100\",slot=\"{}\"", i / 64, i % 64),
            ),
            _ => (
                "node_filesystem_avail_bytes",
                format!(
                    "mountpoint=\"/m{}\",instance=\"host{}:9100\"",
                    i % 64,
                    i / 64
                ),
            ),
        };
        let mut v = (next() % 1_000_000) as f64;
        for p in 0..points {
            v = match i % 4 {
                0 => v + (next() % 1500) as f64 / 100.0,
                1 => v + (next() % 200_000) as f64,
                2 => 4.0e9 + (next() % 100_000_000) as f64,
                _ => {
                    if next() % 20 == 0 {
                        v - 4096.0
                    } else {
                        v
                    }
                }
            };
            let _ = writeln!(text, "{name}{{{labels}}} {v} {}", t0 + p * step);
        }
    }
    text.push_str("# EOF\n");
    std::fs::write(&om, &text).expect("write input");
    drop(text);
    let samples = series as u64 * points as u64;
    println!("input: {series} series x {hours}h at {step}s = {samples} samples");

    let prom_out = tmp.path().join("promtool");
    let (prom_t, _, _) = measured(
        Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&om)
            .arg(&prom_out),
    );
    let rimir_out = tmp.path().join("bucket").join("anonymous");
    let (rimir_t, _, _) = measured(
        Command::new(rimir_bin())
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&om)
            .arg(&rimir_out),
    );
    let report = |label: &str, dir: &Path| -> (f64, f64) {
        let c = dir_bytes(dir, &is_chunk) as f64;
        let i = dir_bytes(dir, &is_index) as f64;
        let s = samples as f64;
        println!(
            "{label:<28} chunks {:>12} B  index {:>10} B  bytes/sample chunks {:.3}  chunks+index {:.3}",
            c as u64,
            i as u64,
            c / s,
            (c + i) / s
        );
        (c / s, (c + i) / s)
    };
    println!(
        "create-blocks-from: promtool {:.1}s, rimir {:.1}s",
        prom_t.as_secs_f64(),
        rimir_t.as_secs_f64()
    );
    let p = report("promtool 2h blocks", &prom_out);
    let r = report("rimir 2h blocks", &rimir_out);
    println!(
        "ratio rimir/promtool: chunks {:.3}, chunks+index {:.3}",
        r.0 / p.0,
        r.1 / p.1
    );

    for cold in ["none", "gzip"] {
        let bucket = tmp.path().join(format!("bucket-{cold}"));
        let status = Command::new("cp")
            .arg("-r")
            .arg(tmp.path().join("bucket"))
            .arg(&bucket)
            .status()
            .expect("cp");
        assert!(status.success());
        let work = tmp.path().join(format!("work-{cold}"));
        let cfg: PathBuf = tmp.path().join(format!("rimir-{cold}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "target: compactor\nblocks_storage:\n  backend: filesystem\n  filesystem:\n    dir: {}\ncompactor:\n  data_dir: {}\n  deletion_delay: 0s\ncompression:\n  cold: {cold}\n",
                bucket.display(),
                work.display()
            ),
        )
        .expect("config");
        let (t, rss, out) = measured(
            Command::new(rimir_bin())
                .arg(format!("--config.file={}", cfg.display()))
                .arg("--compactor.run-once")
                .env("RUST_LOG", "warn"),
        );
        // Second run deletes the marked sources so only compacted blocks remain.
        measured(
            Command::new(rimir_bin())
                .arg(format!("--config.file={}", cfg.display()))
                .arg("--compactor.run-once")
                .env("RUST_LOG", "warn"),
        );
        let peak = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("data_dir_peak_bytes="))
            .unwrap_or("?")
            .to_string();
        let stored = dir_bytes(&bucket, &|p| is_chunk(p) || is_index(p)) as f64;
        println!(
            "compaction cold={cold:<5} {:.1}s  {:.2} M samples/s  {:.1} MB/s  peak RSS {:.1} MiB  data dir peak {peak} B",
            t.as_secs_f64(),
            samples as f64 / t.as_secs_f64() / 1e6,
            dir_bytes(&tmp.path().join("bucket"), &|_| true) as f64 / t.as_secs_f64() / 1e6,
            rss as f64 / (1 << 20) as f64
        );
        println!(
            "  compacted bytes/sample {:.3}  vs promtool 2h blocks {:.3}  ratio {:.3}",
            stored / samples as f64,
            p.1,
            stored / samples as f64 / p.1
        );
    }
}
