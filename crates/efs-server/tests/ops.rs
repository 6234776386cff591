//! Operations end to end with the real server: `efsctl backup` while clients read and
//! write, `efsctl restore` into a new filesystem, fsck, files equal through HTTP;
//! `efsctl reencrypt` under concurrent reads and writes with no failed request; the
//! per-filesystem gauges of `/_efs/metrics`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Clients that read `files` and write their own files until `stop`; every request
/// must succeed. Returns each client's last written versions.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<BTreeMap<String, Vec<u8>>>,
}

impl Load {
    fn start(srv: &TestServer, token: &str, files: Arc<BTreeMap<String, Vec<u8>>>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..4u64 {
            let client = srv.client.clone();
            let base = srv.base.clone();
            let token = token.to_owned();
            let (stop, failures, requests, files) = (
                stop.clone(),
                failures.clone(),
                requests.clone(),
                files.clone(),
            );
            tasks.spawn(async move {
                let keys: Vec<String> = files.keys().cloned().collect();
                let mut last = BTreeMap::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let path = &keys[((n * 7 + t * 31) % keys.len() as u64) as usize];
                    match client
                        .get(format!("{base}{path}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => {
                            let b = r.bytes().await.unwrap_or_default();
                            if b.as_ref() != files[path].as_slice() {
                                eprintln!("GET {path}: wrong content");
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(r) => {
                            eprintln!("GET {path}: {}", r.status());
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("GET {path}: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let wpath = format!("/w{t}/f{}.bin", n % 9);
                    let len = if n.is_multiple_of(3) { 150_000 } else { 300 };
                    let body = pattern(len, n * 100 + t);
                    match client
                        .put(format!("{base}{wpath}"))
                        .bearer_auth(&token)
                        .body(body.clone())
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 || r.status() == 201 => {
                            last.insert(wpath, body);
                        }
                        Ok(r) => {
                            eprintln!("PUT {wpath}: {}", r.status());
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("PUT {wpath}: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    requests.fetch_add(2, Ordering::Relaxed);
                }
                last
            });
        }
        Load {
            stop,
            failures,
            requests,
            tasks,
        }
    }

    /// Waits (30 s at most) until the clients have made `n` requests: the load is running.
    async fn running(&self, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.requests.load(Ordering::Relaxed) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the clients made fewer than {n} requests in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients; asserts that no request failed; returns what they wrote.
    async fn finish(mut self, what: &str) -> BTreeMap<String, Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut written = BTreeMap::new();
        while let Some(r) = self.tasks.join_next().await {
            written.extend(r.unwrap());
        }
        let (n, f) = (
            self.requests.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        );
        eprintln!("{n} requests during the {what}, {f} failed");
        assert!(n > 0, "the clients ran");
        assert_eq!(f, 0, "no failed request during the {what}");
        written
    }
}

async fn put_files(srv: &TestServer, token: &str, n: u64) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..n {
        let path = format!("/r/d{}/f{i}.bin", i % 5);
        let len = if i.is_multiple_of(10) {
            200_000 + i as usize
        } else {
            50 + i as usize * 3
        };
        let data = pattern(len, i);
        srv.put_ok(&path, token, data.clone()).await;
        files.insert(path, data);
    }
    files
}

async fn efsctl(srv: &Arc<TestServer>, args: &[&str]) -> String {
    let s = srv.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    // efsctl is a blocking child process: off the runtime's workers.
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        s.efsctl_ok(&a)
    })
    .await
    .unwrap()
}

async fn metrics(srv: &TestServer) -> String {
    srv.metrics().await.text().await.unwrap()
}

fn gauge(text: &str, name: &str, fs: &str) -> Option<f64> {
    let prefix = format!("{name}{{fs=\"{fs}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_while_serving_then_restore_into_a_new_fs() {
    let s = session(&[]).await;
    let files = Arc::new(put_files(&s.srv, &s.token, 150).await);
    let srv = Arc::new(s.srv);
    let load = Load::start(&srv, &s.token, files.clone());
    // Some uploads were acknowledged before the snapshot (each pair of requests ends with one).
    load.running(8).await;

    let dest = srv.dir.path().join("backup-1");
    let out = efsctl(
        &srv,
        &["backup", "--fs", "files", "-o", dest.to_str().unwrap()],
    )
    .await;
    assert!(out.contains("Backed up 'files'"), "{out}");
    assert!(out.contains("WARNING: no key material included"), "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written = load.finish("backup").await;
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dest.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "efs-backup/2");
    // The filesystem's name and counts are sealed in the manifest; efsctl prints them.
    assert!(manifest.get("files").is_none(), "{manifest}");
    assert!(!manifest.to_string().contains("files"), "{manifest}");
    let counted: u64 = out
        .split(" files (")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(counted >= 150, "{out}");
    assert!(out.contains("Manifest authenticated"), "{out}");

    // The live filesystem is clean too (removals deferred by the backup are done).
    let fsck = efsctl(&srv, &["fsck", "--fs", "files"]).await;
    assert!(fsck.contains(" 0 errors, 0 orphan blobs"), "{fsck}");

    let out = efsctl(
        &srv,
        &["restore", "--fs", "restored", "-i", dest.to_str().unwrap()],
    )
    .await;
    assert!(out.contains("into 'restored'"), "{out}");
    let fsck = efsctl(&srv, &["fsck", "--fs", "restored"]).await;
    assert!(
        fsck.contains(" 0 errors, 0 orphan blobs, 0 orphan inline"),
        "{fsck}"
    );
    efsctl(&srv, &["grant", "app", "--fs", "restored"]).await;
    let t = srv.login("app", &s.key, Some("restored")).await;
    for (path, data) in files.iter() {
        assert!(srv.get_ok(path, &t).await == *data, "{path} restored");
    }
    // The clients' files are whole versions of the snapshot (or absent if written later).
    let mut present = 0;
    for path in written.keys() {
        let (status, body) = srv.get(path, &t).await;
        if status == 200 {
            present += 1;
            let len = body.len();
            assert!(len == 300 || len == 150_000, "{path}: a whole version");
        } else {
            assert_eq!(status, 404, "{path}");
        }
    }
    assert!(present > 0);

    // With the server stopped, efsctl backs up and restores on the data dir itself.
    let mut srv = Arc::into_inner(srv).expect("no other reference");
    assert!(srv.stop().await.unwrap().success());
    let dest2 = srv.dir.path().join("backup-2");
    let out = srv.efsctl_ok(&[
        "backup",
        "--fs",
        "files",
        "-o",
        dest2.to_str().unwrap(),
        "--include-keys",
    ]);
    assert!(out.contains("keyring is included"), "{out}");
    assert!(dest2.join("keys/keyring.sealed").exists());
    srv.efsctl_ok(&["restore", "--fs", "again", "-i", dest2.to_str().unwrap()]);
    let fsck = srv.efsctl(&["fsck", "--fs", "again"]);
    assert!(fsck.status.success(), "{fsck:?}");
    // A name in use is refused.
    let again = srv.efsctl(&["restore", "--fs", "files", "-i", dest2.to_str().unwrap()]);
    assert!(!again.status.success());

    // A manifest changed by whoever can write to the backup store is refused, nothing
    // registered.
    let copy = |name: &str| {
        let d = srv.dir.path().join(name);
        for (path, bytes) in all_files(&dest2) {
            let to = d.join(path.strip_prefix(&dest2).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(to, bytes).unwrap();
        }
        let m: Value =
            serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
        (d, m)
    };
    let (tampered, mut m) = copy("backup-tampered");
    m["created_ms"] = (m["created_ms"].as_i64().unwrap() - 1).into();
    std::fs::write(tampered.join("manifest.json"), m.to_string()).unwrap();
    let out = srv.efsctl(&["restore", "--fs", "t", "-i", tampered.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not authenticate"),
        "{err}"
    );
    let listed = srv.efsctl_ok(&["list-fs"]);
    assert!(!listed.lines().any(|l| l.starts_with("t\t")), "{listed}");

    // A format-1 backup (no MAC) only with --accept-unauthenticated-backup, audited.
    let (v1, m) = copy("backup-v1");
    let mut legacy = m.clone();
    let obj = legacy.as_object_mut().unwrap();
    for k in ["mac", "mac_term", "summary"] {
        obj.remove(k);
    }
    obj.insert("format".into(), "efs-backup/1".into());
    obj.insert("fs_name".into(), "files".into());
    obj.insert("files".into(), counted.into());
    obj.insert("bytes".into(), 0.into());
    std::fs::write(v1.join("manifest.json"), legacy.to_string()).unwrap();
    let out = srv.efsctl(&["restore", "--fs", "old", "-i", v1.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--accept-unauthenticated-backup"),
        "{err}"
    );
    let out = srv.efsctl(&[
        "restore",
        "--fs",
        "old",
        "-i",
        v1.to_str().unwrap(),
        "--accept-unauthenticated-backup",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("WARNING: format-1"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARNING"));
    let audit = srv.efsctl_ok(&["audit", "show", "--fs", "old"]);
    assert!(
        audit.contains("accept_unauthenticated_backup\":true"),
        "{audit}"
    );
    // A restore is recorded when it starts (202) and when it ends: the refused one without
    // the flag (400), then the accepted one (200).
    let entries: Vec<Value> =
        serde_json::from_str(&srv.efsctl_ok(&["audit", "show", "--fs", "old", "--json"])).unwrap();
    let statuses: Vec<u64> = entries
        .iter()
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("restore"))
        })
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 400, 202, 200], "{entries:#?}");

    // New key parts (server stopped): afterwards only they open the data dir, and the
    // server starts with them and serves every file.
    let new_part = srv.dir.path().join("new.keypart");
    efs_core::keyparts::generate_part_file(&new_part).unwrap();
    let spec = format!("file:{}", new_part.display());
    let out = srv.efsctl_ok(&["rekey-starter", "--new-key-part", &spec]);
    assert!(out.contains("only the new key parts open"), "{out}");
    assert!(
        !srv.efsctl(&["list-fs"]).status.success(),
        "old part refused"
    );
    let srv = TestServer::start_in(srv.dir.clone(), &["--key-part", &spec], &[]);
    let t = srv.login("app", &s.key, Some("files")).await;
    for (path, data) in files.iter() {
        assert!(srv.get_ok(path, &t).await == *data, "{path} after rekey");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reencrypt_and_rotate_under_load_with_metrics() {
    let s = session(&[]).await;
    let files = Arc::new(put_files(&s.srv, &s.token, 200).await);
    let srv = Arc::new(s.srv);

    // Files and bytes per filesystem: recounted in the background after a scrape.
    let total: u64 = files.values().map(|d| d.len() as u64).sum();
    let t0 = Instant::now();
    loop {
        let m = metrics(&srv).await;
        if gauge(&m, "efs_fs_files", "files") == Some(200.0) {
            assert_eq!(gauge(&m, "efs_fs_bytes", "files"), Some(total as f64));
            assert_eq!(gauge(&m, "efs_fs_key_term", "files"), Some(1.0));
            // Before any rotation or re-encryption: 0s, not missing series.
            for g in [
                "efs_rotation_running",
                "efs_rotation_records_rewrapped",
                "efs_reencryption_running",
                "efs_reencryption_files_total",
            ] {
                assert_eq!(gauge(&m, g, "files"), Some(0.0), "{g}: {m}");
            }
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let load = Load::start(&srv, &s.token, files.clone());
    // Some uploads were acknowledged before the snapshot (each pair of requests ends with one).
    load.running(8).await;
    // rekey-starter is refused while the server runs.
    let s2 = srv.clone();
    let refused = tokio::task::spawn_blocking(move || {
        s2.efsctl(&["rekey-starter", "--new-key-part", "env:UNUSED_PART"])
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop it first"),
        "{refused:?}"
    );
    let out = efsctl(&srv, &["reencrypt", "--fs", "files"]).await;
    assert!(out.contains("Added key term 2"), "{out}");
    let t0 = Instant::now();
    let st = loop {
        let out = efsctl(&srv, &["status", "--fs", "files", "--json"]).await;
        let st: Value = serde_json::from_str(&out).unwrap();
        if st[0]["reencryption"]["state"] == "done" {
            break st[0].clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Then a key rotation, under the same load.
    let out = efsctl(&srv, &["rotate-key", "--fs", "files", "--wait"]).await;
    assert!(out.contains("rotation done"), "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written = load.finish("re-encryption and rotation").await;
    assert!(
        st["reencryption"]["files_done"].as_u64().unwrap() >= 200,
        "{st}"
    );
    // The clients' files written before it started count too.
    let total_files = st["reencryption"]["total_files"].as_u64().unwrap();
    assert!((200..=236).contains(&total_files), "{st}");

    let m = metrics(&srv).await;
    assert_eq!(
        gauge(&m, "efs_reencryption_running", "files"),
        Some(0.0),
        "{m}"
    );
    assert!(gauge(&m, "efs_reencryption_files_done", "files").unwrap() >= 200.0);
    assert_eq!(
        gauge(&m, "efs_reencryption_files_total", "files"),
        Some(total_files as f64)
    );
    assert_eq!(gauge(&m, "efs_rotation_running", "files"), Some(0.0));
    assert!(gauge(&m, "efs_rotation_records_rewrapped", "files").unwrap() >= 200.0);
    assert_eq!(gauge(&m, "efs_fs_key_term", "files"), Some(3.0));

    let fsck = efsctl(&srv, &["fsck", "--fs", "files"]).await;
    assert!(
        fsck.contains(" 0 errors, 0 orphan blobs, 0 orphan inline"),
        "{fsck}"
    );
    for (path, data) in files.iter().chain(written.iter()) {
        assert!(srv.get_ok(path, &s.token).await == *data, "{path}");
    }
}

/// The admin socket reads a request line of at most 1 MiB: a longer one (here without an
/// end) is answered with an error and the connection closed, and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_request_longer_than_a_mebibyte_is_refused() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let s = session(&[]).await;
    let srv = s.srv;
    let sock = tokio::net::UnixStream::connect(srv.data.join("system").join("admin.sock"))
        .await
        .unwrap();
    let (r, mut w) = sock.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        // 2 MiB, no newline; the server stops reading after 1 MiB and closes.
        for _ in 0..32 {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut lines = BufReader::new(r).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("an answer")
        .unwrap()
        .expect("a line");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("longer than 1048576 bytes"),
        "{v}"
    );
    // Closed after the answer: an end of file, or a reset (the server closed with the
    // rest of the line unread).
    let next = lines.next_line().await;
    assert!(
        matches!(next, Ok(None))
            || next
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "closed after the answer: {next:?}"
    );
    writer.abort();
    let out = srv.efsctl_ok(&["list-fs"]);
    assert!(out.contains("files"), "{out}");
}

/// Regression: the admin socket took any number of connections, each held for ever
/// without sending a line. 64 are served at once; the 65th is answered once one of them
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_bounded() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let s = session(&[]).await;
    let path = s.srv.data.join("system").join("admin.sock");
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::UnixStream::connect(&path).await.unwrap());
    }
    let waiting = tokio::spawn({
        let path = path.clone();
        async move {
            let sock = tokio::net::UnixStream::connect(&path).await.unwrap();
            let (r, mut w) = sock.into_split();
            w.write_all(b"{\"cmd\":\"list-fs\"}\n").await.unwrap();
            BufReader::new(r).lines().next_line().await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a 65th connection was served");
    // `efsctl health` gets no answer either: it says so within its 5 s and fails, instead
    // of waiting for ever (a probe without a timeout of its own hung with it).
    let t0 = Instant::now();
    let health = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking({
            let mut cmd = s.srv.efsctl_command(&["health"]);
            move || cmd.output().unwrap()
        }),
    )
    .await
    .expect("efsctl health ended")
    .unwrap();
    let err = String::from_utf8_lossy(&health.stderr);
    assert!(!health.status.success(), "{err}");
    assert!(err.contains("did not answer within 5 s"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    drop(idle.pop());
    let line = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered once a place was free")
        .unwrap()
        .unwrap()
        .expect("a line");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

/// The admin socket answers only root and the server's own account, also when the socket's
/// and the data dir's modes were loosened by mistake: another local account (here `nobody`,
/// uid 65534, through a world-writable socket) is refused, its request never parsed, and no
/// filesystem is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_refuses_other_local_accounts() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let s = session(&[]).await;
    let srv = s.srv;
    let me = rustix::process::geteuid().as_raw();
    if me != 0 {
        // Another account's process cannot be started here; CI runs as root.
        eprintln!("not root: the refusal of another account is not exercised");
        return;
    }
    let sock = srv.data.join("system").join("admin.sock");
    // Every directory on the way made passable, the socket writable by all.
    let mut p = sock.parent().unwrap().to_path_buf();
    while p.as_os_str().len() > 1 {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o011)).unwrap();
        if !p.pop() {
            break;
        }
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"cmd":"create-fs","name":"intruder"}\n')
print(s.makefile().readline(), end="")
"#;
    let sock_arg = sock.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&sock_arg)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("uid 65534 is neither root nor the server's account"),
        "{e}"
    );
    // efsctl run by that account: refused (exit 5), and the key pair it generated for a
    // create-user is removed (it stayed, "could not tell whether the user was created",
    // though the refusal is certain: black-box review).
    let keys = new_tempdir();
    std::fs::set_permissions(keys.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out_key = keys.path().join("evil");
    let efsctl = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(EFSCTL_BIN)
        .arg("--data")
        .arg(&srv.data)
        .args(["create-user", "evil", "--fs", "files", "--out"])
        .arg(&out_key)
        .current_dir("/")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&efsctl.stderr);
    assert_eq!(efsctl.status.code(), Some(5), "{err}");
    assert!(err.contains("refused before anything was done"), "{err}");
    let left: Vec<_> = std::fs::read_dir(keys.path()).unwrap().collect();
    assert!(left.is_empty(), "the generated key pair was left: {left:?}");
    // The server's own account (root here) is still answered, and nothing was created.
    let list = srv.efsctl_ok(&["list-fs"]);
    assert!(
        list.contains("files") && !list.contains("intruder"),
        "{list}"
    );
    assert!(!srv.efsctl_ok(&["list-users"]).contains("evil"));
}

/// Regression: root running efsctl on a stopped server's data dir that the server's account
/// owns made root-owned files there (a new filesystem's index), which that account could not
/// open: the server's next start failed. Now refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_is_refused_on_a_stopped_data_dir_another_account_owns() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: the refusal of root is not exercised");
        return;
    }
    let mut srv = TestServer::start(&[]);
    srv.create_fs("files");
    srv.stop().await;
    let chown = |owner: &str| {
        let st = std::process::Command::new("chown")
            .args(["-R", owner])
            .arg(&srv.data)
            .status()
            .unwrap();
        assert!(st.success());
    };
    chown("65534:65534");
    for args in [
        &["create-fs", "late"][..],
        &["list-fs"],
        &["rekey-starter", "--new-key-part", "env:NOPE"],
    ] {
        let out = srv.efsctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(err.contains("belongs to uid 65534"), "{args:?}: {err}");
    }
    let mut root_owned = Vec::new();
    let mut dirs = vec![srv.data.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.uid() == 0 {
                root_owned.push(e.path());
            }
            if meta.is_dir() {
                dirs.push(e.path());
            }
        }
    }
    assert!(root_owned.is_empty(), "root-owned: {root_owned:?}");
    // Owned by root again, root's efsctl works on it.
    chown("0:0");
    assert!(srv.efsctl_ok(&["list-fs"]).contains("files"));
}

/// `efsctl restore --backup-key-part` through a running server (the recipe "After losing the
/// disk" in docs/operations.md): efsctl reads `env:` and `file:` parts in its own environment
/// and working directory, not the server's, and a passphrase from its own
/// `EFS_BACKUP_PASSPHRASE` (else its terminal), and hands their contents over the socket; the audit entry records
/// the specs, never the contents. (A passphrase part was refused through a running server:
/// "only env: and file: parts can be read and handed over".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_restores_with_key_parts_read_by_efsctl() {
    // The lost data dir: three key parts, from the environment, a file and a passphrase.
    let a_dir = Arc::new(new_tempdir());
    let env_part = "an environment key part of 32 bytes";
    let file_part = "a file key part, 16 bytes or more\n";
    let passphrase = "the lost data dir's passphrase";
    let a_file = a_dir.path().join("a.keypart");
    std::fs::write(&a_file, file_part).unwrap();
    let a_file_spec = format!("file:{}", a_file.display());
    let a = Arc::new(TestServer::start_in(
        a_dir.clone(),
        &[
            "--key-part",
            "env:A_ENV_PART",
            "--key-part",
            &a_file_spec,
            "--key-part",
            "passphrase",
        ],
        &[("A_ENV_PART", env_part), ("EFS_PASSPHRASE", passphrase)],
    ));
    a.create_fs("files");
    let key = a.create_user("app", &["files"], false);
    let token = a.login("app", &key, None).await;
    let mut files = BTreeMap::new();
    for i in 0..5 {
        let (path, body) = (format!("/k/f{i}"), format!("file {i}").into_bytes());
        a.put_ok(&path, &token, body.clone()).await;
        files.insert(path, body);
    }
    let dest = a_dir.path().join("bk");
    efsctl(
        &a,
        &[
            "backup",
            "--fs",
            "files",
            "-o",
            dest.to_str().unwrap(),
            "--include-keys",
        ],
    )
    .await;

    // Another data dir, with its own key part, serving. The old parts are only in efsctl's
    // environment and working directory.
    let b = Arc::new(TestServer::start(&[]));
    std::fs::copy(&a_file, b.dir.path().join("old.keypart")).unwrap();
    let restore = |fs: &str, env_spec: &str, pass: &str| {
        let mut cmd = std::process::Command::new(EFSCTL_BIN);
        // The server's working directory is the test's, not this one.
        cmd.current_dir(b.dir.path())
            .arg("--data")
            .arg(&b.data)
            .args(["restore", "--fs", fs, "-i"])
            .arg(&dest)
            .args(["--backup-key-part", env_spec])
            .args(["--backup-key-part", "file:old.keypart"])
            .args(["--backup-key-part", "passphrase"])
            .env_remove("EFS_DATA")
            .env("OLD_EFS_PART", env_part)
            .env("EFS_BACKUP_PASSPHRASE", pass)
            .stdin(std::process::Stdio::null());
        cmd.output().unwrap()
    };
    let out = restore("copy", "env:OLD_EFS_PART", passphrase);
    assert!(out.status.success(), "{out:?}");
    let out = restore("unset", "env:EFS_TEST_UNSET_PART", passphrase);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reading --backup-key-part") && err.contains("not set"),
        "{err}"
    );
    let out = restore("mistyped", "env:OLD_EFS_PART", "not the passphrase");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key part 3 (passphrase) is wrong") && !err.contains("not the passphrase"),
        "{err}"
    );

    let list = b.efsctl_ok(&["list-fs"]);
    assert!(
        list.contains("copy") && !list.contains("unset") && !list.contains("mistyped"),
        "{list}"
    );
    let key = b.create_user("reader", &["copy"], true);
    let token = b.login("reader", &key, Some("copy")).await;
    for (path, body) in &files {
        let (status, got) = b.get(path, &token).await;
        assert_eq!((status, &got), (200, body), "{path}");
    }
    // Recorded with the specs; the parts' contents appear nowhere in the entries.
    let me = format!("uid:{}", rustix::process::geteuid().as_raw());
    let shown = b.efsctl_ok(&["audit", "show", "--json", "--user", &me]);
    assert!(
        !shown.contains(env_part)
            && !shown.contains(file_part.trim())
            && !shown.contains(passphrase),
        "{shown}"
    );
    assert!(!shown.contains("backup_key_given"), "{shown}");
    let restores: Vec<Value> = serde_json::from_str::<Value>(&shown)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("restore"))
        })
        .cloned()
        .collect();
    assert!(
        restores
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains("env:OLD_EFS_PART")),
        "{restores:?}"
    );

    // With the server stopped, into a data dir that has a passphrase part of its own: its
    // passphrase from EFS_PASSPHRASE (or the first line), the backup's from
    // EFS_BACKUP_PASSPHRASE (or the next line). Without a server, efsctl gave the backup's
    // parts no prompt, and EFS_PASSPHRASE was read for both.
    let c_dir = Arc::new(new_tempdir());
    let c_pass = "the new data dir's own passphrase";
    let mut c = TestServer::start_in(
        c_dir.clone(),
        &["--key-part", "passphrase"],
        &[("EFS_PASSPHRASE", c_pass)],
    );
    c.stop().await;
    std::fs::copy(&a_file, c.dir.path().join("old.keypart")).unwrap();
    let offline = |fs: &str, envs: &[(&str, &str)], stdin: &str| {
        use std::io::Write as _;
        let mut cmd = std::process::Command::new(EFSCTL_BIN);
        cmd.current_dir(c.dir.path())
            .arg("--data")
            .arg(&c.data)
            .args(["--key-part", "passphrase", "restore", "--fs", fs, "-i"])
            .arg(&dest)
            .args(["--backup-key-part", "env:OLD_EFS_PART"])
            .args(["--backup-key-part", "file:old.keypart"])
            .args(["--backup-key-part", "passphrase"])
            .env_remove("EFS_DATA")
            .env_remove("EFS_PASSPHRASE")
            .env_remove("EFS_BACKUP_PASSPHRASE")
            .env("OLD_EFS_PART", env_part)
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = offline(
        "from-env",
        &[
            ("EFS_PASSPHRASE", c_pass),
            ("EFS_BACKUP_PASSPHRASE", passphrase),
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let out = offline("piped", &[], &format!("{c_pass}\n{passphrase}\n"));
    assert!(out.status.success(), "{out:?}");
    // Only this data dir's passphrase given: the backup's is said to be missing, not short.
    let out = offline("missing", &[("EFS_PASSPHRASE", c_pass)], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reading --backup-key-part") && err.contains("no passphrase given"),
        "{err}"
    );
    let mut c = TestServer::start_in(
        c_dir.clone(),
        &["--key-part", "passphrase"],
        &[("EFS_PASSPHRASE", c_pass)],
    );
    let list = c.efsctl_ok(&["list-fs"]);
    assert!(
        list.contains("from-env") && list.contains("piped") && !list.contains("missing"),
        "{list}"
    );
    let key = c.create_user("reader", &["piped"], true);
    let token = c.login("reader", &key, Some("piped")).await;
    for (path, body) in &files {
        let (status, got) = c.get(path, &token).await;
        assert_eq!((status, &got), (200, body), "{path}");
    }
    c.stop().await;
}

/// `efsctl create-user` checks the name before it writes a key pair named after it: a name
/// with `../` wrote `../../x_ed25519` (a path from an unchecked name) before the server
/// refused it, and left the keys behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_user_checks_the_name_before_writing_a_key() {
    let s = session(&[]).await;
    let srv = s.srv;
    let out = srv.efsctl(&["create-user", "../escaped", "--fs", "files"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("user"), "{err}");
    let parent = srv.dir.path().parent().unwrap();
    for suffix in ["_ed25519", "_ed25519.pem", "_ed25519.pub"] {
        let p = parent.join(format!("escaped{suffix}"));
        assert!(!p.exists(), "{} written", p.display());
    }
    // The name the audit log records the server's own gc and key rotation under is refused
    // as a malformed one is (same exit code), before a key is written: a user named so mixed
    // with them in `audit show --user efs-server`.
    let reserved = srv.efsctl(&["create-user", "efs-server", "--fs", "files"]);
    assert_eq!(reserved.status.code(), out.status.code(), "{reserved:?}");
    let err = String::from_utf8_lossy(&reserved.stderr);
    assert!(
        err.contains("the user name 'efs-server' is reserved"),
        "{err}"
    );
    let users = srv.efsctl_ok(&["list-users"]);
    assert!(!users.contains("efs-server"), "{users}");
    let left: Vec<_> = std::fs::read_dir(srv.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("ed25519"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A user created with another user's public key: allowed, with a warning naming them.
    let pub_path = srv.dir.path().join("shared.pub");
    std::fs::write(&pub_path, format!("{} x\n", openssh_public_line(&s.key))).unwrap();
    let said = srv.efsctl_ok(&[
        "create-user",
        "app-twin",
        "--fs",
        "files",
        "--pubkey",
        pub_path.to_str().unwrap(),
    ]);
    assert!(
        said.contains("WARNING: user(s) app have the same public key"),
        "{said}"
    );
    // With --json too, on standard error (it was printed nowhere).
    let out = srv.efsctl(&[
        "--json",
        "create-user",
        "app-triplet",
        "--fs",
        "files",
        "--pubkey",
        pub_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARNING: user(s) app, app-twin have the same public key"),
        "{err}"
    );
    serde_json::from_slice::<Value>(&out.stdout).expect("standard output stays one JSON value");
}

/// A key pair `efsctl create-user` generates is kept only when the server creates the user:
/// refused (an unknown filesystem), it is removed again. `--json` keeps standard output one
/// JSON value (the key pair's description goes to standard error), and `--out` inside the
/// data dir is refused before a private key lands beside the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_user_keeps_a_generated_key_only_for_a_created_user() {
    let s = session(&[]).await;
    let srv = s.srv;
    let key_files = |stem: &str| {
        ["", ".pem", ".pub"].map(|suffix| srv.dir.path().join(format!("{stem}{suffix}")))
    };

    let out = srv.efsctl(&["create-user", "nobody-fs", "--fs", "missing"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing"), "{err}");
    for p in key_files("nobody-fs_ed25519") {
        assert!(!p.exists(), "{} left behind by a refused user", p.display());
    }

    let out = srv.efsctl(&["create-user", "scripted", "--fs", "files", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {out:?}"));
    assert!(v.is_object() || v.is_null(), "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripted_ed25519"), "{err}");
    for p in key_files("scripted_ed25519") {
        assert!(p.exists(), "{} not written", p.display());
    }
    // The private key and its PEM are the account's only; the public key is for anyone
    // (0644, whatever efsctl's umask of 077 would make of it).
    let modes = key_files("scripted_ed25519").map(|p| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    });
    assert_eq!(modes, [0o600, 0o600, 0o644]);

    let inside = srv.data.join("keys-here");
    let out = srv.efsctl(&[
        "create-user",
        "inside",
        "--fs",
        "files",
        "--out",
        inside.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inside the data dir"), "{err}");
    assert!(!inside.exists());
    let users = srv.efsctl_ok(&["list-users"]);
    assert!(!users.contains("inside"), "{users}");
    assert!(!users.contains("nobody-fs"), "{users}");
}

/// The key pair `efsctl create-user` generates is durable before the request is sent (file
/// and directory fsynced: the user row is durable, and a power cut left a user with an empty
/// private key), seen with strace where it runs. A request certainly never delivered (no
/// server, and the data dir did not open) removes the key pair: it was kept as "could not
/// tell whether the user was created", and the next try refused to overwrite it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_user_syncs_its_generated_key_and_removes_it_when_never_delivered() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    let dir = srv.dir.path().canonicalize().unwrap();
    let key_files =
        |stem: &str| ["", ".pem", ".pub"].map(|suffix| dir.join(format!("{stem}{suffix}")));

    let traced = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=none", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if traced {
        let trace = dir.join("create-user.trace");
        let cmd = srv.efsctl_command(&["create-user", "traced", "--fs", "files"]);
        let mut strace = std::process::Command::new("strace");
        strace
            .args(["-f", "-y", "-e", "trace=fsync,connect", "-o"])
            .arg(&trace)
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .current_dir(cmd.get_current_dir().unwrap())
            .stdin(std::process::Stdio::null());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => strace.env(k, v),
                None => strace.env_remove(k),
            };
        }
        let out = strace.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let trace = std::fs::read_to_string(&trace).unwrap();
        let lines: Vec<&str> = trace.lines().collect();
        let sent = lines
            .iter()
            .position(|l| l.contains("connect(") && l.contains("admin.sock"))
            .unwrap_or_else(|| panic!("no connect to the admin socket:\n{trace}"));
        let mut wanted: Vec<std::path::PathBuf> = key_files("traced_ed25519").into();
        wanted.push(dir.clone());
        for p in wanted {
            let at = lines
                .iter()
                .position(|l| l.contains("fsync(") && l.contains(&format!("<{}>)", p.display())));
            assert!(
                at.is_some_and(|at| at < sent),
                "{} not fsynced before the request was sent:\n{trace}",
                p.display()
            );
        }
    } else {
        eprintln!("strace cannot trace here: the fsync of the generated key is not checked");
    }

    srv.stop().await.expect("the server was running");
    // No server, and a key part that does not open the data dir: never delivered.
    let wrong = dir.join("wrong.keypart");
    efs_core::keyparts::generate_part_file(&wrong).unwrap();
    let wrong = format!("file:{}", wrong.display());
    let out = srv.efsctl(&[
        "--key-part",
        &wrong,
        "create-user",
        "offline",
        "--fs",
        "files",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not delivered"), "{err}");
    for p in key_files("offline_ed25519") {
        assert!(
            !p.exists(),
            "{} kept for a request never delivered",
            p.display()
        );
    }
    // So the same command with the right parts goes through, with a new key pair.
    let out = srv.efsctl(&["create-user", "offline", "--fs", "files"]);
    assert!(out.status.success(), "{out:?}");
    for p in key_files("offline_ed25519") {
        assert!(p.exists(), "{} not written", p.display());
    }
    let users = srv.efsctl_ok(&["list-users"]);
    assert!(users.contains("offline"), "{users}");
}

/// A shutdown waits for an admin command that is running, so that its audit entry is written
/// before the log closes. Here a restore reads a backup whose `manifest.json` is a FIFO: it
/// blocks inside the command until the test writes to it, after SIGTERM. Before, the log
/// closed at once, and the command's entry was refused ("the audit log has failed … the
/// command itself failed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_running_admin_command_and_records_it() {
    use std::io::Write;
    let s = session(&[]).await;
    let mut srv = s.srv;
    let (restore, mut writer) = restore_held_on_a_fifo(&srv).await;
    srv.terminate();
    // The shutdown has begun: the connections go, the HTTPS port stops answering.
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer.write_all(b"not a manifest").unwrap();
    drop(writer);
    let out = restore.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("malformed"), "{err}");
    assert!(!err.to_lowercase().contains("audit"), "{err}");
    let status = srv.stop().await.expect("the server was running");
    assert!(status.success(), "{status:?}\n{}", srv.stderr());
    // Offline now: the restore's closing entry (not only its 202 at the start) is in the log.
    let me = format!("uid:{}", rustix::process::geteuid().as_raw());
    let shown = srv.efsctl_ok(&["audit", "show", "--json", "--user", &me]);
    let statuses: Vec<u64> = serde_json::from_str::<Value>(&shown)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("restore"))
        })
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses.len(), 2, "{shown}");
    assert!(statuses.contains(&202), "{shown}");
}

