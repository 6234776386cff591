//! Key rotation: a new term, every data key rewrapped, content untouched, resumable,
//! and served throughout.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use efs_core::admin::{self, AdminRequest};
use efs_core::fs::rotation::{self, RotationState};
use efs_core::{Filesystem, Precondition};
use sha2::{Digest, Sha256};

/// SHA-256 of every finished blob file.
fn hash_blobs(env: &Env) -> BTreeMap<PathBuf, String> {
    env.blob_files()
        .into_iter()
        .map(|f| {
            let h = hex::encode(Sha256::digest(std::fs::read(&f).unwrap()));
            (f, h)
        })
        .collect()
}

/// Content of version `v` of `path`: recognisable, and sometimes larger than inline.
fn content(path: &str, v: u64, len: usize) -> Vec<u8> {
    let head = format!("{path} v{v}\n");
    let mut out = head.clone().into_bytes();
    out.extend(pattern(v ^ (len as u64), len.saturating_sub(head.len())));
    out
}

/// Writes `n` files concurrently (16 tasks): `d{i % 10}/f{i}`; every 50th is a blob.
async fn write_many(fs: &Arc<Filesystem>, n: usize) -> BTreeMap<String, Vec<u8>> {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..16 {
        let fs = fs.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            for i in (t..n).step_by(16) {
                let path = format!("/d{}/f{i}", i % 10);
                let len = if i % 50 == 0 { 5000 + i } else { 40 + i % 200 };
                let data = content(&path, 1, len);
                put(&fs, &path, &data).await;
                out.push((path, data));
            }
            out
        });
    }
    let mut all = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

async fn check_all(fs: &Filesystem, files: &BTreeMap<String, Vec<u8>>) {
    for (path, data) in files {
        let got = read_all(fs, path)
            .await
            .unwrap_or_else(|e| panic!("read {path}: {e}"));
        assert!(got == *data, "{path} reads back byte-exact");
    }
}

