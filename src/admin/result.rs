//! A console result set: typed columns and text rows, encoded as RowDescription, DataRows and
//! CommandComplete — the same shape PgBouncer's console sends.

use crate::protocol::messages::{self, Column};
use bytes::BytesMut;

/// PostgreSQL type OIDs the console uses.
pub(super) mod oid {
    /// text
    pub(crate) const TEXT: u32 = 25;
    /// int4
    pub(crate) const INT4: u32 = 23;
    /// int8
    pub(crate) const INT8: u32 = 20;
    /// numeric
    pub(crate) const NUMERIC: u32 = 1700;
}

/// Rows to send for a SHOW command.
#[derive(Debug, Clone, Default)]
pub struct ResultSet {
    /// Column names and type OIDs, in order.
    pub columns: Vec<(&'static str, u32)>,
    /// Rows of text values (None is NULL).
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    /// An empty result with these columns.
    pub fn new(columns: &[(&'static str, u32)]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one value per column.
    pub fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// Encodes RowDescription, the rows and `CommandComplete SHOW`.
    pub fn encode(&self, out: &mut BytesMut) {
        let cols: Vec<Column<'_>> = self
            .columns
            .iter()
            .map(|&(name, type_oid)| Column { name, type_oid })
            .collect();
        messages::row_description(out, &cols);
        for row in &self.rows {
            let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
            messages::data_row(out, &values);
        }
        messages::command_complete(out, "SHOW");
    }
}

/// A text value.
pub(super) fn t(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

/// A number value.
pub(super) fn n(v: impl std::fmt::Display) -> Option<String> {
    Some(v.to_string())
}
