//! LISTEN and UNLISTEN in transaction pooling, as the session sees them: the relay hands over
//! a client's `LISTEN ch` / `UNLISTEN ch` / `UNLISTEN *` (a simple Query of its own, or an
//! unnamed Parse, Bind, Describe, Execute, Sync batch) once nothing else is in flight; the
//! session answers it through the pool's hub (`notify/`), at once or, inside a transaction
//! block, at its COMMIT. Forms that are not emulated (LISTEN among other statements, a named
//! prepared LISTEN) are rewritten so that the server itself raises a clear error in their
//! place: the transaction fails exactly where PostgreSQL's would, and no LISTEN reaches a
//! pooled server. Notifications are written to the client between messages.

use super::client::ClientIo;
use super::statements::{ClientStatements, MAX_LISTEN_STATEMENTS};
use crate::notify::sql::{ListenCommand, ListenSql, classify};
use crate::notify::{NotifyLimits, Subscription};
use crate::protocol::messages::{self, BIND_COMPLETE, NO_DATA, NO_PARAMETERS, PARSE_COMPLETE};
use crate::protocol::tags::frontend;
use crate::protocol::{PgError, TxStatus, sqlstate};
use bytes::{BufMut, Bytes, BytesMut};
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
}

/// Looks at the whole Query, Parse or Bind at the front of the client's input (`len` bytes).
/// `quiet`: whether everything sent to the server is answered (see [`Quiet`]).
/// `statements`: the client's tracked statements (None when prepared statements pass through
/// untracked): a named LISTEN statement is recorded there, and its executions answered.
pub(super) fn intercept(
    tag: u8,
    client: &mut ClientIo,
    len: usize,
    quiet: Quiet,
    statements: Option<&mut Option<Box<ClientStatements>>>,
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
    let classified = classify(text);
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        return parse_named(client, len, name.to_vec(), classified, statements);
    }
    let command = match classified {
        ListenSql::Other => return Intercept::Pass,
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
        ListenSql::Other => {
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

/// Where the client's batch after a LISTEN Parse stands.
enum BatchShape {
    /// Up to its Sync, of the expected shape: these (tag, describe kind) pairs.
    Complete(Vec<(u8, u8)>),
    /// Not all here yet.
    Incomplete,
    /// Something else comes with it.
    Other,
}

/// Reads a batch from `at` (after its Parse, whose reply is in `tags`, or from its Bind): [Describe
/// S], Bind of `statement`, [Describe P], Execute, Sync — nothing else.
fn batch_shape(buf: &[u8], at: usize, mut tags: Vec<(u8, u8)>, statement: &[u8]) -> BatchShape {
    let mut at = at;
    let mut portal: Option<Vec<u8>> = None;
    let mut executed = false;
    loop {
        let Some(head) = buf.get(at..at + 5) else {
            return BatchShape::Incomplete;
        };
        let tag = head[0];
        let mlen = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let Some(total) = usize::try_from(mlen).ok().filter(|l| *l >= 4).map(|l| l + 1) else {
            return BatchShape::Other;
        };
        if total > BATCH_MAX {
            return BatchShape::Other;
        }
        let Some(msg) = buf.get(at..at + total) else {
            return BatchShape::Incomplete;
        };
        let body = &msg[5..];
        match tag {
            frontend::DESCRIBE => {
                let kind = body.first().copied().unwrap_or(0);
                let Some((name, _)) = body.get(1..).and_then(split_cstr) else {
                    return BatchShape::Other;
                };
                let ok = match kind {
                    b'S' => name == statement && !tags.is_empty(),
                    b'P' => portal.as_deref() == Some(name),
                    _ => false,
                };
                if !ok || executed {
                    return BatchShape::Other;
                }
                tags.push((tag, kind));
            }
            frontend::BIND => {
                let Some((p, rest)) = split_cstr(body) else {
                    return BatchShape::Other;
                };
                let Some((bound, _)) = split_cstr(rest) else {
                    return BatchShape::Other;
                };
                if bound != statement || portal.is_some() {
                    return BatchShape::Other;
                }
                portal = Some(p.to_vec());
                tags.push((tag, 0));
            }
            frontend::EXECUTE => {
                let Some((p, _)) = split_cstr(body) else {
                    return BatchShape::Other;
                };
                if portal.as_deref() != Some(p) || executed {
                    return BatchShape::Other;
                }
                executed = true;
                tags.push((tag, 0));
            }
            frontend::SYNC if executed => return BatchShape::Complete(tags),
            _ => return BatchShape::Other,
        }
        at += total;
    }
}

/// Length of the input up to and including the first Sync.
fn batch_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let head = buf.get(at..at + 5)?;
        let total = usize::try_from(i32::from_be_bytes([head[1], head[2], head[3], head[4]])).ok()? + 1;
        at += total;
        if head[0] == frontend::SYNC {
            return (at <= buf.len()).then_some(at);
        }
    }
}

fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == 0)?;
    Some((&b[..i], &b[i + 1..]))
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

/// Copies a batch of client messages, with its Query or Parse text replaced by a statement that
/// raises `e` on the server.
fn rewrite_batch(batch: &[u8], e: &PgError, out: &mut BytesMut) {
    let mut at = 0;
    while let Some(head) = batch.get(at..at + 5) {
        let Ok(total) = usize::try_from(i32::from_be_bytes([head[1], head[2], head[3], head[4]])) else {
            break;
        };
        let Some(msg) = batch.get(at..at + total + 1) else {
            break;
        };
        rewrite_message(msg, e, out);
        at += total + 1;
    }
}

/// Copies one client message; a Query's or Parse's text becomes a statement raising `e`.
fn rewrite_message(msg: &[u8], e: &PgError, out: &mut BytesMut) {
    let sql = raise_sql(e);
    match msg[0] {
        frontend::QUERY => {
            let start = out.len();
            out.put_u8(frontend::QUERY);
            out.put_i32(0);
            out.extend_from_slice(sql.as_bytes());
            out.put_u8(0);
            messages::patch_length(out, start);
        }
        frontend::PARSE => {
            let name = split_cstr(&msg[5..]).map_or(&b""[..], |(n, _)| n);
            let start = out.len();
            out.put_u8(frontend::PARSE);
            out.put_i32(0);
            out.extend_from_slice(name);
            out.put_u8(0);
            out.extend_from_slice(sql.as_bytes());
            out.put_u8(0);
            out.put_i16(0);
            messages::patch_length(out, start);
        }
        _ => out.extend_from_slice(msg),
    }
}

/// A statement that fails with `e`'s SQLSTATE, message and hint. Its text never contains the
/// word LISTEN (it is read again by the relay).
fn raise_sql(e: &PgError) -> String {
    let mut sql = format!(
        "DO $sluice$BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}",
        literal(&e.sqlstate),
        literal(&e.message)
    );
    if let Some(h) = &e.hint {
        sql.push_str(", HINT = ");
        sql.push_str(&literal(h));
    }
    sql.push_str("; END$sluice$");
    sql
}

/// A SQL string literal of `s`, with every `listen` split in two (`'lis' || 'ten'`).
fn literal(s: &str) -> String {
    let quoted = s.replace('\'', "''").replace("$sluice$", "");
    let mut out = String::from("'");
    let mut rest = quoted.as_str();
    while let Some(i) = rest.to_ascii_lowercase().find("listen") {
        out.push_str(&rest[..i + 3]);
        out.push_str("' || '");
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_never_mentions_the_word_it_refuses() {
        let e = PgError::error("0A000", "LISTEN isn't Listened").with_hint("unlisten");
        let sql = raise_sql(&e);
        assert!(!sql.to_ascii_lowercase().contains("listen"), "{sql}");
        assert_eq!(classify(sql.as_bytes()), ListenSql::Other);
        assert!(sql.contains("'LIS' || 'TEN isn''t Lis' || 'tened'"), "{sql}");
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn only_a_batch_of_its_own_is_answered() {
        let parse = msg(b'P', b"\0LISTEN a\0\0\0");
        let bind = msg(b'B', b"\0\0\0\0\0\0\0\0");
        let describe = msg(b'D', b"P\0");
        let execute = msg(b'E', b"\0\0\0\0\0");
        let sync = msg(b'S', b"");
        let batch: Vec<u8> = [&parse[..], &bind, &describe, &execute, &sync].concat();
        let p = || vec![(b'P', 0)];
        assert!(
            matches!(batch_shape(&batch, parse.len(), p(), b""), BatchShape::Complete(t) if t.len() == 4)
        );
        assert_eq!(batch_len(&batch), Some(batch.len()));
        assert!(matches!(
            batch_shape(&batch[..batch.len() - 1], parse.len(), p(), b""),
            BatchShape::Incomplete
        ));
        let two: Vec<u8> = [&parse[..], &bind, &execute, &execute, &sync].concat();
        assert!(matches!(
            batch_shape(&two, parse.len(), p(), b""),
            BatchShape::Other
        ));
        let flush: Vec<u8> = [&parse[..], &bind, &execute, &msg(b'H', b"")].concat();
        assert!(matches!(
            batch_shape(&flush, parse.len(), p(), b""),
            BatchShape::Other
        ));
    }
}
