//! The depot's HTTP surface, read-only: `GET /metrics` (Prometheus text) and `GET /status`
//! (JSON), on plain HTTP/1.1, one request per connection.
//!
//! What a client can hold is bounded: the request head must arrive within [`HEAD_TIMEOUT`],
//! the answer is given up after [`ANSWER_TIMEOUT`], and a request that announces a body is
//! refused (neither route reads one).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::status::{State as DepotState, status_json};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an answer may take before it is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long accepting waits after a failed accept: errors such as running out of file
/// descriptors repeat at once, and the loop must not spin on them.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What the handlers read.
struct Surface {
    state: Arc<DepotState>,
    registry: Registry,
}

/// The routes, with their bounds.
fn router(state: Arc<DepotState>) -> Router {
    let surface = Arc::new(Surface {
        registry: crate::metrics::registry(state.clone()),
        state,
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        // Neither route reads a body; one announced is refused before the handler runs.
        .route_layer(RequestBodyLimitLayer::new(0))
        .fallback(not_found)
        .method_not_allowed_fallback(only_get)
        // A slow answer is the depot's fault, not the client's: 503, not 408.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            ANSWER_TIMEOUT,
        ))
        .with_state(surface)
}

/// Serves [`router`] on `listener` until the task is dropped.
///
/// `axum::serve` is not used: it gives hyper no timer, so a client that never finishes its
/// request head would hold its connection task for ever, and it keeps connections alive.
pub(crate) async fn serve(listener: tokio::net::TcpListener, state: Arc<DepotState>) {
    let router = router(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(false);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "accepting an HTTP connection failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP exchange failed");
            }
        });
    }
}

async fn metrics(State(surface): State<Arc<Surface>>) -> Response {
    match node::metrics::render(&surface.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, node::metrics::CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding the metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain")],
                "the metrics could not be encoded\n",
            )
                .into_response()
        }
    }
}

async fn status(State(surface): State<Arc<Surface>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        status_json(&surface.state).to_string(),
    )
        .into_response()
}

async fn not_found(method: Method) -> Response {
    if method != Method::GET {
        return only_get().await;
    }
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "not found: try /metrics or /status\n",
    )
        .into_response()
}

async fn only_get() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "text/plain")],
        "only GET is served\n",
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An idle depot's HTTP surface on a loopback port.
    async fn depot(dir: &std::path::Path) -> std::net::SocketAddr {
        let (store, _) = node::store::open_data_dir(dir).unwrap();
        let state = Arc::new(DepotState::idle(Arc::new(store)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, state));
        addr
    }

    /// Sends `request` as written and reads until the server closes the connection.
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn the_two_routes_answer_and_everything_else_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let addr = depot(dir.path()).await;
        for (request, status, kind, body) in [
            (
                "GET /metrics HTTP/1.1\r\nhost: d\r\n\r\n",
                "HTTP/1.1 200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                "# HELP depotmesh_depot_bytes_total ",
            ),
            (
                "GET /status HTTP/1.1\r\nhost: d\r\n\r\n",
                "HTTP/1.1 200 OK",
                "application/json",
                "{\"listen\":[]",
            ),
            (
                "GET /nope HTTP/1.1\r\nhost: d\r\n\r\n",
                "HTTP/1.1 404 Not Found",
                "text/plain",
                "not found: try /metrics or /status\n",
            ),
            (
                "POST /metrics HTTP/1.1\r\nhost: d\r\ncontent-length: 0\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed",
                "text/plain",
                "only GET is served\n",
            ),
            (
                "DELETE /nope HTTP/1.1\r\nhost: d\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed",
                "text/plain",
                "only GET is served\n",
            ),
            (
                "GET /status HTTP/1.1\r\nhost: d\r\ncontent-length: 5\r\n\r\nhello",
                "HTTP/1.1 413 Payload Too Large",
                "text/plain; charset=utf-8",
                "",
            ),
        ] {
            let answer = exchange(addr, request).await;
            let (head, got) = answer.split_once("\r\n\r\n").unwrap();
            let mut lines = head.lines();
            assert_eq!(lines.next(), Some(status), "{request:?}: {answer}");
            let headers: Vec<_> = lines.collect();
            assert!(
                headers.contains(&format!("content-type: {kind}").as_str()),
                "{request:?}: {answer}"
            );
            // One request per connection, as Prometheus and the tests expect.
            assert!(
                headers.contains(&"connection: close"),
                "{request:?}: {answer}"
            );
            assert!(got.starts_with(body), "{request:?}: {answer}");
        }
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_request_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let addr = depot(dir.path()).await;
        let mut clients = Vec::new();
        for unfinished in ["", "GET /metrics HTTP/1.1\r\nhost: d\r\n"] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(unfinished.as_bytes()).await.unwrap();
            clients.push(stream);
        }
        for mut stream in clients {
            let mut answer = Vec::new();
            tokio::time::timeout(
                HEAD_TIMEOUT + Duration::from_secs(5),
                stream.read_to_end(&mut answer),
            )
            .await
            .expect("the depot still holds a client that never finished its request")
            .ok();
        }
    }
}
