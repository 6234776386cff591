//! Re-keying the starter key: new parts open everything, old parts nothing, nothing is
//! lost, and an interruption at either side of the switch leaves a working data dir.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use efs_core::keyparts::{Argon2Params, no_prompt};
use efs_core::rekey::{self, Stop};
use efs_core::{DataDir, KeyPartSpec};

/// A data dir [`fill`]ed, then closed (re-keying needs it closed): its temporary directory
/// (kept alive by the caller), root and key part, and the files.
async fn filled_and_closed() -> (
    (tempfile::TempDir, std::path::PathBuf, KeyPartSpec),
    BTreeMap<(String, String), Vec<u8>>,
) {
    let env = Env::new();
    let files = fill(&env.dd).await;
    let Env {
        tmp,
        root,
        part,
        dd,
        fs,
    } = env;
    drop(fs);
    drop(dd);
    ((tmp, root, part), files)
}

/// Fills the data dir: two filesystems (one rotated), users, a secret. Returns the files.
async fn fill(dd: &DataDir) -> BTreeMap<(String, String), Vec<u8>> {
    dd.create_fs("other").unwrap();
    let mut files = BTreeMap::new();
    for name in ["docs", "other"] {
        let fs = dd.fs(name).unwrap();
        for i in 0..40u64 {
            let path = format!("/d{}/f{i}", i % 3);
            let data = pattern(i + 1, if i % 8 == 0 { 5000 } else { 100 + i as usize });
            put(&fs, &path, &data).await;
            files.insert((name.to_owned(), path), data);
        }
    }
    dd.rotate_key("other", true).await.unwrap();
    dd.create_user("alice", [7u8; 32], vec![]).unwrap();
    dd.grant("alice", "docs", true).unwrap();
    dd.put_secret("test-secret", b"a secret value").unwrap();
    let mut rec = efs_core::audit::Record::new(efs_core::audit::Action::Admin, 200);
    rec.detail = Some("before the re-keying".into());
    dd.audit().record(rec).await.unwrap();
    files
}

async fn check(dd: &DataDir, files: &BTreeMap<(String, String), Vec<u8>>) {
    for ((name, path), data) in files {
        let fs = dd.fs(name).unwrap();
        assert!(read_all(&fs, path).await.unwrap() == *data, "{name}:{path}");
    }
    for name in ["docs", "other"] {
        let rep = dd.fs(name).unwrap().fsck().await.unwrap();
        assert!(rep.is_clean(), "{name}: {rep:?}");
    }
    let users = dd.users().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].public_key, [7u8; 32]);
    assert!(users[0].grants[0].read_only);
    assert_eq!(
        dd.secret("test-secret").unwrap().unwrap().as_slice(),
        b"a secret value"
    );
    assert!(
        dd.secret(efs_core::datadir::SECRET_SIGNING_KEY)
            .unwrap()
            .is_some()
    );
    assert_eq!(dd.fs("other").unwrap().term_numbers(), vec![1, 2]);
    // The index digests and the audit log are keyed by random roots kept as sealed system
    // secrets, carried over by the re-keying: both still verify (fsck above checked the
    // digests; before this, the audit log's keys came from the starter key itself).
    let audit = dd.audit_verify(None).unwrap();
    assert!(audit.is_clean(), "{audit:?}");
    assert!(audit.entries > 0);
}

/// The re-keying itself is an admin action, in the audit log like every other one.
fn rekey_recorded(dd: &DataDir) -> bool {
    let shown = dd.audit_show(&efs_core::audit::Filter::default()).unwrap();
    shown.entries.iter().any(|e| {
        e.record
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("rekey-starter"))
    })
}

fn leftovers(root: &Path) -> Vec<String> {
    walk(root)
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".rekey"))
        .collect()
}

