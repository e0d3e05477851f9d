//! Reading `LISTEN` and `UNLISTEN` out of a client's SQL text, as PostgreSQL's parser would: one
//! statement, comments and white space around, channel names by the identifier rules (quoted
//! names kept as written, unquoted ones folded to lower case, 63 bytes at most).

/// PostgreSQL's longest identifier (NAMEDATALEN - 1), in bytes.
pub(crate) const MAX_IDENTIFIER: usize = 63;

/// What a statement text asks of the listening machinery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenSql {
    /// No LISTEN or UNLISTEN in it: an ordinary statement.
    Other,
    /// The text is exactly one `LISTEN`/`UNLISTEN` statement.
    Command(ListenCommand),
    /// UNLISTENs among other statements, and no LISTEN (asyncpg's connection reset, `...;
    /// UNLISTEN *; RESET ALL;`): the text runs on the server as it is (where it finds nothing to
    /// unlisten) and the client's own subscriptions change as these say. `blocks`: the text
    /// opens or ends a transaction block itself, so the change waits for a COMMIT.
    UnlistenAmong {
        /// The UNLISTENs, in order.
        commands: Vec<ListenCommand>,
        /// A statement of the text is transaction control (BEGIN, COMMIT, ROLLBACK, ...).
        blocks: bool,
    },
    /// A LISTEN among other statements (or in a form sluice does not read): refused.
    Unsupported(&'static str),
    /// A LISTEN or UNLISTEN that PostgreSQL would refuse too (SQLSTATE, message).
    Invalid(&'static str, String),
}

/// One LISTEN/UNLISTEN statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenCommand {
    /// `LISTEN channel`; `truncated` when the name was longer than 63 bytes and was cut (the
    /// client gets PostgreSQL's NOTICE about it).
    Listen { channel: String, truncated: bool },
    /// `UNLISTEN channel`.
    Unlisten { channel: String, truncated: bool },
    /// `UNLISTEN *`.
    UnlistenAll,
}

impl ListenCommand {
    /// The CommandComplete tag PostgreSQL gives.
    pub(crate) fn tag(&self) -> &'static str {
        match self {
            ListenCommand::Listen { .. } => "LISTEN",
            _ => "UNLISTEN",
        }
    }
}

/// Classifies a statement text (a Query's body or a Parse's statement, NUL-terminated or not).
/// Cheap for the usual text: nothing more than a search for the letters `listen` unless they occur.
pub(crate) fn classify(text: &[u8]) -> ListenSql {
    let text = text.split(|&b| b == 0).next().unwrap_or_default();
    if !mentions_listen(text) {
        return ListenSql::Other;
    }
    let Ok(text) = std::str::from_utf8(text) else {
        return ListenSql::Other; // PostgreSQL refuses invalid UTF-8 itself
    };
    let statements = split_statements(text);
    let listening: Vec<&String> = statements
        .iter()
        .filter(|s| matches!(first_word(s).to_ascii_lowercase().as_str(), "listen" | "unlisten"))
        .collect();
    match (listening.first(), statements.len()) {
        (None, _) => ListenSql::Other,
        (Some(stmt), 1) => parse_command(stmt),
        (Some(_), _) => {
            // Only UNLISTENs: nothing would be left on a pooled server, so the text may run there.
            let unlistens: Option<Vec<ListenCommand>> = listening
                .iter()
                .map(|stmt| match parse_command(stmt) {
                    ListenSql::Command(c @ (ListenCommand::Unlisten { .. } | ListenCommand::UnlistenAll)) => {
                        Some(c)
                    }
                    _ => None,
                })
                .collect();
            let blocks = statements.iter().any(|stmt| {
                matches!(
                    first_word(stmt).to_ascii_lowercase().as_str(),
                    "begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release"
                )
            });
            match unlistens {
                Some(commands) => ListenSql::UnlistenAmong { commands, blocks },
                None => ListenSql::Unsupported(
                    "LISTEN must be sent as a statement of its own in transaction pooling",
                ),
            }
        }
    }
}

