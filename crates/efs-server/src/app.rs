//! The HTTP application: control routes under `/_efs/`, and file routes everywhere else.
//!
//! File paths are arbitrary, so one fallback handler dispatches on method and on whether
//! the path ends in `/` (a directory). Handlers only translate HTTP to `efs_core` calls:
//! nothing here knows a byte layout.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use efs_core::fs::Precondition;
use efs_core::{DataDir, EfsPath, Filesystem, Kind};
use efs_proto::{EntryType, Health, ListEntry, ListPage, MoveRequest};
use futures_util::StreamExt;

use crate::audit::{Who, audit_mark, refuse_if_failed, seal_answer};
use crate::auth::{AuthError, Authenticator, Caller, ChallengeRequest, TokenRequest};
use crate::cache::{CachedFile, ContentCache};
use crate::error::ApiError;
use crate::http_headers::{
    EtagCompare, Unsatisfiable, if_range_allows, joined, parse_etags, parse_range, single,
};
use crate::users::Users;
use efs_core::audit::{Action, Record};

/// Facts about the connection a request came on, set by the accept loop.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: std::net::SocketAddr,
    /// SHA-256 of the client certificate (DER), with mutual TLS.
    pub client_cert_sha256: Option<[u8; 32]>,
}

/// Limits and switches of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest accepted file body.
    pub max_body: u64,
    /// Log paths (personal data!) in request logs. Off by default.
    pub log_paths: bool,
    /// `--body-timeout`: an upload whose body sends no byte for this long, or a JSON body not
    /// complete within it, is abandoned (408), so a client that stops sending does not hold
    /// a connection (and an upload's partial blob) for ever.
    pub body_idle: std::time::Duration,
    /// `--idle-timeout`: a connection that has handled no request and sent no part of an
    /// answer for this long is closed (gracefully, then dropped if it does not close), so idle
    /// keep-alive connections, an HTTP/2 one that only answers pings, and one whose peer
    /// stopped reading its answer do not hold a connection slot for ever.
    pub conn_idle: std::time::Duration,
    /// `--max-connections-per-address`: most connections open at once from one IPv4 address
    /// or IPv6 /64 (0: no limit); beyond, a new one is closed at once.
    pub max_conns_per_address: usize,
    /// `--max-connections`: most connections open at once (further ones wait to be
    /// accepted), lowered at start to what the open-files limit allows.
    pub max_connections: usize,
    /// Most blob files requests hold open at once (uploads past the inline size, reads of
    /// blob content); beyond, such a request is refused with 503 `busy`. What the open-files
    /// limit leaves beside the connections and the reserve
    /// ([`crate::server::blob_files_for_open_files`]).
    pub max_blob_files: usize,
    /// `--proxy-protocol-from`: connections from these networks begin with a PROXY protocol
    /// header, whose client address is then the connection's ([`crate::proxy_protocol`]).
    pub proxy_from: crate::proxy_protocol::Trusted,
}

/// Everything a handler needs.
pub struct AppState {
    /// The open data dir.
    pub data: Arc<DataDir>,
    /// The free-space reserve (`--reserve-space`): requests that add data are refused below it.
    pub reserve: Arc<crate::reserve::Reserve>,
    /// The login protocol.
    pub auth: Arc<Authenticator>,
    /// The user directory.
    pub users: Users,
    /// The decrypted cache.
    pub cache: ContentCache,
    /// Limits.
    pub http: HttpConfig,
    /// Prometheus renderer, and the SHA-256 of the bearer token a scrape must present
    /// (`--metrics-token-file`); `None`: metrics are off.
    pub metrics: Option<(metrics_exporter_prometheus::PrometheusHandle, [u8; 32])>,
    /// The requests running to their end in tasks of their own (`to_completion`) and the
    /// admin commands running: a shutdown waits for them, so their audit entries are written
    /// before the log closes.
    pub detached: tokio_util::task::TaskTracker,
    /// Set once the shutdown timeout has passed: a change that has not begun (a request not
    /// yet run by `to_completion`, an upload whose commit is not issued) is refused with 503,
    /// so that nothing lands after the audit log closes; the shutdown waits a little longer
    /// for those already begun.
    pub changes_refused: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled when the shutdown timeout has passed (with `changes_refused` set): an upload
    /// still receiving its body stops, removes what it wrote and is answered 503 with
    /// `Retry-After`. It was cut with its connection when the process ended, and the client
    /// saw a reset instead of an answer.
    pub uploads_cut: tokio_util::sync::CancellationToken,
    /// The budget of audit entries of requests that proved nobody (shared with the login
    /// hook).
    pub audit_budget: Arc<crate::audit_budget::AuditBudget>,
    /// Login bodies being read, per client address (IPv4 address, IPv6 /64): at most
    /// [`LOGIN_BODIES_PER_ADDRESS`] at once.
    pub login_bodies: Arc<crate::connections::PerAddress>,
    /// Wrong metrics tokens, per client address (IPv6: per /64): past
    /// [`METRICS_FAILURES_PER_MINUTE`] in a minute, `/_efs/metrics` answers 429 there.
    pub metrics_failures: crate::ratelimit::FailureLimiter<IpAddr>,
    /// Places for the blob files requests hold open (`HttpConfig::max_blob_files`): an
    /// upload takes one before the write that opens its temporary file and keeps it to the
    /// end of its commit; a read of a blob takes one (two from the direct-read size on:
    /// `Filesystem::files_to_read`) for as long as its answer streams. Content stored inline
    /// takes none, nor do logins, the audit log or admin commands (those are in the
    /// reserve), so running out of places refuses only the requests that would open a file.
    pub blob_files: Arc<tokio::sync::Semaphore>,
    /// Whether TLS requires a client certificate verified by `--client-ca`: without one, no
    /// connection presents a certificate, and `efsctl bind-cert` is refused (a user bound to
    /// a certificate could never log in).
    pub client_ca: bool,
    /// The TLS certificate served and the client CA required, replaced by `efsctl
    /// reload-tls` and SIGHUP.
    pub tls: Arc<crate::tls::ServedTls>,
    /// When gc last ran on each filesystem and what it removed (the automatic gc's schedule,
    /// `/metrics`), kept in `DATA/system/gc-last-runs`.
    pub gc_runs: Arc<crate::admin_socket::GcRuns>,
}

/// `Retry-After` of a request refused for want of a blob-file place: places free as
/// uploads and downloads end, often within the second.
const BLOB_FILES_RETRY_SECS: u64 = 1;

/// `503 busy`: every place for an open blob file is taken (`AppState::blob_files`).
fn blob_files_busy() -> ApiError {
    metrics::counter!("efs_requests_refused_total", "reason" => "open_files").increment(1);
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        efs_proto::codes::BUSY,
        "the server holds as many files open for uploads and downloads as its open-files limit allows; retry shortly",
    );
    e.retry_after = Some(BLOB_FILES_RETRY_SECS);
    e
}

/// Wrong metrics tokens an address may present in a minute before `/_efs/metrics` refuses
/// it (429): a scraper sends one every few seconds, a guesser many.
pub const METRICS_FAILURES_PER_MINUTE: u32 = 20;

type St = State<Arc<AppState>>;

/// Builds the router (tests can call it without a socket).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/_efs/health", get(health))
        .route("/_efs/metrics", get(metrics_text))
        .route("/_efs/openapi.json", get(openapi))
        .route("/_efs/auth/challenge", post(challenge))
        .route("/_efs/auth/token", post(token))
        .route("/_efs/auth/refresh", post(refresh))
        .route("/_efs/auth/public-key", get(public_key))
        .route("/_efs/move", post(move_json))
        .fallback(files)
        .method_not_allowed_fallback(control_method_not_allowed)
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// A control route called with a method it does not take: the JSON error body every error
/// has, not axum's empty 405.
async fn control_method_not_allowed() -> ApiError {
    // axum's method router puts the route's methods in `Allow`.
    ApiError::method_not_allowed(
        None,
        "this control route does not take this method (see docs/api.md)",
    )
}

/// A request to a file path (anything outside `/_efs`), answered without the router: what
/// [`router`] does for it (the `observe` layer, the `files` fallback, and what axum's router
/// does to every answer it routes, see `finish_routed`) minus the route matching and the
/// boxing of every layer's future, which cost about a tenth of a small GET's CPU
/// (docs/benchmarks-history.md). The server sends only control routes through the router.
pub async fn file_request(st: Arc<AppState>, req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    let res = observed(req, |req| files(State(st), req)).await;
    finish_routed(res, head)
}

/// What axum 0.8's router does to the answer of a route (`RouteFuture`): a `Content-Length`
/// from a body of known size when there is none, then, for `HEAD`, the body dropped. Over
/// HTTP/1.1 hyper drops a `HEAD` answer's body itself; over HTTP/2 it would send it, and the
/// client would reset the stream (an error to a `HEAD` carries a JSON body). A 304 or 204
/// gets no `Content-Length` (RFC 9110 §8.6: a 304's would have to be the 200's length).
fn finish_routed(mut res: Response, head: bool) -> Response {
    use axum::body::HttpBody;
    let bodiless = matches!(
        res.status(),
        StatusCode::NOT_MODIFIED | StatusCode::NO_CONTENT
    );
    if !bodiless
        && !res.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(n) = res.body().size_hint().exact()
    {
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if head {
        *res.body_mut() = Body::empty();
    }
    res
}

/// 400 for an HTTP/1.1 request without exactly one `Host` header (RFC 9112 §3.2: a server
/// MUST refuse it; hyper does not). The authority is what a `MOVE`'s `Destination` is checked
/// against, so a request that names none, or two, is not guessed at.
pub fn host_refusal<B>(req: &axum::http::Request<B>) -> Option<Response> {
    if req.version() != axum::http::Version::HTTP_11 {
        return None;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), None) => None,
        _ => Some(
            ApiError::bad_request("an HTTP/1.1 request needs exactly one Host header")
                .into_response(),
        ),
    }
}

