//! Server side of SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL runs it: sluice verifies a client's
//! proof against a stored verifier with a few HMACs, never a PBKDF2 per login.

use super::secret::ScramVerifier;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// The client's message does not follow the protocol.
    Malformed(&'static str),
    /// The client asked for channel binding, which needs TLS.
    ChannelBindingUnsupported,
    /// The proof is wrong: wrong password (or unknown user).
    WrongProof,
}

/// An exchange after the server-first message was sent: what is needed to check the proof.
pub struct ScramExchange {
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
}

impl ScramExchange {
    /// Reads the client-first message and builds the server-first reply.
    pub fn start(client_first: &str, verifier: &ScramVerifier) -> Result<ScramExchange, ScramError> {
        let (gs2_header, bare) = split_gs2(client_first)?;
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("client nonce missing"))?;
        let server_nonce = B64.encode(rand::random::<[u8; 18]>());
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={}", verifier.salt_base64(), verifier.iterations);
        Ok(ScramExchange {
            client_first_bare: bare.to_string(),
            server_first,
            gs2_header: gs2_header.to_string(),
            nonce,
        })
    }

    /// The server-first message to send in AuthenticationSASLContinue.
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks the client-final message; on success returns the server-final message and the
    /// ClientKey recovered from the proof.
    pub fn finish(
        &self,
        client_final: &str,
        verifier: &ScramVerifier,
    ) -> Result<(String, [u8; 32]), ScramError> {
        let (without_proof, proof_b64) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("proof missing"))?;
        let mut channel_binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel_binding = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        if channel_binding != Some(B64.encode(&self.gs2_header).as_str()) {
            return Err(ScramError::Malformed("channel binding data does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = B64
            .decode(proof_b64)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let proof: [u8; 32] = proof
            .try_into()
            .map_err(|_| ScramError::Malformed("proof has the wrong length"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&stored, &verifier.stored_key) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
        Ok((format!("v={}", B64.encode(server_signature)), client_key))
    }
}

fn split_gs2(client_first: &str) -> Result<(&str, &str), ScramError> {
    let mut parts = client_first.splitn(3, ',');
    let flag = parts.next().ok_or(ScramError::Malformed("empty message"))?;
    let authzid = parts
        .next()
        .ok_or(ScramError::Malformed("gs2 header incomplete"))?;
    let bare = parts
        .next()
        .ok_or(ScramError::Malformed("gs2 header incomplete"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBindingUnsupported),
        _ => return Err(ScramError::Malformed("bad gs2 flag")),
    }
    if !authzid.is_empty() {
        return Err(ScramError::Malformed("authorization identity not supported"));
    }
    let header_len = flag.len() + authzid.len() + 2;
    Ok((&client_first[..header_len], bare))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Compares secrets without an early exit that would leak how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A verifier for a user that does not exist: same salt for the same name on every attempt (so a
/// prober cannot tell), a key nothing matches.
pub fn mock_verifier(user: &str, instance_secret: &[u8; 32]) -> ScramVerifier {
    let digest = hmac(instance_secret, user.as_bytes());
    ScramVerifier {
        iterations: 4096,
        salt: digest[..16].to_vec(),
        stored_key: hmac(instance_secret, b"stored"),
        server_key: hmac(instance_secret, b"server"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(password_client: &str, verifier: &ScramVerifier) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password_client.as_bytes(), ChannelBinding::unsupported());
        let first = String::from_utf8(client.message().to_vec()).unwrap();
        let exchange = ScramExchange::start(&first, verifier)?;
        client.update(exchange.server_first().as_bytes()).unwrap();
        let last = String::from_utf8(client.message().to_vec()).unwrap();
        let (server_final, _key) = exchange.finish(&last, verifier)?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| ScramError::WrongProof)
    }

    #[test]
    fn postgres_protocol_client_logs_in_with_the_right_password_only() {
        let verifier = ScramVerifier::from_password("s3cret").unwrap();
        assert_eq!(run("s3cret", &verifier), Ok(()));
        assert_eq!(run("wrong", &verifier), Err(ScramError::WrongProof));
        let mock = mock_verifier("nobody", &[9u8; 32]);
        assert_eq!(run("s3cret", &mock), Err(ScramError::WrongProof));
    }

    #[test]
    fn channel_binding_requests_are_refused_without_tls() {
        let verifier = ScramVerifier::from_password("x").unwrap();
        assert_eq!(
            ScramExchange::start("p=tls-server-end-point,,n=,r=abc", &verifier).err(),
            Some(ScramError::ChannelBindingUnsupported)
        );
    }
}
