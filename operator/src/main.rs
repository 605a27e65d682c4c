//! The `rimir-operator` binary: `run` (default) the controller, `crd` print the CRD,
//! `render -f FILE` print what a MimirCluster would create.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rimir_operator::aws::Aws;
use rimir_operator::controller::{self, Context};
use rimir_operator::leader::{Elector, LeaseConfig};
use rimir_operator::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "rimir-operator",
    about = "Kubernetes operator for rimir MimirClusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default): reconcile MimirClusters, serve /metrics.
    Run(RunArgs),
    /// Print the MimirCluster CRD as YAML.
    Crd,
    /// Print every Kubernetes object and AWS document a MimirCluster would create, offline.
    Render {
        /// The MimirCluster manifest (`-` for stdin).
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
}

#[derive(Parser, Default)]
struct RunArgs {
    /// Address of the HTTP server for /metrics and /health.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_address: String,
    /// How often every MimirCluster is reconciled again to correct drift (e.g. `5m`, `30s`).
    #[arg(long, default_value = "5m")]
    resync_interval: String,
    /// How many MimirClusters reconcile at the same time.
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// Send every AWS request to this endpoint (S3-compatible store or moto in tests); otherwise
    /// the SDK's endpoints (and `AWS_ENDPOINT_URL`) apply.
    #[arg(long)]
    aws_endpoint_url: Option<String>,
    /// Elect one reconciling replica through a Lease, so several can run (`--leader-elect=false`
    /// to reconcile without one).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "rimir-operator")]
    leader_election_id: String,
    /// Namespace of the Lease (default: `$POD_NAMESPACE`, else the kubeconfig's namespace).
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// How long the lease is valid without renewal.
    #[arg(long, default_value = "15s")]
    leader_election_lease_duration: String,
    /// How long the leader tries to renew before giving leadership up.
    #[arg(long, default_value = "10s")]
    leader_election_renew_deadline: String,
    /// Pause between attempts to acquire or renew the lease.
    #[arg(long, default_value = "2s")]
    leader_election_retry_period: String,
}

/// Parses a duration flag like `15s`.
fn duration_flag(name: &str, value: &str) -> anyhow::Result<Duration> {
    rimir_operator::crd::parse_duration(value)
        .with_context(|| format!("--{name} {value:?} is not a duration like 15s"))
}

/// The election settings from the flags, `None` with `--leader-elect=false`.
fn lease_config(args: &RunArgs, client: &kube::Client) -> anyhow::Result<Option<LeaseConfig>> {
    if !args.leader_elect {
        return Ok(None);
    }
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{:08x}", host.trim(), rand_u32())
        });
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| client.default_namespace().to_string());
    let cfg = LeaseConfig {
        namespace,
        name: args.leader_election_id.clone(),
        identity,
        lease_duration: duration_flag(
            "leader-election-lease-duration",
            &args.leader_election_lease_duration,
        )?,
        renew_deadline: duration_flag(
            "leader-election-renew-deadline",
            &args.leader_election_renew_deadline,
        )?,
        retry_period: duration_flag(
            "leader-election-retry-period",
            &args.leader_election_retry_period,
        )?,
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    Ok(Some(cfg))
}

/// A few random bits for an identity outside a pod (no RNG crate for this).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => print!("{}", rimir_operator::crd::crd_yaml()),
        Some(Command::Render { file }) => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            print!("{}", rimir_operator::render::render(&text)?);
        }
        Some(Command::Run(args)) => run(args)?,
        None => run(RunArgs::parse_from(["run"]))?,
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // Both ring (kube) and aws-lc-rs (AWS SDK) are linked, so rustls cannot choose by itself.
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let resync = rimir_operator::crd::parse_duration(&args.resync_interval)
        .filter(|d| *d >= Duration::from_millis(100))
        .with_context(|| {
            format!(
                "--resync-interval {:?} is not a duration like 5m",
                args.resync_interval
            )
        })?;
    let addr: SocketAddr = args
        .metrics_address
        .parse()
        .with_context(|| format!("--metrics-address {:?}", args.metrics_address))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes")?;
        let aws = Aws::from_env(args.aws_endpoint_url.clone(), metrics.clone()).await;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(%addr, ?resync, "rimir-operator starting");
        let server = tokio::spawn(serve(listener, metrics.clone()));
        let election = lease_config(&args, &client)?;
        let ctx = Arc::new(Context::new(client.clone(), aws, metrics.clone(), resync));
        let Some(cfg) = election else {
            metrics.leader.set(1);
            controller::run(ctx, args.concurrency).await;
            server.abort();
            return anyhow::Ok(());
        };
        let mut elector = Elector::new(client, cfg);
        tracing::info!(
            lease = %elector.config().name,
            namespace = %elector.config().namespace,
            identity = %elector.config().identity,
            "waiting to become the leader"
        );
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown_signal() => {
                server.abort();
                return anyhow::Ok(());
            }
        }
        tracing::info!(identity = %elector.config().identity, "became the leader");
        metrics.leader.set(1);
        let lost = tokio::select! {
            _ = controller::run(ctx, args.concurrency) => false,
            _ = elector.keep() => true,
        };
        metrics.leader.set(0);
        server.abort();
        if lost {
            anyhow::bail!(
                "lost the leader lease {}/{}: exiting so that this replica restarts as a follower",
                elector.config().namespace,
                elector.config().name
            );
        }
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %e, "releasing the leader lease");
        }
        anyhow::Ok(())
    })
}

async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/health", get(|| async { "ok" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}