async fn rekey_until(root: &Path, old: &KeyPartSpec, new: &[KeyPartSpec], stop: Stop) {
    rekey::rekey_starter_until(
        root,
        std::slice::from_ref(old),
        new,
        Argon2Params::default(),
        &no_prompt,
        stop,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_parts_open_everything_and_old_ones_nothing() {
    let env = Env::new();
    let files = fill(&env.dd).await;
    let Env {
        tmp,
        root,
        part,
        dd,
        fs,
    } = env;
    let generation_before = match dd.system_digest().unwrap() {
        efs_core::digest::DigestCheck::Holds { generation, .. } => generation,
        other => panic!("{other:?}"),
    };
    drop(fs);
    drop(dd);
    let old_keyparts = std::fs::read(root.join("system/keyparts.json")).unwrap();
    let new = vec![
        new_part(&tmp.path().join("new1.key")),
        new_part(&tmp.path().join("new2.key")),
    ];
    let lines = rekey::rekey_starter(
        &root,
        std::slice::from_ref(&part),
        &new,
        Argon2Params::default(),
        &no_prompt,
    )
    .await
    .unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("keyrings of 2 filesystems")),
        "{lines:?}"
    );
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));

    assert!(
        open(&root, std::slice::from_ref(&part)).is_err(),
        "old parts refused"
    );
    assert!(
        open(&root, &new[..1]).is_err(),
        "one of two new parts is not enough"
    );
    let dd = open(&root, &new).unwrap();
    check(&dd, &files).await;
    assert!(rekey_recorded(&dd), "the re-keying is in the audit log");
    // The system database was rebuilt under the new key; its digest's generation went on.
    match dd.system_digest().unwrap() {
        efs_core::digest::DigestCheck::Holds { generation, .. } => assert!(
            generation > generation_before,
            "{generation} after {generation_before}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        lines.iter().any(|l| l.contains("system database digest")),
        "{lines:?}"
    );
    put(&dd.fs("docs").unwrap(), "/after", b"after").await;
    drop(dd);

    // Nothing is left under the old starter key: with the old keyparts.json put back,
    // the old parts pass the part checks but open neither the system db nor a keyring.
    let saved_new = std::fs::read(root.join("system/keyparts.json")).unwrap();
    std::fs::write(root.join("system/keyparts.json"), &old_keyparts).unwrap();
    let e = open(&root, std::slice::from_ref(&part))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not open under these key parts"), "{e}");
    std::fs::write(root.join("system/keyparts.json"), &saved_new).unwrap();
    let dd = open(&root, &new).unwrap();
    check(&dd, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_switch_keeps_the_old_parts() {
    let ((tmp, root, part), files) = filled_and_closed().await;
    let new = vec![new_part(&tmp.path().join("new.key"))];
    rekey_until(&root, &part, &new, Stop::BeforeSwitch).await;
    assert!(!leftovers(&root).is_empty(), "staged files exist");
    assert!(
        open(&root, &new).is_err(),
        "not switched: new parts refused"
    );
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    assert!(leftovers(&root).is_empty(), "the staged state is discarded");
    check(&dd, &files).await;
    drop(dd);
    // A later re-keying goes through.
    rekey_until(&root, &part, &new, Stop::Never).await;
    let dd = open(&root, &new).unwrap();
    check(&dd, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_switch_is_finished_at_the_next_open() {
    let ((tmp, root, part), files) = filled_and_closed().await;
    let new = vec![new_part(&tmp.path().join("new.key"))];
    rekey_until(&root, &part, &new, Stop::AfterSwitch).await;
    assert!(
        open(&root, std::slice::from_ref(&part)).is_err(),
        "switched: old refused"
    );
    let dd = open(&root, &new).unwrap();
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    check(&dd, &files).await;
    drop(dd);
    let dd = open(&root, &new).unwrap();
    check(&dd, &files).await;
}

/// After the switch only the new parts open the data dir: a failure of a later step must
/// say so (and still warn about new `env:` parts), not read as "nothing changed", and a
/// failure only to record the re-keying in the audit log is a warning. Before, both were a
/// plain error, without the warnings: an operator could throw the new parts away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_switch_says_only_the_new_parts_open_it() {
    let ((tmp, root, part), files) = filled_and_closed().await;
    // An env: part the test process has (cargo sets it; at least 16 bytes).
    let new = vec![
        new_part(&tmp.path().join("new.key")),
        KeyPartSpec::Env("CARGO_MANIFEST_DIR".into()),
    ];
    let rekey = |old: Vec<KeyPartSpec>, new: Vec<KeyPartSpec>, stop: Stop| {
        let root = root.clone();
        async move {
            rekey::rekey_starter_until(&root, &old, &new, Argon2Params::default(), &no_prompt, stop)
                .await
        }
    };
    let e = rekey(vec![part.clone()], new.clone(), Stop::FinishFails)
        .await
        .expect_err("the finish failed")
        .to_string();
    assert!(e.contains("only the NEW key parts open it now"), "{e}");
    assert!(
        e.contains("env:CARGO_MANIFEST_DIR exists only in an environment variable"),
        "{e}"
    );
    assert!(
        open(&root, std::slice::from_ref(&part)).is_err(),
        "switched: old refused"
    );
    let dd = open(&root, &new).unwrap();
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    check(&dd, &files).await;
    drop(dd);

    let newer = vec![new_part(&tmp.path().join("newer.key"))];
    let lines = rekey(new.clone(), newer.clone(), Stop::AuditEntryFails)
        .await
        .expect("an audit entry that fails is a warning");
    assert!(lines.iter().any(|l| l.starts_with("Done")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("WARNING") && l.contains("not in the audit log")),
        "{lines:?}"
    );
    let dd = open(&root, &newer).unwrap();
    check(&dd, &files).await;
    drop(dd);

    // A complete run still warns about every new env: part.
    let lines = rekey(newer, new, Stop::Never).await.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("env:CARGO_MANIFEST_DIR exists only")),
        "{lines:?}"
    );
}

/// A new passphrase is asked for twice, and a mistyped second one changes nothing: the data
/// dir was locked for good by one typo (no other copy of the new passphrase exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_new_passphrase_changes_nothing() {
    let ((_tmp, root, part), files) = filled_and_closed().await;
    let before = std::fs::read(root.join("system/keyparts.json")).unwrap();
    let asked = std::sync::Mutex::new(Vec::new());
    let typed = |p: &str| {
        let mut a = asked.lock().unwrap();
        a.push(p.to_owned());
        Ok(if a.len() == 1 {
            "the new passphrase".to_owned()
        } else {
            "the new passphrasf".to_owned()
        })
    };
    let e = rekey::rekey_starter(
        &root,
        std::slice::from_ref(&part),
        &[KeyPartSpec::Passphrase],
        Argon2Params::default(),
        &typed,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("did not read the same twice"), "{e}");
    // Said as what happened: not "not the part this data dir was created with".
    assert!(
        e.contains("the passphrase given the second time is not the one given first"),
        "{e}"
    );
    assert!(!e.contains("created"), "{e}");
    assert_eq!(
        *asked.lock().unwrap(),
        ["New EFS passphrase: ", "New EFS passphrase, again: "]
    );
    assert_eq!(
        std::fs::read(root.join("system/keyparts.json")).unwrap(),
        before
    );
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    check(&dd, &files).await;
}

