//! `efs cp` against a real server: the seed's examples, directories both ways, remote to
//! remote, several files, and `--sync` with changes, deletions, `--no-delete`, `--dry-run`
//! and a second run that moves nothing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Env;

/// Every file below `dir`: relative path → content.
fn local_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Every file below a remote directory: relative path → content.
fn remote_tree(env: &Env, dir: &str) -> BTreeMap<String, Vec<u8>> {
    let listing = env.ok(&["ls", "-R", dir]);
    listing
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|rel| (rel.to_owned(), env.cat(&format!("{dir}/{rel}"))))
        .collect()
}

#[test]
fn the_seeds_examples_work() {
    let env = Env::new();
    let doc = env.write("Important-Document.pdf", b"%PDF-1.4 important");
    // efs cp ./Important-Document.pdf drive:/Documents/
    env.ok(&["cp", "./Important-Document.pdf", "drive:/Documents/"]);
    assert_eq!(
        env.ok(&["ls", "drive:/Documents"]),
        "Important-Document.pdf\n"
    );
    assert_eq!(
        env.cat("drive:/Documents/Important-Document.pdf"),
        std::fs::read(&doc).unwrap()
    );

    // efs cp --sync --no-delete drive:/Documents ./Documents
    env.write("Documents/mine-only.txt", b"stays");
    let out = env.ok(&[
        "cp",
        "--sync",
        "--no-delete",
        "drive:/Documents",
        "./Documents",
    ]);
    assert!(out.contains("sync: 1 copied"), "{out}");
    let tree = local_tree(&env.path("Documents"));
    assert_eq!(tree["Important-Document.pdf"], b"%PDF-1.4 important");
    assert_eq!(tree["mine-only.txt"], b"stays");
    // The download carries the remote modification time, so nothing moves the second time.
    let out = env.ok(&[
        "cp",
        "--sync",
        "--no-delete",
        "drive:/Documents",
        "./Documents",
    ]);
    assert!(
        out.contains("sync: 0 copied (0 B), 0 deleted, 1 unchanged"),
        "{out}"
    );
}

#[test]
fn sync_up_copies_changes_deletes_extras_and_then_nothing() {
    let env = Env::new();
    env.write("site/index.html", b"<h1>hi</h1>");
    env.write("site/a.txt", b"aaaa");
    env.write("site/b.txt", b"bbbb");
    env.write("site/sub/c.txt", b"cccc");
    std::fs::create_dir_all(env.path("site/empty")).unwrap();

    // First sync copies everything, the empty directory included.
    let out = env.ok(&["cp", "--sync", "site", "drive:/www"]);
    assert!(out.contains("sync: 4 copied"), "{out}");
    assert!(out.contains("0 deleted, 0 unchanged"), "{out}");
    assert_eq!(
        remote_tree(&env, "drive:/www"),
        local_tree(&env.path("site"))
    );
    assert!(env.ok(&["ls", "drive:/www"]).contains("empty/"));

    // Nothing changed: nothing moves, and a dry run lists nothing.
    let out = env.ok(&["cp", "--sync", "site", "drive:/www"]);
    assert!(
        out.contains("sync: 0 copied (0 B), 0 deleted, 4 unchanged"),
        "{out}"
    );
    let dry = env.ok(&["cp", "--sync", "--dry-run", "site", "drive:/www"]);
    assert_eq!(
        dry,
        "dry run: would copy 0 files (0 B), delete 0, 4 unchanged\n"
    );

    // Change one file, delete one, add one.
    env.write("site/a.txt", b"a changed, longer");
    std::fs::remove_file(env.path("site/b.txt")).unwrap();
    env.write("site/sub/new.txt", b"new");
    let dry = env.ok(&["cp", "--sync", "--dry-run", "site", "drive:/www"]);
    assert!(
        dry.contains("would copy site/a.txt -> drive:/www/a.txt"),
        "{dry}"
    );
    assert!(
        dry.contains("would copy site/sub/new.txt -> drive:/www/sub/new.txt"),
        "{dry}"
    );
    assert!(dry.contains("would delete drive:/www/b.txt"), "{dry}");
    assert!(dry.contains("dry run: would copy 2 files"), "{dry}");
    // The dry run changed nothing.
    assert_eq!(env.cat("drive:/www/a.txt"), b"aaaa");

    // --no-delete: the changes arrive, the extra stays.
    let out = env.ok(&["cp", "--sync", "--no-delete", "site", "drive:/www"]);
    assert!(
        out.contains("sync: 2 copied") && out.contains("0 deleted"),
        "{out}"
    );
    assert_eq!(env.cat("drive:/www/a.txt"), b"a changed, longer");
    assert_eq!(env.cat("drive:/www/b.txt"), b"bbbb");
    // Without it, the extra goes.
    let out = env.ok(&["cp", "--sync", "-v", "site", "drive:/www"]);
    assert!(
        out.contains("sync: 0 copied (0 B), 1 deleted, 4 unchanged"),
        "{out}"
    );
    env.fails(&["stat", "drive:/www/b.txt"], 3);
    assert_eq!(
        remote_tree(&env, "drive:/www"),
        local_tree(&env.path("site"))
    );
    // And the next sync moves nothing.
    let out = env.ok(&["cp", "--sync", "site", "drive:/www"]);
    assert!(
        out.contains("sync: 0 copied (0 B), 0 deleted, 4 unchanged"),
        "{out}"
    );

    // A directory replaced by a file (and the reverse) at the source.
    std::fs::remove_dir_all(env.path("site/sub")).unwrap();
    env.write("site/sub", b"now a file");
    let out = env.ok(&["cp", "--sync", "site", "drive:/www"]);
    assert!(out.contains("sync: 1 copied"), "{out}");
    assert_eq!(env.cat("drive:/www/sub"), b"now a file");
    assert_eq!(
        remote_tree(&env, "drive:/www"),
        local_tree(&env.path("site"))
    );
}

