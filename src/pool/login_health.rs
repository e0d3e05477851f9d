//! Remembering that logins to the server fail: after a failure, new logins wait an exponentially
//! growing, jittered delay (capped by server_login_retry) and clients meanwhile get the cached
//! error at once instead of waiting for query_wait_timeout.

use crate::protocol::{PgError, sqlstate};
use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// First back-off step after a failed login.
const FIRST_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Failure {
    error: PgError,
    consecutive: u32,
    retry_at: Instant,
    /// The server was unreachable or starting up (not a refused login): probing its port may
    /// end the back-off early.
    transient: bool,
}

/// The login history of one pool.
#[derive(Debug)]
pub(super) struct LoginHealth {
    failure: Mutex<Option<Failure>>,
}

impl LoginHealth {
    pub(super) fn new() -> LoginHealth {
        LoginHealth {
            failure: Mutex::new(None),
        }
    }

    /// The error to give a client right now instead of trying to log in, if logins are failing
    /// and the next attempt is not due yet.
    pub(super) fn blocked(&self) -> Option<PgError> {
        let f = self.failure.lock();
        let f = f.as_ref()?;
        if Instant::now() >= f.retry_at {
            return None;
        }
        Some(
            PgError::error(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "server login has been failing, cached error: {} (server_login_retry)",
                    f.error.message
                ),
            )
            .with_detail(format!(
                "{} consecutive login failures; next attempt in {} ms",
                f.consecutive,
                f.retry_at.saturating_duration_since(Instant::now()).as_millis()
            )),
        )
    }

    /// True when an attempt may be made now (no failure, or its back-off has passed).
    pub(super) fn may_try(&self) -> bool {
        self.failure
            .lock()
            .as_ref()
            .is_none_or(|f| Instant::now() >= f.retry_at)
    }

    /// True while a transient failure keeps logins backed off (worth probing the port).
    pub(super) fn transient_backoff(&self) -> bool {
        self.failure
            .lock()
            .as_ref()
            .is_some_and(|f| f.transient && Instant::now() < f.retry_at)
    }

    /// The server's port answers again: let the next checkout try a login now.
    pub(super) fn retry_now(&self) {
        if let Some(f) = self.failure.lock().as_mut() {
            f.retry_at = Instant::now();
        }
    }

    /// Records a failed login; the next attempt backs off, at most `cap` (server_login_retry,
    /// read live so SET and RELOAD change it).
    pub(super) fn failed(&self, error: &PgError, transient: bool, cap: Duration) {
        let mut f = self.failure.lock();
        let consecutive = f.as_ref().map_or(1, |f| f.consecutive.saturating_add(1));
        let exp = FIRST_RETRY.saturating_mul(1u32 << consecutive.min(16).saturating_sub(1));
        let base = exp.min(cap.max(FIRST_RETRY));
        // Full jitter over the upper half: attempts from many pools do not line up.
        let delay = base.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        *f = Some(Failure {
            error: error.clone(),
            consecutive,
            retry_at: Instant::now() + delay,
            transient,
        });
    }

    pub(super) fn succeeded(&self) {
        let mut f = self.failure.lock();
        if f.is_some() {
            *f = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_and_success_clears() {
        let h = LoginHealth::new();
        let cap = Duration::from_secs(15);
        assert!(h.blocked().is_none() && h.may_try());
        let e = PgError::fatal("57P03", "the database system is starting up");
        h.failed(&e, true, cap);
        assert!(h.transient_backoff());
        h.retry_now();
        assert!(h.may_try());
        h.failed(&e, false, cap);
        let cached = h.blocked().expect("blocked right after a failure");
        assert!(
            cached
                .message
                .starts_with("server login has been failing, cached error: the database system")
        );
        assert!(!h.may_try());
        h.succeeded();
        assert!(h.blocked().is_none());
    }
}
