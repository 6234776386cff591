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
    assert!(m.files >= 150 && m.files <= 190, "{}", m.files);

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
        },
    )
    .await;
    assert!(r.ok, "{r:?}");
    let restored = env.dd.fs("restored").unwrap();
    assert_ne!(restored.id(), env.fs.id(), "a new filesystem id");
    let rep2 = restored.fsck().await.unwrap();
    assert!(rep2.is_clean(), "{rep2:?}");
    assert_eq!(rep2.files_verified, m.files);
    let got = all_files(&restored).await;
    assert_eq!(got.len() as u64, m.files);
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
    assert_eq!(bytes, m.bytes, "the snapshot's bytes, all of them");

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
        .restore("restored2", &dest, &[], &efs_core::keyparts::no_prompt)
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
        .restore("x", &plain, &[], &efs_core::keyparts::no_prompt)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("holds no keys"), "{e}");
    // The keyed one needs the original data dir's key parts, not the new one's.
    let e = other
        .restore("x", &keyed, &[], &efs_core::keyparts::no_prompt)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--backup-key-part"), "{e}");
    other
        .restore(
            "x",
            &keyed,
            std::slice::from_ref(&env.part),
            &efs_core::keyparts::no_prompt,
        )
        .await
        .unwrap();
    let x = other.fs("x").unwrap();
    let rep = x.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(all_files(&x).await, files);
    // Into an existing empty filesystem: placed under that filesystem's own keyring.
    other.create_fs("empty").unwrap();
    other
        .restore(
            "empty",
            &keyed,
            std::slice::from_ref(&env.part),
            &efs_core::keyparts::no_prompt,
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
