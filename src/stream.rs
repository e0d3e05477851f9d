//! TCP, unix-socket and TLS streams behind one type, split into owned halves so a session can read
//! and write both of its peers at once (TLS halves share the session through a short lock); a
//! client's plain socket stays whole and is split by borrow (`client.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream, tcp, unix};

/// A TLS session over TCP, either side (clients of sluice, or sluice towards PostgreSQL).
pub(crate) type TlsStream = tokio_rustls::TlsStream<TcpStream>;

/// A connected socket, before it is split.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix-domain socket.
    Unix(UnixStream),
    /// TLS over TCP (boxed: the session state is large).
    Tls(Box<TlsStream>),
    /// The socket was moved out (during a TLS upgrade that then failed); all I/O fails.
    Closed,
}

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub enum ReadHalf {
    /// TCP.
    Tcp(tcp::OwnedReadHalf),
    /// Unix-domain socket.
    Unix(unix::OwnedReadHalf),
    /// TLS.
    Tls(Box<TlsRead>),
    /// Nothing to read (from [`Stream::Closed`]).
    Closed,
}

/// The reading half of a TLS stream, with decrypted bytes read ahead by `readable()`.
pub struct TlsRead {
    inner: parking_lot::Mutex<(tokio::io::ReadHalf<TlsStream>, bytes::BytesMut)>,
}

impl std::fmt::Debug for TlsRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsRead")
    }
}

/// The writing half of a [`Stream`].
#[derive(Debug)]
pub enum WriteHalf {
    /// TCP.
    Tcp(tcp::OwnedWriteHalf),
    /// Unix-domain socket.
    Unix(unix::OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<TlsStream>),
    /// Writes fail (from [`Stream::Closed`]).
    Closed,
}

impl Stream {
    /// Splits into halves that can be used from one task concurrently (the relay's wait).
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                let read = TlsRead {
                    inner: parking_lot::Mutex::new((r, bytes::BytesMut::new())),
                };
                (ReadHalf::Tls(Box::new(read)), WriteHalf::Tls(w))
            }
            Stream::Closed => (ReadHalf::Closed, WriteHalf::Closed),
        }
    }

    /// True when the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TLS in use as log lines show it (`TLSv1_3/TLS13_AES_256_GCM_SHA384`), or `no`.
    pub fn tls_description(&self) -> String {
        let Stream::Tls(s) = self else {
            return "no".to_string();
        };
        let state = s.get_ref().1;
        let version = state.protocol_version().and_then(|v| v.as_str()).unwrap_or("TLS");
        match state.negotiated_cipher_suite().and_then(|c| c.suite().as_str()) {
            Some(suite) => format!("{version}/{suite}"),
            None => version.to_string(),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection closed during a TLS upgrade",
    )
}

