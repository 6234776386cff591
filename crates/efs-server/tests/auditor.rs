//! The auditor socket (`--auditor-socket`, `--auditor-group`): a data-protection officer
//! reads the audit log without root, and can do nothing else. Here the auditor is the
//! `nobody` account (uid and gid 65534), efsctl run as it with `setpriv`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// `efsctl --socket SOCK ARGS…` run as uid and gid `id` (no other groups).
/// `efsctl --socket SOCK ARGS…` run as uid and gid `id` with `group` as its one
/// supplementary group (as a member's login session has it after `usermod -aG`).
fn efsctl_in_group(id: u32, group: u32, sock: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={id}"))
        .arg(format!("--regid={id}"))
        .arg(format!("--groups={group}"))
        .arg(EFSCTL_BIN)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .current_dir("/")
        .env_remove("EFS_DATA")
        .output()
        .expect("setpriv (util-linux)")
}

fn efsctl_as(id: u32, sock: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={id}"))
        .arg(format!("--regid={id}"))
        .arg("--clear-groups")
        .arg(EFSCTL_BIN)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .current_dir("/")
        .env_remove("EFS_DATA")
        .output()
        .expect("setpriv (util-linux)")
}

/// One request line written to the socket by hand, as uid and gid `id` (`None`: as the test,
/// root); the answer line.
fn raw_as(id: Option<u32>, sock: &Path, req: &str) -> String {
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(sys.argv[2].encode()+b'\\n')\nprint(s.makefile().readline())";
    let mut cmd = match id {
        Some(id) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={id}"))
                .arg(format!("--regid={id}"))
                .arg("--clear-groups")
                .arg("/usr/bin/python3");
            c
        }
        None => Command::new("/usr/bin/python3"),
    };
    let out = cmd
        .arg("-c")
        .arg(script)
        .arg(sock)
        .arg(req)
        .current_dir("/")
        .output()
        .expect("/usr/bin/python3 (Debian's)");
    text(&out)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
