//! What the audit log records about requests and the server itself, end to end: a real
//! server, real logins and requests, entries read with `efsctl audit show --json`. (The
//! log's machinery — the budget, the chain, failing closed — is tested in audit.rs.)

mod common;

use common::*;
use serde_json::Value;

/// A path refused before the token is looked at (`/a/../b`, an encoded `/` or newline, a
/// reserved `/_efs/…`) is recorded with the user and filesystem of a valid token, past the
/// budget of callers who proved nobody (it was recorded with no user, and counted against
/// that budget: an insider's traversal attempts were invisible under `--user`). The answer
/// stays 400; without a token, or with a refused one, the entry still names nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_path_with_a_valid_token_names_the_caller() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    let targets = ["/a/../b", "/a%2F..%2Fb", "/a%0Ab", "/_efs/x"];
    // 40 of them: more than the 30 a minute the budget writes for an address.
    for round in 0..10 {
        for t in targets {
            let target = format!("{t}{round}");
            let r = srv.raw("GET", &target, Some(&s.token), b"").await;
            assert_eq!(r.status, 400, "{target}");
            assert_eq!(r.json()["error"], "invalid_path", "{target}");
        }
    }
    let r = srv.raw("GET", "/a/../nobody", None, b"").await;
    assert_eq!(r.status, 400);
    let r = srv
        .raw("GET", "/a/../forged", Some("forged.forged.forged"), b"")
        .await;
    assert_eq!(r.status, 400);
    srv.stop().await;

    let mine: Vec<Value> = audit_show(&srv, &["--user", &s.user])
        .into_iter()
        .filter(|e| e["status"] == 400)
        .collect();
    assert_eq!(mine.len(), 40, "{mine:#?}");
    for e in &mine {
        assert_eq!(e["fs"], s.fs.as_str(), "{e}");
        assert_eq!(e["detail"], "invalid_path", "{e}");
    }
    let all = audit_show(&srv, &[]);
    let anonymous: Vec<&Value> = all
        .iter()
        .filter(|e| e["status"] == 400 && e["user"].is_null())
        .collect();
    assert_eq!(anonymous.len(), 2, "{anonymous:#?}");
    // A refused token adds no entry of its own here (its path was refused first).
    assert!(
        all.iter().all(|e| e["action"] != "token-rejected"),
        "{all:#?}"
    );
}

/// A refresh with a refused token writes two entries, as docs/audit.md says of every request
/// with a refused token: `token-rejected` and the refresh's own `refresh-failed`, both with
/// the reason (and the user, for a token this server signed). Only `token-rejected` was
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_with_a_refused_token_writes_refresh_failed() {
    let s = session(&["--token-ttl", "1"]).await;
    let mut srv = s.srv;
    // Past the token's second (and the clock's granularity).
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = srv
        .req("POST", "/_efs/auth/refresh", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = srv
        .req("POST", "/_efs/auth/refresh", "forged.forged.forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    srv.stop().await;

    let entries = audit_show(&srv, &[]);
    let of = |action: &str| -> Vec<&Value> {
        entries.iter().filter(|e| e["action"] == action).collect()
    };
    let failed = of("refresh-failed");
    assert_eq!(failed.len(), 2, "{entries:#?}");
    assert_eq!(failed[0]["user"], s.user.as_str(), "{}", failed[0]);
    assert_eq!(failed[0]["fs"], s.fs.as_str(), "{}", failed[0]);
    assert_eq!(failed[0]["detail"], "token expired", "{}", failed[0]);
    assert_eq!(failed[0]["status"], 401);
    assert!(failed[1]["user"].is_null(), "{}", failed[1]);
    assert_eq!(failed[1]["detail"], "malformed token", "{}", failed[1]);
    let rejected = of("token-rejected");
    assert_eq!(rejected.len(), 2, "{entries:#?}");
    assert_eq!(rejected[0]["detail"], "token expired");
}

/// `login-ok` names the key that logged in (`public_key_sha256`, as create-user and
/// replace-key entries name keys): after `efsctl replace-key`, the old key's logins and the
/// new one's are told apart by more than their time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_ok_names_the_key_that_logged_in() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    let new_key = new_signing_key();
    let pub_path = srv.dir.path().join("app-new.pub");
    std::fs::write(&pub_path, format!("{}\n", openssh_public_line(&new_key))).unwrap();
    srv.efsctl_ok(&[
        "replace-key",
        &s.user,
        "--pubkey",
        pub_path.to_str().unwrap(),
    ]);
    srv.login(&s.user, &new_key, None).await;
    srv.stop().await;

    let old_fp = efs_server::auth::fingerprint_sha256(&s.key.verifying_key());
    let new_fp = efs_server::auth::fingerprint_sha256(&new_key.verifying_key());
    let logins: Vec<Value> = audit_show(&srv, &["--user", &s.user])
        .into_iter()
        .filter(|e| e["action"] == "login-ok")
        .collect();
    assert_eq!(logins.len(), 2, "{logins:#?}");
    let key_of = |e: &Value| -> Value {
        let d = e["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail: {e}"));
        serde_json::from_str::<Value>(d).unwrap_or_else(|err| panic!("{err}: {d}"))["public_key_sha256"]
            .clone()
    };
    assert_eq!(key_of(&logins[0]), old_fp.as_str());
    assert_eq!(key_of(&logins[1]), new_fp.as_str());
    // The same form as the create-user entry's.
    let created = audit_show(&srv, &[])
        .into_iter()
        .find(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("create-user "))
        })
        .expect("the create-user entry");
    assert!(
        created["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("\"public_key_sha256\":\"{old_fp}\"")),
        "{created}"
    );
}

