//! The audit log end to end, as an operator uses it from the README: a real server, real
//! logins, file requests and efsctl commands; `efsctl audit show` answers "who read this
//! file, and when"; `efsctl audit verify` is clean, then names the entry a person edited by
//! hand; the log on disk shows no path, user or address; and when the log cannot be written
//! the server refuses to serve (fail closed).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn audit_files(data: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(data.join("system/audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_read_this_file_and_a_hand_edit_named_by_verify() {
    let s = session(&[]).await;
    let srv = s.srv;
    let app = s.token;
    let nurse_key = srv.create_user("nurse-kim", &["files"], true);

    // A failed login: right user, wrong key.
    let body = srv.signed_body("app", &new_signing_key(), None).await;
    assert_eq!(srv.token_request(&body).await.status(), 401);
    let nurse = srv.login("nurse-kim", &nurse_key, None).await;
    // A malformed user name: refused (400) and recorded, without the name.
    let mut bad = body.clone();
    bad["user"] = json!("no spaces allowed");
    assert_eq!(srv.token_request(&bad).await.status(), 400);

    let file = "/patients/173/prescription.pdf";
    srv.put_ok(file, &app, b"dose: 2x daily".to_vec()).await;
    assert_eq!(srv.get_ok(file, &app).await, b"dose: 2x daily");
    assert_eq!(srv.get_ok(file, &nurse).await, b"dose: 2x daily");
    // The read-only nurse may not write: refused, and recorded as refused.
    assert_eq!(srv.put(file, &nurse, b"x".to_vec()).await.status(), 403);
    let listing = srv.list_all("/patients/173/", &app, 100).await;
    assert_eq!(listing.len(), 1);
    let r = srv
        .req("POST", "/_efs/move", &app)
        .json(&json!({"from": file, "to": "/patients/173/rx.pdf"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = srv
        .req("DELETE", "/patients/173/rx.pdf", &app)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    srv.efsctl_ok(&["grant", "nurse-kim", "--fs", "files", "--read-only"]);

    // Who read this file, and when (through the admin socket: the server runs).
    let reads: Vec<Value> = audit_show(&srv, &["--path", file])
        .into_iter()
        .filter(|e| e["action"] == "read")
        .collect();
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert_eq!(reads[0]["user"], "app");
    assert_eq!(reads[1]["user"], "nurse-kim");
    for r in &reads {
        assert_eq!(r["status"], 200);
        assert_eq!(r["fs"], "files");
        assert_eq!(r["client"], "127.0.0.1");
        let t = r["time"].as_str().unwrap();
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{t}: {e}"));
    }
    // Everything that touched the file, in order: write, 2 reads, refused write, move, and
    // the delete under the name it moved to (followed through the move).
    let all: Vec<(String, String, u64)> = audit_show(&srv, &["--path", file])
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["user"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("write", "app", 201),
        ("read", "app", 200),
        ("read", "nurse-kim", 200),
        ("write", "nurse-kim", 403),
        ("move", "app", 200),
        ("delete", "app", 204),
    ];
    let want: Vec<(String, String, u64)> = want
        .iter()
        .map(|(a, u, s)| (a.to_string(), u.to_string(), *s))
        .collect();
    assert_eq!(all, want);
    // The directory prefix finds the listing and the delete of the moved file too.
    let under: Vec<String> = audit_show(&srv, &["--path", "/patients/173/"])
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(under.contains(&"list".to_owned()) && under.contains(&"delete".to_owned()));
    // Logins, failed and not, with the reason; by user and time.
    let app_entries = audit_show(&srv, &["--user", "app", "--since", "1h"]);
    let failed: Vec<&Value> = app_entries
        .iter()
        .filter(|e| e["action"] == "login-failed")
        .collect();
    assert_eq!(failed.len(), 1, "{app_entries:?}");
    assert_eq!(failed[0]["status"], 401);
    assert!(failed[0]["detail"].as_str().is_some());
    assert!(app_entries.iter().any(|e| e["action"] == "login-ok"));
    assert!(audit_show(&srv, &["--user", "app", "--until", "1h"]).is_empty());
    let malformed: Vec<Value> = audit_show(&srv, &[])
        .into_iter()
        .filter(|e| e["detail"] == "malformed user name")
        .collect();
    assert_eq!(malformed.len(), 1, "{malformed:?}");
    assert_eq!(malformed[0]["action"], "login-failed");
    assert_eq!(malformed[0]["status"], 400);
    assert_eq!(malformed[0]["user"], Value::Null);
    // Admin commands, with the operator's account and how it came.
    let admin: Vec<Value> = audit_show(&srv, &[])
        .into_iter()
        .filter(|e| e["action"] == "admin")
        .collect();
    assert!(admin.iter().any(|e| {
        e["detail"].as_str().unwrap().starts_with("create-user")
            && e["client"] == "admin-socket"
            && e["user"].as_str().unwrap().starts_with("uid:")
    }));
    // A user's key is named by its fingerprint, as ssh-keygen -lf prints it.
    let nurse_fp = efs_server::auth::fingerprint_sha256(&nurse_key.verifying_key());
    assert!(
        admin.iter().any(|e| {
            let d = e["detail"].as_str().unwrap();
            d.starts_with("create-user")
                && d.contains("\"nurse-kim\"")
                && d.contains(&format!("\"public_key_sha256\":\"{nurse_fp}\""))
        }),
        "{admin:?}"
    );
    assert!(
        admin
            .iter()
            .any(|e| e["detail"].as_str().unwrap().starts_with("grant"))
    );
    let text = srv.efsctl_ok(&["audit", "show", "--path", file]);
    assert!(text.contains("nurse-kim  read  files  /patients/173/prescription.pdf  200"));

    let v = srv.efsctl_ok(&["audit", "verify"]);
    assert!(v.starts_with("audit verify: OK"), "{v}");

    // Nothing readable on disk: no path, name, user or address.
    for f in audit_files(&srv.data) {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for needle in ["patients", "prescription", "nurse-kim", "127.0.0.1"] {
            assert!(!text.contains(needle), "{needle} in {}", f.display());
        }
    }

    // With the server stopped, efsctl reads the log itself.
    let mut srv = srv;
    srv.stop().await;
    let v = srv.efsctl_ok(&["audit", "verify", "--json"]);
    let rep: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(rep["problem"], Value::Null, "{rep}");
    assert_eq!(rep["anchor"]["state"], "match", "{rep}");
    let head = format!("{}:{}", rep["head_seq"], rep["head_mac"].as_str().unwrap());
    assert_eq!(
        audit_show(&srv, &["--path", file, "--user", "nurse-kim"]).len(),
        2
    );

    // A person edits one byte in the body of a middle entry of the first file.
    let first = audit_files(&srv.data)
        .into_iter()
        .find(|p| p.ends_with("audit-000001.log"))
        .unwrap();
    let text = std::fs::read_to_string(&first).unwrap();
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    let mid = lines.len() / 2;
    let seq: u64 = lines[mid].split(' ').next().unwrap().parse().unwrap();
    let fields: Vec<&str> = lines[mid].split(' ').collect();
    let mut body = fields[2].as_bytes().to_vec();
    body[5] = if body[5] == b'Q' { b'R' } else { b'Q' };
    lines[mid] = format!(
        "{} {} {} {}",
        fields[0],
        fields[1],
        String::from_utf8(body).unwrap(),
        fields[3]
    );
    std::fs::write(&first, lines.concat()).unwrap();
    let out = srv.efsctl(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let want = format!(
        "entry {seq} (file audit-000001.log line {}): MAC mismatch — edited, inserted or deleted from here on",
        mid + 1
    );
    assert!(stdout.contains(&want), "{stdout}\nwanted: {want}");
    // The head of a failed log is not offered as one to keep.
    assert!(
        stdout.contains("do not keep it as a trusted head") && !stdout.contains("keep it off"),
        "{stdout}"
    );
    // `show` warns that from there on nothing can be trusted (exit 3 too).
    let out = srv.efsctl(&["audit", "show", "--user", "nurse-kim"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("chain breaks at entry"));
    // A head kept from before: named as missing, since the log was rewritten.
    let out = srv.efsctl(&["audit", "verify", "--expect-head", &head]);
    assert_eq!(out.status.code(), Some(3));
}

/// `efsctl health` (the container's health check, every 30 s) answers "ok" through the
/// admin socket and adds nothing to the audit log, while other admin commands are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_is_not_recorded() {
    let s = session(&[]).await;
    let srv = s.srv;
    let admin = |cmd: &str| {
        audit_show(&srv, &[])
            .iter()
            .filter(|e| e["detail"].as_str().is_some_and(|d| d.starts_with(cmd)))
            .count()
    };
    for _ in 0..3 {
        assert_eq!(srv.efsctl_ok(&["health"]).trim(), "ok");
    }
    srv.efsctl_ok(&["list-fs"]);
    // Entries reach `audit show` once fsynced (every 5 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while admin("list-fs") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "list-fs never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin("health"), 0, "health checks recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_audit_log_fails_closed() {
    let s = session(&[]).await;
    let srv = s.srv;
    let token = s.token;
    srv.put_ok("/a.txt", &token, b"before".to_vec()).await;
    assert_eq!(srv.get_ok("/a.txt", &token).await, b"before");

    // The audit directory swapped for a plain file (root ignores permissions, so a chmod
    // would prove nothing): the next fsync group cannot write the HEAD anchor.
    let dir = srv.data.join("system/audit");
    std::fs::rename(&dir, srv.data.join("system/audit.moved")).unwrap();
    std::fs::write(&dir, b"in the way").unwrap();

    // The syncer writes the anchor within 200 ms of an entry: waited for, 30 s at most (a
    // loaded machine runs it late).
    let mut refused = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let r = srv.req("GET", "/a.txt", &token).send().await.unwrap();
        if r.status() == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = refused.expect("the server never refused a request with an unwritable audit log");
    assert_error(r, 503, "audit_unavailable").await;
    // From then on nothing is served, written, granted or logged in, and health says so.
    let r = srv.req("GET", "/a.txt", &token).send().await.unwrap();
    assert_error(r, 503, "audit_unavailable").await;
    let r = srv.put("/b.txt", &token, b"after".to_vec()).await;
    assert_error(r, 503, "audit_unavailable").await;
    let body = srv.signed_body("app", &s.key, None).await;
    assert_error(srv.token_request(&body).await, 503, "audit_unavailable").await;
    let r = srv
        .client
        .get(srv.url("/_efs/health"))
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "audit_unavailable").await;
    let out = srv.efsctl(&["create-fs", "other"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit log cannot be written"));
    // The container health check fails too.
    let out = srv.efsctl(&["health"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot serve") && err.contains("audit log cannot be written"),
        "{err}"
    );
    // The refused write did not happen: after a restart on a repaired log, /b.txt is absent.
    let mut srv = srv;
    srv.stop().await;
    let out = srv.efsctl(&["health"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no efs-server is running"), "{err}");
    // Nor does a server start without its audit log.
    let f = TestServer::try_start_in(srv.dir.clone(), &[], &[])
        .err()
        .expect("a server started with its audit directory replaced by a file");
    assert!(
        f.stderr.contains("cannot open the audit log"),
        "{}",
        f.stderr
    );
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(srv.data.join("system/audit.moved"), &dir).unwrap();
    let srv2 = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let token = srv2.login("app", &s.key, None).await;
    assert_eq!(srv2.get("/b.txt", &token).await.0, 404);
    assert_eq!(srv2.get_ok("/a.txt", &token).await, b"before");
}

/// Regression: the audit log was checked only when an upload began; one that failed while
/// the body arrived let the change land and answered 503 (its entry could not be written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_body_outlasts_the_audit_log_does_not_land() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    let size = 1 << 20;
    let head = format!(
        "PUT /slow.bin HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {}\r\nContent-Length: {size}\r\n\r\n",
        s.token
    );
    let (addr, cert) = (srv.addr, srv.cert_pem.clone());
    let (started, begun) = tokio::sync::oneshot::channel();
    // The body's end is held back until the log has failed (it is sent then).
    let (end, end_at) = tokio::sync::oneshot::channel();
    let upload = tokio::spawn(async move {
        upload_ending_at(addr, &cert, head, size, end_at, Some(started)).await
    });
    begun.await.expect("the upload began");
    let dir = srv.data.join("system/audit");
    std::fs::rename(&dir, srv.data.join("system/audit.moved")).unwrap();
    std::fs::write(&dir, b"in the way").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while srv.get("/other", &s.token).await.0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "the audit log never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !upload.is_finished(),
        "the upload ended before the log failed: the test proves nothing"
    );
    end.send(tokio::time::Instant::now()).unwrap();
    assert_eq!(upload.await.unwrap(), Some(503));
    srv.stop().await;
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(srv.data.join("system/audit.moved"), &dir).unwrap();
    let srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let token = srv.login("app", &s.key, None).await;
    assert_eq!(
        srv.get("/slow.bin", &token).await.0,
        404,
        "the refused upload landed"
    );
}

/// A client that hangs up while its write commits cannot change a file unrecorded: the
/// server finishes the request, and every file a hung-up DELETE removed is named by a
/// delete entry. (Before, hyper dropped the handler when the connection closed: the index
/// still committed the delete, and the entry, written after the commit, never was.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cannot_change_a_file_unrecorded() {
    let s = session(&[]).await;
    let srv = s.srv;
    let token = s.token;
    const N: usize = 32;
    // Rounds until some hung-up DELETE was served: on busy cores hyper may drop all of a
    // round before serving any (nothing changed then, and nothing needs recording).
    let mut gone: Vec<String> = Vec::new();
    for round in 0..5 {
        for i in 0..N {
            srv.put_ok(&format!("/gone/r{round}-f{i}"), &token, b"x".to_vec())
                .await;
        }
        for i in 0..N {
            // Hang up after 0 to 4 ms: some while the delete is being committed.
            let req = format!(
                "DELETE /gone/r{round}-f{i} HTTP/1.1\r\nHost: localhost\r\n\
                 Authorization: Bearer {token}\r\n\r\n"
            );
            send_and_hang_up(&srv, req, Duration::from_micros((i as u64 % 16) * 250)).await;
        }
        // Whatever the server still does finishes well within this.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let left: Vec<String> = srv
            .list_all("/gone/", &token, 1000)
            .await
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        gone.extend(
            (0..N)
                .map(|i| format!("r{round}-f{i}"))
                .filter(|n| !left.contains(n)),
        );
        if !gone.is_empty() {
            break;
        }
    }
    assert!(!gone.is_empty(), "no hung-up DELETE removed its file");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for name in &gone {
        let path = format!("/gone/{name}");
        loop {
            let deletes = audit_show(&srv, &["--path", &path])
                .into_iter()
                .filter(|e| e["action"] == "delete")
                .count();
            if deletes == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} was deleted with no audit entry ({} of {N} deleted)",
                gone.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The same for uploads, which run in their connection's task: a PUT whose client hangs up
/// while it commits writes its own entry when dropped (status 499, `client_closed`), so
/// every file that exists afterwards has an entry for its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_up_upload_that_landed_is_recorded() {
    let s = session(&[]).await;
    let srv = s.srv;
    let token = s.token;
    const N: usize = 32;
    let mut landed: Vec<String> = Vec::new();
    for round in 0..5 {
        for i in 0..N {
            let req = format!(
                "PUT /up/r{round}-f{i} HTTP/1.1\r\nHost: localhost\r\n\
                 Authorization: Bearer {token}\r\nContent-Length: 5\r\n\r\nhello"
            );
            send_and_hang_up(&srv, req, Duration::from_micros((i as u64 % 16) * 250)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, _) = srv.get("/up/", &token).await;
        if status == 200 {
            landed = srv
                .list_all("/up/", &token, 1000)
                .await
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect();
        }
        if !landed.is_empty() {
            break;
        }
    }
    assert!(!landed.is_empty(), "no hung-up PUT landed");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for name in &landed {
        let path = format!("/up/{name}");
        loop {
            let writes: Vec<Value> = audit_show(&srv, &["--path", &path])
                .into_iter()
                .filter(|e| e["action"] == "write")
                .collect();
            if let Some(w) = writes.first() {
                let st = w["status"].as_u64().unwrap();
                assert!(st == 201 || st == 499, "{path}: {w}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} was written with no audit entry ({} landed)",
                landed.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A shutdown finishes the changes of clients that hung up, and records them, before it
/// closes the audit log: SIGTERM right after a burst of hung-up DELETEs, then, on the
/// restarted server, every file that is gone has its delete entry. (Without the shutdown's
/// wait for those detached tasks, the runtime dropped them between the commit and the
/// entry; it failed in 5 of 6 runs.) Twelve rounds, SIGTERM 0 to 8 ms after the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_finishes_and_records_hung_up_changes() {
    const N: usize = 24;
    let mut landed = 0;
    for round in 0..12u64 {
        let s = session(&[]).await;
        let mut srv = s.srv;
        for i in 0..N {
            srv.put_ok(&format!("/sd/f{i}"), &s.token, b"x".to_vec())
                .await;
        }
        let mut burst = Vec::new();
        let (written_tx, mut written) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..N {
            let req = format!(
                "DELETE /sd/f{i} HTTP/1.1\r\nHost: localhost\r\n\
                 Authorization: Bearer {}\r\n\r\n",
                s.token
            );
            let (addr, cert) = (srv.addr, srv.cert_pem.clone());
            let written_tx = written_tx.clone();
            burst.push(tokio::spawn(async move {
                hang_up_at(
                    addr,
                    &cert,
                    req,
                    Duration::from_micros((i as u64 % 8) * 250),
                    Some(written_tx),
                )
                .await
            }));
        }
        // SIGTERM goes 0 to 8 ms after the first request is out (not before: on a busy
        // machine the handshakes could take all the rounds' time, and nothing would race).
        let first = tokio::time::timeout(Duration::from_secs(30), written.recv()).await;
        assert!(matches!(first, Ok(Some(()))), "no DELETE was sent");
        tokio::time::sleep(Duration::from_millis(round % 6 * 8 / 5)).await;
        let status = srv.stop().await.expect("the server was running");
        assert!(status.success(), "efs-server exited with {status:?}");
        for b in burst {
            let _ = b.await;
        }
        let srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
        let token = srv.login("app", &s.key, None).await;
        let left: Vec<String> = srv
            .list_all("/sd/", &token, 1000)
            .await
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        for name in (0..N)
            .map(|i| format!("f{i}"))
            .filter(|n| !left.contains(n))
        {
            landed += 1;
            let path = format!("/sd/{name}");
            let deletes = audit_show(&srv, &["--path", &path])
                .into_iter()
                .filter(|e| e["action"] == "delete")
                .count();
            assert_eq!(
                deletes, 1,
                "{path} was deleted across a shutdown with no audit entry (round {round})"
            );
        }
        eprintln!("round {round}: {} of {N} deleted", N - left.len());
    }
    assert!(landed > 0, "no DELETE sent before SIGTERM landed");
}

/// Regression: once the shutdown timeout had passed, the audit log closed while commits
/// issued just before it still ran; they landed with no audit entry (or were answered 503
/// after they landed). Uploads whose bodies end around the timeout must now either land and
/// be recorded, or be refused and not land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_around_the_shutdown_timeout_land_recorded_or_not_at_all() {
    const N: usize = 24;
    const SIZE: usize = 4 << 20;
    let (mut landed, mut refused, mut absent) = (0, 0, 0);
    for round in 0..4 {
        let s = session(&["--shutdown-timeout", "3"]).await;
        let mut srv = s.srv;
        let mut uploads = Vec::new();
        let mut begun = Vec::new();
        let mut ends = Vec::new();
        for i in 0..N {
            let head = format!(
                "PUT /late/f{i} HTTP/1.1\r\nHost: localhost\r\n\
                 Authorization: Bearer {}\r\nContent-Length: {SIZE}\r\n\r\n",
                s.token
            );
            let (addr, cert) = (srv.addr, srv.cert_pem.clone());
            let (started, started_rx) = tokio::sync::oneshot::channel();
            let (end, end_at) = tokio::sync::oneshot::channel();
            uploads.push(tokio::spawn(async move {
                upload_ending_at(addr, &cert, head, SIZE, end_at, Some(started)).await
            }));
            begun.push(started_rx);
            ends.push(end);
        }
        // SIGTERM once every upload has begun (its handler reads the body, all of it but
        // the last 64 KiB sent): none is a connection the shutdown would just close.
        for (i, b) in begun.into_iter().enumerate() {
            let r = tokio::time::timeout(Duration::from_secs(60), b).await;
            assert!(matches!(r, Ok(Ok(()))), "upload {i} did not begin: {r:?}");
        }
        let sigterm_at = tokio::time::Instant::now();
        for (i, end) in ends.into_iter().enumerate() {
            // The bodies' last bytes go out around the 3 s timeout: most 2.60 … 3.36 s after
            // SIGTERM, 40 ms apart, where some are committing as the timeout ends; the first
            // two well before it (1.5 s, 2 s: they land), the last two well after (4 s,
            // 4.5 s: they are cut), whatever the server's delay in seeing SIGTERM.
            let ms = match i {
                0 => 1500,
                1 => 2000,
                i if i + 2 >= N => 4000 + 500 * (i + 2 - N) as u64,
                i => 2600 + 40 * (i - 2) as u64,
            };
            let _ = end.send(sigterm_at + Duration::from_millis(ms));
        }
        let status = srv.stop().await.expect("the server was running");
        assert!(status.success(), "efs-server exited with {status:?}");
        let mut answers = Vec::new();
        for u in uploads {
            answers.push(u.await.unwrap());
        }
        let srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
        let token = srv.login("app", &s.key, None).await;
        let present: Vec<String> = srv
            .list_all("/late/", &token, 1000)
            .await
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        for (i, answer) in answers.iter().enumerate() {
            let name = format!("f{i}");
            let path = format!("/late/{name}");
            let writes = audit_show(&srv, &["--path", &path])
                .into_iter()
                .filter(|e| e["action"] == "write")
                .count();
            if present.contains(&name) {
                landed += 1;
                assert_eq!(
                    writes, 1,
                    "{path} landed with {writes} audit entries (answer {answer:?}, round {round})"
                );
                assert_ne!(answer, &Some(503), "{path} landed but was answered 503");
            } else {
                absent += 1;
                assert!(
                    !matches!(answer, Some(200 | 201)),
                    "{path} was acknowledged ({answer:?}) and is gone"
                );
                if *answer == Some(503) {
                    refused += 1;
                }
            }
        }
        eprintln!(
            "round {round}: {landed} landed, {absent} did not ({refused} answered 503) so far"
        );
    }
    assert!(landed > 0, "no upload landed: the test missed the timeout");
    assert!(
        absent > 0,
        "every upload landed: the test missed the timeout"
    );
}

/// Past the shutdown timeout no change begins: a move whose JSON body and an upload whose
/// body arrive then are refused with 503 `unavailable`, recorded, and not carried out (they
/// were carried out, and the audit log closed under them). A restore held inside the
/// server (its manifest a FIFO) keeps the shutdown in its last wait meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_shutdown_timeout_no_change_begins() {
    use std::io::Write;
    let s = session(&["--shutdown-timeout", "1"]).await;
    let mut srv = s.srv;
    srv.put_ok("/a.txt", &s.token, b"a".to_vec()).await;
    let (restore, mut writer) = restore_held_on_a_fifo(&srv).await;
    // Two requests in flight, their bodies held back until after the timeout: sent once
    // both heads are in and SIGTERM has gone, 2 s later (the timeout is 1 s).
    let (mv_sent, mv_head) = tokio::sync::oneshot::channel();
    let (put_sent, put_head) = tokio::sync::oneshot::channel();
    let (mv_go, mv_when) = tokio::sync::oneshot::channel();
    let (put_go, put_when) = tokio::sync::oneshot::channel();
    let body = br#"{"from":"/a.txt","to":"/b.txt"}"#;
    let head = format!(
        "POST /_efs/move HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        s.token,
        body.len()
    );
    let (addr, cert) = (srv.addr, srv.cert_pem.clone());
    let mv = tokio::spawn(async move {
        send_late(
            addr,
            &cert,
            head.into_bytes(),
            mv_sent,
            body.to_vec(),
            mv_when,
        )
        .await
    });
    let head = format!(
        "PUT /c.txt HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 2\r\nExpect: 100-continue\r\n\r\nc",
        s.token
    );
    let (addr, cert) = (srv.addr, srv.cert_pem.clone());
    let put = tokio::spawn(async move {
        send_late(
            addr,
            &cert,
            head.into_bytes(),
            put_sent,
            b"c".to_vec(),
            put_when,
        )
        .await
    });
    // Both requests are in flight (their handlers asked for the bodies): a connection whose
    // request has not begun would be closed by the shutdown.
    mv_head.await.unwrap();
    put_head.await.unwrap();
    srv.terminate();
    let late = tokio::time::Instant::now() + Duration::from_secs(2);
    mv_go.send(late).unwrap();
    put_go.send(late).unwrap();
    for (what, answer) in [("move", mv.await.unwrap()), ("upload", put.await.unwrap())] {
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("\"unavailable\""),
            "{what}: {answer}"
        );
    }
    writer.write_all(b"not a manifest").unwrap();
    drop(writer);
    let _ = restore.wait_with_output().unwrap();
    let status = srv.stop().await.expect("the server was running");
    assert!(status.success(), "{status:?}\n{}", srv.stderr());
    let srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let token = srv.login("app", &s.key, None).await;
    assert_eq!(
        srv.get_ok("/a.txt", &token).await,
        b"a",
        "the move happened"
    );
    assert_eq!(srv.get("/b.txt", &token).await.0, 404);
    assert_eq!(srv.get("/c.txt", &token).await.0, 404, "the upload landed");
    for (path, action) in [("/a.txt", "move"), ("/c.txt", "write")] {
        let statuses: Vec<u64> = audit_show(&srv, &["--path", path])
            .into_iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["status"].as_u64().unwrap())
            .collect();
        assert_eq!(statuses, [503], "{path}");
    }
}

/// Regression: an upload whose body was still arriving when the shutdown timeout ended was
/// cut with its connection: the client read a reset or an EOF, no answer. Now it is answered
/// 503 with `Retry-After`, saying that nothing of it was stored, over HTTP/1.1 (a raw client
/// still sending) and HTTP/2 (reqwest); nothing of it is stored, after a restart either, no
/// partial write is left, and the refusal is in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_still_arriving_at_the_shutdown_timeout_is_answered_503_and_not_stored() {
    let s = session(&["--shutdown-timeout", "1"]).await;
    let mut srv = s.srv;
    const SIZE: usize = 8 << 20;
    // Each upload tells once the server's handler reads its body: SIGTERM goes only then
    // (a connection whose request has not begun would just be closed by the shutdown).
    let (begun_tx, mut begun) = tokio::sync::mpsc::unbounded_channel::<&str>();
    // HTTP/1.1: the head (`Expect: 100-continue`) and 64 KiB, then 4 KiB every 50 ms (the
    // body would take 100 s); begun at the `100 Continue`.
    let head = format!(
        "PUT /slow1.bin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {SIZE}\r\nExpect: 100-continue\r\n\r\n",
        s.token
    );
    let (addr, cert) = (srv.addr, srv.cert_pem.clone());
    let h1_begun = begun_tx.clone();
    let h1 = tokio::spawn(async move {
        slow_upload(addr, &cert, head, SIZE, move || {
            let _ = h1_begun.send("the HTTP/1.1 upload");
        })
        .await
    });
    // HTTP/2: a streamed body, the first 5 MiB at once, then fed as slowly. Past the
    // stream's flow-control window (4 MiB, `initial_stream_window_size` in server.rs) the
    // client sends only what the server's handler has read: begun then.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    let h2_begun = begun_tx.clone();
    let feeder = tokio::spawn(async move {
        let mut fed = 0;
        while fed < 5 << 20 {
            if tx.send(vec![7u8; 64 << 10]).await.is_err() {
                return;
            }
            fed += 64 << 10;
        }
        let _ = h2_begun.send("the HTTP/2 upload");
        while tx.send(vec![7u8; 4096]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let h2 = srv
        .req("PUT", "/slow2.bin", &s.token)
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let h2 = tokio::spawn(h2);
    // curl over HTTP/1.1, its rate limited; begun at the `100 Continue` its -v shows.
    let big = srv.dir.path().join("big.bin");
    std::fs::write(&big, pattern(SIZE, 3)).unwrap();
    let mut curl = std::process::Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--noproxy",
            "*",
            "--http1.1",
            "--limit-rate",
            "64K",
            "--cacert",
        ])
        .arg(srv.cert_file())
        .args(["-X", "PUT", "-H"])
        .arg(format!("Authorization: Bearer {}", s.token))
        .args(["-H", "Expect: 100-continue"])
        .arg("--data-binary")
        .arg(format!("@{}", big.display()))
        .args(["-w", "\n%{http_code}", "-D", "-"])
        .arg(srv.url("/slow3.bin"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running curl (installed by scripts/test.sh)");
    let curl_err = curl.stderr.take().unwrap();
    let curl_begun = begun_tx;
    let curl_err = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut err = String::new();
        let mut told = false;
        for line in std::io::BufReader::new(curl_err).lines() {
            let Ok(line) = line else { break };
            if !told && line.starts_with("< HTTP/1.1 100 ") {
                let _ = curl_begun.send("curl's upload");
                told = true;
            }
            err.push_str(&line);
            err.push('\n');
        }
        err
    });
    let curl_out = tokio::task::spawn_blocking(move || {
        let out = curl.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            curl_err.join().unwrap(),
        )
    });
    // The bodies are arriving; the shutdown's timeout (1 s) ends long before they would.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut started = Vec::new();
    while started.len() < 3 {
        match tokio::time::timeout_at(deadline, begun.recv()).await {
            Ok(Some(what)) => started.push(what),
            _ => panic!("within 30 s only these uploads began: {started:?}"),
        }
    }
    srv.terminate();
    let answer = tokio::time::timeout(Duration::from_secs(30), h1)
        .await
        .expect("the HTTP/1.1 client got an answer or an end")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\nretry-after: 5\r\n"), "{answer}");
    assert!(answer.contains("\"unavailable\""), "{answer}");
    assert!(
        answer.contains("the server is shutting down: the upload was stopped before its end and nothing of it is stored"),
        "{answer}"
    );
    let r = tokio::time::timeout(Duration::from_secs(30), h2)
        .await
        .expect("the HTTP/2 client got an answer")
        .unwrap()
        .expect("an answer, not a reset");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("5"));
    let msg = assert_error(r, 503, "unavailable").await;
    assert!(msg.contains("nothing of it is stored"), "{msg}");
    feeder.abort();
    let (out, err) = curl_out.await.unwrap();
    assert!(out.ends_with("\n503"), "curl: {out}\n{err}");
    assert!(
        out.contains("nothing of it is stored"),
        "curl: {out}\n{err}"
    );
    assert!(
        out.to_ascii_lowercase().contains("retry-after: 5"),
        "curl: {out}\n{err}"
    );
    let status = srv.stop().await.expect("the server was running");
    assert!(status.success(), "{status:?}\n{}", srv.stderr());
    // Nothing partial left in the blob stores' temporary directories.
    for fs_dir in std::fs::read_dir(srv.data.join("fs")).unwrap() {
        let tmp = fs_dir.unwrap().path().join("blobs").join("tmp");
        if let Ok(left) = std::fs::read_dir(&tmp) {
            let left: Vec<_> = left.collect();
            assert!(left.is_empty(), "partial writes left in {}", tmp.display());
        }
    }
    let srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let token = srv.login("app", &s.key, None).await;
    for path in ["/slow1.bin", "/slow2.bin", "/slow3.bin"] {
        assert_eq!(srv.get(path, &token).await.0, 404, "{path} was stored");
        let statuses: Vec<u64> = audit_show(&srv, &["--path", path])
            .into_iter()
            .filter(|e| e["action"] == "write")
            .map(|e| e["status"].as_u64().unwrap())
            .collect();
        assert_eq!(statuses, [503], "{path}");
    }
}

/// Sends `head` (with `Expect: 100-continue`) and the first 64 KiB of a `size`-byte body on a
/// new TLS connection, then 4 KiB every 50 ms while reading; calls `begun` once the server
/// answered `100 Continue` (its handler reads the body); returns all the server sent after
/// that interim answer until it closed (or 30 s).
async fn slow_upload(
    addr: std::net::SocketAddr,
    cert_pem: &[u8],
    head: String,
    size: usize,
    begun: impl FnOnce(),
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = tls_connect(addr, cert_pem).await.unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    let body = pattern(size, 9);
    w.write_all(head.as_bytes()).await.unwrap();
    w.write_all(&body[..64 << 10]).await.unwrap();
    w.flush().await.unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        match r.read(&mut byte).await {
            Ok(1) => interim.push(byte[0]),
            _ => break,
        }
    }
    if !interim.starts_with(b"HTTP/1.1 100 ") {
        // No interim answer: what came instead is the answer.
        return String::from_utf8_lossy(&interim).into_owned();
    }
    begun();
    let writer = tokio::spawn(async move {
        for chunk in body[64 << 10..].chunks(4096) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if w.write_all(chunk).await.is_err() || w.flush().await.is_err() {
                break;
            }
        }
        w
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut answer)).await;
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `head` (with `Expect: 100-continue`) on a new TLS connection and, once the server
/// answered `100 Continue` (its handler began to read the body), says so on `sent`; then
/// sends `rest` at the time `at` gives; returns what the server answers after the 100 (up to
/// its JSON body) or what it had sent when it closed.
async fn send_late(
    addr: std::net::SocketAddr,
    cert_pem: &[u8],
    head: Vec<u8>,
    sent: tokio::sync::oneshot::Sender<()>,
    rest: Vec<u8>,
    at: tokio::sync::oneshot::Receiver<tokio::time::Instant>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connect(addr, cert_pem).await.unwrap();
    tls.write_all(&head).await.unwrap();
    tls.flush().await.unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte).await {
            Ok(1) => interim.push(byte[0]),
            _ => break,
        }
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100 "),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    sent.send(()).unwrap();
    tokio::time::sleep_until(at.await.unwrap()).await;
    tls.write_all(&rest).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !answer.ends_with(b"}") {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `head` and a body of `size` bytes on a new TLS connection, the body's last 64 KiB
/// at the time `end` gives (not before it is given); returns the answer's status (`None`:
/// no answer). With `started`, the request carries `Expect: 100-continue` and `started` is
/// told once the server answered `100 Continue` (its handler reads the body).
async fn upload_ending_at(
    addr: std::net::SocketAddr,
    cert_pem: &[u8],
    head: String,
    size: usize,
    end: tokio::sync::oneshot::Receiver<tokio::time::Instant>,
    started: Option<tokio::sync::oneshot::Sender<()>>,
) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connect(addr, cert_pem).await.ok()?;
    let body = pattern(size, size as u64);
    let (first, last) = body.split_at(size - (64 << 10));
    let head = match started {
        Some(_) => head.replacen("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n", 1),
        None => head,
    };
    tls.write_all(head.as_bytes()).await.ok()?;
    tls.write_all(first).await.ok()?;
    tls.flush().await.ok()?;
    if let Some(started) = started {
        let mut interim = Vec::new();
        let mut byte = [0u8; 1];
        while !interim.ends_with(b"\r\n\r\n") {
            match tls.read(&mut byte).await {
                Ok(1) => interim.push(byte[0]),
                _ => return None,
            }
        }
        if !interim.starts_with(b"HTTP/1.1 100 ") {
            let line = String::from_utf8_lossy(&interim);
            return line.split(' ').nth(1)?.parse().ok();
        }
        let _ = started.send(());
    }
    tokio::time::sleep_until(end.await.ok()?).await;
    tls.write_all(last).await.ok()?;
    tls.flush().await.ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    let line = String::from_utf8_lossy(&answer);
    line.split(' ').nth(1)?.parse().ok()
}

/// Sends `request` on a new TLS connection, waits `after`, then hangs up without reading
/// the answer.
async fn send_and_hang_up(srv: &TestServer, request: String, after: Duration) {
    hang_up_at(srv.addr, &srv.cert_pem, request, after, None)
        .await
        .expect("the server takes the request");
}

/// [`send_and_hang_up`] to `addr`, telling `written` once the request is out; `Err` if the
/// server is gone before the request is sent.
async fn hang_up_at(
    addr: std::net::SocketAddr,
    cert_pem: &[u8],
    request: String,
    after: Duration,
    written: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut tls = tls_connect(addr, cert_pem).await?;
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    if let Some(w) = written {
        let _ = w.send(());
    }
    tokio::time::sleep(after).await;
    let _ = tls.shutdown().await;
    Ok(())
}

/// How many of the server's audit budget windows (one per `SUMMARY_INTERVAL`, the first from
/// its start) what was done since `began` (taken before the server started) may have
/// spanned: 1 unless a slow machine took a whole interval.
fn budget_windows(began: std::time::Instant) -> usize {
    let interval = efs_server::audit_budget::SUMMARY_INTERVAL;
    1 + (began.elapsed().as_millis() / interval.as_millis()) as usize
}

/// The count an `unrecorded` entry gives.
fn unrecorded_count(e: &Value) -> usize {
    e["detail"]
        .as_str()
        .and_then(|d| {
            d.strip_suffix(
                " entries of refusals of callers that proved nobody not written one by one",
            )
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an unrecorded count: {e}"))
}

/// Requests that prove nobody cannot fill the disk through the audit log: a client sending
/// bad tokens gets its first entries (paths cut to 512 bytes) and then one `unrecorded`
/// entry with the count, written at the latest when the server stops; a verified caller's
/// refused requests are all recorded; the chain stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_verified_identity_are_recorded_within_a_budget() {
    let began = std::time::Instant::now();
    let s = session(&[]).await;
    let mut srv = s.srv;
    let app = s.token;
    let long = format!("/flood{}", format!("/{}", "p".repeat(99)).repeat(20));
    const BAD: usize = 100;
    for i in 0..BAD {
        let token = if i % 2 == 0 { "garbage" } else { "" }; // malformed, missing
        let r = srv.req("GET", &long, token).send().await.unwrap();
        assert_eq!(
            r.status(),
            401,
            "the answer does not change over the budget"
        );
    }
    let windows = budget_windows(began);
    // A verified caller's refusals are not budgeted: all 40 recorded.
    const MISSING: usize = 40;
    for i in 0..MISSING {
        let (status, _) = srv.get(&format!("/missing/{i}"), &app).await;
        assert_eq!(status, 404);
    }
    // Nor are the refusals of a token this server signed, once revoked, after the
    // address's budget is spent: they were counted only, without the user or the path (a
    // stolen token used after its revoke, behind 30 junk requests, went unseen).
    srv.efsctl_ok(&["revoke", &s.user]);
    let (status, _) = srv.get("/after-revoke/secret.txt", &app).await;
    assert_eq!(status, 401);
    let r = srv
        .req("POST", "/_efs/auth/refresh", &app)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    srv.stop().await;

    let entries = audit_show(&srv, &[]);
    let unverified: Vec<&Value> = entries
        .iter()
        .filter(|e| e["user"].is_null() && e["action"] != "admin" && e["action"] != "unrecorded")
        .collect();
    for e in &unverified {
        if let Some(p) = e["path"].as_str() {
            assert!(p.len() <= 512 + '…'.len_utf8() && p.ends_with('…'), "{p}");
        }
    }
    let summaries: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "unrecorded")
        .collect();
    for e in &summaries {
        assert_eq!(e["client"], "127.0.0.1", "{e}");
    }
    // The budget is 30 entries per address per minute; each bad request writes two (the
    // refused token, the request).
    let written_or_not = BAD * 2;
    if windows == 1 {
        assert_eq!(unverified.len(), 30, "{unverified:#?}");
        assert_eq!(summaries.len(), 1, "{summaries:#?}");
        let want = format!(
            "{} entries of refusals of callers that proved nobody not written one by one",
            written_or_not - 30
        );
        assert_eq!(summaries[0]["detail"], want.as_str());
    } else {
        // A window ended while the requests came (a slow machine): each window wrote 30
        // at most and summed up the rest in one entry; together they account for all.
        assert!(
            (30..=30 * windows).contains(&unverified.len()),
            "{} written in {windows} windows: {unverified:#?}",
            unverified.len()
        );
        assert!(
            (1..=windows).contains(&summaries.len()),
            "{windows} windows: {summaries:#?}"
        );
        let counted: usize = summaries.iter().map(|e| unrecorded_count(e)).sum();
        assert_eq!(unverified.len() + counted, written_or_not, "{summaries:#?}");
    }
    let missing = entries
        .iter()
        .filter(|e| {
            e["status"] == 404
                && e["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/missing/"))
        })
        .count();
    assert_eq!(missing, MISSING);
    let named = |action: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["user"] == s.user.as_str())
            .count()
    };
    let read = entries
        .iter()
        .find(|e| e["path"] == "/after-revoke/secret.txt")
        .expect("the revoked token's request is recorded");
    assert_eq!(read["user"], s.user.as_str(), "{read}");
    assert_eq!(read["status"], 401, "{read}");
    // The refused token (the GET's, the refresh's), and the refresh.
    assert_eq!(named("token-rejected"), 2, "{entries:#?}");
    assert_eq!(named("refresh-failed"), 1, "{entries:#?}");
    let v = srv.efsctl_ok(&["audit", "verify"]);
    assert!(v.starts_with("audit verify: OK"), "{v}");
}

