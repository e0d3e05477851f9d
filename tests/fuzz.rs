//! Property-based fuzzing on stable Rust (proptest) of everything that reads bytes a peer
//! chooses: the startup packet parser, the frame scanner (client and server streams, any
//! chunking), the rules a logged-in client's messages must meet, the server-side SCRAM
//! exchange, the SCRAM client's handling of server messages, the console command parser and
//! the config loader. Each property runs `PROPTEST_CASES` cases (256 by default, a few seconds
//! in all); `scripts/fuzz.sh` runs them for longer.
//!
//! The properties: nothing panics, every byte is accounted for, and nothing malformed is ever
//! accepted as valid.

use proptest::prelude::*;
use sluice::auth::{ScramExchange, ScramVerifier};
use sluice::protocol::{FrameScanner, ScanItem, Want};
use sluice::protocol::{StartupPacket, read_startup_packet};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

/// A startup packet as a client builds it: length, protocol code, NUL-terminated pairs.
fn startup_bytes(code: i32, params: &[(String, String)]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A frame of the v3 protocol; `len_override` writes another length field than the true one.
fn frame(tag: u8, body: &[u8], len_override: Option<i32>) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&len_override.unwrap_or(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Lengths near every limit a parser could get wrong.
fn edge_length() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(i32::MIN),
        Just(-1),
        Just(0),
        Just(3),
        Just(4),
        Just(7),
        Just(8),
        Just(i32::MAX),
        Just(i32::MAX - 3),
        Just(0x4000_0000),
        Just(10_000),
        Just(10_001),
        any::<i32>(),
    ]
}

/// Feeds `stream` to a scanner in `chunks`-sized reads, consuming what it hands out like the
/// relay does; returns the bytes handed out per message start, or the first framing error.
fn scan_all(
    stream: &[u8],
    chunks: &[usize],
    want: impl Fn(u8, usize) -> Want,
) -> Result<usize, sluice::protocol::FrameError> {
    let mut scanner = FrameScanner::new(8192, 1 << 20);
    let mut available = 0usize; // bytes of `stream` that have "arrived"
    let mut consumed = 0usize;
    let mut chunk = chunks.iter().cycle();
    loop {
        let buf = &stream[consumed..available];
        match scanner.next_with(buf, |tag, len| Ok(want(tag, len)))? {
            ScanItem::Pass { len, .. } | ScanItem::Whole { len, .. } => {
                assert!(len > 0 && len <= buf.len(), "hands out only bytes it has");
                consumed += len;
            }
            ScanItem::Head { len, head, .. } => {
                assert!(head <= buf.len() && head < len);
                consumed += head;
                scanner.pass_rest(len - head);
            }
            ScanItem::NeedMore => {
                if available == stream.len() {
                    return Ok(consumed);
                }
                available = (available + chunk.next().copied().unwrap_or(1).max(1)).min(stream.len());
            }
        }
    }
}

/// As the relay scans a client's stream: each message's header is checked first.
fn scan_all_checked(stream: &[u8], chunks: &[usize]) -> Result<usize, sluice::protocol::FrameError> {
    let mut scanner = FrameScanner::new(8192, 1 << 20);
    let (mut available, mut consumed) = (0usize, 0usize);
    let mut chunk = chunks.iter().cycle();
    loop {
        let buf = &stream[consumed..available];
        let item = scanner.next_with(buf, |tag, len| {
            sluice::protocol::check_client_message(tag, len).map(|()| Want::Pass)
        })?;
        match item {
            ScanItem::Pass { len, .. } | ScanItem::Whole { len, .. } => consumed += len,
            ScanItem::Head { .. } => unreachable!("nothing asks for heads here"),
            ScanItem::NeedMore if available == stream.len() => return Ok(consumed),
            ScanItem::NeedMore => {
                available = (available + chunk.next().copied().unwrap_or(1).max(1)).min(stream.len());
            }
        }
    }
}

