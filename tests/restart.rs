//! PostgreSQL restarts under load (fast, immediate, and a killed postmaster): a bystander that is
//! never inside a transaction sees no error and waits no longer than the outage plus a second;
//! writers keep going (one caught mid-transaction may fail and retry); no acknowledged commit is
//! lost.

mod common;

use common::{TempPostgres, connect, start_sluice};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WRITERS: u64 = 20;

/// What the bystander saw.
#[derive(Default)]
struct Bystander {
    queries: u64,
    errors: Vec<String>,
    worst: Duration,
    latencies: Vec<Duration>,
    /// When each successful query completed.
    successes: Vec<Instant>,
}

/// The acknowledged commits and the failures of the writers.
#[derive(Default)]
struct Writers {
    acked: HashSet<i64>,
    failures: u64,
}

/// One writer: transactions of two inserts (with a short pause between, so some are in flight
/// when PostgreSQL goes down); a commit that returned Ok is recorded. A failed transaction is
/// retried, on a new connection if sluice closed this one.
async fn writer(addr: SocketAddr, n: u64, stop: Arc<AtomicBool>, out: Arc<Mutex<Writers>>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut seq = 0i64;
    while !stop.load(Ordering::Relaxed) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(addr, "sluice_trust", "", "app").await.ok();
        }
        let Some(c) = client.as_mut() else {
            out.lock().failures += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        seq += 1;
        let id = (n as i64) * 10_000_000 + seq * 2;
        let tx = async {
            let t = c.transaction().await?;
            t.execute("INSERT INTO acks VALUES ($1)", &[&id]).await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
            t.execute("INSERT INTO acks VALUES ($1)", &[&(id + 1)]).await?;
            t.commit().await
        };
        match tokio::time::timeout(Duration::from_secs(20), tx).await {
            Ok(Ok(())) => {
                let mut w = out.lock();
                w.acked.insert(id);
                w.acked.insert(id + 1);
            }
            Ok(Err(_)) => {
                out.lock().failures += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => panic!("writer {n}: a transaction hung for 20 s"),
        }
    }
}

