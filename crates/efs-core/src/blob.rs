//! Blob storage: large files' encrypted content, named by random ids.
//!
//! The trait is what an S3-compatible store will implement later; [`LocalBlobStore`] is
//! the embedded default: a sharded directory tree (`blobs/3f/12/3f12de0f…`, 65,536 leaf
//! directories so that none holds more than 65,536 files below four billion blobs), with
//! the write protocol of DESIGN.md: temporary file → fsync → rename → fsync directory.

use std::collections::HashSet;
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
    /// The writer's own buffer, for a caller that produces the next bytes itself (sealing a
    /// segment) and can append them there instead of handing them to
    /// [`BlobWriter::write`], which would copy them once more. Append only, at most
    /// [`TAIL_MAX`] bytes, then call [`BlobWriter::wrote_tail`] before anything else.
    /// `None` (the default): use `write`.
    fn tail(&mut self) -> Option<&mut Vec<u8>> {
        None
    }
    /// Takes in what was appended to [`BlobWriter::tail`] (writing out a full buffer).
    async fn wrote_tail(&mut self) -> Result<()> {
        Ok(())
    }
    /// Bytes taken in but not yet handed to the kernel: in this writer's buffers, or in a
    /// write still in flight. A `statvfs` of the volume does not count them yet, so a
    /// free-space check adds them (the server's reserve). 0 (the default): none held.
    fn unwritten(&self) -> u64 {
        0
    }
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
    /// The same `len` bytes handed to `sink` in order, as one or more borrowed pieces, for a
    /// caller that transforms them into a buffer of its own anyway (decrypts them) and so
    /// needs no copy of them first. `Ok(false)`: this reader has no such path (now), so use
    /// [`BlobReader::read_at`] (the default), discarding whatever `sink` was given (a direct
    /// read the filesystem refused after some pieces). An error from `sink` ends the read and
    /// is returned; a blob shorter than asked is an error, possibly after some pieces. Calls
    /// on one reader take turns (`sink` runs while the reader's windows are held).
    async fn lend_at(&self, offset: u64, len: usize, sink: &mut PieceSink<'_>) -> Result<bool> {
        let _ = (offset, len, sink);
        Ok(false)
    }
}

/// What [`BlobReader::lend_at`] hands each piece to.
pub type PieceSink<'a> = dyn FnMut(&[u8]) -> Result<()> + Send + 'a;

/// A store of blobs.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Starts writing blob `id`.
    async fn create(&self, id: &ContentId) -> Result<Box<dyn BlobWriter>>;
    /// Opens blob `id`; [`CoreError::NotFound`] if absent.
    async fn open(&self, id: &ContentId) -> Result<Arc<dyn BlobReader>>;
    /// How many file descriptors a reader of a blob of `len` bytes (as stored) may hold open
    /// for as long as it lives, for a caller that bounds the files open at once (the server:
    /// docs/operations.md, "Connections and open files"). One by default.
    fn files_per_reader(&self, len: u64) -> u32 {
        let _ = len;
        1
    }
    /// Removes blob `id` (absent is not an error).
    async fn delete(&self, id: &ContentId) -> Result<()>;
    /// [`BlobStore::delete`], saying whether the blob was there (false: already gone), so
    /// that gc counts only what it removed. Stores that cannot tell say true.
    async fn delete_present(&self, id: &ContentId) -> Result<bool> {
        self.delete(id).await.map(|()| true)
    }
    /// Every blob id with its age in seconds (fsck, gc).
    async fn list(&self) -> Result<Vec<(ContentId, u64)>>;
    /// Removes partial writes (left by a crash) older than `older_than_secs`, except those of
    /// the blobs in `writing` (uploads still running, looked up right before each removal);
    /// returns how many. Stores without partial writes keep the default.
    async fn remove_stale_partials(
        &self,
        older_than_secs: u64,
        writing: &RunningUploads,
    ) -> Result<u64> {
        let _ = (older_than_secs, writing);
        Ok(0)
    }
    /// The partial writes (left by a crash) there are now, except those of the blobs in
    /// `writing`: how many, and their bytes (fsck says them; gc removes them). Stores without
    /// partial writes keep the default.
    async fn partials(&self, writing: &RunningUploads) -> Result<(u64, u64)> {
        let _ = writing;
        Ok((0, 0))
    }
    /// Removes the partial write of blob `id` a crash left, if any: only for a caller that
    /// knows nothing writes `id` now (a restore, which reuses the backup's content ids and
    /// runs alone; a retry after a crashed restore found the old one in its way). Stores
    /// without partial writes keep the default.
    async fn remove_partial(&self, id: &ContentId) -> Result<()> {
        let _ = id;
        Ok(())
    }
}

/// The content ids of the uploads running in a filesystem (see `Filesystem::gc`): their
/// blobs and partial writes are not orphans, whatever their age.
pub type RunningUploads = Arc<std::sync::Mutex<HashSet<ContentId>>>;

/// Blobs in a sharded local directory.
pub struct LocalBlobStore {
    root: PathBuf,
    /// Write blobs with `O_DIRECT` where the filesystem allows it (see [`DirectWriter`]).
    direct: bool,
    /// Read blobs of this many bytes or more with `O_DIRECT` ([`DIRECT_READ_MIN`]; the
    /// tests lower it).
    direct_read_min: u64,
    /// Tests only: direct reads of windows at this offset or beyond fail with `EINVAL`, as
    /// on a filesystem that refuses them midway (no filesystem here does so on demand).
    #[cfg(test)]
    refuse_direct_from: Option<u64>,
    /// Places for direct-read windows ([`DIRECT_WINDOWS`]), shared by the store's readers.
    windows: Arc<tokio::sync::Semaphore>,
}

impl LocalBlobStore {
    /// Uses (and creates) `root`, with `root/tmp` for partial writes.
    pub fn open(root: &Path) -> Result<Self> {
        create_dir_all_synced(&root.join("tmp"))?;
        Ok(Self {
            root: root.to_path_buf(),
            direct: cfg!(target_os = "linux"),
            direct_read_min: DIRECT_READ_MIN,
            #[cfg(test)]
            refuse_direct_from: None,
            windows: window_budget(),
        })
    }

    /// The same store, its direct reads taking windows from `budget` (shared with other
    /// stores) instead of a budget of its own.
    pub(crate) fn sharing_windows(self, budget: Arc<tokio::sync::Semaphore>) -> Self {
        Self {
            windows: budget,
            ..self
        }
    }

    /// The same store writing every blob through the page cache (the tests compare both
    /// ways; production uses [`LocalBlobStore::open`]).
    #[cfg(test)]
    fn open_buffered(root: &Path) -> Result<Self> {
        Ok(Self {
            direct: false,
            ..Self::open(root)?
        })
    }

    /// Tests only: blobs of `direct_read_min` bytes or more read directly, and direct
    /// reads of windows at `refuse_from` or beyond refused with `EINVAL` (see
    /// `refuse_direct_from`).
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn refusing_direct_reads(
        root: &Path,
        direct_read_min: u64,
        refuse_from: u64,
    ) -> Result<Self> {
        Ok(Self {
            direct_read_min,
            refuse_direct_from: Some(refuse_from),
            ..Self::open(root)?
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
    /// Bytes of the write in flight (see [`BlobWriter::unwritten`]).
    in_flight: u64,
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
        self.in_flight = data.len() as u64;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            f.write_all(&data)?;
            Ok(f)
        }));
        Ok(())
    }

    fn unwritten(&self) -> u64 {
        match &self.pending {
            Some(p) if !p.is_finished() => self.in_flight,
            _ => 0,
        }
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
        let res = blocking(move || put_in_place(f, &tmp, &dest)).await;
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

/// Creates the temporary file of a new blob, with `O_DIRECT` if `direct` and the filesystem
/// takes it (tmpfs before Linux 6.6 and some FUSE filesystems refuse it with `EINVAL`: those
/// get the buffered writer). Returns the file and whether it is open for direct writes.
fn open_new(path: &Path, direct: bool) -> Result<(std::fs::File, bool)> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(target_os = "linux")]
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        let mut d = o.clone();
        d.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
        match d.open(path) {
            Ok(f) => return Ok((f, true)),
            Err(e) if is_einval(&e) => {
                // Some kernels create the file before they refuse the flag.
                let _ = std::fs::remove_file(path);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let _ = direct;
    Ok((o.open(path)?, false))
}

/// Opens a blob's file to read it: without following a symbolic link, without waiting (a
/// FIFO put in its place opens at once, and the caller refuses it as not a regular file,
/// rather than blocking its thread until a writer comes), and without moving its access
/// time ([`open_to_read`]).
fn open_blob_file(path: &Path) -> std::io::Result<std::fs::File> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::OFlags;
        open_to_read(path, OFlags::NOFOLLOW | OFlags::NONBLOCK)
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::fs::File::open(path)
    }
}

