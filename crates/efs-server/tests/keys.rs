//! Key parts and what is on disk: restarts keep data, a wrong part refuses to start and
//! changes nothing, and the data dir holds no readable name, path or content.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::Value;

/// Starts a server on `dir` expecting it to refuse; returns what it printed.
fn start_refused(
    dir: &Arc<tempfile::TempDir>,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> StartFailure {
    match TestServer::try_start_in(dir.clone(), extra, envs) {
        Ok(s) => panic!(
            "the server started with {extra:?} although it should refuse\n{}",
            s.stdout()
        ),
        Err(f) => {
            assert_eq!(
                f.status.and_then(|s| s.code()),
                Some(1),
                "exit status of a refused start\n{}\n{}",
                f.stdout,
                f.stderr
            );
            assert!(!f.stdout.contains("Listening on"), "{}", f.stdout);
            f
        }
    }
}

#[tokio::test]
async fn restart_finds_the_generated_key_part_and_keeps_data() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    let keypart = srv.dir.path().join("d.keypart");
    assert!(srv.stdout().contains("Initialised a new data dir"));
    assert!(
        srv.stdout()
            .contains(&format!("Generated a key part at {}", keypart.display())),
        "{}",
        srv.stdout()
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&keypart).expect("the key part is beside the data dir");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(meta.len() >= 16);
    }
    let small = pattern(1000, 1);
    let big = pattern(700_000, 2);
    srv.put_ok("/keep/small.bin", &s.token, small.clone()).await;
    srv.put_ok("/keep/big.bin", &s.token, big.clone()).await;
    let (id1, fp1) = (srv.server_id.clone(), srv.fingerprint.clone());
    assert!(srv.stop().await.unwrap().success());
    let keypart_bytes = std::fs::read(&keypart).unwrap();

    let srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert!(!srv.stdout().contains("Initialised"), "{}", srv.stdout());
    assert!(
        !srv.stdout().contains("Generated a key part"),
        "{}",
        srv.stdout()
    );
    assert_eq!(
        std::fs::read(&keypart).unwrap(),
        keypart_bytes,
        "the key part is reused"
    );
    assert_eq!(
        srv.server_id, id1,
        "the token-signing key survives a restart"
    );
    assert_eq!(srv.fingerprint, fp1, "the certificate survives a restart");
    // A token issued before the restart is still good; so are the files.
    assert_eq!(srv.get_ok("/keep/small.bin", &s.token).await, small);
    assert!(srv.get_ok("/keep/big.bin", &s.token).await == big);
    let t = srv.login(&s.user, &s.key, None).await;
    srv.put_ok("/keep/after.txt", &t, "after restart").await;
    assert_eq!(srv.list_all("/keep/", &t, 10).await.len(), 3);
}

#[tokio::test]
async fn a_wrong_key_part_refuses_to_start_and_changes_nothing() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    srv.put_ok("/data.bin", &s.token, pattern(300_000, 7)).await;
    srv.put_ok("/small.txt", &s.token, "small").await;
    assert!(srv.stop().await.unwrap().success());
    let dir = srv.dir.clone();
    let data = srv.data.clone();
    drop(srv);

    let other = dir.path().join("other.keypart");
    std::fs::write(&other, pattern(32, 99)).unwrap();
    // The data dir and the key part beside it, byte for byte.
    let before = hash_tree(dir.path());
    let spec = format!("file:{}", other.display());
    let f = start_refused(&dir, &["--key-part", &spec], &[]);
    assert!(
        f.stderr.contains(&format!("key part 1 ({spec}) is wrong")),
        "the message names the part: {}",
        f.stderr
    );
    assert_eq!(
        hash_tree(dir.path()),
        before,
        "a refused start changes nothing"
    );

    // A missing file, and one part too many.
    let missing = format!("file:{}", dir.path().join("missing").display());
    let f = start_refused(&dir, &["--key-part", &missing], &[]);
    assert!(
        f.stderr.contains(&format!("key part 1 ({missing})")),
        "{}",
        f.stderr
    );
    assert!(f.stderr.contains("cannot read the file"), "{}", f.stderr);
    let right = format!("file:{}", dir.path().join("d.keypart").display());
    let f = start_refused(&dir, &["--key-part", &right, "--key-part", &spec], &[]);
    assert!(!f.stderr.is_empty());
    assert_eq!(
        hash_tree(dir.path()),
        before,
        "refused starts change nothing"
    );

    // efsctl refuses the same way when the server is stopped.
    let out = std::process::Command::new(EFSCTL_BIN)
        .arg("--data")
        .arg(&data)
        .args(["--key-part", &spec, "fsck", "--fs", "files"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key part 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hash_tree(dir.path()), before);

    // The right part, explicitly, opens it.
    let srv = TestServer::start_in(dir, &["--key-part", &right], &[]);
    assert_eq!(srv.get_ok("/small.txt", &s.token).await, b"small");
    assert!(srv.get_ok("/data.bin", &s.token).await == pattern(300_000, 7));
}

