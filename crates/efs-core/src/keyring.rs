//! A filesystem's keyring: numbered terms, each a 32-byte key from which HKDF derives the
//! subkeys of one purpose each (data-key wrapping, name tags, index records).
//!
//! The keyring is stored wrapped (AES-256-GCM) under a starter subkey, with the
//! filesystem id as associated data, in the filesystem's index. New writes use the
//! current term; older terms still open what they wrapped, until `efsctl retire-terms`
//! removes them ([`Keyring::retire_older`]): then only their numbers and the time are kept,
//! so that what names one gets a clear error, and, for the tag term, the two derived keys
//! names and listing cursors need (never the term's own key: nothing stored afterwards
//! derives its wrap or record key).

use std::collections::BTreeMap;
use std::fmt;

use efs_format::wrap::{self, Sealer};
use efs_format::{Key32, MacKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{CoreError, Result};
use crate::keyparts::StarterKey;
use crate::labels;

/// The subkeys of one term.
pub struct Term {
    /// The term number (1 for the first).
    pub number: u32,
    wrap: Key32,
    tag: Key32,
    /// `tag`, set up for HMAC once (a GET computes several tags).
    tag_mac: MacKey,
    record: Key32,
    /// `wrap` and `record`, expanded for AES-256-GCM once: a GET opens two or three records
    /// and a data key, a listing one record per entry.
    wrap_sealer: Sealer,
    record_sealer: Sealer,
}

impl Term {
    fn new(number: u32, key: &Key32) -> Self {
        let tag = key.derive(b"", labels::TERM_NAME_TAG);
        let wrap = key.derive(b"", labels::TERM_DATA_KEY_WRAP);
        let record = key.derive(b"", labels::TERM_INDEX_RECORD);
        Self {
            number,
            wrap_sealer: Sealer::new(&wrap),
            record_sealer: Sealer::new(&record),
            wrap,
            tag_mac: MacKey::new(&tag),
            tag,
            record,
        }
    }

    /// Key that wraps data keys.
    pub fn data_key_wrap(&self) -> &Key32 {
        &self.wrap
    }

    /// Key of the index records.
    pub fn record_key(&self) -> &Key32 {
        &self.record
    }

    /// [`Term::data_key_wrap`], expanded once: seals and opens wrapped data keys.
    pub fn data_key_sealer(&self) -> &Sealer {
        &self.wrap_sealer
    }

    /// [`Term::record_key`], expanded once: seals and opens index records.
    pub fn record_sealer(&self) -> &Sealer {
        &self.record_sealer
    }

    /// Key of the name tags.
    pub fn tag_key(&self) -> &Key32 {
        &self.tag
    }

    /// The key of the name tags, set up for HMAC.
    pub fn tag_mac(&self) -> &MacKey {
        &self.tag_mac
    }
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Term({}, <redacted>)", self.number)
    }
}

#[derive(Serialize, Deserialize)]
struct StoredKeyring {
    current: u32,
    /// The term whose name-tag key keys the index (fixed at creation: tags must stay stable).
    tag_term: u32,
    terms: Vec<(u32, [u8; 32])>,
}

impl Drop for StoredKeyring {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for (_, k) in &mut self.terms {
            k.zeroize();
        }
    }
}

/// What a keyring that retired terms adds after its [`StoredKeyring`] encoding (postcard is
/// not self-describing, so serde defaults cannot extend a struct: an encoding that ends
/// after the three fields above is a keyring that never retired a term, as every keyring
/// written before retirement existed).
#[derive(Serialize, Deserialize)]
struct StoredRetirement {
    /// Every retired term: its number and when it was retired (Unix ms).
    retired: Vec<(u32, i64)>,
    /// When the tag term is retired: its name-tag key ([`labels::TERM_NAME_TAG`]) and its
    /// list-cursor root ([`labels::TERM_LIST_CURSOR_ROOT`]), both one-way subkeys of it.
    tag_keys: Option<([u8; 32], [u8; 32])>,
}

impl Drop for StoredRetirement {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some((a, b)) = &mut self.tag_keys {
            a.zeroize();
            b.zeroize();
        }
    }
}

/// The keys that name entries and seal listing cursors: the tag term's, kept apart from
/// the terms so that they outlive the tag term's retirement.
struct NameKeys {
    tag: Key32,
    /// `tag`, set up for HMAC once (a GET computes several tags).
    tag_mac: MacKey,
    /// Set once the tag term is retired: cursor keys derive from it instead of the tag
    /// term's own key.
    cursor_root: Option<Key32>,
}

