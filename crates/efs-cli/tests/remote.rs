//! Keys, remotes and TLS trust, logins, tokens, exit codes: `efs keygen`, `efs remote`,
//! `efs token`, against a real server.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::{Env, Server, assert_code, assert_ok};

#[test]
fn keygen_writes_an_openssh_key_once() {
    let env = Env::new();
    let key = env.path("k/id_test");
    let out = env.ok(&["keygen", "-o", key.to_str().unwrap(), "-C", "me@here"]);
    let private = std::fs::read_to_string(&key).unwrap();
    assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = std::fs::read_to_string(env.path("k/id_test.pub")).unwrap();
    assert!(
        public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
            && public.trim_end().ends_with(" me@here")
    );
    // The public line and the operator's command are printed.
    assert!(out.contains(public.trim()), "{out}");
    assert!(out.contains("efsctl create-user"), "{out}");
    assert!(out.contains("SHA256:"), "{out}");
    // A comment with a line break is bad usage (it wrote a .pub of two lines), nothing written.
    let other = env.path("k/id_nl");
    env.fails(&["keygen", "-o", other.to_str().unwrap(), "-C", "a\nb"], 2);
    assert!(!other.exists());
    // Never overwritten.
    let err = env.fails(&["keygen", "-o", key.to_str().unwrap()], 5);
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), private);
    // Default place: the configuration directory.
    env.ok(&["keygen"]);
    assert!(env.cfg().join("id_ed25519").exists());
    assert!(env.cfg().join("id_ed25519.pub").exists());
    // ssh-keygen reads it, when it is installed.
    if let Ok(o) = Command::new("ssh-keygen").arg("-lf").arg(&key).output() {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn remotes_by_ca_fingerprint_and_accepted_fingerprint() {
    let env = Env::new();
    let key = env.key.to_str().unwrap();
    let url = env.server.url.clone();
    // --fingerprint: without colons, lower case.
    let bare = env.server.fingerprint.replace(':', "").to_lowercase();
    env.ok(&[
        "remote",
        "add",
        "fp",
        &url,
        "--user",
        "alice",
        "--key",
        key,
        "--fingerprint",
        &bare,
    ]);
    // --accept-fingerprint: pins what the server presents, without asking.
    let out = env.efs(&[
        "remote",
        "add",
        "tofu",
        &url,
        "--user",
        "alice",
        "--key",
        key,
        "--accept-fingerprint",
    ]);
    assert_ok(&["remote", "add"], &out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&env.server.fingerprint), "{err}");

    for r in ["drive", "fp", "tofu"] {
        env.ok(&["mkdir", "-p", &format!("{r}:/from-{r}")]);
    }
    let ls = env.ok(&["ls", "drive:/"]);
    assert_eq!(ls, "from-drive/\nfrom-fp/\nfrom-tofu/\n");

    let config = std::fs::read_to_string(env.cfg().join("config.toml")).unwrap();
    assert!(config.contains("[remotes.tofu]"), "{config}");
    assert!(
        config.contains(&format!("fingerprint = \"{}\"", env.server.fingerprint)),
        "{config}"
    );
    let mode = std::fs::metadata(env.cfg().join("config.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let list = env.ok(&["remote", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["remote", "list", "--json"])).unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["drive", "fp", "tofu"]);
    assert_eq!(json[1]["fingerprint"], env.server.fingerprint.as_str());
    assert_eq!(json[0]["user"], "alice");

    // A name in use is a conflict; a bad name or URL a usage error.
    env.fails(
        &[
            "remote",
            "add",
            "fp",
            &url,
            "--user",
            "alice",
            "--accept-fingerprint",
        ],
        5,
    );
    env.fails(
        &[
            "remote",
            "add",
            "a.b",
            &url,
            "--user",
            "alice",
            "--accept-fingerprint",
        ],
        2,
    );
    env.fails(
        &[
            "remote",
            "add",
            "plain",
            "http://127.0.0.1:1",
            "--user",
            "alice",
            "--accept-fingerprint",
        ],
        2,
    );

    // Removal takes the cached token too.
    assert!(env.cfg().join("tokens/fp.json").exists());
    env.ok(&["remote", "remove", "fp"]);
    assert!(!env.cfg().join("tokens/fp.json").exists());
    // An unknown remote is a usage error here too, as in `efs ls fp:/`.
    let err = env.fails(&["remote", "remove", "fp"], 2);
    assert!(err.contains("no remote named 'fp'"), "{err}");
    let err = env.fails(&["ls", "fp:/"], 2);
    assert!(err.contains("no remote named 'fp'"), "{err}");
}

#[test]
fn trust_on_first_use_refuses_without_a_terminal() {
    let env = Env::new();
    let key = env.key.to_str().unwrap();
    let err = env.fails(
        &[
            "remote",
            "add",
            "x",
            &env.server.url,
            "--user",
            "alice",
            "--key",
            key,
        ],
        6,
    );
    assert!(err.contains(&env.server.fingerprint), "{err}");
    assert!(err.contains("--accept-fingerprint"), "{err}");
    let config = std::fs::read_to_string(env.cfg().join("config.toml")).unwrap();
    assert!(!config.contains("remotes.x"), "{config}");
}

#[test]
fn trust_on_first_use_asks_on_a_terminal() {
    let env = Env::new();
    // `script` gives efs a terminal; the answer is typed into it.
    let Ok(_) = Command::new("script").arg("--version").output() else {
        eprintln!("script(1) is not installed: skipped");
        return;
    };
    let key = env.key.to_str().unwrap();
    let run = |name: &str, answer: &str| {
        let cmd = format!(
            "{} remote add {name} {} --user alice --key {key}",
            common::EFS,
            env.server.url
        );
        let mut child = env
            .under_terminal(&cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = common::drain(child.stdout.take().unwrap());
        common::wait_for(&out, "Trust it? [y/N]", std::time::Duration::from_secs(30));
        use std::io::Write;
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        child.stdin.as_mut().unwrap().flush().unwrap();
        let status = child.wait().unwrap();
        let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
        (status, text)
    };
    let (_, text) = run("no", "n\n");
    assert!(text.contains(&env.server.fingerprint), "{text}");
    let (status, text) = run("yes", "y\n");
    assert!(status.success(), "{text}");
    assert!(text.contains("Added remote 'yes'"), "{text}");
    let config = std::fs::read_to_string(env.cfg().join("config.toml")).unwrap();
    assert!(
        config.contains("[remotes.yes]") && !config.contains("[remotes.no]"),
        "{config}"
    );
    env.ok(&["ls", "yes:/"]);
}

#[test]
fn a_changed_certificate_is_refused_with_a_warning() {
    let env = Env::new();
    let key = env.key.to_str().unwrap();
    env.ok(&[
        "remote",
        "add",
        "pinned",
        &env.server.url,
        "--user",
        "alice",
        "--key",
        key,
        "--accept-fingerprint",
    ]);
    env.ok(&["ls", "pinned:/"]);

    // Another server (another certificate) now answers at the remote's URL.
    let other = Server::start(env.tmp.path(), "d2");
    let path = env.cfg().join("config.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, config.replace(&env.server.url, &other.url)).unwrap();

    let err = env.fails(&["ls", "pinned:/"], 6);
    assert!(
        err.contains("WARNING: THE CERTIFICATE OF REMOTE 'pinned' HAS CHANGED!"),
        "{err}"
    );
    assert!(
        err.contains(&env.server.fingerprint) && err.contains(&other.fingerprint),
        "{err}"
    );
    assert!(err.contains("efs remote remove pinned"), "{err}");
    // The recovery command keeps the remote's key (regression: it dropped --key and --fs).
    assert!(
        err.contains(&format!(
            "--user alice --key {key} --fingerprint NEW-FINGERPRINT"
        )),
        "{err}"
    );
    assert!(err.contains("efs: error:"), "{err}");
    // Trust by CA file: refused too, with its own explanation.
    let err = env.fails(&["cat", "drive:/x"], 6);
    assert!(err.contains("is not signed by the CA"), "{err}");
    // Trusting the system's roots: a self-signed certificate is not trusted, which `remote
    // add` says plainly (exit 6) rather than adding a remote every command would refuse; and
    // without rustls's own log line, coloured on a stderr that is no terminal (regression).
    let err = env.fails(
        &[
            "remote",
            "add",
            "sys",
            &env.server.url,
            "--user",
            "alice",
            "--key",
            key,
            "--system-roots",
        ],
        6,
    );
    assert!(
        err.contains("is not trusted by the system's root certificates")
            && err.contains("remote 'sys' not added")
            && err.contains("--ca FILE"),
        "{err}"
    );
    assert!(!err.contains("ERROR") && !err.contains('\x1b'), "{err}");
    assert!(!err.contains("Added remote"), "{err}");
    env.fails(&["ls", "sys:/"], 2);
    // A fingerprint given at `remote add` is checked against what the server presents.
    let err = env.fails(
        &[
            "remote",
            "add",
            "typo",
            &other.url,
            "--user",
            "alice",
            "--key",
            key,
            "--fingerprint",
            &env.server.fingerprint,
        ],
        6,
    );
    assert!(err.contains(&other.fingerprint), "{err}");
}

#[test]
fn a_wrong_key_is_refused_with_exit_4() {
    let env = Env::new();
    let other = env.path("mallory_key");
    env.ok(&["keygen", "-o", other.to_str().unwrap()]);
    let cert = env.server.cert();
    env.ok(&[
        "remote",
        "add",
        "wrong",
        &env.server.url,
        "--user",
        "alice",
        "--key",
        other.to_str().unwrap(),
        "--ca",
        cert.to_str().unwrap(),
    ]);
    let err = env.fails(&["ls", "wrong:/"], 4);
    assert!(
        err.contains("efs: error:") && err.contains("login refused"),
        "{err}"
    );
    assert!(err.contains("efs: hint:"), "{err}");
    // A missing key file: exit 4 as well, naming the file.
    env.ok(&[
        "remote",
        "add",
        "nokey",
        &env.server.url,
        "--user",
        "alice",
        "--key",
        "/nonexistent/key",
        "--ca",
        cert.to_str().unwrap(),
    ]);
    let err = env.fails(&["ls", "nokey:/"], 4);
    assert!(err.contains("/nonexistent/key"), "{err}");
}

#[test]
fn token_works_with_curl_and_is_cached_privately() {
    let env = Env::new();
    env.write("hello.txt", b"hello from efs\n");
    env.ok(&["cp", "hello.txt", "drive:/greetings/"]);
    let token = env.ok(&["token", "drive"]).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(env.server.cert())
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{}/greetings/hello.txt", env.server.url))
        .output()
        .expect("curl is installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello from efs\n");

    let cached = env.cfg().join("tokens/drive.json");
    let mode = std::fs::metadata(&cached).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The cached token is reused, not a new login per command.
    let again = env.ok(&["token", "drive"]).trim().to_owned();
    assert_eq!(again, token);
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["token", "--json", "drive"])).unwrap();
    assert_eq!(json["fs"], "drive");
    assert!(json["expires_at_unix"].as_u64().unwrap() > 0);
}

/// scripts/login-curl-openssl.sh, given an OpenSSH key, suggested `ssh-keygen -p -m PKCS8`,
/// which leaves an Ed25519 key in OpenSSH's format (the script then refused it again). The
/// advice it gives now works: `efs token` (covered above) or a PEM key made by openssl and
/// registered for a user.
#[test]
fn the_curl_login_script_gives_advice_that_works_for_an_openssh_key() {
    let env = Env::new();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/login-curl-openssl.sh");
    let run = |key: &std::path::Path, user: &str| {
        Command::new("bash")
            .arg(&script)
            .env("EFS_URL", &env.server.url)
            .env("EFS_USER", user)
            .env("EFS_KEY", key)
            .env(
                "CURL_OPTS",
                format!("--cacert {}", env.server.cert().display()),
            )
            .env_remove("EFS_FS")
            .env_remove("EFS_SERVER_ID")
            .output()
            .expect("bash is installed")
    };
    let out = run(&env.key, "alice");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is an OpenSSH key") && err.contains("TOKEN=$(efs token NAME)"),
        "{err}"
    );
    assert!(!err.contains("ssh-keygen -p"), "{err}");
    // The PEM route, as the hint says it.
    let pem = env.path("key.pem");
    let pubkey = env.path("pub.pem");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&pem)
        .status()
        .expect("openssl is installed (scripts/test.sh installs it)");
    assert!(ok.success());
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&pubkey, &out.stdout).unwrap();
    env.server.efsctl(&[
        "create-user",
        "pemuser",
        "--fs",
        "drive",
        "--pubkey",
        pubkey.to_str().unwrap(),
    ]);
    let out = run(&pem, "pemuser");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).split('.').count(), 3);
}

