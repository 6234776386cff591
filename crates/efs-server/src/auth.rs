//! Login and token verification: the challenge → Ed25519 signature → JWT protocol.
//!
//! A caller asks for a challenge (a random single-use nonce), signs a domain-separated
//! message naming this server, itself and the nonce with its Ed25519 key, and trades the
//! signature for a JWT (EdDSA) scoped to one filesystem. The token can be refreshed a bounded
//! number of times. Every file request presents it, and [`Authenticator::verify`] checks it
//! against the user directory as it is *now* (user deleted, generation bumped, grant removed:
//! refused). The protocol is written down byte by byte in `docs/protocol.md`; the constants
//! here are the ones it names.
//!
//! Every refusal is the same `401 unauthorized` to the client. The precise reason goes to
//! `tracing` at debug level and to the [`AuthAudit`] hook, never into a response.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::{Digest, Sha256};

use crate::ratelimit::{LoginRateLimiter, RateLimitConfig, RetryAfter, address_key};

/// First line of every signed login message: the protocol's label and version.
/// DO NOT CHANGE: clients sign it; a new message layout gets a new version label.
pub const SIGNED_MESSAGE_LABEL: &str = "efs-auth-v1";

/// Length of a login nonce in bytes (before base64url).
pub const NONCE_LEN: usize = 32;

/// Outstanding challenges kept at most; past this the oldest is dropped.
const MAX_PENDING_CHALLENGES: usize = 100_000;
/// Outstanding challenges kept at most per client address (IPv6: per /64); past this the
/// address's own oldest is dropped, so one address cannot push other clients' challenges out.
const MAX_PENDING_CHALLENGES_PER_ADDRESS: usize = 64;
/// Verified tokens kept in the cache at most.
const TOKEN_CACHE_CAPACITY: u64 = 10_000;
/// Longer bearer tokens are refused before any parsing (ours are about 400 bytes).
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Random bytes in a token's `jti`.
const JTI_LEN: usize = 16;
/// Longest accepted user name.
const MAX_USER_NAME_LEN: usize = 64;
/// How far a token's `iat` may lie in the future, and its `exp` beyond now + the token
/// lifetime, in seconds: room for server nodes whose clocks differ a little. A token minted
/// while a clock ran further ahead is refused once the clock is right again.
pub const TOKEN_CLOCK_SKEW_SECS: u64 = 60;

/// Tunables of the login protocol.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The server's identity `S`, bound into every signed message and every token's `iss`.
    /// Empty means "derive it from the signing key" ([`server_id_for`]), which is what a
    /// server should use; a value given here must not contain a line feed.
    pub server_id: String,
    /// Lifetime of a token, from login or from its latest refresh (whole seconds, at least 1).
    pub token_ttl: Duration,
    /// Lifetime of a challenge nonce.
    pub nonce_ttl: Duration,
    /// Refreshes allowed after login; a token whose `ren` equals this cannot be refreshed.
    pub max_renewals: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            server_id: String::new(),
            token_ttl: Duration::from_secs(3600),
            nonce_ttl: Duration::from_secs(60),
            max_renewals: 24,
        }
    }
}

/// What the authenticator needs to know about a user, provided by the server's user store.
#[derive(Clone)]
pub struct AuthUser {
    /// The user name (`sub` of its tokens).
    pub name: String,
    /// The key its login signatures are checked with.
    pub public_key: VerifyingKey,
    /// The filesystems it may use.
    pub grants: Vec<Grant>,
    /// Bumped on revoke-all or delete: every token issued under an older generation is refused.
    pub generation: u64,
    /// SHA-256 of the client certificate the user is bound to (mutual TLS), if any: a login
    /// then succeeds only over a connection that presented exactly that certificate.
    pub cert_sha256: Option<[u8; 32]>,
}

/// A user's right to one filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The filesystem's name.
    pub fs: String,
    /// Reads only; enforcing it (403 on a write) is the caller's job.
    pub read_only: bool,
}

/// The server's user store, as the authenticator sees it. Called on every verification, so
/// it must be an in-memory lookup.
pub trait UserDirectory: Send + Sync {
    /// The user named `user`, if it exists (shared: a token check copies nothing).
    fn lookup(&self, user: &str) -> Option<Arc<AuthUser>>;
}

/// The claims of an EFS token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The issuing server's identity `S`.
    pub iss: String,
    /// The user name.
    pub sub: String,
    /// The one filesystem the token is for.
    pub fs: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at (refused from this second on), seconds since the Unix epoch.
    pub exp: u64,
    /// Renewals used: 0 at login, one more per refresh.
    pub ren: u32,
    /// The user's generation at issue (`gen` on the wire; `gen` is a keyword in Rust 2024).
    pub r#gen: u64,
    /// A random token id (16 bytes, base64url).
    pub jti: String,
}

/// A verified caller: claims + the grant in force now.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Whether the grant in force *now* is read-only.
    pub read_only: bool,
    /// The token's claims, shared with the token cache (a request copies none of them).
    pub claims: Arc<Claims>,
}

impl Caller {
    /// The user name (`sub`).
    pub fn user(&self) -> &str {
        &self.claims.sub
    }

    /// The filesystem the token is for.
    pub fn fs(&self) -> &str {
        &self.claims.fs
    }
}

/// Body of `POST /_efs/auth/challenge`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ChallengeRequest {
    /// The user about to log in.
    pub user: String,
}

/// Answer to `POST /_efs/auth/challenge`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChallengeResponse {
    /// 32 random bytes, base64url without padding; sign it as this text.
    pub nonce: String,
    /// The server identity `S` to put in the signed message.
    pub server: String,
    /// Seconds the nonce stays valid.
    pub expires_in: u64,
}

/// Body of `POST /_efs/auth/token`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct TokenRequest {
    /// The user logging in.
    pub user: String,
    /// The nonce of a challenge issued for this user.
    pub nonce: String,
    /// The Ed25519 signature of [`signed_message`], base64url without padding.
    pub signature: String,
    /// The filesystem to log in to; may be left out when the user has exactly one.
    #[serde(default)]
    pub fs: Option<String>,
}

/// Answer to `POST /_efs/auth/token` and `POST /_efs/auth/refresh`. Its `Debug` leaves the
/// token out (a bearer credential must never reach a log).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenResponse {
    /// The JWT, to send as `Authorization: Bearer …`.
    pub token: String,
    /// Seconds the token stays valid.
    pub expires_in: u64,
    /// Refreshes still allowed for this token's line.
    pub renewals_left: u32,
    /// The filesystem the token is for.
    pub fs: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("renewals_left", &self.renewals_left)
            .field("fs", &self.fs)
            .finish()
    }
}

/// Why a login, refresh or token check failed. Only [`AuthError::code`] and
/// [`AuthError::public_message`] may reach a client; `Display` never shows the internal reason.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// 401 `unauthorized`. The reason is for logs and the audit trail only.
    #[error("unauthorized")]
    Unauthorized(&'static str),
    /// 429 `rate_limited`: too many failed logins for this user or address.
    #[error("too many failed logins; retry after {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the window ends (the `Retry-After` value).
        retry_after_secs: u64,
    },
    /// 400 `fs_required`: the user has several filesystems and named none.
    #[error("the user has several filesystems and named none")]
    FsRequired,
    /// 400 `bad_request`: a malformed field (user name, base64, length).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

impl AuthError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Unauthorized(_) => 401,
            AuthError::RateLimited { .. } => 429,
            AuthError::FsRequired | AuthError::BadRequest(_) => 400,
        }
    }

    /// The stable error code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthorized(_) => efs_proto::codes::UNAUTHORIZED,
            AuthError::RateLimited { .. } => efs_proto::codes::RATE_LIMITED,
            AuthError::FsRequired => efs_proto::codes::FS_REQUIRED,
            AuthError::BadRequest(_) => efs_proto::codes::BAD_REQUEST,
        }
    }

    /// The message of the JSON body: generic for refusals, precise for the client's own
    /// malformed input.
    pub fn public_message(&self) -> String {
        match self {
            AuthError::Unauthorized(_) => "authentication failed".to_owned(),
            AuthError::RateLimited { retry_after_secs } => {
                format!("too many failed logins; retry after {retry_after_secs} s")
            }
            AuthError::FsRequired => {
                "this user has several filesystems; name one in \"fs\"".to_owned()
            }
            AuthError::BadRequest(what) => (*what).to_owned(),
        }
    }

    /// The `Retry-After` value, for 429.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AuthError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The internal reason (for logs and audit only, never for the client).
    pub fn internal_reason(&self) -> &'static str {
        match self {
            AuthError::Unauthorized(reason) | AuthError::BadRequest(reason) => reason,
            AuthError::RateLimited { .. } => "rate limited",
            AuthError::FsRequired => "fs required",
        }
    }
}

/// Errors of [`parse_public_key`].
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KeyParseError {
    /// Neither an OpenSSH `ssh-ed25519 …` line, a PEM `PUBLIC KEY`, nor the base64 of 32 bytes.
    #[error(
        "not an Ed25519 public key: expected an OpenSSH `ssh-ed25519 AAAA…` line, a PEM `-----BEGIN PUBLIC KEY-----` block, or the base64 of its 32 bytes as `efsctl list-users --json` prints it"
    )]
    Unrecognized,
    /// An OpenSSH or PEM key of another algorithm.
    #[error("only Ed25519 keys are accepted (found {0})")]
    NotEd25519(String),
    /// The OpenSSH key blob is damaged.
    #[error("malformed OpenSSH key: {0}")]
    MalformedOpenSsh(&'static str),
    /// The PEM block does not hold an Ed25519 SubjectPublicKeyInfo.
    #[error("malformed PEM public key (expected the output of `openssl pkey -pubout`)")]
    MalformedPem,
    /// 32 bytes that are not a usable Ed25519 point (off the curve, or of small order).
    #[error("the key is not a valid Ed25519 public key")]
    InvalidKey,
}

/// What the audit hook is told.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthEventKind {
    /// A token was issued by `/token`.
    LoginSucceeded,
    /// `/token` refused (401 or 400); counted by the rate limiter unless `reason` says
    /// otherwise.
    LoginFailed,
    /// `/token` refused with 429: the address is over its failure limit (reason
    /// `"rate limited"`, nothing checked), or the user is and this attempt failed too (the
    /// attempt's own reason; counted).
    LoginRateLimited,
    /// A token was issued by `/refresh`.
    RefreshSucceeded,
    /// `/refresh` refused.
    RefreshFailed,
    /// A token presented on a request was refused.
    TokenRejected,
}

/// One authentication event, for the audit log.
#[derive(Clone, Debug)]
pub struct AuthEvent<'a> {
    /// What happened.
    pub kind: AuthEventKind,
    /// The user: as claimed for logins, from verified claims for tokens (absent when the
    /// token could not be verified).
    pub user: Option<&'a str>,
    /// The filesystem, when known.
    pub fs: Option<&'a str>,
    /// The client's address, when known (not for token checks).
    pub client_ip: Option<IpAddr>,
    /// The precise reason; `"ok"` on success.
    pub reason: &'static str,
    /// The HTTP status the client is answered with.
    pub status: u16,
    /// The SHA-256 fingerprint (`SHA256:…`, as `ssh-keygen -lf` prints it) of the public key
    /// a successful login proved: after `efsctl replace-key`, tells the old key's logins from
    /// the new one's. `None` for every other event.
    pub key_sha256: Option<&'a str>,
    /// The caller proved who it is, now or once: a login whose signature checked out (even
    /// if it was then refused, e.g. for a filesystem not granted), a token this server signed
    /// (accepted, or refused as expired, revoked, no longer granted, out of renewals).
    /// `false` for every other refusal: a forged or malformed token, a wrong login signature.
    pub proven: bool,
}

