//! The one-call commands against a real server: put, cat, stat, ls, mkdir, mv, rm.

mod common;

use std::io::Read;
use std::process::Stdio;

use common::{Env, assert_code, assert_ok};

#[test]
fn put_and_cat_stream_through_stdin_and_stdout() {
    let env = Env::new();
    // 3 MiB + 1 byte of varied content: several segments, not a round size.
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 1)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let out = env.efs_input(&["put", "drive:/blobs/data.bin"], &data);
    assert_ok(&["put"], &out);
    assert_eq!(env.cat("drive:/blobs/data.bin"), data);
    // Empty input is an empty file.
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/empty"], b""));
    assert_eq!(env.cat("drive:/empty"), b"");
    // Several files in a row.
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/a.txt"], b"A"));
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/b.txt"], b"B"));
    let out = env.ok(&["cat", "drive:/a.txt", "drive:/b.txt"]);
    assert_eq!(out, "AB");
    // The Content-Type follows the extension unless given.
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["stat", "--json", "drive:/a.txt"])).unwrap();
    assert!(
        j["content_type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain"),
        "{j}"
    );

    // --json prints the stored entry; --no-clobber refuses an existing file (5).
    let out = env.efs_input(
        &[
            "put",
            "--json",
            "--content-type",
            "text/x-test",
            "drive:/c.txt",
        ],
        b"C",
    );
    let entry: serde_json::Value = serde_json::from_str(&assert_ok(&["put"], &out)).unwrap();
    assert_eq!(entry["size"], 1);
    let etag = entry["etag"].as_str().unwrap().to_owned();
    let out = env.efs_input(&["put", "--no-clobber", "drive:/c.txt"], b"X");
    assert_code(&["put", "--no-clobber"], &out, 5);
    // --if-match: the right ETag replaces, a stale one is refused (5).
    let out = env.efs_input(&["put", "--if-match", &etag, "drive:/c.txt"], b"CC");
    assert_ok(&["put", "--if-match"], &out);
    let out = env.efs_input(&["put", "--if-match", &etag, "drive:/c.txt"], b"CCC");
    assert_code(&["put", "--if-match"], &out, 5);
    assert_eq!(env.cat("drive:/c.txt"), b"CC");
    // An empty ETag, or one with a control character, is a usage error (it exited 5, as
    // changed), and nothing is written.
    for bad in ["", " ", "\"a\nb\""] {
        let out = env.efs_input(&["put", "--if-match", bad, "drive:/c.txt"], b"DD");
        assert_code(&["put", "--if-match", bad], &out, 2);
    }
    assert_eq!(env.cat("drive:/c.txt"), b"CC");
    // A directory path is a usage error.
    assert_code(&["put"], &env.efs_input(&["put", "drive:/dir/"], b"x"), 2);
    // Missing: 3.
    let err = env.fails(&["cat", "drive:/nope.txt"], 3);
    assert!(
        err.contains("efs: error:") && err.contains("/nope.txt"),
        "{err}"
    );
}

