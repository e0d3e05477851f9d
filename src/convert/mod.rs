//! `sluice convert`: PgBouncer's pgbouncer.ini (with its includes) to sluice's pooler.toml.
//! Every key is either written under sluice's name for it or kept as a comment saying why not;
//! each one whose loss changes behaviour is also a warning. The TOML is built with toml_edit, so
//! every value is escaped by the TOML writer, never by hand.

mod catalogue;
mod connstr;
mod ini;
mod values;

pub use catalogue::markdown_table;

use catalogue::{Fate, KeyInfo, Section};
use ini::{Entry, Origin};
use std::path::Path;
use toml_edit::{DocumentMut, Item, Table, Value};
use values::Converted;

/// A pgbouncer.ini that cannot be read, located by file, line and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default(), if key.is_empty() { String::new() } else { format!(": {key}") })]
pub struct ConvertError {
    /// The file at fault.
    pub file: String,
    /// 1-based line, when the problem is on one.
    pub line: Option<usize>,
    /// The key (or line text) at fault; empty when about the whole file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConvertError {
    fn at(origin: &Origin, key: &str, message: String) -> Self {
        ConvertError {
            file: origin.file.clone(),
            line: Some(origin.line),
            key: key.to_string(),
            message,
        }
    }

    fn file(file: &str, message: String) -> Self {
        ConvertError {
            file: file.to_string(),
            line: None,
            key: String::new(),
            message,
        }
    }
}

/// The result of a conversion: pooler.toml's text and the warnings for stderr.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// sluice's configuration.
    pub toml: String,
    /// One line per key whose absence (or changed value) makes sluice behave differently from
    /// PgBouncer with the input file.
    pub warnings: Vec<String>,
}

/// Converts the pgbouncer.ini at `path` (and the files it includes).
pub fn convert_file(path: &Path) -> Result<Conversion, ConvertError> {
    let entries = ini::read(path)?;
    let mut out = Builder::default();
    // [pgbouncer] first: a database without a host uses its unix_socket_dir.
    for e in entries.iter().filter(|e| e.section == "pgbouncer") {
        out.pgbouncer_key(e)?;
    }
    out.pgbouncer_defaults();
    for e in &entries {
        match e.section.as_str() {
            "pgbouncer" => {}
            "databases" => out.database(e)?,
            "users" => out.user(e)?,
            "peers" => out.peer(e)?,
            other => {
                return Err(ConvertError::at(
                    &e.origin,
                    &e.key,
                    format!(
                        "unknown section [{other}]; PgBouncer has [pgbouncer], [databases], [users] and [peers]"
                    ),
                ));
            }
        }
    }
    Ok(out.finish(path))
}

/// The document being built, with the comments and warnings gathered on the way.
#[derive(Default)]
struct Builder {
    pooler: Table,
    pooler_notes: Vec<String>,
    databases: Vec<(String, Table, Vec<String>)>,
    users: Vec<(String, Table, Vec<String>)>,
    peers: Vec<(String, Table, Vec<String>)>,
    warnings: Vec<String>,
    unix_socket_dir: Option<String>,
}

/// Keys whose values are secrets: never echoed in comments.
fn secret(key: &str) -> bool {
    key.contains("password") || key == "auth_ldap_options"
}

impl Builder {
    fn warn(&mut self, origin: &Origin, key: &str, why: &str) {
        self.warnings.push(format!("{origin}: {key}: {why}"));
        self.pooler_notes
            .push(format!("{origin}: {key}: not converted: {why}"));
    }

    /// One `[pgbouncer]` line.
    fn pgbouncer_key(&mut self, e: &Entry) -> Result<(), ConvertError> {
        let shown = if secret(&e.key) {
            format!("{} = (secret)", e.key)
        } else {
            format!("{} = {}", e.key, e.value)
        };
        let Some(info) = catalogue::lookup(Section::Pgbouncer, &e.key) else {
            self.warn(&e.origin, &shown, "not a PgBouncer 1.26 setting");
            return Ok(());
        };
        if e.key == "unix_socket_dir" {
            self.unix_socket_dir = Some(e.value.clone());
        }
        let note = |why: &str| format!("{}: {shown}: not converted: {why}", e.origin);
        match info.fate {
            Fate::Same | Fate::Renamed(_) => {
                let converted = values::convert(info.name, info.kind, &e.value, false)
                    .map_err(|why| ConvertError::at(&e.origin, &e.key, why))?;
                let target = target_name(info);
                match converted {
                    Converted::Value(v, n) => {
                        if let Some(n) = n {
                            self.pooler_notes.push(format!("{}: {shown}: {n}", e.origin));
                            // A listen address left out or narrowed changes who can connect.
                            if info.name == "listen_addr" {
                                self.warnings.push(format!("{}: listen_addr: {n}", e.origin));
                            }
                        }
                        self.pooler.insert(target, Item::Value(v));
                    }
                    Converted::Dropped { note: why, warn } => {
                        self.pooler_notes.push(note(&why));
                        if warn {
                            self.warnings.push(format!("{}: {}: {why}", e.origin, e.key));
                        }
                    }
                }
            }
            Fate::Unsupported(why) => {
                // A value equal to PgBouncer's default changes nothing when dropped.
                let is_default = info.default.is_some_and(|d| same_text(info, d, &e.value));
                self.pooler_notes.push(note(&format!("unsupported: {why}")));
                if !is_default {
                    self.warnings
                        .push(format!("{}: {}: unsupported: {why}", e.origin, e.key));
                }
            }
            Fate::Meaningless(why) => self.pooler_notes.push(note(&format!("not needed: {why}"))),
        }
        Ok(())
    }

