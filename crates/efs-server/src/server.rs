//! Start-up and the accept loop.
//!
//! Shutdown protocol: on SIGTERM or Ctrl-C the listener stops accepting, every open
//! connection is told to finish its in-flight requests (hyper's graceful shutdown), and the
//! process waits for them at most [`ServerConfig::shutdown_timeout`]. SIGHUP reloads the
//! TLS certificate and the client CA ([`crate::admin_socket::reload_tls`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use efs_core::fs::ClaimedCheck;
use efs_core::{DataDir, FsOptions, KeyPartSpec, OpenOptions};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::app::{AppState, ConnInfo, HttpConfig};
use crate::auth::{AuthConfig, Authenticator};
use crate::cache::{CacheConfig, ContentCache};
use crate::users::UserCache;

/// File descriptors kept for what is neither a connection nor a request's blob file: the
/// indexes, the audit log (and the rewrite of its anchor), the admin socket and its
/// clients, blob files of admin commands.
const RESERVED_FDS: u64 = 256;

/// How many connections the open-files limit leaves room for: half of what the reserve
/// leaves; the other half is for the blob files requests hold open
/// ([`blob_files_for_open_files`]).
pub fn connections_for_open_files(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// How many blob files requests may hold open at once (uploads past the inline size, reads
/// of blob content: `AppState::blob_files`) beside `connections` connections of one socket
/// each: what the open-files limit leaves once the reserve and the connections have theirs,
/// so that connections and blob files together stay within the limit less the reserve, and
/// the audit log always finds a descriptor. At least one.
pub fn blob_files_for_open_files(nofile: u64, connections: usize) -> usize {
    let room = nofile
        .saturating_sub(RESERVED_FDS)
        .saturating_sub(connections as u64);
    usize::try_from(room)
        .unwrap_or(usize::MAX)
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

/// Pause after a failed `accept` (the HTTP and the admin listener) before trying again: the
/// usual cause, running out of file descriptors (EMFILE), persists for a while, and an
/// immediate retry would spin a core.
pub(crate) const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// How long a client may wait between the TLS handshake and its first request bytes, and
/// (HTTP/1) to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A line on standard output that never panics, as `println!` does once stdout is gone: a
/// terminal that hung up (the SIGHUP the server survives) closes it, and the server goes on.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Everything `efs-server` is started with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data dir.
    pub data: PathBuf,
    /// Address to listen on (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// `--tls-name`: more names (DNS names, IP addresses) for the certificate the server
    /// generates when it has none of the operator's.
    pub tls_names: Vec<String>,
    /// Key parts.
    pub key_parts: Vec<KeyPartSpec>,
    /// Operator certificate and key (PEM); generated if absent.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// CA whose client certificates are required.
    pub client_ca: Option<PathBuf>,
    /// HTTP limits.
    pub http: HttpConfig,
    /// Cache bounds.
    pub cache: CacheConfig,
    /// Inline threshold.
    pub inline_max: usize,
    /// Bytes of each filesystem index's page cache.
    pub index_cache: usize,
    /// Login protocol lifetimes.
    pub token_ttl: Duration,
    /// Nonce lifetime.
    pub nonce_ttl: Duration,
    /// Renewals.
    pub max_renewals: u32,
    /// Failed-login counting window (the other limits keep their defaults).
    pub login_fail_window: Duration,
    /// Wait at most this long for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// SHA-256 of the token `/_efs/metrics` requires ([`crate::metrics_token`]); `None`:
    /// metrics are off (and not recorded).
    pub metrics_token: Option<[u8; 32]>,
    /// `--reserve-space`: bytes kept free on the data volume (and the audit log's), below
    /// which requests that add data are refused; `None`: the default for the volume
    /// ([`crate::reserve::default_reserve`]); `Some(0)`: off.
    pub reserve_space: Option<u64>,
    /// When the server runs gc by itself.
    pub gc: crate::admin_socket::GcSchedule,
    /// `--rollback-witness`: the file outside the data dir that keeps how far its system
    /// database went ([`efs_core::witness`]).
    pub rollback_witness: Option<PathBuf>,
    /// `--auditor-socket` and `--auditor-group`: a socket that answers `audit show` and
    /// `audit verify` only, to the group's processes ([`crate::admin_socket::Role`]).
    pub auditor: Option<(PathBuf, u32)>,
}

/// Claims the check of every filesystem's index against its digest: from here on, that
/// filesystem's requests wait for its verdict (a full scan of the entries, started by
/// [`ClaimedCheck::start`] once the server listens). The index cannot change under a running
/// server, so this is where a change made while it was stopped is caught — a record put back
/// to an older version with its content, which reads alone cannot tell from the current one.
/// A filesystem whose index differs stays on hold (503 integrity_hold) until `efsctl fsck
/// --accept-index`; see SECURITY.md. A key rotation or re-encryption resumed by
/// `DataDir::open` may have started its filesystem's check already (it rewrites nothing
/// before the check holds): the check is not run twice.
fn claim_index_checks(data: &Arc<DataDir>) -> anyhow::Result<Vec<ClaimedCheck>> {
    let mut out = Vec::new();
    for rec in data.list_fs()? {
        if let Some(fs) = data.fs(&rec.name)
            && let Some(c) = fs.claim_index_check()
        {
            out.push(c);
        }
    }
    Ok(out)
}

/// Paths per filesystem whose lookup is remembered while the index does not change (a few
/// hundred bytes each for usual paths; at most about 5 KiB, a 4 KiB path and its record:
/// 20 MiB per filesystem in the worst case).
const LOOKUP_CACHE_PATHS: usize = 4096;

/// Pending connections the kernel keeps for the server (tokio's own `TcpListener::bind` uses
/// the same).
const LISTEN_BACKLOG: u32 = 1024;

/// A socket bound to `addr`, not yet listening. `SO_REUSEADDR` as `TcpListener::bind` sets it
/// (a restart does not wait for the old connections' TIME_WAIT); Linux still refuses the
/// address while another socket listens on it.
fn bind_only(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// SIGHUP caught by [`catch_hangups_early`], for [`run`] to take.
static EARLY_HANGUPS: std::sync::Mutex<Option<tokio::signal::unix::Signal>> =
    std::sync::Mutex::new(None);

/// Catches SIGHUP from this moment on, for [`run`] (which otherwise catches it at its own
/// start): `main` calls it as soon as the runtime exists, before the logging, the arguments,
/// the limits, so that only the process's first moments (the loader, the runtime's build)
/// are left in which a SIGHUP (a `systemctl reload` racing the start) ends the server. Call
/// within the runtime's context.
pub fn catch_hangups_early() -> std::io::Result<()> {
    let h = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    *EARLY_HANGUPS.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
    Ok(())
}

/// Opens the data dir, prints the start-up facts and serves until a signal.
pub async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    // First of all: SIGHUP's default action ends the process, and the start can take long
    // (key derivation, a passphrase prompt with no time limit). A SIGHUP from here on is
    // kept and handled once the server is ready (`reload_on_hangup`): the files are read
    // again then, so a certificate renewed during the start is served. SIGTERM and SIGINT
    // keep their default action until just before the admin socket serves (see below):
    // until then nothing is served and nothing would be finished, and a start waiting for a
    // passphrase still ends at Ctrl-C.
    let early = EARLY_HANGUPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let hangups = match early {
        Some(h) => h,
        None => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing a SIGHUP handler")?,
    };
    // The address is taken first, so that a port in use fails the start before a new data
    // dir and key part are made for a server that could not serve them; it listens only once
    // it can answer (until then a client is refused at once instead of hanging, and a TCP
    // health check does not see it up).
    let socket =
        bind_only(cfg.listen).with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let cache = ContentCache::new(cfg.cache);
    let reserve_cell = Arc::new(std::sync::OnceLock::<crate::reserve::Reserve>::new());
    let opts = OpenOptions {
        fs: FsOptions {
            inline_max: cfg.inline_max,
            // Path lookups are remembered with the cache on (see `FsOptions::lookup_cache`):
            // a GET of a small file then skips walking the path in the index.
            lookup_cache: if cfg.cache.capacity > 0 {
                LOOKUP_CACHE_PATHS
            } else {
                0
            },
            index_cache: cfg.index_cache,
            // A version replaced or deleted leaves the decrypted cache at once.
            on_content_removed: (cfg.cache.capacity > 0).then(|| {
                let cache = cache.clone();
                efs_core::fs::ContentRemoved(Arc::new(move |v| cache.invalidate(v)))
            }),
            // A re-encryption or a restore stops below the reserve rather than fill the disk
            // (set once the reserve is known, after the open: until then nothing is written
            // anyway, a resumed re-encryption waiting for the index check).
            space_check: Some(crate::reserve::space_check(reserve_cell.clone())),
            ..Default::default()
        },
        rollback_witness: cfg.rollback_witness.clone(),
        // The server's witness is the one later opens without the option fall back to.
        record_witness: true,
        ..Default::default()
    };
    let specs = cfg.key_parts.clone();
    let data_path = cfg.data.clone();
    let (data, report) = tokio::task::spawn_blocking(move || {
        DataDir::open(&data_path, &specs, opts, &prompt_passphrase)
    })
    .await?
    .with_context(|| format!("cannot open the data dir {}", cfg.data.display()))?;
    if report.initialised {
        say!("Initialised a new data dir at {}", cfg.data.display());
    }
    if let Some(p) = &report.generated_key_part {
        say!(
            "Generated a key part at {} (mode 0600), OUTSIDE the data dir.\n\
             Keep it safe and apart from the data: without it the data cannot be read, ever.\n\
             Later starts find it automatically; to be explicit, pass --key-part file:{}",
            p.display(),
            p.display()
        );
    }
    let data = Arc::new(data);
    let index_checks = claim_index_checks(&data)?;

    let signing = data
        .secret(efs_core::datadir::SECRET_SIGNING_KEY)?
        .context("the data dir has no token-signing key")?;
    let signing: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
        signing
            .as_slice()
            .try_into()
            .context("bad token-signing key")?,
    );
    let signing_key = ed25519_dalek::SigningKey::from_bytes(&signing);
    let users = Arc::new(UserCache::default());
    users.reload(&data)?;
    let audit_budget = Arc::new(crate::audit_budget::AuditBudget::default());
    let auth = Arc::new(
        Authenticator::new(
            &signing_key,
            AuthConfig {
                server_id: String::new(),
                token_ttl: cfg.token_ttl,
                nonce_ttl: cfg.nonce_ttl,
                max_renewals: cfg.max_renewals,
            },
            users.clone(),
        )
        .with_rate_limits(&crate::ratelimit::RateLimitConfig {
            window: cfg.login_fail_window,
            ..crate::ratelimit::RateLimitConfig::default()
        })
        .with_audit(Arc::new(crate::audit::AuditHook {
            data: data.clone(),
            budget: audit_budget.clone(),
        })),
    );
    drop(signing_key);
    for note in data.audit().notes() {
        say!("Warning: {note}");
    }

    let material = match &cfg.tls {
        Some((c, k)) => {
            if !cfg.tls_names.is_empty() {
                say!(
                    "Warning: --tls-name ({}) is for the certificate the server generates; it is left out with --tls-cert (whose names are the certificate's own)",
                    cfg.tls_names.join(", ")
                );
            }
            let material = crate::tls::load_pem(c, k)?;
            // As the reserve's start warnings: to the log, and to stdout with the start's lines.
            if let Some(w) =
                crate::tls::start_validity_warning(&material, c, time::OffsetDateTime::now_utc())
            {
                tracing::warn!("{w}");
                say!("{w}");
            }
            material
        }
        None => {
            // The names clients reach this server by: `--tls-name`, and the address it
            // listens on when that is one address (a client given it must find it in the
            // certificate).
            let mut names = cfg.tls_names.clone();
            let ip = cfg.listen.ip().to_canonical();
            if !ip.is_unspecified() {
                names.push(ip.to_string());
            }
            let (material, missing) = crate::tls::load_or_generate(&data, &names)?;
            if !missing.is_empty() {
                say!(
                    "Warning: the TLS certificate this server generated earlier does not name {} (a client connecting by that name refuses it; one given --fingerprint does not check names): efsctl rotate-tls-key, with the server stopped, makes a new one that does",
                    missing.join(", ")
                );
            }
            material
        }
    };
    let fingerprint = material.fingerprint();
    let generated = material.generated;
    let served_cert = crate::tls::ServedCert::new(material, cfg.tls.clone())?;
    let (tls, client_ca_warnings) = crate::tls::ServedTls::new(served_cert, cfg.client_ca.clone())?;
    // As the reserve's start warnings: to the log, and to stdout with the start's lines.
    for w in &client_ca_warnings {
        tracing::warn!("{w}");
        say!("{w}");
    }

    // Buckets make the latency series Prometheus histograms (without them the exporter
    // renders summaries, which cannot be aggregated across servers).
    let metrics = cfg.metrics_token.and_then(|token| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ])
            .ok()
            .and_then(|b| b.install_recorder().ok())
            .map(|h| (h, token))
    });
    if metrics.is_some() {
        // Counters of rare refusals are there from the start, at 0: an alert rule on one
        // (`rate(...) > 0`, `increase(...)`) sees no series at all until the first one
        // otherwise. Labels as where they are incremented.
        metrics::counter!("efs_connections_refused_total", "reason" => "per_address").absolute(0);
        metrics::counter!("efs_connections_refused_total", "reason" => "plain_http").absolute(0);
        if !cfg.http.proxy_from.is_empty() {
            for reason in ["proxy_header", "proxy_pending"] {
                metrics::counter!("efs_connections_refused_total", "reason" => reason).absolute(0);
            }
        }
        metrics::counter!("efs_requests_refused_total", "reason" => "open_files").absolute(0);
        metrics::counter!("efs_requests_refused_total", "reason" => "reserve").absolute(0);
        metrics::counter!("efs_accept_failures_total").absolute(0);
    }
    if let Some((h, _)) = metrics.clone() {
        // The exporter keeps every histogram sample until upkeep folds it into the buckets:
        // without this task, a server nobody scraped grew by 8 bytes per request (about
        // 1.4 GB an hour at 50,000 requests a second).
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                h.run_upkeep();
            }
        });
    }
    // moka frees invalidated and expired entries only when called: on a quiet server a
    // deleted file's plaintext would stay in memory without this.
    {
        let cache = cache.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::cache::UPKEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // A panic here (inside moka) would end the task, and with it the freeing of
                // plaintext, silently: logged, and the next tick tries again.
                let upkeep = std::panic::AssertUnwindSafe(|| cache.upkeep());
                if std::panic::catch_unwind(upkeep).is_err() {
                    tracing::error!("the decrypted cache's upkeep panicked; retrying in a second");
                }
            }
        });
    }
    let reserve = crate::reserve::Reserve::for_data_dir(&cfg.data, cfg.reserve_space)
        .with_context(|| {
            format!(
                "cannot read the free space of {}'s volume (give --reserve-space BYTES, or 0 for no reserve)",
                cfg.data.display()
            )
        })?;
    let _ = reserve_cell.set(reserve.clone());
    let gc_runs = {
        let root = cfg.data.clone();
        tokio::task::spawn_blocking(move || crate::admin_socket::GcRuns::load(&root)).await?
    };
    let state = Arc::new(AppState {
        data: data.clone(),
        reserve: Arc::new(reserve.clone()),
        auth: auth.clone(),
        users,
        cache,
        http: cfg.http.clone(),
        metrics,
        detached: tokio_util::task::TaskTracker::new(),
        changes_refused: Default::default(),
        uploads_cut: Default::default(),
        audit_budget: audit_budget.clone(),
        // Behind a proxy every client has the proxy's address: with the per-address limit
        // of connections off (0, as README.md says to run there), this one is off too.
        login_bodies: Arc::new(crate::connections::PerAddress::new(
            if cfg.http.max_conns_per_address == 0 {
                0
            } else {
                crate::app::LOGIN_BODIES_PER_ADDRESS
            },
        )),
        metrics_failures: crate::ratelimit::FailureLimiter::new(
            crate::app::METRICS_FAILURES_PER_MINUTE,
            Duration::from_secs(60),
            100_000,
        ),
        client_ca: cfg.client_ca.is_some(),
        blob_files: Arc::new(tokio::sync::Semaphore::new(
            cfg.http
                .max_blob_files
                .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        )),
        tls: tls.clone(),
        gc_runs: Arc::new(gc_runs),
    });
    let detached = state.detached.clone();

    // Before the admin socket serves: from then on a SIGTERM or Ctrl-C stops the server
    // gracefully (commands under way finish) instead of ending it at once.
    let signal = shutdown_signal()?;
    let admin = crate::admin_socket::bind(&data.admin_socket()).await?;
    tokio::spawn(crate::admin_socket::serve(admin, state.clone()));
    let mut auditor_ino = None;
    if let Some((path, gid)) = &cfg.auditor {
        let (auditor, ino) = crate::admin_socket::bind_auditor(path, *gid, &cfg.data).await?;
        auditor_ino = Some(ino);
        tokio::spawn(crate::admin_socket::serve_as(
            auditor,
            state.clone(),
            crate::admin_socket::Role::Auditor { gid: *gid },
        ));
    }
    tokio::spawn(crate::admin_socket::rotate_when_due(state.clone()));
    // A failed audit log refuses every request (fail closed) until it can be written again.
    tokio::spawn(crate::audit::recover_when_failed(data.clone()));
    let summaries = tokio::spawn(crate::audit_budget::write_summaries_periodically(
        audit_budget.clone(),
        data.clone(),
    ));
    let audit_marks = tokio::spawn(record_audit_marks(data.clone()));

    // The digest generation each trusted index has committed, recorded now and then (not
    // per commit: no system-database write on the PUT path), so that an earlier copy of a
    // whole index put back while the server is stopped is held at the next start.
    let marks = tokio::spawn({
        let data = data.clone();
        async move {
            let mut tick = tokio::time::interval(efs_core::datadir::GENERATION_RECORD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Errors are logged by the data dir; the next tick tries again. The writes
                // (durable system-database commits) on a blocking thread, not a worker.
                let (pending, _) = data.committed_generations().await;
                if !pending.is_empty() {
                    let d = data.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || d.store_generations(&pending)).await;
                }
            }
        }
    });

    let listener = socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let local = listener.local_addr()?;
    say!("Server identity: {}", auth.server_id());
    say!(
        "TLS certificate SHA-256 fingerprint: {fingerprint}{}",
        if generated {
            format!(
                " (self-signed; clients can trust {}/system/tls-cert.pem)",
                cfg.data.display()
            )
        } else {
            String::new()
        }
    );
    // Before the first request is accepted: a log that cannot take it stops the start.
    let started = std::time::Instant::now();
    let start_options = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listen": local.to_string(),
        "server_id": auth.server_id(),
        "tls_cert_sha256": &fingerprint,
        // --tls-cert, or the data dir's own self-signed certificate.
        "tls_cert": if cfg.tls.is_some() { "given" } else if generated { "self-signed" } else { "data dir" },
        // Kinds only, never a spec's path or variable; none given: the data dir's default
        // key part file.
        "client_ca": cfg.client_ca.is_some(),
        "key_parts": cfg.key_parts.iter().map(|p| p.kind()).collect::<Vec<_>>(),
        "metrics": cfg.metrics_token.is_some(),
        "log_paths": cfg.http.log_paths,
        "token_ttl_secs": cfg.token_ttl.as_secs(),
        "nonce_ttl_secs": cfg.nonce_ttl.as_secs(),
        "max_renewals": cfg.max_renewals,
        "login_fail_window_secs": cfg.login_fail_window.as_secs(),
        "max_connections_per_address": cfg.http.max_conns_per_address,
        "proxy_protocol_from": cfg.http.proxy_from.describe(),
        "auditor_group": cfg.auditor.as_ref().map(|(_, gid)| *gid),
        "reserve_space": reserve.bytes(),
        "pid": std::process::id(),
    });
    if let Err(e) = record_server_event(&data, format!("server-start {start_options}")).await {
        // A log that cannot take entries (a full disk) fails closed: every request is refused
        // until it recovers by itself (`recover_when_failed`). Starting anyway keeps that
        // recovery, where refusing to start would need a restart once space is freed; the
        // start is recorded once the log takes entries again, marked late.
        tracing::warn!(error = %e, "could not record the server's start in the audit log: nothing is served until the log takes entries again; the start is recorded then");
        let data = data.clone();
        let mut late = start_options.clone();
        late["recorded_late"] = serde_json::Value::Bool(true);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let written = record_server_event(&data, format!("server-start {late}")).await;
                // Refused while the log is failed; refused and not failed: it is closing
                // (the server stops), and no start entry is written after its stop.
                if written.is_ok() || !data.audit().is_failed() {
                    break;
                }
            }
        });
    }
    // After the start entry: a reload's entry follows it. A SIGHUP received during the
    // start is handled now. So does every gc of the server's own (with a grace of 0 its
    // first one would otherwise come before the start it belongs to).
    tokio::spawn(reload_on_hangup(hangups, state.clone()));
    tokio::spawn(crate::admin_socket::gc_when_due(state.clone(), cfg.gc));
    say!("{}", reserve.describe(cfg.reserve_space.is_none()));
    for w in reserve.start_warnings() {
        tracing::warn!("{w}");
        say!("{w}");
    }
    say!("{}", cfg.gc.describe());
    if !cfg.http.proxy_from.is_empty() {
        say!(
            "PROXY protocol: connections from {} must begin with its header, whose client address is theirs (--proxy-protocol-from)",
            cfg.http.proxy_from.describe().join(", ")
        );
    }
    say!("Admin socket: {}", data.admin_socket().display());
    if let Some((path, gid)) = &cfg.auditor {
        say!(
            "Auditor socket: {} (group {gid}: audit show and audit verify only; efsctl --socket)",
            path.display()
        );
    }
    say!("Listening on https://{local}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // The scans keep every core busy for a moment (0.5 s at 1,000,000 files): started before
    // the lines above, they held the start for as long.
    for check in index_checks {
        check.start();
    }
    // What recursive deletes detached and a crash or stop left unemptied: emptied now
    // (each waits for its filesystem's index check).
    for rec in data.list_fs()? {
        if let Some(fs) = data.fs(&rec.name) {
            fs.empty_trash_in_background();
        }
    }

    serve(
        listener,
        tls,
        state,
        &cfg.http,
        &detached,
        cfg.shutdown_timeout,
        signal,
    )
    .await;
    let _ = std::fs::remove_file(data.admin_socket());
    if let (Some((path, _)), Some(ino)) = (&cfg.auditor, auditor_ino) {
        crate::admin_socket::remove_auditor(path, ino);
    }
    // Counts of records sealed per key term are stored by steps while serving; what this
    // run counted since the last step is stored now (logged if it cannot be).
    let _ = data.store_seal_counts().await;
    // After the counts (their batch moves the generation), the periodic writer stopped
    // first: the last generations recorded as they are at the stop.
    marks.abort();
    let _ = marks.await;
    let _ = data.record_index_generations().await;
    // What went unrecorded in the last window is counted in the log before it closes (the
    // periodic writer stopped first, so that no count of its reaches a closed log).
    summaries.abort();
    let _ = summaries.await;
    audit_budget.write_summaries(&data);
    // The last entry of this run, once every request's and command's entry is written.
    let stop = serde_json::json!({
        "listen": local.to_string(),
        "uptime_secs": started.elapsed().as_secs(),
    });
    if let Err(e) = record_server_event(&data, format!("server-stop {stop}")).await {
        tracing::warn!(error = %e, "could not record the server's stop in the audit log");
    }
    // Tasks still holding the data dir may outlive this function: make the audit log
    // durable and its anchor current now, and record how far it went.
    audit_marks.abort();
    let _ = audit_marks.await;
    data.audit().close();
    if let Err(e) = data.record_audit_mark() {
        tracing::warn!(error = %e, "could not record the audit log's head in the system database");
    }
    say!("Stopped.");
    Ok(())
}

