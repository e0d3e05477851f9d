//! Rolling restart with `so_reuseport`: while `pgbench -C` opens a connection per transaction, a
//! second sluice binds the same port and the first drains (SIGTERM) and exits; no connection and
//! no transaction fails. Both bind the same port, unix socket and metrics endpoint.

mod common;

use common::config::PoolerToml;
use common::{console_rows, pg};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Both processes use this file: the same port, unix socket and metrics endpoint.
fn config(port: u16, metrics_port: u16, socket_dir: &Path) -> String {
    PoolerToml::trust()
        .listen_port(port)
        .set("so_reuseport = true")
        .set(&format!(
            "unix_socket_dir = {:?}",
            socket_dir.display().to_string()
        ))
        .admin()
        .set("max_client_conn = 200")
        .database("app", Some(4))
        .tail(&format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"))
        .build()
}

/// Starts the binary with its log in `log`.
fn spawn(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(config)
        .arg("--allow-root") // tests run as root in CI
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sluice")
}

/// Waits until the process logged that it listens; panics if it exited or took too long.
fn wait_listening(child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("sluice listening") {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("sluice exited ({status}) before listening:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "sluice did not listen within 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exits_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A number from pgbench's report line that starts with `prefix`.
fn reported(stdout: &str, prefix: &str) -> Option<u64> {
    let line = stdout.lines().find(|l| l.starts_with(prefix))?;
    line[prefix.len()..].split_whitespace().next()?.parse().ok()
}

/// Kills a child still running when the test fails half-way.
struct Reap(Vec<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_connection_per_transaction_survives_a_rolling_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let path = dir.path().join("pooler.toml");
    std::fs::write(&path, config(port, common::free_port(), dir.path())).unwrap();
    let script = dir.path().join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let (old_log, new_log) = (dir.path().join("old.log"), dir.path().join("new.log"));

    let mut old = spawn(&path, &old_log);
    wait_listening(&mut old, &old_log);
    let pgbench = Command::new(pg().bindir().join("pgbench"))
        .args(["-n", "-C", "-c", "4", "-j", "2", "-T", "8", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", "sluice_trust", "-f"])
        .arg(&script)
        .arg("app")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgbench");
    let mut reap = Reap(vec![old]);

    std::thread::sleep(Duration::from_secs(2));
    let mut new = spawn(&path, &new_log);
    wait_listening(&mut new, &new_log);
    // Both listen on the port now; the old one drains.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the pid of a child we own.
    unsafe { libc::kill(reap.0[0].id() as i32, libc::SIGTERM) };
    assert!(
        exits_within(&mut reap.0[0], Duration::from_secs(5)),
        "the old sluice exits once its clients are gone:\n{}",
        std::fs::read_to_string(&old_log).unwrap_or_default()
    );
    reap.0.push(new);

    let out = pgbench.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("pgbench stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        out.status.success(),
        "pgbench exits 0 (no client aborted)\n{report}"
    );
    assert!(!stderr.contains("error"), "no connection errors\n{report}");
    let done = reported(&stdout, "number of transactions actually processed: ").unwrap_or(0);
    assert!(done > 100, "pgbench ran transactions\n{report}");
    assert_eq!(
        reported(&stdout, "number of failed transactions: "),
        Some(0),
        "no failed transactions\n{report}"
    );
    // The unix socket file is the new sluice's: the old one did not remove it when it exited.
    let mut unix = tokio_postgres::Config::new();
    unix.host_path(dir.path())
        .port(port)
        .user("sluice_trust")
        .dbname("app");
    let client = common::connect_with(unix)
        .await
        .expect("the new sluice's unix socket is still there");
    client.simple_query("SELECT 1").await.unwrap();
    // The new sluice took over: it served transactions after the old one left.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let totals = console_rows(addr, "admin", "SHOW STATS").await;
    let served: u64 = totals
        .iter()
        .filter(|r| r.get("database").cloned().flatten().as_deref() == Some("app"))
        .filter_map(|r| r.get("total_xact_count").cloned().flatten()?.parse::<u64>().ok())
        .sum();
    assert!(
        served > 0,
        "the new sluice served pgbench after the old one exited"
    );
    eprintln!("rolling restart: {done} transactions, 0 failed; the new sluice served {served}");
}
