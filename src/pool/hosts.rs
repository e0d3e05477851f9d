//! Several hosts behind one pool: which host a new server is opened on (load_balance_hosts),
//! whether it qualifies (target_session_attrs, checked at login with one query), and each host's
//! health: a host that refuses or times out is skipped for a jittered exponential back-off, a
//! host whose role stopped matching is drained (its idle servers closed, lent ones retired at
//! release). A pool with one host and `target_session_attrs = any` never comes here.

use super::{Pool, PooledServer, Recycle};
use crate::config::{HostAddr, LoadBalanceHosts, TargetSessionAttrs};
use crate::protocol::{PgError, sqlstate};
use crate::server::role::RoleAnswer;
use crate::server::{self, ServerConn, ServerError};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::checkout::CheckoutError;

/// First back-off step after a host failed.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest back-off of a failing host.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How soon a host whose role did not match is asked again (a promotion is noticed this fast).
const MISMATCH_RECHECK: Duration = Duration::from_millis(250);
/// Longest pause between rounds while a client waits for a matching host.
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// The host-list settings of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HaSettings {
    /// Every host of the database entry, with its port.
    pub hosts: Vec<HostAddr>,
    /// Which servers qualify.
    pub attrs: TargetSessionAttrs,
    /// How new servers are spread over qualifying hosts.
    pub balance: LoadBalanceHosts,
}

impl HaSettings {
    /// True when the pool needs host logic: several hosts, or a role to check.
    pub fn active(&self) -> bool {
        self.hosts.len() > 1 || self.attrs != TargetSessionAttrs::Any
    }

    /// True when servers' roles are checked (at login and at server_check_delay).
    pub fn checks_role(&self) -> bool {
        self.attrs != TargetSessionAttrs::Any
    }
}

/// What a host was last found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not asked yet (or `target_session_attrs = any`, which never asks).
    Unknown,
    /// Not in recovery, read-write.
    Primary,
    /// Not in recovery, but `transaction_read_only` is on.
    ReadOnlyPrimary,
    /// In recovery.
    Standby,
}

impl Role {
    fn of(a: RoleAnswer) -> Role {
        match (a.in_recovery, a.read_only) {
            (true, _) => Role::Standby,
            (false, true) => Role::ReadOnlyPrimary,
            (false, false) => Role::Primary,
        }
    }

    /// The name SHOW HOSTS and error details use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::ReadOnlyPrimary => "read-only primary",
            Role::Standby => "standby",
        }
    }
}

/// Whether a server of `role` qualifies for `attrs`; prefer-standby takes a standby here (its
/// fallback to other servers is decided by the caller).
fn qualifies(attrs: TargetSessionAttrs, role: Role) -> bool {
    match attrs {
        TargetSessionAttrs::Any => true,
        TargetSessionAttrs::ReadWrite => role == Role::Primary,
        TargetSessionAttrs::ReadOnly => matches!(role, Role::Standby | Role::ReadOnlyPrimary),
        TargetSessionAttrs::Primary => matches!(role, Role::Primary | Role::ReadOnlyPrimary),
        TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => role == Role::Standby,
    }
}

/// A host's health.
#[derive(Debug, Clone)]
pub enum Health {
    /// No login tried yet.
    Unchecked,
    /// The last login (and role check) worked and matched.
    Up,
    /// Logins fail: skipped until `retry_at`.
    Down {
        /// The last error.
        error: String,
        /// Failures in a row.
        consecutive: u32,
        /// When the next login may try it.
        retry_at: Instant,
    },
    /// Up, but its role does not match: asked again at `retry_at`.
    WrongRole {
        /// When the next login may ask again.
        retry_at: Instant,
    },
}

impl Health {
    /// The name SHOW HOSTS uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Unchecked => "unchecked",
            Health::Up => "up",
            Health::Down { .. } => "down",
            Health::WrongRole { .. } => "wrong role",
        }
    }

    fn retry_at(&self) -> Option<Instant> {
        match self {
            Health::Down { retry_at, .. } | Health::WrongRole { retry_at } => Some(*retry_at),
            Health::Unchecked | Health::Up => None,
        }
    }
}

