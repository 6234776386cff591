//! `efs-server`: serves an EFS data dir over HTTPS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use efs_core::KeyPartSpec;
use efs_server::admin_socket::GcSchedule;
use efs_server::app::HttpConfig;
use efs_server::cache::CacheConfig;
use efs_server::server::{ServerConfig, run};

/// EFS encrypted file store: HTTPS server.
///
/// On a new (missing or empty) data dir, the first start initialises it with the key parts
/// given; with none, it generates a key-part file beside the data dir and says where.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:
  efs-server --data ./efs-data                        # quick start: generates ./efs-data.keypart
  efs-server --data /srv/efs --listen 0.0.0.0:8443 \\
      --key-part env:EFS_KEY_PART --key-part file:/run/secrets/efs_part2
  EFS_PASSPHRASE=… efs-server --data /srv/efs --key-part passphrase

Key parts (all required, in the same order at every start):
  env:NAME     the value of environment variable NAME (at least 16 bytes)
  file:PATH    the contents of a file, e.g. a Docker secret (at least 16 bytes)
  passphrase   typed at a prompt, or taken from EFS_PASSPHRASE; stretched with Argon2id"
)]
struct Args {
    /// Data directory (created, with any missing parent, at the first start; the generated
    /// key part goes beside it).
    #[arg(long, env = "EFS_DATA", default_value = "./efs-data")]
    data: PathBuf,
    /// Address and port to listen on (port 0 picks a free port).
    #[arg(long, env = "EFS_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// A key part: env:NAME, file:PATH or passphrase. Repeat for several.
    #[arg(long = "key-part", value_name = "SPEC", value_parser = parse_part)]
    key_parts: Vec<KeyPartSpec>,
    /// A DNS name or IP address clients reach this server by, put in the certificate the
    /// server generates (without --tls-cert) beside localhost, 127.0.0.1, ::1, this machine's
    /// host name and the --listen address. Repeat for several, or separate with commas. A
    /// certificate generated before lacks a name added later: the start says so, and
    /// `efsctl rotate-tls-key` (server stopped) makes a new one.
    #[arg(long = "tls-name", env = "EFS_TLS_NAME", value_name = "NAME", value_delimiter = ',', value_parser = efs_server::tls::parse_tls_name)]
    tls_names: Vec<String>,
    /// TLS certificate chain (PEM). Without it a self-signed one is generated once. Read
    /// again with --tls-key on SIGHUP or `efsctl reload-tls` (a renewed certificate, served
    /// without a restart; see docs/operations.md).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM); bind them to users with
    /// `efsctl bind-cert`. Read again with --tls-cert on SIGHUP or `efsctl reload-tls` (a new
    /// CA, required from the next connection on; see docs/operations.md). Give the CA's
    /// certificate, not a client's: a certificate in it that is not a CA's (CA:FALSE) gets a
    /// WARNING, and a file of only such certificates is refused (it would refuse every client).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Largest file accepted, in bytes (larger: 413).
    #[arg(long, default_value_t = 16 << 30)]
    max_body_size: u64,
    /// Abandon an upload whose body sends no byte for this many seconds, or a JSON request
    /// body (login, move) not complete within it (408, nothing done), as nginx's
    /// client_body_timeout does.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    body_timeout: u64,
    /// Close a connection that has handled no request and sent no part of an answer for
    /// this many seconds, as nginx's keepalive_timeout and send_timeout do (an answer the
    /// client is still reading finishes first; one it stopped reading does not hold the
    /// connection). An HTTP/1.1 connection waiting for its next request is closed after
    /// 30 s already (the header timeout).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    idle_timeout: u64,
    /// Most connections open at once; further ones wait to be accepted. Lowered at start to
    /// what the open-files limit allows (its hard limit, to which the server raises it,
    /// less 256, halved), with a warning. What the limit leaves beside the connections and
    /// the 256 bounds the files that uploads and downloads hold open at once (beyond: 503
    /// busy, docs/operations.md).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_connections: usize,
    /// Most connections open at once from one IPv4 address or IPv6 /64 (and four times it
    /// from one IPv6 /48); a new one beyond is closed at once; also at most 64 login bodies read at once per address. 0: neither
    /// limit (behind a TCP proxy, whose one address every client then has; the per-address
    /// limits of failed logins, open challenges and wrong metrics tokens still apply to it:
    /// docs/operations.md).
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_connections_per_address: usize,
    /// Read the PROXY protocol (HAProxy's, version 1 or 2) on connections from this network
    /// or address (a load balancer forwarding TCP; repeat, or separate with commas): each
    /// must begin with its header, whose client address is then the connection's for the
    /// per-address limits, the audit log and the logs; a connection from there without one
    /// is closed. Connections from anywhere else are served as they come, and no header of
    /// theirs is read (docs/operations.md, "Behind a TCP proxy").
    #[arg(long, env = "EFS_PROXY_PROTOCOL_FROM", value_name = "NET", value_delimiter = ',', value_parser = efs_server::proxy_protocol::parse_net)]
    proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Decrypted cache size in bytes (0 turns it off, and with it the cache of path
    /// lookups, which is emptied by every write).
    #[arg(long, default_value_t = 256 << 20)]
    cache_size: u64,
    /// Largest file kept in the cache, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    cache_max_file: u64,
    /// Files up to this size are stored inline in the index (one transaction, no blob).
    #[arg(long, default_value_t = 128 * 1024)]
    inline_max: usize,
    /// Page cache of each filesystem's index, in bytes (index pages beyond it are read
    /// from the kernel's page cache).
    #[arg(long, default_value_t = efs_core::redb_index::DEFAULT_CACHE_BYTES)]
    index_cache_size: usize,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,
    /// Challenge nonce lifetime in seconds.
    #[arg(long, default_value_t = 60)]
    nonce_ttl: u64,
    /// Refreshes allowed per login.
    #[arg(long, default_value_t = 24)]
    max_renewals: u32,
    /// Failed-login counting window in seconds: after 20 failures from one address inside
    /// it, logins from there are refused (429) until it ends; after 10 for one user, its
    /// failed attempts get 429 but a valid signature still logs in.
    #[arg(long, default_value_t = 60)]
    login_fail_window: u64,
    /// Serve Prometheus metrics at /_efs/metrics to scrapers presenting the token in this
    /// file (Authorization: Bearer; at least 16 visible ASCII characters). Without it,
    /// metrics are off: they name every filesystem and count its files and bytes.
    #[arg(long, env = "EFS_METRICS_TOKEN_FILE", value_name = "PATH")]
    metrics_token_file: Option<PathBuf>,
    /// On SIGTERM (or SIGINT), wait at most this many seconds for the requests and admin commands in
    /// flight; then no new change begins (503), an upload still receiving its body is stopped
    /// (503 with Retry-After, nothing of it stored), changes already begun get 10 s more, and
    /// the audit log closes. Give the supervisor more (`docker stop -t`, systemd's
    /// TimeoutStopSec).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    shutdown_timeout: u64,
    /// Free space kept on the data dir's volume, in bytes (and on the audit log's, when
    /// DATA/system/audit is on another filesystem): below it, uploads and new directories are
    /// refused (507 insufficient_storage), and so are restores and new filesystems (efsctl),
    /// while reads, deletes, moves, logins, gc and the audit log go on working; a restore or a
    /// re-encryption stops before it would reach it. Default: 5 % of each of those volumes, at
    /// most 1 GiB (a value given applies to each); 0 turns it off.
    #[arg(long, env = "EFS_RESERVE_SPACE", value_name = "BYTES", value_parser = efs_server::reserve::parse_reserve)]
    reserve_space: Option<u64>,
    /// Run gc by itself on every filesystem this many seconds apart, as `efsctl gc --grace
    /// <--gc-grace>` would: it removes what a crash leaves between a change's commit and
    /// the removal of the content it replaced or deleted (orphan blobs and inline contents,
    /// partial writes), and is recorded in the audit log as a gc by efs-server. The first
    /// run on a filesystem comes --gc-grace seconds after the start (or after its creation),
    /// or at once if its last gc (its own, or `efsctl gc` while it ran), kept across restarts
    /// in DATA/system/gc-last-runs, was this long ago. 0: never (run `efsctl gc` yourself).
    #[arg(long, default_value_t = 86_400, value_name = "SECS", value_parser = gc_secs)]
    gc_every: u64,
    /// The automatic gc keeps orphans younger than this many seconds, and runs first this
    /// long after the start (by then whatever a crash before the start left is older), unless
    /// a filesystem's last run was --gc-every ago.
    #[arg(long, default_value_t = 3600, value_name = "SECS", value_parser = gc_secs)]
    gc_grace: u64,
    /// Write request paths to the log (they are personal data; off by default).
    #[arg(long)]
    log_paths: bool,
    /// A file outside the data dir, on other storage, that keeps how far the system
    /// database went (its digest's generation and anchor; no secret): a data dir put back
    /// whole from an earlier copy (a snapshot) is then refused at the start instead of
    /// served with the users, grants and keys removed since. Created at the first start with
    /// it. Give it to every start (and to efsctl); the server records it in the data dir,
    /// and an open without the option, of the data dir at its recorded place, falls back to
    /// the recorded file (a copy elsewhere is refused until given a file of its own). Keep it
    /// on other storage than the data dir (docs/operations.md, "A whole data dir put back").
    #[arg(long, env = "EFS_ROLLBACK_WITNESS", value_name = "PATH")]
    rollback_witness: Option<PathBuf>,
    /// A second admin socket, for auditors (outside the data dir, e.g. /run/efs/audit.sock):
    /// it answers `efsctl --socket PATH audit show` and `audit verify` only, to root, the
    /// server's account and processes whose group is --auditor-group; mode 0660, that group's
    /// (docs/audit.md, "For auditors and data-protection officers").
    #[arg(long, value_name = "PATH", requires = "auditor_group")]
    auditor_socket: Option<PathBuf>,
    /// The group (a name in /etc/group, or a number) whose members may read the audit log
    /// through --auditor-socket: processes whose own group it is, and accounts that are its
    /// members in /etc/passwd or /etc/group (`usermod -aG GROUP USER`; read at each
    /// connection). Members known only through NSS (LDAP) run efsctl with `sg GROUP`.
    #[arg(long, value_name = "GROUP", requires = "auditor_socket", value_parser = parse_group)]
    auditor_group: Option<u32>,
}

/// `--auditor-group`: a number, or a group's name as /etc/group has it.
fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group to find '{s}': {e}"))?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == s)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| format!("no group named '{s}' in /etc/group (give its number)"))
}

