//! Leak reporting with real clients: each kind produced on purpose appears in SHOW LEAKS with the
//! right application, address, pid and kind, disappears when it ends, is counted in the summary,
//! is logged once per episode; a workload of short transactions produces no suspect.

mod common;

use common::config::PoolerToml;
use common::raw::RawClient;
use common::{connect, connect_with, pg, start_sluice, wait_until};
use std::net::SocketAddr;
use std::time::Duration;

fn config(db: &str, mode: &str, extra: &str, unix_dir: Option<&std::path::Path>) -> String {
    let unix = unix_dir
        .map(|d| format!("unix_socket_dir = \"{}\"", d.display()))
        .unwrap_or_default();
    PoolerToml::trust()
        .set(&unix)
        .admin()
        .pool_mode(mode)
        .set(extra)
        .user("admin")
        .user("sluice_trust")
        .database(db, Some(4))
        .build()
}

type Row = common::ConsoleRow;

async fn console_rows(addr: SocketAddr, cmd: &str) -> Vec<Row> {
    common::console_rows(addr, "admin", cmd).await
}

fn get<'a>(row: &'a Row, col: &str) -> &'a str {
    row.get(col).and_then(|v| v.as_deref()).unwrap_or("")
}

async fn app_client(
    addr_or_dir: Result<SocketAddr, (&std::path::Path, u16)>,
    db: &str,
    app: &str,
) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    match addr_or_dir {
        Ok(addr) => cfg.host("127.0.0.1").port(addr.port()),
        Err((dir, port)) => cfg.host_path(dir).port(port),
    };
    cfg.user("sluice_trust").dbname(db).application_name(app);
    connect_with(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_in_transaction_on_the_unix_socket_names_the_process_and_ends_with_the_transaction() {
    let db = pg().create_database("t_leak_iit").await;
    let dir = tempfile::tempdir().unwrap();
    let sluice = start_sluice(&config(
        &db,
        "transaction",
        "leak_idle_in_transaction_threshold = \"1s\"",
        Some(dir.path()),
    ))
    .await;
    let addr = sluice.tcp_addr();
    let leaky = app_client(Err((dir.path(), addr.port())), &db, "leaky_worker").await;
    leaky.batch_execute("BEGIN; SELECT 'marker-query'").await.unwrap();
    let started = std::time::Instant::now();
    wait_until(
        Duration::from_secs(4),
        "the suspect appears within 2 s of the threshold",
        || async {
            console_rows(addr, "SHOW LEAKS")
                .await
                .iter()
                .any(|r| get(r, "kind") == "idle_in_transaction")
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let rows = console_rows(addr, "SHOW LEAKS").await;
    let r = &rows[0];
    assert_eq!(get(r, "application_name"), "leaky_worker");
    assert_eq!(get(r, "addr"), "unix");
    assert_eq!(
        get(r, "pid"),
        std::process::id().to_string(),
        "SO_PEERCRED gives the client's pid"
    );
    let exe = std::env::current_exe().unwrap();
    let exe_name = exe.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        get(r, "process").contains(&exe_name),
        "process: {}",
        get(r, "process")
    );
    assert!(
        get(r, "last_query").contains("marker-query"),
        "{}",
        get(r, "last_query")
    );
    let server_pid: i32 = leaky.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    assert_eq!(
        get(r, "server_pid"),
        server_pid.to_string(),
        "joins with pg_stat_activity"
    );

    leaky.batch_execute("COMMIT").await.unwrap();
    wait_until(Duration::from_secs(3), "the suspect disappears", || async {
        console_rows(addr, "SHOW LEAKS").await.is_empty()
    })
    .await;
    let summary = console_rows(addr, "SHOW LEAKS_SUMMARY").await;
    let s = summary
        .iter()
        .find(|r| get(r, "application_name") == "leaky_worker")
        .expect("in the summary");
    assert_eq!((get(s, "current_suspects"), get(s, "total_leaks")), ("0", "1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_killed_mid_transaction_is_an_abandoned_transaction() {
    let db = pg().create_database("t_leak_abandoned").await;
    let sluice = start_sluice(&config(&db, "transaction", "", None)).await;
    let addr = sluice.tcp_addr();
    {
        let mut raw = RawClient::login_trust(
            addr,
            &[
                ("user", "sluice_trust"),
                ("database", &db),
                ("application_name", "crashy"),
            ],
        )
        .await;
        raw.query("BEGIN; SELECT 1").await;
        raw.read_until(b'Z').await;
    } // the socket is dropped: the client vanished mid-transaction
    wait_until(
        Duration::from_secs(3),
        "the abandoned transaction is counted",
        || async {
            console_rows(addr, "SHOW LEAKS_SUMMARY")
                .await
                .iter()
                .any(|r| get(r, "application_name") == "crashy" && get(r, "abandoned_transactions") == "1")
        },
    )
    .await;
    assert_eq!(sluice.shared().leaks.abandoned_total(), 1);
    assert!(
        console_rows(addr, "SHOW LEAKS").await.is_empty(),
        "an abandoned transaction is history, not a current suspect"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_session_and_an_idle_client_are_suspects() {
    let db = pg().create_database("t_leak_hold").await;
    let extra = "leak_hold_threshold = \"1s\"\nleak_idle_client_threshold = \"1s\"";
    let sluice = start_sluice(&config(&db, "session", extra, None)).await;
    let addr = sluice.tcp_addr();
    let session = app_client(Ok(addr), &db, "session_holder").await;
    session.batch_execute("SELECT 1").await.unwrap();
    wait_until(
        Duration::from_secs(4),
        "long_hold and idle_client suspects",
        || async {
            let kinds: Vec<String> = console_rows(addr, "SHOW LEAKS")
                .await
                .iter()
                .map(|r| get(r, "kind").to_string())
                .collect();
            kinds.contains(&"long_hold".to_string()) && kinds.contains(&"idle_client".to_string())
        },
    )
    .await;
    let rows = console_rows(addr, "SHOW LEAKS").await;
    assert!(
        rows.iter()
            .all(|r| get(r, "application_name") == "session_holder")
    );
    let pid = rows
        .iter()
        .find(|r| get(r, "kind") == "long_hold")
        .map(|r| get(r, "pid").to_string())
        .unwrap();
    assert_eq!(
        pid,
        std::process::id().to_string(),
        "the loopback TCP client's process is found in /proc"
    );
    drop(session);
    wait_until(
        Duration::from_secs(3),
        "suspects leave with the client",
        || async { console_rows(addr, "SHOW LEAKS").await.is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_transactions_produce_no_suspect() {
    let db = pg().create_database("t_leak_healthy").await;
    let extra = "leak_idle_in_transaction_threshold = \"1s\"\nleak_hold_threshold = \"1s\"\nleak_idle_client_threshold = \"2s\"";
    let sluice = start_sluice(&config(&db, "transaction", extra, None)).await;
    let addr = sluice.tcp_addr();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(addr, "sluice_trust", "", &db).await.unwrap();
            let until = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < until {
                c.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(console_rows(addr, "SHOW LEAKS").await.is_empty());
    assert!(
        sluice.shared().leaks.total_counts().is_empty(),
        "{:?}",
        sluice.shared().leaks.total_counts()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_episode_is_logged_once() {
    let db = pg().create_database("t_leak_log").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pooler.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = config(
        &db,
        "transaction",
        "leak_idle_in_transaction_threshold = \"500ms\"",
        None,
    )
    .replace("listen_port = 0", &format!("listen_port = {port}"));
    std::fs::write(&path, text).unwrap();
    let log = dir.path().join("sluice.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--allow-root") // tests run as root in CI
        .arg("--config")
        .arg(&path)
        .env("SLUICE_LOG", "warn")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(Duration::from_secs(10), "sluice is up", || async {
        connect(addr, "sluice_trust", "", &db).await.is_ok()
    })
    .await;
    let c = app_client(Ok(addr), &db, "log_me").await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await; // several detector ticks past the threshold
    c.batch_execute("COMMIT").await.unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("connection leak suspected"))
        .collect();
    assert_eq!(lines.len(), 1, "one WARNING per episode:\n{text}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("log_me") && lines[0].contains("idle_in_transaction"),
        "{}",
        lines[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_driver_that_closes_politely_mid_transaction_is_counted_too() {
    let db = pg().create_database("t_leak_terminate").await;
    let sluice = start_sluice(&config(&db, "transaction", "", None)).await;
    let addr = sluice.tcp_addr();
    {
        let c = app_client(Ok(addr), &db, "polite").await;
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        // Dropping a tokio-postgres client sends Terminate, mid-transaction.
    }
    wait_until(
        Duration::from_secs(3),
        "the Terminate mid-transaction is an abandoned transaction",
        || async { sluice.shared().leaks.abandoned_total() == 1 },
    )
    .await;
}

/// The samples of `name` in the Prometheus text at `addr`, as (application_name label, value).
async fn series(addr: SocketAddr, name: &str) -> Vec<(String, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| {
            let app = l
                .split("application_name=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default();
            let value = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(-1.0);
            (app.to_string(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_application_names_leave_at_most_the_cap_and_other_in_the_summary_and_metrics() {
    let db = pg().create_database("t_leak_names").await;
    let toml = config(&db, "transaction", "", None) + "[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let sluice = start_sluice(&toml).await;
    let addr = sluice.tcp_addr();
    let metrics = sluice.metrics_addr().expect("metrics endpoint bound");
    let cap = sluice::name_cap::MAX_DISTINCT_NAMES;
    for k in 0..300 {
        let app = format!("app_{k}");
        let mut raw = RawClient::login_trust(
            addr,
            &[
                ("user", "sluice_trust"),
                ("database", &db),
                ("application_name", &app),
            ],
        )
        .await;
        raw.query("BEGIN").await;
        raw.read_until(b'Z').await;
        // Every other one is seen connected by a scrape (150 names): a client-connections
        // series for its name, or `other`.
        if k % 2 == 0 {
            assert!(!series(metrics, "pgbouncer_client_connections").await.is_empty());
        }
    } // each socket dropped mid-transaction: an abandoned transaction under each name
    wait_until(
        Duration::from_secs(10),
        "300 abandoned transactions counted",
        || async {
            let rows = console_rows(addr, "SHOW LEAKS_SUMMARY").await;
            rows.iter()
                .map(|r| get(r, "abandoned_transactions").parse::<u64>().unwrap_or(0))
                .sum::<u64>()
                == 300
        },
    )
    .await;
    let rows = console_rows(addr, "SHOW LEAKS_SUMMARY").await;
    assert!(rows.len() <= cap + 1, "{} summary rows", rows.len());
    let other = rows
        .iter()
        .find(|r| get(r, "application_name") == "other")
        .expect("an `other` row");
    assert_eq!(get(other, "abandoned_transactions"), (300 - cap).to_string());

    let names = |samples: Vec<(String, f64)>| {
        samples
            .into_iter()
            .map(|(app, _)| app)
            .collect::<std::collections::HashSet<_>>()
    };
    let connections = names(series(metrics, "pgbouncer_client_connections").await);
    assert!(connections.len() <= cap + 1, "{} names", connections.len());
    assert!(connections.contains("other"));
    let leaks = series(metrics, "sluice_leaks_total").await;
    assert!(leaks.len() <= cap + 1, "{} leak series", leaks.len());
    assert_eq!(leaks.iter().map(|(_, v)| v).sum::<f64>(), 300.0);
    sluice.shutdown().await;
}
