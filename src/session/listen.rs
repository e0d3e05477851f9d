//! LISTEN and UNLISTEN in transaction pooling, as the session sees them: the relay hands over
//! a client's `LISTEN ch` / `UNLISTEN ch` / `UNLISTEN *` (a simple Query of its own, or an
//! unnamed Parse, Bind, Describe, Execute, Sync batch) once nothing else is in flight; the
//! session answers it through the pool's hub (`notify/`), at once or, inside a transaction
//! block, at its COMMIT. Forms that are not emulated (LISTEN among other statements, a named
//! prepared LISTEN) are rewritten so that the server itself raises a clear error in their
//! place: the transaction fails exactly where PostgreSQL's would, and no LISTEN reaches a
//! pooled server. Notifications are written to the client between messages.

use super::client::ClientIo;
use super::listen_wire::{BatchShape, batch_len, batch_shape, rewrite_batch, rewrite_message, split_cstr};
use super::statements::{ClientStatements, MAX_LISTEN_STATEMENTS};
use crate::notify::sql::{ListenCommand, ListenSql, classify};
use crate::notify::{NotifyLimits, Subscription};
use crate::protocol::messages::{self, BIND_COMPLETE, NO_DATA, NO_PARAMETERS, PARSE_COMPLETE};
use crate::protocol::tags::frontend;
use crate::protocol::{PgError, TxStatus, sqlstate};
use bytes::{Bytes, BytesMut};
use std::time::Duration;

/// Query and Parse messages up to this size are read whole in transaction mode and looked at
/// for LISTEN; a longer one passes unread (a LISTEN statement is a few dozen bytes).
pub(super) const LISTEN_TEXT_MAX: usize = 8192;
/// Most bytes of a LISTEN batch (Parse to Sync) sluice waits for before it refuses the batch.
const BATCH_MAX: usize = 16 * 1024;

/// A client's listening state: its subscription and how its open transaction is ending.
pub(super) struct Listening {
    sub: Subscription,
    /// The last CommandComplete of the transaction in progress was COMMIT.
    ending: Ending,
}

/// How the current transaction's last command ended it, judged at its ReadyForQuery `I`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Anything but COMMIT: a ROLLBACK, a failed COMMIT (tagged ROLLBACK), an error.
    Other,
    /// COMMIT (or END).
    Commit,
}

impl Listening {
    /// The server completed a command (`body`: tag and NUL).
    pub(super) fn on_command_complete(&mut self, body: &[u8]) {
        if self.sub.has_pending() {
            let tag = body.strip_suffix(b"\0").unwrap_or(body);
            self.ending = if tag == b"COMMIT" {
                Ending::Commit
            } else {
                Ending::Other
            };
        }
    }

    /// The server is ready again with `status`: a transaction that ended applies or drops what
    /// its LISTENs and UNLISTENs asked for.
    pub(super) fn on_ready(&mut self, status: TxStatus) {
        if status == TxStatus::Idle && self.sub.has_pending() {
            self.sub.end_transaction(self.ending == Ending::Commit);
        }
        if status == TxStatus::Idle {
            self.ending = Ending::Other;
        }
    }

    /// UNLISTENs that ran among other statements of a Query: at once, or at COMMIT when the
    /// client is `in_transaction` (a block it opened before).
    pub(super) fn unlisten_among(&mut self, commands: &[ListenCommand], in_transaction: bool) {
        for c in commands {
            match c {
                ListenCommand::Unlisten { channel, .. } => self.sub.unlisten(channel, in_transaction),
                ListenCommand::UnlistenAll => self.sub.unlisten_all(in_transaction),
                ListenCommand::Listen { .. } => {}
            }
        }
    }

    /// A client handed over by an upgrade with its subscription (`session/handover_listen.rs`).
    pub(super) fn adopted(sub: Subscription) -> Listening {
        Listening {
            sub,
            ending: Ending::Other,
        }
    }

    /// The subscription, for an upgrade's hand-over of it.
    pub(super) fn subscription(&mut self) -> &mut Subscription {
        &mut self.sub
    }

    /// True while a client moved by an upgrade is still joining its notification streams.
    pub(super) fn joining(&self) -> bool {
        self.sub.joining()
    }

    /// True while the client listens on a channel (or will, at its COMMIT).
    pub(super) fn has_channels(&self) -> bool {
        !self.sub.is_empty()
    }

    /// The client's server was lost or taken back mid-transaction: the transaction is gone.
    pub(super) fn transaction_lost(&mut self) {
        if self.sub.has_pending() {
            self.sub.end_transaction(false);
        }
    }

    /// The next notification for the client, waking the task when one comes.
    pub(super) fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Bytes>> {
        self.sub.poll_next(cx)
    }

