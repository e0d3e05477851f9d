//! The registry of connected clients: every logged-in client by the cancel key sluice issued it
//! (BackendKeyData: a pid and a secret of sluice's own, never a server's). The console, the leak
//! detector and the exporter list clients from it, and a CancelRequest is matched to its client
//! (and so to the server that client holds) here. Admission's counts live beside it.

use super::admission::Admission;
use super::held::{CancelInFlight, HeldServer};
use super::info::ClientInfo;
use super::throttle::FailedLogins;
use parking_lot::Mutex;
use std::hash::BuildHasher;
use std::sync::Arc;

/// The cancel key sluice gave a client (BackendKeyData): a pid and a secret of its own, never
/// a server's.
pub(crate) type CancelKey = (i32, i32);

/// The clients by cancel key: a table of the records alone (8 bytes a slot, where a map from
/// key to record takes 16), each found by the key it holds.
#[derive(Default)]
struct Keys {
    table: hashbrown::HashTable<Arc<ClientInfo>>,
    hasher: std::hash::RandomState,
}

impl Keys {
    fn find(&self, key: CancelKey) -> Option<&Arc<ClientInfo>> {
        self.table
            .find(self.hasher.hash_one(key), |c| c.cancel_key() == Some(key))
    }

    /// Records `client` under `key` unless another client has it; true when recorded.
    fn insert_new(&mut self, key: CancelKey, client: &Arc<ClientInfo>) -> bool {
        let Keys { table, hasher } = self;
        let rehash = |c: &Arc<ClientInfo>| hasher.hash_one(c.cancel_key().unwrap_or_default());
        match table.entry(hasher.hash_one(key), |c| c.cancel_key() == Some(key), rehash) {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(e) => {
                client.set_cancel_key(key);
                e.insert(client.clone());
                true
            }
        }
    }

    fn remove(&mut self, key: CancelKey) {
        let hash = self.hasher.hash_one(key);
        if let Ok(e) = self.table.find_entry(hash, |c| c.cancel_key() == Some(key)) {
            e.remove();
        }
    }
}

/// Every logged-in client, by the cancel key sluice gave it: one table slot per client. Each
/// client's record knows the server it holds, if any. Also the counts admission keeps (logins in
/// progress, max_client_conn's slots, per-database and per-user clients) and failed logins.
#[derive(Default)]
pub struct ClientRegistry {
    keys: Mutex<Keys>,
    /// What admission counts: slots, logins in progress, the console's reserve.
    pub(super) admission: Admission,
    /// Failed logins per client address, which slow down that address's next failures.
    failed_logins: FailedLogins,
}

impl ClientRegistry {
    /// Issues a fresh random key for `client` (naming this instance's `peer_id`, 0: none) and
    /// records it there. Retired by [`ClientRegistry::retire`] when the client's registration
    /// ends.
    pub fn issue(&self, client: &Arc<ClientInfo>, peer_id: u16) -> CancelKey {
        let mut keys = self.keys.lock();
        loop {
            let key = super::peer_key::new_key(peer_id);
            if keys.insert_new(key, client) {
                return key;
            }
        }
    }

    /// Records `key` for `client`: a client handed over by an upgrade keeps the key it was
    /// given. False when another client has that key already.
    pub(crate) fn claim(&self, client: &Arc<ClientInfo>, key: CancelKey) -> bool {
        self.keys.lock().insert_new(key, client)
    }

    /// True when a logged-in client holds `key` (a cancel for any other key may belong to the
    /// other process during an upgrade).
    pub(crate) fn knows(&self, key: CancelKey) -> bool {
        self.keys.lock().find(key).is_some()
    }

    /// Forgets a key (its client left).
    pub fn retire(&self, key: CancelKey) {
        self.keys.lock().remove(key);
    }

    /// Every registered client, in no order.
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        self.keys.lock().table.iter().cloned().collect()
    }

    /// Calls `f` on every registered client (in no order), holding the registry briefly.
    pub fn for_each_client(&self, mut f: impl FnMut(&ClientInfo)) {
        for c in self.keys.lock().table.iter() {
            f(c);
        }
    }

    /// Where a cancel request carrying `key` goes: the server its client holds now, marked as
    /// having a cancel in flight until the returned guard drops. None for an unknown key or a
    /// client holding no server (PostgreSQL ignores bad cancel keys, and so does sluice).
    pub fn cancel_target(&self, key: CancelKey) -> Option<(HeldServer, CancelInFlight)> {
        let client = self.keys.lock().find(key).cloned()?;
        client.cancel_leaving()
    }

    /// Records a failed login from `addr`; returns how long to wait before telling the client.
    pub(crate) fn record_failed_login(&self, addr: std::net::IpAddr) -> std::time::Duration {
        self.failed_logins.record_failure(addr)
    }
}
