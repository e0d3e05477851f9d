//! Admission before login: every accepted connection takes one of max_client_conn's slots
//! before it sends a byte, logins in progress from one IP address are capped, and the console's
//! small reserve beyond max_client_conn is granted only once a console user has authenticated.
//! At login, the per-database and per-user client limits; each place is given back by its guard.

use super::info::{ClientInfo, ClientNames, PeerAddr};
use super::registry::{CancelKey, ClientRegistry};
use crate::config::PoolerConfig;
use crate::protocol::{PgError, sqlstate};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Console sessions allowed beyond max_client_conn (and logins that may wait for one while
/// max_client_conn is full: only a console login may keep such a place).
pub(crate) const CONSOLE_RESERVE: usize = 16;

/// What admission counts, in the client registry.
#[derive(Default)]
pub(crate) struct Admission {
    /// max_client_conn's slots taken: logged-in clients and logins in progress.
    clients: AtomicUsize,
    /// Logins in progress.
    logins: AtomicUsize,
    /// Logins in progress per client IP address (entries at zero are removed).
    logins_by_addr: Mutex<HashMap<IpAddr, u32>>,
    /// Logins holding a console-only place while max_client_conn is full.
    login_overflow: AtomicUsize,
    /// Logged-in console sessions in the console's reserve.
    console_seats: AtomicUsize,
    /// Clients per database and per user name, and the pairs' shared copies.
    client_counts: Mutex<ClientCounts>,
}

/// Clients per database [0] and per user [1] name. The keys double as the names' one shared
/// copy: every client of a database points at the same `Arc<str>`; every client of a pool at
/// the same [`ClientNames`] (counted too, to be dropped with its last client).
#[derive(Default)]
struct ClientCounts {
    by_name: [HashMap<Arc<str>, usize>; 2],
    /// Bounded like the others: one entry per (database, user) with a logged-in client.
    pairs: HashMap<NamePair, (Arc<ClientNames>, usize)>,
}

/// A (database, user) pair by the names' shared copies.
type NamePair = (Arc<str>, Arc<str>);

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

/// One of max_client_conn's slots (and of the database's and user's client limits), released
/// when the client's session ends.
pub struct ClientSlot {
    registry: Arc<ClientRegistry>,
    database: Option<Arc<str>>,
    user: Option<Arc<str>>,
    /// The pair's shared copy, once both names are counted.
    names: Option<Arc<ClientNames>>,
    /// The client's registration gives the slot back instead (set by
    /// [`ClientRegistry::register`]).
    handed_over: bool,
}

impl ClientSlot {
    /// The database and user names the slot counts the client under, as the pool's one shared
    /// pair.
    pub fn names(&self) -> Option<Arc<ClientNames>> {
        self.names.clone()
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if !self.handed_over {
            self.registry
                .release_client_slot(self.database.as_deref(), self.user.as_deref());
        }
    }
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
    registry: Arc<ClientRegistry>,
    which: Reserve,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.registry.reserve(self.which).fetch_sub(1, Ordering::AcqRel);
    }
}

/// A login in progress, counted under its IP address until dropped.
pub(crate) struct LoginTicket {
    registry: Arc<ClientRegistry>,
    addr: Option<IpAddr>,
}

