//! TLS on both legs against real PostgreSQL: psql and tokio-postgres (rustls) through sluice with
//! sslmode=require and verify-full, a wrong CA, plaintext refused under require, certificate
//! login by CN, PostgreSQL 17 direct TLS (ALPN), new certificates for new connections after the
//! config snapshot changes, and server-side TLS checked in pg_stat_ssl.

mod common;

use common::certs::{Pki, client_config, connect_tls};
use common::raw::RawClient;
use common::{TempPostgres, connect, pg, start_sluice};
use std::path::Path;
use std::sync::Arc;

fn tls_config(pki: &Pki, mode: &str, auth: &str, extra: &str) -> String {
    format!(
        r#"
[pooler]
listen_port = 0
auth_type = "{auth}"
client_tls_sslmode = "{mode}"
client_tls_cert_file = "{}"
client_tls_key_file = "{}"
client_tls_ca_file = "{}"
{extra}
[users.sluice_scram]
password = "scram_pw"
[databases.app]
host = "127.0.0.1"
port = {}
"#,
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display(),
        pg().port()
    )
}

fn psql(args: &[&str], password: &str) -> std::process::Output {
    pg().psql_to(args, password)
}

fn conninfo(addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=sluice_scram dbname=app {extra}",
        addr.port()
    )
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_and_tokio_postgres_connect_with_require_and_verify_full() {
    let pki = Pki::new();
    let sluice = start_sluice(&tls_config(&pki, "require", "scram-sha-256", "")).await;
    let addr = sluice.tcp_addr();

    let info = conninfo(addr, "sslmode=require");
    let out = psql(&[&info, "-tAc", "SELECT current_user"], "scram_pw");
    assert_eq!(
        text(&out).0,
        "sluice_scram",
        "psql sslmode=require: {:?}",
        text(&out)
    );

    let ca = pki.ca.display().to_string();
    let info = conninfo(addr, &format!("sslmode=verify-full sslrootcert={ca}"));
    let out = psql(&[&info, "-tAc", "SELECT 41 + 1"], "scram_pw");
    assert_eq!(text(&out).0, "42", "psql sslmode=verify-full: {:?}", text(&out));

    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(addr.port())
        .user("sluice_scram")
        .password("scram_pw")
        .dbname("app");
    let client = connect_tls(config, &pki.ca)
        .await
        .expect("tokio-postgres over rustls");
    let n: i32 = client.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_fails_with_a_certificate_error() {
    let pki = Pki::new();
    let sluice = start_sluice(&tls_config(&pki, "require", "scram-sha-256", "")).await;
    let addr = sluice.tcp_addr();
    let wrong = pki.wrong_ca.display().to_string();
    let info = conninfo(addr, &format!("sslmode=verify-full sslrootcert={wrong}"));
    let out = psql(&[&info, "-tAc", "SELECT 1"], "scram_pw");
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("certificate verify failed"),
        "psql should name the certificate failure: {:?}",
        text(&out)
    );

    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(addr.port())
        .user("sluice_scram")
        .password("scram_pw")
        .dbname("app");
    let Err(err) = connect_tls(config, &pki.wrong_ca).await else {
        panic!("a wrong CA must fail");
    };
    let shown = format!("{err:?}");
    assert!(
        shown.contains("UnknownIssuer"),
        "rustls should say the issuer is unknown: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_clients_get_a_fatal_under_require_and_ssl_requests_get_s() {
    let pki = Pki::new();
    let sluice = start_sluice(&tls_config(&pki, "require", "scram-sha-256", "")).await;
    let addr = sluice.tcp_addr();
    let err = connect(addr, "sluice_scram", "scram_pw", "app")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a FATAL from sluice");
    assert_eq!(db.code().code(), "28000");
    assert_eq!(db.message(), "SSL required");

    let mut raw = RawClient::connect(addr).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    assert_eq!(
        raw.read_byte().await,
        b'S',
        "SSLRequest must be accepted when TLS is configured"
    );

    // Unix-socket clients are never asked for TLS, so require does not apply to them.
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("unix_socket_dir = \"{}\"", dir.path().display());
    let with_socket = start_sluice(&tls_config(&pki, "require", "scram-sha-256", &extra)).await;
    let mut local = tokio_postgres::Config::new();
    local
        .host_path(dir.path())
        .port(with_socket.tcp_addr().port())
        .user("sluice_scram")
        .password("scram_pw")
        .dbname("app");
    let c = common::connect_with(local)
        .await
        .expect("unix socket under require");
    let n: i32 = c.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(n, 3);

    let disabled = start_sluice(&tls_config(&pki, "disable", "scram-sha-256", "")).await;
    let mut raw = RawClient::connect(disabled.tcp_addr()).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    assert_eq!(
        raw.read_byte().await,
        b'N',
        "SSLRequest must be refused when TLS is disabled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cert_auth_logs_in_by_the_certificate_cn() {
    let pki = Pki::new();
    let sluice = start_sluice(&tls_config(&pki, "verify-full", "cert", "")).await;
    let addr = sluice.tcp_addr();
    let (cert, key) = pki.client("sluice_scram");
    let tls_args = |user: &str, cert: &Path, key: &Path| {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=app sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            addr.port(),
            pki.ca.display(),
            cert.display(),
            key.display()
        )
    };
    // No password anywhere on the client side: the certificate is the credential.
    let out = psql(
        &[
            &tls_args("sluice_scram", &cert, &key),
            "-tAc",
            "SELECT current_user",
        ],
        "",
    );
    assert_eq!(text(&out).0, "sluice_scram", "cert login: {:?}", text(&out));

    let out = psql(&[&tls_args("sluice_md5", &cert, &key), "-tAc", "SELECT 1"], "");
    assert!(!out.status.success());
    assert!(
        text(&out)
            .1
            .contains("certificate authentication failed for user \"sluice_md5\""),
        "a CN that is not the user must be refused: {:?}",
        text(&out)
    );

    // verify-full demands a client certificate: without one the handshake fails.
    let info = conninfo(
        addr,
        &format!("sslmode=verify-full sslrootcert={}", pki.ca.display()),
    );
    let out = psql(&[&info, "-tAc", "SELECT 1"], "scram_pw");
    assert!(
        !out.status.success(),
        "no client certificate under verify-full must fail"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_tls_needs_alpn_postgresql() {
    let pki = Pki::new();
    let sluice = start_sluice(&tls_config(&pki, "require", "trust", "")).await;
    let addr = sluice.tcp_addr();

    let mut config = client_config(&pki.ca);
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("direct TLS handshake");
    let startup = startup_packet(&[("user", "sluice_scram"), ("database", "app")]);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(&startup).await.unwrap();
    let mut first = [0u8; 9];
    tls.read_exact(&mut first).await.unwrap();
    assert_eq!(
        first,
        [b'R', 0, 0, 0, 8, 0, 0, 0, 0],
        "AuthenticationOk over direct TLS"
    );

    // Without ALPN, a direct TLS connection is closed.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&pki.ca)));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = tls.write_all(&startup).await;
        let mut buf = [0u8; 1];
        let n = tls.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "direct TLS without ALPN must be closed");
    }
}

fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_config_snapshot_brings_new_certificates_for_new_connections_only() {
    let pki = Pki::new();
    let other = Pki::new();
    let sluice = start_sluice(&tls_config(&pki, "require", "scram-sha-256", "")).await;
    let addr = sluice.tcp_addr();
    let base = || {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(addr.port())
            .user("sluice_scram")
            .password("scram_pw")
            .dbname("app");
        c
    };
    let before = connect_tls(base(), &pki.ca).await.expect("first certificate");
    // What RELOAD will do: swap the config snapshot for one naming other files.
    let new_text = tls_config(&other, "require", "scram-sha-256", "");
    let mut new_config = sluice::Config::from_toml_str(&new_text, "test.toml", None).unwrap();
    new_config.pooler.listen_port = addr.port();
    sluice.shared().config.store(Arc::new(new_config));

    assert!(
        connect_tls(base(), &pki.ca).await.is_err(),
        "new connections must get the new certificate"
    );
    let after = connect_tls(base(), &other.ca)
        .await
        .expect("new certificate trusted by the new CA");
    let n: i32 = after.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    let n: i32 = before.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "the connection made before the swap keeps working");
}

