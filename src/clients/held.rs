//! The server a client holds, as the client registry records it (once, in the client's record):
//! which server it is, for the console and the leak reports, and where a cancel request from the
//! client goes. server/ builds it from a connection; this layer never sees server types.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The server a client holds right now: enough to show it and to cancel a query on it. 24
/// bytes: what never changes for the server (where it is) lives in its shared [`CancelsInFlight`].
#[derive(Debug, Clone)]
pub struct HeldServer {
    /// The server's id (the console's `link` column, logs).
    pub id: u64,
    /// The server's real backend pid.
    pub backend_pid: i32,
    /// The server's real secret key, for cancel requests.
    pub backend_secret: i32,
    /// The server's count of cancel requests on their way, where a new one is noted; it also
    /// knows where the server is ([`CancelsInFlight::target`]).
    pub cancels: Arc<CancelsInFlight>,
}

/// How many cancel requests for one server are on their way, and a wake-up for whoever waits for
/// them to arrive: while one is, the server goes to no other client (it would cancel that
/// client's query). Each server has one; the client holding the server reaches it through
/// [`HeldServer::cancels`].
#[derive(Debug)]
pub struct CancelsInFlight {
    count: AtomicUsize,
    done: tokio::sync::Notify,
    /// Server host (or unix socket directory) and port, where a cancel request is sent.
    target: (Arc<str>, u16),
}

/// One cancel request on its way to a server's backend; dropping it (the request reached
/// PostgreSQL, or sending it failed) lets the server be released to other clients again.
#[derive(Debug)]
pub struct CancelInFlight(Arc<CancelsInFlight>);

impl Drop for CancelInFlight {
    fn drop(&mut self) {
        let c = &self.0;
        if c.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            c.done.notify_waiters();
        }
    }
}

impl CancelsInFlight {
    /// The count for a server at `target` (host or unix socket directory, port).
    pub fn new(target: (Arc<str>, u16)) -> CancelsInFlight {
        CancelsInFlight {
            count: AtomicUsize::new(0),
            done: tokio::sync::Notify::new(),
            target,
        }
    }

    /// Where the server is: host (or unix socket directory) and port.
    pub fn target(&self) -> (&str, u16) {
        (&self.target.0, self.target.1)
    }

    /// Notes a cancel request leaving now; it is in flight until the returned guard is dropped.
    pub fn leaving(self: &Arc<Self>) -> CancelInFlight {
        self.count.fetch_add(1, Ordering::AcqRel);
        CancelInFlight(self.clone())
    }

    /// True while a cancel request is on its way.
    #[inline]
    pub fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Waits until no cancel request is on its way; false if `limit` passed first.
    pub async fn arrived(&self, limit: std::time::Duration) -> bool {
        let wait = async {
            loop {
                let done = self.done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if !self.any() {
                    return;
                }
                done.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}
