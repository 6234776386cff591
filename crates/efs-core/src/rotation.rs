//! Key rotation: add a keyring term, switch new writes to it at once, then rewrap every
//! data key (and re-seal every record) under it in the background, without touching
//! content.
//!
//! 1. [`begin`] adds a term to the keyring, and persists the re-sealed keyring together
//!    with a fresh progress record (index meta `rotation`) in one atomic batch; then it
//!    swaps the filesystem's in-memory keyring.
//! 2. [`run`] scans the index page by page. A record sealed under an older term, or a
//!    file whose data key an older term wrapped, is re-sealed under the current term
//!    (data key unwrapped with its old term and wrapped again). Each page's rewraps and
//!    the progress (cursor, counts) are committed in one batch that expects every old
//!    value exactly: a concurrent write, rename or delete wins (that entry is then retried
//!    alone, and skipped if it changed: it already uses the new term, or is gone).
//! 3. A pass that rewrapped something is followed by another, so that a request that
//!    started with the old keyring and committed behind the cursor is caught; a pass
//!    that rewraps nothing ends the rotation (`done`).
//!
//! A crash leaves the progress record `running` with the last committed cursor: opening
//! the data dir resumes from there. Old terms stay in the keyring (older backups need
//! them) until `efsctl retire-terms` removes them ([`super::retire`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Filesystem;
use crate::error::{CoreError, Result};
use crate::index::{Batch, EntryKey, Expect, Op};
use crate::keyparts::StarterKey;
use crate::keyring::Keyring;
use crate::record::{Kind, data_key_aad};

/// Index metadata key of the rotation progress.
pub const META_ROTATION: &str = "rotation";
/// Entries per page (and per batch).
const PAGE: usize = 256;
/// Passes after which a rotation stops looking for stragglers (each pass after the first
/// only finds records written by requests that started before the keyring swap).
const MAX_PASSES: u32 = 16;

/// State of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationState {
    /// Rewrapping (or interrupted: resumed at the next open).
    Running,
    /// Every record and data key uses `current_term`.
    Done,
}

/// Progress of the last rotation of a filesystem (stored in clear in the index meta:
/// counts, term numbers and an entry key, which is a keyed hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotationProgress {
    /// Running or done.
    pub state: RotationState,
    /// The term everything is rewrapped to.
    pub current_term: u32,
    /// Number of terms in the keyring.
    pub terms: u32,
    /// Records re-sealed so far (data keys rewrapped, for files), all passes.
    pub rewrapped: u64,
    /// Entries examined so far, all passes.
    pub seen: u64,
    /// Current pass (1 for the first).
    pub pass: u32,
    /// Records re-sealed in the current pass.
    pub pass_rewrapped: u64,
    /// Last entry key of the current pass that is done (hex), none at the start of a pass.
    pub cursor: Option<String>,
    /// Start, Unix ms.
    pub started_ms: i64,
    /// End, Unix ms.
    pub finished_ms: Option<i64>,
    /// Records skipped because they are damaged.
    #[serde(default)]
    pub damaged: Damaged,
}

/// Entries a rotation or re-encryption skipped because their record or content failed
/// to decrypt or is malformed ([`CoreError::Decrypt`], [`CoreError::Corrupt`]): damage
/// for `efsctl fsck` to look at, which must not stop the run (it would stop at the same
/// entry every time, and no rotation could ever finish again). They keep their old term.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damaged {
    /// Damaged entries met (each once while its key is listed: a later pass meets it again).
    pub count: u64,
    /// Their entry keys (hex: keyed hashes, no name or path), the first [`Damaged::LISTED`].
    pub keys: Vec<String>,
}

impl Damaged {
    /// Keys listed at most.
    pub const LISTED: usize = 64;

    /// Whether `e` means the entry is damaged (skip it) rather than that the run cannot go
    /// on (an index or I/O error: stop, and resume later).
    pub(crate) fn is_damage(e: &CoreError) -> bool {
        matches!(
            e,
            CoreError::Decrypt | CoreError::Corrupt(_) | CoreError::RetiredTerm { .. }
        )
    }

