//! A server connection crossing an upgrade (docs/upgrades.md): its socket taken out of this
//! process's runtime, its state in the transfer format, and the connection rebuilt from both
//! in the new process, with the same backend key, reported parameters, applied settings,
//! prepared statements and open time.

use super::{ServerConn, ServerInfo};
use crate::stream::{PlainSocket, ReadHalf, WriteHalf};
use crate::upgrade::format::{ServerState, ServerStatementState};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Terminate ('X', length 4): what a client says before it closes.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

impl ServerConn {
    /// Takes the socket out of the runtime, to pass it to the new process (nothing is shut
    /// down). None for a TLS connection (its session cannot leave the process), which keeps
    /// its socket.
    pub(crate) fn take_socket(&mut self) -> Option<PlainSocket> {
        let read = std::mem::replace(&mut self.reader, ReadHalf::Closed);
        let write = std::mem::replace(&mut self.writer, WriteHalf::Closed);
        match PlainSocket::take(read, write) {
            Ok(socket) => Some(socket),
            Err((read, write)) => {
                (self.reader, self.writer) = (read, write);
                None
            }
        }
    }

    /// Puts a socket taken by [`ServerConn::take_socket`] back (the hand-over failed).
    pub(crate) fn put_socket(&mut self, socket: PlainSocket) -> std::io::Result<()> {
        (self.reader, self.writer) = socket.into_split()?;
        self.home = crate::workers::current();
        Ok(())
    }

    /// The connection in the transfer format, as a server of pool (`database`, `user`).
    /// `invalidated_at` is the pool's record of refused plans (its statements prepared before
    /// one travel as stale); `tcp` says what the socket is.
    pub(crate) fn export(
        &self,
        (database, user): (&str, &str),
        target: &super::ServerTarget,
        tcp: bool,
        invalidated_at: impl Fn(u128) -> Option<u64>,
    ) -> ServerState {
        let statements = self
            .statements
            .export(invalidated_at)
            .into_iter()
            .map(|(hash, shape, stale)| ServerStatementState {
                hash: format!("{hash:032x}"),
                shape,
                stale,
            })
            .collect();
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let opened_unix_ms = self
            .info
            .opened_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        ServerState {
            database: database.to_string(),
            user: user.to_string(),
            server_database: target.dbname.clone(),
            server_user: target.user.clone(),
            host: self.target_addr.0.to_string(),
            port: self.target_addr.1,
            tcp,
            startup: target
                .startup
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            connect_query: target.startup.connect_query.clone(),
            backend_pid: self.backend_pid,
            backend_secret: self.backend_secret,
            params: pairs(&self.params),
            applied: pairs(&self.applied),
            params_fingerprint: self.params_fingerprint,
            statements,
            opened_unix_ms,
            age_ms: self.created.elapsed().as_millis() as u64,
            idle_ms: self.last_used.elapsed().as_millis() as u64,
            read_only_refused: self.info.read_only_refused(),
            pool_login_params: Vec::new(),
        }
    }

    /// A connection handed over by the old process, on `socket`, its statements recorded as
    /// prepared at plan epoch `epoch` of this process's pool.
    pub(crate) fn import(
        state: &ServerState,
        socket: PlainSocket,
        epoch: u64,
    ) -> std::io::Result<ServerConn> {
        let (reader, writer) = socket.into_split()?;
        let addr: (Arc<str>, u16) = (state.host.as_str().into(), state.port);
        let mut conn = ServerConn::new(reader, writer, addr.clone());
        let now = Instant::now();
        let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
        conn.created = ago(state.age_ms);
        conn.last_used = ago(state.idle_ms);
        let wall = UNIX_EPOCH + Duration::from_millis(state.opened_unix_ms);
        let info = ServerInfo::new(conn.id, addr).opened_since(conn.created, wall.min(SystemTime::now()));
        info.set_backend_pid(state.backend_pid);
        if state.read_only_refused {
            info.note_read_only_refusal();
        }
        conn.info = Arc::new(info);
        conn.backend_pid = state.backend_pid;
        conn.backend_secret = state.backend_secret;
        conn.params = state.params.iter().cloned().collect();
        conn.applied = state.applied.iter().cloned().collect();
        conn.params_fingerprint = state.params_fingerprint;
        for s in &state.statements {
            let Ok(hash) = u128::from_str_radix(&s.hash, 16) else {
                return Err(std::io::Error::other(format!(
                    "statement hash {:?} unreadable",
                    s.hash
                )));
            };
            conn.statements.import(hash, epoch, s.shape, s.stale);
        }
        conn.info.set_prepared(conn.statements.len());
        Ok(conn)
    }
}

/// Ends a server connection handed over but not adopted: Terminate, then close (best effort;
/// the socket is non-blocking and an idle server's send buffer has room for 5 bytes).
pub(crate) fn terminate(socket: PlainSocket) {
    use std::io::Write;
    let _ = match socket {
        PlainSocket::Tcp(mut s) => s.write(&TERMINATE),
        PlainSocket::Unix(mut s) => s.write(&TERMINATE),
    };
}
