//! [`AuditLog`]: the one writer of a data dir's audit log.
//!
//! A request seals, chains and appends its own [`Record`] under the writer's mutex, and
//! answers once that `write(2)` has returned, never waiting for an fsync. (An earlier
//! version handed records to a writer thread and waited for it: the hand-off and wake-ups
//! cost about 40 % of small-GET throughput on two cores, docs/benchmarks-history.md run 3.) A
//! thread makes the log durable in groups: an fdatasync at most once per
//! [`AuditOptions::flush_interval`], and the HEAD anchor rewritten after one of those at most
//! once per [`AuditOptions::anchor_interval`] (and at close), so a burst of reads costs a
//! handful of fsyncs, not one each. If a write, an fsync or the anchor fails, the log is
//! *failed*: every later entry is refused ([`AuditError::Failed`]) and callers refuse the
//! request they wanted to record (fail closed), until [`AuditLog::recover`] finds the log
//! writable again (the server tries it by itself, [`RECOVER_FIRST`] after the failure and
//! then less and less often) or the process restarts.
//!
//! Each writer starts a new file (fresh salt, so a fresh body key) the first time it writes,
//! and rotates to another past [`AuditOptions::max_file_bytes`]; the chain runs on across
//! files. Only one writer exists per data dir: the data dir's redb lock already keeps a
//! second process out.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::line::{self, ChainMac, FileKey, Head, UNANCHORED};
use super::{AuditError, AuditKeys, Record, now_ms};

/// Tunables of the audit log.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Start a new file once the current one is larger than this.
    pub max_file_bytes: u64,
    /// At most one fdatasync of the log per this interval (entries written since the last
    /// one can be lost by a power failure, not by a crash of the process).
    pub flush_interval: Duration,
    /// At most one rewrite of the HEAD anchor per this interval (it always follows an
    /// fdatasync, and is also written at close).
    pub anchor_interval: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 << 20,
            flush_interval: Duration::from_millis(5),
            anchor_interval: Duration::from_millis(200),
        }
    }
}

/// How long after a failure the server first tries [`AuditLog::recover`]; each try, failed
/// or not, doubles the wait before the next one, up to [`RECOVER_MAX`], and the wait starts
/// over only once the log has worked for [`RECOVER_MAX`].
pub const RECOVER_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries of [`AuditLog::recover`]: a try on a disk that is
/// still full, or that fills again at once, leaves a new audit file behind, so this bounds
/// those to one a minute.
pub const RECOVER_MAX: Duration = Duration::from_secs(60);

/// The log's state at one moment ([`AuditLog::mark`]), for [`AuditLog::sync_point`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditMark(u64);

struct Shared {
    /// Sealing, chaining and appending happen under this lock.
    writer: Mutex<Writer>,
    /// Odd while the log is failed (a write, fsync or anchor update failed), even while it
    /// works; a failure and a recovery each add one, so it never repeats a value.
    state: AtomicU64,
    /// An fsync of a log file failed. Linux may then have dropped the unwritten pages and
    /// reports the error only once: entries the file shows may not be on the disk, so no
    /// recovery chains onto them (a restart, an operator's decision, is needed).
    sync_failed: AtomicBool,
    /// Set by [`AuditLog::close`]: entries are refused from then on, so no
    /// [`AuditLog::sync_point`] passes either.
    closed: AtomicBool,
    /// True while the syncer waits for something to sync (appends then wake it).
    syncer_idle: AtomicBool,
    /// The last head the syncer wrote into the anchor (durable: fsynced first), since this
    /// writer opened: what [`AuditLog::anchored`] gives the data dir to record.
    anchored: Mutex<Option<Head>>,
    /// The syncer waits on `wake` with this lock.
    idle_lock: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    fn writer(&self) -> MutexGuard<'_, Writer> {
        // Every mutation leaves `Writer` consistent before anything can panic.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_failed(&self) -> bool {
        self.state.load(Ordering::SeqCst) % 2 == 1
    }

    /// Fails the log. `sync`: the failure was an fsync of a log file (see `sync_failed`).
    /// Called under the writer's lock after a failed append, so that no other append can
    /// follow a torn one; the caller then wakes the syncer, after releasing the lock.
    fn mark_failed(&self, what: &str, e: &std::io::Error, sync: bool) {
        if sync {
            self.sync_failed.store(true, Ordering::SeqCst);
        }
        let now_failed = self
            .state
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                (s % 2 == 0).then_some(s + 1)
            })
            .is_ok();
        if now_failed {
            tracing::error!(
                error = %e,
                "the audit log failed while {what}: every request that needs an audit entry is refused until it can be written again"
            );
        }
    }

    /// [`Shared::mark_failed`] and wakes the syncer (not under the writer's lock).
    fn fail(&self, what: &str, e: &std::io::Error, sync: bool) {
        self.mark_failed(what, e, sync);
        self.wake_syncer();
    }

    /// Wakes the syncer if it is waiting. Called after the writer's lock is released.
    fn wake_syncer(&self) {
        if self.syncer_idle.load(Ordering::SeqCst) {
            let _g = self.idle_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_one();
        }
    }
}

