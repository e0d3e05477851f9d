//! Deciding how a client authenticates and running it: the hba rule for its address and TLS
//! state, certificate login by CN, auth_query for users sluice does not know, and the secret the
//! pool will use to log in to PostgreSQL (SCRAM keys when the client proved a SCRAM verifier).

use super::Refusal;
use crate::auth::hba::{HbaMethod, HbaRequest};
use crate::auth::{self, AuthError, ClientAuth, Secret};
use crate::clients::PeerAddr;
use crate::config::{AuthType, Config};
use crate::pool::Disposition;
use crate::protocol::{PgError, TxStatus, messages, sqlstate};
use crate::shared::Shared;
use crate::stream::Stream;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Authenticates `user` for `database`; on success AuthenticationOk was sent, and the result is
/// the secret the server login should use (None: none known). A refused login waits before its
/// error, longer for each recent failure from the same IP address (`clients::throttle`).
pub(super) async fn authenticate(
    stream: &mut Stream,
    peer: &PeerAddr,
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    user: &str,
    database: &str,
) -> Result<Option<Secret>, Refusal> {
    let result = authenticate_once(stream, peer, shared, config, user, database).await;
    if let (Err(Refusal::Fatal(e)), PeerAddr::Tcp(addr)) = (&result, peer)
        && e.sqlstate.starts_with("28")
    {
        let delay = shared.clients.record_failed_login(addr.ip());
        tracing::info!(%peer, user, ?delay, "login failed; delaying the error");
        tokio::time::sleep(delay).await;
    }
    result
}

/// One authentication, without the delay after a failure.
async fn authenticate_once(
    stream: &mut Stream,
    peer: &PeerAddr,
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    user: &str,
    database: &str,
) -> Result<Option<Secret>, Refusal> {
    let tls = stream.is_tls();
    let (method, hba_trust) = match config.pooler.auth_type {
        AuthType::Hba => {
            let method = hba_method(shared, config, peer, tls, user, database)?;
            (method, method == AuthType::Trust)
        }
        other => (other, false),
    };
    let mut secret = config.user_secret(user).map(Secret::parse);
    if method == AuthType::Cert {
        let cn = crate::tls::peer_common_name(stream);
        if cn.as_deref() != Some(user) {
            return Err(Refusal::Fatal(
                PgError::fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    format!("certificate authentication failed for user \"{user}\""),
                )
                .with_detail(match cn {
                    Some(cn) => format!("the client certificate's CN is \"{cn}\""),
                    None => "no client certificate was presented over TLS".to_string(),
                }),
            ));
        }
        let mut out = bytes::BytesMut::new();
        messages::auth_ok(&mut out);
        stream.write_all(&out).await?;
        return Ok(secret);
    }
    if secret.is_none() && method != AuthType::Trust {
        // Boxed: the auth_query lookup is large and rare; every login would carry it.
        secret = Box::pin(looked_up_secret(shared, config, user, database)).await?;
    }
    let auth = ClientAuth {
        method,
        user,
        secret: secret.clone(),
        cache: &shared.verifiers,
        instance_secret: &shared.instance_secret,
        known_user: config.users.contains_key(user) || config.auth_file_users.contains_key(user),
        trust_unknown_users: hba_trust || (config.users.is_empty() && config.auth_file_users.is_empty()),
    };
    let success = match auth::authenticate(stream, auth).await {
        Ok(s) => s,
        Err(AuthError::Rejected(e)) => return Err(Refusal::Fatal(e)),
        Err(AuthError::Io(_)) => return Err(Refusal::Quiet),
    };
    Ok(match (secret, success.scram_client_key) {
        (Some(Secret::Scram(verifier)), Some(client_key)) => Some(Secret::ScramKeys { client_key, verifier }),
        (secret, _) => secret,
    })
}

