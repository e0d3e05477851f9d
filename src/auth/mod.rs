//! Client authentication: trust, md5 and SCRAM-SHA-256 against plaintext passwords or stored md5
//! and SCRAM secrets, with no way to tell an unknown user from a wrong password.

pub mod auth_query;
pub mod hba;
mod passthrough;
mod scram;
mod secret;

pub use passthrough::{KeyScramClient, check_server_first};
pub use scram::{ScramError, ScramExchange, constant_time_eq, mock_verifier};
pub use secret::{MAX_SCRAM_ITERATIONS, ScramVerifier, Secret};

use crate::config::AuthType;
use crate::protocol::{PgError, messages, sqlstate};
use bytes::BytesMut;
use md5::{Digest, Md5};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest password/SASL message accepted from a client.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;
/// Bound on cached derived SCRAM verifiers; the cache is emptied when it would grow past this.
const MAX_CACHED_VERIFIERS: usize = 100_000;

/// Why a client was not logged in.
#[derive(Debug)]
pub enum AuthError {
    /// Tell the client this (FATAL) and close.
    Rejected(PgError),
    /// The connection failed during the exchange.
    Io(std::io::Error),
}

impl From<std::io::Error> for AuthError {
    fn from(e: std::io::Error) -> Self {
        AuthError::Io(e)
    }
}

/// SCRAM verifiers derived from plaintext passwords, so PBKDF2 runs once per password, not per login.
#[derive(Default)]
pub struct VerifierCache {
    derived: Mutex<HashMap<String, (String, Arc<ScramVerifier>)>>,
}

impl VerifierCache {
    /// The verifier for `user` with plaintext `password`, derived on first use.
    pub fn verifier_for(&self, user: &str, password: &str) -> Option<Arc<ScramVerifier>> {
        if let Some((pw, v)) = self.derived.lock().get(user)
            && pw == password
        {
            return Some(v.clone());
        }
        let verifier = Arc::new(ScramVerifier::from_password(password)?);
        let mut map = self.derived.lock();
        if map.len() >= MAX_CACHED_VERIFIERS {
            map.clear();
        }
        map.insert(user.to_string(), (password.to_string(), verifier.clone()));
        Some(verifier)
    }
}

/// Everything needed to authenticate one client.
pub struct ClientAuth<'a> {
    /// The configured method.
    pub method: AuthType,
    /// User name from the startup packet.
    pub user: &'a str,
    /// The user's secret, or None for an unknown user.
    pub secret: Option<Secret>,
    /// Derived-verifier cache shared by all sessions.
    pub cache: &'a VerifierCache,
    /// Per-process random key for mock verifiers of unknown users.
    pub instance_secret: &'a [u8; 32],
    /// The user is listed (in `[users]` or the auth_file), with or without a secret.
    pub known_user: bool,
    /// Whether an unknown user may log in under trust (no users configured at all).
    pub trust_unknown_users: bool,
}

/// What a successful login yields.
#[derive(Debug, Default)]
pub struct AuthSuccess {
    /// The ClientKey recovered from a SCRAM proof (for SCRAM pass-through to the server).
    pub scram_client_key: Option<[u8; 32]>,
}

/// Runs the authentication exchange; on success AuthenticationOk has been sent.
pub async fn authenticate<S>(stream: &mut S, auth: ClientAuth<'_>) -> Result<AuthSuccess, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = match (auth.method, &auth.secret) {
        (AuthType::Trust, _) if auth.known_user || auth.trust_unknown_users => Ok(AuthSuccess::default()),
        (AuthType::Trust, _) => Err(AuthError::Rejected(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!("no such user: {}", auth.user),
        ))),
        (AuthType::Md5, Some(Secret::Scram(v))) => scram_exchange(stream, auth.user, v).await,
        (AuthType::Md5, secret) => md5_exchange(stream, auth.user, secret.as_ref()).await,
        (AuthType::ScramSha256, Some(Secret::Scram(v))) => scram_exchange(stream, auth.user, v).await,
        (AuthType::ScramSha256, Some(Secret::Plain(pw))) => match auth.cache.verifier_for(auth.user, pw) {
            Some(v) => scram_exchange(stream, auth.user, &v).await,
            None => Err(AuthError::Rejected(PgError::password_failed(auth.user))),
        },
        (AuthType::Plain, secret) => cleartext_exchange(stream, auth.user, secret.as_ref()).await,
        (AuthType::Cert | AuthType::Hba, _) => Err(AuthError::Rejected(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "password authentication is not configured for user \"{}\"",
                auth.user
            ),
        ))),
        (AuthType::ScramSha256, _) => {
            // Unknown user, or an md5 secret that cannot answer SCRAM: run the exchange against a
            // verifier nothing matches, so the client cannot tell which.
            let mock = mock_verifier(auth.user, auth.instance_secret);
            scram_exchange(stream, auth.user, &mock).await
        }
    };
    let success = result?;
    let mut out = BytesMut::new();
    messages::auth_ok(&mut out);
    stream.write_all(&out).await?;
    Ok(success)
}

