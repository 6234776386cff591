//! Renewing the operator's certificate without a restart: `efsctl reload-tls` and SIGHUP make
//! the server read `--tls-cert`/`--tls-key` again and serve them from the next handshake on,
//! while open connections keep answering; a reload that fails keeps the certificate served.
//! Certificates are made with the openssl CLI, and what a new handshake is served is read
//! with `openssl s_client`.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A self-signed P-256 server certificate for localhost and 127.0.0.1, valid 30 days:
/// `NAME.pem` and `NAME.key`.
fn make_cert(dir: &Path, name: &str) {
    self_signed_p256(
        dir,
        name,
        &format!("/CN=localhost {name}"),
        &[
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            // Not a CA: a client refuses a CA's certificate as a server's.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
}

/// The SHA-256 fingerprint of the certificate in `file`, as the server prints it.
fn fingerprint_of(file: &Path) -> String {
    let pem = std::fs::read(file).unwrap();
    let cert = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .expect("a certificate")
        .unwrap();
    efs_server::tls::fingerprint(&cert)
}

/// Puts certificate `name` (and its key, or `key`'s) where the server reads them, as certbot
/// does: whole files renamed into place.
fn install(dir: &Path, cert: &str, key: &str) {
    for (from, to) in [
        (format!("{cert}.pem"), "served.pem"),
        (format!("{key}.key"), "served.key"),
    ] {
        std::fs::copy(dir.join(&from), dir.join("next")).unwrap();
        std::fs::rename(dir.join("next"), dir.join(to)).unwrap();
    }
}

/// The fingerprint of the certificate a new handshake is served (`openssl s_client`).
fn served_fingerprint(srv: &TestServer) -> String {
    served_fingerprint_at(srv.addr)
}

fn served_fingerprint_at(addr: std::net::SocketAddr) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost"])
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    let cert = rustls_pemfile::certs(&mut &out.stdout[..])
        .next()
        .unwrap_or_else(|| {
            panic!(
                "no certificate from s_client: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .unwrap();
    efs_server::tls::fingerprint(&cert)
}

/// Waits until new handshakes get `want` (a SIGHUP is handled a moment after it is sent).
fn wait_served(srv: &TestServer, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = served_fingerprint(srv);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still served {got}, not {want}\n{}",
            srv.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hangup(srv: &TestServer) {
    hangup_pid(srv.pid().expect("the server runs"));
}

fn hangup_pid(pid: u32) {
    let pid = pid.to_string();
    let ok = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP {pid}");
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `efsctl reload-tls` failed (exit 1) with `what` in its message; the server still serves
/// `served`.
fn reload_refused(srv: &TestServer, what: &str, served: &str) -> String {
    let o = srv.efsctl(&["reload-tls"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout {out}\nstderr {err}");
    assert!(err.contains(what), "{what:?} not in: {err}");
    assert!(
        err.contains(served),
        "the error names the certificate kept: {err}"
    );
    assert_eq!(served_fingerprint(srv), served);
    err
}

/// The admin entries of `reload-tls`, oldest first: (user, client, status, detail JSON).
fn reload_entries(srv: &TestServer) -> Vec<(String, String, u64, Value)> {
    audit_show(srv, &["--action", "admin"])
        .iter()
        .filter_map(|e| {
            let d = e["detail"].as_str()?;
            let json = d.strip_prefix("reload-tls ")?;
            Some((
                e["user"].as_str().unwrap_or_default().to_owned(),
                e["client"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_u64().unwrap_or_default(),
                serde_json::from_str(json).unwrap(),
            ))
        })
        .collect()
}

/// Certificate A at the start; B through `efsctl reload-tls`, C through SIGHUP: each new
/// handshake gets the new one, the command prints it, and a connection opened under A still
/// answers. Then reloads that must fail (a key of another certificate, garbage, a missing
/// file, an expired certificate) keep C served and say what is wrong. Every reload is in the
/// audit log with its fingerprints or its error, and never with key material.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = Arc::new(new_tempdir());
    let d = dir.path();
    for name in ["a", "b", "c"] {
        make_cert(d, name);
    }
    let (fp_a, fp_b, fp_c) = (
        fingerprint_of(&d.join("a.pem")),
        fingerprint_of(&d.join("b.pem")),
        fingerprint_of(&d.join("c.pem")),
    );
    install(d, "a", "a");
    let cert = d.join("served.pem");
    let key = d.join("served.key");
    let srv = TestServer::start_in(
        dir.clone(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(srv.fingerprint, fp_a);
    assert_eq!(served_fingerprint(&srv), fp_a);
    // A connection opened under A, kept open by the client's pool. The client trusts A only:
    // a request of it after the reload succeeds only on this same connection.
    let health = srv.url("/_efs/health");
    let r = srv.client.get(&health).send().await.unwrap();
    assert!(r.status().is_success(), "{r:?}");
    r.bytes().await.unwrap();

    install(d, "b", "b");
    let o = srv.efsctl(&["reload-tls"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout {out}\nstderr {err}");
    assert!(
        out.contains(&fp_b),
        "efsctl prints the new fingerprint: {out}"
    );
    assert_eq!(served_fingerprint(&srv), fp_b, "a new handshake gets B");
    let r = srv.client.get(&health).send().await.unwrap();
    assert!(
        r.status().is_success(),
        "the connection opened under A answers"
    );
    // A new connection trusting only A is refused now (so the request above did use the
    // old connection).
    assert!(
        client_trusting(&srv.cert_pem)
            .get(&health)
            .send()
            .await
            .is_err()
    );

    install(d, "c", "c");
    hangup(&srv);
    wait_served(&srv, &fp_c);
    assert!(
        srv.stdout().contains(&format!(
            "SIGHUP: Reloaded the TLS certificate: SHA-256 fingerprint {fp_c}"
        )),
        "{}",
        srv.stdout()
    );
    // --json: the fingerprints as data.
    let v: Value = serde_json::from_str(&srv.efsctl_ok(&["--json", "reload-tls"])).unwrap();
    assert_eq!(v["old_sha256"], fp_c.as_str(), "{v}");
    assert_eq!(v["new_sha256"], fp_c.as_str(), "{v}");
    assert!(
        v["not_after"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    assert!(v["warning"].is_null(), "no expiry warning: {v}");

    // Failures: C stays.
    install(d, "c", "a");
    reload_refused(&srv, "is not the key of the certificate", &fp_c);
    std::fs::write(&cert, "not a certificate\n").unwrap();
    reload_refused(&srv, "holds no certificate", &fp_c);
    install(d, "c", "c");
    std::fs::remove_file(&key).unwrap();
    reload_refused(&srv, "cannot open --tls-key", &fp_c);
    // A SIGHUP that fails is logged at error level; the server goes on serving C.
    hangup(&srv);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !srv
        .stderr()
        .contains("SIGHUP: the TLS certificate was not reloaded")
    {
        assert!(
            Instant::now() < deadline,
            "no error logged: {}",
            srv.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(srv.stderr().contains("ERROR"), "{}", srv.stderr());
    assert_eq!(served_fingerprint(&srv), fp_c);
    // An expired certificate with its own key.
    let expired = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(90);
    params.not_after = now - time::Duration::days(1);
    let old = params.self_signed(&expired).unwrap();
    std::fs::write(&cert, old.pem()).unwrap();
    std::fs::write(&key, expired.serialize_pem()).unwrap();
    reload_refused(&srv, "the certificate expired on", &fp_c);

    // The start names the certificate it began with.
    let start = audit_show(&srv, &["--action", "admin"])
        .iter()
        .find_map(|e| {
            e["detail"]
                .as_str()?
                .strip_prefix("server-start ")
                .map(str::to_owned)
        })
        .expect("a server-start entry");
    let start: Value = serde_json::from_str(&start).unwrap();
    assert_eq!(start["tls_cert_sha256"], fp_a.as_str(), "{start}");
    assert_eq!(start["tls_cert"], "given", "{start}");

    let entries = reload_entries(&srv);
    let key_pem = std::fs::read_to_string(d.join("c.key")).unwrap();
    for (_, _, _, detail) in &entries {
        let s = detail.to_string();
        assert!(
            !s.contains("PRIVATE KEY") && !s.contains(&key_pem[40..80]),
            "{s}"
        );
    }
    let ok: Vec<_> = entries.iter().filter(|e| e.2 == 200).collect();
    assert_eq!(ok.len(), 3, "{entries:#?}");
    assert!(
        ok[0].0.starts_with("uid:") && ok[0].1 == "admin-socket",
        "{:?}",
        ok[0]
    );
    assert_eq!(ok[0].3["old_sha256"], fp_a.as_str());
    assert_eq!(ok[0].3["new_sha256"], fp_b.as_str());
    // The SIGHUP: done by the server's own account, through a signal.
    assert!(
        ok[1].0.starts_with("server:uid:") && ok[1].1 == "signal",
        "{:?}",
        ok[1]
    );
    assert_eq!(ok[1].3["old_sha256"], fp_b.as_str());
    assert_eq!(ok[1].3["new_sha256"], fp_c.as_str());
    let failed: Vec<_> = entries.iter().filter(|e| e.2 == 400).collect();
    assert_eq!(failed.len(), 5, "{entries:#?}");
    for (i, what) in [
        "is not the key of the certificate",
        "holds no certificate",
        "cannot open --tls-key",
        "cannot open --tls-key",
        "expired on",
    ]
    .iter()
    .enumerate()
    {
        let e = failed[i].3["error"].as_str().unwrap_or_default();
        assert!(e.contains(what) && e.contains(&fp_c), "{what:?}: {e}");
    }
    assert_eq!(failed[3].1, "signal");
}

/// A server serving the certificate it generated has nothing to reload: `efsctl reload-tls`
/// says so (exit 1), SIGHUP logs it and the server goes on serving the same certificate.
/// With no server running, reload-tls fails without opening the data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_certificate_is_not_reloaded() {
    let mut srv = TestServer::start(&[]);
    let o = srv.efsctl(&["reload-tls"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout {out}\nstderr {err}");
    assert!(
        err.contains("serves the certificate it generated") && err.contains("nothing to reload"),
        "{err}"
    );
    hangup(&srv);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !srv.stderr().contains("nothing to reload") {
        assert!(
            Instant::now() < deadline,
            "no error logged: {}",
            srv.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(served_fingerprint(&srv), srv.fingerprint);
    let r = srv
        .client
        .get(srv.url("/_efs/health"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");
    let refused = reload_entries(&srv);
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(refused.iter().all(|e| e.2 == 400), "{refused:#?}");

    assert!(srv.stop().await.is_some_and(|s| s.success()));
    // Only a running server holds a certificate: efsctl says so without opening the data
    // dir (nothing is recorded).
    let o = srv.efsctl(&["reload-tls"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout {out}\nstderr {err}");
    assert!(
        err.contains("no server is running on this data dir")
            && err.contains("the next start reads"),
        "{err}"
    );
    assert_eq!(reload_entries(&srv).len(), 2);
}

/// A certificate for localhost valid from `days_before` days ago to `days_after` from now,
/// written to `served.pem` and `served.key` in `dir`; its fingerprint.
fn install_rcgen(dir: &Path, days_before: i64, days_after: i64) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(days_before);
    params.not_after = now + time::Duration::days(days_after);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("next"), cert.pem()).unwrap();
    std::fs::rename(dir.join("next"), dir.join("served.pem")).unwrap();
    std::fs::write(dir.join("next"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("next"), dir.join("served.key")).unwrap();
    efs_server::tls::fingerprint(cert.der())
}

/// The process whose command line holds `needle` (a path unique to this test).
fn pid_with_arg(needle: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
            && cmd.split(|b| *b == 0).any(|a| a == needle.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

/// A SIGHUP while the server is still starting (here: waiting for its key part, read from
/// a FIFO this test holds) ended the server, as its handler was installed only once the data
/// dir was open. Now it is kept and handled once the server is ready: the files are read
/// again then. Also: the expiry warning of a reload goes to stdout as the success line does
/// (and to the log), and `efsctl reload-tls --json` has it as `warning`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_the_start_is_handled_once_the_server_is_ready() {
    let dir = Arc::new(new_tempdir());
    let d = dir.path();
    make_cert(d, "a");
    install(d, "a", "a");
    let fp_a = fingerprint_of(&d.join("a.pem"));
    let (cert, key) = (d.join("served.pem"), d.join("served.key"));
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    // The data dir made first (its creation reads the key part twice), with the part the
    // FIFO gives below.
    let plain = d.join("keypart");
    std::fs::write(&plain, pattern(32, 5)).unwrap();
    let plain = format!("file:{}", plain.display());
    let mut srv = TestServer::start_in(
        dir.clone(),
        &[&["--key-part", &plain][..], &tls].concat(),
        &[],
    );
    assert!(srv.stop().await.is_some_and(|s| s.success()));
    drop(srv);
    let fifo = d.join("keypart.fifo");
    let ok = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo");
    let part = format!("file:{}", fifo.display());
    let args: Vec<String> = vec![
        "--key-part".into(),
        part.clone(),
        "--tls-cert".into(),
        cert.to_str().unwrap().into(),
        "--tls-key".into(),
        key.to_str().unwrap().into(),
    ];
    let starting = std::thread::spawn({
        let dir = dir.clone();
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            TestServer::try_start_in(dir, &args, &[])
        }
    });
    // Opened for writing only once the server opened it for reading: it is then inside the
    // data dir's open, waiting for the key part.
    let mut writer = {
        use std::os::unix::fs::OpenOptionsExt;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(&fifo)
            {
                Ok(f) => break f,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline && !starting.is_finished(),
                        "the server never opened its key part ({e})"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    };
    let pid = pid_with_arg(&part).expect("the starting server's process");
    hangup_pid(pid);
    // Time for the signal to arrive while the start still waits.
    std::thread::sleep(Duration::from_millis(300));
    {
        use std::io::Write;
        // Fails (EPIPE) if the SIGHUP ended the server: said below.
        let _ = writer.write_all(&pattern(32, 5));
    }
    drop(writer);
    let mut srv = match starting.join().unwrap() {
        Ok(s) => s,
        Err(f) => panic!(
            "the server did not survive a SIGHUP during its start ({:?})\n{}\n{}",
            f.status, f.stdout, f.stderr
        ),
    };
    // efsctl talks to the running server: it needs no key part (and the FIFO has no writer).
    srv.key_args.clear();
    assert_eq!(srv.fingerprint, fp_a);
    let want = format!("SIGHUP: Reloaded the TLS certificate: SHA-256 fingerprint {fp_a}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !srv.stdout().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "the SIGHUP of the start was not handled\n{}\n{}",
            srv.stdout(),
            srv.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(served_fingerprint(&srv), fp_a);

    // 80 days behind it, 10 left: a warning, as data too.
    let fp_b = install_rcgen(d, 80, 10);
    let v: Value = serde_json::from_str(&srv.efsctl_ok(&["--json", "reload-tls"])).unwrap();
    assert_eq!(v["new_sha256"], fp_b.as_str(), "{v}");
    let w = v["warning"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(
        w.starts_with("WARNING: ") && w.contains("expires in 9 days"),
        "{w}"
    );
    // Through a SIGHUP: on stdout after the success line, and in the log.
    let fp_c = install_rcgen(d, 81, 10);
    hangup(&srv);
    wait_served(&srv, &fp_c);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !srv
        .stdout()
        .contains("SIGHUP: WARNING: the new certificate expires in 9 days")
    {
        assert!(Instant::now() < deadline, "{}", srv.stdout());
        std::thread::sleep(Duration::from_millis(50));
    }
    srv.stderr_when(|e| {
        e.lines()
            .any(|l| l.contains(" WARN ") && l.contains("SIGHUP: WARNING: the new certificate"))
    })
    .await;
    assert!(srv.stop().await.is_some_and(|s| s.success()));
}

/// A terminal's hang-up, the usual source of a SIGHUP, closes the server's stdout: writing
/// the reload's line there panicked the task handling SIGHUPs, and every later SIGHUP was
/// swallowed. Each SIGHUP must still reload.
#[test]
fn sighups_still_reload_once_stdout_is_gone() {
    let dir = new_tempdir();
    let d = dir.path();
    for name in ["a", "b", "c"] {
        make_cert(d, name);
    }
    install(d, "a", "a");
    let (fp_b, fp_c) = (
        fingerprint_of(&d.join("b.pem")),
        fingerprint_of(&d.join("c.pem")),
    );
    let stderr = std::fs::File::create(d.join("stderr")).unwrap();
    let (mut child, addr) = start_then_drop_stdout(d, stderr.into());
    let stderr = || std::fs::read_to_string(d.join("stderr")).unwrap_or_default();
    let wait = |want: &str| wait_served_at(addr, want);
    install(d, "b", "b");
    hangup_pid(child.id());
    wait(&fp_b);
    let after_b = served_fingerprint_at(addr);
    install(d, "c", "c");
    hangup_pid(child.id());
    wait(&fp_c);
    let after_c = served_fingerprint_at(addr);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(after_b, fp_b, "{}", stderr());
    assert_eq!(
        after_c,
        fp_c,
        "the second SIGHUP was swallowed\n{}",
        stderr()
    );
}

/// Regression: with stderr gone too (a terminal's hang-up closes both), a reload that failed
/// logged its error to the closed stderr; the logger then panicked (its report of the failed
/// write is an `eprintln!`), which ended the SIGHUP loop: every later SIGHUP was swallowed.
#[test]
fn sighups_still_reload_once_stdout_and_stderr_are_gone() {
    let dir = new_tempdir();
    let d = dir.path();
    for name in ["a", "b", "c"] {
        make_cert(d, name);
    }
    install(d, "a", "a");
    let fp_c = fingerprint_of(&d.join("c.pem"));
    let (mut child, addr) = start_then_drop_stdout(d, Stdio::piped());
    drop(child.stderr.take());
    // A reload that fails (b's certificate with a's key): its error goes to the log.
    install(d, "b", "a");
    hangup_pid(child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(EFSCTL_BIN)
            .arg("--data")
            .arg(d.join("d"))
            .args(["--json", "audit", "show", "--action", "admin"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("reload-tls") && text.contains("error") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failed reload was not recorded: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    install(d, "c", "c");
    hangup_pid(child.id());
    wait_served_at(addr, &fp_c);
    let after_c = served_fingerprint_at(addr);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(after_c, fp_c, "the SIGHUP after a failed one was swallowed");
}

/// Waits (up to 20 s) until a new handshake at `addr` is served `want`.
fn wait_served_at(addr: std::net::SocketAddr, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while served_fingerprint_at(addr) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts efs-server on `served.pem`/`served.key` in `d` with `stderr`, reads its stdout up
/// to `Listening on`, then drops it: the server's stdout has no reader any more.
fn start_then_drop_stdout(d: &Path, stderr: Stdio) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(SERVER_BIN)
        .arg("--data")
        .arg(d.join("d"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(d.join("served.pem"))
        .arg("--tls-key")
        .arg(d.join("served.key"))
        .env_remove("EFS_PASSPHRASE")
        .env_remove("EFS_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let addr = {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "no 'Listening on'");
            if let Some(a) = line.trim().strip_prefix("Listening on https://") {
                break a.parse::<std::net::SocketAddr>().unwrap();
            }
        }
    };
    (child, addr)
}

/// Unmounts on drop (after the server has stopped, so the mount is not busy).
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A reload whose audit entry cannot be written (the data dir's disk full) changed the
/// certificate unrecorded, and efsctl exited 1 saying it was reloaded. Now nothing changes:
/// the certificate is served only once its entry is written. The data dir is a small tmpfs
/// (mounting needs root, as `disk_full.rs`; where it cannot mount, the test says so and
/// checks nothing: `tls.rs`'s unit test of staging still covers the order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_audit_entry_cannot_be_written_changes_nothing() {
    let dir = Arc::new(new_tempdir());
    let d = dir.path();
    let data = d.join("d");
    std::fs::create_dir_all(&data).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs"])
        .arg(&data)
        .output()
        .unwrap();
    if !out.status.success() {
        println!(
            "tls_reload: SKIPPED a reload with the audit log failing: cannot mount a tmpfs here ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    let _mount = Mount(data.clone());
    for name in ["a", "b", "c"] {
        make_cert(d, name);
    }
    install(d, "a", "a");
    let (cert, key) = (d.join("served.pem"), d.join("served.key"));
    let mut srv = TestServer::start_in(
        dir.clone(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let mut served = fingerprint_of(&d.join("a.pem"));
    let audit = data.join("system").join("audit");
    let fill = || {
        use std::io::Write;
        let mut f = std::fs::File::create(data.join("filler")).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
    };
    // A reload of the other certificate: `None` once it is served, or efsctl's error and
    // the fingerprint of the certificate it was to serve.
    let mut n = 0;
    let mut reload = |served: &mut String| {
        n += 1;
        let next = ["b", "c"][n % 2];
        install(d, next, next);
        let offered = fingerprint_of(&d.join(format!("{next}.pem")));
        let o = srv.efsctl(&["reload-tls"]);
        let (out, err) = text(&o);
        if o.status.success() {
            *served = offered;
            assert!(out.contains(served.as_str()), "{out}");
            None
        } else {
            Some((err, offered))
        }
    };
    // Rounds until a reload's own entry is the write that fails. Before filling the disk,
    // reloads bring the audit file's last page to less room than one reload's entry, and
    // the anchor is left naming the last of them: nothing is then written until the next
    // reload, whose entry needs a page the full disk does not have. Should the log fail
    // first anyway (the reload is then refused before it reads anything: nothing to check
    // here), the disk is freed, the log recovers by itself, and the next round begins.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut rounds = 0;
    let (err, offered) = loop {
        rounds += 1;
        assert!(
            Instant::now() < deadline,
            "in {} rounds (180 s) no reload's own entry was the one that failed",
            rounds - 1
        );
        let mut entry = None;
        for _ in 0..64 {
            let before = AuditTail::read(&audit);
            if let Some((e, _)) = reload(&mut served) {
                panic!("a reload failed with room on the disk: {e}");
            }
            let after = AuditTail::read(&audit);
            if after.file == before.file {
                entry = Some(after.size - before.size);
            }
            if entry.is_some_and(|e| after.room() + 16 < e) {
                break;
            }
        }
        let anchored = Instant::now() + Duration::from_secs(30);
        while !AuditTail::read(&audit).anchored() {
            assert!(
                Instant::now() < anchored,
                "the anchor never named the last entry: {:?}",
                AuditTail::read(&audit)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fill();
        let mut tries = 0;
        let (err, offered) = (0..200)
            .find_map(|_| {
                tries += 1;
                reload(&mut served)
            })
            .expect("no reload failed with the data dir's disk full");
        assert!(
            err.contains("the audit log cannot be written") && !err.contains("reloaded:"),
            "{err}"
        );
        if err.contains("certificate was not reloaded") {
            eprintln!(
                "round {rounds}: reload {tries} after the disk filled failed on its own entry"
            );
            break (err, offered);
        }
        eprintln!("round {rounds}: the log failed before reload {tries} after the disk filled");
        std::fs::remove_file(data.join("filler")).unwrap();
        // The server's tries to recover back off, up to one a minute.
        let recovered = Instant::now() + Duration::from_secs(90);
        while let Some((e, _)) = reload(&mut served) {
            assert!(
                Instant::now() < recovered,
                "the audit log did not recover: {e}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert_ne!(
        offered, served,
        "the refused reload offered a new certificate"
    );
    assert!(err.contains(&served), "{err}");
    assert_eq!(served_fingerprint(&srv), served, "{err}");
    let _ = srv.stop().await;
}

/// A CA and an intermediate issued by it, and server certificates issued by the
/// intermediate: the chain of a real deployment.
struct Pki {
    root: (rcgen::Certificate, rcgen::KeyPair),
    intermediate: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let ca = |cn: &str| {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p
        };
        let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root_params = ca("Test Root");
        let root = root_params.self_signed(&root_key).unwrap();
        let int_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let int_params = ca("Test Intermediate");
        let intermediate = int_params
            .signed_by(&int_key, &rcgen::Issuer::new(root_params, &root_key))
            .unwrap();
        Pki {
            root: (root, root_key),
            intermediate,
            issuer: rcgen::Issuer::new(int_params, int_key),
        }
    }

    /// A server certificate for `names`, issued by the intermediate, and its key.
    fn server(&self, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert, key)
    }
}

/// Writes `certs` (in this order) and `key` where the server reads them, renamed into place.
fn install_pem(dir: &Path, certs: &[&rcgen::Certificate], key: &rcgen::KeyPair) {
    let pem: String = certs.iter().map(|c| c.pem()).collect();
    std::fs::write(dir.join("next"), pem).unwrap();
    std::fs::rename(dir.join("next"), dir.join("served.pem")).unwrap();
    std::fs::write(dir.join("next"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("next"), dir.join("served.key")).unwrap();
}

/// Mistakes a renewal makes that the checks of validity and key cannot see, and that clients
/// show only as refused handshakes: certbot's `cert.pem` given where `fullchain.pem` was (the
/// intermediate missing), a certificate that no longer names the server, a CA's own
/// certificate. Each is served, as asked, with a warning saying what clients will do; a chain
/// in the wrong order is refused, named as such (it was "their public keys differ").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_clients_would_refuse_is_served_with_a_warning() {
    let dir = Arc::new(new_tempdir());
    let d = dir.path();
    let pki = Pki::new();
    let (leaf, leaf_key) = pki.server(&["localhost", "127.0.0.1"]);
    install_pem(d, &[&leaf, &pki.intermediate], &leaf_key);
    let (cert, key) = (d.join("served.pem"), d.join("served.key"));
    let srv = TestServer::start_in(
        dir.clone(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let reload =
        || -> Value { serde_json::from_str(&srv.efsctl_ok(&["--json", "reload-tls"])).unwrap() };
    // The same chain again: nothing to say.
    assert!(reload()["warning"].is_null());

    // The certificate alone, its intermediate left out.
    let (renewed, renewed_key) = pki.server(&["localhost", "127.0.0.1"]);
    install_pem(d, &[&renewed], &renewed_key);
    let v = reload();
    let w = v["warning"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(
        w.contains("lacks the certificate of its issuer")
            && w.contains("Test Intermediate")
            && w.contains("fullchain.pem"),
        "{w}"
    );
    assert_eq!(
        served_fingerprint(&srv),
        efs_server::tls::fingerprint(renewed.der())
    );
    // Alone again, where the one served was alone too (a leaf its CA signed directly is
    // served so on purpose): nothing to say.
    install_pem(d, &[&renewed], &renewed_key);
    assert!(reload()["warning"].is_null());
    // A chain that only got shorter, its issuer still in it (a CA dropping a cross-signed
    // root, as Let's Encrypt's did): nothing to say either.
    install_pem(d, &[&renewed, &pki.intermediate, &pki.root.0], &renewed_key);
    assert!(reload()["warning"].is_null());
    install_pem(d, &[&renewed, &pki.intermediate], &renewed_key);
    assert!(reload()["warning"].is_null());
    // A name now covered by a wildcard is not lost.
    let (named, named_key) = pki.server(&["localhost", "files.example.com"]);
    install_pem(d, &[&named, &pki.intermediate], &named_key);
    reload();
    let (wild, wild_key) = pki.server(&["localhost", "*.example.com"]);
    install_pem(d, &[&wild, &pki.intermediate], &wild_key);
    assert!(reload()["warning"].is_null());
    install_pem(d, &[&renewed, &pki.intermediate], &renewed_key);
    let w = reload()["warning"].as_str().unwrap_or_default().to_owned();
    assert!(w.contains("no longer names *.example.com"), "{w}");

    // The chain in the wrong order: refused, and said so.
    let served = served_fingerprint(&srv);
    install_pem(d, &[&pki.intermediate, &renewed], &renewed_key);
    let err = reload_refused(
        &srv,
        "the key is that of the file's certificate number 2",
        &served,
    );
    assert!(err.contains("put the server's certificate first"), "{err}");

    // A certificate for another name.
    let (other, other_key) = pki.server(&["other.example"]);
    install_pem(d, &[&other, &pki.intermediate], &other_key);
    let w = reload()["warning"].as_str().unwrap_or_default().to_owned();
    assert!(w.contains("no longer names localhost, 127.0.0.1"), "{w}");

    // The root CA's own certificate and key.
    install_pem(d, &[&pki.root.0], &pki.root.1);
    let w = reload()["warning"].as_str().unwrap_or_default().to_owned();
    assert!(w.contains("is a CA's"), "{w}");
    assert_eq!(
        served_fingerprint(&srv),
        efs_server::tls::fingerprint(pki.root.0.der())
    );

    // Back to the right chain: no warning.
    install_pem(d, &[&renewed, &pki.intermediate], &renewed_key);
    let v = reload();
    assert!(v["warning"].is_null(), "{v}");

    // A FIFO where the key was: refused at once, not waited on with the reload's turn held.
    std::fs::remove_file(d.join("served.key")).unwrap();
    let made = Command::new("mkfifo")
        .arg(d.join("served.key"))
        .status()
        .unwrap();
    assert!(made.success());
    let served = served_fingerprint(&srv);
    reload_refused(&srv, "not a regular file", &served);
}
