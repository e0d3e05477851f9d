//! The prepared statements one server connection holds on behalf of all clients (transaction
//! mode): named by a hash of their text, so clients that prepare the same query share one, and
//! kept in an LRU bounded by `max_prepared_statements`.

use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Prefix of every server-side statement name sluice creates.
pub(crate) const SERVER_NAME_PREFIX: &str = "sluice_";

/// A statement as a client prepared it: what the server needs to prepare it again anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatementDef {
    /// Hash of the query text and parameter types; the server-side name derives from it.
    pub hash: u128,
    /// The Parse body after the statement name: query text, NUL, parameter count and type OIDs.
    pub body: bytes::Bytes,
}

impl StatementDef {
    /// Defines a statement from the part of a Parse message after its name (copied, so it never
    /// pins the buffer the message arrived in).
    pub(crate) fn from_parse_body(body: &[u8]) -> StatementDef {
        let digest = Sha256::digest(body);
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        StatementDef {
            hash: u128::from_be_bytes(first),
            body: bytes::Bytes::copy_from_slice(body),
        }
    }
}

/// Bytes of a server-side statement name: the prefix and 32 hex digits.
const SERVER_NAME_LEN: usize = SERVER_NAME_PREFIX.len() + 32;

/// A server-side statement name, built on the stack (one is written per Bind and Describe of a
/// prepared statement: no allocation, no formatting machinery).
#[derive(Clone, Copy)]
pub(crate) struct ServerName([u8; SERVER_NAME_LEN]);

impl ServerName {
    /// The name's bytes (ASCII).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Display for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Always ASCII: the prefix and hex digits.
        f.write_str(std::str::from_utf8(&self.0).map_err(|_| std::fmt::Error)?)
    }
}

/// The name under which a statement with this hash lives on servers (39 bytes, under
/// PostgreSQL's 63-byte identifier limit): the prefix, then the hash in 32 lowercase hex digits.
pub(crate) fn server_name(hash: u128) -> ServerName {
    let mut name = [0u8; SERVER_NAME_LEN];
    let (prefix, digits) = name.split_at_mut(SERVER_NAME_PREFIX.len());
    prefix.copy_from_slice(SERVER_NAME_PREFIX.as_bytes());
    for (eight, word) in digits.chunks_exact_mut(8).zip(0..4u32) {
        eight.copy_from_slice(&hex8((hash >> (96 - 32 * word)) as u32));
    }
    ServerName(name)
}

