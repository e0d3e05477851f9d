//! One task per client: log in, then a state machine — `Idle` (no server), `Waiting` (queued for
//! one), `Active` (relaying on a server) — that lends the client a server per transaction (or for
//! the whole session in session mode) and always gives it back through the pool's release path.

mod client;
mod params;
mod relay;
mod startup;

pub use client::PeerAddr;

use crate::cancel::CancelTarget;
use crate::config::PoolMode;
use crate::pool::{CheckoutError, Disposition, Pool, PooledServer};
use crate::protocol::{PgError, sqlstate};
use crate::server::ServerError;
use crate::shared::Shared;
use crate::stream::Stream;
use client::{ClientIo, Input};
use relay::{Link, RelayEnd, RelayError};
use startup::{LoggedIn, Refusal};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Where a session is. Each state owns what it needs; there are no side flags.
enum SessionState {
    /// Logged in, holding no server, waiting for the client's next request.
    Idle,
    /// The client sent a request and is queued for a server since `since`.
    Waiting {
        /// When the wait began.
        since: Instant,
    },
    /// Relaying on a server (boxed: an idle session should stay small).
    Active(Box<Active>),
}

/// The data of the `Active` state.
struct Active {
    /// The server lent to this client.
    server: PooledServer,
    /// What is still due on it.
    link: Link,
}

/// Why a logged-in session ended.
enum Ending {
    /// The client said goodbye or closed.
    ClientLeft,
    /// sluice ends the session with this error (already sent where possible).
    Error(PgError),
    /// The pooler is shutting down.
    Shutdown,
}

/// Serves one client connection from its first byte to its close.
pub async fn handle_client(mut stream: Stream, peer: PeerAddr, shared: Arc<Shared>) {
    let login_limit = shared.config.load().pooler.client_login_timeout;
    let login = tokio::time::timeout(login_limit, startup::log_in(&mut stream, &shared)).await;
    let logged_in = match login {
        Ok(Ok(l)) => l,
        Ok(Err(Refusal::Fatal(e))) => {
            tracing::info!(%peer, error = %e, "login refused");
            let mut out = bytes::BytesMut::new();
            e.encode(&mut out);
            let _ = stream.write_all(&out).await;
            return;
        }
        Ok(Err(Refusal::Quiet)) => return,
        Err(_) => {
            let e = PgError::fatal(sqlstate::PROTOCOL_VIOLATION, "client_login_timeout (server down)")
                .with_detail(format!("login did not complete within {login_limit:?}"));
            let mut out = bytes::BytesMut::new();
            e.encode(&mut out);
            let _ = stream.write_all(&out).await;
            return;
        }
    };
    tracing::debug!(%peer, user = %logged_in.user, database = %logged_in.database, "client logged in");
    let max_message = shared.config.load().pooler.max_packet_size as usize;
    let (reader, writer) = stream.into_split();
    let mut session = Session {
        client: ClientIo::new(reader, writer, max_message),
        login: logged_in,
        shared,
        state: SessionState::Idle,
    };
    match session.run().await {
        Ending::ClientLeft => tracing::debug!(%peer, "client left"),
        Ending::Shutdown => tracing::debug!(%peer, "session closed for shutdown"),
        Ending::Error(e) => tracing::info!(%peer, error = %e, "session ended with an error"),
    }
}

struct Session {
    client: ClientIo,
    login: LoggedIn,
    shared: Arc<Shared>,
    state: SessionState,
}

impl Session {
    async fn run(&mut self) -> Ending {
        let mut shutdown = self.shared.shutdown_signal();
        let mode = self.login.pool.settings.mode;
        loop {
            let state = std::mem::replace(&mut self.state, SessionState::Idle);
            self.state = match state {
                SessionState::Idle => {
                    if self.client.inbuf.is_empty() {
                        self.client.shrink_when_empty();
                        let input = tokio::select! {
                            r = self.client.wait_for_input() => r,
                            _ = wait_shutdown(&mut shutdown) => {
                                let e = PgError::fatal(sqlstate::ADMIN_SHUTDOWN, "pooler is shutting down");
                                let _ = self.client.send_error(&e, None).await;
                                return Ending::Shutdown;
                            }
                        };
                        match input {
                            Ok(Input::Data) => {}
                            Ok(Input::Closed) | Err(_) => return Ending::ClientLeft,
                        }
                    }
                    if self.client.at_boundary() && self.client.inbuf.first() == Some(&b'X') {
                        return Ending::ClientLeft;
                    }
                    SessionState::Waiting {
                        since: Instant::now(),
                    }
                }
                SessionState::Waiting { since } => match self.wait_for_server(since).await {
                    Ok(Some(server)) => SessionState::Active(Box::new(Active {
                        server,
                        link: Link::new(),
                    })),
                    Ok(None) => return Ending::ClientLeft,
                    Err(e) => {
                        let _ = self.client.send_error(&e, None).await;
                        return Ending::Error(e);
                    }
                },
                SessionState::Active(active) => {
                    let Active { mut server, mut link } = *active;
                    let release_when_idle = mode == PoolMode::Transaction;
                    let end = relay::relay(
                        &mut self.client,
                        &mut link,
                        &mut server.conn,
                        &mut self.login.params,
                        release_when_idle,
                    )
                    .await;
                    match end {
                        Ok(RelayEnd::TransactionDone) => {
                            self.release(server, &link);
                            if relay::flush_client(&mut self.client).await.is_err() {
                                return Ending::ClientLeft;
                            }
                            SessionState::Idle
                        }
                        Ok(RelayEnd::Terminated | RelayEnd::ClientGone) => {
                            self.release(server, &link);
                            return Ending::ClientLeft;
                        }
                        Err(e) => return self.relay_failed(server, &link, e).await,
                    }
                }
            };
        }
    }

