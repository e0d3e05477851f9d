//! The wire of a zero-drop upgrade (docs/upgrades.md): the versioned state format the old and
//! the new process exchange (`format`), passing descriptors with SCM_RIGHTS (`fdpass`), the
//! framed two-way channel over a unix socketpair (`channel`), and the outbox through which a
//! session hands itself (or a cancel request) to that channel. Base layer: nothing here knows
//! sessions or listeners; `handover/` at the top drives it.

pub(crate) mod channel;
mod fdpass;
pub(crate) mod format;

use parking_lot::Mutex;
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
