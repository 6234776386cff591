//! Harness of the `efs` end-to-end tests: a real `efs-server` process on a temporary data
//! dir and a free port, `efsctl` against it, and the `efs` binary run with its own
//! configuration directory, home and cache (`EFS_CONFIG_DIR=<tmp>/cfg`, `HOME=<tmp>`,
//! `XDG_CACHE_HOME=<tmp>/cache`), never an ssh-agent.
//!
//! The server binaries are siblings of the `efs` binary in the target directory:
//! `cargo build -p efs-server --bins` builds them (scripts/test.sh does it first).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
pub const EFS: &str = env!("CARGO_BIN_EXE_efs");

/// How long a debug server may take to print "Listening on" on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A sibling binary of `efs` (efs-server, efsctl).
pub fn sibling(name: &str) -> PathBuf {
    let p = Path::new(EFS)
        .parent()
        .expect("the efs binary is in a directory")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p efs-server --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A running `efs-server` on `<dir>/<name>`, killed on drop.
pub struct Server {
    pub data: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// As printed: `AB:CD:…`.
    pub fingerprint: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(dir: &Path, name: &str) -> Server {
        Self::start_with(dir, name, &[])
    }

    pub fn start_with(dir: &Path, name: &str, extra: &[&str]) -> Server {
        let data = dir.join(name);
        let mut child = Command::new(sibling("efs-server"))
            .arg("--data")
            .arg(&data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .env_remove("EFS_DATA")
            .env_remove("EFS_LISTEN")
            .env_remove("EFS_PASSPHRASE")
            .env_remove("EFS_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting efs-server");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let err = child.stderr.take().expect("piped");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut url, mut fingerprint) = (None, None);
        while url.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = line.strip_prefix("TLS certificate SHA-256 fingerprint: ") {
                        fingerprint = v.split_whitespace().next().map(str::to_owned);
                    } else if let Some(v) = line.strip_prefix("Listening on ") {
                        url = Some(v.trim().to_owned());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "efs-server did not start\n--- stdout\n{}\n--- stderr\n{}",
                        stdout.lock().unwrap().join("\n"),
                        stderr.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Server {
            data,
            url: url.expect("checked"),
            fingerprint: fingerprint.expect("the server prints its certificate's fingerprint"),
            child,
            stdout,
            stderr,
        }
    }

    /// The server's self-signed certificate, which `--ca` can name.
    pub fn cert(&self) -> PathBuf {
        self.data.join("system").join("tls-cert.pem")
    }

    /// Runs efsctl on this server's data dir (through its admin socket); panics on failure.
    pub fn efsctl(&self, args: &[&str]) -> String {
        let out = Command::new(sibling("efsctl"))
            .arg("--data")
            .arg(&self.data)
            .args(args)
            .env_remove("EFS_DATA")
            .stdin(Stdio::null())
            .output()
            .expect("running efsctl");
        assert!(
            out.status.success(),
            "efsctl {args:?} failed\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server at once (SIGKILL), as a crash does.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- efs-server stdout\n{}\n--- efs-server stderr\n{}",
                self.stdout.lock().unwrap().join("\n"),
                self.stderr()
            );
        }
    }
}

/// A temporary home with a server, a filesystem `drive`, a user `alice` whose key was made
/// by `efs keygen`, and the remote `drive` trusting the server's certificate file.
pub struct Env {
    pub tmp: TempDir,
    pub server: Server,
    /// alice's private key.
    pub key: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        Self::with_server_args(&[])
    }

    /// [`Env::new`] with `extra` options for efs-server.
    pub fn with_server_args(extra: &[&str]) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("efs-cli-e2e-")
            .tempdir()
            .expect("a temporary directory");
        let server = Server::start_with(tmp.path(), "d", extra);
        let env = Env {
            key: tmp.path().join("alice_key"),
            tmp,
            server,
        };
        env.server.efsctl(&["create-fs", "drive"]);
        let key = env.key.clone();
        env.ok(&["keygen", "-o", key.to_str().unwrap()]);
        let pubkey = format!("{}.pub", key.display());
        env.server
            .efsctl(&["create-user", "alice", "--fs", "drive", "--pubkey", &pubkey]);
        let (url, cert) = (env.server.url.clone(), env.server.cert());
        env.ok(&[
            "remote",
            "add",
            "drive",
            &url,
            "--user",
            "alice",
            "--key",
            key.to_str().unwrap(),
            "--ca",
            cert.to_str().unwrap(),
        ]);
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn cfg(&self) -> PathBuf {
        self.path("cfg")
    }

    /// The `efs` command with this environment, run in the temporary directory.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(EFS);
        c.args(args);
        self.configure(&mut c);
        c
    }

    /// `cmdline` (a shell command line) run under `script(1)`, which gives it a terminal;
    /// what is written to the command's stdin is typed into that terminal.
    pub fn under_terminal(&self, cmdline: &str) -> Command {
        let mut c = Command::new("script");
        c.args(["-qefc", cmdline, "/dev/null"]);
        self.configure(&mut c);
        c
    }

    /// Gives `c` this environment (for a command that runs `efs` itself, e.g. a shell).
    pub fn configure(&self, c: &mut Command) {
        c.current_dir(self.tmp.path())
            .env("EFS_CONFIG_DIR", self.cfg())
            .env("HOME", self.tmp.path())
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("EFS_LOG")
            .env_remove("EFS_KEY_PASSPHRASE")
            .env_remove("EFS_MAX_ATTEMPTS");
    }

    /// Runs `efs args` with stdin closed.
    pub fn efs(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("running efs")
    }

    /// Runs `efs args` with `input` on stdin.
    pub fn efs_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running efs");
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("waiting for efs");
        writer.join().unwrap();
        out
    }

    /// Runs `efs args`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.efs(args);
        assert_ok(args, &out)
    }

    /// Runs `efs args`, asserts exit code `code`, returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.efs(args);
        assert_code(args, &out, code)
    }

    /// Adds the user `reader` with a read-only grant on `drive`, and the remote `ro` for it.
    pub fn add_read_only_user(&self) {
        let key = self.path("reader_key");
        self.ok(&["keygen", "-o", key.to_str().unwrap()]);
        self.server.efsctl(&[
            "create-user",
            "reader",
            "--fs",
            "drive",
            "--read-only",
            "--pubkey",
            &format!("{}.pub", key.display()),
        ]);
        self.ok(&[
            "remote",
            "add",
            "ro",
            &self.server.url,
            "--user",
            "reader",
            "--key",
            key.to_str().unwrap(),
            "--ca",
            self.server.cert().to_str().unwrap(),
        ]);
    }

    /// Writes a local file below the temporary directory (parents created).
    pub fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        p
    }

    /// The content of a remote file, through `efs cat`.
    pub fn cat(&self, remote_path: &str) -> Vec<u8> {
        let out = self.efs(&["cat", remote_path]);
        assert_ok(&["cat", remote_path], &out);
        out.stdout
    }

    /// Adds another filesystem and user (with its own key) and the remote `name` for it.
    pub fn add_fs_user(&self, name: &str, fs: &str, user: &str) {
        self.server.efsctl(&["create-fs", fs]);
        let key = self.path(&format!("{user}_key"));
        self.ok(&["keygen", "-o", key.to_str().unwrap()]);
        self.server.efsctl(&[
            "create-user",
            user,
            "--fs",
            fs,
            "--pubkey",
            &format!("{}.pub", key.display()),
        ]);
        self.ok(&[
            "remote",
            "add",
            name,
            &self.server.url,
            "--user",
            user,
            "--key",
            key.to_str().unwrap(),
            "--ca",
            self.server.cert().to_str().unwrap(),
        ]);
    }
}