#[test]
fn sync_down_mirrors_the_remote() {
    let env = Env::new();
    for (p, d) in [
        ("x/1.txt", "one"),
        ("x/2.txt", "two"),
        ("x/deep/3.txt", "three"),
    ] {
        assert!(
            env.efs_input(&["put", &format!("drive:/{p}")], d.as_bytes())
                .status
                .success()
        );
    }
    let out = env.ok(&["cp", "--sync", "drive:/x", "mirror"]);
    assert!(out.contains("sync: 3 copied"), "{out}");
    assert_eq!(
        local_tree(&env.path("mirror")),
        remote_tree(&env, "drive:/x")
    );
    let out = env.ok(&["cp", "--sync", "drive:/x", "mirror"]);
    assert!(
        out.contains("sync: 0 copied (0 B), 0 deleted, 3 unchanged"),
        "{out}"
    );

    // A change at the source, a local edit (same size), a local extra.
    assert!(
        env.efs_input(&["put", "drive:/x/2.txt"], b"two, changed")
            .status
            .success()
    );
    env.write("mirror/1.txt", b"ONE");
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(env.path("mirror/1.txt"))
        .unwrap()
        .set_modified(past)
        .unwrap();
    env.write("mirror/extra.txt", b"extra");
    let out = env.ok(&["cp", "--sync", "--no-delete", "drive:/x", "mirror"]);
    assert!(
        out.contains("sync: 2 copied") && out.contains("0 deleted"),
        "{out}"
    );
    assert!(env.path("mirror/extra.txt").exists());
    let out = env.ok(&["cp", "--sync", "drive:/x", "mirror"]);
    assert!(
        out.contains("sync: 0 copied (0 B), 1 deleted, 3 unchanged"),
        "{out}"
    );
    assert_eq!(
        local_tree(&env.path("mirror")),
        remote_tree(&env, "drive:/x")
    );
}

#[test]
fn recursive_copies_both_ways_and_remote_to_remote() {
    let env = Env::new();
    env.write("tree/a.txt", b"a");
    env.write("tree/d1/b.bin", &vec![7u8; 3 * 1024 * 1024]);
    env.write("tree/d1/d2/c.txt", b"c");
    std::fs::create_dir_all(env.path("tree/void")).unwrap();

    // A directory without -r is a usage error.
    let err = env.fails(&["cp", "tree", "drive:/up/"], 2);
    assert!(err.contains("-r"), "{err}");
    // Up: into the existing-or-named directory, as cp -r does.
    env.ok(&["cp", "-r", "-j", "2", "tree", "drive:/up/"]);
    assert_eq!(
        remote_tree(&env, "drive:/up/tree"),
        local_tree(&env.path("tree"))
    );
    assert!(env.ok(&["ls", "drive:/up/tree"]).contains("void/"));
    // Down, to a new directory: it becomes the copy.
    env.ok(&["cp", "-r", "drive:/up/tree", "down"]);
    assert_eq!(local_tree(&env.path("down")), local_tree(&env.path("tree")));
    assert!(env.path("down/void").is_dir());
    // Down into an existing directory: a subdirectory.
    env.ok(&["cp", "-r", "drive:/up/tree", "down"]);
    assert_eq!(
        local_tree(&env.path("down/tree")),
        local_tree(&env.path("tree"))
    );

    // Remote to remote: within a remote, and to another filesystem of another user.
    env.ok(&["cp", "drive:/up/tree/d1/b.bin", "drive:/copies/b.bin"]);
    assert_eq!(env.cat("drive:/copies/b.bin"), vec![7u8; 3 * 1024 * 1024]);
    env.add_fs_user("archive", "archive", "bob");
    env.ok(&["cp", "-r", "drive:/up/tree", "archive:/backup/"]);
    assert_eq!(
        remote_tree(&env, "archive:/backup/tree"),
        local_tree(&env.path("tree"))
    );
    let out = env.ok(&["cp", "--sync", "drive:/up/tree", "archive:/backup/tree"]);
    assert!(
        out.contains("sync: 0 copied (0 B), 0 deleted, 3 unchanged"),
        "{out}"
    );

    // Several sources into a directory; a missing source fails (3), the others are copied.
    env.write("m1.txt", b"1");
    env.write("m2.txt", b"2");
    env.ok(&["cp", "m1.txt", "m2.txt", "drive:/multi"]);
    assert_eq!(env.ok(&["ls", "drive:/multi"]), "m1.txt\nm2.txt\n");
    env.fails(&["cp", "m1.txt", "missing.txt", "drive:/multi2/"], 3);
    assert_eq!(env.ok(&["ls", "drive:/multi2"]), "m1.txt\n");
    // Download of one file into the current directory, and to a named file.
    env.ok(&["cp", "drive:/multi/m2.txt", "."]);
    assert_eq!(std::fs::read(env.path("m2.txt")).unwrap(), b"2");
    env.ok(&["cp", "drive:/multi/m1.txt", "renamed.txt"]);
    assert_eq!(std::fs::read(env.path("renamed.txt")).unwrap(), b"1");
    env.fails(&["cp", "drive:/multi/none.txt", "."], 3);
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let env = Env::new();
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("script(1) is not installed: skipped");
        return;
    }
    env.write("two.bin", &vec![1u8; 2 * 1024 * 1024]);
    let run = |extra: &str| {
        let out = env
            .under_terminal(&format!("{} cp {extra} two.bin drive:/p/", common::EFS))
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let drawn = run("");
    assert!(
        drawn.contains("/2.00 MiB") && drawn.contains("1 files"),
        "{drawn:?}"
    );
    assert_eq!(run("-q"), "");
    // Not a terminal: nothing either.
    let out = env.efs(&["cp", "two.bin", "drive:/p/again.bin"]);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out:?}"
    );
}

/// Regression: the destination refusing a remote → remote copy closed the pipe the download
/// was writing into, that broken pipe was taken for `efs cat | head`, and the copy exited 0.
/// Its error then named the destination twice, once without its remote (`copying
/// drive:/big.bin to ro:/copy.bin: writing /copy.bin: …`).
#[test]
fn a_remote_to_remote_copy_the_destination_refuses_fails() {
    let env = Env::new();
    env.add_read_only_user();
    // Larger than the 256 KiB pipe, so the download is still writing when the upload fails.
    env.write("big.bin", &common::noise(3 * 1024 * 1024));
    env.ok(&["cp", "big.bin", "drive:/big.bin"]);
    let err = env.fails(&["cp", "drive:/big.bin", "ro:/copy.bin"], 4);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains("copying drive:/big.bin to ro:/copy.bin: writing the destination: "),
        "{err}"
    );
    assert_eq!(first.matches("copy.bin").count(), 1, "{err}");
    assert!(err.contains("read-only access"), "{err}");
    assert!(!err.contains("broken pipe"), "{err}");
    env.fails(&["stat", "drive:/copy.bin"], 3);
}

