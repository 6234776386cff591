//! The core's error type. Crypto failures collapse into one opaque variant; messages never
//! carry a path, a name or a key.

use crate::path::PathError;

/// Result with [`CoreError`].
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Everything a filesystem operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The path is invalid.
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
    /// No such file or directory.
    #[error("not found")]
    NotFound,
    /// A file is in the way where a directory is needed, or the reverse.
    #[error("{0}")]
    Conflict(&'static str),
    /// An `If-Match` / `If-None-Match` precondition failed.
    #[error("precondition failed")]
    Precondition,
    /// The content is larger than allowed.
    #[error("too large")]
    TooLarge,
    /// Something did not decrypt: altered, truncated or swapped data, or a wrong key.
    #[error("decryption failed: stored data was altered or does not belong here")]
    Decrypt,
    /// Stored data is structurally wrong (after it decrypted, or outside encryption).
    #[error("corrupt stored data: {0}")]
    Corrupt(&'static str),
    /// An object (user, filesystem) already exists.
    #[error("{0} already exists")]
    Exists(&'static str),
    /// A name (user, filesystem) is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A command refused until something else is done first; the message says what (for
    /// `retire-terms`: a rotation to finish, records under an older term, damaged records,
    /// room for the new index). efsctl exits 5 for it.
    #[error("{0}")]
    Refused(String),
    /// The index storage failed.
    #[error("index error: {0}")]
    Index(String),
    /// An I/O error (blob store, files).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Key parts problems.
    #[error(transparent)]
    Key(#[from] crate::keyparts::KeyError),
    /// The filesystem is on hold: its index failed the check against its digest (records
    /// changed, removed, added or put back while the server was stopped) and an operator
    /// has not yet decided what to trust (`efsctl fsck --accept-index`).
    #[error("this filesystem is on hold: its index failed its integrity check")]
    IndexHold,
    /// The system database does not match its digest (or has none): a user, grant,
    /// filesystem or secret was changed, removed, added or put back outside EFS. Nothing
    /// opens the data dir until an operator accepts it as it is (`efsctl accept-system`).
    #[error(
        "{0}: nothing is served; inspect the data dir, then run `efsctl accept-system` to trust it as it is"
    )]
    SystemHold(String),
    /// The system database has rows that do not decrypt under this data dir's keys: rows
    /// EFS did not write. They are never accepted (`efsctl accept-system` refuses them too):
    /// the data dir must be restored from a copy the operator trusts.
    #[error(
        "{0}: nothing is served; these rows cannot be accepted (not even by `efsctl accept-system`): restore the data dir from a copy you trust"
    )]
    SystemRowsCorrupt(String),
    /// Too many concurrent conflicting writers; the operation was not applied.
    #[error("too much contention on this path; retry")]
    Contention,
    /// The filesystem's current key term has sealed [`crate::fs::SEAL_LIMIT`] records, the
    /// most AES-GCM with random nonces allows one key; nothing was written. A key rotation
    /// (started by the server itself past half of it) gives writes a new term.
    #[error(
        "the filesystem's current key has sealed as many records as it may (2^32): writes wait for a key rotation (efsctl rotate-key)"
    )]
    SealLimit,
    /// The caller's access was withdrawn before an operation (a recursive delete) was
    /// committed: nothing of it was done.
    #[error("access withdrawn before the operation was committed; nothing was done")]
    Withdrawn,
    /// A record, data key or backup names a keyring term that `efsctl retire-terms` removed:
    /// its key is gone for good, so what it sealed no longer opens here.
    #[error(
        "sealed under key term {term}, retired at {}: a copy from before the retirement? (efsctl retire-terms removed that term's key; only a backup made with --include-keys carries its own keyring)",
        crate::admin::rfc3339_ms(*retired_ms)
    )]
    RetiredTerm {
        /// The term named.
        term: u32,
        /// When it was retired (Unix ms).
        retired_ms: i64,
    },
    /// A listing cursor that is not one of this directory's pages.
    #[error("{}", BAD_CURSOR)]
    BadCursor,
}

/// The answer to a listing cursor that does not open. A cursor from before a key retirement
/// (its cursor key is gone with the tag term) cannot be told from a forged one, so the
/// message names both ways out.
pub const BAD_CURSOR: &str = "invalid cursor: use the next_cursor of a page of this directory, or list from the start (cursors from before a key retirement no longer open)";

impl From<efs_format::FormatError> for CoreError {
    fn from(_: efs_format::FormatError) -> Self {
        CoreError::Decrypt
    }
}
