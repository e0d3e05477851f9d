//! Named prepared statements under transaction pooling. A client's Parse is remembered under the
//! client's name and sent to servers under a name derived from the statement's text; whenever
//! the client Binds, Describes or Closes it, sluice makes sure the server it holds right now has
//! it (preparing it there first, its ParseComplete hidden) and rewrites the name. Servers keep
//! what they prepared in an LRU shared by every client that lands on them.

use super::client::{ClientStatement, ClientStatements, cost};
use super::responses::{Ends, Responses, Undo};
use super::{BindOutcome, Outcome, cstr, deallocate, put_message};
use crate::pool::{ClientPreparedLimit, PoolStats};
use crate::protocol::messages::{CLOSE_COMPLETE, PARSE_COMPLETE};
use crate::protocol::tags::{backend, frontend};
use crate::protocol::{PgError, TxStatus, sqlstate};
use crate::server::statements::{Held, PlanInvalidations, ServerStatements, StatementDef, server_name};
use bytes::{BufMut, Bytes, BytesMut};

/// PostgreSQL's message when a prepared statement's result type changed under it.
const CACHED_PLAN_MESSAGE: &str = "cached plan must not change result type";

/// Everything a client message's translation touches.
pub(crate) struct Translator<'a> {
    /// The client's statements, by its names.
    pub(crate) client: &'a mut ClientStatements,
    /// The statements the held server has.
    pub(crate) server: &'a mut ServerStatements,
    /// max_prepared_statements.
    pub(crate) capacity: usize,
    /// What the client may keep prepared.
    pub(crate) limit: ClientPreparedLimit,
    /// The replies owed, where sluice places its own.
    pub(crate) responses: &'a mut Responses,
    /// Bytes on their way to the server.
    pub(crate) out: &'a mut BytesMut,
    /// The pool's counters (client and server Parses, Binds).
    pub(crate) stats: &'a PoolStats,
    /// The pool's record of plans PostgreSQL refused after schema changes.
    pub(crate) plans: &'a PlanInvalidations,
}

/// Most of a Bind's size reserved at once in the server-bound buffer (a larger one's
/// parameters pass in pieces anyway).
const BIND_ROOM: usize = 4096;
/// Room reserved after a rewritten Bind for the messages that end a batch (a Describe, an
/// Execute and a Sync take 24 bytes for an unnamed portal).
const BATCH_TAIL_ROOM: usize = 64;

/// The statement name and text of the Parse that fails in place of a refused one: not valid
/// SQL, so PostgreSQL refuses it before anything is created (and its log says who sent it).
const REFUSED_NAME: &[u8] = b"sluice_refused";
const REFUSED_SQL: &[u8] = b"sluice: refused Parse of a client (see the client's error)";