async fn md5_exchange<S>(
    stream: &mut S,
    user: &str,
    secret: Option<&Secret>,
) -> Result<AuthSuccess, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let salt: [u8; 4] = rand::random();
    let mut out = BytesMut::new();
    messages::auth_md5(&mut out, salt);
    stream.write_all(&out).await?;
    let body = read_password_message(stream).await?;
    let answer = cstr(&body)?;
    let expected = match secret {
        Some(Secret::Plain(pw)) => Some(postgres_protocol::authentication::md5_hash(
            user.as_bytes(),
            pw.as_bytes(),
            salt,
        )),
        Some(Secret::Md5(hex)) => Some(md5_salted(hex, salt)),
        _ => None,
    };
    match expected {
        Some(e) if constant_time_eq(e.as_bytes(), answer.as_bytes()) => Ok(AuthSuccess::default()),
        _ => Err(AuthError::Rejected(PgError::password_failed(user))),
    }
}

async fn cleartext_exchange<S>(
    stream: &mut S,
    user: &str,
    secret: Option<&Secret>,
) -> Result<AuthSuccess, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    messages::auth_cleartext(&mut out);
    stream.write_all(&out).await?;
    let body = read_password_message(stream).await?;
    let password = cstr(&body)?;
    let ok = match secret {
        Some(Secret::Plain(pw)) => constant_time_eq(pw.as_bytes(), password.as_bytes()),
        Some(Secret::Md5(hex)) => {
            let mut h = Md5::new();
            h.update(password.as_bytes());
            h.update(user.as_bytes());
            let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            constant_time_eq(digest.as_bytes(), hex.as_bytes())
        }
        Some(Secret::Scram(v)) => v.matches_password(password),
        _ => false,
    };
    if ok {
        Ok(AuthSuccess::default())
    } else {
        Err(AuthError::Rejected(PgError::password_failed(user)))
    }
}

/// `md5` + hex(md5(stored_hex || salt)): the answer to an MD5 challenge from a stored md5 secret.
pub fn md5_salted(stored_hex: &str, salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(stored_hex.as_bytes());
    h.update(salt);
    let digest = h.finalize();
    let mut s = String::with_capacity(35);
    s.push_str("md5");
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

async fn scram_exchange<S>(
    stream: &mut S,
    user: &str,
    verifier: &ScramVerifier,
) -> Result<AuthSuccess, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    messages::auth_sasl(&mut out, &["SCRAM-SHA-256"]);
    stream.write_all(&out).await?;

    let body = read_password_message(stream).await?;
    let (mechanism, data) = sasl_initial_response(&body)?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(AuthError::Rejected(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("unsupported SASL mechanism \"{mechanism}\""),
        )));
    }
    let exchange = ScramExchange::start(data, verifier).map_err(|e| scram_rejection(user, e))?;
    out.clear();
    messages::auth_sasl_continue(&mut out, exchange.server_first().as_bytes());
    stream.write_all(&out).await?;

    let body = read_password_message(stream).await?;
    let client_final = std::str::from_utf8(&body).map_err(|_| malformed("SASL response is not UTF-8"))?;
    let (server_final, client_key) = exchange
        .finish(client_final, verifier)
        .map_err(|e| scram_rejection(user, e))?;
    out.clear();
    messages::auth_sasl_final(&mut out, server_final.as_bytes());
    stream.write_all(&out).await?;
    Ok(AuthSuccess {
        scram_client_key: Some(client_key),
    })
}

fn scram_rejection(user: &str, e: ScramError) -> AuthError {
    AuthError::Rejected(match e {
        ScramError::WrongProof => PgError::password_failed(user),
        ScramError::ChannelBindingUnsupported => PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "SCRAM channel binding is not supported on a connection without TLS",
        ),
        ScramError::Malformed(what) => PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("malformed SCRAM message: {what}"),
        ),
    })
}

fn malformed(what: &str) -> AuthError {
    AuthError::Rejected(PgError::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        format!("malformed authentication message: {what}"),
    ))
}

async fn read_password_message<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, AuthError> {
    let tag = stream.read_u8().await?;
    let len = stream.read_i32().await?;
    if tag != crate::protocol::tags::frontend::PASSWORD {
        return Err(AuthError::Rejected(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            match tag {
                0 => "expected password response, got a startup packet (a second StartupMessage during authentication?)".to_string(),
                t if t.is_ascii_graphic() => format!("expected password response, got message type '{}'", t as char),
                t => format!("expected password response, got message type byte {t:#04x}"),
            },
        )));
    }
    if len < 4 || len as usize - 4 > MAX_AUTH_MESSAGE {
        return Err(malformed("invalid length"));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

fn cstr(body: &[u8]) -> Result<&str, AuthError> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed("unterminated string"))?;
    std::str::from_utf8(&body[..end]).map_err(|_| malformed("not UTF-8"))
}

fn sasl_initial_response(body: &[u8]) -> Result<(&str, &str), AuthError> {
    let mechanism = cstr(body)?;
    let rest = &body[mechanism.len() + 1..];
    if rest.len() < 4 {
        return Err(malformed("SASLInitialResponse too short"));
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(malformed("SASLInitialResponse length mismatch"));
    }
    let data = std::str::from_utf8(data).map_err(|_| malformed("SASL data is not UTF-8"))?;
    Ok((mechanism, data))
}
