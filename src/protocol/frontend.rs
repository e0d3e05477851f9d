//! Which messages a logged-in client may send, and how long each may be: checked at a message's
//! header, before a byte of it can reach a server, so a message PostgreSQL would answer with a
//! FATAL (or not at all) fails only the client that sent it.

use super::FrameError;
use super::tags::frontend::*;

/// PostgreSQL's bound on the body of the messages it reads with its small limit (Describe, Close,
/// Execute, Flush, Sync, Terminate, CopyDone, CopyFail); a longer one ends its connection.
const SMALL_BODY: usize = 10_000;

/// Checks a client message's type and total length (tag and length word included) against what
/// PostgreSQL accepts after login. Startup, password and SASL messages are not among them: sent
/// now, they are garbage.
pub fn check_client_message(tag: u8, total: usize) -> Result<(), FrameError> {
    let body = total.saturating_sub(5);
    match tag {
        // Large messages: bounded by max_packet_size in the scanner.
        QUERY | PARSE | BIND | FUNCTION_CALL | COPY_DATA => Ok(()),
        // No body at all: anything more would make PostgreSQL answer (an error nobody asked for)
        // after the client's last reply.
        SYNC | FLUSH | TERMINATE | COPY_DONE if body != 0 => Err(FrameError::WrongLength { tag, len: total }),
        SYNC | FLUSH | TERMINATE | COPY_DONE => Ok(()),
        DESCRIBE | CLOSE | EXECUTE | COPY_FAIL if body > SMALL_BODY => {
            Err(FrameError::WrongLength { tag, len: total })
        }
        DESCRIBE | CLOSE | EXECUTE | COPY_FAIL => Ok(()),
        _ => Err(FrameError::UnknownType { tag }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_postgresql_reads_after_login_passes() {
        for tag in *b"QPBFdDCEfSHXc" {
            assert_eq!(check_client_message(tag, 5), Ok(()), "{}", tag as char);
        }
        for tag in *b"pezZ\0" {
            assert_eq!(check_client_message(tag, 5), Err(FrameError::UnknownType { tag }));
        }
        assert!(check_client_message(b'S', 6).is_err());
        assert!(check_client_message(b'H', 9).is_err());
        assert!(check_client_message(b'E', 5 + SMALL_BODY).is_ok());
        assert!(check_client_message(b'E', 6 + SMALL_BODY).is_err());
    }
}
