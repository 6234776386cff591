//! The embedded index on redb, with group commit.
//!
//! redb allows one write transaction at a time and each durable commit costs an fsync.
//! A single committer thread therefore drains every batch waiting at that moment,
//! checks and applies each in one transaction, commits once, and answers them all:
//! under load, many writes share one fsync; alone, a write costs exactly one.
//!
//! The same transaction keeps the index digest ([`crate::digest`]) of the entries and the
//! metadata rows current: replacing or removing a row hands back its old value, so an
//! update costs one HMAC per row written or removed, and no extra read.
//!
//! After a failed commit (a full disk, an I/O error) redb refuses every later transaction
//! until the database is closed and opened again. The committer therefore reopens it before
//! the next group, so that a filesystem whose disk was full for a moment takes writes again
//! once space is freed, without a restart.
//!
//! Except after an I/O error from the device while the commit was written out (EIO at its
//! fsync, say): the kernel may then mark the pages it failed to write clean while keeping
//! their new contents in its cache, so a reopen would read back a commit the disk never
//! took, and later commits (and gc, which trusts what the index names) would build on it
//! until a power cut or the cache's eviction brought the disk's older state back: files
//! naming deleted blobs, or pages that no longer match their checksums. (PostgreSQL, after
//! the same discovery in 2018, stops at a failed fsync for the same reason.) So the committer
//! refuses every later write to this index, with a message saying what happened and what to
//! do, until the process ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

use crate::digest::{Accumulator, DigestCheck, DigestKey, Layout, META_DIGEST};
use crate::error::{CoreError, Result};
use crate::index::{Batch, ContentId, DirTag, EntryKey, Index, Op, SnapshotItem, check_reserved};
use crate::redb_scan;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const INLINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inline");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// redb's page cache for one index, unless the caller says otherwise
/// ([`RedbIndex::open_with_cache`]). redb's own default, 1 GiB per database, let a server
/// grow to 400-540 MiB after a burst of small PUTs, for no gain: 4 KiB PUTs at 16 clients ran
/// at the same speed with 64 MiB (and 83 MiB resident instead of 363-429 MiB); pages beyond it
/// are read from the kernel's page cache.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Most batches folded into one transaction.
const MAX_GROUP: usize = 256;

type Reply = oneshot::Sender<Result<bool>>;

/// What [`RedbIndex::open_with`] does to the digest it finds, when it is not a layout-2 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestOptions {
    /// An index without a digest gets one, computed from its rows as they are. False for a
    /// data dir that knows this index had a digest: a digest removed from the file must not
    /// be silently rebuilt over records put back meanwhile (every check then reports it).
    pub compute_missing: bool,
    /// A layout-1 digest (entries only, written before the digest covered the metadata) is
    /// upgraded to layout 2, taking in the metadata rows as they are now
    /// ([`Accumulator::upgrade`]). False for a data dir that recorded the upgrade: a layout-1
    /// digest found then was put back from before it (with an older keyring, say), and is
    /// left as it is (every check reports it unreadable).
    pub upgrade_layout_1: bool,
}

impl DigestOptions {
    /// Both: an index opened on its own, with nothing known about it.
    pub const ANY: DigestOptions = DigestOptions {
        compute_missing: true,
        upgrade_layout_1: true,
    };
}

/// redb-backed [`Index`].
pub struct RedbIndex {
    db: Arc<Handle>,
    digest: Arc<DigestKey>,
    tx: mpsc::Sender<(Batch, Reply)>,
    /// See [`Index::changes`]: moved by the committer after each group, before it answers.
    changes: Arc<AtomicU64>,
    /// Joined on drop: the committer holds the database open until it has stopped.
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedbIndex {
    /// Closes the queue and waits for the committer (after it has answered every queued
    /// batch), so that the file is closed when the index is dropped and can be opened again
    /// at once: redb refuses a second open while the committer still holds the database.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
        self.db.drop_snapshot();
    }
}

/// A redb error as a [`CoreError`]. A full disk stays an I/O error with its kind, so that
/// the server can answer it as such (507) instead of as an opaque index failure.
fn ix<E: Into<redb::Error>>(e: E) -> CoreError {
    match e.into() {
        redb::Error::Io(io) if is_storage_full(&io) => CoreError::Io(io),
        other => CoreError::Index(other.to_string()),
    }
}

fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// The same error for every batch of a failed group (an `io::Error` is not `Clone`).
fn for_each_batch(e: &CoreError) -> CoreError {
    match e {
        CoreError::Io(io) => CoreError::Io(std::io::Error::new(io.kind(), io.to_string())),
        CoreError::Index(m) => CoreError::Index(m.clone()),
        other => CoreError::Index(other.to_string()),
    }
}

