//! Upgrades with LISTENing clients (docs/upgrades.md, "LISTEN"): transaction-mode clients with
//! subscriptions move to the new process like any idle client, with their channels, and every
//! notification committed on their channels reaches them exactly once, in order, across the
//! hand-over (a marker NOTIFY splits the stream between the two processes). The real binary,
//! a real PostgreSQL, tokio-postgres clients and one asyncpg (the compat suite's virtualenv), a
//! producer NOTIFYing straight on PostgreSQL.

mod common;
mod upgrade_support;

use common::listening::{Heard, assert_whole_sequence, asyncpg_listener, listener, produce};
use common::pg;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use upgrade_support::{Generations, identities};

const USER: &str = "sluice_trust";
/// Short enough that a client held until it ends makes the test fail on time.
const UPGRADE_TIMEOUT_S: u64 = 8;
/// Each test with a producer NOTIFYs on channels of its own: the tests run at once on one
/// PostgreSQL, and a listener must hear only its own test's numbers. Two channels each (the
/// producer's pace); the last two tests listen on the first only.
const THREE_UPGRADES: [&str; 2] = ["upg3_a", "upg3_b"];
const TWO_HUNDRED: [&str; 2] = ["upg200_a", "upg200_b"];
const REFUSED: [&str; 2] = ["upgref_a", "upgref_b"];

