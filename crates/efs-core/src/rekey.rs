//! Re-keying the starter key: new key parts, every keyring and every system record
//! sealed again under the starter key they make, with the server stopped.
//!
//! The server holds the starter key's subkeys, the system database and every index
//! open for as long as it runs, so this runs only on a stopped data dir (efsctl refuses
//! while the admin socket answers; redb's lock refuses too).
//!
//! Crash safety: everything new is written beside the old, then one atomic rename
//! switches, then the old is replaced.
//!
//! 1. Stage: `system/keyparts.json.rekey` (the new parts' public facts) first, then
//!    `system/system.redb.rekey` (users, filesystems, secrets sealed under the new
//!    starter key), then beside each index `index.redb.rekey`: a new copy of the whole
//!    index whose `keyring` row is the keyring sealed under the new starter key. The old
//!    files are untouched.
//! 2. Switch: rename `keyparts.json.rekey` over `keyparts.json` (atomic, directory
//!    synced). From here on only the new parts open the data dir.
//! 3. Finish: rename each `index.redb.rekey` over its `index.redb` (directory synced),
//!    then `system.redb.rekey` over `system.redb`.
//!
//! Why new copies rather than a new `keyring` row written in place: redb is
//! copy-on-write, so the replaced row (the keyring sealed under the OLD starter key) would
//! stay in the file's freed pages, where anyone holding the old key parts and a later copy
//! of the data dir could read every key term of the time back out of it — the very thing a
//! re-keying after a leak of key parts is for. The system database is a new file for the
//! same reason.
//!
//! `recover` runs at every open: `keyparts.json.rekey` present means the switch did not
//! happen (the staged files are discarded; the old parts still open everything);
//! `system.redb.rekey` present without it means the switch did happen (step 3 is
//! completed, idempotently). A re-keying staged by an earlier version left the meta
//! `keyring.rekey` in each index instead of a copy: both are still finished or discarded.

use std::collections::HashMap;
use std::path::Path;

use efs_format::Key32;

use crate::digest::DigestKey;
use crate::error::{CoreError, Result};
use crate::index::{Batch, Index, Op};
use crate::keyparts::{self, Argon2Params, KeyPartSpec, StarterKey};
use crate::keyring::Keyring;
use crate::redb_index::{DigestOptions, RedbIndex};
use crate::system::SystemDb;

/// Index meta of a keyring staged by an earlier version (see the module docs).
const META_KEYRING_NEXT: &str = "keyring.rekey";
/// The staged copy of an index, beside it.
const INDEX_NEXT: &str = "index.redb.rekey";
const KEYPARTS_NEXT: &str = "keyparts.json.rekey";
const SYSTEM_NEXT: &str = "system.redb.rekey";

/// Where [`rekey_starter_until`] stops (tests simulate crashes and failures with it).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Run to the end.
    Never,
    /// After staging, before the switch.
    BeforeSwitch,
    /// Staging fails after the last index copy (as a full disk there would).
    StagingFails,
    /// After the switch, before the finish.
    AfterSwitch,
    /// After the switch, the finish fails (as a failed rename or fsync would).
    FinishFails,
    /// After the finish, recording the re-keying in the audit log fails.
    AuditEntryFails,
}

/// A warning for every new part that exists only in an environment variable: gone with
/// the shell that set it, and the data dir with it.
fn env_part_warnings(new: &[KeyPartSpec]) -> Vec<String> {
    new.iter()
        .filter_map(|spec| match spec {
            KeyPartSpec::Env(name) => Some(format!(
                "WARNING: the new key part env:{name} exists only in an environment variable: store its value somewhere lasting (a secrets manager, a file kept apart from the data) now; without it the data dir can never be opened again"
            )),
            _ => None,
        })
        .collect()
}

/// An error after the switch: it must not read as "nothing changed" (an operator who
/// believed that could throw the new parts away, and the data dir with them).
fn after_switch(new: &[KeyPartSpec], step: &str, e: CoreError) -> CoreError {
    let mut msg = format!(
        "the data dir is re-keyed: only the NEW key parts open it now (keep the old ones too \
         until it has opened with the new ones), but {step} failed: {e}. Start efs-server (or \
         efsctl) with the new key parts: that open finishes the re-keying"
    );
    for w in env_part_warnings(new) {
        msg.push_str(". ");
        msg.push_str(&w);
    }
    CoreError::Invalid(msg)
}

