//! One task per client: log in (`entry`: from the connection's first byte to its close), then a
//! state machine — `Idle` (no server), `Waiting` (queued for one), `Active` (relaying on a
//! server) — that lends the client a server per transaction (or for the whole session in session
//! mode) and always gives it back through the pool's release path.

mod client;
mod entry;
pub(crate) mod handover;
mod handover_listen;
mod holding;
mod link;
mod listen;
mod listen_wire;
mod login;
mod notifications;
mod params;
mod pin_refusal;
mod pins;
mod relay;
mod settings;
mod settings_watch;
mod statements;
mod text_scan;
mod waiting;

pub(crate) use crate::clients::PeerAddr;
pub(crate) use entry::handle_client;
use entry::{serve_session, spawn_session};

use crate::clients::ClientPhase;
use crate::config::PoolMode;
use crate::pool::PooledServer;
use crate::protocol::{PgError, TxStatus, sqlstate};
use client::{ClientIo, Input};
use holding::PrepareFailure;
use link::{Link, Timeouts};
use login::LoggedIn;
use relay::RelayEnd;
use statements::ClientStatements;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;
use waiting::{WaitOutcome, send_fatal};

/// Where a session is. Each state owns what it needs; there are no side flags.
enum SessionState {
    /// Logged in, holding no server, waiting for the client's next request.
    Idle,
    /// The client sent a request and is queued for a server since `since`.
    Waiting {
        /// When the wait began.
        since: Instant,
    },
    /// Relaying on a server (boxed: an idle session should stay small).
    Active(Box<Active>),
    /// Ended from outside while idle: the client is told why, then the session ends.
    Killed(Box<crate::clients::Kill>),
    /// Its server was reclaimed for waiting clients (idle_transaction_reclaim_timeout) and it
    /// was sent this FATAL at once (a client reading while idle, like tokio-postgres or
    /// asyncpg, hears it then and leaves). The connection stays open, holding no server, until
    /// the client speaks or leaves; if it speaks, the same error answers its request (see
    /// `answer_reclaimed`), so a client that reads only when it sends hears why too.
    Reclaimed(Box<PgError>),
}

/// The data of the `Active` state.
struct Active {
    /// The server lent to this client.
    server: PooledServer,
    /// What is still due on it.
    link: Link,
}

/// What ended an idle session's wait.
enum IdleWake {
    /// The client sent (part of) a request.
    Request,
    /// A stale readiness: nothing to read after all.
    Nothing,
    /// The client closed its connection.
    Left,
    /// The client was ended from outside.
    Killed(crate::clients::Kill),
    /// A notification for the client (LISTEN in transaction mode) was put in its output.
    Notification,
}

/// Why a logged-in session ended.
enum Ending {
    /// The client said goodbye or closed.
    ClientLeft,
    /// sluice ends the session with this error (already sent where possible).
    Error(PgError),
    /// An upgrade handed the client to the new process, which serves it now.
    HandedOver,
}

struct Session {
    client: ClientIo,
    login: LoggedIn,
    state: SessionState,
    /// The client's named prepared statements (transaction mode; created on first use).
    statements: Option<Box<ClientStatements>>,
    /// The client's LISTEN channels and notifications (transaction mode; created on first LISTEN).
    listening: Option<Box<listen::Listening>>,
}

impl Session {
    async fn run(&mut self) -> Ending {
        loop {
            // Only the idle wait runs in this frame; everything else is boxed (in plain
            // functions: a future built in this frame would keep room in it even once moved),
            // and what the wait returned is not kept across those awaits: an idle client's task
            // carries just what waiting for input needs (`serve_session`'s size is tested).
            let next = match self.state {
                SessionState::Idle | SessionState::Reclaimed(_) => {
                    let rare = match self.idle_wait().await {
                        IdleWake::Nothing => continue,
                        IdleWake::Left => return Ending::ClientLeft,
                        IdleWake::Request if matches!(self.state, SessionState::Idle) => {
                            match self.step_idle() {
                                Ok(state) => {
                                    self.state = state;
                                    continue;
                                }
                                Err(ending) => return ending,
                            }
                        }
                        IdleWake::Killed(kill) if kill != crate::clients::Kill::HandOver => {
                            self.state = SessionState::Killed(Box::new(kill));
                            continue;
                        }
                        wake => self.boxed_after_idle(wake),
                    };
                    match rare.await {
                        Some(next) => next,
                        None => continue,
                    }
                }
                _ => {
                    let busy = self.boxed_step_busy();
                    busy.await
                }
            };
            match next {
                Ok(state) => self.state = state,
                Err(ending) => return ending,
            }
        }
    }