/// Regression: downloads went through the fixed `<dest>.efs-part` opened with
/// `File::create`, which emptied (then renamed away) a file of that name and wrote through a
/// symbolic link planted there.
#[test]
fn a_download_never_touches_an_existing_part_file_or_link() {
    let env = Env::new();
    env.write("x.txt", b"remote content");
    env.ok(&["cp", "x.txt", "drive:/x.txt"]);
    let dl = env.path("dl");
    std::fs::create_dir_all(&dl).unwrap();
    std::fs::write(dl.join("a.txt.efs-part"), b"mine").unwrap();
    let victim = env.write("victim.txt", b"untouched");
    std::os::unix::fs::symlink(&victim, dl.join("b.txt.efs-part")).unwrap();

    env.ok(&["cp", "drive:/x.txt", "dl/a.txt"]);
    env.ok(&["cp", "drive:/x.txt", "dl/b.txt"]);
    assert_eq!(std::fs::read(dl.join("a.txt")).unwrap(), b"remote content");
    assert_eq!(std::fs::read(dl.join("a.txt.efs-part")).unwrap(), b"mine");
    let b = std::fs::symlink_metadata(dl.join("b.txt")).unwrap();
    assert!(b.file_type().is_file(), "{b:?}");
    assert_eq!(std::fs::read(dl.join("b.txt")).unwrap(), b"remote content");
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    // Nothing else is left behind.
    let mut names: Vec<String> = std::fs::read_dir(&dl)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["a.txt", "a.txt.efs-part", "b.txt", "b.txt.efs-part"]
    );
}

/// Regression: a local file whose name is not UTF-8 was skipped with a log line only, and
/// the copy exited 0 without it.
#[test]
fn a_local_name_that_is_not_utf8_fails_the_copy() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    env.write("up/fine.txt", b"fine");
    std::fs::write(
        env.path("up")
            .join(std::ffi::OsStr::from_bytes(b"r\xe9sum\xe9.txt")),
        b"latin-1 name",
    )
    .unwrap();
    let err = env.fails(&["cp", "-r", "up", "drive:/"], 1);
    assert!(
        err.contains("r\u{FFFD}sum\u{FFFD}.txt") && err.contains("not UTF-8"),
        "{err}"
    );
    // The others were copied.
    assert_eq!(env.cat("drive:/up/fine.txt"), b"fine");
}

