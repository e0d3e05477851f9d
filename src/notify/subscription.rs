//! A client's side of LISTEN in transaction pooling: the channels it listens on (committed, and
//! what its open transaction will change at COMMIT), bounded by max_client_listen_channels, and
//! the receiving end of its mailbox. Dropping it unsubscribes the client everywhere.

use super::NotifyLimits;
use super::hub::{Hub, Phase};
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
        }
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
        let phase = if in_transaction {
            Phase::Pending
        } else {
            Phase::Active
        };
        self.hub
            .subscribe(self.id, channel, phase, self.limits.pool_channels)?;
        self.channels.insert(
            channel.to_string(),
            Wish {
                committed: !in_transaction,
                wanted: true,
            },
        );
        if let Err(e) = self.hub.wait_confirmed(channel, wait).await {
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
