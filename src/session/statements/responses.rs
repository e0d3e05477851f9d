//! The answers a server owes its client, in order: one entry per forwarded message that gets a
//! reply (ParseComplete, BindComplete, a description, an Execute's completion, ReadyForQuery),
//! plus the replies sluice gives itself — a CloseComplete for a statement only sluice knew, a
//! ParseComplete for a statement the batch in flight already prepared, an error PostgreSQL would
//! have given — placed where the server's own reply would have been. Knowing what each server message completes lets sluice hide the replies to
//! messages it sent on its own, undo its bookkeeping for messages that failed or that the server
//! skipped after an error, and never hand a server back with anything still owed.

use crate::protocol::tags::{backend, frontend};
use crate::server::statements::{PlanInvalidations, ServerStatements};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::VecDeque;

/// Which server message completes an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ends {
    /// ReadyForQuery answering a Sync.
    Sync,
    /// ReadyForQuery answering a simple Query or FunctionCall.
    Query,
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// CloseComplete.
    Close,
    /// RowDescription or NoData (after ParameterDescription for a statement).
    Describe,
    /// CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
}

impl Ends {
    /// The entry a forwarded client message creates, if the server answers it.
    pub(crate) fn for_client_message(tag: u8) -> Option<Ends> {
        Some(match tag {
            frontend::SYNC => Ends::Sync,
            frontend::QUERY | frontend::FUNCTION_CALL => Ends::Query,
            frontend::PARSE => Ends::Parse,
            frontend::BIND => Ends::Bind,
            frontend::CLOSE => Ends::Close,
            frontend::DESCRIBE => Ends::Describe,
            frontend::EXECUTE => Ends::Execute,
            _ => return None,
        })
    }

    fn is_ready(self) -> bool {
        matches!(self, Ends::Sync | Ends::Query)
    }

    fn completed_by(self, tag: u8) -> bool {
        match self {
            Ends::Sync | Ends::Query => tag == backend::READY_FOR_QUERY,
            Ends::Parse => tag == backend::PARSE_COMPLETE,
            Ends::Bind => tag == backend::BIND_COMPLETE,
            Ends::Close => tag == backend::CLOSE_COMPLETE,
            Ends::Describe => tag == backend::ROW_DESCRIPTION || tag == backend::NO_DATA,
            Ends::Execute => matches!(
                tag,
                backend::COMMAND_COMPLETE | backend::EMPTY_QUERY_RESPONSE | backend::PORTAL_SUSPENDED
            ),
        }
    }
}

/// Bookkeeping done ahead of a reply, to take back if the message fails or is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Undo {
    /// Nothing to take back.
    Nothing,
    /// A client's Parse of `name`: the client does not have it after all; neither does the
    /// server have `server` when the Parse went to it.
    ClientParse { name: Bytes, server: Option<u128> },
    /// A client's Close of `name`, answered by sluice: the client still has it.
    ClientClose {
        name: Bytes,
        /// Boxed: rare, and the largest variant otherwise (every entry of the ledger is as
        /// large as the largest).
        statement: Box<super::client::ClientStatement>,
    },
    /// A Parse sluice sent so a statement exists on this server.
    ServerParse(u128),
    /// A Close sluice sent (to make room, or of a stale copy): the statement is still there,
    /// as prepared at `epoch`.
    ServerClose { hash: u128, epoch: u64 },
    /// A Bind or Describe of the client's statement `name` (watched for "cached plan must not
    /// change result type"; a Describe also tells the statement's row description).
    Uses { hash: u128, name: Bytes },
    /// A Describe sluice sent to learn the row description of this server's copy before the
    /// client's statement `name` may use it; the client's messages wait until it is answered.
    ShapeCheck { hash: u128, name: Bytes },
    /// A Parse sluice sent to fail in place of a client message it refused: the server's error
    /// is replaced by this one (an ErrorResponse) for the client.
    InPlaceOf(Bytes),
}

/// One reply owed to the client.
#[derive(Debug)]
enum Due {
    /// The server's reply to a forwarded message; `hidden` when sluice sent the message itself.
    Server { ends: Ends, hidden: bool, undo: Undo },
    /// Bytes sluice replies itself once everything before them is answered; `ready` when they
    /// end with a ReadyForQuery answering a request.
    Reply { bytes: Bytes, undo: Undo, ready: bool },
}

/// What to do with a server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Forward it to the client.
    Forward,
    /// Drop it: it answers a message sluice sent on its own.
    Hide,
    /// Send these bytes instead: the server's error answers a Parse sent to fail in place of a
    /// client message sluice refused, and the client gets sluice's error for its message.
    Replace(Bytes),
}

