//! A minimal wire-protocol client for tests that need what real drivers do not send: odd startup
//! packets, raw parameters, a Terminate at a chosen moment, garbage.

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One decoded backend message: its tag and body.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Message type byte.
    pub tag: u8,
    /// Body after the length.
    pub body: Vec<u8>,
}

impl RawMessage {
    /// Field `code` of an ErrorResponse/NoticeResponse body.
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                return None;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// The text values of a DataRow.
    pub fn data_row(&self) -> Vec<Option<String>> {
        let b = &self.body;
        let n = i16::from_be_bytes([b[0], b[1]]) as usize;
        let mut pos = 2;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]);
            pos += 4;
            if len < 0 {
                out.push(None);
            } else {
                let len = len as usize;
                out.push(Some(String::from_utf8_lossy(&b[pos..pos + len]).into_owned()));
                pos += len;
            }
        }
        out
    }
}

/// A raw connection.
pub struct RawClient {
    /// The socket.
    pub stream: TcpStream,
}

impl RawClient {
    /// Connects without sending anything.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.expect("connect"),
        }
    }

    /// Sends a StartupMessage with protocol `major.minor` and these parameters.
    pub async fn send_startup(&mut self, major: u16, minor: u16, params: &[(&str, &str)]) {
        let mut body = BytesMut::new();
        body.put_i32(((major as i32) << 16) | minor as i32);
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.put_u8(0);
            body.extend_from_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::new();
        out.put_i32(body.len() as i32 + 4);
        out.extend_from_slice(&body);
        self.stream.write_all(&out).await.expect("write startup");
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends a simple Query.
    pub async fn query(&mut self, sql: &str) {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).expect("encode");
        self.send(&out).await;
    }

    /// Reads one byte (the answer to SSLRequest/GSSENCRequest).
    pub async fn read_byte(&mut self) -> u8 {
        self.stream.read_u8().await.expect("read byte")
    }

    /// Reads one backend message; None at end of stream.
    pub async fn read_message(&mut self) -> Option<RawMessage> {
        let tag = self.stream.read_u8().await.ok()?;
        let len = self.stream.read_i32().await.ok()?;
        let mut body = vec![0u8; (len - 4) as usize];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(RawMessage { tag, body })
    }

    /// Reads messages until one with `tag` arrives; returns all read, the last being it.
    pub async fn read_until(&mut self, tag: u8) -> Vec<RawMessage> {
        let mut out = Vec::new();
        while let Some(m) = self.read_message().await {
            let done = m.tag == tag;
            out.push(m);
            if done {
                return out;
            }
        }
        panic!("stream ended before a '{}' message; got {:?}", tag as char, out);
    }

    /// Reads messages until one with `tag` or the end of the stream; returns all read.
    pub async fn read_until_end_or(&mut self, tag: u8) -> Vec<RawMessage> {
        let mut out = Vec::new();
        while let Some(m) = self.read_message().await {
            let done = m.tag == tag;
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Sends startup for `user`/`db` and answers a SCRAM-SHA-256 challenge with `password`.
    pub async fn login_scram(&mut self, user: &str, password: &str, db: &str) {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        self.send_startup(3, 0, &[("user", user), ("database", db)]).await;
        let m = self.read_message().await.expect("auth request");
        assert_eq!(
            (m.tag, &m.body[..4]),
            (b'R', &10i32.to_be_bytes()[..]),
            "expected SASL: {m:?}"
        );
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut out = BytesMut::new();
        frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out).unwrap();
        self.send(&out).await;
        let m = self.read_message().await.expect("SASLContinue");
        scram.update(&m.body[4..]).expect("server-first");
        out.clear();
        frontend::sasl_response(scram.message(), &mut out).unwrap();
        self.send(&out).await;
        let m = self.read_message().await.expect("SASLFinal");
        assert_eq!(m.tag, b'R', "login failed: {:?}", m.field(b'M'));
        scram.finish(&m.body[4..]).expect("server signature");
        let msgs = self.read_until(b'Z').await;
        assert!(msgs.iter().all(|m| m.tag != b'E'), "login failed: {msgs:?}");
    }

    /// Logs in with trust auth (the config must use auth_type = "trust").
    pub async fn login_trust(addr: SocketAddr, params: &[(&str, &str)]) -> RawClient {
        let mut c = RawClient::connect(addr).await;
        c.send_startup(3, 0, params).await;
        let msgs = c.read_until(b'Z').await;
        assert!(msgs.iter().all(|m| m.tag != b'E'), "login failed: {msgs:?}");
        c
    }
}
