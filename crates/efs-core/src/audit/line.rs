//! The audit log's byte layout (docs/audit.md). DO NOT CHANGE: a new layout gets a new
//! version number in the header line and the old one keeps its reader.
//!
//! ```text
//! file  audit-NNNNNN.log:  header line, then entry lines, each ending in '\n'
//! header: "efs-audit 1 " salt(16 bytes, 32 lowercase hex)
//! entry:  seq(decimal) " " time_ms(decimal) " " base64(sealed body) " " mac(64 lowercase hex)
//! mac   = HMAC-SHA256(mac key, prev_mac(32) ‖ seq(u64 BE) ‖ time_ms(i64 BE) ‖ salt(16) ‖ sealed)
//! sealed= AES-256-GCM(file key, nonce = 0u32 BE ‖ seq u64 BE,
//!                     aad = "efs-audit-entry-v1" ‖ seq BE ‖ time BE,
//!                     postcard(Record) ‖ zeros to a multiple of ENTRY_PAD) ‖ tag
//! file key = HKDF-SHA256(ikm = record key, salt = file salt, info = "efs/audit/file-key/v1")
//! HEAD: "efs-audit-head 1 " seq " " mac(hex) " " HMAC-SHA256(head key, seq BE ‖ mac)(hex)
//! ```
//!
//! Nonce rule: a file key is used by one writer for one file only (each file gets a fresh
//! random salt, and a writer never appends to a file it did not create), and within a file
//! `seq` strictly increases; so a (key, nonce) pair never repeats, across restarts, crashes
//! and rollbacks of the log alike.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use efs_format::MacKey;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{AuditKeys, Record};
use crate::labels;

/// First field of a header line.
pub(crate) const HEADER_MAGIC: &str = "efs-audit";
/// First field of the HEAD anchor.
pub(crate) const HEAD_MAGIC: &str = "efs-audit-head";
/// The only layout version so far.
pub(crate) const VERSION: &str = "1";
/// An entry's plaintext is padded with zeros to a multiple of this many bytes before it is
/// sealed, so that the log's line lengths tell the lengths of paths and user names only to
/// within this much. Entries written before 2026-12-06 have no padding; every reader, older
/// ones too, decodes the encoding and ignores what follows (this one: only zeros).
pub(crate) const ENTRY_PAD: usize = 64;
/// The previous MAC of the very first entry.
pub(crate) const GENESIS: [u8; 32] = [0; 32];
/// The previous MAC of the first entry a writer appends after finding the log's anchor
/// missing or damaged (no MAC is this value, so `verify` always stops at that entry and
/// names it; see `writer::chain_start`).
pub(crate) const UNANCHORED: [u8; 32] = [0xff; 32];

/// The chain's position: the last entry's number and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: u64,
    pub mac: [u8; 32],
}

impl Head {
    pub(crate) const START: Head = Head {
        seq: 0,
        mac: GENESIS,
    };
}

/// An entry line, split but not checked.
pub(crate) struct RawEntry {
    pub seq: u64,
    pub time_ms: i64,
    pub sealed: Vec<u8>,
    pub mac: [u8; 32],
}

/// The chain MAC, keyed once (HMAC's key setup costs two compressions); its state is
/// cleansed when dropped.
pub(crate) struct ChainMac(MacKey);

impl ChainMac {
    pub(crate) fn new(keys: &AuditKeys) -> Self {
        Self(MacKey::new(&keys.mac))
    }

    pub(crate) fn compute(
        &self,
        prev: &[u8; 32],
        seq: u64,
        time_ms: i64,
        salt: &[u8; 16],
        sealed: &[u8],
    ) -> [u8; 32] {
        self.0.mac(&[
            prev,
            &seq.to_be_bytes(),
            &time_ms.to_be_bytes(),
            salt,
            sealed,
        ])
    }
}

/// One file's body key, expanded once.
pub(crate) struct FileKey(LessSafeKey);

