//! `Range` and `If-Match` / `If-None-Match` parsing on arbitrary header text.
//!
//! Input: 8 bytes of file length (big-endian), then the header text. Oracle: nothing panics;
//! a range served lies inside the file, non-empty, and came from a header of digits only
//! (RFC 9110 `1*DIGIT`, with spaces and tabs only as whitespace); an entity-tag list never yields more tags than it has elements,
//! the tags it yields, written back, parse to themselves, and a strong comparison yields a
//! subset of what a weak one does; `If-Range` allows a range only for exactly one strong tag,
//! and that tag is the current one.

#![no_main]

use efs_server::http_headers::{
    EtagCompare, Unsatisfiable, if_range_value_allows, parse_etags, parse_range_value,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (len, text) = data.split_at(8);
    let len = u64::from_be_bytes(len.try_into().unwrap());
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };

    match parse_range_value(text, len) {
        Ok(Some((start, end))) => {
            assert!(start < end && end <= len, "range {start}..{end} of {len}");
            let spec = bytes_spec(text).expect("a bytes= range");
            assert!(
                spec.bytes()
                    .all(|b| b.is_ascii_digit() || b"- \t".contains(&b)),
                "a range with characters other than digits was served"
            );
        }
        Ok(None) => {}
        Err(Unsatisfiable) => assert!(bytes_spec(text).is_some()),
    }

    for compare in [EtagCompare::Strong, EtagCompare::Weak] {
        if let Some(tags) = parse_etags(text, compare) {
            assert!(tags.len() <= text.split(',').count());
            let written: Vec<String> = tags
                .iter()
                .map(|t| format!("\"{}\"", hex::encode(t)))
                .collect();
            assert_eq!(parse_etags(&written.join(", "), compare), Some(tags));
        } else {
            assert_eq!(text.trim(), "*");
        }
    }
    if let (Some(strong), Some(weak)) = (
        parse_etags(text, EtagCompare::Strong),
        parse_etags(text, EtagCompare::Weak),
    ) {
        assert!(strong.iter().all(|t| weak.contains(t)));
    }

    let current = [0xabu8; 16];
    if if_range_value_allows(text, &current) {
        assert_eq!(parse_etags(text, EtagCompare::Strong), Some(vec![current]));
        assert!(!text.contains(','));
    }
});

/// What follows the unit of a `bytes=` range (the unit in any case, RFC 9110 §14.1).
fn bytes_spec(text: &str) -> Option<&str> {
    let t = text.trim_matches([' ', '\t']);
    t.get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &t[6..])
}
