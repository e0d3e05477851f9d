//! Session state that cannot move (issue 18, item 2): a temporary table, a session advisory lock,
//! a cursor WITH HOLD and an SQL PREPARE pin the server to its client in transaction mode until
//! the state is gone or the client leaves; then the server is cleaned before anyone else gets it.
//! `pin_session_state = "error"` refuses such statements, `"off"` keeps PgBouncer's behaviour.
//! Pins are shown in SHOW CLIENTS/SERVERS, the exporter and SHOW LEAKS. A transaction with none
//! of these runs no verification query. Real PostgreSQL, real tokio-postgres clients.

mod common;

use common::config::PoolerToml;
use common::{admin_console, connect, console_query, pg, start_sluice, wait_until};
use std::net::SocketAddr;
use std::time::Duration;

const USER: &str = "sluice_trust";

fn config(db: &str, pool: u32, extra: &str, db_extra: &str) -> String {
    PoolerToml::trust()
        .admin()
        .pool_mode("transaction")
        .set("query_wait_timeout = \"20s\"")
        .set(extra)
        .user("admin")
        .user(USER)
        .database(db, Some(pool))
        .tail(db_extra)
        .build()
}

async fn client(addr: SocketAddr, db: &str) -> tokio_postgres::Client {
    connect(addr, USER, "", db).await.expect("connect")
}

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// The `pinned` column of the client's row in SHOW CLIENTS, by its backend's server row.
async fn pinned_of_client(console: &tokio_postgres::Client, db: &str) -> Vec<String> {
    let mut v: Vec<String> = console_query(console, "SHOW CLIENTS")
        .await
        .into_iter()
        .filter(|r| r.get("database").cloned().flatten().as_deref() == Some(db))
        .filter_map(|r| r.get("pinned").cloned().flatten())
        .filter(|p| !p.is_empty())
        .collect();
    v.sort();
    v
}

/// Waits until SHOW CLIENTS shows exactly `want` pinned (the verification runs after the client
/// has its reply, so the console may lag the client by a round trip).
async fn expect_pinned(console: &tokio_postgres::Client, db: &str, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let what = format!("SHOW CLIENTS pinned = {want:?}");
    wait_until(Duration::from_secs(10), &what, || async {
        pinned_of_client(console, db).await == want
    })
    .await;
}

/// What a server (by backend pid) carries, seen from outside sluice.
async fn leftovers(backend: i32) -> (i64, bool) {
    let admin = pg().admin_client().await;
    let locks: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1",
            &[&backend],
        )
        .await
        .expect("pg_locks")
        .get(0);
    let alive: bool = admin
        .query_one(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1",
            &[&backend],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    (locks, alive)
}

/// Session state a client sees from its own server: (temp tables, advisory locks held, held
/// cursors, SQL prepared statements).
async fn state_seen(c: &tokio_postgres::Client) -> (i64, i64, i64, i64) {
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), \
             (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
             (SELECT count(*) FROM pg_cursors WHERE is_holdable), \
             (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)",
            &[],
        )
        .await
        .expect("state");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

struct Kind {
    reason: &'static str,
    create: &'static str,
    /// Uses the state (fails when the client is on another server).
    uses: &'static str,
    release: &'static str,
}

