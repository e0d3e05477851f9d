//! The client-to-server side of the relay: the client's buffered messages cut into what goes
//! to the server (whole when sluice must read them, in pieces otherwise), prepared-statement
//! names translated, and what sluice answers or refuses itself kept back.

use super::{RelayContext, RelayError, room_for, room_for_more};
use crate::clients::ClientInfo;
use crate::protocol::tags::frontend;
use crate::protocol::{FrameError, ScanItem, TxStatus, Want};
use crate::server::ServerConn;
use crate::session::client::ClientIo;
use crate::session::link::{ClientBatch, Link};
use crate::session::params::ClientParams;
use crate::session::statements::{BindOutcome, Outcome, Translator};
use crate::session::text_scan::Words;
use bytes::{Buf, BytesMut};

/// How much of a Bind is looked at to find its statement name (the parameters pass as they are).
const BIND_HEAD: usize = 1024;
/// Simple queries up to this size are read whole when statements are tracked (to see a
/// `DEALLOCATE name`); longer ones pass in pieces.
const SMALL_QUERY: usize = 512;

/// How a client message is read: whole when sluice must look at it, in pieces otherwise.
/// `executes_answered`: a portal is a DEALLOCATE sluice answers, so Executes are read whole.
/// A message PostgreSQL would not accept here is refused at its header: nothing of it, nor of
/// anything after it, reaches the server.
/// `whole_text`: statements that would pin the server are refused, so query texts come whole.
/// `listening`: sluice answers LISTEN/UNLISTEN, so query texts short enough to be one come whole.
fn client_want(
    tag: u8,
    total: usize,
    tracking: bool,
    executes_answered: bool,
    whole_text: bool,
    listening: bool,
) -> Result<Want, FrameError> {
    crate::protocol::check_client_message(tag, total)?;
    Ok(match tag {
        frontend::TERMINATE => Want::Whole,
        frontend::QUERY | frontend::PARSE if whole_text => Want::Whole,
        frontend::QUERY | frontend::PARSE
            if listening && total <= crate::session::listen::LISTEN_TEXT_MAX =>
        {
            Want::Whole
        }
        frontend::EXECUTE if executes_answered => Want::Whole,
        frontend::PARSE | frontend::DESCRIBE | frontend::CLOSE if tracking => Want::Whole,
        frontend::BIND if tracking => Want::Head(BIND_HEAD),
        frontend::QUERY if tracking && total <= SMALL_QUERY => Want::Whole,
        _ => Want::Pass,
    })
}

/// Where reading the client's buffered messages stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientPump {
    /// Out of bytes, or of room for more.
    Stopped,
    /// For want of bytes of a message that must come whole: the client must be read even past
    /// the usual buffer limit.
    Starved,
    /// The client sent Terminate (which never reaches the server).
    Terminated,
}

