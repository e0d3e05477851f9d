//! The admin console through real clients: columns and types, figures that move with load,
//! roles and errors, KILL_CLIENT, PAUSE/RESUME, RELOAD under load, graceful shutdown, and Debian's
//! prometheus-pgbouncer-exporter reading it.

mod common;

use common::config::PoolerToml;
use common::raw::{RawClient, RawMessage};
use common::{connect, connect_with, pg, start_sluice, wait_until};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

fn config(db: &str, pool: u32, extra: &str) -> String {
    PoolerToml::trust()
        .admin()
        .set("stats_users = [\"watcher\"]\nstats_period = \"1s\"")
        .set(extra)
        .user("admin")
        .user("watcher")
        .user("sluice_trust")
        .database(db, Some(pool))
        .build()
}

async fn console(addr: SocketAddr, user: &str) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user(user)
        .dbname("pgbouncer");
    connect_with(cfg).await.expect("console login")
}

async fn show(c: &tokio_postgres::Client, cmd: &str) -> Vec<common::ConsoleRow> {
    common::console_query(c, cmd).await
}

fn num(row: &HashMap<String, Option<String>>, col: &str) -> i64 {
    row.get(col)
        .and_then(|v| v.as_deref())
        .unwrap_or_else(|| panic!("no {col}"))
        .parse()
        .unwrap()
}