/// A key part file inside the data dir would travel with every copy of it: refused as a
/// re-keying's new part (it was taken, and the server then started with it silently) and for
/// a new data dir, through a link too; nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_part_inside_the_data_dir_is_refused() {
    let ((tmp, root, part), files) = filled_and_closed().await;
    let before = std::fs::read(root.join("system/keyparts.json")).unwrap();
    let inside = root.join("system").join("inside.part");
    std::fs::write(&inside, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n").unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(root.join("system"), &link).unwrap();
    for new in [inside.clone(), link.join("inside.part")] {
        let e = rekey::rekey_starter(
            &root,
            std::slice::from_ref(&part),
            &[KeyPartSpec::File(new.clone())],
            Argon2Params::default(),
            &no_prompt,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("is inside the data dir"),
            "{}: {e}",
            new.display()
        );
    }
    assert_eq!(
        std::fs::read(root.join("system/keyparts.json")).unwrap(),
        before
    );
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    check(&dd, &files).await;
    drop(dd);
    // A new data dir with its part inside it: an empty directory, and one not made yet (it
    // was created before the refusal), also named through a link and `..`.
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let e = open(&fresh, &[KeyPartSpec::File(fresh.join("p"))]).unwrap_err();
    assert!(e.to_string().contains("is inside the data dir"), "{e}");
    assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 0);
    let unmade = tmp.path().join("unmade").join("d");
    for part in [
        unmade.join("p"),
        unmade.join("sub").join("..").join("p"),
        link.join("..")
            .join("..")
            .join("unmade")
            .join("d")
            .join("p"),
    ] {
        let e = open(&unmade, &[KeyPartSpec::File(part.clone())]).unwrap_err();
        assert!(
            e.to_string().contains("is inside the data dir"),
            "{}: {e}",
            part.display()
        );
    }
    assert!(!tmp.path().join("unmade").exists(), "nothing was made");
}