/// The audit log of one data dir. Dropping it syncs what was written, updates the anchor and
/// stops the syncer.
pub struct AuditLog {
    dir: PathBuf,
    shared: Arc<Shared>,
    /// The syncer thread.
    threads: Mutex<Vec<JoinHandle<()>>>,
    notes: Vec<String>,
    opts: AuditOptions,
    /// Held by [`AuditLog::recover`]: one at a time.
    recovering: Mutex<()>,
    /// The log's last complete entry when it was opened, and when it was written.
    found_end: (Head, i64),
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({})", self.dir.display())
    }
}

impl AuditLog {
    /// Opens (creating `dir` if needed) and starts the writer. The chain continues from the
    /// last complete entry of the log, or from the anchor if the anchor is further on (the
    /// log was cut: new entries then chain to the anchor, so `verify` keeps reporting the
    /// gap instead of the writer hiding it).
    pub fn open(dir: &Path, keys: &AuditKeys, opts: AuditOptions) -> std::io::Result<Self> {
        Self::open_recorded(dir, keys, opts, None)
    }

    /// [`AuditLog::open`], given the head this data dir recorded of its log earlier
    /// (`recorded`, kept in the system database: see `DataDir::record_audit_mark`). A log that
    /// ends before it, and whose anchor does not reach it either, was deleted or put back
    /// from an older copy: new entries then chain on from the recorded head (which also
    /// becomes the anchor), so that `verify` keeps reporting the missing entries.
    pub(crate) fn open_recorded(
        dir: &Path,
        keys: &AuditKeys,
        opts: AuditOptions,
        recorded: Option<Head>,
    ) -> std::io::Result<Self> {
        // Synced into its parent when made (a first start, or `efsctl audit new-log`, which
        // moved the old log aside): else a power cut could take the new directory, and the
        // entries in it, away while the system database records their head.
        crate::blob::create_dir_all_synced(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let files = list_files(dir)?;
        // A process that ended without closing its log (a crash, a kill) left entries in its
        // last file that no fsync covered. New entries go to a new file whose fsync and anchor
        // would name them: a power failure would then cut the old file's tail and leave a gap
        // that `verify` reports as removed entries. Earlier files were synced at rotation.
        if let Some((_, name)) = files.last() {
            File::open(dir.join(name))?.sync_all()?;
            File::open(dir)?.sync_all()?;
        }
        let mut notes = Vec::new();
        let (log_head, log_end_ms) = last_entry_timed(dir, &files)?;
        let mut head_file = read_head(dir, keys)?;
        let behind = recorded.filter(|r| {
            r.seq > log_head.seq && !matches!(&head_file, HeadFile::Valid(a) if a.seq >= r.seq)
        });
        let mut recorded_note = None;
        if let Some(r) = behind {
            recorded_note = Some(format!(
                "the audit log ends at entry {} but this data dir recorded entry {} of it (in the system database): the log was deleted, or an older copy of it put back; new entries continue from entry {}, so that efsctl audit verify keeps reporting the missing ones",
                log_head.seq, r.seq, r.seq
            ));
            write_head(dir, keys, &r)?;
            head_file = HeadFile::Valid(r);
        }
        if matches!(head_file, HeadFile::Missing) && log_head.seq == 0 {
            // A new log: its anchor is written before its first entry, so that a log with
            // entries and no anchor can only be one whose anchor was removed (see
            // `chain_start`), not one whose first writer crashed before its first anchor.
            write_head(dir, keys, &Head::START)?;
        }
        let (start, note) = chain_start(log_head, &head_file);
        notes.extend(recorded_note.or(note));
        for n in &notes {
            tracing::warn!("{n}");
        }
        let next_number = files.last().map(|(n, _)| n + 1).unwrap_or(1);
        let writer = Writer {
            dir: dir.to_path_buf(),
            mac: ChainMac::new(keys),
            keys: keys.duplicate(),
            head: start,
            file: None,
            next_number,
            max_file_bytes: opts.max_file_bytes,
            buf: Vec::new(),
            closing: false,
            sync_error: false,
        };
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            state: AtomicU64::new(0),
            sync_failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            syncer_idle: AtomicBool::new(false),
            // The log's last entry, made durable above, is the first head to record: when it
            // is where the chain goes on (not a cut log, nor one whose anchor was lost), so
            // that entries a crashed writer left unrecorded are recorded at this open, not
            // only once this writer has written entries of its own.
            anchored: Mutex::new((start == log_head && log_head.seq > 0).then_some(log_head)),
            idle_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let syncer = spawn_syncer(&shared, dir, keys, start, &opts)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            shared,
            threads: Mutex::new(vec![syncer]),
            notes,
            opts,
            recovering: Mutex::new(()),
            found_end: (log_head, log_end_ms),
        })
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening found wrong (also logged as warnings).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// True while the log is failed (a write or fsync failed, and no [`AuditLog::recover`]
    /// has succeeded since): nothing can be recorded.
    pub fn is_failed(&self) -> bool {
        self.shared.is_failed()
    }

