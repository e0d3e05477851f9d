//! What sluice knows about each connected client, shared with the pools (who holds a server),
//! the console and the leak reports: its phase, the server it holds (the one record of it, which
//! cancel requests follow too), times, last query, process. Updated on state changes, never per
//! message.

use super::held::{CancelInFlight, HeldServer};
use super::registry::CancelKey;
use super::tick::Tick;
use parking_lot::Mutex;
use std::future::Future;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Where a client connected from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A unix-socket client.
    Unix,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix => f.write_str("unix socket"),
        }
    }
}

/// Why sluice ends a client from outside its session (the session tells the client and leaves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kill {
    /// An operator or the pooler itself (KILL_CLIENT, a removed database, shutdown), with the
    /// message the client is told.
    Operator(String),
    /// client_idle_timeout: the client sent nothing for this long.
    IdleTimeout(Duration),
    /// idle_transaction_reclaim_timeout: idle in a transaction longer than this while other
    /// clients waited for a server of its pool (withdrawn if the client holds none by then).
    Reclaimed(Duration),
    /// server_fast_close: the session-mode server the client holds was made outdated (RECONNECT,
    /// a RELOAD of its connection settings); ends the client only between transactions
    /// (withdrawn while it is inside one; asked again when that ends).
    FastClose,
    /// The client let more notifications pile up than its bounds allow (notify_queue_size
    /// messages, notify_queue_bytes bytes) without reading them.
    NotifyOverflow { messages: usize, bytes: usize },
    /// An upgrade asks the client's session to hand itself to the new process as soon as it is
    /// idle (docs/upgrades.md). Not an ending: a busy session keeps it for its next idle wait,
    /// any other reason replaces it, and a failed hand-over withdraws it.
    HandOver,
}

impl Kill {
    /// The FATAL the client gets.
    pub fn error(&self) -> crate::protocol::PgError {
        use crate::protocol::{PgError, sqlstate};
        match self {
            Kill::Operator(reason) => PgError::fatal(sqlstate::ADMIN_SHUTDOWN, reason.clone()),
            Kill::IdleTimeout(limit) => PgError::fatal(sqlstate::PROTOCOL_VIOLATION, "client_idle_timeout")
                .with_detail(format!("the client sent nothing for {:.1}s", limit.as_secs_f64())),
            Kill::Reclaimed(limit) => PgError::fatal(
                sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                "idle_transaction_reclaim_timeout: the server was taken back from a transaction left idle while other clients waited",
            )
            .with_detail(format!(
                "the client was idle in a transaction for more than {} while other clients waited for a server of its pool; the transaction was rolled back",
                crate::config::format_duration(*limit)
            ))
            .with_hint("Commit or roll back transactions promptly; the pooler's idle_transaction_reclaim_timeout sets the limit (0 turns it off)."),
            Kill::FastClose => PgError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "server_fast_close: the session's server connection was closed after RECONNECT or a configuration change",
            )
            .with_hint("Reconnect: the new session gets a server with the current settings."),
            Kill::NotifyOverflow { messages, bytes } => PgError::fatal(
                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                "too many notifications pending for this client: it does not read them",
            )
            .with_detail(format!(
                "a LISTENing client may have at most {messages} notifications or {bytes} bytes waiting (notify_queue_size, notify_queue_bytes); the ones past that were dropped"
            ))
            .with_hint("Read notifications as they come (poll the connection), or raise notify_queue_size / notify_queue_bytes."),
            Kill::HandOver => PgError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "sluice is being upgraded: this connection could not be handed to the new process",
            ),
        }
    }
}

/// [`ClientInfo::kill_state`]: the switch holds a reason.
const SIGNALLED: u8 = 1;
/// [`ClientInfo::kill_state`]: the switch holds the waker of the session's idle wait.
const IDLE_ARMED: u8 = 2;

/// What a client's record keeps that an idle client rarely has, boxed together behind one
/// pointer (allocated the first time one of them is set, then kept and reused, so a busy
/// client's transactions allocate nothing): an idle client that never ran a query carries 8
/// bytes for all of it.
#[derive(Debug, Default)]
struct Rare {
    /// Why the client must end (the first reason given wins; boxed, as it rarely comes).
    kill: Option<Box<Kill>>,
    /// The latest query text, reused from query to query.
    last_query: String,
    /// The client's process (pid and command line), once looked up (None inside: none found).
    process: Option<Option<Box<(i32, String)>>>,
}

