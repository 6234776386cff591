//! The index digest: a keyed hash of the whole set of an index's entries and metadata rows,
//! kept up to date in the same transaction as every batch, so that `fsck` (and every start
//! of the server) can tell whether any row was changed, removed, added or put back to an
//! older value outside EFS.
//!
//! A sealed record cannot be moved to another entry (its AAD names the entry), but an
//! older value of the *same* entry opens fine: putting back an old record (and its old
//! content) is a rollback that no per-record check can see. The same holds for the sealed
//! keyring (metadata row `keyring`): it opens under the starter key whatever its age, so
//! an older one put back after `rotate-key` added a term opens too. The digest is the
//! MSet-XOR-Hash of Clarke, Devadas, van Dijk, Gassend and Suh ("Incremental Multiset
//! Hash Functions and Their Application to Memory Integrity Checking", ASIACRYPT 2003),
//! instantiated with HMAC-SHA256 under a key of its own ([`DigestKey`]). Layout 2, every
//! index digest written now:
//!
//! ```text
//! X(S)   = XOR over every entry (k, v) of HMAC(key, 0x01 || k || v)
//!          XOR over every meta row (n, v) but the digest's own
//!              of HMAC(key, 0x04 || len(n) (u32 BE) || n || v)
//! stored = 0x02 || r (16, random, fresh at every update) || generation (u64 BE)
//!          || count (u64 BE: entries) || HMAC(key, 0x03 || r || generation || count) XOR X(S)
//! ```
//!
//! Layout 1 (first byte `0x01`, mask `HMAC(key, 0x00 || ...)`) is the same without the
//! metadata rows: the system database's digest (whose elements are its own), and an index
//! digest written before layout 2, which the index upgrades once, at its open
//! ([`Accumulator::upgrade`]). The masks' domains differ, so a layout-2 digest relabelled
//! layout 1 unmasks to noise.
//!
//! XOR makes an update cost one HMAC per row written or removed (the old value comes
//! for free: the write replaces it), whatever the size of the index. The random mask
//! `r` makes digests of different states unrelated, so that whoever sees many of them
//! cannot combine them into the digest of a state that never existed; without the key no
//! one can compute an element. Checking needs every entry (a full scan: `fsck`).
//!
//! What it cannot do: the whole index put back to an earlier state, digest included, is
//! consistent again. The generation (a counter of the batches that changed what the digest
//! covers) never goes backwards, so the data dir keeps a high-water mark of it in the system
//! database (`DataDir::record_index_generations`) and holds an index found below it; that
//! does not see the system database put back with the index, nor a copy younger than the
//! last record. The generation and the anchor that `efsctl fsck` prints, noted by the
//! operator outside the data dir, see those too.

use efs_format::{Key32, MacKey};
use subtle::ConstantTimeEq;

use crate::labels;

/// Index metadata name of the stored digest; reserved (a batch may not write it).
pub const META_DIGEST: &str = "digest";

const STORED_LEN: usize = 1 + 16 + 8 + 8 + 32;
const DOMAIN_MASK: u8 = 0;
const DOMAIN_ENTRY: u8 = 1;
const DOMAIN_ANCHOR: u8 = 2;
const DOMAIN_MASK_V2: u8 = 3;
const DOMAIN_META: u8 = 4;

/// What a stored digest is (its first byte): how its mask is made, and so which rows its
/// owner hashes into it. DO NOT CHANGE the values: they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `0x01`: mask `HMAC(key, 0x00 || r || generation || count)`. The system database (all
    /// its rows); an index written before layout 2 (its entries only), upgraded at its open.
    V1,
    /// `0x02`: mask `HMAC(key, 0x03 || r || generation || count)`. An index: its entries and
    /// its metadata rows ([`Accumulator::insert_meta`]).
    V2,
}

impl Layout {
    /// The layout of every index digest written now.
    pub const INDEX: Layout = Layout::V2;

    fn byte(self) -> u8 {
        match self {
            Layout::V1 => 1,
            Layout::V2 => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Layout::V1),
            2 => Some(Layout::V2),
            _ => None,
        }
    }

    fn mask_domain(self) -> u8 {
        match self {
            Layout::V1 => DOMAIN_MASK,
            Layout::V2 => DOMAIN_MASK_V2,
        }
    }
}

/// The secret key of one filesystem's index digest, set up for HMAC (cleansed on drop, no
/// `Debug` of it).
pub struct DigestKey(MacKey);

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(<redacted>)")
    }
}

