//! The data dir: nothing readable on disk, key parts checked before anything is written,
//! the quick start, users and grants, and the admin commands.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use common::{
    accept_system, assert_system_held, new_part, open, open_accepting_system, opts, p, pattern,
    put, read_all, walk,
};
use efs_core::admin::{AdminRequest, execute};
use efs_core::datadir::{SERVER_USER, check_name, check_new_user_name};
use efs_core::keyparts::{KeyError, no_prompt};
use efs_core::system::GrantRecord;
use efs_core::{CoreError, DataDir, KeyPartSpec};
use sha2::Digest;

const MARKER: &str = "MARKER-7c3f-do-not-leak";

/// Path → SHA-256 of every file under `root`.
fn hash_tree(root: &Path) -> BTreeMap<String, [u8; 32]> {
    walk(root)
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(root).unwrap().display().to_string();
            (rel, sha2::Sha256::digest(std::fs::read(&f).unwrap()).into())
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn grant(fs: &str, read_only: bool) -> GrantRecord {
    GrantRecord {
        fs: fs.into(),
        read_only,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_readable_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let part_text = std::fs::read(tmp.path().join("part.key")).unwrap();
    let part_raw = base64::engine::general_purpose::STANDARD
        .decode(part_text.trim_ascii_end())
        .unwrap();
    {
        let dd = open(&root, std::slice::from_ref(&part)).unwrap();
        dd.create_fs("clinic-records").unwrap();
        dd.create_user("drhouse", [7; 32], vec![grant("clinic-records", false)])
            .unwrap();
        let fs = dd.fs("clinic-records").unwrap();
        // Inline and blob content, one and several segments, the marker inside and at
        // segment boundaries.
        let mut big = pattern(1, 200_000);
        for at in [0, 65_530, 131_070, 199_000] {
            big[at..at + MARKER.len()].copy_from_slice(MARKER.as_bytes());
        }
        put(&fs, "/patients/173/prescription.pdf", &big).await;
        put(
            &fs,
            "/patients/173/notes.txt",
            format!("note {MARKER}").as_bytes(),
        )
        .await;
        put(&fs, "/patients/174/prescription.pdf", MARKER.as_bytes()).await;
        fs.mkdir(&p("/patients/175/prescription-archive"))
            .await
            .unwrap();
        // A renamed and a deleted file leave nothing either.
        put(&fs, "/patients/176/prescription-old.pdf", MARKER.as_bytes()).await;
        fs.rename(
            &p("/patients/176/prescription-old.pdf"),
            &p("/patients/176/prescription-new.pdf"),
            false,
        )
        .await
        .unwrap();
        put(&fs, "/patients/177/prescription.pdf", &big).await;
        fs.delete(&p("/patients/177"), Default::default(), true)
            .await
            .unwrap();
    } // Closed: everything is on disk.

    let files = walk(&root);
    assert!(
        files.len() >= 4,
        "keyparts, system db, index, a blob: {files:?}"
    );
    let needles: Vec<&[u8]> = vec![
        b"patients",
        b"prescription",
        b"notes.txt",
        b"drhouse",
        b"clinic-records",
        b"clinic",
        MARKER.as_bytes(),
        &MARKER.as_bytes()[..12],
        part_text.trim_ascii_end(),
        &part_raw[..16],
    ];
    let mut saw_kinds = false;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let name = f.strip_prefix(&root).unwrap().display().to_string();
        for n in &needles {
            assert!(
                !contains(&bytes, n),
                "{name} contains {:?}",
                String::from_utf8_lossy(n)
            );
            assert!(!contains(name.as_bytes(), n), "file name {name}");
        }
        if name.ends_with("keyparts.json") {
            // The only plain facts: the part kinds (and salt, check tags).
            saw_kinds = contains(&bytes, b"\"file\"");
        }
    }
    assert!(saw_kinds, "the scan did read keyparts.json");
    // The filesystem's directory is a random id.
    let fs_dirs: Vec<String> = std::fs::read_dir(root.join("fs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(fs_dirs.len(), 1);
    assert!(fs_dirs[0].len() == 32 && fs_dirs[0].chars().all(|c| c.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&root).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the data dir is private");
    // The key part is not in the data dir.
    assert!(!tmp.path().join("part.key").starts_with(&root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_with_the_same_part_finds_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let big = pattern(3, 150_000);
    {
        let (dd, rep) =
            DataDir::open(&root, std::slice::from_ref(&part), opts(), &no_prompt).unwrap();
        assert!(rep.initialised);
        assert_eq!(rep.generated_key_part, None);
        dd.create_fs("docs").unwrap();
        dd.create_fs("other").unwrap();
        dd.create_user("alice", [1; 32], vec![grant("docs", true)])
            .unwrap();
        let fs = dd.fs("docs").unwrap();
        put(&fs, "/a/big.bin", &big).await;
        put(&fs, "/a/small.txt", b"small").await;
        assert!(dd.secret("token-signing-key").unwrap().is_some());
    }
    let (dd, rep) = DataDir::open(&root, std::slice::from_ref(&part), opts(), &no_prompt).unwrap();
    assert!(!rep.initialised);
    let names: Vec<String> = dd.list_fs().unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["docs", "other"]);
    let fs = dd.fs("docs").expect("reopened");
    assert!(read_all(&fs, "/a/big.bin").await.unwrap() == big);
    assert_eq!(read_all(&fs, "/a/small.txt").await.unwrap(), b"small");
    assert!(fs.fsck().await.unwrap().is_clean());
    let alice = dd.user("alice").unwrap().unwrap();
    assert_eq!(alice.grants, vec![grant("docs", true)]);
    assert_eq!(alice.public_key, [1; 32]);
    assert!(dd.fs("nope").is_none());
    // Open twice at once is refused with a clear message.
    let e = open(&root, std::slice::from_ref(&part)).err().unwrap();
    assert!(e.to_string().contains("in use"), "{e}");
}

/// A create-fs whose registration (a commit of the system database) reports an error has an
/// unknown outcome: the row may be on disk. Its directory must stay unless the row certainly
/// is not there; before, it was always removed, and a row that had landed then named a
/// missing directory: the data dir no longer opened, for any filesystem.
/// A data dir opened by a relative path (`efs-server --data ./efs-data`) names the new
/// filesystem's directory by its absolute path: efsctl prints that line, wherever it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_fs_names_the_directory_by_its_absolute_path() {
    let tmp = tempfile::tempdir().unwrap();
    let part = new_part(&tmp.path().join("part.key"));
    // The same directory, relative to this process's working directory (which a test must
    // not change: other tests run in this process).
    let cwd = std::env::current_dir().unwrap();
    let mut rel = std::path::PathBuf::new();
    for _ in 1..cwd.components().count() {
        rel.push("..");
    }
    let abs = tmp.path().join("data");
    rel.push(abs.strip_prefix("/").unwrap());
    assert!(rel.is_relative());
    let dd = open(&rel, std::slice::from_ref(&part)).unwrap();
    let lines = dd.create_fs("docs").unwrap();
    let abs = std::fs::canonicalize(&abs).unwrap();
    let want = format!("Creating filesystem 'docs' in '{}/fs/", abs.display());
    assert!(lines[0].starts_with(&want), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_fs_whose_registration_may_have_landed_keeps_its_directory() {
    use efs_core::system::Fault;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let parts = std::slice::from_ref(&part);
    let fs_dirs = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root.join("fs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    {
        let dd = open(&root, parts).unwrap();
        dd.create_fs("before").unwrap();
        // Certainly not committed: removed, as before.
        dd.inject_system_fault(Fault::CommitFails);
        let e = dd.create_fs("refused").unwrap_err().to_string();
        assert!(e.contains("injected fault"), "{e}");
        assert_eq!(
            fs_dirs().len(),
            1,
            "a registration that did not happen leaves nothing"
        );
        // Committed, then an error: unknown, kept, and said so.
        dd.inject_system_fault(Fault::CommitLandsThenFails);
        let e = dd.create_fs("landed").unwrap_err().to_string();
        assert!(e.contains("unknown outcome"), "{e}");
        assert_eq!(fs_dirs().len(), 2, "{e}");
        // Committed, then an error, and nothing reads: the same.
        dd.inject_system_fault(Fault::CommitLandsThenReadsFail);
        let e = dd.create_fs("unknown").unwrap_err().to_string();
        assert!(e.contains("unknown outcome"), "{e}");
        assert!(e.contains("list-fs"), "{e}");
        assert_eq!(fs_dirs().len(), 3, "{e}");
        dd.inject_system_fault(Fault::Never);
        // Regression: committed, then an error, while reading the row back says it is not
        // there (redb takes a commit as current only after its fsync succeeded). The
        // directory was removed on that answer, and the next open found a registered
        // filesystem without it. Now it is kept.
        dd.inject_system_fault(Fault::CommitLandsUnseen);
        let e = dd.create_fs("unseen").unwrap_err().to_string();
        assert!(e.contains("unknown outcome"), "{e}");
        assert!(e.contains("Restart"), "{e}");
        let listed: Vec<String> = dd.list_fs().unwrap().into_iter().map(|f| f.name).collect();
        assert!(!listed.contains(&"unseen".to_owned()), "{listed:?}");
        assert_eq!(fs_dirs().len(), 4, "{e}");
    }
    // A restart: every registered filesystem has its directory; both that landed serve.
    let dd = open(&root, parts).expect("the data dir opens after a registration that landed");
    let listed: Vec<String> = dd
        .list_fs()
        .unwrap()
        .into_iter()
        .map(|f| hex::encode(f.id))
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, fs_dirs());
    for name in ["before", "landed", "unknown", "unseen"] {
        let fs = dd.fs(name).unwrap_or_else(|| panic!("{name} is served"));
        put(&fs, "/a.txt", b"a").await;
        assert_eq!(read_all(&fs, "/a.txt").await.unwrap(), b"a");
    }
    assert!(dd.fs("refused").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_part_is_refused_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    {
        let dd = open(&root, std::slice::from_ref(&part)).unwrap();
        dd.create_fs("docs").unwrap();
        put(&dd.fs("docs").unwrap(), "/f", &pattern(1, 5000)).await;
    }
    let before = hash_tree(&root);
    let wrong = new_part(&tmp.path().join("wrong.key"));
    let e = open(&root, &[wrong]).expect_err("a wrong part is refused");
    assert!(
        matches!(e, CoreError::Key(KeyError::WrongPart { index: 1, .. })),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("wrong") && msg.contains("key part 1"), "{msg}");
    // A missing part file, and an empty one.
    let e = open(&root, &[KeyPartSpec::File(tmp.path().join("absent"))])
        .err()
        .unwrap();
    assert!(
        matches!(e, CoreError::Key(KeyError::Unreadable { .. })),
        "{e}"
    );
    std::fs::write(tmp.path().join("empty"), "").unwrap();
    let e = open(&root, &[KeyPartSpec::File(tmp.path().join("empty"))])
        .err()
        .unwrap();
    assert!(
        matches!(e, CoreError::Key(KeyError::Unreadable { .. })),
        "{e}"
    );
    // No part at all: this data dir was not made by the quick start.
    let e = open(&root, &[]).err().unwrap();
    assert!(matches!(e, CoreError::Key(KeyError::Mismatch(_))), "{e}");
    assert_eq!(
        hash_tree(&root),
        before,
        "not one byte of the data dir changed"
    );
    // And the right part still opens it.
    let dd = open(&root, &[part]).unwrap();
    assert_eq!(
        read_all(&dd.fs("docs").unwrap(), "/f").await.unwrap(),
        pattern(1, 5000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_is_needed_in_its_order() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let a = new_part(&tmp.path().join("a.key"));
    let b = new_part(&tmp.path().join("b.key"));
    {
        let dd = open(&root, &[a.clone(), b.clone()]).unwrap();
        dd.create_fs("docs").unwrap();
    }
    let before = hash_tree(&root);
    for given in [vec![a.clone()], vec![b.clone()]] {
        let e = open(&root, &given).err().unwrap();
        assert!(matches!(e, CoreError::Key(KeyError::Mismatch(_))), "{e}");
        assert!(e.to_string().contains("2 key part"), "{e}");
    }
    let e = open(&root, &[a.clone(), b.clone(), a.clone()])
        .err()
        .unwrap();
    assert!(matches!(e, CoreError::Key(KeyError::Mismatch(_))), "{e}");
    let e = open(&root, &[b.clone(), a.clone()]).err().unwrap();
    assert!(
        matches!(e, CoreError::Key(KeyError::WrongPart { index: 1, .. })),
        "{e}"
    );
    let c = new_part(&tmp.path().join("c.key"));
    let e = open(&root, &[a.clone(), c]).err().unwrap();
    assert!(
        matches!(e, CoreError::Key(KeyError::WrongPart { index: 2, .. })),
        "{e}"
    );
    assert_eq!(hash_tree(&root), before);
    let dd = open(&root, &[a, b]).unwrap();
    assert!(dd.fs("docs").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_generates_a_part_beside_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let expected = tmp.path().join("data.keypart");
    {
        let (dd, rep) = DataDir::open(&root, &[], opts(), &no_prompt).unwrap();
        assert!(rep.initialised);
        assert_eq!(rep.generated_key_part.as_deref(), Some(expected.as_path()));
        let meta = std::fs::metadata(&expected).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(meta.len() >= 32);
        assert!(!expected.starts_with(&root), "never inside the data dir");
        dd.create_fs("docs").unwrap();
        put(&dd.fs("docs").unwrap(), "/hello", b"world").await;
    }
    let key_before = std::fs::read(&expected).unwrap();
    let (dd, rep) = DataDir::open(&root, &[], opts(), &no_prompt).unwrap();
    assert!(!rep.initialised);
    assert_eq!(rep.generated_key_part, None);
    assert_eq!(
        std::fs::read(&expected).unwrap(),
        key_before,
        "the key is never rewritten"
    );
    assert_eq!(
        read_all(&dd.fs("docs").unwrap(), "/hello").await.unwrap(),
        b"world"
    );
    drop(dd);
    // Given explicitly, the generated part works too.
    let dd = open(&root, &[KeyPartSpec::File(expected.clone())]).unwrap();
    assert!(dd.fs("docs").is_some());
    drop(dd);
    // Without the key file, the data dir does not open.
    std::fs::rename(&expected, tmp.path().join("moved")).unwrap();
    let e = open(&root, &[]).err().unwrap();
    assert!(
        matches!(e, CoreError::Key(KeyError::Unreadable { .. })),
        "{e}"
    );
}

/// A data dir whose parent directories do not exist yet is created with them (the quick
/// start's key part goes beside it); one that cannot be created says which and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_is_created_with_its_missing_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv").join("efs").join("data");
    let (dd, rep) = DataDir::open(&root, &[], opts(), &no_prompt).unwrap();
    assert!(rep.initialised);
    assert_eq!(
        rep.generated_key_part.as_deref(),
        Some(tmp.path().join("srv/efs/data.keypart").as_path())
    );
    dd.create_fs("docs").unwrap();
    drop(dd);
    assert!(open(&root, &[]).unwrap().fs("docs").is_some());

    // Under a plain file (no directory can be made there), or where a parent is a file:
    // the message names the data dir.
    std::fs::write(tmp.path().join("file"), b"x").unwrap();
    for bad in [
        tmp.path().join("file").join("data"),
        tmp.path().join("file").join("a").join("data"),
    ] {
        let e = DataDir::open(&bad, &[], opts(), &no_prompt).err().unwrap();
        let msg = e.to_string();
        assert!(
            matches!(e, CoreError::Invalid(_))
                && msg.contains("data dir")
                && msg.contains(&bad.display().to_string()),
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_empty_dir_without_keyparts_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("holiday.jpg"), b"not ours").unwrap();
    let part = new_part(&tmp.path().join("part.key"));
    let before = hash_tree(&root);
    let e = open(&root, &[part]).expect_err("refused");
    assert!(matches!(e, CoreError::Invalid(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("keyparts.json") && msg.contains("not an EFS data dir"),
        "{msg}"
    );
    assert_eq!(hash_tree(&root), before, "nothing written");
    assert!(!root.join("system").exists());
    assert!(!tmp.path().join("data.keypart").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_grants_and_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let g;
    {
        let dd = open(&root, std::slice::from_ref(&part)).unwrap();
        dd.create_fs("docs").unwrap();
        dd.create_fs("photos").unwrap();
        let u = dd
            .create_user("alice", [1; 32], vec![grant("docs", false)])
            .unwrap();
        // A random first generation (below 2^48), so that a user deleted and created again
        // under the same name does not start where the deleted one started.
        g = u.generation;
        assert!((1..1 << 48).contains(&g), "{g}");

        let u = dd.grant("alice", "photos", true).unwrap();
        assert_eq!(u.generation, g + 1, "a grant revokes earlier tokens");
        assert_eq!(u.grants, vec![grant("docs", false), grant("photos", true)]);
        // Changing a grant replaces it.
        let u = dd.grant("alice", "docs", true).unwrap();
        assert_eq!(u.generation, g + 2);
        assert_eq!(u.grants.len(), 2);
        assert!(u.grants.contains(&grant("docs", true)));

        let u = dd.revoke("alice", None).unwrap();
        assert_eq!(u.generation, g + 3, "revoking all tokens keeps the grants");
        assert_eq!(u.grants.len(), 2);
        let u = dd.revoke("alice", Some("photos")).unwrap();
        assert_eq!(
            (u.generation, u.grants.clone()),
            (g + 4, vec![grant("docs", true)])
        );
        let e = dd.revoke("alice", Some("photos")).err().unwrap();
        assert!(matches!(e, CoreError::Invalid(_)), "{e}");
        assert_eq!(
            dd.user("alice").unwrap().unwrap().generation,
            g + 4,
            "unchanged"
        );

        let u = dd.bind_cert("alice", Some([9; 32])).unwrap();
        assert_eq!((u.generation, u.cert_sha256), (g + 5, Some([9; 32])));

        // Refusals.
        assert!(matches!(
            dd.create_user("alice", [2; 32], vec![]),
            Err(CoreError::Exists(_))
        ));
        assert!(matches!(
            dd.create_user("bob", [2; 32], vec![grant("nope", false)]),
            Err(CoreError::Invalid(_))
        ));
        assert!(
            dd.user("bob").unwrap().is_none(),
            "a refused user is not created"
        );
        assert!(matches!(
            dd.grant("bob", "docs", false),
            Err(CoreError::Invalid(_))
        ));
        assert!(matches!(
            dd.grant("alice", "nope", false),
            Err(CoreError::Invalid(_))
        ));
        assert!(matches!(dd.revoke("bob", None), Err(CoreError::Invalid(_))));

        dd.create_user("bob", [2; 32], vec![]).unwrap();
        let names: Vec<String> = dd.users().unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["alice", "bob"]);
        dd.delete_user("bob").unwrap();
        assert!(dd.user("bob").unwrap().is_none());
        assert!(matches!(dd.delete_user("bob"), Err(CoreError::Invalid(_))));

        // A user created again under a deleted user's name starts at another generation:
        // tokens hash the creation time (ms) and the generation, so within one millisecond
        // the same first generation would make the deleted user's tokens the new one's.
        let first = dd.create_user("bob", [2; 32], vec![]).unwrap();
        dd.delete_user("bob").unwrap();
        let again = dd.create_user("bob", [2; 32], vec![]).unwrap();
        assert_ne!(first.generation, again.generation);
        dd.delete_user("bob").unwrap();
    }
    // All of it survives a restart.
    let dd = open(&root, &[part]).unwrap();
    let alice = dd.user("alice").unwrap().unwrap();
    assert_eq!(alice.generation, g + 5);
    assert_eq!(alice.grants, vec![grant("docs", true)]);
    assert_eq!(alice.cert_sha256, Some([9; 32]));
    assert!(dd.user("bob").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_validated() {
    for ok in ["a", "docs", "A-b_c.d", "x1", &"n".repeat(64)] {
        assert!(check_name("user", ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".hidden",
        "..",
        "a/b",
        "a b",
        "é",
        "a\0b",
        "a\nb",
        "../etc",
        &"n".repeat(65),
    ] {
        let e = check_name("filesystem", bad)
            .err()
            .unwrap_or_else(|| panic!("{bad:?}"));
        assert!(matches!(e, CoreError::Invalid(_)));
        assert!(e.to_string().contains("filesystem name"), "{e}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let dd = open(&root, &[new_part(&tmp.path().join("k"))]).unwrap();
    for bad in ["../escape", "a/b", ".x", ""] {
        assert!(
            matches!(dd.create_fs(bad), Err(CoreError::Invalid(_))),
            "{bad}"
        );
        assert!(
            matches!(
                dd.create_user(bad, [0; 32], vec![]),
                Err(CoreError::Invalid(_))
            ),
            "{bad}"
        );
    }
    assert!(dd.list_fs().unwrap().is_empty());
    assert_eq!(
        walk(&root.join("fs")).len(),
        0,
        "no directory made for a refused name"
    );
    dd.create_fs("docs").unwrap();
    assert!(matches!(dd.create_fs("docs"), Err(CoreError::Exists(_))));
    assert_eq!(dd.list_fs().unwrap().len(), 1);
    // The name the audit log records the server's own gc and key rotation under is no new
    // user's (a user named so mixed with them in `audit show --user efs-server`). Still a
    // well-formed name: a user of that name from before keeps working (datadir.rs unit test).
    assert_eq!(SERVER_USER, "efs-server");
    let e = dd.create_user(SERVER_USER, [0; 32], vec![]).unwrap_err();
    assert!(matches!(e, CoreError::Invalid(_)), "{e}");
    assert!(e.to_string().contains("'efs-server' is reserved"), "{e}");
    assert!(check_new_user_name(SERVER_USER).is_err());
    assert!(check_name("user", SERVER_USER).is_ok());
    assert!(dd.user(SERVER_USER).unwrap().is_none());
    dd.create_user("efs-server-2", [1; 32], vec![]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let dd = open(&root, &[new_part(&tmp.path().join("k"))]).unwrap();

    // The wire format of the admin socket.
    let req: AdminRequest = serde_json::from_str(r#"{"cmd":"create-fs","name":"docs"}"#).unwrap();
    let r = execute(&dd, req).await;
    assert!(r.ok, "{:?}", r.error);
    assert!(r.lines.len() >= 3, "{:?}", r.lines);
    assert!(r.lines[0].contains("'docs'"), "{:?}", r.lines);
    assert_eq!(r.data["name"], "docs");
    let r = execute(
        &dd,
        AdminRequest::CreateFs {
            name: "docs".into(),
        },
    )
    .await;
    assert!(!r.ok);
    assert!(r.error.unwrap().contains("already exists"));

    let r = execute(&dd, AdminRequest::ListFs).await;
    assert!(r.ok);
    let id = hex::encode(dd.fs("docs").unwrap().id());
    assert_eq!(r.lines, vec![format!("docs\t{id}")]);
    assert_eq!(r.data[0]["id"], id.as_str());

    let b64 = |raw: &[u8]| base64::engine::general_purpose::STANDARD.encode(raw);
    let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32])
        .verifying_key()
        .to_bytes();
    let req: AdminRequest = serde_json::from_value(serde_json::json!({
        "cmd": "create-user", "name": "svc", "public_key": b64(&key),
        "grants": [{"fs": "docs", "read_only": false}],
    }))
    .unwrap();
    let r = execute(&dd, req).await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(dd.user("svc").unwrap().unwrap().public_key, key);
    // Refused through the socket as efsctl refuses them: too short, not a point of the curve
    // (y = 2 has no x), the identity (small order: any signature would pass), both for a new
    // user and as a replacement key; nothing is saved.
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for bad in [b64(b"short"), b64(&not_a_point), b64(&identity)] {
        let r = execute(
            &dd,
            AdminRequest::CreateUser {
                name: "bad".into(),
                public_key: bad.clone(),
                grants: vec![],
            },
        )
        .await;
        let e = r.error.unwrap_or_default();
        assert!(
            !r.ok && e.contains("Ed25519 public key: 32 bytes"),
            "{bad}: {e}"
        );
        let r: efs_core::admin::AdminResponse = execute(
            &dd,
            serde_json::from_value(serde_json::json!({
                "cmd": "replace-key", "user": "svc", "public_key": bad,
            }))
            .unwrap(),
        )
        .await;
        assert!(!r.ok, "replace-key took {bad}");
    }
    assert!(dd.user("bad").unwrap().is_none());
    assert_eq!(dd.user("svc").unwrap().unwrap().public_key, key);

    let fs = dd.fs("docs").unwrap();
    put(&fs, "/x/y", &pattern(1, 3000)).await;
    put(&fs, "/x/z", b"z").await;
    let r = execute(
        &dd,
        AdminRequest::Fsck {
            fs: "docs".into(),
            accept_index: false,
        },
    )
    .await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.clean, Some(true));
    assert_eq!(r.lines.len(), 2, "{:?}", r.lines);
    assert!(
        r.lines[0].contains("3 records, 2 files verified, 0 errors"),
        "{:?}",
        r.lines
    );
    // Four batches changed what the digest covers: the keyring and the counts of sealed
    // records at the creation, then the two writes (the first also created /x).
    assert!(
        r.lines[1].starts_with("index digest: generation 4, anchor "),
        "{:?}",
        r.lines
    );
    assert_eq!(r.data["digest"]["holds"], true);
    assert_eq!(r.data["digest"]["entries"], 3);

    // An orphan blob: fsck says so, gc removes it.
    let blobs = root.join("fs").join(&id).join("blobs");
    let real = walk(&blobs)
        .into_iter()
        .find(|f| !f.starts_with(blobs.join("tmp")))
        .unwrap();
    let orphan = blobs
        .join("ab")
        .join("cd")
        .join(format!("abcd{}", "0".repeat(28)));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::copy(&real, &orphan).unwrap();
    let r = execute(
        &dd,
        AdminRequest::Fsck {
            fs: "docs".into(),
            accept_index: false,
        },
    )
    .await;
    assert!(r.ok);
    assert_eq!(r.clean, Some(false));
    assert!(
        r.lines.iter().any(|l| l.contains("orphan blob: abcd")),
        "{:?}",
        r.lines
    );
    let req: AdminRequest =
        serde_json::from_str(r#"{"cmd":"gc","fs":"docs","grace_secs":0}"#).unwrap();
    let r = execute(&dd, req).await;
    assert!(r.ok, "{:?}", r.error);
    assert!(
        r.lines[0].contains("removed 1 orphan blobs"),
        "{:?}",
        r.lines
    );
    assert_eq!(r.data["blobs_removed"], 1);
    assert!(!orphan.exists() && real.exists());
    let r = execute(
        &dd,
        AdminRequest::Fsck {
            fs: "docs".into(),
            accept_index: false,
        },
    )
    .await;
    assert_eq!(r.clean, Some(true));

    for req in [
        AdminRequest::Fsck {
            fs: "nope".into(),
            accept_index: false,
        },
        AdminRequest::Gc {
            fs: "nope".into(),
            grace_secs: 0,
        },
    ] {
        let r = execute(&dd, req).await;
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("no filesystem named 'nope'"));
    }
    let r = execute(&dd, AdminRequest::ListUsers).await;
    // The key as --json has it, which create-user --pubkey reads back.
    assert_eq!(r.lines, vec![format!("svc\tdocs\t{}", b64(&key))]);
}

/// Regression: deleting the index digest together with its key (the system secret
/// `index-digest/<fs id>`) made the next open start a new digest over whatever the index
/// held, here with a file's record removed. A digest is now computed at open only for an
/// index without entries: the missing key is reported and the filesystem held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_index_digest_and_key_are_reported_not_rebuilt() {
    // One record removed; then every record (a new digest over the emptied index would
    // have served the filesystem as trusted and empty).
    removed_digest_and_key(false).await;
    removed_digest_and_key(true).await;
}

/// `efsctl fsck --fs docs --accept-index`, which must lift the hold on `fs`.
async fn accept_index(dd: &DataDir, fs: &efs_core::Filesystem) {
    let r = execute(
        dd,
        AdminRequest::Fsck {
            fs: "docs".into(),
            accept_index: true,
        },
    )
    .await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(fs.index_trust(), efs_core::IndexTrust::Trusted);
}

/// A data dir at `root` with filesystem `docs` holding `files`, closed again; the path of
/// its index file (for tests that edit it behind EFS's back).
async fn docs_with_files(
    root: &Path,
    part: &KeyPartSpec,
    files: &[(&str, &[u8])],
) -> std::path::PathBuf {
    let dd = open(root, std::slice::from_ref(part)).unwrap();
    dd.create_fs("docs").unwrap();
    let fs = dd.fs("docs").unwrap();
    for (path, data) in files {
        put(&fs, path, data).await;
    }
    walk(root)
        .into_iter()
        .find(|f| f.ends_with("index.redb"))
        .unwrap()
}

/// Edits an index's `entries` table by hand (the server stopped), in one transaction.
fn edit_entries(index_file: &std::path::Path, edit: impl FnOnce(&mut redb::Table<&[u8], &[u8]>)) {
    const ENTRIES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("entries");
    let db = redb::Database::create(index_file).unwrap();
    let w = db.begin_write().unwrap();
    edit(&mut w.open_table(ENTRIES).unwrap());
    w.commit().unwrap();
}

async fn removed_digest_and_key(wipe: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let index_file = docs_with_files(&root, &part, &[("/a.txt", b"one"), ("/b.txt", b"two")]).await;
    let fs_id = index_file
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    {
        const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        const ENTRIES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("entries");
        let db = redb::Database::create(&index_file).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(META).unwrap().remove("digest").unwrap();
        {
            // One file's record gone (the root's two files, the last key).
            use redb::{ReadableTable, ReadableTableMetadata};
            let mut entries = w.open_table(ENTRIES).unwrap();
            assert_eq!(entries.len().unwrap(), 2);
            let last = entries.last().unwrap().unwrap().0.value().to_vec();
            entries.remove(last.as_slice()).unwrap();
            if wipe {
                let first = entries.first().unwrap().unwrap().0.value().to_vec();
                entries.remove(first.as_slice()).unwrap();
                assert!(entries.is_empty().unwrap());
            }
        }
        w.commit().unwrap();
    }
    {
        const SECRETS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("secrets");
        let db = redb::Database::create(root.join("system/system.redb")).unwrap();
        let w = db.begin_write().unwrap();
        let name = format!("index-digest/{fs_id}");
        assert!(
            w.open_table(SECRETS)
                .unwrap()
                .remove(name.as_str())
                .unwrap()
                .is_some()
        );
        w.commit().unwrap();
    }
    // The system database's own digest sees its row removed first; once the operator
    // accepts the system database as it is, the index's own check still holds the fs.
    assert_system_held(&root, std::slice::from_ref(&part));
    accept_system(&root, std::slice::from_ref(&part));
    let dd = std::sync::Arc::new(open(&root, std::slice::from_ref(&part)).unwrap());
    let fs = dd.fs("docs").unwrap();
    assert_eq!(
        fs.check_index_digest().await.unwrap(),
        efs_core::digest::DigestCheck::Unreadable,
        "no digest was made over the index as it was found"
    );
    let verdict = fs.hold_until_index_checked().await.unwrap();
    assert_eq!(verdict, efs_core::IndexTrust::Failed);
    assert!(matches!(
        read_all(&fs, "/a.txt").await,
        Err(CoreError::IndexHold)
    ));
    // Held across a restart too (the new key now exists; the digest still does not).
    drop(fs);
    drop(dd);
    let dd = std::sync::Arc::new(open(&root, std::slice::from_ref(&part)).unwrap());
    let fs = dd.fs("docs").unwrap();
    assert_eq!(
        fs.hold_until_index_checked().await.unwrap(),
        efs_core::IndexTrust::Failed
    );
    // The operator, once satisfied, accepts the index as it is.
    accept_index(&dd, &fs).await;
}

/// Regression: without a server, nothing checked an index against its digest before efsctl
/// copied or rewrote it: a backup of an index edited while the server was stopped
/// succeeded (and its restore got a fresh digest). Backup, gc, key rotation and
/// re-encryption now check first, as the server does at start, and refuse a held index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn efsctl_without_a_server_refuses_to_copy_or_rewrite_a_held_index() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let index_file = docs_with_files(&root, &part, &[("/a.txt", b"one"), ("/b.txt", b"two")]).await;
    // One record removed by hand; the digest and its key are left alone.
    edit_entries(&index_file, |entries| {
        use redb::ReadableTable;
        let first = entries.first().unwrap().unwrap().0.value().to_vec();
        entries.remove(first.as_slice()).unwrap();
    });
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    let dest = tmp.path().join("backup");
    for req in [
        AdminRequest::Backup {
            fs: "docs".into(),
            dest: dest.to_str().unwrap().into(),
            include_keys: false,
            skip_damaged: false,
        },
        AdminRequest::Gc {
            fs: "docs".into(),
            grace_secs: 0,
        },
        AdminRequest::RotateKey {
            fs: "docs".into(),
            wait: true,
        },
        AdminRequest::Reencrypt {
            fs: "docs".into(),
            wait: true,
        },
    ] {
        let what = format!("{req:?}");
        let r = execute(&dd, req).await;
        assert!(!r.ok, "{what} ran on a held index");
        assert!(
            r.error.as_deref().unwrap_or("").contains("hold"),
            "{what}: {:?}",
            r.error
        );
    }
    assert!(
        !dest.join("manifest.json").exists(),
        "no backup was written"
    );
    assert_eq!(
        dd.fs("docs").unwrap().index_trust(),
        efs_core::IndexTrust::Failed
    );
}

/// Regression: deleting the audit log's root key (the system secret `audit-root`) made the
/// next open start a new key, after which no entry before it could be verified (the open only
/// warned about the HEAD anchor). The data dir now refuses to open while a log is there;
/// moving the log aside, on purpose, starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_audit_root_key_is_refused_while_a_log_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    {
        let dd = open(&root, std::slice::from_ref(&part)).unwrap();
        dd.create_fs("docs").unwrap();
        assert!(execute(&dd, AdminRequest::ListFs).await.ok);
    }
    let audit_dir = root.join("system/audit");
    let log_files = std::fs::read_dir(&audit_dir).unwrap().count();
    assert!(log_files > 0, "the admin command was recorded");
    {
        const SECRETS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("secrets");
        let db = redb::Database::create(root.join("system/system.redb")).unwrap();
        let w = db.begin_write().unwrap();
        assert!(
            w.open_table(SECRETS)
                .unwrap()
                .remove("audit-root")
                .unwrap()
                .is_some()
        );
        w.commit().unwrap();
    }
    // The system database's digest sees the row removed first; opened to accept it, the
    // missing key is still refused (and nothing was accepted: no audit log, no acceptance).
    assert_system_held(&root, std::slice::from_ref(&part));
    let e = open_accepting_system(&root, std::slice::from_ref(&part))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`audit-root`") && e.contains("is missing") && e.contains("move"),
        "{e}"
    );
    assert_system_held(&root, std::slice::from_ref(&part));
    assert_eq!(
        std::fs::read_dir(&audit_dir).unwrap().count(),
        log_files,
        "the log is left as it was"
    );
    // The log files deleted too, the HEAD anchor left: still a log.
    for f in std::fs::read_dir(&audit_dir).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != "HEAD" {
            std::fs::remove_file(f).unwrap();
        }
    }
    assert!(audit_dir.join("HEAD").exists());
    let e = open_accepting_system(&root, std::slice::from_ref(&part))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`audit-root`"), "{e}");
    std::fs::rename(&audit_dir, tmp.path().join("audit-before")).unwrap();
    // The log moved aside: the operator accepts the system database (a new audit key is
    // made with the new log), and it opens.
    accept_system(&root, std::slice::from_ref(&part));
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    assert!(dd.fs("docs").is_some());
    assert!(
        execute(&dd, AdminRequest::ListFs).await.ok,
        "a new log takes entries"
    );
}

/// Regression: a digest removed from the index file was rebuilt at the next open from the
/// entries as they were, so records put back by hand became the trusted state. The data
/// dir now remembers that the index has a digest: a missing one is reported and holds the
/// filesystem until the operator accepts the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_index_digest_is_reported_not_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let index_file = docs_with_files(&root, &part, &[("/a.txt", b"one")]).await;
    {
        const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        let db = redb::Database::create(&index_file).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(META).unwrap().remove("digest").unwrap();
        w.commit().unwrap();
    }
    let dd = std::sync::Arc::new(open(&root, std::slice::from_ref(&part)).unwrap());
    let fs = dd.fs("docs").unwrap();
    assert_eq!(
        fs.check_index_digest().await.unwrap(),
        efs_core::digest::DigestCheck::Unreadable
    );
    assert!(!fs.fsck().await.unwrap().is_clean());
    // As the server does at start: held, then refused.
    let verdict = fs.hold_until_index_checked().await.unwrap();
    assert_eq!(verdict, efs_core::IndexTrust::Failed);
    assert!(matches!(
        read_all(&fs, "/a.txt").await,
        Err(CoreError::IndexHold)
    ));
    accept_index(&dd, &fs).await;
    assert_eq!(read_all(&fs, "/a.txt").await.unwrap(), b"one");
    assert!(fs.fsck().await.unwrap().is_clean());
}

/// A metadata row of a (closed) index file, read with the redb crate.
fn index_meta(index_file: &Path, name: &str) -> Vec<u8> {
    use redb::ReadableDatabase;
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let db = redb::Database::create(index_file).unwrap();
    let r = db.begin_read().unwrap();
    let t = r.open_table(META).unwrap();
    t.get(name).unwrap().unwrap().value().to_vec()
}

/// Writes a metadata row of a (closed) index file by hand, as someone with write access to
/// the data dir would.
fn put_index_meta(index_file: &Path, name: &str, value: &[u8]) {
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let db = redb::Database::create(index_file).unwrap();
    let w = db.begin_write().unwrap();
    w.open_table(META).unwrap().insert(name, value).unwrap();
    w.commit().unwrap();
}

/// Regression: the sealed keyring (a metadata row of the index) was outside the index
/// digest. Someone with write access to the data dir but no key part who kept a copy of it
/// could put it back after `rotate-key`: it opened under the starter key as before, nothing
/// noticed, records sealed under the newer term then failed to open and new files were
/// sealed under the old term. It is now seen at open like any other row changed behind
/// EFS's back: the filesystem is held, fsck says the index differs, and the operator's paths
/// apply (put the right keyring back, or `fsck --accept-index`). What EFS itself wrote
/// (creation, the rotation and its end, writes, a restart) never trips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_put_back_after_a_rotation_holds_the_filesystem() {
    use efs_core::IndexTrust;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let parts = std::slice::from_ref(&part);
    let index_file = docs_with_files(&root, &part, &[("/a.txt", b"one")]).await;
    let term_1 = index_meta(&index_file, "keyring");
    {
        let dd = std::sync::Arc::new(open(&root, parts).unwrap());
        let fs = dd.fs("docs").unwrap();
        assert_eq!(
            fs.hold_until_index_checked().await.unwrap(),
            IndexTrust::Trusted
        );
        dd.rotate_key("docs", true).await.unwrap();
        assert_eq!(fs.term_numbers(), vec![1, 2]);
        put(&fs, "/b.txt", b"two").await;
        let rep = fs.fsck().await.unwrap();
        assert!(rep.is_clean(), "{rep:?}");
    }
    let terms_1_2 = index_meta(&index_file, "keyring");
    assert_ne!(terms_1_2, term_1);
    let reopened = || {
        let dd = std::sync::Arc::new(open(&root, parts).unwrap());
        let fs = dd.fs("docs").unwrap();
        (dd, fs)
    };
    {
        let (_dd, fs) = reopened();
        assert_eq!(
            fs.hold_until_index_checked().await.unwrap(),
            IndexTrust::Trusted,
            "what EFS wrote holds"
        );
    }
    // The term-1 keyring put back: it opens (the same starter key seals both), so only the
    // digest can tell.
    put_index_meta(&index_file, "keyring", &term_1);
    {
        let (dd, fs) = reopened();
        assert_eq!(fs.term_numbers(), vec![1]);
        assert!(matches!(
            fs.check_index_digest().await.unwrap(),
            efs_core::digest::DigestCheck::Differs { .. }
        ));
        assert!(!fs.fsck().await.unwrap().is_clean());
        assert_eq!(
            fs.hold_until_index_checked().await.unwrap(),
            IndexTrust::Failed
        );
        assert!(matches!(
            read_all(&fs, "/a.txt").await,
            Err(CoreError::IndexHold)
        ));
        assert!(matches!(
            fs.mkdir(&p("/new")).await,
            Err(CoreError::IndexHold)
        ));
        // Nothing is rewritten over it: a rotation is refused too.
        let e = dd.rotate_key("docs", true).await.unwrap_err();
        assert!(matches!(e, CoreError::IndexHold), "{e}");
    }
    // The operator puts the right keyring back: it holds again, everything reads.
    put_index_meta(&index_file, "keyring", &terms_1_2);
    {
        let (_dd, fs) = reopened();
        assert_eq!(
            fs.hold_until_index_checked().await.unwrap(),
            IndexTrust::Trusted
        );
        assert_eq!(read_all(&fs, "/a.txt").await.unwrap(), b"one");
        assert_eq!(read_all(&fs, "/b.txt").await.unwrap(), b"two");
    }
    // Or accepts the index as it is (here with the old keyring: records sealed under term 2
    // no longer open, which is what the operator accepted).
    put_index_meta(&index_file, "keyring", &term_1);
    let (dd, fs) = reopened();
    assert_eq!(
        fs.hold_until_index_checked().await.unwrap(),
        IndexTrust::Failed
    );
    accept_index(&dd, &fs).await;
    assert!(fs.check_index_digest().await.unwrap().holds());
}

/// A data dir from before the index digest covered the metadata (a digest of layout 1, over
/// the entries only; no record of an upgrade in the system database) opens and holds: its
/// digest is upgraded once, the generation goes on by one, and the upgrade is recorded in the
/// system database. From then on a layout-1 digest put back (from before the upgrade, to
/// bring an older keyring back unseen with it) is no longer upgraded but reported: held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_from_before_keyring_coverage_is_upgraded_once() {
    use efs_core::IndexTrust;
    use efs_core::digest::{Accumulator, DigestCheck, DigestKey};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let parts = std::slice::from_ref(&part);
    let index_file = docs_with_files(&root, &part, &[("/a.txt", b"one"), ("/b.txt", b"two")]).await;
    let (id, digest_root) = {
        let dd = open(&root, parts).unwrap();
        let id = *dd.fs("docs").unwrap().id();
        let r = dd
            .secret(&format!("index-digest/{}", hex::encode(id)))
            .unwrap()
            .unwrap();
        (id, efs_format::Key32::from_slice(&r).unwrap())
    };
    // The digest an earlier version kept: the entries only, layout 1.
    let layout_1 = {
        use redb::{ReadableDatabase, ReadableTable};
        const ENTRIES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("entries");
        let key = DigestKey::from_root(&digest_root, &id);
        let db = redb::Database::create(&index_file).unwrap();
        let r = db.begin_read().unwrap();
        let mut acc = Accumulator::empty();
        for row in r.open_table(ENTRIES).unwrap().iter().unwrap() {
            let (k, v) = row.unwrap();
            acc.insert(&key, k.value(), v.value());
        }
        acc.set_generation(5);
        acc.seal(&key)
    };
    put_index_meta(&index_file, "digest", &layout_1);
    {
        const SECRETS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("secrets");
        let db = redb::Database::create(root.join("system/system.redb")).unwrap();
        let w = db.begin_write().unwrap();
        let mark = format!("index-digest-layout/{}", hex::encode(id));
        w.open_table(SECRETS)
            .unwrap()
            .remove(mark.as_str())
            .unwrap();
        w.commit().unwrap();
    }
    // (Removing that row is a change the system database's own digest sees: accepted here,
    // so that the data dir is as an earlier version left it. That open upgrades the index.)
    open_accepting_system(&root, parts)
        .unwrap()
        .accept_system()
        .unwrap();
    {
        let dd = std::sync::Arc::new(open(&root, parts).unwrap());
        let fs = dd.fs("docs").unwrap();
        assert_eq!(
            fs.hold_until_index_checked().await.unwrap(),
            IndexTrust::Trusted
        );
        match fs.check_index_digest().await.unwrap() {
            DigestCheck::Holds {
                generation,
                entries,
                ..
            } => assert_eq!((generation, entries), (6, 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(read_all(&fs, "/a.txt").await.unwrap(), b"one");
        assert!(
            dd.secret(&format!("index-digest-layout/{}", hex::encode(id)))
                .unwrap()
                .is_some(),
            "the upgrade is recorded"
        );
    }
    // The layout-1 digest put back: reported, not upgraded again.
    put_index_meta(&index_file, "digest", &layout_1);
    let dd = std::sync::Arc::new(open(&root, parts).unwrap());
    let fs = dd.fs("docs").unwrap();
    assert_eq!(
        fs.check_index_digest().await.unwrap(),
        DigestCheck::Unreadable
    );
    assert_eq!(
        fs.hold_until_index_checked().await.unwrap(),
        IndexTrust::Failed
    );
    accept_index(&dd, &fs).await;
    assert_eq!(read_all(&fs, "/b.txt").await.unwrap(), b"two");
}

/// A new data dir with filesystem `docs` and the named users, each granted it (its
/// tempdir, root and key part).
fn data_dir_with_users(users: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, KeyPartSpec) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    dd.create_fs("docs").unwrap();
    for (i, name) in users.iter().enumerate() {
        dd.create_user(name, [7 + i as u8; 32], vec![grant("docs", i > 0)])
            .unwrap();
    }
    (tmp, root, part)
}

const SYSTEM_USERS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("users");

/// Every row of the system database's `users` table, as stored (sealed).
fn user_rows(root: &std::path::Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::create(root.join("system/system.redb")).unwrap();
    let r = db.begin_read().unwrap();
    let t = r.open_table(SYSTEM_USERS).unwrap();
    t.iter()
        .unwrap()
        .map(|i| {
            let (k, v) = i.unwrap();
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect()
}

/// Regression: the system database had no freshness. A user's sealed row from before a
/// revocation, written back by someone with write access to the data dir, opened fine and
/// brought the revoked grant back. Now every open checks the database against its digest:
/// the old row is refused until an operator accepts the database as it is.
#[tokio::test]
async fn an_old_user_row_written_back_is_refused_until_the_operator_accepts_it() {
    let (_tmp, root, part) = data_dir_with_users(&["alice"]);
    let parts = std::slice::from_ref(&part);
    let granted = user_rows(&root);
    assert_eq!(granted.len(), 1);
    {
        let dd = open(&root, parts).unwrap();
        dd.revoke("alice", Some("docs")).unwrap();
        assert!(dd.user("alice").unwrap().unwrap().grants.is_empty());
    }
    // The old row, written back by hand.
    {
        let db = redb::Database::create(root.join("system/system.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(SYSTEM_USERS)
            .unwrap()
            .insert(granted[0].0.as_slice(), granted[0].1.as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    assert_system_held(&root, parts);
    // Refused again (nothing was rebuilt by the refusal).
    assert_system_held(&root, parts);
    // Opened to be accepted, nothing is written yet.
    let dd = open_accepting_system(&root, parts).unwrap();
    assert!(matches!(
        dd.system_trust(),
        efs_core::system::SystemTrust::Pending { .. }
    ));
    drop(dd);
    assert_system_held(&root, parts);
    // The operator accepts it (here: the old grant is what they want back).
    let dd = open_accepting_system(&root, parts).unwrap();
    match dd.accept_system().unwrap() {
        efs_core::system::SystemTrust::Accepted {
            found, generation, ..
        } => {
            assert!(found.contains("differs from its digest"), "{found}");
            assert!(generation > 3, "the generation goes on: {generation}");
        }
        other => panic!("not accepted: {other:?}"),
    }
    assert_eq!(dd.user("alice").unwrap().unwrap().grants.len(), 1);
    drop(dd);
    let dd = open(&root, parts).unwrap();
    assert!(matches!(
        dd.system_trust(),
        efs_core::system::SystemTrust::Holds { .. }
    ));
    // Writes after the acceptance keep the digest: a removed user stays removed.
    dd.delete_user("alice").unwrap();
    drop(dd);
    let dd = open(&root, parts).unwrap();
    assert!(dd.user("alice").unwrap().is_none());
}

/// Each change outside EFS is refused: a row removed, a deleted user's row put back, the
/// digest deleted (all three acceptable by the operator), a row that does not decrypt (a
/// value under another key) and a secret's name and value with their boundary moved
/// (`audit-roo` = `t` ‖ value: the digest's element keeps the key's length); those last two
/// are refused even to `accept-system`.
#[tokio::test]
async fn a_removed_or_added_system_row_or_a_deleted_digest_is_refused() {
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    const SECRETS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("secrets");
    for case in ["remove", "put-back", "digest", "junk", "shift"] {
        let (_tmp, root, part) = data_dir_with_users(&["alice", "bob"]);
        let parts = std::slice::from_ref(&part);
        let rows = user_rows(&root);
        if case == "put-back" {
            let dd = open(&root, parts).unwrap();
            dd.delete_user("alice").unwrap();
            dd.delete_user("bob").unwrap();
        }
        {
            let db = redb::Database::create(root.join("system/system.redb")).unwrap();
            let w = db.begin_write().unwrap();
            match case {
                "remove" => {
                    w.open_table(SYSTEM_USERS)
                        .unwrap()
                        .remove(rows[0].0.as_slice())
                        .unwrap();
                }
                "put-back" => {
                    w.open_table(SYSTEM_USERS)
                        .unwrap()
                        .insert(rows[1].0.as_slice(), rows[1].1.as_slice())
                        .unwrap();
                }
                "digest" => {
                    assert!(
                        w.open_table(META)
                            .unwrap()
                            .remove("digest")
                            .unwrap()
                            .is_some()
                    );
                }
                "junk" => {
                    let mut k = rows[0].0.clone();
                    k[0] ^= 1;
                    w.open_table(SYSTEM_USERS)
                        .unwrap()
                        .insert(k.as_slice(), rows[1].1.as_slice())
                        .unwrap();
                }
                _ => {
                    let mut t = w.open_table(SECRETS).unwrap();
                    let v = t.remove("audit-root").unwrap().unwrap().value().to_vec();
                    let shifted = [b"t".as_slice(), &v].concat();
                    t.insert("audit-roo", shifted.as_slice()).unwrap();
                }
            }
            w.commit().unwrap();
        }
        let refused = match open(&root, parts) {
            Err(e) => e,
            Ok(_) => panic!("{case}: opened"),
        };
        if matches!(case, "junk" | "shift") {
            // Rows that do not decrypt: the message sends the operator to a copy they
            // trust, never to accept-system, which refuses them the same way.
            let CoreError::SystemRowsCorrupt(why) = &refused else {
                panic!("{case}: refused for another reason: {refused}");
            };
            assert!(why.contains("do not decrypt"), "{case}: {why}");
            let shown = refused.to_string();
            assert!(shown.contains("restore the data dir"), "{case}: {shown}");
            assert!(
                !shown.contains("then run `efsctl accept-system`"),
                "{case}: must not advise accept-system: {shown}"
            );
            let again = open_accepting_system(&root, parts)
                .err()
                .unwrap_or_else(|| panic!("{case}: rows that do not decrypt are never accepted"));
            assert!(
                matches!(again, CoreError::SystemRowsCorrupt(_)),
                "{case}: {again}"
            );
            continue;
        }
        let CoreError::SystemHold(why) = &refused else {
            panic!("{case}: refused for another reason: {refused}");
        };
        let expect = match case {
            "digest" => "no readable digest",
            _ => "differs from its digest",
        };
        assert!(why.contains(expect), "{case}: {why}");
        assert!(
            refused.to_string().contains("efsctl accept-system"),
            "{case}"
        );
        accept_system(&root, parts);
        let dd = open(&root, parts).unwrap();
        if case == "put-back" {
            // Both users were deleted and one's row put back (rows are in key order, so
            // which one is random) and accepted: it is there.
            assert_eq!(dd.users().unwrap().len(), 1, "what was accepted is there");
        }
    }
}

/// A data dir whose system database file is gone is refused (users, grants, secrets
/// would vanish), not given a new, empty one.
#[tokio::test]
async fn a_missing_system_database_is_refused_not_recreated() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let parts = std::slice::from_ref(&part);
    drop(open(&root, parts).unwrap());
    std::fs::remove_file(root.join("system/system.redb")).unwrap();
    let e = open(&root, parts).unwrap_err().to_string();
    assert!(e.contains("system.redb is missing"), "{e}");
    assert!(open_accepting_system(&root, parts).is_err());
    assert!(!root.join("system/system.redb").exists());
}

/// Regression: the index digest's element does not mark where an entry's key ends, so an
/// entry (K ‖ b, v) moved by hand to (K, b ‖ v) hashed the same and the check held while
/// the file was gone. Every entry key is 32 bytes: any other length now fails the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_key_shortened_by_hand_fails_the_index_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let index_file = docs_with_files(&root, &part, &[("/a.txt", b"one"), ("/b.txt", b"two")]).await;
    edit_entries(&index_file, |entries| {
        use redb::ReadableTable;
        let (k, v) = {
            let last = entries.last().unwrap().unwrap();
            (last.0.value().to_vec(), last.1.value().to_vec())
        };
        entries.remove(k.as_slice()).unwrap();
        let moved = [&k[31..], v.as_slice()].concat();
        entries.insert(&k[..31], moved.as_slice()).unwrap();
    });
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    let fs = dd.fs("docs").unwrap();
    let check = fs.check_index_digest().await.unwrap();
    assert!(
        matches!(check, efs_core::digest::DigestCheck::Differs { .. }),
        "{check:?}"
    );
}

/// A new data dir asks for its passphrase twice: a typo stops the creation (nothing stored)
/// instead of locking the data dir at its next start, once data is in it.
#[test]
fn a_new_data_dir_reads_its_passphrase_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("d");
    let asked = std::sync::Mutex::new(Vec::new());
    let typed = |answers: [&'static str; 2]| {
        let asked = &asked;
        move |p: &str| {
            let mut a = asked.lock().unwrap();
            a.push(p.to_owned());
            Ok(answers[(a.len() - 1) % 2].to_owned())
        }
    };
    let e = match DataDir::open(
        &root,
        &[KeyPartSpec::Passphrase],
        opts(),
        &typed(["a long passphrase", "a long passphrasf"]),
    ) {
        Ok(_) => panic!("created with a mistyped passphrase"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("did not read the same twice"), "{e}");
    // Said as what happened: not "not the part this data dir was created with".
    assert!(
        e.contains("the passphrase given the second time is not the one given first"),
        "{e}"
    );
    assert!(!e.contains("created"), "{e}");
    assert_eq!(
        *asked.lock().unwrap(),
        [
            "EFS passphrase for the new data dir: ",
            "EFS passphrase, again: "
        ]
    );
    assert!(
        !root.join("system/keyparts.json").exists(),
        "nothing stored"
    );
    asked.lock().unwrap().clear();
    let (dd, _) = DataDir::open(
        &root,
        &[KeyPartSpec::Passphrase],
        opts(),
        &typed(["a long passphrase", "a long passphrase"]),
    )
    .unwrap();
    drop(dd);
    DataDir::open(&root, &[KeyPartSpec::Passphrase], opts(), &|_: &str| {
        Ok("a long passphrase".to_owned())
    })
    .unwrap();
}

/// An earlier copy of the whole index put back, its digest included (an operator restoring
/// one index file from a snapshot, or someone reverting the files): the digest holds, but
/// the data dir recorded a higher generation, so the filesystem is held and fsck names both
/// generations, until the operator accepts the index; the accepted generation is recorded
/// then, so the next open is not held again. Before, the earlier state was served as good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_copy_of_the_whole_index_put_back_is_held_until_accepted() {
    use efs_core::IndexTrust;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let parts = std::slice::from_ref(&part);
    let index_file = docs_with_files(&root, &part, &[("/a.txt", b"one")]).await;
    let reopened = || {
        let dd = std::sync::Arc::new(open(&root, parts).unwrap());
        let fs = dd.fs("docs").unwrap();
        (dd, fs)
    };
    // Checked, then recorded (what a server does as it runs and at its stop).
    let earlier = {
        let (dd, fs) = reopened();
        assert_eq!(
            fs.hold_until_index_checked().await.unwrap(),
            IndexTrust::Trusted
        );
        dd.record_index_generations().await.unwrap();
        let g = fs.committed_generation().await.unwrap().unwrap();
        assert_eq!(fs.generation_mark(), Some(g));
        g
    };
    let copy = tmp.path().join("index-copy.redb");
    std::fs::copy(&index_file, &copy).unwrap();
    let later = {
        let (dd, fs) = reopened();
        assert_eq!(fs.generation_mark(), Some(earlier), "read back at open");
        assert_eq!(
            fs.hold_until_index_checked().await.unwrap(),
            IndexTrust::Trusted
        );
        put(&fs, "/a.txt", b"uno").await;
        put(&fs, "/b.txt", b"two").await;
        dd.record_index_generations().await.unwrap();
        fs.generation_mark().unwrap()
    };
    assert!(later > earlier, "{later} after {earlier}");
    std::fs::copy(&copy, &index_file).unwrap();
    {
        let (dd, fs) = reopened();
        // The digest alone sees nothing: the copy is a whole, consistent earlier state.
        let digest = fs.check_index_digest().await.unwrap();
        assert!(digest.holds(), "{digest:?}");
        let rep = fs.fsck().await.unwrap();
        assert!(!rep.is_clean());
        let want = format!("the index is at generation {earlier}, the data dir last saw {later}");
        assert!(
            rep.errors.iter().any(|e| e.contains(&want)),
            "{:?}",
            rep.errors
        );
        assert_eq!(
            fs.hold_until_index_checked().await.unwrap(),
            IndexTrust::Failed
        );
        assert!(matches!(
            read_all(&fs, "/a.txt").await,
            Err(CoreError::IndexHold)
        ));
        // Nothing raises the mark over it, nor does anything rewrite it.
        dd.record_index_generations().await.unwrap();
        assert_eq!(fs.generation_mark(), Some(later));
        let e = dd.rotate_key("docs", true).await.unwrap_err();
        assert!(matches!(e, CoreError::IndexHold), "{e}");
        // The operator accepts the earlier state: its generation goes on, and is the mark.
        accept_index(&dd, &fs).await;
        assert_eq!(fs.generation_mark(), Some(earlier + 1));
        assert_eq!(read_all(&fs, "/a.txt").await.unwrap(), b"one");
        assert!(read_all(&fs, "/b.txt").await.is_err());
    }
    let (_dd, fs) = reopened();
    assert_eq!(fs.generation_mark(), Some(earlier + 1));
    assert_eq!(
        fs.hold_until_index_checked().await.unwrap(),
        IndexTrust::Trusted
    );
    assert_eq!(read_all(&fs, "/a.txt").await.unwrap(), b"one");
}

/// Without a mark (a data dir from before marks) nothing is held; an
/// index that moved on while nothing recorded it (efsctl commands that never checked it, a
/// server killed before its next record) is ahead of its mark, which is no alarm either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_ahead_of_its_mark_or_without_one_is_served() {
    use efs_core::IndexTrust;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let parts = std::slice::from_ref(&part);
    let index_file = docs_with_files(&root, &part, &[("/a.txt", b"one")]).await;
    let id = index_file
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    {
        let dd = open(&root, parts).unwrap();
        let fs = dd.fs("docs").unwrap();
        assert_eq!(
            fs.generation_mark(),
            None,
            "no mark before the first record"
        );
        assert_eq!(
            fs.hold_until_index_checked().await.unwrap(),
            IndexTrust::Trusted
        );
        dd.record_index_generations().await.unwrap();
        assert!(
            dd.secret(&format!("index-generation/{id}"))
                .unwrap()
                .is_some()
        );
        // Written, not recorded (the process "killed" before its next record).
        put(&fs, "/b.txt", b"two").await;
        assert!(fs.committed_generation().await.unwrap() > fs.generation_mark());
    }
    {
        let dd = open(&root, parts).unwrap();
        let fs = dd.fs("docs").unwrap();
        assert_eq!(
            fs.hold_until_index_checked().await.unwrap(),
            IndexTrust::Trusted
        );
        assert!(fs.fsck().await.unwrap().is_clean());
        assert_eq!(read_all(&fs, "/b.txt").await.unwrap(), b"two");
    }
}

/// Regression (offline-attacker review): `system.redb` put back whole from an older copy (its
/// digest holds for what it was then) opened as good, and a grant revoked since was back. The
/// audit log lives beside it and is not put back with it: the system database records how far
/// the log went, and one far behind the log (here over 20 entries and, with the tolerance cut
/// to nothing, any time) is held until `accept-system`, which records the log's head.
#[tokio::test]
async fn a_system_database_older_than_the_audit_log_is_held_until_accepted() {
    use efs_core::audit::{Action, Record};
    use efs_core::datadir::{AUDIT_LAG_ENTRIES, OpenOptions};
    let (_tmp, root, part) = data_dir_with_users(&["alice"]);
    let parts = std::slice::from_ref(&part);
    let open_lag = |accept: bool| {
        let o = OpenOptions {
            system_lag: Some(std::time::Duration::ZERO),
            accept_system: accept,
            ..common::opts()
        };
        DataDir::open(&root, parts, o, &no_prompt).map(|(dd, _)| dd)
    };
    let entries = |dd: &DataDir, n: u64| {
        for _ in 0..n {
            dd.audit().submit(Record::new(Action::Read, 200)).unwrap();
        }
    };
    {
        let dd = open_lag(false).unwrap();
        entries(&dd, 3);
    }
    let old = std::fs::read(root.join("system/system.redb")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    {
        let dd = open_lag(false).unwrap();
        dd.revoke("alice", Some("docs")).unwrap();
        entries(&dd, 5);
        // (The log's lag is timed from its first entry past the recorded head.)
        std::thread::sleep(std::time::Duration::from_millis(20));
        entries(&dd, AUDIT_LAG_ENTRIES);
    }
    std::fs::write(root.join("system/system.redb"), &old).unwrap();
    match open_lag(false) {
        Err(CoreError::SystemHold(why)) => {
            assert!(why.contains("older than the audit log"), "{why}")
        }
        Err(e) => panic!("refused, but not as older than the log: {e}"),
        Ok(_) => panic!("a system database older than the audit log was opened"),
    }
    // Nor does starting a new audit log (efsctl audit new-log) pass over it: the old log is
    // left where it is.
    let o = OpenOptions {
        system_lag: Some(std::time::Duration::ZERO),
        new_audit_log: true,
        ..common::opts()
    };
    assert!(matches!(
        DataDir::open(&root, parts, o, &no_prompt),
        Err(CoreError::SystemHold(_))
    ));
    assert!(root.join("system/audit/HEAD").exists());
    let dd = open_lag(true).unwrap();
    match dd.accept_system().unwrap() {
        efs_core::system::SystemTrust::Accepted { found, .. } => {
            assert!(found.contains("older than the audit log"), "{found}")
        }
        other => panic!("not accepted: {other:?}"),
    }
    // What was accepted: the older database, the revoked grant with it.
    assert_eq!(dd.user("alice").unwrap().unwrap().grants.len(), 1);
    drop(dd);
    let dd = open_lag(false).unwrap();
    entries(&dd, 2);
    drop(dd);
    // With the default tolerance, a database a few entries and moments behind (a crash) is
    // not held.
    open(&root, parts).unwrap();
}

/// Opens `root` with the rollback witness `witness` (`accept`: to look at, or accept, a held
/// system database, as `efsctl accept-system` opens).
fn open_witnessed(
    root: &std::path::Path,
    parts: &[KeyPartSpec],
    witness: &std::path::Path,
    accept: bool,
) -> Result<DataDir, CoreError> {
    let o = efs_core::datadir::OpenOptions {
        rollback_witness: Some(witness.to_path_buf()),
        accept_system: accept,
        // As efs-server opens: the path given is recorded.
        record_witness: true,
        ..common::opts()
    };
    DataDir::open(root, parts, o, &no_prompt).map(|(dd, _)| dd)
}

/// `cp -a FROM TO`: a copy of a whole data dir, as a snapshot would be.
fn cp_a(from: &std::path::Path, to: &std::path::Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The generation the witness file `witness` (of the data dir at `root`) holds.
fn witnessed_generation(witness: &std::path::Path, root: &std::path::Path) -> u64 {
    let (_, s) = efs_core::witness::Witness::open(witness, root, false).unwrap();
    s.expect("a witness file").generation
}

/// The whole data dir put back from an earlier copy (system database, its digest and the
/// audit log together: each agrees with the others) opened as good, and a grant revoked since
/// was back. A rollback witness outside the data dir (`--rollback-witness`) keeps the
/// digest's generation and anchor: a data dir behind it is held until `accept-system`, which
/// moves the generation past the witness's.
#[tokio::test]
async fn a_data_dir_put_back_whole_is_held_by_its_rollback_witness() {
    use efs_core::datadir::OpenOptions;
    use efs_core::system::SystemTrust;
    let (tmp, root, part) = data_dir_with_users(&["alice"]);
    let parts = std::slice::from_ref(&part);
    let witness = tmp.path().join("efs.witness");
    let open_w = |accept: bool| open_witnessed(&root, parts, &witness, accept);
    let seen = || witnessed_generation(&witness, &root);
    drop(open_w(false).unwrap());
    let first = seen();
    let copy = tmp.path().join("copy");
    cp_a(&root, &copy);
    {
        let dd = open_w(false).unwrap();
        dd.revoke("alice", Some("docs")).unwrap();
        assert!(dd.user("alice").unwrap().unwrap().grants.is_empty());
    }
    let after_revoke = seen();
    assert!(after_revoke > first, "{after_revoke} > {first}");

    // Put back whole: held, and the witness is not moved back by the attempt.
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::rename(&copy, &root).unwrap();
    match open_w(false) {
        Err(CoreError::SystemHold(why)) => assert!(
            why.contains("rollback witness")
                && why.contains(&format!("saw generation {after_revoke}")),
            "{why}"
        ),
        Err(e) => panic!("refused, but not by the witness: {e}"),
        Ok(_) => panic!("a data dir put back whole was opened"),
    }
    assert_eq!(seen(), after_revoke);
    // Looking at it (efsctl list-users opens to accept, and writes nothing) moves nothing.
    drop(open_w(true).unwrap());
    assert_eq!(seen(), after_revoke);
    assert!(matches!(open_w(false), Err(CoreError::SystemHold(_))));

    // Accepted on purpose: the generation goes past the witness's, which follows again.
    let dd = open_w(true).unwrap();
    match dd.accept_system().unwrap() {
        SystemTrust::Accepted {
            found, generation, ..
        } => {
            assert!(found.contains("rollback witness"), "{found}");
            assert!(generation > after_revoke, "{generation} > {after_revoke}");
        }
        other => panic!("not accepted: {other:?}"),
    }
    // What was accepted: the earlier copy, the revoked grant with it.
    assert_eq!(dd.user("alice").unwrap().unwrap().grants.len(), 1);
    drop(dd);
    assert!(seen() > after_revoke);
    let dd = open_w(false).unwrap();
    dd.revoke("alice", Some("docs")).unwrap();
    drop(dd);

    // A witness inside the data dir is refused; so is a new data dir with another's witness
    // (before anything is created).
    let inside = OpenOptions {
        rollback_witness: Some(root.join("w")),
        ..common::opts()
    };
    let Err(why) = DataDir::open(&root, parts, inside, &no_prompt) else {
        panic!("a witness inside the data dir was taken");
    };
    let why = why.to_string();
    assert!(why.contains("inside the data dir"), "{why}");
    let other = tmp.path().join("other");
    let o = OpenOptions {
        rollback_witness: Some(witness.clone()),
        ..common::opts()
    };
    let Err(why) = DataDir::open(&other, parts, o, &no_prompt) else {
        panic!("a new data dir was opened with another's witness");
    };
    let why = why.to_string();
    assert!(why.contains("witness of another data dir"), "{why}");
    assert!(!other.exists());
}

/// The rollback witness through what else can hold a system database (review of the
/// witness): a data dir put back whole *and* with a row removed by hand is held for both, and
/// one `accept-system` moves it past the witness (it once moved it only past its own claimed
/// generation, and the next open served the put-back grant); a deleted digest, accepted, is
/// not then taken for a rollback; a witness file gone missing is a hold (not a new witness
/// from whatever the data dir is now) until accepted; `rekey-starter` refuses a data dir its
/// witness finds put back.
#[tokio::test]
async fn a_rollback_witness_holds_through_a_changed_digest_and_a_missing_file() {
    use efs_core::system::SystemTrust;
    let (tmp, root, part) = data_dir_with_users(&["alice", "bob"]);
    let parts = std::slice::from_ref(&part);
    let witness = tmp.path().join("efs.witness");
    let open_w = |accept: bool| open_witnessed(&root, parts, &witness, accept);
    let seen = || witnessed_generation(&witness, &root);
    let accept = || {
        let dd = open_w(true).unwrap();
        let SystemTrust::Accepted {
            found, generation, ..
        } = dd.accept_system().unwrap()
        else {
            panic!("nothing accepted");
        };
        (found, generation)
    };
    drop(open_w(false).unwrap());
    let copy = tmp.path().join("copy");
    let cp = cp_a;
    cp(&root, &copy);
    {
        let dd = open_w(false).unwrap();
        dd.revoke("alice", Some("docs")).unwrap();
    }
    let after_revoke = seen();

    // 1. Put back whole, and a user's row removed by hand: the digest differs too.
    std::fs::remove_dir_all(&root).unwrap();
    cp(&copy, &root);
    {
        let rows = user_rows(&root);
        let db = redb::Database::create(root.join("system/system.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(SYSTEM_USERS)
            .unwrap()
            .remove(rows[0].0.as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    assert_system_held(&root, parts);
    let (found, generation) = accept();
    assert!(
        found.contains("differs from its digest") && found.contains("rollback witness"),
        "{found}"
    );
    assert!(generation > after_revoke, "{generation} > {after_revoke}");
    drop(open_w(false).unwrap());
    assert!(seen() > after_revoke);

    // 2. The digest deleted, accepted: its generation starts again low, and is moved past
    // the witness's (no false alarm at the next open).
    let before = seen();
    {
        let db = redb::Database::create(root.join("system/system.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap()
            .remove("digest")
            .unwrap();
        w.commit().unwrap();
    }
    assert_system_held(&root, parts);
    let (_, generation) = accept();
    assert!(generation > before, "{generation} > {before}");
    drop(open_w(false).unwrap());

    // 3. The witness file missing: held (the data dir has had one), until accepted, which
    // starts a new one.
    std::fs::remove_file(&witness).unwrap();
    match open_w(false) {
        Err(CoreError::SystemHold(why)) => assert!(why.contains("is missing"), "{why}"),
        Err(e) => panic!("refused, but not for the missing witness: {e}"),
        Ok(_) => panic!("opened with its witness missing"),
    }
    assert!(!witness.exists(), "looking started a witness");
    let (found, _) = accept();
    assert!(found.contains("is missing"), "{found}");
    assert!(witness.exists());
    drop(open_w(false).unwrap());

    // 4. rekey-starter on a data dir put back whole: refused before anything is staged.
    let snapshot = tmp.path().join("snapshot");
    cp(&root, &snapshot);
    {
        let dd = open_w(false).unwrap();
        dd.revoke("bob", Some("docs")).ok();
        dd.create_fs("more").unwrap();
    }
    std::fs::remove_dir_all(&root).unwrap();
    cp(&snapshot, &root);
    let new = vec![new_part(&tmp.path().join("new.key"))];
    let refused = efs_core::rekey::rekey_starter_witnessed(
        &root,
        parts,
        &new,
        efs_core::keyparts::Argon2Params::default(),
        &no_prompt,
        Some(&witness),
    )
    .await;
    match refused {
        Err(CoreError::SystemHold(why)) => assert!(why.contains("rollback witness"), "{why}"),
        other => panic!("rekey-starter of a put-back data dir: {other:?}"),
    }
    assert!(!root.join("system/keyparts.json.rekey").exists());
}

/// A rollback witness that cannot be written (its storage gone) does not stop the data dir:
/// the failure shows in its state (`efsctl status`, `/_efs/metrics`) and the witness catches
/// up at the next write that succeeds.
#[tokio::test]
async fn a_rollback_witness_that_cannot_be_written_is_reported_and_catches_up() {
    use efs_core::datadir::OpenOptions;
    let (tmp, root, part) = data_dir_with_users(&["alice"]);
    let wdir = tmp.path().join("witness-volume");
    std::fs::create_dir(&wdir).unwrap();
    let o = OpenOptions {
        rollback_witness: Some(wdir.join("efs.witness")),
        ..common::opts()
    };
    let dd = DataDir::open(&root, std::slice::from_ref(&part), o, &no_prompt)
        .unwrap()
        .0;
    let first = dd.rollback_witness().expect("a witness");
    assert!(!first.failing);
    assert!(first.path.ends_with("witness-volume/efs.witness"));
    std::fs::remove_dir_all(&wdir).unwrap();
    dd.revoke("alice", Some("docs")).unwrap();
    let gone = dd.rollback_witness().unwrap();
    assert!(gone.failing, "{gone:?}");
    assert_eq!(gone.generation, first.generation);
    std::fs::create_dir(&wdir).unwrap();
    dd.grant("alice", "docs", false).unwrap();
    let back = dd.rollback_witness().unwrap();
    assert!(!back.failing, "{back:?}");
    assert!(back.generation > first.generation);
    assert!(wdir.join("efs.witness").exists());
    assert!(dd.has_had_witness().unwrap());
}

/// The data dir records its rollback witness (review of the witness's left-alone list): an
/// open without the option uses the recorded file (it checked nothing, and its writes moved
/// the generation on unseen, so that enough of them could carry a data dir put back later past
/// the witness); a path given wins and is recorded; the witness file names its data dir, so
/// that given to another data dir it is refused as that one's (it held each as put back
/// whenever the other wrote), and given to a data dir that never had one it is refused too; a
/// witness on the data dir's own filesystem is flagged.
#[tokio::test]
async fn a_rollback_witness_is_recorded_in_its_data_dir_and_names_it() {
    let (tmp, root, part) = data_dir_with_users(&["alice"]);
    let parts = std::slice::from_ref(&part);
    let witness = tmp.path().join("efs.witness");
    drop(open_witnessed(&root, parts, &witness, false).unwrap());
    let text = std::fs::read_to_string(&witness).unwrap();
    assert!(
        text.starts_with("efs rollback witness v2\n") && text.contains("\ndata-dir "),
        "{text}"
    );
    let seen = |w: &std::path::Path| witnessed_generation(w, &root);
    let cp = cp_a;
    let copy = tmp.path().join("copy");
    cp(&root, &copy);

    // Opened without the option: the recorded witness is checked and follows its writes.
    let before = seen(&witness);
    {
        let dd = open(&root, parts).unwrap();
        let state = dd.rollback_witness().expect("the recorded witness");
        assert_eq!(state.path, witness.canonicalize().unwrap());
        // The test's temporary directory holds both.
        assert!(state.same_volume, "{state:?}");
        dd.revoke("alice", Some("docs")).unwrap();
    }
    let after_revoke = seen(&witness);
    assert!(after_revoke > before, "{after_revoke} > {before}");

    // Put back whole, opened without the option: held.
    let put_back = tmp.path().join("put-back");
    std::fs::rename(&root, &put_back).unwrap();
    cp(&copy, &root);
    match open(&root, parts) {
        Err(CoreError::SystemHold(why)) => assert!(
            why.contains(&format!("saw generation {after_revoke}")),
            "{why}"
        ),
        Err(e) => panic!("refused, but not by the witness: {e}"),
        Ok(_) => panic!("a data dir put back whole was opened without the option"),
    }
    assert_eq!(seen(&witness), after_revoke);
    // ...and with its record of the witness removed as well (a redb tool: rows are found by
    // name, no key needed). Given the option, held by the witness still; without it, only
    // the digest (which then differs) holds it, and accepting it says that no witness was
    // consulted.
    {
        let db = redb::Database::create(root.join("system/system.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<&str, &[u8]>::new("secrets"))
            .unwrap()
            .remove("rollback-witness")
            .unwrap()
            .expect("the record's row");
        w.commit().unwrap();
    }
    assert!(matches!(
        open_witnessed(&root, parts, &witness, false),
        Err(CoreError::SystemHold(_))
    ));
    let rowless = tmp.path().join("rowless");
    cp(&root, &rowless);
    // (The acceptance moves the witness on; the real data dir comes back after it.)
    let witness_kept = std::fs::read(&witness).unwrap();
    {
        // What accepting it with the option would accept: the witness's verdicts named.
        let dd = open_witnessed(&root, parts, &witness, true).unwrap();
        let efs_core::system::SystemTrust::Accepted { found, .. } = dd.accept_system().unwrap()
        else {
            panic!("nothing accepted");
        };
        assert!(
            found.contains("record was removed")
                && found.contains(&format!("saw generation {after_revoke}")),
            "{found}"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::rename(&rowless, &root).unwrap();
    {
        let dd = open_accepting_system(&root, parts).unwrap();
        assert!(dd.rollback_witness().is_none());
        let said = execute(&dd, AdminRequest::AcceptSystem).await;
        let text = said.lines.join("\n");
        assert!(text.contains("no rollback witness was consulted"), "{text}");
        assert_eq!(said.data["witness_consulted"], false, "{:?}", said.data);
    }
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::rename(&put_back, &root).unwrap();
    std::fs::write(&witness, witness_kept).unwrap();

    // A path given wins and is recorded (the witness moved to other storage: /dev/shm, a
    // tmpfs, where there is one apart from the temporary directory).
    let shm = std::path::Path::new("/dev/shm");
    let other_volume = shm.is_dir() && {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(shm).unwrap().dev() != std::fs::metadata(&root).unwrap().dev()
    };
    let wdir = if other_volume {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir_in(tmp.path()).unwrap()
    };
    let moved = wdir.path().join("moved.witness");
    std::fs::copy(&witness, &moved).unwrap();
    drop(open_witnessed(&root, parts, &moved, false).unwrap());
    {
        let dd = open(&root, parts).unwrap();
        let state = dd.rollback_witness().expect("the recorded witness");
        assert_eq!(state.path, moved.canonicalize().unwrap());
        assert_eq!(state.same_volume, !other_volume, "{state:?}");
        dd.grant("alice", "docs", false).unwrap();
    }
    assert!(seen(&moved) > after_revoke);
    assert_eq!(seen(&witness), after_revoke, "the old file was written");
    let ours = std::fs::read(&moved).unwrap();

    // Another data dir, with a witness of its own, given this one's file: refused as another
    // data dir's, and the file is left as it was.
    let (tmp2, root2, part2) = data_dir_with_users(&["bob"]);
    let parts2 = std::slice::from_ref(&part2);
    drop(open_witnessed(&root2, parts2, &tmp2.path().join("efs.witness"), false).unwrap());
    let Err(why) = open_witnessed(&root2, parts2, &moved, false) else {
        panic!("another data dir's witness was taken");
    };
    let why = why.to_string();
    assert!(why.contains("witnesses another data dir"), "{why}");
    // One that records no witness: held (another's, itself put back to a copy from before
    // its witness, or its record removed), the file left as it was.
    let (_tmp3, root3, part3) = data_dir_with_users(&["carol"]);
    match open_witnessed(&root3, std::slice::from_ref(&part3), &moved, false) {
        Err(CoreError::SystemHold(why)) => assert!(why.contains("records no witness"), "{why}"),
        Err(e) => panic!("refused, but not held: {e}"),
        Ok(_) => panic!("a data dir that records no witness took another's"),
    }
    assert_eq!(std::fs::read(&moved).unwrap(), ours);

    // efsctl given another path (the file seen elsewhere, on a container's host) uses it and
    // does not record it: the server's starts without the option keep the server's path.
    let elsewhere = tmp.path().join("host-view.witness");
    std::fs::copy(&moved, &elsewhere).unwrap();
    let efsctl_open = efs_core::datadir::OpenOptions {
        rollback_witness: Some(elsewhere.clone()),
        ..common::opts()
    };
    drop(DataDir::open(&root, parts, efsctl_open, &no_prompt).unwrap());
    assert_eq!(
        open(&root, parts).unwrap().rollback_witness().unwrap().path,
        moved.canonicalize().unwrap()
    );

    // A copy of the data dir elsewhere, opened without the option, does not take over the
    // original's witness (its writes would move it on and hold the original as put back).
    let clone = tmp.path().join("clone");
    cp(&root, &clone);
    let before = std::fs::read(&moved).unwrap();
    let Err(why) = open(&clone, parts) else {
        panic!("a copy elsewhere fell back to the original's witness");
    };
    let why = why.to_string();
    assert!(why.contains("a copy, moved"), "{why}");
    // Given the original's file explicitly (a drill started with the same environment):
    // refused too, while the original is there.
    let with = |w: &std::path::Path, accept: bool| efs_core::datadir::OpenOptions {
        rollback_witness: Some(w.to_path_buf()),
        accept_system: accept,
        ..common::opts()
    };
    let Err(why) = DataDir::open(&clone, parts, with(&moved, false), &no_prompt) else {
        panic!("a copy took the original's witness given explicitly");
    };
    let why = why.to_string();
    assert!(why.contains("is a copy of it"), "{why}");
    assert_eq!(std::fs::read(&moved).unwrap(), before);
    // Given a file of its own: held as missing its witness until accepted (by efsctl), and
    // then witnessed under an id of its own, not the original's.
    let own = tmp.path().join("clone.witness");
    match DataDir::open(&clone, parts, with(&own, false), &no_prompt) {
        Err(CoreError::SystemHold(why)) => assert!(why.contains("is missing"), "{why}"),
        Err(e) => panic!("refused, but not held: {e}"),
        Ok(_) => panic!("a copy with a new witness file was opened unheld"),
    }
    {
        let dd = DataDir::open(&clone, parts, with(&own, true), &no_prompt)
            .unwrap()
            .0;
        dd.accept_system().unwrap();
    }
    let named = |w: &std::path::Path| {
        std::fs::read_to_string(w)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("data-dir ").map(str::to_owned))
            .expect("a data-dir line")
    };
    assert_ne!(named(&own), named(&moved));
    drop(DataDir::open(&clone, parts, with(&own, false), &no_prompt).unwrap());
    assert_eq!(std::fs::read(&moved).unwrap(), before);
    std::fs::remove_dir_all(&clone).unwrap();

    // The recorded witness's storage gone: nothing opens the data dir without the option
    // (it would check nothing), and the error says what to give.
    drop(wdir);
    let Err(why) = open(&root, parts) else {
        panic!("opened with its recorded witness's storage gone");
    };
    let why = why.to_string();
    assert!(
        why.contains("the witness recorded in this data dir")
            && why.contains(&moved.display().to_string()),
        "{why}"
    );
}
