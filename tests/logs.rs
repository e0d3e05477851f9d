//! What an operator reads: log lines as text (no colour codes off a terminal) or JSON, the
//! connection, disconnection and pooler-error lines and their switches, the periodic stats
//! line, no Rust debug formatting, and login-timeout messages that name the true cause.

mod common;

use common::binary::SluiceBinary;
use common::config::PoolerToml;
use common::raw::RawClient;
use common::{connect, console_rows, pg, start_sluice, wait_until};
use std::time::Duration;

/// A trust config with database `app`; `extra` goes into `[pooler]`.
fn config(port: u16, extra: &str) -> String {
    PoolerToml::trust()
        .listen_port(port)
        .admin()
        .set(extra)
        .database("app", Some(2))
        .build()
}

/// Logs in, runs a query, leaves, and waits until sluice has let the client go (its
/// disconnection is logged before it leaves SHOW CLIENTS).
async fn one_client_visit(sluice: &SluiceBinary) {
    let c = connect(sluice.addr(), "sluice_trust", "", "app").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    wait_until(
        Duration::from_secs(5),
        "the client is gone from SHOW CLIENTS",
        || async {
            console_rows(sluice.addr(), "admin", "SHOW CLIENTS")
                .await
                .iter()
                .all(|r| r.get("database").cloned().flatten().as_deref() != Some("app"))
        },
    )
    .await;
}

