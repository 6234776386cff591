//! Erasing deleted files end to end (`efsctl retire-terms`): the documented sequence
//! (delete, rotate-key --wait while serving, stop, retire-terms --yes, start), what it
//! refuses, and what it leaves unreadable (an older backup made without --include-keys).

mod common;

use common::*;
use serde_json::Value;

fn fs_dir(srv: &TestServer) -> std::path::PathBuf {
    let fs = srv.data.join("fs");
    let mut dirs: Vec<_> = std::fs::read_dir(&fs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one filesystem");
    dirs.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retire_terms_erases_what_older_terms_sealed_and_keeps_the_rest() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    let token = s.token.clone();
    let small = pattern(300, 1);
    let big = pattern(300_000, 2);
    let secret = pattern(5_000, 3);
    srv.put_ok("/p/small.txt", &token, small.clone()).await;
    srv.put_ok("/p/big.bin", &token, big.clone()).await;
    srv.put_ok("/p/patient-173.pdf", &token, secret.clone())
        .await;
    let backup = srv.dir.path().join("backup-without-keys");
    srv.efsctl_ok(&["backup", "--fs", "files", "-o", backup.to_str().unwrap()]);
    let r = srv
        .req("DELETE", "/p/patient-173.pdf", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());

    // Refused while the server runs, naming what to do: exit 5, JSON with --json.
    let (ok, text) = srv.efsctl_text(&["retire-terms", "--fs", "files", "--yes"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("efs-server is running: stop it first"),
        "{text}"
    );
    let out = srv.efsctl(&["retire-terms", "--fs", "files", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["refused"], true, "{v}");
    assert_eq!(v["exit_code"], 5, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("stop it first"),
        "{v}"
    );

    // A listing cursor from before the retirement (one entry per page).
    let r = srv.req("GET", "/p/?limit=1", &token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    let old_cursor = page["next_cursor"].as_str().unwrap().to_owned();

    srv.efsctl_ok(&["rotate-key", "--fs", "files", "--wait"]);
    assert!(srv.stop().await.unwrap().success());

    // A staged index left by an interrupted retire-terms goes at the next open.
    let staged = fs_dir(&srv).join("index.redb.retire");
    std::fs::write(&staged, b"left by a crash").unwrap();

    // Without --yes: what it would do, exit 4, nothing retired; JSON with --json.
    let out = srv.efsctl(&["retire-terms", "--fs", "files"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        text.contains("would remove key term 1 of 'files'"),
        "{text}"
    );
    assert!(text.contains("--include-keys"), "{text}");
    assert!(text.contains("Nothing was retired"), "{text}");
    let out = srv.efsctl(&["retire-terms", "--fs", "files", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["would_retire"], serde_json::json!([1]), "{v}");
    assert_eq!(v["retired_terms"], serde_json::json!([]), "{v}");
    // No such filesystem: an error, exit 1 (JSON too).
    let out = srv.efsctl(&["retire-terms", "--fs", "nope", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["refused"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");
    assert!(
        !staged.exists(),
        "the stale staged index was removed at the open"
    );
    let st: Value =
        serde_json::from_str(&srv.efsctl_ok(&["status", "--fs", "files", "--json"])).unwrap();
    assert_eq!(st[0]["term_numbers"], serde_json::json!([1, 2]), "{st}");

    // With --json, the result carries its text in `message`, as the dry run does (it had
    // none).
    let v: Value =
        serde_json::from_str(&srv.efsctl_ok(&["retire-terms", "--fs", "files", "--yes", "--json"]))
            .unwrap();
    assert_eq!(v["retired_terms"], serde_json::json!([1]), "{v}");
    let message = v["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {v}"));
    assert!(message.contains("Retired key term 1 of 'files'"), "{v}");
    assert!(message.contains("To finish: efsctl rekey-starter"), "{v}");
    // Nothing left to retire: done already, exit 0.
    let out = srv.efsctl_ok(&["retire-terms", "--fs", "files", "--yes"]);
    assert!(out.contains("nothing to retire"), "{out}");
    assert!(out.contains("(term 1 was retired before)"), "{out}");
    let v: Value =
        serde_json::from_str(&srv.efsctl_ok(&["retire-terms", "--fs", "files", "--yes", "--json"]))
            .unwrap();
    assert_eq!(v["nothing_to_retire"], true, "{v}");
    let message = v["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {v}"));
    assert!(message.contains("(term 1 was retired before)"), "{v}");

    // Started again: everything live reads back, names and listings work, writes too.
    let mut srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let token = srv.login("app", &s.key, None).await;
    assert_eq!(srv.get_ok("/p/small.txt", &token).await, small);
    assert_eq!(srv.get_ok("/p/big.bin", &token).await, big);
    assert_eq!(srv.get("/p/patient-173.pdf", &token).await.0, 404);
    srv.put_ok("/p/new.txt", &token, b"after".to_vec()).await;
    assert_eq!(srv.get_ok("/p/new.txt", &token).await, b"after");
    // The cursor from before no longer opens: the message says to list from the start.
    let r = srv
        .req("GET", &format!("/p/?limit=1&cursor={old_cursor}"), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(
            "or list from the start (cursors from before a key retirement no longer open)"
        ),
        "{text}"
    );
    // In the order of their keys (keyed hashes), one per page: the cursors work.
    let mut names: Vec<String> = srv
        .list_all("/p/", &token, 1)
        .await
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["big.bin", "new.txt", "small.txt"]);
    let st: Value =
        serde_json::from_str(&srv.efsctl_ok(&["status", "--fs", "files", "--json"])).unwrap();
    assert_eq!(st[0]["term_numbers"], serde_json::json!([2]), "{st}");
    assert_eq!(st[0]["retired_terms"][0]["term"], 1, "{st}");
    let text = srv.efsctl_ok(&["status", "--fs", "files"]);
    assert!(text.contains("retired key terms: 1 (at "), "{text}");
    let audit = srv.efsctl_ok(&["audit", "show", "--action", "admin", "--fs", "files"]);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("retire-terms") && l.contains("\"retired_terms\":[1]")),
        "{audit}"
    );

    // The backup from before, without its keys, no longer restores: the term is named.
    let (ok, text) = srv.efsctl_text(&[
        "restore",
        "--fs",
        "restored",
        "-i",
        backup.to_str().unwrap(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("taken under key term 1, retired at"),
        "{text}"
    );
    let list = srv.efsctl_ok(&["list-fs"]);
    assert!(!list.contains("restored"), "{list}");

    // A later rotation gets a fresh number; the files stay readable.
    srv.efsctl_ok(&["rotate-key", "--fs", "files", "--wait"]);
    let st: Value =
        serde_json::from_str(&srv.efsctl_ok(&["status", "--fs", "files", "--json"])).unwrap();
    assert_eq!(st[0]["term_numbers"], serde_json::json!([2, 3]), "{st}");
    assert_eq!(srv.get_ok("/p/big.bin", &token).await, big);
    assert_eq!(srv.get_ok("/p/new.txt", &token).await, b"after");
    srv.stop().await;
}

/// An index on hold (an older copy put back, which could hold terms already retired) is
/// refused as such, exit 5 like the other refusals, naming what to do: it was exit 1 with
/// the bare hold error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_index_is_refused_naming_the_hold() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    srv.put_ok("/a.txt", &s.token, b"a".to_vec()).await;
    srv.efsctl_ok(&["rotate-key", "--fs", "files", "--wait"]);
    srv.stop().await;
    let index = fs_dir(&srv).join("index.redb");
    let copy = srv.dir.path().join("index-copy.redb");
    std::fs::copy(&index, &copy).unwrap();
    let mut srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let token = srv.login("app", &s.key, Some("files")).await;
    srv.put_ok("/b.txt", &token, b"b".to_vec()).await;
    // A clean stop records the later generation; the copy put back is below it.
    srv.stop().await;
    std::fs::copy(&copy, &index).unwrap();
    let out = srv.efsctl(&["retire-terms", "--fs", "files", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("'files' is on hold") && err.contains("--accept-index"),
        "{err}"
    );
}