/// The bystander: `SELECT 1` every 50 ms on one connection, never inside a transaction.
async fn bystander(addr: SocketAddr, stop: Arc<AtomicBool>, out: Arc<Mutex<Bystander>>) {
    let client = connect(addr, "sluice_trust", "", "app")
        .await
        .expect("bystander login");
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(30), client.simple_query("SELECT 1")).await;
        let took = started.elapsed();
        {
            let mut b = out.lock();
            b.queries += 1;
            b.worst = b.worst.max(took);
            b.latencies.push(took);
            match r {
                Ok(Ok(_)) => b.successes.push(Instant::now()),
                Ok(Err(e)) => b.errors.push(format!("after {took:?}: {e:?}")),
                Err(_) => b.errors.push("hung for 30 s".to_string()),
            }
            if client.is_closed() {
                b.errors.push("the bystander's connection was closed".to_string());
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_costs_a_bystander_no_error_and_loses_no_commit() {
    let mut pg = tokio::task::block_in_place(TempPostgres::start_standalone);
    // The harness runs with synchronous_commit off (fast, but a crash loses the last commits
    // that were acknowledged): a commit must be durable for this test to mean anything.
    pg.admin_client()
        .await
        .batch_execute("ALTER DATABASE app SET synchronous_commit = on")
        .await
        .unwrap();
    // server_outage_grace is left at its default.
    let sluice = start_sluice(&format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nquery_wait_timeout = \"30s\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 8\n",
        pg.port()
    ))
    .await;
    let addr = sluice.tcp_addr();
    connect(addr, "sluice_trust", "", "app")
        .await
        .unwrap()
        .batch_execute("CREATE TABLE acks (id bigint PRIMARY KEY)")
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers = Arc::new(Mutex::new(Writers::default()));
    let seen = Arc::new(Mutex::new(Bystander::default()));
    let mut tasks = Vec::new();
    for n in 0..WRITERS {
        tasks.push(tokio::spawn(writer(addr, n, stop.clone(), writers.clone())));
    }
    tasks.push(tokio::spawn(bystander(addr, stop.clone(), seen.clone())));

    let acked_now = || writers.lock().acked.len() as u64;
    let wait_for_progress = |what: &'static str| {
        let before = acked_now();
        async move {
            common::wait_until(Duration::from_secs(10), what, || async {
                acked_now() >= before + 2 * WRITERS
            })
            .await
        }
    };
    wait_for_progress("writers commit before the first restart").await;

    let mut outages = Vec::new();
    for kind in ["fast", "immediate", "kill -9"] {
        let down = Instant::now();
        tokio::task::block_in_place(|| match kind {
            "fast" => {
                pg.stop();
                pg.start();
            }
            "immediate" => {
                pg.stop_immediate();
                pg.start();
            }
            _ => {
                pg.kill_postmaster();
                pg.start_after_crash();
            }
        });
        let outage = down.elapsed();
        eprintln!("{kind} restart: PostgreSQL accepted connections again after {outage:?}");
        outages.push((kind, outage, Instant::now()));
        wait_for_progress("writers commit after the restart").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }

    // The tasks are done: take the results out of their locks.
    let mut b = std::mem::take(&mut *seen.lock());
    let w = std::mem::take(&mut *writers.lock());
    b.latencies.sort();
    let median = b
        .latencies
        .get(b.latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    eprintln!("bystander median latency {median:?}");
    let longest = outages.iter().map(|(_, d, _)| *d).max().unwrap_or_default();
    for (kind, _, up) in &outages {
        let served = b
            .successes
            .iter()
            .find(|t| *t > up)
            .map(|t| t.duration_since(*up));
        eprintln!("{kind}: the bystander was served {served:?} after PostgreSQL accepted connections");
    }
    eprintln!(
        "bystander: {} queries, {} errors, worst latency {:?}; writers: {} rows acknowledged, {} failed transactions",
        b.queries,
        b.errors.len(),
        b.worst,
        w.acked.len(),
        w.failures
    );
    assert!(b.errors.is_empty(), "the bystander saw errors: {:#?}", b.errors);
    assert!(
        b.worst <= longest + Duration::from_secs(1),
        "the bystander waited {:?}; the longest outage was {longest:?}",
        b.worst
    );

    let mut config = tokio_postgres::Config::new();
    config
        .host_path(pg.socket_dir())
        .port(pg.port())
        .user(common::SUPERUSER)
        .dbname("app");
    let direct = common::connect_with(config).await.expect("direct connection");
    let present: HashSet<i64> = direct
        .query("SELECT id FROM acks", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<_> = w.acked.difference(&present).take(10).collect();
    assert!(
        lost.is_empty(),
        "acknowledged commits missing after the restarts: {lost:?}"
    );
}

/// The first error of a query, with how long it took.
async fn timed_error(c: &tokio_postgres::Client) -> (Duration, tokio_postgres::error::DbError) {
    let started = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(20), c.simple_query("SELECT 1"))
        .await
        .expect("no hang")
        .expect_err("PostgreSQL is down");
    let db = e.as_db_error().expect("an ErrorResponse").clone();
    (started.elapsed(), db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_longer_than_the_grace_fails_fast_with_the_real_cause() {
    let mut pg = tokio::task::block_in_place(TempPostgres::start_standalone);
    let sluice = start_sluice(&format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nquery_wait_timeout = \"30s\"\n\
         server_outage_grace = \"1s\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 2\n",
        pg.port()
    ))
    .await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    tokio::task::block_in_place(|| pg.stop());

    // The first request waits out the grace, then gets the cause.
    let (took, first) = timed_error(&c).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "the first error came after {took:?}; server_outage_grace is 1s"
    );
    assert!(
        first.message().contains("could not connect to server"),
        "{}",
        first.message()
    );
    // Past the grace, errors come at once.
    let (took, second) = timed_error(&c).await;
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(
        second
            .message()
            .starts_with("server login has been failing, cached error: "),
        "{}",
        second.message()
    );
    assert!(
        second.detail().is_some_and(|d| d.contains("server_outage_grace")),
        "{:?}",
        second.detail()
    );

    // And the pool heals once PostgreSQL is back.
    tokio::task::block_in_place(|| pg.start());
    common::wait_until(Duration::from_secs(10), "the pool heals", || async {
        c.simple_query("SELECT 1").await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_server_login_is_not_waited_for() {
    let pg = tokio::task::block_in_place(TempPostgres::start_standalone);
    let sluice = start_sluice(&format!(
        "[pooler]\nlisten_port = 0\nquery_wait_timeout = \"30s\"\nserver_outage_grace = \"10s\"\n\
         [users.sluice_scram]\npassword = \"scram_pw\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 2\n",
        pg.port()
    ))
    .await;
    let c = connect(sluice.tcp_addr(), "sluice_scram", "scram_pw", "app")
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    // The server now refuses sluice's login: a wrong password is no outage to wait out.
    // The terminate waits (up to 5 s) for the backend to be gone, so sluice finds its pooled
    // server closed rather than racing the backend's exit with the next request.
    let admin = pg.admin_client().await;
    admin
        .batch_execute(
            "ALTER ROLE sluice_scram PASSWORD 'changed'; \
             SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE usename = 'sluice_scram'",
        )
        .await
        .unwrap();
    let (took, e) = timed_error(&c).await;
    assert_eq!(e.code().code(), "28P01", "{e:?}");
    assert!(
        took < Duration::from_secs(2),
        "a refused login was waited on for {took:?}"
    );
}

/// The first column of the first row of `sql`, over the simple protocol.
async fn first_value(c: &tokio_postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

/// A client with its own settings, on a sluice at `addr`.
async fn client_named(addr: SocketAddr, name: &str) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user("sluice_trust")
        .dbname("app")
        .application_name(name);
    common::connect_with(config).await.expect("login")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_lost_before_the_request_was_sent_costs_no_error() {
    let pg = tokio::task::block_in_place(TempPostgres::start_standalone);
    let sluice = start_sluice(&format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nquery_wait_timeout = \"30s\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 1\n",
        pg.port()
    ))
    .await;
    let addr = sluice.tcp_addr();
    // The pool's one server last served b, so a's next request needs a parameter sync first.
    let b = client_named(addr, "b").await;
    // The simple protocol throughout: one request each, nothing sent behind it.
    let pid: i32 = first_value(&b, "SELECT pg_backend_pid()").await.parse().unwrap();
    let a = client_named(addr, "a").await;
    // The backend stops answering (it looks idle and healthy to the pool) ...
    // SAFETY: kill(2) on the pid PostgreSQL reported for that backend.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let query = tokio::spawn(async move {
        let r = tokio::time::timeout(Duration::from_secs(20), a.simple_query("SELECT 42")).await;
        (r, a)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... and dies while a's sync waits on it: PostgreSQL restarts all backends after a crash.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let (r, a) = query.await.unwrap();
    r.expect("no hang")
        .expect("a request that never reached a server gets another server, not an error");
    assert_eq!(first_value(&a, "SHOW application_name").await, "a");
}
