//! What a session knows about the server it holds while relaying: the replies still owed, whether
//! an extended-protocol batch or a COPY is open, what becomes of the client's messages, the
//! clocks behind the time limits, and — from all that — in what state the server would be left
//! if the client went now. Each of these is an enum whose variants carry their clocks, so no
//! combination PostgreSQL cannot be in can be written down.

use super::client::ClientIo;
use super::statements::Responses;
use crate::clients::{ClientInfo, ClientPhase, Tick};
use crate::pool::{Disposition, PoolStats};
use crate::protocol::tags::{backend, frontend};
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
    /// What the server takes from the client now: messages (inside a batch or not), or COPY data.
    pub(super) input: ServerInput,
    /// What becomes of the client's messages.
    pub(super) client_batch: ClientBatch,
    pub(super) server_scan: FrameScanner,
    /// Client bytes on their way to the server.
    pub(super) to_server: BytesMut,
    /// The request in flight, if any, and whether query_timeout cancelled it.
    pub(super) request: Request,
    /// The transaction's clocks: since when it is counted, and the open transaction block.
    transaction: Transaction,
    /// When the server last became idle for the client (ReadyForQuery with nothing due).
    idle_since: Instant,
    /// What the client's and the server's shared records show now (only this session writes
    /// them while it holds the server), so a write that would change nothing is skipped.
    shown: Shown,
    /// What the server reported and reset, for RESET's semantics.
    pub(super) resets: super::settings_watch::ResetWatch,
    /// The one pass over the text of the client's message now passing, for the watches that
    /// read it (settings, pins, identity, LISTEN).
    pub(super) text: super::text_scan::TextScan,
    /// Watches for session state that pins the server to the client (transaction mode).
    pub(super) pins: super::pins::PinWatch,
    /// The checkout's clock reading, while nothing has been awaited since it was taken: the
    /// relay's first turn takes it (for its first request's start) instead of reading the
    /// clock again, and it is gone from then on.
    fresh: Option<Instant>,
    /// A clock reading and its [`Tick`], as the client's record keeps it (the checkout's): a
    /// request that began at it ends at a tick found by addition ([`Tick::after`]).
    known: Option<(Instant, Tick)>,
    /// The tick of `idle_since`, when it was found that way.
    idle_tick: Option<Tick>,
}

/// Whether extended-protocol messages went to the server since the last Sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Batch {
    /// None did: the server waits for no Sync.
    Synced,
    /// Some did: the server's batch ends at the client's next Sync.
    Unsynced,
}

/// What the server takes from the client now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServerInput {
    /// Protocol messages.
    Messages(Batch),
    /// COPY FROM STDIN data: the server ignores Syncs until CopyDone or CopyFail, then goes on
    /// with the batch it was in.
    CopyIn(Batch),
}

impl ServerInput {
    /// Extended-protocol messages went to the server (in COPY too: it keeps the batch open).
    pub(super) fn unsynced(&mut self) {
        match self {
            ServerInput::Messages(b) | ServerInput::CopyIn(b) => *b = Batch::Unsynced,
        }
    }
}

/// What becomes of the client's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientBatch {
    /// They go to the server.
    Forwarding,
    /// The message now passing in pieces was answered by sluice: the rest of it is dropped, and
    /// the next message goes to the server.
    DroppingMessage,
    /// sluice refused a message of the client's batch itself: the rest of the batch, up to
    /// Sync, is dropped, as PostgreSQL would after an error.
    SkippingToSync,
}

/// The request in flight (the first of those pipelined, while any is unanswered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Request {
    /// Nothing is in flight.
    Nothing,
    /// A request is in flight since `since`.
    Running {
        /// When it began.
        since: Instant,
    },
    /// query_timeout ran out for the request in flight since `since`: a cancel was sent, and
    /// the query gets as long again to end.
    Cancelled {
        /// When it began.
        since: Instant,
    },
}

impl Request {
    /// When the request in flight began.
    fn since(self) -> Option<Instant> {
        match self {
            Request::Nothing => None,
            Request::Running { since } | Request::Cancelled { since } => Some(since),
        }
    }
}

/// What the shared records of the client ([`ClientInfo`]) and of the server show, as this
/// session last wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// The client's phase and the server's state as written.
    Written(ClientPhase, TxState),
    /// The transaction ended (ReadyForQuery `I`, nothing due) at this moment, and the records
    /// still show it active: in transaction mode the server is about to be released, which
    /// writes them anyway; if the relay goes on instead, [`Link::publish`] writes them.
    Due(Instant),
}

/// Whether the server reported a transaction block during this checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlocksSeen {
    /// Never: losing the server loses nothing of the client's but the request in flight.
    None,
    /// At least one (now ended).
    Some,
}

/// The transaction as the clocks see it. `xact_counted_since` is when the first request of the
/// transaction now counted for the pool's xact_time began (None: none ran since the last one
/// ended); a transaction block is what the server reports with status `T` or `E`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transaction {
    /// No transaction block is open.
    Outside {
        xact_counted_since: Option<Instant>,
        /// Whether one was open earlier in this checkout.
        blocks_seen: BlocksSeen,
    },
    /// A transaction block is open since `block_since` (transaction_timeout counts from it).
    InBlock {
        xact_counted_since: Option<Instant>,
        block_since: Instant,
    },
}

