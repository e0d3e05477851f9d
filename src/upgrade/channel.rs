//! The hand-over channel: frames of `[u32 length][u8 descriptor count][JSON]` both ways over a
//! unix stream socket, descriptors attached to a frame's first bytes with SCM_RIGHTS. A reader
//! and a writer share the socket, so one task can read while others write.

use super::fdpass;
use super::format::{self, MAX_FRAME, Message};
use std::collections::VecDeque;
use std::io;
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The writing side of the channel.
pub(crate) struct Writer {
    socket: Arc<UnixStream>,
    /// The version frames claim (this build's, unless a test hook says otherwise).
    version: u32,
}

/// The reading side of the channel.
pub(crate) struct Reader {
    socket: Arc<UnixStream>,
    /// Bytes received and not yet taken as frames.
    buf: Vec<u8>,
    /// Descriptors received and not yet taken by their frames.
    fds: VecDeque<OwnedFd>,
    /// The versions frames may have (all this build speaks until the hello; then one).
    accepted: RangeInclusive<u32>,
    /// The version of the last frame read.
    last_version: u32,
}

/// Splits a connected socket into the channel's two sides; `version` is what frames claim,
/// `accepted` the versions frames read may have.
pub(crate) fn open(
    socket: std::os::unix::net::UnixStream,
    version: u32,
    accepted: RangeInclusive<u32>,
) -> io::Result<(Reader, Writer)> {
    socket.set_nonblocking(true)?;
    let socket = Arc::new(UnixStream::from_std(socket)?);
    Ok((
        Reader {
            socket: socket.clone(),
            buf: Vec::new(),
            fds: VecDeque::new(),
            last_version: *accepted.start(),
            accepted,
        },
        Writer { socket, version },
    ))
}

impl Writer {
    /// Frames claim `version` from now on (the new process answers in the old one's version).
    pub(crate) fn set_version(&mut self, version: u32) {
        self.version = version;
    }

    /// Tells the other process this one gives up (`refused`; best effort: the channel may be
    /// gone already) and gives the reason back for the caller's error.
    pub(crate) async fn refuse(&self, reason: String) -> String {
        let _ = self
            .send(
                &Message::Refused {
                    reason: reason.clone(),
                },
                &[],
            )
            .await;
        reason
    }

    /// Sends one frame with `fds` attached.
    pub(crate) async fn send(&self, message: &Message, fds: &[RawFd]) -> io::Result<()> {
        let body = format::encode_as(self.version, message).map_err(io::Error::other)?;
        if body.len() > MAX_FRAME || fds.len() > fdpass::MAX_FDS {
            return Err(io::Error::other("hand-over frame too large"));
        }
        let mut frame = Vec::with_capacity(body.len() + 5);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.push(fds.len() as u8);
        frame.extend_from_slice(&body);
        let raw = self.socket.as_raw_fd();
        let mut sent = 0;
        while sent < frame.len() {
            // The descriptors go with the first bytes only.
            let attach = if sent == 0 { fds } else { &[] };
            let rest = &frame[sent..];
            sent += self
                .socket
                .async_io(Interest::WRITABLE, || fdpass::send(raw, rest, attach))
                .await?;
        }
        Ok(())
    }
}

impl Reader {
    /// The version of the last frame read (after the hello: the old process's).
    pub(crate) fn last_version(&self) -> u32 {
        self.last_version
    }

    /// Only frames of `version` are read from now on (the one both sides agreed).
    pub(crate) fn accept_only(&mut self, version: u32) {
        self.accepted = version..=version;
    }

    /// Receives the next frame and its descriptors. An unreadable frame, one of another
    /// version, or the peer closing is an error.
    pub(crate) async fn recv(&mut self) -> io::Result<(Message, Vec<OwnedFd>)> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            let raw = self.socket.as_raw_fd();
            let mut chunk = vec![0u8; 64 * 1024];
            let fds = &mut self.fds;
            let n = self
                .socket
                .async_io(Interest::READABLE, || {
                    let mut got = Vec::new();
                    let n = fdpass::recv(raw, &mut chunk, &mut got)?;
                    fds.extend(got);
                    Ok(n)
                })
                .await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the other process closed the channel",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A whole frame from the buffer, if one is there.
    fn take_frame(&mut self) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        let Some(head) = self.buf.get(..5) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let nfds = head[4] as usize;
        if len > MAX_FRAME || nfds > fdpass::MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "hand-over frame too large",
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        if self.fds.len() < nfds {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a frame's descriptors did not arrive",
            ));
        }
        let decoded = format::decode(&self.buf[5..5 + len], self.accepted.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        self.buf.drain(..5 + len);
        let fds = self.fds.drain(..nfds).collect();
        let (version, message) = decoded?;
        self.last_version = version;
        Ok(Some((message, fds)))
    }
}