/// True for the paths [`file_request`] must not take: the control routes' prefix.
pub fn is_control_path(path: &str) -> bool {
    path.starts_with("/_efs")
}

/// Request metrics and a log line per request; never a path unless `--log-paths`.
async fn observe(req: Request, next: axum::middleware::Next) -> Response {
    observed(req, |req| next.run(req)).await
}

/// [`observe`]'s work around `run`.
async fn observed<F, Fut>(req: Request, run: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let start = Instant::now();
    let method = req.method().clone();
    let route = route_label(req.uri().path());
    let resp = run(req).await;
    let status = status_label(resp.status());
    let elapsed = start.elapsed().as_secs_f64();
    metrics::counter!("efs_http_requests_total", "route" => route, "method" => method_label(&method), "status" => status).increment(1);
    metrics::histogram!("efs_http_request_duration_seconds", "route" => route).record(elapsed);
    tracing::info!(%method, route, status = resp.status().as_u16(), ms = (elapsed * 1000.0) as u64, "request");
    resp
}

/// The method as a metrics label. Any method EFS does not serve is `OTHER`: a label per
/// unknown method would let anyone, without a login, add series that the recorder keeps for
/// ever.
fn method_label(m: &Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "MOVE" => "MOVE",
        "MKCOL" => "MKCOL",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// The status as a metrics label, without an allocation for the usual ones.
fn status_label(s: StatusCode) -> metrics::SharedString {
    match s.as_u16() {
        200 => "200".into(),
        201 => "201".into(),
        204 => "204".into(),
        206 => "206".into(),
        304 => "304".into(),
        404 => "404".into(),
        n => n.to_string().into(),
    }
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/_efs/health" => "health",
        "/_efs/metrics" => "metrics",
        "/_efs/openapi.json" => "openapi",
        "/_efs/auth/challenge" => "auth_challenge",
        "/_efs/auth/token" => "auth_token",
        "/_efs/auth/refresh" => "auth_refresh",
        "/_efs/auth/public-key" => "auth_public_key",
        "/_efs/move" => "move",
        p if p.starts_with("/_efs") => "reserved",
        p if p.ends_with('/') => "dir",
        _ => "file",
    }
}

/// 503 `audit_unavailable` once the audit log has failed: the server then refuses every
/// request, and a health check should say so.
///
/// Below the free-space reserve it still answers `ok` (reads, deletes and logins are served),
/// with `uploads` saying that new data is refused. A volume with less than
/// [`crate::reserve::HEALTH_FLOOR`] free is `507`, reserve or not: without a reserve, a full
/// disk answered `ok` until a request found the audit log failed.
async fn health(State(st): St) -> Result<axum::Json<Health>, ApiError> {
    refuse_if_failed(&st.data)?;
    if let Some(what) = st.reserve.full_for_health() {
        // No byte counts (a public route): the floor is a constant.
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            efs_proto::codes::INSUFFICIENT_STORAGE,
            format!(
                "the server's {what} is full (under {} free): writes fail, and so will the \
                 audit log, after which every request is refused; the operator must free space",
                crate::reserve::human(crate::reserve::HEALTH_FLOOR)
            ),
        ));
    }
    Ok(axum::Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        // Without byte counts: anyone may poll this route, and the free space read again and
        // again tells how much the tenants upload. The numbers are in the server log,
        // `efsctl health` and the metrics.
        uploads: st
            .reserve
            .check_for_health()
            .err()
            .map(|_| crate::reserve::HEALTH_REFUSED.to_owned()),
    }))
}

/// `/_efs/metrics`, for a scraper presenting the metrics token (`Authorization: Bearer`).
/// The gauges name every filesystem and count its files and bytes, so they are not public;
/// the token is not a user's login (a scraper needs no key, and no user sees the others'
/// filesystems). Compared as SHA-256 digests in constant time.
async fn metrics_text(State(st): St, req: Request) -> Response {
    let Some((h, token_hash)) = &st.metrics else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            efs_proto::codes::NOT_FOUND,
            "metrics are off (start the server with --metrics-token-file)",
        )
        .into_response();
    };
    // Wrong tokens count against the address, as failed logins do: a guesser is slowed to
    // METRICS_FAILURES_PER_MINUTE tries a minute.
    let ip = crate::ratelimit::address_key(client_ip(req.extensions()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if let Err(crate::ratelimit::RetryAfter(secs)) = st.metrics_failures.check(&ip, now) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            efs_proto::codes::RATE_LIMITED,
            format!(
                "too many wrong metrics tokens from this address (at most \
                 {METRICS_FAILURES_PER_MINUTE} a minute); retry later"
            ),
        );
        e.retry_after = Some(secs);
        return e.into_response();
    }
    let presented = bearer(req.headers()).map(crate::metrics_token::digest);
    let ok = presented
        .is_some_and(|d| bool::from(subtle::ConstantTimeEq::ct_eq(&d[..], &token_hash[..])));
    if !ok {
        // A request with no token guesses nothing: only wrong tokens count.
        if presented.is_some() {
            st.metrics_failures.record_failure(&ip, now);
        }
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            efs_proto::codes::UNAUTHORIZED,
            "metrics need the metrics token: Authorization: Bearer <token>",
        )
        .into_response();
    }
    // Per-filesystem gauges (cheap: files and bytes are recounted in the background).
    crate::fsmetrics::before_render(&st.data, &st.gc_runs).await;
    // Free space where the reserve looks (`what`: "data volume", or "audit log's volume" when
    // the log is on a filesystem of its own), and the reserve.
    for (volume, reserve) in st.reserve.reserves() {
        metrics::gauge!("efs_reserve_bytes", "volume" => volume).set(reserve as f64);
    }
    for (volume, free) in st.reserve.free() {
        if let Some(free) = free {
            metrics::gauge!("efs_free_bytes", "volume" => volume).set(free as f64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::OPENAPI_JSON,
    )
        .into_response()
}

async fn public_key(State(st): St) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        st.auth.public_key_pem(),
    )
        .into_response()
}