/// An error before the switch: everything staged is removed (best effort: the next open
/// removes what is left), and the error says that nothing changed.
fn not_switched(root: &Path, step: &str, e: CoreError) -> CoreError {
    let sys = root.join("system");
    let _ = discard_staged_indexes(root);
    let _ = std::fs::remove_file(sys.join(SYSTEM_NEXT));
    let _ = std::fs::remove_file(sys.join(KEYPARTS_NEXT));
    let _ = sync_dir(&sys);
    let full = matches!(&e, CoreError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull);
    CoreError::Invalid(format!(
        "re-keying stopped before the switch: {step} failed ({e}). Nothing was changed: the current key parts still open the data dir, and what was staged is removed{}",
        if full {
            "; free space on the data dir's volume and run it again"
        } else {
            ""
        }
    ))
}

fn injected() -> CoreError {
    CoreError::Io(std::io::Error::other("injected fault"))
}

/// Every filesystem directory's index (`fs/<id>/index.redb`) with its id.
fn fs_indexes(root: &Path) -> Result<Vec<([u8; 16], std::path::PathBuf)>> {
    let mut out = Vec::new();
    let dir = root.join("fs");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for e in rd {
        let e = e?;
        let Some(id) = e
            .file_name()
            .to_str()
            .and_then(|s| hex::decode(s).ok())
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
        else {
            continue;
        };
        let p = e.path().join("index.redb");
        if p.exists() {
            out.push((id, p));
        }
    }
    Ok(out)
}

fn sync_dir(p: &Path) -> Result<()> {
    std::fs::File::open(p)?.sync_all()?;
    Ok(())
}

/// The root of each filesystem's index-digest key, read from a system database: the
/// keyring rows a re-keying writes are covered by the index digest, which it updates like
/// every other write, under the filesystem's own key.
struct DigestRoots(HashMap<[u8; 16], (Key32, bool)>);

impl DigestRoots {
    /// The roots of the filesystems under `root` as the system database `db` keeps them, and
    /// whether it recorded their digests' upgrade to layout 2.
    fn read(root: &Path, db: &SystemDb) -> Result<Self> {
        let mut roots = HashMap::new();
        for (id, _) in fs_indexes(root)? {
            if let Some(r) = crate::datadir::stored_digest_root(db, &id)? {
                let upgraded = db.secret(&crate::datadir::layout_mark(&id))?.is_some();
                roots.insert(id, (r, upgraded));
            }
        }
        Ok(DigestRoots(roots))
    }

    /// Filesystem `id`'s index-digest key, and whether its digest's upgrade to layout 2 was
    /// recorded. A filesystem whose key row is missing gets a throwaway key: its digest
    /// cannot be checked anyway (the data dir holds it until an operator accepts its index).
    fn key(&self, id: &[u8; 16]) -> (DigestKey, bool) {
        match self.0.get(id) {
            Some((r, upgraded)) => (DigestKey::from_root(r, id), *upgraded),
            None => (DigestKey::from_root(&Key32::random(), id), false),
        }
    }

    /// [`DigestRoots::read`] from the database file at `path`, whatever its own digest says:
    /// the open that follows checks that (and refuses it, or opens it to be accepted); only
    /// the keys are read here.
    fn read_file(root: &Path, path: &Path, starter: &StarterKey) -> Result<Self> {
        let (db, _) = SystemDb::open_checked(path, starter, true)?;
        Self::read(root, &db)
    }

    /// Opens filesystem `id`'s index (at `path`) for its keyring metadata, with its digest
    /// key, as the data dir would (a missing digest is left missing; a layout-1 one is
    /// upgraded unless the upgrade was recorded: see `DataDir::open_index`). A filesystem
    /// whose key row is missing gets a throwaway key: its digest cannot be checked anyway
    /// (the data dir holds it until an operator accepts its index).
    fn open_index(&self, id: &[u8; 16], path: &Path) -> Result<RedbIndex> {
        let (key, upgraded) = self.key(id);
        let opts = DigestOptions {
            compute_missing: false,
            upgrade_layout_1: !upgraded,
        };
        RedbIndex::open_with(path, key, opts)
    }
}

