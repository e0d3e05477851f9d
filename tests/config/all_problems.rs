//! One run reports every problem of a file, each at its line, column and key; an unknown key
//! suggests only the nearest known name, or none.

use std::process::Command;

/// Three kinds of problem (unknown keys, wrong types, semantic rules) in one file.
const BROKEN: &str = "\
[pooler]
listen_port = 6500
pool_mod = \"session\"
default_pool_size = 0
query_wait_timeout = \"soon\"
zzzzqqq = 1

[databases.app]
host = \"db\"
prot = 5432
port = \"x\"
pool_size = 0
";

#[test]
fn every_problem_is_reported_at_its_place() {
    let first = sluice::Config::from_toml_str(BROKEN, "pooler.toml", None).unwrap_err();
    assert_eq!(first.key, "pooler.pool_mod", "a single error is the earliest");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pooler.toml");
    std::fs::write(&path, BROKEN).unwrap();
    let errors = sluice::Config::load_all_problems(&path).expect_err("the file is invalid");
    let found: Vec<(usize, usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.column, e.key.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (3, 1, "pooler.pool_mod"),
            (4, 1, "pooler.default_pool_size"),
            (5, 1, "pooler.query_wait_timeout"),
            (6, 1, "pooler.zzzzqqq"),
            (10, 1, "databases.app.prot"),
            (11, 1, "databases.app.port"),
            (12, 1, "databases.app.pool_size"),
        ],
        "{errors:#?}"
    );
    let message = |key: &str| {
        errors
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        message("pooler.pool_mod"),
        "unknown key \"pool_mod\" (did you mean \"pool_mode\"?)"
    );
    assert_eq!(
        message("pooler.zzzzqqq"),
        "unknown key \"zzzzqqq\"",
        "nothing is close"
    );
    assert_eq!(
        message("databases.app.prot"),
        "unknown key \"prot\" (did you mean \"port\"?)"
    );
    assert!(message("pooler.query_wait_timeout").contains("\"soon\""));
    // A string is a port list now (host lists); "x" is not a port in it.
    assert!(message("databases.app.port").contains("is not a port number"));
    assert!(message("pooler.default_pool_size").contains("at least 1"));
}

#[test]
fn sluice_check_prints_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, BROKEN).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stderr: {stderr}");
    let shown = path.display();
    for place in [
        "3:1: pooler.pool_mod: unknown key",
        "4:1: pooler.default_pool_size: ",
        "5:1: pooler.query_wait_timeout: ",
        "6:1: pooler.zzzzqqq: unknown key \"zzzzqqq\"\n",
        "10:1: databases.app.prot: unknown key",
        "11:1: databases.app.port: ",
        "12:1: databases.app.pool_size: ",
    ] {
        assert!(
            stderr.contains(&format!("{shown}:{place}")),
            "{place} missing:\n{stderr}"
        );
    }
    assert!(stderr.contains("7 problems"), "{stderr}");
    assert!(
        !stderr.contains("expected one of"),
        "no list of every key:\n{stderr}"
    );
}