/// The open database, closed and reopened after a failed commit.
struct Handle {
    path: PathBuf,
    /// redb's page cache size, for reopening.
    cache_bytes: usize,
    /// `None` between a close and a successful reopen.
    db: RwLock<Option<Arc<Database>>>,
    /// The latest read snapshot, shared by point reads while the index does not change.
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// Tests: the next commit is written, then reported as failed by the device (EIO), as a
    /// failed fsync after the pages reached the kernel would.
    #[cfg(test)]
    fail_next_sync: std::sync::atomic::AtomicBool,
}

/// A read transaction's open tables, reused by [`Index::get_entry`] and
/// [`Index::get_inline`] while [`Index::changes`] stays at `changes`: a GET then costs no
/// transaction start and no table lookup (about 5 % of a small GET with the cache off).
/// The committer drops it after every group, so it holds old pages only until the next
/// group or the next read (redb cannot reuse a page a live snapshot still sees; a reader
/// that began just before a group may share its snapshot after it, never to be used at
/// the new count), and a reopen drops it before each attempt.
struct Snapshot {
    /// The count read before the transaction began: it holds every commit up to this one.
    changes: u64,
    // The tables are declared (and so dropped) before the database: a snapshot holding the
    // last handle of a reopened database ends its read transaction before the close.
    entries: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    inline: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    /// The database it was read from (a reopen makes a new one).
    db: Arc<Database>,
}

impl Handle {
    /// Forgets the shared snapshot (dropped once the reads using it finish).
    fn drop_snapshot(&self) {
        let old = self
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(old);
    }

    /// A snapshot holding at least every commit up to `changes`.
    fn snapshot(&self, changes: u64) -> Result<Arc<Snapshot>> {
        let db = self.current()?;
        if let Some(s) = &*self.snapshot.lock().unwrap_or_else(PoisonError::into_inner)
            && s.changes == changes
            && Arc::ptr_eq(&s.db, &db)
        {
            return Ok(s.clone());
        }
        let r = db.begin_read().map_err(ix)?;
        let s = Arc::new(Snapshot {
            changes,
            entries: r.open_table(ENTRIES).map_err(ix)?,
            inline: r.open_table(INLINE).map_err(ix)?,
            db,
        });
        let mut slot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        // A reader that read the count before a newer snapshot was shared leaves it.
        if slot.as_ref().is_none_or(|cur| cur.changes <= changes) {
            *slot = Some(s.clone());
        }
        Ok(s)
    }
}

/// Opens (or creates) the index file ([`open_redb`], with `cache_bytes` of page cache).
fn create_db(
    path: &Path,
    cache_bytes: usize,
) -> std::result::Result<Database, redb::DatabaseError> {
    open_redb(path, Some(cache_bytes))
}

/// Opens (or creates) a redb file (an index, the system database). One that was not closed
/// (the process killed, a crash, a power cut, or a reopen after an I/O error) is checked and
/// repaired by redb before it opens: that reads the whole file (about 10 s for the index of
/// 1,000,000 files, 3 GB, from the page cache), so it is said in the log, with its progress
/// and its end, rather than looking like a start that hangs.
pub(crate) fn open_redb(
    path: &Path,
    cache_bytes: Option<usize>,
) -> std::result::Result<Database, redb::DatabaseError> {
    let shown = path.display().to_string();
    let repairing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut builder = redb::Builder::new();
    if let Some(bytes) = cache_bytes {
        builder.set_cache_size(bytes);
    }
    builder.set_repair_callback({
        let shown = shown.clone();
        let repairing = repairing.clone();
        move |session| {
            repairing.store(true, Ordering::Relaxed);
            tracing::warn!(
                file = %shown,
                progress = %format_args!("{:.0} %", session.progress() * 100.0),
                "the database was not closed cleanly (the process was killed, the machine stopped, or an I/O error): repairing it before it opens, which reads the whole file"
            );
        }
    });
    let db = retry_while_locked(|| match builder.create(path) {
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(None),
        other => other.map_err(Some),
    })
    .map_err(|e| e.unwrap_or(redb::DatabaseError::DatabaseAlreadyOpen))?;
    if repairing.load(Ordering::Relaxed) {
        tracing::warn!(
            file = %shown,
            seconds = %format_args!("{:.1}", started.elapsed().as_secs_f64()),
            "the database was repaired and is open"
        );
    }
    Ok(db)
}

