//! One pass over each client message that carries SQL, for every watch that reads its text: the
//! settings watch (`set_config`), the pin watch (`_advisory`, `TEMP`), the identity watch (`set`,
//! then `role` or `authorization`) and the LISTEN recogniser (`listen`). The pass stops only at
//! the few bytes that can begin one of those words; a message forwarded in pieces is followed
//! across them (the last bytes of each piece are kept, so a word split between two is found).

use crate::protocol::tags::frontend;

/// Words of a message's text that a watch acts on (a set of them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Words(u8);

impl Words {
    /// None of them.
    pub(super) const NONE: Words = Words(0);
    /// `set_config`, in any letter case (the settings watch).
    pub(super) const SET_CONFIG: Words = Words(1);
    /// `_advisory` not followed by `_xact` (the pin watch: a session advisory lock function).
    pub(super) const ADVISORY: Words = Words(2);
    /// The word `temp` or `temporary` (the pin watch: `SELECT .. INTO TEMP`, `CREATE TEMP ..`).
    pub(super) const TEMP: Words = Words(4);
    /// `listen` (the LISTEN recogniser reads the text only then).
    pub(super) const LISTEN: Words = Words(8);
    /// `set`, then later `role` or `authorization` (the identity watch); any FunctionCall too,
    /// which may call `set_config` by its OID.
    pub(super) const IDENTITY: Words = Words(16);

    /// The words the pin watch acts on.
    pub(super) const PINNING: Words = Words(Words::ADVISORY.0 | Words::TEMP.0);

    /// True when any of `w` is among these.
    pub(super) fn has(self, w: Words) -> bool {
        self.0 & w.0 != 0
    }

    /// Only those of these that are also in `w`.
    pub(super) fn only(self, w: Words) -> Words {
        Words(self.0 & w.0)
    }

    /// Adds `w` to these.
    pub(super) fn add(&mut self, w: Words) {
        self.0 |= w.0;
    }
}

/// Bytes kept from the end of a piece: a word (with its look-ahead, `_advisory_xact`) that
/// begins in them and ends in the next piece is found whole.
const TAIL: usize = 15;

/// The client message whose text is being scanned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum TextScan {
    /// Not a message with SQL in it.
    #[default]
    Elsewhere,
    /// A Query, Parse or Bind (`tag`).
    In {
        tag: u8,
        /// The last bytes seen (`tail[..len]`).
        tail: [u8; TAIL],
        len: u8,
        /// A `set` was seen: `role` or `authorization` from there on changes the identity.
        saw_set: bool,
    },
}

impl TextScan {
    /// The client began a message (`tag`) with this piece (or all) of it: the words in it.
    pub(super) fn begin(&mut self, tag: u8, piece: &[u8]) -> Words {
        if tag == frontend::FUNCTION_CALL {
            *self = TextScan::Elsewhere;
            return Words::IDENTITY;
        }
        *self = if frontend::carries_sql(tag) {
            TextScan::In {
                tag,
                tail: [0; TAIL],
                len: 0,
                saw_set: false,
            }
        } else {
            TextScan::Elsewhere
        };
        self.more(piece)
    }

    /// The next piece of the message last begun: the words that end in it.
    pub(super) fn more(&mut self, piece: &[u8]) -> Words {
        let TextScan::In {
            tag,
            tail,
            len,
            saw_set,
        } = self
        else {
            return Words::NONE;
        };
        let mut found = Words::NONE;
        let kept = usize::from(*len);
        if kept > 0 && !piece.is_empty() {
            // Words that begin in the tail and end in this piece.
            let mut joint = [0u8; 2 * TAIL];
            let head = piece.len().min(TAIL);
            joint[..kept].copy_from_slice(&tail[..kept]);
            joint[kept..kept + head].copy_from_slice(&piece[..head]);
            let at = Place {
                prev: None,
                ends_after: kept,
            };
            find(&joint[..kept + head], kept, at, saw_set, &mut found);
        }
        let at = Place {
            prev: (kept > 0).then(|| tail[kept - 1]),
            ends_after: 0,
        };
        find(piece, piece.len(), at, saw_set, &mut found);
        // Keep the last TAIL bytes seen.
        if piece.len() >= TAIL {
            tail.copy_from_slice(&piece[piece.len() - TAIL..]);
            *len = TAIL as u8;
        } else {
            let drop = (kept + piece.len()).saturating_sub(TAIL);
            tail.copy_within(drop..kept, 0);
            tail[kept - drop..kept - drop + piece.len()].copy_from_slice(piece);
            *len = (kept - drop + piece.len()) as u8;
        }
        if *tag == frontend::BIND {
            // A Bind's bytes are its parameters: only the identity watch reads them.
            found = found.only(Words::IDENTITY);
        }
        found
    }

