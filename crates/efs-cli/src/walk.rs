//! What is at a path, local or remote: one entry (`stat`) or a whole tree (`walk`), in one
//! shape, so that copying and syncing compare like with like.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use efs_client::{Client, Entry, EntryType};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::location;

/// How many directory listings a remote walk runs at the same time.
const LIST_CONCURRENCY: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
}

/// One file or directory.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub kind: Kind,
    pub size: u64,
    /// Modification time (local) or time the content was written (remote).
    pub modified: Option<SystemTime>,
    /// Remote files: the stored Content-Type.
    pub content_type: Option<String>,
    /// Remote files: the version's ETag.
    pub etag: Option<String>,
}

impl Meta {
    pub fn from_entry(e: &Entry) -> Meta {
        Meta {
            kind: if e.kind == EntryType::Dir {
                Kind::Dir
            } else {
                Kind::File
            },
            size: e.size,
            modified: parse_time(&e.modified),
            content_type: e.content_type.clone(),
            etag: e.etag.clone(),
        }
    }

    fn from_fs(m: &std::fs::Metadata) -> Meta {
        Meta {
            kind: if m.is_dir() { Kind::Dir } else { Kind::File },
            size: if m.is_dir() { 0 } else { m.len() },
            modified: m.modified().ok(),
            content_type: None,
            etag: None,
        }
    }

    /// Whole seconds since the epoch (times before it count as 0).
    pub fn modified_secs(&self) -> Option<u64> {
        self.modified.map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
    }
}

/// An RFC 3339 time as the server writes it.
pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = t.unix_timestamp_nanos();
    if nanos < 0 {
        return Some(UNIX_EPOCH);
    }
    let nanos = u64::try_from(nanos).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// A tree below some root: relative path (`a/b.txt`, `/`-separated) → entry. Directories
/// are included; the root itself is not.
pub(crate) type Tree = BTreeMap<String, Meta>;

/// The local entry at `path` (following a symbolic link), or `None` if nothing is there.
pub(crate) fn stat_local(path: &Path) -> Result<Option<Meta>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(Meta::from_fs(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The remote entry at `path`, or `None` if nothing is there. `remote`: the remote's name,
/// which an error names with the path (`drive:/x`), as the user wrote it.
pub(crate) async fn stat_remote(client: &Client, remote: &str, path: &str) -> Result<Option<Meta>> {
    stat_remote_for(client, remote, path, "reading").await
}

/// [`stat_remote`], its error said to have come while `doing` (`creating`) the path.
pub(crate) async fn stat_remote_for(
    client: &Client,
    remote: &str,
    path: &str,
    doing: &str,
) -> Result<Option<Meta>> {
    if path == "/" {
        return Ok(Some(Meta {
            kind: Kind::Dir,
            size: 0,
            modified: None,
            content_type: None,
            etag: None,
        }));
    }
    match client.stat(path).await {
        Ok(e) => Ok(Some(Meta::from_entry(&e))),
        Err(efs_client::Error::NotFound) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{doing} {remote}:{path}")),
    }
}

/// What a walk of a source found.
#[derive(Default)]
pub(crate) struct Walked {
    pub tree: Tree,
    /// One error for each entry that should have been copied but cannot be: a name that is
    /// not UTF-8 (EFS names are), a dangling symbolic link (its target is missing: an
    /// unmounted disk, a moved folder). Each counts as a failed file.
    pub failed: Vec<anyhow::Error>,
    /// The relative paths left out of `tree` (with or without an error in `failed`). A sync
    /// never deletes the destination's entry of such a name: the source has something
    /// there, it was only not copied.
    pub skipped: BTreeSet<String>,
    /// Why each entry skipped by choice (not failed) was: `skipping PATH: WHY`, for the
    /// caller to print as a warning (saying what a sync does about it, when it syncs).
    pub warnings: Vec<String>,
}

/// Whether `name` is a temporary download file (`NAME.<16 hex digits>.efs-part`, see the
/// SDK's `download_file_at`): a download cut short by a crash or a kill leaves one, and it is
/// never a file to copy.
pub(crate) fn is_part_file(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".efs-part") else {
        return false;
    };
    let Some((head, random)) = stem.rsplit_once('.') else {
        return false;
    };
    !head.is_empty()
        && random.len() == 16
        && random
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `s` with what a terminal would not show as it is escaped (`\n`, `\t`, `\u{1b}`) and
/// backslashes doubled: a name with a newline never splits an error line, and is told apart
/// from one with a backslash and an `n`.
pub(crate) fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' || c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A path as errors and warnings show it: see [`escaped`].
pub(crate) fn shown(path: &Path) -> String {
    escaped(&path.display().to_string())
}

/// Why EFS cannot store a file named `name` (a server refuses control characters and
/// backslashes in names), if it cannot.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if name.contains('\\') {
        Some("EFS names cannot hold a backslash")
    } else if name.chars().any(char::is_control) {
        Some("EFS names cannot hold control characters (a newline, a tab, …)")
    } else {
        None
    }
}

