//! The SDK's one error type: what went wrong, whether retrying can help, and what to do.
//!
//! Server errors arrive as `{"error": code, "message": text}` and are mapped by their stable
//! code (see [`efs_proto::codes`]), falling back on the HTTP status when there is no body
//! (`HEAD`). No variant ever carries a key, a token or a signature.

use efs_proto::codes;

/// Everything an SDK call can fail with.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The login was refused, or the server refused the token (401).
    #[error("login refused or token invalid")]
    Unauthorized,
    /// The server refused the token of a request whose body is a stream (an upload with
    /// [`Client::upload`](crate::Client::upload)), which cannot be sent twice: the token
    /// was revoked, the user's grants changed, or it expired. A new login then succeeded, so
    /// the same request made again with a fresh body can succeed.
    #[error(
        "the server refused the token (revoked, grants changed or expired); a new login succeeded, but the request's body was a stream and could not be sent twice"
    )]
    TokenRefusedNotResent,
    /// Logged in, but not allowed to do this, e.g. a read-only grant writing (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such file or directory (404).
    #[error("no such file or directory")]
    NotFound,
    /// The operation conflicts with what exists: a file where a directory is needed or the
    /// reverse, a non-empty directory, an existing destination (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// An `If-Match` / create-only condition did not hold (412).
    #[error("precondition failed: the file changed, or exists already")]
    PreconditionFailed,
    /// The body is larger than the server accepts (413).
    #[error("the file is larger than the server accepts")]
    TooLarge,
    /// The requested byte range is outside the file (416).
    #[error("the requested range is outside the file")]
    RangeNotSatisfiable,
    /// The path is not a valid EFS path (400 `invalid_path`).
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// The user has several filesystems and the login named none (400 `fs_required`).
    #[error("this user has several filesystems and none was chosen")]
    FsRequired,
    /// Too many failed logins for this user or address (429).
    #[error("too many failed logins{}", retry_after_text(*.retry_after_secs))]
    RateLimited {
        /// The server's `Retry-After`, in seconds.
        retry_after_secs: Option<u64>,
    },
    /// Any other answer of the server. `code` is one of [`crate::codes`] (or empty).
    #[error("server error {status} ({code}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The stable error code (empty when the answer had no JSON body).
        code: String,
        /// The server's message.
        message: String,
    },
    /// A download was cut short because the server ended the access of the login it was
    /// sent to while it was sent: a revoke of the user's tokens, a change of its grants or
    /// bound certificate, or its deletion (the server checks again while it sends, and then
    /// closes the connection or resets the stream; docs/protocol.md). Found out by asking the
    /// server once more with the same token after the transfer broke off. What was written
    /// is incomplete. Transient: a new login decides whether the user may still read it
    /// ([`Client::download_file`](crate::Client::download_file) tries again with one).
    #[error("{}", access_ended_text(*.written, *.expected))]
    AccessEnded {
        /// Bytes written before the cut.
        written: u64,
        /// Bytes the answer announced (of the range asked for), when it said.
        expected: Option<u64>,
    },
    /// Connection-level failure (refused, reset, timeout, truncated transfer): transient.
    #[error("connection failed: {0}")]
    Transport(String),
    /// TLS verification failed: the certificate is not trusted / the pinned fingerprint changed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A key could not be read or used (file, format, passphrase, agent).
    #[error("key: {0}")]
    Key(String),
    /// The server's answer is not one an EFS server gives (e.g. a listed name that is not
    /// one path segment): refused rather than trusted.
    #[error("invalid answer from the server: {0}")]
    InvalidAnswer(String),
    /// A local file could not be read or written. The I/O error is in the message, so it
    /// is not also the `source()`: a printer that walks the chain (anyhow's `{:#}`) showed
    /// it twice.
    #[error("local I/O: {0}")]
    Io(std::io::Error),
    /// The client is configured wrongly (URL, user name, missing signer, certificate file,
    /// a server identity not of the form `efs-<32 hex digits>`).
    #[error("configuration: {0}")]
    Config(String),
    /// The server's challenge named another server identity than the one pinned with
    /// [`ClientBuilder::server_id`](crate::ClientBuilder::server_id): nothing was signed. A
    /// security event: this server may be relaying another server's challenge to obtain a
    /// login there, or the URL now leads to another server (or the pinned server's signing
    /// key was rotated). Not transient.
    #[error(
        "the server identifies as {got}, not the expected {expected}: refusing to sign its challenge"
    )]
    ServerIdentityMismatch {
        /// The identity pinned.
        expected: String,
        /// The identity the server's challenge named.
        got: String,
    },
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

fn access_ended_text(written: u64, expected: Option<u64>) -> String {
    let of = match expected {
        Some(n) => format!(" of {n}"),
        None => String::new(),
    };
    format!(
        "the server ended this login's access while sending the file (a revoke, a change of \
         the user's grants, or its deletion): cut short after {written}{of} bytes"
    )
}

fn retry_after_text(s: Option<u64>) -> String {
    match s {
        Some(s) => format!("; retry after {s} s"),
        None => String::new(),
    }
}