/// The future of [`ClientInfo::killed`]: a borrow and two flags, nothing to pin or unlink.
/// It is polled by its session's task only, whose waker does not change.
#[derive(Debug)]
pub struct Killed<'a> {
    info: &'a ClientInfo,
    busy: bool,
    /// Its task's waker is in the kill switch (a poll found no reason): until a kill raises
    /// [`SIGNALLED`] (and takes the waker to wake it), a poll need not lock.
    armed: bool,
}

impl Future for Killed<'_> {
    type Output = Kill;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Kill> {
        if self.armed && self.info.kill_state.load(Ordering::Acquire) & SIGNALLED == 0 {
            return Poll::Pending; // the relay polls this on every turn: no lock for nothing
        }
        let polled = self.info.poll_killed(cx, self.busy);
        self.armed = polled.is_pending();
        polled
    }
}

/// What a client is doing, as the console and leak reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPhase {
    /// Logged in, holding no server.
    Idle,
    /// Queued for a server.
    Waiting,
    /// Holding a server with a request in flight.
    Active,
    /// Holding a server inside a transaction, nothing running.
    IdleInTransaction,
    /// Holding a server outside a transaction (session mode).
    Holding,
}

/// As log lines show it (`idle in transaction`).
impl std::fmt::Display for ClientPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientPhase::Idle => "idle",
            ClientPhase::Waiting => "waiting",
            ClientPhase::Active => "active",
            ClientPhase::IdleInTransaction => "idle in transaction",
            ClientPhase::Holding => "holding a server",
        })
    }
}

/// The changing part of a client's state, as a copy for those who show it.
#[derive(Debug, Clone)]
pub struct ClientLive {
    /// What it is doing.
    pub phase: ClientPhase,
    /// Since when.
    pub phase_since: Instant,
    /// When its last request began.
    pub request_at: Instant,
    /// The server it holds: (server id, backend pid).
    pub server: Option<(u64, i32)>,
    /// Since when it holds that server.
    pub server_since: Option<Instant>,
    /// When its open transaction began (None outside a transaction).
    pub xact_since: Option<Instant>,
}

/// The changing part of a client's state, under one lock (one lock, not one per part, and
/// times as [`Tick`]s of 8 bytes: every idle client keeps this).
#[derive(Debug)]
struct Live {
    /// The kill switch's waker: the session's task, to wake when a reason arrives (the reason
    /// is in [`Rare`]). Only its own session ever waits on it, so one waker slot does what a
    /// `Notify` would, in less room.
    waker: Option<Waker>,
    /// Inline up to 15 bytes in the 16 a `Box<str>` takes (most names are that short), so a
    /// usual client allocates nothing for it; longer ones go to the heap.
    application_name: ecow::EcoString,
    /// The parts an idle client rarely has (None until one is set).
    rare: Option<Box<Rare>>,
    phase: ClientPhase,
    phase_since: Tick,
    request_at: Tick,
    /// The server it holds and since when: the one record of it (the console shows it, cancel
    /// requests go to it).
    held: Option<(HeldServer, Tick)>,
    xact_since: Option<Tick>,
}

impl Live {
    /// The kill reason, if one was given.
    fn kill_reason(&self) -> Option<&Kill> {
        self.rare.as_ref()?.kill.as_deref()
    }

    /// The rare part, allocated the first time it is needed.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Records a phase change at `now`. An idle or waiting client holds no server: those
    /// phases also forget the server it held.
    fn set_phase(&mut self, phase: ClientPhase, now: Instant) {
        let now = Tick::at(now);
        if matches!(phase, ClientPhase::Waiting | ClientPhase::Active) && self.phase != ClientPhase::Active {
            self.request_at = now;
        }
        if self.phase != phase {
            self.phase = phase;
            self.phase_since = now;
        }
        if matches!(phase, ClientPhase::Idle | ClientPhase::Waiting) {
            self.held = None;
        }
        match phase {
            ClientPhase::IdleInTransaction => {
                self.xact_since.get_or_insert(now);
            }
            ClientPhase::Active => {}
            _ => self.xact_since = None,
        }
    }
}

/// Both ends of a client's connection (and a unix-socket peer's pid), in 16 bytes: IPv4 TCP
/// clients, the usual case, keep both addresses inline; anything else is boxed.
#[derive(Debug)]
enum Ends {
    /// TCP over IPv4, with sluice's own end when known.
    V4 {
        peer: SocketAddrV4,
        local: Option<SocketAddrV4>,
    },
    /// A unix-socket client, with its process id (SO_PEERCRED) when known.
    Unix { pid: Option<i32> },
    /// Any other combination (IPv6).
    Other(Box<(PeerAddr, Option<SocketAddr>, Option<i32>)>),
}