impl DigestKey {
    /// The key of filesystem `fs_id`'s index under `root`: `HKDF(root, salt = fs id,
    /// "efs/index-digest/v1")`. The data dir keeps `root` as a random sealed system secret
    /// (not derived from the starter key, so re-keying the starter carries it over; not
    /// from the keyring, so rotation leaves the digest alone).
    pub fn from_root(root: &Key32, fs_id: &[u8; 16]) -> Self {
        DigestKey(MacKey::new(&root.derive(fs_id, labels::INDEX_DIGEST)))
    }

    /// The key of the system database's digest: a starter subkey
    /// ([`labels::SYSTEM_DIGEST`]), so re-keying the starter recomputes it with the rest.
    pub(crate) fn for_system(subkey: &Key32) -> Self {
        DigestKey(MacKey::new(subkey))
    }

    fn mac(&self, domain: u8, parts: &[&[u8]]) -> [u8; 32] {
        self.0.mac_prefixed(&[domain], parts)
    }

    /// The set element of one entry.
    fn element(&self, key: &[u8], value: &[u8]) -> [u8; 32] {
        self.mac(DOMAIN_ENTRY, &[key, value])
    }

    /// The set element of one metadata row. The name's length keeps bytes from moving
    /// between the name and the value unseen.
    fn meta_element(&self, name: &str, value: &[u8]) -> [u8; 32] {
        let len = u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes();
        self.mac(DOMAIN_META, &[&len, name.as_bytes(), value])
    }

    fn mask(&self, layout: Layout, r: &[u8; 16], generation: u64, count: u64) -> [u8; 32] {
        self.mac(
            layout.mask_domain(),
            &[r, &generation.to_be_bytes(), &count.to_be_bytes()],
        )
    }
}

fn xor_into(acc: &mut [u8; 32], x: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a ^= b;
    }
}

/// The digest of a set while it is being updated or recomputed: the XOR of its elements,
/// its size and the generation. Never stored as is (see [`Accumulator::seal`]).
pub struct Accumulator {
    xor: [u8; 32],
    count: u64,
    generation: u64,
    layout: Layout,
}

impl Accumulator {
    /// The empty set at generation 0, layout 1 (the system database's digest).
    pub fn empty() -> Self {
        Self::empty_with(Layout::V1)
    }

    /// The empty set at generation 0, sealed as `layout` (an index: [`Layout::INDEX`]).
    pub fn empty_with(layout: Layout) -> Self {
        Accumulator {
            xor: [0u8; 32],
            count: 0,
            generation: 0,
            layout,
        }
    }

    /// Unmasks a stored digest. `None` if it is not one (wrong length or layout): it can
    /// then only be reported, not updated.
    pub fn open(key: &DigestKey, stored: &[u8]) -> Option<Self> {
        let f = Fields::parse(stored)?;
        let mut xor = f.masked;
        xor_into(&mut xor, &key.mask(f.layout, &f.r, f.generation, f.count));
        Some(Accumulator {
            xor,
            count: f.count,
            generation: f.generation,
            layout: f.layout,
        })
    }