#[test]
fn exit_codes_for_usage_and_network() {
    let env = Env::new();
    // clap's usage errors and ours: 2.
    env.fails(&["cp", "only-one"], 2);
    env.fails(&["frobnicate"], 2);
    let err = env.fails(&["cp", "a", "b"], 2);
    assert!(err.contains("both local"), "{err}");
    let err = env.fails(&["ls", "nowhere:/"], 2);
    assert!(
        err.contains("no remote named 'nowhere'") && err.contains("efs: hint:"),
        "{err}"
    );
    env.fails(&["ls", "./local"], 2);
    // Nothing listens there: a network failure once the retries are used up.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    env.ok(&[
        "remote",
        "add",
        "down",
        &format!("https://127.0.0.1:{port}"),
        "--user",
        "alice",
        "--key",
        env.key.to_str().unwrap(),
        "--fingerprint",
        &env.server.fingerprint,
    ]);
    let out = env
        .cmd(&["ls", "down:/"])
        .env("EFS_MAX_ATTEMPTS", "2")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = assert_code(&["ls", "down:/"], &out, 7);
    assert!(err.contains("efs: error:"), "{err}");
    // --help and --version succeed.
    let help = env.ok(&["--help"]);
    assert!(
        help.contains("Exit codes:") && help.contains("6  TLS trust failure"),
        "{help}"
    );
    for cmd in [
        "keygen",
        "remote",
        "cp",
        "ls",
        "stat",
        "cat",
        "put",
        "rm",
        "mv",
        "mkdir",
        "token",
        "shell",
        "completions",
    ] {
        let h = env.ok(&[cmd, "--help"]);
        assert!(
            h.contains("Examples:"),
            "efs {cmd} --help has no examples:\n{h}"
        );
    }
    let h = env.ok(&["remote", "add", "--help"]);
    assert!(
        h.contains("Examples:") && h.contains("--accept-fingerprint"),
        "{h}"
    );
}

