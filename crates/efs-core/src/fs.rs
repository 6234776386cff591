//! A filesystem: paths → encrypted entries → encrypted content.
//!
//! Lookup is one keyed hash per segment: an entry's key is `dir_tag(parent id) ||
//! name_tag(parent id, name)` (HMAC-SHA256 under the keyring's name-tag key, each cut to
//! 16 bytes). Directories have random ids, so renaming a directory moves one entry.
//! Every write is a new content id with a fresh data key (copy-on-write); the entry is
//! switched in one conditional index batch, and the old content is removed only after
//! that batch is durable. A crash leaves the old version or the new one, never a mix.

use std::collections::HashSet;
use std::sync::Arc;

use efs_format::{Decryptor, Encryptor, HEADER_LEN, Key32, SEGMENT_SIZE, TAG_LEN};
use std::sync::RwLock;

use crate::blob::{BlobReader, BlobStore, BlobWriter, RunningUploads};
use crate::error::{CoreError, Result};
use crate::index::{Batch, ContentId, DirTag, EntryKey, Expect, Index, Op};
use crate::keyring::Keyring;
use crate::labels;
use crate::path::EfsPath;
use crate::plainbuf::PlainBuf;
use crate::record::{Kind, Record, Storage, data_key_aad};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

// A child module: rotation rewraps records through the filesystem's private parts.
#[path = "rotation.rs"]
pub mod rotation;
// Re-encryption and backups too (new content under the filesystem's keys; blob pins).
#[path = "backup.rs"]
pub mod backup;
#[path = "reencrypt.rs"]
pub mod reencrypt;
// Retiring terms checks every record through the filesystem's private parts too.
#[path = "retire.rs"]
pub mod retire;

/// A batch that expects `res`'s ancestors and its entry (`value`) as they were found: a
/// delete, or a recursive delete's detach, applies only to what its caller resolved.
fn expect_found(res: &Resolved, value: &[u8]) -> Batch {
    let mut batch = Batch::default();
    batch
        .expect
        .extend(res.ancestors.iter().map(|(k, v)| Expect {
            key: *k,
            value: Some(v.clone()),
        }));
    batch.expect.push(Expect {
        key: res.key,
        value: Some(value.to_vec()),
    });
    batch
}

/// The root directory's id.
const ROOT_ID: [u8; 16] = [0u8; 16];
/// The "being deleted" directory's id: a recursive delete moves the directory it deletes
/// under it in one commit (the tree is then gone for every reader at once, and a crash
/// leaves it whole or gone), then empties it ([`Filesystem::empty_trash`]). No entry
/// names it, so nothing under it is reachable from the root; no real directory has it
/// (their ids are random, the root's is zeros).
const TRASH_ID: [u8; 16] = [0xffu8; 16];
/// Attempts of a conditional batch before giving up with [`CoreError::Contention`].
const MAX_ATTEMPTS: usize = 64;
/// Bytes buffered before a blob write is issued.
const WRITE_CHUNK: usize = 1 << 20;

/// Why a commit of new content failed: what may be done with that content depends on it.
enum Failed {
    /// The index certainly holds nothing of it (refused before, or answered `Ok(false)`,
    /// a failed precondition, contention): the new content may be removed.
    NotCommitted(CoreError),
    /// The index commit itself failed: it may have landed (or land when the index is
    /// reopened), so the new content must stay; gc removes it if it is an orphan.
    Unknown(CoreError),
}

impl From<CoreError> for Failed {
    fn from(e: CoreError) -> Self {
        Failed::NotCommitted(e)
    }
}

// `Upload::write` appends at most one sealed segment to a blob writer's tail at a time.
const _: () = assert!(SEGMENT_SIZE + TAG_LEN <= crate::blob::TAIL_MAX);

/// Tunables of a filesystem.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Files up to this many plaintext bytes are stored inline in the index.
    pub inline_max: usize,
    /// Paths whose lookup ([`Filesystem::look_up`]) is remembered; 0 turns the cache off.
    /// An entry is used only while the index has not changed since it was read
    /// ([`Index::changes`]): any write empties the cache in effect, so a read never sees
    /// an older version than one a write has already acknowledged.
    pub lookup_cache: usize,
    /// Bytes of the index's own page cache (redb), per filesystem.
    pub index_cache: usize,
    /// How many more records sealed under a key term make a batch also store the counts
    /// ([`Filesystem::seal_counts`]): after a crash the stored count may be this many short.
    pub seal_count_step: u64,
    /// Told the version ([`Entry::version`]) of each file content the filesystem removes
    /// (a file replaced, deleted, or moved over), once the change is committed: the server
    /// drops it from its decrypted cache.
    pub on_content_removed: Option<ContentRemoved>,
    /// Asked before a job writes content outside an upload, with its size: a re-encryption
    /// before it writes a file again, a restore before each blob it copies and each batch of
    /// records it commits. An error (the free-space reserve reached) stops the job there, as
    /// a full disk would (a re-encryption resumably; a restore into a new filesystem leaves
    /// nothing), instead of letting it fill the disk.
    pub space_check: Option<SpaceCheck>,
}

impl FsOptions {
    /// Asks [`FsOptions::space_check`] (if set) before a job writes `bytes`: its error, the
    /// free-space reserve reached, as a [`CoreError::Io`] of kind `StorageFull`.
    pub fn check_space(&self, bytes: u64) -> Result<()> {
        match &self.space_check {
            Some(check) => (check.0)(bytes).map_err(CoreError::Io),
            None => Ok(()),
        }
    }
}

/// What [`SpaceCheck`] calls with the bytes about to be written.
pub type CheckSpace = dyn Fn(u64) -> std::io::Result<()> + Send + Sync;

/// See [`FsOptions::space_check`].
#[derive(Clone)]
pub struct SpaceCheck(pub Arc<CheckSpace>);

impl std::fmt::Debug for SpaceCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpaceCheck(..)")
    }
}

/// What [`ContentRemoved`] calls with each removed version.
pub type OnRemoved = dyn Fn(&[u8; 16]) + Send + Sync;

/// See [`FsOptions::on_content_removed`].
#[derive(Clone)]
pub struct ContentRemoved(pub Arc<OnRemoved>);

impl std::fmt::Debug for ContentRemoved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentRemoved(..)")
    }
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            inline_max: 128 * 1024,
            lookup_cache: 0,
            index_cache: crate::redb_index::DEFAULT_CACHE_BYTES,
            seal_count_step: 65_536,
            on_content_removed: None,
            space_check: None,
        }
    }
}

/// Records one key term may seal: its keys seal with random 96-bit nonces, and NIST SP
/// 800-38D bounds one AES-GCM key with random nonces at 2^32 seals. A term's record key seals
/// every record written under it, and its data-key wrapping key at most one data key per
/// record, so counting records counts both keys' uses.
pub const SEAL_LIMIT: u64 = 1 << 32;

/// From this many records sealed under the current term on, the server warns and `efsctl
/// status` tells the operator to rotate the keyring (`efsctl rotate-key`).
pub const SEAL_WARNING: u64 = 1 << 31;

/// Index metadata holding [`Filesystem::seal_counts`]: `(term u32 BE, count u64 BE)` pairs.
pub(crate) const META_SEALS: &str = "seal-counts";

/// Records sealed under each key term (see [`Filesystem::seal_counts`]).
#[derive(Default)]
struct SealCounts {
    /// Per term: the stored count plus the records this process has had committed since.
    counts: std::collections::BTreeMap<u32, u64>,
    /// The counts as last put in a batch.
    stored: std::collections::BTreeMap<u32, u64>,
    /// Terms over [`SEAL_WARNING`] already warned about by this process.
    warned: std::collections::BTreeSet<u32>,
}

pub(crate) fn encode_seal_counts(counts: &std::collections::BTreeMap<u32, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(counts.len() * 12);
    for (t, n) in counts {
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&n.to_be_bytes());
    }
    out
}

pub(crate) fn decode_seal_counts(v: &[u8]) -> Result<std::collections::BTreeMap<u32, u64>> {
    if !v.len().is_multiple_of(12) {
        return Err(CoreError::Corrupt("seal counts"));
    }
    Ok(v.chunks_exact(12)
        .map(|c| {
            (
                u32::from_be_bytes(c[..4].try_into().expect("12-byte chunk")),
                u64::from_be_bytes(c[4..].try_into().expect("12-byte chunk")),
            )
        })
        .collect())
}

/// Paths looked up while the index stayed at `changes` (see [`FsOptions::lookup_cache`]).
#[derive(Default)]
struct LookupCache {
    changes: u64,
    found: std::collections::HashMap<String, Arc<LookedUp>>,
    /// Counts the times `found` was emptied by a write or by `efsctl cache-clear`: a lookup
    /// that began before does not put its result back afterwards.
    emptied: u64,
}

/// A precondition on the current state of a path (HTTP `If-Match` / `If-None-Match`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Precondition {
    /// No condition.
    #[default]
    None,
    /// The current version's content id must be this (an ETag).
    IfMatch(Vec<ContentId>),
    /// Any current version (`If-Match: *`).
    IfExists,
    /// No current version (`If-None-Match: *`).
    IfNoneMatch,
}

/// What a caller may see of an entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Name (empty for the root).
    pub name: String,
    /// File or directory.
    pub kind: Kind,
    /// Plaintext size.
    pub size: u64,
    /// Creation time, Unix ms.
    pub created_ms: i64,
    /// Modification time, Unix ms.
    pub modified_ms: i64,
    /// Content-Type of a file.
    pub content_type: Option<String>,
    /// The version id: the ETag bytes of a file (a keyed hash of its content id), the
    /// directory id of a directory.
    pub version: [u8; 16],
}

impl Entry {
    /// `version` is the ETag: a keyed hash of the content id, so that the ETag a client
    /// sees cannot be matched with a blob's file name on disk.
    fn from_record(kr: &Keyring, r: &Record) -> Self {
        Self {
            name: r.name.clone(),
            kind: r.kind,
            size: r.size,
            created_ms: r.created_ms,
            modified_ms: r.modified_ms,
            content_type: r.content_type.clone(),
            version: if r.kind == Kind::File {
                etag_of(kr, &r.id)
            } else {
                r.id
            },
        }
    }

    /// The strong ETag of this version, quoted.
    pub fn etag(&self) -> String {
        String::from_utf8_lossy(&self.etag_bytes()).into_owned()
    }

    /// [`Entry::etag`] as bytes on the stack (the server writes it into a header with no
    /// `String` in between): the version in lowercase hex between double quotes.
    pub fn etag_bytes(&self) -> [u8; 34] {
        let mut tag = [b'"'; 34];
        hex::encode_to_slice(self.version, &mut tag[1..33]).expect("16 bytes are 32 hex digits");
        tag
    }
}

/// Counts of a filesystem (for metrics and `list-fs`).
#[derive(Debug, Clone, Default)]
pub struct FsStats {
    /// Files.
    pub files: u64,
    /// Directories (root excluded).
    pub dirs: u64,
    /// Plaintext bytes of all files.
    pub bytes: u64,
}

/// Result of [`Filesystem::fsck`].
#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    /// Records checked, but for those of `pending_delete_records`.
    pub records: u64,
    /// Records of recursive deletes not emptied yet (a detached directory and everything
    /// under it): checked too, but no longer part of the tree; the server empties them after
    /// the delete and at its start, `rotate-key`, `reencrypt` and `retire-terms --yes` first.
    pub pending_delete_records: u64,
    /// Files whose whole content was decrypted and verified, but for those of
    /// `pending_delete_files_verified`.
    pub files_verified: u64,
    /// Files of unfinished recursive deletes (among `pending_delete_records`) whose whole
    /// content was decrypted and verified: apart from `files_verified`, as their records are
    /// from `records`, so that both count the filesystem's tree only.
    pub pending_delete_files_verified: u64,
    /// Problems: one line each, no names (entry keys in hex).
    pub errors: Vec<String>,
    /// The path of each entry in `errors` (by its key in hex) whose record and directories
    /// still open: for the operator (efsctl), who must tell users which files to replace
    /// (after an index put back to an older state, say). An entry whose own record or one of
    /// whose directories does not open has none here. Taken from the same snapshot as the
    /// directories, so a file renamed while fsck runs may show its former path.
    pub paths: std::collections::BTreeMap<String, String>,
    /// Blobs that no record references.
    pub orphan_blobs: Vec<String>,
    /// Inline contents that no record references.
    pub orphan_inline: Vec<String>,
    /// Partial writes of uploads a crash cut short (not of uploads running now), and their
    /// bytes: not errors, and not orphans (no blob of them exists); `efsctl gc` removes them
    /// once older than its grace.
    pub partial_writes: (u64, u64),
    /// The index checked against its digest (a rollback of records shows here).
    pub digest: Option<crate::digest::DigestCheck>,
}

impl FsckReport {
    /// True when nothing is wrong and nothing is orphaned.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.orphan_blobs.is_empty() && self.orphan_inline.is_empty()
    }
}

/// What one snapshot of the index holds, for fsck.
#[derive(Default)]
struct SnapshotTree {
    /// The tags of every directory (the root's included).
    dirs: HashSet<DirTag>,
    /// Each entry's key with the tag of the directory it says it is in.
    parents: Vec<(DirTag, EntryKey)>,
    /// Each directory's tag with its parent's tag and its name, to name damaged entries.
    dir_names: std::collections::HashMap<DirTag, (DirTag, String)>,
    /// Contents named by file records.
    blobs: HashSet<ContentId>,
    inline: HashSet<ContentId>,
}

impl SnapshotTree {
    /// Whether the directory tagged `tag` is `trash` or under it (a recursive delete not
    /// emptied yet); false for a broken chain or a loop.
    fn under(&self, trash: DirTag, mut tag: DirTag) -> bool {
        for _ in 0..=self.dir_names.len() {
            if tag == trash {
                return true;
            }
            match self.dir_names.get(&tag) {
                Some((up, _)) => tag = *up,
                None => return false,
            }
        }
        false
    }

    /// The path of `name` in the directory tagged `parent`, if every directory up to the
    /// root (tagged `root`) opened; `None` for a broken chain or a loop.
    fn path_of(&self, root: DirTag, parent: DirTag, name: &str) -> Option<String> {
        let mut names = vec![name];
        let mut tag = parent;
        while tag != root {
            let (up, dir) = self.dir_names.get(&tag)?;
            if names.len() > self.dir_names.len() {
                return None;
            }
            names.push(dir);
            tag = *up;
        }
        let mut path = String::new();
        for n in names.iter().rev() {
            path.push('/');
            path.push_str(n);
        }
        Some(path)
    }
}

/// Result of [`Filesystem::gc`].
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Orphan blobs removed.
    pub blobs_removed: u64,
    /// Orphan inline contents removed.
    pub inline_removed: u64,
    /// Orphan blobs younger than the grace period, kept (uploads in flight).
    pub blobs_kept_young: u64,
    /// Partial blob writes (temporary files left by a crash) older than the grace period,
    /// removed.
    pub partials_removed: u64,
    /// Orphan blobs a running backup may still copy: removed once the last backup of the
    /// filesystem ends (also those an earlier gc or a replace left waiting), not counted in
    /// `blobs_removed`.
    pub blobs_deferred: u64,
}

/// Whether a filesystem's index may be used (see [`Filesystem::hold_until_index_checked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexTrust {
    /// Served (the default, and after a check that held or an operator's acceptance).
    Trusted,
    /// The index is being checked against its digest: operations wait.
    Checking,
    /// The index differs from its digest: every operation fails with
    /// [`CoreError::IndexHold`] until `efsctl fsck --accept-index`.
    Failed,
}

/// Most detached directories [`Filesystem::finish_pending_deletes`] counts.
pub const TRASH_COUNT_LIMIT: usize = 4096;

