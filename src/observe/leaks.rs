//! Leak reporting: which clients look like connection leaks right now, and which applications
//! have leaked over time. A detector task looks at every client twice a second; each newly
//! detected episode is logged once as a WARNING with who, where and what; episodes end when the
//! client behaves again or leaves. Abandoned transactions (a client that vanished mid-transaction)
//! are counted when they happen. Histories are keyed by client-chosen names (application_name,
//! process command line), each bounded by a `NameCap`: past its cap, names fold into `other`.

use crate::clients::{ClientInfo, ClientPhase};
use crate::config::PoolerConfig;
use crate::name_cap::NameCap;
use crate::pool::client_origin as origin;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What kind of leak a client is suspected of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeakKind {
    /// Idle inside a transaction longer than leak_idle_in_transaction_threshold.
    IdleInTransaction,
    /// Holding one server longer than leak_hold_threshold.
    LongHold,
    /// Connected and idle (outside a transaction) longer than leak_idle_client_threshold.
    IdleClient,
    /// Keeping its server for session state that cannot move (pin_session_state), idle
    /// longer than leak_idle_in_transaction_threshold.
    PinnedIdle,
    /// Disconnected in the middle of a transaction (counted, never current).
    AbandonedTransaction,
    /// Idle in a transaction while others waited; its server was taken back
    /// (idle_transaction_reclaim_timeout; counted, never current).
    ReclaimedTransaction,
}

impl LeakKind {
    /// The name used in SHOW LEAKS, the log and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LeakKind::IdleInTransaction => "idle_in_transaction",
            LeakKind::LongHold => "long_hold",
            LeakKind::IdleClient => "idle_client",
            LeakKind::PinnedIdle => "pinned_idle",
            LeakKind::AbandonedTransaction => "abandoned_transaction",
            LeakKind::ReclaimedTransaction => "reclaimed_transaction",
        }
    }
}

/// One current suspect.
#[derive(Debug, Clone)]
pub struct Suspect {
    /// The client.
    pub client: Arc<ClientInfo>,
    /// What it is suspected of.
    pub kind: LeakKind,
    /// When the episode was first detected.
    pub detected_at: Instant,
}

/// Per (application_name, origin) history for SHOW LEAKS_SUMMARY.
#[derive(Debug, Default, Clone)]
pub struct SummaryEntry {
    /// Leak episodes seen in all.
    pub total: u64,
    /// Abandoned transactions.
    pub abandoned: u64,
    /// Idle transactions rolled back to serve waiting clients (idle_transaction_reclaim_timeout).
    pub reclaimed: u64,
    /// Longest server hold seen by a suspect, in seconds.
    pub longest_hold: Duration,
}

/// The leak detector's state.
#[derive(Debug, Default)]
pub struct LeakTracker {
    episodes: Mutex<HashMap<(u64, LeakKind), Suspect>>,
    totals: Mutex<HashMap<(LeakKind, String), u64>>,
    summary: Mutex<HashMap<(String, String), SummaryEntry>>,
    abandoned: std::sync::atomic::AtomicU64,
    /// The application names reported by name (here and in the metrics' labels).
    apps: NameCap,
    /// The origins reported by name in the summary.
    origins: NameCap,
}

/// One row of SHOW LEAKS_SUMMARY.
#[derive(Debug, Clone)]
pub struct SummaryRow {
    /// application_name (or `other`).
    pub application_name: String,
    /// Process command line or address (or `other`).
    pub origin: String,
    /// Current suspects under this key.
    pub current: u64,
    /// The history.
    pub entry: SummaryEntry,
}

impl LeakTracker {
    /// Current suspects, oldest detection first.
    pub fn suspects(&self) -> Vec<Suspect> {
        let mut v: Vec<Suspect> = self.episodes.lock().values().cloned().collect();
        v.sort_by_key(|s| (s.detected_at, s.client.id));
        v
    }

    /// The application names sluice reports by name, at most `MAX_DISTINCT_NAMES` (leak
    /// history, the metrics' `application_name` label); others are reported as `other`.
    pub fn application_names(&self) -> &NameCap {
        &self.apps
    }

    /// (kind, application_name, count) of current suspects.
    pub fn current_counts(&self) -> Vec<(&'static str, String, u64)> {
        let mut map: HashMap<(LeakKind, String), u64> = HashMap::new();
        for s in self.episodes.lock().values() {
            let app = self.apps.folded(&s.client.application_name());
            *map.entry((s.kind, app)).or_default() += 1;
        }
        let mut v: Vec<_> = map.into_iter().map(|((k, a), n)| (k.as_str(), a, n)).collect();
        v.sort();
        v
    }

    /// (kind, application_name, count) of all episodes seen since start.
    pub fn total_counts(&self) -> Vec<(&'static str, String, u64)> {
        let mut v: Vec<_> = self
            .totals
            .lock()
            .iter()
            .map(|((k, a), n)| (k.as_str(), a.clone(), *n))
            .collect();
        v.sort();
        v
    }

