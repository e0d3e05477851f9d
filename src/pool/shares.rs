//! Fair shares of a pool's servers between groups of clients (`pool_share_key`,
//! `max_pool_share`): while clients of more than one group hold or wait for servers, no group
//! takes more than its cap, and a released server goes to the oldest waiter of a group under
//! its cap (FIFO within a group). With shares off, or a single group present, the oldest waiter
//! gets it, as always. Groups are counted from the pool's own state when a decision is made
//! (who holds each lent server, who waits), plus the groups that released a server within
//! `SHARE_MEMORY` (see [`Recent`]: an application between two short transactions is still
//! there); the tally is only built when a release meets waiters or a checkout finds the pool
//! past the cap, so an uncontended checkout pays nothing. At most `MAX_SHARE_GROUPS` groups per
//! pool are told apart; clients of further groups share one overflow group.

use super::{Grant, Pool, PoolSettings, PoolState, PooledServer, Waiter};
use crate::clients::{ClientInfo, PeerAddr};
use crate::config::{PoolerConfig, ShareKey};
use crate::server::{ServerUse, TxState};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most groups one pool tells apart (SHOW POOL_SHARES rows and metric series per pool); clients
/// of any further group are counted in the overflow group.
pub const MAX_SHARE_GROUPS: usize = 32;

/// The group clients beyond `MAX_SHARE_GROUPS` share (the name the metrics use for names past
/// their cap, too).
pub const OVERFLOW_GROUP: &str = crate::name_cap::OTHER;

/// How long a group that released a server still counts as present for the share decision.
///
/// "Another group holds or waits for a server" is true of an application running short
/// transactions only while one is in flight: between two of them (its client reading the
/// answer, thinking, sending the next query) it holds nothing and waits for nothing, and a
/// release at that moment would otherwise let a leaker past its cap, for good (a leaker keeps
/// what it takes). Which of those moments a release meets depends on thread scheduling (with
/// `runtime = "per-core"` it happened often enough to fail tests/fair_shares.rs), so the rule
/// counts a group as present for this long after its last release. One second is far longer
/// than the gap between the transactions of an application that keeps using the pool, even on
/// a loaded machine (micro- to milliseconds), and short against `query_wait_timeout` (120 s by
/// default): a group alone again gets the whole pool within a second of the others leaving
/// (waiters look again every `SHARE_MEMORY`, see `Pool::wait`).
pub(super) const SHARE_MEMORY: Duration = Duration::from_secs(1);

/// The groups of one pool that released a server within [`SHARE_MEMORY`], with when they last
/// did. Bounded like the tally: at most `MAX_SHARE_GROUPS` named groups plus the overflow group;
/// entries older than `SHARE_MEMORY` are dropped as others are noted. Kept in the pool's state
/// (under its lock) and only written while shares are on.
#[derive(Debug, Default)]
pub(super) struct Recent {
    groups: Vec<(String, Instant)>,
}

impl Recent {
    /// Notes that `holder` released a server at `now`. Compares in place; builds the group's key
    /// only for a group not yet listed.
    pub(super) fn note(&mut self, settings: &ShareSettings, holder: &ClientInfo, now: Instant) {
        let live = |t: &Instant| now.saturating_duration_since(*t) < SHARE_MEMORY;
        if let Some(entry) = self.groups.iter_mut().find(|(g, _)| settings.in_group(holder, g)) {
            entry.1 = now;
            if self.groups.len() > 1 {
                self.groups.retain(|(_, t)| live(t));
            }
            return;
        }
        self.groups.retain(|(_, t)| live(t));
        let key = if self.groups.len() < MAX_SHARE_GROUPS {
            settings.group_of(holder)
        } else if let Some(entry) = self.groups.iter_mut().find(|(g, _)| g == OVERFLOW_GROUP) {
            entry.1 = now;
            return;
        } else {
            OVERFLOW_GROUP.to_string()
        };
        self.groups.push((key, now));
    }

    /// The groups noted within `SHARE_MEMORY` of `now`.
    fn live(&self, now: Instant) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .filter(move |(_, t)| now.saturating_duration_since(*t) < SHARE_MEMORY)
            .map(|(g, _)| g.as_str())
    }

    /// True when every group listed (live or not) is `group`: nothing else can count.
    fn only(&self, group: &str) -> bool {
        self.groups.iter().all(|(g, _)| g == group)
    }
}

