//! Backups of one filesystem's encrypted store, taken while it serves, and their restore.
//!
//! A backup is one index snapshot (a redb read transaction: every record, every inline
//! content and the keyring of one moment) plus every blob that snapshot names, copied
//! as they are: still encrypted, never decrypted. Requests go on meanwhile. An overwrite
//! or delete normally removes the old blob right after its commit; while a backup runs,
//! the filesystem is *pinned* (`Pins`) and such removals (and gc's) are deferred until
//! the last backup ends, so every blob of the snapshot is still there to copy.
//!
//! Layout of a backup directory (`DEST`):
//!
//! ```text
//! DEST/manifest.json          written last: counts, SHA-256 of every other file
//! DEST/index.dump             the snapshot: records and inline contents (sealed as stored)
//! DEST/blobs/ab/ab12…         every referenced blob, byte for byte
//! DEST/keys/keyring.sealed    only with include_keys: the keyring, sealed under the
//! DEST/keys/keyparts.json       data dir's starter key, and the public key-part facts
//! ```
//!
//! `index.dump` is a sequence of `kind (1: entry, 2: inline) || u32 BE key length || key
//! || u32 BE value length || value`. Without `keys/`, the backup can only be restored in
//! a data dir that still holds the same filesystem (same id) to take its keyring from.
//!
//! Restore (`DataDir::restore`) makes a new filesystem with the backup's keyring, or
//! fills an existing empty one under that filesystem's own keyring
//! (`Filesystem::restore_into`).

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Filesystem;
use crate::blob::BlobStore;
use crate::error::{CoreError, Result};
use crate::index::{ContentId, EntryKey, SnapshotItem};
use crate::record::{Kind, Storage};

/// Format name in the manifest. DO NOT CHANGE for this layout.
pub const FORMAT: &str = "efs-backup/1";
const KIND_ENTRY: u8 = 1;
const KIND_INLINE: u8 = 2;
/// Copy buffer of a blob.
const COPY_CHUNK: usize = 4 << 20;

/// Deferred blob removals of a pinned filesystem.
#[derive(Default)]
pub(crate) struct Pins {
    /// Backups running.
    count: usize,
    /// Blobs whose removal waits for the last backup to end.
    deferred: Vec<ContentId>,
}

impl Pins {
    /// True (and the removal remembered) if a backup runs.
    pub(super) fn defer(&mut self, id: &ContentId) -> bool {
        if self.count == 0 {
            return false;
        }
        self.deferred.push(*id);
        true
    }
}

/// A running backup's pin: dropping it (even on an error) releases it; the last one
/// removes the deferred blobs in the background.
pub(crate) struct Pin {
    fs: Arc<Filesystem>,
}

impl Filesystem {
    /// Defers blob removals until the pin is dropped.
    pub(crate) fn pin(self: &Arc<Self>) -> Pin {
        self.pins.lock().expect("pins lock poisoned").count += 1;
        Pin { fs: self.clone() }
    }

    /// True if the filesystem has no entry at all.
    pub(crate) async fn is_empty(&self) -> Result<bool> {
        Ok(self.index.scan_entries(None, 1).await?.is_empty())
    }

