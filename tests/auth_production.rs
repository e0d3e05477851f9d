//! Production authentication against real PostgreSQL: auth_query with md5 and SCRAM verifiers
//! read from pg_authid, SCRAM pass-through with no password for the user anywhere in sluice's
//! config (and its limit: the verifier must be the server's own), and auth_hba_file rules that
//! accept and reject by address, TLS and method.

mod common;

use common::certs::{Pki, connect_tls};
use common::raw::RawClient;
use common::{connect, connect_with, pg, start_sluice};
use std::sync::atomic::{AtomicU32, Ordering};

fn code(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Creates a login role with `password` stored as `encryption` (md5 or scram-sha-256); returns
/// its name (unique per call) and its pg_authid secret.
async fn create_role(encryption: &str, password: &str, extra: &str) -> (String, String) {
    let name = format!(
        "aq_{}_{}_{}",
        encryption.replace('-', "_"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = pg().admin_client().await;
    admin
        .batch_execute(&format!(
            "SET password_encryption = '{encryption}'; DROP ROLE IF EXISTS {name}; \
             CREATE ROLE {name} LOGIN PASSWORD '{password}' {extra}; GRANT sluice_users TO {name}"
        ))
        .await
        .expect("create role");
    let secret: String = admin
        .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    (name, secret)
}

/// auth_user is the superuser, whose own password is in [users]; the database is reached over
/// `host` (TCP: SCRAM for new roles; the unix socket directory: trust).
fn auth_query_config(auth_type: &str, host: &str, users: &str) -> String {
    format!(
        r#"
[pooler]
listen_port = 0
auth_type = "{auth_type}"
auth_user = "postgres"
auth_cache_ttl = "1s"
[users.postgres]
password = "postgres_pw"
{users}
[databases.app]
host = "{host}"
port = {}
dbname = "postgres"
"#,
        pg().port()
    )
}

async fn current_user(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_query_finds_md5_verifiers_and_unknown_or_expired_users_look_like_wrong_passwords() {
    let (md5_user, secret) = create_role("md5", "md5_secret", "").await;
    assert!(secret.starts_with("md5"));
    let (expired, _) = create_role("md5", "old_secret", "VALID UNTIL '2001-01-01'").await;
    let socket_dir = pg().socket_dir().display().to_string();
    let sluice = start_sluice(&auth_query_config("md5", &socket_dir, "")).await;
    let addr = sluice.tcp_addr();

    let c = connect(addr, &md5_user, "md5_secret", "app")
        .await
        .expect("md5 user found by auth_query");
    assert_eq!(current_user(&c).await, md5_user);

    let wrong = connect(addr, &md5_user, "nope", "app").await.unwrap_err();
    assert_eq!(code(&wrong).as_deref(), Some("28P01"));
    let unknown = connect(addr, "no_such_role", "nope", "app").await.unwrap_err();
    assert_eq!(code(&unknown).as_deref(), Some("28P01"));
    assert_eq!(
        message(&wrong).replace(&md5_user, "X"),
        message(&unknown).replace("no_such_role", "X"),
        "an unknown user must look like a wrong password"
    );
    let old = connect(addr, &expired, "old_secret", "app").await.unwrap_err();
    assert_eq!(
        code(&old).as_deref(),
        Some("28P01"),
        "rolvaliduntil in the past: {old:?}"
    );
    // The lookups ran on one pooled connection of auth_user's pool, kept open between them.
    let pools = sluice.shared().pools.all();
    let auth_pool = pools
        .iter()
        .find(|p| p.key.user == "postgres")
        .expect("auth_user has a pool");
    assert_eq!(
        auth_pool.open_servers(),
        1,
        "one pooled connection served every lookup"
    );
    assert_eq!(
        auth_pool.stats.snapshot().server_assignment_count,
        0,
        "lookups bypass client stats"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_pass_through_logs_in_over_tcp_with_no_password_in_sluices_config() {
    let (user, secret) = create_role("scram-sha-256", "pass_through_pw", "").await;
    assert!(secret.starts_with("SCRAM-SHA-256$"));
    let config = auth_query_config("scram-sha-256", "127.0.0.1", "");
    assert!(!config.contains("pass_through_pw") && !config.contains(&user));
    let sluice = start_sluice(&config).await;
    let addr = sluice.tcp_addr();

    let c = connect(addr, &user, "pass_through_pw", "app")
        .await
        .expect("SCRAM via auth_query");
    assert_eq!(current_user(&c).await, user);
    // The server leg is TCP, where pg_hba.conf demands SCRAM: sluice proved it with the keys.
    let over_tcp: bool = c
        .query_one(
            "SELECT client_addr IS NOT NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        over_tcp,
        "the server connection must be TCP (SCRAM), not the trusted unix socket"
    );
    let wrong = connect(addr, &user, "wrong", "app").await.unwrap_err();
    assert_eq!(code(&wrong).as_deref(), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_pass_through_with_a_stored_verifier_and_its_limit() {
    let (user, secret) = create_role("scram-sha-256", "stored_pw", "").await;
    let users = format!("[users.{user}]\npassword = \"{secret}\"\n");
    let sluice = start_sluice(&auth_query_config("scram-sha-256", "127.0.0.1", &users)).await;
    let c = connect(sluice.tcp_addr(), &user, "stored_pw", "app")
        .await
        .expect("pass-through with the server's own verifier");
    assert_eq!(current_user(&c).await, user);

    // A verifier of the same password with another salt lets the client in to sluice, but cannot
    // log in to PostgreSQL: the limit PgBouncer documents too.
    let (other, _) = create_role("scram-sha-256", "salted_pw", "").await;
    let foreign = postgres_protocol::password::scram_sha_256(b"salted_pw");
    let users = format!("[users.{other}]\npassword = \"{foreign}\"\n");
    let sluice = start_sluice(&auth_query_config("scram-sha-256", "127.0.0.1", &users)).await;
    let err = connect(sluice.tcp_addr(), &other, "salted_pw", "app")
        .await
        .unwrap_err();
    assert!(
        message(&err).contains("SCRAM pass-through") && message(&err).contains("salt or iterations"),
        "{}",
        message(&err)
    );
}

const HBA: &str = "\
# sluice test rules
local all all trust
hostssl all sluice_trust 127.0.0.1/32 trust
hostnossl all sluice_trust 127.0.0.1/32 reject
host all sluice_md5 127.0.0.1 255.255.255.255 md5
host app sluice_scram 127.0.0.1/32 scram-sha-256
host all all ::1/128 trust
";

#[tokio::test(flavor = "multi_thread")]
async fn hba_rules_accept_and_reject_by_address_tls_and_method() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let hba = dir.path().join("pg_hba.conf");
    std::fs::write(&hba, HBA).unwrap();
    let config = format!(
        r#"
[pooler]
listen_port = 0
unix_socket_dir = "{}"
auth_type = "hba"
auth_hba_file = "{}"
client_tls_sslmode = "prefer"
client_tls_cert_file = "{}"
client_tls_key_file = "{}"
[users.sluice_scram]
password = "scram_pw"
[users.sluice_md5]
password = "md5_pw"
[users.sluice_trust]
[databases.app]
host = "127.0.0.1"
port = {port}
[databases.postgres]
host = "127.0.0.1"
port = {port}
"#,
        dir.path().display(),
        hba.display(),
        pki.server_cert.display(),
        pki.server_key.display(),
        port = pg().port()
    );
    let sluice = start_sluice(&config).await;
    let addr = sluice.tcp_addr();

    // local: trust, no password.
    let mut local = tokio_postgres::Config::new();
    local
        .host_path(dir.path())
        .port(addr.port())
        .user("sluice_scram")
        .dbname("app");
    let c = connect_with(local).await.expect("unix socket is trusted");
    assert_eq!(current_user(&c).await, "sluice_scram");

    // host ... scram-sha-256 for app only.
    let c = connect(addr, "sluice_scram", "scram_pw", "app")
        .await
        .expect("scram over TCP");
    assert_eq!(current_user(&c).await, "sluice_scram");
    let wrong = connect(addr, "sluice_scram", "nope", "app").await.unwrap_err();
    assert_eq!(code(&wrong).as_deref(), Some("28P01"));
    let none = connect(addr, "sluice_scram", "scram_pw", "postgres")
        .await
        .unwrap_err();
    assert_eq!(code(&none).as_deref(), Some("28000"));
    assert_eq!(
        message(&none),
        "no pg_hba.conf entry for host \"127.0.0.1\", user \"sluice_scram\", database \"postgres\", no encryption"
    );

    // host ... md5 (address with a separate mask): the challenge is MD5.
    let mut raw = RawClient::connect(addr).await;
    raw.send_startup(3, 0, &[("user", "sluice_md5"), ("database", "app")])
        .await;
    let m = raw.read_message().await.expect("auth request");
    assert_eq!(
        (m.tag, &m.body[..4]),
        (b'R', &5i32.to_be_bytes()[..]),
        "md5 expected"
    );
    let c = connect(addr, "sluice_md5", "md5_pw", "app")
        .await
        .expect("md5 over TCP");
    assert_eq!(current_user(&c).await, "sluice_md5");

    // hostnossl reject vs hostssl trust.
    let plain = connect(addr, "sluice_trust", "", "app").await.unwrap_err();
    assert_eq!(code(&plain).as_deref(), Some("28000"));
    assert!(message(&plain).starts_with("pg_hba.conf rejects connection for host \"127.0.0.1\""));
    let mut tls = tokio_postgres::Config::new();
    tls.host("localhost")
        .port(addr.port())
        .user("sluice_trust")
        .dbname("app");
    let c = connect_tls(tls, &pki.ca).await.expect("hostssl trust over TLS");
    assert_eq!(current_user(&c).await, "sluice_trust");
}

#[tokio::test(flavor = "multi_thread")]
async fn hba_password_and_cert_methods_over_tls() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let hba = dir.path().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "hostssl app sluice_scram 127.0.0.0/8 cert\nhostssl app sluice_md5 127.0.0.0/8 password\n",
    )
    .unwrap();
    let config = format!(
        r#"
[pooler]
listen_port = 0
auth_type = "hba"
auth_hba_file = "{}"
client_tls_sslmode = "prefer"
client_tls_cert_file = "{}"
client_tls_key_file = "{}"
client_tls_ca_file = "{}"
[users.sluice_scram]
password = "scram_pw"
[users.sluice_md5]
password = "md5_pw"
[databases.app]
host = "127.0.0.1"
port = {}
"#,
        hba.display(),
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display(),
        pg().port()
    );
    let sluice = start_sluice(&config).await;
    let port = sluice.tcp_addr().port();
    let tls = |user: &str, extra: &str| {
        format!(
            "host=127.0.0.1 port={port} user={user} dbname=app sslmode=verify-full sslrootcert={} {extra}",
            pki.ca.display()
        )
    };
    let run = |info: String, password: &str| {
        let out = pg().psql_to(&[&info, "-tAc", "SELECT current_user"], password);
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // password: cleartext over TLS, checked against the stored secret.
    assert_eq!(run(tls("sluice_md5", ""), "md5_pw").0, "sluice_md5");
    let (_, err) = run(tls("sluice_md5", ""), "wrong");
    assert!(err.contains("password authentication failed"), "{err}");

    // cert: the certificate's CN is the user; no password is asked.
    let (cert, key) = pki.client("sluice_scram");
    let with_cert = format!("sslcert={} sslkey={}", cert.display(), key.display());
    assert_eq!(run(tls("sluice_scram", &with_cert), "").0, "sluice_scram");
    let (_, err) = run(tls("sluice_scram", ""), "scram_pw");
    assert!(err.contains("certificate authentication failed"), "{err}");
}
