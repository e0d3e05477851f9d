//! Session parameters a client asked for (startup packet, later SETs the server reported) and
//! their restoration on whichever server the client gets: only what differs is SET, in one round
//! trip, before the client's own request.

use crate::server::ServerConn;
use std::collections::BTreeMap;

/// Startup parameters that are about the connection, not session settings.
const CONNECTION_KEYS: &[&str] = &["user", "database", "replication", "options"];

/// One parameter the client wants.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    /// Name as the client wrote it.
    name: String,
    /// Value as the client wrote it.
    requested: String,
    /// The server's spelling of that value (`utf8` -> `UTF8`), once a server reported it.
    canonical: Option<String>,
}

/// The client's wishes by lower-cased name, kept sorted in a plain vector: a client has a handful,
/// and a BTreeMap would allocate a whole 11-slot node per idle client.
#[derive(Debug, Clone, Default)]
struct Wishes(Vec<(String, Wanted)>);

impl Wishes {
    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    fn insert(&mut self, key: String, value: Wanted) {
        match self.position(&key) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => {
                self.0.insert(i, (key, value));
                // Exactly sized: a client keeps these for its whole life.
                self.0.shrink_to_fit();
            }
        }
    }

    fn get(&self, key: &str) -> Option<&Wanted> {
        self.position(key).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Wanted> {
        self.position(key).ok().map(|i| &mut self.0[i].1)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }
}

impl<'a> IntoIterator for &'a Wishes {
    type Item = (&'a String, &'a Wanted);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (String, Wanted)>, fn(&'a (String, Wanted)) -> Self::Item>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, w)| (k, w))
    }
}

impl<'a> IntoIterator for &'a mut Wishes {
    type Item = (&'a String, &'a mut Wanted);
    type IntoIter =
        std::iter::Map<std::slice::IterMut<'a, (String, Wanted)>, fn(&'a mut (String, Wanted)) -> Self::Item>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter_mut().map(|(k, w)| (&*k, w))
    }
}

/// What a client expects of the session state of any server it is given.
#[derive(Debug, Clone, Default)]
pub struct ClientParams {
    wanted: Wishes,
    /// Hash of the (name, value) wishes: a server left in this client's state carries it, so
    /// the next checkout by a client with the same wishes needs no sync at all.
    fingerprint: u64,
}

/// Why a startup parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParam(pub String);

impl ClientParams {
    /// Collects the session settings from startup parameters, dropping connection keys and the
    /// names in `ignored`, and unpacking `-c name=value` / `--name=value` from `options`.
    pub fn from_startup(params: &[(String, String)], ignored: &[String]) -> Result<ClientParams, BadParam> {
        let mut out = ClientParams::default();
        let is_ignored = |n: &str| ignored.iter().any(|i| i.eq_ignore_ascii_case(n));
        for (name, value) in params {
            if name == "options" {
                for (n, v) in parse_options(value)? {
                    if !is_ignored(&n) {
                        out.want(&n, &v);
                    }
                }
            } else if !CONNECTION_KEYS.contains(&name.as_str())
                && !name.starts_with("_pq_.")
                && !is_ignored(name)
            {
                out.want(name, value);
            }
        }
        Ok(out)
    }

