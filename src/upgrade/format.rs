//! The hand-over format, version [`VERSION`] (docs/upgrades.md describes it field by field).
//! Every frame on the channel is one JSON object `{"version": N, "message": {...}}`; a process
//! reads the version first and refuses a frame of a version it does not speak, so an upgrade
//! between incompatible builds aborts cleanly and the old process keeps serving. The new
//! process speaks every version from [`OLDEST_VERSION`] up, in the old process's version (N+1
//! takes over from N). Bump [`VERSION`] whenever a message or a field changes meaning;
//! adding a field with a default does not.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The format this build speaks as the old process (2: idle servers move too).
pub(crate) const VERSION: u32 = 2;

/// The oldest format this build takes over from as the new process (1: no servers come).
pub(crate) const OLDEST_VERSION: u32 = 1;

/// The first version with [`Message::Server`].
pub(crate) const SERVERS_SINCE: u32 = 2;
/// The first version in which LISTENing clients move ([`Message::Notifications`], ...).
pub(crate) const LISTEN_SINCE: u32 = 2;
/// The first version with [`Message::Shutdown`].
pub(crate) const SHUTDOWN_SINCE: u32 = 2;

/// Largest frame either side accepts (a client's prepared statements are bounded by
/// max_client_prepared_bytes well below this).
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// One frame: the format version and a message.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Frame {
    /// The format version of `message`.
    pub(crate) version: u32,
    /// What is said.
    pub(crate) message: Message,
}

/// Only the version, read before the rest so that a frame of another version is refused
/// rather than misread.
#[derive(Debug, Deserialize)]
pub(crate) struct VersionOnly {
    /// See [`Frame::version`].
    pub(crate) version: u32,
}

/// The steps of a hand-over. Old = the running process; new = the one it started.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Message {
    /// Both ways, first: who speaks (the version is in the frame).
    Hello {
        /// The sender's process id.
        pid: u32,
    },
    /// Either way: the sender cannot go on (another version, a failure); the old process keeps
    /// serving.
    Refused {
        /// Why, for both logs.
        reason: String,
    },
    /// Old to new, with the listening sockets attached in this order: TCP, then unix (when
    /// `unix` is set), then metrics (when `metrics`).
    Listeners {
        /// How many TCP listeners come first (one per `listen_addr` address).
        tcp: usize,
        /// The unix socket file and its (device, inode), which the new process now owns.
        unix: Option<(PathBuf, (u64, u64))>,
        /// A metrics listener is attached.
        metrics: bool,
    },
    /// New to old: the new process accepts on the listeners; the old one stops accepting.
    Accepting,
    /// Old to new, with the client's socket attached: one idle client and its session.
    Client {
        /// Numbers the client within this hand-over, for the answer.
        seq: u64,
        /// The session.
        state: Box<ClientState>,
    },
    /// New to old: client `seq` is served here now; the old process closes its copy.
    Adopted {
        /// See [`Message::Client`].
        seq: u64,
    },
    /// New to old: client `seq` was not taken; the old process keeps serving it.
    NotAdopted {
        /// See [`Message::Client`].
        seq: u64,
        /// Why.
        reason: String,
    },
    /// Either way: a CancelRequest whose key the sender does not know (its client is, or was
    /// just moved, in the other process).
    Cancel(CancelKeyState),
    /// Old to new (version 2 on), with the server's socket attached: one idle server
    /// connection and its state. Answered with Adopted or NotAdopted (one `seq` numbering for
    /// clients and servers); NotAdopted means the new process closed it.
    Server {
        /// Numbers the server within this hand-over, for the answer.
        seq: u64,
        /// The server's state.
        state: Box<ServerState>,
    },
    /// Old to new: every client was handed over or has gone; nothing more comes.
    Done,
    /// New to old, after Done: systemd was told the new main pid; the old process exits.
    Bye,
    /// Old to new: notifications the old process's listening connection read for a client
    /// handed over with channels ([`ListenState`]), before that client's marker; the new
    /// process writes them to the client before its own (docs/upgrades.md, "LISTEN").
    Notifications {
        /// The client's marker channel ([`ListenState::marker`]).
        marker: String,
        /// The messages as the client receives them (NotificationResponse, NoticeResponse).
        #[serde(with = "b64_list")]
        messages: Vec<Vec<u8>>,
    },
    /// Old to new: the old process's listening connection read the client's marker; every
    /// notification before it was sent (in `notifications`), and nothing more comes for it.
    MarkerSeen {
        /// See [`Message::Notifications`].
        marker: String,
    },
    /// Old to new: the old process stopped forwarding the client's notifications before it saw
    /// the marker (a bound or a timeout); the new process tells the client some may be missed.
    MarkerMissed {
        /// See [`Message::Notifications`].
        marker: String,
        /// Why, for the log.
        reason: String,
    },
    /// Old to new: the old process was told to stop (SIGTERM, SIGINT, SHUTDOWN) during the
    /// hand-over; the service stops, so the new process stops the same way.
    Shutdown {
        /// How it stops.
        mode: ShutdownState,
    },
}

