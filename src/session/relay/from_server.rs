//! The server-to-client side of the relay: the server's messages forwarded as bytes in batches,
//! sluice's own replies put in their places, and the few it must read (ReadyForQuery,
//! ErrorResponse, CommandComplete, RowDescription, ParameterStatus) looked at on the way.

use super::{OUT_CAP, RelayContext, RelayError};
use crate::protocol::tags::backend;
use crate::protocol::{ScanItem, TxStatus};
use crate::server::ServerConn;
use crate::session::client::ClientIo;
use crate::session::link::Link;
use crate::session::statements::{Books, ErrorNote, Verdict};
use bytes::{Buf, BytesMut};

/// Moves server messages to the client-bound buffer (and sluice's own replies into their
/// places). Returns true when it stopped at a ReadyForQuery that leaves nothing due.
///
/// The server's read buffer is taken out for the pump, so a message is looked at where it lies
/// while the server's other fields change. The bytes forwarded as they are gather at its front
/// (a run) and go to the client's buffer in one piece: when something is put between them (a
/// reply of sluice's own, a message hidden or replaced), at a ReadyForQuery, and when the pump
/// stops, on every path, errors included, as the messages before the failure were forwarded.
pub(super) fn pump_server(
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Result<bool, RelayError> {
    let mut input = Input {
        buf: std::mem::take(&mut server.read_buf),
        run: 0,
    };
    let pumped = pump(&mut input, client, link, server, ctx);
    input.forward(client);
    server.read_buf = input.buf;
    pumped
}

/// The server's input during a pump: its first `run` bytes are whole messages (or pieces)
/// already judged to go to the client as they are.
struct Input {
    buf: BytesMut,
    run: usize,
}

/// Up to this many bytes are copied to the client's buffer; a longer run is split off the read
/// buffer and joined to it without a copy when it can be.
const COPY_MAX: usize = 2048;

impl Input {
    /// The bytes not yet judged.
    fn rest(&self) -> &[u8] {
        &self.buf[self.run..]
    }

    /// Sends the run on. With nothing buffered for the client before it, it is written straight
    /// from the read buffer as far as the socket takes it now (the common reply: no copy, no
    /// allocation, no later write). What is left is buffered for the relay's writes: a short
    /// rest is copied, as splitting it off would turn the read buffer into a shared one (an
    /// allocation) that cannot reuse its room afterwards. A failed write is left to the
    /// buffered write to find again, so the relay ends where it always did.
    fn forward(&mut self, client: &mut ClientIo) {
        let run = std::mem::take(&mut self.run);
        if run == 0 {
            return;
        }
        let mut sent = 0;
        if client.outbuf.is_empty()
            && let Ok(n) = client.socket.try_write(&self.buf[..run])
        {
            sent = n;
            client.bytes_out += n as u64;
            self.buf.advance(n);
        }
        let out = &mut client.outbuf;
        match run - sent {
            0 => {}
            n if n <= COPY_MAX || !out.is_empty() => {
                out.extend_from_slice(&self.buf[..n]);
                self.buf.advance(n);
            }
            n => out.unsplit(self.buf.split_to(n)),
        }
    }

    /// Drops the `len` bytes after the run (a message that does not go to the client as is).
    fn drop_next(&mut self, len: usize, client: &mut ClientIo) {
        self.forward(client);
        self.buf.advance(len);
    }
}

fn pump(
    input: &mut Input,
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Result<bool, RelayError> {
    loop {
        if link.server_scan.at_boundary() && link.responses.has_reply() {
            input.forward(client);
            while let Some((bytes, ready)) = link.responses.pop_reply() {
                client.outbuf.extend_from_slice(&bytes);
                if ready {
                    link.on_ready_for_query(server, ctx.stats, ctx.info, client, ctx.release_when_idle);
                    if link.pending_requests() == 0 && server.tx_status == TxStatus::Idle {
                        return Ok(true);
                    }
                }
            }
        }
        if client.outbuf.len() + input.run >= OUT_CAP {
            return Ok(false);
        }
        let item = link
            .server_scan
            .next(input.rest(), backend::read_whole_by_relay)
            .map_err(|e| RelayError::ServerProtocol(e.to_string()))?;
        let (tag, len, whole) = match item {
            ScanItem::NeedMore => return Ok(false),
            ScanItem::Pass { len, tag: None } => {
                input.run += len;
                continue;
            }
            ScanItem::Pass { len, tag: Some(t) } => (t, len, false),
            ScanItem::Whole { tag, len } => (tag, len, true),
            ScanItem::Head { .. } => {
                return Err(RelayError::ServerProtocol("unexpected partial message".into()));
            }
        };
        let mut note = None;
        if whole {
            let msg = &input.rest()[..len];
            match tag {
                backend::READY_FOR_QUERY => {
                    if len != 6 {
                        return Err(RelayError::ServerProtocol("malformed ReadyForQuery".into()));
                    }
                    server.tx_status =
                        TxStatus::try_from(msg[5]).map_err(|e| RelayError::ServerProtocol(e.to_string()))?;
                    if let Some(l) = ctx.listen.as_deref_mut() {
                        l.on_ready(server.tx_status);
                    }
                }
                backend::ERROR_RESPONSE => {
                    let error = crate::protocol::PgError::from_fields(&msg[5..]);
                    if error.severity == crate::protocol::Severity::Fatal {
                        return Err(RelayError::ServerFatal(Box::new(error)));
                    }
                    if error.sqlstate == crate::protocol::sqlstate::READ_ONLY_SQL_TRANSACTION {
                        server.info.note_read_only_refusal();
                    }
                    note = Some(ErrorNote::of(&error));
                }
                backend::COMMAND_COMPLETE => {
                    command_complete(&msg[5..], server, ctx, link);
                    if let Some(l) = ctx.listen.as_deref_mut() {
                        l.on_command_complete(&msg[5..]);
                    }
                }
                backend::ROW_DESCRIPTION | backend::NO_DATA => row_description(msg, link, server, ctx),
                backend::PARAMETER_STATUS => {
                    if let Some((name, value)) = parameter_status(&msg[5..]) {
                        if crate::session::params::is_identity(name) {
                            // Reported only when it changed: who the session is changed.
                            server.identity = crate::server::Identity::MaybeChanged;
                        }
                        ctx.params.observe_server_report(name, value);
                        if name == "application_name" {
                            ctx.info.set_application_name(value);
                        }
                        server.params.insert(name.to_string(), value.to_string());
                    }
                }
                _ => {}
            }
        } else {
            link.on_server_message(tag);
        }
        let mut books = Books {
            client: ctx.statements.as_deref_mut(),
            server: &mut server.statements,
            plans: ctx.plans,
        };
        match link.responses.on_server_message(tag, note, &mut books) {
            Verdict::Hide => {
                input.drop_next(len, client);
                continue;
            }
            Verdict::Replace(reply) => {
                input.drop_next(len, client);
                client.outbuf.extend_from_slice(&reply);
                continue;
            }
            Verdict::Forward => input.run += len,
        }
        if tag == backend::READY_FOR_QUERY {
            input.forward(client);
            link.on_ready_for_query(server, ctx.stats, ctx.info, client, ctx.release_when_idle);
            if link.pending_requests() == 0 && server.tx_status == TxStatus::Idle {
                return Ok(true);
            }
        }
    }
}

/// A RowDescription or NoData answering a Describe of a tracked statement: remembers which rows
/// the client was told about, and which rows the server's copy gives; a shape check that finds
/// them different marks the client's statement as changed (PostgreSQL would refuse it).
fn row_description(msg: &[u8], link: &Link, server: &mut ServerConn, ctx: &mut RelayContext<'_>) {
    use crate::session::statements::Undo;
    use std::hash::{Hash, Hasher};
    // Only a Describe of a tracked statement is remembered: a portal's (every extended
    // query's) is not hashed.
    let Some(undo @ (Undo::Uses { .. } | Undo::ShapeCheck { .. })) = link.responses.describing() else {
        return;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    msg.hash(&mut h);
    let shape = h.finish();
    match undo {
        Undo::Uses { hash, name } => {
            server.statements.set_shape(*hash, shape);
            if let Some(c) = ctx.statements.as_deref_mut() {
                c.set_shape(name, shape);
            }
        }
        Undo::ShapeCheck { hash, name } => {
            server.statements.set_shape(*hash, shape);
            if let Some(c) = ctx.statements.as_deref_mut()
                && c.shape(name) != Some(shape)
            {
                c.mark_changed(name);
            }
        }
        _ => {}
    }
}

/// A CommandComplete: DISCARD ALL / DEALLOCATE ALL dropped the server's statements (and the
/// client's, who asked for it).
fn command_complete(body: &[u8], server: &mut ServerConn, ctx: &mut RelayContext<'_>, link: &mut Link) {
    if crate::session::statements::drops_all_statements(body) {
        server.statements.clear();
        if let Some(s) = ctx.statements.as_deref_mut() {
            s.clear();
        }
    }
    link.resets.on_command_complete(body);
    link.pins.on_command_complete(body);
    if ctx.emulates_listen && body == b"LISTEN\0" {
        // A LISTEN sluice did not see (in a statement too long to read): the release path
        // cleans the server (its UNLISTEN *) before anyone else gets it.
        tracing::warn!(
            client = ctx.info.id,
            "a LISTEN reached a pooled server; it is undone at release"
        );
        server.identity = crate::server::Identity::MaybeChanged;
    }
}

fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}