    /// Moves waiting notifications into the client's output, up to `cap` bytes buffered.
    pub(super) fn drain_into(&mut self, out: &mut BytesMut, cap: usize) {
        while out.len() < cap {
            match self.sub.try_next() {
                Some(msg) => out.extend_from_slice(&msg),
                None => break,
            }
        }
    }
}

/// A LISTEN-family request taken off the client's input, to be answered by the session.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ListenRequest {
    command: ListenCommand,
    /// The client's messages as they came (to rewrite into a server-side error if it fails).
    original: BytesMut,
    /// The replies owed before the CommandComplete and after it, per the client's messages.
    shape: Shape,
    /// The server's batch is open: the client's Sync goes to it (its ReadyForQuery ends the
    /// reply) instead of sluice answering ReadyForQuery.
    sync_on_server: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Shape {
    /// A simple Query.
    Simple,
    /// Parse, Bind, Describe, Execute, Sync: the client's message tags (and Describe kinds).
    Extended(Vec<(u8, u8)>),
}

/// What the relay does with a whole Query or Parse it has read.
#[derive(Debug)]
pub(super) enum Intercept {
    /// Not a LISTEN: go on as usual.
    Pass,
    /// A LISTEN to answer once nothing else is in flight: leave it in the input for now.
    Wait,
    /// The rest of its batch has not arrived yet.
    Starved,
    /// Taken off the input: the session answers it.
    Answer(ListenRequest),
    /// Rewritten in the input into a statement that fails on the server with sluice's error.
    Rewritten,
    /// Refused with this error in place of its reply (the batch is skipped to its Sync).
    Refused(PgError),
    /// A Query with UNLISTENs among other statements: it goes to the server as it is, and the
    /// client's subscriptions change as these say: at once, or at COMMIT when the client is in
    /// a block or the text itself opens or ends one (`blocks`).
    PassUnlistening {
        commands: Vec<ListenCommand>,
        blocks: bool,
    },
}

/// Looks at the whole Query, Parse or Bind at the front of the client's input (`len` bytes).
/// `quiet`: whether everything sent to the server is answered (see [`Quiet`]).
/// `statements`: the client's tracked statements (None when prepared statements pass through
/// untracked): a named LISTEN statement is recorded there, and its executions answered.
/// `mentions_listen`: the message has the letters `listen` somewhere (`text_scan.rs`); a text
/// without them is no LISTEN, and is not read again.
pub(super) fn intercept(
    tag: u8,
    client: &mut ClientIo,
    len: usize,
    quiet: Quiet,
    statements: Option<&mut Option<Box<ClientStatements>>>,
    mentions_listen: bool,
) -> Intercept {
    if tag == frontend::BIND {
        return match statements.and_then(|s| s.as_deref()) {
            Some(s) if !s.listens.is_empty() => intercept_bind(client, len, quiet, s),
            _ => Intercept::Pass,
        };
    }
    let msg = &client.inbuf[..len];
    let (name, text) = match tag {
        frontend::QUERY => (None, &msg[5..]),
        frontend::PARSE => match split_cstr(&msg[5..]) {
            Some((name, rest)) => (Some(name), rest),
            None => return Intercept::Pass,
        },
        _ => return Intercept::Pass,
    };
    let classified = if mentions_listen {
        classify(text)
    } else {
        ListenSql::Other
    };
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        return parse_named(client, len, name.to_vec(), classified, statements);
    }
    let command = match classified {
        ListenSql::Other => return Intercept::Pass,
        ListenSql::UnlistenAmong { commands, blocks } if tag == frontend::QUERY => {
            return Intercept::PassUnlistening { commands, blocks };
        }
        // One Parse holds one statement: PostgreSQL refuses several itself.
        ListenSql::UnlistenAmong { .. } => return Intercept::Pass,
        ListenSql::Command(c) => c,
        ListenSql::Unsupported(why) => {
            return refuse(
                client,
                len,
                PgError::error(sqlstate::FEATURE_NOT_SUPPORTED, why).with_hint(HINT),
            );
        }
        ListenSql::Invalid(code, message) => return refuse(client, len, PgError::error(code, message)),
    };
    let shape = if tag == frontend::QUERY {
        Shape::Simple
    } else {
        match batch_shape(&client.inbuf, len, vec![(frontend::PARSE, 0)], b"") {
            BatchShape::Complete(tags) => Shape::Extended(tags),
            BatchShape::Incomplete if client.inbuf.len() < BATCH_MAX => return Intercept::Starved,
            BatchShape::Incomplete | BatchShape::Other => {
                let e = PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "LISTEN and UNLISTEN through the extended protocol must come as Parse, Bind, Execute and Sync of their own in transaction pooling",
                )
                .with_hint(HINT);
                return refuse(client, len, e);
            }
        }
    };
    let quiet = if quiet == Quiet::Synced {
        Quiet::Synced
    } else {
        Quiet::Busy
    };
    take_batch(client, quiet, command, shape, len)
}