/// A login refused by sluice itself (unknown database): a pooler error.
async fn refused_login(sluice: &SluiceBinary) -> String {
    let Err(e) = connect(sluice.addr(), "sluice_trust", "", "no_such_db").await else {
        panic!("an unknown database is refused");
    };
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

/// Rust Debug output that must never reach an operator.
fn assert_no_debug_formatting(text: &str) {
    for pattern in ["Some(", "None", "PoolKey", "PgError {", "Login(", " { ", "\\\""] {
        assert!(
            !text.contains(pattern),
            "debug formatting {pattern:?} in the log:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_parse_and_carry_logins_and_disconnections() {
    let sluice = SluiceBinary::spawn(|port, _| config(port, "log_format = \"json\""), |_| {});
    sluice.wait_up("app").await;
    one_client_visit(&sluice).await;
    refused_login(&sluice).await;
    let text = sluice.stderr_text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let login = lines
        .iter()
        .find(|v| field(v, "message").as_deref() == Some("login") && field(v, "db").as_deref() == Some("app"))
        .unwrap_or_else(|| panic!("a login line:\n{text}"));
    assert_eq!(field(login, "level").as_deref(), Some("INFO"));
    assert_eq!(field(login, "db").as_deref(), Some("app"));
    assert_eq!(field(login, "user").as_deref(), Some("sluice_trust"));
    assert_eq!(field(login, "tls").as_deref(), Some("no"));
    assert!(
        field(login, "peer").is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{login}"
    );
    assert!(field(login, "timestamp").is_some(), "{login}");
    let closing = lines
        .iter()
        .find(|v| field(v, "db").as_deref() == Some("app") && field(v, "reason").is_some())
        .unwrap_or_else(|| panic!("a disconnection line:\n{text}"));
    assert_eq!(field(closing, "reason").as_deref(), Some("client close request"));
    assert!(
        closing.get("age_s").and_then(|a| a.as_f64()).is_some(),
        "{closing}"
    );
    assert!(
        lines.iter().any(
            |v| field(v, "message").is_some_and(|m| m.contains("login refused"))
                && field(v, "message").is_some_and(|m| m.contains("no_such_db"))
        ),
        "the refused login is a pooler error line:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_have_no_colour_codes_off_a_terminal_and_no_debug_formatting() {
    let sluice = SluiceBinary::spawn(
        |port, _| config(port, ""),
        |cmd| {
            cmd.env_remove("NO_COLOR");
        },
    );
    sluice.wait_up("app").await;
    one_client_visit(&sluice).await;
    let told = refused_login(&sluice).await;
    assert_no_debug_formatting(&told);
    let text = sluice.stderr_text();
    assert!(
        !text.contains('\x1b'),
        "no ESC bytes when stderr is a file:\n{text:?}"
    );
    assert!(
        text.contains("INFO login db=app user=sluice_trust tls=no peer=127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains("INFO closing reason=client close request age_s="),
        "{text}"
    );
    assert!(text.contains("login refused"), "{text}");
    assert_no_debug_formatting(&text);
}

#[tokio::test(flavor = "multi_thread")]
async fn log_connections_disconnections_and_pooler_errors_can_be_turned_off() {
    let sluice = SluiceBinary::spawn(
        |port, _| {
            config(
                port,
                "log_connections = false\nlog_disconnections = false\nlog_pooler_errors = false",
            )
        },
        |_| {},
    );
    sluice.wait_up("app").await;
    one_client_visit(&sluice).await;
    refused_login(&sluice).await;
    let text = sluice.stderr_text();
    assert!(text.contains("sluice listening"), "the log works: {text}");
    for silenced in ["INFO login", "INFO closing", "login refused", "pooler error"] {
        assert!(!text.contains(silenced), "{silenced:?} is off:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stats_line_appears_every_stats_period() {
    let sluice = SluiceBinary::spawn(|port, _| config(port, "stats_period = \"1s\""), |_| {});
    sluice.wait_up("app").await;
    let c = connect(sluice.addr(), "sluice_trust", "", "app").await.unwrap();
    let stats_lines = || {
        sluice
            .stderr_text()
            .lines()
            .filter(|l| l.contains(" stats: "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // Queries across at least one whole period.
    let busy_until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < busy_until {
        c.simple_query("SELECT 1").await.unwrap();
    }
    wait_until(
        Duration::from_secs(5),
        "a stats line with transactions",
        || async { stats_lines().iter().any(|l| !l.contains(" stats: 0 xacts/s")) },
    )
    .await;
    let line = stats_lines()
        .into_iter()
        .find(|l| !l.contains(" stats: 0 xacts/s"))
        .unwrap();
    let shape = [
        " xacts/s, ",
        " queries/s, ",
        " client parses/s, ",
        " server parses/s, ",
        " binds/s, in ",
        " B/s, out ",
        " B/s, xact ",
        " us, query ",
        " us, wait ",
    ];
    for part in shape {
        assert!(line.contains(part), "PgBouncer's stats line has {part:?}: {line}");
    }
    assert!(stats_lines().len() >= 2, "one per period: {:?}", stats_lines());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_timeout_says_whether_the_client_or_the_server_was_slow() {
    // A "server" that accepts and never answers: the login waits on it, not on the client.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let sluice = start_sluice(&format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nclient_login_timeout = \"500ms\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\n\
         [databases.stuck]\nhost = \"127.0.0.1\"\nport = {silent_port}\n",
        pg().port()
    ))
    .await;

    // PostgreSQL is up; the client sends nothing.
    let mut quiet = RawClient::connect(sluice.tcp_addr()).await;
    let m = quiet.read_until(b'E').await.pop().expect("an ErrorResponse");
    let message = m.field(b'M').unwrap_or_default();
    assert_eq!(message, "client_login_timeout");
    assert!(!message.contains("server down"));
    assert!(
        m.field(b'D').unwrap_or_default().contains("500ms"),
        "{:?}",
        m.field(b'D')
    );

    // The server never answers the login.
    let mut waiting = RawClient::connect(sluice.tcp_addr()).await;
    waiting
        .send_startup(3, 0, &[("user", "sluice_trust"), ("database", "stuck")])
        .await;
    let m = waiting.read_until(b'E').await.pop().expect("an ErrorResponse");
    let message = m.field(b'M').unwrap_or_default();
    assert_eq!(message, "client_login_timeout (waiting for a server connection)");
    hold.abort();
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn log_connections_can_be_turned_off_live_with_set() {
    let sluice = SluiceBinary::spawn(|port, _| config(port, ""), |_| {});
    sluice.wait_up("app").await;
    let logins = || sluice.stderr_text().matches("INFO login db=app").count();
    let before = logins();
    assert!(before >= 1, "logins are logged by default");
    console_rows(sluice.addr(), "admin", "SET log_connections = false").await;
    one_client_visit(&sluice).await;
    assert_eq!(
        logins(),
        before,
        "no login line after SET log_connections = false"
    );
}