    /// The layout it is sealed as.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// An index's layout-1 digest (its entries only), read at its open, made layout 2: the
    /// metadata rows found now (`meta`, the digest's own row left out) are added, and the
    /// upgrade counts as a batch. Incremental: the entries are not read, so an entry changed
    /// before still differs. The metadata as it is at the upgrade is trusted (layout 1 never
    /// described it). Nothing happens to a digest of layout 2.
    pub fn upgrade<'a>(
        &mut self,
        key: &DigestKey,
        meta: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) {
        if self.layout != Layout::V1 {
            return;
        }
        self.layout = Layout::V2;
        for (name, value) in meta {
            self.insert_meta(key, name, value);
        }
        self.bump();
    }

    /// Sets the layout to seal as, for a set being recomputed (the element XOR and the size
    /// do not depend on it).
    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
    }

    /// Adds entry `(k, v)` to the set.
    pub fn insert(&mut self, key: &DigestKey, k: &[u8], v: &[u8]) {
        xor_into(&mut self.xor, &key.element(k, v));
        self.count = self.count.wrapping_add(1);
    }

    /// Removes entry `(k, v)` from the set.
    pub fn remove(&mut self, key: &DigestKey, k: &[u8], v: &[u8]) {
        xor_into(&mut self.xor, &key.element(k, v));
        self.count = self.count.wrapping_sub(1);
    }

    /// Adds metadata row `(name, v)` to the set (layout 2; not counted: the count stays the
    /// number of entries, which `fsck` reports).
    pub fn insert_meta(&mut self, key: &DigestKey, name: &str, v: &[u8]) {
        debug_assert_eq!(self.layout, Layout::V2, "layout 1 covers no metadata");
        xor_into(&mut self.xor, &key.meta_element(name, v));
    }

    /// Removes metadata row `(name, v)` from the set.
    pub fn remove_meta(&mut self, key: &DigestKey, name: &str, v: &[u8]) {
        // XOR: removing is adding again.
        self.insert_meta(key, name, v);
    }

    /// Adds every element of `other` (the union of two disjoint sets: the XOR of their
    /// elements, the sum of their sizes), so that parts of a set can be hashed apart, in
    /// any order, and combined. The generation stays this one's.
    pub fn merge(&mut self, other: &Accumulator) {
        xor_into(&mut self.xor, &other.xor);
        self.count = self.count.wrapping_add(other.count);
    }

    /// The set's XOR and size, for tests that compare two accumulators.
    #[cfg(test)]
    pub(crate) fn state(&self) -> ([u8; 32], u64) {
        (self.xor, self.count)
    }

    /// Batches that changed what the digest covers since it was created.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Carries a generation over (a digest recomputed by `accept_digest` continues the
    /// count of the one it replaces, so an operator's anchor never sees it go back).
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Counts one more batch that changed what the digest covers.
    pub fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// The value to store, masked under a fresh random `r`.
    pub fn seal(&self, key: &DigestKey) -> Vec<u8> {
        let mut r = [0u8; 16];
        aws_lc_rs::rand::fill(&mut r).expect("the system RNG does not fail on Linux");
        let mut masked = self.xor;
        xor_into(
            &mut masked,
            &key.mask(self.layout, &r, self.generation, self.count),
        );
        let mut out = Vec::with_capacity(STORED_LEN);
        out.push(self.layout.byte());
        out.extend_from_slice(&r);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&masked);
        out
    }
}

/// The generation a stored digest claims (the batches that changed its index), without the
/// key: what the data dir records as the index's high-water mark once the index has
/// committed it. Taken on its word, as the digest's own check vouches for it. `None` if it
/// is not a digest (wrong length or layout).
pub fn stored_generation(stored: &[u8]) -> Option<u64> {
    Fields::parse(stored).map(|f| f.generation)
}

struct Fields {
    layout: Layout,
    r: [u8; 16],
    generation: u64,
    count: u64,
    masked: [u8; 32],
}

impl Fields {
    fn parse(stored: &[u8]) -> Option<Self> {
        if stored.len() != STORED_LEN {
            return None;
        }
        Some(Fields {
            layout: Layout::from_byte(stored[0])?,
            r: stored[1..17].try_into().ok()?,
            generation: u64::from_be_bytes(stored[17..25].try_into().ok()?),
            count: u64::from_be_bytes(stored[25..33].try_into().ok()?),
            masked: stored[33..65].try_into().ok()?,
        })
    }
}

/// The anchor of the stored (sealed) digest `stored`: a short keyed fingerprint of that
/// exact state (hex), what [`DigestCheck::Holds`] reports.
pub(crate) fn anchor(key: &DigestKey, stored: &[u8]) -> String {
    hex::encode(&key.mac(DOMAIN_ANCHOR, &[stored])[..16])
}

/// What a check of the index against its stored digest found (one snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestCheck {
    /// The entries are exactly the set the digest was last updated with.
    Holds {
        /// Batches that changed what the digest covers since it was created.
        generation: u64,
        /// Entries.
        entries: u64,
        /// A short keyed fingerprint of this exact state (hex), for the operator to keep
        /// outside the data dir: a whole index put back to an earlier state shows an
        /// earlier generation, or the same generation with another anchor.
        anchor: String,
    },
    /// The rows differ from the set the digest describes: an entry (or, in an index, a
    /// metadata row) was changed, removed, added or put back outside EFS (or the digest
    /// itself was changed).
    Differs {
        /// The generation the stored digest claims.
        generation: u64,
        /// Entries the stored digest claims.
        claimed_entries: u64,
        /// Entries found.
        entries: u64,
    },
    /// There is no digest, or it is not one (wrong length or layout).
    Unreadable,
}

impl DigestCheck {
    /// True if the index is the set its digest describes.
    pub fn holds(&self) -> bool {
        matches!(self, DigestCheck::Holds { .. })
    }