/// Receives authentication events (the server's encrypted audit log).
pub trait AuthAudit: Send + Sync {
    /// Records one event. Called on the request path: must not block for long.
    fn record(&self, event: &AuthEvent<'_>);
}

/// Issues and verifies EFS tokens. One per server process; share it behind an `Arc`.
pub struct Authenticator {
    /// `server_id` is resolved (never empty).
    config: AuthConfig,
    users: Arc<dyn UserDirectory>,
    /// Token-signing key: jsonwebtoken's PKCS#8 copy, zeroized on drop (`EncodingKey` is
    /// `ZeroizeOnDrop` since jsonwebtoken 10.4); exactly one copy is made, for the life of the
    /// server.
    encoding_key: EncodingKey,
    decoding_key: DecodingKey,
    verifying_key: VerifyingKey,
    validation: Validation,
    /// Checked instead of a user's key when the user does not exist, so that an unknown user
    /// costs the same signature verification as a known one.
    decoy_key: VerifyingKey,
    challenges: Mutex<Challenges>,
    max_pending_challenges: usize,
    max_pending_challenges_per_address: usize,
    /// SHA-256 of a token string → its claims, once the signature and issuer checked out.
    token_cache: moka::sync::Cache<[u8; 32], CachedClaims>,
    limiter: LoginRateLimiter,
    audit: Option<Arc<dyn AuthAudit>>,
    /// Full JWT signature verifications done (the cache keeps this low).
    signature_checks: AtomicU64,
    clock: Clock,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("server_id", &self.config.server_id)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `signing_key`: the server's token-signing key (the caller unwraps it from storage).
    pub fn new(
        signing_key: &SigningKey,
        mut config: AuthConfig,
        users: Arc<dyn UserDirectory>,
    ) -> Self {
        let verifying_key = signing_key.verifying_key();
        if config.server_id.is_empty() {
            config.server_id = server_id_for(&verifying_key);
        }
        let pkcs8 = signing_key
            .to_pkcs8_der()
            .expect("PKCS#8 encoding of a 32-byte Ed25519 seed cannot fail");
        let encoding_key = EncodingKey::from_ed_der(pkcs8.as_bytes());
        // jsonwebtoken's aws-lc backend takes the raw 32-byte public key as "DER".
        let decoding_key = DecodingKey::from_ed_der(verifying_key.as_bytes());

        let mut validation = Validation::new(Algorithm::EdDSA);
        // `exp` is checked on every call against `self.clock` with no leeway, cached or not.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.set_issuer(&[config.server_id.as_str()]);

        let mut seed = [0u8; 32];
        fill_random(&mut seed);
        let decoy_key = SigningKey::from_bytes(&seed).verifying_key();
        zeroize::Zeroize::zeroize(&mut seed);

        let token_cache = moka::sync::Cache::builder()
            .max_capacity(TOKEN_CACHE_CAPACITY)
            .expire_after(CacheExpiry)
            .build();

        let auth = Self {
            limiter: LoginRateLimiter::new(&RateLimitConfig::default()),
            config,
            users,
            encoding_key,
            decoding_key,
            verifying_key,
            validation,
            decoy_key,
            challenges: Mutex::new(Challenges::default()),
            max_pending_challenges: MAX_PENDING_CHALLENGES,
            max_pending_challenges_per_address: MAX_PENDING_CHALLENGES_PER_ADDRESS,
            token_cache,
            audit: None,
            signature_checks: AtomicU64::new(0),
            clock: Clock::System,
        };
        // Sign once now, so that `issue` can rely on signing working.
        jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &serde_json::json!({}),
            &auth.encoding_key,
        )
        .expect("aws-lc accepts the PKCS#8 document ed25519-dalek produces");
        auth
    }

    /// Replaces the failed-login limits (default: [`RateLimitConfig::default`]).
    pub fn with_rate_limits(mut self, limits: &RateLimitConfig) -> Self {
        self.limiter = LoginRateLimiter::new(limits);
        self
    }

    /// Sends every authentication event to `audit`.
    pub fn with_audit(mut self, audit: Arc<dyn AuthAudit>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// The server's identity `S`.
    pub fn server_id(&self) -> &str {
        &self.config.server_id
    }

    /// The token-verification key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.verifying_key
    }

    /// The token-verification key as PEM SubjectPublicKeyInfo, served at
    /// `/_efs/auth/public-key`.
    pub fn public_key_pem(&self) -> String {
        self.verifying_key
            .to_public_key_pem(LineEnding::LF)
            .expect("SPKI encoding of a 32-byte Ed25519 key cannot fail")
    }

    /// Issues a challenge. A well-formed user name gets one whether the user exists or not,
    /// without even looking it up: the answer has the same shape and timing either way.
    /// `client_ip` bounds the challenges outstanding per address
    /// (64 per address, IPv6 per /64: docs/protocol.md).
    pub fn challenge(
        &self,
        req: &ChallengeRequest,
        client_ip: IpAddr,
    ) -> Result<ChallengeResponse, AuthError> {
        check_user_name(&req.user)?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let now = self.clock.now_ms();
        let expires_ms = now.saturating_add(duration_ms(self.config.nonce_ttl));
        self.lock_challenges().insert(
            nonce,
            PendingChallenge {
                user: req.user.clone(),
                address: address_key(client_ip),
                expires_ms,
            },
            now,
            ChallengeLimits {
                total: self.max_pending_challenges,
                per_address: self.max_pending_challenges_per_address,
            },
        );
        Ok(ChallengeResponse {
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            server: self.config.server_id.clone(),
            expires_in: self.config.nonce_ttl.as_secs(),
        })
    }

    /// Trades a signed challenge for a token, over a connection without a client
    /// certificate ([`Authenticator::login_with_cert`]).
    pub fn login(&self, req: &TokenRequest, client_ip: IpAddr) -> Result<TokenResponse, AuthError> {
        self.login_with_cert(req, client_ip, None)
    }

    /// Trades a signed challenge for a token. `client_cert`: SHA-256 of the certificate the
    /// connection presented (mutual TLS); a user bound to a certificate logs in only with
    /// exactly that one, checked after its signature, so that the refusal says nothing to
    /// whoever does not hold the user's key.
    ///
    /// An address over its failure limit is refused (429) before any other check. A user name
    /// over its limit is not: anyone can fail logins in any name, so refusing there would let
    /// anyone keep any user out. The attempt is checked as usual, a valid signature gets its
    /// token, and only a failed attempt is answered 429 instead of its own error (and still
    /// counted). A malformed user or filesystem name is refused (400) and counts against the
    /// address; its entry carries neither name.
    pub fn login_with_cert(
        &self,
        req: &TokenRequest,
        client_ip: IpAddr,
        client_cert: Option<[u8; 32]>,
    ) -> Result<TokenResponse, AuthError> {
        let now = self.clock.now_ms();
        let well_formed = check_user_name(&req.user)
            .map_err(|e| (e, "malformed user name"))
            .and_then(|()| check_fs_name(&req.fs).map_err(|e| (e, "malformed filesystem name")));
        if let Err(RetryAfter(retry_after_secs)) = self.limiter.check_address(client_ip, now) {
            // Names are recorded only when well-formed: their length is bounded then.
            let names = well_formed.is_ok();
            self.report(AuthEvent {
                kind: AuthEventKind::LoginRateLimited,
                user: names.then_some(req.user.as_str()),
                fs: req.fs.as_deref().filter(|_| names),
                client_ip: Some(client_ip),
                reason: "rate limited",
                status: 429,
                key_sha256: None,

                proven: false,
            });
            return Err(AuthError::RateLimited { retry_after_secs });
        }
        if let Err((e, reason)) = well_formed {
            self.limiter.record_address_failure(client_ip, now);
            self.report(AuthEvent {
                kind: AuthEventKind::LoginFailed,
                user: None,
                fs: None,
                client_ip: Some(client_ip),
                reason,
                status: e.status(),
                key_sha256: None,

                proven: false,
            });
            return Err(e);
        }
        let user_limited = self.limiter.check_user(&req.user, now).err();
        match self.login_checked(req, now, client_cert) {
            Ok((resp, key_sha256)) => {
                self.report(AuthEvent {
                    kind: AuthEventKind::LoginSucceeded,
                    user: Some(&req.user),
                    fs: Some(&resp.fs),
                    client_ip: Some(client_ip),
                    reason: "ok",
                    status: 200,
                    key_sha256: Some(&key_sha256),

                    proven: true,
                });
                Ok(resp)
            }
            Err(failure) => {
                if failure.counts {
                    if failure.per_user {
                        self.limiter.record_failure(&req.user, client_ip, now);
                    } else {
                        self.limiter.record_address_failure(client_ip, now);
                    }
                }
                // Refusals after a valid signature (`counts` false) keep their own answer.
                let limited = user_limited.filter(|_| failure.counts);
                self.report(AuthEvent {
                    kind: if limited.is_some() {
                        AuthEventKind::LoginRateLimited
                    } else {
                        AuthEventKind::LoginFailed
                    },
                    user: Some(&req.user),
                    fs: req.fs.as_deref(),
                    client_ip: Some(client_ip),
                    reason: failure.error.internal_reason(),
                    status: if limited.is_some() {
                        429
                    } else {
                        failure.error.status()
                    },
                    key_sha256: None,

                    proven: !failure.counts,
                });
                match limited {
                    Some(RetryAfter(retry_after_secs)) => {
                        Err(AuthError::RateLimited { retry_after_secs })
                    }
                    None => Err(failure.error),
                }
            }
        }
    }

    /// Issues a fresh token for a valid one: `ren` one more, a full lifetime again. Refused
    /// (401) once `ren` has reached `max_renewals`. Not rate-limited: it costs what a file
    /// request's token check costs, and a valid token is already proof of the key.
    pub fn refresh(
        &self,
        bearer_token: &str,
        client_ip: IpAddr,
    ) -> Result<TokenResponse, AuthError> {
        let now = self.clock.now_ms();
        let result = self.check_token(bearer_token, now).and_then(|caller| {
            if caller.claims.ren >= self.config.max_renewals {
                return Err(Refusal::of("renewals exhausted", &caller.claims));
            }
            let resp = self.issue(
                caller.user(),
                caller.fs(),
                caller.claims.r#gen,
                caller.claims.ren + 1,
                now,
            );
            Ok((caller, resp))
        });
        match result {
            Ok((caller, resp)) => {
                self.report(AuthEvent {
                    kind: AuthEventKind::RefreshSucceeded,
                    user: Some(caller.user()),
                    fs: Some(caller.fs()),
                    client_ip: Some(client_ip),
                    reason: "ok",
                    status: 200,
                    key_sha256: None,

                    proven: true,
                });
                Ok(resp)
            }
            Err(refusal) => {
                self.report(AuthEvent {
                    kind: AuthEventKind::RefreshFailed,
                    user: refusal.user.as_deref(),
                    fs: refusal.fs.as_deref(),
                    client_ip: Some(client_ip),
                    reason: refusal.reason,
                    status: 401,
                    // Signed by this server (renewals used up, revoked): named, one by one.
                    key_sha256: None,

                    proven: refusal.user.is_some(),
                });
                Err(AuthError::Unauthorized(refusal.reason))
            }
        }
    }

    /// Checks a bearer token for a file request. After the first success the signature is
    /// not checked again (cache); expiry, the user's generation and the grant are checked on
    /// every call.
    pub fn verify(&self, bearer_token: &str) -> Result<Caller, AuthError> {
        self.check(bearer_token, None)
            .map_err(|refused| refused.error)
    }

    /// [`Authenticator::verify`] for a request from `client_ip` (its refusal is reported
    /// with the address).
    pub fn verify_from(&self, bearer_token: &str, client_ip: IpAddr) -> Result<Caller, AuthError> {
        self.check(bearer_token, Some(client_ip))
            .map_err(|refused| refused.error)
    }

    /// [`Authenticator::verify_from`], and for a refused token that this server signed
    /// (expired, revoked, its grant withdrawn) the user and filesystem it names: the
    /// request's audit entry names them, one by one, outside the budget of callers that
    /// proved nobody (a stolen token used after its revoke is seen with its user and path).
    pub fn verify_named(
        &self,
        bearer_token: &str,
        client_ip: IpAddr,
    ) -> Result<Caller, TokenRefused> {
        self.check(bearer_token, Some(client_ip))
    }

    /// Reports a refresh refused because its token was (by [`Authenticator::verify_named`],
    /// which reported the `token-rejected`): the refresh's own `refresh-failed` event, with
    /// the refusal's reason and, for a token this server signed, its user and filesystem.
    pub fn report_refresh_refused(&self, refused: &TokenRefused, client_ip: IpAddr) {
        self.report(AuthEvent {
            kind: AuthEventKind::RefreshFailed,
            user: refused.user.as_deref(),
            fs: refused.fs.as_deref(),
            client_ip: Some(client_ip),
            reason: refused.error.internal_reason(),
            status: 401,
            // Signed by this server (expired, revoked): named, one by one.
            key_sha256: None,

            proven: refused.user.is_some(),
        });
    }