#[test]
fn completions_are_generated() {
    let env = Env::new();
    let bash = env.ok(&["completions", "bash"]);
    assert!(
        bash.contains("_efs()") && bash.contains("complete"),
        "{bash}"
    );
    let zsh = env.ok(&["completions", "zsh"]);
    assert!(zsh.contains("#compdef efs"), "{zsh}");
    env.fails(&["completions", "tcsh"], 2);
}

/// `efs completions bash | head -1`: a reader that went away ends it quietly with exit 0, as
/// `efs cat` (it panicked in clap_complete, exit 101). The pipe's read end is closed before
/// `efs` writes anything.
#[test]
fn completions_into_a_closed_pipe_is_success() {
    let env = Env::new();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = env
        .cmd(&["completions", "bash"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}", out.status.code());
    assert!(!err.contains("panicked"), "{err}");
}

/// After a restore onto a new machine (another certificate, another identity), the hint for
/// a remote trusted by a CA file is the whole `remote add` of that remote: with its --key and
/// --fs, quoted for the shell, so that run as printed it works. Regression: it printed only
/// `--user alice --ca NEW.pem`, which saved the default key instead of the remote's.
#[test]
fn a_replaced_ca_certificate_hint_re_adds_the_remote_as_configured() {
    let env = Env::new();
    let dir = env.path("my keys");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("alice key");
    std::fs::copy(&env.key, &key).unwrap();
    let key = key.to_str().unwrap();
    let cert = env.server.cert();
    env.ok(&[
        "remote",
        "add",
        "home",
        &env.server.url,
        "--user",
        "alice",
        "--key",
        key,
        "--fs",
        "drive",
        "--ca",
        cert.to_str().unwrap(),
    ]);
    env.ok(&["ls", "home:/"]);

    // The restored server: same filesystem and user, new certificate and identity, at the
    // remote's address.
    let other = Server::start(env.tmp.path(), "d2");
    other.efsctl(&["create-fs", "drive"]);
    other.efsctl(&[
        "create-user",
        "alice",
        "--fs",
        "drive",
        "--pubkey",
        &format!("{}.pub", env.key.display()),
    ]);
    let path = env.cfg().join("config.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, config.replace(&env.server.url, &other.url)).unwrap();

    let err = env.fails(&["ls", "home:/"], 6);
    assert!(err.contains("is not signed by the CA"), "{err}");
    let expected = format!(
        "efs remote add home {} --user alice --key '{key}' --fs drive --ca NEW.pem",
        other.url
    );
    let line = err
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("efs remote add home"))
        .unwrap_or_else(|| panic!("no remote add hint:\n{err}"));
    assert_eq!(line, expected, "{err}");

    // Run as printed, with the new CA file: the remote works again, with its own key.
    env.ok(&["remote", "remove", "home"]);
    let line = line.replace("NEW.pem", other.cert().to_str().unwrap());
    run_as_printed(&env, &line);
    let config = std::fs::read_to_string(&path).unwrap();
    assert!(config.contains(&format!("key = \"{key}\"")), "{config}");
    env.ok(&["ls", "home:/"]);
}

/// Runs `line`, a command `efs` printed, with `sh` in `env` (its `efs` first on the PATH).
fn run_as_printed(env: &Env, line: &str) {
    let bin_dir = std::path::Path::new(common::EFS).parent().unwrap();
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(line);
    env.configure(&mut sh);
    sh.env(
        "PATH",
        format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let out = sh.stdin(Stdio::null()).output().unwrap();
    assert_ok(&["sh", "-c", line], &out);
}

/// `remote add` records the server identity the challenge names and the client pins it: a
/// server that names another identity (a relay of another server's login challenge) gets no
/// signature. The refusal prints the commands that add the remote again as configured
/// (its key and CA file); run as printed they pin the identity the server names now.
#[test]
fn remote_add_pins_the_server_identity() {
    let env = Env::new();
    let cfg_path = env.cfg().join("config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let line = cfg
        .lines()
        .find(|l| l.trim_start().starts_with("server_id"))
        .unwrap_or_else(|| panic!("no server_id recorded:\n{cfg}"));
    let id = line.split('"').nth(1).unwrap().to_owned();
    assert!(id.starts_with("efs-") && id.len() == 36, "{id}");
    env.ok(&["ls", "drive:/"]);

    // The same server, now expected to be another one: the login is refused before signing.
    std::fs::write(
        &cfg_path,
        cfg.replace(&id, "efs-00000000000000000000000000000000"),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(env.cfg().join("tokens"));
    let out = env.efs(&["ls", "drive:/"]);
    assert!(
        !out.status.success(),
        "a login to an unexpected identity must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to sign"), "{err}");
    let printed: Vec<&str> = err
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("efs remote "))
        .collect();
    let expected_add = format!(
        "efs remote add drive {} --user alice --key {} --ca {}",
        env.server.url,
        env.key.display(),
        env.server.cert().display()
    );
    assert_eq!(
        printed,
        ["efs remote remove drive", expected_add.as_str()],
        "{err}"
    );
    for line in printed {
        run_as_printed(&env, line);
    }
    env.ok(&["ls", "drive:/"]);
    let readded = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(
        readded.contains(&id),
        "the identity pinned again:\n{readded}"
    );
    // Back to the test's start: the remote as it was (with its identity) and no tokens.
    std::fs::write(&cfg_path, &cfg).unwrap();
    let _ = std::fs::remove_dir_all(env.cfg().join("tokens"));

    // A remote added without it (the server could not be asked then): the first command
    // asks, records and pins it (it signed for any server for good before).
    let without: String = cfg
        .lines()
        .filter(|l| !l.trim_start().starts_with("server_id"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cfg_path, without).unwrap();
    let _ = std::fs::remove_dir_all(env.cfg().join("tokens"));
    env.ok(&["ls", "drive:/"]);
    let now = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(
        now.lines()
            .any(|l| l.trim_start().starts_with("server_id") && l.contains(&id)),
        "recorded at first use:\n{now}"
    );
}

/// `efs cat` of a file whose download the server cuts short (every token of the user
/// revoked after its first bytes) stops with what happened and exit 4, where it said
/// "connection failed: … stream error received: unexpected internal error" and exit 7 (a
/// network failure to retry); the next command logs in again and reads it whole.
#[test]
fn a_download_to_a_stream_cut_short_by_a_revoke_says_so() {
    use std::io::Read as _;
    let env = Env::new();
    let big = common::noise(48 << 20);
    let out = env.efs_input(&["put", "drive:/big.bin"], &big);
    assert_ok(&["put"], &out);
    let mut child = env
        .cmd(&["cat", "drive:/big.bin"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running efs");
    let mut stdout = child.stdout.take().expect("piped");
    let mut first = vec![0u8; 64 << 10];
    stdout
        .read_exact(&mut first)
        .expect("the file's first bytes");
    env.server.efsctl(&["revoke", "alice"]);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = assert_code(&["cat"], &out, 4);
    assert!(
        err.contains("the server ended this login's access while sending the file")
            && err.contains(&format!("of {} bytes", big.len()))
            && err.contains("hint: what was written is incomplete"),
        "{err}"
    );
    assert!(first.len() + rest.len() < big.len(), "cut short");
    assert_eq!(env.cat("drive:/big.bin"), big);
}

/// A cached token the server no longer takes (here: every token of the user revoked) is
/// replaced: `efs token` prints a new one, and `efs put` logs in again and sends a short
/// stdin body again (it used to fail with "login refused … check the key", exit 4, and work
/// only when run again). A body too long to hold, which streams and cannot be sent twice,
/// fails with what happened (not the "check the key" hint) and leaves a new token for the next
/// command (the dead one was kept on disk and every later run failed with it).
#[test]
fn a_revoked_cached_token_is_replaced() {
    let env = Env::new();
    let old = env.ok(&["token", "drive"]).trim().to_owned();
    env.server.efsctl(&["revoke", "alice"]);
    let new = env.ok(&["token", "drive"]).trim().to_owned();
    assert_ne!(new, old, "a new token after the revoke");
    let cached = std::fs::read_to_string(env.cfg().join("tokens/drive.json")).unwrap();
    assert!(cached.contains(&new), "the new token is cached");

    env.server.efsctl(&["revoke", "alice"]);
    let out = env.efs_input(&["put", "drive:/from-stdin.txt"], b"first try");
    assert_ok(&["put"], &out);
    assert_eq!(env.cat("drive:/from-stdin.txt"), b"first try");

    // Over 4 MiB: streamed, so sent once.
    let big = common::noise((4 << 20) + 1);
    env.server.efsctl(&["revoke", "alice"]);
    let out = env.efs_input(&["put", "drive:/big.bin"], &big);
    let err = assert_code(&["put"], &out, 4);
    assert!(
        err.contains("the server refused the token (revoked, grants changed or expired)")
            && err.contains("a new login succeeded")
            && err.contains("standard input")
            && err.contains("run the command again"),
        "{err}"
    );
    assert!(!err.contains("check the user name"), "{err}");
    let out = env.efs_input(&["put", "drive:/big.bin"], &big);
    assert_ok(&["put"], &out);
    assert_eq!(env.cat("drive:/big.bin"), big);
}

/// Regression: `remote add` kept a URL with a path (every login then went to
/// `/patients/_efs/auth/challenge` and was "refused"), refused `HTTPS://`, and took a public
/// key as `--key`, which failed only at the first login.
#[test]
fn remote_add_takes_a_server_url_and_a_private_key_only() {
    let env = Env::new();
    let key = env.key.to_str().unwrap();
    let ca = env.server.cert();
    let ca = ca.to_str().unwrap();
    let url = env.server.url.clone();
    for bad in [
        format!("{url}/patients"),
        format!("{url}/?fs=patients"),
        format!("{url}#x"),
        url.replace("https://", "https://alice@"),
    ] {
        let err = env.fails(
            &[
                "remote", "add", "p", &bad, "--user", "alice", "--key", key, "--ca", ca,
            ],
            2,
        );
        assert!(err.contains("https://HOST:PORT"), "{bad}: {err}");
    }
    assert!(
        !std::fs::read_to_string(env.cfg().join("config.toml"))
            .unwrap()
            .contains("[remotes.p]")
    );

    let upper = url.replace("https://", "HTTPS://");
    env.ok(&[
        "remote",
        "add",
        "up",
        &format!("{upper}/"),
        "--user",
        "alice",
        "--key",
        key,
        "--ca",
        ca,
    ]);
    env.ok(&["mkdir", "up:/works"]);
    let list = env.ok(&["remote", "list"]);
    assert!(list.contains(&format!("up\t{url}\t")), "{list}");

    let public = format!("{key}.pub");
    let err = env.fails(
        &[
            "remote", "add", "pk", &url, "--user", "alice", "--key", &public, "--ca", ca,
        ],
        2,
    );
    assert!(
        err.contains("is a public key") && err.contains(&format!("--key {key}")),
        "{err}"
    );
}
