//! `DEALLOCATE name` of a statement the client prepared through the protocol. The server never
//! knew the client's names, so sluice answers it, whether it comes as a simple Query (PDO,
//! Rails) or through the extended protocol as an unnamed statement (psycopg 3 in pipeline mode
//! with libpq older than 17): Parse, Bind, Describe and Execute of it are answered in their
//! places in the reply stream, and the client's statement goes at Execute, as on PostgreSQL.

use super::client::ClientStatements;
use super::responses::{Responses, Undo};
use super::{BindOutcome, Outcome, cstr};
use crate::protocol::messages::{BIND_COMPLETE, NO_DATA, NO_PARAMETERS, PARSE_COMPLETE};
use crate::protocol::{PgError, TxStatus, messages, sqlstate};
use bytes::{Bytes, BytesMut};

fn aborted_error() -> PgError {
    PgError::error(
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// A simple query that is exactly `DEALLOCATE [PREPARE] name` of a statement the client
/// prepared through the protocol (what PDO and Rails send): answered by sluice. Only called
/// with nothing in flight, so `tx_status` is the status PostgreSQL would report.
pub(super) fn query(
    client: &mut ClientStatements,
    responses: &mut Responses,
    msg: &[u8],
    tx_status: TxStatus,
) -> Outcome {
    let Some(name) = deallocate_target(&msg[5..]) else {
        return Outcome::Forward;
    };
    let Some(statement) = client.get(name.as_bytes()).cloned() else {
        return Outcome::Forward;
    };
    let mut out = BytesMut::new();
    let undo = if tx_status == TxStatus::Failed {
        aborted_error().encode(&mut out);
        Undo::Nothing
    } else {
        client.forget(name.as_bytes());
        messages::command_complete(&mut out, "DEALLOCATE");
        Undo::ClientClose {
            name: Bytes::from(name.into_bytes()),
            statement: Box::new(statement),
        }
    };
    messages::ready_for_query(&mut out, tx_status);
    responses.push_reply(out.freeze(), undo, true);
    Outcome::Done
}

/// Parse of the unnamed statement (`rest`: the text, NUL, parameter types). A `DEALLOCATE`
/// of one of the client's statements is answered by sluice; anything else replaces it.
pub(super) fn parse_unnamed(
    client: &mut ClientStatements,
    responses: &mut Responses,
    rest: &[u8],
    aborted: bool,
) -> Outcome {
    client.deallocating.statement = None;
    if client.len() == 0 {
        return Outcome::Forward; // nothing to deallocate (every `-M extended` query's case)
    }
    let text = cstr(rest).map_or(rest, |(t, _)| t);
    let target = deallocate_target(text).filter(|n| client.get(n.as_bytes()).is_some());
    let Some(target) = target else {
        return Outcome::Forward;
    };
    if aborted {
        responses.push_error(&aborted_error());
        return Outcome::Refused;
    }
    client.deallocating.statement = Some(Bytes::from(target.into_bytes()));
    responses.push_reply(Bytes::from_static(PARSE_COMPLETE), Undo::Nothing, false);
    Outcome::Done
}

/// Bind of the unnamed statement to `portal`.
pub(super) fn bind_unnamed(
    client: &mut ClientStatements,
    responses: &mut Responses,
    portal: &[u8],
) -> BindOutcome {
    let state = &mut client.deallocating;
    if state.portal.as_ref().is_some_and(|(p, _)| p.as_ref() == portal) {
        state.portal = None; // the portal is bound anew
    }
    let Some(target) = state.statement.clone() else {
        return BindOutcome::Forward;
    };
    state.portal = Some((Bytes::copy_from_slice(portal), target));
    responses.push_reply(Bytes::from_static(BIND_COMPLETE), Undo::Nothing, false);
    BindOutcome::Answered
}

/// Describe of the unnamed statement or of its portal, when they are a `DEALLOCATE`.
pub(super) fn describe(client: &ClientStatements, responses: &mut Responses, msg: &[u8]) -> Option<Outcome> {
    let kind = *msg.get(5)?;
    let (name, _) = cstr(msg.get(6..)?)?;
    let state = &client.deallocating;
    let mut out = BytesMut::new();
    match kind {
        // A statement: ParameterDescription (no parameters), then NoData.
        b'S' if name.is_empty() && state.statement.is_some() => out.extend_from_slice(NO_PARAMETERS),
        b'P' if state.portal.as_ref().is_some_and(|(p, _)| p.as_ref() == name) => {}
        _ => return None,
    }
    out.extend_from_slice(NO_DATA);
    responses.push_reply(out.freeze(), Undo::Nothing, false);
    Some(Outcome::Done)
}

/// Execute: of the portal of a `DEALLOCATE`, the client's statement goes and sluice answers
/// `DEALLOCATE`; other portals pass.
pub(super) fn execute(client: &mut ClientStatements, responses: &mut Responses, msg: &[u8]) -> Outcome {
    let Some((portal, _)) = msg.get(5..).and_then(cstr) else {
        return Outcome::Forward;
    };
    let state = &mut client.deallocating;
    let Some((_, name)) = state.portal.take_if(|(p, _)| p.as_ref() == portal) else {
        return Outcome::Forward;
    };
    let mut out = BytesMut::new();
    messages::command_complete(&mut out, "DEALLOCATE");
    let undo = match client.get(&name).cloned() {
        Some(statement) => {
            client.forget(&name);
            Undo::ClientClose {
                name,
                statement: Box::new(statement),
            }
        }
        None => Undo::Nothing, // deallocated twice in one batch: PostgreSQL would say 26000
    };
    responses.push_reply(out.freeze(), undo, false);
    Outcome::Done
}

/// The statement named by a query that is exactly `DEALLOCATE [PREPARE] name` (an optional
/// semicolon and white space around), as PostgreSQL would resolve the identifier.
fn deallocate_target(query: &[u8]) -> Option<String> {
    // Nearly every query starts with another word: no need to read it as UTF-8 to say so. (A
    // first byte past ASCII may be Unicode white space, which `trim` below skips.)
    let first = query.iter().find(|&&b| !(b.is_ascii_whitespace() || b == 0x0b))?;
    if first.is_ascii() && !first.eq_ignore_ascii_case(&b'd') {
        return None;
    }
    let text = std::str::from_utf8(query.strip_suffix(b"\0").unwrap_or(query)).ok()?;
    let text = text.trim().trim_end_matches(';').trim_end();
    let mut rest = strip_keyword(text, "deallocate")?;
    if let Some(r) = strip_keyword(rest, "prepare") {
        rest = r;
    }
    let name = if let Some(quoted) = rest.strip_prefix('"') {
        let (inner, after) = quoted.rsplit_once('"')?;
        if !after.trim().is_empty() || inner.is_empty() {
            return None;
        }
        inner.replace("\"\"", "\"")
    } else {
        if rest.is_empty() || !rest.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            return None;
        }
        if rest.eq_ignore_ascii_case("all") {
            return None;
        }
        rest.to_lowercase()
    };
    Some(name)
}

/// `text` after a leading keyword (case-insensitive) and the white space that must follow it.
fn strip_keyword<'t>(text: &'t str, keyword: &str) -> Option<&'t str> {
    let head = text.get(..keyword.len())?;
    let rest = &text[keyword.len()..];
    (head.eq_ignore_ascii_case(keyword) && rest.starts_with(char::is_whitespace)).then(|| rest.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deallocate_names_are_read_as_postgresql_reads_identifiers() {
        assert_eq!(deallocate_target(b"DEALLOCATE a1\0").as_deref(), Some("a1"));
        assert_eq!(
            deallocate_target(b"deallocate prepare Foo ;\0").as_deref(),
            Some("foo")
        );
        assert_eq!(
            deallocate_target(b"DEALLOCATE \"My \"\"S\"\"\"\0").as_deref(),
            Some("My \"S\"")
        );
        assert_eq!(
            deallocate_target(b"  DEALLOCATE pdo_stmt_00000001\0").as_deref(),
            Some("pdo_stmt_00000001")
        );
        assert_eq!(deallocate_target(b"DEALLOCATE ALL\0"), None);
        assert_eq!(deallocate_target(b"DEALLOCATE a; SELECT 1\0"), None);
        assert_eq!(deallocate_target(b"DEALLOCATEa\0"), None);
        assert_eq!(deallocate_target(b"SELECT 1\0"), None);
        assert_eq!(deallocate_target(b" \t\0"), None);
        assert_eq!(deallocate_target(b""), None);
        assert_eq!(
            deallocate_target("\u{a0}DEALLOCATE x\0".as_bytes()).as_deref(),
            Some("x")
        );
        assert_eq!(deallocate_target(b"\x0b DEALLOCATE y").as_deref(), Some("y"));
        assert_eq!(deallocate_target(b"SELECT 1\0"), None);
    }
}