/// A refresh refused for its renewals, with a token this server signed, is recorded with
/// its user also once the address has spent its budget on junk (it was counted only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_out_of_renewals_is_recorded_after_junk() {
    let s = session(&["--max-renewals", "0"]).await;
    let mut srv = s.srv;
    for _ in 0..40 {
        let r = srv
            .req("GET", "/junk", "forged.forged.forged")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = srv
        .req("POST", "/_efs/auth/refresh", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    srv.stop().await;
    let entries = audit_show(&srv, &["--user", &s.user]);
    let refused: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "refresh-failed")
        .collect();
    assert_eq!(refused.len(), 1, "{entries:#?}");
    assert_eq!(refused[0]["detail"], "renewals exhausted");
    assert_eq!(refused[0]["fs"], s.fs.as_str());
}

/// Logins whose signature does not check out are recorded within the budget, the 401s and
/// the 429s that follow them alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_attempts_over_the_limit_are_recorded_within_the_budget() {
    let began = std::time::Instant::now();
    // The failure counts' window as long as an hour: the tries below all fall in one
    // however slowly they go (the default, a minute, starts at the first failure).
    let s = session(&["--login-fail-window", "3600"]).await;
    let mut srv = s.srv;
    let wrong = new_signing_key();
    const TRIES: usize = 80;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..TRIES {
        let body = srv.signed_body("app", &wrong, None).await;
        *statuses
            .entry(srv.token_request(&body).await.status().as_u16())
            .or_default() += 1;
    }
    let windows = budget_windows(began);
    // The default limits: 10 failures per user name, 20 per address per window, then 429.
    assert_eq!(statuses.get(&401), Some(&10), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&(TRIES - 10)), "{statuses:?}");
    srv.stop().await;

    let entries = audit_show(&srv, &[]);
    let count = |action: &str| entries.iter().filter(|e| e["action"] == action).count();
    let summaries: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "unrecorded")
        .collect();
    // A wrong key proves nobody: the 10 failures (the first tries) are written whatever
    // the window.
    assert_eq!(count("login-failed"), 10);
    if windows == 1 {
        // The 10 failures and the first 20 refusals with 429 fill the address's 30
        // entries; the other 50 are counted.
        assert_eq!(count("login-rate-limited"), 20);
        assert_eq!(summaries.len(), 1, "{summaries:#?}");
        assert_eq!(
            summaries[0]["detail"],
            format!(
                "{} entries of refusals of callers that proved nobody not written one by one",
                TRIES - 30
            )
            .as_str()
        );
    } else {
        // A window ended while the tries came (a slow machine): each window wrote 30 at
        // most and summed up the rest in one entry; together they account for all.
        let written = count("login-failed") + count("login-rate-limited");
        assert!(
            (30..=30 * windows).contains(&written),
            "{written} written in {windows} windows"
        );
        assert!(
            (1..=windows).contains(&summaries.len()),
            "{windows} windows: {summaries:#?}"
        );
        let counted: usize = summaries.iter().map(|e| unrecorded_count(e)).sum();
        assert_eq!(written + counted, TRIES, "{summaries:#?}");
    }
}

