//! I/O faults at the storage traits: a failed blob write, a failed fsync, a full disk and a
//! failed index commit. Each must make the operation fail with a clear error while the
//! previous version of the file stays intact, byte-exact, and nothing half-written is
//! visible (no new blob, no temporary file left, fsck clean); the next operation works.
//! A failed index commit is the exception for blobs: its outcome is unknown (it may have
//! landed), so the new blob stays, an orphan that gc removes when it did not land.

mod common;
#[path = "common/faulty.rs"]
mod faulty;

use std::path::PathBuf;
use std::sync::Arc;

use common::{p, pattern, put_with, read_all};
use efs_core::blob::LocalBlobStore;
use efs_core::fs::FsOptions;
use efs_core::keyring::Keyring;
use efs_core::redb_index::RedbIndex;
use efs_core::{CoreError, Filesystem, Precondition};
use faulty::{EIO, ENOSPC, Fault, Faults, FaultyBlobStore, FaultyIndex};

/// Files up to this size are inline (index only); larger ones are blobs.
const INLINE_MAX: usize = 1024;

/// A filesystem on a real redb index and a real local blob store, both behind the
/// fault-injecting wrappers.
struct FaultyFs {
    _tmp: tempfile::TempDir,
    blobs_dir: PathBuf,
    fs: Arc<Filesystem>,
    faults: Faults,
}

impl FaultyFs {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let blobs_dir = tmp.path().join("blobs");
        let faults = Faults::default();
        let blobs = FaultyBlobStore {
            inner: Arc::new(LocalBlobStore::open(&blobs_dir).unwrap()),
            faults: faults.clone(),
        };
        let index = FaultyIndex {
            inner: Arc::new(
                RedbIndex::open(
                    &tmp.path().join("index.redb"),
                    efs_core::digest::DigestKey::from_root(&efs_format::Key32::random(), &[0; 16]),
                )
                .unwrap(),
            ),
            faults: faults.clone(),
        };
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).unwrap();
        let fs = Arc::new(Filesystem::new(
            "faulty".into(),
            id,
            Arc::new(index),
            Arc::new(blobs),
            Keyring::generate(),
            FsOptions {
                inline_max: INLINE_MAX,
                ..Default::default()
            },
        ));
        Self {
            _tmp: tmp,
            blobs_dir,
            fs,
            faults,
        }
    }

    /// Finished blob files (the temporary directory excluded).
    fn blob_files(&self) -> Vec<PathBuf> {
        common::walk(&self.blobs_dir)
            .into_iter()
            .filter(|f| !f.starts_with(self.blobs_dir.join("tmp")))
            .collect()
    }

    fn tmp_files(&self) -> usize {
        std::fs::read_dir(self.blobs_dir.join("tmp"))
            .unwrap()
            .count()
    }

    async fn put(&self, path: &str, data: &[u8]) -> Result<efs_core::Entry, CoreError> {
        put_with(&self.fs, path, data, None, Precondition::None).await
    }

    /// Arms `fault`, runs a write of `new` over `path` (which holds `old`) and checks that it
    /// failed with `errno`, that `path` still reads `old` with the same ETag, that no blob
    /// or temporary file was added, and that fsck is clean. Then writes `new` for real.
    async fn check_write_fault(
        &self,
        path: &str,
        old: &[u8],
        new: &[u8],
        fault: Fault,
        errno: i32,
    ) {
        let before = self.fs.stat(&p(path)).await.unwrap();
        let blobs_before = self.blob_files();
        let fired = self.faults.fired();
        self.faults.arm(fault);

        let err = self
            .put(path, new)
            .await
            .expect_err("the write must fail while the fault is armed");
        assert_eq!(self.faults.fired(), fired + 1, "{fault:?} fired");
        assert_io_error(&err, errno);

        assert_eq!(
            read_all(&self.fs, path).await.unwrap(),
            old,
            "{path} after {fault:?}"
        );
        let after = self.fs.stat(&p(path)).await.unwrap();
        assert_eq!(after.etag(), before.etag(), "the version did not change");
        assert_eq!(after.size, old.len() as u64);
        assert_eq!(self.tmp_files(), 0, "no partial write is left behind");
        if fault == Fault::CommitNoSpace {
            // A failed index commit has an unknown outcome for the filesystem (it may land
            // when the index is reopened): a new blob stays, an orphan that gc removes.
            let after = self.blob_files();
            assert!(
                blobs_before.iter().all(|b| after.contains(b)),
                "no blob vanished"
            );
            assert!(after.len() <= blobs_before.len() + 1, "{after:?}");
            let rep = self.fs.fsck().await.unwrap();
            assert!(rep.errors.is_empty(), "fsck after {fault:?}: {rep:?}");
            assert_eq!(rep.orphan_blobs.len(), after.len() - blobs_before.len());
            self.fs.gc(0).await.unwrap();
        }
        assert_eq!(
            self.blob_files(),
            blobs_before,
            "no blob appeared or vanished"
        );
        let rep = self.fs.fsck().await.unwrap();
        assert!(rep.is_clean(), "fsck after {fault:?}: {rep:?}");

        // Disarmed: the same write now succeeds.
        self.put(path, new).await.unwrap();
        assert_eq!(read_all(&self.fs, path).await.unwrap(), new);
        // Put the old version back for the next check.
        self.put(path, old).await.unwrap();
    }
}