#[test]
fn cat_into_a_closed_pipe_is_success() {
    let env = Env::new();
    let data = vec![b'x'; 8 * 1024 * 1024];
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/big.txt"], &data));
    // As `efs cat drive:/big.txt | head -c 10`: read a little, close the pipe.
    let mut child = env
        .cmd(&["cat", "drive:/big.txt"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 10];
    stdout.read_exact(&mut head).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(&head, b"xxxxxxxxxx");
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `efs ls -l drive:/many/ | head -1`: the listing is longer than a pipe holds (over 64 KiB),
/// the reader goes away after one line, and `efs` ends quietly with exit 0 (it panicked
/// with "failed printing to stdout").
#[test]
fn ls_into_a_closed_pipe_is_success() {
    let env = Env::new();
    for i in 0..1200 {
        env.write(
            &format!("many/a-rather-long-file-name-for-the-listing-{i:05}.txt"),
            b"x",
        );
    }
    env.ok(&["cp", "-r", "-j", "8", "many", "drive:/"]);
    let mut child = env
        .cmd(&["ls", "-l", "drive:/many/"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}", out.status.code());
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn stat_ls_mkdir_mv_rm() {
    let env = Env::new();
    env.write("report.pdf", b"%PDF-1.7 not really");
    env.ok(&["cp", "report.pdf", "drive:/Documents/"]);
    env.ok(&["mkdir", "drive:/Documents/2026"]);
    env.ok(&["mkdir", "-p", "drive:/Documents/2026/q1/jan"]);
    env.ok(&["mkdir", "-p", "drive:/Documents/2026/q1"]); // exists: fine with -p
    env.fails(&["mkdir", "drive:/Documents/2026"], 5); // exists
    env.fails(&["mkdir", "drive:/no/such/parent"], 3);

    // stat, text and JSON.
    let out = env.ok(&["stat", "drive:/Documents/report.pdf"]);
    assert!(out.contains("type:          file"), "{out}");
    assert!(out.contains("size:          19"), "{out}");
    assert!(out.contains("content-type:  application/pdf"), "{out}");
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["stat", "--json", "drive:/Documents/report.pdf"])).unwrap();
    assert_eq!(j["type"], "file");
    assert_eq!(j["size"], 19);
    assert_eq!(j["path"], "/Documents/report.pdf");
    assert!(j["etag"].as_str().unwrap().starts_with('"'));
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["stat", "--json", "drive:/Documents"])).unwrap();
    assert_eq!(j["type"], "dir");
    env.fails(&["stat", "drive:/Documents/none"], 3);

    // ls: plain, long, recursive, JSON; a file lists as itself.
    assert_eq!(env.ok(&["ls", "drive:/Documents"]), "2026/\nreport.pdf\n");
    assert_eq!(env.ok(&["ls", "drive:"]), "Documents/\n");
    let long = env.ok(&["ls", "-l", "drive:/Documents"]);
    let lines: Vec<&str> = long.lines().collect();
    assert!(
        lines[0].starts_with("d ") && lines[0].ends_with("  2026/"),
        "{long}"
    );
    assert!(
        lines[1].starts_with("- ")
            && lines[1].contains(" 19  ")
            && lines[1].ends_with("  report.pdf"),
        "{long}"
    );
    assert_eq!(
        env.ok(&["ls", "-R", "drive:/Documents"]),
        "2026/\n2026/q1/\n2026/q1/jan/\nreport.pdf\n"
    );
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["ls", "--json", "-R", "drive:/Documents"])).unwrap();
    let paths: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/Documents/2026",
            "/Documents/2026/q1",
            "/Documents/2026/q1/jan",
            "/Documents/report.pdf"
        ]
    );
    assert_eq!(
        env.ok(&["ls", "drive:/Documents/report.pdf"]),
        "report.pdf\n"
    );
    env.fails(&["ls", "drive:/missing"], 3);

    // mv: rename, into a directory, an existing destination (5 unless -f).
    env.ok(&[
        "mv",
        "drive:/Documents/report.pdf",
        "drive:/Documents/final.pdf",
    ]);
    env.ok(&["mv", "drive:/Documents/final.pdf", "drive:/Documents/2026/"]);
    assert_eq!(env.ok(&["ls", "drive:/Documents/2026"]), "final.pdf\nq1/\n");
    assert_ok(
        &["put"],
        &env.efs_input(&["put", "drive:/other.pdf"], b"other"),
    );
    env.fails(
        &["mv", "drive:/other.pdf", "drive:/Documents/2026/final.pdf"],
        5,
    );
    env.ok(&[
        "mv",
        "-f",
        "drive:/other.pdf",
        "drive:/Documents/2026/final.pdf",
    ]);
    assert_eq!(env.cat("drive:/Documents/2026/final.pdf"), b"other");
    env.fails(&["mv", "drive:/gone", "drive:/x"], 3);
    // Several sources, or a destination ending in '/', go into an existing directory only,
    // as GNU mv's: a typo in the last argument made a new directory (black-box review).
    for name in ["m1", "m2"] {
        assert_ok(
            &["put"],
            &env.efs_input(&["put", &format!("drive:/{name}")], b"m"),
        );
    }
    for args in [
        &["mv", "drive:/m1", "drive:/m2", "drive:/typo"][..],
        &["mv", "drive:/m1", "drive:/typo/"][..],
    ] {
        let out = env.fails(args, 3);
        assert!(
            out.contains("is not a directory: it does not exist"),
            "{out}"
        );
    }
    env.fails(&["ls", "drive:/typo"], 3);
    assert_eq!(env.cat("drive:/m1"), b"m");
    env.ok(&["mkdir", "drive:/into"]);
    env.ok(&["mv", "drive:/m1", "drive:/m2", "drive:/into"]);
    assert_eq!(env.ok(&["ls", "drive:/into"]), "m1\nm2\n");
    env.ok(&["rm", "-r", "drive:/into"]);

    // rm: a non-empty directory needs -r (5); missing is 3 unless -f.
    env.fails(&["rm", "drive:/Documents/2026"], 5);
    // A trailing '/' names a directory: a file is not removed through it, and is not called
    // a directory that is not empty.
    let out = env.fails(&["rm", "drive:/Documents/2026/final.pdf/"], 5);
    assert!(
        !out.contains("a directory that is not empty") && out.contains("names a directory"),
        "{out}"
    );
    env.ok(&["rm", "drive:/Documents/2026/final.pdf"]);
    env.ok(&["rm", "-r", "drive:/Documents/2026"]);
    assert_eq!(env.ok(&["ls", "drive:/Documents"]), "");
    env.fails(&["rm", "drive:/Documents/2026"], 3);
    env.ok(&["rm", "-f", "drive:/Documents/2026"]);
    env.fails(&["rm", "-r", "drive:/"], 2);
}

