//! Index records: what an entry is, sealed under the current term's record key.
//!
//! Value layout (DO NOT CHANGE; docs/design.md): `0x01` (record layout version) ||
//! term number (u32 big-endian) || `wrap::seal(record key, AAD, postcard(Record) || zeros)`,
//! with AAD = `"efs-record-v1" || fs id || entry key`, so a record moved to another entry or
//! another filesystem does not open. The zeros pad the plaintext to a multiple of
//! [`RECORD_PAD`] bytes (none in records sealed before 2026-12-06).

use efs_format::Key32;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::index::{ContentId, EntryKey};
use crate::keyring::Keyring;
use crate::labels;

/// Kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A file.
    File,
    /// A directory.
    Dir,
}

/// Where a file version's content lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Storage {
    /// In the index's inline table (small files: one transaction, no extra fsync).
    Inline,
    /// In the blob store.
    Blob,
    /// Directories have none.
    None,
}

/// The decrypted record of an entry.
#[derive(Clone, Serialize, Deserialize)]
pub struct Record {
    /// The entry's name (one segment).
    pub name: String,
    /// File or directory.
    pub kind: Kind,
    /// Directory id, or the file version's content id.
    pub id: [u8; 16],
    /// Plaintext size.
    pub size: u64,
    /// Creation time, Unix milliseconds.
    pub created_ms: i64,
    /// Modification time, Unix milliseconds.
    pub modified_ms: i64,
    /// Stored Content-Type.
    pub content_type: Option<String>,
    /// Where the content is.
    pub storage: Storage,
    /// The term that wrapped the data key.
    pub key_term: u32,
    /// The wrapped data key (empty for directories).
    pub wrapped_key: Vec<u8>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Record({:?}, {} bytes)", self.kind, self.size)
    }
}

const LAYOUT: u8 = 1;

/// A record's plaintext is padded with zeros to a multiple of this many bytes before it is
/// sealed, so that its stored size tells the lengths of the entry's name and content type only
/// to within this much (most names fall in one or two sizes) instead of to the byte.
pub const RECORD_PAD: usize = 64;

fn record_aad(fs_id: &[u8; 16], key: &EntryKey) -> Vec<u8> {
    [labels::AAD_RECORD, fs_id.as_slice(), key.as_slice()].concat()
}

/// AAD of a data key wrap: binds it to one filesystem and one content id.
pub fn data_key_aad(fs_id: &[u8; 16], content: &ContentId) -> Vec<u8> {
    [labels::AAD_DATA_KEY, fs_id.as_slice(), content.as_slice()].concat()
}