impl Ends {
    fn new(peer: PeerAddr, pid: Option<i32>, local: Option<SocketAddr>) -> Ends {
        match (peer, local, pid) {
            (PeerAddr::Tcp(SocketAddr::V4(peer)), None, None) => Ends::V4 { peer, local: None },
            (PeerAddr::Tcp(SocketAddr::V4(peer)), Some(SocketAddr::V4(l)), None) => {
                Ends::V4 { peer, local: Some(l) }
            }
            (PeerAddr::Unix, None, pid) => Ends::Unix { pid },
            (peer, local, pid) => Ends::Other(Box::new((peer, local, pid))),
        }
    }
}

/// A client's database and user names, one shared pair for all the clients of a pool (the
/// registry's admission hands out the one copy), so a client's record keeps 8 bytes for both.
#[derive(Debug)]
pub struct ClientNames {
    /// Client-facing database name.
    pub database: Arc<str>,
    /// Client-facing user name.
    pub user: Arc<str>,
}

impl ClientNames {
    /// A pair of its own (a client not counted by admission: the auth_query lookup's holder).
    pub fn new(database: &str, user: &str) -> Arc<ClientNames> {
        Arc::new(ClientNames {
            database: database.into(),
            user: user.into(),
        })
    }
}

/// One logged-in client. Every idle client keeps one, so it is kept compact: jemalloc gives
/// its `Arc` a 192-byte block while it stays within 176 bytes (see the size test below).
#[derive(Debug)]
pub struct ClientInfo {
    /// Unique id (for logs, SHOW CLIENTS, KILL_CLIENT).
    pub id: u64,
    /// Where it connected from and to ([`ClientInfo::peer`], [`ClientInfo::local`]).
    ends: Ends,
    /// Client-facing database and user names ([`ClientInfo::database`], [`ClientInfo::user`]).
    names: Arc<ClientNames>,
    /// When it connected ([`ClientInfo::connected_at`]).
    connected_at: Tick,
    live: Mutex<Live>,
    /// The kill switch as seen without its lock (bits written under it): [`SIGNALLED`] while it
    /// holds a reason, [`IDLE_ARMED`] while it holds the waker the idle wait registered and no
    /// kill has come since.
    kill_state: AtomicU8,
    prepared: std::sync::atomic::AtomicU32,
    /// What pins the server it holds to it between transactions ([`super::Pins`] bits).
    pinned: std::sync::atomic::AtomicU8,
    /// Wall-clock connect time in whole seconds since 1970 (the console shows no more).
    connected_unix: u32,
    /// The key sluice gave it for cancel requests (set once, at login).
    cancel_key: std::sync::OnceLock<CancelKey>,
}

impl ClientInfo {
    /// Wall-clock connect time (for the console's timestamps, which show whole seconds).
    pub fn connected_wall(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(self.connected_unix.into())
    }

    /// Registers a new client.
    pub fn new(
        peer: PeerAddr,
        peer_pid: Option<i32>,
        local: Option<SocketAddr>,
        names: Arc<ClientNames>,
        application_name: &str,
    ) -> ClientInfo {
        let now = Tick::at(Instant::now());
        ClientInfo {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            ends: Ends::new(peer, peer_pid, local),
            names,
            connected_at: now,
            live: Mutex::new(Live {
                waker: None,
                application_name: application_name.into(),
                rare: None,
                phase: ClientPhase::Idle,
                phase_since: now,
                request_at: now,
                held: None,
                xact_since: None,
            }),
            kill_state: AtomicU8::new(0),
            prepared: std::sync::atomic::AtomicU32::new(0),
            pinned: std::sync::atomic::AtomicU8::new(0),
            connected_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
            cancel_key: std::sync::OnceLock::new(),
        }
    }

    /// Client-facing user name.
    pub fn user(&self) -> &Arc<str> {
        &self.names.user
    }

    /// Client-facing database name.
    pub fn database(&self) -> &Arc<str> {
        &self.names.database
    }

    /// Where it connected from.
    pub fn peer(&self) -> PeerAddr {
        match &self.ends {
            Ends::V4 { peer, .. } => PeerAddr::Tcp(SocketAddr::V4(*peer)),
            Ends::Unix { .. } => PeerAddr::Unix,
            Ends::Other(o) => o.0.clone(),
        }
    }

    /// sluice's own end of the connection (TCP).
    pub fn local(&self) -> Option<SocketAddr> {
        match &self.ends {
            Ends::V4 { local, .. } => local.map(SocketAddr::V4),
            Ends::Unix { .. } => None,
            Ends::Other(o) => o.1,
        }
    }

