//! Relaying between a client and the server it holds: both directions at once with bounded
//! buffers, server responses forwarded as bytes in batches, and just enough tracking of what is
//! still due (Query/Sync answered by ReadyForQuery, COPY, the transaction status) to know when the
//! server may go back to the pool and in what state a departing client leaves it.

use super::client::ClientIo;
use super::params::ClientParams;
use crate::client_info::{ClientInfo, ClientPhase};
use crate::pool::Disposition;
use crate::pool::PoolStats;
use crate::protocol::{FrameError, FrameScanner, ScanItem};
use crate::server::ServerConn;
use crate::server::TxState;
use bytes::{Buf, BytesMut};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Stop reading a peer once this much is waiting to be written to the other side.
pub(super) const OUT_CAP: usize = 64 * 1024;
/// Bytes requested per socket read.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Largest server message decoded whole (ReadyForQuery, ParameterStatus, ErrorResponse).
const MAX_WHOLE_SERVER_MESSAGE: usize = 8 << 20;
/// Most requests (Query or Sync) in flight before sluice stops reading the client.
const MAX_PENDING: usize = 4096;

/// A request whose answer ends with ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// A simple Query (or FunctionCall).
    Query,
    /// A Sync closing an extended-protocol batch.
    Sync,
}

/// What is still due from the server, and its transaction status.
#[derive(Debug)]
pub(super) struct Link {
    pending: VecDeque<Request>,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// The server is in COPY FROM STDIN: Syncs are ignored by it until CopyDone/CopyFail.
    copy_in: bool,
    server_scan: FrameScanner,
    /// Client bytes on their way to the server.
    pub(super) to_server: BytesMut,
    /// When the request now in flight began (None when nothing is due).
    request_since: Option<Instant>,
    /// When the open transaction began (None outside a transaction).
    tx_since: Option<Instant>,
    /// When the server last became idle for the client (ReadyForQuery with nothing due).
    idle_since: Instant,
    /// A cancel was sent for the request in flight (query_timeout).
    cancel_sent: bool,
    /// The server reported a transaction block (status `T` or `E`) during this checkout.
    saw_transaction: bool,
    /// When the current transaction's first request began (for xact_time).
    xact_since: Option<Instant>,
}

/// The per-client time limits enforced while a server is held (zero: off).
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// query_timeout.
    pub(super) query: Duration,
    /// idle_transaction_timeout.
    pub(super) idle_transaction: Duration,
    /// transaction_timeout.
    pub(super) transaction: Duration,
    /// client_idle_timeout (a session-mode client holding an idle server).
    pub(super) client_idle: Duration,
}

/// Which limit ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// query_timeout: the cancel did not end the query in time either.
    Query,
    /// idle_transaction_timeout.
    IdleTransaction,
    /// transaction_timeout.
    Transaction,
    /// client_idle_timeout.
    ClientIdle,
}

impl Expiry {
    /// The error the client gets (PgBouncer's text first).
    pub(super) fn error(self, limit: &Timeouts) -> crate::protocol::PgError {
        let (text, d) = match self {
            Expiry::Query => ("query_timeout", limit.query),
            Expiry::IdleTransaction => ("idle transaction timeout", limit.idle_transaction),
            Expiry::Transaction => ("transaction timeout", limit.transaction),
            Expiry::ClientIdle => ("client_idle_timeout", limit.client_idle),
        };
        crate::protocol::PgError::fatal(crate::protocol::sqlstate::PROTOCOL_VIOLATION, text).with_detail(
            format!(
                "the limit is {:.1}s; the transaction, if any, was rolled back",
                d.as_secs_f64()
            ),
        )
    }
}

/// How a relay stretch ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RelayEnd {
    /// The transaction ended (ReadyForQuery `I`, nothing due): the server may be released.
    TransactionDone,
    /// The client sent Terminate.
    Terminated,
    /// The client closed its socket.
    ClientGone,
    /// A time limit ran out.
    TimedOut(Expiry),
    /// The operator killed the client (reason given).
    Killed(String),
}

