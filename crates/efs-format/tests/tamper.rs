//! Every change to a ciphertext is an error, never wrong bytes.

mod common;

use common::{decrypt, encrypt, pattern};
use efs_format::{FormatError, HEADER_LEN, Key32, SEGMENT_SIZE, TAG_LEN};

const ID: [u8; 16] = [0xb1; 16];
const SEG_CT: usize = SEGMENT_SIZE + TAG_LEN;

fn key() -> Key32 {
    Key32::from_bytes([0x5a; 32])
}

/// Two full segments and a short last one.
fn sample() -> (Vec<u8>, Vec<u8>) {
    let plain = pattern(2 * SEGMENT_SIZE + 7);
    let ct = encrypt(&key(), ID, [0x33; 32], &plain);
    (plain, ct)
}

fn must_fail(ct: &[u8], what: &str) -> FormatError {
    match decrypt(&key(), &ID, ct) {
        Ok(_) => panic!("{what}: a changed ciphertext decrypted"),
        Err(e) => e,
    }
}

#[test]
fn sample_round_trips() {
    let (plain, ct) = sample();
    assert_eq!(decrypt(&key(), &ID, &ct).unwrap(), plain);
}

#[test]
fn every_flip_in_header_and_at_segment_edges_and_a_sample_elsewhere_fails() {
    let (_, ct) = sample();
    let mut positions: Vec<usize> = (0..HEADER_LEN).collect();
    for s in 0..3 {
        let start = HEADER_LEN + s * SEG_CT;
        let end = (start + SEG_CT).min(ct.len());
        positions.extend(start..(start + 64).min(end)); // segment start
        positions.extend(end.saturating_sub(64).max(start)..end); // end of data and the tag
    }
    positions.extend((HEADER_LEN..ct.len()).step_by(509)); // sampled interior
    positions.sort_unstable();
    positions.dedup();
    assert!(positions.len() > 400);
    for &i in &positions {
        for bit in [0x01u8, 0x80] {
            let mut t = ct.clone();
            t[i] ^= bit;
            let e = must_fail(&t, &format!("flip byte {i}"));
            if i >= HEADER_LEN {
                assert_eq!(e, FormatError::Decrypt, "byte {i}");
            }
        }
    }
}

#[test]
fn truncation_anywhere_fails() {
    let (_, ct) = sample();
    let mut cuts: Vec<usize> = (0..HEADER_LEN + TAG_LEN + 2).collect();
    for s in 1..=2 {
        let b = HEADER_LEN + s * SEG_CT;
        cuts.extend(b - TAG_LEN - 1..b + TAG_LEN + 2);
    }
    cuts.extend([
        HEADER_LEN + SEG_CT / 2,
        HEADER_LEN + SEG_CT + 1000,
        ct.len() - 1,
    ]);
    for n in cuts {
        let e = must_fail(&ct[..n], &format!("truncated to {n}"));
        assert!(matches!(
            e,
            FormatError::Length | FormatError::Decrypt | FormatError::Header(_)
        ));
    }
    // Exactly at a segment boundary the length is plausible; the new last segment lacks the
    // last flag, so authentication fails.
    for s in 1..=2 {
        let n = HEADER_LEN + s * SEG_CT;
        assert_eq!(must_fail(&ct[..n], "cut at boundary"), FormatError::Decrypt);
    }
}

#[test]
fn extension_fails() {
    let (_, ct) = sample();
    for extra in [1usize, 15, 16, 17, 100] {
        let mut t = ct.clone();
        t.extend(std::iter::repeat_n(0u8, extra));
        must_fail(&t, &format!("{extra} bytes appended"));
    }
    // A whole valid segment of the same content appended.
    let full = encrypt(&key(), ID, [0x33; 32], &pattern(2 * SEGMENT_SIZE));
    let mut t = full.clone();
    t.extend_from_slice(&full[HEADER_LEN..HEADER_LEN + SEG_CT]);
    assert_eq!(must_fail(&t, "segment appended"), FormatError::Decrypt);
    // The last segment repeated.
    let mut t = full.clone();
    t.extend_from_slice(&full[HEADER_LEN + SEG_CT..]);
    assert_eq!(must_fail(&t, "last segment repeated"), FormatError::Decrypt);
}

#[test]
fn swapping_segments_fails() {
    // Two full segments with different bytes, then a last one.
    let plain: Vec<u8> = pattern(3 * SEGMENT_SIZE).iter().map(|b| b ^ 0x5c).collect();
    let ct = encrypt(&key(), ID, [0x44; 32], &plain);
    let (s0, s1) = (HEADER_LEN, HEADER_LEN + SEG_CT);
    let mut t = ct.clone();
    t[s0..s1].copy_from_slice(&ct[s1..s1 + SEG_CT]);
    t[s1..s1 + SEG_CT].copy_from_slice(&ct[s0..s1]);
    assert_eq!(
        must_fail(&t, "segments 0 and 1 swapped"),
        FormatError::Decrypt
    );
    // The last segment moved first.
    let mut t = ct.clone();
    let s2 = s1 + SEG_CT;
    t[s0..s1].copy_from_slice(&ct[s2..]);
    t[s2..].copy_from_slice(&ct[s0..s1]);
    assert_eq!(must_fail(&t, "last segment moved"), FormatError::Decrypt);
}

