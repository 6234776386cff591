//! The login protocol written with nothing but curl and openssl
//! (`scripts/login-curl-openssl.sh`), against a real server; the token it prints is then
//! used with curl to PUT and GET a file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/login-curl-openssl.sh")
}

/// An openssl-generated Ed25519 key pair in `dir`: (private PEM, public PEM).
fn openssl_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let st = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .status()
        .expect("openssl is installed (scripts/test.sh)");
    assert!(st.success());
    let st = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(st.success());
    (key, public)
}

/// Runs the script with `envs` (and nothing inherited that could change it).
fn run_script(envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script());
    for v in [
        "EFS_URL",
        "EFS_USER",
        "EFS_KEY",
        "EFS_FS",
        "EFS_SERVER_ID",
        "CURL_OPTS",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("running bash")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn curl_and_openssl_log_in_then_put_and_get() {
    assert!(script().exists(), "{} exists", script().display());
    let srv = TestServer::start(&[]);
    srv.create_fs("records");
    let (key, public) = openssl_key(srv.dir.path(), "curly");
    srv.efsctl_ok(&[
        "create-user",
        "curly",
        "--fs",
        "records",
        "--pubkey",
        public.to_str().unwrap(),
    ]);
    let curl_opts = format!("--cacert {}", srv.cert_file().display());
    let out = run_script(&[
        ("EFS_URL", &srv.base),
        ("EFS_USER", "curly"),
        ("EFS_KEY", key.to_str().unwrap()),
        ("EFS_SERVER_ID", &srv.server_id),
        ("CURL_OPTS", &curl_opts),
    ]);
    assert!(
        out.status.success(),
        "the script failed ({:?}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let token = stdout.trim();
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the token on stdout: {stdout}"
    );
    let claims = jwt_claims(token);
    assert_eq!(claims["sub"], "curly");
    assert_eq!(claims["fs"], "records");
    assert_eq!(claims["iss"], srv.server_id.as_str());

    // curl PUT with the token (the seed's route), then GET.
    let content = pattern(100_000, 17);
    let file = srv.dir.path().join("upload.pdf");
    std::fs::write(&file, &content).unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let url = srv.url("/patients/173/prescription.pdf");
    let out = srv.curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/pdf",
        "--data-binary",
        &format!("@{}", file.display()),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "201");
    let got = srv.dir.path().join("download.pdf");
    let out = srv.curl(&[
        "-H",
        &auth,
        "-o",
        got.to_str().unwrap(),
        "-w",
        "%{http_code} %{content_type}",
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "200 application/pdf");
    assert!(
        std::fs::read(&got).unwrap() == content,
        "curl downloads the same bytes"
    );
    // A range with curl.
    let out = srv.curl(&["-H", &auth, "-r", "10-19", "-w", "\n%{http_code}", &url]);
    let body = &out.stdout[..out.stdout.len() - 4];
    assert_eq!(body, &content[10..20]);
    assert!(out.stdout.ends_with(b"\n206"));
    // Refresh with curl.
    let out = srv.curl(&["-X", "POST", "-H", &auth, &srv.url("/_efs/auth/refresh")]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["renewals_left"], 23);
    // And the file is the same for the Rust client.
    let t = v["token"].as_str().unwrap();
    assert!(srv.get_ok("/patients/173/prescription.pdf", t).await == content);
}

#[tokio::test]
async fn the_script_reports_refusals() {
    assert!(script().exists(), "{} exists", script().display());
    let srv = TestServer::start(&[]);
    srv.create_fs("one");
    srv.create_fs("two");
    let (key, public) = openssl_key(srv.dir.path(), "duo");
    let (other_key, _) = openssl_key(srv.dir.path(), "intruder");
    srv.efsctl_ok(&[
        "create-user",
        "duo",
        "--fs",
        "one",
        "--fs",
        "two",
        "--pubkey",
        public.to_str().unwrap(),
    ]);
    let curl_opts = format!("--cacert {}", srv.cert_file().display());
    let key_s = key.to_str().unwrap();
    let base = [
        ("EFS_URL", srv.base.as_str()),
        ("EFS_USER", "duo"),
        ("CURL_OPTS", curl_opts.as_str()),
    ];
    let with = |extra: &[(&'static str, &str)]| {
        let mut v: Vec<(&str, &str)> = base.to_vec();
        v.extend_from_slice(extra);
        run_script(&v)
    };

    // Two filesystems and no EFS_FS: the server's fs_required is shown.
    let out = with(&[("EFS_KEY", key_s)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("fs_required"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    // With EFS_FS: a token for that filesystem.
    let out = with(&[("EFS_KEY", key_s), ("EFS_FS", "two")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(jwt_claims(text(&out.stdout).trim())["fs"], "two");
    // Another key: 401.
    let out = with(&[("EFS_KEY", other_key.to_str().unwrap()), ("EFS_FS", "one")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("HTTP 401"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    // A server that is not the expected one.
    let out = with(&[
        ("EFS_KEY", key_s),
        ("EFS_FS", "one"),
        ("EFS_SERVER_ID", "efs-00000000000000000000000000000000"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&srv.server_id),
        "{}",
        text(&out.stderr)
    );
    // Without the certificate, curl refuses the self-signed server.
    let out = run_script(&[
        ("EFS_URL", srv.base.as_str()),
        ("EFS_USER", "duo"),
        ("EFS_KEY", key_s),
        ("EFS_FS", "one"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("CURL_OPTS=\"--cacert"),
        "says how to trust it: {}",
        text(&out.stderr)
    );
    // An OpenSSH private key (efsctl create-user writes one beside the PEM): named as such.
    let ssh_key = key.with_extension("openssh");
    std::fs::write(
        &ssh_key,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = with(&[("EFS_KEY", ssh_key.to_str().unwrap()), ("EFS_FS", "one")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is an OpenSSH key"),
        "{}",
        text(&out.stderr)
    );
    // A PEM file openssl cannot sign with: its error, said to be about the key.
    let bad_pem = key.with_extension("bad");
    std::fs::write(
        &bad_pem,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = with(&[("EFS_KEY", bad_pem.to_str().unwrap()), ("EFS_FS", "one")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("openssl could not sign with EFS_KEY="),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    // Usage errors.
    let out = run_script(&[("EFS_USER", "duo"), ("EFS_KEY", key_s)]);
    assert_eq!(out.status.code(), Some(2));
    let out = with(&[("EFS_KEY", key_s), ("EFS_USER", "bad name")]);
    assert_eq!(out.status.code(), Some(2));
}