/// What the pool knows of one host.
#[derive(Debug, Clone)]
pub struct HostState {
    /// The host and port.
    pub addr: HostAddr,
    /// What it was last found to be.
    pub role: Role,
    /// Whether it takes logins.
    pub health: Health,
    /// When it was last logged in to or checked (wall clock, for the console).
    pub last_check: Option<SystemTime>,
    /// Failed logins and checks since the pool was created.
    pub failures: u64,
    /// Servers opened before this are retired (the host's role changed).
    drained_at: Option<Instant>,
}

impl HostState {
    fn new(addr: HostAddr) -> HostState {
        HostState {
            addr,
            role: Role::Unknown,
            health: Health::Unchecked,
            last_check: None,
            failures: 0,
            drained_at: None,
        }
    }

    fn describe(&self, now: Instant) -> String {
        let role = if self.role == Role::Unknown {
            String::new()
        } else {
            format!(", {}", self.role.as_str())
        };
        match &self.health {
            Health::Down {
                error, consecutive, ..
            } => format!("{} (down after {consecutive} failures: {error})", self.addr),
            Health::WrongRole { retry_at } => format!(
                "{} (up{role}; asked again in {} ms)",
                self.addr,
                retry_at.saturating_duration_since(now).as_millis()
            ),
            h => format!("{} ({}{role})", self.addr, h.as_str()),
        }
    }
}

/// The hosts of one pool and what is known of them.
#[derive(Debug, Default)]
pub(crate) struct HostSet {
    hosts: Mutex<Vec<HostState>>,
    /// Where round-robin starts next.
    next: AtomicUsize,
    /// Some host was drained: vetting servers compares their age (false: nothing to compare).
    any_drained: AtomicBool,
}

impl HostSet {
    /// The state of every host, for SHOW HOSTS and the metrics.
    pub(crate) fn snapshot(&self) -> Vec<HostState> {
        self.hosts.lock().clone()
    }

    /// Makes the state list follow the configured hosts (a reload may change them).
    fn sync(hosts: &mut Vec<HostState>, wanted: &[HostAddr]) {
        if hosts.len() == wanted.len() && hosts.iter().zip(wanted).all(|(h, w)| &h.addr == w) {
            return;
        }
        let mut old = std::mem::take(hosts);
        for w in wanted {
            match old.iter().position(|h| &h.addr == w) {
                Some(i) => hosts.push(old.swap_remove(i)),
                None => hosts.push(HostState::new(w.clone())),
            }
        }
    }

