//! The server side of a session's busy period: bringing a checked-out server to the client's
//! settings before the client's request reaches it (`prepare`, `sync_params`), giving it back
//! through the pool's release path (`release*`), and what a failed relay leaves the client with.

use super::link::Link;
use super::relay::{self, RelayError};
use super::waiting::send_fatal;
use super::{Active, Ending, Session};
use crate::clients::ClientPhase;
use crate::config::PoolMode;
use crate::pool::{Disposition, PooledServer};
use crate::protocol::{PgError, TxStatus, sqlstate};
use crate::server::ServerError;
use std::time::Instant;

/// Why a server could not be brought to the client's settings.
pub(super) enum PrepareFailure {
    /// The server refused a setting the client asked for: the session ends with this FATAL.
    Refused(PgError),
    /// The server connection failed (PostgreSQL restarting, backend killed) before anything of
    /// the client's request was sent to it.
    ServerLost(ServerError),
}

impl Session {
    /// Brings a server to the client's session settings and points cancels at it: the
    /// `Active` state's data, tracking from now on. `at`: the clock reading of a checkout that
    /// found the server idle in this same poll (no new reading is needed then).
    pub(super) async fn prepare(
        &mut self,
        server: PooledServer,
        since: Instant,
        at: Option<Instant>,
    ) -> Result<Box<Active>, PrepareFailure> {
        let now = at.unwrap_or_else(Instant::now);
        // A server found idle at the request's arrival was had at once: no subtraction for that.
        let waited = if now == since {
            std::time::Duration::ZERO
        } else {
            now.saturating_duration_since(since)
        };
        self.login.pool.stats.record_assignment(waited);
        let in_step = server.conn.params_fingerprint == Some(self.login.params.fingerprint());
        // Usually the server already carries the client's settings: no await, nothing boxed,
        // and the client's record is written once.
        let (server, fresh) = if in_step {
            let tick = self.login.info().activate(server.conn.held(), now);
            // Nothing awaited since the reading: the relay, polled next in the same poll, may
            // take it for its first request's start.
            (server, Some((now, tick)))
        } else {
            self.login.info().set_phase_at(ClientPhase::Active, now);
            let server = Box::pin(self.sync_params(server)).await?;
            self.login.info().hold(Some(server.conn.held()));
            (server, None)
        };
        // The box first, then the value written into it: `Box::new` of a value built first
        // copies it in (312 bytes, once per transaction).
        let active = Box::new_uninit();
        Ok(Box::write(
            active,
            Active {
                server,
                link: Link::new(now, fresh),
            },
        ))
    }

    /// SETs what differs between the server's session settings and the client's.
    pub(super) async fn sync_params(
        &mut self,
        mut server: PooledServer,
    ) -> Result<PooledServer, PrepareFailure> {
        let pool = self.login.pool.clone();
        let defaults = pool.welcome_params().unwrap_or_default();
        let Some(sql) = self.login.params.sync_sql(&server.conn, &defaults) else {
            server.conn.params_fingerprint = Some(self.login.params.fingerprint());
            return Ok(server);
        };
        let limit = self.login.shared().config.load().pooler.server_connect_timeout;
        match server.conn.run_internal(&sql, limit).await {
            Ok(()) => {
                self.login.params.after_sync(&mut server.conn);
                server.conn.params_fingerprint = Some(self.login.params.fingerprint());
            }
            Err(ServerError::Postgres(e)) => {
                // The client asked for a setting the server refuses (as PostgreSQL would at login).
                // What state the failed sync left is not known: the server is closed.
                pool.release(server, Disposition::Close("parameter sync failed"));
                return Err(PrepareFailure::Refused(
                    e.with_severity(crate::protocol::Severity::Fatal),
                ));
            }
            Err(e) => {
                drop(server);
                return Err(PrepareFailure::ServerLost(e));
            }
        }
        Ok(server)
    }

