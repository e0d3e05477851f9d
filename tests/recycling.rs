//! Server recycling (server_lifetime, server_idle_timeout, server_check_query/delay,
//! server_reset_query_always) and session parameters (application_name_add_host,
//! ignore_startup_parameters).

mod common;

use common::config::PoolerToml;
use common::raw::RawClient;
use common::{connect, connect_with, pg, start_sluice, wait_until};
use std::time::Duration;

fn config(db: &str, extra: &str) -> String {
    PoolerToml::trust().set(extra).database(db, Some(1)).build()
}

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn server_lifetime_replaces_old_servers() {
    let db = pg().create_database("t_lifetime").await;
    let sluice = start_sluice(&config(&db, "server_lifetime = \"1s\"")).await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
    let first = pid(&c).await;
    assert_eq!(pid(&c).await, first, "reused while young");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_ne!(pid(&c).await, first, "replaced after server_lifetime");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_idle_timeout_closes_idle_servers() {
    let db = pg().create_database("t_idle_timeout").await;
    let sluice = start_sluice(&config(&db, "server_idle_timeout = \"500ms\"")).await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    let admin = pg().admin_client().await;
    wait_until(Duration::from_secs(5), "the idle server is closed", || async {
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", &[&db])
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    // The client does not notice: its next transaction opens a fresh server.
    c.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn server_check_query_runs_on_servers_idle_past_the_delay() {
    let db = pg().create_database("t_check").await;
    let check = "server_check_query = \"SELECT pg_catalog.set_config('sluice.checked', 'yes', false)\"";
    let checked = |c: tokio_postgres::Client| async move {
        let r = c
            .query_typed(
                "SELECT coalesce(current_setting('sluice.checked', true), 'no')",
                &[],
            )
            .await;
        r.unwrap()[0].get::<_, String>(0)
    };
    let sluice = start_sluice(&config(&db, &format!("{check}\nserver_check_delay = 0"))).await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
    assert_eq!(checked(c).await, "yes", "checked before reuse");

    let db2 = pg().create_database("t_check_delay").await;
    let sluice = start_sluice(&config(&db2, &format!("{check}\nserver_check_delay = \"1h\""))).await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", &db2)
        .await
        .unwrap();
    assert_eq!(checked(c).await, "no", "a recently used server is not checked");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_reset_query_always_resets_between_transactions() {
    let probe = "SELECT coalesce(current_setting('sluice.leak', true), '')";
    for (always, expected) in [(false, "from_a"), (true, "")] {
        let db = pg().create_database(&format!("t_reset_always_{always}")).await;
        let sluice = start_sluice(&config(&db, &format!("server_reset_query_always = {always}"))).await;
        let a = connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
        a.batch_execute("SET sluice.leak = 'from_a'").await.unwrap();
        let b = connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
        // The reset runs off the client's path; give it a moment to finish.
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let v: String = b.query_typed(probe, &[]).await.unwrap()[0].get(0);
                if v == expected || !always {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(seen, expected, "server_reset_query_always = {always}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn application_name_add_host_and_ignore_startup_parameters() {
    let db = pg().create_database("t_appname").await;
    let extra = "application_name_add_host = true\nignore_startup_parameters = [\"geqo\"]";
    let sluice = start_sluice(&config(&db, extra)).await;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(sluice.tcp_addr().port())
        .user("sluice_trust")
        .dbname(&db)
        .application_name("web");
    let c = connect_with(cfg).await.unwrap();
    let name: String = c
        .query_typed("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert!(name.starts_with("web - 127.0.0.1:"), "{name}");

    // An ignored startup parameter is accepted and not applied.
    let mut raw = RawClient::login_trust(
        sluice.tcp_addr(),
        &[("user", "sluice_trust"), ("database", &db), ("geqo", "off")],
    )
    .await;
    raw.query("SELECT current_setting('geqo')").await;
    let msgs = raw.read_until(b'Z').await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(row.data_row(), vec![Some("on".to_string())]);
}
