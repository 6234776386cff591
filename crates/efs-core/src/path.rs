//! Path normalisation: the one place where a caller's path becomes an [`EfsPath`].
//!
//! A path is checked once, at the edge, and everything inside EFS works on the
//! validated segments. The rules (DESIGN.md "Names and the tree"): UTF-8, `/`-separated,
//! no empty, `.` or `..` segment, no control character, NUL or backslash, a segment of at
//! most 255 bytes, a path of at most 4096 bytes, percent-decoded exactly once, and the
//! first segment may not be the reserved `_efs`.

use std::fmt;

/// Longest segment, in bytes (after decoding).
pub const MAX_SEGMENT: usize = 255;
/// Longest path, in bytes (after decoding, with its `/` separators).
pub const MAX_PATH: usize = 4096;
/// The reserved first segment of control routes.
pub const RESERVED: &str = "_efs";

/// Why a path was refused. The message never repeats the path itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("a path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("bad percent-encoding")]
    BadEscape,
    /// The decoded bytes are not UTF-8.
    #[error("the path is not valid UTF-8")]
    NotUtf8,
    /// `//` somewhere in the path.
    #[error("empty path segment ('//')")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("'.' and '..' segments are not allowed")]
    DotSegment,
    /// A control character (including NUL and DEL).
    #[error("control characters are not allowed in paths")]
    ControlChar,
    /// An encoded slash (`%2F`) inside a segment.
    #[error("an encoded '/' (%2F) is not allowed in a path segment")]
    EncodedSlash,
    /// A backslash.
    #[error("backslashes are not allowed in paths")]
    Backslash,
    /// A segment longer than [`MAX_SEGMENT`] bytes.
    #[error("a path segment is longer than 255 bytes")]
    SegmentTooLong,
    /// A path longer than [`MAX_PATH`] bytes.
    #[error("the path is longer than 4096 bytes")]
    PathTooLong,
    /// The first segment is `_efs`.
    #[error("paths under /_efs/ are reserved")]
    Reserved,
    /// The root (or a directory path) where a file path is needed.
    #[error("a file path is needed here, not a directory")]
    NotAFilePath,
    /// A new name with an invisible or reserved character ([`check_new_name`]).
    #[error(
        "a new name may not hold invisible format characters (bidirectional controls, zero-width characters, the BOM, soft hyphens), line or paragraph separators, or noncharacters"
    )]
    InvisibleChar,
}

/// A validated, normalised path: zero segments is the root.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct EfsPath {
    segments: Vec<String>,
}

impl EfsPath {
    /// The root directory.
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses a percent-encoded request path (as it appears in a URI, without query).
    /// A trailing `/` is allowed and ignored here; the caller decides whether it means
    /// "directory". Decoding happens exactly once: `%252e` stays the literal `%2e`.
    pub fn parse_uri_path(raw: &str) -> Result<Self, PathError> {
        // Split before decoding, so that an encoded slash (`%2F`) cannot become a separator:
        // it decodes inside its segment, where a '/' is refused.
        let mut text = String::with_capacity(raw.len());
        let (first, rest) = raw.split_at(raw.find('/').map(|i| i + 1).unwrap_or(0));
        if first != "/" {
            return Err(PathError::NotAbsolute);
        }
        text.push('/');
        let mut segs = rest.split('/').peekable();
        while let Some(seg) = segs.next() {
            if seg.contains('%') {
                let decoded = percent_decode(seg.as_bytes())?;
                let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
                if decoded.contains('/') {
                    return Err(PathError::EncodedSlash);
                }
                text.push_str(&decoded);
            } else {
                // Nothing to decode (the usual case): no copy of the segment first.
                text.push_str(seg);
            }
            if segs.peek().is_some() {
                text.push('/');
            }
        }
        Self::parse(&text)
    }

