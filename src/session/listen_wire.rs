//! The wire side of LISTEN emulation: reading a client's batch (Parse or Bind to Sync) for its
//! shape, and rewriting a refused LISTEN into a statement that raises sluice's error on the
//! server (so a transaction fails where PostgreSQL's would).

use crate::protocol::tags::frontend;
use crate::protocol::{PgError, messages};
use bytes::{BufMut, BytesMut};

/// Most bytes of one message of a LISTEN batch.
const MESSAGE_MAX: usize = 16 * 1024;

/// Where the client's batch after a LISTEN Parse stands.
pub(super) enum BatchShape {
    /// Up to its Sync, of the expected shape: these (tag, describe kind) pairs.
    Complete(Vec<(u8, u8)>),
    /// Not all here yet.
    Incomplete,
    /// Something else comes with it.
    Other,
}

/// Reads a batch from `at` (after its Parse, whose reply is in `tags`, or from its Bind): [Describe
/// S], Bind of `statement`, [Describe P], Execute, Sync — nothing else.
pub(super) fn batch_shape(buf: &[u8], at: usize, mut tags: Vec<(u8, u8)>, statement: &[u8]) -> BatchShape {
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
        if total > MESSAGE_MAX {
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
pub(super) fn batch_len(buf: &[u8]) -> Option<usize> {
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

pub(super) fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == 0)?;
    Some((&b[..i], &b[i + 1..]))
}
/// Copies a batch of client messages, with its Query or Parse text replaced by a statement that
/// raises `e` on the server.
pub(super) fn rewrite_batch(batch: &[u8], e: &PgError, out: &mut BytesMut) {
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
pub(super) fn rewrite_message(msg: &[u8], e: &PgError, out: &mut BytesMut) {
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
    use crate::notify::sql::{ListenSql, classify};

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
