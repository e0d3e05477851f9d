//! Deriving a pool's settings from the configuration (at creation, RELOAD and SET).

use super::PoolSettings;
use crate::auth::Secret;
use crate::config::Config;
use crate::server::ServerTarget;

/// The settings of the pool for (`database`, `user`) under `config`; `client_secret` is the
/// client's own secret, used to log in to the server unless the database forces a user.
pub fn settings_for(
    config: &Config,
    database: &str,
    user: &str,
    client_secret: Option<Secret>,
    tls: crate::tls::ServerTls,
) -> PoolSettings {
    let db = config.database(database).cloned().unwrap_or_default();
    let (server_user, secret) = match &db.user {
        Some(forced) => (forced.clone(), db.password.as_deref().map(Secret::parse)),
        None => (user.to_string(), client_secret),
    };
    let effective = config.effective(&db, user);
    let mode = effective.pool_mode;
    let p = &config.pooler;
    let hosts = db.host_list();
    let first = hosts.first().cloned().unwrap_or(crate::config::HostAddr {
        host: db.host.clone(),
        port: db.port.first(),
    });
    PoolSettings {
        pool_size: effective.database.pool_size.max(1) as usize,
        min_pool_size: effective.database.min_pool_size as usize,
        reserve_pool_size: effective.database.reserve_pool_size as usize,
        reserve_pool_timeout: p.reserve_pool_timeout,
        reset_query_always: p.server_reset_query_always,
        server_lifetime: p.server_lifetime,
        server_idle_timeout: p.server_idle_timeout,
        server_check_query: p.server_check_query.clone(),
        server_check_delay: p.server_check_delay,
        server_login_retry: p.server_login_retry,
        server_outage_grace: p.server_outage_grace,
        mode,
        pin: effective.pin_session_state,
        target: ServerTarget {
            host: first.host,
            port: first.port,
            dbname: db.dbname.clone().unwrap_or_else(|| database.to_string()),
            user: server_user,
            secret,
            tls,
            startup: crate::server::StartupExtras::from_config(&db),
            tcp: crate::tcp_options::TcpOptions::from_config(p),
        },
        connect_timeout: config.pooler.server_connect_timeout,
        max_prepared_statements: if mode == crate::config::PoolMode::Transaction {
            p.max_prepared_statements as usize
        } else {
            0
        },
        reset_query: config.pooler.server_reset_query.clone(),
        shares: super::ShareSettings::from_config(p),
        client_prepared_limit: super::ClientPreparedLimit {
            statements: p.max_client_prepared_statements as usize,
            bytes: usize::try_from(p.max_client_prepared_bytes).unwrap_or(usize::MAX),
        },
        ha: super::HaSettings {
            hosts,
            attrs: db.target_session_attrs,
            balance: db.load_balance_hosts,
        },
        query_wait_timeout: effective.query_wait_timeout,
        round_robin: p.server_round_robin,
        held_limits: super::HeldLimits {
            query: p.query_timeout,
            idle_transaction: p.idle_transaction_timeout,
            transaction: p.transaction_timeout,
            client_idle: p.client_idle_timeout,
        },
    }
}

/// The secret a pool logs in to PostgreSQL with after a reload, from the one it has (`current`)
/// and the one the new configuration gives (`fresh`). What clients' logins taught the pool (the
/// ClientKey of a SCRAM proof, a secret auth_query found) is derived state: a reload keeps it
/// unless the configuration now holds a secret that can log in by itself, so a reload never
/// takes away a pool's ability to open servers.
pub(crate) fn reloaded_secret(current: &ServerTarget, fresh: &ServerTarget) -> Option<Secret> {
    if current.user != fresh.user {
        // `user =` of the database changed: nothing learnt for the old user applies.
        return fresh.secret.clone();
    }
    match (&current.secret, &fresh.secret) {
        // A password or md5 hash in the config logs in by itself: it is the truth.
        (_, Some(Secret::Plain(_) | Secret::Md5(_) | Secret::ScramKeys { .. })) => fresh.secret.clone(),
        // A verifier alone cannot log in; the keys a client proved stay until a client proves
        // the new verifier (Pool::learn_login_secret), and they still work if PostgreSQL's
        // password did not change.
        (Some(Secret::ScramKeys { .. }), Some(Secret::Scram(_))) => current.secret.clone(),
        // Nothing configured (auth_query, or a user only the server knows): keep what a login
        // found.
        (Some(_), None) => current.secret.clone(),
        (_, fresh) => fresh.clone(),
    }
}