/// Refuses (before anything is staged) a re-keying whose copies would not fit: the new
/// system database and every index's copy all wait beside the old files for the switch.
fn check_room_for_copies(root: &Path, indexes: &[([u8; 16], std::path::PathBuf)]) -> Result<()> {
    let mut need = std::fs::metadata(root.join("system").join("system.redb"))?.len();
    for (_, p) in indexes {
        need = need.saturating_add(std::fs::metadata(p)?.len());
    }
    if need == 0 {
        return Ok(());
    }
    let fs_dir = root.join("fs");
    let on = if fs_dir.is_dir() {
        fs_dir
    } else {
        root.to_path_buf()
    };
    let st = rustix::fs::statvfs(&on).map_err(std::io::Error::from)?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < need {
        return Err(CoreError::Refused(format!(
            "rekey-starter writes a new copy of every index before the switch (about {need} bytes, the size of the index.redb files under fs/ and of system/system.redb), and only {free} bytes are free there: free that much space and run it again (nothing was changed)"
        )));
    }
    Ok(())
}

/// Step 1's index part: beside each index, a new copy whose keyring row is sealed under
/// `new_starter` (see the module docs for why a copy). Returns how many.
async fn stage_indexes(
    indexes: &[([u8; 16], std::path::PathBuf)],
    roots: &DigestRoots,
    old_starter: &StarterKey,
    new_starter: &StarterKey,
) -> Result<usize> {
    for (id, p) in indexes {
        // Opened (and closed) first as the data dir opens it: a layout-1 digest is
        // upgraded, so that the copy carries the digest the next open expects.
        let sealed = {
            let index = roots.open_index(id, p)?;
            index.get_meta(crate::datadir::META_KEYRING).await?
        };
        let sealed = sealed.ok_or_else(|| {
            CoreError::Invalid(format!(
                "{} holds no keyring: it is no filesystem of this data dir (what a restore \
                 cut short by a crash leaves); move its directory out of fs/ and run \
                 rekey-starter again (nothing was switched)",
                p.display()
            ))
        })?;
        let kr = Keyring::open(old_starter, id, &sealed)?;
        let resealed = kr.seal(new_starter, id);
        let (key, _) = roots.key(id);
        crate::redb_index::rewrite_any_digest(
            p,
            &p.with_file_name(INDEX_NEXT),
            &key,
            &[(crate::datadir::META_KEYRING, resealed.as_slice())],
        )?;
        // The copy's directory entry, so that a power cut after the switch cannot lose it.
        sync_dir(p.parent().expect("an index path has a directory"))?;
    }
    Ok(indexes.len())
}

async fn put_meta(index: &RedbIndex, ops: Vec<Op>) -> Result<()> {
    if index
        .commit(Batch {
            ops,
            ..Default::default()
        })
        .await?
    {
        Ok(())
    } else {
        Err(CoreError::Contention)
    }
}

/// Completes or discards an interrupted re-keying (see the module docs). Called at
/// every open, before the system database is opened, with the starter key of the parts
/// that opened `keyparts.json` (the current ones). Returns a line if it did anything.
pub(crate) async fn recover(root: &Path, starter: &StarterKey) -> Result<Option<String>> {
    let sys = root.join("system");
    // A re-keying killed while it wrote `keyparts.json.rekey` leaves the temporary file of
    // that write (`.keyparts.json.rekey.<random>.tmp`, the new parts' salts and checks):
    // never renamed into use, nothing else removed it (black-box review).
    remove_keyparts_temporaries(&sys)?;
    if sys.join(KEYPARTS_NEXT).exists() {
        // Not switched: the old parts are current; forget the staged state.
        let roots = DigestRoots::read_file(root, &sys.join("system.redb"), starter)?;
        discard_staged_indexes(root)?;
        for (id, p) in fs_indexes(root)? {
            let index = roots.open_index(&id, &p)?;
            // Only what an earlier version staged in place: nothing to write otherwise.
            if index
                .get_meta(META_KEYRING_NEXT)
                .await?
                .is_some_and(|v| !v.is_empty())
            {
                put_meta(
                    &index,
                    vec![Op::PutMeta(META_KEYRING_NEXT.into(), Vec::new())],
                )
                .await?;
            }
        }
        let _ = std::fs::remove_file(sys.join(SYSTEM_NEXT));
        std::fs::remove_file(sys.join(KEYPARTS_NEXT))?;
        sync_dir(&sys)?;
        return Ok(Some(
            "discarded an interrupted re-keying of the starter key (the old key parts stay in use)"
                .into(),
        ));
    }
    if sys.join(SYSTEM_NEXT).exists() {
        // Switched: the staged system database is the one `starter` opens.
        let roots = DigestRoots::read_file(root, &sys.join(SYSTEM_NEXT), starter)?;
        finish(root, &roots).await?;
        return Ok(Some(
            "finished an interrupted re-keying of the starter key (the new key parts are in use)"
                .into(),
        ));
    }
    Ok(None)
}

