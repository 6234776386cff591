//! Blob storage: large files' encrypted content, named by random ids.
//!
//! The trait is what an S3-compatible store will implement later; [`LocalBlobStore`] is
//! the embedded default: a sharded directory tree (`blobs/3f/12/3f12de0f…`, 65,536 leaf
//! directories so that none holds more than 65,536 files below four billion blobs), with
//! the write protocol of DESIGN.md: temporary file → fsync → rename → fsync directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{CoreError, Result};
use crate::index::ContentId;

/// Writes one blob; nothing is visible under its id until [`BlobWriter::finish`].
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, data: Vec<u8>) -> Result<()>;
    /// Makes the blob durable and visible under its id.
    async fn finish(self: Box<Self>) -> Result<()>;
    /// Drops the partial blob.
    async fn abort(self: Box<Self>);
}

/// Reads one blob at any offset.
#[async_trait]
pub trait BlobReader: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// True if the blob is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Exactly `len` bytes at `offset` (an error if the blob is shorter).
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>>;
}

/// A store of blobs.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Starts writing blob `id`.
    async fn create(&self, id: &ContentId) -> Result<Box<dyn BlobWriter>>;
    /// Opens blob `id`; [`CoreError::NotFound`] if absent.
    async fn open(&self, id: &ContentId) -> Result<Arc<dyn BlobReader>>;
    /// Removes blob `id` (absent is not an error).
    async fn delete(&self, id: &ContentId) -> Result<()>;
    /// Every blob id with its age in seconds (fsck, gc).
    async fn list(&self) -> Result<Vec<(ContentId, u64)>>;
    /// Removes partial writes (left by a crash) older than `older_than_secs`; returns how
    /// many. Stores without partial writes keep the default.
    async fn remove_stale_partials(&self, older_than_secs: u64) -> Result<u64> {
        let _ = older_than_secs;
        Ok(0)
    }
}

/// Blobs in a sharded local directory.
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// Uses (and creates) `root`, with `root/tmp` for partial writes.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path_of(&self, id: &ContentId) -> PathBuf {
        let h = hex::encode(id);
        self.root.join(&h[0..2]).join(&h[2..4]).join(h)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Io(std::io::Error::other(e.to_string())))?
}

/// Dirty bytes after which a writer starts an fdatasync in the background, so that the disk
/// writes while more content arrives and the final fsync finds little left to do. Without
/// it the kernel starts writing only at its dirty thresholds (gigabytes on a large
/// machine) and the final fsync of a large blob wrote the whole of it at once.
const SYNC_AHEAD: u64 = 32 << 20;

type Pending<T> = tokio::task::JoinHandle<Result<T>>;

/// Writes a blob to `tmp` with a one-deep pipeline: `write` hands a chunk to a blocking
/// thread and returns; the next `write` (or `finish`) waits for it first. So receiving and
/// sealing the next chunk overlaps the `write(2)` of this one, with at most one chunk in
/// flight.
struct LocalWriter {
    file: Option<std::fs::File>,
    /// The write in flight; it hands the file back.
    pending: Option<Pending<std::fs::File>>,
    /// The background fdatasync in flight (see [`SYNC_AHEAD`]).
    syncing: Option<Pending<()>>,
    /// Bytes written since the last background fdatasync started.
    unsynced: u64,
    /// Set once the blob is in place: from then on `tmp` is not ours to remove.
    finished: bool,
    tmp: PathBuf,
    dest: PathBuf,
}

fn joined<T>(r: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    r.map_err(|e| CoreError::Io(std::io::Error::other(e.to_string())))?
}

impl LocalWriter {
    /// Waits for the write in flight, if any, and takes the file back.
    async fn settle(&mut self) -> Result<()> {
        if let Some(p) = self.pending.take() {
            self.file = Some(joined(p.await)?);
        }
        Ok(())
    }

    /// Waits for the background fdatasync, if any (its error is the upload's).
    async fn settle_sync(&mut self) -> Result<()> {
        if let Some(s) = self.syncing.take() {
            joined(s.await)?;
        }
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for LocalWriter {
    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        use std::io::Write;
        self.settle().await?;
        self.unsynced += data.len() as u64;
        if self.unsynced >= SYNC_AHEAD && self.syncing.as_ref().is_none_or(|s| s.is_finished()) {
            self.settle_sync().await?;
            // Everything written so far (the file is back: no write is in flight).
            let g = self
                .file
                .as_ref()
                .ok_or(CoreError::Corrupt("blob writer closed"))?
                .try_clone()?;
            self.syncing = Some(tokio::task::spawn_blocking(move || Ok(g.sync_data()?)));
            self.unsynced = data.len() as u64;
        }
        let mut f = self
            .file
            .take()
            .ok_or(CoreError::Corrupt("blob writer closed"))?;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            f.write_all(&data)?;
            Ok(f)
        }));
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        // On an error `Drop` removes the temporary file.
        self.settle().await?;
        self.settle_sync().await?;
        let f = self
            .file
            .take()
            .ok_or(CoreError::Corrupt("blob writer closed"))?;
        let tmp = self.tmp.clone();
        let dest = self.dest.clone();
        let res = blocking(move || {
            f.sync_all()?;
            drop(f);
            let dir = dest.parent().expect("a blob path has a shard directory");
            std::fs::create_dir_all(dir)?;
            std::fs::rename(&tmp, &dest)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        })
        .await;
        // On success the blob is in place; on failure `Drop` removes the temporary file.
        self.finished = res.is_ok();
        res
    }

    async fn abort(mut self: Box<Self>) {
        // A write in flight finishes first, so the file is not removed under it.
        // `Drop` then removes the temporary file.
        let _ = self.settle().await;
        let _ = self.settle_sync().await;
    }
}