impl FileKey {
    pub(crate) fn new(keys: &AuditKeys, salt: &[u8; 16]) -> Self {
        let k = keys.record.derive(salt, labels::AUDIT_FILE_KEY);
        Self(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, k.as_bytes())
                .expect("a 32-byte key is a valid AES-256-GCM key"),
        ))
    }

    fn nonce(seq: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn aad(seq: u64, time_ms: i64) -> [u8; 34] {
        let mut a = [0u8; 34];
        a[..18].copy_from_slice(labels::AAD_AUDIT_ENTRY);
        a[18..26].copy_from_slice(&seq.to_be_bytes());
        a[26..].copy_from_slice(&time_ms.to_be_bytes());
        a
    }

    /// Seals a record. The caller guarantees `seq` is used once with this key (module doc).
    pub(crate) fn seal(&self, seq: u64, time_ms: i64, rec: &Record) -> Vec<u8> {
        // The plaintext is encrypted in place in a buffer sized for it and the tag up front:
        // no reallocation leaves a copy of it (user, path, address) behind.
        let size = postcard::serialize_with_flavor(rec, postcard::ser_flavors::Size::default())
            .expect("sizing a record cannot fail");
        let padded = size.div_ceil(ENTRY_PAD) * ENTRY_PAD;
        let mut buf = postcard::to_extend(rec, Vec::with_capacity(padded + AES_256_GCM.tag_len()))
            .expect("serialising to a Vec cannot fail");
        buf.resize(padded, 0);
        self.0
            .seal_in_place_append_tag(
                Self::nonce(seq),
                Aad::from(Self::aad(seq, time_ms)),
                &mut buf,
            )
            .expect("sealing a short record cannot fail");
        buf
    }

    /// Opens a sealed body; `None` if it does not authenticate or decode.
    pub(crate) fn open(&self, seq: u64, time_ms: i64, sealed: &[u8]) -> Option<Record> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        let plain = self
            .0
            .open_in_place(
                Self::nonce(seq),
                Aad::from(Self::aad(seq, time_ms)),
                &mut buf,
            )
            .ok()?;
        let (rec, padding) = postcard::take_from_bytes(plain).ok()?;
        padding.iter().all(|&b| b == 0).then_some(rec)
    }
}

/// The header line of a new file (with its '\n').
pub(crate) fn header_line(salt: &[u8; 16]) -> String {
    format!("{HEADER_MAGIC} {VERSION} {}\n", hex::encode(salt))
}

/// Parses a header line (without '\n'): the file's salt. Strict, like [`parse_entry`]:
/// lowercase hex only (the MAC chain covers the salt's bytes, not its spelling).
pub(crate) fn parse_header(line: &[u8]) -> Option<[u8; 16]> {
    let s = std::str::from_utf8(line).ok()?;
    let mut it = s.split(' ');
    if it.next()? != HEADER_MAGIC || it.next()? != VERSION {
        return None;
    }
    let salt = lower_hex(it.next()?)?;
    it.next().is_none().then_some(salt)
}

/// `N` bytes from exactly `2 * N` lowercase hex digits.
fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

/// Appends one entry line (with its '\n') to `out`.
pub(crate) fn push_entry(out: &mut Vec<u8>, seq: u64, time_ms: i64, sealed: &[u8], mac: &[u8; 32]) {
    use std::io::Write;
    write!(out, "{seq} {time_ms} ").expect("writing to a Vec cannot fail");
    let start = out.len();
    out.resize(
        start + base64::encoded_len(sealed.len(), true).expect("short"),
        0,
    );
    let n = B64
        .encode_slice(sealed, &mut out[start..])
        .expect("the buffer was sized for it");
    out.truncate(start + n);
    out.push(b' ');
    let start = out.len();
    out.resize(start + 64, 0);
    hex::encode_to_slice(mac, &mut out[start..]).expect("64 bytes hold a 32-byte MAC in hex");
    out.push(b'\n');
}

/// Splits an entry line (without '\n'). Strict: canonical decimal, base64 and lowercase
/// hex only, so that a line has exactly one reading.
pub(crate) fn parse_entry(line: &[u8]) -> Option<RawEntry> {
    let s = std::str::from_utf8(line).ok()?;
    let mut it = s.split(' ');
    let seq_s = it.next()?;
    let time_s = it.next()?;
    let body = it.next()?;
    let mac_s = it.next()?;
    if it.next().is_some() {
        return None;
    }
    let seq: u64 = canonical_number(seq_s)?;
    let time_ms: i64 = canonical_number(time_s)?;
    let sealed = B64.decode(body).ok()?;
    let mac = lower_hex(mac_s)?;
    Some(RawEntry {
        seq,
        time_ms,
        sealed,
        mac,
    })
}

fn canonical_number<T: std::str::FromStr + ToString>(s: &str) -> Option<T> {
    let v: T = s.parse().ok()?;
    (v.to_string() == s).then_some(v)
}

