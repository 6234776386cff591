//! Parsers of the request headers that steer a file read or write: `Range`, `If-Range` and the entity-tag
//! lists of `If-Match` / `If-None-Match`.
//!
//! They take header text from anyone on the network, so they live apart from the routes, with
//! no state, where the fuzz targets (`fuzz/fuzz_targets/http_headers.rs`) and the unit tests
//! call them directly.

use axum::http::{HeaderMap, header};

/// A header line that is not visible ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotText;

/// A header that may come once, given more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// Every line of the list header `name` as one value, joined by ", " (RFC 9110 §5.3: the
/// lines of a list field are one list, so `If-None-Match: "a"` and `If-None-Match: *` on two
/// lines are `"a", *`; reading only the first line dropped the `*`). `None` when absent,
/// `Some(Err(NotText))` when a line is not visible ASCII.
pub fn joined(h: &HeaderMap, name: &header::HeaderName) -> Option<Result<String, NotText>> {
    let mut lines = h.get_all(name).iter();
    let first = lines.next()?;
    let mut out = match first.to_str() {
        Ok(v) => v.to_owned(),
        Err(_) => return Some(Err(NotText)),
    };
    for v in lines {
        match v.to_str() {
            Ok(v) => {
                out.push_str(", ");
                out.push_str(v);
            }
            Err(_) => return Some(Err(NotText)),
        }
    }
    Some(Ok(out))
}

/// The one line of header `name`: `Ok(None)` when absent, `Err(Repeated)` when it comes more than
/// once (a `Destination` or `Overwrite` given twice names two requests; which one a proxy
/// before this server acted on is unknown).
pub fn single<'h>(
    h: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h axum::http::HeaderValue>, Repeated> {
    let mut lines = h.get_all(name).iter();
    let first = lines.next();
    if lines.next().is_some() {
        return Err(Repeated);
    }
    Ok(first)
}

/// A `Range` that lies outside the file: answered with 416.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// A `Range` header against a file of `len` bytes: `Ok(None)` = the whole file,
/// `Ok(Some((start, end)))` = bytes `start..end` (end exclusive, `start < end <= len`),
/// `Err(Unsatisfiable)` = 416. Malformed or multi-range headers are ignored (RFC 9110).
pub fn parse_range(h: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    match h.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) => parse_range_value(v, len),
        None => Ok(None),
    }
}

/// [`parse_range`] on the header's text.
pub fn parse_range_value(v: &str, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    // The range unit is case-insensitive (RFC 9110 §14.1).
    let v = ows(v);
    let Some(spec) = v
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &v[6..])
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = ows(spec).split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (ows(a), ows(b));
    if a.is_empty() {
        let Some(n) = parse_digits(b) else {
            return Ok(None);
        };
        if n == 0 || len == 0 {
            return Err(Unsatisfiable);
        }
        let n = n.min(len);
        return Ok(Some((len - n, len)));
    }
    let Some(start) = parse_digits(a) else {
        return Ok(None);
    };
    let end = if b.is_empty() {
        len
    } else {
        let Some(e) = parse_digits(b) else {
            return Ok(None);
        };
        if e < start {
            return Ok(None);
        }
        e.saturating_add(1).min(len)
    };
    if start >= len {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

/// Strips optional whitespace (RFC 9110 `OWS`: spaces and tabs). `str::trim` would also strip
/// vertical tabs, form feeds and Unicode spaces, which are not whitespace in HTTP.
fn ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// RFC 9110 positions are `1*DIGIT`. `u64::from_str` alone also takes a leading `+`. A
/// number past `u64::MAX` is as far past the end of any file as `u64::MAX` (it was taken for
/// a malformed header, and the whole file served instead of a 416).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

/// How an entity tag in a condition is compared with the current one (RFC 9110 §8.8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtagCompare {
    /// `If-Match`: a weak tag (`W/"…"`) matches nothing.
    Strong,
    /// `If-None-Match`: `W/"x"` matches as `"x"` (a client may have weakened the tag).
    Weak,
}

