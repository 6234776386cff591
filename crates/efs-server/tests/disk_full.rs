//! A real full disk under the real server: the data dir is a small tmpfs, a file fills it,
//! and a PUT must fail with `507 insufficient_storage` (a clear JSON error, not a vague
//! 500) while the previous version stays intact; once space is freed, writes work again.
//!
//! Mounting needs root (CI runs as root). Where the sandbox cannot mount, the test says so
//! on a printed line; the same faults are then covered only at the storage trait by
//! `efs-core/tests/io_faults.rs` (always run) and by the status mapping's unit test.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{TestServer, assert_error, new_tempdir, pattern};

/// Unmounts on drop (after the server has stopped, so the mount is not busy).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Result<Mount, String> {
    std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(at)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(Mount(at.to_path_buf()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A 48 MiB tmpfs at `at`, or `None` (said on a printed line) where this sandbox cannot
/// mount: the test then checks nothing, and `covered_by` is what still covers `what`.
fn mount_or_skip(at: &Path, what: &str, covered_by: &str) -> Option<Mount> {
    match mount_tmpfs(at, "48m") {
        Ok(m) => Some(m),
        Err(e) => {
            println!(
                "disk_full: SKIPPED {what}: cannot mount a tmpfs here ({e}); covered only by {covered_by}"
            );
            None
        }
    }
}

/// Writes `path` until the disk refuses (ENOSPC); returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(28),
                    "the filler stops on ENOSPC: {e}"
                );
                break;
            }
        }
    }
    let _ = f.sync_all();
    n
}

#[tokio::test]
async fn full_disk_put_is_507_keeps_the_previous_version_and_writes_resume_without_restart() {
    let dir = Arc::new(new_tempdir());
    let data = dir.path().join("d");
    let Some(_mount) = mount_or_skip(
        &data,
        "the real full-disk check",
        "efs-core/tests/io_faults.rs",
    ) else {
        return;
    };
    let mut srv = TestServer::start_in(dir.clone(), &[], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    // The audit log on a filesystem of its own (docs/operations.md): on the full disk it
    // could not be written, and the server would refuse everything (fail closed, proven
    // in tests/audit.rs) instead of showing how the storage itself copes.
    srv.stop().await;
    let audit = data.join("system").join("audit");
    let elsewhere = dir.path().join("audit-elsewhere");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&audit)
        .arg(&elsewhere)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_dir_all(&audit).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &audit).unwrap();
    let mut srv = TestServer::start_in(dir.clone(), &[], &[]);
    let token = srv.login("app", &key, None).await;

    let big_v1 = pattern(3 << 20, 1);
    let small_v1 = pattern(200, 2);
    srv.put_ok("/keep.bin", &token, big_v1.clone()).await;
    srv.put_ok("/small.txt", &token, small_v1.clone()).await;

    // Fill the disk, then free 256 KiB: room for the index, not for a 4 MiB blob.
    let filler = data.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0, "the filler wrote something");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(filled.saturating_sub(256 * 1024)).unwrap();
    drop(f);

    let big_v2 = pattern(4 << 20, 3);
    let r = srv.put("/keep.bin", &token, big_v2.clone()).await;
    let msg = assert_error(r, 507, "insufficient_storage").await;
    assert!(msg.contains("storage is full"), "{msg}");
    // A new file, too, and nothing of it becomes visible.
    let r = srv.put("/new.bin", &token, big_v2.clone()).await;
    assert_error(r, 507, "insufficient_storage").await;
    assert_eq!(srv.get("/new.bin", &token).await.0, 404);

    // The previous versions are intact, byte-exact.
    assert_eq!(srv.get_ok("/keep.bin", &token).await, big_v1);
    assert_eq!(srv.get_ok("/small.txt", &token).await, small_v1);
    // No partial write is left in the blob store's temporary directory.
    for fs_dir in std::fs::read_dir(data.join("fs")).unwrap() {
        let tmp = fs_dir.unwrap().path().join("blobs").join("tmp");
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
        assert!(left.is_empty(), "partial writes left in {}", tmp.display());
    }

    // Space freed: the same write works, without a restart.
    std::fs::remove_file(&filler).unwrap();
    srv.put_ok("/keep.bin", &token, big_v2.clone()).await;
    assert_eq!(srv.get_ok("/keep.bin", &token).await, big_v2);

    // Completely full: a small (index-only) write fails in the index commit itself, with
    // the same clear answer, and the previous version stays.
    fill(&filler);
    let r = srv.put("/small.txt", &token, pattern(100, 4)).await;
    assert_error(r, 507, "insufficient_storage").await;
    assert_eq!(srv.get_ok("/small.txt", &token).await, small_v1);
    assert_eq!(srv.get_ok("/keep.bin", &token).await, big_v2);

    // Regression: redb refuses every write transaction after a failed commit ("Previous
    // I/O error occurred. Please close and re-open the database"), and the filesystem stayed
    // unwritable (500) until a restart. Now the index is reopened: free the space and write.
    std::fs::remove_file(&filler).unwrap();
    srv.put_ok("/small.txt", &token, pattern(100, 4)).await;
    assert_eq!(srv.get_ok("/small.txt", &token).await, pattern(100, 4));
    assert_eq!(srv.get_ok("/keep.bin", &token).await, big_v2);
    srv.put_ok("/after.bin", &token, pattern(300_000, 5)).await;
    assert!(
        srv.stderr()
            .contains("the index was reopened after an I/O error"),
        "the server says it reopened the index"
    );

    // And everything is still there after a restart.
    srv.stop().await;
    let mut srv = TestServer::start_in(dir.clone(), &[], &[]);
    let token = srv.login("app", &key, None).await;
    assert_eq!(srv.get_ok("/small.txt", &token).await, pattern(100, 4));
    assert_eq!(srv.get_ok("/keep.bin", &token).await, big_v2);
    assert_eq!(srv.get_ok("/after.bin", &token).await, pattern(300_000, 5));

    srv.stop().await;
    let out = srv.efsctl_ok(&["fsck", "--fs", "files"]);
    assert!(
        out.contains("0 errors, 0 orphan blobs, 0 orphan inline contents"),
        "fsck after the full disk: {out}"
    );
}

