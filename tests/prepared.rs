//! Named prepared statements in transaction mode against a real PostgreSQL: statements usable on
//! whichever server a client lands on, names private to each client, errors inside pipelines,
//! LRU eviction under max_prepared_statements, SQL DEALLOCATE/DISCARD, schema changes, the
//! console's counts, and pgbench -M prepared.

mod common;

use bytes::{BufMut, BytesMut};
use common::config::PoolerToml;
use common::raw::{RawClient, RawMessage};
use common::{connect_with, console_rows, pg, start_sluice};
use std::collections::HashSet;
use std::net::SocketAddr;

/// Transaction mode, trust auth, pool of `pool` in front of `db`.
fn config(db: &str, pool: u32, extra: &str) -> String {
    PoolerToml::trust()
        .admin()
        .pool_mode("transaction")
        .set("max_client_conn = 200\nquery_wait_timeout = \"30s\"")
        .set(extra)
        .user("admin")
        .user("sluice_trust")
        .database(db, Some(pool))
        .build()
}

async fn client(addr: SocketAddr, db: &str) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("sluice_trust")
        .dbname(db);
    connect_with(cfg).await.expect("connect through sluice")
}

async fn raw(addr: SocketAddr, db: &str) -> RawClient {
    RawClient::login_trust(addr, &[("user", "sluice_trust"), ("database", db)]).await
}

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    let mut b = BytesMut::new();
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    b.put_i16(0);
    message(out, b'P', &b);
}

/// Bind of `statement` to the unnamed portal with text parameters, text results.
fn bind(out: &mut BytesMut, statement: &str, params: &[&str]) {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_slice(statement.as_bytes());
    b.put_u8(0);
    b.put_i16(0);
    b.put_i16(params.len() as i16);
    for p in params {
        b.put_i32(p.len() as i32);
        b.put_slice(p.as_bytes());
    }
    b.put_i16(0);
    message(out, b'B', &b);
}

fn execute(out: &mut BytesMut) {
    message(out, b'E', b"\0\0\0\0\0");
}

fn sync(out: &mut BytesMut) {
    message(out, b'S', b"");
}

fn statement_message(out: &mut BytesMut, tag: u8, name: &str) {
    let mut b = BytesMut::new();
    b.put_u8(b'S');
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    message(out, tag, &b);
}

/// Sends `out` and reads up to ReadyForQuery; returns the message tags and the messages.
async fn exchange(c: &mut RawClient, out: &BytesMut) -> (String, Vec<RawMessage>) {
    c.send(out).await;
    let msgs = c.read_until(b'Z').await;
    (msgs.iter().map(|m| m.tag as char).collect(), msgs)
}

/// Prepares `name` as `sql` in a batch of its own and checks the ParseComplete.
async fn prepare_ok(c: &mut RawClient, name: &str, sql: &str) {
    let mut out = BytesMut::new();
    parse(&mut out, name, sql);
    sync(&mut out);
    assert_eq!(exchange(c, &out).await.0, "1Z", "preparing {name}");
}

/// Binds `statement` with text parameters, executes it and syncs; returns the reply's tags and
/// messages.
async fn run(c: &mut RawClient, statement: &str, params: &[&str]) -> (String, Vec<RawMessage>) {
    let mut out = BytesMut::new();
    bind(&mut out, statement, params);
    execute(&mut out);
    sync(&mut out);
    exchange(c, &out).await
}

/// Parses `sql` as the unnamed statement, binds, executes and syncs it in one batch.
async fn unnamed_statement(c: &mut RawClient, sql: &str) -> (String, Vec<RawMessage>) {
    let mut out = BytesMut::new();
    parse(&mut out, "", sql);
    bind(&mut out, "", &[]);
    execute(&mut out);
    sync(&mut out);
    exchange(c, &out).await
}

/// Runs a prepared statement returning one value: the value, or the error's message.
async fn run_one(c: &mut RawClient, statement: &str, params: &[&str]) -> Result<String, String> {
    let (_, msgs) = run(c, statement, params).await;
    if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
        return Err(e.field(b'M').unwrap_or_default());
    }
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a DataRow");
    Ok(row.data_row()[0].clone().unwrap_or_default())
}