    /// The message being scanned (None outside one with SQL).
    pub(super) fn tag(&self) -> Option<u8> {
        match self {
            TextScan::Elsewhere => None,
            TextScan::In { tag, .. } => Some(*tag),
        }
    }
}

/// Where a text being searched lies in its message.
#[derive(Clone, Copy)]
struct Place {
    /// The byte before the text's first one, if the message has one (a word starts after it).
    prev: Option<u8>,
    /// Only words that end past this many bytes of the text count (the ones before were found
    /// in the previous piece).
    ends_after: usize,
}

/// Adds the words that begin in `text[..starts]` (and end past `at.ends_after`) to `found`, in
/// the order of the text: `saw_set` records the identity watch's `set` (no `role` or
/// `authorization` overlaps one, so one after it is wholly after it).
fn find(text: &[u8], starts: usize, at: Place, saw_set: &mut bool, found: &mut Words) {
    let word = |i: usize, w: &[u8]| {
        i + w.len() > at.ends_after
            && text
                .get(i..i + w.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(w))
    };
    // The word TEMP or TEMPORARY at `i` (a word ending where the text ends counts).
    let temp = |i: usize| {
        let before = if i == 0 { at.prev } else { Some(text[i - 1]) };
        let ends = |n: usize| text.get(i + n).is_none_or(|&c| !is_word_byte(c));
        before.is_none_or(|c| !is_word_byte(c))
            && ((word(i, b"temp") && ends(4)) || (word(i, b"temporary") && ends(9)))
    };
    // Positions are taken LANES at a time from a bit mask of the candidates: a byte that begins
    // a watched word, followed by that word's second letter (rare pairs, where most single
    // bytes of SQL would be candidates).
    let mut base = 0;
    while base < starts {
        let mut hits = candidates(&text[base..]);
        if starts - base < LANES {
            hits &= (1 << (starts - base)) - 1;
        }
        while hits != 0 {
            let i = base + hits.trailing_zeros() as usize;
            hits &= hits - 1;
            let b = text[i];
            match b {
                b's' | b'S' => {
                    if !*saw_set && word(i, b"set") {
                        *saw_set = true;
                    }
                    if word(i, b"set_config") {
                        found.add(Words::SET_CONFIG);
                    }
                }
                b'_' if word(i, b"_advisory") && !starts_with_ci(&text[i + 9..], b"_xact") => {
                    found.add(Words::ADVISORY)
                }
                b't' | b'T' if temp(i) => found.add(Words::TEMP),
                b'l' | b'L' if word(i, b"listen") => found.add(Words::LISTEN),
                b'r' | b'R' | b'a' | b'A' if *saw_set && (word(i, b"role") || word(i, b"authorization")) => {
                    found.add(Words::IDENTITY)
                }
                _ => {}
            }
        }
        base += LANES;
    }
}

/// How many positions [`candidates`] tests at once (the bits of its mask).
const LANES: usize = 16;

/// Bit `j` set where `text[j]` and `text[j + 1]` may begin a watched word (`j < LANES`): the
/// first letter and the second of `set`/`set_config`, `temp`/`temporary`, `_advisory`,
/// `listen`, `role` or `authorization`, in any case. `| 0x20` lower-cases letters and maps no
/// other byte to one (`_` becomes DEL, which only adds a candidate). Past the text's end the
/// bytes are blanks. SSE2 (every x86_64 CPU has it) compares 16 positions at once.
#[cfg(target_arch = "x86_64")]
fn candidates(text: &[u8]) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let mut padded = [b' '; LANES + 1];
    let bytes: &[u8] = if text.len() > LANES {
        text
    } else {
        padded[..text.len()].copy_from_slice(text);
        &padded
    };
    // SAFETY: SSE2 is part of every x86_64 target's baseline, so its intrinsics can run; and
    // `bytes` holds at least LANES + 1 bytes, so both unaligned 16-byte loads (at 0 and at 1)
    // read inside it.
    unsafe {
        let first = _mm_loadu_si128(bytes.as_ptr().cast::<__m128i>());
        let second = _mm_loadu_si128(bytes.as_ptr().add(1).cast::<__m128i>());
        let low = _mm_set1_epi8(0x20);
        let (f, s) = (_mm_or_si128(first, low), _mm_or_si128(second, low));
        let is = |v: __m128i, c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        let pair = |a: u8, b: u8| _mm_and_si128(is(f, a), is(s, b));
        let hits = _mm_or_si128(
            _mm_or_si128(
                _mm_and_si128(_mm_or_si128(is(f, b's'), is(f, b't')), is(s, b'e')),
                pair(0x7f, b'a'),
            ),
            _mm_or_si128(_mm_or_si128(pair(b'l', b'i'), pair(b'r', b'o')), pair(b'a', b'u')),
        );
        _mm_movemask_epi8(hits) as u32
    }
}

