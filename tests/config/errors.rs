//! Every class of config error, each asserted at its exact line, column and dotted key.

use super::{assert_error, load};
use std::time::Duration;

#[test]
fn duration_values_in_toml() {
    let c = load("[pooler]\nquery_wait_timeout = \"2m\"\nclient_login_timeout = 1.25\n").unwrap();
    assert_eq!(c.pooler.query_wait_timeout, Duration::from_secs(120));
    assert_eq!(c.pooler.client_login_timeout, Duration::from_millis(1250));
    assert_error(
        "[pooler]\n\nquery_wait_timeout = -5\n",
        3,
        1,
        "pooler.query_wait_timeout",
        "negative",
    );
    assert_error(
        "[pooler]\nquery_wait_timeout = -0.5\n",
        2,
        1,
        "pooler.query_wait_timeout",
        "negative",
    );
    assert_error(
        "[pooler]\n  query_wait_timeout = \"soon\"\n",
        2,
        3,
        "pooler.query_wait_timeout",
        "\"soon\"",
    );
    assert_error(
        "[pooler]\nquery_wait_timeout = true\n",
        2,
        1,
        "pooler.query_wait_timeout",
        "duration",
    );
}

#[test]
fn unknown_keys_are_errors_everywhere() {
    let pooler = "# comment\n[pooler]\nlisten_port = 6432\n\npool_mod = \"session\"\n";
    assert_error(pooler, 5, 1, "pooler.pool_mod", "unknown key \"pool_mod\"");
    let err = load(pooler).unwrap_err();
    assert!(err.message.contains("did you mean \"pool_mode\""), "{err}");
    assert!(
        !err.message.contains("listen_addr"),
        "only the nearest key is suggested: {err}"
    );
    assert_eq!(
        err.to_string().split(": ").take(2).collect::<Vec<_>>(),
        ["pooler.toml:5:1", "pooler.pool_mod"]
    );

    assert_error(
        "[databases.app]\nhost = \"h\"\n  hots = \"x\"\n",
        3,
        3,
        "databases.app.hots",
        "unknown key \"hots\"",
    );
    assert_error(
        "[users.bob]\npasword = \"x\"\n",
        2,
        1,
        "users.bob.pasword",
        "did you mean \"password\"",
    );
    assert_error(
        "[pooler]\n[poolr]\nx = 1\n",
        2,
        2,
        "poolr",
        "did you mean \"pooler\"",
    );
    assert_error("listen_port = 1\n", 1, 1, "listen_port", "unknown key");
    assert_error(
        "[databases]\napp = { host = \"h\", prot = 1 }\n",
        2,
        21,
        "databases.app.prot",
        "unknown key",
    );
    assert_error(
        "[databases.\"*\"]\nsize = 1\n",
        2,
        1,
        "databases.\"*\".size",
        "unknown key",
    );
    assert_error(
        "pooler.listen_prt = 1\n",
        1,
        8,
        "pooler.listen_prt",
        "did you mean \"listen_port\"",
    );
}

#[test]
fn wrong_types_are_located() {
    assert_error(
        "[pooler]\nlisten_port = \"abc\"\n",
        2,
        1,
        "pooler.listen_port",
        "invalid type",
    );
    assert_error(
        "[pooler]\nlisten_port = 70000\n",
        2,
        1,
        "pooler.listen_port",
        "70000",
    );
    assert_error(
        "[pooler]\nlisten_port = 1.5\n",
        2,
        1,
        "pooler.listen_port",
        "integer from 0 to 65535",
    );
    assert_error(
        "[pooler]\nworkers = -1\n",
        2,
        1,
        "pooler.workers",
        "non-negative integer",
    );
    assert_error(
        "[pooler]\nadmin_users = \"root\"\n",
        2,
        1,
        "pooler.admin_users",
        "expected an array",
    );
    assert_error(
        "[[databases]]\nhost = \"h\"\n",
        1,
        3,
        "databases",
        "expected a table",
    );
    assert_error(
        "[pooler]\nadmin_users = [\"a\", 3]\n",
        2,
        1,
        "pooler.admin_users",
        "invalid type",
    );
    assert_error(
        "[databases.app]\nport = \"x\"\n",
        2,
        1,
        "databases.app.port",
        "is not a port number",
    );
    assert_error("pooler = 5\n", 1, 1, "pooler", "invalid type");
    assert_error("[users]\nbob = \"pw\"\n", 2, 1, "users.bob", "invalid type");
}