/// One filesystem.
pub struct Filesystem {
    name: String,
    id: [u8; 16],
    index: Arc<dyn Index>,
    blobs: Arc<dyn BlobStore>,
    keyring: RwLock<Arc<Keyring>>,
    opts: FsOptions,
    /// Held while a rotation or a re-encryption changes the keyring or rewrites (one at
    /// a time).
    rotation: tokio::sync::Mutex<()>,
    /// Whether operations may use the index (a rollback made while the server was stopped
    /// holds them all: a record put back with its content cannot be told from a current one
    /// on the read path).
    trust: tokio::sync::watch::Sender<IndexTrust>,
    /// Set while a re-encryption runs: a rename then keeps a file's old key term, so that
    /// the re-encryption still recognises (by its term) a file it has not rewritten yet.
    reencrypting: std::sync::atomic::AtomicBool,
    /// Renames that kept a file's old key term while a re-encryption ran: a file moved from
    /// ahead of the run's cursor to behind it is found only by another pass, so a pass with
    /// such a rename is not a quiet one (see `reencrypt::run`).
    old_term_renames: std::sync::atomic::AtomicU64,
    /// `old_term_renames` when the running re-encryption's current pass began in this
    /// process; `None` if it began before this process started (renames unknown).
    reencrypt_pass_start: std::sync::Mutex<Option<u64>>,
    /// Why this process's last re-encryption run stopped before it was done (an error: the
    /// free-space reserve, a full disk, …); `None` while one runs, once one has finished, or
    /// when none ran here. Its stored state stays `running` (it resumes), so `status` needs
    /// this to tell a run going on from one waiting for the next start or `reencrypt`.
    pub(crate) reencrypt_stopped: std::sync::Mutex<Option<String>>,
    /// Held (shared) by a file rename from its look at `reencrypting` to its commit, and
    /// (exclusive) by a re-encryption deciding that a pass was its last: no rename keeps an
    /// old term unseen by that decision.
    rename_gate: tokio::sync::RwLock<()>,
    /// Blob removals deferred while a backup copies its snapshot (see `backup.rs`).
    pins: std::sync::Mutex<backup::Pins>,
    /// Held by gc from its listings to its last removal, and by a restore into this
    /// filesystem for its whole run: a gc that had listed a restore's content as orphaned
    /// must not remove it after the restore copied it again.
    gc_or_restore: tokio::sync::Mutex<()>,
    /// The content ids of uploads begun and not yet committed or dropped: gc leaves their
    /// blobs and partial writes alone, whatever its grace period (a blob is in its shard
    /// before its record is committed).
    uploads: RunningUploads,
    /// Blobs of commits that failed with an unknown outcome (`Failed::Unknown`): redb may
    /// have written such a commit and recover it when the index is reopened (the committer
    /// reopens it for the next batch), while reads of the failed database do not show it
    /// yet. gc and fsck treat them as being written until [`Filesystem::settle_index`].
    unsettled: std::sync::Mutex<HashSet<ContentId>>,
    /// Commits through [`Filesystem::commit_batch`] that failed so far (a re-encryption's, a
    /// restore's, a rotation's: their new blobs are in no upload's `unsettled`), and how
    /// many of them a [`Filesystem::settle_index`] has settled: while the two differ, a
    /// settling reopens the index even with `unsettled` empty, so that gc and fsck see such
    /// a commit if redb recovers it. (Counted, not a flag: a second settler that starts
    /// while the first one's reopening is under way reopens too, rather than go on.)
    commits_failed: std::sync::atomic::AtomicU64,
    failures_settled: std::sync::atomic::AtomicU64,
    lookups: std::sync::Mutex<LookupCache>,
    seals: std::sync::Mutex<SealCounts>,
    /// Held by a batch that stores the seal counts, from taking them to its commit.
    seal_store: tokio::sync::Mutex<()>,
    /// Set once the index was checked against its digest in this process (or accepted by
    /// an operator): see [`Filesystem::ensure_index_checked`]. Unlike the pins' and the
    /// keyring's, its lock is not taken as it is when poisoned: the flag, the generation and
    /// the verdict published change together under it, and a claim cut short after the flag
    /// would leave an index never checked served as trusted (fail closed instead).
    index_checked: std::sync::Mutex<IndexCheck>,
    /// The highest digest generation of this index that the data dir has recorded (the
    /// system secret `index-generation/<fs id>`), `None` if none yet: an index whose digest
    /// holds at a lower generation is an earlier copy of the whole index put back, which its
    /// digest cannot show. Set by the data dir when it opens the filesystem and whenever it
    /// records a new mark (under this lock, so that the row and this copy agree).
    generation_mark: std::sync::Mutex<Option<u64>>,
    /// Held by the one [`Filesystem::empty_trash`] that empties the "being deleted"
    /// directory; `trash_wanted` asks it (or the next one) for another pass.
    emptying: tokio::sync::Mutex<()>,
    trash_wanted: std::sync::atomic::AtomicBool,
}

/// Whether this process has checked a filesystem's index, and which check (or acceptance)
/// is the latest: only the latest may publish its verdict.
#[derive(Default)]
struct IndexCheck {
    started: bool,
    generation: u64,
}

/// An index check claimed by [`Filesystem::claim_index_check`] and not started yet: the
/// filesystem's operations wait for it. Dropped without [`ClaimedCheck::start`], it leaves
/// the filesystem on hold (fail closed), as a check that did not finish does.
#[must_use = "a claimed check holds its filesystem until it is started"]
pub struct ClaimedCheck {
    fs: Arc<Filesystem>,
    generation: u64,
    started: bool,
}

impl ClaimedCheck {
    /// Starts the scan in the background; its verdict releases or holds the filesystem.
    pub fn start(mut self) -> tokio::task::JoinHandle<IndexTrust> {
        // Marked started only once the task exists: if spawning fails (no runtime), the
        // drop puts the filesystem on hold instead of leaving it checking for ever.
        let check = self.fs.run_index_check(self.generation);
        self.started = true;
        check
    }
}

impl Drop for ClaimedCheck {
    fn drop(&mut self) {
        if !self.started {
            self.fs.publish_verdict(self.generation, IndexTrust::Failed);
        }
    }
}

/// Puts a filesystem on hold when dropped: armed for the length of an index check, so that
/// a check that panics leaves [`IndexTrust::Failed`], not `Checking`.
struct HoldUnlessDisarmed<'a>(&'a Filesystem, u64);

impl Drop for HoldUnlessDisarmed<'_> {
    fn drop(&mut self) {
        self.0.publish_verdict(self.1, IndexTrust::Failed);
    }
}

impl std::fmt::Debug for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filesystem({})", hex::encode(self.id))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id).expect("the system RNG does not fail on Linux");
    id
}

/// A resolved path: the entry (if any) and the chain of directories leading to it.
struct Resolved {
    /// Key of the entry at the path.
    key: EntryKey,
    /// Its current sealed value and record, if it exists.
    current: Option<(Vec<u8>, Record)>,
    /// Existing ancestors: (key, sealed value) — expectations of a write.
    ancestors: Vec<(EntryKey, Vec<u8>)>,
    /// Ancestors to create: (key, record).
    missing: Vec<(EntryKey, Record)>,
}