impl TlsRead {
    /// Polls for decrypted bytes into the read-ahead buffer (Ready once it holds some, or at end
    /// of stream).
    fn poll_fill(&self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut guard = self.inner.lock();
        let (half, ahead) = &mut *guard;
        if !ahead.is_empty() {
            return Poll::Ready(Ok(ahead.len()));
        }
        let mut chunk = [0u8; 8192];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(half).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                ahead.extend_from_slice(buf.filled());
                Poll::Ready(Ok(buf.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Moves all read-ahead bytes to the end of `out`.
    fn take_all(&self, out: &mut bytes::BytesMut) -> usize {
        let mut guard = self.inner.lock();
        let ahead = &mut guard.1;
        let n = ahead.len();
        out.extend_from_slice(ahead);
        ahead.clear();
        n
    }

    /// Moves at most `max` read-ahead bytes to the end of `out`.
    fn take_up_to(&self, out: &mut bytes::BytesMut, max: usize) -> usize {
        let mut guard = self.inner.lock();
        let ahead = &mut guard.1;
        let n = max.min(ahead.len());
        out.extend_from_slice(&ahead.split_to(n));
        n
    }

    /// Moves read-ahead bytes into `out`.
    fn take(&self, out: &mut [u8]) -> usize {
        let mut guard = self.inner.lock();
        let ahead = &mut guard.1;
        let n = out.len().min(ahead.len());
        out[..n].copy_from_slice(&ahead.split_to(n));
        n
    }
}

impl Stream {
    /// sluice's own address on a TCP connection.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Tls(s) => s.get_ref().0.local_addr().ok(),
            _ => None,
        }
    }

    /// The process id of a unix-socket peer (SO_PEERCRED); None for TCP.
    pub fn peer_pid(&self) -> Option<i32> {
        match self {
            Stream::Tcp(_) | Stream::Tls(_) | Stream::Closed => None,
            Stream::Unix(s) => s.peer_cred().ok().and_then(|c| c.pid()),
        }
    }
}

/// Reads what a socket has into `buf` without waiting: `Some(n)` bytes (0: end of stream), or
/// None when there was nothing after all (its readiness is then cleared). A read that comes back
/// short means the socket is drained: its readiness is cleared too (safely: only if no new event
/// came meanwhile), so the next read waits for the kernel to report more data instead of trying
/// a read that fails with EAGAIN. With tokio's edge-triggered readiness alone, every
/// request-response exchange would cost such a failed read on each side.
/// Bytes of the per-thread buffer [`ReadHalf::read_ready_exact`] reads through.
const SCRATCH_LEN: usize = 8192;

macro_rules! try_read_drained {
    ($socket:expr, $room:expr, $read:expr) => {{
        let socket = $socket;
        let room = $room;
        let mut got = None;
        let read = socket.try_io(tokio::io::Interest::READABLE, || {
            let n = $read(socket)?;
            got = Some(n);
            if n > 0 && n < room {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match (read, got) {
            (Ok(n), _) => Ok(Some(n)),
            (Err(e), got) if e.kind() == io::ErrorKind::WouldBlock => Ok(got),
            (Err(e), _) => Err(e),
        }
    }};
}

thread_local! {
    /// The per-thread buffer reads pass through (zeroed once, not on every read).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

mod client;
pub(crate) use client::ClientSocket;

impl ReadHalf {
    /// Reads what is available into `buf` (reserving `chunk` bytes first), waiting until
    /// something is; `Ok(0)` is end of stream.
    pub async fn read_available(&mut self, buf: &mut bytes::BytesMut, chunk: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_available(cx, buf, chunk)).await
    }

    /// [`ReadHalf::read_available`] as a poll: for a wait on several things at once that keeps
    /// no future per thing (the relay's turn). TLS takes at most the room reserved, as a read
    /// into the buffer's spare capacity would.
    pub fn poll_read_available(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
        chunk: usize,
    ) -> Poll<io::Result<usize>> {
        if let ReadHalf::Tls(t) = self {
            buf.reserve(chunk);
            return t
                .poll_fill(cx)
                .map_ok(|_| t.take_up_to(buf, buf.capacity() - buf.len()));
        }
        loop {
            std::task::ready!(self.poll_readable(cx))?;
            if let Some(n) = self.read_ready(buf, chunk)? {
                return Poll::Ready(Ok(n));
            }
        }
    }

    /// Waits until the socket reports data or an end of stream (it may turn out to have nothing:
    /// see [`ReadHalf::read_ready`]). Holds no buffer while waiting.
    pub async fn wait_readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_readable(cx)).await
    }

    /// The poll behind [`ReadHalf::wait_readable`], for a wait that also watches something else
    /// without a `select!` (an idle session keeps its future small).
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ReadHalf::Tcp(h) => AsRef::<TcpStream>::as_ref(h).poll_read_ready(cx),
            ReadHalf::Unix(h) => AsRef::<UnixStream>::as_ref(h).poll_read_ready(cx),
            ReadHalf::Tls(t) => t.poll_fill(cx).map_ok(|_| ()),
            ReadHalf::Closed => Poll::Ready(Ok(())),
        }
    }

    /// After [`ReadHalf::wait_readable`]: reads what is there into `buf` (reserving `chunk`),
    /// `Some(0)` at end of stream, None when there was nothing after all.
    pub fn read_ready(&mut self, buf: &mut bytes::BytesMut, chunk: usize) -> io::Result<Option<usize>> {
        match self {
            ReadHalf::Tcp(h) => {
                buf.reserve(chunk);
                let room = buf.capacity() - buf.len();
                try_read_drained!(AsRef::<TcpStream>::as_ref(h), room, |s: &TcpStream| s
                    .try_read_buf(&mut *buf))
            }
            ReadHalf::Unix(h) => {
                buf.reserve(chunk);
                let room = buf.capacity() - buf.len();
                try_read_drained!(AsRef::<UnixStream>::as_ref(h), room, |s: &UnixStream| s
                    .try_read_buf(&mut *buf))
            }
            // wait_readable filled the read-ahead: nothing there means the TLS stream ended.
            ReadHalf::Tls(t) => Ok(Some(t.take_all(buf))),
            ReadHalf::Closed => Ok(Some(0)),
        }
    }