/// The server keeps its memory (every key layer, decrypted content) out of core files: its
/// core-size limit is 0, soft and hard (it is also made non-dumpable, which a test running as
/// root cannot tell apart).
#[tokio::test]
async fn the_server_writes_no_core_file() {
    let srv = TestServer::start(&[]);
    let pid = srv.pid().expect("running");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_else(|| panic!("{limits}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{line}");
}

/// Every file and directory the server and efsctl make in the data dir is their account's
/// only (umask 077): indexes, blobs, audit files and the key files were 0644 and 0755 inside
/// the 0700 data dir, readable by every local account once the data dir was opened up (a
/// `chmod`, a copy, a volume's defaults); a start on such a data dir warns (from a review
/// of authorization).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_private_and_a_start_warns_when_it_is_not() {
    use std::os::unix::fs::PermissionsExt;
    let s = session(&[]).await;
    let mut srv = s.srv;
    srv.put_ok("/small", &s.token, pattern(10, 1)).await;
    srv.put_ok("/large", &s.token, pattern(300_000, 2)).await;
    srv.efsctl_ok(&["create-fs", "second"]);
    srv.stop().await;
    let mut todo = vec![srv.data.clone()];
    let mut seen = 0;
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.file_type().is_socket() {
                continue;
            }
            let mode = m.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:04o}", e.path().display());
            seen += 1;
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    assert!(seen > 10, "{seen} files and directories");
    assert!(!srv.stderr().contains("open to other accounts"));
    std::fs::set_permissions(&srv.data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let again = TestServer::start_in(srv.dir.clone(), &[], &[]);
    // Logged before it listens, on stderr, which is read apart from stdout: waited for.
    again
        .stderr_when(|e| e.contains("is open to other accounts (mode 0755)"))
        .await;
}