    /// Restores a backup into this (empty, possibly serving) filesystem under ITS OWN
    /// keyring: `backup_kr` opens the backup's records; each is placed at the key this
    /// filesystem's name tags give it (the parent directory found by its tag under the
    /// backup's keyring), its data key rewrapped under the current term, and committed
    /// with the expectation that nothing is there yet, so a client writing into the
    /// filesystem meanwhile makes the restore fail instead of being overwritten. Blobs
    /// are copied (and checked) before any record names them. Returns (entries, blobs).
    pub(crate) async fn restore_into(
        self: &Arc<Self>,
        src: &Source,
        backup_kr: &crate::keyring::Keyring,
    ) -> Result<(u64, u64)> {
        use crate::index::{Batch, Expect, Op};
        let old_id = src.fs_id;
        let kr = self.keyring();
        // Pass 1: the backup's directory tags → directory ids.
        let mut dirs = std::collections::HashMap::new();
        dirs.insert(self.dir_tag(backup_kr, &super::ROOT_ID), super::ROOT_ID);
        let mut reader = DumpReader::open(src)?;
        while let Some(item) = reader.next_item()? {
            if let DumpItem::Entry(k, v) = item {
                let rec = crate::record::Record::open(backup_kr, &old_id, &k, &v)?;
                if rec.kind == Kind::Dir {
                    dirs.insert(self.dir_tag(backup_kr, &rec.id), rec.id);
                }
            }
        }
        // Blobs first: a record never names a missing blob.
        for (hexid, sha) in &src.manifest.blobs {
            let cid: ContentId = hex::decode(hexid)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(CoreError::Corrupt("backup blob name"))?;
            crate::datadir::copy_blob(self.blobs.as_ref(), &cid, &source_blob(src, hexid), sha)
                .await?;
        }
        let term = kr.current();
        let mut reader = DumpReader::open(src)?;
        let mut batch = Batch::default();
        let mut entries = 0u64;
        loop {
            let item = reader.next_item()?;
            let flush = item.is_none() || batch.ops.len() >= 1024;
            if flush
                && !batch.ops.is_empty()
                && !self.index.commit(std::mem::take(&mut batch)).await?
            {
                return Err(CoreError::Invalid(
                    "a client wrote into the filesystem during the restore; restore into a new filesystem".into(),
                ));
            }
            match item {
                None => break,
                Some(DumpItem::Inline(cid, v)) => batch.ops.push(Op::PutInline(cid, v)),
                Some(DumpItem::Entry(k, v)) => {
                    let mut rec = crate::record::Record::open(backup_kr, &old_id, &k, &v)?;
                    let ptag: [u8; 16] = k[..16].try_into().expect("32-byte key");
                    let parent = dirs
                        .get(&ptag)
                        .ok_or(CoreError::Corrupt("backup entry without its directory"))?;
                    let key = self.entry_key(&kr, parent, &rec.name);
                    if rec.kind == Kind::File {
                        let dk = rec.data_key(backup_kr, &old_id)?;
                        rec.key_term = term.number;
                        rec.wrapped_key = efs_format::wrap::seal(
                            term.data_key_wrap(),
                            &crate::record::data_key_aad(&self.id, &rec.id),
                            dk.as_bytes(),
                        );
                    }
                    batch.expect.push(Expect { key, value: None });
                    batch
                        .ops
                        .push(Op::PutEntry(key, rec.seal(&kr, &self.id, &key)));
                    entries += 1;
                }
            }
        }
        if entries != src.manifest.entries {
            return Err(CoreError::Invalid(
                "the backup's index dump does not hold what its manifest counts".into(),
            ));
        }
        Ok((entries, src.manifest.blobs.len() as u64))
    }

    /// The keyring as stored (sealed under the starter key).
    pub(crate) async fn sealed_keyring(&self) -> Result<Vec<u8>> {
        self.index
            .get_meta(crate::datadir::META_KEYRING)
            .await?
            .ok_or(CoreError::Corrupt("filesystem without keyring"))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let deferred = {
            let mut p = self.fs.pins.lock().expect("pins lock poisoned");
            p.count -= 1;
            if p.count > 0 {
                return;
            }
            std::mem::take(&mut p.deferred)
        };
        if deferred.is_empty() {
            return;
        }
        let blobs: Arc<dyn BlobStore> = self.fs.blobs.clone();
        let remove = async move {
            for id in deferred {
                if let Err(e) = blobs.delete(&id).await {
                    tracing::warn!(error = %e, "could not remove a replaced blob; gc will");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(remove);
            }
            // No runtime (cannot happen: backups run in one): gc removes the orphans.
            Err(_) => drop(remove),
        }
    }
}

/// The manifest of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Name of the filesystem backed up.
    pub fs_name: String,
    /// Its id (hex): records and data keys are bound to it.
    pub fs_id: String,
    /// When the snapshot was taken, Unix ms.
    pub created_ms: i64,
    /// Entry records (files and directories).
    pub entries: u64,
    /// Files.
    pub files: u64,
    /// Plaintext bytes of all files.
    pub bytes: u64,
    /// Inline contents.
    pub inline: u64,
    /// SHA-256 of `index.dump` (hex).
    pub index_sha256: String,
    /// Every blob (hex id) with the SHA-256 of its bytes.
    pub blobs: BTreeMap<String, String>,
    /// True if `keys/` holds the wrapped keyring.
    pub keys_included: bool,
    /// SHA-256 of `keys/keyring.sealed`, if included.
    #[serde(default)]
    pub keyring_sha256: Option<String>,
}