/// Why relaying stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub(super) enum RelayError {
    /// Reading or writing the client failed.
    #[error("client connection failed: {0}")]
    Client(std::io::Error),
    /// The client broke the framing.
    #[error("client protocol violation: {0}")]
    ClientProtocol(FrameError),
    /// Reading or writing the server failed, or it closed.
    #[error("server connection failed: {0}")]
    Server(std::io::Error),
    /// The server broke the framing.
    #[error("server protocol violation: {0}")]
    ServerProtocol(String),
    /// The server sent a FATAL error (it is about to close): not forwarded, so the session can
    /// decide what the client is told.
    #[error("server sent FATAL: {0}")]
    ServerFatal(crate::protocol::PgError),
}

impl Link {
    /// Fresh tracking for a server that is at ReadyForQuery.
    pub(super) fn new() -> Link {
        Link {
            pending: VecDeque::new(),
            unsynced: false,
            copy_in: false,
            server_scan: FrameScanner::new(MAX_WHOLE_SERVER_MESSAGE, usize::MAX),
            to_server: BytesMut::new(),
            request_since: None,
            tx_since: None,
            idle_since: Instant::now(),
            cancel_sent: false,
            saw_transaction: false,
            xact_since: None,
        }
    }

    /// When the server fails under the client, can the client be told with ERRORs and keep its
    /// connection? Only if no transaction block was open (nothing of the client's state is lost
    /// beyond the failed request) and both streams are at message boundaries.
    pub(super) fn can_fail_softly(&self, client: &ClientIo) -> bool {
        !self.saw_transaction
            && !self.unsynced
            && !self.copy_in
            && self.server_scan.at_boundary()
            && client.at_boundary()
    }

    /// Requests still waiting for their ReadyForQuery.
    pub(super) fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// The earliest time limit that applies now, and which it is.
    fn next_deadline(&self, status: u8, t: &Timeouts) -> Option<(Instant, Expiry)> {
        let mut best: Option<(Instant, Expiry)> = None;
        let mut consider = |at: Instant, what: Expiry| {
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, what));
            }
        };
        if let Some(since) = self.request_since
            && !t.query.is_zero()
        {
            // After the cancel, the query gets as long again to end before sluice gives up on it.
            let factor = if self.cancel_sent { 2 } else { 1 };
            consider(since + t.query * factor, Expiry::Query);
        }
        if self.pending.is_empty() {
            if status != b'I' && !t.idle_transaction.is_zero() {
                consider(self.idle_since + t.idle_transaction, Expiry::IdleTransaction);
            }
            if status == b'I' && !t.client_idle.is_zero() {
                consider(self.idle_since + t.client_idle, Expiry::ClientIdle);
            }
        }
        if let Some(since) = self.tx_since
            && !t.transaction.is_zero()
        {
            consider(since + t.transaction, Expiry::Transaction);
        }
        best
    }

    fn on_client_message(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.pending.push_back(Request::Query),
            b'S' if self.copy_in => {} // ignored by the server during COPY FROM STDIN
            b'S' => {
                self.pending.push_back(Request::Sync);
                self.unsynced = false;
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => self.unsynced = true,
            b'c' | b'f' => self.copy_in = false,
            _ => {}
        }
    }

    fn on_server_message(&mut self, tag: u8) {
        if tag == b'G' {
            self.copy_in = true;
            // COPY started by an Execute: the Syncs the client already sent after it are ignored
            // by the server until the copy ends, so no ReadyForQuery will answer them.
            if self.pending.front() == Some(&Request::Sync) {
                self.pending.retain(|r| *r != Request::Sync);
            }
        }
    }

    fn on_ready_for_query(
        &mut self,
        server: &ServerConn,
        stats: &PoolStats,
        info: &ClientInfo,
        client: &mut ClientIo,
    ) {
        self.pending.pop_front();
        let now = Instant::now();
        let started = self.request_since.unwrap_or(now);
        stats.record_query(now.duration_since(started));
        if !self.pending.is_empty() {
            return;
        }
        self.request_since = None;
        self.idle_since = now;
        self.cancel_sent = false;
        let server_ref = Some((server.id, server.backend_pid));
        if server.tx_status == b'I' {
            self.tx_since = None;
            let xact_start = self.xact_since.take().unwrap_or(started);
            stats.record_xact(now.duration_since(xact_start), client.bytes_in, client.bytes_out);
            (client.bytes_in, client.bytes_out) = (0, 0);
            server.info.set_tx(TxState::Idle);
            info.set_phase(ClientPhase::Holding, server_ref);
        } else {
            self.saw_transaction = true;
            self.tx_since.get_or_insert(started);
            info.transaction_began(started);
            server.info.set_tx(TxState::IdleInTransaction);
            info.set_phase(ClientPhase::IdleInTransaction, server_ref);
        }
    }

    /// True when nothing is due from the server and no message is half-sent.
    fn quiet(&self, client: &ClientIo) -> bool {
        self.pending.is_empty()
            && !self.unsynced
            && !self.copy_in
            && self.to_server.is_empty()
            && self.server_scan.at_boundary()
            && client.at_boundary()
    }

    /// In what state the server is left if the client goes now.
    pub(super) fn disposition(&self, client: &ClientIo, server: &ServerConn) -> Disposition {
        if !self.quiet(client) || !server.read_buf.is_empty() {
            return Disposition::Close("client left with responses due or a message half-sent");
        }
        match server.tx_status {
            b'I' => Disposition::Clean,
            _ => Disposition::Rollback,
        }
    }
}