/// How a shutdown passed on by [`Message::Shutdown`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ShutdownState {
    /// Until the clients leave by themselves (SIGTERM, SHUTDOWN WAIT_FOR_CLIENTS).
    WaitForClients,
    /// Until transactions finish (SIGINT, SHUTDOWN WAIT_FOR_SERVERS).
    WaitForServers,
    /// Now (a second signal, SHUTDOWN).
    Now,
}

/// A cancel key (BackendKeyData) sluice issued a client.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct CancelKeyState {
    /// The process id the client was given.
    pub(crate) pid: i32,
    /// The secret the client was given.
    pub(crate) secret: i32,
}

/// Where a client connected from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PeerState {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A unix-socket client.
    Unix,
}

/// One idle client's session: everything the new process needs to serve it as if it had
/// logged in there, and to show it as before (SHOW CLIENTS).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClientState {
    /// Where it connected from.
    pub(crate) peer: PeerState,
    /// Its process id (unix-socket peers, SO_PEERCRED).
    pub(crate) peer_pid: Option<i32>,
    /// sluice's end of a TCP connection.
    pub(crate) local: Option<SocketAddr>,
    /// Client-facing user name.
    pub(crate) user: String,
    /// Client-facing database name.
    pub(crate) database: String,
    /// Its current application_name.
    pub(crate) application_name: String,
    /// Wall-clock connect time, seconds since 1970.
    pub(crate) connected_unix: u64,
    /// How long it had been connected when it was handed over, in milliseconds.
    pub(crate) connected_ms: u64,
    /// The cancel key it was given at login; the new process registers the same one.
    pub(crate) cancel_key: CancelKeyState,
    /// The session settings it asked for (startup and SET), see `session/params.rs`.
    pub(crate) params: Vec<ParamState>,
    /// Its servers' settings are read back after every transaction.
    pub(crate) read_back_always: bool,
    /// Its named prepared statements (transaction mode).
    pub(crate) statements: Vec<StatementState>,
    /// True when sluice tracked its statements (even with none left).
    pub(crate) tracks_statements: bool,
    /// Bytes read from the client and not yet processed (base64).
    #[serde(with = "b64")]
    pub(crate) pending_input: Vec<u8>,
    /// Its latest query text (first 200 characters), for the console.
    pub(crate) last_query: String,
    /// The secret its pool logs in to PostgreSQL with, when the login produced one that the
    /// configuration does not hold (SCRAM pass-through keys, an auth_query answer).
    pub(crate) secret: Option<SecretState>,
    /// Its LISTEN channels (transaction mode), when it listens on any.
    #[serde(default)]
    pub(crate) listen: Option<ListenState>,
}

/// A LISTENing client's subscriptions in flight (docs/upgrades.md, "LISTEN"): the new process
/// LISTENs on `channels` and on `marker`, then NOTIFYs `marker`. Notifications the old
/// process's listening connection reads before the marker are the old process's (sent in
/// [`Message::Notifications`], then [`Message::MarkerSeen`]); those after it, the new one's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ListenState {
    /// The channels it listens on (committed: the client is idle, no transaction is open).
    pub(crate) channels: Vec<String>,
    /// A channel private to this hand-over of this client (`sluice_handover_<pid>_<n>`).
    pub(crate) marker: String,
    /// Messages already waiting in its old mailbox, as the client receives them, in order.
    #[serde(with = "b64_list")]
    pub(crate) queued: Vec<Vec<u8>>,
}

/// One session setting a client wants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ParamState {
    /// Name as the client wrote it.
    pub(crate) name: String,
    /// Value as the client wrote it.
    pub(crate) requested: String,
    /// The server's spelling of the value, once one reported it.
    pub(crate) canonical: Option<String>,
    /// What its startup packet said of it.
    pub(crate) startup: StartupState,
}

/// What a client's startup packet said about a setting (RESET returns to it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StartupState {
    /// Not in the startup packet.
    Absent,
    /// The wanted value is the startup value.
    Same,
    /// The client SET another value; this was the startup value.
    Was(String),
}