/// What [`backup`] wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// Its manifest.
    pub manifest: Manifest,
    /// Encrypted bytes copied (index dump and blobs).
    pub stored_bytes: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A path's file, created new, with its SHA-256 computed on the way.
struct HashedFile {
    w: BufWriter<std::fs::File>,
    h: Sha256,
    n: u64,
}

impl HashedFile {
    fn create(p: &Path) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)?;
        Ok(Self {
            w: BufWriter::with_capacity(1 << 20, f),
            h: Sha256::new(),
            n: 0,
        })
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b)?;
        self.h.update(b);
        self.n += b.len() as u64;
        Ok(())
    }

    fn finish(self) -> Result<(String, u64)> {
        let f = self.w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok((hex::encode(self.h.finalize()), self.n))
    }
}

fn write_item(out: &mut HashedFile, kind: u8, key: &[u8], value: &[u8]) -> Result<()> {
    out.write(&[kind])?;
    out.write(&(key.len() as u32).to_be_bytes())?;
    out.write(key)?;
    out.write(&(value.len() as u32).to_be_bytes())?;
    out.write(value)
}

fn blob_rel(id: &str) -> PathBuf {
    PathBuf::from("blobs").join(&id[0..2]).join(id)
}

fn sync_dir(p: &Path) -> Result<()> {
    std::fs::File::open(p)?.sync_all()?;
    Ok(())
}