    /// The log's last complete entry found when it was opened, and when it was written
    /// (Unix ms): entries before it were all made durable at the open.
    pub(crate) fn found_end(&self) -> (Head, i64) {
        self.found_end
    }

    /// The last head this writer made the anchor (its entries fsynced), if it has written
    /// one since it opened.
    pub(crate) fn anchored(&self) -> Option<Head> {
        *self
            .shared
            .anchored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The log's state now, for a later [`AuditLog::sync_point`].
    pub fn mark(&self) -> AuditMark {
        AuditMark(self.shared.state.load(Ordering::SeqCst))
    }

    /// Makes a failed log usable again, as a restart would: the syncer that stopped at the
    /// failure is joined, what was written before the failure is made durable, the chain
    /// goes on from the last complete entry on disk (a torn entry the failure left is not
    /// one, as after a crash) in a new file, and a new syncer starts. `Ok(false)`: the log
    /// had not failed. `Err`: it still cannot be written (it stays failed; try later), or an
    /// fsync of the log failed, which only a restart may get over (see `sync_failed`).
    ///
    /// Entries refused while the log was failed stay refused: their requests were answered
    /// 503 and not carried out, and [`AuditLog::sync_point`] fails for any mark taken before
    /// the recovery. Requests arriving meanwhile are refused at once: the slow part (fsyncs,
    /// reading the last file) runs without the writer's lock, which nothing else needs while
    /// the log is failed.
    pub fn recover(&self) -> std::io::Result<bool> {
        let _one = self.recovering.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_failed() {
            return Ok(false);
        }
        if self.shared.sync_failed.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(
                "an fsync of the audit log failed, so entries it holds may not be on the disk: check the disk, restart the server and run efsctl audit verify",
            ));
        }
        // The syncer returns once it sees the failure (`fail` woke it). Joined without the
        // writer's lock, which it takes.
        let old = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in old {
            let _ = t.join();
        }
        // Nothing appends to a failed log and its syncer is gone: what the writer holds
        // stays as it is while the lock is not held.
        let (old_file, keys) = {
            let w = self.shared.writer();
            if w.closing {
                return Err(std::io::Error::other("the audit log is closing"));
            }
            (w.file.as_ref().map(|f| f.file.clone()), w.keys.duplicate())
        };
        // The anchor may only name durable entries: what the old file holds is synced (as
        // a rotation does) before anything chains to it.
        if let Some(f) = old_file
            && let Err(e) = f.sync_all()
        {
            self.shared
                .mark_failed("syncing before a recovery", &e, true);
            return Err(e);
        }
        let files = list_files(&self.dir)?;
        let number = files.last().map(|(n, _)| n + 1).unwrap_or(1);
        // A new file first: the cheap test of whether the disk takes writes again.
        let new_file = OpenFile::create(&self.dir, number, &keys)?;
        // As `open` does: from the anchor if it is further on (the log was cut), marked if
        // the anchor is gone.
        let (start, note) = chain_start(
            last_entry(&self.dir, &files)?,
            &read_head(&self.dir, &keys)?,
        );
        if let Some(n) = note {
            tracing::warn!("{n}");
        }
        let mut w = self.shared.writer();
        if w.closing {
            return Err(std::io::Error::other("the audit log is closing"));
        }
        w.file = Some(new_file);
        w.next_number = number + 1;
        w.head = start;
        // Working again before the syncer starts (it returns at once from a failed log);
        // no append can come in before `w` is dropped.
        self.shared.state.fetch_add(1, Ordering::SeqCst);
        match spawn_syncer(&self.shared, &self.dir, &keys, start, &self.opts) {
            Ok(t) => self
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t),
            Err(e) => {
                self.shared.mark_failed("starting its syncer", &e, false);
                return Err(e);
            }
        }
        drop(w);
        tracing::warn!(
            seq = start.seq,
            "the audit log recovered: it is written again, continuing after entry {} (run efsctl audit verify)",
            start.seq
        );
        Ok(true)
    }

    /// Seals, chains and appends `rec` now, under the writer's lock, and returns once its
    /// `write(2)` has returned. A failed write fails the whole log (fail closed). For callers
    /// that are not async (the login hook); [`AuditLog::record`] is the same for async code.
    pub fn submit(&self, rec: Record) -> Result<(), AuditError> {
        // Refused without waiting for the lock (a recovery may be working).
        if self.is_failed() {
            return Err(AuditError::Failed);
        }
        let mut w = self.shared.writer();
        if w.closing || self.is_failed() {
            return Err(AuditError::Failed);
        }
        if let Err(e) = w.append(std::slice::from_ref(&rec)) {
            let sync = std::mem::take(&mut w.sync_error);
            self.shared.mark_failed("writing", &e, sync);
            drop(w);
            self.shared.wake_syncer();
            return Err(AuditError::Failed);
        }
        drop(w);
        self.shared.wake_syncer();
        Ok(())
    }

    /// Writes an entry (returns once its `write(2)` has returned).
    pub async fn record(&self, rec: Record) -> Result<(), AuditError> {
        self.submit(rec)
    }

    /// Writes an entry and returns once it is on the disk: once the syncer has `fdatasync`ed
    /// it and named it in the anchor (at most about the anchor interval, 200 ms by default),
    /// not merely `write(2)`n. For an entry that must survive a power cut right after a step
    /// that cannot be undone (`retire-terms`' switch, its discarding at an open). `Err` if the
    /// log fails or closes meanwhile, even if it recovers (the entry may be lost), or after
    /// 30 s. It waits for the syncer instead of syncing the file itself: a sync of its own
    /// could take a disk error the syncer would then not see, and let it anchor entries that
    /// never reached the disk. Blocks the calling thread: efsctl's commands only.
    pub fn submit_durable(&self, rec: Record) -> Result<(), AuditError> {
        let since = self.mark();
        self.submit(rec)?;
        let seq = self.shared.writer().head.seq;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if since.0 % 2 == 1 || self.mark() != since || self.shared.closed.load(Ordering::SeqCst)
            {
                return Err(AuditError::Failed);
            }
            if self.anchored().is_some_and(|h| h.seq >= seq) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(AuditError::Failed);
            }
            // The syncer, woken by the append, syncs it at once and anchors it when due.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `Err` if the log was failed at `since` ([`AuditLog::mark`], taken before submitting
    /// entries without looking at the result, as the login hook does) or has failed since,
    /// even if it recovered meanwhile: such an entry may be missing, so the answer it
    /// belongs to must not go.
    pub async fn sync_point(&self, since: AuditMark) -> Result<(), AuditError> {
        if since.0 % 2 == 1 || self.mark() != since || self.shared.closed.load(Ordering::SeqCst) {
            Err(AuditError::Failed)
        } else {
            Ok(())
        }
    }

    /// Makes everything written durable, updates the anchor and stops the syncer. Called by
    /// `Drop`; later entries are refused.
    pub fn close(&self) {
        // Under the writer's lock: an append in progress finishes before the syncer is told
        // that nothing more comes.
        {
            let mut w = self.shared.writer();
            w.closing = true;
            self.shared.closed.store(true, Ordering::SeqCst);
        }
        {
            let _g = self
                .shared
                .idle_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

struct OpenFile {
    file: Arc<File>,
    key: FileKey,
    salt: [u8; 16],
    size: u64,
}

struct Writer {
    dir: PathBuf,
    mac: ChainMac,
    keys: AuditKeys,
    head: Head,
    file: Option<OpenFile>,
    next_number: u32,
    max_file_bytes: u64,
    buf: Vec<u8>,
    /// Set by [`AuditLog::close`]: no more appends.
    closing: bool,
    /// Set when the error `append` returns is a failed fsync of a log file.
    sync_error: bool,
}

impl Writer {
    fn append(&mut self, batch: &[Record]) -> std::io::Result<()> {
        if self
            .file
            .as_ref()
            .is_none_or(|f| f.size >= self.max_file_bytes)
        {
            self.rotate()?;
        }
        let of = self.file.as_mut().expect("rotate opened a file");
        self.buf.clear();
        let mut head = self.head;
        for rec in batch {
            let seq = head.seq + 1;
            let t = now_ms();
            let sealed = of.key.seal(seq, t, rec);
            let mac = self.mac.compute(&head.mac, seq, t, &of.salt, &sealed);
            line::push_entry(&mut self.buf, seq, t, &sealed, &mac);
            head = line::Head { seq, mac };
        }
        // One write(2) for the group: O_APPEND, so a reader sees whole groups or a torn tail.
        (&*of.file).write_all(&self.buf)?;
        of.size += self.buf.len() as u64;
        self.head = head;
        Ok(())
    }

    /// Closes the current file (durably) and starts the next one with a fresh salt.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(old) = &self.file {
            // The anchor may only name entries that are durable; the syncer syncs the
            // current file only, so the old one is synced here, before anything goes on.
            if let Err(e) = old.file.sync_all() {
                self.sync_error = true;
                return Err(e);
            }
        }
        self.file = None;
        self.file = Some(OpenFile::create(&self.dir, self.next_number, &self.keys)?);
        self.next_number += 1;
        Ok(())
    }
}

