//! A client's kill switch: why sluice ends a client from outside its session ([`Kill`]), how
//! the reason reaches the session (its one waker, and a flag read without the record's lock),
//! and which reasons a busy or idle session withdraws instead of obeying.

use super::{ClientInfo, ClientPhase};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
pub(super) const SIGNALLED: u8 = 1;
/// [`ClientInfo::kill_state`]: the switch holds the waker of the session's idle wait.
pub(super) const IDLE_ARMED: u8 = 2;

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

impl ClientInfo {
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

    /// Resolves with the reason once the client is killed. A client in the middle of a request
    /// (`busy`) is not ended for being idle: such a kill, given as it woke up, is withdrawn.
    pub fn killed(&self, busy: bool) -> Killed<'_> {
        Killed {
            info: self,
            busy,
            armed: false,
        }
    }

    /// [`ClientInfo::killed`] for the session's own task right after its idle wait: when that
    /// wait left its waker in the switch (the task's, the same as this future's) and nothing
    /// was signalled since, the future starts armed, so its first poll reads the flag instead
    /// of taking the lock (once per transaction, in the relay). Only the session's own task may
    /// poll it.
    pub(crate) fn killed_after_idle(&self, busy: bool) -> Killed<'_> {
        Killed {
            info: self,
            busy,
            armed: self.kill_state.load(Ordering::Acquire) == IDLE_ARMED,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::HeldServer;
    use std::sync::Arc;

    fn client() -> ClientInfo {
        ClientInfo::new(
            crate::clients::PeerAddr::Unix,
            None,
            None,
            crate::clients::ClientNames::new("d", "u"),
            "app",
        )
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
            cancels: Arc::new(crate::clients::CancelsInFlight::new(("localhost".into(), 5432))),
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

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_kill_future_made_after_the_idle_wait_armed_the_switch_keeps_its_waker() {
        let c = client();
        let task = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&waker);
        assert!(c.poll_killed_idle(&mut cx).is_pending());
        assert_eq!(c.kill_state.load(Ordering::Acquire), IDLE_ARMED);
        // The relay's future starts armed: its first poll reads the flag and leaves the idle
        // wait's waker (the task's) in place, untouched by this other waker.
        let mut killed = c.killed_after_idle(true);
        let other = std::task::Waker::noop();
        assert!(
            Pin::new(&mut killed)
                .poll(&mut Context::from_waker(other))
                .is_pending()
        );
        c.kill("admin forced disconnect");
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the kill woke the task");
        let k = Pin::new(&mut killed).poll(&mut cx);
        assert_eq!(k, Poll::Ready(Kill::Operator("admin forced disconnect".into())));
        // Not armed: a switch that holds no idle wait's waker is locked and registered.
        let d = client();
        let mut killed = d.killed_after_idle(true);
        assert!(Pin::new(&mut killed).poll(&mut cx).is_pending());
        d.kill("bye");
        assert_eq!(task.0.load(Ordering::SeqCst), 2);
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

    #[test]
    fn a_client_that_is_not_idle_is_never_killed_for_idleness() {
        let c = client();
        c.set_phase(ClientPhase::Active);
        c.kill_if_idle_for(Duration::from_millis(1), Instant::now() + Duration::from_secs(60));
        assert!(c.live.lock().kill_reason().is_none());
    }
}
