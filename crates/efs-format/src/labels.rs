//! The content format's HKDF info label. (Every other label and AAD prefix EFS uses, the
//! keyring term's subkeys included, is in `efs_core::labels`.)
//!
//! Each constant is part of a stored format: DO NOT CHANGE any byte of any of them. A new
//! derivation gets a new constant (and a new version suffix), never an edited one.

/// HKDF info prefix of the content key and nonce base; the 56-byte content header follows it.
/// DO NOT CHANGE.
pub const CONTENT_V1: &[u8] = b"efs/content/v1";
