//! The SHOW commands: PgBouncer's column names, order and types, filled from the pooler's live
//! state (pool queues, server and client registries, counters). Pure functions of a snapshot.

use super::result::{ResultSet, n, oid, t};
use crate::clients::{ClientPhase, PeerAddr};
use crate::server::ServerUse;
use crate::shared::Shared;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

const S: u32 = oid::TEXT;
const I: u32 = oid::INT4;
const Q: u32 = oid::INT8;

/// What a SHOW produces.
pub(super) enum Shown {
    /// Rows.
    Rows(ResultSet),
    /// NOTICE lines (SHOW HELP).
    Notice(String),
}

/// Session parameters the console pretends to have: `SHOW name` answers them, `SET name` is
/// ignored with a NOTICE (what drivers probe on connect).
pub(super) const FAKE_PARAMETERS: [(&str, &str); 5] = [
    ("client_encoding", "UTF-8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "GMT"),
];

/// Renders `SHOW <what>`, or None for an unknown subject.
pub(super) fn render(what: &str, shared: &Shared) -> Option<Shown> {
    if let Some((name, value)) = FAKE_PARAMETERS.iter().find(|(k, _)| k.eq_ignore_ascii_case(what)) {
        let mut rs = ResultSet::new(&[(name, S)]);
        rs.push(vec![t(*value)]);
        return Some(Shown::Rows(rs));
    }
    Some(Shown::Rows(match what {
        "HELP" => return Some(Shown::Notice(help())),
        "VERSION" => version(),
        "POOLS" => pools(shared),
        "CLIENTS" => clients(shared),
        "SERVERS" => servers(shared),
        "DATABASES" => databases(shared),
        "HOSTS" => super::hosts::hosts(shared),
        "LISTENERS" => super::listeners::listeners(shared),
        "USERS" => users(shared),
        "STATS" => super::stats::stats(shared),
        "STATS_TOTALS" => super::stats::stats_totals(shared),
        "STATS_AVERAGES" => super::stats::stats_averages(shared),
        "TOTALS" => super::stats::totals(shared),
        "CONFIG" => super::config_view::config(shared),
        "LISTS" => lists(shared),
        "STATE" => state(shared),
        "MEM" => ResultSet::new(&[
            ("name", S),
            ("size", I),
            ("used", I),
            ("free", I),
            ("memtotal", I),
        ]),
        "FDS" => ResultSet::new(&[
            ("fd", I),
            ("task", S),
            ("user", S),
            ("database", S),
            ("addr", S),
            ("port", I),
            ("cancel", Q),
            ("link", I),
            ("client_encoding", S),
            ("std_strings", S),
            ("datestyle", S),
            ("timezone", S),
            ("password", S),
            ("scram_client_key", S),
            ("scram_server_key", S),
        ]),
        "DNS_HOSTS" => dns_hosts(),
        "DNS_ZONES" => ResultSet::new(&[("zonename", S), ("serial", Q), ("count", I)]),
        "SOCKETS" | "ACTIVE_SOCKETS" => sockets(shared, what == "ACTIVE_SOCKETS"),
        "LEAKS" => super::leaks::leaks(shared),
        "LEAKS_SUMMARY" => super::leaks::summary(shared),
        "POOL_SHARES" => super::shares::pool_shares(shared),
        _ => return None,
    }))
}

/// SHOW DNS_HOSTS: the server host names sluice resolved and still caches (dns_max_ttl).
fn dns_hosts() -> ResultSet {
    let mut rs = ResultSet::new(&[("hostname", S), ("ttl", Q), ("addrs", S)]);
    for name in crate::server::resolve::cached_names() {
        rs.push(vec![t(name.name), n(name.ttl_left), t(name.addrs)]);
    }
    rs
}

fn help() -> String {
    [
        "",
        "\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION",
        "\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE",
        "\tSHOW DNS_HOSTS|DNS_ZONES",
        "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS",
        "\tSHOW LEAKS|LEAKS_SUMMARY|POOL_SHARES|HOSTS|LISTENERS (sluice)",
        "\tSET key = arg",
        "\tRELOAD",
        "\tPAUSE [<db>]",
        "\tRESUME [<db>]",
        "\tDISABLE <db>",
        "\tENABLE <db>",
        "\tRECONNECT [<db>]",
        "\tKILL [<db>]",
        "\tKILL_CLIENT <client_id>",
        "\tSUSPEND",
        "\tSHUTDOWN",
        "\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS",
        "\tWAIT_CLOSE [<db>]",
    ]
    .join("\n")
}

fn version() -> ResultSet {
    let mut rs = ResultSet::new(&[("version", S)]);
    rs.push(vec![t(crate::observe::figures::version_text())]);
    rs
}

/// Formats a wall-clock time as PgBouncer does: `2026-11-22 23:58:00 UTC`.
pub(super) fn timestamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn wall(since: std::time::Instant) -> SystemTime {
    SystemTime::now() - since.elapsed()
}

fn split_us(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_micros())
}

