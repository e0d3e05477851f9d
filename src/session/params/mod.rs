//! Session parameters a client asked for (startup packet, later SETs: reported by the server, or
//! read back by `settings.rs` after the watch below saw a SET, RESET, DISCARD ALL or set_config)
//! and their restoration on whichever server the client gets: only what differs is SET, in one
//! round trip, before the client's own request. RESET keeps PostgreSQL's meaning (the client's
//! own startup values).

mod wishes;

use crate::server::ServerConn;
use crate::upgrade::format::{ParamState, StartupState};
use compact_str::CompactString;
use std::collections::BTreeMap;
use wishes::{Startup, Wanted, Wishes, key_of};

/// Startup parameters that are about the connection, not session settings.
const CONNECTION_KEYS: &[&str] = &["user", "database", "replication", "options"];

/// Parameters that say who the session is. Never synced: a report of one means a client changed
/// the role or session authorization, which the release path undoes before anyone else gets the
/// server.
const IDENTITY: &[&str] = &["is_superuser", "session_authorization", "role"];

/// Parameters no session can set (PostgreSQL reports some of them); syncing one makes PostgreSQL
/// refuse the whole sync.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_version_num",
    "server_encoding",
    "integer_datetimes",
    "in_hot_standby",
    "lc_collate",
    "lc_ctype",
    "block_size",
    "data_checksums",
    "max_identifier_length",
    "max_function_args",
    "max_index_keys",
    "segment_size",
    "wal_block_size",
    "wal_segment_size",
    "shared_memory_size",
    "ssl_library",
];