/// Moves complete client messages (or pieces of large ones) to the server, translating
/// prepared-statement names on the way.
///
/// The bytes forwarded as they are gather at the front of the client's input (a run) and leave
/// it in one piece when the pump stops: written straight to the server when nothing is
/// buffered for it, else appended to the server-bound buffer. Before a message is dropped,
/// rewritten or answered, and before anything is put into the server-bound buffer, the run
/// goes there, so the order never changes and what is owed to the server is always in
/// `link.to_server` when the pump returns (and when LISTEN's interception asks the link).
pub(super) fn pump_client(
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Result<ClientPump, RelayError> {
    loop {
        let mut run = Run::default();
        let pumped = pump(&mut run, client, link, server, ctx);
        if pumped.is_err() {
            // The bytes before a failure stay owed to the server, unsent, as they always were.
            run.stash(client, link);
            return pumped;
        }
        let blocked = !room_for(link, run.len);
        // When the pump stopped for want of room and the write made some, the input left
        // here is pumped now (the relay would not read the client for it, nor wake for it).
        if run.send(client, link, server)
            && blocked
            && matches!(pumped, Ok(ClientPump::Stopped))
            && room_for_more(link)
            && !client.inbuf.is_empty()
            && ctx.listen_request.is_none()
        {
            continue;
        }
        return pumped;
    }
}

/// The front of the client's input judged to go to the server as it is: `len` bytes of whole
/// messages or pieces, after everything in `link.to_server`.
#[derive(Default)]
struct Run {
    len: usize,
}

impl Run {
    /// Moves the run from `input` into `out` (the server-bound buffer), behind what is there.
    #[inline]
    fn stash_into(&mut self, input: &mut BytesMut, out: &mut BytesMut) {
        if self.len > 0 {
            move_out(std::mem::take(&mut self.len), input, out);
        }
    }

    /// [`Run::stash_into`] the server-bound buffer.
    #[inline]
    fn stash(&mut self, client: &mut ClientIo, link: &mut Link) {
        self.stash_into(&mut client.inbuf, &mut link.to_server);
    }

    /// Sends the run on at the end of a pump: with nothing buffered for the server, written
    /// straight from the input as far as its socket takes it now (no copy, no allocation, no
    /// later write); what is left is stashed. A failed write is left to the relay's buffered
    /// write to find again. True when some bytes went.
    fn send(&mut self, client: &mut ClientIo, link: &mut Link, server: &ServerConn) -> bool {
        let mut sent = 0;
        if self.len > 0
            && link.to_server.is_empty()
            && let Ok(n) = server.writer.try_write(&client.inbuf[..self.len])
        {
            sent = n;
            consume(&mut client.inbuf, n);
            self.len -= n;
        }
        self.stash(client, link);
        sent > 0
    }

    /// Drops the `len` bytes after the run (a message or piece that does not go on as it is).
    fn drop_next(&mut self, len: usize, client: &mut ClientIo, link: &mut Link) {
        self.drop_next_from(len, &mut client.inbuf, &mut link.to_server);
    }

    fn drop_next_from(&mut self, len: usize, input: &mut BytesMut, out: &mut BytesMut) {
        self.stash_into(input, out);
        consume(input, len);
    }

    /// After something was appended to the server-bound buffer from `mark` on: the run goes
    /// before it, where it belongs.
    #[inline]
    fn keep_order(&mut self, mark: usize, client: &mut ClientIo, link: &mut Link) {
        self.keep_order_in(mark, &mut client.inbuf, &mut link.to_server);
    }

    #[inline]
    fn keep_order_in(&mut self, mark: usize, input: &mut BytesMut, out: &mut BytesMut) {
        if self.len > 0 && out.len() != mark {
            let n = std::mem::take(&mut self.len);
            out.extend_from_slice(&input[..n]);
            out[mark..].rotate_right(n);
            consume(input, n);
        }
    }
}

/// Moves the first `n` bytes of `input` to the end of `out`. A short run is copied, as
/// splitting it off would turn the input into a shared buffer (an allocation) that cannot
/// reuse its room afterwards.
#[inline(never)]
fn move_out(n: usize, input: &mut BytesMut, out: &mut BytesMut) {
    if n <= COPY_MAX || !out.is_empty() {
        out.extend_from_slice(&input[..n]);
        consume(input, n);
    } else {
        out.unsplit(input.split_to(n));
    }
}

/// Drops the first `n` bytes of `input`: all of it is cleared, which keeps its room from the
/// start (no offset to account for, none to reclaim at the next read).
#[inline]
fn consume(input: &mut BytesMut, n: usize) {
    if n == input.len() {
        input.clear();
    } else {
        input.advance(n);
    }
}

/// Up to this many bytes of a run are copied to the server-bound buffer; a longer one is split
/// off the input and joined to the buffer without a copy when it can be.
const COPY_MAX: usize = 2048;

fn pump(
    run: &mut Run,
    client: &mut ClientIo,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Result<ClientPump, RelayError> {
    let tracking = ctx.statement_capacity > 0;
    let whole_text = link.pins.refuses();
    let listening = ctx.emulates_listen;
    while room_for(link, run.len) {
        // Per message: a Bind just read may have made the next Execute sluice's to answer.
        let executes_answered = ctx
            .statements
            .as_ref()
            .is_some_and(|s| s.deallocating.has_portal());
        let at = run.len;
        let item = client
            .scan
            .next_with(&client.inbuf[at..], |tag, total| {
                client_want(tag, total, tracking, executes_answered, whole_text, listening)
            })
            .map_err(RelayError::ClientProtocol)?;
        match item {
            ScanItem::NeedMore => return Ok(ClientPump::Starved),
            ScanItem::Pass { len, tag } => {
                let piece = &client.inbuf[at..at + len];
                let words = match tag {
                    Some(t) => link.text.begin(t, piece),
                    None => link.text.more(piece),
                };
                watch_identity(server, words);
                match tag {
                    Some(t) if link.client_batch == ClientBatch::SkippingToSync && t != frontend::SYNC => {
                        run.drop_next(len, client, link);
                        continue;
                    }
                    Some(t) => {
                        link.client_batch = ClientBatch::Forwarding;
                        link.on_client_message(t);
                        if t == frontend::QUERY || t == frontend::PARSE {
                            on_client_text(link, ctx.params, t, words);
                            remember_query(ctx.info, t, piece);
                        }
                    }
                    None if link.client_batch != ClientBatch::Forwarding => {
                        run.drop_next(len, client, link);
                        continue;
                    }
                    None => {
                        if let Some(t @ (frontend::QUERY | frontend::PARSE)) = link.text.tag() {
                            on_client_text(link, ctx.params, t, words);
                        }
                    }
                }
                run.len += len;
            }
            ScanItem::Whole {
                tag: frontend::TERMINATE,
                len,
            } => {
                run.drop_next(len, client, link);
                return Ok(ClientPump::Terminated);
            }
            ScanItem::Whole { tag, len } => {
                let words = link.text.begin(tag, &client.inbuf[at..at + len]);
                watch_identity(server, words);
                if link.client_batch == ClientBatch::SkippingToSync {
                    run.drop_next(len, client, link);
                    continue;
                }
                link.client_batch = ClientBatch::Forwarding;
                if whole_text {
                    let mark = link.to_server.len();
                    let refused = crate::session::pin_refusal::refuse(tag, &client.inbuf[at..at + len], link);
                    run.keep_order(mark, client, link);
                    if refused {
                        run.drop_next(len, client, link);
                        continue;
                    }
                }
                let sql = tag == frontend::QUERY || tag == frontend::PARSE;
                // What LISTEN's interception would pass untouched is not shown to it: a Query
                // whose text names no LISTEN, a Bind when the client prepared no LISTEN.
                let watched = match tag {
                    frontend::QUERY => words.has(Words::LISTEN),
                    frontend::PARSE => true,
                    frontend::BIND => {
                        tracking && ctx.statements.as_ref().is_some_and(|s| !s.listens.is_empty())
                    }
                    _ => false,
                };
                if listening && watched {
                    use crate::session::listen::Intercept;
                    // The interception reads the message at the front of the input, and asks
                    // the link whether anything is owed to the server.
                    run.stash(client, link);
                    let statements = tracking.then_some(&mut *ctx.statements);
                    let quiet = if link.quiet(client) {
                        crate::session::listen::Quiet::Synced
                    } else if link.answered(client) {
                        crate::session::listen::Quiet::OpenBatch
                    } else {
                        crate::session::listen::Quiet::Busy
                    };
                    let mentions_listen = words.has(Words::LISTEN);
                    match crate::session::listen::intercept(
                        tag,
                        client,
                        len,
                        quiet,
                        statements,
                        mentions_listen,
                    ) {
                        Intercept::Pass => {}
                        Intercept::Wait => break,
                        Intercept::Starved => return Ok(ClientPump::Starved),
                        Intercept::Rewritten => continue,
                        Intercept::Refused(e) => {
                            client.inbuf.advance(len);
                            link.responses.push_error(&e);
                            link.input.unsynced();
                            link.client_batch = ClientBatch::SkippingToSync;
                            continue;
                        }
                        Intercept::Answer(request) => {
                            ctx.listen_request = Some(Box::new(request));
                            return Ok(ClientPump::Stopped);
                        }
                        Intercept::PassUnlistening { commands, blocks } => {
                            if let Some(l) = ctx.listen.as_deref_mut() {
                                l.unlisten_among(&commands, blocks || server.tx_status != TxStatus::Idle);
                            }
                        }
                    }
                }
                let at = run.len;
                let mark = link.to_server.len();
                let outcome = if tracking || !sql {
                    translate(tag, &client.inbuf[at..at + len], link, server, ctx)
                } else {
                    Outcome::Forward
                };
                run.keep_order(mark, client, link);
                if outcome == Outcome::Wait {
                    break; // read again once the shape check is answered
                }
                let at = run.len;
                if sql {
                    remember_query(ctx.info, tag, &client.inbuf[at..at + len]);
                    on_client_text(link, ctx.params, tag, words);
                }
                match outcome {
                    Outcome::Forward => {
                        link.on_client_message(tag);
                        run.len += len;
                    }
                    Outcome::Done | Outcome::Wait => run.drop_next(len, client, link),
                    Outcome::Refused => {
                        run.drop_next(len, client, link);
                        link.client_batch = ClientBatch::SkippingToSync;
                    }
                }
            }
            ScanItem::Head { tag, len, head } => {
                let words = link.text.begin(tag, &client.inbuf[at..at + head]);
                watch_identity(server, words);
                if link.client_batch == ClientBatch::SkippingToSync {
                    run.drop_next(head, client, link);
                    client.scan.pass_rest(len - head);
                    continue;
                }
                link.client_batch = ClientBatch::Forwarding;
                let outcome = if tag == frontend::BIND {
                    let mark = link.to_server.len();
                    let outcome = bind(&client.inbuf[at..at + head], len, link, server, ctx);
                    run.keep_order(mark, client, link);
                    outcome
                } else {
                    BindOutcome::Forward
                };
                match outcome {
                    BindOutcome::Rewritten(k) => {
                        run.drop_next(k, client, link);
                        client.scan.pass_rest(len - k);
                    }
                    BindOutcome::Forward => {
                        run.len += head;
                        client.scan.pass_rest(len - head);
                        link.on_client_message(tag);
                    }
                    BindOutcome::Refused => {
                        run.drop_next(head, client, link);
                        client.scan.pass_rest(len - head);
                        link.client_batch = ClientBatch::SkippingToSync;
                    }
                    BindOutcome::Wait => break,
                    BindOutcome::Answered => {
                        run.drop_next(head, client, link);
                        client.scan.pass_rest(len - head);
                        link.client_batch = ClientBatch::DroppingMessage;
                    }
                }
            }
        }
    }
    Ok(ClientPump::Stopped)
}

/// A client message that may change who the session is (`SET ROLE`, `SET SESSION
/// AUTHORIZATION`, `set_config('role', ...)`, a FunctionCall: [`Words::IDENTITY`]) marks its
/// server: the release path resets its role and session authorization (or closes it) before any
/// other client gets it. A false alarm costs one reset off the client's path.
fn watch_identity(server: &mut ServerConn, words: Words) {
    if words.has(Words::IDENTITY) {
        server.identity = crate::server::Identity::MaybeChanged;
    }
}

/// The words of a forwarded Query's or Parse's text (`tag`), for the watches of settings and
/// pins.
fn on_client_text(link: &mut Link, params: &mut ClientParams, tag: u8, words: Words) {
    if words != Words::NONE {
        link.resets.on_client_text(tag, words, params);
        link.pins.on_client_text(tag, words, params);
    }
}

fn translator<'a>(
    link: &'a mut Link,
    server: &'a mut ServerConn,
    ctx: &'a mut RelayContext<'_>,
) -> Translator<'a> {
    Translator {
        client: ctx.statements.get_or_insert_with(Default::default),
        server: &mut server.statements,
        capacity: ctx.statement_capacity,
        limit: ctx.prepared_limit,
        responses: &mut link.responses,
        out: &mut link.to_server,
        stats: ctx.stats,
        plans: ctx.plans,
    }
}

