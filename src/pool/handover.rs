//! Idle servers crossing an upgrade (docs/upgrades.md). In the old process, a pool gives up its
//! clean idle plain servers; each keeps its slot until the new process has answered for it,
//! and goes back to the pool (cleaned) if the new process fails. In the new process, a pool
//! adopts a handed-over server into its idle queue when its configuration still fits it and
//! it has room under pool_size; otherwise the server is ended with a Terminate.

use super::{Disposition, Pool, PooledServer};
use crate::config::SslMode;
use crate::server::{Identity, ServerConn, ServerUse};
use crate::stream::PlainSocket;
use crate::upgrade::format::ServerState;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

/// An idle server on its way to the new process: out of the idle queue, its socket out of the
/// runtime, its slot still held.
#[derive(Debug)]
pub(crate) struct LeavingServer {
    server: PooledServer,
    socket: PlainSocket,
    pool: Arc<Pool>,
}

impl Pool {
    /// How many servers are in the idle queue.
    pub(crate) fn idle_len(&self) -> usize {
        self.state.lock().idle.len()
    }

    /// Takes the idle servers that can move to the new process out of the idle queue: clean
    /// (the idle queue holds only those), healthy, of the current generation, not past their
    /// lifetime. TLS servers stay (their session cannot leave the process); dead or outdated
    /// ones are closed, as vetting would.
    pub(crate) fn take_idle_to_move(self: &Arc<Self>) -> Vec<LeavingServer> {
        let idle: Vec<PooledServer> = self.state.lock().idle.drain(..).collect();
        let now = Instant::now();
        let mut leaving = Vec::new();
        let mut staying = Vec::new();
        for mut server in idle {
            let fit = server.conn.is_healthy_idle()
                && server.conn.identity == Identity::Login
                && server.conn.info.generation() >= self.generation()
                && server.expires_at.is_none_or(|t| now < t);
            if !fit {
                drop(server);
                continue;
            }
            match server.conn.take_socket() {
                Some(socket) => {
                    server.conn.info.set(ServerUse::Cleaning {
                        rolling_back_for: None,
                    });
                    leaving.push(LeavingServer {
                        server,
                        socket,
                        pool: self.clone(),
                    });
                }
                None => staying.push(server),
            }
        }
        if !staying.is_empty() {
            let mut st = self.state.lock();
            for s in staying {
                st.idle.push_back(s);
            }
        }
        leaving
    }

    /// Adopts a server the old process handed over into the idle queue (or straight to a
    /// waiting client): when the pool's configuration still fits it (the same server database
    /// and user, startup parameters and connect_query, its host one of the pool's hosts, TLS
    /// not required) and the pool has room under pool_size and its shared limits. Otherwise
    /// the server is ended with a Terminate and the reason returned.
    pub(crate) fn adopt_server(
        self: &Arc<Self>,
        state: &ServerState,
        socket: PlainSocket,
    ) -> Result<(), String> {
        if let Err(why) = self.fits(state) {
            crate::server::terminate(socket);
            return Err(why);
        }
        let permit = {
            let mut st = self.state.lock();
            self.try_take_slot(&mut st, false)
        };
        let Some(permit) = permit else {
            crate::server::terminate(socket);
            return Err(format!(
                "pool {} has no room (pool_size {}, or a shared limit)",
                self.key,
                self.settings().pool_size
            ));
        };
        let conn = ServerConn::import(state, socket, self.plans.current()).map_err(|e| e.to_string())?;
        // The login-time parameters, not the server's current ones (a client may have SET a
        // reported one): what a setting no client wants is reset to.
        if !state.pool_login_params.is_empty() {
            let mut welcome = self.welcome.lock();
            if welcome.is_none() {
                *welcome = Some(Arc::new(state.pool_login_params.iter().cloned().collect()));
            }
        }
        conn.info.set_generation(self.generation());
        self.state.lock().servers.insert(conn.id, conn.info.clone());
        let lifetime = self.settings().server_lifetime;
        // As for a server opened here: 75-100% of the lifetime, from when it was opened.
        let expires_at = (!lifetime.is_zero())
            .then(|| conn.created + lifetime.mul_f64(0.75 + rand::random::<f64>() * 0.25));
        let last_used = conn.last_used;
        let server = PooledServer {
            conn: Box::new(conn),
            expires_at,
            permit,
        };
        // Idle since it was last used in the old process (server_idle_timeout keeps counting).
        self.give_back(server, last_used);
        Ok(())
    }

    /// Why this pool's configuration does not fit a handed-over server, if it does not.
    fn fits(&self, state: &ServerState) -> Result<(), String> {
        let s = self.settings();
        let t = &s.target;
        let at_host = |h: &str, p: u16| h == state.host && p == state.port;
        let hosts_match = at_host(&t.host, t.port) || s.ha.hosts.iter().any(|h| at_host(&h.host, h.port));
        let startup: Vec<(String, String)> = t
            .startup
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        if !hosts_match {
            Err(format!(
                "{}:{} is not a host of pool {}",
                state.host, state.port, self.key
            ))
        } else if t.dbname != state.server_database || t.user != state.server_user {
            Err(format!(
                "pool {} now logs in to another database or as another user",
                self.key
            ))
        } else if startup != state.startup || t.startup.connect_query != state.connect_query {
            Err(format!(
                "pool {}'s startup parameters or connect_query changed",
                self.key
            ))
        } else if state.tcp && t.tls.mode >= SslMode::Require {
            Err(format!("pool {} requires TLS (server_tls_sslmode)", self.key))
        } else {
            Ok(())
        }
    }
}

impl LeavingServer {
    /// The server in the transfer format.
    pub(crate) fn state(&self) -> ServerState {
        let target = self.pool.settings().target.clone();
        let key = (self.pool.key.database.as_str(), self.pool.key.user.as_str());
        let tcp = matches!(self.socket, PlainSocket::Tcp(_));
        let mut state = self
            .server
            .conn
            .export(key, &target, tcp, |h| self.pool.plans.invalidated_at(h));
        if let Some(welcome) = self.pool.welcome_params() {
            state.pool_login_params = welcome.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        state
    }

    /// The socket's descriptor, to attach to the frame (SCM_RIGHTS duplicates it).
    pub(crate) fn raw_fd(&self) -> RawFd {
        match &self.socket {
            PlainSocket::Tcp(s) => s.as_fd().as_raw_fd(),
            PlainSocket::Unix(s) => s.as_fd().as_raw_fd(),
        }
    }

    /// The new process answered: it serves the server now, or ended it. This process closes
    /// its descriptor (no shutdown: the connection lives on there) and frees the slot.
    pub(crate) fn gone(self) {
        drop(self.socket);
        drop(self.server);
    }

    /// The new process failed before answering and is gone: the server comes back to its pool.
    /// That process may have used it meanwhile, so it is rolled back and reset (DISCARD ALL)
    /// off any client's path, and closed if that fails.
    pub(crate) fn keep(self) {
        let LeavingServer {
            mut server,
            socket,
            pool,
        } = self;
        if let Err(e) = server.conn.put_socket(socket) {
            tracing::warn!(pool = %pool.key, error = %e, "could not take a server back; closing it");
            return;
        }
        pool.release(server, Disposition::Discard { rollback: true });
    }
}
