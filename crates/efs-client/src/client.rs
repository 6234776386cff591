//! The client: login and token upkeep, requests with retries, streaming transfers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use efs_proto::EntryType;

use futures_util::StreamExt as _;
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
use tokio_util::io::ReaderStream;

use crate::auth::{Auth, OnToken};
use crate::error::{Error, Result};
use crate::http::{self, Backoff, BodyReadError, BodyWatch, Fail, Http};
use crate::paths;
use crate::signer::Signer;
use crate::trust::Trust;

/// How often and how patiently idempotent requests are retried on transient errors.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 6).
    pub max_attempts: u32,
    /// Wait before the second attempt (default 200 ms); doubled each time.
    pub initial_backoff: Duration,
    /// Longest wait between attempts (default 5 s).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Options of an upload.
#[derive(Clone, Default)]
pub struct PutOptions {
    /// Stored Content-Type (default `application/octet-stream`).
    pub content_type: Option<String>,
    /// Replace only if the current version has this ETag (quoted, as returned).
    pub if_match: Option<String>,
    /// Create only: fail with Error::PreconditionFailed if the file exists.
    pub create_only: bool,
    /// Called with the number of body bytes sent so far (progress bars).
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

/// Options of [`Client::delete_with`].
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// A directory with everything in it (`?recursive=true`).
    pub recursive: bool,
    /// Delete only if the current version has this ETag (quoted, as returned).
    pub if_match: Option<String>,
}

/// Options of [`Client::rename_with`].
#[derive(Clone, Debug, Default)]
pub struct RenameOptions {
    /// A file may replace a file at the destination.
    pub overwrite: bool,
    /// Move only if the source's current version has this ETag (quoted, as returned).
    pub if_match: Option<String>,
}

/// An ETag given by the caller: sent in a header, so it must be one (a quoted, visible
/// ASCII string, as the server returns them); anything else is refused before sending.
fn check_etag(tag: &str) -> Result<()> {
    let ok = tag.len() >= 2
        && tag.starts_with('"')
        && tag.ends_with('"')
        && tag[1..tag.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{tag:?} is not an ETag as the server returns them (a quoted string, \"…\")"
        )))
    }
}

/// One entry (from a listing, a stat, or a write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name (one path segment).
    pub name: String,
    /// File or directory.
    pub kind: EntryType,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last modification, RFC 3339 UTC.
    pub modified: String,
    /// The file version's strong ETag (quoted), absent for directories.
    pub etag: Option<String>,
    /// The stored Content-Type, for files.
    pub content_type: Option<String>,
}

/// A page of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    /// Entries of this page.
    pub entries: Vec<Entry>,
    /// Pass to the next [`Client::list_page`] call; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// What a login or refresh gave (for `efs token` and token caches). Its `Debug` does not
/// print the token.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenInfo {
    /// The bearer token (a JWT).
    pub token: String,
    /// The filesystem it is for.
    pub fs: String,
    /// When it expires, seconds since the Unix epoch.
    pub expires_at_unix: u64,
    /// Refreshes still allowed before a new login is needed.
    pub renewals_left: u32,
}

impl std::fmt::Debug for TokenInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenInfo")
            .field("token", &"<redacted>")
            .field("fs", &self.fs)
            .field("expires_at_unix", &self.expires_at_unix)
            .field("renewals_left", &self.renewals_left)
            .finish()
    }
}

impl From<efs_proto::ListEntry> for Entry {
    fn from(e: efs_proto::ListEntry) -> Self {
        Entry {
            name: e.name,
            kind: e.kind,
            size: e.size,
            modified: e.modified,
            etag: e.etag,
            content_type: e.content_type,
        }
    }
}

/// A connection to one EFS server as one user. Cheap to clone: clones share the
/// connection pool and the token.
///
/// The client logs in on first use, keeps its token fresh (refreshing it, or logging in
/// again after the last renewal), and retries idempotent requests on transient errors.
///
/// ```no_run
/// use std::sync::Arc;
/// use efs_client::{Client, PutOptions, Trust, load_signer};
///
/// # async fn example() -> efs_client::Result<()> {
/// let client = Client::builder("https://127.0.0.1:8443")
///     .user("app1")
///     .signer(load_signer("/home/me/.ssh/id_ed25519".as_ref()).await?)
///     .fs("records")
///     .trust(Trust::CaPem(std::fs::read("tls-cert.pem")?))
///     .build()?;
/// client.login().await?; // optional: the first request logs in by itself
///
/// // Upload a local file (streamed, retried on transient errors)…
/// let entry = client
///     .upload_file("/reports/2026/report.pdf", "report.pdf".as_ref(), PutOptions::default())
///     .await?;
/// println!("stored {} bytes, ETag {:?}", entry.size, entry.etag);
///
/// // …or any AsyncRead, here create-only.
/// let file = tokio::fs::File::open("notes.txt").await?;
/// let opts = PutOptions { create_only: true, ..Default::default() };
/// client.upload("/notes.txt", file, None, opts).await?;
///
/// // Download it back, to a file or to any AsyncWrite, whole or a byte range.
/// client.download_file("/reports/2026/report.pdf", "copy.pdf".as_ref(), None).await?;
/// let mut first_kib = Vec::new();
/// client.download("/reports/2026/report.pdf", &mut first_kib, Some(0..1024), None).await?;
///
/// // List a directory (all pages).
/// for e in client.list("/reports/2026/").await? {
///     println!("{:?} {} {}", e.kind, e.size, e.name);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.http.base)
            .field("user", &self.inner.auth.user)
            .field("fs", &self.inner.auth.fs)
            .finish_non_exhaustive()
    }
}

struct Inner {
    http: Http,
    auth: Auth,
    retry: RetryPolicy,
}

/// Configures a [`Client`]; see [`Client::builder`].
pub struct ClientBuilder {
    url: String,
    user: Option<String>,
    signer: Option<Arc<dyn Signer>>,
    fs: Option<String>,
    server_id: Option<String>,
    trust: Trust,
    retry: RetryPolicy,
    cached: Option<TokenInfo>,
    on_token: Option<OnToken>,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    login_timeout: Duration,
}

/// Default of [`ClientBuilder::timeout_idle`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of [`ClientBuilder::timeout_login`].
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    /// Starts configuring a client for the server at `url` (`https://host:port`).
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder {
            url: url.to_owned(),
            user: None,
            signer: None,
            fs: None,
            server_id: None,
            trust: Trust::System,
            retry: RetryPolicy::default(),
            cached: None,
            on_token: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
        }
    }
}

