//! Session state that cannot follow its client to another server (temporary tables, session
//! advisory locks, `WITH HOLD` cursors, SQL `PREPARE`) in transaction mode: the watch that decides
//! at almost no cost whether a transaction may have created or dropped some, the verification
//! folded into the settings read-back (`settings.rs`), and, under `pin_session_state = "error"`,
//! the statements refused before they reach the server.
//!
//! A transaction that shows none of the signs (CommandComplete tags, a few words of its query
//! text) costs a tag comparison per statement and one pass over its text; only a marked one is
//! verified, in the same query that reads the session settings back.

use crate::clients::{PinReason, Pins};
use crate::config::PinSessionState;
use crate::pool::Disposition;
use crate::protocol::tags::frontend;

impl super::Session {
    /// The server goes back to the pool: one that may carry pinning state (verified, or created
    /// and not verified yet) is cleaned with DISCARD ALL first, so nothing of it (a lock above
    /// all) outlives its client's hold. The client's record stops showing a pin.
    pub(super) fn unpin(&self, watch: &PinWatch, disposition: Disposition) -> Disposition {
        let info = self.login.info();
        if !info.pins().is_empty() {
            info.set_pins(Pins::NONE);
        }
        if watch.held().is_empty() && !watch.pending() {
            return disposition;
        }
        match disposition {
            Disposition::Clean => Disposition::Discard { rollback: false },
            Disposition::Rollback => Disposition::Discard { rollback: true },
            other => other,
        }
    }

    /// After a transaction (and its verification, if one was due): true when the client keeps
    /// its server for the session state on it. The client's record shows why.
    pub(super) fn keeps_pinned(&self, watch: &PinWatch) -> bool {
        let info = self.login.info();
        let held = if watch.keeps_server() {
            watch.held()
        } else {
            Pins::NONE
        };
        if info.pins() != held {
            info.set_pins(held);
        }
        !held.is_empty()
    }
}

/// The rows the read-back adds for the pins it finds: name `''` (no setting has it), value the
/// reason's name. Each test is a catalog lookup local to the backend.
pub(super) const PIN_ROWS: &str = " UNION ALL SELECT '', 'advisory_lock' WHERE EXISTS \
     (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' \
     AND pid = pg_catalog.pg_backend_pid() AND granted) \
     UNION ALL SELECT '', 'temp_table' WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class \
     WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
     UNION ALL SELECT '', 'hold_cursor' WHERE EXISTS \
     (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable) \
     UNION ALL SELECT '', 'prepared_statement' WHERE EXISTS \
     (SELECT 1 FROM pg_catalog.pg_prepared_statements WHERE from_sql)";

/// Takes the pin rows ([`PIN_ROWS`]) out of a read-back's rows and returns what they name.
pub(super) fn take_pin_rows(rows: &mut Vec<(String, String)>) -> Pins {
    let mut pins = Pins::NONE;
    rows.retain(|(name, value)| {
        if !name.is_empty() {
            return true;
        }
        if let Some(r) = PinReason::from_name(value) {
            pins.insert(r);
        }
        false
    });
    pins
}

/// Words of a query text that may create or drop pinning state in a statement whose
/// CommandComplete tag alone does not tell (`SELECT`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Mentions(u8);

impl Mentions {
    /// `_advisory` (a session advisory lock or unlock function; not `_advisory_xact`).
    const ADVISORY: u8 = 1;
    /// `temp` as a word of its own or the start of one (`SELECT ... INTO TEMP t`).
    const TEMP: u8 = 2;
}

/// Bytes of the previous piece kept to find a word split between two pieces.
const TAIL: usize = 15;

/// The client message whose text is being scanned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Text {
    /// Not a Query or Parse.
    #[default]
    Elsewhere,
    /// A Query or Parse (`tag`), with the last bytes seen so far (`tail[..len]`).
    In { tag: u8, tail: [u8; TAIL], len: u8 },
}

/// Whether the server's pinning state must be verified when the transaction ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Nothing ran that could create or drop any.
    #[default]
    NotDue,
    /// Something may have: verify at the end of the transaction.
    Due,
}