    /// Like [`ReadHalf::read_ready`], into a caller's slice (a stack buffer: a client waiting
    /// for a server then holds no read buffer of its own, only the bytes it sent).
    pub fn read_ready_into(&mut self, out: &mut [u8]) -> io::Result<Option<usize>> {
        let room = out.len();
        match self {
            ReadHalf::Tcp(h) => {
                try_read_drained!(AsRef::<TcpStream>::as_ref(h), room, |s: &TcpStream| s
                    .try_read(&mut *out))
            }
            ReadHalf::Unix(h) => {
                try_read_drained!(AsRef::<UnixStream>::as_ref(h), room, |s: &UnixStream| s
                    .try_read(&mut *out))
            }
            ReadHalf::Tls(t) => Ok(Some(t.take(out))),
            ReadHalf::Closed => Ok(Some(0)),
        }
    }

    /// Like [`ReadHalf::read_ready`], but `out` grows by exactly what arrived: the bytes pass
    /// through a per-thread scratch buffer, zeroed once, not a fresh stack buffer zeroed on every
    /// read (8 KiB of stores per request), so a client waiting for a server holds no read buffer
    /// of its own, only the bytes it sent.
    pub fn read_ready_exact(&mut self, out: &mut bytes::BytesMut) -> io::Result<Option<usize>> {
        if let ReadHalf::Tls(t) = self {
            return Ok(Some(t.take_all(out)));
        }
        SCRATCH.with_borrow_mut(|chunk| {
            let got = self.read_ready_into(chunk)?;
            if let Some(n) = got {
                out.extend_from_slice(&chunk[..n]);
            }
            Ok(got)
        })
    }

    /// Reads whatever is ready without waiting: `Ok(0)` is end of stream, `WouldBlock` is nothing.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadHalf::Tcp(s) => s.try_read(buf),
            ReadHalf::Unix(s) => s.try_read(buf),
            ReadHalf::Tls(t) => {
                let waker = std::task::Waker::noop();
                match t.poll_fill(&mut Context::from_waker(waker)) {
                    Poll::Ready(Ok(_)) => Ok(t.take(buf)),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            ReadHalf::Closed => Ok(0),
        }
    }

    /// True when the peer has neither closed nor sent anything: the check made before an idle
    /// server is handed out (an idle server with something to read is dead or out of step).
    pub fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl WriteHalf {
    /// Writes what the socket takes now without waiting (the relay's write right after it
    /// buffered something, saving a turn of its wait): `WouldBlock` when it takes nothing
    /// now, and always for TLS (whose writes go through its session) and closed halves, which
    /// are left to the waiting write.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(h) => h.try_write(buf),
            WriteHalf::Unix(h) => h.try_write(buf),
            WriteHalf::Tls(_) | WriteHalf::Closed => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self.get_mut() {
            Self::Tcp(s) => Pin::new(s).$method($($arg),*),
            Self::Unix(s) => Pin::new(s).$method($($arg),*),
            Self::Tls(s) => Pin::new(s).$method($($arg),*),
            Self::Closed => Poll::Ready(Err(closed())),
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_shutdown(cx))
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(t) => match t.poll_fill(cx) {
                Poll::Ready(Ok(_)) => {
                    let n = t.take(buf.initialize_unfilled());
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            ReadHalf::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_shutdown(cx))
    }
}

/// A plain (not TLS) client socket taken out of the runtime, to hand to another process during
/// an upgrade (docs/upgrades.md), or to take back when that fails.
#[derive(Debug)]
pub(crate) enum PlainSocket {
    /// TCP.
    Tcp(std::net::TcpStream),
    /// Unix-domain socket.
    Unix(std::os::unix::net::UnixStream),
}

impl PlainSocket {
    /// Puts the halves of a plain stream back together, out of the runtime (nothing is shut
    /// down: dropping the result only closes this process's descriptor). TLS and closed streams
    /// come back unchanged: their state cannot leave the process.
    pub(crate) fn take(read: ReadHalf, write: WriteHalf) -> Result<PlainSocket, (ReadHalf, WriteHalf)> {
        match (read, write) {
            (ReadHalf::Tcp(r), WriteHalf::Tcp(w)) => match r.reunite(w) {
                Ok(s) => s
                    .into_std()
                    .map(PlainSocket::Tcp)
                    .map_err(|_| (ReadHalf::Closed, WriteHalf::Closed)),
                Err(e) => Err((ReadHalf::Tcp(e.0), WriteHalf::Tcp(e.1))),
            },
            (ReadHalf::Unix(r), WriteHalf::Unix(w)) => match r.reunite(w) {
                Ok(s) => s
                    .into_std()
                    .map(PlainSocket::Unix)
                    .map_err(|_| (ReadHalf::Closed, WriteHalf::Closed)),
                Err(e) => Err((ReadHalf::Unix(e.0), WriteHalf::Unix(e.1))),
            },
            other => Err(other),
        }
    }