/// How long an open waits for a lock held by someone else to be let go before it says the
/// file is in use: a process that has just ended, or a child process forked while the lock's
/// file was open (it holds a copy of the descriptor until it execs), lets go within
/// milliseconds; a running server never does.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Runs `attempt` until it is not `Err(None)` (the lock is held) or [`LOCK_WAIT`] has
/// passed; `Err(Some(e))` is returned at once.
pub(crate) fn retry_while_locked<T, E>(
    mut attempt: impl FnMut() -> std::result::Result<T, Option<E>>,
) -> std::result::Result<T, Option<E>> {
    let start = Instant::now();
    loop {
        match attempt() {
            Err(None) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// How long a reopen waits for readers to let go of the failed database.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

impl Handle {
    /// The database to start a transaction on.
    fn current(&self) -> Result<Arc<Database>> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                CoreError::Index("the index is being reopened after an I/O error".into())
            })
    }

    /// Closes the database and opens it again (redb recovers on open). Readers that still
    /// hold the old one finish first: redb keeps the file locked until its last handle goes.
    fn reopen(&self) -> Result<()> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        drop(slot.take());
        let deadline = Instant::now() + REOPEN_WAIT;
        loop {
            // A reader may have shared a snapshot of the old database meanwhile.
            self.drop_snapshot();
            match create_db(&self.path, self.cache_bytes) {
                Ok(db) => {
                    *slot = Some(Arc::new(db));
                    tracing::warn!("the index was reopened after an I/O error");
                    return Ok(());
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(ix(e)),
            }
        }
    }
}

impl RedbIndex {
    /// Opens or creates the index file; `digest` keys its digest. An index written before
    /// digests existed gets one now, computed from its entries and metadata (generation 0);
    /// a digest of layout 1 (written before the digest covered the metadata) is upgraded to
    /// layout 2 ([`DigestOptions::ANY`]).
    pub fn open(path: &Path, digest: DigestKey) -> Result<Self> {
        Self::open_with(path, digest, DigestOptions::ANY)
    }

    /// As [`RedbIndex::open`], with what is done to a missing or layout-1 digest said by
    /// `opts`.
    pub fn open_with(path: &Path, digest: DigestKey, opts: DigestOptions) -> Result<Self> {
        Self::open_with_cache(path, digest, opts, DEFAULT_CACHE_BYTES)
    }

    /// As [`RedbIndex::open_with`], with a page cache of `cache_bytes` (see
    /// [`DEFAULT_CACHE_BYTES`]).
    pub fn open_with_cache(
        path: &Path,
        digest: DigestKey,
        opts: DigestOptions,
        cache_bytes: usize,
    ) -> Result<Self> {
        let db = create_db(path, cache_bytes).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => CoreError::Index(
                "the index is open in another process (is efs-server running on this data dir?)"
                    .into(),
            ),
            // Named: "Permission denied" alone left the operator to guess which file.
            e => match ix(e) {
                CoreError::Index(m) => CoreError::Index(format!("{}: {m}", path.display())),
                other => other,
            },
        })?;
        // Create the tables once so readers never see "table does not exist".
        let w = db.begin_write().map_err(ix)?;
        {
            let entries = w.open_table(ENTRIES).map_err(ix)?;
            w.open_table(INLINE).map_err(ix)?;
            let mut meta = w.open_table(META).map_err(ix)?;
            let stored = meta
                .get(META_DIGEST)
                .map_err(ix)?
                .map(|v| v.value().to_vec());
            match stored {
                None if opts.compute_missing => {
                    let mut acc = Accumulator::empty_with(Layout::INDEX);
                    for item in entries.iter().map_err(ix)? {
                        let (k, v) = item.map_err(ix)?;
                        acc.insert(&digest, k.value(), v.value());
                    }
                    for (name, v) in meta_rows(&meta)? {
                        acc.insert_meta(&digest, &name, &v);
                    }
                    if !entries.is_empty().map_err(ix)? {
                        // Expected once, after an upgrade. Otherwise someone removed the
                        // digest: the generation restarts at 0, which the operator's anchor
                        // shows.
                        tracing::warn!(
                            entries = entries.len().map_err(ix)?,
                            "the index had no digest (written by an older version, or the digest was removed): computed it from the entries as they are now"
                        );
                    }
                    meta.insert(META_DIGEST, acc.seal(&digest).as_slice())
                        .map_err(ix)?;
                }
                Some(stored) if opts.upgrade_layout_1 => {
                    if let Some(mut acc) = Accumulator::open(&digest, &stored)
                        && acc.layout() == Layout::V1
                    {
                        // A digest of the entries only, written before metadata was covered:
                        // the metadata rows as they are now join it, once (see
                        // `Accumulator::upgrade`; the entries stay as the digest knew them).
                        let rows = meta_rows(&meta)?;
                        acc.upgrade(
                            &digest,
                            rows.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
                        );
                        meta.insert(META_DIGEST, acc.seal(&digest).as_slice())
                            .map_err(ix)?;
                        tracing::info!(
                            generation = acc.generation(),
                            "the index digest now covers the index's metadata (the sealed keyring, the rotation state) too: upgraded once, from the metadata as it is now"
                        );
                    }
                }
                // Left as it is: every check reports it (see DigestOptions).
                _ => {}
            }
        }
        w.commit().map_err(ix)?;
        let db = Arc::new(Handle {
            path: path.to_path_buf(),
            cache_bytes,
            db: RwLock::new(Some(Arc::new(db))),
            snapshot: Mutex::new(None),
            #[cfg(test)]
            fail_next_sync: Default::default(),
        });
        let digest = Arc::new(digest);
        let (tx, rx) = mpsc::channel::<(Batch, Reply)>();
        let db2 = db.clone();
        let key2 = digest.clone();
        let changes = Arc::new(AtomicU64::new(0));
        let changes2 = changes.clone();
        let committer = std::thread::Builder::new()
            .name("efs-index-commit".into())
            .spawn(move || committer(db2, key2, changes2, rx))
            .map_err(CoreError::Io)?;
        Ok(Self {
            db,
            digest,
            tx,
            changes,
            committer: Some(committer),
        })
    }
}

