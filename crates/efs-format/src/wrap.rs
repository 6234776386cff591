//! Sealing small secrets and records: AES-256-GCM with a random 96-bit nonce.
//!
//! Layout of a sealed value: `nonce (12) || ciphertext (len of plaintext) || tag (16)`, so it
//! is [`WRAP_OVERHEAD`] bytes longer than its plaintext. The caller chooses the associated data
//! (AAD) and must bind the sealed value to its place with it (for example the identity of the
//! file a data key belongs to), so that a sealed value moved elsewhere does not open.
//!
//! Nonce bound: nonces are random, so by NIST SP 800-38D (section 8.3) one key may seal at most
//! 2^32 values; callers rotate keys (new keyring terms) long before that. Use the streaming
//! format ([`crate::stream`]) for contents, not this.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::{FormatError, Key32, TAG_LEN};

/// Bytes a sealed value adds to its plaintext: nonce (12) plus tag (16).
pub const WRAP_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Fills `buf` from the system's secure random generator.
///
/// Panics if the generator fails: no caller can continue safely without randomness.
pub(crate) fn fill_random(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf).expect("the system random generator failed");
}

/// Builds the AES-256-GCM key of aws-lc-rs from a 32-byte key.
///
/// aws-lc frees (and its allocator wipes) the expanded key schedule when the returned key drops.
pub(crate) fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is a valid AES-256-GCM key"),
    )
}

/// One AES-256-GCM key, expanded once, that seals and opens many small values.
///
/// Each [`Sealer::seal`] draws a fresh random nonce; at most 2^32 seals per key (NIST SP
/// 800-38D), after which the caller must use a new key.
pub struct Sealer {
    key: LessSafeKey,
}

impl Sealer {
    /// Expands `key` for repeated use.
    pub fn new(key: &Key32) -> Self {
        Sealer {
            key: aead_key(key.as_bytes()),
        }
    }

    /// Seals `plaintext` with `aad` as associated data: `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut out = Vec::with_capacity(plaintext.len() + WRAP_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .expect("AES-256-GCM seals any length this process can hold");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a value made by [`Sealer::seal`] (or [`seal`]) with the same key and `aad`.
    ///
    /// Any failure (too short, altered, wrong key or wrong `aad`) is [`FormatError::Decrypt`].
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, FormatError> {
        if sealed.len() < WRAP_OVERHEAD {
            return Err(FormatError::Decrypt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| FormatError::Decrypt)?;
        let mut buf = Zeroizing::new(body.to_vec());
        match self.key.open_in_place(nonce, Aad::from(aad), &mut buf[..]) {
            Ok(plain) => {
                let n = plain.len();
                buf.truncate(n);
                Ok(buf)
            }
            Err(_) => Err(FormatError::Decrypt),
        }
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

/// Seals `plaintext` under `key` with `aad` as associated data.
///
/// Output layout: `nonce (12) || ciphertext || tag (16)`. The nonce is random: at most 2^32
/// seals per key (NIST SP 800-38D); callers rotate keys. To seal many values under one key, a
/// [`Sealer`] avoids expanding the key each time.
pub fn seal(key: &Key32, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    Sealer::new(key).seal(aad, plaintext)
}

/// Opens a value made by [`seal`]; returns the plaintext in a buffer zeroized on drop.
///
/// Any failure (too short, altered, wrong key or wrong `aad`) is [`FormatError::Decrypt`].
pub fn open(key: &Key32, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, FormatError> {
    Sealer::new(key).open(aad, sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let k = Key32::from_bytes([3u8; 32]);
        for len in [0usize, 1, 32, 1000] {
            let pt = vec![0xa5u8; len];
            let s = seal(&k, b"aad", &pt);
            assert_eq!(s.len(), len + WRAP_OVERHEAD);
            assert_eq!(open(&k, b"aad", &s).unwrap().as_slice(), pt.as_slice());
        }
    }

    #[test]
    fn nonces_are_fresh() {
        let k = Key32::from_bytes([3u8; 32]);
        assert_ne!(seal(&k, b"", b"x"), seal(&k, b"", b"x"));
    }

    #[test]
    fn wrong_aad_key_or_any_flipped_byte_fails() {
        let k = Key32::from_bytes([3u8; 32]);
        let s = seal(&k, b"fs-1/file-9", b"a data key of 32 bytes, really!!");
        assert_eq!(open(&k, b"fs-1/file-8", &s), Err(FormatError::Decrypt));
        assert_eq!(open(&k, b"", &s), Err(FormatError::Decrypt));
        let other = Key32::from_bytes([4u8; 32]);
        assert_eq!(open(&other, b"fs-1/file-9", &s), Err(FormatError::Decrypt));
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x01;
            assert_eq!(
                open(&k, b"fs-1/file-9", &t),
                Err(FormatError::Decrypt),
                "byte {i}"
            );
        }
        for n in 0..s.len() {
            assert_eq!(open(&k, b"fs-1/file-9", &s[..n]), Err(FormatError::Decrypt));
        }
        let mut longer = s.clone();
        longer.push(0);
        assert_eq!(open(&k, b"fs-1/file-9", &longer), Err(FormatError::Decrypt));
    }

    #[test]
    fn sealer_matches_functions() {
        let k = Key32::from_bytes([9u8; 32]);
        let sealer = Sealer::new(&k);
        let s = sealer.seal(b"a", b"record");
        assert_eq!(open(&k, b"a", &s).unwrap().as_slice(), b"record");
        assert_eq!(
            sealer
                .open(b"a", &seal(&k, b"a", b"r2"))
                .unwrap()
                .as_slice(),
            b"r2"
        );
        assert_eq!(format!("{sealer:?}"), "Sealer(<redacted>)");
    }
}
