//! The index record decoder: the postcard decoder of a record's plaintext (the part with
//! structure, reached after authentication) and `Record::open` of arbitrary sealed bytes.
//!
//! Oracle: nothing panics; a decoded record re-encodes to bytes that decode and re-encode to
//! themselves, and survives seal → open unchanged; arbitrary bytes never open as a record.

#![no_main]

use std::sync::OnceLock;

use efs_core::keyring::Keyring;
use efs_core::record::Record;
use libfuzzer_sys::fuzz_target;

const FS_ID: [u8; 16] = [0x46; 16];
const ENTRY: [u8; 32] = [0x45; 32];

fn keyring() -> &'static Keyring {
    static K: OnceLock<Keyring> = OnceLock::new();
    K.get_or_init(Keyring::generate)
}

fuzz_target!(|data: &[u8]| {
    assert!(Record::open(keyring(), &FS_ID, &ENTRY, data).is_err());

    let Ok(record) = Record::decode(data) else {
        return;
    };
    let canonical = record.encode();
    let again = Record::decode(&canonical).expect("an encoded record decodes");
    assert_eq!(again.encode(), canonical);

    let sealed = record.seal(keyring(), &FS_ID, &ENTRY);
    let opened = Record::open(keyring(), &FS_ID, &ENTRY, &sealed).expect("a sealed record opens");
    assert_eq!(opened.encode(), canonical);
    // Bound to its entry: the same bytes under another entry key do not open.
    assert!(Record::open(keyring(), &FS_ID, &[0u8; 32], &sealed).is_err());
});
