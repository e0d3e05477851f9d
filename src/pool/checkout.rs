//! Getting a server: an idle one (checked alive first), a new one when a slot is free, or a place
//! in the FIFO queue until one is released. Waiting is cancel-safe: a waiter that goes away takes
//! itself out of the queue and gives back anything it was handed.

use super::{Grant, Pool, PooledServer, SlotPermit, Waiter};
use crate::server::{self, ServerError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Why no server could be had.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// The wait limit passed with every slot busy.
    #[error("no server became free within {0:?}")]
    Timeout(Duration),
    /// Opening a new server failed.
    #[error(transparent)]
    Server(#[from] ServerError),
}

enum Step {
    Ready(PooledServer),
    Open(SlotPermit),
    Wait(WaitGuard),
}

/// A place in the waiter queue; removes itself when dropped.
struct WaitGuard {
    pool: Arc<Pool>,
    id: u64,
    rx: oneshot::Receiver<Grant>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        {
            let mut st = self.pool.state.lock();
            if let Some(pos) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(pos);
            }
        }
        // A grant may have arrived after we stopped listening: give it back, outside the lock.
        if let Ok(Grant::Server(server)) = self.rx.try_recv() {
            self.pool.give_back(*server);
        }
        // A Slot grant is dropped with the channel, which frees or passes on the slot.
    }
}

impl Pool {
    /// Gets a server for a client, waiting at most `wait_limit` for one to become free.
    pub async fn checkout(self: &Arc<Self>, wait_limit: Duration) -> Result<PooledServer, CheckoutError> {
        let deadline = tokio::time::Instant::now() + wait_limit;
        loop {
            match self.next_step() {
                Step::Ready(server) => {
                    if server.conn.is_healthy_idle() {
                        return Ok(server);
                    }
                    tracing::debug!(
                        server = server.conn.id,
                        "idle server closed or out of step; discarding"
                    );
                    drop(server);
                }
                Step::Open(permit) => return self.open(permit).await,
                Step::Wait(mut guard) => {
                    match tokio::time::timeout_at(deadline, &mut guard.rx).await {
                        Ok(Ok(Grant::Server(server))) => {
                            if server.conn.is_healthy_idle() {
                                return Ok(*server);
                            }
                            drop(server);
                        }
                        Ok(Ok(Grant::Slot(permit))) => return self.open(permit).await,
                        // The sender vanished without a grant: cannot happen while the pool lives; retry.
                        Ok(Err(_)) => {}
                        Err(_) => return Err(CheckoutError::Timeout(wait_limit)),
                    }
                }
            }
        }
    }

    fn next_step(self: &Arc<Self>) -> Step {
        let mut st = self.state.lock();
        if let Some(server) = st.idle.pop_back() {
            return Step::Ready(server);
        }
        if st.slots_used < self.settings.pool_size {
            st.slots_used += 1;
            return Step::Open(SlotPermit {
                pool: self.clone(),
                armed: true,
            });
        }
        let id = st.next_waiter_id;
        st.next_waiter_id += 1;
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(Waiter {
            id,
            since: Instant::now(),
            tx,
        });
        Step::Wait(WaitGuard {
            pool: self.clone(),
            id,
            rx,
        })
    }

    async fn open(self: &Arc<Self>, permit: SlotPermit) -> Result<PooledServer, CheckoutError> {
        let limit = self.settings.connect_timeout;
        let conn = match tokio::time::timeout(limit, server::connect(&self.settings.target)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::warn!(pool = ?self.key, error = %e, "server login failed");
                return Err(e.into());
            }
            Err(_) => return Err(ServerError::Timeout(limit).into()),
        };
        tracing::debug!(pool = ?self.key, server = conn.id, pid = conn.backend_pid, "server connection opened");
        self.remember_welcome(&conn);
        Ok(PooledServer {
            conn,
            _permit: permit,
        })
    }
}
