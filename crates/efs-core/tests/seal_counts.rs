//! Records sealed under each key term are counted, stored with the index and reported by
//! `status`: a term's keys seal with random 96-bit nonces, and AES-GCM allows one such key
//! 2^32 seals (NIST SP 800-38D), so the operator must rotate before that.

mod common;

use std::path::{Path, PathBuf};

use common::{new_part, opts, put, walk};
use efs_core::admin::{AdminRequest, AdminResponse, execute};
use efs_core::fs::SEAL_WARNING;
use efs_core::keyparts::no_prompt;
use efs_core::{DataDir, KeyPartSpec};

fn open_with_step(root: &Path, part: &KeyPartSpec, step: u64) -> DataDir {
    let mut o = opts();
    o.fs.seal_count_step = step;
    DataDir::open(root, std::slice::from_ref(part), o, &no_prompt)
        .unwrap()
        .0
}

async fn status(dd: &DataDir) -> AdminResponse {
    let st = execute(
        dd,
        AdminRequest::Status {
            fs: Some("docs".into()),
        },
    )
    .await;
    assert!(st.ok, "status failed: {:?}", st.error);
    st
}

fn index_file(root: &Path) -> PathBuf {
    let found: Vec<_> = walk(root)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "index.redb"))
        .collect();
    assert_eq!(found.len(), 1, "one filesystem, one index: {found:?}");
    found.into_iter().next().unwrap()
}

/// The stored counts: a row of the index's metadata, `(term u32 BE, count u64 BE)` pairs.
fn counts_row(term: u32, n: u64) -> Vec<u8> {
    let mut row = term.to_be_bytes().to_vec();
    row.extend_from_slice(&n.to_be_bytes());
    row
}

