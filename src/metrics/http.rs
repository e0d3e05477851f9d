//! The endpoint's HTTP side: a deliberately tiny HTTP/1.x responder on tokio. It reads one
//! request head (bounded in size and time), answers `GET /metrics` and `GET /health`, and closes
//! the connection. Anything else gets a 4xx; nothing a client sends can panic it.

use super::Metrics;
use crate::shared::{Lifecycle, Shared};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Largest request head read; longer ones get 431.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request and read the answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 32;
/// How often recorded histogram samples are folded in when nobody scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

/// Serves the endpoint on `listener` until the pooler exits.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, metrics: Arc<Metrics>) {
    let mut life = shared.lifecycle_signal();
    let weak = Arc::downgrade(&shared);
    drop(shared);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut upkeep = tokio::time::interval(UPKEEP);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = life.wait_for(|l| *l == Lifecycle::Exit) => return,
            _ = upkeep.tick() => {
                metrics.upkeep();
                continue;
            }
        };
        let Ok((socket, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (weak, metrics) = (weak.clone(), metrics.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, answer(socket, weak, metrics)).await;
            drop(permit);
        });
    }
}

/// Reads a request head and writes the response.
async fn answer(mut socket: TcpStream, shared: Weak<Shared>, metrics: Arc<Metrics>) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // EOF before a blank line: answer what we have if the request line is there.
                break head.contains(&b'\n');
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let (status, content_type, body) = if !complete {
        (431, "text/plain", "request header too large\n".to_string())
    } else {
        route(&head, &shared, &metrics)
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.write_all(body.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// Decides the answer to a request head: (status, content type, body).
fn route(head: &[u8], shared: &Weak<Shared>, metrics: &Metrics) -> (u16, &'static str, String) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (400, "text/plain", "bad request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return (400, "text/plain", "bad request\n".into());
    }
    if method != "GET" {
        return (405, "text/plain", "only GET is served\n".into());
    }
    let path = target.split('?').next().unwrap_or(target);
    let Some(shared) = shared.upgrade() else {
        return (503, "text/plain", "shutting down\n".into());
    };
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render(&shared)),
        "/health" => match shared.lifecycle() {
            Lifecycle::Running => (200, "text/plain", "ok".into()),
            _ => (503, "text/plain", "shutting down\n".into()),
        },
        _ => (404, "text/plain", "not found; try /metrics or /health\n".into()),
    }
}
