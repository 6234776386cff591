//! One HTTP exchange and what can go wrong with it: sending through reqwest, turning error
//! answers and transport failures into [`Error`], and the backoff between retries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::RetryPolicy;
use crate::error::Error;
use crate::trust::FingerprintMismatch;

/// The longest `Retry-After` the SDK waits for by itself; a longer one is returned as the
/// error, so that a person is not left looking at a silent command.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Error answers are read up to this size (they are small JSON objects).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The reqwest client and the server's base URL (`https://host:port[/prefix]`, no trailing `/`).
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
    pub(crate) base: String,
    /// How long an exchange may make no progress (nothing received, no body byte taken)
    /// before it is given up; `None`: forever. See [`crate::ClientBuilder::timeout_idle`].
    pub(crate) idle: Option<Duration>,
    /// The total time of one login request (challenge, token, refresh).
    pub(crate) login_timeout: Duration,
    /// Set once the server asked for a client certificate ([`crate::trust::CertRequests`]).
    pub(crate) cert_requested: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Http {
    /// A reqwest failure as an [`Error`]: a broken connection to a server that asked for a
    /// client certificate is that server refusing this client, which has none
    /// ([`CLIENT_CERT_REQUIRED`]), not the network failing.
    pub(crate) fn failure(&self, e: &reqwest::Error) -> Error {
        match map_reqwest_error(e) {
            Error::Transport(_)
                if self
                    .cert_requested
                    .load(std::sync::atomic::Ordering::Acquire) =>
            {
                Error::Tls(CLIENT_CERT_REQUIRED.to_owned())
            }
            other => other,
        }
    }

    /// The full URL of an already-encoded path (starting with `/`).
    pub(crate) fn url(&self, encoded_path: &str) -> String {
        format!("{}{encoded_path}", self.base)
    }

    /// Sends a request; a transport failure becomes [`Error::Transport`] / [`Error::Tls`].
    /// Without an answer within the idle timeout (counted from the request's start, or for
    /// an upload from the last time its body moved: see [`BodyWatch`]) it is given up.
    ///
    /// reqwest's own `read_timeout` is not used: it also bounds the time to the answer's
    /// headers from the request's start, which for an upload includes sending its body, so
    /// it would cut every upload longer than the timeout.
    pub(crate) async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        watch: Option<&BodyWatch>,
    ) -> Result<reqwest::Response, Fail> {
        let started = Instant::now();
        let fut = rb.send();
        let result = match self.idle {
            None => fut.await,
            Some(idle) => {
                tokio::pin!(fut);
                loop {
                    let quiet = watch.map_or_else(|| started.elapsed(), BodyWatch::quiet_for);
                    let left = idle.saturating_sub(quiet);
                    if left.is_zero() {
                        return Err(Fail::from(idle_error(idle)));
                    }
                    if let Ok(r) = tokio::time::timeout(left, &mut fut).await {
                        break r;
                    }
                }
            }
        };
        // The body's own failure, whatever reqwest made of it: over HTTP/2 its error is
        // not in the chain reqwest returns, only "stream error sent by user".
        if let Some(f) = watch.and_then(BodyWatch::failure) {
            return Err(f);
        }
        result.map_err(|e| Fail {
            err: self.failure(&e),
            retry_after: None,
            unsent: e.is_connect(),
            source_changed: false,
        })
    }

    /// The next chunk of an answer's body; [`Error::Transport`] when none comes within the
    /// idle timeout.
    pub(crate) async fn chunk(
        &self,
        resp: &mut reqwest::Response,
    ) -> Result<Option<bytes::Bytes>, Error> {
        let r = match self.idle {
            None => resp.chunk().await,
            Some(idle) => match tokio::time::timeout(idle, resp.chunk()).await {
                Ok(r) => r,
                Err(_) => return Err(idle_error(idle)),
            },
        };
        r.map_err(|e| self.failure(&e))
    }

    /// Passes a success (2xx) through; turns an error answer into its [`Error`].
    pub(crate) async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response, Fail> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after_secs = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = self.read_limited(resp, MAX_ERROR_BODY).await;
        let err = Error::from_response(status.as_u16(), &body, retry_after_secs);
        let retry_after = match status.as_u16() {
            429 | 503 => retry_after_secs.map(Duration::from_secs),
            _ => None,
        };
        Err(Fail {
            err,
            retry_after,
            unsent: false,
            source_changed: false,
        })
    }

    async fn read_limited(&self, mut resp: reqwest::Response, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while let Ok(Some(chunk)) = self.chunk(&mut resp).await {
            out.extend_from_slice(&chunk[..chunk.len().min(max - out.len())]);
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// Reads a JSON answer of at most [`MAX_JSON_ANSWER`] bytes.
    pub(crate) async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
    ) -> Result<T, Fail> {
        self.json_within(resp, MAX_JSON_ANSWER).await
    }

    /// Reads a JSON answer of at most `max` bytes: a longer one is refused as it arrives,
    /// not held in memory.
    pub(crate) async fn json_within<T: serde::de::DeserializeOwned>(
        &self,
        mut resp: reqwest::Response,
        max: usize,
    ) -> Result<T, Fail> {
        let bad = |message: String| Fail::from(Error::InvalidAnswer(message));
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(bad(format!(
                "the server's answer is larger than the {} KiB expected",
                max >> 10
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk(&mut resp).await? {
            if body.len() + chunk.len() > max {
                return Err(bad(format!(
                    "the server's answer is larger than the {} KiB expected",
                    max >> 10
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map_err(|e| bad(format!("the server's answer is not the expected JSON: {e}")))
    }
}

/// The error of an exchange that made no progress for `idle`: transient (the server may
/// be restarting, or a connection may have died without a word).
fn idle_error(idle: Duration) -> Error {
    Error::Transport(format!(
        "the server neither answered nor took data for {} s: given up (ClientBuilder::timeout_idle)",
        idle.as_secs_f64()
    ))
}

/// What an upload's body did last, shared by the body (which marks it) and
/// [`Http::send`] (which reads it): the idle timeout counts from the last time the body
/// moved, so that an upload may take as long as it takes while its bytes go out, and
/// still does not wait forever for a server that stopped taking them or never answers.
pub(crate) struct BodyWatch {
    origin: Instant,
    /// Milliseconds from `origin` to the body's last move (a chunk asked for or given).
    last_ms: AtomicU64,
    /// The body waits on its own source (a slow local reader, a pipe): not the server's stall.
    in_source: AtomicBool,
    /// Why the body failed, if it did: its source's read error, or a length other than the
    /// one declared. Kept here because the error the body stream returns does not always
    /// come back out of reqwest.
    failed: std::sync::Mutex<Option<BodyFailure>>,
}

/// A copy of the error an upload's body failed with (`std::io::Error` is not `Clone`).
struct BodyFailure {
    kind: std::io::ErrorKind,
    text: String,
    /// It was [`SourceChanged`]: sending the source again, as it is now, can succeed.
    changed: bool,
}

/// The error of a local file that changed while it was uploaded (its size or modification
/// time moved): nothing of it is stored, and sending it again can succeed.
#[derive(Debug)]
pub(crate) struct SourceChanged;

impl std::fmt::Display for SourceChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the file changed while it was uploaded (its size or modification time moved): \
             nothing was stored; upload it again once it is complete",
        )
    }
}

impl std::error::Error for SourceChanged {}

impl BodyWatch {
    pub(crate) fn new() -> BodyWatch {
        BodyWatch {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_source: AtomicBool::new(false),
            failed: std::sync::Mutex::new(None),
        }
    }

    /// A new body starts (an upload's next attempt): its predecessor's failure is forgotten.
    pub(crate) fn start(&self) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.touch(false);
    }

    /// The body fails with `e`; the first failure is kept.
    pub(crate) fn fail(&self, e: &std::io::Error) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.is_none() {
            *failed = Some(BodyFailure {
                kind: e.kind(),
                text: e.to_string(),
                changed: e.get_ref().is_some_and(|inner| inner.is::<SourceChanged>()),
            });
        }
    }

    /// The body's failure as the request's: [`Error::Io`], not transient; a changed file
    /// may be sent again.
    fn failure(&self) -> Option<Fail> {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.as_ref().map(|f| Fail {
            err: Error::Io(std::io::Error::new(f.kind, f.text.clone())),
            retry_after: None,
            unsent: false,
            source_changed: f.changed,
        })
    }

    /// The body moved now; `in_source`: it now waits on its source.
    pub(crate) fn touch(&self, in_source: bool) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
        self.in_source.store(in_source, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        if self.in_source.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// A failed attempt: the error, how long the server asked us to wait before the next, and
/// whether the request surely never reached the server.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) err: Error,
    pub(crate) retry_after: Option<Duration>,
    /// The connection could not be made (TCP or TLS): nothing was sent, so even a request
    /// that is not idempotent can be sent again.
    pub(crate) unsent: bool,
    /// The upload's local file changed while it was sent ([`SourceChanged`]): the server
    /// stored nothing (the body ended short), and the file can be sent again as it is now.
    pub(crate) source_changed: bool,
}

impl Fail {
    /// Whether the server certainly did not act on the request: it was never sent, or the
    /// server answered that it did nothing (429, 503). Any other failure of a request that
    /// went out (above all a lost answer) may follow a change the server made.
    pub(crate) fn cannot_have_acted(&self) -> bool {
        self.unsent
            || self.source_changed
            || matches!(
                self.err,
                Error::RateLimited { .. } | Error::Server { status: 503, .. }
            )
    }
}

impl From<Error> for Fail {
    fn from(err: Error) -> Self {
        Fail {
            err,
            retry_after: None,
            unsent: false,
            source_changed: false,
        }
    }
}

/// The largest JSON answer read: a listing page of 10,000 entries with the longest names,
/// each character escaped, stays below it.
pub(crate) const MAX_JSON_ANSWER: usize = 64 << 20;

/// The largest login answer read (a challenge or a token: a few hundred bytes).
pub(crate) const MAX_LOGIN_ANSWER: usize = 64 << 10;

/// An error reading the local source of an upload, told apart from network errors in the
/// chain reqwest returns.
#[derive(Debug)]
pub(crate) struct BodyReadError(pub(crate) std::io::Error);

impl std::fmt::Display for BodyReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reading the upload's source: {}", self.0)
    }
}

impl std::error::Error for BodyReadError {}

/// Classifies a reqwest failure: local read error, TLS, or transport.
pub(crate) fn map_reqwest_error(e: &reqwest::Error) -> Error {
    if let Some(b) = find::<BodyReadError>(e) {
        return Error::Io(std::io::Error::new(b.0.kind(), b.0.to_string()));
    }
    if let Some(t) = find::<rustls::Error>(e) {
        return tls_error(t);
    }
    let mut texts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = if let Some(r) = err.downcast_ref::<reqwest::Error>() {
            // reqwest's own text names the URL, which the caller knows; keep the kind only.
            if r.is_timeout() {
                "timed out".to_owned()
            } else if r.is_connect() {
                "cannot connect".to_owned()
            } else if r.is_body() {
                "the transfer was interrupted".to_owned()
            } else if r.is_decode() {
                "the answer could not be read".to_owned()
            } else {
                "request failed".to_owned()
            }
        } else {
            err.to_string()
        };
        if !texts.iter().any(|t| t.contains(&text)) {
            texts.push(text);
        }
        cur = err.source();
    }
    if e.is_builder() {
        return Error::Config(texts.join(": "));
    }
    // The alert of a server that requires a client certificate, where it did not come as a
    // `rustls::Error` (TLS 1.3 sends it after the client's side of the handshake is done).
    if texts.iter().any(|t| t.contains("CertificateRequired")) {
        return Error::Tls(CLIENT_CERT_REQUIRED.to_owned());
    }
    Error::Transport(texts.join(": "))
}

/// What a server that requires a client certificate (`efs-server --client-ca`) is told as:
/// retrying cannot help (it was a transport error retried for seconds, with a hint about what
/// the command changed).
const CLIENT_CERT_REQUIRED: &str = "the server requires a client certificate (mutual TLS: it runs with --client-ca), which this client cannot present: use curl with --cert and --key (scripts/login-curl-openssl.sh), or a server without --client-ca";

/// The error of type `T` in the chain of `err`, also inside `io::Error`s (whose
/// `source()` skips the error they wrap, and which hyper-rustls nests two deep).
fn find<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(t) = find::<T>(inner) {
                return Some(t);
            }
        }
        cur = e.source();
    }
    None
}

