//! What sluice knows of a user's password: plaintext, an md5 hash, or a SCRAM-SHA-256 verifier.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// A user's stored secret, as written in `[users]` or the auth_file.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Plain(String),
    /// `md5` + hex(md5(password || user)), the 32 hex digits kept without the prefix.
    Md5(String),
    /// A SCRAM-SHA-256 verifier (`SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`).
    Scram(ScramVerifier),
    /// The ClientKey a client proved with SCRAM, with the verifier it matched: enough to log in
    /// to PostgreSQL with SCRAM when it holds the same verifier (pass-through).
    ScramKeys {
        /// ClientKey recovered from the client's proof.
        client_key: [u8; 32],
        /// The verifier (salt, iterations, ServerKey) the client matched.
        verifier: ScramVerifier,
    },
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.write_str(match self {
            Secret::Plain(_) => "Secret::Plain(..)",
            Secret::Md5(_) => "Secret::Md5(..)",
            Secret::Scram(_) => "Secret::Scram(..)",
            Secret::ScramKeys { .. } => "Secret::ScramKeys(..)",
        })
    }
}

impl Secret {
    /// Classifies a stored secret string.
    pub fn parse(text: &str) -> Secret {
        if let Some(hex) = text.strip_prefix("md5")
            && hex.len() == 32
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Secret::Md5(hex.to_ascii_lowercase());
        }
        if let Some(v) = ScramVerifier::parse(text) {
            return Secret::Scram(v);
        }
        Secret::Plain(text.to_string())
    }
}

/// Most PBKDF2 iterations sluice runs for one SCRAM computation: a server demanding more in its
/// server-first message is refused before any work, and a stored verifier asking for more is not
/// used to check a cleartext password (a peer could otherwise make sluice spin for minutes per
/// login). PostgreSQL's default is 4096; other clients settled on the same 100,000.
pub const MAX_SCRAM_ITERATIONS: u32 = 100_000;

/// The SCRAM-SHA-256 keys PostgreSQL stores in pg_authid, enough to verify a client's proof.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Salt (decoded).
    pub salt: Vec<u8>,
    /// SHA-256(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts).
    pub fn parse(text: &str) -> Option<ScramVerifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramVerifier {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// Derives a verifier from a plaintext password (SASLprep, a random salt, PBKDF2). Costly by
    /// design: callers cache the result rather than derive it per login.
    pub fn from_password(password: &str) -> Option<ScramVerifier> {
        ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(password.as_bytes()))
    }

    /// Whether a cleartext password derives this verifier (PBKDF2 with its salt and iterations).
    /// Never true for a verifier past [`MAX_SCRAM_ITERATIONS`].
    pub fn matches_password(&self, password: &str) -> bool {
        if self.iterations > MAX_SCRAM_ITERATIONS {
            tracing::warn!(
                iterations = self.iterations,
                limit = MAX_SCRAM_ITERATIONS,
                "a SCRAM verifier's iteration count is too high to check a cleartext password with"
            );
            return false;
        }
        let mut salted = [0u8; 32];
        let prepared =
            stringprep::saslprep(password).map_or_else(|_| password.to_string(), |p| p.into_owned());
        if pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha256>>(
            prepared.as_bytes(),
            &self.salt,
            self.iterations,
            &mut salted,
        )
        .is_err()
        {
            return false;
        }
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(client_key).into();
        super::constant_time_eq(&stored, &self.stored_key)
    }

    /// The salt as base64, as sent in the server-first message.
    pub fn salt_base64(&self) -> String {
        B64.encode(&self.salt)
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_classified() {
        assert!(matches!(Secret::parse("hunter2"), Secret::Plain(_)));
        assert!(matches!(
            Secret::parse("md5f3a1e5fca9e5c3e4a8c4b42b3e2d2b1a"),
            Secret::Md5(_)
        ));
        assert!(matches!(Secret::parse("md5short"), Secret::Plain(_)));
        let v = postgres_protocol::password::scram_sha_256(b"pw");
        let Secret::Scram(parsed) = Secret::parse(&v) else {
            panic!("not scram")
        };
        assert_eq!(parsed.iterations, 4096);
        assert!(matches!(Secret::parse("SCRAM-SHA-256$x:y$z"), Secret::Plain(_)));
    }
}
