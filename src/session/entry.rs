//! A client connection from its first byte to its close: admission, the login (bounded by
//! client_login_timeout, a refusal told as a FATAL), the console or a pooled session in a task
//! of its own, and the disconnection line. The session's state machine is in `mod.rs`.

use super::client::ClientIo;
use super::login::{self, Login, Refusal};
use super::{Ending, Session, SessionState};
use crate::clients::PeerAddr;
use crate::protocol::{PgError, sqlstate};
use crate::shared::Shared;
use crate::stream::Stream;
use std::sync::Arc;
use std::time::Instant;

/// Serves one client connection from its first byte to its close.
pub(crate) async fn handle_client(mut stream: Stream, peer: PeerAddr, shared: Arc<Shared>) {
    // Counted from the first byte: a login in progress holds a max_client_conn slot.
    let (ticket, place) = match shared.begin_login(&peer) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            if shared.config.load().pooler.log_pooler_errors {
                tracing::warn!(%peer, "connection refused: {refusal}");
            }
            send_refusal(&mut stream, &refusal, &shared).await;
            return;
        }
    };
    // Boxed: the login's timer and error paths are not carried for the client's whole life.
    let login = Box::pin(log_in_or_refuse(&mut stream, &peer, &shared, place)).await;
    drop(ticket);
    let Some(login) = login else {
        return;
    };
    let log_connections = shared.config.load().pooler.log_connections;
    match login {
        Login::Console { user, role, seat } => {
            let started = Instant::now();
            if log_connections {
                let tls = stream.tls_description();
                tracing::info!(db = %"pgbouncer", %user, %tls, %peer, "login");
            }
            Box::pin(crate::admin::serve(stream, shared.clone(), role, user.clone())).await;
            drop(seat);
            if shared.config.load().pooler.log_disconnections {
                log_closing(&peer, "pgbouncer", &user, "console session ended", started);
            }
        }
        Login::Pooled(logged_in) => {
            let logged_in = *logged_in;
            if log_connections {
                let info = logged_in.info();
                let tls = stream.tls_description();
                tracing::info!(db = %info.database(), user = %info.user(), %tls, peer = %info.peer(), "login");
            }
            let max_message = (shared.config.load().pooler.max_packet_size as usize)
                .min(crate::protocol::MAX_CLIENT_MESSAGE);
            spawn_session(Session {
                client: ClientIo::new(crate::stream::ClientSocket::from(stream), max_message),
                login: logged_in,
                state: SessionState::Idle,
                statements: None,
                listening: None,
            });
        }
    }
}

/// Runs a logged-in session in a task of its own, holding only the session (moved in once,
/// then borrowed): the login's task and everything its frames kept are freed, so an idle
/// client costs as little as it can.
pub(super) fn spawn_session(session: Session) {
    tokio::spawn(serve_session(session));
}

/// The task of a logged-in session: what an idle client's tokio task holds (its size is
/// tested). An `async move` block, not an `async fn`: an async fn's frame keeps its argument
/// and the local it moves into, two copies of the session for the task's whole life.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(super) fn serve_session(mut session: Session) -> impl Future<Output = ()> + Send {
    async move {
        let ending = session.run().await;
        let info = session.login.info();
        let p = &session.login.shared().config.load().pooler;
        let reason = match &ending {
            Ending::ClientLeft => "client close request",
            Ending::HandedOver => {
                tracing::debug!(client = info.id, "handed over to the new process");
                return;
            }
            Ending::Error(e) => {
                if p.log_pooler_errors {
                    tracing::warn!(peer = %info.peer(), db = %info.database(), user = %info.user(), "pooler error: {e}");
                }
                e.message.as_str()
            }
        };
        if p.log_disconnections {
            log_closing(
                &info.peer(),
                info.database(),
                info.user(),
                reason,
                info.connected_at(),
            );
        }
    }
}

/// The disconnection line (log_disconnections), as PgBouncer's "closing because".
fn log_closing(peer: &PeerAddr, db: &str, user: &str, reason: &str, since: Instant) {
    let age_s = (since.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    tracing::info!(reason = %reason, age_s, db = %db, user = %user, %peer, "closing");
}

/// Logs the client in within client_login_timeout; a refused login is told its FATAL here.
async fn log_in_or_refuse(
    stream: &mut Stream,
    peer: &PeerAddr,
    shared: &Arc<Shared>,
    place: crate::shared::LoginPlace,
) -> Option<Login> {
    let login_limit = shared.config.load().pooler.client_login_timeout;
    let on_server = std::sync::atomic::AtomicBool::new(false);
    let login = login::log_in(stream, peer, shared, place, &on_server);
    let refusal = match tokio::time::timeout(login_limit, login).await {
        Ok(Ok(login)) => return Some(login),
        Ok(Err(Refusal::Quiet)) => return None,
        Ok(Err(Refusal::Fatal(e))) => e,
        Err(_) => login_timeout(login_limit, on_server.into_inner()),
    };
    if shared.config.load().pooler.log_pooler_errors {
        tracing::warn!(%peer, "login refused: {refusal}");
    }
    send_refusal(stream, &refusal, shared).await;
    None
}

/// Tells a refused connection why, bounded in time (a client that reads nothing cannot hold
/// the connection open).
async fn send_refusal(stream: &mut Stream, refusal: &PgError, shared: &Shared) {
    let mut out = bytes::BytesMut::new();
    refusal.encode(&mut out);
    let limit = shared.config.load().pooler.client_login_timeout;
    let write = tokio::io::AsyncWriteExt::write_all(stream, &out);
    let _ = tokio::time::timeout(limit.max(std::time::Duration::from_secs(1)), write).await;
}

/// What a client that did not finish logging in within client_login_timeout is told: whether
/// it was slow itself, or sluice was waiting for a server for it.
fn login_timeout(limit: std::time::Duration, on_server: bool) -> PgError {
    let limit = crate::config::format_duration(limit);
    if on_server {
        PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "client_login_timeout (waiting for a server connection)",
        )
        .with_detail(format!(
            "no server connection could be had within {limit} to complete the login; \
                 server login errors, if any, are in sluice's log"
        ))
    } else {
        PgError::fatal(sqlstate::PROTOCOL_VIOLATION, "client_login_timeout").with_detail(format!(
            "the client did not finish its startup, TLS handshake or authentication within {limit}"
        ))
    }
}
