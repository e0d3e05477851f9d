//! The endpoint's HTTP side, on hyper (HTTP/1.1, one request per connection): `GET /metrics`
//! and `GET /health`. A request head must arrive within a short timeout and fit a small buffer,
//! and the connections served at once are bounded (past the bound a new one is closed at once),
//! so idle or slow sockets cannot keep a liveness probe from being answered.

use crate::observe::prometheus::Metrics;
use crate::shared::{Lifecycle, Shared};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Largest request head buffered (hyper's minimum); longer ones get 431.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has, from connecting, to send its whole request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may live in all (head, answer, the client reading it).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once. High enough that many idle sockets leave room for probes and
/// scrapes; bounded so they cannot take every file descriptor. Past it a connection is closed
/// as soon as it is accepted.
const MAX_CONNECTIONS: usize = 4096;

/// Serves the endpoint on `listener` until the pooler exits.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, metrics: Arc<Metrics>) {
    let mut life = shared.lifecycle_signal();
    let weak = Arc::downgrade(&shared);
    drop(shared);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = life.wait_for(|l| *l == Lifecycle::Exit) => return,
        };
        let Ok((socket, peer)) = accepted else {
            // Out of descriptors, usually: wait for some to free up instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: connection limit reached; closing");
            continue;
        };
        let (weak, metrics) = (weak.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = route(&req, &weak, &metrics);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(socket), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics endpoint: connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics endpoint: connection timed out"),
            }
            drop(permit);
        });
    }
}

/// Decides the answer to a request.
fn route(req: &Request<Incoming>, shared: &Weak<Shared>, metrics: &Metrics) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    let Some(shared) = shared.upgrade() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    };
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(super::render(metrics, &shared))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/health" => match shared.lifecycle() {
            Lifecycle::Running => text(StatusCode::OK, "ok"),
            _ => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics or /health\n"),
    }
}

/// A plain-text response.
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}