impl Filesystem {
    /// Assembles a filesystem from its parts.
    pub fn new(
        name: String,
        id: [u8; 16],
        index: Arc<dyn Index>,
        blobs: Arc<dyn BlobStore>,
        keyring: Keyring,
        opts: FsOptions,
    ) -> Self {
        Self {
            name,
            id,
            index,
            blobs,
            keyring: RwLock::new(Arc::new(keyring)),
            opts,
            rotation: tokio::sync::Mutex::new(()),
            trust: tokio::sync::watch::Sender::new(IndexTrust::Trusted),
            reencrypting: std::sync::atomic::AtomicBool::new(false),
            old_term_renames: std::sync::atomic::AtomicU64::new(0),
            reencrypt_pass_start: std::sync::Mutex::new(None),
            reencrypt_stopped: std::sync::Mutex::new(None),
            rename_gate: tokio::sync::RwLock::new(()),
            pins: std::sync::Mutex::new(backup::Pins::default()),
            gc_or_restore: tokio::sync::Mutex::new(()),
            uploads: Arc::default(),
            unsettled: std::sync::Mutex::default(),
            commits_failed: Default::default(),
            failures_settled: Default::default(),
            lookups: std::sync::Mutex::new(LookupCache::default()),
            seals: std::sync::Mutex::new(SealCounts::default()),
            seal_store: tokio::sync::Mutex::new(()),
            index_checked: std::sync::Mutex::new(IndexCheck::default()),
            generation_mark: std::sync::Mutex::new(None),
            emptying: tokio::sync::Mutex::new(()),
            trash_wanted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Starts counting from `counts` (stored in the index, [`META_SEALS`], or counted from
    /// its records); called once when the filesystem is opened, before it serves.
    pub(crate) fn set_seal_counts(&self, counts: std::collections::BTreeMap<u32, u64>) {
        let mut c = self.seals.lock().unwrap_or_else(|e| e.into_inner());
        c.stored = counts.clone();
        c.counts = counts;
    }

    /// Counts `n` records as sealed under the current key term, as if this process had
    /// sealed them (stored by the next [`Filesystem::store_seal_counts`]): tests of what
    /// happens near the seal limit, which no test can reach by sealing. Not an API.
    #[doc(hidden)]
    pub fn set_current_term_seals_for_tests(&self, n: u64) {
        let term = self.keyring().current().number;
        let mut c = self.seals.lock().unwrap_or_else(|e| e.into_inner());
        c.counts.insert(term, n);
    }

    /// Records sealed under each key term, as far as this filesystem knows: what the index
    /// stores plus what this process has committed since (the stored counts may lag by
    /// [`FsOptions::seal_count_step`] after a crash; a clean stop stores them, see
    /// [`Filesystem::store_seal_counts`]). Compare with [`SEAL_LIMIT`].
    pub fn seal_counts(&self) -> std::collections::BTreeMap<u32, u64> {
        self.seals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .clone()
    }

    /// Commits `batch` to the index, counting the records it seals per key term; every
    /// [`FsOptions::seal_count_step`] records, and when a term reaches [`SEAL_WARNING`], the
    /// counts go into the same batch. Every writer of a filesystem's index commits here;
    /// the inline contents a committed batch removes are told to
    /// [`FsOptions::on_content_removed`] (blobs are, by `remove_blob`).
    pub(crate) async fn commit_batch(&self, batch: Batch) -> Result<bool> {
        let removed: Vec<ContentId> = match &self.opts.on_content_removed {
            None => Vec::new(),
            Some(_) => batch
                .ops
                .iter()
                .filter_map(|op| match op {
                    Op::DeleteInline(id) => Some(*id),
                    _ => None,
                })
                .collect(),
        };
        let committed = self.commit_counted(batch).await;
        // (A batch refused at the seal limit never reached the index: nothing to settle.)
        if committed
            .as_ref()
            .is_err_and(|e| !matches!(e, CoreError::SealLimit))
        {
            // Counted before the caller drops the uploads of the batch (their blobs leave
            // the running ones): gc, which copies those first and settles after, sees one
            // or the other.
            self.commits_failed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        // The lookups remembered are stale now (the index's count moved on): dropped at once,
        // not at the next lookup, which on a quiet filesystem may never come (they hold
        // decrypted paths and records).
        self.forget_lookups();
        if committed? {
            for id in &removed {
                self.content_removed(id);
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Tells [`FsOptions::on_content_removed`] that a content is gone.
    fn content_removed(&self, id: &ContentId) {
        if let Some(f) = &self.opts.on_content_removed {
            (f.0)(&etag_of(&self.keyring(), id));
        }
    }

    /// [`Filesystem::commit_batch`] without the removal notices.
    async fn commit_counted(&self, mut batch: Batch) -> Result<bool> {
        if !self.count_seals(&batch)? {
            return self.index.commit(batch).await;
        }
        // Batches that store the counts go one at a time, each with the counts as they are
        // when it goes: a later store never writes lower counts than an earlier one.
        let _order = self.seal_store.lock().await;
        let counts = self.seal_counts();
        batch
            .ops
            .push(Op::PutMeta(META_SEALS.into(), encode_seal_counts(&counts)));
        let committed = self.index.commit(batch).await?;
        if committed {
            // Only now are they stored: a batch that failed leaves the next one to store them.
            self.note_stored(counts);
        }
        Ok(committed)
    }

    fn note_stored(&self, counts: std::collections::BTreeMap<u32, u64>) {
        let mut c = self.seals.lock().unwrap_or_else(|e| e.into_inner());
        for (t, n) in counts {
            let s = c.stored.entry(t).or_default();
            *s = (*s).max(n);
        }
    }

    /// Counts the records `batch` seals (before it is committed: a batch that fails still
    /// drew its nonces); true when the counts are due to be stored with it.
    ///
    /// Past [`SEAL_LIMIT`] for a term, the batch is refused ([`CoreError::SealLimit`]): its
    /// records were sealed in memory only, and are never stored.
    fn count_seals(&self, batch: &Batch) -> Result<bool> {
        let mut c = self.seals.lock().unwrap_or_else(|e| e.into_inner());
        let mut store = false;
        for op in &batch.ops {
            let Op::PutEntry(_, value) = op else { continue };
            let Ok(term) = rotation::sealing_term(value) else {
                continue;
            };
            let n = c.counts.entry(term).or_default();
            *n += 1;
            let n = *n;
            if n > SEAL_LIMIT {
                tracing::error!(
                    fs = self.name(),
                    term,
                    "key term {term} has sealed 2^32 records: writes are refused until a key rotation (efsctl rotate-key)"
                );
                return Err(CoreError::SealLimit);
            }
            let stored = c.stored.get(&term).copied().unwrap_or(0);
            if n - stored.min(n) >= self.opts.seal_count_step.max(1)
                || (n >= SEAL_WARNING && stored < SEAL_WARNING)
            {
                store = true;
            }
            if n >= SEAL_WARNING && c.warned.insert(term) {
                tracing::warn!(
                    fs = self.name(),
                    term,
                    sealed = n,
                    limit = SEAL_LIMIT,
                    "key term {term} has sealed {n} records, past half of the 2^32 that AES-GCM with random nonces allows one key: rotate the keyring now (efsctl rotate-key)"
                );
            }
        }
        Ok(store)
    }

    /// True once the current key term has sealed [`SEAL_WARNING`] records: the server then
    /// starts a key rotation by itself (`efsctl rotate-key` does the same).
    pub fn rotation_due(&self) -> bool {
        let term = self.keyring().current().number;
        let c = self.seals.lock().unwrap_or_else(|e| e.into_inner());
        c.counts.get(&term).is_some_and(|n| *n >= SEAL_WARNING)
    }

    /// Stores the counts of records sealed per term if this process has counted any since
    /// they were last stored (a batch of its own, metadata only). The server calls it when
    /// it stops, efsctl when its command ends: without it, counts below one
    /// [`FsOptions::seal_count_step`] were lost at every stop, and a filesystem restarted
    /// often would never store them. What is lost now: after a crash, at most about a step
    /// per term; after a stop, the records sealed by work still running as the process exits
    /// (a background rotation or re-encryption, requests past the shutdown timeout).
    pub async fn store_seal_counts(&self) -> Result<()> {
        let _order = self.seal_store.lock().await;
        let counts = {
            let c = self.seals.lock().unwrap_or_else(|e| e.into_inner());
            if c.counts == c.stored {
                return Ok(());
            }
            c.counts.clone()
        };
        let batch = Batch {
            ops: vec![Op::PutMeta(META_SEALS.into(), encode_seal_counts(&counts))],
            ..Default::default()
        };
        if self.index.commit(batch).await? {
            self.note_stored(counts);
        }
        Ok(())
    }

    /// Checks the index against its digest in the background, holding every file
    /// operation until the check ends; if the index differs (records changed, removed,
    /// added or put back outside EFS), operations fail with [`CoreError::IndexHold`] until
    /// [`Filesystem::accept_index`]. Always starts a new check (tools and tests that
    /// changed the index); the server uses [`Filesystem::begin_index_check`].
    pub fn hold_until_index_checked(self: &Arc<Self>) -> tokio::task::JoinHandle<IndexTrust> {
        self.start_index_check(true)
            .expect("a forced check always starts")
    }

    /// Starts the check of [`Filesystem::hold_until_index_checked`] unless one was started
    /// (or the index accepted, or created) in this process already: the server calls it at
    /// start, so that a record put back to an older version with its content while it was
    /// stopped is never served; a resumed key rotation or re-encryption calls it before
    /// rewriting anything. None if a check had started.
    pub fn begin_index_check(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<IndexTrust>> {
        self.start_index_check(false)
    }

    /// Claims the check of [`Filesystem::begin_index_check`] (its operations wait from now
    /// on) without starting it: the server claims every filesystem's check before it serves
    /// anything, and starts them once it listens, so that the scans (threads that keep every
    /// core busy for a moment) do not delay its start. None if a check had started.
    pub fn claim_index_check(self: &Arc<Self>) -> Option<ClaimedCheck> {
        let generation = self.claim_check(false)?;
        Some(ClaimedCheck {
            fs: self.clone(),
            generation,
            started: false,
        })
    }

    fn start_index_check(
        self: &Arc<Self>,
        force: bool,
    ) -> Option<tokio::task::JoinHandle<IndexTrust>> {
        let generation = self.claim_check(force)?;
        Some(self.run_index_check(generation))
    }

    fn run_index_check(self: &Arc<Self>, generation: u64) -> tokio::task::JoinHandle<IndexTrust> {
        let fs = self.clone();
        tokio::spawn(async move {
            // A check that panics (or whose task is dropped) leaves the filesystem on
            // hold, never waiting in Checking for ever.
            let guard = HoldUnlessDisarmed(&fs, generation);
            let mark = fs.generation_mark();
            let checked = fs.index.check_digest().await;
            let behind = checked.as_ref().ok().and_then(|c| fs.behind_mark(c, mark));
            let verdict = match (checked, behind) {
                (Ok(_), Some((at, mark))) => {
                    tracing::error!(fs = fs.name(), "{}", behind_mark_text(fs.name(), at, mark));
                    IndexTrust::Failed
                }
                (Ok(c), None) if c.holds() => {
                    tracing::debug!(fs = fs.name(), "index digest verified");
                    IndexTrust::Trusted
                }
                (Ok(c), None) => {
                    tracing::error!(
                        fs = fs.name(),
                        check = ?c,
                        "the index differs from its digest: records or metadata rows (the sealed keyring, say) were changed, removed, added or put back to older versions while the server was stopped; the filesystem is on hold until an operator runs efsctl fsck (and, once satisfied, efsctl fsck --accept-index)"
                    );
                    IndexTrust::Failed
                }
                (Err(e), _) => {
                    tracing::error!(fs = fs.name(), error = %e, "could not check the index digest; the filesystem is on hold");
                    IndexTrust::Failed
                }
            };
            std::mem::forget(guard);
            fs.publish_verdict(generation, verdict);
            verdict
        })
    }

    /// Claims the next check (None if one had started and not `force`): its generation,
    /// with the state set to Checking.
    fn claim_check(&self, force: bool) -> Option<u64> {
        // The flag and the Checking state change together: a caller that finds the flag
        // set finds the check's state too, never a Trusted from before it.
        let mut c = self.index_checked.lock().expect("lock poisoned");
        if c.started && !force {
            return None;
        }
        c.started = true;
        c.generation += 1;
        self.trust.send_replace(IndexTrust::Checking);
        Some(c.generation)
    }

    /// Publishes the verdict of check `generation` unless a later check or an operator's
    /// acceptance came meanwhile (an `fsck --accept-index` while the start-up check of a
    /// large index still runs must not be undone by that check's late verdict).
    fn publish_verdict(&self, generation: u64, verdict: IndexTrust) {
        let c = self.index_checked.lock().expect("lock poisoned");
        if c.generation == generation {
            self.trust.send_replace(verdict);
        }
    }

    /// Marks the index as checked without a check: for a filesystem this process has just
    /// created or restored (its digest was computed here, over what it wrote).
    pub(crate) fn mark_index_checked(&self) {
        self.index_checked.lock().expect("lock poisoned").started = true;
    }

    /// The data dir's high-water mark of this index's digest generation (see the field).
    pub fn generation_mark(&self) -> Option<u64> {
        *self
            .generation_mark
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The mark, locked: the data dir holds it while it writes the mark's row.
    pub(crate) fn generation_mark_slot(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.generation_mark
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// `(the index's generation, the mark)` when `check` found a digest that holds at a
    /// generation below `mark`: the whole index (its digest included) was put back to an
    /// earlier state. `mark` is read before the check's snapshot is taken: a running server
    /// records the generations committed meanwhile, above the snapshot's.
    pub fn behind_mark(
        &self,
        check: &crate::digest::DigestCheck,
        mark: Option<u64>,
    ) -> Option<(u64, u64)> {
        match (check, mark) {
            (crate::digest::DigestCheck::Holds { generation, .. }, Some(mark))
                if *generation < mark =>
            {
                Some((*generation, mark))
            }
            _ => None,
        }
    }

    /// The digest generation the index has committed (what its stored digest says), `None`
    /// if it has no readable digest.
    pub async fn committed_generation(&self) -> Result<Option<u64>> {
        Ok(self
            .index
            .get_meta(crate::digest::META_DIGEST)
            .await?
            .and_then(|d| crate::digest::stored_generation(&d)))
    }

    /// Whether this process has started (or claimed) a check of the index against its
    /// digest, or created or accepted the index: the server has at its start, so that
    /// [`Filesystem::index_trust`] is the verdict; efsctl without a server has not.
    pub fn index_check_started(&self) -> bool {
        self.index_checked.lock().expect("lock poisoned").started
    }

    /// `(the index's generation, the mark)` when the digest stored in the index is at a
    /// generation below the data dir's mark: an earlier copy of the whole index was put
    /// back, which the server's start holds (whether that digest then holds or not). One
    /// read of the digest's row, no scan, so for efsctl without a server: a record changed
    /// inside the index is found only by a check of every entry (fsck, the server's start).
    pub async fn stored_generation_behind_mark(&self) -> Result<Option<(u64, u64)>> {
        let Some(mark) = self.generation_mark() else {
            return Ok(None);
        };
        Ok(match self.committed_generation().await? {
            Some(at) if at < mark => Some((at, mark)),
            _ => None,
        })
    }

    /// Whether this process has checked the index (or created or accepted it) and trusts
    /// it: only then may its generation raise the data dir's mark (an index nobody checked
    /// may be an earlier copy put back, whose later commits must not hide it).
    pub(crate) fn index_vouched(&self) -> bool {
        let c = self.index_checked.lock().expect("lock poisoned");
        c.started && *self.trust.borrow() == IndexTrust::Trusted
    }

    /// Whether the index may be used now.
    pub fn index_trust(&self) -> IndexTrust {
        *self.trust.borrow()
    }

    /// An operator's decision to trust the index as it is now: recomputes and stores its
    /// digest (the generation goes on) and lifts a hold.
    pub async fn accept_index(&self) -> Result<crate::digest::DigestCheck> {
        let check = self.index.accept_digest().await?;
        let mut c = self.index_checked.lock().expect("lock poisoned");
        c.started = true;
        // A check still running verifies the index as it was: its verdict no longer counts.
        c.generation += 1;
        self.trust.send_replace(IndexTrust::Trusted);
        Ok(check)
    }

    /// As [`Filesystem::trusted`], after checking the index against its digest first if
    /// nothing in this process has (the server checks at start; efsctl without a server
    /// does not, so its commands that read or rewrite the whole index, backup, gc, key
    /// rotation, re-encryption and restore, check here: a held index is refused as the
    /// server would refuse it, instead of being copied or rewritten as if trusted).
    pub async fn ensure_index_checked(self: &Arc<Self>) -> Result<()> {
        if let Some(check) = self.begin_index_check()
            && let Err(e) = check.await
        {
            // The guard in the task has put the filesystem on hold already.
            return Err(CoreError::Io(std::io::Error::other(format!(
                "the index check did not finish: {e}"
            ))));
        }
        self.trusted().await
    }

    /// Waits for a running index check; fails with [`CoreError::IndexHold`] if the
    /// filesystem is on hold. Every file operation calls it. Admin operations that read or
    /// rewrite the whole index (backup, gc, key rotation, re-encryption, restore) call
    /// [`Filesystem::ensure_index_checked`] instead, which first checks an index nothing
    /// in this process has checked: a backup of a held index would otherwise turn a
    /// rolled-back state into a clean-digest copy without the operator's decision.
    pub async fn trusted(&self) -> Result<()> {
        if *self.trust.borrow() == IndexTrust::Trusted {
            return Ok(());
        }
        let mut rx = self.trust.subscribe();
        let verdict = rx
            .wait_for(|t| *t != IndexTrust::Checking)
            .await
            .map(|t| *t)
            .unwrap_or(IndexTrust::Failed);
        match verdict {
            IndexTrust::Trusted => Ok(()),
            _ => Err(CoreError::IndexHold),
        }
    }

    /// The filesystem's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The filesystem's random id.
    pub fn id(&self) -> &[u8; 16] {
        &self.id
    }

    /// The keyring in use. Its lock is taken as it is when poisoned: it holds a whole
    /// keyring, replaced in one assignment, so no panic leaves half of one, and gc and key
    /// rotation (which read it) run again after one of them panicked.
    fn keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the in-memory keyring (key rotation): new writes use its current term at
    /// once. The caller has persisted it first.
    pub(crate) fn set_keyring(&self, kr: Keyring) {
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(kr);
    }

    /// The current term's number (the term new writes use).
    pub fn current_term(&self) -> u32 {
        self.keyring().current_number()
    }

    /// The numbers of every term of the keyring.
    pub fn term_numbers(&self) -> Vec<u32> {
        self.keyring().term_numbers()
    }

    /// The keyring's retired terms (`efsctl retire-terms`), each with when (Unix ms).
    pub fn retired_terms(&self) -> Vec<(u32, i64)> {
        self.keyring().retired()
    }

    /// Opens a record. A request holds the keyring it started with; if a rotation added a
    /// term meanwhile and rewrapped the record, the newer keyring opens it (while the process
    /// runs terms are only added: `retire-terms` removes them with the filesystem closed, so
    /// the newest keyring opens everything an older one did).
    fn open_rec(&self, kr: &Keyring, key: &EntryKey, value: &[u8]) -> Result<Record> {
        match Record::open(kr, &self.id, key, value) {
            Err(CoreError::Corrupt("unknown key term")) => {
                Record::open(&self.keyring(), &self.id, key, value)
            }
            other => other,
        }
    }

    /// A file's data key, with the same fallback as [`Filesystem::open_rec`].
    fn data_key_of(&self, kr: &Keyring, rec: &Record) -> Result<Key32> {
        match rec.data_key(kr, &self.id) {
            Err(CoreError::Corrupt("unknown key term")) => rec.data_key(&self.keyring(), &self.id),
            other => other,
        }
    }

    /// Every term some record uses: the term that sealed it and, for a file, the term that
    /// wrapped its data key (a full scan; tests and `status`).
    pub async fn key_terms_in_use(&self) -> Result<std::collections::BTreeSet<u32>> {
        let mut out = std::collections::BTreeSet::new();
        let mut after = None;
        loop {
            let rows = self.index.scan_entries(after.as_ref(), 1024).await?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(*last);
            for (k, v) in &rows {
                let kr = self.keyring();
                let rec = self.open_rec(&kr, k, v)?;
                out.insert(rotation::sealing_term(v)?);
                if rec.kind == Kind::File {
                    out.insert(rec.key_term);
                }
            }
        }
        Ok(out)
    }

    fn tag(&self, kr: &Keyring, domain: &[u8], parts: &[&[u8]]) -> [u8; 16] {
        kr.tag_mac().mac_prefixed(domain, parts)[..16]
            .try_into()
            .expect("SHA-256 output is 32 bytes")
    }

    fn dir_tag(&self, kr: &Keyring, dir: &[u8; 16]) -> DirTag {
        self.tag(kr, labels::TAG_DIR, &[dir])
    }

    fn entry_key(&self, kr: &Keyring, dir: &[u8; 16], name: &str) -> EntryKey {
        let mut k = [0u8; 32];
        k[..16].copy_from_slice(&self.dir_tag(kr, dir));
        k[16..].copy_from_slice(&self.tag(kr, labels::TAG_NAME, &[dir, name.as_bytes()]));
        k
    }

    async fn load(&self, kr: &Keyring, key: &EntryKey) -> Result<Option<(Vec<u8>, Record)>> {
        self.trusted().await?;
        match self.index.get_entry(key).await? {
            None => Ok(None),
            Some(v) => {
                let r = self.open_rec(kr, key, &v)?;
                Ok(Some((v, r)))
            }
        }
    }

    /// Walks `path`. With `create_parents`, missing ancestors are planned for creation;
    /// otherwise a missing ancestor is NotFound. A file as an ancestor is a Conflict.
    async fn resolve(
        &self,
        kr: &Keyring,
        path: &EfsPath,
        create_parents: bool,
    ) -> Result<Resolved> {
        let segs = path.segments();
        let (last, parents) = segs
            .split_last()
            .ok_or(CoreError::Conflict("the root cannot be changed"))?;
        let mut dir = ROOT_ID;
        let mut ancestors = Vec::new();
        let mut missing = Vec::new();
        let now = now_ms();
        for seg in parents {
            let key = self.entry_key(kr, &dir, seg);
            if !missing.is_empty() {
                crate::path::check_new_name(seg)?;
                let id = random_id();
                missing.push((key, new_dir_record(seg, id, now)));
                dir = id;
                continue;
            }
            match self.load(kr, &key).await? {
                Some((v, r)) => {
                    if r.kind != Kind::Dir {
                        return Err(CoreError::Conflict("a parent of this path is a file"));
                    }
                    dir = r.id;
                    ancestors.push((key, v));
                }
                None if create_parents => {
                    crate::path::check_new_name(seg)?;
                    let id = random_id();
                    missing.push((key, new_dir_record(seg, id, now)));
                    dir = id;
                }
                None => return Err(CoreError::NotFound),
            }
        }
        let key = self.entry_key(kr, &dir, last);
        let current = if missing.is_empty() {
            self.load(kr, &key).await?
        } else {
            None
        };
        Ok(Resolved {
            key,
            current,
            ancestors,
            missing,
        })
    }

    async fn lookup_record(&self, kr: &Keyring, path: &EfsPath) -> Result<Record> {
        if path.is_root() {
            self.trusted().await?;
            return Ok(new_dir_record("", ROOT_ID, 0));
        }
        let r = self.resolve(kr, path, false).await?;
        r.current.map(|(_, rec)| rec).ok_or(CoreError::NotFound)
    }

    /// The entry at `path`.
    pub async fn stat(&self, path: &EfsPath) -> Result<Entry> {
        let kr = self.keyring();
        Ok(Entry::from_record(
            &kr,
            &self.lookup_record(&kr, path).await?,
        ))
    }

    /// Resolves `path` once, for a read that needs the entry (headers, cache key) before it
    /// decides whether to open the content: [`Filesystem::open_looked_up`] then opens that
    /// same version without resolving the path again.
    ///
    /// With [`FsOptions::lookup_cache`], a path looked up since the index last changed is
    /// answered from memory (after the same index-trust check).
    pub async fn look_up(&self, path: &EfsPath) -> Result<Arc<LookedUp>> {
        let cap = self.opts.lookup_cache;
        if cap == 0 || path.is_root() {
            return self.look_up_in_index(path).await.map(Arc::new);
        }
        let key = path.to_string();
        // Read before the lookup: if a write lands meanwhile, the count has moved on and
        // what was read is not kept.
        let changes = self.index.changes();
        let (hit, emptied) = self.cached_lookup(changes, &key);
        if let Some(hit) = hit {
            self.trusted().await?;
            return Ok(hit);
        }
        let found = Arc::new(self.look_up_in_index(path).await?);
        let mut c = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        if self.index.changes() == changes && c.changes == changes && c.emptied == emptied {
            if c.found.len() >= cap {
                c.found.clear();
            }
            c.found.insert(key, found.clone());
        }
        Ok(found)
    }

    /// The remembered lookup of `key`, if the index is still at `changes`; forgets every
    /// lookup when it has moved on. Also the count of emptyings, for the caller's insert.
    fn cached_lookup(&self, changes: u64, key: &str) -> (Option<Arc<LookedUp>>, u64) {
        let mut c = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        if c.changes != changes {
            // (A reader that read the count before a later one filled the cache leaves it.)
            if changes > c.changes {
                c.found.clear();
                c.changes = changes;
            }
            return (None, c.emptied);
        }
        (c.found.get(key).cloned(), c.emptied)
    }

    /// Forgets every remembered lookup (they hold decrypted names and records: `efsctl
    /// cache-clear` empties them with the content cache, every write after its commit);
    /// returns how many there were. A lookup under way does not put its result back.
    pub fn forget_lookups(&self) -> usize {
        let mut c = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.found.len();
        c.found.clear();
        c.emptied += 1;
        n
    }

    async fn look_up_in_index(&self, path: &EfsPath) -> Result<LookedUp> {
        let kr = self.keyring();
        let (rec, key) = if path.is_root() {
            (self.lookup_record(&kr, path).await?, None)
        } else {
            let r = self.resolve(&kr, path, false).await?;
            let (_, rec) = r.current.ok_or(CoreError::NotFound)?;
            (rec, Some(r.key))
        };
        Ok(LookedUp {
            entry: Entry::from_record(&kr, &rec),
            rec,
            key,
        })
    }

    /// Opens the version that [`Filesystem::look_up`] found. [`CoreError::NotFound`] if it
    /// is gone (replaced or deleted since): look the path up again. [`CoreError::Corrupt`]
    /// if its content is missing while its record is still current: content is removed
    /// only after the commit that stops naming it, so that is damage, not a race.
    pub async fn open_looked_up(&self, found: &LookedUp) -> Result<FileReader> {
        if found.rec.kind != Kind::File {
            return Err(CoreError::Conflict("not a file"));
        }
        let kr = self.keyring();
        match self.open_record(&kr, &found.rec).await {
            Err(CoreError::NotFound) => match found.key {
                Some(key) if self.still_names(&kr, &key, &found.rec.id).await? => {
                    tracing::error!(
                        entry = %hex::encode(key),
                        "a file's content is missing while its record names it"
                    );
                    Err(CoreError::Corrupt("a file's content is missing"))
                }
                _ => Err(CoreError::NotFound),
            },
            other => other,
        }
    }

    /// True if entry `key` still names content `id` (read again from the index).
    async fn still_names(&self, kr: &Keyring, key: &EntryKey, id: &ContentId) -> Result<bool> {
        let Some(v) = self.index.get_entry(key).await? else {
            return Ok(false);
        };
        Ok(self.open_rec(kr, key, &v)?.id == *id)
    }

    /// A page of directory `path`: up to `limit` entries after `cursor`, and the cursor of
    /// the next page if there may be more. A cursor of another directory is
    /// [`CoreError::BadCursor`].
    pub async fn list(
        &self,
        path: &EfsPath,
        cursor: Option<&EntryKey>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<EntryKey>)> {
        let kr = self.keyring();
        let dir = self.lookup_record(&kr, path).await?;
        if dir.kind != Kind::Dir {
            return Err(CoreError::Conflict("not a directory"));
        }
        let tag = self.dir_tag(&kr, &dir.id);
        // A cursor names the directory it pages (the key's first half is the directory's
        // tag): one of another directory would start this one at its start or past its end.
        if cursor.is_some_and(|c| c[..16] != tag) {
            return Err(CoreError::BadCursor);
        }
        let limit = limit.max(1);
        let rows = self.index.list_dir(&tag, cursor, limit + 1).await?;
        let more = rows.len() > limit;
        let mut out = Vec::with_capacity(limit.min(rows.len()));
        let mut last = None;
        for (k, v) in rows.into_iter().take(limit) {
            let r = self.open_rec(&kr, &k, &v)?;
            out.push(Entry::from_record(&kr, &r));
            last = Some(k);
        }
        Ok((out, if more { last } else { None }))
    }

    /// A listing cursor for a client: the index key a page ended at ([`Filesystem::list`]),
    /// sealed (AES-256-GCM under a key of its own from the tag term and 16 random bytes,
    /// [`labels::TERM_LIST_CURSOR`]), base64url of the random bytes and the sealed key. In clear it would tell, beside the directory's path in the same URL and
    /// with a copy of the data dir, which entries on disk are that directory's.
    pub fn seal_cursor(&self, key: &EntryKey) -> String {
        let kr = self.keyring();
        let aad = [labels::AAD_LIST_CURSOR, &self.id[..]].concat();
        let salt = random_id();
        let mut out = salt.to_vec();
        out.extend(efs_format::wrap::seal(
            &kr.list_cursor_key(&salt),
            &aad,
            key,
        ));
        B64URL.encode(out)
    }

    /// The index key of a cursor [`Filesystem::seal_cursor`] made; `None` for anything else.
    pub fn open_cursor(&self, cursor: &str) -> Option<EntryKey> {
        let kr = self.keyring();
        let aad = [labels::AAD_LIST_CURSOR, &self.id[..]].concat();
        let bytes = B64URL.decode(cursor).ok()?;
        let (salt, sealed) = bytes.split_at_checked(16)?;
        let key = efs_format::wrap::open(&kr.list_cursor_key(salt), &aad, sealed).ok()?;
        EntryKey::try_from(key.as_slice()).ok()
    }

    /// Starts a new file version. Feed it with [`Upload::write`], then [`Filesystem::commit`].
    pub async fn begin_upload(self: &Arc<Self>) -> Result<Upload> {
        let content_id = random_id();
        let data_key = Key32::random();
        let enc = Encryptor::new(&data_key, content_id);
        let mut buf = Vec::with_capacity(HEADER_LEN + 4096);
        buf.extend_from_slice(&enc.header());
        Ok(Upload {
            fs: self.clone(),
            running: UploadRunning::new(&self.uploads, content_id),
            content_id,
            data_key,
            enc: Some(enc),
            buf,
            blob: None,
            size: 0,
            max_size: u64::MAX,
        })
    }

    /// How many file descriptors reading the version [`Filesystem::look_up`] found holds
    /// for as long as its [`FileReader`] lives: none for content stored inline, one or two
    /// for a blob ([`BlobStore::files_per_reader`]). For a caller that bounds the files open
    /// at once.
    pub fn files_to_read(&self, found: &LookedUp) -> u32 {
        match found.rec.storage {
            Storage::Blob => self
                .blobs
                .files_per_reader(efs_format::stream::encrypted_len(found.rec.size)),
            Storage::Inline | Storage::None => 0,
        }
    }

    /// Makes an upload the current version of `path` if `cond` holds, creating missing
    /// parent directories. Returns the new entry. Durable when it returns.
    pub async fn commit(
        &self,
        path: &EfsPath,
        upload: Upload,
        content_type: Option<String>,
        cond: Precondition,
    ) -> Result<Entry> {
        Ok(self
            .commit_upload(path, upload, content_type, cond)
            .await?
            .0)
    }

    /// Whether an upload to `path` under `cond` would be refused as things stand: the
    /// precondition first ([`CoreError::Precondition`]), then a directory in the way
    /// ([`CoreError::Conflict`]), as the commit checks them. For refusing an upload before
    /// its body is read; the commit checks again.
    pub async fn check_write(&self, path: &EfsPath, cond: &Precondition) -> Result<()> {
        let kr = self.keyring();
        let res = self.resolve(&kr, path, true).await?;
        let current = res.current.as_ref().map(|(_, r)| r);
        check_precondition(&kr, cond, current)?;
        if current.is_some_and(|cur| cur.kind == Kind::Dir) {
            return Err(CoreError::Conflict("a directory exists at this path"));
        }
        Ok(())
    }

    /// As [`Filesystem::commit`], and also says whether a previous version was replaced.
    pub async fn commit_upload(
        &self,
        path: &EfsPath,
        upload: Upload,
        content_type: Option<String>,
        cond: Precondition,
    ) -> Result<(Entry, bool)> {
        let fs = upload.fs.clone();
        debug_assert!(
            std::ptr::eq(Arc::as_ptr(&fs), self),
            "an upload of this filesystem"
        );
        let finished = upload.finish().await?;
        let path = path.clone();
        // In a task of its own, which runs to its end even if this future is dropped (a
        // client hanging up): the index's committer would still apply the batch, but the
        // upload would leave the set of running uploads at once, and a gc in between could
        // take its blob for an orphan. (It also removes the replaced version's blob.)
        let commit = tokio::spawn(async move {
            fs.commit_or_discard(&path, finished, content_type, cond)
                .await
        });
        match commit.await {
            Ok(done) => done,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(CoreError::Index(
                    "the commit was cancelled: the runtime is shutting down".into(),
                )),
            },
        }
    }

    async fn commit_or_discard(
        &self,
        path: &EfsPath,
        finished: FinishedUpload,
        content_type: Option<String>,
        cond: Precondition,
    ) -> Result<(Entry, bool)> {
        match self
            .commit_finished(path, &finished, content_type, cond)
            .await
        {
            Ok(done) => Ok(done),
            Err(Failed::NotCommitted(e)) => {
                self.discard(&finished).await;
                Err(e)
            }
            // The index may still hold the commit (redb writes its new header before the
            // final sync, and may recover that commit when it reopens the database): the
            // record may name this blob, so it stays. If it is an orphan after all, gc
            // removes it once its grace period has passed.
            Err(Failed::Unknown(e)) => {
                tracing::warn!(error = %e, "a commit failed with an unknown outcome; its new blob is left for gc");
                if finished.storage == Storage::Blob {
                    self.unsettled
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(finished.content_id);
                }
                Err(e)
            }
        }
    }

    async fn discard(&self, f: &FinishedUpload) {
        if f.storage == Storage::Blob
            && let Err(e) = self.blobs.delete(&f.content_id).await
        {
            tracing::warn!(error = %e, "could not remove an unused blob; gc will");
        }
    }

    async fn commit_finished(
        &self,
        path: &EfsPath,
        f: &FinishedUpload,
        content_type: Option<String>,
        cond: Precondition,
    ) -> Result<(Entry, bool), Failed> {
        for _ in 0..MAX_ATTEMPTS {
            let kr = self.keyring();
            let res = self.resolve(&kr, path, true).await?;
            // The precondition first, as `mkdir_if` and `check_write` do: `If-None-Match: *`
            // on a directory is 412, not 409.
            check_precondition(&kr, &cond, res.current.as_ref().map(|(_, r)| r))?;
            if let Some((_, cur)) = &res.current
                && cur.kind == Kind::Dir
            {
                return Err(CoreError::Conflict("a directory exists at this path").into());
            }
            if res.current.is_none() {
                crate::path::check_new_name(path.name().expect("resolve refuses the root"))
                    .map_err(CoreError::from)?;
            }
            let now = now_ms();
            let term = kr.current();
            let record = Record {
                name: path.name().expect("resolve refuses the root").to_owned(),
                kind: Kind::File,
                id: f.content_id,
                size: f.size,
                created_ms: res
                    .current
                    .as_ref()
                    .map(|(_, r)| r.created_ms)
                    .unwrap_or(now),
                modified_ms: now,
                content_type: content_type.clone(),
                storage: f.storage,
                key_term: term.number,
                wrapped_key: term.data_key_sealer().seal(
                    &data_key_aad(&self.id, &f.content_id),
                    f.data_key.as_bytes(),
                ),
            };
            let mut batch = self.base_batch(&kr, &res);
            batch.expect.push(Expect {
                key: res.key,
                value: res.current.as_ref().map(|(v, _)| v.clone()),
            });
            if let Some(inline) = &f.inline {
                batch.ops.push(Op::PutInline(f.content_id, inline.clone()));
            }
            batch
                .ops
                .push(Op::PutEntry(res.key, record.seal(&kr, &self.id, &res.key)));
            if let Some((_, old)) = &res.current
                && old.storage == Storage::Inline
            {
                batch.ops.push(Op::DeleteInline(old.id));
            }
            let _unlinking = self.unlinking(res.current.as_ref().map(|(_, r)| r));
            // A batch refused at the seal limit never reached the index: its content goes.
            let committed = self.commit_batch(batch).await.map_err(|e| match e {
                CoreError::SealLimit => Failed::NotCommitted(e),
                e => Failed::Unknown(e),
            })?;
            if committed {
                if let Some((_, old)) = &res.current {
                    self.remove_blob_of(old).await;
                }
                return Ok((Entry::from_record(&kr, &record), res.current.is_some()));
            }
        }
        Err(CoreError::Contention.into())
    }

    /// A batch that expects the resolved ancestors unchanged and creates the missing ones.
    fn base_batch(&self, kr: &Keyring, res: &Resolved) -> Batch {
        let mut batch = Batch::default();
        for (k, v) in &res.ancestors {
            batch.expect.push(Expect {
                key: *k,
                value: Some(v.clone()),
            });
        }
        for (k, r) in &res.missing {
            batch.expect.push(Expect {
                key: *k,
                value: None,
            });
            batch.ops.push(Op::PutEntry(*k, r.seal(kr, &self.id, k)));
        }
        batch
    }

    async fn remove_blob_of(&self, old: &Record) {
        if old.storage == Storage::Blob
            && let Err(e) = self.remove_blob(&old.id).await
        {
            tracing::warn!(error = %e, "could not remove a replaced blob; gc will");
        }
    }

    /// gc's [`Filesystem::remove_blob`]: `Some(true)` removed, `Some(false)` already gone,
    /// `None` deferred while a backup may still copy it.
    async fn remove_orphan_blob(&self, id: &ContentId) -> Result<Option<bool>> {
        self.content_removed(id);
        if self.pins().defer(id) {
            return Ok(None);
        }
        self.blobs.delete_present(id).await.map(Some)
    }

    /// Removes a blob (true), or defers its removal while a backup may still copy it
    /// (false).
    async fn remove_blob(&self, id: &ContentId) -> Result<bool> {
        self.content_removed(id);
        if self.pins().defer(id) {
            return Ok(false);
        }
        self.blobs.delete(id).await.map(|()| true)
    }

    /// Creates directory `path` (and its parents). Existing directory: returned as is.
    pub async fn mkdir(&self, path: &EfsPath) -> Result<Entry> {
        self.mkdir_if(path, Precondition::None).await
    }

    /// [`Filesystem::mkdir`] under a precondition on what the path holds now: with
    /// [`Precondition::IfNoneMatch`] (HTTP `If-None-Match: *`, "create only") an existing
    /// directory is [`CoreError::Precondition`] instead of a success.
    pub async fn mkdir_if(&self, path: &EfsPath, cond: Precondition) -> Result<Entry> {
        for _ in 0..MAX_ATTEMPTS {
            let kr = self.keyring();
            if path.is_root() {
                check_precondition(&kr, &cond, Some(&new_dir_record("", ROOT_ID, 0)))?;
                return Ok(Entry::from_record(&kr, &new_dir_record("", ROOT_ID, 0)));
            }
            let res = self.resolve(&kr, path, true).await?;
            check_precondition(&kr, &cond, res.current.as_ref().map(|(_, r)| r))?;
            if let Some((_, cur)) = &res.current {
                if cur.kind == Kind::Dir {
                    return Ok(Entry::from_record(&kr, cur));
                }
                return Err(CoreError::Conflict("a file exists at this path"));
            }
            crate::path::check_new_name(path.name().expect("not the root"))?;
            let record = new_dir_record(path.name().expect("not the root"), random_id(), now_ms());
            let mut batch = self.base_batch(&kr, &res);
            batch.expect.push(Expect {
                key: res.key,
                value: None,
            });
            batch
                .ops
                .push(Op::PutEntry(res.key, record.seal(&kr, &self.id, &res.key)));
            if self.commit_batch(batch).await? {
                return Ok(Entry::from_record(&kr, &record));
            }
        }
        Err(CoreError::Contention)
    }

    /// Deletes the file or directory at `path`. A non-empty directory needs `recursive`.
    /// Deleting a file destroys its wrapped data key (crypto-erasure) with its record.
    /// A recursive delete is one commit ([`Filesystem::delete_while`]); its content is
    /// removed before this returns (by [`Filesystem::empty_trash`], unless one already runs).
    pub async fn delete(&self, path: &EfsPath, cond: Precondition, recursive: bool) -> Result<()> {
        self.delete_while(path, cond, recursive, false, &|| true)
            .await?;
        if recursive {
            self.empty_trash_logged().await;
        }
        Ok(())
    }

    /// [`Filesystem::delete`] of a directory only (HTTP `DELETE /a/`): a file at `path` is
    /// [`CoreError::Conflict`]. The kind is checked on the record the delete commits against,
    /// so a directory replaced by a file in between is not deleted.
    pub async fn delete_dir(
        &self,
        path: &EfsPath,
        cond: Precondition,
        recursive: bool,
    ) -> Result<()> {
        self.delete_while(path, cond, recursive, true, &|| true)
            .await?;
        if recursive {
            self.empty_trash_logged().await;
        }
        Ok(())
    }

    /// [`Filesystem::delete`] (or, with `dir_only`, [`Filesystem::delete_dir`]) that asks
    /// `allowed` before a recursive delete: if it says no, nothing is deleted
    /// ([`CoreError::Withdrawn`]). A non-empty directory is detached in one commit: its
    /// entry moves under the "being deleted" directory (`TRASH_ID`), so the whole tree is
    /// gone for every reader at once and a crash leaves it whole or gone. Its content is
    /// removed afterwards by [`Filesystem::empty_trash`] (the server runs it after the
    /// delete and when it opens the filesystem).
    pub async fn delete_while(
        &self,
        path: &EfsPath,
        cond: Precondition,
        recursive: bool,
        dir_only: bool,
        allowed: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<()> {
        if path.is_root() {
            return Err(CoreError::Conflict("the root cannot be deleted"));
        }
        for _ in 0..MAX_ATTEMPTS {
            let kr = self.keyring();
            let res = self.resolve(&kr, path, false).await?;
            let Some((value, rec)) = &res.current else {
                return Err(CoreError::NotFound);
            };
            check_precondition(&kr, &cond, Some(rec))?;
            if dir_only && rec.kind != Kind::Dir {
                return Err(CoreError::Conflict(NOT_A_DIR));
            }
            if rec.kind == Kind::Dir {
                let tag = self.dir_tag(&kr, &rec.id);
                let children = self.index.list_dir(&tag, None, 1).await?;
                if !children.is_empty() {
                    if !recursive {
                        return Err(CoreError::Conflict("the directory is not empty"));
                    }
                    if !allowed() {
                        return Err(CoreError::Withdrawn);
                    }
                    // Detached only while it stays where it was found (else resolved again:
                    // moved away, it is no longer at `path`).
                    if self.detach(&kr, &res, value, rec).await? {
                        return Ok(());
                    }
                    continue;
                }
            }
            let mut batch = expect_found(&res, value);
            if rec.kind == Kind::Dir {
                batch.empty_dirs.push(self.dir_tag(&kr, &rec.id));
            }
            batch.ops.push(Op::DeleteEntry(res.key));
            if rec.storage == Storage::Inline {
                batch.ops.push(Op::DeleteInline(rec.id));
            }
            let _unlinking = self.unlinking(Some(rec));
            if self.commit_batch(batch).await? {
                self.remove_blob_of(rec).await;
                return Ok(());
            }
        }
        Err(CoreError::Contention)
    }

    /// Moves directory `rec` (found at `res` as `value`) under the "being deleted" directory,
    /// in one commit that expects its ancestors and its entry unchanged, as a delete does.
    /// It keeps its id (hence its children's keys) and gets a fresh random name there, so
    /// that two deletes never collide; its record is sealed again for its new key, as a
    /// move seals it. `false` if the expectations failed (resolve again).
    async fn detach(
        &self,
        kr: &Keyring,
        res: &Resolved,
        value: &[u8],
        rec: &Record,
    ) -> Result<bool> {
        let name = hex::encode(random_id());
        let key = self.entry_key(kr, &TRASH_ID, &name);
        let mut moved = rec.clone();
        moved.name = name;
        moved.modified_ms = now_ms();
        let mut batch = expect_found(res, value);
        batch.expect.push(Expect { key, value: None });
        batch.ops.push(Op::DeleteEntry(res.key));
        batch
            .ops
            .push(Op::PutEntry(key, moved.seal(kr, &self.id, &key)));
        self.commit_batch(batch).await
    }

    /// Empties the "being deleted" directory: everything below each detached directory
    /// (depth first, one commit per entry, blobs removed as a delete removes them), then its
    /// entry there. One run at a time per filesystem: a call while one runs asks it for
    /// another pass and returns at once. Nothing can reach these trees, so no reader sees
    /// them half emptied, and one a crash left is emptied by the next run.
    pub async fn empty_trash(&self) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        self.trash_wanted.store(true, SeqCst);
        loop {
            let Ok(_running) = self.emptying.try_lock() else {
                return Ok(());
            };
            while self.trash_wanted.swap(false, SeqCst) {
                self.empty_trash_pass().await?;
            }
            drop(_running);
            // Asked for after the last pass began and before the lock was let go: no
            // running one will see it.
            if !self.trash_wanted.load(SeqCst) {
                return Ok(());
            }
        }
    }

    /// How many directories recursive deletes detached are still waiting to be emptied (at
    /// most `limit` counted). Their files are live records until emptied: `retire-terms`
    /// must not copy them into its new index.
    pub(crate) async fn being_deleted(&self, limit: usize) -> Result<usize> {
        debug_assert!(limit > 0);
        let kr = self.keyring();
        let tag = self.dir_tag(&kr, &TRASH_ID);
        Ok(self.index.list_dir(&tag, None, limit).await?.len())
    }

    /// Empties what recursive deletes detached and waits until nothing is left, also when
    /// another task is emptying (the server's, after a delete): a key rotation must not
    /// find those entries, or it would re-seal the deleted files under its new term, which
    /// a later `retire-terms` keeps. Refused when the emptying makes no progress for a
    /// minute (a damaged entry the emptying fails on, say). Returns how many detached
    /// directories there were (at most [`TRASH_COUNT_LIMIT`]).
    pub async fn finish_pending_deletes(&self) -> Result<usize> {
        let pending = self.being_deleted(TRASH_COUNT_LIMIT).await?;
        if pending == 0 {
            return Ok(0);
        }
        let mut left = pending;
        let mut since = std::time::Instant::now();
        loop {
            self.empty_trash().await?;
            let now = self.being_deleted(TRASH_COUNT_LIMIT).await?;
            if now == 0 {
                return Ok(pending);
            }
            if now < left {
                left = now;
                since = std::time::Instant::now();
            } else if since.elapsed() > std::time::Duration::from_secs(60) {
                return Err(CoreError::Refused(format!(
                    "{now} directories of recursive deletes of '{}' are still waiting to be emptied, and none was emptied in the last minute: their files are still live records. Look with efsctl fsck --fs {} (or the server's log), then try again",
                    self.name, self.name
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// [`Filesystem::empty_trash`] in a task of its own (the server: after a recursive
    /// delete, and when it opens the filesystem); a failure is logged, and the next run
    /// (the next recursive delete, or the next start) tries again.
    pub fn empty_trash_in_background(self: &Arc<Self>) {
        let fs = self.clone();
        tokio::spawn(async move { fs.empty_trash_logged().await });
    }

    /// [`Filesystem::empty_trash`] after a delete that is done: a failure is logged (the
    /// next run tries again), not the delete's.
    async fn empty_trash_logged(&self) {
        if let Err(e) = self.empty_trash().await {
            tracing::warn!(fs = self.name(), error = %e, "could not empty what recursive deletes detached; the next delete or start tries again");
        }
    }

    async fn empty_trash_pass(&self) -> Result<()> {
        self.trusted().await?;
        loop {
            let kr = self.keyring();
            let tag = self.dir_tag(&kr, &TRASH_ID);
            let rows = self.index.list_dir(&tag, None, 64).await?;
            if rows.is_empty() {
                return Ok(());
            }
            for (k, v) in rows {
                let rec = self.open_rec(&kr, &k, &v)?;
                if rec.kind == Kind::Dir
                    && !self
                        .delete_children(&kr, &rec.id, vec![(k, v)], &|| true)
                        .await?
                {
                    continue;
                }
                // Taken again: a key rotation may have sealed it again meanwhile.
                let Some(now) = self.index.get_entry(&k).await? else {
                    continue;
                };
                let mut batch = Batch::default();
                batch.expect.push(Expect {
                    key: k,
                    value: Some(now),
                });
                if rec.kind == Kind::Dir {
                    batch.empty_dirs.push(self.dir_tag(&kr, &rec.id));
                }
                batch.ops.push(Op::DeleteEntry(k));
                if rec.storage == Storage::Inline {
                    batch.ops.push(Op::DeleteInline(rec.id));
                }
                let _unlinking = self.unlinking(Some(&rec));
                if self.commit_batch(batch).await? {
                    self.remove_blob_of(&rec).await;
                }
            }
        }
    }

    /// Deletes everything below directory `dir` (depth first), page by page, while `chain`
    /// (the directories from a detached directory's entry in the "being deleted" directory
    /// down to `dir`, as found) stays as it was: every batch expects it (a key rotation may
    /// seal it again: taken with its new value). `false` once the chain has changed.
    ///
    /// A loop over a stack of directories, not a recursion: a tree as deep as a path allows
    /// (2,000 levels of one-letter names) overflowed a runtime thread's stack and aborted the
    /// server, again at every start (which resumes the delete). One chain is shared by every
    /// level (a level's chain is its prefix), not copied at each.
    async fn delete_children(
        &self,
        kr: &Keyring,
        dir: &[u8; 16],
        mut chain: Vec<(EntryKey, Vec<u8>)>,
        allowed: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<bool> {
        /// A directory being emptied: its tag, how much of `chain` leads to it, the page of
        /// entries not yet deleted, and the subdirectory whose own entry is deleted once it
        /// has been emptied.
        struct Level {
            tag: DirTag,
            chain_len: usize,
            rows: std::collections::VecDeque<(EntryKey, Vec<u8>)>,
            emptying: Option<(EntryKey, Vec<u8>, Record)>,
        }
        let mut levels = vec![Level {
            tag: self.dir_tag(kr, dir),
            chain_len: chain.len(),
            rows: Default::default(),
            emptying: None,
        }];
        while let Some(level) = levels.last_mut() {
            // Back from emptying a subdirectory: its entry as the chain last saw it (sealed
            // again by a key rotation meanwhile, the old value would fail the delete once).
            if let Some((_, v, _)) = level.emptying.as_mut()
                && let Some((_, now)) = chain.get(level.chain_len)
            {
                v.clone_from(now);
            }
            chain.truncate(level.chain_len);
            // A subdirectory emptied: its entry now.
            if let Some((k, v, rec)) = level.emptying.take() {
                if !self.delete_entry_below(kr, &mut chain, k, v, &rec).await? {
                    return Ok(false);
                }
                continue;
            }
            if level.rows.is_empty() {
                if !allowed() {
                    return Err(CoreError::Withdrawn);
                }
                let rows = self.index.list_dir(&level.tag, None, 256).await?;
                if rows.is_empty() {
                    levels.pop();
                    continue;
                }
                level.rows = rows.into();
            }
            let Some((k, v)) = level.rows.pop_front() else {
                continue;
            };
            let rec = self.open_rec(kr, &k, &v)?;
            if rec.kind == Kind::Dir {
                // Emptied first, one level down; its entry is deleted when it is empty.
                let tag = self.dir_tag(kr, &rec.id);
                chain.push((k, v.clone()));
                level.emptying = Some((k, v, rec));
                levels.push(Level {
                    tag,
                    chain_len: chain.len(),
                    rows: Default::default(),
                    emptying: None,
                });
                continue;
            }
            if !self.delete_entry_below(kr, &mut chain, k, v, &rec).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Deletes entry `k` (found as `v`, `rec`) of the directory `chain` leads to, expecting
    /// `chain` as it is (a directory: expecting it empty too; a child written meanwhile fails
    /// the batch, and the next pass deletes it). `false` when the chain has changed.
    async fn delete_entry_below(
        &self,
        kr: &Keyring,
        chain: &mut [(EntryKey, Vec<u8>)],
        k: EntryKey,
        v: Vec<u8>,
        rec: &Record,
    ) -> Result<bool> {
        let mut batch = Batch::default();
        for (ck, cv) in chain.iter() {
            batch.expect.push(Expect {
                key: *ck,
                value: Some(cv.clone()),
            });
        }
        batch.expect.push(Expect {
            key: k,
            value: Some(v),
        });
        if rec.kind == Kind::Dir {
            batch.empty_dirs.push(self.dir_tag(kr, &rec.id));
        }
        batch.ops.push(Op::DeleteEntry(k));
        if rec.storage == Storage::Inline {
            batch.ops.push(Op::DeleteInline(rec.id));
        }
        let _unlinking = self.unlinking(Some(rec));
        if self.commit_batch(batch).await? {
            self.remove_blob_of(rec).await;
            Ok(true)
        } else {
            self.chain_holds(kr, chain).await
        }
    }

    /// Whether every directory of `chain` is still where it was found, the same directory
    /// (a record sealed again by a key rotation is taken with its new value).
    async fn chain_holds(&self, kr: &Keyring, chain: &mut [(EntryKey, Vec<u8>)]) -> Result<bool> {
        for (k, v) in chain.iter_mut() {
            match self.index.get_entry(k).await? {
                None => return Ok(false),
                Some(now) if now == *v => {}
                Some(now) => {
                    let (was, is) = (self.open_rec(kr, k, v)?, self.open_rec(kr, k, &now)?);
                    if is.kind != Kind::Dir || is.id != was.id {
                        return Ok(false);
                    }
                    *v = now;
                }
            }
        }
        Ok(true)
    }

    /// Moves (renames) a file or directory. A directory moves as one entry: its content is
    /// not touched. `overwrite` lets a file replace a file at `to`.
    pub async fn rename(&self, from: &EfsPath, to: &EfsPath, overwrite: bool) -> Result<Entry> {
        self.rename_if(from, to, overwrite, Precondition::None)
            .await
    }

    /// [`Filesystem::rename_if`] of a directory only (HTTP `MOVE /a/`, or a destination
    /// ending in `/`): a file at `from` is [`CoreError::Conflict`], checked on the record the
    /// move commits against.
    pub async fn rename_dir_if(
        &self,
        from: &EfsPath,
        to: &EfsPath,
        overwrite: bool,
        cond: Precondition,
    ) -> Result<Entry> {
        self.rename_kind(from, to, overwrite, cond, true).await
    }

    /// [`Filesystem::rename`] if the source's current version meets `cond` (HTTP `If-Match`
    /// on `MOVE`), else [`CoreError::Precondition`]. The check and the move are one commit:
    /// it expects the source exactly as checked.
    pub async fn rename_if(
        &self,
        from: &EfsPath,
        to: &EfsPath,
        overwrite: bool,
        cond: Precondition,
    ) -> Result<Entry> {
        self.rename_kind(from, to, overwrite, cond, false).await
    }

    async fn rename_kind(
        &self,
        from: &EfsPath,
        to: &EfsPath,
        overwrite: bool,
        cond: Precondition,
        dir_only: bool,
    ) -> Result<Entry> {
        if from.is_root() {
            return Err(CoreError::Conflict("the root cannot be moved"));
        }
        if to.is_root() {
            return Err(CoreError::Conflict("nothing can be moved onto the root"));
        }
        if to.starts_with(from) {
            if to == from {
                if cond != Precondition::None {
                    let kr = self.keyring();
                    let res = self.resolve(&kr, from, false).await?;
                    check_precondition(&kr, &cond, res.current.as_ref().map(|(_, r)| r))?;
                }
                let e = self.stat(from).await?;
                if dir_only && e.kind != Kind::Dir {
                    return Err(CoreError::Conflict(NOT_A_DIR));
                }
                return Ok(e);
            }
            return Err(CoreError::Conflict(
                "the destination lies inside what is moved (below its own path)",
            ));
        }
        for _ in 0..MAX_ATTEMPTS {
            let _gate = self.rename_gate.read().await;
            let kr = self.keyring();
            let src = self.resolve(&kr, from, false).await?;
            let Some((src_val, src_rec)) = &src.current else {
                return Err(CoreError::NotFound);
            };
            check_precondition(&kr, &cond, Some(src_rec))?;
            if dir_only && src_rec.kind != Kind::Dir {
                return Err(CoreError::Conflict(NOT_A_DIR));
            }
            let dst = self.resolve(&kr, to, true).await?;
            if let Some((_, d)) = &dst.current {
                if !overwrite {
                    return Err(CoreError::Conflict("the destination exists"));
                }
                if d.kind == Kind::Dir || src_rec.kind == Kind::Dir {
                    return Err(CoreError::Conflict("only a file can replace a file"));
                }
            }
            // A new name (or a name that exists already, which was accepted when made).
            if dst.current.is_none() {
                crate::path::check_new_name(to.name().expect("not the root"))?;
            }
            let mut moved = src_rec.clone();
            moved.name = to.name().expect("not the root").to_owned();
            let old_term = moved.kind == Kind::File && moved.key_term < kr.current_number();
            if old_term && self.reencrypting.load(std::sync::atomic::Ordering::SeqCst) {
                // Kept, so that the re-encryption still finds it by its term; counted, so
                // that a pass it moved behind the cursor is not taken for a quiet one.
                self.old_term_renames
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            } else if old_term {
                // A key rotation may have passed this entry already: rewrap while moving.
                let dk = self.data_key_of(&kr, &moved)?;
                let term = kr.current();
                moved.key_term = term.number;
                moved.wrapped_key = term
                    .data_key_sealer()
                    .seal(&data_key_aad(&self.id, &moved.id), dk.as_bytes());
            }
            moved.modified_ms = now_ms();
            let mut batch = self.base_batch(&kr, &dst);
            for (k, v) in &src.ancestors {
                batch.expect.push(Expect {
                    key: *k,
                    value: Some(v.clone()),
                });
            }
            batch.expect.push(Expect {
                key: src.key,
                value: Some(src_val.clone()),
            });
            batch.expect.push(Expect {
                key: dst.key,
                value: dst.current.as_ref().map(|(v, _)| v.clone()),
            });
            batch.ops.push(Op::DeleteEntry(src.key));
            if let Some((_, d)) = &dst.current
                && d.storage == Storage::Inline
            {
                batch.ops.push(Op::DeleteInline(d.id));
            }
            batch
                .ops
                .push(Op::PutEntry(dst.key, moved.seal(&kr, &self.id, &dst.key)));
            let _unlinking = self.unlinking(dst.current.as_ref().map(|(_, d)| d));
            if self.commit_batch(batch).await? {
                if let Some((_, d)) = &dst.current {
                    self.remove_blob_of(d).await;
                }
                return Ok(Entry::from_record(&kr, &moved));
            }
        }
        Err(CoreError::Contention)
    }

    /// Opens the current version of file `path` for reading. The reader keeps that version
    /// even if the file is replaced or deleted meanwhile.
    pub async fn open(&self, path: &EfsPath) -> Result<FileReader> {
        // A writer may replace the file between our record read and the blob open; the old
        // blob is then gone, so read the record again (bounded). Content missing under a
        // record that did not change is damage: open_looked_up reports it as such.
        for _ in 0..8 {
            let found = self.look_up_in_index(path).await?;
            match self.open_looked_up(&found).await {
                Err(CoreError::NotFound) => continue,
                other => return other,
            }
        }
        Err(CoreError::Contention)
    }

    async fn open_record(&self, kr: &Keyring, rec: &Record) -> Result<FileReader> {
        let key = self.data_key_of(kr, rec)?;
        let source = match rec.storage {
            Storage::Inline => {
                let bytes = self
                    .index
                    .get_inline(&rec.id)
                    .await?
                    .ok_or(CoreError::NotFound)?;
                Source::Inline(bytes)
            }
            Storage::Blob => Source::Blob(self.blobs.open(&rec.id).await?),
            Storage::None => return Err(CoreError::Conflict("not a file")),
        };
        let enc_len = match &source {
            Source::Inline(b) => b.len() as u64,
            Source::Blob(b) => b.len(),
        };
        if enc_len < HEADER_LEN as u64 {
            return Err(CoreError::Decrypt);
        }
        let header = match &source {
            Source::Inline(b) => b[..HEADER_LEN].to_vec(),
            Source::Blob(b) => b.read_at(0, HEADER_LEN).await?,
        };
        let dec = Decryptor::new(&key, &header, enc_len, &rec.id)?;
        if dec.plaintext_len() != rec.size {
            return Err(CoreError::Decrypt);
        }
        Ok(FileReader {
            entry: Entry::from_record(kr, rec),
            dec,
            source,
        })
    }

    /// Counts files, directories and bytes (a full scan). What a recursive delete detached
    /// and has not emptied yet is deleted, so not counted.
    pub async fn stats(&self) -> Result<FsStats> {
        let kr = self.keyring();
        // Counted per parent directory, then summed over the directories not below the
        // "being deleted" one (entries come in key order, children before their parent
        // as often as after).
        let mut per_parent: std::collections::HashMap<DirTag, FsStats> = Default::default();
        let mut parent_of: std::collections::HashMap<DirTag, DirTag> = Default::default();
        let mut after = None;
        loop {
            let rows = self.index.scan_entries(after.as_ref(), 1024).await?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(*last);
            for (k, v) in &rows {
                let r = self.open_rec(&kr, k, v)?;
                let ptag: DirTag = k[..16].try_into().expect("32-byte key");
                let s = per_parent.entry(ptag).or_default();
                match r.kind {
                    Kind::File => {
                        s.files += 1;
                        s.bytes += r.size;
                    }
                    Kind::Dir => {
                        s.dirs += 1;
                        parent_of.insert(self.dir_tag(&kr, &r.id), ptag);
                    }
                }
            }
        }
        let trash = self.dir_tag(&kr, &TRASH_ID);
        let deleted = |mut tag: DirTag| {
            for _ in 0..=parent_of.len() {
                if tag == trash {
                    return true;
                }
                match parent_of.get(&tag) {
                    Some(p) => tag = *p,
                    None => return false,
                }
            }
            false
        };
        let mut s = FsStats::default();
        for (ptag, c) in &per_parent {
            if !deleted(*ptag) {
                s.files += c.files;
                s.dirs += c.dirs;
                s.bytes += c.bytes;
            }
        }
        Ok(s)
    }

    /// Checks the index against its digest (a full scan of the entries, one snapshot).
    pub async fn check_index_digest(&self) -> Result<crate::digest::DigestCheck> {
        self.index.check_digest().await
    }

    /// Checks every record and every byte of content; lists orphans.
    pub async fn fsck(&self) -> Result<FsckReport> {
        let kr = self.keyring();
        let mut rep = FsckReport::default();
        let mark = self.generation_mark();
        let digest = self.check_index_digest().await?;
        match &digest {
            crate::digest::DigestCheck::Holds { .. } => {
                if let Some((at, mark)) = self.behind_mark(&digest, mark) {
                    rep.errors
                        .push(format!("index: {}", behind_mark_text(&self.name, at, mark)));
                }
            }
            crate::digest::DigestCheck::Differs {
                generation,
                claimed_entries,
                entries,
            } => rep.errors.push(format!(
                "index: the entries differ from the index digest (generation {generation}, \
                 {claimed_entries} entries expected, {entries} found): a record or a metadata \
                 row (the sealed keyring, say) was changed, removed, added or put back to an \
                 older version outside EFS"
            )),
            crate::digest::DigestCheck::Unreadable => rep
                .errors
                .push("index: the index digest is unreadable: it was changed outside EFS".into()),
        }
        rep.digest = Some(digest);
        // The tree and the references from one snapshot, the candidates for orphans listed
        // before it (as gc does): the server may write, rename and delete meanwhile, and a
        // scan page by page could then see a file under no name or under two, or a
        // directory's children without it.
        let (blobs, writing, inline) = self.orphan_candidates().await?;
        let tree = self.snapshot_tree(&kr).await?;
        let root_tag = self.dir_tag(&kr, &ROOT_ID);
        let trash_tag = self.dir_tag(&kr, &TRASH_ID);
        for (ptag, k) in &tree.parents {
            if !tree.dirs.contains(ptag) {
                rep.errors.push(format!(
                    "entry {}: its parent directory does not exist",
                    hex::encode(k)
                ));
            }
        }
        let orphan_blobs: Vec<ContentId> = blobs
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !tree.blobs.contains(id) && !writing.contains(id))
            .collect();
        let orphan_inline: Vec<ContentId> = inline
            .into_iter()
            .filter(|id| !tree.inline.contains(id))
            .collect();
        // Every record and every byte of content, page by page (a snapshot held that long
        // would keep the index from reusing its pages). A content that fails is an error
        // only if its record still names it: one replaced or deleted meanwhile is not.
        let mut after = None;
        loop {
            let rows = self.index.scan_entries(after.as_ref(), 1024).await?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(*last);
            for (k, v) in &rows {
                // Told apart by the snapshot's tree: a directory detached by a delete after
                // it is counted with the others.
                let parent: DirTag = k[..16].try_into().expect("32-byte key");
                let pending = tree.under(trash_tag, parent);
                if pending {
                    rep.pending_delete_records += 1;
                } else {
                    rep.records += 1;
                }
                let rec = match self.open_rec(&kr, k, v) {
                    Ok(r) => r,
                    Err(e) => {
                        rep.errors
                            .push(format!("entry {}: record: {e}", hex::encode(k)));
                        continue;
                    }
                };
                if rec.kind != Kind::File {
                    continue;
                }
                match self.verify_content(&kr, &rec).await {
                    Ok(()) if pending => rep.pending_delete_files_verified += 1,
                    Ok(()) => rep.files_verified += 1,
                    Err(_) if !self.still_names(&kr, k, &rec.id).await.unwrap_or(true) => {}
                    Err(e) => {
                        let parent: DirTag = k[..16].try_into().expect("32-byte key");
                        if let Some(path) = tree.path_of(root_tag, parent, &rec.name) {
                            rep.paths.insert(hex::encode(k), path);
                        }
                        rep.errors
                            .push(format!("entry {}: content: {e}", hex::encode(k)));
                    }
                }
            }
        }
        // A candidate is an orphan if it is still there after the scan: the content of a
        // version replaced or deleted between the listing and the snapshot was on its way
        // out (a replaced inline content goes with the batch that replaces it, a blob right
        // after its commit, marked until then). One whose removal a running backup defers is
        // on its way out too (removed when the backup ends), not an orphan.
        let deferred: HashSet<ContentId> = self.removals_deferred();
        for id in orphan_blobs
            .into_iter()
            .filter(|id| !deferred.contains(id) && !self.being_unlinked(id))
        {
            match self.blobs.open(&id).await {
                Err(CoreError::NotFound) => {}
                _ => rep.orphan_blobs.push(hex::encode(id)),
            }
        }
        for id in orphan_inline {
            if self.index.get_inline(&id).await?.is_some() {
                rep.orphan_inline.push(hex::encode(id));
            }
        }
        rep.partial_writes = self.blobs.partials(&self.uploads).await?;
        Ok(rep)
    }

    /// What may be orphaned, for gc and fsck, to be taken before their snapshot of the
    /// index: every blob (with its age), the uploads running now, every inline content.
    /// Uploads running now may have put their blob in its shard without a committed record
    /// yet; one that is over by now committed before the snapshot (or dropped its blob).
    async fn orphan_candidates(
        &self,
    ) -> Result<(Vec<(ContentId, u64)>, HashSet<ContentId>, Vec<ContentId>)> {
        let blobs = self.blobs.list().await?;
        let mut writing = self
            .uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // After the uploads: a commit of unknown outcome joins `unsettled` before its
        // upload leaves the running ones, so a blob is in one set or the other.
        writing.extend(self.settle_index().await?);
        let inline = self.index.inline_ids().await?;
        Ok((blobs, writing, inline))
    }

    /// Makes the index show the outcome of every commit that failed with an unknown outcome
    /// before now: an empty batch goes through the committer, which first reopens a failed
    /// database (redb then recovers a commit it had written), and once it has committed
    /// those blobs are settled: the index says whether a record names them. Returns the
    /// blobs of failures since, still unsettled. (gc removed the blob of such a commit,
    /// whose record redb recovered at the next write: a file naming a deleted blob.) Any
    /// failed commit since the last settling is settled too ([`Filesystem::commits_failed`]).
    async fn settle_index(&self) -> Result<HashSet<ContentId>> {
        let unsettled = || self.unsettled.lock().unwrap_or_else(|e| e.into_inner());
        use std::sync::atomic::Ordering::SeqCst;
        let before = unsettled().clone();
        let failures = self.commits_failed.load(SeqCst);
        if failures != self.failures_settled.load(SeqCst) || !before.is_empty() {
            self.index.commit(Batch::default()).await?;
            // Only once the index has been reopened are those failures settled.
            self.failures_settled.fetch_max(failures, SeqCst);
            unsettled().retain(|id| !before.contains(id));
        }
        Ok(unsettled().clone())
    }

    /// The directory tree and the contents named in one snapshot of the index, for fsck.
    /// A record that does not open is left out (the scan of fsck reports it).
    async fn snapshot_tree(&self, kr: &Keyring) -> Result<SnapshotTree> {
        let mut tree = SnapshotTree::default();
        tree.dirs.insert(self.dir_tag(kr, &ROOT_ID));
        // What a recursive delete detached and has not emptied yet: its entries have a
        // parent, and their contents are referenced until they are deleted (no path).
        tree.dirs.insert(self.dir_tag(kr, &TRASH_ID));
        self.index
            .visit_entries(&mut |k, v| {
                let Ok(rec) = self.open_rec(kr, k, v) else {
                    return Ok(());
                };
                let ptag: DirTag = k[..16].try_into().expect("32-byte key");
                tree.parents.push((ptag, *k));
                match (rec.kind, rec.storage) {
                    (Kind::Dir, _) => {
                        let tag = self.dir_tag(kr, &rec.id);
                        tree.dirs.insert(tag);
                        tree.dir_names.insert(tag, (ptag, rec.name));
                    }
                    (Kind::File, Storage::Blob) => {
                        tree.blobs.insert(rec.id);
                    }
                    (Kind::File, _) => {
                        tree.inline.insert(rec.id);
                    }
                }
                Ok(())
            })
            .await?;
        Ok(tree)
    }

    async fn verify_content(&self, kr: &Keyring, rec: &Record) -> Result<()> {
        let r = self.open_record(kr, rec).await?;
        let n = r.dec.segment_count();
        let mut i = 0;
        while i < n {
            let end = (i + 16).min(n);
            // Decrypted (and so authenticated) into a buffer wiped when dropped.
            drop(r.read_plain(i, end).await?);
            i = end;
        }
        Ok(())
    }

    /// Removes orphan blobs older than `grace_secs` and orphan inline contents.
    ///
    /// Refused ([`CoreError::Conflict`]) while a restore into this filesystem runs, or if
    /// one started during the scan: a restore copies blobs and commits inline contents
    /// before the records that name them, so they look orphaned until it ends, however
    /// long it takes (a grace period would not protect a restore longer than it).
    pub async fn gc(&self, grace_secs: u64) -> Result<GcReport> {
        self.trusted().await?;
        let restoring =
            || CoreError::Conflict("a restore into this filesystem is running; run gc after it");
        let _exclusive = self.gc_or_restore.try_lock().map_err(|_| restoring())?;
        let before = self.restore_state();
        if before.0 > 0 {
            return Err(restoring());
        }
        // Candidates are listed before the references are scanned: content and its record
        // are committed together, so a content that existed before the scan has its record
        // in the scan, and one written during the scan is not a candidate. (The other order
        // deleted inline contents committed between the scan and the listing.)
        let (blobs, writing, inline) = self.orphan_candidates().await?;
        let rep = self.fsck_refs().await?;
        // Removals a backup defers, or that the end of one is making now: not again.
        let deferred = self.removals_deferred();
        // A restore that started after the first check may have copied content that the
        // listings above hold and the scan does not name yet.
        if self.restore_state() != before {
            return Err(restoring());
        }
        let mut out = GcReport {
            partials_removed: self
                .blobs
                .remove_stale_partials(grace_secs, &self.uploads)
                .await?,
            ..GcReport::default()
        };
        for (id, age) in blobs {
            if !rep.0.contains(&id) && !writing.contains(&id) {
                if deferred.contains(&id) {
                    out.blobs_deferred += 1;
                } else if self.being_unlinked(&id) {
                    // A writer committed its record away after the listing and is about to
                    // unlink it (marked from before that commit): not left over. Looked at
                    // after the scan, so a writer that had not marked it yet still had its
                    // record in the scan.
                } else if age >= grace_secs {
                    match self.remove_orphan_blob(&id).await? {
                        Some(true) => out.blobs_removed += 1,
                        // Gone since the listing: a delete or an overwrite committed before
                        // the scan removed it itself. Not counted: nothing was left over.
                        Some(false) => {}
                        None => out.blobs_deferred += 1,
                    }
                } else {
                    out.blobs_kept_young += 1;
                }
            }
        }
        let mut orphans: Vec<ContentId> = Vec::new();
        for id in inline.into_iter().filter(|id| !rep.1.contains(id)) {
            // Still there: an overwrite or a delete committed between the listing and the
            // scan took its old content with it (and the removal below of one taken since is
            // a no-op); only what is left over is counted.
            if self.index.get_inline(&id).await?.is_some() {
                orphans.push(id);
            }
        }
        if !orphans.is_empty() {
            out.inline_removed = orphans.len() as u64;
            let batch = Batch {
                expect: vec![],
                ops: orphans.into_iter().map(Op::DeleteInline).collect(),
                ..Default::default()
            };
            self.commit_batch(batch).await?;
        }
        Ok(out)
    }

    async fn fsck_refs(
        &self,
    ) -> Result<(
        std::collections::HashSet<ContentId>,
        std::collections::HashSet<ContentId>,
    )> {
        // One snapshot: a record moved by a concurrent rename is seen exactly once (paging
        // could miss it, and gc would then delete live content).
        let kr = self.keyring();
        let mut blobs = std::collections::HashSet::new();
        let mut inline = std::collections::HashSet::new();
        self.index
            .visit_entries(&mut |k, v| {
                let rec = self.open_rec(&kr, k, v)?;
                match rec.storage {
                    Storage::Blob => {
                        blobs.insert(rec.id);
                    }
                    Storage::Inline => {
                        inline.insert(rec.id);
                    }
                    Storage::None => {}
                }
                Ok(())
            })
            .await?;
        Ok((blobs, inline))
    }
}

/// What is wrong with an index whose digest holds at generation `at`, below the data dir's
/// mark `mark`, and what to do.
pub fn behind_mark_text(fs: &str, at: u64, mark: u64) -> String {
    format!(
        "the index is at generation {at}, the data dir last saw {mark}: an earlier copy of the \
         index was put back? (its digest holds, so it is a whole earlier state: a copy of the \
         index file restored by hand, or the files reverted.) The filesystem is on hold: put \
         back the current index file and restart, or, to serve this earlier state, run efsctl \
         fsck --fs {fs} --accept-index (an earlier state brings back the key terms a \
         retire-terms since has erased: never accept one from before a retirement)"
    )
}

fn new_dir_record(name: &str, id: [u8; 16], now: i64) -> Record {
    Record {
        name: name.to_owned(),
        kind: Kind::Dir,
        id,
        size: 0,
        created_ms: now,
        modified_ms: now,
        content_type: None,
        storage: Storage::None,
        key_term: 0,
        wrapped_key: Vec::new(),
    }
}

/// The ETag bytes of a file version.
fn etag_of(kr: &Keyring, content: &ContentId) -> [u8; 16] {
    kr.tag_mac().mac(&[labels::TAG_ETAG, content])[..16]
        .try_into()
        .expect("SHA-256 output is 32 bytes")
}

/// A delete or move of a path ending in `/` found a file there.
const NOT_A_DIR: &str = "a path ending in '/' names a directory, and this is a file";

fn check_precondition(kr: &Keyring, cond: &Precondition, current: Option<&Record>) -> Result<()> {
    let ok = match (cond, current) {
        (Precondition::None, _) => true,
        (Precondition::IfNoneMatch, cur) => cur.is_none(),
        (Precondition::IfExists, cur) => cur.is_some(),
        (Precondition::IfMatch(tags), Some(cur)) => {
            cur.kind == Kind::File && tags.iter().any(|t| *t == etag_of(kr, &cur.id))
        }
        (Precondition::IfMatch(_), None) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(CoreError::Precondition)
    }
}

/// A path resolved by [`Filesystem::look_up`]: its entry, and the record to open it by.
pub struct LookedUp {
    entry: Entry,
    rec: Record,
    /// Where the record was found (`None`: the root).
    key: Option<EntryKey>,
}

impl LookedUp {
    /// What was found.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

/// A file version being written. Memory: at most one segment plus one write chunk.
pub struct Upload {
    fs: Arc<Filesystem>,
    /// Keeps gc away from this upload's blob until it is committed or dropped.
    running: UploadRunning,
    content_id: ContentId,
    data_key: Key32,
    enc: Option<Encryptor>,
    /// Sealed bytes not yet handed to the blob writer (or the whole inline content).
    buf: Vec<u8>,
    blob: Option<Box<dyn BlobWriter>>,
    size: u64,
    max_size: u64,
}

/// Membership of a content id in [`Filesystem::uploads`], from [`Filesystem::begin_upload`]
/// until dropped (after the commit, or with an upload that is abandoned).
struct UploadRunning {
    set: RunningUploads,
    id: ContentId,
}

impl UploadRunning {
    fn new(set: &RunningUploads, id: ContentId) -> Self {
        set.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        Self {
            set: set.clone(),
            id,
        }
    }
}

impl Drop for UploadRunning {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

struct FinishedUpload {
    /// Dropped once the commit is over (see [`UploadRunning`]).
    _running: UploadRunning,
    content_id: ContentId,
    data_key: Key32,
    size: u64,
    storage: Storage,
    inline: Option<Vec<u8>>,
}

impl Upload {
    /// Refuses content larger than `max` bytes ([`CoreError::TooLarge`]).
    pub fn set_max_size(&mut self, max: u64) {
        self.max_size = max;
    }

    /// Plaintext bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of this upload not yet handed to the kernel, which a `statvfs` of the volume
    /// does not count yet: what is sealed but not given to the blob writer (all of an inline
    /// content, kept in memory until the commit), and what the blob writer holds in its
    /// buffers or in a write in flight ([`BlobWriter::unwritten`]; up to two 8 MiB buffers
    /// for a direct writer), and the plaintext the encryptor still holds (up to a segment,
    /// sealed and written at the finish, with its tag). Sealed bytes, a little more than the
    /// plaintext: what the disk will take. For the server's free-space reserve.
    pub fn unwritten(&self) -> u64 {
        let pending = self
            .enc
            .as_ref()
            .map_or(0, |e| e.pending() as u64 + TAG_LEN as u64);
        self.buf.len() as u64 + self.blob.as_ref().map_or(0, |b| b.unwritten()) + pending
    }

    /// Whether this upload holds a blob file open once `more` further bytes are written to
    /// it: from its first byte past the filesystem's inline size until it is committed or
    /// dropped (until then its content is in memory). For a caller that bounds the files
    /// open at once: it takes its place before the [`Upload::write`] that opens the file.
    pub fn holds_file_after(&self, more: usize) -> bool {
        self.blob.is_some()
            || self.size.saturating_add(more as u64) > self.fs.opts.inline_max as u64
    }

    /// Appends plaintext.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.size += data.len() as u64;
        if self.size > self.max_size {
            return Err(CoreError::TooLarge);
        }
        let enc = self.enc.as_mut().expect("the encryptor lives until finish");
        if let Some(blob) = self.blob.as_mut()
            && blob.tail().is_some()
        {
            // Sealed straight into the blob writer's buffer, one segment at a time (at most
            // one sealed segment per `update` of at most a segment of plaintext).
            for piece in data.chunks(SEGMENT_SIZE) {
                enc.update(piece, blob.tail().expect("checked above"));
                blob.wrote_tail().await?;
            }
            return Ok(());
        }
        enc.update(data, &mut self.buf);
        if self.blob.is_none() && self.size > self.fs.opts.inline_max as u64 {
            let mut blob = self.fs.blobs.create(&self.content_id).await?;
            if blob.tail().is_some() {
                // What was sealed so far goes first; the rest is sealed into the writer.
                blob.write(std::mem::take(&mut self.buf)).await?;
            }
            self.blob = Some(blob);
        }
        if let Some(blob) = self.blob.as_mut()
            && self.buf.len() >= WRITE_CHUNK
        {
            let chunk = std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(WRITE_CHUNK + SEGMENT_SIZE + TAG_LEN),
            );
            blob.write(chunk).await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<FinishedUpload> {
        self.enc
            .take()
            .expect("the encryptor lives until finish")
            .finish(&mut self.buf)
            .map_err(|_| CoreError::Invalid("an upload's last segment was sealed empty".into()))?;
        let content_id = self.content_id;
        let data_key = self.data_key.duplicate();
        let running = self.running;
        match self.blob.take() {
            None => Ok(FinishedUpload {
                _running: running,
                content_id,
                data_key,
                size: self.size,
                storage: Storage::Inline,
                inline: Some(std::mem::take(&mut self.buf)),
            }),
            Some(mut w) => {
                let rest = std::mem::take(&mut self.buf);
                if let Err(e) = w.write(rest).await {
                    w.abort().await;
                    return Err(e);
                }
                w.finish().await?;
                Ok(FinishedUpload {
                    _running: running,
                    content_id,
                    data_key,
                    size: self.size,
                    storage: Storage::Blob,
                    inline: None,
                })
            }
        }
    }

    /// Drops a partial upload (its temporary blob is removed).
    pub async fn abort(mut self) {
        if let Some(w) = self.blob.take() {
            w.abort().await;
        }
    }
}

enum Source {
    Inline(Vec<u8>),
    Blob(Arc<dyn BlobReader>),
}

/// An open file version, read segment by segment.
pub struct FileReader {
    entry: Entry,
    dec: Decryptor,
    source: Source,
}

impl FileReader {
    /// The version being read.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Plaintext length.
    pub fn len(&self) -> u64 {
        self.dec.plaintext_len()
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of segments.
    pub fn segment_count(&self) -> u64 {
        self.dec.segment_count()
    }

    /// Segments covering plaintext `[start, end)`.
    pub fn segments_for(&self, start: u64, end: u64) -> std::ops::Range<u64> {
        self.dec.segments_for(start, end)
    }

    /// Decrypts segments `[first, end)` (one read of the source), in order, each in a
    /// buffer wiped when dropped.
    pub async fn read_segments(
        &self,
        first: u64,
        end: u64,
    ) -> Result<Vec<zeroize::Zeroizing<Vec<u8>>>> {
        let plain = self.read_plain(first, end).await?;
        Ok(plain
            .segments
            .iter()
            .map(|r| zeroize::Zeroizing::new(plain.buf[r.clone()].to_vec()))
            .collect())
    }

    /// Decrypts segments `[first, end)` in one buffer, without copying: segment `k`'s
    /// plaintext is `buf[segments[k]]`. One read of the source.
    pub async fn read_plain(&self, first: u64, end: u64) -> Result<PlainSegments> {
        if first >= end {
            return Ok(PlainSegments {
                buf: PlainBuf::from_vec(Vec::new()),
                segments: Vec::new(),
            });
        }
        let (off0, _) = self.dec.segment_location(first)?;
        let (offl, lenl) = self.dec.segment_location(end - 1)?;
        let total = (offl + lenl as u64 - off0) as usize;
        let mut buf = match &self.source {
            Source::Inline(b) => PlainBuf::copy_of(
                b.get(off0 as usize..off0 as usize + total)
                    .ok_or(CoreError::Decrypt)?,
            ),
            Source::Blob(b) => {
                // Where the blob lends what it read (large blobs' direct reads), each
                // segment is decrypted from there into the buffer that is sent: no copy.
                let mut opener = Opener::new(&self.dec, first..end, total);
                if b.lend_at(off0, total, &mut |piece| opener.feed(piece))
                    .await?
                {
                    return opener.finish();
                }
                // Nothing lent, or a direct read refused midway: what was decrypted so far
                // is wiped (the opener's buffer is a `PlainBuf`) and the range read again.
                drop(opener);
                PlainBuf::from_vec(b.read_at(off0, total).await?)
            }
        };
        let mut segments = Vec::with_capacity((end - first) as usize);
        let mut pos = 0usize;
        for i in first..end {
            let (_, len) = self.dec.segment_location(i)?;
            let slice = buf.get_mut(pos..pos + len).ok_or(CoreError::Decrypt)?;
            let n = self.dec.open_segment_in_place(i, slice)?;
            segments.push(pos..pos + n);
            pos += len;
        }
        Ok(PlainSegments { buf, segments })
    }
}

/// Decrypts consecutive segments out of place as their ciphertext arrives in pieces of any
/// size (a blob's direct-read windows, see [`BlobReader::lend_at`]), into the layout
/// [`FileReader::read_plain`] gives: each segment's plaintext where its ciphertext would be
/// in one read of them all. A segment split between two pieces is gathered first (once per
/// window, 8 MiB).
struct Opener<'a> {
    dec: &'a Decryptor,
    /// The next segment, and the end of the segments wanted.
    next: u64,
    end: u64,
    /// The ciphertext's length, and the buffer of that length the plaintext goes to
    /// (taken from the pool when the first piece comes, not before).
    total: usize,
    out: Option<PlainBuf>,
    /// Where the next segment's plaintext goes (its ciphertext's offset in the read).
    pos: usize,
    /// The part of the next segment's ciphertext (not secret) received so far, when it
    /// did not come in one piece.
    split: Vec<u8>,
    segments: Vec<std::ops::Range<usize>>,
}

impl<'a> Opener<'a> {
    fn new(dec: &'a Decryptor, segments: std::ops::Range<u64>, total: usize) -> Self {
        Self {
            dec,
            next: segments.start,
            end: segments.end,
            total,
            out: None,
            pos: 0,
            split: Vec::new(),
            segments: Vec::with_capacity((segments.end - segments.start) as usize),
        }
    }

    /// Decrypts every segment `piece` completes.
    fn feed(&mut self, mut piece: &[u8]) -> Result<()> {
        while !piece.is_empty() {
            if self.next >= self.end {
                return Err(CoreError::Decrypt);
            }
            let (_, len) = self.dec.segment_location(self.next)?;
            let sealed = if self.split.is_empty() && piece.len() >= len {
                let (sealed, rest) = piece.split_at(len);
                piece = rest;
                sealed
            } else {
                let take = (len - self.split.len()).min(piece.len());
                self.split.extend_from_slice(&piece[..take]);
                piece = &piece[take..];
                if self.split.len() < len {
                    continue;
                }
                &self.split[..]
            };
            let total = self.total;
            let out = self
                .out
                .get_or_insert_with(|| PlainBuf::from_vec(crate::plainbuf::zeroed(total)));
            let out = out.get_mut(self.pos..).ok_or(CoreError::Decrypt)?;
            let n = self.dec.open_segment_to(self.next, sealed, out)?;
            self.split.clear();
            self.segments.push(self.pos..self.pos + n);
            self.pos += len;
            self.next += 1;
        }
        Ok(())
    }

    /// The plaintext, once every segment has come.
    fn finish(self) -> Result<PlainSegments> {
        match self.out {
            Some(buf) if self.next == self.end && self.split.is_empty() => Ok(PlainSegments {
                buf,
                segments: self.segments,
            }),
            _ => Err(CoreError::Decrypt),
        }
    }
}

/// Decrypted segments sharing one buffer (see [`FileReader::read_plain`]).
pub struct PlainSegments {
    /// The buffer: plaintext of each segment followed by its (now meaningless) tag bytes;
    /// wiped when dropped (and reused, see [`crate::plainbuf`]).
    pub buf: PlainBuf,
    /// Where each segment's plaintext is in `buf`, in order.
    pub segments: Vec<std::ops::Range<usize>>,
}

/// The plaintext offset where segment `idx` starts.
pub fn segment_offset(idx: u64) -> u64 {
    idx * SEGMENT_SIZE as u64
}

/// Poisons the lock `hold` takes, as a panic while holding it does: `hold` runs on a thread
/// that panics with what it returned still held (tests).
#[cfg(test)]
pub(crate) fn poison_with<G>(hold: impl FnOnce() -> G + Send) {
    std::thread::scope(|s| {
        let panicked = s
            .spawn(move || {
                let _held = hold();
                panic!("a panic while holding a lock (test)");
            })
            .join();
        assert!(panicked.is_err());
    });
}

#[cfg(test)]
impl Filesystem {
    /// Poisons the std locks gc and key rotation take of this filesystem whose state stays
    /// whole after a panic: the pins and the keyring (tests).
    pub(crate) fn poison_locks(&self) {
        poison_with(|| self.pins.lock());
        poison_with(|| self.keyring.write());
        assert!(self.pins.is_poisoned() && self.keyring.is_poisoned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A filesystem on a real redb index and local blob store under `dir`, files above
    /// 1 KiB in blobs.
    fn test_fs(dir: &std::path::Path) -> Arc<Filesystem> {
        let index = crate::redb_index::RedbIndex::open(
            &dir.join("index.redb"),
            crate::digest::DigestKey::from_root(&Key32::random(), &[0; 16]),
        )
        .unwrap();
        Arc::new(Filesystem::new(
            "t".into(),
            random_id(),
            Arc::new(index),
            Arc::new(crate::blob::LocalBlobStore::open(&dir.join("blobs")).unwrap()),
            Keyring::generate(),
            FsOptions {
                inline_max: 1024,
                ..Default::default()
            },
        ))
    }

    /// A blob is in its shard directory before its record is committed: a gc that runs in
    /// between, with a grace period of zero, must not take it for an orphan (and no gc may
    /// remove a running upload's partial write). Once the upload is over, its blob is gc's
    /// to judge again.
    #[tokio::test]
    async fn gc_leaves_running_uploads_alone_whatever_its_grace() {
        let t = tempfile::tempdir().unwrap();
        let fs = test_fs(t.path());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let path = EfsPath::parse("/a/b.bin").unwrap();

        // A partial write in tmp/ survives gc(0), and the upload then commits.
        let mut up = fs.begin_upload().await.unwrap();
        up.write(&data).await.unwrap();
        let g = fs.gc(0).await.unwrap();
        assert_eq!(g.partials_removed, 0);
        fs.commit(&path, up, None, Precondition::None)
            .await
            .unwrap();

        // A finished blob, its record not committed yet, survives gc(0).
        let mut up = fs.begin_upload().await.unwrap();
        up.write(&data).await.unwrap();
        let finished = up.finish().await.unwrap();
        let g = fs.gc(0).await.unwrap();
        assert_eq!((g.blobs_removed, g.blobs_kept_young), (0, 0));
        fs.commit_finished(&path, &finished, None, Precondition::None)
            .await
            .map_err(|_| "commit")
            .unwrap();
        drop(finished);
        let r = fs.open(&path).await.unwrap();
        let plain = r.read_plain(0, r.segment_count()).await.unwrap();
        let got: Vec<u8> = plain
            .segments
            .iter()
            .flat_map(|seg| plain.buf[seg.clone()].iter().copied())
            .collect();
        assert!(got == data, "the file reads back");
        assert!(fs.uploads.lock().unwrap().is_empty());

        // An upload dropped after finishing leaves a real orphan, which gc(0) removes.
        let mut up = fs.begin_upload().await.unwrap();
        up.write(&data).await.unwrap();
        drop(up.finish().await.unwrap());
        let g = fs.gc(0).await.unwrap();
        assert_eq!(g.blobs_removed, 1);
        assert!(fs.fsck().await.unwrap().is_clean());
    }

    /// What a caller bounding the open files counts: an upload holds a blob file from its
    /// first byte past the inline size (not at it), and a read holds one for a blob, none
    /// for inline content.
    #[tokio::test]
    async fn an_upload_holds_a_file_from_its_first_byte_past_the_inline_size() {
        let t = tempfile::tempdir().unwrap();
        let fs = test_fs(t.path());
        let tmp_files = || {
            std::fs::read_dir(t.path().join("blobs/tmp"))
                .unwrap()
                .count()
        };
        let mut up = fs.begin_upload().await.unwrap();
        assert!(!up.holds_file_after(0));
        assert!(!up.holds_file_after(1024));
        assert!(up.holds_file_after(1025));
        up.write(&[1; 1000]).await.unwrap();
        assert!(!up.holds_file_after(24));
        assert!(up.holds_file_after(25));
        up.write(&[1; 24]).await.unwrap();
        assert_eq!(tmp_files(), 0, "exactly the inline size: no file yet");
        assert!(up.holds_file_after(1));
        up.write(&[1]).await.unwrap();
        assert_eq!(tmp_files(), 1);
        assert!(up.holds_file_after(0));
        let blob = EfsPath::parse("/blob").unwrap();
        fs.commit(&blob, up, None, Precondition::None)
            .await
            .unwrap();

        let mut up = fs.begin_upload().await.unwrap();
        up.write(&[2; 1024]).await.unwrap();
        let inline = EfsPath::parse("/inline").unwrap();
        fs.commit(&inline, up, None, Precondition::None)
            .await
            .unwrap();
        assert_eq!(fs.files_to_read(&fs.look_up(&blob).await.unwrap()), 1);
        assert_eq!(fs.files_to_read(&fs.look_up(&inline).await.unwrap()), 0);
    }

    #[test]
    fn the_etag_is_the_version_in_lowercase_hex_between_quotes() {
        let mut version = [0u8; 16];
        version[0] = 0xAB;
        version[15] = 0x09;
        let e = Entry {
            name: "f".into(),
            kind: Kind::File,
            size: 0,
            created_ms: 0,
            modified_ms: 0,
            content_type: None,
            version,
        };
        let want = "\"ab000000000000000000000000000009\"";
        assert_eq!(e.etag(), want);
        assert_eq!(&e.etag_bytes()[..], want.as_bytes());
    }

    /// `got` (segments `first..end`) holds exactly their part of `plain`.
    fn assert_plaintext_of_segments(got: &PlainSegments, plain: &[u8], first: u64, end: u64) {
        let text: Vec<u8> = got
            .segments
            .iter()
            .flat_map(|r| got.buf[r.clone()].iter().copied())
            .collect();
        let from = segment_offset(first) as usize;
        let to = (segment_offset(end) as usize).min(plain.len());
        assert!(text == plain[from..to], "segments {first}..{end}");
    }

    /// Out-of-place opening of ciphertext lent in pieces ([`Opener`]) gives what one read
    /// decrypted in place gives, however the pieces cut the segments (whole, cut inside a
    /// segment or its tag, byte by byte, one byte short of a segment), for a run of
    /// segments from the middle and for the last, short one; an altered byte, missing bytes
    /// or bytes beyond the segments are errors.
    #[test]
    fn segments_lent_in_pieces_decrypt_as_one_read_does() {
        let key = Key32::from_bytes([7; 32]);
        let id = [3u8; 16];
        let plain: Vec<u8> = (0..5 * SEGMENT_SIZE + 1234)
            .map(|i| (i % 253) as u8)
            .collect();
        let mut enc = Encryptor::new(&key, id);
        let mut ct = enc.header().to_vec();
        enc.update(&plain, &mut ct);
        enc.finish(&mut ct).unwrap();
        let dec = Decryptor::new(&key, &ct[..HEADER_LEN], ct.len() as u64, &id).unwrap();
        let seg_ct = SEGMENT_SIZE + TAG_LEN;
        for (first, end) in [(0u64, 4u64), (1, 3), (2, 6), (5, 6)] {
            let (off0, _) = dec.segment_location(first).unwrap();
            let (offl, lenl) = dec.segment_location(end - 1).unwrap();
            let read = &ct[off0 as usize..(offl as usize + lenl)];
            // Piece sizes (the rest follows in one piece): each list cuts differently.
            let cuts: Vec<Vec<usize>> = vec![
                vec![read.len()],
                vec![seg_ct - 1, 1],
                vec![10, seg_ct - 20, 40],
                vec![seg_ct - 5, 7],
                vec![lenl - 1],
                vec![1; read.len().min(3 * seg_ct)],
            ];
            for sizes in cuts {
                let mut o = Opener::new(&dec, first..end, read.len());
                let mut at = 0;
                for n in sizes {
                    let n = n.min(read.len() - at);
                    o.feed(&read[at..at + n]).unwrap();
                    at += n;
                }
                o.feed(&read[at..]).unwrap();
                let got = o.finish().unwrap();
                assert_plaintext_of_segments(&got, &plain, first, end);
                // The same ranges as in place: plaintext where its ciphertext was read.
                assert_eq!(got.segments[0].start, 0);
                if got.segments.len() > 1 {
                    assert_eq!(got.segments[1].start, seg_ct);
                }
            }
            // An altered byte, bytes missing, bytes beyond the last segment.
            let mut bad = read.to_vec();
            bad[read.len() / 2] ^= 1;
            let mut o = Opener::new(&dec, first..end, read.len());
            assert!(matches!(o.feed(&bad), Err(CoreError::Decrypt)));
            let mut o = Opener::new(&dec, first..end, read.len());
            o.feed(&read[..read.len() - 1]).unwrap();
            assert!(matches!(o.finish(), Err(CoreError::Decrypt)));
            // Whole segments, but not all of them; and nothing at all.
            if end - first > 1 {
                let mut o = Opener::new(&dec, first..end, read.len());
                o.feed(&read[..seg_ct]).unwrap();
                assert!(matches!(o.finish(), Err(CoreError::Decrypt)));
            }
            let o = Opener::new(&dec, first..end, read.len());
            assert!(matches!(o.finish(), Err(CoreError::Decrypt)));
            let mut o = Opener::new(&dec, first..end, read.len());
            o.feed(read).unwrap();
            assert!(matches!(o.feed(&[0]), Err(CoreError::Decrypt)));
        }
    }

    /// A download whose direct reads the filesystem refuses midway (`EINVAL` from the second
    /// 8 MiB window on, made on demand) still gets the right plaintext from `read_plain`, a
    /// fresh reader for each batch: a batch inside the first window is lent as usual; one
    /// across into the refused window has what it decrypted out of the first discarded and is
    /// read again through the page cache; one inside a refused window is refused at once. The
    /// refusal is checked to have happened (the reader lends nothing afterwards).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_direct_read_refused_midway_still_decrypts_the_right_bytes() {
        use crate::blob::{
            BlobStore, DIRECT_BUF, LocalBlobStore, lends_nothing, write_for_direct_reads,
        };
        let t = tempfile::tempdir().unwrap();
        let window = DIRECT_BUF as u64;
        let store = LocalBlobStore::refusing_direct_reads(t.path(), 4096, window).unwrap();
        let key = Key32::from_bytes([9; 32]);
        let id = [4u8; 16];
        let plain: Vec<u8> = (0..(2 * DIRECT_BUF + 3 * SEGMENT_SIZE + 99))
            .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
            .collect();
        let mut enc = Encryptor::new(&key, id);
        let mut ct = enc.header().to_vec();
        enc.update(&plain, &mut ct);
        enc.finish(&mut ct).unwrap();
        if !write_for_direct_reads(&store, &id, ct.clone()).await {
            eprintln!("skipped: this filesystem takes no direct reads");
            return;
        }
        let dec = || Decryptor::new(&key, &ct[..HEADER_LEN], ct.len() as u64, &id).unwrap();
        let segments = dec().segment_count();
        // The segment holding the refused window's first byte.
        let cut = (window - HEADER_LEN as u64) / (SEGMENT_SIZE + TAG_LEN) as u64;
        for (first, end, refused) in [
            (0, 4, false),
            (cut - 2, cut + 2, true),
            (cut + 1, cut + 5, true),
            (segments - 3, segments, true),
        ] {
            let blob = store.open(&id).await.unwrap();
            let reader = FileReader {
                entry: Entry {
                    name: "f".into(),
                    kind: Kind::File,
                    size: plain.len() as u64,
                    created_ms: 0,
                    modified_ms: 0,
                    content_type: None,
                    version: id,
                },
                dec: dec(),
                source: Source::Blob(blob.clone()),
            };
            let got = reader.read_plain(first, end).await.unwrap();
            assert_plaintext_of_segments(&got, &plain, first, end);
            assert_eq!(
                lends_nothing(&*blob).await,
                refused,
                "segments {first}..{end}: refused or not as planned"
            );
        }
    }

    /// A claimed check holds the filesystem's operations until it has run (the server
    /// claims before it serves, starts once it listens); dropped without being started, it
    /// leaves the filesystem on hold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claimed_check_holds_operations_until_it_has_run() {
        let (_tmp, _dd, fs) = crate::rotation::tests::env();
        // As a filesystem opened (not created) by this process.
        fs.index_checked.lock().unwrap().started = false;
        let claimed = fs.claim_index_check().expect("no check has started");
        assert!(fs.claim_index_check().is_none(), "claimed once");
        assert_eq!(fs.index_trust(), IndexTrust::Checking);
        let waiting = tokio::spawn({
            let fs = fs.clone();
            async move { fs.trusted().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !waiting.is_finished(),
            "an operation waits for the claimed check"
        );
        assert_eq!(claimed.start().await.unwrap(), IndexTrust::Trusted);
        waiting.await.unwrap().unwrap();
        fs.index_checked.lock().unwrap().started = false;
        drop(fs.claim_index_check().unwrap());
        assert_eq!(fs.index_trust(), IndexTrust::Failed);
        assert!(matches!(fs.trusted().await, Err(CoreError::IndexHold)));
    }

    /// A check's verdict counts only while that check is the latest: an operator's
    /// acceptance (or a later check) made while it ran wins over its late verdict.
    #[tokio::test]
    async fn a_late_verdict_does_not_undo_an_acceptance() {
        let (_tmp, _dd, fs) = crate::rotation::tests::env();
        // A created filesystem counts as checked: no check starts.
        assert!(fs.claim_check(false).is_none());
        // A check starts; the operator accepts the index before it ends; it ends Failed.
        let first = fs.claim_check(true).unwrap();
        assert_eq!(fs.index_trust(), IndexTrust::Checking);
        fs.accept_index().await.unwrap();
        fs.publish_verdict(first, IndexTrust::Failed);
        assert_eq!(fs.index_trust(), IndexTrust::Trusted);
        // Of two checks, only the later one's verdict is published.
        let older = fs.claim_check(true).unwrap();
        let newer = fs.claim_check(true).unwrap();
        fs.publish_verdict(older, IndexTrust::Trusted);
        assert_eq!(fs.index_trust(), IndexTrust::Checking);
        // A check that panics (its guard dropped) leaves the filesystem held.
        drop(HoldUnlessDisarmed(&fs, newer));
        assert_eq!(fs.index_trust(), IndexTrust::Failed);
        assert!(matches!(fs.trusted().await, Err(CoreError::IndexHold)));
    }
}
