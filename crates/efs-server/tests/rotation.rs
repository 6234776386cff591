//! Key rotation end to end: `efsctl rotate-key` through the admin socket while a client
//! reads and writes, `efsctl status`, a restart, and a rotation with the server stopped.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn status_json(srv: &TestServer) -> Value {
    let out = srv.efsctl_ok(&["status", "--fs", "files", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("status --json prints JSON");
    v[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_key_while_serving_then_restart() {
    let s = session(&[]).await;
    let srv = s.srv;
    let token = s.token.clone();
    let mut files = BTreeMap::new();
    for i in 0..300u64 {
        let path = format!("/r/d{}/f{i}.bin", i % 5);
        let len = if i.is_multiple_of(30) {
            200_000
        } else {
            50 + i as usize
        };
        let data = pattern(len, i);
        srv.put_ok(&path, &token, data.clone()).await;
        files.insert(path, data);
    }
    let st = status_json(&srv);
    assert_eq!(st["current_term"], 1);
    assert_eq!(st["rotation"], Value::Null);
    // The running server's count: 300 file records and the directories /r and /r/d0..d4.
    assert_eq!(st["records_sealed"]["1"], 306, "{st}");
    assert_eq!(st["rotate_now"], false);

    // A client loop: reads of the files above, writes of its own, all must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let files = Arc::new(files);
    for t in 0..4u64 {
        let client = srv.client.clone();
        let base = srv.base.clone();
        let token = token.clone();
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
                let r = client
                    .get(format!("{base}{path}"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                match r {
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
                let body = pattern(if n.is_multiple_of(4) { 150_000 } else { 300 }, n * 100 + t);
                let r = client
                    .put(format!("{base}{wpath}"))
                    .bearer_auth(&token)
                    .body(body.clone())
                    .send()
                    .await;
                match r {
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
    tokio::time::sleep(Duration::from_millis(300)).await;

    // efsctl is a blocking child process: run it off the runtime's workers.
    let srv = Arc::new(srv);
    let s2 = srv.clone();
    let out = tokio::task::spawn_blocking(move || s2.efsctl_ok(&["rotate-key", "--fs", "files"]))
        .await
        .unwrap();
    assert!(out.contains("Added key term 2"), "{out}");
    let t0 = Instant::now();
    let st = loop {
        let s2 = srv.clone();
        let st = tokio::task::spawn_blocking(move || status_json(&s2))
            .await
            .unwrap();
        if st["rotation"]["state"] == "done" {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "rotation ends: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(st["current_term"], 2);
    assert_eq!(st["terms"], 2);
    assert_eq!(st["rotation"]["current_term"], 2);
    assert!(st["rotation"]["rewrapped"].as_u64().unwrap() >= 300, "{st}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        written.extend(r.unwrap());
    }
    eprintln!(
        "{} requests during the rotation, {} failed",
        requests.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no failed request");
    let text = srv.efsctl_ok(&["status", "--fs", "files"]);
    assert!(
        text.contains("current key term 2 (2 terms)") && text.contains("done"),
        "{text}"
    );
    let fsck = srv.efsctl_ok(&["fsck", "--fs", "files"]);
    assert!(fsck.contains(" 0 errors, 0 orphan blobs"), "{fsck}");

    // Restart: everything still reads.
    let mut srv = Arc::into_inner(srv).expect("no other reference");
    assert!(srv.stop().await.unwrap().success());
    // Stopped: efsctl rotates offline, to completion, before returning.
    let out = srv.efsctl_ok(&["rotate-key", "--fs", "files"]);
    assert!(out.contains("Added key term 3"), "{out}");
    assert!(out.contains("rotation done"), "{out}");
    let st = status_json(&srv);
    assert_eq!(st["current_term"], 3);
    assert_eq!(st["rotation"]["state"], "done");

    let srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let t = srv.login("app", &s.key, None).await;
    for (path, data) in files.iter().chain(written.iter()) {
        assert!(srv.get_ok(path, &t).await == *data, "{path} after restart");
    }
    let st = status_json(&srv);
    assert_eq!(st["current_term"], 3);
    assert_eq!(st["terms"], 3);
    srv.put_ok("/after.txt", &t, "after").await;
    assert_eq!(srv.get_ok("/after.txt", &t).await, b"after");
}

/// Counts of records sealed per key term survive a stop: the server stores what it counted
/// below a step when it stops, efsctl without a server when its command ends (before, both
/// were lost, and `status` after a restart showed the count of the last full step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_counts_are_stored_when_the_server_and_efsctl_stop() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    for i in 0..7u64 {
        srv.put_ok(&format!("/c/f{i}"), &s.token, pattern(10, i))
            .await;
    }
    assert_eq!(
        status_json(&srv)["records_sealed"]["1"],
        8,
        "7 files and /c"
    );
    srv.stop().await;
    // Read by efsctl without a server: what the stopped server stored.
    assert_eq!(status_json(&srv)["records_sealed"]["1"], 8);
    // A rotation by efsctl without a server reseals the 8 records under term 2.
    srv.efsctl_ok(&["rotate-key", "--fs", "files"]);
    let st = status_json(&srv);
    assert_eq!(st["current_term"], 2, "{st}");
    assert_eq!(st["records_sealed"]["2"], 8, "{st}");
}

/// Counts records as sealed under the current term of `files` until it has sealed `n`, with
/// the server stopped (what a long life of writes would leave; no test can seal 2^31).
async fn set_sealed(srv: &TestServer, n: u64) {
    let dd = srv.open_offline();
    let fs = dd.fs("files").expect("the filesystem is open");
    fs.set_current_term_seals_for_tests(n);
    dd.store_seal_counts().await.unwrap();
}

/// The running server starts a key rotation by itself once the current term has sealed half
/// of the 2^32 records AES-GCM with random nonces allows one key
/// (`admin_socket::rotate_when_due`, which looks at start and then once a minute), recorded
/// in the audit log as `rotate-key` by `efs-server`, `automatic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_rotates_a_term_that_sealed_half_its_limit() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    srv.put_ok("/before", &s.token, pattern(100, 1)).await;
    srv.stop().await;
    let rotations = |srv: &TestServer| -> Vec<Value> {
        let out = srv.efsctl_ok(&["audit", "show", "--json"]);
        let v: Value = serde_json::from_str(&out).expect("audit show --json prints JSON");
        v.as_array()
            .expect("an array of entries")
            .iter()
            .filter(|e| e.to_string().contains("rotate-key"))
            .cloned()
            .collect()
    };
    // One record short of half the limit: not due.
    set_sealed(&srv, efs_core::fs::SEAL_WARNING - 1).await;
    let st = status_json(&srv);
    assert_eq!(st["rotate_now"], false, "{st}");
    // At half the limit: the server rotates at start, by itself, and says so.
    set_sealed(&srv, efs_core::fs::SEAL_WARNING).await;
    let st = status_json(&srv);
    assert_eq!(st["rotate_now"], true, "{st}");
    assert!(rotations(&srv).is_empty(), "{:#?}", rotations(&srv));
    let mut again = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = status_json(&again);
        if st["current_term"] == 2 && st["rotation"]["state"] == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation: {st}\n{}",
            again.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    again
        .stderr_when(|e| e.contains("started a key rotation"))
        .await;
    // Log lines off a terminal are plain text (they carried colour codes into journald,
    // `docker logs` and files).
    assert!(!again.stderr().contains('\u{1b}'), "{:?}", again.stderr());
    let token = again.login("app", &s.key, None).await;
    assert_eq!(again.get_ok("/before", &token).await, pattern(100, 1));
    again.put_ok("/after", &token, pattern(10, 2)).await;
    again.stop().await;
    // One rotation: recorded when it started (202) and when it ended (200).
    let r = rotations(&srv);
    let statuses: Vec<&Value> = r.iter().map(|e| &e["status"]).collect();
    assert_eq!(statuses, [202, 200], "{r:#?}");
    for e in &r {
        assert!(
            e["user"] == "efs-server" && e["client"] == "automatic",
            "{e}"
        );
    }
    // The new term is not due.
    let st = status_json(&srv);
    assert_eq!(st["current_term"], 2, "{st}");
    assert_eq!(st["rotate_now"], false, "{st}");
}
