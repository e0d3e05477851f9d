//! Integration tests of the configuration module: defaults, located errors, durations, lookups.

#[path = "config/all_problems.rs"]
mod all_problems;
#[path = "config/cli.rs"]
mod cli;
#[path = "config/errors.rs"]
mod errors;
#[path = "config/userlist.rs"]
mod userlist;

use sluice::config::{AuthType, Config, ConfigError, PoolMode, parse_duration};
use std::path::Path;
use std::time::Duration;

/// Loads config text labelled `pooler.toml`, with no base directory.
pub(crate) fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "pooler.toml", None)
}

/// Asserts that `text` fails at exactly `line`:`column` on `key`, with `needle` in the message.
#[track_caller]
pub(crate) fn assert_error(text: &str, line: usize, column: usize, key: &str, needle: &str) {
    let err = match load(text) {
        Ok(_) => panic!("config unexpectedly valid:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(
        (err.file.as_str(), err.line, err.column, err.key.as_str()),
        ("pooler.toml", line, column, key),
        "wrong location for error: {err}"
    );
    assert!(
        err.message.contains(needle),
        "message {:?} lacks {needle:?}",
        err.message
    );
}

#[test]
fn empty_config_has_defaults() {
    let c = load("").unwrap();
    let p = &c.pooler;
    assert_eq!(p.listen_addr, "127.0.0.1");
    assert_eq!(p.listen_port, 6432);
    assert_eq!(p.unix_socket_dir.as_deref(), Some(std::path::Path::new("/tmp")));
    assert!(!p.so_reuseport);
    assert_eq!(p.unix_socket_mode, 0o777);
    assert_eq!(p.autodb_idle_timeout, Duration::from_secs(3600));
    assert_eq!(p.pool_mode, PoolMode::Transaction);
    assert_eq!(p.default_pool_size, 20);
    assert_eq!(p.max_client_conn, 100);
    assert_eq!(p.auth_type, AuthType::ScramSha256);
    assert_eq!(p.auth_file, None);
    assert!(p.admin_users.is_empty() && p.stats_users.is_empty());
    assert_eq!(p.server_connect_timeout, Duration::from_secs(15));
    assert_eq!(p.client_login_timeout, Duration::from_secs(60));
    assert_eq!(p.query_wait_timeout, Duration::from_secs(120));
    assert_eq!(p.server_reset_query, "DISCARD ALL");
    assert_eq!(p.max_packet_size, 2_147_483_647);
    assert_eq!(p.workers, 0);
    assert!(c.databases.is_empty() && c.users.is_empty() && c.auth_file_users.is_empty());
    assert_eq!(c.origin, "pooler.toml");
}

#[test]
fn minimal_database_gets_defaults() {
    let c = load("[databases.app]\n").unwrap();
    let db = c.database("app").unwrap();
    assert_eq!((db.host.as_str(), db.port.first()), ("127.0.0.1", 5432));
    assert_eq!((&db.dbname, &db.user, &db.password), (&None, &None, &None));
    assert_eq!((db.pool_size, db.pool_mode), (None, None));
    assert_eq!(c.pool_size_for(db), 20);
    assert_eq!(c.pool_mode_for(db, "anyone"), PoolMode::Transaction);
}

#[test]
fn full_config_parses() {
    let text = r#"
[pooler]
listen_addr = "*"
listen_port = 7000
pool_mode = "session"
auth_type = "md5"
admin_users = ["admin"]
server_connect_timeout = "250ms"
client_login_timeout = 2.5
query_wait_timeout = 30
[databases.app]
host = "/var/run/postgresql"
dbname = "real"
user = "svc"
password = "pw"
pool_size = 3
[users.bob]
pool_mode = "transaction"
"#;
    let c = load(text).unwrap();
    assert_eq!(c.pooler.listen_port, 7000);
    assert_eq!(c.listen_ip().to_string(), "0.0.0.0");
    assert_eq!(c.pooler.auth_type, AuthType::Md5);
    assert_eq!(c.pooler.server_connect_timeout, Duration::from_millis(250));
    assert_eq!(c.pooler.client_login_timeout, Duration::from_millis(2500));
    assert_eq!(c.pooler.query_wait_timeout, Duration::from_secs(30));
    let db = c.database("app").unwrap();
    assert_eq!(db.dbname.as_deref(), Some("real"));
    assert_eq!(c.pool_size_for(db), 3);
    assert!(c.validate().is_ok());
}

#[test]
fn pool_mode_precedence_user_then_database_then_global() {
    let text = r#"
[pooler]
pool_mode = "session"
[databases.a]
pool_mode = "transaction"
[databases.b]
[users.u]
pool_mode = "session"
[users.v]
"#;
    let c = load(text).unwrap();
    let (a, b) = (c.database("a").unwrap(), c.database("b").unwrap());
    assert_eq!(c.pool_mode_for(a, "u"), PoolMode::Session);
    assert_eq!(c.pool_mode_for(a, "v"), PoolMode::Transaction);
    assert_eq!(c.pool_mode_for(a, "nobody"), PoolMode::Transaction);
    assert_eq!(c.pool_mode_for(b, "v"), PoolMode::Session);
}

#[test]
fn pin_session_state_precedence_user_then_database_then_global_and_bad_values_are_located() {
    use sluice::config::PinSessionState;
    let text = r#"
[pooler]
pin_session_state = "off"
[databases.a]
pin_session_state = "error"
[databases.b]
[users.u]
pin_session_state = "pin"
[users.v]
"#;
    let c = load(text).unwrap();
    let (a, b) = (c.database("a").unwrap(), c.database("b").unwrap());
    assert_eq!(c.effective(a, "u").pin_session_state, PinSessionState::Pin);
    assert_eq!(c.effective(a, "v").pin_session_state, PinSessionState::Error);
    assert_eq!(c.effective(b, "v").pin_session_state, PinSessionState::Off);
    assert_eq!(
        load("[pooler]\n").unwrap().pooler.pin_session_state,
        PinSessionState::Pin,
        "the default pins"
    );
    assert_error(
        "[pooler]\n[databases.a]\npin_session_state = \"sometimes\"\n",
        3,
        1,
        "databases.a.pin_session_state",
        "sometimes",
    );
}

#[test]
fn effective_settings_take_the_database_or_user_value_then_the_global_one() {
    let text = r#"
[pooler]
pool_mode = "session"
default_pool_size = 7
min_pool_size = 1
reserve_pool_size = 2
max_db_connections = 30
max_user_connections = 40
max_db_client_connections = 50
max_user_client_connections = 60
[databases.own]
pool_size = 3
pool_mode = "transaction"
min_pool_size = 2
reserve_pool_size = 4
max_db_connections = 5
max_db_client_connections = 6
[databases.plain]
[users.u]
pool_mode = "session"
max_user_connections = 8
max_user_client_connections = 9
"#;
    let c = load(text).unwrap();
    let (own, plain) = (c.database("own").unwrap(), c.database("plain").unwrap());
    let e = c.effective(own, "u");
    assert_eq!(
        (
            e.database.pool_size,
            e.database.min_pool_size,
            e.database.reserve_pool_size
        ),
        (3, 2, 4)
    );
    assert_eq!(
        (
            e.database.max_db_connections,
            e.database.max_db_client_connections
        ),
        (5, 6)
    );
    assert_eq!(
        (e.user.max_user_connections, e.user.max_user_client_connections),
        (8, 9)
    );
    assert_eq!(e.pool_mode, PoolMode::Session, "the user's mode comes first");
    assert_eq!(c.effective(own, "nobody").pool_mode, PoolMode::Transaction);
    let e = c.effective(plain, "nobody");
    assert_eq!(
        (
            e.database.pool_size,
            e.database.min_pool_size,
            e.database.reserve_pool_size
        ),
        (7, 1, 2)
    );
    assert_eq!(
        (
            e.database.max_db_connections,
            e.database.max_db_client_connections
        ),
        (30, 50)
    );
    assert_eq!(
        (e.user.max_user_connections, e.user.max_user_client_connections),
        (40, 60)
    );
    assert_eq!(e.pool_mode, PoolMode::Session);
    assert_eq!((e.database.own_pool_mode, e.user.own_pool_mode), (None, None));
}

#[test]
fn star_database_is_the_fallback() {
    let text = "[databases.app]\nport = 5433\n[databases.\"*\"]\nport = 5434\n";
    let c = load(text).unwrap();
    assert_eq!(c.database("app").unwrap().port, 5433);
    assert_eq!(c.database("other").unwrap().port, 5434);
    let without = load("[databases.app]\n").unwrap();
    assert!(without.database("other").is_none());
}

#[test]
fn durations_in_all_forms() {
    let ok = [
        ("10s", Duration::from_secs(10)),
        ("250ms", Duration::from_millis(250)),
        ("2m", Duration::from_secs(120)),
        ("2min", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("1.5", Duration::from_millis(1500)),
        (" 7 ", Duration::from_secs(7)),
        ("0", Duration::ZERO),
    ];
    for (text, want) in ok {
        assert_eq!(parse_duration(text), Ok(want), "{text:?}");
    }
    for bad in [
        "", "s", "abc", "-1s", "-5", "10x", "1.2.3s", "nan", "inf", "1e400",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
    assert!(parse_duration("-1s").unwrap_err().contains("negative"));
    assert!(parse_duration("10parsecs").unwrap_err().contains("unknown unit"));
}

#[test]
fn valid_listen_addrs() {
    for addr in ["*", "localhost", "0.0.0.0", "::1", "10.1.2.3"] {
        let c = load(&format!("[pooler]\nlisten_addr = \"{addr}\"\n"));
        assert!(c.is_ok(), "{addr}: {c:?}");
    }
    let c = load("[pooler]\nlisten_addr = \"localhost\"\n").unwrap();
    assert_eq!(c.listen_ip().to_string(), "127.0.0.1");
}

#[test]
fn validate_on_a_config_built_in_code() {
    let mut c = load("").unwrap();
    c.pooler.default_pool_size = 0;
    let err = c.validate().unwrap_err();
    assert_eq!(
        (err.line, err.column, err.key.as_str()),
        (0, 0, "pooler.default_pool_size")
    );
    assert_eq!(
        err.to_string(),
        "pooler.toml: pooler.default_pool_size: must be at least 1"
    );
}

#[test]
fn unreadable_config_file() {
    let err = Config::load(Path::new("/nonexistent/sluice.toml")).unwrap_err();
    assert_eq!(err.file, "/nonexistent/sluice.toml");
    assert!(err.message.contains("cannot read"), "{err}");
}

#[test]
fn example_config_is_valid_and_documents_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = Config::load(&root.join("pooler.toml.example")).unwrap();
    assert_eq!(
        c.pooler,
        sluice::config::PoolerConfig {
            auth_file: Some("userlist.txt.example".into()),
            ..Default::default()
        }
    );
    let app = c.database("app").unwrap();
    assert_eq!((app.host.as_str(), app.port.first()), ("127.0.0.1", 5432));
    assert_eq!(c.database("anything").unwrap().port, 5432);
    assert_eq!(c.user_secret("postgres"), Some("postgres"));
    assert_eq!(c.user_secret("app"), Some("md53f901e5d2129ef5c8fc0d90619eb3f03"));
    let text = std::fs::read_to_string(root.join("pooler.toml.example")).unwrap();
    let src = ["mod.rs", "pooler.rs"]
        .map(|f| std::fs::read_to_string(root.join("src/config").join(f)).unwrap())
        .concat();
    for table in ["PoolerConfig", "UserConfig", "DatabaseConfig", "MetricsConfig"] {
        let body = src.split(&format!("pub struct {table} {{")).nth(1).unwrap();
        let body = &body[..body.find("\n}").unwrap()];
        let fields: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub ")?.split(':').next())
            .collect();
        assert!(!fields.is_empty(), "{table}: no fields found");
        for field in fields {
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{field} ="))
            });
            assert!(
                documented,
                "pooler.toml.example does not show {table} key {field}"
            );
        }
    }
}