impl OpenFile {
    /// A new audit file `number` in `dir`: a fresh salt, its header written and synced,
    /// and the directory entry synced.
    fn create(dir: &Path, number: u32, keys: &AuditKeys) -> std::io::Result<Self> {
        let mut salt = [0u8; 16];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| std::io::Error::other("the RNG failed"))?;
        let path = dir.join(line::file_name(number));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let header = line::header_line(&salt);
        f.write_all(header.as_bytes())?;
        f.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(Self {
            file: Arc::new(f),
            key: FileKey::new(keys, &salt),
            salt,
            size: header.len() as u64,
        })
    }
}

struct Syncer {
    dir: PathBuf,
    keys: AuditKeys,
    /// The last entry fdatasync'd.
    synced: Head,
    /// The last entry the anchor names.
    anchored: Head,
    /// When the anchor was last written by this writer (`None`: not yet, so the first sync
    /// writes it at once).
    last_anchor: Option<Instant>,
    interval: Duration,
    anchor_interval: Duration,
}

impl Syncer {
    /// What the writer has written (and the file it went to), and whether it is closing.
    fn written(shared: &Shared) -> (Head, Option<Arc<File>>, bool) {
        let w = shared.writer();
        (w.head, w.file.as_ref().map(|f| f.file.clone()), w.closing)
    }