/// A TLS failure in words a person can act on.
pub(crate) fn tls_error(e: &rustls::Error) -> Error {
    use rustls::CertificateError as C;
    let msg = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Other(other) => match other.0.downcast_ref::<FingerprintMismatch>() {
                Some(m) => m.to_string(),
                None => format!("the server's certificate is not accepted: {other}"),
            },
            C::UnknownIssuer => {
                "the server's certificate is not signed by a trusted authority (unknown issuer): trust its CA file or pin its fingerprint".to_owned()
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the server's certificate does not name this host: connect by a name or address the certificate lists".to_owned()
            }
            C::Expired | C::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clocks)".to_owned()
            }
            C::BadSignature => "the server's certificate has a bad signature".to_owned(),
            other => format!("the server's certificate is not accepted: {other:?}"),
        },
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            CLIENT_CERT_REQUIRED.to_owned()
        }
        other => format!("TLS handshake failed: {other}"),
    };
    Error::Tls(msg)
}

/// Counts attempts and says how long to wait before the next one, if any.
pub(crate) struct Backoff<'a> {
    policy: &'a RetryPolicy,
    attempt: u32,
}

impl<'a> Backoff<'a> {
    pub(crate) fn new(policy: &'a RetryPolicy) -> Self {
        Backoff { policy, attempt: 1 }
    }