async fn wait_done(fs: &Filesystem) -> rotation::RotationProgress {
    let t0 = Instant::now();
    loop {
        let p = rotation::progress(fs).await.unwrap().expect("a rotation");
        if p.state == RotationState::Done {
            return p;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "rotation finishes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_rewraps_every_key_and_leaves_content_alone() {
    let env = Env::new();
    let files = write_many(&env.fs, 2000).await;
    assert_eq!(
        env.fs.key_terms_in_use().await.unwrap(),
        BTreeSet::from([1])
    );
    let blobs_before = hash_blobs(&env);
    assert!(blobs_before.len() >= 40, "some files are blobs");
    let entries_before = env.fs.stats().await.unwrap();

    let t0 = Instant::now();
    let (started, p) = env.dd.rotate_key("docs", true).await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert!(started);
    assert_eq!(p.state, RotationState::Done);
    assert_eq!(p.current_term, 2);
    assert_eq!(p.terms, 2);
    // 2000 files and 10 directories, each re-sealed exactly once.
    assert_eq!(p.rewrapped, 2010);
    eprintln!(
        "rotation: {} records ({} data keys) rewrapped in {:.3} s: {:.0} data keys/s",
        p.rewrapped,
        files.len(),
        secs,
        files.len() as f64 / secs
    );

    assert_eq!(env.fs.current_term(), 2);
    assert_eq!(env.fs.term_numbers(), vec![1, 2]);
    assert_eq!(
        env.fs.key_terms_in_use().await.unwrap(),
        BTreeSet::from([2])
    );
    assert_eq!(hash_blobs(&env), blobs_before, "content blobs untouched");
    let s = env.fs.stats().await.unwrap();
    assert_eq!(
        (s.files, s.dirs, s.bytes),
        (
            entries_before.files,
            entries_before.dirs,
            entries_before.bytes
        )
    );
    check_all(&env.fs, &files).await;
    let rep = env.fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.files_verified, 2000);

    // New writes use term 2; status shows it all.
    put(&env.fs, "/new", b"after").await;
    assert_eq!(
        env.fs.key_terms_in_use().await.unwrap(),
        BTreeSet::from([2])
    );
    let r = admin::execute(&env.dd, AdminRequest::Status { fs: None }).await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.lines[0].contains("current key term 2 (2 terms)") && r.lines[0].contains("done"),
        "{:?}",
        r.lines
    );
    assert_eq!(r.data["filesystems"][0]["rotation"]["state"], "done");

    // A second rotation adds term 3; term 1 and 2 are kept.
    let r = admin::execute(
        &env.dd,
        AdminRequest::RotateKey {
            fs: "docs".into(),
            wait: true,
        },
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert_eq!(env.fs.term_numbers(), vec![1, 2, 3]);
    assert_eq!(
        env.fs.key_terms_in_use().await.unwrap(),
        BTreeSet::from([3])
    );
    assert_eq!(hash_blobs(&env), blobs_before);
    check_all(&env.fs, &files).await;

    // And all of it survives a reopen (the keyring was persisted).
    let Env {
        tmp,
        root,
        part,
        dd,
        fs,
    } = env;
    drop(fs);
    drop(dd);
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    let fs = dd.fs("docs").unwrap();
    assert_eq!(fs.current_term(), 3);
    check_all(&fs, &files).await;
    assert!(fs.fsck().await.unwrap().is_clean());
    drop(tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_rotation_resumes_at_open() {
    let env = Env::new();
    let files = write_many(&env.fs, 600).await;
    let blobs_before = hash_blobs(&env);
    let p = env.dd.begin_rotation("docs").await.unwrap();
    assert_eq!((p.current_term, p.state), (2, RotationState::Running));
    // New writes use the new term at once.
    put(&env.fs, "/during", b"written before the rewrap").await;
    // "Crash" after 300 entries.
    let p = rotation::run(&env.fs, Some(300)).await.unwrap().unwrap();
    assert_eq!(p.state, RotationState::Running);
    assert_eq!(p.seen, 300);
    assert!(p.cursor.is_some());
    assert_eq!(
        env.fs.key_terms_in_use().await.unwrap(),
        BTreeSet::from([1, 2]),
        "half done"
    );
    // Everything reads in the middle.
    check_all(&env.fs, &files).await;

    let Env {
        tmp,
        root,
        part,
        dd,
        fs,
    } = env;
    drop(fs);
    drop(dd);
    let dd = open(&root, std::slice::from_ref(&part)).unwrap();
    let fs = dd.fs("docs").unwrap();
    let p = wait_done(&fs).await;
    assert_eq!(p.current_term, 2);
    // 611 records (600 files, 10 directories, /during); the first 300 seen were done
    // before the crash, none twice.
    assert_eq!(p.rewrapped, 610);
    assert_eq!(fs.key_terms_in_use().await.unwrap(), BTreeSet::from([2]));
    assert_eq!(fs.term_numbers(), vec![1, 2]);
    check_all(&fs, &files).await;
    assert_eq!(
        read_all(&fs, "/during").await.unwrap(),
        b"written before the rewrap"
    );
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    let blobs_after: BTreeMap<PathBuf, String> = common::walk(&root.join("fs"))
        .into_iter()
        .filter(|f| blobs_before.contains_key(f))
        .map(|f| {
            let h = hex::encode(Sha256::digest(std::fs::read(&f).unwrap()));
            (f, h)
        })
        .collect();
    assert_eq!(blobs_after, blobs_before, "content blobs untouched");
    drop(tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn rotation_under_concurrent_reads_and_writes() {
    let env = Env::new();
    let files = write_many(&env.fs, 400).await;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));

    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8u64 {
        let fs = env.fs.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        let ops = ops.clone();
        writers.spawn(async move {
            let mut last: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let path = format!("/w{w}/sub{}/f{}", v % 3, v % 7);
                let len = if v.is_multiple_of(5) {
                    3000
                } else {
                    100 + (v % 300) as usize
                };
                let data = content(&path, v, len);
                match put_with(&fs, &path, &data, None, Precondition::None).await {
                    Ok(_) => {
                        last.insert(path.clone(), data);
                    }
                    Err(e) => {
                        eprintln!("writer {w}: {path}: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if v.is_multiple_of(10) {
                    // A rename too: the moved record must carry the new term.
                    let from = format!("/w{w}/sub0/f{}", v % 7);
                    let to = format!("/w{w}/moved/f{}", v % 7);
                    if let Some(data) = last.remove(&from) {
                        match fs.rename(&p(&from), &p(&to), true).await {
                            Ok(_) => {
                                last.insert(to, data);
                            }
                            Err(e) => {
                                last.insert(from.clone(), data);
                                eprintln!("writer {w}: rename {from}: {e}");
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
            last
        });
    }
    let mut readers = tokio::task::JoinSet::new();
    let shared = Arc::new(files.clone());
    for r in 0..8usize {
        let fs = env.fs.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        let ops = ops.clone();
        let shared = shared.clone();
        readers.spawn(async move {
            let keys: Vec<&String> = shared.keys().collect();
            let mut i = r * 37;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 13) % keys.len();
                let path = keys[i];
                match read_all(&fs, path).await {
                    Ok(got) if got == shared[path] => {}
                    Ok(_) => {
                        eprintln!("reader {r}: {path}: wrong content");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("reader {r}: {path}: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if i % 5 == 0
                    && let Err(e) = fs.list(&p(&format!("/d{}", i % 10)), None, 100).await
                {
                    eprintln!("reader {r}: list: {e}");
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let (_, p) = env.dd.rotate_key("docs", true).await.unwrap();
    eprintln!(
        "rotation under load: {} records rewrapped in {:.3} s over {} passes",
        p.rewrapped,
        t0.elapsed().as_secs_f64(),
        p.pass
    );
    assert_eq!(p.state, RotationState::Done);
    let rest = Duration::from_secs(2).saturating_sub(t0.elapsed() + Duration::from_millis(300));
    tokio::time::sleep(rest.max(Duration::from_millis(300))).await;
    stop.store(true, Ordering::Relaxed);
    let mut last = BTreeMap::new();
    while let Some(r) = writers.join_next().await {
        last.extend(r.unwrap());
    }
    while let Some(r) = readers.join_next().await {
        r.unwrap();
    }
    eprintln!(
        "{} requests served during the test",
        ops.load(Ordering::Relaxed)
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no failed request");
    check_all(&env.fs, &last).await;
    check_all(&env.fs, &files).await;
    assert_eq!(
        env.fs.key_terms_in_use().await.unwrap(),
        BTreeSet::from([2])
    );
    let rep = env.fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
}
