//! The `Waiting` state: queued for a server while watching the client, with a NOTICE after
//! query_wait_notify, and what happens when no server comes — by default an ERROR that keeps the
//! connection usable (the rest of the request up to Sync is discarded, then ReadyForQuery), or
//! PgBouncer's FATAL-and-close with query_wait_timeout_disconnect.

use super::Session;
use super::client::ClientIo;
use super::relay::OUT_CAP;
use crate::clients::ClientPhase;
use crate::pool::{CheckoutError, Pool, PooledServer};
use crate::protocol::tags::frontend;
use crate::protocol::{FrameScanner, PgError, ScanItem, Severity, TxStatus, messages, sqlstate};
use bytes::Buf;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How a wait ended.
pub(super) enum WaitOutcome {
    /// A server, ready for the client's request, and the clock reading it was had at when it
    /// was idle at once (in the same poll as the caller's `now`: nothing awaited since).
    Server(PooledServer, Option<Instant>),
    /// No server: the client was told (ERROR + ReadyForQuery) and may go on.
    Failed,
    /// The client hung up while waiting.
    ClientGone,
    /// The session must end with this FATAL (already sent).
    Fatal(PgError),
}

impl Session {
    /// Gets a server: at once when one is idle, else queued (boxed: the queue's wait is large,
    /// and a transaction that finds a server idle should not carry it). `now` is the clock
    /// reading of the event that asks (the request's arrival, in the same poll).
    pub(super) async fn wait_for_server(&mut self, since: Instant, now: Instant) -> WaitOutcome {
        if let Some(server) = self.login.pool.try_checkout_now(self.login.info(), now) {
            return WaitOutcome::Server(server, Some(now));
        }
        // Only a client that queues is shown waiting: one served at once goes from Idle to
        // Active at the same reading (no await between), and its record is written once.
        self.login.info().set_phase_at(ClientPhase::Waiting, now);
        Box::pin(self.queue_for_server(since)).await
    }

    /// Queues for a server; see the module doc.
    async fn queue_for_server(&mut self, since: Instant) -> WaitOutcome {
        let pool = self.login.pool.clone();
        // Copy the settings out: cloning the shared config Arc would touch a counter every
        // client of the process shares, once per transaction.
        let (notify_after, disconnect_on_timeout) = {
            let config = self.login.shared().config.load();
            let p = &config.pooler;
            (p.query_wait_notify, p.query_wait_timeout_disconnect)
        };
        // The pool's own: the user's, the database's or the global query_wait_timeout.
        let limit = pool.settings().query_wait_timeout;
        let checkout = pool.checkout(self.login.info(), limit.saturating_sub(since.elapsed()));
        tokio::pin!(checkout);
        let notify_at = tokio::time::Instant::from_std(since + notify_after);
        let mut notified = notify_after.is_zero();
        let result = loop {
            let room = self.client.inbuf.len() < OUT_CAP;
            tokio::select! {
                // The checkout first: when a server is free at once, no timer is ever armed.
                biased;
                r = &mut checkout => break r,
                kill = self.login.info().killed(true) => {
                    let e = kill.error();
                    send_fatal(&mut self.client, &e).await;
                    return WaitOutcome::Fatal(e);
                }
                r = self.client.read_input(), if room => {
                    if matches!(r, Ok(0) | Err(_)) {
                        return WaitOutcome::ClientGone;
                    }
                }
                _ = tokio::time::sleep_until(notify_at), if !notified => {
                    notified = true;
                    let notice = PgError::notice(format!(
                        "No server connection available in pool {}/{}, client being queued",
                        pool.key.database, pool.key.user
                    ));
                    notice.encode(&mut self.client.outbuf);
                    if super::relay::flush_client(&mut self.client).await.is_err() {
                        return WaitOutcome::ClientGone;
                    }
                }
            }
        };
        match result {
            Ok(server) => WaitOutcome::Server(server, None),
            Err(e) => {
                let error = checkout_error(&e, &pool);
                let disconnect = match e {
                    CheckoutError::Timeout(_) => disconnect_on_timeout,
                    CheckoutError::Login(_) => false,
                };
                if disconnect {
                    let fatal = error.with_severity(Severity::Fatal);
                    let _ = self.client.send_error(&fatal, None).await;
                    return WaitOutcome::Fatal(fatal);
                }
                if self.login.shared().config.load().pooler.log_pooler_errors {
                    let info = self.login.info();
                    tracing::warn!(peer = %info.peer(), db = %info.database(), user = %info.user(), "pooler error: {error}");
                }
                match fail_request(&mut self.client, &error, limit).await {
                    Ok(()) => WaitOutcome::Failed,
                    Err(_) => WaitOutcome::ClientGone,
                }
            }
        }
    }
}

/// The error (severity ERROR) a client gets when no server could be had.
pub(super) fn checkout_error(e: &CheckoutError, pool: &Pool) -> PgError {
    match e {
        CheckoutError::Timeout(limit) => PgError::error(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "query_wait_timeout: no server connection became free within {:.1}s",
                limit.as_secs_f64()
            ),
        )
        .with_detail(pool.describe_servers())
        .with_hint(
            "The connection is still usable: retry, or find the client holding servers \
             (see the DETAIL); raise pool_size or query_wait_timeout if the load is legitimate.",
        ),
        CheckoutError::Login(pg) => pg.clone().with_severity(Severity::Error),
    }
}

/// Fails the client's pending request as PostgreSQL fails one: the error at once, the rest of
/// the request (up to Sync, or the one simple Query) read and dropped, then ReadyForQuery.
async fn fail_request(client: &mut ClientIo, error: &PgError, limit: Duration) -> std::io::Result<()> {
    error.encode(&mut client.outbuf);
    super::relay::flush_client(client).await?;
    tokio::time::timeout(limit, discard_request(client))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "client never finished its request")
        })??;
    messages::ready_for_query(&mut client.outbuf, TxStatus::Idle);
    super::relay::flush_client(client).await
}

async fn discard_request(client: &mut ClientIo) -> std::io::Result<()> {
    let mut scan = FrameScanner::new(0, usize::MAX);
    let mut first = true;
    loop {
        match scan
            .next(&client.inbuf, |_| false)
            .map_err(std::io::Error::other)?
        {
            ScanItem::Pass { len, tag } => {
                client.inbuf.advance(len);
                if let Some(t) = tag {
                    let ends = t == frontend::SYNC || (first && t == frontend::QUERY);
                    first = false;
                    if ends {
                        // Finish dropping the body (a Query may be longer than what arrived).
                        while !scan.at_boundary() {
                            if client.inbuf.is_empty() && client.read_input().await? == 0 {
                                return Err(std::io::ErrorKind::UnexpectedEof.into());
                            }
                            if let ScanItem::Pass { len, .. } = scan
                                .next(&client.inbuf, |_| false)
                                .map_err(std::io::Error::other)?
                            {
                                client.inbuf.advance(len);
                            }
                        }
                        return Ok(());
                    }
                }
            }
            ScanItem::Whole { .. } | ScanItem::Head { .. } => {
                unreachable!("no message type is asked for whole")
            }
            ScanItem::NeedMore => {
                if client.read_input().await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
}

/// Sends a FATAL to the client (best effort).
pub(super) async fn send_fatal(client: &mut ClientIo, error: &PgError) {
    error.encode(&mut client.outbuf);
    let _ = client.socket.writer().write_all(&client.outbuf).await;
    client.outbuf.clear();
}
