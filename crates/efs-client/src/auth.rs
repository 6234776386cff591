//! The login of `docs/protocol.md` and the token's upkeep.
//!
//! The token lives behind one async mutex: whoever finds it missing, stale or refused
//! logs in (or refreshes) while holding the lock, so many concurrent requests cause one
//! login, not one each. A token is refreshed when less than a quarter of its lifetime
//! (at most 10 minutes) is left, and replaced by a new login when no renewals are left or
//! the refresh is refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::client::TokenInfo;
use crate::error::{Error, Result};
use crate::http::{self, Fail, Http};
use crate::signer::Signer;

/// The protocol label and version that starts every signed message. DO NOT CHANGE: the
/// server verifies exactly these bytes.
const PROTOCOL_LABEL: &str = "efs-auth-v1";

/// Refresh when less than this much of a token's life is left, whatever its lifetime.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(600);

/// Callback with every new token.
pub(crate) type OnToken = Arc<dyn Fn(&TokenInfo) + Send + Sync>;

/// Who logs in, and the token they hold.
pub(crate) struct Auth {
    pub(crate) user: Option<String>,
    pub(crate) signer: Option<Arc<dyn Signer>>,
    pub(crate) fs: Option<String>,
    /// The server identity `S` the caller expects; a challenge naming another is not signed.
    pub(crate) server_id: Option<String>,
    pub(crate) on_token: Option<OnToken>,
    held: tokio::sync::Mutex<Option<Held>>,
}

/// A token and when it needs attention.
struct Held {
    info: TokenInfo,
    /// When the server stops accepting it, in ms since the epoch by this machine's clock.
    expires_at_ms: u64,
    /// Its full lifetime, to compute the refresh margin.
    lifetime_ms: u64,
}

impl Held {
    /// `info.expires_at_unix` is by this machine's clock (when the answer came, plus its
    /// `expires_in`: see [`Auth::install`]). The token's own `exp` is by the server's clock,
    /// which may be minutes away from ours: compared with our clock, a fast client would
    /// refresh on every request, and log in on every one once an hour ahead. Only `exp - iat`,
    /// the token's lifetime, is taken from it.
    fn from_info(info: TokenInfo, fallback_lifetime_ms: u64) -> Held {
        let claims = claims(&info.token);
        let expires_at_ms = info.expires_at_unix.saturating_mul(1000);
        let lifetime_ms = claims
            .and_then(|c| c.exp?.checked_sub(c.iat?)?.checked_mul(1000))
            .filter(|l| *l > 0)
            .unwrap_or(fallback_lifetime_ms);
        Held {
            info,
            expires_at_ms,
            lifetime_ms,
        }
    }

    /// Milliseconds of validity left (negative once expired).
    /// An expiry out of `i64`'s range is no real one: expired.
    fn remaining_ms(&self) -> i64 {
        i64::try_from(self.expires_at_ms)
            .unwrap_or(0)
            .saturating_sub(now_ms() as i64)
    }

    fn margin_ms(&self) -> i64 {
        (self.lifetime_ms / 4).min(MAX_REFRESH_MARGIN.as_millis() as u64) as i64
    }
}

/// The claims of a JWT the client looks at (it does not verify them: the server does).
#[derive(serde::Deserialize)]
struct Claims {
    exp: Option<u64>,
    iat: Option<u64>,
}

fn claims(token: &str) -> Option<Claims> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(serde::Serialize)]
struct ChallengeRequest<'a> {
    user: &'a str,
}

#[derive(serde::Deserialize)]
struct Challenge {
    nonce: String,
    server: String,
}

#[derive(serde::Serialize)]
struct TokenRequest<'a> {
    user: &'a str,
    nonce: &'a str,
    signature: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fs: Option<&'a str>,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    token: String,
    expires_in: u64,
    renewals_left: u32,
    fs: String,
}

/// The exact bytes signed at login (see docs/protocol.md, "the signed message").
pub(crate) fn signed_message(server: &str, user: &str, nonce: &str) -> Vec<u8> {
    format!("{PROTOCOL_LABEL}\n{server}\n{user}\n{nonce}").into_bytes()
}

