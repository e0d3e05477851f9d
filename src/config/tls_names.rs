//! The names the `*_tls_protocols` and `*_tls_ciphers` keys accept (PgBouncer's words, rustls's
//! suite names), resolved to what rustls takes. Here, below tls/, so the config check and the TLS
//! builder read one table.

use rustls::SupportedProtocolVersion;
use rustls::crypto::CryptoProvider;

/// TLS versions from PgBouncer's `*_tls_protocols` syntax. rustls has only TLS 1.2 and 1.3, so
/// `all`, `secure`, `normal` and `legacy` all mean both.
pub(crate) fn protocol_versions(
    spec: &str,
    key: &str,
) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let mut out: Vec<&'static SupportedProtocolVersion> = Vec::new();
    for word in spec.split([',', ' ', ':']).filter(|w| !w.is_empty()) {
        match word.to_ascii_lowercase().as_str() {
            "all" | "secure" | "normal" | "legacy" => {
                out.extend([&rustls::version::TLS12, &rustls::version::TLS13]);
            }
            "tlsv1.2" => out.push(&rustls::version::TLS12),
            "tlsv1.3" => out.push(&rustls::version::TLS13),
            "tlsv1" | "tlsv1.0" | "tlsv1.1" => {
                return Err(format!(
                    "{key}: {word} is not supported (rustls speaks TLS 1.2 and 1.3)"
                ));
            }
            other => {
                return Err(format!(
                    "{key}: unknown protocol \"{other}\"; expected secure, all, tlsv1.2 or tlsv1.3"
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(format!("{key}: no protocol given"));
    }
    Ok(out)
}

/// ring's provider with the cipher suites `spec` names: PgBouncer's words (`default`, `secure`,
/// `fast`, `normal`, `compat`, `all`) mean rustls's own safe set; otherwise a colon list of rustls
/// suite names such as `TLS13_AES_256_GCM_SHA384`.
pub(crate) fn cipher_provider(spec: &str, key: &str) -> Result<CryptoProvider, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    let words: Vec<&str> = spec.split([':', ',', ' ']).filter(|w| !w.is_empty()).collect();
    let keep_all = words.iter().all(|w| {
        matches!(
            w.to_ascii_lowercase().as_str(),
            "default" | "secure" | "fast" | "normal" | "compat" | "all"
        )
    });
    if keep_all {
        return Ok(provider);
    }
    let mut chosen = Vec::new();
    for w in &words {
        let suite = provider
            .cipher_suites
            .iter()
            .find(|s| s.suite().as_str().is_some_and(|n| n.eq_ignore_ascii_case(w)))
            .ok_or_else(|| format!("{key}: unknown cipher suite \"{w}\" (rustls suite names expected)"))?;
        chosen.push(*suite);
    }
    provider.cipher_suites = chosen;
    Ok(provider)
}