fn client_ip(req_ext: &axum::http::Extensions) -> IpAddr {
    req_ext
        .get::<ConnInfo>()
        .map(|c| c.remote.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The largest body of a login request (a challenge request or a signed token request:
/// a few hundred bytes).
const LOGIN_BODY_MAX: usize = 8 << 10;
/// The longest a login request's body may take to arrive (at most `--body-timeout`): the
/// login routes take requests from anyone, and a handler waiting for a body holds memory
/// and keeps its connection from counting as idle.
const LOGIN_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A JSON request body of at most 64 KiB, whole within `--body-timeout` (408 otherwise, as
/// for a stalled upload: a client that stops sending does not hold the connection).
async fn json_body<T: serde::de::DeserializeOwned>(
    st: &AppState,
    body: Body,
) -> Result<T, ApiError> {
    json_body_within(body, 64 << 10, st.http.body_idle).await
}

/// The most login bodies read at once from one client address (IPv4 address, IPv6 /64).
/// The login routes answer anyone: without it, one address could hold a handler and up to
/// 8 KiB of memory per stream, on every stream of every connection it may open (256 × 256
/// by default: 512 MiB), for 10 s each. An honest client has one login in flight; a
/// gateway in front of many, a few dozen. Off where `--max-connections-per-address` is 0
/// (behind a proxy, every client has the proxy's address).
pub const LOGIN_BODIES_PER_ADDRESS: usize = 64;

/// A login request's JSON body: at most [`LOGIN_BODY_MAX`], within [`LOGIN_BODY_DEADLINE`],
/// and at most [`LOGIN_BODIES_PER_ADDRESS`] read at once from `ip`'s address (429 beyond).
async fn login_body<T: serde::de::DeserializeOwned>(
    st: &AppState,
    ip: IpAddr,
    body: Body,
) -> Result<T, ApiError> {
    let Some(_slot) = st.login_bodies.try_take(ip) else {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            efs_proto::codes::RATE_LIMITED,
            format!(
                "too many login requests in progress from this address (at most \
                 {LOGIN_BODIES_PER_ADDRESS}); retry"
            ),
        );
        e.retry_after = Some(1);
        return Err(e);
    };
    json_body_within(
        body,
        LOGIN_BODY_MAX,
        st.http.body_idle.min(LOGIN_BODY_DEADLINE),
    )
    .await
}

async fn json_body_within<T: serde::de::DeserializeOwned>(
    body: Body,
    max: usize,
    deadline: std::time::Duration,
) -> Result<T, ApiError> {
    let bytes = tokio::time::timeout(deadline, axum::body::to_bytes(body, max))
        .await
        .map_err(|_| body_timeout(deadline))?
        .map_err(|_| {
            ApiError::bad_request(format!(
                "the JSON body is unreadable or larger than {} KiB",
                max >> 10
            ))
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // Not serde's own text: it quotes the client's values (`invalid type: string
        // "/patients/173"`), and an error message never carries a path.
        let what = match e.classify() {
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Eof => "it ends too early",
            serde_json::error::Category::Data => {
                "a field is missing, unknown or of the wrong type (see docs/api.md)"
            }
            serde_json::error::Category::Io => "unreadable",
        };
        ApiError::bad_request(format!(
            "invalid JSON body: {what} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// `408 request_timeout`: a request body stopped arriving; nothing was done.
fn body_timeout(limit: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        efs_proto::codes::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {} s: nothing was done",
            limit.as_secs()
        ),
    )
}

async fn challenge(State(st): St, req: Request) -> Result<Response, ApiError> {
    let ip = client_ip(req.extensions());
    let body: ChallengeRequest = login_body(&st, ip, req.into_body()).await?;
    let r = st.auth.challenge(&body, ip)?;
    Ok(axum::Json(r).into_response())
}

async fn token(State(st): St, req: Request) -> Result<Response, ApiError> {
    let ip = client_ip(req.extensions());
    let cert = req
        .extensions()
        .get::<ConnInfo>()
        .and_then(|c| c.client_cert_sha256);
    let body: TokenRequest = login_body(&st, ip, req.into_body()).await?;
    let mark = audit_mark(&st.data)?;
    // The certificate binding is checked by the login, after the signature: refused before
    // it, a bound user would be told apart from others by anyone.
    let r = st.auth.login_with_cert(&body, ip, cert);
    // The hook wrote the login's entry: no token leaves if that write failed.
    st.data
        .audit()
        .sync_point(mark)
        .await
        .map_err(|_| ApiError::audit_unavailable())?;
    metrics::counter!("efs_logins_total", "result" => if r.is_ok() { "ok" } else { "failed" })
        .increment(1);
    Ok(axum::Json(r?).into_response())
}

async fn refresh(State(st): St, req: Request) -> Result<Response, ApiError> {
    let ip = client_ip(req.extensions());
    let mark = audit_mark(&st.data)?;
    let token = bearer(req.headers()).ok_or_else(ApiError::unauthorized)?;
    // A user bound to a client certificate renews only over a connection that has it.
    let r = match st.auth.verify_named(token, ip) {
        // Two entries, as for every request with a refused token: the token's
        // (`token-rejected`) and the refresh's own (`refresh-failed`, with the reason).
        Err(refused) => {
            st.auth.report_refresh_refused(&refused, ip);
            Err(token_refused(refused.error))
        }
        Ok(caller) => {
            let cert = req
                .extensions()
                .get::<ConnInfo>()
                .and_then(|c| c.client_cert_sha256);
            match check_cert_binding(&st, caller.user(), cert) {
                Err(e) => {
                    let mut rec = Record::new(Action::RefreshFailed, 401);
                    rec.user = Some(caller.user().to_owned());
                    rec.fs = Some(caller.fs().to_owned());
                    rec.client = Some(ip.to_string());
                    rec.detail =
                        Some("client certificate does not match the one bound to the user".into());
                    let _ = st.data.audit().submit(rec);
                    Err(e)
                }
                // Renewals used up, or the token refused since the check above: the one
                // 401 body of every refused token.
                Ok(()) => st.auth.refresh(token, ip).map_err(token_refused),
            }
        }
    };
    st.data
        .audit()
        .sync_point(mark)
        .await
        .map_err(|_| ApiError::audit_unavailable())?;
    Ok(axum::Json(r?).into_response())
}

/// With mutual TLS, a user bound to a certificate must come with exactly that one.
fn check_cert_binding(st: &AppState, user: &str, cert: Option<[u8; 32]>) -> Result<(), ApiError> {
    if let Some(bound) = st.users.cert_binding(user) {
        let ok = cert.map(|c| {
            use subtle::ConstantTimeEq;
            bool::from(c.ct_eq(&bound))
        });
        if ok != Some(true) {
            tracing::debug!("client certificate does not match the one bound to the user");
            return Err(ApiError::unauthorized());
        }
    }
    Ok(())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    // Two Authorization lines: no token (which one a proxy checked is unknown).
    let v = single(headers, header::AUTHORIZATION.as_str())
        .ok()??
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// A refused token as its answer: the one 401 of every refusal of a request's token (none,
/// malformed, forged, expired, revoked, or valid without its bound certificate), so that the
/// answer does not tell a thief holding a live token apart from one holding a dead one.
fn token_refused(e: AuthError) -> ApiError {
    match e {
        AuthError::Unauthorized(_) => {
            tracing::debug!(reason = e.internal_reason(), "token refused");
            ApiError::unauthorized()
        }
        other => other.into(),
    }
}

/// Authenticates a file request: the token, the certificate binding, the filesystem.
fn authorise(
    st: &AppState,
    req_headers: &HeaderMap,
    ext: &axum::http::Extensions,
    who: &mut Who,
) -> Result<(Caller, Arc<Filesystem>), ApiError> {
    let token = bearer(req_headers).ok_or_else(ApiError::unauthorized)?;
    let caller = match st.auth.verify_named(token, client_ip(ext)) {
        Ok(caller) => caller,
        Err(refused) => {
            // A token this server signed, refused (expired, revoked): its entry names the
            // user, outside the audit budget.
            who.user = refused.user;
            who.fs = refused.fs;
            return Err(token_refused(refused.error));
        }
    };
    // Named in the entry from here on, whatever follows: a valid token presented without
    // its bound certificate is recorded with its user, outside the audit budget.
    who.user = Some(caller.user().to_owned());
    who.fs = Some(caller.fs().to_owned());
    let cert = ext.get::<ConnInfo>().and_then(|c| c.client_cert_sha256);
    check_cert_binding(st, caller.user(), cert)?;
    let fs = match st.data.fs(caller.fs()) {
        Some(fs) => fs,
        // Its index could not be opened at the start: held, as one that failed its check.
        None if st.data.unopened(caller.fs()).is_some() => {
            return Err(efs_core::CoreError::IndexHold.into());
        }
        None => return Err(ApiError::unauthorized()),
    };
    Ok((caller, fs))
}

fn require_write(c: &Caller) -> Result<(), ApiError> {
    if c.read_only {
        return Err(ApiError::forbidden(
            "this user has read-only access to this filesystem",
        ));
    }
    Ok(())
}

async fn move_json(State(st): St, req: Request) -> Result<Response, ApiError> {
    let run = move_json_now(st.clone(), req);
    to_completion(&st, run).await?
}

/// Runs a request that may change the filesystem to its end, even if the client goes away.
///
/// hyper drops the handler of a request whose connection closed (an HTTP/1 EOF, an HTTP/2
/// reset). A write, move or delete dropped while the index commits it would still land, but
/// its audit entry, written once the commit has answered, never would. In a task of its
/// own the request finishes and is recorded whatever the client does; a shutdown waits for
/// it (`st.detached`). Reads need no such care, and do without the task.
///
/// Past the shutdown timeout (`st.changes_refused`) the request is not run: 503. The check is
/// made inside the tracked task, so that the shutdown's last wait covers every request that
/// passed it.
async fn to_completion<F>(st: &AppState, request: F) -> Result<F::Output, ApiError>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let refused = st.changes_refused.clone();
    let task = st.detached.spawn(async move {
        if refused.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        Some(request.await)
    });
    match task.await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(shutting_down()),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only when the runtime shuts down.
            Err(_) => Err(shutting_down()),
        },
    }
}

/// Whether a change may begin now: not past the shutdown timeout (503 `unavailable`), not
/// with a failed audit log (503 `audit_unavailable`). For a change that read a body first.
fn may_begin(st: &AppState) -> Result<(), ApiError> {
    if st
        .changes_refused
        .load(std::sync::atomic::Ordering::Acquire)
    {
        return Err(shutting_down());
    }
    refuse_if_failed(&st.data)
}

fn shutting_down() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        efs_proto::codes::UNAVAILABLE,
        "the server is shutting down",
    );
    e.retry_after = Some(SHUTDOWN_RETRY_SECS);
    e
}

/// `Retry-After` of a request refused because the server is stopping: a restart takes
/// seconds.
const SHUTDOWN_RETRY_SECS: u64 = 5;

/// 503 for an upload whose body was still arriving when the shutdown timeout passed
/// (`AppState::uploads_cut`): stopped there, nothing of it stored.
fn upload_cut_at_shutdown() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        efs_proto::codes::UNAVAILABLE,
        "the server is shutting down: the upload was stopped before its end and nothing of it \
         is stored; send it again in a moment",
    );
    e.retry_after = Some(SHUTDOWN_RETRY_SECS);
    e
}

async fn move_json_now(st: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    refuse_if_failed(&st.data)?;
    let ip = client_ip(req.extensions());
    let mut who = Who::new(Action::Move);
    let r = move_json_inner(&st, req, &mut who).await;
    seal_answer(&st.data, &st.audit_budget, who, ip, r).await
}

async fn move_json_inner(st: &AppState, req: Request, who: &mut Who) -> Result<Response, ApiError> {
    let (caller, fs) = authorise(st, req.headers(), req.extensions(), who)?;
    require_write(&caller)?;
    let cond = write_precondition(req.headers())?;
    let (parts, body) = req.into_parts();
    let body: MoveRequest = json_body(st, body).await?;
    let from = EfsPath::parse(&body.from).map_err(efs_core::CoreError::from)?;
    who.path = Some(from.to_string());
    let to = EfsPath::parse(&body.to).map_err(efs_core::CoreError::from)?;
    who.to = Some(to.to_string());
    // The body may have taken up to --body-timeout: past a shutdown's timeout, or with an
    // audit log that failed meanwhile, the move does not begin; nor after a revoke, a
    // read-only grant or an expiry meanwhile (as for an upload).
    let _gate = checked_for_commit(st, &parts.headers, &parts.extensions, who, &fs).await?;
    let dir_only = names_dir(&body.from) || names_dir(&body.to);
    do_move(&fs, &from, &to, body.overwrite, cond, dir_only).await
}