    /// Process id of a unix-socket peer (SO_PEERCRED).
    pub fn peer_pid(&self) -> Option<i32> {
        match &self.ends {
            Ends::V4 { .. } => None,
            Ends::Unix { pid } => *pid,
            Ends::Other(o) => o.2,
        }
    }

    /// When it connected.
    pub fn connected_at(&self) -> Instant {
        self.connected_at.instant()
    }

    /// The cancel key issued at login, if one was.
    pub fn cancel_key(&self) -> Option<CancelKey> {
        self.cancel_key.get().copied()
    }

    pub(crate) fn set_cancel_key(&self, key: CancelKey) {
        let _ = self.cancel_key.set(key);
    }

    /// Records the server the client now holds (None: it holds none any more). The console and
    /// the leak reports show it, and the client's cancel requests go to it.
    pub fn hold(&self, server: Option<HeldServer>) {
        let mut live = self.live.lock();
        let since = match (&live.held, &server) {
            (Some((old, since)), Some(new)) if old.id == new.id => *since,
            _ => Tick::at(Instant::now()),
        };
        live.held = server.map(|s| (s, since));
    }

    /// A request got its server, which already carries the client's settings: the phase
    /// becomes `Active` and the server is recorded as held, under one lock and with the
    /// caller's clock reading (what [`ClientInfo::set_phase`] then [`ClientInfo::hold`] do).
    pub(crate) fn activate(&self, server: HeldServer, now: Instant) {
        let mut live = self.live.lock();
        live.set_phase(ClientPhase::Active, now);
        let since = match &live.held {
            Some((old, since)) if old.id == server.id => *since,
            _ => Tick::at(now),
        };
        live.held = Some((server, since));
    }

    /// Where a cancel request from this client goes now, with that server marked as having a
    /// cancel in flight (taken under the same lock that [`ClientInfo::hold`] and
    /// [`ClientInfo::set_phase`] clear the server under, so a release that follows sees the mark).
    pub(crate) fn cancel_leaving(&self) -> Option<(HeldServer, CancelInFlight)> {
        let live = self.live.lock();
        live.held.as_ref().map(|(s, _)| (s.clone(), s.cancels.leaving()))
    }

    /// How many named prepared statements the client holds (SHOW CLIENTS).
    pub fn prepared(&self) -> u32 {
        self.prepared.load(Ordering::Relaxed)
    }

    /// What pins the server it holds to it between transactions (empty: nothing).
    pub fn pins(&self) -> super::Pins {
        super::Pins::from_bits(self.pinned.load(Ordering::Relaxed))
    }

    /// Records what pins its server (the session writes it when that changes).
    pub(crate) fn set_pins(&self, pins: super::Pins) {
        self.pinned.store(pins.bits(), Ordering::Relaxed);
    }