/// Whether a client that logged in with `learned` should teach it to a pool whose server logins
/// use `target`: the pool logs in as that client's own user and `learned` is another secret
/// (keys from a proof where the pool has a bare verifier or older keys, a new auth_query
/// result, a changed password).
pub(crate) fn should_learn(target: &ServerTarget, client_user: &str, learned: &Secret) -> bool {
    if target.user != client_user || target.secret.as_ref() == Some(learned) {
        return false;
    }
    // A bare verifier never replaces anything: it cannot log in.
    !matches!(learned, Secret::Scram(_))
}

/// What changed between `before` and `after` that makes the pool's open servers unfit for
/// reuse (they would connect elsewhere, or were used under another pool mode); None if nothing.
pub(crate) fn servers_outdated(before: &PoolSettings, after: &PoolSettings) -> Option<&'static str> {
    let (b, a) = (&before.target, &after.target);
    if b.host != a.host || b.port != a.port || before.ha.hosts != after.ha.hosts {
        Some("host or port")
    } else if b.dbname != a.dbname {
        Some("dbname")
    } else if b.user != a.user {
        Some("user")
    } else if before.ha.attrs != after.ha.attrs {
        Some("target_session_attrs")
    } else if before.mode != after.mode {
        Some("pool_mode")
    } else if b.startup != a.startup {
        Some("connect_query or a startup parameter")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::hot::Hot;
    use std::time::{Duration, Instant};

    /// The settings of a pool under `pooler` (lines of the `[pooler]` section).
    fn settings(pooler: &str) -> PoolSettings {
        let toml = format!("[pooler]\n{pooler}\n[databases.app]\n");
        let config = Config::from_toml_str(&toml, "test.toml", None).expect("a valid config");
        settings_for(&config, "app", "u", None, Default::default())
    }

    /// The word says what the settings say, flag by flag.
    #[test]
    fn the_word_carries_each_rule_of_the_settings() {
        let plain = Hot::of(&settings(""));
        assert!(!plain.round_robin() && !plain.shares());
        assert!(Hot::of(&settings("server_round_robin = true")).round_robin());
        let shared = settings("max_pool_share = 0.5\npool_share_key = \"application_name\"");
        assert_eq!(
            Hot::of(&shared).shares(),
            shared.shares.cap(shared.pool_size).is_some()
        );
        assert!(Hot::of(&shared).shares());
        for (pooler, reset) in [
            ("pool_mode = \"transaction\"", false),
            (
                "pool_mode = \"transaction\"\nserver_reset_query_always = true",
                true,
            ),
            ("pool_mode = \"session\"", true),
            ("pool_mode = \"session\"\nserver_reset_query = \"\"", false),
        ] {
            let s = settings(pooler);
            assert_eq!(Hot::of(&s).reset(), reset, "{pooler}");
            assert_eq!(
                Hot::of(&s).reset(),
                super::super::Pool::needs_reset_in(&s),
                "{pooler}"
            );
        }
    }

    /// A check is due once the server has been idle server_check_delay: at once with a zero
    /// delay, never with no check query, and never with a delay past the word's range.
    #[test]
    fn a_check_is_due_after_the_delay_only_when_there_is_a_check() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let hot = Hot::of(&settings("server_check_delay = 30"));
        assert!(!hot.check_due(t0, at(29)));
        assert!(hot.check_due(t0, at(30)));
        assert!(!hot.check_due(at(1), at(30)));
        let zero = Hot::of(&settings("server_check_delay = 0"));
        assert!(
            zero.check_due(at(5), t0),
            "a zero delay is due even for a later release"
        );
        let none = Hot::of(&settings("server_check_query = \"\"\nserver_check_delay = 0"));
        assert!(!none.check_due(t0, at(1_000_000)));
        let mut long = settings("");
        long.server_check_delay = Duration::MAX;
        assert!(!Hot::of(&long).check_due(t0, at(1_000_000_000)));
        assert!(Hot::of(&long).shares() == Hot::of(&settings("")).shares());
    }
}
