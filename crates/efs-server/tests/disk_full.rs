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

use common::{
    AuditTail, TestServer, assert_error, audit_show, new_signing_key, new_tempdir,
    openssh_public_line, pattern,
};
use serde_json::Value;

/// Server options that turn the free-space reserve off, for the tests of ENOSPC itself.
const NO_RESERVE: &[&str] = &["--reserve-space", "0"];

/// The 507 below the reserve (`efs_server::reserve::REFUSED`).
const REFUSED: &str = "new data is refused: the server's disk is below its free-space reserve; \
                       ask the operator to free space; reads and deletes still work";

/// A streamed body (chunked: no Content-Length) fed through the returned sender; it ends
/// when the sender is dropped.
fn held_body() -> (tokio::sync::mpsc::Sender<Vec<u8>>, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

/// `/_efs/health`'s `uploads` (`None`: not refused).
async fn uploads_refused(srv: &TestServer) -> Option<String> {
    let health: Value = srv
        .client
        .get(srv.url("/_efs/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    health["uploads"].as_str().map(str::to_owned)
}

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

/// Fills the disk, then frees `free` bytes of the filler: the volume has about `free` bytes
/// left (less what the server writes meanwhile).
fn fill_leaving(filler: &Path, free: u64) {
    let filled = fill(filler);
    assert!(filled > free, "the filler wrote more than {free} bytes");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(filler)
        .unwrap();
    f.set_len(filled - free).unwrap();
    f.sync_all().unwrap();
}

/// No partial write left in the blob stores' temporary directories.
fn assert_no_partial_writes(data: &Path) {
    for fs_dir in std::fs::read_dir(data.join("fs")).unwrap() {
        let tmp = fs_dir.unwrap().path().join("blobs").join("tmp");
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
        assert!(left.is_empty(), "partial writes left in {}", tmp.display());
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

/// A server on a fresh 48 MiB tmpfs data dir (`data`, inside `dir`) started with `args`, a
/// filesystem `files`, a user `app` granted it (`key`) and its `token`; `None` (said on a
/// printed line, see [`mount_or_skip`]) where this sandbox cannot mount.
struct OnTmpfs {
    /// Declared (and so bound) before the server: dropped after it, once it has stopped.
    mount: Mount,
    srv: TestServer,
    dir: Arc<tempfile::TempDir>,
    data: PathBuf,
    key: ed25519_dalek::SigningKey,
    token: String,
}

async fn on_tmpfs(what: &str, covered_by: &str, args: &[&str]) -> Option<OnTmpfs> {
    let dir = Arc::new(new_tempdir());
    let data = dir.path().join("d");
    let mount = mount_or_skip(&data, what, covered_by)?;
    let srv = TestServer::start_in(dir.clone(), args, &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    Some(OnTmpfs {
        mount,
        srv,
        dir,
        data,
        key,
        token,
    })
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
    // Without the free-space reserve, which would refuse these writes before the disk
    // itself does: this test is about what the storage does at ENOSPC.
    let mut srv = TestServer::start_in(dir.clone(), NO_RESERVE, &[]);
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
    let mut srv = TestServer::start_in(dir.clone(), NO_RESERVE, &[]);
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
    // The server says it reopened the index (on stderr, read apart: waited for).
    srv.stderr_when(|e| e.contains("the index was reopened after an I/O error"))
        .await;

    // And everything is still there after a restart.
    srv.stop().await;
    let mut srv = TestServer::start_in(dir.clone(), NO_RESERVE, &[]);
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

/// Moves the stopped server's audit log out of the tmpfs (a symbolic link left in its
/// place), so that the full disk shows what the storage does rather than the audit log
/// failing closed (proven in its own test).
fn audit_log_elsewhere(dir: &Path, data: &Path) {
    move_audit_log(data, &dir.join("audit-elsewhere"));
}

/// Moves the stopped server's audit log (in `data`) to `elsewhere`, a symbolic link left in
/// its place.
fn move_audit_log(data: &Path, elsewhere: &Path) {
    let audit = data.join("system").join("audit");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&audit)
        .arg(elsewhere)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_dir_all(&audit).unwrap();
    std::os::unix::fs::symlink(elsewhere, &audit).unwrap();
}

/// Regression: after a failed commit redb refuses every write until the database is closed
/// and opened again, and the system database never was: after a moment of full disk, every
/// user or grant change and every mark (index generations, the audit log's head) failed
/// until a restart, and a start once the log had gone on long enough was refused ("the
/// system database is older than the audit log"). Now a write that failed on a full disk
/// has it reopened before its next use, as the indexes are.
#[tokio::test]
async fn the_system_database_takes_writes_again_once_a_full_disk_has_room() {
    let dir = Arc::new(new_tempdir());
    let data = dir.path().join("d");
    let Some(_mount) = mount_or_skip(
        &data,
        "the system database's full-disk recovery",
        "nothing (redb's refusal after a failed commit needs a real one)",
    ) else {
        return;
    };
    let mut srv = TestServer::start_in(dir.clone(), NO_RESERVE, &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    srv.stop().await;
    audit_log_elsewhere(dir.path(), &data);
    let mut srv = TestServer::start_in(dir.clone(), NO_RESERVE, &[]);
    let token = srv.login("app", &key, None).await;
    srv.put_ok("/a.txt", &token, b"before".to_vec()).await;

    // Completely full. A commit may reuse pages the file already has, so users are created
    // until one needs a new page and fails.
    let filler = data.join("filler");
    fill(&filler);
    let pubkey = dir.path().join("full.pub");
    std::fs::write(&pubkey, openssh_public_line(&new_signing_key())).unwrap();
    let pubkey = pubkey.to_str().unwrap();
    let mut refused = None;
    for i in 0..100 {
        let name = format!("u{i}");
        let (ok, text) =
            srv.efsctl_text(&["create-user", &name, "--fs", "files", "--pubkey", pubkey]);
        if !ok {
            refused = Some(text);
            break;
        }
    }
    let text = refused.expect("no system-database write failed on the full disk");
    assert!(text.contains("free space"), "{text}");

    // Space freed: users and grants are written again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let bob = srv.create_user("bob", &["files"], true);
    srv.efsctl_ok(&["grant", "bob", "--fs", "files"]);
    let bob_token = srv.login("bob", &bob, None).await;
    srv.put_ok("/b.txt", &bob_token, b"after".to_vec()).await;
    srv.stderr_when(|e| {
        e.contains("the system database was reopened after a write failed on a full disk")
    })
    .await;
    // Enough audit entries that a system database which recorded none of them would be
    // "older than the log".
    for _ in 0..30 {
        assert_eq!(srv.get_ok("/a.txt", &token).await, b"before");
    }

    // The clean stop recorded the log's head: an open that allows no lag at all finds the
    // system database current, and the server starts again.
    srv.stop().await;
    let opened = efs_core::DataDir::open(
        &data,
        &[],
        efs_core::OpenOptions {
            system_lag: Some(std::time::Duration::ZERO),
            ..Default::default()
        },
        &efs_core::keyparts::no_prompt,
    );
    match opened {
        // Closed before the server starts on it.
        Ok(open) => drop(open),
        Err(e) => panic!("the data dir is refused after the full disk: {e}"),
    }
    let srv = TestServer::start_in(dir.clone(), NO_RESERVE, &[]);
    let token = srv.login("bob", &bob, None).await;
    assert_eq!(srv.get_ok("/b.txt", &token).await, b"after");
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
    srv.stderr_when(|e| e.contains("the audit log recovered"))
        .await;
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

/// The free-space reserve with the audit log on the data disk (the default layout): below
/// it, new data is refused with a clear 507, while reads, deletes, moves, logins, the health
/// check and the audit log go on working; once space is freed, uploads work again.
#[tokio::test]
async fn below_the_reserve_uploads_are_507_while_reads_deletes_and_the_audit_log_go_on() {
    let Some(OnTmpfs {
        mount: _mount,
        mut srv,
        data,
        key,
        token,
        ..
    }) = on_tmpfs(
        "the free-space reserve",
        "reserve.rs's unit tests",
        &["--reserve-space", "8388608"],
    )
    .await
    else {
        return;
    };
    assert!(
        srv.stdout()
            .contains("Free-space reserve: 8.0 MiB on the data volume"),
        "the effective reserve is printed at start: {}",
        srv.stdout()
    );
    srv.put_ok("/keep.txt", &token, b"kept".to_vec()).await;
    srv.put_ok("/gone.txt", &token, b"to delete".to_vec()).await;
    srv.put_ok("/moved.txt", &token, b"to move".to_vec()).await;

    // 4 MiB free: below the 8 MiB reserve, with room for the log and the index.
    let filler = data.join("filler");
    fill_leaving(&filler, 4 << 20);

    let r = srv.put("/new.txt", &token, b"new".to_vec()).await;
    let msg = assert_error(r, 507, "insufficient_storage").await;
    assert_eq!(msg, REFUSED, "what and what to do, no byte counts");
    let r = srv.req("MKCOL", "/newdir/", &token).send().await.unwrap();
    assert_error(r, 507, "insufficient_storage").await;
    assert_eq!(srv.get("/new.txt", &token).await.0, 404);

    assert_eq!(srv.get_ok("/keep.txt", &token).await, b"kept");
    let r = srv.req("DELETE", "/gone.txt", &token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = srv
        .req("MOVE", "/moved.txt", &token)
        .header("destination", "/was-moved.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(srv.get_ok("/was-moved.txt", &token).await, b"to move");
    let token = srv.login("app", &key, None).await;

    let r = srv
        .client
        .get(srv.url("/_efs/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let health: Value = r.json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        health["uploads"], "refused: the server's disk is below its free-space reserve",
        "no byte counts: {health}"
    );
    let out = srv.efsctl(&["health"]);
    assert!(out.status.success(), "efsctl health still exits 0");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: uploads refused: the data volume"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Space freed: uploads work again, without a restart, and the health check is plain.
    std::fs::remove_file(&filler).unwrap();
    let r = srv.put("/new.txt", &token, b"new".to_vec()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let health: Value = srv
        .client
        .get(srv.url("/_efs/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(health.get("uploads").is_none(), "{health}");

    // The log holds every request, the refused ones with their 507.
    srv.stop().await;
    let status_of = |path: &str, action: &str| -> Vec<i64> {
        audit_show(&srv, &["--path", path])
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["status"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(status_of("/new.txt", "write"), [507, 201]);
    assert_eq!(status_of("/newdir", "mkdir"), [507]);
    assert_eq!(status_of("/gone.txt", "delete"), [204]);
    assert!(status_of("/keep.txt", "read").contains(&200));
    assert!(!srv.stderr().contains("the audit log cannot be written"));
}

/// A large upload that starts just above the reserve is stopped while its body arrives,
/// before its buffers land in the reserve: 507, nothing stored, no partial blob left. One that
/// announces a length that would take half the reserve is refused before its body is read.
///
/// Twice: with the blob writer's buffers, and with the whole upload kept in memory until its
/// commit (`--inline-max` larger than it), where nothing reaches the disk while it streams: a
/// check that did not count the bytes buffered would never stop it (it failed at the commit,
/// on the full disk, once the reserve was eaten).
#[tokio::test]
async fn a_large_upload_started_just_above_the_reserve_is_stopped_before_it_eats_it() {
    let dir = Arc::new(new_tempdir());
    let data = dir.path().join("d");
    let Some(_mount) = mount_or_skip(
        &data,
        "the free-space reserve during an upload",
        "reserve.rs's unit tests",
    ) else {
        return;
    };
    let mut srv = TestServer::start_in(dir.clone(), &["--reserve-space", "0"], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    srv.stop().await;
    let filler = data.join("filler");
    for (n, inline) in [("blob", "131072"), ("inline", "33554432")] {
        let mut srv = TestServer::start_in(
            dir.clone(),
            &["--reserve-space", "8388608", "--inline-max", inline],
            &[],
        );
        let token = srv.login("app", &key, None).await;
        srv.put_ok("/keep.txt", &token, b"kept".to_vec()).await;

        // 9 MiB free: an upload may begin (above 8 MiB), but 16 MiB would eat the reserve.
        fill_leaving(&filler, 9 << 20);
        // Announced (Content-Length): refused before its body is read.
        let r = srv.put("/big.bin", &token, pattern(16 << 20, 7)).await;
        assert_eq!(
            assert_error(r, 507, "insufficient_storage").await,
            REFUSED,
            "{n}"
        );
        // Not announced (chunked): stopped while its body arrives.
        let (tx, body) = held_body();
        let feed = tokio::spawn(async move {
            for i in 0..16 {
                if tx.send(pattern(1 << 20, 100 + i)).await.is_err() {
                    break;
                }
            }
        });
        let r = srv
            .req("PUT", "/big.bin", &token)
            .body(body)
            .send()
            .await
            .unwrap();
        let msg = assert_error(r, 507, "insufficient_storage").await;
        assert_eq!(
            msg,
            format!("the upload was stopped and nothing of it stored; {REFUSED}"),
            "{n}"
        );
        feed.abort();

        assert_eq!(srv.get("/big.bin", &token).await.0, 404, "{n}");
        assert_no_partial_writes(&data);
        // The reserve held: the audit log never failed, and the server serves on.
        assert_eq!(srv.get_ok("/keep.txt", &token).await, b"kept");
        assert!(
            !srv.stderr().contains("the audit log cannot be written"),
            "{n}"
        );
        // The operator's log says it (stderr, read apart: waited for).
        srv.stderr_when(|e| e.contains("new data refused below the free-space reserve"))
            .await;

        std::fs::remove_file(&filler).unwrap();
        srv.put_ok("/big.bin", &token, pattern(16 << 20, 7)).await;
        let r = srv.req("DELETE", "/big.bin", &token).send().await.unwrap();
        assert_eq!(r.status(), 204);
        srv.stop().await;
    }
    let statuses: Vec<i64> = audit_show(&srv, &["--path", "/big.bin"])
        .iter()
        .filter(|e| e["action"] == "write")
        .map(|e| e["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [507, 507, 201, 507, 507, 201]);
}

/// The bytes an upload holds but has not yet written count for every other request: many
/// uploads begun together just above the reserve each saw the same free space, passed, and
/// together flushed past it. Here one upload holds 10 MiB in memory (`--inline-max`: kept
/// until its commit) on a volume with 16 MiB free and an 8 MiB reserve: new data is refused
/// meanwhile (16 - 10 < 8), and accepted again once that upload is gone (its client hung up).
#[tokio::test]
async fn an_uploads_unwritten_bytes_count_for_every_other_request() {
    let Some(OnTmpfs {
        mount: _mount,
        mut srv,
        data,
        token,
        ..
    }) = on_tmpfs(
        "the count of bytes uploads have not yet written",
        "reserve.rs's unit tests",
        &["--reserve-space", "8388608", "--inline-max", "16777216"],
    )
    .await
    else {
        return;
    };
    let filler = data.join("filler");
    fill_leaving(&filler, 16 << 20);
    assert_eq!(uploads_refused(&srv).await, None);
    srv.put_ok("/before.txt", &token, b"before".to_vec()).await;

    let (tx, body) = held_body();
    let held = {
        let req = srv.req("PUT", "/held.bin", &token).body(body);
        tokio::spawn(async move { req.send().await })
    };
    for i in 0..10 {
        tx.send(pattern(1 << 20, 200 + i)).await.unwrap();
    }
    // Once the server holds them, new data is refused (the disk itself has not changed).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while uploads_refused(&srv).await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "10 MiB held by an upload were not counted against the reserve"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = srv.put("/during.txt", &token, b"during".to_vec()).await;
    assert_eq!(assert_error(r, 507, "insufficient_storage").await, REFUSED);

    // The client hangs up: its bytes leave the count, and new data is accepted again.
    held.abort();
    drop(tx);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while uploads_refused(&srv).await.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "an upload whose client hung up still counts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    srv.put_ok("/after.txt", &token, b"after".to_vec()).await;
    assert_eq!(srv.get("/held.bin", &token).await.0, 404);
    srv.stop().await;
}

/// Bytes already on the disk count once: a check during an upload counted everything the
/// upload had received as still to be written, though `statvfs` already saw what the blob
/// writer had written, and stopped an upload that fitted. 30 MiB free, a 4 MiB reserve, a
/// 20 MiB upload (10 MiB left, well above half the reserve): accepted.
#[tokio::test]
async fn a_large_upload_that_fits_above_the_reserve_is_accepted() {
    let Some(OnTmpfs {
        mount: _mount,
        mut srv,
        data,
        token,
        ..
    }) = on_tmpfs(
        "an upload that fits above the reserve",
        "reserve.rs's unit tests",
        &["--reserve-space", "4194304"],
    )
    .await
    else {
        return;
    };
    let filler = data.join("filler");
    fill_leaving(&filler, 30 << 20);
    let content = pattern(20 << 20, 11);
    let r = srv.put("/fits.bin", &token, content.clone()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // And streamed, without an announced length (checked only as it arrives).
    srv.put_ok("/fits.bin", &token, b"small again".to_vec())
        .await;
    let (tx, body) = held_body();
    let feed = {
        let content = content.clone();
        tokio::spawn(async move {
            for chunk in content.chunks(1 << 20) {
                tx.send(chunk.to_vec()).await.unwrap();
            }
        })
    };
    let r = srv
        .req("PUT", "/fits.bin", &token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    feed.await.unwrap();
    assert_eq!(srv.get_ok("/fits.bin", &token).await, content);
    srv.stop().await;
}

/// A restore through the server begun above the reserve stops before the blob that would
/// take it (it copied gigabytes into the reserve, up to a full disk), and a restore into a new
/// filesystem that stops leaves nothing behind; once space is freed it works.
#[tokio::test]
async fn a_restore_stops_at_the_reserve_and_leaves_nothing() {
    let Some(OnTmpfs {
        mount: _mount,
        mut srv,
        dir,
        data,
        key,
        token,
    }) = on_tmpfs(
        "the free-space reserve of a restore",
        "tests/reserve.rs (an offline restore below the reserve)",
        &["--reserve-space", "8388608"],
    )
    .await
    else {
        return;
    };
    let content = pattern(6 << 20, 12);
    srv.put_ok("/six.bin", &token, content.clone()).await;
    srv.create_fs("empty");
    // Outside the small volume.
    let backup = dir.path().join("backup");
    srv.efsctl_ok(&["backup", "--fs", "files", "-o", backup.to_str().unwrap()]);

    // 12 MiB free: above the reserve, but the 6 MiB blob would leave less than 8 MiB.
    let filler = data.join("filler");
    fill_leaving(&filler, 12 << 20);
    let (ok, text) = srv.efsctl_text(&[
        "restore",
        "--fs",
        "restored",
        "-i",
        backup.to_str().unwrap(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("stopped at the free-space reserve")
            && text.contains("below the 8.0 MiB reserve"),
        "{text}"
    );
    assert!(!srv.efsctl_ok(&["list-fs"]).contains("restored"));
    assert_eq!(std::fs::read_dir(data.join("fs")).unwrap().count(), 2);
    // Into an existing empty filesystem: the same (`restore_into`).
    let (ok, text) = srv.efsctl_text(&["restore", "--fs", "empty", "-i", backup.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("stopped at the free-space reserve"), "{text}");
    srv.efsctl_ok(&["grant", "app", "--fs", "empty"]);
    let empty = srv.login("app", &key, Some("empty")).await;
    assert!(srv.list_all("/", &empty, 100).await.is_empty());
    assert_eq!(uploads_refused(&srv).await, None, "the reserve is whole");

    std::fs::remove_file(&filler).unwrap();
    srv.efsctl_ok(&[
        "restore",
        "--fs",
        "restored",
        "-i",
        backup.to_str().unwrap(),
    ]);
    srv.efsctl_ok(&["grant", "app", "--fs", "restored"]);
    let token = srv.login("app", &key, Some("restored")).await;
    assert_eq!(srv.get_ok("/six.bin", &token).await, content);
    srv.stop().await;
}

/// A re-encryption (a background job that writes every file again) stops at the reserve
/// rather than fill the disk, says why, and resumes once space is freed.
#[tokio::test]
async fn a_reencryption_stops_at_the_reserve_and_resumes_once_space_is_freed() {
    let Some(OnTmpfs {
        mount: _mount,
        mut srv,
        data,
        token,
        ..
    }) = on_tmpfs(
        "the free-space reserve of a re-encryption",
        "reserve.rs's unit tests",
        &["--reserve-space", "8388608"],
    )
    .await
    else {
        return;
    };
    let content = pattern(6 << 20, 9);
    srv.put_ok("/six.bin", &token, content.clone()).await;

    // 12 MiB free: above the reserve (uploads work), but a rewritten copy of the 6 MiB file
    // would leave 6 MiB.
    let filler = data.join("filler");
    fill_leaving(&filler, 12 << 20);
    let (ok, text) = srv.efsctl_text(&["reencrypt", "--fs", "files", "--wait"]);
    assert!(!ok, "{text}");
    assert!(text.contains("free-space reserve"), "{text}");
    assert!(text.contains("below the 8.0 MiB reserve"), "{text}");
    let st: Value =
        serde_json::from_str(&srv.efsctl_ok(&["status", "--fs", "files", "--json"])).unwrap();
    assert_eq!(st[0]["reencryption"]["state"], "running", "resumable: {st}");
    // But not said to be running: it waits for the next start or reencrypt.
    let why = st[0]["reencryption_stopped"].as_str().unwrap_or_default();
    assert!(why.contains("free-space reserve"), "{st}");
    let text = srv.efsctl_ok(&["status", "--fs", "files"]);
    assert!(
        text.contains("re-encryption to term 2: stopped (")
            && text.contains("it resumes at the next start or efsctl reencrypt"),
        "{text}"
    );
    assert_eq!(srv.get_ok("/six.bin", &token).await, content);

    std::fs::remove_file(&filler).unwrap();
    let out = srv.efsctl_ok(&["reencrypt", "--fs", "files", "--wait"]);
    assert!(out.contains("resuming"), "{out}");
    let st: Value =
        serde_json::from_str(&srv.efsctl_ok(&["status", "--fs", "files", "--json"])).unwrap();
    assert_eq!(st[0]["reencryption"]["state"], "done", "{st}");
    assert_eq!(st[0]["reencryption_stopped"], Value::Null, "{st}");
    assert_eq!(srv.get_ok("/six.bin", &token).await, content);
    srv.stop().await;
}

/// Regression: the default reserve was sized from the data volume and applied to the audit
/// log's volume too, so an audit log on a small volume of its own (as docs/operations.md
/// recommends) refused every upload for good, and nothing said so at the start.
#[tokio::test]
async fn an_audit_log_on_a_small_volume_gets_a_default_reserve_of_its_own() {
    let dir = Arc::new(new_tempdir());
    let data = dir.path().join("d");
    let Some(_mount) = mount_or_skip(
        &data,
        "the per-volume default reserve",
        "reserve.rs's unit tests",
    ) else {
        return;
    };
    let mut srv = TestServer::start_in(dir.clone(), &[], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    srv.stop().await;
    // The audit log onto a 2 MiB volume of its own: the data volume's default (5 % of 48
    // MiB, 2.4 MiB) is more than it holds.
    let audit = data.join("system").join("audit");
    let small = dir.path().join("audit-small");
    let _audit_mount = mount_tmpfs(&small, "2m").expect("a second tmpfs where the first mounted");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", audit.display()))
        .arg(&small)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_dir_all(&audit).unwrap();
    std::os::unix::fs::symlink(&small, &audit).unwrap();

    let mut srv = TestServer::start_in(dir.clone(), &[], &[]);
    let out = srv.stdout();
    assert!(
        out.contains("MiB on the data volume, ") && out.contains("KiB on the audit log's volume"),
        "each volume's own reserve at the start: {out}"
    );
    assert!(!out.contains("WARNING"), "{out}");
    let token = srv.login("app", &key, None).await;
    srv.put_ok("/a.txt", &token, pattern(1000, 1)).await;
    // Larger than the audit volume's free space: content goes to the data volume only, so
    // neither an announced length nor a streamed body is held against the audit's.
    srv.put_ok("/big.bin", &token, pattern(3 << 20, 3)).await;
    let (tx, body) = held_body();
    let feed = tokio::spawn(async move {
        for i in 0..3 {
            tx.send(pattern(1 << 20, 30 + i)).await.unwrap();
        }
    });
    let r = srv
        .req("PUT", "/streamed.bin", &token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    feed.await.unwrap();
    srv.stop().await;

    // A reserve given larger than the audit volume is named at the start.
    let srv = TestServer::start_in(dir.clone(), &["--reserve-space", "4194304"], &[]);
    let out = srv.stdout();
    assert!(
        out.contains(
            "WARNING: the free-space reserve (4.0 MiB) is as large as the audit log's volume itself"
        ),
        "{out}"
    );
    let token = srv.login("app", &key, None).await;
    let r = srv.put("/b.txt", &token, pattern(1000, 2)).await;
    assert_error(r, 507, "insufficient_storage").await;
}

/// Regression: a body of no announced length was checked after each MiB only, so its last
/// part (under a MiB) could take the volume below half the reserve unchecked.
#[tokio::test]
async fn the_last_part_of_a_streamed_upload_is_checked_too() {
    let dir = Arc::new(new_tempdir());
    let data = dir.path().join("d");
    let Some(_mount) = mount_or_skip(
        &data,
        "the free-space reserve at an upload's end",
        "reserve.rs's unit tests",
    ) else {
        return;
    };
    let mut srv = TestServer::start_in(dir.clone(), NO_RESERVE, &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    srv.stop().await;
    let mut srv = TestServer::start_in(dir.clone(), &["--reserve-space", "8388608"], &[]);
    let token = srv.login("app", &key, None).await;
    // 8.25 MiB free: the upload begins; after its 4th MiB 4.25 MiB would be left (above half
    // the reserve), after its last 0.75 MiB 3.5 MiB (below).
    fill_leaving(&data.join("filler"), (8 << 20) + (256 << 10));
    let (tx, body) = held_body();
    let feed = tokio::spawn(async move {
        for i in 0..4 {
            tx.send(pattern(1 << 20, 10 + i)).await.unwrap();
        }
        tx.send(pattern(768 << 10, 20)).await.unwrap();
    });
    let r = srv
        .req("PUT", "/tail.bin", &token)
        .body(body)
        .send()
        .await
        .unwrap();
    let msg = assert_error(r, 507, "insufficient_storage").await;
    assert_eq!(
        msg,
        format!("the upload was stopped and nothing of it stored; {REFUSED}")
    );
    feed.await.unwrap();
    assert_eq!(srv.get("/tail.bin", &token).await.0, 404);
    assert_no_partial_writes(&data);
    srv.stop().await;
}

/// Blob files of every filesystem (partial writes under `tmp/` not counted).
fn blob_files(data: &Path) -> usize {
    fn walk(p: &Path, n: &mut usize) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() && e.file_name() != "tmp" {
                walk(&e.path(), n);
            } else if t.is_file() {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    for fs_dir in std::fs::read_dir(data.join("fs")).unwrap() {
        let blobs = fs_dir.unwrap().path().join("blobs");
        if blobs.is_dir() {
            walk(&blobs, &mut n);
        }
    }
    n
}

/// Regression: a restore checked the reserve blob by blob as it copied them, so one that
/// could not fit whole copied blobs (or committed records) before it stopped; it is now
/// refused before it writes anything when all of it would take the reserve.
#[tokio::test]
async fn a_restore_that_cannot_fit_whole_writes_nothing() {
    let dir = Arc::new(new_tempdir());
    let data = dir.path().join("d");
    let Some(_mount) = mount_or_skip(
        &data,
        "a restore's size checked before it begins",
        "tests/reserve.rs (an offline restore below the reserve)",
    ) else {
        return;
    };
    let mut srv = TestServer::start_in(dir.clone(), &["--reserve-space", "8388608"], &[]);
    srv.create_fs("files");
    srv.create_fs("empty");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    srv.put_ok("/one.bin", &token, pattern(3 << 20, 1)).await;
    srv.put_ok("/two.bin", &token, pattern(3 << 20, 2)).await;
    let backup = dir.path().join("backup");
    srv.efsctl_ok(&["backup", "--fs", "files", "-o", backup.to_str().unwrap()]);
    let before = blob_files(&data);

    // 13 MiB free: the first 3 MiB blob would fit above the 8 MiB reserve, both would not.
    let filler = data.join("filler");
    fill_leaving(&filler, 13 << 20);
    let (ok, text) = srv.efsctl_text(&["restore", "--fs", "empty", "-i", backup.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("free-space reserve"), "{text}");
    assert_eq!(blob_files(&data), before, "no blob copied: {text}");

    // Once space is freed the same restore runs (the filesystem is still empty).
    std::fs::remove_file(&filler).unwrap();
    srv.efsctl_ok(&["restore", "--fs", "empty", "-i", backup.to_str().unwrap()]);
    srv.efsctl_ok(&["grant", "app", "--fs", "empty"]);
    let token = srv.login("app", &key, Some("empty")).await;
    assert_eq!(srv.get_ok("/two.bin", &token).await, pattern(3 << 20, 2));
    srv.stop().await;
}

/// `rekey-starter` writes a new copy of every index before the switch (so that no index file
/// keeps the keyring sealed under the old key): where the copies would not fit it is refused
/// before anything is staged, the old key parts still open everything, and with the space
/// freed the same command goes through.
#[tokio::test]
async fn rekey_starter_is_refused_when_the_index_copies_do_not_fit() {
    let dir = Arc::new(new_tempdir());
    let data = dir.path().join("d");
    let Some(_mount) = mount_or_skip(
        &data,
        "rekey-starter's room for the index copies",
        "nothing else (the check is a statvfs)",
    ) else {
        return;
    };
    let mut srv = TestServer::start_in(dir.clone(), NO_RESERVE, &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    for i in 0..300u64 {
        srv.put_ok(&format!("/d/f{i}"), &token, pattern(3000, i))
            .await;
    }
    srv.stop().await;
    let index_bytes: u64 = std::fs::read_dir(data.join("fs"))
        .unwrap()
        .map(|e| e.unwrap().path().join("index.redb"))
        .filter(|p| p.exists())
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(index_bytes > 1 << 20, "{index_bytes}");
    let filler = data.join("filler");
    fill_leaving(&filler, index_bytes / 2);

    let new_part = dir.path().join("new.keypart");
    efs_core::keyparts::generate_part_file(&new_part).unwrap();
    let spec = format!("file:{}", new_part.display());
    let (ok, text) = srv.efsctl_text(&["rekey-starter", "--new-key-part", &spec]);
    assert!(!ok, "{text}");
    assert!(text.contains("new copy of every index"), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    let staged: Vec<_> = common::all_files(&data)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.to_string_lossy().ends_with(".rekey"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    srv.efsctl_ok(&["list-fs"]);

    std::fs::remove_file(&filler).unwrap();
    let out = srv.efsctl_ok(&["rekey-starter", "--new-key-part", &spec]);
    assert!(out.contains("only the new key parts open"), "{out}");
    let srv = TestServer::start_in(dir.clone(), &["--key-part", &spec], &[]);
    let token = srv.login("app", &key, None).await;
    assert_eq!(srv.get_ok("/d/f7", &token).await, pattern(3000, 7));
}

/// Regression: with the reserve off, `/_efs/health` answered `ok` on a full disk until a
/// request had found the audit log failed (a load balancer kept sending traffic to a server
/// about to refuse everything). A volume under the health floor (1 MiB) is now `507`; once
/// space is freed, `ok` again.
#[tokio::test]
async fn health_is_not_ok_on_a_full_disk_with_the_reserve_off() {
    let Some(OnTmpfs {
        mount: _mount,
        srv,
        data,
        ..
    }) = on_tmpfs(
        "the health check on a full disk",
        "reserve.rs's unit tests",
        NO_RESERVE,
    )
    .await
    else {
        return;
    };
    let health = || srv.client.get(srv.url("/_efs/health")).send();
    assert_eq!(health().await.unwrap().status(), 200);
    let filler = data.join("filler");
    fill(&filler);
    let r = health().await.unwrap();
    let msg = assert_error(r, 507, "insufficient_storage").await;
    assert!(
        msg.contains("the server's data volume is full (under 1.0 MiB free)"),
        "{msg}"
    );
    assert!(msg.contains("free space"), "{msg}");
    // Just over the floor: ok (the check is the floor, not the reserve, which is off).
    std::fs::remove_file(&filler).unwrap();
    fill_leaving(&filler, 4 << 20);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = health().await.unwrap();
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["status"], "ok", "{v}");
            assert!(v.get("uploads").is_none_or(Value::is_null), "{v}");
            break;
        }
        // The audit log may have failed while the disk was full: it recovers by itself.
        assert!(
            std::time::Instant::now() < deadline,
            "health stayed {} with space freed: {}",
            r.status(),
            srv.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Regression: a write whose commit landed but whose audit entry then failed (the log's own
/// volume full at that moment) was answered with the plain refusal, "nothing is served", as
/// if it had not been done; the client could only guess. It now says the change was made,
/// and it is there once the log works again. The data dir has room; only the audit log's
/// volume (a tmpfs) is full.
#[tokio::test]
async fn a_change_made_before_its_audit_entry_failed_says_so() {
    let dir = Arc::new(new_tempdir());
    let auditfs = dir.path().join("auditfs");
    let Some(_mount) = mount_or_skip(
        &auditfs,
        "a change made before its audit entry failed",
        "nothing else",
    ) else {
        return;
    };
    let mut srv = TestServer::start_in(dir.clone(), &[], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    srv.stop().await;
    move_audit_log(&srv.data, &auditfs.join("audit"));
    // The reserve off: with it, uploads are refused (507) before the log's volume is full.
    let srv = TestServer::start_in(dir.clone(), NO_RESERVE, &[]);
    let token = srv.login("app", &key, None).await;
    let filler = auditfs.join("filler");
    let audit = auditfs.join("audit");

    // Rounds until a PUT's own entry is the write that fails. Before filling the volume,
    // PUTs bring the audit file's last page to less room than one PUT's entry, and the
    // anchor is left naming the last of them: nothing is then written until the next PUT,
    // whose entry needs a page the full volume does not have. Should the log fail first
    // anyway (the anchor, after an entry that still fit), the next PUT finds it failed and
    // is refused before doing anything (the plain 503, also right): it must not be stored;
    // the volume is freed, the log recovers by itself, and the next round begins.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let mut i = 0;
    let mut rounds = 0;
    let (path, i, msg) = loop {
        rounds += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "in {} rounds (180 s) no PUT's own entry was the one that failed",
            rounds - 1
        );
        let mut entry = None;
        for _ in 0..64 {
            let before = AuditTail::read(&audit);
            srv.put_ok(&format!("/p{i}"), &token, format!("body {i}").into_bytes())
                .await;
            i += 1;
            let after = AuditTail::read(&audit);
            if after.file == before.file {
                entry = Some(after.size - before.size);
            }
            if entry.is_some_and(|e| after.room() + 16 < e) {
                break;
            }
        }
        let anchored = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !AuditTail::read(&audit).anchored() {
            assert!(
                std::time::Instant::now() < anchored,
                "the anchor never named the last entry: {:?}",
                AuditTail::read(&audit)
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        fill(&filler);
        let mut answered = None;
        for _ in 0..2000 {
            let path = format!("/p{i}");
            let r = srv
                .put(&path, &token, format!("body {i}").into_bytes())
                .await;
            if r.status() == 503 {
                answered = Some((path, i, assert_error(r, 503, "audit_unavailable").await));
                break;
            }
            assert!(r.status().is_success(), "{}", r.status());
            i += 1;
        }
        let (path, at, msg) = answered.expect("the audit log's volume never refused an entry");
        i += 1;
        if msg.contains("the change was made") {
            eprintln!("round {rounds}: {path} failed on its own entry");
            break (path, at, msg);
        }
        eprintln!("round {rounds}: the log failed before {path}");
        std::fs::remove_file(&filler).unwrap();
        // The server's tries to recover back off, up to one a minute.
        let recovered = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let (status, _) = srv.get(&path, &token).await;
            if status != 503 {
                assert_eq!(status, 404, "{path} was refused plainly ({msg}) and stored");
                break;
            }
            assert!(
                std::time::Instant::now() < recovered,
                "the server did not recover: {}",
                srv.stderr()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    assert!(msg.contains("the change was made"), "{msg}");
    // The next one is refused before anything is done, and says so.
    let r = srv.put("/after", &token, b"after".to_vec()).await;
    let plain = assert_error(r, 503, "audit_unavailable").await;
    assert!(!plain.contains("the change was made"), "{plain}");

    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let r = srv.req("GET", &path, &token).send().await.unwrap();
        if r.status() == 200 {
            assert_eq!(
                r.bytes().await.unwrap().as_ref(),
                format!("body {i}").as_bytes()
            );
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not recover: {}",
            srv.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(srv.get("/after", &token).await.0, 404);
}
