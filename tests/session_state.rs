//! Session settings under pooling (issue 18, item 1): every session-level SET follows its client
//! to whichever server it gets and never reaches another client; a rolled-back SET and SET LOCAL
//! are not kept; RESET returns a client to its own startup values, in transaction and session
//! mode. Real PostgreSQL, real tokio-postgres clients.

mod common;

use common::config::PoolerToml;
use common::{connect, pg, start_sluice};
use std::collections::BTreeSet;
use std::net::SocketAddr;

fn config(db: &str, mode: &str, pool: u32) -> String {
    PoolerToml::new("scram-sha-256")
        .pool_mode(mode)
        .set("query_wait_timeout = \"20s\"")
        .user_password("sluice_scram", "scram_pw")
        .database(db, Some(pool))
        .build()
}

async fn client(addr: SocketAddr, db: &str) -> tokio_postgres::Client {
    connect(addr, "sluice_scram", "scram_pw", db)
        .await
        .expect("connect")
}

async fn client_with(addr: SocketAddr, db: &str, options: &str) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("sluice_scram")
        .password("scram_pw")
        .dbname(db)
        .options(options);
    common::connect_with(cfg).await.expect("connect")
}

/// `SHOW name` in the simple protocol.
async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    let rows = c.simple_query(&format!("SHOW {name}")).await.expect("SHOW");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

/// (setting, backend pid) in one transaction, extended protocol.
async fn setting_and_pid(c: &tokio_postgres::Client, name: &str) -> (String, i32) {
    let row = c
        .query_one("SELECT current_setting($1), pg_backend_pid()", &[&name])
        .await
        .expect("query");
    (row.get(0), row.get(1))
}

