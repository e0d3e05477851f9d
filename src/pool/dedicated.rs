//! A server connection a pool opens for one job of its own (the LISTEN connection of
//! `notify/`): outside the pool's slots (pool_size), but counted against the database's and the
//! user's limit groups (max_db_connections, max_user_connections) for as long as it is open.

use super::{CheckoutError, Pool};
use crate::protocol::PgError;
use crate::server::ServerConn;
use std::sync::Arc;

/// A dedicated server connection and the limit-group units it holds (given back on drop).
#[derive(Debug)]
pub struct DedicatedServer {
    /// The connection (logged in, idle).
    pub conn: Box<ServerConn>,
    pool: Arc<Pool>,
}

impl Drop for DedicatedServer {
    fn drop(&mut self) {
        for g in &self.pool.groups {
            g.release();
        }
    }
}

impl Pool {
    /// Opens a dedicated connection: takes a unit of each limit group (closing an idle server of
    /// a sibling pool when a group is full, as a checkout would), then logs in like a pool
    /// server. Fails at once, with the reason, when there is no room or the login fails; the
    /// caller retries with its own back-off.
    pub async fn open_dedicated(self: &Arc<Self>) -> Result<DedicatedServer, PgError> {
        let [db, user] = &self.groups;
        let mut taken = false;
        for _ in 0..2 {
            if db.try_acquire() {
                if user.try_acquire() {
                    taken = true;
                    break;
                }
                db.release();
            }
            if !self.groups.iter().any(|g| g.evict_idle_elsewhere(self)) {
                break;
            }
        }
        if !taken {
            return Err(PgError::error(
                crate::protocol::sqlstate::TOO_MANY_CONNECTIONS,
                "no room for the pool's listening connection (max_db_connections or max_user_connections reached)",
            ));
        }
        // From here the units are held by the guard, whatever happens.
        let limit = self.settings().connect_timeout;
        let opened = if self.settings().ha.active() {
            Box::pin(self.connect_ha(None)).await
        } else {
            self.connect_single(None).await
        };
        let conn = match opened {
            Ok(conn) => conn,
            Err(CheckoutError::Login(e)) => {
                self.release_groups();
                return Err(e);
            }
            Err(e @ CheckoutError::Timeout(_)) => {
                self.release_groups();
                return Err(PgError::error(
                    crate::protocol::sqlstate::CONNECTION_FAILURE,
                    format!("listening connection not opened within {limit:?}: {e}"),
                ));
            }
        };
        self.stats.metrics.connects.increment(1);
        Ok(DedicatedServer {
            conn: Box::new(conn),
            pool: self.clone(),
        })
    }

    fn release_groups(&self) {
        for g in &self.groups {
            g.release();
        }
    }
}
