//! Cancel requests: each client gets a BackendKeyData issued by sluice; a CancelRequest carrying
//! it is forwarded, over a new connection, to the server that client holds at that moment.

use crate::client_info::ClientInfo;
use bytes::BytesMut;
use parking_lot::Mutex;
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The server a client is currently using, as far as cancelling goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// Server host (or unix socket directory), shared with the server connection.
    pub host: Arc<str>,
    /// Server port.
    pub port: u16,
    /// The server's real backend pid.
    pub backend_pid: i32,
    /// The server's real secret key.
    pub backend_secret: i32,
}

/// The cancel key sluice gave a client (BackendKeyData): a pid and a secret of its own, never
/// a server's.
pub type CancelKey = (i32, i32);

/// Every logged-in client, by the cancel key sluice gave it (the registry the console lists
/// clients from, too): one map entry per client. Each client knows the server it holds, if any.
#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<CancelKey, Arc<ClientInfo>>>,
}

impl CancelRegistry {
    /// Issues a fresh random key for `client` and records it there. Retired by
    /// [`CancelRegistry::retire`] when the client's registration ends.
    pub fn issue(&self, client: &Arc<ClientInfo>) -> CancelKey {
        let mut keys = self.keys.lock();
        loop {
            let key: CancelKey = (rand::random::<i32>() & 0x7fff_ffff, rand::random());
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry(key) {
                e.insert(client.clone());
                client.set_cancel_key(key);
                return key;
            }
        }
    }

    /// Forgets a key (its client left).
    pub fn retire(&self, key: CancelKey) {
        self.keys.lock().remove(&key);
    }

    /// Every registered client, in no order.
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        self.keys.lock().values().cloned().collect()
    }

    /// Calls `f` on every registered client (in no order), holding the registry briefly.
    pub fn for_each_client(&self, mut f: impl FnMut(&ClientInfo)) {
        for c in self.keys.lock().values() {
            f(c);
        }
    }

    /// Forwards a cancel for `key` to the server its client holds; unknown keys and clients
    /// holding no server are ignored, as PostgreSQL ignores bad cancel keys.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) {
        let target = {
            let keys = self.keys.lock();
            keys.get(&(process_id, secret_key))
                .and_then(|c| c.cancel_target())
        };
        let Some(t) = target else {
            tracing::debug!(process_id, "cancel request for no running query; ignored");
            return;
        };
        forward(t.host, t.port, t.backend_pid, t.backend_secret).await;
    }
}

/// Sends a CancelRequest for a server's backend in the background (used by query_timeout).
pub fn send_cancel(host: Arc<str>, port: u16, backend_pid: i32, backend_secret: i32) {
    tokio::spawn(forward(host, port, backend_pid, backend_secret));
}

/// Opens a connection to the server and sends the CancelRequest, within 5 seconds.
async fn forward(host: Arc<str>, port: u16, backend_pid: i32, backend_secret: i32) {
    let limit = std::time::Duration::from_secs(5);
    let sent = tokio::time::timeout(limit, async {
        let mut stream = crate::server::open_socket(&host, port).await?;
        let mut out = BytesMut::new();
        frontend::cancel_request(backend_pid, backend_secret, &mut out);
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await;
    match sent {
        Ok(Ok(())) => tracing::debug!(backend_pid, "cancel forwarded"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not forward cancel request"),
        Err(_) => tracing::warn!("forwarding cancel request timed out"),
    }
}
