//! Security state derived from the config: TLS contexts and hba rules, built once per config
//! snapshot (compared by pointer, so a reload that swaps the snapshot rebuilds them for new
//! connections), and the auth_query cache.

use crate::auth::auth_query::AuthQueryCache;
use crate::auth::hba::HbaRules;
use crate::config::{Config, ConfigError};
use crate::tls::TlsContexts;
use parking_lot::Mutex;
use std::sync::Arc;

/// A value built from one config snapshot, rebuilt when the snapshot changes.
pub(crate) struct PerConfig<T> {
    cached: Mutex<Option<(Arc<Config>, Arc<T>)>>,
}

impl<T> Default for PerConfig<T> {
    fn default() -> Self {
        PerConfig {
            cached: Mutex::new(None),
        }
    }
}

impl<T> PerConfig<T> {
    /// The value for `config`, built with `build` if the snapshot changed since the last call.
    pub(crate) fn get(&self, config: &Arc<Config>, build: impl FnOnce(&Config) -> T) -> Arc<T> {
        if let Some((c, v)) = self.cached.lock().as_ref()
            && Arc::ptr_eq(c, config)
        {
            return v.clone();
        }
        let value = Arc::new(build(config));
        *self.cached.lock() = Some((config.clone(), value.clone()));
        value
    }
}

/// What sessions need for TLS and authentication beyond the config itself.
#[derive(Default)]
pub struct Security {
    tls: PerConfig<Result<TlsContexts, String>>,
    hba: PerConfig<Result<HbaRules, String>>,
    /// Secrets found with auth_query.
    pub auth_query: AuthQueryCache,
}

impl Security {
    /// The TLS contexts for `config` (an error names the key at fault and is logged once).
    pub fn tls(&self, config: &Arc<Config>) -> Arc<Result<TlsContexts, String>> {
        self.tls.get(config, |c| {
            let built = crate::tls::build(c);
            if let Err(e) = &built {
                tracing::error!(error = %e, "TLS configuration cannot be used");
            }
            built
        })
    }

    /// What server logins of `config` use for TLS, from the cached contexts. Err (naming the key
    /// at fault) when the TLS configuration cannot be used.
    pub fn server_tls(&self, config: &Arc<Config>) -> Result<crate::tls::ServerTls, String> {
        match self.tls(config).as_ref() {
            Ok(t) => Ok(t.server.clone()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The hba rules for `config` (empty when no auth_hba_file is set).
    pub fn hba(&self, config: &Arc<Config>) -> Arc<Result<HbaRules, String>> {
        self.hba.get(config, |c| {
            let built = load_hba(c);
            if let Err(e) = &built {
                tracing::error!(error = %e, "auth_hba_file cannot be used");
            }
            built
        })
    }
}

fn load_hba(config: &Config) -> Result<HbaRules, String> {
    // Relative paths were made relative to the config file when it was loaded.
    let Some(path) = &config.pooler.auth_hba_file else {
        return Ok(HbaRules::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    HbaRules::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks at start-up that the TLS files and the hba file can be used, so a bad path stops the
/// pooler instead of failing every connection.
pub(crate) fn check(config: &Config) -> Result<(), ConfigError> {
    let fail = |key: &str, message: String| ConfigError::new(&config.origin, 0, 0, key, &message);
    crate::tls::build(config).map_err(|e| fail("pooler", e))?;
    load_hba(config).map_err(|e| fail("pooler.auth_hba_file", e))?;
    if config.pooler.auth_type == crate::config::AuthType::Hba && config.pooler.auth_hba_file.is_none() {
        return Err(fail(
            "pooler.auth_type",
            "auth_type = \"hba\" needs auth_hba_file".to_string(),
        ));
    }
    Ok(())
}
