//! Re-encryption: every file rewritten under a fresh data key, content identical,
//! resumable, and served throughout.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use efs_core::admin::{self, AdminRequest};
use efs_core::fs::reencrypt::{self, ReencryptProgress};
use efs_core::fs::rotation::RotationState;
use efs_core::{Filesystem, Precondition};

/// Content of version `v` of `path`: recognisable, sometimes larger than inline.
fn content(path: &str, v: u64, len: usize) -> Vec<u8> {
    let head = format!("{path} v{v}\n");
    let mut out = head.clone().into_bytes();
    out.extend(pattern(v ^ (len as u64), len.saturating_sub(head.len())));
    out
}

/// Writes `n` files concurrently: `d{i % 10}/f{i}`; every 10th is a blob.
async fn write_many(fs: &Arc<Filesystem>, n: usize) -> BTreeMap<String, Vec<u8>> {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..8 {
        let fs = fs.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            for i in (t..n).step_by(8) {
                let path = format!("/d{}/f{i}", i % 10);
                let len = if i % 10 == 0 { 3000 + i * 7 } else { i % 500 };
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

/// The version (ETag bytes: a keyed hash of the content id) of every file.
async fn versions(
    fs: &Filesystem,
    files: &BTreeMap<String, Vec<u8>>,
) -> BTreeMap<String, [u8; 16]> {
    let mut out = BTreeMap::new();
    for path in files.keys() {
        out.insert(path.clone(), fs.stat(&p(path)).await.unwrap().version);
    }
    out
}

async fn wait_done(fs: &Filesystem) -> ReencryptProgress {
    let t0 = Instant::now();
    loop {
        let p = reencrypt::progress(fs)
            .await
            .unwrap()
            .expect("a re-encryption");
        if p.state == RotationState::Done {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "re-encryption finishes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reencryption_gives_every_file_a_new_key_and_the_same_content() {
    let env = Env::new();
    let files = write_many(&env.fs, 300).await;
    let before = versions(&env.fs, &files).await;
    let blobs_before: BTreeSet<PathBuf> = env.blob_files().into_iter().collect();
    assert_eq!(blobs_before.len(), 30, "every 10th file is a blob");

    // A reader opened before the re-encryption keeps reading its version.
    let early = env.fs.open(&p("/d0/f0")).await.unwrap();

    let (started, prog) = env.dd.reencrypt("docs", true).await.unwrap();
    assert!(started);
    assert_eq!(prog.state, RotationState::Done);
    assert_eq!(prog.current_term, 2);
    assert_eq!(prog.total_files, 300);
    assert_eq!(prog.files_done, 300);
    assert_eq!(prog.resealed, 10, "the ten directories are only re-sealed");
    assert_eq!(prog.skipped, 0);
    assert_eq!(
        prog.bytes_done,
        files.values().map(|d| d.len() as u64).sum::<u64>()
    );

    let after = versions(&env.fs, &files).await;
    for (path, v) in &before {
        assert_ne!(after[path], *v, "{path} is new content (new content id)");
    }
    let blobs_after: BTreeSet<PathBuf> = env.blob_files().into_iter().collect();
    assert_eq!(blobs_after.len(), 30);
    assert!(
        blobs_after.is_disjoint(&blobs_before),
        "every blob is new and every old one removed"
    );
    assert_eq!(
        env.fs.key_terms_in_use().await.unwrap(),
        BTreeSet::from([2]),
        "every data key is wrapped under the new term"
    );
    check_all(&env.fs, &files).await;
    assert_eq!(read_reader(&early).await.unwrap(), files["/d0/f0"]);
    let rep = env.fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.files_verified, 300);

    let r = admin::execute(&env.dd, AdminRequest::Status { fs: None }).await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.lines
            .iter()
            .any(|l| l.contains("re-encryption to term 2: done (300 of 300 files")),
        "{:?}",
        r.lines
    );
    assert_eq!(r.data["filesystems"][0]["reencryption"]["state"], "done");

    // A key rotation afterwards works as before; a second re-encryption again renews all.
    let (_, rot) = env.dd.rotate_key("docs", true).await.unwrap();
    assert_eq!(rot.current_term, 3);
    let (_, again) = env.dd.reencrypt("docs", true).await.unwrap();
    assert_eq!((again.current_term, again.files_done), (4, 300));
    let third = versions(&env.fs, &files).await;
    for (path, v) in &after {
        assert_ne!(third[path], *v, "{path} renewed again");
    }
    check_all(&env.fs, &files).await;
    assert!(env.fs.fsck().await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_reencryption_resumes_at_open() {
    let env = Env::new();
    let files = write_many(&env.fs, 200).await;
    let before = versions(&env.fs, &files).await;
    let p0 = env.dd.begin_reencryption("docs").await.unwrap();
    assert_eq!((p0.current_term, p0.state), (2, RotationState::Running));
    // A key rotation is refused meanwhile.
    assert!(env.dd.rotate_key("docs", true).await.is_err());
    // "Crash" after 100 entries.
    let p = reencrypt::run(&env.fs, Some(100)).await.unwrap().unwrap();
    assert_eq!(p.state, RotationState::Running);
    assert_eq!(p.seen, 100);
    let half = p.files_done;
    assert!(half > 50 && half <= 100, "{half}");
    assert_eq!(
        env.fs.key_terms_in_use().await.unwrap(),
        BTreeSet::from([1, 2]),
        "half done"
    );
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
    // Each file rewritten exactly once across the crash.
    assert_eq!(p.files_done, 200);
    assert_eq!(fs.key_terms_in_use().await.unwrap(), BTreeSet::from([2]));
    let after = versions(&fs, &files).await;
    for (path, v) in &before {
        assert_ne!(after[path], *v, "{path} is new content");
    }
    check_all(&fs, &files).await;
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    drop(tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn reencryption_under_concurrent_reads_writes_and_renames() {
    let env = Env::new();
    let files = write_many(&env.fs, 400).await;
    let before = versions(&env.fs, &files).await;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));

    // Writers overwrite and rename their own files; the readers read the rest.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..6u64 {
        let fs = env.fs.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        let ops = ops.clone();
        writers.spawn(async move {
            let mut last: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) || v < 20 {
                v += 1;
                let path = format!("/w{w}/sub{}/f{}", v % 3, v % 7);
                let len = if v.is_multiple_of(4) {
                    5000
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
                if v.is_multiple_of(6) {
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
    for r in 0..6usize {
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
                ops.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, p) = env.dd.reencrypt("docs", true).await.unwrap();
    eprintln!(
        "re-encryption under load: {} files rewritten, {} changed by writers first, {} passes",
        p.files_done, p.skipped, p.pass
    );
    assert_eq!(p.state, RotationState::Done);
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    let after = versions(&env.fs, &files).await;
    for (path, v) in &before {
        assert_ne!(after[path], *v, "{path} is new content");
    }
    // Moved and overwritten files included: nothing is left under the old term.
    assert_eq!(
        env.fs.key_terms_in_use().await.unwrap(),
        BTreeSet::from([2])
    );
    let rep = env.fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
}

/// A rename during a re-encryption keeps the file's old term (a plain rotation would
/// rewrap it), so a file moved behind the cursor is still found and rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_renamed_during_a_reencryption_still_get_new_keys() {
    let env = Env::new();
    let files = write_many(&env.fs, 120).await;
    let before = versions(&env.fs, &files).await;
    env.dd.begin_reencryption("docs").await.unwrap();
    let part = reencrypt::run(&env.fs, Some(40)).await.unwrap().unwrap();
    assert_eq!(part.state, RotationState::Running);
    // Move everything: about half lands behind the cursor.
    let mut moved = BTreeMap::new();
    for (path, data) in &files {
        let to = format!("/moved{}", path.replace('/', "_"));
        env.fs.rename(&p(path), &p(&to), false).await.unwrap();
        moved.insert(to, (path.clone(), data.clone()));
    }
    let done = reencrypt::run(&env.fs, None).await.unwrap().unwrap();
    assert_eq!(done.state, RotationState::Done);
    assert!(done.pass >= 2, "the moved files needed another pass");
    for (to, (from, data)) in &moved {
        assert!(read_all(&env.fs, to).await.unwrap() == *data, "{to}");
        let v = env.fs.stat(&p(to)).await.unwrap().version;
        assert_ne!(v, before[from], "{from} → {to} has new content");
    }
    assert_eq!(
        env.fs.key_terms_in_use().await.unwrap(),
        BTreeSet::from([2])
    );
    assert!(env.fs.fsck().await.unwrap().is_clean());
}

/// A file whose content is missing (its blob deleted behind EFS's back) is reported as
/// damaged by a re-encryption, not counted as changed by a client: the run ended `done`
/// after 16 passes with the file skipped and unreported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_without_its_content_is_reported_damaged_by_a_reencryption() {
    let env = Env::new();
    let files = write_many(&env.fs, 20).await;
    let blobs = env.blob_files();
    assert_eq!(blobs.len(), 2, "every 10th file is a blob");
    std::fs::remove_file(&blobs[0]).unwrap();
    let (_, prog) = env.dd.reencrypt("docs", true).await.unwrap();
    assert_eq!(prog.state, RotationState::Done);
    assert_eq!(prog.damaged.count, 1, "{prog:?}");
    assert_eq!(prog.skipped, 0, "{prog:?}");
    // The first pass rewrites the others, the second changes nothing and ends the run (it
    // went on to the 16-pass limit when the missing content counted as a change).
    assert_eq!(prog.pass, 2, "{prog:?}");
    assert_eq!(prog.pass_changed, 0, "{prog:?}");
    assert_eq!(prog.files_done, files.len() as u64 - 1);
}

/// `efsctl reencrypt --wait` (and a re-encryption without a server) says in its own summary
/// how many damaged entries it skipped, with their entry keys, and gives them in its JSON:
/// it said `Re-encrypted N files (…); 0 were changed by clients first; done`, and only
/// `efsctl status` showed the damaged entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reencryption_names_the_damaged_entries_it_skipped_in_its_summary() {
    let env = Env::new();
    write_many(&env.fs, 20).await;
    let blobs = env.blob_files();
    std::fs::remove_file(&blobs[0]).unwrap();
    let r = admin::execute(
        &env.dd,
        AdminRequest::Reencrypt {
            fs: "docs".into(),
            wait: true,
        },
    )
    .await;
    assert!(r.ok, "{r:?}");
    let summary = r
        .lines
        .iter()
        .find(|l| l.starts_with("Re-encrypted "))
        .unwrap_or_else(|| panic!("no summary: {:?}", r.lines));
    assert!(
        summary.contains("1 damaged entries skipped") && summary.contains("see efsctl fsck"),
        "{summary}"
    );
    assert_eq!(r.data["damaged"]["count"], 1, "{}", r.data);
    assert_eq!(r.data["damaged"]["keys"].as_array().unwrap().len(), 1);
}
