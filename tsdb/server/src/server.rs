//! The `rimir` process: starts the roles `--target` selects, the HTTP server (push, `/ready`,
//! `/metrics`, `/config`, `/ingester/flush`) and the ingester's gRPC server, and stops them
//! gracefully on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;

use rimir_core::BoxFuture;
use rimir_core::config::{Config, Target};
use rimir_core::grpc::{IngesterServer, IngesterService};
use rimir_core::metrics::Metrics;
use rimir_core::pool::IngesterPool;
use rimir_core::runtime::RuntimeLimits;
use rimir_distributor::Distributor;
use rimir_ingester::ingester::Ingester;
use rimir_ingester::storage::Storage;

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// `HTTP` or `gRPC`.
        what: &'static str,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] rimir_core::config::ConfigError),
    /// The storage engine could not be set up.
    #[error("setting up storage: {0}")]
    Storage(String),
    /// The runtime-config file is unusable at start.
    #[error(transparent)]
    RuntimeConfig(#[from] rimir_core::runtime::RuntimeConfigError),
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The distributor, when this process runs one.
    pub distributor: Option<Arc<Distributor>>,
    /// The ingester, when this process runs one.
    pub ingester: Option<Arc<Ingester>>,
    /// The compactor, when this process runs one.
    pub compactor: Option<Arc<rimir_compactor::Compactor>>,
}

/// The HTTP routes of the write path and the process endpoints. The querier's Prometheus API
/// routes are merged beside these by the caller.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/push", post(push).get(push_healthcheck))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/ingester/flush", post(flush).get(flush))
        .route("/compactor/status", get(compactor_status))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn push(State(s): State<AppState>, req: Request) -> Response {
    let Some(d) = s.distributor.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "this process does not run the distributor\n",
        )
            .into_response();
    };
    let (parts, body) = req.into_parts();
    let limit = s.config.distributor.max_recv_msg_size;
    let body = match axum::body::to_bytes(body, limit + 1).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body exceeds the limit of {limit} bytes (distributor.max_recv_msg_size)\n"
                ),
            )
                .into_response();
        }
    };
    let org = header_str(&parts.headers, "x-scope-orgid");
    let ct = header_str(&parts.headers, "content-type");
    let enc = header_str(&parts.headers, "content-encoding");
    let r = d.push(org, ct, enc, &body).await;
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if r.status != 200 {
        tracing::debug!(status = r.status, message = %r.message, "push refused");
    }
    let mut msg = r.message;
    if !msg.is_empty() {
        msg.push('\n');
    }
    (status, msg).into_response()
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The compactor's settings and the jobs it last skipped for lack of disk.
async fn compactor_status(State(s): State<AppState>) -> Response {
    match &s.compactor {
        Some(c) => c.status_text().into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this process does not run the compactor\n",
        )
            .into_response(),
    }
}

/// Vector's default healthcheck GETs the push URL.
async fn push_healthcheck(State(s): State<AppState>) -> Response {
    if s.distributor.is_none() {
        return (
            StatusCode::NOT_FOUND,
            "this process does not run the distributor\n",
        )
            .into_response();
    }
    "ok\n".into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    if let Some(i) = &s.ingester
        && !i.is_ready()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "ingester: replaying the WAL\n",
        )
            .into_response();
    }
    if let Some(d) = &s.distributor
        && d.pool().ring().instances().is_empty()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "distributor: no ingesters in the ring\n",
        )
            .into_response();
    }
    "ready\n".into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn config(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/yaml; charset=utf-8")],
        s.config.to_yaml(),
    )
        .into_response()
}

async fn flush(State(s): State<AppState>) -> Response {
    let Some(i) = &s.ingester else {
        return (
            StatusCode::NOT_FOUND,
            "this process does not run an ingester\n",
        )
            .into_response();
    };
    match i.cut_and_ship(true).await {
        Ok(n) => (StatusCode::OK, format!("flushed: {n} blocks shipped\n")).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("flush failed: {e}\n"),
        )
            .into_response(),
    }
}

/// A running server; dropping it does not stop it, call [`Running::shutdown`].
pub struct Running {
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The bound gRPC address, when this process serves gRPC.
    pub grpc_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ingester: Option<Arc<Ingester>>,
    flush_on_shutdown: bool,
}