    /// Counts entry `key` (unless already listed; once the list is full, only in the
    /// first pass) and logs it with its key, never a name.
    pub(crate) fn note(&mut self, fs: &str, what: &str, key: &EntryKey, pass: u32, e: &CoreError) {
        let hex = hex::encode(key);
        tracing::warn!(
            fs,
            entry = %hex,
            error = %e,
            "{what}: skipped a damaged entry (it keeps its old term); check it with efsctl fsck"
        );
        if self.keys.contains(&hex) {
            return;
        }
        if self.keys.len() < Self::LISTED {
            self.keys.push(hex);
            self.count += 1;
        } else if pass == 1 {
            self.count += 1;
        }
    }

    /// For `efsctl status`: empty, or "; N damaged entries skipped (keys …)".
    pub fn describe(&self) -> String {
        if self.count == 0 {
            return String::new();
        }
        let shown: Vec<&str> = self.keys.iter().take(8).map(String::as_str).collect();
        let more = if (self.count as usize) > shown.len() {
            ", …"
        } else {
            ""
        };
        format!(
            "; {} damaged entries skipped, left under their old term (entry keys: {}{more}; see efsctl fsck)",
            self.count,
            shown.join(", ")
        )
    }
}

impl RotationProgress {
    fn cursor_key(&self) -> Result<Option<EntryKey>> {
        parse_cursor(self.cursor.as_deref(), "rotation cursor")
    }

    fn to_op(&self) -> Op {
        Op::PutMeta(
            META_ROTATION.into(),
            serde_json::to_vec(self).expect("serialising JSON cannot fail"),
        )
    }
}

/// The term that sealed a record value (its clear header; see `record.rs`).
/// The entry key a background pass stored as its cursor (hex), shared by key rotation and
/// re-encryption.
pub(crate) fn parse_cursor(cursor: Option<&str>, what: &'static str) -> Result<Option<EntryKey>> {
    cursor
        .map(|c| {
            hex::decode(c)
                .ok()
                .and_then(|v| EntryKey::try_from(v).ok())
                .ok_or(CoreError::Corrupt(what))
        })
        .transpose()
}

pub(crate) fn sealing_term(value: &[u8]) -> Result<u32> {
    if value.len() < 5 || value[0] != 1 {
        return Err(CoreError::Corrupt("record layout"));
    }
    Ok(u32::from_be_bytes(
        value[1..5].try_into().expect("4 bytes checked above"),
    ))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The stored progress of the filesystem's last rotation, if it ever had one.
pub async fn progress(fs: &Filesystem) -> Result<Option<RotationProgress>> {
    match fs.index.get_meta(META_ROTATION).await? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|_| CoreError::Corrupt("rotation progress")),
    }
}

/// True if a rotation is unfinished (to be resumed).
pub async fn pending(fs: &Filesystem) -> Result<bool> {
    Ok(progress(fs)
        .await?
        .is_some_and(|p| p.state == RotationState::Running))
}

/// What [`begin`] did.
#[derive(Debug, Clone)]
pub enum Begun {
    /// A new term was added and a rotation started.
    Started(RotationProgress),
    /// An unfinished rotation exists: nothing added; it must be resumed.
    Unfinished(RotationProgress),
}

