//! Why a transaction-mode client keeps its server between transactions: the kinds of session
//! state PostgreSQL cannot move to another connection, named as the console and the exporter
//! show them. The session (`session/pins.rs`) finds them; this layer only records them.

/// One kind of session state that pins a server to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PinReason {
    /// A session-level advisory lock (`pg_advisory_lock`, a `pg_try_advisory_lock` that
    /// succeeded).
    AdvisoryLock,
    /// A temporary table, sequence or view (`CREATE TEMP ...`).
    TempTable,
    /// A cursor declared `WITH HOLD` that outlived its transaction.
    HoldCursor,
    /// A statement prepared with SQL `PREPARE`.
    PreparedStatement,
}

impl PinReason {
    /// Every reason, in the order they are listed.
    pub const ALL: [PinReason; 4] = [
        PinReason::AdvisoryLock,
        PinReason::TempTable,
        PinReason::HoldCursor,
        PinReason::PreparedStatement,
    ];

    /// The name shown in SHOW CLIENTS/SERVERS (`pinned`) and the `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::TempTable => "temp_table",
            PinReason::HoldCursor => "hold_cursor",
            PinReason::PreparedStatement => "prepared_statement",
        }
    }

    /// The reason with this name.
    pub fn from_name(name: &str) -> Option<PinReason> {
        PinReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The set of reasons a client is pinned for (empty: it is not pinned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pins(u8);

impl Pins {
    /// No reason: the server goes back to the pool at the end of each transaction.
    pub const NONE: Pins = Pins(0);

    /// True when nothing pins the server.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Adds a reason.
    pub fn insert(&mut self, reason: PinReason) {
        self.0 |= reason.bit();
    }

    /// Whether `reason` is among them.
    pub fn contains(self, reason: PinReason) -> bool {
        self.0 & reason.bit() != 0
    }

    /// The reasons, in [`PinReason::ALL`] order.
    pub fn reasons(self) -> impl Iterator<Item = PinReason> {
        PinReason::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// The raw bits, for an atomic store.
    pub(crate) fn bits(self) -> u8 {
        self.0
    }

    /// From [`Pins::bits`].
    pub(crate) fn from_bits(bits: u8) -> Pins {
        Pins(bits & 0x0f)
    }
}

/// The reasons joined by commas (`advisory_lock,temp_table`), empty when not pinned.
impl std::fmt::Display for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.reasons().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(r.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_of_reasons_shows_as_their_names() {
        let mut p = Pins::NONE;
        assert!(p.is_empty() && p.to_string().is_empty());
        p.insert(PinReason::TempTable);
        p.insert(PinReason::AdvisoryLock);
        assert_eq!(p.to_string(), "advisory_lock,temp_table");
        assert_eq!(Pins::from_bits(p.bits()), p);
        assert_eq!(PinReason::from_name("hold_cursor"), Some(PinReason::HoldCursor));
        assert_eq!(PinReason::from_name("x"), None);
    }
}
