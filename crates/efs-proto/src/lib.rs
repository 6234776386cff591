//! Wire types of the EFS HTTP API, shared by the server and the client SDK.
//!
//! Everything here is plain serde data: JSON bodies and the stable error codes that
//! `{"error": code, "message": text}` carries. Codes are part of the API contract: a
//! client may match on them, so they are never renamed, only added.

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

/// The reserved first path segment under which all control routes live.
pub const RESERVED_PREFIX: &str = "_efs";

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// A stable, machine-readable code (see [`codes`]).
    pub error: String,
    /// A human-readable explanation that never contains internal details.
    pub message: String,
}

/// Stable error codes.
pub mod codes {
    /// 400: the request is malformed (bad JSON, bad header).
    pub const BAD_REQUEST: &str = "bad_request";
    /// 400: the path is not a valid EFS path.
    pub const INVALID_PATH: &str = "invalid_path";
    /// 400: the user has several filesystems and named none.
    pub const FS_REQUIRED: &str = "fs_required";
    /// 401: no valid login (missing, expired, tampered or revoked token; failed login).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// 403: the caller is logged in but may not do this (read-only grant writing).
    pub const FORBIDDEN: &str = "forbidden";
    /// 404: no such file or directory.
    pub const NOT_FOUND: &str = "not_found";
    /// 405: the method is not allowed on this path.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// 408: a request body stopped arriving (an upload: no byte for the server's
    /// `--body-timeout`; a JSON body: not complete within it); nothing was done.
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    /// 409: the operation conflicts with what exists (a file where a directory is needed,
    /// a non-empty directory, a move into itself).
    pub const CONFLICT: &str = "conflict";
    /// 412: an `If-Match` / `If-None-Match` precondition failed.
    pub const PRECONDITION_FAILED: &str = "precondition_failed";
    /// 413: the body is larger than the server's limit.
    pub const TOO_LARGE: &str = "too_large";
    /// 416: the `Range` cannot be satisfied.
    pub const RANGE_NOT_SATISFIABLE: &str = "range_not_satisfiable";
    /// 429: too many failed logins; retry later.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// 500: an internal error; details are in the server log only.
    pub const INTERNAL: &str = "internal";
    /// 503: the server is shutting down or a dependency is unavailable.
    pub const UNAVAILABLE: &str = "unavailable";
    /// 503: the server holds as many files open for uploads and downloads as its open-files
    /// limit allows (an upload past the inline size, a download of a blob); nothing was
    /// done. Retry after `Retry-After` seconds.
    pub const BUSY: &str = "busy";
    /// 503: the filesystem is on hold: its index failed its integrity check at start (an
    /// administrator runs `efsctl fsck`, then `efsctl fsck --accept-index`).
    pub const INTEGRITY_HOLD: &str = "integrity_hold";
    /// 507: the server's storage is full; nothing was written (the previous version of the
    /// file, if any, is unchanged). Retry once space is freed.
    pub const INSUFFICIENT_STORAGE: &str = "insufficient_storage";
    /// 503: the audit log cannot be written, so the server refuses to act unrecorded (fail
    /// closed) until the log can be written again (the server retries by itself).
    pub const AUDIT_UNAVAILABLE: &str = "audit_unavailable";
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// One entry of a directory listing (`GET /dir/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListEntry {
    /// The entry's name (one path segment).
    pub name: String,
    /// File or directory.
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last modification, RFC 3339 UTC.
    pub modified: String,
    /// The file version's strong ETag (quoted), absent for directories.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    /// The stored Content-Type, for files.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_type: Option<String>,
}

/// A page of a directory listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListPage {
    /// The listed directory, as a normalised path ending in `/`.
    pub path: String,
    /// Entries of this page, in the order of the index (stable, not alphabetical).
    pub entries: Vec<ListEntry>,
    /// Pass as `?cursor=` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_cursor: Option<String>,
}

/// Body of `POST /_efs/move`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MoveRequest {
    /// The existing file or directory.
    pub from: String,
    /// Its new path.
    pub to: String,
    /// Replace an existing file at `to` (never a directory). Default false: 409 if `to` exists.
    #[serde(default)]
    pub overwrite: bool,
}

/// Body of `GET /_efs/health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `"ok"` when the server serves requests.
    pub status: String,
    /// The server's version.
    pub version: String,
    /// Present only while uploads are refused: `"refused: <reason>"` (the free space is below
    /// the server's `--reserve-space`). Reads, deletes and logins are still served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads: Option<String>,
}