/// Records the server's own start or stop (`detail`: `server-start {…}` / `server-stop {…}`)
/// as an admin entry of the account running it (`server:uid:N`, which no user name can be),
/// client `local`, so that the log shows each run and the options that matter to its
/// security (docs/audit.md): a restart without `--client-ca` leaves a trace. Never a secret
/// or a file's contents: the key parts by kind only, the metrics token by whether it is set.
async fn record_server_event(
    data: &DataDir,
    detail: String,
) -> Result<(), efs_core::audit::AuditError> {
    let mut rec = efs_core::audit::Record::new(efs_core::audit::Action::Admin, 200);
    rec.user = Some(format!("server:uid:{}", rustix::process::getuid().as_raw()));
    rec.client = Some("local".into());
    rec.detail = Some(detail);
    data.audit().record(rec).await
}

/// How often the server records in the system database how far its audit log went
/// (`DataDir::record_audit_mark`): a log deleted or put back from an older copy is seen at
/// the next start, up to the entries of this last interval.
const AUDIT_MARK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Records the audit log's head every [`AUDIT_MARK_INTERVAL`] (one small system-database
/// write when it moved), on a blocking thread.
async fn record_audit_marks(data: std::sync::Arc<efs_core::DataDir>) {
    let mut tick = tokio::time::interval(AUDIT_MARK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = data.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || d.record_audit_mark()).await {
            tracing::warn!(error = %e, "could not record the audit log's head in the system database");
        }
    }
}

