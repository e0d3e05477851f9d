//! Tests of the test harness itself, straight against the real PostgreSQL (no sluice involved).

mod common;

use common::{TempPostgres, connect, pg, wait_until};
use std::time::Duration;
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn scram_user_logs_in_over_tcp_and_a_wrong_password_gets_28p01() {
    let pg = pg();
    let client = connect(pg.addr(), "sluice_scram", "scram_pw", "app")
        .await
        .expect("scram login");
    let row = client
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "sluice_scram");
    assert_eq!(row.get::<_, String>(1), "app");
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS harness_scram (id int); DROP TABLE harness_scram")
        .await
        .expect("sluice_scram may create tables in app");

    let Err(err) = connect(pg.addr(), "sluice_scram", "wrong", "app").await else {
        panic!("a wrong password must fail")
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test]
async fn md5_user_logs_in_over_tcp_with_an_md5_secret() {
    let pg = pg();
    let client = connect(pg.addr(), "sluice_md5", "md5_pw", "postgres")
        .await
        .expect("md5 login");
    client
        .batch_execute("CREATE TABLE harness_md5 (id int); DROP TABLE harness_md5")
        .await
        .expect("sluice_md5 may create tables in postgres");
    let admin = pg.admin_client().await;
    let secret: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'sluice_md5'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(secret.starts_with("md5"), "stored secret is {secret}");
    let Err(err) = connect(pg.addr(), "sluice_md5", "wrong", "postgres").await else {
        panic!("wrong md5")
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test]
async fn trust_user_and_superuser_log_in_over_tcp() {
    let pg = pg();
    let trust = connect(pg.addr(), "sluice_trust", "", "app")
        .await
        .expect("trust login");
    trust.batch_execute("CREATE TEMP TABLE t (id int)").await.unwrap();
    let su = connect(
        pg.addr(),
        common::SUPERUSER,
        common::SUPERUSER_PASSWORD,
        "postgres",
    )
    .await
    .expect("superuser scram login");
    let is_super: String = su.query_one("SHOW is_superuser", &[]).await.unwrap().get(0);
    assert_eq!(is_super, "on");
}

#[tokio::test]
async fn backend_count_sees_a_connection_come_and_go() {
    let pg = pg();
    let admin = pg.admin_client().await;
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS harness_count; CREATE ROLE harness_count LOGIN PASSWORD 'count_pw'",
        )
        .await
        .unwrap();
    assert_eq!(pg.backend_count("harness_count").await, 0);
    let client = connect(pg.addr(), "harness_count", "count_pw", "postgres")
        .await
        .unwrap();
    assert_eq!(pg.backend_count("harness_count").await, 1);
    drop(client);
    wait_until(Duration::from_secs(10), "the backend to exit", || async {
        pg.backend_count("harness_count").await == 0
    })
    .await;
}

#[test]
fn psql_runs_against_the_shared_server() {
    let out = pg().psql(&["-At", "-c", "SELECT current_user || ' ' || 6 * 7"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres 42");
}

#[tokio::test]
async fn standalone_server_stops_starts_again_on_the_same_port_and_cleans_up() {
    let mut pg = TempPostgres::start_standalone();
    let addr = pg.addr();
    let dir = pg.socket_dir().to_path_buf();
    let client = connect(addr, "sluice_scram", "scram_pw", "app").await.unwrap();
    client
        .batch_execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)")
        .await
        .unwrap();

    pg.stop();
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    assert!(connect(addr, "sluice_scram", "scram_pw", "app").await.is_err());

    pg.start();
    assert_eq!(pg.addr(), addr);
    let client = connect(addr, "sluice_scram", "scram_pw", "app")
        .await
        .expect("port accepts again");
    let n: i32 = client.query_one("SELECT id FROM kept", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);

    pg.stop_immediate();
    pg.start();
    connect(addr, "sluice_trust", "", "app")
        .await
        .expect("up after crash recovery");

    drop(pg);
    assert!(!dir.exists(), "{} must be removed on drop", dir.display());
}