    pub(crate) fn set_prepared(&self, count: usize) {
        self.prepared
            .store(u32::try_from(count).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Asks the client's session to end with a FATAL carrying `reason` (KILL, KILL_CLIENT).
    pub fn kill(&self, reason: &str) {
        self.kill_with(Kill::Operator(reason.to_string()));
    }

    /// Ends the client for `why` (the first reason given wins).
    pub fn kill_with(&self, why: Kill) {
        let waker = {
            let mut live = self.live.lock();
            let reason = &mut live.rare().kill;
            // A hand-over request is the weakest reason: any other replaces it.
            if reason.as_deref().is_some_and(|k| *k == Kill::HandOver) {
                *reason = None;
            }
            reason.get_or_insert_with(|| Box::new(why));
            // Raised, and the idle wait's waker taken: the next poll of either kind locks.
            self.kill_state.store(SIGNALLED, Ordering::Release);
            live.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Withdraws a hand-over request (the upgrade failed or ended); other reasons stay.
    pub(crate) fn withdraw_hand_over(&self) {
        let mut live = self.live.lock();
        if live.kill_reason().is_some_and(|k| *k == Kill::HandOver) {
            live.rare().kill = None;
            self.kill_state.fetch_and(!SIGNALLED, Ordering::Release);
        }
    }

    /// A client handed over by an upgrade keeps its connect times (SHOW CLIENTS shows them
    /// unchanged).
    pub(crate) fn connected_since(mut self, at: Instant, unix_secs: u64) -> ClientInfo {
        self.connected_at = Tick::at(at);
        self.connected_unix = u32::try_from(unix_secs).unwrap_or(u32::MAX);
        self
    }

    /// Wall-clock connect time in whole seconds since 1970.
    pub(crate) fn connected_unix_secs(&self) -> u64 {
        self.connected_unix.into()
    }

    /// Resolves with the reason once the client is killed. A client in the middle of a request
    /// (`busy`) is not ended for being idle: such a kill, given as it woke up, is withdrawn.
    pub fn killed(&self, busy: bool) -> Killed<'_> {
        Killed {
            info: self,
            busy,
            armed: false,
        }
    }

    /// Polls the kill switch: Ready with the reason once the client is killed, otherwise the
    /// task is woken when it is (see [`ClientInfo::killed`]).
    pub fn poll_killed(&self, cx: &mut Context<'_>, busy: bool) -> Poll<Kill> {
        self.poll_switch(cx, busy, false)
    }

    /// [`ClientInfo::poll_killed`] for the session's idle wait, which runs once per request: after
    /// one poll registered its task's waker, the next ones read a flag instead of locking,
    /// until a kill takes that waker. Only the session's own task may call this.
    pub(crate) fn poll_killed_idle(&self, cx: &mut Context<'_>) -> Poll<Kill> {
        if self.kill_state.load(Ordering::Acquire) == IDLE_ARMED {
            return Poll::Pending;
        }
        self.poll_switch(cx, false, true)
    }

    /// Both polls; `arm`: the idle wait's, which marks its waker registered (under the lock, so
    /// a kill in between cannot be missed).
    fn poll_switch(&self, cx: &mut Context<'_>, busy: bool, arm: bool) -> Poll<Kill> {
        let mut live = self.live.lock();
        let withdraw = match live.kill_reason() {
            Some(k) if busy && matches!(k, Kill::IdleTimeout(_)) => true,
            // A reclaim asked of a client that has meanwhile given its server back.
            Some(Kill::Reclaimed(_)) if live.held.is_none() => true,
            // server_fast_close never interrupts a transaction or a request in flight.
            Some(Kill::FastClose) if live.phase != ClientPhase::Holding => true,
            // A busy session hands itself over once it is idle again: kept, not withdrawn.
            Some(Kill::HandOver) if busy => false,
            Some(k) => return Poll::Ready(k.clone()),
            None => false,
        };
        if withdraw {
            live.rare().kill = None;
            self.kill_state.fetch_and(!SIGNALLED, Ordering::Release);
        }
        match &live.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => {
                // Another task's waker (tests) is not the idle wait's.
                self.kill_state.fetch_and(!IDLE_ARMED, Ordering::Release);
                live.waker = Some(cx.waker().clone());
            }
        }
        if arm {
            self.kill_state.fetch_or(IDLE_ARMED, Ordering::Release);
        }
        Poll::Pending
    }

    /// Ends an idle client that has been idle longer than `limit` (client_idle_timeout).
    pub fn kill_if_idle_for(&self, limit: Duration, now: Instant) {
        let live = self.live.lock();
        if live.phase == ClientPhase::Idle
            && now.saturating_duration_since(live.phase_since.instant()) > limit
        {
            drop(live);
            self.kill_with(Kill::IdleTimeout(limit));
        }
    }

    /// A copy of the changing state.
    pub fn live(&self) -> ClientLive {
        let live = self.live.lock();
        ClientLive {
            phase: live.phase,
            phase_since: live.phase_since.instant(),
            request_at: live.request_at.instant(),
            server: live.held.as_ref().map(|(s, _)| (s.id, s.backend_pid)),
            server_since: live.held.as_ref().map(|(_, since)| since.instant()),
            xact_since: live.xact_since.map(Tick::instant),
        }
    }

    /// Records a phase change. Called on transitions only. An idle or waiting client holds no
    /// server: those phases also forget the server it held (see [`ClientInfo::hold`]).
    pub fn set_phase(&self, phase: ClientPhase) {
        self.set_phase_at(phase, Instant::now());
    }

    /// [`ClientInfo::set_phase`] with the clock reading the caller already took for the same
    /// event (the hot path reads the clock once per event, not once per record it updates).
    pub(crate) fn set_phase_at(&self, phase: ClientPhase, now: Instant) {
        self.live.lock().set_phase(phase, now);
    }

    /// Records the start of the transaction the server just reported (status `T`/`E`).
    pub fn transaction_began(&self, at: Instant) {
        let mut live = self.live.lock();
        if live.xact_since.is_none() {
            live.xact_since = Some(Tick::at(at));
        }
    }

    /// The server reported an open transaction (status `T`/`E`) begun `began`, and nothing is
    /// running: [`ClientInfo::transaction_began`] then the `IdleInTransaction` phase, under one
    /// lock.
    pub(crate) fn idle_in_transaction(&self, began: Instant, now: Instant) {
        let mut live = self.live.lock();
        live.xact_since.get_or_insert(Tick::at(began));
        live.set_phase(ClientPhase::IdleInTransaction, now);
    }

    /// Keeps the first 200 characters of the latest simple query or Parse text (never
    /// parameter values). The first query allocates the record's rare part and the text's
    /// buffer; later ones reuse both.
    pub fn set_last_query(&self, text: &str) {
        let mut end = text.len().min(200);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut live = self.live.lock();
        if end == 0 && live.rare.is_none() {
            return; // nothing to keep, and no reason to allocate for it
        }
        let q = &mut live.rare().last_query;
        q.clear();
        q.push_str(&text[..end]);
    }

    /// The latest query text (first 200 characters).
    pub fn last_query(&self) -> String {
        let live = self.live.lock();
        live.rare
            .as_ref()
            .map_or_else(String::new, |r| r.last_query.clone())
    }

    /// The client's process (pid and command line): SO_PEERCRED for unix-socket clients, the
    /// owner of the socket in /proc for loopback TCP clients; looked up once, on demand (not
    /// under the record's lock: the session never waits for /proc).
    pub fn process(&self) -> Option<(i32, String)> {
        let known = |p: &Option<Box<(i32, String)>>| p.as_deref().cloned();
        if let Some(p) = self.live.lock().rare.as_ref().and_then(|r| r.process.as_ref()) {
            return known(p);
        }
        let pid = self.peer_pid().or_else(|| match self.peer() {
            PeerAddr::Tcp(a) if a.ip().is_loopback() => crate::procfs::tcp_owner(a, self.local()?),
            _ => None,
        });
        let found = pid.map(|pid| Box::new((pid, crate::procfs::cmdline(pid).unwrap_or_default())));
        let mut live = self.live.lock();
        known(live.rare().process.get_or_insert(found))
    }

    /// The application_name the client currently has.
    pub fn application_name(&self) -> String {
        self.live.lock().application_name.to_string()
    }

    /// True when the client's application_name is `name` (compared in place, no copy).
    pub(crate) fn application_name_is(&self, name: &str) -> bool {
        self.live.lock().application_name.as_str() == name
    }

    /// Records a new application_name (the client ran SET application_name).
    pub fn set_application_name(&self, name: &str) {
        let mut live = self.live.lock();
        if live.application_name.as_str() != name {
            live.application_name = name.into();
        }
    }

    /// `'app' at 10.0.0.5:41234 (client 17)`, for error details and logs.
    pub fn describe(&self) -> String {
        format!(
            "'{}' at {} (client {})",
            self.application_name(),
            self.peer(),
            self.id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientInfo {
        ClientInfo::new(PeerAddr::Unix, None, None, ClientNames::new("d", "u"), "app")
    }

    #[tokio::test]
    async fn an_idle_timeout_ends_an_idle_client_but_not_one_that_just_became_busy() {
        let c = client();
        let limit = Duration::from_millis(10);
        let later = Instant::now() + Duration::from_millis(50);
        // Idle long enough: killed, and an idle session sees it.
        c.kill_if_idle_for(limit, later);
        assert_eq!(c.killed(false).await, Kill::IdleTimeout(limit));
        // The client sent a request as the sweep ran: a busy session withdraws the kill...
        let busy = tokio::time::timeout(Duration::from_millis(50), c.killed(true)).await;
        assert!(busy.is_err(), "a busy client must not be ended for idleness");
        // ...so the next idle wait does not see it either, while an operator's kill stands.
        let idle = tokio::time::timeout(Duration::from_millis(50), c.killed(false)).await;
        assert!(idle.is_err());
        c.kill("admin forced disconnect");
        let k = c.killed(true).await;
        assert_eq!(k, Kill::Operator("admin forced disconnect".into()));
        assert_eq!(k.error().sqlstate, "57P01");
    }

    #[tokio::test]
    async fn a_reclaim_ends_a_client_holding_a_server_and_is_withdrawn_from_one_that_holds_none() {
        let c = client();
        let limit = Duration::from_secs(1);
        c.set_phase(ClientPhase::IdleInTransaction);
        c.hold(Some(HeldServer {
            id: 7,
            backend_pid: 4242,
            backend_secret: 1,
            cancels: Arc::new(super::super::CancelsInFlight::new(("localhost".into(), 5432))),
        }));
        c.kill_with(Kill::Reclaimed(limit));
        let k = c.killed(true).await;
        assert_eq!(k, Kill::Reclaimed(limit));
        assert_eq!(k.error().sqlstate, "25P03");
        assert!(k.error().message.starts_with("idle_transaction_reclaim_timeout"));
        // The client committed and gave its server back before the reclaim reached it.
        c.set_phase(ClientPhase::Idle);
        c.kill_with(Kill::Reclaimed(limit));
        let late = tokio::time::timeout(Duration::from_millis(50), c.killed(true)).await;
        assert!(late.is_err(), "a client holding no server keeps its connection");
    }

    #[tokio::test]
    async fn a_kill_wakes_the_waiting_session() {
        let c = std::sync::Arc::new(client());
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.killed(false).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "nothing killed the client yet");
        c.kill("admin forced disconnect");
        c.kill("a second reason does not replace the first");
        let k = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(
            k.ok().and_then(Result::ok),
            Some(Kill::Operator("admin forced disconnect".into()))
        );
    }

    #[test]
    fn the_held_server_is_shown_and_cancelled_until_the_client_goes_idle() {
        let c = client();
        let cancels = Arc::new(super::super::CancelsInFlight::new(("localhost".into(), 5432)));
        c.set_phase(ClientPhase::Active);
        c.hold(Some(HeldServer {
            id: 7,
            backend_pid: 70,
            backend_secret: 700,
            cancels: cancels.clone(),
        }));
        let live = c.live();
        assert_eq!(live.server, Some((7, 70)));
        assert!(live.server_since.is_some());
        let (target, in_flight) = c.cancel_leaving().expect("a held server takes cancels");
        assert_eq!((target.backend_pid, target.backend_secret), (70, 700));
        assert!(
            cancels.any(),
            "the server is marked while the cancel is on its way"
        );
        drop(in_flight);
        assert!(!cancels.any());
        c.set_phase(ClientPhase::Holding);
        assert_eq!(c.live().server, Some((7, 70)), "a phase with a server keeps it");
        c.set_phase(ClientPhase::Idle);
        assert_eq!(c.live().server, None);
        assert!(
            c.cancel_leaving().is_none(),
            "an idle client's cancel goes nowhere"
        );
    }

    #[tokio::test]
    async fn the_idle_wait_polled_again_sees_a_kill_after_a_withdrawn_hand_over() {
        // After its first poll the idle wait reads a flag only: a kill must take that flag down
        // with the waker, and a withdrawn hand-over must not raise it again.
        let c = Arc::new(client());
        let idle = std::future::poll_fn(|cx| c.poll_killed_idle(cx));
        tokio::pin!(idle);
        let quiet = tokio::time::timeout(Duration::from_millis(20), &mut idle).await;
        assert!(quiet.is_err(), "nothing killed the client yet");
        assert_eq!(c.kill_state.load(Ordering::Acquire), IDLE_ARMED);
        c.kill_with(Kill::HandOver);
        c.withdraw_hand_over();
        let withdrawn = tokio::time::timeout(Duration::from_millis(20), &mut idle).await;
        assert!(withdrawn.is_err(), "a withdrawn hand-over ends nothing");
        // The kill comes while the wait sleeps: only the registered waker can wake it.
        let killer = Arc::clone(&c);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            killer.kill("admin forced disconnect");
        });
        let started = Instant::now();
        let k = tokio::time::timeout(Duration::from_secs(2), &mut idle).await;
        // (the timeout polls the wait once more as it fires: only the time shows a lost wake-up)
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the kill woke the idle wait"
        );
        assert_eq!(k.ok(), Some(Kill::Operator("admin forced disconnect".into())));
    }