impl Drop for LoginTicket {
    fn drop(&mut self) {
        let a = &self.registry.admission;
        a.logins.fetch_sub(1, Ordering::AcqRel);
        if let Some(addr) = self.addr {
            let mut map = a.logins_by_addr.lock();
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
pub(crate) fn max_client_conn_error(registry: &ClientRegistry) -> PgError {
    PgError::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        "no more connections allowed (max_client_conn)",
    )
    .with_detail(format!(
        "{} client connections are open or logging in",
        registry.client_count()
    ))
    .with_hint("raise max_client_conn, or find the application that does not close its connections")
}

impl ClientRegistry {
    fn reserve(&self, which: Reserve) -> &AtomicUsize {
        match which {
            Reserve::Overflow => &self.admission.login_overflow,
            Reserve::Console => &self.admission.console_seats,
        }
    }

    fn counted(self: &Arc<Self>, which: Reserve) -> Option<Counted> {
        take(self.reserve(which), CONSOLE_RESERVE).then(|| Counted {
            registry: self.clone(),
            which,
        })
    }

    /// Admits a new connection to log in: a ticket under its IP address (refused past
    /// max_logins_per_address) and a place in max_client_conn (or, when that is full, a place
    /// only a console login may keep). On refusal, the FATAL to send.
    pub(crate) fn begin_login(
        self: &Arc<Self>,
        peer: &PeerAddr,
        pooler: &PoolerConfig,
    ) -> Result<(LoginTicket, LoginPlace), PgError> {
        let per_addr = pooler.max_logins_per_address as usize;
        let addr = match peer {
            PeerAddr::Tcp(a) => Some(a.ip()),
            PeerAddr::Unix => None,
        };
        if let (Some(ip), true) = (addr, per_addr > 0) {
            // The map holds one entry per address with a login in progress, so it is bounded
            // by the logins max_client_conn admits.
            let mut map = self.admission.logins_by_addr.lock();
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
        self.admission.logins.fetch_add(1, Ordering::AcqRel);
        let ticket = LoginTicket {
            registry: self.clone(),
            addr: addr.filter(|_| per_addr > 0),
        };
        let place = if take(&self.admission.clients, pooler.max_client_conn as usize) {
            LoginPlace::Client(ClientSlot {
                registry: self.clone(),
                database: None,
                user: None,
                names: None,
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

    /// Turns a login's place into a client's slot, if the per-database and per-user client
    /// limits (0: none) allow; a console-only place is refused. On refusal, names the limit.
    pub(crate) fn admit(
        &self,
        place: LoginPlace,
        database: (&str, usize),
        user: (&str, usize),
    ) -> Result<ClientSlot, &'static str> {
        // From here on, dropping `slot` gives back whatever it has taken.
        let mut slot = match place {
            LoginPlace::Client(slot) => slot,
            LoginPlace::Overflow(_) => return Err("max_client_conn"),
        };
        let mut counts = self.admission.client_counts.lock();
        let refused = 'check: {
            for (kind, (name, max), refusal) in [
                (0usize, database, "max_db_client_connections"),
                (1, user, "max_user_client_connections"),
            ] {
                let by_name = &mut counts.by_name[kind];
                let shared_name = match by_name.get_key_value(name) {
                    Some((k, _)) => k.clone(),
                    None => Arc::from(name),
                };
                let n = by_name.entry(shared_name.clone()).or_insert(0);
                if max > 0 && *n >= max {
                    break 'check Some(refusal);
                }
                *n += 1;
                let taken = Some(shared_name);
                if kind == 0 {
                    slot.database = taken;
                } else {
                    slot.user = taken;
                }
            }
            if let (Some(database), Some(user)) = (&slot.database, &slot.user) {
                let (names, n) = counts
                    .pairs
                    .entry((database.clone(), user.clone()))
                    .or_insert_with(|| {
                        let names = ClientNames {
                            database: database.clone(),
                            user: user.clone(),
                        };
                        (Arc::new(names), 0)
                    });
                *n += 1;
                slot.names = Some(names.clone());
            }
            None
        };
        drop(counts); // before `slot` can drop: its Drop takes the same lock
        match refused {
            Some(limit) => Err(limit),
            None => Ok(slot),
        }
    }

    /// Lists a logged-in client (issuing its cancel key, which names `peer_id`) and takes over
    /// its slot. Returns
    /// whether the slot counted it under its database and under its user name, which
    /// [`ClientRegistry::unregister`] needs to give them back.
    pub(crate) fn register(
        &self,
        info: &Arc<ClientInfo>,
        mut slot: ClientSlot,
        peer_id: u16,
    ) -> (bool, bool) {
        self.issue(info, peer_id);
        slot.handed_over = true;
        (slot.database.is_some(), slot.user.is_some())
    }

    /// [`ClientRegistry::register`] under the cancel key the client already has (handed over
    /// by an upgrade). None, with the slot given back, when that key is taken.
    pub(crate) fn register_as(
        &self,
        info: &Arc<ClientInfo>,
        mut slot: ClientSlot,
        key: CancelKey,
    ) -> Option<(bool, bool)> {
        if !self.claim(info, key) {
            return None;
        }
        slot.handed_over = true;
        Some((slot.database.is_some(), slot.user.is_some()))
    }

    /// Ends a registration: retires the client's cancel key and gives back its max_client_conn
    /// slot and the per-database and per-user counts `counted` says it took.
    pub(crate) fn unregister(&self, info: &ClientInfo, counted: (bool, bool)) {
        if let Some(key) = info.cancel_key() {
            self.retire(key);
        }
        let (database, user) = counted;
        self.release_client_slot(
            database.then_some(&**info.database()),
            user.then_some(&**info.user()),
        );
    }

    /// Gives back a client's max_client_conn slot and its per-database and per-user counts.
    fn release_client_slot(&self, database: Option<&str>, user: Option<&str>) {
        self.admission.clients.fetch_sub(1, Ordering::AcqRel);
        let mut counts = self.admission.client_counts.lock();
        if let (Some(database), Some(user)) = (database, user) {
            // Found by its names' shared copies (a pair exists while both are counted).
            let key = counts.by_name[0]
                .get_key_value(database)
                .zip(counts.by_name[1].get_key_value(user))
                .map(|((d, _), (u, _))| (d.clone(), u.clone()));
            if let Some(key) = key
                && let Some((_, n)) = counts.pairs.get_mut(&key)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.pairs.remove(&key);
                }
            }
        }
        for (kind, name) in [(0usize, database), (1, user)] {
            if let Some(name) = name
                && let Some(n) = counts.by_name[kind].get_mut(name)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.by_name[kind].remove(name);
                }
            }
        }
    }

    /// max_client_conn slots taken: logged-in clients and logins in progress (console sessions
    /// in the console reserve excluded).
    pub fn client_count(&self) -> usize {
        self.admission.clients.load(Ordering::Relaxed)
    }

    /// Logins in progress (SHOW LISTS login_clients).
    pub fn logins_in_progress(&self) -> usize {
        self.admission.logins.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(registry: &Arc<ClientRegistry>) -> LoginPlace {
        registry.admission.clients.fetch_add(1, Ordering::AcqRel);
        LoginPlace::Client(ClientSlot {
            registry: registry.clone(),
            database: None,
            user: None,
            names: None,
            handed_over: false,
        })
    }

    fn pairs(registry: &ClientRegistry) -> Vec<(String, String, usize)> {
        let counts = registry.admission.client_counts.lock();
        let mut out: Vec<_> = counts
            .pairs
            .iter()
            .map(|((d, u), (_, n))| (d.to_string(), u.to_string(), *n))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_clients_of_a_pool_share_one_pair_of_names_dropped_with_the_last() {
        let r = Arc::new(ClientRegistry::default());
        let admit = |db, user, max_user| r.admit(place(&r), (db, 0), (user, max_user));
        let a = admit("db", "u", 2).expect("admitted");
        let b = admit("db", "u", 2).expect("admitted");
        let other = admit("db", "v", 0).expect("admitted");
        let (na, nb, no) = (a.names(), b.names(), other.names());
        let (na, nb, no) = (na.expect("named"), nb.expect("named"), no.expect("named"));
        assert!(Arc::ptr_eq(&na, &nb), "one pair for the clients of a pool");
        assert!(
            Arc::ptr_eq(&na.database, &no.database),
            "one database name for both pools"
        );
        assert!(!Arc::ptr_eq(&na, &no));
        assert_eq!((&*na.database, &*na.user, &*no.user), ("db", "u", "v"));
        // A client refused by its user's limit leaves no pair behind.
        assert!(admit("db", "u", 2).is_err());
        assert_eq!(
            pairs(&r),
            [("db".into(), "u".into(), 2), ("db".into(), "v".into(), 1)]
        );
        drop(a);
        assert_eq!(pairs(&r).len(), 2);
        drop((b, other));
        assert!(pairs(&r).is_empty(), "the pairs go with their last client");
        assert_eq!(r.client_count(), 0);
        assert!(
            r.admission
                .client_counts
                .lock()
                .by_name
                .iter()
                .all(HashMap::is_empty)
        );
    }
}