/// Every file and directory below the local directory `root` (see [`Walked`]). Symbolic
/// links to files are followed. Skipped, with a warning: links to directories (they can
/// loop), sockets, FIFOs, temporary download files ([`is_part_file`]); skipped and failed
/// (each a failed file, the walk going on with the rest): names that are not UTF-8 or that
/// EFS cannot store (a backslash, a control character), dangling links, and entries that
/// cannot be read (an unreadable directory: what is below it). `sync`: the walk is a sync's
/// source, and the error of a dangling link says that the destination's entry is kept.
pub(crate) async fn walk_local(root: PathBuf, sync: bool) -> Result<Walked> {
    tokio::task::spawn_blocking(move || {
        let mut w = Walked::default();
        let mut stack = vec![(root, String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                // The named directory itself: the source cannot be read at all.
                Err(e) if rel.is_empty() => {
                    return Err(e).with_context(|| format!("reading {}", shown(&dir)));
                }
                Err(e) => {
                    // What is below it is there, only not read: a sync keeps it.
                    w.skipped.insert(rel.clone());
                    w.failed.push(anyhow::Error::from(e).context(format!(
                        "{}: not copied, the directory cannot be read",
                        shown(&dir)
                    )));
                    continue;
                }
            };
            for item in rd {
                let item = match item {
                    Ok(item) => item,
                    Err(e) => {
                        // The rest of this listing is lost: a sync keeps the whole directory.
                        w.skipped.insert(rel.clone());
                        w.failed.push(anyhow::Error::from(e).context(format!(
                            "{}: not copied completely, reading the directory failed",
                            shown(&dir)
                        )));
                        break;
                    }
                };
                let Some(name) = item.file_name().to_str().map(str::to_owned) else {
                    // No remote entry can have this name, so there is none to keep.
                    w.failed.push(crate::exit::fail(
                        crate::exit::ERROR,
                        format!(
                            "{}: not copied, the name is not UTF-8 as EFS names must be (what is not is shown as \u{FFFD})",
                            shown(&item.path())
                        ),
                    ));
                    continue;
                };
                let path = item.path();
                if let Some(why) = name_problem(&name) {
                    // No remote entry can have this name either.
                    w.failed.push(crate::exit::fail(
                        crate::exit::ERROR,
                        format!("{}: not copied, {why}", shown(&path)),
                    ));
                    continue;
                }
                let r = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let unreadable = |e: std::io::Error, w: &mut Walked| {
                    w.skipped.insert(r.clone());
                    w.failed.push(
                        anyhow::Error::from(e)
                            .context(format!("{}: not copied, it cannot be read", shown(&path))),
                    );
                };
                let ft = match item.file_type() {
                    Ok(ft) => ft,
                    Err(e) => {
                        unreadable(e, &mut w);
                        continue;
                    }
                };
                let skip = |why: &str, w: &mut Walked| {
                    w.warnings.push(format!("skipping {}: {why}", shown(&path)));
                    w.skipped.insert(r.clone());
                };
                let meta = if ft.is_symlink() {
                    match std::fs::metadata(&path) {
                        Ok(m) if m.is_file() => m,
                        Ok(m) if m.is_dir() => {
                            skip("a link to a directory", &mut w);
                            continue;
                        }
                        Ok(_) => {
                            skip("a link to something that is not a regular file", &mut w);
                            continue;
                        }
                        Err(e) => {
                            // Where it points is missing (an unmounted disk?): the user's data
                            // is not here to copy, and that is a failure, not a choice.
                            w.skipped.insert(r.clone());
                            w.failed.push(crate::exit::fail(
                                crate::exit::ERROR,
                                format!(
                                    "{}: not copied, a symbolic link whose target cannot be read ({e}){}",
                                    shown(&path),
                                    if sync {
                                        "; a sync keeps what the destination has of that name"
                                    } else {
                                        ""
                                    }
                                ),
                            ));
                            continue;
                        }
                    }
                } else {
                    match item.metadata() {
                        Ok(m) => m,
                        Err(e) => {
                            unreadable(e, &mut w);
                            continue;
                        }
                    }
                };
                // A directory of such a name is one a sync moved aside to replace it (left by
                // an interruption): not the user's data to copy either.
                if is_part_file(&name) {
                    skip("a temporary file or directory of an unfinished copy", &mut w);
                    continue;
                }
                if meta.is_dir() {
                    stack.push((path.clone(), r.clone()));
                } else if !meta.is_file() {
                    skip("not a regular file", &mut w);
                    continue;
                }
                w.tree.insert(r, Meta::from_fs(&meta));
            }
        }
        Ok(w)
    })
    .await
    .context("walking a local directory")?
}