/// The server default of `name` (straight from PostgreSQL, not through sluice).
async fn server_default(db: &str, name: &str) -> String {
    let _ = db;
    let admin = pg().admin_client().await;
    admin
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .expect("default")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_set_follows_its_client_to_every_server_and_reaches_no_other_client() {
    const N: usize = 4;
    let db = pg().create_database("t_ss_follow").await;
    let sluice = start_sluice(&config(&db, "transaction", N as u32)).await;
    let addr = sluice.tcp_addr();
    let default = server_default(&db, "work_mem").await;
    assert_ne!(default, "77MB");

    let a = client(addr, &db).await;
    a.batch_execute("SET work_mem = '77MB'").await.unwrap();

    // N other clients, each holding one of the pool's N servers at once (so one of them has the
    // server A's SET ran on): none sees A's value. They count errors as a victim would.
    let others: Vec<_> = futures_util::future::join_all((0..N).map(|_| client(addr, &db))).await;
    let mut errors = 0;
    let mut seen = BTreeSet::new();
    for c in &others {
        c.batch_execute("BEGIN").await.unwrap();
        let (value, pid) = setting_and_pid(c, "work_mem").await;
        seen.insert(pid);
        if value != default || show(c, "work_mem").await != default {
            errors += 1;
        }
    }
    assert_eq!(seen.len(), N, "the N clients held the N servers");
    for c in &others {
        c.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(errors, 0, "clients saw another client's work_mem");

    // A sees its own value on every server: k other clients hold k servers while A runs.
    let mut a_servers = BTreeSet::new();
    for round in 0..3 * N {
        let k = round % N;
        for c in &others[..k] {
            c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        }
        let (value, pid) = setting_and_pid(&a, "work_mem").await;
        assert_eq!(value, "77MB", "A lost its SET on server {pid}");
        assert_eq!(show(&a, "work_mem").await, "77MB");
        a_servers.insert(pid);
        for c in &others[..k] {
            c.batch_execute("COMMIT").await.unwrap();
            // The victims, in between, never see A's value.
            let (value, pid) = setting_and_pid(c, "work_mem").await;
            assert_eq!(value, default, "a victim saw A's work_mem on server {pid}");
        }
    }
    assert!(a_servers.len() >= 2, "A ran on {a_servers:?} only");
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_sets_move_rolled_back_and_local_ones_do_not() {
    let db = pg().create_database("t_ss_blocks").await;
    let sluice = start_sluice(&config(&db, "transaction", 1)).await;
    let addr = sluice.tcp_addr();
    let default = server_default(&db, "work_mem").await;
    let a = client(addr, &db).await;
    let b = client(addr, &db).await;

    a.batch_execute("BEGIN; SET work_mem = '55MB'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(show(&a, "work_mem").await, default, "a rolled-back SET is gone");
    assert_eq!(show(&b, "work_mem").await, default);

    a.batch_execute("BEGIN; SET LOCAL work_mem = '56MB'; COMMIT")
        .await
        .unwrap();
    assert_eq!(
        show(&a, "work_mem").await,
        default,
        "SET LOCAL ends with its transaction"
    );
    assert_eq!(show(&b, "work_mem").await, default);

    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET SESSION work_mem TO '57MB'").await.unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    // B shares the only server: it must not see A's committed SET, and A must keep it.
    assert_eq!(show(&b, "work_mem").await, default, "B saw A's committed SET");
    assert_eq!(show(&a, "work_mem").await, "57MB");
    assert_eq!(show(&b, "work_mem").await, default);
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_multi_statement_and_set_config_are_tracked() {
    let db = pg().create_database("t_ss_forms").await;
    let sluice = start_sluice(&config(&db, "transaction", 1)).await;
    let addr = sluice.tcp_addr();
    let a = client(addr, &db).await;
    let b = client(addr, &db).await;
    let wm = server_default(&db, "work_mem").await;
    let st = server_default(&db, "statement_timeout").await;
    let mm = server_default(&db, "maintenance_work_mem").await;

    // Extended protocol (Parse/Bind/Execute/Sync).
    a.execute("SET work_mem = '66MB'", &[]).await.unwrap();
    // Several statements in one simple query.
    a.batch_execute("SELECT 1; SET statement_timeout = '7s'; SELECT 2")
        .await
        .unwrap();
    // A setting changed by a function call, with no SET tag to show for it.
    a.query_one(
        "SELECT pg_catalog.set_config('maintenance_work_mem', '99MB', false)",
        &[],
    )
    .await
    .unwrap();
    for _ in 0..2 {
        let (w, _) = setting_and_pid(&b, "work_mem").await;
        let (s, _) = setting_and_pid(&b, "statement_timeout").await;
        let (m, _) = setting_and_pid(&b, "maintenance_work_mem").await;
        assert_eq!(
            (w, s, m),
            (wm.clone(), st.clone(), mm.clone()),
            "B saw A's settings"
        );
        let (w, _) = setting_and_pid(&a, "work_mem").await;
        let (s, _) = setting_and_pid(&a, "statement_timeout").await;
        let (m, _) = setting_and_pid(&a, "maintenance_work_mem").await;
        assert_eq!((w.as_str(), s.as_str(), m.as_str()), ("66MB", "7s", "99MB"));
    }
    // RESET ALL and DISCARD ALL drop them for A too.
    for reset in ["RESET ALL", "DISCARD ALL"] {
        a.batch_execute("SET work_mem = '66MB'").await.unwrap();
        a.batch_execute(reset).await.unwrap();
        b.batch_execute("SELECT 1").await.unwrap();
        assert_eq!(show(&a, "work_mem").await, wm, "after {reset}");
        assert_eq!(show(&a, "statement_timeout").await, st, "after {reset}");
    }
}

/// The example: `SET datestyle TO iso; RESET datestyle` returns the client to its startup
/// `Postgres, MDY` although PostgreSQL reports no change (the server's login value is ISO); and
/// an unreported setting from the startup packet comes back after RESET and SET .. TO DEFAULT.
async fn reset_returns_to_the_startup_value(mode: &str, db_name: &str) {
    let db = pg().create_database(db_name).await;
    let sluice = start_sluice(&config(&db, mode, 1)).await;
    let addr = sluice.tcp_addr();
    let a = client_with(addr, &db, "-c datestyle=Postgres,MDY -c work_mem=12MB").await;
    assert_eq!(show(&a, "datestyle").await, "Postgres, MDY");
    assert_eq!(show(&a, "work_mem").await, "12MB");
    a.batch_execute("SET datestyle TO iso").await.unwrap();
    assert_eq!(show(&a, "datestyle").await, "ISO, MDY");
    a.batch_execute("RESET datestyle").await.unwrap();
    assert_eq!(
        show(&a, "datestyle").await,
        "Postgres, MDY",
        "{mode}: RESET datestyle"
    );
    for reset in ["RESET work_mem", "SET work_mem TO DEFAULT", "RESET ALL"] {
        a.batch_execute("SET work_mem = '20MB'").await.unwrap();
        assert_eq!(show(&a, "work_mem").await, "20MB");
        a.batch_execute(reset).await.unwrap();
        assert_eq!(show(&a, "work_mem").await, "12MB", "{mode}: {reset}");
        assert_eq!(show(&a, "datestyle").await, "Postgres, MDY", "{mode}: {reset}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_returns_the_client_to_its_startup_value_in_transaction_mode() {
    reset_returns_to_the_startup_value("transaction", "t_ss_reset_tx").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_returns_the_client_to_its_startup_value_in_session_mode() {
    reset_returns_to_the_startup_value("session", "t_ss_reset_session").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn set_config_deep_in_a_large_query_is_seen() {
    let db = pg().create_database("t_ss_large").await;
    let sluice = start_sluice(&config(&db, "transaction", 1)).await;
    let addr = sluice.tcp_addr();
    let a = client(addr, &db).await;
    let b = client(addr, &db).await;
    let default = server_default(&db, "cpu_tuple_cost").await;
    // Far past the first read of the message: it reaches sluice in many pieces.
    let pad = "x".repeat(200_000);
    a.batch_execute(&format!(
        "SELECT '{pad}', pg_catalog.set_config('cpu_tuple_cost', '0.5', false)"
    ))
    .await
    .unwrap();
    assert_eq!(show(&b, "cpu_tuple_cost").await, default, "B saw A's set_config");
    assert_eq!(show(&a, "cpu_tuple_cost").await, "0.5");
    assert_eq!(show(&b, "cpu_tuple_cost").await, default);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_set_inside_a_do_block_or_a_procedure_reaches_no_other_client() {
    let db = pg().create_database("t_ss_blocks_code").await;
    let sluice = start_sluice(&config(&db, "transaction", 1)).await;
    let addr = sluice.tcp_addr();
    let a = client(addr, &db).await;
    let b = client(addr, &db).await;
    let wm = server_default(&db, "work_mem").await;
    let mm = server_default(&db, "maintenance_work_mem").await;
    a.batch_execute("DO $$ BEGIN SET work_mem = '33MB'; END $$")
        .await
        .unwrap();
    assert_eq!(show(&b, "work_mem").await, wm, "B saw the DO block's SET");
    assert_eq!(show(&a, "work_mem").await, "33MB");
    a.batch_execute(
        "CREATE PROCEDURE p_set() LANGUAGE plpgsql AS $$ BEGIN SET maintenance_work_mem = '98MB'; END $$",
    )
    .await
    .unwrap();
    a.batch_execute("CALL p_set()").await.unwrap();
    assert_eq!(
        show(&b, "maintenance_work_mem").await,
        mm,
        "B saw the procedure's SET"
    );
    assert_eq!(show(&a, "maintenance_work_mem").await, "98MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_each_keep_their_own_setting_and_victims_see_none() {
    let db = pg().create_database("t_ss_many").await;
    let sluice = start_sluice(&config(&db, "transaction", 3)).await;
    let addr = sluice.tcp_addr();
    let default = server_default(&db, "work_mem").await;
    let mut tasks = Vec::new();
    for i in 0..10u32 {
        let db = db.clone();
        let default = default.clone();
        tasks.push(tokio::spawn(async move {
            let c = client(addr, &db).await;
            // Clients 0..6 each SET their own value, in one form or another; 7..9 are victims.
            let own = match i {
                0..=6 => {
                    let v = format!("{}MB", 10 + i);
                    let sql = match i % 3 {
                        0 => format!("SET work_mem = '{v}'"),
                        1 => format!("BEGIN; SET SESSION work_mem TO '{v}'; COMMIT"),
                        _ => format!("SELECT pg_catalog.set_config('work_mem', '{v}', false)"),
                    };
                    c.batch_execute(&sql).await.unwrap();
                    v
                }
                _ => default,
            };
            let mut errors = 0;
            let mut servers = BTreeSet::new();
            for _ in 0..40 {
                let (value, pid) = setting_and_pid(&c, "work_mem").await;
                servers.insert(pid);
                if value != own {
                    errors += 1;
                }
            }
            (i, errors, servers.len())
        }));
    }
    for t in tasks {
        let (i, errors, _servers) = t.await.unwrap();
        assert_eq!(errors, 0, "client {i} saw a work_mem not its own");
    }
}

/// A function that changes work_mem for the session, called from a query whose text shows
/// nothing of it.
const SET_IN_FUNCTION: &str = "CREATE FUNCTION quietly_set_work_mem() RETURNS int LANGUAGE plpgsql AS \
     $$ BEGIN PERFORM set_config('work_mem', '77MB', false); RETURN 1; END $$";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_session_state_check_always_a_set_inside_a_function_follows_its_client() {
    const N: usize = 3;
    let db = pg().create_database("t_ss_function").await;
    let toml = PoolerToml::new("scram-sha-256")
        .pool_mode("transaction")
        .set("query_wait_timeout = \"20s\"\nsession_state_check = \"always\"")
        .user_password("sluice_scram", "scram_pw")
        .database(&db, Some(N as u32))
        .build();
    let sluice = start_sluice(&toml).await;
    let addr = sluice.tcp_addr();
    let default = server_default(&db, "work_mem").await;
    let a = client(addr, &db).await;
    a.batch_execute(SET_IN_FUNCTION).await.unwrap();
    let n: i32 = a
        .query_one("SELECT quietly_set_work_mem()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // N victims hold the N servers at once: none sees A's work_mem.
    let others: Vec<_> = futures_util::future::join_all((0..N).map(|_| client(addr, &db))).await;
    let mut errors = 0;
    let mut seen = BTreeSet::new();
    for c in &others {
        c.batch_execute("BEGIN").await.unwrap();
        let (value, pid) = setting_and_pid(c, "work_mem").await;
        seen.insert(pid);
        if value != default {
            errors += 1;
        }
    }
    assert_eq!(seen.len(), N, "the N victims held the N servers");
    for c in &others {
        c.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(
        errors, 0,
        "victims saw the work_mem a function set for another client"
    );
    // A keeps its value on whichever server it gets.
    for k in 0..N {
        for c in &others[..k] {
            c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        }
        assert_eq!(setting_and_pid(&a, "work_mem").await.0, "77MB");
        for c in &others[..k] {
            c.batch_execute("COMMIT").await.unwrap();
        }
    }
}
