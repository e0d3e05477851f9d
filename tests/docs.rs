//! The user documentation keeps up with the code: every configuration key the config code
//! accepts has a row in docs/configuration.md (under its table's heading), every series the
//! metrics catalogue publishes has one in docs/metrics.md, and neither document names a key or
//! series the code does not have.

use std::collections::BTreeSet;
use std::path::Path;

/// Reads a file of the repository.
fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The first cells (`` `key` ``) of the table rows under the heading `### `[table]``, up to the
/// next heading of that level or above.
fn documented_keys(doc: &str, table: &str) -> BTreeSet<String> {
    let heading = format!("### `[{table}]`");
    let mut keys = BTreeSet::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with("## ") || line.starts_with("### ") {
            inside = line.trim() == heading;
            continue;
        }
        if !inside {
            continue;
        }
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        if let Some((key, _)) = rest.split_once("` |") {
            keys.insert(key.to_string());
        }
    }
    keys
}

#[test]
fn every_config_key_is_in_configuration_md() {
    let doc = read("docs/configuration.md");
    let mut problems = Vec::new();
    for (table, keys) in sluice::config::documented_tables() {
        let documented = documented_keys(&doc, table);
        assert!(
            !documented.is_empty(),
            "docs/configuration.md has no table under \"### `[{table}]`\""
        );
        for key in keys {
            if !documented.contains(*key) {
                problems.push(format!(
                    "[{table}] {key}: accepted by the config code, not documented"
                ));
            }
        }
        for key in &documented {
            if !keys.contains(&key.as_str()) {
                problems.push(format!(
                    "[{table}] {key}: documented, but the config code has no such key"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md is out of date:\n{}",
        problems.join("\n")
    );
}

/// Backquoted names in the text that look like series (`pgbouncer_...`, `sluice_...`).
fn documented_series(doc: &str) -> BTreeSet<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| {
            (name.starts_with("pgbouncer_") || name.starts_with("sluice_"))
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_series_is_in_metrics_md() {
    let doc = read("docs/metrics.md");
    let series = sluice::metric_series();
    assert!(
        series.len() > 50,
        "the catalogue lists only {} series",
        series.len()
    );
    let documented = documented_series(&doc);
    let mut problems = Vec::new();
    for name in &series {
        if !documented.contains(name) {
            problems.push(format!("{name}: published, not documented"));
        }
    }
    for name in &documented {
        // A histogram's own series (`_bucket`, `_sum`, `_count`) may be named too.
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| series.iter().any(|s| s == base));
        if base.is_none() && !series.contains(name) {
            problems.push(format!("{name}: documented, but not published"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/metrics.md is out of date:\n{}",
        problems.join("\n")
    );
}
