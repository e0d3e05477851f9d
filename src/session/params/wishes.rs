//! A client's parameter wishes, stored compactly for its whole life: each wish inline up to 24
//! bytes with a rarely allocated part (the server's spelling, the startup value RESET returns
//! to), all of them in one exactly sized slice sorted by lower-cased name.

use compact_str::CompactString;

/// One parameter the client wants. The name and value are inline up to 24 bytes (no allocation
/// for the usual `application_name`), what is rarely known sits behind one optional box, and
/// the lower-cased name it is found by is derived from `name`, not stored: a client keeps its
/// wishes for its whole life, idle or not (56 bytes: one 64-byte block for a single wish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Wanted {
    /// Name as the client wrote it.
    pub(super) name: CompactString,
    /// Value as the client wrote it.
    pub(super) requested: CompactString,
    /// None: no server spelling of its own, and `requested` is the startup value (or the wish
    /// came with the startup packet and was not changed since).
    pub(super) rare: Option<Box<Rare>>,
}

/// What a wish rarely has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Rare {
    /// The server's spelling of the value (`utf8` -> `UTF8`), once a server reported one that
    /// differs from `requested` (None: not reported, or spelled the same).
    pub(super) canonical: Option<Box<str>>,
    /// How this wish relates to the client's startup packet, which RESET returns to.
    pub(super) startup: Startup,
}

/// The startup relation of a wish without a [`Rare`] part.
static SAME: Startup = Startup::Same;

impl Wanted {
    /// A wish; its rare part only when `startup` is not `Same`.
    pub(super) fn new(name: CompactString, requested: CompactString, startup: Startup) -> Wanted {
        let mut w = Wanted {
            name,
            requested,
            rare: None,
        };
        w.update(|r| r.startup = startup);
        w
    }

    /// Changes the rare part, keeping it unallocated while it holds nothing (a change that
    /// leaves nothing allocates nothing: the usual report of an unchanged value).
    pub(super) fn update(&mut self, change: impl FnOnce(&mut Rare)) {
        let mut rare = self.rare.take().map(|b| *b).unwrap_or_default();
        change(&mut rare);
        if rare != Rare::default() {
            self.rare = Some(Box::new(rare));
        }
    }

    /// The server's spelling, when it differs from `requested`.
    pub(super) fn canonical(&self) -> Option<&str> {
        self.rare.as_ref().and_then(|r| r.canonical.as_deref())
    }

    /// How the wish relates to the client's startup packet.
    pub(super) fn startup(&self) -> &Startup {
        self.rare.as_ref().map_or(&SAME, |r| &r.startup)
    }

    /// The startup relation, leaving `Same` in its place.
    pub(super) fn take_startup(&mut self) -> Startup {
        let mut taken = Startup::Same;
        self.update(|r| taken = std::mem::replace(&mut r.startup, Startup::Same));
        taken
    }

    /// The client has a new value: the server's spelling is now the wish itself, and a startup
    /// value it replaces is remembered for RESET.
    pub(super) fn replace_requested(&mut self, value: &str) {
        let before = std::mem::replace(&mut self.requested, value.into());
        self.update(|r| {
            r.canonical = None;
            if r.startup == Startup::Same {
                r.startup = Startup::Was(before.as_str().into());
            }
        });
    }

    /// The server's spelling of the value, as far as known.
    pub(super) fn current(&self) -> &str {
        self.canonical().unwrap_or(&self.requested)
    }

    /// Records `value` as the server's spelling of `requested`.
    pub(super) fn set_canonical(&mut self, value: &str) {
        let canonical = (*self.requested != *value).then(|| value.into());
        self.update(|r| r.canonical = canonical);
    }
}

/// The lower-cased name a wish is found by (borrowed when the name has no upper case).
pub(super) fn key_of(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Compares `name` lower-cased with `key` (already lower case), without allocating.
fn cmp_key(name: &str, key: &str) -> std::cmp::Ordering {
    name.bytes().map(|b| b.to_ascii_lowercase()).cmp(key.bytes())
}

/// What the client's startup packet said about a parameter. On PostgreSQL, `RESET` and
/// `DISCARD ALL` return a setting to the connection's startup value; sluice's servers started
/// with sluice's values, so sluice has to remember the client's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum Startup {
    /// Not in the startup packet: a reset drops the wish (the server's default applies).
    Absent,
    /// `requested` is still the startup value.
    #[default]
    Same,
    /// The client has SET another value since; this was the startup value.
    Was(Box<str>),
}

/// The client's wishes, sorted by lower-cased name in an exactly sized slice: a client has a
/// handful, and a BTreeMap would allocate a whole 11-slot node per idle client (a boxed slice is
/// also 8 bytes smaller than a Vec in every idle session).
#[derive(Debug, Clone, Default)]
pub(super) struct Wishes(pub(super) Box<[Wanted]>);

impl Wishes {
    /// Where the wish for `key` (lower case) is, or would go.
    pub(super) fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|w| cmp_key(&w.name, key))
    }

    pub(super) fn insert(&mut self, value: Wanted) {
        match self.position(&key_of(&value.name)) {
            Ok(i) => self.0[i] = value,
            Err(i) => {
                // Exactly sized: a client keeps these for its whole life.
                let mut v = std::mem::take(&mut self.0).into_vec();
                v.insert(i, value);
                self.0 = v.into_boxed_slice();
            }
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&Wanted> {
        self.position(key).ok().map(|i| &self.0[i])
    }

    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut Wanted> {
        self.position(key).ok().map(|i| &mut self.0[i])
    }

    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    pub(super) fn remove(&mut self, key: &str) {
        if let Ok(i) = self.position(key) {
            let mut v = std::mem::take(&mut self.0).into_vec();
            v.remove(i);
            self.0 = v.into_boxed_slice();
        }
    }

    /// Every wish with its lower-cased name.
    pub(super) fn iter(&self) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, &Wanted)> {
        self.0.iter().map(|w| (key_of(&w.name), w))
    }
}
