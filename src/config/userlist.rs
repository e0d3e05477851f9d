//! PgBouncer's auth_file format: one `"user" "secret"` pair per line.

use super::ConfigError;
use std::collections::BTreeMap;

/// Parses userlist.txt text; `origin` names the file in errors.
pub fn parse_userlist(text: &str, origin: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with(';') || l.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = l.split('"').collect();
        if parts.len() < 5 {
            return Err(ConfigError::new(
                origin,
                i + 1,
                1,
                "",
                "expected \"user\" \"secret\"",
            ));
        }
        out.insert(parts[1].to_string(), parts[3].to_string());
    }
    Ok(out)
}
