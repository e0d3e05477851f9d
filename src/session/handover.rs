//! An upgrade's hooks in the session (docs/upgrades.md): an idle session hands its state and
//! its socket to the new process and ends once that process has adopted it; the new process
//! adopts such a session and runs it as if the client had logged in there, under the same
//! cancel key. (Cancel requests for keys this process does not know go to the other process:
//! `login/startup.rs`, `cancel`.)

use super::client::ClientIo;
use super::login::{LoggedIn, pool_for};
use super::params::ClientParams;
use super::statements::{ClientStatement, ClientStatements, MAX_LISTEN_STATEMENTS};
use super::{Ending, Session, SessionState};
use crate::auth::{ScramVerifier, Secret};
use crate::clients::{CancelKey, ClientInfo, PeerAddr};
use crate::notify::sql::{ListenSql, classify};
use crate::shared::Shared;
use crate::stream::{ClientSocket, PlainSocket};
use crate::upgrade::Outgoing;
use crate::upgrade::format::{CancelKeyState, ClientState, PeerState, SecretState, StatementState};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a session waits for the new process's answer. The old process's hand-over task
/// answers (or gives up, stopping the new process) well within this; past it the session
/// cannot know who serves the socket and ends.
const REPLY_LIMIT: Duration = Duration::from_secs(60);

impl Session {
    /// Idle and asked to hand itself over: sends its state and socket to the new process.
    /// `Some` when the new process serves the client now (this session just ends); `None` when
    /// it stays here (TLS, not idle after all, refused, or the hand-over failed).
    pub(super) async fn hand_over(&mut self) -> Option<Ending> {
        let info = self.login.info().clone();
        let stays = || {
            info.withdraw_hand_over();
            None
        };
        let ready = matches!(self.state, SessionState::Idle)
            && self.client.at_boundary()
            && self.client.outbuf.is_empty();
        let Some(outbox) = self.login.shared().handover.sender().filter(|_| ready) else {
            return stays();
        };
        if self.client.socket.is_tls() {
            return stays(); // TLS: see below (checked first: no marker for a client that stays)
        }
        // A LISTENing client: the marker is LISTENed before it goes (handover_listen.rs).
        let listen = match self.export_listen().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(client = info.id, "upgrade: a LISTENing client stays: {e}");
                return stays();
            }
        };
        let kept = listen.clone();
        let mut state = Box::new(self.export());
        state.listen = listen;
        let whole = std::mem::replace(&mut self.client.socket, ClientSocket::closed());
        let socket = match whole.take_plain() {
            Ok(s) => s,
            Err(whole) => {
                // TLS: its session state cannot leave this process; it stays until it leaves.
                self.client.socket = whole;
                if let Some(l) = kept {
                    self.keep_listen(l);
                }
                return stays();
            }
        };
        let answer = match socket.duplicate() {
            Ok(copy) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let parcel = Outgoing::Client {
                    id: info.id,
                    state,
                    socket: copy,
                    reply,
                };
                match outbox.send(parcel).await {
                    Ok(()) => tokio::time::timeout(REPLY_LIMIT, answer).await.ok(),
                    Err(_) => Some(Ok(Err("the hand-over ended".to_string()))),
                }
            }
            Err(e) => Some(Ok(Err(e.to_string()))),
        };
        match answer {
            Some(Ok(Ok(()))) => {
                drop(socket); // the new process serves it now
                if let Some(l) = kept {
                    self.forward_listen(l.marker, &outbox).await;
                }
                Some(Ending::HandedOver)
            }
            None => Some(Ending::Error(crate::clients::Kill::HandOver.error())),
            Some(_) => match socket.into_client() {
                Ok(whole) => {
                    self.client.socket = whole;
                    if let Some(l) = kept {
                        self.keep_listen(l);
                    }
                    stays()
                }
                Err(_) => Some(Ending::ClientLeft),
            },
        }
    }

    /// The session in the transfer format.
    fn export(&self) -> ClientState {
        let info = self.login.info();
        let (pid, secret) = info.cancel_key().unwrap_or_default();
        let (params, read_back_always) = self.login.params.export();
        let statements = self.statements.as_ref().map_or_else(Vec::new, |s| {
            s.iter()
                .map(|(name, st)| StatementState {
                    name: name.to_vec(),
                    body: st.def.body.to_vec(),
                    shape: st.shape,
                    changed: st.changed,
                })
                .collect()
        });
        ClientState {
            peer: match &info.peer() {
                PeerAddr::Tcp(a) => PeerState::Tcp(*a),
                PeerAddr::Unix => PeerState::Unix,
            },
            peer_pid: info.peer_pid(),
            local: info.local(),
            user: info.user().to_string(),
            database: info.database().to_string(),
            application_name: info.application_name(),
            connected_unix: info.connected_unix_secs(),
            connected_ms: info.connected_at().elapsed().as_millis() as u64,
            cancel_key: CancelKeyState { pid, secret },
            params,
            read_back_always,
            tracks_statements: self.statements.is_some(),
            statements,
            pending_input: self.client.inbuf.to_vec(),
            last_query: info.last_query(),
            secret: self
                .login
                .pool
                .settings()
                .target
                .secret
                .as_ref()
                .map(export_secret),
            listen: None,
        }
    }
}