/// Opens `path` read-only with `flags` and `O_NOATIME`: a read that moved a blob's access
/// time would tell anyone with a copy of the data dir when each file was last read.
/// `O_NOATIME` is allowed to the file's owner, and dropped when refused (root without
/// `CAP_FOWNER` on another account's files, say).
#[cfg(target_os = "linux")]
fn open_to_read(path: &Path, flags: rustix::fs::OFlags) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags: rustix::fs::OFlags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(path)
    };
    match open(flags | rustix::fs::OFlags::NOATIME) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => open(flags),
        other => other,
    }
}

/// Opens an existing blob for direct reads; `None` where the filesystem refuses
/// `O_DIRECT`.
fn open_direct(path: &Path) -> Result<Option<std::fs::File>> {
    #[cfg(target_os = "linux")]
    {
        let opened = open_to_read(path, rustix::fs::OFlags::DIRECT);
        match opened {
            Ok(f) => Ok(Some(f)),
            Err(e) if is_einval(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Ok(None)
    }
}

/// The file `f` is open on, opened again for direct reads; `None` where the filesystem
/// refuses `O_DIRECT` (or `/proc` is not mounted). Through `/proc/self/fd/N`, not the
/// blob's path: an overwrite or delete may unlink the blob between the two opens, and the
/// reader must keep the version it opened (by path that was `ENOENT`, a 500).
fn reopen_direct(f: &std::fs::File) -> Result<Option<std::fs::File>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let own = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        match open_direct(&own) {
            Err(CoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            other => other,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = f;
        Ok(None)
    }
}

/// Tests only: true if `r` answers a `lend_at` with `Ok(false)` without calling the sink
/// (a reader that reads through the page cache, or that a refusal turned to it).
#[cfg(all(test, target_os = "linux"))]
pub(crate) async fn lends_nothing(r: &dyn BlobReader) -> bool {
    let mut called = false;
    let lent = r
        .lend_at(0, 100, &mut |_| {
            called = true;
            Ok(())
        })
        .await
        .unwrap();
    !lent && !called
}

/// Tests only: true if this filesystem takes direct reads of blob `id` (tmpfs before Linux
/// 6.6 and some FUSE filesystems do not).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn takes_direct_reads(store: &LocalBlobStore, id: &ContentId) -> bool {
    reopen_direct(&std::fs::File::open(store.path_of(id)).unwrap())
        .unwrap()
        .is_some()
}

/// Tests only: writes blob `id` with `bytes`; true if this filesystem then takes direct reads
/// of it (the tests of direct reads skip otherwise).
#[cfg(all(test, target_os = "linux"))]
pub(crate) async fn write_for_direct_reads(
    store: &LocalBlobStore,
    id: &ContentId,
    bytes: Vec<u8>,
) -> bool {
    let mut w = store.create(id).await.unwrap();
    w.write(bytes).await.unwrap();
    w.finish().await.unwrap();
    takes_direct_reads(store, id)
}

/// Tests only: the error [`is_einval`] recognises, for a refusal made on demand.
#[cfg(test)]
fn einval() -> std::io::Error {
    #[cfg(target_os = "linux")]
    {
        std::io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error())
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::io::Error::from(std::io::ErrorKind::InvalidInput)
    }
}

/// True for `EINVAL`: how a filesystem refuses `O_DIRECT` or a direct transfer's alignment.
fn is_einval(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = e;
        false
    }
}

/// Alignment of direct writes: their memory, file offset and length must be multiples of
/// the device's logical block size, which is 512 or 4096 bytes.
const DIRECT_ALIGN: usize = 4096;

/// Bytes per direct write. Measured here with `dd oflag=direct` into a new file, one write
/// in flight: 1 MiB 536 MB/s, 8 MiB 867 MB/s, 32 MiB 996 MB/s (docs/benchmarks-history.md). Two
/// buffers per upload (one filling, one being written) keep the memory per upload at 16 MiB.
pub(crate) const DIRECT_BUF: usize = 8 << 20;

/// Most bytes a caller may append to [`BlobWriter::tail`] at a time: one sealed segment
/// (64 KiB and its tag) with room to spare.
pub const TAIL_MAX: usize = 96 << 10;

/// Capacity of an [`AlignedBuf`]: the alignment padding, a full buffer, and one more
/// [`TAIL_MAX`] appended past it before the writer flushes.
const BUF_CAP: usize = DIRECT_ALIGN + DIRECT_BUF + TAIL_MAX;

/// Free [`AlignedBuf`]s kept for the next upload, so that a new upload reuses memory the
/// process has already touched instead of faulting in fresh pages (see [`DirectWriter`]).
static BUF_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// At most this many buffers stay in [`BUF_POOL`] (8 × 8 MiB): enough for four large
/// uploads or downloads at a time; more allocate and free their own.
const BUF_POOL_MAX: usize = 8;

/// A buffer of [`DIRECT_BUF`] bytes at a [`DIRECT_ALIGN`]-aligned address, filled from the
/// start. It holds sealed content only (ciphertext), never a key or plaintext. Safe code:
/// an over-allocated `Vec` whose bytes from `start` on (an aligned address) are the
/// buffer's contents; `v.len() - start` is how much it holds. The `Vec` is created with
/// [`BUF_CAP`] bytes of capacity so that filling it never reallocates (a writer still
/// checks the alignment before a direct write, in case a caller appended too much).
struct AlignedBuf {
    v: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    /// A `Vec` from the pool, or a new one (not zeroed: nothing reads it before it is
    /// written), and the offset of its first aligned byte.
    fn pooled() -> (Vec<u8>, usize) {
        let v = BUF_POOL
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| Vec::with_capacity(BUF_CAP));
        let start = v.as_ptr().align_offset(DIRECT_ALIGN);
        (v, start)
    }

    /// An empty buffer, to fill.
    fn take() -> Self {
        let (mut v, start) = Self::pooled();
        // Shorten first: `resize` only zeroes what it adds (the padding, below 4 KiB).
        v.truncate(start);
        v.resize(start, 0);
        Self { v, start }
    }

    /// A buffer holding [`DIRECT_BUF`] bytes (zeroes, or what its last user left), to read
    /// into. Zeroes only what a pooled `Vec` does not already hold.
    fn take_full() -> Self {
        let (mut v, start) = Self::pooled();
        v.resize(start + DIRECT_BUF, 0);
        Self { v, start }
    }

    fn len(&self) -> usize {
        self.v.len() - self.start
    }

    /// Copies as much of `data` as fits in [`DIRECT_BUF`] bytes; returns how many bytes.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(DIRECT_BUF.saturating_sub(self.len()));
        self.v.extend_from_slice(&data[..n]);
        n
    }

    fn is_full(&self) -> bool {
        self.len() >= DIRECT_BUF
    }

    fn filled(&self) -> &[u8] {
        &self.v[self.start..]
    }

    /// Empties the buffer (keeping its memory).
    fn clear(&mut self) {
        self.v.truncate(self.start);
    }

    /// True while the contents start at an aligned address (the `Vec` never reallocated).
    fn is_aligned(&self) -> bool {
        (self.v.as_ptr() as usize + self.start).is_multiple_of(DIRECT_ALIGN)
    }

    /// The same contents in a buffer whose start is aligned (a copy, if it is not).
    fn realigned(self) -> Self {
        if self.is_aligned() {
            return self;
        }
        let mut b = Self::take();
        b.v.extend_from_slice(self.filled());
        b
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(mut p) = BUF_POOL.lock()
            && p.len() < BUF_POOL_MAX
        {
            p.push(std::mem::take(&mut self.v));
        }
    }
}

/// Writes `data` at `offset`, directly while `direct`; a direct write the filesystem refuses
/// with `EINVAL` (an alignment it requires beyond [`DIRECT_ALIGN`]) clears `O_DIRECT` on the
/// file and is written through the page cache instead. Returns whether the file is still
/// direct.
fn write_at(f: &std::fs::File, data: &[u8], offset: u64, direct: bool) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    #[cfg(target_os = "linux")]
    if direct {
        match f.write_all_at(data, offset) {
            Ok(()) => return Ok(true),
            Err(e) if is_einval(&e) => set_buffered(f)?,
            Err(e) => return Err(e.into()),
        }
    }
    let _ = direct;
    f.write_all_at(data, offset)?;
    Ok(false)
}

