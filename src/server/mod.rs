//! One connection to PostgreSQL: opening and logging in to it, the parameters it reported, and the
//! short internal queries the pool runs on it (SET, ROLLBACK, DISCARD ALL).

pub(crate) mod auth_query;
pub(crate) mod cancel;
mod handover;
mod info;
mod login;
pub(crate) mod resolve;
pub(crate) mod role;
pub(crate) mod statements;
mod tls;

pub(crate) use info::{ServerInfo, ServerUse, TxState};

pub(crate) use handover::terminate;
pub(crate) use login::{ServerTarget, StartupExtras, connect, open_socket};

use crate::protocol::{MAX_LOGIN_MESSAGE, PgError, TxStatus, UnknownTxStatus};
use crate::stream::{ReadHalf, WriteHalf};
use bytes::BytesMut;
use postgres_protocol::message::backend::{self, Message};
use postgres_protocol::message::frontend;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// Why talking to PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TCP or unix-socket connection could not be opened.
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        /// Where we tried to connect.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection failed afterwards.
    #[error("server connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// PostgreSQL answered with an error (login refused, query failed).
    #[error("{0}")]
    Postgres(PgError),
    /// PostgreSQL sent something that breaks the protocol.
    #[error("server protocol error: {0}")]
    Protocol(String),
    /// sluice lacks what the server's authentication method needs.
    #[error("{0}")]
    Auth(String),
    /// The database's connect_query failed (or left a transaction open) on a new server.
    #[error("{0}")]
    ConnectQuery(String),
    /// The server did not answer in time.
    #[error("server did not answer within {}", crate::config::format_duration(*.0))]
    Timeout(Duration),
}

impl From<UnknownTxStatus> for ServerError {
    fn from(e: UnknownTxStatus) -> ServerError {
        ServerError::Protocol(e.to_string())
    }
}

/// A logged-in server connection, idle at a message boundary unless a session is relaying on it.
#[derive(Debug)]
pub struct ServerConn {
    /// Unique id for logs and the console.
    pub id: u64,
    /// Reading half (the session reads responses from it).
    pub reader: ReadHalf,
    /// Writing half.
    pub writer: WriteHalf,
    /// Bytes read from the server and not yet consumed.
    pub read_buf: BytesMut,
    /// Backend process id, for cancel requests.
    pub backend_pid: i32,
    /// Backend secret key, for cancel requests.
    pub backend_secret: i32,
    /// Current values of the parameters the server reports (ParameterStatus).
    pub params: BTreeMap<String, String>,
    /// Parameters set by sluice for the client that used this server last (names -> values).
    pub applied: BTreeMap<String, String>,
    /// The settings fingerprint of the client that left this server clean (None: unknown, e.g.
    /// after a reset or rollback); a client with the same fingerprint needs no sync.
    pub params_fingerprint: Option<u64>,
    /// Transaction status from the last ReadyForQuery.
    pub tx_status: TxStatus,
    /// When the connection was opened.
    pub created: Instant,
    /// When a client last released it.
    pub last_used: Instant,
    /// Where it is connected (for cancel requests).
    pub target_addr: (Arc<str>, u16),
    /// Observable state, shared with the pool.
    pub info: std::sync::Arc<ServerInfo>,
    /// The prepared statements sluice created on it for clients (transaction mode).
    pub statements: statements::ServerStatements,
    /// Whether a client may have changed who the session is.
    pub identity: Identity,
    /// The per-core worker whose I/O driver the socket is registered with (0: none of them).
    home: usize,
}

/// Who a server's session is, as far as sluice can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The user it logged in as, with no role set.
    Login,
    /// A client ran something that may have changed the role or session authorization (or a
    /// LISTEN reached the server in transaction mode): the release path resets them and
    /// UNLISTENs (or closes the server) before anyone else gets it.
    MaybeChanged,
}