/// Every file and directory below the remote directory `root`, listing up to
/// [`LIST_CONCURRENCY`] directories at a time.
/// With `skip_parts` (`efs cp`), names of an unfinished copy's temporary files and directories
/// are left out; `efs tar` and `efs ls -R` show everything. `remote`: the remote's name, for
/// errors and warnings (`drive:/dir`).
pub(crate) async fn walk_remote(
    client: &Client,
    remote: &str,
    root: &str,
    skip_parts: bool,
) -> Result<Tree> {
    let mut tree = Tree::new();
    let mut waiting = vec![String::new()];
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < LIST_CONCURRENCY
            && let Some(rel) = waiting.pop()
        {
            let dir = if rel.is_empty() {
                root.to_owned()
            } else {
                location::join(root, &rel)
            };
            let client = client.clone();
            running.push(async move {
                let entries = client
                    .list(&dir)
                    .await
                    .with_context(|| format!("listing {remote}:{dir}"))?;
                anyhow::Ok((rel, entries))
            });
        }
        let Some(done) = running.next().await else {
            break;
        };
        let (rel, entries) = done?;
        for e in entries {
            // What an interrupted `efs cp` left on the server (a staged upload, a directory
            // moved aside to be replaced): never copied, nor taken for the user's data.
            if skip_parts && is_part_file(&e.name) {
                eprintln!(
                    "efs: warning: skipping {remote}:{}/{}: a temporary file or directory of an unfinished copy",
                    if rel.is_empty() {
                        root.trim_end_matches('/').to_owned()
                    } else {
                        location::join(root, &rel)
                    },
                    e.name
                );
                continue;
            }
            let r = if rel.is_empty() {
                e.name.clone()
            } else {
                format!("{rel}/{}", e.name)
            };
            let meta = Meta::from_entry(&e);
            if meta.kind == Kind::Dir {
                waiting.push(r.clone());
            }
            tree.insert(r, meta);
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_times() {
        let t = parse_time("2026-11-27T10:00:01.250Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_795_773_601_250)
        );
        assert!(parse_time("yesterday").is_none());
        let m = Meta {
            kind: Kind::File,
            size: 1,
            modified: Some(t),
            content_type: None,
            etag: None,
        };
        assert_eq!(m.modified_secs(), Some(1_795_773_601));
    }

    #[tokio::test]
    async fn walks_a_local_tree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::create_dir_all(d.path().join("empty")).unwrap();
        std::fs::write(d.path().join("a/b/x.txt"), b"xyz").unwrap();
        std::fs::write(d.path().join("top"), b"").unwrap();
        std::os::unix::fs::symlink(d.path().join("a"), d.path().join("loop")).unwrap();
        std::os::unix::fs::symlink(d.path().join("top"), d.path().join("link")).unwrap();
        let w = walk_local(d.path().to_path_buf(), false).await.unwrap();
        let t = w.tree;
        assert!(w.failed.is_empty());
        assert_eq!(w.skipped.iter().collect::<Vec<_>>(), ["loop"]);
        let names: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(names, ["a", "a/b", "a/b/x.txt", "empty", "link", "top"]);
        assert_eq!(t["a/b/x.txt"].size, 3);
        assert_eq!(t["a"].kind, Kind::Dir);
    }

    #[tokio::test]
    async fn a_name_that_is_not_utf8_is_an_error_not_a_silent_skip() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("fine.txt"), b"x").unwrap();
        let bad = std::ffi::OsStr::from_bytes(b"bad-\xff.txt");
        std::fs::write(d.path().join(bad), b"y").unwrap();
        let w = walk_local(d.path().to_path_buf(), false).await.unwrap();
        let (t, unnamed) = (w.tree, w.failed);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["fine.txt"]);
        assert_eq!(unnamed.len(), 1);
        let msg = format!("{:#}", unnamed[0]);
        assert!(
            msg.contains("bad-\u{FFFD}.txt") && msg.contains("not UTF-8"),
            "{msg}"
        );
        assert_eq!(crate::exit::code_of(&unnamed[0]), crate::exit::ERROR);
    }

    /// Regression: a dangling link (a folder on an unmounted disk) was skipped with only a
    /// warning, and `cp --sync` then deleted the server's copy of it.
    #[tokio::test]
    async fn a_dangling_link_is_a_failed_and_skipped_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("fine.txt"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path().join("missing"), d.path().join("imaging")).unwrap();
        let w = walk_local(d.path().to_path_buf(), false).await.unwrap();
        assert_eq!(w.tree.keys().collect::<Vec<_>>(), ["fine.txt"]);
        assert_eq!(w.skipped.iter().collect::<Vec<_>>(), ["imaging"]);
        assert_eq!(w.failed.len(), 1);
        let msg = format!("{:#}", w.failed[0]);
        assert!(
            msg.contains("imaging") && msg.contains("symbolic link"),
            "{msg}"
        );
    }

    /// Regression: a download cut short left `NAME.<random>.efs-part`, and the next upload
    /// sync stored it as a record.
    #[tokio::test]
    async fn temporary_download_files_are_not_walked() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("scan.pdf"), b"x").unwrap();
        std::fs::write(d.path().join("scan.pdf.0123456789abcdef.efs-part"), b"x").unwrap();
        std::fs::write(d.path().join("notes.efs-part"), b"x").unwrap();
        // A directory a sync moved aside to replace it, left by an interruption.
        std::fs::create_dir_all(d.path().join("x.fedcba9876543210.efs-part/old")).unwrap();
        std::fs::write(d.path().join("x.fedcba9876543210.efs-part/old/f"), b"x").unwrap();
        let w = walk_local(d.path().to_path_buf(), false).await.unwrap();
        assert_eq!(
            w.tree.keys().collect::<Vec<_>>(),
            ["notes.efs-part", "scan.pdf"]
        );
        assert_eq!(
            w.skipped.iter().collect::<Vec<_>>(),
            [
                "scan.pdf.0123456789abcdef.efs-part",
                "x.fedcba9876543210.efs-part"
            ]
        );
        assert!(w.failed.is_empty());
    }

    #[test]
    fn part_file_names() {
        assert!(is_part_file("a.pdf.0123456789abcdef.efs-part"));
        assert!(is_part_file("a.ffffffffffffffff.efs-part"));
        for not in [
            ".0123456789abcdef.efs-part",
            "a.0123456789ABCDEF.efs-part",
            "a.0123456789abcde.efs-part",
            "a.efs-part",
            "a.0123456789abcdef.efs-partx",
        ] {
            assert!(!is_part_file(not), "{not}");
        }
    }
}