/// The HEAD anchor's text for `head`.
pub(crate) fn head_text(keys: &AuditKeys, head: &Head) -> String {
    format!(
        "{HEAD_MAGIC} {VERSION} {} {} {}\n",
        head.seq,
        hex::encode(head.mac),
        hex::encode(head_tag(keys, head))
    )
}

fn head_tag(keys: &AuditKeys, head: &Head) -> [u8; 32] {
    keys.head.mac(&[&head.seq.to_be_bytes(), &head.mac])
}

/// Parses and authenticates the HEAD anchor; `None` if malformed or forged.
pub(crate) fn parse_head(keys: &AuditKeys, text: &[u8]) -> Option<Head> {
    let s = std::str::from_utf8(text).ok()?.strip_suffix('\n')?;
    let mut it = s.split(' ');
    if it.next()? != HEAD_MAGIC || it.next()? != VERSION {
        return None;
    }
    let seq = canonical_number(it.next()?)?;
    let mac: [u8; 32] = lower_hex(it.next()?)?;
    let tag: [u8; 32] = lower_hex(it.next()?)?;
    if it.next().is_some() {
        return None;
    }
    let head = Head { seq, mac };
    bool::from(head_tag(keys, &head).ct_eq(&tag)).then_some(head)
}

/// Constant-time equality of two MACs.
pub(crate) fn mac_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a.ct_eq(b))
}

/// The name of audit file number `n`.
pub(crate) fn file_name(n: u32) -> String {
    format!("audit-{n:06}.log")
}

/// The number of an audit file name, if it is one.
pub(crate) fn file_number(name: &str) -> Option<u32> {
    let d = name.strip_prefix("audit-")?.strip_suffix(".log")?;
    (d.len() >= 6 && d.bytes().all(|b| b.is_ascii_digit()))
        .then(|| d.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Action;

    fn read_of(path: &str) -> Record {
        Record {
            action: Action::Read,
            user: Some("nurse-kim".into()),
            fs: Some("files".into()),
            path: Some(path.into()),
            to: None,
            client: Some("127.0.0.1".into()),
            status: 200,
            detail: None,
        }
    }

    /// Entry bodies were sealed as they are: a line's length told the length of the
    /// request's path (and user) to the byte. Padded, 300 path lengths give at most six
    /// lengths, each the padding's multiple plus the tag.
    #[test]
    fn entry_bodies_tell_path_lengths_only_to_the_padding() {
        let key = FileKey::new(&AuditKeys::for_tests(3), &[5; 16]);
        let tag = AES_256_GCM.tag_len();
        let lens: std::collections::BTreeSet<usize> = (1..=300)
            .map(|n| {
                key.seal(9, 1_000, &read_of(&format!("/{}", "p".repeat(n))))
                    .len()
            })
            .collect();
        assert!(
            lens.iter().all(|l| (l - tag).is_multiple_of(ENTRY_PAD)),
            "{lens:?}"
        );
        assert!(lens.len() <= 300 / ENTRY_PAD + 2, "{lens:?}");
        let rec = read_of("/patients/173/hiv-test.pdf");
        assert_eq!(key.open(9, 1_000, &key.seal(9, 1_000, &rec)), Some(rec));
    }

    /// Entries written before the padding (2026-12-06) have none and still open; bytes other
    /// than zeros after the encoding do not.
    #[test]
    fn unpadded_entries_open_and_padding_must_be_zeros() {
        let key = FileKey::new(&AuditKeys::for_tests(3), &[5; 16]);
        let rec = read_of("/old/entry.pdf");
        let seal_plain = |mut plain: Vec<u8>| {
            key.0
                .seal_in_place_append_tag(
                    FileKey::nonce(4),
                    Aad::from(FileKey::aad(4, 77)),
                    &mut plain,
                )
                .unwrap();
            plain
        };
        let unpadded = postcard::to_allocvec(&rec).unwrap();
        assert_ne!(
            unpadded.len() % ENTRY_PAD,
            0,
            "the test needs an unpadded length"
        );
        assert_eq!(key.open(4, 77, &seal_plain(unpadded.clone())), Some(rec));
        let mut bad = unpadded;
        bad.resize(bad.len().div_ceil(ENTRY_PAD) * ENTRY_PAD, 0);
        *bad.last_mut().unwrap() = 1;
        assert_eq!(key.open(4, 77, &seal_plain(bad)), None);
    }
}