/// True for a parameter that says who the session is (see [`IDENTITY`]).
pub(super) fn is_identity(name: &str) -> bool {
    IDENTITY.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// True for a parameter sluice never SETs or RESETs on a server, nor keeps as a client's wish.
fn never_synced(name: &str) -> bool {
    is_identity(name) || READ_ONLY.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// What a client expects of the session state of any server it is given.
#[derive(Debug, Clone, Default)]
pub(super) struct ClientParams {
    wanted: Wishes,
    /// Hash of the (name, value) wishes: a server left in this client's state carries it, so
    /// the next checkout by a client with the same wishes needs no sync at all.
    fingerprint: u64,
    /// When the server's settings are read back after this client's transactions.
    read_back: ReadBack,
}

/// When a client's server has its session settings read back (`settings.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ReadBack {
    /// After a transaction the watch (`settings.rs`) saw change them.
    #[default]
    OnChange,
    /// After every transaction: the client prepared a statement that calls `set_config`, and
    /// its executions (Bind/Execute, no text to see) may change settings at any time.
    EveryTransaction,
}

/// Why a startup parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadParam(pub String);

impl ClientParams {
    /// Collects the session settings from startup parameters, dropping connection keys and the
    /// names in `ignored`, and unpacking `-c name=value` / `--name=value` from `options`.
    pub(super) fn from_startup(
        params: &[(String, String)],
        ignored: &[String],
    ) -> Result<ClientParams, BadParam> {
        let mut out = ClientParams::default();
        let is_ignored = |n: &str| ignored.iter().any(|i| i.eq_ignore_ascii_case(n));
        // A role or session authorization would be applied to every server the client gets and
        // outlive its transactions there; read-only ones cannot be set at all.
        let refuse = |n: &str| {
            BadParam(format!(
                "unsupported startup parameter: {n} (sluice does not change who a pooled session is, \
                 and read-only parameters cannot be set)"
            ))
        };
        for (name, value) in params {
            if name == "options" {
                for (n, v) in parse_options(value)? {
                    if is_ignored(&n) {
                        continue;
                    }
                    if never_synced(&n) {
                        return Err(refuse(&n));
                    }
                    out.want(&n, &v);
                }
            } else if !CONNECTION_KEYS.contains(&name.as_str())
                && !name.starts_with("_pq_.")
                && !is_ignored(name)
            {
                if never_synced(name) {
                    return Err(refuse(name));
                }
                out.want(name, value);
            }
        }
        Ok(out)
    }

    /// The wishes in the upgrade's transfer format (docs/upgrades.md), and whether settings are
    /// read back after every transaction.
    pub(super) fn export(&self) -> (Vec<ParamState>, bool) {
        let state = |w: &Wanted| ParamState {
            name: w.name.to_string(),
            requested: w.requested.to_string(),
            canonical: w.canonical().map(str::to_string),
            startup: match w.startup() {
                Startup::Absent => StartupState::Absent,
                Startup::Same => StartupState::Same,
                Startup::Was(v) => StartupState::Was(v.to_string()),
            },
        };
        let wishes = self.wanted.0.iter().map(state).collect();
        (wishes, self.reads_back_always())
    }

    /// Wishes a client brought from the process it was handed over from.
    pub(super) fn import(wishes: Vec<ParamState>, read_back_always: bool) -> ClientParams {
        let mut out = ClientParams::default();
        for p in wishes {
            let startup = match p.startup {
                StartupState::Absent => Startup::Absent,
                StartupState::Same => Startup::Same,
                StartupState::Was(v) => Startup::Was(v.into()),
            };
            let mut wanted = Wanted::new(p.name.into(), p.requested.into(), startup);
            if let Some(c) = p.canonical {
                wanted.set_canonical(&c);
            }
            out.wanted.insert(wanted);
        }
        out.refresh_fingerprint();
        if read_back_always {
            out.read_back_always();
        }
        out
    }

    /// The client prepared a statement that calls `set_config` (or `session_state_check =
    /// "always"`): from now on its server's settings are read back after every transaction.
    pub(super) fn read_back_always(&mut self) {
        self.read_back = ReadBack::EveryTransaction;
    }

    /// True when the server's settings are read back after each of this client's transactions.
    pub(super) fn reads_back_always(&self) -> bool {
        self.read_back == ReadBack::EveryTransaction
    }

    /// The fingerprint of the current wishes.
    pub(super) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn refresh_fingerprint(&mut self) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (k, w) in self.wanted.iter() {
            (k.as_ref(), &*w.requested).hash(&mut h);
        }
        // Never 0, so a fresh server (fingerprint None) never matches by accident.
        self.fingerprint = h.finish() | 1;
    }

    fn want(&mut self, name: &str, value: &str) {
        self.wanted
            .insert(Wanted::new(name.into(), value.into(), Startup::Same));
        self.refresh_fingerprint();
    }

    /// After a transaction that may have changed settings, `session` is every setting the server
    /// now holds at session level (pg_settings `source = 'session'`: what the client SET, and
    /// what sluice applied for it), as (name, current value). The client's wishes become exactly
    /// that: a setting it SET is kept (and follows it to its next server); a wish no longer held
    /// at session level was reset (`RESET`, `RESET ALL`, `SET .. TO DEFAULT`, `DISCARD ALL`), which
    /// on PostgreSQL means the client's own startup value, not the server's login value. Records
    /// on `server` which unreported settings it carries, so the next client's sync resets them.
    /// Returns the startup values that came back (name, value), which the client has to be told.
    pub(super) fn reconcile(&mut self, session: &[(String, String)]) -> Vec<(String, String)> {
        let now = session_map(session);
        let mut restored = Vec::new();
        let gone: Vec<String> = self
            .wanted
            .iter()
            .filter(|(k, _)| !now.contains_key(k.as_ref()))
            .map(|(k, _)| k.into_owned())
            .collect();
        for key in gone {
            let Some(w) = self.wanted.get_mut(&key) else {
                continue;
            };
            match w.take_startup() {
                Startup::Was(value) => {
                    w.requested = CompactString::from(&*value);
                    w.update(|r| r.canonical = None);
                    restored.push((w.name.to_string(), w.requested.to_string()));
                }
                // Still the startup value: the server may hold it from its own login.
                Startup::Same => {}
                Startup::Absent => self.wanted.remove(&key),
            }
        }
        for (key, (name, value)) in &now {
            match self.wanted.get_mut(key) {
                Some(w) if *w.requested == **value || w.canonical() == Some(*value) => {}
                Some(w) => w.replace_requested(value),
                None => self
                    .wanted
                    .insert(Wanted::new((*name).into(), (*value).into(), Startup::Absent)),
            }
        }
        self.refresh_fingerprint();
        restored
    }

    /// Records on `server` the unreported settings it holds at session level (`session`, as
    /// read back), so that the next client's sync resets those that client does not want.
    pub(super) fn record_carried(session: &[(String, String)], server: &mut ServerConn) {
        let reported = lowercase_map(&server.params);
        server.applied = session_map(session)
            .into_iter()
            .filter(|(k, _)| !reported.contains_key(k))
            .map(|(k, (_, v))| (k, v.to_string()))
            .collect();
    }

    /// The value to report to the client for a parameter at login, if it asked for one.
    pub(super) fn reported_value(&self, name: &str) -> Option<&str> {
        self.wanted.get(&key_of(name)).map(|w| &*w.requested)
    }

    /// The server reported a new value while this client held it (the client ran SET): remember
    /// it as the client's wish, so its next server gets it too.
    /// Identity and read-only parameters are not wishes: they are never synced.
    pub(super) fn observe_server_report(&mut self, name: &str, value: &str) {
        if never_synced(name) {
            return;
        }
        match self.wanted.get_mut(&key_of(name)) {
            Some(w) if w.canonical() == Some(value) || *w.requested == *value => {
                w.set_canonical(value);
            }
            Some(w) => {
                w.replace_requested(value);
                self.refresh_fingerprint();
            }
            None => {
                self.wanted
                    .insert(Wanted::new(name.into(), value.into(), Startup::Absent));
                self.refresh_fingerprint();
            }
        }
    }

    /// The SQL that brings `server` to this client's settings, or None when it already matches.
    /// `defaults` are the values servers of the pool report at login.
    pub(super) fn sync_sql(
        &self,
        server: &ServerConn,
        defaults: &BTreeMap<String, String>,
    ) -> Option<String> {
        let mut sets = Vec::new();
        let mut resets = String::new();
        let reported = lowercase_map(&server.params);
        // After a rollback or a reset query (fingerprint None) what the server carries of the
        // unreported settings is not known for sure: those the client wants are SET again.
        let trusted = server.params_fingerprint.is_some();
        for (key, w) in self.wanted.iter() {
            if never_synced(&key) {
                continue;
            }
            let matches = match reported.get(key.as_ref()) {
                Some(current) => *current == w.current(),
                None => {
                    trusted && server.applied.get(key.as_ref()).map(String::as_str) == Some(&*w.requested)
                }
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
                && !never_synced(key)
                && let Some(default) = defaults.get(key)
                && default != current
            {
                resets.push_str(&format!("RESET {};", quote_ident(key)));
            }
        }
        for key in server.applied.keys() {
            if !self.wanted.contains_key(key) && !reported.contains_key(key) && !never_synced(key) {
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
    pub(super) fn after_sync(&mut self, server: &mut ServerConn) {
        let reported = lowercase_map(&server.params);
        server.applied.retain(|k, _| self.wanted.contains_key(k));
        for w in self.wanted.0.iter_mut() {
            let key = key_of(&w.name);
            match reported.get(key.as_ref()) {
                Some(v) => {
                    let v = *v;
                    drop(key);
                    w.set_canonical(v);
                }
                None => {
                    let key = key.into_owned();
                    server.applied.insert(key, w.requested.to_string());
                }
            }
        }
    }
}

/// Session-level settings by lower-cased name, without those sluice never syncs.
fn session_map(session: &[(String, String)]) -> BTreeMap<String, (&str, &str)> {
    session
        .iter()
        .filter(|(n, _)| !never_synced(n))
        .map(|(n, v)| (n.to_ascii_lowercase(), (n.as_str(), v.as_str())))
        .collect()
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
                .ok_or_else(|| BadParam(format!("options: -c without a setting in \"{options}\"")))?
        } else if let Some(s) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            s.to_string()
        } else {
            return Err(BadParam(format!("unsupported options word \"{w}\"")));
        };
        let (n, v) = setting
            .split_once('=')
            .ok_or_else(|| BadParam(format!("options: \"{setting}\" is not name=value")))?;
        if n.is_empty() {
            return Err(BadParam(format!("options: \"{setting}\" names no setting")));
        }
        out.push((n.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wish, kept for the client's whole life, stays one 64-byte block with its usual name
    /// and value inline (`application_name` and a value of up to 24 bytes allocate nothing) and
    /// no rare part while the server spells it the same and it is still the startup value.
    #[test]
    fn a_usual_wish_is_one_64_byte_block() {
        assert!(
            std::mem::size_of::<Wanted>() <= 64,
            "Wanted is {} bytes",
            std::mem::size_of::<Wanted>()
        );
        let mut p = ClientParams::from_startup(
            &[("application_name".into(), "a_twenty_four_byte_value".into())],
            &[],
        )
        .unwrap(); // ok: literal test input
        p.observe_server_report("application_name", "a_twenty_four_byte_value");
        let w = p.wanted.get("application_name").unwrap(); // ok: just asked for
        assert!(!w.name.is_heap_allocated() && !w.requested.is_heap_allocated());
        assert!(w.rare.is_none());
        // A SET makes the startup value rare; RESET (reconcile without it) returns to it.
        p.observe_server_report("application_name", "other");
        let set = p.wanted.get("application_name").unwrap(); // ok: present
        assert_eq!(set.startup(), &Startup::Was("a_twenty_four_byte_value".into()));
        assert_eq!(p.reconcile(&[]).len(), 1);
        let w = p.wanted.get("application_name").unwrap(); // ok: present
        assert_eq!(&*w.requested, "a_twenty_four_byte_value");
        assert!(w.rare.is_none());
    }

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
    fn a_reset_brings_back_startup_wishes_and_drops_later_ones() {
        let mut p = ClientParams::from_startup(
            &[
                ("TimeZone".into(), "Asia/Tokyo".into()),
                ("application_name".into(), "app".into()),
            ],
            &[],
        )
        .unwrap(); // ok: literal test input
        let startup = p.fingerprint();
        // The client SETs two startup settings and a new one; the server reports them.
        p.observe_server_report("TimeZone", "America/Lima");
        p.observe_server_report("DateStyle", "German, DMY");
        // RESET ALL: the server reports its login values for the two it reports; read back, the
        // server holds nothing at session level any more.
        p.observe_server_report("TimeZone", "Etc/UTC");
        p.observe_server_report("DateStyle", "ISO, MDY");
        let restored = p.reconcile(&[]);
        assert_eq!(restored, vec![("TimeZone".to_string(), "Asia/Tokyo".to_string())]);
        assert_eq!(p.reported_value("TimeZone"), Some("Asia/Tokyo"));
        assert_eq!(p.reported_value("application_name"), Some("app"));
        assert_eq!(
            p.reported_value("DateStyle"),
            None,
            "a wish made after login goes"
        );
        assert_eq!(
            p.fingerprint(),
            startup,
            "the client wants what it wanted at login"
        );
        // A second reset changes nothing.
        assert!(p.reconcile(&[]).is_empty());
    }

    #[test]
    fn read_back_settings_become_the_clients_and_a_reset_returns_to_startup() {
        let mut p = ClientParams::from_startup(&[("work_mem".into(), "12MB".into())], &[]).unwrap(); // ok: literal test input
        let startup = p.fingerprint();
        // The client SET two unreported settings (one from its startup packet) and its role.
        let set = [
            ("work_mem".to_string(), "20MB".to_string()),
            ("statement_timeout".to_string(), "7s".to_string()),
            ("role".to_string(), "other".to_string()),
        ];
        assert!(p.reconcile(&set).is_empty());
        assert_eq!(p.reported_value("work_mem"), Some("20MB"));
        assert_eq!(p.reported_value("statement_timeout"), Some("7s"));
        assert_eq!(p.reported_value("role"), None, "identity is never a wish");
        assert_ne!(p.fingerprint(), startup);
        // RESET ALL: nothing at session level any more; the startup value comes back.
        assert_eq!(
            p.reconcile(&[]),
            vec![("work_mem".to_string(), "12MB".to_string())]
        );
        assert_eq!(p.reported_value("statement_timeout"), None);
        assert_eq!(p.fingerprint(), startup);
    }

    #[test]
    fn identity_and_read_only_parameters_are_never_wishes() {
        let mut p = ClientParams::default();
        p.observe_server_report("is_superuser", "off");
        p.observe_server_report("session_authorization", "other");
        p.observe_server_report("server_version", "1");
        assert_eq!(p.reported_value("is_superuser"), None);
        assert_eq!(p.reported_value("session_authorization"), None);
        assert_eq!(p.reported_value("server_version"), None);
        for name in ["role", "session_authorization", "is_superuser", "server_encoding"] {
            let startup = [(name.to_string(), "x".to_string())];
            assert!(ClientParams::from_startup(&startup, &[]).is_err(), "{name}");
            let options = [("options".to_string(), format!("-c {name}=x"))];
            assert!(ClientParams::from_startup(&options, &[]).is_err(), "{name}");
            assert!(
                ClientParams::from_startup(&startup, &[name.to_string()]).is_ok(),
                "{name} ignored"
            );
        }
    }

    #[test]
    fn quoting_defeats_injection() {
        assert_eq!(quote_literal("x'; DROP TABLE t; --"), "'x''; DROP TABLE t; --'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
