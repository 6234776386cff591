//! Every HKDF info label and AAD domain label EFS uses, in one place.
//!
//! Each constant is part of a stored format: DO NOT CHANGE any byte of any of them. A new
//! derivation gets a new constant (and a new version suffix), never an edited one.

/// HKDF info prefix of the content key and nonce base; the 56-byte content header follows it.
/// DO NOT CHANGE.
pub const CONTENT_V1: &[u8] = b"efs/content/v1";

/// HKDF info of the keyring-term subkey that wraps data keys. DO NOT CHANGE.
pub const TERM_DATA_KEY_WRAP_V1: &[u8] = b"efs/term/data-key-wrap/v1";

/// HKDF info of the keyring-term subkey that computes name tags (keyed hashes of names).
/// DO NOT CHANGE.
pub const TERM_NAME_TAG_V1: &[u8] = b"efs/term/name-tag/v1";

/// HKDF info of the keyring-term subkey that encrypts names. DO NOT CHANGE.
pub const TERM_NAME_ENC_V1: &[u8] = b"efs/term/name-enc/v1";

/// HKDF info of the keyring-term subkey that encrypts index records. DO NOT CHANGE.
pub const TERM_INDEX_RECORD_V1: &[u8] = b"efs/term/index-record/v1";
