//! Opening a connection to PostgreSQL and logging in as a client would: trust, cleartext, md5 or
//! SCRAM-SHA-256 (postgres-protocol's client), collecting ParameterStatus and BackendKeyData.

use super::{ServerConn, ServerError, error_from_body};
use crate::auth::{Secret, md5_salted};
use crate::stream::Stream;
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Where and as whom to log in on PostgreSQL.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// Host name or IP; a path starting with `/` is a unix-socket directory.
    pub host: String,
    /// Port (also names the unix socket file).
    pub port: u16,
    /// Database name on the server.
    pub dbname: String,
    /// User name on the server.
    pub user: String,
    /// What sluice knows of that user's password.
    pub secret: Option<Secret>,
    /// `server_tls_sslmode` and the rustls config for it.
    pub tls: crate::tls::ServerTls,
    /// The database's startup parameters and connect_query.
    pub startup: StartupExtras,
    /// Keepalive options for the socket.
    pub(crate) tcp: crate::tcp_options::TcpOptions,
}

/// What a database entry adds to every login: startup parameters PgBouncer lets a database ask
/// for (client_encoding, datestyle, timezone, application_name) and the connect_query run
/// right after login, before the server is pooled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupExtras {
    /// (PostgreSQL parameter name, value), sent in the startup packet.
    pub params: Vec<(&'static str, String)>,
    /// SQL run once after login; a failure fails the login.
    pub connect_query: Option<String>,
}

impl StartupExtras {
    /// The extras of one database entry.
    pub(crate) fn from_config(db: &crate::config::DatabaseConfig) -> Self {
        let named = [
            ("client_encoding", &db.client_encoding),
            ("DateStyle", &db.datestyle),
            ("TimeZone", &db.timezone),
            ("application_name", &db.application_name),
        ];
        StartupExtras {
            params: named
                .into_iter()
                .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
                .collect(),
            connect_query: db.connect_query.clone().filter(|q| !q.trim().is_empty()),
        }
    }
}

