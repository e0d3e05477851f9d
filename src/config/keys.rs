//! Where things are in config text: known key names per table, unknown-key detection, mapping
//! byte offsets and dotted key paths to line and column.

use super::{DatabaseConfig, MetricsConfig, PeerConfig, PoolerConfig, UserConfig};
use serde::Deserialize;
use serde::de::{self, Visitor};
use std::fmt;
use std::ops::Range;
use toml_edit::{Item, TableLike};

/// A problem about one key, before it is given a line and column.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Problem {
    /// Key path from the document root, e.g. `["databases", "app", "port"]`.
    pub path: Vec<String>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem at `path` (given as string slices).
    pub(super) fn new(path: &[&str], message: impl Into<String>) -> Self {
        Problem {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
        }
    }
}

/// Field names a serde-derived struct accepts, in declaration order.
pub(super) fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The grabber always fails after recording the fields; that failure is expected.
    let _ = T::deserialize(FieldGrabber(&mut fields));
    fields
}

/// A deserializer that only records the field list passed to `deserialize_struct`.
struct FieldGrabber<'a>(&'a mut &'static [&'static str]);

/// The grabber's (always expected) error.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for FieldGrabber<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// Finds every key (in document order) that no struct accepts. `top` lists the top-level
/// tables; `users.NAME`, `databases.NAME` and `pooler` are checked against their structs. Values
/// of the wrong type are left for serde to report.
pub(super) fn find_unknown_keys(root: &dyn TableLike, top: &[&str]) -> Vec<Problem> {
    let mut found: Vec<(Problem, usize)> = Vec::new();
    check_table(root, &[], top, &mut found);
    if let Some(pooler) = root.get("pooler").and_then(Item::as_table_like) {
        check_table(pooler, &["pooler"], field_names::<PoolerConfig>(), &mut found);
    }
    if let Some(metrics) = root.get("metrics").and_then(Item::as_table_like) {
        check_table(metrics, &["metrics"], field_names::<MetricsConfig>(), &mut found);
    }
    let nested: [(&str, &[&str]); 3] = [
        ("users", field_names::<UserConfig>()),
        ("databases", field_names::<DatabaseConfig>()),
        ("peers", field_names::<PeerConfig>()),
    ];
    for (table, fields) in nested {
        let Some(entries) = root.get(table).and_then(Item::as_table_like) else {
            continue;
        };
        for (name, item) in entries.iter() {
            if let Some(entry) = item.as_table_like() {
                check_table(entry, &[table, name], fields, &mut found);
            }
        }
    }
    found.sort_by_key(|(_, offset)| *offset);
    found.into_iter().map(|(problem, _)| problem).collect()
}

/// Records every key of `table` (at `path`) missing from `known`, with its byte offset.
fn check_table(table: &dyn TableLike, path: &[&str], known: &[&str], out: &mut Vec<(Problem, usize)>) {
    for (name, _) in table.iter() {
        if known.contains(&name) {
            continue;
        }
        let offset = table.key(name).and_then(|k| k.span()).map_or(0, |s| s.start);
        let mut full = path.to_vec();
        full.push(name);
        let hint = closest(name, known)
            .map(|k| format!(" (did you mean {k:?}?)"))
            .unwrap_or_default();
        let message = format!("unknown key {name:?}{hint}");
        out.push((Problem::new(&full, message), offset));
    }
}

/// The known key nearest to a misspelt one, when it is close enough to be a likely typo (the
/// first in declaration order among equally near ones); None when nothing is close.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev_diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev_diag + usize::from(ca != *cb);
            prev_diag = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(prev_diag + 1);
        }
    }
    row[b.len()]
}

/// The path of the innermost key whose key or value contains byte `offset`, with the byte offset
/// where that key starts.
pub(super) fn key_at(root: &dyn TableLike, offset: usize) -> Option<(Vec<String>, usize)> {
    for (name, item) in root.iter() {
        if let Some(inner) = item.as_table_like()
            && let Some((mut path, at)) = key_at(inner, offset)
        {
            path.insert(0, name.to_string());
            return Some((path, at));
        }
        let key_span = root.key(name).and_then(|k| k.span());
        let hit = |span: Option<Range<usize>>| span.is_some_and(|s| s.contains(&offset));
        if hit(key_span.clone()) || hit(item.span()) {
            let at = key_span.map_or(offset, |s| s.start);
            return Some((vec![name.to_string()], at));
        }
    }
    None
}

/// Byte offset where the deepest existing key along `path` starts (the table header or key line
/// of the nearest ancestor when the key itself is absent).
pub(super) fn offset_of(root: &dyn TableLike, path: &[String]) -> Option<usize> {
    let (first, rest) = path.split_first()?;
    let (key, item) = root.get_key_value(first)?;
    let deeper = item.as_table_like().and_then(|t| offset_of(t, rest));
    deeper.or_else(|| key.span().map(|s| s.start))
}

/// 1-based line and column (in chars) of a byte offset in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A dotted key path as written in TOML: bare segments as they are, others quoted.
pub(super) fn dotted(path: &[String]) -> String {
    let bare = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let parts: Vec<String> = path
        .iter()
        .map(|s| if bare(s) { s.clone() } else { format!("{s:?}") })
        .collect();
    parts.join(".")
}

/// Best guess of the dotted key a TOML syntax error at byte `offset` is about: the last table
/// header before it, plus the key on the error's line when that line looks like `key = ...`.
pub(super) fn guess_key(text: &str, offset: usize) -> String {
    let (line_no, _) = line_col(text, offset);
    let mut header = String::new();
    let mut key = String::new();
    for (i, line) in text.lines().take(line_no).enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            if let Some(end) = t.find(']') {
                header = t[..end].trim_start_matches('[').trim().to_string();
            }
            key.clear();
        } else if i + 1 == line_no
            && let Some((k, _)) = t.split_once('=')
        {
            key = k.trim().to_string();
        }
    }
    match (header.is_empty(), key.is_empty()) {
        (_, true) => header,
        (true, false) => key,
        (false, false) => format!("{header}.{key}"),
    }
}