/// The share and reclaim policy of a pool (from `[pooler]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShareSettings {
    /// What groups clients.
    pub key: ShareKey,
    /// max_pool_share: a fraction of pool_size (0: off).
    pub fraction: f64,
    /// idle_transaction_reclaim_timeout (zero: off).
    pub reclaim_after: Duration,
}

impl Default for ShareSettings {
    fn default() -> Self {
        ShareSettings {
            key: ShareKey::ApplicationName,
            fraction: 0.0,
            reclaim_after: Duration::ZERO,
        }
    }
}

impl ShareSettings {
    /// The policy `[pooler]` sets.
    pub fn from_config(p: &PoolerConfig) -> ShareSettings {
        ShareSettings {
            key: p.pool_share_key,
            fraction: p.max_pool_share,
            reclaim_after: p.idle_transaction_reclaim_timeout,
        }
    }

    /// The most servers one group may hold while another group is present (at least one);
    /// None when shares are off.
    pub fn cap(&self, pool_size: usize) -> Option<usize> {
        if self.key == ShareKey::None || self.fraction <= 0.0 {
            return None;
        }
        Some(((self.fraction * pool_size as f64).floor() as usize).clamp(1, pool_size.max(1)))
    }

    /// True when `client` belongs to `group`, without building its key where that can be
    /// avoided (the single-group check runs under the pool's lock on every release).
    fn in_group(&self, client: &ClientInfo, group: &str) -> bool {
        match self.key {
            ShareKey::ApplicationName => client.application_name_is(group),
            ShareKey::ClientAddr => self.group_of(client) == group,
            ShareKey::None => true,
        }
    }

    /// The group `client` belongs to (empty with `pool_share_key = "none"`).
    pub(super) fn group_of(&self, client: &ClientInfo) -> String {
        match self.key {
            ShareKey::ApplicationName => client.application_name(),
            ShareKey::ClientAddr => match &client.peer() {
                PeerAddr::Tcp(a) => a.ip().to_string(),
                PeerAddr::Unix => "unix socket".to_string(),
            },
            ShareKey::None => String::new(),
        }
    }
}

/// One group's figures at one moment (SHOW POOL_SHARES, the metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupFigures {
    /// The group's key value (an application_name, an address, or the overflow group).
    pub group: String,
    /// Servers the group's clients hold.
    pub active: usize,
    /// Of those, servers idle inside a transaction.
    pub idle_in_transaction: usize,
    /// The group's clients queued for a server.
    pub waiting: usize,
    /// The group released a server within the last `SHARE_MEMORY` (1 s): the share decision
    /// still counts it as present even while it holds and waits for nothing.
    pub recent: bool,
}

/// The groups of one pool right now, and which group each waiter (in queue order) is in.
struct Tally {
    groups: Vec<GroupFigures>,
    waiter_groups: Vec<usize>,
}

impl Tally {
    /// Counts who holds each lent server, who waits, and who released one lately (as of `now`).
    /// Called with the state lock held.
    fn of(st: &PoolState, settings: &ShareSettings, now: Instant) -> Tally {
        let mut t = Tally {
            groups: Vec::new(),
            waiter_groups: Vec::with_capacity(st.waiters.len()),
        };
        for info in st.servers.values() {
            match info.current() {
                ServerUse::Lent { holder, tx, .. } => {
                    let g = t.index(settings.group_of(&holder));
                    t.groups[g].active += 1;
                    if tx == TxState::IdleInTransaction {
                        t.groups[g].idle_in_transaction += 1;
                    }
                }
                // Its holder's transaction is still open on it until the rollback is through.
                ServerUse::Cleaning {
                    rolling_back_for: Some(holder),
                } => {
                    let g = t.index(settings.group_of(&holder));
                    t.groups[g].active += 1;
                }
                _ => {}
            }
        }
        for w in &st.waiters {
            let g = t.index_str(&w.group);
            t.groups[g].waiting += 1;
            t.waiter_groups.push(g);
        }
        for group in st.recent.live(now) {
            let g = t.index_str(group);
            t.groups[g].recent = true;
        }
        t
    }

    fn index(&mut self, key: String) -> usize {
        match self.groups.iter().position(|g| g.group == key) {
            Some(i) => i,
            None => self.add(key),
        }
    }

    fn index_str(&mut self, key: &str) -> usize {
        match self.groups.iter().position(|g| g.group == key) {
            Some(i) => i,
            None => self.add(key.to_string()),
        }
    }