    #[tokio::test]
    async fn a_kill_check_polled_again_sees_a_kill_that_came_after_a_withdrawn_one() {
        // The relay polls one Killed future on every turn; after its first poll it looks at a
        // flag only, so a kill must raise the flag and a withdrawn one lower it.
        let c = client();
        let check = c.killed(true);
        tokio::pin!(check);
        let quiet = tokio::time::timeout(Duration::from_millis(20), &mut check).await;
        assert!(quiet.is_err(), "nothing killed the client yet");
        // An idle timeout given as the client became busy is withdrawn: still pending.
        c.kill_if_idle_for(Duration::from_millis(1), Instant::now() + Duration::from_secs(60));
        let withdrawn = tokio::time::timeout(Duration::from_millis(20), &mut check).await;
        assert!(withdrawn.is_err(), "a busy client is not ended for idleness");
        assert_eq!(c.kill_state.load(Ordering::Acquire) & SIGNALLED, 0);
        // An operator's kill after that reaches the same, already polled, future.
        c.kill("admin forced disconnect");
        let k = tokio::time::timeout(Duration::from_secs(5), &mut check).await;
        assert_eq!(k.ok(), Some(Kill::Operator("admin forced disconnect".into())));
    }

    /// Every idle client keeps one record: in an `Arc` (16 bytes of counts) it gets a 192-byte
    /// jemalloc block while it stays within 176 bytes; a few bytes more make it 224 or 256 for
    /// every client (bench/idle_clients.sh). Grow it only on purpose.
    #[test]
    fn a_client_record_stays_within_its_allocation_class() {
        let size = std::mem::size_of::<ClientInfo>();
        assert!(size <= 176, "ClientInfo is {size} bytes");
        assert_eq!(std::mem::size_of::<Ends>(), 16);
        assert_eq!(std::mem::size_of::<HeldServer>(), 24);
        assert_eq!(std::mem::size_of::<ecow::EcoString>(), 16);
        // A client that ran a query keeps its rare part too: one 48-byte block.
        assert!(
            std::mem::size_of::<Rare>() <= 48,
            "Rare is {} bytes",
            std::mem::size_of::<Rare>()
        );
    }