/// `audit show` answers the newest matching entries only (1,000 by default, `--limit N` up
/// to 100,000: the answer is built in the server's memory and the log grows by an entry a
/// request), oldest first, and says how many older ones it left out: on standard error with
/// `--json`, in the text otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_show_answers_the_newest_entries_within_a_limit() {
    let s = session(&[]).await;
    let srv = s.srv;
    for i in 1..=5 {
        srv.put_ok(&format!("/lim/{i}"), &s.token, format!("{i}"))
            .await;
    }
    // Entries reach `audit show` once fsynced (every 5 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while audit_show(&srv, &["--path", "/lim/"]).len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "5 writes never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An answer that leaves matching entries out exits 3, as one the chain or the followed
    // names cut short: an export saved from --json (the warning on standard error) is not
    // taken for the whole (it exited 0).
    let out = srv.efsctl(&["audit", "show", "--json", "--path", "/lim/", "--limit", "3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/lim/3", "/lim/4", "/lim/5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: 2 older matching entries not shown (the newest 3 are)"),
        "{err}"
    );
    let out = srv.efsctl(&["audit", "show", "--path", "/lim/", "--limit", "1"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("/lim/5"), "{text}");
    assert!(
        lines[1].starts_with("warning: 4 older matching entries"),
        "{text}"
    );
    // Bad usage (exit 2), said by the argument parser.
    for bad in ["0", "100001"] {
        let out = srv.efsctl(&["audit", "show", "--limit", bad]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not in 1..=100000"), "{err}");
    }
    // No match is said, not printed as nothing; a range that is empty by its bounds is bad
    // usage (both exited 0 with no output).
    let text = srv.efsctl_ok(&["audit", "show", "--path", "/nothing-here"]);
    assert_eq!(text.trim(), "no entry matches");
    // A path given as in a URL matches nothing: said (it printed "no entry matches" alone).
    let text = srv.efsctl_ok(&["audit", "show", "--path", "/lab%20result.txt"]);
    assert!(text.contains("looks percent-encoded"), "{text}");
    // A path EFS never records is refused, not answered "no entry matches".
    for bad in ["lim/1", "/lim//1", "/lim/./1"] {
        let out = srv.efsctl(&["audit", "show", "--path", bad]);
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a path EFS records"), "{bad}: {err}");
    }
    // Paging through the whole log in order: the first page's warning names the next.
    let out = srv.efsctl(&[
        "audit",
        "show",
        "--json",
        "--path",
        "/lim/",
        "--from-entry",
        "1",
        "--limit",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(3), "more pages follow: {out:?}");
    let page: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = page.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/lim/1", "/lim/2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let next = err
        .split("continue with --from-entry ")
        .nth(1)
        .unwrap_or_else(|| panic!("no next page named: {err}"))
        .trim();
    assert!(err.contains("3 newer matching entries"), "{err}");
    let rest = audit_show(
        &srv,
        &["--path", "/lim/", "--from-entry", next, "--limit", "3"],
    );
    let paths: Vec<&str> = rest.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/lim/3", "/lim/4", "/lim/5"]);
    // By action and status; a day as a time.
    let writes = audit_show(
        &srv,
        &["--path", "/lim/", "--action", "write", "--status", "2xx"],
    );
    assert_eq!(writes.len(), 5);
    assert!(audit_show(&srv, &["--path", "/lim/", "--action", "read,delete"]).is_empty());
    assert!(audit_show(&srv, &["--path", "/lim/", "--status", "4xx,5xx"]).is_empty());
    assert_eq!(
        audit_show(&srv, &["--path", "/lim/", "--since", "2000-01-01"]).len(),
        5
    );
    assert!(audit_show(&srv, &["--path", "/lim/", "--until", "2000-01-02"]).is_empty());
    let out = srv.efsctl(&["audit", "show", "--action", "reads"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such action"));
    let out = srv.efsctl(&["audit", "show", "--since", "1h", "--until", "2h"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--since is not before --until"), "{err}");
    // An age too large to count, or with a sign, is bad usage too (the first panicked).
    for bad in ["99999999999999999d", "+5m", "d"] {
        let out = srv.efsctl(&["audit", "show", "--since", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is neither an RFC 3339 time"), "{bad}: {err}");
    }
}

/// Copies directory `from` (files only, one level) to `to`, made anew.
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The data dir records how far its audit log went (system database), so that a log deleted
/// while the server was stopped, or put back from an older copy with its own anchor, is
/// named by `efsctl audit verify` (and warned about at start); both verified clean before
/// (a fresh log, an older log and its anchor agree with each other). A server killed with
/// entries not yet recorded restarts clean: the record never runs ahead of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_older_audit_log_is_named_by_verify() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    for i in 0..5 {
        srv.put_ok(&format!("/a{i}.txt"), &s.token, b"x".to_vec())
            .await;
    }
    srv.stop().await;
    let audit = srv.data.join("system/audit");
    let older = srv.dir.path().join("older-audit");
    copy_dir(&audit, &older);
    // (What verify prints, not the warning of the writer efsctl opens to record the command.)
    let verify = |srv: &TestServer| {
        let out = srv.efsctl(&["audit", "verify"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = verify(&srv);
    assert_eq!(code, Some(0), "{text}");

    // More entries, then the older log and its anchor put back.
    let mut srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let token = srv.login("app", &s.key, None).await;
    for i in 0..5 {
        srv.put_ok(&format!("/b{i}.txt"), &token, b"y".to_vec())
            .await;
    }
    srv.stop().await;
    copy_dir(&older, &audit);
    let (code, text) = verify(&srv);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("this data dir recorded entry") && text.contains("older copy"),
        "{text}"
    );

    // The whole log deleted: the next start warns, and verify names it for good.
    std::fs::remove_dir_all(&audit).unwrap();
    let mut srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let token = srv.login("app", &s.key, None).await;
    srv.get_ok("/a0.txt", &token).await;
    // Logged on stderr, which is read apart: waited for.
    srv.stderr_when(|e| {
        e.contains("the audit log ends at entry 0 but this data dir recorded entry")
    })
    .await;
    // Starting a new log on purpose is `audit new-log`, with the server stopped: refused
    // while it runs; then the log moves aside (kept) and verify is clean again.
    let out = srv.efsctl(&["audit", "new-log"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{out:?}"
    );
    srv.stop().await;
    let (code, text) = verify(&srv);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("this data dir recorded entry"), "{text}");
    let out = srv.efsctl_ok(&["audit", "new-log"]);
    assert!(out.contains("Started a new audit log"), "{out}");
    let moved: Vec<_> = std::fs::read_dir(srv.data.join("system"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit-moved-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(
        srv.data
            .join("system")
            .join(&moved[0])
            .join("HEAD")
            .exists()
    );
    let (code, text) = verify(&srv);
    assert_eq!(code, Some(0), "{text}");
    let shown = audit_show(&srv, &[]);
    assert!(
        shown[0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("audit-new-log"),
        "{shown:?}"
    );
    let again = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert!(
        !again.stderr().contains("recorded entry"),
        "{}",
        again.stderr()
    );
    drop(again);

    // No false alarm after a kill: a fresh data dir, killed right after its writes.
    let s = session(&[]).await;
    let mut srv = s.srv;
    for i in 0..20 {
        srv.put_ok(&format!("/c{i}.txt"), &s.token, b"z".to_vec())
            .await;
    }
    srv.kill();
    let (code, text) = verify(&srv);
    assert_eq!(code, Some(0), "{text}");
    let again = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert!(
        !again.stderr().contains("recorded entry"),
        "{}",
        again.stderr()
    );
}