impl NameKeys {
    fn of_term(t: &Term) -> Self {
        Self {
            tag: Key32::from_bytes(*t.tag.as_bytes()),
            tag_mac: MacKey::new(&t.tag),
            cursor_root: None,
        }
    }

    fn stored(tag: &[u8; 32], cursor_root: &[u8; 32]) -> Self {
        let tag = Key32::from_bytes(*tag);
        Self {
            tag_mac: MacKey::new(&tag),
            tag,
            cursor_root: Some(Key32::from_bytes(*cursor_root)),
        }
    }
}

/// The unwrapped keyring of one filesystem.
pub struct Keyring {
    current: u32,
    tag_term: u32,
    terms: BTreeMap<u32, Term>,
    raw: BTreeMap<u32, Key32>,
    names: NameKeys,
    /// Retired terms: number -> when (Unix ms).
    retired: BTreeMap<u32, i64>,
}

impl Keyring {
    /// A new keyring with one random term.
    pub fn generate() -> Self {
        let k = Key32::random();
        let t = Term::new(1, &k);
        let names = NameKeys::of_term(&t);
        let mut terms = BTreeMap::new();
        terms.insert(1, t);
        let mut raw = BTreeMap::new();
        raw.insert(1, k);
        Self {
            current: 1,
            tag_term: 1,
            terms,
            raw,
            names,
            retired: BTreeMap::new(),
        }
    }

    /// Adds a term and makes it current; returns its number: one above every number ever
    /// used, retired ones included (a number names one key for good).
    pub fn add_term(&mut self) -> u32 {
        let highest = [
            self.terms.keys().next_back(),
            self.retired.keys().next_back(),
        ]
        .into_iter()
        .flatten()
        .max()
        .copied()
        .expect("a keyring has at least one term");
        let n = highest + 1;
        let k = Key32::random();
        self.terms.insert(n, Term::new(n, &k));
        self.raw.insert(n, k);
        self.current = n;
        n
    }

    /// The term new writes use.
    pub fn current(&self) -> &Term {
        self.terms
            .get(&self.current)
            .expect("current term is always present: set together")
    }

    /// The current term's number.
    pub fn current_number(&self) -> u32 {
        self.current
    }

    /// The numbers of every term, in order.
    pub fn term_numbers(&self) -> Vec<u32> {
        self.terms.keys().copied().collect()
    }

    /// A term by number.
    pub fn term(&self, n: u32) -> Result<&Term> {
        self.terms.get(&n).ok_or_else(|| self.missing(n))
    }

    /// The error for a term this keyring does not hold: retired (named, with its time), or
    /// unknown.
    fn missing(&self, n: u32) -> CoreError {
        match self.retired.get(&n) {
            Some(&retired_ms) => CoreError::RetiredTerm {
                term: n,
                retired_ms,
            },
            None => CoreError::Corrupt("unknown key term"),
        }
    }

    /// The retired terms, in order, each with when it was retired (Unix ms).
    pub fn retired(&self) -> Vec<(u32, i64)> {
        self.retired.iter().map(|(n, t)| (*n, *t)).collect()
    }

    /// The term whose name-tag key names the entries (fixed at creation; possibly retired).
    pub fn tag_term_number(&self) -> u32 {
        self.tag_term
    }

    /// Removes every term but the current one, recorded as retired at `now_ms`; returns
    /// their numbers. The tag term's name-tag key and list-cursor root stay (names and
    /// listings go on), its own key does not. Nothing is stored here: the caller seals the
    /// keyring and replaces the stored one.
    pub fn retire_older(&mut self, now_ms: i64) -> Vec<u32> {
        let old: Vec<u32> = self
            .terms
            .keys()
            .copied()
            .filter(|n| *n != self.current)
            .collect();
        if old.contains(&self.tag_term) && self.names.cursor_root.is_none() {
            let root = self
                .raw
                .get(&self.tag_term)
                .expect("a term held has its key")
                .derive(b"", labels::TERM_LIST_CURSOR_ROOT);
            self.names.cursor_root = Some(root);
        }
        for n in &old {
            self.terms.remove(n);
            self.raw.remove(n);
            self.retired.insert(*n, now_ms);
        }
        old
    }