/// Adds a term, persists the keyring and a fresh progress record atomically, and swaps
/// the in-memory keyring: new writes use the new term from now on. The rewrap itself is
/// [`run`]'s.
pub async fn begin(fs: &Filesystem, starter: &StarterKey) -> Result<Begun> {
    if fs.restore_state().0 > 0 {
        return Err(CoreError::Invalid(
            "a restore into this filesystem is running: rotate once it has ended".into(),
        ));
    }
    let Ok(_guard) = fs.rotation.try_lock() else {
        // Held by a rotation running (report it), or by a re-encryption or a restore.
        if let Some(p) = progress(fs).await?
            && p.state == RotationState::Running
        {
            return Ok(Begun::Unfinished(p));
        }
        return Err(CoreError::Invalid(
            "a key rotation, re-encryption or restore of this filesystem is running; wait for it (efsctl status)".into(),
        ));
    };
    if let Some(p) = progress(fs).await?
        && p.state == RotationState::Running
    {
        return Ok(Begun::Unfinished(p));
    }
    if super::reencrypt::pending(fs).await? {
        return Err(CoreError::Invalid(
            "a re-encryption of this filesystem is unfinished; it must end first (efsctl status)"
                .into(),
        ));
    }
    let sealed = fs
        .index
        .get_meta(crate::datadir::META_KEYRING)
        .await?
        .ok_or(CoreError::Corrupt("filesystem without keyring"))?;
    let mut kr = Keyring::open(starter, &fs.id, &sealed)?;
    let n = kr.add_term();
    let prog = RotationProgress {
        state: RotationState::Running,
        current_term: n,
        terms: kr.term_numbers().len() as u32,
        rewrapped: 0,
        seen: 0,
        pass: 1,
        pass_rewrapped: 0,
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
    if !fs.commit_batch(batch).await? {
        return Err(CoreError::Contention);
    }
    fs.set_keyring(kr);
    tracing::info!(fs = fs.name(), term = n, "key rotation started");
    Ok(Begun::Started(prog))
}

/// Re-seals one record under `kr`'s current term if it needs it.
pub(super) fn rewrap_value(
    fs: &Filesystem,
    kr: &Keyring,
    key: &EntryKey,
    value: &[u8],
) -> Result<Option<Vec<u8>>> {
    let cur = kr.current_number();
    let mut rec = fs.open_rec(kr, key, value)?;
    let stale_key = rec.kind == Kind::File && rec.key_term != cur;
    if sealing_term(value)? == cur && !stale_key {
        return Ok(None);
    }
    if stale_key {
        let dk = fs.data_key_of(kr, &rec)?;
        let term = kr.current();
        rec.key_term = term.number;
        rec.wrapped_key = term
            .data_key_sealer()
            .seal(&data_key_aad(&fs.id, &rec.id), dk.as_bytes());
    }
    Ok(Some(rec.seal(kr, &fs.id, key)))
}

/// Rewraps from the stored cursor until the rotation is done, or until `limit` entries
/// have been examined (tests simulate a crash with it). Returns the progress as stored.
/// Without an unfinished rotation, returns the stored progress (if any) unchanged.
pub async fn run(fs: &Filesystem, limit: Option<u64>) -> Result<Option<RotationProgress>> {
    let _guard = fs.rotation.lock().await;
    let Some(mut prog) = progress(fs).await? else {
        return Ok(None);
    };
    let mut budget = limit;
    while prog.state == RotationState::Running {
        if budget == Some(0) {
            break;
        }
        let kr = fs.keyring();
        if kr.current_number() != prog.current_term {
            // Cannot happen (a rotation starts only when none runs): be safe anyway.
            return Err(CoreError::Corrupt("rotation term differs from the keyring"));
        }
        let page = budget.map_or(PAGE, |b| (b as usize).min(PAGE));
        let after = prog.cursor_key()?;
        let rows = fs.index.scan_entries(after.as_ref(), page).await?;
        let Some((last, _)) = rows.last() else {
            // End of a pass.
            let mut next = prog.clone();
            if prog.pass_rewrapped == 0 || prog.pass >= MAX_PASSES {
                next.state = RotationState::Done;
                next.finished_ms = Some(now_ms());
            } else {
                next.pass += 1;
            }
            next.pass_rewrapped = 0;
            next.cursor = None;
            commit_meta(fs, &next).await?;
            prog = next;
            continue;
        };
        let mut changes = Vec::new();
        let mut next = prog.clone();
        for (k, v) in &rows {
            match rewrap_value(fs, &kr, k, v) {
                Ok(Some(nv)) => changes.push((*k, v.clone(), nv)),
                Ok(None) => {}
                Err(e) if Damaged::is_damage(&e) => {
                    next.damaged
                        .note(fs.name(), "key rotation", k, prog.pass, &e)
                }
                Err(e) => return Err(e),
            }
        }
        next.cursor = Some(hex::encode(last));
        next.seen += rows.len() as u64;
        let mut batch = Batch::default();
        for (k, old, new) in &changes {
            batch.expect.push(Expect {
                key: *k,
                value: Some(old.clone()),
            });
            batch.ops.push(Op::PutEntry(*k, new.clone()));
        }
        let all = changes.len() as u64;
        next.rewrapped += all;
        next.pass_rewrapped += all;
        batch.ops.push(next.to_op());
        if !fs.commit_batch(batch).await? {
            // A concurrent request changed one of them: one at a time, and the request
            // wins where it did (its record already uses the new term, or is gone).
            let mut done = 0u64;
            for (k, old, new) in changes {
                let b = Batch {
                    expect: vec![Expect {
                        key: k,
                        value: Some(old),
                    }],
                    ops: vec![Op::PutEntry(k, new)],
                    ..Default::default()
                };
                if fs.commit_batch(b).await? {
                    done += 1;
                }
            }
            next.rewrapped = prog.rewrapped + done;
            next.pass_rewrapped = prog.pass_rewrapped + done;
            // Something changed under us: make sure another pass looks again.
            next.pass_rewrapped = next.pass_rewrapped.max(1);
            commit_meta(fs, &next).await?;
        }
        if let Some(b) = budget.as_mut() {
            *b = b.saturating_sub(rows.len() as u64);
        }
        prog = next;
    }
    if prog.state == RotationState::Done {
        tracing::info!(
            fs = fs.name(),
            term = prog.current_term,
            rewrapped = prog.rewrapped,
            damaged = prog.damaged.count,
            "key rotation done"
        );
    }
    Ok(Some(prog))
}

async fn commit_meta(fs: &Filesystem, p: &RotationProgress) -> Result<()> {
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

/// Runs an unfinished rotation in a background task of the current tokio runtime.
/// Returns false (nothing spawned) outside a runtime: the caller runs [`run`] itself.
pub fn spawn(fs: Arc<Filesystem>) -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    rt.spawn(async move {
        // Resumed at start, before the server's own index check: nothing is rewritten (and
        // no rolled-back record resealed as if current) until the index holds its digest.
        if let Err(e) = fs.ensure_index_checked().await {
            tracing::error!(fs = fs.name(), error = %e, "key rotation not resumed: the index is not trusted (see efsctl fsck); it resumes at the next start or rotate-key once the index is accepted");
            return;
        }
        if let Err(e) = run(&fs, None).await {
            tracing::error!(fs = fs.name(), error = %e, "key rotation stopped; it resumes at the next start or rotate-key");
        }
    });
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keyparts::{self, KeyPartSpec};
    use crate::{DataDir, EfsPath, OpenOptions, Precondition};

    /// A data dir on real files (real redb index) with filesystem `docs` (also used by
    /// other modules' unit tests).
    pub(crate) fn env() -> (tempfile::TempDir, DataDir, Arc<Filesystem>) {
        let tmp = tempfile::tempdir().unwrap();
        let part = tmp.path().join("part.key");
        keyparts::generate_part_file(&part).unwrap();
        let (dd, _) = DataDir::open(
            &tmp.path().join("data"),
            &[KeyPartSpec::File(part)],
            OpenOptions::default(),
            &keyparts::no_prompt,
        )
        .unwrap();
        dd.create_fs("docs").unwrap();
        let fs = dd.fs("docs").unwrap();
        (tmp, dd, fs)
    }

    /// Writes `data` at `path` (also used by other modules' unit tests).
    pub(crate) async fn put(fs: &Arc<Filesystem>, path: &str, data: &[u8]) {
        let mut up = fs.begin_upload().await.unwrap();
        up.write(data).await.unwrap();
        fs.commit(&EfsPath::parse(path).unwrap(), up, None, Precondition::None)
            .await
            .unwrap();
    }

    /// Flips the last byte of `path`'s sealed record in the index; returns its key.
    /// (Also used by other modules' unit tests.)
    pub(crate) async fn damage(fs: &Filesystem, path: &str) -> EntryKey {
        let kr = fs.keyring();
        let r = fs
            .resolve(&kr, &EfsPath::parse(path).unwrap(), false)
            .await
            .unwrap();
        let (mut v, _) = r.current.unwrap();
        *v.last_mut().unwrap() ^= 1;
        let b = Batch {
            ops: vec![Op::PutEntry(r.key, v)],
            ..Default::default()
        };
        assert!(fs.commit_batch(b).await.unwrap());
        r.key
    }

    async fn status(dd: &DataDir) -> String {
        let r = crate::admin::execute(
            dd,
            crate::admin::AdminRequest::Status {
                fs: Some("docs".into()),
            },
        )
        .await;
        assert!(r.ok, "{:?}", r.error);
        r.lines.join("\n")
    }

    /// Regression: `rotate-key` while the rotation lock was held by something else than a
    /// rotation (a restore into the filesystem, a re-encryption) answered with the last,
    /// finished rotation as "unfinished: resuming it", added no term, and reported success.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotation_refused_while_the_lock_is_busy_says_so() {
        let (_t, dd, fs) = env();
        put(&fs, "/a", b"a").await;
        let (started, done) = dd.rotate_key("docs", true).await.unwrap();
        assert!(started && done.state == RotationState::Done);
        let terms = fs.term_numbers();
        let busy = fs.rotation.lock().await; // as a restore holds it
        let e = dd.rotate_key("docs", false).await.unwrap_err();
        assert!(e.to_string().contains("is running"), "{e}");
        drop(busy);
        assert_eq!(fs.term_numbers(), terms, "no term added");
        let (started, _) = dd.rotate_key("docs", true).await.unwrap();
        assert!(started);
        assert_eq!(fs.term_numbers().len(), terms.len() + 1);
    }

    /// Regression: the 2^32 bound of AES-GCM with random nonces was only warned about: a
    /// term past it went on sealing. Past half of it a rotation is due (the server starts
    /// one), and past all of it writes are refused, nothing stored, until a new term.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_term_that_sealed_its_limit_seals_no_more() {
        let (_t, dd, fs) = env();
        put(&fs, "/a", b"a").await;
        assert!(!fs.rotation_due());
        let term = fs.keyring().current().number;
        let mut counts = fs.seal_counts();
        counts.insert(term, crate::fs::SEAL_WARNING);
        fs.set_seal_counts(counts.clone());
        assert!(fs.rotation_due(), "due from half the limit on");
        counts.insert(term, crate::fs::SEAL_LIMIT - 1);
        fs.set_seal_counts(counts);
        put(&fs, "/b", b"the last record this term seals").await;
        // A blob-sized upload refused: its blob goes too (it was left for gc, as after a
        // commit of unknown outcome, though nothing had reached the index).
        let blobs_before = fs.blobs.list().await.unwrap().len();
        let mut up = fs.begin_upload().await.unwrap();
        up.write(&[3u8; 300_000]).await.unwrap();
        let e = fs
            .commit(&EfsPath::parse("/c").unwrap(), up, None, Precondition::None)
            .await
            .unwrap_err();
        assert!(matches!(e, CoreError::SealLimit), "{e}");
        assert_eq!(fs.blobs.list().await.unwrap().len(), blobs_before);
        assert!(fs.unsettled.lock().unwrap().is_empty());
        let e = fs.mkdir(&EfsPath::parse("/d").unwrap()).await.unwrap_err();
        assert!(matches!(e, CoreError::SealLimit), "{e}");
        assert!(fs.open(&EfsPath::parse("/c").unwrap()).await.is_err());
        // A rotation gives writes a new term: they work again, and none is due.
        let (started, done) = dd.rotate_key("docs", true).await.unwrap();
        assert!(started && done.state == RotationState::Done);
        assert!(!fs.rotation_due());
        put(&fs, "/c", b"c").await;
        let mut r = fs.open(&EfsPath::parse("/b").unwrap()).await.unwrap();
        assert_eq!(r.len(), 31);
        drop(r.read_plain(0, 1).await.unwrap());
        r = fs.open(&EfsPath::parse("/c").unwrap()).await.unwrap();
        assert_eq!(r.len(), 1);
    }

    /// Regression: one damaged record (Decrypt from rewrap) stopped the rotation at the
    /// same entry on every run, without naming it: no rotation could ever finish. It is
    /// now skipped, counted, and named by its entry key in the progress and the status.
    #[tokio::test]
    async fn a_damaged_record_is_skipped_and_named_by_rotation() {
        let (_tmp, dd, fs) = env();
        put(&fs, "/a/one", b"one").await;
        put(&fs, "/a/two", &[2u8; 200_000]).await;
        put(&fs, "/b/three", b"three").await;
        let bad = damage(&fs, "/a/two").await;

        let (started, p) = dd.rotate_key("docs", true).await.unwrap();
        assert!(started);
        assert_eq!(p.state, RotationState::Done);
        assert_eq!(p.damaged.count, 1, "{p:?}");
        assert_eq!(p.damaged.keys, [hex::encode(bad)]);
        // Stored, and shown by efsctl status, with the key and no path.
        assert_eq!(progress(&fs).await.unwrap().unwrap().damaged, p.damaged);
        let text = status(&dd).await;
        assert!(text.contains(&hex::encode(bad)), "{text}");
        assert!(!text.contains("/a/two"), "{text}");
        // The others were rewrapped and read back; a next rotation can start.
        let f = fs.open(&EfsPath::parse("/b/three").unwrap()).await.unwrap();
        assert_eq!(f.len(), 5);
        let (started, p) = dd.rotate_key("docs", true).await.unwrap();
        assert!(started && p.state == RotationState::Done);
        // `efsctl rotate-key --wait` names it in its summary too (it said "rotation done"
        // alone, as if every record had been rewrapped).
        let r = crate::admin::execute(
            &dd,
            crate::admin::AdminRequest::RotateKey {
                fs: "docs".into(),
                wait: true,
            },
        )
        .await;
        assert!(r.ok, "{:?}", r.error);
        let text = r.lines.join("\n");
        assert!(text.contains("1 damaged entries skipped"), "{text}");
        assert!(text.contains(&hex::encode(bad)), "{text}");
    }

    /// The same for a re-encryption: a damaged record, and a file whose content does not
    /// decrypt, are skipped and named; the others are rewritten.
    #[tokio::test]
    async fn damaged_entries_are_skipped_and_named_by_reencryption() {
        let (_tmp, dd, fs) = env();
        put(&fs, "/a/one", b"one").await;
        put(&fs, "/a/two", b"two").await;
        put(&fs, "/b/big", &[5u8; 300_000]).await;
        let bad = damage(&fs, "/a/two").await;
        // Content damage: a flipped byte inside the big file's blob.
        let kr = fs.keyring();
        let big = fs
            .resolve(&kr, &EfsPath::parse("/b/big").unwrap(), false)
            .await
            .unwrap();
        let (_, rec) = big.current.unwrap();
        let h = hex::encode(rec.id);
        let blob = dd
            .fs_dir(&fs.id)
            .join("blobs")
            .join(&h[0..2])
            .join(&h[2..4])
            .join(&h);
        let mut bytes = std::fs::read(&blob).unwrap();
        bytes[100_000] ^= 1;
        std::fs::write(&blob, bytes).unwrap();

        let (_, p) = dd.reencrypt("docs", true).await.unwrap();
        assert_eq!(p.state, RotationState::Done, "{p:?}");
        assert_eq!(p.damaged.count, 2, "{p:?}");
        assert!(p.damaged.keys.contains(&hex::encode(bad)));
        assert!(p.damaged.keys.contains(&hex::encode(big.key)));
        assert_eq!(p.files_done, 1, "{p:?}");
        let text = status(&dd).await;
        assert!(text.contains(&hex::encode(big.key)), "{text}");
    }
}
