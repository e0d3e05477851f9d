//! Logging a client in: the startup packet (TLS negotiation, refusing GSS encryption, answering
//! cancel requests, checking the protocol version), the database and user lookup,
//! authentication, and the welcome (ParameterStatus, BackendKeyData, ReadyForQuery).

use super::Refusal;
use crate::clients::{ClientInfo, PeerAddr};
use crate::config::{Config, SslMode};
use crate::pool::{Disposition, Pool, PoolKey};
use crate::protocol::{
    PgError, StartupPacket, StartupParams, TxStatus, messages, read_startup_packet, sqlstate,
};
use crate::session::params::ClientParams;
use crate::shared::Shared;
use crate::stream::Stream;
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// A client that passed login.
pub(crate) struct LoggedIn {
    /// Its entry in the registry (the client's info, and the registry itself).
    pub(crate) registered: crate::shared::Registered,
    pub(crate) pool: Arc<Pool>,
    pub(crate) params: ClientParams,
}

impl LoggedIn {
    /// What the console, the pools and the leak reports see of this client.
    pub(crate) fn info(&self) -> &Arc<ClientInfo> {
        self.registered.info()
    }

    /// The pooler's shared state.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        self.registered.shared()
    }
}

/// Who logged in: a client of a pool, or a user of the admin console.
pub(crate) enum Login {
    /// A client of a database pool.
    Pooled(Box<LoggedIn>),
    /// A console user with this role (the welcome was sent).
    Console {
        /// User name.
        user: String,
        /// What the user may do.
        role: crate::admin::Role,
        /// Where the session is counted, for as long as it lasts.
        seat: crate::shared::ConsoleSeat,
    },
}

/// Runs the whole login; on success the welcome has been written to the client.
/// `on_server` is set while the login waits for a server rather than for the client (so a
/// client_login_timeout can say which it was).
pub(crate) async fn log_in(
    stream: &mut Stream,
    peer: &PeerAddr,
    shared: &Arc<Shared>,
    place: crate::shared::LoginPlace,
    on_server: &std::sync::atomic::AtomicBool,
) -> Result<Login, Refusal> {
    let params = negotiate(stream, peer, shared).await?;
    let config = shared.config.load_full();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        Refusal::Fatal(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        ))
    })?;
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(Refusal::Fatal(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by sluice",
        )));
    }
    if crate::admin::CONSOLE_DATABASES.contains(&database.as_str()) {
        // The console, for admin_users and stats_users only: counted like any login until it
        // is authenticated; then it may move to the console's reserve beyond max_client_conn.
        let Some(role) = crate::admin::role_of(&config, &user) else {
            return Err(Refusal::Fatal(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "not allowed",
            )));
        };
        super::client_auth::authenticate(stream, peer, shared, &config, &user, &database).await?;
        let seat = shared
            .seat_console(place)
            .ok_or_else(|| Refusal::Fatal(crate::shared::max_client_conn_error(shared)))?;
        let mut out = BytesMut::new();
        crate::admin::welcome(&mut out);
        stream.write_all(&out).await?;
        return Ok(Login::Console { user, role, seat });
    }
    if shared.is_disabled(&database) {
        return Err(Refusal::Fatal(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("database \"{database}\" is disabled"),
        )));
    }
    if config.database(&database).is_none() {
        return Err(Refusal::Fatal(PgError::fatal(
            sqlstate::INVALID_CATALOG_NAME,
            format!("no such database: {database}"),
        )));
    }
    let effective = config.effective(&config.database(&database).cloned().unwrap_or_default(), &user);
    let p = &config.pooler;
    let db_limit = effective.database.max_db_client_connections;
    let user_limit = effective.user.max_user_client_connections;
    let slot = shared
        .admit_client(
            place,
            (&database, db_limit as usize),
            (&user, user_limit as usize),
        )
        .map_err(|limit| {
            Refusal::Fatal(if limit == "max_client_conn" {
                crate::shared::max_client_conn_error(shared)
            } else {
                PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("no more connections allowed ({limit})"),
                )
                .with_detail(format!(
                    "{} clients are connected in all; database \"{database}\", user \"{user}\"",
                    shared.client_count()
                ))
                .with_hint(format!(
                    "raise {limit}, or find the application that does not close its connections"
                ))
            })
        })?;

    let secret = super::client_auth::authenticate(stream, peer, shared, &config, &user, &database).await?;

    let mut params = params;
    if p.application_name_add_host {
        add_host_to_application_name(&mut params, peer);
    }
    let mut client_params = ClientParams::from_startup(&params, &p.ignore_startup_parameters)
        .map_err(|e| Refusal::Fatal(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.0)))?;
    if p.session_state_check == crate::config::SessionStateCheck::Always {
        client_params.read_back_always();
    }
    let app_name = client_params
        .reported_value("application_name")
        .unwrap_or("")
        .to_string();
    // The names as the registry's shared copies: no allocation per client.
    let names = slot
        .names()
        .unwrap_or_else(|| crate::clients::ClientNames::new(&database, &user));
    let info = Arc::new(ClientInfo::new(
        peer.clone(),
        stream.peer_pid(),
        stream.local_addr(),
        names,
        &app_name,
    ));
    let registered = shared.register_client(info.clone(), slot);
    // Checked once registered: a shutdown that begins after this check finds the client in
    // the registry and closes it with the others.
    if let crate::shared::Lifecycle::Draining(crate::shared::ShutdownMode::WaitForServers)
    | crate::shared::Lifecycle::Exit = shared.lifecycle()
    {
        return Err(Refusal::Fatal(PgError::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "pooler is shutting down",
        )));
    }
    let pool = pool_for(shared, &config, &database, &user, secret).map_err(Refusal::Fatal)?;
    // Known once any server of the pool logged in; only the first clients wait (boxed: that
    // wait is large, and every other login would carry it).
    let welcome = match pool.welcome_params() {
        Some(w) => w,
        None => {
            on_server.store(true, std::sync::atomic::Ordering::Relaxed);
            let welcome = Box::pin(welcome_params(&pool, &info)).await?;
            on_server.store(false, std::sync::atomic::Ordering::Relaxed);
            welcome
        }
    };
    let (process_id, secret_key) = registered.cancel_key();

    let mut out = BytesMut::new();
    for (name, value) in welcome.iter() {
        let value = client_params.reported_value(name).unwrap_or(value);
        messages::parameter_status(&mut out, name, value);
    }
    messages::backend_key_data(&mut out, process_id, secret_key);
    messages::ready_for_query(&mut out, TxStatus::Idle);
    stream.write_all(&out).await?;
    Ok(Login::Pooled(Box::new(LoggedIn {
        registered,
        pool,
        params: client_params,
    })))
}

