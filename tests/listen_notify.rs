//! LISTEN/NOTIFY in transaction pooling (issue 18, items 3 and 4): sluice answers LISTEN and
//! UNLISTEN, one listening connection per pool LISTENs on the union of the clients' channels,
//! and each notification reaches every client that listens, idle or in a transaction, and no
//! other. Real PostgreSQL; tokio-postgres (notifications read through `Connection::poll_message`)
//! and psql.

mod common;

use common::config::PoolerToml;
use common::{admin_console, console_query, pg, start_sluice, wait_until};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::AsyncMessage;

const USER: &str = "sluice_trust";

fn config(db: &str, pool: u32, extra: &str) -> String {
    PoolerToml::trust()
        .admin()
        .pool_mode("transaction")
        .set("query_wait_timeout = \"20s\"")
        .set(extra)
        .user("admin")
        .user(USER)
        .database(db, Some(pool))
        .build()
}

/// What a client's connection heard besides answers to its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    /// A notification: (channel, payload, pid).
    Note(String, String, i32),
    /// A NOTICE's message.
    Notice(String),
    /// The connection ended with this error (None: a clean end).
    Ended(Option<String>),
}

/// A tokio-postgres client whose connection task forwards what it hears. `pause`, when sent,
/// makes the task stop reading the socket until the returned resume sender fires.
struct Listener {
    client: tokio_postgres::Client,
    heard: mpsc::UnboundedReceiver<Heard>,
    pause: Option<oneshot::Sender<oneshot::Receiver<()>>>,
}

async fn listener(addr: SocketAddr, db: &str) -> Listener {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user(USER)
        .dbname(db)
        .connect_timeout(Duration::from_secs(10));
    let (client, mut conn) = cfg.connect(tokio_postgres::NoTls).await.expect("connect");
    let (tx, heard) = mpsc::unbounded_channel();
    let (pause_tx, mut pause_rx) = oneshot::channel::<oneshot::Receiver<()>>();
    tokio::spawn(async move {
        loop {
            let next = std::future::poll_fn(|cx| conn.poll_message(cx));
            let msg = tokio::select! {
                m = next => m,
                resume = &mut pause_rx => {
                    // Not reading the socket at all until told to go on.
                    if let Ok(resume) = resume {
                        let _ = resume.await;
                    }
                    pause_rx = oneshot::channel().1;
                    continue;
                }
            };
            let heard = match msg {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    Heard::Note(n.channel().to_string(), n.payload().to_string(), n.process_id())
                }
                Some(Ok(AsyncMessage::Notice(n))) => Heard::Notice(n.message().to_string()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    let _ = tx.send(Heard::Ended(Some(format!("{e:?}"))));
                    return;
                }
                None => {
                    let _ = tx.send(Heard::Ended(None));
                    return;
                }
            };
            if tx.send(heard).is_err() {
                return;
            }
        }
    });
    Listener {
        client,
        heard,
        pause: Some(pause_tx),
    }
}

impl Listener {
    /// The next notification within `limit` (notices are skipped).
    async fn next_note(&mut self, limit: Duration) -> Option<(String, String)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.heard.recv()).await {
                Ok(Some(Heard::Note(c, p, _))) => return Some((c, p)),
                Ok(Some(Heard::Notice(_))) => continue,
                Ok(Some(Heard::Ended(e))) => panic!("connection ended: {e:?}"),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Everything heard within `limit`.
    async fn drain(&mut self, limit: Duration) -> Vec<Heard> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::new();
        while let Ok(Some(h)) = tokio::time::timeout_at(deadline, self.heard.recv()).await {
            out.push(h);
        }
        out
    }
}

/// NOTIFY straight on PostgreSQL (not through sluice).
async fn notify_direct(db: &str, channel: &str, payload: &str) {
    notify_on(&direct(db).await, channel, payload).await;
}

/// NOTIFY on a connection straight to PostgreSQL.
async fn notify_on(c: &tokio_postgres::Client, channel: &str, payload: &str) {
    c.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await
        .expect("pg_notify");
}

async fn direct(db: &str) -> tokio_postgres::Client {
    let admin = pg().admin_client().await;
    drop(admin);
    common::connect(pg().addr(), USER, "", db)
        .await
        .expect("direct connect")
}

