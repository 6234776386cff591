//! Shared harness of the end-to-end tests: a real `efs-server` process on a temporary data
//! dir and a free port, `efsctl` against it, a reqwest client that trusts only the server's
//! self-signed certificate, the login protocol, and a raw HTTP/1.1 client for requests that
//! ordinary clients refuse to send as written (dot segments, `%00`, …).
//!
//! Every test starts its own server, so tests run in parallel without sharing anything.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The server binary under test.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_efs-server");
/// The admin tool under test.
pub const EFSCTL_BIN: &str = env!("CARGO_BIN_EXE_efsctl");

/// The metrics token every test server is started with (`<dir>/metrics-token`), unless
/// its options include [`NO_METRICS`]; [`TestServer::metrics`] presents it.
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789";
/// An option of the harness, not of the server: start without `--metrics-token-file`.
pub const NO_METRICS: &str = "--harness-no-metrics";

/// An option of [`TestServer::start`] that runs the server under `prlimit` with the
/// limits after it (`--harness-prlimit=--nofile=300:300`); `prlimit` execs the server, so
/// the child's pid is the server's.
pub const PRLIMIT: &str = "--harness-prlimit=";

/// An option of [`TestServer::start`] that runs the server in a mount namespace of its own
/// (`unshare --mount`, root only) where `DIR/passwd` and `DIR/group` are bind-mounted over
/// /etc/passwd and /etc/group (`--harness-etc=DIR`): the accounts and groups it sees, without
/// changing the machine's. `unshare` and the shell exec the server: the child's pid is the
/// server's.
pub const BIND_ETC: &str = "--harness-etc=";

/// How long a server may take to print "Listening on" (debug build, 2 busy cores).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A server that did not start: its exit status and everything it printed.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// A running `efs-server` on a temporary data dir (`<tempdir>/d`), killed on drop.
pub struct TestServer {
    /// The temporary directory holding the data dir, the generated key part, keys, certs.
    pub dir: Arc<TempDir>,
    /// The data dir (`<dir>/d`).
    pub data: PathBuf,
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// The `Server identity:` line's value.
    pub server_id: String,
    /// The `TLS certificate SHA-256 fingerprint:` line's value (without the remark).
    pub fingerprint: String,
    /// The server's certificate (PEM), read from `<data>/system/tls-cert.pem` (or the
    /// `--tls-cert` file it was started with).
    pub cert_pem: Vec<u8>,
    /// A client that trusts only that certificate.
    pub client: reqwest::Client,
    /// Key-part options the server was started with (efsctl needs them once it is stopped).
    pub key_args: Vec<String>,
    /// Environment the server was started with (key parts from env / passphrase).
    pub envs: Vec<(String, String)>,
    child: Option<Child>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on a new temporary data dir with `extra` options.
    pub fn start(extra: &[&str]) -> TestServer {
        Self::start_in(Arc::new(new_tempdir()), extra, &[])
    }

    /// Starts a server on `<dir>/d` (new or existing), with `extra` options and environment.
    pub fn start_in(dir: Arc<TempDir>, extra: &[&str], envs: &[(&str, &str)]) -> TestServer {
        match Self::try_start_in(dir, extra, envs) {
            Ok(s) => s,
            Err(f) => panic!(
                "efs-server did not start ({:?})\n--- stdout\n{}\n--- stderr\n{}",
                f.status, f.stdout, f.stderr
            ),
        }
    }