/// [`candidates`] one position at a time, where SSE2 is not there.
#[cfg(not(target_arch = "x86_64"))]
fn candidates(text: &[u8]) -> u32 {
    let byte = |j: usize| text.get(j).map_or(b' ', |&b| b) | 0x20;
    let mut hits = 0u32;
    for j in 0..LANES.min(text.len()) {
        let (f, s) = (byte(j), byte(j + 1));
        let hit = ((f == b's' || f == b't') && s == b'e')
            || (f == 0x7f && s == b'a')
            || (f == b'l' && s == b'i')
            || (f == b'r' && s == b'o')
            || (f == b'a' && s == b'u');
        hits |= u32::from(hit) << j;
    }
    hits
}

fn starts_with_ci(text: &[u8], needle: &[u8]) -> bool {
    text.get(..needle.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(needle))
}

/// A byte that may be part of an SQL word (so `temp` inside `contempt` is not the word).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words found in a message sent in these pieces.
    fn words(tag: u8, pieces: &[&str]) -> Words {
        let mut scan = TextScan::default();
        let mut found = scan.begin(tag, pieces.first().map_or(&b""[..], |p| p.as_bytes()));
        for p in pieces.iter().skip(1) {
            found.add(scan.more(p.as_bytes()));
        }
        found
    }

    fn q(text: &str) -> Words {
        words(b'Q', &[text])
    }

    #[test]
    fn set_config_is_seen_in_any_case_and_across_pieces() {
        assert_eq!(q("select SET_Config('a', 'b', false)"), Words::SET_CONFIG);
        assert_eq!(q("set_config"), Words::SET_CONFIG);
        assert_eq!(q("select current_setting('x'), _config, et_config"), Words::NONE);
        assert!(words(b'Q', &["SELECT pg_catalog.se", "t_c", "onfig('a','b',false)"]).has(Words::SET_CONFIG));
        assert!(words(b'P', &["s0\0SELECT set_config($1,$2,false)"]).has(Words::SET_CONFIG));
        // A Bind's parameters are not statement text.
        assert_eq!(words(b'B', &["set_config"]), Words::NONE);
        assert_eq!(words(b'E', &["set_config"]), Words::NONE);
    }

    #[test]
    fn words_that_may_pin_are_seen_in_any_case_and_across_pieces() {
        assert_eq!(q("select pg_advisory_lock(1)"), Words::ADVISORY);
        assert_eq!(q("SELECT PG_TRY_ADVISORY_LOCK(1)"), Words::ADVISORY);
        assert_eq!(q("select pg_advisory_xact_lock(1)"), Words::NONE);
        assert_eq!(q("select 1 into TEMP t"), Words::TEMP);
        assert_eq!(
            q("select attempt, contempt, temperature, temp_c from x"),
            Words::NONE
        );
        assert_eq!(q("CREATE TEMPORARY TABLE t AS SELECT 1"), Words::TEMP);
        assert_eq!(
            q("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            Words::NONE
        );
        assert_eq!(
            words(b'Q', &["SELECT pg_catalog.pg_adv", "isory_lock(7)"]),
            Words::ADVISORY
        );
        assert_eq!(
            words(b'Q', &["SELECT pg_advisory", "_xact_lock(7)"]),
            Words::ADVISORY
        );
        assert_eq!(words(b'Q', &["select 1 into te", "mp t"]), Words::TEMP);
        assert_eq!(words(b'Q', &["select 1 into ", "temp t"]), Words::TEMP);
        // Split in front of the word's end or inside a longer word: not the word.
        assert_eq!(words(b'Q', &["select con", "tempt"]), Words::NONE);
        assert_eq!(words(b'Q', &["select tem", "perature"]), Words::NONE);
        // Pieces smaller than the words.
        assert_eq!(
            words(b'Q', &["create ", "t", "e", "m", "p", "orary", " table"]),
            Words::TEMP
        );
    }

    #[test]
    fn identity_changes_need_set_before_role_or_authorization() {
        assert_eq!(q("SET ROLE x"), Words::IDENTITY);
        assert_eq!(q("set session authorization x"), Words::IDENTITY);
        assert!(
            words(
                b'Q',
                &["SELECT pg_catalog.set_con", "fig('ro", "le', 'x', false)"]
            )
            .has(Words::IDENTITY)
        );
        assert_eq!(words(b'P', &["SeT RoLe x"]), Words::IDENTITY);
        assert_eq!(words(b'B', &["\0s\0", "set", " r", "ole"]), Words::IDENTITY);
        assert_eq!(words(b'F', &[]), Words::IDENTITY);
        assert_eq!(q("SELECT role FROM user_roles"), Words::NONE);
        assert_eq!(q("SET search_path = a"), Words::NONE);
        assert_eq!(words(b'E', &["set role"]), Words::NONE);
        assert_eq!(q("ROLE then SET"), Words::NONE);
        assert_eq!(words(b'Q', &["ROLE then SET", "x"]), Words::NONE);
        assert_eq!(words(b'Q', &["ROLE then SE", "T"]), Words::NONE);
        assert_eq!(words(b'Q', &["x SE", "T", " auth", "orization"]), Words::IDENTITY);
        assert_eq!(words(b'Q', &["set", "role"]), Words::IDENTITY);
    }

    #[test]
    fn listen_is_seen_anywhere_in_the_text() {
        assert_eq!(q("LISTEN a"), Words::LISTEN);
        assert_eq!(q("select pg_listening_channels()"), Words::LISTEN);
        assert_eq!(q("SELECT 1"), Words::NONE);
    }

    /// Whatever the pieces, the scan finds what it finds in the whole text (and never more).
    #[test]
    fn any_split_finds_what_the_whole_text_has() {
        let texts = [
            "SELECT set_config('role', 'x', false)",
            "select pg_try_advisory_lock(1); create temporary table t(a int)",
            "select pg_advisory_xact_lock(1), contempt, set role",
            "LISTEN chan; SET SESSION AUTHORIZATION u",
            "ROLE ... set",
        ];
        for text in texts {
            let whole = q(text);
            for cut1 in 0..=text.len() {
                for cut2 in cut1..=text.len() {
                    let split = words(b'Q', &[&text[..cut1], &text[cut1..cut2], &text[cut2..]]);
                    // Only a piece boundary right after `_advisory` or `temp` may add a word
                    // (its look-ahead ends with the piece): never lose one.
                    let at = format!("{text:?} cut at {cut1}, {cut2}");
                    assert_eq!(split.only(whole), whole, "{at}");
                    let others = Words(!Words::PINNING.0);
                    assert_eq!(split.only(others), whole.only(others), "{at}");
                }
            }
        }
    }

    /// The words as plainly defined, on a whole text.
    fn reference(text: &[u8]) -> Words {
        let at = |i: usize, w: &[u8]| {
            text.get(i..i + w.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(w))
        };
        let word_byte = |i: usize| text.get(i).is_some_and(|&c| is_word_byte(c));
        let mut found = Words::NONE;
        for i in 0..text.len() {
            if at(i, b"set_config") {
                found.add(Words::SET_CONFIG);
            }
            if at(i, b"_advisory") && !at(i + 9, b"_xact") {
                found.add(Words::ADVISORY);
            }
            let starts = i == 0 || !word_byte(i - 1);
            if starts && ((at(i, b"temp") && !word_byte(i + 4)) || (at(i, b"temporary") && !word_byte(i + 9)))
            {
                found.add(Words::TEMP);
            }
            if at(i, b"listen") {
                found.add(Words::LISTEN);
            }
        }
        if let Some(set) = (0..text.len()).find(|&i| at(i, b"set"))
            && (set + 3..text.len()).any(|i| at(i, b"role") || at(i, b"authorization"))
        {
            found.add(Words::IDENTITY);
        }
        found
    }

    proptest::proptest! {
        /// On any text, cut anywhere, the scan finds the words of the plain definition: all of
        /// them, and more only where a cut ends the look-ahead of `_advisory` or `temp`.
        #[test]
        fn the_scan_finds_the_words_as_defined_across_any_cuts(
            fragments in proptest::collection::vec(
                proptest::sample::select(vec![
                    "set", "SeT", "se", "t", "_config", "_CONFIG", "role", "ROLE", "ro",
                    "authorization", "temp", "TEMPORARY", "orary", "_advisory", "_xact", "listen",
                    "LISTEN", "con", "x", "_", " ", "(", "\n", "$",
                ]),
                0..24,
            ),
            cuts in proptest::collection::vec(0usize..160, 0..4),
        ) {
            let text = fragments.concat().into_bytes();
            let want = reference(&text);
            let mut scan = TextScan::default();
            let whole = scan.begin(b'Q', &text);
            proptest::prop_assert_eq!(whole, want);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut found = Words::NONE;
            let mut from = 0;
            for (n, &cut) in cuts.iter().chain([&text.len()]).enumerate() {
                let piece = &text[from..cut];
                found.add(if n == 0 { scan.begin(b'Q', piece) } else { scan.more(piece) });
                from = cut;
            }
            let others = Words(!Words::PINNING.0);
            proptest::prop_assert_eq!(found.only(want), want);
            proptest::prop_assert_eq!(found.only(others), want.only(others));
        }
    }
}