    /// Waits up to `timeout` for an append (or close, or failure) when the writer's head is
    /// still `seen`. `syncer_idle` is set before looking again, under `idle_lock`, so an
    /// append that comes after the second look sees it set and wakes us (it takes
    /// `idle_lock`, which `wait_timeout` releases).
    fn idle_wait(shared: &Shared, seen: Head, timeout: Duration) {
        let g = shared.idle_lock.lock().unwrap_or_else(|e| e.into_inner());
        shared.syncer_idle.store(true, Ordering::SeqCst);
        let (again, _, closing) = Self::written(shared);
        if again == seen && !closing && !shared.is_failed() {
            let _ = shared
                .wake
                .wait_timeout(g, timeout)
                .unwrap_or_else(|e| e.into_inner());
        }
        shared.syncer_idle.store(false, Ordering::SeqCst);
    }

    fn run(mut self, shared: &Shared) {
        loop {
            if shared.is_failed() {
                return;
            }
            let (head, file, closing) = Self::written(shared);
            let need_sync = head != self.synced;
            let since_anchor = self
                .last_anchor
                .map_or(self.anchor_interval, |t| t.elapsed());
            let anchor_due = closing || since_anchor >= self.anchor_interval;
            if !need_sync && (head == self.anchored || !anchor_due) {
                if closing {
                    return;
                }
                // Nothing to do now: wait for an append, or until the anchor is due. (The
                // one-minute bound is only a safety net: appends wake the syncer.)
                let timeout = if head == self.anchored {
                    Duration::from_secs(60)
                } else {
                    self.anchor_interval - since_anchor
                };
                Self::idle_wait(shared, head, timeout);
                continue;
            }
            if let (Some(f), true) = (&file, need_sync)
                && let Err(e) = f.sync_data()
            {
                shared.fail("syncing", &e, true);
                return;
            }
            // The anchor only ever names entries already fsynced.
            if anchor_due
                && head != self.anchored
                && let Err(e) = write_head(&self.dir, &self.keys, &head)
            {
                shared.fail("updating its anchor", &e, false);
                return;
            }
            self.synced = head;
            if anchor_due {
                if head != self.anchored {
                    *shared.anchored.lock().unwrap_or_else(|e| e.into_inner()) = Some(head);
                }
                self.anchored = head;
                self.last_anchor = Some(Instant::now());
            }
            if !closing {
                std::thread::sleep(self.interval);
            }
        }
    }
}

