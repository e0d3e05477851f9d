//! Asking PostgreSQL for TLS on a new server connection: SSLRequest, then the handshake with the
//! connector `tls` built from the config (`server_tls_sslmode` and its keys).

use super::{ServerError, ServerTarget};
use crate::config::SslMode;
use crate::stream::Stream;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Asks a PostgreSQL server for TLS as `server_tls_sslmode` says (never on unix sockets) and
/// upgrades on `S`. Under require/verify-*, a server answering `N` fails the login.
pub(crate) async fn upgrade(stream: Stream, target: &ServerTarget) -> Result<Stream, ServerError> {
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
                target.tls.mode
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
