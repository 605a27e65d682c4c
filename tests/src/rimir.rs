//! Running `rimir` processes in tests: spawn with free loopback ports, wait for `/ready`, push
//! remote-write requests, flush, and read back what landed in a filesystem bucket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rimir::remote_write::{Label, PbSample, TimeSeries, WriteRequest};

use crate::{ChildGuard, free_port, run_ok, workspace_bin};

/// The `rimir` binary: beside this executable (a binary such as `rimir-loadgen`) or beside its
/// `deps/` directory (a test).
pub fn rimir_bin() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("rimir")))
        .filter(|p| p.is_file());
    beside.unwrap_or_else(|| workspace_bin("rimir"))
}

/// An HTTP agent that returns every status as a response and never waits long.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent()
}

/// The values of metric `name`'s samples (every line starting with it, labels or not) in a
/// Prometheus text exposition.
pub fn metric_values<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(move |l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// GETs a URL: (status, body).
pub fn get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// POSTs `body` with headers: (status, body); status 0 when the connection failed.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.send(body) {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// One series to push: label pairs (any order) and samples.
pub type SeriesSpec<'a> = (Vec<(&'a str, String)>, Vec<(i64, f64)>);

/// A remote-write request from `(labels, samples)` pairs; labels are sorted here.
pub fn write_request(series: &[SeriesSpec<'_>]) -> Vec<u8> {
    WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| {
                let mut labels: Vec<Label> = labels
                    .iter()
                    .map(|(n, v)| Label {
                        name: n.to_string(),
                        value: v.clone(),
                    })
                    .collect();
                labels.sort_by(|a, b| a.name.cmp(&b.name));
                TimeSeries {
                    labels,
                    samples: samples
                        .iter()
                        .map(|&(timestamp, value)| PbSample { value, timestamp })
                        .collect(),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_bytes()
}

/// Snappy block format, as Prometheus sends.
pub fn snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(raw)
        .expect("snappy compress")
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// One `rimir` process.
pub struct Rimir {
    /// HTTP base URL.
    pub url: String,
    /// gRPC port.
    pub grpc_port: u16,
    /// The arguments it was started with (to restart it).
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Its log file.
    pub log: PathBuf,
    child: Option<ChildGuard>,
}

impl Rimir {
    /// Starts `rimir` with `args` plus free HTTP/gRPC ports on 127.0.0.1 (unless `grpc_port` is
    /// given), logging into `log_dir`.
    pub fn start(args: &[String], grpc_port: Option<u16>, log_dir: &Path, name: &str) -> Self {
        Self::start_with_env(args, grpc_port, log_dir, name, &[])
    }

    /// [`Rimir::start`] with extra environment variables (e.g. AWS credentials for moto).
    pub fn start_with_env(
        args: &[String],
        grpc_port: Option<u16>,
        log_dir: &Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let http = free_port();
        let grpc = grpc_port.unwrap_or_else(free_port);
        let mut all = vec![
            "--server.http-listen-address=127.0.0.1".to_string(),
            format!("--server.http-listen-port={http}"),
            format!("--server.grpc-listen-port={grpc}"),
        ];
        all.extend(args.iter().cloned());
        let mut r = Rimir {
            url: format!("http://127.0.0.1:{http}"),
            grpc_port: grpc,
            args: all,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
        };
        r.spawn();
        r
    }

    /// A handle on a process started elsewhere (pushes only).
    pub fn attach(url: &str) -> Self {
        Rimir {
            url: url.to_string(),
            grpc_port: 0,
            args: Vec::new(),
            env: Vec::new(),
            log: PathBuf::new(),
            child: None,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        // Relative default directories (`./data/...`) land beside the log, not in the checkout.
        let cwd = self.log.parent().map(Path::to_path_buf).unwrap_or_default();
        let child = Command::new(rimir_bin())
            .current_dir(cwd)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rimir");
        self.child = Some(ChildGuard(child));
    }

    /// Waits until `/ready` answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if get(&format!("{}/ready", self.url)).0 == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rimir at {} not ready; log:\n{}",
                self.url,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process' log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.0.id())
    }

    /// SIGKILLs the process.
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut g) = self.child.take() {
            let pid = g.0.id().to_string();
            run_ok(Command::new("kill").args(["-TERM", &pid]));
            let status = g.0.wait().expect("wait rimir");
            assert!(
                status.success(),
                "rimir exited with {status}:\n{}",
                self.log_text()
            );
        }
    }

    /// Starts the process again with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// POSTs a snappy remote-write body to `/api/v1/push`.
    pub fn push(&self, tenant: Option<&str>, body: &[u8]) -> (u16, String) {
        let mut h = vec![
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
        ];
        if let Some(t) = tenant {
            h.push(("X-Scope-OrgID", t));
        }
        post(&format!("{}/api/v1/push", self.url), &h, body)
    }

    /// `POST /ingester/flush`, asserting success.
    pub fn flush(&self) {
        let (code, msg) = post(&format!("{}/ingester/flush", self.url), &[], b"");
        assert_eq!(code, 200, "flush: {msg}\n{}", self.log_text());
    }
}

/// The block directories (with `meta.json`) of `tenant` in a filesystem bucket.
pub fn bucket_blocks(bucket: &Path, tenant: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(bucket.join(tenant))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("meta.json").is_file())
        .collect();
    v.sort();
    v
}

/// `promtool tsdb dump` of a directory of blocks (or a Prometheus data directory), as sorted,
/// deduplicated lines. A bucket prefix has no `wal/`, which promtool needs: its blocks are
/// copied into a scratch directory that has one (promtool skips symlinked block directories).
pub fn promtool_dump(db_dir: &Path) -> Vec<String> {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let dir = if db_dir.join("wal").is_dir() {
        db_dir.to_path_buf()
    } else {
        std::fs::create_dir(scratch.path().join("wal")).expect("mkdir wal");
        for b in std::fs::read_dir(db_dir).expect("list blocks").flatten() {
            if b.path().join("meta.json").is_file() {
                copy_dir(&b.path(), &scratch.path().join(b.file_name()));
            }
        }
        scratch.path().to_path_buf()
    };
    let out = run_ok(Command::new("promtool").args(["tsdb", "dump"]).arg(&dir));
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy file");
        }
    }
}