/// The pool of (`database`, `user`), made when it is the first client's; it learns `secret`
/// (what the client's login produced) for its server logins.
pub(crate) fn pool_for(
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    database: &str,
    user: &str,
    secret: Option<crate::auth::Secret>,
) -> Result<Arc<Pool>, PgError> {
    let effective = config.effective(&config.database(database).cloned().unwrap_or_default(), user);
    let key = PoolKey {
        database: database.to_string(),
        user: user.to_string(),
    };
    let db_server_limit = effective.database.max_db_connections as usize;
    let user_server_limit = effective.user.max_user_connections as usize;
    let settings = || {
        crate::pool::settings_for(
            config,
            database,
            user,
            secret.clone(),
            shared.security.server_tls(config).unwrap_or_default(),
        )
    };
    let limits = (db_server_limit, user_server_limit);
    let pool = if config.databases.contains_key(database) {
        shared.pools.get_or_create(key, limits.0, limits.1, settings)
    } else {
        // A database served through "*": a bounded set, freed after autodb_idle_timeout.
        let listed = |name: &str| config.databases.contains_key(name);
        shared
            .pools
            .get_or_create_auto(key, limits, listed, settings)
            .map_err(crate::pool::too_many_auto_pools)?
    };
    pool.learn_login_secret(user, secret.as_ref());
    Ok(pool)
}

