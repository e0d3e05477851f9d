//! Running the binary as a service: systemd notifications (READY, RELOADING, STATUS,
//! STOPPING), refusing root, the pidfile, the logfile reopened for logrotate, and the
//! open-files limit (raised, checked, and accept failures that back off quietly).

mod common;

use common::binary::SluiceBinary;
use common::config::PoolerToml;
use common::{connect, console_rows, wait_until};
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;

/// A trust config with database `app`; `extra` goes into `[pooler]`.
fn config(port: u16, extra: &str) -> String {
    PoolerToml::trust()
        .listen_port(port)
        .admin()
        .set(extra)
        .database("app", Some(2))
        .build()
}

/// Receives notification datagrams until one satisfies `want`; every message seen, in order.
async fn notified(sock: &UnixDatagram, seen: &mut Vec<String>, what: &str, want: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(msg.clone());
                if want(&msg) {
                    return;
                }
            }
            _ => panic!("no notification {what} within 10s; got {seen:?}"),
        }
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread")]
async fn sd_notify_reports_ready_reloading_status_and_stopping() {
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut sluice = SluiceBinary::spawn(
        |port, _| config(port, "stats_period = \"1s\""),
        |cmd| {
            cmd.env("NOTIFY_SOCKET", &sock_path);
        },
    );
    let mut seen = Vec::new();
    notified(&sock, &mut seen, "READY=1", |m| has_line(m, "READY=1")).await;
    // READY means listening: a client gets in at once.
    let c = connect(sluice.addr(), "sluice_trust", "", "app")
        .await
        .expect("sluice accepts clients once it said READY=1");
    c.simple_query("SELECT 1").await.unwrap();

    sluice.signal(libc::SIGHUP);
    notified(&sock, &mut seen, "RELOADING=1 after SIGHUP", |m| {
        has_line(m, "RELOADING=1")
    })
    .await;
    assert!(
        seen.last()
            .unwrap()
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 carries MONOTONIC_USEC: {seen:?}"
    );
    notified(&sock, &mut seen, "READY=1 after the reload", |m| {
        has_line(m, "READY=1")
    })
    .await;

    console_rows(sluice.addr(), "admin", "RELOAD").await;
    notified(&sock, &mut seen, "RELOADING=1 after console RELOAD", |m| {
        has_line(m, "RELOADING=1")
    })
    .await;
    notified(&sock, &mut seen, "READY=1 after console RELOAD", |m| {
        has_line(m, "READY=1")
    })
    .await;

    notified(&sock, &mut seen, "a STATUS= with the stats", |m| {
        m.lines().any(|l| {
            l.starts_with("STATUS=")
                && l.contains("clients")
                && l.contains("servers")
                && l.contains("xacts/s")
        })
    })
    .await;
    let status = seen.last().unwrap().clone();
    assert!(
        status.contains("clients: 1,"),
        "the connected client is counted: {status}"
    );
    drop(c);

    sluice.signal(libc::SIGINT);
    notified(&sock, &mut seen, "STOPPING=1 after SIGINT", |m| {
        has_line(m, "STOPPING=1")
    })
    .await;
    let status = sluice.exit_within(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exits cleanly after SIGINT: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn root_is_refused_without_allow_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: root_is_refused_without_allow_root needs to run as root (it checks the refusal)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pooler.toml");
    let port = common::binary::free_port();
    std::fs::write(&path, config(port, "")).unwrap();
    let err_path = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&path)
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "refused with exit status 1 (None: still running as root); stderr: {stderr}"
    );
    assert!(
        stderr.contains("running as root is not permitted") && stderr.contains("--allow-root"),
        "says why and how: {stderr}"
    );
    // `sluice check` only reads the file: it works as root.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "check works as root");
}

