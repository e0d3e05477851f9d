//! The PostgreSQL v3 wire protocol as sluice needs it: startup packets, message framing with length
//! limits, the messages sluice itself sends to clients, the scanner that finds message
//! boundaries in relayed byte streams without decoding them, and the table of the message types
//! sluice acts on (`tags`).

mod error_response;
pub mod frontend;
pub mod messages;
mod scan;
mod startup;
pub mod tags;
mod tx_status;

pub use error_response::{PgError, Severity, sqlstate};
pub use frontend::check_client_message;
pub use scan::{FrameError, FrameScanner, ScanItem, Want};
pub use startup::{StartupError, StartupPacket, StartupParams, read_startup_packet};
pub use tx_status::{TxStatus, UnknownTxStatus};

/// Largest startup packet accepted (PostgreSQL's own limit is 10000 bytes).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Largest message (type byte included) a client may send after login, whatever
/// max_packet_size says: PostgreSQL refuses any message whose length field exceeds 1 GiB - 1
/// (PQ_LARGE_MESSAGE_LIMIT), so a longer one is refused by sluice (08P01) instead of being
/// streamed to a server that would drop the connection half way.
pub const MAX_CLIENT_MESSAGE: usize = 0x4000_0000;

/// Largest message sluice decodes whole while logging in or reading a server's login messages.
pub const MAX_LOGIN_MESSAGE: usize = 1 << 20;
