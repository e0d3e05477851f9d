//! `pin_session_state = "error"`: a Query or Parse whose text would create session state that
//! pins the server (a temporary table, a session advisory lock, a cursor WITH HOLD, an SQL
//! PREPARE) is refused before the server runs it, with SQLSTATE 0A000 naming the setting. The
//! text is read as PostgreSQL's lexer would for what matters here, and only in this mode.

use super::link::{ClientBatch, Link};
use crate::clients::PinReason;
use crate::protocol::tags::frontend;

/// Under `pin_session_state = "error"`: a Query or Parse whose text would create session state
/// that pins the server is refused. A Query is replaced by one that makes the server raise the
/// error (so a transaction block fails there as it would for any error); a Parse is answered
/// with the error by sluice and the rest of its batch is skipped. True when it was refused.
pub(super) fn refuse(tag: u8, msg: &[u8], link: &mut Link) -> bool {
    if tag != frontend::QUERY && tag != frontend::PARSE {
        return false;
    }
    let body = msg.get(5..).unwrap_or_default();
    let text = if tag == frontend::PARSE {
        match body.iter().position(|&b| b == 0) {
            Some(i) => &body[i + 1..],
            None => return false,
        }
    } else {
        body
    };
    let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
    let Some(reason) = would_pin(text) else {
        return false;
    };
    let e = refusal(reason);
    if tag == frontend::QUERY {
        link.on_client_message(frontend::QUERY);
        link.to_server.unsplit(failing_query(&e));
    } else {
        link.responses.push_error(&e);
        link.input.unsynced();
        link.client_batch = ClientBatch::SkippingToSync;
    }
    true
}

/// Under `pin_session_state = "error"`: the kind of pinning state a statement of `text` would
/// create, if any. Reads the text as PostgreSQL's lexer would for what matters here (quoted
/// strings, quoted names, dollar quotes and comments are skipped; parentheses are counted).
pub(super) fn would_pin(text: &[u8]) -> Option<PinReason> {
    let mut stmt = Statement::default();
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        match b {
            b';' => {
                if let Some(r) = std::mem::take(&mut stmt).finish() {
                    return Some(r);
                }
                i += 1;
            }
            b'(' => {
                stmt.depth += 1;
                i += 1;
            }
            b')' => {
                stmt.depth = stmt.depth.saturating_sub(1);
                i += 1;
            }
            b'\'' => i = skip_quoted(text, i + 1, b'\''),
            b'"' => {
                i = skip_quoted(text, i + 1, b'"');
                stmt.word(b"\"");
            }
            b'-' if text.get(i + 1) == Some(&b'-') => {
                i = text[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(text.len(), |p| i + p);
            }
            b'/' if text.get(i + 1) == Some(&b'*') => {
                i = find(text, i + 2, b"*/").map_or(text.len(), |p| p + 2);
            }
            b'$' => i = skip_dollar(text, i),
            _ if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 => {
                let end = text[i..]
                    .iter()
                    .position(|&c| !is_word_byte(c))
                    .map_or(text.len(), |p| i + p);
                let word = &text[i..end];
                if is_advisory_lock_call(word) && next_non_space(text, end) == Some(b'(') {
                    return Some(PinReason::AdvisoryLock);
                }
                stmt.word(word);
                i = end;
            }
            _ => i += 1,
        }
    }
    stmt.finish()
}

/// Where a statement's words have got to, for [`would_pin`].
#[derive(Debug, Default)]
struct Statement {
    /// Parenthesis depth (words inside parentheses are column lists, calls, subqueries).
    depth: u32,
    /// Words seen at depth 0, up to a few.
    count: u32,
    first: FirstWord,
    /// The last word seen at depth 0 (lowercased, cut at 16 bytes).
    last: [u8; 16],
    /// `CREATE ...`: a TEMP word came before the object's kind.
    temp: bool,
    /// What the statement would create.
    found: Option<PinReason>,
    /// `ON COMMIT` was followed by `DROP`: the temp table ends with its transaction.
    commit_drop: bool,
    /// `CREATE ... TABLE|SEQUENCE|VIEW` was seen: the next words name the object.
    object: bool,
}

