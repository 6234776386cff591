//! The crate's one error type.

/// Everything that can go wrong while reading or writing an EFS format.
///
/// Every authentication failure (a flipped bit, a truncated or extended content, a reordered or
/// foreign segment, a wrong key, a wrong blob id, wrong associated data) is the same opaque
/// [`FormatError::Decrypt`], so that no error tells an attacker which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The data did not authenticate under this key and context.
    #[error("decryption failed: the data was altered, truncated, or the key is wrong")]
    Decrypt,
    /// The content header is not one this version can read (bad magic, unsupported version,
    /// cipher suite or segment size, non-zero reserved byte, wrong length). The header is public,
    /// so saying which field is wrong leaks nothing.
    #[error("malformed content header: {0}")]
    Header(&'static str),
    /// No plaintext length gives this ciphertext length: the content was truncated or extended
    /// (or the length recorded for it is wrong).
    #[error("impossible ciphertext length for an EFS content")]
    Length,
    /// A segment index at or past the content's segment count: a caller bug, not bad data.
    #[error("segment index out of range")]
    Range,
}
