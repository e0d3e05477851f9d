//! Asking a server what it is: in recovery (a standby) or not, and whether its transactions are
//! read-only, in one round trip, for target_session_attrs.

use super::{ServerConn, ServerError, error_from_body};
use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The one query of a role check: both answers in one row.
const ROLE_QUERY: &str =
    "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only')";

/// What a server said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoleAnswer {
    /// `pg_is_in_recovery()`: a standby.
    pub(crate) in_recovery: bool,
    /// `transaction_read_only` is on.
    pub(crate) read_only: bool,
}

/// Runs the role query and reads its row; the server is back at ReadyForQuery on success.
pub(crate) async fn query_role(conn: &mut ServerConn, limit: Duration) -> Result<RoleAnswer, ServerError> {
    tokio::time::timeout(limit, query_role_inner(conn))
        .await
        .map_err(|_| ServerError::Timeout(limit))?
}

async fn query_role_inner(conn: &mut ServerConn) -> Result<RoleAnswer, ServerError> {
    let mut out = BytesMut::new();
    frontend::query(ROLE_QUERY, &mut out)?;
    conn.writer.write_all(&out).await?;
    let mut answer = None;
    let mut failure = None;
    loop {
        match conn.read_message().await? {
            Message::DataRow(row) => {
                use fallible_iterator::FallibleIterator;
                let buf = row.buffer();
                let cols: Vec<Option<std::ops::Range<usize>>> = row.ranges().collect()?;
                let text = |i: usize| {
                    cols.get(i)
                        .cloned()
                        .flatten()
                        .and_then(|r| buf.get(r))
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                };
                answer = Some(RoleAnswer {
                    in_recovery: text(0).as_deref() == Some("t"),
                    read_only: text(1).as_deref() == Some("on"),
                });
            }
            Message::ErrorResponse(body) => {
                failure.get_or_insert(error_from_body(&body));
            }
            Message::ReadyForQuery(body) => {
                conn.tx_status = body.status().try_into()?;
                if let Some(e) = failure {
                    return Err(ServerError::Postgres(e));
                }
                return answer.ok_or_else(|| ServerError::Protocol("the role query returned no row".into()));
            }
            _ => {}
        }
    }
}
