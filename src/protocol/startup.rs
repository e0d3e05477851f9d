//! The untagged packets a client sends first: SSLRequest, GSSENCRequest, CancelRequest and the
//! StartupMessage with its parameters.

use super::MAX_STARTUP_PACKET;
use tokio::io::{AsyncRead, AsyncReadExt};

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// The startup parameters a client sent, in order.
pub type StartupParams = Vec<(String, String)>;

/// One decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running for the session with this key.
    CancelRequest {
        /// Process id from BackendKeyData.
        process_id: i32,
        /// Secret key from BackendKeyData.
        secret_key: i32,
    },
    /// A StartupMessage.
    Startup {
        /// Protocol major version (3 for the protocol sluice speaks).
        major: u16,
        /// Protocol minor version.
        minor: u16,
        /// Parameters (user, database, application_name, ...).
        params: StartupParams,
    },
}

/// Why a startup packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The peer closed or the socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The packet is malformed.
    #[error("invalid startup packet: {0}")]
    Invalid(&'static str),
}

/// Reads one startup packet, refusing lengths outside 8..=MAX_STARTUP_PACKET before allocating.
pub async fn read_startup_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<StartupPacket, StartupError> {
    let len = reader.read_i32().await?;
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(StartupError::Invalid("length out of range"));
    }
    let mut body = vec![0u8; len as usize - 4];
    reader.read_exact(&mut body).await?;
    decode(&body)
}

fn decode(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if rest.len() != 8 {
                return Err(StartupError::Invalid("bad cancel request length"));
            }
            Ok(StartupPacket::CancelRequest {
                process_id: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
                secret_key: i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            Ok(StartupPacket::Startup {
                major,
                minor,
                params: parse_params(rest)?,
            })
        }
    }
}

fn parse_params(mut rest: &[u8]) -> Result<StartupParams, StartupError> {
    let mut params = Vec::new();
    loop {
        let (name, tail) = take_cstr(rest)?;
        if name.is_empty() {
            return Ok(params);
        }
        let (value, tail) = take_cstr(tail)?;
        params.push((name, value));
        rest = tail;
    }
}

fn take_cstr(buf: &[u8]) -> Result<(String, &[u8]), StartupError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Invalid("unterminated string"))?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| StartupError::Invalid("parameter is not UTF-8"))?;
    Ok((s.to_string(), &buf[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 8) as i32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[tokio::test]
    async fn startup_message_params_are_decoded() {
        let bytes = packet(196_608, b"user\0alice\0database\0app\0\0");
        let p = read_startup_packet(&mut bytes.as_slice()).await.unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                major: 3,
                minor: 0,
                params: vec![("user".into(), "alice".into()), ("database".into(), "app".into())]
            }
        );
    }

    #[tokio::test]
    async fn oversized_and_truncated_packets_are_refused() {
        let mut huge = 1_000_000i32.to_be_bytes().to_vec();
        huge.extend_from_slice(&196_608i32.to_be_bytes());
        assert!(matches!(
            read_startup_packet(&mut huge.as_slice()).await,
            Err(StartupError::Invalid(_))
        ));
        let unterminated = packet(196_608, b"user\0alice");
        assert!(read_startup_packet(&mut unterminated.as_slice()).await.is_err());
        let ssl = packet(SSL_REQUEST, b"");
        assert_eq!(
            read_startup_packet(&mut ssl.as_slice()).await.unwrap(),
            StartupPacket::SslRequest
        );
    }
}
