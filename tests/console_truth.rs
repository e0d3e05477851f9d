//! The console tells the truth: SHOW HELP lists only commands that exist, SHOW CONFIG lists
//! every key, SET changes run-time keys and explains why the others cannot change, and pools of
//! auto databases (`"*"`) that nobody uses go away after autodb_idle_timeout.

mod common;

use common::config::PoolerToml;
use common::{connect, console_query, pg, start_sluice, wait_until};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;

fn config(extra: &str) -> String {
    PoolerToml::trust()
        .set("unix_socket_dir = \"\"")
        .admin()
        .set(extra)
        .database("app", None)
        .build()
}

async fn console(addr: SocketAddr) -> tokio_postgres::Client {
    common::admin_console(addr).await
}

/// The text of SHOW HELP's NOTICE (message and detail), read from the connection's messages.
async fn help_text(addr: SocketAddr) -> String {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("admin")
        .dbname("pgbouncer");
    let (client, mut connection) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = message {
                let _ = tx.send(format!("{}\n{}", n.message(), n.detail().unwrap_or("")));
            }
        }
    });
    client.simple_query("SHOW HELP").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("SHOW HELP sends a NOTICE")
        .unwrap()
}

/// The concrete commands a SHOW HELP line stands for: alternatives split, placeholders filled.
fn commands_of(line: &str) -> Vec<String> {
    let line = line.trim().trim_end_matches("(sluice)").trim();
    if line.starts_with("SET ") {
        return vec!["SET default_pool_size = 5".to_string()];
    }
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest
        .replace("[<db>]", "app")
        .replace("<db>", "app")
        .replace("<client_id>", "1");
    if rest.is_empty() {
        return vec![verb.to_string()];
    }
    rest.split('|')
        .map(|alt| format!("{verb} {}", alt.trim()))
        .collect()
}

/// Runs a command and returns the error message, if any.
async fn run(client: &tokio_postgres::Client, command: &str) -> Option<String> {
    match client.simple_query(command).await {
        Ok(_) => None,
        Err(e) => Some(
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string()),
        ),
    }
}

#[tokio::test]
async fn every_command_show_help_lists_exists() {
    let sluice = start_sluice(&config("")).await;
    let addr = sluice.tcp_addr();
    let help = help_text(addr).await;
    let commands: Vec<String> = help
        .lines()
        .filter(|l| l.starts_with('\t'))
        .flat_map(commands_of)
        .collect();
    assert!(commands.len() > 30, "SHOW HELP lists the commands:\n{help}");
    let admin = console(addr).await;
    // A client, so KILL_CLIENT and SHOW CLIENTS have something to work on.
    let _app = connect(addr, "sluice_trust", "", "app").await.unwrap();
    for command in commands.iter().filter(|c| !c.starts_with("SHUTDOWN")) {
        if let Some(error) = run(&admin, command).await {
            assert!(
                !error.starts_with("invalid command") && !error.contains("unknown"),
                "SHOW HELP lists {command:?}, which sluice does not know: {error}"
            );
        }
    }
    sluice.shutdown().await;
    // Each SHUTDOWN form on a pooler of its own (they end it).
    for command in commands.iter().filter(|c| c.starts_with("SHUTDOWN")) {
        let sluice = start_sluice(&config("")).await;
        let admin = console(sluice.tcp_addr()).await;
        if let Some(error) = run(&admin, command).await {
            assert!(!error.starts_with("invalid command"), "{command}: {error}");
        }
        tokio::time::timeout(Duration::from_secs(5), sluice.exited())
            .await
            .unwrap_or_else(|_| panic!("{command} stops the pooler"));
        sluice.finish().await;
    }
}

