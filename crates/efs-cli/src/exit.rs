//! Exit codes a script can rely on, and how an error becomes one.
//!
//! The codes are part of the command line's interface (documented in `efs --help` and
//! docs/cli.md): never renumber them.

use std::fmt;

/// Success.
pub(crate) const OK: u8 = 0;
/// Any other error.
pub(crate) const ERROR: u8 = 1;
/// Bad usage: options, arguments, an unknown remote, an invalid path.
pub(crate) const USAGE: u8 = 2;
/// No such file, directory or remote path.
pub(crate) const NOT_FOUND: u8 = 3;
/// Login refused, key unusable, or permission denied (401/403); also a token refused during
/// an upload of a stream that could not be sent again, after a new login succeeded, and a
/// download cut short because the server ended the login's access while sending it.
pub(crate) const AUTH: u8 = 4;
/// Conflict or failed precondition: the destination exists, a directory is not empty, the
/// file changed (409/412).
pub(crate) const CONFLICT: u8 = 5;
/// TLS trust failure: the certificate changed or is not trusted.
pub(crate) const TLS: u8 = 6;
/// Network: connection failures or busy server, after the retries were used up.
pub(crate) const NETWORK: u8 = 7;
/// `efs cp` or `efs tar` stopped by SIGHUP (its terminal went away), unless started under
/// `nohup` (128 + 1).
pub(crate) const HANGUP: u8 = 129;
/// `efs cp` or `efs tar` stopped by SIGINT (Ctrl-C), as a shell reports a process it killed
/// (128 + 2).
pub(crate) const INTERRUPTED: u8 = 130;
/// `efs cp` or `efs tar` stopped by SIGTERM (128 + 15).
pub(crate) const TERMINATED: u8 = 143;

/// Writes one line to stdout (what [`outln!`] expands to). A reader that went away (`efs ls
/// | head`) ends the program quietly with exit 0, as `efs cat` does: what it wanted, it has.
/// `println!` panicked there. Any other failure to write stdout is exit 1 with a message.
pub(crate) fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out_result(out.write_fmt(args).and_then(|()| out.write_all(b"\n")));
}

/// Writes `bytes` to stdout and flushes it, ending like [`out_line`] when that fails
/// (`efs completions bash | head -1`: clap_complete's own writing panicked there).
pub(crate) fn out_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out_result(out.write_all(bytes).and_then(|()| out.flush()));
}

fn out_result(r: std::io::Result<()>) {
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(i32::from(OK));
        }
        eprintln!("efs: error: writing to stdout: {e}");
        std::process::exit(i32::from(ERROR));
    }
}

/// A line of a report that comes before the command's own exit code (`efs cp`'s plan and
/// summary): a reader that went away, or any error writing, ends only the report, not the
/// command, whose failures must still show in its exit status.
pub(crate) fn report_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
}

/// [`report_line`] with `println!`'s syntax.
macro_rules! reportln {
    ($($arg:tt)*) => {
        $crate::exit::report_line(format_args!($($arg)*))
    };
}
pub(crate) use reportln;

/// `println!` for command output: see [`out_line`].
macro_rules! outln {
    () => {
        $crate::exit::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::exit::out_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// An error of the command line itself, with its exit code and, maybe, what to do.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: u8,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error with exit code `code`.
pub(crate) fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    Failure {
        code,
        message: message.into(),
        hint: None,
    }
    .into()
}

/// An error with exit code `code` and a hint printed on a second line.
pub(crate) fn fail_hint(
    code: u8,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> anyhow::Error {
    Failure {
        code,
        message: message.into(),
        hint: Some(hint.into()),
    }
    .into()
}

/// A usage error (exit 2).
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    fail(USAGE, message)
}

/// The SDK error inside `err`, if any.
pub(crate) fn sdk_error(err: &anyhow::Error) -> Option<&efs_client::Error> {
    err.chain()
        .find_map(|c| c.downcast_ref::<efs_client::Error>())
}

/// The exit code for `err`: the first cause that says something decides.
pub(crate) fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code;
        }
        if let Some(e) = cause.downcast_ref::<efs_client::Error>() {
            return sdk_code(e);
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>()
            && let Some(code) = io_code(e)
        {
            return code;
        }
    }
    ERROR
}