/// The temporary file of a `keyparts.json.rekey` write that a kill cut short (the new parts'
/// salts and checks) is removed at the next open; it stayed for good (black-box review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rekeyings_temporary_keyparts_file_is_removed_at_the_next_open() {
    let ((_tmp, root, part), files) = filled_and_closed().await;
    let sys = root.join("system");
    let left = [
        sys.join(".keyparts.json.rekey.0123456789abcdef.tmp"),
        sys.join(".keyparts.json.fedcba9876543210.tmp"),
    ];
    for p in &left {
        std::fs::write(p, "{}").unwrap();
    }
    let other = sys.join(".something-else.tmp");
    std::fs::write(&other, "x").unwrap();
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    check(&dd, &files).await;
    for p in &left {
        assert!(!p.exists(), "{} left", p.display());
    }
    assert!(
        other.exists(),
        "only keyparts.json's temporaries are removed"
    );
}

/// A re-keying holds the data dir's lock from before it looks for an interrupted one until
/// it ends: a server (or efsctl) opening the data dir meanwhile is refused. Before, such an
/// open ran `recover`, took the re-keying's staged files for an interrupted one and
/// discarded them under its feet. The prompt for the new passphrase comes while the
/// re-keying runs; the open is tried there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_being_rekeyed_is_not_opened_meanwhile() {
    let ((_tmp, root, part), files) = filled_and_closed().await;
    // And a data dir that is open is not opened a second time, with the same message.
    {
        let held = open(&root, std::slice::from_ref(&part)).unwrap();
        let e = match open(&root, std::slice::from_ref(&part)) {
            Ok(_) => panic!("a second open is refused"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("in use by another process"), "{e}");
        drop(held);
    }
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let prompt = |_: &str| -> std::io::Result<String> {
        let tried = match open(&root, std::slice::from_ref(&part)) {
            Ok(_) => "opened".to_owned(),
            Err(e) => e.to_string(),
        };
        seen.lock().unwrap().push(tried);
        Ok("a new passphrase, long enough to be accepted".to_owned())
    };
    rekey::rekey_starter(
        &root,
        std::slice::from_ref(&part),
        &[KeyPartSpec::Passphrase],
        Argon2Params::default(),
        &prompt,
    )
    .await
    .unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(!seen.is_empty(), "the new passphrase was asked for");
    for tried in &seen {
        assert!(tried.contains("in use by another process"), "{seen:?}");
    }
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    let dd = DataDir::open(&root, &[KeyPartSpec::Passphrase], opts(), &|_| {
        Ok("a new passphrase, long enough to be accepted".to_owned())
    })
    .unwrap()
    .0;
    check(&dd, &files).await;
}

