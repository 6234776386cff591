//! [`Key32`]: the one type every 32-byte secret key lives in.

use std::fmt;

use aws_lc_rs::{hkdf, hmac};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte secret key (a data key, a keyring term, a derived subkey).
///
/// It is zeroized on drop, and deliberately implements neither `Clone` nor `Copy`: a copy is
/// made only by the explicit [`Key32::duplicate`]. Its `Debug` prints `Key32(<redacted>)`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Key32([u8; 32]);

impl Key32 {
    /// Wraps existing key bytes. The caller should zeroize its own copy.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Key32(b)
    }

    /// Copies key bytes held in a slice straight into a key, with no intermediate copy on
    /// the stack; `None` unless the slice is exactly 32 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let mut k = Key32([0u8; 32]);
        if b.len() != k.0.len() {
            return None;
        }
        k.0.copy_from_slice(b);
        Some(k)
    }

    /// A fresh key from the operating system's secure random generator.
    ///
    /// # Panics
    /// If the system random generator fails: there is no safe key to return then.
    pub fn random() -> Self {
        let mut k = Key32([0u8; 32]);
        crate::wrap::fill_random(&mut k.0);
        k
    }

    /// The key bytes. Do not keep copies of them outside a zeroizing type.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// An explicit copy of the key, for the rare owner that truly needs its own.
    pub fn duplicate(&self) -> Key32 {
        Key32(self.0)
    }

    /// HKDF-SHA256 with `ikm` = this key, the given `salt` and `info` = `label`, expanded to
    /// 32 bytes. Use a constant from [`crate::labels`] as the label, so that keys derived for
    /// different purposes are independent.
    pub fn derive(&self, salt: &[u8], label: &[u8]) -> Key32 {
        let mut out = Key32([0u8; 32]);
        hkdf_sha256(salt, &self.0, &[label], &mut out.0);
        out
    }

    /// HMAC-SHA256 keyed by this key over the concatenation of `parts`.
    ///
    /// `aws_lc_rs`'s: the keyed HMAC state is cleansed when dropped (the `hmac` crate's,
    /// 0.12, is not, and it is as good as the key).
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        MacKey::new(self).mac(parts)
    }
}

/// A key set up for HMAC-SHA256 once, for many MACs (the key setup costs two SHA-256
/// compressions). Its state is cleansed when dropped, and its `Debug` prints nothing of it.
pub struct MacKey(hmac::Key);

impl MacKey {
    /// Keys HMAC-SHA256 with `key`.
    pub fn new(key: &Key32) -> Self {
        MacKey(hmac::Key::new(hmac::HMAC_SHA256, &key.0))
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.mac_prefixed(&[], parts)
    }

    /// HMAC-SHA256 over `prefix` followed by the concatenation of `parts`.
    pub fn mac_prefixed(&self, prefix: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(prefix);
        for p in parts {
            ctx.update(p);
        }
        ctx.sign()
            .as_ref()
            .try_into()
            .expect("HMAC-SHA256 gives 32 bytes")
    }
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

/// The output length handed to `aws_lc_rs`'s HKDF expansion.
struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869) of `ikm` with `salt`, `info` = the concatenation of `info`, filling
/// `out` (at most 255 * 32 bytes).
///
/// `aws_lc_rs`'s: its pseudorandom key (key-equivalent, as an HMAC state keyed by the PRK) is
/// zeroized when dropped, which the `hkdf` crate's (over `hmac` 0.12) is not.
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) {
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(info, OkmLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("the outputs derived here are far below HKDF-SHA256's limit of 255 * 32 bytes");
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = Key32::from_bytes([7u8; 32]);
        assert_eq!(format!("{k:?}"), "Key32(<redacted>)");
    }

    #[test]
    fn derive_separates_labels_and_salts() {
        let k = Key32::from_bytes([1u8; 32]);
        let a = k.derive(b"salt", b"a");
        assert_ne!(a.as_bytes(), k.derive(b"salt", b"b").as_bytes());
        assert_ne!(a.as_bytes(), k.derive(b"other", b"a").as_bytes());
        assert_eq!(a.as_bytes(), k.derive(b"salt", b"a").as_bytes());
        assert_eq!(k.duplicate().as_bytes(), k.as_bytes());
    }

    #[test]
    fn derive_is_hkdf_sha256_with_salt_as_salt_and_label_as_info() {
        // Pins the argument order: a swap of salt and info would still "work" but change
        // every derived key on disk.
        let k = Key32::from_bytes([0x0b; 32]);
        // Checked against a second implementation (RustCrypto's `hkdf`).
        let mut want = [0u8; 32];
        ::hkdf::Hkdf::<sha2::Sha256>::new(Some(b"the salt"), &[0x0b; 32])
            .expand(b"the label", &mut want)
            .unwrap();
        assert_eq!(k.derive(b"the salt", b"the label").as_bytes(), &want);
        // An empty salt (the keyring's subkeys): RFC 5869's "HashLen zeros".
        ::hkdf::Hkdf::<sha2::Sha256>::new(None, &[0x0b; 32])
            .expand(b"the label", &mut want)
            .unwrap();
        assert_eq!(k.derive(b"", b"the label").as_bytes(), &want);
    }

    #[test]
    fn hkdf_matches_rfc_5869_test_case_1() {
        // RFC 5869, appendix A.1 (42 bytes: not a whole number of SHA-256 blocks).
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let mut okm = [0u8; 42];
        hkdf_sha256(&salt, &ikm, &[&info[..4], &info[4..]], &mut okm);
        assert_eq!(
            okm.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn mac_is_hmac_sha256_of_the_concatenated_parts() {
        // Checked against a second implementation (RustCrypto's `hmac`), with the message
        // split into parts, one of them empty.
        use ::hmac::Mac;
        let k = Key32::from_bytes([0x42; 32]);
        let mut want = <::hmac::Hmac<sha2::Sha256>>::new_from_slice(&[0x42; 32]).unwrap();
        want.update(b"what do ya want for nothing?");
        let want: [u8; 32] = want.finalize().into_bytes().into();
        assert_eq!(k.mac(&[b"what do ya ", b"", b"want for nothing?"]), want);
        assert_eq!(
            MacKey::new(&k).mac(&[b"what do ya want for nothing?"]),
            want
        );
        assert_eq!(
            MacKey::new(&k).mac_prefixed(b"what ", &[b"do ya want", b" for nothing?"]),
            want
        );
        assert_ne!(k.mac(&[b"what do ya want for nothing!"]), want);
    }

    #[test]
    fn random_keys_differ() {
        assert_ne!(Key32::random().as_bytes(), Key32::random().as_bytes());
    }
}
