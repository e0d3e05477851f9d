//! `Shared`: what every task of one pooler sees — the config snapshot, the pools, the cancel
//! registry, the SCRAM verifier cache, the client count and the shutdown signal. Passed as an
//! `Arc`, never reached through a global.

use crate::auth::VerifierCache;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::pool::PoolRegistry;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

/// State shared by the listener and all sessions of one pooler.
pub struct Shared {
    /// The configuration in force (swapped whole on reload).
    pub config: ArcSwap<Config>,
    /// Pools by (database, user).
    pub pools: PoolRegistry,
    /// Cancel keys issued to clients.
    pub cancels: CancelRegistry,
    /// SCRAM verifiers derived from plaintext passwords.
    pub verifiers: VerifierCache,
    /// Random per-process key for mock SCRAM verifiers of unknown users.
    pub instance_secret: [u8; 32],
    clients: AtomicUsize,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Builds the shared state for a config.
    pub fn new(config: Config) -> Arc<Shared> {
        let (shutdown, _) = watch::channel(false);
        Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            pools: PoolRegistry::default(),
            cancels: CancelRegistry::default(),
            verifiers: VerifierCache::default(),
            instance_secret: rand::random(),
            clients: AtomicUsize::new(0),
            shutdown,
        })
    }

    /// Takes a client slot if fewer than `limit` are in use; the slot is held by the returned guard.
    pub fn try_admit_client(self: &Arc<Self>, limit: usize) -> Option<ClientSlot> {
        let mut current = self.clients.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match self.clients.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(ClientSlot { shared: self.clone() }),
                Err(now) => current = now,
            }
        }
    }

    /// Clients currently connected (admin console sessions excluded).
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Asks every task to stop.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// A receiver that turns true when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// One of max_client_conn's slots, released when the client's session ends.
pub struct ClientSlot {
    shared: Arc<Shared>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::AcqRel);
    }
}
