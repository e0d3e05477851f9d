//! The watch that decides, at almost no cost, whether a transaction may have changed the
//! server's session settings (then `settings.rs` reads them back when it is over).

use super::params::ClientParams;
use super::text_scan::Words;

/// Watches a client's requests and the server's replies for anything that may have changed the
/// server's session settings: a CommandComplete `SET`, `RESET`, `DISCARD ALL`, `DO` or `CALL`
/// (simple or extended protocol, alone or among other statements), or a query text that calls
/// `set_config`.
/// Costs a tag comparison per CommandComplete (the query text is read by the one pass of
/// `text_scan.rs`); only when it fires does the session read the server's settings back (`settings.rs`) once the transaction is
/// over, so a rolled-back SET and a `SET LOCAL` are found gone, and a committed one is kept.
#[derive(Debug, Default)]
pub(super) struct ResetWatch {
    state: Watch,
}

/// Whether the server's session settings may have changed since they were last read back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Nothing ran that could change them.
    #[default]
    Unchanged,
    /// A SET, RESET, DISCARD ALL or set_config call ran: read them back when the transaction ends.
    MayHaveChanged,
}

impl ResetWatch {
    /// The server sent a CommandComplete with this body (tag and NUL).
    pub(super) fn on_command_complete(&mut self, body: &[u8]) {
        let tag = body.strip_suffix(b"\0").unwrap_or(body);
        // A DO block or a procedure (CALL) may run SET with nothing to show for it.
        if matches!(tag, b"SET" | b"RESET" | b"DISCARD ALL" | b"DO" | b"CALL") {
            self.state = Watch::MayHaveChanged;
        }
    }

    /// The client sent a message (`tag`), or a piece of it, with these `words`: a Query or
    /// Parse whose text calls `set_config(...)` changes a setting with no SET tag to show for
    /// it. A prepared one may run in any later transaction, so such a client's settings are
    /// read back after every transaction from then on.
    pub(super) fn on_client_text(&mut self, tag: u8, words: Words, params: &mut ClientParams) {
        if words.has(Words::SET_CONFIG) {
            self.state = Watch::MayHaveChanged;
            if tag == crate::protocol::tags::frontend::PARSE {
                params.read_back_always();
            }
        }
    }

    /// Something ran that may have changed settings with no sign the watch could see.
    pub(super) fn may_have_changed(&mut self) {
        self.state = Watch::MayHaveChanged;
    }

    /// True when the server's settings must be read back before they are trusted again.
    pub(super) fn pending(&self) -> bool {
        self.state == Watch::MayHaveChanged
    }

    /// Returns whether a read-back was due, and forgets it.
    pub(super) fn take(&mut self) -> bool {
        std::mem::take(&mut self.state) == Watch::MayHaveChanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_config_is_seen_and_a_prepared_one_reads_back_always() {
        let mut p = ClientParams::default();
        let mut w = ResetWatch::default();
        w.on_client_text(b'Q', Words::NONE, &mut p);
        w.on_client_text(b'Q', Words::PINNING, &mut p);
        assert!(!w.pending());
        w.on_client_text(b'Q', Words::SET_CONFIG, &mut p);
        assert!(w.take() && !w.pending() && !p.reads_back_always());
        w.on_client_text(b'P', Words::SET_CONFIG, &mut p);
        assert!(w.pending() && p.reads_back_always());
        w.on_command_complete(b"SELECT 1\0");
        for tag in [&b"SET\0"[..], b"RESET\0", b"DISCARD ALL\0", b"DO\0", b"CALL\0"] {
            let mut w = ResetWatch::default();
            w.on_command_complete(tag);
            assert!(w.pending());
        }
        let mut w = ResetWatch::default();
        w.on_command_complete(b"SELECT 1\0");
        w.on_command_complete(b"DISCARD TEMP\0");
        assert!(!w.pending());
    }
}
