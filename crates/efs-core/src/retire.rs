//! Retiring keyring terms (`efsctl retire-terms`): the step that makes the erasure of
//! deleted files real ("crypto-shredding").
//!
//! A deleted file's data key stays wrapped, under the term current when it was written, in
//! every copy of its record that outlives the delete: redb's freed pages, a backup made
//! without `--include-keys`, a snapshot of the index file. Once every live record and data
//! key is under the current term (`efsctl rotate-key --fs FS --wait`), the older terms open
//! nothing live: removing their keys from the keyring makes those copies unopenable with
//! the data dir's *current* keyring.
//!
//! That alone is not erasure: the keyring is sealed under the starter key (filesystem id as
//! AAD), which this does not change, so every copy of the keyring from before (a snapshot of
//! the data dir or of `index.redb`, the old file's blocks on the disk, a backup made with
//! `--include-keys`) still gives the retired keys to whoever has the key parts. `efsctl
//! rekey-starter` to new parts, with the old ones destroyed, cuts those copies off; the
//! command's messages and docs/operations.md say so.
//!
//! With the server stopped (the running server holds the index open, and its keyring):
//!
//! 1. The directories of an unfinished recursive delete are emptied (with `--yes`): their
//!    files are live records the rotation moved to the current term. [`plan`] refuses while
//!    a rotation or a re-encryption is unfinished, and unless a full scan of the index finds
//!    every record sealed, and every data key wrapped, under the current term. Other
//!    filesystems whose keyrings hold a retired key (restored from this one) are named.
//! 2. The keyring keeps the current term; the older ones are kept as numbers with their time
//!    of retirement, and the tag term's two derived name keys if it is among them
//!    ([`crate::keyring::Keyring::retire_older`]).
//! 3. The index is copied into a fresh file (`index.redb.retire`, [`STAGED`]) with the new
//!    keyring row, its digest updated as a batch would (the generation goes on), fsynced,
//!    then renamed over `index.redb` and the directory fsynced. redb is copy-on-write: the
//!    old keyring row would otherwise stay in the old file's freed pages.
//!
//! Just before the rename, an audit entry names the terms being retired (`switch_entry`);
//! if the log does not take it, the staged file is removed and nothing is retired. A crash
//! before the rename leaves the old index whole and a staged file, which the next open
//! removes (`discard_staged`), saying so in the audit log: nothing was retired, and the
//! command can run again. After the rename the new index is the filesystem's, and the log
//! names its terms even if the command's final entry never came.

use std::path::Path;

use super::Filesystem;
use crate::error::{CoreError, Result};
use crate::record::Kind;
use crate::rotation::{RotationState, sealing_term};

/// The staged index beside `index.redb`.
pub const STAGED: &str = "index.redb.retire";
/// Entries per page of the scan.
const PAGE: usize = 1024;

/// What [`plan`] found: the terms to retire.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The term that stays.
    pub current: u32,
    /// The terms to retire (every other term the keyring holds).
    pub retire: Vec<u32>,
    /// Terms retired before.
    pub retired_before: Vec<(u32, i64)>,
    /// Whether the tag term (the one names are keyed with) is among them.
    pub tag_term_retired: bool,
    /// Entries scanned.
    pub entries: u64,
    /// Directories of unfinished recursive deletes still waiting to be emptied (their files
    /// are still live records, with blobs): `retire-terms --yes` empties them first.
    pub being_deleted: usize,
    /// Directories of unfinished recursive deletes `retire-terms --yes` emptied before it
    /// planned (said in its result and its audit entry).
    pub emptied: usize,
    /// Other filesystems of the data dir whose keyrings hold some of the terms retired here
    /// (restored into a new name from this one), each with those term numbers: what those
    /// terms sealed still opens with their keys until they retire them too. Filled in by
    /// [`crate::DataDir::retire_terms`].
    pub shared: Vec<(String, Vec<u32>)>,
    /// Filesystems of the data dir not open (so not compared with [`Plan::shared`]).
    pub not_compared: Vec<String>,
    /// When the rotation to the current term began (Unix ms), if the rotation progress
    /// records it: files deleted before then are the ones erased; files deleted since were
    /// under the current term and are not (until the next rotation and retirement).
    pub current_since_ms: Option<i64>,
}

/// "term 1" or "terms 1, 3": the numbers with the noun in the right number.
pub fn terms_phrase(terms: &[u32]) -> String {
    let list: Vec<String> = terms.iter().map(u32::to_string).collect();
    match list.len() {
        1 => format!("term {}", list[0]),
        _ => format!("terms {}", list.join(", ")),
    }
}

impl Plan {
    /// Whether there is a term to retire (none: [`Plan::nothing_message`]).
    pub fn nothing_to_retire(&self) -> bool {
        self.retire.is_empty()
    }

    /// What `retire-terms` says when the filesystem has no term older than its current one.
    pub fn nothing_message(&self, name: &str) -> String {
        let current = self.current;
        let before: Vec<u32> = self.retired_before.iter().map(|(n, _)| *n).collect();
        let before = match before.len() {
            0 => String::new(),
            1 => format!(" ({} was retired before)", terms_phrase(&before)),
            _ => format!(" ({} were retired before)", terms_phrase(&before)),
        };
        format!(
            "nothing to retire: '{name}' has no key term older than its current one, {current}{before}. To erase files deleted since: efsctl rotate-key --fs {name} --wait (server running or not), then, server stopped, efsctl retire-terms --fs {name} --yes"
        )
    }