#[tokio::test]
async fn show_config_lists_every_key_with_its_value() {
    let sluice = start_sluice(&config("auth_user = \"sluice_trust\"\nautodb_idle_timeout = 90")).await;
    let admin = console(sluice.tcp_addr()).await;
    let rows = console_query(&admin, "SHOW CONFIG").await;
    let shown: Vec<String> = rows
        .iter()
        .filter_map(|r| r.get("key").cloned().flatten())
        .collect();
    for key in sluice::config::pooler_keys() {
        assert!(shown.iter().any(|k| k == key), "SHOW CONFIG lacks {key}");
    }
    let row = |key: &str| {
        rows.iter()
            .find(|r| r.get("key").cloned().flatten().as_deref() == Some(key))
            .unwrap_or_else(|| panic!("no row {key}"))
            .clone()
    };
    let value = |key: &str| row(key).get("value").cloned().flatten().unwrap_or_default();
    assert_eq!(value("auth_user"), "sluice_trust");
    assert_eq!(value("auth_file"), "", "an unset key is listed, empty");
    assert_eq!(value("autodb_idle_timeout"), "90");
    assert_eq!(
        row("autodb_idle_timeout")
            .get("default")
            .cloned()
            .flatten()
            .as_deref(),
        Some("3600")
    );
    assert_eq!(value("unix_socket_mode"), "0777");
    assert_eq!(
        row("listen_port").get("changeable").cloned().flatten().as_deref(),
        Some("no")
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn set_changes_a_run_time_key_and_explains_a_start_time_one() {
    let sluice = start_sluice(&config("max_client_conn = 10")).await;
    let addr = sluice.tcp_addr();
    let admin = console(addr).await;
    let first = connect(addr, "sluice_trust", "", "app").await.unwrap();
    let second = connect(addr, "sluice_trust", "", "app").await.unwrap();
    drop(second);
    admin.simple_query("SET max_client_conn = 1").await.unwrap();
    wait_until(
        Duration::from_secs(5),
        "the second client's slot is free",
        || async {
            match connect(addr, "sluice_trust", "", "app").await {
                Err(e) => e
                    .as_db_error()
                    .is_some_and(|d| d.message() == "no more connections allowed (max_client_conn)"),
                Ok(_) => false,
            }
        },
    )
    .await;
    first
        .simple_query("SELECT 1")
        .await
        .expect("the first client is unaffected");

    let e = admin.simple_query("SET listen_port = 7000").await.unwrap_err();
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.message(), "SET failed");
    assert!(
        db.detail()
            .unwrap_or("")
            .contains("listen_port is read once when sluice starts"),
        "{db:?}"
    );
    let hint = db.hint().unwrap_or("");
    assert!(hint.starts_with("SET can change: "), "{db:?}");
    assert!(
        hint.contains("max_client_conn") && hint.contains("autodb_idle_timeout"),
        "{hint}"
    );
    assert!(!hint.contains("listen_port"), "{hint}");
    let e = admin.simple_query("SET no_such_key = 1").await.unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .detail()
            .unwrap_or("")
            .contains("unknown config parameter: no_such_key")
    );
    let e = admin
        .simple_query("SET max_client_conn = lots")
        .await
        .unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .detail()
            .unwrap_or("")
            .contains("invalid integer")
    );
    let rows = console_query(&admin, "SHOW CONFIG").await;
    let port = rows
        .iter()
        .find(|r| r.get("key").cloned().flatten().as_deref() == Some("listen_port"))
        .and_then(|r| r.get("value").cloned().flatten());
    assert_eq!(
        port.as_deref(),
        Some("0"),
        "a refused SET changes nothing (the file said 0)"
    );
    sluice.shutdown().await;
}

/// Pool rows of SHOW POOLS for `database`.
async fn pools_of(admin: &tokio_postgres::Client, database: &str) -> usize {
    console_query(admin, "SHOW POOLS")
        .await
        .iter()
        .filter(|r| r.get("database").cloned().flatten().as_deref() == Some(database))
        .count()
}