    /// Starts a server, or returns how it failed (it exited before listening).
    pub fn try_start_in(
        dir: Arc<TempDir>,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<TestServer, StartFailure> {
        efs_server::install_crypto_provider();
        let data = dir.path().join("d");
        let limits: Vec<&str> = extra
            .iter()
            .filter_map(|a| a.strip_prefix(PRLIMIT))
            .collect();
        let etc = extra.iter().find_map(|a| a.strip_prefix(BIND_ETC));
        let mut cmd = if let Some(etc) = etc {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(r#"mount --bind "$1/passwd" /etc/passwd && mount --bind "$1/group" /etc/group && shift && exec "$@""#)
                .arg("sh")
                .arg(etc)
                .arg(SERVER_BIN);
            c
        } else if limits.is_empty() {
            Command::new(SERVER_BIN)
        } else {
            let mut c = Command::new("prlimit");
            c.args(&limits).arg("--").arg(SERVER_BIN);
            c
        };
        cmd.arg("--data").arg(&data);
        // (A test may listen elsewhere: `--listen ADDR` among its options.)
        if !extra.contains(&"--listen") {
            cmd.arg("--listen").arg("127.0.0.1:0");
        }
        cmd.args(
            extra.iter().filter(|a| {
                **a != NO_METRICS && !a.starts_with(PRLIMIT) && !a.starts_with(BIND_ETC)
            }),
        );
        if !extra.contains(&NO_METRICS) {
            let token_file = dir.path().join("metrics-token");
            std::fs::write(&token_file, format!("{METRICS_TOKEN}\n")).expect("metrics token");
            cmd.arg("--metrics-token-file").arg(token_file);
        }
        cmd.env_remove("EFS_PASSPHRASE")
            .env_remove("EFS_DATA")
            .env_remove("EFS_LISTEN")
            .env_remove("EFS_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning efs-server");
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        // Both pipes are drained for the life of the process, so the server never blocks
        // on a full pipe.
        let out = child.stdout.take().expect("piped stdout");
        let out_lines = stdout_lines.clone();
        let t_out = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                out_lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let err = child.stderr.take().expect("piped stderr");
        let err_lines = stderr_lines.clone();
        let t_err = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                err_lines.lock().unwrap().push(line);
            }
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let mut server_id = None;
        let mut fingerprint = None;
        let mut addr = None;
        while addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = line.strip_prefix("Server identity: ") {
                        server_id = Some(v.trim().to_owned());
                    } else if let Some(v) =
                        line.strip_prefix("TLS certificate SHA-256 fingerprint: ")
                    {
                        fingerprint = Some(v.split_whitespace().next().unwrap_or("").to_owned());
                    } else if let Some(v) = line.strip_prefix("Listening on https://") {
                        addr = Some(v.trim().parse::<SocketAddr>().expect("a socket address"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is ending.
                    let status = child.wait().ok();
                    let _ = t_out.join();
                    let _ = t_err.join();
                    return Err(StartFailure {
                        status,
                        stdout: stdout_lines.lock().unwrap().join("\n"),
                        stderr: stderr_lines.lock().unwrap().join("\n"),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    return Err(StartFailure {
                        status,
                        stdout: format!(
                            "(no 'Listening on' after {START_TIMEOUT:?})\n{}",
                            stdout_lines.lock().unwrap().join("\n")
                        ),
                        stderr: stderr_lines.lock().unwrap().join("\n"),
                    });
                }
            }
        }
        let addr = addr.expect("checked");
        // The operator's certificate (`--tls-cert`), else the generated one.
        let cert_path = extra
            .iter()
            .position(|a| *a == "--tls-cert")
            .and_then(|i| extra.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| data.join("system").join("tls-cert.pem"));
        let cert_pem = std::fs::read(&cert_path)
            .unwrap_or_else(|e| panic!("the certificate at {}: {e}", cert_path.display()));
        let client = client_trusting(&cert_pem);
        let key_args = key_part_args(extra);
        Ok(TestServer {
            dir,
            data,
            addr,
            base: format!("https://{addr}"),
            server_id: server_id.expect("the server printed its identity"),
            fingerprint: fingerprint.expect("the server printed its certificate fingerprint"),
            cert_pem,
            client,
            key_args,
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: Some(child),
            stdout_lines,
            stderr_lines,
            readers: vec![t_out, t_err],
        })
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 15 s) and waits for it.
    /// Async on purpose: while the server shuts down, this runtime keeps running the
    /// client's connections, which must answer the server's HTTP/2 GOAWAY and PING.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("waiting for efs-server");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for t in self.readers.drain(..) {
            let _ = t.join();
        }
        Some(status)
    }

    /// Sends the running server SIGTERM (a shutdown begins) without waiting for it to end.
    pub fn terminate(&self) {
        let pid = self.pid().expect("the server runs");
        let term = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(term.success(), "kill -TERM {pid}");
    }

    /// Kills the server with SIGKILL and waits for it (the harness stays, for efsctl).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for t in self.readers.drain(..) {
            let _ = t.join();
        }
    }

    /// Everything the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout_lines.lock().unwrap().join("\n")
    }

    /// The server's process id while it runs (for /proc/PID/status: memory, fds).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr_lines.lock().unwrap().join("\n")
    }

    /// The server's stderr once `ready` holds of it (waited for, 30 s at most: stderr is read
    /// by a thread of its own, so a line logged before an answer may reach the test after it).
    /// Panics with the stderr when it never does.
    pub async fn stderr_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let err = self.stderr();
            if ready(&err) {
                return err;
            }
            assert!(
                Instant::now() < deadline,
                "never logged as expected:\n{err}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /_efs/metrics` with the metrics token.
    pub async fn metrics(&self) -> reqwest::Response {
        self.client
            .get(self.url("/_efs/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap()
    }

    /// The data dir opened by the test itself, as efsctl would without a server (the
    /// server must be stopped; its generated key part is found as at a start).
    pub fn open_offline(&self) -> efs_core::DataDir {
        efs_core::DataDir::open(
            &self.data,
            &[],
            efs_core::OpenOptions::default(),
            &efs_core::keyparts::no_prompt,
        )
        .expect("the stopped server's data dir opens")
        .0
    }

    /// The URL of `path` (already percent-encoded as needed).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Runs `efsctl --data <data> [key parts] args…` (with the server's key parts and
    /// environment, so that it also works when the server is stopped).
    pub fn efsctl(&self, args: &[&str]) -> Output {
        self.efsctl_command(args).output().expect("running efsctl")
    }

    /// Runs efsctl; whether it succeeded, and its stdout and stderr together (for a command
    /// expected to fail, or to warn).
    pub fn efsctl_text(&self, args: &[&str]) -> (bool, String) {
        let out = self.efsctl(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// The `efsctl` command [`TestServer::efsctl`] runs, to be spawned by the caller.
    pub fn efsctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(EFSCTL_BIN);
        cmd.current_dir(self.dir.path())
            .arg("--data")
            .arg(&self.data)
            .args(&self.key_args)
            .args(args)
            .env_remove("EFS_PASSPHRASE")
            .env_remove("EFS_DATA")
            .env_remove("EFS_LOG")
            .stdin(Stdio::null());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs efsctl and asserts it succeeded; returns its stdout.
    pub fn efsctl_ok(&self, args: &[&str]) -> String {
        let out = self.efsctl(args);
        assert!(
            out.status.success(),
            "efsctl {args:?} failed ({:?})\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("efsctl prints UTF-8")
    }

    /// `efsctl create-fs NAME`.
    pub fn create_fs(&self, name: &str) {
        let out = self.efsctl_ok(&["create-fs", name]);
        assert!(out.contains(name), "create-fs output names the fs: {out}");
    }

    /// Creates a user with a key generated here, passing its OpenSSH public line to
    /// `efsctl create-user --pubkey`. Returns the private key.
    pub fn create_user(&self, name: &str, fs: &[&str], read_only: bool) -> SigningKey {
        let key = new_signing_key();
        self.create_user_with_key(name, fs, read_only, &key);
        key
    }

    /// Creates a user with a given key (OpenSSH public line in a file).
    pub fn create_user_with_key(&self, name: &str, fs: &[&str], read_only: bool, key: &SigningKey) {
        let pub_path = self.dir.path().join(format!("{name}.{}.pub", unique()));
        std::fs::write(
            &pub_path,
            format!("{} test@{name}\n", openssh_public_line(key)),
        )
        .unwrap();
        let pub_s = pub_path.to_str().unwrap().to_owned();
        let mut args = vec!["create-user", name, "--pubkey", &pub_s];
        for f in fs {
            args.push("--fs");
            args.push(f);
        }
        if read_only {
            args.push("--read-only");
        }
        let out = self.efsctl_ok(&args);
        assert!(
            out.contains(&format!("Created user '{name}'")),
            "create-user output: {out}"
        );
    }

    /// Creates a user whose key pair efsctl generates; returns the private key read back
    /// from the PKCS#8 PEM efsctl wrote.
    pub fn create_user_generated(&self, name: &str, fs: &str) -> SigningKey {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let out_path = self.dir.path().join(format!("{name}_ed25519"));
        let out_s = out_path.to_str().unwrap().to_owned();
        let out = self.efsctl_ok(&["create-user", name, "--fs", fs, "--out", &out_s]);
        assert!(out.contains("Generated an Ed25519 key pair"), "{out}");
        let pem = std::fs::read_to_string(format!("{out_s}.pem")).expect("efsctl wrote FILE.pem");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let openssh = std::fs::read_to_string(&out_path).expect("efsctl wrote FILE");
        assert!(openssh.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let key = SigningKey::from_pkcs8_pem(&pem).expect("a PKCS#8 Ed25519 key");
        let public =
            std::fs::read_to_string(format!("{out_s}.pub")).expect("efsctl wrote FILE.pub");
        assert_eq!(
            public
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
            openssh_public_line(&key),
            "FILE.pub holds the public half of FILE.pem"
        );
        key
    }

    /// `POST /_efs/auth/challenge {"user"}`: the status and the JSON answer.
    pub async fn challenge(&self, user: &str) -> Value {
        let r = self
            .client
            .post(self.url("/_efs/auth/challenge"))
            .json(&json!({ "user": user }))
            .send()
            .await
            .expect("challenge request");
        assert_eq!(r.status(), 200, "challenge for {user}");
        r.json().await.expect("challenge JSON")
    }

    /// `POST /_efs/auth/token` with `body`.
    pub async fn token_request(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/_efs/auth/token"))
            .json(body)
            .send()
            .await
            .expect("token request")
    }

    /// A signed token request body for `user` with `key`, on a fresh challenge.
    pub async fn signed_body(&self, user: &str, key: &SigningKey, fs: Option<&str>) -> Value {
        let c = self.challenge(user).await;
        let nonce = c["nonce"].as_str().unwrap();
        let server = c["server"].as_str().unwrap();
        assert_eq!(server, self.server_id, "the challenge names the server");
        let mut body = json!({
            "user": user,
            "nonce": nonce,
            "signature": sign_login(key, server, user, nonce),
        });
        if let Some(fs) = fs {
            body["fs"] = json!(fs);
        }
        body
    }

    /// Logs in and returns the token (asserting 200).
    pub async fn login(&self, user: &str, key: &SigningKey, fs: Option<&str>) -> String {
        self.login_full(user, key, fs).await["token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }

    /// Logs in and returns the whole token answer (asserting 200).
    pub async fn login_full(&self, user: &str, key: &SigningKey, fs: Option<&str>) -> Value {
        let body = self.signed_body(user, key, fs).await;
        let r = self.token_request(&body).await;
        let status = r.status();
        let v: Value = r.json().await.expect("token JSON");
        assert_eq!(status, 200, "login of {user}: {v}");
        v
    }

    /// A request with a bearer token.
    pub fn req(&self, method: &str, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                self.url(path),
            )
            .bearer_auth(token)
    }

    /// PUT `body` at `path`; returns the response.
    pub async fn put(
        &self,
        path: &str,
        token: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.req("PUT", path, token)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// PUT and assert 201 (new) or 200 (replaced); returns the ETag.
    pub async fn put_ok(&self, path: &str, token: &str, body: impl Into<reqwest::Body>) -> String {
        let r = self.put(path, token, body).await;
        let status = r.status();
        let etag = header(&r, "etag");
        let text = r.text().await.unwrap();
        assert!(
            status == 201 || status == 200,
            "PUT {path}: {status} {text}"
        );
        etag.expect("a PUT answer carries an ETag")
    }

    /// GET `path` and return (status, body).
    pub async fn get(&self, path: &str, token: &str) -> (u16, Vec<u8>) {
        let r = self.req("GET", path, token).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.bytes().await.unwrap().to_vec())
    }

    /// GET and assert 200; returns the body.
    pub async fn get_ok(&self, path: &str, token: &str) -> Vec<u8> {
        let (s, b) = self.get(path, token).await;
        assert_eq!(s, 200, "GET {path}: {}", String::from_utf8_lossy(&b));
        b
    }

    /// Every page of `GET dir?limit=…`, concatenated: the entries' names in order.
    pub async fn list_all(&self, dir: &str, token: &str, limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let mut url = format!("{dir}?limit={limit}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let r = self.req("GET", &url, token).send().await.unwrap();
            assert_eq!(r.status(), 200, "GET {url}");
            let page: Value = r.json().await.unwrap();
            let entries = page["entries"].as_array().expect("entries").clone();
            assert!(entries.len() <= limit, "a page holds at most limit entries");
            out.extend(entries);
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
        panic!("the listing of {dir} never ends");
    }

    /// A raw HTTP/1.1 exchange over TLS: sends `request` exactly as given (while reading,
    /// so an early answer is seen), reads to EOF. Send `Connection: close`.
    pub async fn raw_http(&self, request: Vec<u8>) -> RawResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tls = tls_connect(self.addr, &self.cert_pem)
            .await
            .expect("TLS handshake");
        let (mut r, mut w) = tokio::io::split(tls);
        let writer = async move {
            for chunk in request.chunks(16 * 1024) {
                if w.write_all(chunk).await.is_err() {
                    return w;
                }
            }
            let _ = w.flush().await;
            // Keep the write half open: closing it would send close_notify.
            w
        };
        let reader = async move {
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut buf)).await;
            buf
        };
        let (_w, buf) = tokio::join!(writer, reader);
        RawResponse::parse(&buf)
    }

    /// A raw request with the bearer token and an optional body (Content-Length).
    pub async fn raw(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> RawResponse {
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if !body.is_empty() || method == "PUT" || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.raw_http(req).await
    }

    /// Runs curl against this server (trusting its certificate), returning its output.
    pub fn curl(&self, args: &[&str]) -> Output {
        let cert = self.cert_file();
        Command::new("curl")
            .args(["-sS", "--noproxy", "*", "--cacert"])
            .arg(&cert)
            .args(args)
            .output()
            .expect("running curl (installed by scripts/test.sh)")
    }

    /// The server certificate as a file (for curl's --cacert).
    pub fn cert_file(&self) -> PathBuf {
        self.data.join("system").join("tls-cert.pem")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- efs-server stdout\n{}\n--- efs-server stderr\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }
}

/// Runs the openssl CLI (installed by scripts/test.sh) in `dir`; panics with its stderr when
/// it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl (installed by scripts/test.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed P-256 certificate valid 30 days, `NAME.pem` and its key `NAME.key` in `dir`,
/// with `subject` (`/CN=…`) and `extra` options of `openssl req` (`-addext …`).
pub fn self_signed_p256(dir: &Path, name: &str, subject: &str, extra: &[&str]) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &pem,
        "-days",
        "30",
        "-subj",
        subject,
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args);
}

/// A new temporary directory for a data dir.
pub fn new_tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("efs-e2e-")
        .tempdir()
        .expect("a temporary directory")
}

/// The `--key-part` options among `args`.
fn key_part_args(args: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == "--key-part" {
            out.push((*a).to_owned());
            if let Some(v) = it.next() {
                out.push((*v).to_owned());
            }
        } else if a.starts_with("--key-part=") {
            out.push((*a).to_owned());
        }
    }
    out
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A reqwest client that trusts exactly `cert_pem` (no system roots, no proxy).
pub fn client_trusting(cert_pem: &[u8]) -> reqwest::Client {
    efs_server::install_crypto_provider();
    let cert = reqwest::Certificate::from_pem(cert_pem).expect("a PEM certificate");
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("a reqwest client")
}

/// A rustls client configuration that trusts exactly `cert_pem`.
pub fn rustls_client_config(cert_pem: &[u8]) -> rustls::ClientConfig {
    efs_server::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &cert_pem[..]) {
        roots.add(c.expect("a PEM certificate")).unwrap();
    }
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A fresh random Ed25519 key.
pub fn new_signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed).expect("the system RNG works");
    SigningKey::from_bytes(&seed)
}

/// `ssh-ed25519 <base64 of string "ssh-ed25519", string key>`, built by hand.
pub fn openssh_public_line(key: &SigningKey) -> String {
    let mut blob = Vec::new();
    for part in [&b"ssh-ed25519"[..], key.verifying_key().as_bytes()] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    format!("ssh-ed25519 {}", STANDARD.encode(blob))
}

/// The login message of the protocol.
pub fn login_message(server: &str, user: &str, nonce: &str) -> Vec<u8> {
    format!("efs-auth-v1\n{server}\n{user}\n{nonce}").into_bytes()
}

/// The login signature, base64url without padding.
pub fn sign_login(key: &SigningKey, server: &str, user: &str, nonce: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.sign(&login_message(server, user, nonce)).to_bytes())
}

