//! TLS for both legs with rustls: the acceptor for clients and the connector for PostgreSQL, built
//! from a config snapshot (cached per snapshot in [`crate::security::Security`], so a reload picks
//! up new certificate files for new connections while existing ones keep theirs).

mod build;
mod cert;
mod upgrade;

pub use build::{ServerTls, client_acceptor, server_connector};
pub use cert::common_name;
pub use upgrade::{accept_client, peer_common_name};

use crate::config::Config;

/// ALPN protocol name PostgreSQL 17 requires for direct TLS (`sslnegotiation=direct`).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The TLS contexts built from one config snapshot.
#[derive(Clone)]
pub struct TlsContexts {
    /// Acceptor for clients; None when `client_tls_sslmode = disable`.
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// What server logins use.
    pub server: ServerTls,
}

/// Builds both contexts; the error names the key and file at fault.
pub fn build(config: &Config) -> Result<TlsContexts, String> {
    Ok(TlsContexts {
        acceptor: client_acceptor(&config.pooler)?,
        server: server_connector(&config.pooler)?,
    })
}
