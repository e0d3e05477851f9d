//! auth_query's lookup on PostgreSQL: running `auth_query` with the user's name as `$1` on a
//! connection of auth_user's pool (the cache of its answers is `auth::auth_query`).

use super::{ServerConn, ServerError};
use bytes::{BufMut, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

/// Runs `query` with `$1 = user` on a pooled connection of auth_user's pool; returns the second
/// column of the first row (None when there is no row or it is NULL). The connection is left at
/// ReadyForQuery, ready for the pool.
pub(crate) async fn lookup(
    conn: &mut ServerConn,
    query: &str,
    user: &str,
) -> Result<Option<String>, ServerError> {
    let mut out = BytesMut::new();
    frontend::parse("", query, std::iter::empty(), &mut out)?;
    out.put_u8(crate::protocol::tags::frontend::BIND);
    let at = out.len();
    out.put_i32(0);
    out.put_slice(b"\0\0");
    out.put_i16(0);
    out.put_i16(1);
    out.put_i32(user.len() as i32);
    out.put_slice(user.as_bytes());
    out.put_i16(0);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    frontend::execute("", 1, &mut out)?;
    frontend::sync(&mut out);
    conn.writer.write_all(&out).await?;
    let mut secret = None;
    let mut failure = None;
    loop {
        match conn.read_message().await? {
            Message::DataRow(row) if secret.is_none() => {
                use fallible_iterator::FallibleIterator;
                let ranges: Vec<_> = row.ranges().collect()?;
                let value = ranges
                    .get(1)
                    .ok_or_else(|| ServerError::Protocol("auth_query must return two columns".to_string()))?
                    .clone()
                    .map(|r| String::from_utf8_lossy(&row.buffer()[r]).into_owned());
                secret = Some(value);
            }
            Message::ErrorResponse(body) => {
                failure.get_or_insert(super::error_from_body(&body));
            }
            Message::ReadyForQuery(body) => {
                conn.tx_status = body.status().try_into()?;
                break;
            }
            _ => {}
        }
    }
    match failure {
        Some(e) => Err(ServerError::Postgres(e)),
        None => Ok(secret.flatten()),
    }
}