#[test]
fn a_read_only_grant_writing_is_exit_4() {
    let env = Env::new();
    env.add_read_only_user();
    assert_ok(
        &["put"],
        &env.efs_input(&["put", "drive:/shared.txt"], b"shared"),
    );
    assert_eq!(env.cat("ro:/shared.txt"), b"shared");
    let out = env.efs_input(&["put", "ro:/mine.txt"], b"nope");
    let err = assert_code(&["put"], &out, 4);
    assert!(err.contains("efs: hint:"), "{err}");
}

/// Regression: the command line resolved `..` in remote paths, so `efs rm -r
/// drive:/Records/2019/..` removed `/Records`. Every command refuses such a path (exit 2).
#[test]
fn dot_segments_in_remote_paths_are_refused_by_every_command() {
    let env = Env::new();
    env.write("r.txt", b"record");
    env.ok(&[
        "cp",
        env.path("r.txt").to_str().unwrap(),
        "drive:/Records/2019/r.txt",
    ]);
    for args in [
        &["rm", "-r", "drive:/Records/2019/.."][..],
        &["ls", "drive:/Records/./2019"],
        &[
            "mv",
            "drive:/Records/2019/r.txt",
            "drive:/Records/2019/../x.txt",
        ],
        &["cp", "-r", "drive:/Records/..", "out"],
        &["mkdir", "drive:/a/../b"],
    ] {
        let err = env.fails(args, 2);
        assert!(err.contains("'.' or '..'"), "{args:?}: {err}");
    }
    // The shell resolves `..` for `cd`, but its `rm` and `mv` refuse it.
    let out = env.efs_input(
        &["shell", "drive"],
        b"cd /Records/2019\nrm -r ..\nrm -r /Records/2019/..\nmv ../2019 /moved\nrm -r ''\ncd ..\npwd\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("refusing a path with '.' or '..'").count(),
        3,
        "{err}"
    );
    assert!(err.contains("rm: refusing an empty path"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("/Records"));
    assert_eq!(env.cat("drive:/Records/2019/r.txt"), b"record");
}

/// Regression: rm, stat and cat stopped at the first path that failed; like coreutils, they
/// go on with the rest and exit with the first failure's code.
#[test]
fn rm_stat_and_cat_go_on_after_a_failing_path() {
    let env = Env::new();
    for (p, body) in [("drive:/r1", &b"one"[..]), ("drive:/r3", b"three")] {
        assert_ok(&["put"], &env.efs_input(&["put", p], body));
    }
    let out = env.efs(&["cat", "drive:/r1", "drive:/r2", "drive:/r3"]);
    let err = assert_code(&["cat"], &out, 3);
    assert_eq!(out.stdout, b"onethree");
    assert!(err.contains("drive:/r2"), "{err}");
    let out = env.efs(&["stat", "drive:/r1", "drive:/r2", "drive:/r3"]);
    let err = assert_code(&["stat"], &out, 3);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("drive:/r1") && stdout.contains("drive:/r3"),
        "{stdout}"
    );
    assert!(err.contains("drive:/r2"), "{err}");
    // Two failures: each reported, the first one's code.
    env.ok(&["mkdir", "drive:/full"]);
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/full/x"], b"x"));
    let err = env.fails(
        &["rm", "drive:/r1", "drive:/r2", "drive:/full", "drive:/r3"],
        3,
    );
    assert!(
        err.contains("drive:/r2") && err.contains("drive:/full"),
        "{err}"
    );
    assert_eq!(env.ok(&["ls", "drive:/"]), "full/\n");
}