    /// [`Session::step_busy`], boxed outside `run`'s frame.
    fn boxed_step_busy(&mut self) -> Pin<Box<impl Future<Output = Result<SessionState, Ending>> + '_>> {
        Box::pin(self.step_busy())
    }

    /// [`Session::after_idle`], boxed outside `run`'s frame.
    fn boxed_after_idle(
        &mut self,
        wake: IdleWake,
    ) -> Pin<Box<impl Future<Output = Option<Result<SessionState, Ending>>> + '_>> {
        Box::pin(self.after_idle(wake))
    }

    /// The rarer ends of an idle wait, which take awaits of their own: a reclaimed client's
    /// request, a notification to deliver, a hand-over. None: back to waiting.
    async fn after_idle(&mut self, wake: IdleWake) -> Option<Result<SessionState, Ending>> {
        match wake {
            IdleWake::Request => match std::mem::replace(&mut self.state, SessionState::Idle) {
                SessionState::Reclaimed(told) => Some(Err(self.answer_reclaimed(*told).await)),
                _ => Some(self.step_idle()),
            },
            IdleWake::Notification => self.deliver_idle().await.err().map(Err),
            IdleWake::Killed(crate::clients::Kill::HandOver) => match self.hand_over().await {
                Some(ending) => Some(Err(ending)),
                // Notifications taken out for a hand-over that did not happen.
                None if !self.client.outbuf.is_empty() => self.deliver_idle().await.err().map(Err),
                None => None,
            },
            IdleWake::Killed(kill) => Some(Ok(SessionState::Killed(Box::new(kill)))),
            IdleWake::Nothing => None,
            IdleWake::Left => Some(Err(Ending::ClientLeft)),
        }
    }

    /// A session that is waiting for a server or holding one, until it is idle again: one
    /// boxed future per transaction, whatever steps it takes.
    async fn step_busy(&mut self) -> Result<SessionState, Ending> {
        loop {
            let next = match std::mem::replace(&mut self.state, SessionState::Idle) {
                SessionState::Idle => return Ok(SessionState::Idle),
                SessionState::Reclaimed(told) => return Ok(SessionState::Reclaimed(told)),
                SessionState::Killed(kill) => return Err(self.end_with(kill.error(), false).await),
                SessionState::Waiting { since } => self.step_waiting(since).await?,
                SessionState::Active(active) => self.step_active(active).await?,
            };
            if matches!(next, SessionState::Idle | SessionState::Reclaimed(_)) {
                return Ok(next);
            }
            self.state = next;
        }
    }

    /// Idle: waits for the client's next request, or to be ended from outside: KILL_CLIENT,
    /// shutdown (the drain monitor) or client_idle_timeout (the janitor). Those timers live
    /// elsewhere, and this is one poll of two things (no `select!`), because this wait is all an
    /// idle client's task holds.
    fn idle_wait(&mut self) -> impl Future<Output = IdleWake> + '_ {
        self.client.shrink_when_empty();
        // `move`: the closure holds the one `&mut Session` (8 bytes), not a reference to each
        // field it uses (24), in every idle task.
        std::future::poll_fn(move |cx| {
            if !self.client.inbuf.is_empty() {
                return Poll::Ready(IdleWake::Request); // pipelined behind the last transaction
            }
            if let Poll::Ready(kill) = self.login.info().poll_killed_idle(cx) {
                return Poll::Ready(IdleWake::Killed(kill));
            }
            if let Some(l) = self.listening.as_deref_mut()
                && let Poll::Ready(Some(msg)) = l.poll_next(cx)
            {
                self.client.outbuf.extend_from_slice(&msg);
                return Poll::Ready(IdleWake::Notification);
            }
            match self.client.socket.poll_readable(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(_)) => Poll::Ready(IdleWake::Left),
                Poll::Ready(Ok(())) => Poll::Ready(match self.client.take_input() {
                    Ok(Input::Data) => IdleWake::Request,
                    Ok(Input::Nothing) => IdleWake::Nothing,
                    Ok(Input::Closed) | Err(_) => IdleWake::Left,
                }),
            }
        })
    }

    /// Idle, once the client sent something: queue it for a server (or see it leave).
    fn step_idle(&mut self) -> Result<SessionState, Ending> {
        if self.client.at_boundary()
            && self.client.inbuf.first() == Some(&crate::protocol::tags::frontend::TERMINATE)
        {
            return Err(Ending::ClientLeft);
        }
        // One clock reading for the event: the wait's start, and the checkout that follows in
        // the same poll (the record shows the client Waiting only if it queues, see
        // `wait_for_server`).
        Ok(SessionState::Waiting {
            since: Instant::now(),
        })
    }

    /// A request whose first message PostgreSQL would not accept gets no server at all (the
    /// relay refuses later messages the same way).
    fn refused_request(&self) -> Option<PgError> {
        let head = self.client.inbuf.get(..5).filter(|_| self.client.at_boundary())?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let total = usize::try_from(len).ok()?.checked_add(1)?;
        let e = crate::protocol::check_client_message(head[0], total).err()?;
        Some(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("invalid message from client: {e}"),
        ))
    }

    /// Sends a FATAL (after what is buffered, when `flush_first`) and ends the session with it;
    /// a client that does not read (one that overflowed its notifications) gets a few seconds.
    /// Boxed: its timer and writes are not carried in the futures of the steps that may end so.
    fn end_with(&mut self, e: PgError, flush_first: bool) -> Pin<Box<impl Future<Output = Ending> + '_>> {
        Box::pin(async move {
            let tell = async {
                if flush_first {
                    let _ = relay::flush_client(&mut self.client).await;
                }
                send_fatal(&mut self.client, &e).await;
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tell).await;
            Ending::Error(e)
        })
    }

    /// A reclaimed client spoke: its request is answered with the reclaim's error as an ERROR
    /// in a failed transaction, and the connection is closed. A libpq client (psycopg2,
    /// SQLAlchemy, Django) raises that error from the call it made, where an error followed by
    /// the close would be reported as "server closed the connection unexpectedly"; it finds the
    /// connection gone at its next call (a driver's rollback or close).
    async fn answer_reclaimed(&mut self, told: PgError) -> Ending {
        let answer = told.clone().with_severity(crate::protocol::Severity::Error);
        answer.encode(&mut self.client.outbuf);
        crate::protocol::messages::ready_for_query(&mut self.client.outbuf, TxStatus::Failed);
        let _ = relay::flush_client(&mut self.client).await;
        Ending::Error(told)
    }

    /// Waiting: get a server and bring it to the client's settings. The state is entered only
    /// from `Idle`, in the same poll, so `since` is also the clock reading for the first try.
    async fn step_waiting(&mut self, since: Instant) -> Result<SessionState, Ending> {
        if let Some(e) = self.refused_request() {
            return Err(self.end_with(e, false).await);
        }
        let mut now = since;
        loop {
            return match self.wait_for_server(since, now).await {
                WaitOutcome::Server(server, at) => match self.prepare(server, since, at).await {
                    Ok(active) => Ok(SessionState::Active(active)),
                    Err(PrepareFailure::ServerLost(e)) => {
                        // Nothing of the client's request reached that server: another one can
                        // take it, within the same query_wait_timeout (a PostgreSQL restart is
                        // no error).
                        let limit = self.login.pool.settings().query_wait_timeout;
                        if since.elapsed() < limit {
                            tracing::info!(client = self.login.info().id, error = %e, "server lost before the request was sent; getting another");
                            now = Instant::now();
                            self.login.info().set_phase_at(ClientPhase::Waiting, now);
                            continue;
                        }
                        let e =
                            PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("server conn crashed? {e}"));
                        Err(self.end_with(e, false).await)
                    }
                    Err(PrepareFailure::Refused(e)) => Err(self.end_with(e, false).await),
                },
                WaitOutcome::Failed => {
                    self.login.info().set_phase(ClientPhase::Idle);
                    Ok(SessionState::Idle)
                }
                WaitOutcome::ClientGone => Err(Ending::ClientLeft),
                WaitOutcome::Fatal(e) => Err(Ending::Error(e)),
            };
        }
    }

    /// Active: relay until the transaction ends (transaction mode), the client leaves, or
    /// something fails; then give the server back through the release path.
    async fn step_active(&mut self, mut active: Box<Active>) -> Result<SessionState, Ending> {
        let pool = &self.login.pool;
        // One load of the pool's settings for what this step needs of them (the mode too).
        let (mode, capacity, prepared_limit, pin, limits) = {
            let s = pool.settings();
            let pin = match s.mode {
                PoolMode::Transaction => s.pin,
                PoolMode::Session => crate::config::PinSessionState::Off,
            };
            (
                s.mode,
                s.max_prepared_statements,
                s.client_prepared_limit,
                pin,
                s.held_limits,
            )
        };
        let timeouts = timeouts(&limits, mode, active.link.pins.keeps_server());
        active.link.pins.set_policy(pin);
        // A client whose statements sluice already tracks keeps being tracked (if the setting
        // dropped to 0, its statements stay usable with an LRU of one).
        let statement_capacity = if self.statements.is_some() {
            capacity.max(1)
        } else {
            capacity
        };
        // The relay works on the boxed server in place.
        let end = {
            let mut ctx = relay::RelayContext {
                params: &mut self.login.params,
                statements: &mut self.statements,
                statement_capacity,
                prepared_limit,
                plans: &pool.plans,
                info: self.login.registered.info(),
                stats: &self.login.pool.stats,
                timeouts,
                release_when_idle: mode == PoolMode::Transaction && !active.link.pins.keeps_server(),
                emulates_listen: mode == PoolMode::Transaction,
                listen: &mut self.listening,
                listen_request: None,
            };
            relay::relay(
                &mut self.client,
                &mut active.link,
                &mut active.server.conn,
                &mut ctx,
            )
            .await
        };
        // The usual end, handled here: a transaction over with nothing to read back. Every other
        // end is handled in a future of its own, boxed only when it happens, so the future of
        // every transaction (boxed in `run`) does not carry their awaits.
        if !matches!(end, Ok(RelayEnd::TransactionDone))
            || self.login.params.reads_back_always()
            || active.link.resets.pending()
            || active.link.pins.pending()
        {
            return Box::pin(self.after_relay(active, end, mode, timeouts)).await;
        }
        if mode == PoolMode::Transaction && self.keeps_pinned(&active.link.pins) {
            // Session state that cannot move: the client keeps this server.
            if relay::flush_client(&mut self.client).await.is_err() {
                let Active { server, link } = *active;
                self.release_leaving(server, &link);
                return Err(Ending::ClientLeft);
            }
            return Ok(SessionState::Active(active));
        }
        {
            // Released at the moment of its last ReadyForQuery (no new clock reading); the link
            // is dropped in its box (not moved out), before the await below.
            let active = active;
            let server = active.server;
            self.release_at(server, &active.link, active.link.idle_since());
        }
        // Usually the relay wrote everything already: no write future is made then.
        if !self.client.outbuf.is_empty() && relay::flush_client(&mut self.client).await.is_err() {
            return Err(Ending::ClientLeft);
        }
        Ok(SessionState::Idle)
    }

    /// What follows a relay that did not simply end a transaction with nothing to read back
    /// (see [`Session::step_active`]): a LISTEN to answer, settings or pins to read back, the
    /// client gone, killed or timed out, a failure.
    async fn after_relay(
        &mut self,
        active: Box<Active>,
        end: Result<RelayEnd, relay::RelayError>,
        mode: PoolMode,
        timeouts: Timeouts,
    ) -> Result<SessionState, Ending> {
        let end = match end {
            Ok(RelayEnd::Listen(request)) => match Box::pin(self.answer_listen(*request, &active)).await {
                Some(done) => Ok(done),
                None => return Ok(SessionState::Active(active)),
            },
            Ok(RelayEnd::TransactionDone) => Ok(RelayEnd::TransactionDone),
            other => {
                if let Some(l) = self.listening.as_deref_mut() {
                    l.transaction_lost();
                }
                other
            }
        };
        let Active { mut server, mut link } = *active;
        if self.login.params.reads_back_always() {
            link.resets.may_have_changed();
            link.pins.may_have_changed();
        }
        match end {
            Ok(RelayEnd::TransactionDone) => {
                if link.resets.take() | link.pins.pending() {
                    match Box::pin(self.read_back(server, link, mode)).await {
                        settings::AfterReadBack::Release(s, l) => (server, link) = (s, *l),
                        settings::AfterReadBack::Next(next) => return next,
                    }
                }
                if mode == PoolMode::Transaction && self.keeps_pinned(&link.pins) {
                    // Session state that cannot move: the client keeps this server.
                    if relay::flush_client(&mut self.client).await.is_err() {
                        self.release_leaving(server, &link);
                        return Err(Ending::ClientLeft);
                    }
                    return Ok(SessionState::Active(Box::new(Active { server, link })));
                }
                // Released at the moment of its last ReadyForQuery (no new clock reading).
                self.release_at(server, &link, link.idle_since());
                if relay::flush_client(&mut self.client).await.is_err() {
                    return Err(Ending::ClientLeft);
                }
                Ok(SessionState::Idle)
            }
            Ok(RelayEnd::Terminated | RelayEnd::ClientGone) => {
                self.release_leaving(server, &link);
                Err(Ending::ClientLeft)
            }
            Ok(RelayEnd::Killed(kill @ crate::clients::Kill::Reclaimed(_))) => {
                // Taken back for a waiting client: rolled back and handed on by the release path.
                self.login.shared().leaks.record_reclaimed(self.login.info());
                self.release(server, &link);
                let told = kill.error();
                if relay::flush_client(&mut self.client).await.is_err() {
                    return Err(Ending::ClientLeft);
                }
                send_fatal(&mut self.client, &told).await;
                tracing::info!(client = self.login.info().id, "{}", told.message);
                Ok(SessionState::Reclaimed(Box::new(told)))
            }
            Ok(RelayEnd::Killed(kill)) => {
                drop(server); // whatever it was doing is abandoned with the client
                self.login.info().hold(None);
                Err(self.end_with(kill.error(), true).await)
            }
            Ok(RelayEnd::Listen(_)) => Err(Ending::ClientLeft), // answered above
            Ok(RelayEnd::TimedOut(expiry)) => {
                self.release(server, &link);
                Err(self.end_with(expiry.error(&timeouts), true).await)
            }
            Err(e) => match Box::pin(self.relay_failed(server, &link, e, mode)).await {
                Some(ending) => Err(ending),
                None => Ok(SessionState::Idle),
            },
        }
    }
}