impl Transaction {
    /// When the transaction counted for xact_time began.
    fn xact_counted_since(&mut self) -> &mut Option<Instant> {
        match self {
            Transaction::Outside {
                xact_counted_since, ..
            }
            | Transaction::InBlock {
                xact_counted_since, ..
            } => xact_counted_since,
        }
    }
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
    /// Fresh tracking for a server that is at ReadyForQuery, lent (the client's record shows it
    /// `Active`, the server's `Active`) at `now`. `fresh`: `now` again when the relay will be
    /// polled before anything is awaited (see [`Link::take_fresh`]), with its tick.
    pub(super) fn new(now: Instant, fresh: Option<(Instant, Tick)>) -> Link {
        Link {
            responses: Responses::default(),
            input: ServerInput::Messages(Batch::Synced),
            client_batch: ClientBatch::Forwarding,
            server_scan: FrameScanner::new(MAX_WHOLE_SERVER_MESSAGE, usize::MAX),
            to_server: BytesMut::new(),
            request: Request::Nothing,
            transaction: Transaction::Outside {
                xact_counted_since: None,
                blocks_seen: BlocksSeen::None,
            },
            idle_since: now,
            shown: Shown::Written(ClientPhase::Active, TxState::Active),
            resets: Default::default(),
            text: Default::default(),
            pins: Default::default(),
            fresh: fresh.map(|(at, _)| at),
            known: fresh,
            idle_tick: None,
        }
    }

    /// The checkout's clock reading, once: only the relay's first turn, polled in the same poll
    /// as the checkout, may use it as "now".
    pub(super) fn take_fresh(&mut self) -> Option<Instant> {
        self.fresh.take()
    }

    /// When the server fails under the client, can the client be told with ERRORs and keep its
    /// connection? Only if no transaction block was open (nothing of the client's state is lost
    /// beyond the failed request) and both streams are at message boundaries.
    pub(super) fn can_fail_softly(&self, client: &ClientIo) -> bool {
        matches!(
            self.transaction,
            Transaction::Outside {
                blocks_seen: BlocksSeen::None,
                ..
            }
        ) && self.input == ServerInput::Messages(Batch::Synced)
            && self.server_scan.at_boundary()
            && client.at_boundary()
    }

    /// query_timeout ran out: marks the request in flight cancelled. False when it already was
    /// (or nothing is in flight): then the time is up.
    pub(super) fn cancel_request(&mut self) -> bool {
        match self.request {
            Request::Running { since } => {
                self.request = Request::Cancelled { since };
                true
            }
            Request::Nothing | Request::Cancelled { .. } => false,
        }
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
        if !t.query.is_zero() {
            match self.request {
                Request::Nothing => {}
                Request::Running { since } => consider(since + t.query, Expiry::Query),
                // After the cancel, the query gets as long again to end before sluice gives up.
                Request::Cancelled { since } => consider(since + t.query * 2, Expiry::Query),
            }
        }
        if self.responses.requests() == 0 {
            if status != TxStatus::Idle && !t.idle_transaction.is_zero() {
                consider(self.idle_since + t.idle_transaction, Expiry::IdleTransaction);
            }
            if status == TxStatus::Idle && !t.client_idle.is_zero() {
                consider(self.idle_since + t.client_idle, Expiry::ClientIdle);
            }
        }
        if let Transaction::InBlock { block_since, .. } = self.transaction
            && !t.transaction.is_zero()
        {
            consider(block_since + t.transaction, Expiry::Transaction);
        }
        best
    }

    /// Notes a client message forwarded as it is (it creates its expected reply).
    pub(super) fn on_client_message(&mut self, tag: u8) {
        match (tag, self.input) {
            // Ignored by the server during COPY FROM STDIN.
            (frontend::SYNC, ServerInput::CopyIn(_)) => return,
            (frontend::SYNC, ServerInput::Messages(_)) => self.input = ServerInput::Messages(Batch::Synced),
            (t, _) if frontend::opens_batch(t) => self.input.unsynced(),
            (frontend::COPY_DONE | frontend::COPY_FAIL, ServerInput::CopyIn(batch)) => {
                self.input = ServerInput::Messages(batch)
            }
            _ => {}
        }
        self.responses.expect(tag); // ok: the reply ledger's expect (a reply now due), not Option::expect
    }

    /// Notes the start of a server message that matters to the link itself.
    pub(super) fn on_server_message(&mut self, tag: u8) {
        if tag == backend::COPY_IN_RESPONSE {
            if let ServerInput::Messages(batch) = self.input {
                self.input = ServerInput::CopyIn(batch);
            }
            self.responses.copy_in_started();
        }
    }