    /// A socket received from another process: TCP when `tcp`, else unix.
    pub(crate) fn from_fd(fd: std::os::fd::OwnedFd, tcp: bool) -> PlainSocket {
        if tcp {
            PlainSocket::Tcp(std::net::TcpStream::from(fd))
        } else {
            PlainSocket::Unix(std::os::unix::net::UnixStream::from(fd))
        }
    }

    /// A second descriptor for the same socket (what travels to the other process).
    pub(crate) fn duplicate(&self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        match self {
            PlainSocket::Tcp(s) => s.as_fd().try_clone_to_owned(),
            PlainSocket::Unix(s) => s.as_fd().try_clone_to_owned(),
        }
    }

    /// Back into the runtime, as a client's socket (kept whole).
    pub(crate) fn into_client(self) -> io::Result<ClientSocket> {
        Ok(ClientSocket::from(self.into_stream()?))
    }

    /// Back into the runtime, split.
    pub(crate) fn into_split(self) -> io::Result<(ReadHalf, WriteHalf)> {
        Ok(self.into_stream()?.into_split())
    }

    /// Registered with the calling runtime.
    fn into_stream(self) -> io::Result<Stream> {
        Ok(match self {
            PlainSocket::Tcp(s) => {
                s.set_nonblocking(true)?;
                let s = TcpStream::from_std(s)?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
            PlainSocket::Unix(s) => {
                s.set_nonblocking(true)?;
                Stream::Unix(UnixStream::from_std(s)?)
            }
        })
    }
}

/// What [`rehome`] did with a pair of halves.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rehomed {
    /// The socket is now registered with the calling runtime.
    Moved,
    /// Left as it was, registered where it was (TLS: its halves share the session state and
    /// cannot be taken apart and rebuilt); it works from any thread, with cross-thread wake-ups.
    Kept,
    /// The move failed half-way: both halves are closed, the connection is gone.
    Lost,
}

/// Moves the registration of a split TCP or unix socket to the calling runtime's I/O driver
/// (per-core runtimes: a server opened on one worker and lent on another). Nothing is buffered
/// in the halves themselves, so no byte is lost; the new registration learns the socket's
/// readiness from the driver's next poll.
pub(crate) fn rehome(reader: &mut ReadHalf, writer: &mut WriteHalf) -> Rehomed {
    let r = std::mem::replace(reader, ReadHalf::Closed);
    let w = std::mem::replace(writer, WriteHalf::Closed);
    let moved = match (r, w) {
        (ReadHalf::Tcp(r), WriteHalf::Tcp(w)) => r
            .reunite(w)
            .map_err(|_| ())
            .and_then(|s| s.into_std().map_err(|_| ()))
            .and_then(|s| TcpStream::from_std(s).map_err(|_| ()))
            .map(|s| s.into_split())
            .map(|(r, w)| (ReadHalf::Tcp(r), WriteHalf::Tcp(w))),
        (ReadHalf::Unix(r), WriteHalf::Unix(w)) => r
            .reunite(w)
            .map_err(|_| ())
            .and_then(|s| s.into_std().map_err(|_| ()))
            .and_then(|s| UnixStream::from_std(s).map_err(|_| ()))
            .map(|s| s.into_split())
            .map(|(r, w)| (ReadHalf::Unix(r), WriteHalf::Unix(w))),
        (r, w) => {
            *reader = r;
            *writer = w;
            return Rehomed::Kept;
        }
    };
    match moved {
        Ok((r, w)) => {
            *reader = r;
            *writer = w;
            Rehomed::Moved
        }
        Err(()) => Rehomed::Lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A socket registered on one runtime, rehomed on another, keeps working after the first
    /// runtime is gone (it would fail with its driver shut down otherwise), and loses no byte
    /// that arrived before the move.
    #[test]
    fn a_rehomed_socket_works_after_its_first_runtime_is_gone() {
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (mut reader, mut writer, peer) = first.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (ours, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let (r, w) = Stream::Tcp(ours.unwrap()).into_split();
            let mut peer = accepted.unwrap().0;
            peer.write_all(b"before").await.unwrap();
            (r, w, peer.into_std().unwrap())
        });
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        second.block_on(async {
            assert_eq!(rehome(&mut reader, &mut writer), Rehomed::Moved);
            let mut peer = TcpStream::from_std(peer).unwrap();
            let mut got = [0u8; 6];
            let ReadHalf::Tcp(r) = &mut reader else {
                panic!("not TCP")
            };
            r.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"before");
            let WriteHalf::Tcp(w) = &mut writer else {
                panic!("not TCP")
            };
            w.write_all(b"after").await.unwrap();
            let mut back = [0u8; 5];
            peer.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"after");
        });
    }
}
