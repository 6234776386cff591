//! `efs shell` against a real server: driven through a pipe (rustyline then reads plain
//! lines) and through a terminal (`script(1)`) for the prompt and Tab completion.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Env, assert_ok};

#[test]
fn shell_commands_through_a_pipe() {
    let env = Env::new();
    env.write("local.txt", b"from a local file\n");
    let script = "\
help
pwd
mkdir /notes
cd notes
pwd
post hello.txt local.txt
ls
get hello.txt
get hello.txt fetched.txt
ls -l /
cd /nope
stat hello.txt
clear-cache
n
clear-cache
y
mv hello.txt hi.txt
rm hello.txt
ls
bogus
post pasted.txt
line one
line two
";
    let out = env.efs_input(&["shell", "drive"], script.as_bytes());
    // Scripted, the shell goes on after a failure and exits with the first one's code:
    // `cd /nope`, not found.
    let stderr = common::assert_code(&["shell"], &out, 3);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stderr.contains("efs: error: 3 commands failed (the exit code is the first one's)"),
        "{stderr}"
    );
    // help
    assert!(
        stdout.contains("clear-cache") && stdout.contains("post PATH"),
        "{stdout}"
    );
    // pwd before and after cd
    assert!(stdout.contains("/\n/notes\n"), "{stdout}");
    assert!(
        stdout.contains("Encrypted and stored /notes/hello.txt"),
        "{stdout}"
    );
    // ls, then get printing the content
    assert!(
        stdout.contains("hello.txt\nfrom a local file\n"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(env.path("fetched.txt")).unwrap(),
        b"from a local file\n"
    );
    assert!(stdout.contains("notes/"), "{stdout}");
    // A failed command reports and the shell goes on.
    assert!(stderr.contains("error:"), "{stderr}");
    // clear-cache asks as the seed does; "n" keeps, "y" clears.
    let cache = env.path("cache/efs");
    assert!(
        stdout.contains(&format!("`rm -rf {}/shell-", cache.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("will be performed. Continue ? (y/N) : "),
        "{stdout}"
    );
    assert!(stdout.contains("Nothing deleted."), "{stdout}");
    assert!(stdout.contains("Cache cleared"), "{stdout}");
    assert!(stderr.contains("unknown command 'bogus'"), "{stderr}");
    // rm of the moved-away name failed; the renamed file is listed.
    assert!(stdout.contains("hi.txt\n"), "{stdout}");
    // The pasted content ends at end of input.
    assert_eq!(env.cat("drive:/notes/pasted.txt"), b"line one\nline two\n");
    assert_eq!(env.cat("drive:/notes/hi.txt"), b"from a local file\n");
    // The decrypted copies do not outlive the shell.
    let left: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// A scripted shell whose upload fails exits non-zero, so that `… | efs shell drive && rm
/// ./a.pdf` keeps the only copy; one whose commands all succeed exits 0.
#[test]
fn a_scripted_shell_exits_with_its_first_failure() {
    let env = Env::new();
    env.write("a.pdf", b"the only copy");
    // A file stands where the upload's parent directory would be: 409.
    env.ok(&["cp", "a.pdf", "drive:/taken"]);
    let out = env.efs_input(
        &["shell", "drive"],
        b"post /taken/a.pdf a.pdf
pwd
",
    );
    let stderr = common::assert_code(&["shell"], &out, 5);
    assert!(stderr.contains("1 command failed"), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/\n",
        "it went on after the failure"
    );
    let out = env.efs_input(
        &["shell", "drive"],
        b"post /ok/a.pdf a.pdf
",
    );
    assert_ok(&["shell"], &out);
}

/// A failed command is reported as `error: …` with each cause once: a missing local file
/// printed "No such file or directory (os error 2)" twice.
#[test]
fn a_scripted_shell_prints_each_cause_once() {
    let env = Env::new();
    let out = env.efs_input(&["shell", "drive"], b"post /a.txt missing.txt\n");
    let stderr = common::assert_code(&["shell"], &out, 3);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("missing.txt") || line.contains("local I/O"),
        "{line}"
    );
    assert_eq!(line.matches("os error 2").count(), 1, "{line}");
}

/// `rm` and `mv` refuse a path with `.` or `..`: an invalid path, exit 2 as everywhere else in
/// `efs` (it was 1), and the file is left alone. An unknown command is bad usage too.
#[test]
fn a_scripted_shell_refusing_a_dot_segment_exits_2() {
    let env = Env::new();
    env.write("note.txt", b"keep me");
    env.ok(&["cp", "note.txt", "drive:/Documents/note.txt"]);
    let out = env.efs_input(
        &["shell", "drive"],
        b"cd /Documents\nrm ../Documents/note.txt\n",
    );
    let stderr = common::assert_code(&["shell"], &out, 2);
    assert!(
        stderr.contains("refusing a path with '.' or '..'"),
        "{stderr}"
    );
    assert_eq!(env.cat("drive:/Documents/note.txt"), b"keep me");
    let out = env.efs_input(&["shell", "drive"], b"mv ./note.txt x\n");
    common::assert_code(&["shell"], &out, 2);
    let out = env.efs_input(&["shell", "drive"], b"frobnicate\n");
    common::assert_code(&["shell"], &out, 2);
}

/// Regression: the shell's `mv` of a directory into its own subtree had no check of its own:
/// the server's conflict came with the hint about a file where a directory is needed, where
/// `efs mv` says `cannot move … into itself`.
#[test]
fn the_shell_refuses_to_move_a_directory_into_itself() {
    let env = Env::new();
    env.ok(&["mkdir", "-p", "drive:/in/sub"]);
    let out = env.efs_input(&["shell", "drive"], b"mv /in /in/sub\n");
    let stderr = common::assert_code(&["shell"], &out, 2);
    assert!(
        stderr.contains("cannot move /in into itself (/in/sub/in)"),
        "{stderr}"
    );
    assert!(!stderr.contains("a file is where a directory"), "{stderr}");
    env.ok(&["stat", "drive:/in/sub"]);
}

/// `mv FILE /typo/` in the shell renamed the file to `/typo` (the trailing `/` was dropped):
/// refused, exit 3, as `efs mv` refuses it; a directory to a new name with a `/` is renamed.
#[test]
fn the_shell_moves_into_a_missing_directory_only_by_renaming_a_directory() {
    let env = Env::new();
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/a.txt"], b"a"));
    let out = env.efs_input(&["shell", "drive"], b"mv /a.txt /typo/\n");
    let stderr = common::assert_code(&["shell"], &out, 3);
    assert!(stderr.contains("/typo is not a directory"), "{stderr}");
    env.fails(&["stat", "drive:/typo"], 3);
    env.ok(&["mkdir", "drive:/d"]);
    let out = env.efs_input(&["shell", "drive"], b"mv /d /e/\n");
    assert_ok(&["shell"], &out);
    env.ok(&["stat", "drive:/e"]);
    // And efs mv the same way.
    env.ok(&["mv", "drive:/e", "drive:/f/"]);
    env.ok(&["stat", "drive:/f"]);
    env.fails(&["mv", "drive:/a.txt", "drive:/typo/"], 3);
}

#[test]
fn stop_ends_the_shell() {
    let env = Env::new();
    let out = env.efs_input(&["shell", "drive"], b"pwd\nstop\npwd\n");
    assert_eq!(assert_ok(&["shell"], &out), "/\n");
    let out = env.efs_input(&["shell", "drive:"], b"exit\n");
    assert_ok(&["shell"], &out);
    // An unknown remote: usage.
    let out = env.efs_input(&["shell", "nowhere"], b"");
    common::assert_code(&["shell"], &out, 2);
}

#[test]
fn shell_on_a_terminal_has_a_prompt_history_and_completion() {
    let env = Env::new();
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("script(1) is not installed: skipped");
        return;
    }
    env.write("seed.txt", b"x");
    env.ok(&["cp", "seed.txt", "drive:/Documents/Reports/annual-2026.txt"]);
    let mut child = env
        .under_terminal(&format!("{} shell drive", common::EFS))
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = common::drain(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let wait = |s: &str| common::wait_for(&out, s, Duration::from_secs(30));
    wait("efs drive:/> ");
    // Tab completes the directory, then the file inside it.
    stdin.write_all(b"cd /Docu\t").unwrap();
    stdin.flush().unwrap();
    wait("cd /Documents/");
    stdin.write_all(b"\r").unwrap();
    stdin.flush().unwrap();
    wait("efs drive:/Documents> ");
    stdin.write_all(b"get Reports/ann\t").unwrap();
    stdin.flush().unwrap();
    wait("get Reports/annual-2026.txt");
    stdin.write_all(b"\r").unwrap();
    stdin.flush().unwrap();
    stdin.write_all(b"stop\r").unwrap();
    stdin.flush().unwrap();
    wait("Bye.");
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        String::from_utf8_lossy(&out.lock().unwrap())
    );
    // The history was kept, privately.
    let history = std::fs::read_to_string(env.cfg().join("history")).unwrap();
    assert!(history.contains("cd /Documents/"), "{history}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.cfg().join("history"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Regression: a shell ended by SIGHUP or SIGTERM left its decrypted cache
/// (`~/.cache/efs/shell-PID`) behind for good; the next shell removes those of dead shells.
#[test]
fn a_shell_removes_the_caches_of_ended_shells() {
    let env = Env::new();
    let caches = env.path("cache/efs");
    // Above any pid_max (at most 2^22): never a live process.
    let dead = caches.join("shell-999999999");
    let alive = caches.join(format!("shell-{}", std::process::id()));
    let other = caches.join("not-a-shell");
    for d in [&dead, &alive, &other] {
        std::fs::create_dir_all(d.join("records")).unwrap();
        std::fs::write(d.join("records/decrypted.txt"), b"secret").unwrap();
    }
    let out = env.efs_input(&["shell", "drive"], b"pwd\n");
    assert_ok(&["shell"], &out);
    assert!(!dead.exists(), "the dead shell's cache is still there");
    assert!(alive.join("records/decrypted.txt").exists());
    assert!(other.join("records/decrypted.txt").exists());
}

/// A `get` or `cd` of a remote path that is not there names that path: `get /nonexist lp.txt`
/// said "writing lp.txt: no such file or directory", as if the local file were missing, and
/// `cd /nonexist` named nothing. The local file is left as it was.
#[test]
fn a_missing_remote_path_is_named_by_get_and_cd() {
    let env = Env::new();
    env.write("lp.txt", b"kept");
    let out = env.efs_input(
        &["shell", "drive"],
        b"get /nonexist lp.txt
cd /nowhere
",
    );
    let stderr = common::assert_code(&["shell"], &out, 3);
    assert!(
        stderr.contains("getting /nonexist into lp.txt: no such file or directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("writing lp.txt"), "{stderr}");
    assert!(
        stderr.contains("cd /nowhere: no such file or directory"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(env.path("lp.txt")).unwrap(), b"kept");
}

/// Regression: `get` of binary content said "saved as" a file in the shell's cache, which
/// the shell removes when it ends (a scripted one, at once).
#[test]
fn get_says_the_cached_copy_goes_with_the_shell() {
    let env = Env::new();
    env.write("big.bin", &[0u8, 159, 146, 150, 255]);
    env.ok(&["cp", "big.bin", "drive:/tty/big bin"]);
    let out = env.efs_input(&["shell", "drive"], b"get '/tty/big bin'\n");
    let stdout = assert_ok(&["shell"], &out);
    // The command to keep it, as typed in the shell (the space escaped).
    assert!(
        stdout.contains("until the shell ends") && stdout.contains("get /tty/big\\ bin LOCAL"),
        "{stdout}"
    );
}

/// Regression: the shell's `rm` of a non-empty directory got the generic conflict hint
/// ("a file is where a directory is needed …") instead of `rm -r`.
#[test]
fn rm_of_a_non_empty_directory_says_use_rm_r() {
    let env = Env::new();
    env.ok(&["mkdir", "-p", "drive:/full/sub"]);
    let out = env.efs_input(&["shell", "drive"], b"rm /full\n");
    let stderr = common::assert_code(&["shell"], &out, 5);
    assert!(stderr.contains("use rm -r"), "{stderr}");
    assert!(!stderr.contains("a file is where a directory"), "{stderr}");
}

/// `cd` onto a file is a conflict (exit 5, as `efs ls` of a path below a file), not a
/// general failure (it exited 1), and the working directory stays where it was.
#[test]
fn the_shell_refuses_to_cd_onto_a_file_as_a_conflict() {
    let env = Env::new();
    env.write("f.txt", b"f");
    env.ok(&["cp", "f.txt", "drive:/f.txt"]);
    let out = env.efs_input(&["shell", "drive"], b"cd f.txt\npwd\n");
    let stderr = common::assert_code(&["shell"], &out, 5);
    assert!(stderr.contains("/f.txt is not a directory"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "/");
}