pub fn assert_ok(args: &[&str], out: &Output) -> String {
    assert!(
        out.status.success(),
        "efs {args:?} failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_code(args: &[&str], out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "efs {args:?}: expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `len` bytes that do not compress (xorshift), so that what is written of them is as
/// large as they are.
pub fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Reads everything from `r` into a shared buffer, in a thread.
pub fn drain(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    buf
}

/// Waits until `buf` contains `needle` (panics after `timeout` with what it has).
pub fn wait_for(buf: &Arc<Mutex<Vec<u8>>>, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if String::from_utf8_lossy(&buf.lock().unwrap()).contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {needle:?}; got:\n{}",
            String::from_utf8_lossy(&buf.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `efs args` without the privilege to read or write what its mode forbids: as root (whose
/// capabilities ignore modes), through `setpriv` with every capability dropped; `None` when
/// root cannot drop them here.
pub fn efs_unprivileged(env: &Env, args: &[&str]) -> Option<Output> {
    let mut c = if rustix::process::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--inh-caps=-all", "--bounding-set=-all", EFS]);
        c
    } else {
        Command::new(EFS)
    };
    c.args(args);
    env.configure(&mut c);
    let out = c.stdin(Stdio::null()).output().ok()?;
    // setpriv itself failed (not allowed here): no test.
    if String::from_utf8_lossy(&out.stderr).starts_with("setpriv:") {
        return None;
    }
    Some(out)
}
