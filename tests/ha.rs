//! Host lists on a real primary and streaming standby (`pg_basebackup -R`): round-robin spreads
//! servers over both, target_session_attrs routes to the right one, a dead host first in the list
//! costs clients nothing, and after the primary stops and the standby is promoted, writes through
//! a read-write database resume within seconds.

mod common;

use common::{TempPostgres, connect};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A primary and its standby, shared by the routing tests of this binary (the failover test
/// builds its own pair).
fn pair() -> &'static (TempPostgres, TempPostgres) {
    static PAIR: OnceLock<(TempPostgres, TempPostgres)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let primary = TempPostgres::start_standalone();
        let standby = primary.start_standby();
        (primary, standby)
    })
}

fn config(databases: &str) -> String {
    format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nquery_wait_timeout = \"10s\"\n\
         server_connect_timeout = \"1s\"\nadmin_users = [\"admin\"]\n[users.admin]\n[users.sluice_trust]\n{databases}"
    )
}

/// The server port and recovery state each of `n` concurrent clients' transactions ran on
/// (all held open at once, so each has a server of its own).
async fn where_transactions_ran(addr: SocketAddr, db: &str, n: usize) -> Vec<(i32, bool)> {
    let mut held = Vec::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let c = connect(addr, "sluice_trust", "", db).await.expect("client login");
        c.batch_execute("BEGIN").await.expect("begin");
        let row = c
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .expect("where");
        out.push((row.get(0), row.get(1)));
        held.push(c);
    }
    for c in held {
        c.batch_execute("COMMIT").await.expect("commit");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_with_round_robin_spreads_servers_over_primary_and_standby() {
    let (primary, standby) = pair();
    let toml = config(&format!(
        "[databases.app]\nhost = \"127.0.0.1\"\nport = \"{},{}\"\nload_balance_hosts = \"round-robin\"\npool_size = 4\n",
        primary.port(),
        standby.port()
    ));
    let sluice = common::start_sluice(&toml).await;
    let ran = where_transactions_ran(sluice.tcp_addr(), "app", 4).await;
    let mut per_port: BTreeMap<i32, usize> = BTreeMap::new();
    for (port, _) in &ran {
        *per_port.entry(*port).or_default() += 1;
    }
    assert_eq!(
        per_port.get(&i32::from(primary.port())),
        Some(&2),
        "two of four servers on the primary: {ran:?}"
    );
    assert_eq!(
        per_port.get(&i32::from(standby.port())),
        Some(&2),
        "two of four servers on the standby: {ran:?}"
    );
    // The console shows each server's own host, and SHOW HOSTS counts them per host.
    let console = common::admin_console(sluice.tcp_addr()).await;
    let servers = common::console_query(&console, "SHOW SERVERS").await;
    let mut shown: Vec<String> = servers
        .iter()
        .filter(|r| r["database"].as_deref() == Some("app"))
        .filter_map(|r| r["port"].clone())
        .collect();
    shown.sort();
    let mut want = vec![primary.port().to_string(); 2];
    want.extend(vec![standby.port().to_string(); 2]);
    want.sort();
    assert_eq!(shown, want, "{servers:?}");
    let hosts = common::console_query(&console, "SHOW HOSTS").await;
    for r in hosts.iter().filter(|r| r["database"].as_deref() == Some("app")) {
        assert_eq!(r["servers"].as_deref(), Some("2"), "{hosts:?}");
    }
    drop(console);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_route_to_the_matching_host() {
    let (primary, standby) = pair();
    let dead = common::free_port();
    let (p, s) = (primary.port(), standby.port());
    let toml = config(&format!(
        "[databases.ro]\ndbname = \"app\"\nhost = \"127.0.0.1:{p},127.0.0.1:{s}\"\ntarget_session_attrs = \"standby\"\n\
         [databases.rw]\ndbname = \"app\"\nhost = \"127.0.0.1\"\nport = \"{s},{p}\"\ntarget_session_attrs = \"read-write\"\n\
         [databases.prefer]\ndbname = \"app\"\nhost = \"127.0.0.1\"\nport = \"{p},{s}\"\ntarget_session_attrs = \"prefer-standby\"\n\
         [databases.prefer_no_standby]\ndbname = \"app\"\nhost = \"127.0.0.1\"\nport = \"{dead},{p}\"\ntarget_session_attrs = \"prefer-standby\"\n\
         [databases.none]\ndbname = \"app\"\nhost = \"127.0.0.1\"\nport = \"{dead},{s}\"\ntarget_session_attrs = \"primary\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n"
    ));
    let sluice = common::start_sluice(&toml).await;
    let addr = sluice.tcp_addr();
    for (db, want_port, want_recovery) in [
        ("ro", s, true),
        ("rw", p, false),
        ("prefer", s, true),
        ("prefer_no_standby", p, false),
    ] {
        for (port, recovery) in where_transactions_ran(addr, db, 3).await {
            assert_eq!(
                (port, recovery),
                (i32::from(want_port), want_recovery),
                "database {db}"
            );
        }
    }
    // A client's own read-only transaction answered 25006 retires that server only: the
    // victim's transactions keep working on the primary, and so do the client's.
    let writer = connect(addr, "sluice_trust", "", "rw").await.expect("login");
    let victim = connect(addr, "sluice_trust", "", "rw").await.expect("login");
    for _ in 0..5 {
        let err = writer
            .batch_execute("BEGIN READ ONLY; CREATE TEMP TABLE t (x int)")
            .await
            .expect_err("a write in a read-only transaction");
        assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{err:?}");
        writer.batch_execute("ROLLBACK").await.expect("rollback");
        let row = victim
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .expect("victim query");
        assert_eq!(
            (row.get::<_, i32>(0), row.get::<_, bool>(1)),
            (i32::from(p), false)
        );
    }
    writer.simple_query("SELECT 1").await.expect("the writer goes on");
    // SHOW HOSTS tells which host is what.
    let console = common::admin_console(addr).await;
    let rows = common::console_query(&console, "SHOW HOSTS").await;
    let row_of = |port: u16| {
        rows.iter()
            .find(|r| {
                r["database"].as_deref() == Some("rw")
                    && r["port"].as_deref() == Some(port.to_string().as_str())
            })
            .map(|r| {
                (
                    r["role"].clone().unwrap_or_default(),
                    r["state"].clone().unwrap_or_default(),
                )
            })
    };
    assert_eq!(
        row_of(p),
        Some(("primary".to_string(), "up".to_string())),
        "{rows:?}"
    );
    assert_eq!(
        row_of(s),
        Some(("standby".to_string(), "wrong role".to_string())),
        "{rows:?}"
    );
    drop(console);
    // The exporter names each host's role.
    let body = http_get(sluice.metrics_addr().expect("metrics endpoint"), "/metrics").await;
    for (port, role) in [(p, "primary"), (s, "standby")] {
        let series =
            format!("sluice_host_role{{database=\"rw\",host=\"127.0.0.1:{port}\",role=\"{role}\"}} 1");
        assert!(body.lines().any(|l| l == series), "no {series} in\n{body}");
    }
    // No host qualifies: a clear error naming the hosts and what they are, within query_wait_timeout.
    let toml_short = toml.replace("query_wait_timeout = \"10s\"", "query_wait_timeout = \"1s\"");
    let short = common::start_sluice(&toml_short).await;
    let started = Instant::now();
    // sluice needs a server at login (its parameters), so the error may come then or at the query.
    let err = match connect(short.tcp_addr(), "sluice_trust", "", "none").await {
        Ok(c) => c
            .simple_query("SELECT 1")
            .await
            .expect_err("no primary in the list"),
        Err(e) => e,
    };
    let waited = started.elapsed();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(db.message().contains("target_session_attrs=primary"), "{db:?}");
    let detail = db.detail().unwrap_or_default();
    assert!(
        detail.contains(&format!("127.0.0.1:{dead} (down"))
            && detail.contains(&format!("127.0.0.1:{s} (up, standby")),
        "{detail}"
    );
    assert!(waited < Duration::from_secs(3), "error after {waited:?}");
    short.shutdown().await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_first_in_the_list_costs_clients_nothing() {
    let (primary, _) = pair();
    // One port refuses; one accepts TCP but never speaks (a hung host): both are listed first.
    let refused = common::free_port();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let toml = config(&format!(
        "[databases.app]\nhost = \"127.0.0.1:{refused},127.0.0.1:{silent_port},127.0.0.1:{}\"\npool_size = 20\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        primary.port()
    ));
    let sluice = common::start_sluice(&toml).await;
    let addr = sluice.tcp_addr();
    // Victims: 20 clients in turn, 100 ms apart (past the first back-off steps), each held in a transaction (so each needs a new server).
    let mut errors = 0;
    let mut waits = Vec::new();
    let mut held = Vec::new();
    for _ in 0..20 {
        let c = connect(addr, "sluice_trust", "", "app").await.expect("login");
        let started = Instant::now();
        match c.batch_execute("BEGIN; SELECT 1").await {
            Ok(()) => waits.push(started.elapsed()),
            Err(_) => errors += 1,
        }
        held.push(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(errors, 0, "clients saw errors");
    waits.sort();
    // Only the first login pays for the silent host (server_connect_timeout = 1s); every
    // other client is served at once while both dead hosts are backed off.
    assert!(waits[waits.len() - 1] < Duration::from_millis(1600), "{waits:?}");
    assert!(waits[waits.len() - 2] < Duration::from_millis(500), "{waits:?}");
    assert!(waits[waits.len() / 2] < Duration::from_millis(100), "{waits:?}");
    // The exporter shows which hosts are up.
    let body = http_get(sluice.metrics_addr().expect("metrics endpoint"), "/metrics").await;
    let up_of = |port: u16| {
        let host = format!("host=\"127.0.0.1:{port}\"");
        body.lines()
            .find(|l| l.starts_with("sluice_host_up{") && l.contains(&host) && l.contains("database=\"app\""))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(up_of(refused).as_deref(), Some("0"), "{body}");
    assert_eq!(up_of(silent_port).as_deref(), Some("0"), "{body}");
    assert_eq!(up_of(primary.port()).as_deref(), Some("1"), "{body}");
    drop(silent);
    sluice.shutdown().await;
}

/// What the writers saw.
#[derive(Default)]
struct Writes {
    /// When each transaction committed.
    commits: Vec<Instant>,
    failures: u64,
    /// Connections that closed under a writer after its first login (each writer keeps one).
    reconnects: u64,
}

async fn writer(addr: SocketAddr, stop: Arc<AtomicBool>, out: Arc<Mutex<Writes>>) {
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::Relaxed) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            if client.is_some() {
                out.lock().reconnects += 1;
            }
            client = connect(addr, "sluice_trust", "", "rw").await.ok();
        }
        let Some(c) = client.as_ref() else {
            out.lock().failures += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let tx = c.batch_execute("BEGIN; INSERT INTO writes VALUES (1); COMMIT");
        match tokio::time::timeout(Duration::from_secs(20), tx).await {
            Ok(Ok(())) => out.lock().commits.push(Instant::now()),
            Ok(Err(_)) => {
                out.lock().failures += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => panic!("a write hung for 20 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_the_promoted_standby_within_five_seconds() {
    let mut primary = TempPostgres::start_standalone();
    primary.psql(&[
        "-d",
        "app",
        "-c",
        "CREATE TABLE writes (x int); GRANT ALL ON writes TO sluice_users",
    ]);
    let standby = primary.start_standby();
    let (p, s) = (primary.port(), standby.port());
    let toml = config(&format!(
        "[databases.rw]\ndbname = \"app\"\nhost = \"127.0.0.1\"\nport = \"{p},{s}\"\ntarget_session_attrs = \"read-write\"\npool_size = 20\n"
    ));
    let sluice = common::start_sluice(&toml).await;
    let addr = sluice.tcp_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(writer(addr, stop.clone(), writes.clone())))
        .collect();
    common::wait_until(Duration::from_secs(10), "writes on the primary", || async {
        writes.lock().commits.len() > 200
    })
    .await;
    let failures_before = writes.lock().failures;
    tokio::task::block_in_place(|| primary.stop());
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let promoting = Instant::now();
    tokio::task::block_in_place(|| standby.promote());
    let promoted = Instant::now();
    common::wait_until(Duration::from_secs(10), "writes on the new primary", || async {
        writes.lock().commits.iter().any(|t| *t > promoting)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    {
        let w = writes.lock();
        let first = w
            .commits
            .iter()
            .filter(|t| **t > promoting)
            .min()
            .copied()
            .expect("a write after promotion");
        let during_outage = w
            .commits
            .iter()
            .filter(|t| **t > stopped && **t < promoting)
            .count();
        eprintln!(
            "failover: first write {:.3} s after pg_ctl promote started ({:.3} s after it returned); \
             failed transactions {}; commits while no primary: {during_outage}; reconnects {}",
            first.duration_since(promoting).as_secs_f64(),
            first.saturating_duration_since(promoted).as_secs_f64(),
            w.failures - failures_before,
            w.reconnects,
        );
        // A transaction in flight on the old primary got an error; its client's connection
        // stayed usable and carried the writes that followed on the new primary.
        assert_eq!(w.reconnects, 0, "writers lost their connections");
        assert_eq!(during_outage, 0, "a write committed while there was no primary");
        assert!(
            first.duration_since(promoting) < Duration::from_secs(5),
            "writes resumed {:?} after promotion",
            first.duration_since(promoting)
        );
        // Only transactions in flight when the primary stopped fail; the rest waited for the new one.
        assert!(
            w.failures - failures_before <= 20,
            "{} failed transactions",
            w.failures - failures_before
        );
    }
    sluice.shutdown().await;
}

/// A plain HTTP/1.0 GET; the body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out))
        .await
        .expect("metrics answered in time")
        .expect("read metrics");
    String::from_utf8_lossy(&out).into_owned()
}