/// The watch and what it knows of the server held: the policy, the pins verified on it, and
/// whether this transaction must be verified.
#[derive(Debug, Default)]
pub(super) struct PinWatch {
    policy: PinSessionState,
    /// What the last verification found on the server.
    held: Pins,
    verify: Verify,
    /// What this transaction's query texts mention.
    mentions: Mentions,
    /// What the client's prepared statements mention: they may run in any later transaction.
    sticky: Mentions,
    text: Text,
}

impl PinWatch {
    /// A watch under `policy`.
    #[cfg(test)]
    fn new(policy: PinSessionState) -> PinWatch {
        PinWatch {
            policy,
            ..Default::default()
        }
    }

    /// What the last verification found pinning the server.
    pub(super) fn held(&self) -> Pins {
        self.held
    }

    /// Records what a verification found: nothing is due any more.
    pub(super) fn set_held(&mut self, pins: Pins) {
        self.held = pins;
        self.verify = Verify::NotDue;
        self.mentions = Mentions::default();
    }

    /// The policy in force (read at each checkout and relay, so SET and RELOAD apply).
    pub(super) fn set_policy(&mut self, policy: PinSessionState) {
        self.policy = policy;
    }

    /// True when the server must stay with its client after the transaction.
    pub(super) fn keeps_server(&self) -> bool {
        self.policy == PinSessionState::Pin && !self.held.is_empty()
    }

    /// True when the state must be verified at the end of the transaction.
    pub(super) fn pending(&self) -> bool {
        self.verify == Verify::Due
    }

    /// True when statements that would create pinning state are refused before the server sees
    /// them (their text must then be read whole).
    pub(super) fn refuses(&self) -> bool {
        self.policy == PinSessionState::Error
    }

    /// The server sent a CommandComplete with this body (tag and NUL).
    pub(super) fn on_command_complete(&mut self, body: &[u8]) {
        if self.policy == PinSessionState::Off {
            return;
        }
        let tag = body.strip_suffix(b"\0").unwrap_or(body);
        let words = Mentions(self.mentions.0 | self.sticky.0);
        let due = match tag {
            b"CREATE TABLE" | b"CREATE TABLE AS" | b"CREATE SEQUENCE" | b"CREATE VIEW" => true,
            b"DECLARE CURSOR" | b"PREPARE" | b"DO" | b"CALL" => true,
            // What may drop such state: only worth a look when some is held.
            b"DISCARD TEMP" | b"DISCARD ALL" | b"CLOSE CURSOR" | b"CLOSE CURSOR ALL" | b"DEALLOCATE"
            | b"DEALLOCATE ALL" | b"DROP TABLE" | b"DROP SEQUENCE" | b"DROP VIEW" => !self.held.is_empty(),
            // SELECT pg_advisory_lock(..), SELECT .. INTO TEMP, CREATE TEMP TABLE .. AS.
            t if t.starts_with(b"SELECT") => words.0 != 0,
            _ => false,
        };
        if due {
            self.verify = Verify::Due;
        }
    }

    /// The client sent a message (`tag`), whole or its first piece.
    pub(super) fn on_client_message(&mut self, tag: u8, piece: &[u8]) {
        if self.policy == PinSessionState::Off {
            return;
        }
        self.text = if tag == frontend::QUERY || tag == frontend::PARSE {
            Text::In {
                tag,
                tail: [0; TAIL],
                len: 0,
            }
        } else {
            Text::Elsewhere
        };
        self.scan(piece);
    }

    /// A further piece of the client message last begun.
    pub(super) fn on_client_piece(&mut self, piece: &[u8]) {
        self.scan(piece);
    }

