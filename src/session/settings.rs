//! Session settings PostgreSQL does not report (`work_mem`, `statement_timeout`, ...): after a
//! transaction in which the `ResetWatch` saw a SET, RESET, DISCARD ALL or `set_config`, the
//! server's session-level settings are read back in one query, and the client's wishes
//! (`params.rs`) become exactly those. So a SET follows its client to every server it gets (the
//! checkout's sync applies it), the server that carried it is brought back to the pool's login
//! values before another client runs on it (the same sync RESETs what that client does not
//! want), a rolled-back SET or a `SET LOCAL` is found gone, and a RESET returns the client to its
//! own startup value (also in session mode, where the sync runs at once).

use super::link::Link;
use super::params::ClientParams;
use super::{Ending, Session, SessionState, relay};
use crate::clients::ClientPhase;
use crate::config::PoolMode;
use crate::pool::{Disposition, PooledServer};
use crate::protocol::{PgError, sqlstate};
use crate::server::{ServerConn, ServerError};
use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

/// Every setting the session holds at session level, with its value as `SHOW` gives it (which
/// `set_config` accepts back).
const SESSION_SETTINGS: &str = "SELECT name, pg_catalog.current_setting(name) \
     FROM pg_catalog.pg_settings WHERE source = 'session'";

/// More rows than PostgreSQL has settings: the rest are refused as a protocol error.
const MAX_SETTINGS: usize = 4096;

/// What follows a read-back at the end of a transaction.
pub(super) enum AfterReadBack {
    /// Transaction mode: release the server as usual.
    Release(PooledServer, Box<Link>),
    /// The session goes on as this says (session mode: relaying on the same server; or the
    /// server was lost or the client left).
    Next(Result<SessionState, Ending>),
}

impl Session {
    /// At the end of a transaction that may have changed settings: the client gets its reply
    /// first, then the server's settings are read back ([`Session::read_back_settings`]).
    /// When the transaction may have created or dropped session state that pins the server
    /// (`link.pins`), the same query verifies it, and the link records what it found.
    pub(super) async fn read_back(
        &mut self,
        server: PooledServer,
        mut link: Link,
        mode: PoolMode,
    ) -> AfterReadBack {
        if relay::flush_client(&mut self.client).await.is_err() {
            self.release_leaving(server, &link);
            return AfterReadBack::Next(Err(Ending::ClientLeft));
        }
        let pins = link.pins.pending().then_some(&mut link.pins);
        let server = match self.read_back_settings(server, mode, pins).await {
            Ok(server) => server,
            Err(e) if mode == PoolMode::Session => {
                return AfterReadBack::Next(Err(self.end_with(e, true).await));
            }
            Err(_) => {
                // Transaction mode: the server is gone, the client goes on (its next checkout
                // brings a fresh server to the settings it had before this transaction).
                self.login.info().set_phase(ClientPhase::Idle);
                self.login.info().hold(None);
                self.login.info().set_pins(crate::clients::Pins::NONE);
                let _ = relay::flush_client(&mut self.client).await;
                return AfterReadBack::Next(Ok(SessionState::Idle));
            }
        };
        if mode != PoolMode::Session {
            return AfterReadBack::Release(server, Box::new(link));
        }
        if relay::flush_client(&mut self.client).await.is_err() {
            self.release_leaving(server, &link);
            return AfterReadBack::Next(Err(Ending::ClientLeft));
        }
        AfterReadBack::Next(Ok(SessionState::Active(Box::new(super::Active { server, link }))))
    }

