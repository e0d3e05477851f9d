//! Session state that cannot follow its client to another server (temporary tables, session
//! advisory locks, `WITH HOLD` cursors, SQL `PREPARE`) in transaction mode: the watch that decides
//! at almost no cost whether a transaction may have created or dropped some, the verification
//! folded into the settings read-back (`settings.rs`), and, under `pin_session_state = "error"`,
//! the statements refused before they reach the server.
//!
//! A transaction that shows none of the signs (CommandComplete tags, a few words of its query
//! text) costs a tag comparison per statement and one pass over its text; only a marked one is
//! verified, in the same query that reads the session settings back.

use super::params::ClientParams;
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
    /// The word `temp` or `temporary` (`SELECT ... INTO TEMP t`, `CREATE TEMP TABLE ... AS`).
    const TEMP: u8 = 2;
}

/// The client message whose text is being scanned, with the last 15 bytes seen (one less than
/// `_advisory_xact`), to find a word split between two pieces.
type Text = super::piece_text::PieceText<15>;

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
        let words = self.mentions;
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

    /// The client sent a message (`tag`), whole or its first piece. A Parse whose text mentions
    /// an advisory lock or a temp table prepares a statement that may run in any later
    /// transaction (and on later servers): such a client is verified after every transaction
    /// from then on (`params`' read-back-always, which outlives this server).
    pub(super) fn on_client_message(&mut self, tag: u8, piece: &[u8], params: &mut ClientParams) {
        if self.policy == PinSessionState::Off {
            return;
        }
        self.text = Text::begin(tag);
        self.scan(piece, params);
    }

    /// A further piece of the client message last begun.
    pub(super) fn on_client_piece(&mut self, piece: &[u8], params: &mut ClientParams) {
        self.scan(piece, params);
    }

    /// The client's prepared statements may have pinned the server with no sign in this
    /// transaction (see [`PinWatch::on_client_message`]): verify at its end.
    pub(super) fn may_have_changed(&mut self) {
        if self.policy != PinSessionState::Off {
            self.verify = Verify::Due;
        }
    }

    fn scan(&mut self, piece: &[u8], params: &mut ClientParams) {
        if let Some((tag, found)) = self.text.scan(piece, mentions)
            && found != 0
        {
            self.mentions.0 |= found;
            if tag == frontend::PARSE {
                params.read_back_always();
            }
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
                let rest = &text[i..];
                // The word TEMP or TEMPORARY (a word ending where the text piece ends counts).
                let word = |n: usize| rest.get(n).is_none_or(|&c| !is_word_byte(c));
                if word_start
                    && ((starts_with_ci(rest, b"temp") && word(4))
                        || (starts_with_ci(rest, b"temporary") && word(9)))
                {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_that_may_pin_are_seen_in_any_case_and_across_pieces() {
        assert_eq!(mentions(b"select pg_advisory_lock(1)"), Mentions::ADVISORY);
        assert_eq!(mentions(b"SELECT PG_TRY_ADVISORY_LOCK(1)"), Mentions::ADVISORY);
        assert_eq!(mentions(b"select pg_advisory_xact_lock(1)"), 0);
        assert_eq!(mentions(b"select 1 into TEMP t"), Mentions::TEMP);
        assert_eq!(
            mentions(b"select attempt, contempt, temperature, temp_c from x"),
            0
        );
        assert_eq!(mentions(b"CREATE TEMPORARY TABLE t AS SELECT 1"), Mentions::TEMP);
        assert_eq!(
            mentions(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            0
        );
        let mut p = ClientParams::default();
        let mut w = PinWatch::new(PinSessionState::Pin);
        w.on_client_message(b'Q', b"SELECT pg_catalog.pg_adv", &mut p);
        w.on_client_piece(b"isory_lock(7)", &mut p);
        w.on_command_complete(b"SELECT 1\0");
        assert!(w.pending());
        w.set_held(Pins::NONE);
        // A SELECT that mentions nothing costs nothing.
        w.on_client_message(b'Q', b"SELECT 1", &mut p);
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
        // A prepared statement's words apply to every later transaction: its client is
        // verified after each.
        assert!(!p.reads_back_always());
        let mut w = PinWatch::new(PinSessionState::Pin);
        w.on_client_message(b'P', b"s1\0SELECT pg_advisory_lock($1)", &mut p);
        assert!(p.reads_back_always());
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
