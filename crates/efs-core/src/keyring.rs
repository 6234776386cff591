//! A filesystem's keyring: numbered terms, each a 32-byte key from which HKDF derives the
//! subkeys of one purpose each (data-key wrapping, name tags, index records).
//!
//! The keyring is stored wrapped (AES-256-GCM) under a starter subkey, with the
//! filesystem id as associated data, in the filesystem's index. New writes use the
//! current term; older terms still open what they wrapped.

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

/// The unwrapped keyring of one filesystem.
pub struct Keyring {
    current: u32,
    tag_term: u32,
    terms: BTreeMap<u32, Term>,
    raw: BTreeMap<u32, Key32>,
}

impl Keyring {
    /// A new keyring with one random term.
    pub fn generate() -> Self {
        let k = Key32::random();
        let mut terms = BTreeMap::new();
        terms.insert(1, Term::new(1, &k));
        let mut raw = BTreeMap::new();
        raw.insert(1, k);
        Self {
            current: 1,
            tag_term: 1,
            terms,
            raw,
        }
    }

    /// Adds a term and makes it current; returns its number.
    pub fn add_term(&mut self) -> u32 {
        let n = *self
            .terms
            .keys()
            .next_back()
            .expect("a keyring has at least one term")
            + 1;
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
        self.terms
            .get(&n)
            .ok_or(CoreError::Corrupt("unknown key term"))
    }

    /// The key of the name tags.
    pub fn tag_key(&self) -> &Key32 {
        self.tag_term().tag_key()
    }

    /// The key of the name tags, set up for HMAC.
    pub fn tag_mac(&self) -> &MacKey {
        self.tag_term().tag_mac()
    }

    fn tag_term(&self) -> &Term {
        self.terms
            .get(&self.tag_term)
            .expect("the tag term is never removed")
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
    /// outlives a key rotation.
    pub(crate) fn list_cursor_key(&self, salt: &[u8]) -> Key32 {
        self.raw_term(self.tag_term)
            .expect("the tag term is never removed")
            .derive(salt, labels::TERM_LIST_CURSOR)
    }

    fn raw_term(&self, n: u32) -> Result<&Key32> {
        self.raw
            .get(&n)
            .ok_or(CoreError::Corrupt("unknown key term"))
    }

    /// Wraps the keyring under the starter key for filesystem `fs_id`.
    pub fn seal(&self, starter: &StarterKey, fs_id: &[u8; 16]) -> Vec<u8> {
        let stored = StoredKeyring {
            current: self.current,
            tag_term: self.tag_term,
            terms: self.raw.iter().map(|(n, k)| (*n, *k.as_bytes())).collect(),
        };
        // Into a buffer of its final size: a growing Vec would leave copies of the terms in
        // the memory it gives back.
        let mut plain = Zeroizing::new(vec![0u8; stored_size(stored.terms.len())]);
        let used = postcard::to_slice(&stored, &mut plain)
            .expect("the buffer holds the largest encoding")
            .len();
        plain.truncate(used);
        wrap::seal(&starter.derive(labels::KEYRING_WRAP), &aad(fs_id), &plain)
    }

    /// Unwraps a keyring sealed by [`Keyring::seal`].
    pub fn open(starter: &StarterKey, fs_id: &[u8; 16], sealed: &[u8]) -> Result<Self> {
        let plain = wrap::open(&starter.derive(labels::KEYRING_WRAP), &aad(fs_id), sealed)
            .map_err(|_| CoreError::Decrypt)?;
        let stored: StoredKeyring =
            postcard::from_bytes(&plain).map_err(|_| CoreError::Corrupt("keyring"))?;
        let mut terms = BTreeMap::new();
        let mut raw = BTreeMap::new();
        for (n, k) in &stored.terms {
            let k = Key32::from_bytes(*k);
            terms.insert(*n, Term::new(*n, &k));
            raw.insert(*n, k);
        }
        if !terms.contains_key(&stored.current) || !terms.contains_key(&stored.tag_term) {
            return Err(CoreError::Corrupt("keyring terms"));
        }
        Ok(Self {
            current: stored.current,
            tag_term: stored.tag_term,
            terms,
            raw,
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
    }

    #[test]
    fn subkeys_differ() {
        let kr = Keyring::generate();
        let t = kr.current();
        assert_ne!(t.data_key_wrap().as_bytes(), t.record_key().as_bytes());
        assert_ne!(t.tag_key().as_bytes(), t.record_key().as_bytes());
    }
}