/// `v` in 8 lowercase hex digits, most significant first, all eight at once in one u64.
fn hex8(v: u32) -> [u8; 8] {
    // One nibble per byte, the most significant in the highest byte.
    let mut s = u64::from(v);
    s = (s | (s << 16)) & 0x0000_ffff_0000_ffff;
    s = (s | (s << 8)) & 0x00ff_00ff_00ff_00ff;
    s = (s | (s << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // '0' + n, and 'a' - '0' - 10 = 39 more where n > 9 (n + 6 carries into bit 4).
    let letters = ((s + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (s + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

/// What a server has of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Prepared and usable.
    Ready,
    /// Prepared before its plan was found unusable (the result type changed): close it and
    /// prepare it again before use.
    Stale,
    /// Not prepared.
    Missing,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_used: u64,
    /// The pool's plan epoch when it was prepared.
    epoch: u64,
    /// A hash of its row description, once a Describe of it on this server was seen.
    shape: Option<u64>,
    /// Handed over by an upgrade as prepared before its plan was found unusable (this
    /// process's plan epochs do not know it).
    stale: bool,
}

/// The statements one server holds, with their last use for LRU eviction.
#[derive(Debug, Default)]
pub struct ServerStatements {
    /// By the text's hash; randomly seeded all the same, bounded by max_prepared_statements
    /// (beyond it only while one batch uses them all).
    entries: HashMap<u128, Entry, foldhash::fast::RandomState>,
    clock: u64,
    /// Uses at or after this tick belong to the batch in flight (since the last Sync), whose
    /// statements must not be closed under it.
    batch_start: u64,
}

impl ServerStatements {
    /// How many statements the server holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the server holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the server has of `hash`, given the epoch since which its plans are good (None:
    /// never invalidated); a hit counts as a use.
    pub fn touch(&mut self, hash: u128, good_since: Option<u64>) -> Held {
        self.clock += 1;
        match self.entries.get_mut(&hash) {
            Some(e) => {
                e.last_used = self.clock;
                if e.stale || good_since.is_some_and(|g| e.epoch < g) {
                    Held::Stale
                } else {
                    Held::Ready
                }
            }
            None => Held::Missing,
        }
    }

    /// Records that the server now holds `hash`, prepared at plan epoch `epoch`.
    pub fn insert(&mut self, hash: u128, epoch: u64) {
        self.clock += 1;
        self.entries.insert(
            hash,
            Entry {
                last_used: self.clock,
                epoch,
                shape: None,
                stale: false,
            },
        );
    }

    /// Each statement as (hash, row description hash, stale) for an upgrade's hand-over;
    /// `invalidated_at` is the pool's record of refused plans.
    pub(crate) fn export(
        &self,
        invalidated_at: impl Fn(u128) -> Option<u64>,
    ) -> Vec<(u128, Option<u64>, bool)> {
        self.entries
            .iter()
            .map(|(hash, e)| {
                let stale = e.stale || invalidated_at(*hash).is_some_and(|g| e.epoch < g);
                (*hash, e.shape, stale)
            })
            .collect()
    }

    /// Records a statement a server handed over by an upgrade holds (prepared at `epoch` of
    /// this process's pool, or stale).
    pub(crate) fn import(&mut self, hash: u128, epoch: u64, shape: Option<u64>, stale: bool) {
        self.clock += 1;
        self.entries.insert(
            hash,
            Entry {
                last_used: self.clock,
                epoch,
                shape,
                stale,
            },
        );
    }

    /// The row description hash of the server's copy of `hash`, when known.
    pub fn shape(&self, hash: u128) -> Option<u64> {
        self.entries.get(&hash).and_then(|e| e.shape)
    }

    /// Records the row description hash of the server's copy of `hash`.
    pub fn set_shape(&mut self, hash: u128, shape: u64) {
        if let Some(e) = self.entries.get_mut(&hash) {
            e.shape = Some(shape);
        }
    }

    /// Records that the server no longer holds `hash`; returns the epoch it was prepared at.
    pub fn remove(&mut self, hash: u128) -> Option<u64> {
        self.entries.remove(&hash).map(|e| e.epoch)
    }

    /// True when the batch in flight (since the last Sync) used `hash`: closing it now could
    /// destroy a portal that batch still needs.
    pub fn used_by_batch(&self, hash: u128) -> bool {
        self.entries
            .get(&hash)
            .is_some_and(|e| e.last_used >= self.batch_start)
    }

    /// A new batch begins (a Sync was sent): statements of earlier batches may be evicted.
    pub fn new_batch(&mut self) {
        self.batch_start = self.clock + 1;
    }

    /// The least recently used statement to close so that one more fits in `capacity`, if the
    /// server is full. Statements used by the batch in flight are never chosen (the cache may
    /// then exceed its capacity until the batch ends).
    pub fn victim(&self, capacity: usize) -> Option<u128> {
        if self.entries.len() < capacity.max(1) {
            return None;
        }
        self.entries
            .iter()
            .filter(|(_, e)| e.last_used < self.batch_start)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(h, _)| *h)
    }

    /// The server dropped every statement (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Most statements remembered as invalidated per pool (the oldest are forgotten beyond it).
const MAX_INVALIDATED: usize = 10_000;

/// Statements whose plans PostgreSQL refused after a schema change ("cached plan must not
/// change result type"), shared by a pool's sessions. Each invalidation moves the pool's plan
/// epoch: servers prepared a statement before its invalidation epoch must prepare it again, and
/// clients that prepared it before then are told once, as PostgreSQL would tell them.
#[derive(Debug, Default)]
pub struct PlanInvalidations {
    epoch: std::sync::atomic::AtomicU64,
    any: std::sync::atomic::AtomicBool,
    invalidated: parking_lot::Mutex<HashMap<u128, u64>>,
}

impl PlanInvalidations {
    /// The current plan epoch (recorded with every Parse).
    pub fn current(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The epoch at which `hash` was last invalidated (plans from before it are unusable).
    pub fn invalidated_at(&self, hash: u128) -> Option<u64> {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.invalidated.lock().get(&hash).copied()
    }

    /// PostgreSQL refused `hash`'s plan: returns the new epoch.
    pub fn invalidate(&self, hash: u128) -> u64 {
        let mut map = self.invalidated.lock();
        let epoch = self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        if map.len() >= MAX_INVALIDATED
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(h, _)| *h)
        {
            map.remove(&oldest);
        }
        map.insert(hash, epoch);
        self.any.store(true, std::sync::atomic::Ordering::Release);
        epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_and_types_give_the_same_name_and_others_differ() {
        let a = StatementDef::from_parse_body(b"select $1\0\0\x01\0\0\0\x17");
        let b = StatementDef::from_parse_body(b"select $1\0\0\x01\0\0\0\x17");
        let c = StatementDef::from_parse_body(b"select $1\0\0\x01\0\0\0\x14");
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
        assert_eq!(server_name(a.hash).as_bytes().len(), 39);
    }

    #[test]
    fn the_server_name_is_the_prefix_and_the_hash_in_lowercase_hex() {
        let mut hashes = vec![
            0,
            1,
            0xdead_beef,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ];
        // Every nibble value in every position, and hashes of real statement texts.
        hashes.extend((0..16u128).map(|n| n * 0x1111_1111_1111_1111_1111_1111_1111_1111));
        hashes.extend((0..200).map(|i| StatementDef::from_parse_body(format!("select {i}").as_bytes()).hash));
        for hash in hashes {
            let name = server_name(hash);
            assert_eq!(name.to_string(), format!("{SERVER_NAME_PREFIX}{hash:032x}"));
            assert_eq!(name.as_bytes(), name.to_string().as_bytes());
        }
    }

    #[test]
    fn the_least_recently_used_outside_the_batch_is_evicted() {
        let mut s = ServerStatements::default();
        s.insert(1, 0);
        s.insert(2, 0);
        s.new_batch();
        assert_eq!(s.victim(3), None);
        assert_eq!(s.touch(1, None), Held::Ready);
        // 1 is in use by this batch: 2 goes even though 1 is older by insertion.
        assert_eq!(s.victim(2), Some(2));
        s.touch(2, None);
        // Both pinned by the batch: nothing may go.
        assert_eq!(s.victim(2), None);
        s.new_batch();
        assert_eq!(s.victim(2), Some(1));
        assert_eq!(s.touch(3, None), Held::Missing);
    }

    #[test]
    fn a_handed_over_stale_copy_stays_stale_until_prepared_again() {
        let plans = PlanInvalidations::default();
        let mut old = ServerStatements::default();
        old.insert(7, plans.current());
        old.insert(8, plans.current());
        old.set_shape(8, 99);
        plans.invalidate(7);
        let mut moved = old.export(|h| plans.invalidated_at(h));
        moved.sort();
        assert_eq!(moved, vec![(7, None, true), (8, Some(99), false)]);
        // The new process's plans know nothing of the invalidation.
        let fresh = PlanInvalidations::default();
        let mut new = ServerStatements::default();
        for (hash, shape, stale) in moved {
            new.import(hash, fresh.current(), shape, stale);
        }
        assert_eq!(new.touch(7, fresh.invalidated_at(7)), Held::Stale);
        assert_eq!(new.touch(8, fresh.invalidated_at(8)), Held::Ready);
        assert_eq!(new.shape(8), Some(99));
        new.insert(7, fresh.current());
        assert_eq!(new.touch(7, None), Held::Ready);
    }

    #[test]
    fn statements_prepared_before_an_invalidation_are_stale() {
        let plans = PlanInvalidations::default();
        let mut s = ServerStatements::default();
        s.insert(7, plans.current());
        s.insert(8, plans.current());
        assert_eq!(plans.invalidated_at(7), None);
        let e = plans.invalidate(7);
        assert_eq!(plans.invalidated_at(7), Some(e));
        assert_eq!(s.touch(7, plans.invalidated_at(7)), Held::Stale);
        assert_eq!(s.touch(8, plans.invalidated_at(8)), Held::Ready);
        s.insert(7, plans.current());
        assert_eq!(s.touch(7, plans.invalidated_at(7)), Held::Ready);
    }
}