/// Starts the syncer of a log whose entries up to `start` are durable.
fn spawn_syncer(
    shared: &Arc<Shared>,
    dir: &Path,
    keys: &AuditKeys,
    start: Head,
    opts: &AuditOptions,
) -> std::io::Result<JoinHandle<()>> {
    let syncer = Syncer {
        dir: dir.to_path_buf(),
        keys: keys.duplicate(),
        synced: start,
        anchored: start,
        last_anchor: None,
        interval: opts.flush_interval,
        anchor_interval: opts.anchor_interval,
    };
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("efs-audit-sync".into())
        .spawn(move || syncer.run(&shared))
}

/// Where new entries chain on, given the log's last complete entry and its anchor, and what
/// to warn about:
/// - the anchor further on than the log: the log was cut; new entries chain to the anchor,
///   so `verify` keeps reporting the missing entries;
/// - the anchor missing (while the log holds entries; a new log's anchor is written before
///   its first entry) or not valid under this key: whether entries were cut off the log's
///   end cannot be told any more, and a new anchor would hide that for good. New entries
///   chain to [`UNANCHORED`] instead of the last entry, so every later `verify` names the
///   first of them as written after the anchor was lost;
/// - otherwise from the log's last entry.
fn chain_start(log_head: Head, anchor: &HeadFile) -> (Head, Option<String>) {
    let unanchored = Head {
        seq: log_head.seq,
        mac: UNANCHORED,
    };
    match anchor {
        HeadFile::Missing if log_head.seq == 0 => (log_head, None),
        HeadFile::Missing => (
            unanchored,
            Some(format!(
                "the audit log (entries 1 to {}) has no HEAD anchor: it was deleted, and entries may have been cut off the log's end; new entries are marked so that efsctl audit verify keeps reporting it",
                log_head.seq
            )),
        ),
        HeadFile::Invalid => (
            unanchored,
            Some(
                "the audit log's HEAD anchor is damaged or forged, so entries may have been cut off the log's end; new entries are marked so that efsctl audit verify keeps reporting it"
                    .into(),
            ),
        ),
        HeadFile::Valid(a) if a.seq > log_head.seq => (
            *a,
            Some(format!(
                "the audit log ends at entry {} but its anchor records entry {}: entries were removed; new entries continue from the anchor (run efsctl audit verify)",
                log_head.seq, a.seq
            )),
        ),
        HeadFile::Valid(_) => (log_head, None),
    }
}

