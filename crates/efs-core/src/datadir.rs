//! The data dir: its layout, its first-start initialisation, and the objects it holds
//! (filesystems, users, system secrets).
//!
//! ```text
//! DATA/                        0700
//!   system/keyparts.json       public facts about the key parts (kinds, salt, check tags)
//!   system/system.redb         users, filesystems, wrapped secrets (all sealed)
//!   system/admin.sock          the running server's admin socket (0600)
//!   system/audit/              the audit log: audit-NNNNNN.log (chained, sealed), HEAD
//!   fs/<random id>/index.redb  one filesystem's index (sealed records, inline content)
//!   fs/<random id>/blobs/      its large files' content, sharded by random id
//! ```

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use crate::audit::{AuditKeys, AuditLog, AuditOptions};
use crate::blob::LocalBlobStore;
use crate::digest::DigestKey;
use crate::error::{CoreError, Result};
use crate::fs::backup::{self, BackupReport, DumpItem};
use crate::fs::reencrypt::{self, ReencryptProgress};
use crate::fs::retire;
use crate::fs::rotation::{self, RotationProgress};
use crate::fs::{Filesystem, FsOptions};
use crate::index::Op;
use crate::keyparts::{self, Argon2Params, KeyPartSpec, KeyPartsFile, StarterKey};
use crate::keyring::Keyring;
use crate::redb_index::{DigestOptions, RedbIndex};
use crate::system::{FsRecord, GrantRecord, SystemDb, SystemTrust, UserRecord};

/// Name of the token-signing key secret.
pub const SECRET_SIGNING_KEY: &str = "token-signing-key";
/// Name of the generated TLS private key secret (PKCS#8 DER).
pub const SECRET_TLS_KEY: &str = "tls-key";
/// Name of the generated TLS certificate (stored sealed too, for integrity).
pub const SECRET_TLS_CERT: &str = "tls-cert";
/// Index metadata key of the wrapped keyring.
pub(crate) const META_KEYRING: &str = "keyring";

/// Options for opening a data dir.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Argon2id parameters for passphrase parts of a new data dir.
    pub argon2: Argon2Params,
    /// Filesystem tunables.
    pub fs: FsOptions,
    /// Audit log tunables.
    pub audit: AuditOptions,
    /// Trust the system database as it is if it does not match its digest (or has none),
    /// instead of refusing to open: `efsctl accept-system`.
    pub accept_system: bool,
    /// Start a new audit log: move `system/audit` aside (to `system/audit-moved-<ms>`, kept)
    /// and forget how far it went, before the log is opened: `efsctl audit new-log`.
    pub new_audit_log: bool,
    /// How long the audit log may go on past the head the system database last recorded of
    /// it (and by more than [`AUDIT_LAG_ENTRIES`] entries) before the system database is
    /// taken for an older copy put back and held until `accept-system`. `None`: 2 minutes
    /// (a crash leaves it about 10 s behind at most).
    pub system_lag: Option<std::time::Duration>,
    /// The rollback witness, a file outside the data dir that keeps how far the system
    /// database went (`--rollback-witness`, [`crate::witness`]): a data dir found behind it
    /// was put back whole from an earlier copy, and is held until `accept-system`.
    pub rollback_witness: Option<PathBuf>,
    /// Record `rollback_witness` in the data dir when it differs from the witness recorded
    /// (efs-server's opens: later opens without the option fall back to what the server was
    /// given). efsctl's opens do not: efsctl may see the file under another path (on the host
    /// of a container), and the server's starts without the option would look there.
    pub record_witness: bool,
}

/// What happened at open: lines for the operator.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// True if the data dir was created now.
    pub initialised: bool,
    /// A key-part file generated for the quick start.
    pub generated_key_part: Option<PathBuf>,
}

/// What an operation on filesystem `name`, whose index could not be opened (`why`), says.
pub fn unopened_text(name: &str, why: &str) -> String {
    format!(
        "filesystem '{name}' is not served: {why}; put its own index file back (or restore its backup under a new name) and start again"
    )
}

/// How a restore's line saying its backup is partial begins (followed by the count).
pub const PARTIAL_BACKUP: &str = "warning: a partial backup: ";

/// How many of the entries a partial backup left out a restore names (then a count).
const LEFT_OUT_NAMED: usize = 100;

/// What [`DataDir::finish_rotations`] or [`DataDir::finish_reencryptions`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Filesystems whose unfinished work ran to completion.
    pub done: Vec<String>,
    /// Filesystems whose unfinished work was left: their index is on hold.
    pub held: Vec<String>,
    /// Filesystems whose unfinished work stopped for want of space (the free-space reserve,
    /// a full disk), with why: the command that asked goes on (it may be the one that frees
    /// space: gc, a delete), the work resumes at the next start or command.
    pub stopped: Vec<(String, String)>,
}

/// An open data dir.
pub struct DataDir {
    root: PathBuf,
    system: SystemDb,
    /// What the open found of the system database's digest (and whether it was accepted
    /// since).
    system_trust: std::sync::Mutex<SystemTrust>,
    /// The generation the rollback witness saw, when it found this data dir behind it:
    /// [`DataDir::accept_system`] moves the digest past it.
    witness_floor: Option<u64>,
    /// The open filesystems by name. This lock and `unopened`'s are taken as they are when
    /// poisoned: each change is one insert or removal, so a panic while one is held leaves
    /// the map whole, and the server's own gc and key rotation (which look filesystems up
    /// here) run again after one of them panicked.
    filesystems: RwLock<HashMap<String, Arc<Filesystem>>>,
    /// Filesystems whose index could not be opened when the data dir was (unreadable, not
    /// a redb file, or holding another filesystem's keyring), with why: not served, while
    /// every other filesystem is. See [`DataDir::unopened`].
    unopened: RwLock<HashMap<String, String>>,
    starter: StarterKey,
    opts: OpenOptions,
    audit_keys: AuditKeys,
    /// Last, so that it is dropped (flushed, anchored) after everything that records.
    audit: AuditLog,
    /// The data dir's lock ([`lock_data_dir`]), released after everything else is closed.
    _lock: std::fs::File,
    /// The direct-read windows every filesystem's blob store takes from (one budget for the
    /// process: see `blob::DIRECT_WINDOWS`).
    windows: Arc<tokio::sync::Semaphore>,
    /// Held shared by a write from its last check of the caller's authority until its
    /// commit ends, and exclusively by a command that takes authority away (revoke, a
    /// deleted user, a new key…): see [`DataDir::authority`].
    authority: Arc<tokio::sync::RwLock<()>>,
    /// One [`DataDir::record_audit_mark`] at a time (a slower one must not write an older
    /// head over a newer one).
    audit_mark: std::sync::Mutex<()>,
    /// Opened with [`OpenOptions::new_audit_log`].
    new_audit_log: bool,
    /// Where that moved the previous log, if there was one.
    moved_audit: Option<PathBuf>,
}

/// Moves the audit log `audit_dir` aside for a new one (if it holds anything), to
/// `system/audit-moved-<unix ms>`: kept in the data dir, as the evidence it is.
fn move_audit_log_aside(root: &Path, audit_dir: &Path) -> Result<Option<PathBuf>> {
    let holds = match std::fs::read_dir(audit_dir) {
        Ok(mut rd) => rd.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    if !holds {
        return Ok(None);
    }
    let to = root
        .join("system")
        .join(format!("audit-moved-{}", crate::audit::now_ms()));
    std::fs::rename(audit_dir, &to)?;
    std::fs::File::open(root.join("system"))?.sync_all()?;
    Ok(Some(to))
}

impl Drop for DataDir {
    /// The audit log made durable and anchored, then its head recorded (so that even a data
    /// dir that efsctl opened for one command knows how far its log went).
    fn drop(&mut self) {
        self.audit.close();
        if let Err(e) = self.record_audit_mark() {
            tracing::warn!(error = %e, "could not record the audit log's head in the system database");
        }
    }
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataDir({})", self.root.display())
    }
}

/// Whether `path`, which need not exist yet, is the data dir `data` or lies inside it:
/// both resolved as far as they exist (symbolic links, `..`), the rest taken as written, so
/// that a data dir about to be created has its inside too. A private key, a key part or a
/// backup there would sit beside the data it opens or copies, in every copy of the data dir.
/// False when either cannot be made absolute.
pub fn is_inside_data_dir(data: &Path, path: &Path) -> bool {
    match (
        resolved_as_far_as_exists(data),
        resolved_as_far_as_exists(path),
    ) {
        (Some(data), Some(path)) => path.starts_with(&data),
        _ => false,
    }
}

/// `p` made absolute, each component resolved while what it names exists (links followed,
/// `..` taken after them, as the kernel does), the rest as written.
fn resolved_as_far_as_exists(p: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(p).ok()?;
    let mut resolved = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => resolved.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(n) => {
                resolved.push(n);
                if let Ok(r) = resolved.canonicalize() {
                    resolved = r;
                }
            }
        }
    }
    Some(resolved)
}

/// Acceptable user and filesystem names: 1–64 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "invalid {what} name: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

/// The user name the audit log records the server's own commands under (its automatic gc
/// and key rotation, client `automatic`): no user may be created under it
/// ([`check_new_user_name`]), so that `efsctl audit show --user efs-server` lists the
/// server's runs only.
pub const SERVER_USER: &str = "efs-server";

/// A new user's name: as [`check_name`], and not the reserved [`SERVER_USER`]. A user of that
/// name made before it was reserved keeps working (only creation checks it).
pub fn check_new_user_name(name: &str) -> Result<()> {
    check_name("user", name)?;
    if name == SERVER_USER {
        return Err(CoreError::Invalid(format!(
            "the user name '{SERVER_USER}' is reserved: the audit log records the server's own \
             gc and key rotation under it; choose another name"
        )));
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new user's first token generation: random below 2^48 (and at least 1). Tokens carry a
/// digest of the user's creation time and generation (`gen`); a user deleted and created again
/// under the same name within one millisecond would otherwise start at the same generation as
/// the deleted one and accept its tokens. Every change adds one, so 2^48 leaves room for them.
fn first_generation() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b[2..]).expect("the system RNG does not fail on Linux");
    u64::from_be_bytes(b).max(1)
}

/// Warns when the data dir lets other accounts in (group or other permission bits): it is
/// made 0700 when created, and its files are written without those bits, but a directory
/// opened up later (`chmod 755`, a copy, a volume's defaults) shows every index, blob and the
/// key-part file's check tags to every local account. Not changed here: the operator may
/// have a reason; the warning says how.
/// The `file:` key parts among `specs` that lie inside the data dir `root` (see
/// [`is_inside_data_dir`]): every copy of the data dir would carry the key that opens it.
pub fn key_parts_inside(root: &Path, specs: &[KeyPartSpec]) -> Vec<PathBuf> {
    specs
        .iter()
        .filter_map(|s| match s {
            KeyPartSpec::File(p) if is_inside_data_dir(root, p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// The refusal of key parts inside the data dir (a new data dir, new parts of a re-keying).
pub(crate) fn refuse_key_parts_inside(root: &Path, specs: &[KeyPartSpec]) -> Result<()> {
    match key_parts_inside(root, specs).first() {
        None => Ok(()),
        Some(p) => Err(CoreError::Invalid(format!(
            "the key part file {} is inside the data dir {}: every copy, snapshot or backup of the \
             data dir would carry the key that opens it; keep it elsewhere (another disk, a \
             secret store); nothing was changed",
            p.display(),
            root.display()
        ))),
    }
}

fn warn_if_open_to_others(root: &Path) {
    if let Ok(m) = std::fs::metadata(root) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the data dir {} is open to other accounts (mode {mode:04o}): its encrypted indexes and blobs show their sizes and changes to them; run chmod 700 {}",
                root.display(),
                root.display()
            );
        }
    }
}

/// Name of the system secret that holds the audit log's root key.
const SECRET_AUDIT_ROOT: &str = "audit-root";

/// The audit log's root key: random, made at the first open, kept sealed in the system DB
/// (re-keying the starter re-seals it unchanged, so the log stays verifiable).
///
/// Made only while `audit_dir` holds no log: a missing key with a log present means the
/// system database was edited or replaced, and a new key would make every entry before
/// unverifiable without a word, so the data dir does not open.
pub(crate) fn audit_root(system: &SystemDb, audit_dir: &Path) -> Result<efs_format::Key32> {
    if let Some(v) = system.secret(SECRET_AUDIT_ROOT)? {
        return efs_format::Key32::from_slice(&v)
            .ok_or(CoreError::Corrupt("audit root key length"));
    }
    // Any file counts (a log file, or the HEAD anchor left after the log files were
    // deleted): only an absent or empty directory means "no log yet".
    let present = match std::fs::read_dir(audit_dir) {
        Ok(mut rd) => rd.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    if present {
        return Err(CoreError::Invalid(format!(
            "the audit log's root key (system secret `audit-root`) is missing from the system database, but {} holds a log: the system database was edited or replaced, and without that key no entry of the log can be verified. Nothing is served. Put back the system database that goes with this log; or, to start a new log on purpose, move {} aside (keep it: its anchor and entries are the evidence)",
            audit_dir.display(),
            audit_dir.display()
        )));
    }
    let root = efs_format::Key32::random();
    system.put_secret(SECRET_AUDIT_ROOT, root.as_bytes())?;
    Ok(root)
}

/// Name of the system secret that holds the head of the audit log that this data dir last
/// recorded, and when: see [`DataDir::record_audit_mark`] and docs/format.md.
const SECRET_AUDIT_MARK: &str = "audit-mark";

/// The audit log's head as the system database records it, and when it was recorded.
#[derive(Debug, Clone, Copy)]
struct AuditMark {
    head: crate::audit::line::Head,
    /// Unix ms.
    at_ms: i64,
}

impl AuditMark {
    /// Entry number (u64 BE), chain MAC (32 bytes), time recorded (i64 BE, Unix ms).
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&self.head.seq.to_be_bytes());
        v.extend_from_slice(&self.head.mac);
        v.extend_from_slice(&self.at_ms.to_be_bytes());
        v
    }
}

