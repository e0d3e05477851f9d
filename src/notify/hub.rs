//! One pool's listening hub: which client listens on which channel (each map bounded), the
//! state of the pool's listening connection, and delivery of each notification to the
//! mailboxes of the channel's subscribers, never waiting for any of them.

use super::mailbox::{Mailbox, Offer};
use crate::pool::{Pool, PoolKey};
use crate::protocol::{PgError, sqlstate};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Where the pool's listening connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenerState {
    /// No connection: nobody listens (or nobody has yet).
    Closed,
    /// Opening it (first subscription, or after a failure).
    Connecting,
    /// Open and LISTENing, on the backend with this pid.
    Listening { pid: i32 },
    /// The last attempt failed (`failures` in a row); retried after a back-off.
    Retrying { failures: u32, error: String },
}

impl ListenerState {
    /// The state's name, as SHOW LISTENERS prints it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            ListenerState::Closed => "closed",
            ListenerState::Connecting => "connecting",
            ListenerState::Listening { .. } => "listening",
            ListenerState::Retrying { .. } => "retrying",
        }
    }
}

/// Whether a subscriber hears a channel yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// LISTENed inside a transaction that has not committed: not delivered to yet.
    Pending,
    /// Delivered to.
    Active,
    /// LISTENed on a channel the connection may already LISTEN on: what it reads before fence
    /// `n` comes back was committed before the client's LISTEN, and is not delivered to it.
    Fenced(u64),
}

impl Phase {
    /// True when a notification read now (fences up to `seen` came back) is delivered.
    fn hears(self, seen: u64) -> bool {
        match self {
            Phase::Pending => false,
            Phase::Active => true,
            Phase::Fenced(n) => n <= seen,
        }
    }
}

#[derive(Debug, Default)]
struct Channel {
    subscribers: HashMap<u64, Phase>,
    delivered: u64,
    dropped: u64,
}

/// Whether the hub's connection task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Stopped,
    Running,
}

struct HubState {
    channels: HashMap<String, Channel>,
    mailboxes: HashMap<u64, Arc<Mailbox>>,
    next_id: u64,
    connection: ListenerState,
    /// Channels LISTENed on the current connection (what the task confirmed).
    confirmed: BTreeSet<String>,
    task: Task,
    /// Hand-over markers to NOTIFY once the connection LISTENs on every channel wanted when
    /// they were asked for (one per client adopted in an upgrade, so bounded by the clients).
    marks: Vec<String>,
    /// The last fence asked for (by a LISTEN waiting to take effect).
    fence_asked: u64,
    /// The last fence that came back through the connection.
    fence_seen: u64,
}

/// Numbers the hubs' fence channels in this process.
static HUBS: AtomicU64 = AtomicU64::new(1);

/// One pool's subscriptions and listening connection.
pub(crate) struct Hub {
    key: PoolKey,
    pool: Weak<Pool>,
    state: Mutex<HubState>,
    /// The private channel the connection NOTIFYs itself on to mark a point in its stream
    /// (notifications come in commit order): a LISTEN takes effect from its fence on.
    fence_channel: String,
    /// Subscriptions changed: the task reconciles (a permit is kept if it is busy).
    pub(super) wake: tokio::sync::Notify,
    /// The confirmed set changed (a waiting LISTEN looks again).
    confirmed_changed: tokio::sync::Notify,
    delivered: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
}

/// One channel in SHOW LISTENERS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelFigures {
    /// The channel name.
    pub(crate) channel: String,
    /// Clients listening on it (committed or not).
    pub(crate) subscribers: usize,
    /// Notifications queued for its clients.
    pub(crate) delivered: u64,
    /// Notifications dropped for clients over their bounds.
    pub(crate) dropped: u64,
}

