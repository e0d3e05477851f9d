//! A client handed over by an upgrade with its channels, until its notifications are in one
//! stream again (docs/upgrades.md, "LISTEN"): first what waited in its old mailbox, then what
//! the old process forwards up to its marker; meanwhile the client's own mailbox here is read
//! only up to the marker (what comes before it, the old process had too, and is dropped), and
//! what follows the marker waits in that mailbox (bounded as always) until the old process is
//! done. Bounded in time: past [`JOIN_LIMIT`] the client gets what there is and a NOTICE.

use super::mailbox::Mailbox;
use crate::protocol::PgError;
use crate::upgrade::Forwarded;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// The longest a handed-over client waits for both markers before its notifications flow as
/// usual (with a NOTICE that some may have been missed, or repeated).
pub(crate) const JOIN_LIMIT: Duration = Duration::from_secs(10);

/// Where the old process's forwarding stands.
enum OldSide {
    /// Messages may still come.
    Forwarding,
    /// It saw the marker: everything before it came.
    Complete,
    /// It stopped before the marker (why).
    Incomplete(String),
}

/// One handed-over client's join.
pub(super) struct Join {
    /// The hand-over's marker channel.
    pub(super) marker: String,
    /// Messages to write before anything else (the old mailbox's, then forwarded ones).
    ready: VecDeque<Bytes>,
    from_old: mpsc::Receiver<Forwarded>,
    old: OldSide,
    /// The marker came through this process's own listening connection.
    own_marker_seen: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// What one look at a join gives.
pub(super) enum JoinPoll {
    /// The next message for the client.
    Message(Bytes),
    /// Nothing yet.
    Pending,
    /// Joined: the client's own mailbox is its stream now; the NOTICE to send first, if any.
    Done(Option<Bytes>),
}

impl Join {
    pub(super) fn new(marker: String, queued: Vec<Bytes>, from_old: mpsc::Receiver<Forwarded>) -> Join {
        Join {
            marker,
            ready: queued.into(),
            from_old,
            old: OldSide::Forwarding,
            own_marker_seen: false,
            deadline: Box::pin(tokio::time::sleep(JOIN_LIMIT)),
        }
    }

    /// The next step; `own` is the client's mailbox here (read up to the marker only).
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        own: &mut mpsc::Receiver<Bytes>,
        mailbox: &Mailbox,
    ) -> JoinPoll {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return JoinPoll::Message(m);
            }
            if !matches!(self.old, OldSide::Forwarding) {
                break;
            }
            match self.from_old.poll_recv(cx) {
                Poll::Ready(Some(Forwarded::Messages(batch))) => self.ready.extend(batch),
                Poll::Ready(Some(Forwarded::MarkerSeen)) => self.old = OldSide::Complete,
                Poll::Ready(Some(Forwarded::MarkerMissed(why))) => self.old = OldSide::Incomplete(why),
                Poll::Ready(None) => {
                    self.old = OldSide::Incomplete("the old process's forwarding ended early".to_string());
                }
                Poll::Pending => break,
            }
        }
        while !self.own_marker_seen {
            match own.poll_recv(cx) {
                Poll::Ready(Some(m)) => {
                    mailbox.taken(m.len());
                    // Before the marker: the old process had it (and forwards it) — dropped.
                    self.own_marker_seen = super::task::channel_of(&m) == Some(self.marker.as_bytes());
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        match (&self.old, self.own_marker_seen) {
            (OldSide::Complete, true) => return JoinPoll::Done(None),
            (OldSide::Incomplete(why), true) => return JoinPoll::Done(Some(self.notice(why))),
            _ => {}
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let why = format!(
                "the hand-over's marker did not arrive within {}",
                crate::config::format_duration(JOIN_LIMIT)
            );
            return JoinPoll::Done(Some(self.notice(&why)));
        }
        JoinPoll::Pending
    }

    /// The NOTICE for a join that did not complete, as for a lost listening connection.
    fn notice(&self, why: &str) -> Bytes {
        tracing::warn!(marker = %self.marker, "upgrade: a client's notifications may have been missed: {why}");
        let notice = PgError::notice(
            "sluice: the listening connection was lost and restored; notifications may have been missed",
        )
        .with_detail(format!(
            "the connection moved to a new sluice process during an upgrade, and {why}"
        ))
        .with_hint("Re-read whatever state the notifications announce.");
        let mut out = BytesMut::new();
        notice.encode(&mut out);
        out.freeze()
    }
}