/// Records `head` of the audit log in `system`, as of now.
pub(crate) fn write_audit_mark(system: &SystemDb, head: crate::audit::line::Head) -> Result<()> {
    let mark = AuditMark {
        head,
        at_ms: crate::audit::now_ms(),
    };
    system.put_secret(SECRET_AUDIT_MARK, &mark.encode())
}

/// The head of the audit log recorded in `system`, if any: what `AuditLog::open_recorded`
/// takes.
pub(crate) fn recorded_audit_head(system: &SystemDb) -> Result<Option<crate::audit::line::Head>> {
    Ok(recorded_audit_mark(system)?.map(|m| m.head))
}

/// The audit log's head recorded in `system`, if any (entry 0: none, after `audit new-log`).
fn recorded_audit_mark(system: &SystemDb) -> Result<Option<AuditMark>> {
    let Some(v) = system.secret(SECRET_AUDIT_MARK)? else {
        return Ok(None);
    };
    if v.len() != 48 {
        return Err(CoreError::Corrupt("audit mark length"));
    }
    let mark = AuditMark {
        head: crate::audit::line::Head {
            seq: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            mac: v[8..40].try_into().expect("32 bytes"),
        },
        at_ms: i64::from_be_bytes(v[40..].try_into().expect("8 bytes")),
    };
    Ok((mark.head.seq > 0).then_some(mark))
}

/// What an open says when `system` records a head of the audit log in `audit_dir` far behind
/// the log's end (see [`system_older_than_log`]); `None` when it does not (or records none).
pub(crate) fn system_lags_log(
    system: &SystemDb,
    audit_dir: &Path,
    lag_ms: i64,
) -> Result<Option<String>> {
    let Some(m) = recorded_audit_mark(system)? else {
        return Ok(None);
    };
    // A log that cannot be read is not judged here: opening it fails next, and says why.
    let Ok((end, after_ms)) = crate::audit::writer::log_end(audit_dir, Some(m.head.seq)) else {
        return Ok(None);
    };
    Ok(system_older_than_log(m, end, after_ms, lag_ms))
}

/// What an open says when the system database's recorded audit head `mark` is far behind
/// the log's end (`end`, and when it was written): see [`AUDIT_LAG_ENTRIES`].
///
/// The lag is timed from the first entry after the recorded head (`after_ms`; the time of
/// the recording when the log does not hold that entry): the head is recorded only when it
/// moved, so after an idle spell the recording is old while the entries since are new.
fn system_older_than_log(
    mark: AuditMark,
    (end, end_ms): (crate::audit::line::Head, i64),
    after_ms: Option<i64>,
    lag_ms: i64,
) -> Option<String> {
    let behind = end.seq.checked_sub(mark.head.seq)?;
    let since = after_ms.unwrap_or(mark.at_ms);
    (behind > AUDIT_LAG_ENTRIES && end_ms.saturating_sub(since) > lag_ms).then(|| {
        format!(
            "the system database is older than the audit log: it last recorded entry {} of the log, at {}, and the log goes on for {behind} entries, to {} — put back from an older copy? (users, grants and keys removed since would be back; what was done since is in efsctl audit show --since {})",
            mark.head.seq,
            crate::admin::rfc3339_ms(mark.at_ms),
            crate::admin::rfc3339_ms(end_ms),
            crate::admin::rfc3339_ms(mark.at_ms),
        )
    })
}

/// A system database whose recorded audit head is this many entries *and* this long (ms,
/// [`OpenOptions::system_lag`]) behind the audit log's end is older than the log. A running server records the head every
/// 10 s and at its stop, and efsctl at the end of its commands, so a crash leaves it at most
/// about 10 s behind; `rekey-starter` writes a couple of entries without recording.
pub const AUDIT_LAG_ENTRIES: u64 = 20;
/// See [`AUDIT_LAG_ENTRIES`].
pub(crate) const AUDIT_LAG_MS: i64 = 120_000;

/// Name of the system secret that holds the root of filesystem `id`'s index-digest key.
fn digest_mark(id: &[u8; 16]) -> String {
    format!("index-digest/{}", hex::encode(id))
}

/// Name of the system secret that records that filesystem `id`'s index digest is of
/// layout 2 (covers the metadata, the sealed keyring among it): from then on a layout-1
/// digest is not upgraded at open, but reported (see [`DigestOptions`]). Its value is
/// [`LAYOUT_MARK`].
pub(crate) fn layout_mark(id: &[u8; 16]) -> String {
    format!("index-digest-layout/{}", hex::encode(id))
}

/// The value of [`layout_mark`]: the digest layout recorded.
const LAYOUT_MARK: u8 = 2;

/// Name of the system secret that holds the high-water mark of filesystem `id`'s index
/// digest generation (u64 BE): the highest generation the data dir saw the index commit
/// once it trusted it. An index whose digest holds at a lower generation is an earlier copy
/// of the whole index put back (its digest included), which the digest alone cannot show;
/// the system database's own digest covers the row. Never ahead of what the index has
/// committed, so a crash cannot make it one.
pub(crate) fn generation_mark(id: &[u8; 16]) -> String {
    format!("index-generation/{}", hex::encode(id))
}

/// How often a running server records the generations of its indexes that moved
/// ([`DataDir::record_index_generations`]): a whole index put back to a state younger
/// than this is not seen. Not per commit: that would add a system-database commit (an
/// fsync) to every write.
pub const GENERATION_RECORD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Filesystem `id`'s recorded mark ([`generation_mark`]), `None` if there is none yet (a
/// data dir from before marks: the next record writes it).
fn stored_generation_mark(system: &SystemDb, id: &[u8; 16]) -> Result<Option<u64>> {
    let Some(v) = system.secret(&generation_mark(id))? else {
        return Ok(None);
    };
    let b: [u8; 8] = v
        .as_slice()
        .try_into()
        .map_err(|_| CoreError::Corrupt("index generation mark length"))?;
    Ok(Some(u64::from_be_bytes(b)))
}

/// The root of filesystem `id`'s index-digest key as `system` keeps it (see
/// [`DigestKey::from_root`]), if it does.
pub(crate) fn stored_digest_root(
    system: &SystemDb,
    id: &[u8; 16],
) -> Result<Option<efs_format::Key32>> {
    let Some(v) = system.secret(&digest_mark(id))? else {
        return Ok(None);
    };
    efs_format::Key32::from_slice(&v)
        .map(Some)
        .ok_or(CoreError::Corrupt("index digest key length"))
}

/// Warns about every directory under `fs/` that names no registered filesystem: what a
/// `create-fs` or a restore leaves when it was cut short, or when its registration failed
/// with an unknown outcome. It is neither served nor removed here: it may hold a restore's
/// data, and only the operator knows (docs/operations.md).
fn warn_unregistered_dirs(root: &Path, registered: &[FsRecord]) {
    let Ok(rd) = std::fs::read_dir(root.join("fs")) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if registered.iter().any(|r| hex::encode(r.id) == name) {
            continue;
        }
        tracing::warn!(
            dir = %Path::new("fs").join(&*name).display(),
            "a directory no filesystem is registered under (left by a create-fs or a restore that was cut short, or whose registration failed with an unknown outcome): it is not served; if efsctl list-fs shows no filesystem with this id, move it out of the data dir, and delete it once the server serves as before (docs/operations.md, \"A filesystem directory nothing lists\")"
        );
    }
}

/// Where the quick start puts its generated key part: beside the data dir, never in it.
pub fn default_key_part_path(data: &Path) -> PathBuf {
    let abs = std::path::absolute(data).unwrap_or_else(|_| data.to_path_buf());
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "efs-data".into());
    abs.with_file_name(format!("{name}.keypart"))
}

/// The lock file of a data dir, in `system/`.
const LOCK_FILE: &str = "lock";

