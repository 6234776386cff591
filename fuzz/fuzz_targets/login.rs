//! The login messages and token parsing: challenge and token request bodies (JSON), the
//! bearer token check (JWT), the public key parser, against a real `Authenticator`.
//!
//! The first input byte picks the message; the rest is its text. Oracle: nothing panics; no
//! token request succeeds without a nonce the server issued and a signature by the user's key;
//! no string verifies as a token unless it is a token the server issued, and a token altered
//! into one that still verifies carries the same claims; a parsed public key prints and parses
//! back to itself.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};
use efs_server::auth::{
    AuthConfig, AuthUser, Authenticator, ChallengeRequest, Claims, Grant, TokenRequest,
    UserDirectory, is_valid_user_name, openssh_public_key, parse_public_key, signed_message,
};
use efs_server::ratelimit::RateLimitConfig;
use libfuzzer_sys::fuzz_target;

const USER: &str = "alice";
const FS: &str = "records";
const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct OneUser(Arc<AuthUser>);

impl UserDirectory for OneUser {
    fn lookup(&self, user: &str) -> Option<Arc<AuthUser>> {
        (user == self.0.name).then(|| self.0.clone())
    }
}

struct Fixture {
    auth: Authenticator,
    user_key: SigningKey,
    /// A token the server issued by a real login, and its claims.
    token: String,
    claims: Arc<Claims>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let user_key = SigningKey::from_bytes(&[7; 32]);
        let users = OneUser(Arc::new(AuthUser {
            name: USER.into(),
            public_key: user_key.verifying_key(),
            grants: vec![Grant {
                fs: FS.into(),
                read_only: false,
            }],
            generation: 1,
            cert_sha256: None,
        }));
        let config = AuthConfig {
            // Long enough that the fixture's token outlives any fuzz run.
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            ..AuthConfig::default()
        };
        // The limiter is tested elsewhere; here it would only cut the login path short.
        let limits = RateLimitConfig {
            max_failures_per_user: u32::MAX,
            max_failures_per_ip: u32::MAX,
            ..RateLimitConfig::default()
        };
        let auth = Authenticator::new(&SigningKey::from_bytes(&[9; 32]), config, Arc::new(users))
            .with_rate_limits(&limits);
        let token = login(&auth, &user_key, USER, None)
            .expect("the fixture logs in")
            .token;
        let claims = auth.verify(&token).expect("its token verifies").claims;
        Fixture {
            auth,
            user_key,
            token,
            claims,
        }
    })
}

/// A full, honest login: challenge, signature, token.
fn login(
    auth: &Authenticator,
    key: &SigningKey,
    user: &str,
    fs: Option<String>,
) -> Result<efs_server::auth::TokenResponse, efs_server::auth::AuthError> {
    let ch = auth.challenge(&ChallengeRequest { user: user.into() }, IP)?;
    let sig = key.sign(&signed_message(&ch.server, user, &ch.nonce));
    auth.login(
        &TokenRequest {
            user: user.into(),
            nonce: ch.nonce,
            signature: URL_SAFE_NO_PAD.encode(sig.to_bytes()),
            fs,
        },
        IP,
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let text = String::from_utf8_lossy(rest);
    match op % 6 {
        // A challenge request body.
        0 => {
            if let Ok(req) = serde_json::from_slice::<ChallengeRequest>(rest)
                && f.auth.challenge(&req, IP).is_ok()
            {
                assert!(is_valid_user_name(&req.user));
            }
        }
        // A token request body: the fuzzer knows no issued nonce, so it never logs in.
        1 => {
            if let Ok(req) = serde_json::from_slice::<TokenRequest>(rest) {
                assert!(f.auth.login(&req, IP).is_err());
            }
        }
        // A token request body whose nonce is a real one issued for its user: it may log in
        // only when signed by the user's key for the user's filesystem.
        2 => {
            if let Ok(mut req) = serde_json::from_slice::<TokenRequest>(rest)
                && let Ok(ch) = f.auth.challenge(
                    &ChallengeRequest {
                        user: req.user.clone(),
                    },
                    IP,
                )
            {
                let honest = URL_SAFE_NO_PAD.encode(
                    f.user_key
                        .sign(&signed_message(&ch.server, &req.user, &ch.nonce))
                        .to_bytes(),
                );
                let signed_honestly = req.signature == "honest";
                if signed_honestly {
                    req.signature = honest;
                }
                req.nonce = ch.nonce;
                match f.auth.login(&req, IP) {
                    Ok(resp) => {
                        assert!(signed_honestly && req.user == USER);
                        assert_eq!(resp.fs, FS);
                        let caller = f.auth.verify(&resp.token).expect("a fresh token verifies");
                        assert_eq!((caller.user(), caller.fs()), (USER, FS));
                    }
                    Err(_) => assert!(
                        !signed_honestly
                            || req.user != USER
                            || req.fs.as_deref().is_some_and(|fs| fs != FS)
                    ),
                }
            }
        }
        // Any string as a bearer token, for a file request and for a refresh.
        3 => {
            if *text != *f.token {
                assert!(f.auth.verify(&text).is_err());
                assert!(f.auth.refresh(&text, IP).is_err());
            }
        }
        // The issued token with bytes overwritten: (position, byte) pairs.
        4 => {
            let mut token = f.token.clone().into_bytes();
            for pair in rest.chunks_exact(3) {
                let at = usize::from(u16::from_be_bytes([pair[0], pair[1]])) % token.len();
                token[at] = pair[2];
            }
            let token = String::from_utf8_lossy(&token);
            if let Ok(caller) = f.auth.verify(&token) {
                assert_eq!(
                    caller.claims, f.claims,
                    "an altered token verified with other claims"
                );
            }
        }
        // A user's public key, as `efsctl user add` reads it.
        _ => {
            if let Ok(key) = parse_public_key(&text) {
                assert_eq!(parse_public_key(&openssh_public_key(&key)).ok(), Some(key));
            }
        }
    }
});