/// Regression: the sealed keyring was outside the index digest, so an older keyring put back
/// after a rotation went unseen. A re-keying of the starter key re-seals every keyring: it
/// writes those rows with each filesystem's digest key (here finished by the next open, after
/// a crash past the switch), so that nothing it did is taken for a change, while an older
/// keyring put back afterwards (sealed under the new key parts, so it opens) holds that
/// filesystem, and only it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_put_back_after_a_rekeying_and_a_rotation_is_seen() {
    use efs_core::IndexTrust;
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let ((tmp, root, part), files) = filled_and_closed().await;
    let new = vec![new_part(&tmp.path().join("new.key"))];
    rekey_until(&root, &part, &new, Stop::AfterSwitch).await;
    let index_file = {
        let dd = open(&root, &new).unwrap();
        assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
        check(&dd, &files).await;
        let id = hex::encode(dd.fs("docs").unwrap().id());
        root.join("fs").join(id).join("index.redb")
    };
    let keyring_row = |value: Option<&[u8]>| -> Vec<u8> {
        use redb::ReadableDatabase;
        let db = redb::Database::create(&index_file).unwrap();
        if let Some(v) = value {
            let w = db.begin_write().unwrap();
            w.open_table(META).unwrap().insert("keyring", v).unwrap();
            w.commit().unwrap();
        }
        let r = db.begin_read().unwrap();
        let t = r.open_table(META).unwrap();
        t.get("keyring").unwrap().unwrap().value().to_vec()
    };
    let term_1 = keyring_row(None);
    {
        let dd = open(&root, &new).unwrap();
        dd.rotate_key("docs", true).await.unwrap();
        check(&dd, &files).await;
    }
    keyring_row(Some(&term_1));
    let dd = open(&root, &new).unwrap();
    let docs = dd.fs("docs").unwrap();
    assert_eq!(docs.term_numbers(), vec![1], "the old keyring opens");
    assert_eq!(
        docs.hold_until_index_checked().await.unwrap(),
        IndexTrust::Failed
    );
    assert!(matches!(
        read_all(&docs, "/d0/f0").await,
        Err(efs_core::CoreError::IndexHold)
    ));
    let other = dd.fs("other").unwrap();
    assert_eq!(
        other.hold_until_index_checked().await.unwrap(),
        IndexTrust::Trusted
    );
}

/// Each index's generation mark (the highest digest generation the data dir saw it commit)
/// is a system secret, carried over by the re-keying like every other: no filesystem is
/// held after it (the re-keying only moves the generations on), and a whole index put back
/// to a copy from before the last record is still seen under the new key parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_generation_marks_are_carried_over() {
    use efs_core::IndexTrust;
    let env = Env::new();
    let files = fill(&env.dd).await;
    env.dd.record_index_generations().await.unwrap();
    let marks: Vec<u64> = ["docs", "other"]
        .iter()
        .map(|n| env.dd.fs(n).unwrap().generation_mark().expect("recorded"))
        .collect();
    let Env {
        tmp,
        root,
        part,
        dd,
        fs,
    } = env;
    drop(fs);
    drop(dd);
    let new = vec![new_part(&tmp.path().join("new.key"))];
    rekey_until(&root, &part, &new, Stop::Never).await;
    let index_file = root
        .join("fs")
        .join(
            walk(&root.join("fs"))
                .iter()
                .find_map(|p| {
                    let id = p.parent()?.file_name()?.to_str()?.to_owned();
                    (p.ends_with("index.redb")).then_some(id)
                })
                .unwrap(),
        )
        .join("index.redb");
    let copy = tmp.path().join("index-copy.redb");
    {
        let dd = open(&root, &new).unwrap();
        for (name, mark) in ["docs", "other"].iter().zip(&marks) {
            let fs = dd.fs(name).unwrap();
            assert_eq!(fs.generation_mark(), Some(*mark), "{name}");
            assert_eq!(
                fs.hold_until_index_checked().await.unwrap(),
                IndexTrust::Trusted,
                "{name}"
            );
        }
        check(&dd, &files).await;
        std::fs::copy(&index_file, &copy).unwrap();
        for name in ["docs", "other"] {
            put(&dd.fs(name).unwrap(), "/after", b"after").await;
        }
        dd.record_index_generations().await.unwrap();
    }
    std::fs::copy(&copy, &index_file).unwrap();
    let dd = open(&root, &new).unwrap();
    let held: Vec<&str> = {
        let mut held = Vec::new();
        for name in ["docs", "other"] {
            let fs = dd.fs(name).unwrap();
            if fs.hold_until_index_checked().await.unwrap() == IndexTrust::Failed {
                held.push(name);
            }
        }
        held
    };
    assert_eq!(
        held.len(),
        1,
        "the filesystem whose index was put back: {held:?}"
    );
}