impl Translator<'_> {
    /// Parse. `msg` is the whole message.
    /// `aborted`: the client's transaction is known to have failed (nothing in flight).
    pub(crate) fn parse(&mut self, msg: &[u8], aborted: bool) -> Outcome {
        let Some((name, rest)) = cstr(&msg[5..]) else {
            return Outcome::Forward; // malformed: let PostgreSQL say so
        };
        if name.is_empty() {
            return deallocate::parse_unnamed(self.client, self.responses, rest, aborted);
        }
        if self.client.get(name).is_some() {
            let text = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(name)
            );
            return self.fail_in_place(PgError::error(sqlstate::DUPLICATE_PREPARED_STATEMENT, text));
        }
        if let Some(e) = self.client.refusal(name, cost(name, rest), self.limit) {
            return self.fail_in_place(e);
        }
        let name = Bytes::copy_from_slice(name);
        let def = StatementDef::from_parse_body(rest);
        self.stats.record_client_parse();
        let hash = def.hash;
        let statement = ClientStatement {
            def,
            epoch: self.plans.current(),
            shape: None,
            changed: false,
        };
        self.client.restore(name.clone(), statement);
        // A client's Parse is prepared afresh even when the server holds the text already, as
        // PostgreSQL would: a copy from before a schema change nobody has reported yet would
        // otherwise answer a statement prepared after it. Only a copy the batch in flight is
        // using is kept (closing it could destroy the batch's portals).
        let pinned = self.server.used_by_batch(hash);
        if self.server.touch(hash, self.plans.invalidated_at(hash)) == Held::Ready && pinned {
            let undo = Undo::ClientParse { name, server: None };
            self.responses
                .push_reply(Bytes::from_static(PARSE_COMPLETE), undo, false);
            return Outcome::Done;
        }
        self.prepare_on_server(hash, rest);
        let undo = Undo::ClientParse {
            name,
            server: Some(hash),
        };
        self.responses.push_server(Ends::Parse, false, undo);
        Outcome::Done
    }

    /// Bind. `head` is the start of the message (all of it when `total` fits).
    pub(crate) fn bind(&mut self, head: &[u8], total: usize) -> BindOutcome {
        let Some((portal, rest)) = cstr(&head[5..]) else {
            return BindOutcome::Forward;
        };
        let Some((name, _)) = cstr(rest) else {
            return BindOutcome::Forward;
        };
        if name.is_empty() {
            return deallocate::bind_unnamed(self.client, self.responses, portal);
        }
        let Some((kept, statement)) = self.client.get_named(name) else {
            return BindOutcome::Forward;
        };
        let (kept, statement) = (kept.clone(), statement.clone());
        match self.gate(&kept, &statement) {
            Gate::Go => {}
            Gate::Refuse(e) => {
                self.refuse(e);
                return BindOutcome::Refused;
            }
            Gate::Wait => return BindOutcome::Wait,
        }
        self.stats.record_bind();
        let hash = statement.def.hash;
        self.ensure(&statement.def);
        let consumed = 5 + portal.len() + 1 + name.len() + 1;
        let server_name = server_name(hash);
        let new_len = total - consumed + 4 + portal.len() + 1 + server_name.as_bytes().len() + 1;
        // Room for the whole rewritten Bind and what usually follows it (Describe, Execute,
        // Sync) at once: written piece by piece, they grew the buffer three or four times.
        self.out.reserve((1 + new_len).min(BIND_ROOM) + BATCH_TAIL_ROOM);
        self.out.put_u8(frontend::BIND);
        self.out.put_i32(new_len as i32);
        self.out.put_slice(portal);
        self.out.put_u8(0);
        self.out.put_slice(server_name.as_bytes());
        self.out.put_u8(0);
        let undo = Undo::Uses { hash, name: kept };
        self.responses.push_server(Ends::Bind, false, undo);
        BindOutcome::Rewritten(consumed)
    }

    /// Describe of a statement (portals pass unchanged).
    pub(crate) fn describe(&mut self, msg: &[u8]) -> Outcome {
        if let Some(answered) = deallocate::describe(self.client, self.responses, msg) {
            return answered;
        }
        let Some((kind, name)) = statement_target(msg) else {
            return Outcome::Forward;
        };
        let Some((kept, statement)) = self.client.get_named(name) else {
            return Outcome::Forward;
        };
        let (kept, statement) = (kept.clone(), statement.clone());
        match self.gate(&kept, &statement) {
            Gate::Go => {}
            Gate::Refuse(e) => return self.refuse(e),
            Gate::Wait => return Outcome::Wait,
        }
        self.ensure(&statement.def);
        let server_name = server_name(statement.def.hash);
        put_message(
            self.out,
            frontend::DESCRIBE,
            &[&[kind], server_name.as_bytes(), b"\0"],
        );
        let undo = Undo::Uses {
            hash: statement.def.hash,
            name: kept,
        };
        self.responses.push_server(Ends::Describe, false, undo);
        Outcome::Done
    }

    /// Close of a statement: the client's name goes; the server keeps the statement for others
    /// (its LRU closes it in time). sluice answers the CloseComplete in its place in the stream.
    pub(crate) fn close(&mut self, msg: &[u8]) -> Outcome {
        let Some((_, name)) = statement_target(msg) else {
            return Outcome::Forward;
        };
        let name = Bytes::copy_from_slice(name);
        let Some(statement) = self.client.get(&name).cloned() else {
            // PostgreSQL does not mind closing what does not exist: let it answer.
            return Outcome::Forward;
        };
        self.client.forget(&name);
        let undo = Undo::ClientClose {
            name,
            statement: Box::new(statement),
        };
        self.responses
            .push_reply(Bytes::from_static(CLOSE_COMPLETE), undo, false);
        Outcome::Done
    }

    /// Whether a Bind or Describe of the client's statement may go to the server it holds now.
    /// Besides the plan check below: a client that was given a row description must not get
    /// rows of another shape from a server's copy prepared after a schema change (PostgreSQL
    /// would refuse the statement). A copy whose description sluice has not seen is described
    /// first, with the client's message held until the answer.
    fn gate(&mut self, name: &Bytes, statement: &ClientStatement) -> Gate {
        if let Err(e) = self.check_plan(name, statement) {
            return Gate::Refuse(e);
        }
        if statement.changed {
            return Gate::Refuse(cached_plan_error());
        }
        let Some(expected) = statement.shape else {
            return Gate::Go;
        };
        let hash = statement.def.hash;
        let fresh = self.server.touch(hash, self.plans.invalidated_at(hash)) == Held::Ready;
        match self.server.shape(hash) {
            Some(shape) if fresh && shape == expected => Gate::Go,
            Some(_) if fresh => {
                self.client.mark_changed(name);
                Gate::Refuse(cached_plan_error())
            }
            _ => {
                self.ensure(&statement.def);
                let server_name = server_name(hash);
                put_message(
                    self.out,
                    frontend::DESCRIBE,
                    &[b"S", server_name.as_bytes(), b"\0"],
                );
                // The server answers only when flushed; the client's own Sync is held back.
                put_message(self.out, frontend::FLUSH, &[]);
                let undo = Undo::ShapeCheck {
                    hash,
                    name: name.clone(),
                };
                self.responses.push_server(Ends::Describe, true, undo);
                Gate::Wait
            }
        }
    }

    /// A client that prepared a statement before PostgreSQL refused its plan (the result type
    /// changed) is told so once, as PostgreSQL would tell it; then it may use the statement
    /// again (sluice prepares it afresh) with the result shape it will now describe.
    fn check_plan(&mut self, name: &[u8], statement: &ClientStatement) -> Result<(), PgError> {
        match self.plans.invalidated_at(statement.def.hash) {
            Some(at) if statement.epoch < at => {
                self.client.told(name, at);
                Err(cached_plan_error())
            }
            _ => Ok(()),
        }
    }

    /// Refuses a client's Parse as PostgreSQL would refuse it: the server is sent a Parse that
    /// fails in its place, so the server's batch and transaction fail exactly where the client's
    /// would have (an open transaction is aborted, an implicit one rolled back at Sync, the rest
    /// of the batch skipped), and the server's error is replaced by `e` on its way to the client.
    fn fail_in_place(&mut self, e: PgError) -> Outcome {
        let mut reply = BytesMut::new();
        e.encode(&mut reply);
        put_message(
            self.out,
            frontend::PARSE,
            &[REFUSED_NAME, b"\0", REFUSED_SQL, b"\0\0\0"],
        );
        self.responses
            .push_server(Ends::Parse, true, Undo::InPlaceOf(reply.freeze()));
        Outcome::Refused
    }

    fn refuse(&mut self, e: PgError) -> Outcome {
        self.responses.push_error(&e);
        Outcome::Refused
    }

    /// A simple query that is exactly `DEALLOCATE [PREPARE] name` of a statement the client
    /// prepared through the protocol is answered by sluice (see `deallocate`); any other passes.
    /// Only called with nothing in flight, so `tx_status` is the status PostgreSQL would report.
    pub(crate) fn query_deallocate(&mut self, msg: &[u8], tx_status: TxStatus) -> Outcome {
        deallocate::query(self.client, self.responses, msg, tx_status)
    }

    /// An Execute of the portal of a `DEALLOCATE` is answered by sluice (the client's statement
    /// goes); other portals pass.
    pub(crate) fn execute_deallocate(&mut self, msg: &[u8]) -> Outcome {
        deallocate::execute(self.client, self.responses, msg)
    }

    /// Makes sure the server holds `def` before a message that uses it (hidden Parse).
    fn ensure(&mut self, def: &StatementDef) {
        if self.server.touch(def.hash, self.plans.invalidated_at(def.hash)) == Held::Ready {
            return;
        }
        self.prepare_on_server(def.hash, &def.body);
        self.responses
            .push_server(Ends::Parse, true, Undo::ServerParse(def.hash));
    }

    /// Writes a Parse of the statement under its server name, first closing a stale copy of
    /// it or, when the server is full, its least recently used statement.
    fn prepare_on_server(&mut self, hash: u128, body: &[u8]) {
        let stale = self.server.remove(hash).map(|epoch| (hash, epoch));
        let victim = stale.or_else(|| {
            let v = self.server.victim(self.capacity)?;
            Some((v, self.server.remove(v).unwrap_or_default()))
        });
        if let Some((victim, epoch)) = victim {
            put_message(
                self.out,
                frontend::CLOSE,
                &[b"S", server_name(victim).as_bytes(), b"\0"],
            );
            let undo = Undo::ServerClose { hash: victim, epoch };
            self.responses.push_server(Ends::Close, true, undo);
        }
        put_message(
            self.out,
            frontend::PARSE,
            &[server_name(hash).as_bytes(), b"\0", body],
        );
        self.server.insert(hash, self.plans.current());
        self.stats.record_server_parse();
    }
}