impl Running {
    /// Stops accepting requests, waits for in-flight ones, and closes the heads (shipping every
    /// block first when `blocks_storage.tsdb.flush_blocks_on_shutdown` is set).
    pub fn shutdown(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.stop.send(true);
            for t in self.tasks {
                let _ = t.await;
            }
            if let Some(i) = self.ingester
                && self.flush_on_shutdown
                && let Err(e) = i.cut_and_ship(true).await
            {
                tracing::warn!(error = %e, "flushing blocks on shutdown");
            }
        })
    }
}

/// Builds the ingester's engine from the config and the limits in force
/// ([`rimir_ingester::storage::open`], or an in-memory stand-in in tests).
pub type OpenStorage =
    Box<dyn FnOnce(&Config, &Arc<RuntimeLimits>) -> Result<Storage, String> + Send>;

/// Starts every role of `cfg.target`; `storage` builds the ingester's engine.
///
/// Not generic on purpose: its body, which instantiates the HTTP and gRPC servers, is compiled
/// once in this crate instead of again in every binary and test that calls it.
pub fn start(
    cfg: Config,
    storage: OpenStorage,
) -> BoxFuture<'static, Result<Running, ServerError>> {
    Box::pin(async move {
        cfg.validate()?;
        let cfg = Arc::new(cfg);
        let metrics = Arc::new(Metrics::new());
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let limits = Arc::new(RuntimeLimits::load(cfg.clone())?);
        metrics.register_with(|r| limits.register(r));
        tasks.push(tokio::spawn(limits.clone().run(stop_rx.clone())));

        let ingester = if cfg.target.runs_ingester() {
            let (open, shipper) = storage(&cfg, &limits).map_err(ServerError::Storage)?;
            let ing = Arc::new(Ingester::new(&cfg, open, shipper, metrics.clone()));
            let replaying = ing.clone();
            tasks.push(tokio::spawn(async move {
                match tokio::task::spawn_blocking(move || replaying.replay()).await {
                    Ok(Ok(())) => tracing::info!("WAL replay done, ingester ready"),
                    Ok(Err(e)) => tracing::error!(error = %e, "WAL replay failed"),
                    Err(e) => tracing::error!(error = %e, "WAL replay panicked"),
                }
            }));
            let interval = cfg
                .blocks_storage
                .tsdb
                .head_compaction_interval
                .0
                .max(Duration::from_secs(1));
            tasks.push(tokio::spawn(ing.clone().run(interval, stop_rx.clone())));
            Some(ing)
        } else {
            None
        };

        let mut grpc_addr = None;
        if let Some(ing) = &ingester {
            let addr = format!(
                "{}:{}",
                cfg.server.http_listen_address, cfg.server.grpc_listen_port
            );
            let listener =
                tokio::net::TcpListener::bind(&addr)
                    .await
                    .map_err(|e| ServerError::Bind {
                        what: "gRPC",
                        addr: addr.clone(),
                        source: e,
                    })?;
            grpc_addr = listener.local_addr().ok();
            let svc: Arc<dyn IngesterService> = ing.clone();
            let server = IngesterServer::new(svc, cfg.distributor.max_recv_msg_size);
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let stopped = Box::pin(async move {
                    let _ = rx.wait_for(|s| *s).await;
                });
                if let Err(e) = server.serve(listener, stopped).await {
                    tracing::error!(error = %e, "gRPC server");
                }
            }));
        }

        let distributor = if cfg.target.runs_distributor() {
            let pool = match (&ingester, cfg.target) {
                (Some(ing), Target::All) => {
                    let svc: Arc<dyn IngesterService> = ing.clone();
                    IngesterPool::local(&cfg.ingester.ring.instance_id, svc, &cfg)
                }
                _ => IngesterPool::new(&cfg),
            };
            let pool = Arc::new(pool);
            if cfg.target != Target::All && !cfg.ingester.ring.join_members.is_empty() {
                tasks.push(tokio::spawn(refresh_members(
                    pool.clone(),
                    cfg.clone(),
                    stop_rx.clone(),
                )));
            }
            Some(Arc::new(Distributor::new(
                &cfg,
                limits.clone(),
                pool,
                metrics.clone(),
            )))
        } else {
            None
        };

        let compactor = if cfg.target.runs_compactor() {
            let c = Arc::new(open_compactor(&cfg).await?);
            metrics.register_with(|r| c.metrics().register(r));
            let (c2, every, mut rx) = (
                c.clone(),
                cfg.compactor
                    .compaction_interval
                    .0
                    .max(Duration::from_secs(1)),
                stop_rx.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Err(e) = c2.run_once().await {
                        tracing::error!(error = %e, "compaction run");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = rx.wait_for(|s| *s) => return,
                    }
                }
            }));
            Some(c)
        } else {
            None
        };

        let query_api = if cfg.target.runs_querier() {
            let pool = match (&ingester, cfg.target) {
                (Some(ing), Target::All) => {
                    let svc: Arc<dyn IngesterService> = ing.clone();
                    Arc::new(IngesterPool::local(
                        &cfg.ingester.ring.instance_id,
                        svc,
                        &cfg,
                    ))
                }
                _ => {
                    let pool = Arc::new(IngesterPool::new(&cfg));
                    if !cfg.ingester.ring.join_members.is_empty() {
                        tasks.push(tokio::spawn(refresh_members(
                            pool.clone(),
                            cfg.clone(),
                            stop_rx.clone(),
                        )));
                    }
                    pool
                }
            };
            let bucket =
                rimir_ingester::storage::bucket_config(&cfg).map_err(ServerError::Storage)?;
            let store = rimir_objstore::open_bucket(&bucket)
                .await
                .map_err(|e| ServerError::Storage(e.to_string()))?;
            let q = &cfg.querier;
            let cache = rimir_objstore::pagecache::PageCache::open(
                &q.cache_dir,
                rimir_objstore::pagecache::DEFAULT_PAGE_SIZE,
                q.cache_max_bytes,
                Default::default(),
            )
            .map_err(|e| ServerError::Storage(e.to_string()))?;
            metrics.register_with(|r| cache.metrics().register(r));
            let tenants = rimir_querier::querier::QuerierTenants::new(
                Some(pool),
                Some(store),
                Arc::new(cache),
                q.query_ingesters_within.0,
                tokio::runtime::Handle::current(),
            );
            let engine = rimir_promql::Engine {
                limits: rimir_promql::Limits {
                    max_fetched_series: q.max_fetched_series_per_query,
                    max_samples: q.max_samples,
                    timeout: q.timeout.0,
                },
                ..rimir_promql::Engine::default()
            };
            Some(rimir_querier::api::router(rimir_querier::api::ApiState {
                tenants: Arc::new(tenants),
                engine,
                multitenancy: cfg.multitenancy_enabled,
            }))
        } else {
            None
        };

        let addr = format!(
            "{}:{}",
            cfg.server.http_listen_address, cfg.server.http_listen_port
        );
        let listener =
            tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|e| ServerError::Bind {
                    what: "HTTP",
                    addr: addr.clone(),
                    source: e,
                })?;
        let http_addr = listener.local_addr().map_err(|e| ServerError::Bind {
            what: "HTTP",
            addr,
            source: e,
        })?;
        let app = router(AppState {
            config: cfg.clone(),
            metrics,
            distributor,
            ingester: ingester.clone(),
            compactor,
        });
        let app = match query_api {
            Some(q) => app.merge(q),
            None => app,
        };
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = rimir_core::process::serve_http(listener, app, rx).await {
                tracing::error!(error = %e, "HTTP server");
            }
        }));
        tracing::info!(target = %cfg.target, %http_addr, ?grpc_addr, "rimir started");
        Ok(Running {
            http_addr,
            grpc_addr,
            stop,
            tasks,
            ingester,
            flush_on_shutdown: cfg.blocks_storage.tsdb.flush_blocks_on_shutdown,
        })
    })
}