/// True when `text` contains `listen` in any letter case.
fn mentions_listen(text: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"listen";
    text.len() >= NEEDLE.len()
        && text.iter().enumerate().any(|(i, &b)| {
            (b | 0x20) == b'l'
                && text
                    .get(i..i + NEEDLE.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(NEEDLE))
        })
}

/// The statements of a text, split at top-level semicolons, with comments blanked and white
/// space trimmed; empty statements are dropped.
fn split_statements(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == b'-' && next == Some(b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            cur.push(' ');
            continue;
        }
        if c == b'/' && next == Some(b'*') {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            cur.push(' ');
            continue;
        }
        let end = match c {
            b'\'' => {
                let escapes = i > 0 && (b[i - 1] | 0x20) == b'e' && (i < 2 || !is_ident_byte(b[i - 2]));
                quoted_end(b, i, b'\'', escapes)
            }
            b'"' => quoted_end(b, i, b'"', false),
            b'$' if i == 0 || !is_ident_byte(b[i - 1]) => dollar_end(b, i).unwrap_or(i + 1),
            b';' => {
                let s = cur.trim();
                if !s.is_empty() {
                    out.push(s.to_string());
                }
                cur.clear();
                i += 1;
                continue;
            }
            _ => {
                let len = utf8_len(c);
                i + len
            }
        };
        let end = end.min(b.len());
        cur.push_str(&text[i..end]);
        i = end;
    }
    let s = cur.trim();
    if !s.is_empty() {
        out.push(s.to_string());
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// End (exclusive) of a quoted string or identifier starting at `start`.
fn quoted_end(b: &[u8], start: usize, quote: u8, backslash_escapes: bool) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if backslash_escapes && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// End (exclusive) of a dollar-quoted string starting at `start`, if `$tag$` opens one.
fn dollar_end(b: &[u8], start: usize) -> Option<usize> {
    let close = start + 1 + b[start + 1..].iter().position(|&c| c == b'$')?;
    let tag = &b[start..=close];
    if tag[1..tag.len() - 1]
        .iter()
        .any(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
        || tag.get(1).is_some_and(u8::is_ascii_digit)
    {
        return None;
    }
    let body = close + 1;
    let at = b[body..].windows(tag.len()).position(|w| w == tag)?;
    Some(body + at + tag.len())
}

fn first_word(stmt: &str) -> &str {
    let end = stmt
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(stmt.len());
    &stmt[..end]
}

/// Parses one statement known to begin with LISTEN or UNLISTEN.
fn parse_command(stmt: &str) -> ListenSql {
    let word = first_word(stmt);
    let listen = word.eq_ignore_ascii_case("listen");
    let rest = stmt[word.len()..].trim_start();
    if !listen && rest == "*" {
        return ListenSql::Command(ListenCommand::UnlistenAll);
    }
    let syntax = |near: &str| {
        ListenSql::Invalid(
            crate::protocol::sqlstate::SYNTAX_ERROR,
            if near.is_empty() {
                "syntax error at end of input".to_string()
            } else {
                format!("syntax error at or near \"{near}\"")
            },
        )
    };
    let (name, after) = if rest.starts_with('"') {
        let b = rest.as_bytes();
        let end = quoted_end(b, 0, b'"', false);
        if end > b.len() || b.get(end - 1) != Some(&b'"') || end < 2 {
            return ListenSql::Invalid(
                crate::protocol::sqlstate::SYNTAX_ERROR,
                "unterminated quoted identifier".to_string(),
            );
        }
        let inner = rest[1..end - 1].replace("\"\"", "\"");
        if inner.is_empty() {
            return ListenSql::Invalid(
                crate::protocol::sqlstate::SYNTAX_ERROR,
                "zero-length delimited identifier".to_string(),
            );
        }
        (inner, &rest[end..])
    } else {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()))
            .unwrap_or(rest.len());
        let ident = &rest[..end];
        match ident.chars().next() {
            None => return syntax(rest.split_whitespace().next().unwrap_or("")),
            Some(c) if c.is_ascii_digit() || c == '$' => return syntax(ident),
            Some(_) => {}
        }
        (ident.to_ascii_lowercase(), &rest[end..])
    };
    let after = after.trim();
    if !after.is_empty() {
        if rest.starts_with(['U', 'u']) && rest[1..].starts_with('&') {
            return ListenSql::Unsupported("Unicode-escaped channel names are not read by sluice");
        }
        return syntax(after.split_whitespace().next().unwrap_or(after));
    }
    let (channel, truncated) = truncate_identifier(name);
    ListenSql::Command(if listen {
        ListenCommand::Listen { channel, truncated }
    } else {
        ListenCommand::Unlisten { channel, truncated }
    })
}