/// What a Bind or Describe of a tracked statement may do now.
enum Gate {
    Go,
    Refuse(PgError),
    Wait,
}

/// PostgreSQL's own error for a statement whose result changed, routine included: drivers
/// (asyncpg) recognise it by that and prepare the statement again.
fn cached_plan_error() -> PgError {
    PgError::error(sqlstate::FEATURE_NOT_SUPPORTED, CACHED_PLAN_MESSAGE).with_routine("RevalidateCachedQuery")
}

/// The statement name of a Describe or Close of a statement (`S`), with the kind byte.
fn statement_target(msg: &[u8]) -> Option<(u8, &[u8])> {
    let kind = *msg.get(5)?;
    if kind != b'S' {
        return None;
    }
    let (name, _) = cstr(&msg[6..])?;
    (!name.is_empty()).then_some((kind, name))
}

/// True when a CommandComplete body (the tag, NUL-terminated) says the server dropped every
/// prepared statement (DISCARD ALL, DEALLOCATE ALL).
pub(crate) fn drops_all_statements(body: &[u8]) -> bool {
    backend::drops_all_statements(cstr(body).map(|(t, _)| t).unwrap_or(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bind of `name` to the unnamed portal, no parameters.
    fn bind_message(name: &str) -> Vec<u8> {
        let mut body = vec![0u8];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        let mut m = vec![b'B'];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn a_skipped_re_prepare_leaves_the_stale_copy_known_to_be_on_the_server() {
        use super::super::responses::{Books, ErrorNote};
        let stats = PoolStats::default();
        let plans = PlanInvalidations::default();
        let mut client = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut responses = Responses::default();
        let mut out = BytesMut::new();
        let def = StatementDef::from_parse_body(b"SELECT * FROM t\0\0\0");
        let hash = def.hash;
        server.insert(hash, plans.current());
        plans.invalidate(hash); // its plan was refused: the server's copy is stale
        let fresh = ClientStatement {
            def,
            epoch: plans.current(),
            shape: None,
            changed: false,
        };
        client.restore(Bytes::from_static(b"s"), fresh);

        // An Execute goes first, then a Bind of "s" (which closes and re-prepares the stale
        // copy), then Sync.
        responses.expect(b'E');
        let msg = bind_message("s");
        let mut t = Translator {
            client: &mut client,
            server: &mut server,
            capacity: 10,
            limit: ClientPreparedLimit {
                statements: 10,
                bytes: 1 << 20,
            },
            responses: &mut responses,
            out: &mut out,
            stats: &stats,
            plans: &plans,
        };
        let BindOutcome::Rewritten(consumed) = t.bind(&msg, msg.len()) else {
            panic!("the Bind was not rewritten");
        };
        out.extend_from_slice(&msg[consumed..]);
        responses.expect(b'S');
        let mut tags = Vec::new();
        let mut rest = &out[..];
        while rest.len() >= 5 {
            tags.push(rest[0]);
            let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            rest = &rest[1 + len..];
        }
        assert_eq!(tags, b"CPB");

        // The Execute fails: PostgreSQL skips the Close, the Parse and the Bind.
        let mut books = Books {
            client: Some(&mut client),
            server: &mut server,
            plans: &plans,
        };
        let note = Some(ErrorNote::default());
        responses.on_server_message(b'E', note, &mut books);
        responses.on_server_message(b'Z', None, &mut books);
        assert!(responses.is_empty());
        // The stale copy is still there, and still known as stale: the next use closes it
        // again instead of failing with "already exists".
        assert_eq!(server.touch(hash, plans.invalidated_at(hash)), Held::Stale);
    }

    #[test]
    fn command_tags_that_drop_every_statement_are_recognised() {
        assert!(drops_all_statements(b"DISCARD ALL\0"));
        assert!(drops_all_statements(b"DEALLOCATE ALL\0"));
        assert!(!drops_all_statements(b"SELECT 1\0"));
        assert!(!drops_all_statements(b"DEALLOCATE\0"));
    }
}