    /// Abandoned transactions since start.
    pub fn abandoned_total(&self) -> u64 {
        self.abandoned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The per-(application_name, origin) history, with the current suspects of each.
    pub fn summary(&self) -> Vec<SummaryRow> {
        let mut current: HashMap<(String, String), u64> = HashMap::new();
        for s in self.episodes.lock().values() {
            let key = (
                self.apps.folded(&s.client.application_name()),
                self.origins.folded(&origin(&s.client)),
            );
            *current.entry(key).or_default() += 1;
        }
        let mut v: Vec<SummaryRow> = self
            .summary
            .lock()
            .iter()
            .map(|(k, e)| SummaryRow {
                application_name: k.0.clone(),
                origin: k.1.clone(),
                current: current.get(k).copied().unwrap_or(0),
                entry: e.clone(),
            })
            .collect();
        v.sort_by(|a, b| (&a.application_name, &a.origin).cmp(&(&b.application_name, &b.origin)));
        v
    }

    /// The summary key of `client`: its application name and origin, folded by their caps.
    fn summary_key(&self, client: &ClientInfo) -> (String, String) {
        (
            self.apps.fold(&client.application_name()),
            self.origins.fold(&origin(client)),
        )
    }

    /// A client left in the middle of a transaction; its server was rolled back or closed.
    pub fn record_abandoned(&self, client: &ClientInfo) {
        self.abandoned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = self.summary_key(client);
        *self
            .totals
            .lock()
            .entry((LeakKind::AbandonedTransaction, key.0.clone()))
            .or_default() += 1;
        self.summary.lock().entry(key).or_default().abandoned += 1;
        tracing::warn!(
            kind = %"abandoned_transaction",
            client = client.id,
            user = %client.user(),
            database = %client.database(),
            application_name = %client.application_name(),
            addr = %client.peer(),
            pid = %client.process().map_or(String::new(), |p| p.0.to_string()),
            process = %client.process().map(|p| p.1).unwrap_or_default(),
            last_query = %client.last_query(),
            "connection leak: client disconnected in the middle of a transaction; its server was rolled back"
        );
    }

    /// A client idle in a transaction lost its server to waiting clients
    /// (idle_transaction_reclaim_timeout); the transaction was rolled back.
    pub fn record_reclaimed(&self, client: &ClientInfo) {
        let key = self.summary_key(client);
        *self
            .totals
            .lock()
            .entry((LeakKind::ReclaimedTransaction, key.0.clone()))
            .or_default() += 1;
        self.summary.lock().entry(key).or_default().reclaimed += 1;
    }

    /// (application_name, count) of transactions reclaimed since start.
    pub fn reclaimed_counts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .totals
            .lock()
            .iter()
            .filter(|((k, _), _)| *k == LeakKind::ReclaimedTransaction)
            .map(|((_, a), n)| (a.clone(), *n))
            .collect();
        v.sort();
        v
    }

    /// One detector pass over `clients`, with the thresholds of `p`.
    pub fn scan(&self, p: &PoolerConfig, clients: &[Arc<ClientInfo>]) {
        let (idle_tx, hold, idle_client) = (
            p.leak_idle_in_transaction_threshold,
            p.leak_hold_threshold,
            p.leak_idle_client_threshold,
        );
        let now = Instant::now();
        // A set, not a list: with thousands of suspects, `retain` below looks each one up.
        let mut seen: HashSet<(u64, LeakKind)> = HashSet::new();
        for c in clients {
            let live = c.live();
            let over = |limit: Duration, since: Option<Instant>| {
                !limit.is_zero() && since.is_some_and(|s| now.duration_since(s) > limit)
            };
            let idle_phase = matches!(live.phase, ClientPhase::Idle | ClientPhase::Holding);
            let kinds = [
                (
                    LeakKind::IdleInTransaction,
                    live.phase == ClientPhase::IdleInTransaction && over(idle_tx, Some(live.phase_since)),
                ),
                (LeakKind::LongHold, over(hold, live.server_since)),
                (
                    LeakKind::PinnedIdle,
                    live.phase == ClientPhase::Holding
                        && !c.pins().is_empty()
                        && over(idle_tx, Some(live.phase_since)),
                ),
                (
                    LeakKind::IdleClient,
                    idle_phase && over(idle_client, Some(live.phase_since)),
                ),
            ];
            for (kind, violated) in kinds {
                if violated {
                    seen.insert((c.id, kind));
                    self.detected(c, kind, now, live.server_since);
                }
            }
        }
        self.episodes.lock().retain(|key, _| seen.contains(key));
    }

    fn detected(&self, c: &Arc<ClientInfo>, kind: LeakKind, now: Instant, server_since: Option<Instant>) {
        let held = server_since.map_or(Duration::ZERO, |s| now.duration_since(s));
        let app = c.application_name();
        let key = self.summary_key(c);
        {
            let mut summary = self.summary.lock();
            let entry = summary.entry(key.clone()).or_default();
            entry.longest_hold = entry.longest_hold.max(held);
        }
        let mut episodes = self.episodes.lock();
        if episodes.contains_key(&(c.id, kind)) {
            return;
        }
        episodes.insert(
            (c.id, kind),
            Suspect {
                client: c.clone(),
                kind,
                detected_at: now,
            },
        );
        drop(episodes);
        *self.totals.lock().entry((kind, key.0.clone())).or_default() += 1;
        if let Some(e) = self.summary.lock().get_mut(&key) {
            e.total += 1;
        }
        let live = c.live();
        let process = c.process();
        tracing::warn!(
            kind = %kind.as_str(),
            client = c.id,
            user = %c.user(),
            database = %c.database(),
            application_name = %app,
            addr = %c.peer(),
            pid = %process.as_ref().map_or(String::new(), |p| p.0.to_string()),
            process = %process.map(|p| p.1).unwrap_or_default(),
            state = %live.phase,
            held_seconds = held.as_secs(),
            transaction_age_seconds = live.xact_since.map_or(0, |s| now.duration_since(s).as_secs()),
            server_pid = live.server.map_or(0, |s| s.1),
            last_query = %c.last_query(),
            "connection leak suspected"
        );
    }
}