const KINDS: [Kind; 4] = [
    Kind {
        reason: "temp_table",
        create: "CREATE TEMP TABLE pin_t (a int); INSERT INTO pin_t VALUES (1)",
        uses: "SELECT a FROM pin_t",
        release: "DROP TABLE pin_t",
    },
    Kind {
        reason: "advisory_lock",
        create: "SELECT pg_advisory_lock(4242)",
        uses: "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
               AND pid = pg_backend_pid()) THEN RAISE EXCEPTION 'lock lost'; END IF; END$$",
        release: "SELECT pg_advisory_unlock(4242)",
    },
    Kind {
        reason: "hold_cursor",
        create: "BEGIN; DECLARE pin_c CURSOR WITH HOLD FOR SELECT generate_series(1, 100); COMMIT",
        uses: "FETCH 1 FROM pin_c",
        release: "CLOSE pin_c",
    },
    Kind {
        reason: "prepared_statement",
        create: "PREPARE pin_p AS SELECT 7",
        uses: "EXECUTE pin_p",
        release: "DEALLOCATE pin_p",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_kind_pins_its_server_until_released_and_the_client_keeps_seeing_it() {
    let db = pg().create_database("t_pin_kinds").await;
    let sluice = start_sluice(&config(&db, 2, "", "")).await;
    let addr = sluice.tcp_addr();
    let console = admin_console(addr).await;
    let a = client(addr, &db).await;
    let b = client(addr, &db).await;
    for kind in &KINDS {
        a.batch_execute(kind.create)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", kind.create));
        expect_pinned(&console, &db, &[kind.reason]).await;
        let a_pid = pid(&a).await;
        for _ in 0..3 {
            // B takes whichever server is free: never A's.
            b.batch_execute("BEGIN").await.unwrap();
            assert_ne!(pid(&b).await, a_pid, "{}: B got A's pinned server", kind.reason);
            a.batch_execute(kind.uses)
                .await
                .unwrap_or_else(|e| panic!("{}: A lost its state: {e}", kind.reason));
            assert_eq!(pid(&a).await, a_pid);
            b.batch_execute("COMMIT").await.unwrap();
        }
        a.batch_execute(kind.release).await.unwrap();
        expect_pinned(&console, &db, &[]).await;
        // A gave its server back: with A idle, B can hold both servers at once.
        let c = client(addr, &db).await;
        b.batch_execute("BEGIN").await.unwrap();
        c.batch_execute("BEGIN").await.unwrap();
        let pids = [pid(&b).await, pid(&c).await];
        assert!(
            pids.contains(&a_pid),
            "{}: A's server did not come back",
            kind.reason
        );
        for v in [&b, &c] {
            assert_eq!(state_seen(v).await, (0, 0, 0, 0), "{}", kind.reason);
            v.batch_execute("COMMIT").await.unwrap();
        }
    }
    // DISCARD ALL releases everything at once.
    a.batch_execute("CREATE TEMP TABLE pin_t2 (a int); SELECT pg_advisory_lock(1); PREPARE q AS SELECT 1")
        .await
        .unwrap();
    expect_pinned(&console, &db, &["advisory_lock,temp_table,prepared_statement"]).await;
    a.batch_execute("DISCARD ALL").await.unwrap();
    expect_pinned(&console, &db, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_dies_holding_state_leaves_a_clean_server_and_its_lock_is_gone() {
    let db = pg().create_database("t_pin_dies").await;
    let sluice = start_sluice(&config(&db, 1, "", "")).await;
    let addr = sluice.tcp_addr();
    // A victim connected all along: it must see no error, and get the lock A held.
    let victim = client(addr, &db).await;
    let mut victim_errors = 0;
    let a = client(addr, &db).await;
    a.batch_execute(
        "CREATE TEMP TABLE pin_t (a int); SELECT pg_advisory_lock(77); \
         SELECT pg_advisory_lock_shared(78); PREPARE pin_p AS SELECT 1; \
         BEGIN; DECLARE pin_c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
    )
    .await
    .unwrap();
    let a_pid = pid(&a).await;
    assert_eq!(leftovers(a_pid).await.0, 2, "A holds its two locks");
    // The victim waits for the pool's one server while A holds it.
    let waiting = tokio::spawn(async move {
        let r = victim
            .query_one("SELECT pg_backend_pid(), pg_try_advisory_lock(77)", &[])
            .await;
        (victim, r)
    });
    let console = admin_console(addr).await;
    wait_until(
        Duration::from_secs(10),
        "the victim waiting for A's server",
        || async {
            console_query(&console, "SHOW CLIENTS")
                .await
                .iter()
                .any(|r| r.get("state").cloned().flatten().as_deref() == Some("waiting"))
        },
    )
    .await;
    assert!(
        !waiting.is_finished(),
        "the victim got a server while A held the only one"
    );
    drop(a); // dies without a word
    let (victim, r) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the victim got a server")
        .expect("victim task");
    match r {
        Ok(row) => {
            let got: bool = row.get(1);
            let v_pid: i32 = row.get(0);
            assert_eq!(v_pid, a_pid, "the cleaned server is reused (pool of one)");
            assert!(got, "the victim could not take the lock A held");
        }
        Err(e) => {
            victim_errors += 1;
            eprintln!("victim error: {e}");
        }
    }
    assert_eq!(
        state_seen(&victim).await,
        (0, 1, 0, 0),
        "only the victim's own lock"
    );
    assert_eq!(victim_errors, 0);
    victim
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    assert_eq!(leftovers(a_pid).await, (0, true));

    // A client that dies inside a transaction block after taking a session lock (a rollback
    // alone would keep it): not yet verified, still cleaned.
    let b = client(addr, &db).await;
    b.batch_execute("BEGIN; SELECT pg_advisory_lock(79)")
        .await
        .unwrap();
    let b_pid = pid(&b).await;
    drop(b);
    let row = victim
        .query_one(
            "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_locks \
             WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
            &[],
        )
        .await
        .expect("the victim after B died");
    assert_eq!(row.get::<_, i32>(0), b_pid, "the pool's one server, cleaned");
    assert_eq!(row.get::<_, i64>(1), 0, "B's lock outlived B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pinned_client_leaves_a_pool_of_two_serving_a_victim_without_errors() {
    let db = pg().create_database("t_pin_victim").await;
    let sluice = start_sluice(&config(&db, 2, "", "")).await;
    let addr = sluice.tcp_addr();
    let console = admin_console(addr).await;
    let a = client(addr, &db).await;
    // Extended protocol (Parse/Bind/Execute), as drivers send it.
    a.query_one("SELECT pg_advisory_lock($1)", &[&99i64])
        .await
        .unwrap();
    let a_pid = pid(&a).await;
    expect_pinned(&console, &db, &["advisory_lock"]).await;
    let victim = client(addr, &db).await;
    let mut errors = 0;
    for i in 0..40 {
        // A lock A holds is A's alone: the victim never gets it, nor A's server.
        match victim
            .query_one("SELECT pg_try_advisory_lock(99), pg_backend_pid()", &[])
            .await
        {
            Ok(row) => {
                let (got, p): (bool, i32) = (row.get(0), row.get(1));
                if got || p == a_pid {
                    errors += 1;
                    let _ = victim.batch_execute("SELECT pg_advisory_unlock_all()").await;
                }
            }
            Err(_) => errors += 1,
        }
        if i % 4 == 0 {
            a.batch_execute("SELECT 1").await.unwrap();
        }
    }
    assert_eq!(errors, 0, "the victim saw A's lock or A's server");
    // A pg_try_advisory_lock that failed pins nothing: only A is pinned.
    expect_pinned(&console, &db, &["advisory_lock"]).await;
    a.batch_execute("SELECT pg_advisory_unlock_all()").await.unwrap();
    let row = victim
        .query_one("SELECT pg_try_advisory_lock(99)", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the lock is free once A released it");
}

#[tokio::test(flavor = "multi_thread")]
async fn error_mode_refuses_statements_that_would_pin_with_0a000() {
    let db = pg().create_database("t_pin_error").await;
    // The database's own value overrides the global one.
    let sluice = start_sluice(&config(
        &db,
        1,
        "pin_session_state = \"pin\"",
        "pin_session_state = \"error\"",
    ))
    .await;
    let addr = sluice.tcp_addr();
    let console = admin_console(addr).await;
    let a = client(addr, &db).await;
    for sql in [
        "CREATE TEMP TABLE t (a int)",
        "SELECT pg_advisory_lock(5)",
        "PREPARE p AS SELECT 1",
        "SELECT 1; SELECT pg_try_advisory_lock(5)",
    ] {
        let e = a.batch_execute(sql).await.expect_err(sql);
        let db_error = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db_error.code().code(), "0A000", "{sql}");
        assert!(
            db_error.message().contains("pin_session_state"),
            "{sql}: {}",
            db_error.message()
        );
    }
    // Extended protocol: the Parse is refused.
    let e = a
        .query("SELECT pg_advisory_lock($1)", &[&5i64])
        .await
        .expect_err("extended");
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"));
    // In a block, the block fails as for any error; the cursor WITH HOLD never exists.
    a.batch_execute("BEGIN").await.unwrap();
    let e = a
        .batch_execute("DECLARE c CURSOR WITH HOLD FOR SELECT 1")
        .await
        .expect_err("hold cursor");
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"));
    let e = a.batch_execute("SELECT 1").await.expect_err("aborted block");
    assert_eq!(e.code().map(|c| c.code()), Some("25P02"));
    a.batch_execute("ROLLBACK").await.unwrap();
    // What does not pin still works, and nothing was created.
    a.batch_execute("SELECT pg_advisory_xact_lock(5); CREATE TEMP TABLE t2 (a int) ON COMMIT DROP")
        .await
        .unwrap();
    assert_eq!(state_seen(&a).await, (0, 0, 0, 0));
    assert!(pinned_of_client(&console, &db).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn off_mode_keeps_pgbouncers_behaviour() {
    let db = pg().create_database("t_pin_off").await;
    let sluice = start_sluice(&config(&db, 1, "pin_session_state = \"off\"", "")).await;
    let addr = sluice.tcp_addr();
    let console = admin_console(addr).await;
    let a = client(addr, &db).await;
    a.batch_execute("SELECT pg_advisory_lock(6)").await.unwrap();
    assert!(pinned_of_client(&console, &db).await.is_empty());
    // The server went back with A's lock on it: the next client sees it (what "off" means).
    let b = client(addr, &db).await;
    assert_eq!(state_seen(&b).await.1, 1);
    b.batch_execute("SELECT pg_advisory_unlock_all()").await.unwrap();
    let rows = console_query(&console, "SHOW CONFIG").await;
    let row = rows
        .iter()
        .find(|r| r.get("key").cloned().flatten().as_deref() == Some("pin_session_state"))
        .expect("pin_session_state in SHOW CONFIG");
    assert_eq!(row.get("value").cloned().flatten().as_deref(), Some("off"));
    assert_eq!(row.get("default").cloned().flatten().as_deref(), Some("pin"));
}

/// The last statement PostgreSQL ran on `backend`, once sluice has the server back idle (a
/// verification runs before the server is released, so it would be the last one by then).
async fn last_statement_once_idle(console: &tokio_postgres::Client, backend: i32) -> String {
    wait_until(Duration::from_secs(10), "the server back in the pool", || async {
        console_query(console, "SHOW SERVERS")
            .await
            .iter()
            .all(|r| r.get("state").cloned().flatten().as_deref() == Some("idle"))
    })
    .await;
    let admin = pg().admin_client().await;
    admin
        .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&backend])
        .await
        .expect("pg_stat_activity")
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_without_such_state_runs_no_verification_query() {
    let db = pg().create_database("t_pin_cost").await;
    let sluice = start_sluice(&config(&db, 1, "", "")).await;
    let addr = sluice.tcp_addr();
    let console = admin_console(addr).await;
    let a = client(addr, &db).await;
    let a_pid = pid(&a).await;
    let plain = [
        "SELECT 1 AS plain_simple",
        "BEGIN; SELECT 2 AS plain_block; COMMIT",
        "SELECT pg_advisory_xact_lock(3), 3 AS plain_xact_lock",
        "CREATE TEMP TABLE IF NOT EXISTS x (a int) ON COMMIT DROP; SELECT 4 AS plain_on_commit_drop",
    ];
    for sql in plain {
        a.batch_execute(sql).await.unwrap();
        let last = last_statement_once_idle(&console, a_pid).await;
        // ON COMMIT DROP makes a CREATE TABLE transaction: verified (and found unpinned).
        if sql.contains("ON COMMIT DROP") {
            assert!(last.contains("pg_settings"), "{sql}: {last}");
            continue;
        }
        assert_eq!(last, sql, "a verification query ran after {sql:?}");
    }
    a.query_one("SELECT $1::int AS plain_extended", &[&5i32])
        .await
        .unwrap();
    let last = last_statement_once_idle(&console, a_pid).await;
    assert!(last.contains("plain_extended"), "{last}");
    // The control: a statement that may release a lock is verified, in one query after it.
    a.batch_execute("SELECT pg_advisory_unlock_all()").await.unwrap();
    let last = last_statement_once_idle(&console, a_pid).await;
    assert!(
        last.contains("pg_settings") && last.contains("pg_locks"),
        "{last}"
    );
}

/// GET /metrics, the body.
async fn metrics_text(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut body))
        .await
        .expect("metrics in time")
        .expect("metrics read");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn pins_show_in_clients_servers_metrics_and_leaks() {
    let db = pg().create_database("t_pin_report").await;
    let toml = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:0\"\n",
        config(&db, 2, "leak_idle_in_transaction_threshold = \"1s\"", "")
    );
    let sluice = start_sluice(&toml).await;
    let addr = sluice.tcp_addr();
    let console = admin_console(addr).await;
    let a = client(addr, &db).await;
    a.batch_execute("SELECT pg_advisory_lock(8)").await.unwrap();
    let a_pid = pid(&a).await;
    expect_pinned(&console, &db, &["advisory_lock"]).await;
    let servers = console_query(&console, "SHOW SERVERS").await;
    let mine = servers
        .iter()
        .find(|r| r.get("remote_pid").cloned().flatten() == Some(a_pid.to_string()))
        .expect("A's server in SHOW SERVERS");
    assert_eq!(
        mine.get("pinned").cloned().flatten().as_deref(),
        Some("advisory_lock")
    );
    let body = metrics_text(sluice.metrics_addr().expect("metrics")).await;
    assert_eq!(pinned_gauge(&body, &db), Some(1.0), "{body}");
    wait_until(Duration::from_secs(10), "a pinned_idle leak", || async {
        console_query(&console, "SHOW LEAKS")
            .await
            .iter()
            .any(|r| r.get("kind").cloned().flatten().as_deref() == Some("pinned_idle"))
    })
    .await;
    a.batch_execute("SELECT pg_advisory_unlock(8)").await.unwrap();
    let metrics = sluice.metrics_addr().expect("metrics");
    wait_until(Duration::from_secs(10), "the gauge back to 0", || async {
        pinned_gauge(&metrics_text(metrics).await, &db) == Some(0.0)
    })
    .await;
}

/// The value of `sluice_pinned_clients{database=db, user, reason="advisory_lock"}`.
fn pinned_gauge(body: &str, db: &str) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with("sluice_pinned_clients{"))
        .filter(|l| {
            l.contains(&format!("database=\"{db}\""))
                && l.contains(&format!("user=\"{USER}\""))
                && l.contains("reason=\"advisory_lock\"")
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_client_idle_past_client_idle_timeout_is_closed_and_its_server_cleaned() {
    let db = pg().create_database("t_pin_idle").await;
    let sluice = start_sluice(&config(&db, 1, "client_idle_timeout = \"1s\"", "")).await;
    let addr = sluice.tcp_addr();
    let a = client(addr, &db).await;
    a.batch_execute("SELECT pg_advisory_lock(11)").await.unwrap();
    let a_pid = pid(&a).await;
    wait_until(
        Duration::from_secs(10),
        "A closed for client_idle_timeout",
        || async { a.is_closed() },
    )
    .await;
    // The pool's one server comes back clean: the lock went with its client.
    let b = client(addr, &db).await;
    assert_eq!(pid(&b).await, a_pid);
    assert_eq!(state_seen(&b).await, (0, 0, 0, 0));
}
