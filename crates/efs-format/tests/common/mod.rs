//! Helpers shared by the integration tests.
#![allow(dead_code)]

use efs_format::{Decryptor, Encryptor, FormatError, HEADER_LEN, Key32};

/// `i % 251` for i in 0..len: a pattern with no period that divides the segment size.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Header and segments of `plain`, fed to `update` in `chunk`-byte pieces.
pub fn encrypt_with(enc: Encryptor, plain: &[u8], chunk: usize) -> Vec<u8> {
    let mut enc = enc;
    let mut out = enc.header().to_vec();
    for c in plain.chunks(chunk.max(1)) {
        enc.update(c, &mut out);
    }
    enc.finish(&mut out).unwrap();
    out
}

/// Encrypts `plain` with a fixed salt.
pub fn encrypt(key: &Key32, id: [u8; 16], salt: [u8; 32], plain: &[u8]) -> Vec<u8> {
    encrypt_with(Encryptor::with_salt(key, id, salt), plain, plain.len())
}

/// Decrypts a whole content held in memory, segment by segment.
pub fn decrypt(key: &Key32, id: &[u8; 16], ct: &[u8]) -> Result<Vec<u8>, FormatError> {
    let header = ct.get(..HEADER_LEN).ok_or(FormatError::Length)?;
    let d = Decryptor::new(key, header, ct.len() as u64, id)?;
    let mut plain = Vec::new();
    for i in 0..d.segment_count() {
        let (off, len) = d.segment_location(i)?;
        let mut buf = ct[off as usize..off as usize + len].to_vec();
        d.open_segment(i, &mut buf)?;
        plain.extend_from_slice(&buf);
    }
    Ok(plain)
}
