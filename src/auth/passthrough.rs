//! SCRAM pass-through: logging in to PostgreSQL with SCRAM-SHA-256 using the ClientKey recovered
//! from a client's proof and the stored verifier's ServerKey, salt and iterations — no password.
//! It works only when PostgreSQL holds the very same verifier (same salt and iteration count):
//! the server's salt and iterations are checked against the verifier's before any proof is sent.

use super::secret::ScramVerifier;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// A SCRAM-SHA-256 client exchange (no channel binding) driven by keys instead of a password.
pub struct KeyScramClient {
    client_key: [u8; 32],
    verifier: ScramVerifier,
    client_nonce: String,
    client_first_bare: String,
    auth_message: Option<String>,
}

impl KeyScramClient {
    /// Starts an exchange with the client's ClientKey and the verifier it matched.
    pub fn new(client_key: [u8; 32], verifier: ScramVerifier) -> KeyScramClient {
        let client_nonce = B64.encode(rand::random::<[u8; 18]>());
        let client_first_bare = format!("n=,r={client_nonce}");
        KeyScramClient {
            client_key,
            verifier,
            client_nonce,
            client_first_bare,
            auth_message: None,
        }
    }

    /// The client-first message (for SASLInitialResponse).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Reads server-first and returns client-final with the proof.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, String> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let nonce = nonce
            // The server's nonce must extend the client's with a part of its own.
            .filter(|n| n.len() > self.client_nonce.len() && n.starts_with(&self.client_nonce))
            .ok_or("server-first message has a bad nonce")?;
        if salt.as_deref() != Some(&self.verifier.salt[..]) || iterations != Some(self.verifier.iterations) {
            return Err(
                "the server's SCRAM secret differs from sluice's (salt or iterations): \
                 SCRAM pass-through needs the same verifier on both"
                    .to_string(),
            );
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let stored_key: [u8; 32] = Sha256::digest(self.client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for (i, p) in proof.iter_mut().enumerate() {
            *p = self.client_key[i] ^ signature[i];
        }
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message's signature with ServerKey.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), String> {
        let auth_message = self
            .auth_message
            .as_ref()
            .ok_or("SASLFinal before SASLContinue")?;
        let sent = server_final
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v.trim_end_matches('\0')).ok())
            .ok_or("server-final message has no verifier")?;
        let expected = hmac(&self.verifier.server_key, auth_message.as_bytes());
        if super::constant_time_eq(&sent, &expected) {
            Ok(())
        } else {
            Err("the server's SCRAM signature is wrong".to_string())
        }
    }
}

/// Checks a server-first message before any SCRAM client (sluice's or postgres-protocol's)
/// runs PBKDF2 for it: the iteration count must be a number from 1 to
/// [`MAX_SCRAM_ITERATIONS`](super::secret::MAX_SCRAM_ITERATIONS), so a hostile or broken server
/// cannot make sluice compute for minutes.
pub fn check_server_first(server_first: &[u8]) -> Result<(), String> {
    let text =
        std::str::from_utf8(server_first).map_err(|_| "server-first message is not UTF-8".to_string())?;
    let iterations = text
        .split(',')
        .find_map(|a| a.strip_prefix("i="))
        .ok_or("server-first message has no iteration count")?;
    let limit = super::secret::MAX_SCRAM_ITERATIONS;
    match iterations.parse::<u32>() {
        Ok(n) if (1..=limit).contains(&n) => Ok(()),
        _ => Err(format!(
            "the server asks for {iterations} SCRAM iterations; sluice computes at most {limit}"
        )),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::super::scram::ScramExchange;
    use super::*;

    #[test]
    fn key_client_logs_in_to_a_server_holding_the_same_verifier() {
        let verifier = ScramVerifier::from_password("pw").unwrap();
        // Recover a ClientKey the way a client login would.
        let mut client = postgres_protocol::authentication::sasl::ScramSha256::new(
            b"pw",
            postgres_protocol::authentication::sasl::ChannelBinding::unsupported(),
        );
        let ex = ScramExchange::start(std::str::from_utf8(client.message()).unwrap(), &verifier).unwrap();
        client.update(ex.server_first().as_bytes()).unwrap();
        let (_, key) = ex
            .finish(std::str::from_utf8(client.message()).unwrap(), &verifier)
            .unwrap();

        let mut k = KeyScramClient::new(key, verifier.clone());
        let server = ScramExchange::start(&k.client_first(), &verifier).unwrap();
        let fin = k.client_final(server.server_first()).unwrap();
        let (server_final, _) = server.finish(&fin, &verifier).unwrap();
        k.verify_server_final(&server_final).unwrap();
    }
}
