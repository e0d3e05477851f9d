//! Remembering that logins to the server fail. After a failure, new logins wait a growing,
//! jittered delay and one attempt runs at a time. A short outage of a server that worked (a
//! PostgreSQL restart) is waited out: for server_outage_grace, clients needing a new server wait
//! while a login is retried every 50-200 ms. A refused login, a server that never worked, or an
//! outage past its grace fails fast with the cached error, retried up to server_login_retry apart.

use crate::protocol::{PgError, sqlstate};
use crate::server::ServerError;
use parking_lot::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// First back-off step after a failed login.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// First retry step during an outage's grace period.
const GRACE_FIRST_RETRY: Duration = Duration::from_millis(50);
/// Longest pause between retries during an outage's grace period: a client is served within
/// this (plus a login) of PostgreSQL accepting logins again.
const GRACE_MAX_RETRY: Duration = Duration::from_millis(200);

/// What kind of failure the pool's logins are in.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// The server was up (this pool logged in) and now is unreachable, starting up, shutting down
    /// or full: a restart. Clients wait for it until `since` + server_outage_grace.
    Outage {
        /// The first failed login of this outage.
        since: Instant,
    },
    /// Unreachable or not accepting logins, but this pool never logged in (likely a wrong host
    /// or port): fail fast, probe the port.
    Unreachable,
    /// The server refused the login (wrong password, unknown database, ...): fail fast, and
    /// only time ends the back-off.
    Refused,
}

#[derive(Debug)]
struct Failure {
    error: PgError,
    kind: Kind,
    consecutive: u32,
    retry_at: Instant,
    /// Login attempts running now (at most one is granted while failing).
    in_flight: u32,
}

/// Where the pool's logins stand.
#[derive(Debug)]
enum State {
    /// No login yet.
    New,
    /// The last login worked.
    Working,
    /// The last login failed.
    Failing(Failure),
}

/// What a caller that needs a new server should do now.
pub(super) enum Gate<'a> {
    /// Log in now; report the outcome on the attempt.
    Try(Attempt<'a>),
    /// Within an outage's grace: wait until `until` (or news of an attempt) and ask again.
    /// `cached` is the error to give if the caller cannot wait that long.
    Wait {
        /// When to ask again at the latest.
        until: Instant,
        /// The error meanwhile.
        cached: PgError,
    },
    /// Fail at once with this (cached) error.
    Fail(PgError),
}

/// One login attempt. Dropping it (finished or abandoned) lets the next attempt start and wakes
/// those waiting for news.
pub(super) struct Attempt<'a> {
    health: &'a LoginHealth,
    /// Whether this attempt holds the one slot granted while failing.
    counted: bool,
}

impl Attempt<'_> {
    /// The login failed with `error` (what the client is told) because of `cause`; `limits`
    /// are server_outage_grace and server_login_retry.
    pub(super) fn failed(self, error: &PgError, cause: &ServerError, limits: Limits) {
        self.health.failed(error, is_transient(cause), limits);
    }

    /// The login worked.
    pub(super) fn succeeded(self) {
        *self.health.state.lock() = State::Working;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.counted
            && let State::Failing(f) = &mut *self.health.state.lock()
        {
            f.in_flight = f.in_flight.saturating_sub(1);
        }
        self.health.news.notify_waiters();
    }
}

/// The settings that shape the back-off.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// server_outage_grace: how long clients wait out an outage of a server that worked.
    pub grace: Duration,
    /// server_login_retry: the longest pause between failing attempts.
    pub cap: Duration,
}

/// The login history of one pool.
#[derive(Debug)]
pub(super) struct LoginHealth {
    state: Mutex<State>,
    /// Woken whenever an attempt ends.
    news: Notify,
}

