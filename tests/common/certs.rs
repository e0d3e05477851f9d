//! Test certificates made with rcgen: a CA, a server certificate for 127.0.0.1/localhost, client
//! certificates with a chosen CN, and a second CA nothing is signed by; plus a tokio-postgres
//! connection over rustls that trusts a given CA.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::PathBuf;
use std::sync::Arc;

/// PEM files in a temp directory.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
    /// A CA that signed nothing here (PEM file).
    pub wrong_ca: PathBuf,
    /// Server certificate for 127.0.0.1 and localhost (PEM file).
    pub server_cert: PathBuf,
    /// Its key (PEM file).
    pub server_key: PathBuf,
    /// The server certificate and key as text (to install into a PostgreSQL data dir).
    pub server_pem: (String, String),
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params
}

impl Pki {
    /// Generates everything.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params("sluice test CA").self_signed(&ca_key).expect("CA cert");
        let ca = write("ca.crt", &ca_cert.pem());
        let other_key = KeyPair::generate().expect("key");
        let other = ca_params("some other CA")
            .self_signed(&other_key)
            .expect("other CA");
        let wrong_ca = write("wrong_ca.crt", &other.pem());
        let issuer = Issuer::new(ca_params("sluice test CA"), ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let server_pem = (cert.pem(), key.serialize_pem());
        let server_cert = write("server.crt", &server_pem.0);
        let server_key = write("server.key", &server_pem.1);
        Pki {
            dir,
            issuer,
            ca,
            wrong_ca,
            server_cert,
            server_key,
            server_pem,
        }
    }

    /// A client certificate with subject CN `cn`, signed by the CA: (cert path, key path).
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        let cert_path = self.dir.path().join(format!("{cn}.crt"));
        let key_path = self.dir.path().join(format!("{cn}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write client cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write client key");
        // libpq refuses a key file others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        (cert_path, key_path)
    }
}

/// A rustls client config trusting the CA in `ca_file` (ring provider).
pub fn client_config(ca_file: &std::path::Path) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Connects with tokio-postgres over TLS (sslmode=require, certificate and name checked by
/// rustls against `ca_file`) and spawns the connection task.
pub async fn connect_tls(
    config: tokio_postgres::Config,
    ca_file: &std::path::Path,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = config;
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(ca_file));
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}
