//! The Docker packaging, tested outside Docker (no Docker engine runs on the development
//! machines): `docker/entrypoint.sh` is run with `sh`, with PATH pointing at the freshly built
//! debug binaries, on a temporary data dir and key-part files standing in for Docker secrets.
//! The Dockerfile itself can only be checked as text here.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server may take to print "Listening on" (debug build, Argon2, busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

fn entrypoint() -> PathBuf {
    repo_root().join("docker").join("entrypoint.sh")
}

/// A temporary "container": `bin/` (symlinks to the debug binaries, first on PATH), `s/`
/// (the secrets), `nosecrets/` (empty), and the data dir `efs/`.
struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("efs-docker-")
            .tempdir()
            .expect("a temporary directory");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let server = Path::new(env!("CARGO_BIN_EXE_efs-server"));
        let built = server.parent().expect("the binaries' directory");
        // efs-server and efsctl are built for this package's tests; `efs` (another package)
        // is linked when a build left it there.
        for name in ["efs-server", "efsctl", "efs"] {
            let target = built.join(name);
            if target.exists() {
                std::os::unix::fs::symlink(&target, bin.join(name)).unwrap();
            }
        }
        assert!(
            bin.join("efsctl").exists(),
            "efsctl is built beside efs-server"
        );
        std::fs::create_dir_all(dir.path().join("s")).unwrap();
        std::fs::create_dir_all(dir.path().join("nosecrets")).unwrap();
        Env { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn data(&self) -> PathBuf {
        self.path("efs")
    }

    /// Writes a key part (44 base64 characters, as the docs' `head -c 32 … | base64`).
    fn write_part(&self, rel: &str, seed: u8) -> PathBuf {
        let p = self.path(rel);
        let bytes: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(seed))
            .collect();
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(bytes) + "\n";
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// `sh docker/entrypoint.sh ARGS` with a clean environment: PATH first on `bin/`,
    /// EFS_DATA, EFS_LISTEN=127.0.0.1:0, secrets from an empty directory unless `envs` says.
    fn command(&self, args: &[&str], envs: &[(&str, String)]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg(entrypoint())
            .args(args)
            .current_dir(self.dir.path());
        for k in [
            "EFS_PASSPHRASE",
            "EFS_PASSPHRASE_FILE",
            "EFS_KEY_PART_FILES",
            "EFS_ALLOW_GENERATED_KEY",
            "EFS_GENERATED_KEY_FILE",
            "EFS_SECRETS_DIR",
            "EFS_LOG",
        ] {
            cmd.env_remove(k);
        }
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        );
        cmd.env("PATH", path)
            .env("EFS_DATA", self.data())
            .env("EFS_LISTEN", "127.0.0.1:0")
            .env("EFS_SECRETS_DIR", self.path("nosecrets"))
            .stdin(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs the entrypoint to completion (a refusal, or an efsctl command).
    fn run(&self, args: &[&str], envs: &[(&str, String)]) -> Output {
        self.command(args, envs).output().expect("running sh")
    }

    /// Starts the server through the entrypoint; `Err` if it exits before listening.
    fn start(&self, args: &[&str], envs: &[(&str, String)]) -> Result<Running, String> {
        let mut cmd = self.command(args, envs);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning sh");
        let out_lines = Arc::new(Mutex::new(Vec::new()));
        let err_lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        let o = out_lines.clone();
        let t1 = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                o.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let err = child.stderr.take().unwrap();
        let e = err_lines.clone();
        let t2 = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                e.lock().unwrap().push(line);
            }
        });
        let mut running = Running {
            child,
            out: out_lines,
            err: err_lines,
            readers: vec![t1, t2],
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("Listening on https://127.0.0.1:") => {
                    return Ok(running);
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = running.child.kill();
                    let status = running.child.wait().ok();
                    for t in running.readers.drain(..) {
                        let _ = t.join();
                    }
                    return Err(format!(
                        "did not start ({status:?})\n--- stdout\n{}\n--- stderr\n{}",
                        running.stdout(),
                        running.stderr()
                    ));
                }
            }
        }
    }
}