    /// The fingerprint of the current wishes.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn refresh_fingerprint(&mut self) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (k, w) in &self.wanted {
            (k, &w.requested).hash(&mut h);
        }
        // Never 0, so a fresh server (fingerprint None) never matches by accident.
        self.fingerprint = h.finish() | 1;
    }

    fn want(&mut self, name: &str, value: &str) {
        self.wanted.insert(
            name.to_ascii_lowercase(),
            Wanted {
                name: name.to_string(),
                requested: value.to_string(),
                canonical: None,
            },
        );
        self.refresh_fingerprint();
    }

    /// The value to report to the client for a parameter at login, if it asked for one.
    pub fn reported_value(&self, name: &str) -> Option<&str> {
        self.wanted
            .get(&name.to_ascii_lowercase())
            .map(|w| w.requested.as_str())
    }

    /// The server reported a new value while this client held it (the client ran SET): remember
    /// it as the client's wish, so its next server gets it too.
    pub fn observe_server_report(&mut self, name: &str, value: &str) {
        let key = name.to_ascii_lowercase();
        match self.wanted.get_mut(&key) {
            Some(w) if w.canonical.as_deref() == Some(value) || w.requested == value => {
                w.canonical = Some(value.to_string());
            }
            _ => {
                self.wanted.insert(
                    key,
                    Wanted {
                        name: name.to_string(),
                        requested: value.to_string(),
                        canonical: Some(value.to_string()),
                    },
                );
                self.refresh_fingerprint();
            }
        }
    }

    /// The SQL that brings `server` to this client's settings, or None when it already matches.
    /// `defaults` are the values servers of the pool report at login.
    pub fn sync_sql(&self, server: &ServerConn, defaults: &BTreeMap<String, String>) -> Option<String> {
        let mut sets = Vec::new();
        let mut resets = String::new();
        let reported = lowercase_map(&server.params);
        for (key, w) in &self.wanted {
            let matches = match reported.get(key) {
                Some(current) => *current == w.canonical.as_deref().unwrap_or(&w.requested),
                None => server.applied.get(key) == Some(&w.requested),
            };
            if !matches {
                // set_config takes the value as a startup packet would (lists stay lists).
                sets.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    quote_literal(&w.name),
                    quote_literal(&w.requested)
                ));
            }
        }
        let defaults = lowercase_map(defaults);
        for (key, current) in &reported {
            if !self.wanted.contains_key(key)
                && let Some(default) = defaults.get(key)
                && default != current
            {
                resets.push_str(&format!("RESET {};", quote_ident(key)));
            }
        }
        for key in server.applied.keys() {
            if !self.wanted.contains_key(key) && !reported.contains_key(key) {
                resets.push_str(&format!("RESET {};", quote_ident(key)));
            }
        }
        if !sets.is_empty() {
            resets.push_str(&format!("SELECT {};", sets.join(", ")));
        }
        (!resets.is_empty()).then_some(resets)
    }

    /// After `sync_sql` ran: learn the server's spelling of reported values and record which
    /// unreported settings the server now carries.
    pub fn after_sync(&mut self, server: &mut ServerConn) {
        let reported = lowercase_map(&server.params);
        server.applied.retain(|k, _| self.wanted.contains_key(k));
        for (key, w) in &mut self.wanted {
            match reported.get(key) {
                Some(v) => w.canonical = Some(v.to_string()),
                None => {
                    server.applied.insert(key.clone(), w.requested.clone());
                }
            }
        }
    }
}

fn lowercase_map(m: &BTreeMap<String, String>) -> BTreeMap<String, &str> {
    m.iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect()
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Parses libpq's `options`: `-c name=value`, `-cname=value` and `--name=value`, with `\ ` escapes.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, BadParam> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    current.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
                .ok_or_else(|| BadParam(format!("options: -c without a setting in {options:?}")))?
        } else if let Some(s) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            s.to_string()
        } else {
            return Err(BadParam(format!("unsupported options word {w:?}")));
        };
        let (n, v) = setting
            .split_once('=')
            .ok_or_else(|| BadParam(format!("options: {setting:?} is not name=value")))?;
        out.push((n.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_unpacked_and_connection_keys_dropped() {
        let p = ClientParams::from_startup(
            &[
                ("user".into(), "u".into()),
                ("database".into(), "d".into()),
                ("options".into(), "-c search_path=a\\ b --work-mem=64MB".into()),
                ("application_name".into(), "psql".into()),
                ("extra_float_digits".into(), "2".into()),
            ],
            &["extra_float_digits".to_string()],
        )
        .unwrap();
        assert_eq!(p.reported_value("search_path"), Some("a b"));
        assert_eq!(p.reported_value("work_mem"), Some("64MB"));
        assert_eq!(p.reported_value("application_name"), Some("psql"));
        assert_eq!(p.reported_value("extra_float_digits"), None);
        assert_eq!(p.reported_value("user"), None);
        assert!(parse_options("-x").is_err());
    }

    #[test]
    fn quoting_defeats_injection() {
        assert_eq!(quote_literal("x'; DROP TABLE t; --"), "'x''; DROP TABLE t; --'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
