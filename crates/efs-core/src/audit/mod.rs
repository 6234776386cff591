//! The tamper-evident audit log: who did what, to which path, from where, with what result.
//!
//! Every entry is one line of an append-only file under `DATA/system/audit/`, chained to the
//! previous entry by an HMAC, so that editing, inserting, deleting or reordering lines breaks
//! the chain at the first changed entry; the head of the chain is also kept in a separate
//! authenticated anchor (`HEAD`), so that cutting entries off the end is detected too.
//! Everything that names a person or a path is inside an AES-256-GCM sealed body. The byte
//! layout, the keys and what is and is not detected are in docs/audit.md.
//!
//! - `line`: the line format, the MAC and the sealing (frozen, versioned).
//! - `writer`: [`AuditLog`], the one writer per data dir (inline appends, fsync in groups,
//!   fail closed).
//! - [`read`]: [`verify`], [`show`] and [`show_last`], for `efsctl audit`.

pub(crate) mod line;
pub mod read;
pub(crate) mod writer;

use efs_format::Key32;
use serde::{Deserialize, Serialize};

use crate::labels;

pub use read::{
    AnchorCheck, Filter, PathTrack, Problem, ShowReport, ShownEntry, VerifyReport, check_filter,
    show, show_last, verify,
};
pub use writer::{AuditLog, AuditMark, AuditOptions, RECOVER_FIRST, RECOVER_MAX};

/// The directory of the audit log inside the data dir.
pub const AUDIT_DIR: &str = "system/audit";

/// What happened. Encoded inside the sealed body by its position in this list: DO NOT
/// reorder; add new kinds at the end only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `/_efs/auth/token` issued a token.
    LoginOk,
    /// `/_efs/auth/token` refused (the reason is in `detail`).
    LoginFailed,
    /// `/_efs/auth/token` refused because of earlier failures.
    LoginRateLimited,
    /// `/_efs/auth/refresh` issued a token.
    RefreshOk,
    /// `/_efs/auth/refresh` refused.
    RefreshFailed,
    /// A token presented with a request was refused.
    TokenRejected,
    /// `GET` of a file.
    Read,
    /// `HEAD` of a file or directory.
    Stat,
    /// `PUT`/`POST` of a file.
    Write,
    /// `DELETE`.
    Delete,
    /// `MOVE` or `/_efs/move` (`path` → `to`).
    Move,
    /// Directory creation.
    Mkdir,
    /// `GET /dir/`.
    List,
    /// An `efsctl` command (`detail` names it).
    Admin,
    /// A request refused before it named a known operation (bad method, bad path).
    Other,
    /// Entries of refusals of callers that proved nobody that were not written one by one
    /// (over the server's budget for them): `client` is the address (IPv6: its /64) or
    /// `other addresses`, `detail` says how many, in the minute before the entry's time.
    Unrecorded,
}

impl Action {
    /// Every action, in the order of the enum.
    pub const ALL: [Action; 16] = [
        Action::LoginOk,
        Action::LoginFailed,
        Action::LoginRateLimited,
        Action::RefreshOk,
        Action::RefreshFailed,
        Action::TokenRejected,
        Action::Read,
        Action::Stat,
        Action::Write,
        Action::Delete,
        Action::Move,
        Action::Mkdir,
        Action::List,
        Action::Admin,
        Action::Other,
        Action::Unrecorded,
    ];

    /// The action named `name` ([`Action::name`]).
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The kebab-case name, as `efsctl audit show` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Action::LoginOk => "login-ok",
            Action::LoginFailed => "login-failed",
            Action::LoginRateLimited => "login-rate-limited",
            Action::RefreshOk => "refresh-ok",
            Action::RefreshFailed => "refresh-failed",
            Action::TokenRejected => "token-rejected",
            Action::Read => "read",
            Action::Stat => "stat",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Move => "move",
            Action::Mkdir => "mkdir",
            Action::List => "list",
            Action::Admin => "admin",
            Action::Other => "other",
            Action::Unrecorded => "unrecorded",
        }
    }
}

/// One audit record: the sealed body of an entry. Field order is part of the format
/// (postcard encodes fields in order): DO NOT reorder; a new field means a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What happened.
    pub action: Action,
    /// The user (as claimed for a login, from the verified token otherwise; for admin
    /// commands the operator, e.g. `uid:0`).
    pub user: Option<String>,
    /// The filesystem.
    pub fs: Option<String>,
    /// The path (normalised, absolute), when the request named one.
    pub path: Option<String>,
    /// The destination of a move.
    pub to: Option<String>,
    /// The client's address (IP for HTTP, `admin-socket` / `local` for efsctl).
    pub client: Option<String>,
    /// HTTP status for requests; for admin commands 200 (done) or 400/500 (refused, failed).
    pub status: u16,
    /// A short reason or the admin command (no secret ever goes here).
    pub detail: Option<String>,
}

impl Record {
    /// A record of `action` with `status` and nothing else set.
    pub fn new(action: Action, status: u16) -> Self {
        Self {
            action,
            user: None,
            fs: None,
            path: None,
            to: None,
            client: None,
            status,
            detail: None,
        }
    }
}

/// The audit log's keys, derived from the starter key. No `Debug`, no `Clone`: they are
/// [`Key32`]s, zeroized on drop.
pub struct AuditKeys {
    /// Keys the hash chain.
    pub(crate) mac: Key32,
    /// Input of each file's body key.
    pub(crate) record: Key32,
    /// Keys the head anchor.
    pub(crate) head: Key32,
}

impl AuditKeys {
    /// Derives the three audit keys from the audit root: a random 32-byte key the data dir
    /// keeps as a sealed system secret (`audit-root`), so that `rekey-starter` carries it
    /// over unchanged and the log written before a re-keying still verifies after it.
    pub fn derive(root: &Key32) -> Self {
        Self {
            mac: root.derive(b"", labels::AUDIT_MAC),
            record: root.derive(b"", labels::AUDIT_RECORD),
            head: root.derive(b"", labels::AUDIT_HEAD),
        }
    }

    /// An explicit copy (the writer owns one, readers another).
    pub fn duplicate(&self) -> Self {
        Self {
            mac: self.mac.duplicate(),
            record: self.record.duplicate(),
            head: self.head.duplicate(),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests(seed: u8) -> Self {
        Self {
            mac: Key32::from_bytes([seed; 32]),
            record: Key32::from_bytes([seed.wrapping_add(1); 32]),
            head: Key32::from_bytes([seed.wrapping_add(2); 32]),
        }
    }
}

/// Why the audit log refused an entry.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A write or an fsync failed earlier: the log is closed to new entries (fail closed)
    /// until [`AuditLog::recover`] succeeds or the process restarts.
    #[error("the audit log cannot be written (see the server log); refusing to act unrecorded")]
    Failed,
}

/// Current time in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