/// One pool's hub in SHOW LISTENERS and the exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HubFigures {
    /// The pool's database.
    pub(crate) database: String,
    /// The pool's user.
    pub(crate) user: String,
    /// The listening connection's state.
    pub(crate) state: ListenerState,
    /// Clients with a subscription.
    pub(crate) clients: usize,
    /// Its channels, sorted by name.
    pub(crate) channels: Vec<ChannelFigures>,
    /// Notifications queued for clients since the start.
    pub(crate) delivered: u64,
    /// Notifications dropped since the start.
    pub(crate) dropped: u64,
    /// Listening connections opened since the start.
    pub(crate) connects: u64,
}

impl Hub {
    pub(super) fn new(pool: &Arc<Pool>) -> Arc<Hub> {
        Arc::new(Hub {
            key: pool.key.clone(),
            pool: Arc::downgrade(pool),
            state: Mutex::new(HubState {
                channels: HashMap::new(),
                mailboxes: HashMap::new(),
                next_id: 1,
                connection: ListenerState::Closed,
                confirmed: BTreeSet::new(),
                task: Task::Stopped,
                marks: Vec::new(),
                fence_asked: 0,
                fence_seen: 0,
            }),
            fence_channel: format!(
                "sluice_fence_{}_{}",
                std::process::id(),
                HUBS.fetch_add(1, Ordering::Relaxed)
            ),
            wake: tokio::sync::Notify::new(),
            confirmed_changed: tokio::sync::Notify::new(),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        })
    }

    /// True while this hub belongs to `pool` (a pool made anew under the same key gets a new hub).
    pub(super) fn serves(&self, pool: &Arc<Pool>) -> bool {
        self.pool.upgrade().is_some_and(|p| Arc::ptr_eq(&p, pool))
    }

    pub(super) fn pool(&self) -> Option<Arc<Pool>> {
        self.pool.upgrade()
    }

    pub(super) fn key(&self) -> &PoolKey {
        &self.key
    }

    /// Registers a client's mailbox; returns its subscriber id.
    pub(super) fn register(&self, mailbox: Arc<Mailbox>) -> u64 {
        let mut st = self.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.mailboxes.insert(id, mailbox);
        id
    }