/// Rows copied per write transaction by [`rewrite`].
const REWRITE_CHUNK: usize = 10_000;

/// Copies the index at `src` (closed: no [`RedbIndex`] on it) into a new file `dst`, every
/// row of every table as it is but the metadata rows `replace` names, which get their new
/// values. The digest is updated as one batch writing them would update it (the old
/// values out, the new ones in, one generation more): it must open under `key` (an index
/// on hold is refused before, by its check). Returns the new generation.
///
/// The new file never holds the replaced values: nothing of them is written to it, so no
/// freed page of it can keep one (what a replacement in place would leave behind, redb
/// being copy-on-write). `dst` is synced before this returns; the caller renames it.
pub(crate) fn rewrite(
    src: &Path,
    dst: &Path,
    key: &DigestKey,
    replace: &[(&str, &[u8])],
) -> Result<u64> {
    rewrite_inner(src, dst, key, replace, true)?.ok_or_else(|| {
        CoreError::Index(
            "the index digest does not open: check the index with efsctl fsck first".into(),
        )
    })
}

/// [`rewrite`], but an index whose digest does not open under `key` (one the data dir
/// holds, its key row missing) is copied all the same, its digest row as it was (as a
/// commit in place leaves it: see `apply_group`). Returns the new generation, `None` for
/// such an index.
pub(crate) fn rewrite_any_digest(
    src: &Path,
    dst: &Path,
    key: &DigestKey,
    replace: &[(&str, &[u8])],
) -> Result<Option<u64>> {
    rewrite_inner(src, dst, key, replace, false)
}