/// The caller's token, certificate binding and write access to the same filesystem,
/// checked again before a change whose request body took a while lands (a cached check:
/// about a microsecond): a revoke, a read-only grant or an expiry meanwhile refuses it.
fn authorise_write_again(
    st: &AppState,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    who: &mut Who,
    fs: &Arc<Filesystem>,
) -> Result<(), ApiError> {
    let (caller, now) = authorise(st, headers, extensions, who)?;
    require_write(&caller)?;
    if !Arc::ptr_eq(&now, fs) {
        return Err(ApiError::unauthorized());
    }
    Ok(())
}

/// [`may_begin`] and [`authorise_write_again`] for a change about to be committed, under a
/// shared hold of the data dir's authority lock (`DataDir::authority`), returned to be kept
/// until the commit has ended: a revoke (or any command taking authority away) waits for the
/// changes checked before it and is seen by every later check, so that once it has answered
/// nothing the caller sent before lands.
async fn checked_for_commit(
    st: &AppState,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    who: &mut Who,
    fs: &Arc<Filesystem>,
) -> Result<tokio::sync::OwnedRwLockReadGuard<()>, ApiError> {
    let gate = st.data.authority().clone().read_owned().await;
    may_begin(st).and_then(|()| authorise_write_again(st, headers, extensions, who, fs))?;
    Ok(gate)
}

/// Whether a path names a directory by its trailing `/` (the root aside).
fn names_dir(path: &str) -> bool {
    path.len() > 1 && path.ends_with('/')
}

/// A move; `dir_only`: the source or the destination ended in `/`, so only a directory moves.
async fn do_move(
    fs: &Filesystem,
    from: &EfsPath,
    to: &EfsPath,
    overwrite: bool,
    cond: Precondition,
    dir_only: bool,
) -> Result<Response, ApiError> {
    // A path ending in `/` names a directory (docs/api.md): a move of `/a.pdf/` must not move
    // the file `/a.pdf`; the kind is checked in the move's own commit.
    let e = if dir_only {
        fs.rename_dir_if(from, to, overwrite, cond).await?
    } else {
        fs.rename_if(from, to, overwrite, cond).await?
    };
    let mut r = (StatusCode::OK, axum::Json(list_entry(&e))).into_response();
    if e.kind == Kind::File {
        set_etag(r.headers_mut(), &e);
    }
    Ok(r)
}

/// Uploads larger than this (or of unknown length) are checked against what their path holds
/// before their body is read (see `write`).
const EARLY_CHECK_MIN: u64 = 1 << 20;

/// Most entries in one page of a listing (`?limit=`).
const MAX_PAGE: usize = 10_000;

/// The query parameters a file route may use, as sent (percent-encoded), not yet checked:
/// each is decoded and checked by the route that uses it (a cache-busting `?v=%E9` or a
/// stray `?limit=0` on a GET of a file is nobody's concern).
#[derive(Default)]
struct Query {
    cursor: Option<String>,
    limit: Option<String>,
    recursive: Option<String>,
    /// The parameters given more than once: refused by the route that uses them (which one
    /// counts is not for EFS to guess: a proxy or a library may read the first, EFS read the
    /// last, and `?recursive=false&recursive=true` deleted a whole tree).
    twice: Vec<&'static str>,
}

impl Query {
    /// Refuses `name` given more than once.
    fn once(&self, name: &'static str) -> Result<(), ApiError> {
        if self.twice.contains(&name) {
            return Err(ApiError::bad_request(format!(
                "{name} is given more than once in the query"
            )));
        }
        Ok(())
    }
}

/// A query value percent-decoded, as UTF-8.
fn query_value(raw: &str, name: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::bad_request(format!("{name} is not UTF-8 once percent-decoded")))
}

impl Query {
    /// `?cursor=`, decoded.
    fn cursor(&self) -> Result<Option<String>, ApiError> {
        self.once("cursor")?;
        self.cursor
            .as_deref()
            .map(|c| query_value(c, "cursor"))
            .transpose()
    }

    /// `?limit=`: 1 to [`MAX_PAGE`], 1000 if absent.
    fn limit(&self) -> Result<usize, ApiError> {
        self.once("limit")?;
        let Some(v) = &self.limit else {
            return Ok(1000);
        };
        let v = query_value(v, "limit")?;
        // Digits only: `str::parse` would also take `+5`.
        Some(v.as_str())
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be a whole number from 1 to {MAX_PAGE}"))
            })
    }

    /// `?recursive=`: `true`, `1` or empty; `false` or `0`; false if absent.
    fn recursive(&self) -> Result<bool, ApiError> {
        self.once("recursive")?;
        let Some(v) = &self.recursive else {
            return Ok(false);
        };
        match query_value(v, "recursive")?.as_str() {
            "0" | "false" => Ok(false),
            "" | "1" | "true" => Ok(true),
            _ => Err(ApiError::bad_request("recursive must be true or false")),
        }
    }
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_encoding::percent_decode_str(k).decode_utf8();
        let (slot, name) = match name.as_deref() {
            Ok("cursor") => (&mut out.cursor, "cursor"),
            Ok("limit") => (&mut out.limit, "limit"),
            Ok("recursive") => (&mut out.recursive, "recursive"),
            _ => continue,
        };
        if slot.replace(v.to_owned()).is_some() && !out.twice.contains(&name) {
            out.twice.push(name);
        }
    }
    out
}

/// The audit action of a file route.
fn file_action(method: &Method, is_dir: bool) -> Action {
    match (method.as_str(), is_dir) {
        ("GET", false) => Action::Read,
        ("GET", true) => Action::List,
        ("HEAD", _) => Action::Stat,
        ("PUT" | "POST", false) => Action::Write,
        ("PUT" | "POST", true) | ("MKCOL", _) => Action::Mkdir,
        ("DELETE", _) => Action::Delete,
        ("MOVE", _) => Action::Move,
        _ => Action::Other,
    }
}

/// Every file route. Each request's audit entry is written before its answer leaves.
async fn files(State(st): St, req: Request) -> Response {
    let upload =
        matches!(*req.method(), Method::PUT | Method::POST) && !req.uri().path().ends_with('/');
    if matches!(*req.method(), Method::GET | Method::HEAD) || upload {
        // Reads need nothing more; an upload records its own entry if dropped once its
        // commit is issued (`Who::committing`), and stays in this task so that its body
        // chunks are not handed from task to task.
        files_now(st, req).await
    } else {
        let run = files_now(st.clone(), req);
        to_completion(&st, run)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    }
}

async fn files_now(st: Arc<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let result = match refuse_if_failed(&st.data) {
        Err(e) => Err(e),
        Ok(()) => {
            let mut who = Who::new(file_action(&parts.method, parts.uri.path().ends_with('/')));
            let r = files_inner(st.clone(), &parts, &mut body, &mut who).await;
            seal_answer(
                &st.data,
                &st.audit_budget,
                who,
                client_ip(&parts.extensions),
                r,
            )
            .await
        }
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(b) = body {
                drain_small_body(&parts, b).await;
            }
            e.into_response()
        }
    }
}

/// A directory is made without a body: one sent with `PUT /dir/` is most likely a file's
/// upload to a path ending in '/' by mistake, and was thrown away under a `201`. Refused
/// (`400`) when its length is announced, or when its first bytes arrive (a body of unknown
/// length, read until it ends or brings a byte, within the body timeout).
async fn no_body(
    st: &AppState,
    parts: &axum::http::request::Parts,
    body: &mut Option<Body>,
) -> Result<(), ApiError> {
    const REFUSED: &str =
        "a directory is made without a body: to upload a file, leave out the trailing '/'";
    match parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(0) => return Ok(()),
        Some(_) => return Err(ApiError::bad_request(REFUSED)),
        None => {}
    }
    let Some(b) = body.take() else { return Ok(()) };
    match tokio::time::timeout(st.http.body_idle, axum::body::to_bytes(b, 0)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(ApiError::bad_request(REFUSED)),
        Err(_) => Err(body_timeout(st.http.body_idle)),
    }
}

/// Reads and drops a small unread request body before an error answer. Over HTTP/2 an
/// answer that leaves the body unread ends with a stream reset, which some clients (curl
/// 7.88) report as a transport error instead of showing the answer. Bodies announced larger
/// than 1 MiB, or slower than 2 s, are not waited for; nor is the body of an HTTP/1.1 request
/// that waits for `100 Continue` before sending it: reading it would ask for the body
/// (hyper sends the `100` when it is first read) that the refusal made useless.
async fn drain_small_body(parts: &axum::http::request::Parts, body: Body) {
    const LIMIT: usize = 1 << 20;
    let headers = &parts.headers;
    if parts.version == axum::http::Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        return;
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > LIMIT as u64) {
        return;
    }
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        axum::body::to_bytes(body, LIMIT),
    )
    .await;
}