fn prompt_passphrase(prompt: &str) -> std::io::Result<String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "stdin is not a terminal",
        ));
    }
    rpassword::prompt_password(prompt)
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// it is first polled, so a signal sent right after "Listening on" is never lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// Reloads the TLS certificate at each SIGHUP (as `efsctl reload-tls` does, recorded as
/// done by the server's account through `signal`): the outcome goes to stdout on success
/// (an expiry warning also to the log at warn level), to the log at error level on failure,
/// since a signal has no one to answer. Several SIGHUPs before one is handled count as one.
async fn reload_on_hangup(mut hangups: tokio::signal::unix::Signal, state: Arc<AppState>) {
    use std::io::Write;
    let op = efs_core::admin::Operator {
        user: format!("server:uid:{}", rustix::process::getuid().as_raw()),
        via: "signal".into(),
    };
    while hangups.recv().await.is_some() {
        // In a task of its own: should a reload panic, this loop still handles the next
        // SIGHUP rather than swallow every later one.
        let (st, o) = (state.clone(), op.clone());
        let reload =
            tokio::spawn(async move { crate::admin_socket::reload_tls(&st, &o).await }).await;
        let r = match reload {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("SIGHUP: the TLS certificate reload failed ({e})");
                continue;
            }
        };
        if r.ok {
            for l in &r.lines {
                if l.starts_with("WARNING: ") {
                    tracing::warn!("SIGHUP: {l}");
                }
                // Not println!, which panics when stdout is gone: a terminal's hang-up, the
                // usual source of a SIGHUP, closes it.
                let _ = writeln!(std::io::stdout(), "SIGHUP: {l}");
            }
        } else {
            // The error says what was not reloaded, why, and what stays in use.
            tracing::error!(
                "SIGHUP: {}",
                r.error.as_deref().unwrap_or("the reload failed")
            );
        }
    }
}