    /// The caller a token proves, with every check of [`Authenticator::verify`] (signature,
    /// issuer, expiry, the user's generation, the grant), reporting nothing: for a request
    /// refused for another reason before its token was looked at (a bad path), whose entry
    /// should still name a caller with a valid token. A token refused here leaves no entry
    /// of its own, as before: the request's entry stays that of a caller who proved nobody.
    pub fn identify(&self, bearer_token: &str) -> Option<Caller> {
        self.check_token(bearer_token, self.clock.now_ms()).ok()
    }

    fn check(&self, bearer_token: &str, client_ip: Option<IpAddr>) -> Result<Caller, TokenRefused> {
        let now = self.clock.now_ms();
        self.check_token(bearer_token, now).map_err(|refusal| {
            self.report(AuthEvent {
                kind: AuthEventKind::TokenRejected,
                user: refusal.user.as_deref(),
                fs: refusal.fs.as_deref(),
                client_ip,
                reason: refusal.reason,
                status: 401,
                // Signed by this server: its holder once proved the user's key.
                key_sha256: None,

                proven: refusal.user.is_some(),
            });
            TokenRefused {
                error: AuthError::Unauthorized(refusal.reason),
                user: refusal.user,
                fs: refusal.fs,
            }
        })
    }

    /// Whether the access `caller` was verified with is still in force, its expiry aside:
    /// the user still exists with the token's generation (not revoked, not deleted and made
    /// again) and still holds a grant to the token's filesystem. For a download under way,
    /// checked between its batches: a withdrawal cuts it, the token's expiry while it is sent
    /// does not (the request was authorised when it began, and a long download cannot
    /// present a fresher token).
    pub fn still_granted(&self, caller: &Caller) -> bool {
        let claims = &caller.claims;
        self.users.lookup(&claims.sub).is_some_and(|user| {
            user.generation == claims.r#gen && user.grants.iter().any(|g| g.fs == claims.fs)
        })
    }

    /// Drops cached verifications (call after a user/grant change; verify re-checks
    /// gen/grants anyway).
    pub fn invalidate_cache(&self) {
        self.token_cache.invalidate_all();
    }

    /// Number of full JWT signature verifications done so far (a metric; the cache keeps it
    /// near the number of distinct tokens seen).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    fn login_checked(
        &self,
        req: &TokenRequest,
        now: u64,
        client_cert: Option<[u8; 32]>,
    ) -> Result<(TokenResponse, String), LoginFailure> {
        // Until a nonce issued to this user is presented, a failure is not even an attempt at
        // the user's key: it counts against the address only. From there on (an expired nonce
        // of this user, a bad signature) it counts against the user too; anyone can get that
        // far, which is why a user over its limit is still let in with a valid signature
        // (`login`).
        let nonce: [u8; NONCE_LEN] = decode_fixed(&req.nonce).ok_or(LoginFailure::address_only(
            AuthError::BadRequest("nonce must be 32 bytes in base64url without padding"),
        ))?;
        // A nonce is used up by the first /token request naming it, whatever follows.
        let pending = self
            .lock_challenges()
            .take(&nonce)
            .ok_or(LoginFailure::address_only(AuthError::Unauthorized(
                "unknown or already used nonce",
            )))?;
        // The user first: an expired nonce of another name must not count against this one.
        if pending.user != req.user {
            return Err(LoginFailure::address_only(AuthError::Unauthorized(
                "nonce issued for another user",
            )));
        }
        if now >= pending.expires_ms {
            return Err(LoginFailure::unauthorized("expired nonce"));
        }
        let signature: [u8; 64] = decode_fixed(&req.signature).ok_or(LoginFailure::counted(
            AuthError::BadRequest("signature must be 64 bytes in base64url without padding"),
        ))?;
        let signature = Signature::from_bytes(&signature);

        let user = self.users.lookup(&req.user);
        let key = user.as_ref().map_or(&self.decoy_key, |u| &u.public_key);
        let message = signed_message(
            &self.config.server_id,
            &req.user,
            &URL_SAFE_NO_PAD.encode(nonce),
        );
        let signature_ok = key.verify_strict(&message, &signature).is_ok();
        let Some(user) = user else {
            return Err(LoginFailure::unauthorized("unknown user"));
        };
        if !signature_ok {
            return Err(LoginFailure::unauthorized("bad signature"));
        }

        // The key is proven from here on: the remaining refusals are not counted as failures.
        if let Some(bound) = user.cert_sha256 {
            use subtle::ConstantTimeEq;
            if !client_cert.is_some_and(|c| bool::from(c.ct_eq(&bound))) {
                return Err(LoginFailure {
                    error: AuthError::Unauthorized(
                        "client certificate does not match the one bound to the user",
                    ),
                    counts: false,
                    per_user: false,
                });
            }
        }
        let grant = match &req.fs {
            Some(fs) => user
                .grants
                .iter()
                .find(|g| &g.fs == fs)
                .ok_or(LoginFailure {
                    error: AuthError::Unauthorized("filesystem not granted"),
                    counts: false,
                    per_user: false,
                })?,
            None => match user.grants.as_slice() {
                [only] => only,
                [] => {
                    return Err(LoginFailure {
                        error: AuthError::Unauthorized("user has no filesystem"),
                        counts: false,
                        per_user: false,
                    });
                }
                _ => {
                    return Err(LoginFailure {
                        error: AuthError::FsRequired,
                        counts: false,
                        per_user: false,
                    });
                }
            },
        };
        // The key that logged in, for the audit entry (one SHA-256 of 51 bytes: nothing
        // beside the signature check).
        let key_sha256 = fingerprint_sha256(&user.public_key);
        Ok((
            self.issue(&user.name, &grant.fs, user.generation, 0, now),
            key_sha256,
        ))
    }

    fn issue(&self, user: &str, fs: &str, generation: u64, ren: u32, now_ms: u64) -> TokenResponse {
        let ttl = self.config.token_ttl.as_secs().max(1);
        let iat = now_ms / 1000;
        let mut jti = [0u8; JTI_LEN];
        fill_random(&mut jti);
        let claims = Claims {
            iss: self.config.server_id.clone(),
            sub: user.to_owned(),
            fs: fs.to_owned(),
            iat,
            exp: iat.saturating_add(ttl),
            ren,
            r#gen: generation,
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding_key)
                .expect(
                    "signing works: checked in Authenticator::new, and the claims always serialize",
                );
        TokenResponse {
            token,
            expires_in: ttl,
            renewals_left: self.config.max_renewals.saturating_sub(ren),
            fs: fs.to_owned(),
        }
    }

    /// Everything [`Authenticator::verify`] checks.
    fn check_token(&self, token: &str, now_ms: u64) -> Result<Caller, Refusal> {
        let claims = self.verified_claims(token, now_ms)?;
        let now_s = now_ms / 1000;
        if now_s >= claims.exp {
            return Err(Refusal::of("token expired", &claims));
        }
        // Signed by our key, but minted while a clock ran fast: its `exp` would outlive the
        // lifetime it was given.
        if claims.iat > now_s.saturating_add(TOKEN_CLOCK_SKEW_SECS) {
            return Err(Refusal::of("token issued in the future", &claims));
        }
        let max_exp = now_s
            .saturating_add(self.config.token_ttl.as_secs().max(1))
            .saturating_add(TOKEN_CLOCK_SKEW_SECS);
        if claims.exp > max_exp {
            return Err(Refusal::of("token expires too far ahead", &claims));
        }
        let Some(user) = self.users.lookup(&claims.sub) else {
            return Err(Refusal::of("user no longer exists", &claims));
        };
        if user.generation != claims.r#gen {
            return Err(Refusal::of(
                "token revoked (user generation changed)",
                &claims,
            ));
        }
        let Some(grant) = user.grants.iter().find(|g| g.fs == claims.fs) else {
            return Err(Refusal::of("filesystem no longer granted", &claims));
        };
        Ok(Caller {
            read_only: grant.read_only,
            claims,
        })
    }

    /// The claims of a token whose signature, algorithm and issuer are good, from the cache
    /// when this exact token was checked before.
    fn verified_claims(&self, token: &str, now_ms: u64) -> Result<Arc<Claims>, Refusal> {
        if token.is_empty() {
            return Err(Refusal::anonymous("missing token"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(Refusal::anonymous("token too long"));
        }
        let cache_key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(cached) = self.token_cache.get(&cache_key) {
            return Ok(cached.claims);
        }
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding_key, &self.validation)
            .map_err(|e| {
                Refusal::anonymous(match e.kind() {
                    JwtErrorKind::InvalidSignature => "bad token signature",
                    JwtErrorKind::InvalidAlgorithm | JwtErrorKind::InvalidAlgorithmName => {
                        "token algorithm not allowed"
                    }
                    JwtErrorKind::InvalidIssuer => "token issued by another server",
                    JwtErrorKind::MissingRequiredClaim(_) => "token claim missing",
                    _ => "malformed token",
                })
            })?;
        let claims = Arc::new(data.claims);
        // jsonwebtoken checked `iss` already; this keeps the rule visible here.
        if claims.iss != self.config.server_id {
            return Err(Refusal::anonymous("token issued by another server"));
        }
        let left_ms = claims.exp.saturating_mul(1000).saturating_sub(now_ms);
        if left_ms > 0 {
            let ttl = Duration::from_millis(left_ms).min(self.config.token_ttl);
            self.token_cache.insert(
                cache_key,
                CachedClaims {
                    claims: claims.clone(),
                    ttl,
                },
            );
        }
        Ok(claims)
    }

    fn lock_challenges(&self) -> std::sync::MutexGuard<'_, Challenges> {
        // Every mutation of `Challenges` leaves it consistent before anything can panic.
        self.challenges.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(&self, event: AuthEvent<'_>) {
        tracing::debug!(
            kind = ?event.kind,
            user = event.user,
            reason = event.reason,
            "authentication event"
        );
        if let Some(audit) = &self.audit {
            audit.record(&event);
        }
    }

    #[cfg(test)]
    fn with_manual_clock(mut self, clock: Arc<AtomicU64>) -> Self {
        self.clock = Clock::Manual(clock);
        self
    }

    #[cfg(test)]
    fn with_max_pending_challenges(mut self, max: usize) -> Self {
        self.max_pending_challenges = max;
        self
    }

    #[cfg(test)]
    fn with_max_pending_challenges_per_address(mut self, max: usize) -> Self {
        self.max_pending_challenges_per_address = max;
        self
    }
}

/// The exact message a client signs:
/// `efs-auth-v1 LF server_id LF user LF nonce` (UTF-8, no trailing newline), where `nonce`
/// is the base64url text the challenge returned.
pub fn signed_message(server_id: &str, user: &str, nonce_b64: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        SIGNED_MESSAGE_LABEL.len() + server_id.len() + user.len() + nonce_b64.len() + 3,
    );
    for (i, part) in [SIGNED_MESSAGE_LABEL, server_id, user, nonce_b64]
        .iter()
        .enumerate()
    {
        if i > 0 {
            m.push(b'\n');
        }
        m.extend_from_slice(part.as_bytes());
    }
    m
}

/// `"efs-"` + hex of the first 16 bytes of SHA-256 of the raw 32-byte token-verification key:
/// stable as long as the signing key is.
pub fn server_id_for(key: &VerifyingKey) -> String {
    efs_core::datadir::server_id_for_public(key)
}

