//! A client's side of LISTEN in transaction pooling: the channels it listens on (committed, and
//! what its open transaction will change at COMMIT), bounded by max_client_listen_channels, and
//! the receiving end of its mailbox. Dropping it unsubscribes the client everywhere.

use super::NotifyLimits;
use super::hub::{Hub, Phase};
use super::join::{Join, JoinPoll};
use super::mailbox::Mailbox;
use crate::protocol::{PgError, sqlstate};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// One channel of a client: whether it listens now, and whether it will after its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wish {
    committed: bool,
    wanted: bool,
}

/// A client's subscriptions in its pool's hub.
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    mailbox: Arc<Mailbox>,
    rx: mpsc::Receiver<Bytes>,
    channels: HashMap<String, Wish>,
    limits: NotifyLimits,
    /// Set while a client handed over by an upgrade joins its notification streams.
    join: Option<Box<Join>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// A client's (empty) subscription in `hub`.
    pub(crate) fn new(
        hub: Arc<Hub>,
        client: Arc<crate::clients::ClientInfo>,
        limits: NotifyLimits,
    ) -> Subscription {
        let (mailbox, rx) = Mailbox::new(client, limits.queue_messages, limits.queue_bytes);
        let id = hub.register(mailbox.clone());
        Subscription {
            hub,
            id,
            mailbox,
            rx,
            channels: HashMap::new(),
            limits,
            join: None,
        }
    }

    /// A client handed over by an upgrade, listening on `channels` (committed) and on the
    /// hand-over's `marker`, whose NOTIFY is asked for once the pool's listening connection
    /// LISTENs on them all. Its stream: `queued` (its old mailbox), then what the old process
    /// forwards (`from_old`), then its own from the marker on ([`Join`]).
    pub(crate) fn adopt(
        hub: Arc<Hub>,
        client: Arc<crate::clients::ClientInfo>,
        limits: NotifyLimits,
        channels: &[String],
        marker: &str,
        queued: Vec<Bytes>,
        from_old: mpsc::Receiver<crate::upgrade::Forwarded>,
    ) -> Result<Subscription, PgError> {
        if channels.len() > limits.client_channels {
            return Err(PgError::error(
                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "too many LISTEN channels for this client: at most {} (max_client_listen_channels)",
                    limits.client_channels
                ),
            ));
        }
        let mut sub = Subscription::new(hub, client, limits);
        for c in channels {
            // Dropping `sub` on an error unsubscribes what was subscribed.
            sub.hub
                .subscribe(sub.id, c, Phase::Active, limits.pool_channels)?;
            let wish = Wish {
                committed: true,
                wanted: true,
            };
            sub.channels.insert(c.clone(), wish);
        }
        sub.hub
            .subscribe(sub.id, marker, Phase::Active, limits.pool_channels)?;
        sub.hub.mark(marker.to_string());
        sub.join = Some(Box::new(Join::new(marker.to_string(), queued, from_old)));
        Ok(sub)
    }

    /// The old process's side of a hand-over: listens on the private `marker` too (outside the
    /// client's own channels and their bound), returning once the connection LISTENs on it.
    pub(crate) async fn listen_marker(&mut self, marker: &str, wait: Duration) -> Result<(), PgError> {
        self.hub
            .subscribe(self.id, marker, Phase::Active, self.limits.pool_channels)?;
        if let Err(e) = self.hub.wait_confirmed(marker, 0, wait).await {
            self.hub.unsubscribe(self.id, marker);
            return Err(e);
        }
        Ok(())
    }

    /// Stops listening on a hand-over's marker (the client stays, or its join ended).
    pub(crate) fn drop_marker(&mut self, marker: &str) {
        self.hub.unsubscribe(self.id, marker);
    }

    /// True while a client moved by an upgrade is still joining its notification streams.
    pub(crate) fn joining(&self) -> bool {
        self.join.is_some()
    }

    /// The channels the client listens on (committed).
    pub(crate) fn committed_channels(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, w)| w.committed)
            .map(|(c, _)| c.clone())
            .collect();
        out.sort();
        out
    }

    /// Every message waiting in the mailbox now, in order.
    pub(crate) fn take_waiting(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(msg) = self.rx.try_recv() {
            self.mailbox.taken(msg.len());
            out.push(msg);
        }
        out
    }

    /// True when `msg` is a notification on `channel`.
    pub(crate) fn is_on(msg: &[u8], channel: &str) -> bool {
        super::task::channel_of(msg) == Some(channel.as_bytes())
    }

    /// LISTEN: at once, or at COMMIT when `in_transaction`. Returns once the pool's listening
    /// connection LISTENs on the channel (within `wait`), so nothing NOTIFYed afterwards is missed.
    pub(crate) async fn listen(
        &mut self,
        channel: &str,
        in_transaction: bool,
        wait: Duration,
    ) -> Result<(), PgError> {
        if let Some(w) = self.channels.get_mut(channel) {
            w.wanted = true;
            if !in_transaction && !w.committed {
                w.committed = true;
                self.hub.activate(self.id, channel);
            }
            return Ok(());
        }
        if self.channels.len() >= self.limits.client_channels {
            return Err(PgError::error(
                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "too many LISTEN channels for this client: at most {} (max_client_listen_channels)",
                    self.limits.client_channels
                ),
            ));
        }
        // Inside a transaction nothing is delivered before its COMMIT; outside, from a fence on,
        // so that what the connection reads later but was committed before is not delivered.
        let fence = if in_transaction {
            self.hub
                .subscribe(self.id, channel, Phase::Pending, self.limits.pool_channels)?;
            0
        } else {
            self.hub
                .subscribe_fenced(self.id, channel, self.limits.pool_channels)?
        };
        self.channels.insert(
            channel.to_string(),
            Wish {
                committed: !in_transaction,
                wanted: true,
            },
        );
        if let Err(e) = self.hub.wait_confirmed(channel, fence, wait).await {
            self.channels.remove(channel);
            self.hub.unsubscribe(self.id, channel);
            return Err(e);
        }
        Ok(())
    }

    /// UNLISTEN one channel: at once, or at COMMIT when `in_transaction`.
    pub(crate) fn unlisten(&mut self, channel: &str, in_transaction: bool) {
        let Some(w) = self.channels.get_mut(channel) else {
            return;
        };
        w.wanted = false;
        if !in_transaction || !w.committed {
            self.channels.remove(channel);
            self.hub.unsubscribe(self.id, channel);
        }
    }

    /// UNLISTEN *.
    pub(crate) fn unlisten_all(&mut self, in_transaction: bool) {
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            self.unlisten(&name, in_transaction);
        }
    }

    /// The client's transaction ended: what it did takes effect (`committed`) or is undone.
    pub(crate) fn end_transaction(&mut self, committed: bool) {
        let hub = &self.hub;
        let id = self.id;
        self.channels.retain(|name, w| {
            if committed {
                w.committed = w.wanted;
            } else {
                w.wanted = w.committed;
            }
            if w.committed {
                hub.activate(id, name);
                true
            } else {
                hub.unsubscribe(id, name);
                false
            }
        });
    }

    /// True while an open transaction has changes to apply at its end.
    pub(crate) fn has_pending(&self) -> bool {
        self.channels.values().any(|w| w.committed != w.wanted)
    }

    /// True when the client listens on nothing (and will not after its transaction).
    pub(crate) fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// The next message for the client, waking the task when one comes.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(join) = self.join.as_deref_mut() {
            match join.poll(cx, &mut self.rx, &self.mailbox) {
                JoinPoll::Message(m) => return Poll::Ready(Some(m)),
                JoinPoll::Pending => return Poll::Pending,
                JoinPoll::Done(notice) => {
                    let marker = std::mem::take(&mut join.marker);
                    self.join = None;
                    self.hub.unsubscribe(self.id, &marker);
                    if let Some(n) = notice {
                        return Poll::Ready(Some(n));
                    }
                }
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(msg)) => {
                self.mailbox.taken(msg.len());
                Poll::Ready(Some(msg))
            }
            other => other,
        }
    }

    /// The next message for the client, if one is waiting.
    pub(crate) fn try_next(&mut self) -> Option<Bytes> {
        if self.join.is_some() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            return match self.poll_next(&mut cx) {
                Poll::Ready(m) => m,
                Poll::Pending => None,
            };
        }
        let msg = self.rx.try_recv().ok()?;
        self.mailbox.taken(msg.len());
        Some(msg)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.deregister(self.id);
    }
}