/// The state a failed or skipped message leaves to repair.
pub(crate) struct Books<'a> {
    /// The client's statement names (None when sluice does not track them).
    pub(crate) client: Option<&'a mut super::client::ClientStatements>,
    /// The statements the server holds.
    pub(crate) server: &'a mut ServerStatements,
    /// The pool's record of refused plans.
    pub(crate) plans: &'a PlanInvalidations,
}

impl Books<'_> {
    /// Takes back the bookkeeping of messages that failed or were skipped, latest first, so
    /// that each step restores the state the one before it left.
    fn undo_all(&mut self, undos: Vec<Undo>) {
        for undo in undos.into_iter().rev() {
            self.undo(undo);
        }
    }

    fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Nothing | Undo::Uses { .. } | Undo::ShapeCheck { .. } | Undo::InPlaceOf(_) => {}
            Undo::ClientParse { name, server } => {
                if let Some(c) = self.client.as_deref_mut() {
                    c.forget(&name);
                }
                if let Some(h) = server {
                    self.server.remove(h);
                }
            }
            Undo::ClientClose { name, statement } => {
                if let Some(c) = self.client.as_deref_mut() {
                    c.restore(name, *statement);
                }
            }
            Undo::ServerParse(h) => {
                self.server.remove(h);
            }
            Undo::ServerClose { hash, epoch } => self.server.insert(hash, epoch),
        }
    }

    /// PostgreSQL refused the plan of a bound statement: every copy prepared before now is
    /// stale, and this client has been told.
    fn plan_refused(&mut self, hash: u128, name: &[u8]) {
        let epoch = self.plans.invalidate(hash);
        if let Some(c) = self.client.as_deref_mut() {
            c.told(name, epoch);
        }
    }
}

/// The SQLSTATE and message PostgreSQL gives when a prepared statement's result type changed.
const CACHED_PLAN: (&str, &str) = ("0A000", "cached plan must not change result type");

/// What a server failure means for the statement cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorNote {
    /// The error says a cached plan's result type changed.
    pub(crate) cached_plan: bool,
}

impl ErrorNote {
    /// Reads what matters from an ErrorResponse.
    pub(crate) fn of(e: &crate::protocol::PgError) -> ErrorNote {
        ErrorNote {
            cached_plan: e.sqlstate == CACHED_PLAN.0 && e.message == CACHED_PLAN.1,
        }
    }
}

/// The queue of replies owed, and how many of them are ReadyForQuery.
#[derive(Debug)]
pub(crate) struct Responses {
    due: VecDeque<Due>,
    /// Entries answered by ReadyForQuery (requests in flight).
    requests: usize,
    /// The server failed an extended-protocol message and is discarding messages until the next
    /// Sync, which the client has not sent yet.
    server_skipping: bool,
    /// Shape checks in the queue (the client's messages wait while there are any).
    checks: usize,
}

/// Most entries' room a ledger's queue keeps for the next checkout (about 3.5 KiB): one that a
/// long pipeline grew past it gives the rest back.
const KEPT_ENTRIES: usize = 32;
/// Most emptied queues kept per thread: about as many as the servers held at once by sessions on
/// it, beyond which a checkout allocates its own.
const KEPT_QUEUES: usize = 32;

thread_local! {
    /// Emptied queues of ledgers dropped on this thread, with their room: a checkout's ledger
    /// takes one instead of allocating a queue and growing it (two allocations and a copy per
    /// transaction). Per thread, not per client, so an idle client carries none of it; bounded
    /// by `KEPT_QUEUES` of `KEPT_ENTRIES`.
    static SPARES: RefCell<Vec<VecDeque<Due>>> = const { RefCell::new(Vec::new()) };
}

impl Default for Responses {
    /// An empty ledger, with the room of one dropped earlier on this thread if there is one.
    fn default() -> Self {
        let due = SPARES
            .try_with(|spares| spares.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        Responses {
            due,
            requests: 0,
            server_skipping: false,
            checks: 0,
        }
    }
}

impl Drop for Responses {
    /// Hands the emptied queue on to a ledger made later on this thread.
    fn drop(&mut self) {
        if self.due.capacity() == 0 {
            return;
        }
        let mut due = std::mem::take(&mut self.due);
        // A ledger is usually dropped empty (at a transaction's end) and within its bound:
        // neither call is made then (each is a call and a walk for nothing).
        if !due.is_empty() {
            due.clear();
        }
        if due.capacity() > KEPT_ENTRIES {
            due.shrink_to(KEPT_ENTRIES);
        }
        // During the thread's exit the slot is gone, and past the bound there is no room: the
        // queue is then simply freed.
        let _ = SPARES.try_with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < KEPT_QUEUES {
                spares.push(due);
            }
        });
    }
}

