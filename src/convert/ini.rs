//! Reading pgbouncer.ini as PgBouncer does: `[section]` headers, `key = value` lines (the value
//! is the rest of the line, trimmed), whole-line comments starting with `;` or `#`, database and
//! user names in SQL double quotes, and `%include FILE` (relative to the working directory, as
//! PgBouncer resolves it; nested includes bounded, cycles refused).

use super::ConvertError;
use std::path::{Path, PathBuf};

/// Deepest `%include` nesting accepted (PgBouncer stops at 10 as well).
const MAX_INCLUDE_DEPTH: usize = 10;

/// Largest pgbouncer.ini (or included file) read, in bytes.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Where a line came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The file, as it was named (the command line's path or the `%include` argument).
    pub file: String,
    /// 1-based line number.
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One `key = value` line, with the section it is in.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Section name, lower-cased (`pgbouncer`, `databases`, `users`, `peers`, ...).
    pub section: String,
    /// The key: unquoted (a `"quoted name"` loses its quotes, `""` becomes `"`).
    pub key: String,
    /// The value, trimmed (may be empty).
    pub value: String,
    /// Where it was written.
    pub origin: Origin,
}

/// Reads `path` and everything it includes, in order.
pub(crate) fn read(path: &Path) -> Result<Vec<Entry>, ConvertError> {
    let mut entries = Vec::new();
    let mut section = String::new();
    let mut stack = Vec::new();
    read_file(path, None, &mut section, &mut stack, &mut entries)?;
    Ok(entries)
}

/// Reads one file into `entries`; `section` carries over into and out of included files, as in
/// PgBouncer. `stack` holds the files being read (for cycles and depth).
fn read_file(
    path: &Path,
    included_at: Option<&Origin>,
    section: &mut String,
    stack: &mut Vec<PathBuf>,
    entries: &mut Vec<Entry>,
) -> Result<(), ConvertError> {
    let shown = path.display().to_string();
    let fail_at = |message: String| match included_at {
        Some(at) => ConvertError::at(at, "%include", message),
        None => ConvertError::file(&shown, message),
    };
    if stack.len() >= MAX_INCLUDE_DEPTH {
        return Err(fail_at(format!(
            "%include nested more than {MAX_INCLUDE_DEPTH} deep"
        )));
    }
    let canonical = std::fs::canonicalize(path).map_err(|e| fail_at(format!("cannot read {shown}: {e}")))?;
    if stack.contains(&canonical) {
        return Err(fail_at(format!("{shown} includes itself")));
    }
    let size = std::fs::metadata(&canonical).map(|m| m.len()).unwrap_or(0);
    if size > MAX_FILE_BYTES {
        return Err(fail_at(format!("{shown} is larger than {MAX_FILE_BYTES} bytes")));
    }
    let bytes = std::fs::read(&canonical).map_err(|e| fail_at(format!("cannot read {shown}: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| fail_at(format!("{shown} is not UTF-8: {e}")))?;
    stack.push(canonical);
    for (i, raw) in text.lines().enumerate() {
        let origin = Origin {
            file: shown.clone(),
            line: i + 1,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("%include") {
            let target = rest.trim();
            if target.is_empty() || !rest.starts_with(char::is_whitespace) {
                return Err(ConvertError::at(
                    &origin,
                    "%include",
                    "expected `%include FILE`".to_string(),
                ));
            }
            read_file(Path::new(target), Some(&origin), section, stack, entries)?;
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(ConvertError::at(
                    &origin,
                    line,
                    "a section header must end with `]`".to_string(),
                ));
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(ConvertError::at(&origin, line, "empty section name".to_string()));
            }
            *section = name.to_ascii_lowercase();
            continue;
        }
        let (key, value) = split_key(line).map_err(|why| ConvertError::at(&origin, line, why))?;
        if section.is_empty() {
            return Err(ConvertError::at(
                &origin,
                &key,
                "key outside any [section]".to_string(),
            ));
        }
        entries.push(Entry {
            section: section.clone(),
            key,
            value: value.trim().to_string(),
            origin,
        });
    }
    stack.pop();
    Ok(())
}

/// Splits `key = value`; a key in double quotes may hold any character (`""` is one quote).
fn split_key(line: &str) -> Result<(String, &str), String> {
    if let Some(rest) = line.strip_prefix('"') {
        let mut key = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                key.push(c);
                continue;
            }
            if rest[i + 1..].starts_with('"') {
                key.push('"');
                chars.next();
                continue;
            }
            let after = rest[i + 1..].trim_start();
            return match after.strip_prefix('=') {
                Some(value) if !key.is_empty() => Ok((key, value)),
                Some(_) => Err("empty quoted name".to_string()),
                None => Err("expected `=` after the quoted name".to_string()),
            };
        }
        return Err("unterminated quoted name".to_string());
    }
    let Some((key, value)) = line.split_once('=') else {
        return Err("expected `key = value`".to_string());
    };
    let key = key.trim();
    if key.is_empty() {
        return Err("empty key before `=`".to_string());
    }
    if key.contains(char::is_whitespace) {
        return Err(format!(
            "invalid key {key:?}: a name with spaces must be in double quotes"
        ));
    }
    Ok((key.to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::split_key;

    #[test]
    fn keys_split_as_pgbouncer_reads_them() {
        assert_eq!(
            split_key("a = b c").map(|(k, v)| (k, v.trim())),
            Ok(("a".into(), "b c"))
        );
        assert_eq!(
            split_key("\"my \"\"db\"\"\" = host=x").map(|(k, v)| (k, v.trim())),
            Ok(("my \"db\"".into(), "host=x"))
        );
        assert!(split_key("no equals").is_err());
        assert!(split_key("\"open = x").is_err());
        assert!(split_key("two words = x").is_err());
    }
}