/// Takes the data dir's lock: one process at a time opens, repairs or re-keys a data dir.
/// An exclusive `flock(2)` on `system/lock`, held as long as the returned file is open (the
/// kernel drops it when the process ends, however it ends). Taken before anything is read
/// for recovery: a server starting while `efsctl rekey-starter` stages its files would
/// otherwise discard them as an interrupted re-keying, under the re-keying's feet.
pub(crate) fn lock_data_dir(root: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = root.join("system").join(LOCK_FILE);
    let cannot =
        |e: std::io::Error| CoreError::Invalid(format!("cannot open {}: {e}", path.display()));
    // Read-only is enough for flock(2). Made when missing (a data dir from before the lock),
    // owned like system/ itself: root running efsctl on a stopped server's data dir must not
    // leave a file the server's account cannot open.
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(cannot)?;
            if rustix::process::geteuid().is_root() {
                let sys = std::fs::metadata(root.join("system")).map_err(cannot)?;
                rustix::fs::fchown(
                    &f,
                    Some(rustix::fs::Uid::from_raw(sys.uid())),
                    Some(rustix::fs::Gid::from_raw(sys.gid())),
                )
                .map_err(|e| cannot(e.into()))?;
            }
            f
        }
        Err(e) => return Err(cannot(e)),
    };
    // (A lock let go of within a moment, by a process that has just ended, is waited for.)
    let locked = crate::redb_index::retry_while_locked(|| match f.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Some(e)),
    });
    match locked {
        Ok(()) => Ok(f),
        Err(None) => Err(CoreError::Invalid(format!(
            "the data dir {} is in use by another process (a running efs-server, or an efsctl \
             command working on it without a server): let it finish or stop it first",
            root.display()
        ))),
        Err(Some(e)) => Err(CoreError::Invalid(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

fn is_new(root: &Path) -> Result<bool> {
    match std::fs::read_dir(root) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(CoreError::Invalid(format!(
            "cannot read the data dir {}: {e}",
            root.display()
        ))),
    }
}

/// Writes the small file `path` whole and durably: `data` into a temporary file of this
/// call's own beside it (`.<name>.<random>.tmp`, created new: never an existing file or a
/// link someone put there, nor another writer's), fsynced, renamed over `path`, and `path`'s
/// directory fsynced. A crash leaves the old contents or the new ones, never a part (and at
/// most a stray temporary file); a failure removes the temporary file. `path` has a parent.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).expect("the system RNG does not fail on Linux");
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        hex::encode(nonce)
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl DataDir {
    /// Opens the data dir at `root`, initialising it if it is missing or empty.
    /// On an existing dir, a wrong or missing part is refused before anything is written.
    pub fn open(
        root: &Path,
        specs: &[KeyPartSpec],
        opts: OpenOptions,
        prompt: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Result<(Self, OpenReport)> {
        let mut report = OpenReport::default();
        let lock;
        let keyparts_path = root.join("system").join("keyparts.json");
        let starter = if is_new(root)? {
            // A witness of another data dir would hold this new one as put back (its
            // generation starts again): refused before anything is created.
            if let Some(w) = &opts.rollback_witness {
                crate::witness::Witness::refuse_for_new_data_dir(w, root)?;
            }
            // A key part in the data dir to be made (its file would have to be made there
            // first, which makes the directory no new one, so: a path to come): refused
            // before anything is created.
            refuse_key_parts_inside(root, specs)?;
            // Created with its parents, as `mkdir -p` would: the generated key part goes
            // beside it, so its parent must exist too.
            crate::blob::create_dir_all_synced(root).map_err(|e| {
                CoreError::Invalid(format!(
                    "cannot create the data dir {}: {e}",
                    root.display()
                ))
            })?;
            let mut specs = specs.to_vec();
            let mut generated = None;
            if specs.is_empty() {
                let p = default_key_part_path(root);
                if !p.exists() {
                    keyparts::generate_part_file(&p).map_err(|e| {
                        CoreError::Invalid(format!(
                            "cannot write the new key part {}: {e}",
                            p.display()
                        ))
                    })?;
                }
                specs.push(KeyPartSpec::File(p.clone()));
                generated = Some(p);
            }
            let (starter, file) =
                keyparts::create(&specs, generated.as_deref(), opts.argon2, &|_| {
                    prompt("EFS passphrase for the new data dir: ")
                })?;
            // Each part read a second time and checked against what was just made: a
            // mistyped passphrase stops here, not at the next start, once data is stored.
            keyparts::open(&file, &specs, &|_| prompt("EFS passphrase, again: ")).map_err(|e| {
                CoreError::Invalid(format!(
                    "the key parts did not read the same twice ({}); nothing was stored",
                    keyparts::not_read_the_same(&e)
                ))
            })?;
            crate::blob::create_dir_all_synced(&root.join("system"))?;
            crate::blob::create_dir_all_synced(&root.join("fs"))?;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
            lock = lock_data_dir(root)?;
            let system = SystemDb::create(&root.join("system").join("system.redb"), &starter)?;
            let signing = efs_format::Key32::random();
            system.put_secret(SECRET_SIGNING_KEY, signing.as_bytes())?;
            drop(system);
            // keyparts.json last: a data dir without it is an unfinished initialisation.
            let json = serde_json::to_vec_pretty(&file).expect("serialising JSON cannot fail");
            write_atomic(&keyparts_path, &json)?;
            report.initialised = true;
            report.generated_key_part = generated;
            starter
        } else {
            match std::fs::metadata(&keyparts_path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(CoreError::Invalid(format!(
                        "{} is not empty but is not an EFS data dir (no system/keyparts.json); \
                         if an initialisation was interrupted, remove the directory and start again",
                        root.display()
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            warn_if_open_to_others(root);
            // Refused for a new data dir and for a re-keying's new parts; one already there
            // (put there by hand) is warned about, so that the data dir still opens for the
            // re-keying that moves it.
            for p in key_parts_inside(root, specs) {
                tracing::warn!(
                    "the key part file {} is inside the data dir {}: every copy of the data dir carries the key that opens it; move it out with efsctl rekey-starter --new-key-part file:ELSEWHERE",
                    p.display(),
                    root.display()
                );
            }
            // An EFS data dir (it has system/): locked before a passphrase is asked for and
            // before keyparts.json is read (a re-keying may be switching it).
            lock = lock_data_dir(root)?;
            let text = std::fs::read(&keyparts_path)?;
            let file: KeyPartsFile = serde_json::from_slice(&text).map_err(|e| {
                CoreError::Key(keyparts::KeyError::Corrupt(format!(
                    "system/keyparts.json is malformed: {e}"
                )))
            })?;
            let starter = keyparts::open(&file, specs, prompt)?;
            // An interrupted re-keying of the starter key: finish or discard it first (under
            // the lock: not one that is running).
            if let Some(line) = futures_block(crate::rekey::recover(root, &starter))? {
                tracing::warn!("{line}");
            }
            // (recover never changes keyparts.json: the parts that opened it are current.)
            starter
        };
        let (system, system_trust) = SystemDb::open_checked(
            &root.join("system").join("system.redb"),
            &starter,
            opts.accept_system,
        )?;
        if let SystemTrust::Pending { found } = &system_trust {
            tracing::warn!("{found}: opened to be accepted (efsctl accept-system)");
        }
        // The rollback witness before anything is written to the database: a write would
        // move its generation on towards the witness's and could hide a rollback.
        let mut witness = None;
        let mut witness_floor = None;
        let mut system_trust = system_trust;
        // The witness given, or else the one the database records (an open without the
        // option would move the generation on unseen).
        let recorded_witness = system.secret(crate::witness::SECRET_WITNESS)?;
        let chosen = crate::witness::choose(
            opts.rollback_witness.as_deref(),
            recorded_witness.as_deref().map(|v| v.as_slice()),
            root,
        )?;
        if let Some((path, from_record)) = &chosen {
            if *from_record {
                tracing::info!(
                    "rollback witness {}: recorded in the data dir (opened without --rollback-witness)",
                    path.display()
                );
            }
            let (w, seen) = crate::witness::Witness::open(path, root, opts.record_witness)
                .map_err(|e| {
                    if *from_record {
                        CoreError::Invalid(format!(
                            "{e} (the witness recorded in this data dir: give --rollback-witness PATH where this machine sees it)"
                        ))
                    } else {
                        e
                    }
                })?;
            if let Some(found) = system.judge_witness(w.path(), seen.as_ref())? {
                if !opts.accept_system {
                    return Err(CoreError::SystemHold(found));
                }
                tracing::warn!("{found}: opened to be accepted (efsctl accept-system)");
                system_trust = match system_trust {
                    SystemTrust::Pending { found: first } => SystemTrust::Pending {
                        found: format!("{first}; and {found}"),
                    },
                    _ => SystemTrust::Pending { found },
                };
            }
            // Whatever holds the database (the witness, or its digest: a rollback may be
            // behind that too), its acceptance moves the generation past the witness's.
            if matches!(system_trust, SystemTrust::Pending { .. }) {
                witness_floor = seen.map(|s| s.generation);
            }
            witness = Some(Arc::new(w));
        } else if recorded_witness.is_some() {
            // Recorded by an EFS before witnesses were recorded with their file.
            tracing::warn!(
                "this data dir has a rollback witness, but was opened without it (--rollback-witness, EFS_ROLLBACK_WITNESS): a data dir put back whole is not caught, and this run's writes move its generation on unseen"
            );
        }
        // Under the system database's lock, no restore runs: a copy of an index dump left
        // by one that was interrupted (a crash) is removed.
        backup::remove_dump_copies(&root.join("system"));
        // After the system database: its lock keeps a second process, and so a second
        // audit writer, out of this data dir.
        let audit_dir = root.join(crate::audit::AUDIT_DIR);
        let audit_keys = AuditKeys::derive(&audit_root(&system, &audit_dir)?);
        let mut recorded = recorded_audit_mark(&system)?;
        // The system database put back from an older copy (its digest holds for what it was
        // then: a user, a grant or a key removed since is back) shows as a recorded head far
        // behind the log, which lives beside it but is not put back with it. Looked at before
        // anything else, so that a new audit log cannot hide it either.
        let lag_ms = opts.system_lag.map_or(AUDIT_LAG_MS, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        });
        let older = system_lags_log(&system, &audit_dir, lag_ms)?;
        if let (Some(found), false) = (&older, opts.accept_system) {
            return Err(CoreError::SystemHold(found.clone()));
        }
        let mut moved_audit = None;
        let new_audit_log = opts.new_audit_log;
        if new_audit_log {
            // The old log's head is no longer this data dir's: the new log starts at 0. Forgot
            // first (a crash before the move leaves the mark merely unset until the next
            // record; the other way round, an empty log behind the mark, reads as deleted).
            system.put_secret(SECRET_AUDIT_MARK, &[0; 48])?;
            moved_audit = move_audit_log_aside(root, &audit_dir)?;
            recorded = None;
        }
        let audit = AuditLog::open_recorded(
            &audit_dir,
            &audit_keys,
            opts.audit.clone(),
            recorded.map(|m| m.head),
        )
        .map_err(|e| {
            CoreError::Invalid(format!(
                "cannot open the audit log {}: {e} (nothing is served without it)",
                audit_dir.display()
            ))
        })?;
        // The system database put back from an older copy (its digest holds for what it was
        // then: a user, a grant or a key removed since is back) shows as a recorded head far
        // behind the log, which lives beside it but is not put back with it.
        if let Some(found) = older
            && !matches!(system_trust, SystemTrust::Pending { .. })
        {
            system_trust = SystemTrust::Pending { found };
        }
        if let Some(w) = witness {
            // Brought up to the database now only if nothing holds it and this open may
            // write (an open to look at a held database, or to accept one, writes nothing).
            let trusted =
                !opts.accept_system && !matches!(system_trust, SystemTrust::Pending { .. });
            system.follow_witness(w, trusted)?;
        }
        let dd = Self {
            root: root.to_path_buf(),
            system,
            system_trust: std::sync::Mutex::new(system_trust),
            witness_floor,
            filesystems: RwLock::new(HashMap::new()),
            unopened: RwLock::new(HashMap::new()),
            starter,
            opts,
            audit_keys,
            audit,
            _lock: lock,
            windows: crate::blob::window_budget(),
            authority: Arc::new(tokio::sync::RwLock::new(())),
            audit_mark: std::sync::Mutex::new(()),
            new_audit_log,
            moved_audit,
        };
        let records = dd.system.filesystems()?;
        warn_unregistered_dirs(&dd.root, &records);
        for rec in &records {
            let fs = match dd.open_fs(rec) {
                Ok(fs) => Arc::new(fs),
                Err(e) => {
                    // One filesystem's index replaced or damaged while the data dir was
                    // closed does not take the others down: it alone is not served.
                    let why = format!(
                        "its index {} could not be opened: {e}",
                        Path::new("fs")
                            .join(hex::encode(rec.id))
                            .join("index.redb")
                            .display()
                    );
                    tracing::error!(
                        fs = rec.name,
                        "filesystem not served: {why}; its requests answer 503 integrity_hold until its own index is put back (or its backup restored under a new name) and the server restarted"
                    );
                    dd.unopened
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(rec.name.clone(), why);
                    continue;
                }
            };
            if futures_block(reencrypt::pending(&fs))? {
                // Renames must keep old terms before any request is served.
                reencrypt::mark_running(&fs);
                if reencrypt::spawn(fs.clone()) {
                    tracing::info!(fs = rec.name, "resuming an unfinished re-encryption");
                }
            }
            if futures_block(rotation::pending(&fs))? {
                // An interrupted key rotation: resume it in the background (efsctl, with
                // no runtime, finishes it in the foreground: DataDir::finish_rotations).
                if rotation::spawn(fs.clone()) {
                    tracing::info!(fs = rec.name, "resuming an unfinished key rotation");
                }
            }
            dd.filesystems
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rec.name.clone(), fs);
        }
        Ok((dd, report))
    }

    /// The data dir's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lock that orders writes and the commands taking authority away, for a server. A
    /// write takes it shared before it checks its caller for the last time and keeps it until
    /// its commit has ended (landed or not); a change of users (`revoke`, `delete-user`,
    /// `grant`, `replace-key`, `bind-cert`) takes it exclusively until the server has loaded
    /// the change. So once such a command has answered, no write checked before it can still
    /// land: each one either landed before, or checks again after it and is refused. A
    /// command waits for the commits under way (milliseconds; a large upload's last flush)
    /// and writes wait behind it.
    pub fn authority(&self) -> &Arc<tokio::sync::RwLock<()>> {
        &self.authority
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Where [`OpenOptions::new_audit_log`] moved the previous audit log, if there was one.
    pub fn moved_audit_log(&self) -> Option<&Path> {
        self.moved_audit.as_deref()
    }

    /// Whether this open started a new audit log ([`OpenOptions::new_audit_log`]).
    pub fn audit_log_restarted(&self) -> bool {
        self.new_audit_log
    }

    /// Records in the system database how far the audit log went: the last head its writer
    /// anchored (durable), if it is further than the one recorded. Every later open and
    /// `audit verify` compare the log with it, so that a log deleted, or put back from an
    /// older copy with its own anchor, is seen (as long as the system database is not put
    /// back with it). The server calls it every few seconds and at its stop; dropping the
    /// data dir calls it too. Returns whether it wrote a new head.
    pub fn record_audit_mark(&self) -> Result<bool> {
        // The trust looked at before the mark's lock is taken, as accept_system takes them.
        if matches!(self.system_trust(), SystemTrust::Pending { .. }) {
            // Nothing is written to a system database opened to be accepted, until it is.
            return Ok(false);
        }
        let _one = self.audit_mark.lock().unwrap_or_else(|e| e.into_inner());
        let Some(head) = self.audit.anchored() else {
            return Ok(false);
        };
        if recorded_audit_mark(&self.system)?.is_some_and(|r| r.head.seq >= head.seq) {
            return Ok(false);
        }
        self.store_audit_mark(head)?;
        Ok(true)
    }

    fn store_audit_mark(&self, head: crate::audit::line::Head) -> Result<()> {
        write_audit_mark(&self.system, head)
    }

    /// Checks the whole audit log (see [`crate::audit::verify`]), and that it reaches the
    /// head this data dir recorded of it ([`DataDir::record_audit_mark`]).
    pub fn audit_verify(
        &self,
        expect_head: Option<(u64, &str)>,
    ) -> Result<crate::audit::VerifyReport> {
        Ok(crate::audit::read::verify_recorded(
            self.audit.dir(),
            &self.audit_keys,
            expect_head,
            recorded_audit_mark(&self.system)?.map(|m| m.head),
        )?)
    }

    /// The audit entries matching `filter` (see [`crate::audit::show`]).
    pub fn audit_show(&self, filter: &crate::audit::Filter) -> Result<crate::audit::ShowReport> {
        self.audit_show_last(filter, usize::MAX)
    }

    /// The newest `limit` audit entries matching `filter` (see [`crate::audit::show_last`]).
    pub fn audit_show_last(
        &self,
        filter: &crate::audit::Filter,
        limit: usize,
    ) -> Result<crate::audit::ShowReport> {
        Ok(crate::audit::show_last(
            self.audit.dir(),
            &self.audit_keys,
            filter,
            limit,
        )?)
    }

    /// Path of the admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        admin_socket_path(&self.root)
    }

    pub(crate) fn fs_dir(&self, id: &[u8; 16]) -> PathBuf {
        self.root.join("fs").join(hex::encode(id))
    }

    fn open_fs(&self, rec: &FsRecord) -> Result<Filesystem> {
        // An existing index is never given a new digest: a digest (or its key) removed is
        // reported, not silently rebuilt over records put back meanwhile; an index without
        // a digest or a key, even an emptied one, is held until fsck --accept-index (see
        // open_index, which computes a digest only when `creating`).
        // A retire-terms stopped before its switch left its staged copy: the index is the
        // old one, whole.
        let dir = self.fs_dir(&rec.id);
        if crate::retire::has_staged(&dir) {
            // Its switch entry may be in the audit log (a crash between it and the rename):
            // the log says that the retirement did not happen, durably, before the staged
            // file goes; a log that does not take it keeps the file, for the next open to say
            // it (the index beside it is the old one, whole, and is served meanwhile).
            match self
                .audit
                .submit_durable(retire::discarded_entry(&rec.name))
            {
                Ok(()) => {
                    if let Some(line) = crate::retire::discard_staged(&dir, &rec.name)? {
                        tracing::warn!(fs = rec.name, "{line}");
                    }
                }
                Err(e) => tracing::warn!(
                    fs = rec.name,
                    "an interrupted retire-terms of '{}' left its staged index, and the audit log did not take the entry saying it is discarded ({e}): kept until an open can say so; no term was retired (efsctl status --fs {} shows the terms)",
                    rec.name,
                    rec.name
                ),
            }
        }
        let index = self.open_index(&rec.id, false)?;
        self.assemble_fs(rec, index)
    }

    /// Creates a new filesystem's directory, its index and its blob store, every new
    /// directory entry (`fs/<id>` in `fs/`, the index file and `blobs/` in `fs/<id>`)
    /// made durable before anything refers to them.
    fn create_fs_dir(&self, id: &[u8; 16]) -> Result<(RedbIndex, LocalBlobStore)> {
        let dir = self.fs_dir(id);
        crate::blob::create_dir_all_synced(&dir)?;
        let index = self.open_index(id, true)?;
        let blobs = LocalBlobStore::open(&dir.join("blobs"))?.sharing_windows(self.windows.clone());
        crate::blob::sync_dir(&dir)?;
        Ok((index, blobs))
    }

    /// Opens (or creates) filesystem `id`'s index with its digest key and the configured
    /// page cache. A digest key that already existed means the index has a digest: a digest
    /// missing from the file is then reported, not computed (see [`RedbIndex::open_with`]).
    ///
    /// A missing key is made now, but a digest is computed only for an index being created
    /// (`creating`). An existing index without a key (the key was deleted together with the
    /// digest, to have a new digest made over records edited by hand, or over an emptied
    /// index; or a filesystem from before digests) gets none: the filesystem is held until
    /// an operator accepts the index (`efsctl fsck --accept-index`).
    fn open_index(&self, id: &[u8; 16], creating: bool) -> Result<RedbIndex> {
        let path = self.fs_dir(id).join("index.redb");
        let (key, had_digest) = self.digest_key(id)?;
        if !had_digest && !creating {
            tracing::error!(
                fs_id = %hex::encode(id),
                "the key of this filesystem's index digest is missing from the system database (the system database was edited or replaced, or the filesystem is from before digests): no digest is made over the index as it is; the filesystem is held until an operator runs efsctl fsck (and, once satisfied, efsctl fsck --accept-index)"
            );
        }
        // A layout-1 digest is upgraded until the upgrade is recorded here (a new index is
        // recorded at once): once it is, a layout-1 digest was put back from before it.
        let mark = layout_mark(id);
        let recorded = self.system.secret(&mark)?.is_some();
        let opts = DigestOptions {
            compute_missing: !had_digest && creating,
            upgrade_layout_1: !recorded,
        };
        let index = RedbIndex::open_with_cache(&path, key, opts, self.opts.fs.index_cache)?;
        if !recorded {
            self.system.put_secret(&mark, &[LAYOUT_MARK])?;
        }
        Ok(index)
    }

    /// The key of filesystem `id`'s index digest, and whether it existed. Its root is a
    /// random 32-byte key kept as a sealed system secret (`index-digest/<fs id>`): sealed
    /// under the starter key like every secret, and carried over unchanged when
    /// `rekey-starter` moves the data dir to new key parts. Created on first use.
    fn digest_key(&self, id: &[u8; 16]) -> Result<(DigestKey, bool)> {
        if let Some(root) = stored_digest_root(&self.system, id)? {
            return Ok((DigestKey::from_root(&root, id), true));
        }
        let root = efs_format::Key32::random();
        self.system.put_secret(&digest_mark(id), root.as_bytes())?;
        Ok((DigestKey::from_root(&root, id), false))
    }

    fn assemble_fs(&self, rec: &FsRecord, index: RedbIndex) -> Result<Filesystem> {
        let dir = self.fs_dir(&rec.id);
        let sealed = futures_block(index_meta(&index, META_KEYRING))?
            .ok_or(CoreError::Corrupt("filesystem without keyring"))?;
        let keyring = Keyring::open(&self.starter, &rec.id, &sealed)?;
        let seals = match futures_block(index_meta(&index, crate::fs::META_SEALS))? {
            Some(v) => match crate::fs::decode_seal_counts(&v) {
                Ok(c) => Some(c),
                Err(_) => {
                    tracing::warn!(
                        fs = %rec.name,
                        "the stored counts of records sealed per key term are damaged: counting the records the index holds instead"
                    );
                    None
                }
            },
            None => None,
        };
        let seals = match seals {
            Some(c) => c,
            None => {
                // A new filesystem, or one from before the counts: start from the records the
                // index holds now (a lower bound: records replaced or deleted before are not
                // counted), and store them.
                tracing::info!(fs = %rec.name, "counting the records sealed per key term (once)");
                let c = futures_block(count_sealed_records(&index))?;
                futures_block(commit(
                    &index,
                    crate::index::Batch {
                        ops: vec![Op::PutMeta(
                            crate::fs::META_SEALS.into(),
                            crate::fs::encode_seal_counts(&c),
                        )],
                        ..Default::default()
                    },
                ))?;
                c
            }
        };
        let blobs = LocalBlobStore::open(&dir.join("blobs"))?.sharing_windows(self.windows.clone());
        let fs = Filesystem::new(
            rec.name.clone(),
            rec.id,
            Arc::new(index),
            Arc::new(blobs),
            keyring,
            self.opts.fs.clone(),
        );
        fs.set_seal_counts(seals);
        *fs.generation_mark_slot() = stored_generation_mark(&self.system, &rec.id)?;
        Ok(fs)
    }

    /// Records `generation` as filesystem `fs`'s mark ([`generation_mark`]): only above
    /// the mark if `only_up` (what the index committed since), exactly otherwise (an
    /// operator accepted the index at that generation). Returns whether it wrote.
    fn store_generation_mark(
        &self,
        fs: &Filesystem,
        generation: u64,
        only_up: bool,
    ) -> Result<bool> {
        // Held while the row is written: the row and the filesystem's copy stay the same.
        let mut mark = fs.generation_mark_slot();
        let skip = match *mark {
            Some(m) if only_up => generation <= m,
            Some(m) => generation == m,
            None => false,
        };
        if skip {
            return Ok(false);
        }
        self.system
            .put_secret(&generation_mark(fs.id()), &generation.to_be_bytes())?;
        *mark = Some(generation);
        Ok(true)
    }

    /// Records, for every filesystem whose index this process checked (or created, or
    /// accepted) and trusts, the digest generation the index has committed, if above its
    /// mark: a server every [`GENERATION_RECORD_INTERVAL`] and at a clean stop, efsctl at the
    /// end of a command run on the data dir. One system-database write per filesystem whose
    /// generation moved, none otherwise. Tries every filesystem; returns the first error.
    pub async fn record_index_generations(&self) -> Result<()> {
        let (pending, read) = self.committed_generations().await;
        let stored = self.store_generations(&pending);
        read.and(stored)
    }

    /// The first half of [`DataDir::record_index_generations`], without a write: every
    /// trusted index's committed generation (those that could be read), and the first error
    /// of those that could not. A server then stores them on a blocking thread
    /// ([`DataDir::store_generations`]), since each write is a durable system-database commit.
    pub async fn committed_generations(&self) -> (Vec<(Arc<Filesystem>, u64)>, Result<()>) {
        let mut pending = Vec::new();
        let mut first = Ok(());
        if matches!(self.system_trust(), SystemTrust::Pending { .. }) {
            // Nothing is written to a system database opened to be accepted, until it is.
            return (pending, first);
        }
        for fs in self.open_filesystems() {
            if !fs.index_vouched() {
                continue;
            }
            match fs.committed_generation().await {
                Ok(Some(g)) => pending.push((fs, g)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(fs = fs.name(), error = %e, "could not record the index's digest generation in the system database");
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        (pending, first)
    }

    /// The second half of [`DataDir::record_index_generations`]: each generation stored as its
    /// filesystem's mark when above it. Blocking (a durable system-database commit per
    /// filesystem whose generation moved). Tries every one; returns the first error.
    pub fn store_generations(&self, pending: &[(Arc<Filesystem>, u64)]) -> Result<()> {
        let mut first = Ok(());
        for (fs, g) in pending {
            if let Err(e) = self.store_generation_mark(fs, *g, true) {
                tracing::warn!(fs = fs.name(), error = %e, "could not record the index's digest generation in the system database");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// An operator's decision to trust filesystem `name`'s index as it is now
    /// ([`Filesystem::accept_index`]), its generation then recorded as the mark, also when
    /// that is below the mark (an earlier copy of the index put back and accepted: its
    /// generation goes on from its own).
    pub async fn accept_index(&self, name: &str) -> Result<crate::digest::DigestCheck> {
        let fs = self.require_open_fs(name)?;
        let check = fs.accept_index().await?;
        if let crate::digest::DigestCheck::Holds { generation, .. } = &check {
            self.store_generation_mark(&fs, *generation, false)
                .map_err(|e| {
                    CoreError::Invalid(format!(
                        "the index of '{name}' was accepted, but its generation could not be recorded in the system database ({e}): the next start would hold it again; run efsctl fsck --fs {name} --accept-index again"
                    ))
                })?;
        }
        Ok(check)
    }

    /// Removes what a creation or a restore of filesystem `id` made before it failed, and
    /// certainly before it was registered: its directory and the key of its index digest (made with
    /// the index). Logged, not returned, when it cannot: the caller's error is the one to
    /// report.
    fn discard_new_fs(&self, id: &[u8; 16]) {
        let dir = self.fs_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "a failed creation's or restore's directory could not be removed: remove it by hand"
            );
        }
        if let Err(e) = self.system.delete_secret(&digest_mark(id)) {
            tracing::warn!(
                error = %e,
                "a failed creation's or restore's index digest key could not be removed (32 unused bytes in the system database)"
            );
        }
        if let Err(e) = self.system.delete_secret(&layout_mark(id)) {
            tracing::warn!(
                error = %e,
                "a failed creation's or restore's index digest layout mark could not be removed (1 unused byte in the system database)"
            );
        }
        // (No generation mark to remove: one is recorded only for a registered filesystem.)
    }

    /// Registers a filesystem just created or restored, once `opened` it; if opening
    /// failed, or registering certainly did not happen, removes what was made for it
    /// ([`DataDir::discard_new_fs`]).
    ///
    /// A commit of the system database that failed has an unknown outcome: redb writes the
    /// new header before its fsync and takes it as current only after the fsync succeeded,
    /// so after a failed fsync the row may be on disk while reading it back here says it is
    /// not. The directory and its digest key are then kept: a registered filesystem whose
    /// directory is gone would be lost (a restore's data with it), while a directory that
    /// nothing registers only takes room, and the next open names it (see
    /// docs/operations.md, "A filesystem directory nothing lists").
    fn register_new_fs(&self, rec: &FsRecord, opened: Result<Filesystem>) -> Result<Filesystem> {
        let fs = opened.inspect_err(|_| self.discard_new_fs(&rec.id))?;
        let Err(failed) = self.system.put_filesystem(rec) else {
            return Ok(fs);
        };
        // Closed before its directory may go.
        drop(fs);
        let e = failed.error;
        if !failed.may_have_landed {
            self.discard_new_fs(&rec.id);
            return Err(e);
        }
        let id = hex::encode(rec.id);
        let name = &rec.name;
        Err(CoreError::Invalid(format!(
            "registering filesystem '{name}' failed with an unknown outcome ({e}): the \
             registration may be on disk all the same, so fs/{id} and its key are kept. Restart \
             efs-server (or run efsctl on the stopped data dir): if efsctl list-fs then shows \
             '{name}' with id {id}, the filesystem is there; if not, the start names fs/{id} as \
             a directory no filesystem is registered under, which may be removed \
             (docs/operations.md, \"A filesystem directory nothing lists\")"
        )))
    }

    /// Creates a filesystem; returns what was created, one line each.
    pub fn create_fs(&self, name: &str) -> Result<Vec<String>> {
        check_name("filesystem", name)?;
        if self.system.filesystem(name)?.is_some() {
            return Err(CoreError::Exists("filesystem"));
        }
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).expect("the system RNG does not fail on Linux");
        let rec = FsRecord {
            name: name.to_owned(),
            id,
            created_ms: now_ms(),
        };
        let rel = format!("fs/{}", hex::encode(id));
        // Absolute: this line reaches efsctl, which may run elsewhere than the server (whose
        // --data may be relative to its own working directory).
        let root = std::fs::canonicalize(&self.root)
            .or_else(|_| std::path::absolute(&self.root))
            .unwrap_or_else(|_| self.root.clone());
        let mut lines = vec![format!(
            "Creating filesystem '{name}' in '{}/{rel}' (a random id: names never appear on disk)",
            root.display()
        )];
        lines.push(format!(
            "Creating index '{rel}/index.redb' (records encrypted, keys are keyed hashes)"
        ));
        lines.push(format!(
            "Creating blob directory '{rel}/blobs' (sharded, random names)"
        ));
        let (index, _) = self
            .create_fs_dir(&id)
            .inspect_err(|_| self.discard_new_fs(&id))?;
        let keyring = Keyring::generate();
        lines.push("Creating keyring (term 1), wrapped under the starter key".into());
        let batch = crate::index::Batch {
            expect: vec![],
            ops: vec![Op::PutMeta(
                META_KEYRING.into(),
                keyring.seal(&self.starter, &id),
            )],
            ..Default::default()
        };
        // Opened before it is registered: a registered filesystem that failed to open would
        // answer "exists" to a retry yet serve nothing until a restart. Anything failing
        // before it is registered leaves nothing behind (a registration whose outcome is
        // unknown keeps the directory: see register_new_fs).
        let fs = self.register_new_fs(
            &rec,
            futures_block(commit(&index, batch)).and_then(|()| self.assemble_fs(&rec, index)),
        )?;
        // A new, empty index with its digest made here: nothing to check.
        fs.mark_index_checked();
        self.filesystems
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), Arc::new(fs));
        Ok(lines)
    }

    /// Empties what recursive deletes of filesystem `name` left waiting to be removed, and
    /// waits for it ([`Filesystem::finish_pending_deletes`]); returns how many detached
    /// directories there were. [`DataDir::rotate_key`] and [`DataDir::reencrypt`] do it too;
    /// efsctl calls it first to say what was emptied.
    pub async fn finish_pending_deletes(&self, name: &str) -> Result<usize> {
        let fs = self.require_open_fs(name)?;
        fs.ensure_index_checked().await?;
        fs.finish_pending_deletes().await
    }

    /// Starts a key rotation of filesystem `name`: a new keyring term, persisted and
    /// used by new writes at once; every data key is then rewrapped to it, in the
    /// background if `wait` is false (and a runtime exists), else before returning.
    /// An unfinished rotation is resumed instead (no new term).
    pub async fn rotate_key(&self, name: &str, wait: bool) -> Result<(bool, RotationProgress)> {
        let fs = self.require_open_fs(name)?;
        fs.ensure_index_checked().await?;
        // Files of recursive deletes still waiting to be emptied are live records: rewrapped
        // under the new term, they would survive a `retire-terms` of the older ones (which
        // erases what was deleted before this rotation began). Emptied first.
        fs.finish_pending_deletes().await?;
        let (started, prog) = match rotation::begin(&fs, &self.starter).await? {
            rotation::Begun::Started(p) => (true, p),
            rotation::Begun::Unfinished(p) => (false, p),
        };
        if wait || !rotation::spawn(fs.clone()) {
            let done = rotation::run(&fs, None).await?.unwrap_or(prog);
            return Ok((started, done));
        }
        Ok((started, prog))
    }

    /// Retires every keyring term of filesystem `name` but the current one (`efsctl
    /// retire-terms`; see [`crate::retire`]): with the server stopped, once every record and
    /// data key is under the current term. Returns the plan and the index digest's new
    /// generation; no generation when nothing was retired: without `yes` (the dry run,
    /// [`retire::Plan::dry_run_message`]) or with no term to retire
    /// ([`retire::Plan::nothing_message`]). Refusals are [`CoreError::Refused`].
    pub async fn retire_terms(&self, name: &str, yes: bool) -> Result<(retire::Plan, Option<u64>)> {
        self.retire_terms_until(name, yes, retire::Stop::Never)
            .await
    }

    /// [`DataDir::retire_terms`], its audit entry of the switch (`retire::switch_entry`)
    /// recorded as run by `op`.
    pub async fn retire_terms_by(
        &self,
        name: &str,
        yes: bool,
        op: &crate::admin::Operator,
    ) -> Result<(retire::Plan, Option<u64>)> {
        self.retire_terms_inner(name, yes, retire::Stop::Never, op)
            .await
    }

    /// [`DataDir::retire_terms`], stopping where `stop` says (tests simulate a crash).
    #[doc(hidden)]
    pub async fn retire_terms_until(
        &self,
        name: &str,
        yes: bool,
        stop: retire::Stop,
    ) -> Result<(retire::Plan, Option<u64>)> {
        self.retire_terms_inner(
            name,
            yes,
            stop,
            &crate::admin::Operator::this_process("local"),
        )
        .await
    }

    async fn retire_terms_inner(
        &self,
        name: &str,
        yes: bool,
        stop: retire::Stop,
        op: &crate::admin::Operator,
    ) -> Result<(retire::Plan, Option<u64>)> {
        let fs = self.require_open_fs(name)?;
        let mut emptied = 0;
        if yes {
            // A recursive delete the server had not finished emptying leaves its files as
            // live records (re-sealed by the rotation under the current term) with their
            // blobs: they would survive the retirement. efsctl never empties them otherwise.
            emptied = fs.being_deleted(crate::fs::TRASH_COUNT_LIMIT).await?;
            fs.empty_trash().await.map_err(|e| {
                CoreError::Invalid(format!(
                    "emptying the directories of an unfinished recursive delete of '{name}' failed ({e}): nothing was retired. Look at the damage with efsctl fsck --fs {name}, or start the server (it empties them at its start), stop it, and run retire-terms again"
                ))
            })?;
        }
        let mut plan = retire::plan(&fs).await?;
        plan.emptied = emptied.saturating_sub(plan.being_deleted);
        if plan.nothing_to_retire() {
            return Ok((plan, None));
        }
        // A filesystem restored into a new name from this one started with its keyring:
        // it still holds the retired keys. Said loudly, not refused (each would block the
        // other's retirement).
        let others: Vec<Arc<Filesystem>> = self
            .filesystems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(_, f)| f.clone())
            .collect();
        plan.shared = retire::shared_with(&fs, &plan.retire, &others);
        drop(others);
        let mut not_compared: Vec<String> = self
            .unopened
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|n| n.as_str() != name)
            .cloned()
            .collect();
        not_compared.sort();
        plan.not_compared = not_compared;
        if yes && plan.being_deleted > 0 {
            return Err(CoreError::Refused(format!(
                "{} directories of a recursive delete of '{name}' are still being emptied: their files would survive the retirement. Nothing was retired; run retire-terms again (it empties them first), or start the server (it empties them at its start), stop it, and run it again",
                plan.being_deleted
            )));
        }
        // The rewrite writes a whole new copy of the index beside it before the old one goes:
        // refused before anything is written when that would take the free-space reserve
        // (a full disk midway would only leave a staged file to remove).
        let index_bytes = std::fs::metadata(self.fs_dir(fs.id()).join("index.redb"))?.len();
        self.opts.fs.check_space(index_bytes).map_err(|e| {
            CoreError::Refused(format!(
                "retire-terms writes a new copy of the index of '{name}' (about {index_bytes} bytes, the size of its index.redb) before removing the old one, and that does not fit: {e}. Nothing was retired; free that much space (or give a smaller --reserve-space) and run it again"
            ))
        })?;
        if !yes {
            // The dry run: an answer (Plan::dry_run_message), not an error.
            return Ok((plan, None));
        }
        let rec = self
            .system
            .filesystems()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| CoreError::Invalid(format!("no filesystem named '{name}'")))?;
        let sealed = fs.sealed_keyring().await?;
        let mut kr = Keyring::open(&self.starter, &rec.id, &sealed)?;
        if kr.current_number() != plan.current {
            return Err(CoreError::Corrupt(
                "stored keyring differs from the one in use",
            ));
        }
        kr.retire_older(now_ms());
        let new_sealed = kr.seal(&self.starter, &rec.id);
        // The filesystem is closed without the end-of-command store (efsctl stores every
        // open filesystem's seal counts as it ends): counts of a rotation this process just
        // ran would be lost with it, so they go into the index before it is copied.
        fs.store_seal_counts().await.map_err(|e| {
            CoreError::Invalid(format!(
                "storing the seal counts of '{name}' before the retirement failed ({e}): nothing was retired; run retire-terms again"
            ))
        })?;
        // The index closes with the filesystem: out of the map, and once nothing else holds
        // it (an index check just finished may still be letting go of it).
        drop(fs);
        let fs = self
            .filesystems
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| CoreError::Invalid(format!("no filesystem named '{name}'")))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut fs = fs;
        let closed = loop {
            match Arc::try_unwrap(fs) {
                Ok(f) => break Ok(f),
                Err(back) if std::time::Instant::now() < deadline => {
                    fs = back;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(back) => break Err(back),
            }
        };
        let closed = match closed {
            Ok(f) => f,
            Err(back) => {
                self.filesystems
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_owned(), back);
                return Err(CoreError::Invalid(format!(
                    "'{name}' is in use by another task of this process: nothing was retired; run retire-terms again"
                )));
            }
        };
        drop(closed);
        let dir = self.fs_dir(&rec.id);
        let live = dir.join("index.redb");
        let staged = dir.join(retire::STAGED);
        let (key, _) = self.digest_key(&rec.id)?;
        let rewritten = crate::redb_index::rewrite(
            &live,
            &staged,
            &key,
            &[(META_KEYRING, new_sealed.as_slice())],
        );
        let generation = match rewritten {
            // As a crash there: the filesystem stays closed, its index not switched.
            Ok(g) if stop == retire::Stop::BeforeSwitch => return Ok((plan, Some(g))),
            Ok(g) => g,
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                self.reopen_fs(&rec);
                return Err(e);
            }
        };
        // The terms are named in the audit log before the switch, fail closed: the entry the
        // command ends with comes after it, and a crash in between would leave the
        // retirement in effect with only the command's start in the log.
        // Synced before the rename, so that no power cut keeps the switch and loses the entry.
        // The staged file's directory entry first: no power cut may keep the entry and lose
        // the file it names.
        crate::blob::sync_dir(&dir)?;
        if let Err(e) = self
            .audit
            .submit_durable(retire::switch_entry(op, name, &plan, generation))
        {
            // The entry may be in the log all the same (written, its sync failed): the staged
            // file stays, so that the open that discards it says so in the log (the reopen
            // below, or, with the log failed, the next one).
            self.reopen_fs(&rec);
            return Err(CoreError::Invalid(format!(
                "the audit log did not take the entry naming the terms to retire ({e}): nothing was retired (its staged index is discarded, with an entry saying so, by the first open the log takes entries in). Look at the audit log's volume (efsctl audit verify), then run retire-terms again"
            )));
        }
        if stop == retire::Stop::AfterEntry {
            // As a crash between the entry and the rename.
            return Ok((plan, Some(generation)));
        }
        // The switch: one rename, made durable with the directory.
        let switched = std::fs::rename(&staged, &live).map_err(CoreError::from);
        if stop == retire::Stop::AfterSwitch && switched.is_ok() {
            // As a crash right after the rename: nothing after it runs.
            return Ok((plan, Some(generation)));
        }
        let synced = match &switched {
            Ok(()) => crate::blob::sync_dir(&dir).map_err(|e| {
                CoreError::Invalid(format!(
                    "the terms of '{name}' are retired (the new index is in place), but syncing its directory failed ({e}): a power cut now could bring the old index back; sync the file system (sync) and check with efsctl status --fs {name}"
                ))
            }),
            Err(_) => Ok(()),
        };
        if stop != retire::Stop::AfterSwitchNotReopened {
            self.reopen_fs(&rec);
        }
        switched?;
        synced?;
        // From here the terms are retired whatever fails: an error must say so, not read as
        // if nothing had changed (the audit log records the command as failed).
        let Some(fs) = self.fs(name) else {
            let why = self
                .unopened
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned()
                .unwrap_or_else(|| "not open".into());
            return Err(CoreError::Invalid(format!(
                "the terms of '{name}' are retired and its index was switched to the new file, but it did not open again ({why}): run efsctl fsck --fs {name}, or start the server, which says why"
            )));
        };
        let marked = if stop == retire::Stop::MarkFails {
            Err(CoreError::Io(std::io::Error::other("simulated")))
        } else {
            self.store_generation_mark(&fs, generation, true)
        };
        marked.map_err(|e| {
            CoreError::Invalid(format!(
                "the terms of '{name}' are retired (the new index is in place), but recording its index generation {generation} in the system database failed ({e}): nothing is lost, the next open accepts the new index; start the server (it records the generation once it has checked the index) and look at the system database's volume (space, permissions)"
            ))
        })?;
        tracing::info!(fs = name, terms = ?plan.retire, "key terms retired");
        Ok((plan, Some(generation)))
    }

    /// Opens filesystem `rec` again after its index was closed, as at the data dir's open
    /// (an index that no longer opens is listed as not served).
    fn reopen_fs(&self, rec: &FsRecord) {
        match self.open_fs(rec) {
            Ok(fs) => {
                self.filesystems
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(rec.name.clone(), Arc::new(fs));
            }
            Err(e) => {
                tracing::error!(fs = rec.name, error = %e, "filesystem not served: its index could not be opened again");
                self.unopened
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        rec.name.clone(),
                        format!("its index could not be opened again: {e}"),
                    );
            }
        }
    }

    /// Only the first step of [`DataDir::rotate_key`]: adds the term, persists it and
    /// swaps the in-memory keyring, but rewraps nothing ([`rotation::run`] does; a later
    /// open resumes it). For tools and tests.
    pub async fn begin_rotation(&self, name: &str) -> Result<RotationProgress> {
        let fs = self.require_open_fs(name)?;
        fs.ensure_index_checked().await?;
        match rotation::begin(&fs, &self.starter).await? {
            rotation::Begun::Started(p) | rotation::Begun::Unfinished(p) => Ok(p),
        }
    }

    /// Runs every unfinished key rotation to completion (efsctl without a server);
    /// returns the filesystems it finished, and those it left because their index is on
    /// hold (nothing is rewritten over an index that differs from its digest; the
    /// rotation resumes once `efsctl fsck --accept-index` lifts the hold).
    pub async fn finish_rotations(&self) -> Result<Finished> {
        let mut out = Finished::default();
        for fs in self.open_filesystems() {
            if rotation::pending(&fs).await? {
                match fs.ensure_index_checked().await {
                    Err(CoreError::IndexHold) => {
                        out.held.push(fs.name().to_owned());
                        continue;
                    }
                    r => r?,
                }
                rotation::run(&fs, None).await?;
                out.done.push(fs.name().to_owned());
            }
        }
        Ok(out)
    }

    /// Starts (or resumes) re-encrypting every file of filesystem `name` under fresh data
    /// keys and a new keyring term; in the background unless `wait` (or no runtime).
    pub async fn reencrypt(&self, name: &str, wait: bool) -> Result<(bool, ReencryptProgress)> {
        let fs = self.require_open_fs(name)?;
        fs.ensure_index_checked().await?;
        // As for a rotation: the files of unfinished recursive deletes would be re-sealed
        // under the current term, which a later `retire-terms` keeps.
        fs.finish_pending_deletes().await?;
        let (started, prog) = match reencrypt::begin(&fs, &self.starter).await? {
            reencrypt::Begun::Started(p) => (true, p),
            reencrypt::Begun::Unfinished(p) => (false, p),
        };
        if wait || !reencrypt::spawn(fs.clone()) {
            let done = reencrypt::run(&fs, None).await?.unwrap_or(prog);
            return Ok((started, done));
        }
        Ok((started, prog))
    }

    /// Only the first step of [`DataDir::reencrypt`]: adds the term and the progress
    /// record, rewrites nothing ([`reencrypt::run`] does; a later open resumes it). For
    /// tools and tests.
    pub async fn begin_reencryption(&self, name: &str) -> Result<ReencryptProgress> {
        let fs = self.require_open_fs(name)?;
        fs.ensure_index_checked().await?;
        match reencrypt::begin(&fs, &self.starter).await? {
            reencrypt::Begun::Started(p) | reencrypt::Begun::Unfinished(p) => Ok(p),
        }
    }

    /// Runs every unfinished re-encryption to completion (efsctl without a server);
    /// returns the filesystems it finished, and those it left on hold (as
    /// [`DataDir::finish_rotations`]).
    pub async fn finish_reencryptions(&self) -> Result<Finished> {
        let mut out = Finished::default();
        for fs in self.open_filesystems() {
            if reencrypt::pending(&fs).await? {
                match fs.ensure_index_checked().await {
                    Err(CoreError::IndexHold) => {
                        out.held.push(fs.name().to_owned());
                        continue;
                    }
                    r => r?,
                }
                match reencrypt::run(&fs, None).await {
                    Err(CoreError::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                        ) =>
                    {
                        out.stopped.push((fs.name().to_owned(), e.to_string()));
                    }
                    r => {
                        r?;
                        out.done.push(fs.name().to_owned());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Stores every filesystem's counts of records sealed per key term that changed since
    /// they were last stored ([`Filesystem::store_seal_counts`]): at the end of a server's
    /// or efsctl's run. Tries every filesystem; returns the first error.
    pub async fn store_seal_counts(&self) -> Result<()> {
        let mut first = Ok(());
        for fs in self.open_filesystems() {
            if let Err(e) = fs.store_seal_counts().await {
                tracing::warn!(fs = fs.name(), error = %e, "could not store the counts of records sealed per key term");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Every open filesystem (a snapshot of the table).
    pub fn open_filesystems(&self) -> Vec<Arc<Filesystem>> {
        self.filesystems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn require_open_fs(&self, name: &str) -> Result<Arc<Filesystem>> {
        self.fs(name).ok_or_else(|| match self.unopened(name) {
            Some(why) => CoreError::Invalid(unopened_text(name, &why)),
            None => {
                CoreError::Invalid(format!("no filesystem named '{name}' (see efsctl list-fs)"))
            }
        })
    }

    /// Why filesystem `name` is not served, if its index could not be opened when the data
    /// dir was: it exists (in the system database) but has no [`Filesystem`].
    pub fn unopened(&self, name: &str) -> Option<String> {
        self.unopened
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Backs up filesystem `name` into the new directory `dest` while it serves (see
    /// [`crate::fs::backup`]). With `include_keys`, the keyring goes along, still sealed
    /// under this data dir's starter key, with the public `keyparts.json`.
    pub async fn backup(
        &self,
        name: &str,
        dest: &Path,
        include_keys: bool,
    ) -> Result<BackupReport> {
        self.backup_skipping_damaged(name, dest, include_keys, false)
            .await
    }

    /// [`DataDir::backup`], past damaged entries with `skip_damaged`
    /// ([`backup::backup_skipping_damaged`]: `efsctl backup --skip-damaged`).
    pub async fn backup_skipping_damaged(
        &self,
        name: &str,
        dest: &Path,
        include_keys: bool,
        skip_damaged: bool,
    ) -> Result<BackupReport> {
        if is_inside_data_dir(&self.root, dest) {
            return Err(CoreError::Invalid(format!(
                "{} is inside the data dir {}; write the backup elsewhere (-o): there it would \
                 sit beside the data it copies, in every copy of the data dir, and be lost with it",
                dest.display(),
                self.root.display()
            )));
        }
        let fs = self.require_open_fs(name)?;
        fs.ensure_index_checked().await?;
        let keyparts = if include_keys {
            Some(std::fs::read(
                self.root.join("system").join("keyparts.json"),
            )?)
        } else {
            None
        };
        backup::backup_skipping_damaged(&fs, dest, keyparts.as_deref(), skip_damaged).await
    }

    /// Restores the backup at `src` as the new filesystem `name`, or into filesystem `name`
    /// if it exists and is empty (then under that filesystem's own keyring, each record
    /// committed only where nothing is yet). The backup's keyring comes from
    /// the backup's `keys/` (opened with `backup_parts`, the key parts of the data dir
    /// the backup was taken in; none: this data dir's) or else from the filesystem with
    /// the backup's id in this data dir. For a new filesystem, every record and data key
    /// is rebound to its new id; content is copied as it is, each blob checked against the
    /// manifest. The filesystem is registered last: an interrupted restore (or one whose
    /// registration has an unknown outcome) leaves only an unregistered directory under
    /// `fs/`.
    ///
    /// Before anything is written, the manifest's MAC is checked under the backup's
    /// keyring (so a dump or blob list changed, or spliced from another backup, is
    /// refused). A format-1 backup has no MAC: it is refused unless
    /// `accept_unauthenticated`, and then restored with a warning among the lines.
    pub async fn restore(
        &self,
        name: &str,
        src: &Path,
        backup_parts: &[KeyPartSpec],
        prompt: &(dyn Fn(&str) -> std::io::Result<String> + Sync),
        accept_unauthenticated: bool,
    ) -> Result<Vec<String>> {
        check_name("filesystem", name)?;
        let existing = match self.system.filesystem(name)? {
            None => None,
            Some(_) => {
                let fs = self.require_open_fs(name)?;
                fs.ensure_index_checked().await?;
                if !fs.is_empty().await? {
                    return Err(CoreError::Invalid(format!(
                        "filesystem '{name}' is not empty; restore into a new name or an empty filesystem"
                    )));
                }
                Some(fs)
            }
        };
        let mut source = backup::open_source(src, &self.root.join("system"))?;
        if source.is_v1() && !accept_unauthenticated {
            // Refused before any key part is asked for.
            return Err(backup::v1_refused(src));
        }
        let old_id = source.fs_id;
        let mut lines = Vec::new();
        let keyring = if source.manifest.keys_included {
            let kdir = src.join("keys");
            let sealed = std::fs::read(kdir.join("keyring.sealed")).map_err(|e| {
                CoreError::Invalid(format!(
                    "{}: its manifest says the keyring is included, but keys/keyring.sealed \
                     cannot be read ({e}); nothing was restored",
                    src.display()
                ))
            })?;
            let sha = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&sealed))
            };
            if Some(sha) != source.manifest.keyring_sha256 {
                return Err(CoreError::Invalid(
                    "keys/keyring.sealed does not match the manifest; nothing was restored".into(),
                ));
            }
            let opened = if backup_parts.is_empty() {
                Keyring::open(&self.starter, &old_id, &sealed)
            } else {
                let text = std::fs::read(kdir.join("keyparts.json"))?;
                let file: KeyPartsFile = serde_json::from_slice(&text).map_err(|_| {
                    CoreError::Invalid("keys/keyparts.json of the backup is malformed".into())
                })?;
                let starter = keyparts::open_backup(&file, backup_parts, prompt)?;
                Keyring::open(&starter, &old_id, &sealed)
            };
            lines.push("Opened the keyring of the backup".into());
            opened.map_err(|_| {
                CoreError::Invalid(
                    "the backup's keyring does not open: give the key parts of the data dir it was taken in (--backup-key-part)".into(),
                )
            })?
        } else {
            let same = self
                .system
                .filesystems()?
                .into_iter()
                .find(|f| f.id == old_id)
                .and_then(|f| self.fs(&f.name))
                .ok_or_else(|| {
                    CoreError::Invalid(
                        "the backup holds no keys (taken without --include-keys) and this data dir has no filesystem with its id: it cannot be decrypted here".into(),
                    )
                })?;
            // Only a trusted index's keyring: one on hold may be an older copy put back (with
            // the key terms a rotation or `retire-terms` has since removed).
            if same.ensure_index_checked().await.is_err() {
                return Err(CoreError::Invalid(format!(
                    "the backup holds no keys (taken without --include-keys) and the keyring it needs is that of filesystem '{}', which is on hold (its index failed its integrity check, an older copy put back say, or the check could not finish): look with efsctl fsck --fs {}, put its own index back (or accept it with --accept-index, never a copy from before a retire-terms: that brings the erased terms back), then restore",
                    same.name(),
                    same.name()
                )));
            }
            let sealed = same.sealed_keyring().await?;
            lines.push(format!(
                "Using the keyring of filesystem '{}' (the backup holds no keys)",
                same.name()
            ));
            Keyring::open(&self.starter, &old_id, &sealed)?
        };
        // Nothing is written before this.
        source.authenticate(&keyring, accept_unauthenticated)?;
        let summary = source
            .summary
            .as_ref()
            .ok_or(CoreError::Corrupt("backup summary"))?;
        lines.push(format!(
            "Backup of '{}' (id {}) taken at {}: {} entries, {} files, {} blobs",
            summary.fs_name,
            source.manifest.fs_id,
            crate::admin::rfc3339_ms(source.manifest.created_ms),
            source.manifest.entries,
            summary.files,
            source.manifest.blobs.len()
        ));
        if !summary.left_out.is_empty() {
            let n = summary.left_out.len();
            let warning = format!(
                "{PARTIAL_BACKUP}{n} damaged entries were left out when it was taken (efsctl backup --skip-damaged); they are not restored"
            );
            tracing::warn!(backup = %src.display(), "{warning}");
            lines.push(warning);
            for e in summary.left_out.iter().take(LEFT_OUT_NAMED) {
                lines.push(format!(
                    "warning: entry {} was left out: {}",
                    e.entry, e.reason
                ));
            }
            if n > LEFT_OUT_NAMED {
                lines.push(format!(
                    "warning: and {} more left out (the backup's own output named them all)",
                    n - LEFT_OUT_NAMED
                ));
            }
        }
        if source.authenticity == backup::Authenticity::Authenticated {
            lines.push(format!(
                "Manifest authenticated (HMAC-SHA256 under key term {}); MAC {}",
                source.manifest.mac_term,
                &source.manifest.mac[..32]
            ));
        } else {
            let warning = "WARNING: format-1 backup restored WITHOUT authentication \
                 (--accept-unauthenticated-backup): records removed from it or put back from \
                 an older backup would not have been detected";
            tracing::warn!(backup = %src.display(), "{warning}");
            lines.push(warning.into());
        }
        if let Some(fs) = existing {
            let (entries, blobs) = fs.restore_into(&source, &keyring).await?;
            lines.push(format!(
                "Restored {entries} entries and {blobs} blobs (checked against the manifest) into the empty filesystem '{name}', under its own keyring"
            ));
            lines.push(format!("Check it with: efsctl fsck --fs {name}"));
            return Ok(lines);
        }
        source.require_checked()?;
        // The new filesystem seals under a term of its own: the backup keyring's terms are
        // the original filesystem's keys too, and each key's seals are counted (and bounded
        // at 2^32) by the filesystem that uses it.
        let mut keyring = keyring;
        keyring.add_term();
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).expect("the system RNG does not fail on Linux");
        let (index, blobs) = self
            .create_fs_dir(&id)
            .inspect_err(|_| self.discard_new_fs(&id))?;
        // A restore that fails midway (a damaged blob, a full disk) leaves nothing behind:
        // the new filesystem is registered only at the end, and its directory is removed.
        let filled = async {
            // Refused before anything is written when all of it would take the reserve (the
            // checks as it goes remain, for writers meanwhile).
            self.opts.fs.check_space(source.restore_bytes())?;
            let first = crate::index::Batch {
                ops: vec![Op::PutMeta(
                    META_KEYRING.into(),
                    keyring.seal(&self.starter, &id),
                )],
                ..Default::default()
            };
            commit(&index, first).await?;
            let mut reader = backup::DumpReader::open(&source)?;
            let mut batch = crate::index::Batch::default();
            let mut referenced = std::collections::BTreeSet::new();
            let (mut entries, mut inline) = (0u64, 0u64);
            while let Some(item) = reader.next_item()? {
                match item {
                    DumpItem::Entry(k, v) => {
                        let rec = crate::record::Record::open(&keyring, &old_id, &k, &v)?;
                        let rebound = rebind(&keyring, &old_id, &id, rec)?;
                        if rebound.storage == crate::record::Storage::Blob {
                            referenced.insert(hex::encode(rebound.id));
                        }
                        batch
                            .ops
                            .push(Op::PutEntry(k, rebound.seal(&keyring, &id, &k)));
                        entries += 1;
                    }
                    DumpItem::Inline(cid, v) => {
                        batch.ops.push(Op::PutInline(cid, v));
                        inline += 1;
                    }
                }
                if batch.ops.len() >= 1024 {
                    self.opts.fs.check_space(batch.bytes_put())?;
                    commit(&index, std::mem::take(&mut batch)).await?;
                }
            }
            // Every restored record was sealed under the new term: the count starts from them.
            let mut sealed = std::collections::BTreeMap::new();
            sealed.insert(keyring.current_number(), entries);
            batch.ops.push(Op::PutMeta(
                crate::fs::META_SEALS.into(),
                crate::fs::encode_seal_counts(&sealed),
            ));
            self.opts.fs.check_space(batch.bytes_put())?;
            commit(&index, batch).await?;
            if entries != source.manifest.entries || inline != source.manifest.inline {
                return Err(CoreError::Invalid(
                    "the backup's index dump does not hold what its manifest counts".into(),
                ));
            }
            let listed: std::collections::BTreeSet<String> =
                source.manifest.blobs.keys().cloned().collect();
            if listed != referenced {
                return Err(CoreError::Invalid(
                    "the backup's blobs differ from those its records name".into(),
                ));
            }
            for (hexid, sha) in &source.manifest.blobs {
                let cid: crate::index::ContentId = hex::decode(hexid)
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or(CoreError::Corrupt("backup blob name"))?;
                // Below the free-space reserve the restore stops before the blob (and the
                // new filesystem is removed), not once the disk is full.
                let from = backup::source_blob(&source, hexid);
                self.opts
                    .fs
                    .check_space(std::fs::metadata(&from).map_or(0, |m| m.len()))?;
                copy_blob(&blobs, &cid, &from, sha).await?;
            }
            Ok::<_, CoreError>((entries, inline))
        }
        .await;
        let (entries, inline) = match filled {
            Ok(counts) => counts,
            Err(e) => {
                drop((index, blobs));
                self.discard_new_fs(&id);
                return Err(e);
            }
        };
        lines.push(format!(
            "Restored {entries} entries, {inline} inline contents and {} blobs (checked against the manifest) into '{name}'",
            source.manifest.blobs.len()
        ));
        let rec = FsRecord {
            name: name.to_owned(),
            id,
            created_ms: now_ms(),
        };
        drop((index, blobs));
        let fs = self.register_new_fs(&rec, self.open_fs(&rec))?;
        // Its digest was computed here, over what this restore wrote: no check at start.
        fs.mark_index_checked();
        self.filesystems
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), Arc::new(fs));
        lines.push(format!("Check it with: efsctl fsck --fs {name}"));
        Ok(lines)
    }

    /// Every filesystem.
    pub fn list_fs(&self) -> Result<Vec<FsRecord>> {
        self.system.filesystems()
    }

    /// An open filesystem by name.
    pub fn fs(&self, name: &str) -> Option<Arc<Filesystem>> {
        self.filesystems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Forgets every filesystem's remembered path lookups ([`Filesystem::forget_lookups`]);
    /// returns how many there were.
    pub fn forget_lookups(&self) -> usize {
        let open: Vec<_> = self
            .filesystems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        open.iter().map(|fs| fs.forget_lookups()).sum()
    }

    /// Creates a user with a raw Ed25519 public key and grants.
    pub fn create_user(
        &self,
        name: &str,
        public_key: [u8; 32],
        grants: Vec<GrantRecord>,
    ) -> Result<UserRecord> {
        check_new_user_name(name)?;
        if self.system.user(name)?.is_some() {
            return Err(CoreError::Exists("user"));
        }
        for g in &grants {
            self.require_fs(&g.fs)?;
        }
        let u = UserRecord {
            name: name.to_owned(),
            public_key,
            grants,
            generation: first_generation(),
            created_ms: now_ms(),
            cert_sha256: None,
        };
        self.system.put_user(&u)?;
        Ok(u)
    }

    fn require_fs(&self, fs: &str) -> Result<()> {
        if self.system.filesystem(fs)?.is_none() {
            return Err(CoreError::Invalid(format!(
                "no filesystem named '{fs}' (see efsctl list-fs)"
            )));
        }
        Ok(())
    }

    fn require_user(&self, name: &str) -> Result<UserRecord> {
        self.system.user(name)?.ok_or_else(|| {
            CoreError::Invalid(format!("no user named '{name}' (see efsctl list-users)"))
        })
    }

    /// Grants (or changes) access to a filesystem.
    pub fn grant(&self, user: &str, fs: &str, read_only: bool) -> Result<UserRecord> {
        let mut u = self.require_user(user)?;
        self.require_fs(fs)?;
        u.grants.retain(|g| g.fs != fs);
        u.grants.push(GrantRecord {
            fs: fs.to_owned(),
            read_only,
        });
        // A downgrade to read-only must not leave read-write tokens alive.
        u.generation += 1;
        self.system.put_user(&u)?;
        Ok(u)
    }

    /// Revokes access to one filesystem, or with `fs = None` every token of the user
    /// (grants kept). Tokens issued before stop working at once.
    pub fn revoke(&self, user: &str, fs: Option<&str>) -> Result<UserRecord> {
        let mut u = self.require_user(user)?;
        if let Some(fs) = fs {
            let before = u.grants.len();
            u.grants.retain(|g| g.fs != fs);
            if u.grants.len() == before {
                // A grant on a filesystem that is gone is still revoked above.
                self.require_fs(fs)?;
                return Err(CoreError::Invalid(format!(
                    "user '{user}' has no grant on '{fs}'"
                )));
            }
        }
        u.generation += 1;
        self.system.put_user(&u)?;
        Ok(u)
    }

    /// Replaces a user's public key, keeping its grants and bound certificate, and ends every
    /// token of the user at once (a new generation): the way to lock out a stolen key, which
    /// `revoke` alone does not (the key logs in again). Returns the key it replaced and the
    /// user as saved.
    pub fn replace_key(&self, user: &str, public_key: [u8; 32]) -> Result<([u8; 32], UserRecord)> {
        let mut u = self.require_user(user)?;
        if u.public_key == public_key {
            // Most likely the stolen key's own public half: "replacing" it would leave the
            // thief able to log in.
            return Err(CoreError::Invalid(format!(
                "the new public key is the one '{user}' has now ({}): give the user's new public \
                 key, or leave out --pubkey to generate a key pair",
                crate::system::public_key_fingerprint(&public_key)
            )));
        }
        let old = std::mem::replace(&mut u.public_key, public_key);
        u.generation += 1;
        self.system.put_user(&u)?;
        Ok((old, u))
    }

    /// Binds (or unbinds) a client certificate to a user.
    pub fn bind_cert(&self, user: &str, cert_sha256: Option<[u8; 32]>) -> Result<UserRecord> {
        let mut u = self.require_user(user)?;
        u.cert_sha256 = cert_sha256;
        u.generation += 1;
        self.system.put_user(&u)?;
        Ok(u)
    }

    /// Deletes a user; its tokens stop working at once.
    pub fn delete_user(&self, name: &str) -> Result<()> {
        if !self.system.remove_user(name)? {
            return Err(CoreError::Invalid(format!("no user named '{name}'")));
        }
        Ok(())
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.system.user(name)
    }

    /// Every user.
    pub fn users(&self) -> Result<Vec<UserRecord>> {
        self.system.users()
    }

    /// A system secret (signing key, TLS key).
    pub fn secret(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.system.secret(name)
    }

    /// What opening found of the system database's digest (see [`crate::system`]), or
    /// [`SystemTrust::Accepted`] once [`DataDir::accept_system`] ran.
    pub fn system_trust(&self) -> SystemTrust {
        self.system_trust.lock().expect("lock poisoned").clone()
    }

    /// Trusts the system database as it is, when this data dir was opened with
    /// [`OpenOptions::accept_system`] and it failed its check (`efsctl accept-system`, which
    /// records it in the audit log). Returns the digest's state after: `Accepted` with the
    /// generation and anchor now, or `Holds` when there was nothing to accept.
    pub fn accept_system(&self) -> Result<SystemTrust> {
        let mut trust = self.system_trust.lock().expect("lock poisoned");
        let now = match &*trust {
            SystemTrust::Pending { found } => {
                let mut accepted = match self.system.accept_now()? {
                    // Pending only because it is older than the audit log or its witness (its
                    // digest holds).
                    SystemTrust::Holds { generation, anchor } => SystemTrust::Accepted {
                        found: found.clone(),
                        generation,
                        anchor,
                    },
                    // Accepted from a digest that differed: what the open found (the
                    // witness's verdict too, if any) is what was accepted.
                    SystemTrust::Accepted {
                        generation, anchor, ..
                    } => SystemTrust::Accepted {
                        found: found.clone(),
                        generation,
                        anchor,
                    },
                    other => other,
                };
                // Behind its rollback witness: the generation goes on past the witness's, so
                // that the witness follows again (and a generation noted since stays below).
                if let Some(floor) = self.witness_floor {
                    self.system.continue_generation(floor.saturating_add(1))?;
                }
                // The witness, if any, follows from here (and is started if it was missing),
                // recorded as accepted with it.
                self.system.witness_trusted(true)?;
                if let (
                    SystemTrust::Accepted {
                        generation, anchor, ..
                    },
                    crate::digest::DigestCheck::Holds {
                        generation: g,
                        anchor: a,
                        ..
                    },
                ) = (&mut accepted, self.system.digest_state()?)
                {
                    (*generation, *anchor) = (g, a);
                }
                // The log's head recorded now, so that the next open finds the two agree (a
                // database both changed and older than the log is accepted for both).
                let _one = self.audit_mark.lock().unwrap_or_else(|e| e.into_inner());
                let end = self.audit.found_end().0;
                if recorded_audit_mark(&self.system)?.is_none_or(|m| m.head.seq < end.seq) {
                    self.store_audit_mark(end)?;
                }
                accepted
            }
            _ => match self.system.digest_state()? {
                crate::digest::DigestCheck::Holds {
                    generation, anchor, ..
                } => SystemTrust::Holds { generation, anchor },
                other => {
                    return Err(CoreError::SystemHold(format!(
                        "{} (while this data dir is open: stop the server, then run efsctl accept-system)",
                        SystemDb::describe(&other)
                    )));
                }
            },
        };
        if matches!(now, SystemTrust::Accepted { .. }) {
            *trust = now.clone();
        }
        Ok(now)
    }

    /// The rollback witness this data dir was opened with (`--rollback-witness`), if any:
    /// where, at which generation, whether its last write failed.
    pub fn rollback_witness(&self) -> Option<crate::witness::WitnessState> {
        self.system.witness_state()
    }

    /// Whether this data dir has had a rollback witness (whether or not it was opened with
    /// it).
    pub fn has_had_witness(&self) -> Result<bool> {
        self.system.has_had_witness()
    }

    /// The system database's digest now: generation and anchor (a full scan of it).
    pub fn system_digest(&self) -> Result<crate::digest::DigestCheck> {
        self.system.digest_state()
    }

    /// Injects `fault` into the system database's next commit of a filesystem row (tests; see
    /// [`crate::system::Fault`]). Not an API.
    #[doc(hidden)]
    pub fn inject_system_fault(&self, fault: crate::system::Fault) {
        self.system.inject(fault);
    }

    /// Stores a system secret, sealed under the starter key.
    pub fn put_secret(&self, name: &str, value: &[u8]) -> Result<()> {
        self.system.put_secret(name, value)
    }

    /// Replaces the token-signing key by a fresh one (`efsctl rotate-signing-key`, with the
    /// server stopped: a running server keeps the key it started with). Every token signed
    /// before is refused from then on, and the server identity changes with the key. Returns
    /// the server identities before and after.
    pub fn rotate_signing_key(&self) -> Result<(String, String)> {
        let old = self
            .secret(SECRET_SIGNING_KEY)?
            .ok_or(CoreError::Corrupt("the data dir has no token-signing key"))?;
        let old: &[u8; 32] = old
            .as_slice()
            .try_into()
            .map_err(|_| CoreError::Corrupt("token-signing key length"))?;
        let old_id = server_id_of(old);
        let new = efs_format::Key32::random();
        self.put_secret(SECRET_SIGNING_KEY, new.as_bytes())?;
        Ok((old_id, server_id_of(new.as_bytes())))
    }
}

impl DataDir {
    /// Removes the TLS key and certificate efs-server generated (`efsctl rotate-tls-key`,
    /// with the server stopped), the key first, then `system/tls-cert.pem`: the server makes
    /// new ones at its next start. Returns the removed certificate's SHA-256 fingerprint
    /// (`AB:CD:…`, as the server prints it). Refused when there is none.
    pub fn forget_generated_tls(&self) -> Result<String> {
        let cert = self.secret(SECRET_TLS_CERT)?;
        let had_key = self.secret(SECRET_TLS_KEY)?.is_some();
        let Some(cert) = cert.filter(|_| had_key) else {
            return Err(CoreError::Invalid(
                "this data dir has no TLS certificate generated by efs-server (it was never started without --tls-cert, or its key was removed already): nothing to replace".into(),
            ));
        };
        use sha2::Digest as _;
        let old = sha2::Sha256::digest(cert.as_slice())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        // The key first: a crash after it leaves a certificate without its key, which the
        // next start replaces as if both were gone.
        self.system.delete_secret(SECRET_TLS_KEY)?;
        self.system.delete_secret(SECRET_TLS_CERT)?;
        let pem = self.root.join("system").join("tls-cert.pem");
        match std::fs::remove_file(&pem) {
            Ok(()) => crate::blob::sync_dir(&self.root.join("system"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(old)
    }
}

/// The server identity `S` of a token-signing key's seed: `efs-` + hex of the first 16 bytes
/// of SHA-256 of its Ed25519 public key (docs/protocol.md).
pub fn server_id_of(signing_seed: &[u8; 32]) -> String {
    server_id_for_public(&ed25519_dalek::SigningKey::from_bytes(signing_seed).verifying_key())
}

/// The server identity `S` of a token-verification (public) key.
pub fn server_id_for_public(key: &ed25519_dalek::VerifyingKey) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.as_bytes());
    format!("efs-{}", hex::encode(&digest[..16]))
}

/// A record of filesystem `from` made a record of filesystem `to`: a file's data key is
/// unwrapped and wrapped again, under the keyring's current term, with `to` in its binding.
fn rebind(
    kr: &Keyring,
    from: &[u8; 16],
    to: &[u8; 16],
    mut rec: crate::record::Record,
) -> Result<crate::record::Record> {
    if rec.kind == crate::record::Kind::File {
        let dk = rec.data_key(kr, from)?;
        let term = kr.current();
        rec.key_term = term.number;
        rec.wrapped_key = term
            .data_key_sealer()
            .seal(&crate::record::data_key_aad(to, &rec.id), dk.as_bytes());
    }
    Ok(rec)
}

/// Copies a backup's blob into a blob store, checking its SHA-256 on the way.
pub(crate) async fn copy_blob(
    blobs: &dyn crate::blob::BlobStore,
    id: &crate::index::ContentId,
    src: &Path,
    sha: &str,
) -> Result<()> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(src)
        .map_err(|_| CoreError::Invalid(format!("the backup lacks blob {}", hex::encode(id))))?;
    // A restore that crashed (or was killed) while copying this blob left its partial write.
    blobs.remove_partial(id).await?;
    let mut w = blobs.create(id).await?;
    let mut h = sha2::Sha256::new();
    loop {
        let mut buf = vec![0u8; 4 << 20];
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        h.update(&buf);
        if let Err(e) = w.write(buf).await {
            w.abort().await;
            return Err(e);
        }
    }
    if hex::encode(h.finalize()) != sha {
        w.abort().await;
        return Err(CoreError::Invalid(format!(
            "blob {} of the backup does not match its SHA-256 in the manifest",
            hex::encode(id)
        )));
    }
    w.finish().await
}

/// Path of the admin socket of the data dir at `root`.
pub fn admin_socket_path(root: &Path) -> PathBuf {
    root.join("system").join("admin.sock")
}

/// The records of `index` per key term that sealed them (one snapshot).
async fn count_sealed_records(index: &RedbIndex) -> Result<std::collections::BTreeMap<u32, u64>> {
    let mut counts = std::collections::BTreeMap::new();
    crate::index::Index::visit_entries(index, &mut |_, v| {
        if let Ok(term) = crate::rotation::sealing_term(v) {
            *counts.entry(term).or_default() += 1;
        }
        Ok(())
    })
    .await?;
    Ok(counts)
}

async fn index_meta(index: &RedbIndex, name: &str) -> Result<Option<Vec<u8>>> {
    crate::index::Index::get_meta(index, name).await
}

async fn commit(index: &RedbIndex, batch: crate::index::Batch) -> Result<()> {
    if crate::index::Index::commit(index, batch).await? {
        Ok(())
    } else {
        Err(CoreError::Contention)
    }
}

/// Runs a short future to completion from synchronous code, inside or outside a runtime.
fn futures_block<F: std::future::Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime builds")
                .block_on(f)
        })
        .join()
        .expect("the helper thread does not panic")
    })
}

#[cfg(test)]
impl DataDir {
    /// Poisons the locks of the tables of open and unopened filesystems, as a panic while
    /// one is held does (tests).
    pub(crate) fn poison_fs_tables(&self) {
        crate::fs::poison_with(|| self.filesystems.write());
        crate::fs::poison_with(|| self.unopened.write());
        assert!(self.filesystems.is_poisoned() && self.unopened.is_poisoned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `efs-server` is reserved for new users only: a data dir that already has a user of
    /// that name (made before it was reserved) lists it, and its grants, key, certificate
    /// binding and deletion work as for any user, through the admin commands too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_named_as_the_server_from_before_keeps_working() {
        use crate::admin::{AdminRequest, execute};
        use base64::Engine;
        let (_tmp, dd, _fs) = crate::fs::rotation::tests::env();
        assert!(dd.create_user(SERVER_USER, [1; 32], vec![]).is_err());
        // As an earlier version created it.
        dd.system
            .put_user(&UserRecord {
                name: SERVER_USER.to_owned(),
                public_key: [1; 32],
                grants: vec![],
                generation: first_generation(),
                created_ms: now_ms(),
                cert_sha256: None,
            })
            .unwrap();
        // Still a well-formed user name: efsctl's replace-key and the login check it.
        check_name("user", SERVER_USER).unwrap();
        let run = |req| execute(&dd, req);
        let r = run(AdminRequest::Grant {
            user: SERVER_USER.into(),
            fs: "docs".into(),
            read_only: true,
        })
        .await;
        assert!(r.ok, "{:?}", r.error);
        let new_key = ed25519_dalek::SigningKey::from_bytes(&[2; 32])
            .verifying_key()
            .to_bytes();
        let key = base64::engine::general_purpose::STANDARD.encode(new_key);
        let r = run(AdminRequest::ReplaceKey {
            user: SERVER_USER.into(),
            public_key: key,
        })
        .await;
        assert!(r.ok, "{:?}", r.error);
        dd.bind_cert(SERVER_USER, Some([3; 32])).unwrap();
        let u = dd.user(SERVER_USER).unwrap().expect("listed");
        assert_eq!(
            (u.public_key, u.grants.len(), u.cert_sha256),
            (new_key, 1, Some([3; 32]))
        );
        let r = run(AdminRequest::ListUsers).await;
        assert!(r.ok && r.lines.join("\n").contains(SERVER_USER), "{r:?}");
        let r = run(AdminRequest::DeleteUser {
            name: SERVER_USER.into(),
        })
        .await;
        assert!(r.ok, "{:?}", r.error);
        assert!(dd.user(SERVER_USER).unwrap().is_none());
    }

    /// A system database is taken for an older copy only when the log went on far past its
    /// recorded head, timed from the first entry after that head: after an idle spell the
    /// head was recorded long ago (it is recorded only when it moves), and a burst of entries
    /// cut off by a crash before the next record is no older copy. Regression (review): the
    /// lag was timed from the recording, and such a restart was refused.
    #[tokio::test]
    async fn the_log_past_the_recorded_head_is_timed_from_the_first_entry_after_it() {
        use crate::audit::{Action, AuditKeys, AuditLog, AuditOptions, Record};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let keys = AuditKeys::derive(&efs_format::Key32::random());
        let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
        for _ in 0..3 {
            log.submit(Record::new(Action::Read, 200)).unwrap();
        }
        log.close();
        let head = log.anchored().expect("anchored at close");
        assert_eq!(head.seq, 3);
        drop(log);
        // Recorded an hour ago, then idle; now a burst of 30 entries, never recorded.
        let mark = AuditMark {
            head,
            at_ms: crate::audit::now_ms() - 3_600_000,
        };
        let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
        for _ in 0..30 {
            log.submit(Record::new(Action::Read, 200)).unwrap();
        }
        log.close();
        drop(log);
        let (end, after) = crate::audit::writer::log_end(&dir, Some(head.seq)).unwrap();
        assert_eq!(end.0.seq, 33);
        assert!(after.is_some_and(|t| t > mark.at_ms), "{after:?}");
        assert_eq!(system_older_than_log(mark, end, after, AUDIT_LAG_MS), None);
        // The same entries spread over more than the tolerance: an older copy.
        let found =
            system_older_than_log(mark, (end.0, end.1 + AUDIT_LAG_MS + 1), after, AUDIT_LAG_MS)
                .expect("older");
        assert!(found.contains("older than the audit log"), "{found}");
        // No entry after the head to time from (a log rewritten since): the recording's time.
        assert!(system_older_than_log(mark, end, None, AUDIT_LAG_MS).is_some());
        // Too few entries past the head: not taken for an older copy, however long.
        let near = crate::audit::line::Head { seq: 20, ..end.0 };
        assert_eq!(
            system_older_than_log(mark, (near, end.1 + 10 * AUDIT_LAG_MS), after, AUDIT_LAG_MS),
            None
        );
    }

    /// The lock file made by root (efsctl on a stopped server's data dir) belongs to the
    /// owner of `system/`, so that the server's account can still open the data dir. Needs
    /// root to give files away (the suite runs as root in CI).
    #[test]
    fn a_lock_file_made_by_root_belongs_to_the_data_dirs_owner() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to change a file's owner");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        std::fs::create_dir_all(root.join("system")).unwrap();
        let nobody = rustix::fs::Uid::from_raw(65534);
        rustix::fs::chown(root.join("system"), Some(nobody), None).unwrap();
        let lock = lock_data_dir(&root).unwrap();
        let meta = std::fs::metadata(root.join("system").join(LOCK_FILE)).unwrap();
        assert_eq!(meta.uid(), 65534);
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Held: a second lock is refused, then given back when the first is dropped.
        let e = lock_data_dir(&root).unwrap_err().to_string();
        assert!(e.contains("in use by another process"), "{e}");
        drop(lock);
        lock_data_dir(&root).unwrap();
    }

    /// Regression: `create_fs` (and a restore into a new filesystem) made `fs/<id>` with
    /// `create_dir_all` and never fsynced `fs/`: a crash could lose the new filesystem's
    /// directory while the system database already named it.
    #[test]
    fn a_new_filesystem_directory_is_durable_before_it_is_registered() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let part = tmp.path().join("part.key");
        keyparts::generate_part_file(&part).unwrap();
        let (dd, _) = DataDir::open(
            &root,
            &[KeyPartSpec::File(part)],
            OpenOptions::default(),
            &keyparts::no_prompt,
        )
        .unwrap();
        dd.create_fs("a").unwrap();
        let dir = dd.fs_dir(dd.fs("a").unwrap().id());
        let synced = crate::blob::synced::under(&root);
        let pos = |d: &Path| synced.iter().position(|x| x == d);
        // fs/ synced after fs/<id> was made (its entry), and fs/<id> last (after its index
        // file and blobs/ were made).
        let fs_last = synced.iter().rposition(|x| x == &root.join("fs"));
        assert!(pos(&dir).is_some() && fs_last > pos(&dir), "{synced:?}");
        assert_eq!(
            synced.iter().rposition(|x| x == &dir),
            Some(synced.len() - 1)
        );
    }
}