    /// What the dry run (no `--yes`) says it would do.
    pub fn dry_run_message(&self, name: &str) -> String {
        let pending = if self.being_deleted > 0 {
            format!(
                ". First, {} directories of an unfinished recursive delete will be emptied (their files and blobs removed, as the server would)",
                self.being_deleted
            )
        } else {
            String::new()
        };
        format!(
            "retire-terms would remove key {} of '{name}' for good (term {} stays): the deleted files' records and data keys sealed under them (in the index's freed pages, in backups made without --include-keys) would no longer open with this filesystem's keyring, and such backups could no longer be restored; {}. Not yet erased after it: copies of the keyring from before (snapshots of the data dir or of index.redb, backups made with --include-keys, the old index file's blocks on the disk) still give those keys to whoever has the current key parts, until efsctl rekey-starter moves the data dir to new key parts and the old ones are destroyed. Nothing was retired; run it again with --yes to retire them",
            terms_phrase(&self.retire),
            self.current,
            self.covers()
        ) + &pending
            + &self
                .shared_warning(name)
                .map(|w| format!(". {w}"))
                .unwrap_or_default()
    }

    /// Which deleted files the retirement covers, in words (with the time when known).
    pub fn covers(&self) -> String {
        let tail = "; files deleted since are not, until the next rotate-key and retire-terms";
        match self.current_since_ms {
            Some(ms) => format!(
                "files deleted before {} (when the rotation to term {} began) are covered{tail}",
                crate::admin::rfc3339_ms(ms),
                self.current
            ),
            None => format!(
                "files deleted before term {} became current are covered{tail}",
                self.current
            ),
        }
    }

