//! Client SDK of EFS, the encrypted file store served over HTTPS.
//!
//! A [`Client`] logs in with an Ed25519 key ([`KeySigner`]) or through ssh-agent
//! ([`AgentSigner`]) using the protocol of `docs/protocol.md`, keeps its token fresh without
//! the caller noticing, and streams files up and down (`docs/api.md`). Server certificates
//! are trusted as [`Trust`] says: the system's roots, a CA file, or a pinned fingerprint.
//!
//! - [`error`]: [`Error`], one enum for every call, with [`Error::hint`].
//! - [`signer`]: [`Signer`], [`KeySigner`], [`AgentSigner`], [`load_signer`] (and
//!   [`signer::load_signer_with`] for an explicit agent socket), OpenSSH public-key helpers.
//! - [`trust`]: [`Trust`], fingerprints, [`fetch_server_certificate`] for trust-on-first-use.
//! - [`client`]: [`Client`] and its builder, options and entry types.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod auth;
pub mod client;
pub mod error;
mod http;
mod paths;
pub mod signer;
pub mod trust;

pub use client::{
    Client, ClientBuilder, DeleteOptions, Entry, EntryType, ListPage, PutOptions, RenameOptions,
    RetryPolicy, TokenInfo,
};
pub use error::{Error, Result};

/// Types of other crates that this crate's public signatures use, re-exported so that a
/// caller needs no dependency of its own at a matching version: [`bytes::Bytes`]
/// ([`Client::put_bytes`], [`Client::get_bytes`]), [`ed25519_dalek::SigningKey`]
/// ([`KeySigner::from_signing_key`]), and the server's stable error codes ([`codes`], the
/// values of [`Error::Server`]'s `code`).
pub use bytes::Bytes;
pub use ed25519_dalek::SigningKey;
pub use efs_proto::codes;
pub use signer::{AgentSigner, KeySigner, Signer, load_signer};
pub use trust::{Trust, fetch_server_certificate, format_fingerprint, parse_fingerprint};
