//! The `rimir-operator` binary: `run` (default) the controller, `crd` print the CRD,
//! `render -f FILE` print what a MimirCluster would create.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rimir_operator::aws::Aws;
use rimir_operator::controller::{self, Context};
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
        let aws = Aws::from_env(args.aws_endpoint_url, metrics.clone()).await;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(%addr, ?resync, "rimir-operator starting");
        let server = tokio::spawn(serve(listener, metrics.clone()));
        let ctx = Arc::new(Context::new(client, aws, metrics, resync));
        controller::run(ctx, args.concurrency).await;
        server.abort();
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