/// Reads startup packets until a StartupMessage, answering SSL/GSS requests (TLS when configured,
/// also PostgreSQL 17's direct TLS) and cancels; enforces client_tls_sslmode require.
async fn negotiate(
    stream: &mut Stream,
    peer: &PeerAddr,
    shared: &Arc<Shared>,
) -> Result<StartupParams, Refusal> {
    let config = shared.config.load_full();
    let acceptor = match shared.security.tls(&config).as_ref() {
        Ok(t) => t.acceptor.clone(),
        Err(_) => None,
    };
    if let (Some(acceptor), Stream::Tcp(tcp)) = (&acceptor, &*stream) {
        let mut first = [0u8; 1];
        // A TLS ClientHello as the very first byte: direct TLS (sslnegotiation=direct).
        if tcp.peek(&mut first).await? == 1 && first[0] == 0x16 {
            Box::pin(tls_handshake(stream, acceptor, true)).await?;
        }
    }
    loop {
        let packet = read_startup_packet(stream).await.map_err(|e| {
            tracing::debug!(error = %e, "bad startup packet");
            match e {
                crate::protocol::StartupError::Invalid(what) => Refusal::Fatal(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid startup packet: {what}"),
                )),
                crate::protocol::StartupError::Io(_) => Refusal::Quiet,
            }
        })?;
        match packet {
            StartupPacket::SslRequest if stream.is_tls() => {
                return Err(Refusal::Fatal(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "SSLRequest received on an encrypted connection",
                )));
            }
            StartupPacket::SslRequest => match &acceptor {
                Some(acceptor) if matches!(stream, Stream::Tcp(_)) => {
                    stream.write_all(b"S").await?;
                    Box::pin(tls_handshake(stream, acceptor, false)).await?;
                }
                _ => stream.write_all(b"N").await?,
            },
            StartupPacket::GssEncRequest => stream.write_all(b"N").await?,
            StartupPacket::CancelRequest {
                process_id,
                secret_key,
            } => {
                cancel(shared, &config, (process_id, secret_key)).await;
                return Err(Refusal::Quiet);
            }
            StartupPacket::Startup {
                major: 3,
                minor,
                params,
            } => {
                let unknown: Vec<String> = params
                    .iter()
                    .filter(|(n, _)| n.starts_with("_pq_."))
                    .map(|(n, _)| n.clone())
                    .collect();
                let tcp = matches!(peer, PeerAddr::Tcp(_));
                if tcp && !stream.is_tls() && config.pooler.client_tls_sslmode >= SslMode::Require {
                    return Err(Refusal::Fatal(
                        PgError::fatal(sqlstate::INVALID_AUTHORIZATION, "SSL required")
                            .with_detail("client_tls_sslmode requires TLS on TCP connections")
                            .with_hint("connect with sslmode=require (or verify-ca/verify-full)"),
                    ));
                }
                if minor > 0 || !unknown.is_empty() {
                    let mut out = BytesMut::new();
                    messages::negotiate_protocol_version(&mut out, 0, &unknown);
                    stream.write_all(&out).await?;
                }
                return Ok(params);
            }
            StartupPacket::Startup { major, minor, .. } => {
                return Err(Refusal::Fatal(PgError::fatal(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"),
                )));
            }
        }
    }
}

/// A CancelRequest: to the server its client holds here, or, while an upgrade runs and the key
/// is not known here, to the other process (its client is there, or on its way).
async fn cancel(shared: &Arc<Shared>, config: &Config, key: crate::clients::CancelKey) {
    if let crate::clients::CancelRoute::Local(own) = crate::clients::cancel_route(key, config.pooler.peer_id)
        && !shared.clients.knows(own)
        && let Some(outbox) = shared.handover.sender()
    {
        let state = crate::upgrade::format::CancelKeyState {
            pid: own.0,
            secret: own.1,
        };
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            outbox.send(crate::upgrade::Outgoing::Cancel(state)),
        )
        .await;
        return;
    }
    crate::server::cancel::route_request(&shared.clients, config, key).await;
}

/// Runs a client TLS handshake; a failed one closes the connection quietly.
async fn tls_handshake(
    stream: &mut Stream,
    acceptor: &tokio_rustls::TlsAcceptor,
    direct: bool,
) -> Result<(), Refusal> {
    crate::tls::accept_client(stream, acceptor, direct)
        .await
        .map_err(|e| {
            tracing::info!(error = %e, direct, "client TLS handshake failed");
            Refusal::Quiet
        })
}

/// The parameters to greet a client with: cached from the pool's first server login, or learnt
/// now by opening (and returning) a server, which also proves the server login works.
async fn welcome_params(
    pool: &Arc<Pool>,
    info: &Arc<ClientInfo>,
) -> Result<Arc<BTreeMap<String, String>>, Refusal> {
    if let Some(w) = pool.welcome_params() {
        return Ok(w);
    }
    match pool.checkout(info, pool.settings().query_wait_timeout).await {
        Ok(server) => {
            pool.release(server, Disposition::Clean);
            pool.welcome_params().ok_or(Refusal::Quiet)
        }
        Err(e) => Err(Refusal::Fatal(
            crate::session::waiting::checkout_error(&e, pool).with_severity(crate::protocol::Severity::Fatal),
        )),
    }
}

/// application_name_add_host: `app - 10.0.0.5:41234`, as PgBouncer does.
fn add_host_to_application_name(params: &mut Vec<(String, String)>, peer: &PeerAddr) {
    let suffix = format!(" - {peer}");
    match params.iter_mut().find(|(n, _)| n == "application_name") {
        Some((_, v)) => v.push_str(&suffix),
        None => params.push((
            "application_name".to_string(),
            suffix.trim_start_matches(" - ").to_string(),
        )),
    }
}
