//! auth_file (userlist.txt) parsing, and how its secrets combine with `[users]` passwords.

use sluice::config::{Config, parse_userlist};

#[test]
fn parses_pairs_comments_and_escaped_quotes() {
    let text = concat!(
        "; a comment\n",
        "# another comment\n",
        "\n",
        "   \n",
        "\"alice\" \"plain pw\"\n",
        "  \"bob\"   \"md545f2603610af569b6155c45067268c6b\" trailing stuff ignored\r\n",
        "\"we\"\"ird\" \"pa\"\"ss\"\"\"\n",
        "\"carol\" \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"\n",
        "\"empty\" \"\"\n",
    );
    let users = parse_userlist(text, "userlist.txt").unwrap();
    assert_eq!(users.len(), 5);
    assert_eq!(users["alice"], "plain pw");
    assert_eq!(users["bob"], "md545f2603610af569b6155c45067268c6b");
    assert_eq!(users["we\"ird"], "pa\"ss\"");
    assert_eq!(users["carol"], "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy");
    assert_eq!(users["empty"], "");
}

/// Asserts that userlist `text` fails at `line`:`column` with `needle` in the message.
#[track_caller]
fn assert_userlist_error(text: &str, line: usize, column: usize, needle: &str) {
    let err = parse_userlist(text, "/etc/sluice/userlist.txt").unwrap_err();
    assert_eq!(
        (err.file.as_str(), err.line, err.column),
        ("/etc/sluice/userlist.txt", line, column),
        "{err}"
    );
    assert!(
        err.message.contains(needle),
        "message {:?} lacks {needle:?}",
        err.message
    );
    assert!(
        err.to_string()
            .starts_with(&format!("/etc/sluice/userlist.txt:{line}:{column}: ")),
        "{err}"
    );
}

#[test]
fn errors_name_the_line_and_column() {
    let ok = "\"a\" \"b\"\n";
    assert_userlist_error(&format!("{ok}; c\nalice bob\n"), 3, 1, "\"user\" \"secret\"");
    assert_userlist_error(&format!("{ok}\"alice\"\n"), 2, 8, "quoted secret");
    assert_userlist_error(&format!("{ok}\"alice\" pw\n"), 2, 9, "quoted secret");
    assert_userlist_error(&format!("{ok}\"alice \"pw\"\n"), 2, 9, "quoted secret");
    assert_userlist_error(
        &format!("{ok}  \"alice\n"),
        2,
        3,
        "user name: missing closing quote",
    );
    assert_userlist_error(&format!("{ok}\"alice\" \"pw\n"), 2, 9, "missing closing quote");
    assert_userlist_error(&format!("{ok}\"\" \"pw\"\n"), 2, 1, "empty user name");
    assert_userlist_error(&format!("{ok}\"a\" \"c\"\n"), 2, 1, "already listed on line 1");
    assert_userlist_error("\"s\" \"SCRAM-SHA-256$abc\"\n", 1, 5, "malformed SCRAM");
}

#[test]
fn users_table_takes_precedence_over_auth_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/users.txt"),
        "\"alice\" \"from-file\"\n\"bob\" \"bob-file\"\n",
    )
    .unwrap();
    let toml = "[pooler]\nauth_file = \"etc/users.txt\"\n[users.alice]\npassword = \"from-toml\"\n[users.carol]\npool_mode = \"session\"\n[users.dave]\npassword = \"dave-toml\"\n";
    let path = dir.path().join("pooler.toml");
    std::fs::write(&path, toml).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.user_secret("alice"), Some("from-toml"));
    assert_eq!(c.user_secret("bob"), Some("bob-file"));
    assert_eq!(c.user_secret("carol"), None);
    assert_eq!(c.user_secret("dave"), Some("dave-toml"));
    assert_eq!(c.user_secret("nobody"), None);
    assert_eq!(c.auth_file_users.len(), 2);
}

#[test]
fn auth_file_problems_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[pooler]\n\nauth_file = \"missing.txt\"\n";
    let err = Config::from_toml_str(text, "p.toml", Some(dir.path())).unwrap_err();
    assert_eq!(
        (err.file.as_str(), err.line, err.column, err.key.as_str()),
        ("p.toml", 3, 1, "pooler.auth_file")
    );
    assert!(err.message.contains("missing.txt"), "{err}");

    let list = dir.path().join("users.txt");
    std::fs::write(&list, "\"ok\" \"pw\"\n\"broken\n").unwrap();
    let text = "[pooler]\nauth_file = \"users.txt\"\n";
    let err = Config::from_toml_str(text, "p.toml", Some(dir.path())).unwrap_err();
    assert_eq!(
        (err.file, err.line, err.column),
        (list.display().to_string(), 2, 1)
    );

    let absolute = format!("[pooler]\nauth_file = {:?}\n", list.display().to_string());
    let err = Config::from_toml_str(&absolute, "p.toml", None).unwrap_err();
    assert_eq!((err.file, err.line), (list.display().to_string(), 2));
}
