//! Spots client messages that may change who the session is (`SET ROLE`, `SET SESSION
//! AUTHORIZATION`, `set_config('role', ...)`, a fast-path function call): the server they ran
//! on is marked, and the release path resets its role and session authorization (or closes it)
//! before any other client gets it. The text is watched as it streams through, in pieces, with
//! no buffering: a message trips the watch when it contains `set` and, later, `role` or
//! `authorization`, in any case. A false alarm costs one reset off the client's path.

use crate::protocol::tags::frontend;

/// Words searched for; none of them has a proper prefix that is also its suffix, so a mismatch
/// simply starts over (at the current byte).
const FIRST: &[u8] = b"set";
const THEN: [&[u8]; 2] = [b"role", b"authorization"];

/// The watch over the client message now passing.
#[derive(Debug, Default)]
pub(super) struct IdentityWatch {
    /// The message now passing is one whose text can change the identity.
    armed: bool,
    /// `set` was seen in it.
    saw_set: bool,
    /// Bytes of `set` matched so far.
    first: u8,
    /// Bytes of each later word matched so far.
    then: [u8; 2],
}

/// Advances a match of `word` by one byte; true when the word is complete.
fn step(matched: &mut u8, word: &[u8], b: u8) -> bool {
    let b = b.to_ascii_lowercase();
    if word.get(*matched as usize) == Some(&b) {
        *matched += 1;
    } else {
        *matched = u8::from(word[0] == b);
    }
    if *matched as usize == word.len() {
        *matched = 0;
        return true;
    }
    false
}

impl IdentityWatch {
    /// A client message of type `tag` begins. Returns true when the message itself is reason
    /// enough (a FunctionCall may call set_config by its OID).
    pub(super) fn start(&mut self, tag: u8) -> bool {
        *self = IdentityWatch {
            armed: frontend::carries_sql(tag),
            ..Default::default()
        };
        tag == frontend::FUNCTION_CALL
    }

    /// More bytes of the message now passing; true when they complete a tripping sequence.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> bool {
        if !self.armed {
            return false;
        }
        for &b in bytes {
            if !self.saw_set {
                self.saw_set = step(&mut self.first, FIRST, b);
                continue;
            }
            for (m, word) in self.then.iter_mut().zip(THEN) {
                if step(m, word, b) {
                    self.armed = false;
                    return true;
                }
            }
        }
        false
    }
}

/// Feeds client bytes (`tag` set at a message's start) to the link's watch; a message that may
/// change the role or session authorization marks the server for a reset at release.
pub(super) fn watch_identity(
    watch: &mut IdentityWatch,
    server: &mut crate::server::ServerConn,
    tag: Option<u8>,
    bytes: &[u8],
) {
    let mut hit = tag.is_some_and(|t| watch.start(t));
    hit |= watch.feed(bytes);
    if hit {
        server.identity = crate::server::Identity::MaybeChanged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trips(tag: u8, pieces: &[&str]) -> bool {
        let mut w = IdentityWatch::default();
        let mut hit = w.start(tag);
        for p in pieces {
            hit |= w.feed(p.as_bytes());
        }
        hit
    }

    #[test]
    fn identity_changes_trip_the_watch_even_split_across_pieces() {
        assert!(trips(b'Q', &["SET ROLE x"]));
        assert!(trips(b'Q', &["set session authorization x"]));
        assert!(trips(
            b'Q',
            &["SELECT pg_catalog.set_con", "fig('ro", "le', 'x', false)"]
        ));
        assert!(trips(b'P', &["SeT RoLe x"]));
        assert!(trips(b'F', &[]));
        assert!(!trips(b'Q', &["SELECT role FROM user_roles"]));
        assert!(!trips(b'Q', &["SET search_path = a"]));
        assert!(!trips(b'E', &["set role"]));
        assert!(!trips(b'Q', &["ROLE then SET"]));
    }
}