/// Whether `e` is a TLS trust failure. Besides [`efs_client::Error::Tls`], a connection
/// failure whose text is rustls's "invalid peer certificate" (the SDK reports some
/// certificate errors from deep in the connector as transport errors).
pub(crate) fn is_tls(e: &efs_client::Error) -> bool {
    match e {
        efs_client::Error::Tls(_) => true,
        efs_client::Error::Transport(m) => m.contains("invalid peer certificate"),
        _ => false,
    }
}

/// Whether `e` is a login refused before signing because the server named another identity
/// than the remote's pinned `server_id`.
pub(crate) fn is_identity_mismatch(e: &efs_client::Error) -> bool {
    matches!(e, efs_client::Error::ServerIdentityMismatch { .. })
}

pub(crate) fn sdk_code(e: &efs_client::Error) -> u8 {
    use efs_client::Error as E;
    if is_tls(e) {
        return TLS;
    }
    if matches!(e, E::AccessEnded { .. }) {
        // Transient for the SDK (a new login may be allowed), but what stopped it is access.
        return AUTH;
    }
    if e.is_transient() {
        return NETWORK;
    }
    match e {
        E::NotFound => NOT_FOUND,
        E::Unauthorized | E::TokenRefusedNotResent | E::Forbidden(_) | E::Key(_) => AUTH,
        E::Conflict(_) | E::PreconditionFailed => CONFLICT,
        E::Tls(_) => TLS,
        E::InvalidPath(_) | E::FsRequired => USAGE,
        E::Io(io) => io_code(io).unwrap_or(ERROR),
        _ => ERROR,
    }
}

fn io_code(e: &std::io::Error) -> Option<u8> {
    match e.kind() {
        std::io::ErrorKind::NotFound => Some(NOT_FOUND),
        std::io::ErrorKind::PermissionDenied => Some(AUTH),
        std::io::ErrorKind::AlreadyExists => Some(CONFLICT),
        _ => None,
    }
}

/// What to do about `err`, if anything is known.
pub(crate) fn hint_of(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.hint.clone();
        }
        if let Some(e) = cause.downcast_ref::<efs_client::Error>() {
            if is_tls(e) {
                return efs_client::Error::Tls(String::new())
                    .hint()
                    .map(str::to_owned);
            }
            return cli_hint(e).or_else(|| e.hint().map(str::to_owned));
        }
    }
    None
}

/// Hints that name what to type at this command line, where the SDK's would name options
/// that only `efs remote add` has.
fn cli_hint(e: &efs_client::Error) -> Option<String> {
    match e {
        efs_client::Error::FsRequired => Some(
            "the remote names no filesystem (--fs exists only on `efs remote add`): add one, \
             e.g. `efs remote remove NAME && efs remote add NAME URL --user USER --fs FILESYSTEM` \
             with the rest as `efs remote list` shows it, or write fs = \"FILESYSTEM\" under \
             [remotes.NAME] in config.toml; the operator can tell you the filesystem names"
                .to_owned(),
        ),
        e if is_identity_mismatch(e) => Some(
            "if the operator replaced the server's signing key (efsctl rotate-signing-key) and \
             gave you the new identity, remove the remote and add it again (the commands above), \
             then compare server_id in config.toml with it; otherwise do not log in: another \
             server may be relaying this one's login"
                .to_owned(),
        ),
        // The SDK's "check the URL …" fits a server never reached, not one that was.
        efs_client::Error::Transport(m) if !is_connect_failure(m) => Some(
            "the connection broke after the request was sent: check that the server is still \
             running; a command that changes files may have done part of its work, so look \
             (efs ls, efs stat) before running such a one again"
                .to_owned(),
        ),
        efs_client::Error::TokenRefusedNotResent => Some(
            "run the command again: the new login is in place (the key and the grant are fine)"
                .to_owned(),
        ),
        _ => None,
    }
}