impl Responses {
    /// Requests (Query or Sync) waiting for their ReadyForQuery.
    pub(crate) fn requests(&self) -> usize {
        self.requests
    }

    /// Entries of any kind still owed.
    pub(crate) fn len(&self) -> usize {
        self.due.len()
    }

    /// Nothing is owed.
    pub(crate) fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    /// A shape check is owed: the client's next message waits for it.
    pub(crate) fn checking(&self) -> bool {
        self.checks > 0
    }

    /// The entry a row description or NoData now arriving completes, when it is a Describe of a
    /// statement: its bookkeeping says whose description it is.
    pub(crate) fn describing(&self) -> Option<&Undo> {
        match self.due.front() {
            Some(Due::Server {
                ends: Ends::Describe,
                undo,
                ..
            }) => Some(undo),
            _ => None,
        }
    }

    /// Takes the first entry off the queue, keeping the shape-check count.
    fn pop(&mut self) -> Option<Due> {
        let due = self.due.pop_front();
        if let Some(Due::Server {
            undo: Undo::ShapeCheck { .. },
            ..
        }) = &due
        {
            self.checks -= 1;
        }
        due
    }

    /// The server is discarding messages until a Sync the client has yet to send.
    pub(crate) fn server_skipping(&self) -> bool {
        self.server_skipping
    }

    /// A forwarded message the server will answer (nothing for those it does not).
    pub(crate) fn expect(&mut self, tag: u8) {
        if self.server_skipping {
            if tag != frontend::SYNC {
                return;
            }
            self.server_skipping = false;
        }
        if let Some(ends) = Ends::for_client_message(tag) {
            self.push_server(ends, false, Undo::Nothing);
        }
    }

    /// A forwarded message with bookkeeping to undo if it fails; `hidden` when sluice sent it.
    pub(crate) fn push_server(&mut self, ends: Ends, hidden: bool, undo: Undo) {
        if ends.is_ready() {
            self.requests += 1;
        }
        if matches!(undo, Undo::ShapeCheck { .. }) {
            self.checks += 1;
        }
        self.due.push_back(Due::Server { ends, hidden, undo });
    }

    /// A reply sluice gives itself once everything before it is answered; `ready` when it
    /// answers a whole request (it ends with ReadyForQuery).
    pub(crate) fn push_reply(&mut self, bytes: Bytes, undo: Undo, ready: bool) {
        if ready {
            self.requests += 1;
        }
        self.due.push_back(Due::Reply { bytes, undo, ready });
    }

    /// An error sluice answers itself in place of a client message's reply.
    pub(crate) fn push_error(&mut self, e: &crate::protocol::PgError) {
        let mut out = bytes::BytesMut::new();
        e.encode(&mut out);
        self.push_reply(out.freeze(), Undo::Nothing, false);
    }

    /// True when the next reply owed is one of sluice's own (what [`Responses::pop_reply`]
    /// would give).
    pub(crate) fn has_reply(&self) -> bool {
        matches!(self.due.front(), Some(Due::Reply { .. }))
    }

    /// The next reply of sluice's own, if it is at the front of the queue, and whether it
    /// answered a request.
    pub(crate) fn pop_reply(&mut self) -> Option<(Bytes, bool)> {
        if !matches!(self.due.front(), Some(Due::Reply { .. })) {
            return None;
        }
        match self.due.pop_front() {
            Some(Due::Reply { bytes, ready, .. }) => {
                if ready {
                    self.requests -= 1;
                }
                Some((bytes, ready))
            }
            _ => None,
        }
    }

    /// A server message with `tag` begins (`error` is set for an ErrorResponse). Returns what to
    /// do with it and whether it was a ReadyForQuery that answered a request.
    pub(crate) fn on_server_message(
        &mut self,
        tag: u8,
        error: Option<ErrorNote>,
        books: &mut Books<'_>,
    ) -> Verdict {
        if tag == backend::READY_FOR_QUERY {
            self.on_ready(books);
            return Verdict::Forward;
        }
        let Some(Due::Server { ends, hidden, .. }) = self.due.front() else {
            // Asynchronous messages (notices, notifications, parameter reports) and anything
            // inside a simple query's answer.
            return Verdict::Forward;
        };
        let (ends, hidden) = (*ends, *hidden);
        if let Some(note) = error {
            if ends.is_ready() {
                return Verdict::Forward; // part of a simple query's answer; ReadyForQuery follows
            }
            // An extended-protocol message failed: it is done, and the server skips everything
            // up to the next Sync.
            let mut undos = Vec::new();
            let mut verdict = Verdict::Forward;
            if let Some(Due::Server { undo, .. }) = self.pop() {
                match (&undo, note.cached_plan) {
                    (Undo::Uses { hash, name }, true) => books.plan_refused(*hash, name),
                    (Undo::InPlaceOf(reply), _) => verdict = Verdict::Replace(reply.clone()),
                    _ => {}
                }
                undos.push(undo);
            }
            self.skip_to_sync(&mut undos);
            books.undo_all(undos);
            return verdict;
        }
        // Everything answering a message sluice sent itself is hidden, but for what the server
        // may send at any time (notices, notifications, parameter reports).
        let verdict = if hidden && !backend::asynchronous(tag) {
            Verdict::Hide
        } else {
            Verdict::Forward
        };
        if ends.completed_by(tag) {
            self.pop();
        }
        verdict
    }