/// The audit log on the full disk (its default place): the server fails closed, keeps
/// refusing while the disk stays full, and serves again by itself once space is freed,
/// without a restart; what it refused meanwhile was not done, and the log verifies.
#[tokio::test]
async fn a_full_audit_disk_refuses_everything_then_recovers_by_itself_once_space_is_freed() {
    let dir = Arc::new(new_tempdir());
    let data = dir.path().join("d");
    let Some(_mount) = mount_or_skip(
        &data,
        "the audit log's full-disk recovery",
        "efs-core's audit unit tests",
    ) else {
        return;
    };
    let mut srv = TestServer::start_in(dir.clone(), &[], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    srv.put_ok("/a.txt", &token, b"before".to_vec()).await;

    let filler = data.join("filler");
    fill(&filler);
    // Each GET appends an entry; within a page or so of entries the append hits ENOSPC.
    let mut refused = false;
    for _ in 0..2000 {
        let r = srv.req("GET", "/a.txt", &token).send().await.unwrap();
        if r.status() == 503 {
            assert_error(r, 503, "audit_unavailable").await;
            refused = true;
            break;
        }
        assert_eq!(r.status(), 200);
    }
    assert!(
        refused,
        "the server never refused a request with its audit disk full"
    );
    let r = srv.put("/b.txt", &token, b"during".to_vec()).await;
    assert_error(r, 503, "audit_unavailable").await;
    let body = srv.signed_body("app", &key, None).await;
    assert_error(srv.token_request(&body).await, 503, "audit_unavailable").await;

    // The disk still full: tries to recover fail (a new audit file cannot take its
    // header), and everything stays refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !srv
        .stderr()
        .contains("the audit log still cannot be written")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed recovery logged: {}",
            srv.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!srv.stderr().contains("the audit log recovered"));
    let r = srv.req("GET", "/a.txt", &token).send().await.unwrap();
    assert_error(r, 503, "audit_unavailable").await;

    // Space freed: served again without a restart (the next try is at most 4 s away).
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = srv.req("GET", "/a.txt", &token).send().await.unwrap();
        if r.status() == 200 {
            assert_eq!(r.bytes().await.unwrap().as_ref(), b"before");
            break;
        }
        assert_error(r, 503, "audit_unavailable").await;
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not recover: {}",
            srv.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(srv.stderr().contains("the audit log recovered"));
    // The refused PUT was not done; logins and writes work again.
    assert_eq!(srv.get("/b.txt", &token).await.0, 404);
    let token = srv.login("app", &key, None).await;
    srv.put_ok("/c.txt", &token, b"after".to_vec()).await;
    assert_eq!(srv.get_ok("/c.txt", &token).await, b"after");

    // The chain runs on across the failure: the log verifies, and holds the entries of
    // the requests answered after the recovery.
    srv.stop().await;
    let out = srv.efsctl(&["audit", "verify"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "audit verify after the recovery: {text}"
    );
    // A syncer ran after the recovery: the anchor names the last entry.
    assert!(text.contains("anchor: matches the last entry"), "{text}");
    let shown = srv.efsctl_ok(&["audit", "show", "--path", "/c.txt"]);
    assert!(shown.contains("/c.txt"), "{shown}");
}