/// The claims of a JWT (not verified).
pub fn jwt_claims(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url claims"))
        .expect("JSON claims")
}

/// The header of a JWT (not verified).
pub fn jwt_header(token: &str) -> Value {
    let part = token.split('.').next().expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url header"))
        .expect("JSON header")
}

/// base64url (no padding) of a JSON value.
pub fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A response header as a string.
pub fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().expect("an ASCII header").to_owned())
}

/// Asserts a JSON error answer: status and code; returns the message.
pub async fn assert_error(r: reqwest::Response, status: u16, code: &str) -> String {
    let got = r.status().as_u16();
    let ct = header(&r, "content-type").unwrap_or_default();
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "status (body: {text})");
    assert!(
        ct.starts_with("application/json"),
        "error content type {ct}: {text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["error"], code, "error code in {text}");
    let msg = v["message"].as_str().expect("a message").to_owned();
    assert!(!msg.is_empty());
    msg
}

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_pattern(&mut out, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    out
}

/// Fills `buf` from a xorshift generator whose state is `state` (updated).
pub fn fill_pattern(buf: &mut [u8], mut state: u64) -> u64 {
    for chunk in buf.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    state
}

/// SHA-256, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Every regular file under `root` → SHA-256 of its bytes; other entries → their kind.
pub fn hash_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else if ft.is_file() {
                out.insert(rel, sha256_hex(&std::fs::read(&p).unwrap()));
            } else {
                out.insert(rel, format!("{ft:?}"));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Reads every regular file under `root` (path, bytes).
pub fn all_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let mut bytes = Vec::new();
                std::fs::File::open(e.path())
                    .unwrap()
                    .read_to_end(&mut bytes)
                    .unwrap();
                out.push((e.path(), bytes));
            }
        }
    }
    out
}