/// Parses an entity-tag list (`"a", "b"` or `*`). Returns None for `*`.
///
/// EFS entity tags are 16 bytes in hex; anything else in the list can match no version of any
/// file, so it is left out (and a list of only such tags matches nothing).
pub fn parse_etags(v: &str, compare: EtagCompare) -> Option<Vec<[u8; 16]>> {
    if v.trim() == "*" {
        return None;
    }
    Some(
        v.split(',')
            .filter_map(|t| {
                let t = t.trim();
                let t = match (compare, t.strip_prefix("W/")) {
                    (EtagCompare::Weak, Some(weak)) => weak,
                    (EtagCompare::Strong, Some(_)) => return None,
                    (_, None) => t,
                };
                let t = t.strip_prefix('"')?.strip_suffix('"')?;
                // Entity tags compare octet by octet (RFC 9110 §8.8.3.2): ours are lower
                // case, so an upper-case one is another tag, matching no version.
                if t.bytes().any(|b| b.is_ascii_uppercase()) {
                    return None;
                }
                hex::decode(t)
                    .ok()
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
            })
            .collect(),
    )
}

/// `If-Range` (RFC 9110 §13.1.5): may a `Range` be honoured for the version whose entity tag
/// is `current`? Without the header, yes. With it, only if it is one strong entity tag equal
/// to `current`; otherwise (a changed file, a weak tag, a list, a date) the whole file is
/// sent, so a client resuming a download never joins two versions. A date is not taken as a
/// validator: its one-second resolution cannot tell apart two versions written in the same
/// second.
pub fn if_range_allows(h: &HeaderMap, current: &[u8; 16]) -> bool {
    match h.get(header::IF_RANGE) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| if_range_value_allows(v, current)),
    }
}