#[tokio::test]
async fn env_and_passphrase_parts() {
    let env_name = "EFS_E2E_KEY_PART";
    let env_value = hex::encode(pattern(24, 5));
    let pass = "correct horse battery staple";
    let parts = [
        "--key-part",
        &format!("env:{env_name}"),
        "--key-part",
        "passphrase",
    ];
    let parts: Vec<&str> = parts.iter().map(|s| s.as_ref()).collect();
    let envs = [(env_name, env_value.as_str()), ("EFS_PASSPHRASE", pass)];

    let dir = Arc::new(new_tempdir());
    let mut srv = TestServer::start_in(dir.clone(), &parts, &envs);
    assert!(srv.stdout().contains("Initialised a new data dir"));
    assert!(!srv.stdout().contains("Generated a key part"));
    assert!(
        !dir.path().join("d.keypart").exists(),
        "no part is generated when parts are given"
    );
    srv.create_fs("vault");
    let key = srv.create_user("vaulter", &["vault"], false);
    let t = srv.login("vaulter", &key, None).await;
    let content = pattern(150_000, 8);
    srv.put_ok("/secret.bin", &t, content.clone()).await;
    assert!(srv.stop().await.unwrap().success());

    // Same parts: starts, and the data is there.
    let mut srv = TestServer::start_in(dir.clone(), &parts, &envs);
    assert!(srv.get_ok("/secret.bin", &t).await == content);
    assert!(srv.stop().await.unwrap().success());
    // efsctl with the same parts on the stopped data dir.
    let out = srv.efsctl_ok(&["fsck", "--fs", "vault"]);
    assert!(out.contains("0 errors"), "{out}");
    drop(srv);

    let before = hash_tree(dir.path());
    // A wrong passphrase: part 2 is named.
    let f = start_refused(
        &dir,
        &parts,
        &[
            (env_name, env_value.as_str()),
            ("EFS_PASSPHRASE", "wrong horse battery staple"),
        ],
    );
    assert!(
        f.stderr.contains("key part 2 (passphrase) is wrong"),
        "{}",
        f.stderr
    );
    assert!(
        !f.stderr.contains("wrong horse"),
        "the passphrase is never printed"
    );
    // A wrong env part: part 1 is named.
    let wrong_env = hex::encode(pattern(24, 6));
    let f = start_refused(
        &dir,
        &parts,
        &[(env_name, wrong_env.as_str()), ("EFS_PASSPHRASE", pass)],
    );
    assert!(
        f.stderr
            .contains(&format!("key part 1 (env:{env_name}) is wrong")),
        "{}",
        f.stderr
    );
    assert!(!f.stderr.contains(&wrong_env), "the part is never printed");
    // No passphrase at all (and no terminal).
    let f = start_refused(&dir, &parts, &[(env_name, env_value.as_str())]);
    assert!(f.stderr.contains("key part 2 (passphrase)"), "{}", f.stderr);
    assert!(f.stderr.contains("EFS_PASSPHRASE"), "{}", f.stderr);
    // Parts in the wrong order.
    let swapped = [
        "--key-part",
        "passphrase",
        "--key-part",
        &format!("env:{env_name}"),
    ];
    let swapped: Vec<&str> = swapped.iter().map(|s| s.as_ref()).collect();
    start_refused(&dir, &swapped, &envs);
    // No parts: not the quick-start part either.
    start_refused(&dir, &[], &envs);
    assert_eq!(
        hash_tree(dir.path()),
        before,
        "refused starts change nothing"
    );

    let srv = TestServer::start_in(dir, &parts, &envs);
    assert!(srv.get_ok("/secret.bin", &t).await == content);
}