    /// Queues for a server while watching the client: a client that hangs up stops waiting
    /// (Ok(None)); anything else it sends meanwhile is buffered (up to the cap) for later.
    async fn wait_for_server(&mut self, since: Instant) -> Result<Option<PooledServer>, PgError> {
        let pool = self.login.pool.clone();
        let limit = self.shared.config.load().pooler.query_wait_timeout;
        let checkout = pool.checkout(limit.saturating_sub(since.elapsed()));
        tokio::pin!(checkout);
        let mut server = loop {
            let room = self.client.inbuf.len() < relay::OUT_CAP;
            tokio::select! {
                r = &mut checkout => break r.map_err(|e| checkout_error_to_client(&e, &pool))?,
                r = read_more(&mut self.client), if room => {
                    if matches!(r, Ok(0) | Err(_)) {
                        return Ok(None);
                    }
                }
            }
        };
        if let Some(sql) = self.login.params.sync_sql(&server.conn, &pool_defaults(&pool)) {
            let limit = self.shared.config.load().pooler.server_connect_timeout;
            match server.conn.run_internal(&sql, limit).await {
                Ok(()) => self.login.params.after_sync(&mut server.conn),
                Err(ServerError::Postgres(e)) => {
                    // The client asked for a setting the server refuses (as PostgreSQL would at login).
                    let status_ok = server.conn.tx_status == b'I';
                    pool.release(
                        server,
                        if status_ok {
                            Disposition::Clean
                        } else {
                            Disposition::Close("bad SET")
                        },
                    );
                    return Err(e.with_severity(crate::protocol::Severity::Fatal));
                }
                Err(e) => {
                    drop(server);
                    return Err(server_error_to_client(&e, &pool));
                }
            }
        }
        self.login.cancel.slot.set(Some(CancelTarget {
            host: server.conn.target_addr.0.clone(),
            port: server.conn.target_addr.1,
            backend_pid: server.conn.backend_pid,
            backend_secret: server.conn.backend_secret,
        }));
        Ok(Some(server))
    }

    fn release(&mut self, server: PooledServer, link: &Link) {
        self.login.cancel.slot.set(None);
        let mut disposition = link.disposition(&self.client, &server.conn);
        if disposition == Disposition::Clean && self.login.pool.settings.mode == PoolMode::Session {
            disposition = Disposition::Reset;
        }
        self.login.pool.release(server, disposition);
    }

    async fn relay_failed(&mut self, server: PooledServer, link: &Link, e: RelayError) -> Ending {
        match e {
            RelayError::Client(_) => {
                self.release(server, link);
                Ending::ClientLeft
            }
            RelayError::ClientProtocol(fe) => {
                self.login.cancel.slot.set(None);
                drop(server); // half a message went to it: it cannot be trusted
                let err = PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid message from client: {fe}"),
                );
                let _ = relay::flush_client(&mut self.client).await;
                let _ = self.client.send_error(&err, None).await;
                Ending::Error(err)
            }
            RelayError::Server(_) | RelayError::ServerProtocol(_) => {
                self.login.cancel.slot.set(None);
                drop(server);
                let err = PgError::fatal(sqlstate::CONNECTION_FAILURE, "server conn crashed?")
                    .with_detail(format!("{e}; the transaction in progress, if any, is lost"));
                let _ = relay::flush_client(&mut self.client).await;
                let _ = self.client.send_error(&err, None).await;
                Ending::Error(err)
            }
        }
    }
}

/// Resolves once shutdown has begun (the watch guard is dropped before returning, so the
/// future stays `Send`).
async fn wait_shutdown(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|&s| s).await.map(|_| ());
}

async fn read_more(client: &mut ClientIo) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    client.inbuf.reserve(relay::READ_CHUNK);
    client.reader.read_buf(&mut client.inbuf).await
}

fn pool_defaults(pool: &Pool) -> std::collections::BTreeMap<String, String> {
    pool.welcome_params().map(|w| (*w).clone()).unwrap_or_default()
}

/// The error a client gets when no server could be had.
pub(crate) fn checkout_error_to_client(e: &CheckoutError, pool: &Pool) -> PgError {
    match e {
        CheckoutError::Timeout(limit) => {
            let counts = pool.counts();
            PgError::fatal(sqlstate::PROTOCOL_VIOLATION, "query_wait_timeout").with_detail(format!(
                "no server of pool {}/{} became free within {limit:?}: {} of {} servers in use, {} clients waiting",
                pool.key.database, pool.key.user, counts.slots_used, pool.settings.pool_size, counts.waiting
            ))
        }
        CheckoutError::Server(se) => server_error_to_client(se, pool),
    }
}

fn server_error_to_client(e: &ServerError, pool: &Pool) -> PgError {
    match e {
        ServerError::Postgres(pg) => pg.clone().with_severity(crate::protocol::Severity::Fatal),
        other => PgError::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("server login failed: {other}"),
        )
        .with_detail(format!(
            "pool {}/{} could not open a connection to {}",
            pool.key.database,
            pool.key.user,
            pool.settings.target.describe()
        )),
    }
}
