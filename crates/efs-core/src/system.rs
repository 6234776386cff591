//! The system database (`system/system.redb`): filesystems, users and wrapped secrets.
//!
//! Keys are keyed hashes of names and values are sealed under starter subkeys, so the
//! file shows neither user names nor filesystem names nor public keys. A record's plaintext
//! is padded with zeros to a multiple of [`SYSTEM_RECORD_PAD`] bytes before sealing, so that
//! its size tells the length of a name (and a user's grants) only to within that much.
//!
//! A sealed row opens only under its own key, but an older value of the *same* row opens
//! fine: a user's row from before a revocation or a key change, written back by someone
//! with write access to the data dir, would bring the old key or grant back. So the
//! database keeps a digest of its whole content ([`crate::digest`], the same keyed multiset
//! hash as the indexes, under a starter subkey), updated in the transaction of every
//! write and checked at every open: a row changed, removed, added or put back outside EFS
//! makes the open fail until an operator accepts the database as it is
//! (`efsctl accept-system`; rows that do not decrypt are never accepted). A database whose
//! digest is missing (deleted, or from before digests) is refused the same way: a digest is
//! only ever created with the database, and a missing database file is refused by
//! [`crate::DataDir::open`].
//! What it cannot see: the whole file put back to an earlier state, digest included; the
//! generation and anchor that `efsctl accept-system` and `efsctl status` print never go
//! backwards, so an operator who notes them elsewhere can, and so does a rollback witness
//! kept outside the data dir ([`crate::witness`]).
//!
//! After a failed write redb refuses every later write until the database is closed and
//! opened again. A write that failed because the disk was full (or a quota reached) therefore
//! has the database reopened before the next transaction, so that marks, users and grants
//! are written again once space is freed, without a restart (as the indexes do:
//! [`crate::redb_index`]). Any other I/O error is not recovered from: after a failed write
//! or fsync the kernel's page cache may hold data the disk did not take, which a reopen
//! would read as written. Writes are then refused until the server is restarted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use efs_format::{Key32, MacKey, wrap};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::digest::{Accumulator, DigestCheck, DigestKey, Layout};
use crate::error::{CoreError, Result};
use crate::keyparts::StarterKey;
use crate::labels;
use crate::witness::Witness;

const USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("users");
const FILESYSTEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("filesystems");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// The digest (row `digest`), reserved.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_DIGEST: &str = "digest";

/// A user's or filesystem's record is padded with zeros to a multiple of this many bytes
/// before it is sealed, so that its stored size tells the length of the name (and of a user's
/// grants) only to within this much, instead of to the byte. Records sealed before 2026-12-06
/// have no padding; every reader, older ones too, decodes the encoding and ignores what
/// follows (this one: only zeros). Secrets are not padded (see [`SystemDb::put_secret`]).
pub const SYSTEM_RECORD_PAD: usize = 64;

/// A record's plaintext: its postcard encoding, then zeros up to a multiple of
/// [`SYSTEM_RECORD_PAD`] bytes.
fn encode_record<T: Serialize>(v: &T) -> Zeroizing<Vec<u8>> {
    // Sized first, so that the buffer holding names, keys and grants is never reallocated
    // (which would leave an unwiped copy behind).
    let size = postcard::serialize_with_flavor(v, postcard::ser_flavors::Size::default())
        .expect("sizing a record cannot fail");
    let padded = size.div_ceil(SYSTEM_RECORD_PAD) * SYSTEM_RECORD_PAD;
    let mut plain = Zeroizing::new(
        postcard::to_extend(v, Vec::with_capacity(padded))
            .expect("serialising to a Vec cannot fail"),
    );
    plain.resize(padded, 0);
    plain
}

/// Decodes a record's plaintext: the encoding, then nothing but zeros (the padding; none in
/// older records). Anything else is refused as corrupt.
fn decode_record<T: for<'de> Deserialize<'de>>(plain: &[u8]) -> Result<T> {
    let (v, padding) =
        postcard::take_from_bytes::<T>(plain).map_err(|_| CoreError::Corrupt("system record"))?;
    if padding.iter().any(|&b| b != 0) {
        return Err(CoreError::Corrupt("system record"));
    }
    Ok(v)
}

/// A user's access to one filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// Filesystem name.
    pub fs: String,
    /// Read-only access.
    pub read_only: bool,
}

/// A user as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// Raw Ed25519 public key.
    pub public_key: [u8; 32],
    /// Filesystems granted.
    pub grants: Vec<GrantRecord>,
    /// Bumped to revoke every token issued before.
    pub generation: u64,
    /// Creation time, Unix ms.
    pub created_ms: i64,
    /// SHA-256 of the client certificate (DER) bound to this user, if any.
    #[serde(default)]
    pub cert_sha256: Option<[u8; 32]>,
}

/// OpenSSH's fingerprint of a raw Ed25519 public key: `SHA256:` + base64 (no padding) of
/// SHA-256 of its `ssh-ed25519` wire blob, as `ssh-keygen -lf KEY.pub` prints it. Here so
/// that the audit log (which names keys by it) and efsctl's output agree.
pub fn public_key_fingerprint(key: &[u8; 32]) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [b"ssh-ed25519".as_slice(), key.as_slice()] {
        let len = u32::try_from(part.len()).expect("11 or 32 bytes fit in a u32");
        h.update(len.to_be_bytes());
        h.update(part);
    }
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(h.finalize())
    )
}

/// A filesystem as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FsRecord {
    /// Name.
    pub name: String,
    /// Random id; also the name of its directory under `fs/`.
    pub id: [u8; 16],
    /// Creation time, Unix ms.
    pub created_ms: i64,
}

/// The open system database.
pub struct SystemDb {
    path: PathBuf,
    /// `None` between a close and a successful reopen ([`Health::Reopen`]).
    db: RwLock<Option<Arc<Database>>>,
    /// What the last failed write said about the storage; held only briefly (never while
    /// waiting for a reopen), so that a transaction failing during a reopen can note it.
    health: Mutex<Health>,
    tag: MacKey,
    record: Key32,
    secret: Key32,
    digest: DigestKey,
    /// The injected fault of the next commit of a filesystem row ([`Fault`] as a `u8`;
    /// tests).
    fault: AtomicU8,
    /// Reads fail from now on (set by [`Fault::CommitLandsThenReadsFail`]).
    reads_fail: AtomicBool,
    /// The snapshot from before a commit that [`Fault::CommitLandsUnseen`] reported failed:
    /// the reads of [`SystemDb::filesystem`] and the like see it, not the commit.
    stale: Mutex<Option<Arc<redb::ReadTransaction>>>,
    /// The rollback witness, written after every write that moves the digest on
    /// ([`crate::witness`]); set once the open has checked the database against it.
    witness: std::sync::OnceLock<Arc<Witness>>,
}