/// The names of the statements prepared on the server the client is given for this query.
async fn server_statement_names(c: &mut RawClient) -> Vec<String> {
    c.query("SELECT name FROM pg_prepared_statements ORDER BY name")
        .await;
    let msgs = c.read_until(b'Z').await;
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .filter_map(|m| m.data_row()[0].clone())
        .collect()
}

fn num(row: &common::ConsoleRow, col: &str) -> i64 {
    row.get(col)
        .and_then(|v| v.as_deref())
        .unwrap_or("0")
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_use_their_statements_on_whichever_of_three_servers_they_land() {
    let db = pg().create_database("t_ps_fifty").await;
    let sluice = start_sluice(&config(&db, 3, "")).await;
    let addr = sluice.tcp_addr();
    let mut tasks = Vec::new();
    for i in 0..50i32 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let c = client(addr, &db).await;
            let add = c.prepare("SELECT $1::int4 + 1").await.unwrap();
            let pid = c.prepare("SELECT pg_backend_pid()").await.unwrap();
            let own = c.prepare(&format!("SELECT $1::int4 * {}", i + 2)).await.unwrap();
            let mut pids = HashSet::new();
            for round in 0..20i32 {
                let v: i32 = c.query_one(&add, &[&(round + i)]).await.unwrap().get(0);
                assert_eq!(v, round + i + 1);
                let v: i32 = c.query_one(&own, &[&round]).await.unwrap().get(0);
                assert_eq!(v, round * (i + 2));
                pids.insert(c.query_one(&pid, &[]).await.unwrap().get::<_, i32>(0));
                tokio::task::yield_now().await;
            }
            pids.len()
        }));
    }
    let mut most_servers = 0;
    for t in tasks {
        most_servers = most_servers.max(t.await.unwrap());
    }
    assert!(
        most_servers >= 2,
        "some client should have run its statements on more than one server"
    );
    assert!(pg().backends_in(&db).await <= 3);

    let stats = console_rows(addr, "admin", "SHOW STATS").await;
    let row = stats
        .iter()
        .find(|r| r.get("database").and_then(|v| v.as_deref()) == Some(db.as_str()))
        .expect("stats row");
    assert_eq!(num(row, "total_client_parse_count"), 150);
    assert_eq!(num(row, "total_bind_count"), 50 * 20 * 3);
    let server_parses = num(row, "total_server_parse_count");
    // Every client Parse reaches a server (150), and a server that lacks a statement when a
    // client binds it prepares it first; without eviction at this size, that is at most once per
    // distinct text per server beyond the clients' own: 52 texts on 3 servers.
    assert!(
        (150..=150 + 52 * 3).contains(&server_parses),
        "server parses: {server_parses}"
    );
    // The servers share: they hold at most one copy of each distinct text.
    let servers = console_rows(addr, "admin", "SHOW SERVERS").await;
    let held: i64 = servers.iter().map(|r| num(r, "prepared_statements")).sum();
    assert!((52..=52 * 3).contains(&held), "held: {held}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_name_in_two_clients_means_two_statements() {
    let db = pg().create_database("t_ps_names").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let mut a = raw(addr, &db).await;
    let mut b = raw(addr, &db).await;
    prepare_ok(&mut a, "q", "SELECT 'from a'").await;
    prepare_ok(&mut b, "q", "SELECT 'from b'").await;
    for _ in 0..3 {
        assert_eq!(run_one(&mut a, "q", &[]).await.unwrap(), "from a");
        assert_eq!(run_one(&mut b, "q", &[]).await.unwrap(), "from b");
    }
    // The client sees its own statement in SHOW CLIENTS.
    let clients = console_rows(addr, "admin", "SHOW CLIENTS").await;
    let counts: Vec<i64> = clients
        .iter()
        .filter(|r| r.get("user").and_then(|v| v.as_deref()) == Some("sluice_trust"))
        .map(|r| num(r, "prepared_statements"))
        .collect();
    assert_eq!(counts, vec![1, 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_inside_a_pipeline_leaves_sluice_and_the_server_in_step() {
    let db = pg().create_database("t_ps_pipeline").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let mut c = raw(addr, &db).await;
    prepare_ok(&mut c, "s1", "SELECT $1::int4 * 10").await;

    // One batch: s1 runs, s2 fails to parse, and everything after it up to Sync is skipped by
    // PostgreSQL — including the Close of s1 and the Parse of s3.
    let mut out = BytesMut::new();
    bind(&mut out, "s1", &["4"]);
    execute(&mut out);
    parse(&mut out, "s2", "SELEKT nonsense");
    bind(&mut out, "s2", &[]);
    execute(&mut out);
    statement_message(&mut out, b'C', "s1");
    parse(&mut out, "s3", "SELECT 3");
    sync(&mut out);
    let (tags, msgs) = exchange(&mut c, &out).await;
    assert_eq!(tags, "2DCEZ", "{msgs:?}");
    assert_eq!(msgs[1].data_row()[0].as_deref(), Some("40"));
    assert_eq!(msgs[3].field(b'C').as_deref(), Some("42601"));

    // s1 survived (its Close was skipped); s2 and s3 never existed. The server holds s1 under
    // sluice's name for its text, and nothing else.
    assert_eq!(run_one(&mut c, "s1", &["5"]).await.unwrap(), "50");
    let names = server_statement_names(&mut c).await;
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("sluice_"), "{names:?}");
    let e = run_one(&mut c, "s2", &[]).await.unwrap_err();
    assert!(e.contains("\"s2\" does not exist"), "{e}");
    let e = run_one(&mut c, "s3", &[]).await.unwrap_err();
    assert!(e.contains("\"s3\" does not exist"), "{e}");

    // The names are free again, and the server has no stray statement under them.
    out.clear();
    parse(&mut out, "s2", "SELECT 'two'");
    parse(&mut out, "s3", "SELECT 'three'");
    sync(&mut out);
    assert_eq!(exchange(&mut c, &out).await.0, "11Z");
    assert_eq!(run_one(&mut c, "s2", &[]).await.unwrap(), "two");
    assert_eq!(run_one(&mut c, "s3", &[]).await.unwrap(), "three");

    // A Close and a re-Parse in one batch, answered in order.
    out.clear();
    statement_message(&mut out, b'C', "s3");
    parse(&mut out, "s3", "SELECT 'three again'");
    bind(&mut out, "s3", &[]);
    execute(&mut out);
    sync(&mut out);
    let (tags, msgs) = exchange(&mut c, &out).await;
    assert_eq!(tags, "312DCZ", "{msgs:?}");
    assert_eq!(msgs[3].data_row()[0].as_deref(), Some("three again"));

    // Parsing a name twice is PostgreSQL's error 42P05, and the rest of that batch is skipped.
    out.clear();
    parse(&mut out, "s1", "SELECT 'duplicate'");
    bind(&mut out, "s1", &["1"]);
    execute(&mut out);
    sync(&mut out);
    let (tags, msgs) = exchange(&mut c, &out).await;
    assert_eq!(tags, "EZ", "{msgs:?}");
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("42P05"));
    assert_eq!(run_one(&mut c, "s1", &["6"]).await.unwrap(), "60");

    // Describe of a statement works on a server that has to prepare it first.
    out.clear();
    statement_message(&mut out, b'D', "s1");
    sync(&mut out);
    let (tags, _) = exchange(&mut c, &out).await;
    assert_eq!(tags, "tTZ");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_most_max_prepared_statements_live_on_a_server_and_evicted_ones_come_back() {
    let db = pg().create_database("t_ps_lru").await;
    let sluice = start_sluice(&config(&db, 1, "max_prepared_statements = 2")).await;
    let addr = sluice.tcp_addr();
    let c = client(addr, &db).await;
    let mut statements = Vec::new();
    for k in 0..5i32 {
        statements.push(c.prepare(&format!("SELECT $1::int4 + {k}")).await.unwrap());
    }
    for round in 0..3i32 {
        for (k, s) in statements.iter().enumerate() {
            let v: i32 = c.query_one(s, &[&round]).await.unwrap().get(0);
            assert_eq!(v, round + k as i32);
            // What the server really holds, seen from the server itself (a simple query, so
            // the check prepares nothing).
            let held = c
                .simple_query("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'sluice_%'")
                .await
                .unwrap();
            let held: i64 = match &held[1] {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().parse().unwrap(),
                other => panic!("{other:?}"),
            };
            assert!(held <= 2, "the server holds {held} statements");
        }
    }
    let servers = console_rows(addr, "admin", "SHOW SERVERS").await;
    assert!(servers.iter().all(|r| num(r, "prepared_statements") <= 2));
    let stats = console_rows(addr, "admin", "SHOW STATS").await;
    let row = stats
        .iter()
        .find(|r| r.get("database").and_then(|v| v.as_deref()) == Some(db.as_str()))
        .expect("stats row");
    // Round-robin over 5 statements with room for 2: every use after the first round
    // prepares again.
    assert!(num(row, "total_server_parse_count") >= 15);
    assert_eq!(num(row, "total_client_parse_count"), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_deallocate_and_discard_act_on_protocol_level_statements() {
    let db = pg().create_database("t_ps_dealloc").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let mut c = raw(addr, &db).await;
    let mut out = BytesMut::new();
    parse(&mut out, "a1", "SELECT 'a1'");
    parse(&mut out, "Mixed", "SELECT 'mixed'");
    parse(&mut out, "pdo_stmt_00000001", "SELECT 'pdo'");
    sync(&mut out);
    assert_eq!(exchange(&mut c, &out).await.0, "111Z");

    // What Rails and PHP PDO send: DEALLOCATE of a statement prepared through the protocol.
    for sql in [
        "DEALLOCATE a1",
        "deallocate prepare \"Mixed\";",
        "DEALLOCATE pdo_stmt_00000001",
    ] {
        c.query(sql).await;
        let msgs = c.read_until(b'Z').await;
        let tags: String = msgs.iter().map(|m| m.tag as char).collect();
        assert_eq!(tags, "CZ", "{sql}: {msgs:?}");
        assert_eq!(&msgs[0].body[..], b"DEALLOCATE\0");
    }
    let e = run_one(&mut c, "a1", &[]).await.unwrap_err();
    assert!(e.contains("\"a1\" does not exist"), "{e}");
    // The server never knew the client's names: its statements are sluice's, kept for reuse.
    let names = server_statement_names(&mut c).await;
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("sluice_")), "{names:?}");
    // An unknown name still gets PostgreSQL's own error.
    c.query("DEALLOCATE nope").await;
    let msgs = c.read_until(b'Z').await;
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("26000"));

    // DEALLOCATE ALL and DISCARD ALL drop the client's statements and the server's.
    for sql in ["DEALLOCATE ALL", "DISCARD ALL"] {
        prepare_ok(&mut c, "b1", "SELECT 'b1'").await;
        assert_eq!(run_one(&mut c, "b1", &[]).await.unwrap(), "b1");
        c.query(sql).await;
        let msgs = c.read_until(b'Z').await;
        assert_eq!(msgs[0].tag, b'C', "{sql}: {msgs:?}");
        c.query("SELECT count(*) FROM pg_prepared_statements").await;
        let msgs = c.read_until(b'Z').await;
        let row = msgs.iter().find(|m| m.tag == b'D');
        let row = row.unwrap_or_else(|| panic!("{sql}: no count row in {msgs:?}"));
        assert_eq!(row.data_row()[0].as_deref(), Some("0"), "{sql}");
        let e = run_one(&mut c, "b1", &[]).await.unwrap_err();
        assert!(e.contains("\"b1\" does not exist"), "{sql}: {e}");
    }
    // Statements prepared after a DISCARD ALL work as usual.
    prepare_ok(&mut c, "b1", "SELECT 'b1 again'").await;
    assert_eq!(run_one(&mut c, "b1", &[]).await.unwrap(), "b1 again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_change_is_reported_once_then_statements_are_prepared_afresh() {
    let db = pg().create_database("t_ps_ddl").await;
    let sluice = start_sluice(&config(&db, 2, "")).await;
    let addr = sluice.tcp_addr();
    let setup = client(addr, &db).await;
    setup
        .batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // Two clients prepare the statement and use it on both servers.
    let mut raws = Vec::new();
    for _ in 0..2 {
        let mut c = raw(addr, &db).await;
        prepare_ok(&mut c, "all_of_t", "SELECT * FROM t").await;
        raws.push(c);
    }
    // Hold one server in a transaction so the other client's statements go to the second.
    let holder = client(addr, &db).await;
    holder.batch_execute("BEGIN").await.unwrap();
    assert_eq!(run_one(&mut raws[0], "all_of_t", &[]).await.unwrap(), "1");
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(run_one(&mut raws[1], "all_of_t", &[]).await.unwrap(), "1");

    setup
        .batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();

    // Each client is told once, as PostgreSQL tells a session whose statement changed shape...
    // (with PostgreSQL's routine name, by which drivers such as asyncpg recognise it).
    for c in raws.iter_mut() {
        let (tags, msgs) = run(c, "all_of_t", &[]).await;
        assert_eq!(tags, "EZ", "{msgs:?}");
        assert_eq!(
            msgs[0].field(b'M').as_deref(),
            Some("cached plan must not change result type")
        );
        assert_eq!(msgs[0].field(b'R').as_deref(), Some("RevalidateCachedQuery"));
    }
    // ...and afterwards the statement works, on whichever server, with the new shape.
    for _ in 0..6 {
        for c in raws.iter_mut() {
            let (tags, msgs) = run(c, "all_of_t", &[]).await;
            assert_eq!(tags, "2DCZ", "{msgs:?}");
            let row = msgs[1].data_row();
            assert_eq!(row, vec![Some("1".to_string()), Some("7".to_string())]);
        }
    }
    // A client that prepares the text anew after the change never sees the error.
    let fresh = client(addr, &db).await;
    let s = fresh.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(s.columns().len(), 2);
    for _ in 0..6 {
        let row = fresh.query_one(&s, &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(1), 7);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_in_prepared_mode_runs_clean_through_a_small_pool() {
    let db = pg().create_database("t_ps_pgbench").await;
    let sluice = start_sluice(&config(&db, 3, "")).await;
    let addr = sluice.tcp_addr();
    let pgbench = pg().bindir().join("pgbench");
    let port = addr.port().to_string();
    // Initialised through sluice as the client user, so the tables are theirs.
    let init = std::process::Command::new(&pgbench)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "sluice_trust",
            "-i",
            "-s",
            "1",
            "-q",
            &db,
        ])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    // 8 clients, each on its own thread (pgbench prepares synchronously per client), on a
    // pool of 3, in prepared mode: the select-only and the TPC-B-like scripts.
    for script in [&["-S"][..], &[][..]] {
        let mut cmd = std::process::Command::new(&pgbench);
        cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", "sluice_trust"])
            .args(["-n", "-M", "prepared", "-c", "8", "-j", "8", "-t", "100"])
            .args(script)
            .arg(&db);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pgbench {script:?} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("number of transactions actually processed: 800/800"),
            "{stdout}"
        );
        assert!(stdout.contains("number of failed transactions: 0"), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_parse_and_bind_messages_pass_through_tracking() {
    let db = pg().create_database("t_ps_large").await;
    let sluice = start_sluice(&config(&db, 2, "")).await;
    let addr = sluice.tcp_addr();
    let mut c = raw(addr, &db).await;
    // A 300 kB query text (read whole, it is remembered for re-preparing) and a 2 MB parameter
    // (only the head of its Bind is read; the rest streams through).
    let literal = "x".repeat(300_000);
    let sql = format!("SELECT length('{literal}') + length($1::text)");
    prepare_ok(&mut c, "big", &sql).await;
    let param = "y".repeat(2_000_000);
    for _ in 0..3 {
        assert_eq!(run_one(&mut c, "big", &[&param]).await.unwrap(), "2300000");
    }
    // Another client makes the other server prepare it too (the remembered text is complete).
    let holder = client(addr, &db).await;
    holder.batch_execute("BEGIN").await.unwrap();
    assert_eq!(run_one(&mut c, "big", &["z"]).await.unwrap(), "300001");
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_described_before_a_schema_change_is_refused_on_a_new_server_not_reshaped() {
    let db = pg().create_database("t_ps_shape").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let c = client(addr, &db).await;
    c.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // tokio-postgres describes the statement when preparing it, and keeps that description.
    let old = c.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(old.columns().len(), 1);
    assert_eq!(c.query_one(&old, &[]).await.unwrap().get::<_, i32>(0), 1);
    c.batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    // Every server is replaced: the next one has never seen the statement, so nothing there
    // would refuse it; sluice checks its description first.
    console_rows(addr, "admin", &format!("RECONNECT {db}")).await;
    for _ in 0..2 {
        let e = c.query_one(&old, &[]).await.unwrap_err();
        let db_error = e
            .as_db_error()
            .expect("PostgreSQL's error, not rows of another shape");
        assert_eq!(db_error.code().code(), "0A000");
        assert_eq!(db_error.message(), "cached plan must not change result type");
    }
    // The connection is fine, and a statement prepared now gets the new rows.
    let new = c.prepare("SELECT * FROM t").await.unwrap();
    let row = c.query_one(&new, &[]).await.unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 7));
    // A statement whose rows did not change passes the check on a new server.
    let same = c.prepare("SELECT a FROM t").await.unwrap();
    console_rows(addr, "admin", &format!("RECONNECT {db}")).await;
    assert_eq!(c.query_one(&same, &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn deallocate_through_the_extended_protocol_is_answered_in_its_place() {
    // psycopg 3 in pipeline mode with libpq < 17 evicts a statement with SQL DEALLOCATE sent as
    // an unnamed statement: Parse, Bind, Describe portal, Execute, Sync, in one pipeline with
    // other work. The server never knew the client's name, so sluice answers it.
    let db = pg().create_database("t_ps_dealloc_ext").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let mut c = raw(addr, &db).await;
    prepare_ok(&mut c, "_pg3_0", "SELECT 'zero'").await;
    prepare_ok(&mut c, "_pg3_1", "SELECT 'one'").await;

    let mut out = BytesMut::new();
    bind(&mut out, "_pg3_1", &[]);
    execute(&mut out);
    parse(&mut out, "", "DEALLOCATE _pg3_0");
    bind(&mut out, "", &[]);
    let mut describe_portal = BytesMut::new();
    describe_portal.put_u8(b'P');
    describe_portal.put_u8(0);
    message(&mut out, b'D', &describe_portal);
    execute(&mut out);
    statement_message(&mut out, b'D', ""); // the unnamed statement: no parameters, no rows
    bind(&mut out, "_pg3_1", &[]);
    execute(&mut out);
    sync(&mut out);
    let (tags, msgs) = exchange(&mut c, &out).await;
    // _pg3_1's rows, then ParseComplete, BindComplete, NoData, CommandComplete DEALLOCATE,
    // ParameterDescription + NoData, and _pg3_1 again: all in the order sent.
    assert_eq!(tags, "2DC12nCtn2DCZ", "{msgs:?}");
    assert_eq!(&msgs[6].body[..], b"DEALLOCATE\0");
    assert_eq!(msgs[1].data_row()[0].as_deref(), Some("one"));
    // _pg3_0 is gone for the client, and its name is free again; _pg3_1 still works.
    let e = run_one(&mut c, "_pg3_0", &[]).await.unwrap_err();
    assert!(e.contains("\"_pg3_0\" does not exist"), "{e}");
    prepare_ok(&mut c, "_pg3_0", "SELECT 'zero again'").await;
    assert_eq!(run_one(&mut c, "_pg3_0", &[]).await.unwrap(), "zero again");
    assert_eq!(run_one(&mut c, "_pg3_1", &[]).await.unwrap(), "one");
    // The server holds only sluice's names.
    let names = server_statement_names(&mut c).await;
    assert!(names.iter().all(|n| n.starts_with("sluice_")), "{names:?}");

    // An unknown name goes to PostgreSQL, which says so (26000) when it is executed.
    let (tags, msgs) = unnamed_statement(&mut c, "DEALLOCATE nope").await;
    assert_eq!(tags, "12EZ", "{msgs:?}");
    assert_eq!(msgs[2].field(b'C').as_deref(), Some("26000"));

    // In a failed transaction it is refused as PostgreSQL would, and nothing is deallocated.
    c.query("BEGIN; SELECT 1/0").await;
    let msgs = c.read_until(b'Z').await;
    assert_eq!(msgs.last().map(|m| m.body[0]), Some(b'E'));
    let (tags, msgs) = unnamed_statement(&mut c, "DEALLOCATE _pg3_1").await;
    assert_eq!(tags, "EZ", "{msgs:?}");
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("25P02"));
    c.query("ROLLBACK").await;
    c.read_until(b'Z').await;
    assert_eq!(run_one(&mut c, "_pg3_1", &[]).await.unwrap(), "one");
}
