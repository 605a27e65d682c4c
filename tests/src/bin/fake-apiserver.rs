//! `fake-apiserver`: runs the in-memory Kubernetes API server on loopback and prints (or
//! writes) a kubeconfig pointing at it.
//!
//! ```text
//! fake-apiserver [--listen 127.0.0.1:PORT] [--kubeconfig-out FILE]
//!                [--watch-history N] [--bookmark-interval SECONDS] [--simulate-workloads]
//! ```
//!
//! `--simulate-workloads` makes StatefulSets and Deployments report all replicas ready.
//!
//! `FAKE_APISERVER_LOG=1` logs every request to stderr.

use std::time::Duration;

use rimir_e2e::fake_apiserver::{FakeApiServer, ServerConfig};

const USAGE: &str = "usage: fake-apiserver [--listen 127.0.0.1:PORT] [--kubeconfig-out FILE] \
                     [--watch-history N] [--bookmark-interval SECONDS] [--simulate-workloads]";

struct Args {
    listen: String,
    kubeconfig_out: Option<String>,
    config: ServerConfig,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:0".into(),
        kubeconfig_out: None,
        config: ServerConfig::default(),
    };
    args.config.log_requests = std::env::var("FAKE_APISERVER_LOG").is_ok_and(|v| v == "1");
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        if flag == "--simulate-workloads" {
            args.config.store.simulate_workloads = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--listen" => args.listen = value,
            "--kubeconfig-out" => args.kubeconfig_out = Some(value),
            "--watch-history" => {
                args.config.store.history_limit = value
                    .parse()
                    .map_err(|e| format!("--watch-history {value:?}: {e}"))?
            }
            "--bookmark-interval" => {
                let secs: f64 = value
                    .parse()
                    .map_err(|e| format!("--bookmark-interval {value:?}: {e}"))?;
                if !(secs > 0.0 && secs.is_finite()) {
                    return Err(format!("--bookmark-interval {value:?}: must be positive"));
                }
                args.config.bookmark_interval = Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|d| *d <= Duration::from_secs(86_400))
                    .ok_or_else(|| format!("--bookmark-interval {value:?}: at most one day"))?;
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", args.listen))?;
    let server = FakeApiServer::serve(listener, args.config)?;
    let kubeconfig = server.kubeconfig();
    match &args.kubeconfig_out {
        Some(path) => {
            std::fs::write(path, &kubeconfig).map_err(|e| anyhow::anyhow!("writing {path}: {e}"))?
        }
        None => print!("{kubeconfig}"),
    }
    eprintln!("fake-apiserver: serving {}", server.url());
    tokio::signal::ctrl_c().await?;
    server.stop().await;
    Ok(())
}