/// Clears `O_DIRECT` on an open file.
#[cfg(target_os = "linux")]
fn set_buffered(f: &std::fs::File) -> Result<()> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let flags = fcntl_getfl(f).map_err(std::io::Error::from)?;
    fcntl_setfl(f, flags - OFlags::DIRECT).map_err(std::io::Error::from)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_buffered(_f: &std::fs::File) -> Result<()> {
    Ok(())
}

/// Writes a blob with `O_DIRECT`: sealed chunks are gathered into an aligned
/// [`DIRECT_BUF`]-byte buffer, and each full buffer goes to the disk in one write on a
/// blocking thread while the next one fills (one write in flight). The last, partial
/// buffer is written directly up to its last whole block, and its tail through the page
/// cache; then fsync, rename and directory fsync, as the buffered writer does.
///
/// Why not the page cache: a buffered write copies every byte into page-cache pages
/// the kernel must first allocate. On the virtual machines measured here (free memory
/// handed back to the host, "free page reporting"), touching those pages for the first time
/// faults in the host: in a series of 1 GiB PUTs the server's CPU per PUT grew from 1.3 s
/// to 3.1 s, 57 % of it in that copy (`copy_folio_from_iter_atomic`), and the PUT fell from
/// 645 to 392 MB/s. Direct writes reuse this process's own buffers (kept in [`BUF_POOL`]),
/// skip the copy and leave the page cache alone. The price: a blob just written is not in
/// the page cache, so its first read comes from the disk.
struct DirectWriter {
    /// `None` while a write is in flight (it hands the file back).
    file: Option<std::fs::File>,
    /// The buffer being filled (`None` only between a flush and the next buffer).
    buf: Option<AlignedBuf>,
    /// The write in flight: it hands back the file, the buffer and whether the file is
    /// still direct.
    pending: Option<Pending<(std::fs::File, AlignedBuf, bool)>>,
    /// Bytes of the write in flight (see [`BlobWriter::unwritten`]).
    in_flight: u64,
    /// File offset of the start of `buf`.
    offset: u64,
    /// False once the filesystem refused a direct write.
    direct: bool,
    /// Set once the blob is in place: from then on `tmp` is not ours to remove.
    finished: bool,
    tmp: PathBuf,
    dest: PathBuf,
}

impl DirectWriter {
    /// Waits for the write in flight, if any, and takes the file back; its buffer, emptied,
    /// is the next one to fill.
    async fn settle(&mut self) -> Result<Option<AlignedBuf>> {
        let Some(p) = self.pending.take() else {
            return Ok(None);
        };
        let (file, mut buf, direct) = joined(p.await)?;
        self.file = Some(file);
        self.direct = direct;
        buf.clear();
        Ok(Some(buf))
    }

    /// The file and the buffer being filled, taken out (no write may be in flight).
    fn take_parts(&mut self) -> Result<(std::fs::File, AlignedBuf)> {
        match (self.file.take(), self.buf.take()) {
            (Some(f), Some(b)) => Ok((f, b)),
            _ => Err(CoreError::Corrupt("blob writer closed")),
        }
    }

    /// Hands the full buffer to a blocking thread and starts filling another, with what
    /// was appended past [`DIRECT_BUF`] (through [`BlobWriter::tail`]).
    async fn flush_full(&mut self) -> Result<()> {
        let spare = self.settle().await?;
        let (f, mut buf) = self.take_parts()?;
        let mut next = spare.unwrap_or_else(AlignedBuf::take);
        let cut = buf.start + DIRECT_BUF;
        if buf.v.len() > cut {
            next.v.extend_from_slice(&buf.v[cut..]);
            buf.v.truncate(cut);
        }
        let buf = buf.realigned();
        let (offset, direct) = (self.offset, self.direct);
        self.offset += buf.len() as u64;
        self.in_flight = buf.len() as u64;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let direct = write_at(&f, buf.filled(), offset, direct)?;
            Ok((f, buf, direct))
        }));
        self.buf = Some(next);
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for DirectWriter {
    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        let mut rest = &data[..];
        while !rest.is_empty() {
            let buf = self
                .buf
                .as_mut()
                .ok_or(CoreError::Corrupt("blob writer closed"))?;
            rest = &rest[buf.fill(rest)..];
            if buf.is_full() {
                self.flush_full().await?;
            }
        }
        Ok(())
    }

    fn tail(&mut self) -> Option<&mut Vec<u8>> {
        self.buf.as_mut().map(|b| &mut b.v)
    }

    fn unwritten(&self) -> u64 {
        let filling = self.buf.as_ref().map_or(0, |b| b.len() as u64);
        match &self.pending {
            Some(p) if !p.is_finished() => filling + self.in_flight,
            _ => filling,
        }
    }

    async fn wrote_tail(&mut self) -> Result<()> {
        let buf = self
            .buf
            .as_ref()
            .ok_or(CoreError::Corrupt("blob writer closed"))?;
        if buf.v.len() < buf.start {
            return Err(CoreError::Corrupt("blob writer buffer shortened"));
        }
        while self.buf.as_ref().is_some_and(AlignedBuf::is_full) {
            self.flush_full().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        // On an error `Drop` removes the temporary file.
        self.settle().await?;
        let (f, buf) = self.take_parts()?;
        let buf = buf.realigned();
        let (offset, direct) = (self.offset, self.direct);
        let tmp = self.tmp.clone();
        let dest = self.dest.clone();
        let res = blocking(move || {
            let data = buf.filled();
            let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
            let direct = if whole > 0 {
                write_at(&f, &data[..whole], offset, direct)?
            } else {
                direct
            };
            if whole < data.len() {
                if direct {
                    set_buffered(&f)?;
                }
                write_at(&f, &data[whole..], offset + whole as u64, false)?;
            }
            drop(buf);
            put_in_place(f, &tmp, &dest)
        })
        .await;
        self.finished = res.is_ok();
        res
    }

    async fn abort(mut self: Box<Self>) {
        // A write in flight finishes first, so the file is not removed under it.
        let _ = self.settle().await;
    }
}

impl Drop for DirectWriter {
    /// As [`LocalWriter`]'s: a writer dropped without finish leaves no temporary file.
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The end of both writers: fsync of the written file (its data, size and extents, and the
/// disk's own write cache), rename into its shard directory (created if missing, with its
/// parents' entries made durable), fsync of that directory.
fn put_in_place(f: std::fs::File, tmp: &Path, dest: &Path) -> Result<()> {
    f.sync_all()?;
    drop(f);
    let dir = dest.parent().expect("a blob path has a shard directory");
    shard_dir_durable(dir)?;
    match std::fs::rename(tmp, dest) {
        // The shard directory was removed since this process made it durable (by hand):
        // made again.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && tmp.exists() && !dir.exists() => {
            forget_shard(dir);
            shard_dir_durable(dir)?;
            std::fs::rename(tmp, dest)?;
        }
        r => r?,
    }
    sync_dir(dir)?;
    Ok(())
}

/// The shard directories (`ROOT/ab/cd`) whose entries this process has made durable, per
/// store root: one bit per shard.
static DURABLE_SHARDS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<PathBuf, Box<[u64]>>>,
> = std::sync::LazyLock::new(Default::default);

/// The store root and shard number of a shard directory `ROOT/ab/cd`.
fn shard_of(dir: &Path) -> Option<(&Path, usize)> {
    let cd = dir.file_name()?.to_str()?;
    let top = dir.parent()?;
    let ab = top.file_name()?.to_str()?;
    let (hi, lo) = (hex::decode(ab).ok()?, hex::decode(cd).ok()?);
    let (&[hi], &[lo]) = (hi.as_slice(), lo.as_slice()) else {
        return None;
    };
    Some((top.parent()?, usize::from(hi) << 8 | usize::from(lo)))
}

/// Forgets that shard directory `dir` was made durable (it is gone).
fn forget_shard(dir: &Path) {
    if let Some((root, n)) = shard_of(dir)
        && let Some(bits) = DURABLE_SHARDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(root)
    {
        bits[n / 64] &= !(1 << (n % 64));
    }
}

/// Makes shard directory `dir` (`ROOT/ab/cd`) exist with its entries durable (its own in
/// `ROOT/ab`, and that one's in `ROOT`), before a blob is renamed into it. Directories it
/// creates are synced as [`create_dir_all_synced`] does; and the first time this process
/// uses a shard that existed already, its entries are synced too: another writer may have
/// just made it and not synced it yet (or have died before it did). Later blobs into the
/// shard pay nothing.
fn shard_dir_durable(dir: &Path) -> std::io::Result<()> {
    let shard = shard_of(dir);
    let known = |(root, n): (&Path, usize)| {
        DURABLE_SHARDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(root)
            .is_some_and(|bits| bits[n / 64] & (1 << (n % 64)) != 0)
    };
    if shard.is_some_and(known) {
        return Ok(());
    }
    let mut created = Vec::new();
    make_dirs(dir, &mut created)?;
    // `created` is in creation order (topmost first): each synced, deepest first.
    for d in created.iter().rev() {
        sync_dir(d)?;
    }
    // The directories holding the two entries, unless synced just above.
    let top = dir.parent().expect("a shard directory is ROOT/ab/cd");
    let root = top.parent().expect("a shard directory is ROOT/ab/cd");
    for holder in [top, root] {
        if !created.iter().any(|c| c == holder) {
            sync_dir(holder)?;
        }
    }
    if let Some((root, n)) = shard {
        let mut all = DURABLE_SHARDS.lock().unwrap_or_else(|e| e.into_inner());
        let bits = all
            .entry(root.to_path_buf())
            .or_insert_with(|| vec![0u64; (1 << 16) / 64].into_boxed_slice());
        bits[n / 64] |= 1 << (n % 64);
    }
    Ok(())
}

/// fsync of a directory: makes the entries added to (or removed from) it durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(test)]
    synced::record(dir);
    Ok(())
}

