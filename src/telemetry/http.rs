//! The local HTTP endpoints: `/metrics` (Prometheus), `/livez` and `/readyz`.
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// What the health endpoints ask; implemented by the daemon over the provider and its loops.
pub(crate) trait HealthSource: Send + Sync + 'static {
    /// Process and serving loops alive (`/livez`).
    fn live(&self) -> Result<(), String>;
    /// Ready to serve KMS calls with a fresh, healthy snapshot (`/readyz`).
    fn ready(&self) -> Result<(), Vec<String>>;
    /// Refresh gauges computed on scrape.
    fn refresh_metrics(&self) {}
}

async fn metrics_handler(State(h): State<Arc<dyn HealthSource>>) -> impl IntoResponse {
    h.refresh_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        super::metrics::render(),
    )
}

async fn livez(State(h): State<Arc<dyn HealthSource>>) -> impl IntoResponse {
    match h.live() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn readyz(State(h): State<Arc<dyn HealthSource>>) -> impl IntoResponse {
    let (code, body) = match h.ready() {
        Ok(()) => (
            StatusCode::OK,
            serde_json::json!({ "ready": true, "reasons": [] }),
        ),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ready": false, "reasons": reasons }),
        ),
    };
    (code, axum::Json(body))
}

/// Which router listens where (one listener when the metrics and health addresses are equal).
pub(crate) fn routes(
    metrics: Option<SocketAddr>,
    health: Option<SocketAddr>,
    source: Arc<dyn HealthSource>,
) -> Vec<(SocketAddr, Router)> {
    let metrics_router = || Router::new().route("/metrics", get(metrics_handler));
    let health_router = || {
        Router::new()
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
    };
    let mut plan: Vec<(SocketAddr, Router<Arc<dyn HealthSource>>)> = Vec::new();
    match (metrics, health) {
        (Some(m), Some(h)) if m == h => plan.push((m, metrics_router().merge(health_router()))),
        (m, h) => {
            if let Some(m) = m {
                plan.push((m, metrics_router()));
            }
            if let Some(h) = h {
                plan.push((h, health_router()));
            }
        }
    }
    plan.into_iter()
        .map(|(a, r)| (a, r.with_state(source.clone())))
        .collect()
}

/// Serves the endpoints until `shutdown` resolves, each listener with at most
/// `max_connections` open connections (`super::listener`). Bind errors are returned before
/// serving.
pub(crate) async fn serve<F>(
    routes: Vec<(SocketAddr, Router)>,
    max_connections: usize,
    shutdown: impl Fn() -> F,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = Vec::new();
    for (addr, router) in routes {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, max_connections, "serving HTTP endpoints");
        tasks.push(tokio::spawn(super::listener::serve(
            listener,
            router,
            max_connections,
            shutdown(),
        )));
    }
    Ok(tasks)
}
