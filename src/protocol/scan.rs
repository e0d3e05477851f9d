//! Finds message boundaries in a relayed byte stream without decoding it: messages sluice must
//! understand are handed out whole (after a length check), all others pass through in pieces as
//! they arrive, so a 1 GB DataRow or COPY stream never has to fit in memory.

/// A problem with the framing of a stream: the peer is broken or hostile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Length field below 4.
    #[error("invalid message length {len} for message type '{}'", *tag as char)]
    BadLength {
        /// Message type byte.
        tag: u8,
        /// The length field as received.
        len: i32,
    },
    /// A message type the receiver does not accept here (PostgreSQL's own wording).
    #[error("invalid frontend message type {tag}")]
    UnknownType {
        /// Message type byte.
        tag: u8,
    },
    /// A length that this message type cannot have (PostgreSQL's own wording).
    #[error("invalid message length {len} for message type '{}'", *tag as char)]
    WrongLength {
        /// Message type byte.
        tag: u8,
        /// Total length of the message.
        len: usize,
    },
    /// Length above what sluice accepts for this message.
    #[error("message of type '{}' is {len} bytes, more than the {max} allowed", *tag as char)]
    TooLarge {
        /// Message type byte.
        tag: u8,
        /// Total length of the message.
        len: usize,
        /// The limit in force.
        max: usize,
    },
}

/// What the scanner found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanItem {
    /// Forward the first `len` bytes untouched. `tag` is set when they begin a new message.
    Pass {
        /// Bytes to forward.
        len: usize,
        /// Type of the message that starts here, if one does.
        tag: Option<u8>,
    },
    /// A whole message the caller asked to see is at the front: `len` bytes including the tag.
    Whole {
        /// Message type byte.
        tag: u8,
        /// Total length including tag and length field.
        len: usize,
    },
    /// The first `head` bytes of a message of `len` bytes that was asked for by its head: the
    /// caller consumes some of them and hands the rest back with [`FrameScanner::pass_rest`].
    Head {
        /// Message type byte.
        tag: u8,
        /// Total length including tag and length field.
        len: usize,
        /// Bytes of it available at the front of the buffer.
        head: usize,
    },
    /// Nothing can be decided until more bytes arrive.
    NeedMore,
}

/// How the caller wants a message of a given type and total length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Forward it in pieces as it arrives.
    Pass,
    /// Hand it out whole (it must fit `max_whole`).
    Whole,
    /// Hand out its first `n` bytes (all of it, as `Whole`, when it is no longer).
    Head(usize),
}

/// Walks a stream of tagged messages; remembers how much of a passed-through message is still due.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    remaining: usize,
    /// Kept as u32 (a frame's length is an i32, so nothing is lost): the scanner sits in every
    /// idle session.
    max_whole: u32,
    max_message: u32,
}

impl FrameScanner {
    /// `max_whole` bounds messages handed out whole; `max_message` bounds any message.
    pub fn new(max_whole: usize, max_message: usize) -> FrameScanner {
        FrameScanner {
            remaining: 0,
            max_whole: u32::try_from(max_whole).unwrap_or(u32::MAX),
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
        }
    }

    /// True when the scanner sits at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Looks at the front of `buf`; `whole` says which message types must be seen complete.
    /// Inlined: it runs for every message relayed, and whether the compiler inlined it on its
    /// own changed from one build to the next (about 250 instructions per `-S` transaction).
    #[inline]
    pub fn next(&mut self, buf: &[u8], whole: impl Fn(u8) -> bool) -> Result<ScanItem, FrameError> {
        self.next_with(buf, |tag, _| {
            Ok(if whole(tag) { Want::Whole } else { Want::Pass })
        })
    }

    /// The rest of a message handed out as a [`ScanItem::Head`] passes in pieces from here:
    /// `remaining` is its length minus what the caller consumed.
    pub fn pass_rest(&mut self, remaining: usize) {
        self.remaining = remaining;
    }