impl ClientBuilder {
    /// The user name to log in as.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// What signs the login challenge ([`crate::KeySigner`], [`crate::AgentSigner`], or
    /// [`crate::load_signer`]'s choice).
    pub fn signer(mut self, signer: Arc<dyn Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Filesystem to log in to (needed when the user has several).
    pub fn fs(mut self, fs: impl Into<String>) -> Self {
        self.fs = Some(fs.into());
        self
    }

    /// The server identity (`efs-…`, printed by the server at start) to insist on: a
    /// challenge from a server naming another identity is not signed
    /// ([`Error::ServerIdentityMismatch`]). One not of the form `efs-<32 hex digits>` is
    /// refused by [`ClientBuilder::build`] ([`Error::Config`]).
    /// Without it (the default) any identity is signed, so a server this client logs in to
    /// can relay another server's challenge and get a login there when the same key and user
    /// name are used on both; take the value from the operator, not from the server itself.
    pub fn server_id(mut self, id: impl Into<String>) -> Self {
        self.server_id = Some(id.into());
        self
    }

    /// Which server certificates to accept (default [`Trust::System`]).
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// How idempotent requests are retried on transient errors.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Start from a cached token (e.g. read from a 0600 file by the CLI); it is refreshed/replaced as needed.
    /// A token for another filesystem than [`ClientBuilder::fs`] is ignored.
    pub fn cached_token(mut self, token: TokenInfo) -> Self {
        self.cached = Some(token);
        self
    }

    /// Called with every new token (login or refresh) so the caller can persist it.
    ///
    /// It runs while the client's token lock is held: it must not call the client.
    pub fn on_token(mut self, f: Arc<dyn Fn(&TokenInfo) + Send + Sync>) -> Self {
        self.on_token = Some(f);
        self
    }

    /// How long establishing a connection (TCP and TLS) may take (default 10 s).
    pub fn timeout_connect(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long a request may make no progress before it is given up with a transient
    /// [`Error::Transport`] (retried as the request's [`RetryPolicy`] allows): no byte of the
    /// answer received, and for an upload no byte of its body taken, for this long (default
    /// [`DEFAULT_IDLE_TIMEOUT`], 60 s). It is not a limit on a whole transfer: a download or
    /// upload of any length goes on as long as its bytes keep moving. It catches a server
    /// (or a middlebox) that accepted the connection and then never answers, or stalls in
    /// the middle of a body. An upload waiting on its own source (a slow reader) is not idle.
    /// `None` waits forever. A request waiting for a free HTTP/2 stream counts as idle too:
    /// the server allows 256 at once on the client's one connection, so more requests than
    /// that at once, each longer than this, see the later ones given up and retried.
    pub fn timeout_idle(mut self, d: Option<Duration>) -> Self {
        self.idle_timeout = d;
        self
    }

    /// The total time one login request (challenge, token, refresh) may take, answer
    /// included (default [`DEFAULT_LOGIN_TIMEOUT`], 30 s). A login runs while the token
    /// lock is held, so every request of the client (and of its clones) waits for it: a
    /// stalled one must not hold them for long. Signing (an ssh-agent that asks the user to
    /// confirm) is not counted.
    pub fn timeout_login(mut self, d: Duration) -> Self {
        self.login_timeout = d;
        self
    }

    /// Builds the client. Nothing is sent yet; the first request logs in.
    pub fn build(self) -> Result<Client> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| Error::Config(format!("invalid server URL {:?}: {e}", self.url)))?;
        if url.scheme() != "https" {
            return Err(Error::Config(format!(
                "the server URL must start with https:// (got {:?})",
                self.url
            )));
        }
        // Any userinfo, a password alone (`https://:pw@host`) too: it would be kept in the
        // base URL, sent nowhere useful and printed by Debug. Not echoed here either.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::Config(
                "the server URL must not contain a user name or password (USER:PASSWORD@): EFS logs in with a key, and the user is given apart".into(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::Config(format!(
                "the server URL must be https://host[:port][/prefix], without user, query or fragment (got {:?})",
                self.url
            )));
        }
        if let Some(id) = &self.server_id
            && !crate::auth::valid_server_id(id)
        {
            // Every login would fail, later and less clearly.
            return Err(Error::Config(format!(
                "invalid server identity {:?}: it is efs- and 32 lowercase hex digits, as the server prints it at start",
                id.chars().take(80).collect::<String>()
            )));
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        let mut tls = crate::trust::client_config(&self.trust)?;
        let cert_requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tls.client_auth_cert_resolver =
            Arc::new(crate::trust::CertRequests(cert_requested.clone()));
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(self.connect_timeout)
            .user_agent(concat!("efs-client/", env!("CARGO_PKG_VERSION")))
            .http2_initial_stream_window_size(8 << 20)
            .http2_initial_connection_window_size(16 << 20)
            .http2_max_frame_size(256 << 10)
            .tcp_keepalive(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http: Http {
                    client,
                    base,
                    idle: self.idle_timeout,
                    login_timeout: self.login_timeout,
                    cert_requested,
                },
                auth: Auth::new(
                    self.user,
                    self.signer,
                    self.fs,
                    self.server_id,
                    self.on_token,
                    self.cached,
                ),
                retry: self.retry,
            }),
        })
    }
}

/// Counts the bytes of an upload's body as they are sent, and marks `watch` as it moves.
///
/// A source that fails, or gives more or fewer bytes than `len` (the declared length), fails
/// the body with an I/O error that `watch` keeps: reqwest's error for it, over HTTP/2, is
/// only "stream error sent by user", which looked like a transient network error.
fn body_stream<R>(
    reader: R,
    len: Option<u64>,
    progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    watch: Arc<BodyWatch>,
) -> reqwest::Body
where
    R: tokio::io::AsyncRead + Send + 'static,
{
    let mut sent = 0u64;
    let mut done = false;
    let mut chunks = Box::pin(ReaderStream::with_capacity(reader, UPLOAD_CHUNK));
    watch.start();
    let stream = futures_util::stream::poll_fn(move |cx| {
        if done {
            return std::task::Poll::Ready(None);
        }
        // Asked for more: the server takes the body; until the source gives it, any wait
        // is the source's.
        watch.touch(true);
        let next = std::task::ready!(chunks.poll_next_unpin(cx));
        watch.touch(false);
        let next = match next {
            Some(Ok(bytes)) => {
                sent += bytes.len() as u64;
                match len {
                    Some(len) if sent > len => Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("the upload's source gave more than the {len} bytes declared"),
                    )),
                    _ => Ok(Some(bytes)),
                }
            }
            Some(Err(e)) => Err(e),
            None => match len {
                Some(len) if sent < len => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the upload's source ended after {sent} of the {len} bytes declared"),
                )),
                _ => Ok(None),
            },
        };
        std::task::Poll::Ready(match next {
            Ok(Some(bytes)) => {
                if let Some(p) = &progress {
                    p(sent);
                }
                Some(Ok(bytes))
            }
            Ok(None) => None,
            Err(e) => {
                done = true;
                watch.fail(&e);
                Some(Err(BodyReadError(e)))
            }
        })
    });
    reqwest::Body::wrap_stream(stream)
}

/// A local file as an upload's body, which fails instead of giving its last bytes when the
/// file changed while it was read (its size or modification time moved since it was opened):
/// the server, missing those bytes of the `Content-Length`, stores nothing. A file appended
/// to meanwhile was stored cut at its first size, with success; one rewritten in place, as a
/// mix of two versions.
struct UnchangedFile {
    inner: tokio::io::Take<tokio::fs::File>,
    /// The same open file, for its metadata.
    file: std::fs::File,
    len: u64,
    modified: Option<std::time::SystemTime>,
    read: u64,
}

impl UnchangedFile {
    fn new(file: std::fs::File) -> std::io::Result<Self> {
        use tokio::io::AsyncReadExt as _;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the upload's source is a directory, not a file",
            ));
        }
        let len = meta.len();
        Ok(Self {
            inner: tokio::fs::File::from_std(file.try_clone()?).take(len),
            file,
            len,
            modified: meta.modified().ok(),
            read: 0,
        })
    }
}

impl tokio::io::AsyncRead for UnchangedFile {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        this.read += n as u64;
        // Before the last bytes go out (or at an early end): the file as it was opened?
        if this.read == this.len || n == 0 {
            let meta = this.file.metadata()?;
            if meta.len() != this.len || meta.modified().ok() != this.modified {
                buf.set_filled(before);
                return std::task::Poll::Ready(Err(std::io::Error::other(
                    crate::http::SourceChanged,
                )));
            }
        }
        std::task::Poll::Ready(Ok(()))
    }
}

/// Read size of upload sources: large enough for few syscalls, small enough to not matter.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// Write buffer of [`Client::download_file`].
const DOWNLOAD_BUFFER: usize = 1 << 20;