/// Whether `name` is a valid user name: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_user_name(name: &str) -> bool {
    (1..=MAX_USER_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_user_name(name: &str) -> Result<(), AuthError> {
    if is_valid_user_name(name) {
        Ok(())
    } else {
        Err(AuthError::BadRequest(
            "user must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
        ))
    }
}

/// A login's `fs`, when given, must be a possible filesystem name (the data dir's rule).
fn check_fs_name(fs: &Option<String>) -> Result<(), AuthError> {
    match fs {
        Some(name) if efs_core::datadir::check_name("filesystem", name).is_err() => {
            Err(AuthError::BadRequest(
                "fs must be 1 to 64 characters of A-Z a-z 0-9 . _ -, not starting with '.'",
            ))
        }
        _ => Ok(()),
    }
}

/// Reads a user's public key: an OpenSSH `ssh-ed25519 AAAA… [comment]` line, a PEM
/// SubjectPublicKeyInfo block (`openssl pkey -pubout`), or the base64 of its 32 bytes, the
/// form `efsctl list-users --json` prints: that listing, kept apart from the data dir, is
/// what lets users be recreated with their keys after the disk is lost.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyParseError> {
    let text = text.trim();
    let key = if text.starts_with("-----BEGIN") {
        if !text.starts_with("-----BEGIN PUBLIC KEY-----") {
            return Err(KeyParseError::MalformedPem);
        }
        VerifyingKey::from_public_key_pem(text).map_err(|_| KeyParseError::MalformedPem)?
    } else if let Some(raw) = raw_key_base64(text) {
        VerifyingKey::from_bytes(&raw).map_err(|_| KeyParseError::InvalidKey)?
    } else {
        parse_openssh_line(text)?
    };
    if key.is_weak() {
        return Err(KeyParseError::InvalidKey);
    }
    Ok(key)
}

/// The 32 bytes of `text` when it is exactly their base64 (44 characters, padded, as
/// `list-users --json` writes them), else `None` (then it is parsed as an OpenSSH line).
fn raw_key_base64(text: &str) -> Option<[u8; 32]> {
    if text.len() != 44 {
        return None;
    }
    STANDARD.decode(text).ok()?.try_into().ok()
}

const SSH_ED25519: &str = "ssh-ed25519";

fn parse_openssh_line(line: &str) -> Result<VerifyingKey, KeyParseError> {
    let mut fields = line.split_ascii_whitespace();
    let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
        return Err(KeyParseError::Unrecognized);
    };
    if kind != SSH_ED25519 {
        return Err(if kind.starts_with("ssh-") || kind.starts_with("ecdsa-") {
            KeyParseError::NotEd25519(kind.chars().take(40).collect())
        } else {
            KeyParseError::Unrecognized
        });
    }
    let blob = STANDARD
        .decode(blob)
        .or_else(|_| STANDARD_NO_PAD.decode(blob))
        .map_err(|_| KeyParseError::MalformedOpenSsh("the key is not valid base64"))?;
    let mut rest = blob.as_slice();
    let inner_kind = take_ssh_string(&mut rest)?;
    if inner_kind != SSH_ED25519.as_bytes() {
        return Err(KeyParseError::MalformedOpenSsh(
            "the key blob names another algorithm than the line",
        ));
    }
    let raw = take_ssh_string(&mut rest)?;
    if !rest.is_empty() {
        return Err(KeyParseError::MalformedOpenSsh(
            "trailing bytes after the key",
        ));
    }
    let raw: &[u8; 32] = raw
        .try_into()
        .map_err(|_| KeyParseError::MalformedOpenSsh("the key is not 32 bytes"))?;
    VerifyingKey::from_bytes(raw).map_err(|_| KeyParseError::InvalidKey)
}

/// One SSH wire `string`: a u32 big-endian length, then that many bytes.
fn take_ssh_string<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], KeyParseError> {
    const TRUNCATED: KeyParseError = KeyParseError::MalformedOpenSsh("truncated key blob");
    let (len, tail) = rest.split_first_chunk::<4>().ok_or(TRUNCATED)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| TRUNCATED)?;
    if tail.len() < len {
        return Err(TRUNCATED);
    }
    let (s, tail) = tail.split_at(len);
    *rest = tail;
    Ok(s)
}

/// The OpenSSH wire blob of an Ed25519 key: `string "ssh-ed25519"`, `string key`.
fn openssh_blob(key: &VerifyingKey) -> Vec<u8> {
    let mut blob = Vec::with_capacity(4 + SSH_ED25519.len() + 4 + 32);
    for part in [SSH_ED25519.as_bytes(), key.as_bytes()] {
        let len = u32::try_from(part.len()).expect("11 or 32 bytes fit in a u32");
        blob.extend_from_slice(&len.to_be_bytes());
        blob.extend_from_slice(part);
    }
    blob
}

/// The key as an OpenSSH `ssh-ed25519 AAAA…` line (no comment).
pub fn openssh_public_key(key: &VerifyingKey) -> String {
    format!("{SSH_ED25519} {}", STANDARD.encode(openssh_blob(key)))
}

/// OpenSSH's fingerprint of the key: `SHA256:` + base64 (no padding) of SHA-256 of the
/// wire blob, as `ssh-keygen -lf` prints it (and as the audit log names keys).
pub fn fingerprint_sha256(key: &VerifyingKey) -> String {
    efs_core::system::public_key_fingerprint(key.as_bytes())
}

/// Decodes base64url without padding into exactly `N` bytes (canonical encodings only).
fn decode_fixed<const N: usize>(text: &str) -> Option<[u8; N]> {
    // 4 characters per 3 bytes, rounded up: refuse long input before decoding it.
    if text.len() != (N * 4).div_ceil(3) {
        return None;
    }
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

fn fill_random(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf)
        .expect("the system random generator failed; no nonce or key can be made safely");
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A refused token, naming its user and filesystem when the token itself was genuine.
/// A refused bearer token: the error to answer, and the user and filesystem the token
/// names when this server signed it (else `None`).
#[derive(Debug)]
pub struct TokenRefused {
    /// What to answer (401).
    pub error: AuthError,
    /// The token's user, when its signature checked out.
    pub user: Option<String>,
    /// The token's filesystem, when its signature checked out.
    pub fs: Option<String>,
}

struct Refusal {
    reason: &'static str,
    user: Option<String>,
    fs: Option<String>,
}

impl Refusal {
    fn anonymous(reason: &'static str) -> Self {
        Self {
            reason,
            user: None,
            fs: None,
        }
    }

    fn of(reason: &'static str, claims: &Claims) -> Self {
        Self {
            reason,
            user: Some(claims.sub.clone()),
            fs: Some(claims.fs.clone()),
        }
    }
}

/// A refused login, and whether it counts against the rate limits.
struct LoginFailure {
    error: AuthError,
    counts: bool,
    /// Counted against the user too, not only the address.
    per_user: bool,
}

impl LoginFailure {
    fn counted(error: AuthError) -> Self {
        Self {
            error,
            counts: true,
            per_user: true,
        }
    }

    fn address_only(error: AuthError) -> Self {
        Self {
            error,
            counts: true,
            per_user: false,
        }
    }

    fn unauthorized(reason: &'static str) -> Self {
        Self::counted(AuthError::Unauthorized(reason))
    }
}

/// Outstanding challenges.
#[derive(Default)]
struct Challenges {
    /// Keyed by the nonce's bytes: a lookup hashes the presented nonce (SipHash with a random
    /// key) and says nothing, by its timing, about other nonces.
    pending: HashMap<[u8; NONCE_LEN], PendingChallenge>,
    /// Nonces in issue order, so that the expired ones sit at the front. Used-up nonces stay
    /// here until they reach the front; their removal from `pending` is then a no-op.
    order: VecDeque<([u8; NONCE_LEN], u64)>,
    /// The outstanding nonces of each address key ([`address_key`]), in issue order: exactly
    /// the nonces of `pending`, grouped.
    by_address: HashMap<IpAddr, VecDeque<[u8; NONCE_LEN]>>,
    /// The same for each IPv6 /48 ([`site_key`]): a site holds 65,536 /64s, and with only
    /// the per-address limit one site could push every other client's challenge out.
    by_site: HashMap<IpAddr, VecDeque<[u8; NONCE_LEN]>>,
}

/// How many times the per-address limit of outstanding challenges one IPv6 /48 holds.
const CHALLENGES_SITE_FACTOR: usize = 4;

/// The /48 of an IPv6 address key; `None` for IPv4.
fn site_key(address: IpAddr) -> Option<IpAddr> {
    match address {
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => Some(IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into())),
    }
}

struct PendingChallenge {
    user: String,
    /// The [`address_key`] of the client it was issued to.
    address: IpAddr,
    expires_ms: u64,
}

/// How many challenges may be outstanding.
#[derive(Clone, Copy)]
struct ChallengeLimits {
    total: usize,
    per_address: usize,
}

impl Challenges {
    fn insert(
        &mut self,
        nonce: [u8; NONCE_LEN],
        challenge: PendingChallenge,
        now_ms: u64,
        max: ChallengeLimits,
    ) {
        // Used-up and evicted nonces linger in `order`: it is compacted once it holds twice
        // the table (so at most once per `total` inserts), rather than popping its front,
        // which may be another client's live challenge.
        if self.order.len() >= 2 * max.total {
            let pending = &self.pending;
            self.order.retain(|(n, _)| pending.contains_key(n));
        }
        while let Some((_, exp)) = self.order.front() {
            // Pop what expired, and the oldest while the table is full.
            if *exp > now_ms && self.pending.len() < max.total && self.order.len() < 2 * max.total {
                break;
            }
            self.pop_oldest();
        }
        // An address at its own limit loses its own oldest challenge, nobody else's; so does
        // an IPv6 /48 at its limit.
        let per_address = max.per_address.max(1);
        Self::make_room(
            &mut self.pending,
            &mut self.by_address,
            &mut self.by_site,
            challenge.address,
            per_address,
            true,
        );
        if let Some(site) = site_key(challenge.address) {
            Self::make_room(
                &mut self.pending,
                &mut self.by_address,
                &mut self.by_site,
                site,
                per_address.saturating_mul(CHALLENGES_SITE_FACTOR),
                false,
            );
            self.by_site.entry(site).or_default().push_back(nonce);
        }
        self.by_address
            .entry(challenge.address)
            .or_default()
            .push_back(nonce);
        self.order.push_back((nonce, challenge.expires_ms));
        self.pending.insert(nonce, challenge);
    }

    /// Drops the oldest outstanding challenges of `key` (an address key, or a site key if
    /// not `by_address`) until it holds fewer than `limit`.
    fn make_room(
        pending: &mut HashMap<[u8; NONCE_LEN], PendingChallenge>,
        by_address: &mut HashMap<IpAddr, VecDeque<[u8; NONCE_LEN]>>,
        by_site: &mut HashMap<IpAddr, VecDeque<[u8; NONCE_LEN]>>,
        key: IpAddr,
        limit: usize,
        address: bool,
    ) {
        loop {
            let group = if address {
                &mut *by_address
            } else {
                &mut *by_site
            };
            let Some(list) = group.get_mut(&key) else {
                return;
            };
            if list.len() < limit {
                return;
            }
            let Some(oldest) = list.pop_front() else {
                return;
            };
            if list.is_empty() {
                group.remove(&key);
            }
            if let Some(taken) = pending.remove(&oldest) {
                Self::forget(by_address, by_site, &taken, &oldest);
            }
        }
    }

    /// Removes `nonce` from the groups of `taken`'s address and site.
    fn forget(
        by_address: &mut HashMap<IpAddr, VecDeque<[u8; NONCE_LEN]>>,
        by_site: &mut HashMap<IpAddr, VecDeque<[u8; NONCE_LEN]>>,
        taken: &PendingChallenge,
        nonce: &[u8; NONCE_LEN],
    ) {
        use subtle::ConstantTimeEq;
        let groups = std::iter::once((&mut *by_address, taken.address))
            .chain(site_key(taken.address).map(|s| (&mut *by_site, s)));
        for (group, key) in groups {
            if let Some(list) = group.get_mut(&key) {
                list.retain(|n| !bool::from(n.ct_eq(nonce)));
                if list.is_empty() {
                    group.remove(&key);
                }
            }
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((nonce, _)) = self.order.pop_front() {
            self.take(&nonce);
        }
    }

    fn take(&mut self, nonce: &[u8; NONCE_LEN]) -> Option<PendingChallenge> {
        let taken = self.pending.remove(nonce)?;
        Self::forget(&mut self.by_address, &mut self.by_site, &taken, nonce);
        Some(taken)
    }
}

#[derive(Clone)]
struct CachedClaims {
    claims: Arc<Claims>,
    /// Time until the token expires (at most the token lifetime) when it was cached.
    ttl: Duration,
}

struct CacheExpiry;

impl moka::Expiry<[u8; 32], CachedClaims> for CacheExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &CachedClaims,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Where "now" comes from: the system clock, or a hand-moved one in tests.
#[derive(Clone)]
enum Clock {
    System,
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, duration_ms),
            #[cfg(test)]
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const T0_MS: u64 = 1_700_000_000_000;
    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