proptest! {
    // PROPTEST_CASES sets the number of cases; failures are reported, not persisted to files.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn startup_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut reader = &bytes[..];
        let _ = runtime().block_on(read_startup_packet(&mut reader));
    }

    #[test]
    fn startup_parser_survives_edge_lengths(len in edge_length(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        let mut reader = &bytes[..];
        let got = runtime().block_on(read_startup_packet(&mut reader));
        // Whatever the length says, the parser never reads past what was sent nor allocates it.
        if !(8..=10_000).contains(&len) {
            prop_assert!(got.is_err(), "length {len} accepted");
        }
    }

    #[test]
    fn startup_parameters_round_trip(
        params in proptest::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..8)
    ) {
        let bytes = startup_bytes(196608, &params);
        let mut reader = &bytes[..];
        match runtime().block_on(read_startup_packet(&mut reader)) {
            Ok(StartupPacket::Startup { major: 3, minor: 0, params: got }) => prop_assert_eq!(got, params),
            other => prop_assert!(false, "unexpected {:?}", other.map(|_| ()).map_err(|e| e.to_string())),
        }
    }

    #[test]
    fn frame_scanner_accounts_for_every_byte_of_valid_streams(
        msgs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
        chunks in proptest::collection::vec(1usize..64, 1..8),
        whole_tags in proptest::collection::vec(any::<u8>(), 0..6),
        head in 5usize..40,
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|(t, b)| frame(*t, b, None)).collect();
        // Client stream (Bind asked for by its head, the rest whole or passed) and server stream
        // (ReadyForQuery, ErrorResponse and friends whole) use the same scanner.
        let want = |tag: u8, _len: usize| {
            if tag == b'B' { Want::Head(head) } else if whole_tags.contains(&tag) { Want::Whole } else { Want::Pass }
        };
        let consumed = scan_all(&stream, &chunks, want).expect("a valid stream has no framing error");
        prop_assert_eq!(consumed, stream.len());
    }

    #[test]
    fn client_streams_pass_only_messages_postgresql_reads_after_login(
        msgs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..12),
        chunks in proptest::collection::vec(1usize..32, 1..6),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|(t, b)| frame(*t, b, None)).collect();
        let all_valid = msgs.iter().all(|(t, b)| {
            matches!(t, b'Q' | b'P' | b'B' | b'F' | b'd' | b'D' | b'C' | b'E' | b'f')
                || (matches!(t, b'S' | b'H' | b'X' | b'c') && b.is_empty())
        });
        let result = scan_all_checked(&stream, &chunks);
        // Exactly the streams made only of what PostgreSQL reads after login get through whole.
        prop_assert_eq!(result.is_ok(), all_valid, "{:?}", result);
        if let Ok(consumed) = result {
            prop_assert_eq!(consumed, stream.len());
        }
    }

    #[test]
    fn frame_scanner_refuses_bad_lengths_before_allocating(
        tag in any::<u8>(),
        len in edge_length(),
        body in proptest::collection::vec(any::<u8>(), 0..32),
        chunks in proptest::collection::vec(1usize..16, 1..4),
    ) {
        let stream = frame(tag, &body, Some(len));
        let result = scan_all(&stream, &chunks, |_, _| Want::Whole);
        if len < 4 || len as i64 + 1 > 8192 {
            prop_assert!(result.is_err(), "length {len} must be refused");
        }
    }

    #[test]
    fn scram_exchange_never_panics_and_refuses_garbage(
        client_first in "[ -~]{0,80}",
        client_final in "[ -~]{0,160}",
    ) {
        let verifier = verifier();
        if let Ok(exchange) = ScramExchange::start(&client_first, &verifier) {
            prop_assert!(exchange.finish(&client_final, &verifier).is_err());
        }
    }

    #[test]
    fn scram_exchange_refuses_a_nonce_that_does_not_extend_both(
        cut in 0usize..24,
        extra in "[A-Za-z0-9+/]{0,8}",
    ) {
        let verifier = verifier();
        let exchange = ScramExchange::start("n,,n=,r=clientnonce", &verifier).expect("client-first");
        let full = exchange.server_first().split(',').next().unwrap_or_default().trim_start_matches("r=").to_string();
        // The client's nonce alone, a truncated combined nonce, or one with bytes added.
        let bad = format!("{}{extra}", &full[..cut.min(full.len() - 1)]);
        prop_assume!(bad != full);
        let final_msg = format!("c=biws,r={bad},p={}", base64_zeros());
        prop_assert!(exchange.finish(&final_msg, &verifier).is_err());
    }

    #[test]
    fn scram_client_never_panics_on_server_messages(
        server_first in "[ -~]{0,120}",
        server_final in "[ -~]{0,80}",
    ) {
        let _ = sluice::auth::check_server_first(server_first.as_bytes());
        let mut client = sluice::auth::KeyScramClient::new([7; 32], verifier());
        let _ = client.client_final(&server_first);
        let _ = client.verify_server_final(&server_final);
    }

    #[test]
    fn scram_client_refuses_a_server_nonce_that_does_not_extend_its_own(
        keep in 0usize..40,
        extra in "[A-Za-z0-9+/]{0,6}",
    ) {
        let mut client = sluice::auth::KeyScramClient::new([7; 32], verifier());
        let first = client.client_first();
        let client_nonce = first.rsplit("r=").next().unwrap_or_default().to_string();
        // The client's nonce itself, a prefix of it, or a prefix with other bytes after it.
        let nonce = format!("{}{extra}", &client_nonce[..keep.min(client_nonce.len())]);
        prop_assume!(!(nonce.len() > client_nonce.len() && nonce.starts_with(&client_nonce)));
        let v = verifier();
        let server_first = format!("r={nonce},s={},i={}", v.salt_base64(), v.iterations);
        prop_assert!(client.client_final(&server_first).is_err());
    }

    #[test]
    fn scram_client_refuses_absurd_iteration_counts(i in 100_001u64..=u64::MAX) {
        let msg = format!("r=abcdef,s=c2FsdA==,i={i}");
        prop_assert!(sluice::auth::check_server_first(msg.as_bytes()).is_err());
    }

    #[test]
    fn console_parser_never_panics(query in "\\PC{0,80}") {
        let _ = sluice::admin::parse(&query);
    }

    #[test]
    fn console_parser_never_panics_on_command_shapes(
        verb in prop_oneof![Just("SHOW"), Just("SET"), Just("KILL_CLIENT"), Just("PAUSE"), Just("SHUTDOWN"), Just("select")],
        rest in "[ -~]{0,40}",
    ) {
        let _ = sluice::admin::parse(&format!("{verb} {rest}"));
    }

    #[test]
    fn config_loader_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = sluice::Config::from_toml_str(&text, "fuzz.toml", None);
    }

    #[test]
    fn config_loader_names_the_key_of_any_bad_value(
        key_index in any::<proptest::sample::Index>(),
        value in prop_oneof![
            Just("-1".to_string()), Just("9223372036854775807".to_string()), Just("\"\"".to_string()),
            Just("true".to_string()), Just("[1, \"a\"]".to_string()), Just("{ a = 1 }".to_string()),
            Just("1e400".to_string()), Just("\"-1s\"".to_string()), Just("\"99999999999h\"".to_string()),
            "\"[ -~&&[^\"\\\\]]{0,12}\"", any::<i64>().prop_map(|n| n.to_string()),
        ],
    ) {
        let keys = example_keys();
        let key = key_index.get(&keys);
        let text = format!("[pooler]\n{key} = {value}\n");
        if let Err(e) = sluice::Config::from_toml_str(&text, "fuzz.toml", None) {
            let shown = e.to_string();
            prop_assert!(shown.contains("fuzz.toml"), "error names the file: {shown}");
        }
    }
}

/// One verifier for every case: deriving it runs PBKDF2, slow in a debug build.
fn verifier() -> ScramVerifier {
    static VERIFIER: std::sync::LazyLock<ScramVerifier> = std::sync::LazyLock::new(|| {
        ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"fuzz")).expect("verifier")
    });
    VERIFIER.clone()
}

fn base64_zeros() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([0u8; 32])
}

/// The `[pooler]` keys the example configuration documents (commented or not).
fn example_keys() -> Vec<String> {
    let text = include_str!("../pooler.toml.example");
    let pooler = text
        .split("\n[")
        .find(|section| section.starts_with("pooler]"))
        .expect("the example has a [pooler] table");
    let keys: Vec<String> = pooler
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_string()))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(keys.len() > 20, "found the example's keys: {keys:?}");
    keys
}
