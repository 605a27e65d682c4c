//! Support code for rimir's end-to-end tests: locating the binaries under test and the
//! reference tools (promtool, prometheus), and child processes that die with the test.
//!
//! [`moto::MotoServer`] is a throw-away S3 (and IAM/STS) endpoint on 127.0.0.1 for tests of the
//! `s3` object-store backend, the compactor and the operator.
//!
//! [`fake_apiserver::FakeApiServer`] is an in-memory Kubernetes API server (also the
//! `fake-apiserver` binary) for the operator and kubectl; see `tests/README.md`.

pub mod fake_apiserver;
pub mod moto;
pub mod rimir;

use std::path::PathBuf;
use std::process::{Child, Command, Output};

/// Path of a binary built from this workspace (`rimir`, `rimir-operator`, …), next to the test
/// executable's `deps/` directory. `cargo test --workspace` builds them before running tests.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps layout");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is not built; run the suite with `cargo test --workspace`",
        p.display()
    );
    p
}

/// Runs a command to completion, panicking with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("spawn {cmd:?}: {e} (is it installed? tests/run.sh installs it)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Serves one page with `content_type` to every request, forever, on a background thread (a
/// scrape target for a real Prometheus); returns its port on 127.0.0.1.
pub fn serve_page(content_type: &'static str, page: String) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind target");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    port
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}
