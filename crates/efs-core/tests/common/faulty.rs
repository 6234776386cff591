//! Fault-injecting wrappers around the storage traits (redb's `crash_consistency.rs` and
//! garage's `db/test.rs` idea): a [`FaultyBlobStore`] and a [`FaultyIndex`] pass every call
//! to a real implementation until a fault is armed, then fail the way a disk does: an I/O
//! error on the Nth write, a failed fsync, a full disk (ENOSPC).
//!
//! A fault is one-shot: it fires once and disarms itself, so that a test can check that
//! the very next operation works again.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use efs_core::blob::{BlobReader, BlobStore, BlobWriter};
use efs_core::index::{Batch, ContentId, DirTag, EntryKey, Index};
use efs_core::{CoreError, Result};

/// `ENOSPC` on Linux: what `write(2)` returns on a full disk.
pub const ENOSPC: i32 = 28;
/// `EIO` on Linux: what a failing disk returns (and a failed `fsync`).
pub const EIO: i32 = 5;

/// One armed fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The Nth (1-based) `BlobWriter::write` call from now fails with EIO.
    FailWrite { nth: u32 },
    /// The next `BlobWriter::finish` fails with EIO before the blob is made visible, as a
    /// failed `fsync` of the temporary file does.
    FailFsync,
    /// Blob writes fail with ENOSPC once this many more bytes have been written.
    DiskFull { after_bytes: u64 },
    /// The next index commit fails with ENOSPC (nothing applied), as a redb commit on a
    /// full disk does.
    CommitNoSpace,
    /// The next index commit is applied and durable, yet reported as failed with EIO: a
    /// redb commit whose final sync fails after its new header was written, recovered when
    /// the database is reopened. The caller cannot tell this from [`Fault::CommitNoSpace`].
    CommitLandsThenEio,
    /// The next index commit fails with EIO and is not seen by reads, then lands just
    /// before the commit after it: a redb commit whose final sync failed after its new
    /// header was written, recovered when the committer reopens the database for the next
    /// batch (reads of the failed database do not show it meanwhile).
    CommitLandsAtReopen,
}

/// The switch shared by the wrappers and the test.
#[derive(Default, Clone)]
pub struct Faults(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    armed: Option<Fault>,
    writes_seen: u32,
    bytes_seen: u64,
    fired: u32,
    /// The batch of a [`Fault::CommitLandsAtReopen`], applied before the next commit.
    pending: Option<Batch>,
}

impl Faults {
    /// Arms `f` (replacing any armed fault) and resets the counters.
    pub fn arm(&self, f: Fault) {
        let mut s = self.0.lock().unwrap();
        s.armed = Some(f);
        s.writes_seen = 0;
        s.bytes_seen = 0;
    }

    /// True while a fault is armed and has not fired.
    pub fn armed(&self) -> bool {
        self.0.lock().unwrap().armed.is_some()
    }

    /// How many faults fired so far.
    pub fn fired(&self) -> u32 {
        self.0.lock().unwrap().fired
    }

    fn on_write(&self, len: usize) -> Option<std::io::Error> {
        let mut s = self.0.lock().unwrap();
        s.writes_seen += 1;
        s.bytes_seen += len as u64;
        let fire = match s.armed {
            Some(Fault::FailWrite { nth }) => s.writes_seen >= nth,
            Some(Fault::DiskFull { after_bytes }) => s.bytes_seen > after_bytes,
            _ => false,
        };
        if !fire {
            return None;
        }
        let code = if matches!(s.armed, Some(Fault::DiskFull { .. })) {
            ENOSPC
        } else {
            EIO
        };
        s.armed = None;
        s.fired += 1;
        Some(std::io::Error::from_raw_os_error(code))
    }

    fn take_if(&self, f: Fault) -> bool {
        let mut s = self.0.lock().unwrap();
        if s.armed == Some(f) {
            s.armed = None;
            s.fired += 1;
            true
        } else {
            false
        }
    }
}

/// A [`BlobStore`] that injects [`Fault`]s into the writes of `inner`.
pub struct FaultyBlobStore {
    pub inner: Arc<dyn BlobStore>,
    pub faults: Faults,
}

struct FaultyWriter {
    inner: Option<Box<dyn BlobWriter>>,
    faults: Faults,
}