/// A server started through the entrypoint (the `sh` process exec'd into efs-server).
struct Running {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    fn stdout(&self) -> String {
        self.out.lock().unwrap().join("\n")
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM (what `docker stop` sends) and waits for the exit.
    fn terminate(mut self) -> (ExitStatus, String, String) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(st.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the server did not stop within {STOP_TIMEOUT:?} of SIGTERM\n{}\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for t in self.readers.drain(..) {
            let _ = t.join();
        }
        (status, self.stdout(), self.stderr())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn stop_gracefully(r: Running) {
    let (status, out, err) = r.terminate();
    assert!(
        status.success(),
        "exit status 0 after SIGTERM, got {status:?}\n{out}\n{err}"
    );
    assert!(
        out.lines().any(|l| l == "Stopped."),
        "\"Stopped.\" printed\n{out}\n{err}"
    );
}

#[test]
fn two_secret_parts_start_admin_sigterm_restart_and_missing_part() {
    let env = Env::new();
    let p1 = env.write_part("s/efs_key_part1", 1);
    let p2 = env.write_part("s/efs_key_part2", 2);
    let files = format!("{} {}", p1.display(), p2.display());
    let parts = || vec![("EFS_KEY_PART_FILES", files.clone())];

    // First start: a new data dir, extra arguments passed through to efs-server.
    let r = env
        .start(&["--cache-size", "0"], &parts())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !r.stderr().to_lowercase().contains("error"),
        "--cache-size 0 passed through without an error\n{}",
        r.stderr()
    );
    assert!(
        r.stdout().contains("Initialised a new data dir"),
        "{}",
        r.stdout()
    );

    // efsctl through the entrypoint, as `docker exec efs-server efsctl …` (EFS_DATA only).
    let o = env.run(&["efsctl", "create-fs", "user-data"], &[]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let o = env.run(&["efsctl", "list-fs"], &[]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(text(&o.stdout).contains("user-data"), "{}", text(&o.stdout));

    // The key parts were recorded in the order given: two file parts.
    let kp = std::fs::read_to_string(env.data().join("system/keyparts.json")).unwrap();
    assert_eq!(kp.matches("\"file\"").count(), 2, "{kp}");

    stop_gracefully(r);

    // Restart with the parts in the same order, this time from the secrets directory (the
    // default: every efs_key_part* in sorted order).
    let r = env
        .start(
            &[],
            &[("EFS_SECRETS_DIR", env.path("s").display().to_string())],
        )
        .unwrap_or_else(|e| panic!("restart from the sorted secrets: {e}"));
    assert!(!r.stdout().contains("Initialised"), "{}", r.stdout());
    let o = env.run(&["efsctl", "list-fs"], &[]);
    assert!(text(&o.stdout).contains("user-data"), "{}", text(&o.stdout));
    stop_gracefully(r);

    // A restart with a part missing is refused by the entrypoint, naming the file.
    std::fs::rename(&p2, env.path("moved-away")).unwrap();
    let o = env.run(&[], &parts());
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("key part file {}", p2.display())) && err.contains("does not exist"),
        "{err}"
    );
    assert!(!text(&o.stdout).contains("Listening"));

    // Parts in another order: the server refuses before it serves.
    std::fs::rename(env.path("moved-away"), &p2).unwrap();
    let swapped = format!("{} {}", p2.display(), p1.display());
    match env.start(&[], &[("EFS_KEY_PART_FILES", swapped)]) {
        Ok(r) => panic!("started with the parts swapped\n{}", r.stdout()),
        Err(e) => assert!(e.contains("key part"), "{e}"),
    }
}

#[test]
fn no_key_part_is_refused_unless_generated_key_allowed() {
    let env = Env::new();
    let o = env.run(&[], &[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no key part") && err.contains("EFS_ALLOW_GENERATED_KEY"),
        "{err}"
    );
    assert!(err.contains("next to the data"), "{err}");
    assert!(!env.data().exists(), "nothing written on a refusal");

    // Allowed: a key part is generated (mode 0600) where EFS_GENERATED_KEY_FILE says.
    let genfile = env.path("gen.keypart");
    let allow = vec![
        ("EFS_ALLOW_GENERATED_KEY", "1".to_string()),
        ("EFS_GENERATED_KEY_FILE", genfile.display().to_string()),
    ];
    let r = env.start(&[], &allow).unwrap_or_else(|e| panic!("{e}"));
    let mode = std::fs::metadata(&genfile).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(r.stderr().contains("WARNING"), "{}", r.stderr());
    stop_gracefully(r);
    // The same generated part opens it again.
    let r = env.start(&[], &allow).unwrap_or_else(|e| panic!("{e}"));
    stop_gracefully(r);
}

#[test]
fn passphrase_file_adds_a_passphrase_part() {
    let env = Env::new();
    let p1 = env.write_part("s/efs_key_part1", 7);
    let pp = env.path("s/efs_passphrase");
    std::fs::write(&pp, "correct horse battery staple\n").unwrap();
    let envs = vec![
        ("EFS_SECRETS_DIR", env.path("s").display().to_string()),
        ("EFS_PASSPHRASE_FILE", pp.display().to_string()),
    ];
    let r = env.start(&[], &envs).unwrap_or_else(|e| panic!("{e}"));
    stop_gracefully(r);
    let kp = std::fs::read_to_string(env.data().join("system/keyparts.json")).unwrap();
    assert!(kp.contains("\"passphrase\""), "{kp}");
    assert_eq!(kp.matches("\"file\"").count(), 1, "{kp}");

    // Without the passphrase, the data dir does not open.
    match env.start(&[], &[("EFS_KEY_PART_FILES", p1.display().to_string())]) {
        Ok(r) => panic!("started without the passphrase\n{}", r.stdout()),
        Err(e) => assert!(e.contains("key part"), "{e}"),
    }
    // A missing passphrase file is refused by the entrypoint.
    let o = env.run(
        &[],
        &[(
            "EFS_PASSPHRASE_FILE",
            env.path("nope").display().to_string(),
        )],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("EFS_PASSPHRASE_FILE"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn dockerfile_and_compose_as_text() {
    let root = repo_root();
    let df = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = df.lines().map(str::trim).collect();
    let users: Vec<&&str> = lines.iter().filter(|l| l.starts_with("USER ")).collect();
    assert_eq!(users.last().map(|l| **l), Some("USER efs"), "runs as efs");
    assert!(df.contains("--uid 10001") && df.contains("--gid 10001"));
    assert!(lines.contains(&"COPY docker/entrypoint.sh /usr/local/bin/efs-entrypoint"));
    assert!(lines.contains(&r#"ENTRYPOINT ["/usr/local/bin/efs-entrypoint"]"#));
    assert!(
        df.contains("ENV EFS_DATA=/efs"),
        "docker exec efsctl finds /efs"
    );
    assert!(lines.contains(&"EXPOSE 8443"));
    assert!(df.contains("FROM rust:1.95-bookworm AS builder"));
    assert!(df.contains("FROM debian:bookworm-slim"));
    assert!(df.contains("cargo build --release --locked --bin efs-server --bin efsctl --bin efs"));

    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).expect("compose");
    for needle in [
        "efs-server:",
        "build: .",
        "8443:8443",
        "./efs:/efs",
        "efs_key_part1",
        "file: ./secrets/efs_key_part1",
        "restart: unless-stopped",
        "stop_grace_period: 45s",
    ] {
        assert!(compose.contains(needle), "docker-compose.yml has {needle}");
    }
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target"));

    // The entrypoint is POSIX sh and exec's the server (signals reach it).
    let ep = std::fs::read_to_string(entrypoint()).unwrap();
    assert!(ep.starts_with("#!/bin/sh\n") && ep.contains("set -eu"));
    assert!(ep.contains("exec \"$prog\" \"$@\""));
}