/// As `std::fs::create_dir_all`, and makes what it created durable: every directory it
/// created, deepest first, then the parent of the topmost one (which holds its entry). A
/// directory that exists already costs one `mkdir` attempt, as with `create_dir_all`, and
/// no fsync (the blob write path uses [`shard_dir_durable`], which also syncs the entries
/// of a shard another writer made).
pub(crate) fn create_dir_all_synced(dir: &Path) -> std::io::Result<()> {
    let mut created = Vec::new();
    make_dirs(dir, &mut created)?;
    // `created` is in creation order (topmost first).
    for d in created.iter().rev() {
        sync_dir(d)?;
    }
    if let Some(parent) = created.first().and_then(|top| top.parent()) {
        sync_dir(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })?;
    }
    Ok(())
}

fn make_dirs(dir: &Path, created: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    let exists = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir();
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if exists(&e) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) else {
                return Err(e);
            };
            make_dirs(parent, created)?;
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                // Another writer made it meanwhile (and makes it durable).
                Err(e) if exists(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    created.push(dir.to_path_buf());
    Ok(())
}

/// The directories fsynced so far, for the tests of the code that must sync them.
#[cfg(test)]
pub(crate) mod synced {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn record(dir: &Path) {
        SYNCED.lock().unwrap().push(dir.to_path_buf());
    }

    /// Every directory fsynced so far under `root` (tests run in parallel: each looks at
    /// its own tempdir), in order.
    pub(crate) fn under(root: &Path) -> Vec<PathBuf> {
        SYNCED
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.starts_with(root))
            .cloned()
            .collect()
    }
}

/// Reads one blob through its own open file (so a blob unlinked by an overwrite stays
/// readable until the reader is dropped).
struct LocalReader {
    file: Arc<std::fs::File>,
    len: u64,
    /// For a blob of [`DIRECT_READ_MIN`] bytes or more: the same file open with `O_DIRECT`,
    /// used for what the page cache does not hold.
    direct: Option<DirectReads>,
}

/// Blobs at least this long are always read with `O_DIRECT`, as nginx's `directio` reads
/// large files: a long sequential read gains little from the page cache but pays for every
/// page it allocates there (see [`DirectWriter`]). Measured here (docs/benchmarks-history.md): a
/// 1 GiB blob just written, read through the cache 344–364 MB/s, directly 1,545–1,750 MB/s;
/// a 64 MiB blob read again and again, directly 700–1,098 MB/s, from the cache about
/// 1,500 MB/s. Smaller blobs are read through the cache, which then serves their next
/// reads. There is no asking the cache first: a page-cache probe (`RWF_NOWAIT`) of an
/// uncached range starts the kernel's readahead into the cache, so probing a cold blob
/// costs the very allocation this avoids, and makes the next reader take it for cached.
const DIRECT_READ_MIN: u64 = 128 << 20;

/// Direct reads of one blob in [`DIRECT_BUF`]-byte windows: the window holding the
/// current offset, and the following one read ahead on a blocking thread, so the disk
/// reads while the caller decrypts and sends (two pooled buffers, 16 MiB, per stream).
struct DirectReads {
    file: Arc<std::fs::File>,
    /// The store's window budget.
    budget: Arc<tokio::sync::Semaphore>,
    windows: tokio::sync::Mutex<Windows>,
    /// Set once the filesystem refused a direct read (`EINVAL`, an alignment it requires
    /// beyond [`DIRECT_ALIGN`]): the reader reads through the page cache from then on.
    refused: std::sync::atomic::AtomicBool,
    /// See [`LocalBlobStore::refuse_direct_from`].
    #[cfg(test)]
    refuse_from: Option<u64>,
}

/// Direct-read windows held at once (256 MiB) by all readers of one store, or of every
/// store sharing a budget (a data dir's filesystems share one: [`window_budget`]): past it
/// a download reads through the page cache instead (512 KiB a download) and no window is
/// read ahead, so a crowd of large downloads (or of clients that do not read theirs)
/// cannot grow the server's memory 16 MiB at a time without bound.
pub(crate) const DIRECT_WINDOWS: usize = 32;

/// A new budget of [`DIRECT_WINDOWS`] direct-read windows.
pub(crate) fn window_budget() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(DIRECT_WINDOWS))
}

/// One window's place in its store's budget ([`DIRECT_WINDOWS`]).
type WindowPermit = tokio::sync::OwnedSemaphorePermit;

#[derive(Default)]
struct Windows {
    /// The window read last, at its file offset.
    cur: Option<(u64, AlignedBuf, WindowPermit)>,
    /// The window being read ahead, at its file offset.
    next: Option<(u64, Pending<AlignedBuf>, WindowPermit)>,
}

