//! Cancel requests: each client gets a BackendKeyData issued by sluice; a CancelRequest carrying
//! it is forwarded, over a new connection, to the server that client holds at that moment. Until
//! PostgreSQL has taken the request (it closes that connection once it signalled the backend),
//! the server is marked as having a cancel in flight, and the release path lends it to nobody.

use crate::client_info::ClientInfo;
use bytes::BytesMut;
use parking_lot::Mutex;
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The server a client is currently using, as far as cancelling goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Server host (or unix socket directory), shared with the server connection.
    pub host: Arc<str>,
    /// Server port.
    pub port: u16,
    /// The server's real backend pid.
    pub backend_pid: i32,
    /// The server's real secret key.
    pub backend_secret: i32,
    /// The server's shared record, where a cancel on its way is noted.
    pub server: Arc<crate::server::ServerInfo>,
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
        let client = self.keys.lock().get(&(process_id, secret_key)).cloned();
        // The in-flight mark is taken under the client's target lock: a release that clears the
        // target after this sees the mark and keeps the server from other clients.
        let Some((t, in_flight)) = client.and_then(|c| c.cancel_target_leaving()) else {
            tracing::debug!(process_id, "cancel request for no running query; ignored");
            return;
        };
        forward(t.host, t.port, t.backend_pid, t.backend_secret, in_flight).await;
    }
}

/// Sends a CancelRequest for a server's backend in the background (used by query_timeout);
/// `in_flight` marks the server until PostgreSQL has taken the request.
pub fn send_cancel(
    host: Arc<str>,
    port: u16,
    backend_pid: i32,
    backend_secret: i32,
    in_flight: crate::server::CancelInFlight,
) {
    tokio::spawn(forward(host, port, backend_pid, backend_secret, in_flight));
}

/// Longest a cancel request may take to reach PostgreSQL; the release path waits a little more
/// for it before it closes the server instead.
pub(crate) const FORWARD_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a connection to the server, sends the CancelRequest and waits until PostgreSQL closes
/// that connection (it has signalled the backend by then), within [`FORWARD_LIMIT`]; then the
/// server's in-flight mark goes.
async fn forward(
    host: Arc<str>,
    port: u16,
    backend_pid: i32,
    backend_secret: i32,
    in_flight: crate::server::CancelInFlight,
) {
    let sent = tokio::time::timeout(FORWARD_LIMIT, async {
        let mut stream = crate::server::open_socket(&host, port).await?;
        let mut out = BytesMut::new();
        frontend::cancel_request(backend_pid, backend_secret, &mut out);
        stream.write_all(&out).await?;
        // PostgreSQL sends nothing back: read until it hangs up.
        let mut sink = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
    drop(in_flight);
    match sent {
        Ok(Ok(())) => tracing::debug!(backend_pid, "cancel forwarded"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not forward cancel request"),
        Err(_) => tracing::warn!("forwarding cancel request timed out"),
    }
}
