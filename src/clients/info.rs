//! What sluice knows about each connected client, shared with the pools (who holds a server),
//! the console and the leak reports: its phase, the server it holds (the one record of it, which
//! cancel requests follow too), times, last query, process. Updated on state changes, never per
//! message.

mod ends;
mod kill;

use super::held::{CancelInFlight, HeldServer};
use super::registry::CancelKey;
use super::tick::Tick;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::Waker;
use std::time::{Duration, Instant};

use ends::Ends;
pub(crate) use ends::PeerAddr;
pub(crate) use kill::Kill;

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Bytes of the latest query's text shown ([`ClientInfo::last_query`]).
const LAST_QUERY_SHOWN: usize = 200;

/// Bytes of the latest query's text kept raw: what is shown, and up to 4 more so that a
/// character (or invalid sequence) begun within the shown bytes is read whole.
const LAST_QUERY_RAW: usize = LAST_QUERY_SHOWN + 4;

/// What a client's record keeps that an idle client rarely has, boxed together behind one
/// pointer (allocated the first time one of them is set, then kept and reused, so a busy
/// client's transactions allocate nothing): an idle client that never ran a query carries 8
/// bytes for all of it.
#[derive(Debug, Default)]
struct Rare {
    /// Why the client must end (the first reason given wins; boxed, as it rarely comes).
    kill: Option<Box<Kill>>,
    /// The head of the latest query text as the client sent it (at most
    /// [`LAST_QUERY_RAW`] bytes), reused from query to query: its end and its UTF-8 are looked
    /// at only when someone reads it ([`ClientInfo::last_query`]), not on every query.
    last_query: Vec<u8>,
    /// The client's process (pid and command line), once looked up (None inside: none found).
    process: Option<Option<Box<(i32, String)>>>,
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
    fn set_phase(&mut self, phase: ClientPhase, now: Tick) {
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
    /// The kill switch as seen without its lock (bits written under it): [`kill::SIGNALLED`] while it
    /// holds a reason, [`kill::IDLE_ARMED`] while it holds the waker the idle wait registered and no
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
    /// Returns the reading as the record keeps it, for the caller to derive later ones from.
    pub(crate) fn activate(&self, server: HeldServer, now: Instant) -> Tick {
        // One conversion of the reading for both times recorded.
        let now = Tick::at(now);
        let mut live = self.live.lock();
        live.set_phase(ClientPhase::Active, now);
        let since = match &live.held {
            Some((old, since)) if old.id == server.id => *since,
            _ => now,
        };
        live.held = Some((server, since));
        now
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
        self.set_phase_tick(phase, Tick::at(now));
    }

    /// [`ClientInfo::set_phase_at`] with the reading already converted (see [`Tick::after`]).
    pub(crate) fn set_phase_tick(&self, phase: ClientPhase, now: Tick) {
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
        let (began, now) = (Tick::at(began), Tick::at(now));
        let mut live = self.live.lock();
        live.xact_since.get_or_insert(began);
        live.set_phase(ClientPhase::IdleInTransaction, now);
    }

    /// Keeps the first 200 bytes (cut at a character's start) of the latest query text. The
    /// first query allocates the record's rare part and the text's buffer; later ones reuse
    /// both.
    pub fn set_last_query(&self, text: &str) {
        self.set_last_query_raw(text.as_bytes());
    }

    /// [`ClientInfo::set_last_query`] for a text as the client sent it (a simple query's or a
    /// Parse's, never parameter values): what is shown ends at its first NUL, and bytes that
    /// are not UTF-8 are shown as U+FFFD, both worked out when it is read, not on every query.
    pub(crate) fn set_last_query_raw(&self, text: &[u8]) {
        let text = &text[..text.len().min(LAST_QUERY_RAW)];
        let mut live = self.live.lock();
        if matches!(text.first(), None | Some(0)) && live.rare.is_none() {
            return; // nothing to show, and no reason to allocate for it
        }
        let q = &mut live.rare().last_query;
        q.clear();
        q.extend_from_slice(text);
    }

    /// The latest query text: up to its first NUL, not-UTF-8 bytes shown as U+FFFD, the first
    /// 200 bytes (cut at a character's start).
    pub fn last_query(&self) -> String {
        let live = self.live.lock();
        let Some(raw) = live.rare.as_ref().map(|r| r.last_query.as_slice()) else {
            return String::new();
        };
        let raw = &raw[..memchr::memchr(0, raw).unwrap_or(raw.len())];
        let text = String::from_utf8_lossy(raw);
        let mut end = text.len().min(LAST_QUERY_SHOWN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_string()
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

    /// What is kept raw is shown as the text up to its NUL, not-UTF-8 bytes as U+FFFD, cut to
    /// 200 bytes at a character's start: a character begun before the cut is read whole, so a
    /// valid one across it is dropped and an invalid sequence ending at it is shown.
    #[test]
    fn the_last_query_is_shown_as_the_text_cut_at_a_character() {
        let c = client();
        let a197 = "a".repeat(197);
        let shown = |raw: &[u8]| {
            c.set_last_query_raw(raw);
            c.last_query()
        };
        assert_eq!(shown(format!("{a197}\u{1F600}b").as_bytes()), a197);
        let mut invalid = a197.clone().into_bytes();
        invalid.extend_from_slice(&[0xF0, 0x9F, 0x98, b'a']);
        assert_eq!(shown(&invalid), format!("{a197}\u{FFFD}"));
        assert_eq!(shown(b"select 1\0garbage"), "select 1");
        assert_eq!(shown(&"x".repeat(1000).into_bytes()), "x".repeat(200));
        assert_eq!(shown(b"\0"), "");
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
}
