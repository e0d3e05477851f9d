//! The client's side of a session: its socket (whole: split by borrow where needed), the bytes read from it and not yet
//! forwarded, the bytes waiting to be written to it, and the scanner that keeps its framing.

use crate::protocol::{FrameScanner, PgError, TxStatus, messages};
use crate::stream::ClientSocket;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

/// The client connection after login.
pub(crate) struct ClientIo {
    pub(crate) socket: ClientSocket,
    /// Read from the client, not yet forwarded. Empty (and unallocated) while the client is idle.
    pub(crate) inbuf: BytesMut,
    /// Waiting to be written to the client.
    pub(crate) outbuf: BytesMut,
    pub(crate) scan: FrameScanner,
    /// Bytes read from / written to the client since the last transaction was counted.
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

/// What waiting for an idle client produced.
pub(crate) enum Input {
    /// Bytes arrived.
    Data,
    /// The client closed its socket.
    Closed,
    /// The readiness was stale: nothing to read after all.
    Nothing,
}

impl ClientIo {
    pub(crate) fn new(socket: ClientSocket, max_message: usize) -> ClientIo {
        ClientIo {
            socket,
            inbuf: BytesMut::new(),
            outbuf: BytesMut::new(),
            // Messages decoded whole (Terminate; Parse, Describe, Close, short Queries when
            // prepared statements are tracked) are bounded like any other.
            scan: FrameScanner::new(max_message, max_message),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// True when no client message is half-forwarded.
    pub(crate) fn at_boundary(&self) -> bool {
        self.scan.at_boundary()
    }

    /// Gives back buffer memory while idle: an idle client owns no buffers.
    pub(crate) fn shrink_when_empty(&mut self) {
        if self.inbuf.is_empty() {
            self.inbuf = BytesMut::new();
        }
        if self.outbuf.is_empty() {
            self.outbuf = BytesMut::new();
        }
    }

    /// After the socket reported readiness: takes what the client sent (`inbuf` grows by
    /// exactly what arrived).
    pub(crate) fn take_input(&mut self) -> std::io::Result<Input> {
        Ok(match self.socket.reader().read_ready_exact(&mut self.inbuf)? {
            None => Input::Nothing,
            Some(0) => Input::Closed,
            Some(n) => {
                self.bytes_in += n as u64;
                Input::Data
            }
        })
    }

    /// Waits for bytes from the client and appends exactly them to `inbuf` (0: the client
    /// closed), so a client that is idle or queued for a server holds no read buffer beyond
    /// what it sent.
    pub(crate) async fn read_input(&mut self) -> std::io::Result<usize> {
        let mut reader = self.socket.reader();
        loop {
            reader.wait_readable().await?;
            if let Some(n) = reader.read_ready_exact(&mut self.inbuf)? {
                self.bytes_in += n as u64;
                return Ok(n);
            }
        }
    }

    /// Sends an error (and ReadyForQuery when it is not FATAL), flushing what was buffered first.
    pub(crate) async fn send_error(
        &mut self,
        error: &PgError,
        ready_status: Option<TxStatus>,
    ) -> std::io::Result<()> {
        error.encode(&mut self.outbuf);
        if let Some(status) = ready_status {
            messages::ready_for_query(&mut self.outbuf, status);
        }
        self.socket.writer().write_all(&self.outbuf).await?;
        self.outbuf.clear();
        Ok(())
    }
}
