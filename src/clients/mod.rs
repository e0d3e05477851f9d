//! The clients layer (above tls/auth, below server): the registry of connected clients by the
//! cancel key sluice issued (`registry`), each client's record with the one record of the server
//! it holds (`info`, `held`), admission before and at login (`admission`) and the delay before a
//! failed login's error (`throttle`). Servers appear here only as the small [`HeldServer`] value
//! that server/ builds; forwarding a cancel to PostgreSQL is server/'s job.

mod admission;
mod held;
mod info;
mod peer_key;
mod pins;
mod registry;
mod throttle;
mod tick;

pub use admission::ClientSlot;
pub(crate) use admission::{ConsoleSeat, LoginPlace, LoginTicket, max_client_conn_error};
pub(crate) use held::{CancelInFlight, CancelsInFlight, HeldServer};
pub(crate) use info::{ClientInfo, ClientNames, ClientPhase, Kill, PeerAddr};
pub(crate) use peer_key::{CancelRoute, route as cancel_route};
pub(crate) use pins::{PinReason, Pins};
pub(crate) use registry::{CancelKey, ClientRegistry};
pub(crate) use tick::Tick;
