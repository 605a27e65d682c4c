//! Head append benchmark: node_exporter-shaped series appended through the WAL (synced before
//! every acknowledgement), one batch per "remote-write request". Prints samples/s, samples per
//! CPU-second, head memory per series and RSS per series.
//!
//! ```text
//! cargo run -p rimir-tsdb --example head_bench \
//!   --config 'profile.dev.package.rimir-tsdb.opt-level=3' \
//!   --config 'profile.dev.package.snap.opt-level=3' \
//!   --config 'profile.dev.package.crc32c.opt-level=3' -- [SERIES] [ROUNDS] [BATCH] [THREADS] [PER_SERIES]
//! ```
//! (optimizes only the crates on the hot path, so no release build of the whole tree).

use std::sync::Arc;
use std::time::Instant;

use rimir_tsdb::head::{Head, HeadOptions};
use rimir_tsdb::labels::Labels;

fn cpu_seconds() -> f64 {
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// CPU time of the calling thread in nanoseconds (first field of schedstat).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Sample `n` of series `i`, shaped like node_exporter data: constant gauges, integer
/// counters, CPU-seconds counters with two decimals, and fluctuating byte gauges.
fn node_value(i: usize, n: i64) -> f64 {
    let i = i as i64;
    match i % 4 {
        0 => (i % 17) as f64,
        1 => (n * 3 + n % 7) as f64,
        2 => (n * 1487 + i) as f64 / 100.0,
        _ => (1_000_000_000 + ((n * 7919 + i * 104_729) % 1_000_000) * 4096) as f64,
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let series: usize = args.next().map_or(Ok(10_000), |s| s.parse())?;
    let rounds: i64 = args.next().map_or(Ok(120), |s| s.parse())?;
    let batch: usize = args.next().map_or(Ok(2_000), |s| s.parse())?;
    let threads: usize = args.next().map_or(Ok(1), |s| s.parse())?;
    // Samples per series in each request (a sender that batches several scrapes).
    let per_series: i64 = args.next().map_or(Ok(1), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let labels: Vec<Labels> = (0..series)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", format!("node_metric_{}", i % 300)),
                ("cpu", (i % 8).to_string()),
                (
                    "instance",
                    format!("10.0.{}.{}:9100", i / 2400, (i / 300) % 8),
                ),
                ("job", "node".to_string()),
                (
                    "mode",
                    ["idle", "user", "system", "iowait"][i % 4].to_string(),
                ),
            ])
        })
        .collect();
    let rss0 = rss_bytes();
    let (head, _) = Head::open(dir.path(), HeadOptions::default())?;
    let head = Arc::new(head);
    let labels = Arc::new(labels);
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let head = head.clone();
            let labels = labels.clone();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut append_ns = 0u64;
                let mine: Vec<(usize, &Labels)> =
                    labels.iter().enumerate().skip(w).step_by(threads).collect();
                for round in 0..rounds / per_series {
                    let t0 = 1_700_000_000_000 + round * per_series * 15_000;
                    for chunk in mine.chunks(batch) {
                        let b: Vec<(Labels, Vec<(i64, f64)>)> = chunk
                            .iter()
                            .map(|&(i, l)| {
                                let s = (0..per_series)
                                    .map(|k| {
                                        let n = round * per_series + k;
                                        (t0 + k * 15_000, node_value(i, n))
                                    })
                                    .collect();
                                (l.clone(), s)
                            })
                            .collect();
                        // A context switch makes the kernel account the time spent so far
                        // (building the batch) before the reading.
                        std::thread::sleep(std::time::Duration::from_micros(1));
                        let c0 = thread_cpu_ns();
                        head.append(&b)?;
                        append_ns += thread_cpu_ns() - c0;
                    }
                }
                Ok(append_ns)
            })
        })
        .collect();
    let mut append_cpu = 0.0;
    for w in workers {
        append_cpu += w.join().map_err(|_| anyhow::anyhow!("worker panicked"))?? as f64 / 1e9;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let samples = head.num_samples() as f64;
    let wal_bytes: u64 = std::fs::read_dir(dir.path().join("wal"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "series={series} rounds={rounds} batch={batch} threads={threads} samples/series/request={per_series}: {samples} samples in {secs:.2}s wall, {cpu:.2} CPU-s"
    );
    println!(
        "append rate: {:.2} M samples/s wall, {:.2} M samples per CPU-second (process), {:.2} M samples per CPU-second inside Head::append ({append_cpu:.2} s)",
        samples / secs / 1e6,
        samples / cpu.max(0.01) / 1e6,
        samples / append_cpu.max(0.001) / 1e6
    );
    let m = head.memory_usage();
    let n = head.num_series().max(1);
    println!(
        "head memory: {} bytes/series (memory_bytes), RSS growth {} bytes/series; WAL {:.2} bytes/sample",
        m.total() / n,
        rss_bytes().saturating_sub(rss0) / series as u64,
        wal_bytes as f64 / samples
    );
    println!(
        "  per series: chunks and heap {} + series slots {} + maps {} + postings {} + label strings {}",
        m.series_heap / n,
        m.series_slots / n,
        m.maps / n,
        m.postings / n,
        m.symbols / n
    );
    drop(head);
    let started = Instant::now();
    let (head, report) = Head::open(dir.path(), HeadOptions::default())?;
    let replay = started.elapsed().as_secs_f64();
    println!(
        "replay: {} series, {} samples in {replay:.2}s ({:.2} M samples/s)",
        head.num_series(),
        report.samples,
        report.samples as f64 / replay / 1e6
    );
    Ok(())
}