/// The storage's state as the system database's writes found it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    /// Writes go ahead.
    Ok,
    /// A write failed on a full disk (or redb refuses writes after an earlier I/O failure):
    /// closed and opened again before the next transaction.
    Reopen,
    /// A write failed with another I/O error: writes are refused (the message says why)
    /// until a restart.
    Failed(String),
}

/// How long a reopen waits for the transactions still using the failed database: redb
/// keeps the file locked until the last one ends.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// A failed write to the system database, and whether it may have reached the disk all
/// the same.
#[derive(Debug)]
pub struct WriteFailed {
    /// What failed.
    pub error: CoreError,
    /// False when nothing was written: the write failed before its commit, or redb refused
    /// the commit before writing. True when the commit itself failed: redb writes the new
    /// header before its fsync but takes it as current only once the fsync succeeds, so
    /// after a failed fsync the write may be on disk while this process reads the state
    /// from before it; only the next open knows.
    pub may_have_landed: bool,
}

impl From<WriteFailed> for CoreError {
    fn from(f: WriteFailed) -> Self {
        f.error
    }
}

impl WriteFailed {
    fn before_commit(error: CoreError) -> Self {
        Self {
            error,
            may_have_landed: false,
        }
    }
}

/// A fault injected into the next commit of a filesystem row (a create-fs's or a restore's
/// registration) in the system database, as an I/O error would show it (tests of commits
/// whose outcome is unknown: see
/// [`crate::DataDir::inject_system_fault`]). Not an API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// None: commits as usual.
    Never,
    /// The commit does not happen, and reports an error.
    CommitFails,
    /// The commit happens (it is durable), then reports an error: an fsync that failed
    /// after the data reached the disk.
    CommitLandsThenFails,
    /// As [`Fault::CommitLandsThenFails`], and every read after it fails too (redb refuses
    /// everything after an I/O error), until [`Fault::Never`] is injected.
    CommitLandsThenReadsFail,
    /// As [`Fault::CommitLandsThenFails`], and the reads of rows (users, filesystems) after
    /// it still see the state from before the commit, until [`Fault::Never`] is injected:
    /// what redb does after an fsync that failed once the new header was written (it takes
    /// the new state as current only after the fsync). Reading the row back says it is not
    /// there, while the next open finds it.
    CommitLandsUnseen,
}

/// The system database's digest as an open found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemTrust {
    /// The database was created now, with its digest.
    Created,
    /// The rows are exactly the set the digest describes.
    Holds {
        /// Writes since the database was created.
        generation: u64,
        /// A short keyed fingerprint of this state (hex), to note outside the data dir.
        anchor: String,
    },
    /// The rows differ from the digest (or it is missing or unreadable) and the open was
    /// told it may accept them: nothing is written until [`SystemDb::accept_now`] (the
    /// `accept-system` command, once the data dir is open and its audit log with it).
    Pending {
        /// What was found (see [`SystemDb::describe`]).
        found: String,
    },
    /// Accepted by [`SystemDb::accept_now`]: the digest now describes the rows.
    Accepted {
        /// What was found (see [`SystemDb::describe`]).
        found: String,
        /// The new digest's generation: one past the one the old digest claimed (not
        /// verified: it was part of what differed), or 1.
        generation: u64,
        /// Its anchor.
        anchor: String,
    },
}

/// Why an open fails when no row of the system database decrypts.
const WRONG_KEYS: &str = "the system database does not open under these key parts (no row decrypts): \
    is system/keyparts.json from another state of this data dir (from before a rekey-starter?)? \
    Restore the data dir from a copy you trust";

/// The digest's element key of one row: table name, a zero byte, the row key's length (u32
/// BE) and the row key. The length keeps a row (K ‖ b, v) from hashing like (K, b ‖ v).
fn element_key(table: &str, key: &[u8]) -> Vec<u8> {
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes();
    [table.as_bytes(), &[0], &len, key].concat()
}

fn ix<E: std::fmt::Display>(e: E) -> CoreError {
    CoreError::Index(e.to_string())
}

fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Why writes are refused after an I/O error other than a full disk.
fn io_failed_message(e: &std::io::Error) -> String {
    format!(
        "the disk of the system database reported an I/O error ({e}): its writes (users, grants, filesystems, marks) are refused from now on, since the kernel may hold data the disk did not take; check the device (kernel log, SMART), and restart efs-server once it is sound (after a reboot)"
    )
}

impl SystemDb {
    /// Creates a new database, with the digest of its empty set (a new data dir, or the
    /// one `rekey-starter` builds). An existing file is refused.
    pub fn create(path: &Path, starter: &StarterKey) -> Result<Self> {
        if path.exists() {
            return Err(CoreError::Invalid(format!(
                "{} exists already: not creating a system database over it",
                path.display()
            )));
        }
        Ok(Self::open_with(path, starter, false, true)?.0)
    }

    /// Opens an existing database, which must match its digest (else
    /// [`CoreError::SystemHold`]).
    pub fn open(path: &Path, starter: &StarterKey) -> Result<Self> {
        Ok(Self::open_checked(path, starter, false)?.0)
    }

    /// Opens an existing database. `accept`: one that does not match its digest (or has
    /// none) opens as [`SystemTrust::Pending`], for [`SystemDb::accept_now`]; otherwise that
    /// is refused with [`CoreError::SystemHold`]; rows that do not decrypt are refused with
    /// [`CoreError::SystemRowsCorrupt`] either way. A missing file is refused (it is not
    /// created again: users and grants would vanish silently).
    pub fn open_checked(
        path: &Path,
        starter: &StarterKey,
        accept: bool,
    ) -> Result<(Self, SystemTrust)> {
        if !path.exists() {
            return Err(CoreError::Invalid(format!(
                "{} is missing: this data dir's users, grants, filesystems and secrets are gone \
                 (restore the data dir from a copy you trust)",
                path.display()
            )));
        }
        Self::open_with(path, starter, accept, false)
    }