    /// The rare part is allocated once: never for an idle client going through its states, and
    /// for a busy one at its first query, then reused by every later transaction.
    #[test]
    fn an_idle_client_has_no_rare_part_and_a_busy_one_reuses_its_one() {
        let c = client();
        let rare_at = |c: &ClientInfo| c.live.lock().rare.as_deref().map(std::ptr::from_ref);
        let server = HeldServer {
            id: 7,
            backend_pid: 70,
            backend_secret: 700,
            cancels: Arc::new(super::super::CancelsInFlight::new(("localhost".into(), 5432))),
        };
        c.set_last_query(""); // a handed-over client that had run nothing
        c.set_phase(ClientPhase::Waiting);
        c.activate(server.clone(), Instant::now());
        c.idle_in_transaction(Instant::now(), Instant::now());
        c.set_phase(ClientPhase::Idle);
        c.set_application_name("other");
        assert_eq!(c.last_query(), "");
        assert!(rare_at(&c).is_none(), "an idle client allocates no rare part");
        c.set_last_query("select 1");
        let first = rare_at(&c).expect("a query is kept");
        let capacity = c.live.lock().rare.as_ref().map(|r| r.last_query.capacity());
        for _ in 0..100 {
            c.set_phase(ClientPhase::Waiting);
            c.activate(server.clone(), Instant::now());
            c.set_last_query("select 2");
            c.set_phase(ClientPhase::Idle);
        }
        assert_eq!(
            rare_at(&c),
            Some(first),
            "the same rare part, not a new one per transaction"
        );
        assert_eq!(
            c.live.lock().rare.as_ref().map(|r| r.last_query.capacity()),
            capacity
        );
        assert_eq!(c.last_query(), "select 2");
    }