    /// Looks at the front of `buf`; `want` decides from a message's type and total length how it
    /// is handed out, or refuses it: then not a byte of it is handed out. Inlined, as `next`.
    #[inline]
    pub fn next_with(
        &mut self,
        buf: &[u8],
        want: impl Fn(u8, usize) -> Result<Want, FrameError>,
    ) -> Result<ScanItem, FrameError> {
        if self.remaining > 0 {
            if buf.is_empty() {
                return Ok(ScanItem::NeedMore);
            }
            let len = self.remaining.min(buf.len());
            self.remaining -= len;
            return Ok(ScanItem::Pass { len, tag: None });
        }
        if buf.len() < 5 {
            return Ok(ScanItem::NeedMore);
        }
        let tag = buf[0];
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 {
            return Err(FrameError::BadLength { tag, len });
        }
        let total = len as usize + 1;
        if total > self.max_message as usize {
            return Err(FrameError::TooLarge {
                tag,
                len: total,
                max: self.max_message as usize,
            });
        }
        let wanted = match want(tag, total)? {
            Want::Head(n) if total > n => {
                if buf.len() < n {
                    return Ok(ScanItem::NeedMore);
                }
                return Ok(ScanItem::Head {
                    tag,
                    len: total,
                    head: n,
                });
            }
            Want::Head(_) => Want::Whole,
            other => other,
        };
        if wanted == Want::Whole {
            if total > self.max_whole as usize {
                return Err(FrameError::TooLarge {
                    tag,
                    len: total,
                    max: self.max_whole as usize,
                });
            }
            if buf.len() < total {
                return Ok(ScanItem::NeedMore);
            }
            return Ok(ScanItem::Whole { tag, len: total });
        }
        let len = total.min(buf.len());
        self.remaining = total - len;
        Ok(ScanItem::Pass { len, tag: Some(tag) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn large_messages_pass_in_pieces_and_wanted_ones_come_whole() {
        let mut stream = msg(b'D', &[7u8; 100]);
        stream.extend(msg(b'Z', b"I"));
        let mut s = FrameScanner::new(1024, usize::MAX);
        let wanted = |t| t == b'Z';
        // Only the first 50 bytes have arrived.
        assert_eq!(
            s.next(&stream[..50], wanted),
            Ok(ScanItem::Pass {
                len: 50,
                tag: Some(b'D')
            })
        );
        assert!(!s.at_boundary());
        let rest = &stream[50..];
        assert_eq!(
            s.next(&rest[..10], wanted),
            Ok(ScanItem::Pass { len: 10, tag: None })
        );
        let rest = &rest[10..];
        assert_eq!(s.next(rest, wanted), Ok(ScanItem::Pass { len: 45, tag: None }));
        let rest = &rest[45..];
        assert_eq!(s.next(&rest[..5], wanted), Ok(ScanItem::NeedMore));
        assert_eq!(s.next(rest, wanted), Ok(ScanItem::Whole { tag: b'Z', len: 6 }));
    }

    #[test]
    fn a_message_asked_for_by_its_head_hands_out_the_head_then_passes_the_rest() {
        let stream = msg(b'B', &[1u8; 100]);
        let mut s = FrameScanner::new(16, usize::MAX);
        let want = |t, _| Ok(if t == b'B' { Want::Head(20) } else { Want::Pass });
        assert_eq!(s.next_with(&stream[..10], want), Ok(ScanItem::NeedMore));
        assert_eq!(
            s.next_with(&stream, want),
            Ok(ScanItem::Head {
                tag: b'B',
                len: 105,
                head: 20
            })
        );
        s.pass_rest(105 - 12);
        assert_eq!(
            s.next_with(&stream[12..], want),
            Ok(ScanItem::Pass { len: 93, tag: None })
        );
        assert!(s.at_boundary());
        // A short one comes whole.
        let short = msg(b'B', &[1u8; 3]);
        assert_eq!(
            s.next_with(&short, want),
            Ok(ScanItem::Whole { tag: b'B', len: 8 })
        );
    }

    #[test]
    fn bad_lengths_are_errors_before_any_allocation() {
        let mut s = FrameScanner::new(16, 1 << 20);
        let bad = [b'Q', 0, 0, 0, 2];
        assert!(matches!(
            s.next(&bad, |_| false),
            Err(FrameError::BadLength { .. })
        ));
        let huge = [b'Q', 0x7f, 0, 0, 0];
        assert!(matches!(
            s.next(&huge, |_| false),
            Err(FrameError::TooLarge { .. })
        ));
        let big_whole = msg(b'E', &[1u8; 64]);
        assert!(matches!(
            s.next(&big_whole, |t| t == b'E'),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
