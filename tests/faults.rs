//! PostgreSQL faults: backends killed under the pool, PostgreSQL stopped and restarted under
//! load, an unreachable port, and a transaction in flight when its server dies.

mod common;

use common::config::PoolerToml;
use common::{TempPostgres, connect, pg, start_sluice, wait_until};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn config(host_port: u16, db: &str, pool: u32) -> String {
    PoolerToml::trust()
        .set("query_wait_timeout = \"30s\"")
        .database_on(db, host_port, Some(pool))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_backends_are_replaced_without_client_errors() {
    let db = pg().create_database("t_killed").await;
    let sluice = start_sluice(&config(pg().port(), &db, 3)).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(sluice.tcp_addr(), "sluice_trust", "", &db).await.unwrap());
    }
    // Three concurrent transactions: three servers open.
    let busy = clients.iter().map(|c| c.batch_execute("SELECT pg_sleep(0.2)"));
    futures_util::future::try_join_all(busy).await.unwrap();
    assert_eq!(pg().backends_in(&db).await, 3);

    let admin = pg().admin_client().await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "the killed backends are gone", || async {
        pg().backends_in(&db).await == 0
    })
    .await;
    // Every client's next transaction succeeds on the first try, on fresh servers.
    for c in &clients {
        let n: i32 = c
            .query_typed("SELECT 42", &[])
            .await
            .expect("no client-visible error")[0]
            .get(0);
        assert_eq!(n, 42);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_in_flight_gets_a_clear_error_when_its_server_dies() {
    let db = pg().create_database("t_inflight").await;
    let sluice = start_sluice(&config(pg().port(), &db, 2)).await;
    let addr = sluice.tcp_addr();

    // Autocommit request: an ERROR, and the connection stays usable.
    let c = connect(addr, "sluice_trust", "", &db).await.unwrap();
    let sleeper = {
        let c2 = connect(addr, "sluice_trust", "", &db).await.unwrap();
        tokio::spawn(async move {
            let r = c2.simple_query("SELECT pg_sleep(30)").await;
            (r, c2)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = pg().admin_client().await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND query = 'SELECT pg_sleep(30)'",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let (r, c2) = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("no hang")
        .unwrap();
    let e = r.unwrap_err();
    let dbe = e.as_db_error().expect("an ErrorResponse");
    assert_eq!((dbe.severity(), dbe.code().code()), ("ERROR", "57P01"), "{dbe:?}");
    assert_eq!(
        c2.query_typed("SELECT 1", &[]).await.unwrap().len(),
        1,
        "connection still usable"
    );

    // Inside a transaction block: the transaction is lost, so the client is disconnected.
    c.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), c.query_typed("SELECT 1", &[]))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(
        e.as_db_error().is_some_and(|d| d.severity() == "FATAL") || e.is_closed(),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_fails_logins_fast_then_reports_the_cached_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nothing listens there
    let sluice = start_sluice(&config(port, "app", 2)).await;
    let started = Instant::now();
    let e = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap_err();
    let first = e.as_db_error().expect("an ErrorResponse").clone();
    assert_eq!(first.code().code(), "08006");
    assert!(
        first.message().contains("could not connect to server"),
        "{}",
        first.message()
    );
    let e = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap_err();
    let second = e.as_db_error().expect("an ErrorResponse").clone();
    assert!(
        second
            .message()
            .starts_with("server login has been failing, cached error: server login failed"),
        "{}",
        second.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load_heals_within_seconds() {
    let mut pg = tokio::task::block_in_place(TempPostgres::start_standalone);
    let sluice = start_sluice(&config(pg.port(), "app", 5)).await;
    let addr = sluice.tcp_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let last_ok = Arc::new(parking_lot::Mutex::new(vec![Instant::now(); 20]));
    let slowest_failure = Arc::new(parking_lot::Mutex::new(Duration::ZERO));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (stop, last_ok, slowest) = (stop.clone(), last_ok.clone(), slowest_failure.clone());
        tasks.push(tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            while !stop.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = connect(addr, "sluice_trust", "", "app").await.ok();
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let Some(c) = &client else { continue };
                let started = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(10), c.simple_query("SELECT 1"))
                    .await
                    .expect("a query hung for 10 s");
                match r {
                    Ok(_) => last_ok.lock()[i] = Instant::now(),
                    Err(_) => {
                        {
                            let mut s = slowest.lock();
                            *s = (*s).max(started.elapsed());
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| pg.stop());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| pg.start());
    let up = Instant::now();
    wait_until(
        Duration::from_secs(8),
        "all 20 clients run transactions again",
        || async { last_ok.lock().iter().all(|t| *t > up) },
    )
    .await;
    let healed = up.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    let slowest = *slowest_failure.lock();
    assert!(
        slowest < Duration::from_secs(3),
        "a failure took {slowest:?}: errors must come fast, not after query_wait_timeout"
    );
    assert!(healed < Duration::from_secs(6), "healing took {healed:?}");
    eprintln!("healed {healed:?} after PostgreSQL accepted connections; slowest failure {slowest:?}");
}