    /// PgBouncer's defaults where sluice's own differ, for keys the file leaves out, so the
    /// converted config behaves as the PgBouncer one did.
    fn pgbouncer_defaults(&mut self) {
        let sluice = toml::Table::try_from(crate::config::PoolerConfig::default()).unwrap_or_default();
        for info in catalogue::KEYS.iter().filter(|k| k.section == Section::Pgbouncer) {
            let (Fate::Same, Some(default)) = (info.fate, info.default) else {
                continue;
            };
            if self.pooler.contains_key(info.name) {
                continue;
            }
            let Ok(Converted::Value(v, _)) = values::convert(info.name, info.kind, default, false) else {
                continue;
            };
            let ours = sluice.get(info.name);
            if ours.is_some_and(|ours| same_value(ours, &v)) {
                continue;
            }
            let ours = ours.map_or("not set".to_string(), |o| o.to_string());
            self.pooler_notes.push(format!(
                "{} = {default}: PgBouncer's default, written out (sluice's default is {ours})",
                info.name
            ));
            self.pooler.insert(info.name, Item::Value(v));
        }
        if !self.pooler.contains_key("listen_addr") {
            let why = "not set in PgBouncer means the unix socket only; sluice always listens on TCP too (127.0.0.1 by default)";
            self.warnings.push(format!("listen_addr: {why}"));
            self.pooler_notes.push(format!("listen_addr: {why}"));
        }
    }

    /// One `[databases]` line: a connection string.
    fn database(&mut self, e: &Entry) -> Result<(), ConvertError> {
        if e.key.eq_ignore_ascii_case("pgbouncer") || e.key.eq_ignore_ascii_case("sluice") {
            self.warn(
                &e.origin,
                &e.key,
                "the name of the admin console cannot be a database",
            );
            return Ok(());
        }
        let (mut table, mut notes) =
            self.connection_string(e, Section::Database, "connection", "connects through")?;
        let is_list = table
            .get("host")
            .and_then(Item::as_str)
            .is_some_and(|h| h.contains(','));
        if is_list && !table.contains_key("load_balance_hosts") {
            notes.push(
                "load_balance_hosts = round-robin: PgBouncer's default for a host list (sluice's is disable)"
                    .to_string(),
            );
            table.insert("load_balance_hosts", Item::Value(Value::from("round-robin")));
        }
        if table.contains_key("password") && !table.contains_key("user") {
            table.remove("password");
            let why = "password without user: sluice uses a database's password only for its forced user";
            notes.push(format!("{}: password: not converted: {why}", e.origin));
            self.warnings
                .push(format!("{}: {} password: {why}", e.origin, e.key));
        }
        self.databases.push((e.key.clone(), table, notes));
        Ok(())
    }

    /// One `[users]` line.
    fn user(&mut self, e: &Entry) -> Result<(), ConvertError> {
        let pairs = connstr::parse(&e.value).map_err(|why| ConvertError::at(&e.origin, &e.key, why))?;
        let mut table = Table::new();
        let mut notes = Vec::new();
        for (k, v) in &pairs {
            let Some(info) = catalogue::lookup(Section::User, k) else {
                return Err(ConvertError::at(
                    &e.origin,
                    &format!("{} {k}", e.key),
                    format!("unrecognized user setting {k:?}"),
                ));
            };
            self.entry_key(e, info, v, &mut table, &mut notes)?;
        }
        self.users.push((e.key.clone(), table, notes));
        Ok(())
    }

    /// One `[peers]` line: the peer's id and where it listens.
    fn peer(&mut self, e: &Entry) -> Result<(), ConvertError> {
        if e.key.parse::<u16>().is_err() {
            return Err(ConvertError::at(
                &e.origin,
                &e.key,
                "a peer's key must be its peer_id, a number".to_string(),
            ));
        }
        let (table, notes) = self.connection_string(e, Section::Peer, "peer", "reaches the peer through")?;
        self.peers.push((e.key.clone(), table, notes));
        Ok(())
    }