    /// Which of terms `numbers` (held here) `other` holds too, compared by key: a
    /// filesystem restored into a new name from this one's backup starts with its terms, so
    /// retiring them here leaves them there.
    pub(crate) fn terms_held_by(&self, numbers: &[u32], other: &Keyring) -> Vec<u32> {
        numbers
            .iter()
            .copied()
            .filter(|n| {
                use subtle::ConstantTimeEq;
                self.raw.get(n).is_some_and(|k| {
                    other
                        .raw
                        .values()
                        .any(|o| bool::from(o.as_bytes().ct_eq(k.as_bytes())))
                })
            })
            .collect()
    }

    /// The key of the name tags.
    pub fn tag_key(&self) -> &Key32 {
        &self.names.tag
    }

    /// The key of the name tags, set up for HMAC.
    pub fn tag_mac(&self) -> &MacKey {
        &self.names.tag_mac
    }

    /// The key that authenticates the manifest of a backup taken while term `n` was
    /// current: HKDF-SHA256(term `n`'s key, empty salt, [`labels::TERM_BACKUP_MANIFEST`]),
    /// set up for HMAC-SHA256. Derived on demand: backups are rare.
    pub(crate) fn backup_manifest_mac(&self, n: u32) -> Result<MacKey> {
        Ok(MacKey::new(
            &self.raw_term(n)?.derive(b"", labels::TERM_BACKUP_MANIFEST),
        ))
    }

    /// The key that seals the summary of a backup taken while term `n` was current:
    /// HKDF-SHA256(term `n`'s key, empty salt, [`labels::TERM_BACKUP_SUMMARY`]).
    pub(crate) fn backup_summary_key(&self, n: u32) -> Result<Key32> {
        Ok(self.raw_term(n)?.derive(b"", labels::TERM_BACKUP_SUMMARY))
    }

    /// The key that seals one listing cursor: HKDF-SHA256(the tag term's key, `salt` (16
    /// random bytes of that cursor), [`labels::TERM_LIST_CURSOR`]). A key per cursor: anyone
    /// who may list can have cursors made at will, and no count of them is kept, so no key
    /// seals more than one under a random nonce. The tag term never changes: a cursor
    /// outlives a key rotation. Once the tag term is retired, its list-cursor root
    /// ([`labels::TERM_LIST_CURSOR_ROOT`]) takes the place of its key: cursors made before
    /// the retirement are refused (the client lists from the start again).
    pub(crate) fn list_cursor_key(&self, salt: &[u8]) -> Key32 {
        match &self.names.cursor_root {
            Some(root) => root.derive(salt, labels::TERM_LIST_CURSOR),
            None => self
                .raw
                .get(&self.tag_term)
                .expect("the tag term's key is held until its cursor root is set")
                .derive(salt, labels::TERM_LIST_CURSOR),
        }
    }

    fn raw_term(&self, n: u32) -> Result<&Key32> {
        self.raw.get(&n).ok_or_else(|| self.missing(n))
    }

    /// Wraps the keyring under the starter key for filesystem `fs_id`.
    pub fn seal(&self, starter: &StarterKey, fs_id: &[u8; 16]) -> Vec<u8> {
        let stored = StoredKeyring {
            current: self.current,
            tag_term: self.tag_term,
            terms: self.raw.iter().map(|(n, k)| (*n, *k.as_bytes())).collect(),
        };
        // Only a keyring that retired terms has the extension: the others keep the exact
        // encoding every earlier version wrote.
        let retirement = (!self.retired.is_empty()).then(|| StoredRetirement {
            retired: self.retired(),
            tag_keys: (!self.terms.contains_key(&self.tag_term)).then(|| {
                let root = self
                    .names
                    .cursor_root
                    .as_ref()
                    .expect("set when the tag term was retired");
                (*self.names.tag.as_bytes(), *root.as_bytes())
            }),
        });
        // Into a buffer of its final size: a growing Vec would leave copies of the terms in
        // the memory it gives back.
        let mut plain = Zeroizing::new(vec![
            0u8;
            stored_size(stored.terms.len())
                + retirement_size(self.retired.len())
        ]);
        let mut used = postcard::to_slice(&stored, &mut plain)
            .expect("the buffer holds the largest encoding")
            .len();
        if let Some(r) = &retirement {
            used += postcard::to_slice(r, &mut plain[used..])
                .expect("the buffer holds the largest encoding")
                .len();
        }
        plain.truncate(used);
        wrap::seal(&starter.derive(labels::KEYRING_WRAP), &aad(fs_id), &plain)
    }