/// A refused admin command's entry says why, as the operator was told (`{"error":"…"}` after
/// the command), in `audit show`'s text and JSON alike; it had the command and 400 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_admin_command_records_why() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    let mut told = Vec::new();
    for args in [
        vec!["grant", "nobody", "--fs", "files"],
        vec!["revoke", "nobody"],
    ] {
        let out = srv.efsctl(&args);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        told.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let key = new_signing_key();
    let pub_path = srv.dir.path().join("again.pub");
    std::fs::write(&pub_path, format!("{}\n", openssh_public_line(&key))).unwrap();
    let out = srv.efsctl(&[
        "create-user",
        &s.user,
        "--fs",
        "files",
        "--pubkey",
        pub_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    told.push(String::from_utf8_lossy(&out.stderr).into_owned());
    srv.stop().await;

    let failed: Vec<Value> = audit_show(&srv, &[])
        .into_iter()
        .filter(|e| e["action"] == "admin" && e["status"] == 400)
        .collect();
    assert_eq!(failed.len(), 3, "{failed:#?}");
    for (e, (cmd, told)) in failed.iter().zip([
        ("grant ", &told[0]),
        ("revoke ", &told[1]),
        ("create-user ", &told[2]),
    ]) {
        let d = e["detail"].as_str().unwrap();
        assert!(d.starts_with(cmd), "{d}");
        // One JSON object after the command (as `audit show --user` reads it back), with
        // the reason in `error`.
        let (_, json) = d.split_once(' ').unwrap();
        let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {d}"));
        let why = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no reason: {d}"));
        assert!(
            !why.is_empty() && told.contains(why),
            "{why:?} not in what efsctl said: {told}"
        );
    }
    let text = srv.efsctl_ok(&["audit", "show"]);
    assert!(text.contains("no user named 'nobody'"), "{text}");
    assert!(text.contains("already exists"), "{text}");
    // Found under the user the failed commands were about.
    let about = audit_show(&srv, &["--user", "nobody"]);
    assert_eq!(about.len(), 2, "{about:#?}");
}

/// Each run of the server is in the log: `server-start` with the options that matter to
/// security (a restart with other options is seen) and `server-stop` at a clean stop, as
/// admin entries of `server:uid:N`, client `local`, never with a secret. There were none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_records_its_start_and_stop() {
    let mut srv = TestServer::start(&[]);
    srv.stop().await;
    let dir = srv.dir.clone();
    let mut srv = TestServer::start_in(dir, &["--log-paths", "--max-renewals", "3"], &[]);
    srv.stop().await;

    let entries = audit_show(&srv, &[]);
    let runs: Vec<(&str, Value)> = entries
        .iter()
        .filter_map(|e| {
            let d = e["detail"].as_str()?;
            let (what, json) = d.split_once(' ')?;
            matches!(what, "server-start" | "server-stop").then(|| {
                assert_eq!(e["action"], "admin", "{e}");
                assert_eq!(e["client"], "local", "{e}");
                assert_eq!(e["status"], 200, "{e}");
                assert!(
                    e["user"]
                        .as_str()
                        .is_some_and(|u| u.starts_with("server:uid:")),
                    "{e}"
                );
                assert!(!d.contains(METRICS_TOKEN), "a secret in {d}");
                (what, serde_json::from_str(json).unwrap())
            })
        })
        .collect();
    let order: Vec<&str> = runs.iter().map(|r| r.0).collect();
    assert_eq!(
        order,
        ["server-start", "server-stop", "server-start", "server-stop"],
        "{entries:#?}"
    );
    let (first, second) = (&runs[0].1, &runs[2].1);
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        first["listen"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{first}"
    );
    assert_eq!(first["client_ca"], false, "{first}");
    assert_eq!(first["metrics"], true, "{first}");
    assert_eq!(first["tls_cert"], "self-signed", "{first}");
    assert_eq!(first["tls_cert_sha256"], second["tls_cert_sha256"]);
    assert_eq!(first["log_paths"], false, "{first}");
    assert_eq!(second["log_paths"], true, "{second}");
    assert_eq!(first["max_renewals"], 24, "{first}");
    assert_eq!(second["max_renewals"], 3, "{second}");
    assert_eq!(runs[1].1["listen"], first["listen"]);
    // The stop is the run's last entry.
    let stop_seq = entries
        .iter()
        .find(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("server-stop "))
        })
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let next = entries
        .iter()
        .find(|e| e["seq"].as_u64() == Some(stop_seq + 1))
        .unwrap();
    assert!(
        next["detail"]
            .as_str()
            .unwrap()
            .starts_with("server-start "),
        "{next}"
    );
}
