//! `PgError`: an ErrorResponse or NoticeResponse as sluice sends it, with named constructors for
//! the errors sluice generates itself, and decoding of errors received from PostgreSQL.

use bytes::{BufMut, BytesMut};

/// SQLSTATE codes sluice uses (PostgreSQL's own meanings).
pub mod sqlstate {
    /// Protocol violation: the catch-all PgBouncer uses for pooler-generated errors.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// The server connection failed under the client.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// read_only_sql_transaction: a write reached a read-only server (a standby).
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    /// Could not establish a connection.
    pub const CONNECTION_EXCEPTION: &str = "08000";
    /// A session idle in a transaction too long (PostgreSQL's idle_in_transaction_session_timeout).
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    /// Wrong password or unknown user.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// Authorization failure (no user name, auth method refused).
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// Database not known to sluice.
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// Too many connections.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// Feature not supported (e.g. protocol version).
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// Pooler shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// The server is going down after a crash of another backend (or an immediate shutdown).
    pub const CRASH_SHUTDOWN: &str = "57P02";
    /// Cannot connect now (server starting or pool unavailable).
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// Internal error.
    pub const INTERNAL_ERROR: &str = "XX000";
    /// A prepared statement of that name already exists.
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    /// A limit of the implementation was reached.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// A limit set in the configuration was reached (configuration_limit_exceeded).
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    /// The transaction failed earlier; commands are ignored until its end.
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    /// A statement PostgreSQL could not parse.
    pub const SYNTAX_ERROR: &str = "42601";
    /// An identifier was cut to 63 bytes (a NOTICE).
    pub const NAME_TOO_LONG: &str = "42622";
}

/// Severity of an ErrorResponse/NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The connection is closed after this error.
    Fatal,
    /// The current request failed; the connection goes on.
    Error,
    /// A warning notice.
    Warning,
    /// An informational notice.
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
        }
    }

    fn parse(s: &str) -> Severity {
        match s {
            "FATAL" | "PANIC" => Severity::Fatal,
            "WARNING" => Severity::Warning,
            "NOTICE" | "INFO" | "LOG" | "DEBUG" => Severity::Notice,
            _ => Severity::Error,
        }
    }
}

/// An error or notice to send to a client, or one received from PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    /// How bad it is.
    pub severity: Severity,
    /// Five-character SQLSTATE.
    pub sqlstate: String,
    /// Primary message; for pooler errors it starts with PgBouncer's text.
    pub message: String,
    /// Optional diagnosis.
    pub detail: Option<String>,
    /// Optional advice.
    pub hint: Option<String>,
    /// The PostgreSQL source routine that raised it (field `R`), which some drivers match on.
    pub routine: Option<&'static str>,
}

impl PgError {
    /// A FATAL error: the client is disconnected after it.
    pub fn fatal(sqlstate: &str, message: impl Into<String>) -> PgError {
        PgError::new(Severity::Fatal, sqlstate, message)
    }

    /// An ERROR: the request fails, the connection stays usable.
    pub fn error(sqlstate: &str, message: impl Into<String>) -> PgError {
        PgError::new(Severity::Error, sqlstate, message)
    }

    /// A NOTICE sent to a client without interrupting it.
    pub fn notice(message: impl Into<String>) -> PgError {
        PgError::new(Severity::Notice, "00000", message)
    }

    fn new(severity: Severity, sqlstate: &str, message: impl Into<String>) -> PgError {
        PgError {
            severity,
            sqlstate: sqlstate.to_string(),
            message: message.into(),
            detail: None,
            hint: None,
            routine: None,
        }
    }

    /// Adds a DETAIL line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> PgError {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a HINT line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    /// Names the PostgreSQL routine that raises this error (drivers such as asyncpg recognise
    /// some errors by it).
    pub fn with_routine(mut self, routine: &'static str) -> PgError {
        self.routine = Some(routine);
        self
    }

    /// The same error with another severity (e.g. a server's login ERROR relayed as FATAL).
    pub fn with_severity(mut self, severity: Severity) -> PgError {
        self.severity = severity;
        self
    }

    /// Wrong password or unknown user: the same text either way, so user names cannot be probed.
    pub fn password_failed(user: &str) -> PgError {
        PgError::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        )
    }

    /// Decodes the body of an ErrorResponse or NoticeResponse (after the 5-byte header).
    pub fn from_fields(body: &[u8]) -> PgError {
        let mut err = PgError::error(sqlstate::INTERNAL_ERROR, "");
        let mut rest = body;
        while let Some((&code, tail)) = rest.split_first() {
            if code == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match code {
                b'V' => err.severity = Severity::parse(&value),
                b'C' => err.sqlstate = value,
                b'M' => err.message = value,
                b'D' => err.detail = Some(value),
                b'H' => err.hint = Some(value),
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        err
    }

    /// Appends this error as an ErrorResponse (or NoticeResponse for notices and warnings).
    pub fn encode(&self, out: &mut BytesMut) {
        let tag = match self.severity {
            Severity::Fatal | Severity::Error => b'E',
            Severity::Warning | Severity::Notice => b'N',
        };
        let start = out.len();
        out.put_u8(tag);
        out.put_i32(0);
        let mut field = |code: u8, value: &str| {
            out.put_u8(code);
            // A NUL inside a field would end it early; PostgreSQL never sends one, and we never should.
            out.extend(value.bytes().filter(|&b| b != 0));
            out.put_u8(0);
        };
        field(b'S', self.severity.as_str());
        field(b'V', self.severity.as_str());
        field(b'C', &self.sqlstate);
        field(b'M', &self.message);
        if let Some(d) = &self.detail {
            field(b'D', d);
        }
        if let Some(h) = &self.hint {
            field(b'H', h);
        }
        if let Some(r) = self.routine {
            field(b'R', r);
        }
        out.put_u8(0);
        super::messages::patch_length(out, start);
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.severity.as_str(),
            self.message,
            self.sqlstate
        )?;
        if let Some(d) = &self.detail {
            write!(f, " DETAIL: {d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_keeps_fields() {
        let e = PgError::fatal("08P01", "query_wait_timeout")
            .with_detail("pool app/alice")
            .with_hint("raise it");
        let mut buf = BytesMut::new();
        e.encode(&mut buf);
        assert_eq!(buf[0], b'E');
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        assert_eq!(PgError::from_fields(&buf[5..]), e);
    }
}