/// Reads the [`DIRECT_BUF`]-byte window at `at` (aligned) directly; shorter at the end of
/// the file.
fn read_window(f: &std::fs::File, at: u64) -> Result<AlignedBuf> {
    use std::os::unix::fs::FileExt;
    let mut buf = AlignedBuf::take_full();
    let mut got = 0;
    while got < DIRECT_BUF {
        // Whole blocks only: the remaining room is a multiple of the block size as long as
        // every read before it was (a short read happens only at the end of the file).
        let (from, to) = (buf.start + got, buf.start + DIRECT_BUF);
        match f.read_at(&mut buf.v[from..to], at + got as u64) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if n % DIRECT_ALIGN != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.v.truncate(buf.start + got);
    Ok(buf)
}

impl DirectReads {
    /// The blob's `len` bytes at `offset`, copied out of the windows into a buffer that is
    /// not zeroed first; `None` when the store's window budget has no place for a window.
    async fn read(&self, offset: u64, len: usize, blob_len: u64) -> Result<Option<Vec<u8>>> {
        // Taken from the pool at the first piece, and given back (wiped) if the read ends
        // without a window: with the budget spent, every read would otherwise take a
        // pooled buffer and free it.
        let mut out: Option<Vec<u8>> = None;
        let lent = self
            .lend(offset, len, blob_len, &mut |piece| {
                out.get_or_insert_with(|| crate::plainbuf::with_capacity(len))
                    .extend_from_slice(piece);
                Ok(())
            })
            .await?;
        match (lent, out) {
            (true, out) => Ok(Some(out.unwrap_or_default())),
            (false, Some(partial)) => {
                drop(crate::plainbuf::PlainBuf::from_vec(partial));
                Ok(None)
            }
            (false, None) => Ok(None),
        }
    }

    /// The blob's `len` bytes at `offset`, handed to `sink` window by window, as slices of
    /// the windows (no copy). False (possibly after some pieces) when a window was needed
    /// and the store's window budget had no place for it.
    async fn lend(
        &self,
        offset: u64,
        len: usize,
        blob_len: u64,
        sink: &mut PieceSink<'_>,
    ) -> Result<bool> {
        let mut w = self.windows.lock().await;
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let win = at / DIRECT_BUF as u64 * DIRECT_BUF as u64;
            #[cfg(test)]
            if self.refuse_from.is_some_and(|r| win >= r) {
                return Err(einval().into());
            }
            if w.cur.as_ref().is_none_or(|(s, _, _)| *s != win) {
                let (buf, permit) = match w.next.take() {
                    Some((s, task, permit)) if s == win => (joined(task.await)?, permit),
                    other => {
                        // Not the window read ahead (the first read, or a seek): read it
                        // now, and drop the one read ahead. The current window's place
                        // goes first, so that a reader always has one of its own.
                        if let Some((_, task, _)) = other {
                            task.abort();
                        }
                        w.cur = None;
                        let Ok(permit) = self.budget.clone().try_acquire_owned() else {
                            return Ok(false);
                        };
                        let f = self.file.clone();
                        (blocking(move || read_window(&f, win)).await?, permit)
                    }
                };
                w.cur = Some((win, buf, permit));
            }
            if w.next.is_none()
                && win + (DIRECT_BUF as u64) < blob_len
                && let Ok(permit) = self.budget.clone().try_acquire_owned()
            {
                let (f, ahead) = (self.file.clone(), win + DIRECT_BUF as u64);
                let task = tokio::task::spawn_blocking(move || read_window(&f, ahead));
                w.next = Some((ahead, task, permit));
            }
            let (_, buf, _) = w.cur.as_ref().expect("set above");
            let have = buf.filled();
            let from = (at - win) as usize;
            if from >= have.len() {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            let n = (have.len() - from).min(len - done);
            sink(&have[from..from + n])?;
            done += n;
        }
        Ok(true)
    }
}

impl Drop for DirectReads {
    fn drop(&mut self) {
        if let Some((_, task, _)) = self.windows.get_mut().next.take() {
            task.abort();
        }
    }
}

/// Reads what the page cache holds of `buf.len()` bytes at `offset` without blocking:
/// `preadv2(RWF_NOWAIT)` copies cached pages and stops (or fails with `EAGAIN`) where the
/// disk would have to be read. Returns the bytes read; the caller reads the rest on the
/// blocking pool. Handing every read to that pool cost a thread wake-up and a context
/// switch per read: reading cached blobs on the async thread made GET 1 MiB with the cache
/// off about 11 % faster (docs/benchmarks-history.md). A cold read goes to the blocking pool (as far
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

    /// Lends the direct-read windows of a large blob (what would otherwise be copied out of
    /// them by `read_at`); blobs read through the page cache are read by `read_at`.
    async fn lend_at(&self, offset: u64, len: usize, sink: &mut PieceSink<'_>) -> Result<bool> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(d) = self.direct.as_ref().filter(|d| !d.refused.load(Relaxed)) else {
            return Ok(false);
        };
        match d.lend(offset, len, self.len, sink).await {
            Err(CoreError::Io(e)) if is_einval(&e) => {
                // The filesystem wants another alignment: through the page cache from now
                // on, this read too (the caller discards what it was lent, see the trait).
                d.refused.store(true, Relaxed);
                Ok(false)
            }
            // No window to be had: this read through the page cache (the next may find one).
            r => r,
        }
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(d) = &self.direct
            && !d.refused.load(Relaxed)
        {
            match d.read(offset, len, self.len).await {
                Err(CoreError::Io(e)) if is_einval(&e) => d.refused.store(true, Relaxed),
                // No window to be had: this read through the page cache.
                Ok(None) => {}
                Ok(Some(b)) => return Ok(b),
                Err(e) => return Err(e),
            }
        }
        // From the pool (`plainbuf`): `FileReader::read_plain` decrypts in it and gives it
        // back wiped; other readers (a blob's header, a backup) free it.
        let mut buf = crate::plainbuf::zeroed(len);
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

/// Whether the partial write `f` in `tmp/` (named by its blob's hex id) is that of an upload
/// running now: an upload registers before it creates its file.
fn is_running(f: &std::fs::DirEntry, writing: &RunningUploads) -> bool {
    f.file_name()
        .to_str()
        .and_then(|n| <ContentId>::try_from(hex::decode(n).ok()?).ok())
        .is_some_and(|id| {
            writing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id)
        })
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn create(&self, id: &ContentId) -> Result<Box<dyn BlobWriter>> {
        let tmp = self.root.join("tmp").join(hex::encode(id));
        let dest = self.path_of(id);
        let tmp2 = tmp.clone();
        let direct = self.direct;
        let (file, direct) = blocking(move || open_new(&tmp2, direct)).await?;
        if direct {
            return Ok(Box::new(DirectWriter {
                file: Some(file),
                buf: Some(AlignedBuf::take()),
                pending: None,
                in_flight: 0,
                offset: 0,
                direct: true,
                finished: false,
                tmp,
                dest,
            }));
        }
        Ok(Box::new(LocalWriter {
            file: Some(file),
            pending: None,
            in_flight: 0,
            syncing: None,
            unsynced: 0,
            finished: false,
            tmp,
            dest,
        }))
    }

    async fn open(&self, id: &ContentId) -> Result<Arc<dyn BlobReader>> {
        let p = self.path_of(id);
        let id_hex = *id;
        let (direct, direct_read_min) = (self.direct, self.direct_read_min);
        let budget = self.windows.clone();
        #[cfg(test)]
        let refuse_from = self.refuse_direct_from;
        blocking(move || match open_blob_file(&p) {
            Ok(f) => {
                let meta = f.metadata()?;
                if !meta.is_file() {
                    // A FIFO would block the read (and its thread) for good, a device would
                    // read whatever it holds: EFS only ever writes regular files here.
                    tracing::error!(
                        blob = %hex::encode(id_hex),
                        "a blob's path holds something other than a regular file"
                    );
                    return Err(CoreError::Corrupt("a blob is not a regular file"));
                }
                let len = meta.len();
                let direct = if direct && len >= direct_read_min {
                    reopen_direct(&f)?.map(|f| DirectReads {
                        file: Arc::new(f),
                        budget,
                        windows: Default::default(),
                        refused: false.into(),
                        #[cfg(test)]
                        refuse_from,
                    })
                } else {
                    None
                };
                Ok(Arc::new(LocalReader {
                    file: Arc::new(f),
                    len,
                    direct,
                }) as Arc<dyn BlobReader>)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CoreError::NotFound),
            // A symbolic link in its place (not followed): EFS writes none.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                tracing::error!(
                    blob = %hex::encode(id_hex),
                    "a blob's path holds something other than a regular file"
                );
                Err(CoreError::Corrupt("a blob is not a regular file"))
            }
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// The blob's file, and from 128 MiB on (`DIRECT_READ_MIN`) its `O_DIRECT` twin (where the
    /// filesystem takes `O_DIRECT`: counted whether or not it does).
    fn files_per_reader(&self, len: u64) -> u32 {
        if self.direct && len >= self.direct_read_min {
            2
        } else {
            1
        }
    }

    async fn delete(&self, id: &ContentId) -> Result<()> {
        self.delete_present(id).await.map(|_| ())
    }

    async fn delete_present(&self, id: &ContentId) -> Result<bool> {
        let p = self.path_of(id);
        blocking(move || match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn remove_partial(&self, id: &ContentId) -> Result<()> {
        let tmp = self.root.join("tmp").join(hex::encode(id));
        blocking(move || match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        })
        .await
    }

    async fn partials(&self, writing: &RunningUploads) -> Result<(u64, u64)> {
        let tmp = self.root.join("tmp");
        let writing = writing.clone();
        blocking(move || {
            let (mut n, mut bytes) = (0, 0);
            let entries = match std::fs::read_dir(&tmp) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
                Err(e) => return Err(e.into()),
            };
            for f in entries {
                let f = f?;
                let running = is_running(&f, &writing);
                if running {
                    continue;
                }
                // Gone since the listing (an upload finished or was discarded): skipped.
                match f.metadata() {
                    Ok(m) => {
                        n += 1;
                        bytes += m.len();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok((n, bytes))
        })
        .await
    }

    async fn remove_stale_partials(
        &self,
        older_than_secs: u64,
        writing: &RunningUploads,
    ) -> Result<u64> {
        let tmp = self.root.join("tmp");
        let writing = writing.clone();
        blocking(move || {
            let now = std::time::SystemTime::now();
            let mut n = 0;
            for f in std::fs::read_dir(&tmp)? {
                let f = f?;
                // Gone since the listing (an upload finished or was discarded): skipped.
                let Some(age) = age_secs(&f, now)? else {
                    continue;
                };
                // An upload registers before it creates its file: one listed here that is
                // not running (now) is over, and its file is a leftover.
                let running = is_running(&f, &writing);
                if age >= older_than_secs && !running {
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
                    if !b.file_type()?.is_dir() {
                        continue;
                    }
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
                        // A blob deleted since the listing (an overwrite, a delete) is not
                        // one: a running server removes blobs all the time.
                        let Some(age) = age_secs(&f, now)? else {
                            continue;
                        };
                        out.push((id, age));
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Seconds since `entry` was last written (0 if its time is in the future), or `None` if it
/// no longer exists: a directory listing is not a snapshot, and a running server removes
/// files (finished uploads, replaced contents) while one is walked.
fn age_secs(entry: &std::fs::DirEntry, now: std::time::SystemTime) -> std::io::Result<Option<u64>> {
    let meta = match entry.metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(
        meta.modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .map_or(0, |d| d.as_secs()),
    ))
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

    /// Both writers: direct (the default on Linux) and through the page cache.
    fn stores(root: &Path) -> [LocalBlobStore; 2] {
        [
            LocalBlobStore::open(&root.join("direct")).unwrap(),
            LocalBlobStore::open_buffered(&root.join("buffered")).unwrap(),
        ]
    }

    /// Regression: a blob into a new shard directory fsynced only that directory, never
    /// the entries that `create_dir_all` added to `blobs/` and `blobs/ab/`: a crash after
    /// the commit could lose the shard, and the blob with it.
    #[tokio::test]
    async fn a_new_shard_directory_is_made_durable_up_to_the_store_root() {
        let t = tempfile::tempdir().unwrap();
        for store in stores(t.path()) {
            let root = store.root.clone();
            let id = [0xa1; 16];
            let shard = store.path_of(&id).parent().unwrap().to_path_buf();
            let before = synced::under(&root).len();
            let mut w = store.create(&id).await.unwrap();
            w.write(vec![1; 5000]).await.unwrap();
            w.finish().await.unwrap();
            let top = shard.parent().unwrap();
            assert_eq!(top.parent().unwrap(), root);
            // Created deepest first, each synced, then the root; then the rename's sync.
            assert_eq!(
                synced::under(&root)[before..],
                [
                    shard.clone(),
                    top.to_path_buf(),
                    root.clone(),
                    shard.clone()
                ]
            );
            // The same shard again: only the rename's sync (the write path pays nothing).
            let before = synced::under(&root).len();
            let mut id2 = id;
            id2[15] = 0;
            assert_eq!(store.path_of(&id2).parent().unwrap(), shard);
            let mut w = store.create(&id2).await.unwrap();
            w.write(vec![2; 5000]).await.unwrap();
            w.finish().await.unwrap();
            assert_eq!(synced::under(&root)[before..], [shard]);
        }
    }

    /// Regression: a shard directory that existed already was taken as durable, but another
    /// writer may have just made it without syncing its entries yet (or died before it
    /// did): a blob acknowledged into it could vanish with it in a power failure. The first
    /// blob of this process into such a shard syncs the directories holding its entries;
    /// the next one pays nothing more.
    #[tokio::test]
    async fn a_shard_directory_found_existing_has_its_entries_synced_once() {
        let t = tempfile::tempdir().unwrap();
        for store in stores(t.path()) {
            let root = store.root.clone();
            let id = [0x5e; 16];
            let shard = store.path_of(&id).parent().unwrap().to_path_buf();
            let top = shard.parent().unwrap().to_path_buf();
            // As another writer leaves it: made, nothing synced.
            std::fs::create_dir_all(&shard).unwrap();
            let before = synced::under(&root).len();
            let mut w = store.create(&id).await.unwrap();
            w.write(vec![1; 5000]).await.unwrap();
            w.finish().await.unwrap();
            assert_eq!(
                synced::under(&root)[before..],
                [top.clone(), root.clone(), shard.clone()]
            );
            let before = synced::under(&root).len();
            let mut id2 = id;
            id2[15] = 0;
            let mut w = store.create(&id2).await.unwrap();
            w.write(vec![2; 5000]).await.unwrap();
            w.finish().await.unwrap();
            assert_eq!(
                &synced::under(&root)[before..],
                std::slice::from_ref(&shard)
            );
            // Removed by hand while the process runs: made again by the next blob.
            std::fs::remove_dir_all(&top).unwrap();
            let mut w = store.create(&id).await.unwrap();
            w.write(vec![3; 5000]).await.unwrap();
            w.finish().await.unwrap();
            assert_eq!(std::fs::read(store.path_of(&id)).unwrap().len(), 5000);
        }
    }

    /// A reader holds the blob's file, and its `O_DIRECT` twin from the direct-read size on:
    /// what a caller bounding the open files counts.
    #[test]
    fn a_reader_of_a_large_blob_counts_two_files() {
        let t = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(t.path()).unwrap();
        assert_eq!(store.files_per_reader(0), 1);
        assert_eq!(store.files_per_reader(DIRECT_READ_MIN - 1), 1);
        let twin = if cfg!(target_os = "linux") { 2 } else { 1 };
        assert_eq!(store.files_per_reader(DIRECT_READ_MIN), twin);
        assert_eq!(store.files_per_reader(u64::MAX), twin);
    }

    /// Regression: a blob of `DIRECT_READ_MIN` bytes or more was opened a second time, for
    /// direct reads, by its path: an overwrite or delete unlinking it between the two opens
    /// made the read fail with an I/O error (500) instead of reading the version it opened.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_blob_unlinked_after_its_first_open_is_still_opened_for_direct_reads() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("blob");
        let content: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
        std::fs::write(&p, &content).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        // tmpfs refuses O_DIRECT (None): the reader then uses the page cache.
        if let Some(d) = reopen_direct(&f).unwrap() {
            let w = read_window(&d, 0).unwrap();
            assert_eq!(&w.v[w.start..], &content[..]);
        }
    }

    #[tokio::test]
    async fn a_finished_blob_reads_back_and_leaves_no_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        for store in stores(t.path()) {
            a_finished_blob_reads_back(&store).await;
        }
    }

    async fn a_finished_blob_reads_back(store: &LocalBlobStore) {
        let id = [7u8; 16];
        let mut w = store.create(&id).await.unwrap();
        for c in chunks() {
            w.write(c).await.unwrap();
        }
        w.finish().await.unwrap();
        assert_eq!(tmp_files(&store.root), 0);
        let r = store.open(&id).await.unwrap();
        assert_eq!(r.len(), 40 << 20);
        for (i, c) in chunks().iter().enumerate() {
            assert_eq!(&r.read_at((i as u64) << 20, 1 << 20).await.unwrap(), c);
        }
        // Reading past the end is an error, not a short buffer.
        assert!(r.read_at((40 << 20) - 10, 20).await.is_err());
    }

    /// A file removed between the directory listing and its `stat` (routine while a server
    /// writes: an overwrite deletes the old blob, an upload leaves `tmp/`) is skipped, not an
    /// error that stops a whole gc or fsck; so is a stray file where a shard directory
    /// belongs.
    #[tokio::test]
    async fn files_vanishing_during_a_walk_are_skipped() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("walk");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("gone"), b"x").unwrap();
        std::fs::write(dir.join("kept"), b"x").unwrap();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        std::fs::remove_file(dir.join("gone")).unwrap();
        let now = std::time::SystemTime::now();
        assert_eq!(age_secs(&entries[0], now).unwrap(), None);
        assert_eq!(age_secs(&entries[1], now).unwrap(), Some(0));

        let store = LocalBlobStore::open(&t.path().join("blobs")).unwrap();
        let id = [0xabu8; 16];
        let mut w = store.create(&id).await.unwrap();
        w.write(b"content".to_vec()).await.unwrap();
        w.finish().await.unwrap();
        let shard = store
            .path_of(&id)
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
        std::fs::write(shard.join("stray"), b"not a shard directory").unwrap();
        let listed = store.list().await.unwrap();
        assert_eq!(listed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![id]);
        assert_eq!(
            store
                .remove_stale_partials(0, &RunningUploads::default())
                .await
                .unwrap(),
            0
        );
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
        // The kernel may keep a page a moment longer (one in another core's LRU batch, under
        // load): evicted again until util-linux's fincore(1) sees less than a MiB of it
        // resident (without fincore, one eviction, as before).
        let resident = || {
            let out = std::process::Command::new("fincore")
                .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
                .arg(&path)
                .output()
                .ok()?;
            String::from_utf8(out.stdout)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        };
        for _ in 0..20 {
            evict();
            if resident().is_none_or(|r| r < 1 << 20) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
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

    /// Lengths around the direct writer's edges: below one block (tail only), one block, a
    /// whole buffer, a buffer and a block plus a few bytes, writes that straddle buffers;
    /// each reads back byte for byte from both writers.
    #[tokio::test]
    async fn blobs_of_every_alignment_read_back_from_both_writers() {
        let t = tempfile::tempdir().unwrap();
        let lens = [
            1,
            DIRECT_ALIGN - 1,
            DIRECT_ALIGN,
            DIRECT_ALIGN + 1,
            DIRECT_BUF,
            DIRECT_BUF + DIRECT_ALIGN + 7,
            2 * DIRECT_BUF + 12_345,
        ];
        for store in stores(t.path()) {
            for (n, len) in lens.into_iter().enumerate() {
                let content: Vec<u8> = (0..len).map(|i| (i % 253) as u8 ^ n as u8).collect();
                let id = [n as u8 + 100; 16];
                let mut w = store.create(&id).await.unwrap();
                // Uneven writes (a sealed chunk is not a multiple of a block either).
                for part in content.chunks(1_000_003) {
                    w.write(part.to_vec()).await.unwrap();
                }
                w.finish().await.unwrap();
                let r = store.open(&id).await.unwrap();
                assert_eq!(r.len(), len as u64, "length {len}");
                assert!(
                    r.read_at(0, len).await.unwrap() == content,
                    "content of length {len}"
                );
            }
            assert_eq!(tmp_files(&store.root), 0);
        }
    }

    /// Bytes appended to a writer's tail (as an upload seals into it), mixed with `write`s,
    /// read back byte for byte across buffer edges, from both writers (the buffered one has
    /// no tail: everything goes through `write`).
    #[tokio::test]
    async fn bytes_appended_to_the_tail_read_back_like_written_ones() {
        let t = tempfile::tempdir().unwrap();
        let len = 3 * DIRECT_BUF + 54_321;
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        // Sealed segments and odd sizes, all within TAIL_MAX; every fifth through `write`.
        let sizes = [65_552, 1, DIRECT_ALIGN + 3, TAIL_MAX, 77_777, 65_552];
        for store in stores(t.path()) {
            let id = [9u8; 16];
            let mut w = store.create(&id).await.unwrap();
            let (mut at, mut n) = (0, 0);
            while at < len {
                let part = &content[at..(at + sizes[n % sizes.len()]).min(len)];
                match w.tail() {
                    Some(tail) if n % 5 != 4 => {
                        tail.extend_from_slice(part);
                        w.wrote_tail().await.unwrap();
                    }
                    _ => w.write(part.to_vec()).await.unwrap(),
                }
                at += part.len();
                n += 1;
            }
            w.finish().await.unwrap();
            let r = store.open(&id).await.unwrap();
            assert!(
                r.read_at(0, len).await.unwrap() == content,
                "direct: {}",
                store.direct
            );
        }
    }

    /// A caller appending far more than [`TAIL_MAX`] at once makes the buffer reallocate
    /// (its start no longer aligned): the writer copies into an aligned buffer before each
    /// direct write instead of failing, and the bytes read back.
    #[tokio::test]
    async fn an_overfilled_tail_is_realigned_not_lost() {
        let t = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(t.path()).unwrap();
        let content: Vec<u8> = (0..2 * BUF_CAP + 999).map(|i| (i % 241) as u8).collect();
        let id = [10u8; 16];
        let mut w = store.create(&id).await.unwrap();
        match w.tail() {
            Some(tail) => tail.extend_from_slice(&content),
            None => w.write(content.clone()).await.unwrap(),
        }
        w.wrote_tail().await.unwrap();
        w.finish().await.unwrap();
        let r = store.open(&id).await.unwrap();
        assert!(r.read_at(0, content.len()).await.unwrap() == content);
        assert_eq!(tmp_files(&store.root), 0);
    }

    /// A blob read with direct reads (the threshold lowered to one block): sequential
    /// batches of an odd size across window edges, seeks back and forth, the last bytes,
    /// and two tasks reading one reader at once all return the written bytes; a read past
    /// the end is an error; and the page cache still holds none of the blob.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn direct_reads_return_the_written_bytes_from_anywhere() {
        let t = tempfile::tempdir().unwrap();
        let store = LocalBlobStore {
            direct_read_min: DIRECT_ALIGN as u64,
            ..LocalBlobStore::open(t.path()).unwrap()
        };
        let len = 3 * DIRECT_BUF + 12_345;
        let content: Arc<Vec<u8>> = Arc::new(
            (0..len)
                .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
                .collect(),
        );
        let id = [5u8; 16];
        let mut w = store.create(&id).await.unwrap();
        w.write(content.to_vec()).await.unwrap();
        w.finish().await.unwrap();
        let r = store.open(&id).await.unwrap();
        // Sequential, as a download reads: 256 KiB of segments and their tags at a time.
        let batch = 4 * (65_536 + 16);
        let mut off = 0;
        while off < len {
            let n = batch.min(len - off);
            let got = r.read_at(off as u64, n).await.unwrap();
            assert!(got == content[off..off + n], "sequential read at {off}");
            off += n;
        }
        // Seeks: back to the start, into the middle of a window, across two windows, the
        // very end.
        for (at, n) in [
            (0, 10),
            (DIRECT_BUF + 3, 100_000),
            (DIRECT_BUF - 7, DIRECT_BUF + 14),
            (5, 2 * DIRECT_BUF),
            (len - 1, 1),
            (len - 20_000, 20_000),
        ] {
            let got = r.read_at(at as u64, n).await.unwrap();
            assert!(got == content[at..at + n], "read of {n} at {at}");
        }
        assert!(r.read_at(len as u64 - 10, 20).await.is_err());
        // Two tasks on one reader, interleaved.
        let tasks: Vec<_> = (0..2)
            .map(|k| {
                let (r, content) = (r.clone(), content.clone());
                tokio::spawn(async move {
                    for i in 0..40 {
                        let at = (i * 997_001 + k * DIRECT_BUF) % (len - batch);
                        let got = r.read_at(at as u64, batch).await.unwrap();
                        assert!(got == content[at..at + batch], "task {k} read at {at}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        if rustix::fs::statfs(t.path()).unwrap().f_type as i64 != 0x0102_1994 {
            let f = std::fs::File::open(store.path_of(&id)).unwrap();
            let mut probe = vec![0u8; 1 << 20];
            assert!(
                read_cached(&f, &mut probe, DIRECT_BUF as u64) < probe.len(),
                "direct reads must leave the page cache alone"
            );
        }
    }

    /// A blob read directly lends its windows: the pieces, in order, are the bytes asked
    /// for, one piece per window touched; a sink's error ends the read and comes back; a
    /// read past the end is an error. A blob read through the page cache lends nothing
    /// (`Ok(false)`, the sink never called) and is read by `read_at`.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn direct_reads_lend_their_windows_and_cached_reads_lend_nothing() {
        let t = tempfile::tempdir().unwrap();
        let store = LocalBlobStore {
            direct_read_min: 2 * DIRECT_BUF as u64,
            ..LocalBlobStore::open(t.path()).unwrap()
        };
        let len = 2 * DIRECT_BUF + 5_000;
        let content: Vec<u8> = (0..len)
            .map(|i| (i % 247) as u8 ^ (i >> 16) as u8)
            .collect();
        let (big, small) = ([6u8; 16], [7u8; 16]);
        for (id, n) in [(big, len), (small, DIRECT_BUF)] {
            let mut w = store.create(&id).await.unwrap();
            w.write(content[..n].to_vec()).await.unwrap();
            w.finish().await.unwrap();
        }
        // Where this filesystem takes no direct reads (tmpfs before Linux 6.6, some FUSE),
        // nothing is lent, and the reads are `read_at`'s (tested elsewhere).
        let direct = takes_direct_reads(&store, &big);
        if !direct {
            eprintln!("no direct reads on this filesystem: only the cached half is tested");
        }
        let r = store.open(&big).await.unwrap();
        for (at, n, pieces) in [
            (0, 1000, 1),
            (DIRECT_BUF - 100, 262_208, 2),
            (7, len - 7, 3),
            (len - 10, 10, 1),
        ] {
            let mut got: Vec<Vec<u8>> = Vec::new();
            let lent = r
                .lend_at(at as u64, n, &mut |p| {
                    got.push(p.to_vec());
                    Ok(())
                })
                .await
                .unwrap();
            assert_eq!(lent, direct, "a direct reader lends, only it");
            if !direct {
                break;
            }
            assert_eq!(got.len(), pieces, "pieces of {n} at {at}");
            assert!(got.concat() == content[at..at + n], "{n} at {at}");
        }
        let mut calls = 0;
        let err = r
            .lend_at(0, len, &mut |_| {
                calls += 1;
                Err(CoreError::Decrypt)
            })
            .await;
        if direct {
            assert!(matches!(err, Err(CoreError::Decrypt)) && calls == 1);
            assert!(
                r.lend_at(len as u64 - 10, 20, &mut |_| Ok(()))
                    .await
                    .is_err()
            );
        }

        let r = store.open(&small).await.unwrap();
        assert!(lends_nothing(&*r).await, "a cached reader lends nothing");
        assert_eq!(r.read_at(0, 100).await.unwrap(), content[..100]);
    }

    /// Regression: every direct reader held two 8 MiB windows, however many there were:
    /// 32 downloads that did not read their answers took 512 MiB. The windows of a store's
    /// readers are bounded; a reader finding no place reads through the page cache (the
    /// same bytes), and lends again once a place is free.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn direct_read_windows_are_bounded_per_store() {
        let t = tempfile::tempdir().unwrap();
        let store = LocalBlobStore {
            direct_read_min: DIRECT_ALIGN as u64,
            windows: Arc::new(tokio::sync::Semaphore::new(3)),
            ..LocalBlobStore::open(t.path()).unwrap()
        };
        let len = 2 * DIRECT_BUF + 999;
        let content: Vec<u8> = (0..len)
            .map(|i| (i % 233) as u8 ^ (i >> 17) as u8)
            .collect();
        let id = [9u8; 16];
        if !write_for_direct_reads(&store, &id, content.clone()).await {
            eprintln!("skipped: this filesystem takes no direct reads");
            return;
        }
        let lend = |r: Arc<dyn BlobReader>, at: usize, n: usize| async move {
            let mut got = Vec::new();
            let lent = r
                .lend_at(at as u64, n, &mut |p| {
                    got.extend_from_slice(p);
                    Ok(())
                })
                .await
                .unwrap();
            (lent, got)
        };
        // A: its window and the next read ahead (2 places); B: its window only (the last).
        let a = store.open(&id).await.unwrap();
        let b = store.open(&id).await.unwrap();
        assert!(lend(a.clone(), 0, 4096).await.0);
        let (lent, got) = lend(b.clone(), 100, 5000).await;
        assert!(lent && got == content[100..5100]);
        assert_eq!(store.windows.available_permits(), 0);
        // C finds no place: nothing lent, and the page cache gives the bytes.
        let c = store.open(&id).await.unwrap();
        assert!(lends_nothing(&*c).await, "a reader past the budget lends");
        assert!(
            c.read_at(DIRECT_BUF as u64 - 10, 20_000).await.unwrap()
                == content[DIRECT_BUF - 10..DIRECT_BUF + 19_990]
        );
        // B goes on past its window into the next one (its own place moves with it).
        let (lent, got) = lend(b.clone(), DIRECT_BUF + 1, 3000).await;
        assert!(lent && got == content[DIRECT_BUF + 1..DIRECT_BUF + 3001]);
        // Once A is dropped, C lends.
        drop(a);
        let (lent, got) = lend(c.clone(), 7, 70_000).await;
        assert!(lent && got == content[7..70_007]);
        drop((b, c));
        assert_eq!(
            store.windows.available_permits(),
            3,
            "every place given back"
        );
    }

    /// A direct read the filesystem refuses after the first window (`EINVAL` midway, made
    /// on demand: see `refuse_direct_from`) ends the lending with `Ok(false)` after the first
    /// window's piece, so the caller discards it and reads the range with `read_at`, which
    /// (and every read after it, lending included) goes through the page cache and returns the
    /// written bytes.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_direct_read_refused_midway_falls_back_to_the_page_cache() {
        let t = tempfile::tempdir().unwrap();
        let store =
            LocalBlobStore::refusing_direct_reads(t.path(), DIRECT_ALIGN as u64, DIRECT_BUF as u64)
                .unwrap();
        let len = 2 * DIRECT_BUF + 777;
        let content: Vec<u8> = (0..len)
            .map(|i| (i % 239) as u8 ^ (i >> 18) as u8)
            .collect();
        let id = [8u8; 16];
        if !write_for_direct_reads(&store, &id, content.clone()).await {
            eprintln!("skipped: this filesystem takes no direct reads");
            return;
        }
        let r = store.open(&id).await.unwrap();
        // Within the first window: lent as usual.
        let mut got = Vec::new();
        assert!(
            r.lend_at(5, 1000, &mut |p| {
                got.extend_from_slice(p);
                Ok(())
            })
            .await
            .unwrap()
        );
        assert!(got == content[5..1005]);
        // Across into the refused window: the first window's piece, then `Ok(false)`.
        let (at, n) = (DIRECT_BUF - 300, 262_208);
        let mut pieces = Vec::new();
        let lent = r
            .lend_at(at as u64, n, &mut |p| {
                pieces.push(p.to_vec());
                Ok(())
            })
            .await
            .unwrap();
        assert!(!lent, "a refusal midway is reported as nothing lent");
        assert_eq!(
            pieces.len(),
            1,
            "only the first window's piece came before it"
        );
        assert!(pieces[0] == content[at..DIRECT_BUF]);
        // Read again, as the caller then does, and from then on: through the page cache.
        assert!(r.read_at(at as u64, n).await.unwrap() == content[at..at + n]);
        assert!(r.read_at(0, len).await.unwrap() == content);
        assert!(
            lends_nothing(&*r).await,
            "once refused, the reader lends nothing"
        );
    }

    /// A direct write the kernel refuses (here: memory not aligned to a block, which every
    /// filesystem refuses with `EINVAL`) is written through the page cache instead, and the
    /// file stays buffered for the writes after it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_refused_direct_write_goes_through_the_page_cache() {
        use rustix::fs::{OFlags, fcntl_getfl};
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        let (f, direct) = open_new(&path, true).unwrap();
        if !direct {
            eprintln!("skipped: this filesystem refuses O_DIRECT at open");
            return;
        }
        let mut buf = AlignedBuf::take();
        buf.fill(&vec![3u8; 2 * DIRECT_ALIGN]);
        // One byte past the aligned start: misaligned memory and length.
        let misaligned = &buf.filled()[1..];
        assert!(!write_at(&f, misaligned, 0, true).unwrap());
        assert!(!fcntl_getfl(&f).unwrap().contains(OFlags::DIRECT));
        assert!(!write_at(&f, b"tail", misaligned.len() as u64, false).unwrap());
        let mut want = misaligned.to_vec();
        want.extend_from_slice(b"tail");
        assert_eq!(std::fs::read(&path).unwrap(), want);
        // While the file is still direct, an aligned write stays direct.
        let (g, _) = open_new(&t.path().join("g"), true).unwrap();
        assert!(write_at(&g, &buf.filled()[..DIRECT_ALIGN], 0, true).unwrap());
        assert!(fcntl_getfl(&g).unwrap().contains(OFlags::DIRECT));
    }

    /// The direct writer really bypasses the page cache: right after `finish` the blob's
    /// whole blocks are not cached (only its tail, written through the cache, may be). The
    /// buffered writer leaves it all cached. (On tmpfs every page is cached: skipped.)
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_direct_writer_leaves_the_page_cache_alone() {
        let t = tempfile::tempdir().unwrap();
        if rustix::fs::statfs(t.path()).unwrap().f_type as i64 == 0x0102_1994 {
            eprintln!("skipped: the temporary directory is on tmpfs");
            return;
        }
        let [direct, buffered] = stores(t.path());
        let len = 3 * DIRECT_BUF + 100;
        for (store, expect_cached) in [(&direct, false), (&buffered, true)] {
            let id = [42u8; 16];
            let mut w = store.create(&id).await.unwrap();
            w.write(vec![7u8; len]).await.unwrap();
            w.finish().await.unwrap();
            let f = std::fs::File::open(store.path_of(&id)).unwrap();
            let mut probe = vec![0u8; 1 << 20];
            let cached = read_cached(&f, &mut probe, 0) == probe.len();
            assert_eq!(cached, expect_cached, "direct: {}", store.direct);
        }
    }

    #[tokio::test]
    async fn an_aborted_or_dropped_writer_leaves_no_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        for store in stores(t.path()) {
            an_aborted_or_dropped_writer_leaves_nothing(&store).await;
        }
    }

    async fn an_aborted_or_dropped_writer_leaves_nothing(store: &LocalBlobStore) {
        let mut w = store.create(&[1u8; 16]).await.unwrap();
        for c in chunks() {
            w.write(c).await.unwrap();
        }
        assert_eq!(tmp_files(&store.root), 1);
        w.abort().await;
        assert_eq!(tmp_files(&store.root), 0);
        // Dropped with a write still in flight (a cancelled upload).
        let mut w = store.create(&[2u8; 16]).await.unwrap();
        for c in chunks().into_iter().take(3) {
            w.write(c).await.unwrap();
        }
        drop(w);
        assert_eq!(tmp_files(&store.root), 0);
        assert!(matches!(
            store.open(&[2u8; 16]).await.err(),
            Some(CoreError::NotFound)
        ));
    }
}