/// A parsed raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn parse(buf: &[u8]) -> RawResponse {
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "no HTTP response head in {:?}",
                    String::from_utf8_lossy(buf)
                )
            });
        let head = std::str::from_utf8(&buf[..split]).expect("an ASCII response head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let rest = &buf[split + 4..];
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            decode_chunked(rest)
        } else if let Some(len) = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
        {
            rest[..len.min(rest.len())].to_vec()
        } else {
            rest.to_vec()
        };
        RawResponse {
            status,
            headers,
            body,
        }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn decode_chunked(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = std::str::from_utf8(&rest[..eol]).unwrap_or("0");
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        let end = (start + size).min(rest.len());
        out.extend_from_slice(&rest[start..end]);
        if end + 2 > rest.len() {
            return out;
        }
        rest = &rest[end + 2..];
    }
}

/// A server with one filesystem and one read-write user, logged in.
pub struct Session {
    pub srv: TestServer,
    pub fs: String,
    pub user: String,
    pub key: SigningKey,
    pub token: String,
}

/// Starts a server with `extra` options, creates fs "files" and user "app", logs in.
pub async fn session(extra: &[&str]) -> Session {
    let srv = TestServer::start(extra);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    Session {
        srv,
        fs: "files".into(),
        user: "app".into(),
        key,
        token,
    }
}

