//! One client's bounded mailbox of notifications: a bounded channel plus a byte count, filled
//! only with `try_send` (the listening connection never waits for a client). A client that lets
//! it overflow is dropped from delivery and told to go (FATAL, through its kill switch).

use crate::clients::{ClientInfo, Kill};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// The sending side of a client's mailbox, shared by the hub (which fills it) and the session
/// (which counts the bytes it takes out).
#[derive(Debug)]
pub(crate) struct Mailbox {
    tx: mpsc::Sender<Bytes>,
    /// Bytes waiting in the channel.
    bytes: AtomicUsize,
    max_messages: usize,
    max_bytes: usize,
    /// The client overflowed: nothing more is delivered, and it has been told to go.
    overflowed: AtomicBool,
    client: Arc<ClientInfo>,
}

/// What became of one message offered to a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued for the client.
    Queued,
    /// Not queued: the client is over its bounds (or gone).
    Dropped,
}

impl Mailbox {
    /// A mailbox for `client` holding at most `max_messages` messages and `max_bytes` bytes.
    pub(crate) fn new(
        client: Arc<ClientInfo>,
        max_messages: usize,
        max_bytes: usize,
    ) -> (Arc<Mailbox>, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(max_messages.max(1));
        let mailbox = Mailbox {
            tx,
            bytes: AtomicUsize::new(0),
            max_messages,
            max_bytes,
            overflowed: AtomicBool::new(false),
            client,
        };
        (Arc::new(mailbox), rx)
    }

    /// Offers one encoded message without waiting. Past either bound the client is dropped from
    /// delivery and ended with a FATAL saying why.
    pub(crate) fn offer(&self, msg: Bytes) -> Offer {
        if self.overflowed.load(Ordering::Acquire) {
            return Offer::Dropped;
        }
        let n = msg.len();
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.max_bytes {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            self.overflow();
            return Offer::Dropped;
        }
        match self.tx.try_send(msg) {
            Ok(()) => Offer::Queued,
            Err(e) => {
                self.bytes.fetch_sub(n, Ordering::AcqRel);
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    self.overflow();
                }
                Offer::Dropped
            }
        }
    }

    /// The session took a message of `n` bytes out.
    pub(crate) fn taken(&self, n: usize) {
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(n)));
    }

    fn overflow(&self) {
        if self.overflowed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            client = self.client.id,
            "client does not read its notifications; disconnecting it (notify_queue_size {}, notify_queue_bytes {})",
            self.max_messages,
            self.max_bytes
        );
        self.client.kill_with(Kill::NotifyOverflow {
            messages: self.max_messages,
            bytes: self.max_bytes,
        });
    }
}
