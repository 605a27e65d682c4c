//! Running `rimir` processes in tests: spawn with free loopback ports, wait for `/ready`, push
//! remote-write requests, flush, and read back what landed in a filesystem bucket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rimir_tsdb::api::remote_write::{Label, PbSample, TimeSeries, WriteRequest};

use crate::{ChildGuard, free_port, run_ok, workspace_bin};

/// An HTTP agent that returns every status as a response and never waits long.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent()
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

/// A remote-write request from `(labels, samples)` pairs; labels are sorted here.
pub fn write_request(series: &[(Vec<(&str, String)>, Vec<(i64, f64)>)]) -> Vec<u8> {
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
                }
            })
            .collect(),
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
    /// Its log file.
    pub log: PathBuf,
    child: Option<ChildGuard>,
}

impl Rimir {
    /// Starts `rimir` with `args` plus free HTTP/gRPC ports on 127.0.0.1 (unless `grpc_port` is
    /// given), logging into `log_dir`.
    pub fn start(args: &[String], grpc_port: Option<u16>, log_dir: &Path, name: &str) -> Self {
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
        let child = Command::new(workspace_bin("rimir"))
            .args(&self.args)
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
            assert!(status.success(), "rimir exited with {status}:\n{}", self.log_text());
        }
    }

    /// Starts the process again with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// POSTs a snappy remote-write body to `/api/v1/push`.
    pub fn push(&self, tenant: Option<&str>, body: &[u8]) -> (u16, String) {
        let mut h = vec![("Content-Encoding", "snappy"), ("Content-Type", "application/x-protobuf")];
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

/// `promtool tsdb dump` of a directory of blocks, as sorted lines.
pub fn promtool_dump(db_dir: &Path) -> Vec<String> {
    let out = run_ok(
        Command::new("promtool")
            .args(["tsdb", "dump"])
            .arg(db_dir),
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    lines.sort();
    lines.dedup();
    lines
}
