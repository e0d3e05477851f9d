//! Session state that cannot follow its client to another server (temporary tables, session
//! advisory locks, `WITH HOLD` cursors, SQL `PREPARE`) in transaction mode: the watch that decides
//! at almost no cost whether a transaction may have created or dropped some, the verification
//! folded into the settings read-back (`settings.rs`), and, under `pin_session_state = "error"`,
//! the statements refused before they reach the server.
//!
//! A transaction that shows none of the signs (CommandComplete tags, a few words of its query
//! text, found by the one pass of `text_scan.rs`) costs a tag comparison per statement; only a
//! marked one is verified, in the same query that reads the session settings back.

use super::params::ClientParams;
use super::text_scan::Words;
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
    /// The words of this transaction's query texts that may create or drop pinning state in a
    /// statement whose CommandComplete tag alone does not tell (`SELECT`): [`Words::PINNING`].
    mentions: Words,
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
        self.mentions = Words::NONE;
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
            t if t.starts_with(b"SELECT") => words.has(Words::PINNING),
            _ => false,
        };
        if due {
            self.verify = Verify::Due;
        }
    }

    /// The client sent a message (`tag`), or a piece of it, with these `words`. A Parse whose
    /// text mentions an advisory lock or a temp table prepares a statement that may run in any
    /// later transaction (and on later servers): such a client is verified after every
    /// transaction from then on (`params`' read-back-always, which outlives this server).
    pub(super) fn on_client_text(&mut self, tag: u8, words: Words, params: &mut ClientParams) {
        if self.policy == PinSessionState::Off || !words.has(Words::PINNING) {
            return;
        }
        self.mentions.add(words.only(Words::PINNING));
        if tag == frontend::PARSE {
            params.read_back_always();
        }
    }

    /// The client's prepared statements may have pinned the server with no sign in this
    /// transaction (see [`PinWatch::on_client_text`]): verify at its end.
    pub(super) fn may_have_changed(&mut self) {
        if self.policy != PinSessionState::Off {
            self.verify = Verify::Due;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_that_may_pin_mark_a_select_and_a_prepared_one_marks_every_transaction() {
        let mut p = ClientParams::default();
        let mut w = PinWatch::new(PinSessionState::Pin);
        w.on_client_text(b'Q', Words::NONE, &mut p);
        w.on_client_text(b'Q', Words::ADVISORY, &mut p);
        w.on_command_complete(b"SELECT 1\0");
        assert!(w.pending());
        w.set_held(Pins::NONE);
        // A SELECT that mentions nothing costs nothing.
        w.on_client_text(b'Q', Words::SET_CONFIG, &mut p);
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
        w.on_client_text(b'P', Words::TEMP, &mut p);
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