/// A clear error: an I/O error carrying the OS error, whose message names it
/// ("No space left on device", "Input/output error") and nothing else.
fn assert_io_error(err: &CoreError, errno: i32) {
    match err {
        CoreError::Io(e) => {
            assert_eq!(e.raw_os_error(), Some(errno), "{e}");
            if errno == ENOSPC {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
            }
        }
        other => panic!("expected an I/O error (os error {errno}), got {other:?}"),
    }
    let msg = err.to_string();
    let expected = std::io::Error::from_raw_os_error(errno).to_string();
    assert_eq!(msg, format!("I/O error: {expected}"));
}

#[tokio::test]
async fn failed_blob_write_keeps_the_previous_version() {
    let f = FaultyFs::new();
    let old = pattern(1, 300_000);
    f.put("/a/big.bin", &old).await.unwrap();
    // 3 MiB: several 1 MiB blob writes; the second one fails (after one has reached disk).
    let new = pattern(2, 3 << 20);
    f.check_write_fault("/a/big.bin", &old, &new, Fault::FailWrite { nth: 2 }, EIO)
        .await;
    // The first write failing (nothing on disk yet) is handled the same way.
    f.check_write_fault("/a/big.bin", &old, &new, Fault::FailWrite { nth: 1 }, EIO)
        .await;
    // An inline file replaced by a blob whose write fails.
    let small = pattern(3, 100);
    f.put("/a/small", &small).await.unwrap();
    f.check_write_fault("/a/small", &small, &new, Fault::FailWrite { nth: 1 }, EIO)
        .await;
}

#[tokio::test]
async fn failed_fsync_keeps_the_previous_version() {
    let f = FaultyFs::new();
    let old = pattern(4, 2 << 20);
    f.put("/b.bin", &old).await.unwrap();
    let new = pattern(5, 5_000);
    f.check_write_fault("/b.bin", &old, &new, Fault::FailFsync, EIO)
        .await;
}

#[tokio::test]
async fn full_disk_keeps_the_previous_version() {
    let f = FaultyFs::new();
    let old = pattern(6, 1_500_000);
    f.put("/c.bin", &old).await.unwrap();
    let new = pattern(7, 4 << 20);
    f.check_write_fault(
        "/c.bin",
        &old,
        &new,
        Fault::DiskFull {
            after_bytes: 2 << 20,
        },
        ENOSPC,
    )
    .await;
    // Full before the first byte.
    f.check_write_fault(
        "/c.bin",
        &old,
        &new,
        Fault::DiskFull { after_bytes: 0 },
        ENOSPC,
    )
    .await;
}

