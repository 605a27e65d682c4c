//! What every rimir process does around its roles: logging to stderr, serving an HTTP router
//! until told to stop, and waiting for SIGTERM or Ctrl-C.
//!
//! These functions are not generic and return boxed futures, so the logging stack and the HTTP
//! server are compiled once, here, and not again in the binary or the crates that wire roles.

use std::io;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::BoxFuture;

/// Logs to stderr at the level of `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Serves `app` on `listener` until `stop` turns true, then finishes the requests in flight.
pub fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> BoxFuture<'static, io::Result<()>> {
    Box::pin(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    })
}

/// Resolves when SIGTERM or Ctrl-C arrives.
pub fn termination() -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "current_thread")]
    async fn serves_until_stopped_then_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/x", axum::routing::get(|| async { "served" }));
        let (stop, rx) = watch::channel(false);
        let server = tokio::spawn(serve_http(listener, app, rx));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("served"), "{reply}");
        stop.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("server stops once told to")
            .unwrap()
            .unwrap();
    }
}