impl Drop for LocalWriter {
    /// A writer dropped without finish (a cancelled upload, or an error on the way) leaves
    /// no temporary file. (A write still in flight then completes into the unlinked file,
    /// which the kernel frees when that thread closes it.)
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads one blob through its own open file (so a blob unlinked by an overwrite stays
/// readable until the reader is dropped).
struct LocalReader {
    file: Arc<std::fs::File>,
    len: u64,
}

/// Reads what the page cache holds of `buf.len()` bytes at `offset` without blocking:
/// `preadv2(RWF_NOWAIT)` copies cached pages and stops (or fails with `EAGAIN`) where the
/// disk would have to be read. Returns the bytes read; the caller reads the rest on the
/// blocking pool. Handing every read to that pool cost a thread wake-up and a context
/// switch per read: reading cached blobs on the async thread made GET 1 MiB with the cache
/// off about 11 % faster (docs/benchmarks.md). A cold read goes to the blocking pool (as far
/// as the kernel allows: `RWF_NOWAIT` may still start readahead, which can wait briefly for
/// the filesystem's own metadata).
#[cfg(target_os = "linux")]
fn read_cached(file: &std::fs::File, buf: &mut [u8], offset: u64) -> usize {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    let mut done = 0;
    while done < buf.len() {
        let mut iov = [std::io::IoSliceMut::new(&mut buf[done..])];
        match preadv2(file, &mut iov, offset + done as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            // EAGAIN (not cached), EOPNOTSUPP (a kernel or filesystem without NOWAIT),
            // or a real error, which the blocking read reports.
            Err(_) => break,
        }
    }
    done
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &std::fs::File, _buf: &mut [u8], _offset: u64) -> usize {
    0
}

#[async_trait]
impl BlobReader for LocalReader {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let cached = read_cached(&self.file, &mut buf, offset);
        if cached == len {
            return Ok(buf);
        }
        let f = self.file.clone();
        blocking(move || {
            use std::os::unix::fs::FileExt;
            // An end of file before `len` bytes is `UnexpectedEof`.
            f.read_exact_at(&mut buf[cached..], offset + cached as u64)?;
            Ok(buf)
        })
        .await
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn create(&self, id: &ContentId) -> Result<Box<dyn BlobWriter>> {
        let tmp = self.root.join("tmp").join(hex::encode(id));
        let dest = self.path_of(id);
        let tmp2 = tmp.clone();
        let file = blocking(move || {
            Ok(std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp2)?)
        })
        .await?;
        Ok(Box::new(LocalWriter {
            file: Some(file),
            pending: None,
            syncing: None,
            unsynced: 0,
            finished: false,
            tmp,
            dest,
        }))
    }

    async fn open(&self, id: &ContentId) -> Result<Arc<dyn BlobReader>> {
        let p = self.path_of(id);
        blocking(move || match std::fs::File::open(&p) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Arc::new(LocalReader {
                    file: Arc::new(f),
                    len,
                }) as Arc<dyn BlobReader>)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CoreError::NotFound),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn delete(&self, id: &ContentId) -> Result<()> {
        let p = self.path_of(id);
        blocking(move || match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn remove_stale_partials(&self, older_than_secs: u64) -> Result<u64> {
        let tmp = self.root.join("tmp");
        blocking(move || {
            let now = std::time::SystemTime::now();
            let mut n = 0;
            for f in std::fs::read_dir(&tmp)? {
                let f = f?;
                let age = f
                    .metadata()?
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                if age >= older_than_secs {
                    match std::fs::remove_file(f.path()) {
                        Ok(()) => n += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Ok(n)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<(ContentId, u64)>> {
        let root = self.root.clone();
        blocking(move || {
            let mut out = Vec::new();
            let now = std::time::SystemTime::now();
            for a in std::fs::read_dir(&root)? {
                let a = a?;
                if a.file_name() == "tmp" || !a.file_type()?.is_dir() {
                    continue;
                }
                for b in std::fs::read_dir(a.path())? {
                    let b = b?;
                    for f in std::fs::read_dir(b.path())? {
                        let f = f?;
                        let name = f.file_name();
                        let Some(id) = name
                            .to_str()
                            .and_then(|s| hex::decode(s).ok())
                            .and_then(|v| <ContentId>::try_from(v).ok())
                        else {
                            continue;
                        };
                        let age = f
                            .metadata()?
                            .modified()
                            .ok()
                            .and_then(|m| now.duration_since(m).ok())
                            .map(|d| d.as_secs())
                            .unwrap_or(0);
                        out.push((id, age));
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_files(root: &Path) -> usize {
        std::fs::read_dir(root.join("tmp")).unwrap().count()
    }

    /// Past [`SYNC_AHEAD`], so a background fdatasync runs while writes are still in flight.
    fn chunks() -> Vec<Vec<u8>> {
        (0..40u8).map(|i| vec![i; 1 << 20]).collect()
    }

    #[tokio::test]
    async fn a_finished_blob_reads_back_and_leaves_no_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(t.path()).unwrap();
        let id = [7u8; 16];
        let mut w = store.create(&id).await.unwrap();
        for c in chunks() {
            w.write(c).await.unwrap();
        }
        w.finish().await.unwrap();
        assert_eq!(tmp_files(t.path()), 0);
        let r = store.open(&id).await.unwrap();
        assert_eq!(r.len(), 40 << 20);
        for (i, c) in chunks().iter().enumerate() {
            assert_eq!(&r.read_at((i as u64) << 20, 1 << 20).await.unwrap(), c);
        }
        // Reading past the end is an error, not a short buffer.
        assert!(r.read_at((40 << 20) - 10, 20).await.is_err());
    }

    /// A blob the page cache does not hold is not read on the async thread (that would
    /// block it on the disk) but on the blocking pool, and reads back the same; so does one
    /// the cache holds only in part.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_blob_out_of_the_page_cache_is_read_on_the_blocking_pool() {
        use rustix::fs::{Advice, fadvise};
        let t = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(t.path()).unwrap();
        let id = [9u8; 16];
        let mut w = store.create(&id).await.unwrap();
        let content: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
        w.write(content.clone()).await.unwrap();
        // Finished means fsynced: the cached pages are clean and can be dropped.
        w.finish().await.unwrap();
        let path = store.path_of(&id);
        // tmpfs keeps every page in memory: there is no disk to fall back to, nothing to test.
        let on_tmpfs = rustix::fs::statfs(&path).unwrap().f_type as i64 == 0x0102_1994;
        if on_tmpfs {
            eprintln!("skipped: the temporary directory is on tmpfs (no page can be evicted)");
            return;
        }
        let evict = || {
            let f = std::fs::File::open(&path).unwrap();
            fadvise(&f, 0, None, Advice::DontNeed).unwrap();
        };
        evict();
        let f = std::fs::File::open(&path).unwrap();
        let mut probe = vec![0u8; 1 << 20];
        assert!(
            read_cached(&f, &mut probe, 0) < probe.len(),
            "an evicted blob must not be read without blocking"
        );
        evict();
        let r = store.open(&id).await.unwrap();
        assert_eq!(r.read_at(0, 4 << 20).await.unwrap(), content);
        // Evicted again, then a first read caches the start (and what the kernel reads
        // ahead): a longer read is served partly from the cache, partly from the disk.
        evict();
        assert_eq!(r.read_at(0, 1 << 20).await.unwrap(), &content[..1 << 20]);
        assert_eq!(
            r.read_at(1000, (3 << 20) + 5).await.unwrap(),
            &content[1000..(3 << 20) + 1005]
        );
        // Cached now: the whole read is served without the blocking pool.
        let mut all = vec![0u8; 4 << 20];
        assert_eq!(read_cached(&f, &mut all, 0), 4 << 20);
        assert_eq!(all, content);
    }

    #[tokio::test]
    async fn an_aborted_or_dropped_writer_leaves_no_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(t.path()).unwrap();
        let mut w = store.create(&[1u8; 16]).await.unwrap();
        for c in chunks() {
            w.write(c).await.unwrap();
        }
        assert_eq!(tmp_files(t.path()), 1);
        w.abort().await;
        assert_eq!(tmp_files(t.path()), 0);
        // Dropped with a write still in flight (a cancelled upload).
        let mut w = store.create(&[2u8; 16]).await.unwrap();
        for c in chunks().into_iter().take(3) {
            w.write(c).await.unwrap();
        }
        drop(w);
        assert_eq!(tmp_files(t.path()), 0);
        assert!(matches!(
            store.open(&[2u8; 16]).await.err(),
            Some(CoreError::NotFound)
        ));
    }
}
