//! `sluice check FILE` from the built binary.

use std::process::Command;

#[test]
fn check_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, "[pooler]\nlisten_port = 6500\n[databases.app]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_rejects_a_typo_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "[pooler]\nlisten_port = 6500\n\n[databases.app]\nhost = \"db\"\n  prot = 5432\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "typo accepted; stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{}:6:3: databases.app.prot: ", path.display())),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("unknown key \"prot\""), "stderr: {stderr}");
}