#[tokio::test]
async fn failed_index_commit_keeps_the_previous_version_and_leaves_the_new_blob_to_gc() {
    let f = FaultyFs::new();
    // Blob over blob: the new blob was finished before the commit failed; gc removes it.
    let old = pattern(8, 200_000);
    f.put("/d/e.bin", &old).await.unwrap();
    let new = pattern(9, 1_200_000);
    f.check_write_fault("/d/e.bin", &old, &new, Fault::CommitNoSpace, ENOSPC)
        .await;
    // Inline over inline.
    let old = pattern(10, 10);
    f.put("/d/tiny", &old).await.unwrap();
    f.check_write_fault(
        "/d/tiny",
        &old,
        &pattern(11, 20),
        Fault::CommitNoSpace,
        ENOSPC,
    )
    .await;
    // A new file under a new directory: neither appears.
    f.faults.arm(Fault::CommitNoSpace);
    let err = f.put("/new/dir/f", &pattern(12, 5000)).await.unwrap_err();
    assert_io_error(&err, ENOSPC);
    assert!(matches!(
        f.fs.stat(&p("/new")).await,
        Err(CoreError::NotFound)
    ));
    // Its blob stays (the outcome was unknown) as an orphan, which gc removes.
    let rep = f.fs.fsck().await.unwrap();
    assert!(
        rep.errors.is_empty() && rep.orphan_blobs.len() == 1,
        "{rep:?}"
    );
    f.fs.gc(0).await.unwrap();
    assert!(f.fs.fsck().await.unwrap().is_clean());
}

#[tokio::test]
async fn failed_commit_of_a_delete_or_rename_changes_nothing() {
    let f = FaultyFs::new();
    let data = pattern(13, 70_000);
    f.put("/x/f.bin", &data).await.unwrap();
    let blobs = f.blob_files();

    f.faults.arm(Fault::CommitNoSpace);
    let err =
        f.fs.delete(&p("/x/f.bin"), Precondition::None, false)
            .await
            .unwrap_err();
    assert_io_error(&err, ENOSPC);
    assert_eq!(read_all(&f.fs, "/x/f.bin").await.unwrap(), data);
    assert_eq!(
        f.blob_files(),
        blobs,
        "the blob of a file not deleted stays"
    );

    f.faults.arm(Fault::CommitNoSpace);
    let err =
        f.fs.rename(&p("/x/f.bin"), &p("/y/g.bin"), false)
            .await
            .unwrap_err();
    assert_io_error(&err, ENOSPC);
    assert_eq!(read_all(&f.fs, "/x/f.bin").await.unwrap(), data);
    assert!(matches!(
        f.fs.stat(&p("/y")).await,
        Err(CoreError::NotFound)
    ));
    assert!(f.fs.fsck().await.unwrap().is_clean());

    // Disarmed: both work.
    f.fs.rename(&p("/x/f.bin"), &p("/y/g.bin"), false)
        .await
        .unwrap();
    assert_eq!(read_all(&f.fs, "/y/g.bin").await.unwrap(), data);
    f.fs.delete(&p("/y/g.bin"), Precondition::None, false)
        .await
        .unwrap();
    assert!(
        f.blob_files().is_empty(),
        "a deleted file's blob is removed"
    );
    assert!(!f.faults.armed());
}

/// Regression: a commit that failed with an I/O error was treated as not done, and its new
/// blob deleted, although the index may hold it (redb writes the new header before its
/// last sync, and recovers that commit on reopen). The record then named a deleted blob and
/// the old blob had lost its record: both versions lost.
#[tokio::test]
async fn commit_error_of_unknown_outcome_keeps_the_new_blob() {
    let f = FaultyFs::new();
    let old = pattern(14, 200_000);
    f.put("/u/f.bin", &old).await.unwrap();
    let new = pattern(15, 300_000);

    f.faults.arm(Fault::CommitLandsThenEio);
    let err = f.put("/u/f.bin", &new).await.unwrap_err();
    assert_io_error(&err, EIO);
    assert!(!f.faults.armed());

    // The commit landed: the record names the new blob, which must still be there.
    assert_eq!(read_all(&f.fs, "/u/f.bin").await.unwrap(), new);
    let rep = f.fs.fsck().await.unwrap();
    assert!(rep.errors.is_empty(), "{rep:?}");
    // The old blob (whose removal the failed answer skipped) is the orphan gc removes.
    assert_eq!(rep.orphan_blobs.len(), 1, "{rep:?}");
    f.fs.gc(0).await.unwrap();
    assert!(f.fs.fsck().await.unwrap().is_clean());
    assert_eq!(read_all(&f.fs, "/u/f.bin").await.unwrap(), new);
    assert_eq!(f.blob_files().len(), 1);
}

