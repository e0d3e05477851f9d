//! Building rustls configs from `[pooler]` keys: certificate and key files, CA stores, protocol
//! versions, cipher suites, and the certificate checks each sslmode asks for.

use super::ALPN_POSTGRESQL;
use super::cert::{AcceptAnyServer, CaOnlyServer};
use crate::config::{PoolerConfig, SslMode, cipher_provider, protocol_versions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// What server logins need for TLS: the mode and, unless disabled, the rustls client config.
#[derive(Clone)]
pub struct ServerTls {
    /// `server_tls_sslmode`.
    pub mode: SslMode,
    /// Config for the handshake with PostgreSQL; None when the mode is `disable`.
    pub config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Default for ServerTls {
    fn default() -> Self {
        ServerTls {
            mode: SslMode::Disable,
            config: None,
        }
    }
}

/// The acceptor for client connections, or None when client TLS is disabled.
pub fn client_acceptor(p: &PoolerConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    if p.client_tls_sslmode == SslMode::Disable {
        return Ok(None);
    }
    let (Some(cert_file), Some(key_file)) = (&p.client_tls_cert_file, &p.client_tls_key_file) else {
        return Err(format!(
            "client_tls_sslmode = {} needs client_tls_cert_file and client_tls_key_file",
            p.client_tls_sslmode
        ));
    };
    let provider = Arc::new(cipher_provider(&p.client_tls_ciphers, "client_tls_ciphers")?);
    let versions = protocol_versions(&p.client_tls_protocols, "client_tls_protocols")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("client_tls_protocols: {e}"))?;
    let verify_clients = matches!(p.client_tls_sslmode, SslMode::VerifyCa | SslMode::VerifyFull);
    let builder = match &p.client_tls_ca_file {
        Some(ca) => {
            let roots = Arc::new(root_store(ca, "client_tls_ca_file")?);
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            if !verify_clients {
                // Certificates are checked when sent (for cert auth and hba) but not demanded.
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| format!("client_tls_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if verify_clients => {
            return Err("client_tls_sslmode verify-ca/verify-full needs client_tls_ca_file".to_string());
        }
        None => builder.with_no_client_auth(),
    };
    let certs = load_certs(cert_file, "client_tls_cert_file")?;
    let key = load_key(key_file, "client_tls_key_file")?;
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("client_tls_cert_file/client_tls_key_file: {e}"))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// The TLS settings for logging in to PostgreSQL.
pub fn server_connector(p: &PoolerConfig) -> Result<ServerTls, String> {
    let mode = p.server_tls_sslmode;
    if mode == SslMode::Disable {
        return Ok(ServerTls::default());
    }
    let provider = Arc::new(cipher_provider(&p.server_tls_ciphers, "server_tls_ciphers")?);
    let versions = protocol_versions(&p.server_tls_protocols, "server_tls_protocols")?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("server_tls_protocols: {e}"))?;
    let builder = match (mode, &p.server_tls_ca_file) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err("server_tls_sslmode verify-ca/verify-full needs server_tls_ca_file".to_string());
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, Some(ca)) => {
            let roots = Arc::new(root_store(ca, "server_tls_ca_file")?);
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("server_tls_ca_file: {e}"))?;
            if mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(CaOnlyServer(webpki)))
            }
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider))),
    };
    let config = match (&p.server_tls_cert_file, &p.server_tls_key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                load_certs(cert, "server_tls_cert_file")?,
                load_key(key, "server_tls_key_file")?,
            )
            .map_err(|e| format!("server_tls_cert_file/server_tls_key_file: {e}"))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("server_tls_cert_file and server_tls_key_file go together".to_string()),
    };
    Ok(ServerTls {
        mode,
        config: Some(Arc::new(config)),
    })
}

fn load_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key}: bad PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key}: no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{key}: cannot read a private key from {}: {e}", path.display()))
}

fn root_store(path: &Path, key: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, key)? {
        roots
            .add(cert)
            .map_err(|e| format!("{key}: unusable CA certificate in {}: {e}", path.display()))?;
    }
    Ok(roots)
}