/// Re-resolves `ingester.ring.join_members` into `pool` every `dns_refresh_interval` (at least
/// 1s) until `stop` turns true.
async fn refresh_members(
    pool: Arc<IngesterPool>,
    cfg: Arc<Config>,
    mut stop: watch::Receiver<bool>,
) {
    let every = cfg
        .ingester
        .ring
        .dns_refresh_interval
        .0
        .max(Duration::from_secs(1));
    loop {
        pool.refresh(&cfg).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Opens the bucket and builds the compactor of `cfg`.
pub fn open_compactor(
    cfg: &Config,
) -> BoxFuture<'_, Result<rimir_compactor::Compactor, ServerError>> {
    Box::pin(async move {
        let settings = rimir_compactor::CompactorSettings::from_config(cfg)?;
        let bucket = rimir_ingester::storage::bucket_config(cfg).map_err(ServerError::Storage)?;
        let store = rimir_objstore::open_bucket(&bucket)
            .await
            .map_err(|e| ServerError::Storage(e.to_string()))?;
        Ok(rimir_compactor::Compactor::new(store, settings))
    })
}

pub use rimir_core::process::termination;

#[cfg(test)]
mod tests {
    use super::*;
    use rimir_ingester::ingester::testing::{DirShipper, MemTsdb};
    use rimir_ingester::ingester::{Shipper, Tsdb, TsdbOpener};

    fn mem_storage(bucket: std::path::PathBuf) -> OpenStorage {
        Box::new(move |_, _| {
            let open: Box<TsdbOpener> = Box::new(|_t: &str, _p: &std::path::Path| {
                Ok(Arc::new(MemTsdb::default()) as Arc<dyn Tsdb>)
            });
            Ok((open, Arc::new(DirShipper(bucket)) as Arc<dyn Shipper>))
        })
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        http(addr, "GET", path, &[], b"").await
    }

    /// A minimal HTTP/1.1 client (the test must not depend on an HTTP client crate).
    async fn http(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let status: u16 = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ingester_is_not_ready_until_wal_replay_finishes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tsdb/tenant-1/head")).unwrap();
        let mut cfg = Config {
            target: Target::Ingester,
            ..Default::default()
        };
        cfg.server.http_listen_address = "127.0.0.1".into();
        cfg.server.http_listen_port = 0;
        cfg.server.grpc_listen_port = 0;
        cfg.blocks_storage.tsdb.dir = d.path().join("tsdb");
        let bucket = d.path().join("bucket");
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(gate);
        let storage: OpenStorage = Box::new(move |_, _| {
            let open: Box<TsdbOpener> = Box::new(move |_t: &str, _p: &std::path::Path| {
                // Replay of the existing tenant blocks until the test releases it.
                let _ = gate.lock().unwrap().recv();
                Ok(Arc::new(MemTsdb::default()) as Arc<dyn Tsdb>)
            });
            Ok((open, Arc::new(DirShipper(bucket)) as Arc<dyn Shipper>))
        });
        let running = start(cfg, storage).await.unwrap();
        let (code, body) = get(running.http_addr, "/ready").await;
        assert_eq!(
            (code, body.as_str()),
            (503, "ingester: replaying the WAL\n")
        );
        release.send(()).unwrap();
        let mut code = 0;
        for _ in 0..100 {
            code = get(running.http_addr, "/ready").await.0;
            if code == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(code, 200);
        assert_eq!(
            get(running.http_addr, "/api/v1/push").await.0,
            404,
            "no distributor here"
        );
        running.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn all_in_one_serves_push_ready_metrics_config_and_flush() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.server.http_listen_address = "127.0.0.1".into();
        cfg.server.http_listen_port = 0;
        cfg.server.grpc_listen_port = 0;
        cfg.blocks_storage.tsdb.dir = d.path().join("tsdb");
        let running = start(cfg, mem_storage(d.path().join("bucket")))
            .await
            .unwrap();
        let addr = running.http_addr;
        for _ in 0..100 {
            if get(addr, "/ready").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(get(addr, "/ready").await, (200, "ready\n".into()));
        assert_eq!(get(addr, "/api/v1/push").await.0, 200);
        let (code, yaml) = get(addr, "/config").await;
        assert_eq!(code, 200);
        assert!(
            yaml.contains("http_listen_port: 0") && yaml.contains("retention_period: 13h"),
            "{yaml}"
        );

        use prost::Message;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let w = rimir_core::remote_write::WriteRequest {
            timeseries: vec![rimir_core::remote_write::TimeSeries {
                labels: vec![rimir_core::remote_write::Label {
                    name: "__name__".into(),
                    value: "up".into(),
                }],
                samples: vec![rimir_core::remote_write::PbSample {
                    value: 1.0,
                    timestamp: now,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&w.encode_to_vec())
            .unwrap();
        let (code, msg) = http(
            addr,
            "POST",
            "/api/v1/push",
            &[("Content-Encoding", "snappy")],
            &body,
        )
        .await;
        assert_eq!(code, 200, "{msg}");
        let (code, _) = http(addr, "POST", "/api/v1/push", &[], b"junk").await;
        assert_eq!(code, 400);
        let (code, text) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            text.contains("rimir_distributor_received_samples_total{user=\"anonymous\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rimir_ingester_active_series{user=\"anonymous\"} 1"),
            "{text}"
        );
        let (code, msg) = http(addr, "POST", "/ingester/flush", &[], b"").await;
        assert_eq!((code, msg.as_str()), (200, "flushed: 1 blocks shipped\n"));
        assert_eq!(
            std::fs::read_dir(d.path().join("bucket/anonymous"))
                .unwrap()
                .count(),
            1
        );
        running.shutdown().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "HTTP listener closed"
        );
    }
}
