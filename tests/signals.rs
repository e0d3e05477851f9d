//! Process control of the real binary: SIGHUP reloads (and keeps the old config when the file is
//! broken), SIGINT waits for transactions, SIGTERM waits for clients, a second signal exits now.

mod common;

use common::config::PoolerToml;
use common::{connect, connect_with, wait_until};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn config(port: u16, pool: u32) -> String {
    PoolerToml::trust()
        .listen_port(port)
        .admin()
        .database("app", Some(pool))
        .build()
}

fn spawn(path: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--allow-root") // tests run as root in CI
        .arg("--config")
        .arg(path)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice")
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we own.
    unsafe { libc::kill(child.id() as i32, sig) };
}

async fn exits_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn up(port: u16) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(Duration::from_secs(10), "sluice accepts connections", || async {
        connect(addr, "sluice_trust", "", "app").await.is_ok()
    })
    .await;
}

async fn pool_size_seen(port: u16) -> String {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(port).user("admin").dbname("pgbouncer");
    let c = connect_with(cfg).await.unwrap();
    let msgs = c.simple_query("SHOW DATABASES").await.unwrap();
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("pool_size").map(str::to_string),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_a_broken_file_keeps_the_old_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pooler.toml");
    let port = common::free_port();
    std::fs::write(&path, config(port, 2)).unwrap();
    let mut child = spawn(&path);
    up(port).await;
    assert_eq!(pool_size_seen(port).await, "2");
    std::fs::write(&path, config(port, 7)).unwrap();
    signal(&child, libc::SIGHUP);
    wait_until(
        Duration::from_secs(5),
        "SIGHUP applies the new pool_size",
        || async { pool_size_seen(port).await == "7" },
    )
    .await;
    std::fs::write(&path, "[pooler\nbroken").unwrap();
    signal(&child, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pool_size_seen(port).await,
        "7",
        "an invalid file is refused, the old config stays"
    );
    signal(&child, libc::SIGTERM);
    signal(&child, libc::SIGTERM);
    assert!(
        exits_within(&mut child, Duration::from_secs(5)).await,
        "a second SIGTERM exits at once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_lets_the_open_transaction_commit_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pooler.toml");
    let port = common::free_port();
    std::fs::write(&path, config(port, 2)).unwrap();
    let mut child = spawn(&path);
    up(port).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let tx = connect(addr, "sluice_trust", "", "app").await.unwrap();
    tx.batch_execute("BEGIN; SELECT 1").await.unwrap();
    signal(&child, libc::SIGINT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running while a transaction is open"
    );
    assert!(
        connect(addr, "sluice_trust", "", "app").await.is_err(),
        "no new clients while draining"
    );
    tx.batch_execute("SELECT 2; COMMIT")
        .await
        .expect("the transaction finishes");
    assert!(
        exits_within(&mut child, Duration::from_secs(5)).await,
        "exits once the transaction is done"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_waits_for_clients_to_leave() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pooler.toml");
    let port = common::free_port();
    std::fs::write(&path, config(port, 2)).unwrap();
    let mut child = spawn(&path);
    up(port).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = connect(addr, "sluice_trust", "", "app").await.unwrap();
    signal(&child, libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.batch_execute("SELECT 1")
        .await
        .expect("a connected client keeps working");
    assert!(
        child.try_wait().unwrap().is_none(),
        "waits while a client is connected"
    );
    drop(c);
    assert!(
        exits_within(&mut child, Duration::from_secs(5)).await,
        "exits when the last client leaves"
    );
}
