//! Path normalisation on arbitrary text, as it arrives in a request URI and in a JSON body.
//!
//! Oracle: nothing panics, and an accepted path keeps every rule of `efs_core::path`: each
//! segment passes `check_segment`, the text form is at most `MAX_PATH` bytes, does not start
//! with `/_efs`, and parses back to the same path both decoded and percent-encoded.

#![no_main]

use efs_core::path::{MAX_PATH, RESERVED, check_segment};
use efs_core::{EfsPath, PathError};
use libfuzzer_sys::fuzz_target;

fn check_invariants(p: &EfsPath) {
    for s in p.segments() {
        assert_eq!(check_segment(s), Ok(()));
    }
    assert_ne!(p.segments().first().map(String::as_str), Some(RESERVED));
    let text = p.to_string();
    assert!(text.len() <= MAX_PATH);
    assert_eq!(EfsPath::parse(&text).as_ref(), Ok(p));
    // Percent-encode every byte but unreserved ones: decoding must give the same path back.
    let mut uri = String::new();
    for s in p.segments() {
        uri.push('/');
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                uri.push(b as char);
            } else {
                uri.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if uri.is_empty() {
        uri.push('/');
    }
    match EfsPath::parse_uri_path(&uri) {
        Ok(q) => assert_eq!(&q, p),
        // Encoding can make the text longer than MAX_PATH; nothing else may refuse it.
        Err(e) => assert_eq!(e, PathError::PathTooLong),
    }
    if let Some(parent) = p.parent() {
        assert!(p.starts_with(&parent));
        let name = p.name().expect("a path with a parent has a name");
        assert_eq!(parent.join(name).as_ref(), Ok(p));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = EfsPath::parse_uri_path(text) {
        check_invariants(&p);
    }
    if let Ok(p) = EfsPath::parse(text) {
        check_invariants(&p);
    }
    let root = EfsPath::root();
    if let Ok(p) = root.join(text) {
        check_invariants(&p);
    }
});
