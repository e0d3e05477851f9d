//! The user documentation keeps up with the code: every configuration key the config code
//! accepts has a row in docs/configuration.md (under its table's heading), whose "applied by"
//! column says what a running sluice's console says (SHOW CONFIG's `changeable`, SET's refusal);
//! every series the metrics catalogue publishes has one in docs/metrics.md; and neither document
//! names a key or series the code does not have.

mod common;

use common::config::PoolerToml;
use common::{admin_console, console_query, start_sluice};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Reads a file of the repository.
fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The first cells (`` `key` ``) of the table rows under the heading `### `[table]``, up to the
/// next heading of that level or above.
fn documented_keys(doc: &str, table: &str) -> BTreeSet<String> {
    documented_rows(doc, table).into_keys().collect()
}

/// The table rows under the heading `### `[table]``: key -> its last cell ("applied by").
fn documented_rows(doc: &str, table: &str) -> BTreeMap<String, String> {
    let heading = format!("### `[{table}]`");
    let mut keys = BTreeMap::new();
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
            let applied_by = line.trim_end_matches('|').rsplit('|').next().unwrap_or("");
            keys.insert(key.to_string(), applied_by.trim().to_string());
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

/// What the console says about changing a `[pooler]` key: `SET` when SHOW CONFIG calls it
/// changeable, otherwise `restart` or `RELOAD` as SET's refusal explains.
async fn console_says(admin: &tokio_postgres::Client, key: &str, changeable: bool) -> &'static str {
    if changeable {
        return "SET";
    }
    let refusal = match admin.simple_query(&format!("SET {key} = 1")).await {
        Ok(_) => panic!("SET {key} succeeded although SHOW CONFIG says it is not changeable"),
        Err(e) => e
            .as_db_error()
            .and_then(|d| d.detail())
            .unwrap_or_default()
            .to_string(),
    };
    if refusal.contains("restart sluice") {
        "restart"
    } else if refusal.contains("RELOAD") {
        "RELOAD"
    } else {
        panic!("SET {key}: unexpected refusal {refusal:?}")
    }
}

#[tokio::test]
async fn applied_by_column_says_what_the_console_says() {
    let doc = read("docs/configuration.md");
    let rows = documented_rows(&doc, "pooler");
    // Nothing here reaches PostgreSQL: the database entry is never connected to.
    let toml = PoolerToml::trust()
        .set("unix_socket_dir = \"\"")
        .admin()
        .database_on("app", 1, None)
        .build();
    let sluice = start_sluice(&toml).await;
    let admin = admin_console(sluice.tcp_addr()).await;
    let mut problems = Vec::new();
    for row in console_query(&admin, "SHOW CONFIG").await {
        let key = row.get("key").cloned().flatten().unwrap_or_default();
        let changeable = row.get("changeable").cloned().flatten().as_deref() == Some("yes");
        let says = console_says(&admin, &key, changeable).await;
        match rows.get(&key) {
            Some(documented) if documented == says => {}
            Some(documented) => problems.push(format!(
                "{key}: documented as applied by {documented:?}, the console says {says:?}"
            )),
            None => problems.push(format!("{key}: no row")),
        }
    }
    sluice.shutdown().await;
    assert!(
        problems.is_empty(),
        "docs/configuration.md's \"applied by\" column is wrong:\n{}",
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