/// A TLS connection to a test server at `addr` whose certificate is `cert_pem`.
pub async fn tls_connect(
    addr: SocketAddr,
    cert_pem: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(rustls_client_config(cert_pem)));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// An admin command held inside the running server: `efsctl restore` of a backup whose
/// `manifest.json` is a FIFO, which blocks in the command until the returned writer is
/// written to (and dropped). Returns once the restore has the FIFO open.
pub async fn restore_held_on_a_fifo(srv: &TestServer) -> (Child, std::fs::File) {
    use std::os::unix::fs::OpenOptionsExt;
    let src = srv.dir.path().join("held-backup");
    std::fs::create_dir(&src).unwrap();
    let fifo = src.join("manifest.json");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let restore = srv
        .efsctl_command(&["restore", "--fs", "held", "-i", src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running efsctl restore");
    // Opening the FIFO for writing without blocking succeeds once a reader has it open: the
    // restore is then inside the command, waiting for the manifest.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&fifo)
        {
            Ok(f) => return (restore, f),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the restore never opened the manifest: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// `efsctl audit show --json ARGS` on the server's data dir: the entries, oldest first.
pub fn audit_show(srv: &TestServer, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["audit", "show", "--json"];
    a.extend_from_slice(args);
    let out = srv.efsctl_ok(&a);
    serde_json::from_str::<Value>(&out)
        .expect("audit show --json prints JSON")
        .as_array()
        .expect("an array of entries")
        .clone()
}

/// The end of an audit log as its disk holds it (`audit`: the log's directory), for tests
/// that fill that disk and want one chosen entry to be the first that cannot be written: an
/// append fails on a full tmpfs only when it needs another page, and so does the syncer's
/// next rewrite of the HEAD anchor (a new file), once an entry is written after it.
#[derive(Debug)]
pub struct AuditTail {
    /// The newest audit file: the one the writer appends to.
    pub file: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// The sequence number of its last complete entry (`None`: it holds only its header).
    pub last_seq: Option<u64>,
    /// The sequence number the HEAD anchor names (`None`: no anchor yet).
    pub anchored_seq: Option<u64>,
    /// The volume's block size (a tmpfs: the page size).
    pub block: u64,
}

impl AuditTail {
    pub fn read(audit: &Path) -> AuditTail {
        let file = std::fs::read_dir(audit)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".log"))
            })
            .max()
            .expect("an audit file");
        let text = std::fs::read(&file).unwrap();
        let last_seq = text
            .split(|b| *b == b'\n')
            .rev()
            .skip(1) // what follows the last '\n': empty, or a torn entry
            .find_map(|line| {
                std::str::from_utf8(line)
                    .ok()?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            });
        let anchored_seq = std::fs::read_to_string(audit.join("HEAD"))
            .ok()
            .and_then(|h| h.split(' ').nth(2)?.parse().ok());
        let block = rustix::fs::statvfs(audit).unwrap().f_bsize;
        AuditTail {
            file,
            size: text.len() as u64,
            last_seq,
            anchored_seq,
            block,
        }
    }

    /// How many bytes the file can grow by before the volume must give it another block.
    pub fn room(&self) -> u64 {
        (self.block - self.size % self.block) % self.block
    }

    /// The anchor names the last entry: the syncer writes nothing until the next entry.
    pub fn anchored(&self) -> bool {
        self.last_seq.is_some() && self.last_seq == self.anchored_seq
    }
}

/// A number from the environment variable `name` (unset or not a number: `None`): seeds and
/// counts a randomised test takes for a replay.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The seed of a randomised test: `name`'s value when set (a replay), else one from the
/// clock.
pub fn seed_from_env(name: &str) -> u64 {
    env_u64(name).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}

/// A small seeded generator (splitmix64) for randomised tests, so that their choices replay
/// from the seed ([`seed_from_env`]). Not for anything secret.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Below `n` (> 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// In `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}