/// How far the server is with what the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quiet {
    /// Everything is answered and the server waits for no Sync: its status is the client's.
    Synced,
    /// Everything is answered, but the server's batch is open (the client sent Flush, as
    /// asyncpg does after preparing): the server must still get the client's Sync.
    OpenBatch,
    /// Replies are still due.
    Busy,
}

/// A Parse of a named statement: a LISTEN one is recorded (it is prepared on the server like
/// any statement, which runs nothing; its executions are answered by sluice), another one of a
/// recorded name replaces it.
fn parse_named(
    client: &mut ClientIo,
    len: usize,
    name: Vec<u8>,
    classified: ListenSql,
    statements: Option<&mut Option<Box<ClientStatements>>>,
) -> Intercept {
    let Some(statements) = statements else {
        if classified == ListenSql::Other {
            return Intercept::Pass;
        }
        let e = PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "LISTEN and UNLISTEN cannot be prepared as named statements when max_prepared_statements is 0",
        )
        .with_hint(HINT);
        return refuse(client, len, e);
    };
    match classified {
        ListenSql::Other | ListenSql::UnlistenAmong { .. } => {
            if let Some(s) = statements.as_deref_mut() {
                s.listens.retain(|n| n.as_ref() != name.as_slice());
            }
            Intercept::Pass
        }
        ListenSql::Command(_) => {
            let s = statements.get_or_insert_with(Default::default);
            if !s.listens.iter().any(|n| n.as_ref() == name.as_slice()) {
                if s.listens.len() >= MAX_LISTEN_STATEMENTS {
                    let e = PgError::error(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        format!(
                            "too many prepared LISTEN/UNLISTEN statements: at most {MAX_LISTEN_STATEMENTS}"
                        ),
                    );
                    return refuse(client, len, e);
                }
                s.listens.push(Bytes::from(name));
            }
            Intercept::Pass
        }
        ListenSql::Unsupported(why) => refuse(
            client,
            len,
            PgError::error(sqlstate::FEATURE_NOT_SUPPORTED, why).with_hint(HINT),
        ),
        ListenSql::Invalid(code, message) => refuse(client, len, PgError::error(code, message)),
    }
}

/// A Bind of a recorded LISTEN statement: its batch (Bind, [Describe], Execute, Sync) is
/// answered by sluice.
fn intercept_bind(
    client: &mut ClientIo,
    len: usize,
    quiet: Quiet,
    statements: &ClientStatements,
) -> Intercept {
    let body = &client.inbuf[5..len];
    let Some((_, rest)) = split_cstr(body) else {
        return Intercept::Pass;
    };
    let Some((statement, _)) = split_cstr(rest) else {
        return Intercept::Pass;
    };
    if !statements.listens.iter().any(|n| n.as_ref() == statement) {
        return Intercept::Pass;
    }
    let Some(def) = statements.get(statement) else {
        return Intercept::Pass;
    };
    let ListenSql::Command(command) = classify(&def.def.body) else {
        return Intercept::Pass;
    };
    let statement = statement.to_vec();
    match batch_shape(&client.inbuf, 0, Vec::new(), &statement) {
        BatchShape::Complete(tags) => take_batch(client, quiet, command, Shape::Extended(tags), len),
        BatchShape::Incomplete if client.inbuf.len() < BATCH_MAX => Intercept::Starved,
        // Executed among other messages: not emulated (the server would run the statement). The
        // Bind is refused, and the rest of the batch skipped to its Sync.
        BatchShape::Incomplete | BatchShape::Other => Intercept::Refused(
            PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "a prepared LISTEN or UNLISTEN must be executed as Bind, Execute and Sync of its own in transaction pooling",
            )
            .with_hint(HINT),
        ),
    }
}

/// Takes a LISTEN batch off the input for the session to answer, once nothing is in flight.
fn take_batch(
    client: &mut ClientIo,
    quiet: Quiet,
    command: ListenCommand,
    shape: Shape,
    len: usize,
) -> Intercept {
    if quiet == Quiet::Busy {
        return Intercept::Wait;
    }
    let consumed = match &shape {
        Shape::Simple => len,
        Shape::Extended(_) => match batch_len(&client.inbuf) {
            Some(n) => n,
            None => return Intercept::Starved,
        },
    };
    let original = client.inbuf.split_to(consumed);
    Intercept::Answer(ListenRequest {
        command,
        original,
        shape,
        sync_on_server: quiet == Quiet::OpenBatch,
    })
}

const HINT: &str =
    "Send LISTEN/UNLISTEN as a statement of its own (the pooler answers it), or use a session-mode pool.";