#[test]
fn bad_enum_values_name_the_allowed_ones() {
    let text = "[pooler]\npool_mode = \"statement\"\n";
    assert_error(text, 2, 1, "pooler.pool_mode", "statement");
    let msg = load(text).unwrap_err().message;
    assert!(msg.contains("session") && msg.contains("transaction"), "{msg}");
    let auth = "[pooler]\nauth_type = \"pam\"\n";
    assert_error(auth, 2, 1, "pooler.auth_type", "scram-sha-256");
    assert_error(
        "[databases.x]\npool_mode = \"stmt\"\n",
        2,
        1,
        "databases.x.pool_mode",
        "transaction",
    );
    assert_error(
        "[users.u]\npool_mode = 1\n",
        2,
        1,
        "users.u.pool_mode",
        "invalid type",
    );
}

#[test]
fn syntax_errors_are_located() {
    let text = "[pooler]\nlisten_port = 6432\nlisten_addr = \n";
    assert_error(text, 3, 15, "pooler.listen_addr", "quoted");
    let dup = "[pooler]\nlisten_port = 1\nlisten_port = 2\n";
    assert_error(dup, 3, 1, "pooler.listen_port", "duplicate key");
    let unclosed = load("[pooler\n").unwrap_err();
    assert_eq!((unclosed.line, unclosed.column), (1, 8), "{unclosed}");
    assert!(unclosed.message.contains("unclosed table"), "{unclosed}");
    let bad_value = "[databases.app]\nport = 54 32\n";
    assert_error(bad_value, 2, 8, "databases.app.port", "quoted");
}

#[test]
fn semantic_errors_are_located() {
    let p = "[pooler]\n";
    assert_error(
        &format!("{p}default_pool_size = 0\n"),
        2,
        1,
        "pooler.default_pool_size",
        "at least 1",
    );
    assert_error(
        &format!("{p}max_client_conn = 0\n"),
        2,
        1,
        "pooler.max_client_conn",
        "at least 1",
    );
    assert_error(
        &format!("{p}listen_addr = \"my host\"\n"),
        2,
        1,
        "pooler.listen_addr",
        "IP address",
    );
    assert_error(
        &format!("{p}listen_addr = \"\"\n"),
        2,
        1,
        "pooler.listen_addr",
        "IP address",
    );
    assert_error(
        &format!("{p}max_packet_size = 1023\n"),
        2,
        1,
        "pooler.max_packet_size",
        "1024",
    );
    for key in [
        "query_wait_timeout",
        "server_connect_timeout",
        "client_login_timeout",
    ] {
        assert_error(
            &format!("{p}{key} = \"0s\"\n"),
            2,
            1,
            &format!("pooler.{key}"),
            "greater than zero",
        );
    }
    assert_error(
        &format!("{p}admin_users = [\"a\", \"\"]\n"),
        2,
        1,
        "pooler.admin_users",
        "entry 2 is empty",
    );
    assert_error(
        &format!("{p}stats_users = [\" \"]\n"),
        2,
        1,
        "pooler.stats_users",
        "empty",
    );
    let db = "[databases.app]\n";
    assert_error(
        &format!("{db}pool_size = 0\n"),
        2,
        1,
        "databases.app.pool_size",
        "at least 1",
    );
    assert_error(&format!("{db}host = \"\"\n"), 2, 1, "databases.app.host", "empty");
    assert_error(&format!("{db}port = 0\n"), 2, 1, "databases.app.port", "0");
    assert_error(
        &format!("{db}password = \"x\"\n"),
        2,
        1,
        "databases.app.password",
        "without user",
    );
    assert_error(
        "[databases.\"\"]\nport = 1\n",
        1,
        12,
        "databases.\"\"",
        "database name",
    );
    assert_error("[users.\"\"]\n", 1, 8, "users.\"\"", "user name");
    let bad_scram = "[users.u]\npassword = \"SCRAM-SHA-256$x\"\n";
    assert_error(bad_scram, 2, 1, "users.u.password", "SCRAM");
}

#[test]
fn first_error_in_file_order_wins() {
    let text = "[databases.b]\nport = 0\n[pooler]\ndefault_pool_size = 0\n";
    assert_error(text, 2, 1, "databases.b.port", "0");
}

#[test]
fn host_list_problems_name_the_key() {
    assert_error(
        "[databases.app]\nhost = \"a,b,c\"\nport = \"5432,5433\"\n",
        2,
        1,
        "databases.app.host",
        "lists 3 hosts but port lists 2 ports",
    );
    assert_error(
        "[databases.app]\nhost = \"a:x\"\n",
        2,
        1,
        "databases.app.host",
        "is not a port number",
    );
    assert_error(
        "[databases.app]\ntarget_session_attrs = \"writable\"\n",
        2,
        1,
        "databases.app.target_session_attrs",
        "unknown value `writable`, expected one of `any`, `read-write`",
    );
}