fn rewrite_inner(
    src: &Path,
    dst: &Path,
    key: &DigestKey,
    replace: &[(&str, &[u8])],
    digest_required: bool,
) -> Result<Option<u64>> {
    match std::fs::remove_file(dst) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let old = open_redb(src, None).map_err(ix)?;
    let r = old.begin_read().map_err(ix)?;
    // The digest first: a required one that does not open refuses before anything is copied.
    let meta = r.open_table(META).map_err(ix)?;
    let stored = meta
        .get(META_DIGEST)
        .map_err(ix)?
        .map(|v| v.value().to_vec());
    let mut digest = stored
        .as_deref()
        .and_then(|s| Accumulator::open(key, s))
        .filter(|d| d.layout() == Layout::INDEX);
    if digest.is_none() && digest_required {
        return Ok(None);
    }
    let new = open_redb(dst, None).map_err(ix)?;
    for table in [ENTRIES, INLINE] {
        let from = r.open_table(table).map_err(ix)?;
        let mut rows = from.iter().map_err(ix)?;
        loop {
            let mut chunk = Vec::with_capacity(REWRITE_CHUNK);
            for item in rows.by_ref().take(REWRITE_CHUNK) {
                let (k, v) = item.map_err(ix)?;
                chunk.push((k.value().to_vec(), v.value().to_vec()));
            }
            let mut w = new.begin_write().map_err(ix)?;
            // Durable at the last commit, below, which makes every earlier one durable.
            w.set_durability(redb::Durability::None).map_err(ix)?;
            {
                let mut to = w.open_table(table).map_err(ix)?;
                for (k, v) in &chunk {
                    to.insert(k.as_slice(), v.as_slice()).map_err(ix)?;
                }
            }
            w.commit().map_err(ix)?;
            if chunk.len() < REWRITE_CHUNK {
                break;
            }
        }
    }
    let w = new.begin_write().map_err(ix)?;
    {
        // Created even when empty, as every open does: readers never meet a missing table.
        w.open_table(ENTRIES).map_err(ix)?;
        w.open_table(INLINE).map_err(ix)?;
        let mut to = w.open_table(META).map_err(ix)?;
        for (name, v) in meta_rows(&meta)? {
            match replace.iter().find(|(n, _)| *n == name) {
                Some((_, new_value)) => {
                    if let Some(d) = digest.as_mut() {
                        d.remove_meta(key, &name, &v);
                        d.insert_meta(key, &name, new_value);
                    }
                    to.insert(name.as_str(), *new_value).map_err(ix)?;
                }
                None => {
                    to.insert(name.as_str(), v.as_slice()).map_err(ix)?;
                }
            }
        }
        for (name, new_value) in replace {
            if meta.get(*name).map_err(ix)?.is_none() {
                if let Some(d) = digest.as_mut() {
                    d.insert_meta(key, name, new_value);
                }
                to.insert(*name, *new_value).map_err(ix)?;
            }
        }
        match digest.as_mut() {
            Some(d) => {
                d.bump();
                to.insert(META_DIGEST, d.seal(key).as_slice()).map_err(ix)?;
            }
            // Left as it was (see `rewrite_any_digest`), or missing as it was.
            None => {
                if let Some(s) = &stored {
                    to.insert(META_DIGEST, s.as_slice()).map_err(ix)?;
                }
            }
        }
    }
    w.commit().map_err(ix)?;
    drop(r);
    drop(old);
    drop(new);
    std::fs::File::open(dst)?.sync_all()?;
    Ok(digest.map(|d| d.generation()))
}

fn committer(
    handle: Arc<Handle>,
    key: Arc<DigestKey>,
    changes: Arc<AtomicU64>,
    rx: mpsc::Receiver<(Batch, Reply)>,
) {
    let mut failed = false;
    // Set for good by an I/O error from the device during a commit (see the module docs).
    let mut device_failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        if let Some(msg) = &device_failed {
            for (_, reply) in group {
                let _ = reply.send(Err(CoreError::Index(msg.clone())));
            }
            continue;
        }
        // The last group failed: redb now refuses every write until reopened.
        if failed && let Err(e) = handle.reopen() {
            tracing::error!(error = %e, "the index could not be reopened");
        }
        let outcome = handle
            .current()
            .and_then(|db| apply_group(&db, &key, &group))
            .and_then(|(w, results)| match commit_group(&handle, w) {
                Ok(()) => Ok(results),
                Err(Failure::Device(e)) => {
                    let msg = format!(
                        "the disk reported an I/O error while an index commit was made durable ({e}): this filesystem takes no more writes until efs-server is restarted. The kernel may still hold index pages the disk did not take: check the device (dmesg), reboot the machine before starting efs-server again, then run efsctl fsck on this filesystem"
                    );
                    tracing::error!(index = %handle.path.display(), "{msg}");
                    device_failed = Some(msg.clone());
                    Err(CoreError::Index(msg))
                }
                Err(Failure::Other(e)) => Err(e),
            });
        failed = outcome.is_err();
        // Before any answer: a read that starts after a writer has its answer sees the new
        // count, and does not use the snapshot shared before. (Also after a failed group:
        // whatever it did, lookups read again.)
        handle.drop_snapshot();
        changes.fetch_add(1, Ordering::AcqRel);
        match outcome {
            Ok(results) => {
                for ((_, reply), ok) in group.into_iter().zip(results) {
                    let _ = reply.send(Ok(ok));
                }
            }
            Err(e) => {
                for (_, reply) in group {
                    let _ = reply.send(Err(for_each_batch(&e)));
                }
            }
        }
    }
}

/// The first and last possible keys of a directory's entries.
fn dir_range(dir: &DirTag) -> (EntryKey, EntryKey) {
    let mut lo = [0u8; 32];
    lo[..16].copy_from_slice(dir);
    let mut hi = [0xffu8; 32];
    hi[..16].copy_from_slice(dir);
    (lo, hi)
}

