//! The per-core runtimes (`runtime = "per-core"`, issue 17): sessions spread over worker threads
//! still share one pool (its limit holds across threads, a server released on one thread goes to
//! a client waiting on another, a server opened on one thread serves clients of another), and
//! the worker threads end with the pooler.

mod common;

use common::config::PoolerToml;
use common::{connect, pg, start_sluice, wait_until};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Transaction mode, pool `pool`, two per-core workers.
fn config(db: &str, pool: u32, extra: &str) -> String {
    PoolerToml::new("scram-sha-256")
        .pool_mode("transaction")
        .set("runtime = \"per-core\"")
        .set("workers = 2")
        .set(extra)
        .user_password("sluice_scram", "scram_pw")
        .database(db, Some(pool))
        .build()
}

/// The tests of this file one at a time: the last one counts the process's worker threads.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Ids of this process's threads whose name starts with `prefix` (/proc/self/task/*/comm).
fn threads_named(prefix: &str) -> std::collections::BTreeSet<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Default::default();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|name| name.starts_with(prefix)))
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_both_workers_share_one_server_without_errors() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = pg().create_database("t_pc_share").await;
    let sluice = start_sluice(&config(&db, 1, "query_wait_timeout = \"20s\"")).await;
    let addr = sluice.tcp_addr();
    // Sessions are handed to the workers in turn: four clients land on both of them, and the
    // one server of the pool moves between the threads on (almost) every transaction.
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..4i64 {
        let (db, errors) = (db.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(addr, "sluice_scram", "scram_pw", &db)
                .await
                .expect("connect");
            for j in 0..100i64 {
                match client
                    .query_one("SELECT $1::int8 * 1000 + $2::int8", &[&i, &j])
                    .await
                {
                    Ok(row) => assert_eq!(row.get::<_, i64>(0), i * 1000 + j),
                    Err(e) => {
                        eprintln!("client {i}: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "clients saw errors");
    let admin = pg().admin_client().await;
    let n: i64 = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", &[&db])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "pool size 1 across two workers, but {n} servers are open");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_the_other_worker_gets_the_released_server() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = pg().create_database("t_pc_wait").await;
    let sluice = start_sluice(&config(&db, 1, "query_wait_timeout = \"5s\"")).await;
    let addr = sluice.tcp_addr();
    // Two clients in a row: the first lands on one worker, the second on the other.
    let holder = connect(addr, "sluice_scram", "scram_pw", &db)
        .await
        .expect("connect");
    let waiter = connect(addr, "sluice_scram", "scram_pw", &db)
        .await
        .expect("connect");
    holder.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    let waiting = tokio::spawn(async move {
        let row = waiter.query_one("SELECT 42", &[]).await;
        (waiter, row.map(|r| r.get::<_, i32>(0)))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the waiter was served while the only server was held"
    );
    holder.batch_execute("COMMIT").await.expect("commit");
    let (_waiter, got) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter was not served after the release")
        .expect("waiter task");
    assert_eq!(got.expect("waiter's query"), 42);
    // And back: the holder's next transaction gets the server from the other thread.
    let row = holder.query_one("SELECT 7", &[]).await.expect("holder again");
    assert_eq!(row.get::<_, i32>(0), 7);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_threads_end_with_the_pooler() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = pg().create_database("t_pc_stop").await;
    let before = threads_named("sluice-worker");
    let sluice = start_sluice(&config(&db, 2, "")).await;
    // A thread names itself once it runs: wait for both names.
    wait_until(
        Duration::from_secs(10),
        "two worker threads (workers = 2)",
        || async { threads_named("sluice-worker").difference(&before).count() == 2 },
    )
    .await;
    let ours: Vec<String> = threads_named("sluice-worker")
        .difference(&before)
        .cloned()
        .collect();
    let client = connect(sluice.tcp_addr(), "sluice_scram", "scram_pw", &db)
        .await
        .expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
    sluice.shutdown().await;
    wait_until(Duration::from_secs(10), "the worker threads to end", || async {
        let now = threads_named("sluice-worker");
        ours.iter().all(|t| !now.contains(t))
    })
    .await;
}

#[test]
fn per_core_is_the_default_runtime_and_shared_is_chosen_by_name() {
    let read = |text: &str| {
        sluice::Config::from_toml_str(text, "pooler.toml", None)
            .unwrap_or_else(|e| panic!("{e}"))
            .pooler
            .runtime
    };
    assert_eq!(
        read("[pooler]\nlisten_port = 0\n"),
        sluice::config::RuntimeKind::PerCore
    );
    assert_eq!(
        read("[pooler]\nlisten_port = 0\nruntime = \"shared\"\n"),
        sluice::config::RuntimeKind::Shared
    );
}
