//! PgBouncer's auth_file (userlist.txt) format: one `"user" "secret"` pair per line.
//!
//! Blank lines and lines starting with `;` or `#` are skipped. Each other line holds two
//! double-quoted fields, the user name and the secret; a doubled `""` inside a field is one literal
//! quote, and whatever follows the second field is ignored (as PgBouncer does). A line that does
//! not start with a quoted field, an unterminated field, an empty user name, a user listed twice or
//! a malformed `SCRAM-SHA-256$` secret is an error naming the file, line and column.

use super::ConfigError;
use std::collections::BTreeMap;

/// Shape of a SCRAM verifier, for error messages.
const SCRAM_SHAPE: &str = "SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>";

/// Parses userlist.txt text into user name -> secret; `origin` names the file in errors.
pub fn parse_userlist(text: &str, origin: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (index, raw_line) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let line: Vec<char> = raw_line.strip_suffix('\r').unwrap_or(raw_line).chars().collect();
        let err = |col: usize, msg: String| ConfigError::new(origin, line_no, col + 1, "", &msg);
        let mut pos = skip_space(&line, 0);
        match line.get(pos) {
            None | Some(';') | Some('#') => continue,
            Some('"') => {}
            Some(_) => {
                return Err(err(
                    pos,
                    "expected a line of the form \"user\" \"secret\"".to_string(),
                ));
            }
        }
        let user_col = pos;
        let user = quoted(&line, &mut pos).map_err(|m| err(user_col, format!("user name: {m}")))?;
        if user.is_empty() {
            return Err(err(user_col, "empty user name".to_string()));
        }
        pos = skip_space(&line, pos);
        if line.get(pos) != Some(&'"') {
            return Err(err(pos, format!("expected a quoted secret after user {user:?}")));
        }
        let secret_col = pos;
        let secret =
            quoted(&line, &mut pos).map_err(|m| err(secret_col, format!("secret of {user:?}: {m}")))?;
        check_secret(&secret).map_err(|m| err(secret_col, format!("secret of {user:?}: {m}")))?;
        if let Some(previous) = first_seen.get(&user) {
            return Err(err(
                user_col,
                format!("user {user:?} is already listed on line {previous}"),
            ));
        }
        first_seen.insert(user.clone(), line_no);
        out.insert(user, secret);
    }
    Ok(out)
}

/// Index of the first non-blank char at or after `pos`.
fn skip_space(line: &[char], mut pos: usize) -> usize {
    while line.get(pos).is_some_and(|c| c.is_whitespace()) {
        pos += 1;
    }
    pos
}

/// Reads the double-quoted field starting at `*pos` (which holds `"`), turning `""` into `"`, and
/// leaves `*pos` just after the closing quote.
fn quoted(line: &[char], pos: &mut usize) -> Result<String, String> {
    let mut out = String::new();
    let mut i = *pos + 1;
    loop {
        match line.get(i) {
            None => return Err("missing closing quote".to_string()),
            Some('"') if line.get(i + 1) == Some(&'"') => {
                out.push('"');
                i += 2;
            }
            Some('"') => {
                *pos = i + 1;
                return Ok(out);
            }
            Some(&c) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// Cheap sanity check of a secret: plaintext and `md5...` are taken as they are; a value starting
/// with `SCRAM-SHA-256$` must have the verifier's shape (the auth module decodes it).
pub(crate) fn check_secret(secret: &str) -> Result<(), String> {
    let Some(rest) = secret.strip_prefix("SCRAM-SHA-256$") else {
        return Ok(());
    };
    let bad = || format!("malformed SCRAM secret; expected {SCRAM_SHAPE}");
    let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
    let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
    let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
    let iterations_ok = iterations.parse::<u32>().is_ok_and(|n| n > 0);
    if !iterations_ok || salt.is_empty() || stored.is_empty() || server.is_empty() {
        return Err(bad());
    }
    Ok(())
}