/// Backs up `fs` into the new (or empty) directory `dest` while it keeps serving. With
/// `keys`, also writes the wrapped keyring of the snapshot (sealed under the starter key,
/// as stored) and `keyparts` (the public key-part facts of the data dir).
pub async fn backup(
    fs: &Arc<Filesystem>,
    dest: &Path,
    keys: Option<&[u8]>,
) -> Result<BackupReport> {
    prepare_dest(dest)?;
    // The pin first: any removal after the snapshot is deferred; any before it removed a
    // blob the snapshot does not name (its commit came first).
    let _pin = fs.pin();
    let kr = fs.keyring();
    let mut dump = HashedFile::create(&dest.join("index.dump"))?;
    let mut m = Manifest {
        format: FORMAT.into(),
        fs_name: fs.name().to_owned(),
        fs_id: hex::encode(fs.id),
        created_ms: now_ms(),
        entries: 0,
        files: 0,
        bytes: 0,
        inline: 0,
        index_sha256: String::new(),
        blobs: BTreeMap::new(),
        keys_included: keys.is_some(),
        keyring_sha256: None,
    };
    let mut blob_ids = Vec::new();
    let mut keyring = None;
    fs.index
        .visit_snapshot(&mut |item| {
            match item {
                SnapshotItem::Meta(name, v) => {
                    if name == crate::datadir::META_KEYRING {
                        keyring = Some(v.to_vec());
                    }
                }
                SnapshotItem::Entry(k, v) => {
                    let rec = fs.open_rec(&kr, k, v)?;
                    if rec.kind == Kind::File {
                        m.files += 1;
                        m.bytes += rec.size;
                        if rec.storage == Storage::Blob {
                            blob_ids.push(rec.id);
                        }
                    }
                    m.entries += 1;
                    write_item(&mut dump, KIND_ENTRY, k, v)?;
                }
                SnapshotItem::Inline(id, v) => {
                    m.inline += 1;
                    write_item(&mut dump, KIND_INLINE, id, v)?;
                }
            }
            Ok(())
        })
        .await?;
    let (sha, mut stored) = dump.finish()?;
    m.index_sha256 = sha;
    for id in blob_ids {
        let name = hex::encode(id);
        let rel = blob_rel(&name);
        let path = dest.join(&rel);
        std::fs::create_dir_all(path.parent().expect("a blob path has a directory"))?;
        let src = fs.blobs.open(&id).await?;
        let mut out = HashedFile::create(&path)?;
        let mut off = 0u64;
        while off < src.len() {
            let n = (src.len() - off).min(COPY_CHUNK as u64) as usize;
            out.write(&src.read_at(off, n).await?)?;
            off += n as u64;
        }
        let (sha, n) = out.finish()?;
        stored += n;
        m.blobs.insert(name, sha);
    }
    if let Some(keyparts_json) = keys {
        let kr = keyring.ok_or(CoreError::Corrupt("filesystem without keyring"))?;
        std::fs::create_dir_all(dest.join("keys"))?;
        let mut f = HashedFile::create(&dest.join("keys").join("keyring.sealed"))?;
        f.write(&kr)?;
        m.keyring_sha256 = Some(f.finish()?.0);
        let mut f = HashedFile::create(&dest.join("keys").join("keyparts.json"))?;
        f.write(keyparts_json)?;
        f.finish()?;
    }
    // The manifest last: a directory without one is an unfinished backup.
    let json = serde_json::to_vec_pretty(&m).expect("serialising JSON cannot fail");
    let tmp = dest.join("manifest.json.tmp");
    let mut f = HashedFile::create(&tmp)?;
    f.write(&json)?;
    f.finish()?;
    std::fs::rename(&tmp, dest.join("manifest.json"))?;
    sync_dir(dest)?;
    tracing::info!(
        fs = fs.name(),
        entries = m.entries,
        blobs = m.blobs.len(),
        "backup written"
    );
    Ok(BackupReport {
        manifest: m,
        stored_bytes: stored,
    })
}

fn prepare_dest(dest: &Path) -> Result<()> {
    match std::fs::read_dir(dest) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(CoreError::Invalid(format!(
                    "{} exists and is not empty; give a new directory",
                    dest.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dest)?,
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// An opened backup: its manifest, checked index dump and paths.
pub(crate) struct Source {
    pub(crate) root: PathBuf,
    pub(crate) manifest: Manifest,
    pub(crate) fs_id: [u8; 16],
}

/// Opens a backup and checks its manifest and the SHA-256 of its index dump.
pub(crate) fn open_source(root: &Path) -> Result<Source> {
    let bad = |what: &str| {
        CoreError::Invalid(format!(
            "{} is not a complete EFS backup: {what}",
            root.display()
        ))
    };
    let text = std::fs::read(root.join("manifest.json"))
        .map_err(|_| bad("no manifest.json (an interrupted backup has none)"))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|_| bad("manifest.json is malformed"))?;
    if manifest.format != FORMAT {
        return Err(bad("unknown format (newer EFS?)"));
    }
    let fs_id: [u8; 16] = hex::decode(&manifest.fs_id)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("fs_id is malformed"))?;
    if file_sha256(&root.join("index.dump"))? != manifest.index_sha256 {
        return Err(bad("index.dump does not match its SHA-256 in the manifest"));
    }
    Ok(Source {
        root: root.to_path_buf(),
        manifest,
        fs_id,
    })
}

pub(crate) fn file_sha256(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// One item of an index dump.
pub(crate) enum DumpItem {
    Entry(EntryKey, Vec<u8>),
    Inline(ContentId, Vec<u8>),
}

/// Reads `index.dump` item by item.
pub(crate) struct DumpReader<R = BufReader<std::fs::File>> {
    r: R,
}

impl DumpReader {
    pub(crate) fn open(src: &Source) -> Result<Self> {
        Ok(Self {
            r: BufReader::with_capacity(1 << 20, std::fs::File::open(src.root.join("index.dump"))?),
        })
    }
}

impl<R: Read> DumpReader<R> {
    fn read_vec(&mut self) -> Result<Vec<u8>> {
        let cut = || CoreError::Corrupt("backup index dump cut short");
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => cut(),
            _ => e.into(),
        })?;
        let len = u64::from(u32::from_be_bytes(len));
        // Grown as the bytes arrive: a length the dump does not hold fails at the dump's
        // end instead of allocating up to 4 GiB first.
        let mut v = Vec::new();
        (&mut self.r).take(len).read_to_end(&mut v)?;
        if v.len() as u64 != len {
            return Err(cut());
        }
        Ok(v)
    }

    pub(crate) fn next_item(&mut self) -> Result<Option<DumpItem>> {
        let mut kind = [0u8; 1];
        match self.r.read_exact(&mut kind) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let key = self.read_vec()?;
        let value = self.read_vec()?;
        let bad = || CoreError::Corrupt("backup index dump");
        Ok(Some(match kind[0] {
            KIND_ENTRY => DumpItem::Entry(key.try_into().map_err(|_| bad())?, value),
            KIND_INLINE => DumpItem::Inline(key.try_into().map_err(|_| bad())?, value),
            _ => return Err(bad()),
        }))
    }
}

