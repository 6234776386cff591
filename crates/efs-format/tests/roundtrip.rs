//! Property tests: any content, any chunking, any byte range.

mod common;

use common::{decrypt, encrypt_with};
use efs_format::{Decryptor, Encryptor, HEADER_LEN, Key32, SEGMENT_SIZE, encrypted_len};
use proptest::prelude::*;

/// Cheap deterministic bytes (proptest shrinks the seed and length, not 200 KB of elements).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Feeds `plain` in pieces whose sizes cycle through `chunks`.
fn encrypt_chunked(key: &Key32, plain: &[u8], chunks: &[usize]) -> Vec<u8> {
    let mut enc = Encryptor::new(key, [9; 16]);
    let mut out = enc.header().to_vec();
    let mut rest = plain;
    for &c in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(c.min(rest.len()));
        enc.update(now, &mut out);
        rest = later;
    }
    enc.finish(&mut out).unwrap();
    out
}

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        0..3 * SEGMENT_SIZE + 100,
        (0usize..4, 0usize..3).prop_map(|(k, d)| (k * SEGMENT_SIZE).saturating_sub(d)),
        (1usize..4, 0usize..3).prop_map(|(k, d)| k * SEGMENT_SIZE + d),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_content_any_chunking_round_trips(
        len in sizes(),
        seed: u64,
        chunks in prop::collection::vec(
            prop_oneof![1usize..64, 1usize..2 * SEGMENT_SIZE, Just(SEGMENT_SIZE)], 1..6),
    ) {
        let key = Key32::random();
        let plain = content(len, seed);
        let ct = encrypt_chunked(&key, &plain, &chunks);
        prop_assert_eq!(ct.len() as u64, encrypted_len(len as u64));
        prop_assert_eq!(decrypt(&key, &[9; 16], &ct).unwrap(), plain);
    }

    #[test]
    fn any_byte_range_reads_the_plaintext_slice(
        len in sizes(),
        seed: u64,
        a in 0usize..3 * SEGMENT_SIZE + 200,
        b in 0usize..3 * SEGMENT_SIZE + 200,
    ) {
        let key = Key32::random();
        let plain = content(len, seed);
        let ct = encrypt_with(Encryptor::new(&key, [1; 16]), &plain, len);
        let d = Decryptor::new(&key, &ct[..HEADER_LEN], ct.len() as u64, &[1; 16]).unwrap();
        let (start, end) = (a as u64, b as u64);
        let mut got = Vec::new();
        let segs = d.segments_for(start, end);
        let first = Decryptor::segment_plain_offset(segs.start);
        for i in segs.clone() {
            let (off, n) = d.segment_location(i).unwrap();
            let mut buf = ct[off as usize..off as usize + n].to_vec();
            d.open_segment(i, &mut buf).unwrap();
            got.extend_from_slice(&buf);
        }
        let want: &[u8] = if a < b.min(len) { &plain[a..b.min(len)] } else { &[] };
        let from = (start.saturating_sub(first) as usize).min(got.len());
        let got = &got[from..(from + want.len()).min(got.len())];
        prop_assert_eq!(got, want);
        // Only the segments that cover the range are read.
        if !want.is_empty() {
            prop_assert!(segs.end - segs.start <= (want.len() as u64).div_ceil(SEGMENT_SIZE as u64) + 1);
        }
    }
}
