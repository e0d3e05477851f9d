//! The message types sluice acts on after login, in one table per direction: each tag byte by
//! name, and what sluice does with it. Every other message passes through as bytes, unread.
//! The relay, the reply ledger, the statement translation, the identity watch and the checks
//! of client messages all name tags from here.

/// What a client sends (frontend messages).
pub mod frontend {
    /// Query: a simple-protocol request, answered by ReadyForQuery. Its text is the client's last
    /// query and is watched for role changes; when statements are tracked, a short one is read
    /// whole (a `DEALLOCATE` sluice may answer).
    pub const QUERY: u8 = b'Q';
    /// Parse: read whole when statements are tracked (renamed, or answered by sluice); its text
    /// is the client's last query and is watched for role changes. Opens a batch.
    pub const PARSE: u8 = b'P';
    /// Bind: only its head (portal and statement names) is read when statements are tracked;
    /// its parameters stream through. Watched for role changes. Opens a batch.
    pub const BIND: u8 = b'B';
    /// Execute: read whole only when its portal is a `DEALLOCATE` sluice answers. Opens a batch.
    pub const EXECUTE: u8 = b'E';
    /// Describe: read whole when statements are tracked (renamed). Opens a batch.
    pub const DESCRIBE: u8 = b'D';
    /// Close: read whole when statements are tracked (answered by sluice). Opens a batch.
    pub const CLOSE: u8 = b'C';
    /// Sync: ends a batch; answered by ReadyForQuery (ignored by the server during COPY FROM
    /// STDIN). A batch sluice refused part of is dropped up to it.
    pub const SYNC: u8 = b'S';
    /// Flush: asks for the replies so far. Opens a batch (the server waits for a Sync after it).
    pub const FLUSH: u8 = b'H';
    /// FunctionCall: answered by ReadyForQuery; may change the session's identity (set_config
    /// by OID), so the server is reset at release.
    pub const FUNCTION_CALL: u8 = b'F';
    /// CopyData: passes through.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone: ends COPY FROM STDIN.
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail: ends COPY FROM STDIN.
    pub const COPY_FAIL: u8 = b'f';
    /// Terminate: never forwarded; the session ends.
    pub const TERMINATE: u8 = b'X';
    /// PasswordMessage (and SASL responses): read by sluice during login, never forwarded.
    pub const PASSWORD: u8 = b'p';

    /// The extended-protocol messages: once one went, the server's batch is open until a Sync.
    pub fn opens_batch(tag: u8) -> bool {
        matches!(tag, PARSE | BIND | EXECUTE | DESCRIBE | CLOSE | FLUSH)
    }

    /// Messages whose text may hold SQL that changes who the session is (`SET ROLE`, ...).
    pub fn carries_sql(tag: u8) -> bool {
        matches!(tag, QUERY | PARSE | BIND)
    }
}

/// What a server sends (backend messages).
pub mod backend {
    /// ReadyForQuery: decoded (its transaction status); answers a Query, FunctionCall or Sync.
    /// At status idle with nothing owed, a transaction-mode server goes back to the pool.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// ErrorResponse: decoded (a FATAL ends the server; a failed extended message makes the
    /// server skip the rest of its batch, whose bookkeeping sluice takes back).
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse: may come at any time; always forwarded.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// NotificationResponse: may come at any time; always forwarded.
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// ParameterStatus: decoded (the client's settings, application_name, role changes); may
    /// come at any time; always forwarded.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// CommandComplete: decoded (DISCARD ALL / DEALLOCATE ALL, RESET); completes an Execute.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// EmptyQueryResponse: completes an Execute.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// PortalSuspended: completes an Execute.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// ParseComplete: completes a Parse (hidden when sluice sent the Parse).
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete: completes a Bind.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete: completes a Close (hidden when sluice sent the Close).
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// ParameterDescription: the first half of a statement's description.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// RowDescription: completes a Describe; its hash is the statement's row shape.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// NoData: completes a Describe of something that returns no rows.
    pub const NO_DATA: u8 = b'n';
    /// CopyInResponse: the server is in COPY FROM STDIN (it ignores Syncs until CopyDone/Fail).
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// Authentication requests: written by sluice to its clients at login.
    pub const AUTHENTICATION: u8 = b'R';
    /// BackendKeyData: written by sluice (the cancel key it issued, not the server's).
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// NegotiateProtocolVersion: written by sluice at login (3.0 only, options refused).
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// DataRow: passes through; written by sluice for the console's rows.
    pub const DATA_ROW: u8 = b'D';

    /// The server messages the relay reads whole (bounded) rather than passing in pieces.
    pub fn read_whole_by_relay(tag: u8) -> bool {
        matches!(
            tag,
            READY_FOR_QUERY
                | PARAMETER_STATUS
                | ERROR_RESPONSE
                | COMMAND_COMPLETE
                | PARSE_COMPLETE
                | CLOSE_COMPLETE
                | PARAMETER_DESCRIPTION
                | ROW_DESCRIPTION
                | NO_DATA
        )
    }

    /// Messages a server may send at any time, not as the answer to a client message: never
    /// hidden, even among the replies to messages sluice sent itself.
    pub fn asynchronous(tag: u8) -> bool {
        matches!(tag, NOTICE_RESPONSE | NOTIFICATION_RESPONSE | PARAMETER_STATUS)
    }

    /// True when a CommandComplete's command tag (without its NUL) says the server dropped
    /// every prepared statement (DISCARD ALL, DEALLOCATE ALL).
    pub fn drops_all_statements(command: &[u8]) -> bool {
        command == b"DISCARD ALL" || command == b"DEALLOCATE ALL"
    }
}