/// `efsctl rotate-signing-key`: refused while the server runs (the new key would take effect
/// only at its next start, silently); with the server stopped, a new key: tokens signed
/// before are refused after the restart, the server identity changes as printed, logins
/// work, and the audit log has both attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_signing_key_refuses_old_tokens_and_changes_the_identity() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    srv.put_ok("/a.txt", &s.token, b"kept".to_vec()).await;
    let old_id = srv.server_id.clone();

    let out = srv.efsctl(&["rotate-signing-key"]);
    assert!(!out.status.success(), "refused while the server runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop it first"), "{err}");
    assert_eq!(
        srv.get_ok("/a.txt", &s.token).await,
        b"kept",
        "token still good"
    );

    srv.stop().await;
    let said = srv.efsctl_ok(&["rotate-signing-key"]);
    assert!(said.contains(&old_id), "{said}");
    // The system database changed: its new digest anchor is printed to note, as
    // accept-system prints it (it was not).
    assert!(
        said.contains("system database digest: generation ")
            && said.contains("(note them outside the data dir)"),
        "{said}"
    );
    let json: Value =
        serde_json::from_str(&srv.efsctl_ok(&["--json", "rotate-signing-key"])).expect("JSON");
    let newest = json["server_id"].as_str().expect("server_id").to_owned();
    assert_ne!(newest, old_id);
    assert!(
        json["system_digest"]["anchor"].is_string() && json["system_digest"]["generation"].is_u64(),
        "{json}"
    );

    let srv2 = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert_eq!(
        srv2.server_id, newest,
        "the identity printed is the server's"
    );
    let (status, _) = srv2.get("/a.txt", &s.token).await;
    assert_eq!(status, 401, "a token signed with the old key");
    let token = srv2.login(&s.user, &s.key, None).await;
    assert_eq!(srv2.get_ok("/a.txt", &token).await, b"kept");

    // Refused (400) by the running server; then each run recorded as it starts (202) and
    // with the identities it ended with (200).
    let log = srv2.efsctl_ok(&["audit", "show"]);
    let statuses: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rotate-signing-key"))
        .map(|l| {
            ["  400  ", "  202  ", "  200  "]
                .into_iter()
                .find(|s| l.contains(s))
                .unwrap_or(l)
        })
        .collect();
    assert_eq!(
        statuses,
        ["  400  ", "  202  ", "  200  ", "  202  ", "  200  "],
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("  200  ") && l.contains(&newest) && !l.contains(&old_id)),
        "the last run's entry names the identity it made: {log}"
    );
}