/// The method the first matching hba line gives; no line, or `reject`, refuses as PostgreSQL does.
fn hba_method(
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    peer: &PeerAddr,
    tls: bool,
    user: &str,
    database: &str,
) -> Result<AuthType, Refusal> {
    let rules = shared.security.hba(config);
    let rules = rules.as_ref().as_ref().map_err(|e| {
        Refusal::Fatal(
            PgError::fatal(sqlstate::INVALID_AUTHORIZATION, "auth_hba_file cannot be used")
                .with_detail(e.clone()),
        )
    })?;
    let addr = match peer {
        PeerAddr::Tcp(a) => Some(a.ip()),
        PeerAddr::Unix => None,
    };
    let host = addr.map_or("[local]".to_string(), |a| a.to_string());
    let encryption = if tls { "SSL encryption" } else { "no encryption" };
    let req = HbaRequest {
        addr,
        tls,
        database,
        user,
    };
    let refuse = |text: String| Refusal::Fatal(PgError::fatal(sqlstate::INVALID_AUTHORIZATION, text));
    Ok(match rules.method_for(&req) {
        None => {
            return Err(refuse(format!(
                "no pg_hba.conf entry for host \"{host}\", user \"{user}\", database \"{database}\", {encryption}"
            )));
        }
        Some(HbaMethod::Reject) => {
            return Err(refuse(format!(
                "pg_hba.conf rejects connection for host \"{host}\", user \"{user}\", database \"{database}\", {encryption}"
            )));
        }
        Some(HbaMethod::Trust) => AuthType::Trust,
        Some(HbaMethod::Md5) => AuthType::Md5,
        Some(HbaMethod::ScramSha256) => AuthType::ScramSha256,
        Some(HbaMethod::Password) => AuthType::Plain,
        Some(HbaMethod::Cert) => AuthType::Cert,
    })
}

/// The secret auth_query finds for `user` (cached for auth_cache_ttl); None when auth_user is
/// not set, or the user does not exist or cannot log in.
async fn looked_up_secret(
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    user: &str,
    database: &str,
) -> Result<Option<Secret>, Refusal> {
    let p = &config.pooler;
    let Some(auth_user) = p.auth_user.as_deref().filter(|a| *a != user) else {
        return Ok(None);
    };
    if let Some(cached) = shared.security.auth_query.get(user, p.auth_cache_ttl) {
        return Ok(cached.as_deref().map(Secret::parse));
    }
    let db_name = p.auth_dbname.as_deref().unwrap_or(database).to_string();
    let server_tls = shared.security.server_tls(config).unwrap_or_default();
    // The lookup runs on a pooled connection of auth_user's own pool (as PgBouncer does).
    let key = crate::pool::PoolKey {
        database: db_name.clone(),
        user: auth_user.to_string(),
    };
    let auth_secret = config.user_secret(auth_user).map(Secret::parse);
    let settings = || crate::pool::settings_for(config, &db_name, auth_user, auth_secret, server_tls);
    let pool = if config.databases.contains_key(&db_name) {
        shared.pools.get_or_create(key, 0, 0, settings)
    } else {
        // The client's database through "*", before it has logged in: bounded, freed when unused.
        let listed = |name: &str| config.databases.contains_key(name);
        shared
            .pools
            .get_or_create_auto(key, (0, 0), listed, settings)
            .map_err(|bound| Refusal::Fatal(crate::pool::too_many_auto_pools(bound)))?
    };
    let holder = Arc::new(crate::clients::ClientInfo::new(
        PeerAddr::Unix,
        None,
        None,
        crate::clients::ClientNames::new(&db_name, auth_user),
        "sluice auth_query",
    ));
    let limit = p.server_connect_timeout;
    let failed = |detail: String| {
        Refusal::Fatal(
            PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                "authentication lookup failed (auth_query)",
            )
            .with_detail(detail),
        )
    };
    let mut server = match pool.checkout(&holder, limit).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, auth_user = %auth_user, "auth_query: no server for auth_user");
            return Err(failed(e.to_string()));
        }
    };
    let result = tokio::time::timeout(
        limit,
        crate::server::auth_query::lookup(&mut server.conn, &p.auth_query, user),
    )
    .await;
    let clean = matches!(
        result,
        Ok(Ok(_)) | Ok(Err(crate::server::ServerError::Postgres(_)))
    ) && server.conn.tx_status == TxStatus::Idle
        && server.conn.read_buf.is_empty();
    pool.release(
        server,
        if clean {
            Disposition::Clean
        } else {
            Disposition::Close("auth_query failed")
        },
    );
    let found = match result {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, auth_user = %auth_user, "auth_query failed");
            return Err(failed(e.to_string()));
        }
        Err(_) => {
            return Err(Refusal::Fatal(PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!(
                    "authentication lookup (auth_query) did not finish within {}",
                    crate::config::format_duration(limit)
                ),
            )));
        }
    };
    shared.security.auth_query.put(user, found.clone());
    Ok(found.as_deref().map(Secret::parse))
}
