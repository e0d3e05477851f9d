//! Turning one pgbouncer.ini value into the TOML value sluice reads for the same key, by the
//! value's kind (seconds become durations, 0/1 become booleans, comma lists become arrays),
//! with the few keys whose values differ between the two spelled out.

use super::catalogue::Kind;
use crate::config::{format_duration, parse_duration};
use std::path::Path;
use std::time::Duration;
use toml_edit::{Array, Value};

/// What becomes of one value.
#[derive(Debug)]
pub(crate) enum Converted {
    /// Written under the sluice key, with an optional note on how it was changed.
    Value(Value, Option<String>),
    /// Left out; the note says why, and `warn` whether dropping it changes behaviour.
    Dropped {
        /// Why it is not written.
        note: String,
        /// Whether sluice behaves differently without it.
        warn: bool,
    },
}

fn dropped(note: impl Into<String>, warn: bool) -> Result<Converted, String> {
    Ok(Converted::Dropped {
        note: note.into(),
        warn,
    })
}

fn keep(value: impl Into<Value>) -> Result<Converted, String> {
    Ok(Converted::Value(value.into(), None))
}

/// The value as its kind: Err says why it cannot be read (an unparseable config).
pub(crate) fn by_kind(kind: Kind, raw: &str) -> Result<Value, String> {
    Ok(match kind {
        Kind::Text => Value::from(raw),
        Kind::Int => Value::from(
            raw.parse::<i64>()
                .map_err(|_| format!("invalid integer {raw:?}"))?,
        ),
        Kind::Bool => Value::from(parse_bool(raw)?),
        Kind::Seconds => Value::from(format_duration(parse_duration(raw)?)),
        Kind::Millis => {
            let ms = raw
                .parse::<u64>()
                .map_err(|_| format!("invalid number of milliseconds {raw:?}"))?;
            Value::from(format_duration(Duration::from_millis(ms)))
        }
        Kind::List => {
            let mut array = Array::new();
            for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                array.push(item);
            }
            Value::Array(array)
        }
    })
}

/// PgBouncer's booleans: 0/1, on/off, yes/no, true/false.
fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Ok(true),
        "0" | "off" | "no" | "false" => Ok(false),
        _ => Err(format!("invalid boolean {raw:?}; expected 0 or 1")),
    }
}

/// Converts the value of `name` (a key sluice has under the same name); `per_entry` is true in
/// `[databases]` and `[users]`.
pub(crate) fn convert(name: &str, kind: Kind, raw: &str, per_entry: bool) -> Result<Converted, String> {
    match name {
        "pool_mode" => match raw.to_ascii_lowercase().as_str() {
            mode @ ("session" | "transaction") => keep(mode),
            "statement" => dropped(
                "pool_mode = statement is unsupported (sluice pools per transaction or per session); the transaction mode applies instead",
                true,
            ),
            _ => Err(format!(
                "invalid pool_mode {raw:?}; expected session, transaction or statement"
            )),
        },
        "auth_type" => match raw.to_ascii_lowercase().as_str() {
            t @ ("trust" | "md5" | "scram-sha-256" | "plain" | "cert" | "hba") => keep(t),
            t @ ("any" | "ldap" | "pam") => dropped(
                format!("auth_type = {t} is unsupported; sluice's default scram-sha-256 applies"),
                true,
            ),
            _ => Err(format!("invalid auth_type {raw:?}")),
        },
        "query_wait_timeout" => {
            if per_entry && raw.trim() == "-1" {
                return dropped("-1 means not set", false);
            }
            let value = by_kind(kind, raw)?;
            if value.as_str() == Some("0") {
                return dropped(
                    "0 (wait forever) is unsupported: every wait in sluice has a deadline; the inherited query_wait_timeout applies",
                    true,
                );
            }
            Ok(Converted::Value(value, None))
        }
        "server_check_query" if raw == "<empty>" => dropped(
            "PgBouncer's empty check query; sluice's default check (select 1) does the same",
            false,
        ),
        "client_tls_ciphers" | "server_tls_ciphers" => match raw.to_ascii_lowercase().as_str() {
            "default" | "secure" | "fast" | "normal" => keep("default"),
            _ => dropped(
                "OpenSSL cipher lists are not understood; sluice offers rustls's default suites (name rustls suites to choose)",
                true,
            ),
        },
        "client_tls_protocols" | "server_tls_protocols" => tls_protocols(raw),
        "port" if raw.contains(',') => keep(raw),
        "listen_addr" => listen_addr(raw),
        key if PATH_KEYS.contains(&key) && !raw.is_empty() && Path::new(raw).is_relative() => {
            // PgBouncer opens these relative to its working directory, sluice relative to
            // the config file: written out absolute, as seen from where the conversion runs.
            match std::env::current_dir() {
                Ok(cwd) => {
                    let absolute = cwd.join(raw).display().to_string();
                    let note = format!(
                        "relative path made absolute ({absolute}): sluice resolves relative paths against the config file's directory, PgBouncer against its working directory"
                    );
                    Ok(Converted::Value(Value::from(absolute), Some(note)))
                }
                Err(_) => Ok(Converted::Value(
                    Value::from(raw),
                    Some("relative path: sluice resolves it against the config file's directory".to_string()),
                )),
            }
        }
        "tcp_keepcnt" | "tcp_keepidle" | "tcp_keepintvl" if raw.trim() == "0" => dropped(
            "0 means the operating system's default, as when the key is left out",
            false,
        ),
        _ => Ok(Converted::Value(by_kind(kind, raw)?, None)),
    }
}