    /// The hosts to try now, in order, and when a skipped host may be tried next. A host whose
    /// back-off has passed is claimed for `claim` (others skip it meanwhile), so one login at a
    /// time probes a failing host.
    fn plan(&self, ha: &HaSettings, claim: Duration) -> (Vec<Planned>, Option<Instant>) {
        let now = Instant::now();
        let mut hosts = self.hosts.lock();
        Self::sync(&mut hosts, &ha.hosts);
        let n = hosts.len();
        let mut order: Vec<usize> = (0..n).collect();
        match ha.balance {
            LoadBalanceHosts::Disable => {}
            LoadBalanceHosts::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
                order.rotate_left(start);
            }
            LoadBalanceHosts::Random => {
                for i in (1..n).rev() {
                    order.swap(i, rand::random_range(0..=i));
                }
            }
        }
        let mut next_retry: Option<Instant> = None;
        let mut ready = Vec::with_capacity(n);
        // Hosts known to qualify first (a standby for prefer-standby), then unknown ones, then
        // those known not to (their role may have changed: a promotion), then failed hosts
        // whose back-off ended (a client tries them only when no other host served it).
        let rank = |h: &HostState| match (&h.health, h.role) {
            (Health::Down { .. }, _) => 3,
            (_, Role::Unknown) => 1,
            (_, role) if qualifies(ha.attrs, role) => 0,
            _ => 2,
        };
        for i in order {
            let h = &mut hosts[i];
            match h.health.retry_at() {
                Some(at) if at > now => {
                    next_retry = Some(next_retry.map_or(at, |t| t.min(at)));
                }
                Some(_) => {
                    // Due again: this caller probes it; others wait for the outcome.
                    let r = rank(h);
                    match &mut h.health {
                        Health::Down { retry_at, .. } | Health::WrongRole { retry_at } => {
                            *retry_at = now + claim
                        }
                        Health::Unchecked | Health::Up => {}
                    }
                    ready.push((r, h.addr.clone()));
                }
                None => ready.push((rank(h), h.addr.clone())),
            }
        }
        ready.sort_by_key(|(r, _)| *r);
        let plan = ready
            .into_iter()
            .map(|(r, addr)| Planned {
                addr,
                failed_before: r == 3,
            })
            .collect();
        (plan, next_retry)
    }

    fn with_host(&self, addr: &HostAddr, f: impl FnOnce(&mut HostState)) {
        if let Some(h) = self.hosts.lock().iter_mut().find(|h| &h.addr == addr) {
            f(h);
        }
    }

    /// A login or check of `addr` failed: back off, jittered, doubling per failure.
    fn failed(&self, addr: &HostAddr, error: String) {
        self.with_host(addr, |h| {
            let consecutive = match &h.health {
                Health::Down { consecutive, .. } => consecutive.saturating_add(1),
                _ => 1,
            };
            let base = FIRST_BACKOFF
                .saturating_mul(1u32 << consecutive.min(16).saturating_sub(1))
                .min(MAX_BACKOFF);
            let delay = base.mul_f64(0.5 + rand::random::<f64>() * 0.5);
            h.failures += 1;
            h.last_check = Some(SystemTime::now());
            h.health = Health::Down {
                error,
                consecutive,
                retry_at: Instant::now() + delay,
            };
        });
    }

    /// A login to `addr` worked and found `role`; `fits` says whether it qualified. A host whose
    /// known role changed is drained.
    fn checked(&self, addr: &HostAddr, role: Role, fits: bool) {
        self.with_host(addr, |h| {
            if h.role != Role::Unknown && role != Role::Unknown && h.role != role {
                tracing::warn!(host = %addr, was = h.role.as_str(), now = role.as_str(), "host changed role; draining its servers");
                h.drained_at = Some(Instant::now());
                self.any_drained.store(true, Ordering::Relaxed);
            }
            if role != Role::Unknown {
                h.role = role;
            }
            h.last_check = Some(SystemTime::now());
            h.health = if fits {
                Health::Up
            } else {
                Health::WrongRole {
                    retry_at: Instant::now() + MISMATCH_RECHECK,
                }
            };
        });
    }

    /// True when `conn` was opened on a host before it was drained.
    #[inline]
    pub(crate) fn drained(&self, conn: &ServerConn) -> bool {
        // Checked at every checkout and release: the common answer without a call.
        self.any_drained.load(Ordering::Relaxed) && self.drained_slow(conn)
    }

    /// [`HostSet::drained`] once some host was drained: is it this server's?
    fn drained_slow(&self, conn: &ServerConn) -> bool {
        let hosts = self.hosts.lock();
        hosts.iter().any(|h| {
            h.addr.host.as_str() == &*conn.target_addr.0
                && h.addr.port == conn.target_addr.1
                && h.drained_at.is_some_and(|d| conn.created <= d)
        })
    }

    /// The error for clients when no host qualified: every host and its last known state.
    fn no_host(&self, database: &str, attrs: TargetSessionAttrs) -> PgError {
        let now = Instant::now();
        let states: Vec<String> = self.hosts.lock().iter().map(|h| h.describe(now)).collect();
        PgError::error(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "no server of database \"{database}\" is available with target_session_attrs={}",
                attrs.as_str()
            ),
        )
        .with_detail(format!("hosts: {}", states.join("; ")))
    }
}

/// One host of a plan.
#[derive(Debug, Clone)]
struct Planned {
    addr: HostAddr,
    /// The host was down: its back-off ended, and it is probed off the client's path when an
    /// earlier host serves the client.
    failed_before: bool,
}

/// Logs in to one host of the list: `template` (the pool's target) aimed at `addr`, within
/// `limit`.
async fn connect_host(
    template: &server::ServerTarget,
    addr: &HostAddr,
    limit: Duration,
) -> Result<ServerConn, ServerError> {
    let mut target = template.clone();
    target.host = addr.host.clone();
    target.port = addr.port;
    match tokio::time::timeout(limit, server::connect(&target)).await {
        Ok(r) => r,
        Err(_) => Err(ServerError::Timeout(limit)),
    }
}