    /// The loud line about [`Plan::shared`] and [`Plan::not_compared`], if any.
    pub fn shared_warning(&self, name: &str) -> Option<String> {
        let mut parts = Vec::new();
        if !self.shared.is_empty() {
            let each: Vec<String> = self
                .shared
                .iter()
                .map(|(other, terms)| format!("'{other}' ({})", terms_phrase(terms)))
                .collect();
            let cmds: Vec<String> = self
                .shared
                .iter()
                .map(|(other, _)| {
                    format!(
                        "efsctl rotate-key --fs {other} --wait, then efsctl retire-terms --fs {other} --yes"
                    )
                })
                .collect();
            parts.push(format!(
                "WARNING: other filesystems still hold keys of the terms retired from '{name}' (restored from it): {}. What those terms sealed (the deleted files' records in older backups and copies) still opens with their keys; and a copy restored before the files were deleted holds them as live files, which no rotation erases: delete them there too (efs rm), then run {}",
                each.join(", "),
                cmds.join("; ")
            ));
        }
        if !self.not_compared.is_empty() {
            parts.push(format!(
                "WARNING: filesystems not open could not be compared (a restore of '{name}' would hold its retired keys): {}; open them (efsctl status names why) and check again",
                self.not_compared.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join(". "))
    }
}

/// Where [`crate::DataDir::retire_terms_until`] stops (tests simulate a crash with it).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Run to the end.
    Never,
    /// After the staged index is written and synced, before the switch.
    BeforeSwitch,
    /// After the entry naming the terms is durable, before the rename (as a crash there).
    AfterEntry,
    /// Right after the rename of the staged index, nothing after it run (as a crash there).
    AfterSwitch,
    /// After the switch, with the filesystem not opened again (as if its open failed).
    AfterSwitchNotReopened,
    /// After the switch, with the generation mark's write failing.
    MarkFails,
}

/// Checks that filesystem `fs` can retire its older terms, and which: refuses (naming why
/// and what to run) while a rotation or re-encryption is not done, or while any record or
/// data key is under another term than the current one (a full scan of the index).
pub async fn plan(fs: &std::sync::Arc<Filesystem>) -> Result<Plan> {
    let name = fs.name().to_owned();
    fs.ensure_index_checked().await?;
    let rotation = super::rotation::progress(fs).await?;
    if let Some(p) = &rotation
        && p.state != RotationState::Done
    {
        return Err(CoreError::Refused(format!(
            "the key rotation of '{name}' (to term {}) is not done: run efsctl rotate-key --fs {name} --wait first (it resumes the unfinished one)",
            p.current_term
        )));
    }
    if let Some(p) = super::reencrypt::progress(fs).await?
        && p.state != RotationState::Done
    {
        return Err(CoreError::Refused(format!(
            "the re-encryption of '{name}' is not done: run efsctl reencrypt --fs {name} --wait first (it resumes the unfinished one)"
        )));
    }
    let being_deleted = fs.being_deleted(PAGE).await?;
    let kr = fs.keyring();
    let current = kr.current_number();
    let retire: Vec<u32> = kr
        .term_numbers()
        .into_iter()
        .filter(|n| *n != current)
        .collect();
    let retired_before = kr.retired();
    if retire.is_empty() {
        // Not an error: a script that retires after every rotation finds it done.
        return Ok(Plan {
            current,
            retire,
            retired_before,
            tag_term_retired: false,
            entries: 0,
            being_deleted,
            emptied: 0,
            shared: Vec::new(),
            not_compared: Vec::new(),
            current_since_ms: None,
        });
    }
    // Stale: opens, under an older term (a rotation moves it). Damaged: does not open at
    // all, or opens but its data key does not unwrap (under its own term or the current
    // one); a rotation skips it, so it keeps its term and another rotation only adds one.
    let mut stale = 0u64;
    let mut damaged = 0u64;
    let mut entries = 0u64;
    let mut after = None;
    loop {
        let rows = fs.index.scan_entries(after.as_ref(), PAGE).await?;
        let Some((last, _)) = rows.last() else { break };
        after = Some(*last);
        for (k, v) in &rows {
            entries += 1;
            let (Ok(term), Ok(rec)) = (sealing_term(v), fs.open_rec(&kr, k, v)) else {
                damaged += 1;
                continue;
            };
            if rec.kind == Kind::File && fs.data_key_of(&kr, &rec).is_err() {
                damaged += 1;
                continue;
            }
            if term != current || (rec.kind == Kind::File && rec.key_term != current) {
                stale += 1;
            }
        }
    }
    if damaged > 0 {
        let also = if stale > 0 {
            format!(
                " ({stale} more are under an older term: efsctl rotate-key --fs {name} --wait moves those)"
            )
        } else {
            String::new()
        };
        return Err(CoreError::Refused(format!(
            "{damaged} records of '{name}' do not open, or their data keys do not (damaged), so which term can open them is unknown; a rotation skips them, so another rotate-key would only add a term{also}. List them with efsctl fsck --fs {name}. No command removes a damaged entry: make a copy without them (efsctl backup --fs {name} --skip-damaged, then restore it into an empty filesystem made with efsctl create-fs, which gets a keyring of its own) and use that one, or restore {name} from a backup taken before the damage"
        )));
    }
    if stale > 0 {
        return Err(CoreError::Refused(format!(
            "{stale} records or data keys of '{name}' are still under a key term older than {current}: retiring it would make them unreadable. Run efsctl rotate-key --fs {name} --wait first"
        )));
    }
    Ok(Plan {
        current,
        tag_term_retired: retire.contains(&kr.tag_term_number()),
        retire,
        retired_before,
        entries,
        being_deleted,
        emptied: 0,
        shared: Vec::new(),
        not_compared: Vec::new(),
        current_since_ms: rotation
            .filter(|p| p.current_term == current)
            .map(|p| p.started_ms),
    })
}

/// Which of `others` hold keys of terms `retire` of `fs` ([`Plan::shared`]).
pub fn shared_with(
    fs: &Filesystem,
    retire: &[u32],
    others: &[std::sync::Arc<Filesystem>],
) -> Vec<(String, Vec<u32>)> {
    let kr = fs.keyring();
    let mut out: Vec<(String, Vec<u32>)> = others
        .iter()
        .filter(|o| o.id() != fs.id())
        .filter_map(|o| {
            let held = kr.terms_held_by(retire, &o.keyring());
            (!held.is_empty()).then(|| (o.name().to_owned(), held))
        })
        .collect();
    out.sort();
    out
}

/// The audit entry written just before the switch (status 202, the command still running),
/// naming the terms retired by it and the staged index: refused, nothing is switched. A
/// crash after the rename leaves the retirement in effect without the command's final
/// entry; this one says what it retired. A crash before the rename leaves this entry and
/// the staged file, which the next open removes, writing [`discarded_entry`].
pub(crate) fn switch_entry(
    op: &crate::admin::Operator,
    name: &str,
    plan: &Plan,
    generation: u64,
) -> crate::audit::Record {
    let mut rec = crate::audit::Record::new(crate::audit::Action::Admin, 202);
    rec.user = Some(op.user.clone());
    rec.client = Some(op.via.clone());
    rec.fs = Some(name.to_owned());
    let req = crate::admin::AdminRequest::RetireTerms {
        fs: name.to_owned(),
        yes: true,
    };
    let what = serde_json::json!({
        "switching": true,
        "retiring_terms": plan.retire,
        "current_term": plan.current,
        "staged": STAGED,
        "index_generation": generation,
        "note": "the staged index is renamed over index.redb next: the terms are retired unless a later entry says its staged index was discarded",
    });
    rec.detail = Some(format!("{} {what}", req.summary()));
    rec
}

/// The audit entry of an open that removed a staged index ([`discard_staged`]): the
/// retirement its [`switch_entry`] announced did not happen.
pub(crate) fn discarded_entry(name: &str) -> crate::audit::Record {
    let op = crate::admin::Operator::this_process("data-dir");
    let mut rec = crate::audit::Record::new(crate::audit::Action::Admin, 500);
    rec.user = Some(op.user);
    rec.client = Some(op.via);
    rec.fs = Some(name.to_owned());
    rec.detail = Some(format!(
        "retire-terms {} interrupted before its switch: its staged index was discarded at the open, no term was retired",
        serde_json::json!({ "fs": name, "staged": STAGED, "discarded": true })
    ));
    rec
}

/// Whether a `retire-terms` that stopped before its switch left its staged index in `dir`.
pub(crate) fn has_staged(dir: &Path) -> bool {
    dir.join(STAGED).exists()
}

/// Removes a staged index left by a `retire-terms` that stopped before its switch (the
/// index beside it is the old one, whole). Returns a line if there was one.
pub(crate) fn discard_staged(dir: &Path, name: &str) -> Result<Option<String>> {
    let staged = dir.join(STAGED);
    match std::fs::remove_file(&staged) {
        Ok(()) => {
            crate::blob::sync_dir(dir)?;
            Ok(Some(format!(
                "discarded the staged index of an interrupted retire-terms of '{name}': no term was retired (run efsctl retire-terms --fs {name} again)"
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Batch, Op};
    use crate::keyparts::{self, KeyPartSpec};
    use crate::rotation::tests::{damage, env, put};
    use crate::{DataDir, EfsPath, OpenOptions};

    fn index_bytes(dd: &DataDir, fs: &Filesystem) -> Vec<u8> {
        std::fs::read(dd.fs_dir(fs.id()).join("index.redb")).unwrap()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    async fn read_all(fs: &std::sync::Arc<Filesystem>, path: &str) -> Vec<u8> {
        let r = fs.open(&EfsPath::parse(path).unwrap()).await.unwrap();
        let plain = r.read_plain(0, r.segment_count()).await.unwrap();
        let mut out = Vec::new();
        for seg in &plain.segments {
            out.extend_from_slice(&plain.buf[seg.clone()]);
        }
        out
    }

    /// The point of the index rewrite: redb is copy-on-write, so a keyring row replaced in
    /// place (as rotation replaces it) stays readable in the file's freed pages, old terms
    /// and all. After retire-terms, neither the keyring from before the rotation nor the
    /// one retired is anywhere in the index file; the files still read, and a record put
    /// back from before the rotation is named by fsck as sealed under a retired term.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retiring_leaves_no_old_keyring_in_the_index_file() {
        let (_t, dd, fs) = env();
        put(&fs, "/a/one", b"one").await;
        put(&fs, "/a/big", &[7u8; 300_000]).await;
        put(&fs, "/gone", b"deleted before the retirement").await;
        let first = fs.sealed_keyring().await.unwrap();
        let kr = fs.keyring();
        let old_rec = fs
            .resolve(&kr, &EfsPath::parse("/a/one").unwrap(), false)
            .await
            .unwrap();
        let (old_value, _) = old_rec.current.clone().unwrap();
        drop(kr);
        fs.delete(
            &EfsPath::parse("/gone").unwrap(),
            crate::Precondition::None,
            false,
        )
        .await
        .unwrap();
        let (_, p) = dd.rotate_key("docs", true).await.unwrap();
        assert_eq!(p.state, RotationState::Done);
        let second = fs.sealed_keyring().await.unwrap();
        assert_ne!(first, second);
        drop(fs);
        let fs = dd.fs("docs").unwrap();
        let before = index_bytes(&dd, &fs);
        assert!(
            contains(&before, &second),
            "the keyring to retire is in the file"
        );
        drop(fs);

        let (plan, _) = dd.retire_terms("docs", true).await.unwrap();
        assert_eq!(plan.retire, [1]);
        assert!(plan.tag_term_retired);
        // What it covers in time: files deleted before the rotation to term 2 began.
        assert_eq!(plan.current_since_ms, Some(p.started_ms));
        let covers = plan.covers();
        assert!(
            covers.starts_with(&format!(
                "files deleted before {} (when the rotation to term 2 began)",
                crate::admin::rfc3339_ms(p.started_ms)
            )),
            "{covers}"
        );
        assert!(covers.contains("files deleted since are not"), "{covers}");
        let fs = dd.fs("docs").unwrap();
        let after = index_bytes(&dd, &fs);
        assert!(!contains(&after, &first), "the first keyring survived");
        assert!(!contains(&after, &second), "the retired keyring survived");
        assert!(!dd.fs_dir(fs.id()).join(STAGED).exists());
        assert_eq!(fs.term_numbers(), [2]);
        assert_eq!(fs.retired_terms()[0].0, 1);
        // Names, listings and contents as before; new writes too.
        assert_eq!(read_all(&fs, "/a/one").await, b"one");
        assert_eq!(read_all(&fs, "/a/big").await, vec![7u8; 300_000]);
        put(&fs, "/a/new", b"new").await;
        assert_eq!(read_all(&fs, "/a/new").await, b"new");
        let rep = fs.fsck().await.unwrap();
        assert!(rep.errors.is_empty(), "{:?}", rep.errors);

        // A record from before the rotation, put back: named, not "unknown key term".
        let b = Batch {
            ops: vec![Op::PutEntry(old_rec.key, old_value)],
            ..Default::default()
        };
        assert!(fs.commit_batch(b).await.unwrap());
        let Err(e) = fs.open(&EfsPath::parse("/a/one").unwrap()).await else {
            panic!("a record sealed under a retired term opened");
        };
        assert!(
            e.to_string()
                .contains("sealed under key term 1, retired at"),
            "{e}"
        );
        let rep = fs.fsck().await.unwrap();
        assert!(
            rep.errors
                .iter()
                .any(|l| l.contains("sealed under key term 1, retired at")),
            "{:?}",
            rep.errors
        );
        // A later rotation takes a number never used.
        let (_, p) = dd.rotate_key("docs", true).await.unwrap();
        assert_eq!(p.current_term, 3);
        assert_eq!(read_all(&fs, "/a/big").await, vec![7u8; 300_000]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retire_refuses_what_it_cannot_do_and_changes_nothing() {
        let (_t, dd, fs) = env();
        put(&fs, "/a", b"a").await;
        put(&fs, "/b", b"b").await;
        let kr = fs.keyring();
        let (a_before, _) = fs
            .resolve(&kr, &EfsPath::parse("/a").unwrap(), false)
            .await
            .unwrap()
            .current
            .unwrap();
        drop(kr);
        let (plan, generation) = dd.retire_terms("docs", true).await.unwrap();
        assert!(plan.nothing_to_retire() && generation.is_none());
        let e = plan.nothing_message("docs");
        assert!(e.contains("nothing to retire"), "{e}");
        assert!(e.contains("rotate-key --fs docs --wait"), "{e}");

        // A rotation begun but not run.
        dd.begin_rotation("docs").await.unwrap();
        let e = dd.retire_terms("docs", true).await.unwrap_err().to_string();
        assert!(e.contains("is not done"), "{e}");
        assert!(e.contains("rotate-key --fs docs --wait"), "{e}");
        crate::rotation::run(&fs, None).await.unwrap();

        // Without --yes: what it would do, and nothing done; not said to have changed
        // nothing (efsctl may have just finished an interrupted rotation).
        let (plan, generation) = dd.retire_terms("docs", false).await.unwrap();
        assert!(generation.is_none());
        let e = plan.dry_run_message("docs");
        assert!(e.contains("would remove key term 1 of 'docs'"), "{e}");
        assert!(e.contains("Nothing was retired"), "{e}");
        assert!(!e.contains("Nothing was changed"), "{e}");
        assert!(e.contains("--include-keys"), "{e}");
        // Not claimed as erasure: earlier copies of the keyring open until the key parts change.
        assert!(e.contains("Not yet erased"), "{e}");
        assert!(e.contains("until efsctl rekey-starter"), "{e}");
        assert!(
            e.contains("files deleted before ")
                && e.contains("(when the rotation to term 2 began)"),
            "{e}"
        );
        assert_eq!(fs.term_numbers(), [1, 2]);

        // A record from before the rotation put back (it opens, under term 1): rotate.
        let kr = fs.keyring();
        let a = fs
            .resolve(&kr, &EfsPath::parse("/a").unwrap(), false)
            .await
            .unwrap();
        drop(kr);
        let b = Batch {
            ops: vec![Op::PutEntry(a.key, a_before.clone())],
            ..Default::default()
        };
        assert!(fs.commit_batch(b).await.unwrap());
        let e = dd.retire_terms("docs", true).await.unwrap_err().to_string();
        assert!(e.contains("1 records or data keys"), "{e}");
        assert!(e.contains("rotate-key --fs docs --wait first"), "{e}");

        // A damaged record a rotation skipped stays under term 1: refused, and not with
        // "rotate again" (each rotation would only add a term).
        damage(&fs, "/b").await;
        let (_, p) = dd.rotate_key("docs", true).await.unwrap();
        assert_eq!(p.damaged.count, 1);
        let e = dd.retire_terms("docs", true).await.unwrap_err().to_string();
        assert!(
            e.contains("1 records of 'docs' do not open, or their data keys do not (damaged)"),
            "{e}"
        );
        assert!(e.contains("would only add a term"), "{e}");
        assert!(e.contains("efsctl fsck --fs docs"), "{e}");
        assert!(e.contains("--skip-damaged"), "{e}");
        assert!(!e.contains("wait first"), "{e}");
        assert_eq!(dd.fs("docs").unwrap().term_numbers(), [1, 2, 3]);
    }

    /// One term is "term 1", not "terms 1": in the nothing-to-retire message among others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn term_numbers_are_said_in_the_right_number() {
        assert_eq!(terms_phrase(&[1]), "term 1");
        assert_eq!(terms_phrase(&[1, 3]), "terms 1, 3");
        let (_t, dd, fs) = env();
        put(&fs, "/a", b"a").await;
        dd.rotate_key("docs", true).await.unwrap();
        drop(fs);
        dd.retire_terms("docs", true).await.unwrap();
        let (plan, _) = dd.retire_terms("docs", true).await.unwrap();
        let e = plan.nothing_message("docs");
        assert!(e.contains("(term 1 was retired before)"), "{e}");
        dd.rotate_key("docs", true).await.unwrap();
        dd.retire_terms("docs", true).await.unwrap();
        let (plan, _) = dd.retire_terms("docs", true).await.unwrap();
        let e = plan.nothing_message("docs");
        assert!(e.contains("(terms 1, 2 were retired before)"), "{e}");
    }

    /// A record that opens but whose wrapped data key does not is damaged, not merely old:
    /// "rotate-key" would not fix it (a rotation cannot rewrap a key it cannot unwrap).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_whose_data_key_does_not_unwrap_is_counted_as_damaged() {
        let (_t, dd, fs) = env();
        put(&fs, "/a", b"a").await;
        put(&fs, "/b", b"b").await;
        // /b's record re-sealed as it was, its wrapped data key broken; the rotation cannot
        // rewrap it, so it stays under term 1, and looked merely old.
        let kr = fs.keyring();
        let r = fs
            .resolve(&kr, &EfsPath::parse("/b").unwrap(), false)
            .await
            .unwrap();
        let (_, mut rec) = r.current.unwrap();
        *rec.wrapped_key.last_mut().unwrap() ^= 1;
        let b = Batch {
            ops: vec![Op::PutEntry(r.key, rec.seal(&kr, fs.id(), &r.key))],
            ..Default::default()
        };
        drop(kr);
        assert!(fs.commit_batch(b).await.unwrap());
        dd.rotate_key("docs", true).await.unwrap();
        drop(fs);
        let e = dd.retire_terms("docs", true).await.unwrap_err().to_string();
        assert!(
            e.contains("1 records of 'docs' do not open, or their data keys do not (damaged)"),
            "{e}"
        );
        assert!(!e.contains("rotate-key --fs docs --wait first"), "{e}");
        assert_eq!(dd.fs("docs").unwrap().term_numbers(), [1, 2]);
    }

    /// Files under the blobs directory (staging `tmp/` left out).
    fn blob_files(dir: &Path) -> usize {
        let mut n = 0;
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    if e.file_name() != "tmp" {
                        todo.push(e.path());
                    }
                } else {
                    n += 1;
                }
            }
        }
        n
    }

    /// A recursive delete the server had not finished emptying (stopped in the middle)
    /// leaves its files as live records, re-sealed by the rotation under the current term,
    /// with their blobs: retire-terms empties it first, so that they do not survive in the
    /// new index (a dry run only says it will).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unfinished_recursive_delete_is_emptied_before_the_retirement() {
        let (_t, dd, fs) = env();
        put(&fs, "/keep/big", &[1u8; 300_000]).await;
        put(&fs, "/tree/a/big", &[2u8; 300_000]).await;
        put(&fs, "/tree/a/small", b"patient record").await;
        let blobs = dd.fs_dir(fs.id()).join("blobs");
        assert_eq!(blob_files(&blobs), 2);
        dd.rotate_key("docs", true).await.unwrap();
        // The delete as the server makes it, the emptying never run (a stop in between).
        delete_unfinished(&fs, "/tree").await;
        assert_eq!(fs.being_deleted(10).await.unwrap(), 1);
        drop(fs);

        let e = dd
            .retire_terms("docs", false)
            .await
            .unwrap()
            .0
            .dry_run_message("docs");
        assert!(
            e.contains("1 directories of an unfinished recursive delete"),
            "{e}"
        );
        assert_eq!(blob_files(&blobs), 2, "a dry run changes nothing");

        let (plan, _) = dd.retire_terms("docs", true).await.unwrap();
        assert_eq!(plan.being_deleted, 0);
        assert_eq!(plan.emptied, 1, "said in the result and its audit entry");
        let fs = dd.fs("docs").unwrap();
        assert_eq!(fs.being_deleted(10).await.unwrap(), 0);
        assert_eq!(blob_files(&blobs), 1, "the deleted tree's blob is removed");
        let rep = fs.fsck().await.unwrap();
        assert!(rep.is_clean(), "{rep:?}");
        assert_eq!(rep.records, 2, "/keep and /keep/big only");
        assert_eq!(read_all(&fs, "/keep/big").await, vec![1u8; 300_000]);
    }

    /// A recursive delete of `path` as the server makes it (detached, answered), with the
    /// emptying never run: as after a stop right after the delete.
    async fn delete_unfinished(fs: &std::sync::Arc<Filesystem>, path: &str) {
        fs.delete_while(
            &EfsPath::parse(path).unwrap(),
            crate::Precondition::None,
            true,
            false,
            &|| true,
        )
        .await
        .unwrap();
        assert!(fs.being_deleted(10).await.unwrap() >= 1);
    }

    /// `/keep/small`, which stays, and `/tree/a/` (a blob and an inline file), to delete.
    async fn put_kept_and_tree(fs: &std::sync::Arc<Filesystem>) {
        put(fs, "/keep/small", b"kept").await;
        put(fs, "/tree/a/big", &[2u8; 300_000]).await;
        put(fs, "/tree/a/small", b"patient record").await;
    }

    /// A key rotation empties what recursive deletes left detached before it begins: it
    /// re-sealed those still-live records under its new term, so that a later retire-terms
    /// kept them (and said they were covered, deleted before the rotation began).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotation_empties_unfinished_recursive_deletes_first() {
        let (_t, dd, fs) = env();
        put_kept_and_tree(&fs).await;
        let blobs = dd.fs_dir(fs.id()).join("blobs");
        assert_eq!(blob_files(&blobs), 1);
        delete_unfinished(&fs, "/tree").await;
        assert_eq!(fs.being_deleted(10).await.unwrap(), 1);
        let (_, prog) = dd.rotate_key("docs", true).await.unwrap();
        assert_eq!(fs.being_deleted(10).await.unwrap(), 0);
        assert_eq!(blob_files(&blobs), 0, "the deleted tree's blob is removed");
        // Only the live entries were re-sealed: /keep and /keep/small.
        assert_eq!(prog.rewrapped, 2, "{prog:?}");
        drop(fs);
        let (plan, _) = dd.retire_terms("docs", true).await.unwrap();
        assert_eq!(plan.emptied, 0, "nothing left for the retirement to empty");
        assert_eq!(plan.entries, 2);
    }