    /// Unwraps a keyring sealed by [`Keyring::seal`].
    pub fn open(starter: &StarterKey, fs_id: &[u8; 16], sealed: &[u8]) -> Result<Self> {
        let plain = wrap::open(&starter.derive(labels::KEYRING_WRAP), &aad(fs_id), sealed)
            .map_err(|_| CoreError::Decrypt)?;
        let (stored, rest): (StoredKeyring, &[u8]) =
            postcard::take_from_bytes(&plain).map_err(|_| CoreError::Corrupt("keyring"))?;
        let retirement = if rest.is_empty() {
            None
        } else {
            let (r, rest): (StoredRetirement, &[u8]) = postcard::take_from_bytes(rest)
                .map_err(|_| CoreError::Corrupt("keyring retirement"))?;
            if !rest.is_empty() {
                return Err(CoreError::Corrupt("keyring"));
            }
            Some(r)
        };
        let mut terms = BTreeMap::new();
        let mut raw = BTreeMap::new();
        for (n, k) in &stored.terms {
            let k = Key32::from_bytes(*k);
            terms.insert(*n, Term::new(*n, &k));
            raw.insert(*n, k);
        }
        let retired: BTreeMap<u32, i64> = retirement
            .as_ref()
            .map(|r| r.retired.iter().copied().collect())
            .unwrap_or_default();
        let tag_keys = retirement.as_ref().and_then(|r| r.tag_keys.as_ref());
        let names = match (terms.get(&stored.tag_term), tag_keys) {
            (Some(t), None) => NameKeys::of_term(t),
            (None, Some((tag, root))) if retired.contains_key(&stored.tag_term) => {
                NameKeys::stored(tag, root)
            }
            _ => return Err(CoreError::Corrupt("keyring terms")),
        };
        if !terms.contains_key(&stored.current) || terms.keys().any(|n| retired.contains_key(n)) {
            return Err(CoreError::Corrupt("keyring terms"));
        }
        Ok(Self {
            current: stored.current,
            tag_term: stored.tag_term,
            terms,
            raw,
            names,
            retired,
        })
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Keyring(current term {}, {} terms)",
            self.current,
            self.terms.len()
        )
    }
}

/// The largest postcard encoding of a [`StoredKeyring`] of `terms` terms: two u32 varints (5
/// bytes each), the length varint, and per term a u32 varint and 32 key bytes.
fn stored_size(terms: usize) -> usize {
    5 + 5 + 10 + terms * (5 + 32)
}

/// The largest postcard encoding of a [`StoredRetirement`] of `retired` terms: the length
/// varint, per term a u32 varint and an i64 zigzag varint (10 bytes), the option's tag and
/// two keys.
fn retirement_size(retired: usize) -> usize {
    if retired == 0 {
        return 0;
    }
    10 + retired * (5 + 10) + 1 + 64
}