/// How long a download that broke off waits for the server's answer to the question why
/// ([`Client::broken_off`]).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The suffix of a temporary download file next to its destination (after a random part).
const PART_SUFFIX: &str = ".efs-part";

/// The longest name of a directory entry: Linux's `NAME_MAX`, and EFS's path segments.
pub const NAME_MAX: usize = 255;

/// The temporary name `NAME.<tag>.efs-part` beside `name` (`tag`: 16 hex digits), with NAME
/// cut short as needed for the whole to fit in [`NAME_MAX`] bytes — at a character boundary
/// when it is UTF-8 — so that a file whose own name is 230 to 255 bytes long (80 CJK
/// characters) can be downloaded too: its temporary name was refused ("File name too long").
/// It still ends in `.<tag>.efs-part`, as walks recognise a leftover one.
pub fn part_name(name: &std::ffi::OsStr, tag: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStrExt as _;
    let suffix = format!(".{tag}{PART_SUFFIX}");
    let bytes = name.as_bytes();
    let mut cut = bytes.len().min(NAME_MAX.saturating_sub(suffix.len()));
    if let Ok(text) = std::str::from_utf8(bytes) {
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
    }
    let mut part = std::ffi::OsStr::from_bytes(&bytes[..cut]).to_owned();
    part.push(suffix);
    part
}

/// A new, empty temporary file in the directory `dir`, beside `name`:
/// [`part_name`], created exclusively (`O_CREAT | O_EXCL |
/// O_NOFOLLOW`: an existing file is never emptied, a symbolic link of that name never
/// followed). Blocking.
fn create_part_at(
    dir: &std::fs::File,
    name: &std::ffi::OsStr,
) -> std::io::Result<(std::ffi::OsString, std::fs::File)> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags, fchmod, openat, statat};
    // A file it replaces keeps its permissions (as `cp` and rsync keep them): a 0600 file of
    // decrypted data must not come back 0644. The temporary file has them from its creation.
    // A new file is 0600 (decrypted records are nobody else's business), whatever the umask.
    let keep = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .filter(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
        .map(|st| Mode::from_raw_mode(st.st_mode & 0o777));
    for _ in 0..8 {
        let mut random = [0u8; 8];
        aws_lc_rs::rand::fill(&mut random)
            .map_err(|_| std::io::Error::other("no random bytes for a temporary file name"))?;
        let part = part_name(name, &hex::encode(random));
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        match openat(
            dir,
            &part,
            flags | OFlags::CLOEXEC,
            keep.unwrap_or(Mode::from_bits_truncate(0o600)),
        ) {
            Ok(fd) => {
                // Exactly those, whatever the umask removed.
                if let Some(mode) = keep {
                    fchmod(&fd, mode)?;
                }
                return Ok((part, std::fs::File::from(fd)));
            }
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "every temporary file name tried next to the destination exists",
    ))
}

/// A temporary download file, removed (relative to its directory) when this is dropped
/// while `part` is set: on an error, and when the download's future is dropped.
struct PartGuard {
    dir: std::fs::File,
    part: Option<std::ffi::OsString>,
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        if let Some(part) = self.part.take() {
            let _ = rustix::fs::unlinkat(&self.dir, &part, rustix::fs::AtFlags::empty());
        }
    }
}

/// The directory `path` (as named), opened only as the base of `*at` calls: `O_PATH` on
/// Linux, so that a directory one may write into but not list (mode 0300) works.
fn open_dir_base(path: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{CWD, Mode, OFlags, openat};
    #[cfg(target_os = "linux")]
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    #[cfg(not(target_os = "linux"))]
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(std::fs::File::from(openat(
        CWD,
        path,
        flags,
        Mode::empty(),
    )?))
}

/// `name` if it is one plain component of a path (not empty, `.`, `..`, nor with a `/`).
fn plain_name(name: &std::ffi::OsStr) -> std::io::Result<&std::ffi::OsStr> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    Ok(name)
}

impl Client {
    /// A valid token: logs in if none; refreshes when less than 1/4 of its lifetime (at most
    /// 10 min) is left; logs in again when no renewals are left or a refresh is refused.
    pub async fn token(&self) -> Result<TokenInfo> {
        self.retrying(|| self.inner.auth.token(&self.inner.http))
            .await
    }

    /// A token that is still valid `left` from now: the held one when it lasts that long,
    /// else refreshed, or a new login when no renewals are left. For a long streamed upload
    /// ([`Client::upload`], [`Client::upload_file`]): the server checks the token again when
    /// the upload ends, and a token that expired meanwhile fails it at its end (with
    /// [`Error::TokenRefusedNotResent`] for a stream). Call it before such an upload with the
    /// time the upload may take. A token's life is the server's `--token-ttl` (1 hour by
    /// default): at most half of it is insisted on (a token in the first half of its life is
    /// kept), so that asking for more than a token can give does not refresh it on every
    /// call; an upload longer than that needs a longer `--token-ttl`. A refresh that fails
    /// for a passing reason is retried as any request; when the retries are spent the error
    /// is returned (where [`Client::token`] would hand back the held token while it works).
    pub async fn ensure_token_valid_for(&self, left: Duration) -> Result<TokenInfo> {
        self.retrying(|| self.inner.auth.token_for(&self.inner.http, left))
            .await
    }

    /// Forces a fresh login.
    pub async fn login(&self) -> Result<TokenInfo> {
        self.retrying(|| self.inner.auth.login(&self.inner.http))
            .await
    }

    /// The server's identity `S` (docs/protocol.md), as its challenge answer names it for
    /// this client's user. Nothing is signed. A client records it once (as `efs remote add`
    /// does) and pins it with [`ClientBuilder::server_id`], so that a server relaying another
    /// server's challenge later gets no signature. Read from the server, it is only as
    /// trustworthy as the server was then: a hostile one can name another server's identity.
    pub async fn server_identity(&self) -> Result<String> {
        self.retrying(|| self.challenge_server()).await
    }

    async fn challenge_server(&self) -> std::result::Result<String, Fail> {
        #[derive(serde::Deserialize)]
        struct Challenge {
            server: String,
        }
        let user = self.inner.auth.user.clone().ok_or_else(|| {
            Error::Config("no user name to ask a challenge for (ClientBuilder::user)".into())
        })?;
        let http = &self.inner.http;
        let resp = http
            .send(
                http.client
                    .post(http.url("/_efs/auth/challenge"))
                    .timeout(http.login_timeout)
                    .json(&serde_json::json!({ "user": user })),
                None,
            )
            .await?;
        let c: Challenge = http
            .json_within(http.check(resp).await?, http::MAX_LOGIN_ANSWER)
            .await?;
        if !crate::auth::valid_server_id(&c.server) {
            return Err(Error::InvalidAnswer(
                "the challenge's server identity is not of the form efs-<32 hex digits>".into(),
            )
            .into());
        }
        Ok(c.server)
    }