/// Regression: refusals whose message or hint did not fit: a mv onto an existing file never
/// named -f, put --no-clobber blamed "someone else", mkdir on a file said to use -p, and cat
/// of a directory was exit 5 where the manual says 2.
#[test]
fn refusals_say_what_fits() {
    let env = Env::new();
    for p in ["drive:/a", "drive:/b"] {
        assert_ok(&["put"], &env.efs_input(&["put", p], b"x"));
    }
    let err = env.fails(&["mv", "drive:/a", "drive:/b"], 5);
    assert!(
        err.contains("drive:/b exists") && err.contains("mv -f"),
        "{err}"
    );
    let out = env.efs_input(&["put", "--no-clobber", "drive:/a"], b"y");
    let err = assert_code(&["put"], &out, 5);
    assert!(err.contains("drive:/a exists"), "{err}");
    assert!(!err.contains("someone else"), "{err}");
    assert_eq!(env.cat("drive:/a"), b"x");
    for args in [&["mkdir", "drive:/a"][..], &["mkdir", "-p", "drive:/a"][..]] {
        let err = env.fails(args, 5);
        assert!(err.contains("drive:/a is a file"), "{err}");
        assert!(!err.contains("mkdir -p accepts"), "{err}");
    }
    // Below a file: a conflict, said of the directory being made (it said "reading …").
    for args in [
        &["mkdir", "drive:/a/x"][..],
        &["mkdir", "-p", "drive:/a/x/y"][..],
    ] {
        let err = env.fails(args, 5);
        assert!(err.contains("creating drive:/a/x"), "{err}");
        assert!(!err.contains("reading"), "{err}");
    }
    env.ok(&["mkdir", "drive:/dir"]);
    let err = env.fails(&["cat", "drive:/dir"], 2);
    assert!(err.contains("drive:/dir is a directory"), "{err}");
}

/// Regression: `efs rm -v` printed nothing (the flag never reached rm); then it printed on
/// stderr (GNU `rm -v` names what it removes on stdout), and said "(and everything in it)" of
/// an empty directory.
#[test]
fn rm_v_names_what_it_deletes() {
    let env = Env::new();
    env.write("s1/a.txt", b"a");
    env.ok(&["cp", "-r", "s1", "drive:/s1"]);
    env.write("f.txt", b"f");
    env.ok(&["cp", "f.txt", "drive:/f.txt"]);
    env.ok(&["mkdir", "drive:/empty", "drive:/empty2"]);
    let args = [
        "rm",
        "-v",
        "-r",
        "drive:/s1",
        "drive:/f.txt",
        "drive:/empty",
    ];
    let out = env.efs(&args);
    let stdout = assert_ok(&args, &out);
    assert_eq!(
        stdout,
        "deleted drive:/s1/ (and everything in it)\ndeleted drive:/f.txt\ndeleted drive:/empty/\n"
    );
    assert!(out.stderr.is_empty(), "{out:?}");
    // Without -r, an empty directory is all it can be.
    assert_eq!(
        env.ok(&["rm", "-v", "drive:/empty2"]),
        "deleted drive:/empty2/\n"
    );
    assert_eq!(env.ok(&["ls", "drive:/"]), "");
    let out = env.efs(&["rm", "-f", "drive:/nothing"]);
    assert!(out.stderr.is_empty() && out.stdout.is_empty(), "{out:?}");
}