#[tokio::test(flavor = "multi_thread")]
async fn pidfile_is_written_guards_against_a_second_instance_and_is_removed_at_exit() {
    let mut first = SluiceBinary::spawn(|port, _| config(port, "pidfile = \"sluice.pid\""), |_| {});
    first.wait_up("app").await;
    let pidfile = first.dir.path().join("sluice.pid");
    let text = std::fs::read_to_string(&pidfile).expect("pidfile written, relative to the config");
    assert_eq!(text.trim(), first.child.id().to_string());

    // A second sluice with the same pidfile (another port) refuses to start.
    let second_config = first.dir.path().join("second.toml");
    let second_port = common::binary::free_port();
    std::fs::write(&second_config, config(second_port, "pidfile = \"sluice.pid\"")).unwrap();
    let second_err = first.dir.path().join("second.log");
    let status = SluiceBinary::command(&second_config, &second_err)
        .status()
        .unwrap();
    let err = std::fs::read_to_string(&second_err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("is running") && err.contains(&first.child.id().to_string()),
        "names the live process: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        first.child.id().to_string(),
        "the refused instance leaves the pidfile alone"
    );

    first.signal(libc::SIGINT);
    assert!(first.exit_within(Duration::from_secs(10)).await.is_some());
    assert!(!pidfile.exists(), "removed at exit");

    // A stale pidfile (its process is gone) does not stop a new start.
    std::fs::write(&pidfile, format!("{}\n", first.child.id())).unwrap();
    let mut third = SluiceBinary::command(&second_config, &second_err)
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], second_port));
    wait_until(
        Duration::from_secs(10),
        "sluice starts over a stale pidfile",
        || async { connect(addr, "sluice_trust", "", "app").await.is_ok() },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        third.id().to_string()
    );
    let _ = third.kill();
    let _ = third.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn logfile_is_appended_and_reopened_on_sighup_for_logrotate() {
    let sluice = SluiceBinary::spawn(
        |port, dir| {
            std::fs::write(dir.join("sluice.log"), "a line from before\n").unwrap();
            config(port, "logfile = \"sluice.log\"")
        },
        |_| {},
    );
    let log = sluice.dir.path().join("sluice.log");
    sluice.wait_up("app").await;
    wait_until(
        Duration::from_secs(5),
        "the logfile has the login line",
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("login db=app")
        },
    )
    .await;
    let before = std::fs::read_to_string(&log).unwrap();
    assert!(
        before.starts_with("a line from before\n"),
        "appended to: {before}"
    );
    assert!(before.contains("sluice listening"), "{before}");
    assert!(!before.contains('\x1b'), "no colour codes in the logfile");

    // logrotate: rename, then SIGHUP; the new lines go to a fresh file at the old path.
    let rotated = sluice.dir.path().join("sluice.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    sluice.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(5), "SIGHUP reopens the logfile", || async {
        log.exists()
    })
    .await;
    let c = connect(sluice.addr(), "sluice_trust", "", "app").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    wait_until(
        Duration::from_secs(5),
        "new lines go to the reopened file",
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("login db=app")
        },
    )
    .await;
    let rotated_text = std::fs::read_to_string(&rotated).unwrap();
    let fresh = std::fs::read_to_string(&log).unwrap();
    assert!(fresh.contains("configuration reloaded"), "{fresh}");
    assert!(
        !rotated_text.contains("configuration reloaded"),
        "the old file got no new lines"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_low_fd_limit_is_warned_about_and_running_out_backs_off_quietly_then_recovers() {
    use std::os::unix::process::CommandExt;
    const LIMIT: u64 = 64;
    let sluice = SluiceBinary::spawn(
        |port, _| config(port, "max_client_conn = 500\nworkers = 1"),
        |cmd| {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the forked child.
            unsafe {
                cmd.pre_exec(|| {
                    let lim = libc::rlimit {
                        rlim_cur: LIMIT / 2,
                        rlim_max: LIMIT,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    sluice.wait_up("app").await;
    let text = sluice.stderr_text();
    assert!(
        text.contains(&format!("open files limit raised from {} to {LIMIT}", LIMIT / 2)),
        "the soft limit is raised to the hard one:\n{text}"
    );
    assert!(
        text.contains(&format!("open files limit {LIMIT} is below")) && text.contains("max_client_conn 500"),
        "warns that {LIMIT} descriptors cannot serve max_client_conn = 500:\n{text}"
    );

    // Hold connections (each costs sluice a descriptor while it waits for a startup packet)
    // until accepting fails, and keep it failing for a while.
    let mut held = Vec::new();
    for _ in 0..LIMIT + 20 {
        held.push(tokio::net::TcpStream::connect(sluice.addr()).await.unwrap());
    }
    wait_until(
        Duration::from_secs(5),
        "accept runs out of descriptors",
        || async { sluice.stderr_text().contains("Too many open files") },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = sluice.stderr_text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Too many open files"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one line per interval, not one per failed accept:\n{text}"
    );
    assert!(
        lines[0].contains("WARN") && lines[0].contains("LimitNOFILE"),
        "{}",
        lines[0]
    );

    // Once the descriptors are free again, sluice serves.
    drop(held);
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        connect(sluice.addr(), "sluice_trust", "", "app"),
    )
    .await
    .expect("a client gets in once descriptors are free")
    .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
}