    /// Reads the server's session settings back after a transaction that may have changed them
    /// and makes them the client's. In session mode, a reset that left the server away from the
    /// client's startup values is undone at once. On failure the server is closed (it may carry
    /// settings nobody knows of) and the error is returned.
    pub(super) async fn read_back_settings(
        &mut self,
        mut server: PooledServer,
        mode: PoolMode,
        pins: Option<&mut super::pins::PinWatch>,
    ) -> Result<PooledServer, PgError> {
        let limit = self.login.shared().config.load().pooler.server_connect_timeout;
        let query = session_settings(&mut server.conn, pins.is_some());
        let mut session = match tokio::time::timeout(limit, query).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(self.drop_unknown(server, &e.to_string())),
            Err(_) => return Err(self.drop_unknown(server, "timed out")),
        };
        let found = super::pins::take_pin_rows(&mut session);
        if let Some(pins) = pins {
            pins.set_held(found);
        }
        let restored = self.login.params.reconcile(&session);
        ClientParams::record_carried(&session, &mut server.conn);
        for (name, value) in &restored {
            crate::protocol::messages::parameter_status(&mut self.client.outbuf, name, value);
            if name.eq_ignore_ascii_case("application_name") {
                self.login.info().set_application_name(value);
            }
        }
        let defaults = self.login.pool.welcome_params().unwrap_or_default();
        // What the server carries is known exactly now.
        server.conn.params_fingerprint = Some(self.login.params.fingerprint());
        let in_step = self.login.params.sync_sql(&server.conn, &defaults).is_none();
        if !in_step {
            server.conn.params_fingerprint = None;
        }
        if in_step || mode != PoolMode::Session {
            // Transaction mode: the client's next checkout brings whichever server it gets to
            // its settings.
            return Ok(server);
        }
        self.login.info().set_phase(ClientPhase::Active);
        match Box::pin(self.sync_params(server)).await {
            Ok(server) => Ok(server),
            Err(super::PrepareFailure::Refused(e)) => Err(e),
            Err(super::PrepareFailure::ServerLost(e)) => Err(PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("server conn crashed? {e}"),
            )),
        }
    }

    fn drop_unknown(&self, server: PooledServer, why: &str) -> PgError {
        tracing::info!(
            client = self.login.info().id,
            why,
            "reading session settings back failed; closing the server"
        );
        self.login
            .pool
            .release(server, Disposition::Close("session settings unknown"));
        PgError::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("server conn crashed? reading its session settings failed: {why}"),
        )
    }
}

/// [`SESSION_SETTINGS`] with the pin verification's rows ([`super::pins::PIN_ROWS`]).
static SETTINGS_AND_PINS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{SESSION_SETTINGS}{}", super::pins::PIN_ROWS));

/// Runs [`SESSION_SETTINGS`] (with the pin verification when `with_pins`) and returns its rows
/// (name, value).
async fn session_settings(
    server: &mut ServerConn,
    with_pins: bool,
) -> Result<Vec<(String, String)>, ServerError> {
    let mut out = BytesMut::new();
    let sql = if with_pins {
        SETTINGS_AND_PINS.as_str()
    } else {
        SESSION_SETTINGS
    };
    frontend::query(sql, &mut out)?;
    server.writer.write_all(&out).await?;
    let mut rows = Vec::new();
    let mut failure = None;
    loop {
        match server.read_message().await? {
            Message::ReadyForQuery(body) => {
                server.tx_status = body.status().try_into()?;
                return match failure {
                    Some(e) => Err(ServerError::Postgres(e)),
                    None => Ok(rows),
                };
            }
            Message::ParameterStatus(body) => {
                server
                    .params
                    .insert(body.name()?.to_string(), body.value()?.to_string());
            }
            Message::ErrorResponse(body) => {
                failure.get_or_insert(crate::server::error_from_body(&body));
            }
            Message::DataRow(body) => {
                if rows.len() >= MAX_SETTINGS {
                    return Err(ServerError::Protocol("too many session settings".into()));
                }
                rows.push(data_row_pair(&body)?);
            }
            _ => {}
        }
    }
}

/// The two text columns of a DataRow.
fn data_row_pair(
    body: &postgres_protocol::message::backend::DataRowBody,
) -> Result<(String, String), ServerError> {
    use fallible_iterator::FallibleIterator;
    let buf = body.buffer();
    let mut ranges = body.ranges();
    let mut column = || -> Result<String, ServerError> {
        let range = ranges
            .next()?
            .flatten()
            .ok_or_else(|| ServerError::Protocol("session setting row without a value".into()))?;
        let bytes = buf
            .get(range)
            .ok_or_else(|| ServerError::Protocol("session setting row out of bounds".into()))?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    };
    Ok((column()?, column()?))
}