fn pools(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("database", S),
        ("user", S),
        ("cl_active", I),
        ("cl_waiting", I),
        ("cl_active_cancel_req", I),
        ("cl_waiting_cancel_req", I),
        ("sv_active", I),
        ("sv_active_cancel", I),
        ("sv_being_canceled", I),
        ("sv_idle", I),
        ("sv_used", I),
        ("sv_tested", I),
        ("sv_login", I),
        ("maxwait", I),
        ("maxwait_us", I),
        ("pool_mode", S),
        ("load_balance_hosts", S),
    ]);
    for (pool, f) in shared.pool_figures() {
        let (secs, us) = split_us(f.max_wait);
        rs.push(vec![
            t(&pool.key.database),
            t(&pool.key.user),
            n(f.cl_active),
            n(f.cl_waiting),
            n(0),
            n(0),
            n(f.sv_active),
            n(0),
            n(0),
            n(f.sv_idle),
            n(f.sv_used),
            n(f.sv_tested),
            n(f.sv_login),
            n(secs),
            n(us),
            t(mode_name(pool.settings().mode)),
            None,
        ]);
    }
    rs
}

use crate::observe::figures::mode_name;

/// Columns of SHOW CLIENTS and SHOW SERVERS.
const SOCKET_COLUMNS: &[(&str, u32)] = &[
    ("type", S),
    ("user", S),
    ("database", S),
    ("replication", S),
    ("state", S),
    ("addr", S),
    ("port", I),
    ("local_addr", S),
    ("local_port", I),
    ("connect_time", S),
    ("request_time", S),
    ("wait", I),
    ("wait_us", I),
    ("close_needed", I),
    ("ptr", S),
    ("link", S),
    ("remote_pid", I),
    ("tls", S),
    ("application_name", S),
    ("prepared_statements", I),
    ("id", I),
];

fn peer_addr(peer: &PeerAddr) -> (String, u16) {
    match peer {
        PeerAddr::Tcp(a) => (a.ip().to_string(), a.port()),
        PeerAddr::Unix => ("unix".to_string(), 0),
    }
}

/// SHOW CLIENTS and SHOW SERVERS end with sluice's `pinned` column: why a transaction-mode
/// client keeps its server between transactions (empty: it does not).
const PINNED_COLUMN: (&str, u32) = ("pinned", S);

fn with_pinned() -> Vec<(&'static str, u32)> {
    let mut cols = SOCKET_COLUMNS.to_vec();
    cols.push(PINNED_COLUMN);
    cols
}

fn client_rows(shared: &Shared, rs: &mut ResultSet, only_active: bool, pinned: bool) {
    for c in shared.clients() {
        let live = c.live();
        let state = match live.phase {
            ClientPhase::Waiting => "waiting",
            ClientPhase::Idle => "idle",
            _ => "active",
        };
        if only_active && live.phase == ClientPhase::Idle {
            continue;
        }
        let (addr, port) = peer_addr(&c.peer());
        let (wait, wait_us) = if live.phase == ClientPhase::Waiting {
            split_us(live.phase_since.elapsed())
        } else {
            (0, 0)
        };
        let mut row = vec![
            t("C"),
            t(&**c.user()),
            t(&**c.database()),
            t("none"),
            t(state),
            t(addr),
            n(port),
            c.local().map(|l| l.ip().to_string()),
            c.local().map(|l| l.port().to_string()),
            t(timestamp(c.connected_wall())),
            t(timestamp(wall(live.request_at))),
            n(wait),
            n(wait_us),
            n(0),
            t(client_ptr(c.id)),
            t(live.server.map(|(id, _)| server_ptr(id)).unwrap_or_default()),
            n(c.peer_pid().unwrap_or(0)),
            t(""),
            t(c.application_name()),
            n(c.prepared()),
            n(c.id),
        ];
        if pinned {
            row.push(t(c.pins().to_string()));
        }
        rs.push(row);
    }
}

fn clients(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&with_pinned());
    client_rows(shared, &mut rs, false, true);
    rs
}

fn server_rows(shared: &Shared, rs: &mut ResultSet, only_active: bool, pinned: bool) {
    for pool in shared.pools.all() {
        let target = pool.settings().target.clone();
        let mut infos = pool.server_infos();
        infos.sort_by_key(|i| i.id);
        for info in infos {
            let (state, link, request, pins) = match info.current() {
                ServerUse::Lent { holder, since, .. } => {
                    ("active", client_ptr(holder.id), wall(since), holder.pins())
                }
                ServerUse::Idle => ("idle", String::new(), info.opened_wall, Default::default()),
                ServerUse::Login => ("new", String::new(), info.opened_wall, Default::default()),
                ServerUse::Cleaning { .. } => ("tested", String::new(), info.opened_wall, Default::default()),
            };
            if only_active && state == "idle" {
                continue;
            }
            let mut row = vec![
                t("S"),
                t(&target.user),
                t(&pool.key.database),
                t("none"),
                t(state),
                t(&*info.addr.0),
                n(info.addr.1),
                None,
                None,
                t(timestamp(info.opened_wall)),
                t(timestamp(request)),
                n(0),
                n(0),
                n(i32::from(info.generation() < pool.generation())),
                t(server_ptr(info.id)),
                t(link),
                n(info.backend_pid()),
                t(""),
                t(""),
                n(info.prepared()),
                n(info.id),
            ];
            if pinned {
                row.push(t(pins.to_string()));
            }
            rs.push(row);
        }
    }
}