/// Regression: a trailing `/` names a directory (docs/api.md), and `efs rm` refused it on a
/// file, but `cat`, `stat`, `ls`, `cp` and `mv` took `drive:/f.txt/` as the file.
#[test]
fn a_trailing_slash_on_a_file_is_refused_by_every_command() {
    let env = Env::new();
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/f.txt"], b"f"));
    env.ok(&["mkdir", "drive:/d"]);
    for args in [
        &["cat", "drive:/f.txt/"][..],
        &["stat", "drive:/f.txt/"],
        &["ls", "drive:/f.txt/"],
        &["cp", "drive:/f.txt/", "out.txt"],
        &["mv", "drive:/f.txt/", "drive:/g.txt"],
        &["rm", "drive:/f.txt/"],
    ] {
        let err = env.fails(args, 5);
        assert!(err.contains("names a directory"), "{args:?}: {err}");
    }
    let err = env.fails(&["cat", "drive:/f.txt/"], 5);
    assert!(
        err.contains(
            "drive:/f.txt/ names a directory (it ends in '/'), but drive:/f.txt is a file"
        ) && err.contains("write drive:/f.txt (without the '/')"),
        "{err}"
    );
    assert_eq!(env.cat("drive:/f.txt"), b"f");
    assert!(!env.path("out.txt").exists());
    env.fails(&["stat", "drive:/g.txt"], 3);
    // A directory named with its '/' is still one; a missing path still not found.
    env.ok(&["stat", "drive:/d/"]);
    env.ok(&["ls", "drive:/d/"]);
    env.fails(&["cat", "drive:/d/"], 2);
    env.fails(&["cat", "drive:/nope/"], 3);
    env.ok(&["mv", "drive:/d/", "drive:/e"]);
    env.ok(&["stat", "drive:/e"]);
}