    /// A new group, or the overflow group once `MAX_SHARE_GROUPS` are told apart.
    fn add(&mut self, key: String) -> usize {
        let key = if self.groups.len() < MAX_SHARE_GROUPS {
            key
        } else if let Some(i) = self.groups.iter().position(|g| g.group == OVERFLOW_GROUP) {
            return i;
        } else {
            OVERFLOW_GROUP.to_string()
        };
        self.groups.push(GroupFigures {
            group: key,
            ..Default::default()
        });
        self.groups.len() - 1
    }

    /// Groups holding, waiting for or lately releasing servers.
    fn present(&self) -> usize {
        self.groups.iter().filter(|g| g.present()).count()
    }
}

impl GroupFigures {
    /// True when the share decision counts the group: it holds or waits for a server, or
    /// released one within `SHARE_MEMORY`.
    fn present(&self) -> bool {
        self.active > 0 || self.waiting > 0 || self.recent
    }
}

/// True when every client holding or waiting for a server of the pool is in `group`, and no
/// other group released one lately: then shares change nothing, and no tally (which copies
/// every key) is needed. Compares in place; called with the state lock held.
fn only_group(st: &PoolState, settings: &ShareSettings, group: &str) -> bool {
    st.recent.only(group)
        && st.waiters.iter().all(|w| w.group == group)
        && st.servers.values().all(|info| match info.current() {
            ServerUse::Lent { holder, .. }
            | ServerUse::Cleaning {
                rolling_back_for: Some(holder),
            } => settings.in_group(&holder, group),
            _ => true,
        })
}

/// The position of the waiter that may take a server or slot now: the oldest waiter of a group
/// under its cap; the oldest of all when shares are off or only one group is present; None when
/// every waiting group is at its cap while another group holds or waits for servers (the server
/// then stays idle for a group under its cap). Called with the state lock held.
pub(super) fn next_waiter(st: &PoolState, settings: &PoolSettings) -> Option<usize> {
    if st.waiters.is_empty() {
        return None;
    }
    let Some(cap) = settings.shares.cap(settings.pool_size) else {
        return Some(0);
    };
    if st
        .waiters
        .front()
        .is_some_and(|first| only_group(st, &settings.shares, &first.group))
    {
        return Some(0);
    }
    let tally = Tally::of(st, &settings.shares, Instant::now());
    if tally.present() <= 1 {
        return Some(0);
    }
    tally
        .waiter_groups
        .iter()
        .position(|&g| tally.groups[g].active < cap)
}

/// True when a client of `group` arriving now must queue instead of taking an idle server or a
/// free slot: its group holds its cap while another group holds or waits for servers. Called
/// with the state lock held.
pub(super) fn held_back(st: &PoolState, settings: &PoolSettings, group: &str) -> bool {
    let Some(cap) = settings.shares.cap(settings.pool_size) else {
        return false;
    };
    if only_group(st, &settings.shares, group) {
        return false;
    }
    let tally = Tally::of(st, &settings.shares, Instant::now());
    let own = tally
        .groups
        .iter()
        .find(|g| g.group == group)
        .map_or(0, |g| g.active);
    let others = tally.groups.iter().any(|g| g.group != group && g.present());
    others && own >= cap
}

/// True when shares are on and enough servers are lent that a taker's group could be at its
/// cap (below that, the fast checkout path needs no tally). Called with the state lock held.
pub(super) fn past_fast_path(st: &PoolState, settings: &PoolSettings) -> bool {
    settings
        .shares
        .cap(settings.pool_size)
        .is_some_and(|cap| st.servers.len().saturating_sub(st.idle.len()) >= cap)
}

impl Pool {
    /// The groups of this pool holding, waiting for or lately releasing servers (the ones the
    /// share decision counts), with the cap each is held to (None: shares off), for SHOW
    /// POOL_SHARES and the metrics.
    pub fn share_groups(&self) -> (Vec<GroupFigures>, Option<usize>) {
        let settings = self.settings();
        let now = Instant::now();
        let st = self.state.lock();
        let tally = Tally::of(&st, &settings.shares, now);
        drop(st);
        let mut groups: Vec<GroupFigures> = tally.groups.into_iter().filter(GroupFigures::present).collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        (groups, settings.shares.cap(settings.pool_size))
    }