/// Cuts a name to 63 bytes at a character boundary, as PostgreSQL does.
fn truncate_identifier(mut name: String) -> (String, bool) {
    if name.len() <= MAX_IDENTIFIER {
        return (name, false);
    }
    let mut end = MAX_IDENTIFIER;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    (name, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(c: &str) -> ListenSql {
        ListenSql::Command(ListenCommand::Listen {
            channel: c.into(),
            truncated: false,
        })
    }

    #[test]
    fn statements_are_read_as_postgresql_reads_them() {
        assert_eq!(classify(b"SELECT 1\0"), ListenSql::Other);
        assert_eq!(classify(b"SELECT 'listen x'\0"), ListenSql::Other);
        assert_eq!(classify(b"LISTEN Foo\0"), listen("foo"));
        assert_eq!(classify(b"  listen \"Foo Bar\" ;\0"), listen("Foo Bar"));
        assert_eq!(classify(b"/* c */ LISTEN a -- x\n;;\0"), listen("a"));
        assert_eq!(classify(b"LISTEN \"a\"\"b\""), listen("a\"b"));
        assert_eq!(
            classify(b"UNLISTEN *"),
            ListenSql::Command(ListenCommand::UnlistenAll)
        );
        assert_eq!(
            classify(b"unlisten x"),
            ListenSql::Command(ListenCommand::Unlisten {
                channel: "x".into(),
                truncated: false
            })
        );
        assert!(matches!(
            classify(b"SELECT 1; LISTEN a"),
            ListenSql::Unsupported(_)
        ));
        assert!(matches!(
            classify(b"LISTEN a; LISTEN b"),
            ListenSql::Unsupported(_)
        ));
        assert!(matches!(
            classify(b"UNLISTEN a; LISTEN b"),
            ListenSql::Unsupported(_)
        ));
        // asyncpg's connection reset (every pool release) runs on the server as it is.
        assert_eq!(
            classify(b"SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;"),
            ListenSql::UnlistenAmong {
                commands: vec![ListenCommand::UnlistenAll],
                blocks: false
            }
        );
        assert_eq!(
            classify(b"UNLISTEN \"A\"; SELECT 1"),
            ListenSql::UnlistenAmong {
                commands: vec![ListenCommand::Unlisten {
                    channel: "A".into(),
                    truncated: false
                }],
                blocks: false
            }
        );
        assert!(matches!(
            classify(b"BEGIN; UNLISTEN a; ROLLBACK"),
            ListenSql::UnlistenAmong { blocks: true, .. }
        ));
        assert_eq!(classify(b"SELECT 'a;LISTEN b'"), ListenSql::Other);
        assert_eq!(classify(b"SELECT $x$;LISTEN b$x$"), ListenSql::Other);
        assert!(matches!(classify(b"LISTEN"), ListenSql::Invalid("42601", _)));
        assert!(matches!(classify(b"LISTEN a b"), ListenSql::Invalid("42601", _)));
        assert!(matches!(classify(b"LISTEN \"\""), ListenSql::Invalid("42601", _)));
        assert!(matches!(classify(b"LISTEN 1a"), ListenSql::Invalid("42601", _)));
        let long = format!("LISTEN {}", "x".repeat(70));
        assert_eq!(
            classify(long.as_bytes()),
            ListenSql::Command(ListenCommand::Listen {
                channel: "x".repeat(63),
                truncated: true
            })
        );
        // Not a statement of its own.
        assert_eq!(classify(b"SELECT pg_listening_channels()"), ListenSql::Other);
        assert_eq!(classify(b"NOTIFY listen_here"), ListenSql::Other);
    }
}