    fn scan(&mut self, piece: &[u8]) {
        let Text::In { tag, tail, len } = &mut self.text else {
            return;
        };
        let mut joint = [0u8; 2 * TAIL];
        let kept = usize::from(*len);
        let head = piece.len().min(TAIL);
        joint[..kept].copy_from_slice(&tail[..kept]);
        joint[kept..kept + head].copy_from_slice(&piece[..head]);
        let found = mentions(&joint[..kept + head]) | mentions(piece);
        if found != 0 {
            self.mentions.0 |= found;
            if *tag == frontend::PARSE {
                self.sticky.0 |= found;
            }
        }
        let all = &joint[..kept + head];
        if piece.len() >= TAIL {
            tail.copy_from_slice(&piece[piece.len() - TAIL..]);
            *len = TAIL as u8;
        } else {
            let from = all.len().saturating_sub(TAIL);
            let n = all.len() - from;
            tail[..n].copy_from_slice(&all[from..]);
            *len = n as u8;
        }
    }
}

/// The [`Mentions`] bits of `text`: one pass, looking closer only at `_` and `t`/`T`.
fn mentions(text: &[u8]) -> u8 {
    let mut found = 0;
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'_' => {
                let rest = &text[i..];
                if starts_with_ci(rest, b"_advisory") && !starts_with_ci(&rest[9..], b"_xact") {
                    found |= Mentions::ADVISORY;
                }
            }
            b't' | b'T' => {
                let word_start = i == 0 || !is_word_byte(text[i - 1]);
                if word_start && starts_with_ci(&text[i..], b"temp") {
                    found |= Mentions::TEMP;
                }
            }
            _ => {}
        }
    }
    found
}

fn starts_with_ci(text: &[u8], needle: &[u8]) -> bool {
    text.get(..needle.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(needle))
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_that_may_pin_are_seen_in_any_case_and_across_pieces() {
        assert_eq!(mentions(b"select pg_advisory_lock(1)"), Mentions::ADVISORY);
        assert_eq!(mentions(b"SELECT PG_TRY_ADVISORY_LOCK(1)"), Mentions::ADVISORY);
        assert_eq!(mentions(b"select pg_advisory_xact_lock(1)"), 0);
        assert_eq!(mentions(b"select 1 into TEMP t"), Mentions::TEMP);
        assert_eq!(mentions(b"select attempt, contempt from x"), 0);
        assert_eq!(
            mentions(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            0
        );
        let mut w = PinWatch::new(PinSessionState::Pin);
        w.on_client_message(b'Q', b"SELECT pg_catalog.pg_adv");
        w.on_client_piece(b"isory_lock(7)");
        w.on_command_complete(b"SELECT 1\0");
        assert!(w.pending());
        w.set_held(Pins::NONE);
        // A SELECT that mentions nothing costs nothing.
        w.on_client_message(b'Q', b"SELECT 1");
        w.on_command_complete(b"SELECT 1\0");
        assert!(!w.pending());
        // Tags that may drop state matter only while some is held.
        w.on_command_complete(b"DISCARD TEMP\0");
        assert!(!w.pending());
        w.set_held(Pins::from_bits(1));
        w.on_command_complete(b"DISCARD TEMP\0");
        assert!(w.pending());
        for tag in [
            &b"CREATE TABLE\0"[..],
            b"DECLARE CURSOR\0",
            b"PREPARE\0",
            b"CREATE VIEW\0",
        ] {
            let mut w = PinWatch::new(PinSessionState::Pin);
            w.on_command_complete(tag);
            assert!(w.pending());
            let mut off = PinWatch::new(PinSessionState::Off);
            off.on_command_complete(tag);
            assert!(!off.pending());
        }
        // A prepared statement's words apply to every later transaction.
        let mut w = PinWatch::new(PinSessionState::Pin);
        w.on_client_message(b'P', b"s1\0SELECT pg_advisory_lock($1)");
        w.set_held(Pins::NONE);
        w.on_client_message(b'B', b"s1");
        w.on_command_complete(b"SELECT 1\0");
        assert!(w.pending());
    }

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

    #[test]
    fn pin_rows_are_taken_out_of_the_settings() {
        let mut rows = vec![
            ("work_mem".to_string(), "8MB".to_string()),
            (String::new(), "temp_table".to_string()),
            (String::new(), "advisory_lock".to_string()),
        ];
        let pins = take_pin_rows(&mut rows);
        assert_eq!(rows.len(), 1);
        assert_eq!(pins.to_string(), "advisory_lock,temp_table");
    }
}