    /// One parameter of a database, user or peer entry.
    /// A `[databases]` or `[peers]` line's connection string as a table (with the notes its
    /// keys left): every key known to `section`, and `host` set to PgBouncer's unix socket
    /// directory when the line has none (`what` and `reaches` word the error and the note).
    fn connection_string(
        &mut self,
        e: &Entry,
        section: Section,
        what: &str,
        reaches: &str,
    ) -> Result<(Table, Vec<String>), ConvertError> {
        let pairs = connstr::parse(&e.value).map_err(|why| ConvertError::at(&e.origin, &e.key, why))?;
        let mut table = Table::new();
        let mut notes = Vec::new();
        for (k, v) in &pairs {
            let Some(info) = catalogue::lookup(section, k) else {
                return Err(ConvertError::at(
                    &e.origin,
                    &format!("{} {k}", e.key),
                    format!("unrecognized {what} parameter {k:?}"),
                ));
            };
            self.entry_key(e, info, v, &mut table, &mut notes)?;
        }
        if !table.contains_key("host") {
            let dir = self
                .unix_socket_dir
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/tmp".to_string());
            notes.push(format!(
                "host not set: PgBouncer {reaches} the unix socket in {dir}"
            ));
            table.insert("host", Item::Value(Value::from(dir)));
        }
        Ok((table, notes))
    }

    fn entry_key(
        &mut self,
        e: &Entry,
        info: &KeyInfo,
        raw: &str,
        table: &mut Table,
        notes: &mut Vec<String>,
    ) -> Result<(), ConvertError> {
        let label = format!("{} {}", e.key, info.name);
        match info.fate {
            Fate::Same | Fate::Renamed(_) => {
                let converted = values::convert(info.name, info.kind, raw, true)
                    .map_err(|why| ConvertError::at(&e.origin, &label, why))?;
                match converted {
                    Converted::Value(v, n) => {
                        if let Some(n) = n {
                            notes.push(format!("{}: {}: {n}", e.origin, info.name));
                        }
                        table.insert(target_name(info), Item::Value(v));
                    }
                    Converted::Dropped { note, warn } => {
                        notes.push(format!("{}: {}: not converted: {note}", e.origin, info.name));
                        if warn {
                            self.warnings.push(format!("{}: {label}: {note}", e.origin));
                        }
                    }
                }
            }
            Fate::Unsupported(why) => {
                notes.push(format!(
                    "{}: {}: not converted: unsupported: {why}",
                    e.origin, info.name
                ));
                self.warnings
                    .push(format!("{}: {label}: unsupported: {why}", e.origin));
            }
            Fate::Meaningless(why) => {
                notes.push(format!(
                    "{}: {}: not converted: not needed: {why}",
                    e.origin, info.name
                ));
            }
        }
        Ok(())
    }

    /// The finished document.
    fn finish(self, path: &Path) -> Conversion {
        let mut doc = DocumentMut::new();
        let mut pooler = self.pooler;
        let mut head = vec![
            format!(
                "sluice configuration converted by `sluice convert` from {}.",
                path.display()
            ),
            "Keys that were not converted are kept below as comments saying why.".to_string(),
        ];
        head.extend(self.pooler_notes);
        pooler.decor_mut().set_prefix(comment_block(&head));
        doc.insert("pooler", Item::Table(pooler));
        for (name, entries, title) in [
            ("databases", self.databases, "database"),
            ("users", self.users, "user"),
            ("peers", self.peers, "peer"),
        ] {
            if entries.is_empty() {
                continue;
            }
            let mut parent = Table::new();
            parent.set_implicit(true);
            for (entry, mut table, notes) in entries {
                if !notes.is_empty() {
                    let mut lines = vec![format!("{title} {entry:?}:")];
                    lines.extend(notes);
                    table.decor_mut().set_prefix(comment_block(&lines));
                }
                parent.insert(&entry, Item::Table(table));
            }
            doc.insert(name, Item::Table(parent));
        }
        let mut toml = doc.to_string();
        if !toml.ends_with('\n') {
            toml.push('\n');
        }
        Conversion {
            toml,
            warnings: self.warnings,
        }
    }
}

/// The sluice key a PgBouncer key becomes.
fn target_name(info: &KeyInfo) -> &'static str {
    match info.fate {
        Fate::Renamed(to) => to,
        _ => info.name,
    }
}

/// Whether `raw` means the same as PgBouncer's default `default` for this key.
fn same_text(info: &KeyInfo, default: &str, raw: &str) -> bool {
    match (
        values::by_kind(info.kind, default),
        values::by_kind(info.kind, raw),
    ) {
        (Ok(a), Ok(b)) => a.to_string().trim() == b.to_string().trim(),
        _ => default == raw,
    }
}

/// Whether a converted value equals sluice's default (durations compared as durations).
fn same_value(ours: &toml::Value, converted: &Value) -> bool {
    match (ours, converted) {
        (toml::Value::String(a), Value::String(b)) => {
            let (a, b) = (a.as_str(), b.value().as_str());
            match (crate::config::parse_duration(a), crate::config::parse_duration(b)) {
                (Ok(x), Ok(y)) => x == y,
                _ => a.eq_ignore_ascii_case(b),
            }
        }
        (toml::Value::Integer(a), Value::Integer(b)) => a == b.value(),
        (toml::Value::Boolean(a), Value::Boolean(b)) => a == b.value(),
        _ => ours.to_string() == converted.to_string().trim(),
    }
}

/// `# line` comments, one per note, with control characters made harmless.
fn comment_block(lines: &[String]) -> String {
    let mut out = String::new();
    for line in lines {
        let clean: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        out.push_str("# ");
        out.push_str(&clean);
        out.push('\n');
    }
    out
}
