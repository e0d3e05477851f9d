//! Admission before login: every accepted connection takes one of max_client_conn's slots
//! before it sends a byte, logins in progress from one IP address are capped, and the console's
//! small reserve beyond max_client_conn is granted only once a console user has authenticated.

use super::{ClientSlot, Shared};
use crate::client_info::PeerAddr;
use crate::protocol::{PgError, sqlstate};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Console sessions allowed beyond max_client_conn (and logins that may wait for one while
/// max_client_conn is full: only a console login may keep such a place).
pub(crate) const CONSOLE_RESERVE: usize = 16;

/// Where a connection stands while it logs in.
pub(crate) enum LoginPlace {
    /// One of max_client_conn's slots (no database or user counted yet).
    Client(ClientSlot),
    /// max_client_conn was full: one of a few places that only a console login may keep,
    /// and only until it is authenticated. (Held for its drop, which gives the place back.)
    #[allow(dead_code)]
    Overflow(Counted),
}

/// Where a logged-in console session is counted (held for its drop, which gives the seat back).
#[allow(dead_code)]
pub(crate) enum ConsoleSeat {
    /// In the console's reserve beyond max_client_conn.
    Reserve(Counted),
    /// The reserve was full: in max_client_conn like any client.
    Client(ClientSlot),
}

/// Which counter a [`Counted`] unit belongs to.
#[derive(Clone, Copy)]
enum Reserve {
    /// Logins waiting for a console seat while max_client_conn is full.
    Overflow,
    /// Logged-in console sessions in the reserve.
    Console,
}

/// One unit of a bounded counter, given back when dropped.
pub(crate) struct Counted {
    shared: Arc<Shared>,
    which: Reserve,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.shared.reserve(self.which).fetch_sub(1, Ordering::AcqRel);
    }
}

/// A login in progress, counted under its IP address until dropped.
pub(crate) struct LoginTicket {
    shared: Arc<Shared>,
    addr: Option<IpAddr>,
}

impl Drop for LoginTicket {
    fn drop(&mut self) {
        self.shared.logins.fetch_sub(1, Ordering::AcqRel);
        if let Some(addr) = self.addr {
            let mut map = self.shared.logins_by_addr.lock();
            if let Some(n) = map.get_mut(&addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&addr);
                }
            }
        }
    }
}

/// Takes one unit of `counter` if it stays within `limit`.
fn take(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| {
            (c < limit).then_some(c + 1)
        })
        .is_ok()
}

/// The FATAL for a full max_client_conn.
pub(crate) fn max_client_conn_error(shared: &Shared) -> PgError {
    PgError::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        "no more connections allowed (max_client_conn)",
    )
    .with_detail(format!(
        "{} client connections are open or logging in",
        shared.client_count()
    ))
    .with_hint("raise max_client_conn, or find the application that does not close its connections")
}

impl Shared {
    fn reserve(&self, which: Reserve) -> &AtomicUsize {
        match which {
            Reserve::Overflow => &self.login_overflow,
            Reserve::Console => &self.console_seats,
        }
    }

    fn counted(self: &Arc<Self>, which: Reserve) -> Option<Counted> {
        take(self.reserve(which), CONSOLE_RESERVE).then(|| Counted {
            shared: self.clone(),
            which,
        })
    }

    /// Admits a new connection to log in: a ticket under its IP address (refused past
    /// max_logins_per_address) and a place in max_client_conn (or, when that is full, a place
    /// only a console login may keep). On refusal, the FATAL to send.
    pub(crate) fn begin_login(
        self: &Arc<Self>,
        peer: &PeerAddr,
    ) -> Result<(LoginTicket, LoginPlace), PgError> {
        let config = self.config.load();
        let per_addr = config.pooler.max_logins_per_address as usize;
        let addr = match peer {
            PeerAddr::Tcp(a) => Some(a.ip()),
            PeerAddr::Unix => None,
        };
        if let (Some(ip), true) = (addr, per_addr > 0) {
            // The map holds one entry per address with a login in progress, so it is bounded
            // by the logins max_client_conn admits.
            let mut map = self.logins_by_addr.lock();
            let n = map.entry(ip).or_insert(0);
            if *n as usize >= per_addr {
                return Err(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "no more connections allowed (max_logins_per_address)",
                )
                .with_detail(format!("{n} logins from {ip} are in progress"))
                .with_hint("raise max_logins_per_address if one host opens this many connections at once"));
            }
            *n += 1;
        }
        self.logins.fetch_add(1, Ordering::AcqRel);
        let ticket = LoginTicket {
            shared: self.clone(),
            addr: addr.filter(|_| per_addr > 0),
        };
        let place = if take(&self.clients, config.pooler.max_client_conn as usize) {
            LoginPlace::Client(ClientSlot {
                shared: self.clone(),
                database: None,
                user: None,
                handed_over: false,
            })
        } else {
            match self.counted(Reserve::Overflow) {
                Some(c) => LoginPlace::Overflow(c),
                None => return Err(max_client_conn_error(self)),
            }
        };
        Ok((ticket, place))
    }

    /// After a console user authenticated: a seat in the console's reserve if one is free
    /// (giving back the login's place), else the login's max_client_conn slot. None: neither.
    pub(crate) fn seat_console(self: &Arc<Self>, place: LoginPlace) -> Option<ConsoleSeat> {
        match (self.counted(Reserve::Console), place) {
            (Some(seat), _) => Some(ConsoleSeat::Reserve(seat)),
            (None, LoginPlace::Client(slot)) => Some(ConsoleSeat::Client(slot)),
            (None, LoginPlace::Overflow(_)) => None,
        }
    }

    /// Logins in progress (SHOW LISTS login_clients).
    pub fn logins_in_progress(&self) -> usize {
        self.logins.load(Ordering::Relaxed)
    }
}