/// Keys whose values are file paths.
const PATH_KEYS: &[&str] = &[
    "logfile",
    "pidfile",
    "auth_file",
    "auth_hba_file",
    "client_tls_key_file",
    "client_tls_cert_file",
    "client_tls_ca_file",
    "server_tls_ca_file",
    "server_tls_key_file",
    "server_tls_cert_file",
];

/// listen_addr: sluice takes IP addresses, `*` (IPv4 only) and `localhost`; PgBouncer's `*` is
/// every IPv4 and IPv6 address, and it resolves host names.
fn listen_addr(raw: &str) -> Result<Converted, String> {
    let mut kept = Vec::new();
    let mut notes = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "*" || item == "localhost" || item.parse::<std::net::IpAddr>().is_ok() {
            kept.push(item);
        } else {
            notes.push(format!(
                "{item} left out: sluice listens on IP addresses, not host names"
            ));
        }
    }
    if kept.contains(&"*") && !kept.contains(&"::") {
        notes.push(
            "sluice's * is every IPv4 address; PgBouncer's also covers IPv6: add \"::\" to listen on IPv6"
                .to_string(),
        );
    }
    if kept.is_empty() {
        return dropped(
            format!("no address sluice can listen on in {raw:?}; sluice's default (127.0.0.1) applies"),
            true,
        );
    }
    let value = Value::from(kept.join(", "));
    Ok(Converted::Value(
        value,
        (!notes.is_empty()).then(|| notes.join("; ")),
    ))
}

/// TLS versions: rustls speaks TLS 1.2 and 1.3 only.
fn tls_protocols(raw: &str) -> Result<Converted, String> {
    let mut kept = Vec::new();
    let mut lost = Vec::new();
    for item in raw.split(',').map(|s| s.trim().to_ascii_lowercase()) {
        match item.as_str() {
            "secure" | "tlsv1.2" | "tlsv1.3" | "all" => kept.push(item),
            "legacy" => kept.push("all".to_string()),
            "tlsv1.0" | "tlsv1.1" => lost.push(item),
            "" => {}
            _ => return Err(format!("unknown TLS protocol {item:?}")),
        }
    }
    if kept.is_empty() {
        return dropped(
            format!("{raw} only: sluice (rustls) speaks TLS 1.2 and 1.3; its default (secure) applies"),
            true,
        );
    }
    let note = (!lost.is_empty())
        .then(|| format!("{} dropped: rustls speaks TLS 1.2 and 1.3 only", lost.join(", ")));
    Ok(Converted::Value(Value::from(kept.join(",")), note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_convert() {
        assert_eq!(
            by_kind(Kind::Seconds, "1.5").map(|v| v.to_string()),
            Ok("\"1.5s\"".into())
        );
        assert_eq!(
            by_kind(Kind::Seconds, "0.25").map(|v| v.to_string()),
            Ok("\"250ms\"".into())
        );
        assert_eq!(
            by_kind(Kind::Millis, "30000").map(|v| v.to_string()),
            Ok("\"30s\"".into())
        );
        assert_eq!(by_kind(Kind::Bool, "1").map(|v| v.to_string()), Ok("true".into()));
        assert_eq!(
            by_kind(Kind::List, "a, b ,c").map(|v| v.to_string()),
            Ok("[\"a\", \"b\", \"c\"]".into())
        );
        assert!(by_kind(Kind::Int, "ten").is_err());
        assert!(by_kind(Kind::Bool, "maybe").is_err());
    }
}
