//! The EFS content format and its small cryptographic helpers.
//!
//! This crate owns every byte layout that EFS writes with a key, and nothing else: no I/O, no
//! async, no policy about where bytes go. The byte-by-byte description, with its rationale and
//! test vectors, is `docs/format.md`.
//!
//! - [`labels`]: the content format's HKDF info label (DO NOT CHANGE it; the rest are in efs-core).
//! - [`secret`]: [`Key32`], a 32-byte key that zeroizes on drop and derives subkeys with HKDF.
//! - [`stream`]: the chunked content format (the STREAM construction of age and C2SP
//!   chunked encryption, with AES-256-GCM): [`Encryptor`] writes it segment by segment,
//!   [`Decryptor`] reads any segment in any order.
//! - [`wrap`]: [`seal`] and [`open`] for small secrets and records (AES-256-GCM with a random
//!   nonce), and [`wrap::Sealer`] to reuse one expanded key.
//! - [`FormatError`]: the one error type; every authentication failure is
//!   [`FormatError::Decrypt`].
//!
//! Primitives come from `aws-lc-rs` (AES-256-GCM, HKDF-SHA256, HMAC-SHA256, randomness),
//! whose keyed states are cleansed when dropped; this crate only composes them.

#![warn(missing_docs)]

mod error;
pub mod labels;
pub mod secret;
pub mod stream;
pub mod wrap;

pub use error::FormatError;
pub use secret::{Key32, MacKey};
pub use stream::{
    Decryptor, Encryptor, HEADER_LEN, SEGMENT_SIZE, TAG_LEN, encrypted_len, plaintext_len,
};
pub use wrap::{Sealer, WRAP_OVERHEAD, open, seal};
