//! The hand-over format, version [`VERSION`] (docs/upgrades.md describes it field by field).
//! Every frame on the channel is one JSON object `{"version": N, "message": {...}}`; a process
//! reads the version first and refuses a frame of any other version, so an upgrade between
//! incompatible builds aborts cleanly and the old process keeps serving. Bump [`VERSION`]
//! whenever a message or a field changes meaning; adding a field with a default does not.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The format this build speaks.
pub(crate) const VERSION: u32 = 1;

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

/// Decodes a frame, refusing any version but this build's.
pub(crate) fn decode(bytes: &[u8]) -> Result<Message, String> {
    let v: VersionOnly = serde_json::from_slice(bytes).map_err(|e| format!("unreadable frame: {e}"))?;
    if v.version != VERSION {
        return Err(format!(
            "hand-over format version {} is not this build's ({VERSION})",
            v.version
        ));
    }
    let frame: Frame = serde_json::from_slice(bytes).map_err(|e| format!("unreadable frame: {e}"))?;
    Ok(frame.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_of_another_version_is_refused_and_this_one_round_trips() {
        let bytes = encode_as(VERSION + 1, &Message::Done).expect("encode");
        let e = decode(&bytes).expect_err("another version");
        assert!(e.contains("version"), "{e}");
        let bytes = encode_as(VERSION, &Message::Adopted { seq: 7 }).expect("encode");
        assert!(matches!(decode(&bytes), Ok(Message::Adopted { seq: 7 })));
    }

    #[test]
    fn forwarded_notifications_round_trip_and_a_state_without_listen_reads_as_none() {
        let m = Message::Notifications {
            marker: "sluice_handover_1_2".into(),
            messages: vec![b"A\0\0\0\x0b".to_vec(), vec![0, 255]],
        };
        let bytes = encode_as(VERSION, &m).expect("encode");
        match decode(&bytes) {
            Ok(Message::Notifications { marker, messages }) => {
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
