//! Relaying between a client and the server it holds: both directions at once with bounded
//! buffers, server responses forwarded as bytes in batches, and just enough tracking of what is
//! still due (Query/Sync answered by ReadyForQuery, COPY, the transaction status) to know when the
//! server may go back to the pool and in what state a departing client leaves it.

use super::client::ClientIo;
use super::params::ClientParams;
use crate::pool::Disposition;
use crate::protocol::{FrameError, FrameScanner, MAX_LOGIN_MESSAGE, ScanItem};
use crate::server::ServerConn;
use bytes::{Buf, BytesMut};
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Stop reading a peer once this much is waiting to be written to the other side.
pub(super) const OUT_CAP: usize = 64 * 1024;
/// Bytes requested per socket read.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Most requests (Query or Sync) in flight before sluice stops reading the client.
const MAX_PENDING: usize = 4096;

/// A request whose answer ends with ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// A simple Query (or FunctionCall).
    Query,
    /// A Sync closing an extended-protocol batch.
    Sync,
}

/// What is still due from the server, and its transaction status.
#[derive(Debug)]
pub(super) struct Link {
    pending: VecDeque<Request>,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// The server is in COPY FROM STDIN: Syncs are ignored by it until CopyDone/CopyFail.
    copy_in: bool,
    server_scan: FrameScanner,
    /// Client bytes on their way to the server.
    pub(super) to_server: BytesMut,
}

/// How a relay stretch ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RelayEnd {
    /// The transaction ended (ReadyForQuery `I`, nothing due): the server may be released.
    TransactionDone,
    /// The client sent Terminate.
    Terminated,
    /// The client closed its socket.
    ClientGone,
}

/// Why relaying stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub(super) enum RelayError {
    /// Reading or writing the client failed.
    #[error("client connection failed: {0}")]
    Client(std::io::Error),
    /// The client broke the framing.
    #[error("client protocol violation: {0}")]
    ClientProtocol(FrameError),
    /// Reading or writing the server failed, or it closed.
    #[error("server connection failed: {0}")]
    Server(std::io::Error),
    /// The server broke the framing.
    #[error("server protocol violation: {0}")]
    ServerProtocol(String),
}

impl Link {
    /// Fresh tracking for a server that is at ReadyForQuery.
    pub(super) fn new() -> Link {
        Link {
            pending: VecDeque::new(),
            unsynced: false,
            copy_in: false,
            server_scan: FrameScanner::new(MAX_LOGIN_MESSAGE, usize::MAX),
            to_server: BytesMut::new(),
        }
    }

    fn on_client_message(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.pending.push_back(Request::Query),
            b'S' if self.copy_in => {} // ignored by the server during COPY FROM STDIN
            b'S' => {
                self.pending.push_back(Request::Sync);
                self.unsynced = false;
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => self.unsynced = true,
            b'c' | b'f' => self.copy_in = false,
            _ => {}
        }
    }

    fn on_server_message(&mut self, tag: u8) {
        if tag == b'G' {
            self.copy_in = true;
            // COPY started by an Execute: the Syncs the client already sent after it are ignored
            // by the server until the copy ends, so no ReadyForQuery will answer them.
            if self.pending.front() == Some(&Request::Sync) {
                self.pending.retain(|r| *r != Request::Sync);
            }
        }
    }

    fn on_ready_for_query(&mut self) {
        self.pending.pop_front();
    }

    /// True when nothing is due from the server and no message is half-sent.
    fn quiet(&self, client: &ClientIo) -> bool {
        self.pending.is_empty()
            && !self.unsynced
            && !self.copy_in
            && self.to_server.is_empty()
            && self.server_scan.at_boundary()
            && client.at_boundary()
    }

    /// In what state the server is left if the client goes now.
    pub(super) fn disposition(&self, client: &ClientIo, server: &ServerConn) -> Disposition {
        if !self.quiet(client) || !server.read_buf.is_empty() {
            return Disposition::Close("client left with responses due or a message half-sent");
        }
        match server.tx_status {
            b'I' => Disposition::Clean,
            _ => Disposition::Rollback,
        }
    }
}