/// A stable pointer-like handle for a client (PgBouncer shows object addresses); the `link`
/// column of a server names its client with the same handle, and vice versa.
fn client_ptr(id: u64) -> String {
    format!("0xc{id:011x}")
}

fn server_ptr(id: u64) -> String {
    format!("0x5{id:011x}")
}

fn servers(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&with_pinned());
    server_rows(shared, &mut rs, false, true);
    rs
}

fn sockets(shared: &Shared, only_active: bool) -> ResultSet {
    let mut cols = SOCKET_COLUMNS.to_vec();
    cols.extend_from_slice(&[
        ("recv_pos", I),
        ("pkt_pos", I),
        ("pkt_remain", I),
        ("send_pos", I),
        ("send_remain", I),
        ("pkt_avail", I),
        ("send_avail", I),
    ]);
    let mut rs = ResultSet::new(&cols);
    let mut base = ResultSet::new(SOCKET_COLUMNS);
    client_rows(shared, &mut base, only_active, false);
    server_rows(shared, &mut base, only_active, false);
    for mut row in base.rows {
        row.extend(std::iter::repeat_n(n(0), 7));
        rs.push(row);
    }
    rs
}

fn databases(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("name", S),
        ("host", S),
        ("port", I),
        ("database", S),
        ("force_user", S),
        ("pool_size", I),
        ("min_pool_size", I),
        ("reserve_pool_size", I),
        ("server_lifetime", I),
        ("pool_mode", S),
        ("load_balance_hosts", S),
        ("max_connections", I),
        ("current_connections", I),
        ("max_client_connections", I),
        ("current_client_connections", I),
        ("paused", I),
        ("disabled", I),
        // sluice's addition after PgBouncer's columns: the pre-1.8 name older exporters read.
        ("reserve_pool", I),
    ]);
    for d in shared.database_figures() {
        rs.push(vec![
            t(&d.name),
            t(&d.host),
            n(d.port),
            t(&d.dbname),
            d.force_user.clone(),
            n(d.pool_size),
            n(d.min_pool_size),
            n(d.reserve_pool_size),
            n(shared.config.load().pooler.server_lifetime.as_secs()),
            d.pool_mode.map(str::to_string),
            None,
            n(d.max_connections),
            n(d.current_connections),
            n(d.max_client_connections),
            n(d.current_client_connections),
            n(i32::from(d.paused)),
            n(i32::from(d.disabled)),
            n(d.reserve_pool_size),
        ]);
    }
    rs
}

fn users(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("name", S),
        ("pool_size", S),
        ("reserve_pool_size", S),
        ("pool_mode", S),
        ("max_user_connections", I),
        ("current_connections", I),
        ("max_user_client_connections", I),
        ("current_client_connections", I),
    ]);
    let config = shared.config.load();
    let pools = shared.pools.all();
    let clients = shared.clients();
    let mut names: BTreeMap<String, ()> = config.users.keys().map(|k| (k.clone(), ())).collect();
    names.extend(config.auth_file_users.keys().map(|k| (k.clone(), ())));
    names.extend(clients.iter().map(|c| (c.user().to_string(), ())));
    for name in names.keys() {
        let u = config.user_settings(name);
        rs.push(vec![
            t(name),
            t(""),
            t(""),
            u.own_pool_mode.map(|m| mode_name(m).to_string()),
            n(u.max_user_connections),
            n(pools
                .iter()
                .filter(|x| &x.key.user == name)
                .map(|x| x.open_servers())
                .sum::<usize>()),
            n(u.max_user_client_connections),
            n(clients.iter().filter(|c| **c.user() == **name).count()),
        ]);
    }
    rs
}

fn lists(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[("list", S), ("items", I)]);
    for (name, items) in shared.list_figures() {
        rs.push(vec![t(name), n(items)]);
    }
    rs
}

fn state(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[("key", S), ("value", S)]);
    let paused = {
        let pools = shared.pools.all();
        !pools.is_empty() && pools.iter().all(|p| p.is_paused())
    };
    let active = shared.lifecycle() == crate::shared::Lifecycle::Running && !paused && !shared.is_suspended();
    for (k, v) in [
        ("active", active),
        ("paused", paused),
        ("suspended", shared.is_suspended()),
    ] {
        rs.push(vec![t(k), t(if v { "yes" } else { "no" })]);
    }
    rs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_formatted_in_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_391_880); // 2026-11-22 23:58:00
        assert_eq!(timestamp(at), "2026-11-22 23:58:00 UTC");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }
}
