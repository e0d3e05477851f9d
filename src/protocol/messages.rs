//! Encoders for the backend messages sluice itself sends to clients (authentication requests,
//! ParameterStatus, BackendKeyData, ReadyForQuery, and the row messages of the admin console).

use super::tags::backend;
use bytes::{BufMut, BytesMut};

/// Writes the length of the message that starts at `start` (its tag byte) into bytes 1..5.
pub fn patch_length(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// ParseComplete.
pub const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
/// BindComplete.
pub const BIND_COMPLETE: &[u8] = b"2\0\0\0\x04";
/// CloseComplete.
pub const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";
/// NoData.
pub const NO_DATA: &[u8] = b"n\0\0\0\x04";
/// ParameterDescription with no parameters.
pub const NO_PARAMETERS: &[u8] = b"t\0\0\0\x06\0\0";

fn begin(out: &mut BytesMut, tag: u8) -> usize {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    start
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.extend(s.bytes().filter(|&b| b != 0));
    out.put_u8(0);
}

/// AuthenticationOk.
pub fn auth_ok(out: &mut BytesMut) {
    auth_code(out, 0, &[]);
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext(out: &mut BytesMut) {
    auth_code(out, 3, &[]);
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    auth_code(out, 5, &salt);
}

/// AuthenticationSASL listing the mechanisms offered.
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    let start = begin(out, backend::AUTHENTICATION);
    out.put_i32(10);
    for m in mechanisms {
        put_cstr(out, m);
    }
    out.put_u8(0);
    patch_length(out, start);
}

/// AuthenticationSASLContinue with the server-first message.
pub fn auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    auth_code(out, 11, data);
}

/// AuthenticationSASLFinal with the server-final message.
pub fn auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
    auth_code(out, 12, data);
}

fn auth_code(out: &mut BytesMut, code: i32, data: &[u8]) {
    let start = begin(out, backend::AUTHENTICATION);
    out.put_i32(code);
    out.extend_from_slice(data);
    patch_length(out, start);
}

/// ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let start = begin(out, backend::PARAMETER_STATUS);
    put_cstr(out, name);
    put_cstr(out, value);
    patch_length(out, start);
}

/// BackendKeyData: the cancel key sluice issued to this client.
pub fn backend_key_data(out: &mut BytesMut, process_id: i32, secret_key: i32) {
    let start = begin(out, backend::BACKEND_KEY_DATA);
    out.put_i32(process_id);
    out.put_i32(secret_key);
    patch_length(out, start);
}

/// ReadyForQuery with a transaction status.
pub fn ready_for_query(out: &mut BytesMut, status: super::TxStatus) {
    let start = begin(out, backend::READY_FOR_QUERY);
    out.put_u8(status.byte());
    patch_length(out, start);
}

/// NegotiateProtocolVersion: the newest minor version supported and the options not recognised.
pub fn negotiate_protocol_version(out: &mut BytesMut, newest_minor: i32, unrecognized: &[String]) {
    let start = begin(out, backend::NEGOTIATE_PROTOCOL_VERSION);
    out.put_i32(newest_minor);
    out.put_i32(unrecognized.len() as i32);
    for name in unrecognized {
        put_cstr(out, name);
    }
    patch_length(out, start);
}

/// CommandComplete with its tag (`SHOW`, `SELECT 3`, ...).
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    let start = begin(out, backend::COMMAND_COMPLETE);
    put_cstr(out, tag);
    patch_length(out, start);
}

/// EmptyQueryResponse.
pub fn empty_query_response(out: &mut BytesMut) {
    let start = begin(out, backend::EMPTY_QUERY_RESPONSE);
    patch_length(out, start);
}

/// One column of a RowDescription: a name and a type OID (text format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column<'a> {
    /// Column name as clients see it.
    pub name: &'a str,
    /// PostgreSQL type OID (25 text, 23 int4, 20 int8, 1700 numeric, ...).
    pub type_oid: u32,
}

/// RowDescription for text-format columns.
pub fn row_description(out: &mut BytesMut, columns: &[Column<'_>]) {
    let start = begin(out, backend::ROW_DESCRIPTION);
    out.put_i16(columns.len() as i16);
    for c in columns {
        put_cstr(out, c.name);
        out.put_i32(0); // table OID
        out.put_i16(0); // column number
        out.put_u32(c.type_oid);
        out.put_i16(type_size(c.type_oid));
        out.put_i32(-1); // type modifier
        out.put_i16(0); // text format
    }
    patch_length(out, start);
}

fn type_size(oid: u32) -> i16 {
    match oid {
        16 => 1,
        21 => 2,
        23 | 26 => 4,
        20 => 8,
        _ => -1,
    }
}

/// DataRow of text values (`None` is NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    let start = begin(out, backend::DATA_ROW);
    out.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(s) => {
                out.put_i32(s.len() as i32);
                out.extend_from_slice(s.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    patch_length(out, start);
}
