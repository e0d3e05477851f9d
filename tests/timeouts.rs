//! Time limits: query_wait_timeout (usable connection by default, FATAL on request), the
//! diagnosing DETAIL, query_wait_notify, client_login_timeout, server_connect_timeout,
//! query_timeout, idle_transaction_timeout, client_idle_timeout and transaction_timeout.

mod common;

use common::raw::RawClient;
use common::{connect, connect_with, pg, start_sluice};
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;

fn trust_config(db: &str, pool: u32, extra: &str) -> String {
    format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\n{extra}\n\
         [databases.{db}]\nhost = \"127.0.0.1\"\nport = {}\npool_size = {pool}\n",
        pg().port()
    )
}

async fn holder(addr: std::net::SocketAddr, db: &str, app: &str) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("sluice_trust")
        .dbname(db)
        .application_name(app);
    let c = connect_with(cfg).await.unwrap();
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn query_wait_timeout_names_the_holders_and_keeps_the_connection_usable() {
    let db = pg().create_database("t_qwt").await;
    let sluice = start_sluice(&trust_config(
        &db,
        2,
        "query_wait_timeout = \"1s\"\nquery_wait_notify = 0",
    ))
    .await;
    let addr = sluice.tcp_addr();
    let h1 = holder(addr, &db, "leaky_worker").await;
    let h2 = holder(addr, &db, "leaky_worker").await;
    let third = connect(addr, "sluice_trust", "", &db).await.unwrap();

    let started = Instant::now();
    let e = third.simple_query("SELECT 1").await.unwrap_err();
    let waited = started.elapsed();
    // Fails at query_wait_timeout (1 s), not later; the upper bound leaves room for a loaded
    // 2-core machine and still tells a fail-fast from a hang.
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let db_err = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db_err.code().code(), "53300");
    assert!(
        db_err.message().starts_with("query_wait_timeout"),
        "{}",
        db_err.message()
    );
    let detail = db_err.detail().unwrap_or_default();
    assert!(detail.contains(&format!("pool {db}/sluice_trust")), "{detail}");
    assert!(detail.contains("2 of 2 servers in use"), "{detail}");
    assert!(detail.contains("2 idle in transaction"), "{detail}");
    assert!(detail.contains("'leaky_worker' at 127.0.0.1:"), "{detail}");

    // The same connection works once a server is free, with the extended protocol too.
    let e = third
        .query_typed("SELECT $1::int", &[(&1i32, Type::INT4)])
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("53300"));
    h1.batch_execute("COMMIT").await.unwrap();
    let rows = third
        .query_typed("SELECT $1::int", &[(&5i32, Type::INT4)])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 5);
    drop(h2);
}

