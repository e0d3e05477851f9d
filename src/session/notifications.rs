//! The session's side of LISTEN in transaction pooling: answering a LISTEN request the relay
//! handed over (`listen.rs` decides the reply), and writing notifications to an idle client
//! without ever waiting on one that does not read.

use super::listen::{Answered, ListenRequest, answer};
use super::relay::{OUT_CAP, RelayEnd};
use crate::notify::NotifyLimits;
use crate::protocol::TxStatus;
use bytes::BytesMut;

impl super::Session {
    /// Answers a LISTEN request the relay handed over (nothing in flight on `active`'s server).
    /// Returns how the relay stretch ends (the transaction is over when the server is idle), or
    /// None to go on relaying on the same server: inside a transaction, or to send the server a
    /// failed LISTEN's replacement.
    pub(super) async fn answer_listen(
        &mut self,
        request: ListenRequest,
        active: &super::Active,
    ) -> Option<RelayEnd> {
        let status = active.server.conn.tx_status;
        let shared = self.login.shared().clone();
        let pool = self.login.pool.clone();
        let wait = shared.config.load().pooler.query_wait_timeout;
        let info = self.login.info().clone();
        let hub = || {
            let limits = NotifyLimits::of(&shared.config.load().pooler);
            (shared.notify.hub(&pool), limits)
        };
        match answer(&mut self.listening, request, status, hub, &info, wait).await {
            Answered::Reply(out) => {
                self.client.outbuf.extend_from_slice(&out);
                if status == TxStatus::Idle {
                    return Some(RelayEnd::TransactionDone);
                }
                None
            }
            Answered::ReplyThenSync(out) => {
                self.client.outbuf.extend_from_slice(&out);
                let mut input = BytesMut::from(&b"S\0\0\0\x04"[..]);
                input.extend_from_slice(&self.client.inbuf);
                self.client.inbuf = input;
                None
            }
            Answered::Fail(messages) => {
                let mut input = messages;
                input.extend_from_slice(&self.client.inbuf);
                self.client.inbuf = input;
                None
            }
        }
    }

    /// Idle: writes the notifications waiting for the client. A client that does not read is
    /// ended when its mailbox overflows (its kill switch), even while this write waits; what was
    /// not written yet stays in the output, so the FATAL follows whole messages.
    pub(super) async fn deliver_idle(&mut self) -> Result<(), super::Ending> {
        use bytes::Buf;
        use tokio::io::AsyncWriteExt;
        if let Some(l) = self.listening.as_deref_mut() {
            l.drain_into(&mut self.client.outbuf, OUT_CAP);
        }
        let info = self.login.info().clone();
        // Busy writing: an upgrade's request to hand over waits until the output is written
        // (the idle loop sees it then); any other kill ends the client now.
        let killed = info.killed(true);
        tokio::pin!(killed);
        let kill = loop {
            if self.client.outbuf.is_empty() {
                self.client.outbuf = BytesMut::new();
                return Ok(());
            }
            let mut writer = self.client.socket.writer();
            tokio::select! {
                r = writer.write(&self.client.outbuf) => match r {
                    Ok(0) | Err(_) => return Err(super::Ending::ClientLeft),
                    Ok(n) => {
                        self.client.bytes_out += n as u64;
                        self.client.outbuf.advance(n);
                    }
                },
                kill = &mut killed => break kill,
            }
        };
        Err(self.end_with(kill.error(), true).await)
    }
}