#[tokio::test(flavor = "multi_thread")]
async fn listening_clients_move_through_three_upgrades_hearing_every_notification_once_in_order() {
    let extra = format!(
        "pool_mode = \"transaction\"\nupgrade_timeout = \"{UPGRADE_TIMEOUT_S}s\"\nquery_wait_timeout = \"20s\""
    );
    let mut g = Generations::start(&extra, &[]);
    // Three listeners: one per channel, one on both.
    let [a, b] = THREE_UPGRADES;
    let plans: [&[&str]; 3] = [&[a], &[b], &[a, b]];
    let mut listeners = Vec::new();
    for plan in plans {
        let l = listener(g.addr()).await;
        for ch in plan {
            l.client
                .batch_execute(&format!("LISTEN {ch}"))
                .await
                .expect("LISTEN");
        }
        listeners.push(l);
    }
    let (mut asyncpg, mut asyncpg_out) = asyncpg_listener(g.port, b).await;
    // A victim that never listens keeps querying through the upgrades.
    let mut victim = listener(g.addr()).await;
    let victim_stop = Arc::new(AtomicBool::new(false));
    let victim_run = tokio::spawn({
        let stop = victim_stop.clone();
        async move {
            let (mut ok, mut errors) = (0u64, Vec::new());
            while !stop.load(Ordering::Acquire) {
                match victim.client.simple_query("SELECT 1").await {
                    Ok(_) => ok += 1,
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut heard = Vec::new();
            while let Ok(h) = victim.heard.try_recv() {
                heard.push(format!("{h:?}"));
            }
            (ok, errors, heard)
        }
    });
    let before = identities(&g.show_clients().await);
    assert_eq!(before.len(), 5);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(&THREE_UPGRADES, stop.clone(), sent.clone()));
    while sent.load(Ordering::Acquire) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut pids = vec![g.pid().expect("pid")];
    for i in 0..3 {
        let started = Instant::now();
        pids.push(g.upgrade().await);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(UPGRADE_TIMEOUT_S),
            "the old process exited in {took:?}, not held up to upgrade_timeout by its listeners\n{}",
            g.log_text()
        );
        // The second upgrade follows the first at once (its clients may still be joining).
        if i != 0 {
            let at = sent.load(Ordering::Acquire);
            while sent.load(Ordering::Acquire) < at + 200 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    stop.store(true, Ordering::Release);
    let last = producer.await.expect("producer");
    assert!(last >= 600, "the producer ran ({last})");
    assert!(
        !g.log_text().contains("upgrade_timeout passed"),
        "nobody was held to upgrade_timeout\n{}",
        g.log_text()
    );

    for (i, (l, plan)) in listeners.iter_mut().zip(plans).enumerate() {
        let (got, notices) = l.until_end(plan, Duration::from_secs(30)).await;
        let who = format!("listener {i}");
        assert_eq!(
            got.keys().map(String::as_str).collect::<Vec<_>>(),
            plan.to_vec(),
            "{who} heard only its channels"
        );
        for ch in plan {
            let payloads = &got[*ch];
            assert_whole_sequence(&who, ch, payloads);
            assert_eq!(payloads.len() as u64, last + 1, "{who} on {ch}: all {last}");
        }
        assert!(notices.is_empty(), "{who}: no NOTICE: {notices:?}");
    }
    let heard = tokio::time::timeout(Duration::from_secs(30), asyncpg_out.next_line())
        .await
        .expect("asyncpg heard \"end\" in time")
        .ok()
        .flatten()
        .expect("asyncpg's payloads");
    let heard: Vec<String> = serde_json::from_str(&heard).expect("a JSON list");
    assert_whole_sequence("asyncpg", b, &heard);
    assert_eq!(heard.len() as u64, last + 1, "asyncpg heard all {last}");
    let after = identities(&g.show_clients().await);
    assert_eq!(
        before,
        after,
        "the same five clients with the same connect times: they moved, none reconnected\n{}",
        g.log_text()
    );
    drop(asyncpg.stdin.take());
    let exited = tokio::time::timeout(Duration::from_secs(20), asyncpg.wait()).await;
    assert!(
        exited.is_ok_and(|r| r.is_ok_and(|s| s.success())),
        "asyncpg exits cleanly"
    );
    victim_stop.store(true, Ordering::Release);
    let (ok, errors, heard) = victim_run.await.expect("victim");
    assert!(ok > 10, "the victim was served ({ok})");
    assert!(errors.is_empty(), "the victim saw no error: {errors:?}");
    assert!(heard.is_empty(), "the victim heard nothing: {heard:?}");
    assert_eq!(pids.len(), 4);
    let log = g.log_text();
    for line in log.lines().filter(|l| l.contains("this process exits")) {
        eprintln!("{line}");
    }
    assert_eq!(
        log.matches("listening_moved=4").count(),
        3,
        "each upgrade saw the four listeners' markers\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_upgrade_moved_listeners_change_channels_and_new_clients_listen() {
    let extra = format!("pool_mode = \"transaction\"\nupgrade_timeout = \"{UPGRADE_TIMEOUT_S}s\"");
    let mut g = Generations::start(&extra, &[]);
    let mut moved = listener(g.addr()).await;
    moved.client.batch_execute("LISTEN upg_x").await.unwrap();
    let before = identities(&g.show_clients().await);
    let started = Instant::now();
    g.upgrade().await;
    assert!(started.elapsed() < Duration::from_secs(UPGRADE_TIMEOUT_S));
    assert_eq!(identities(&g.show_clients().await), before, "it moved");

    // The moved client: still on upg_x; LISTEN on another, UNLISTEN the first.
    let direct = common::connect(pg().addr(), USER, "", "app").await.unwrap();
    direct.batch_execute("NOTIFY upg_x, 'one'").await.unwrap();
    let (got, _) = moved.until_end_one("upg_x", "one").await;
    assert_eq!(got, ["one"]);
    moved
        .client
        .batch_execute("LISTEN upg_y; ")
        .await
        .expect("LISTEN after the upgrade");
    moved.client.batch_execute("UNLISTEN upg_x").await.unwrap();
    // A client that connects after the upgrade listens too.
    let mut fresh = listener(g.addr()).await;
    fresh.client.batch_execute("LISTEN upg_y").await.unwrap();
    direct
        .batch_execute("NOTIFY upg_x, 'gone'; NOTIFY upg_y, 'two'")
        .await
        .unwrap();
    let (got, _) = moved.until_end_one("upg_y", "two").await;
    assert_eq!(got, ["two"], "upg_x no more, upg_y yes");
    let (got, _) = fresh.until_end_one("upg_y", "two").await;
    assert_eq!(got, ["two"]);
}

/// tokio-postgres prepares LISTEN and UNLISTEN as named statements (as asyncpg's add_listener
/// and remove_listener do): after the move, executing them is still answered by sluice.
#[tokio::test(flavor = "multi_thread")]
async fn prepared_listen_and_unlisten_statements_still_work_after_the_move() {
    let extra = format!("pool_mode = \"transaction\"\nupgrade_timeout = \"{UPGRADE_TIMEOUT_S}s\"");
    let mut g = Generations::start(&extra, &[]);
    let mut l = listener(g.addr()).await;
    let listen = l.client.prepare("LISTEN upg_p").await.expect("prepare LISTEN");
    let unlisten = l
        .client
        .prepare("UNLISTEN upg_p")
        .await
        .expect("prepare UNLISTEN");
    l.client.execute(&listen, &[]).await.expect("LISTEN");
    g.upgrade().await;
    let direct = common::connect(pg().addr(), USER, "", "app").await.unwrap();
    l.client
        .execute(&unlisten, &[])
        .await
        .expect("UNLISTEN after the move");
    direct.batch_execute("NOTIFY upg_p, 'unheard'").await.unwrap();
    l.client
        .execute(&listen, &[])
        .await
        .expect("LISTEN again after the move");
    direct.batch_execute("NOTIFY upg_p, 'heard'").await.unwrap();
    let (got, notices) = l.until_end_one("upg_p", "heard").await;
    assert_eq!(got, ["heard"], "UNLISTEN and LISTEN took effect in sluice");
    assert!(notices.is_empty(), "{notices:?}");
}

/// The new process cannot LISTEN (its configuration points the database at a closed port), so
/// the marker never comes: within the bound (10 s) the client gets what the old process
/// forwarded and the NOTICE that notifications may have been missed, and stays connected.
#[tokio::test(flavor = "multi_thread")]
async fn a_marker_that_never_comes_ends_the_wait_within_its_bound_with_a_notice() {
    let mut g = Generations::start("pool_mode = \"transaction\"\nupgrade_timeout = \"40s\"", &[]);
    let mut l = listener(g.addr()).await;
    l.client.batch_execute("LISTEN upg_m").await.unwrap();
    let before = identities(&g.show_clients().await);
    let config = g.dir.path().join("pooler.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let closed = common::free_port();
    let text = text.replace(&format!("port = {}", pg().port()), &format!("port = {closed}"));
    std::fs::write(&config, text).unwrap();

    let started = Instant::now();
    let old = g.pid().unwrap();
    upgrade_support::signal(old, libc::SIGUSR2);
    g.wait_log("upgrade: the new process accepts", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Read by the old process's listening connection only: forwarded.
    let direct = common::connect(pg().addr(), USER, "", "app").await.unwrap();
    direct.batch_execute("NOTIFY upg_m, 'during'").await.unwrap();
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let notice = loop {
        match tokio::time::timeout_at(deadline, l.heard.recv()).await {
            Ok(Some(Heard::Note(_, p))) => heard.push(p),
            Ok(Some(Heard::Notice(n))) => break n,
            other => panic!(
                "waiting for the NOTICE: {other:?} (heard {heard:?})\n{}",
                g.log_text()
            ),
        }
    };
    let waited = started.elapsed();
    assert!(notice.contains("notifications may have been missed"), "{notice}");
    assert_eq!(heard, ["during"], "what the old process read came first");
    assert!(
        waited < Duration::from_secs(16),
        "the wait was bounded ({waited:?})"
    );
    while g.alive(old) || g.pid() == Some(old) {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the old process exits before upgrade_timeout\n{}",
            g.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        identities(&g.show_clients().await),
        before,
        "the client moved and stays connected\n{}",
        g.log_text()
    );
    assert!(g.log_text().contains("markers_missed=1"), "{}", g.log_text());
}

/// Two hundred listeners on one channel move in one upgrade while a producer NOTIFYs: each hears
/// every number once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_listeners_move_in_one_upgrade_and_each_hears_every_notification() {
    // The producer sends about 1,000 a second; moving 200 listeners can take a debug build on
    // two busy cores 2-3 s, so each client's queue holds 10 s of them (the default holds 1 s,
    // and a full queue drops by design; that limit is tested in listen_notify).
    let extra = format!(
        "pool_mode = \"transaction\"\nupgrade_timeout = \"{UPGRADE_TIMEOUT_S}s\"\nnotify_queue_size = 10000"
    );
    let mut g = Generations::start(&extra, &[]);
    let mut listeners = Vec::new();
    let [ch, _] = TWO_HUNDRED;
    for _ in 0..200 {
        let l = listener(g.addr()).await;
        l.client
            .batch_execute(&format!("LISTEN {ch}"))
            .await
            .expect("LISTEN");
        listeners.push(l);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(&TWO_HUNDRED, stop.clone(), sent.clone()));
    while sent.load(Ordering::Acquire) < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    g.upgrade().await;
    let took = started.elapsed();
    let at = sent.load(Ordering::Acquire);
    while sent.load(Ordering::Acquire) < at + 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Release);
    let last = producer.await.expect("producer");
    for (i, l) in listeners.iter_mut().enumerate() {
        let (got, notices) = l.until_end(&[ch], Duration::from_secs(30)).await;
        assert_whole_sequence(&format!("listener {i}"), ch, &got[ch]);
        assert_eq!(got[ch].len() as u64, last + 1);
        assert!(notices.is_empty(), "{notices:?}");
    }
    let log = g.log_text();
    let done = log
        .lines()
        .find(|l| l.contains("this process exits"))
        .unwrap_or("");
    eprintln!("upgrade with 200 listeners: {took:?}; {done}");
    assert!(done.contains("listening_moved=200"), "{log}");
}

/// The new process refuses some listeners (its max_client_conn is 1): they stay on the old
/// process, which keeps delivering (the notifications taken out for the hand-over first) until
/// upgrade_timeout ends them; what each heard is 1, 2, 3, ... without a gap or a repeat.
#[tokio::test(flavor = "multi_thread")]
async fn listeners_the_new_process_refuses_stay_and_miss_nothing_until_upgrade_timeout() {
    let mut g = Generations::start("pool_mode = \"transaction\"\nupgrade_timeout = \"3s\"", &[]);
    let mut listeners = Vec::new();
    let [ch, _] = REFUSED;
    for _ in 0..3 {
        let l = listener(g.addr()).await;
        l.client
            .batch_execute(&format!("LISTEN {ch}"))
            .await
            .expect("LISTEN");
        listeners.push(l);
    }
    let config = g.dir.path().join("pooler.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("max_client_conn = 500", "max_client_conn = 1"),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(&REFUSED, stop.clone(), sent.clone()));
    while sent.load(Ordering::Acquire) < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    g.upgrade().await;
    let at = sent.load(Ordering::Acquire);
    while sent.load(Ordering::Acquire) < at + 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Release);
    let last = producer.await.expect("producer");
    let (mut moved, mut stayed) = (0, 0);
    for (i, l) in listeners.iter_mut().enumerate() {
        let mut got = Vec::new();
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(20), l.heard.recv()).await {
                Ok(Some(Heard::Note(_, p))) if p == "end" => break false,
                Ok(Some(Heard::Note(_, p))) => got.push(p.parse::<u64>().expect("a number")),
                Ok(Some(Heard::Notice(n))) => panic!("listener {i}: NOTICE {n}"),
                Ok(Some(Heard::Ended(_))) | Ok(None) => break true,
                Err(_) => panic!("listener {i} heard neither \"end\" nor its end"),
            }
        };
        let first_bad = got.iter().zip(1u64..).position(|(a, b)| *a != b);
        assert!(
            first_bad.is_none(),
            "listener {i}: 1..=k without a gap or a repeat; at index {first_bad:?}: {:?}",
            first_bad.map(|k| &got[k.saturating_sub(2)..(k + 2).min(got.len())])
        );
        if ended {
            stayed += 1;
            assert!(
                got.len() >= 100,
                "listener {i} heard the old process until the end"
            );
        } else {
            moved += 1;
            assert_eq!(got.len() as u64, last, "listener {i} moved and heard all");
        }
    }
    assert!(
        moved >= 1 && stayed >= 1,
        "moved {moved}, stayed {stayed}\n{}",
        g.log_text()
    );
    assert!(g.log_text().contains("did not take a client"), "{}", g.log_text());
}