    fn open_with(
        path: &Path,
        starter: &StarterKey,
        accept: bool,
        creating: bool,
    ) -> Result<(Self, SystemTrust)> {
        let db = crate::redb_index::open_redb(path, None).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => CoreError::Index(
                "the data dir is in use by another process (is efs-server running? then efsctl talks to it through system/admin.sock)".into(),
            ),
            e => ix(e),
        })?;
        let me = Self {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Arc::new(db))),
            health: Mutex::new(Health::Ok),
            tag: MacKey::new(&starter.derive(labels::SYSTEM_TAG)),
            record: starter.derive(labels::SYSTEM_RECORD),
            secret: starter.derive(labels::SYSTEM_SECRET_WRAP),
            digest: DigestKey::for_system(&starter.derive(labels::SYSTEM_DIGEST)),
            fault: AtomicU8::new(Fault::Never as u8),
            reads_fail: AtomicBool::new(false),
            stale: Mutex::new(None),
            witness: std::sync::OnceLock::new(),
        };
        if creating {
            // The tables and the empty set's digest in one transaction: a database left
            // without its digest by a crash here is refused like one whose digest was
            // deleted (the data dir, or the re-keying that created it, is not finished).
            let w = me.begin_write()?;
            {
                w.open_table(USERS).map_err(ix)?;
                w.open_table(FILESYSTEMS).map_err(ix)?;
                w.open_table(SECRETS).map_err(ix)?;
                let mut meta = w.open_table(META).map_err(ix)?;
                let sealed = Accumulator::empty().seal(&me.digest);
                meta.insert(META_DIGEST, sealed.as_slice()).map_err(ix)?;
            }
            w.commit().map_err(ix)?;
            return Ok((me, SystemTrust::Created));
        }
        let trust = match me.check()?.0 {
            DigestCheck::Holds {
                generation, anchor, ..
            } => SystemTrust::Holds { generation, anchor },
            other => {
                // Rows that do not open under these keys at all are not a change but the
                // wrong keys (keyparts.json from another state of the data dir, say):
                // accepting them would only seal a digest the right keys then refuse.
                let (rows, failing) = me.count_failing_rows()?;
                if rows > 0 && failing == rows {
                    return Err(CoreError::Invalid(WRONG_KEYS.into()));
                }
                if failing > 0 {
                    return Err(CoreError::SystemRowsCorrupt(format!(
                        "{}; {failing} of its {rows} rows do not decrypt (rows EFS did not write)",
                        Self::describe(&other)
                    )));
                }
                if !accept {
                    return Err(CoreError::SystemHold(Self::describe(&other)));
                }
                SystemTrust::Pending {
                    found: Self::describe(&other),
                }
            }
        };
        Ok((me, trust))
    }

    /// How many rows the three tables hold, and how many of them do not decrypt (and
    /// parse) under this database's keys.
    fn count_failing_rows(&self) -> Result<(usize, usize)> {
        let r = self.reader()?.begin_read().map_err(ix)?;
        let (mut rows, mut failing) = (0, 0);
        for (def, table) in [(USERS, "users"), (FILESYSTEMS, "filesystems")] {
            let t = r.open_table(def).map_err(ix)?;
            for item in t.iter().map_err(ix)? {
                let (k, v) = item.map_err(ix)?;
                rows += 1;
                let ok = wrap::open(&self.record, &Self::aad(table, k.value()), v.value())
                    .ok()
                    .is_some_and(|plain| match table {
                        "users" => decode_record::<UserRecord>(&plain).is_ok(),
                        _ => decode_record::<FsRecord>(&plain).is_ok(),
                    });
                failing += usize::from(!ok);
            }
        }
        let t = r.open_table(SECRETS).map_err(ix)?;
        for item in t.iter().map_err(ix)? {
            let (k, v) = item.map_err(ix)?;
            rows += 1;
            let aad = [labels::AAD_SYSTEM_SECRET, k.value().as_bytes()].concat();
            failing += usize::from(wrap::open(&self.secret, &aad, v.value()).is_err());
        }
        Ok((rows, failing))
    }

    /// Every row decrypts: `Err` otherwise (such rows are never accepted).
    fn require_rows_open(&self) -> Result<()> {
        match self.count_failing_rows()? {
            (_, 0) => Ok(()),
            (rows, failing) if failing == rows => Err(CoreError::Invalid(WRONG_KEYS.into())),
            (rows, failing) => Err(CoreError::SystemRowsCorrupt(format!(
                "{failing} of the system database's {rows} rows do not decrypt (rows EFS did not write)"
            ))),
        }
    }

    /// Trusts the rows as they are now: every row must open, then the digest is recomputed
    /// and stored, its generation one past what the old one claimed (or 1). Returns
    /// [`SystemTrust::Holds`] when the rows match the digest already (nothing written).
    pub fn accept_now(&self) -> Result<SystemTrust> {
        let (check, mut acc) = self.check()?;
        let found = match check {
            DigestCheck::Holds {
                generation, anchor, ..
            } => return Ok(SystemTrust::Holds { generation, anchor }),
            other => other,
        };
        self.require_rows_open()?;
        let claimed = match &found {
            DigestCheck::Differs { generation, .. } => *generation,
            _ => 0,
        };
        acc.set_generation(claimed.saturating_add(1));
        let sealed = acc.seal(&self.digest);
        let w = self.begin_write()?;
        {
            let mut meta = w.open_table(META).map_err(|e| self.note(e))?;
            meta.insert(META_DIGEST, sealed.as_slice())
                .map_err(|e| self.note(e))?;
        }
        w.commit().map_err(|e| self.note(e))?;
        self.witness(acc.generation(), &sealed);
        // Checked again from the database: what is stored now must hold.
        match self.check()?.0 {
            DigestCheck::Holds {
                generation, anchor, ..
            } => Ok(SystemTrust::Accepted {
                found: Self::describe(&found),
                generation,
                anchor,
            }),
            _ => Err(CoreError::Corrupt(
                "the system database changed while it was accepted",
            )),
        }
    }

    /// Continues the generation of another database's digest (`rekey-starter` rebuilds
    /// the database under a new starter key: the generation an operator noted must not go
    /// back). Keeps the larger of the two.
    pub fn continue_generation(&self, at_least: u64) -> Result<()> {
        let w = self.begin_write()?;
        let sealed;
        {
            let mut meta = w.open_table(META).map_err(|e| self.note(e))?;
            let mut acc = self.stored_digest(&meta)?;
            if acc.generation() >= at_least {
                return Ok(());
            }
            acc.set_generation(at_least);
            sealed = acc.seal(&self.digest);
            meta.insert(META_DIGEST, sealed.as_slice())
                .map_err(|e| self.note(e))?;
        }
        w.commit().map_err(|e| self.note(e))?;
        self.witness(at_least, &sealed);
        Ok(())
    }

    /// What the rollback witness at `path`, whose file says `seen` (`None`: there is no
    /// file), says of this database: `Some(why)` when it is behind the witness (see
    /// [`crate::witness::judge`]; a digest that does not hold is judged by the generation it
    /// claims), or when there is no file but the database has had a witness
    /// ([`crate::witness::SECRET_WITNESS`]). Writes nothing.
    pub fn judge_witness(
        &self,
        path: &Path,
        seen: Option<&crate::witness::Seen>,
    ) -> Result<Option<String>> {
        let Some(seen) = seen else {
            return Ok(self.secret(crate::witness::SECRET_WITNESS)?.map(|_| {
                format!(
                    "the rollback witness {} is missing, but this data dir has had one: its storage not mounted, or the file removed? (a data dir put back whole could not be told); if it is lost for good, efsctl accept-system (with the same --rollback-witness) starts a new one",
                    path.display()
                )
            }));
        };
        // Another data dir's witness is refused, not judged (it would hold this one as put
        // back whenever the other wrote).
        let recorded = self.secret(crate::witness::SECRET_WITNESS)?;
        let unrecorded =
            crate::witness::check_data_dir(path, seen, recorded.as_deref().map(|v| v.as_slice()))?;
        let behind = match self.digest_state()? {
            DigestCheck::Holds {
                generation, anchor, ..
            } => crate::witness::judge(path, seen, generation, Some(&anchor)),
            DigestCheck::Differs { generation, .. } => {
                crate::witness::judge(path, seen, generation, None)
            }
            DigestCheck::Unreadable => None,
        };
        Ok(match (unrecorded, behind) {
            (Some(u), Some(b)) => Some(format!("{u}; and {b}")),
            (u, b) => u.or(b),
        })
    }

    /// Has the rollback witness follow every write from now on. With `trusted` (the
    /// database holds its digest and nothing holds it), the witness is brought up to the
    /// database now, and the database records that it has one; otherwise nothing is written
    /// until the database is accepted (and its generation is past the witness's: the witness
    /// never goes back).
    pub fn follow_witness(&self, witness: Arc<Witness>, trusted: bool) -> Result<()> {
        let _ = self.witness.set(witness);
        if trusted {
            self.witness_trusted(false)?;
        }
        Ok(())
    }

    /// The database is trusted as it is (it holds, or was just accepted: `accepted`): if it
    /// has a rollback witness, it records it and brings the witness up to it. The data dir's
    /// witness id is kept; one recorded before witnesses had ids gets a new one, or, when
    /// `accepted` (an operator accepted the data dir with this witness), the one the file names
    /// (this data dir put back from a copy older than its record); a copy of another data dir
    /// accepted with a new file gets a new one. The file and the data dir's path are recorded
    /// when there was no record (whichever process gives the first witness), when `accepted`,
    /// or when this process records witnesses (the server: [`Witness::records`]) and they
    /// changed.
    pub fn witness_trusted(&self, accepted: bool) -> Result<()> {
        use crate::witness::{Recorded, SECRET_WITNESS};
        let Some(w) = self.witness.get() else {
            return Ok(());
        };
        let known = self
            .secret(SECRET_WITNESS)?
            .and_then(|v| Recorded::decode(&v));
        let id = match &known {
            // A copy of another data dir accepted with a witness of its own (a new file, or
            // one of the first layout): an id of its own, or the two would not be told apart.
            Some(r) if accepted && r.root != w.root() && w.data_dir().is_none() => None,
            Some(r) => Some(r.id),
            None => w.data_dir().filter(|_| accepted),
        }
        .unwrap_or_else(|| Recorded::new(w.path(), w.root()).id);
        w.set_data_dir(id);
        let want = Recorded {
            id,
            path: w.path().to_path_buf(),
            root: w.root().to_path_buf(),
        };
        let write = match &known {
            None => true,
            Some(k) => k != &want && (accepted || w.records()),
        };
        if write {
            if let Some(old) = known.as_ref().filter(|k| k.root != want.root) {
                tracing::warn!(
                    "the data dir was at {} when its rollback witness was recorded, and is at {} now: recorded here (a copy must have a witness file of its own)",
                    old.root.display(),
                    want.root.display()
                );
            }
            if let Some(old) = known.as_ref().filter(|k| k.path != want.path)
                && old.path.exists()
            {
                tracing::warn!(
                    "the rollback witness is {} now, and was {}: remove the old file (a copy of this data dir from before, put back and opened without --rollback-witness, would be judged by it)",
                    want.path.display(),
                    old.path.display()
                );
            }
            // (A write: the witness records the digest after it, naming the data dir.)
            self.put_secret(SECRET_WITNESS, &want.encode())?;
        }
        self.witness_now()
    }

    /// The rollback witness this database follows, if any: where, at which generation, and
    /// whether its last write failed.
    pub fn witness_state(&self) -> Option<crate::witness::WitnessState> {
        self.witness.get().map(|w| w.state())
    }

    /// Whether the database records that it has a rollback witness
    /// ([`crate::witness::SECRET_WITNESS`]).
    pub fn has_had_witness(&self) -> Result<bool> {
        Ok(self.secret(crate::witness::SECRET_WITNESS)?.is_some())
    }

    /// Brings the rollback witness, if there is one, up to the database as it is now (when
    /// its digest holds).
    pub fn witness_now(&self) -> Result<()> {
        if let Some(w) = self.witness.get()
            && let DigestCheck::Holds {
                generation, anchor, ..
            } = self.digest_state()?
        {
            w.record(generation, &anchor);
        }
        Ok(())
    }

    /// Records a committed digest (`sealed`, at `generation`) in the rollback witness, if
    /// there is one.
    fn witness(&self, generation: u64, sealed: &[u8]) {
        if let Some(w) = self.witness.get() {
            w.record(generation, &crate::digest::anchor(&self.digest, sealed));
        }
    }

    /// The stored digest, unmasked, for an update in the same transaction. Checked at
    /// open: unreadable now means it was damaged while open.
    fn stored_digest(&self, meta: &redb::Table<&str, &[u8]>) -> Result<Accumulator> {
        meta.get(META_DIGEST)
            .map_err(ix)?
            .and_then(|v| Accumulator::open(&self.digest, v.value()))
            // Layout 1, the only one of the system database (layout 2 is an index's).
            .filter(|a| a.layout() == Layout::V1)
            .ok_or(CoreError::Corrupt("the system database's digest"))
    }

    /// The names of the stored secrets.
    fn secret_names(&self) -> Result<Vec<String>> {
        let r = self.reader()?.begin_read().map_err(ix)?;
        let t = r.open_table(SECRETS).map_err(ix)?;
        let mut names = Vec::new();
        for item in t.iter().map_err(ix)? {
            names.push(item.map_err(ix)?.0.value().to_owned());
        }
        Ok(names)
    }

    /// What a failed check found, for the operator.
    pub fn describe(check: &DigestCheck) -> String {
        match check {
            DigestCheck::Holds { .. } => "the system database matches its digest".into(),
            DigestCheck::Differs {
                claimed_entries,
                entries,
                ..
            } => format!(
                "the system database differs from its digest: a user, grant, filesystem or secret was changed, removed, added or put back outside EFS ({entries} rows found, the digest describes {claimed_entries})"
            ),
            DigestCheck::Unreadable => "the system database has no readable digest: it was deleted or damaged, or the data dir is from before system digests".into(),
        }
    }

    /// Every row of the three tables against the stored digest (one snapshot), and the
    /// accumulator of what was found.
    fn check(&self) -> Result<(DigestCheck, Accumulator)> {
        let r = self.reader()?.begin_read().map_err(ix)?;
        let mut found = Accumulator::empty();
        for (def, table) in [(USERS, "users"), (FILESYSTEMS, "filesystems")] {
            let t = match r.open_table(def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(ix(e)),
            };
            for item in t.iter().map_err(ix)? {
                let (k, v) = item.map_err(ix)?;
                found.insert(&self.digest, &element_key(table, k.value()), v.value());
            }
        }
        match r.open_table(SECRETS) {
            Ok(t) => {
                for item in t.iter().map_err(ix)? {
                    let (k, v) = item.map_err(ix)?;
                    found.insert(
                        &self.digest,
                        &element_key("secrets", k.value().as_bytes()),
                        v.value(),
                    );
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(ix(e)),
        }
        let stored = match r.open_table(META) {
            Ok(t) => t.get(META_DIGEST).map_err(ix)?.map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(ix(e)),
        };
        Ok((
            DigestCheck::compare(&self.digest, stored.as_deref(), &found),
            found,
        ))
    }

    /// The digest's generation and anchor now (for `efsctl status`).
    pub fn digest_state(&self) -> Result<DigestCheck> {
        Ok(self.check()?.0)
    }

    /// Writes (`Some`) or removes (`None`) row `key` of `table`, updating the digest in
    /// the same transaction. Returns whether the row existed.
    fn write_row(
        &self,
        table: &str,
        key: &[u8],
        value: Option<&[u8]>,
        apply: impl FnOnce(&redb::WriteTransaction) -> Result<Option<Vec<u8>>>,
    ) -> std::result::Result<bool, WriteFailed> {
        let before = WriteFailed::before_commit;
        let w = self.begin_write().map_err(before)?;
        let old = apply(&w).map_err(before)?;
        let (sealed, generation);
        {
            let mut meta = w.open_table(META).map_err(|e| before(self.note(e)))?;
            let mut acc = self.stored_digest(&meta).map_err(before)?;
            let ek = element_key(table, key);
            if let Some(old) = &old {
                acc.remove(&self.digest, &ek, old);
            }
            if let Some(new) = value {
                acc.insert(&self.digest, &ek, new);
            }
            acc.bump();
            sealed = acc.seal(&self.digest);
            generation = acc.generation();
            meta.insert(META_DIGEST, sealed.as_slice())
                .map_err(|e| before(self.note(e)))?;
        }
        self.commit(w, table == "filesystems")?;
        self.witness(generation, &sealed);
        Ok(old.is_some())
    }

    /// Injects `fault` into the next commit of a filesystem row ([`Fault::Never`] also lets
    /// reads work again).
    #[doc(hidden)]
    pub fn inject(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
        if fault == Fault::Never {
            self.reads_fail.store(false, Ordering::SeqCst);
            drop(
                self.stale
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
        }
    }

    /// Commits `w`, or fails as an injected [`Fault`] says (once, and only in a commit of a
    /// filesystem row: `fs_row`).
    fn commit(
        &self,
        w: redb::WriteTransaction,
        fs_row: bool,
    ) -> std::result::Result<(), WriteFailed> {
        let failed = |e: redb::CommitError| match e {
            // Refused before anything was written.
            redb::CommitError::TransactionPoisoned => WriteFailed::before_commit(ix(e)),
            e => WriteFailed {
                error: self.note(e),
                may_have_landed: true,
            },
        };
        let injected = |may_have_landed| WriteFailed {
            error: CoreError::Index("injected fault: the commit reported an I/O error".into()),
            may_have_landed,
        };
        if !fs_row {
            return w.commit().map_err(failed);
        }
        match self.fault.swap(Fault::Never as u8, Ordering::SeqCst) {
            f if f == Fault::CommitFails as u8 => {
                w.abort()
                    .map_err(|e| WriteFailed::before_commit(self.note(e)))?;
                Err(injected(false))
            }
            f if f == Fault::CommitLandsThenFails as u8 => {
                w.commit().map_err(failed)?;
                Err(injected(true))
            }
            f if f == Fault::CommitLandsThenReadsFail as u8 => {
                w.commit().map_err(failed)?;
                self.reads_fail.store(true, Ordering::SeqCst);
                Err(injected(true))
            }
            f if f == Fault::CommitLandsUnseen as u8 => {
                // Not `reader()`: no reopen while this write transaction is open.
                let db = self
                    .db
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let before = db
                    .ok_or_else(|| CoreError::Index("the system database is closed".into()))
                    .and_then(|db| db.begin_read().map_err(ix))
                    .map_err(WriteFailed::before_commit)?;
                w.commit().map_err(failed)?;
                *self.stale.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(before));
                Err(injected(true))
            }
            _ => w.commit().map_err(failed),
        }
    }

    /// A read transaction for the rows (refused after an injected
    /// [`Fault::CommitLandsThenReadsFail`], the old snapshot after an injected
    /// [`Fault::CommitLandsUnseen`]).
    fn begin_read(&self) -> Result<Arc<redb::ReadTransaction>> {
        if self.reads_fail.load(Ordering::SeqCst) {
            return Err(CoreError::Index(
                "injected fault: reads fail after an I/O error".into(),
            ));
        }
        if let Some(r) = &*self.stale.lock().unwrap_or_else(PoisonError::into_inner) {
            return Ok(r.clone());
        }
        Ok(Arc::new(self.reader()?.begin_read().map_err(ix)?))
    }

    /// The database to read from: reopened first after a write failed on a full disk.
    fn reader(&self) -> Result<Arc<Database>> {
        self.database(false)
    }

    /// A write transaction: on the database reopened first after a write failed on a full
    /// disk; refused after any other I/O error.
    fn begin_write(&self) -> Result<redb::WriteTransaction> {
        self.database(true)?.begin_write().map_err(|e| self.note(e))
    }

    fn database(&self, write: bool) -> Result<Arc<Database>> {
        let health = self
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match health {
            Health::Failed(why) if write => return Err(CoreError::Index(why)),
            Health::Reopen => self.reopen()?,
            Health::Ok | Health::Failed(_) => {}
        }
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                CoreError::Index(
                    "the system database is being reopened after a failed write: try again".into(),
                )
            })
    }

    /// Notes what a failed write says about the storage (see [`Health`]), and returns it as
    /// an error: a full disk stays an I/O error of its kind (the server answers it 507).
    fn note(&self, e: impl Into<redb::Error>) -> CoreError {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match e.into() {
            redb::Error::Io(io) if is_storage_full(&io) => {
                if *health == Health::Ok {
                    *health = Health::Reopen;
                }
                CoreError::Io(std::io::Error::new(
                    io.kind(),
                    format!(
                        "the system database could not be written ({io}): free space on its disk; it is written again then, without a restart"
                    ),
                ))
            }
            redb::Error::Io(io) => {
                let why = io_failed_message(&io);
                if !matches!(*health, Health::Failed(_)) {
                    tracing::error!("{why}");
                    *health = Health::Failed(why.clone());
                }
                CoreError::Index(why)
            }
            // Refused after an I/O failure met elsewhere (a read, say), which only a reopen
            // clears; a failed write would have been noted already.
            redb::Error::PreviousIo => {
                if *health == Health::Ok {
                    *health = Health::Reopen;
                }
                CoreError::Index(
                    "the system database refused a write after an earlier I/O error: it is reopened before the next one".into(),
                )
            }
            e => ix(e),
        }
    }

    /// Closes the database and opens it again (redb recovers on open), unless another
    /// thread did meanwhile. Transactions still using the old one end first: redb keeps the
    /// file locked until the last one does.
    fn reopen(&self) -> Result<()> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if *self.health.lock().unwrap_or_else(PoisonError::into_inner) != Health::Reopen {
            return Ok(());
        }
        drop(
            self.stale
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        drop(slot.take());
        let deadline = Instant::now() + REOPEN_WAIT;
        loop {
            match crate::redb_index::open_redb(&self.path, None) {
                Ok(db) => {
                    *slot = Some(Arc::new(db));
                    let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
                    if *health == Health::Reopen {
                        *health = Health::Ok;
                    }
                    tracing::warn!(
                        "the system database was reopened after a write failed on a full disk: it takes writes again"
                    );
                    return Ok(());
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(redb::DatabaseError::Storage(redb::StorageError::Io(io)))
                    if is_storage_full(&io) =>
                {
                    return Err(CoreError::Io(std::io::Error::new(
                        io.kind(),
                        format!(
                            "the system database could not be reopened after a write failed on a full disk ({io}): free space on its disk; it is tried again at the next use"
                        ),
                    )));
                }
                Err(e) => {
                    return Err(CoreError::Index(format!(
                        "the system database could not be reopened after a failed write ({e}): it is tried again at the next use; if this persists, restart efs-server"
                    )));
                }
            }
        }
    }

    fn name_tag(&self, table: &str, name: &str) -> [u8; 32] {
        self.tag.mac(&[table.as_bytes(), &[0], name.as_bytes()])
    }

    fn aad(table: &str, key: &[u8]) -> Vec<u8> {
        [labels::AAD_SYSTEM_RECORD, table.as_bytes(), &[0], key].concat()
    }

    fn put<T: Serialize>(
        &self,
        def: TableDefinition<&[u8], &[u8]>,
        table: &str,
        name: &str,
        v: &T,
    ) -> std::result::Result<(), WriteFailed> {
        let key = self.name_tag(table, name);
        let plain = encode_record(v);
        let sealed = wrap::seal(&self.record, &Self::aad(table, &key), &plain);
        self.write_row(table, &key, Some(&sealed), |w| {
            let mut t = w.open_table(def).map_err(|e| self.note(e))?;
            let old = t
                .insert(key.as_slice(), sealed.as_slice())
                .map_err(|e| self.note(e))?
                .map(|v| v.value().to_vec());
            Ok(old)
        })?;
        Ok(())
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        def: TableDefinition<&[u8], &[u8]>,
        table: &str,
        name: &str,
    ) -> Result<Option<T>> {
        let key = self.name_tag(table, name);
        let r = self.begin_read()?;
        let t = r.open_table(def).map_err(ix)?;
        let Some(v) = t.get(key.as_slice()).map_err(ix)? else {
            return Ok(None);
        };
        let plain = wrap::open(&self.record, &Self::aad(table, &key), v.value())?;
        Ok(Some(decode_record(&plain)?))
    }

    fn remove(&self, def: TableDefinition<&[u8], &[u8]>, table: &str, name: &str) -> Result<bool> {
        let key = self.name_tag(table, name);
        Ok(self.write_row(table, &key, None, |w| {
            let mut t = w.open_table(def).map_err(|e| self.note(e))?;
            let old = t
                .remove(key.as_slice())
                .map_err(|e| self.note(e))?
                .map(|v| v.value().to_vec());
            Ok(old)
        })?)
    }

    fn all<T: for<'de> Deserialize<'de>>(
        &self,
        def: TableDefinition<&[u8], &[u8]>,
        table: &str,
    ) -> Result<Vec<T>> {
        let r = self.begin_read()?;
        let t = r.open_table(def).map_err(ix)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(ix)? {
            let (k, v) = item.map_err(ix)?;
            let plain = wrap::open(&self.record, &Self::aad(table, k.value()), v.value())?;
            out.push(decode_record(&plain)?);
        }
        Ok(out)
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.get(USERS, "users", name)
    }

    /// Inserts or replaces a user.
    pub fn put_user(&self, u: &UserRecord) -> Result<()> {
        Ok(self.put(USERS, "users", &u.name, u)?)
    }

    /// Removes a user; false if absent.
    pub fn remove_user(&self, name: &str) -> Result<bool> {
        self.remove(USERS, "users", name)
    }

    /// Every user.
    pub fn users(&self) -> Result<Vec<UserRecord>> {
        let mut v: Vec<UserRecord> = self.all(USERS, "users")?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// A filesystem by name.
    pub fn filesystem(&self, name: &str) -> Result<Option<FsRecord>> {
        self.get(FILESYSTEMS, "filesystems", name)
    }

    /// Inserts a filesystem. A failure says whether the row may be on disk all the same.
    pub fn put_filesystem(&self, f: &FsRecord) -> std::result::Result<(), WriteFailed> {
        self.put(FILESYSTEMS, "filesystems", &f.name, f)
    }

    /// Every filesystem.
    pub fn filesystems(&self) -> Result<Vec<FsRecord>> {
        let mut v: Vec<FsRecord> = self.all(FILESYSTEMS, "filesystems")?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Stores a secret (signing key, TLS key) sealed under the starter key. Not padded: what
    /// EFS stores here has a fixed size (32-byte keys and roots, the 48-byte audit mark, the
    /// 8-byte index generation, the 1-byte layout mark, a P-256 PKCS#8 key), except the
    /// generated TLS certificate, whose size follows the host name but which is public (the
    /// server writes it in clear to `system/tls-cert.pem`).
    pub fn put_secret(&self, name: &str, secret: &[u8]) -> Result<()> {
        let aad = [labels::AAD_SYSTEM_SECRET, name.as_bytes()].concat();
        let sealed = wrap::seal(&self.secret, &aad, secret);
        self.write_row("secrets", name.as_bytes(), Some(&sealed), |w| {
            let mut t = w.open_table(SECRETS).map_err(|e| self.note(e))?;
            let old = t
                .insert(name, sealed.as_slice())
                .map_err(|e| self.note(e))?
                .map(|v| v.value().to_vec());
            Ok(old)
        })?;
        Ok(())
    }

    /// Removes a secret; whether there was one.
    pub fn delete_secret(&self, name: &str) -> Result<bool> {
        Ok(self.write_row("secrets", name.as_bytes(), None, |w| {
            let mut t = w.open_table(SECRETS).map_err(|e| self.note(e))?;
            let old = t
                .remove(name)
                .map_err(|e| self.note(e))?
                .map(|v| v.value().to_vec());
            Ok(old)
        })?)
    }

    /// A stored secret, unsealed.
    pub fn secret(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let aad = [labels::AAD_SYSTEM_SECRET, name.as_bytes()].concat();
        let r = self.reader()?.begin_read().map_err(ix)?;
        let t = r.open_table(SECRETS).map_err(ix)?;
        let Some(v) = t.get(name).map_err(ix)? else {
            return Ok(None);
        };
        Ok(Some(wrap::open(&self.secret, &aad, v.value())?))
    }

    /// Copies everything into `other` (a database under another starter key: re-keying
    /// the starter key). Every table must be listed here.
    pub fn copy_to(&self, other: &SystemDb) -> Result<()> {
        for u in self.users()? {
            other.put_user(&u)?;
        }
        for f in self.filesystems()? {
            other.put_filesystem(&f)?;
        }
        for name in self.secret_names()? {
            let v = self
                .secret(&name)?
                .ok_or(CoreError::Corrupt("a secret vanished while copying"))?;
            other.put_secret(&name, &v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn user(name: &str) -> UserRecord {
        UserRecord {
            name: name.into(),
            public_key: [7; 32],
            grants: Vec::new(),
            generation: 0,
            created_ms: 0,
            cert_sha256: None,
        }
    }

    fn starter() -> StarterKey {
        StarterKey::for_tests(Key32::from_slice(&[3; 32]).expect("32 bytes"))
    }

    fn new_db(dir: &Path) -> SystemDb {
        SystemDb::create(&dir.join("system.redb"), &starter()).unwrap()
    }

    /// A data dir whose witness was recorded by an EFS before witnesses had ids and paths
    /// (the secret `[1]`, a witness file of the first layout) is upgraded at its first
    /// trusted open with the option: the database records an id, the file and the data dir,
    /// and the file names the data dir from the write that records them. Trusted again,
    /// nothing is rewritten.
    #[test]
    fn a_witness_recorded_before_ids_is_upgraded() {
        use crate::witness::{Recorded, SECRET_WITNESS, Witness};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir(&root).unwrap();
        let db = new_db(&root);
        db.put_secret(SECRET_WITNESS, &[1]).unwrap();
        let DigestCheck::Holds {
            generation, anchor, ..
        } = db.digest_state().unwrap()
        else {
            panic!("a new database's digest holds");
        };
        let path = dir.path().join("efs.witness");
        std::fs::write(
            &path,
            format!("efs rollback witness v1\ngeneration {generation}\nanchor {anchor}\n"),
        )
        .unwrap();
        let (w, seen) = Witness::open(&path, &root, false).unwrap();
        assert_eq!(seen.as_ref().unwrap().data_dir, None);
        assert_eq!(db.judge_witness(w.path(), seen.as_ref()).unwrap(), None);
        db.follow_witness(std::sync::Arc::new(w), true).unwrap();
        let recorded = Recorded::decode(&db.secret(SECRET_WITNESS).unwrap().unwrap())
            .expect("recorded with an id and the file");
        assert_eq!(recorded.path, path.canonicalize().unwrap());
        assert_eq!(recorded.root, root.canonicalize().unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("efs rollback witness v2\n")
                && text.ends_with(&format!("data-dir {}\n", hex::encode(recorded.id))),
            "{text}"
        );
        // Trusted again: the same record, nothing written.
        let before = db.digest_state().unwrap();
        db.witness_trusted(false).unwrap();
        assert_eq!(db.digest_state().unwrap(), before);
        let (w, seen) = Witness::open(&path, &root, false).unwrap();
        assert_eq!(seen.as_ref().unwrap().data_dir, Some(recorded.id));
        assert_eq!(db.judge_witness(w.path(), seen.as_ref()).unwrap(), None);
    }

    /// Two data dirs of the first layout sharing one witness file (the misconfiguration ids
    /// are there to catch): the second to be upgraded does not take the id the first wrote
    /// into the file (it did, and both then passed the id check for good), but one of its
    /// own, so that the first is refused as sharing another's witness.
    #[test]
    fn a_witness_shared_before_ids_is_told_apart_after_the_upgrade() {
        use crate::witness::{Recorded, SECRET_WITNESS, Witness};
        let dir = tempfile::tempdir().unwrap();
        let (root_a, root_b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&root_a).unwrap();
        std::fs::create_dir(&root_b).unwrap();
        let (a, b) = (new_db(&root_a), new_db(&root_b));
        for db in [&a, &b] {
            db.put_secret(SECRET_WITNESS, &[1]).unwrap();
        }
        let path = dir.path().join("shared.witness");
        // The file of the first layout, as the older EFS wrote it for A.
        let DigestCheck::Holds {
            generation, anchor, ..
        } = a.digest_state().unwrap()
        else {
            panic!("a new database's digest holds");
        };
        std::fs::write(
            &path,
            format!("efs rollback witness v1\ngeneration {generation}\nanchor {anchor}\n"),
        )
        .unwrap();
        // A upgrades first: the file names A.
        let (w, seen) = Witness::open(&path, &root_a, false).unwrap();
        assert_eq!(a.judge_witness(w.path(), seen.as_ref()).unwrap(), None);
        a.follow_witness(std::sync::Arc::new(w), true).unwrap();
        let id_a = Recorded::decode(&a.secret(SECRET_WITNESS).unwrap().unwrap())
            .unwrap()
            .id;
        // B, further on (more writes), is not held by the file, and gets an id of its own.
        for i in 0..5 {
            b.put_secret(&format!("filler-{i}"), &[i]).unwrap();
        }
        let (w, seen) = Witness::open(&path, &root_b, false).unwrap();
        assert_eq!(seen.as_ref().unwrap().data_dir, Some(id_a));
        assert_eq!(b.judge_witness(w.path(), seen.as_ref()).unwrap(), None);
        b.follow_witness(std::sync::Arc::new(w), true).unwrap();
        let id_b = Recorded::decode(&b.secret(SECRET_WITNESS).unwrap().unwrap())
            .unwrap()
            .id;
        assert_ne!(id_a, id_b);
        // A is now refused as sharing B's witness, not held as put back.
        let (w, seen) = Witness::open(&path, &root_a, false).unwrap();
        let e = a
            .judge_witness(w.path(), seen.as_ref())
            .unwrap_err()
            .to_string();
        assert!(e.contains("witnesses another data dir"), "{e}");
    }

    /// The sealed value stored for `name` in `table`.
    fn stored(
        db: &SystemDb,
        def: TableDefinition<&[u8], &[u8]>,
        table: &str,
        name: &str,
    ) -> Vec<u8> {
        let r = db.begin_read().unwrap();
        let t = r.open_table(def).unwrap();
        let v = t.get(db.name_tag(table, name).as_slice()).unwrap().unwrap();
        v.value().to_vec()
    }

    /// Seals `plain` as `name`'s user record and stores it (digest updated), as `put` does
    /// but as it is: the way records were sealed before the padding.
    fn put_user_plain(db: &SystemDb, name: &str, plain: &[u8]) {
        let key = db.name_tag("users", name);
        let sealed = wrap::seal(&db.record, &SystemDb::aad("users", &key), plain);
        db.write_row("users", &key, Some(&sealed), |w| {
            let mut t = w.open_table(USERS).unwrap();
            let old = t.insert(key.as_slice(), sealed.as_slice()).unwrap();
            Ok(old.map(|v| v.value().to_vec()))
        })
        .unwrap();
    }

    /// A user's or filesystem's record was sealed as it is: its stored size told the length
    /// of the user's or filesystem's name to the byte ("al" told from "nurse-kim" by a copy
    /// of the data dir). Padded, names of 1 to 60 bytes seal to at most two sizes, each the
    /// padding's multiple plus the wrap's overhead.
    #[test]
    fn record_sizes_tell_name_lengths_only_to_the_padding() {
        let t = tempfile::tempdir().unwrap();
        let db = new_db(t.path());
        let (mut users, mut filesystems) = (BTreeSet::new(), BTreeSet::new());
        for n in 1..=60u8 {
            let name = "u".repeat(n.into());
            db.put_user(&user(&name)).unwrap();
            users.insert(stored(&db, USERS, "users", &name).len());
            let fs = FsRecord {
                name: "f".repeat(n.into()),
                id: [n; 16],
                created_ms: 1_765_000_000_000,
            };
            db.put_filesystem(&fs).unwrap();
            filesystems.insert(stored(&db, FILESYSTEMS, "filesystems", &fs.name).len());
        }
        for sizes in [&users, &filesystems] {
            assert!(
                sizes
                    .iter()
                    .all(|s| (s - efs_format::WRAP_OVERHEAD).is_multiple_of(SYSTEM_RECORD_PAD)),
                "{sizes:?}"
            );
            assert!(sizes.len() <= 2, "{sizes:?}");
        }
        // And every one opens to what was sealed, after a reopen too (the digest holds and
        // the open's check finds every row readable).
        let mut kim = user("nurse-kim");
        kim.grants.push(GrantRecord {
            fs: "hiv-clinic".into(),
            read_only: true,
        });
        kim.cert_sha256 = Some([4; 32]);
        db.put_user(&kim).unwrap();
        drop(db);
        let db = SystemDb::open(&t.path().join("system.redb"), &starter()).unwrap();
        assert_eq!(db.count_failing_rows().unwrap(), (121, 0));
        let got = db.user("nurse-kim").unwrap().unwrap();
        assert_eq!((got.grants, got.cert_sha256), (kim.grants, kim.cert_sha256));
        assert_eq!(db.users().unwrap().len(), 61);
        let fs = db.filesystem(&"f".repeat(60)).unwrap().unwrap();
        assert_eq!((fs.id, fs.created_ms), ([60; 16], 1_765_000_000_000));
    }

    /// Records sealed before the padding (2026-12-06) have none and still open (and are
    /// padded when next written); bytes other than zeros after the encoding are refused as
    /// corrupt, by a read and by the open's check of the rows.
    #[test]
    fn unpadded_records_open_and_padding_must_be_zeros() {
        let t = tempfile::tempdir().unwrap();
        let db = new_db(t.path());
        let old = user("old-user");
        let unpadded = postcard::to_allocvec(&old).unwrap();
        assert_ne!(
            unpadded.len() % SYSTEM_RECORD_PAD,
            0,
            "the test needs an unpadded length"
        );
        put_user_plain(&db, "old-user", &unpadded);
        assert_eq!(db.user("old-user").unwrap().unwrap().name, "old-user");
        assert_eq!(db.users().unwrap().len(), 1);
        assert_eq!(db.count_failing_rows().unwrap(), (1, 0));

        let mut bad = postcard::to_allocvec(&user("bad-user")).unwrap();
        bad.resize(bad.len().div_ceil(SYSTEM_RECORD_PAD) * SYSTEM_RECORD_PAD, 0);
        *bad.last_mut().unwrap() = 1;
        put_user_plain(&db, "bad-user", &bad);
        assert!(matches!(db.user("bad-user"), Err(CoreError::Corrupt(_))));
        assert!(matches!(db.users(), Err(CoreError::Corrupt(_))));
        assert_eq!(db.count_failing_rows().unwrap(), (2, 1));
        assert!(decode_record::<UserRecord>(&bad).is_err());

        // Rewritten, the old record is padded.
        db.put_user(&old).unwrap();
        let len = stored(&db, USERS, "users", "old-user").len();
        assert_eq!((len - efs_format::WRAP_OVERHEAD) % SYSTEM_RECORD_PAD, 0);
    }

    /// A write that failed on a full disk has the database reopened before the next one
    /// (the real failure, on a real full disk: efs-server's tests/disk_full.rs).
    #[test]
    fn a_full_disk_reopens_before_the_next_write() {
        let t = tempfile::tempdir().unwrap();
        let db = new_db(t.path());
        let e = db.note(redb::StorageError::Io(std::io::Error::from_raw_os_error(
            28,
        )));
        assert!(
            matches!(&e, CoreError::Io(io) if is_storage_full(io)),
            "{e}"
        );
        assert!(e.to_string().contains("free space"), "{e}");
        db.put_user(&user("a")).unwrap();
        assert_eq!(*db.health.lock().unwrap(), Health::Ok);
        assert_eq!(db.users().unwrap().len(), 1);
    }

    /// Any other I/O error is not recovered from (the page cache may hold what the disk
    /// did not take): writes are refused, saying why and what to do; reads go on.
    #[test]
    fn another_io_error_refuses_writes_until_a_restart() {
        let t = tempfile::tempdir().unwrap();
        let db = new_db(t.path());
        db.put_user(&user("a")).unwrap();
        db.note(redb::StorageError::Io(std::io::Error::from_raw_os_error(5)));
        let e = db.put_user(&user("b")).unwrap_err().to_string();
        assert!(e.contains("reported an I/O error"), "{e}");
        assert!(e.contains("check the device"), "{e}");
        assert!(e.contains("restart efs-server"), "{e}");
        // A later full disk does not turn it into a reopen.
        db.note(redb::StorageError::Io(std::io::Error::from_raw_os_error(
            28,
        )));
        assert!(db.put_user(&user("b")).is_err());
        assert_eq!(db.users().unwrap().len(), 1);
    }
}
