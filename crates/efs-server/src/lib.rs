//! efs-server: the HTTPS face of EFS.
//!
//! - [`server`]: start-up, TLS accept loop, graceful shutdown.
//! - [`app`]: the routes (control under `/_efs/`, files everywhere else).
//! - [`http_headers`]: the `Range`, `If-Range` and `If-Match` / `If-None-Match` parsers.
//! - [`auth`] / [`ratelimit`]: the Ed25519 challenge → signature → JWT login.
//! - [`cache`]: the decrypted-content cache.
//! - [`first_bytes`]: the deadline on a new connection's first bytes (idle clients).
//! - [`connections`]: connections per client address, and the idle timeout.
//! - [`linger`]: the lingering close of connections whose upload the shutdown cut.
//! - [`tls`]: certificates (given, or generated and sealed), mutual TLS.
//! - [`admin_socket`]: `efsctl` while the server runs.
//! - [`audit`]: the audit entries of logins and file requests (fail closed).
//! - [`audit_budget`]: how many entries requests that proved nobody may write.
//! - [`users`]: the in-memory user directory.
//! - [`error`]: `ApiError`, the one mapping from failures to HTTP.
//! - [`fsmetrics`]: per-filesystem gauges (files, bytes, rotation progress).
//! - [`metrics_token`]: the bearer token `/_efs/metrics` requires.
//! - [`reserve`]: the free-space reserve that refuses new data before the disk is full.

#![warn(missing_docs)]

pub mod admin_socket;
pub mod app;
pub mod audit;
pub mod audit_budget;
pub mod auth;
pub mod cache;
pub mod connections;
pub mod error;
pub mod first_bytes;
pub mod fsmetrics;
pub mod http_headers;
pub mod linger;
pub mod metrics_token;
pub mod plain_http;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod reserve;
pub mod server;
pub mod tls;
pub mod users;

/// The OpenAPI document served at `/_efs/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Installs aws-lc-rs as the process-wide rustls provider (call first in every binary and
/// test): with two providers in the tree rustls would otherwise panic at run time.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Keeps this process's memory out of core files and away from other processes of its
/// account: no core dump (`RLIMIT_CORE` 0) and not dumpable (`PR_SET_DUMPABLE` 0, which also
/// refuses `ptrace` and `/proc/PID/mem` to everyone but root). The process holds the starter
/// key's subkeys, every keyring and decrypted content; a crash in C code, an abort or a
/// `SIGQUIT` would otherwise write them to a core file. Also sets the umask to 077. Called
/// first by efs-server and efsctl; a failure is only warned about (it changes no behaviour
/// of EFS).
pub fn forbid_core_dumps() {
    // Files and directories this process makes are its account's only (umask 077): the data
    // dir's indexes, blobs, audit files and key files were created 0644 and 0755 inside
    // it, readable by every local account as soon as the data dir was opened up.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, none) {
        eprintln!("warning: cannot turn core dumps off (RLIMIT_CORE): {e}");
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        eprintln!("warning: cannot make this process non-dumpable (PR_SET_DUMPABLE): {e}");
    }
}

/// Raises this process's soft limit of open files to its hard limit (a systemd service or a
/// container often starts with 1,024, which a few hundred connections use up; out of file
/// descriptors, the audit log cannot be written and every request is refused). Returns
/// the soft limit now in force, or `None` when it cannot be read (unlimited included).
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum)
        && cur < max
    {
        let raised = Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("warning: cannot raise the open-files limit from {cur} to {max}: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Logs to stderr at the level `EFS_LOG` names (`warn` by default), for efs-server and
/// efsctl alike (without a server, efsctl opens the data dir itself: the core's warnings —
/// an index repaired after a kill, a damaged entry a rotation skips — are its too). Coloured
/// only on a terminal (and not with `NO_COLOR`): journald, `docker logs` and log files get
/// plain text.
pub fn init_logging() {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        // A failed write to stderr (closed with the terminal that sent a SIGHUP) would be
        // reported with `eprintln!`, which panics: the task logging would end (the SIGHUP
        // loop, a request's). A lost log line is the lesser harm.
        .log_internal_errors(false)
        .init();
}
