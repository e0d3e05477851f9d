//! Idle server connections in a zero-drop upgrade (docs/upgrades.md, "What moves with a
//! server"): the new process takes over the old one's idle servers with their backend, so
//! PostgreSQL sees no new connection and never more than pool_size for the pool; prepared
//! statements stay prepared, cancels reach the moved backend, servers the new configuration
//! has no room for are closed, and a new process dying part-way leaves the rest with the old
//! one. Each test counts the backends of a database of its own in pg_stat_activity.

mod common;
mod upgrade_support;

use common::{ConsoleRow, console_rows, pg};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, SimpleQueryMessage};
use upgrade_support::{Generations, cancel_and_see_it_cancelled, signal};

/// `dbname` of database `app`: the test's own PostgreSQL database.
fn on_db(db: &str) -> String {
    format!("dbname = \"{db}\"\n")
}

/// The first column of the first row of a simple query.
async fn scalar(c: &Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.expect(sql);
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

/// The backend each client gets inside a transaction of its own (all open at once, so each
/// holds a server of its own).
async fn pids_in_transactions(clients: &[&Client]) -> BTreeSet<i32> {
    for c in clients {
        c.batch_execute("BEGIN").await.expect("BEGIN");
    }
    let mut pids = BTreeSet::new();
    for c in clients {
        pids.insert(scalar(c, "SELECT pg_backend_pid()").await.parse().unwrap());
    }
    for c in clients {
        c.batch_execute("COMMIT").await.expect("COMMIT");
    }
    pids
}

/// (pid, backend_start) of every client backend on `db`.
async fn backends(admin: &Client, db: &str) -> BTreeSet<(i32, String)> {
    admin
        .query(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            &[&db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn pids(backends: &BTreeSet<(i32, String)>) -> BTreeSet<i32> {
    backends.iter().map(|(p, _)| *p).collect()
}

/// Waits until `db` has `n` client backends; returns them.
async fn wait_backends(admin: &Client, db: &str, n: usize) -> BTreeSet<(i32, String)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = backends(admin, db).await;
        if now.len() == n {
            return now;
        }
        assert!(Instant::now() < deadline, "{n} backends on {db}: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples the count of client backends on a database until stopped; the most seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<i64>,
}

impl Sampler {
    async fn start(db: &str) -> Sampler {
        let admin = pg().admin_client().await;
        let db = db.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let n: i64 = admin
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
                            &[&db],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    most.fetch_max(n, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                most.load(Ordering::Relaxed)
            }
        });
        Sampler { stop, task }
    }

    async fn most(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// SHOW SERVERS of database `app`: backend pid -> (connect_time, addr, port).
async fn show_servers(g: &Generations) -> BTreeMap<String, (String, String, String)> {
    let rows: Vec<ConsoleRow> = console_rows(g.addr(), "admin", "SHOW SERVERS").await;
    let get = |r: &ConsoleRow, k: &str| r.get(k).cloned().flatten().unwrap_or_default();
    rows.iter()
        .filter(|r| get(r, "database") == "app")
        .map(|r| {
            (
                get(r, "remote_pid"),
                (get(r, "connect_time"), get(r, "addr"), get(r, "port")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_servers_move_with_their_backends_and_postgres_never_sees_more_than_pool_size() {
    let db = pg().create_database("upgrade_servers_move").await;
    let admin = pg().admin_client().await;
    let mut g = Generations::start_with_tail(4, "", &on_db(&db), &[]);
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(g.client().await);
    }
    let first: Vec<&Client> = clients.iter().take(4).collect();
    let moved = pids_in_transactions(&first).await;
    assert_eq!(moved.len(), 4, "four servers open");
    let before = backends(&admin, &db).await;
    assert_eq!(pids(&before), moved);
    let shown = show_servers(&g).await;
    assert_eq!(shown.len(), 4, "{shown:?}");

    let sampler = Sampler::start(&db).await;
    g.upgrade().await;

    // Four transactions at once run on the same four backends: no server was opened.
    let after = pids_in_transactions(&first).await;
    for c in &clients[4..] {
        c.simple_query("SELECT 1").await.expect("served");
    }
    let most = sampler.most().await;
    assert_eq!(
        after,
        moved,
        "the clients are served by the moved backends\n{}",
        g.log_text()
    );
    assert_eq!(
        backends(&admin, &db).await,
        before,
        "no backend connected or closed (pid and backend_start)"
    );
    assert!(most <= 4, "PostgreSQL saw {most} connections of a pool of 4");
    assert_eq!(
        show_servers(&g).await,
        shown,
        "SHOW SERVERS of the new process: the same backends, connect times and addresses"
    );
    assert!(g.log_text().contains("servers=4"), "{}", g.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prepared_statement_runs_on_its_moved_server_without_a_new_parse() {
    let db = pg().create_database("upgrade_servers_prepared").await;
    let admin = pg().admin_client().await;
    let mut g = Generations::start_with_tail(1, "", &on_db(&db), &[]);
    let c = g.client().await;
    let stmt = c.prepare("SELECT $1::int + 40").await.unwrap();
    assert_eq!(c.query_one(&stmt, &[&2i32]).await.unwrap().get::<_, i32>(0), 42);
    let backend = scalar(&c, "SELECT pg_backend_pid()").await;
    let before_upgrade = scalar(&admin, "SELECT clock_timestamp()::text").await;

    g.upgrade().await;

    let row = c
        .query_one(&stmt, &[&3i32])
        .await
        .expect("the statement runs after the upgrade");
    assert_eq!(row.get::<_, i32>(0), 43);
    // The server's copy is the one prepared before the upgrade: not parsed again.
    let held = scalar(
        &c,
        &format!(
            "SELECT count(*) FILTER (WHERE prepare_time < '{before_upgrade}'::timestamptz) || '/' || count(*) \
             FROM pg_prepared_statements WHERE name LIKE 'sluice_%'"
        ),
    )
    .await;
    assert_eq!(held, "1/1", "one sluice statement, prepared before the upgrade");
    assert_eq!(
        scalar(&c, "SELECT pg_backend_pid()").await,
        backend,
        "on the moved server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reaches_a_query_on_a_moved_server_and_not_the_victims() {
    let db = pg().create_database("upgrade_servers_cancel").await;
    let admin = pg().admin_client().await;
    let mut g = Generations::start_with_tail(2, "", &on_db(&db), &[]);
    let target = g.client().await;
    let victim = g.client().await;
    let moved = pids_in_transactions(&[&target, &victim]).await;
    assert_eq!(moved.len(), 2);
    let token = target.cancel_token();
    g.upgrade().await;

    let slow = tokio::spawn(async move { target.simple_query("SELECT pg_sleep(30)").await });
    let calm = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(3)").await });
    let deadline = Instant::now() + Duration::from_secs(5);
    let running: i32 = loop {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query = 'SELECT pg_sleep(30)' AND state = 'active'",
                &[&db],
            )
            .await
            .unwrap();
        if let Some(r) = rows.first() {
            break r.get(0);
        }
        assert!(Instant::now() < deadline, "the slow query runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        moved.contains(&running),
        "the query runs on a moved server ({running} in {moved:?})"
    );
    cancel_and_see_it_cancelled(&token, slow).await;
    calm.await.unwrap().expect("the victim's query was not cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_the_new_configuration_has_no_room_for_are_closed_and_clients_carry_on() {
    let db = pg().create_database("upgrade_servers_shrink").await;
    let admin = pg().admin_client().await;
    let gone = format!(
        "{}\n[databases.gone]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"{db}\"\npool_size = 2\n",
        on_db(&db),
        pg().port()
    );
    let mut g = Generations::start_with_tail(4, "", &gone, &[]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(g.client().await);
    }
    let all: Vec<&Client> = clients.iter().collect();
    let app = pids_in_transactions(&all).await;
    {
        // Two servers of pool `gone`, idle once its clients left.
        let a = common::connect(g.addr(), "sluice_trust", "", "gone")
            .await
            .unwrap();
        let b = common::connect(g.addr(), "sluice_trust", "", "gone")
            .await
            .unwrap();
        assert_eq!(pids_in_transactions(&[&a, &b]).await.len(), 2);
    }
    wait_backends(&admin, &db, 6).await;
    // The next process: `gone` is no longer configured, and `app` has room for 2.
    g.rewrite_config(2, "", &on_db(&db));
    g.upgrade().await;

    let kept = wait_backends(&admin, &db, 2).await;
    assert!(
        pids(&kept).is_subset(&app),
        "two of app's servers were adopted, the rest closed: {kept:?} of {app:?}\n{}",
        g.log_text()
    );
    for c in &clients {
        c.simple_query("SELECT 1").await.expect("no client gets an error");
    }
    let two: Vec<&Client> = clients.iter().take(2).collect();
    assert_eq!(
        pids_in_transactions(&two).await,
        pids(&kept),
        "served by the adopted ones"
    );
    assert_eq!(
        backends(&admin, &db).await,
        kept,
        "nothing leaked, nothing opened"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_new_process_dying_after_two_servers_leaves_the_rest_with_the_old_one() {
    let db = pg().create_database("upgrade_servers_dying").await;
    let admin = pg().admin_client().await;
    let hook = [("SLUICE_UPGRADE_TEST_EXIT", "servers:2")];
    let mut g = Generations::start_with_tail(4, "", &on_db(&db), &hook);
    let opened = {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(g.client().await);
        }
        let all: Vec<&Client> = clients.iter().collect();
        pids_in_transactions(&all).await
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.show_clients().await.is_empty() {
        assert!(Instant::now() < deadline, "the clients left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = g.pid().unwrap();
    signal(old, libc::SIGUSR2);
    g.wait_log("upgrade failed, this process serves on", 1).await;
    assert!(g.alive(old), "the old process runs\n{}", g.log_text());
    assert_eq!(g.pid(), Some(old));
    // The two adopted servers went with the new process; the two sent and not answered for
    // are this process's again, and serve its clients (no new backend).
    let kept = wait_backends(&admin, &db, 2).await;
    assert!(pids(&kept).is_subset(&opened), "{kept:?} of {opened:?}");
    let a = g.client().await;
    let b = g.client().await;
    assert_eq!(
        pids_in_transactions(&[&a, &b]).await,
        pids(&kept),
        "{}",
        g.log_text()
    );
    assert_eq!(backends(&admin, &db).await, kept);
    // A second upgrade (no hook) moves them.
    g.upgrade().await;
    assert_eq!(pids_in_transactions(&[&a, &b]).await, pids(&kept));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_process_takes_over_from_an_old_one_speaking_format_1_without_its_servers() {
    let db = pg().create_database("upgrade_servers_v1").await;
    let admin = pg().admin_client().await;
    let hook = [("SLUICE_UPGRADE_TEST_OLD_VERSION", "1")];
    let mut g = Generations::start_with_tail(2, "", &on_db(&db), &hook);
    let a = g.client().await;
    let b = g.client().await;
    let old = pids_in_transactions(&[&a, &b]).await;
    g.upgrade().await;
    assert!(
        g.log_text().contains("speaks format 1"),
        "the old process spoke format 1\n{}",
        g.log_text()
    );
    // The clients moved; their servers did not (format 1 has none) and closed with the old one.
    let new = pids_in_transactions(&[&a, &b]).await;
    assert!(new.is_disjoint(&old), "{new:?} vs {old:?}");
    // The old backends end as PostgreSQL notices their connections closed.
    assert_eq!(pids(&wait_backends(&admin, &db, 2).await), new);
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_a_client_left_on_a_moved_server_reach_no_other_client() {
    let db = pg().create_database("upgrade_servers_settings").await;
    let mut g = Generations::start_with_tail(1, "", &on_db(&db), &[]);
    let setter = g.client().await;
    let other = g.client().await;
    let zone = scalar(&other, "SHOW TimeZone").await;
    let timeout = scalar(&other, "SHOW statement_timeout").await;
    // A reported setting (TimeZone) and an unreported one, left on the only server.
    setter
        .batch_execute("SET TimeZone = 'Asia/Tokyo'; SET statement_timeout = '4321s'")
        .await
        .unwrap();
    let backend = scalar(&setter, "SELECT pg_backend_pid()").await;
    assert_ne!(zone, "Asia/Tokyo");

    g.upgrade().await;

    assert_eq!(
        scalar(&other, "SELECT pg_backend_pid()").await,
        backend,
        "the moved server"
    );
    assert_eq!(
        scalar(&other, "SHOW TimeZone").await,
        zone,
        "not the setter's time zone"
    );
    assert_eq!(scalar(&other, "SHOW statement_timeout").await, timeout);
    assert_eq!(scalar(&setter, "SHOW TimeZone").await, "Asia/Tokyo");
    assert_eq!(scalar(&setter, "SHOW statement_timeout").await, "4321s");
    assert_eq!(scalar(&setter, "SELECT pg_backend_pid()").await, backend);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_staying_behind_keeps_its_pools_servers_until_the_end() {
    let db = pg().create_database("upgrade_servers_staying").await;
    let admin = pg().admin_client().await;
    let pki = common::certs::Pki::new();
    let extra = format!(
        "upgrade_timeout = \"3s\"\nclient_tls_sslmode = \"allow\"\nclient_tls_cert_file = {:?}\nclient_tls_key_file = {:?}",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string()
    );
    let mut g = Generations::start_with_tail(2, &extra, &on_db(&db), &[]);
    let plain = g.client().await;
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(g.port)
        .user("sluice_trust")
        .dbname("app");
    let tls = common::certs::connect_tls(config, &pki.ca)
        .await
        .expect("TLS login");
    let opened = pids_in_transactions(&[&plain, &tls]).await;
    let before = backends(&admin, &db).await;
    let old = g.pid().unwrap();
    signal(old, libc::SIGUSR2);
    g.wait_log("upgrade: the new process accepts", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The plain client moved; the TLS one stays, and so do its pool's servers: each of its
    // transactions runs on one of them, not on a server opened for it.
    for _ in 0..5 {
        let pid: i32 = scalar(&tls, "SELECT pg_backend_pid()").await.parse().unwrap();
        assert!(
            opened.contains(&pid),
            "the staying client runs on its pool's servers ({pid} in {opened:?})\n{}",
            g.log_text()
        );
    }
    assert_eq!(backends(&admin, &db).await, before, "no server opened meanwhile");
    // At upgrade_timeout the TLS client is told to go; the servers move at the end.
    g.upgrade().await;
    assert!(
        tls.simple_query("SELECT 1").await.is_err(),
        "the TLS client was disconnected"
    );
    let now = pids_in_transactions(&[&plain]).await;
    assert!(now.is_subset(&opened), "{now:?} of {opened:?}\n{}", g.log_text());
    assert_eq!(backends(&admin, &db).await, before, "both moved at the end");
}
