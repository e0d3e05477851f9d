//! What one client may keep prepared through sluice in transaction mode: past
//! max_client_prepared_statements or max_client_prepared_bytes a Parse gets ERROR 53400 naming
//! the setting, in the Parse's place in the reply stream, and the client's batch and transaction
//! fail as PostgreSQL would fail them (rest of the batch skipped, an open transaction aborted, an
//! implicit one rolled back). Other clients never notice.

mod common;

use bytes::{BufMut, BytesMut};
use common::config::PoolerToml;
use common::pg;
use common::raw::{RawClient, RawMessage};
use common::start_sluice;
use std::net::SocketAddr;

/// Transaction mode, trust auth, one server in front of `db`.
fn config(db: &str, extra: &str) -> String {
    PoolerToml::trust()
        .admin()
        .pool_mode("transaction")
        .set("max_client_conn = 50\nquery_wait_timeout = \"30s\"")
        .set(extra)
        .user("admin")
        .user("sluice_trust")
        .database(db, Some(1))
        .build()
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

/// Bind of `statement` to the unnamed portal, no parameters, then Execute.
fn bind_execute(out: &mut BytesMut, statement: &str) {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_slice(statement.as_bytes());
    b.put_u8(0);
    b.put_slice(&[0, 0, 0, 0, 0, 0]);
    message(out, b'B', &b);
    message(out, b'E', b"\0\0\0\0\0");
}

fn close(out: &mut BytesMut, name: &str) {
    let mut b = BytesMut::new();
    b.put_u8(b'S');
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    message(out, b'C', &b);
}

fn sync(out: &mut BytesMut) {
    message(out, b'S', b"");
}

/// Sends `out` and reads up to ReadyForQuery: the tags, the messages, the status.
async fn exchange(c: &mut RawClient, out: &BytesMut) -> (String, Vec<RawMessage>, u8) {
    c.send(out).await;
    let msgs = c.read_until(b'Z').await;
    let status = msgs.last().map_or(0, |z| z.body[0]);
    (msgs.iter().map(|m| m.tag as char).collect(), msgs, status)
}

async fn simple(c: &mut RawClient, sql: &str) -> (String, Vec<RawMessage>, u8) {
    c.query(sql).await;
    let msgs = c.read_until(b'Z').await;
    let status = msgs.last().map_or(0, |z| z.body[0]);
    (msgs.iter().map(|m| m.tag as char).collect(), msgs, status)
}

async fn prepare_ok(c: &mut RawClient, name: &str, sql: &str) {
    let mut out = BytesMut::new();
    parse(&mut out, name, sql);
    sync(&mut out);
    assert_eq!(exchange(c, &out).await.0, "1Z", "preparing {name}");
}

/// A victim client on the same pool runs its own prepared statement over and over while the
/// test runs; returns how many of its requests failed.
fn victim(
    addr: SocketAddr,
    db: String,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<usize>) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut c = raw(addr, &db).await;
        prepare_ok(&mut c, "mine", "SELECT 41 + 1").await;
        let mut errors = 0;
        loop {
            let mut out = BytesMut::new();
            bind_execute(&mut out, "mine");
            sync(&mut out);
            let (tags, msgs, _) = exchange(&mut c, &out).await;
            let ok = tags == "2DCZ" && msgs[1].data_row()[0].as_deref() == Some("42");
            errors += usize::from(!ok);
            if stopped.try_recv().is_ok() {
                return errors;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parse_past_max_client_prepared_statements_fails_in_place_with_53400() {
    let db = pg().create_database("t_pl_count").await;
    let sluice = start_sluice(&config(&db, "max_client_prepared_statements = 3")).await;
    let addr = sluice.tcp_addr();
    let (stop, victim) = victim(addr, db.clone());
    let mut c = raw(addr, &db).await;
    assert_eq!(simple(&mut c, "CREATE TABLE t (v int)").await.0, "CZ");
    for k in 1..=3 {
        prepare_ok(&mut c, &format!("s{k}"), &format!("SELECT {k}")).await;
    }

    // Inside a transaction: an INSERT runs, the fourth Parse is refused, the rest of the batch
    // is skipped and the transaction is aborted, as on PostgreSQL.
    assert_eq!(simple(&mut c, "BEGIN").await.2, b'T');
    let mut out = BytesMut::new();
    parse(&mut out, "", "INSERT INTO t VALUES (1)");
    bind_execute(&mut out, "");
    parse(&mut out, "s4", "SELECT 4");
    bind_execute(&mut out, "s4");
    sync(&mut out);
    let (tags, msgs, status) = exchange(&mut c, &out).await;
    assert_eq!(tags, "12CEZ", "{msgs:?}");
    assert_eq!(msgs[3].field(b'S').as_deref(), Some("ERROR"));
    assert_eq!(msgs[3].field(b'C').as_deref(), Some("53400"));
    let text = msgs[3].field(b'M').unwrap_or_default();
    assert!(text.contains("max_client_prepared_statements"), "{text}");
    assert_eq!(
        status, b'E',
        "the transaction is aborted, as PostgreSQL would abort it"
    );
    let (_, msgs, _) = simple(&mut c, "SELECT 1").await;
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("25P02"));
    assert_eq!(simple(&mut c, "ROLLBACK").await.2, b'I');

    // Nothing of the refused batch is left: s4 does not exist, the INSERT was rolled back.
    let mut out = BytesMut::new();
    bind_execute(&mut out, "s4");
    sync(&mut out);
    let (_, msgs, _) = exchange(&mut c, &out).await;
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("26000"), "{msgs:?}");
    let (_, msgs, _) = simple(&mut c, "SELECT count(*) FROM t").await;
    assert_eq!(msgs[1].data_row()[0].as_deref(), Some("0"));

    // Outside a transaction block the refused Parse also fails its implicit transaction: the
    // INSERT before it in the same batch is not committed.
    let mut out = BytesMut::new();
    parse(&mut out, "", "INSERT INTO t VALUES (2)");
    bind_execute(&mut out, "");
    parse(&mut out, "s5", "SELECT 5");
    sync(&mut out);
    let (tags, msgs, status) = exchange(&mut c, &out).await;
    assert_eq!((tags.as_str(), status), ("12CEZ", b'I'), "{msgs:?}");
    assert_eq!(msgs[3].field(b'C').as_deref(), Some("53400"));
    let (_, msgs, _) = simple(&mut c, "SELECT count(*) FROM t").await;
    assert_eq!(msgs[1].data_row()[0].as_deref(), Some("0"));

    // Closing one makes room again; the client's statements still work.
    let mut out = BytesMut::new();
    close(&mut out, "s1");
    parse(&mut out, "s4", "SELECT 4");
    bind_execute(&mut out, "s4");
    bind_execute(&mut out, "s2");
    sync(&mut out);
    let (tags, msgs, _) = exchange(&mut c, &out).await;
    assert_eq!(tags, "312DC2DCZ", "{msgs:?}");
    assert_eq!(msgs[3].data_row()[0].as_deref(), Some("4"));
    assert_eq!(msgs[6].data_row()[0].as_deref(), Some("2"));

    let _ = stop.send(());
    assert_eq!(victim.await.unwrap(), 0, "the victim client saw errors");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parse_past_max_client_prepared_bytes_gets_53400_naming_the_setting() {
    let db = pg().create_database("t_pl_bytes").await;
    let sluice = start_sluice(&config(&db, "max_client_prepared_bytes = 4096")).await;
    let addr = sluice.tcp_addr();
    let mut c = raw(addr, &db).await;
    let big = |k: usize| format!("SELECT {k} /* {} */", "x".repeat(1500));
    prepare_ok(&mut c, "a", &big(1)).await;
    prepare_ok(&mut c, "b", &big(2)).await;
    let mut out = BytesMut::new();
    parse(&mut out, "c", &big(3));
    bind_execute(&mut out, "c");
    sync(&mut out);
    let (tags, msgs, status) = exchange(&mut c, &out).await;
    assert_eq!((tags.as_str(), status), ("EZ", b'I'), "{msgs:?}");
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("53400"));
    let text = msgs[0].field(b'M').unwrap_or_default();
    assert!(text.contains("max_client_prepared_bytes"), "{text}");
    // Small statements still fit, and the big ones work.
    prepare_ok(&mut c, "small", "SELECT 7").await;
    let mut out = BytesMut::new();
    bind_execute(&mut out, "b");
    bind_execute(&mut out, "small");
    sync(&mut out);
    let (tags, msgs, _) = exchange(&mut c, &out).await;
    assert_eq!(tags, "2DC2DCZ", "{msgs:?}");
    assert_eq!(msgs[4].data_row()[0].as_deref(), Some("7"));
    // DEALLOCATE frees the bytes.
    assert_eq!(simple(&mut c, "DEALLOCATE a").await.0, "CZ");
    prepare_ok(&mut c, "c", &big(3)).await;
}
