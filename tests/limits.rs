//! Limits: max_client_conn (and per database/user), reserve pool, min_pool_size, and server
//! limits shared across pools (max_db_connections, max_user_connections).

mod common;

use common::{connect, pg, start_sluice, wait_until};
use std::time::{Duration, Instant};

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_client_conn_refuses_at_once_with_pgbouncers_message() {
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nmax_client_conn = 2\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let addr = sluice.tcp_addr();
    let a = connect(addr, "sluice_trust", "", "app").await.unwrap();
    let _b = connect(addr, "sluice_trust", "", "app").await.unwrap();
    let started = Instant::now();
    let e = connect(addr, "sluice_trust", "", "app").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once");
    assert_eq!(sqlstate(&e), Some("08P01"));
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .starts_with("no more connections allowed (max_client_conn)")
    );
    drop(a);
    wait_until(
        Duration::from_secs(5),
        "a freed client slot is reusable",
        || async { connect(addr, "sluice_trust", "", "app").await.is_ok() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn per_database_and_per_user_client_limits() {
    let port = pg().port();
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nmax_user_client_connections = 3\n\
         [users.sluice_trust]\nmax_user_client_connections = 2\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {port}\nmax_db_client_connections = 1\n\
         [databases.other]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"app\"\n"
    );
    let sluice = start_sluice(&text).await;
    let addr = sluice.tcp_addr();
    let _a = connect(addr, "sluice_trust", "", "app").await.unwrap();
    let e = connect(addr, "sluice_md5", "", "app").await.unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("max_db_client_connections"),
        "{e}"
    );
    let _b = connect(addr, "sluice_trust", "", "other").await.unwrap();
    let e = connect(addr, "sluice_trust", "", "other").await.unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("max_user_client_connections"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reserve_pool_serves_a_client_that_waited_reserve_pool_timeout() {
    let db = pg().create_database("t_reserve").await;
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nreserve_pool_size = 1\nreserve_pool_timeout = \"500ms\"\n\
         query_wait_timeout = \"20s\"\n[databases.{db}]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 1\n",
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let addr = sluice.tcp_addr();
    let holder = connect(addr, "sluice_trust", "", &db).await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = connect(addr, "sluice_trust", "", &db).await.unwrap();
    let started = Instant::now();
    waiter.batch_execute("SELECT 1").await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "served before reserve_pool_timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the reserve was not used: {waited:?}"
    );
    assert_eq!(pg().backends_in(&db).await, 2, "pool_size 1 + reserve 1");
    // A third client finds the reserve taken and the pool full: it waits for the holder.
    let third = connect(addr, "sluice_trust", "", &db).await.unwrap();
    waiter.batch_execute("BEGIN").await.unwrap();
    let q = tokio::spawn(async move { third.batch_execute("SELECT 1").await });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !q.is_finished(),
        "a third server was opened beyond pool_size + reserve"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), q)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn min_pool_size_keeps_servers_warm() {
    let db = pg().create_database("t_minpool").await;
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nmin_pool_size = 3\n\
         [databases.{db}]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 5\n",
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    wait_until(Duration::from_secs(10), "3 servers open with no load", || async {
        pg().backends_in(&db).await == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_db_connections_is_shared_by_the_pools_of_a_database() {
    let db = pg().create_database("t_maxdb").await;
    // Servers over PostgreSQL's unix socket (trust there), so any user logs in.
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nquery_wait_timeout = \"20s\"\n\
         [databases.{db}]\nhost = \"{}\"\nport = {}\npool_size = 5\nmax_db_connections = 1\n",
        pg().socket_dir().display(),
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let addr = sluice.tcp_addr();
    // Two users: two pools of the same database.
    let a = connect(addr, "sluice_trust", "", &db).await.unwrap();
    let b = connect(addr, "sluice_md5", "", &db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    a.batch_execute("BEGIN").await.unwrap();
    let bq = tokio::spawn(async move {
        b.batch_execute("SELECT 1").await.unwrap();
        b
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!bq.is_finished(), "user b got a server past max_db_connections");
    assert_eq!(pg().backends_in(&db).await, 1);
    a.batch_execute("COMMIT").await.unwrap();
    // a's server is idle in its pool; b's pool makes room by closing it.
    let b = tokio::time::timeout(Duration::from_secs(5), bq)
        .await
        .unwrap()
        .unwrap();
    b.batch_execute("SELECT 1").await.unwrap();
    assert!(pg().backends_in(&db).await <= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_user_connections_is_shared_by_the_pools_of_a_user() {
    let db1 = pg().create_database("t_maxuser1").await;
    let db2 = pg().create_database("t_maxuser2").await;
    let (dir, port) = (pg().socket_dir().display().to_string(), pg().port());
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nquery_wait_timeout = \"20s\"\n\
         [users.sluice_trust]\nmax_user_connections = 1\n\
         [databases.{db1}]\nhost = \"{dir}\"\nport = {port}\n[databases.{db2}]\nhost = \"{dir}\"\nport = {port}\n"
    );
    let sluice = start_sluice(&text).await;
    let addr = sluice.tcp_addr();
    let a = connect(addr, "sluice_trust", "", &db1).await.unwrap();
    let b = connect(addr, "sluice_trust", "", &db2).await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let bq = tokio::spawn(async move { b.batch_execute("SELECT 1").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !bq.is_finished(),
        "the user got a second server past max_user_connections"
    );
    assert_eq!(pg().backends_in(&db1).await + pg().backends_in(&db2).await, 1);
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), bq)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(pg().backends_in(&db1).await + pg().backends_in(&db2).await <= 1);
}
