//! Zero-drop upgrades (docs/upgrades.md): SIGUSR2 makes the running sluice binary start the
//! binary at the same path, which takes over its listeners and, as each becomes idle, its
//! clients with their session state. pgbench (simple, extended, prepared) runs through three
//! upgrades without a failed transaction or a lost connection; prepared statements, settings
//! and cancel keys carry over; a format mismatch or a new process that dies part-way leaves
//! the old process serving.

mod common;
mod upgrade_support;

use std::collections::BTreeSet;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upgrade_support::{Generations, cancel_and_see_it_cancelled, identities, pgbench, reported, signal};

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_runs_through_three_upgrades_without_a_failure_or_a_lost_client() {
    // As many servers as clients: pgbench -M prepared prepares each statement synchronously the
    // first time a connection runs it, which with fewer servers than clients can block its
    // thread behind its own clients' open transactions (with or without an upgrade).
    let mut g = Generations::start_with_pool(64, "", &[]);
    g.client()
        .await
        .simple_query("SELECT 1")
        .await
        .expect("sluice serves");
    let script = g.dir.path().join("bench.sql");
    // A transaction with a parameter (extended/prepared send it bound).
    std::fs::write(
        &script,
        "\\set n random(1, 1000)\nBEGIN;\nSELECT :n::int + 1;\nSELECT count(*) FROM pg_class WHERE oid > :n;\nEND;\n",
    )
    .unwrap();
    let runs: Vec<(&str, Child)> = ["simple", "extended", "prepared"]
        .into_iter()
        .map(|mode| (mode, pgbench(g.port, mode, 20, 25, &script)))
        .collect();
    // All 60 connected before the first upgrade.
    let deadline = Instant::now() + Duration::from_secs(20);
    while g.show_clients().await.len() < 60 {
        assert!(
            Instant::now() < deadline,
            "pgbench's 60 clients connect\n{}",
            g.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = identities(&g.show_clients().await);
    let mut pids = vec![g.pid().unwrap()];
    for i in 0..3 {
        let started = Instant::now();
        pids.push(g.upgrade().await);
        eprintln!("upgrade {} took {:?}", i + 1, started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = identities(&g.show_clients().await);
    assert_eq!(before.len(), 60);
    assert_eq!(
        before,
        after,
        "the same 60 clients, with the same connect times, after three upgrades\n{}",
        g.log_text()
    );
    for (mode, run) in runs {
        let out = run.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let report = format!("pgbench -M {mode} stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            out.status.success(),
            "pgbench exits 0 (no client aborted)\n{report}"
        );
        assert!(!stderr.contains("error"), "no errors\n{report}");
        let done = reported(&stdout, "number of transactions actually processed: ").unwrap_or(0);
        assert!(done > 100, "pgbench ran transactions\n{report}");
        assert_eq!(
            reported(&stdout, "number of failed transactions: "),
            Some(0),
            "no failed transactions\n{report}"
        );
    }
    let distinct: BTreeSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 4, "four processes served in turn: {pids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_and_settings_survive_an_upgrade() {
    let mut g = Generations::start("", &[]);
    let c = g.client().await;
    let stmt = c.prepare("SELECT $1::int * 2").await.unwrap();
    c.simple_query("SET statement_timeout = '4321s'").await.unwrap();
    c.simple_query("SET application_name = 'carried'").await.unwrap();
    let row = c.query_one(&stmt, &[&21i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let before = identities(&g.show_clients().await);

    g.upgrade().await;

    // The same connection, its statement and its settings, on the new process.
    let row = c
        .query_one(&stmt, &[&5i32])
        .await
        .expect("the prepared statement works");
    assert_eq!(row.get::<_, i32>(0), 10);
    let timeout = c.query_one("SHOW statement_timeout", &[]).await.unwrap();
    assert_eq!(timeout.get::<_, String>(0), "4321s");
    let app = c.query_one("SHOW application_name", &[]).await.unwrap();
    assert_eq!(app.get::<_, String>(0), "carried");
    let rows = g.show_clients().await;
    assert_eq!(identities(&rows), before, "the client keeps its connect time");
    let prepared = rows[0].get("prepared_statements").cloned().flatten();
    assert!(
        prepared.is_none() || prepared.as_deref() != Some("0"),
        "SHOW CLIENTS counts its statement: {rows:?}"
    );
    // New clients are served too.
    g.client().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_sent_after_an_upgrade_cancels_the_right_query() {
    let mut g = Generations::start("", &[]);
    let target = g.client().await;
    let victim = g.client().await;
    let token = target.cancel_token();
    g.upgrade().await;

    let slow = tokio::spawn(async move { target.simple_query("SELECT pg_sleep(30)").await });
    let calm = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(3)").await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = Instant::now();
    cancel_and_see_it_cancelled(&token, slow).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    calm.await
        .unwrap()
        .expect("the other client's query was not cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_format_version_mismatch_aborts_and_the_old_process_serves_on() {
    let mut g = Generations::start("", &[("SLUICE_UPGRADE_TEST_VERSION", "99")]);
    let c = g.client().await;
    let old = g.pid().unwrap();
    signal(old, libc::SIGUSR2);
    g.wait_log("upgrade failed, this process serves on", 1).await;
    assert!(
        g.log_text().contains("version 99"),
        "the log says why\n{}",
        g.log_text()
    );
    assert!(g.alive(old), "the old process runs");
    assert_eq!(g.pid(), Some(old), "the pidfile still names it");
    c.simple_query("SELECT 1").await.expect("its client is served");
    g.client()
        .await
        .simple_query("SELECT 1")
        .await
        .expect("it accepts new clients");
    // The hook went to the first new process only: the next upgrade works.
    let new = g.upgrade().await;
    assert_ne!(new, old);
    c.simple_query("SELECT 1")
        .await
        .expect("the client moved with the upgrade");
}

/// The new process dies at `point`; the old one must keep (or take back) everything not
/// handed over yet and serve on. Of `total` clients, `lost` had been adopted by the dead process.
async fn new_process_dies(point: &str, total: usize, lost: usize) {
    let mut g = Generations::start("", &[("SLUICE_UPGRADE_TEST_EXIT", point)]);
    let mut clients = Vec::new();
    for _ in 0..total {
        clients.push(g.client().await);
    }
    let old = g.pid().unwrap();
    signal(old, libc::SIGUSR2);
    g.wait_log("upgrade failed, this process serves on", 1).await;
    assert!(g.alive(old), "the old process runs\n{}", g.log_text());
    assert_eq!(g.pid(), Some(old));
    let mut working = 0;
    for c in &clients {
        if tokio::time::timeout(Duration::from_secs(5), c.simple_query("SELECT 1"))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            working += 1;
        }
    }
    assert_eq!(
        working,
        total - lost,
        "clients not handed over are still served\n{}",
        g.log_text()
    );
    g.client()
        .await
        .simple_query("SELECT 1")
        .await
        .expect("it accepts again");
    // A second upgrade (no hook) moves the survivors.
    g.upgrade().await;
    let mut moved = 0;
    for c in &clients {
        if c.simple_query("SELECT 1").await.is_ok() {
            moved += 1;
        }
    }
    assert_eq!(moved, total - lost);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_new_process_dying_on_receiving_the_listeners_changes_nothing() {
    new_process_dies("listeners", 10, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_new_process_dying_after_it_accepts_leaves_the_old_one_accepting() {
    new_process_dies("accepting", 10, 0).await;
}

/// 40 clients, so that the old process is often still sending clients when the new one dies:
/// the answers for the three it adopted must still count (a failed send ended the hand-over
/// with them unread, and the old process took those three back: 4 of 8 runs before the fix).
#[tokio::test(flavor = "multi_thread")]
async fn the_new_process_dying_after_three_clients_leaves_the_rest_with_the_old_one() {
    new_process_dies("clients:3", 40, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_finishes_before_its_client_moves_and_one_left_open_is_told_at_upgrade_timeout() {
    let mut g = Generations::start("upgrade_timeout = \"3s\"", &[]);
    let committer = g.client().await;
    let params = [("user", "sluice_trust"), ("database", "app")];
    let mut lingerer = common::raw::RawClient::login_trust(g.addr(), &params).await;
    committer.simple_query("BEGIN; SELECT 1").await.unwrap();
    lingerer.query("BEGIN").await;
    lingerer.read_until(b'Z').await;
    let old = g.pid().unwrap();
    signal(old, libc::SIGUSR2);
    g.wait_log("upgrade: the new process accepts", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Still in its transaction on the old process's server.
    committer.simple_query("SELECT 2").await.unwrap();
    committer.simple_query("COMMIT").await.unwrap();
    // The lingerer never commits: at upgrade_timeout it is told why and disconnected.
    let new = g.upgrade().await;
    assert_ne!(new, old);
    committer
        .simple_query("SELECT 3")
        .await
        .expect("the committer moved after its COMMIT");
    let told = lingerer.read_until_end_or(b'Z').await;
    let fatal = told
        .iter()
        .find(|m| m.tag == b'E')
        .expect("an error before the close");
    assert_eq!(fatal.field(b'V').as_deref(), Some("FATAL"));
    let message = fatal.field(b'M').unwrap_or_default();
    assert!(
        message.contains("being upgraded") && message.contains("upgrade_timeout"),
        "{message}"
    );
    assert!(
        lingerer.read_message().await.is_none(),
        "then the connection closes"
    );
    assert!(
        g.log_text().contains("upgrade_timeout passed"),
        "{}",
        g.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_client_stays_with_the_old_process_until_upgrade_timeout_while_plain_ones_move() {
    let pki = common::certs::Pki::new();
    let extra = format!(
        "upgrade_timeout = \"3s\"\nclient_tls_sslmode = \"allow\"\nclient_tls_cert_file = {:?}\nclient_tls_key_file = {:?}",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string()
    );
    let mut g = Generations::start(&extra, &[]);
    let plain = g.client().await;
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(g.port)
        .user("sluice_trust")
        .dbname("app");
    let tls = common::certs::connect_tls(config, &pki.ca)
        .await
        .expect("TLS login");
    tls.simple_query("SELECT 1").await.unwrap();
    let old = g.pid().unwrap();
    signal(old, libc::SIGUSR2);
    g.wait_log("upgrade: the new process accepts", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The TLS client is still served, by the old process, which waits for it.
    tls.simple_query("SELECT 2")
        .await
        .expect("the TLS client is served meanwhile");
    plain
        .simple_query("SELECT 2")
        .await
        .expect("the plain client is served by the new process");
    assert!(g.alive(old), "the old process waits for its TLS client");
    let new = g.upgrade().await;
    assert_ne!(new, old);
    plain
        .simple_query("SELECT 3")
        .await
        .expect("the plain client moved");
    assert!(
        tls.simple_query("SELECT 3").await.is_err(),
        "the TLS client was disconnected"
    );
    assert!(
        g.log_text().contains("upgrade_timeout passed"),
        "{}",
        g.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_sent_to_the_new_process_reaches_a_query_still_running_on_the_old_one() {
    let mut g = Generations::start("upgrade_timeout = \"20s\"", &[]);
    let target = g.client().await;
    let victim = g.client().await;
    let token = target.cancel_token();
    // In a transaction: it stays on the old process until the transaction ends.
    target.simple_query("BEGIN").await.unwrap();
    victim.simple_query("BEGIN").await.unwrap();
    let old = g.pid().unwrap();
    signal(old, libc::SIGUSR2);
    g.wait_log("upgrade: the new process accepts", 1).await;
    let target = Arc::new(target);
    let slow = tokio::spawn({
        let target = target.clone();
        async move { target.simple_query("SELECT pg_sleep(30)").await }
    });
    let calm = tokio::spawn(async move {
        let r = victim.simple_query("SELECT pg_sleep(3)").await;
        victim.simple_query("COMMIT").await.map(|_| ()).and(r.map(|_| ()))
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Only the new process accepts now: the cancel reaches it, and it does not know the key.
    cancel_and_see_it_cancelled(&token, slow).await;
    calm.await
        .unwrap()
        .expect("the other client's query was not cancelled");
    // Once out of its transaction it moves, and the upgrade completes.
    target.simple_query("ROLLBACK").await.unwrap();
    let new = g.upgrade().await;
    assert_ne!(new, old);
    target
        .simple_query("SELECT 1")
        .await
        .expect("the cancelled client moved");
}

/// The pid the old process logged for the new one it started (`n`-th upgrade, from 1).
fn started_pid(log: &str, n: usize) -> i32 {
    let line = log
        .lines()
        .filter(|l| l.contains("upgrade: started the new process"))
        .nth(n - 1)
        .unwrap_or_else(|| panic!("no start logged\n{log}"));
    let digits: String = line
        .rsplit("pid=")
        .next()
        .unwrap_or("")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap_or_else(|_| panic!("a pid in {line}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_during_an_upgrade_stops_both_processes_once_their_clients_leave() {
    let mut g = Generations::start("upgrade_timeout = \"20s\"", &[]);
    let mover = g.client().await;
    let lingerer = g.client().await;
    lingerer.simple_query("BEGIN").await.unwrap();
    let old = g.pid().unwrap();
    signal(old, libc::SIGUSR2);
    g.wait_log("upgrade: the new process accepts", 1).await;
    let new = started_pid(&g.log_text(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The operator stops the service while the lingerer keeps the hand-over going.
    signal(old, libc::SIGTERM);
    // Neither process accepts any more: the stop reached the one that took the listeners.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout(
            Duration::from_secs(2),
            common::connect(g.addr(), "sluice_trust", "", "app"),
        )
        .await
        {
            Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {
                assert!(
                    Instant::now() < deadline,
                    "a new connection was still accepted after SIGTERM\n{}",
                    g.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // SIGTERM waits for clients to leave: both are still served, wherever they are.
    mover
        .simple_query("SELECT 1")
        .await
        .expect("the moved client is served while the service stops");
    lingerer
        .simple_query("SELECT 2")
        .await
        .expect("the client in a transaction is served");
    lingerer.simple_query("COMMIT").await.expect("it commits");
    assert!(g.alive(new), "the new process waits for its clients");
    drop(mover);
    drop(lingerer);
    let deadline = Instant::now() + Duration::from_secs(15);
    while g.alive(old) || g.alive(new) {
        assert!(
            Instant::now() < deadline,
            "both processes exit once their clients left (old alive {}, new alive {})\n{}",
            g.alive(old),
            g.alive(new),
            g.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time (utime + stime, in clock ticks) of each thread of process `pid`: (tid, name, ticks).
fn thread_ticks(pid: i32) -> Vec<(String, String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the name: state is field 3, utime 14 and stime 15 (1-based, proc(5)).
            let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((t.file_name().to_string_lossy().into_owned(), name, ticks))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_per_core_an_adopted_client_runs_on_a_worker_thread_not_the_accepting_one() {
    let mut g = Generations::start("runtime = \"per-core\"\nworkers = 2", &[]);
    let client = g.client().await;
    client.simple_query("SELECT 1").await.expect("before the upgrade");
    let new = g.upgrade().await;
    assert_eq!(g.show_clients().await.len(), 1, "the client was adopted");
    // Load only the adopted client's session, then see which of the new process's threads
    // spent the CPU: the worker threads, not the main thread that accepts and runs the
    // hand-over.
    let before = thread_ticks(new);
    for i in 0..3000 {
        client
            .simple_query("SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("query {i} after the upgrade: {e}"));
    }
    let after = thread_ticks(new);
    let spent = |named: &dyn Fn(&str) -> bool| -> u64 {
        after
            .iter()
            .filter(|(_, name, _)| named(name))
            .map(|(tid, _, ticks)| {
                let was = before.iter().find(|(t, ..)| t == tid).map_or(0, |(.., k)| *k);
                ticks.saturating_sub(was)
            })
            .sum()
    };
    let workers = spent(&|name| name.starts_with("sluice-worker"));
    let main = spent(&|name| name == "sluice");
    assert!(
        workers > main,
        "the adopted session ran on the main thread: workers {workers} ticks, main {main} ticks ({after:?})"
    );
}