#[async_trait]
impl BlobWriter for FaultyWriter {
    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        if let Some(e) = self.faults.on_write(data.len()) {
            return Err(CoreError::Io(e));
        }
        self.inner.as_mut().expect("not finished").write(data).await
    }

    fn unwritten(&self) -> u64 {
        self.inner.as_ref().map_or(0, |w| w.unwritten())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let inner = self.inner.take().expect("finished once");
        if self.faults.take_if(Fault::FailFsync) {
            // What LocalWriter does when its fsync fails: the temporary file goes away and
            // nothing becomes visible under the id.
            inner.abort().await;
            return Err(CoreError::Io(std::io::Error::from_raw_os_error(EIO)));
        }
        inner.finish().await
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(w) = self.inner.take() {
            w.abort().await;
        }
    }
}

#[async_trait]
impl BlobStore for FaultyBlobStore {
    async fn create(&self, id: &ContentId) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(FaultyWriter {
            inner: Some(self.inner.create(id).await?),
            faults: self.faults.clone(),
        }))
    }
    async fn open(&self, id: &ContentId) -> Result<Arc<dyn BlobReader>> {
        self.inner.open(id).await
    }
    async fn delete(&self, id: &ContentId) -> Result<()> {
        self.inner.delete(id).await
    }
    async fn list(&self) -> Result<Vec<(ContentId, u64)>> {
        self.inner.list().await
    }
    async fn remove_partial(&self, id: &ContentId) -> Result<()> {
        self.inner.remove_partial(id).await
    }
    async fn remove_stale_partials(
        &self,
        older_than_secs: u64,
        writing: &efs_core::blob::RunningUploads,
    ) -> Result<u64> {
        self.inner
            .remove_stale_partials(older_than_secs, writing)
            .await
    }
}

/// An [`Index`] whose commits fail on [`Fault::CommitNoSpace`] and
/// [`Fault::CommitLandsThenEio`].
pub struct FaultyIndex {
    pub inner: Arc<dyn Index>,
    pub faults: Faults,
}

#[async_trait]
impl Index for FaultyIndex {
    async fn get_entry(&self, key: &EntryKey) -> Result<Option<Vec<u8>>> {
        self.inner.get_entry(key).await
    }
    fn changes(&self) -> u64 {
        self.inner.changes()
    }
    async fn list_dir(
        &self,
        dir: &DirTag,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, Vec<u8>)>> {
        self.inner.list_dir(dir, after, limit).await
    }
    async fn get_inline(&self, id: &ContentId) -> Result<Option<Vec<u8>>> {
        self.inner.get_inline(id).await
    }
    async fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_meta(name).await
    }
    async fn commit(&self, batch: Batch) -> Result<bool> {
        if self.faults.take_if(Fault::CommitNoSpace) {
            return Err(CoreError::Io(std::io::Error::from_raw_os_error(ENOSPC)));
        }
        if self.faults.take_if(Fault::CommitLandsThenEio) {
            self.inner.commit(batch).await?;
            return Err(CoreError::Io(std::io::Error::from_raw_os_error(EIO)));
        }
        if self.faults.take_if(Fault::CommitLandsAtReopen) {
            self.faults.0.lock().unwrap().pending = Some(batch);
            return Err(CoreError::Io(std::io::Error::from_raw_os_error(EIO)));
        }
        let pending = self.faults.0.lock().unwrap().pending.take();
        if let Some(p) = pending {
            self.inner.commit(p).await?;
        }
        self.inner.commit(batch).await
    }
    async fn scan_entries(
        &self,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, Vec<u8>)>> {
        self.inner.scan_entries(after, limit).await
    }
    async fn inline_ids(&self) -> Result<Vec<ContentId>> {
        self.inner.inline_ids().await
    }
    async fn visit_entries(
        &self,
        visit: &mut (dyn for<'k, 'v> FnMut(&'k EntryKey, &'v [u8]) -> Result<()> + Send),
    ) -> Result<()> {
        self.inner.visit_entries(visit).await
    }
    async fn visit_snapshot(
        &self,
        visit: &mut (dyn for<'a> FnMut(efs_core::index::SnapshotItem<'a>) -> Result<()> + Send),
    ) -> Result<()> {
        self.inner.visit_snapshot(visit).await
    }
    async fn check_digest(&self) -> Result<efs_core::digest::DigestCheck> {
        self.inner.check_digest().await
    }
    async fn accept_digest(&self) -> Result<efs_core::digest::DigestCheck> {
        self.inner.accept_digest().await
    }
}