async fn serve(
    listener: TcpListener,
    tls: Arc<crate::tls::ServedTls>,
    state: Arc<crate::app::AppState>,
    http: &crate::app::HttpConfig,
    detached: &tokio_util::task::TaskTracker,
    timeout: Duration,
    signal: impl std::future::Future<Output = ()>,
) {
    // Control routes go through the router; file requests straight to `file_request`.
    let app = crate::app::router(state.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    // Wider HTTP/2 flow-control windows and frames than hyper's defaults: with 1 MiB
    // windows and 16 KiB frames one stream cannot fill a fast link.
    builder
        .http2()
        .max_concurrent_streams(256)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .max_frame_size(256 << 10)
        .max_send_buf_size(1 << 20)
        // Request headers up to 64 KiB, as over HTTP/1.1 (hyper's HTTP/2 default is 16 KiB:
        // a long path and its Destination were 431 there only).
        .max_header_list_size(64 << 10)
        // An HTTP/2 peer that stops answering pings is dropped (HTTP/1 has the header timeout).
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    tokio::pin!(signal);
    // At most this many connections at once: beyond, accepting waits for one to end. At
    // shutdown, holding every permit again means every connection has ended.
    let max_connections = http.max_connections.max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let per_address = Arc::new(crate::connections::PerAddress::new(
        http.max_conns_per_address,
    ));
    let idle = http.conn_idle;
    let proxy_from = http.proxy_from.clone();
    let proxy_pending = crate::proxy_protocol::Pending::new(max_connections);
    let refuse_per_address = || {
        tracing::debug!("connection refused: too many from one address");
        metrics::counter!("efs_connections_refused_total", "reason" => "per_address").increment(1);
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut accept_warned: Option<std::time::Instant> = None;
    loop {
        // With every slot taken, a shutdown signal must still be seen.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut signal => break,
        };
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Once a minute at most: out of file descriptors, this repeats 20
                    // times a second.
                    if accept_warned.is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "accept failed (said at most once a minute)");
                        accept_warned = Some(std::time::Instant::now());
                    }
                    metrics::counter!("efs_accept_failures_total").increment(1);
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        // A connection through a trusted proxy is counted against its client's address, known
        // once its PROXY protocol header is read (in its task, within the handshake's time).
        let proxied = proxy_from.contains(remote.ip());
        let mut pending_slot = None;
        let address_slot = if proxied {
            // At most half the connections wait for their header at once.
            let Some(p) = proxy_pending.try_take() else {
                tracing::debug!(proxy = %remote, "connection refused: too many from trusted proxies wait for their PROXY protocol header");
                metrics::counter!("efs_connections_refused_total", "reason" => "proxy_pending")
                    .increment(1);
                drop(tcp);
                continue;
            };
            pending_slot = Some(p);
            None
        } else {
            let Some(slot) = per_address.try_take(remote.ip()) else {
                refuse_per_address();
                drop(tcp);
                continue;
            };
            Some(slot)
        };
        let _ = tcp.set_nodelay(true);
        // The configuration of now: a reload of the client CA applies from the next
        // connection on, and this one keeps what it began with.
        let acceptor = TlsAcceptor::from(tls.config());
        let app = app.clone();
        let state = state.clone();
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        let cut = state.uploads_cut.clone();
        let per_address = per_address.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = async {
                let mut tcp = tcp;
                let (remote, rest, slot) = if proxied {
                    let header = tokio::time::timeout(
                        crate::proxy_protocol::HEADER_WAIT,
                        crate::proxy_protocol::read_header(&mut tcp, remote),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::proxy_protocol::NoHeader::Refused(format!(
                            "no whole PROXY protocol header within {} s",
                            crate::proxy_protocol::HEADER_WAIT.as_secs()
                        )))
                    });
                    drop(pending_slot);
                    let (client, rest) = match header {
                        Ok(x) => x,
                        Err(crate::proxy_protocol::NoHeader::Closed) => return None,
                        Err(why) => {
                            tracing::debug!(proxy = %remote, "connection refused: {why}");
                            metrics::counter!("efs_connections_refused_total", "reason" => "proxy_header")
                                    .increment(1);
                            return None;
                        }
                    };
                    let Some(slot) = per_address.try_take(client.ip()) else {
                        refuse_per_address();
                        return None;
                    };
                    (client, rest, Some(slot))
                } else {
                    (remote, Vec::new(), None)
                };
                // `curl http://…` to this port: told so in plain HTTP (see `plain_http`).
                if crate::plain_http::begins_with_plain_http(&tcp, &rest).await {
                    tracing::debug!(client = %remote, "a plain HTTP request to the HTTPS port: answered 400");
                    metrics::counter!("efs_connections_refused_total", "reason" => "plain_http")
                        .increment(1);
                    crate::plain_http::answer(tcp, &rest).await;
                    return None;
                }
                match acceptor
                    .accept(crate::proxy_protocol::Prefixed::new(rest, tcp))
                    .await
                {
                    Ok(tls) => Some((tls, remote, slot)),
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        None
                    }
                }
            };
            let Ok(Some((tls, remote, proxied_slot))) =
                tokio::time::timeout(Duration::from_secs(10), handshake).await
            else {
                return;
            };
            let _address_slot = (address_slot, proxied_slot);
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| <[u8; 32]>::from(Sha256::digest(c.as_ref())));
            let info = ConnInfo {
                remote,
                client_cert_sha256: cert,
            };
            let activity = Arc::new(crate::connections::Activity::new());
            let act = activity.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    let app = app.clone();
                    let state = state.clone();
                    let in_flight = act.begin();
                    async move {
                        use tower::ServiceExt;
                        let req = req.map(axum::body::Body::new);
                        // File requests skip the router (the same work, see `file_request`).
                        let r = if let Some(refusal) = crate::app::host_refusal(&req) {
                            Ok(refusal)
                        } else if crate::app::is_control_path(req.uri().path()) {
                            app.oneshot(req).await
                        } else {
                            Ok(crate::app::file_request(state, req).await)
                        };
                        // From here, the body's frames are the connection's progress.
                        let progress = in_flight.answered();
                        // A download's length is in its headers (its streamed body knows none).
                        r.map(|resp| {
                            let len = resp
                                .headers()
                                .get(hyper::header::CONTENT_LENGTH)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok());
                            resp.map(|b| crate::connections::guarded(b, progress, len))
                        })
                    }
                },
            );
            // Idle TLS connections are dropped too (see `first_bytes`). The stream comes back
            // when hyper lets go of it, for a lingering close at the shutdown (see `linger`).
            let io = crate::first_bytes::FirstBytesDeadline::new(tls, HEADER_READ_TIMEOUT);
            let (back, mut came_back) = tokio::sync::oneshot::channel();
            let io = crate::linger::HandBack::new(io, back);
            let mut conn = Box::pin(
                builder
                    .serve_connection_with_upgrades(TokioIo::new(io), svc)
                    .into_owned(),
            );
            let mut tick = tokio::time::interval(crate::connections::idle_check_period(idle));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut closing = false;
            // Set once an idle connection was asked to close: it is dropped if it has not
            // closed by then (an HTTP/2 peer that does not answer the closing ping).
            let mut idle_deadline: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.wait_for(|s| *s), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        idle_deadline = None;
                    }
                    _ = tick.tick(), if !closing || idle_deadline.is_some() => {
                        // Idle, or one of its answers stuck (see `Activity`).
                        let idle_now = activity.idle_for().is_some_and(|d| d >= idle)
                            || activity.stalled_for().is_some_and(|d| d >= idle);
                        match idle_deadline {
                            // Asked to close and still making no progress past the grace:
                            // a peer that neither reads nor lets go.
                            Some(d) if idle_now && tokio::time::Instant::now() >= d => {
                                tracing::debug!("dropping an idle connection that did not close");
                                break;
                            }
                            Some(_) => {}
                            None if idle_now => {
                                tracing::debug!("closing an idle connection");
                                conn.as_mut().graceful_shutdown();
                                closing = true;
                                idle_deadline = Some(
                                    tokio::time::Instant::now() + crate::connections::CLOSE_GRACE,
                                );
                            }
                            None => {}
                        }
                    }
                }
            }
            // Past the shutdown timeout, an upload this connection carried was answered 503
            // while its body still arrived: read on a little, so that the client reads the
            // answer rather than a reset (the slot is held meanwhile: the shutdown waits).
            drop(conn);
            if cut.is_cancelled()
                && let Ok(io) = came_back.try_recv()
            {
                crate::linger::linger(io, crate::linger::LINGER).await;
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection has ended once every slot is free again; the writes whose clients
    // hung up run on in their own tasks, and their audit entries must be written before the
    // log closes.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    detached.close();
    tokio::select! {
        _ = async { let _ = slots.acquire_many(all).await; detached.wait().await } => {},
        _ = tokio::time::sleep(timeout) => {
            tracing::warn!(
                "shutdown timeout with requests still in flight: no change begins from now on"
            );
            // No change begins any more (503); the ones begun (commits issued, admin
            // commands) get a little longer, so that they land before the audit log closes
            // and are recorded, rather than landing unrecorded or being answered 503 after
            // they landed.
            state
                .changes_refused
                .store(true, std::sync::atomic::Ordering::Release);
            // Uploads still receiving their bodies stop and are answered 503 (nothing of them
            // stored); their connections are given a moment to carry that answer and its
            // audit entry, rather than being cut with no answer when the process ends.
            state.uploads_cut.cancel();
            let answered = async {
                let _ = tokio::time::timeout(CUT_ANSWERS, slots.acquire_many(all)).await;
            };
            let late = async {
                if tokio::time::timeout(LATE_CHANGES, detached.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "changes begun before the shutdown timeout are still running 10 s \
                         after it; the audit log closes without their entries"
                    );
                }
            };
            tokio::join!(answered, late);
        }
    }
}

/// How long a shutdown waits, after its timeout, for the connections whose uploads it cut to
/// send their 503 and close (the lingering close included, [`crate::linger::LINGER`]); a
/// connection still open then (a download still streaming) is cut when the process ends.
const CUT_ANSWERS: Duration = Duration::from_secs(3);

/// How long a shutdown waits, after its timeout, for the changes begun before it.
const LATE_CHANGES: Duration = Duration::from_secs(10);