/// Regression: errors named a remote path without its remote (`reading /_efs/x`, where
/// others say `drive:/path`).
#[test]
fn errors_name_the_remote_of_each_path() {
    let env = Env::new();
    // A path the SDK refuses before asking (`_efs` is the server's): an error other than
    // not found, from the look before the command acts.
    let err = env.fails(&["mkdir", "drive:/_efs/x"], 2);
    assert!(err.contains("creating drive:/_efs/x"), "{err}");
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/a"], b"a"));
    let err = env.fails(&["mv", "drive:/a", "drive:/_efs/x"], 2);
    assert!(err.contains("reading drive:/_efs/x"), "{err}");
    env.write("pass.txt", b"a passphrase long enough to be accepted\n");
    let err = env.fails(
        &["tar", "drive:/_efs/x", "-o", "b.age", "-p", "pass.txt"],
        2,
    );
    assert!(err.contains("reading drive:/_efs/x"), "{err}");
    // The warning of a remote walk about an unfinished copy's temporary file.
    assert_ok(
        &["put"],
        &env.efs_input(&["put", "drive:/src/x.0123456789abcdef.efs-part"], b"p"),
    );
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/src/y"], b"y"));
    let out = env.efs(&["cp", "-r", "drive:/src", "out"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ok(&["cp"], &out);
    assert!(
        err.contains("skipping drive:/src/x.0123456789abcdef.efs-part"),
        "{err}"
    );
}

/// Regression: `efs rm -r` of several paths refused for the same reason (a read-only grant)
/// repeated the same hint after each; it is said once, at the end.
#[test]
fn rm_of_several_refused_paths_gives_the_hint_once() {
    let env = Env::new();
    for p in ["drive:/a", "drive:/b", "drive:/c"] {
        assert_ok(&["put"], &env.efs_input(&["put", p], b"x"));
    }
    env.add_read_only_user();
    let err = env.fails(&["rm", "-r", "ro:/a", "ro:/b", "ro:/c"], 4);
    assert_eq!(err.matches("efs: hint:").count(), 1, "{err}");
    assert!(
        err.contains("ro:/a") && err.contains("ro:/b") && err.contains("ro:/c"),
        "{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("efs: hint:"), "{err}");
    assert_eq!(env.cat("drive:/c"), b"x");
}

/// Regression: `efs rm drive:/` said "refusing to remove the root directory: remove what is
/// in it instead", neither naming the remote nor saying how (and the manual did not say it).
#[test]
fn rm_of_the_root_is_refused_naming_it() {
    let env = Env::new();
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/keep"], b"k"));
    for args in [&["rm", "drive:/"][..], &["rm", "-r", "-f", "drive:"]] {
        let err = env.fails(args, 2);
        assert!(
            err.contains("refusing to remove the root directory drive:/")
                && err.contains("efs: hint: remove what is in it, path by path (efs ls drive:/"),
            "{err}"
        );
    }
    assert_eq!(env.cat("drive:/keep"), b"k");
}

/// Regression: `rm` of several paths removed those before the root or a `..` path, then
/// exited 2, the code that says the usage was wrong and nothing was done.
#[test]
fn rm_checks_every_path_before_removing_any() {
    let env = Env::new();
    assert_ok(&["put"], &env.efs_input(&["put", "drive:/keep"], b"k"));
    for bad in ["drive:/", "drive:/x/..", "nope:/y"] {
        let err = env.fails(&["rm", "-r", "drive:/keep", bad], 2);
        assert!(err.contains("nothing was removed"), "{err}");
        assert_eq!(env.cat("drive:/keep"), b"k", "{bad}");
    }
}

/// Regression: `ls` named a missing path without its remote (`reading /nope`), where `cat`
/// says `drive:/nope`.
#[test]
fn ls_names_the_remote_of_a_missing_path() {
    let env = Env::new();
    let err = env.fails(&["ls", "drive:/nope"], 3);
    assert!(err.contains("drive:/nope"), "{err}");
}

/// Regression: `ls` and `mkdir` stopped at the first path that failed (the later ones were
/// never listed or made), unlike `rm`, `stat` and `cat`.
#[test]
fn ls_and_mkdir_go_on_after_a_path_fails() {
    let env = Env::new();
    env.ok(&["mkdir", "drive:/there"]);
    env.write("f.txt", b"f");
    env.ok(&["cp", "f.txt", "drive:/there/f.txt"]);
    let out = env.efs(&["ls", "drive:/nope", "drive:/there"]);
    let err = assert_code(&["ls"], &out, 3);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("f.txt"),
        "{out:?}"
    );
    assert!(err.contains("drive:/nope"), "{err}");
    env.add_read_only_user();
    let err = env.fails(&["mkdir", "-p", "ro:/a", "ro:/b"], 4);
    assert!(
        err.contains("ro:/a") && err.contains("ro:/b") && err.contains("2 of 2 paths failed"),
        "{err}"
    );
    // The paths that can be made still are.
    env.fails(&["mkdir", "drive:/there", "drive:/made"], 5);
    env.ok(&["stat", "drive:/made"]);
}

/// Regression: moving a directory into itself got the hint about files where directories
/// are needed.
#[test]
fn mv_of_a_directory_into_itself_says_so() {
    let env = Env::new();
    env.ok(&["mkdir", "-p", "drive:/in/sub"]);
    let err = env.fails(&["mv", "drive:/in", "drive:/in/sub/"], 2);
    assert!(err.contains("cannot move drive:/in into itself"), "{err}");
    assert!(!err.contains("a file is where a directory"), "{err}");
    env.ok(&["stat", "drive:/in/sub"]);
}

/// Regression: a streamed upload cut off by a server crash said `peer closed connection
/// without sending TLS close_notify: https://docs.rs/rustls/…` and "check the URL and that
/// the server is running and reachable", where what matters is that the file may or may not
/// have been stored.
#[test]
fn a_streamed_put_cut_off_says_to_look_at_the_file_before_sending_again() {
    use std::io::Write;
    let mut env = Env::new();
    env.ok(&["ls", "drive:/"]); // logged in: the put's first request is the upload
    let mut child = env
        .cmd(&["put", "drive:/lab result.pdf"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // More than the 4 MiB read whole first: the rest streams, and is on its way.
    stdin.write_all(&common::noise(12 << 20)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    env.server.kill();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let err = assert_code(&["put"], &out, 7);
    assert!(
        err.contains("was lost while sending or before the answer")
            && err.contains("may or may not have been stored")
            && err.contains("efs stat 'drive:/lab result.pdf'"),
        "{err}"
    );
    assert!(
        !err.contains("docs.rs") && !err.contains("check the URL"),
        "{err}"
    );
}
