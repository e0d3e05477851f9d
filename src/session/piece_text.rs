//! Watching a client's Query or Parse text for a few words while it is forwarded in pieces:
//! the last bytes of each piece are kept, so a word split between two pieces is found. Shared
//! by the settings watch (`set_config`) and the pin watch (`_advisory`, `TEMP`).

use crate::protocol::tags::frontend;

/// Longest tail any watch keeps (a word one byte longer can be found across pieces).
const MAX_TAIL: usize = 16;

/// The client message being forwarded, as a watch with a tail of `TAIL` bytes sees it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum PieceText<const TAIL: usize> {
    /// Not a Query or Parse.
    #[default]
    Elsewhere,
    /// A Query or Parse (`tag`), with the last bytes of its text seen so far (`tail[..len]`).
    In { tag: u8, tail: [u8; TAIL], len: u8 },
}

impl<const TAIL: usize> PieceText<TAIL> {
    /// The client began a message (`tag`): its text is watched when it is a Query or Parse.
    pub(super) fn begin(tag: u8) -> Self {
        const { assert!(TAIL <= MAX_TAIL) };
        if tag == frontend::QUERY || tag == frontend::PARSE {
            PieceText::In {
                tag,
                tail: [0; TAIL],
                len: 0,
            }
        } else {
            PieceText::Elsewhere
        }
    }

    /// Looks at the next piece of the message's text with `find` (bits of what it saw), also
    /// across the joint with the previous piece, and keeps the new tail. None outside a Query
    /// or Parse; otherwise the message's tag and the bits found.
    pub(super) fn scan(&mut self, piece: &[u8], find: impl Fn(&[u8]) -> u8) -> Option<(u8, u8)> {
        let PieceText::In { tag, tail, len } = self else {
            return None;
        };
        let mut joint = [0u8; 2 * MAX_TAIL];
        let kept = usize::from(*len);
        let head = piece.len().min(TAIL);
        joint[..kept].copy_from_slice(&tail[..kept]);
        joint[kept..kept + head].copy_from_slice(&piece[..head]);
        let found = find(&joint[..kept + head]) | find(piece);
        // Keep the last TAIL bytes of what was seen.
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
        Some((*tag, found))
    }
}