    /// Marks the start of a request when one is in flight and none was. `fresh`: a clock
    /// reading taken in this same poll, if the caller has one.
    pub(super) fn note_request_start(
        &mut self,
        server: &ServerConn,
        info: &ClientInfo,
        fresh: Option<Instant>,
    ) {
        if self.request == Request::Nothing && self.responses.requests() > 0 {
            let now = fresh.unwrap_or_else(Instant::now);
            self.request = Request::Running { since: now };
            self.transaction.xact_counted_since().get_or_insert(now);
            self.show(ClientPhase::Active, TxState::Active, now, server, info);
        }
    }

    /// Writes the client's phase and the server's state into their shared records, unless they
    /// show them already.
    fn show(
        &mut self,
        phase: ClientPhase,
        tx: TxState,
        now: Instant,
        server: &ServerConn,
        info: &ClientInfo,
    ) {
        let (shown_phase, shown_tx) = match self.shown {
            Shown::Written(p, t) => (p, t),
            Shown::Due(_) => (ClientPhase::Active, TxState::Active),
        };
        if shown_tx != tx {
            server.info.set_tx(tx);
        }
        if shown_phase != phase {
            info.set_phase_at(phase, now);
        }
        self.shown = Shown::Written(phase, tx);
    }

    /// Writes what a transaction's end left due (see [`Shown::Due`]): called when the relay
    /// goes on after it instead of releasing the server.
    pub(super) fn publish(&mut self, server: &ServerConn, info: &ClientInfo) {
        if let Shown::Due(at) = self.shown {
            self.show(ClientPhase::Holding, TxState::Idle, at, server, info);
        }
    }

    /// When the last request was answered with nothing more due (the moment a transaction-mode
    /// server is released at).
    pub(super) fn idle_since(&self) -> Instant {
        self.idle_since
    }

    /// The tick of [`Link::idle_since`], when known without a conversion.
    pub(super) fn idle_tick(&self) -> Option<Tick> {
        self.idle_tick
    }

    /// A request was answered (its ReadyForQuery was forwarded, with status `server.tx_status`).
    /// With `release_when_idle` (transaction mode), a transaction's end leaves the records'
    /// update due (see [`Shown::Due`]).
    pub(super) fn on_ready_for_query(
        &mut self,
        server: &ServerConn,
        stats: &PoolStats,
        info: &ClientInfo,
        client: &mut ClientIo,
        release_when_idle: bool,
    ) {
        let now = Instant::now();
        let started = self.request.since().unwrap_or(now);
        let query_time = now.duration_since(started);
        stats.record_query(query_time);
        if self.responses.requests() > 0 {
            return;
        }
        self.request = Request::Nothing;
        self.idle_since = now;
        self.idle_tick = match self.known {
            Some((at, tick)) if at == started => Some(tick.after(query_time)),
            _ => None,
        };
        let xact_counted_since = *self.transaction.xact_counted_since();
        if server.tx_status == TxStatus::Idle {
            self.transaction = Transaction::Outside {
                xact_counted_since: None,
                // A block that was open has ended; one seen earlier stays seen.
                blocks_seen: match self.transaction {
                    Transaction::Outside { blocks_seen, .. } => blocks_seen,
                    Transaction::InBlock { .. } => BlocksSeen::Some,
                },
            };
            // A transaction of one request took as long as it (no second subtraction).
            let xact_time = match xact_counted_since {
                Some(start) if start != started => now.duration_since(start),
                _ => query_time,
            };
            stats.record_xact(xact_time, client.bytes_in, client.bytes_out);
            (client.bytes_in, client.bytes_out) = (0, 0);
            if release_when_idle {
                self.shown = Shown::Due(now);
            } else {
                self.show(ClientPhase::Holding, TxState::Idle, now, server, info);
            }
        } else {
            let block_since = match self.transaction {
                Transaction::InBlock { block_since, .. } => block_since,
                Transaction::Outside { .. } => started,
            };
            self.transaction = Transaction::InBlock {
                xact_counted_since,
                block_since,
            };
            if self.shown != Shown::Written(ClientPhase::IdleInTransaction, TxState::IdleInTransaction) {
                server.info.set_tx(TxState::IdleInTransaction);
                info.idle_in_transaction(started, now);
                self.shown = Shown::Written(ClientPhase::IdleInTransaction, TxState::IdleInTransaction);
            }
        }
    }

    /// True when nothing is due from the server and no message is half-sent.
    pub(super) fn quiet(&self, client: &ClientIo) -> bool {
        self.responses.is_empty()
            && self.input == ServerInput::Messages(Batch::Synced)
            && !self.responses.server_skipping()
            && self.client_batch != ClientBatch::SkippingToSync
            && self.to_server.is_empty()
            && self.server_scan.at_boundary()
            && client.at_boundary()
    }

    /// True when everything sent to the server is answered, though its batch may be open (the
    /// client sent Flush, not Sync).
    pub(super) fn answered(&self, client: &ClientIo) -> bool {
        self.responses.is_empty()
            && matches!(self.input, ServerInput::Messages(_))
            && !self.responses.server_skipping()
            && self.client_batch != ClientBatch::SkippingToSync
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
