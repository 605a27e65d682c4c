//! A real Prometheus 2.42 for tests and benchmarks: started on a free loopback port with an
//! empty scrape config and the remote-write receiver, fed by remote write (protobuf and snappy
//! encoded here, so stale markers' exact NaN bits arrive), queried over its HTTP API, killed on
//! drop. Included with `#[path]` by the differential test and the benchmark.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rimir_tsdb::series::Series;
use serde_json::Value as Json;

/// A Prometheus process on a free loopback port, killed on drop.
pub struct Prometheus {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// An HTTP client that returns error statuses as responses.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Starts Prometheus with `extra` flags and waits until it is ready.
pub fn start_prometheus(extra: &[&str]) -> Prometheus {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 15s\n").expect("write config");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start prometheus (is Prometheus 2.42 installed?)");
    let p = Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let a = agent();
    loop {
        if let Ok(r) = a.get(format!("{}/-/ready", p.base)).call()
            && r.status() == 200
        {
            return p;
        }
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Appends a protobuf varint.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends a length-delimited protobuf field.
pub fn put_bytes_field(buf: &mut Vec<u8>, field: u64, data: &[u8]) {
    put_varint(buf, (field << 3) | 2);
    put_varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// A remote-write 1.0 `WriteRequest`, protobuf-encoded by hand.
pub fn write_request(data: &[Series]) -> Vec<u8> {
    let mut req = Vec::new();
    for s in data {
        let mut ts = Vec::new();
        for l in s.labels.iter() {
            let mut lb = Vec::new();
            put_bytes_field(&mut lb, 1, l.name.as_bytes());
            put_bytes_field(&mut lb, 2, l.value.as_bytes());
            put_bytes_field(&mut ts, 1, &lb);
        }
        for &(t, v) in &s.samples {
            let mut sb = Vec::new();
            put_varint(&mut sb, (1 << 3) | 1);
            sb.extend_from_slice(&v.to_bits().to_le_bytes());
            put_varint(&mut sb, 2 << 3);
            put_varint(&mut sb, t as u64);
            put_bytes_field(&mut ts, 2, &sb);
        }
        put_bytes_field(&mut req, 1, &ts);
    }
    req
}

/// Snappy block format using literals only (valid, uncompressed).
pub fn snappy_literal(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 60_000 * 5 + 16);
    put_varint(&mut out, data.len() as u64);
    for chunk in data.chunks(65_536) {
        let n = chunk.len() - 1;
        if n < 60 {
            out.push((n as u8) << 2);
        } else if n < 256 {
            out.push(60 << 2);
            out.push(n as u8);
        } else {
            out.push(61 << 2);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        out.extend_from_slice(chunk);
    }
    out
}

/// Remote-writes `data` in one request.
pub fn push(p: &Prometheus, data: &[Series]) {
    push_body(p, &snappy_literal(&write_request(data)));
}

/// Remote-writes a snappy-compressed `WriteRequest`.
pub fn push_body(p: &Prometheus, body: &[u8]) {
    let mut r = agent()
        .post(format!("{}/api/v1/write", p.base))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .send(body)
        .expect("remote write to prometheus");
    let status = r.status();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    assert!(status.is_success(), "remote write: {status} {text}");
}

/// Outcome of one query: an error or the `data` object.
#[derive(Debug)]
pub enum Answer {
    /// The API's error message.
    Error(String),
    /// The `data` object.
    Data(Json),
}

/// Runs an API query (`query`, `query_range`, …) with GET parameters.
pub fn prometheus_query(p: &Prometheus, path: &str, params: &[(&str, String)]) -> Answer {
    let mut req = agent().get(format!("{}/api/v1/{path}", p.base));
    for (k, v) in params {
        req = req.query(*k, v);
    }
    let mut r = req.call().expect("query prometheus");
    let text = r.body_mut().read_to_string().expect("read prometheus body");
    let v: Json = serde_json::from_str(&text).expect("prometheus json");
    if v["status"] == "success" {
        Answer::Data(v["data"].clone())
    } else {
        Answer::Error(v["error"].as_str().unwrap_or("").to_string())
    }
}