/// `rekey-starter` writes its own audit entry outside a data dir's open, and records how far
/// the log went in the new system database, as every other writer does: otherwise a mark left
/// behind by a crash (here: over 20 entries behind, as a busy server's last seconds leave it)
/// stayed behind, and with the rekey's entry, written later, the next open took the system
/// database for an older copy (review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_starter_records_how_far_the_audit_log_went() {
    use efs_core::audit::{Action, Record};
    use efs_core::datadir::{AUDIT_LAG_ENTRIES, OpenOptions};
    let ((tmp, root, part), _files) = filled_and_closed().await;
    let entries = |dd: &DataDir, n: u64| {
        for _ in 0..n {
            dd.audit().submit(Record::new(Action::Read, 200)).unwrap();
        }
    };
    entries(&open(&root, std::slice::from_ref(&part)).unwrap(), 3);
    let behind = std::fs::read(root.join("system/system.redb")).unwrap();
    {
        let dd = open(&root, std::slice::from_ref(&part)).unwrap();
        entries(&dd, 5);
        std::thread::sleep(std::time::Duration::from_millis(20));
        entries(&dd, AUDIT_LAG_ENTRIES);
    }
    std::fs::write(root.join("system/system.redb"), &behind).unwrap();
    let new = vec![new_part(&tmp.path().join("new.key"))];
    rekey_until(&root, &part, &new, Stop::Never).await;
    let o = OpenOptions {
        system_lag: Some(std::time::Duration::ZERO),
        ..opts()
    };
    DataDir::open(&root, &new, o, &no_prompt).expect("the rekey recorded the log's head");
}

/// Every filesystem's index file under `root`.
fn index_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(root.join("fs"))
        .unwrap()
        .map(|e| e.unwrap().path().join("index.redb"))
        .filter(|p| p.exists())
        .collect();
    out.sort();
    out
}

/// The `keyring` row of the (closed) index at `path`: the keyring sealed under the starter key.
fn keyring_row_of(path: &Path) -> Vec<u8> {
    use redb::ReadableDatabase;
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let db = redb::Database::create(path).unwrap();
    let r = db.begin_read().unwrap();
    let t = r.open_table(META).unwrap();
    t.get("keyring").unwrap().unwrap().value().to_vec()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Why each index is copied rather than its keyring row replaced in place: redb is
/// copy-on-write, so the replaced row (the keyring sealed under the OLD starter key) would
/// stay in the file's freed pages, and whoever holds the leaked old key parts and any later
/// copy of the data dir would read every key term out of it. After a re-keying, finished at
/// once or at the next open after a crash past the switch, no index file holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_index_file_keeps_the_keyring_sealed_under_the_old_key() {
    for stop in [Stop::Never, Stop::AfterSwitch] {
        let ((tmp, root, part), files) = filled_and_closed().await;
        let indexes = index_files(&root);
        assert_eq!(indexes.len(), 2);
        let old: Vec<Vec<u8>> = indexes.iter().map(|p| keyring_row_of(p)).collect();
        for (p, k) in indexes.iter().zip(&old) {
            assert!(contains(&std::fs::read(p).unwrap(), k), "{}", p.display());
        }
        let new = vec![new_part(&tmp.path().join("new.key"))];
        rekey_until(&root, &part, &new, stop).await;
        let dd = open(&root, &new).unwrap();
        assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
        for p in &indexes {
            let bytes = std::fs::read(p).unwrap();
            for k in &old {
                assert!(!contains(&bytes, k), "{stop:?}: {}", p.display());
            }
        }
        check(&dd, &files).await;
    }
}

/// A failure while staging (a full disk, say) removes everything staged at once — the index
/// copies can be as large as the indexes — and says that nothing changed and the current
/// parts still open the data dir. Before, the staged files stayed (on a full disk) until the
/// next open, and the error was a bare "No space left on device".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_staging_removes_what_it_staged_and_says_nothing_changed() {
    let ((tmp, root, part), files) = filled_and_closed().await;
    let new = vec![new_part(&tmp.path().join("new.key"))];
    let e = rekey::rekey_starter_until(
        &root,
        std::slice::from_ref(&part),
        &new,
        Argon2Params::default(),
        &no_prompt,
        Stop::StagingFails,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("Nothing was changed"), "{e}");
    assert!(e.contains("free space"), "{e}");
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    assert!(open(&root, &new).is_err(), "not switched");
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    check(&dd, &files).await;
}
