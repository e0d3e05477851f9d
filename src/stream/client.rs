//! A client's socket kept whole while it is idle (no shared half in an `Arc`: 48 bytes a
//! client), and split by borrow where a session reads and writes it at once.

use super::{PlainSocket, ReadHalf, SCRATCH, Stream, WriteHalf};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream, tcp, unix};

/// A logged-in client's connection.
#[derive(Debug)]
pub(crate) enum ClientSocket {
    /// TCP, whole.
    Tcp(TcpStream),
    /// Unix-domain socket, whole (boxed: the enum stays the size of a `TcpStream`, 32 bytes,
    /// in every idle session).
    Unix(Box<UnixStream>),
    /// TLS (its halves share the session state, split for good) or closed.
    Split(Box<(ReadHalf, WriteHalf)>),
}

/// The reading side of a [`ClientSocket`], borrowed.
pub(crate) enum ClientRead<'a> {
    /// TCP.
    Tcp(tcp::ReadHalf<'a>),
    /// Unix-domain socket.
    Unix(unix::ReadHalf<'a>),
    /// TLS or closed.
    Half(&'a mut ReadHalf),
}

/// The writing side of a [`ClientSocket`], borrowed.
pub(crate) enum ClientWrite<'a> {
    /// TCP.
    Tcp(tcp::WriteHalf<'a>),
    /// Unix-domain socket.
    Unix(unix::WriteHalf<'a>),
    /// TLS or closed.
    Half(&'a mut WriteHalf),
}

impl From<Stream> for ClientSocket {
    fn from(stream: Stream) -> ClientSocket {
        match stream {
            Stream::Tcp(s) => ClientSocket::Tcp(s),
            Stream::Unix(s) => ClientSocket::Unix(Box::new(s)),
            other => ClientSocket::Split(Box::new(other.into_split())),
        }
    }
}

impl ClientSocket {
    /// A socket on which all I/O fails (in place of one moved out).
    pub(crate) fn closed() -> ClientSocket {
        ClientSocket::Split(Box::new((ReadHalf::Closed, WriteHalf::Closed)))
    }

    /// Both sides at once (a relay that reads and writes the client in one wait).
    pub(crate) fn split(&mut self) -> (ClientRead<'_>, ClientWrite<'_>) {
        match self {
            ClientSocket::Tcp(s) => {
                let (r, w) = s.split();
                (ClientRead::Tcp(r), ClientWrite::Tcp(w))
            }
            ClientSocket::Unix(s) => {
                let (r, w) = s.split();
                (ClientRead::Unix(r), ClientWrite::Unix(w))
            }
            ClientSocket::Split(halves) => {
                let (r, w) = &mut **halves;
                (ClientRead::Half(r), ClientWrite::Half(w))
            }
        }
    }

    /// The reading side alone.
    pub(crate) fn reader(&mut self) -> ClientRead<'_> {
        self.split().0
    }

    /// The writing side alone.
    pub(crate) fn writer(&mut self) -> ClientWrite<'_> {
        self.split().1
    }

    /// True when encrypted (TLS cannot be handed to another process).
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, ClientSocket::Split(h) if matches!(h.0, ReadHalf::Tls(_)))
    }

    /// Polls until the client sent something or closed (it may turn out to have nothing:
    /// see [`ClientRead::read_ready_exact`]). The idle wait: holds nothing while pending.
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientSocket::Tcp(s) => s.poll_read_ready(cx),
            ClientSocket::Unix(s) => s.poll_read_ready(cx),
            ClientSocket::Split(h) => h.0.poll_readable(cx),
        }
    }

    /// Writes what the socket takes now without waiting (see [`WriteHalf::try_write`]):
    /// `WouldBlock` when it takes nothing now, and always for TLS and closed sockets.
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientSocket::Tcp(s) => s.try_write(buf),
            ClientSocket::Unix(s) => s.try_write(buf),
            ClientSocket::Split(h) => h.1.try_write(buf),
        }
    }

    /// Takes a plain socket out of the runtime, to hand to another process (nothing is shut
    /// down); TLS and closed sockets come back unchanged.
    pub(crate) fn take_plain(self) -> Result<PlainSocket, ClientSocket> {
        match self {
            ClientSocket::Tcp(s) => s
                .into_std()
                .map(PlainSocket::Tcp)
                .map_err(|_| ClientSocket::closed()),
            ClientSocket::Unix(s) => s
                .into_std()
                .map(PlainSocket::Unix)
                .map_err(|_| ClientSocket::closed()),
            other => Err(other),
        }
    }
}

