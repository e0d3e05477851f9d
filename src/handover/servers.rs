//! Idle server connections in an upgrade (docs/upgrades.md, "What moves with a server"). Old
//! process: a pool's idle servers move once every client of that pool left here is on its way
//! to the new process (sent, not yet answered for); a client staying behind — TLS, LISTEN, a
//! long transaction, one not yet idle — keeps them, so it is not served by a new server per
//! transaction. All that remain move before `done`. New process: each is adopted by its pool,
//! or ended.

use crate::pool::LeavingServer;
use crate::shared::Shared;
use crate::stream::PlainSocket;
use crate::upgrade::format::ServerState;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

/// Servers sent and not yet answered for, by `seq`.
pub(super) type PendingServers = HashMap<u64, (LeavingServer, Instant)>;

/// The idle servers that may move now: of every pool whose clients here are all on their way
/// to the new process (`on_their_way`: their ids) (`all`: of every pool, at the end).
pub(super) fn movable(shared: &Arc<Shared>, all: bool, on_their_way: &HashSet<u64>) -> Vec<LeavingServer> {
    let pools: Vec<_> = shared
        .pools
        .all()
        .into_iter()
        .filter(|p| p.idle_len() > 0)
        .collect();
    if pools.is_empty() {
        return Vec::new();
    }
    let mut held: HashSet<(Arc<str>, Arc<str>)> = HashSet::new();
    if !all {
        shared.for_each_client(|c| {
            if !on_their_way.contains(&c.id) {
                held.insert((c.database().clone(), c.user().clone()));
            }
        });
    }
    pools
        .into_iter()
        .filter(|p| !held.contains(&(p.key.database.as_str().into(), p.key.user.as_str().into())))
        .flat_map(|p| p.take_idle_to_move())
        .collect()
}

/// New process: adopts a server the old process handed over into its pool, or ends it
/// (Terminate) and says why.
pub(super) fn adopt(shared: &Arc<Shared>, state: &ServerState, fd: OwnedFd) -> Result<(), String> {
    let socket = PlainSocket::from_fd(fd, state.tcp);
    match crate::session::handover::pool_of(shared, &state.database, &state.user) {
        Ok(pool) => pool.adopt_server(state, socket),
        Err(why) => {
            crate::server::terminate(socket);
            Err(why)
        }
    }
}