    /// A re-encryption too empties what recursive deletes left detached before it begins:
    /// it gave the deleted files fresh data keys under the current term, which a later
    /// retire-terms keeps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reencryption_empties_unfinished_recursive_deletes_first() {
        let (_t, dd, fs) = env();
        put_kept_and_tree(&fs).await;
        delete_unfinished(&fs, "/tree").await;
        assert_eq!(fs.being_deleted(10).await.unwrap(), 1);
        let (_, prog) = dd.reencrypt("docs", true).await.unwrap();
        assert_eq!(fs.being_deleted(10).await.unwrap(), 0);
        assert_eq!(prog.files_done, 1, "only /keep/small: {prog:?}");
    }

    /// `efsctl rotate-key` and `reencrypt` say what they emptied first (an auditor reads it in
    /// their output and `--json`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotate_key_and_reencrypt_say_what_they_emptied_first() {
        use crate::admin::{self, AdminRequest};
        let (_t, dd, fs) = env();
        put(&fs, "/keep/small", b"kept").await;
        for (i, req) in [
            AdminRequest::RotateKey {
                fs: "docs".into(),
                wait: true,
            },
            AdminRequest::Reencrypt {
                fs: "docs".into(),
                wait: true,
            },
        ]
        .into_iter()
        .enumerate()
        {
            let tree = format!("/tree{i}");
            put(&fs, &format!("{tree}/a/small"), b"patient record").await;
            delete_unfinished(&fs, &tree).await;
            let r = admin::execute(&dd, req).await;
            assert!(r.ok, "{r:?}");
            assert!(
                r.lines[0].starts_with("First emptied 1 directory of unfinished recursive deletes"),
                "{r:?}"
            );
            assert_eq!(r.data["emptied_pending_deletes"], 1, "{r:?}");
            assert_eq!(fs.being_deleted(10).await.unwrap(), 0);
        }
    }

    /// fsck counts the records of a recursive delete not emptied yet apart from the others,
    /// saying what empties them: it counted them as ordinary records (6 here, where the
    /// filesystem holds 2). Their files verified too are counted apart: `files_verified` said
    /// 3 here (the tree's 2 and /keep/small) beside "not counted above".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fsck_counts_the_records_of_unfinished_recursive_deletes_apart() {
        use crate::admin::{self, AdminRequest};
        let (_t, dd, fs) = env();
        put_kept_and_tree(&fs).await;
        delete_unfinished(&fs, "/tree").await;
        let r = admin::execute(
            &dd,
            AdminRequest::Fsck {
                fs: "docs".into(),
                accept_index: false,
            },
        )
        .await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.clean, Some(true), "{r:?}");
        // /keep and /keep/small; /tree, /tree/a and its two files are being deleted.
        assert_eq!(r.data["records"], 2, "{r:?}");
        assert_eq!(r.data["pending_delete_records"], 4, "{r:?}");
        assert_eq!(r.data["files_verified"], 1, "{r:?}");
        assert_eq!(r.data["pending_delete_files_verified"], 2, "{r:?}");
        assert!(
            r.lines[0].starts_with("fsck 'docs': 2 records, 1 files verified,"),
            "{r:?}"
        );
        assert!(
            r.lines.iter().any(|l| l.starts_with(
                "4 records of unfinished recursive deletes (not counted above; checked too: 2 files verified)"
            )),
            "{r:?}"
        );
        fs.empty_trash().await.unwrap();
        let r = admin::execute(
            &dd,
            AdminRequest::Fsck {
                fs: "docs".into(),
                accept_index: false,
            },
        )
        .await;
        assert_eq!(r.data["records"], 2, "{r:?}");
        assert_eq!(r.data["pending_delete_records"], 0, "{r:?}");
        assert_eq!(r.data["files_verified"], 1, "{r:?}");
        assert_eq!(r.data["pending_delete_files_verified"], 0, "{r:?}");
        assert!(
            !r.lines.iter().any(|l| l.contains("unfinished recursive")),
            "{r:?}"
        );
    }

    /// A filesystem restored into a new name from this one starts with its terms: after the
    /// retirement here it still holds the retired keys. The dry run, the result and its JSON
    /// name it and what to run there; the retirement is not refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_copy_holding_the_retired_keys_is_named() {
        use crate::admin::{self, AdminRequest};
        let (t, dd, fs) = env();
        put(&fs, "/a", b"a").await;
        let dest = t.path().join("backup");
        dd.backup("docs", &dest, false).await.unwrap();
        let r = admin::execute(
            &dd,
            AdminRequest::Restore {
                fs: "copy".into(),
                src: dest.to_str().unwrap().into(),
                backup_key_parts: vec![],
                backup_key_given: vec![],
                accept_unauthenticated_backup: false,
            },
        )
        .await;
        assert!(r.ok, "{r:?}");
        dd.rotate_key("docs", true).await.unwrap();
        drop(fs);

        let e = dd
            .retire_terms("docs", false)
            .await
            .unwrap()
            .0
            .dry_run_message("docs");
        assert!(e.contains("'copy' (term 1)"), "{e}");
        let r = admin::execute(
            &dd,
            AdminRequest::RetireTerms {
                fs: "docs".into(),
                yes: true,
            },
        )
        .await;
        assert!(r.ok, "{r:?}");
        let text = r.lines.join("\n");
        assert!(
            text.contains("WARNING: other filesystems still hold keys"),
            "{text}"
        );
        assert!(text.contains("Not erased yet"), "{text}");
        assert!(
            text.contains("efsctl rekey-starter --new-key-part"),
            "{text}"
        );
        assert!(
            text.contains(
                "efsctl rotate-key --fs copy --wait, then efsctl retire-terms --fs copy --yes"
            ),
            "{text}"
        );
        assert!(
            text.contains("(when the rotation to term 2 began)"),
            "{text}"
        );
        assert!(r.data["covers_deleted_before_ms"].is_i64(), "{}", r.data);
        assert_eq!(r.data["shared_with"][0]["fs"], "copy");
        assert_eq!(r.data["shared_with"][0]["terms"][0], 1);
        assert_eq!(dd.fs("docs").unwrap().term_numbers(), [2]);

        // Once the copy retired them too, a later retirement here names nobody.
        dd.rotate_key("copy", true).await.unwrap();
        let (plan, _) = dd.retire_terms("copy", true).await.unwrap();
        assert!(plan.shared.is_empty(), "{:?}", plan.shared);
    }

    /// A failure after the switch (the generation mark not recorded, the index not opening
    /// again) says that the terms are retired and what to do, not a bare error that reads as
    /// if nothing had changed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_after_the_switch_says_the_terms_are_retired() {
        let (_t, dd, fs) = env();
        put(&fs, "/a", b"a").await;
        dd.rotate_key("docs", true).await.unwrap();
        drop(fs);
        let e = dd
            .retire_terms_until("docs", true, Stop::MarkFails)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("the terms of 'docs' are retired"), "{e}");
        assert!(e.contains("recording its index generation"), "{e}");
        assert_eq!(dd.fs("docs").unwrap().term_numbers(), [2]);

        dd.rotate_key("docs", true).await.unwrap();
        let e = dd
            .retire_terms_until("docs", true, Stop::AfterSwitchNotReopened)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("the terms of 'docs' are retired"), "{e}");
        assert!(e.contains("did not open again"), "{e}");
        assert!(e.contains("efsctl fsck --fs docs"), "{e}");
    }

    /// The filesystem is closed for the rewrite: seal counts this process has not stored
    /// yet (a rotation efsctl just ran) are stored into the index first, not lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seal_counts_not_stored_yet_survive_the_retirement() {
        let (_t, dd, fs) = env();
        put(&fs, "/a", b"a").await;
        dd.rotate_key("docs", true).await.unwrap();
        fs.set_current_term_seals_for_tests(123_456);
        drop(fs);
        dd.retire_terms("docs", true).await.unwrap();
        let counts = dd.fs("docs").unwrap().seal_counts();
        assert_eq!(counts.get(&2), Some(&123_456), "{counts:?}");
    }

    /// The rewrite needs room for a second copy of the index: refused before anything is
    /// written when that would take the free-space reserve, naming the size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retire_is_refused_when_the_new_index_would_not_fit() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let part = tmp.path().join("part.key");
        keyparts::generate_part_file(&part).unwrap();
        let full = Arc::new(AtomicBool::new(false));
        let mut opts = OpenOptions::default();
        let f = full.clone();
        opts.fs.space_check = Some(crate::fs::SpaceCheck(Arc::new(move |_| {
            if f.load(Ordering::SeqCst) {
                Err(std::io::Error::other("below the free-space reserve"))
            } else {
                Ok(())
            }
        })));
        let (dd, _) = DataDir::open(
            &tmp.path().join("data"),
            &[KeyPartSpec::File(part)],
            opts,
            &keyparts::no_prompt,
        )
        .unwrap();
        dd.create_fs("docs").unwrap();
        let fs = dd.fs("docs").unwrap();
        put(&fs, "/a", b"a").await;
        dd.rotate_key("docs", true).await.unwrap();
        drop(fs);
        full.store(true, Ordering::SeqCst);
        let e = dd.retire_terms("docs", true).await.unwrap_err().to_string();
        assert!(
            e.contains("writes a new copy of the index of 'docs'"),
            "{e}"
        );
        assert!(e.contains("below the free-space reserve"), "{e}");
        assert!(e.contains("Nothing was retired"), "{e}");
        assert_eq!(dd.fs("docs").unwrap().term_numbers(), [1, 2]);
        full.store(false, Ordering::SeqCst);
        dd.retire_terms("docs", true).await.unwrap();
    }

    /// The admin entries of the audit log's details.
    fn admin_details(dd: &DataDir) -> Vec<(u16, String)> {
        dd.audit_show(&crate::audit::Filter::default())
            .unwrap()
            .entries
            .into_iter()
            .filter(|e| e.record.action == crate::audit::Action::Admin)
            .map(|e| (e.record.status, e.record.detail.unwrap_or_default()))
            .collect()
    }

    /// A crash right after the rename (efsctl killed) leaves the terms retired without the
    /// command's final entry: the entry written before the switch names them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retirement_stopped_right_after_its_switch_is_named_in_the_audit_log() {
        let (t, dd, fs) = env();
        put(&fs, "/a", b"a").await;
        dd.rotate_key("docs", true).await.unwrap();
        drop(fs);
        dd.retire_terms_until("docs", true, Stop::AfterSwitch)
            .await
            .unwrap();
        drop(dd);
        let (dd, _) = DataDir::open(
            &t.path().join("data"),
            &[KeyPartSpec::File(t.path().join("part.key"))],
            OpenOptions::default(),
            &keyparts::no_prompt,
        )
        .unwrap();
        assert_eq!(dd.fs("docs").unwrap().term_numbers(), [2]);
        let details = admin_details(&dd);
        assert!(
            details.iter().any(|(status, d)| *status == 202
                && d.starts_with("retire-terms ")
                && d.contains("\"retiring_terms\":[1]")
                && d.contains(STAGED)),
            "{details:?}"
        );
        assert!(
            !details
                .iter()
                .any(|(_, d)| d.contains("\"discarded\":true")),
            "{details:?}"
        );
    }

    /// A retirement of `docs` (after a rotation) stopped at `stop` as by a crash, its staged
    /// index left, then the data dir opened again; with the staged file's path.
    async fn stopped_then_reopened(stop: Stop) -> (tempfile::TempDir, DataDir, std::path::PathBuf) {
        let (t, dd, fs) = env();
        put(&fs, "/a", b"a").await;
        dd.rotate_key("docs", true).await.unwrap();
        let id = *fs.id();
        drop(fs);
        dd.retire_terms_until("docs", true, stop).await.unwrap();
        // Stopped: the filesystem is closed, its index not switched.
        let staged = dd.fs_dir(&id).join(STAGED);
        assert!(staged.exists());
        drop(dd);
        let (dd, _) = DataDir::open(
            &t.path().join("data"),
            &[KeyPartSpec::File(t.path().join("part.key"))],
            OpenOptions::default(),
            &keyparts::no_prompt,
        )
        .unwrap();
        (t, dd, staged)
    }

    /// Crash safety: a retire-terms stopped after staging the new index and before the
    /// switch leaves the old index in use; the next open removes the staged file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retirement_stopped_before_its_switch_is_discarded_at_the_next_open() {
        let (_t, dd, staged) = stopped_then_reopened(Stop::BeforeSwitch).await;
        assert!(!staged.exists(), "the staged index is removed at the open");
        // And says so in the audit log (a switch entry may be there).
        let details = admin_details(&dd);
        assert!(
            details.iter().any(|(status, d)| *status == 500
                && d.contains("\"discarded\":true")
                && d.contains("no term was retired")),
            "{details:?}"
        );
        let fs = dd.fs("docs").unwrap();
        assert_eq!(fs.term_numbers(), [1, 2]);
        assert_eq!(read_all(&fs, "/a").await, b"a");
        drop(fs);
        dd.retire_terms("docs", true).await.unwrap();
        assert_eq!(dd.fs("docs").unwrap().term_numbers(), [2]);
    }

    /// A crash after the entry naming the terms and before the rename: the log says the
    /// terms are being retired, so the open that discards the staged index says, after it,
    /// that none was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retirement_stopped_after_its_entry_is_said_discarded_after_it() {
        let (_t, dd, staged) = stopped_then_reopened(Stop::AfterEntry).await;
        assert!(!staged.exists(), "the staged index is removed at the open");
        let details = admin_details(&dd);
        let switching = details
            .iter()
            .position(|(status, d)| *status == 202 && d.contains("\"switching\":true"))
            .unwrap_or_else(|| panic!("{details:?}"));
        let discarded = details
            .iter()
            .position(|(status, d)| *status == 500 && d.contains("\"discarded\":true"))
            .unwrap_or_else(|| panic!("{details:?}"));
        assert!(discarded > switching, "{details:?}");
        assert_eq!(dd.fs("docs").unwrap().term_numbers(), [1, 2]);
    }
}