/// What the relay needs besides the two connections: the client's settings and identity, the
/// pool's counters, and the policy in force.
pub(super) struct RelayContext<'a> {
    /// The client's session settings (updated from ParameterStatus).
    pub(super) params: &'a mut ClientParams,
    /// The client's shared state.
    pub(super) info: &'a ClientInfo,
    /// The pool's counters.
    pub(super) stats: &'a PoolStats,
    /// Time limits.
    pub(super) timeouts: Timeouts,
    /// Transaction mode: stop at the end of each transaction.
    pub(super) release_when_idle: bool,
}

/// Relays until the transaction ends (when `release_when_idle`), the client leaves, or a side fails.
pub(super) async fn relay(
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Result<RelayEnd, RelayError> {
    // Built once per relay, not per loop turn: each turn only polls it.
    let info = ctx.info;
    let killed = info.killed();
    tokio::pin!(killed);
    loop {
        let terminated = pump_client(client, link, ctx.info)?;
        if link.request_since.is_none() && !link.pending.is_empty() {
            let now = Instant::now();
            link.request_since = Some(now);
            link.xact_since.get_or_insert(now);
            server.info.set_tx(TxState::Active);
            ctx.info
                .set_phase(ClientPhase::Active, Some((server.id, server.backend_pid)));
        }
        if pump_server(client, link, server, ctx)? && ctx.release_when_idle && link.quiet(client) {
            return Ok(RelayEnd::TransactionDone);
        }
        if terminated {
            return Ok(RelayEnd::Terminated);
        }
        let read_client = client.inbuf.len() < OUT_CAP
            && link.to_server.len() < OUT_CAP
            && link.pending.len() < MAX_PENDING;
        let read_server = client.outbuf.len() < OUT_CAP;
        let deadline = link.next_deadline(server.tx_status, &ctx.timeouts);
        tokio::select! {
            reason = &mut killed => return Ok(RelayEnd::Killed(reason)),
            _ = sleep_until(deadline.map(|d| d.0)), if deadline.is_some() => {
                let Some((_, expiry)) = deadline else { continue };
                if expiry == Expiry::Query && !link.cancel_sent {
                    link.cancel_sent = true;
                    tracing::info!(backend_pid = server.backend_pid, "query_timeout: cancelling the query");
                    crate::cancel::send_cancel(
                        server.target_addr.0.clone(),
                        server.target_addr.1,
                        server.backend_pid,
                        server.backend_secret,
                    );
                    continue;
                }
                return Ok(RelayEnd::TimedOut(expiry));
            }
            r = client.writer.write(&client.outbuf), if !client.outbuf.is_empty() => {
                let n = r.map_err(RelayError::Client)?;
                client.bytes_out += n as u64;
                client.outbuf.advance(n);
                release_if_empty(&mut client.outbuf);
            }
            r = server.writer.write(&link.to_server), if !link.to_server.is_empty() => {
                let n = r.map_err(RelayError::Server)?;
                link.to_server.advance(n);
                release_if_empty(&mut link.to_server);
            }
            r = read_some(&mut server.reader, &mut server.read_buf), if read_server => {
                if r.map_err(RelayError::Server)? == 0 {
                    return Err(RelayError::Server(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            r = read_some(&mut client.reader, &mut client.inbuf), if read_client => {
                let n = r.map_err(RelayError::Client)?;
                if n == 0 {
                    return Ok(RelayEnd::ClientGone);
                }
                client.bytes_in += n as u64;
            }
        }
    }
}

/// Drops a fully written buffer. Its bytes were split off a read buffer; while this empty
/// handle lives, that read buffer cannot reclaim its space and each `reserve` allocates anew.
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}

async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    buf.reserve(READ_CHUNK);
    reader.read_buf(buf).await
}

/// Moves complete client messages (or pieces of large ones) to the server-bound buffer.
/// Returns true when the client sent Terminate (which never reaches the server).
fn pump_client(client: &mut ClientIo, link: &mut Link, info: &ClientInfo) -> Result<bool, RelayError> {
    while link.to_server.len() < OUT_CAP && link.pending.len() < MAX_PENDING {
        match client
            .scan
            .next(&client.inbuf, |t| t == b'X')
            .map_err(RelayError::ClientProtocol)?
        {
            ScanItem::Pass { len, tag } => {
                if let Some(t) = tag {
                    link.on_client_message(t);
                    if t == b'Q' || t == b'P' {
                        remember_query(info, t, &client.inbuf[..len]);
                    }
                }
                link.to_server.unsplit(client.inbuf.split_to(len));
            }
            ScanItem::Whole { len, .. } => {
                client.inbuf.advance(len);
                return Ok(true);
            }
            ScanItem::NeedMore => break,
        }
    }
    Ok(false)
}

/// Moves server messages to the client-bound buffer, decoding only ReadyForQuery and
/// ParameterStatus. Returns true when it stopped at a ReadyForQuery that leaves nothing due.
fn pump_server(
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Result<bool, RelayError> {
    while client.outbuf.len() < OUT_CAP {
        let item = link
            .server_scan
            .next(&server.read_buf, |t| t == b'Z' || t == b'S' || t == b'E')
            .map_err(|e| RelayError::ServerProtocol(e.to_string()))?;
        match item {
            ScanItem::Pass { len, tag } => {
                if let Some(t) = tag {
                    link.on_server_message(t);
                }
                client.outbuf.unsplit(server.read_buf.split_to(len));
            }
            ScanItem::Whole { tag: b'Z', len } => {
                let msg = server.read_buf.split_to(len);
                if len != 6 {
                    return Err(RelayError::ServerProtocol("malformed ReadyForQuery".into()));
                }
                server.tx_status = msg[5];
                link.on_ready_for_query(server, ctx.stats, ctx.info, client);
                client.outbuf.unsplit(msg);
                if link.pending.is_empty() && server.tx_status == b'I' {
                    return Ok(true);
                }
            }
            ScanItem::Whole { tag: b'E', len } => {
                let msg = server.read_buf.split_to(len);
                let error = crate::protocol::PgError::from_fields(&msg[5..]);
                if error.severity == crate::protocol::Severity::Fatal {
                    return Err(RelayError::ServerFatal(error));
                }
                client.outbuf.unsplit(msg);
            }
            ScanItem::Whole { len, .. } => {
                let msg = server.read_buf.split_to(len);
                if let Some((name, value)) = parameter_status(&msg[5..]) {
                    ctx.params.observe_server_report(name, value);
                    if name == "application_name" {
                        ctx.info.set_application_name(value);
                    }
                    server.params.insert(name.to_string(), value.to_string());
                }
                client.outbuf.unsplit(msg);
            }
            ScanItem::NeedMore => break,
        }
    }
    Ok(false)
}

/// Keeps the start of a Query's SQL, or of a Parse's statement text, as the client's last query
/// (only the bytes already here; at most 200 characters are kept).
fn remember_query(info: &ClientInfo, tag: u8, message: &[u8]) {
    let body = message.get(5..).unwrap_or_default();
    let text = if tag == b'P' {
        // Statement name, then the query text.
        match body.iter().position(|&b| b == 0) {
            Some(i) => &body[i + 1..],
            None => return,
        }
    } else {
        body
    };
    let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len()).min(800)];
    info.set_last_query(&String::from_utf8_lossy(text));
}

fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

/// Writes everything buffered for the client.
pub(super) async fn flush_client(client: &mut ClientIo) -> std::io::Result<()> {
    if !client.outbuf.is_empty() {
        client.writer.write_all(&client.outbuf).await?;
        client.bytes_out += client.outbuf.len() as u64;
        client.outbuf = BytesMut::new();
    }
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
