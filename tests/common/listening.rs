//! Helpers of tests/upgrade_listen.rs: a tokio-postgres client that collects what it hears, an
//! asyncpg listener run from the compat suite's virtualenv, a producer that NOTIFYs numbered
//! payloads straight on PostgreSQL, and the exactly-once-in-order check.

use super::pg;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

pub const USER: &str = "sluice_trust";

/// What a connection heard besides answers.
#[derive(Debug)]
pub enum Heard {
    Note(String, String),
    Notice(String),
    Ended(Option<String>),
}

/// A tokio-postgres client whose connection task forwards notifications and notices.
pub struct Listener {
    pub client: tokio_postgres::Client,
    pub heard: mpsc::UnboundedReceiver<Heard>,
}

pub async fn listener(addr: SocketAddr) -> Listener {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user(USER)
        .dbname("app")
        .connect_timeout(Duration::from_secs(10));
    let (client, mut conn) = cfg.connect(tokio_postgres::NoTls).await.expect("connect");
    let (tx, heard) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let heard = match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    Heard::Note(n.channel().to_string(), n.payload().to_string())
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
    Listener { client, heard }
}

impl Listener {
    /// Reads until "end" arrived on each of `channels` (within `limit`): per channel, the
    /// payloads heard, in order; and the notices heard.
    pub async fn until_end(
        &mut self,
        channels: &[&str],
        limit: Duration,
    ) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut notices = Vec::new();
        let ended = |got: &BTreeMap<String, Vec<String>>| {
            channels.iter().all(|c| {
                got.get(*c)
                    .is_some_and(|v| v.last().map(String::as_str) == Some("end"))
            })
        };
        while !ended(&got) {
            match tokio::time::timeout_at(deadline, self.heard.recv()).await {
                Ok(Some(Heard::Note(c, p))) => got.entry(c).or_default().push(p),
                Ok(Some(Heard::Notice(n))) => notices.push(n),
                Ok(Some(Heard::Ended(e))) => panic!("a listener's connection ended: {e:?}"),
                Ok(None) | Err(_) => panic!(
                    "a listener did not hear \"end\" on {channels:?} in time; heard {} / {}",
                    got.values().map(Vec::len).sum::<usize>(),
                    summary(&got)
                ),
            }
        }
        (got, notices)
    }
}

pub fn summary(got: &BTreeMap<String, Vec<String>>) -> String {
    got.iter()
        .map(|(c, v)| format!("{c}: {} (last {:?})", v.len(), v.last()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Listener {
    /// Notifications heard until `payload` arrives on `channel` (all channels, in order).
    pub async fn until_end_one(&mut self, channel: &str, payload: &str) -> (Vec<String>, Vec<String>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let (mut got, mut notices) = (Vec::new(), Vec::new());
        loop {
            match tokio::time::timeout_at(deadline, self.heard.recv()).await {
                Ok(Some(Heard::Note(c, p))) => {
                    let done = c == channel && p == payload;
                    got.push(p);
                    if done {
                        return (got, notices);
                    }
                }
                Ok(Some(Heard::Notice(n))) => notices.push(n),
                other => panic!("waiting for {payload:?} on {channel}: {other:?} (heard {got:?})"),
            }
        }
    }
}

/// asyncpg's listener (add_listener) on the channel named by its second argument: prints
/// "ready" once listening, then, after "end", the payloads it heard as one JSON list;
/// disconnects when its stdin closes.
pub const ASYNCPG_LISTENER: &str = r#"
import asyncio, json, sys
import asyncpg

async def main():
    conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="sluice_trust",
                                 database="app", timeout=10)
    got, done = [], asyncio.Event()
    def on(_conn, _pid, _channel, payload):
        got.append(payload)
        if payload == "end":
            done.set()
    await conn.add_listener(sys.argv[2], on)
    print("ready", flush=True)
    await asyncio.wait_for(done.wait(), 120)
    print(json.dumps(got), flush=True)
    # Connected until the test closes stdin (it reads SHOW CLIENTS first).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await conn.close()

asyncio.run(main())
"#;

/// The compat suite's virtualenv (tests/compat/setup-venv.sh makes or reuses it).
pub async fn venv_python() -> std::path::PathBuf {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target".into());
    let venv = root.join(target).join("compat-venv");
    let out = tokio::process::Command::new("bash")
        .arg(root.join("tests/compat/setup-venv.sh"))
        .env("SLUICE_COMPAT_VENV", &venv)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run tests/compat/setup-venv.sh");
    assert!(
        out.status.success(),
        "setup-venv.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    venv.join("bin/python")
}

/// Starts the asyncpg listener on `channel` and waits until it listens.
pub async fn asyncpg_listener(
    port: u16,
    channel: &str,
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(venv_python().await)
        .args(["-c", ASYNCPG_LISTENER, &port.to_string(), channel])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the asyncpg listener");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("asyncpg listens in time");
    assert_eq!(ready.ok().flatten().as_deref(), Some("ready"));
    (child, lines)
}

/// Every number from 1 to the last, once, in order, then "end".
pub fn assert_whole_sequence(who: &str, channel: &str, payloads: &[String]) {
    let (end, numbers) = payloads.split_last().expect("payloads");
    assert_eq!(end, "end");
    let numbers: Vec<u64> = numbers
        .iter()
        .map(|p| p.parse().unwrap_or_else(|_| panic!("{who}: payload {p:?}")))
        .collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    if numbers != expected {
        let first_bad = numbers
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(numbers.len().min(expected.len()));
        panic!(
            "{who} on {channel}: {} notifications, not 1..=N exactly once in order; first difference at index {first_bad}: {:?}",
            numbers.len(),
            &numbers[first_bad.saturating_sub(3)..(first_bad + 3).min(numbers.len())]
        );
    }
}

/// NOTIFYs 1, 2, 3, ... on each of `channels` (a transaction each, one channel after the
/// other) straight on PostgreSQL, about every millisecond, until `stop`; then "end" on each.
/// Returns the last number sent. The test binary's tests share one PostgreSQL and run at
/// once: each test's producer and listeners use channels of their own, or a listener hears
/// another test's numbers and "end".
pub async fn produce(channels: &'static [&'static str], stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> u64 {
    let c = super::connect(pg().addr(), USER, "", "app")
        .await
        .expect("producer connects to PostgreSQL");
    let notify = c.prepare("SELECT pg_notify($1, $2)").await.expect("prepare");
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        n += 1;
        for ch in channels {
            c.execute(&notify, &[ch, &n.to_string()])
                .await
                .expect("pg_notify");
        }
        sent.store(n, Ordering::Release);
    }
    for ch in channels {
        c.execute(&notify, &[ch, &"end"]).await.expect("end");
    }
    n
}