    /// Removes a client and all its subscriptions.
    pub(super) fn deregister(&self, id: u64) {
        let mut st = self.state.lock();
        st.mailboxes.remove(&id);
        let before = st.channels.len();
        st.channels.retain(|_, c| {
            c.subscribers.remove(&id);
            !c.subscribers.is_empty()
        });
        if st.channels.len() != before {
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Subscribes client `id` to `channel`; a new channel counts against `pool_channels`.
    /// Starts the listening connection's task if it is not running.
    pub(super) fn subscribe(
        self: &Arc<Self>,
        id: u64,
        channel: &str,
        phase: Phase,
        pool_channels: usize,
    ) -> Result<(), PgError> {
        self.subscribe_as(id, channel, pool_channels, |_| phase)
            .map(|_| ())
    }

    /// Subscribes client `id` to `channel` from a new fence on (asked for in the same look, so
    /// whatever was committed before it is not delivered to the client); returns the fence to
    /// wait for (see [`Hub::wait_confirmed`]).
    pub(super) fn subscribe_fenced(
        self: &Arc<Self>,
        id: u64,
        channel: &str,
        pool_channels: usize,
    ) -> Result<u64, PgError> {
        let phase = self.subscribe_as(id, channel, pool_channels, |st| {
            st.fence_asked += 1;
            Phase::Fenced(st.fence_asked)
        })?;
        self.wake.notify_one();
        Ok(match phase {
            Phase::Fenced(n) => n,
            Phase::Pending | Phase::Active => 0,
        })
    }

    fn subscribe_as(
        self: &Arc<Self>,
        id: u64,
        channel: &str,
        pool_channels: usize,
        phase: impl FnOnce(&mut HubState) -> Phase,
    ) -> Result<Phase, PgError> {
        let mut st = self.state.lock();
        let is_new = !st.channels.contains_key(channel);
        if is_new && st.channels.len() >= pool_channels {
            return Err(PgError::error(
                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "too many LISTEN channels in pool {}: at most {pool_channels} (max_pool_listen_channels)",
                    self.key
                ),
            ));
        }
        let phase = phase(&mut st);
        st.channels
            .entry(channel.to_string())
            .or_default()
            .subscribers
            .insert(id, phase);
        let start = st.task == Task::Stopped;
        if start {
            st.task = Task::Running;
            st.connection = ListenerState::Connecting;
        }
        drop(st);
        if start {
            super::task::spawn(self.clone());
        }
        if is_new {
            self.wake.notify_one();
        }
        Ok(phase)
    }

    /// A subscription LISTENed inside a transaction takes effect (its transaction committed).
    pub(super) fn activate(&self, id: u64, channel: &str) {
        if let Some(c) = self.state.lock().channels.get_mut(channel)
            && let Some(p) = c.subscribers.get_mut(&id)
            && *p == Phase::Pending
        {
            *p = Phase::Active;
        }
    }

    /// Ends client `id`'s subscription to `channel` (the channel goes when its last one does).
    pub(super) fn unsubscribe(&self, id: u64, channel: &str) {
        let mut st = self.state.lock();
        let Some(c) = st.channels.get_mut(channel) else {
            return;
        };
        c.subscribers.remove(&id);
        if c.subscribers.is_empty() {
            st.channels.remove(channel);
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Waits until the listening connection has LISTENed on `channel` (so nothing NOTIFYed
    /// after the client's LISTEN returns is missed) and `fence` (0: none) came back through it,
    /// or `limit` passes.
    pub(super) async fn wait_confirmed(
        &self,
        channel: &str,
        fence: u64,
        limit: Duration,
    ) -> Result<(), PgError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.confirmed_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let last_error = {
                let st = self.state.lock();
                if st.confirmed.contains(channel) && st.fence_seen >= fence {
                    return Ok(());
                }
                match &st.connection {
                    ListenerState::Retrying { error, .. } => Some(error.clone()),
                    _ => None,
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let mut e = PgError::error(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!(
                        "LISTEN failed: the listening connection of pool {} did not LISTEN within {}",
                        self.key,
                        crate::config::format_duration(limit)
                    ),
                );
                if let Some(error) = last_error {
                    e = e.with_detail(format!("last error: {error}"));
                }
                return Err(e);
            }
        }
    }

    /// The channels the connection should LISTEN on now: the clients' and, while there are
    /// any, the fence channel.
    pub(super) fn wanted(&self) -> BTreeSet<String> {
        self.wanted_in(&self.state.lock())
    }

    fn wanted_in(&self, st: &HubState) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = st.channels.keys().cloned().collect();
        if !out.is_empty() {
            out.insert(self.fence_channel.clone());
        }
        out
    }

    /// The fence channel (LISTENed with the clients' channels; its notifications are the hub's).
    pub(super) fn fence_channel(&self) -> &str {
        &self.fence_channel
    }

    /// The last fence asked for, when it is past `sent` (what this connection NOTIFYed last).
    pub(super) fn fence_to_send(&self, sent: u64) -> Option<u64> {
        let asked = self.state.lock().fence_asked;
        (asked > sent).then_some(asked)
    }

    /// Fence `n` came back: every notification committed before it has been read.
    pub(super) fn fence_seen(&self, n: u64) {
        {
            let mut st = self.state.lock();
            st.fence_seen = st.fence_seen.max(n);
        }
        self.confirmed_changed.notify_waiters();
    }

    /// Asks the connection to NOTIFY `marker` once it LISTENs on every channel wanted now.
    pub(super) fn mark(&self, marker: String) {
        self.state.lock().marks.push(marker);
        self.wake.notify_one();
    }

    /// Markers whose NOTIFY failed, asked for again (in front, in their order).
    pub(super) fn mark_again(&self, mut marks: Vec<String>) {
        let mut st = self.state.lock();
        marks.append(&mut st.marks);
        st.marks = marks;
    }

    /// The markers to NOTIFY now: all of them when the connection `listening` is on exactly
    /// the channels wanted (read in the same look: a marker asked for after its channels were
    /// subscribed is never sent before they are LISTENed).
    pub(super) fn take_marks(&self, listening: &BTreeSet<String>) -> Option<Vec<String>> {
        let mut st = self.state.lock();
        if st.marks.is_empty() || self.wanted_in(&st) != *listening {
            return None;
        }
        Some(std::mem::take(&mut st.marks))
    }

    /// The task stops when nobody listens; true if it stopped (it must then return).
    pub(super) fn stop_if_unused(&self) -> bool {
        let mut st = self.state.lock();
        if st.channels.is_empty() {
            st.task = Task::Stopped;
            st.connection = ListenerState::Closed;
            st.confirmed.clear();
            st.marks.clear(); // their clients are gone (the old process's wait is bounded)
            true
        } else {
            false
        }
    }

    /// The task's pool is gone: it stops.
    pub(super) fn stop(&self) {
        let mut st = self.state.lock();
        st.task = Task::Stopped;
        st.connection = ListenerState::Closed;
        st.confirmed.clear();
        st.marks.clear();
    }

    pub(super) fn set_connection(&self, state: ListenerState) {
        if matches!(state, ListenerState::Listening { .. })
            && !matches!(self.state.lock().connection, ListenerState::Listening { .. })
        {
            self.connects.fetch_add(1, Ordering::Relaxed);
        }
        self.state.lock().connection = state;
        self.confirmed_changed.notify_waiters();
    }

    /// The connection now LISTENs on exactly `channels`.
    pub(super) fn confirm(&self, channels: &BTreeSet<String>) {
        self.state.lock().confirmed = channels.clone();
        self.confirmed_changed.notify_waiters();
    }

    /// Queues a notification for every client that listens on `channel` (committed), without
    /// waiting: a client over its bounds is dropped from delivery and disconnected.
    pub(super) fn deliver(&self, channel: &str, msg: Bytes) {
        let mut st = self.state.lock();
        let seen = st.fence_seen;
        let HubState {
            channels, mailboxes, ..
        } = &mut *st;
        let Some(c) = channels.get_mut(channel) else {
            return;
        };
        let (mut delivered, mut dropped) = (0u64, 0u64);
        for (id, phase) in &c.subscribers {
            if !phase.hears(seen) {
                continue;
            }
            let Some(mailbox) = mailboxes.get(id) else {
                continue;
            };
            match mailbox.offer(msg.clone()) {
                Offer::Queued => delivered += 1,
                Offer::Dropped => dropped += 1,
            }
        }
        c.delivered += delivered;
        c.dropped += dropped;
        drop(st);
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Queues a message (a NOTICE) for every client with at least one committed channel.
    pub(super) fn tell_all(&self, msg: Bytes) {
        let st = self.state.lock();
        let mut told = BTreeSet::new();
        for c in st.channels.values() {
            for (id, phase) in &c.subscribers {
                if phase.hears(st.fence_seen)
                    && told.insert(*id)
                    && let Some(m) = st.mailboxes.get(id)
                {
                    let _ = m.offer(msg.clone());
                }
            }
        }
    }

    /// This hub in SHOW LISTENERS.
    pub(crate) fn figures(&self) -> HubFigures {
        let st = self.state.lock();
        let mut channels: Vec<ChannelFigures> = st
            .channels
            .iter()
            .map(|(name, c)| ChannelFigures {
                channel: name.clone(),
                subscribers: c.subscribers.len(),
                delivered: c.delivered,
                dropped: c.dropped,
            })
            .collect();
        channels.sort_by(|a, b| a.channel.cmp(&b.channel));
        HubFigures {
            database: self.key.database.clone(),
            user: self.key.user.clone(),
            state: st.connection.clone(),
            clients: st.mailboxes.len(),
            channels,
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
        }
    }
}

/// When a lost connection was noticed (for the NOTICE's text).
pub(super) fn since_text(since: Instant) -> String {
    format!("{:.1}s", since.elapsed().as_secs_f64())
}