/// The statement's first word, as far as it matters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FirstWord {
    #[default]
    None,
    Create,
    Select,
    Declare,
    Prepare,
    Other,
}

impl Statement {
    /// What the statement would create, once all its words are seen.
    fn finish(self) -> Option<PinReason> {
        match self.found {
            Some(PinReason::TempTable) if self.commit_drop => None,
            found => found,
        }
    }

    fn word(&mut self, word: &[u8]) {
        if self.depth > 0 {
            return;
        }
        let is = |w: &[u8]| word.eq_ignore_ascii_case(w);
        let last = self.last;
        let last_is = |w: &[u8]| last.get(..w.len()) == Some(w) && last.get(w.len()).is_none_or(|&c| c == 0);
        self.count = self.count.saturating_add(1);
        if self.count == 1 {
            self.first = if is(b"create") {
                FirstWord::Create
            } else if is(b"select") || is(b"with") {
                FirstWord::Select
            } else if is(b"declare") {
                FirstWord::Declare
            } else if is(b"prepare") {
                FirstWord::Prepare
            } else {
                FirstWord::Other
            };
        }
        let found = match self.first {
            FirstWord::Create if !self.object => {
                if is(b"temp") || is(b"temporary") {
                    self.temp = true;
                }
                if is(b"table") || is(b"sequence") || is(b"view") {
                    self.object = true;
                    self.temp.then_some(PinReason::TempTable)
                } else {
                    None
                }
            }
            // CREATE TABLE pg_temp.name
            FirstWord::Create => is(b"pg_temp").then_some(PinReason::TempTable),
            FirstWord::Select => {
                (last_is(b"into") && (is(b"temp") || is(b"temporary"))).then_some(PinReason::TempTable)
            }
            FirstWord::Declare => (last_is(b"with") && is(b"hold")).then_some(PinReason::HoldCursor),
            FirstWord::Prepare if self.count == 2 => {
                (!is(b"transaction")).then_some(PinReason::PreparedStatement)
            }
            _ => None,
        };
        if last_is(b"commit") && is(b"drop") {
            self.commit_drop = true;
        }
        if self.found.is_none() {
            self.found = found;
        }
        self.last = [0; 16];
        for (d, s) in self.last.iter_mut().zip(word) {
            *d = s.to_ascii_lowercase();
        }
    }
}

/// The session-level advisory lock functions (the `_xact_` ones end with their transaction).
fn is_advisory_lock_call(word: &[u8]) -> bool {
    [
        &b"pg_advisory_lock"[..],
        b"pg_advisory_lock_shared",
        b"pg_try_advisory_lock",
        b"pg_try_advisory_lock_shared",
    ]
    .iter()
    .any(|f| word.eq_ignore_ascii_case(f))
}

fn next_non_space(text: &[u8], from: usize) -> Option<u8> {
    text.get(from..)?
        .iter()
        .copied()
        .find(|c| !c.is_ascii_whitespace())
}

