//! Cancel requests: each client gets a BackendKeyData issued by sluice; a CancelRequest carrying
//! it is forwarded, over a new connection, to the server that client holds at that moment.

use bytes::BytesMut;
use parking_lot::Mutex;
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The server a client is currently using, as far as cancelling goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// Server host (or unix socket directory).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// The server's real backend pid.
    pub backend_pid: i32,
    /// The server's real secret key.
    pub backend_secret: i32,
}

/// A client's cancel key and the server it holds, if any.
#[derive(Debug, Default)]
pub struct CancelSlot {
    target: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    /// Records the server the client now holds (None when it holds none).
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.target.lock() = target;
    }
}

/// All cancel keys issued and not yet retired.
#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<(i32, i32), Arc<CancelSlot>>>,
}

/// Removes a client's key from the registry when its session ends.
pub struct CancelKey {
    registry: Arc<crate::shared::Shared>,
    /// The pid sluice told the client.
    pub process_id: i32,
    /// The secret sluice told the client.
    pub secret_key: i32,
    /// Where cancels for this key go.
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry
            .cancels
            .keys
            .lock()
            .remove(&(self.process_id, self.secret_key));
    }
}

impl CancelRegistry {
    /// Issues a fresh random key for a new client.
    pub fn issue(shared: &Arc<crate::shared::Shared>) -> CancelKey {
        let slot = Arc::new(CancelSlot::default());
        let mut keys = shared.cancels.keys.lock();
        loop {
            let key: (i32, i32) = (rand::random::<i32>() & 0x7fff_ffff, rand::random());
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry(key) {
                e.insert(slot.clone());
                return CancelKey {
                    registry: shared.clone(),
                    process_id: key.0,
                    secret_key: key.1,
                    slot,
                };
            }
        }
    }

    /// Forwards a cancel for `key` to the server its client holds; unknown keys and clients
    /// holding no server are ignored, as PostgreSQL ignores bad cancel keys.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) {
        let target = {
            let keys = self.keys.lock();
            keys.get(&(process_id, secret_key))
                .and_then(|s| s.target.lock().clone())
        };
        let Some(t) = target else {
            tracing::debug!(process_id, "cancel request for no running query; ignored");
            return;
        };
        forward(t.host, t.port, t.backend_pid, t.backend_secret).await;
    }
}

/// Sends a CancelRequest for a server's backend in the background (used by query_timeout).
pub fn send_cancel(host: String, port: u16, backend_pid: i32, backend_secret: i32) {
    tokio::spawn(forward(host, port, backend_pid, backend_secret));
}

/// Opens a connection to the server and sends the CancelRequest, within 5 seconds.
async fn forward(host: String, port: u16, backend_pid: i32, backend_secret: i32) {
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