/// Relays until the transaction ends (when `release_when_idle`), the client leaves, or a side fails.
pub(super) async fn relay(
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    params: &mut ClientParams,
    release_when_idle: bool,
) -> Result<RelayEnd, RelayError> {
    loop {
        let terminated = pump_client(client, link)?;
        if pump_server(client, link, server, params)? && release_when_idle && link.quiet(client) {
            return Ok(RelayEnd::TransactionDone);
        }
        if terminated {
            return Ok(RelayEnd::Terminated);
        }
        let read_client = client.inbuf.len() < OUT_CAP
            && link.to_server.len() < OUT_CAP
            && link.pending.len() < MAX_PENDING;
        let read_server = client.outbuf.len() < OUT_CAP;
        tokio::select! {
            r = client.writer.write(&client.outbuf), if !client.outbuf.is_empty() => {
                let n = r.map_err(RelayError::Client)?;
                client.outbuf.advance(n);
            }
            r = server.writer.write(&link.to_server), if !link.to_server.is_empty() => {
                let n = r.map_err(RelayError::Server)?;
                link.to_server.advance(n);
            }
            r = read_some(&mut server.reader, &mut server.read_buf), if read_server => {
                if r.map_err(RelayError::Server)? == 0 {
                    return Err(RelayError::Server(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            r = read_some(&mut client.reader, &mut client.inbuf), if read_client => {
                if r.map_err(RelayError::Client)? == 0 {
                    return Ok(RelayEnd::ClientGone);
                }
            }
        }
    }
}

async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    buf.reserve(READ_CHUNK);
    reader.read_buf(buf).await
}

/// Moves complete client messages (or pieces of large ones) to the server-bound buffer.
/// Returns true when the client sent Terminate (which never reaches the server).
fn pump_client(client: &mut ClientIo, link: &mut Link) -> Result<bool, RelayError> {
    while link.to_server.len() < OUT_CAP && link.pending.len() < MAX_PENDING {
        match client
            .scan
            .next(&client.inbuf, |t| t == b'X')
            .map_err(RelayError::ClientProtocol)?
        {
            ScanItem::Pass { len, tag } => {
                if let Some(t) = tag {
                    link.on_client_message(t);
                }
                link.to_server.unsplit(client.inbuf.split_to(len));
            }
            ScanItem::Whole { len, .. } => {
                client.inbuf.advance(len);
                return Ok(true);
            }
            ScanItem::NeedMore => break,
        }
    }
    Ok(false)
}

/// Moves server messages to the client-bound buffer, decoding only ReadyForQuery and
/// ParameterStatus. Returns true when it stopped at a ReadyForQuery that leaves nothing due.
fn pump_server(
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    params: &mut ClientParams,
) -> Result<bool, RelayError> {
    while client.outbuf.len() < OUT_CAP {
        let item = link
            .server_scan
            .next(&server.read_buf, |t| t == b'Z' || t == b'S')
            .map_err(|e| RelayError::ServerProtocol(e.to_string()))?;
        match item {
            ScanItem::Pass { len, tag } => {
                if let Some(t) = tag {
                    link.on_server_message(t);
                }
                client.outbuf.unsplit(server.read_buf.split_to(len));
            }
            ScanItem::Whole { tag: b'Z', len } => {
                let msg = server.read_buf.split_to(len);
                if len != 6 {
                    return Err(RelayError::ServerProtocol("malformed ReadyForQuery".into()));
                }
                server.tx_status = msg[5];
                link.on_ready_for_query();
                client.outbuf.unsplit(msg);
                if link.pending.is_empty() && server.tx_status == b'I' {
                    return Ok(true);
                }
            }
            ScanItem::Whole { len, .. } => {
                let msg = server.read_buf.split_to(len);
                if let Some((name, value)) = parameter_status(&msg[5..]) {
                    params.observe_server_report(name, value);
                    server.params.insert(name.to_string(), value.to_string());
                }
                client.outbuf.unsplit(msg);
            }
            ScanItem::NeedMore => break,
        }
    }
    Ok(false)
}

fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

/// Writes everything buffered for the client.
pub(super) async fn flush_client(client: &mut ClientIo) -> std::io::Result<()> {
    if !client.outbuf.is_empty() {
        client.writer.write_all(&client.outbuf).await?;
        client.outbuf.clear();
    }
    Ok(())
}
