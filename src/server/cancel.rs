//! Cancelling a query on a server: the record of a held server that the client registry keeps
//! (built here from the connection), and forwarding a CancelRequest to PostgreSQL over a new
//! connection — for a client's own request (matched to its server by the registry) or for
//! query_timeout. Until PostgreSQL has taken the request (it closes that connection once it
//! signalled the backend), the server is marked as having a cancel in flight, and the release
//! path lends it to nobody. With `peer_id` set, a request whose key another instance issued
//! goes to that instance instead (`[peers]`).

use super::ServerConn;
use crate::clients::{CancelInFlight, CancelKey, CancelRoute, ClientRegistry, HeldServer};
use crate::config::Config;
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

/// Longest a cancel request may take to reach PostgreSQL; the release path waits a little more
/// for it before it closes the server instead.
pub(crate) const FORWARD_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

impl ServerConn {
    /// This server as the record of the client holding it describes it.
    pub(crate) fn held(&self) -> HeldServer {
        HeldServer {
            id: self.id,
            backend_pid: self.backend_pid,
            backend_secret: self.backend_secret,
            cancels: self.info.cancels().clone(),
        }
    }
}

/// Handles a CancelRequest carrying `key`: forwarded to the server the client holds when the key
/// is this instance's, to the peer that issued it when `[peers]` names one. Unknown keys,
/// clients holding no server and requests for unknown peers are ignored, as PostgreSQL ignores
/// bad cancel keys.
pub(crate) async fn route_request(clients: &ClientRegistry, config: &Config, key: CancelKey) {
    match crate::clients::cancel_route(key, config.pooler.peer_id) {
        CancelRoute::Local(key) => forward_request(clients, key).await,
        CancelRoute::Peer { id, key } => match config.peer(id) {
            Some(peer) => {
                let sent = send_cancel(&peer.host, peer.port, key).await;
                log_sent(sent, "cancel forwarded to peer", id);
            }
            None => tracing::debug!(peer_id = id, "cancel request for an unknown peer; ignored"),
        },
        CancelRoute::Drop => {
            tracing::debug!("forwarded cancel request for another instance; not forwarded again")
        }
    }
}

/// Forwards a client's CancelRequest carrying `key` to the server that client holds; unknown
/// keys and clients holding no server are ignored, as PostgreSQL ignores bad cancel keys.
pub(crate) async fn forward_request(clients: &ClientRegistry, key: CancelKey) {
    // The in-flight mark is taken under the client's record lock: a release that clears the
    // held server after this sees the mark and keeps the server from other clients.
    let Some((t, in_flight)) = clients.cancel_target(key) else {
        tracing::debug!(process_id = key.0, "cancel request for no running query; ignored");
        return;
    };
    forward(t, in_flight).await;
}

/// Sends a CancelRequest for the query running on `server` in the background (query_timeout);
/// the server is marked until PostgreSQL has taken the request.
pub(crate) fn cancel_running_query(server: &ServerConn) {
    tokio::spawn(forward(server.held(), server.info.cancel_leaving()));
}

/// Opens a connection to the server, sends the CancelRequest and waits until PostgreSQL closes
/// that connection (it has signalled the backend by then), within [`FORWARD_LIMIT`]; then the
/// server's in-flight mark goes.
async fn forward(target: HeldServer, in_flight: CancelInFlight) {
    let backend_pid = target.backend_pid;
    let (host, port) = target.cancels.target();
    let sent = send_cancel(host, port, (backend_pid, target.backend_secret)).await;
    drop(in_flight);
    log_sent(sent, "cancel forwarded", backend_pid);
}

/// Sends a CancelRequest for `key` to `host:port` (PostgreSQL or a peer sluice) and waits until
/// the other side hangs up, within [`FORWARD_LIMIT`].
async fn send_cancel(
    host: &str,
    port: u16,
    key: CancelKey,
) -> Result<std::io::Result<()>, tokio::time::error::Elapsed> {
    tokio::time::timeout(FORWARD_LIMIT, async {
        let mut stream = super::open_socket(host, port).await?;
        let mut out = BytesMut::new();
        frontend::cancel_request(key.0, key.1, &mut out);
        stream.write_all(&out).await?;
        // Nothing comes back: read until the other side hangs up.
        let mut sink = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
        Ok(())
    })
    .await
}

/// Logs how sending a cancel request went; `to` is the backend pid or the peer id.
fn log_sent(sent: Result<std::io::Result<()>, tokio::time::error::Elapsed>, what: &str, to: impl Into<i64>) {
    let to = to.into();
    match sent {
        Ok(Ok(())) => tracing::debug!(to, "{what}"),
        Ok(Err(e)) => tracing::warn!(error = %e, to, "could not send cancel request"),
        Err(_) => tracing::warn!(to, "sending cancel request timed out"),
    }
}