    /// Parses an already decoded path (e.g. from a JSON body).
    pub fn parse(text: &str) -> Result<Self, PathError> {
        if !text.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        if text.len() > MAX_PATH {
            return Err(PathError::PathTooLong);
        }
        let body = &text[1..];
        if body == "/" {
            // `//`: an empty segment, not the root with a trailing slash.
            return Err(PathError::EmptySegment);
        }
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut segments = Vec::new();
        if !body.is_empty() {
            for seg in body.split('/') {
                check_segment(seg)?;
                segments.push(seg.to_owned());
            }
        }
        if segments.first().map(String::as_str) == Some(RESERVED) {
            return Err(PathError::Reserved);
        }
        Ok(Self { segments })
    }

    /// The segments, root first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The last segment, or `None` for the root.
    pub fn name(&self) -> Option<&str> {
        self.segments.last().map(String::as_str)
    }

    /// The parent directory, or `None` for the root.
    pub fn parent(&self) -> Option<EfsPath> {
        if self.segments.is_empty() {
            return None;
        }
        Some(Self {
            segments: self.segments[..self.segments.len() - 1].to_vec(),
        })
    }

    /// A child of this path. The name must be a valid segment.
    pub fn join(&self, name: &str) -> Result<EfsPath, PathError> {
        check_segment(name)?;
        if self.is_root() && name == RESERVED {
            return Err(PathError::Reserved);
        }
        let mut segments = self.segments.clone();
        segments.push(name.to_owned());
        let p = Self { segments };
        if p.to_string().len() > MAX_PATH {
            return Err(PathError::PathTooLong);
        }
        Ok(p)
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &EfsPath) -> bool {
        self.segments.len() >= other.segments.len()
            && self.segments[..other.segments.len()] == other.segments[..]
    }
}

impl fmt::Display for EfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            f.write_str("/")?;
            f.write_str(s)?;
        }
        Ok(())
    }
}

/// Paths are personal data: `Debug` does not print them.
impl fmt::Debug for EfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EfsPath(<{} segments>)", self.segments.len())
    }
}

