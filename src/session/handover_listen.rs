//! An upgrade's hand-over of a LISTENing client (docs/upgrades.md, "LISTEN"). Old process: the
//! pool's listening connection first LISTENs on a marker channel private to this move; the
//! client goes with its channels and the notifications already waiting; once the new process
//! adopted it, what that connection reads for the client up to the marker is forwarded over
//! the upgrade channel (never written to the socket, which the new process serves now). New
//! process: the client is subscribed to its channels and the marker, and its streams are
//! joined in order (`notify/join.rs`).

use super::Session;
use super::listen::Listening;
use crate::notify::{JOIN_LIMIT, NotifyLimits, Subscription};
use crate::pool::Pool;
use crate::shared::Shared;
use crate::upgrade::format::ListenState;
use crate::upgrade::{Forwarded, Outgoing};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Numbers the markers of this process's hand-overs (a retried upgrade gets new ones).
static MARKERS: AtomicU64 = AtomicU64::new(1);

/// Most messages in one `notifications` frame.
const FORWARD_BATCH: usize = 256;

impl Session {
    /// Old process: for a client with channels, the pool's listening connection LISTENs on a
    /// new marker; returns what the state carries (None: it listens on nothing). Err: the
    /// marker could not be LISTENed (why); the client stays here.
    pub(super) async fn export_listen(&mut self) -> Result<Option<ListenState>, String> {
        let wait = self.login.shared().config.load().pooler.query_wait_timeout;
        if self.listening.as_deref().is_some_and(|l| l.joining()) {
            self.finish_join().await?;
        }
        let Some(l) = self.listening.as_deref_mut().filter(|l| l.has_channels()) else {
            return Ok(None);
        };
        let marker = format!(
            "sluice_handover_{}_{}",
            std::process::id(),
            MARKERS.fetch_add(1, Ordering::Relaxed)
        );
        let sub = l.subscription();
        sub.listen_marker(&marker, wait).await.map_err(|e| e.message)?;
        Ok(Some(ListenState {
            channels: sub.committed_channels(),
            marker,
            queued: sub.take_waiting().into_iter().map(|b| b.to_vec()).collect(),
        }))
    }

    /// A client moved here by the previous upgrade and asked to move on before its streams
    /// were joined: the join is finished first (its notifications written to the client), so
    /// that what goes on is one stream. Bounded: the join ends within [`JOIN_LIMIT`].
    async fn finish_join(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + JOIN_LIMIT + std::time::Duration::from_secs(1);
        let late = || "its notifications from the previous upgrade were not joined in time".to_string();
        while let Some(l) = self.listening.as_deref_mut().filter(|l| l.joining()) {
            // A join that ends with nothing waiting ends the wait too (else it would last until
            // the next notification, or the deadline on a quiet channel).
            let next = std::future::poll_fn(|cx| match l.poll_next(cx) {
                std::task::Poll::Pending if !l.joining() => std::task::Poll::Ready(None),
                other => other,
            });
            match tokio::time::timeout_at(deadline, next).await {
                Ok(Some(m)) => self.client.outbuf.extend_from_slice(&m),
                Ok(None) => break,
                Err(_) => return Err(late()),
            }
            if self.client.outbuf.len() >= super::relay::OUT_CAP {
                self.flush_by(deadline)
                    .await
                    .map_err(|e| e.unwrap_or_else(late))?;
            }
        }
        self.flush_by(deadline).await.map_err(|e| e.unwrap_or_else(late))
    }

    /// Writes the client's output by `deadline`. Err(None): not in time.
    async fn flush_by(&mut self, deadline: tokio::time::Instant) -> Result<(), Option<String>> {
        let flush = super::relay::flush_client(&mut self.client);
        match tokio::time::timeout_at(deadline, flush).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Some(e.to_string())),
            Err(_) => Err(None),
        }
    }

    /// Old process: the client stays after all. Its marker goes, and the notifications taken
    /// out of its mailbox for the state are written first.
    pub(super) fn keep_listen(&mut self, listen: ListenState) {
        if let Some(l) = self.listening.as_deref_mut() {
            l.subscription().drop_marker(&listen.marker);
        }
        for m in listen.queued {
            self.client.outbuf.extend_from_slice(&m);
        }
    }

    /// Old process, once the new one adopted the client: forwards what the listening
    /// connection reads for it up to `marker`, then says the marker was seen, or why
    /// forwarding stopped before it (a kill: upgrade_timeout, a mailbox overflow; or
    /// [`JOIN_LIMIT`]).
    pub(super) async fn forward_listen(&mut self, marker: String, outbox: &mpsc::Sender<Outgoing>) {
        let info = self.login.info().clone();
        // It was asked once and has gone; only another reason ends the forwarding.
        info.withdraw_hand_over();
        let send = |what: Forwarded| Outgoing::Forward {
            marker: marker.clone(),
            what,
        };
        let Some(sub) = self.listening.as_deref_mut().map(Listening::subscription) else {
            let _ = outbox
                .send(send(Forwarded::MarkerMissed("no subscription".into())))
                .await;
            return;
        };
        let deadline = tokio::time::Instant::now() + JOIN_LIMIT;
        let killed = info.killed(false);
        tokio::pin!(killed);
        let end = loop {
            let first = tokio::select! {
                m = std::future::poll_fn(|cx| sub.poll_next(cx)) => m,
                _ = tokio::time::sleep_until(deadline) => break Forwarded::MarkerMissed(format!(
                    "the old process did not see the marker within {}",
                    crate::config::format_duration(JOIN_LIMIT)
                )),
                kill = &mut killed => break Forwarded::MarkerMissed(kill.error().message),
            };
            let mut next = first;
            let mut batch = Vec::new();
            let mut seen = false;
            while let Some(m) = next {
                if Subscription::is_on(&m, &marker) {
                    seen = true;
                    break;
                }
                batch.push(m);
                if batch.len() >= FORWARD_BATCH {
                    break;
                }
                next = sub.try_next();
            }
            if !batch.is_empty() && outbox.send(send(Forwarded::Messages(batch))).await.is_err() {
                return; // the hand-over ended: the new process is gone with the client
            }
            if seen {
                break Forwarded::MarkerSeen;
            }
        };
        let _ = outbox.send(send(end)).await;
    }
}

/// New process: subscribes a client handed over with channels in its pool's hub, and asks the
/// listening connection to NOTIFY the marker once it LISTENs on them all. Err: the client is
/// not taken (a bound here refuses its channels).
pub(super) fn adopt_listen(
    shared: &Shared,
    pool: &Arc<Pool>,
    info: &Arc<crate::clients::ClientInfo>,
    listen: ListenState,
) -> Result<Box<Listening>, String> {
    let limits = NotifyLimits::of(&shared.config.load().pooler);
    let from_old = shared.joins.open(&listen.marker, limits.queue_messages);
    let queued: Vec<Bytes> = listen.queued.into_iter().map(Bytes::from).collect();
    let hub = shared.notify.hub(pool);
    match Subscription::adopt(
        hub,
        info.clone(),
        limits,
        &listen.channels,
        &listen.marker,
        queued,
        from_old,
    ) {
        Ok(sub) => Ok(Box::new(Listening::adopted(sub))),
        Err(e) => {
            shared.joins.forget(&listen.marker);
            Err(e.message)
        }
    }
}