    /// A token answer's `Debug` (what a `{:?}` in a log line would print) leaves the bearer
    /// token out.
    #[test]
    fn a_token_answer_debug_hides_the_token() {
        let r = TokenResponse {
            token: "eyJhbGciOiJFZERTQSJ9.secret-part.signature".into(),
            expires_in: 900,
            renewals_left: 3,
            fs: "docs".into(),
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("secret-part"), "{shown}");
        assert!(
            shown.contains("redacted") && shown.contains("docs"),
            "{shown}"
        );
    }

    /// An in-memory user directory the tests can change under a running authenticator.
    #[derive(Default)]
    struct Dir(Mutex<HashMap<String, AuthUser>>);

    impl Dir {
        fn put(&self, user: AuthUser) {
            self.0.lock().unwrap().insert(user.name.clone(), user);
        }
        fn edit(&self, name: &str, f: impl FnOnce(&mut AuthUser)) {
            f(self.0.lock().unwrap().get_mut(name).unwrap());
        }
        fn remove(&self, name: &str) {
            self.0.lock().unwrap().remove(name);
        }
    }

    impl UserDirectory for Dir {
        fn lookup(&self, user: &str) -> Option<Arc<AuthUser>> {
            self.0.lock().unwrap().get(user).cloned().map(Arc::new)
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn grant(fs: &str) -> Grant {
        Grant {
            fs: fs.to_owned(),
            read_only: false,
        }
    }

    fn user(name: &str, key: &SigningKey, grants: &[&str]) -> AuthUser {
        AuthUser {
            name: name.to_owned(),
            public_key: key.verifying_key(),
            grants: grants.iter().map(|g| grant(g)).collect(),
            generation: 1,
            cert_sha256: None,
        }
    }

    struct Fixture {
        auth: Authenticator,
        dir: Arc<Dir>,
        clock: Arc<AtomicU64>,
        /// app1's login key (one grant: "records").
        app1: SigningKey,
    }

    impl Fixture {
        fn advance(&self, d: Duration) {
            self.clock.fetch_add(duration_ms(d), Ordering::SeqCst);
        }
    }

    fn fixture_with(config: AuthConfig) -> Fixture {
        let dir = Arc::new(Dir::default());
        let app1 = key(1);
        dir.put(user("app1", &app1, &["records"]));
        let clock = Arc::new(AtomicU64::new(T0_MS));
        let auth =
            Authenticator::new(&key(100), config, dir.clone()).with_manual_clock(clock.clone());
        Fixture {
            auth,
            dir,
            clock,
            app1,
        }
    }

    fn fixture() -> Fixture {
        fixture_with(AuthConfig::default())
    }

    fn sign(key: &SigningKey, server: &str, user: &str, nonce: &str) -> String {
        use ed25519_dalek::Signer as _;
        URL_SAFE_NO_PAD.encode(key.sign(&signed_message(server, user, nonce)).to_bytes())
    }

    fn challenge(auth: &Authenticator, user: &str) -> ChallengeResponse {
        auth.challenge(
            &ChallengeRequest {
                user: user.to_owned(),
            },
            IP,
        )
        .unwrap()
    }

    fn request(user: &str, nonce: &str, signature: String, fs: Option<&str>) -> TokenRequest {
        TokenRequest {
            user: user.to_owned(),
            nonce: nonce.to_owned(),
            signature,
            fs: fs.map(str::to_owned),
        }
    }

    /// A full, correct login.
    fn login(
        auth: &Authenticator,
        user: &str,
        key: &SigningKey,
        fs: Option<&str>,
    ) -> Result<TokenResponse, AuthError> {
        let ch = challenge(auth, user);
        let sig = sign(key, &ch.server, user, &ch.nonce);
        auth.login(&request(user, &ch.nonce, sig, fs), IP)
    }

    fn assert_unauthorized<T: fmt::Debug>(r: Result<T, AuthError>, why: &str) {
        match r {
            Err(AuthError::Unauthorized(_)) => {}
            other => panic!("{why}: expected Unauthorized, got {other:?}"),
        }
    }

    fn claims_of(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    fn b64json(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn login_success_issues_a_token_that_verifies() {
        let f = fixture();
        let ch = challenge(&f.auth, "app1");
        assert_eq!(ch.server, server_id_for(&key(100).verifying_key()));
        assert_eq!(ch.expires_in, 60);
        assert_eq!(URL_SAFE_NO_PAD.decode(&ch.nonce).unwrap().len(), 32);
        let sig = sign(&f.app1, &ch.server, "app1", &ch.nonce);
        let resp = f
            .auth
            .login(&request("app1", &ch.nonce, sig, None), IP)
            .unwrap();
        assert_eq!(resp.fs, "records");
        assert_eq!(resp.expires_in, 3600);
        assert_eq!(resp.renewals_left, 24);

        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(resp.token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "EdDSA");
        let c = claims_of(&resp.token);
        assert_eq!(c["iss"], ch.server.as_str());
        assert_eq!(c["sub"], "app1");
        assert_eq!(c["fs"], "records");
        assert_eq!(c["iat"], T0_MS / 1000);
        assert_eq!(c["exp"], T0_MS / 1000 + 3600);
        assert_eq!(c["ren"], 0);
        assert_eq!(c["gen"], 1);
        assert_eq!(c["jti"].as_str().unwrap().len(), 22);

        let caller = f.auth.verify(&resp.token).unwrap();
        assert_eq!(caller.user(), "app1");
        assert_eq!(caller.fs(), "records");
        assert!(!caller.read_only);
        assert_eq!(caller.claims.ren, 0);
    }

    #[test]
    fn nonces_are_random() {
        let f = fixture();
        assert_ne!(
            challenge(&f.auth, "app1").nonce,
            challenge(&f.auth, "app1").nonce
        );
    }

    #[test]
    fn unknown_user_gets_a_normal_challenge_and_a_plain_401() {
        let f = fixture();
        let ch = challenge(&f.auth, "nobody");
        assert_eq!(ch.server, f.auth.server_id());
        assert_eq!(ch.expires_in, 60);
        let sig = sign(&f.app1, &ch.server, "nobody", &ch.nonce);
        let err = f
            .auth
            .login(&request("nobody", &ch.nonce, sig, None), IP)
            .unwrap_err();
        assert_eq!((err.status(), err.code()), (401, "unauthorized"));
        assert_eq!(err.public_message(), "authentication failed");
        assert_eq!(err.to_string(), "unauthorized");
    }

    #[test]
    fn malformed_user_name_is_bad_request() {
        let f = fixture();
        for bad in ["", "a b", "a/b", "ü", "x\n", &"a".repeat(65)] {
            let err = f
                .auth
                .challenge(
                    &ChallengeRequest {
                        user: bad.to_owned(),
                    },
                    IP,
                )
                .unwrap_err();
            assert_eq!((err.status(), err.code()), (400, "bad_request"), "{bad:?}");
        }
        assert!(is_valid_user_name(&"a".repeat(64)));
        assert!(is_valid_user_name("svc-1.prod_A"));
    }

    #[test]
    fn replayed_nonce_is_refused() {
        let f = fixture();
        let ch = challenge(&f.auth, "app1");
        let sig = sign(&f.app1, &ch.server, "app1", &ch.nonce);
        let req = request("app1", &ch.nonce, sig, None);
        f.auth.login(&req, IP).unwrap();
        assert_unauthorized(f.auth.login(&req, IP), "second use of a nonce");
    }

    #[test]
    fn nonce_used_by_a_failed_attempt_is_gone() {
        let f = fixture();
        let ch = challenge(&f.auth, "app1");
        let bad = sign(&key(9), &ch.server, "app1", &ch.nonce);
        assert_unauthorized(
            f.auth.login(&request("app1", &ch.nonce, bad, None), IP),
            "bad key",
        );
        let good = sign(&f.app1, &ch.server, "app1", &ch.nonce);
        assert_unauthorized(
            f.auth.login(&request("app1", &ch.nonce, good, None), IP),
            "nonce already used by the failed attempt",
        );
    }

    #[test]
    fn expired_nonce_is_refused() {
        let f = fixture_with(AuthConfig {
            nonce_ttl: Duration::from_secs(2),
            ..AuthConfig::default()
        });
        let ch = challenge(&f.auth, "app1");
        assert_eq!(ch.expires_in, 2);
        let sig = sign(&f.app1, &ch.server, "app1", &ch.nonce);
        f.advance(Duration::from_millis(2_000));
        assert_unauthorized(
            f.auth.login(&request("app1", &ch.nonce, sig, None), IP),
            "nonce at its expiry",
        );
        // Just inside the lifetime it works.
        let ch = challenge(&f.auth, "app1");
        let sig = sign(&f.app1, &ch.server, "app1", &ch.nonce);
        f.advance(Duration::from_millis(1_999));
        f.auth
            .login(&request("app1", &ch.nonce, sig, None), IP)
            .unwrap();
    }

    #[test]
    fn nonce_issued_for_another_user_is_refused() {
        let f = fixture();
        let app2 = key(2);
        f.dir.put(user("app2", &app2, &["records"]));
        let ch = challenge(&f.auth, "app1");
        // app2 signs correctly for itself, but with app1's nonce.
        let sig = sign(&app2, &ch.server, "app2", &ch.nonce);
        assert_unauthorized(
            f.auth.login(&request("app2", &ch.nonce, sig, None), IP),
            "foreign nonce",
        );
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let f = fixture();
        assert_unauthorized(login(&f.auth, "app1", &key(7), None), "wrong key");
    }

    #[test]
    fn signature_over_another_server_id_is_refused() {
        let f = fixture();
        let ch = challenge(&f.auth, "app1");
        let sig = sign(
            &f.app1,
            "efs-0000000000000000000000000000000",
            "app1",
            &ch.nonce,
        );
        assert_unauthorized(
            f.auth.login(&request("app1", &ch.nonce, sig, None), IP),
            "other server id",
        );
    }

    #[test]
    fn malformed_nonce_or_signature_is_bad_request() {
        let f = fixture();
        type Mangle = fn(&str, &str) -> (String, String);
        let cases: [(&str, Mangle); 5] = [
            ("short nonce", |_, s| ("c2hvcnQ".into(), s.into())),
            ("padded nonce", |n, s| (format!("{n}="), s.into())),
            ("standard base64 nonce", |n, s| {
                (n.replace(|_| true, "+"), s.into())
            }),
            ("long signature", |n, s| (n.into(), format!("{s}AA"))),
            ("signature not base64", |n, s| {
                (n.into(), s.replace(|_| true, "*"))
            }),
        ];
        for (what, mangle) in cases {
            let ch = challenge(&f.auth, "app1");
            let sig = sign(&f.app1, &ch.server, "app1", &ch.nonce);
            let (nonce, sig) = mangle(&ch.nonce, &sig);
            let err = f
                .auth
                .login(&request("app1", &nonce, sig, None), IP)
                .unwrap_err();
            assert_eq!((err.status(), err.code()), (400, "bad_request"), "{what}");
        }
    }

    #[test]
    fn alg_none_token_is_refused() {
        let f = fixture();
        let token = login(&f.auth, "app1", &f.app1, None).unwrap().token;
        let claims = claims_of(&token);
        for alg in ["none", "None", "NONE"] {
            let header = serde_json::json!({"alg": alg, "typ": "JWT"});
            let forged = format!("{}.{}.", b64json(&header), b64json(&claims));
            assert_unauthorized(f.auth.verify(&forged), alg);
            let with_sig = format!("{forged}{}", token.rsplit('.').next().unwrap());
            assert_unauthorized(f.auth.verify(&with_sig), alg);
        }
    }

    #[test]
    fn hs256_token_keyed_with_the_public_key_is_refused() {
        let f = fixture();
        let claims = Claims {
            iss: f.auth.server_id().to_owned(),
            sub: "app1".into(),
            fs: "records".into(),
            iat: T0_MS / 1000,
            exp: T0_MS / 1000 + 3600,
            ren: 0,
            r#gen: 1,
            jti: "x".into(),
        };
        let pem = f.auth.public_key_pem();
        let vk = f.auth.verifying_key();
        for secret in [vk.as_bytes().as_slice(), pem.as_bytes()] {
            let forged = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret),
            )
            .unwrap();
            assert_unauthorized(f.auth.verify(&forged), "HS256");
        }
        // The same claims signed properly pass: the refusal was about the algorithm.
        let good = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_der(key(100).to_pkcs8_der().unwrap().as_bytes()),
        )
        .unwrap();
        f.auth.verify(&good).unwrap();
    }