impl ClientRead<'_> {
    /// Waits until the client sent something or closed.
    pub(crate) async fn wait_readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| match self {
            ClientRead::Tcp(h) => h.as_ref().poll_read_ready(cx),
            ClientRead::Unix(h) => h.as_ref().poll_read_ready(cx),
            ClientRead::Half(h) => h.poll_readable(cx),
        })
        .await
    }

    /// After the socket reported readiness: `out` grows by exactly what arrived (through the
    /// per-thread scratch buffer); `Some(0)` at end of stream, None when nothing was there.
    pub(crate) fn read_ready_exact(&mut self, out: &mut bytes::BytesMut) -> io::Result<Option<usize>> {
        if let ClientRead::Half(h) = self {
            return h.read_ready_exact(out);
        }
        let plain = |chunk: &mut [u8]| -> io::Result<Option<usize>> {
            let room = chunk.len();
            match &*self {
                ClientRead::Tcp(h) => {
                    try_read_drained!(h.as_ref(), room, |s: &TcpStream| s.try_read(&mut *chunk))
                }
                ClientRead::Unix(h) => {
                    try_read_drained!(h.as_ref(), room, |s: &UnixStream| s.try_read(&mut *chunk))
                }
                ClientRead::Half(_) => Ok(Some(0)),
            }
        };
        SCRATCH.with_borrow_mut(|chunk| {
            let got = plain(chunk)?;
            if let Some(n) = got {
                out.extend_from_slice(&chunk[..n]);
            }
            Ok(got)
        })
    }

    /// Reads what is available into `buf` (reserving `chunk` bytes first): Ready once
    /// something was read (`Ok(0)` is end of stream), else the task is woken when there is
    /// something (see [`ReadHalf::poll_read_available`]).
    pub(crate) fn poll_read_available(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
        chunk: usize,
    ) -> Poll<io::Result<usize>> {
        if let ClientRead::Half(h) = self {
            return h.poll_read_available(cx, buf, chunk);
        }
        loop {
            std::task::ready!(match self {
                ClientRead::Tcp(h) => h.as_ref().poll_read_ready(cx),
                ClientRead::Unix(h) => h.as_ref().poll_read_ready(cx),
                ClientRead::Half(h) => h.poll_readable(cx),
            })?;
            buf.reserve(chunk);
            let room = buf.capacity() - buf.len();
            let got = match self {
                ClientRead::Tcp(h) => {
                    try_read_drained!(h.as_ref(), room, |s: &TcpStream| s.try_read_buf(&mut *buf))
                }
                ClientRead::Unix(h) => {
                    try_read_drained!(h.as_ref(), room, |s: &UnixStream| s.try_read_buf(&mut *buf))
                }
                ClientRead::Half(_) => Ok(Some(0)),
            };
            if let Some(n) = got? {
                return Poll::Ready(Ok(n));
            }
        }
    }
}

impl AsyncRead for ClientRead<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Tcp(h) => Pin::new(h).poll_read(cx, buf),
            ClientRead::Unix(h) => Pin::new(h).poll_read(cx, buf),
            ClientRead::Half(h) => Pin::new(&mut **h).poll_read(cx, buf),
        }
    }
}

macro_rules! delegate_write {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self.get_mut() {
            ClientWrite::Tcp(h) => Pin::new(h).$method($($arg),*),
            ClientWrite::Unix(h) => Pin::new(h).$method($($arg),*),
            ClientWrite::Half(h) => Pin::new(&mut **h).$method($($arg),*),
        }
    };
}

impl AsyncWrite for ClientWrite<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate_write!(self, poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_write!(self, poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_write!(self, poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    /// Every idle session holds its client's socket: as big as a `TcpStream`, not one word more
    /// (the session's size decides tokio's task cell, see `session::tests`).
    #[test]
    fn a_client_socket_is_the_size_of_a_tcp_stream() {
        assert_eq!(
            std::mem::size_of::<super::ClientSocket>(),
            std::mem::size_of::<tokio::net::TcpStream>()
        );
    }
}
