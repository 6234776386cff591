//! The free-space reserve without a small disk to fill: a reserve of 1 EiB is always above the
//! free space, so this runs everywhere (the tests on a real full tmpfs, `disk_full.rs`, need
//! root to mount and skip elsewhere). Below the reserve, every request that adds data gets the
//! same 507 without byte counts, while reads, deletes, moves, logins, gc and the audit log go
//! on; the numbers reach the operator only (`efsctl health`, the server log, the metrics); and
//! a restore or a new filesystem through the server is refused.

mod common;

use std::sync::Arc;

use common::{TestServer, assert_error, audit_show, new_tempdir};
use serde_json::Value;

/// 1 EiB: more than any volume has free.
const ALWAYS_BELOW: &str = "1152921504606846976";

/// What every writer is told (`efs_server::reserve::REFUSED`): no byte counts.
const REFUSED: &str = "new data is refused: the server's disk is below its free-space reserve; \
                       ask the operator to free space; reads and deletes still work";

#[tokio::test]
async fn below_the_reserve_data_is_refused_without_numbers_and_everything_else_goes_on() {
    let dir = Arc::new(new_tempdir());
    // Set up without a reserve: the filesystem, a user, files and a backup to restore.
    let mut srv = TestServer::start_in(dir.clone(), &["--reserve-space", "0"], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    srv.put_ok("/keep.txt", &token, b"kept".to_vec()).await;
    srv.put_ok("/gone.txt", &token, b"to delete".to_vec()).await;
    srv.put_ok("/moved.txt", &token, b"to move".to_vec()).await;
    let backup = dir.path().join("backup");
    srv.efsctl_ok(&["backup", "--fs", "files", "-o", backup.to_str().unwrap()]);
    srv.stop().await;

    let mut srv = TestServer::start_in(dir.clone(), &["--reserve-space", ALWAYS_BELOW], &[]);
    assert!(
        srv.stdout()
            .contains("Free-space reserve: 1.0 EiB on the data volume"),
        "{}",
        srv.stdout()
    );
    // Logins go on.
    let token = srv.login("app", &key, None).await;

    // Every request that adds data: the same 507, saying what and what to do, no numbers.
    let r = srv.put("/new.txt", &token, b"new".to_vec()).await;
    assert_eq!(assert_error(r, 507, "insufficient_storage").await, REFUSED);
    let r = srv
        .req("POST", "/posted.txt", &token)
        .body(b"new".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(assert_error(r, 507, "insufficient_storage").await, REFUSED);
    let r = srv.req("MKCOL", "/newdir/", &token).send().await.unwrap();
    assert_eq!(assert_error(r, 507, "insufficient_storage").await, REFUSED);
    let r = srv.req("PUT", "/putdir/", &token).send().await.unwrap();
    assert_eq!(assert_error(r, 507, "insufficient_storage").await, REFUSED);
    for p in ["/new.txt", "/posted.txt"] {
        assert_eq!(srv.get(p, &token).await.0, 404, "{p}");
    }

    // Reads, deletes and moves go on.
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

    // The public health check: still ok, says uploads are refused, and gives no numbers.
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
        "{health}"
    );
    let mut shown = health.clone();
    shown.as_object_mut().unwrap().remove("version");
    assert!(
        !shown.to_string().chars().any(|c| c.is_ascii_digit()),
        "no byte counts: {health}"
    );

    // The operator sees the numbers: efsctl health warns (and exits 0), the metrics.
    let out = srv.efsctl(&["health"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert!(
        stderr.contains("warning: uploads refused: the data volume has")
            && stderr.contains("below the 1.0 EiB reserve"),
        "{stderr}"
    );
    let metrics = srv.metrics().await.text().await.unwrap();
    assert!(
        metrics.contains("efs_free_bytes{volume=\"data\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("efs_reserve_bytes"), "{metrics}");
    assert!(
        metrics.contains("efs_requests_refused_total{reason=\"reserve\"} 4"),
        "{metrics}"
    );
    // And the server log, once a minute at most however many requests were refused (stderr,
    // read apart: waited for).
    let err = srv
        .stderr_when(|e| e.contains("new data refused below the free-space reserve"))
        .await;
    let logged = err
        .matches("new data refused below the free-space reserve")
        .count();
    assert_eq!(logged, 1, "{err}");
    assert!(err.contains("below the 1.0 EiB reserve"), "{err}");

    // A restore and a new filesystem through the server are refused, and leave nothing.
    let (ok, text) = srv.efsctl_text(&[
        "restore",
        "--fs",
        "restored",
        "-i",
        backup.to_str().unwrap(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("refused below the free-space reserve: the data volume has")
            && text.contains("deletes and efsctl gc"),
        "{text}"
    );
    let out = srv.efsctl(&["create-fs", "other"]);
    assert!(!out.status.success());
    let listed = srv.efsctl_ok(&["list-fs"]);
    assert!(
        !listed.contains("restored") && !listed.contains("other"),
        "{listed}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("d/fs")).unwrap().count(),
        1
    );
    // Admin commands that free space go on.
    srv.efsctl_ok(&["gc", "--fs", "files"]);

    // Each refusal is in the audit log.
    srv.stop().await;
    let statuses = |path: &str, action: &str| -> Vec<i64> {
        audit_show(&srv, &["--path", path])
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["status"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(statuses("/new.txt", "write"), [507]);
    assert_eq!(statuses("/posted.txt", "write"), [507]);
    assert_eq!(statuses("/newdir", "mkdir"), [507]);
    assert_eq!(statuses("/putdir", "mkdir"), [507]);
    assert_eq!(statuses("/gone.txt", "delete"), [204]);
    let refused: Vec<String> = audit_show(&srv, &[])
        .iter()
        .filter(|e| e["action"] == "admin" && e["status"] == 400)
        .map(|e| e["detail"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].starts_with("restore "), "{refused:?}");
    assert!(refused[1].starts_with("create-fs "), "{refused:?}");
    assert!(
        refused.iter().all(|d| d.contains("free-space reserve")),
        "{refused:?}"
    );
}

/// Without a server, efsctl keeps the reserve too: a restore stops before its first blob,
/// and leaves no filesystem behind.
#[tokio::test]
async fn an_offline_restore_keeps_the_reserve_and_leaves_nothing() {
    let dir = Arc::new(new_tempdir());
    let mut srv = TestServer::start_in(dir.clone(), &["--reserve-space", "0"], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    srv.put_ok("/big.bin", &token, common::pattern(300_000, 1))
        .await;
    let backup = dir.path().join("backup");
    srv.efsctl_ok(&["backup", "--fs", "files", "-o", backup.to_str().unwrap()]);
    srv.stop().await;

    let (ok, text) = srv.efsctl_text(&[
        "--reserve-space",
        ALWAYS_BELOW,
        "restore",
        "--fs",
        "restored",
        "-i",
        backup.to_str().unwrap(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("stopped at the free-space reserve")
            && text.contains("below the 1.0 EiB reserve"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("d/fs")).unwrap().count(),
        1
    );
    assert!(!srv.efsctl_ok(&["list-fs"]).contains("restored"));
    // The same without the reserve (0: off) succeeds.
    let out = srv.efsctl_ok(&[
        "--reserve-space",
        "0",
        "restore",
        "--fs",
        "restored",
        "-i",
        backup.to_str().unwrap(),
    ]);
    assert!(out.contains("Restored"), "{out}");
}

/// Regression: with a re-encryption stopped at the reserve, every offline efsctl command
/// (which first finishes unfinished work) failed with the reserve's error, gc included: the
/// command that would free space could not run. It now warns and goes on.
#[tokio::test]
async fn an_unfinished_reencryption_stopped_by_the_reserve_does_not_block_offline_commands() {
    let dir = Arc::new(new_tempdir());
    // A file to rewrite, put there without the reserve.
    let mut srv = TestServer::start_in(dir.clone(), &["--reserve-space", "0"], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    srv.put_ok("/big.bin", &token, common::pattern(300_000, 2))
        .await;
    srv.stop().await;
    let mut srv = TestServer::start_in(dir.clone(), &["--reserve-space", ALWAYS_BELOW], &[]);
    let out = srv.efsctl(&["reencrypt", "--fs", "files", "--wait"]);
    assert!(!out.status.success(), "stopped at the reserve");
    srv.stop().await;

    let out = srv.efsctl(&["--reserve-space", ALWAYS_BELOW, "gc", "--fs", "files"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "gc ran: {err}");
    assert!(
        err.contains("the interrupted re-encryption of 'files' was not finished")
            && err.contains("free-space reserve")
            && err.contains("going on with the command"),
        "{err}"
    );
    // Without the reserve the same command finishes it first.
    let out = srv.efsctl(&["--reserve-space", "0", "gc", "--fs", "files"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("finished an interrupted re-encryption of 'files'"),
        "{err}"
    );
}

/// Regression: a health check below the reserve logged "new data refused" (nothing was) and
/// used up the minute of the log line a real refusal then did not get.
#[tokio::test]
async fn health_checks_below_the_reserve_log_no_refusal() {
    let dir = Arc::new(new_tempdir());
    let mut srv = TestServer::start_in(dir.clone(), &["--reserve-space", "0"], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    srv.stop().await;
    let srv = TestServer::start_in(dir.clone(), &["--reserve-space", ALWAYS_BELOW], &[]);
    let health: serde_json::Value = srv
        .client
        .get(srv.url("/_efs/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(health["uploads"].is_string(), "{health}");
    assert!(srv.efsctl(&["health"]).status.success());
    let refusals = |srv: &TestServer| {
        srv.stderr()
            .matches("new data refused below the free-space reserve")
            .count()
    };
    assert_eq!(refusals(&srv), 0, "{}", srv.stderr());
    let token = srv.login("app", &key, None).await;
    let r = srv.put("/new.txt", &token, b"new".to_vec()).await;
    assert_error(r, 507, "insufficient_storage").await;
    // Logged before the answer, read by a thread of its own: waited for.
    let err = srv
        .stderr_when(|e| e.contains("new data refused below the free-space reserve"))
        .await;
    assert_eq!(refusals(&srv), 1, "{err}");
}
