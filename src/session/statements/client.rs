//! The statements a client prepared, by the client's names: what each is (its text, the plan
//! epoch and row description the client knows), what they cost against the client's limits, and
//! the client's unnamed statement or portal when it is a `DEALLOCATE` sluice answers.

use crate::pool::ClientPreparedLimit;
use crate::protocol::{PgError, sqlstate};
use crate::server::statements::StatementDef;
use bytes::Bytes;
use std::collections::HashMap;

/// A statement a client prepared, and the plan epoch from which it knows its result shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientStatement {
    /// Its text and parameter types (and their hash, which names it on servers).
    pub(crate) def: StatementDef,
    /// The plan epoch from which the client knows its result shape.
    pub(crate) epoch: u64,
    /// A hash of the row description the client was given when it described the statement;
    /// None while it has not (libpq describes each result instead, and needs no check).
    pub(crate) shape: Option<u64>,
    /// A server's copy turned out to describe other rows than the client was told: PostgreSQL
    /// refuses such a statement until the client prepares it again, and so does sluice.
    pub(crate) changed: bool,
}

/// The statements a client prepared, by the client's names.
#[derive(Debug, Default)]
pub(crate) struct ClientStatements {
    /// Randomly seeded (the names are the client's choice), bounded by
    /// max_client_prepared_statements.
    by_name: HashMap<Bytes, ClientStatement, foldhash::fast::RandomState>,
    /// What they cost, as counted against max_client_prepared_bytes: names and Parse bodies.
    bytes: usize,
    /// An unnamed statement or portal that is a `DEALLOCATE` sluice answers itself.
    pub(crate) deallocating: Deallocating,
    /// Names of statements whose text is a LISTEN or UNLISTEN (transaction mode): their
    /// executions are answered by sluice (`session/listen.rs`). Bounded by `MAX_LISTEN_STATEMENTS`.
    pub(crate) listens: Vec<Bytes>,
}

/// Most named LISTEN/UNLISTEN statements one client may keep prepared.
pub(crate) const MAX_LISTEN_STATEMENTS: usize = 64;

impl ClientStatements {
    /// How many the client holds.
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(crate) fn forget(&mut self, name: &[u8]) {
        if let Some((name, s)) = self.by_name.remove_entry(name) {
            self.bytes -= cost(&name, &s.def.body);
        }
    }

    pub(crate) fn restore(&mut self, name: Bytes, statement: ClientStatement) {
        let added = cost(&name, &statement.def.body);
        if let Some(old) = self.by_name.insert(name.clone(), statement) {
            self.bytes -= cost(&name, &old.def.body);
        }
        self.bytes += added;
    }

    /// Why one more statement costing `bytes` would take the client past `limit`, if it would.
    pub(crate) fn refusal(&self, name: &[u8], bytes: usize, limit: ClientPreparedLimit) -> Option<PgError> {
        let name = String::from_utf8_lossy(name);
        let hint = "Close (or DEALLOCATE) statements the client no longer uses, or raise the setting.";
        if self.by_name.len() >= limit.statements {
            let text = format!(
                "too many prepared statements: this client already holds {} (max_client_prepared_statements)",
                self.by_name.len()
            );
            let detail = format!("Prepared statement \"{name}\" was not created.");
            let e = PgError::error(sqlstate::CONFIGURATION_LIMIT_EXCEEDED, text);
            return Some(e.with_detail(detail).with_hint(hint));
        }
        let total = self.bytes.saturating_add(bytes);
        if total > limit.bytes {
            let text = format!(
                "prepared statements too large: this client's would take {total} bytes, over max_client_prepared_bytes ({})",
                limit.bytes
            );
            let detail = format!(
                "Prepared statement \"{name}\" ({bytes} bytes) was not created; the client's {} statements take {} bytes.",
                self.by_name.len(),
                self.bytes
            );
            let e = PgError::error(sqlstate::CONFIGURATION_LIMIT_EXCEEDED, text);
            return Some(e.with_detail(detail).with_hint(hint));
        }
        None
    }

    /// Every statement with its name (an upgrade hands them to the new process).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Bytes, &ClientStatement)> {
        self.by_name.iter()
    }

    pub(crate) fn get(&self, name: &[u8]) -> Option<&ClientStatement> {
        self.by_name.get(name)
    }

    /// The statement `name` with the name as kept (a clone of it shares its bytes: the
    /// bookkeeping of a Bind or Describe copies nothing).
    pub(crate) fn get_named(&self, name: &[u8]) -> Option<(&Bytes, &ClientStatement)> {
        self.by_name.get_key_value(name)
    }

    /// The client was given this row description for `name`.
    pub(crate) fn set_shape(&mut self, name: &[u8], shape: u64) {
        if let Some(s) = self.by_name.get_mut(name) {
            s.shape = Some(shape);
        }
    }

    /// The row description the client has for `name`.
    pub(crate) fn shape(&self, name: &[u8]) -> Option<u64> {
        self.by_name.get(name).and_then(|s| s.shape)
    }

    /// A server's copy of `name` describes other rows than the client was given.
    pub(crate) fn mark_changed(&mut self, name: &[u8]) {
        if let Some(s) = self.by_name.get_mut(name) {
            s.changed = true;
        }
    }

    /// The client has been told that the plan of `name` changed (at `epoch`).
    pub(crate) fn told(&mut self, name: &[u8], epoch: u64) {
        if let Some(s) = self.by_name.get_mut(name) {
            s.epoch = s.epoch.max(epoch);
        }
    }

    /// Drops them all (the client ran DISCARD ALL or DEALLOCATE ALL).
    pub(crate) fn clear(&mut self) {
        self.by_name.clear();
        self.by_name.shrink_to_fit();
        self.bytes = 0;
    }
}

/// What a statement counts against max_client_prepared_bytes: its name and its Parse body (query
/// text and parameter types), the bytes sluice keeps for it.
pub(crate) fn cost(name: &[u8], body: &[u8]) -> usize {
    name.len() + body.len()
}

/// The client's unnamed statement, or a portal bound to it, when it is a `DEALLOCATE` of one of
/// the client's statements that sluice answers (see `deallocate`).
#[derive(Debug, Default)]
pub(crate) struct Deallocating {
    /// The client statement the unnamed statement deallocates.
    pub(crate) statement: Option<Bytes>,
    /// (portal, client statement) bound from it.
    pub(crate) portal: Option<(Bytes, Bytes)>,
}

impl Deallocating {
    /// A portal is bound to such a statement: its Execute is sluice's to answer.
    pub(crate) fn has_portal(&self) -> bool {
        self.portal.is_some()
    }
}