#[tokio::test(flavor = "multi_thread")]
async fn query_wait_timeout_disconnect_restores_pgbouncers_fatal() {
    let db = pg().create_database("t_qwt_fatal").await;
    let extra = "query_wait_timeout = \"500ms\"\nquery_wait_timeout_disconnect = true";
    let sluice = start_sluice(&trust_config(&db, 1, extra)).await;
    let addr = sluice.tcp_addr();
    let _h = holder(addr, &db, "x").await;
    let c = connect(addr, "sluice_trust", "", &db).await.unwrap();
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    let db_err = e.as_db_error().expect("an ErrorResponse");
    assert_eq!((db_err.severity(), db_err.code().code()), ("FATAL", "53300"));
    assert!(db_err.message().starts_with("query_wait_timeout"));
    tokio::time::timeout(Duration::from_secs(5), async {
        while !c.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection is closed after the FATAL");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_client_is_notified() {
    let db = pg().create_database("t_notify").await;
    let extra = "query_wait_timeout = \"3s\"\nquery_wait_notify = \"300ms\"";
    let sluice = start_sluice(&trust_config(&db, 1, extra)).await;
    let addr = sluice.tcp_addr();
    let h = holder(addr, &db, "x").await;
    let mut raw = RawClient::login_trust(addr, &[("user", "sluice_trust"), ("database", &db)]).await;
    raw.query("SELECT 1").await;
    let first = tokio::time::timeout(Duration::from_secs(2), raw.read_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.tag, b'N', "a NoticeResponse while queued");
    assert!(first.field(b'M').unwrap().contains("client being queued"));
    h.batch_execute("COMMIT").await.unwrap();
    let msgs = raw.read_until(b'Z').await;
    assert!(
        msgs.iter().any(|m| m.tag == b'D'),
        "the query ran once a server was free"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_login_timeout_drops_a_silent_client() {
    let sluice = start_sluice(&trust_config("app", 1, "client_login_timeout = \"500ms\"")).await;
    let mut raw = RawClient::connect(sluice.tcp_addr()).await;
    let started = Instant::now();
    let m = tokio::time::timeout(Duration::from_secs(3), raw.read_message())
        .await
        .unwrap()
        .expect("a FATAL");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(m.field(b'S').as_deref(), Some("FATAL"));
    assert!(m.field(b'M').unwrap().starts_with("client_login_timeout"));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_connect_timeout_fails_logins_to_a_server_that_never_answers() {
    // A listener that accepts and then says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nserver_connect_timeout = \"500ms\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {port}\n"
    );
    let sluice = start_sluice(&text).await;
    let started = Instant::now();
    let e = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let db_err = e
        .as_db_error()
        .expect("an ErrorResponse, not a hang or a silent close");
    assert_eq!(db_err.code().code(), "08006");
    assert!(
        db_err.message().contains("did not answer within"),
        "{}",
        db_err.message()
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn query_timeout_cancels_a_long_query() {
    let db = pg().create_database("t_query_timeout").await;
    let sluice = start_sluice(&trust_config(&db, 1, "query_timeout = \"500ms\"")).await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
    let started = Instant::now();
    let e = c.simple_query("SELECT pg_sleep(20)").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57014"), "{e}");
    // Short queries are untouched and the connection still works (a query well under the
    // limit, so a loaded machine cannot push it over).
    c.simple_query("SELECT 1").await.unwrap();
}

/// The limits on a client holding a server are read from the pool's settings, which SET and
/// RELOAD replace: a client connected before the change is held to the new limit at its next
/// transaction.
#[tokio::test(flavor = "multi_thread")]
async fn query_timeout_set_on_the_console_applies_to_a_connected_client() {
    let db = pg().create_database("t_query_timeout_set").await;
    let sluice = start_sluice(&trust_config(&db, 1, "admin_users = [\"sluice_trust\"]")).await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    common::console_rows(sluice.tcp_addr(), "sluice_trust", "SET query_timeout = 1").await;
    let started = Instant::now();
    let e = c.simple_query("SELECT pg_sleep(20)").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57014"), "{e}");
    c.simple_query("SELECT 1").await.unwrap();
}

async fn fatal_after_idle(extra: &str, script: &[&str], expected: &str) {
    let db = pg()
        .create_database(&format!("t_{}", expected.replace(' ', "_")))
        .await;
    let sluice = start_sluice(&trust_config(&db, 1, extra)).await;
    let mut raw =
        RawClient::login_trust(sluice.tcp_addr(), &[("user", "sluice_trust"), ("database", &db)]).await;
    for sql in script {
        raw.query(sql).await;
        raw.read_until(b'Z').await;
    }
    let started = Instant::now();
    let m = tokio::time::timeout(Duration::from_secs(5), raw.read_message())
        .await
        .expect("disconnected in time")
        .expect("a FATAL before the close");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((m.tag, m.field(b'S').as_deref()), (b'E', Some("FATAL")));
    assert_eq!(m.field(b'M').as_deref(), Some(expected));
    assert!(raw.read_message().await.is_none(), "closed after the FATAL");
    // The server was rolled back and is usable by the next client.
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
    let row = c
        .query_typed("SELECT pg_current_xact_id_if_assigned() IS NULL", &[])
        .await
        .unwrap();
    assert!(row[0].get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_transaction_timeout_disconnects_and_rolls_back() {
    fatal_after_idle(
        "idle_transaction_timeout = \"500ms\"",
        &["BEGIN", "CREATE TEMP TABLE x (a int)"],
        "idle transaction timeout",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_idle_timeout_disconnects_an_idle_client() {
    fatal_after_idle(
        "client_idle_timeout = \"500ms\"",
        &["SELECT 1"],
        "client_idle_timeout",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_timeout_ends_a_long_transaction_even_when_busy() {
    let db = pg().create_database("t_tx_timeout").await;
    let sluice = start_sluice(&trust_config(&db, 1, "transaction_timeout = \"1s\"")).await;
    let mut raw =
        RawClient::login_trust(sluice.tcp_addr(), &[("user", "sluice_trust"), ("database", &db)]).await;
    raw.query("BEGIN").await;
    raw.read_until(b'Z').await;
    let started = Instant::now();
    let fatal = loop {
        assert!(started.elapsed() < Duration::from_secs(5), "never ended");
        raw.query("SELECT pg_sleep(0.2)").await;
        let msgs = raw.read_until_end_or(b'Z').await;
        if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
            break e.clone();
        }
    };
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(fatal.field(b'M').as_deref(), Some("transaction timeout"));
}
