//! Test support: a moto server on a free loopback port, killed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::Credentials;

use super::Aws;
use crate::metrics::Metrics;

/// A running `moto_server`.
pub(crate) struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub(crate) endpoint: String,
}

impl Moto {
    /// Starts moto and waits until it answers.
    pub(crate) fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server on PATH (pip install 'moto[server]')");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// An [`Aws`] pointed at this moto with the root test credentials.
    pub(crate) async fn aws(&self) -> Aws {
        self.aws_with(Credentials::new("testing", "testing", None, None, "test"))
            .await
    }

    /// An [`Aws`] pointed at this moto with given credentials.
    pub(crate) async fn aws_with(&self, creds: Credentials) -> Aws {
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(creds)
            .load()
            .await;
        Aws::from_config(conf, Some(self.endpoint.clone()), Arc::new(Metrics::new()))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
