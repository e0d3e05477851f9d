//! Prepared statements under transaction pooling: the client's statements (`client`), the
//! replies a server owes with sluice's own placed among them (`responses`), the translation of
//! the client's Parse/Bind/Describe/Close to statements the held server has (`prepared`), and
//! `DEALLOCATE` answered by sluice (`deallocate`). Layered bottom to top: client, responses,
//! deallocate, prepared; this file holds what they all speak of (outcomes, wire helpers).

mod client;
mod deallocate;
mod prepared;
mod responses;

pub(crate) use client::{ClientStatement, ClientStatements, MAX_LISTEN_STATEMENTS};
pub(super) use prepared::{Translator, drops_all_statements};
pub(super) use responses::{Books, ErrorNote, Responses, Undo, Verdict};

use bytes::{BufMut, BytesMut};

/// What became of a client message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Translated (or answered) by sluice; nothing more to forward.
    Done,
    /// Not sluice's business: forward it unchanged.
    Forward,
    /// The client made an error sluice answers itself (as PostgreSQL would): the rest of its
    /// batch up to Sync must be dropped.
    Refused,
    /// Not yet: it stays unread until a shape check is answered.
    Wait,
}

/// What became of a Bind.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BindOutcome {
    /// Its start, up to and including the statement name (this many bytes), was rewritten;
    /// the rest goes as it is.
    Rewritten(usize),
    /// Not a tracked statement: forward it unchanged.
    Forward,
    /// Answered with an error by sluice: drop it and the rest of the batch.
    Refused,
    /// Not yet: sluice is checking the row description of the server's copy first; the message
    /// stays unread until the answer comes.
    Wait,
    /// Answered by sluice: drop the whole message.
    Answered,
}

/// Splits a NUL-terminated string off the front of `b`.
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    // Vectorised: a Parse's whole query text is looked through for its end.
    let i = memchr::memchr(0, b)?;
    Some((&b[..i], &b[i + 1..]))
}

/// Writes a message of type `tag` whose body is `parts`, one after the other.
fn put_message(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.put_u8(tag);
    out.put_i32(len as i32);
    for p in parts {
        out.put_slice(p);
    }
}
