//! A moto server (PyPI `moto[server]`, installed by `tests/run.sh`) as a private AWS endpoint for
//! one test: S3, IAM and STS on a free port of 127.0.0.1, killed when the value is dropped.
//!
//! ```no_run
//! # async fn demo() {
//! use rimir_e2e::moto::MotoServer;
//! // One server per test, or `MotoServer::shared()` to share one between concurrent tests.
//! let moto = MotoServer::start();
//! moto.create_bucket("blocks").await;
//! // An `s3` bucket config as a user would write it, pointed at moto:
//! let config = moto.s3_config("blocks");
//! let store = rimir_objstore::S3Store::new(&config, &moto.sdk_config()).unwrap();
//! // Other AWS clients (IAM, STS) take the same SdkConfig:
//! //   aws_sdk_iam::Client::new(&moto.sdk_config())
//! # }
//! ```
//!
//! Credentials: moto accepts any; the literal dummy values [`ACCESS_KEY_ID`]/[`SECRET_ACCESS_KEY`]
//! are put into the child's environment and into [`MotoServer::sdk_config`], never into the test
//! process' environment, so nothing else in the process sees AWS credentials. A process under
//! test that reads credentials from its environment (e.g. `rimir` with `backend: s3`) gets them
//! from [`child_env`].

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};

use crate::{ChildGuard, free_port};

/// Dummy access key moto is started with and clients sign with (not a secret).
pub const ACCESS_KEY_ID: &str = "testing";
/// Dummy secret key (not a secret).
pub const SECRET_ACCESS_KEY: &str = "testing";
/// Region the clients use.
pub const REGION: &str = "us-east-1";

/// How long moto may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `moto_server`, killed and reaped on drop.
pub struct MotoServer {
    child: ChildGuard,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl MotoServer {
    /// A server shared by the tests of this test binary that run at the same time: started by
    /// the first caller, killed when the last `Arc` is dropped (a later caller starts a new
    /// one). Saves moto's start-up (seconds) per test; tests sharing it must use their own
    /// bucket names and not count account-wide resources — use [`MotoServer::start`] for that.
    pub fn shared() -> Arc<MotoServer> {
        static SHARED: Mutex<Weak<MotoServer>> = Mutex::new(Weak::new());
        let mut slot = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(server) = slot.upgrade() {
            return server;
        }
        let server = Arc::new(MotoServer::start());
        *slot = Arc::downgrade(&server);
        server
    }

    /// Starts `moto_server -H 127.0.0.1 -p <free port>` and waits until it answers HTTP.
    /// Panics (with moto's log) when it cannot be started; tests/run.sh installs it.
    pub fn start() -> MotoServer {
        let mut last_error = String::new();
        // A free port can be taken between probing and moto's bind; retry on another one.
        for _ in 0..3 {
            match Self::try_start() {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("moto_server did not start: {last_error}");
    }

    fn try_start() -> Result<MotoServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("create {log:?}: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let port = free_port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in child_env() {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| {
            format!("spawn moto_server: {e} (install it with `pip install 'moto[server]'`)")
        })?;
        let mut server = MotoServer {
            child: ChildGuard(child),
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.0.try_wait() {
                return Err(format!("exited with {status}:\n{}", server.log_text()));
            }
            if server.answers() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer on port {port} within {START_TIMEOUT:?}:\n{}",
                    server.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True once moto answers an HTTP request (any status).
    fn answers(&self) -> bool {
        if TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return false;
        }
        match ureq::get(&self.endpoint()).call() {
            Ok(_) | Err(ureq::Error::StatusCode(_)) => true,
            Err(_) => false,
        }
    }

    /// Everything moto logged so far (its request log), for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An AWS SDK config for any service client (S3, IAM, STS): moto's endpoint, [`REGION`] and
    /// the dummy credentials.
    pub fn sdk_config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "moto-test",
            )))
            .build()
    }

    /// A `blocks_storage.s3` config for `bucket` as a user would write it for an S3-compatible
    /// store: `host:port` endpoint, `insecure: true` (plain HTTP), path-style addressing.
    pub fn s3_config(&self, bucket: &str) -> rimir_objstore::S3Config {
        rimir_objstore::S3Config {
            bucket_name: bucket.to_string(),
            region: REGION.to_string(),
            endpoint: format!("127.0.0.1:{}", self.port),
            insecure: true,
            ..Default::default()
        }
    }

    /// A plain S3 client on moto, for setting up or inspecting state behind the code under test.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(&self.sdk_config())
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Creates bucket `name` (in [`REGION`]).
    pub async fn create_bucket(&self, name: &str) {
        self.s3_client()
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| {
                use aws_sdk_s3::error::ProvideErrorMetadata;
                panic!(
                    "CreateBucket {name}: {} {}",
                    e.code().unwrap_or("(no code)"),
                    e.message().unwrap_or_default()
                )
            });
    }
}

/// Environment for a child process that should reach moto through the AWS SDK default chain:
/// dummy credentials and [`REGION`], and no instance-metadata lookups (which would leave
/// loopback).
pub fn child_env() -> [(&'static str, &'static str); 4] {
    [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    // The only user of `shared()` in this binary; another concurrent user would keep it alive.
    #[test]
    fn shared_server_is_reused_and_killed_after_the_last_user() {
        let a = MotoServer::shared();
        let b = MotoServer::shared();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.answers());
        let port = a.port();
        drop(a);
        assert!(b.answers(), "killed while still in use");
        drop(b);
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "moto still listening on {port} after drop"
        );
    }
}