    /// The client is leaving: a server it leaves in a transaction (or mid-request) is an
    /// abandoned transaction — counted as a leak, then rolled back or closed by the release path.
    pub(super) fn release_leaving(&mut self, server: PooledServer, link: &Link) {
        let in_transaction = server.conn.tx_status != TxStatus::Idle;
        if in_transaction || link.disposition(&self.client, &server.conn) != Disposition::Clean {
            self.login.shared().leaks.record_abandoned(self.login.info());
        }
        self.release(server, link);
    }

    pub(super) fn release(&mut self, server: PooledServer, link: &Link) {
        self.release_at(server, link, Instant::now());
    }

    /// Gives the server back through the release path, the client going idle at `now`.
    pub(super) fn release_at(&mut self, mut server: PooledServer, link: &Link, now: Instant) {
        // At the last ReadyForQuery's reading, its tick is usually known already.
        let tick = link
            .idle_tick()
            .filter(|_| now == link.idle_since())
            .unwrap_or_else(|| crate::clients::Tick::at(now));
        self.login.info().set_phase_tick(ClientPhase::Idle, tick);
        // The server carries this client's settings (SETs it made were tracked as it went),
        // unless a RESET or DISCARD ALL left it out of step (then the next checkout syncs it).
        if server.conn.params_fingerprint.is_some() {
            server.conn.params_fingerprint = Some(self.login.params.fingerprint());
        }
        let mut disposition = link.disposition(&self.client, &server.conn);
        if link.resets.pending() {
            // Settings changed and were not read back: nobody knows what the server carries.
            disposition = Disposition::Close("session settings changed and not read back");
        }
        disposition = self.unpin(&link.pins, disposition);
        self.login.pool.release_at(server, disposition, now);
    }

    /// Handles a failed relay. Returns None when the client keeps its connection (it was told
    /// with ERROR + ReadyForQuery and goes back to Idle).
    pub(super) async fn relay_failed(
        &mut self,
        server: PooledServer,
        link: &Link,
        e: RelayError,
        mode: PoolMode,
    ) -> Option<Ending> {
        let server_error = match e {
            RelayError::Client(_) => {
                self.release_leaving(server, link);
                return Some(Ending::ClientLeft);
            }
            RelayError::ClientProtocol(fe) => {
                // The bad header was never forwarded; the link decides whether the server is clean.
                self.release(server, link);
                let err = PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid message from client: {fe}"),
                );
                let _ = relay::flush_client(&mut self.client).await;
                send_fatal(&mut self.client, &err).await;
                return Some(Ending::Error(err));
            }
            RelayError::ServerFatal(pg) => *pg,
            other @ (RelayError::Server(_) | RelayError::ServerProtocol(_)) => {
                PgError::fatal(sqlstate::CONNECTION_FAILURE, "server conn crashed?")
                    .with_detail(format!("{other}; the request in progress did not complete"))
            }
        };
        self.login.info().set_phase(ClientPhase::Idle);
        // A pinned client lost state it cannot get back (its temp tables, locks): no soft failure.
        let pinned = !link.pins.held().is_empty();
        if pinned {
            self.login.info().set_pins(crate::clients::Pins::NONE);
        }
        let soft = mode == PoolMode::Transaction && !pinned && link.can_fail_softly(&self.client);
        let pending = link.pending_requests().max(1);
        drop(server);
        tracing::info!(client = self.login.info().id, error = %server_error, soft, "server failed under a client");
        if soft {
            // Like any failed statement: an ERROR and ReadyForQuery for each request in flight;
            // the next request gets a fresh server.
            let err = server_error
                .with_severity(crate::protocol::Severity::Error)
                .with_hint(
                    "The server connection was lost (PostgreSQL restarted or the backend was terminated); \
                 this connection is still usable: retry the request.",
                );
            for _ in 0..pending {
                err.encode(&mut self.client.outbuf);
                crate::protocol::messages::ready_for_query(&mut self.client.outbuf, TxStatus::Idle);
            }
            if relay::flush_client(&mut self.client).await.is_err() {
                return Some(Ending::ClientLeft);
            }
            return None;
        }
        let err = server_error.with_severity(crate::protocol::Severity::Fatal);
        let _ = relay::flush_client(&mut self.client).await;
        send_fatal(&mut self.client, &err).await;
        Some(Ending::Error(err))
    }
}