/// `--gc-every` and `--gc-grace`: whole seconds, at most ten years (a clock that far ahead
/// could not be scheduled).
fn gc_secs(s: &str) -> Result<u64, String> {
    const MAX: u64 = 10 * 366 * 86_400;
    let n: u64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of seconds"))?;
    if n > MAX {
        return Err(format!("at most {MAX} seconds (ten years)"));
    }
    Ok(n)
}

fn parse_part(s: &str) -> Result<KeyPartSpec, String> {
    KeyPartSpec::parse(s).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    efs_server::forbid_core_dumps();
    // The runtime first, to catch SIGHUP at once (its default action ends the process: a
    // `systemctl reload` racing the start): see `catch_hangups_early`.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime builds");
    {
        let _in = rt.enter();
        if let Err(e) = efs_server::server::catch_hangups_early() {
            eprintln!("efs-server: error: installing a SIGHUP handler: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    efs_server::install_crypto_provider();
    efs_server::init_logging();
    let a = Args::parse();
    let mut max_connections = a.max_connections.max(1);
    // Without a limit (unlimited, or unreadable) nothing bounds the blob files open.
    let mut max_blob_files = usize::MAX;
    if let Some(nofile) = efs_server::raise_open_files_limit() {
        let room = efs_server::server::connections_for_open_files(nofile);
        if room < max_connections {
            let files = efs_server::server::blob_files_for_open_files(nofile, room);
            eprintln!(
                "warning: the open-files limit ({nofile}) leaves room for {room} connections, not {max_connections}: at most {room} are served at once, and at most {files} files of uploads and downloads are open at once (raise it: systemd's LimitNOFILE, docker run --ulimit nofile=...)"
            );
            max_connections = room;
        }
        max_blob_files = efs_server::server::blob_files_for_open_files(nofile, max_connections);
    }
    let metrics_token = match a
        .metrics_token_file
        .as_deref()
        .map(efs_server::metrics_token::load)
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("efs-server: error: {e:#}");
            return std::process::ExitCode::from(1);
        }
    };
    let cfg = ServerConfig {
        data: a.data,
        listen: a.listen,
        tls_names: a.tls_names.into_iter().filter(|n| !n.is_empty()).collect(),
        key_parts: a.key_parts,
        tls: a.tls_cert.zip(a.tls_key),
        client_ca: a.client_ca,
        http: HttpConfig {
            max_body: a.max_body_size,
            log_paths: a.log_paths,
            body_idle: Duration::from_secs(a.body_timeout.max(1)),
            conn_idle: Duration::from_secs(a.idle_timeout.max(1)),
            max_conns_per_address: a.max_connections_per_address,
            max_connections,
            max_blob_files,
            proxy_from: efs_server::proxy_protocol::Trusted::new(a.proxy_protocol_from),
        },
        cache: CacheConfig {
            capacity: a.cache_size,
            max_file: a.cache_max_file,
        },
        inline_max: a.inline_max,
        index_cache: a.index_cache_size,
        token_ttl: Duration::from_secs(a.token_ttl.max(1)),
        nonce_ttl: Duration::from_secs(a.nonce_ttl.max(1)),
        max_renewals: a.max_renewals,
        login_fail_window: Duration::from_secs(a.login_fail_window.max(1)),
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        metrics_token,
        reserve_space: a.reserve_space,
        rollback_witness: a.rollback_witness,
        auditor: a.auditor_socket.zip(a.auditor_group),
        gc: GcSchedule {
            every: (a.gc_every > 0).then(|| Duration::from_secs(a.gc_every)),
            grace: Duration::from_secs(a.gc_grace),
        },
    };
    let code = match rt.block_on(run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("efs-server: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    };
    // Past the shutdown timeout and its 10 s for changes begun, the audit log is closed:
    // an admin command still running on the blocking pool (a backup, a gc) would go on
    // unrecorded, and dropping the runtime would wait for it without end.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schedule past what a clock can hold was a panic at the first gc (`Instant` +
    /// `Duration` overflows), not an error at the start.
    #[test]
    fn gc_seconds_are_bounded() {
        assert_eq!(gc_secs("0"), Ok(0));
        assert_eq!(gc_secs("316224000"), Ok(316_224_000));
        assert!(gc_secs("316224001").unwrap_err().contains("ten years"));
        assert!(gc_secs("18446744073709551615").is_err());
        assert!(gc_secs("1h").unwrap_err().contains("not a whole number"));
        let a = Args::try_parse_from(["efs-server", "--gc-every", "0", "--gc-grace", "5"]).unwrap();
        assert_eq!((a.gc_every, a.gc_grace), (0, 5));
        assert!(Args::try_parse_from(["efs-server", "--gc-grace", "99999999999"]).is_err());
    }
}