    /// Drops the entries the server will skip after an error, collecting their bookkeeping to
    /// take back.
    fn skip_to_sync(&mut self, undos: &mut Vec<Undo>) {
        loop {
            match self.due.front() {
                Some(Due::Server { ends: Ends::Sync, .. }) => return,
                None => {
                    self.server_skipping = true;
                    return;
                }
                Some(_) => {}
            }
            match self.pop() {
                Some(Due::Server { ends, undo, .. }) => {
                    if ends.is_ready() {
                        self.requests -= 1;
                    }
                    undos.push(undo);
                }
                Some(Due::Reply { undo, ready, .. }) => {
                    if ready {
                        self.requests -= 1;
                    }
                    undos.push(undo);
                }
                None => return,
            }
        }
    }

    /// ReadyForQuery: answers the first request in the queue; anything owed before it was
    /// skipped by the server.
    fn on_ready(&mut self, books: &mut Books<'_>) {
        let mut undos = Vec::new();
        while let Some(entry) = self.pop() {
            match entry {
                Due::Server { ends, undo, .. } => {
                    if ends.is_ready() {
                        self.requests -= 1;
                        if ends == Ends::Sync {
                            books.server.new_batch();
                        }
                        break;
                    }
                    undos.push(undo);
                }
                Due::Reply { undo, ready, .. } => {
                    if ready {
                        self.requests -= 1;
                    }
                    undos.push(undo);
                }
            }
        }
        books.undo_all(undos);
    }

    /// COPY FROM STDIN began inside an extended-protocol batch: the server ignores the Syncs the
    /// client already sent after it, so no ReadyForQuery will answer them.
    pub(crate) fn copy_in_started(&mut self) {
        if matches!(
            self.due.front(),
            Some(Due::Server {
                ends: Ends::Execute,
                ..
            })
        ) {
            let before = self.due.len();
            self.due
                .retain(|d| !matches!(d, Due::Server { ends: Ends::Sync, .. }));
            self.requests -= before - self.due.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own, so no other test's ledgers are in its spares.
    fn on_fresh_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().expect("the test thread panicked");
    }

    #[test]
    fn a_ledger_takes_the_room_of_one_dropped_before_on_its_thread_and_nothing_else() {
        on_fresh_thread(|| {
            let mut first = Responses::default();
            assert_eq!(first.due.capacity(), 0);
            // A client that leaves mid-batch: entries still owed when the ledger goes.
            for tag in [
                frontend::PARSE,
                frontend::BIND,
                frontend::EXECUTE,
                frontend::SYNC,
                frontend::QUERY,
            ] {
                first.expect(tag);
            }
            let room = first.due.capacity();
            drop(first);
            let next = Responses::default();
            assert_eq!(next.due.capacity(), room);
            assert!(next.is_empty());
            assert_eq!(next.requests(), 0);
            assert!(!next.checking() && !next.server_skipping());
        });
    }

    #[test]
    fn a_ledger_grown_by_a_long_pipeline_keeps_only_bounded_room() {
        on_fresh_thread(|| {
            let mut pipeline = Responses::default();
            for _ in 0..10_000 {
                pipeline.expect(frontend::SYNC);
            }
            drop(pipeline);
            let next = Responses::default();
            assert!(next.due.capacity() >= 1 && next.due.capacity() <= KEPT_ENTRIES);
        });
    }

    #[test]
    fn a_thread_keeps_a_bounded_number_of_emptied_queues() {
        on_fresh_thread(|| {
            let ledgers: Vec<Responses> = (0..KEPT_QUEUES + 5)
                .map(|_| {
                    let mut r = Responses::default();
                    r.expect(frontend::SYNC);
                    r
                })
                .collect();
            drop(ledgers);
            assert_eq!(SPARES.with(|s| s.borrow().len()), KEPT_QUEUES);
        });
    }

    #[test]
    fn a_ledger_entry_stays_small() {
        // Every entry of the queue is as large as the largest kind: a rare one that is larger
        // (a client's Close) is boxed.
        assert!(
            std::mem::size_of::<Due>() <= 112,
            "{}",
            std::mem::size_of::<Due>()
        );
    }
}
