//! The index: where encrypted entry records and small files' content live.
//!
//! The trait speaks only in opaque bytes (keyed tags and sealed records), so an
//! implementation never sees a name, and swapping redb for PostgreSQL changes nothing in
//! the filesystem logic. Writes are optimistic: a [`Batch`] carries the values its author
//! read, and is applied, atomically and durably, only if they are still current.

use async_trait::async_trait;

use crate::digest::DigestCheck;
use crate::error::Result;

/// Key of an entry: `dir_tag (16) || name_tag (16)`, both keyed hashes.
pub type EntryKey = [u8; 32];
/// Random id of a file version's content (inline or blob).
pub type ContentId = [u8; 16];
/// Keyed tag of a directory id: the common prefix of its entries.
pub type DirTag = [u8; 16];

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Insert or replace an entry record.
    PutEntry(EntryKey, Vec<u8>),
    /// Remove an entry record.
    DeleteEntry(EntryKey),
    /// Store a small file's encrypted content.
    PutInline(ContentId, Vec<u8>),
    /// Remove a small file's encrypted content.
    DeleteInline(ContentId),
    /// Insert or replace a metadata value (the wrapped keyring), covered by the digest like
    /// an entry. The name [`crate::digest::META_DIGEST`] is the index's own: a batch that
    /// writes it is refused.
    PutMeta(String, Vec<u8>),
}

/// A condition of a batch: the entry's current value must be exactly `value`
/// (`None`: the entry must not exist).
#[derive(Debug, Clone)]
pub struct Expect {
    /// The entry.
    pub key: EntryKey,
    /// Its value as the batch's author read it.
    pub value: Option<Vec<u8>>,
}

/// An atomic, conditional group of writes.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// All must hold, or nothing is written.
    pub expect: Vec<Expect>,
    /// Directories that must have no entry at all, or nothing is written. Deleting a
    /// directory needs it: a child does not change its parent's record, so expecting the
    /// directory's value alone would let a child committed meanwhile be orphaned.
    pub empty_dirs: Vec<DirTag>,
    /// Applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// Bytes of the keys and values it puts: about what it adds to the index, for a
    /// free-space check before it is committed ([`crate::fs::FsOptions::check_space`]).
    pub(crate) fn bytes_put(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::PutEntry(k, v) => k.len() + v.len(),
                Op::PutInline(k, v) => k.len() + v.len(),
                Op::PutMeta(k, v) => k.len() + v.len(),
                Op::DeleteEntry(_) | Op::DeleteInline(_) => 0,
            } as u64)
            .sum()
    }
}

/// Refuses a batch that would write the index's own digest.
pub(crate) fn check_reserved(batch: &Batch) -> Result<()> {
    let reserved = batch
        .ops
        .iter()
        .any(|op| matches!(op, Op::PutMeta(name, _) if name == crate::digest::META_DIGEST));
    if reserved {
        return Err(crate::error::CoreError::Invalid(
            "the index digest is maintained by the index itself".into(),
        ));
    }
    Ok(())
}

/// One item of [`Index::visit_snapshot`].
#[derive(Debug, Clone, Copy)]
pub enum SnapshotItem<'a> {
    /// An entry record.
    Entry(&'a EntryKey, &'a [u8]),
    /// A small file's encrypted content.
    Inline(&'a ContentId, &'a [u8]),
    /// A metadata value.
    Meta(&'a str, &'a [u8]),
}

/// Storage of the index. Implementations: [`crate::redb_index::RedbIndex`] (embedded default),
/// [`crate::mem_index::MemIndex`] (reference model).
///
/// Every implementation keeps the index digest ([`crate::digest`]) of its entries and its
/// metadata rows up to date in the same transaction as each batch, under the key it was
/// opened with, so that every writer (requests, rotation, gc, restore, a re-keying of the
/// starter) maintains it without knowing it.
#[async_trait]
pub trait Index: Send + Sync {
    /// An entry's sealed record.
    async fn get_entry(&self, key: &EntryKey) -> Result<Option<Vec<u8>>>;
    /// Up to `limit` entries of one directory, in key order, strictly after `after`.
    async fn list_dir(
        &self,
        dir: &DirTag,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, Vec<u8>)>>;
    /// A small file's encrypted content.
    async fn get_inline(&self, id: &ContentId) -> Result<Option<Vec<u8>>>;
    /// A metadata value.
    async fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Applies `batch` atomically and durably if every expectation holds; `Ok(false)`
    /// (nothing written) if one does not. Returns only once the write is durable.
    async fn commit(&self, batch: Batch) -> Result<bool>;
    /// A counter that moves on every write transaction (a commit, an accepted digest),
    /// before the commit returns: what was read while it stayed the same is still current.
    /// The path lookup cache ([`crate::fs::FsOptions::lookup_cache`]) relies on this.
    fn changes(&self) -> u64;
    /// Every entry, in key order, `limit` at a time after `after` (fsck, gc, rotation).
    async fn scan_entries(
        &self,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, Vec<u8>)>>;
    /// Every inline content id (fsck, gc).
    async fn inline_ids(&self) -> Result<Vec<ContentId>>;
    /// Every entry, in key order, read from ONE consistent snapshot (unlike paging with
    /// [`Index::scan_entries`], a record moved by a concurrent rename is seen exactly once).
    /// gc relies on this to never miss a live reference.
    async fn visit_entries(
        &self,
        visit: &mut (dyn for<'k, 'v> FnMut(&'k EntryKey, &'v [u8]) -> Result<()> + Send),
    ) -> Result<()>;
    /// Recomputes the digest of every entry and metadata row and compares it with the
    /// stored one, all from ONE snapshot (fsck; the server may be writing meanwhile).
    async fn check_digest(&self) -> Result<DigestCheck>;
    /// Recomputes the digest from the entries and metadata as they are now and stores it,
    /// in one write transaction serialised with the commits (`efsctl fsck --accept-index`,
    /// after an operator has decided that the index as it is now is the one to trust).
    /// Returns the check of the new digest.
    async fn accept_digest(&self) -> Result<DigestCheck>;
    /// Every meta value, entry and inline content, in that order, from ONE consistent
    /// snapshot (backups: the records, the contents they name and the keyring that opens
    /// them, all of one moment).
    async fn visit_snapshot(
        &self,
        visit: &mut (dyn for<'a> FnMut(SnapshotItem<'a>) -> Result<()> + Send),
    ) -> Result<()>;
}