/// `efsctl rotate-tls-key` (the generated TLS key had no command to replace it: after a
/// leak, only a certificate of the operator's own): refused while the server runs; with the
/// server stopped, the generated key and certificate are removed with the old fingerprint
/// printed, the next start serves a new key whose certificate is written to
/// system/tls-cert.pem again; curl with the old certificate is refused, with the new one
/// served; the audit log records the old fingerprint; a second run before a start has
/// nothing to remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_tls_key_serves_a_new_generated_key_at_the_next_start() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    srv.put_ok("/a.txt", &s.token, b"kept".to_vec()).await;
    let old = srv.fingerprint.clone();
    let pem = srv.data.join("system/tls-cert.pem");
    let old_pem = srv.dir.path().join("old-cert.pem");
    std::fs::copy(&pem, &old_pem).unwrap();

    let out = srv.efsctl(&["rotate-tls-key"]);
    assert!(!out.status.success(), "refused while the server runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop it first"), "{err}");
    assert!(pem.exists());

    srv.stop().await;
    let json: Value =
        serde_json::from_str(&srv.efsctl_ok(&["--json", "rotate-tls-key"])).expect("JSON");
    assert_eq!(json["old_tls_cert_sha256"], old.as_str(), "{json}");
    assert!(json["system_digest"]["generation"].is_u64(), "{json}");
    assert!(!pem.exists(), "the old certificate file is left");
    let out = srv.efsctl(&["rotate-tls-key"]);
    assert!(!out.status.success(), "a second run removed something");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to replace"), "{err}");

    let srv2 = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert_ne!(srv2.fingerprint, old);
    assert!(pem.exists());
    assert_ne!(
        std::fs::read(&pem).unwrap(),
        std::fs::read(&old_pem).unwrap()
    );
    let token = srv2.login(&s.user, &s.key, None).await;
    assert_eq!(srv2.get_ok("/a.txt", &token).await, b"kept");
    // curl, as a client told the old certificate and then the new one.
    let curl = |ca: &std::path::Path| {
        std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(ca)
            .arg(srv2.url("/_efs/health"))
            .output()
            .unwrap()
    };
    let refused = curl(&old_pem);
    assert!(
        !refused.status.success(),
        "the old certificate was still trusted"
    );
    let served = curl(&pem);
    assert!(
        served.status.success() && served.stdout == b"200",
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );

    // The refusal (400), the run as it started (202) and as it ended with the old
    // fingerprint (200), and the second run's failure (500).
    let log = srv2.efsctl_ok(&["audit", "show", "--action", "admin"]);
    let runs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rotate-tls-key"))
        .collect();
    assert_eq!(runs.len(), 5, "{log}");
    assert!(runs[0].contains("  400  "), "{log}");
    assert!(
        runs.iter()
            .any(|l| l.contains("  200  ") && l.contains(&old)),
        "the entry names the old fingerprint: {log}"
    );
}