/// Checks one segment (a file or directory name).
pub fn check_segment(seg: &str) -> Result<(), PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return Err(PathError::DotSegment);
    }
    if seg.len() > MAX_SEGMENT {
        return Err(PathError::SegmentTooLong);
    }
    for c in seg.chars() {
        if c.is_control() {
            return Err(PathError::ControlChar);
        }
        if c == '\\' {
            return Err(PathError::Backslash);
        }
        if c == '/' {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(())
}

/// Checks a name given to an entry created now (a new file or directory, a move's new
/// name), beyond [`check_segment`]: no character of general category Cf (format: the
/// bidirectional controls that make `\u{202E}fdp.exe` show as `exe.pdf`, zero-width spaces
/// and joiners, the BOM, the soft hyphen), Zl or Zp (line and paragraph separators), and no
/// noncharacter. Such names look like others, or like nothing, in a listing, an audit
/// entry or a client's file manager. Existing names keep working: reads, listings and
/// deletes check only [`check_segment`].
pub fn check_new_name(seg: &str) -> Result<(), PathError> {
    use icu_properties::props::{GeneralCategory, NoncharacterCodePoint};
    use icu_properties::{CodePointMapData, CodePointSetData};
    if seg.is_ascii() {
        return Ok(());
    }
    let category = CodePointMapData::<GeneralCategory>::new();
    let nonchar = CodePointSetData::new::<NoncharacterCodePoint>();
    let refused = |c: char| {
        matches!(
            category.get(c),
            GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        ) || nonchar.contains(c)
    };
    if seg.chars().any(refused) {
        return Err(PathError::InvisibleChar);
    }
    Ok(())
}

fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).and_then(|b| (*b as char).to_digit(16));
            let lo = raw.get(i + 2).and_then(|b| (*b as char).to_digit(16));
            match (hi, lo) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(PathError::BadEscape),
            }
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_path_parses() {
        let p = EfsPath::parse_uri_path("/patients/173/prescription.pdf").unwrap();
        assert_eq!(p.segments(), ["patients", "173", "prescription.pdf"]);
        assert_eq!(p.to_string(), "/patients/173/prescription.pdf");
        assert_eq!(p.parent().unwrap().to_string(), "/patients/173");
    }

    #[test]
    fn root_and_trailing_slash() {
        assert!(EfsPath::parse_uri_path("/").unwrap().is_root());
        assert_eq!(EfsPath::parse_uri_path("/a/").unwrap().segments(), ["a"]);
    }

    #[test]
    fn percent_decoded_once() {
        let p = EfsPath::parse_uri_path("/a%20b/%252e").unwrap();
        assert_eq!(p.segments(), ["a b", "%2e"]);
        let p = EfsPath::parse_uri_path("/%C3%A9t%C3%A9").unwrap();
        assert_eq!(p.segments(), ["été"]);
    }

    #[test]
    fn bad_paths_refused() {
        use PathError::*;
        let cases: &[(&str, PathError)] = &[
            ("relative", NotAbsolute),
            ("/a/../b", DotSegment),
            ("/a/%2e%2e/b", DotSegment),
            ("/a/%2E", DotSegment),
            ("/./a", DotSegment),
            ("/a//b", EmptySegment),
            ("//a", EmptySegment),
            ("//", EmptySegment),
            ("/a%2F/b", EncodedSlash),
            ("/a%2fb", EncodedSlash),
            ("/a\\b", Backslash),
            ("/a%5cb", Backslash),
            ("/a%00b", ControlChar),
            ("/a%0Ab", ControlChar),
            ("/a%7Fb", ControlChar),
            ("/a%C2%85b", ControlChar),
            ("/%ff", NotUtf8),
            ("/%zz", BadEscape),
            ("/abc%4", BadEscape),
            ("/_efs/x", Reserved),
            ("/_efs", Reserved),
        ];
        for (raw, want) in cases {
            assert_eq!(EfsPath::parse_uri_path(raw).unwrap_err(), *want, "{raw}");
        }
    }

    /// Found by the `path` fuzz target: `join` at the root took `_efs`, making a path that
    /// `parse` refuses.
    #[test]
    fn join_refuses_the_reserved_name_at_the_root() {
        assert_eq!(EfsPath::root().join(RESERVED), Err(PathError::Reserved));
        let below = EfsPath::parse("/a").unwrap().join(RESERVED).unwrap();
        assert_eq!(below.to_string(), "/a/_efs");
    }

    #[test]
    fn reserved_only_at_top() {
        assert!(EfsPath::parse_uri_path("/a/_efs").is_ok());
        assert!(EfsPath::parse_uri_path("/_efsx").is_ok());
    }

    #[test]
    fn lengths() {
        let ok = format!("/{}", "a".repeat(255));
        assert!(EfsPath::parse(&ok).is_ok());
        let long = format!("/{}", "a".repeat(256));
        assert_eq!(
            EfsPath::parse(&long).unwrap_err(),
            PathError::SegmentTooLong
        );
        let seg = "b".repeat(200);
        let path: String = (0..21).map(|_| format!("/{seg}")).collect();
        assert!(path.len() > MAX_PATH);
        assert_eq!(EfsPath::parse(&path).unwrap_err(), PathError::PathTooLong);
    }

    #[test]
    fn debug_hides_names() {
        let p = EfsPath::parse("/patients/173").unwrap();
        assert!(!format!("{p:?}").contains("patients"));
    }

    proptest! {
        #[test]
        fn display_round_trips(segs in proptest::collection::vec("[a-zA-Z0-9 ._é-]{1,20}", 0..6)) {
            let segs: Vec<String> = segs.into_iter().filter(|s| s != "." && s != ".." && s != RESERVED).collect();
            let text = format!("/{}", segs.join("/"));
            let p = EfsPath::parse(&text).unwrap();
            prop_assert_eq!(EfsPath::parse(&p.to_string()).unwrap(), p);
        }
    }
}
