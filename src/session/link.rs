//! What a session knows about the server it holds while relaying: the replies still owed, whether
//! an extended-protocol batch or a COPY is open, the clocks behind the time limits, and — from
//! all that — in what state the server would be left if the client went now.

use super::client::ClientIo;
use super::statements::Responses;
use crate::client_info::{ClientInfo, ClientPhase};
use crate::pool::{Disposition, PoolStats};
use crate::protocol::{FrameScanner, TxStatus};
use crate::server::{ServerConn, TxState};
use bytes::BytesMut;
use std::time::{Duration, Instant};

/// Largest server message decoded whole (ReadyForQuery, ParameterStatus, ErrorResponse).
const MAX_WHOLE_SERVER_MESSAGE: usize = 8 << 20;

/// The relay's view of the server it holds.
#[derive(Debug)]
pub(super) struct Link {
    /// Replies still owed, in order.
    pub(super) responses: Responses,
    /// Extended-protocol messages sent since the last Sync.
    pub(super) unsynced: bool,
    /// The server is in COPY FROM STDIN: Syncs are ignored by it until CopyDone/CopyFail.
    pub(super) copy_in: bool,
    /// sluice refused a message of the client's batch itself: the rest of it, up to Sync, is
    /// dropped, as PostgreSQL would after an error.
    pub(super) client_skipping: bool,
    /// The client message being forwarded in pieces is being dropped instead.
    pub(super) dropping_message: bool,
    /// The last client scan stopped for want of bytes of a message that must come whole: the
    /// client must be read even past the usual buffer limit.
    pub(super) client_starved: bool,
    pub(super) server_scan: FrameScanner,
    /// Client bytes on their way to the server.
    pub(super) to_server: BytesMut,
    /// When the request now in flight began (None when nothing is due).
    pub(super) request_since: Option<Instant>,
    /// When the open transaction began (None outside a transaction).
    tx_since: Option<Instant>,
    /// When the server last became idle for the client (ReadyForQuery with nothing due).
    idle_since: Instant,
    /// A cancel was sent for the request in flight (query_timeout).
    pub(super) cancel_sent: bool,
    /// The server reported a transaction block (status `T` or `E`) during this checkout.
    saw_transaction: bool,
    /// When the current transaction's first request began (for xact_time).
    pub(super) xact_since: Option<Instant>,
    /// What the server reported and reset, for RESET's semantics.
    pub(super) resets: super::params::ResetWatch,
    /// Watches the client's messages for changes of role or session authorization.
    pub(super) identity: super::identity::IdentityWatch,
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

impl Link {
    /// Fresh tracking for a server that is at ReadyForQuery.
    pub(super) fn new() -> Link {
        Link {
            responses: Responses::default(),
            unsynced: false,
            copy_in: false,
            client_skipping: false,
            dropping_message: false,
            client_starved: false,
            server_scan: FrameScanner::new(MAX_WHOLE_SERVER_MESSAGE, usize::MAX),
            to_server: BytesMut::new(),
            request_since: None,
            tx_since: None,
            idle_since: Instant::now(),
            cancel_sent: false,
            saw_transaction: false,
            xact_since: None,
            resets: Default::default(),
            identity: Default::default(),
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
        self.responses.requests()
    }

    /// The earliest time limit that applies now, and which it is.
    pub(super) fn next_deadline(&self, status: TxStatus, t: &Timeouts) -> Option<(Instant, Expiry)> {
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
        if self.responses.requests() == 0 {
            if status != TxStatus::Idle && !t.idle_transaction.is_zero() {
                consider(self.idle_since + t.idle_transaction, Expiry::IdleTransaction);
            }
            if status == TxStatus::Idle && !t.client_idle.is_zero() {
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

    /// Notes a client message forwarded as it is (it creates its expected reply).
    pub(super) fn on_client_message(&mut self, tag: u8) {
        match tag {
            b'S' if self.copy_in => return, // ignored by the server during COPY FROM STDIN
            b'S' => self.unsynced = false,
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => self.unsynced = true,
            b'c' | b'f' => self.copy_in = false,
            _ => {}
        }
        self.responses.expect(tag);
    }

    /// Notes the start of a server message that matters to the link itself.
    pub(super) fn on_server_message(&mut self, tag: u8) {
        if tag == b'G' {
            self.copy_in = true;
            self.responses.copy_in_started();
        }
    }

    /// Marks the start of a request when one is in flight and none was.
    pub(super) fn note_request_start(&mut self, server: &ServerConn, info: &ClientInfo) {
        if self.request_since.is_none() && self.responses.requests() > 0 {
            let now = Instant::now();
            self.request_since = Some(now);
            self.xact_since.get_or_insert(now);
            server.info.set_tx(TxState::Active);
            info.set_phase(ClientPhase::Active, Some((server.id, server.backend_pid)));
        }
    }

    /// A request was answered (its ReadyForQuery was forwarded, with status `server.tx_status`).
    pub(super) fn on_ready_for_query(
        &mut self,
        server: &ServerConn,
        stats: &PoolStats,
        info: &ClientInfo,
        client: &mut ClientIo,
    ) {
        let now = Instant::now();
        let started = self.request_since.unwrap_or(now);
        stats.record_query(now.duration_since(started));
        if self.responses.requests() > 0 {
            return;
        }
        self.request_since = None;
        self.idle_since = now;
        self.cancel_sent = false;
        let server_ref = Some((server.id, server.backend_pid));
        if server.tx_status == TxStatus::Idle {
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
    pub(super) fn quiet(&self, client: &ClientIo) -> bool {
        self.responses.is_empty()
            && !self.unsynced
            && !self.copy_in
            && !self.responses.server_skipping()
            && !self.client_skipping
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
            TxStatus::Idle => Disposition::Clean,
            TxStatus::InTransaction | TxStatus::Failed => Disposition::Rollback,
        }
    }
}