/// Regression: a symbolic link to a directory planted in a local destination was followed,
/// so a download wrote below whatever it pointed to.
#[test]
fn a_download_never_writes_through_a_planted_link() {
    let env = Env::new();
    env.write("t/top.txt", b"top");
    env.write("t/sub/f.txt", b"through the link?");
    env.ok(&["cp", "-r", "t", "drive:/"]);
    std::fs::create_dir_all(env.path("down")).unwrap();
    std::fs::create_dir_all(env.path("outside")).unwrap();
    std::os::unix::fs::symlink(env.path("outside"), env.path("down/sub")).unwrap();

    let err = env.fails(&["cp", "--sync", "drive:/t", "down"], 1);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir(env.path("outside")).unwrap().count(), 0);
    assert_eq!(std::fs::read(env.path("down/top.txt")).unwrap(), b"top");
    assert!(
        std::fs::symlink_metadata(env.path("down/sub"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// A directory copied into a local destination goes below the name it adds there; a link in
/// that place (planted before the copy) is refused once, at planning, and nothing is written
/// through it.
#[test]
fn a_copy_into_a_directory_never_writes_through_a_link_at_its_name() {
    let env = Env::new();
    env.write("x/a.txt", b"a");
    env.write("x/sub/b.txt", b"b");
    env.ok(&["cp", "-r", "x", "drive:/"]);
    std::fs::create_dir_all(env.path("dest")).unwrap();
    std::fs::create_dir_all(env.path("outside")).unwrap();
    std::os::unix::fs::symlink(env.path("outside"), env.path("dest/x")).unwrap();
    let err = env.fails(&["cp", "-r", "drive:/x", "dest/"], 1);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir(env.path("outside")).unwrap().count(), 0);
}

/// Two sources landing on one destination name: the first is copied, the later one refused
/// (exit 5, as GNU cp's "will not overwrite just-created"), both ways; before, both raced to
/// the name, one was lost, and the copy exited 0.
#[test]
fn two_sources_on_one_destination_name_are_refused_not_raced() {
    let env = Env::new();
    env.write("2024/report.pdf", b"the 2024 report");
    env.write("2025/report.pdf", b"the 2025 report");
    let a = env.path("2024/report.pdf");
    let b = env.path("2025/report.pdf");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let err = env.fails(&["cp", a, b, "drive:/inbox/"], 5);
    assert!(
        err.contains("will not overwrite just-created drive:/inbox/report.pdf"),
        "{err}"
    );
    assert_eq!(env.cat("drive:/inbox/report.pdf"), b"the 2024 report");

    env.ok(&["cp", a, "drive:/2024/report.pdf"]);
    env.ok(&["cp", b, "drive:/2025/report.pdf"]);
    let out = env.path("out");
    std::fs::create_dir(&out).unwrap();
    let err = env.fails(
        &[
            "cp",
            "drive:/2024/report.pdf",
            "drive:/2025/report.pdf",
            out.to_str().unwrap(),
        ],
        5,
    );
    assert!(err.contains("will not overwrite just-created"), "{err}");
    assert_eq!(
        std::fs::read(out.join("report.pdf")).unwrap(),
        b"the 2024 report"
    );
}

/// A download that replaces a local file keeps that file's permissions (a 0600 file of
/// decrypted data came back 0644 under the usual umask); a new file gets the usual ones.
#[test]
fn a_download_over_a_file_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.write("tax.pdf", b"version 1");
    env.ok(&[
        "cp",
        env.path("tax.pdf").to_str().unwrap(),
        "drive:/tax.pdf",
    ]);
    env.write("tax.pdf", b"old local");
    let local = env.path("tax.pdf");
    for mode in [0o600, 0o640] {
        std::fs::set_permissions(&local, std::fs::Permissions::from_mode(mode)).unwrap();
        env.ok(&["cp", "drive:/tax.pdf", local.to_str().unwrap()]);
        assert_eq!(std::fs::read(&local).unwrap(), b"version 1");
        let got = std::fs::metadata(&local).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "{got:o}");
    }
    // The shell's `get PATH LOCAL` too.
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = format!("get /tax.pdf {}\n", local.display());
    let out = env.efs_input(&["shell", "drive"], script.as_bytes());
    common::assert_ok(&["shell"], &out);
    assert_eq!(
        std::fs::metadata(&local).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Regression: new downloaded files were 0644 and new directories 0755 under the usual
/// umask: decrypted medical records readable by every local user.
#[test]
fn new_downloaded_files_and_directories_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.write("up/a/tax.pdf", b"decrypted");
    env.write("up/top.txt", b"top");
    env.ok(&["cp", "-r", env.path("up").to_str().unwrap(), "drive:/"]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let fresh = env.path("fresh.pdf");
    env.ok(&["cp", "drive:/up/a/tax.pdf", fresh.to_str().unwrap()]);
    assert_eq!(mode(&fresh), 0o600, "{:o}", mode(&fresh));
    env.ok(&[
        "cp",
        "-r",
        "drive:/up",
        env.path("new/deeper/").to_str().unwrap(),
    ]);
    for (rel, want) in [
        ("new/deeper", 0o700),
        ("new/deeper/up", 0o700),
        ("new/deeper/up/a", 0o700),
        ("new/deeper/up/a/tax.pdf", 0o600),
        ("new/deeper/up/top.txt", 0o600),
    ] {
        let got = mode(&env.path(rel));
        assert_eq!(got, want, "{rel}: {got:o}");
    }
    env.ok(&[
        "cp",
        "--sync",
        "drive:/up",
        env.path("mirror").to_str().unwrap(),
    ]);
    for (rel, want) in [
        ("mirror", 0o700),
        ("mirror/a", 0o700),
        ("mirror/a/tax.pdf", 0o600),
    ] {
        let got = mode(&env.path(rel));
        assert_eq!(got, want, "{rel}: {got:o}");
    }
}

/// Regression: a local entry the walk skipped (a dangling link to an unmounted disk) looked
/// like a deletion to `cp --sync`, which deleted the server's copy and exited 0.
#[test]
fn sync_up_never_deletes_what_the_source_skipped() {
    let env = Env::new();
    env.write("rec/notes.txt", b"notes");
    env.write("rec/imaging/scan.dcm", b"scan");
    env.ok(&["cp", "--sync", "rec", "drive:/Records"]);
    // The NAS is unmounted: ./rec/imaging -> /mnt/nas/imaging dangles.
    std::fs::remove_dir_all(env.path("rec/imaging")).unwrap();
    std::os::unix::fs::symlink(env.path("nas/imaging"), env.path("rec/imaging")).unwrap();
    let err = env.fails(&["cp", "--sync", "rec", "drive:/Records"], 1);
    assert!(
        err.contains("imaging") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(env.cat("drive:/Records/imaging/scan.dcm"), b"scan");
    // A link to a directory (the mount point, empty) is skipped by choice: exit 0, and the
    // server's entry of that name is kept and counted.
    std::fs::create_dir_all(env.path("nas/imaging")).unwrap();
    let out = env.ok(&["cp", "--sync", "rec", "drive:/Records"]);
    assert!(out.contains("1 kept (skipped at the source"), "{out}");
    assert_eq!(env.cat("drive:/Records/imaging/scan.dcm"), b"scan");
    // A temporary download file is never uploaded, nor its remote namesake deleted.
    env.write("rec/notes.txt.0123456789abcdef.efs-part", b"half");
    env.ok(&["cp", "--sync", "rec", "drive:/Records"]);
    let listing = env.ok(&["ls", "drive:/Records"]);
    assert!(!listing.contains("efs-part"), "{listing}");
}

/// Regression: an entry of the other kind was deleted before its replacement arrived, even
/// when something had already failed, so a failed copy lost both versions.
#[test]
fn sync_replaces_an_entry_of_the_other_kind_only_when_nothing_failed() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    env.write("up/x/keep.txt", b"remote dir");
    env.write("up/y", b"remote file");
    env.ok(&["cp", "--sync", "up", "drive:/t"]);
    // Locally, x becomes a file and y a directory; and a name that cannot be copied fails.
    std::fs::remove_dir_all(env.path("up/x")).unwrap();
    env.write("up/x", b"local file");
    std::fs::remove_file(env.path("up/y")).unwrap();
    env.write("up/y/in.txt", b"local dir");
    let bad = env
        .path("up")
        .join(std::ffi::OsStr::from_bytes(b"bad-\xff"));
    std::fs::write(&bad, b"?").unwrap();
    let err = env.fails(&["cp", "--sync", "up", "drive:/t"], 1);
    assert!(err.contains("not replaced"), "{err}");
    assert_eq!(env.cat("drive:/t/x/keep.txt"), b"remote dir");
    assert_eq!(env.cat("drive:/t/y"), b"remote file");
    // Nothing fails: both are replaced, up and then down.
    std::fs::remove_file(&bad).unwrap();
    let out = env.ok(&["cp", "--sync", "up", "drive:/t"]);
    assert!(out.contains("2 deleted"), "{out}");
    assert_eq!(env.cat("drive:/t/x"), b"local file");
    assert_eq!(env.cat("drive:/t/y/in.txt"), b"local dir");
    let listing = env.ok(&["ls", "drive:/t"]);
    assert!(!listing.contains("efs-part"), "{listing}");
    env.write("down/x/old.txt", b"a local dir");
    env.write("down/y", b"a local file");
    env.ok(&[
        "cp",
        "--sync",
        "drive:/t",
        env.path("down").to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(env.path("down/x")).unwrap(), b"local file");
    assert_eq!(
        std::fs::read(env.path("down/y/in.txt")).unwrap(),
        b"local dir"
    );
}

/// A copy failing while the sync runs (here a file over the server's size limit: 413), not
/// while it plans, holds back a file replacing a directory too: the directory was deleted
/// because only planning failures were looked at.
#[test]
fn a_failure_while_copying_holds_back_a_directory_replacement() {
    let env = Env::with_server_args(&["--max-body-size", "1000"]);
    env.write("up/x/keep.txt", b"remote dir");
    env.ok(&["cp", "--sync", "up", "drive:/t"]);
    std::fs::remove_dir_all(env.path("up/x")).unwrap();
    env.write("up/x", b"local file");
    env.write("up/big.bin", &[7u8; 2000]);
    let err = env.fails(&["cp", "--sync", "up", "drive:/t"], 1);
    assert!(err.contains("not replaced"), "{err}");
    assert_eq!(env.cat("drive:/t/x/keep.txt"), b"remote dir");
    let listing = env.ok(&["ls", "drive:/t"]);
    assert!(!listing.contains("efs-part"), "{listing}");
}

/// A file replaced by a directory whose files then fail to copy is kept aside, named in the
/// error, not lost: it was deleted before the directory was made.
#[test]
fn a_file_replaced_by_a_failing_directory_is_kept() {
    let env = Env::with_server_args(&["--max-body-size", "1000"]);
    env.write("up/y", b"remote file");
    env.ok(&["cp", "--sync", "up", "drive:/t"]);
    std::fs::remove_file(env.path("up/y")).unwrap();
    env.write("up/y/big.bin", &[7u8; 2000]);
    let err = env.fails(&["cp", "--sync", "up", "drive:/t"], 1);
    assert!(
        err.contains("the file there is kept as drive:/t/y."),
        "{err}"
    );
    let kept = err
        .split("kept as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("a name");
    assert!(kept.ends_with(".efs-part"), "{kept}");
    assert_eq!(env.cat(kept), b"remote file");
    // `ls -R` (and `tar`) show it; only copies leave such names out.
    let name = kept.rsplit('/').next().unwrap();
    assert!(env.ok(&["ls", "-R", "drive:/t"]).contains(name));
    // The next sync that succeeds leaves it alone (walks skip such names).
    std::fs::remove_file(env.path("up/y/big.bin")).unwrap();
    env.write("up/y/small.txt", b"ok");
    env.ok(&["cp", "--sync", "up", "drive:/t"]);
    assert_eq!(env.cat("drive:/t/y/small.txt"), b"ok");
    assert_eq!(env.cat(kept), b"remote file");
}

/// The names of the part files in `dir`.
fn part_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".efs-part"))
        .collect()
}

/// Starts `cmd` (whose output goes into `dir`), waits for its first part file there, sends it
/// `signal`, and returns how it ended.
fn signal_once_a_part_exists(
    mut cmd: std::process::Command,
    dir: &std::path::Path,
    signal: &str,
) -> std::process::Output {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while part_files(dir).is_empty() {
        assert!(Instant::now() < deadline, "no temporary file appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait_with_output().unwrap()
}

/// A 128 MiB remote file `drive:/big.bin` and an empty local `dl/`.
fn env_with_a_big_file() -> (Env, Vec<u8>) {
    let env = Env::new();
    let data = common::noise(128 << 20);
    let out = env.efs_input(&["put", "drive:/big.bin"], &data);
    common::assert_ok(&["put"], &out);
    std::fs::create_dir_all(env.path("dl")).unwrap();
    (env, data)
}

/// Regression: `efs cp` stopped by Ctrl-C left the decrypted `NAME.<random>.efs-part` of
/// the download it was in, which a later `cp --sync` uploaded as a record.
#[test]
fn an_interrupted_download_leaves_no_temporary_file_and_exits_130() {
    let (env, _) = env_with_a_big_file();
    let cmd = env.cmd(&["cp", "drive:/big.bin", "dl/big.bin"]);
    let out = signal_once_a_part_exists(cmd, &env.path("dl"), "INT");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(part_files(&env.path("dl")).is_empty());
    assert!(!env.path("dl/big.bin").exists());
}

/// Regression: a hang-up (the ssh session of an `efs cp` dropped) killed the process and left
/// the decrypted part file of the download in progress behind.
#[test]
fn a_hang_up_removes_the_unfinished_download_and_exits_129() {
    let (env, _) = env_with_a_big_file();
    let cmd = with_sighup_default(&env, &["cp", "drive:/big.bin", "dl/big.bin"]);
    let out = signal_once_a_part_exists(cmd, &env.path("dl"), "HUP");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(129), "{err}");
    assert!(err.contains("hang-up"), "{err}");
    assert!(part_files(&env.path("dl")).is_empty());
    assert!(!env.path("dl/big.bin").exists());
}

/// `efs ARGS` with SIGHUP at its default disposition, also when this test runs under `nohup`
/// (whose ignored SIGHUP `efs` would inherit, and rightly keep).
fn with_sighup_default(env: &Env, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("env");
    cmd.args(["--default-signal=HUP", common::EFS]).args(args);
    env.configure(&mut cmd);
    cmd
}

/// Regression: the terminal of an `efs cp` going away (an ssh session dropped) made the
/// message of its hang-up unwritable (EIO), and `eprintln!` panicked: exit 101, not 129.
/// As there, the terminal closes, then the login shell passes the SIGHUP on to its jobs.
#[test]
fn a_closed_terminal_stops_a_copy_with_129() {
    use std::time::{Duration, Instant};
    let (env, _) = env_with_a_big_file();
    // The shell ignores the hang-up to report efs's exit code; efs gets SIGHUP's default.
    let cmdline = format!(
        "trap '' HUP; env --default-signal=HUP {} cp drive:/big.bin dl/big.bin & \
         echo $! > pid.txt; wait $!; echo $? > code.txt",
        common::EFS
    );
    let mut terminal = env
        .under_terminal(&cmdline)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while part_files(&env.path("dl")).is_empty() {
        assert!(Instant::now() < deadline, "no temporary file appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    // The terminal goes away (its master side closes), then the hang-up reaches efs.
    terminal.kill().unwrap();
    terminal.wait().unwrap();
    let pid = loop {
        match std::fs::read_to_string(env.path("pid.txt")) {
            Ok(p) if p.ends_with('\n') => break p,
            _ => {
                assert!(Instant::now() < deadline, "the shell wrote no pid");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    };
    let hup = std::process::Command::new("kill")
        .args(["-HUP", pid.trim()])
        .status()
        .unwrap();
    assert!(hup.success());
    let code = env.path("code.txt");
    while std::fs::read_to_string(&code).map_or(true, |c| !c.ends_with('\n')) {
        assert!(Instant::now() < deadline, "efs did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(std::fs::read_to_string(&code).unwrap().trim(), "129");
    assert!(part_files(&env.path("dl")).is_empty());
    assert!(!env.path("dl/big.bin").exists());
}

/// `nohup efs cp …` must outlive its terminal: the handler that removes part files on a
/// hang-up is not installed over an ignored SIGHUP.
#[test]
fn under_nohup_a_hang_up_does_not_stop_a_copy() {
    let (env, data) = env_with_a_big_file();
    let mut cmd = std::process::Command::new("nohup");
    cmd.arg(common::EFS)
        .args(["cp", "drive:/big.bin", "dl/big.bin"]);
    env.configure(&mut cmd);
    let out = signal_once_a_part_exists(cmd, &env.path("dl"), "HUP");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(std::fs::read(env.path("dl/big.bin")).unwrap() == data);
    assert!(part_files(&env.path("dl")).is_empty());
}

/// Regression: `efs tar` stopped by a signal left its unfinished `FILE.<random>.efs-part`.
#[test]
fn a_stopped_tar_removes_its_unfinished_archive() {
    let (env, _) = env_with_a_big_file();
    std::fs::write(env.path("pass.txt"), b"correct horse\n").unwrap();
    for (signal, code) in [("TERM", 143), ("HUP", 129)] {
        let cmd = with_sighup_default(
            &env,
            &["tar", "drive:/", "-o", "dl/b.tar.gz.age", "-p", "pass.txt"],
        );
        let out = signal_once_a_part_exists(cmd, &env.path("dl"), signal);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{signal}: {err}");
        assert!(part_files(&env.path("dl")).is_empty(), "{signal}");
        assert!(!env.path("dl/b.tar.gz.age").exists(), "{signal}");
    }
}

/// Regression: one local name EFS cannot take (a backslash) ended the walk of the whole tree
/// (nothing else copied), names with a newline or a tab failed with exit 2 and were printed
/// raw (the newline splitting the error), and an unreadable directory ended it too (exit 4).
#[test]
fn one_bad_local_entry_fails_alone_and_the_walk_goes_on() {
    let env = Env::new();
    env.write("s5/a/x\\y", b"backslash");
    env.write("s5/a/fine.txt", b"a");
    env.write("s5/b/new\nline", b"newline");
    env.write("s5/b/tab\there", b"tab");
    env.write("s5/c/other.txt", b"c");
    let out = env.efs(&["cp", "-r", "s5", "drive:/"]);
    let err = common::assert_code(&["cp"], &out, 1);
    assert!(
        err.contains("s5/a/x\\\\y") && err.contains("s5/b/new\\nline"),
        "{err}"
    );
    assert!(err.contains("s5/b/tab\\there"), "{err}");
    assert!(
        !err.contains("new\nline") && !err.contains("tab\there"),
        "{err}"
    );
    assert_eq!(env.cat("drive:/s5/a/fine.txt"), b"a");
    assert_eq!(env.cat("drive:/s5/c/other.txt"), b"c");

    // An unreadable directory: failed, the rest copied, and a sync keeps what the
    // destination has below it.
    env.write("s6/bad/in.txt", b"in");
    env.write("s6/good/f.txt", b"f");
    env.ok(&["cp", "--sync", "s6", "drive:/s6"]);
    env.write("s6/good/new.txt", b"new");
    std::fs::set_permissions(
        env.path("s6/bad"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let out = common::efs_unprivileged(&env, &["cp", "--sync", "s6", "drive:/s6"]);
    std::fs::set_permissions(
        env.path("s6/bad"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let Some(out) = out else {
        eprintln!("cannot drop root's capabilities here: the unreadable directory is not tested");
        return;
    };
    let err = common::assert_code(&["cp", "--sync"], &out, 4);
    assert!(
        err.contains("s6/bad") && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(env.cat("drive:/s6/good/new.txt"), b"new");
    assert_eq!(env.cat("drive:/s6/bad/in.txt"), b"in");
}

/// Regression: `cp --sync DIR FILE` deleted the file and made a directory there, where
/// `cp -r` refuses.
#[test]
fn sync_onto_a_file_is_refused_like_cp_r() {
    let env = Env::new();
    env.write("up/a.txt", b"a");
    common::assert_ok(
        &["put"],
        &env.efs_input(&["put", "drive:/f"], b"remote file"),
    );
    for args in [
        &["cp", "-r", "up", "drive:/f"][..],
        &["cp", "--sync", "up", "drive:/f"][..],
        &["cp", "--sync", "--no-delete", "up", "drive:/f"][..],
    ] {
        let err = env.fails(args, 5);
        assert!(err.contains("drive:/f is a file, not a directory"), "{err}");
    }
    assert_eq!(env.cat("drive:/f"), b"remote file");
    env.ok(&["cp", "-r", "up", "drive:/src"]);
    env.write("dl", b"local file");
    let err = env.fails(&["cp", "--sync", "drive:/src", "dl"], 5);
    assert!(err.contains("dl is a file, not a directory"), "{err}");
    assert_eq!(std::fs::read(env.path("dl")).unwrap(), b"local file");
}

/// Regression: failures of sources that were never planned were counted against the planned
/// operations only ("2 operations failed (of 1)"), a sync counted the bytes of the copies
/// that failed, a dry run said "1 files", and a sync of a missing source printed a summary.
#[test]
fn counts_and_totals_are_true() {
    let env = Env::new();
    env.write("up/a.txt", b"abc");
    let err = env.fails(&["cp", "up/a.txt", "gone1", "gone2", "drive:/d/"], 3);
    assert!(err.contains("2 operations failed (of 3)"), "{err}");
    assert_eq!(env.cat("drive:/d/a.txt"), b"abc");

    // Entries the walk fails count among the operations, beside the copies made.
    env.write("w/x\\y", b"?");
    env.write("w/x\\z", b"?");
    for f in ["w/1", "w/2", "w/3"] {
        env.write(f, b"fine");
    }
    let err = env.fails(&["cp", "-r", "w", "drive:/"], 1);
    assert!(err.contains("2 operations failed (of 5)"), "{err}");

    let dry = env.ok(&["cp", "--sync", "--dry-run", "up", "drive:/s"]);
    assert!(dry.contains("would copy 1 file (3 B)"), "{dry}");

    // Every upload refused (a read-only grant): nothing was copied, nor any byte.
    env.add_read_only_user();
    let out = env.efs(&["cp", "--sync", "up", "ro:/s"]);
    common::assert_code(&["cp"], &out, 4);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sync: 0 copied (0 B)"), "{stdout}");

    let out = env.efs(&["cp", "--sync", "missing", "drive:/s"]);
    common::assert_code(&["cp"], &out, 3);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

/// Regression: a remote copy onto itself re-uploaded the file, and a directory copied into
/// itself (or below itself) made `/src/src` or `/src/sub/src`.
#[test]
fn a_copy_onto_or_into_its_own_source_is_refused() {
    let env = Env::new();
    env.write("src/a.txt", b"a");
    env.write("src/sub/b.txt", b"b");
    env.ok(&["cp", "-r", "src", "drive:/"]);
    env.ok(&[
        "remote",
        "add",
        "again",
        &env.server.url,
        "--user",
        "alice",
        "--key",
        env.key.to_str().unwrap(),
        "--ca",
        env.server.cert().to_str().unwrap(),
    ]);
    let before = env.ok(&["ls", "-l", "-R", "drive:/"]);
    for args in [
        &["cp", "drive:/src/a.txt", "drive:/src/a.txt"][..],
        &["cp", "drive:/src/a.txt", "drive:/src/"][..],
        &["cp", "-r", "drive:/src", "drive:/src"][..],
        &["cp", "-r", "drive:/src", "drive:/src/sub/"][..],
        &["cp", "--sync", "drive:/src", "drive:/src/sub"][..],
        &["cp", "-r", "drive:/", "drive:/src/"][..],
        // A second name for the same server and filesystem is the same place.
        &["cp", "drive:/src/a.txt", "again:/src/a.txt"][..],
        &["cp", "-r", "again:/src", "drive:/src/sub/"][..],
    ] {
        let err = env.fails(args, 2);
        assert!(
            err.contains("the same file") || err.contains("into itself"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(env.ok(&["ls", "-l", "-R", "drive:/"]), before);
    // Elsewhere in the same filesystem, under the other name: copied.
    env.ok(&["cp", "again:/src/a.txt", "drive:/copy.txt"]);
    assert_eq!(env.ok(&["cat", "drive:/copy.txt"]), "a");
}

/// Regression: an interrupted `efs tar` said "files being copied were abandoned", cp's
/// message; it says what happened to the archive, and a file it was to replace is kept.
#[test]
fn an_interrupted_tar_says_what_happened_to_the_archive() {
    let (env, _) = env_with_a_big_file();
    std::fs::write(env.path("pass.txt"), b"correct horse\n").unwrap();
    env.write("dl/b.tar.gz.age", b"last week's backup");
    let cmd = env.cmd(&[
        "tar",
        "drive:/",
        "-o",
        "dl/b.tar.gz.age",
        "-p",
        "pass.txt",
        "--force",
    ]);
    let out = signal_once_a_part_exists(cmd, &env.path("dl"), "INT");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("unfinished archive was removed"),
        "{err}"
    );
    assert!(!err.contains("files being copied"), "{err}");
    assert!(err.contains("dl/b.tar.gz.age is kept as it was"), "{err}");
    assert_eq!(
        std::fs::read(env.path("dl/b.tar.gz.age")).unwrap(),
        b"last week's backup"
    );
    assert!(part_files(&env.path("dl")).is_empty());
}

/// Regression: skipped entries were reported as tracing lines (`… WARN skipping …`) saying
/// "a sync keeps …" on a plain copy too, and a destination that cannot be written printed the
/// same error once for every file.
#[test]
fn skip_warnings_and_repeated_errors_read_well() {
    let env = Env::new();
    env.write("s3/a.txt", b"a");
    let fifo = std::process::Command::new("mkfifo")
        .arg(env.path("s3/fifo"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let out = env.efs(&["cp", "-r", "s3", "drive:/"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    common::assert_ok(&["cp"], &out);
    assert!(
        err.starts_with("efs: warning: skipping s3/fifo: not a regular file"),
        "{err}"
    );
    assert!(
        !err.contains("WARN") && !err.contains("a sync keeps"),
        "{err}"
    );
    let out = env.efs(&["cp", "--sync", "s3", "drive:/s3"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    common::assert_ok(&["cp"], &out);
    assert!(
        err.contains("efs: warning: skipping s3/fifo") && err.contains("a sync keeps"),
        "{err}"
    );

    // A destination that cannot be written: its error once, not once per file.
    env.write("up/d1/a", b"a");
    env.write("up/d1/b", b"b");
    env.write("up/d2/c", b"c");
    env.ok(&["cp", "-r", "up", "drive:/"]);
    std::fs::create_dir_all(env.path("ro")).unwrap();
    std::fs::set_permissions(
        env.path("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let Some(out) = common::efs_unprivileged(&env, &["cp", "-r", "drive:/up", "ro"]) else {
        eprintln!("cannot drop root's capabilities here: the unwritable destination is not tested");
        return;
    };
    let err = common::assert_code(&["cp"], &out, 4);
    let lines: Vec<&str> = err.lines().collect();
    let mut unique = lines.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), lines.len(), "{err}");
}

/// A sync swaps a file and a directory whose names are close to the 255-byte limit, both
/// ways: the temporary `NAME.<random>.efs-part` they are moved aside to was too long ("a path
/// segment is longer than 255 bytes" remotely, "File name too long" locally).
#[test]
fn sync_swaps_entries_with_names_of_240_bytes() {
    let env = Env::new();
    let long = "Q".repeat(240);
    env.write(&format!("up/{long}/keep.txt"), b"remote dir");
    env.write(&format!("up/f{long}"), b"remote file");
    env.ok(&["cp", "--sync", "up", "drive:/t"]);
    std::fs::remove_dir_all(env.path(&format!("up/{long}"))).unwrap();
    env.write(&format!("up/{long}"), b"local file");
    std::fs::remove_file(env.path(&format!("up/f{long}"))).unwrap();
    env.write(&format!("up/f{long}/in.txt"), b"local dir");
    env.ok(&["cp", "--sync", "up", "drive:/t"]);
    assert_eq!(env.cat(&format!("drive:/t/{long}")), b"local file");
    assert_eq!(env.cat(&format!("drive:/t/f{long}/in.txt")), b"local dir");
    env.write(&format!("down/{long}/old.txt"), b"a local dir");
    env.write(&format!("down/f{long}"), b"a local file");
    env.ok(&[
        "cp",
        "--sync",
        "drive:/t",
        env.path("down").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(env.path(&format!("down/{long}"))).unwrap(),
        b"local file"
    );
    assert_eq!(
        std::fs::read(env.path(&format!("down/f{long}/in.txt"))).unwrap(),
        b"local dir"
    );
}

/// Regression: every upload refused with the same server error printed one line per file
/// (306 for 305 files), and the hint ("ask the operator for write access") was lost.
#[test]
fn one_server_error_for_many_files_is_reported_once_with_its_hint() {
    let env = Env::new();
    env.add_read_only_user();
    for i in 0..12 {
        env.write(&format!("tree/many/scan {i}.txt"), b"x");
    }
    let err = env.fails(&["cp", "-r", "tree", "ro:/ro-tree"], 4);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("efs: error:"))
        .collect();
    assert_eq!(errors.len(), 2, "{err}");
    assert!(
        errors[0].contains("read-only access")
            && errors[0].contains("(and 11 more with the same error)"),
        "{err}"
    );
    assert!(err.contains("12 operations failed"), "{err}");
    assert!(
        err.contains("efs: hint: ") && err.contains("write access"),
        "{err}"
    );
    assert_eq!(err.matches("efs: hint:").count(), 1, "{err}");
}

/// Regression: a sync refused before anything was planned (a destination of the wrong
/// kind, a copy onto itself) printed `sync: 0 copied …` (or `dry run: would copy 0 files`)
/// before its error, which looked like a success.
#[test]
fn a_refused_sync_prints_only_its_error() {
    let env = Env::new();
    env.write("tree/a.txt", b"a");
    env.write("perm.txt", b"p");
    env.ok(&["cp", "-r", "tree", "drive:/Documents"]);
    env.ok(&["cp", "perm.txt", "drive:/Documents/todo.txt"]);
    for (args, code) in [
        (&["cp", "--sync", "drive:/Documents", "./perm.txt"][..], 5),
        (
            &["cp", "--sync", "tree", "drive:/Documents/todo.txt"][..],
            5,
        ),
        (
            &["cp", "--sync", "drive:/Documents", "drive:/Documents"][..],
            2,
        ),
        (
            &[
                "cp",
                "--sync",
                "--dry-run",
                "tree",
                "drive:/Documents/todo.txt",
            ][..],
            5,
        ),
    ] {
        let out = env.efs(args);
        common::assert_code(args, &out, code);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}");
    }
    assert_eq!(std::fs::read(env.path("perm.txt")).unwrap(), b"p");
}

/// Regression: a recursive download whose file lands on a local directory failed with
/// `local I/O: Is a directory (os error 21)`, exit 1; a single file there is exit 5.
#[test]
fn a_recursive_download_onto_a_local_directory_is_a_conflict() {
    let env = Env::new();
    env.write("tree/todo.txt", b"t");
    env.ok(&["cp", "-r", "tree", "drive:/Documents"]);
    std::fs::create_dir_all(env.path("col2/Documents/todo.txt")).unwrap();
    let err = env.fails(&["cp", "-r", "drive:/Documents", "col2/"], 5);
    assert!(
        err.contains("col2/Documents/todo.txt is a directory"),
        "{err}"
    );
    assert!(!err.contains("os error"), "{err}");
    assert!(env.path("col2/Documents/todo.txt").is_dir());
}

/// Regression: a dangling link's error said what a sync keeps without --sync.
#[test]
fn only_a_sync_says_it_keeps_what_a_dangling_link_names() {
    let env = Env::new();
    env.write("bad/fine.txt", b"f");
    std::os::unix::fs::symlink(env.path("missing"), env.path("bad/gone")).unwrap();
    let err = env.fails(&["cp", "-r", "bad", "drive:/bad"], 1);
    assert!(err.contains("gone: not copied, a symbolic link"), "{err}");
    assert!(!err.contains("a sync keeps"), "{err}");
    let err = env.fails(&["cp", "--sync", "bad", "drive:/bad"], 1);
    assert!(
        err.contains("a sync keeps what the destination has"),
        "{err}"
    );
}

/// Regression: a download sync left a `.efs-part` file at the local destination without a
/// word, while walks skip them "with a warning".
#[test]
fn a_download_sync_warns_about_a_part_file_at_the_destination() {
    let env = Env::new();
    env.write("src/a.txt", b"a");
    env.ok(&["cp", "-r", "src", "drive:/src"]);
    env.write("dst/x.txt.0123456789abcdef.efs-part", b"left by a crash");
    let out = env.efs(&["cp", "--sync", "drive:/src", "dst"]);
    let err = common::assert_code(&["cp"], &out, 0);
    assert!(
        err.contains("efs: warning: skipping") && err.contains("x.txt.0123456789abcdef.efs-part"),
        "{err}"
    );
    assert!(env.path("dst/x.txt.0123456789abcdef.efs-part").exists());
}

/// Regression: `efs cp -v` named what it copied and deleted on stderr; GNU `cp -v` names it on
/// stdout, where a script reads it apart from the errors.
#[test]
fn cp_v_names_what_it_copies_on_stdout() {
    let env = Env::new();
    env.write("site/a.txt", b"a");
    let args = ["cp", "-v", "-r", "site", "drive:/site"];
    let out = env.efs(&args);
    let stdout = common::assert_ok(&args, &out);
    assert!(
        stdout.contains("copied site/a.txt -> drive:/site/a.txt\n")
            && stdout.contains("1 file copied"),
        "{stdout}"
    );
    assert!(out.stderr.is_empty(), "{out:?}");
    std::fs::remove_file(env.path("site/a.txt")).unwrap();
    let args = ["cp", "-v", "--sync", "site", "drive:/site"];
    let out = env.efs(&args);
    let stdout = common::assert_ok(&args, &out);
    assert!(stdout.contains("deleted drive:/site/a.txt\n"), "{stdout}");
    assert!(out.stderr.is_empty(), "{out:?}");
}
