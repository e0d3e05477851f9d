//! The wire of a zero-drop upgrade (docs/upgrades.md): the versioned state format the old and
//! the new process exchange (`format`), passing descriptors with SCM_RIGHTS (`fdpass`), the
//! framed two-way channel over a unix socketpair (`channel`), and the outbox through which a
//! session hands itself (or a cancel request) to that channel. Base layer: nothing here knows
//! sessions or listeners; `handover/` at the top drives it.

pub(crate) mod channel;
mod fdpass;
pub(crate) mod format;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use tokio::sync::{mpsc, oneshot};

/// What a process sends its peer during a hand-over, apart from the channel's own steps.
pub(crate) enum Outgoing {
    /// An idle client: its state and its socket. `reply` says whether the peer adopted it (the
    /// old process keeps the client, and closes nothing, until the peer said yes).
    Client {
        /// The client's id in this process (its pool's idle servers wait for clients not
        /// on their way).
        id: u64,
        /// The session's state, in the transfer format.
        state: Box<format::ClientState>,
        /// The client's socket (a duplicate travels; this one is closed once adopted).
        socket: OwnedFd,
        /// Ok: adopted by the new process; Err: keep serving it here (why).
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A cancel request whose key this process does not know: the peer may.
    Cancel(format::CancelKeyState),
    /// Old to new: notifications (or the end of them) for a client handed over with channels.
    Forward {
        /// The client's marker channel.
        marker: String,
        /// What to say.
        what: Forwarded,
    },
}

/// What the old process says about a handed-over client's notifications, and what the new
/// process passes on to that client's session ([`Joins`]).
#[derive(Debug)]
pub(crate) enum Forwarded {
    /// Messages for the client, as it receives them, in order.
    Messages(Vec<bytes::Bytes>),
    /// The marker was read: nothing more comes.
    MarkerSeen,
    /// Forwarding stopped before the marker (why): some notifications may be missed.
    MarkerMissed(String),
}

/// In the new process: where the old process's forwarded notifications go, by marker channel,
/// for each client adopted with channels until its marker was seen. Bounded: one entry per
/// adopted client, and each entry's queue by the client's notify_queue_size.
#[derive(Default)]
pub(crate) struct Joins(Mutex<HashMap<String, mpsc::Sender<Forwarded>>>);

impl Joins {
    /// A client with `marker` waits for its forwarded notifications (`depth`: its queue bound).
    pub(crate) fn open(&self, marker: &str, depth: usize) -> mpsc::Receiver<Forwarded> {
        let (tx, rx) = mpsc::channel(depth.max(2));
        self.0.lock().insert(marker.to_string(), tx);
        rx
    }

    /// Passes `what` on to the client with `marker`, without waiting. A client that is gone, or
    /// whose queue is full (it is then told notifications may be missed), is forgotten.
    pub(crate) fn pass(&self, marker: &str, what: Forwarded) {
        let mut joins = self.0.lock();
        let Some(tx) = joins.get(marker) else {
            return;
        };
        let last = !matches!(what, Forwarded::Messages(_));
        // Full: the session sees its queue end without a marker ("may have been missed").
        if tx.try_send(what).is_err() || last {
            joins.remove(marker);
        }
    }

    /// The client with `marker` was not adopted after all.
    pub(crate) fn forget(&self, marker: &str) {
        self.0.lock().remove(marker);
    }

    /// The hand-over ended: every client still waiting is told its queue ended.
    pub(crate) fn close(&self) {
        self.0.lock().clear();
    }
}

/// Bound on parcels queued for the channel: sessions wait (bounded by their reply timeout)
/// rather than pile up.
pub(crate) const OUTBOX_DEPTH: usize = 256;

/// Where sessions put what goes to the peer process; empty while no hand-over runs.
#[derive(Default)]
pub(crate) struct Outbox(Mutex<Option<mpsc::Sender<Outgoing>>>);

impl Outbox {
    /// Opens the outbox for a hand-over; the receiver goes to the channel's writer.
    pub(crate) fn open(&self) -> mpsc::Receiver<Outgoing> {
        let (tx, rx) = mpsc::channel(OUTBOX_DEPTH);
        *self.0.lock() = Some(tx);
        rx
    }

    /// Closes it: the hand-over ended (done or failed).
    pub(crate) fn close(&self) {
        *self.0.lock() = None;
    }

    /// The sender, while a hand-over runs (cloned: the lock is not held across a send).
    pub(crate) fn sender(&self) -> Option<mpsc::Sender<Outgoing>> {
        self.0.lock().clone()
    }
}
