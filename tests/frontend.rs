//! The client-facing side: startup packets, protocol versions, SSL/GSS refusals, authentication
//! methods and secrets, login errors, the unix socket, the `"*"` database, cancel requests, and
//! clients sending garbage.

mod common;

use common::config::PoolerToml;
use common::raw::RawClient;
use common::{connect, connect_with, pg, start_sluice};
use std::time::Duration;

fn config(auth_type: &str, users: &str, databases: &str) -> String {
    PoolerToml::new(auth_type)
        .set("default_pool_size = 2")
        .tail(users)
        .tail(databases)
        .build()
}

fn app_db() -> String {
    format!("[databases.app]\nhost = \"127.0.0.1\"\nport = {}\n", pg().port())
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_login_with_a_plaintext_password_and_the_same_error_for_bad_password_or_user() {
    let users = "[users.sluice_scram]\npassword = \"scram_pw\"";
    let sluice = start_sluice(&config("scram-sha-256", users, &app_db())).await;
    let addr = sluice.tcp_addr();
    let c = connect(addr, "sluice_scram", "scram_pw", "app").await.unwrap();
    let user: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "sluice_scram");

    let wrong = connect(addr, "sluice_scram", "nope", "app").await.unwrap_err();
    assert_eq!(sqlstate(&wrong), Some("28P01"));
    let unknown = connect(addr, "nobody", "nope", "app").await.unwrap_err();
    assert_eq!(sqlstate(&unknown), Some("28P01"));
    let text = |e: &tokio_postgres::Error| {
        e.as_db_error()
            .unwrap()
            .message()
            .replace("nobody", "sluice_scram")
    };
    assert_eq!(
        text(&wrong),
        text(&unknown),
        "an unknown user must look like a wrong password"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_login_against_a_stored_verifier() {
    let verifier = postgres_protocol::password::scram_sha_256(b"scram_pw");
    // The server side logs in with a forced user whose plaintext is known.
    let users = format!("[users.alice]\npassword = \"{verifier}\"");
    let db = format!(
        "[databases.app]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"sluice_scram\"\npassword = \"scram_pw\"\n",
        pg().port()
    );
    let sluice = start_sluice(&config("scram-sha-256", &users, &db)).await;
    let c = connect(sluice.tcp_addr(), "alice", "scram_pw", "app")
        .await
        .unwrap();
    let user: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "sluice_scram");
    let e = connect(sluice.tcp_addr(), "alice", "wrong", "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread")]
async fn md5_login_with_plaintext_and_with_a_stored_md5_hash() {
    let stored = postgres_protocol::password::md5(b"md5_pw", "sluice_md5");
    for secret in ["md5_pw".to_string(), stored] {
        let users = format!("[users.sluice_md5]\npassword = \"{secret}\"");
        let sluice = start_sluice(&config("md5", &users, &app_db())).await;
        // The server (pg_hba: md5 for this user) is logged in to with md5 as well.
        let c = connect(sluice.tcp_addr(), "sluice_md5", "md5_pw", "app")
            .await
            .unwrap();
        let user: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(user, "sluice_md5", "secret {secret}");
        let e = connect(sluice.tcp_addr(), "sluice_md5", "bad", "app")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), Some("28P01"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trust_login_and_the_userlist_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("userlist.txt"), "\"sluice_trust\" \"\"\n").unwrap();
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nauth_file = \"userlist.txt\"\n{}",
        app_db()
    );
    let config = sluice::Config::from_toml_str(&text, "trust.toml", Some(dir.path())).unwrap();
    let sluice = sluice::start(config).await.unwrap();
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    let user: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "sluice_trust");
    // With users listed, trust still refuses names nobody listed.
    let e = connect(sluice.tcp_addr(), "sluice_scram", "", "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28000"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_database_missing_user_and_bad_protocol_versions_get_clear_fatals() {
    let sluice = start_sluice(&config("trust", "", &app_db())).await;
    let addr = sluice.tcp_addr();
    let e = connect(addr, "sluice_trust", "", "nope").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("3D000"));
    assert_eq!(e.as_db_error().unwrap().message(), "no such database: nope");

    let mut raw = RawClient::connect(addr).await;
    raw.send_startup(3, 0, &[("database", "app")]).await;
    let m = raw.read_message().await.unwrap();
    assert_eq!((m.tag, m.field(b'C').as_deref()), (b'E', Some("28000")));

    let mut raw = RawClient::connect(addr).await;
    raw.send_startup(2, 0, &[("user", "sluice_trust"), ("database", "app")])
        .await;
    let m = raw.read_message().await.unwrap();
    assert_eq!(
        (m.tag, m.field(b'S').as_deref(), m.field(b'C').as_deref()),
        (b'E', Some("FATAL"), Some("0A000"))
    );
    assert!(
        m.field(b'M')
            .unwrap()
            .contains("unsupported frontend protocol 2.0")
    );
    assert!(
        raw.read_message().await.is_none(),
        "connection closed after the FATAL"
    );

    // A newer 3.x minor is negotiated down to 3.0, as PostgreSQL does.
    let mut raw = RawClient::connect(addr).await;
    raw.send_startup(
        3,
        2,
        &[
            ("user", "sluice_trust"),
            ("database", "app"),
            ("_pq_.future", "1"),
        ],
    )
    .await;
    let msgs = raw.read_until(b'Z').await;
    assert_eq!(msgs[0].tag, b'v', "NegotiateProtocolVersion first: {msgs:?}");
    raw.query("SELECT 42").await;
    let msgs = raw.read_until(b'Z').await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(row.data_row(), vec![Some("42".to_string())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ssl_and_gss_requests_are_refused_then_login_proceeds_with_driver_parameters() {
    let sluice = start_sluice(&config("trust", "", &app_db())).await;
    let mut raw = RawClient::connect(sluice.tcp_addr()).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await; // GSSENCRequest
    assert_eq!(raw.read_byte().await, b'N');
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await; // SSLRequest
    assert_eq!(raw.read_byte().await, b'N');
    raw.send_startup(
        3,
        0,
        &[
            ("user", "sluice_trust"),
            ("database", "app"),
            ("extra_float_digits", "3"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("application_name", "jdbc-like"),
        ],
    )
    .await;
    let msgs = raw.read_until(b'Z').await;
    assert!(msgs.iter().any(|m| m.tag == b'K'), "BackendKeyData sent");
    let app = msgs
        .iter()
        .filter(|m| m.tag == b'S')
        .find(|m| m.body.starts_with(b"application_name\0"))
        .expect("application_name reported");
    assert_eq!(app.body, b"application_name\0jdbc-like\0");
    raw.query("SELECT current_setting('extra_float_digits'), current_setting('application_name')")
        .await;
    let msgs = raw.read_until(b'Z').await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(row.data_row(), vec![Some("3".into()), Some("jdbc-like".into())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_login_errors_reach_the_client_as_the_servers_own_error() {
    let port = pg().port();
    let dbs = format!(
        "[databases.badpw]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"app\"\nuser = \"sluice_scram\"\npassword = \"wrong\"\n\
         [databases.nodb]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"no_such_db\"\n"
    );
    let sluice = start_sluice(&config("trust", "", &dbs)).await;
    let e = connect(sluice.tcp_addr(), "sluice_trust", "", "badpw")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("an ErrorResponse, not a silent close");
    assert_eq!(db.code().code(), "28P01");
    assert!(
        db.message()
            .contains("password authentication failed for user \"sluice_scram\""),
        "{}",
        db.message()
    );
    let e = connect(sluice.tcp_addr(), "sluice_trust", "", "nodb")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("an ErrorResponse, not a silent close");
    assert_eq!(db.code().code(), "3D000");
    assert!(db.message().contains("no_such_db"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_listener_and_the_fallback_database() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[pooler]\nlisten_port = 0\nunix_socket_dir = \"{}\"\nauth_type = \"trust\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        dir.path().display(),
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    assert!(sluice.unix_socket_path().unwrap().exists());
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(dir.path())
        .port(sluice.tcp_addr().port())
        .user("sluice_trust")
        .dbname("app");
    let c = connect_with(cfg).await.unwrap();
    // "app" is not listed: the "*" entry sends it to the server database of the same name.
    let db: String = c
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, "app");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_requests_reach_the_running_query() {
    let sluice = start_sluice(&config("trust", "", &app_db())).await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    let token = c.cancel_token();
    let started = std::time::Instant::now();
    let sleeper = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("57014"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_sending_garbage_is_refused_and_nobody_else_notices() {
    let sluice = start_sluice(&config("trust", "", &app_db())).await;
    let addr = sluice.tcp_addr();
    let good = connect(addr, "sluice_trust", "", "app").await.unwrap();
    good.batch_execute("BEGIN").await.unwrap();

    let mut bad = RawClient::login_trust(addr, &[("user", "sluice_trust"), ("database", "app")]).await;
    bad.send(&[b'Q', 0, 0, 0, 1]).await; // a length below 4
    let m = bad.read_message().await.expect("an error before the close");
    assert_eq!((m.tag, m.field(b'C').as_deref()), (b'E', Some("08P01")));
    assert!(bad.read_message().await.is_none());

    // A garbage startup packet too.
    let mut bad = RawClient::connect(addr).await;
    bad.send(&[0, 0, 0, 3]).await;
    let m = bad.read_message().await.expect("an error before the close");
    assert_eq!((m.tag, m.field(b'C').as_deref()), (b'E', Some("08P01")));

    let n: i32 = good.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
    good.batch_execute("COMMIT").await.unwrap();
}
