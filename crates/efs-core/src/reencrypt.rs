//! Re-encryption while serving: every file rewritten under a fresh data key, in the
//! background, resumable, with reads and writes served throughout.
//!
//! It is a key rotation that also replaces content. [`begin`] adds a keyring term
//! exactly as `rotate-key` does (persisted with a progress record, meta `reencryption`,
//! in one batch), so a file still to do is recognisable by its data key's term: older
//! than the current one. [`run`] then walks the index page by page; for each such file
//! it decrypts the current version and writes it again as new content (new content id,
//! new random data key wrapped under the new term), and commits a page of these
//! together with the cursor, in one batch that expects every old record exactly. A
//! concurrent write, rename or delete makes that batch fail: the page is then retried
//! one file at a time, the request wins where it changed a file (its new version already
//! has a fresh key, or is gone), and the new content made for it is discarded. Old blobs
//! are removed only after the commit (deferred while a backup copies them); a reader
//! that opened the old version keeps reading it (an open blob survives its removal).
//!
//! While a re-encryption runs, a rename keeps the file's old data-key term (instead of
//! rewrapping it as during a plain rotation): a file moved behind the cursor is still
//! recognised as not done and found by the next pass. A pass that changed nothing ends
//! the re-encryption. A crash leaves the record `running` with the last committed
//! cursor: the next open resumes it; new content written but not committed is an orphan
//! that `gc` removes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::rotation::{self, Damaged, RotationState};
use super::{Filesystem, FinishedUpload};
use crate::error::{CoreError, Result};
use crate::index::{Batch, EntryKey, Expect, Op};
use crate::keyparts::StarterKey;
use crate::keyring::Keyring;
use crate::record::{Kind, Record, Storage, data_key_aad};

/// Index metadata key of the re-encryption progress.
pub const META_REENCRYPTION: &str = "reencryption";
/// Entries examined per page at most.
const PAGE: usize = 64;
/// Plaintext bytes rewritten per page at most (bounds the work a crash can lose).
const PAGE_BYTES: u64 = 64 << 20;
/// Passes after which stragglers are left to the next `reencrypt`.
const MAX_PASSES: u32 = 16;

/// Progress of the last re-encryption of a filesystem (clear in the index meta: counts,
/// term numbers and an entry key, which is a keyed hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReencryptProgress {
    /// Running or done.
    pub state: RotationState,
    /// The term every data key is made under.
    pub current_term: u32,
    /// Files when it started (for a percentage; files written meanwhile are not counted).
    pub total_files: u64,
    /// Files rewritten under a fresh data key, all passes.
    pub files_done: u64,
    /// Plaintext bytes rewritten, all passes.
    pub bytes_done: u64,
    /// Files a concurrent write or delete changed first (they needed nothing). While running,
    /// those the walk has met; once done, every file of `total_files` neither rewritten nor
    /// damaged: replaced or deleted before the run reached them.
    pub skipped: u64,
    /// Records only re-sealed (directories, or files already under the current term).
    pub resealed: u64,
    /// Entries examined, all passes.
    pub seen: u64,
    /// Current pass (1 for the first).
    pub pass: u32,
    /// Changes in the current pass.
    pub pass_changed: u64,
    /// Last entry key of the current pass that is done (hex).
    pub cursor: Option<String>,
    /// Start, Unix ms.
    pub started_ms: i64,
    /// End, Unix ms.
    pub finished_ms: Option<i64>,
    /// Entries skipped because their record or content is damaged.
    #[serde(default)]
    pub damaged: Damaged,
}

impl ReencryptProgress {
    fn cursor_key(&self) -> Result<Option<EntryKey>> {
        super::rotation::parse_cursor(self.cursor.as_deref(), "re-encryption cursor")
    }

    fn to_op(&self) -> Op {
        Op::PutMeta(
            META_REENCRYPTION.into(),
            serde_json::to_vec(self).expect("serialising JSON cannot fail"),
        )
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The stored progress of the filesystem's last re-encryption, if any.
pub async fn progress(fs: &Filesystem) -> Result<Option<ReencryptProgress>> {
    match fs.index.get_meta(META_REENCRYPTION).await? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|_| CoreError::Corrupt("re-encryption progress")),
    }
}

