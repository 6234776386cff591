//! Turning the plain paths callers give ("/patients/173/x.pdf") into URL paths.
//!
//! Each `/`-separated segment is percent-encoded whole: everything but the unreserved
//! characters `A-Z a-z 0-9 - . _ ~`, so `%`, `#`, `?`, spaces and non-ASCII text can never
//! change what the server sees. Validation (empty, `.`, `..` segments) is the server's job:
//! it answers `400 invalid_path`, which the SDK surfaces as [`crate::Error::InvalidPath`].

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::{Error, Result};

/// Everything but RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one segment or query value.
pub(crate) fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The URL path of `path`: a leading `/` is added when missing; a trailing `/` is kept.
///
/// `.` and `..` segments are refused here: URL normalisation would otherwise resolve them
/// before the server sees them, and `delete("/a/../b")` would delete `/b`.
///
/// A first segment `_efs` is refused: it names the server's control routes, not a file, and
/// `get_bytes("/_efs/health")` returned the health answer as a file's content.
pub(crate) fn encode_path(path: &str) -> Result<String> {
    let rel = path.strip_prefix('/').unwrap_or(path);
    if rel.split('/').next() == Some(efs_proto::RESERVED_PREFIX) {
        return Err(Error::InvalidPath(format!(
            "{path:?}: the first segment {:?} is reserved for the server's control routes",
            efs_proto::RESERVED_PREFIX
        )));
    }
    let mut out = String::with_capacity(rel.len() + 1);
    for segment in rel.split('/') {
        if segment == "." || segment == ".." {
            return Err(Error::InvalidPath(format!(
                "'{segment}' segments are not allowed in EFS paths"
            )));
        }
        out.push('/');
        out.push_str(&encode_component(segment));
    }
    Ok(out)
}

/// The URL path of the file `path`: as [`encode_path`], and a path ending in `/` (or the
/// root) is refused, since it names a directory: a read of `/dir/` returned the listing's
/// JSON as the file's content.
pub(crate) fn encode_file(path: &str) -> Result<String> {
    if path.is_empty() || path.ends_with('/') {
        return Err(Error::InvalidPath(format!(
            "{path:?} names a directory (it ends in '/'), not a file"
        )));
    }
    encode_path(path)
}

/// The URL path of the directory `path` (always ending in `/`).
pub(crate) fn encode_dir(path: &str) -> Result<String> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        Ok("/".to_owned())
    } else {
        let mut p = encode_path(trimmed)?;
        p.push('/');
        Ok(p)
    }
}

/// Why `name`, an entry name from a listing, cannot be one segment of a path, if it cannot.
///
/// A server never lists such names; a hostile or broken one could, and a caller that joins
/// the name to a local directory would then write outside it (`../../.bashrc`, `/etc/x`,
/// `a/b`), or list the same directory forever (`.`).
pub(crate) fn entry_name_problem(name: &str) -> Option<&'static str> {
    match name {
        "" => Some("it is empty"),
        "." | ".." => Some("it is '.' or '..'"),
        _ if name.contains('/') => Some("it contains '/'"),
        _ if name.contains('\\') => Some("it contains '\\'"),
        _ if name.contains('\0') => Some("it contains a NUL character"),
        _ => None,
    }
}

/// The last segment of a plain path ("" for the root).
pub(crate) fn file_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// The parent directory of a plain path ("/" for top-level entries and the root).
pub(crate) fn parent(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &trimmed[..i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_each_segment() {
        assert_eq!(encode_path("/a/b.pdf").unwrap(), "/a/b.pdf");
        assert_eq!(encode_path("a/b.pdf").unwrap(), "/a/b.pdf");
        assert_eq!(
            encode_path("/my docs/x y.txt").unwrap(),
            "/my%20docs/x%20y.txt"
        );
        assert_eq!(encode_path("/50%/a#b?c").unwrap(), "/50%25/a%23b%3Fc");
        assert_eq!(
            encode_path("/été/日本").unwrap(),
            "/%C3%A9t%C3%A9/%E6%97%A5%E6%9C%AC"
        );
        assert_eq!(encode_path("/a-b_c.d~e").unwrap(), "/a-b_c.d~e");
        assert_eq!(
            encode_path("/plus+amp&eq=semi;").unwrap(),
            "/plus%2Bamp%26eq%3Dsemi%3B"
        );
        assert_eq!(encode_path("/back\\slash").unwrap(), "/back%5Cslash");
        // '/' separates and is never encoded; a trailing one is kept.
        assert_eq!(encode_path("/dir/").unwrap(), "/dir/");
        assert_eq!(encode_path("/").unwrap(), "/");
        assert_eq!(encode_path("").unwrap(), "/");
    }

    #[test]
    fn dot_segments_are_refused() {
        for p in ["/a/../b", "/..", "/./a", "a/.", "/a/../"] {
            assert!(matches!(encode_path(p), Err(Error::InvalidPath(_))), "{p}");
        }
        assert!(matches!(encode_dir("/a/.."), Err(Error::InvalidPath(_))));
        // Dots inside a name are fine.
        assert_eq!(
            encode_path("/.hidden/a..b/...").unwrap(),
            "/.hidden/a..b/..."
        );
    }

    #[test]
    fn reserved_first_segments_and_directories_are_not_files() {
        for p in ["/_efs/health", "_efs/openapi.json", "/_efs", "/_efs/"] {
            assert!(matches!(encode_path(p), Err(Error::InvalidPath(_))), "{p}");
            assert!(matches!(encode_dir(p), Err(Error::InvalidPath(_))), "{p}");
        }
        assert_eq!(encode_path("/a/_efs").unwrap(), "/a/_efs");
        assert_eq!(encode_path("/_efsx").unwrap(), "/_efsx");
        for p in ["/patients/", "/", ""] {
            assert!(matches!(encode_file(p), Err(Error::InvalidPath(_))), "{p}");
        }
        assert_eq!(encode_file("/a/b.pdf").unwrap(), "/a/b.pdf");
    }

    #[test]
    fn directories_end_in_a_slash() {
        assert_eq!(encode_dir("/").unwrap(), "/");
        assert_eq!(encode_dir("").unwrap(), "/");
        assert_eq!(encode_dir("/a b").unwrap(), "/a%20b/");
        assert_eq!(encode_dir("/a/b/").unwrap(), "/a/b/");
    }

    #[test]
    fn listed_names_must_be_one_segment() {
        for bad in [
            "",
            ".",
            "..",
            "../../.bashrc",
            "/etc/passwd",
            "a/b",
            "..\\x",
            "a\0b",
        ] {
            assert!(entry_name_problem(bad).is_some(), "{bad:?}");
        }
        for good in ["a", ".hidden", "a..b", "...", "été 日本.pdf", "a b"] {
            assert_eq!(entry_name_problem(good), None, "{good:?}");
        }
    }

    #[test]
    fn names_and_parents() {
        assert_eq!(file_name("/a/b.pdf"), "b.pdf");
        assert_eq!(file_name("/a/dir/"), "dir");
        assert_eq!(file_name("/"), "");
        assert_eq!(parent("/a/b.pdf"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("a"), "/");
        assert_eq!(parent("/a/b/"), "/a");
    }
}