/// The HEAD anchor's path.
pub(crate) fn head_path(dir: &Path) -> PathBuf {
    dir.join("HEAD")
}

/// Replaces the anchor atomically (temporary file, fsync, rename, directory fsync).
fn write_head(dir: &Path, keys: &AuditKeys, head: &Head) -> std::io::Result<()> {
    let tmp = dir.join("HEAD.tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(line::head_text(keys, head).as_bytes())?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, head_path(dir))?;
    File::open(dir)?.sync_all()
}

pub(crate) enum HeadFile {
    Missing,
    Invalid,
    Valid(Head),
}

pub(crate) fn read_head(dir: &Path, keys: &AuditKeys) -> std::io::Result<HeadFile> {
    match std::fs::read(head_path(dir)) {
        Ok(t) => Ok(match line::parse_head(keys, &t) {
            Some(h) => HeadFile::Valid(h),
            None => HeadFile::Invalid,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HeadFile::Missing),
        Err(e) => Err(e),
    }
}

/// The audit files in `dir`, by number.
pub(crate) fn list_files(dir: &Path) -> std::io::Result<Vec<(u32, String)>> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e),
    };
    for e in rd {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(n) = line::file_number(&name) {
            v.push((n, name));
        }
    }
    v.sort();
    Ok(v)
}

/// The last complete, well-formed entry of the log (not verified: that is `verify`'s job).
fn last_entry(dir: &Path, files: &[(u32, String)]) -> std::io::Result<Head> {
    Ok(last_entry_timed(dir, files)?.0)
}

/// The log in `dir` as found: its last complete entry and when it was written, and when
/// entry `after + 1` was written (the first entry after a recorded head), if the log holds it.
/// Reads the files from the last back, only as far as that entry.
pub(crate) fn log_end(
    dir: &Path,
    after: Option<u64>,
) -> std::io::Result<((Head, i64), Option<i64>)> {
    let files = list_files(dir)?;
    let end = last_entry_timed(dir, &files)?;
    let Some(target) = after.map(|a| a + 1).filter(|t| *t <= end.0.seq) else {
        return Ok((end, None));
    };
    for (_, name) in files.iter().rev() {
        let data = std::fs::read(dir.join(name))?;
        let mut first_seq = None;
        for l in data.split(|&b| b == b'\n') {
            if let Some(e) = line::parse_entry(l) {
                if e.seq == target {
                    return Ok((end, Some(e.time_ms)));
                }
                first_seq.get_or_insert(e.seq);
            }
        }
        if first_seq.is_some_and(|f| f <= target) {
            break;
        }
    }
    Ok((end, None))
}

/// [`last_entry`], and the time it was written (Unix ms; 0 for an empty log).
fn last_entry_timed(dir: &Path, files: &[(u32, String)]) -> std::io::Result<(Head, i64)> {
    for (_, name) in files.iter().rev() {
        let data = std::fs::read(dir.join(name))?;
        // Only '\n'-terminated lines count: a torn last line is a write a crash cut short.
        let complete = match data.iter().rposition(|&b| b == b'\n') {
            Some(i) => &data[..i],
            None => continue,
        };
        for l in complete.split(|&b| b == b'\n').rev() {
            if let Some(e) = line::parse_entry(l) {
                return Ok((
                    Head {
                        seq: e.seq,
                        mac: e.mac,
                    },
                    e.time_ms,
                ));
            }
        }
    }
    Ok((Head::START, 0))
}
