//! The client side's TLS handshake: upgrading a client after `S` (or directly, PostgreSQL 17's
//! `sslnegotiation=direct`), and the CN of the certificate it sent. (Upgrading a server
//! connection is server/'s, with the connector built here.)

use super::ALPN_POSTGRESQL;
use crate::stream::Stream;

/// Runs the server side of a handshake on a TCP client. `direct` connections must have
/// negotiated ALPN `postgresql`. On failure the stream is left `Closed`.
pub async fn accept_client(
    stream: &mut Stream,
    acceptor: &tokio_rustls::TlsAcceptor,
    direct: bool,
) -> std::io::Result<()> {
    let tcp = match std::mem::replace(stream, Stream::Closed) {
        Stream::Tcp(tcp) => tcp,
        other => {
            *stream = other;
            return Err(std::io::Error::other(
                "TLS is only offered on plain TCP connections",
            ));
        }
    };
    let tls = acceptor.accept(tcp).await?;
    if direct && tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        return Err(std::io::Error::other(
            "direct TLS connection without ALPN \"postgresql\"",
        ));
    }
    *stream = Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
    Ok(())
}

/// The subject CN of the client certificate of a TLS client, if it sent one.
pub fn peer_common_name(stream: &Stream) -> Option<String> {
    let Stream::Tls(tls) = stream else {
        return None;
    };
    let certs = match tls.as_ref() {
        tokio_rustls::TlsStream::Server(s) => s.get_ref().1.peer_certificates(),
        tokio_rustls::TlsStream::Client(c) => c.get_ref().1.peer_certificates(),
    }?;
    super::common_name(certs.first()?)
}