/// Past the closing `quote` (a doubled one is part of the text).
fn skip_quoted(text: &[u8], mut i: usize, quote: u8) -> usize {
    while i < text.len() {
        if text[i] == quote {
            if text.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    text.len()
}

/// Past a dollar-quoted string starting at `i` (`$tag$ ... $tag$`); a `$` that opens none (a
/// parameter `$1`) is passed.
fn skip_dollar(text: &[u8], i: usize) -> usize {
    let Some(len) = text[i + 1..]
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
    else {
        return text.len();
    };
    let close = i + 1 + len;
    if text.get(close) != Some(&b'$') || text.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        return i + 1;
    }
    let tag = &text[i..=close];
    find(text, close + 1, tag).map_or(text.len(), |p| p + tag.len())
}

fn find(text: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    text.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// The error a refused statement gets.
pub(super) fn refusal(reason: PinReason) -> crate::protocol::PgError {
    let what = match reason {
        PinReason::AdvisoryLock => "a session-level advisory lock",
        PinReason::TempTable => "a temporary table",
        PinReason::HoldCursor => "a cursor WITH HOLD",
        PinReason::PreparedStatement => "an SQL prepared statement",
    };
    crate::protocol::PgError::error(
        crate::protocol::sqlstate::FEATURE_NOT_SUPPORTED,
        format!("pin_session_state = \"error\": {what} cannot be used in transaction pooling"),
    )
    .with_hint(
        "Use a transaction-level form (pg_advisory_xact_lock, ON COMMIT DROP, a cursor without \
         HOLD, protocol-level prepared statements), session pooling, or pin_session_state = \"pin\".",
    )
}

/// A Query that makes the server itself fail with `e` (so a transaction block fails there as it
/// would for any error): a DO block raising it.
pub(super) fn failing_query(e: &crate::protocol::PgError) -> bytes::BytesMut {
    let quote = |s: &str| s.replace('\'', "''");
    let sql = format!(
        "DO $sluice_pin$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}', HINT = '{}'; END$sluice_pin$",
        quote(&e.sqlstate),
        quote(&e.message),
        quote(e.hint.as_deref().unwrap_or_default()),
    );
    let mut out = bytes::BytesMut::new();
    // A query text of our own making: no NUL inside, and far below the i32 length limit.
    let _ = postgres_protocol::message::frontend::query(&sql, &mut out);
    out
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_would_pin_are_told_from_ones_that_would_not() {
        use PinReason::*;
        let cases: &[(&str, Option<PinReason>)] = &[
            ("CREATE TEMP TABLE t (a int)", Some(TempTable)),
            ("create global temporary table t as select 1", Some(TempTable)),
            ("CREATE TEMPORARY SEQUENCE s", Some(TempTable)),
            ("create or replace temp view v as select 1", Some(TempTable)),
            ("CREATE TABLE pg_temp.t (a int)", Some(TempTable)),
            ("CREATE TABLE t (temp int)", None),
            ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", None),
            (
                "CREATE TEMP TABLE t (a int) ON COMMIT DROP; PREPARE p AS SELECT 1",
                Some(PreparedStatement),
            ),
            ("CREATE VIEW v AS SELECT temp FROM x", None),
            ("SELECT 1 AS a INTO TEMP t", Some(TempTable)),
            ("select * into temporary table t from x", Some(TempTable)),
            ("INSERT INTO temp VALUES (1)", None),
            ("SELECT pg_advisory_lock(1)", Some(AdvisoryLock)),
            (
                "select pg_catalog.pg_try_advisory_lock_shared (1, 2)",
                Some(AdvisoryLock),
            ),
            ("SELECT pg_advisory_xact_lock(1)", None),
            ("SELECT pg_advisory_unlock(1)", None),
            ("SELECT 'pg_advisory_lock(1)'", None),
            ("SELECT $$ pg_advisory_lock(1) $$", None),
            ("SELECT 1 -- pg_advisory_lock(1)\n", None),
            ("SELECT /* pg_advisory_lock(1) */ 1", None),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Some(HoldCursor)),
            ("declare c no scroll cursor without hold for select 1", None),
            ("DECLARE c CURSOR FOR SELECT 1", None),
            ("PREPARE p AS SELECT 1", Some(PreparedStatement)),
            ("PREPARE TRANSACTION 'x'", None),
            ("SELECT 1; PREPARE p(int) AS SELECT $1", Some(PreparedStatement)),
            ("SELECT $1::text", None),
            ("SELECT \"temp\" FROM t", None),
        ];
        for (sql, want) in cases {
            assert_eq!(would_pin(sql.as_bytes()), *want, "{sql}");
        }
    }

    proptest::proptest! {
        /// Client text of any shape is read without a panic (quotes, comments and dollar
        /// quotes left open, `$` at the end, ...).
        #[test]
        fn any_text_is_read_without_a_panic(
            text in proptest::collection::vec(
                proptest::sample::select(b"$'\"-/*();\n aTt_xpg_advisory_lockHOLDwithprepare".to_vec()),
                0..96,
            ),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..32),
        ) {
            let _ = would_pin(&text);
            let _ = would_pin(&noise);
        }
    }
}