fn addr_of(conn: &ServerConn) -> HostAddr {
    HostAddr {
        host: conn.target_addr.0.to_string(),
        port: conn.target_addr.1,
    }
}

impl Pool {
    /// Opens a server on a qualifying host: tries the hosts in plan order, skipping those in
    /// back-off, and while none qualifies keeps trying until `deadline` (None: one round). A
    /// login PostgreSQL refuses (password, unknown database) ends the attempt with its error.
    pub(super) async fn connect_ha(
        self: &Arc<Self>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<ServerConn, CheckoutError> {
        loop {
            let (ha, template, limit) = {
                let s = self.settings();
                (s.ha.clone(), s.target.clone(), s.connect_timeout)
            };
            let (plan, next_retry) = self.hosts.plan(&ha, limit);
            let mut fallback = None;
            let mut served = None;
            for (at, planned) in plan.iter().enumerate() {
                let addr = planned.addr.clone();
                let mut conn = match connect_host(&template, &addr, limit).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        self.stats.metrics.connect_failures.increment(1);
                        tracing::warn!(pool = %self.key, host = %addr, error = %e, "server login failed; trying the next host");
                        self.hosts.failed(&addr, e.to_string());
                        if !super::login_health::is_transient(&e) {
                            return Err(CheckoutError::Login(self.login_error(&e)));
                        }
                        continue;
                    }
                };
                if !ha.checks_role() {
                    self.hosts.checked(&addr, Role::Unknown, true);
                    served = Some((at, conn));
                    break;
                }
                let role = match server::role::query_role(&mut conn, limit).await {
                    Ok(answer) => Role::of(answer),
                    Err(e) => {
                        tracing::warn!(pool = %self.key, host = %addr, error = %e, "role check failed; trying the next host");
                        self.hosts.failed(&addr, format!("role check: {e}"));
                        continue;
                    }
                };
                if qualifies(ha.attrs, role) {
                    self.hosts.checked(&addr, role, true);
                    served = Some((at, conn));
                    break;
                }
                if ha.attrs == TargetSessionAttrs::PreferStandby {
                    self.hosts.checked(&addr, role, true);
                    fallback.get_or_insert(conn);
                    continue;
                }
                tracing::debug!(pool = %self.key, host = %addr, role = role.as_str(), "host does not match target_session_attrs");
                self.hosts.checked(&addr, role, false);
            }
            if let Some((at, conn)) = served {
                // Failed hosts due again that this client did not need are probed in the background.
                for later in plan.iter().skip(at + 1).filter(|p| p.failed_before) {
                    let (pool, addr) = (self.clone(), later.addr.clone());
                    tokio::spawn(async move { pool.probe(addr).await });
                }
                return Ok(conn);
            }
            if let Some(conn) = fallback {
                return Ok(conn);
            }
            let now = tokio::time::Instant::now();
            let Some(deadline) = deadline.filter(|d| now < *d) else {
                return Err(CheckoutError::Login(
                    self.hosts.no_host(&self.key.database, ha.attrs),
                ));
            };
            let wake = next_retry
                .map(tokio::time::Instant::from_std)
                .unwrap_or(now + ROUND_PAUSE)
                .clamp(now + Duration::from_millis(5), now + ROUND_PAUSE)
                .min(deadline);
            tokio::time::sleep_until(wake).await;
        }
    }

    /// Logs in to a failed host off any client's path and records what it found.
    async fn probe(self: Arc<Self>, addr: HostAddr) {
        let (ha, target, limit) = {
            let s = self.settings();
            (s.ha.clone(), s.target.clone(), s.connect_timeout)
        };
        let mut conn = match connect_host(&target, &addr, limit).await {
            Ok(conn) => conn,
            Err(e) => return self.hosts.failed(&addr, e.to_string()),
        };
        if !ha.checks_role() {
            return self.hosts.checked(&addr, Role::Unknown, true);
        }
        match server::role::query_role(&mut conn, limit).await {
            Ok(answer) => {
                let role = Role::of(answer);
                let fits = qualifies(ha.attrs, role) || ha.attrs == TargetSessionAttrs::PreferStandby;
                self.hosts.checked(&addr, role, fits);
            }
            Err(e) => self.hosts.failed(&addr, format!("role check: {e}")),
        }
    }

    /// At server_check_delay, asks an idle server of a role-checked pool what it is; None (the
    /// server closed) when it no longer qualifies, and its host is drained.
    pub(super) async fn recheck_role(
        &self,
        mut server: PooledServer,
        limit: Duration,
    ) -> Option<PooledServer> {
        let addr = addr_of(&server.conn);
        let attrs = self.settings().ha.attrs;
        match server::role::query_role(&mut server.conn, limit).await {
            Ok(answer) => {
                let role = Role::of(answer);
                let fits = qualifies(attrs, role) || attrs == TargetSessionAttrs::PreferStandby;
                self.hosts.checked(&addr, role, fits);
                if fits && server.conn.tx_status == crate::protocol::TxStatus::Idle {
                    server.conn.last_used = Instant::now();
                    return Some(server);
                }
                tracing::info!(pool = %self.key, host = %addr, role = role.as_str(), "idle server no longer matches target_session_attrs; closing");
            }
            Err(e) => {
                tracing::info!(pool = %self.key, server = server.conn.id, error = %e, "idle server failed its role check; closing");
            }
        }
        self.stats.metrics.recycled(Recycle::CheckFailed, 1);
        None
    }

    /// At release: true when `server` must be closed because its host was drained, or because
    /// PostgreSQL refused a write on it (25006) for a pool that needs a writable server. Then
    /// its host's role is checked again off the client's path, and the host is drained only if
    /// it really changed: a client's own `BEGIN READ ONLY` costs one server, never the host's.
    pub(super) fn retire_for_host(self: &Arc<Self>, server: &PooledServer) -> bool {
        if server.conn.info.read_only_refused()
            && matches!(
                self.settings().ha.attrs,
                TargetSessionAttrs::ReadWrite | TargetSessionAttrs::Primary
            )
        {
            let addr = addr_of(&server.conn);
            tracing::info!(pool = %self.key, host = %addr, "server refused a write (25006); retiring it and re-checking its host");
            let pool = self.clone();
            tokio::spawn(async move { pool.probe(addr).await });
            return true;
        }
        self.hosts.drained(&server.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha(n: u16, attrs: TargetSessionAttrs, balance: LoadBalanceHosts) -> HaSettings {
        HaSettings {
            hosts: (1..=n)
                .map(|port| HostAddr {
                    host: "h".into(),
                    port,
                })
                .collect(),
            attrs,
            balance,
        }
    }

    fn ports(plan: &[Planned]) -> Vec<u16> {
        plan.iter().map(|p| p.addr.port).collect()
    }

    #[test]
    fn round_robin_rotates_and_failed_hosts_are_skipped_until_their_backoff_ends() {
        let set = HostSet::default();
        let s = ha(3, TargetSessionAttrs::Any, LoadBalanceHosts::RoundRobin);
        let claim = Duration::from_secs(1);
        assert_eq!(ports(&set.plan(&s, claim).0), [1, 2, 3]);
        assert_eq!(ports(&set.plan(&s, claim).0), [2, 3, 1]);
        set.failed(&s.hosts[1], "refused".into());
        let (plan, retry) = set.plan(&s, claim);
        assert_eq!(ports(&plan), [3, 1]);
        assert!(retry.is_some_and(|t| t <= Instant::now() + FIRST_BACKOFF));
        let text = set
            .no_host("db", TargetSessionAttrs::Any)
            .detail
            .unwrap_or_default();
        assert!(text.contains("h:2 (down after 1 failures: refused)"), "{text}");
    }

    #[test]
    fn known_matching_hosts_come_first_and_a_role_change_drains() {
        let set = HostSet::default();
        let s = ha(2, TargetSessionAttrs::ReadWrite, LoadBalanceHosts::Disable);
        let claim = Duration::from_secs(1);
        let _ = set.plan(&s, claim);
        set.checked(&s.hosts[0], Role::Standby, false);
        set.checked(&s.hosts[1], Role::Primary, true);
        assert_eq!(ports(&set.plan(&s, claim).0), [2]);
        assert!(!set.any_drained.load(Ordering::Relaxed));
        set.checked(&s.hosts[1], Role::Standby, false);
        assert!(set.any_drained.load(Ordering::Relaxed));
    }
}