async fn listeners_rows(addr: SocketAddr) -> Vec<common::ConsoleRow> {
    let console = admin_console(addr).await;
    console_query(&console, "SHOW LISTENERS").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listen_is_answered_by_sluice_and_notifications_reach_only_the_clients_that_listen() {
    let db = pg().create_database("t_ln_basic").await;
    // One server: whoever uses it after the LISTEN would inherit a leaked LISTEN.
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();

    let mut a = listener(addr, &db).await;
    let mut bystander = listener(addr, &db).await;
    let rows = a
        .client
        .simple_query("LISTEN \"Chan One\"")
        .await
        .expect("LISTEN");
    assert!(
        matches!(
            rows.last(),
            Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))
        ),
        "{rows:?}"
    );
    a.client
        .batch_execute("LISTEN lower_CASE")
        .await
        .expect("LISTEN unquoted");

    // The pool's only server carries no LISTEN: the bystander gets it and sees none.
    let on_server = bystander
        .client
        .simple_query("SELECT count(*) FROM pg_listening_channels()")
        .await
        .unwrap();
    let count = on_server.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(
        count.as_deref(),
        Some("0"),
        "a LISTEN leaked onto a pooled server"
    );

    // From PostgreSQL directly, from another client through sluice, and A's own NOTIFY.
    notify_direct(&db, "Chan One", "direct").await;
    assert_eq!(
        a.next_note(Duration::from_secs(10)).await,
        Some(("Chan One".into(), "direct".into()))
    );
    bystander
        .client
        .batch_execute("NOTIFY lower_case, 'via sluice'")
        .await
        .unwrap();
    assert_eq!(
        a.next_note(Duration::from_secs(10)).await,
        Some(("lower_case".into(), "via sluice".into()))
    );
    a.client
        .batch_execute("SELECT pg_notify('Chan One', 'own')")
        .await
        .unwrap();
    assert_eq!(
        a.next_note(Duration::from_secs(10)).await,
        Some(("Chan One".into(), "own".into()))
    );
    // Channel names are case sensitive once folded: "chan one" is another channel.
    notify_direct(&db, "chan one", "other channel").await;
    // UNLISTEN one; the other still delivers (and proves the one above never came).
    a.client.batch_execute("UNLISTEN \"Chan One\"").await.unwrap();
    notify_direct(&db, "Chan One", "after unlisten").await;
    notify_direct(&db, "lower_case", "still").await;
    assert_eq!(
        a.next_note(Duration::from_secs(10)).await,
        Some(("lower_case".into(), "still".into()))
    );
    a.client.batch_execute("UNLISTEN *").await.unwrap();
    notify_direct(&db, "lower_case", "after unlisten all").await;

    let rest = a.drain(Duration::from_millis(700)).await;
    assert!(rest.is_empty(), "after UNLISTEN: {rest:?}");
    let heard = bystander.drain(Duration::from_millis(200)).await;
    assert!(heard.is_empty(), "a client that did not listen heard {heard:?}");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listen_in_a_rolled_back_transaction_does_not_subscribe_and_a_committed_one_does_at_commit() {
    let db = pg().create_database("t_ln_tx").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let mut a = listener(addr, &db).await;

    a.client.batch_execute("BEGIN; SELECT 1").await.expect("BEGIN");
    a.client
        .batch_execute("LISTEN rolled")
        .await
        .expect("LISTEN in tx");
    a.client.batch_execute("ROLLBACK").await.unwrap();
    notify_direct(&db, "rolled", "x").await;

    a.client.batch_execute("BEGIN").await.unwrap();
    a.client.batch_execute("LISTEN kept").await.unwrap();
    // Before COMMIT the channel is not heard (as on PostgreSQL).
    notify_direct(&db, "kept", "before commit").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.client.batch_execute("COMMIT").await.unwrap();
    notify_direct(&db, "kept", "after commit").await;
    notify_direct(&db, "rolled", "y").await;
    assert_eq!(
        a.next_note(Duration::from_secs(10)).await,
        Some(("kept".into(), "after commit".into()))
    );
    let rest = a.drain(Duration::from_millis(700)).await;
    assert!(
        rest.is_empty(),
        "rolled-back LISTEN or pre-commit NOTIFY heard: {rest:?}"
    );

    // Delivered in the middle of the client's own transaction, between messages.
    a.client.batch_execute("BEGIN").await.unwrap();
    let notifier = direct(&db).await;
    let wait = a.client.simple_query("SELECT pg_sleep(1)");
    let send = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        notifier
            .batch_execute("NOTIFY kept, 'mid transaction'")
            .await
            .unwrap();
    };
    let (r, ()) = tokio::join!(wait, send);
    r.expect("sleep");
    assert_eq!(
        a.next_note(Duration::from_secs(5)).await,
        Some(("kept".into(), "mid transaction".into()))
    );
    a.client.batch_execute("COMMIT").await.unwrap();

    // A refused form: LISTEN among other statements fails clearly and leaks nothing.
    let e = a
        .client
        .batch_execute("SELECT 1; LISTEN sneaky")
        .await
        .expect_err("LISTEN among statements");
    let db_error = e.as_db_error().expect("a server error");
    assert_eq!(db_error.code().code(), "0A000", "{db_error:?}");
    assert!(db_error.message().contains("LISTEN"), "{db_error:?}");
    let rows = a
        .client
        .simple_query("SELECT count(*) FROM pg_listening_channels()")
        .await
        .unwrap();
    let count = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("0"));
    // Inside a transaction block, the refusal fails the transaction as PostgreSQL would.
    a.client.batch_execute("BEGIN").await.unwrap();
    let e = a
        .client
        .batch_execute("SELECT 1; LISTEN sneaky")
        .await
        .expect_err("refused");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("0A000"));
    let e = a.client.batch_execute("SELECT 1").await.expect_err("aborted");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("25P02"));
    a.client.batch_execute("ROLLBACK").await.unwrap();
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listen_through_the_extended_protocol_and_a_7999_byte_payload_arrives_intact() {
    let db = pg().create_database("t_ln_ext").await;
    let sluice = start_sluice(&config(&db, 2, "")).await;
    let addr = sluice.tcp_addr();
    let mut a = listener(addr, &db).await;
    // Unnamed statement: Parse, Bind, Describe, Execute, Sync.
    a.client
        .query_typed("LISTEN big", &[])
        .await
        .expect("extended LISTEN");
    let payload: String = (0..7999).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    a.client
        .execute("SELECT pg_notify('big', $1)", &[&payload])
        .await
        .unwrap();
    let (channel, got) = a.next_note(Duration::from_secs(10)).await.expect("notification");
    assert_eq!(channel, "big");
    assert_eq!(got.len(), 7999);
    assert_eq!(got, payload);

    // A named prepared LISTEN (tokio-postgres prepares `s0`, then binds and executes it) is
    // answered at each execution; the server only ever prepared it.
    let statement = a.client.prepare("LISTEN named").await.expect("prepare LISTEN");
    assert_eq!(
        a.client.execute(&statement, &[]).await.expect("execute LISTEN"),
        0
    );
    notify_direct(&db, "named", "prepared").await;
    assert_eq!(
        a.next_note(Duration::from_secs(10)).await,
        Some(("named".into(), "prepared".into()))
    );
    let unlisten = a.client.prepare("UNLISTEN named").await.unwrap();
    a.client.execute(&unlisten, &[]).await.unwrap();
    notify_direct(&db, "named", "after").await;
    notify_direct(&db, "big", "still").await;
    assert_eq!(
        a.next_note(Duration::from_secs(10)).await,
        Some(("big".into(), "still".into()))
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_listeners_on_a_pool_of_five_each_receive_one_notify() {
    const N: usize = 200;
    common::raise_fd_limit();
    let db = pg().create_database("t_ln_many").await;
    let sluice = start_sluice(&config(&db, 5, "max_client_conn = 400")).await;
    let addr = sluice.tcp_addr();
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(listener(addr, &db).await);
    }
    let listens = clients.iter().map(|c| c.client.batch_execute("LISTEN crowd"));
    for r in futures_util::future::join_all(listens).await {
        r.expect("LISTEN");
    }
    let sender = listener(addr, &db).await;
    sender.client.batch_execute("NOTIFY crowd, 'one'").await.unwrap();
    let got = futures_util::future::join_all(clients.iter_mut().map(|c| async {
        let first = c.next_note(Duration::from_secs(20)).await;
        let more = c.drain(Duration::from_millis(300)).await;
        (first, more)
    }))
    .await;
    for (i, (first, more)) in got.iter().enumerate() {
        assert_eq!(
            first.as_ref(),
            Some(&("crowd".to_string(), "one".to_string())),
            "listener {i}"
        );
        assert!(more.is_empty(), "listener {i} heard more: {more:?}");
    }
    // The pool stayed within its five servers, plus the one listening connection.
    let backends = pg().backends_in(&db).await;
    assert!(backends <= 6, "{backends} backends");
    let rows = listeners_rows(addr).await;
    let row = rows
        .iter()
        .find(|r| r["channel"].as_deref() == Some("crowd"))
        .expect("crowd row");
    assert_eq!(row["subscribers"].as_deref(), Some("200"));
    assert_eq!(row["delivered"].as_deref(), Some("200"));
    assert_eq!(row["listener_state"].as_deref(), Some("listening"));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psql_prints_the_asynchronous_notification() {
    let db = pg().create_database("t_ln_psql").await;
    let sluice = start_sluice(&config(&db, 2, "")).await;
    let addr = sluice.tcp_addr();
    let port = addr.port().to_string();
    let psql_db = db.clone();
    // psql LISTENs, then sleeps in the shell (no query in flight) while PostgreSQL sends the
    // NOTIFY; it prints what arrived after its next command.
    let psql = tokio::task::spawn_blocking(move || {
        pg().psql_to(
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                USER,
                "-d",
                &psql_db,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "LISTEN psql_chan",
                "-c",
                "\\! sleep 2",
                "-c",
                "SELECT 1",
            ],
            "",
        )
    });
    wait_until(Duration::from_secs(10), "psql's LISTEN", || async move {
        listeners_rows(addr)
            .await
            .iter()
            .any(|r| r["channel"].as_deref() == Some("psql_chan") && r["subscribers"].as_deref() == Some("1"))
    })
    .await;
    notify_direct(&db, "psql_chan", "hello psql").await;
    let out = psql.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("LISTEN"), "{stdout}");
    assert!(
        stdout.contains("Asynchronous notification \"psql_chan\" with payload \"hello psql\" received"),
        "{stdout}\n{stderr}"
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_listening_connection_is_restored_and_its_clients_are_told() {
    let db = pg().create_database("t_ln_kill").await;
    let sluice = start_sluice(&config(&db, 2, "server_login_retry = \"1s\"")).await;
    let addr = sluice.tcp_addr();
    let mut a = listener(addr, &db).await;
    a.client.batch_execute("LISTEN survivor").await.unwrap();
    let rows = listeners_rows(addr).await;
    let pid: i32 = rows[0]["listener_pid"]
        .as_deref()
        .expect("listener pid")
        .parse()
        .unwrap();

    let admin = pg().admin_client().await;
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);

    // The client is told notifications may have been missed, once the connection is back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let notice = match tokio::time::timeout_at(deadline, a.heard.recv()).await {
        Ok(Some(Heard::Notice(m))) => m,
        Ok(Some(other)) => panic!("unexpected: {other:?}"),
        Ok(None) | Err(_) => panic!("no NOTICE after the listening connection was killed"),
    };
    assert!(notice.contains("may have been missed"), "{notice}");
    let addr2 = addr;
    wait_until(Duration::from_secs(10), "a new listener backend", || async move {
        let rows = listeners_rows(addr2).await;
        rows[0]["listener_state"].as_deref() == Some("listening")
            && rows[0]["listener_pid"].as_deref() != Some(pid.to_string().as_str())
    })
    .await;
    notify_direct(&db, "survivor", "after restore").await;
    assert_eq!(
        a.next_note(Duration::from_secs(10)).await,
        Some(("survivor".into(), "after restore".into()))
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_reads_is_disconnected_while_a_victim_keeps_receiving() {
    const COUNT: i32 = 4000;
    const BATCH: i32 = 20;
    let db = pg().create_database("t_ln_slow").await;
    let sluice = start_sluice(&config(
        &db,
        2,
        "notify_queue_size = 1000\nnotify_queue_bytes = 1048576",
    ))
    .await;
    let addr = sluice.tcp_addr();
    let mut victim = listener(addr, &db).await;
    let mut hog = listener(addr, &db).await;
    victim.client.batch_execute("LISTEN flood").await.unwrap();
    hog.client.batch_execute("LISTEN flood").await.unwrap();
    // The hog stops reading its socket.
    let (resume_tx, resume_rx) = oneshot::channel();
    hog.pause.take().unwrap().send(resume_rx).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let notifier = direct(&db).await;
    // In transactions of 20 (140 kB at once), the victim reading each batch as it comes; the
    // hog reads nothing, and its bounds (1 MB) are passed long before the 28 MB are sent.
    let flood = tokio::spawn(async move {
        let mut got = 0;
        for batch in 0..(COUNT / BATCH) {
            notifier
                .execute(
                    "SELECT pg_notify('flood', $1::int * 20 + i || repeat('x', 7000)) FROM generate_series(1, 20) i",
                    &[&batch],
                )
                .await
                .unwrap();
            while got < (batch + 1) * BATCH {
                match victim.next_note(Duration::from_secs(20)).await {
                    Some(_) => got += 1,
                    None => panic!("the victim received {got} of {COUNT}"),
                }
            }
        }
        victim
    });
    // The hog was dropped from delivery and told to go. It reads again as soon as its drops
    // show, while the flood goes on: the session waits at most 5 s for a client that does not
    // read to take its FATAL, and the rest of the flood can take longer on a loaded machine.
    let addr2 = addr;
    wait_until(Duration::from_secs(30), "the hog's drops", || async move {
        let rows = listeners_rows(addr2).await;
        rows.iter()
            .any(|r| r["dropped"].as_deref().is_some_and(|d| d != "0"))
    })
    .await;
    let _ = resume_tx.send(());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ended = loop {
        match tokio::time::timeout_at(deadline, hog.heard.recv()).await {
            Ok(Some(Heard::Ended(e))) => break e,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => panic!("the hog was not disconnected"),
        }
    };
    let ended = ended.unwrap_or_default();
    assert!(ended.contains("too many notifications pending"), "{ended}");
    assert!(ended.contains("E53400"), "{ended}");
    let mut victim = flood.await.expect("the victim heard the whole flood");
    // The victim still works and still hears.
    notify_direct(&db, "flood", "after").await;
    assert_eq!(
        victim.next_note(Duration::from_secs(10)).await,
        Some(("flood".into(), "after".into()))
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_channel_caps_hold_and_session_mode_passes_listen_through() {
    let db = pg().create_database("t_ln_caps").await;
    let sluice = start_sluice(&config(&db, 2, "max_client_listen_channels = 3")).await;
    let addr = sluice.tcp_addr();
    let a = listener(addr, &db).await;
    for c in ["c1", "c2", "c3"] {
        a.client.batch_execute(&format!("LISTEN {c}")).await.unwrap();
    }
    // Listening again on a channel one has is no new channel.
    a.client.batch_execute("LISTEN c1").await.unwrap();
    let e = a
        .client
        .batch_execute("LISTEN c4")
        .await
        .expect_err("over the cap");
    let d = e.as_db_error().expect("db error");
    assert_eq!(d.code().code(), "53400", "{d:?}");
    assert!(d.message().contains("max_client_listen_channels"), "{d:?}");
    sluice.shutdown().await;

    // Session mode: the client's own server LISTENs, as before.
    let session = start_sluice(
        &PoolerToml::trust()
            .pool_mode("session")
            .user(USER)
            .database(&db, Some(2))
            .build(),
    )
    .await;
    let mut s = listener(session.tcp_addr(), &db).await;
    s.client.batch_execute("LISTEN own_server").await.unwrap();
    let rows = s
        .client
        .simple_query("SELECT pg_listening_channels()")
        .await
        .unwrap();
    assert!(
        rows.iter().any(
            |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("own_server"))
        ),
        "{rows:?}"
    );
    notify_direct(&db, "own_server", "s").await;
    assert_eq!(
        s.next_note(Duration::from_secs(10)).await,
        Some(("own_server".into(), "s".into()))
    );
    session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listen_too_long_to_read_is_undone_before_another_client_gets_the_server() {
    let db = pg().create_database("t_ln_long").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let a = listener(addr, &db).await;
    let bystander = listener(addr, &db).await;
    // Past the 8 kB sluice reads for LISTEN: it reaches the pool's only server.
    let long = format!("LISTEN unseen -- {}", "x".repeat(9000));
    a.client.batch_execute(&long).await.expect("long LISTEN");
    let rows = bystander
        .client
        .simple_query("SELECT count(*) FROM pg_listening_channels()")
        .await
        .unwrap();
    let count = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(
        count.as_deref(),
        Some("0"),
        "the LISTEN stayed on the pooled server"
    );
    sluice.shutdown().await;
}

/// asyncpg's pool resets every connection it takes back with one Query of several statements,
/// `UNLISTEN *` among them: it runs, and ends the client's subscriptions as on PostgreSQL; in a
/// block it takes effect at COMMIT. A LISTEN among other statements stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlisten_among_other_statements_runs_and_ends_the_subscriptions() {
    let db = pg().create_database("t_ln_reset").await;
    let sluice = start_sluice(&config(&db, 1, "")).await;
    let addr = sluice.tcp_addr();
    let mut a = listener(addr, &db).await;
    a.client.batch_execute("LISTEN reset_me").await.expect("LISTEN");
    notify_direct(&db, "reset_me", "before").await;
    assert_eq!(
        a.next_note(Duration::from_secs(10)).await,
        Some(("reset_me".into(), "before".into()))
    );
    // Inside a block that rolls back: still listening.
    a.client
        .batch_execute("BEGIN; SELECT 1; UNLISTEN reset_me; ROLLBACK")
        .await
        .expect("UNLISTEN among others, rolled back");
    notify_direct(&db, "reset_me", "after rollback").await;
    assert_eq!(
        a.next_note(Duration::from_secs(10)).await,
        Some(("reset_me".into(), "after rollback".into()))
    );
    // asyncpg 0.30's reset query, as its pool sends it.
    a.client
        .batch_execute("SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;")
        .await
        .expect("asyncpg's reset query");
    notify_direct(&db, "reset_me", "after reset").await;
    let rest = a.drain(Duration::from_millis(700)).await;
    assert!(rest.is_empty(), "heard after the reset: {rest:?}");
    let e = a
        .client
        .batch_execute("SELECT 1; LISTEN reset_me")
        .await
        .expect_err("LISTEN among other statements");
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e:?}");
    sluice.shutdown().await;
}

/// A LISTEN takes effect from the moment sluice answers it, no earlier: a notification
/// committed while the client had UNLISTENed is not delivered to it after it LISTENs again,
/// even when the pool's listening connection (kept on the channel by another client) reads it
/// only after that LISTEN. Repeated, because the window is the listening task's read delay; the
/// other client hears everything, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_committed_while_unlistened_is_not_heard_after_listening_again() {
    const ROUNDS: usize = 40;
    let db = pg().create_database("t_ln_relisten").await;
    let sluice = start_sluice(&config(&db, 2, "")).await;
    let addr = sluice.tcp_addr();
    let mut keeper = listener(addr, &db).await;
    keeper.client.batch_execute("LISTEN relisten").await.unwrap();
    let mut flip = listener(addr, &db).await;
    let notifier = direct(&db).await;
    let mut extra = Vec::new();
    for i in 0..ROUNDS {
        flip.client.batch_execute("LISTEN relisten").await.unwrap();
        flip.client.batch_execute("UNLISTEN relisten").await.unwrap();
        let unheard = format!("unheard {i}");
        notify_on(&notifier, "relisten", &unheard).await;
        flip.client.batch_execute("LISTEN relisten").await.unwrap();
        let heard = format!("heard {i}");
        notify_on(&notifier, "relisten", &heard).await;
        let got = flip.next_note(Duration::from_secs(10)).await;
        let Some((_, payload)) = got else {
            panic!("round {i}: {heard:?} did not arrive");
        };
        if payload != heard {
            extra.push(payload.clone());
            // What was due must still come, right after.
            assert_eq!(
                flip.next_note(Duration::from_secs(10)).await,
                Some(("relisten".into(), heard.clone())),
                "round {i}"
            );
        }
        flip.client.batch_execute("UNLISTEN relisten").await.unwrap();
        for want in [unheard, heard] {
            assert_eq!(
                keeper.next_note(Duration::from_secs(10)).await,
                Some(("relisten".into(), want)),
                "the keeper hears everything, round {i}"
            );
        }
    }
    assert!(
        extra.is_empty(),
        "notifications committed while the client did not listen reached it: {extra:?}"
    );
    sluice.shutdown().await;
}