/// [`if_range_allows`] on the header's text.
pub fn if_range_value_allows(v: &str, current: &[u8; 16]) -> bool {
    let v = ows(v);
    !v.contains(',')
        && parse_etags(v, EtagCompare::Strong).is_some_and(|tags| tags.as_slice() == [*current])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range_value("bytes=0-0", 10), Ok(Some((0, 1))));
        assert_eq!(parse_range_value("bytes=2-", 10), Ok(Some((2, 10))));
        assert_eq!(parse_range_value("bytes=-3", 10), Ok(Some((7, 10))));
        assert_eq!(parse_range_value("bytes=-30", 10), Ok(Some((0, 10))));
        assert_eq!(parse_range_value("bytes=5-100", 10), Ok(Some((5, 10))));
        assert_eq!(parse_range_value("bytes=10-", 10), Err(Unsatisfiable));
        assert_eq!(parse_range_value("bytes=-0", 10), Err(Unsatisfiable));
        assert_eq!(parse_range_value("bytes=-1", 0), Err(Unsatisfiable));
        assert_eq!(parse_range_value("bytes=3-2", 10), Ok(None));
        assert_eq!(parse_range_value("bytes=0-1,3-4", 10), Ok(None));
        assert_eq!(parse_range_value("items=0-1", 10), Ok(None));
        // The unit is case-insensitive (RFC 9110 §14.1); it was served whole.
        assert_eq!(parse_range_value("BYTES=0-1", 10), Ok(Some((0, 2))));
        assert_eq!(parse_range_value("Bytes=-3", 10), Ok(Some((7, 10))));
        assert_eq!(parse_range_value("byte=0-1", 10), Ok(None));
        assert_eq!(parse_range_value("bytés", 10), Ok(None));
        assert_eq!(
            parse_range_value(&format!("bytes=0-{}", u64::MAX), 10),
            Ok(Some((0, 10)))
        );
        // Positions past u64::MAX are still positions (black-box review: the first was
        // served whole, 200).
        let huge = "99999999999999999999999";
        assert_eq!(
            parse_range_value(&format!("bytes={huge}-"), 10),
            Err(Unsatisfiable)
        );
        assert_eq!(
            parse_range_value(&format!("bytes=2-{huge}"), 10),
            Ok(Some((2, 10)))
        );
        assert_eq!(
            parse_range_value(&format!("bytes=-{huge}"), 10),
            Ok(Some((0, 10)))
        );
        assert_eq!(
            parse_range_value(&format!("bytes={huge}-{huge}1"), 10),
            Err(Unsatisfiable)
        );
    }

    /// Seen while writing the `http_headers` fuzz target's oracle: `u64::from_str` takes a
    /// leading `+`, so `bytes=+1-2` was served as a range although RFC 9110 allows digits only.
    #[test]
    fn range_with_a_plus_sign_is_ignored() {
        assert_eq!(parse_range_value("bytes=+1-2", 10), Ok(None));
        assert_eq!(parse_range_value("bytes=1-+2", 10), Ok(None));
        assert_eq!(parse_range_value("bytes=-+2", 10), Ok(None));
        assert_eq!(parse_range_value("bytes=+10-", 10), Ok(None));
    }

    /// Found by the `http_headers` fuzz target (`bytes=-` + vertical tabs + digits was served as
    /// a suffix range): only spaces and tabs are whitespace in a header.
    #[test]
    fn range_with_a_vertical_tab_or_form_feed_is_ignored() {
        assert_eq!(parse_range_value("bytes=-\u{b}5", 10), Ok(None));
        assert_eq!(parse_range_value("bytes=\u{c}1-2", 10), Ok(None));
        assert_eq!(parse_range_value("bytes=1-2\u{a0}", 10), Ok(None));
        assert_eq!(parse_range_value("\tbytes=1 -\t2 ", 10), Ok(Some((1, 3))));
    }

    #[test]
    fn if_range() {
        let cur = [0x11u8; 16];
        let tag = format!("\"{}\"", hex::encode(cur));
        assert!(if_range_value_allows(&tag, &cur));
        assert!(if_range_value_allows(&format!(" {tag}\t"), &cur));
        let other = format!("\"{}\"", hex::encode([0x22u8; 16]));
        assert!(!if_range_value_allows(&other, &cur));
        assert!(!if_range_value_allows(&format!("W/{tag}"), &cur));
        assert!(!if_range_value_allows(&format!("{tag}, {tag}"), &cur));
        assert!(!if_range_value_allows("*", &cur));
        assert!(!if_range_value_allows(
            "Wed, 02 Dec 2026 04:00:00 GMT",
            &cur
        ));
        assert!(!if_range_value_allows("", &cur));
        let mut h = HeaderMap::new();
        assert!(if_range_allows(&h, &cur));
        h.insert(header::IF_RANGE, other.parse().unwrap());
        assert!(!if_range_allows(&h, &cur));
    }

    #[test]
    fn etag_lists() {
        let a = "00112233445566778899aabbccddeeff";
        let b = "ffeeddccbbaa99887766554433221100";
        use EtagCompare::*;
        assert_eq!(parse_etags(" * ", Strong), None);
        assert_eq!(parse_etags(" * ", Weak), None);
        let list = format!("\"{a}\" , \"{b}\",W/\"{b}\", junk, w/\"{a}\"");
        // Strong comparison: the weak tag is left out.
        let tags = parse_etags(&list, Strong).unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(hex::encode(tags[0]), a);
        assert_eq!(hex::encode(tags[1]), b);
        // Weak comparison: `W/"b"` counts as "b"; a lower-case `w/` is not the weak marker.
        let tags = parse_etags(&list, Weak).unwrap();
        assert_eq!(tags.len(), 3);
        assert_eq!(hex::encode(tags[2]), b);
        assert_eq!(parse_etags(&format!("W/\"{a}\""), Strong), Some(vec![]));
        assert_eq!(parse_etags("", Strong), Some(vec![]));
        // Octet by octet: the same tag in upper case is another tag.
        let upper = format!("\"{}\"", a.to_uppercase());
        assert_eq!(parse_etags(&upper, Strong), Some(vec![]));
        assert_eq!(parse_etags(&upper, Weak), Some(vec![]));
    }
}