/// True if a re-encryption is unfinished (to be resumed).
pub async fn pending(fs: &Filesystem) -> Result<bool> {
    Ok(progress(fs)
        .await?
        .is_some_and(|p| p.state == RotationState::Running))
}

/// Marks the filesystem as re-encrypting (renames keep old terms); called at open for an
/// unfinished one before any request is served.
pub(crate) fn mark_running(fs: &Filesystem) {
    fs.reencrypting.store(true, Ordering::SeqCst);
}

/// Files in the filesystem, for the progress percentage (as [`Filesystem::stats`], but a
/// damaged record is not counted instead of stopping the count: [`run`] skips it).
async fn count_files(fs: &Filesystem) -> Result<u64> {
    let kr = fs.keyring();
    let mut files = 0;
    let mut after = None;
    loop {
        let rows = fs.index.scan_entries(after.as_ref(), 1024).await?;
        let Some((last, _)) = rows.last() else {
            return Ok(files);
        };
        after = Some(*last);
        for (k, v) in &rows {
            match fs.open_rec(&kr, k, v) {
                Ok(r) if r.kind == Kind::File => files += 1,
                Ok(_) => {}
                Err(e) if Damaged::is_damage(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// What [`begin`] did.
#[derive(Debug, Clone)]
pub enum Begun {
    /// A new term was added and a re-encryption started.
    Started(ReencryptProgress),
    /// An unfinished re-encryption exists: it must be resumed.
    Unfinished(ReencryptProgress),
}

/// Adds a term and persists it with a fresh progress record; from then on new writes use
/// the new term and renames keep old ones. Refused while a key rotation is unfinished.
pub async fn begin(fs: &Filesystem, starter: &StarterKey) -> Result<Begun> {
    if fs.restore_state().0 > 0 {
        return Err(CoreError::Invalid(
            "a restore into this filesystem is running: re-encrypt once it has ended".into(),
        ));
    }
    let Ok(_guard) = fs.rotation.try_lock() else {
        if let Some(p) = progress(fs).await?
            && p.state == RotationState::Running
        {
            return Ok(Begun::Unfinished(p));
        }
        return Err(CoreError::Invalid(
            "a key rotation or re-encryption of this filesystem is running; wait for it (efsctl status)".into(),
        ));
    };
    if let Some(p) = progress(fs).await?
        && p.state == RotationState::Running
    {
        return Ok(Begun::Unfinished(p));
    }
    if rotation::pending(fs).await? {
        return Err(CoreError::Invalid(
            "a key rotation of this filesystem is unfinished; it must end first (efsctl status)"
                .into(),
        ));
    }
    let total_files = count_files(fs).await?;
    let sealed = fs
        .index
        .get_meta(crate::datadir::META_KEYRING)
        .await?
        .ok_or(CoreError::Corrupt("filesystem without keyring"))?;
    let mut kr = Keyring::open(starter, &fs.id, &sealed)?;
    let n = kr.add_term();
    let prog = ReencryptProgress {
        state: RotationState::Running,
        current_term: n,
        total_files,
        files_done: 0,
        bytes_done: 0,
        skipped: 0,
        resealed: 0,
        seen: 0,
        pass: 1,
        pass_changed: 0,
        cursor: None,
        started_ms: now_ms(),
        finished_ms: None,
        damaged: Damaged::default(),
    };
    let batch = Batch {
        ops: vec![
            Op::PutMeta(
                crate::datadir::META_KEYRING.into(),
                kr.seal(starter, &fs.id),
            ),
            prog.to_op(),
        ],
        ..Default::default()
    };
    // Before the new term is visible: no rename may rewrap to it without new content.
    *fs.reencrypt_pass_start
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(fs.old_term_renames.load(Ordering::SeqCst));
    mark_running(fs);
    if !fs.commit_batch(batch).await? {
        fs.reencrypting.store(false, Ordering::SeqCst);
        return Err(CoreError::Contention);
    }
    fs.set_keyring(kr);
    tracing::info!(fs = fs.name(), term = n, "re-encryption started");
    Ok(Begun::Started(prog))
}

/// One planned change of a page.
struct Change {
    key: EntryKey,
    old: Vec<u8>,
    new: Vec<u8>,
    /// The old record (its blob is removed after the commit).
    old_rec: Option<Record>,
    /// The new content (discarded if the change loses to a request).
    content: Option<FinishedUpload>,
}

impl Change {
    fn ops(&self, batch: &mut Batch) {
        batch.expect.push(Expect {
            key: self.key,
            value: Some(self.old.clone()),
        });
        if let Some(c) = &self.content
            && let Some(inline) = &c.inline
        {
            batch.ops.push(Op::PutInline(c.content_id, inline.clone()));
        }
        if let Some(old) = &self.old_rec
            && old.storage == Storage::Inline
        {
            batch.ops.push(Op::DeleteInline(old.id));
        }
        batch.ops.push(Op::PutEntry(self.key, self.new.clone()));
    }
}

/// Decrypts a file version and writes it again under a fresh data key and the current
/// term. `None` if the version vanished meanwhile (a request replaced it).
async fn rewrite(
    fs: &Arc<Filesystem>,
    kr: &Keyring,
    key: &EntryKey,
    rec: &Record,
) -> Result<Option<(Vec<u8>, FinishedUpload)>> {
    let reader = match fs.open_record(kr, rec).await {
        Ok(r) => r,
        Err(CoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    // Below the server's free-space reserve the run stops here, as on a full disk (this
    // page's work is dropped, the cursor stays at the last committed page): resumed later.
    fs.opts.check_space(rec.size)?;
    let mut up = fs.begin_upload().await?;
    let n = reader.segment_count();
    let mut i = 0;
    while i < n {
        let end = (i + 16).min(n);
        let plain = match reader.read_plain(i, end).await {
            Ok(p) => p,
            Err(e) => {
                up.abort().await;
                return Err(e);
            }
        };
        for r in &plain.segments {
            if let Err(e) = up.write(&plain.buf[r.clone()]).await {
                up.abort().await;
                return Err(e);
            }
        }
        i = end;
    }
    let fin = up.finish().await?;
    let term = kr.current();
    let mut new = rec.clone();
    new.id = fin.content_id;
    new.storage = fin.storage;
    new.key_term = term.number;
    new.wrapped_key = term.data_key_sealer().seal(
        &data_key_aad(&fs.id, &fin.content_id),
        fin.data_key.as_bytes(),
    );
    Ok(Some((new.seal(kr, &fs.id, key), fin)))
}

/// Re-encrypts from the stored cursor until done, or until `limit` entries have been
/// examined (tests simulate a crash with it). Returns the progress as stored. An error stops
/// it where it was (resumable), and [`stopped`] says why until the next run.
pub async fn run(fs: &Arc<Filesystem>, limit: Option<u64>) -> Result<Option<ReencryptProgress>> {
    let _guard = fs.rotation.lock().await;
    set_stopped(fs, None);
    let out = run_locked(fs, limit).await;
    if let Err(e) = &out {
        set_stopped(fs, Some(e.to_string()));
    }
    out
}

/// Why this process's last re-encryption of `fs` stopped before it was done, if it did and
/// none has run since (the stored state is `running` then: it resumes at the next start or
/// `efsctl reencrypt`).
pub fn stopped(fs: &Filesystem) -> Option<String> {
    fs.reencrypt_stopped
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn set_stopped(fs: &Filesystem, why: Option<String>) {
    *fs.reencrypt_stopped
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = why;
}

/// [`run`], under the filesystem's rotation lock.
async fn run_locked(fs: &Arc<Filesystem>, limit: Option<u64>) -> Result<Option<ReencryptProgress>> {
    let Some(mut prog) = progress(fs).await? else {
        return Ok(None);
    };
    if prog.state == RotationState::Running {
        mark_running(fs);
    }
    let mut budget = limit;
    while prog.state == RotationState::Running {
        if budget == Some(0) {
            break;
        }
        let kr = fs.keyring();
        if kr.current_number() != prog.current_term {
            return Err(CoreError::Corrupt(
                "re-encryption term differs from the keyring",
            ));
        }
        let page = budget.map_or(PAGE, |b| (b as usize).min(PAGE));
        let rows = fs
            .index
            .scan_entries(prog.cursor_key()?.as_ref(), page)
            .await?;
        if rows.is_empty() {
            // No rename may keep an old term between this decision and the flag's clearing.
            let _gate = fs.rename_gate.write().await;
            let renames = fs.old_term_renames.load(Ordering::SeqCst);
            let pass_start = *fs
                .reencrypt_pass_start
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // A pass that changed nothing ends the run, unless a file kept its old term in a
            // rename during it (it may have moved behind the cursor), or it began before this
            // process did (such renames unknown).
            let quiet = prog.pass_changed == 0 && pass_start == Some(renames);
            let mut next = prog.clone();
            if quiet || prog.pass >= MAX_PASSES {
                next.state = RotationState::Done;
                next.finished_ms = Some(now_ms());
                next.skipped = changed_by_clients(&next);
            } else {
                next.pass += 1;
            }
            next.pass_changed = 0;
            next.cursor = None;
            commit_meta(fs, &next).await?;
            if next.state == RotationState::Done {
                fs.reencrypting.store(false, Ordering::SeqCst);
            } else {
                *fs.reencrypt_pass_start
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(renames);
            }
            prog = next;
            continue;
        }
        let mut changes = Vec::new();
        let mut next = prog.clone();
        let mut bytes = 0u64;
        let mut files = 0u64;
        let mut vanished = 0u64;
        for (k, v) in &rows {
            next.cursor = Some(hex::encode(k));
            next.seen += 1;
            let rec = match fs.open_rec(&kr, k, v) {
                Ok(r) => r,
                Err(e) if Damaged::is_damage(&e) => {
                    next.damaged
                        .note(fs.name(), "re-encryption", k, prog.pass, &e);
                    continue;
                }
                Err(e) => {
                    discard_all(fs, changes).await;
                    return Err(e);
                }
            };
            if rec.kind == Kind::File && rec.key_term != kr.current_number() {
                match rewrite(fs, &kr, k, &rec).await {
                    Ok(Some((new, fin))) => {
                        bytes += rec.size;
                        files += 1;
                        changes.push(Change {
                            key: *k,
                            old: v.clone(),
                            new,
                            old_rec: Some(rec),
                            content: Some(fin),
                        });
                    }
                    // Its content is gone: a request replaced the version meanwhile, or
                    // (its record unchanged) the content is missing, which is damage, not a
                    // change (counted as one, every pass met it again, and the run ended
                    // `done` with the file still under its old key, unreported).
                    Ok(None) => match fs.index.get_entry(k).await {
                        Ok(Some(now)) if now == *v => next.damaged.note(
                            fs.name(),
                            "re-encryption",
                            k,
                            prog.pass,
                            &CoreError::Corrupt("the file's content is missing"),
                        ),
                        Ok(_) => vanished += 1,
                        Err(e) => {
                            discard_all(fs, changes).await;
                            return Err(e);
                        }
                    },
                    Err(e) if Damaged::is_damage(&e) => {
                        next.damaged
                            .note(fs.name(), "re-encryption", k, prog.pass, &e);
                    }
                    Err(e) => {
                        discard_all(fs, changes).await;
                        return Err(e);
                    }
                }
            } else {
                match rotation::rewrap_value(fs, &kr, k, v) {
                    Ok(Some(new)) => changes.push(Change {
                        key: *k,
                        old: v.clone(),
                        new,
                        old_rec: None,
                        content: None,
                    }),
                    Ok(None) => {}
                    Err(e) if Damaged::is_damage(&e) => {
                        next.damaged
                            .note(fs.name(), "re-encryption", k, prog.pass, &e);
                    }
                    Err(e) => {
                        discard_all(fs, changes).await;
                        return Err(e);
                    }
                }
            }
            if bytes >= PAGE_BYTES {
                break;
            }
        }
        let examined = next.seen - prog.seen;
        let resealed = changes.len() as u64 - files;
        let mut batch = Batch::default();
        for c in &changes {
            c.ops(&mut batch);
        }
        next.files_done += files;
        next.bytes_done += bytes;
        next.resealed += resealed;
        next.skipped += vanished;
        next.pass_changed += changes.len() as u64 + vanished;
        batch.ops.push(next.to_op());
        // The old blobs marked as being removed from before the commit until they are (gc
        // and fsck leave them to this run).
        let unlinking: Vec<_> = changes
            .iter()
            .map(|c| fs.unlinking(c.old_rec.as_ref()))
            .collect();
        if fs.commit_batch(batch).await? {
            for c in &changes {
                if let Some(old) = &c.old_rec {
                    fs.remove_blob_of(old).await;
                }
            }
            drop(unlinking);
        } else {
            drop(unlinking);
            // A request changed one of them: one at a time; the request wins where it did.
            next.files_done = prog.files_done;
            next.bytes_done = prog.bytes_done;
            next.resealed = prog.resealed;
            for c in changes {
                let mut b = Batch::default();
                c.ops(&mut b);
                let _unlinking = fs.unlinking(c.old_rec.as_ref());
                if fs.commit_batch(b).await? {
                    match &c.old_rec {
                        Some(old) => {
                            next.files_done += 1;
                            next.bytes_done += old.size;
                            fs.remove_blob_of(old).await;
                        }
                        None => next.resealed += 1,
                    }
                } else {
                    next.skipped += 1;
                    if let Some(fin) = &c.content {
                        fs.discard(fin).await;
                    }
                }
            }
            // Something changed under us: another pass looks again.
            next.pass_changed = next.pass_changed.max(1);
            commit_meta(fs, &next).await?;
        }
        if let Some(b) = budget.as_mut() {
            *b = b.saturating_sub(examined);
        }
        prog = next;
    }
    if prog.state == RotationState::Done {
        tracing::info!(
            fs = fs.name(),
            term = prog.current_term,
            files = prog.files_done,
            bytes = prog.bytes_done,
            damaged = prog.damaged.count,
            "re-encryption done"
        );
    }
    Ok(Some(prog))
}

/// The files of the start's count that a client changed before the run reached them, once
/// it is done: those neither rewritten nor damaged. The walk sees few of them: a file
/// replaced ahead of the cursor is met under the current term (it needs nothing, and was
/// counted nowhere), a deleted one is not met at all; and a file renamed while its page was
/// committed was counted as changed, then rewritten (counted twice). So "N of TOTAL files,
/// M changed by clients first" fell short of TOTAL after a run under writes. The remainder
/// is exact since every file present at the start is rewritten at most once (its new data
/// key is under the current term, which no rename gives back), and a file written since
/// the start is under the current term, neither counted nor rewritten. (A damaged entry
/// counts as a file here: one whose record does not open was not in the start's count.)
fn changed_by_clients(p: &ReencryptProgress) -> u64 {
    p.total_files
        .saturating_sub(p.files_done)
        .saturating_sub(p.damaged.count)
}

async fn discard_all(fs: &Filesystem, changes: Vec<Change>) {
    for c in changes {
        if let Some(fin) = &c.content {
            fs.discard(fin).await;
        }
    }
}

async fn commit_meta(fs: &Filesystem, p: &ReencryptProgress) -> Result<()> {
    let b = Batch {
        ops: vec![p.to_op()],
        ..Default::default()
    };
    if fs.commit_batch(b).await? {
        Ok(())
    } else {
        Err(CoreError::Contention)
    }
}

/// Runs an unfinished re-encryption in a background task of the current tokio runtime.
/// Returns false (nothing spawned) outside a runtime: the caller runs [`run`] itself.
pub fn spawn(fs: Arc<Filesystem>) -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    rt.spawn(async move {
        // Resumed at start, before the server's own index check: nothing is rewritten (and
        // no rolled-back record resealed as if current) until the index holds its digest.
        if let Err(e) = fs.ensure_index_checked().await {
            tracing::error!(fs = fs.name(), error = %e, "re-encryption not resumed: the index is not trusted (see efsctl fsck); it resumes at the next start or reencrypt once the index is accepted");
            // Not running: `status` says so.
            set_stopped(&fs, Some(format!("not resumed: {e}")));
            return;
        }
        if let Err(e) = run(&fs, None).await {
            tracing::error!(fs = fs.name(), error = %e, "re-encryption stopped; it resumes at the next start or reencrypt");
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EfsPath;
    use crate::fs::rotation::tests::{env, put};

    /// Regression: a re-encryption commit that failed with an unknown outcome (redb wrote it,
    /// and recovers it when the index is reopened) left its new blobs in no set gc respects,
    /// and gc settled the index only for failed uploads: on the index as it read before the
    /// reopen, gc deleted the new blob, then the commit landed at the next write and the file
    /// named a deleted blob (its old blob an orphan: the file lost).
    #[tokio::test]
    async fn gc_after_a_reencryption_commit_of_unknown_outcome_keeps_the_new_blob() {
        use crate::fs::backup::restore_tests::{new_fs, put, read};
        let tmp = tempfile::tempdir().unwrap();
        let (fs, index) = new_fs(tmp.path(), None);
        let starter = StarterKey::for_tests(efs_format::Key32::random());
        let keyring = Batch {
            ops: vec![Op::PutMeta(
                crate::datadir::META_KEYRING.into(),
                fs.keyring().seal(&starter, &fs.id),
            )],
            ..Default::default()
        };
        assert!(fs.commit_batch(keyring).await.unwrap());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        put(&fs, "/f.bin", &data).await;
        assert!(matches!(
            begin(&fs, &starter).await.unwrap(),
            Begun::Started(_)
        ));
        index
            .lands_at_reopen
            .store(true, std::sync::atomic::Ordering::SeqCst);
        run(&fs, None).await.unwrap_err();
        fs.gc(0).await.unwrap();
        // Another write: the failed commit has landed by now, whatever gc did.
        put(&fs, "/g.bin", b"later").await;
        assert_eq!(read(&fs, "/f.bin").await.unwrap(), data);
        run(&fs, None).await.unwrap();
        assert_eq!(read(&fs, "/f.bin").await.unwrap(), data);
        assert!(fs.fsck().await.unwrap().errors.is_empty());
    }

    /// Regression: files that clients replaced or deleted before the run reached them were
    /// counted nowhere, so a run under writes ended "85 of 100 files; 0 changed by clients
    /// first". Every file of the start's count is now either rewritten or changed first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_replaced_or_deleted_ahead_of_the_cursor_count_as_changed_by_clients() {
        let (_t, dd, fs) = env();
        for i in 0..100 {
            put(&fs, &format!("/f{i}"), format!("{i}").as_bytes()).await;
        }
        dd.begin_reencryption("docs").await.unwrap();
        let new_term = fs.keyring().current_number();
        let mut p = step(&fs).await;
        while p.seen < 30 {
            p = step(&fs).await;
        }
        let cursor = p.cursor_key().unwrap().unwrap();
        let ahead: Vec<String> = files(&fs)
            .await
            .into_iter()
            .filter(|(k, _, t)| *k > cursor && *t < new_term)
            .map(|(_, n, _)| n)
            .collect();
        assert!(ahead.len() >= 15, "{}", ahead.len());
        for name in &ahead[..10] {
            put(&fs, &format!("/{name}"), b"replaced").await;
        }
        for name in &ahead[10..15] {
            fs.delete(
                &EfsPath::parse(&format!("/{name}")).unwrap(),
                crate::fs::Precondition::None,
                false,
            )
            .await
            .unwrap();
        }
        let done = run(&fs, None).await.unwrap().unwrap();
        assert_eq!(done.state, RotationState::Done);
        assert_eq!(done.total_files, 100);
        assert_eq!(done.files_done, 85, "{done:?}");
        assert_eq!(done.skipped, 15, "{done:?}");
    }

    /// One entry further (or the end of a pass).
    async fn step(fs: &Arc<Filesystem>) -> ReencryptProgress {
        run(fs, Some(1)).await.unwrap().unwrap()
    }

    /// Every (key, name, key term) of the root's files, in key order.
    async fn files(fs: &Filesystem) -> Vec<(EntryKey, String, u32)> {
        let kr = fs.keyring();
        let rows = fs.index.scan_entries(None, 10_000).await.unwrap();
        rows.iter()
            .map(|(k, v)| {
                let r = fs.open_rec(&kr, k, v).unwrap();
                (*k, r.name, r.key_term)
            })
            .collect()
    }

    /// A new root-level name whose entry key lies strictly between `lo` and `hi`.
    fn name_between(fs: &Filesystem, lo: Option<&EntryKey>, hi: &EntryKey) -> String {
        let kr = fs.keyring();
        (0..1_000_000)
            .map(|i| format!("moved-{i}"))
            .find(|n| {
                let k = fs.entry_key(&kr, &super::super::ROOT_ID, n);
                k < *hi && lo.is_none_or(|lo| k > *lo)
            })
            .expect("a name in range")
    }

    async fn rename(fs: &Filesystem, from: &str, to: &str) {
        fs.rename(
            &EfsPath::parse(&format!("/{from}")).unwrap(),
            &EfsPath::parse(&format!("/{to}")).unwrap(),
            false,
        )
        .await
        .unwrap();
    }

    /// Regression: a rename that kept a file's old term during a re-encryption (so that the
    /// run still finds it) was not counted as a change. A file moved from ahead of the cursor
    /// to behind it in a pass that changed nothing else ended the run `done` with that file
    /// still under its old data key (the one a re-encryption is run to replace).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_moved_behind_the_cursor_in_a_quiet_pass_still_gets_a_new_key() {
        let (_t, dd, fs) = env();
        for i in 0..40 {
            put(&fs, &format!("/f{i}"), format!("{i}").as_bytes()).await;
        }
        dd.begin_reencryption("docs").await.unwrap();
        let new_term = fs.keyring().current_number();
        // Pass 1, half way: F, a file ahead of the cursor, moves behind it (but not to the
        // very start, which pass 2's first step would take).
        let mut p = step(&fs).await;
        while p.seen < 20 {
            p = step(&fs).await;
        }
        let cursor = p.cursor_key().unwrap().unwrap();
        let all = files(&fs).await;
        let f = all
            .iter()
            .find(|(k, _, t)| *k > cursor && *t < new_term)
            .expect("an old file ahead")
            .1
            .clone();
        let g = name_between(&fs, Some(&all[0].0), &cursor);
        rename(&fs, &f, &g).await;
        // The rest of pass 1 rewrites the others, then pass 2 takes its first entry.
        while p.pass == 1 || p.cursor.is_none() {
            p = step(&fs).await;
        }
        let cursor = p.cursor_key().unwrap().unwrap();
        let all = files(&fs).await;
        let (gk, _, gt) = all.iter().find(|(_, n, _)| *n == g).unwrap();
        assert!(*gk > cursor && *gt < new_term, "F is still ahead, old");
        assert!(
            all.iter()
                .filter(|(_, n, _)| *n != g)
                .all(|(_, _, t)| *t == new_term),
            "every other file has its new key"
        );
        // Pass 2 changes nothing else: F moves behind its cursor.
        let h = name_between(&fs, None, &cursor);
        rename(&fs, &g, &h).await;
        let done = run(&fs, None).await.unwrap().unwrap();
        assert_eq!(done.state, RotationState::Done);
        let left: Vec<_> = files(&fs)
            .await
            .into_iter()
            .filter(|(_, _, t)| *t != new_term)
            .collect();
        assert!(
            left.is_empty(),
            "left under an old key: {left:?} ({done:?})"
        );
    }
}