impl ServerTarget {
    /// `host:port`, or the socket path, for messages.
    pub fn describe(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Opens a socket to the target (TCP_NODELAY on TCP), with the keepalive options on TCP.
pub(crate) async fn open_server_socket(target: &ServerTarget) -> Result<Stream, std::io::Error> {
    let stream = open_socket(&target.host, target.port).await?;
    if let Stream::Tcp(s) = &stream {
        target.tcp.apply(s);
    }
    Ok(stream)
}

/// Opens a socket to the target (TCP_NODELAY on TCP).
pub(crate) async fn open_socket(host: &str, port: u16) -> Result<Stream, std::io::Error> {
    if host.starts_with('/') {
        Ok(Stream::Unix(
            UnixStream::connect(format!("{host}/.s.PGSQL.{port}")).await?,
        ))
    } else {
        let s = super::resolve::connect(host, port).await?;
        s.set_nodelay(true)?;
        Ok(Stream::Tcp(s))
    }
}

/// Connects and logs in; the returned connection is at ReadyForQuery.
pub(crate) async fn connect(target: &ServerTarget) -> Result<ServerConn, ServerError> {
    let stream = open_server_socket(target)
        .await
        .map_err(|source| ServerError::Connect {
            addr: target.describe(),
            source,
        })?;
    let stream = super::tls::upgrade(stream, target).await?;
    let (reader, mut writer) = stream.into_split();
    let mut out = BytesMut::new();
    let identity = [
        ("user", target.user.as_str()),
        ("database", target.dbname.as_str()),
    ];
    let extras = target.startup.params.iter().map(|(k, v)| (*k, v.as_str()));
    frontend::startup_message(identity.into_iter().chain(extras), &mut out)?;
    writer.write_all(&out).await?;
    let mut conn = ServerConn::new(reader, writer, (target.host.as_str().into(), target.port));
    let mut scram: Option<ScramSha256> = None;
    let mut key_scram: Option<crate::auth::KeyScramClient> = None;
    loop {
        match conn.read_message().await? {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                let password = plaintext(target)?;
                send(&mut conn, |out| {
                    frontend::password_message(password.as_bytes(), out)
                })
                .await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let answer = match &target.secret {
                    Some(Secret::Plain(pw)) => postgres_protocol::authentication::md5_hash(
                        target.user.as_bytes(),
                        pw.as_bytes(),
                        body.salt(),
                    ),
                    Some(Secret::Md5(hex)) => md5_salted(hex, body.salt()),
                    _ => return Err(missing_password(target, "md5")),
                };
                send(&mut conn, |out| {
                    frontend::password_message(answer.as_bytes(), out)
                })
                .await?;
            }
            Message::AuthenticationSasl(body) => {
                use fallible_iterator::FallibleIterator;
                let mut mechanisms = body.mechanisms();
                let mut offered = false;
                while let Some(m) = mechanisms.next()? {
                    offered |= m == SCRAM_SHA_256;
                }
                if !offered {
                    return Err(ServerError::Auth(format!(
                        "server {} offers no SASL mechanism sluice supports",
                        target.describe()
                    )));
                }
                if let Some(Secret::ScramKeys { client_key, verifier }) = &target.secret {
                    let client = crate::auth::KeyScramClient::new(*client_key, verifier.clone());
                    let first = client.client_first();
                    send(&mut conn, |out| {
                        frontend::sasl_initial_response(SCRAM_SHA_256, first.as_bytes(), out)
                    })
                    .await?;
                    key_scram = Some(client);
                    continue;
                }
                let password = plaintext(target)?;
                let client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                send(&mut conn, |out| {
                    frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), out)
                })
                .await?;
                scram = Some(client);
            }
            Message::AuthenticationSaslContinue(body) if key_scram.is_some() => {
                let client = key_scram.as_mut().ok_or_else(|| unexpected("SASLContinue"))?;
                crate::auth::check_server_first(body.data())
                    .map_err(|e| ServerError::Auth(format!("server {}: {e}", target.describe())))?;
                let server_first =
                    std::str::from_utf8(body.data()).map_err(|_| unexpected("non-UTF-8 SASLContinue"))?;
                let reply = client
                    .client_final(server_first)
                    .map_err(|e| pass_through_failed(target, &e))?;
                send(&mut conn, |out| frontend::sasl_response(reply.as_bytes(), out)).await?;
            }
            Message::AuthenticationSaslFinal(body) if key_scram.is_some() => {
                let client = key_scram.as_ref().ok_or_else(|| unexpected("SASLFinal"))?;
                let server_final =
                    std::str::from_utf8(body.data()).map_err(|_| unexpected("non-UTF-8 SASLFinal"))?;
                client
                    .verify_server_final(server_final)
                    .map_err(|e| pass_through_failed(target, &e))?;
            }
            Message::AuthenticationSaslContinue(body) => {
                let client = scram.as_mut().ok_or_else(|| unexpected("SASLContinue"))?;
                crate::auth::check_server_first(body.data())
                    .map_err(|e| ServerError::Auth(format!("server {}: {e}", target.describe())))?;
                client.update(body.data())?;
                let msg = client.message().to_vec();
                send(&mut conn, |out| frontend::sasl_response(&msg, out)).await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let client = scram.as_mut().ok_or_else(|| unexpected("SASLFinal"))?;
                client.finish(body.data())?;
            }
            Message::ParameterStatus(body) => {
                conn.params
                    .insert(body.name()?.to_string(), body.value()?.to_string());
            }
            Message::BackendKeyData(body) => {
                conn.backend_pid = body.process_id();
                conn.backend_secret = body.secret_key();
                conn.info.set_backend_pid(conn.backend_pid);
            }
            Message::ReadyForQuery(body) => {
                conn.tx_status = body.status().try_into()?;
                if let Some(query) = &target.startup.connect_query {
                    run_connect_query(&mut conn, query, target).await?;
                }
                return Ok(conn);
            }
            Message::ErrorResponse(body) => return Err(ServerError::Postgres(error_from_body(&body))),
            Message::NoticeResponse(_) => {}
            _ => return Err(unexpected("message during login")),
        }
    }
}

/// Runs the database's connect_query on a fresh server; an error fails the login, saying so.
async fn run_connect_query(
    conn: &mut ServerConn,
    query: &str,
    target: &ServerTarget,
) -> Result<(), ServerError> {
    match conn.run_internal_inner(query).await {
        Ok(()) if conn.tx_status == crate::protocol::TxStatus::Idle => Ok(()),
        Ok(()) => Err(ServerError::ConnectQuery(format!(
            "connect_query left the server of database \"{}\" inside a transaction; it must not open one",
            target.dbname
        ))),
        Err(ServerError::Postgres(e)) => Err(ServerError::ConnectQuery(format!(
            "connect_query failed on the server of database \"{}\": {}",
            target.dbname, e.message
        ))),
        Err(other) => Err(other),
    }
}

async fn send(
    conn: &mut ServerConn,
    encode: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
) -> Result<(), ServerError> {
    let mut out = BytesMut::new();
    encode(&mut out)?;
    conn.writer.write_all(&out).await?;
    Ok(())
}

fn plaintext(target: &ServerTarget) -> Result<&str, ServerError> {
    match &target.secret {
        Some(Secret::Plain(pw)) => Ok(pw),
        _ => Err(missing_password(target, "a plaintext password")),
    }
}

fn missing_password(target: &ServerTarget, need: &str) -> ServerError {
    ServerError::Auth(format!(
        "server {} asks user \"{}\" for a password, and sluice has no usable secret for it (needs {need})",
        target.describe(),
        target.user
    ))
}

fn pass_through_failed(target: &ServerTarget, why: &str) -> ServerError {
    ServerError::Auth(format!(
        "SCRAM pass-through login of user \"{}\" to server {} failed: {why}",
        target.user,
        target.describe()
    ))
}

fn unexpected(what: &str) -> ServerError {
    ServerError::Protocol(format!("unexpected {what} from server"))
}