/// Regression: gc removed the new blob of a commit that failed with an unknown outcome
/// while the index had not been reopened since: reads of the failed database did not show
/// the record, but redb recovered it at the next write, and the file then named a deleted
/// blob (every GET a 500, the old version orphaned too). gc and fsck now settle the index
/// first (an empty batch through the committer, which reopens it).
#[tokio::test]
async fn gc_right_after_a_commit_of_unknown_outcome_keeps_its_blob() {
    let f = FaultyFs::new();
    let old = pattern(24, 200_000);
    f.put("/u/f.bin", &old).await.unwrap();
    let new = pattern(25, 300_000);
    f.faults.arm(Fault::CommitLandsAtReopen);
    let err = f.put("/u/f.bin", &new).await.unwrap_err();
    assert_io_error(&err, EIO);
    // Not visible yet: the old version reads.
    assert_eq!(read_all(&f.fs, "/u/f.bin").await.unwrap(), old);
    assert_eq!(f.blob_files().len(), 2, "the new blob stays");
    // fsck first: it settles the index too, and finds the old blob the orphan.
    let rep = f.fs.fsck().await.unwrap();
    assert!(rep.errors.is_empty(), "{rep:?}");
    assert_eq!(rep.orphan_blobs.len(), 1, "{rep:?}");
    f.fs.gc(0).await.unwrap();
    // The commit landed: the new version reads, whole.
    assert_eq!(read_all(&f.fs, "/u/f.bin").await.unwrap(), new);
    f.put("/u/g.bin", b"later").await.unwrap();
    assert_eq!(read_all(&f.fs, "/u/f.bin").await.unwrap(), new);
    assert!(f.fs.fsck().await.unwrap().is_clean());
    assert_eq!(f.blob_files().len(), 1);
}

/// Regression: a blob missing through damage (its record unchanged) was retried as if a
/// writer had replaced the file, then reported as Contention (503 "retry") instead of an
/// integrity error. Both ways of opening a file now say it is corrupt.
#[tokio::test]
async fn a_missing_blob_under_an_unchanged_record_is_corruption() {
    let f = FaultyFs::new();
    f.put("/m/f.bin", &pattern(16, 100_000)).await.unwrap();
    let blobs = f.blob_files();
    assert_eq!(blobs.len(), 1);
    std::fs::remove_file(&blobs[0]).unwrap();

    let err = f.fs.open(&p("/m/f.bin")).await.err().unwrap();
    assert!(matches!(err, CoreError::Corrupt(_)), "{err:?}");
    let found = f.fs.look_up(&p("/m/f.bin")).await.unwrap();
    let err = f.fs.open_looked_up(&found).await.err().unwrap();
    assert!(matches!(err, CoreError::Corrupt(_)), "{err:?}");

    // Replaced since the lookup: the old version is gone, not damaged.
    let found = f.fs.look_up(&p("/m/f.bin")).await.unwrap();
    f.put("/m/f.bin", &pattern(17, 100_000)).await.unwrap();
    let err = f.fs.open_looked_up(&found).await.err().unwrap();
    assert!(matches!(err, CoreError::NotFound), "{err:?}");
    assert_eq!(
        read_all(&f.fs, "/m/f.bin").await.unwrap(),
        pattern(17, 100_000)
    );
}