/// Whether the text of an SDK transport error says that no connection was made at all (so
/// nothing was sent): the SDK writes "cannot connect" for a refused or unreachable server, a
/// failed TLS handshake or a connect timeout (then "timed out", with hyper's "client error
/// (Connect)" below it). Anything else broke a request already sent.
pub(crate) fn is_connect_failure(transport: &str) -> bool {
    transport.contains("cannot connect")
        || transport.contains("(Connect)")
        || transport.contains("connecting to")
        || transport.contains("TLS handshake")
}

/// `text` without the links to rustls's manual that its errors end with (`peer closed
/// connection without sending TLS close_notify: https://docs.rs/rustls/…`): they explain TLS
/// to a programmer, not what happened to a user.
pub(crate) fn without_docs_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(": https://docs.rs/") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find(|c: char| c.is_whitespace() || c == ')')
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Whether `e` is a write into a closed pipe: the download feeding one of the command's
/// inner pipes (remote → remote copies, `efs tar`) whose reader stopped. The reader's own
/// error says why; this one never is the cause.
pub(crate) fn is_broken_pipe(e: &efs_client::Error) -> bool {
    matches!(e, efs_client::Error::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn codes_follow_the_first_meaningful_cause() {
        let e: anyhow::Error = efs_client::Error::NotFound.into();
        assert_eq!(code_of(&e.context("reading x")), NOT_FOUND);
        let e: anyhow::Error = efs_client::Error::Unauthorized.into();
        assert_eq!(code_of(&e), AUTH);
        let e: anyhow::Error = efs_client::Error::Tls("changed".into()).into();
        assert_eq!(code_of(&e), TLS);
        let e: anyhow::Error = efs_client::Error::Transport("refused".into()).into();
        assert_eq!(code_of(&e), NETWORK);
        let e: anyhow::Error = efs_client::Error::Transport(
            "cannot connect: invalid peer certificate: Other(FingerprintMismatch)".into(),
        )
        .into();
        assert_eq!(code_of(&e), TLS);
        assert!(hint_of(&e).unwrap().contains("certificate"));
        let e: anyhow::Error = efs_client::Error::PreconditionFailed.into();
        assert_eq!(code_of(&e), CONFLICT);
        assert_eq!(code_of(&usage("bad")), USAGE);
        let r: Result<(), std::io::Error> = Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(code_of(&r.context("opening").unwrap_err()), NOT_FOUND);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), ERROR);
        let e: anyhow::Error = efs_client::Error::Unauthorized.into();
        assert!(hint_of(&e).unwrap().contains("key"));
    }

    #[test]
    fn rustls_manual_links_are_left_out() {
        assert_eq!(
            without_docs_links(
                "request failed: peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof (x)"
            ),
            "request failed: peer closed connection without sending TLS close_notify (x)"
        );
        assert_eq!(without_docs_links("reset"), "reset");
    }

    #[test]
    fn broken_pipe_is_recognised() {
        let e = efs_client::Error::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&e));
        let e = efs_client::Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!is_broken_pipe(&e));
        assert!(!is_broken_pipe(&efs_client::Error::NotFound));
    }

    /// Regression: "choose one with --fs" named an option that only `efs remote add` has,
    /// and a server-identity mismatch said nothing about what to do.
    #[test]
    fn login_hints_name_commands_that_exist() {
        let e = anyhow::Error::from(efs_client::Error::FsRequired);
        let h = hint_of(&e).unwrap();
        assert!(
            h.contains("efs remote add NAME URL --user USER --fs"),
            "{h}"
        );
        let e = anyhow::Error::from(efs_client::Error::ServerIdentityMismatch {
            expected: "efs-2".into(),
            got: "efs-1".into(),
        });
        let h = hint_of(&e).unwrap();
        assert!(
            h.contains("rotate-signing-key") && h.contains("relaying"),
            "{h}"
        );
    }
}
