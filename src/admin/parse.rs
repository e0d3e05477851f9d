//! Parsing console commands: case-insensitive keywords, an optional trailing `;`, optional
//! quoting of names, `SET key = value`.

/// A parsed console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW <what>`; the subject is upper-cased.
    Show(String),
    /// An action with an optional argument (`PAUSE db`, `KILL_CLIENT 7`, `SHUTDOWN WAIT_FOR_CLIENTS`).
    Action {
        /// Upper-cased verb.
        verb: String,
        /// The argument as given (quotes removed).
        arg: Option<String>,
    },
    /// `SET key = value`.
    Set {
        /// Lower-cased key.
        key: String,
        /// Value with quotes removed.
        value: String,
    },
}

/// Why a command could not be parsed: the text to quote in `invalid command '...'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// Parses one console query.
pub fn parse(query: &str) -> Result<Command, Invalid> {
    let text = query.trim().trim_end_matches(';').trim();
    let invalid = || Invalid(query.to_string());
    if text.is_empty() {
        return Err(invalid());
    }
    let (verb, rest) = split_word(text);
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "SHOW" | "SELECT" => {
            let (what, extra) = split_word(rest);
            if what.is_empty() || !extra.is_empty() {
                return Err(invalid());
            }
            Ok(Command::Show(what.to_ascii_uppercase()))
        }
        "SET" => {
            let (key, value) = match rest.split_once('=') {
                Some(kv) => kv,
                None => {
                    let (k, v) = split_word(rest);
                    let v = v
                        .strip_prefix("to ")
                        .or_else(|| v.strip_prefix("TO "))
                        .ok_or_else(invalid)?;
                    (k, v)
                }
            };
            let key = key.trim().to_ascii_lowercase();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(invalid());
            }
            Ok(Command::Set {
                key,
                value: unquote(value.trim()),
            })
        }
        _ if verb.chars().all(|c| c.is_ascii_alphabetic() || c == '_') => {
            let (arg, extra) = split_word(rest);
            if !extra.is_empty() {
                return Err(invalid());
            }
            Ok(Command::Action {
                verb,
                arg: (!arg.is_empty()).then(|| unquote(arg)),
            })
        }
        _ => Err(invalid()),
    }
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('"')
        && let Some(end) = inner.find('"')
    {
        return (&s[..end + 2], inner[end + 1..].trim_start());
    }
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

fn unquote(s: &str) -> String {
    let t = s.trim();
    for q in ['"', '\''] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            return t[1..t.len() - 1].to_string();
        }
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively() {
        assert_eq!(parse("show pools;"), Ok(Command::Show("POOLS".into())));
        assert_eq!(
            parse("  SHOW   Stats_Totals "),
            Ok(Command::Show("STATS_TOTALS".into()))
        );
        assert_eq!(
            parse("pause \"my db\""),
            Ok(Command::Action {
                verb: "PAUSE".into(),
                arg: Some("my db".into())
            })
        );
        assert_eq!(
            parse("RESUME"),
            Ok(Command::Action {
                verb: "RESUME".into(),
                arg: None
            })
        );
        assert_eq!(
            parse("set query_wait_timeout = '5s'"),
            Ok(Command::Set {
                key: "query_wait_timeout".into(),
                value: "5s".into()
            })
        );
        assert!(parse("").is_err());
        assert_eq!(parse("select version"), Ok(Command::Show("VERSION".into())));
        assert_eq!(
            parse("set default_pool_size to 30"),
            Ok(Command::Set {
                key: "default_pool_size".into(),
                value: "30".into()
            })
        );
        assert!(parse("show").is_err());
        assert!(parse("show pools extra").is_err());
        assert!(parse("drop table x").is_err());
    }
}