/// True for errors that mean "not now" rather than "no": the server is unreachable, starting
/// up, shutting down, out of connection slots, or the connection broke during the login.
pub(super) fn is_transient(e: &ServerError) -> bool {
    match e {
        ServerError::Connect { .. } | ServerError::Timeout(_) | ServerError::Io(_) => true,
        ServerError::Postgres(pg) => matches!(
            pg.sqlstate.as_str(),
            sqlstate::CANNOT_CONNECT_NOW
                | sqlstate::ADMIN_SHUTDOWN
                | sqlstate::CRASH_SHUTDOWN
                | sqlstate::TOO_MANY_CONNECTIONS
        ),
        ServerError::Protocol(_) | ServerError::Auth(_) | ServerError::ConnectQuery(_) => false,
    }
}

impl LoginHealth {
    pub(super) fn new() -> LoginHealth {
        LoginHealth {
            state: Mutex::new(State::New),
            news: Notify::new(),
        }
    }

    /// Decides whether a caller may log in now, must wait (an outage within `grace`), or fails
    /// with the cached error.
    pub(super) fn gate(&self, grace: Duration) -> Gate<'_> {
        let now = Instant::now();
        let mut st = self.state.lock();
        let f = match &mut *st {
            State::New | State::Working => {
                return Gate::Try(Attempt {
                    health: self,
                    counted: false,
                });
            }
            State::Failing(f) => f,
        };
        if now >= f.retry_at && f.in_flight == 0 {
            f.in_flight += 1;
            return Gate::Try(Attempt {
                health: self,
                counted: true,
            });
        }
        let cached = cached_error(f, now);
        match f.kind {
            Kind::Outage { since } if now < since + grace => {
                let grace_end = since + grace;
                // While an attempt runs, its end is news; otherwise the next one is due at retry_at.
                let until = if f.in_flight > 0 {
                    grace_end
                } else {
                    f.retry_at.min(grace_end)
                };
                Gate::Wait { until, cached }
            }
            _ => Gate::Fail(cached),
        }
    }

    /// True while logins fail because of an outage of a server that worked, younger than `grace`.
    pub(super) fn in_outage_grace(&self, grace: Duration) -> bool {
        match &*self.state.lock() {
            State::Failing(f) => matches!(f.kind, Kind::Outage { since } if since.elapsed() < grace),
            _ => false,
        }
    }

    /// Resolves when a login attempt ends. Create (and enable) it before calling [`Self::gate`],
    /// so an attempt ending in between is not missed.
    pub(super) fn news(&self) -> tokio::sync::futures::Notified<'_> {
        self.news.notified()
    }

    /// True while a transient failure keeps logins backed off (worth probing the port).
    pub(super) fn transient_backoff(&self) -> bool {
        match &*self.state.lock() {
            State::Failing(f) => !matches!(f.kind, Kind::Refused) && Instant::now() < f.retry_at,
            _ => false,
        }
    }

    /// True when no failure holds logins back (min_pool_size may open servers).
    pub(super) fn may_try(&self) -> bool {
        match &*self.state.lock() {
            State::Failing(f) => Instant::now() >= f.retry_at && f.in_flight == 0,
            _ => true,
        }
    }

    /// The server's port answers again: let the next checkout try a login now.
    pub(super) fn retry_now(&self) {
        if let State::Failing(f) = &mut *self.state.lock() {
            f.retry_at = Instant::now();
        }
        self.news.notify_waiters();
    }

    fn failed(&self, error: &PgError, transient: bool, limits: Limits) {
        let now = Instant::now();
        let mut st = self.state.lock();
        let (kind, consecutive, in_flight) = match &*st {
            State::Failing(f) => {
                let kind = match (transient, f.kind) {
                    (false, _) => Kind::Refused,
                    (true, Kind::Refused) => Kind::Unreachable,
                    (true, k) => k,
                };
                (kind, f.consecutive.saturating_add(1), f.in_flight)
            }
            State::Working if transient => (Kind::Outage { since: now }, 1, 0),
            State::New if transient => (Kind::Unreachable, 1, 0),
            State::Working | State::New => (Kind::Refused, 1, 0),
        };
        let step = |first: Duration| first.saturating_mul(1u32 << consecutive.min(16).saturating_sub(1));
        let base = match kind {
            // Within an outage's grace, attempts come quickly: a restart takes a second or two.
            Kind::Outage { since } if now < since + limits.grace => {
                step(GRACE_FIRST_RETRY).min(GRACE_MAX_RETRY)
            }
            _ => step(FIRST_RETRY).min(limits.cap.max(FIRST_RETRY)),
        };
        // Jitter over the upper half: attempts from many pools do not line up.
        let delay = base.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        *st = State::Failing(Failure {
            error: error.clone(),
            kind,
            consecutive,
            retry_at: now + delay,
            in_flight,
        });
    }

    #[cfg(test)]
    fn retry_in(&self) -> Option<Duration> {
        match &*self.state.lock() {
            State::Failing(f) => Some(f.retry_at.saturating_duration_since(Instant::now())),
            _ => None,
        }
    }
}