fn aad(fs_id: &[u8; 16]) -> Vec<u8> {
    [labels::AAD_KEYRING, fs_id.as_slice()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let starter = StarterKey::for_tests(Key32::random());
        let mut kr = Keyring::generate();
        kr.add_term();
        let id = [7u8; 16];
        let sealed = kr.seal(&starter, &id);
        let back = Keyring::open(&starter, &id, &sealed).unwrap();
        assert_eq!(back.current().number, 2);
        assert_eq!(back.tag_key().as_bytes(), kr.tag_key().as_bytes());
        assert_eq!(
            back.term(1).unwrap().data_key_wrap().as_bytes(),
            kr.term(1).unwrap().data_key_wrap().as_bytes()
        );
        // Another filesystem's id, another starter key, a flipped byte: all refused.
        assert!(Keyring::open(&starter, &[8u8; 16], &sealed).is_err());
        assert!(Keyring::open(&StarterKey::for_tests(Key32::random()), &id, &sealed).is_err());
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(Keyring::open(&starter, &id, &bad).is_err());
    }

    /// The keyring is encoded into a buffer of its largest size, which must hold any
    /// keyring: term numbers of every varint length, hundreds of terms.
    #[test]
    fn large_keyrings_seal_into_their_bound() {
        let starter = StarterKey::for_tests(Key32::random());
        let mut kr = Keyring::generate();
        for _ in 0..300 {
            kr.add_term();
        }
        let big = u32::MAX;
        kr.raw.insert(big, Key32::random());
        kr.terms
            .insert(big, Term::new(big, kr.raw.get(&big).unwrap()));
        kr.current = big;
        let id = [3u8; 16];
        let back = Keyring::open(&starter, &id, &kr.seal(&starter, &id)).unwrap();
        assert_eq!(back.term_numbers(), kr.term_numbers());
        assert_eq!(back.current_number(), big);
        // And once all but the last are retired, at the latest time there is.
        kr.retire_older(i64::MIN);
        let back = Keyring::open(&starter, &id, &kr.seal(&starter, &id)).unwrap();
        assert_eq!(back.term_numbers(), [big]);
        assert_eq!(back.retired().len(), 301);
    }

    /// Retiring keeps the current term, the names' keys and the numbers; the retired keys
    /// are gone from what is sealed; a new term never reuses a retired number; what names a
    /// retired term gets an error that says so.
    #[test]
    fn retired_terms_are_gone_but_named_and_names_still_work() {
        let starter = StarterKey::for_tests(Key32::random());
        let id = [9u8; 16];
        let mut kr = Keyring::generate();
        kr.add_term();
        kr.add_term();
        let tag = *kr.tag_key().as_bytes();
        let raw1 = *kr.raw_term(1).unwrap().as_bytes();
        let wrap1 = *kr.term(1).unwrap().data_key_wrap().as_bytes();
        let salt = [4u8; 16];
        let cursor_before = *kr.list_cursor_key(&salt).as_bytes();
        assert_eq!(kr.retire_older(1_000), [1, 2]);
        let sealed = kr.seal(&starter, &id);
        let back = Keyring::open(&starter, &id, &sealed).unwrap();
        assert_eq!(back.term_numbers(), [3]);
        assert_eq!(back.retired(), [(1, 1_000), (2, 1_000)]);
        assert_eq!(back.tag_key().as_bytes(), &tag, "entry keys do not change");
        let cursor_after = *back.list_cursor_key(&salt).as_bytes();
        assert_eq!(cursor_after, *kr.list_cursor_key(&salt).as_bytes());
        assert_ne!(
            cursor_after, cursor_before,
            "cursors from before are refused"
        );
        match back.term(1) {
            Err(CoreError::RetiredTerm {
                term: 1,
                retired_ms: 1_000,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            back.backup_manifest_mac(2),
            Err(CoreError::RetiredTerm { term: 2, .. })
        ));
        assert!(matches!(back.term(7), Err(CoreError::Corrupt(_))));
        // Neither the retired key nor its wrap key is in what is stored.
        let plain = wrap::open(&starter.derive(labels::KEYRING_WRAP), &aad(&id), &sealed).unwrap();
        for secret in [raw1, wrap1] {
            assert!(!plain.windows(32).any(|w| w == secret));
        }
        let mut again = back;
        assert_eq!(again.add_term(), 4);
        let back = Keyring::open(&starter, &id, &again.seal(&starter, &id)).unwrap();
        assert_eq!(back.term_numbers(), [3, 4]);
        assert_eq!(
            back.retired().iter().map(|r| r.0).collect::<Vec<_>>(),
            [1, 2]
        );
    }

    /// A keyring stored before retirement existed (the three fields, nothing after) opens
    /// as it always did, and one that never retired a term is stored the same way.
    #[test]
    fn a_keyring_without_retirement_keeps_its_encoding() {
        let starter = StarterKey::for_tests(Key32::random());
        let id = [1u8; 16];
        let old = StoredKeyring {
            current: 2,
            tag_term: 1,
            terms: vec![(1, [1u8; 32]), (2, [2u8; 32])],
        };
        let plain = postcard::to_allocvec(&old).unwrap();
        let sealed = wrap::seal(&starter.derive(labels::KEYRING_WRAP), &aad(&id), &plain);
        let kr = Keyring::open(&starter, &id, &sealed).unwrap();
        assert_eq!(kr.term_numbers(), [1, 2]);
        assert!(kr.retired().is_empty());
        let resealed = kr.seal(&starter, &id);
        let plain2 =
            wrap::open(&starter.derive(labels::KEYRING_WRAP), &aad(&id), &resealed).unwrap();
        assert_eq!(plain2.as_slice(), plain.as_slice());
    }

    #[test]
    fn subkeys_differ() {
        let kr = Keyring::generate();
        let t = kr.current();
        assert_ne!(t.data_key_wrap().as_bytes(), t.record_key().as_bytes());
        assert_ne!(t.tag_key().as_bytes(), t.record_key().as_bytes());
    }
}
