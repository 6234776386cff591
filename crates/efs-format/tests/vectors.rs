//! Test vectors as data: `tests/vectors/*.json`, one content per file, named after what it is
//! (or what is broken in it).
//!
//! Each file gives a data key, blob id, salt and plaintext (hex, or a generator), and the
//! expected ciphertext (its length and SHA-256, plus its hex when small). `"expect": "ok"` files
//! must encrypt to exactly those bytes with the fixed salt and decrypt back to the plaintext.
//! `"expect": "fail"` files describe a change (`tamper`, `decrypt_key`, `expected_blob_id`)
//! applied to that honest content; the changed bytes must match the recorded ciphertext and
//! must not decrypt, with the recorded error.
//!
//! The files are data, committed once. To regenerate them (only after a deliberate format
//! change, with a new format version): `EFS_WRITE_VECTORS=1 cargo test -p efs-format --test
//! vectors`.

mod common;

use std::path::{Path, PathBuf};

use common::{decrypt, encrypt_with};
use efs_format::{Encryptor, FormatError, Key32};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Ciphertexts up to this size are stored in full, bigger ones by hash only.
const FULL_HEX_MAX: usize = 4096;

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Vector {
    description: String,
    data_key: String,
    blob_id: String,
    salt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plaintext: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plaintext_generator: Option<Generator>,
    /// Changes applied, in order, to the honest ciphertext.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tamper: Vec<Tamper>,
    /// Key the reader uses, when not `data_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decrypt_key: Option<String>,
    /// Blob id the reader expects, when not `blob_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expected_blob_id: Option<String>,
    ciphertext_len: u64,
    ciphertext_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ciphertext: Option<String>,
    expect: Expect,
    /// For `fail`: `Decrypt`, `Length` or `Header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Ok,
    Fail,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Generator {
    len: usize,
    /// The only generator: byte i is `i % 251`.
    byte: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Tamper {
    /// `ct[at] ^= mask`.
    Xor { at: usize, mask: u8 },
    /// Keep the first `len` bytes.
    Truncate { len: usize },
    /// Append these bytes.
    Append { hex: String },
    /// Append a copy of `ct[from..from + len]`.
    AppendCopy { from: usize, len: usize },
    /// Exchange `ct[a..a + len]` and `ct[b..b + len]`.
    Swap { a: usize, b: usize, len: usize },
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn plaintext(v: &Vector) -> Vec<u8> {
    match (&v.plaintext, &v.plaintext_generator) {
        (Some(h), None) => hex::decode(h).unwrap(),
        (None, Some(g)) => {
            assert_eq!(g.byte, "i % 251", "unknown generator");
            common::pattern(g.len)
        }
        _ => panic!("a vector needs exactly one of plaintext and plaintext_generator"),
    }
}

/// The honest content, then the vector's changes.
fn build(v: &Vector) -> Vec<u8> {
    let key = Key32::from_bytes(unhex(&v.data_key));
    let enc = Encryptor::with_salt(&key, unhex(&v.blob_id), unhex(&v.salt));
    // An odd chunk size, so the vectors also pin down that chunking changes nothing.
    let mut ct = encrypt_with(enc, &plaintext(v), 7001);
    for t in &v.tamper {
        match t {
            Tamper::Xor { at, mask } => ct[*at] ^= mask,
            Tamper::Truncate { len } => ct.truncate(*len),
            Tamper::Append { hex } => ct.extend(hex::decode(hex).unwrap()),
            Tamper::AppendCopy { from, len } => ct.extend_from_within(*from..from + len),
            Tamper::Swap { a, b, len } => {
                let x = ct[*a..a + len].to_vec();
                ct.copy_within(*b..b + len, *a);
                ct[*b..b + len].copy_from_slice(&x);
            }
        }
    }
    ct
}

fn error_name(e: FormatError) -> &'static str {
    match e {
        FormatError::Decrypt => "Decrypt",
        FormatError::Length => "Length",
        FormatError::Header(_) => "Header",
        FormatError::Range => "Range",
        _ => "other",
    }
}

fn check(name: &str, v: &Vector) {
    let ct = build(v);
    assert_eq!(ct.len() as u64, v.ciphertext_len, "{name}: length");
    assert_eq!(
        hex::encode(Sha256::digest(&ct)),
        v.ciphertext_sha256,
        "{name}: SHA-256"
    );
    if let Some(h) = &v.ciphertext {
        assert_eq!(hex::encode(&ct), *h, "{name}: ciphertext bytes");
    }
    // Decrypt the recorded bytes when present (independent of our encryptor), else ours.
    let stored = v
        .ciphertext
        .as_ref()
        .map_or(ct, |h| hex::decode(h).unwrap());
    let key = Key32::from_bytes(unhex(v.decrypt_key.as_ref().unwrap_or(&v.data_key)));
    let id: [u8; 16] = unhex(v.expected_blob_id.as_ref().unwrap_or(&v.blob_id));
    match (v.expect, decrypt(&key, &id, &stored)) {
        (Expect::Ok, Ok(p)) => assert!(p == plaintext(v), "{name}: wrong plaintext"),
        (Expect::Fail, Err(e)) => {
            assert_eq!(
                Some(error_name(e)),
                v.error.as_deref(),
                "{name}: error kind"
            )
        }
        (Expect::Ok, Err(e)) => panic!("{name}: expected ok, got {e}"),
        (Expect::Fail, Ok(_)) => panic!("{name}: a broken content decrypted"),
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

#[test]
fn vectors() {
    if std::env::var_os("EFS_WRITE_VECTORS").is_some_and(|v| v == "1") {
        write_vectors();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for (name, _) in specs() {
        assert!(names.contains(&name.to_string()), "missing vector {name}");
    }
    for (path, name) in files.iter().zip(&names) {
        let v: Vector = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &v);
    }
}

// ---- generator: the specs the committed files were made from ----

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_KEY: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";
const ID: &str = "b10b1d00000000000000000000000001";
const OTHER_ID: &str = "b10b1d00000000000000000000000002";
const SALT: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a00112233445566778899aabbccddeeff";
const SEG_CT: usize = 65536 + 16;

fn spec(description: &str, plain: Result<&str, usize>) -> Vector {
    let (plaintext, plaintext_generator) = match plain {
        Ok(h) => (Some(h.to_string()), None),
        Err(len) => (
            None,
            Some(Generator {
                len,
                byte: "i % 251".into(),
            }),
        ),
    };
    Vector {
        description: description.into(),
        data_key: KEY.into(),
        blob_id: ID.into(),
        salt: SALT.into(),
        plaintext,
        plaintext_generator,
        tamper: vec![],
        decrypt_key: None,
        expected_blob_id: None,
        ciphertext_len: 0,
        ciphertext_sha256: String::new(),
        ciphertext: None,
        expect: Expect::Ok,
        error: None,
    }
}

fn fail(mut v: Vector, error: &str, tamper: Vec<Tamper>) -> Vector {
    v.expect = Expect::Fail;
    v.error = Some(error.into());
    v.tamper = tamper;
    v
}

fn specs() -> Vec<(&'static str, Vector)> {
    let one = || spec("", Ok("61"));
    let wrong_key = Vector {
        decrypt_key: Some(OTHER_KEY.into()),
        ..fail(one(), "Decrypt", vec![])
    };
    let wrong_id = Vector {
        expected_blob_id: Some(OTHER_ID.into()),
        ..fail(one(), "Decrypt", vec![])
    };
    let mut out = vec![
        (
            "empty",
            spec(
                "empty content: one empty last segment, 16 bytes of tag",
                Ok(""),
            ),
        ),
        ("one-byte", spec("one byte 'a'", Ok("61"))),
        (
            "short-text",
            spec("\"hello, EFS\\n\"", Ok("68656c6c6f2c204546530a")),
        ),
        (
            "one-segment-minus-one",
            spec("65535 bytes: one short last segment", Err(65535)),
        ),
        (
            "one-segment-exact",
            spec(
                "65536 bytes: one full last segment, no empty segment after it",
                Err(65536),
            ),
        ),
        (
            "segment-plus-one",
            spec(
                "65537 bytes: a full segment, then a last segment of 1 byte",
                Err(65537),
            ),
        ),
        (
            "three-segments-plus-five",
            spec("3 * 65536 + 5 bytes: four segments", Err(3 * 65536 + 5)),
        ),
        (
            "tag-flipped",
            fail(one(), "Decrypt", vec![Tamper::Xor { at: 72, mask: 0x01 }]),
        ),
        (
            "ciphertext-byte-flipped",
            fail(one(), "Decrypt", vec![Tamper::Xor { at: 56, mask: 0x80 }]),
        ),
        (
            "header-salt-flipped",
            fail(one(), "Decrypt", vec![Tamper::Xor { at: 24, mask: 0x01 }]),
        ),
        (
            "header-blob-id-flipped",
            fail(one(), "Decrypt", vec![Tamper::Xor { at: 8, mask: 0x01 }]),
        ),
        (
            "header-bad-magic",
            fail(one(), "Header", vec![Tamper::Xor { at: 0, mask: 0x20 }]),
        ),
        (
            "header-version-2",
            fail(one(), "Header", vec![Tamper::Xor { at: 4, mask: 0x03 }]),
        ),
        (
            "header-unknown-suite",
            fail(one(), "Header", vec![Tamper::Xor { at: 5, mask: 0x03 }]),
        ),
        (
            "header-segment-size-17",
            fail(one(), "Header", vec![Tamper::Xor { at: 6, mask: 0x01 }]),
        ),
        (
            "header-reserved-nonzero",
            fail(one(), "Header", vec![Tamper::Xor { at: 7, mask: 0x01 }]),
        ),
        (
            "header-truncated",
            fail(one(), "Length", vec![Tamper::Truncate { len: 40 }]),
        ),
        (
            "truncated-inside-tag",
            fail(
                spec("", Ok("")),
                "Length",
                vec![Tamper::Truncate { len: 71 }],
            ),
        ),
        (
            "truncated-one-byte-to-empty-length",
            fail(one(), "Decrypt", vec![Tamper::Truncate { len: 72 }]),
        ),
        (
            "extended-by-one-byte",
            fail(one(), "Decrypt", vec![Tamper::Append { hex: "00".into() }]),
        ),
        (
            "extended-by-one-tag",
            fail(
                one(),
                "Decrypt",
                vec![Tamper::Append {
                    hex: "00".repeat(16),
                }],
            ),
        ),
        ("wrong-data-key", wrong_key),
        ("wrong-blob-id", wrong_id),
        (
            "truncated-at-segment-boundary",
            fail(
                spec("", Err(2 * 65536 + 5)),
                "Decrypt",
                vec![Tamper::Truncate {
                    len: 56 + 2 * SEG_CT,
                }],
            ),
        ),
        (
            "last-segment-dropped-after-full-one",
            fail(
                spec("", Err(65537)),
                "Decrypt",
                vec![Tamper::Truncate { len: 56 + SEG_CT }],
            ),
        ),
        (
            "segment-appended",
            fail(
                spec("", Err(65536)),
                "Decrypt",
                vec![Tamper::AppendCopy {
                    from: 56,
                    len: SEG_CT,
                }],
            ),
        ),
        (
            "segments-swapped",
            fail(
                spec("", Err(3 * 65536)),
                "Decrypt",
                vec![Tamper::Swap {
                    a: 56,
                    b: 56 + SEG_CT,
                    len: SEG_CT,
                }],
            ),
        ),
    ];
    let what: &[(&str, &str)] = &[
        ("tag-flipped", "one byte content, last tag byte flipped"),
        (
            "ciphertext-byte-flipped",
            "one byte content, its ciphertext byte flipped",
        ),
        (
            "header-salt-flipped",
            "a salt bit flipped: the derived key changes",
        ),
        (
            "header-blob-id-flipped",
            "a blob id bit flipped, reader expects the original id",
        ),
        ("header-bad-magic", "magic 'EFSc' changed to 'eFSc'"),
        ("header-version-2", "format version byte 0x02"),
        ("header-unknown-suite", "cipher suite byte 0x02"),
        ("header-segment-size-17", "segment size log2 byte 17"),
        ("header-reserved-nonzero", "reserved byte 0x01"),
        ("header-truncated", "only 40 bytes"),
        (
            "truncated-inside-tag",
            "empty content missing its last tag byte: impossible length",
        ),
        (
            "truncated-one-byte-to-empty-length",
            "one byte content cut to the length of an empty one",
        ),
        ("extended-by-one-byte", "a zero byte appended"),
        ("extended-by-one-tag", "16 zero bytes appended"),
        ("wrong-data-key", "decrypted with another data key"),
        ("wrong-blob-id", "the index expects another blob id"),
        (
            "truncated-at-segment-boundary",
            "2 * 65536 + 5 bytes, last segment dropped: the new last segment lacks the last flag",
        ),
        (
            "last-segment-dropped-after-full-one",
            "65537 bytes, cut after the first full segment",
        ),
        (
            "segment-appended",
            "65536 bytes, its only segment appended again",
        ),
        (
            "segments-swapped",
            "3 * 65536 bytes, segments 0 and 1 exchanged",
        ),
    ];
    for (name, v) in &mut out {
        if let Some((_, d)) = what.iter().find(|(n, _)| n == name) {
            v.description = d.to_string();
        }
    }
    out
}

fn write_vectors() {
    std::fs::create_dir_all(dir()).unwrap();
    for (name, mut v) in specs() {
        let ct = build(&v);
        v.ciphertext_len = ct.len() as u64;
        v.ciphertext_sha256 = hex::encode(Sha256::digest(&ct));
        v.ciphertext = (ct.len() <= FULL_HEX_MAX).then(|| hex::encode(&ct));
        let json = serde_json::to_string_pretty(&v).unwrap() + "\n";
        std::fs::write(dir().join(format!("{name}.json")), json).unwrap();
    }
}