async fn files_inner(
    st: Arc<AppState>,
    parts: &axum::http::request::Parts,
    body: &mut Option<Body>,
    who: &mut Who,
) -> Result<Response, ApiError> {
    let raw_path = parts.uri.path();
    if raw_path == "/_efs" || raw_path.starts_with("/_efs/") {
        return Err(path_refused(
            &st,
            parts,
            who,
            ApiError::new(
                StatusCode::BAD_REQUEST,
                efs_proto::codes::INVALID_PATH,
                "paths under /_efs/ are reserved (no such control route)",
            ),
        ));
    }
    let is_dir = raw_path.ends_with('/');
    // Validate the path before anything else: a bad path is a 400 even without a token.
    let path = EfsPath::parse_uri_path(raw_path)
        .map_err(|e| path_refused(&st, parts, who, efs_core::CoreError::from(e).into()))?;
    if st.http.log_paths {
        tracing::info!(path = %path, "path");
    }
    who.path = Some(path.to_string());
    let (caller, fs) = authorise(&st, &parts.headers, &parts.extensions, who)?;
    let query = parse_query(parts.uri.query());
    let method = parts.method.clone();
    match (method.as_str(), is_dir) {
        ("GET", true) => list(&fs, &path, &query, &parts.headers).await,
        // The listing GET would send (its body dropped on the way out): the same checks,
        // status and headers, its length included.
        ("HEAD", true) => list(&fs, &path, &query, &parts.headers).await,
        ("GET", false) | ("HEAD", false) => {
            let allowed = StillAllowed {
                st,
                caller,
                client: client_ip(&parts.extensions),
                path: None,
            };
            read(&allowed, &fs, &path, &parts.headers, method == Method::HEAD).await
        }
        ("PUT", false) | ("POST", false) => {
            require_write(&caller)?;
            write(&st, &fs, &path, parts, body, who).await
        }
        ("PUT", true) | ("POST", true) | ("MKCOL", _) => {
            require_write(&caller)?;
            let cond = write_precondition(&parts.headers)?;
            no_body(&st, parts, body).await?;
            // A directory is an index record: small, but added data all the same.
            st.reserve.check().map_err(|low| low.refusal())?;
            let _gate =
                checked_for_commit(&st, &parts.headers, &parts.extensions, who, &fs).await?;
            let e = fs.mkdir_if(&path, cond).await?;
            Ok((StatusCode::CREATED, axum::Json(list_entry(&e))).into_response())
        }
        ("DELETE", _) => {
            require_write(&caller)?;
            let cond = write_precondition(&parts.headers)?;
            // `DELETE /a` on a directory works too, like `rm -r` needs; `DELETE /a/` only
            // on a directory. A recursive delete detaches the tree in one commit (gone for
            // every reader, whole or gone after a crash); the caller's token and write
            // access are checked again just before it, and its content is removed in the
            // background after the 204.
            let allowed = || {
                let mut again = Who::new(Action::Delete);
                authorise_write_again(&st, &parts.headers, &parts.extensions, &mut again, &fs)
                    .is_ok()
            };
            let dir_only = is_dir && !path.is_root();
            let recursive = query.recursive()?;
            // Checked again under the authority lock (a revoke that answered meanwhile
            // refuses it), the lock kept until the commit has ended.
            let gate = checked_for_commit(&st, &parts.headers, &parts.extensions, who, &fs).await?;
            fs.delete_while(&path, cond, recursive, dir_only, &allowed)
                .await?;
            drop(gate);
            if recursive {
                fs.empty_trash_in_background();
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("MOVE", _) => {
            require_write(&caller)?;
            let dest = single(&parts.headers, "destination")
                .map_err(|_| ApiError::bad_request("more than one Destination header"))?
                .ok_or_else(|| ApiError::bad_request("MOVE needs a Destination header"))?
                .to_str()
                .map_err(|_| {
                    ApiError::bad_request(
                        "the Destination header is not ASCII text: percent-encode the path (UTF-8)",
                    )
                })?;
            let dest_path = destination_path(dest, request_authority(parts))?;
            let to = EfsPath::parse_uri_path(&dest_path).map_err(efs_core::CoreError::from)?;
            who.to = Some(to.to_string());
            // RFC 4918 §10.6: T or F (case-insensitive, as ABNF strings are); absent is F.
            let overwrite = match single(&parts.headers, "overwrite")
                .map_err(|_| ApiError::bad_request("more than one Overwrite header"))?
                .map(|v| v.as_bytes())
            {
                None => false,
                Some(b"T" | b"t") => true,
                Some(b"F" | b"f") => false,
                Some(_) => return Err(ApiError::bad_request("Overwrite must be T or F")),
            };
            let cond = write_precondition(&parts.headers)?;
            let dir_only = is_dir || names_dir(&dest_path);
            let _gate =
                checked_for_commit(&st, &parts.headers, &parts.extensions, who, &fs).await?;
            do_move(&fs, &path, &to, overwrite, cond, dir_only).await
        }
        _ => Err(ApiError::method_not_allowed(
            Some("GET, HEAD, PUT, POST, DELETE, MOVE, MKCOL"),
            "use GET, HEAD, PUT, POST, DELETE or MOVE on files; GET, HEAD, PUT, POST, MKCOL, DELETE or MOVE on directories (trailing '/')",
        )),
    }
}

/// A request refused for its path (400 `invalid_path`) before its token was looked at: its
/// entry names the token's user and filesystem when the token checks out (an insider's
/// `/a/../b` is then seen under `audit show --user`, and is not counted against the budget
/// of callers who proved nobody). The answer does not change; a missing or refused token
/// leaves the entry as it was, with no entry of its own. Only refused requests pay for the
/// check.
fn path_refused(
    st: &AppState,
    parts: &axum::http::request::Parts,
    who: &mut Who,
    refusal: ApiError,
) -> ApiError {
    if let Some(caller) = bearer(&parts.headers).and_then(|t| st.auth.identify(t)) {
        who.user = Some(caller.user().to_owned());
        who.fs = Some(caller.fs().to_owned());
    }
    refusal
}

/// The host and port the client addressed: the HTTP/2 `:authority`, else the `Host` header.
fn request_authority(parts: &axum::http::request::Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
}

/// The path a `MOVE` names in its `Destination` (RFC 4918 §10.3): an absolute path, or an
/// absolute `http(s)` URI whose host and port are the ones this request was sent to. A query
/// or fragment, another server, or anything else is refused (400): a file is never moved to
/// a path the client did not mean.
fn destination_path(dest: &str, authority: Option<&str>) -> Result<String, ApiError> {
    let bad = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            efs_proto::codes::INVALID_PATH,
            format!("Destination {why}"),
        )
    };
    if dest.contains(['?', '#']) {
        return Err(bad("may not carry a query or a fragment"));
    }
    let uri: axum::http::Uri = dest
        .parse()
        .map_err(|_| bad("must be an absolute path or URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (None, None) if dest.starts_with('/') => {}
        // Credentials in a URL (`https://user:pass@host/…`) are no part of a destination.
        (Some("https"), Some(a)) if a.as_str().contains('@') => {
            return Err(bad("may not carry a user name or password"));
        }
        (Some("https"), Some(a)) if authority.is_some_and(|h| same_authority(h, a)) => {}
        (Some("https"), Some(_)) => {
            return Err(bad(
                "names another server than the one this request was sent to (another host, or \
                 another port: 443 where it is left out): give the path alone, e.g. /dir/name",
            ));
        }
        _ => return Err(bad("must be an absolute path or an https:// URL")),
    }
    Ok(uri.path().to_owned())
}

/// Whether the authority the request was sent to (`Host` or `:authority`) and the one a
/// `Destination` URL names are the same host and port, the port being 443 where it is left
/// out (the server speaks only HTTPS). Names compare without case; IP addresses as
/// addresses (`[0:0::1]` is `[::1]`).
fn same_authority(request: &str, dest: &axum::http::uri::Authority) -> bool {
    let Ok(request) = request.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    same_host(request.host(), dest.host())
        && matches!(
            (port_number(&request), port_number(dest)),
            (Some(a), Some(b)) if a == b
        )
}

/// Whether two hosts of authorities are the same: IP literals (IPv6 in brackets) as
/// addresses, names without case.
fn same_host(a: &str, b: &str) -> bool {
    let ip = |h: &str| {
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h)
            .parse::<std::net::IpAddr>()
            .ok()
    };
    match (ip(a), ip(b)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// The port an authority names, as a number: 443 when it is left out or empty (RFC 3986
/// §3.2.3), leading zeros ignored (`:0443` is 443); `None` for one past 65535. The `http`
/// crate's `port_u16` gives `None` for such a port too, which read as "left out" made
/// `https://host:65979/x` the same server as `https://host/x`.
fn port_number(a: &axum::http::uri::Authority) -> Option<u16> {
    let s = a.as_str();
    let host_port = s.rsplit_once('@').map_or(s, |(_, h)| h);
    let rest = host_port.get(a.host().len()..)?;
    let digits = match rest.strip_prefix(':') {
        None if rest.is_empty() => return Some(443),
        Some("") => return Some(443),
        Some(d) if d.bytes().all(|b| b.is_ascii_digit()) => d,
        _ => return None,
    };
    let n = digits.bytes().fold(0u32, |n, b| {
        n.saturating_mul(10).saturating_add(u32::from(b - b'0'))
    });
    u16::try_from(n).ok()
}

fn list_entry(e: &efs_core::Entry) -> ListEntry {
    ListEntry {
        name: e.name.clone(),
        kind: match e.kind {
            Kind::File => EntryType::File,
            Kind::Dir => EntryType::Dir,
        },
        size: e.size,
        modified: rfc3339(e.modified_ms),
        etag: (e.kind == Kind::File).then(|| e.etag()),
        content_type: e.content_type.clone(),
    }
}

fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn http_date(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    httpdate::fmt_http_date(t)
}

async fn list(
    fs: &Filesystem,
    path: &EfsPath,
    q: &Query,
    h: &HeaderMap,
) -> Result<Response, ApiError> {
    let limit = q.limit()?;
    // Sealed: in clear a cursor is the index key the page ended at (see `seal_cursor`).
    let cursor = match q.cursor()? {
        None => None,
        Some(c) => Some(
            fs.open_cursor(&c)
                .ok_or_else(|| ApiError::bad_request(efs_core::error::BAD_CURSOR))?,
        ),
    };
    let (entries, next) = fs.list(path, cursor.as_ref(), limit).await?;
    // A directory has no entity tag: `If-Match` with tags matches none of it (412, as a
    // DELETE or MKCOL of it answers); `*` matches it, since it exists (RFC 9110 §13.1.1).
    // After the listing: a missing directory is a 404 whatever the condition.
    if let Some(v) = joined(h, &header::IF_MATCH) {
        let v = v.map_err(|_| ApiError::bad_request("bad If-Match"))?;
        if parse_etags(&v, EtagCompare::Strong).is_some() {
            return Err(efs_core::CoreError::Precondition.into());
        }
    }
    let page = ListPage {
        path: if path.is_root() {
            "/".into()
        } else {
            format!("{path}/")
        },
        entries: entries.iter().map(list_entry).collect(),
        next_cursor: next.map(|k| fs.seal_cursor(&k)),
    };
    let mut r = axum::Json(page).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `ETag`, from the bytes [`efs_core::Entry::etag_bytes`] writes on the stack (one
/// allocation, the header value's, where the `String` took three).
fn set_etag(h: &mut HeaderMap, e: &efs_core::Entry) {
    if let Ok(v) = HeaderValue::from_bytes(&e.etag_bytes()) {
        h.insert(header::ETAG, v);
    }
}

/// An HTTP-date header as seconds since the epoch; `None` when absent or not a date.
fn header_date(h: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    // More than one line is more than one member: ignored (RFC 9110 §13.1.3, §13.1.4).
    let v = single(h, name.as_str()).ok()??.to_str().ok()?;
    let t = httpdate::parse_http_date(v).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// An entry's modification time as `Last-Modified` gives it (whole seconds).
fn modified_secs(e: &efs_core::Entry) -> u64 {
    (e.modified_ms.max(0) as u64) / 1000
}

fn write_precondition(h: &HeaderMap) -> Result<Precondition, ApiError> {
    // Dates are a second coarse and clocks differ: a write is conditioned on the version.
    if h.contains_key(header::IF_UNMODIFIED_SINCE) && !h.contains_key(header::IF_MATCH) {
        return Err(ApiError::bad_request(
            "If-Unmodified-Since is not supported on writes: use If-Match with the ETag",
        ));
    }
    let if_match = joined(h, &header::IF_MATCH)
        .transpose()
        .map_err(|_| ApiError::bad_request("bad If-Match"))?;
    let if_none_match = joined(h, &header::IF_NONE_MATCH)
        .transpose()
        .map_err(|_| ApiError::bad_request("bad If-None-Match"))?;
    if if_none_match.as_deref().is_some_and(|v| v.trim() != "*") {
        return Err(ApiError::bad_request(
            "only If-None-Match: * is supported on writes",
        ));
    }
    Ok(match (if_match, if_none_match) {
        // If-Match wants a current version, If-None-Match: * none: both never hold (RFC
        // 9110 §13.2.2 checks both). Taking only If-Match replaced or deleted the file.
        (Some(_), Some(_)) => return Err(efs_core::CoreError::Precondition.into()),
        (Some(v), None) => match parse_etags(&v, EtagCompare::Strong) {
            None => Precondition::IfExists,
            Some(tags) => Precondition::IfMatch(tags),
        },
        (None, Some(_)) => Precondition::IfNoneMatch,
        (None, None) => Precondition::None,
    })
}

async fn write(
    st: &AppState,
    fs: &Arc<Filesystem>,
    path: &EfsPath,
    parts: &axum::http::request::Parts,
    body: &mut Option<Body>,
    who: &mut Who,
) -> Result<Response, ApiError> {
    let headers = &parts.headers;
    let client = client_ip(&parts.extensions);
    let cond = write_precondition(headers)?;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|len| len > st.http.max_body) {
        return Err(efs_core::CoreError::TooLarge.into());
    }
    // Below the reserve no upload begins (507); the space left is for the audit log and the
    // commits of deletes and moves, which free space. Nor one whose announced length would
    // take half the reserve: refused before its body is read, not cut part way.
    // The length as the disk takes it: sealed (a tag per segment, the header), and the
    // file's last block.
    st.reserve
        .check_upload_start(
            length.map(|len| efs_format::stream::encrypted_len(len).saturating_add(4096)),
        )
        .map_err(|low| low.refusal())?;
    let content_type = single(headers, header::CONTENT_TYPE.as_str())
        .map_err(|_| ApiError::bad_request("Content-Type given twice: give the file's type once"))?
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 256)
        .map(str::to_owned)
        .unwrap_or_else(|| "application/octet-stream".into());
    // An upload its precondition or a directory at its path refuses is refused before its
    // body is read, encrypted and written (checked again, atomically, at the commit). Small
    // bodies without a condition skip it: their refusal costs little, the lookup a PUT.
    if cond != Precondition::None || length.is_none_or(|len| len > EARLY_CHECK_MIN) {
        fs.check_write(path, &cond).await?;
    }
    let mut upload = fs.begin_upload().await?;
    upload.set_max_size(st.http.max_body);
    let mut stream = body
        .take()
        .expect("the body is taken only here")
        .into_data_stream();
    // The upload's place among the blob files open (taken before the write that opens its
    // temporary file, kept to the end of its commit).
    let mut file_place = None;
    // Body bytes since the free space was last checked: a large upload started above the
    // reserve must not eat it (see `Reserve::check_during_upload`).
    let mut unchecked = 0u64;
    // This upload's bytes not yet on the disk, in the count every check of the reserve
    // subtracts; out of it when dropped, on every way out of this function (and when the
    // commit, which may outlive it, ends).
    let mut buffered = st.reserve.upload_bytes();
    let cut = st.uploads_cut.cancelled();
    tokio::pin!(cut);
    loop {
        let next = tokio::select! {
            // Checked first: a body that keeps arriving must not outrun the shutdown.
            biased;
            () = &mut cut => {
                upload.abort().await;
                return Err(upload_cut_at_shutdown());
            }
            next = tokio::time::timeout(st.http.body_idle, stream.next()) => next,
        };
        let Ok(next) = next else {
            upload.abort().await;
            return Err(body_timeout(st.http.body_idle));
        };
        let Some(chunk) = next else { break };
        let chunk = match chunk {
            Ok(c) => c,
            Err(_) => {
                upload.abort().await;
                return Err(ApiError::bad_request("the request body was interrupted"));
            }
        };
        metrics::counter!("efs_bytes_in_total").increment(chunk.len() as u64);
        if file_place.is_none() && upload.holds_file_after(chunk.len()) {
            let Ok(place) = st.blob_files.clone().try_acquire_owned() else {
                upload.abort().await;
                return Err(blob_files_busy());
            };
            file_place = Some(place);
        }
        if let Err(e) = upload.write(&chunk).await {
            upload.abort().await;
            return Err(e.into());
        }
        buffered.set(upload.unwritten());
        unchecked += chunk.len() as u64;
        if unchecked >= crate::reserve::UPLOAD_CHECK_EVERY {
            unchecked = 0;
            // (Logged, at most once a minute, by the check.)
            if let Err(low) = st.reserve.check_during_upload() {
                upload.abort().await;
                return Err(low.upload_stopped());
            }
        }
    }
    // The body's last bytes since the last check (under a MiB), for a body of no announced
    // length: one whose length was announced was checked whole before it began.
    if length.is_none()
        && unchecked > 0
        && let Err(low) = st.reserve.check_during_upload()
    {
        upload.abort().await;
        return Err(low.upload_stopped());
    }
    // An upload can last hours: its token, certificate binding and write access are checked
    // again before it lands, so that a revoke, a read-only grant or an expiry meanwhile
    // refuses it (a cached check: about a microsecond).
    // The audit log too was checked only when the request began, and the body may have
    // taken minutes: a log that failed meanwhile refuses the change before it lands, not
    // after (its entry could not be written then).
    // Under the authority lock's shared hold, kept until the commit has ended: a revoke that
    // has answered leaves no upload checked before it still to land.
    let gate = match checked_for_commit(st, headers, &parts.extensions, who, fs).await {
        Ok(gate) => gate,
        Err(e) => {
            upload.abort().await;
            return Err(e);
        }
    };
    // From here the change may land even if the client hangs up and this request is
    // dropped: its audit entry must then be written on drop.
    who.committing(&st.data, client, &st.detached);
    // Tracked by the server, so that a shutdown waits for a commit whose client hung up.
    let commit = {
        let (fs, path) = (fs.clone(), path.clone());
        async move {
            let _file_place = file_place;
            let _gate = gate;
            let _buffered = buffered;
            fs.commit_upload(&path, upload, Some(content_type), cond)
                .await
        }
    };
    let (entry, replaced) = to_completion(st, commit).await??;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut r = (status, axum::Json(list_entry(&entry))).into_response();
    set_etag(r.headers_mut(), &entry);
    Ok(r)
}

/// The caller of a download under way, checked again between its batches (a lookup of the
/// user, per 256 KiB streamed or 1 MiB sent from the cache; nothing for a body of one batch
/// or slice, nor before the first): a revoke, a deletion of the user, or any change of its
/// grants or bound certificate (which ends its tokens, `Authenticator::still_granted`) cuts the
/// download short. The connection is closed (over HTTP/2, the stream reset): the client sees
/// fewer bytes than the Content-Length it was given. The token's expiry while the download is
/// sent does not cut it.
/// A download cut short is recorded in the audit log: a second `read` entry, status 401,
/// detail `cut_short` (the first, written when it began, says 200); so is one stopped
/// because its content failed to read or decrypt after the first batch, with status 500
/// ([`StillAllowed::record_cut`]).
struct StillAllowed {
    st: Arc<AppState>,
    caller: Caller,
    client: IpAddr,
    /// The file, for the audit entry of a cut; set by [`StillAllowed::for_body`].
    path: Option<String>,
}

impl StillAllowed {
    /// A copy for a body sent in more than one piece, which checks before each after the
    /// first (a body of one piece takes none: no reference count touched, no path copied).
    fn for_body(&self, path: &EfsPath) -> StillAllowed {
        StillAllowed {
            st: self.st.clone(),
            caller: self.caller.clone(),
            client: self.client,
            path: Some(path.to_string()),
        }
    }

    fn check(&self) -> bool {
        // The certificate binding needs no check of its own: a connection's certificate does
        // not change, and binding another one changes the user's generation.
        let ok = self.st.auth.still_granted(&self.caller);
        if !ok {
            tracing::info!(
                user = %self.caller.user(),
                fs = %self.caller.fs(),
                "a download was cut short: its caller's access was withdrawn"
            );
            self.record_cut(401);
        }
        ok
    }

    /// Records a download cut short (see [`StillAllowed`]): 401 for the caller's access
    /// withdrawn, 500 for content that failed to read or decrypt (the server's log says
    /// which). Its first entry, written when it began, says 200: without this one, "who read
    /// this file" would list a read that delivered part of it as a whole one.
    fn record_cut(&self, status: u16) {
        let mut rec = Record::new(Action::Read, status);
        rec.user = Some(self.caller.user().to_owned());
        rec.fs = Some(self.caller.fs().to_owned());
        rec.path = self.path.clone();
        rec.client = Some(self.client.to_string());
        rec.detail = Some("cut_short".to_owned());
        // A refused entry means the log has failed; the body ends either way.
        let _ = self.st.data.audit().submit(rec);
    }

    /// The error that ends a body cut short.
    fn withdrawn() -> std::io::Error {
        std::io::Error::other("access withdrawn")
    }
}

async fn read(
    allowed: &StillAllowed,
    fs: &Arc<Filesystem>,
    path: &EfsPath,
    h: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    // The headers come from a stat and the content from an open: if the file is replaced
    // in between, start again with the new version rather than fail.
    for _ in 0..4 {
        if let Some(r) = read_version(allowed, fs, path, h, head).await? {
            return Ok(r);
        }
    }
    Err(efs_core::CoreError::Contention.into())
}

/// One attempt of [`read`]; `None` if the version changed between stat and open.
async fn read_version(
    allowed: &StillAllowed,
    fs: &Arc<Filesystem>,
    path: &EfsPath,
    h: &HeaderMap,
    head: bool,
) -> Result<Option<Response>, ApiError> {
    let st = &*allowed.st;
    // Before the lookup: a fill of the cache drops what was removed from here on.
    let removal_epoch = st.cache.removal_epoch();
    let found = fs.look_up(path).await?;
    let entry = found.entry();
    if entry.kind == Kind::Dir {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            efs_proto::codes::CONFLICT,
            "this is a directory: list it with a trailing '/'",
        ));
    }
    if let Some(Ok(v)) = joined(h, &header::IF_MATCH)
        && let Some(tags) = parse_etags(&v, EtagCompare::Strong)
        && !tags.contains(&entry.version)
    {
        return Err(efs_core::CoreError::Precondition.into());
    }
    // RFC 9110 §13.2.2's order: If-Match, else If-Unmodified-Since; If-None-Match, else
    // If-Modified-Since. Dates compare at Last-Modified's resolution (whole seconds); one
    // that does not parse is ignored, as the RFC says.
    if !h.contains_key(header::IF_MATCH)
        && let Some(since) = header_date(h, header::IF_UNMODIFIED_SINCE)
        && modified_secs(entry) > since
    {
        return Err(efs_core::CoreError::Precondition.into());
    }
    let not_modified = match joined(h, &header::IF_NONE_MATCH) {
        Some(v) => v
            .ok()
            .is_some_and(|v| match parse_etags(&v, EtagCompare::Weak) {
                None => true,
                Some(tags) => tags.contains(&entry.version),
            }),
        None => header_date(h, header::IF_MODIFIED_SINCE)
            .is_some_and(|since| modified_secs(entry) <= since),
    };
    if not_modified {
        // With the headers a 200 would carry about caching (RFC 9110 §15.4.5).
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        set_etag(r.headers_mut(), entry);
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
        return Ok(Some(r));
    }
    let len = entry.size;
    let range = if if_range_allows(h, &entry.version) {
        parse_range(h, len)
    } else {
        Ok(None)
    };
    let range = match range {
        Ok(r) => r,
        Err(Unsatisfiable) => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                efs_proto::codes::RANGE_NOT_SATISFIABLE,
                "the range is outside the file",
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(Some(r));
        }
    };
    let (start, end) = range.unwrap_or((0, len));
    // Content a download found damaged (cut there, after its 200): a request whose range
    // overlaps the batch that failed is a 500 before any byte, as one whose first batch fails
    // is, so that a client trying again is told the server failed instead of meeting another
    // cut; a range clear of it is served. HEAD answers as the GET would.
    if st
        .cache
        .damaged_overlaps(fs.id(), &entry.version, start, end)
    {
        return Err(efs_core::CoreError::Decrypt.into());
    }
    // Room for every header below, so that the map is not grown while it is filled.
    let mut headers = HeaderMap::with_capacity(12);
    set_etag(&mut headers, entry);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    let ct = entry
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(ct).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(v) = HeaderValue::try_from(http_date(entry.modified_ms)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    let status = if range.is_some() {
        if let Ok(v) =
            HeaderValue::try_from(format!("bytes {}-{}/{len}", start, end.saturating_sub(1)))
        {
            headers.insert(header::CONTENT_RANGE, v);
        }
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    if head {
        return Ok(Some(answer(status, headers, Body::empty())));
    }
    metrics::counter!("efs_bytes_out_total").increment(end - start);
    // The cache: a hit serves from memory; a miss on a small enough file fills it when the
    // whole file is asked for, or when the file is no larger than one streamed batch (a
    // range of it costs a whole decryption anyway). A range of a larger file that misses is
    // streamed: it decrypts only the segments it covers, and a burst of one-byte ranges on a
    // cold cache cannot make the server decrypt whole files into memory. Nor can many
    // misses at once, or clients that stop reading what they asked for: a miss fills the
    // cache only while the cache's plaintext budget allows (`ContentCache::reserve`), and
    // is streamed otherwise.
    if st.cache.admits(len) {
        let cached = match st.cache.get(fs.id(), &entry.version) {
            Some(c) => Some(c),
            None if range.is_some() && len > efs_core::fs::segment_offset(STREAM_BATCH) => None,
            None => match st.cache.reserve(len) {
                None => None,
                Some(share) => {
                    let _file_places = take_file_places(st, fs, &found)?;
                    let Some(reader) = open_found(fs, &found).await? else {
                        return Ok(None);
                    };
                    let mut data = zeroize::Zeroizing::new(Vec::with_capacity(len as usize));
                    let n = reader.segment_count();
                    let mut i = 0;
                    while i < n {
                        let e = (i + 16).min(n);
                        for seg in reader.read_segments(i, e).await? {
                            data.extend_from_slice(&seg);
                        }
                        i = e;
                    }
                    let c = Arc::new(CachedFile::new(*fs.id(), entry.clone(), data, share));
                    st.cache.insert(c.clone(), removal_epoch);
                    Some(c)
                }
            },
        };
        if let Some(cached) = cached {
            let body = cached_body(cached.slice(start as usize, end as usize), allowed, path);
            return Ok(Some(answer(status, headers, body)));
        }
    }
    let file_places = take_file_places(st, fs, &found)?;
    let Some(reader) = open_found(fs, &found).await? else {
        return Ok(None);
    };
    // The first batch is decrypted before the status is sent: content broken there (all
    // of a file up to 256 KiB) is a clean 500, not a 200 cut short.
    let segs = reader.segments_for(start, end);
    let first_end = (segs.start + STREAM_BATCH).min(segs.end);
    let first = reader.read_plain(segs.start, first_end).await?;
    let mut pending = std::collections::VecDeque::new();
    push_slices(&mut pending, first, segs.start, start, end);
    let body = Body::from_stream(stream_range(
        reader,
        file_places,
        start,
        end,
        first_end,
        pending,
        // Only for a body of more than one batch: the checks come before each after the first.
        (first_end < segs.end).then(|| allowed.for_body(path)),
        (*fs.id(), entry.version),
    ));
    Ok(Some(answer(status, headers, body)))
}

/// A body from the cache: in one piece up to [`CACHED_SLICE`], in slices of that size
/// beyond, with the caller checked again before every slice after the first.
fn cached_body(data: Bytes, allowed: &StillAllowed, path: &EfsPath) -> Body {
    if data.len() <= CACHED_SLICE {
        return Body::from(data);
    }
    let allowed = allowed.for_body(path);
    let mut sent = 0;
    Body::from_stream(futures_util::stream::poll_fn(move |_| {
        if sent == data.len() {
            return std::task::Poll::Ready(None);
        }
        if sent > 0 && !allowed.check() {
            sent = data.len();
            return std::task::Poll::Ready(Some(Err(StillAllowed::withdrawn())));
        }
        let to = (sent + CACHED_SLICE).min(data.len());
        let slice = data.slice(sent..to);
        sent = to;
        std::task::Poll::Ready(Some(Ok::<_, std::io::Error>(slice)))
    }))
}

/// The slices a large body from the cache is sent in (see [`cached_body`]).
const CACHED_SLICE: usize = 1 << 20;

/// The places among the blob files open that reading `found` needs, taken at once (`None`
/// for content stored inline); 503 `busy` when they are not all free.
fn take_file_places(
    st: &AppState,
    fs: &Filesystem,
    found: &efs_core::fs::LookedUp,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    match fs.files_to_read(found) {
        0 => Ok(None),
        n => match st.blob_files.clone().try_acquire_many_owned(n) {
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(blob_files_busy()),
        },
    }
}

/// A response with these headers: the map is moved in, where `(status, headers, body)`
/// would copy it entry by entry into the response's own.
fn answer(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// Opens the version a read looked up; `None` if it was replaced or deleted since (the
/// caller looks the path up again).
async fn open_found(
    fs: &Filesystem,
    found: &efs_core::fs::LookedUp,
) -> Result<Option<efs_core::FileReader>, ApiError> {
    match fs.open_looked_up(found).await {
        Ok(r) => Ok(Some(r)),
        Err(efs_core::CoreError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Segments decrypted per read while streaming (256 KiB). Smaller batches keep the buffer
/// being decrypted and then encrypted for TLS in the CPU's cache: 1 MiB batches were about
/// 15 % slower for 1 MiB and 512 MiB downloads (docs/benchmarks-history.md); 64 and 128 KiB no faster.
const STREAM_BATCH: u64 = 4;

/// Queues the parts of decrypted segments (the first is segment `first`) that fall in
/// plaintext `[start, end)`, as slices of their one buffer (no copy).
fn push_slices(
    pending: &mut std::collections::VecDeque<Bytes>,
    plain: efs_core::fs::PlainSegments,
    first: u64,
    start: u64,
    end: u64,
) {
    // The slices share the buffer, which is wiped and pooled once the last one is sent.
    let buf = Bytes::from_owner(plain.buf);
    for (k, r) in plain.segments.into_iter().enumerate() {
        let seg_start = efs_core::fs::segment_offset(first + k as u64);
        let seg_len = (r.end - r.start) as u64;
        let lo = start.saturating_sub(seg_start).min(seg_len) as usize;
        let hi = (end - seg_start).min(seg_len) as usize;
        if lo < hi {
            pending.push_back(buf.slice(r.start + lo..r.start + hi));
        }
    }
}

/// Streams plaintext `[start, end)` from segment `next` on, after the slices already in
/// `pending`, decrypting [`STREAM_BATCH`] segments per read (in place, or out of the
/// direct-read window for a blob of 128 MiB or more, see `FileReader::read_plain`). One batch is read
/// ahead: while the slices of one batch go out, a task reads and decrypts the next, so the
/// disk read and the decryption overlap the TLS encryption and the socket writes (at most
/// two batches, 512 KiB, per stream in memory). An integrity failure mid-stream aborts the
/// response (the client sees a truncated transfer, never wrong bytes).
#[allow(clippy::too_many_arguments)]
fn stream_range(
    reader: efs_core::FileReader,
    file_places: Option<tokio::sync::OwnedSemaphorePermit>,
    start: u64,
    end: u64,
    next: u64,
    pending: std::collections::VecDeque<Bytes>,
    allowed: Option<StillAllowed>,
    version: ([u8; 16], [u8; 16]),
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    struct Ahead {
        from: u64,
        /// The batch's end (segments), for the range a failure notes.
        to: u64,
        task: tokio::task::JoinHandle<efs_core::Result<efs_core::fs::PlainSegments>>,
    }
    /// Aborts a read-ahead task that is no longer wanted (the client went away).
    struct Streaming {
        reader: Arc<efs_core::FileReader>,
        next: u64,
        last: u64,
        pending: std::collections::VecDeque<Bytes>,
        ahead: Option<Ahead>,
        /// The reader's places among the blob files open, given back with it.
        _file_places: Option<tokio::sync::OwnedSemaphorePermit>,
        /// `None` for a body of one batch, which has nothing to check.
        allowed: Option<StillAllowed>,
    }
    impl Drop for Streaming {
        fn drop(&mut self) {
            if let Some(a) = self.ahead.take() {
                a.task.abort();
            }
        }
    }
    impl Streaming {
        /// Starts reading the next batch in the background, unless one is in flight.
        fn read_ahead(&mut self) {
            if self.ahead.is_none() && self.next < self.last {
                let (from, to) = (self.next, (self.next + STREAM_BATCH).min(self.last));
                let reader = self.reader.clone();
                self.ahead = Some(Ahead {
                    from,
                    to,
                    task: tokio::spawn(async move { reader.read_plain(from, to).await }),
                });
                self.next = to;
            }
        }
    }
    let last = reader.segments_for(start, end).end;
    let state = Streaming {
        reader: Arc::new(reader),
        next,
        last,
        pending,
        ahead: None,
        _file_places: file_places,
        allowed,
    };
    futures_util::stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(b) = s.pending.pop_front() {
                s.read_ahead();
                return Some((Ok(b), s));
            }
            s.read_ahead();
            let a = s.ahead.take()?;
            // Before each batch after the first: a withdrawal of the caller's access since
            // the download began cuts it short (`StillAllowed`).
            if s.allowed.as_ref().is_some_and(|a| !a.check()) {
                a.task.abort();
                s.next = s.last;
                return Some((Err(StillAllowed::withdrawn()), s));
            }
            let r = a.task.await.unwrap_or_else(|e| {
                Err(efs_core::CoreError::Io(std::io::Error::other(
                    e.to_string(),
                )))
            });
            match r {
                Ok(plain) => push_slices(&mut s.pending, plain, a.from, start, end),
                Err(e) => {
                    tracing::error!(error = %e, "reading content failed mid-stream; aborting the response");
                    if let Some(allowed) = &s.allowed {
                        allowed.record_cut(500);
                        // Content that does not decrypt stays so: the next request reaching
                        // it is refused before its 200 (an I/O error may pass).
                        if matches!(e, efs_core::CoreError::Decrypt) {
                            let bad = efs_core::fs::segment_offset(a.from)
                                ..efs_core::fs::segment_offset(a.to);
                            allowed.st.cache.note_damaged(&version.0, &version.1, bad);
                        }
                    }
                    s.next = s.last;
                    return Some((Err(std::io::Error::other("integrity check failed")), s));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a `Destination` port past 65535 read as "left out" (443), so
    /// `https://h:65979/x` was taken for this server at `h:443`. Ports compare as numbers.
    #[test]
    fn destination_ports_compare_as_numbers() {
        let same = |host: &str, dest: &str| destination_path(dest, Some(host)).is_ok();
        assert!(same("127.0.0.1", "https://127.0.0.1:0443/x"));
        assert!(same("127.0.0.1:443", "https://127.0.0.1:00443/x"));
        assert!(same("127.0.0.1:0443", "https://127.0.0.1/x"));
        assert!(same("h:8443", "https://H:08443/x"));
        assert!(same("h", "https://h:/x"));
        assert!(same("[::1]:8443", "https://[::1]:8443/x"));
        assert!(same("[::1]", "https://[::1]:443/x"));
        assert!(!same("[::1]", "https://[::2]/x"));
        // IP addresses compare as addresses, names without case.
        assert!(same("[::1]", "https://[0:0::1]/x"));
        assert!(same("[::1]:8443", "https://[0000:0:0:0:0:0:0:1]:8443/x"));
        assert!(same("[2001:DB8::1]", "https://[2001:db8:0::1]/x"));
        assert!(!same("[::1]", "https://[::1:0]/x"));
        assert!(!same("127.0.0.1", "https://[::ffff:127.0.0.1]/x"));
        assert!(!same("localhost", "https://127.0.0.1/x"));
        assert!(!same("h:8443", "https://h/x"));
        assert!(!same("h", "https://h:65979/x"));
        assert!(!same("h", "https://h:66000/x"));
        assert!(!same("h", "https://h:99999999999999999999443/x"));
        assert!(!same("h:65979", "https://h/x"));
        assert!(!same("h", "https://other/x"));
        let e = destination_path("https://other/x", Some("h")).unwrap_err();
        assert!(e.message.contains("names another server"), "{}", e.message);
        assert_eq!(
            destination_path("https://h:0443/a/b", Some("h")).unwrap(),
            "/a/b"
        );
    }
}