/// Rewrites the message at the front of the input so that the server raises `e` in its place.
fn refuse(client: &mut ClientIo, len: usize, e: PgError) -> Intercept {
    let msg = client.inbuf.split_to(len);
    let mut out = BytesMut::with_capacity(len + 256);
    rewrite_message(&msg, &e, &mut out);
    out.extend_from_slice(&client.inbuf);
    client.inbuf = out;
    Intercept::Rewritten
}

/// What a LISTEN request came to.
pub(super) enum Answered {
    /// These replies go to the client.
    Reply(BytesMut),
    /// These replies go to the client, then a Sync to the server (whose ReadyForQuery ends them).
    ReplyThenSync(BytesMut),
    /// It failed inside a transaction: these client messages (rewritten to fail on the server
    /// with the error) go to the server, so the transaction fails as PostgreSQL's would.
    Fail(BytesMut),
}

/// Answers a LISTEN request: subscribes or unsubscribes the client (at once, or at COMMIT when
/// `status` is inside a transaction block) and builds the replies.
pub(super) async fn answer(
    listening: &mut Option<Box<Listening>>,
    request: ListenRequest,
    status: TxStatus,
    hub: impl FnOnce() -> (std::sync::Arc<crate::notify::Hub>, NotifyLimits),
    client_info: &std::sync::Arc<crate::clients::ClientInfo>,
    wait: Duration,
) -> Answered {
    if status == TxStatus::Failed {
        let e = PgError::error(
            sqlstate::IN_FAILED_SQL_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        );
        // PostgreSQL refuses the Query, or the Parse (the rest of the batch is skipped to Sync).
        let mut out = BytesMut::new();
        e.encode(&mut out);
        return finish(out, status, request.sync_on_server);
    }
    let in_transaction = status == TxStatus::InTransaction;
    let mut notices = BytesMut::new();
    let result = match &request.command {
        ListenCommand::Listen { channel, truncated } => {
            if *truncated {
                truncation_notice(channel, &mut notices);
            }
            let l = listening.get_or_insert_with(|| {
                let (hub, limits) = hub();
                Box::new(Listening {
                    sub: Subscription::new(hub, client_info.clone(), limits),
                    ending: Ending::Other,
                })
            });
            l.sub.listen(channel, in_transaction, wait).await
        }
        ListenCommand::Unlisten { channel, truncated } => {
            if *truncated {
                truncation_notice(channel, &mut notices);
            }
            if let Some(l) = listening.as_deref_mut() {
                l.sub.unlisten(channel, in_transaction);
            }
            Ok(())
        }
        ListenCommand::UnlistenAll => {
            if let Some(l) = listening.as_deref_mut() {
                l.sub.unlisten_all(in_transaction);
            }
            Ok(())
        }
    };
    if listening.as_ref().is_some_and(|l| l.sub.is_empty()) {
        *listening = None; // listens on nothing: the mailbox goes too
    }
    if let Err(e) = result {
        if in_transaction && !request.sync_on_server {
            let mut out = BytesMut::new();
            rewrite_batch(&request.original, &e, &mut out);
            return Answered::Fail(out);
        }
        let mut out = notices;
        e.encode(&mut out);
        return finish(out, status, request.sync_on_server);
    }
    let mut out = notices;
    match &request.shape {
        Shape::Simple => messages::command_complete(&mut out, request.command.tag()),
        Shape::Extended(tags) => {
            for (tag, kind) in tags {
                match (*tag, *kind) {
                    (frontend::PARSE, _) => out.extend_from_slice(PARSE_COMPLETE),
                    (frontend::BIND, _) => out.extend_from_slice(BIND_COMPLETE),
                    (frontend::DESCRIBE, b'S') => {
                        out.extend_from_slice(NO_PARAMETERS);
                        out.extend_from_slice(NO_DATA);
                    }
                    (frontend::DESCRIBE, _) => out.extend_from_slice(NO_DATA),
                    _ => messages::command_complete(&mut out, request.command.tag()),
                }
            }
        }
    }
    finish(out, status, request.sync_on_server)
}

/// Ends a reply with sluice's ReadyForQuery, or leaves that to the server's answer to a Sync.
fn finish(mut out: BytesMut, status: TxStatus, sync_on_server: bool) -> Answered {
    if sync_on_server {
        return Answered::ReplyThenSync(out);
    }
    messages::ready_for_query(&mut out, status);
    Answered::Reply(out)
}

/// PostgreSQL's NOTICE for an identifier cut to 63 bytes.
fn truncation_notice(channel: &str, out: &mut BytesMut) {
    let mut n = PgError::notice(format!("identifier was truncated to \"{channel}\""));
    n.sqlstate = sqlstate::NAME_TOO_LONG.to_string();
    n.encode(out);
}
