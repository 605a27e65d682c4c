//! An in-memory Kubernetes API server for end-to-end tests: real REST paths and wire formats
//! (discovery, CRUD, list/watch with resourceVersion and bookmarks, merge/JSON/strategic/apply
//! patches, status subresource, generation, finalizers, ownerReference garbage collection,
//! CRDs served as soon as they are created, Table output for kubectl), plain HTTP on loopback,
//! no authentication.
//!
//! Start one with [`FakeApiServer::start`] and point a client at [`FakeApiServer::kubeconfig`];
//! the `fake-apiserver` binary does the same from the command line. Simplifications against a
//! real API server are listed in `tests/README.md`.

mod clock;
pub mod errors;
mod http;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod selectors;
pub mod store;
pub mod table;
mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use store::{Store, StoreConfig};

/// How the fake API server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Store tunables (watch history length).
    pub store: StoreConfig,
    /// Interval of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Print one line per request to stderr (the binary turns this on with
    /// `FAKE_APISERVER_LOG=1`).
    pub log_requests: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            store: StoreConfig::default(),
            bookmark_interval: Duration::from_secs(5),
            log_requests: false,
        }
    }
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    store: Arc<Store>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Binds `127.0.0.1` on a free port and serves in the current tokio runtime.
    pub async fn start(config: ServerConfig) -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        FakeApiServer::serve(listener, config)
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: TcpListener, config: ServerConfig) -> std::io::Result<FakeApiServer> {
        let addr = listener.local_addr()?;
        let store = Arc::new(Store::new(config.store));
        let app = Arc::new(http::App {
            store: store.clone(),
            bookmark_interval: config.bookmark_interval,
            log_requests: config.log_requests,
        });
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served =
                axum::serve(listener, http::router(app)).with_graceful_shutdown(async move {
                    let _ = rx.await;
                });
            if let Err(e) = served.await {
                eprintln!("fake-apiserver: serving stopped: {e}");
            }
        });
        Ok(FakeApiServer {
            addr,
            store,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The store, for tests that want to look behind the API.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    /// Stops serving and waits for the server task to end. Open watches are cut.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A kubeconfig with one cluster, user (no credentials) and context named `fake`, whose
/// default namespace is `default`.
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
users:
- name: fake
  user: {{}}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
preferences: {{}}
"
    )
}