    #[test]
    fn tampered_claims_are_refused() {
        let f = fixture();
        f.dir.edit("app1", |u| u.grants.push(grant("billing")));
        let token = login(&f.auth, "app1", &f.app1, Some("records"))
            .unwrap()
            .token;
        f.auth.verify(&token).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        for (field, value) in [
            ("fs", serde_json::json!("billing")),
            ("exp", serde_json::json!(T0_MS / 1000 + 999_999)),
            ("sub", serde_json::json!("admin")),
        ] {
            let mut claims = claims_of(&token);
            claims[field] = value;
            let forged = format!("{}.{}.{}", parts[0], b64json(&claims), parts[2]);
            assert_unauthorized(f.auth.verify(&forged), field);
        }
        // A flipped signature bit.
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[5] ^= 1;
        let forged = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert_unauthorized(f.auth.verify(&forged), "signature bit");
        assert_unauthorized(f.auth.verify(""), "empty");
        assert_unauthorized(f.auth.verify("not-a-jwt"), "garbage");
        assert_unauthorized(f.auth.verify(&"a".repeat(MAX_TOKEN_LEN + 1)), "huge");
    }

    #[test]
    fn expired_token_is_refused_even_when_cached() {
        let f = fixture_with(AuthConfig {
            token_ttl: Duration::from_secs(5),
            ..AuthConfig::default()
        });
        let resp = login(&f.auth, "app1", &f.app1, None).unwrap();
        assert_eq!(resp.expires_in, 5);
        f.auth.verify(&resp.token).unwrap();
        f.advance(Duration::from_millis(4_999));
        f.auth.verify(&resp.token).unwrap();
        f.advance(Duration::from_millis(1));
        assert_unauthorized(f.auth.verify(&resp.token), "expired");
        assert_unauthorized(f.auth.refresh(&resp.token, IP), "refresh of expired");
    }

    #[test]
    fn token_minted_by_a_fast_clock_is_refused() {
        // Regression: only `now >= exp` was checked, so a token signed while the clock ran
        // ahead stayed valid for that much longer once the clock was put right.
        let f = fixture();
        let now = T0_MS / 1000;
        let ttl = 3600;
        let skew = TOKEN_CLOCK_SKEW_SECS;
        let signing = EncodingKey::from_ed_der(key(100).to_pkcs8_der().unwrap().as_bytes());
        let token = |iat: u64, exp: u64| {
            let claims = Claims {
                iss: f.auth.server_id().to_owned(),
                sub: "app1".into(),
                fs: "records".into(),
                iat,
                exp,
                ren: 0,
                r#gen: 1,
                jti: "x".into(),
            };
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &signing).unwrap()
        };
        // Minted a day ahead: both `iat` and `exp` too far.
        let day = 24 * 3600;
        assert_unauthorized(
            f.auth.verify(&token(now + day, now + day + ttl)),
            "a day ahead",
        );
        // `iat` just past the allowed skew.
        let t = token(now + skew + 1, now + ttl);
        assert_eq!(
            f.auth.verify(&t).unwrap_err().internal_reason(),
            "token issued in the future"
        );
        assert_unauthorized(f.auth.refresh(&t, IP), "refresh of a future token");
        // `exp` just past now + lifetime + skew.
        let t = token(now, now + ttl + skew + 1);
        assert_eq!(
            f.auth.verify(&t).unwrap_err().internal_reason(),
            "token expires too far ahead"
        );
        // At the limits, accepted.
        f.auth.verify(&token(now + skew, now + ttl + skew)).unwrap();
        // Refused again when it comes back: its claims were cached after the signature check,
        // the bounds are checked on every call.
        let t = token(now + skew + 1, now + ttl);
        assert_unauthorized(f.auth.verify(&t), "again");
        // A server with a shorter token lifetime (--token-ttl lowered) refuses a token that
        // would outlive it.
        let short = fixture_with(AuthConfig {
            token_ttl: Duration::from_secs(60),
            ..AuthConfig::default()
        });
        assert_unauthorized(
            short.auth.verify(&token(now, now + ttl)),
            "longer than the ttl",
        );
    }

    #[test]
    fn expired_token_is_refused_on_the_system_clock() {
        let dir = Arc::new(Dir::default());
        let app1 = key(1);
        dir.put(user("app1", &app1, &["records"]));
        let auth = Authenticator::new(
            &key(100),
            AuthConfig {
                token_ttl: Duration::from_secs(1),
                ..AuthConfig::default()
            },
            dir,
        );
        let token = login(&auth, "app1", &app1, None).unwrap().token;
        std::thread::sleep(Duration::from_millis(1_100));
        assert_unauthorized(auth.verify(&token), "expired on the real clock");
    }

    #[test]
    fn token_from_another_server_is_refused() {
        let f = fixture();
        // Same server id, another signing key: the signature check refuses it.
        let dir = Arc::new(Dir::default());
        dir.put(user("app1", &f.app1, &["records"]));
        let impostor = Authenticator::new(
            &key(101),
            AuthConfig {
                server_id: f.auth.server_id().to_owned(),
                ..AuthConfig::default()
            },
            dir.clone(),
        );
        let token = login(&impostor, "app1", &f.app1, None).unwrap().token;
        assert_eq!(claims_of(&token)["iss"], f.auth.server_id());
        assert_unauthorized(f.auth.verify(&token), "other signing key");

        // Same signing key, another server id: the issuer check refuses it.
        let sibling = Authenticator::new(
            &key(100),
            AuthConfig {
                server_id: "efs-some-other-server".into(),
                ..AuthConfig::default()
            },
            dir,
        );
        let token = login(&sibling, "app1", &f.app1, None).unwrap().token;
        assert_unauthorized(f.auth.verify(&token), "other issuer");
    }

    #[test]
    fn twenty_four_refreshes_then_401() {
        let f = fixture();
        let first = login(&f.auth, "app1", &f.app1, None).unwrap();
        let mut token = first.token;
        for i in 1..=24u32 {
            f.advance(Duration::from_secs(1_800));
            let r = f.auth.refresh(&token, IP).unwrap();
            assert_eq!(r.renewals_left, 24 - i);
            assert_eq!(r.expires_in, 3600);
            assert_eq!(r.fs, "records");
            let c = f.auth.verify(&r.token).unwrap().claims;
            assert_eq!(c.ren, i);
            let now_s = f.clock.load(Ordering::SeqCst) / 1000;
            assert_eq!(
                (c.iat, c.exp),
                (now_s, now_s + 3600),
                "a full lifetime again"
            );
            token = r.token;
        }
        let err = f.auth.refresh(&token, IP).unwrap_err();
        assert_eq!((err.status(), err.code()), (401, "unauthorized"));
        assert_eq!(err.internal_reason(), "renewals exhausted");
        // The last token itself stays valid until it expires.
        f.auth.verify(&token).unwrap();
    }