/// The limits on a client holding a server; `pinned`: a transaction-mode client keeping its
/// server for session state (it is held to client_idle_timeout as a session-mode client is).
fn timeouts(p: &crate::pool::HeldLimits, mode: PoolMode, pinned: bool) -> Timeouts {
    Timeouts {
        query: p.query,
        idle_transaction: p.idle_transaction,
        transaction: p.transaction,
        // Between transactions a transaction-mode client holds no server (unless pinned);
        // the Idle state enforces client_idle_timeout then.
        client_idle: if mode == PoolMode::Session || pinned {
            p.client_idle
        } else {
            Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    /// An idle client's task is tokio's cell around the session future, in 128-byte steps: at
    /// 232 bytes of session the cell is 384 bytes; a few bytes more make it 512 for every idle
    /// client (bench/idle_clients.sh). Grow the session only on purpose.
    #[test]
    fn an_idle_session_stays_within_its_task_cell_step() {
        assert!(
            std::mem::size_of::<super::Session>() <= 232,
            "Session is {} bytes",
            std::mem::size_of::<super::Session>()
        );
    }

    /// The size of the future `f` returns (the session's tasks and steps, measured below).
    fn future_size<A, R, F: Fn(A) -> R>(_: &F) -> usize {
        std::mem::size_of::<R>()
    }

    /// The future tokio keeps for an idle client: the session and what `run` holds across its
    /// idle wait. tokio's cell adds 104 bytes and rounds up to 128: up to 280 bytes of future
    /// the cell is 384, past that 512 for every idle client. Debug builds lay futures out
    /// without that care, so this holds for release builds (`cargo test --release`).
    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "future layouts are compact in release builds only"
    )]
    fn an_idle_session_task_fits_a_384_byte_cell() {
        let size = future_size(&super::serve_session);
        eprintln!("session future: {size} bytes");
        assert!(size <= 280, "the session future is {size} bytes");
    }
    /// The future of a busy period, boxed anew for every transaction (and copied into its box
    /// as it is made): the rare ends of a step (errors, time limits, LISTEN, read-backs) are
    /// boxed apart, and the relay waits with no future per branch, so it stays under 1 KiB (it
    /// was 1,848 bytes with them inline). Release builds only, as above.
    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "future layouts are compact in release builds only"
    )]
    fn a_transaction_future_stays_small() {
        let size = future_size(&super::Session::step_busy);
        eprintln!("busy future: {size} bytes");
        assert!(size <= 1024, "the busy future is {size} bytes");
    }
}