/// Removes the temporary files of `keyparts.json` and `keyparts.json.rekey` writes cut short
/// (`datadir::write_atomic`'s `.<name>.<random>.tmp`) from `sys`. Under the data dir's lock:
/// no write of them is running.
fn remove_keyparts_temporaries(sys: &Path) -> Result<()> {
    let mut removed = false;
    for e in std::fs::read_dir(sys)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".keyparts.json.") && name.ends_with(".tmp") {
            std::fs::remove_file(sys.join(&*name))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(sys)?;
    }
    Ok(())
}

/// Removes every staged index copy (a re-keying not switched). Returns how many.
fn discard_staged_indexes(root: &Path) -> Result<usize> {
    let mut n = 0;
    for (_, p) in fs_indexes(root)? {
        match std::fs::remove_file(p.with_file_name(INDEX_NEXT)) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// Step 3: promote the staged index copies (or keyrings an earlier version staged in
/// place), then the staged system database.
async fn finish(root: &Path, roots: &DigestRoots) -> Result<()> {
    for (id, p) in fs_indexes(root)? {
        let staged = p.with_file_name(INDEX_NEXT);
        if staged.exists() {
            std::fs::rename(&staged, &p)?;
            sync_dir(p.parent().expect("an index path has a directory"))?;
            continue;
        }
        let index = roots.open_index(&id, &p)?;
        if let Some(next) = index.get_meta(META_KEYRING_NEXT).await?
            && !next.is_empty()
        {
            put_meta(
                &index,
                vec![
                    Op::PutMeta(crate::datadir::META_KEYRING.into(), next),
                    Op::PutMeta(META_KEYRING_NEXT.into(), Vec::new()),
                ],
            )
            .await?;
        }
    }
    let sys = root.join("system");
    std::fs::rename(sys.join(SYSTEM_NEXT), sys.join("system.redb"))?;
    sync_dir(&sys)
}

/// Moves the data dir at `root` (server stopped) from the key parts `old` to `new`.
/// Returns lines for the operator.
pub async fn rekey_starter(
    root: &Path,
    old: &[KeyPartSpec],
    new: &[KeyPartSpec],
    argon: Argon2Params,
    prompt: &(dyn Fn(&str) -> std::io::Result<String> + Sync),
) -> Result<Vec<String>> {
    rekey_starter_until(root, old, new, argon, prompt, Stop::Never).await
}

/// [`rekey_starter`] of a data dir with a rollback witness (`--rollback-witness`): a data
/// dir behind it (put back whole from an earlier copy) is refused before anything is staged,
/// as an open would hold it; the new database carries the generation on, so the next open
/// finds it past the witness.
pub async fn rekey_starter_witnessed(
    root: &Path,
    old: &[KeyPartSpec],
    new: &[KeyPartSpec],
    argon: Argon2Params,
    prompt: &(dyn Fn(&str) -> std::io::Result<String> + Sync),
    witness: Option<&Path>,
) -> Result<Vec<String>> {
    rekey(root, old, new, argon, prompt, Stop::Never, witness).await
}

/// [`rekey_starter`], stopping early where `stop` says (tests).
#[doc(hidden)]
pub async fn rekey_starter_until(
    root: &Path,
    old: &[KeyPartSpec],
    new: &[KeyPartSpec],
    argon: Argon2Params,
    prompt: &(dyn Fn(&str) -> std::io::Result<String> + Sync),
    stop: Stop,
) -> Result<Vec<String>> {
    rekey(root, old, new, argon, prompt, stop, None).await
}

async fn rekey(
    root: &Path,
    old: &[KeyPartSpec],
    new: &[KeyPartSpec],
    argon: Argon2Params,
    prompt: &(dyn Fn(&str) -> std::io::Result<String> + Sync),
    stop: Stop,
    witness: Option<&Path>,
) -> Result<Vec<String>> {
    if new.is_empty() {
        return Err(CoreError::Invalid(
            "give the new key parts (--new-key-part, as many as wanted)".into(),
        ));
    }
    crate::datadir::refuse_key_parts_inside(root, new)?;
    let has_passphrase = |s: &[KeyPartSpec]| s.iter().any(|p| matches!(p, KeyPartSpec::Passphrase));
    if has_passphrase(old)
        && has_passphrase(new)
        && std::env::var_os(keyparts::PASSPHRASE_ENV).is_some()
    {
        return Err(CoreError::Invalid(format!(
            "{env} is set: it would be read as the new passphrase as well as the old one. \
             Unset it and type them at the prompts (or pipe them, one a line: the current one, \
             the new one, the new one again); nothing was changed",
            env = keyparts::PASSPHRASE_ENV
        )));
    }
    // Held to the end: a server or efsctl opening the data dir meanwhile is refused instead
    // of taking the staged files for an interrupted re-keying and discarding them.
    let _lock = crate::datadir::lock_data_dir(root)?;
    let mut lines = Vec::new();
    let sys = root.join("system");
    let text = std::fs::read(sys.join("keyparts.json"))?;
    let file: keyparts::KeyPartsFile = serde_json::from_slice(&text).map_err(|e| {
        CoreError::Key(keyparts::KeyError::Corrupt(format!(
            "system/keyparts.json is malformed: {e}"
        )))
    })?;
    let old_starter: StarterKey = keyparts::open(&file, old, prompt)?;
    // (recover never changes keyparts.json: the parts that opened it stay current.)
    if let Some(l) = recover(root, &old_starter).await? {
        lines.push(l);
    }
    // The audit log's root key must be there before anything is staged: the re-keying is
    // recorded in the log at its end, and a missing key with a log present is refused
    // (see `datadir::audit_root`) — better now than after the switch.
    {
        let old_db = SystemDb::open(&sys.join("system.redb"), &old_starter)?;
        let audit_dir = root.join(crate::audit::AUDIT_DIR);
        crate::datadir::audit_root(&old_db, &audit_dir)?;
        // Nor re-seal a system database that an open would refuse as older than the audit
        // log (and record the log's head in it, which would hide that for good).
        if let Some(found) =
            crate::datadir::system_lags_log(&old_db, &audit_dir, crate::datadir::AUDIT_LAG_MS)?
        {
            return Err(CoreError::SystemHold(found));
        }
        // Nor one its rollback witness (given, or recorded) finds put back whole.
        let recorded = old_db.secret(crate::witness::SECRET_WITNESS)?;
        if let Some((path, _)) =
            crate::witness::choose(witness, recorded.as_deref().map(|v| v.as_slice()), root)?
        {
            let (w, seen) = crate::witness::Witness::open(&path, root, false)?;
            if let Some(found) = old_db.judge_witness(w.path(), seen.as_ref())? {
                return Err(CoreError::SystemHold(found));
            }
        }
    }
    let (new_starter, new_file) =
        keyparts::create(new, None, argon, &|_| prompt("New EFS passphrase: "))?;
    // Every new part is read a second time and checked against what was just made: a
    // mistyped new passphrase (or a part file or variable changed meanwhile) stops here,
    // before anything is staged, instead of locking the data dir for good.
    keyparts::open(&new_file, new, &|_| prompt("New EFS passphrase, again: ")).map_err(|e| {
        CoreError::Invalid(format!(
            "the new key parts did not read the same twice ({}); nothing was changed",
            keyparts::not_read_the_same(&e)
        ))
    })?;

    // Refused before anything is staged where the copies would not fit.
    let indexes = fs_indexes(root)?;
    check_room_for_copies(root, &indexes)?;

    // 1. Stage, the marker first. A failure here (a full disk, say) removes what was staged
    // at once (the copies can be large) and says that nothing changed.
    let staged: Result<DigestRoots> = async {
        let json = serde_json::to_vec_pretty(&new_file).expect("serialising JSON cannot fail");
        crate::datadir::write_atomic(&sys.join(KEYPARTS_NEXT), &json)?;
        let _ = std::fs::remove_file(sys.join(SYSTEM_NEXT));
        let roots = {
            let old_db = SystemDb::open(&sys.join("system.redb"), &old_starter)?;
            let new_db = SystemDb::create(&sys.join(SYSTEM_NEXT), &new_starter)?;
            old_db.copy_to(&new_db)?;
            // The digest's generation goes on: an operator's noted one never goes back.
            if let crate::digest::DigestCheck::Holds { generation, .. } = old_db.digest_state()? {
                new_db.continue_generation(generation.saturating_add(1))?;
            }
            if let crate::digest::DigestCheck::Holds {
                generation, anchor, ..
            } = new_db.digest_state()?
            {
                lines.push(format!(
                    "system database digest under the new key: generation {generation}, anchor {anchor} (note them outside the data dir)"
                ));
            }
            lines.push(format!(
                "Sealed {} users, {} filesystems and the system secrets under the new starter key",
                old_db.users()?.len(),
                old_db.filesystems()?.len()
            ));
            // The same in the new database (copied unchanged).
            DigestRoots::read(root, &old_db)?
        };
        std::fs::File::open(sys.join(SYSTEM_NEXT))?.sync_all()?;
        // Its directory entry too, before the switch: a switch kept by a power cut without the
        // staged database would leave a data dir that no key parts open.
        sync_dir(&sys)?;
        let n = stage_indexes(&indexes, &roots, &old_starter, &new_starter).await?;
        if stop == Stop::StagingFails {
            return Err(CoreError::Io(std::io::Error::from(
                std::io::ErrorKind::StorageFull,
            )));
        }
        lines.push(format!(
            "Sealed the keyrings of {n} filesystems under the new starter key (each index copied into a new file around it)"
        ));
        Ok(roots)
    }
    .await;
    let roots = staged.map_err(|e| not_switched(root, "staging it", e))?;
    if stop == Stop::BeforeSwitch {
        return Ok(lines);
    }
    // 2. Switch. From here on only the new parts open the data dir: every error says so.
    std::fs::rename(sys.join(KEYPARTS_NEXT), sys.join("keyparts.json"))
        .map_err(|e| not_switched(root, "the switch (renaming keyparts.json.rekey)", e.into()))?;
    sync_dir(&sys).map_err(|e| after_switch(new, "syncing system/ after the switch", e))?;
    lines.push("Switched system/keyparts.json to the new key parts".into());
    if stop == Stop::AfterSwitch {
        return Ok(lines);
    }
    // 3. Finish.
    let finished = match stop {
        Stop::FinishFails => Err(injected()),
        _ => finish(root, &roots).await,
    };
    finished.map_err(|e| after_switch(new, "finishing it (step 3)", e))?;
    lines.push(
        "Done: only the new key parts open this data dir now; start efs-server with them".into(),
    );
    // Done whether or not it is recorded: a failure here is no reason to doubt the switch.
    let recorded = match stop {
        Stop::AuditEntryFails => Err(injected()),
        _ => record_in_audit_log(root, &new_starter, new).await,
    };
    if let Err(e) = recorded {
        lines.push(format!(
            "WARNING: the re-keying is done, but it is not in the audit log ({e}); check the log with efsctl audit verify"
        ));
    }
    lines.extend(env_part_warnings(new));
    Ok(lines)
}

/// Records the re-keying in the audit log, like every other admin command (the audit keys
/// come from a root sealed in the system DB, so the chain simply goes on).
async fn record_in_audit_log(root: &Path, starter: &StarterKey, new: &[KeyPartSpec]) -> Result<()> {
    let system = SystemDb::open(&root.join("system").join("system.redb"), starter)?;
    let keys = crate::audit::AuditKeys::derive(&crate::datadir::audit_root(
        &system,
        &root.join(crate::audit::AUDIT_DIR),
    )?);
    let log = crate::audit::AuditLog::open_recorded(
        &root.join(crate::audit::AUDIT_DIR),
        &keys,
        crate::audit::AuditOptions::default(),
        crate::datadir::recorded_audit_head(&system)?,
    )?;
    let op = crate::admin::Operator::this_process("data-dir");
    let mut rec = crate::audit::Record::new(crate::audit::Action::Admin, 200);
    rec.user = Some(op.user);
    rec.client = Some(op.via);
    let kinds: Vec<&str> = new.iter().map(KeyPartSpec::kind).collect();
    rec.detail = Some(format!(
        "rekey-starter (new key parts: {})",
        kinds.join(", ")
    ));
    log.record(rec)
        .await
        .map_err(|e| CoreError::Invalid(format!("the audit log refused the entry: {e}")))?;
    log.close();
    // How far the log went, as every other writer records it: an open that found the log
    // far past the recorded head would take the system database for an older copy.
    if let Some(head) = log.anchored() {
        crate::datadir::write_audit_mark(&system, head)?;
    }
    Ok(())
}
