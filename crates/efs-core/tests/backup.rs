//! Backups while serving and their restore: a consistent, complete snapshot; restore
//! into a new filesystem; fsck clean; every file byte-exact; keys only when asked.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use efs_core::admin::{self, AdminRequest};
use efs_core::{Filesystem, Kind};

/// Content of version `v` of `path`: a header naming both, then bytes derived from them,
/// so that any file read back proves which whole version it is.
fn content(path: &str, v: u64, len: usize) -> Vec<u8> {
    let head = format!("{path} v{v}\n");
    let mut out = head.clone().into_bytes();
    out.extend(pattern(
        v.wrapping_mul(31) ^ (len as u64),
        len.saturating_sub(head.len()),
    ));
    out
}

/// Checks that `data` is exactly some version of `path` (as [`content`] makes it).
fn is_some_version(path: &str, data: &[u8]) -> bool {
    let Some(nl) = data.iter().position(|b| *b == b'\n') else {
        return false;
    };
    let head = String::from_utf8_lossy(&data[..nl]);
    let Some(v) = head
        .strip_prefix(&format!("{path} v"))
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return false;
    };
    content(path, v, data.len()) == data
}

/// Every file of `fs` with its content (a recursive listing).
async fn all_files(fs: &Filesystem) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec!["/".to_owned()];
    while let Some(d) = dirs.pop() {
        let mut cursor = None;
        loop {
            let (entries, next) = fs.list(&p(&d), cursor.as_ref(), 500).await.unwrap();
            for e in entries {
                let path = format!("{}{}", d, e.name);
                match e.kind {
                    Kind::Dir => dirs.push(format!("{path}/")),
                    Kind::File => {
                        out.insert(path.clone(), read_all(fs, &path).await.unwrap());
                    }
                }
            }
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn backup_under_concurrent_writes_restores_a_consistent_complete_snapshot() {
    let env = Env::new();
    // Stable files (never touched during the backup) and churned ones (overwritten,
    // deleted, rewritten, many of them blobs whose removal the backup must defer).
    let mut stable = BTreeMap::new();
    for i in 0..150u64 {
        let path = format!("/stable/s{}/f{i}", i % 5);
        let data = content(
            &path,
            1,
            if i % 6 == 0 {
                20_000 + i as usize
            } else {
                (i * 7) as usize % 900
            },
        );
        put(&env.fs, &path, &data).await;
        stable.insert(path, data);
    }
    for i in 0..40u64 {
        let path = format!("/churn/c{i}");
        put(&env.fs, &path, &content(&path, 0, 30_000)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4u64 {
        let fs = env.fs.clone();
        let stop = stop.clone();
        let writes = writes.clone();
        writers.spawn(async move {
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let i = (v * 4 + w) % 40;
                let path = format!("/churn/c{i}");
                if v.is_multiple_of(7) {
                    // Absent is fine: another writer may have deleted it.
                    let _ = fs
                        .delete(&p(&path), efs_core::Precondition::None, false)
                        .await;
                } else {
                    let len = if v.is_multiple_of(3) {
                        500
                    } else {
                        30_000 + v as usize
                    };
                    put(&fs, &path, &content(&path, v * 4 + w, len)).await;
                }
                writes.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dest = env.tmp.path().join("backup1");
    let before = writes.load(Ordering::Relaxed);
    let rep = env.dd.backup("docs", &dest, false).await.unwrap();
    let during = writes.load(Ordering::Relaxed) - before;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    eprintln!("{during} writes while the backup ran");
    assert!(during > 0, "the writers ran during the backup");
    let m = &rep.manifest;
    assert!(!m.keys_included);
    assert!(!dest.join("keys").exists(), "no key material by default");
    let sum = &rep.summary;
    assert!(sum.files >= 150 && sum.files <= 190, "{}", sum.files);

    // No blob the backup deferred is left behind once it ended.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let live = env.fs.fsck().await.unwrap();
    assert!(live.is_clean(), "{live:?}");

    // Restore into a new filesystem of the same data dir (its keyring: the live fs's).
    let r = admin::execute(
        &env.dd,
        AdminRequest::Restore {
            fs: "restored".into(),
            src: dest.to_str().unwrap().into(),
            backup_key_parts: vec![],
            backup_key_given: vec![],
            accept_unauthenticated_backup: false,
        },
    )
    .await;
    assert!(r.ok, "{r:?}");
    // The backup's date, for telling an old backup from the latest: readable, not Unix ms.
    let dated = r.lines.iter().find(|l| l.starts_with("Backup of 'docs'"));
    assert!(
        dated
            .is_some_and(|l| l.contains(" taken at 20") && l.contains("Z:") && !l.contains("Unix")),
        "{:?}",
        r.lines
    );
    let restored = env.dd.fs("restored").unwrap();
    assert_ne!(restored.id(), env.fs.id(), "a new filesystem id");
    let rep2 = restored.fsck().await.unwrap();
    assert!(rep2.is_clean(), "{rep2:?}");
    assert_eq!(rep2.files_verified, sum.files);
    let got = all_files(&restored).await;
    assert_eq!(got.len() as u64, sum.files);
    for (path, data) in &stable {
        assert!(
            got.get(path) == Some(data),
            "{path}: complete and byte-exact"
        );
    }
    for (path, data) in &got {
        assert!(is_some_version(path, data), "{path}: a whole version");
    }
    let bytes: u64 = got.values().map(|d| d.len() as u64).sum();
    assert_eq!(bytes, sum.bytes, "the snapshot's bytes, all of them");
    // Every restored record was sealed anew, under a term of the new filesystem's own (the
    // backup keyring's terms are the original's keys): it counts them from there.
    assert_eq!(restored.current_term(), env.fs.current_term() + 1);
    let sealed = restored.seal_counts();
    assert_eq!(
        sealed.get(&restored.current_term()).copied(),
        Some(m.entries),
        "{sealed:?}"
    );

    // The restored copy is independent: writing to it leaves the original alone.
    put(&restored, "/stable/s0/f0", b"changed in the copy").await;
    assert_eq!(
        read_all(&env.fs, "/stable/s0/f0").await.unwrap(),
        stable["/stable/s0/f0"]
    );

    // A corrupted blob is refused at restore.
    let (id, _) = m.blobs.iter().next().unwrap();
    let bad = dest.join("blobs").join(&id[0..2]).join(id);
    let mut b = std::fs::read(&bad).unwrap();
    b[100] ^= 1;
    std::fs::write(&bad, b).unwrap();
    let e = env
        .dd
        .restore(
            "restored2",
            &dest,
            &[],
            &efs_core::keyparts::no_prompt,
            false,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("SHA-256"), "{e}");
    assert!(env.dd.fs("restored2").is_none(), "nothing registered");
    // A destination that is not empty is refused.
    assert!(env.dd.backup("docs", &dest, false).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_go_along_only_when_asked_and_then_restore_in_another_data_dir() {
    let env = Env::new();
    let mut files = BTreeMap::new();
    for i in 0..60u64 {
        let path = format!("/k/f{i}");
        let data = content(&path, 1, if i % 4 == 0 { 9000 } else { 300 });
        put(&env.fs, &path, &data).await;
        files.insert(path, data);
    }
    // A rotation first: the backup's keyring must carry every term its records use.
    env.dd.rotate_key("docs", true).await.unwrap();
    put(&env.fs, "/k/after-rotation", b"term 2").await;
    files.insert("/k/after-rotation".into(), b"term 2".to_vec());

    let plain = env.tmp.path().join("nokeys");
    env.dd.backup("docs", &plain, false).await.unwrap();
    let keyed = env.tmp.path().join("withkeys");
    let rep = env.dd.backup("docs", &keyed, true).await.unwrap();
    assert!(rep.manifest.keys_included);
    // The keyring is in the backup only sealed: its bytes are those of the index meta,
    // and no key part is copied.
    let sealed = std::fs::read(keyed.join("keys/keyring.sealed")).unwrap();
    assert!(sealed.len() > 64);
    let part_text = std::fs::read_to_string(match &env.part {
        efs_core::KeyPartSpec::File(p) => p,
        _ => unreachable!(),
    })
    .unwrap();
    for f in walk(&keyed) {
        let b = std::fs::read(&f).unwrap();
        assert!(
            !b.windows(20).any(|w| w == &part_text.as_bytes()[..20]),
            "{} holds no key part",
            f.display()
        );
    }

    // Another data dir, other key parts: the key-less backup cannot be restored there.
    let other_root = env.tmp.path().join("other");
    let other_part = new_part(&env.tmp.path().join("other.key"));
    let other = open(&other_root, std::slice::from_ref(&other_part)).unwrap();
    let e = other
        .restore("x", &plain, &[], &efs_core::keyparts::no_prompt, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("holds no keys"), "{e}");
    // The keyed one needs the original data dir's key parts, not the new one's.
    let e = other
        .restore("x", &keyed, &[], &efs_core::keyparts::no_prompt, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--backup-key-part"), "{e}");
    // Wrong or too many backup key parts: the messages name the data dir the backup was
    // taken from, not the one restored into (whose parts are right).
    for (given, expect) in [
        (
            vec![other_part.clone()],
            "is not the part the data dir this backup was taken from was created",
        ),
        (
            vec![env.part.clone(), other_part.clone()],
            "the data dir this backup was taken from was created (or last re-keyed) with 1 key part(s) (file), but 2 were given",
        ),
    ] {
        let e = other
            .restore("x", &keyed, &given, &efs_core::keyparts::no_prompt, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{e}");
        assert!(!e.contains("this data dir "), "{e}");
    }
    other
        .restore(
            "x",
            &keyed,
            std::slice::from_ref(&env.part),
            &efs_core::keyparts::no_prompt,
            false,
        )
        .await
        .unwrap();
    let x = other.fs("x").unwrap();
    let rep = x.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(all_files(&x).await, files);
    // Into an existing empty filesystem: placed under that filesystem's own keyring. A
    // restore into it that crashed while copying blobs left their partial writes (a restore
    // keeps the backup's content ids, as x's blob files show): the retry replaces them (it
    // failed "File exists").
    other.create_fs("empty").unwrap();
    let blobs_of = |fs: &Filesystem| {
        other_root
            .join("fs")
            .join(hex::encode(fs.id()))
            .join("blobs")
    };
    let ids: Vec<std::ffi::OsString> = walk(&blobs_of(&x))
        .into_iter()
        .filter(|p| !p.starts_with(blobs_of(&x).join("tmp")))
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert!(!ids.is_empty());
    let tmp = blobs_of(&other.fs("empty").unwrap()).join("tmp");
    for id in &ids {
        std::fs::write(tmp.join(id), b"partial").unwrap();
    }
    other
        .restore(
            "empty",
            &keyed,
            std::slice::from_ref(&env.part),
            &efs_core::keyparts::no_prompt,
            false,
        )
        .await
        .unwrap();
    let empty = other.fs("empty").unwrap();
    let rep = empty.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(all_files(&empty).await, files);
    assert_eq!(empty.term_numbers(), vec![1], "its own keyring, one term");
    // A filesystem that is not empty is refused.
    let e = other
        .restore(
            "x",
            &keyed,
            std::slice::from_ref(&env.part),
            &efs_core::keyparts::no_prompt,
            false,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    drop(empty);
    // It stays usable after a reopen with the other data dir's parts only.
    drop(x);
    drop(other);
    let other = open(&other_root, std::slice::from_ref(&other_part)).unwrap();
    let x = other.fs("x").unwrap();
    assert_eq!(all_files(&x).await, files);
    put(&x, "/k/new", b"new").await;
    assert!(x.fsck().await.unwrap().is_clean());
    let empty = other.fs("empty").unwrap();
    assert_eq!(all_files(&empty).await, files);
    put(&empty, "/k/f1", b"overwritten").await;
    assert!(empty.fsck().await.unwrap().is_clean());
}

// ---- Authenticated manifests (format 2) ----
//
// A backup store is outside the data dir: whoever can write there could drop records from
// index.dump, or splice in a record and its blob from an older backup of the same
// filesystem, and recompute every SHA-256 and count of manifest.json. Format 1 accepted
// that (and the rebuilt index digest then made fsck clean); format 2's MAC is keyed by
// the filesystem's keyring, so every such backup is refused before anything is written.

use efs_core::fs::backup::parse_dump;
use serde_json::Value;
use sha2::Digest;
use std::path::{Path, PathBuf};

fn sha_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn read_manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn write_manifest(dir: &Path, m: &Value) {
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(m).unwrap(),
    )
    .unwrap();
}

/// The items of `dir/index.dump`, as (kind, key, value).
fn read_dump(dir: &Path) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    parse_dump(&std::fs::read(dir.join("index.dump")).unwrap()).unwrap()
}

/// Writes `items` as `dir/index.dump` and fixes the manifest's hash and counts, as an
/// attacker would.
fn write_dump(dir: &Path, items: &[(u8, Vec<u8>, Vec<u8>)]) {
    let mut out = Vec::new();
    for (kind, k, v) in items {
        out.push(*kind);
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    std::fs::write(dir.join("index.dump"), &out).unwrap();
    let mut m = read_manifest(dir);
    m["index_sha256"] = sha_hex(&out).into();
    m["entries"] = (items.iter().filter(|i| i.0 == 1).count() as u64).into();
    m["inline"] = (items.iter().filter(|i| i.0 == 2).count() as u64).into();
    write_manifest(dir, &m);
}

/// A change to a manifest.
type Edit = dyn Fn(&mut Value);

fn copy_dir(from: &Path, to: &Path) {
    for f in walk(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

fn blob_file(dir: &Path, id: &str) -> PathBuf {
    dir.join("blobs").join(&id[..2]).join(id)
}

/// Names under `DATA/fs/`: a restore that wrote anything made a directory there.
fn fs_dirs(root: &Path) -> usize {
    std::fs::read_dir(root.join("fs")).unwrap().count()
}

/// Two backups of one filesystem, `old` then `new`, between which `/a` (a blob) was
/// overwritten and `/s2` (inline) created; returns (old, new).
async fn two_backups(env: &Env) -> (PathBuf, PathBuf) {
    put(&env.fs, "/a", &pattern(1, 5000)).await;
    put(&env.fs, "/big", &pattern(2, 70_000)).await;
    put(&env.fs, "/s1", b"small one").await;
    let old = env.tmp.path().join("old");
    env.dd.backup("docs", &old, false).await.unwrap();
    put(&env.fs, "/a", &pattern(3, 5000)).await;
    put(&env.fs, "/s2", b"small two").await;
    let new = env.tmp.path().join("new");
    env.dd.backup("docs", &new, false).await.unwrap();
    (old, new)
}

/// Restores `dir` as a new filesystem `name` and into the empty filesystem `empty`; both
/// must be refused with a message containing `want`, and nothing written.
async fn refused(env: &Env, dir: &Path, name: &str, want: &str, accept_v1: bool) {
    let before = fs_dirs(&env.root);
    let e = env
        .dd
        .restore(name, dir, &[], &efs_core::keyparts::no_prompt, accept_v1)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(want), "{name}: {e}");
    assert!(e.contains("nothing was restored"), "{name}: {e}");
    assert!(env.dd.fs(name).is_none(), "{name}: not registered");
    assert_eq!(fs_dirs(&env.root), before, "{name}: no directory made");
    let e = env
        .dd
        .restore("empty", dir, &[], &efs_core::keyparts::no_prompt, accept_v1)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(want), "{name} into empty: {e}");
    let empty = env.dd.fs("empty").unwrap();
    let (listed, _) = empty.list(&p("/"), None, 10).await.unwrap();
    assert!(listed.is_empty(), "{name}: nothing restored into 'empty'");
    let blobs = env
        .root
        .join("fs")
        .join(hex::encode(empty.id()))
        .join("blobs");
    let copied: Vec<_> = walk(&blobs)
        .into_iter()
        .filter(|f| !f.starts_with(blobs.join("tmp")))
        .collect();
    assert!(copied.is_empty(), "{name}: no blob copied: {copied:?}");
    let gc = empty.gc(0).await.unwrap();
    assert_eq!(gc.inline_removed, 0, "{name}: no inline content committed");
    let copies: Vec<_> = walk(&env.root.join("system"))
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".dump"))
        .collect();
    assert!(
        copies.is_empty(),
        "{name}: the dump's copy removed: {copies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_backup_is_refused_before_anything_is_written() {
    let env = Env::new();
    env.dd.create_fs("empty").unwrap();
    let (old, new) = two_backups(&env).await;
    let (old_dump, new_dump) = (read_dump(&old), read_dump(&new));
    let (old_m, new_m) = (read_manifest(&old), read_manifest(&new));
    let case = |name: &str| {
        let d = env.tmp.path().join(name);
        copy_dir(&new, &d);
        d
    };

    // An entry (/s2, absent from the older backup) and its inline content removed from
    // index.dump; hash and counts fixed.
    let d = case("dropped");
    let in_old = |kind: u8, k: &Vec<u8>| old_dump.iter().any(|i| i.0 == kind && &i.1 == k);
    let kept: Vec<_> = new_dump
        .iter()
        .filter(|i| in_old(i.0, &i.1))
        .cloned()
        .collect();
    assert_eq!(
        kept.len(),
        new_dump.len() - 2,
        "/s2's entry and inline content"
    );
    write_dump(&d, &kept);
    refused(&env, &d, "dropped", "does not authenticate", false).await;

    // /a's older record and blob, from the older backup, spliced in; hashes fixed.
    let d = case("spliced");
    let mut items = new_dump.clone();
    let mut swapped = 0;
    for item in items.iter_mut() {
        if let Some(o) = old_dump.iter().find(|o| o.1 == item.1 && o.2 != item.2) {
            item.2 = o.2.clone();
            swapped += 1;
        }
    }
    assert_eq!(swapped, 1, "only /a's record differs");
    let ids =
        |m: &Value| -> Vec<String> { m["blobs"].as_object().unwrap().keys().cloned().collect() };
    let (old_ids, new_ids) = (ids(&old_m), ids(&new_m));
    let a_old = old_ids.iter().find(|i| !new_ids.contains(i)).unwrap();
    let a_new = new_ids.iter().find(|i| !old_ids.contains(i)).unwrap();
    std::fs::remove_file(blob_file(&d, a_new)).unwrap();
    std::fs::create_dir_all(blob_file(&d, a_old).parent().unwrap()).unwrap();
    std::fs::copy(blob_file(&old, a_old), blob_file(&d, a_old)).unwrap();
    write_dump(&d, &items);
    let mut m = read_manifest(&d);
    let blobs = m["blobs"].as_object_mut().unwrap();
    blobs.remove(a_new);
    blobs.insert(a_old.clone(), old_m["blobs"][a_old].clone());
    write_manifest(&d, &m);
    refused(&env, &d, "spliced", "does not authenticate", false).await;

    // One manifest field changed at a time (the files it hashes untouched).
    let edits: [(&str, &Edit); 6] = [
        ("created", &|m| {
            m["created_ms"] = (m["created_ms"].as_i64().unwrap() + 1).into()
        }),
        ("term", &|m| m["mac_term"] = 7.into()),
        ("summary", &|m| {
            let s = m["summary"].as_str().unwrap().to_owned();
            let flipped = if s.ends_with('0') { "1" } else { "0" };
            m["summary"] = format!("{}{flipped}", &s[..s.len() - 1]).into();
        }),
        ("keyring", &|m| {
            m["keyring_sha256"] = sha_hex(b"keyring").into()
        }),
        ("blobsha", &|m| {
            let first = m["blobs"]
                .as_object()
                .unwrap()
                .keys()
                .next()
                .unwrap()
                .clone();
            m["blobs"][&first] = sha_hex(b"other").into();
        }),
        ("mac", &|m| m["mac"] = "00".repeat(32).into()),
    ];
    for (name, edit) in edits {
        let d = case(&format!("field-{name}"));
        let mut m = read_manifest(&d);
        edit(&mut m);
        write_manifest(&d, &m);
        refused(
            &env,
            &d,
            &format!("field-{name}"),
            "does not authenticate",
            false,
        )
        .await;
    }

    // The MAC removed: refused, even when a format-1 backup would be accepted.
    let d = case("no-mac");
    let mut m = read_manifest(&d);
    m.as_object_mut().unwrap().remove("mac");
    write_manifest(&d, &m);
    refused(&env, &d, "no-mac", "no MAC", false).await;
    refused(&env, &d, "no-mac", "no MAC", true).await;

    // The untouched backup restores, /a at its newer version, /s2 present.
    env.dd
        .restore("whole", &new, &[], &efs_core::keyparts::no_prompt, false)
        .await
        .unwrap();
    let whole = env.dd.fs("whole").unwrap();
    assert_eq!(read_all(&whole, "/a").await.unwrap(), pattern(3, 5000));
    assert_eq!(read_all(&whole, "/s2").await.unwrap(), b"small two");
    assert!(whole.fsck().await.unwrap().is_clean());
}

/// Makes the format-1 manifest a backup of the earlier version would have had.
fn to_format_1(dir: &Path, fs_name: &str, files: u64, bytes: u64) {
    let m = read_manifest(dir);
    let v1 = serde_json::json!({
        "format": "efs-backup/1",
        "fs_name": fs_name,
        "fs_id": m["fs_id"],
        "created_ms": m["created_ms"],
        "entries": m["entries"],
        "files": files,
        "bytes": bytes,
        "inline": m["inline"],
        "index_sha256": m["index_sha256"],
        "blobs": m["blobs"],
        "keys_included": m["keys_included"],
        "keyring_sha256": m["keyring_sha256"],
    });
    write_manifest(dir, &v1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_backup_is_restored_only_when_the_operator_accepts_it() {
    let env = Env::new();
    env.dd.create_fs("empty").unwrap();
    put(&env.fs, "/a", &pattern(1, 5000)).await;
    put(&env.fs, "/s", b"small").await;
    let dir = env.tmp.path().join("v1");
    let rep = env.dd.backup("docs", &dir, false).await.unwrap();
    to_format_1(&dir, "docs", rep.summary.files, rep.summary.bytes);

    refused(&env, &dir, "v1", "--accept-unauthenticated-backup", false).await;

    let r = admin::execute(
        &env.dd,
        AdminRequest::Restore {
            fs: "v1".into(),
            src: dir.to_str().unwrap().into(),
            backup_key_parts: vec![],
            backup_key_given: vec![],
            accept_unauthenticated_backup: true,
        },
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.lines.iter().any(|l| l.starts_with("WARNING: format-1")),
        "{:?}",
        r.lines
    );
    assert_eq!(r.data["authenticated"], false);
    let v1 = env.dd.fs("v1").unwrap();
    assert_eq!(read_all(&v1, "/a").await.unwrap(), pattern(1, 5000));
    assert_eq!(read_all(&v1, "/s").await.unwrap(), b"small");
    // The audit entry of the restore says the operator accepted it.
    let shown = env
        .dd
        .audit_show(&efs_core::audit::Filter {
            fs: Some("v1".into()),
            ..Default::default()
        })
        .unwrap();
    let detail = shown.entries.last().unwrap().record.detail.clone().unwrap();
    assert!(
        detail.contains("\"accept_unauthenticated_backup\":true"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_holds_no_filesystem_name_and_no_plaintext_counts() {
    let env = Env::new();
    env.dd.create_fs("ward-7-records").unwrap();
    let fs = env.dd.fs("ward-7-records").unwrap();
    put(&fs, "/a", &pattern(1, 5000)).await;
    put(&fs, "/b", b"small").await;
    let dir = env.tmp.path().join("b");
    let rep = env.dd.backup("ward-7-records", &dir, false).await.unwrap();
    assert_eq!((rep.summary.files, rep.summary.bytes), (2, 5005));
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    assert!(!text.contains("ward-7"), "{text}");
    let m: Value = serde_json::from_str(&text).unwrap();
    for k in ["fs_name", "files", "bytes"] {
        assert!(m.get(k).is_none(), "{k} in clear: {text}");
    }
    assert_eq!(m["format"], "efs-backup/2");
    // Restore prints them, unsealed.
    let lines = env
        .dd
        .restore("copy", &dir, &[], &efs_core::keyparts::no_prompt, false)
        .await
        .unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Backup of 'ward-7-records'") && l.contains(" 2 files")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Manifest authenticated")),
        "{lines:?}"
    );
}

/// Every way restore gets the backup's keyring gives the MAC's key: the same data dir
/// without keys after a rotation (the live keyring keeps the backup's term), and a new
/// data dir after the original one moved to new key parts (the old parts open `keys/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_restore_path_authenticates_after_rotation_and_rekeying() {
    let Env {
        tmp,
        root,
        part,
        dd,
        fs,
    } = Env::new();
    put(&fs, "/a", &pattern(1, 5000)).await;
    let plain = tmp.path().join("plain");
    let keyed = tmp.path().join("keyed");
    assert_eq!(
        dd.backup("docs", &plain, false)
            .await
            .unwrap()
            .manifest
            .mac_term,
        1
    );
    dd.backup("docs", &keyed, true).await.unwrap();
    dd.rotate_key("docs", true).await.unwrap();
    assert_eq!(fs.current_term(), 2);
    dd.restore("r1", &plain, &[], &efs_core::keyparts::no_prompt, false)
        .await
        .unwrap();
    dd.create_fs("into").unwrap();
    dd.restore("into", &plain, &[], &efs_core::keyparts::no_prompt, false)
        .await
        .unwrap();
    // A backup after the rotation is keyed by term 2.
    let later = tmp.path().join("later");
    assert_eq!(
        dd.backup("docs", &later, false)
            .await
            .unwrap()
            .manifest
            .mac_term,
        2
    );
    drop(fs);
    drop(dd);
    let new = new_part(&tmp.path().join("new.key"));
    efs_core::rekey::rekey_starter(
        &root,
        std::slice::from_ref(&part),
        std::slice::from_ref(&new),
        Default::default(),
        &efs_core::keyparts::no_prompt,
    )
    .await
    .unwrap();
    // A restore's private copy of the dump, as a crash would leave it: removed at open.
    let leftover = root.join("system").join("restore-0123.dump");
    std::fs::write(&leftover, b"dump").unwrap();
    let dd = open(&root, std::slice::from_ref(&new)).unwrap();
    assert!(!leftover.exists());
    dd.restore("r2", &plain, &[], &efs_core::keyparts::no_prompt, false)
        .await
        .unwrap();
    dd.restore(
        "r3",
        &keyed,
        std::slice::from_ref(&part),
        &efs_core::keyparts::no_prompt,
        false,
    )
    .await
    .unwrap();
    for name in ["r1", "into", "r2", "r3"] {
        let f = dd.fs(name).unwrap();
        assert_eq!(
            read_all(&f, "/a").await.unwrap(),
            pattern(1, 5000),
            "{name}"
        );
    }
}

/// A backup is readable by its owner only (the directory 0700, every file 0600, the sealed
/// keyring included), and an empty directory of another account is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_private_to_its_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::new();
    put(&env.fs, "/p/a", &pattern(2, 20_000)).await;
    put(&env.fs, "/p/b", b"small").await;
    let dir = env.tmp.path().join("private");
    // An existing empty directory, open to everyone: made private.
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    env.dd.backup("docs", &dir, true).await.unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    let files = walk(&dir);
    assert!(
        files.iter().any(|f| f.ends_with("keys/keyring.sealed")),
        "{files:?}"
    );
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }

    let me = rustix::process::geteuid().as_raw();
    let theirs = env.tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let other = if me == 65534 { 65533 } else { 65534 };
    if std::os::unix::fs::chown(&theirs, Some(other), None).is_ok() {
        let e = env.dd.backup("docs", &theirs, false).await.unwrap_err();
        assert!(e.to_string().contains("belongs to another account"), "{e}");
        assert!(std::fs::read_dir(&theirs).unwrap().next().is_none());
    } else {
        // Not root: another account's directory cannot be made here. The owner check is
        // exercised by CI, which runs as root.
        assert_ne!(me, 0);
    }
}

/// A restore into a new filesystem that fails midway (here a blob whose bytes changed, found
/// once the records are in) leaves no filesystem and no directory behind, and the same
/// backup, repaired, then restores under the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_failing_midway_leaves_nothing_behind() {
    let env = Env::new();
    put(&env.fs, "/a", &pattern(1, 50_000)).await;
    put(&env.fs, "/s", b"small").await;
    let dir = env.tmp.path().join("b");
    env.dd.backup("docs", &dir, false).await.unwrap();
    let m = read_manifest(&dir);
    let id = m["blobs"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let blob = blob_file(&dir, &id);
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 1;
    std::fs::write(&blob, &bad).unwrap();

    let before = fs_dirs(&env.root);
    let system_entries = || match env.dd.system_digest().unwrap() {
        efs_core::digest::DigestCheck::Holds { entries, .. } => entries,
        other => panic!("the system database differs from its digest: {other:?}"),
    };
    let entries_before = system_entries();
    let r = env
        .dd
        .restore("copy", &dir, &[], &efs_core::keyparts::no_prompt, false)
        .await;
    assert!(r.is_err(), "{r:?}");
    assert!(env.dd.fs("copy").is_none());
    assert_eq!(fs_dirs(&env.root), before, "the new directory removed");
    assert_eq!(
        system_entries(),
        entries_before,
        "the new index's digest key removed from the system database"
    );

    std::fs::write(&blob, &good).unwrap();
    env.dd
        .restore("copy", &dir, &[], &efs_core::keyparts::no_prompt, false)
        .await
        .unwrap();
    let copy = env.dd.fs("copy").unwrap();
    assert_eq!(all_files(&copy).await.len(), 2);
}

/// Regression: a restore into an existing filesystem committed a directory's children
/// without expecting the directory. A client deleting a restored directory while it was
/// still empty (its children not in yet) left them under no path: records nothing can
/// list or delete, whose blobs gc can never free (fsck: "its parent directory does not
/// exist"). Each child now expects its directory: the restore stops with a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_deleted_during_a_restore_leaves_nothing_unreachable() {
    let env = Env::new();
    let dirs: Vec<String> = (0..24).map(|d| format!("/d{d}")).collect();
    let mut tasks = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let (fs, d) = (env.fs.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            for f in 0..120 {
                put(&fs, &format!("{d}/f{f}"), format!("{i}/{f}").as_bytes()).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let dir = env.tmp.path().join("b");
    env.dd.backup("docs", &dir, false).await.unwrap();
    let mut raced = 0;
    for round in 0..5 {
        let name = format!("target{round}");
        env.dd.create_fs(&name).unwrap();
        let target = env.dd.fs(&name).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // Deletes every restored directory it finds still empty, until the restore ends.
        let deleter = {
            let (target, stop, dirs) = (target.clone(), stop.clone(), dirs.clone());
            tokio::spawn(async move {
                let mut deleted = 0;
                while !stop.load(Ordering::SeqCst) {
                    for d in &dirs {
                        if target
                            .delete(&p(d), efs_core::Precondition::None, false)
                            .await
                            .is_ok()
                        {
                            deleted += 1;
                        }
                    }
                    tokio::task::yield_now().await;
                }
                deleted
            })
        };
        let restored = env
            .dd
            .restore(&name, &dir, &[], &efs_core::keyparts::no_prompt, false)
            .await;
        stop.store(true, Ordering::SeqCst);
        let deleted = deleter.await.unwrap();
        let rep = target.fsck().await.unwrap();
        assert!(
            rep.errors.is_empty(),
            "round {round}: {deleted} directories deleted during the restore ({restored:?}): {rep:?}"
        );
        if deleted > 0 {
            raced += 1;
            let e = restored.expect_err("a directory went away under the restore");
            // And what becomes of what it copied before it stopped.
            let e = e.to_string();
            assert!(
                e.contains("a client wrote") && e.contains("efsctl gc"),
                "{e}"
            );
            break;
        }
    }
    assert!(
        raced > 0,
        "no delete landed while a restore ran, in 5 rounds"
    );
}

/// Unmounts on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A tmpfs of `size` at `at` (as `efs-server/tests/disk_full.rs` mounts one: needs root),
/// or `None`, said on a printed line, where this sandbox cannot mount.
fn small_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(at).unwrap();
    let out = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(at)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(Mount(at.to_path_buf())),
        Ok(o) => {
            println!(
                "backup: SKIPPED a full destination: cannot mount a tmpfs here ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("backup: SKIPPED a full destination: cannot run mount ({e})");
            None
        }
    }
}

/// A backup whose destination fills up names the destination and the file it was writing,
/// and says the unfinished backup was removed (it is). It said only "I/O error: No space
/// left on device (os error 28)", which an operator would take for the data dir's disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_to_a_full_destination_names_it_and_removes_the_partial_backup() {
    let env = Env::new();
    let mnt = env.tmp.path().join("small");
    let Some(_mount) = small_tmpfs(&mnt, "256k") else {
        return;
    };
    for i in 0..4u64 {
        put(&env.fs, &format!("/f{i}"), &pattern(i, 200_000)).await;
    }
    let dest = mnt.join("b");
    let r = admin::execute(
        &env.dd,
        AdminRequest::Backup {
            fs: "docs".into(),
            dest: dest.to_str().unwrap().into(),
            include_keys: false,
            skip_damaged: false,
        },
    )
    .await;
    assert!(!r.ok, "{r:?}");
    let err = r.error.unwrap();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains(&format!("destination {}", dest.display()))
            && err.contains(&format!("writing {}/blobs/", dest.display())),
        "names the destination and the file: {err}"
    );
    assert!(err.contains("the unfinished backup was removed"), "{err}");
    assert!(!err.contains("data dir"), "{err}");
    assert!(!dest.exists(), "the partial backup is removed");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);

    // Into a directory with room, the same backup works.
    let ok = env.tmp.path().join("roomy");
    env.dd.backup("docs", &ok, false).await.unwrap();
}

/// A backup taken while a recursive delete's tree is detached and not emptied yet leaves it
/// out (deleted data must not reach a backup), and restores clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_leaves_out_a_deleted_tree_not_emptied_yet() {
    let env = Env::new();
    let fs = &env.fs;
    put(fs, "/keep/x", b"kept").await;
    let (_, keep_blob) = env.put_blob("/keep/big", &pattern(1, INLINE_MAX + 1)).await;
    let (_, gone_blob) = env
        .put_blob("/tree/a/big", &pattern(2, INLINE_MAX + 5))
        .await;
    put(fs, "/tree/a/small", b"secret").await;
    put(fs, "/tree/b", b"also deleted").await;
    // Detached only: the server empties it afterwards, in a task of its own.
    fs.delete_while(
        &p("/tree"),
        efs_core::Precondition::None,
        true,
        false,
        &|| true,
    )
    .await
    .unwrap();
    assert!(gone_blob.as_ref().unwrap().exists(), "not emptied yet");

    let dest = env.tmp.path().join("backup1");
    let rep = env.dd.backup("docs", &dest, false).await.unwrap();
    assert_eq!(rep.summary.files, 2, "{:?}", rep.summary);
    assert_eq!(rep.manifest.entries, 3, "/keep, /keep/x, /keep/big");
    assert_eq!(rep.manifest.inline, 1, "/keep/x's content only");
    assert!(
        rep.summary.left_out.is_empty(),
        "{:?}",
        rep.summary.left_out
    );
    assert_eq!(rep.skipped_inline, 0);
    let names: Vec<String> = rep.manifest.blobs.keys().cloned().collect();
    let file_name = |p: &std::path::Path| p.file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(names, [file_name(keep_blob.as_ref().unwrap())]);
    assert!(
        !walk(&dest)
            .iter()
            .any(|f| file_name(f) == file_name(gone_blob.as_ref().unwrap()))
    );

    let r = admin::execute(
        &env.dd,
        AdminRequest::Restore {
            fs: "restored".into(),
            src: dest.to_str().unwrap().into(),
            backup_key_parts: vec![],
            backup_key_given: vec![],
            accept_unauthenticated_backup: false,
        },
    )
    .await;
    assert!(r.ok, "{r:?}");
    let restored = env.dd.fs("restored").unwrap();
    let rep2 = restored.fsck().await.unwrap();
    assert!(rep2.is_clean(), "{rep2:?}");
    assert_eq!(rep2.records, 3);
    let got = all_files(&restored).await;
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        ["/keep/big", "/keep/x"]
    );
    // The live filesystem empties it later, as the server does.
    fs.empty_trash().await.unwrap();
    assert!(!gone_blob.unwrap().exists());
    assert!(fs.fsck().await.unwrap().is_clean());
}