/// Writes (or, with `None`, removes) the stored counts while the data dir is closed.
fn set_counts_row(root: &Path, row: Option<&[u8]>) {
    let db = redb::Database::open(index_file(root)).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut meta = w
            .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap();
        match row {
            Some(r) => {
                meta.insert("seal-counts", r).unwrap();
            }
            None => {
                meta.remove("seal-counts").unwrap();
            }
        }
    }
    w.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sealed_are_counted_stored_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    {
        let dd = open_with_step(&root, &part, 4);
        dd.create_fs("docs").unwrap();
        let fs = dd.fs("docs").unwrap();
        for i in 0..10 {
            put(&fs, &format!("/a/f{i}"), b"x").await;
        }
        // Ten file records and the directory /a, all under term 1.
        assert_eq!(fs.seal_counts().get(&1), Some(&11));
        let st = status(&dd).await;
        assert_eq!(st.data[0]["records_sealed"]["1"], 11, "{}", st.data);
        assert_eq!(st.data[0]["rotate_now"], false);
        assert!(
            st.lines
                .iter()
                .any(|l| l.contains("11 records sealed under the current term")),
            "{:?}",
            st.lines
        );
    }
    // Reopened: the count stored with the index, at most one step (4) behind.
    {
        let dd = open_with_step(&root, &part, 4);
        let stored = dd.fs("docs").unwrap().seal_counts()[&1];
        assert!((8..=11).contains(&stored), "stored count {stored}");
    }
    // A filesystem from before the counts (no row), or with a damaged row, starts from the
    // records its index holds: 11 under term 1.
    for row in [None, Some(vec![1u8, 2, 3])] {
        set_counts_row(&root, row.as_deref());
        let dd = open_with_step(&root, &part, 4);
        assert_eq!(
            dd.fs("docs").unwrap().seal_counts().get(&1),
            Some(&11),
            "{row:?}"
        );
    }
    set_counts_row(&root, Some(&counts_row(1, 9)));
    let dd = open_with_step(&root, &part, 4);
    let fs = dd.fs("docs").unwrap();
    let stored = fs.seal_counts()[&1];
    assert_eq!(stored, 9, "the stored row");
    // The rows written by hand above are changes behind EFS's back, which the index digest
    // covers (the metadata too): the filesystem is held until the operator accepts it.
    let fsck = |accept_index| {
        execute(
            &dd,
            AdminRequest::Fsck {
                fs: "docs".into(),
                accept_index,
            },
        )
    };
    assert_eq!(fsck(false).await.clean, Some(false));
    let r = fsck(true).await;
    assert!(r.ok, "{:?}", r.error);
    // A rotation reseals every record under the new term: counted for term 2.
    let r = execute(
        &dd,
        AdminRequest::RotateKey {
            fs: "docs".into(),
            wait: true,
        },
    )
    .await;
    assert!(r.ok, "rotate-key failed: {:?}", r.error);
    let after = fs.seal_counts();
    assert!(after[&2] >= 11, "records resealed under term 2: {after:?}");
    assert_eq!(after[&1], stored, "term 1 sealed nothing more");
    let st = status(&dd).await;
    assert_eq!(st.data[0]["current_term"], 2);
    assert_eq!(st.data[0]["records_sealed"]["2"], after[&2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_half_the_limit_the_status_says_rotate() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    {
        let dd = open_with_step(&root, &part, 65_536);
        dd.create_fs("docs").unwrap();
    }
    // As if term 1 had sealed SEAL_WARNING - 1 records already.
    set_counts_row(&root, Some(&counts_row(1, SEAL_WARNING - 1)));
    {
        let dd = open_with_step(&root, &part, 65_536);
        let fs = dd.fs("docs").unwrap();
        assert_eq!(fs.seal_counts()[&1], SEAL_WARNING - 1);
        assert_eq!(status(&dd).await.data[0]["rotate_now"], false);
        put(&fs, "/one", b"x").await;
        assert_eq!(fs.seal_counts()[&1], SEAL_WARNING);
        let st = status(&dd).await;
        assert_eq!(st.data[0]["rotate_now"], true);
        assert!(
            st.lines
                .iter()
                .any(|l| l.contains("WARNING") && l.contains("efsctl rotate-key --fs docs")),
            "{:?}",
            st.lines
        );
    }
    // Reaching the warning stores the count at once, whatever the step.
    let dd = open_with_step(&root, &part, 65_536);
    assert_eq!(dd.fs("docs").unwrap().seal_counts()[&1], SEAL_WARNING);
    assert_eq!(status(&dd).await.data[0]["rotate_now"], true);
}

/// Regression: counts were stored only by steps (65,536 records by default), so what a run
/// counted below a step was lost at every stop, and a filesystem restarted more often than
/// it sealed a step's worth of records never stored any. A clean end now stores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_stores_the_counts_below_a_step() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let part = new_part(&tmp.path().join("part.key"));
    let step = 1_000;
    {
        let dd = open_with_step(&root, &part, step);
        dd.create_fs("docs").unwrap();
        let fs = dd.fs("docs").unwrap();
        for i in 0..6 {
            put(&fs, &format!("/f{i}"), b"x").await;
        }
        assert_eq!(fs.seal_counts().get(&1), Some(&6));
        // Gone without a clean end: nothing stored (below a step).
    }
    let counts = |dd: &DataDir| {
        let c = dd.fs("docs").unwrap().seal_counts();
        c.get(&1).copied().unwrap_or(0)
    };
    {
        let dd = open_with_step(&root, &part, step);
        assert_eq!(counts(&dd), 0, "a crash loses less than a step");
        let fs = dd.fs("docs").unwrap();
        for i in 0..5 {
            put(&fs, &format!("/g{i}"), b"x").await;
        }
        dd.store_seal_counts().await.unwrap();
    }
    let dd = open_with_step(&root, &part, step);
    assert_eq!(counts(&dd), 5, "stored at the clean end");
    // Nothing new: nothing written (the same row).
    dd.store_seal_counts().await.unwrap();
    drop(dd);
    assert_eq!(counts(&open_with_step(&root, &part, step)), 5);
}