    #[test]
    fn both_ends_of_a_connection_read_back_as_given() {
        let v4: SocketAddr = "10.1.2.3:41234".parse().unwrap(); // ok: literal test input
        let local: SocketAddr = "10.1.2.4:6432".parse().unwrap(); // ok: literal test input
        let v6: SocketAddr = "[::1]:5000".parse().unwrap(); // ok: literal test input
        let mk = |peer, pid, local| ClientInfo::new(peer, pid, local, ClientNames::new("d", "u"), "");
        let c = mk(PeerAddr::Tcp(v4), None, Some(local));
        assert_eq!(
            (c.peer(), c.local(), c.peer_pid()),
            (PeerAddr::Tcp(v4), Some(local), None)
        );
        let c = mk(PeerAddr::Tcp(v4), None, None);
        assert_eq!(
            (c.peer(), c.local(), c.peer_pid()),
            (PeerAddr::Tcp(v4), None, None)
        );
        let c = mk(PeerAddr::Unix, Some(42), None);
        assert_eq!(
            (c.peer(), c.local(), c.peer_pid()),
            (PeerAddr::Unix, None, Some(42))
        );
        let c = mk(PeerAddr::Tcp(v6), None, Some(v4));
        assert_eq!(
            (c.peer(), c.local(), c.peer_pid()),
            (PeerAddr::Tcp(v6), Some(v4), None)
        );
        let then = Instant::now() - Duration::from_secs(3600);
        let c = c.connected_since(then, 1);
        assert_eq!(c.connected_at(), then);
    }

    #[test]
    fn a_client_that_is_not_idle_is_never_killed_for_idleness() {
        let c = client();
        c.set_phase(ClientPhase::Active);
        c.kill_if_idle_for(Duration::from_millis(1), Instant::now() + Duration::from_secs(60));
        assert!(c.live.lock().kill_reason().is_none());
    }
}
