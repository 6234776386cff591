//! `ApiError`: every failure as an HTTP status and a stable code, with a message that
//! never carries internal details (those go to the log).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use efs_core::CoreError;
use efs_proto::{ErrorBody, codes};

use crate::auth::AuthError;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code ([`efs_proto::codes`]).
    pub code: &'static str,
    /// Public message.
    pub message: String,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
    /// The methods for `Allow` (405).
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    /// 400 bad_request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, message)
    }

    /// 401 unauthorized (one generic message for every cause).
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "a valid token is required: log in at /_efs/auth/challenge and /_efs/auth/token",
        )
    }

    /// 403 forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, codes::FORBIDDEN, message)
    }

    /// 404 not_found.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            "no such file or directory",
        )
    }

    /// 405, with the methods the resource takes in `Allow` (RFC 9110 §15.5.6; `None` where
    /// axum's method router adds it).
    pub fn method_not_allowed(allow: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            allow,
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                codes::METHOD_NOT_ALLOWED,
                message,
            )
        }
    }

    /// 503 audit_unavailable: the audit log cannot be written (fail closed).
    pub fn audit_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::AUDIT_UNAVAILABLE,
            "the audit log cannot be written, so nothing is served (until its disk is fixed or has room again: the server retries by itself)",
        )
    }

    /// 503 audit_unavailable for a change that was made: its commit is durable, only its
    /// audit entry could not be written (the log failed at that moment). The client must not
    /// take it for "nothing was done", as the plain refusal says.
    pub fn audit_unavailable_after_change() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::AUDIT_UNAVAILABLE,
            "the change was made (it is stored), but its audit entry could not be written: the server now refuses every request until the audit log works again (its disk fixed or given room: it retries by itself); look at the path before sending the change again",
        )
    }

    /// 500 internal; log the cause before calling.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            "internal error (details are in the server log)",
        )
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Path(p) => {
                ApiError::new(StatusCode::BAD_REQUEST, codes::INVALID_PATH, p.to_string())
            }
            CoreError::NotFound => ApiError::not_found(),
            CoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, codes::CONFLICT, m),
            CoreError::Precondition => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                codes::PRECONDITION_FAILED,
                "the request's condition (If-Match, If-None-Match or If-Unmodified-Since) does not hold",
            ),
            CoreError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::TOO_LARGE,
                "the body is larger than this server accepts",
            ),
            CoreError::BadCursor => ApiError::bad_request(efs_core::error::BAD_CURSOR),
            // A recursive delete whose caller's token or grant ended before its commit: the
            // same answer as any refused token (nothing was deleted).
            CoreError::Withdrawn => ApiError::unauthorized(),
            CoreError::SealLimit => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::UNAVAILABLE,
                "this filesystem's key must be rotated before more writes (the server started the rotation); retry later",
            ),
            CoreError::Contention => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::UNAVAILABLE,
                "too many concurrent writers on this path; retry",
            ),
            CoreError::IndexHold => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::INTEGRITY_HOLD,
                "this filesystem is on hold: its index failed its integrity check at start; an administrator must run efsctl fsck",
            ),
            // A full disk is the operator's to fix, not a bug: say so, with its own status,
            // instead of a vague 500. Almost always nothing was applied (the I/O-fault tests),
            // but an index commit that failed on the full disk has an unknown outcome: the
            // message claims only what is sure, and a retried PUT is safe either way.
            CoreError::Io(e) if is_storage_full(&e) => {
                tracing::error!(error = %e, "storage full: a write was refused");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    codes::INSUFFICIENT_STORAGE,
                    "the server's storage is full: the request failed (nothing changed, or in the rare case of a commit cut short, the change was made whole: never a mix); check before retrying a conditional request, once space is freed",
                )
            }
            CoreError::Decrypt => {
                tracing::error!("stored data failed its integrity check (tampered or corrupt)");
                ApiError::internal()
            }
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::internal()
            }
        }
    }
}

/// ENOSPC and EDQUOT (a quota is a full disk for this process).
fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        tracing::debug!(reason = e.internal_reason(), "authentication refused");
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut a = ApiError::new(status, e.code(), e.public_message());
        a.retry_after = e.retry_after_secs();
        a
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Some(allow) = self.allow {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_full_is_507_with_its_own_code() {
        for errno in [28 /* ENOSPC */, 122 /* EDQUOT */] {
            let e = ApiError::from(CoreError::Io(std::io::Error::from_raw_os_error(errno)));
            assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
            assert_eq!(e.code, codes::INSUFFICIENT_STORAGE);
            assert!(!e.message.contains("os error"), "no internal detail");
        }
        // Other I/O errors stay internal.
        let e = ApiError::from(CoreError::Io(std::io::Error::from_raw_os_error(5)));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