#[tokio::test]
async fn an_auto_database_pool_nobody_uses_is_freed_after_autodb_idle_timeout() {
    let text = format!(
        "{}[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        config("autodb_idle_timeout = \"1s\""),
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let addr = sluice.tcp_addr();
    let admin = console(addr).await;
    // A login to a database that does not exist leaves a pool behind.
    let e = connect(addr, "sluice_trust", "", "no_such_db_autodb")
        .await
        .unwrap_err();
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("no_such_db_autodb"), "{e:?}");
    assert_eq!(pools_of(&admin, "no_such_db_autodb").await, 1);
    // A client of another auto database keeps its pool however long it stays.
    let victim = connect(addr, "sluice_trust", "", "postgres").await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the failed login's pool is freed",
        || async { pools_of(&admin, "no_such_db_autodb").await == 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pools_of(&admin, "postgres").await, 1, "a pool in use stays");
    victim
        .simple_query("SELECT 1")
        .await
        .expect("its client keeps working");
    // The listed database's pool is never freed this way.
    let app = connect(addr, "sluice_trust", "", "app").await.unwrap();
    drop(app);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(pools_of(&admin, "app").await, 1);
    sluice.shutdown().await;
}

#[tokio::test]
async fn auto_database_pools_are_bounded_and_unused_ones_make_room() {
    use sluice::pool::{MAX_AUTO_POOLS, PoolKey, PoolRegistry};
    let config =
        sluice::Config::from_toml_str("[databases.app]\n[databases.\"*\"]\n", "test.toml", None).unwrap();
    let registry = PoolRegistry::new(None);
    let listed = |name: &str| name == "app";
    let key = |i: usize| PoolKey {
        database: format!("auto_{i}"),
        user: "u".to_string(),
    };
    let settings =
        |db: &str| sluice::pool::settings_for(&config, db, "u", None, sluice::tls::ServerTls::default());
    // Each pool held, as a logged-in client holds its pool.
    let mut held = Vec::new();
    for i in 0..MAX_AUTO_POOLS {
        let pool = registry
            .get_or_create_auto(key(i), (0, 0), listed, || settings(&key(i).database))
            .expect("under the bound");
        held.push(pool);
    }
    let refused = registry.get_or_create_auto(key(MAX_AUTO_POOLS), (0, 0), listed, || settings("auto_over"));
    assert_eq!(refused.err(), Some(MAX_AUTO_POOLS), "all in use: refused");
    // A listed database is not counted.
    let app = PoolKey {
        database: "app".to_string(),
        user: "u".to_string(),
    };
    assert!(
        registry
            .get_or_create_auto(app, (0, 0), listed, || settings("app"))
            .is_ok()
    );
    // One pool unused: it makes room for the new one.
    held.truncate(MAX_AUTO_POOLS - 1);
    let fresh = registry.get_or_create_auto(key(MAX_AUTO_POOLS), (0, 0), listed, || settings("auto_over"));
    assert!(fresh.is_ok(), "an unused pool was freed for it");
    let names: Vec<String> = registry.all().iter().map(|p| p.key.database.clone()).collect();
    assert!(
        !names.contains(&key(MAX_AUTO_POOLS - 1).database),
        "the unused pool is gone"
    );
    assert_eq!(names.len(), MAX_AUTO_POOLS + 1, "1000 auto pools and app");
}

#[tokio::test]
async fn set_accepts_every_changeable_key_with_the_value_show_config_prints() {
    let sluice = start_sluice(&config("stats_users = [\"ops\", \"viewer\"]")).await;
    let admin = console(sluice.tcp_addr()).await;
    let rows = console_query(&admin, "SHOW CONFIG").await;
    let field = |r: &common::ConsoleRow, name: &str| r.get(name).cloned().flatten().unwrap_or_default();
    let changeable: Vec<(String, String)> = rows
        .iter()
        .filter(|r| field(r, "changeable") == "yes")
        .map(|r| (field(r, "key"), field(r, "value")))
        .collect();
    assert!(changeable.len() > 30, "{changeable:?}");
    for (key, value) in &changeable {
        let command = format!("SET {key} = '{value}'");
        if let Some(error) = run(&admin, &command).await {
            panic!("{command}: {error}");
        }
    }
    let after = console_query(&admin, "SHOW CONFIG").await;
    assert_eq!(rows, after, "setting each value to itself changes nothing");
    sluice.shutdown().await;
}