/// The error given instead of a login while logins fail.
fn cached_error(f: &Failure, now: Instant) -> PgError {
    PgError::error(
        sqlstate::PROTOCOL_VIOLATION,
        format!(
            "server login has been failing, cached error: {} (server_login_retry)",
            f.error.message
        ),
    )
    .with_detail(match f.kind {
        Kind::Outage { since } => format!(
            "{} consecutive login failures over {} ms (longer than server_outage_grace); next attempt in {} ms",
            f.consecutive,
            now.saturating_duration_since(since).as_millis(),
            f.retry_at.saturating_duration_since(now).as_millis()
        ),
        Kind::Unreachable | Kind::Refused => format!(
            "{} consecutive login failures; next attempt in {} ms",
            f.consecutive,
            f.retry_at.saturating_duration_since(now).as_millis()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);
    const CAP: Limits = Limits {
        grace: GRACE,
        cap: Duration::from_secs(15),
    };

    fn starting_up() -> (PgError, ServerError) {
        let e = PgError::fatal("57P03", "the database system is starting up");
        (e.clone(), ServerError::Postgres(e))
    }

    fn try_now(h: &LoginHealth) -> Attempt<'_> {
        match h.gate(GRACE) {
            Gate::Try(a) => a,
            _ => panic!("expected a login attempt"),
        }
    }

    #[test]
    fn a_server_that_never_worked_fails_fast_and_success_clears() {
        let h = LoginHealth::new();
        let (e, cause) = starting_up();
        try_now(&h).failed(&e, &cause, CAP);
        assert!(h.transient_backoff());
        let Gate::Fail(cached) = h.gate(GRACE) else {
            panic!("a pool that never logged in does not wait")
        };
        assert!(
            cached
                .message
                .starts_with("server login has been failing, cached error: the database system")
        );
        h.retry_now();
        try_now(&h).succeeded();
        assert!(matches!(h.gate(GRACE), Gate::Try(_)));
    }

    #[test]
    fn an_outage_of_a_working_server_is_waited_out_with_quick_retries() {
        let h = LoginHealth::new();
        try_now(&h).succeeded();
        let (e, cause) = starting_up();
        try_now(&h).failed(&e, &cause, CAP);
        let Gate::Wait { until, .. } = h.gate(GRACE) else {
            panic!("an outage within its grace waits")
        };
        assert!(until <= Instant::now() + GRACE_MAX_RETRY);
        assert!(h.retry_in().is_some_and(|d| d <= GRACE_MAX_RETRY));
        // With no grace at all, the same outage fails fast.
        assert!(matches!(h.gate(Duration::ZERO), Gate::Fail(_)));
        // One attempt at a time: while it runs, others wait for news.
        h.retry_now();
        let attempt = try_now(&h);
        assert!(matches!(h.gate(GRACE), Gate::Wait { .. }));
        drop(attempt);
        assert!(matches!(h.gate(GRACE), Gate::Try(_)));
    }

    #[test]
    fn a_refused_login_is_not_waited_for() {
        let h = LoginHealth::new();
        try_now(&h).succeeded();
        let e = PgError::fatal("28P01", "password authentication failed for user \"x\"");
        try_now(&h).failed(&e, &ServerError::Postgres(e.clone()), CAP);
        assert!(matches!(h.gate(GRACE), Gate::Fail(_)));
        assert!(!h.transient_backoff());
    }
}
