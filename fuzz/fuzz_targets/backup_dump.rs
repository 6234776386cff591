//! The restore's reader of a backup's `index.dump` (`efs_core::fs::backup::parse_dump`) on
//! arbitrary bytes: a backup comes from outside the running server, and its manifest's
//! SHA-256 only says the dump is the one the manifest names, not that it is well formed.
//!
//! Oracle: nothing panics or allocates more than libFuzzer's malloc limit (a declared length
//! the input does not hold must not be allocated first); every item it accepts has the key
//! length of its kind (32 bytes for an entry, 16 for an inline content); and a dump it
//! accepts is exactly the encoding of what it read (the format has one encoding per list of
//! items), so no byte is skipped, read twice or ignored at the end.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(items) = efs_core::fs::backup::parse_dump(data) else {
        return;
    };
    let mut again = Vec::with_capacity(data.len());
    for (kind, key, value) in &items {
        assert!(
            matches!((kind, key.len()), (1, 32) | (2, 16)),
            "kind {kind} with a {}-byte key accepted",
            key.len()
        );
        again.push(*kind);
        again.extend_from_slice(&(key.len() as u32).to_be_bytes());
        again.extend_from_slice(key);
        again.extend_from_slice(&(value.len() as u32).to_be_bytes());
        again.extend_from_slice(value);
    }
    assert!(again == data, "accepted a dump that is not the encoding of its items");
});