    #[test]
    fn revoked_user_tokens_are_refused() {
        let f = fixture();
        let token = login(&f.auth, "app1", &f.app1, None).unwrap().token;
        f.auth.verify(&token).unwrap(); // now cached
        f.dir.edit("app1", |u| u.generation += 1);
        assert_unauthorized(f.auth.verify(&token), "revoked (cached)");
        f.auth.invalidate_cache();
        assert_unauthorized(f.auth.verify(&token), "revoked (uncached)");
        assert_unauthorized(f.auth.refresh(&token, IP), "refresh of revoked");
        // A new login gets a token of the new generation.
        let token = login(&f.auth, "app1", &f.app1, None).unwrap().token;
        assert_eq!(f.auth.verify(&token).unwrap().claims.r#gen, 2);
    }

    #[test]
    fn deleted_user_tokens_are_refused() {
        let f = fixture();
        let token = login(&f.auth, "app1", &f.app1, None).unwrap().token;
        f.auth.verify(&token).unwrap();
        f.dir.remove("app1");
        assert_unauthorized(f.auth.verify(&token), "deleted");
        assert_unauthorized(f.auth.refresh(&token, IP), "refresh of deleted");
        assert_unauthorized(login(&f.auth, "app1", &f.app1, None), "login of deleted");
    }

    #[test]
    fn filesystem_no_longer_granted_is_refused_and_read_only_follows_the_grant() {
        let f = fixture();
        f.dir.edit("app1", |u| u.grants.push(grant("billing")));
        let token = login(&f.auth, "app1", &f.app1, Some("billing"))
            .unwrap()
            .token;
        assert!(!f.auth.verify(&token).unwrap().read_only);
        f.dir.edit("app1", |u| u.grants[1].read_only = true);
        let caller = f.auth.verify(&token).unwrap();
        assert_eq!(caller.fs(), "billing");
        assert!(caller.read_only, "the grant in force now applies");
        f.dir.edit("app1", |u| u.grants.truncate(1));
        assert_unauthorized(f.auth.verify(&token), "grant removed");
        assert_unauthorized(
            login(&f.auth, "app1", &f.app1, Some("billing")),
            "login to ungranted fs",
        );
    }

    #[test]
    fn several_grants_and_no_fs_is_fs_required() {
        let f = fixture();
        f.dir.edit("app1", |u| u.grants.push(grant("billing")));
        let err = login(&f.auth, "app1", &f.app1, None).unwrap_err();
        assert!(matches!(err, AuthError::FsRequired), "{err:?}");
        assert_eq!((err.status(), err.code()), (400, "fs_required"));
        let r = login(&f.auth, "app1", &f.app1, Some("billing")).unwrap();
        assert_eq!(r.fs, "billing");
        assert_eq!(f.auth.verify(&r.token).unwrap().fs(), "billing");
    }

    #[test]
    fn rate_limit_engages_per_user_and_spares_other_users() {
        let f = fixture();
        let app2 = key(2);
        f.dir.put(user("app2", &app2, &["records"]));
        let wrong = key(66);
        for i in 0..10 {
            assert_unauthorized(
                login(&f.auth, "app1", &wrong, None),
                &format!("failure {i}"),
            );
        }
        // A further wrong key is answered 429, with a retry-after…
        let err = login(&f.auth, "app1", &wrong, None).unwrap_err();
        assert_eq!((err.status(), err.code()), (429, "rate_limited"));
        assert_eq!(err.retry_after_secs(), Some(60));
        // …but the right key still logs in: a key cannot be guessed, and anyone can spend
        // app1's failures.
        login(&f.auth, "app1", &f.app1, None).unwrap();
        // Another user from the same address logs in (11 address failures < 20).
        login(&f.auth, "app2", &app2, None).unwrap();
        // After the window, a wrong key is a plain 401 again.
        f.advance(Duration::from_secs(60));
        assert_unauthorized(login(&f.auth, "app1", &wrong, None), "after the window");
    }

    #[test]
    fn bad_signatures_in_a_users_name_do_not_lock_the_user_out() {
        // Regression: anyone can get a nonce for app1 and sign it with any key; those failures
        // count against app1, and once app1 was over its limit even the right key got 429,
        // so anyone could keep app1 out for good. Now a valid signature gets through.
        let f = fixture();
        let attacker = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        let wrong = key(66);
        let attempt = |k: &SigningKey, ip: IpAddr| {
            let ch = challenge(&f.auth, "app1");
            let sig = sign(k, &ch.server, "app1", &ch.nonce);
            f.auth.login(&request("app1", &ch.nonce, sig, None), ip)
        };
        for i in 0..10 {
            assert_unauthorized(attempt(&wrong, attacker), &format!("failure {i}"));
        }
        assert_eq!(
            attempt(&wrong, attacker).unwrap_err().code(),
            "rate_limited"
        );
        // app1's budget is spent; the right key logs in, from its own address and from the
        // attacker's (11 failures there, under the address limit of 20).
        attempt(&f.app1, IP).unwrap();
        attempt(&f.app1, attacker).unwrap();
        // The per-address limit is as before: at 20 failures even the right key gets 429.
        for _ in 11..20 {
            assert_eq!(
                attempt(&wrong, attacker).unwrap_err().code(),
                "rate_limited"
            );
        }
        let err = attempt(&f.app1, attacker).unwrap_err();
        assert_eq!((err.status(), err.code()), (429, "rate_limited"));
        attempt(&f.app1, IP).unwrap();
    }

    #[test]
    fn expired_nonces_of_another_user_do_not_count_against_the_user() {
        // Regression: expiry was judged before the nonce's user, so an expired nonce issued
        // for any name counted against the name claimed with it.
        let f = fixture_with(AuthConfig {
            nonce_ttl: Duration::from_secs(1),
            ..AuthConfig::default()
        });
        let nonces: Vec<String> = (0..10).map(|_| challenge(&f.auth, "other").nonce).collect();
        f.advance(Duration::from_secs(2));
        let attacker = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        for nonce in &nonces {
            let sig = sign(&key(66), f.auth.server_id(), "app1", nonce);
            assert_unauthorized(
                f.auth.login(&request("app1", nonce, sig, None), attacker),
                "foreign expired nonce",
            );
        }
        // app1 is not over its limit: a wrong key is a plain 401, not 429.
        assert_unauthorized(login(&f.auth, "app1", &key(66), None), "first own failure");
    }

    #[test]
    fn garbage_in_a_users_name_does_not_count_against_the_user() {
        // Posts with unknown nonces in app1's name count against the sender's address only
        // (bad signatures over real nonces do count against app1: see
        // `bad_signatures_in_a_users_name_do_not_lock_the_user_out`).
        let f = fixture();
        let attacker = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        let unknown_nonce = URL_SAFE_NO_PAD.encode([7u8; NONCE_LEN]);
        for _ in 0..30 {
            let sig = URL_SAFE_NO_PAD.encode([0u8; 64]);
            let _ = f
                .auth
                .login(&request("app1", &unknown_nonce, sig, None), attacker);
        }
        // The attacker's address is limited…
        let ch = challenge(&f.auth, "app1");
        let sig = sign(&f.app1, &ch.server, "app1", &ch.nonce);
        let err = f
            .auth
            .login(&request("app1", &ch.nonce, sig, None), attacker)
            .unwrap_err();
        assert_eq!(err.code(), "rate_limited");
        // …but app1 itself, from its own address, still logs in.
        login(&f.auth, "app1", &f.app1, None).unwrap();
    }

    #[test]
    fn rate_limit_engages_per_address() {
        let f = fixture();
        let wrong = key(66);
        for i in 0..20 {
            let _ = login(&f.auth, &format!("guess{i}"), &wrong, None);
        }
        let err = login(&f.auth, "app1", &f.app1, None).unwrap_err();
        assert_eq!(err.code(), "rate_limited");
        // The same user from another address is fine.
        let ch = challenge(&f.auth, "app1");
        let sig = sign(&f.app1, &ch.server, "app1", &ch.nonce);
        let other_ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        f.auth
            .login(&request("app1", &ch.nonce, sig, None), other_ip)
            .unwrap();
    }

    #[test]
    fn successful_logins_do_not_count() {
        let f = fixture_with(AuthConfig::default());
        let auth = Authenticator::new(&key(100), AuthConfig::default(), f.dir.clone())
            .with_manual_clock(f.clock.clone())
            .with_rate_limits(&RateLimitConfig {
                max_failures_per_user: 2,
                max_failures_per_ip: 2,
                ..RateLimitConfig::default()
            });
        for _ in 0..10 {
            login(&auth, "app1", &f.app1, None).unwrap();
        }
        assert_unauthorized(login(&auth, "app1", &key(5), None), "1st failure");
        assert_unauthorized(login(&auth, "app1", &key(5), None), "2nd failure");
        assert_eq!(
            login(&auth, "app1", &f.app1, None).unwrap_err().code(),
            "rate_limited"
        );
    }

    #[test]
    fn verified_tokens_are_cached() {
        let f = fixture();
        let token = login(&f.auth, "app1", &f.app1, None).unwrap().token;
        let before = f.auth.signature_checks();
        for _ in 0..100 {
            f.auth.verify(&token).unwrap();
        }
        assert_eq!(f.auth.signature_checks() - before, 1);
        f.auth.invalidate_cache();
        f.auth.verify(&token).unwrap();
        assert_eq!(f.auth.signature_checks() - before, 2);
    }

    #[test]
    fn pending_challenges_are_bounded() {
        let f = fixture();
        let auth = Authenticator::new(&key(100), AuthConfig::default(), f.dir.clone())
            .with_manual_clock(f.clock.clone())
            .with_max_pending_challenges(8);
        let first = challenge(&auth, "app1");
        for _ in 0..100 {
            challenge(&auth, "app1");
            let c = auth.lock_challenges();
            assert!(c.pending.len() <= 8 && c.order.len() <= 16);
        }
        // The oldest challenge was evicted; the newest still works.
        let sig = sign(&f.app1, &first.server, "app1", &first.nonce);
        assert_unauthorized(
            auth.login(&request("app1", &first.nonce, sig, None), IP),
            "evicted",
        );
        login(&auth, "app1", &f.app1, None).unwrap();
        // Expired ones are dropped on the next challenge.
        f.advance(Duration::from_secs(61));
        challenge(&auth, "app1");
        assert_eq!(auth.lock_challenges().pending.len(), 1);
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(AuthEventKind, Option<String>, &'static str)>>);

    impl AuthAudit for Recorder {
        fn record(&self, e: &AuthEvent<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((e.kind, e.user.map(str::to_owned), e.reason));
        }
    }

    #[test]
    fn audit_hook_receives_precise_reasons() {
        let f = fixture();
        let rec = Arc::new(Recorder::default());
        let auth = Authenticator::new(&key(100), AuthConfig::default(), f.dir.clone())
            .with_manual_clock(f.clock.clone())
            .with_audit(rec.clone());
        let _ = login(&auth, "app1", &key(3), None);
        let token = login(&auth, "app1", &f.app1, None).unwrap().token;
        f.dir.edit("app1", |u| u.generation = 9);
        let err = auth.verify(&token).unwrap_err();
        assert_eq!(err.public_message(), "authentication failed");
        let events = rec.0.lock().unwrap().clone();
        let app1 = Some("app1".to_owned());
        assert_eq!(
            events,
            vec![
                (AuthEventKind::LoginFailed, app1.clone(), "bad signature"),
                (AuthEventKind::LoginSucceeded, app1.clone(), "ok"),
                (
                    AuthEventKind::TokenRejected,
                    app1,
                    "token revoked (user generation changed)"
                ),
            ]
        );
    }

    /// A user bound to a client certificate: refused without it or with another one (the
    /// same public answer as a bad signature, so nobody learns of the binding without the
    /// key), let in with it; the refusal after a valid signature counts as no failure.
    #[test]
    fn certificate_binding_is_checked_after_the_signature() {
        let f = fixture();
        let rec = Arc::new(Recorder::default());
        let auth = Authenticator::new(&key(100), AuthConfig::default(), f.dir.clone())
            .with_manual_clock(f.clock.clone())
            .with_audit(rec.clone());
        let bound = [7u8; 32];
        f.dir.edit("app1", |u| u.cert_sha256 = Some(bound));
        let login_over = |k: &SigningKey, cert: Option<[u8; 32]>| {
            let ch = challenge(&auth, "app1");
            let sig = sign(k, &ch.server, "app1", &ch.nonce);
            auth.login_with_cert(&request("app1", &ch.nonce, sig, None), IP, cert)
        };
        // More refusals than the address's and the user's limits: none counts.
        for i in 0..25 {
            let cert = (i % 2 == 1).then_some([8u8; 32]);
            let err = login_over(&f.app1, cert).unwrap_err();
            assert_eq!(
                (err.status(), err.public_message()),
                (401, "authentication failed".to_owned()),
                "attempt {i}"
            );
        }
        let wrong_key = login_over(&key(3), None).unwrap_err();
        assert_eq!(
            (wrong_key.status(), wrong_key.public_message()),
            (401, "authentication failed".to_owned())
        );
        login_over(&f.app1, Some(bound)).expect("the bound certificate logs in");
        let events = rec.0.lock().unwrap().clone();
        assert_eq!(events.len(), 27);
        assert_eq!(
            events[0],
            (
                AuthEventKind::LoginFailed,
                Some("app1".to_owned()),
                "client certificate does not match the one bound to the user"
            )
        );
        assert_eq!(events[25].2, "bad signature");
        assert_eq!(events[26].0, AuthEventKind::LoginSucceeded);
    }

    /// A login naming a malformed filesystem (or user) is refused before anything else, its
    /// entry carries no name (an attacker chooses its length), and it counts against the
    /// address.
    #[test]
    fn malformed_names_in_a_login_are_refused_and_counted() {
        let f = fixture();
        let rec = Arc::new(Recorder::default());
        let auth = Authenticator::new(&key(100), AuthConfig::default(), f.dir.clone())
            .with_manual_clock(f.clock.clone())
            .with_audit(rec.clone());
        let long = "a".repeat(65);
        for (i, fs) in ["", ".hidden", "a b", "x/y", long.as_str()]
            .iter()
            .enumerate()
        {
            let ch = challenge(&auth, "app1");
            let sig = sign(&f.app1, &ch.server, "app1", &ch.nonce);
            let err = auth
                .login(&request("app1", &ch.nonce, sig, Some(fs)), IP)
                .unwrap_err();
            assert_eq!((err.status(), err.code()), (400, "bad_request"), "{fs:?}");
            assert_eq!(
                rec.0.lock().unwrap()[i],
                (
                    AuthEventKind::LoginFailed,
                    None,
                    "malformed filesystem name"
                )
            );
        }
        // 15 more malformed user names reach the address's limit of 20.
        for _ in 0..15 {
            let err = auth
                .login(&request("a b", "x", "x".into(), None), IP)
                .unwrap_err();
            assert_eq!(err.status(), 400);
        }
        let err = login(&auth, "app1", &f.app1, None).unwrap_err();
        assert_eq!(err.code(), "rate_limited");
        // Another address is not affected, and a well-formed `fs` logs in.
        let ch = challenge(&auth, "app1");
        let sig = sign(&f.app1, &ch.server, "app1", &ch.nonce);
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));
        auth.login(&request("app1", &ch.nonce, sig, Some("records")), other)
            .unwrap();
    }

    /// Regression: each IPv6 /64 had its own limit, so one /48 (65,536 /64s) could fill the
    /// whole table and push every other client's challenge out. A /48 holds 4 times the
    /// per-address limit; its own oldest go first.
    #[test]
    fn challenges_are_bounded_per_ipv6_site() {
        let f = fixture();
        let auth = Authenticator::new(&key(100), AuthConfig::default(), f.dir.clone())
            .with_manual_clock(f.clock.clone())
            .with_max_pending_challenges(1_000)
            .with_max_pending_challenges_per_address(4);
        let ask = |ip: IpAddr| {
            auth.challenge(
                &ChallengeRequest {
                    user: "app1".into(),
                },
                ip,
            )
            .unwrap()
        };
        // The victim in another /48 of the same /32.
        let victim = ask(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 8, 0, 0, 0, 0, 1)));
        // One /48, a new /64 for each challenge.
        let attacker = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, i, 0, 0, 0, 1));
        for i in 0..500 {
            ask(attacker(i));
            let c = auth.lock_challenges();
            assert!(c.pending.len() <= 17, "{}", c.pending.len());
            let by_address: usize = c.by_address.values().map(VecDeque::len).sum();
            let by_site: usize = c.by_site.values().map(VecDeque::len).sum();
            assert_eq!((by_address, by_site), (c.pending.len(), c.pending.len()));
        }
        let sig = sign(&f.app1, &victim.server, "app1", &victim.nonce);
        auth.login(&request("app1", &victim.nonce, sig, None), IP)
            .expect("another site's challenge survives the flood");
        assert_eq!(auth.lock_challenges().pending.len(), 16);
        // Expired, they leave every group.
        f.advance(Duration::from_secs(61));
        challenge(&auth, "app1");
        let c = auth.lock_challenges();
        assert_eq!(
            (c.pending.len(), c.by_address.len(), c.by_site.len()),
            (1, 1, 0)
        );
    }

    /// One address asking for many challenges drops only its own oldest ones: another
    /// client's challenge, issued before the flood, still logs in.
    #[test]
    fn challenges_are_bounded_per_address() {
        let f = fixture();
        let auth = Authenticator::new(&key(100), AuthConfig::default(), f.dir.clone())
            .with_manual_clock(f.clock.clone())
            .with_max_pending_challenges(1_000)
            .with_max_pending_challenges_per_address(4);
        let victim = auth
            .challenge(
                &ChallengeRequest {
                    user: "app1".into(),
                },
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            )
            .unwrap();
        // The attacker's addresses: one IPv6 /64 (any host in it), then one IPv4.
        let attacker_v6 = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, i, 0, 0, 1));
        let first = auth
            .challenge(
                &ChallengeRequest {
                    user: "app1".into(),
                },
                attacker_v6(0),
            )
            .unwrap();
        for i in 1..500 {
            auth.challenge(
                &ChallengeRequest {
                    user: "app1".into(),
                },
                attacker_v6(i),
            )
            .unwrap();
            let c = auth.lock_challenges();
            assert!(c.pending.len() <= 5, "{}", c.pending.len());
            let grouped: usize = c.by_address.values().map(VecDeque::len).sum();
            assert_eq!(grouped, c.pending.len());
        }
        for _ in 0..500 {
            challenge(&auth, "app1");
        }
        assert_eq!(auth.lock_challenges().pending.len(), 9);
        // The attacker's first challenge went; the victim's stayed.
        let sig = sign(&f.app1, &first.server, "app1", &first.nonce);
        assert_unauthorized(
            auth.login(&request("app1", &first.nonce, sig, None), IP),
            "dropped by its own address's flood",
        );
        let sig = sign(&f.app1, &victim.server, "app1", &victim.nonce);
        auth.login(&request("app1", &victim.nonce, sig, None), IP)
            .expect("another address's challenge survives the flood");
        // Using and expiring challenges empties the per-address index too.
        f.advance(Duration::from_secs(61));
        challenge(&auth, "app1");
        let c = auth.lock_challenges();
        assert_eq!((c.pending.len(), c.by_address.len()), (1, 1));
    }

    #[test]
    fn signed_message_layout() {
        assert_eq!(
            signed_message("efs-0123", "app1", "bm9uY2U"),
            b"efs-auth-v1\nefs-0123\napp1\nbm9uY2U".to_vec()
        );
    }

    /// The worked example of docs/protocol.md: RFC 8032 test 1's key signs for user `app1`
    /// the nonce 00 01 … 1f on the server whose token key is RFC 8032 test 2's public key.
    /// OpenSSL 3 (`pkeyutl -sign -rawin`) gives the same signature.
    #[test]
    fn signed_message_test_vector() {
        let hex32 = |h: &str| -> [u8; 32] { hex::decode(h).unwrap().try_into().unwrap() };
        let server_key = VerifyingKey::from_bytes(&hex32(
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        ))
        .unwrap();
        let server = server_id_for(&server_key);
        assert_eq!(server, "efs-39f713d0a644253f04529421b9f51b9b");
        let nonce = URL_SAFE_NO_PAD.encode((0u8..32).collect::<Vec<u8>>());
        assert_eq!(nonce, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
        let message = signed_message(&server, "app1", &nonce);
        assert_eq!(
            hex::encode(&message),
            "6566732d617574682d76310a\
             6566732d33396637313364306136343432353366303435323934323162396635316239620a\
             617070310a\
             41414543417751464267634943516f4c4441304f4478415245684d554652595847426b6147787764486838"
        );
        let user_key = SigningKey::from_bytes(&hex32(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        ));
        let signature = {
            use ed25519_dalek::Signer as _;
            user_key.sign(&message)
        };
        assert_eq!(
            URL_SAFE_NO_PAD.encode(signature.to_bytes()),
            "3hmvE800gqmmBgProPhEm0dp5oh3hGeVY9Hl2Svhj084I19RTEjNvenuRnidibHfDo9N2OUKI9VJRr8ZXbFLCw"
        );
        user_key
            .verifying_key()
            .verify_strict(&message, &signature)
            .unwrap();
    }

    #[test]
    fn server_id_is_stable_and_key_bound() {
        let a = server_id_for(&key(100).verifying_key());
        assert_eq!(a, server_id_for(&key(100).verifying_key()));
        assert_ne!(a, server_id_for(&key(101).verifying_key()));
        assert!(a.starts_with("efs-") && a.len() == 4 + 32);
        assert!(a[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn public_key_pem_round_trips() {
        let f = fixture();
        let pem = f.auth.public_key_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(parse_public_key(&pem).unwrap(), key(100).verifying_key());
    }

    #[test]
    fn parse_public_key_openssh_and_pem() {
        let vk = key(42).verifying_key();
        let line = format!("{} me@host", openssh_public_key(&vk));
        assert!(line.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"));
        assert_eq!(parse_public_key(&line).unwrap(), vk);
        assert_eq!(
            parse_public_key(&format!("  {}\n", openssh_public_key(&vk))).unwrap(),
            vk
        );
        let pem = vk.to_public_key_pem(LineEnding::LF).unwrap();
        assert_eq!(parse_public_key(&pem).unwrap(), vk);
        assert_eq!(parse_public_key(&pem.replace('\n', "\r\n")).unwrap(), vk);
        // As `efsctl list-users --json` prints it (with the newline a saved file ends with).
        let b64 = STANDARD.encode(vk.as_bytes());
        assert_eq!(parse_public_key(&b64).unwrap(), vk);
        assert_eq!(parse_public_key(&format!("{b64}\n")).unwrap(), vk);
    }

    /// Only exactly 32 bytes of canonical base64 are a bare key; a usable point too.
    #[test]
    fn parse_public_key_rejects_other_base64() {
        let vk = key(42).verifying_key();
        let mut weak = [0u8; 32];
        weak[0] = 1; // the identity point
        for text in [
            STANDARD.encode(&vk.as_bytes()[..31]),
            STANDARD.encode([vk.as_bytes().as_slice(), &[0]].concat()),
            STANDARD_NO_PAD.encode(vk.as_bytes()),
            URL_SAFE_NO_PAD.encode([0xff; 32]),
        ] {
            assert!(
                matches!(parse_public_key(&text), Err(KeyParseError::Unrecognized)),
                "{text}"
            );
        }
        assert!(matches!(
            parse_public_key(&STANDARD.encode(weak)),
            Err(KeyParseError::InvalidKey)
        ));
    }

    #[test]
    fn parse_public_key_rejects_garbage() {
        let vk = key(42).verifying_key();
        let blob = openssh_blob(&vk);
        let line_of = |b: &[u8]| format!("ssh-ed25519 {}", STANDARD.encode(b));
        let mut wrong_inner = blob.clone();
        wrong_inner[4 + 4] = b'X'; // "ssh-eX25519"
        let mut small_order = blob.clone();
        small_order[19..].copy_from_slice(&[0u8; 32]); // not a usable point
        small_order[19] = 1; // the identity point: weak
        let cases: Vec<String> = vec![
            String::new(),
            "hello".into(),
            "ssh-ed25519".into(),
            "ssh-ed25519 !!!notbase64".into(),
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ me".into(),
            line_of(&blob[..blob.len() - 1]),
            line_of(&[blob.as_slice(), &[0]].concat()),
            line_of(&wrong_inner),
            line_of(&small_order),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----".into(),
        ];
        for text in &cases {
            assert!(parse_public_key(text).is_err(), "accepted {text:?}");
        }
        assert!(matches!(
            parse_public_key(&cases[4]),
            Err(KeyParseError::NotEd25519(_))
        ));
        assert!(matches!(
            parse_public_key(&cases[8]),
            Err(KeyParseError::InvalidKey)
        ));
    }

    /// RFC 8032 test 1's public key; line and fingerprint as OpenSSH writes them.
    const RFC8032_TEST1_LINE: &str = "ssh-ed25519 \
        AAAAC3NzaC1lZDI1NTE5AAAAINdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea rfc8032-test1";
    const RFC8032_TEST1_FINGERPRINT: &str = "SHA256:bbXpuKG6zhzdmnxq256TlqzFBzRl2f6OOg722cYNbU8";

    #[test]
    fn fingerprint_test_vector() {
        let vk = parse_public_key(RFC8032_TEST1_LINE).unwrap();
        assert_eq!(
            hex::encode(vk.as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(fingerprint_sha256(&vk), RFC8032_TEST1_FINGERPRINT);
        assert_ne!(
            fingerprint_sha256(&key(43).verifying_key()),
            RFC8032_TEST1_FINGERPRINT
        );
    }

    /// Runs a command; `None` if the program is not installed.
    fn run(program: &str, args: &[&str], dir: &std::path::Path) -> Option<std::process::Output> {
        match std::process::Command::new(program)
            .args(args)
            .current_dir(dir)
            .output()
        {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "{program} {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Some(out)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("cannot run {program}: {e}"),
        }
    }

    /// The documented curl + openssl client: a key made and a message signed by OpenSSL 3
    /// log in.
    #[test]
    fn openssl_signature_logs_in() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        if run(
            "openssl",
            &["genpkey", "-algorithm", "ed25519", "-out", "key.pem"],
            dir,
        )
        .is_none()
        {
            eprintln!("openssl not installed: skipping");
            return;
        }
        let pubout = run("openssl", &["pkey", "-in", "key.pem", "-pubout"], dir).unwrap();
        let pem = String::from_utf8(pubout.stdout).unwrap();
        let vk = parse_public_key(&pem).unwrap();

        let f = fixture();
        f.dir.put(AuthUser {
            name: "ossl".into(),
            public_key: vk,
            grants: vec![grant("records")],
            generation: 1,
            cert_sha256: None,
        });
        let ch = challenge(&f.auth, "ossl");
        std::fs::write(
            dir.join("msg.bin"),
            signed_message(&ch.server, "ossl", &ch.nonce),
        )
        .unwrap();
        run(
            "openssl",
            &[
                "pkeyutl", "-sign", "-inkey", "key.pem", "-rawin", "-in", "msg.bin", "-out",
                "sig.bin",
            ],
            dir,
        )
        .unwrap();
        let sig = std::fs::read(dir.join("sig.bin")).unwrap();
        assert_eq!(sig.len(), 64);
        let sig_arr: [u8; 64] = sig.as_slice().try_into().unwrap();
        vk.verify_strict(
            &signed_message(&ch.server, "ossl", &ch.nonce),
            &Signature::from_bytes(&sig_arr),
        )
        .unwrap();
        let resp = f
            .auth
            .login(
                &request("ossl", &ch.nonce, URL_SAFE_NO_PAD.encode(&sig), None),
                IP,
            )
            .unwrap();
        assert_eq!(f.auth.verify(&resp.token).unwrap().user(), "ossl");
    }

    /// ssh-keygen agrees with `parse_public_key`, `openssh_public_key` and
    /// `fingerprint_sha256` on a key it made.
    #[test]
    fn ssh_keygen_keys_and_fingerprints_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let args = [
            "-q", "-t", "ed25519", "-N", "", "-C", "test@efs", "-f", "id",
        ];
        if run("ssh-keygen", &args, dir).is_none() {
            eprintln!("ssh-keygen not installed: skipping");
            return;
        }
        let line = std::fs::read_to_string(dir.join("id.pub")).unwrap();
        let vk = parse_public_key(&line).unwrap();
        assert_eq!(format!("{} test@efs\n", openssh_public_key(&vk)), line);
        let lf = run("ssh-keygen", &["-l", "-E", "sha256", "-f", "id.pub"], dir).unwrap();
        let lf = String::from_utf8(lf.stdout).unwrap();
        assert_eq!(
            lf.split_whitespace().nth(1),
            Some(fingerprint_sha256(&vk).as_str()),
            "{lf}"
        );
    }
}