    /// The same check failed for a reason the digest cannot see (a row that cannot be an
    /// entry): a holding one becomes [`DigestCheck::Differs`].
    pub fn differs(self) -> Self {
        match self {
            DigestCheck::Holds {
                generation,
                entries,
                ..
            } => DigestCheck::Differs {
                generation,
                claimed_entries: entries,
                entries,
            },
            other => other,
        }
    }

    /// Checks `entries` (every entry, from the same snapshot as `stored`) against a
    /// layout-1 digest (the set's elements are all entries: no metadata).
    pub fn run<'a>(
        key: &DigestKey,
        stored: Option<&[u8]>,
        entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Self {
        let mut found = Accumulator::empty();
        for (k, v) in entries {
            found.insert(key, k, v);
        }
        Self::compare(key, stored, &found)
    }

    /// Compares a recomputed accumulator (generation ignored) with the stored digest. A
    /// stored digest of another layout than `found`'s is not one of this set's kind
    /// ([`DigestCheck::Unreadable`]): an index's digest is upgraded to layout 2 at its open,
    /// so a layout-1 digest met later was put there behind its back.
    pub fn compare(key: &DigestKey, stored: Option<&[u8]>, found: &Accumulator) -> Self {
        let Some(stored) = stored else {
            return DigestCheck::Unreadable;
        };
        let (Some(f), Some(claimed)) = (Fields::parse(stored), Accumulator::open(key, stored))
        else {
            return DigestCheck::Unreadable;
        };
        if f.layout != found.layout {
            return DigestCheck::Unreadable;
        }
        let same = claimed.xor.ct_eq(&found.xor).into() && claimed.count == found.count;
        if same {
            DigestCheck::Holds {
                generation: f.generation,
                entries: found.count,
                anchor: anchor(key, stored),
            }
        } else {
            DigestCheck::Differs {
                generation: f.generation,
                claimed_entries: f.count,
                entries: found.count,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DigestKey {
        DigestKey::from_root(&Key32::from_bytes([7; 32]), &[1; 16])
    }

    #[test]
    fn order_does_not_matter_and_removal_undoes_insertion() {
        let k = key();
        let mut a = Accumulator::empty();
        a.insert(&k, b"k1", b"v1");
        a.insert(&k, b"k2", b"v2");
        let mut b = Accumulator::empty();
        b.insert(&k, b"k2", b"v2");
        b.insert(&k, b"k3", b"v3");
        b.insert(&k, b"k1", b"v1");
        b.remove(&k, b"k3", b"v3");
        let sealed = b.seal(&k);
        let check = DigestCheck::run(
            &k,
            Some(&sealed),
            [(&b"k1"[..], &b"v1"[..]), (b"k2", b"v2")],
        );
        assert!(check.holds(), "{check:?}");
        assert_eq!(a.xor, b.xor);
    }

    #[test]
    fn an_old_value_put_back_is_seen() {
        let k = key();
        let mut a = Accumulator::empty();
        a.insert(&k, b"k1", b"old");
        a.remove(&k, b"k1", b"old");
        a.insert(&k, b"k1", b"new");
        let sealed = a.seal(&k);
        let check = DigestCheck::run(&k, Some(&sealed), [(&b"k1"[..], &b"old"[..])]);
        assert_eq!(
            check,
            DigestCheck::Differs {
                generation: 0,
                claimed_entries: 1,
                entries: 1
            }
        );
    }

    #[test]
    fn stored_fields_are_bound_and_each_seal_is_fresh() {
        let k = key();
        let mut a = Accumulator::empty();
        a.insert(&k, b"k1", b"v1");
        a.bump();
        let s1 = a.seal(&k);
        let s2 = a.seal(&k);
        assert_ne!(s1, s2, "a fresh mask every time");
        let entries = [(&b"k1"[..], &b"v1"[..])];
        assert!(DigestCheck::run(&k, Some(&s1), entries).holds());
        for i in 1..STORED_LEN {
            let mut bad = s1.clone();
            bad[i] ^= 0x01;
            assert!(
                !DigestCheck::run(&k, Some(&bad), entries).holds(),
                "byte {i} flipped"
            );
        }
        assert_eq!(
            DigestCheck::run(&k, Some(&s1[..10]), entries),
            DigestCheck::Unreadable
        );
        assert_eq!(DigestCheck::run(&k, None, entries), DigestCheck::Unreadable);
        let other = DigestKey::from_root(&Key32::from_bytes([7; 32]), &[2; 16]);
        assert!(!DigestCheck::run(&other, Some(&s1), entries).holds());
    }
}
