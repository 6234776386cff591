//! The content format reader on arbitrary bytes: header checks, length arithmetic, segment
//! location and decryption, with the key of the test vectors (`crates/efs-format/tests/vectors`)
//! so that the seeds decrypt and mutations start from real contents.
//!
//! Oracle: nothing panics; a content that opens completely is exactly the encryption of its
//! plaintext under its own header (so no other bytes open to the same plaintext); opening a
//! segment out of place gives the verdict and the bytes opening it in place gives; and a
//! sealed value (`wrap::open`) never opens without the key having sealed it.

#![no_main]

use efs_format::stream::{SALT_LEN, checked_encrypted_len, header_blob_id};
use efs_format::{Decryptor, Encryptor, FormatError, HEADER_LEN, Key32, TAG_LEN, wrap};
use libfuzzer_sys::fuzz_target;

fn vector_key() -> Key32 {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    Key32::from_bytes(k)
}

fuzz_target!(|data: &[u8]| {
    let key = vector_key();
    assert_eq!(
        wrap::open(&key, b"efs-fuzz", data),
        Err(FormatError::Decrypt)
    );

    let header = &data[..data.len().min(HEADER_LEN)];
    let Ok(blob_id) = header_blob_id(header) else {
        return;
    };
    let enc_len = data.len() as u64;
    let dec = match Decryptor::new(&key, header, enc_len, &blob_id) {
        Ok(d) => d,
        Err(FormatError::Length) => return,
        Err(e) => panic!("a header that header_blob_id accepts was refused: {e:?}"),
    };
    assert_eq!(checked_encrypted_len(dec.plaintext_len()), Some(enc_len));
    assert!(dec.segment_count() >= 1);
    assert!(dec.segments_for(0, u64::MAX).end <= dec.segment_count());

    let mut plain = Vec::new();
    let mut buf = Vec::new();
    for idx in 0..dec.segment_count() {
        let (offset, len) = dec.segment_location(idx).expect("idx < segment_count");
        let offset = usize::try_from(offset).expect("inside the input");
        assert!(offset + len <= data.len() && len >= TAG_LEN);
        buf.clear();
        buf.extend_from_slice(&data[offset..offset + len]);
        // Out of place (from where the bytes were read into another buffer), as the server
        // decrypts large blobs: the same verdict and the same plaintext as in place.
        let mut out = vec![0xa5u8; len];
        let outside = dec.open_segment_to(idx, &data[offset..offset + len], &mut out);
        if dec.open_segment(idx, &mut buf).is_err() {
            assert!(buf.is_empty(), "a failed segment left bytes behind");
            assert_eq!(outside, Err(FormatError::Decrypt), "out of place opened it");
            assert!(
                out[..len - TAG_LEN].iter().all(|&b| b == 0),
                "a failed out-of-place open left bytes behind"
            );
            return;
        }
        assert_eq!(outside, Ok(buf.len()));
        assert!(out[..buf.len()] == buf[..], "out of place gave other bytes");
        plain.extend_from_slice(&buf);
    }
    assert_eq!(
        dec.open_segment(dec.segment_count(), &mut buf),
        Err(FormatError::Range)
    );
    assert_eq!(plain.len() as u64, dec.plaintext_len());

    // Every segment opened: the input must be the one encryption of `plain` under its header.
    let salt: [u8; SALT_LEN] = data[HEADER_LEN - SALT_LEN..HEADER_LEN].try_into().unwrap();
    let enc = Encryptor::with_salt(&key, blob_id, salt);
    let mut again = enc.header().to_vec();
    let mut enc = enc;
    enc.update(&plain, &mut again);
    enc.finish(&mut again)
        .expect("finishing what update was given cannot fail");
    assert!(
        again == data,
        "a content opened that is not the encryption of its plaintext"
    );
});
