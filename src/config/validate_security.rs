//! Semantic checks of the TLS and authentication keys: companions each mode needs, protocol and
//! cipher names. (Whether the files can be read is checked when the pooler starts.)

use super::keys::Problem;
use super::{AuthType, PoolerConfig, SslMode};

/// Appends the problems of the TLS and authentication keys of `[pooler]`.
pub(super) fn check(p: &PoolerConfig, out: &mut Vec<Problem>) {
    let mut fail = |key: &str, message: String| out.push(Problem::new(&["pooler", key], message));
    if p.client_tls_sslmode != SslMode::Disable {
        for (key, value) in [
            ("client_tls_cert_file", &p.client_tls_cert_file),
            ("client_tls_key_file", &p.client_tls_key_file),
        ] {
            if value.is_none() {
                fail(
                    "client_tls_sslmode",
                    format!("client TLS is enabled, so {key} must be set"),
                );
            }
        }
    }
    if matches!(p.client_tls_sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
        && p.client_tls_ca_file.is_none()
    {
        fail(
            "client_tls_sslmode",
            "verify-ca/verify-full check client certificates, so client_tls_ca_file must be set".to_string(),
        );
    }
    if matches!(p.server_tls_sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
        && p.server_tls_ca_file.is_none()
    {
        fail(
            "server_tls_sslmode",
            "verify-ca/verify-full check the server's certificate, so server_tls_ca_file must be set"
                .to_string(),
        );
    }
    if p.server_tls_cert_file.is_some() != p.server_tls_key_file.is_some() {
        fail(
            "server_tls_cert_file",
            "server_tls_cert_file and server_tls_key_file must be set together".to_string(),
        );
    }
    for key in ["client_tls_protocols", "server_tls_protocols"] {
        let value = if key.starts_with("client") {
            &p.client_tls_protocols
        } else {
            &p.server_tls_protocols
        };
        if let Err(e) = super::protocol_versions(value, key) {
            fail(key, e);
        }
    }
    for key in ["client_tls_ciphers", "server_tls_ciphers"] {
        let value = if key.starts_with("client") {
            &p.client_tls_ciphers
        } else {
            &p.server_tls_ciphers
        };
        if let Err(e) = super::cipher_provider(value, key) {
            fail(key, e);
        }
    }
    if p.auth_type == AuthType::Hba && p.auth_hba_file.is_none() {
        fail("auth_type", "auth_type = \"hba\" needs auth_hba_file".to_string());
    }
    if p.auth_user.as_deref().is_some_and(|u| u.trim().is_empty()) {
        fail("auth_user", "must not be empty".to_string());
    }
    if p.auth_query.trim().is_empty() {
        fail("auth_query", "must not be empty".to_string());
    }
}

/// Makes the relative file paths of the TLS and hba keys relative to the config file's directory
/// (as auth_file is).
pub(super) fn resolve_paths(p: &mut PoolerConfig, base: &std::path::Path) {
    for path in [
        &mut p.auth_hba_file,
        &mut p.client_tls_key_file,
        &mut p.client_tls_cert_file,
        &mut p.client_tls_ca_file,
        &mut p.server_tls_ca_file,
        &mut p.server_tls_key_file,
        &mut p.server_tls_cert_file,
        &mut p.pidfile,
        &mut p.logfile,
    ] {
        if let Some(relative) = path.as_ref().filter(|p| p.is_relative()) {
            *path = Some(base.join(relative));
        }
    }
}
