//! Mutual TLS: `--client-ca` requires a client certificate signed by the CA, and a user
//! bound to a certificate (`efsctl bind-cert`) is served only over a connection that
//! presented exactly that certificate. Certificates are made with the openssl CLI.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A CA and two client certificates signed by it (`c1`, `c2`), plus one from another CA (`x`).
fn make_pki(dir: &Path) {
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for ca in ["ca", "otherca"] {
        self_signed_p256(dir, ca, &format!("/CN={ca}"), &[]);
    }
    for (c, ca) in [("c1", "ca"), ("c2", "ca"), ("x", "otherca")] {
        ca_signed_p256(dir, c, &format!("/CN={c}"), ca, "client.ext");
    }
}

/// A P-256 certificate `NAME.pem` (key `NAME.key`) for `subject` (`/CN=…`), signed by the CA
/// `CA.pem`/`CA.key` in `dir`, valid 30 days, with the extensions of the file `ext` there.
fn ca_signed_p256(dir: &Path, name: &str, subject: &str, ca: &str, ext: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ],
    );
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "30",
            "-extfile",
            ext,
        ],
    );
}

fn client_with(server: &TestServer, cert: Option<&str>) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(&server.cert_pem).unwrap();
    let mut b = reqwest::Client::builder().tls_certs_only([root]).no_proxy();
    if let Some(c) = cert {
        let mut pem = std::fs::read(server.dir.path().join(format!("{c}.pem"))).unwrap();
        pem.extend(std::fs::read(server.dir.path().join(format!("{c}.key"))).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

async fn login_with(
    server: &TestServer,
    client: &reqwest::Client,
    user: &str,
    key: &ed25519_dalek::SigningKey,
) -> reqwest::Response {
    let c: serde_json::Value = client
        .post(server.url("/_efs/auth/challenge"))
        .json(&serde_json::json!({ "user": user }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nonce = c["nonce"].as_str().unwrap();
    let body = serde_json::json!({
        "user": user,
        "nonce": nonce,
        "signature": sign_login(key, &server.server_id, user, nonce),
    });
    client
        .post(server.url("/_efs/auth/token"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_bound() {
    let dir = std::sync::Arc::new(new_tempdir());
    make_pki(dir.path());
    let ca = dir.path().join("ca.pem");
    let server = TestServer::start_in(dir.clone(), &["--client-ca", ca.to_str().unwrap()], &[]);
    server.create_fs("records");
    let key = server.create_user("app1", &["records"], false);

    // No certificate, or one from another CA: the TLS handshake is refused.
    for cert in [None, Some("x")] {
        let r = client_with(&server, cert)
            .get(server.url("/_efs/health"))
            .send()
            .await;
        assert!(r.is_err(), "a connection with {cert:?} must be refused");
    }

    // A certificate from the CA: served; an unbound user logs in with any such certificate.
    let c1 = client_with(&server, Some("c1"));
    let c2 = client_with(&server, Some("c2"));
    let r = c1.get(server.url("/_efs/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(login_with(&server, &c2, "app1", &key).await.status(), 200);

    // Bind app1 to c1: c2 can no longer log in, c1 can; a token from c1 is refused over c2.
    let c1_pem = dir.path().join("c1.pem");
    let out = server.efsctl_ok(&["bind-cert", "app1", "--cert", c1_pem.to_str().unwrap()]);
    assert!(out.contains("bound"), "{out}");
    let r = login_with(&server, &c2, "app1", &key).await;
    assert_eq!(r.status(), 401, "login over another certificate");
    let r = login_with(&server, &c1, "app1", &key).await;
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let put = c1
        .put(server.url("/a.txt"))
        .bearer_auth(&token)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let get = c2
        .get(server.url("/a.txt"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        get.status(),
        401,
        "the bound user's token over another certificate"
    );
    let get = c1
        .get(server.url("/a.txt"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.bytes().await.unwrap(), "hello");

    // The token over another certificate is recorded with its user (outside the budget of
    // refusals of callers that proved nobody, which other refusals from c2 cannot spend).
    let mut forged_answer = String::new();
    for _ in 0..40 {
        let r = c2
            .get(server.url("/a.txt"))
            .bearer_auth("forged")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        forged_answer = r.text().await.unwrap();
    }
    let get = c2
        .get(server.url("/a.txt"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 401);
    // The same answer as a forged token's: it does not tell a thief without the certificate
    // that the token is alive.
    assert_eq!(get.text().await.unwrap(), forged_answer);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = server.efsctl_ok(&[
            "audit", "show", "--path", "/a.txt", "--user", "app1", "--json",
        ]);
        let refused = serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "read" && e["status"] == 401)
            .count();
        if refused == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Unbind: c2 works again (with a new login: binding changes revoke earlier tokens).
    server.efsctl_ok(&["bind-cert", "app1", "--unbind"]);
    assert_eq!(login_with(&server, &c2, "app1", &key).await.status(), 200);
}

/// `efsctl reload-tls` reads `--client-ca` again (it was read at the start only, so a new
/// client CA took a restart): from the reload on, new connections need a certificate of
/// the new CA and one of the old CA is refused; a connection opened before keeps the CA it
/// was checked against. A CA file that holds no certificate refuses the whole reload, and
/// the CA served stays. Also with the certificate the server generated (nothing else to
/// reload there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_client_ca_again() {
    let dir = std::sync::Arc::new(new_tempdir());
    make_pki(dir.path());
    let ca = dir.path().join("client-ca.pem");
    std::fs::copy(dir.path().join("ca.pem"), &ca).unwrap();
    let server = TestServer::start_in(dir.clone(), &["--client-ca", ca.to_str().unwrap()], &[]);
    let health = |c: reqwest::Client| {
        let url = server.url("/_efs/health");
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    // c1 is of the CA given, x of another one.
    let c1_open = client_with(&server, Some("c1"));
    assert_eq!(health(c1_open.clone()).await.unwrap(), 200);
    assert!(health(client_with(&server, Some("x"))).await.is_err());

    // Replaced whole (renamed over), as the docs say: the other CA from now on.
    let next = dir.path().join("client-ca.pem.new");
    std::fs::copy(dir.path().join("otherca.pem"), &next).unwrap();
    std::fs::rename(&next, &ca).unwrap();
    let out = server.efsctl_ok(&["reload-tls"]);
    assert!(
        out.contains("Reloaded the client CA (--client-ca)"),
        "{out}"
    );
    assert!(
        !out.contains("not reloaded: it is read at the start only"),
        "{out}"
    );
    assert!(
        health(client_with(&server, Some("x"))).await.unwrap() == 200,
        "a certificate of the new CA is accepted"
    );
    assert!(
        health(client_with(&server, Some("c1"))).await.is_err(),
        "one of the old CA is refused on a new connection"
    );
    assert!(health(client_with(&server, None)).await.is_err());
    // The connection opened before the reload goes on.
    assert_eq!(health(c1_open.clone()).await.unwrap(), 200);

    // A CA file with no certificate: the reload is refused (exit 1, saying why), the CA
    // served stays.
    std::fs::write(&next, "").unwrap();
    std::fs::rename(&next, &ca).unwrap();
    let out = server.efsctl(&["reload-tls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("holds no certificate"), "{err}");
    assert_eq!(health(client_with(&server, Some("x"))).await.unwrap(), 200);
    assert!(health(client_with(&server, Some("c1"))).await.is_err());

    // Each reload is recorded with the CA's certificates (SHA-256), before and after.
    let log = server.efsctl_ok(&["audit", "show", "--action", "admin", "--json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let reloads: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .filter(|d| d.starts_with("reload-tls"))
        .collect();
    assert_eq!(reloads.len(), 2, "{log}");
    assert!(
        reloads[0].contains("\"client_ca_sha256\"")
            && reloads[0].contains("\"old_client_ca_sha256\""),
        "{log}"
    );
    assert!(reloads[1].contains("holds no certificate"), "{log}");
}

/// An operator's certificate and key (`--tls-cert`, `--tls-key`), made by openssl: served as
/// they are (curl trusting only that certificate gets through, and the fingerprint printed
/// at start is openssl's), in PKCS#8 (EC) and PKCS#1 (RSA); a key of another certificate or
/// a file holding no key stops the start with the reason, and no server runs.
#[tokio::test]
async fn an_operators_certificate_and_key_are_served_as_given() {
    let dir = std::sync::Arc::new(new_tempdir());
    let d = dir.path();
    let cert_args = |key: &str, cert: &str, algo: &[&str]| {
        let mut a: Vec<String> = ["req", "-x509", "-newkey"]
            .iter()
            .chain(algo)
            .map(|s| s.to_string())
            .collect();
        for x in [
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ] {
            a.push(x.to_owned());
        }
        a
    };
    let ec = cert_args(
        "ec.key",
        "ec.pem",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    openssl(d, &ec.iter().map(String::as_str).collect::<Vec<_>>());
    let rsa = cert_args("rsa8.key", "rsa.pem", &["rsa:2048"]);
    openssl(d, &rsa.iter().map(String::as_str).collect::<Vec<_>>());
    // The RSA key again as PKCS#1 ("BEGIN RSA PRIVATE KEY").
    openssl(
        d,
        &["rsa", "-in", "rsa8.key", "-traditional", "-out", "rsa1.key"],
    );
    assert!(
        std::fs::read_to_string(d.join("rsa1.key"))
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    for (cert, key) in [("ec.pem", "ec.key"), ("rsa.pem", "rsa1.key")] {
        let (cert, key) = (d.join(cert), d.join(key));
        let srv = TestServer::start_in(
            std::sync::Arc::new(new_tempdir()),
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            &[],
        );
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        let theirs = String::from_utf8_lossy(&out.stdout);
        let theirs = theirs.trim().rsplit('=').next().unwrap();
        assert_eq!(srv.fingerprint, theirs, "{}", cert.display());
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&cert)
            .arg(format!("https://localhost:{}/_efs/health", srv.addr.port()))
            .output()
            .expect("curl is installed (scripts/test.sh)");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{}: {}",
            cert.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The EC certificate with the RSA key; then a key file holding only a certificate.
    for (key, says) in [
        ("rsa1.key", "do not match"),
        ("ec.pem", "holds no private key"),
    ] {
        let key = d.join(key);
        let f = TestServer::try_start_in(
            std::sync::Arc::new(new_tempdir()),
            &[
                "--tls-cert",
                d.join("ec.pem").to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            &[],
        )
        .err()
        .unwrap_or_else(|| panic!("a server started with --tls-key {}", key.display()));
        assert!(f.stderr.contains(says), "{says}: {}", f.stderr);
        assert!(!f.stderr.contains("PRIVATE KEY"), "{}", f.stderr);
    }
}

/// The certificate a data dir generates for itself is valid from a day before it was made
/// (not from 1975) for ten years, as openssl reads it: `openssl verify` at a time two days
/// back says it is not valid yet, now it passes, and it does not end within nine years.
#[tokio::test]
async fn the_generated_certificate_is_valid_from_yesterday_for_ten_years() {
    let server = TestServer::start(&[]);
    let cert = server.cert_file();
    let verify_at = |at: Option<i64>| {
        let mut c = Command::new("openssl");
        c.args(["verify", "-CAfile"]).arg(&cert);
        if let Some(t) = at {
            c.args(["-attime", &t.to_string()]);
        }
        c.arg(&cert)
            .output()
            .expect("running openssl (installed by scripts/test.sh)")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let today = verify_at(None);
    assert!(
        today.status.success(),
        "valid now: {}",
        String::from_utf8_lossy(&today.stdout)
    );
    let before = verify_at(Some(now - 2 * 86_400));
    assert!(
        !before.status.success(),
        "not valid two days before it was made"
    );
    assert!(
        String::from_utf8_lossy(&before.stderr).contains("not yet valid"),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    let nine_years = (9 * 365 * 86_400).to_string();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-checkend", &nine_years, "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ends within nine years: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `system/tls-cert.pem`, the file clients are told to trust, is written again at start when
/// it does not hold the certificate served: someone who could write the data dir put their
/// own certificate there, and it was kept (the server served the right one, and said to
/// trust the file). The start warns; curl trusting the file reaches the server again.
#[tokio::test]
async fn a_replaced_certificate_file_is_written_again_at_start() {
    let mut srv = TestServer::start(&[]);
    let served = std::fs::read(srv.cert_file()).unwrap();
    srv.stop().await;
    let d = srv.dir.path();
    self_signed_p256(
        d,
        "evil",
        "/CN=efs-server (self-signed)",
        &["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
    );
    std::fs::copy(d.join("evil.pem"), srv.cert_file()).unwrap();
    let again = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert_eq!(
        std::fs::read_to_string(again.cert_file()).unwrap(),
        String::from_utf8(served).unwrap(),
        "the file holds the certificate served again"
    );
    // Logged before it listens, on stderr, which is read apart from stdout: waited for.
    again
        .stderr_when(|e| e.contains("did not hold the certificate this server serves"))
        .await;
    let out = again.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &again.url("/_efs/health"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
    // Left as it is when it holds the certificate served: no warning at the next start.
    let mut again = again;
    again.stop().await;
    let mut third = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert!(
        !third.stderr().contains("did not hold"),
        "{}",
        third.stderr()
    );
    // A FIFO in its place neither blocks the start nor stays.
    let kept = std::fs::read_to_string(third.cert_file()).unwrap();
    third.stop().await;
    std::fs::remove_file(srv.cert_file()).unwrap();
    let made = Command::new("mkfifo")
        .arg(srv.cert_file())
        .status()
        .unwrap();
    assert!(made.success());
    let mut fourth = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert_eq!(std::fs::read_to_string(fourth.cert_file()).unwrap(), kept);
    // A link to another certificate: replaced, with the warning; its target left alone.
    fourth.stop().await;
    std::fs::remove_file(srv.cert_file()).unwrap();
    std::os::unix::fs::symlink(d.join("evil.pem"), srv.cert_file()).unwrap();
    let fifth = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert_eq!(std::fs::read_to_string(fifth.cert_file()).unwrap(), kept);
    fifth
        .stderr_when(|e| e.contains("did not hold the certificate"))
        .await;
    assert!(
        !std::fs::symlink_metadata(fifth.cert_file())
            .unwrap()
            .is_symlink()
    );
    assert!(std::fs::read_to_string(d.join("evil.pem")).unwrap() != kept);
}

/// Regression: a directory at `system/tls-cert.pem` stopped the start with `writing …: Is a
/// directory (os error 21)`, after a warning that the file had been changed outside EFS, and
/// nothing said what to do. Now the start refuses naming the path and the way out, and
/// leaves the directory (and what it holds) alone; once it is moved away the server starts.
#[tokio::test]
async fn a_directory_at_the_certificate_file_refuses_the_start_saying_what_to_do() {
    let mut srv = TestServer::start(&[]);
    let served = std::fs::read(srv.cert_file()).unwrap();
    srv.stop().await;
    let pem = srv.cert_file();
    std::fs::remove_file(&pem).unwrap();
    std::fs::create_dir(&pem).unwrap();
    std::fs::write(pem.join("kept"), b"someone's").unwrap();
    let f = match TestServer::try_start_in(srv.dir.clone(), &[], &[]) {
        Ok(s) => panic!(
            "started with a directory at {}\n{}",
            pem.display(),
            s.stdout()
        ),
        Err(f) => f,
    };
    assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{}", f.stderr);
    let said = format!("{}\n{}", f.stdout, f.stderr);
    assert!(
        said.contains(&format!("{} is a directory", pem.display())),
        "{said}"
    );
    assert!(
        said.contains("move that directory away or remove it"),
        "{said}"
    );
    assert!(!said.contains("did not hold the certificate"), "{said}");
    assert_eq!(std::fs::read(pem.join("kept")).unwrap(), b"someone's");
    std::fs::remove_dir_all(&pem).unwrap();
    let again = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert_eq!(std::fs::read(again.cert_file()).unwrap(), served);
}

/// Regression: a `--client-ca` file holding a client's certificate (CA:FALSE, or no basic
/// constraints with clientAuth) instead of its CA's was taken without a word at the start
/// and at a reload, and then every client certificate was refused (a client is verified
/// against the CA that signed it, never against another leaf). Now each such certificate
/// gets a WARNING naming it, its place in the file and its issuer, at the start and in the
/// reload's answer (text and `--json`); a file of only such certificates refuses the start,
/// and a reload, which keeps the CA it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_file_of_client_certificates_is_warned_of_or_refused() {
    let dir = std::sync::Arc::new(new_tempdir());
    let d = dir.path();
    make_pki(d);
    // c3: signed by the CA, no basic constraints at all, clientAuth.
    std::fs::write(d.join("bare.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    ca_signed_p256(d, "c3", "/CN=c3", "ca", "bare.ext");
    let cat = |out: &str, parts: &[&str]| {
        let mut v = Vec::new();
        for p in parts {
            v.extend(std::fs::read(d.join(p)).unwrap());
        }
        std::fs::write(d.join(out), v).unwrap();
        d.join(out)
    };

    // Only a client's certificate: the start is refused, saying which and what to give.
    let only = cat("only-client.pem", &["c1.pem"]);
    let f = TestServer::try_start_in(
        std::sync::Arc::new(new_tempdir()),
        &["--client-ca", only.to_str().unwrap()],
        &[],
    )
    .err()
    .expect("a server started with only a client's certificate as --client-ca");
    assert!(
        f.stderr.contains("holds no CA's certificate"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr.contains(
            "its certificate number 1 (CN=c1) is not a CA's (basic constraints CA:FALSE): no client certificate can be verified by it; give the certificate of the CA that issued it (CN=ca) instead"
        ),
        "{}",
        f.stderr
    );

    // A client's certificate beside the CA's: started, with a warning at the start.
    let ca = cat("client-ca.pem", &["c3.pem", "ca.pem"]);
    let server = TestServer::start_in(dir.clone(), &["--client-ca", ca.to_str().unwrap()], &[]);
    let warned = "WARNING: --client-ca";
    let c3_warning = "its certificate number 1 (CN=c3) is not a CA's (no basic constraints CA:TRUE): no client certificate can be verified by it; give the certificate of the CA that issued it (CN=ca) instead";
    assert!(
        server.stdout().contains(warned) && server.stdout().contains(c3_warning),
        "{}",
        server.stdout()
    );
    // And in the log (standard error, read by another thread: a moment later, maybe).
    server.stderr_when(|e| e.contains(c3_warning)).await;
    let health = |c: reqwest::Client| {
        let url = server.url("/_efs/health");
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(health(client_with(&server, Some("c1"))).await.unwrap(), 200);

    // The reload says it too, in text and in `--json`.
    let next = d.join("client-ca.pem.new");
    std::fs::copy(cat("mixed.pem", &["ca.pem", "c1.pem"]), &next).unwrap();
    std::fs::rename(&next, &ca).unwrap();
    let c1_warning = "its certificate number 2 (CN=c1) is not a CA's (basic constraints CA:FALSE)";
    let out = server.efsctl_ok(&["reload-tls"]);
    assert!(out.contains("Reloaded the client CA"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(warned) && l.contains(c1_warning)),
        "{out}"
    );
    let out = server.efsctl_ok(&["--json", "reload-tls"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let warnings = v["warnings"].as_array().expect("a warnings list");
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(warnings[0].as_str().unwrap().contains(c1_warning), "{out}");
    assert_eq!(health(client_with(&server, Some("c1"))).await.unwrap(), 200);

    // Only clients' certificates: the reload is refused and the CA stays.
    std::fs::copy(cat("clients.pem", &["c1.pem", "c3.pem"]), &next).unwrap();
    std::fs::rename(&next, &ca).unwrap();
    let out = server.efsctl(&["reload-tls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("holds no CA's certificate"), "{err}");
    assert!(err.contains("certificate number 2 (CN=c3)"), "{err}");
    assert_eq!(health(client_with(&server, Some("c1"))).await.unwrap(), 200);
}

/// Regression: a certificate was taken for a self-signed (pinned) client's when its subject
/// equalled its issuer's name, so a client certificate a CA had signed under the CA's own name
/// got no warning, and a `--client-ca` of only it started a server that refused every client.
/// Self-signed is now checked by the signature; a truly self-signed one still starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_named_as_its_ca_is_no_pin() {
    let dir = std::sync::Arc::new(new_tempdir());
    let d = dir.path();
    make_pki(d);
    std::fs::write(
        d.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let ca_name = String::from_utf8(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-nameopt", "compat", "-in"])
            .arg(d.join("ca.pem"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let ca_name = ca_name
        .trim()
        .trim_start_matches("subject=")
        .trim()
        .to_owned();
    ca_signed_p256(d, "same", &ca_name, "ca", "leaf.ext");
    let f = TestServer::try_start_in(
        std::sync::Arc::new(new_tempdir()),
        &["--client-ca", d.join("same.pem").to_str().unwrap()],
        &[],
    )
    .err()
    .expect("a server started with only a CA-signed client certificate named as its CA");
    assert!(
        f.stderr.contains("holds no CA's certificate"),
        "{}",
        f.stderr
    );
    // A self-signed client certificate (a pin) starts, without a warning.
    self_signed_p256(
        d,
        "pin",
        "/CN=pinned",
        &[
            "-addext",
            "basicConstraints=CA:FALSE",
            "-addext",
            "extendedKeyUsage=clientAuth",
        ],
    );
    let server = TestServer::start_in(
        dir.clone(),
        &["--client-ca", d.join("pin.pem").to_str().unwrap()],
        &[],
    );
    assert!(
        !server.stdout().contains("WARNING: --client-ca"),
        "{}",
        server.stdout()
    );
}

/// Regression: with the generated certificate, a SIGHUP whose `--client-ca` failed logged
/// "the TLS certificate was not reloaded: …" (only the client CA was to be); and with both,
/// the error named only the half that failed. Now it says what was to be reloaded, which
/// part failed, and that the certificate and the CA served stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_says_what_was_not_reloaded_and_what_stays() {
    let dir = std::sync::Arc::new(new_tempdir());
    let d = dir.path();
    make_pki(d);
    let ca = d.join("client-ca.pem");
    std::fs::copy(d.join("ca.pem"), &ca).unwrap();
    let server = TestServer::start_in(dir.clone(), &["--client-ca", ca.to_str().unwrap()], &[]);
    std::fs::write(&ca, "").unwrap();
    let pid = server.pid().expect("the server runs").to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let said = "SIGHUP: the client CA (--client-ca) was not reloaded: --client-ca";
    let log = server.stderr_when(|e| e.contains(said)).await;
    assert!(log.contains("holds no certificate"), "{log}");
    assert!(
        log.contains(&format!(
            "the server keeps serving the certificate SHA-256 {} and requiring the client CA it had",
            server.fingerprint
        )),
        "{log}"
    );
    assert!(!log.contains("TLS certificate was not reloaded"), "{log}");

    // The operator's certificate and the client CA: whichever fails, both are named.
    self_signed_p256(
        d,
        "srv",
        "/CN=localhost",
        &["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
    );
    std::fs::copy(d.join("ca.pem"), &ca).unwrap();
    let (cert, key) = (d.join("srv.pem"), d.join("srv.key"));
    let srv = TestServer::start_in(
        std::sync::Arc::new(new_tempdir()),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--client-ca",
            ca.to_str().unwrap(),
        ],
        &[],
    );
    let kept = format!(
        "the server keeps serving the certificate SHA-256 {} and requiring the client CA it had",
        srv.fingerprint
    );
    std::fs::write(&ca, "").unwrap();
    let out = srv.efsctl(&["reload-tls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "the TLS certificate and the client CA (--client-ca) were not reloaded: the certificate was read, the client CA failed: --client-ca"
        ),
        "{err}"
    );
    assert!(err.contains(&kept), "{err}");
    std::fs::copy(d.join("ca.pem"), &ca).unwrap();
    std::fs::rename(&key, d.join("srv.key.away")).unwrap();
    let out = srv.efsctl(&["reload-tls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "the TLS certificate and the client CA (--client-ca) were not reloaded: the certificate failed (the client CA was not read): cannot open --tls-key"
        ),
        "{err}"
    );
    assert!(err.contains(&kept), "{err}");
}
