//! `efs tar` / `efs untar` against a real server: the standard `age` tool (the Debian
//! package, which scripts/test.sh installs) opens the backup, restores verify byte for byte,
//! wrong keys upload nothing, and unsafe entries are refused.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::Env;

/// Every file below `dir`: relative path → content; directories end with `/`.
fn local_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Every file below a remote directory: relative path → content; directories end with `/`.
fn remote_tree(env: &Env, dir: &str) -> BTreeMap<String, Vec<u8>> {
    env.ok(&["ls", "-R", dir])
        .lines()
        .map(|rel| {
            if rel.ends_with('/') {
                (rel.to_owned(), Vec::new())
            } else {
                (rel.to_owned(), env.cat(&format!("{dir}/{rel}")))
            }
        })
        .collect()
}

fn big() -> Vec<u8> {
    (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A source tree with nested and empty directories, an empty file and a 3 MiB file, both
/// locally (`src/`) and on the remote (`drive:/src`).
fn populate(env: &Env) -> BTreeMap<String, Vec<u8>> {
    env.write("src/top.txt", b"top level\n");
    env.write("src/empty.bin", b"");
    env.write("src/a/b/c/deep.txt", b"deep down");
    env.write("src/a/sibling.md", b"# sibling");
    env.write("src/big/three-mib.bin", &big());
    std::fs::create_dir_all(env.path("src/empty-dir")).unwrap();
    env.ok(&["cp", "-r", "./src", "drive:/"]);
    env.ok(&["mkdir", "-p", "drive:/src/empty-dir"]);
    let tree = local_tree(&env.path("src"));
    assert_eq!(remote_tree(env, "drive:/src"), tree);
    tree
}

/// `age-keygen -o key.txt`; returns the recipient (public key).
fn age_keygen(env: &Env, name: &str) -> String {
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(env.path(name))
        .output()
        .expect("age-keygen (apt-get install age) runs");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(env.path(name)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key as a comment")
        .trim()
        .to_owned()
}

#[test]
fn age_opens_the_backup_and_untar_restores_and_verifies() {
    let env = Env::new();
    let tree = populate(&env);
    let recipient = age_keygen(&env, "key.txt");

    env.ok(&[
        "tar",
        "drive:/src",
        "-o",
        "backup.tar.gz.age",
        "-r",
        &recipient,
    ]);
    // The standard tools open it: age -d -i key.txt FILE | tar xz -C out
    std::fs::create_dir_all(env.path("out")).unwrap();
    let mut age = Command::new("age")
        .args(["-d", "-i", "key.txt", "backup.tar.gz.age"])
        .current_dir(env.tmp.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("age (apt-get install age) runs");
    let tar = Command::new("tar")
        .args(["xz", "-C", "out"])
        .current_dir(env.tmp.path())
        .stdin(age.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(age.wait().unwrap().success());
    assert!(tar.success());
    assert_eq!(local_tree(&env.path("out")), tree);

    // The output is not overwritten without --force.
    let err = env.fails(
        &[
            "tar",
            "drive:/src",
            "-o",
            "backup.tar.gz.age",
            "-r",
            &recipient,
        ],
        5,
    );
    assert!(err.contains("--force"), "{err}");
    env.ok(&[
        "tar",
        "drive:/src",
        "-o",
        "backup.tar.gz.age",
        "-r",
        &recipient,
        "--force",
    ]);
    // Into a directory that does not exist: named as given (it named its temporary file).
    let err = env.fails(
        &["tar", "drive:/src", "-o", "nodir/t.age", "-r", &recipient],
        3,
    );
    assert!(err.contains("creating nodir/t.age"), "{err}");
    assert!(!err.contains("efs-part"), "{err}");

    // efs untar restores the tree, verified.
    let out = env.efs(&[
        "untar",
        "backup.tar.gz.age",
        "drive:/restored",
        "-i",
        "key.txt",
    ]);
    let err = common::assert_code(&["untar"], &out, 0);
    assert!(err.contains("restored and verified"), "{err}");
    assert_eq!(remote_tree(&env, "drive:/restored"), tree);

    // Existing files are not replaced without --force.
    let err = env.fails(
        &[
            "untar",
            "backup.tar.gz.age",
            "drive:/restored",
            "-i",
            "key.txt",
        ],
        5,
    );
    assert!(err.contains("exists"), "{err}");
    env.ok(&[
        "untar",
        "backup.tar.gz.age",
        "drive:/restored",
        "-i",
        "key.txt",
        "--force",
    ]);
    assert_eq!(remote_tree(&env, "drive:/restored"), tree);

    // An archive made by the standard tools restores too: tar cz -C src . | age -r R
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar cz -C src . | age -r {recipient} > std.tar.gz.age"
        ))
        .current_dir(env.tmp.path())
        .status()
        .unwrap();
    assert!(made.success());
    env.ok(&[
        "untar",
        "std.tar.gz.age",
        "drive:/from-std",
        "-i",
        "key.txt",
    ]);
    assert_eq!(remote_tree(&env, "drive:/from-std"), tree);

    // The wrong identity: refused (exit 4) and nothing uploaded.
    age_keygen(&env, "other.txt");
    let err = env.fails(
        &[
            "untar",
            "backup.tar.gz.age",
            "drive:/wrong",
            "-i",
            "other.txt",
        ],
        4,
    );
    assert!(err.contains("cannot decrypt"), "{err}");
    env.fails(&["stat", "drive:/wrong"], 3);
}

#[test]
fn passphrase_round_trip_and_wrong_passphrase() {
    let env = Env::new();
    let tree = populate(&env);
    env.write("pass.txt", b"correct horse battery staple\n");
    env.write("wrong.txt", b"incorrect horse\n");

    env.ok(&["tar", "drive:/src", "-o", "b.age", "-p", "pass.txt"]);
    let head = std::fs::read(env.path("b.age")).unwrap();
    assert!(head.starts_with(b"age-encryption.org/v1\n-> scrypt "));

    env.ok(&["untar", "b.age", "drive:/back", "-p", "pass.txt"]);
    assert_eq!(remote_tree(&env, "drive:/back"), tree);

    let err = env.fails(&["untar", "b.age", "drive:/nope", "-p", "wrong.txt"], 4);
    assert!(err.contains("cannot decrypt"), "{err}");
    env.fails(&["stat", "drive:/nope"], 3);

    // A damaged or cut-off archive is said to be one (it said "local I/O: the upload's source
    // ended …" and age's "last chunk has been processed"), exit 1.
    let mut bytes = std::fs::read(env.path("b.age")).unwrap();
    let mid = bytes.len() / 2;
    let mut flipped = bytes.clone();
    flipped[mid] ^= 0x01;
    std::fs::write(env.path("flipped.age"), &flipped).unwrap();
    bytes.truncate(mid);
    std::fs::write(env.path("cut.age"), &bytes).unwrap();
    for name in ["flipped.age", "cut.age"] {
        let to = format!("drive:/{name}.d");
        let err = env.fails(&["untar", name, &to, "-p", "pass.txt"], 1);
        assert!(
            err.contains("damaged, altered or cut short"),
            "{name}: {err}"
        );
        assert!(!err.contains("local I/O"), "{name}: {err}");
    }

    // Options: one way of encrypting is needed, and only one kind.
    env.fails(&["tar", "drive:/src", "-o", "c.age"], 2);
    env.fails(
        &[
            "tar",
            "drive:/src",
            "-o",
            "c.age",
            "-p",
            "pass.txt",
            "-r",
            "age1x",
        ],
        2,
    );
    env.fails(&["tar", "drive:/src", "-o", "c.age", "-r", "not-a-key"], 2);
    env.fails(&["untar", "b.age", "drive:/x"], 2);
    assert!(!env.path("c.age").exists());
}

#[test]
fn unsafe_entries_are_refused() {
    let env = Env::new();
    let recipient = age_keygen(&env, "key.txt");
    let recipient: age::x25519::Recipient = recipient.parse().unwrap();

    // A tar with a good file, '../evil' and an absolute path (written raw: the tar crate's
    // own setters refuse such names).
    let mut data = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut data, flate2::Compression::default());
        let mut b = tar::Builder::new(gz);
        let mut add = |name: &str, body: &[u8]| {
            let mut h = tar::Header::new_gnu();
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(body.len() as u64);
            h.set_cksum();
            b.append(&h, body).unwrap();
        };
        add("good.txt", b"fine");
        add("../evil", b"evil");
        add("/abs-evil", b"evil too");
        add("sub/../../evil2", b"evil three");
        b.into_inner().unwrap().finish().unwrap();
    }
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .unwrap();
    let mut file = std::fs::File::create(env.path("evil.age")).unwrap();
    let mut w = enc.wrap_output(&mut file).unwrap();
    w.write_all(&data).unwrap();
    w.finish().unwrap().flush().unwrap();

    let err = env.fails(&["untar", "evil.age", "drive:/in", "-i", "key.txt"], 1);
    assert!(err.contains("'../evil'"), "{err}");
    assert!(err.contains("'/abs-evil'"), "{err}");
    assert!(err.contains("'sub/../../evil2'"), "{err}");
    assert_eq!(env.cat("drive:/in/good.txt"), b"fine");
    assert_eq!(env.ok(&["ls", "drive:/"]), "in/\n");
    assert_eq!(env.ok(&["ls", "drive:/in"]), "good.txt\n");
}

#[test]
fn a_single_file_and_a_missing_source() {
    let env = Env::new();
    env.write("pass.txt", b"pw");
    env.write("one.txt", b"just one");
    env.ok(&["cp", "./one.txt", "drive:/docs/"]);
    env.ok(&[
        "tar",
        "drive:/docs/one.txt",
        "-o",
        "one.age",
        "-p",
        "pass.txt",
    ]);
    env.ok(&["untar", "one.age", "drive:/again", "-p", "pass.txt"]);
    assert_eq!(env.cat("drive:/again/one.txt"), b"just one");
    env.fails(
        &["tar", "drive:/missing", "-o", "m.age", "-p", "pass.txt"],
        3,
    );
    assert!(!env.path("m.age").exists());
    assert_eq!(leftovers(&env, "m.age."), Vec::<String>::new());
}

/// The files of the temporary directory whose name starts with `prefix`.
fn leftovers(env: &Env, prefix: &str) -> Vec<String> {
    std::fs::read_dir(env.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Regression: the archive was written to the fixed `FILE.efs-part` opened with
/// `File::create`, which emptied (then renamed away) a file of that name and wrote through
/// a link planted there.
#[test]
fn tar_never_touches_an_existing_part_file() {
    let env = Env::new();
    env.write("pass.txt", b"pw");
    env.write("one.txt", b"just one");
    env.ok(&["cp", "./one.txt", "drive:/docs/"]);
    env.write("one.age.efs-part", b"mine");
    let victim = env.write("victim.txt", b"untouched");
    std::os::unix::fs::symlink(&victim, env.path("two.age.efs-part")).unwrap();
    env.ok(&["tar", "drive:/docs", "-o", "one.age", "-p", "pass.txt"]);
    env.ok(&["tar", "drive:/docs", "-o", "two.age", "-p", "pass.txt"]);
    assert_eq!(
        std::fs::read(env.path("one.age.efs-part")).unwrap(),
        b"mine"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    for f in ["one.age", "two.age"] {
        let m = std::fs::symlink_metadata(env.path(f)).unwrap();
        assert!(m.file_type().is_file(), "{f}: {m:?}");
    }
    assert_eq!(leftovers(&env, "one.age."), ["one.age.efs-part"]);
}

/// Regression: the archive's file failing to grow (here a size limit, as a full disk would)
/// closed the pipe the download was writing into, that broken pipe was taken for
/// `efs cat | head`, and `efs tar` exited 0 without a backup.
#[test]
fn an_output_that_cannot_be_written_fails() {
    let env = Env::new();
    env.write("noise.bin", &common::noise(3 * 1024 * 1024));
    env.ok(&["cp", "noise.bin", "drive:/noise.bin"]);
    env.write("pass.txt", b"correct horse battery staple\n");
    // `ulimit -f`: writes past 16 blocks fail with EFBIG (SIGXFSZ ignored, so not a kill).
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "trap '' XFSZ; ulimit -f 16 && exec \"$0\" \"$@\"",
        common::EFS,
        "tar",
        "drive:/noise.bin",
        "-o",
        "b.age",
        "-p",
        "pass.txt",
    ]);
    env.configure(&mut cmd);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let err = common::assert_code(&["tar"], &out, 1);
    assert!(
        err.contains("writing b.age") && err.contains("too large"),
        "{err}"
    );
    assert!(!env.path("b.age").exists());
    assert_eq!(leftovers(&env, "b.age."), Vec::<String>::new());
}

/// Regression: untar's conflicts named the path without its remote (`/back/a.txt exists`).
#[test]
fn untar_conflicts_name_the_remote() {
    let env = Env::new();
    env.write("src/a.txt", b"a");
    env.ok(&["cp", "-r", "src", "drive:/src"]);
    env.write("pass.txt", b"correct horse battery staple\n");
    env.ok(&["tar", "drive:/src", "-o", "b.age", "-p", "pass.txt"]);
    env.ok(&["untar", "b.age", "drive:/back", "-p", "pass.txt"]);
    let out = env.efs(&["untar", "b.age", "drive:/back", "-p", "pass.txt"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("drive:/back/a.txt exists"), "{err}");
}