    /// The number of the attempt being made (1 for the first).
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// `Some(wait)` when `fail` is transient and attempts are left; counts the attempt.
    pub(crate) fn next_delay(&mut self, fail: &Fail) -> Option<Duration> {
        let retryable = fail.err.is_transient() || fail.source_changed;
        if !retryable || self.attempt >= self.policy.max_attempts.max(1) {
            return None;
        }
        let delay = match fail.retry_after {
            Some(d) if d > MAX_RETRY_AFTER => return None,
            Some(d) => d,
            None => {
                let exp = self
                    .policy
                    .initial_backoff
                    .saturating_mul(1u32 << (self.attempt - 1).min(20));
                let capped = exp.min(self.policy.max_backoff);
                // "Equal jitter": half fixed, half random, so that clients that failed
                // together do not come back together.
                capped / 2 + capped.mul_f64(jitter() / 2.0)
            }
        };
        self.attempt += 1;
        Some(delay)
    }
}

/// A number in [0, 1): not cryptographic, only to spread retries.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rustls_errors_nested_in_io_errors() {
        // hyper-rustls wraps tokio-rustls's io::Error in another io::Error.
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        let found = find::<rustls::Error>(&outer).expect("found");
        assert!(matches!(tls_error(found), Error::Tls(m) if m.contains("unknown issuer")));
        let required = &rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        assert!(
            matches!(tls_error(required), Error::Tls(m) if m.contains("requires a client certificate"))
        );
    }

    #[test]
    fn backoff_grows_caps_and_stops() {
        let policy = RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
        };
        let mut b = Backoff::new(&policy);
        let transient = || Fail::from(Error::Transport("reset".into()));
        let d1 = b.next_delay(&transient()).unwrap();
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let d2 = b.next_delay(&transient()).unwrap();
        assert!(d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200));
        let d3 = b.next_delay(&transient()).unwrap();
        assert!(d3 >= Duration::from_millis(125) && d3 <= Duration::from_millis(250));
        assert_eq!(b.next_delay(&transient()), None, "4 attempts in all");
    }

    #[test]
    fn backoff_honours_retry_after_and_skips_permanent_errors() {
        let policy = RetryPolicy::default();
        let mut b = Backoff::new(&policy);
        assert_eq!(b.next_delay(&Fail::from(Error::NotFound)), None);
        let busy = Fail {
            err: Error::Server {
                status: 503,
                code: "unavailable".into(),
                message: String::new(),
            },
            retry_after: Some(Duration::from_secs(2)),
            unsent: false,
            source_changed: false,
        };
        assert_eq!(b.next_delay(&busy), Some(Duration::from_secs(2)));
        let long = Fail {
            err: Error::RateLimited {
                retry_after_secs: Some(45),
            },
            retry_after: Some(Duration::from_secs(45)),
            unsent: false,
            source_changed: false,
        };
        assert_eq!(b.next_delay(&long), None, "too long to wait silently");
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[tokio::test]
    async fn json_answers_are_read_up_to_their_limit() {
        // With a length (a body of known size), or streamed in chunks of 3 bytes with no
        // size known ahead, as a chunked answer arrives: refused as the chunks come.
        let answer = |body: Vec<u8>, with_length: bool| {
            let r = ::http::Response::builder().status(200);
            if with_length {
                let len = body.len();
                reqwest::Response::from(r.header("content-length", len).body(body).unwrap())
            } else {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                    body.chunks(3).map(|c| Ok(c.to_vec())).collect();
                let stream = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
                let r = reqwest::Response::from(r.body(stream).unwrap());
                assert_eq!(r.content_length(), None, "no size known ahead");
                r
            }
        };
        let http = Http {
            client: reqwest::Client::new(),
            base: String::new(),
            idle: Some(Duration::from_secs(5)),
            login_timeout: Duration::from_secs(5),
            cert_requested: Default::default(),
        };
        let small = br#"{"a":1}"#.to_vec();
        for with_length in [true, false] {
            let v: serde_json::Value = http
                .json_within(answer(small.clone(), with_length), 7)
                .await
                .unwrap();
            assert_eq!(v["a"], 1);
            let e = http
                .json_within::<serde_json::Value>(answer(small.clone(), with_length), 6)
                .await
                .unwrap_err();
            assert!(
                matches!(&e.err, Error::InvalidAnswer(message) if message.contains("larger than")),
                "{:?}",
                e.err
            );
        }
    }
}