#[test]
fn segments_of_another_content_fail() {
    let (plain, ct) = sample();
    let same_key_other_salt = encrypt(&key(), ID, [0x34; 32], &plain);
    let other_key = encrypt(&Key32::from_bytes([0x5b; 32]), ID, [0x33; 32], &plain);
    let other_id = encrypt(&key(), [0xb2; 16], [0x33; 32], &plain);
    for (name, other) in [
        ("same key, other salt", &same_key_other_salt),
        ("other key", &other_key),
        ("other blob id", &other_id),
    ] {
        assert_eq!(other.len(), ct.len());
        // One segment taken from the other content.
        for s in 0..3 {
            let (a, b) = (
                HEADER_LEN + s * SEG_CT,
                (HEADER_LEN + (s + 1) * SEG_CT).min(ct.len()),
            );
            let mut t = ct.clone();
            t[a..b].copy_from_slice(&other[a..b]);
            assert_eq!(
                must_fail(&t, name),
                FormatError::Decrypt,
                "{name} segment {s}"
            );
        }
        // The other content's header on our segments (the other-key content has the same
        // header bytes: only its key differs).
        if other[..HEADER_LEN] == ct[..HEADER_LEN] {
            continue;
        }
        let mut t = ct.clone();
        t[..HEADER_LEN].copy_from_slice(&other[..HEADER_LEN]);
        assert_eq!(must_fail(&t, name), FormatError::Decrypt, "{name} header");
    }
    // The whole other-key content opened with our key.
    assert_eq!(must_fail(&other_key, "other key"), FormatError::Decrypt);
}

#[test]
fn wrong_expected_blob_id_fails() {
    let (_, ct) = sample();
    assert_eq!(decrypt(&key(), &[0xb2; 16], &ct), Err(FormatError::Decrypt));
    // A content whose id was rewritten to the expected one: the key no longer matches.
    let mut t = ct.clone();
    t[8..24].copy_from_slice(&[0xb2; 16]);
    assert_eq!(decrypt(&key(), &[0xb2; 16], &t), Err(FormatError::Decrypt));
}

#[test]
fn wrong_data_key_fails() {
    let (_, ct) = sample();
    assert_eq!(
        decrypt(&Key32::from_bytes([0x5b; 32]), &ID, &ct),
        Err(FormatError::Decrypt)
    );
}

#[test]
fn empty_content_tampering_fails() {
    let ct = encrypt(&key(), ID, [0x33; 32], &[]);
    assert_eq!(decrypt(&key(), &ID, &ct).unwrap(), Vec::<u8>::new());
    for i in 0..ct.len() {
        let mut t = ct.clone();
        t[i] ^= 0x01;
        must_fail(&t, &format!("empty, flip {i}"));
    }
    for n in 0..ct.len() {
        must_fail(&ct[..n], &format!("empty, cut to {n}"));
    }
    // A one-byte content cut by one byte has the length of an empty one; it must not open.
    let one = encrypt(&key(), ID, [0x33; 32], b"x");
    assert_eq!(one.len(), ct.len() + 1);
    assert_eq!(
        must_fail(&one[..ct.len()], "one byte cut to empty"),
        FormatError::Decrypt
    );
}

/// Every single byte of every segment (data and tag), flipped one at a time: each one is a
/// decryption failure of that segment. Each flip is checked with the segment's own open
/// (what a reader of that segment does), so all ~131,000 positions take seconds, not hours.
#[test]
fn every_single_byte_flip_of_every_segment_fails() {
    let (_, ct) = sample();
    let d = efs_format::Decryptor::new(&key(), &ct[..HEADER_LEN], ct.len() as u64, &ID).unwrap();
    let mut buf = Vec::with_capacity(SEG_CT);
    let mut flips = 0usize;
    for idx in 0..d.segment_count() {
        let (off, len) = d.segment_location(idx).unwrap();
        let seg = &ct[off as usize..off as usize + len];
        buf.clear();
        buf.extend_from_slice(seg);
        d.open_segment(idx, &mut buf)
            .expect("the honest segment opens");
        for i in 0..len {
            buf.clear();
            buf.extend_from_slice(seg);
            buf[i] ^= 0x01;
            assert_eq!(
                d.open_segment(idx, &mut buf),
                Err(FormatError::Decrypt),
                "segment {idx}, byte {i}"
            );
            flips += 1;
        }
    }
    assert_eq!(flips, ct.len() - HEADER_LEN);
}