/// Every metadata row but the digest's own: what the digest covers besides the entries.
fn meta_rows<T: ReadableTable<&'static str, &'static [u8]>>(
    meta: &T,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in meta.iter().map_err(ix)? {
        let (k, v) = item.map_err(ix)?;
        if k.value() != META_DIGEST {
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
    }
    Ok(out)
}

/// How a commit failed.
enum Failure {
    /// An I/O error from the device (not a full disk) while the commit was written out.
    Device(std::io::Error),
    /// Anything else (a full disk included): the committer reopens and goes on.
    Other(CoreError),
}

/// Commits a group's transaction (durably: every index commit is).
fn commit_group(handle: &Handle, w: redb::WriteTransaction) -> std::result::Result<(), Failure> {
    #[cfg(test)]
    if handle.fail_next_sync.swap(false, Ordering::SeqCst) {
        w.commit().map_err(|e| Failure::Other(ix(e)))?;
        return Err(Failure::Device(std::io::Error::from_raw_os_error(5)));
    }
    let _ = handle;
    w.commit().map_err(|e| match redb::Error::from(e) {
        redb::Error::Io(io) if !is_storage_full(&io) => Failure::Device(io),
        other => Failure::Other(ix(other)),
    })
}

/// Applies a group's batches in one write transaction, which the caller commits
/// ([`commit_group`]). Returns it with whether each batch's expectations held.
fn apply_group(
    db: &Database,
    key: &DigestKey,
    group: &[(Batch, Reply)],
) -> Result<(redb::WriteTransaction, Vec<bool>)> {
    let w = db.begin_write().map_err(ix)?;
    let mut results = Vec::with_capacity(group.len());
    {
        let mut entries = w.open_table(ENTRIES).map_err(ix)?;
        let mut inline = w.open_table(INLINE).map_err(ix)?;
        let mut meta = w.open_table(META).map_err(ix)?;
        // An unreadable digest is left as it is (fsck reports it); updating it would need
        // its mask, and replacing it would hide whatever was done to the index. So is one
        // of layout 1 (upgraded at open: one met now was put there since).
        let mut digest = meta
            .get(META_DIGEST)
            .map_err(ix)?
            .and_then(|v| Accumulator::open(key, v.value()))
            .filter(|d| d.layout() == Layout::INDEX);
        let mut digest_changed = false;
        for (batch, _) in group {
            let mut ok = true;
            for e in &batch.expect {
                let cur = entries.get(e.key.as_slice()).map_err(ix)?;
                let same = match (&cur, &e.value) {
                    (None, None) => true,
                    (Some(c), Some(v)) => c.value() == v.as_slice(),
                    _ => false,
                };
                if !same {
                    ok = false;
                    break;
                }
            }
            for dir in &batch.empty_dirs {
                if !ok {
                    break;
                }
                let (lo, hi) = dir_range(dir);
                let mut range = entries
                    .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
                    .map_err(ix)?;
                ok = range.next().is_none();
            }
            if ok {
                let mut touched = false;
                for op in &batch.ops {
                    match op {
                        Op::PutEntry(k, v) => {
                            let old = entries.insert(k.as_slice(), v.as_slice()).map_err(ix)?;
                            if let Some(d) = digest.as_mut() {
                                if let Some(old) = old {
                                    d.remove(key, k, old.value());
                                }
                                d.insert(key, k, v);
                            }
                            touched = true;
                        }
                        Op::DeleteEntry(k) => {
                            let old = entries.remove(k.as_slice()).map_err(ix)?;
                            if let (Some(d), Some(old)) = (digest.as_mut(), old) {
                                d.remove(key, k, old.value());
                                touched = true;
                            }
                        }
                        Op::PutInline(k, v) => {
                            inline.insert(k.as_slice(), v.as_slice()).map_err(ix)?;
                        }
                        Op::DeleteInline(k) => {
                            inline.remove(k.as_slice()).map_err(ix)?;
                        }
                        Op::PutMeta(k, v) => {
                            // Never the digest's own row: `check_reserved` refused it.
                            let old = meta.insert(k.as_str(), v.as_slice()).map_err(ix)?;
                            if let Some(d) = digest.as_mut() {
                                if let Some(old) = old {
                                    d.remove_meta(key, k, old.value());
                                }
                                d.insert_meta(key, k, v);
                            }
                            touched = true;
                        }
                    }
                }
                if touched && let Some(d) = digest.as_mut() {
                    d.bump();
                    digest_changed = true;
                }
            }
            results.push(ok);
        }
        if digest_changed && let Some(d) = &digest {
            meta.insert(META_DIGEST, d.seal(key).as_slice())
                .map_err(ix)?;
        }
    }
    Ok((w, results))
}

#[async_trait]
impl Index for RedbIndex {
    async fn get_entry(&self, key: &EntryKey) -> Result<Option<Vec<u8>>> {
        let s = self.db.snapshot(self.changes())?;
        Ok(s.entries
            .get(key.as_slice())
            .map_err(ix)?
            .map(|v| v.value().to_vec()))
    }

    fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    async fn list_dir(
        &self,
        dir: &DirTag,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, Vec<u8>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let r = self.db.current()?.begin_read().map_err(ix)?;
        let t = r.open_table(ENTRIES).map_err(ix)?;
        let (lo, hi) = dir_range(dir);
        let mut out = Vec::new();
        // Start at the cursor itself (excluded below), not at the start of the directory:
        // each page costs its own size, whatever the directory's.
        let start: &[u8] = match after {
            Some(a) if a.as_slice() > lo.as_slice() => a.as_slice(),
            _ => lo.as_slice(),
        };
        let range = t.range::<&[u8]>(start..=hi.as_slice()).map_err(ix)?;
        for item in range {
            let (k, v) = item.map_err(ix)?;
            let key: EntryKey = k
                .value()
                .try_into()
                .map_err(|_| CoreError::Corrupt("index key length"))?;
            if let Some(a) = after
                && key <= *a
            {
                continue;
            }
            out.push((key, v.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn get_inline(&self, id: &ContentId) -> Result<Option<Vec<u8>>> {
        let s = self.db.snapshot(self.changes())?;
        Ok(s.inline
            .get(id.as_slice())
            .map_err(ix)?
            .map(|v| v.value().to_vec()))
    }

    async fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let r = self.db.current()?.begin_read().map_err(ix)?;
        let t = r.open_table(META).map_err(ix)?;
        Ok(t.get(name).map_err(ix)?.map(|v| v.value().to_vec()))
    }

    async fn commit(&self, batch: Batch) -> Result<bool> {
        check_reserved(&batch)?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((batch, tx))
            .map_err(|_| CoreError::Index("the committer has stopped".into()))?;
        rx.await
            .map_err(|_| CoreError::Index("the committer has stopped".into()))?
    }

    async fn scan_entries(
        &self,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, Vec<u8>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let r = self.db.current()?.begin_read().map_err(ix)?;
        let t = r.open_table(ENTRIES).map_err(ix)?;
        let mut out = Vec::new();
        let lo: &[u8] = after.map(|a| a.as_slice()).unwrap_or(&[]);
        for item in t.range::<&[u8]>(lo..).map_err(ix)? {
            let (k, v) = item.map_err(ix)?;
            let key: EntryKey = k
                .value()
                .try_into()
                .map_err(|_| CoreError::Corrupt("index key length"))?;
            if after == Some(&key) {
                continue;
            }
            out.push((key, v.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn inline_ids(&self) -> Result<Vec<ContentId>> {
        let r = self.db.current()?.begin_read().map_err(ix)?;
        let t = r.open_table(INLINE).map_err(ix)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(ix)? {
            let (k, _) = item.map_err(ix)?;
            out.push(
                k.value()
                    .try_into()
                    .map_err(|_| CoreError::Corrupt("inline key length"))?,
            );
        }
        Ok(out)
    }

    async fn visit_entries(
        &self,
        visit: &mut (dyn for<'k, 'v> FnMut(&'k EntryKey, &'v [u8]) -> Result<()> + Send),
    ) -> Result<()> {
        // One read transaction is one snapshot (redb is MVCC: writers go on meanwhile).
        let r = self.db.current()?.begin_read().map_err(ix)?;
        let t = r.open_table(ENTRIES).map_err(ix)?;
        for item in t.iter().map_err(ix)? {
            let (k, v) = item.map_err(ix)?;
            let key: EntryKey = k
                .value()
                .try_into()
                .map_err(|_| CoreError::Corrupt("index key length"))?;
            visit(&key, v.value())?;
        }
        Ok(())
    }

    async fn accept_digest(&self) -> Result<DigestCheck> {
        let db = self.db.current()?;
        let key = self.digest.clone();
        let changes = self.changes.clone();
        // redb runs one write transaction at a time: this one is serialised with the
        // committer's groups, so no batch slips between the scan and the new digest.
        tokio::task::spawn_blocking(move || -> Result<DigestCheck> {
            let w = db.begin_write().map_err(ix)?;
            let sealed = {
                let entries = w.open_table(ENTRIES).map_err(ix)?;
                let mut meta = w.open_table(META).map_err(ix)?;
                let generation = meta
                    .get(META_DIGEST)
                    .map_err(ix)?
                    .and_then(|v| Accumulator::open(&key, v.value()))
                    .map_or(0, |a| a.generation());
                let mut acc = Accumulator::empty_with(Layout::INDEX);
                for item in entries.iter().map_err(ix)? {
                    let (k, v) = item.map_err(ix)?;
                    acc.insert(&key, k.value(), v.value());
                }
                for (name, v) in meta_rows(&meta)? {
                    acc.insert_meta(&key, &name, &v);
                }
                acc.set_generation(generation);
                acc.bump();
                let sealed = acc.seal(&key);
                meta.insert(META_DIGEST, sealed.as_slice()).map_err(ix)?;
                (sealed, acc)
            };
            let committed = w.commit().map_err(ix);
            // After the commit (as the committer does): a snapshot tagged with the new count
            // holds this transaction. Also after a failed one, like the committer.
            changes.fetch_add(1, Ordering::AcqRel);
            committed?;
            Ok(DigestCheck::compare(&key, Some(&sealed.0), &sealed.1))
        })
        .await
        .map_err(|e| CoreError::Index(format!("digest task failed: {e}")))?
    }

    async fn check_digest(&self) -> Result<DigestCheck> {
        let db = self.db.current()?;
        let key = self.digest.clone();
        // A full scan: seconds at a million entries, so not on the async workers.
        tokio::task::spawn_blocking(move || -> Result<DigestCheck> {
            // One read transaction: the digest and the entries of the same commit.
            let r = db.begin_read().map_err(ix)?;
            let meta = r.open_table(META).map_err(ix)?;
            let stored = meta
                .get(META_DIGEST)
                .map_err(ix)?
                .map(|v| v.value().to_vec());
            let t = r.open_table(ENTRIES).map_err(ix)?;
            let threads = redb_scan::parts(t.len().map_err(ix)?);
            let (mut found, odd_keys) = redb_scan::hash_entries(&t, &key, threads, ix)?;
            found.set_layout(Layout::INDEX);
            for (name, v) in meta_rows(&meta)? {
                found.insert_meta(&key, &name, &v);
            }
            let check = DigestCheck::compare(&key, stored.as_deref(), &found);
            Ok(if odd_keys { check.differs() } else { check })
        })
        .await
        .map_err(|e| CoreError::Index(format!("digest task failed: {e}")))?
    }

    async fn visit_snapshot(
        &self,
        visit: &mut (dyn for<'a> FnMut(SnapshotItem<'a>) -> Result<()> + Send),
    ) -> Result<()> {
        let r = self.db.current()?.begin_read().map_err(ix)?;
        let meta = r.open_table(META).map_err(ix)?;
        for item in meta.iter().map_err(ix)? {
            let (k, v) = item.map_err(ix)?;
            visit(SnapshotItem::Meta(k.value(), v.value()))?;
        }
        let t = r.open_table(ENTRIES).map_err(ix)?;
        for item in t.iter().map_err(ix)? {
            let (k, v) = item.map_err(ix)?;
            let key: EntryKey = k
                .value()
                .try_into()
                .map_err(|_| CoreError::Corrupt("index key length"))?;
            visit(SnapshotItem::Entry(&key, v.value()))?;
        }
        let t = r.open_table(INLINE).map_err(ix)?;
        for item in t.iter().map_err(ix)? {
            let (k, v) = item.map_err(ix)?;
            let id: ContentId = k
                .value()
                .try_into()
                .map_err(|_| CoreError::Corrupt("inline key length"))?;
            visit(SnapshotItem::Inline(&id, v.value()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: u8, v: &[u8]) -> Batch {
        Batch {
            ops: vec![Op::PutEntry([k; 32], v.to_vec())],
            ..Default::default()
        }
    }

    /// After the device fails a commit's write-out (EIO at its fsync: the commit may be in
    /// the kernel's cache and not on the disk), no later write goes through this index, not
    /// even the empty batch with which gc settles commits of unknown outcome (gc then
    /// refuses instead of deleting blobs by what the cache says). Before, the committer
    /// reopened the database (reading the failed commit back from the cache) and went on.
    /// A full disk still recovers: see disk_full.rs in efs-server.
    #[tokio::test]
    async fn no_write_goes_through_after_the_device_fails_a_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let key = DigestKey::from_root(&efs_format::Key32::random(), &[1; 16]);
        let ix = RedbIndex::open(&tmp.path().join("index.redb"), key).unwrap();
        assert!(ix.commit(put(1, b"one")).await.unwrap());
        ix.db.fail_next_sync.store(true, Ordering::SeqCst);
        let e = ix.commit(put(2, b"two")).await.unwrap_err().to_string();
        assert!(e.contains("reboot the machine"), "{e}");
        for b in [put(3, b"three"), Batch::default()] {
            let e = ix.commit(b).await.unwrap_err().to_string();
            assert!(e.contains("takes no more writes"), "{e}");
        }
        assert_eq!(ix.get_entry(&[3; 32]).await.unwrap(), None);
        // Reads go on.
        assert_eq!(
            ix.get_entry(&[1; 32]).await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
    }
}