fn server_tls_config(port: u16, mode: &str, ca: &Path) -> String {
    format!(
        r#"
[pooler]
listen_port = 0
auth_type = "scram-sha-256"
server_tls_sslmode = "{mode}"
server_tls_ca_file = "{}"
[users.sluice_scram]
password = "scram_pw"
[databases.app]
host = "127.0.0.1"
port = {port}
"#,
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_leg_is_encrypted_when_postgresql_has_ssl_on() {
    let pki = Pki::new();
    let mut server = TempPostgres::start_standalone();
    server.enable_ssl(&pki.server_pem.0, &pki.server_pem.1);
    for (mode, expect_ssl) in [("verify-full", true), ("prefer", true), ("disable", false)] {
        let sluice = start_sluice(&server_tls_config(server.port(), mode, &pki.ca)).await;
        let client = connect(sluice.tcp_addr(), "sluice_scram", "scram_pw", "app")
            .await
            .unwrap_or_else(|e| panic!("server_tls_sslmode = {mode}: {e}"));
        let ssl: bool = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(ssl, expect_ssl, "server_tls_sslmode = {mode}");
        sluice.shutdown().await;
    }
    // verify-full against a CA that did not sign the server's certificate fails the login.
    let sluice = start_sluice(&server_tls_config(server.port(), "verify-full", &pki.wrong_ca)).await;
    let err = connect(sluice.tcp_addr(), "sluice_scram", "scram_pw", "app")
        .await
        .unwrap_err();
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("TLS handshake"),
        "a bad server certificate must be named: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn require_against_a_server_without_tls_fails_clearly() {
    let pki = Pki::new();
    let sluice = start_sluice(&server_tls_config(pg().port(), "require", &pki.ca)).await;
    let err = connect(sluice.tcp_addr(), "sluice_scram", "scram_pw", "app")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a FATAL reaches the client");
    assert!(
        db.message().contains("does not support TLS") && db.message().contains("require"),
        "{}",
        db.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_settings_are_checked_before_the_pooler_starts() {
    let missing = "[pooler]\nlisten_port = 0\nclient_tls_sslmode = \"require\"\n";
    let err = sluice::Config::from_toml_str(missing, "test.toml", None).unwrap_err();
    assert_eq!(err.key, "pooler.client_tls_sslmode");
    assert!(err.message.contains("client_tls_cert_file"), "{err}");

    let verify = "[pooler]\nserver_tls_sslmode = \"verify-full\"\n";
    let err = sluice::Config::from_toml_str(verify, "test.toml", None).unwrap_err();
    assert_eq!(err.key, "pooler.server_tls_sslmode");

    let old = "[pooler]\nclient_tls_protocols = \"tlsv1.1\"\n";
    let err = sluice::Config::from_toml_str(old, "test.toml", None).unwrap_err();
    assert_eq!(err.key, "pooler.client_tls_protocols");

    let unreadable = "[pooler]\nlisten_port = 0\nclient_tls_sslmode = \"require\"\n\
        client_tls_cert_file = \"/nonexistent/server.crt\"\nclient_tls_key_file = \"/nonexistent/server.key\"\n";
    let config = sluice::Config::from_toml_str(unreadable, "test.toml", None).unwrap();
    let Err(err) = sluice::start(config).await else {
        panic!("a missing certificate file must stop the start");
    };
    assert!(err.to_string().contains("client_tls_cert_file"), "{err}");
}