/// One item of an index dump as (kind, key, value): kind 1 an entry, 2 an inline content.
#[doc(hidden)]
pub type DumpRow = (u8, Vec<u8>, Vec<u8>);

/// Every item of an index dump held in memory. The restore's reader, for the fuzz target
/// `backup_dump`; not an API.
#[doc(hidden)]
pub fn parse_dump(bytes: &[u8]) -> Result<Vec<DumpRow>> {
    let mut r = DumpReader { r: bytes };
    let mut out = Vec::new();
    while let Some(item) = r.next_item()? {
        out.push(match item {
            DumpItem::Entry(k, v) => (KIND_ENTRY, k.to_vec(), v),
            DumpItem::Inline(k, v) => (KIND_INLINE, k.to_vec(), v),
        });
    }
    Ok(out)
}

/// The path of blob `id` in a backup.
pub(crate) fn source_blob(src: &Source, id: &str) -> PathBuf {
    src.root.join(blob_rel(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&(key.len() as u32).to_be_bytes());
        v.extend_from_slice(key);
        v.extend_from_slice(&(value.len() as u32).to_be_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn a_dump_reads_back_and_every_malformed_one_is_refused() {
        let mut dump = item(KIND_ENTRY, &[1; 32], b"record");
        dump.extend(item(KIND_INLINE, &[2; 16], b""));
        let items = parse_dump(&dump).unwrap();
        assert_eq!(
            items,
            [
                (KIND_ENTRY, vec![1; 32], b"record".to_vec()),
                (KIND_INLINE, vec![2; 16], Vec::new())
            ]
        );
        assert!(parse_dump(&[]).unwrap().is_empty());
        // Cut anywhere inside an item: refused (a cut between items is a shorter dump).
        let first = item(KIND_ENTRY, &[1; 32], b"record").len();
        for n in (1..dump.len()).filter(|&n| n != first) {
            let e = parse_dump(&dump[..n]).unwrap_err();
            assert!(matches!(e, CoreError::Corrupt(_)), "cut at {n}: {e:?}");
        }
        // A length the dump does not hold (4 GiB - 1) is refused (read as bytes arrive, so
        // nothing that size is allocated: the fuzz target backup_dump checks that).
        let mut huge = vec![KIND_ENTRY, 0, 0, 0, 32];
        huge.extend_from_slice(&[1; 32]);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(b"short");
        assert!(matches!(parse_dump(&huge), Err(CoreError::Corrupt(_))));
        // An unknown kind, and keys of the wrong length.
        for bad in [
            item(3, &[1; 32], b"x"),
            item(KIND_ENTRY, &[1; 31], b"x"),
            item(KIND_INLINE, &[1; 32], b"x"),
        ] {
            assert!(matches!(parse_dump(&bad), Err(CoreError::Corrupt(_))));
        }
    }
}