    /// Takes the waiter that may have a server or slot freed now (see [`next_waiter`]): the
    /// oldest, unless fair shares say otherwise. Called with the state lock held; with nobody
    /// waiting it costs nothing more than before shares existed.
    #[inline]
    pub(super) fn take_waiter(&self, st: &mut PoolState) -> Option<Waiter> {
        if st.waiters.is_empty() {
            return None;
        }
        self.take_waiter_queued(st)
    }

    /// [`Pool::take_waiter`] with someone waiting.
    fn take_waiter_queued(&self, st: &mut PoolState) -> Option<Waiter> {
        let i = next_waiter(st, &self.settings())?;
        st.waiters.remove(i)
    }

    /// Records the waiter a server is being handed to as its holder before the waiter wakes, so
    /// a share decision made meanwhile counts it for the right group.
    pub(super) fn mark_granted(server: &PooledServer, waiter: &Waiter) {
        let now = Instant::now();
        server.conn.info.set(ServerUse::Lent {
            holder: waiter.client.clone(),
            since: now,
            tx: TxState::Active,
            tx_since: now,
        });
    }

    /// The client a server being released was lent to, when shares are on (`shares`: the
    /// caller's reading of [`Pool::shares_on`]), for [`Recent::note`]; None otherwise.
    pub(super) fn releasing_holder(server: &PooledServer, shares: bool) -> Option<Arc<ClientInfo>> {
        if !shares {
            return None;
        }
        match server.conn.info.current() {
            ServerUse::Lent { holder, .. } => Some(holder),
            _ => None,
        }
    }

    /// Notes that `holder`'s group released a server at `now` (see [`SHARE_MEMORY`]), for
    /// releases that do not go straight back through [`Pool::give_back`].
    pub(super) fn note_release(&self, holder: &ClientInfo, now: Instant) {
        let settings = self.settings();
        self.state.lock().recent.note(&settings.shares, holder, now);
    }

    /// True when fair shares apply to this pool (max_pool_share set, a grouping key chosen).
    pub(super) fn shares_on(&self) -> bool {
        self.hot().shares()
    }

    /// A waiter left the queue while shares are on: servers that sat idle because every waiting
    /// group was at its cap may now go to a waiter (the group that held the others back may be
    /// gone).
    pub(super) fn hand_on_idle(&self) {
        if !self.shares_on() {
            return;
        }
        let mut st = self.state.lock();
        while !st.idle.is_empty() {
            let Some(waiter) = self.take_waiter(&mut st) else {
                return;
            };
            let Some(server) = st.idle.pop_back() else {
                return;
            };
            Self::mark_granted(&server, &waiter);
            if let Err(Grant::Server(back)) = waiter.tx.send(Grant::Server(Box::new(server))) {
                back.conn.info.set(ServerUse::Idle);
                st.idle.push_back(*back);
            }
        }
    }

    /// True when `client`'s group must queue now (see [`held_back`]). Called with the state
    /// lock held, only once enough servers are lent for the cap to matter.
    pub(super) fn held_back_now(&self, st: &PoolState, client: &ClientInfo) -> bool {
        let settings = self.settings();
        held_back(st, &settings, &settings.shares.group_of(client))
    }

    /// The group `client` is queued under (empty when shares are off: nothing compares it).
    pub(super) fn waiter_group(&self, client: &ClientInfo) -> String {
        let settings = self.settings();
        match settings.shares.cap(settings.pool_size) {
            Some(_) => settings.shares.group_of(client),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_a_fraction_of_the_pool_and_at_least_one_server() {
        let s = |fraction| ShareSettings {
            fraction,
            ..Default::default()
        };
        assert_eq!(s(0.0).cap(4), None);
        assert_eq!(s(0.5).cap(4), Some(2));
        assert_eq!(s(0.1).cap(4), Some(1));
        assert_eq!(s(1.0).cap(4), Some(4));
        let none = ShareSettings {
            key: ShareKey::None,
            fraction: 0.5,
            ..Default::default()
        };
        assert_eq!(none.cap(4), None);
    }

    #[test]
    fn groups_past_the_bound_share_the_overflow_group() {
        let mut t = Tally {
            groups: Vec::new(),
            waiter_groups: Vec::new(),
        };
        for i in 0..MAX_SHARE_GROUPS + 10 {
            let g = t.index(format!("app{i}"));
            t.groups[g].waiting += 1;
        }
        assert_eq!(t.groups.len(), MAX_SHARE_GROUPS + 1);
        let overflow = t.groups.last().map(|g| (g.group.as_str(), g.waiting));
        assert_eq!(overflow, Some((OVERFLOW_GROUP, 10)));
    }
}
