//! Load generator: pushes the same node_exporter-shaped series, with the same client, to
//! (a) `rimir --target=all` with RF=1, (b) a distributor and three ingesters with RF=3 and
//! (c) Prometheus 2.42's remote-write receiver, and prints throughput, server CPU-seconds per
//! million samples, peak RSS, push latency percentiles and the ratios to Prometheus.
//!
//! `cargo run --release -p rimir-e2e --bin rimir-loadgen -- [--series N] [--rounds N]
//! [--batch N] [--clients N]` (run `cargo build --release -p rimir --bin rimir` first: the rimir binary
//! is taken from the same target directory).
//!
//! `--push-url URL [--pid N]` pushes the same load to a server started by hand instead (to
//! profile one, e.g. under heaptrack), measuring CPU and RSS of process `N` when given.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rimir_e2e::rimir::{Rimir, agent, now_ms, snappy, write_request};
use rimir_e2e::{ChildGuard, free_port};

struct Opts {
    series: usize,
    rounds: usize,
    batch: usize,
    clients: usize,
    /// Push to this server only, started by hand.
    push_url: Option<String>,
    /// The process behind `push_url`, to measure.
    pid: Option<u32>,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        series: 20_000,
        rounds: 30,
        batch: 2_000,
        clients: 4,
        push_url: None,
        pid: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        if pair[0] == "--push-url" {
            o.push_url = pair.get(1).cloned();
            continue;
        }
        let v: usize = pair
            .get(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{} needs a number", pair[0]));
        match pair[0].as_str() {
            "--series" => o.series = v,
            "--rounds" => o.rounds = v,
            "--batch" => o.batch = v,
            "--clients" => o.clients = v,
            "--pid" => o.pid = Some(v as u32),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// node_exporter-like label sets: per host, CPU modes × cores, filesystems, network devices,
/// and single gauges, until `n` series exist.
fn series_labels(n: usize) -> Vec<Vec<(&'static str, String)>> {
    const MODES: [&str; 8] = [
        "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
    ];
    const GAUGES: [&str; 12] = [
        "node_load1",
        "node_load5",
        "node_load15",
        "node_memory_MemAvailable_bytes",
        "node_memory_MemFree_bytes",
        "node_memory_Cached_bytes",
        "node_memory_Buffers_bytes",
        "node_procs_running",
        "node_procs_blocked",
        "node_context_switches_total",
        "node_forks_total",
        "node_boot_time_seconds",
    ];
    let mut out = Vec::with_capacity(n);
    let mut host = 0;
    while out.len() < n {
        let base = |name: &str| {
            vec![
                ("__name__", name.to_string()),
                ("instance", format!("host-{host:04}.example.com:9100")),
                ("job", "node".to_string()),
            ]
        };
        for cpu in 0..16 {
            for mode in MODES {
                let mut l = base("node_cpu_seconds_total");
                l.push(("cpu", cpu.to_string()));
                l.push(("mode", mode.to_string()));
                out.push(l);
            }
        }
        for dev in ["eth0", "eth1", "lo", "docker0"] {
            for m in [
                "node_network_receive_bytes_total",
                "node_network_transmit_bytes_total",
                "node_network_receive_packets_total",
                "node_network_transmit_packets_total",
            ] {
                let mut l = base(m);
                l.push(("device", dev.to_string()));
                out.push(l);
            }
        }
        for (dev, mp) in [("/dev/sda1", "/"), ("/dev/sda2", "/var"), ("tmpfs", "/run")] {
            for m in [
                "node_filesystem_avail_bytes",
                "node_filesystem_size_bytes",
                "node_filesystem_files_free",
            ] {
                let mut l = base(m);
                l.push(("device", dev.to_string()));
                l.push(("fstype", "ext4".to_string()));
                l.push(("mountpoint", mp.to_string()));
                out.push(l);
            }
        }
        for g in GAUGES {
            out.push(base(g));
        }
        host += 1;
    }
    out.truncate(n);
    out
}

/// Pre-encoded snappy bodies: round by round, `batch` series per request.
fn bodies(o: &Opts, t0: i64) -> Vec<Vec<u8>> {
    let labels = series_labels(o.series);
    let mut out = Vec::new();
    for r in 0..o.rounds {
        let t = t0 + r as i64 * 15_000;
        for chunk in labels.chunks(o.batch) {
            let series: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), vec![(t, (r * 7 + i) as f64 * 1.5)]))
                .collect();
            out.push(snappy(&write_request(&series)));
        }
    }
    out
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// A size field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`) in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Peak resident set size (VmHWM) in bytes.
fn peak_rss(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM")
}

struct Result {
    name: &'static str,
    samples: usize,
    secs: f64,
    cpu: f64,
    rss: u64,
    /// Peak RSS of each process, in the order of `pids`.
    rss_each: Vec<u64>,
    /// RSS of all processes when ready, before the first push.
    rss_idle: u64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

fn run(name: &'static str, url: &str, pids: &[u32], bodies: &[Vec<u8>], o: &Opts) -> Result {
    let cpu0: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let rss_idle: u64 = pids.iter().map(|&p| status_bytes(p, "VmRSS")).sum();
    let next = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(bodies.len())));
    let errors = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(bodies.to_vec());
    let start = Instant::now();
    let threads: Vec<_> = (0..o.clients)
        .map(|_| {
            let (next, lat, errors, bodies) =
                (next.clone(), lat.clone(), errors.clone(), bodies.clone());
            let url = url.to_string();
            std::thread::spawn(move || {
                let a = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = bodies.get(i) else { break };
                    let t = Instant::now();
                    let r = a
                        .post(&url)
                        .header("Content-Encoding", "snappy")
                        .header("Content-Type", "application/x-protobuf")
                        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                        .send(b.as_slice());
                    let ok = matches!(&r, Ok(resp) if resp.status().is_success());
                    if !ok && errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("{url}: {:?}", r.map(|mut x| x.body_mut().read_to_string()));
                    }
                    lat.lock().unwrap().push(t.elapsed());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu0;
    let rss_each: Vec<u64> = pids.iter().map(|&p| peak_rss(p)).collect();
    let rss = rss_each.iter().sum();
    let mut l = lat.lock().unwrap().clone();
    l.sort();
    let pct = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    Result {
        name,
        samples: o.series * o.rounds,
        secs,
        cpu,
        rss,
        rss_each,
        rss_idle,
        p50: pct(0.5),
        p99: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn rimir_args(dir: &Path, extra: &[String]) -> Vec<String> {
    let mut v = vec![
        format!(
            "--blocks-storage.filesystem.dir={}",
            dir.join("bucket").display()
        ),
        "--distributor.ingestion-rate-limit=1000000000".into(),
        "--distributor.ingestion-burst-size=1000000000".into(),
        "--ingester.max-global-series-per-user=0".into(),
    ];
    v.extend(extra.iter().cloned());
    v
}

fn main() {
    let o = parse_opts();
    let tmp = tempfile::tempdir().expect("temp dir");
    let t0 = now_ms() - (o.rounds as i64) * 15_000;
    let bodies = bodies(&o, t0);
    println!(
        "{} series × {} rounds = {} samples, {} per request, {} clients",
        o.series,
        o.rounds,
        o.series * o.rounds,
        o.batch,
        o.clients
    );
    let mut results = Vec::new();

    if let Some(url) = &o.push_url {
        let pids: Vec<u32> = o.pid.into_iter().collect();
        results.push(run("given server", url, &pids, &bodies, &o));
        report(&results, &o);
        return;
    }

    // (a) single process, RF=1.
    {
        let d = tmp.path().join("a");
        std::fs::create_dir_all(&d).unwrap();
        let r = Rimir::start(
            &rimir_args(
                &d,
                &[
                    "--target=all".into(),
                    "--ingester.ring.replication-factor=1".into(),
                    format!("--blocks-storage.tsdb.dir={}", d.join("tsdb").display()),
                ],
            ),
            None,
            &d,
            "rimir-all",
        );
        r.wait_ready();
        let pid = r.pid().unwrap();
        results.push(run(
            "rimir all RF=1",
            &format!("{}/api/v1/push", r.url),
            &[pid],
            &bodies,
            &o,
        ));
    }

    // (b) distributor + 3 ingesters, RF=3.
    {
        let d = tmp.path().join("b");
        std::fs::create_dir_all(&d).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let ingesters: Vec<Rimir> = (0..3)
            .map(|i| {
                Rimir::start(
                    &rimir_args(
                        &d,
                        &[
                            "--target=ingester".into(),
                            format!("--ingester.ring.instance-id=ingester-{i}"),
                            format!(
                                "--blocks-storage.tsdb.dir={}",
                                d.join(format!("i{i}")).display()
                            ),
                        ],
                    ),
                    Some(ports[i]),
                    &d,
                    &format!("ingester-{i}"),
                )
            })
            .collect();
        let ring: Vec<String> = (0..3)
            .map(|i| format!("ingester-{i}=127.0.0.1:{}", ports[i]))
            .collect();
        let dist = Rimir::start(
            &rimir_args(
                &d,
                &[
                    "--target=distributor".into(),
                    format!("--ingester.ring.instances={}", ring.join(",")),
                    "--ingester.ring.replication-factor=3".into(),
                ],
            ),
            None,
            &d,
            "distributor",
        );
        for i in &ingesters {
            i.wait_ready();
        }
        dist.wait_ready();
        let mut pids: Vec<u32> = ingesters.iter().filter_map(|i| i.pid()).collect();
        pids.push(dist.pid().unwrap());
        results.push(run(
            "rimir RF=3 (1+3 procs)",
            &format!("{}/api/v1/push", dist.url),
            &pids,
            &bodies,
            &o,
        ));
    }

    // (c) Prometheus' remote-write receiver.
    {
        let d = tmp.path().join("c");
        std::fs::create_dir_all(&d).unwrap();
        let port = free_port();
        std::fs::write(d.join("prometheus.yml"), "global: {scrape_interval: 1m}\n").unwrap();
        let child = ChildGuard(
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    d.join("prometheus.yml").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
                .arg("--web.enable-remote-write-receiver")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn prometheus"),
        );
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        while rimir_e2e::rimir::get(&ready).0 != 200 {
            assert!(Instant::now() < deadline, "prometheus not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        results.push(run(
            "prometheus 2.42",
            &format!("http://127.0.0.1:{port}/api/v1/write"),
            &[child.0.id()],
            &bodies,
            &o,
        ));
    }

    report(&results, &o);
}

/// Prints the table: the last result is the reference the ratios are taken against.
fn report(results: &[Result], o: &Opts) {
    let prom = results
        .last()
        .map(|r| (r.samples as f64 / r.cpu.max(1e-9), r.rss, r.p99));
    println!(
        "{:<24} {:>12} {:>14} {:>12} {:>10} {:>9} {:>9} {:>7} {:>12} {:>10}",
        "target",
        "samples/s",
        "CPU-s/M samp",
        "M samp/CPU-s",
        "peak RSS",
        "p50",
        "p99",
        "errors",
        "vs prom eff",
        "RSS/prom"
    );
    for r in results {
        let eff = r.samples as f64 / r.cpu.max(1e-9);
        let (pe, prss, _) = prom.unwrap_or((eff, r.rss, r.p99));
        println!(
            "{:<24} {:>12.0} {:>14.3} {:>12.3} {:>9.0}M {:>9.1?} {:>9.1?} {:>7} {:>11.2}x {:>9.2}x",
            r.name,
            r.samples as f64 / r.secs,
            r.cpu / (r.samples as f64 / 1e6),
            eff / 1e6,
            r.rss as f64 / (1 << 20) as f64,
            r.p50,
            r.p99,
            r.errors,
            eff / pe,
            r.rss as f64 / prss.max(1) as f64
        );
    }
    for r in results {
        let each: Vec<String> = r
            .rss_each
            .iter()
            .map(|b| format!("{:.0}M", *b as f64 / (1 << 20) as f64))
            .collect();
        println!("peak RSS per process, {}: {}", r.name, each.join(" + "));
    }
    println!(
        "RSS per active series (peak / series): {}",
        results
            .iter()
            .map(|r| format!("{} {:.0} B", r.name, r.rss as f64 / o.series as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // What the series cost beyond the processes' footprint when idle (binary, runtimes).
    println!(
        "RSS growth per active series ((peak - idle) / series): {}",
        results
            .iter()
            .map(|r| {
                let grown = r.rss.saturating_sub(r.rss_idle) as f64 / o.series as f64;
                format!("{} {grown:.0} B", r.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
}
