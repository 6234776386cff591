//! `NAME:/path` names a path on a remote; anything else is a local path (as with scp: write
//! `./a:b` for a local file whose name has a colon). Remote paths are normalised here:
//! `/`-separated, absolute, no empty segment. A `.` or `..` segment in a remote path argument
//! is refused, not resolved: the SDK refuses `..` so that a path never means another one, and
//! `efs rm -r drive:/Records/2019/..` must not remove `/Records`.

use std::path::{Component, Path, PathBuf};

use crate::config::valid_remote_name;

/// A command-line path argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    Local(PathBuf),
    Remote(RemotePath),
}

/// A path on a remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RemotePath {
    /// The remote's name in the configuration.
    pub remote: String,
    /// Normalised: `/` or `/a/b`, never a trailing slash.
    pub path: String,
    /// The argument ended with `/` (or named the root): "into this directory".
    pub dir_hint: bool,
}

impl RemotePath {
    /// `NAME:/path` as the user would write it.
    pub fn display(&self) -> String {
        format!("{}:{}", self.remote, self.path)
    }

    /// The refusal of `NAME:/file.txt/` when `/file.txt` is a file: a path ending in `/`
    /// names a directory (docs/api.md), so it is not taken as the file, as `efs rm` (the
    /// server's 409) and `ls file.txt/` (ENOTDIR) refuse it. Exit 5, as every other file
    /// where a directory is named (`mv`, `mkdir`, `cp` into a file).
    pub fn file_named_as_directory(&self) -> anyhow::Error {
        crate::exit::fail_hint(
            crate::exit::CONFLICT,
            format!(
                "{}/ names a directory (it ends in '/'), but {} is a file",
                self.display(),
                self.display()
            ),
            format!(
                "write {} (without the '/') to name the file",
                self.display()
            ),
        )
    }
}

impl Location {
    /// The location `arg` names; a remote path with a `.` or `..` segment is a usage error.
    pub fn parse(arg: &str) -> anyhow::Result<Location> {
        if let Some((name, path)) = arg.split_once(':')
            && valid_remote_name(name)
        {
            if path.split('/').any(|seg| seg == "." || seg == "..") {
                return Err(crate::exit::fail_hint(
                    crate::exit::USAGE,
                    format!("'{arg}': a remote path cannot have '.' or '..' segments"),
                    "write the path the segments would lead to, from the root (NAME:/a/b); efs does not resolve them, so a path never means another one",
                ));
            }
            return Ok(Location::Remote(RemotePath {
                remote: name.to_owned(),
                path: normalize(path),
                dir_hint: path.is_empty() || path.ends_with('/'),
            }));
        }
        Ok(Location::Local(PathBuf::from(arg)))
    }
}

/// Splits `NAME:/path` into a remote path, or `None` for a local path (see
/// [`Location::parse`] for the error).
pub(crate) fn parse_remote(arg: &str) -> anyhow::Result<Option<RemotePath>> {
    Ok(match Location::parse(arg)? {
        Location::Remote(r) => Some(r),
        Location::Local(_) => None,
    })
}

/// Absolute, `/`-separated, without empty, `.` or `..` segments (`..` at the root stays at
/// the root).
pub(crate) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `rel` resolved against the directory `base` (an absolute `rel` replaces it).
pub(crate) fn resolve(base: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        normalize(rel)
    } else {
        normalize(&format!("{base}/{rel}"))
    }
}

/// `dir` + `/` + `name` for a normalised `dir`.
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        normalize(&format!("/{name}"))
    } else {
        normalize(&format!("{dir}/{name}"))
    }
}

/// Whether moving or copying `from` to `to` (both normalised) would put a directory inside
/// itself: `to` is below `from` (everything is below the root).
pub(crate) fn is_below(to: &str, from: &str) -> bool {
    to.starts_with(&format!("{}/", from.trim_end_matches('/')))
}

/// The last segment of a normalised path (empty for the root).
pub(crate) fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// The parent directory of a normalised path (the root's parent is the root).
pub(crate) fn parent(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => path[..i].to_owned(),
    }
}

/// `base` joined with `rel` (`/`-separated, from a listing), when every segment of `rel` is
/// a plain name: never a path that leaves `base` (`..`, an absolute path, an empty or `.`
/// segment, NUL). The SDK refuses such names in listings already; this is checked again
/// right before a local path is made from them.
pub(crate) fn local_child(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = base.to_path_buf();
    for seg in rel.split('/') {
        let mut comps = Path::new(seg).components();
        let plain = !seg.contains('\0')
            && !seg.contains('\\')
            && matches!(comps.next(), Some(Component::Normal(n)) if n == seg)
            && comps.next().is_none();
        if !plain {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_remote_and_local() {
        assert_eq!(
            Location::parse("drive:/Documents/").unwrap(),
            Location::Remote(RemotePath {
                remote: "drive".into(),
                path: "/Documents".into(),
                dir_hint: true
            })
        );
        assert_eq!(
            Location::parse("drive:").unwrap(),
            Location::Remote(RemotePath {
                remote: "drive".into(),
                path: "/".into(),
                dir_hint: true
            })
        );
        assert_eq!(
            Location::parse("drive:a/b.txt").unwrap(),
            Location::Remote(RemotePath {
                remote: "drive".into(),
                path: "/a/b.txt".into(),
                dir_hint: false
            })
        );
        assert_eq!(
            Location::parse("./a:b").unwrap(),
            Location::Local(PathBuf::from("./a:b"))
        );
        assert_eq!(
            Location::parse("/tmp/x").unwrap(),
            Location::Local(PathBuf::from("/tmp/x"))
        );
        assert_eq!(
            Location::parse("Important-Document.pdf").unwrap(),
            Location::Local(PathBuf::from("Important-Document.pdf"))
        );
    }

    /// Regression: `efs rm -r drive:/Records/2019/..` removed `/Records`: the command line
    /// resolved what the SDK refuses.
    #[test]
    fn dot_segments_in_remote_paths_are_refused() {
        for bad in [
            "drive:/Records/2019/..",
            "drive:..",
            "drive:/a/./b",
            "drive:.",
            "drive:/../etc",
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE, "{bad}");
            assert!(format!("{e}").contains("'..'"), "{e}");
        }
        // Names with dots are names.
        for fine in ["drive:/a..b", "drive:/.hidden/...", "./x/../y"] {
            assert!(Location::parse(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn normalises_paths() {
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("//a//b/"), "/a/b");
        assert_eq!(normalize("/a/./b/../c"), "/a/c");
        assert_eq!(normalize("/../.."), "/");
        assert_eq!(resolve("/a/b", "../c"), "/a/c");
        assert_eq!(resolve("/a/b", "/x"), "/x");
        assert_eq!(resolve("/", "x/y/"), "/x/y");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b/c"), "/a/b/c");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(basename("/"), "");
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
    }

    #[test]
    fn local_children_stay_below_their_base() {
        let base = Path::new("/tmp/dl");
        assert_eq!(
            local_child(base, "a/b.txt"),
            Some(PathBuf::from("/tmp/dl/a/b.txt"))
        );
        assert_eq!(
            local_child(base, ".hidden/a..b"),
            Some(PathBuf::from("/tmp/dl/.hidden/a..b"))
        );
        for bad in [
            "",
            ".",
            "..",
            "../../.bashrc",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a/",
            "nul\0",
            "..\\x",
        ] {
            assert_eq!(local_child(base, bad), None, "{bad:?}");
        }
    }
}