/// Column names and type OIDs as the raw protocol sees them.
async fn describe(addr: SocketAddr, cmd: &str) -> Vec<(String, u32)> {
    let mut raw = RawClient::login_trust(addr, &[("user", "admin"), ("database", "pgbouncer")]).await;
    raw.query(cmd).await;
    let msgs = raw.read_until(b'Z').await;
    let tags: Vec<u8> = msgs.iter().map(|m| m.tag).collect();
    let complete = msgs.iter().find(|m| m.tag == b'C').expect("CommandComplete");
    assert_eq!(complete.body, b"SHOW\0", "{cmd}: tag");
    let desc: &RawMessage = msgs
        .iter()
        .find(|m| m.tag == b'T')
        .unwrap_or_else(|| panic!("{cmd}: {tags:?}"));
    let b = &desc.body;
    let count = i16::from_be_bytes([b[0], b[1]]) as usize;
    let mut pos = 2;
    let mut out = Vec::new();
    for _ in 0..count {
        let end = pos + b[pos..].iter().position(|&x| x == 0).unwrap();
        let name = String::from_utf8_lossy(&b[pos..end]).into_owned();
        pos = end + 1 + 6;
        let oid = u32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]);
        pos += 4 + 2 + 4 + 2;
        out.push((name, oid));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_show_has_pgbouncers_columns_and_types() {
    let sluice = start_sluice(&config("app", 2, "")).await;
    let addr = sluice.tcp_addr();
    let c = connect(addr, "sluice_trust", "", "app").await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    let (t, i, n) = (25u32, 23u32, 1700u32);
    let cols = |names: &str, types: &[u32]| -> Vec<(String, u32)> {
        names
            .split(',')
            .map(str::trim)
            .map(String::from)
            .zip(types.iter().copied())
            .collect()
    };
    let pools = cols(
        "database,user,cl_active,cl_waiting,cl_active_cancel_req,cl_waiting_cancel_req,sv_active,sv_active_cancel,\
         sv_being_canceled,sv_idle,sv_used,sv_tested,sv_login,maxwait,maxwait_us,pool_mode,load_balance_hosts",
        &[t, t, i, i, i, i, i, i, i, i, i, i, i, i, i, t, t],
    );
    assert_eq!(describe(addr, "SHOW POOLS").await, pools);
    let sockets = cols(
        "type,user,database,replication,state,addr,port,local_addr,local_port,connect_time,request_time,wait,wait_us,\
         close_needed,ptr,link,remote_pid,tls,application_name,prepared_statements,id",
        &[t, t, t, t, t, t, i, t, i, t, t, i, i, i, t, t, i, t, t, i, i],
    );
    // sluice's addition after PgBouncer's columns: why a client keeps its server (issue 18).
    let mut with_pinned = sockets.clone();
    with_pinned.push(("pinned".to_string(), t));
    assert_eq!(describe(addr, "SHOW CLIENTS").await, with_pinned);
    assert_eq!(describe(addr, "show servers").await, with_pinned);
    let stats = describe(addr, "SHOW STATS").await;
    assert_eq!(
        stats.len(),
        23 + 1,
        "PgBouncer's 23 columns, then sluice's total_requests"
    );
    assert_eq!(stats[0], ("database".to_string(), t));
    assert_eq!(stats[1], ("total_server_assignment_count".to_string(), n));
    assert_eq!(stats[22], ("avg_bind_count".to_string(), n));
    assert_eq!(stats[23], ("total_requests".to_string(), n));
    let databases = describe(addr, "SHOW DATABASES").await;
    let names: Vec<&str> = databases.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..17],
        "name,host,port,database,force_user,pool_size,min_pool_size,reserve_pool_size,server_lifetime,pool_mode,\
         load_balance_hosts,max_connections,current_connections,max_client_connections,current_client_connections,\
         paused,disabled"
            .split(',')
            .collect::<Vec<_>>()[..]
    );
    assert_eq!(
        describe(addr, "SHOW VERSION").await,
        vec![("version".to_string(), t)]
    );
    assert_eq!(
        describe(addr, "SHOW LISTS").await,
        vec![("list".to_string(), t), ("items".to_string(), i)]
    );
    assert_eq!(
        describe(addr, "SHOW CONFIG").await,
        cols("key,value,default,changeable", &[t, t, t, t])
    );
    for cmd in [
        "SHOW STATS_TOTALS",
        "SHOW STATS_AVERAGES",
        "SHOW TOTALS",
        "SHOW USERS",
        "SHOW STATE",
        "SHOW MEM",
        "SHOW FDS",
        "SHOW DNS_HOSTS",
        "SHOW DNS_ZONES",
        "SHOW SOCKETS",
        "SHOW ACTIVE_SOCKETS",
    ] {
        assert!(!describe(addr, cmd).await.is_empty(), "{cmd}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn figures_follow_clients_waiting_and_leaving() {
    let db = pg().create_database("t_admin_figures").await;
    let sluice = start_sluice(&config(&db, 1, "query_wait_timeout = \"20s\"")).await;
    let addr = sluice.tcp_addr();
    let admin = console(addr, "admin").await;
    let holder = connect(addr, "sluice_trust", "", &db).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = connect(addr, "sluice_trust", "", &db).await.unwrap();
    let wait = tokio::spawn(async move {
        waiter.batch_execute("SELECT 1").await.unwrap();
        waiter
    });
    wait_until(Duration::from_secs(5), "cl_waiting rises", || async {
        show(&admin, "SHOW POOLS")
            .await
            .iter()
            .any(|r| num(r, "cl_waiting") == 1)
    })
    .await;
    let pool = |rows: Vec<HashMap<String, Option<String>>>| {
        rows.into_iter()
            .find(|r| r["database"].as_deref() == Some(&db))
            .unwrap()
    };
    let before = pool(show(&admin, "SHOW POOLS").await);
    assert_eq!((num(&before, "cl_active"), num(&before, "sv_active")), (1, 1));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = pool(show(&admin, "SHOW POOLS").await);
    assert!(num(&later, "maxwait") >= 1, "maxwait grows: {later:?}");
    let clients = show(&admin, "SHOW CLIENTS").await;
    let states: Vec<&str> = clients.iter().filter_map(|r| r["state"].as_deref()).collect();
    assert!(
        states.contains(&"waiting") && states.contains(&"active"),
        "{states:?}"
    );
    let servers = show(&admin, "SHOW SERVERS").await;
    let srv = servers
        .iter()
        .find(|r| r["database"].as_deref() == Some(&db))
        .unwrap();
    let holder_pid: i32 = holder.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    assert_eq!(
        num(srv, "remote_pid"),
        i64::from(holder_pid),
        "remote_pid is the backend pid"
    );
    let linked = clients
        .iter()
        .find(|r| r["link"].as_deref().is_some_and(|l| !l.is_empty()))
        .expect("a linked client");
    assert_eq!(linked["link"], srv["ptr"], "the client's link names the server");

    holder.batch_execute("COMMIT").await.unwrap();
    let waiter = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap()
        .unwrap();
    drop(waiter);
    drop(holder);
    wait_until(Duration::from_secs(5), "clients leave the pool", || async {
        let p = pool(show(&admin, "SHOW POOLS").await);
        num(&p, "cl_active") == 0 && num(&p, "cl_waiting") == 0
    })
    .await;
    wait_until(
        Duration::from_secs(5),
        "transactions are counted in SHOW STATS",
        || async {
            show(&admin, "SHOW STATS")
                .await
                .iter()
                .any(|r| r["database"].as_deref() == Some(&db) && num(r, "total_xact_count") >= 2)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_errors_and_protocol_limits() {
    let sluice = start_sluice(&config("app", 1, "")).await;
    let addr = sluice.tcp_addr();
    let watcher = console(addr, "watcher").await;
    assert_eq!(
        show(&watcher, "SHOW VERSION").await.len(),
        1,
        "a stats user may SHOW"
    );
    let e = watcher.simple_query("PAUSE").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().message(), "admin access needed");
    assert_eq!(e.as_db_error().unwrap().code().code(), "08P01");

    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("sluice_trust")
        .dbname("pgbouncer");
    let e = connect_with(cfg).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().message(), "not allowed");

    let admin = console(addr, "admin").await;
    let e = admin.simple_query("SHOW NOTHING").await.unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "invalid command 'SHOW NOTHING', use SHOW HELP;"
    );
    let e = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "extended query protocol not supported by admin console"
    );
    // Still usable after both errors, and case-insensitive with a trailing semicolon.
    assert!(!show(&admin, "show lists;").await.is_empty());
    let e = admin.simple_query("KILL_CLIENT 999999").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().message(), "client not found");
    let msgs = admin.simple_query("SET query_wait_timeout = 7").await.unwrap();
    assert!(matches!(
        msgs.last(),
        Some(SimpleQueryMessage::CommandComplete(_))
    ));
    let cfg = show(&admin, "SHOW CONFIG").await;
    let qwt = cfg
        .iter()
        .find(|r| r["key"].as_deref() == Some("query_wait_timeout"))
        .unwrap();
    assert_eq!(qwt["value"].as_deref(), Some("7"));
    assert_eq!(
        sluice.shared().config.load().pooler.query_wait_timeout,
        Duration::from_secs(7)
    );
    let e = admin.simple_query("SET no_such_key = 1").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().message(), "SET failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_client_disconnects_exactly_one_client() {
    let sluice = start_sluice(&config("app", 2, "")).await;
    let addr = sluice.tcp_addr();
    let admin = console(addr, "admin").await;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("sluice_trust")
        .dbname("app")
        .application_name("victim");
    let victim = connect_with(cfg).await.unwrap();
    let bystander = connect(addr, "sluice_trust", "", "app").await.unwrap();
    victim.batch_execute("SELECT 1").await.unwrap();
    let clients = show(&admin, "SHOW CLIENTS").await;
    let id = clients
        .iter()
        .find(|r| r["application_name"].as_deref() == Some("victim"))
        .unwrap()["id"]
        .clone()
        .unwrap();
    admin.simple_query(&format!("KILL_CLIENT {id}")).await.unwrap();
    wait_until(Duration::from_secs(5), "the victim is disconnected", || async {
        victim.is_closed() || victim.batch_execute("SELECT 1").await.is_err()
    })
    .await;
    bystander
        .batch_execute("SELECT 1")
        .await
        .expect("the other client is untouched");
    assert_eq!(show(&admin, "SHOW CLIENTS").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_waits_for_transactions_and_holds_new_ones_until_resume() {
    let db = pg().create_database("t_admin_pause").await;
    let sluice = start_sluice(&config(&db, 2, "query_wait_timeout = \"20s\"")).await;
    let addr = sluice.tcp_addr();
    let admin = console(addr, "admin").await;
    let tx = connect(addr, "sluice_trust", "", &db).await.unwrap();
    tx.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pause = tokio::spawn(async move {
        admin.simple_query("PAUSE").await.unwrap();
        admin
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned with a transaction still open"
    );
    tx.batch_execute("COMMIT").await.unwrap();
    let admin = tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .unwrap()
        .unwrap();
    let state = show(&admin, "SHOW STATE").await;
    assert_eq!(
        state
            .iter()
            .find(|r| r["key"].as_deref() == Some("paused"))
            .unwrap()["value"]
            .as_deref(),
        Some("yes")
    );
    let held = tokio::spawn(async move { tx.batch_execute("SELECT 1").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a query ran while paused");
    admin.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_changes_the_pool_size_under_load_and_refuses_a_bad_file() {
    let db = pg().create_database("t_admin_reload").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pooler.toml");
    std::fs::write(&path, config(&db, 1, "query_wait_timeout = \"20s\"")).unwrap();
    let sluice = sluice::start(sluice::Config::load(&path).unwrap()).await.unwrap();
    let addr = sluice.tcp_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..6 {
        let (db, stop) = (db.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = connect(addr, "sluice_trust", "", &db).await.unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.batch_execute("SELECT pg_sleep(0.02)").await.unwrap();
            }
        }));
    }
    let admin_pg = pg().admin_client().await;
    let count = || async {
        admin_pg
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", &[&db])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count().await, 1);
    std::fs::write(&path, config(&db, 3, "query_wait_timeout = \"20s\"")).unwrap();
    let admin = console(addr, "admin").await;
    admin.simple_query("RELOAD").await.unwrap();
    wait_until(
        Duration::from_secs(5),
        "the pool grows to 3 under load",
        || async { count().await == 3 },
    )
    .await;

    std::fs::write(&path, "[pooler]\npool_mod = \"session\"\n").unwrap();
    let e = admin.simple_query("RELOAD").await.unwrap_err();
    assert!(e.as_db_error().unwrap().message().starts_with("RELOAD failed"));
    assert_eq!(
        sluice.shared().config.load().database(&db).unwrap().pool_size,
        Some(3),
        "old config kept"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_wait_for_servers_lets_an_open_transaction_commit() {
    let db = pg().create_database("t_admin_shutdown").await;
    let sluice = start_sluice(&config(&db, 2, "")).await;
    let addr = sluice.tcp_addr();
    let tx = connect(addr, "sluice_trust", "", &db).await.unwrap();
    tx.batch_execute("CREATE TABLE s (a int); BEGIN; INSERT INTO s VALUES (1)")
        .await
        .unwrap();
    let admin = console(addr, "admin").await;
    admin.simple_query("SHUTDOWN WAIT_FOR_SERVERS").await.unwrap();
    // Refused at once if the listener has closed; if the connection was already queued, told
    // why at login (not logged in and then dropped).
    match connect(addr, "sluice_trust", "", &db).await {
        Ok(_) => panic!("no new clients while draining"),
        Err(e) => {
            if let Some(db_error) = e.as_db_error() {
                assert_eq!(db_error.code().code(), "57P01", "{db_error}");
                assert_eq!(db_error.message(), "pooler is shutting down");
            }
        }
    }
    tx.batch_execute("INSERT INTO s VALUES (2); COMMIT")
        .await
        .expect("the open transaction finishes");
    tokio::time::timeout(Duration::from_secs(5), sluice.exited())
        .await
        .expect("the pooler exits after the transaction");
    let mut direct = tokio_postgres::Config::new();
    direct
        .host_path(pg().socket_dir())
        .port(pg().port())
        .user("postgres")
        .dbname(&db);
    let direct = connect_with(direct).await.unwrap();
    let n: i64 = direct
        .query_one("SELECT count(*) FROM s", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "both inserts committed");
}

#[tokio::test(flavor = "multi_thread")]
async fn debians_prometheus_pgbouncer_exporter_reads_the_console() {
    let exporter = "/usr/bin/prometheus-pgbouncer-exporter";
    if !std::path::Path::new(exporter).exists() {
        eprintln!("SKIPPED: {exporter} is not installed (scripts/test.sh installs it as root)");
        return;
    }
    let sluice = start_sluice(&config("app", 2, "")).await;
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(exporter)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--pgbouncer-host",
            "127.0.0.1",
        ])
        .args([
            "--pgbouncer-port",
            &sluice.tcp_addr().port().to_string(),
            "--pgbouncer-user",
            "watcher",
        ])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the exporter");
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            body.clear();
            s.read_to_string(&mut body).await.unwrap();
            if body.contains("pgbouncer_active_clients") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.start_kill();
    assert!(
        body.contains("pgbouncer_active_clients{database=\"app\",user=\"sluice_trust\"} 1.0"),
        "{body}"
    );
    assert!(
        body.contains("pgbouncer_requests_total{database=\"app\"}"),
        "stats: {body}"
    );
    assert!(
        body.contains("pgbouncer_pool_size{database=\"app\"} 2.0"),
        "databases: {body}"
    );
    assert!(body.contains("pgbouncer_pools 1.0"), "lists: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_stops_accepting_until_resume_or_the_last_console_leaves() {
    let sluice = start_sluice(&config("app", 2, "")).await;
    let addr = sluice.tcp_addr();
    let admin = console(addr, "admin").await;
    admin.simple_query("SUSPEND").await.unwrap();
    let pending = tokio::spawn(async move { connect(addr, "sluice_trust", "", "app").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "a new client was accepted during SUSPEND");
    admin.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap()
        .expect("accepted after RESUME");

    admin.simple_query("SUSPEND").await.unwrap();
    drop(admin); // the only console session leaves: sluice resumes by itself
    wait_until(Duration::from_secs(5), "accepting again", || async {
        tokio::time::timeout(
            Duration::from_millis(500),
            connect(addr, "sluice_trust", "", "app"),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    })
    .await;
}