/// The generated certificate names the address the server listens on and every
/// `--tls-name` (it named only localhost, 127.0.0.1, ::1 and the host name, so `curl
/// --cacert tls-cert.pem` and `efs remote add --ca` failed against `--listen 127.0.0.2:…` or a
/// DNS name; black-box review); a name added after the certificate was made is warned about
/// at the start, and `rotate-tls-key` makes one with it.
#[tokio::test]
async fn the_generated_certificate_names_the_listen_address_and_tls_names() {
    let dir = std::sync::Arc::new(new_tempdir());
    let srv = TestServer::start_in(
        dir.clone(),
        &[
            "--listen",
            "127.0.0.2:0",
            "--tls-name",
            "efs.test,192.0.2.7",
        ],
        &[],
    );
    assert_eq!(srv.addr.ip().to_string(), "127.0.0.2");
    let pem = srv.data.join("system/tls-cert.pem");
    let port = srv.addr.port();
    // curl, trusting the generated certificate, by each name (connecting to 127.0.0.2).
    let curl = |url_host: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&pem)
            .arg("--connect-to")
            .arg(format!("{url_host}:{port}:127.0.0.2:{port}"))
            .arg(format!("https://{url_host}:{port}/_efs/health"))
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for host in ["127.0.0.2", "efs.test", "192.0.2.7", "localhost"] {
        let (code, err) = curl(host);
        assert_eq!(code, "200", "{host}: {err}");
    }
    let (code, err) = curl("other.test");
    assert_ne!(
        code, "200",
        "a name not in the certificate was accepted: {err}"
    );
    let mut srv = srv;
    srv.stop().await;

    // A name added later: the old certificate lacks it, and the start says so.
    let again = TestServer::start_in(
        dir.clone(),
        &["--listen", "127.0.0.2:0", "--tls-name", "later.test"],
        &[],
    );
    let said = again.stdout();
    assert!(
        said.contains("does not name later.test") && said.contains("rotate-tls-key"),
        "{said}"
    );
    let mut again = again;
    again.stop().await;
    again.efsctl_ok(&["rotate-tls-key"]);
    let fresh = TestServer::start_in(
        dir.clone(),
        &["--listen", "127.0.0.2:0", "--tls-name", "later.test"],
        &[],
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&pem)
        .arg("--connect-to")
        .arg(format!("later.test:{0}:127.0.0.2:{0}", fresh.addr.port()))
        .arg(format!(
            "https://later.test:{}/_efs/health",
            fresh.addr.port()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad name is refused at the start.
    let bad = std::process::Command::new(SERVER_BIN)
        .args(["--tls-name", "not a name", "--data"])
        .arg(dir.path().join("unused"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("neither an IP address nor a DNS name"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// Regression: `efsctl --version` said `efs-server 0.1.0` (clap took the package's name).
/// Each binary names itself.
#[test]
fn each_binary_names_itself_in_its_version() {
    for (bin, name) in [(EFSCTL_BIN, "efsctl"), (SERVER_BIN, "efs-server")] {
        let out = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin} --version");
        assert_eq!(
            text.split_whitespace().next(),
            Some(name),
            "{bin} --version: {text}"
        );
    }
}

/// `efsctl bind-cert USER --cert|--sha256` through a server started without `--client-ca`
/// is refused, saying to start it with one: it was saved, and from then on every login of
/// the user failed (401), as no connection could present a certificate. Without a server
/// (efsctl cannot know the flags the next one starts with), it is done with a warning; the
/// text of `list-users` shows the binding (only `--json` had `cert_bound`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_cert_is_refused_by_a_server_without_a_client_ca() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    let hash = "ab".repeat(32);
    let out = srv.efsctl(&["bind-cert", "app", "--sha256", &hash]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Start efs-server with --client-ca"),
        "the refusal says what to do: {err}"
    );
    let users = srv.efsctl_ok(&["list-users"]);
    assert!(!users.contains("client certificate"), "{users}");
    srv.login("app", &s.key, None).await;
    // Unbinding (nothing bound) is no danger and stays allowed.
    srv.efsctl_ok(&["bind-cert", "app", "--unbind"]);

    srv.stop().await;
    let out = srv.efsctl(&["bind-cert", "app", "--sha256", &hash]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("--client-ca") && err.contains("certificate"),
        "{err}"
    );
    let users = srv.efsctl_ok(&["list-users"]);
    let line = users.lines().find(|l| l.starts_with("app\t")).unwrap();
    assert!(line.contains("client certificate bound"), "{users}");
    let json: Value = serde_json::from_str(&srv.efsctl_ok(&["--json", "list-users"])).unwrap();
    assert_eq!(json[0]["cert_bound"], true, "{json}");
}

/// `efsctl backup -o DEST` refuses a DEST inside the data dir (beside the data it copies, in
/// every copy of the data dir, and where the server keeps its own files), as `create-user
/// --out` does: it wrote the backup there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_into_the_data_dir_is_refused() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    srv.put_ok("/a.txt", &s.token, b"a".to_vec()).await;
    let inside = [
        srv.data.join("fs").join("inside"),
        srv.data.join("system").join("audit").join("bk"),
        srv.data.join("new").join("deeper"),
    ];
    for dest in &inside {
        let out = srv.efsctl(&["backup", "--fs", "files", "-o", dest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("inside the data dir"), "{err}");
        assert!(!dest.exists(), "{} written", dest.display());
    }
    assert!(!srv.data.join("new").exists());
    srv.stop().await;
    let out = srv.efsctl(&["backup", "--fs", "files", "-o", inside[0].to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "without a server too: {out:?}");
    assert!(!inside[0].exists());
    let outside = srv.dir.path().join("bk");
    srv.efsctl_ok(&["backup", "--fs", "files", "-o", outside.to_str().unwrap()]);
}

/// Every `--json` answer is an object with what the text says: `grant`, `revoke`,
/// `delete-user`, `bind-cert` and `cache-clear` printed `null`, `health` printed `ok`,
/// `rekey-starter` plain text, `create-fs` no id, `restore` neither the backup's date nor
/// its MAC (which its text prints, to compare with the MAC `backup` printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_answers_are_objects_with_what_the_text_says() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    srv.put_ok("/a.txt", &s.token, b"a".to_vec()).await;
    let json = |srv: &TestServer, args: &[&str]| -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = srv.efsctl_ok(&all);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("efsctl {args:?} --json: {e}: {out}"));
        assert!(v.is_object(), "efsctl {args:?} --json: {v}");
        v
    };
    // Every command that changes the system database gives its new digest to note, in the
    // answer as in status's (a copy of the database from before a revoke, put back, would
    // give the access back): grant, revoke, bind-cert, create-fs and restore as a new
    // filesystem did not, create-user and delete-user did.
    let generation = |v: &Value| -> u64 {
        assert!(v["system_digest"]["anchor"].is_string(), "{v}");
        v["system_digest"]["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("no system_digest: {v}"))
    };
    let v = json(&srv, &["create-fs", "more"]);
    assert_eq!(v["name"], "more");
    let listed = srv.efsctl_ok(&["list-fs"]);
    let id = v["id"].as_str().expect("id");
    assert!(listed.contains(&format!("more\t{id}")), "{listed}");
    let mut last = generation(&v);

    let v = json(&srv, &["grant", "app", "--fs", "more", "--read-only"]);
    assert_eq!(
        (&v["user"], &v["fs"], &v["read_only"]),
        (&"app".into(), &"more".into(), &true.into())
    );
    assert!(generation(&v) > last, "{v}");
    last = generation(&v);
    let v = json(&srv, &["revoke", "app", "--fs", "more"]);
    assert_eq!((&v["user"], &v["fs"]), (&"app".into(), &"more".into()));
    assert!(generation(&v) > last, "{v}");
    last = generation(&v);
    let text = srv.efsctl_ok(&["revoke", "app"]);
    assert!(
        text.contains("Revoked every token of 'app'")
            && text.contains("system database digest: generation ")
            && text.contains("(note them outside the data dir)"),
        "{text}"
    );
    let v = json(&srv, &["revoke", "app"]);
    assert_eq!((&v["user"], &v["fs"]), (&"app".into(), &Value::Null));
    assert!(generation(&v) > last, "{v}");
    srv.create_user("temp", &["more"], false);
    let v = json(&srv, &["delete-user", "temp"]);
    assert_eq!((&v["user"], &v["deleted"]), (&"temp".into(), &true.into()));
    let deleted_at = generation(&v);
    let key_file = srv.dir.path().join("temp2.pub");
    std::fs::write(
        &key_file,
        format!("{} t@temp2\n", openssh_public_line(&new_signing_key())),
    )
    .unwrap();
    let v = json(
        &srv,
        &[
            "create-user",
            "temp2",
            "--pubkey",
            key_file.to_str().unwrap(),
            "--fs",
            "more",
        ],
    );
    let created_at = v["system_digest"]["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no system_digest: {v}"));
    assert!(created_at > deleted_at, "{v}");
    let text = srv.efsctl_ok(&["delete-user", "temp2"]);
    assert!(
        text.contains("system database digest: generation ")
            && text.contains("(note them outside the data dir)"),
        "{text}"
    );
    let v = json(&srv, &["bind-cert", "app", "--unbind"]);
    assert_eq!(
        (&v["user"], &v["cert_bound"]),
        (&"app".into(), &false.into())
    );
    assert!(generation(&v) > created_at, "{v}");
    let bound_at = generation(&v);
    let v = json(&srv, &["cache-clear"]);
    assert_eq!(v["cleared"], true, "{v}");
    assert!(
        v["cache_bytes"].is_u64() && v["path_lookups"].is_u64(),
        "{v}"
    );
    let v = json(&srv, &["health"]);
    assert_eq!(v["status"], "ok");

    let dest = srv.dir.path().join("bk");
    let backed = json(
        &srv,
        &["backup", "--fs", "files", "-o", dest.to_str().unwrap()],
    );
    let mac = backed["mac"].as_str().expect("the backup's MAC").to_owned();
    let text = srv.efsctl_ok(&["restore", "--fs", "back", "-i", dest.to_str().unwrap()]);
    assert!(
        text.contains(" taken at 20") && text.contains(&format!("MAC {}", &mac[..32])),
        "{text}"
    );
    let v = json(
        &srv,
        &["restore", "--fs", "back2", "-i", dest.to_str().unwrap()],
    );
    assert_eq!(
        (&v["fs"], &v["authenticated"], &v["left_out"]),
        (&"back2".into(), &true.into(), &0.into())
    );
    assert_eq!(v["mac"].as_str(), Some(&mac[..32]), "{v}");
    let taken = v["taken_at"].as_str().expect("taken_at");
    assert!(text.contains(&format!(" taken at {taken}:")), "{v} {text}");
    // "back" restored before it (a new filesystem too), so after the unbind above.
    assert!(generation(&v) > bound_at + 1, "{v}");

    srv.stop().await;
    let v = json(&srv, &["cache-clear"]);
    assert_eq!(v["cleared"], false, "{v}");
    let new_part = srv.dir.path().join("new.keypart");
    efs_core::keyparts::generate_part_file(&new_part).unwrap();
    let spec = format!("file:{}", new_part.display());
    let v = json(&srv, &["rekey-starter", "--new-key-part", &spec]);
    assert_eq!(v["done"], true, "{v}");
    assert!(v["lines"].as_array().is_some_and(|l| !l.is_empty()), "{v}");
}

/// Bad usage exits 2, as `efsctl --help` says (it exited 1): an `audit show --limit` out of
/// range, an `--expect-head` that is not `SEQ:MAC`, `bind-cert` with neither `--cert`,
/// `--sha256` nor `--unbind`, a `--sha256` that is not 64 hex digits, a user or filesystem
/// name no data dir accepts, an `audit show` path, action or status that can match nothing.
#[test]
fn usage_errors_exit_2() {
    let dir = new_tempdir();
    let data = dir.path().join("d");
    for args in [
        &["audit", "show", "--limit", "0"][..],
        &["audit", "show", "--limit", "100001"],
        &["audit", "verify", "--expect-head", "garbage"],
        &["audit", "verify", "--expect-head", "12:abcd"],
        &["bind-cert", "alice"],
        &["bind-cert", "alice", "--sha256", "abcd"],
        &["bind-cert", "alice", "--sha256", &"zz".repeat(32)],
        // Names and filters no data dir accepts (they exited 1, checked by the server).
        &["create-fs", ".hidden"],
        &["create-user", ".hidden", "--fs", "a"],
        &["create-user", "efs-server", "--fs", "a"],
        &["create-user", "alice", "--fs", "a", "--fs", "bad name"],
        &["restore", "--fs", "bad name", "-i", "/nonexistent"],
        &["grant", "alice", "--fs", "a/b"],
        &["revoke", "bad name"],
        &["delete-user", ""],
        &["fsck", "--fs", &"x".repeat(65)],
        &["audit", "show", "--path", "/a/../x"],
        &["audit", "show", "--action", "read,bogus"],
        &["audit", "show", "--status", "99x"],
    ] {
        let out = std::process::Command::new(EFSCTL_BIN)
            .arg("--data")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "efsctl {args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "efsctl {args:?} says why");
    }
}

/// What efsctl says when refusing names the real problem, once: `create-user --out` onto an
/// existing file said "(use --out)" although --out was given; a bad `--pubkey` said "not an
/// Ed25519 public key" twice; `revoke --fs` of a filesystem that does not exist said the
/// user had no grant on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn efsctl_refusals_name_the_problem_once() {
    let s = session(&[]).await;
    let srv = s.srv;
    let taken = srv.dir.path().join("alice");
    std::fs::write(&taken, "mine").unwrap();
    let out = srv.efsctl(&[
        "create-user",
        "carol",
        "--fs",
        "files",
        "--out",
        taken.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("choose another --out or remove it"), "{err}");
    assert!(!err.contains("(use --out)"), "{err}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"mine");
    // The same user made twice: the key file of the first is what is in the way, and the
    // refusal says where to look (it named only --out, which then met "user exists").
    let key = srv.dir.path().join("dave_key");
    let args = [
        "create-user",
        "dave",
        "--fs",
        "files",
        "--out",
        key.to_str().unwrap(),
    ];
    srv.efsctl_ok(&args);
    let out = srv.efsctl(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("made for dave before? efsctl list-users shows whether dave exists"),
        "{err}"
    );

    let bad = srv.dir.path().join("bad.pub");
    std::fs::write(&bad, "hello\n").unwrap();
    let out = srv.efsctl(&[
        "create-user",
        "carol",
        "--fs",
        "files",
        "--pubkey",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("Ed25519 public key").count(), 1, "{err}");
    assert_eq!(err.matches("expected").count(), 1, "{err}");
    assert!(err.contains(bad.to_str().unwrap()), "{err}");

    let out = srv.efsctl(&["revoke", "app", "--fs", "nofs"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no filesystem named 'nofs'"), "{err}");
    srv.create_fs("other");
    let out = srv.efsctl(&["revoke", "app", "--fs", "other"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no grant on 'other'"), "{err}");
}

/// After losing the disk, the users are recreated from `efsctl list-users --json` kept
/// elsewhere: `create-user --pubkey` reads the key as that listing prints it (the base64 of
/// its 32 bytes, in a file with a newline), and the user logs in with the key it had. It
/// refused it ("not an Ed25519 public key"). The text listing shows the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_recreated_from_list_users_json() {
    let old = TestServer::start(&[]);
    old.create_fs("drive");
    let alice = old.create_user("alice", &["drive"], false);
    let bob = old.create_user("bob", &["drive"], true);
    let listing: Value = serde_json::from_str(&old.efsctl_ok(&["--json", "list-users"])).unwrap();
    let text = old.efsctl_ok(&["list-users"]);
    for u in listing.as_array().unwrap() {
        let (name, key) = (
            u["name"].as_str().unwrap(),
            u["public_key"].as_str().unwrap(),
        );
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("{name} is not listed: {text}"));
        assert!(line.split('\t').any(|c| c == key), "{line} / {key}");
    }
    drop(old);

    let new = TestServer::start(&[]);
    new.create_fs("drive");
    for u in listing.as_array().unwrap() {
        let name = u["name"].as_str().unwrap();
        let file = new.dir.path().join(format!("{name}.key"));
        std::fs::write(&file, format!("{}\n", u["public_key"].as_str().unwrap())).unwrap();
        let mut args = vec!["create-user", name, "--pubkey", file.to_str().unwrap()];
        for g in u["grants"].as_array().unwrap() {
            args.extend(["--fs", g["fs"].as_str().unwrap()]);
            if g["read_only"].as_bool().unwrap() {
                args.push("--read-only");
            }
        }
        let out = new.efsctl_ok(&args);
        assert!(out.contains(&format!("Created user '{name}'")), "{out}");
    }
    new.login("alice", &alice, None).await;
    new.login("bob", &bob, None).await;
}

/// A directory under `fs/` that no filesystem is registered under (what a create-fs or a
/// restore whose registration failed with an unknown outcome keeps) is harmless: the data
/// dir opens and serves the others, and the open names it for the operator.
#[tokio::test]
async fn a_directory_no_filesystem_is_registered_under_is_named_at_open() {
    let mut srv = TestServer::start(&[]);
    srv.create_fs("files");
    srv.stop().await;
    let stray = "00112233445566778899aabbccddeeff";
    std::fs::create_dir(srv.data.join("fs").join(stray)).unwrap();
    let (ok, text) = srv.efsctl_text(&["list-fs"]);
    assert!(ok, "{text}");
    assert!(text.contains("files\t"), "{text}");
    assert!(!text.contains(&format!("\t{stray}")), "{text}");
    assert!(
        text.contains("a directory no filesystem is registered under")
            && text.contains(&format!("fs/{stray}")),
        "{text}"
    );
}

/// The gc entries of the audit log (`efsctl gc` and the server's own), oldest first.
fn gc_entries(srv: &TestServer) -> Vec<Value> {
    audit_show(srv, &["--action", "admin"])
        .into_iter()
        .filter(|e| e["detail"].as_str().is_some_and(|d| d.starts_with("gc ")))
        .collect()
}

/// The data dir's one blob, and a copy of it under an id no record names (what a crash
/// between a delete's commit and its blob's removal leaves).
fn orphan_copy_of_the_blob(data: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let blobs: Vec<std::path::PathBuf> = all_files(&data.join("fs"))
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| {
            p.components().any(|c| c.as_os_str() == "blobs")
                && p.parent().and_then(|d| d.file_name()) != Some("tmp".as_ref())
        })
        .collect();
    assert_eq!(blobs.len(), 1, "one blob: {blobs:?}");
    let live = blobs[0].clone();
    let name_len = live.file_name().unwrap().len();
    let root = live.parent().unwrap().parent().unwrap().parent().unwrap();
    let orphan = root.join("ee").join("ee").join("e".repeat(name_len));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::copy(&live, &orphan).unwrap();
    (live, orphan)
}

/// `/metrics` showed nothing of gc: each filesystem's last successful run, automatic or
/// `efsctl gc` through the server, is now there (`efs_gc_last_run_timestamp_seconds`, Unix
/// seconds, and `efs_gc_last_blobs_removed`), with no series before the first run, and kept
/// across a restart with the automatic gc's schedule (`DATA/system/gc-last-runs`, which an
/// `efsctl gc` through the server now updates too). The automatic run's are checked in
/// `a_running_server_removes_orphans_by_itself`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_gc_of_each_filesystem_is_in_the_metrics() {
    let s = session(&["--gc-every", "0"]).await;
    let mut srv = s.srv;
    srv.put_ok("/scan.bin", &s.token, pattern(300_000, 3)).await;
    let m = metrics(&srv).await;
    assert!(gauge(&m, "efs_fs_key_term", "files").is_some(), "{m}");
    assert!(!m.contains("efs_gc_last"), "a gc before any ran: {m}");
    let (live, orphan) = orphan_copy_of_the_blob(&srv.data);
    let unix_secs = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let before = unix_secs().floor();
    let out = srv.efsctl_ok(&["gc", "--fs", "files", "--grace", "0"]);
    let after = unix_secs().ceil();
    assert!(out.contains("removed 1 orphan blobs"), "{out}");
    assert!(!orphan.exists() && live.exists());
    let m = metrics(&srv).await;
    let first = gauge(&m, "efs_gc_last_run_timestamp_seconds", "files").expect(&m);
    assert!(
        before <= first && first <= after,
        "{before} {first} {after}"
    );
    assert_eq!(
        gauge(&m, "efs_gc_last_blobs_removed", "files"),
        Some(1.0),
        "{m}"
    );
    // The next run's count replaces it.
    let out = srv.efsctl_ok(&["gc", "--fs", "files", "--grace", "0"]);
    assert!(out.contains("removed 0 orphan blobs"), "{out}");
    let m = metrics(&srv).await;
    let last = gauge(&m, "efs_gc_last_run_timestamp_seconds", "files").expect(&m);
    assert!(
        first <= last && last <= unix_secs().ceil(),
        "{first} {last}"
    );
    assert_eq!(
        gauge(&m, "efs_gc_last_blobs_removed", "files"),
        Some(0.0),
        "{m}"
    );
    srv.stop().await;
    let runs = std::fs::read_to_string(srv.data.join("system/gc-last-runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "{runs}");
    assert!(runs.ends_with(" 0\n"), "{runs}");
    let mut again = TestServer::start_in(srv.dir.clone(), &["--gc-every", "0"], &[]);
    let m = metrics(&again).await;
    assert_eq!(
        gauge(&m, "efs_gc_last_run_timestamp_seconds", "files"),
        Some(last),
        "{m}"
    );
    assert_eq!(
        gauge(&m, "efs_gc_last_blobs_removed", "files"),
        Some(0.0),
        "{m}"
    );
    again.stop().await;
}

/// The running server runs gc by itself (`--gc-every`, `--gc-grace`;
/// `admin_socket::gc_when_due`): an orphan blob found at the start (what a crash between a
/// delete's commit and its blob's removal leaves; here a copy of a live blob under an id no
/// record names, dated two hours back) is removed once the grace has passed after the
/// start, recorded as `gc` by `efs-server`, `automatic`, and logged; the live files stay
/// whole and fsck is clean. With `--gc-every 0` it never runs. When each filesystem last
/// ran it is kept across restarts: a server whose grace is longer than its time between
/// restarts still runs it once it is due (it never did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_removes_orphans_by_itself() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    let scan = pattern(300_000, 7);
    srv.put_ok("/patients/173/scan.bin", &s.token, scan.clone())
        .await;
    srv.put_ok("/patients/173/note.txt", &s.token, pattern(100, 8))
        .await;
    srv.stop().await;
    let (live, orphan) = orphan_copy_of_the_blob(&srv.data);
    let touched = std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&orphan)
        .status()
        .unwrap();
    assert!(touched.success());
    let out = srv.efsctl(&["fsck", "--fs", "files"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(" 1 orphan blobs"), "{text}");

    // Off: the orphan stays, and no gc is recorded.
    let mut off = TestServer::start_in(
        srv.dir.clone(),
        &["--gc-every", "0", "--gc-grace", "0"],
        &[],
    );
    assert!(
        off.stdout().contains("Automatic gc: off (--gc-every 0)"),
        "{}",
        off.stdout()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    off.stop().await;
    assert!(orphan.exists(), "gc ran with --gc-every 0");
    assert!(gc_entries(&srv).is_empty(), "{:#?}", gc_entries(&srv));

    // On: the first run comes --gc-grace seconds after the start (here at once), then one
    // an hour.
    let mut on = TestServer::start_in(
        srv.dir.clone(),
        &["--gc-every", "3600", "--gc-grace", "0"],
        &[],
    );
    assert!(
        on.stdout().contains(
            "Automatic gc: every 3600 s on each filesystem, the first 0 s after the start, keeping orphans younger than 0 s"
        ),
        "{}",
        on.stdout()
    );
    let err = on
        .stderr_when(|e| e.contains("automatic gc 'files': removed 1 orphan blobs"))
        .await;
    assert!(!orphan.exists(), "{err}");
    // In the metrics (the run is recorded before its warning is logged).
    let m = metrics(&on).await;
    assert_eq!(
        gauge(&m, "efs_gc_last_blobs_removed", "files"),
        Some(1.0),
        "{m}"
    );
    assert!(gauge(&m, "efs_gc_last_run_timestamp_seconds", "files").is_some_and(|t| t > 1.7e9));
    assert!(live.exists(), "gc removed the live blob: {err}");
    let token = on.login("app", &s.key, None).await;
    assert_eq!(on.get_ok("/patients/173/scan.bin", &token).await, scan);
    assert_eq!(
        on.get_ok("/patients/173/note.txt", &token).await,
        pattern(100, 8)
    );
    let fsck = on.efsctl_ok(&["fsck", "--fs", "files"]);
    assert!(
        fsck.contains(" 0 errors, 0 orphan blobs, 0 orphan inline"),
        "{fsck}"
    );
    on.stop().await;
    // One run, recorded when it started (202) and when it ended (200), with its grace,
    // after the start of the server it belongs to (a gc at once came before it).
    let r = gc_entries(&srv);
    let last_start = audit_show(&srv, &["--action", "admin"])
        .into_iter()
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("server-start "))
        })
        .map(|e| e["seq"].as_u64().unwrap())
        .max()
        .expect("server-start entries");
    assert!(
        r.iter().all(|e| e["seq"].as_u64().unwrap() > last_start),
        "a gc entry before its server's start (#{last_start}): {r:#?}"
    );
    let statuses: Vec<&Value> = r.iter().map(|e| &e["status"]).collect();
    assert_eq!(statuses, [202, 200], "{r:#?}");
    // What it removed is in its entry (it was only in the server's log).
    assert!(
        r[1]["detail"]
            .as_str()
            .unwrap()
            .contains("\"blobs_removed\":1"),
        "{r:#?}"
    );
    for e in &r {
        assert!(
            e["user"] == "efs-server" && e["client"] == "automatic" && e["fs"] == "files",
            "{e}"
        );
        assert!(
            e["detail"].as_str().unwrap().contains("\"grace_secs\":0"),
            "{e}"
        );
    }

    // Kept across restarts: the last run is recorded, and a server whose grace alone would
    // put its first run an hour away runs it at once, the interval (2 s) having passed.
    let runs = std::fs::read_to_string(srv.dir.path().join("d/system/gc-last-runs"))
        .expect("the last runs are kept");
    assert_eq!(runs.lines().count(), 1, "{runs}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut again = TestServer::start_in(
        srv.dir.clone(),
        &["--gc-every", "2", "--gc-grace", "3600"],
        &[],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gc_entries(&srv).len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "no gc within 30 s of a start whose last run was due: {:#?}",
            gc_entries(&srv)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    again.stop().await;
    let r = gc_entries(&srv);
    assert!(
        r[2..].iter().all(|e| e["detail"]
            .as_str()
            .unwrap()
            .contains("\"grace_secs\":3600")),
        "{r:#?}"
    );
}
