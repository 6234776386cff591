//! Index records: what an entry is, sealed under the current term's record key.
//!
//! Value layout (DO NOT CHANGE; docs/design.md): `0x01` (record layout version) ||
//! term number (u32 big-endian) || `wrap::seal(record key, AAD, postcard(Record))`, with
//! AAD = `"efs-record-v1" || fs id || entry key`, so a record moved to another entry or
//! another filesystem does not open.

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

    /// The record's plaintext encoding (postcard), before sealing. Public for the fuzz
    /// targets only.
    #[doc(hidden)]
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serialising to a Vec cannot fail")
    }

    /// Decodes a record's plaintext, as [`Record::open`] does after authenticating it. Public
    /// for the fuzz targets only: the plaintext is authenticated, but its decoder is the part
    /// with structure.
    #[doc(hidden)]
    pub fn decode(plain: &[u8]) -> Result<Self> {
        postcard::from_bytes(plain).map_err(|_| CoreError::Corrupt("record encoding"))
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