/// A prepared statement a client holds, by the client's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatementState {
    /// The client's name for it (base64).
    #[serde(with = "b64")]
    pub(crate) name: Vec<u8>,
    /// The Parse body after the name: text, NUL, parameter types (base64).
    #[serde(with = "b64")]
    pub(crate) body: Vec<u8>,
    /// Hash of the row description the client was given, if it described the statement.
    pub(crate) shape: Option<u64>,
    /// Its plan changed under the client (PostgreSQL would refuse it until prepared again).
    pub(crate) changed: bool,
}

/// One idle server connection to PostgreSQL (plain TCP or unix socket, never TLS): what the new
/// process needs to lend it as if it had opened it itself, and to show it as before.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ServerState {
    /// The pool's client-facing database name.
    pub(crate) database: String,
    /// The pool's client-facing user name.
    pub(crate) user: String,
    /// The database name it logged in to on PostgreSQL.
    pub(crate) server_database: String,
    /// The user it logged in as on PostgreSQL.
    pub(crate) server_user: String,
    /// The host (or unix socket directory) it is connected to.
    pub(crate) host: String,
    /// Its port.
    pub(crate) port: u16,
    /// A TCP socket (else unix).
    pub(crate) tcp: bool,
    /// The startup parameters it logged in with (the database's client_encoding, ...).
    pub(crate) startup: Vec<(String, String)>,
    /// The database's connect_query it ran after login.
    pub(crate) connect_query: Option<String>,
    /// BackendKeyData: the backend's process id.
    pub(crate) backend_pid: i32,
    /// BackendKeyData: the backend's secret key.
    pub(crate) backend_secret: i32,
    /// The ParameterStatus values it reported, as of now.
    pub(crate) params: Vec<(String, String)>,
    /// Settings sluice applied on it for the client that used it last.
    pub(crate) applied: Vec<(String, String)>,
    /// The settings fingerprint of the client that left it (None: unknown).
    pub(crate) params_fingerprint: Option<u64>,
    /// The prepared statements sluice created on it.
    pub(crate) statements: Vec<ServerStatementState>,
    /// Wall-clock open time, milliseconds since 1970 (SHOW SERVERS connect_time).
    pub(crate) opened_unix_ms: u64,
    /// How long it had been open at the hand-over, in milliseconds (server_lifetime).
    pub(crate) age_ms: u64,
    /// How long it had been idle at the hand-over, in milliseconds (server_idle_timeout).
    pub(crate) idle_ms: u64,
    /// PostgreSQL refused a write on it (its host may have become a standby).
    pub(crate) read_only_refused: bool,
    /// The ParameterStatus set its pool's servers report at login (what clients are told at
    /// login, and what a setting no client wants is reset to); empty if unknown.
    #[serde(default)]
    pub(crate) pool_login_params: Vec<(String, String)>,
}

/// A prepared statement a server holds, under sluice's name for it (`sluice_` and the hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ServerStatementState {
    /// The hash naming it on the server (32 hex digits).
    pub(crate) hash: String,
    /// Hash of its row description on this server, once seen.
    pub(crate) shape: Option<u64>,
    /// Prepared before its plan was found unusable: closed and prepared again before use.
    pub(crate) stale: bool,
}

/// A secret for logging in to PostgreSQL (never logged).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum SecretState {
    /// A password.
    Plain {
        /// The password.
        password: String,
    },
    /// `md5` hex digest (without the prefix).
    Md5 {
        /// The 32 hex digits.
        hex: String,
    },
    /// A SCRAM-SHA-256 verifier, with a client's ClientKey when it logged in with SCRAM.
    Scram {
        /// `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`.
        verifier: String,
        /// The ClientKey (base64), for pass-through.
        client_key: Option<String>,
    },
}

impl std::fmt::Debug for SecretState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretState(..)")
    }
}

/// Bytes as base64 strings in JSON.
mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Lists of byte strings as lists of base64 strings in JSON.
mod b64_list {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|b| STANDARD.encode(b)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .into_iter()
            .map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// Encodes a frame claiming `version` (a test hook makes a build claim another one).
pub(crate) fn encode_as(version: u32, message: &Message) -> Result<Vec<u8>, String> {
    #[derive(Serialize)]
    struct Out<'a> {
        version: u32,
        message: &'a Message,
    }
    serde_json::to_vec(&Out { version, message }).map_err(|e| e.to_string())
}

