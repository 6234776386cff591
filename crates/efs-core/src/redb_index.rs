//! The embedded index on redb, with group commit.
//!
//! redb allows one write transaction at a time and each durable commit costs an fsync.
//! A single committer thread therefore drains every batch waiting at that moment,
//! checks and applies each in one transaction, commits once, and answers them all:
//! under load, many writes share one fsync; alone, a write costs exactly one.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::error::{CoreError, Result};
use crate::index::{Batch, ContentId, DirTag, EntryKey, Index, Op, SnapshotItem};

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const INLINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inline");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Most batches folded into one transaction.
const MAX_GROUP: usize = 256;

type Reply = oneshot::Sender<Result<bool>>;

/// redb-backed [`Index`].
pub struct RedbIndex {
    db: Arc<Database>,
    tx: mpsc::Sender<(Batch, Reply)>,
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
    }
}

fn ix<E: std::fmt::Display>(e: E) -> CoreError {
    CoreError::Index(e.to_string())
}

impl RedbIndex {
    /// Opens or creates the index file.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => CoreError::Index(
                "the index is open in another process (is efs-server running on this data dir?)"
                    .into(),
            ),
            e => ix(e),
        })?;
        // Create the tables once so readers never see "table does not exist".
        let w = db.begin_write().map_err(ix)?;
        {
            w.open_table(ENTRIES).map_err(ix)?;
            w.open_table(INLINE).map_err(ix)?;
            w.open_table(META).map_err(ix)?;
        }
        w.commit().map_err(ix)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<(Batch, Reply)>();
        let db2 = db.clone();
        let committer = std::thread::Builder::new()
            .name("efs-index-commit".into())
            .spawn(move || committer(db2, rx))
            .map_err(CoreError::Io)?;
        Ok(Self {
            db,
            tx,
            committer: Some(committer),
        })
    }
}

fn committer(db: Arc<Database>, rx: mpsc::Receiver<(Batch, Reply)>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        let outcome = apply_group(&db, &group);
        match outcome {
            Ok(results) => {
                for ((_, reply), ok) in group.into_iter().zip(results) {
                    let _ = reply.send(Ok(ok));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (_, reply) in group {
                    let _ = reply.send(Err(CoreError::Index(msg.clone())));
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

fn apply_group(db: &Database, group: &[(Batch, Reply)]) -> Result<Vec<bool>> {
    let w = db.begin_write().map_err(ix)?;
    let mut results = Vec::with_capacity(group.len());
    {
        let mut entries = w.open_table(ENTRIES).map_err(ix)?;
        let mut inline = w.open_table(INLINE).map_err(ix)?;
        let mut meta = w.open_table(META).map_err(ix)?;
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
                for op in &batch.ops {
                    match op {
                        Op::PutEntry(k, v) => {
                            entries.insert(k.as_slice(), v.as_slice()).map_err(ix)?;
                        }
                        Op::DeleteEntry(k) => {
                            entries.remove(k.as_slice()).map_err(ix)?;
                        }
                        Op::PutInline(k, v) => {
                            inline.insert(k.as_slice(), v.as_slice()).map_err(ix)?;
                        }
                        Op::DeleteInline(k) => {
                            inline.remove(k.as_slice()).map_err(ix)?;
                        }
                        Op::PutMeta(k, v) => {
                            meta.insert(k.as_str(), v.as_slice()).map_err(ix)?;
                        }
                    }
                }
            }
            results.push(ok);
        }
    }
    w.commit().map_err(ix)?;
    Ok(results)
}

#[async_trait]
impl Index for RedbIndex {
    async fn get_entry(&self, key: &EntryKey) -> Result<Option<Vec<u8>>> {
        let r = self.db.begin_read().map_err(ix)?;
        let t = r.open_table(ENTRIES).map_err(ix)?;
        Ok(t.get(key.as_slice())
            .map_err(ix)?
            .map(|v| v.value().to_vec()))
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
        let r = self.db.begin_read().map_err(ix)?;
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
        let r = self.db.begin_read().map_err(ix)?;
        let t = r.open_table(INLINE).map_err(ix)?;
        Ok(t.get(id.as_slice())
            .map_err(ix)?
            .map(|v| v.value().to_vec()))
    }

    async fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let r = self.db.begin_read().map_err(ix)?;
        let t = r.open_table(META).map_err(ix)?;
        Ok(t.get(name).map_err(ix)?.map(|v| v.value().to_vec()))
    }

    async fn commit(&self, batch: Batch) -> Result<bool> {
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
        let r = self.db.begin_read().map_err(ix)?;
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
        let r = self.db.begin_read().map_err(ix)?;
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
        let r = self.db.begin_read().map_err(ix)?;
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

    async fn visit_snapshot(
        &self,
        visit: &mut (dyn for<'a> FnMut(SnapshotItem<'a>) -> Result<()> + Send),
    ) -> Result<()> {
        let r = self.db.begin_read().map_err(ix)?;
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
