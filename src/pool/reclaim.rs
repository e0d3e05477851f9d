//! Reclaim under pressure (`idle_transaction_reclaim_timeout`): while a client waits for a
//! server, the holder of the server idle in a transaction the longest, past the limit, is asked
//! to give it back (its session rolls the transaction back, releases the server and ends the
//! client with an error naming the key). Only a waiter ever asks, each for one server per
//! wait, so nothing is reclaimed while nobody waits, and no more servers than there are
//! waiters.

use super::{Pool, PoolState};
use crate::clients::{ClientInfo, Kill};
use crate::server::{ServerUse, TxState};
use std::sync::Arc;
use std::time::Instant;

/// The pool's servers lent and idle in a transaction: (since when, server id, holder).
fn idle_transactions(st: &PoolState) -> impl Iterator<Item = (Instant, u64, Arc<ClientInfo>)> + '_ {
    st.servers.values().filter_map(|info| match info.current() {
        ServerUse::Lent {
            holder,
            tx: TxState::IdleInTransaction,
            tx_since,
            ..
        } => Some((tx_since, info.id, holder)),
        _ => None,
    })
}

impl Pool {
    /// When a waiter should next look for a server to reclaim: when the oldest idle transaction
    /// not yet asked for passes the limit, or (none idle now) one limit from now, the earliest
    /// any server could pass it. None when reclaim is off.
    pub(super) fn reclaim_due(&self) -> Option<Instant> {
        let after = self.settings().shares.reclaim_after;
        if after.is_zero() {
            return None;
        }
        let now = Instant::now();
        let st = self.state.lock();
        let oldest = idle_transactions(&st)
            .filter(|(_, server, holder)| !st.reclaiming.contains(&(*server, holder.id)))
            .map(|(since, ..)| since)
            .min();
        Some(oldest.map_or(now + after, |since| (since + after).max(now)))
    }

    /// Asks the holder of the server idle in a transaction the longest (past the limit, not
    /// already asked) to give it back. True when one was asked.
    pub(super) fn reclaim_one(&self) -> bool {
        let after = self.settings().shares.reclaim_after;
        if after.is_zero() {
            return false;
        }
        let now = Instant::now();
        let mut st = self.state.lock();
        let mut idle_tx: Vec<(Instant, u64, Arc<ClientInfo>)> = idle_transactions(&st).collect();
        // Forget the servers whose holders have given them back (or moved on).
        st.reclaiming
            .retain(|(server, client)| idle_tx.iter().any(|(_, s, h)| s == server && h.id == *client));
        idle_tx.retain(|(since, server, holder)| {
            now.duration_since(*since) >= after && !st.reclaiming.contains(&(*server, holder.id))
        });
        let Some((since, server, holder)) = idle_tx.into_iter().min_by_key(|(since, ..)| *since) else {
            return false;
        };
        st.reclaiming.push((server, holder.id));
        let waiting = st.waiters.len();
        drop(st);
        tracing::warn!(
            pool = %self.key,
            client = %holder.describe(),
            server,
            idle_seconds = now.duration_since(since).as_secs_f64(),
            waiting,
            "idle_transaction_reclaim_timeout: taking the server back from a client idle in a transaction while others wait"
        );
        holder.kill_with(Kill::Reclaimed(after));
        true
    }
}
