//! auth_query: finding the secret of a user sluice's config does not list, by running
//! `auth_query` on PostgreSQL as `auth_user`, with a short-lived cache (`auth_cache_ttl`) so a
//! burst of logins costs one lookup. A user the query does not find (or whose secret is NULL,
//! e.g. expired) gets no secret, which authentication answers exactly like a wrong password.

use crate::server::{ServerConn, ServerError};
use bytes::{BufMut, BytesMut};
use parking_lot::Mutex;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Most users remembered; the cache is emptied when it would grow past this.
const MAX_CACHED: usize = 10_000;

/// Secrets found with auth_query, each kept for `auth_cache_ttl`.
#[derive(Default)]
pub struct AuthQueryCache {
    map: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl AuthQueryCache {
    /// The cached answer for `user` if younger than `ttl` (`Some(None)`: known not to exist).
    pub fn get(&self, user: &str, ttl: Duration) -> Option<Option<String>> {
        let map = self.map.lock();
        map.get(user)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, secret)| secret.clone())
    }

    /// Remembers an answer.
    pub fn put(&self, user: &str, secret: Option<String>) {
        let mut map = self.map.lock();
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(user.to_string(), (Instant::now(), secret));
    }
}

/// Runs `query` with `$1 = user` on a pooled connection of auth_user's pool; returns the second
/// column of the first row (None when there is no row or it is NULL). The connection is left at
/// ReadyForQuery, ready for the pool.
pub async fn lookup(conn: &mut ServerConn, query: &str, user: &str) -> Result<Option<String>, ServerError> {
    let mut out = BytesMut::new();
    frontend::parse("", query, std::iter::empty(), &mut out)?;
    out.put_u8(b'B');
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
                failure.get_or_insert(crate::server::error_from_body(&body));
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