impl Error {
    /// Whether trying the same request again later can succeed: connection failures,
    /// 502/503/504, rate limiting, and a download cut short by the end of its login's
    /// access (after a new login, which decides).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_) | Error::RateLimited { .. } | Error::AccessEnded { .. } => true,
            // A held filesystem or a failed audit log answer 503 too, but only an operator
            // ends them (freeing space or fixing the disk, after which the server's audit
            // log recovers by itself): the client's short retries would only delay the error.
            Error::Server { status, code, .. } => {
                matches!(status, 502..=504)
                    && code != codes::INTEGRITY_HOLD
                    && code != codes::AUDIT_UNAVAILABLE
            }
            _ => false,
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Error::Unauthorized => {
                "check the user name, the key, and that the operator granted this filesystem"
            }
            Error::TokenRefusedNotResent => "make the request again: the new token is in place",
            Error::AccessEnded { .. } => {
                "what was written is incomplete; make the request again: a new login decides whether this user may still read it"
            }
            Error::Forbidden(_) => {
                "this login may only read here: ask the operator for write access"
            }
            Error::NotFound => "check the path; list the parent directory to see what exists",
            Error::Conflict(_) => {
                "a file is where a directory is needed (or the reverse), the directory is not empty, or the destination exists"
            }
            Error::PreconditionFailed => {
                "someone else changed or created the file: read it again, then retry"
            }
            Error::TooLarge => "the server's --max-body-size is smaller than this file",
            Error::RangeNotSatisfiable => "the file is shorter than the requested range",
            Error::InvalidPath(_) => {
                "paths are '/'-separated UTF-8 without empty, '.' or '..' segments, control characters or backslashes, and may not start with /_efs"
            }
            Error::FsRequired => "this user has several filesystems: choose one with --fs",
            Error::RateLimited { .. } => {
                "wait until the window ends; repeated failures usually mean a wrong key or user name"
            }
            Error::Server { code, .. } if code == codes::INTEGRITY_HOLD => {
                "the filesystem is on hold: its index failed its integrity check at the server's start; the operator must run efsctl fsck (retrying will not help)"
            }
            Error::Server { code, .. } if code == codes::AUDIT_UNAVAILABLE => {
                "the server cannot write its audit log and refuses to act until the operator frees space on or fixes its disk; it then recovers by itself: retry later"
            }
            Error::Server { code, .. } if code == codes::INSUFFICIENT_STORAGE => {
                "the server refuses new data: its disk is full, or below the free space it keeps in reserve; nothing was written (reads and deletes still work); retry once the operator has freed space"
            }
            Error::Server { status: 503, .. } => "the server is busy or restarting: retry shortly",
            Error::Server { status: 500, .. } => {
                "the server failed internally: its log has the details"
            }
            Error::Server { .. } => return None,
            Error::Transport(_) => "check the URL and that the server is running and reachable",
            Error::Tls(_) => {
                "the server's certificate is not the one trusted: check it with the operator (the server prints its fingerprint at start)"
            }
            Error::Key(_) => {
                "use an Ed25519 key (OpenSSH or PKCS#8 PEM); for an encrypted one set its passphrase"
            }
            Error::InvalidAnswer(_) => {
                "no EFS server answers this: check that the remote's URL names an EFS server you trust"
            }
            Error::ServerIdentityMismatch { .. } => {
                "the server is not the one pinned for this remote: check with the operator before trusting it (a new identity after a signing-key rotation is pinned again on purpose)"
            }
            Error::Io(_) => return None,
            Error::Config(_) => return None,
        })
    }

    /// Maps an error answer of the server (status, headers, body) to the enum.
    pub(crate) fn from_response(status: u16, body: &[u8], retry_after_secs: Option<u64>) -> Error {
        let parsed: Option<efs_proto::ErrorBody> = serde_json::from_slice(body).ok();
        let (code, message) = match parsed {
            Some(b) => (b.error, b.message),
            None => (String::new(), String::new()),
        };
        let by_code = match code.as_str() {
            codes::UNAUTHORIZED => Some(Error::Unauthorized),
            codes::FORBIDDEN => Some(Error::Forbidden(message.clone())),
            codes::NOT_FOUND => Some(Error::NotFound),
            codes::CONFLICT => Some(Error::Conflict(message.clone())),
            codes::PRECONDITION_FAILED => Some(Error::PreconditionFailed),
            codes::TOO_LARGE => Some(Error::TooLarge),
            codes::RANGE_NOT_SATISFIABLE => Some(Error::RangeNotSatisfiable),
            codes::INVALID_PATH => Some(Error::InvalidPath(message.clone())),
            codes::FS_REQUIRED => Some(Error::FsRequired),
            codes::RATE_LIMITED => Some(Error::RateLimited { retry_after_secs }),
            _ => None,
        };
        if let Some(e) = by_code {
            return e;
        }
        if !code.is_empty() {
            return Error::Server {
                status,
                code,
                message,
            };
        }
        // No JSON body (a HEAD answer, a proxy's page): the status decides.
        match status {
            401 => Error::Unauthorized,
            403 => Error::Forbidden(message),
            404 => Error::NotFound,
            // A HEAD's 409 has no body to say which conflict: what a lookup meets is a file
            // on the way ("conflict: " and nothing else was printed).
            409 => Error::Conflict(
                "a file is where a directory is needed on this path (or the reverse)".into(),
            ),
            412 => Error::PreconditionFailed,
            413 => Error::TooLarge,
            416 => Error::RangeNotSatisfiable,
            429 => Error::RateLimited { retry_after_secs },
            _ => Error::Server {
                status,
                code,
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            },
        }
    }
}

