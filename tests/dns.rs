//! Server host names: resolved, kept for dns_max_ttl and listed by SHOW DNS_HOSTS; with
//! dns_max_ttl = 0 nothing is kept.

mod common;

use common::config::PoolerToml;
use common::{admin_console, connect, console_query, pg, start_sluice};

fn config(db: &str, ttl: &str) -> String {
    PoolerToml::trust()
        .set(&format!("dns_max_ttl = \"{ttl}\""))
        .admin()
        .tail(&format!(
            "[databases.{db}]\nhost = \"localhost\"\nport = {}\npool_size = 2\n",
            pg().port()
        ))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_host_name_is_cached_for_dns_max_ttl_and_listed() {
    let db = pg().create_database("t_dns").await;
    let sluice = start_sluice(&config(&db, "60s")).await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
    c.batch_execute("SELECT 1")
        .await
        .expect("a query through a server named by host name");
    let console = admin_console(sluice.tcp_addr()).await;
    let rows = console_query(&console, "SHOW DNS_HOSTS").await;
    let name = format!("localhost:{}", pg().port());
    let row = rows
        .iter()
        .find(|r| r["hostname"].as_deref() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("{name} not in SHOW DNS_HOSTS: {rows:?}"));
    assert!(
        row["addrs"].as_deref().unwrap_or("").contains("127.0.0.1"),
        "{row:?}"
    );
    let ttl: u64 = row["ttl"].as_deref().unwrap_or("0").parse().unwrap();
    assert!((50..=60).contains(&ttl), "{row:?}");
    let lists = console_query(&console, "SHOW LISTS").await;
    let dns_names = lists
        .iter()
        .find(|r| r["list"].as_deref() == Some("dns_names"))
        .and_then(|r| r["items"].clone());
    assert_ne!(dns_names.as_deref(), Some("0"), "{lists:?}");
    drop(console);
    sluice.shutdown().await;
}