#[tokio::test]
async fn nothing_readable_on_disk() {
    let user = "svc-pharmacy-7";
    let fs = "clinic-records-x";
    let marker = "MARKER-7f3a9c-prescribed-amoxicillin";
    let srv = TestServer::start(&[]);
    srv.create_fs(fs);
    let key = srv.create_user(user, &[fs], false);
    let t = srv.login(user, &key, None).await;
    let r = srv
        .req("POST", "/patients/173/prescription.pdf", &t)
        .header("content-type", "application/pdf")
        .body(format!("%PDF-1.7 {marker}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A large one too (a blob, not inline), and a renamed directory.
    let big: String = std::iter::repeat_n(marker, 10_000)
        .collect::<Vec<_>>()
        .join(" ");
    srv.put_ok("/patients/173/prescription-scan.pdf", &t, big.clone())
        .await;
    srv.put_ok("/patients/tmp-prescription/x", &t, marker).await;
    let r = srv
        .req("MOVE", "/patients/tmp-prescription", &t)
        .header("destination", "/patients/prescription-archive")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        srv.get_ok("/patients/173/prescription.pdf", &t).await,
        format!("%PDF-1.7 {marker}").as_bytes()
    );
    let listing: Value = srv
        .req("GET", "/patients/173/", &t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["entries"].as_array().unwrap().len(), 2);

    let forbidden = ["patients", "prescription", user, fs, marker, "amoxicillin"];
    let data = srv.data.clone();
    let check = |when: &str| {
        let files = all_files(&data);
        assert!(files.len() >= 4, "{when}: {} files", files.len());
        let mut blobs = 0;
        for (path, bytes) in &files {
            let rel = path
                .strip_prefix(&data)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel.contains("blobs") {
                blobs += 1;
            }
            for word in forbidden {
                assert!(
                    !rel.contains(word),
                    "{when}: a file name contains {word:?}: {rel}"
                );
                let w = word.as_bytes();
                assert!(
                    !bytes.windows(w.len()).any(|x| x == w),
                    "{when}: {rel} contains {word:?}"
                );
                // Nor in UTF-16, nor upper-cased.
                let upper = word.to_uppercase();
                assert!(
                    !bytes.windows(upper.len()).any(|x| x == upper.as_bytes()),
                    "{when}: {rel} contains {upper:?}"
                );
            }
        }
        assert!(blobs >= 1, "{when}: the large file is a blob");
    };
    check("while running");
    let mut srv = srv;
    assert!(srv.stop().await.unwrap().success());
    check("after a stop");
    // The key part lives outside the data dir.
    assert!(srv.dir.path().join("d.keypart").exists());
    assert!(
        !all_files(&srv.data)
            .iter()
            .any(|(p, _)| p.ends_with("d.keypart"))
    );
}

/// A port in use fails the start before anything is made: no data dir and no key part are
/// left behind for a server that never served (they were, and the key part's file beside).
#[test]
fn a_port_in_use_creates_no_data_dir() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = new_tempdir();
    let data = dir.path().join("d");
    let out = std::process::Command::new(SERVER_BIN)
        .arg("--data")
        .arg(&data)
        .args(["--listen", &addr])
        .env_remove("EFS_PASSPHRASE")
        .env_remove("EFS_DATA")
        .env_remove("EFS_LISTEN")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!data.exists(), "a data dir was made");
    assert!(
        !dir.path().join("d.keypart").exists(),
        "a key part was made"
    );
}