/// A server identity as servers form it (docs/protocol.md): `efs-` and 32 lowercase hex digits.
pub(crate) fn valid_server_id(server: &str) -> bool {
    server.strip_prefix("efs-").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Only a challenge of the protocol's shape is signed (`S` a server identity, `N` 32 bytes in
/// base64url): the user's key, often an SSH key in an agent, signs nothing else a server
/// chooses.
fn check_challenge(server: &str, nonce: &str) -> Result<(), Error> {
    if !valid_server_id(server) {
        return Err(bad_answer(
            "the challenge's server identity is not of the form efs-<32 hex digits>: not signed",
        ));
    }
    let canonical = URL_SAFE_NO_PAD
        .decode(nonce)
        .is_ok_and(|b| b.len() == 32 && URL_SAFE_NO_PAD.encode(&b) == nonce);
    if !canonical {
        return Err(bad_answer(
            "the challenge's nonce is not 32 bytes in base64url: not signed",
        ));
    }
    Ok(())
}

/// 1 to 64 characters of `A-Z a-z 0-9 . _ -`, as the server requires.
fn valid_user_name(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Auth {
    pub(crate) fn new(
        user: Option<String>,
        signer: Option<Arc<dyn Signer>>,
        fs: Option<String>,
        server_id: Option<String>,
        on_token: Option<OnToken>,
        cached: Option<TokenInfo>,
    ) -> Auth {
        // A cached token comes from a file: one whose expiry is out of range (damaged) is
        // taken as expired, never multiplied into an overflow (a panic in a debug build).
        let cached = cached
            .filter(|t| fs.as_deref().is_none_or(|f| f == t.fs))
            .filter(|t| {
                t.expires_at_unix
                    .checked_mul(1000)
                    .is_some_and(|ms| i64::try_from(ms).is_ok())
            })
            .map(|t| {
                let left = t
                    .expires_at_unix
                    .saturating_mul(1000)
                    .saturating_sub(now_ms());
                Held::from_info(t, left.max(1))
            });
        Auth {
            user,
            signer,
            fs,
            server_id,
            on_token,
            held: tokio::sync::Mutex::new(cached),
        }
    }

    /// A token good for a request now: the held one, refreshed, or a new login.
    pub(crate) async fn token(&self, http: &Http) -> Result<TokenInfo, Fail> {
        self.token_for(http, Duration::ZERO).await
    }

    /// [`Auth::token`], and the held one is refreshed (or replaced) unless at least `left`
    /// of its life remains, besides the refresh margin.
    pub(crate) async fn token_for(&self, http: &Http, left: Duration) -> Result<TokenInfo, Fail> {
        let left_ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
        let mut held = self.held.lock().await;
        if let Some(h) = held.as_ref() {
            let remaining = h.remaining_ms();
            // At most half a lifetime is insisted on: more than a fresh token has would
            // refresh it on every call, spending its renewals.
            let want = left_ms.min((h.lifetime_ms / 2) as i64);
            if remaining > h.margin_ms().max(want) {
                return Ok(h.info.clone());
            }
            if remaining > 0 && h.info.renewals_left > 0 {
                match self.refresh(http, &h.info.token).await {
                    Ok(answer) => return Ok(self.install(&mut held, answer)),
                    Err(f) if matches!(f.err, Error::Unauthorized) => {
                        tracing::debug!("token refresh refused; logging in again");
                    }
                    Err(f) if f.err.is_transient() && want <= h.margin_ms() => {
                        // The token still works for a while: use it, refresh next time.
                        tracing::warn!("token refresh failed ({}); using the current token", f.err);
                        return Ok(h.info.clone());
                    }
                    // Asked for more life than the token has (`ensure_token_valid_for`): the
                    // caller is told, rather than sent on with a token that will not last.
                    Err(f) if f.err.is_transient() => return Err(f),
                    Err(f) => return Err(f),
                }
            }
        }
        self.login_locked(http, &mut held).await
    }

    /// A new login, whatever is held.
    pub(crate) async fn login(&self, http: &Http) -> Result<TokenInfo, Fail> {
        let mut held = self.held.lock().await;
        self.login_locked(http, &mut held).await
    }

    /// Forgets `token` (refused by the server) unless it has been replaced already.
    pub(crate) async fn invalidate(&self, token: &str) {
        let mut held = self.held.lock().await;
        if held.as_ref().is_some_and(|h| h.info.token == token) {
            *held = None;
        }
    }

    async fn login_locked(&self, http: &Http, held: &mut Option<Held>) -> Result<TokenInfo, Fail> {
        let user = self.user.as_deref().ok_or_else(|| {
            Error::Config("no user name to log in with (ClientBuilder::user)".into())
        })?;
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| Error::Config("no key to log in with (ClientBuilder::signer)".into()))?;
        if !valid_user_name(user) {
            return Err(Error::Config(format!(
                "invalid user name {user:?}: 1 to 64 characters of A-Z a-z 0-9 . _ -"
            ))
            .into());
        }

        // Each login request has a bounded total time: it runs with the token lock held, so
        // a server that stalls it would stall every request of the client.
        let resp = http
            .send(
                http.client
                    .post(http.url("/_efs/auth/challenge"))
                    .timeout(http.login_timeout)
                    .json(&ChallengeRequest { user }),
                None,
            )
            .await?;
        let challenge: Challenge = http
            .json_within(http.check(resp).await?, http::MAX_LOGIN_ANSWER)
            .await?;
        check_challenge(&challenge.server, &challenge.nonce)?;
        if let Some(expected) = &self.server_id
            && *expected != challenge.server
        {
            // Signing would hand this server a login valid on the server it names.
            return Err(Error::ServerIdentityMismatch {
                expected: expected.clone(),
                got: challenge.server,
            }
            .into());
        }
        let message = signed_message(&challenge.server, user, &challenge.nonce);
        let signature = signer.sign(&message).await?;
        let signature = URL_SAFE_NO_PAD.encode(signature);

        let resp = http
            .send(
                http.client
                    .post(http.url("/_efs/auth/token"))
                    .timeout(http.login_timeout)
                    .json(&TokenRequest {
                        user,
                        nonce: &challenge.nonce,
                        signature: &signature,
                        fs: self.fs.as_deref(),
                    }),
                None,
            )
            .await?;
        let answer: TokenAnswer = http
            .json_within(http.check(resp).await?, http::MAX_LOGIN_ANSWER)
            .await?;
        tracing::debug!(fs = %answer.fs, "logged in");
        Ok(self.install(held, answer))
    }

    async fn refresh(&self, http: &Http, token: &str) -> Result<TokenAnswer, Fail> {
        let resp = http
            .send(
                http.client
                    .post(http.url("/_efs/auth/refresh"))
                    .timeout(http.login_timeout)
                    .bearer_auth(token),
                None,
            )
            .await?;
        let answer: TokenAnswer = http
            .json_within(http.check(resp).await?, http::MAX_LOGIN_ANSWER)
            .await?;
        tracing::debug!(renewals_left = answer.renewals_left, "token refreshed");
        Ok(answer)
    }

    /// Holds a new token, due by this machine's clock at the answer's receipt plus its
    /// `expires_in`, less one second: the server counts `exp` from its time of issue rounded
    /// down to the second, so the token may have up to a second less. (The answer's transit
    /// is not counted; the refresh margin, a quarter of the lifetime, absorbs it.)
    fn install(&self, held: &mut Option<Held>, answer: TokenAnswer) -> TokenInfo {
        let lifetime_ms = answer.expires_in.saturating_mul(1000);
        let by_answer = now_ms().saturating_add(lifetime_ms.saturating_sub(1000));
        let mut h = Held::from_info(
            TokenInfo {
                token: answer.token,
                fs: answer.fs,
                expires_at_unix: by_answer / 1000,
                renewals_left: answer.renewals_left,
            },
            lifetime_ms,
        );
        h.expires_at_ms = by_answer;
        let info = h.info.clone();
        *held = Some(h);
        if let Some(cb) = &self.on_token {
            cb(&info);
        }
        info
    }
}

fn bad_answer(what: &str) -> Error {
    Error::InvalidAnswer(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_message_test_vector() {
        // docs/protocol.md, "Test vector".
        let msg = signed_message(
            "efs-39f713d0a644253f04529421b9f51b9b",
            "app1",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        );
        assert_eq!(msg.len(), 97);
        let secret: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        use ed25519_dalek::Signer as _;
        let sig = ed25519_dalek::SigningKey::from_bytes(&secret).sign(&msg);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(sig.to_bytes()),
            "3hmvE800gqmmBgProPhEm0dp5oh3hGeVY9Hl2Svhj084I19RTEjNvenuRnidibHfDo9N2OUKI9VJRr8ZXbFLCw"
        );
    }

    #[test]
    fn only_challenges_of_the_protocols_shape_are_signed() {
        let nonce = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let server = "efs-39f713d0a644253f04529421b9f51b9b";
        assert!(check_challenge(server, &nonce).is_ok());
        for bad in [
            "",
            "efs-",
            "efs-39F713D0A644253F04529421B9F51B9B",
            "efs-39f713d0a644253f04529421b9f51b9",
            "efs-39f713d0a644253f04529421b9f51b9b0",
            "xfs-39f713d0a644253f04529421b9f51b9b",
            "efs-39f713d0a644253f04529421b9f51b9b\nx",
        ] {
            let e = check_challenge(bad, &nonce).unwrap_err().to_string();
            assert!(e.contains("server identity"), "{bad:?}: {e}");
        }
        let long = URL_SAFE_NO_PAD.encode([7u8; 33]);
        let short = URL_SAFE_NO_PAD.encode([7u8; 31]);
        let padded = base64::engine::general_purpose::URL_SAFE.encode([7u8; 32]);
        // The last character carries 2 unused bits: another value of them is not canonical.
        let mut loose = nonce.clone();
        loose.pop();
        loose.push('x');
        for bad in [
            "".to_owned(),
            long,
            short,
            padded,
            loose,
            format!("{}\n", &nonce[..42]),
        ] {
            let e = check_challenge(server, &bad).unwrap_err().to_string();
            assert!(e.contains("nonce"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn user_names() {
        assert!(valid_user_name("app1"));
        assert!(valid_user_name("a.b_c-D9"));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name("a b"));
        assert!(!valid_user_name("a\nb"));
        assert!(!valid_user_name(&"x".repeat(65)));
    }

    fn jwt(iat: u64, exp: u64) -> String {
        let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"iat":{iat},"exp":{exp},"ren":0}}"#));
        format!("eyJhbGciOiJFZERTQSJ9.{claims}.c2ln")
    }

    #[test]
    fn refresh_margin_is_a_quarter_at_most_ten_minutes() {
        let now = now_ms() / 1000;
        let info = |token: String, exp: u64| TokenInfo {
            token,
            fs: "f".into(),
            expires_at_unix: exp,
            renewals_left: 3,
        };
        let h = Held::from_info(info(jwt(now, now + 3600), now + 3600), 1);
        assert_eq!(h.lifetime_ms, 3_600_000);
        assert_eq!(h.margin_ms(), 600_000);
        let h = Held::from_info(info(jwt(now, now + 4), now + 4), 1);
        assert_eq!(h.margin_ms(), 1000);
        // A token that is not a JWT falls back on what was given.
        let h = Held::from_info(info("opaque".into(), now + 100), 100_000);
        assert_eq!(h.margin_ms(), 25_000);
        assert!(h.remaining_ms() > 90_000);
    }

    /// Regression: the token's `exp` (server clock) was compared with this machine's clock,
    /// so a client 55 minutes fast thought a fresh one-hour token had 5 minutes left and
    /// refreshed it on every request.
    #[test]
    fn a_fast_client_clock_does_not_shorten_a_new_token() {
        let auth = Auth::new(None, None, None, None, None, None);
        let server_now = now_ms() / 1000 - 55 * 60;
        let mut held = None;
        let info = auth.install(
            &mut held,
            TokenAnswer {
                token: jwt(server_now, server_now + 3600),
                expires_in: 3600,
                renewals_left: 3,
                fs: "f".into(),
            },
        );
        let h = held.expect("installed");
        assert_eq!(h.lifetime_ms, 3_600_000);
        assert!(h.remaining_ms() > 3_590_000, "{}", h.remaining_ms());
        assert!(h.remaining_ms() > h.margin_ms());
        assert!(info.expires_at_unix >= now_ms() / 1000 + 3590);
        // And a slow clock does not lengthen it.
        let server_now = now_ms() / 1000 + 55 * 60;
        let mut held = None;
        auth.install(
            &mut held,
            TokenAnswer {
                token: jwt(server_now, server_now + 3600),
                expires_in: 3600,
                renewals_left: 3,
                fs: "f".into(),
            },
        );
        assert!(held.expect("installed").remaining_ms() <= 3_600_000);
    }
}
