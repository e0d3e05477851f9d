//! One client never affects another: a client's garbage fails only that client, a cancel request
//! only ever cancels its own client's query, and a role change never goes on to the next client
//! of the server. Each test runs victims next to the offender on a tiny pool and counts what
//! the victims suffered.

mod common;

use common::config::PoolerToml;
use common::raw::RawClient;
use common::{connect, pg, start_sluice};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A transaction-mode sluice in front of `db` with pool size `pool`, for `sluice_scram` and the
/// superuser `postgres`.
fn config(db: &str, pool: u32) -> String {
    PoolerToml::new("scram-sha-256")
        .pool_mode("transaction")
        .set("query_wait_timeout = \"20s\"\nmax_client_conn = 200")
        .user_password("sluice_scram", "scram_pw")
        .user_password("postgres", "postgres_pw")
        .database(db, Some(pool))
        .build()
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// An error as "SQLSTATE message" when the server sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {} {}", d.severity(), d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// What victim clients went through.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    /// Errors with SQLSTATE 57014 (query canceled).
    canceled: AtomicU64,
}

impl Tally {
    fn record(&self, r: Result<(), tokio_postgres::Error>) {
        match r {
            Ok(()) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                if sqlstate(&e) == Some("57014") {
                    self.canceled.fetch_add(1, Ordering::Relaxed);
                }
                match e.as_db_error() {
                    Some(d) => eprintln!("victim error: {} {}", d.code().code(), d.message()),
                    None => eprintln!("victim error: {e}"),
                }
                self.errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A victim: runs `sql` in a loop until `stop`, reconnecting when its connection died.
fn victim(
    addr: std::net::SocketAddr,
    db: String,
    sql: &'static str,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = connect(addr, "sluice_scram", "scram_pw", &db)
            .await
            .expect("victim connect");
        while !stop.load(Ordering::Relaxed) {
            let r = tokio::time::timeout(Duration::from_secs(10), client.batch_execute(sql))
                .await
                .expect("a victim's query hung");
            tally.record(r);
            if client.is_closed() {
                client = connect(addr, "sluice_scram", "scram_pw", &db)
                    .await
                    .expect("victim reconnect");
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_pipelined_behind_a_query_fails_only_its_sender() {
    let db = pg().create_database("t_iso_garbage").await;
    let sluice = start_sluice(&config(&db, 1)).await;
    let addr = sluice.tcp_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let victims: Vec<_> = (0..3)
        .map(|_| {
            victim(
                addr,
                db.clone(),
                "SELECT pg_sleep(0.001)",
                stop.clone(),
                tally.clone(),
            )
        })
        .collect();

    // A complete Query, then (in the same write, so it is there while the query runs) a large
    // CopyData, which PostgreSQL reads and ignores outside COPY (it keeps the server busy reading
    // after its answer), then a message PostgreSQL does not accept after login: an unknown type,
    // a PasswordMessage, an 'e'; or a Sync or Flush with a body, which PostgreSQL would answer
    // with an error nobody asked for.
    let garbage: [&[u8]; 5] = [
        &[b'z', 0, 0, 0, 4],
        &[b'p', 0, 0, 0, 8, b'p', b'w', b'd', 0],
        &[b'e', 0, 0, 0, 4],
        &[b'S', 0, 0, 0, 5, 0],
        &[b'H', 0, 0, 0, 6, 1, 2],
    ];
    let copy_data_len: u32 = 2 << 20;
    let mut refused = 0;
    for round in 0..40 {
        let mut attacker = RawClient::connect(addr).await;
        attacker.login_scram("sluice_scram", "scram_pw", &db).await;
        let mut out = Vec::new();
        out.extend_from_slice(&[b'Q', 0, 0, 0, 26]);
        out.extend_from_slice(b"SELECT pg_sleep(0.02)\0");
        out.push(b'd');
        out.extend_from_slice(&(copy_data_len + 4).to_be_bytes());
        out.resize(out.len() + copy_data_len as usize, b'x');
        out.extend_from_slice(garbage[round % garbage.len()]);
        attacker.send(&out).await;
        let fatal = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(m) = attacker.read_message().await {
                if m.tag == b'E' {
                    return Some((m.field(b'S'), m.field(b'C')));
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        if fatal == Some((Some("FATAL".into()), Some("08P01".into()))) {
            refused += 1;
        } else {
            eprintln!("round {round}: the attacker got {fatal:?}");
        }
    }
    // Let the victims run a little past the last attack.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for v in victims {
        v.await.expect("victim task");
    }
    let (ok, errors) = (
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    eprintln!("attacker refused {refused}/40; victims: {ok} queries, {errors} errors");
    assert_eq!(errors, 0, "victims failed because of another client's bytes");
    assert!(ok > 40, "the victims ran ({ok} queries)");
    assert_eq!(refused, 40, "every garbage message got its sender FATAL 08P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_request_never_cancels_another_clients_query() {
    let db = pg().create_database("t_iso_cancel").await;
    let sluice = start_sluice(&config(&db, 2)).await;
    let addr = sluice.tcp_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let victims: Vec<_> = (0..3)
        .map(|_| {
            victim(
                addr,
                db.clone(),
                "SELECT pg_sleep(0.005)",
                stop.clone(),
                tally.clone(),
            )
        })
        .collect();

    // Cancellers: each opens a transaction (so it holds a server and knows its query starts at
    // once), sends a short query with the COMMIT behind it, and fires a cancel around the moment
    // the query completes and the server goes back to the pool, where victims wait for it.
    let cancels = Arc::new(AtomicU64::new(0));
    let own_cancelled = Arc::new(AtomicU64::new(0));
    let cancellers: Vec<_> = (0..3u64)
        .map(|i| {
            let (db, stop, cancels, own) = (db.clone(), stop.clone(), cancels.clone(), own_cancelled.clone());
            tokio::spawn(async move {
                let client = Arc::new(
                    connect(addr, "sluice_scram", "scram_pw", &db)
                        .await
                        .expect("connect"),
                );
                let token = client.cancel_token();
                let mut seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1);
                while !stop.load(Ordering::Relaxed) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if let Err(e) = client.batch_execute("BEGIN").await {
                        // The cancel of the round before, landing late on this client's own server.
                        assert_eq!(sqlstate(&e), Some("57014"), "a canceller's BEGIN failed: {e}");
                        own.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let delay = Duration::from_micros(1000 + seed % 4000);
                    let c = client.clone();
                    let query =
                        tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(0.003); COMMIT").await });
                    tokio::time::sleep(delay).await;
                    let _ = token.cancel_query(tokio_postgres::NoTls).await;
                    cancels.fetch_add(1, Ordering::Relaxed);
                    match tokio::time::timeout(Duration::from_secs(30), query).await {
                        Ok(Ok(Err(e))) if sqlstate(&e) == Some("57014") => {
                            own.fetch_add(1, Ordering::Relaxed);
                            client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
                        }
                        Ok(Ok(Err(e))) => panic!("a canceller's query failed: {e:?}"),
                        Ok(Ok(Ok(()))) => {}
                        other => panic!("a canceller's query did not end: {other:?}"),
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    for t in cancellers.into_iter().chain(victims) {
        t.await.expect("task");
    }
    let (ok, errors, canceled) = (
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.canceled.load(Ordering::Relaxed),
    );
    eprintln!(
        "cancels sent: {}, cancelling their own query: {}; victims: {ok} queries, {errors} errors, {canceled} of them 57014",
        cancels.load(Ordering::Relaxed),
        own_cancelled.load(Ordering::Relaxed)
    );
    assert_eq!(
        canceled, 0,
        "a victim's query was cancelled by another client's cancel"
    );
    assert_eq!(errors, 0, "victims saw errors");
    assert!(ok > 100, "the victims ran ({ok} queries)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_change_never_reaches_the_next_client_of_the_server() {
    let db = pg().create_database("t_iso_role").await;
    let admin = pg().admin_client().await;
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE iso_other NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             GRANT iso_other TO sluice_scram",
        )
        .await
        .expect("create the second role");
    let sluice = start_sluice(&config(&db, 1)).await;
    let addr = sluice.tcp_addr();

    let attacks: [(&str, &str, &str); 5] = [
        ("postgres", "postgres_pw", "SET ROLE iso_other"),
        ("postgres", "postgres_pw", "SET SESSION AUTHORIZATION iso_other"),
        ("sluice_scram", "scram_pw", "SET ROLE iso_other"),
        (
            "sluice_scram",
            "scram_pw",
            "SELECT set_config('role', 'iso_other', false)",
        ),
        (
            "postgres",
            "postgres_pw",
            "SET ROLE iso_other; SET SESSION AUTHORIZATION sluice_scram",
        ),
    ];
    let mut victim_errors = Vec::new();
    let mut wrong_identity = Vec::new();
    for (user, password, attack) in attacks {
        // The offender changes its identity, checks it took, and leaves.
        {
            let offender = connect(addr, user, password, &db)
                .await
                .expect("offender connect");
            // In one request: in transaction mode the role may not outlive the transaction.
            // (An offender is a victim of the offenders before it, too.)
            let msgs = match offender
                .simple_query(&format!("{attack}; SELECT current_user::text"))
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    victim_errors.push(format!("{attack}: the offender itself: {}", describe(&e)));
                    continue;
                }
            };
            let who = msgs
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .expect("a row");
            assert_ne!(who, user, "{attack}: the role change took on the offender's side");
        }
        // A victim of the same pool user gets the only server next.
        for _ in 0..3 {
            let victim = match connect(addr, user, password, &db).await {
                Ok(c) => c,
                Err(e) => {
                    victim_errors.push(format!("{attack}: connect: {}", describe(&e)));
                    continue;
                }
            };
            match victim
                .query_one("SELECT current_user::text, session_user::text", &[])
                .await
            {
                Ok(row) => {
                    let seen: (String, String) = (row.get(0), row.get(1));
                    if seen != (user.to_string(), user.to_string()) {
                        wrong_identity.push(format!("{attack}: the next client ran as {seen:?}"));
                    }
                }
                Err(e) => victim_errors.push(format!("{attack}: {}", describe(&e))),
            }
        }
    }
    eprintln!("victim errors: {victim_errors:#?}\nidentities leaked: {wrong_identity:#?}");
    assert!(victim_errors.is_empty(), "victims failed: {victim_errors:#?}");
    assert!(wrong_identity.is_empty(), "identity leaked: {wrong_identity:#?}");
    // The pool still works, with its one server.
    let c = connect(addr, "sluice_scram", "scram_pw", &db)
        .await
        .expect("connect");
    let started = Instant::now();
    let n: i32 = c.query_one("SELECT 1", &[]).await.expect("query").get(0);
    assert_eq!(n, 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}
