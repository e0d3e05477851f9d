//! The TLS handshakes themselves: upgrading a client after `S` (or directly, PostgreSQL 17's
//! `sslnegotiation=direct`), and upgrading a server connection after sending SSLRequest.

use super::ALPN_POSTGRESQL;
use crate::config::SslMode;
use crate::server::{ServerError, ServerTarget};
use crate::stream::Stream;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

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

/// Asks a PostgreSQL server for TLS as `server_tls_sslmode` says (never on unix sockets) and
/// upgrades on `S`. Under require/verify-*, a server answering `N` fails the login.
pub async fn upgrade_server(stream: Stream, target: &ServerTarget) -> Result<Stream, ServerError> {
    // `allow` asks for nothing (PostgreSQL servers never insist), like `disable`.
    let (mut tcp, config) = match (stream, target.tls.config.as_ref()) {
        (Stream::Tcp(tcp), Some(c)) if target.tls.mode >= SslMode::Prefer => (tcp, c.clone()),
        (other, _) => return Ok(other),
    };
    tcp.write_all(&SSL_REQUEST).await?;
    match tcp.read_u8().await? {
        b'S' => {}
        b'N' if target.tls.mode >= SslMode::Require => {
            return Err(ServerError::Auth(format!(
                "server {} does not support TLS, and server_tls_sslmode = {} requires it",
                target.describe(),
                mode_name(target.tls.mode)
            )));
        }
        b'N' => return Ok(Stream::Tcp(tcp)),
        other => {
            return Err(ServerError::Protocol(format!(
                "server answered SSLRequest with byte 0x{other:02x} (expected S or N)"
            )));
        }
    }
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| ServerError::Auth(format!("server host \"{}\" is not a TLS name: {e}", target.host)))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|source| ServerError::Connect {
            addr: format!("{} (TLS handshake)", target.describe()),
            source,
        })?;
    Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
}

fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}