impl Record {
    /// Seals the record for entry `key` under the keyring's current term.
    pub fn seal(&self, keyring: &Keyring, fs_id: &[u8; 16], key: &EntryKey) -> Vec<u8> {
        let term = keyring.current();
        let plain = self.encode();
        let sealed = term.record_sealer().seal(&record_aad(fs_id, key), &plain);
        let mut out = Vec::with_capacity(5 + sealed.len());
        out.push(LAYOUT);
        out.extend_from_slice(&term.number.to_be_bytes());
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a sealed record of entry `key`.
    pub fn open(keyring: &Keyring, fs_id: &[u8; 16], key: &EntryKey, value: &[u8]) -> Result<Self> {
        if value.len() < 5 || value[0] != LAYOUT {
            return Err(CoreError::Corrupt("record layout"));
        }
        let term = u32::from_be_bytes(value[1..5].try_into().expect("4 bytes checked above"));
        let term = keyring.term(term)?;
        let plain = term
            .record_sealer()
            .open(&record_aad(fs_id, key), &value[5..])?;
        Self::decode(&plain)
    }

    /// The record's plaintext encoding (postcard, then zeros up to a multiple of
    /// [`RECORD_PAD`] bytes), before sealing. Public for the fuzz targets only.
    #[doc(hidden)]
    pub fn encode(&self) -> Vec<u8> {
        let mut plain = postcard::to_allocvec(self).expect("serialising to a Vec cannot fail");
        plain.resize(plain.len().div_ceil(RECORD_PAD) * RECORD_PAD, 0);
        plain
    }

    /// Decodes a record's plaintext, as [`Record::open`] does after authenticating it: the
    /// encoding, then nothing but zeros (the padding; none in older records). Public for the
    /// fuzz targets only: the plaintext is authenticated, but its decoder is the part with
    /// structure.
    #[doc(hidden)]
    pub fn decode(plain: &[u8]) -> Result<Self> {
        let (record, padding) = postcard::take_from_bytes::<Self>(plain)
            .map_err(|_| CoreError::Corrupt("record encoding"))?;
        if padding.iter().any(|&b| b != 0) {
            return Err(CoreError::Corrupt("record encoding"));
        }
        Ok(record)
    }

    /// Unwraps the file's data key.
    pub fn data_key(&self, keyring: &Keyring, fs_id: &[u8; 16]) -> Result<Key32> {
        let term = keyring.term(self.key_term)?;
        let k = term
            .data_key_sealer()
            .open(&data_key_aad(fs_id, &self.id), &self.wrapped_key)?;
        Key32::from_slice(&k).ok_or(CoreError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> Record {
        Record {
            name: name.into(),
            kind: Kind::File,
            id: [7; 16],
            size: 4096,
            created_ms: 1_765_000_000_000,
            modified_ms: 1_765_000_000_000,
            content_type: Some("application/pdf".into()),
            storage: Storage::Inline,
            key_term: 1,
            wrapped_key: vec![9; 60],
        }
    }

    /// A record's stored size followed its name's length to the byte (a name like
    /// "hiv-test.pdf" told from "x.pdf" by the index alone); padded, the 255 name lengths
    /// seal to at most five sizes, each the padding's multiple plus the layout.
    #[test]
    fn record_sizes_tell_name_lengths_only_to_the_padding() {
        let kr = Keyring::generate();
        let (fs_id, key) = ([1; 16], [2; 32]);
        let len = |name: &str| file(name).seal(&kr, &fs_id, &key).len();
        let overhead = 5 + efs_format::WRAP_OVERHEAD;
        let sizes: std::collections::BTreeSet<usize> =
            (1..=255).map(|n| len(&"a".repeat(n))).collect();
        assert!(
            sizes
                .iter()
                .all(|s| (s - overhead).is_multiple_of(RECORD_PAD)),
            "{sizes:?}"
        );
        assert!(sizes.len() <= 255 / RECORD_PAD + 2, "{sizes:?}");
        // And every one opens to what was sealed.
        let rec = file("hiv-test-result-2026.pdf");
        let opened = Record::open(&kr, &fs_id, &key, &rec.seal(&kr, &fs_id, &key)).unwrap();
        assert_eq!(opened.name, rec.name);
        assert_eq!(opened.encode(), rec.encode());
    }

    /// Records sealed before the padding (2026-12-06) have none and still open; bytes other
    /// than zeros after the encoding are refused.
    #[test]
    fn unpadded_records_open_and_padding_must_be_zeros() {
        let kr = Keyring::generate();
        let (fs_id, key) = ([1; 16], [2; 32]);
        let rec = file("old.txt");
        let seal_plain = |plain: &[u8]| {
            let term = kr.current();
            let mut out = vec![LAYOUT];
            out.extend_from_slice(&term.number.to_be_bytes());
            out.extend_from_slice(&term.record_sealer().seal(&record_aad(&fs_id, &key), plain));
            out
        };
        let unpadded = postcard::to_allocvec(&rec).unwrap();
        assert_ne!(
            unpadded.len() % RECORD_PAD,
            0,
            "the test needs an unpadded length"
        );
        let opened = Record::open(&kr, &fs_id, &key, &seal_plain(&unpadded)).unwrap();
        assert_eq!(opened.name, "old.txt");
        let mut bad = rec.encode();
        *bad.last_mut().unwrap() = 1;
        assert!(matches!(
            Record::open(&kr, &fs_id, &key, &seal_plain(&bad)),
            Err(CoreError::Corrupt(_))
        ));
        assert!(Record::decode(&bad).is_err());
    }
}
