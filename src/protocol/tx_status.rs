//! The transaction status a server reports in every ReadyForQuery, as a type: the byte exists
//! only where the message is read or written.

use std::fmt;

/// Where the server's session stands between requests (ReadyForQuery's status byte). Kept as a
/// type so every decision on it (release, timeouts, replies sluice answers itself) matches on
/// the three states PostgreSQL can report, and an unknown byte is refused where it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (commands are refused until it ends).
    Failed,
}

/// A ReadyForQuery status byte that is none of `I`, `T`, `E`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownTxStatus(pub u8);

impl fmt::Display for UnknownTxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown transaction status {:?} in ReadyForQuery",
            self.0 as char
        )
    }
}

impl std::error::Error for UnknownTxStatus {}

impl TryFrom<u8> for TxStatus {
    type Error = UnknownTxStatus;

    fn try_from(byte: u8) -> Result<TxStatus, UnknownTxStatus> {
        match byte {
            b'I' => Ok(TxStatus::Idle),
            b'T' => Ok(TxStatus::InTransaction),
            b'E' => Ok(TxStatus::Failed),
            other => Err(UnknownTxStatus(other)),
        }
    }
}

impl TxStatus {
    /// The byte ReadyForQuery carries for this status.
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_converts_back_or_is_refused() {
        for byte in 0..=u8::MAX {
            match TxStatus::try_from(byte) {
                Ok(status) => assert_eq!(status.byte(), byte),
                Err(e) => {
                    assert_eq!(e, UnknownTxStatus(byte));
                    assert!(!matches!(byte, b'I' | b'T' | b'E'));
                }
            }
        }
    }
}