async fn an_auditor_reads_the_audit_log_and_nothing_else() {
    // The socket's directory: reachable by the auditor (the data dir is not).
    let run = new_tempdir();
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = run.path().join("audit.sock");
    let srv = TestServer::start(&[
        "--auditor-socket",
        sock.to_str().unwrap(),
        "--auditor-group",
        "nogroup",
    ]);
    assert!(srv.stdout().contains("Auditor socket:"), "{}", srv.stdout());
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, Some("files")).await;
    srv.put_ok("/patients/173/prescription.pdf", &token, b"x".to_vec())
        .await;

    // The auditor reads the log, and verifies it.
    let shown = efsctl_as(65534, &sock, &["audit", "show"]);
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(
        text(&shown).contains("/patients/173/prescription.pdf"),
        "{}",
        text(&shown)
    );
    let verified = efsctl_as(65534, &sock, &["audit", "verify"]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).starts_with("audit verify: OK"),
        "{}",
        text(&verified)
    );

    // Nothing else. efsctl sends nothing else there...
    let refused = efsctl_as(65534, &sock, &["list-users"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("takes audit show and audit verify only"),
        "{}",
        text(&refused)
    );
    // ...and the server answers nothing else there, to the auditor (a request written by
    // hand) or to root; a refused request is recorded.
    for req in [
        r#"{"cmd":"list-users"}"#,
        r#"{"cmd":"revoke","user":"app","fs":"files"}"#,
    ] {
        let answer = raw_as(Some(65534), &sock, req);
        assert!(
            answer.contains("answers audit show and audit verify only"),
            "{req}: {answer}"
        );
    }
    let answer = raw_as(None, &sock, r#"{"cmd":"list-users"}"#);
    assert!(
        answer.contains("answers audit show and audit verify only"),
        "{answer}"
    );
    // Large answers are refused (the server's memory): at most 10,000 entries a request.
    let big = efsctl_as(65534, &sock, &["audit", "show", "--limit", "20000"]);
    assert!(!big.status.success(), "{}", text(&big));
    assert!(
        text(&big).contains("at most 10000 entries"),
        "{}",
        text(&big)
    );
    // A process in the group only as a supplementary one, whose account /etc/group does not
    // list as a member, reaches the socket (its mode) but is refused; one outside the group
    // does not reach it.
    let supplementary = efsctl_in_group(65533, 65534, &sock, &["audit", "show"]);
    assert!(!supplementary.status.success(), "{}", text(&supplementary));
    assert!(
        text(&supplementary).contains(
            "neither its group nor its account (in /etc/group) is --auditor-group 65534's"
        ),
        "{}",
        text(&supplementary)
    );
    let other = efsctl_as(65533, &sock, &["audit", "show"]);
    assert!(!other.status.success(), "{}", text(&other));
    assert!(text(&other).contains("cannot reach"), "{}", text(&other));

    // What the auditor did is in the log, with the auditor's account and the socket.
    let entries = audit_show(&srv, &[]);
    let reads: Vec<_> = entries
        .iter()
        .filter(|e| e["user"] == "uid:65534" && e["client"] == "auditor-socket")
        .collect();
    assert!(
        reads
            .iter()
            .any(|e| e["detail"].as_str().unwrap_or("").starts_with("audit-show")),
        "{reads:?}"
    );
    // The refused revoke is recorded as refused (400), and did not run.
    let revokes: Vec<_> = entries
        .iter()
        .filter(|e| e["detail"].as_str().unwrap_or("").starts_with("revoke"))
        .collect();
    assert_eq!(revokes.len(), 1, "{revokes:?}");
    assert_eq!(revokes[0]["status"], 400, "{revokes:?}");
    assert_eq!(revokes[0]["client"], "auditor-socket", "{revokes:?}");
    srv.put_ok("/patients/173/after.pdf", &token, b"y".to_vec())
        .await;
}

/// A member of the auditor group by /etc/group (`usermod -aG`), whose processes have the
/// group as a supplementary one, reads the audit log without `sg` (it was refused: only the
/// process's own group was checked); removed from the group's line, it is refused at its next
/// connection. The server runs in a mount namespace where the test's passwd and group files
/// stand for the machine's (root only; SKIPPED otherwise).
#[tokio::test]
async fn a_member_of_the_auditor_group_in_etc_group_reads_without_sg() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root (a mount namespace for the server's /etc/group)");
        return;
    }
    let etc = new_tempdir();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap()
        + "efs-test-dpo:x:65533:65533:EFS test auditor:/nonexistent:/usr/sbin/nologin\n";
    std::fs::write(etc.path().join("passwd"), passwd).unwrap();
    let group_with = |members: &str| {
        let group: String = std::fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .filter(|l| l.split(':').nth(2) != Some("64999"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(
            etc.path().join("group"),
            group + &format!("efs-test-audit:x:64999:{members}\n"),
        )
        .unwrap();
    };
    group_with("someone,efs-test-dpo");
    let run = new_tempdir();
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = run.path().join("audit.sock");
    let bind = format!("{BIND_ETC}{}", etc.path().display());
    let srv = match TestServer::try_start_in(
        std::sync::Arc::new(new_tempdir()),
        &[
            &bind,
            "--auditor-socket",
            sock.to_str().unwrap(),
            "--auditor-group",
            "efs-test-audit",
        ],
        &[],
    ) {
        Ok(s) => s,
        Err(f) if f.stderr.contains("unshare") || f.stderr.contains("mount") => {
            eprintln!("SKIPPED: no mount namespace here: {}", f.stderr);
            return;
        }
        Err(f) => panic!("efs-server did not start: {}", f.stderr),
    };
    assert_eq!(std::fs::metadata(&sock).unwrap().gid(), 64999);
    // The auditor's process: its own group is its account's, the auditor group a
    // supplementary one (as after a login once `usermod -aG` was run).
    let as_member = || efsctl_in_group(65533, 64999, &sock, &["audit", "verify"]);
    let verified = as_member();
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).starts_with("audit verify: OK"),
        "{}",
        text(&verified)
    );
    // Taken off the group's line: refused at the next connection, though its process still
    // has the group.
    group_with("someone");
    let refused = as_member();
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("nor its account (in /etc/group)"),
        "{}",
        text(&refused)
    );
    let entries = audit_show(&srv, &[]);
    assert!(
        entries.iter().any(|e| e["user"] == "uid:65533"
            && e["client"] == "auditor-socket"
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with("audit-verify")),
        "{entries:?}"
    );
}

/// `--auditor-group` takes a name from /etc/group or a number, and the server refuses a
/// file that is not a socket at the path.
#[test]
fn a_bad_auditor_socket_or_group_is_refused_at_the_start() {
    let run = new_tempdir();
    let path = run.path().join("not-a-socket");
    std::fs::write(&path, "x").unwrap();
    let f = TestServer::try_start_in(
        std::sync::Arc::new(new_tempdir()),
        &[
            "--auditor-socket",
            path.to_str().unwrap(),
            "--auditor-group",
            "65534",
        ],
        &[],
    )
    .err()
    .expect("a server started with a file in the auditor socket's place");
    assert!(f.stderr.contains("not a socket"), "{}", f.stderr);
    let f = TestServer::try_start_in(
        std::sync::Arc::new(new_tempdir()),
        &[
            "--auditor-socket",
            run.path().join("s").to_str().unwrap(),
            "--auditor-group",
            "no-such-group-here",
        ],
        &[],
    )
    .err()
    .expect("a server started with an unknown group");
    assert!(f.stderr.contains("no group named"), "{}", f.stderr);
    // Another server's live socket is not taken over.
    let live = run.path().join("live.sock");
    let _first = TestServer::start(&[
        "--auditor-socket",
        live.to_str().unwrap(),
        "--auditor-group",
        "65534",
    ]);
    let f = TestServer::try_start_in(
        std::sync::Arc::new(new_tempdir()),
        &[
            "--auditor-socket",
            live.to_str().unwrap(),
            "--auditor-group",
            "65534",
        ],
        &[],
    )
    .err()
    .expect("a second server took over the first one's auditor socket");
    assert!(
        f.stderr.contains("another process listens there"),
        "{}",
        f.stderr
    );
}