impl ServerConn {
    fn new(reader: ReadHalf, writer: WriteHalf, target_addr: (Arc<str>, u16)) -> ServerConn {
        let now = Instant::now();
        let id = NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed);
        ServerConn {
            info: std::sync::Arc::new(ServerInfo::new(id, target_addr.clone())),
            id,
            reader,
            writer,
            read_buf: BytesMut::new(),
            backend_pid: 0,
            backend_secret: 0,
            params: BTreeMap::new(),
            applied: BTreeMap::new(),
            params_fingerprint: None,
            tx_status: TxStatus::Idle,
            created: now,
            last_used: now,
            target_addr,
            statements: Default::default(),
            identity: Identity::Login,
            home: crate::workers::current(),
        }
    }

    /// The per-core worker the socket is registered with (0: none of them).
    pub fn home(&self) -> usize {
        self.home
    }

    /// Makes the socket's readiness events arrive at the calling per-core worker: a server
    /// opened on one worker and lent on another moves its registration over (once), so the
    /// session's wake-ups stay on its own thread. False when the move failed and the
    /// connection is gone (the caller discards it). Does nothing outside per-core workers.
    pub fn settle_here(&mut self) -> bool {
        let here = crate::workers::current();
        if here == 0 || here == self.home {
            return true;
        }
        match crate::stream::rehome(&mut self.reader, &mut self.writer) {
            crate::stream::Rehomed::Moved => {
                self.home = here;
                true
            }
            crate::stream::Rehomed::Kept => true,
            crate::stream::Rehomed::Lost => false,
        }
    }

    /// True when the idle connection is still usable: nothing unread, peer not closed.
    pub fn is_healthy_idle(&self) -> bool {
        self.read_buf.is_empty() && self.tx_status == TxStatus::Idle && self.reader.is_quiet()
    }

    /// Reads one whole backend message (bounded in size), for login and internal queries.
    pub(crate) async fn read_message(&mut self) -> Result<Message, ServerError> {
        loop {
            if let Some(header) = backend::Header::parse(&self.read_buf)? {
                let len = header.len() as usize + 1;
                if header.len() < 4 || len > MAX_LOGIN_MESSAGE {
                    return Err(ServerError::Protocol(format!(
                        "message '{}' of length {len} refused",
                        header.tag() as char
                    )));
                }
                if let Some(msg) = Message::parse(&mut self.read_buf)? {
                    return Ok(msg);
                }
            }
            self.read_buf.reserve(8192);
            if self.reader.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ServerError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Runs a pooler-internal simple query (any rows are discarded) and waits for ReadyForQuery.
    /// ParameterStatus messages update `params`; an ErrorResponse is returned after the server is
    /// back at ReadyForQuery, so the connection stays in step either way.
    pub async fn run_internal(&mut self, sql: &str, limit: Duration) -> Result<(), ServerError> {
        tokio::time::timeout(limit, self.run_internal_inner(sql))
            .await
            .map_err(|_| ServerError::Timeout(limit))?
    }

    pub(crate) async fn run_internal_inner(&mut self, sql: &str) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.writer.write_all(&out).await?;
        let mut failure = None;
        loop {
            match self.read_message().await? {
                Message::ReadyForQuery(body) => {
                    self.tx_status = body.status().try_into()?;
                    return match failure {
                        Some(e) => Err(ServerError::Postgres(e)),
                        None => Ok(()),
                    };
                }
                Message::ParameterStatus(body) => {
                    self.params
                        .insert(body.name()?.to_string(), body.value()?.to_string());
                }
                Message::ErrorResponse(body) => {
                    failure.get_or_insert(error_from_body(&body));
                }
                Message::CommandComplete(body) => {
                    // A reset query that drops every prepared statement leaves none to track.
                    let command = body.tag()?;
                    if crate::protocol::tags::backend::drops_all_statements(command.as_bytes()) {
                        self.statements.clear();
                        self.info.set_prepared(0);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Turns a decoded ErrorResponse into a PgError, keeping severity, SQLSTATE, message, detail, hint.
pub(crate) fn error_from_body(body: &backend::ErrorResponseBody) -> PgError {
    use fallible_iterator::FallibleIterator;
    let mut raw = Vec::new();
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        raw.push(field.type_());
        raw.extend_from_slice(field.value_bytes());
        raw.push(0);
    }
    raw.push(0);
    PgError::from_fields(&raw)
}