    /// The server URL (`https://host:port`, without a trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.inner.http.base
    }

    /// Runs `op` until it succeeds, fails for good, or the retry policy is spent. Only for
    /// idempotent operations (GET, HEAD, listing, DELETE, mkdir, replayable uploads); not
    /// moves (see [`Client::rename`]).
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Fail>>,
    {
        let mut backoff = Backoff::new(&self.inner.retry);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(f) => match backoff.next_delay(&f) {
                    Some(delay) => {
                        tracing::debug!(
                            attempt = backoff.attempt(),
                            ?delay,
                            "transient error, retrying: {}",
                            f.err
                        );
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(f.err),
                },
            }
        }
    }

    /// One attempt of an authorised request. `make` builds it with a token; on a 401 the
    /// token is dropped and, when `replayable`, `make` builds it again after a new login.
    ///
    /// `watch`: the [`BodyWatch`] of the bodies `make` builds (an upload's), by which the
    /// idle timeout tells a long upload from a stalled one.
    async fn authed<F>(
        &self,
        replayable: bool,
        watch: Option<&BodyWatch>,
        make: F,
    ) -> std::result::Result<reqwest::Response, Fail>
    where
        F: FnMut(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder>,
    {
        Ok(self.authed_as(replayable, watch, make).await?.0)
    }

    /// [`Client::authed`], and the token the answer was given to.
    async fn authed_as<F>(
        &self,
        replayable: bool,
        watch: Option<&BodyWatch>,
        mut make: F,
    ) -> std::result::Result<(reqwest::Response, TokenInfo), Fail>
    where
        F: FnMut(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder>,
    {
        let http = &self.inner.http;
        let auth = &self.inner.auth;
        let tok = auth.token(http).await?;
        let resp = http.send(make(&http.client, &tok.token)?, watch).await?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok((http.check(resp).await?, tok));
        }
        // The server refused a token we thought valid (revoked, server restarted with
        // another key, clock skew): it is useless now in any case.
        auth.invalidate(&tok.token).await;
        if !replayable {
            // This request cannot be sent again, but the next one must not meet the same
            // refusal: a new login now replaces the refused token wherever it is kept (the
            // command line's token cache). When it succeeds, the refusal was about the old
            // token, not the user's key or grant, and the error says so; when it fails, the
            // request fails as it was answered.
            if auth.token(http).await.is_ok() {
                drop(resp);
                return Err(Error::TokenRefusedNotResent.into());
            }
            return http.check(resp).await.map(|r| (r, tok));
        }
        drop(resp);
        tracing::debug!("the server refused the token; logging in again");
        let tok = auth.token(http).await?;
        let resp = http.send(make(&http.client, &tok.token)?, watch).await?;
        Ok((http.check(resp).await?, tok))
    }

    /// The entry at `path`: `HEAD` for a file; for a directory, its entry in the parent's
    /// listing. [`Error::NotFound`] if nothing is there.
    ///
    /// A file's `modified` comes from `Last-Modified` and so has whole seconds; the root
    /// directory's is empty.
    pub async fn stat(&self, path: &str) -> Result<Entry> {
        let trimmed = path.trim_end_matches('/');
        if trimmed.is_empty() {
            self.head_dir("/").await?;
            return Ok(Entry {
                name: "/".into(),
                kind: EntryType::Dir,
                size: 0,
                modified: String::new(),
                etag: None,
                content_type: None,
            });
        }
        if path.ends_with('/') {
            return self.stat_dir(trimmed).await;
        }
        let url = self.inner.http.url(&paths::encode_path(path)?);
        let head = self
            .retrying(|| self.authed(true, None, |c, t| Ok(c.head(&url).bearer_auth(t))))
            .await;
        match head {
            Ok(resp) => Ok(entry_from_headers(paths::file_name(path), resp.headers())),
            // A directory answers HEAD without a slash with 409.
            Err(Error::Conflict(_)) => self.stat_dir(trimmed).await,
            Err(e) => Err(e),
        }
    }

    async fn head_dir(&self, dir: &str) -> Result<()> {
        let url = self.inner.http.url(&paths::encode_dir(dir)?);
        self.retrying(|| self.authed(true, None, |c, t| Ok(c.head(&url).bearer_auth(t))))
            .await
            .map(drop)
    }

    async fn stat_dir(&self, dir: &str) -> Result<Entry> {
        self.head_dir(dir).await?;
        let name = paths::file_name(dir);
        let parent = paths::parent(dir);
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list_page(parent, cursor.as_deref(), Some(10_000))
                .await?;
            if let Some(e) = page.entries.into_iter().find(|e| e.name == name) {
                return Ok(e);
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Err(Error::NotFound),
            }
        }
    }

    /// One page of the directory `dir` (with or without a trailing `/`): at most `limit`
    /// entries (1–10000, server default 1000), starting at `cursor` (from the previous page).
    ///
    /// Every name is one path segment, safe to join to a local directory: a page listing an
    /// empty name, `.`, `..`, or a name with `/`, `\\` or NUL is [`Error::InvalidAnswer`].
    pub async fn list_page(
        &self,
        dir: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<ListPage> {
        let mut url = self.inner.http.url(&paths::encode_dir(dir)?);
        let mut sep = '?';
        if let Some(limit) = limit {
            url.push_str(&format!("{sep}limit={limit}"));
            sep = '&';
        }
        if let Some(cursor) = cursor {
            url.push_str(&format!("{sep}cursor={}", paths::encode_component(cursor)));
        }
        let page: efs_proto::ListPage = self
            .retrying(|| async {
                let resp = self
                    .authed(true, None, |c, t| Ok(c.get(&url).bearer_auth(t)))
                    .await?;
                self.inner.http.json(resp).await
            })
            .await?;
        checked_page(dir, page)
    }

    /// Every entry of the directory `dir`, all pages.
    pub async fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.list_page(dir, cursor.as_deref(), None).await?;
            out.extend(page.entries);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    fn put_request(
        c: &reqwest::Client,
        url: &str,
        token: &str,
        opts: &PutOptions,
        body: reqwest::Body,
        len: Option<u64>,
    ) -> Result<reqwest::RequestBuilder> {
        let mut rb = c
            .put(url)
            .bearer_auth(token)
            .header(
                reqwest::header::CONTENT_TYPE,
                opts.content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream"),
            )
            .body(body);
        if let Some(len) = len {
            rb = rb.header(reqwest::header::CONTENT_LENGTH, len);
        }
        if let Some(tag) = &opts.if_match {
            rb = rb.header(reqwest::header::IF_MATCH, tag.as_str());
        }
        if opts.create_only {
            rb = rb.header(reqwest::header::IF_NONE_MATCH, "*");
        }
        Ok(rb)
    }

    /// Streams `body` (not retried: it is consumed). `len` if known (Content-Length).
    ///
    /// A token the server refuses (401) cannot be answered by sending the body again: a new
    /// login is made for the next request, and when it succeeds the upload fails with
    /// [`Error::TokenRefusedNotResent`]. Use [`Client::put_bytes`] or [`Client::upload_file`]
    /// for a body that can be sent again after a refused token or a transient error.
    ///
    /// The token is checked when the upload starts and again when it ends: an upload that
    /// lasts longer than the token's remaining life (a token is refreshed only once less than
    /// a quarter of its life is left) fails at its end. Before a long upload, call
    /// [`Client::ensure_token_valid_for`] with the time it may take.
    ///
    /// A `body` that fails to read, or gives more or fewer bytes than `len`, fails the upload
    /// with [`Error::Io`] (the reader's own error), and nothing is stored.
    ///
    /// Missing parent directories are created by the server.
    pub async fn upload<R: tokio::io::AsyncRead + Send + Unpin + 'static>(
        &self,
        path: &str,
        body: R,
        len: Option<u64>,
        opts: PutOptions,
    ) -> Result<Entry> {
        let url = self.inner.http.url(&paths::encode_file(path)?);
        let watch = Arc::new(BodyWatch::new());
        let mut body = Some(body_stream(body, len, opts.progress.clone(), watch.clone()));
        let resp = self
            .authed(false, Some(&*watch), |c, t| {
                let body = body
                    .take()
                    .ok_or_else(|| Error::Config("an upload stream cannot be sent twice".into()))?;
                Self::put_request(c, &url, t, &opts, body, len)
            })
            .await
            .map_err(|f| f.err)?;
        self.inner
            .http
            .json::<efs_proto::ListEntry>(resp)
            .await
            .map(Entry::from)
            .map_err(|f| f.err)
    }

    /// Uploads a local file, streaming; retried from the start on transient errors (the file
    /// is opened again for each attempt). A file that changes while it is sent (its size or
    /// modification time moves) fails the attempt before its last bytes go out, so nothing of
    /// it is stored, and the retry sends it as it is then (when no attempt is left, the
    /// error is that [`Error::Io`]). A file that cannot be read (a directory, a read error)
    /// is [`Error::Io`] with the system's error, not retried. A conditional upload
    /// (`if_match`, `create_only`) is retried only when the server cannot have stored it:
    /// see [`Client::put_bytes`].
    ///
    /// An upload that lasts longer than the token's remaining life fails at its end (the
    /// server checks the token again then) and is sent again whole with a new token: before
    /// a long one, call [`Client::ensure_token_valid_for`] with the time it may take.
    pub async fn upload_file(&self, path: &str, local: &Path, opts: PutOptions) -> Result<Entry> {
        let url = self.inner.http.url(&paths::encode_file(path)?);
        let watch = Arc::new(BodyWatch::new());
        self.retrying_put(path, &opts, || async {
            // Opened on the blocking pool (a slow or network file system must not stall the
            // runtime), anew for each attempt; a second body in one attempt, after a refused
            // token (rare), is opened in place.
            let local_path = local.to_owned();
            let mut opened = Some(
                tokio::task::spawn_blocking(move || {
                    UnchangedFile::new(std::fs::File::open(local_path)?)
                })
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))?
                .map_err(Error::Io)?,
            );
            let resp = self
                .authed(true, Some(&*watch), |c, t| {
                    let source = match opened.take() {
                        Some(source) => source,
                        None => UnchangedFile::new(std::fs::File::open(local)?)?,
                    };
                    let len = source.len;
                    let body = body_stream(source, Some(len), opts.progress.clone(), watch.clone());
                    Self::put_request(c, &url, t, &opts, body, Some(len))
                })
                .await?;
            self.inner.http.json::<efs_proto::ListEntry>(resp).await
        })
        .await
        .map(Entry::from)
    }

    /// Uploads `data` (retried on transient errors: the bytes can be sent again).
    ///
    /// A conditional upload (`if_match`, `create_only`) is not idempotent: once stored, the
    /// same request fails its condition (412). So, as [`Client::rename`], it is retried only
    /// when the server cannot have acted (no connection, or a 429 or 503 answer); when the
    /// request went out and no answer came back, the [`Error::Transport`] says the file may
    /// have been stored, rather than a retry reporting [`Error::PreconditionFailed`] for the
    /// caller's own write.
    pub async fn put_bytes(
        &self,
        path: &str,
        data: bytes::Bytes,
        opts: PutOptions,
    ) -> Result<Entry> {
        let url = self.inner.http.url(&paths::encode_file(path)?);
        let len = data.len() as u64;
        let watch = Arc::new(BodyWatch::new());
        self.retrying_put(path, &opts, || async {
            let resp = self
                .authed(true, Some(&*watch), |c, t| {
                    let body = body_stream(
                        std::io::Cursor::new(data.clone()),
                        Some(len),
                        opts.progress.clone(),
                        watch.clone(),
                    );
                    Self::put_request(c, &url, t, &opts, body, Some(len))
                })
                .await?;
            self.inner.http.json::<efs_proto::ListEntry>(resp).await
        })
        .await
        .map(Entry::from)
    }

    /// [`Client::retrying`] for an upload that can be sent again; for a conditional one,
    /// only while no attempt may have been stored (see [`Client::put_bytes`]).
    async fn retrying_put<T, F, Fut>(&self, path: &str, opts: &PutOptions, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Fail>>,
    {
        if opts.if_match.is_none() && !opts.create_only {
            return self.retrying(op).await;
        }
        self.retrying_until_sent("the upload may have been stored", &absolute(path), op)
            .await
    }

    /// Retries `op` only while the server cannot have acted on it (not sent, or answered 429
    /// or 503): for requests that are not idempotent (a move, a conditional upload). A
    /// transport error after the request went out says `may_have` and where to `look_at`,
    /// rather than a retry reporting the request's own effect as a failure.
    async fn retrying_until_sent<T, F, Fut>(
        &self,
        may_have: &str,
        look_at: &str,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Fail>>,
    {
        let mut backoff = Backoff::new(&self.inner.retry);
        loop {
            let f = match op().await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            if !f.cannot_have_acted() {
                return Err(match f.err {
                    Error::Transport(m) => Error::Transport(format!(
                        "{m} ({may_have}: look at {look_at} before trying again)"
                    )),
                    e => e,
                });
            }
            match backoff.next_delay(&f) {
                Some(delay) => {
                    tracing::debug!(?delay, "not acted on, retrying: {}", f.err);
                    tokio::time::sleep(delay).await;
                }
                None => return Err(f.err),
            }
        }
    }

    /// Streams the file (or `range`, end exclusive) into `out`; returns bytes written.
    /// Retried on transient errors before the first byte; `progress` gets bytes so far.
    ///
    /// An empty range writes nothing and sends nothing. A transfer cut off by the server
    /// (e.g. stored data failing its integrity check) is an error, never short data.
    pub async fn download<W: tokio::io::AsyncWrite + Send + Unpin>(
        &self,
        path: &str,
        out: &mut W,
        range: Option<std::ops::Range<u64>>,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<u64> {
        let url = self.inner.http.url(&paths::encode_file(path)?);
        if range.as_ref().is_some_and(|r| r.start >= r.end) {
            return Ok(0);
        }
        self.download_versioned(&url, out, range, None, progress)
            .await
            .map(|(n, _)| n)
    }

    /// [`Client::download`] of `range` only if the file is still the version `etag` names
    /// (`If-Range`): a resumed or chunked download then never joins two versions. If the
    /// file changed, nothing is written and the answer is [`Error::PreconditionFailed`]
    /// (download it again from the start). `etag` is a strong ETag as returned (quoted).
    /// Any whole-file answer (200) is taken as "changed": a proxy in between that drops
    /// `Range` makes every call fail so, never return another version's bytes.
    pub async fn download_range_if<W: tokio::io::AsyncWrite + Send + Unpin>(
        &self,
        path: &str,
        out: &mut W,
        range: std::ops::Range<u64>,
        etag: &str,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<u64> {
        let url = self.inner.http.url(&paths::encode_file(path)?);
        if range.start >= range.end {
            return Ok(0);
        }
        check_etag(etag)?;
        self.download_versioned(&url, out, Some(range), Some(etag), progress)
            .await
            .map(|(n, _)| n)
    }

    /// Downloads a whole file into memory with the ETag of the version it is (retried on
    /// transient errors): what a read-modify-write sends back as [`PutOptions::if_match`],
    /// so that a change made by someone else meanwhile is refused, not overwritten.
    pub async fn get_bytes_versioned(&self, path: &str) -> Result<(bytes::Bytes, String)> {
        let url = self.inner.http.url(&paths::encode_file(path)?);
        let mut buf = Vec::new();
        let (_, etag) = self
            .download_versioned(&url, &mut buf, None, None, None)
            .await?;
        let etag = etag.ok_or_else(|| {
            Error::InvalidAnswer("the server sent a file without its ETag".into())
        })?;
        Ok((buf.into(), etag))
    }

    /// The download loop: retried on transient errors before the first byte; returns the
    /// bytes written and the answer's ETag.
    async fn download_versioned<W: tokio::io::AsyncWrite + Send + Unpin>(
        &self,
        url: &str,
        out: &mut W,
        range: Option<std::ops::Range<u64>>,
        if_range: Option<&str>,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<(u64, Option<String>)> {
        let mut backoff = Backoff::new(&self.inner.retry);
        loop {
            let mut written = 0u64;
            let mut etag = None;
            match self
                .download_once(
                    url,
                    out,
                    range.clone(),
                    if_range,
                    progress,
                    &mut written,
                    &mut etag,
                )
                .await
            {
                Ok(()) => return Ok((written, etag)),
                Err(f) => match backoff.next_delay(&f).filter(|_| written == 0) {
                    Some(delay) => {
                        tracing::debug!(?delay, "download failed, retrying: {}", f.err);
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(f.err),
                },
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn download_once<W: tokio::io::AsyncWrite + Send + Unpin>(
        &self,
        url: &str,
        out: &mut W,
        range: Option<std::ops::Range<u64>>,
        if_range: Option<&str>,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
        written: &mut u64,
        etag: &mut Option<String>,
    ) -> std::result::Result<(), Fail> {
        let (resp, tok) = self
            .authed_as(true, None, |c, t| {
                let mut rb = c.get(url).bearer_auth(t);
                if let Some(r) = &range {
                    rb = rb.header(
                        reqwest::header::RANGE,
                        format!("bytes={}-{}", r.start, r.end - 1),
                    );
                    if let Some(tag) = if_range {
                        rb = rb.header(reqwest::header::IF_RANGE, tag);
                    }
                }
                Ok(rb)
            })
            .await?;
        *etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if if_range.is_some() && range.is_some() && resp.status().as_u16() == 200 {
            // The file is no longer the version asked for: the server sends it whole. Its
            // bytes at the range's offsets belong to another version: nothing is written.
            return Err(Error::PreconditionFailed.into());
        }
        // Bytes of the answer to skip, and how many to keep: a server that ignores the
        // Range header sends the whole file (200).
        let (mut skip, mut keep) = match (&range, resp.status().as_u16()) {
            (Some(r), 206) => (0, r.end - r.start),
            (Some(r), _) => (r.start, r.end - r.start),
            (None, _) => (0, u64::MAX),
        };
        // The file offset of the answer's next byte, for the probe after a break.
        let mut at = match (&range, resp.status().as_u16()) {
            (Some(r), 206) => r.start,
            _ => 0,
        };
        let expected = resp
            .content_length()
            .map(|l| l.saturating_sub(skip).min(keep));
        let mut resp = resp;
        while keep > 0 {
            let chunk = match self.inner.http.chunk(&mut resp).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(cause) => {
                    let asked = at..range.as_ref().map_or(u64::MAX, |r| r.end);
                    return Err(self
                        .broken_off(url, &tok, *written, asked, expected, cause)
                        .await);
                }
            };
            at += chunk.len() as u64;
            let mut data: &[u8] = &chunk;
            if skip > 0 {
                let n = skip.min(data.len() as u64) as usize;
                data = &data[n..];
                skip -= n as u64;
            }
            let n = keep.min(data.len() as u64) as usize;
            out.write_all(&data[..n]).await.map_err(Error::Io)?;
            keep -= n as u64;
            *written += n as u64;
            if let Some(p) = progress {
                p(*written);
            }
        }
        if let Some(n) = expected
            && *written < n
        {
            let cause = Error::Transport(format!(
                "the download was cut off after {} of {n} bytes",
                *written
            ));
            let asked = at..range.as_ref().map_or(u64::MAX, |r| r.end);
            return Err(self
                .broken_off(url, &tok, *written, asked, expected, cause)
                .await);
        }
        if range.is_some() && keep > 0 && keep != u64::MAX {
            // A range reaching past the end of the file: what exists was written.
            tracing::debug!("the range ends past the end of the file");
        }
        out.flush().await.map_err(Error::Io)?;
        Ok(())
    }

    /// The error of a download that broke off after `written` bytes, with `cause`, the bytes
    /// `rest` of the file (from where it broke off to the end of what was asked) still to come: if the server now refuses the token it was sent to, which had not
    /// expired, the server cut it because that login's access ended meanwhile
    /// ([`Error::AccessEnded`]; the token is dropped, so the next request logs in again); if
    /// it answers 500 for `rest`, the server cut it because it could not read its stored
    /// content there (damaged: docs/api.md), which no retry mends ([`Error::Server`], 500).
    /// Asked with one `HEAD` of `rest` (`Range`: the whole rest, not the byte where it broke
    /// off, since the server may have sent more than arrived, the rest of its buffers dropped
    /// with the stream; and no further than asked, since damage past it is not this
    /// download's), without retries and for at most [`PROBE_TIMEOUT`]; any other answer, or
    /// none, leaves `cause`.
    async fn broken_off(
        &self,
        url: &str,
        tok: &TokenInfo,
        written: u64,
        rest: std::ops::Range<u64>,
        expected: Option<u64>,
        cause: Error,
    ) -> Fail {
        let unexpired = tok.expires_at_unix > crate::auth::now_ms() / 1000;
        if written > 0 && unexpired {
            let probe = self
                .inner
                .http
                .client
                .head(url)
                .bearer_auth(&tok.token)
                .header(
                    reqwest::header::RANGE,
                    match rest.end {
                        u64::MAX => format!("bytes={}-", rest.start),
                        end => format!("bytes={}-{}", rest.start, end.saturating_sub(1)),
                    },
                )
                .timeout(PROBE_TIMEOUT);
            match self.inner.http.send(probe, None).await.map(|r| r.status()) {
                Ok(reqwest::StatusCode::UNAUTHORIZED) => {
                    self.inner.auth.invalidate(&tok.token).await;
                    return Error::AccessEnded { written, expected }.into();
                }
                Ok(reqwest::StatusCode::INTERNAL_SERVER_ERROR) => {
                    return Error::Server {
                        status: 500,
                        code: efs_proto::codes::INTERNAL.to_owned(),
                        message: format!(
                            "the download broke off after {written} bytes, and the server now refuses to send the file from there: its stored content could not be read (damaged or tampered with; the server's log says which); what was written is incomplete"
                        ),
                    }
                    .into();
                }
                _ => {}
            }
        }
        cause.into()
    }

    /// Downloads to a local file via a temporary file + rename (retried whole on transient
    /// errors). The temporary file, `<local>.<random>.efs-part` in the same directory, is
    /// created anew (`O_EXCL`): an existing file is never emptied, a link planted there never
    /// followed, and parallel downloads of one destination never share one. It is removed on
    /// failure, and when the returned future is dropped before it ends (a timeout, a
    /// cancelled task). A new file is created with mode 0600 (it holds decrypted data); a file
    /// it replaces keeps its permissions. `local`'s directory is opened once, as named (a link to a directory there is
    /// followed), and everything after happens in the directory so opened; see
    /// [`Client::download_file_at`].
    pub async fn download_file(
        &self,
        path: &str,
        local: &Path,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<u64> {
        let not_a_file = || {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} does not name a file", local.display()),
            ))
        };
        // `dir/`, `dir/.`: `file_name()` would name `dir` itself.
        let raw = local.as_os_str().as_encoded_bytes();
        if raw.ends_with(b"/") || raw.ends_with(b"/.") || raw == b"." {
            return Err(not_a_file());
        }
        let name = local.file_name().ok_or_else(not_a_file)?.to_owned();
        let parent = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let dir = tokio::task::spawn_blocking(move || open_dir_base(&parent))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
            .map_err(Error::Io)?;
        self.download_file_at(path, &dir, &name, None, progress)
            .await
    }

    /// As [`Client::download_file`], into the file `name` of the open directory `dir`: the
    /// temporary file is created, renamed and (on failure) removed relative to `dir`
    /// (`openat`, `renameat`, `unlinkat`), so a directory on the way to it swapped for a
    /// symbolic link after `dir` was opened cannot send the download elsewhere. `name` must
    /// be a plain file name (no `/`). `modified`: the modification time to give the file,
    /// set through its descriptor before it is renamed into place.
    pub async fn download_file_at(
        &self,
        path: &str,
        dir: &std::fs::File,
        name: &std::ffi::OsStr,
        modified: Option<std::time::SystemTime>,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<u64> {
        self.download_file_at_then(path, dir, name, modified, progress, |_, _| Ok(()))
            .await
    }

    /// As [`Client::download_file_at`], and `before_rename(dir, name)` runs (on a blocking
    /// thread) once the whole file is on disk, right before it is renamed into place: e.g. to
    /// move aside a directory the file replaces, which then goes only once its replacement
    /// arrived. If it fails, the download is removed and its error returned.
    pub async fn download_file_at_then<B>(
        &self,
        path: &str,
        dir: &std::fs::File,
        name: &std::ffi::OsStr,
        modified: Option<std::time::SystemTime>,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
        before_rename: B,
    ) -> Result<u64>
    where
        B: FnOnce(&std::fs::File, &std::ffi::OsStr) -> std::io::Result<()> + Send + 'static,
    {
        let url = self.inner.http.url(&paths::encode_file(path)?);
        let name = plain_name(name).map_err(Error::Io)?.to_owned();
        // The guard is made on the blocking thread with the file: if this future is dropped
        // meanwhile (a timeout, Ctrl-C), the finished task's guard still removes the file.
        let (guard, file) = {
            let (dir, name) = (dir.try_clone().map_err(Error::Io)?, name.clone());
            tokio::task::spawn_blocking(move || {
                let (part, file) = create_part_at(&dir, &name)?;
                Ok::<_, std::io::Error>((
                    PartGuard {
                        dir,
                        part: Some(part),
                    },
                    file,
                ))
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
            .map_err(Error::Io)?
        };
        let file = tokio::fs::File::from_std(file);
        let mut backoff = Backoff::new(&self.inner.retry);
        let result = loop {
            let attempt = async {
                // Each attempt starts the same file again, through its handle, never its name.
                let mut file = file.try_clone().await.map_err(Error::Io)?;
                file.set_len(0).await.map_err(Error::Io)?;
                file.rewind().await.map_err(Error::Io)?;
                // Network chunks are small (HTTP/2 frames); each write to a tokio file is
                // a trip to the blocking pool, so gather them first.
                let mut out = tokio::io::BufWriter::with_capacity(DOWNLOAD_BUFFER, file);
                let mut written = 0u64;
                let mut etag = None;
                self.download_once(
                    &url,
                    &mut out,
                    None,
                    None,
                    progress,
                    &mut written,
                    &mut etag,
                )
                .await?;
                out.get_ref().sync_all().await.map_err(Error::Io)?;
                Ok::<u64, Fail>(written)
            };
            match attempt.await {
                Ok(n) => break Ok(n),
                Err(f) => match backoff.next_delay(&f) {
                    Some(delay) => {
                        tracing::debug!(?delay, "download failed, retrying: {}", f.err);
                        tokio::time::sleep(delay).await;
                    }
                    None => break Err(f.err),
                },
            }
        };
        let result = match (result, modified) {
            (Ok(n), Some(t)) => file
                .into_std()
                .await
                .set_modified(t)
                .map(|()| n)
                .map_err(Error::Io),
            (r, _) => r,
        };
        let n = result?;
        // Renamed into place in the directory opened at the start; on any failure the guard
        // removes the temporary file.
        tokio::task::spawn_blocking(move || {
            let mut guard = guard;
            before_rename(&guard.dir, &name)?;
            let part = guard.part.as_deref().expect("armed until renamed");
            rustix::fs::renameat(&guard.dir, part, &guard.dir, &name)?;
            guard.part = None;
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
        .map_err(Error::Io)?;
        Ok(n)
    }

    /// Downloads a whole file into memory (retried on transient errors).
    pub async fn get_bytes(&self, path: &str) -> Result<bytes::Bytes> {
        let mut buf = Vec::new();
        self.download(path, &mut buf, None, None).await?;
        Ok(buf.into())
    }

    /// Deletes a file, or a directory (empty, or with everything in it when `recursive`).
    ///
    /// When a retried attempt finds nothing left, an earlier attempt did the job: `Ok`.
    pub async fn delete(&self, path: &str, recursive: bool) -> Result<()> {
        self.delete_with(
            path,
            DeleteOptions {
                recursive,
                if_match: None,
            },
        )
        .await
    }

    /// [`Client::delete`] with options: with `if_match`, only the file version that ETag
    /// names is deleted ([`Error::PreconditionFailed`] when the file changed meanwhile;
    /// never retried once the request may have reached the server, since a retry would find
    /// it gone).
    pub async fn delete_with(&self, path: &str, opts: DeleteOptions) -> Result<()> {
        let mut url = self.inner.http.url(&paths::encode_path(path)?);
        if opts.recursive {
            url.push_str("?recursive=true");
        }
        if let Some(tag) = &opts.if_match {
            check_etag(tag)?;
            return self
                .retrying_until_sent("the delete may have been done", path, || async {
                    self.authed(true, None, |c, t| {
                        Ok(c.delete(&url)
                            .bearer_auth(t)
                            .header(reqwest::header::IF_MATCH, tag.as_str()))
                    })
                    .await
                    .map(|_| ())
                })
                .await;
        }
        // A 404 after a failed attempt that may have reached the server (no answer came
        // back) means that attempt deleted it; after attempts that certainly did nothing
        // (no connection, 429, 503), it means there was nothing to delete.
        let maybe_done = std::sync::atomic::AtomicBool::new(false);
        let r = self
            .retrying(|| async {
                let r = self
                    .authed(true, None, |c, t| Ok(c.delete(&url).bearer_auth(t)))
                    .await;
                if let Err(f) = &r {
                    let not_done = f.unsent
                        || matches!(
                            f.err,
                            Error::NotFound
                                | Error::RateLimited { .. }
                                | Error::Server { status: 503, .. }
                        );
                    if !not_done {
                        maybe_done.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                r
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(Error::NotFound) if maybe_done.load(std::sync::atomic::Ordering::Relaxed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves a file or directory (`POST /_efs/move`). With `overwrite`, a file may replace
    /// a file; otherwise an existing destination is [`Error::Conflict`].
    ///
    /// A move is not idempotent: once it was done, doing it again fails (404). So it is
    /// retried only when the server cannot have acted: the connection could not be made, or
    /// the server answered 429 or 503. When the request went out and no answer came back,
    /// the [`Error::Transport`] says the move may have been done.
    pub async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<Entry> {
        self.rename_with(
            from,
            to,
            RenameOptions {
                overwrite,
                if_match: None,
            },
        )
        .await
    }

    /// [`Client::rename`] with options: with `if_match`, only the source version that ETag
    /// names is moved ([`Error::PreconditionFailed`] when it changed meanwhile).
    pub async fn rename_with(&self, from: &str, to: &str, opts: RenameOptions) -> Result<Entry> {
        // Checked as any path is (dot segments, reserved first segment).
        paths::encode_path(from)?;
        paths::encode_path(to)?;
        if let Some(tag) = &opts.if_match {
            check_etag(tag)?;
        }
        let url = self.inner.http.url("/_efs/move");
        let body = efs_proto::MoveRequest {
            from: absolute(from),
            to: absolute(to),
            overwrite: opts.overwrite,
        };
        self.retrying_until_sent("the move may have been done", &body.to, || async {
            let resp = self
                .authed(true, None, |c, t| {
                    let mut rb = c.post(&url).bearer_auth(t).json(&body);
                    if let Some(tag) = &opts.if_match {
                        rb = rb.header(reqwest::header::IF_MATCH, tag.as_str());
                    }
                    Ok(rb)
                })
                .await?;
            self.inner.http.json::<efs_proto::ListEntry>(resp).await
        })
        .await
        .map(Entry::from)
    }

    /// Creates the directory `path` and its missing parents.
    pub async fn mkdir(&self, path: &str) -> Result<Entry> {
        let url = self.inner.http.url(&paths::encode_dir(path)?);
        self.retrying(|| async {
            let resp = self
                .authed(true, None, |c, t| Ok(c.post(&url).bearer_auth(t)))
                .await?;
            self.inner.http.json::<efs_proto::ListEntry>(resp).await
        })
        .await
        .map(Entry::from)
    }
}

/// A listing page as the SDK returns it, or [`Error::InvalidAnswer`] when a name is not one
/// path segment (see [`paths::entry_name_problem`]).
fn checked_page(dir: &str, page: efs_proto::ListPage) -> Result<ListPage> {
    if let Some((e, why)) = page
        .entries
        .iter()
        .find_map(|e| paths::entry_name_problem(&e.name).map(|why| (e, why)))
    {
        // Escaped and cut short: the name is the server's, not to be printed raw.
        let shown: String = format!("{:?}", e.name).chars().take(80).collect();
        return Err(Error::InvalidAnswer(format!(
            "the listing of {dir} names the entry {shown}, which is not a file name: {why}"
        )));
    }
    Ok(ListPage {
        entries: page.entries.into_iter().map(Entry::from).collect(),
        next_cursor: page.next_cursor,
    })
}

/// `path` with a leading `/` (for JSON bodies, which carry plain paths).
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// A file's entry from the headers of `HEAD`/`GET`.
fn entry_from_headers(name: &str, h: &reqwest::header::HeaderMap) -> Entry {
    let text =
        |k: reqwest::header::HeaderName| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Entry {
        name: name.to_owned(),
        kind: EntryType::File,
        size: text(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        modified: text(reqwest::header::LAST_MODIFIED)
            .and_then(|v| httpdate::parse_http_date(&v).ok())
            .map(rfc3339)
            .unwrap_or_default(),
        etag: text(reqwest::header::ETAG),
        content_type: text(reqwest::header::CONTENT_TYPE),
    }
}

/// RFC 3339 UTC with whole seconds (`2026-01-01T00:00:00Z`).
fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {

    /// A temporary name fits in NAME_MAX whatever the name's length, cut at a character
    /// boundary, and keeps the suffix walks recognise; a short name is kept whole.
    #[test]
    fn part_names_fit_in_name_max() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt as _;
        let tag = "0123456789abcdef";
        assert_eq!(
            part_name(OsStr::new("a.pdf"), tag),
            OsStr::new("a.pdf.0123456789abcdef.efs-part")
        );
        for name in [
            "L".repeat(255),
            "L".repeat(229),
            "L".repeat(230),
            "処方箋".repeat(28), // 252 bytes of 3-byte characters
        ] {
            let p = part_name(OsStr::new(&name), tag);
            let text = p.to_str().expect("cut at a character boundary");
            assert!(
                p.as_bytes().len() <= NAME_MAX,
                "{} bytes",
                p.as_bytes().len()
            );
            assert!(text.ends_with(".0123456789abcdef.efs-part"), "{text}");
            assert!(name.starts_with(text.strip_suffix(".0123456789abcdef.efs-part").unwrap()));
        }
        let raw = OsStr::from_bytes(&[0xff; 255]);
        assert_eq!(part_name(raw, tag).as_bytes().len(), NAME_MAX);
    }
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = |s| std::time::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339(t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(t(1_767_225_600)), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(1_767_225_600 - 1)), "2025-12-31T23:59:59Z");
        let parsed = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(rfc3339(parsed), "1994-11-06T08:49:37Z");
    }

    #[test]
    fn entry_from_head_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("content-length", "1234".parse().unwrap());
        h.insert("etag", "\"abc\"".parse().unwrap());
        h.insert("content-type", "application/pdf".parse().unwrap());
        h.insert(
            "last-modified",
            "Thu, 01 Jan 2026 00:00:00 GMT".parse().unwrap(),
        );
        let e = entry_from_headers("x.pdf", &h);
        assert_eq!(
            e,
            Entry {
                name: "x.pdf".into(),
                kind: EntryType::File,
                size: 1234,
                modified: "2026-01-01T00:00:00Z".into(),
                etag: Some("\"abc\"".into()),
                content_type: Some("application/pdf".into()),
            }
        );
    }

    /// A listing as a hostile server could send it: only one-segment names get through.
    fn page_naming(name: &str) -> Result<ListPage> {
        let body = serde_json::json!({
            "path": "/elsewhere/",
            "entries": [
                {"name": "fine.txt", "type": "file", "size": 1, "modified": "2026-01-01T00:00:00Z"},
                {"name": name, "type": "dir", "size": 0, "modified": "2026-01-01T00:00:00Z"},
            ],
        });
        checked_page("/docs", serde_json::from_value(body).unwrap())
    }

    #[test]
    fn listings_with_unsafe_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../../.bashrc",
            "/etc/cron.d/x",
            "a/b",
            "..\\evil",
            "nul\0byte",
        ] {
            match page_naming(bad) {
                Err(Error::InvalidAnswer(m)) => {
                    assert!(
                        m.contains("of /docs ") && m.contains("not a file name"),
                        "{m}"
                    )
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let page = page_naming(".hidden").unwrap();
        let names: Vec<&str> = page.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["fine.txt", ".hidden"]);
    }

    /// Temporary download files are new files beside the destination: never the fixed name
    /// an earlier version used (which it would have emptied), never a link of their name.
    #[test]
    fn temporary_download_files_are_new() {
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        let name = std::ffi::OsStr::new("report.pdf");
        // What a fixed name would have emptied.
        let fixed = d.path().join("report.pdf.efs-part");
        std::fs::write(&fixed, b"keep me").unwrap();
        let (a, _fa) = create_part_at(&dir, name).unwrap();
        let (b, _fb) = create_part_at(&dir, name).unwrap();
        assert_ne!(a, b);
        for p in [&a, &b] {
            let name = p.to_str().unwrap();
            assert!(
                name.starts_with("report.pdf.") && name.ends_with(".efs-part"),
                "{name}"
            );
            assert_eq!(std::fs::metadata(d.path().join(p)).unwrap().len(), 0);
        }
        assert_eq!(std::fs::read(&fixed).unwrap(), b"keep me");
        assert!(plain_name(std::ffi::OsStr::new("a/b")).is_err());
        assert!(plain_name(std::ffi::OsStr::new("..")).is_err());
        assert!(plain_name(std::ffi::OsStr::new("ok.txt")).is_ok());
    }

    #[test]
    fn builder_refuses_plain_http_and_bad_urls() {
        assert!(matches!(
            Client::builder("http://127.0.0.1:8443").build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Client::builder("not a url").build(),
            Err(Error::Config(_))
        ));
        let c = Client::builder("https://127.0.0.1:8443/")
            .trust(Trust::Fingerprint([0; 32]))
            .build()
            .unwrap();
        assert_eq!(c.base_url(), "https://127.0.0.1:8443");
        // The system's roots load, and a path prefix is kept.
        let c = Client::builder("https://efs.example/prefix/")
            .build()
            .unwrap();
        assert_eq!(c.base_url(), "https://efs.example/prefix");
    }

    /// Regression: a URL with a password but no user name (`https://:pw@host`) was taken,
    /// kept in the base URL and printed by Debug.
    #[test]
    fn builder_refuses_any_userinfo_without_echoing_it() {
        for url in [
            "https://:secret-pw@efs.example",
            "https://me:secret-pw@efs.example",
            "https://me@efs.example",
        ] {
            match Client::builder(url).build() {
                Err(Error::Config(m)) => assert!(!m.contains("secret-pw"), "{m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