/// Translates a whole Parse, Describe, Close or short Query when statements are tracked.
fn translate(
    tag: u8,
    msg: &[u8],
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> Outcome {
    if link.responses.server_skipping() {
        return Outcome::Forward; // the server discards it anyway
    }
    // A DEALLOCATE sluice answers names one of the client's statements: with none (every
    // simple-protocol client's case), a Query goes on as it is.
    if tag == frontend::QUERY && ctx.statements.as_ref().is_none_or(|s| s.len() == 0) {
        return Outcome::Forward;
    }
    let tx_status = server.tx_status;
    let quiet = link.responses.is_empty();
    let outcome = match tag {
        frontend::PARSE => translator(link, server, ctx).parse(msg, quiet && tx_status == TxStatus::Failed),
        frontend::EXECUTE => translator(link, server, ctx).execute_deallocate(msg),
        frontend::DESCRIBE => translator(link, server, ctx).describe(msg),
        frontend::CLOSE => translator(link, server, ctx).close(msg),
        // Only with nothing in flight is the status sluice would report certain.
        frontend::QUERY if quiet => translator(link, server, ctx).query_deallocate(msg, tx_status),
        frontend::BIND => match bind(msg, msg.len(), link, server, ctx) {
            BindOutcome::Rewritten(k) => {
                link.to_server.extend_from_slice(&msg[k..]);
                Outcome::Done
            }
            BindOutcome::Forward => Outcome::Forward,
            BindOutcome::Refused => Outcome::Refused,
            BindOutcome::Wait => Outcome::Wait,
            BindOutcome::Answered => Outcome::Done,
        },
        _ => Outcome::Forward,
    };
    if outcome != Outcome::Forward && tag != frontend::QUERY {
        link.input.unsynced();
    }
    outcome
}

/// Translates the head of a Bind.
fn bind(
    head: &[u8],
    total: usize,
    link: &mut Link,
    server: &mut ServerConn,
    ctx: &mut RelayContext<'_>,
) -> BindOutcome {
    if link.responses.server_skipping() {
        return BindOutcome::Forward; // the server discards it anyway
    }
    let outcome = translator(link, server, ctx).bind(head, total);
    if outcome != BindOutcome::Forward {
        link.input.unsynced();
    }
    outcome
}

/// Keeps the start of a Query's SQL, or of a Parse's statement text, as the client's last query
/// (only the bytes already here; at most 200 characters are kept).
fn remember_query(info: &ClientInfo, tag: u8, message: &[u8]) {
    let body = message.get(5..).unwrap_or_default();
    let text = if tag == frontend::PARSE {
        // Statement name, then the query text.
        match memchr::memchr(0, body) {
            Some(i) => &body[i + 1..],
            None => return,
        }
    } else {
        body
    };
    // The record keeps the raw head (a character is at most 4 bytes: enough to end the last
    // one begun within LAST_QUERY_BYTES); its end and UTF-8 are looked at when it is read.
    info.set_last_query_raw(&text[..text.len().min(LAST_QUERY_BYTES + 4)]);
}

/// Bytes of a query text shown as the client's last query (`ClientInfo::last_query`).
const LAST_QUERY_BYTES: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The text kept before the search looked at the first LAST_QUERY_BYTES only: the whole
    /// text up to its NUL (at most 800 bytes), its head kept when valid UTF-8, else a lossy copy.
    fn kept_as_defined(tag: u8, body: &[u8]) -> Option<String> {
        let text = if tag == frontend::PARSE {
            &body[body.iter().position(|&b| b == 0)? + 1..]
        } else {
            body
        };
        let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len()).min(800)];
        let text = match std::str::from_utf8(&text[..text.len().min(LAST_QUERY_BYTES)]) {
            Ok(head) => head.to_string(),
            Err(_) => String::from_utf8_lossy(text).into_owned(),
        };
        let mut end = text.len().min(200);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Some(text[..end].to_string())
    }

    /// A run of `n` bytes at the front of an input "abcdef...", with `out` already holding
    /// `before`.
    fn setup(before: &[u8], input: &[u8], n: usize) -> (Run, BytesMut, BytesMut) {
        (Run { len: n }, BytesMut::from(input), BytesMut::from(before))
    }

    #[test]
    fn a_stashed_run_goes_behind_what_is_buffered_and_leaves_the_input() {
        let (mut run, mut input, mut out) = setup(b"xy", b"abcdef", 4);
        run.stash_into(&mut input, &mut out);
        assert_eq!((&out[..], &input[..], run.len), (&b"xyabcd"[..], &b"ef"[..], 0));
        run.stash_into(&mut input, &mut out); // nothing more to move
        assert_eq!((&out[..], &input[..]), (&b"xyabcd"[..], &b"ef"[..]));
    }

    #[test]
    fn a_long_run_into_an_empty_buffer_moves_whole() {
        let long = vec![7u8; COPY_MAX + 10];
        let (mut run, mut input, mut out) = setup(b"", &long, COPY_MAX + 1);
        run.stash_into(&mut input, &mut out);
        assert_eq!((out.len(), input.len(), run.len), (COPY_MAX + 1, 9, 0));
    }

    #[test]
    fn a_dropped_message_drops_only_its_bytes_after_the_run() {
        let (mut run, mut input, mut out) = setup(b"", b"abcdefgh", 3);
        run.drop_next_from(2, &mut input, &mut out);
        assert_eq!((&out[..], &input[..], run.len), (&b"abc"[..], &b"fgh"[..], 0));
        let (mut run, mut input, mut out) = setup(b"q", b"abcdefgh", 0);
        run.drop_next_from(2, &mut input, &mut out);
        assert_eq!((&out[..], &input[..]), (&b"q"[..], &b"cdefgh"[..]));
    }

    #[test]
    fn bytes_written_for_the_server_after_a_run_go_behind_it() {
        // "xy" was buffered, then the run "abc" was judged, then "NEW" was written.
        let (mut run, mut input, mut out) = setup(b"xy", b"abcdef", 3);
        out.extend_from_slice(b"NEW");
        run.keep_order_in(2, &mut input, &mut out);
        assert_eq!(
            (&out[..], &input[..], run.len),
            (&b"xyabcNEW"[..], &b"def"[..], 0)
        );
        // Nothing written: the run stays where it is.
        let (mut run, mut input, mut out) = setup(b"xy", b"abcdef", 3);
        run.keep_order_in(2, &mut input, &mut out);
        assert_eq!((&out[..], &input[..], run.len), (&b"xy"[..], &b"abcdef"[..], 3));
    }

    proptest! {
        #[test]
        fn the_remembered_query_is_the_text_as_defined(
            parse in any::<bool>(),
            terminated in any::<bool>(),
            mut body in proptest::collection::vec(prop_oneof![4 => 0x20u8..0x7f, 1 => Just(0u8), 1 => any::<u8>()], 0..1000),
        ) {
            if terminated {
                body.push(0); // as a real Query or Parse text is
            }
            let info = ClientInfo::new(crate::clients::PeerAddr::Unix, None, None, crate::clients::ClientNames::new("d", "u"), "");
            info.set_last_query("before");
            let tag = if parse { frontend::PARSE } else { frontend::QUERY };
            let mut message = vec![tag, 0, 0, 0, 0];
            message.extend_from_slice(&body);
            remember_query(&info, tag, &message);
            let expected = kept_as_defined(tag, &body).unwrap_or_else(|| "before".to_string());
            prop_assert_eq!(info.last_query(), expected);
        }
    }
}