/// Serves a client handed over by the old process: registers it under its cancel key and runs
/// its session here. On refusal (a limit, the key taken, an unknown database) nothing was
/// kept: the old process goes on serving the client.
pub(crate) fn adopt(shared: &Arc<Shared>, state: ClientState, socket: OwnedFd) -> Result<(), String> {
    let config = shared.config.load_full();
    let database = state.database.as_str();
    let user = state.user.as_str();
    if config.database(database).is_none() || shared.is_disabled(database) {
        return Err(format!("database \"{database}\" is not served here"));
    }
    let peer = match state.peer {
        PeerState::Tcp(a) => PeerAddr::Tcp(a),
        PeerState::Unix => PeerAddr::Unix,
    };
    let (ticket, place) = shared.begin_login(&peer).map_err(|e| e.message)?;
    let effective = config.effective(&config.database(database).cloned().unwrap_or_default(), user);
    let slot = shared
        .admit_client(
            place,
            (database, effective.database.max_db_client_connections as usize),
            (user, effective.user.max_user_client_connections as usize),
        )
        .map_err(|limit| format!("no more connections allowed ({limit})"))?;
    let names = slot
        .names()
        .unwrap_or_else(|| crate::clients::ClientNames::new(database, user));
    let connected_at = Instant::now()
        .checked_sub(Duration::from_millis(state.connected_ms))
        .unwrap_or_else(Instant::now);
    let info = ClientInfo::new(
        peer.clone(),
        state.peer_pid,
        state.local,
        names,
        &state.application_name,
    )
    .connected_since(connected_at, state.connected_unix);
    info.set_last_query(&state.last_query);
    let info = Arc::new(info);
    let key: CancelKey = (state.cancel_key.pid, state.cancel_key.secret);
    let registered = shared
        .register_adopted(info.clone(), slot, key)
        .ok_or("its cancel key is taken here")?;
    drop(ticket);
    let secret = match state.secret {
        Some(s) => import_secret(s),
        None => config.user_secret(user).map(Secret::parse),
    };
    let pool = pool_for(shared, &config, database, user, secret).map_err(|e| e.message)?;
    let statements = state.tracks_statements.then(|| {
        let mut s = Box::new(ClientStatements::default());
        for st in state.statements {
            let def = crate::server::statements::StatementDef::from_parse_body(&st.body);
            let statement = ClientStatement {
                def,
                epoch: pool.plans.current(),
                shape: st.shape,
                changed: st.changed,
            };
            let name = bytes::Bytes::from(st.name);
            // A prepared LISTEN/UNLISTEN (asyncpg's add_listener) stays answered by sluice.
            let listens = matches!(classify(&st.body), ListenSql::Command(_));
            if listens && s.listens.len() < MAX_LISTEN_STATEMENTS {
                s.listens.push(name.clone());
            }
            s.restore(name, statement);
        }
        info.set_prepared(s.len());
        s
    });
    let listening = match state.listen {
        Some(listen) => Some(super::handover_listen::adopt_listen(
            shared, &pool, &info, listen,
        )?),
        None => None,
    };
    let socket = PlainSocket::from_fd(socket, matches!(peer, PeerAddr::Tcp(_)));
    let max_message = (config.pooler.max_packet_size as usize).min(crate::protocol::MAX_CLIENT_MESSAGE);
    let login = LoggedIn {
        registered,
        pool,
        params: ClientParams::import(state.params, state.read_back_always),
    };
    let pending = state.pending_input;
    // Registers the socket with the calling thread's runtime and makes the session.
    let place = move || -> std::io::Result<Session> {
        let mut client = ClientIo::new(socket.into_client()?, max_message);
        client.inbuf.extend_from_slice(&pending);
        Ok(Session {
            client,
            login,
            state: SessionState::Idle,
            statements,
            listening,
        })
    };
    match shared.workers.get() {
        // runtime = "per-core": on a worker thread like any accepted client (the accepting
        // thread, which runs the hand-over, would otherwise serve every adopted client).
        Some(workers) => workers.spawn(async move {
            match place() {
                Ok(session) => super::serve_session(session).await,
                Err(e) => tracing::warn!(
                    "upgrade: an adopted client's socket could not be registered on its worker thread: {e}"
                ),
            }
        }),
        None => super::spawn_session(place().map_err(|e| e.to_string())?),
    }
    Ok(())
}

/// The pool (`database`, `user`) as a login would find or create it, for a server handed over
/// by the old process; Err when this process's configuration does not serve the database.
pub(crate) fn pool_of(
    shared: &Arc<Shared>,
    database: &str,
    user: &str,
) -> Result<Arc<crate::pool::Pool>, String> {
    let config = shared.config.load_full();
    if config.database(database).is_none() || shared.is_disabled(database) {
        return Err(format!("database \"{database}\" is not served here"));
    }
    let secret = config.user_secret(user).map(Secret::parse);
    pool_for(shared, &config, database, user, secret).map_err(|e| e.message)
}

fn export_secret(secret: &Secret) -> SecretState {
    let verifier = |v: &ScramVerifier| {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            v.iterations,
            B64.encode(&v.salt),
            B64.encode(v.stored_key),
            B64.encode(v.server_key)
        )
    };
    match secret {
        Secret::Plain(p) => SecretState::Plain { password: p.clone() },
        Secret::Md5(h) => SecretState::Md5 { hex: h.clone() },
        Secret::Scram(v) => SecretState::Scram {
            verifier: verifier(v),
            client_key: None,
        },
        Secret::ScramKeys {
            client_key,
            verifier: v,
        } => SecretState::Scram {
            verifier: verifier(v),
            client_key: Some(B64.encode(client_key)),
        },
    }
}

fn import_secret(secret: SecretState) -> Option<Secret> {
    Some(match secret {
        SecretState::Plain { password } => Secret::Plain(password),
        SecretState::Md5 { hex } => Secret::Md5(hex),
        SecretState::Scram { verifier, client_key } => {
            let verifier = ScramVerifier::parse(&verifier)?;
            match client_key.and_then(|k| B64.decode(k).ok()) {
                Some(k) => Secret::ScramKeys {
                    client_key: k.try_into().ok()?,
                    verifier,
                },
                None => Secret::Scram(verifier),
            }
        }
    })
}
