//! The watch that decides, at almost no cost, whether a transaction may have changed the
//! server's session settings (then `settings.rs` reads them back when it is over).

use super::params::ClientParams;

/// Watches a client's requests and the server's replies for anything that may have changed the
/// server's session settings: a CommandComplete `SET`, `RESET`, `DISCARD ALL`, `DO` or `CALL`
/// (simple or extended protocol, alone or among other statements), or a query text that calls
/// `set_config`.
/// Costs a tag comparison per CommandComplete and a scan of the query text for `_`; only when it
/// fires does the session read the server's settings back (`settings.rs`) once the transaction is
/// over, so a rolled-back SET and a `SET LOCAL` are found gone, and a committed one is kept.
#[derive(Debug, Default)]
pub(super) struct ResetWatch {
    state: Watch,
    /// Where the client's message being forwarded stands, for `set_config` split across pieces.
    text: Text,
}

/// The client message whose pieces are being forwarded, with the last 9 bytes of its text (one
/// less than `set_config`), so that a name split between two pieces is found.
type Text = super::piece_text::PieceText<9>;

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

    /// The client sent a message (`tag`), whole or its first piece: a Query or Parse whose text
    /// calls `set_config(...)` changes a setting with no SET tag to show for it. A prepared one
    /// may run in any later transaction, so such a client's settings are read back after every
    /// transaction from then on.
    pub(super) fn on_client_message(&mut self, tag: u8, piece: &[u8], params: &mut ClientParams) {
        self.text = Text::begin(tag);
        self.scan(piece, params);
    }

    /// A further piece of the client message last begun.
    pub(super) fn on_client_piece(&mut self, piece: &[u8], params: &mut ClientParams) {
        self.scan(piece, params);
    }

    fn scan(&mut self, piece: &[u8], params: &mut ClientParams) {
        if let Some((tag, found)) = self.text.scan(piece, |t| u8::from(mentions_set_config(t)))
            && found != 0
        {
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

/// True when `text` contains `set_config` in any letter case.
fn mentions_set_config(text: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"set_config";
    text.iter().enumerate().any(|(i, &b)| {
        b == b'_'
            && i >= 3
            && text
                .get(i - 3..i - 3 + NEEDLE.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(NEEDLE))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_config_is_seen_in_any_case_and_a_prepared_one_reads_back_always() {
        assert!(mentions_set_config(b"select SET_Config('a', 'b', false)"));
        assert!(mentions_set_config(b"set_config"));
        assert!(!mentions_set_config(
            b"select current_setting('x'), _config, et_config"
        ));
        let mut p = ClientParams::default();
        let mut w = ResetWatch::default();
        w.on_client_message(b'Q', b"SELECT 1", &mut p);
        assert!(!w.pending());
        w.on_client_message(b'Q', b"SELECT set_config('a','b',false)", &mut p);
        assert!(w.take() && !w.pending() && !p.reads_back_always());
        // Split between pieces, and pieces smaller than the name.
        w.on_client_message(b'Q', b"SELECT pg_catalog.se", &mut p);
        w.on_client_piece(b"t_c", &mut p);
        assert!(!w.pending());
        w.on_client_piece(b"onfig('a','b',false)", &mut p);
        assert!(w.take());
        // Not in another message's continuation.
        w.on_client_message(b'B', b"set_", &mut p);
        w.on_client_piece(b"config", &mut p);
        assert!(!w.pending());
        w.on_client_message(b'P', b"s0\0SELECT set_config($1,$2,false)", &mut p);
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
