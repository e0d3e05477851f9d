//! Transaction pooling end to end against a real PostgreSQL: bounded server connections, isolation
//! between clients, simple and extended protocol, errors in transactions, COPY, notices, large
//! results, and clients that leave mid-transaction.

mod common;

use common::config::PoolerToml;
use common::{connect, pg, start_sluice, wait_until};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio_postgres::types::Type;

/// A sluice config in transaction mode in front of database `db` with pool size `pool`.
fn config(db: &str, pool: u32, extra: &str) -> String {
    PoolerToml::new("scram-sha-256")
        .pool_mode("transaction")
        .set("query_wait_timeout = \"20s\"")
        .set(extra)
        .user_password("sluice_scram", "scram_pw")
        .database(db, Some(pool))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_on_a_pool_of_five_never_open_more_than_five_servers() {
    let db = pg().create_database("t_fifty").await;
    let sluice = start_sluice(&config(&db, 5, "max_client_conn = 200")).await;
    let addr = sluice.tcp_addr();

    let peak = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (peak, stop, db) = (peak.clone(), stop.clone(), db.clone());
        tokio::spawn(async move {
            let admin = pg().admin_client().await;
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = admin
                    .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", &[&db])
                    .await
                    .unwrap()
                    .get(0);
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut tasks = Vec::new();
    for i in 0..50 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(addr, "sluice_scram", "scram_pw", &db)
                .await
                .expect("connect");
            for j in 0..20 {
                // Unnamed statements (Parse/Bind/Execute/Sync in one batch): named ones across
                // transactions are the prepared-statement feature's business, not this test's.
                let rows = client
                    .query_typed(
                        "SELECT $1::int * 1000 + $2::int, pg_sleep(0.001)::text",
                        &[(&i, Type::INT4), (&j, Type::INT4)],
                    )
                    .await
                    .expect("query");
                assert_eq!(rows[0].get::<_, i32>(0), i * 1000 + j);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    stop.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak >= 1, "the monitor saw no server connection at all");
    assert!(peak <= 5, "{peak} server connections were open, pool size is 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_of_different_clients_never_interleave() {
    let db = pg().create_database("t_isolation").await;
    let sluice = start_sluice(&config(&db, 3, "")).await;
    let addr = sluice.tcp_addr();
    let setup = connect(addr, "sluice_scram", "scram_pw", &db).await.unwrap();
    setup
        .batch_execute("CREATE TABLE items (owner int, n int)")
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for owner in 0..12 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(addr, "sluice_scram", "scram_pw", &db).await.unwrap();
            for round in 0..5 {
                client.batch_execute("BEGIN").await.unwrap();
                for n in 0..3 {
                    client
                        .execute("INSERT INTO items VALUES ($1, $2)", &[&owner, &n])
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
                // Inside the transaction: exactly our own three uncommitted rows, nobody else's.
                let rows = client
                    .query("SELECT owner, count(*)::int FROM items GROUP BY owner", &[])
                    .await
                    .unwrap();
                let seen: Vec<(i32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                assert_eq!(
                    seen,
                    vec![(owner, 3)],
                    "client {owner} round {round} saw {seen:?}"
                );
                client.batch_execute("ROLLBACK").await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let left: i64 = setup
        .query_typed("SELECT count(*) FROM items", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(left, 0, "every transaction was rolled back");
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_multi_statement_and_pipelined_extended_queries_work() {
    let db = pg().create_database("t_protocols").await;
    let sluice = start_sluice(&config(&db, 2, "")).await;
    let client = connect(sluice.tcp_addr(), "sluice_scram", "scram_pw", &db)
        .await
        .unwrap();

    // Several statements in one simple Query message: one ReadyForQuery at the end.
    let msgs = client
        .simple_query("CREATE TABLE m (a int); INSERT INTO m VALUES (1), (2); SELECT sum(a)::text FROM m")
        .await
        .unwrap();
    let sums: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(sums, vec!["3"]);

    // tokio-postgres pipelines concurrent queries on one connection: many Parse/Bind/Execute/Sync
    // batches in flight at once.
    let futures = (0..100).map(|i| {
        let client = &client;
        async move {
            let rows = client
                .query_typed("SELECT $1::int + 1", &[(&i, Type::INT4)])
                .await?;
            Ok::<i32, tokio_postgres::Error>(rows[0].get(0))
        }
    });
    let results = futures_util::future::try_join_all(futures).await.unwrap();
    assert_eq!(results, (1..=100).collect::<Vec<i32>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_transaction_keeps_its_server_until_rollback() {
    let db = pg().create_database("t_failed_tx").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let a = connect(addr, "sluice_scram", "scram_pw", &db).await.unwrap();
    let b = connect(addr, "sluice_scram", "scram_pw", &db).await.unwrap();

    a.batch_execute("BEGIN").await.unwrap();
    let pid_a: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let err = a.batch_execute("SELECT * FROM no_such_table").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
    // Status E: the only server stays with A, so B must wait.
    let b_query = tokio::spawn(async move {
        let pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        pid
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !b_query.is_finished(),
        "B got a server while A's failed transaction was open"
    );
    let err = a.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("25P02"),
        "A is still in its failed transaction"
    );
    a.batch_execute("ROLLBACK").await.unwrap();
    let pid_b = tokio::time::timeout(Duration::from_secs(5), b_query)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pid_b, pid_a, "B got the same (rolled back) server");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_from_stdin_and_to_stdout_work() {
    let db = pg().create_database("t_copy").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let client = connect(sluice.tcp_addr(), "sluice_scram", "scram_pw", &db)
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE c (a int, b text)")
        .await
        .unwrap();

    // tokio-postgres runs COPY through the extended protocol (Bind/Execute/Sync, data, CopyDone, Sync).
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in 0..20 {
        let mut data = String::new();
        for i in 0..1000 {
            data.push_str(&format!("{}\trow {}\n", chunk * 1000 + i, i));
        }
        sink.send(bytes::Bytes::from(data)).await.unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 20_000);

    let stream = client
        .copy_out("COPY (SELECT a FROM c ORDER BY a) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20_000);
    assert_eq!(lines[19_999], "19999");

    // The pooled server is clean afterwards: another query on the only server works.
    let n: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20_000);

    // A failed COPY (bad data) leaves the server usable too.
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    assert!(sink.finish().await.is_err());
    let n: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_copy_and_notices_pass_through() {
    let db = pg().create_database("t_psql").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let port = sluice.tcp_addr().port().to_string();
    let out = pg().psql_to(
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "sluice_scram",
            "-d",
            &db,
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "CREATE TABLE p (a int)",
            "-c",
            "\\copy p from program 'seq 1 500'",
            "-c",
            "DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$",
            "-c",
            "SELECT sum(a) FROM p",
        ],
        "scram_pw",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psql failed: {stderr}");
    assert!(stdout.contains("COPY 500"), "{stdout}");
    assert!(stdout.contains("125250"), "{stdout}");
    assert!(stderr.contains("NOTICE:  hello from the server"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_results_stream_through() {
    let db = pg().create_database("t_large").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let client = connect(sluice.tcp_addr(), "sluice_scram", "scram_pw", &db)
        .await
        .unwrap();
    // 300k rows (~30 MB of DataRows) and one 20 MB value.
    let rows = client
        .query_raw(
            "SELECT g, repeat('x', 90) FROM generate_series(1, 300000) g",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    futures_util::pin_mut!(rows);
    let mut count = 0u64;
    let mut last = 0;
    while let Some(row) = rows.next().await {
        let row = row.unwrap();
        last = row.get::<_, i32>(0);
        count += 1;
    }
    assert_eq!((count, last), (300_000, 300_000));
    let big: String = client
        .query_one("SELECT repeat('y', 20000000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 20_000_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_vanishes_mid_transaction_never_leaves_its_server_dirty() {
    let db = pg().create_database("t_vanish").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let setup = connect(addr, "sluice_scram", "scram_pw", &db).await.unwrap();
    setup.batch_execute("CREATE TABLE v (a int)").await.unwrap();

    // A raw client begins a transaction, inserts, and drops the socket without a word.
    {
        let mut raw = common::raw::RawClient::connect(addr).await;
        raw.login_scram("sluice_scram", "scram_pw", &db).await;
        raw.query("BEGIN; INSERT INTO v VALUES (1); SELECT pg_advisory_lock(42)")
            .await;
        raw.read_until(b'Z').await;
    }
    // The only server is rolled back and handed on: not in a transaction, lock released, row gone.
    let row = tokio::time::timeout(
        Duration::from_secs(10),
        setup.query_one(
            "SELECT count(*)::int, pg_try_advisory_lock(42), pg_current_xact_id_if_assigned() IS NULL FROM v",
            &[],
        ),
    )
    .await
    .expect("the server came back to the pool")
    .unwrap();
    assert_eq!(row.get::<_, i32>(0), 0, "the abandoned insert was rolled back");
    assert!(row.get::<_, bool>(1), "the abandoned session's lock was released");
    assert!(
        row.get::<_, bool>(2),
        "the server was not left inside a transaction"
    );
    setup
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn terminate_from_a_client_never_reaches_the_pooled_server() {
    let db = pg().create_database("t_terminate").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let first_pid: i32 = {
        let c = connect(addr, "sluice_scram", "scram_pw", &db).await.unwrap();
        c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
        // Dropping the client sends Terminate.
    };
    let c = connect(addr, "sluice_scram", "scram_pw", &db).await.unwrap();
    wait_until(
        Duration::from_secs(5),
        "the second client gets a server",
        || async { c.query_one("SELECT 1", &[]).await.is_ok() },
    )
    .await;
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(
        pid, first_pid,
        "the same server was reused: Terminate did not close it"
    );
}

/// A client named `client_a` with startup settings in `options`.
async fn client_a(addr: std::net::SocketAddr, db: &str, options: &str) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("sluice_scram")
        .password("scram_pw")
        .dbname(db)
        .application_name("client_a")
        .options(options);
    common::connect_with(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn session_settings_follow_the_client_across_servers() {
    let db = pg().create_database("t_params").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let a = client_a(addr, &db, "-c TimeZone=Asia/Tokyo -c extra_float_digits=2").await;
    let b = connect(addr, "sluice_scram", "scram_pw", &db).await.unwrap();
    for _ in 0..3 {
        let row = a
            .query_one("SELECT current_setting('TimeZone'), current_setting('application_name'), current_setting('extra_float_digits')", &[])
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, String>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2)
            ),
            ("Asia/Tokyo".into(), "client_a".into(), "2".into())
        );
        // B shares the only server and must see the defaults, not A's settings.
        let row = b
            .query_one("SELECT current_setting('TimeZone') <> 'Asia/Tokyo', current_setting('application_name'), current_setting('extra_float_digits')", &[])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "B saw A's TimeZone");
        assert_ne!(row.get::<_, String>(1), "client_a");
        assert_eq!(row.get::<_, String>(2), "1", "B saw A's extra_float_digits");
    }
    // A SET by the client is remembered and restored on its next transaction.
    a.batch_execute("SET DateStyle = 'German'").await.unwrap();
    b.batch_execute("SELECT 1").await.unwrap();
    let style: String = a
        .query_one("SELECT current_setting('DateStyle')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(style.starts_with("German"), "{style}");
    let style: String = b
        .query_one("SELECT current_setting('DateStyle')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!style.starts_with("German"), "B saw A's DateStyle: {style}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_returns_the_client_to_its_own_startup_settings() {
    // On PostgreSQL, RESET and DISCARD ALL return settings to the connection's startup values.
    // sluice's servers started with sluice's values, so sluice must bring the client's back
    // (asyncpg's pool sends RESET ALL on every release and keeps its server_settings).
    let db = pg().create_database("t_reset").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let a = client_a(addr, &db, "-c TimeZone=Asia/Tokyo -c statement_timeout=5s").await;
    let b = connect(addr, "sluice_scram", "scram_pw", &db).await.unwrap();
    let settings = "SELECT current_setting('TimeZone'), current_setting('application_name'), \
                    current_setting('statement_timeout'), current_setting('DateStyle')";
    let read = |row: tokio_postgres::Row| {
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
        )
    };
    let startup_style: String = b
        .query_one("SELECT current_setting('DateStyle')", &[])
        .await
        .unwrap()
        .get(0);
    for reset in [
        "RESET ALL",
        "DISCARD ALL",
        "BEGIN; RESET ALL; COMMIT",
        "RESET TimeZone; RESET application_name",
    ] {
        // The client changes its settings, then resets them.
        a.batch_execute(
            "SET TimeZone = 'America/Lima'; SET application_name = 'changed'; SET DateStyle = 'German'",
        )
        .await
        .unwrap();
        let (tz, app, _, style) = read(a.query_one(settings, &[]).await.unwrap());
        assert_eq!((tz.as_str(), app.as_str()), ("America/Lima", "changed"));
        assert!(style.starts_with("German"), "{style}");
        a.batch_execute(reset).await.unwrap();
        // Another client uses the only server in between.
        b.batch_execute("SET TimeZone = 'Europe/Paris'; SELECT 1")
            .await
            .unwrap();
        let (tz, app, timeout, style) = read(a.query_one(settings, &[]).await.unwrap());
        assert_eq!(
            (tz.as_str(), app.as_str(), timeout.as_str()),
            ("Asia/Tokyo", "client_a", "5s"),
            "after {reset}"
        );
        if reset == "RESET TimeZone; RESET application_name" {
            assert!(
                style.starts_with("German"),
                "a setting that was not reset stays: {style}"
            );
        } else {
            assert_eq!(
                style, startup_style,
                "after {reset}, DateStyle is the server default again"
            );
        }
        // B was never touched by A's settings.
        let (tz, app, timeout, _) = read(b.query_one(settings, &[]).await.unwrap());
        assert_eq!(tz, "Europe/Paris");
        assert_ne!(app, "client_a");
        assert_ne!(timeout, "5s");
        // A SET after the reset sticks as before.
        a.batch_execute("SET TimeZone = 'Africa/Cairo'").await.unwrap();
        let (tz, _, _, _) = read(a.query_one(settings, &[]).await.unwrap());
        assert_eq!(tz, "Africa/Cairo");
        a.batch_execute("RESET ALL").await.unwrap();
    }
    // A reset that is rolled back resets nothing, as on PostgreSQL.
    a.batch_execute("SET TimeZone = 'America/Lima'").await.unwrap();
    a.batch_execute("BEGIN; RESET ALL; ROLLBACK").await.unwrap();
    b.batch_execute("SELECT 1").await.unwrap();
    let (tz, app, timeout, _) = read(a.query_one(settings, &[]).await.unwrap());
    assert_eq!(
        (tz.as_str(), app.as_str(), timeout.as_str()),
        ("America/Lima", "client_a", "5s")
    );
}