/// The SDK's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integrity_hold_or_a_failed_audit_log_is_not_retried() {
        for code in ["integrity_hold", "audit_unavailable"] {
            let body = format!(r#"{{"error":"{code}","message":"x"}}"#);
            let e = Error::from_response(503, body.as_bytes(), None);
            assert!(!e.is_transient(), "{code}");
            assert!(e.hint().unwrap().contains("operator"), "{code}");
        }
        let busy = Error::from_response(503, br#"{"error":"unavailable","message":"x"}"#, None);
        assert!(busy.is_transient());
    }

    /// A 409 without a body (a HEAD answer) says which conflict a lookup meets: it was
    /// printed as "conflict: " and nothing more.
    #[test]
    fn a_conflict_without_a_body_says_what_it_is() {
        let e = Error::from_response(409, b"", None);
        assert!(matches!(&e, Error::Conflict(m) if m.contains("a file is where a directory")));
        assert!(!e.to_string().ends_with(": "), "{e}");
    }

    #[test]
    fn maps_codes_from_json() {
        let e = |status, body: &str| Error::from_response(status, body.as_bytes(), Some(7));
        assert!(matches!(
            e(401, r#"{"error":"unauthorized","message":"x"}"#),
            Error::Unauthorized
        ));
        assert!(
            matches!(e(403, r#"{"error":"forbidden","message":"read-only"}"#), Error::Forbidden(m) if m == "read-only")
        );
        assert!(matches!(
            e(404, r#"{"error":"not_found","message":"x"}"#),
            Error::NotFound
        ));
        assert!(
            matches!(e(409, r#"{"error":"conflict","message":"not empty"}"#), Error::Conflict(m) if m == "not empty")
        );
        assert!(matches!(
            e(412, r#"{"error":"precondition_failed","message":"x"}"#),
            Error::PreconditionFailed
        ));
        assert!(matches!(
            e(413, r#"{"error":"too_large","message":"x"}"#),
            Error::TooLarge
        ));
        assert!(matches!(
            e(416, r#"{"error":"range_not_satisfiable","message":"x"}"#),
            Error::RangeNotSatisfiable
        ));
        assert!(
            matches!(e(400, r#"{"error":"invalid_path","message":"dot"}"#), Error::InvalidPath(m) if m == "dot")
        );
        assert!(matches!(
            e(400, r#"{"error":"fs_required","message":"x"}"#),
            Error::FsRequired
        ));
        assert!(matches!(
            e(429, r#"{"error":"rate_limited","message":"x"}"#),
            Error::RateLimited {
                retry_after_secs: Some(7)
            }
        ));
        let s = e(503, r#"{"error":"unavailable","message":"busy"}"#);
        assert!(
            matches!(&s, Error::Server { status: 503, code, message } if code == "unavailable" && message == "busy")
        );
        assert!(s.is_transient());
        let s = e(500, r#"{"error":"internal","message":"internal error"}"#);
        assert!(!s.is_transient());
        // An unknown code keeps its code and message.
        assert!(
            matches!(e(418, r#"{"error":"teapot","message":"short"}"#), Error::Server { status: 418, code, .. } if code == "teapot")
        );
    }

    #[test]
    fn maps_status_without_body() {
        assert!(matches!(
            Error::from_response(404, b"", None),
            Error::NotFound
        ));
        assert!(matches!(
            Error::from_response(409, b"", None),
            Error::Conflict(_)
        ));
        assert!(matches!(
            Error::from_response(401, b"", None),
            Error::Unauthorized
        ));
        let e = Error::from_response(502, b"<html>bad gateway</html>", None);
        assert!(matches!(e, Error::Server { status: 502, .. }));
        assert!(e.is_transient());
    }

    #[test]
    fn transient_and_hints() {
        assert!(Error::Transport("reset".into()).is_transient());
        assert!(
            Error::RateLimited {
                retry_after_secs: None
            }
            .is_transient()
        );
        assert!(!Error::Unauthorized.is_transient());
        assert!(!Error::Tls("x".into()).is_transient());
        assert!(Error::Unauthorized.hint().unwrap().contains("key"));
        assert!(Error::FsRequired.hint().unwrap().contains("--fs"));
        assert_eq!(
            Error::RateLimited {
                retry_after_secs: Some(37)
            }
            .to_string(),
            "too many failed logins; retry after 37 s"
        );
    }
}
