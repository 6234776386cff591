//! [`Key32`]: the one type every 32-byte secret key lives in.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
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
        Hkdf::<Sha256>::new(Some(salt), &self.0)
            .expand(label, &mut out.0)
            .expect("32 bytes is far below HKDF-SHA256's limit of 255 * 32 bytes");
        out
    }
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
        let mut want = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"the salt"), &[0x0b; 32])
            .expand(b"the label", &mut want)
            .unwrap();
        assert_eq!(k.derive(b"the salt", b"the label").as_bytes(), &want);
    }

    #[test]
    fn random_keys_differ() {
        assert_ne!(Key32::random().as_bytes(), Key32::random().as_bytes());
    }
}