/// Decodes a frame, refusing any version outside `accepted` (the versions a reader speaks:
/// every one this build knows before the hello, the agreed one after it); returns the frame's
/// version with its message.
pub(crate) fn decode(
    bytes: &[u8],
    accepted: std::ops::RangeInclusive<u32>,
) -> Result<(u32, Message), String> {
    let v: VersionOnly = serde_json::from_slice(bytes).map_err(|e| format!("unreadable frame: {e}"))?;
    if !accepted.contains(&v.version) {
        let speaks = match accepted.start() == accepted.end() {
            true => accepted.start().to_string(),
            false => format!("{} to {}", accepted.start(), accepted.end()),
        };
        return Err(format!(
            "hand-over format version {} is not one this build speaks ({speaks})",
            v.version
        ));
    }
    let frame: Frame = serde_json::from_slice(bytes).map_err(|e| format!("unreadable frame: {e}"))?;
    let (since, what) = match frame.message {
        Message::Server { .. } => (SERVERS_SINCE, "server"),
        Message::Shutdown { .. } => (SHUTDOWN_SINCE, "shutdown"),
        Message::Notifications { .. } | Message::MarkerSeen { .. } | Message::MarkerMissed { .. } => {
            (LISTEN_SINCE, "notifications")
        }
        _ => (OLDEST_VERSION, ""),
    };
    if frame.version >= since {
        return Ok((frame.version, frame.message));
    }
    Err(format!("a {what} frame in format version {}", frame.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_of_another_version_is_refused_and_this_one_round_trips() {
        let bytes = encode_as(VERSION + 1, &Message::Done).expect("encode");
        let e = decode(&bytes, OLDEST_VERSION..=VERSION).expect_err("another version");
        assert!(e.contains("version"), "{e}");
        let bytes = encode_as(VERSION, &Message::Adopted { seq: 7 }).expect("encode");
        assert!(matches!(
            decode(&bytes, VERSION..=VERSION),
            Ok((VERSION, Message::Adopted { seq: 7 }))
        ));
    }

    #[test]
    fn version_1_is_read_and_a_server_frame_in_it_is_refused() {
        let bytes = encode_as(1, &Message::Hello { pid: 9 }).expect("encode");
        assert!(matches!(
            decode(&bytes, OLDEST_VERSION..=VERSION),
            Ok((1, Message::Hello { pid: 9 }))
        ));
        assert!(
            decode(&bytes, VERSION..=VERSION).is_err(),
            "not after agreeing on 2"
        );
        let server = Message::Server {
            seq: 1,
            state: Box::new(ServerState {
                database: "d".into(),
                user: "u".into(),
                server_database: "d".into(),
                server_user: "u".into(),
                host: "127.0.0.1".into(),
                port: 5432,
                tcp: true,
                startup: vec![],
                connect_query: None,
                backend_pid: 1,
                backend_secret: 2,
                params: vec![],
                applied: vec![],
                params_fingerprint: None,
                statements: vec![],
                opened_unix_ms: 0,
                age_ms: 0,
                idle_ms: 0,
                read_only_refused: false,
                pool_login_params: vec![],
            }),
        };
        let bytes = encode_as(1, &server).expect("encode");
        assert!(decode(&bytes, OLDEST_VERSION..=VERSION).is_err());
        let bytes = encode_as(2, &server).expect("encode");
        assert!(matches!(
            decode(&bytes, VERSION..=VERSION),
            Ok((2, Message::Server { seq: 1, .. }))
        ));
    }

    #[test]
    fn forwarded_notifications_round_trip_and_a_state_without_listen_reads_as_none() {
        let m = Message::Notifications {
            marker: "sluice_handover_1_2".into(),
            messages: vec![b"A\0\0\0\x0b".to_vec(), vec![0, 255]],
        };
        let bytes = encode_as(VERSION, &m).expect("encode");
        assert!(
            decode(&encode_as(1, &m).expect("encode"), OLDEST_VERSION..=VERSION).is_err(),
            "notifications are not part of format 1"
        );
        match decode(&bytes, VERSION..=VERSION) {
            Ok((_, Message::Notifications { marker, messages })) => {
                assert_eq!(marker, "sluice_handover_1_2");
                assert_eq!(messages, vec![b"A\0\0\0\x0b".to_vec(), vec![0, 255]]);
            }
            other => panic!("{other:?}"),
        }
        // A state written by a build that did not know `listen`.
        let state = r#"{"peer":"unix","peer_pid":null,"local":null,"user":"u","database":"d",
            "application_name":"","connected_unix":1,"connected_ms":2,
            "cancel_key":{"pid":1,"secret":2},"params":[],"read_back_always":false,
            "statements":[],"tracks_statements":false,"pending_input":"","last_query":"",
            "secret":null}"#;
        let state: ClientState = serde_json::from_str(state).expect("reads");
        assert!(state.listen.is_none());
    }
}
