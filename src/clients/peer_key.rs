//! Cancel keys that name the instance that issued them. With `peer_id` set, the process id
//! sluice gives a client carries that id in bits 16..29, so any peer receiving the client's
//! CancelRequest (a load balancer sends it to whichever instance it likes) knows where to
//! forward it. Bit 30 marks a request one peer already forwarded: it is never forwarded again,
//! so two instances that disagree about an id cannot bounce a request between them. Bit 31
//! stays clear: clients see a positive process id, as from PostgreSQL.

use super::registry::CancelKey;

/// Set on a CancelRequest a peer forwarded.
const FORWARDED: i32 = 1 << 30;
/// Where the peer id starts in the process id.
const ID_SHIFT: u32 = 16;
/// The random low bits of a peered process id.
const RANDOM_BITS: i32 = (1 << ID_SHIFT) - 1;

/// A fresh random key for an instance with `peer_id` (0: peering off, 31 random bits).
pub(crate) fn new_key(peer_id: u16) -> CancelKey {
    let secret = rand::random();
    if peer_id == 0 {
        (rand::random::<i32>() & 0x7fff_ffff, secret)
    } else {
        (
            (i32::from(peer_id) << ID_SHIFT) | (rand::random::<i32>() & RANDOM_BITS),
            secret,
        )
    }
}

/// Where a CancelRequest received by the instance `own_id` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelRoute {
    /// One of this instance's clients (or peering is off): look the key up here.
    Local(CancelKey),
    /// Issued by peer `id`: send it `key` (the request marked as forwarded).
    Peer { id: u16, key: CancelKey },
    /// A forwarded request for another instance: dropped, never forwarded twice.
    Drop,
}

/// Decides where the request carrying `key` goes at the instance `own_id`.
pub(crate) fn route(key: CancelKey, own_id: u16) -> CancelRoute {
    let (pid, secret) = key;
    if own_id == 0 || pid < 0 {
        return CancelRoute::Local(key);
    }
    let forwarded = pid & FORWARDED != 0;
    let pid = pid & !FORWARDED;
    // Bits 16..29 after clearing 30 and with 31 clear: at most 14 bits, so the cast keeps them.
    let owner = (pid >> ID_SHIFT) as u16;
    if owner == own_id || owner == 0 {
        CancelRoute::Local((pid, secret))
    } else if forwarded {
        CancelRoute::Drop
    } else {
        CancelRoute::Peer {
            id: owner,
            key: (pid | FORWARDED, secret),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peered_key_routes_home_from_every_other_instance_and_only_once() {
        for id in [1u16, 2, 300, crate::config::MAX_PEER_ID] {
            for _ in 0..100 {
                let key = new_key(id);
                assert!(key.0 > 0, "process ids stay positive: {key:?}");
                assert_eq!(route(key, id), CancelRoute::Local(key));
                let other = if id == 1 { 2 } else { 1 };
                let CancelRoute::Peer { id: to, key: fwd } = route(key, other) else {
                    panic!("{key:?} at {other} must go to {id}");
                };
                assert_eq!(to, id);
                // The owner receives the forwarded request and finds the key it issued.
                assert_eq!(route(fwd, id), CancelRoute::Local(key));
                // A third instance receiving the forwarded request drops it.
                assert_eq!(route(fwd, 7777), CancelRoute::Drop);
            }
        }
    }

    #[test]
    fn without_peering_keys_are_looked_up_as_they_are() {
        let key = new_key(0);
        assert!(key.0 >= 0);
        assert_eq!(route(key, 0), CancelRoute::Local(key));
        assert_eq!(route((-5, 1), 3), CancelRoute::Local((-5, 1)));
    }
}
