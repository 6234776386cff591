//! The login protocol end to end: challenge → Ed25519 signature → JWT, refresh, revocation,
//! forged tokens, rate limiting, keys from efsctl, from this test and from openssl.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

/// Asserts the one generic 401 of every refused login or token.
async fn assert_401(r: reqwest::Response, what: &str) {
    assert_eq!(
        header(&r, "www-authenticate").as_deref(),
        Some("Bearer"),
        "{what}"
    );
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 401, "{what}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "unauthorized", "{what}: {text}");
}

/// GET a file with `token` and expect 401.
async fn assert_token_refused(srv: &TestServer, token: &str, what: &str) {
    let r = srv.req("GET", "/probe.txt", token).send().await.unwrap();
    assert_401(r, &format!("{what} (GET)")).await;
    let r = srv
        .req("PUT", "/probe2.txt", token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_401(r, &format!("{what} (PUT)")).await;
    let r = refresh(srv, token).await;
    assert_401(r, &format!("{what} (refresh)")).await;
}

async fn refresh(srv: &TestServer, token: &str) -> reqwest::Response {
    srv.client
        .post(srv.url("/_efs/auth/refresh"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// A server with fs "main", user "alice" (read-write) and a probe file.
/// A request body sent chunk by chunk through the returned sender; dropping the sender ends
/// it.
fn body_channel() -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    reqwest::Body,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    (tx, reqwest::Body::wrap_stream(body))
}

async fn alice_server(extra: &[&str]) -> (TestServer, SigningKey, String) {
    let srv = TestServer::start(extra);
    srv.create_fs("main");
    let key = srv.create_user("alice", &["main"], false);
    let token = srv.login("alice", &key, None).await;
    srv.put_ok("/probe.txt", &token, "probe").await;
    (srv, key, token)
}

#[tokio::test]
async fn login_succeeds_and_the_token_is_scoped() {
    let (srv, key, _) = alice_server(&[]).await;
    let c = srv.challenge("alice").await;
    let obj = c.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["expires_in", "nonce", "server"]);
    let nonce = c["nonce"].as_str().unwrap();
    assert_eq!(nonce.len(), 43, "32 bytes, base64url without padding");
    assert!(
        nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(c["server"], srv.server_id.as_str());
    assert!(srv.server_id.starts_with("efs-"));
    assert_eq!(c["expires_in"], 60);
    // Two challenges never share a nonce.
    assert_ne!(srv.challenge("alice").await["nonce"], c["nonce"]);

    let r = srv
        .token_request(&json!({
            "user": "alice",
            "nonce": nonce,
            "signature": sign_login(&key, &srv.server_id, "alice", nonce),
        }))
        .await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(t["renewals_left"], 24);
    assert_eq!(t["fs"], "main");
    let token = t["token"].as_str().unwrap();
    assert_eq!(jwt_header(token)["alg"], "EdDSA");
    let claims = jwt_claims(token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["fs"], "main");
    assert_eq!(claims["iss"], srv.server_id.as_str());
    assert_eq!(claims["ren"], 0);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    assert_eq!(srv.get_ok("/probe.txt", token).await, b"probe");
    // The token works with the lower-case scheme too.
    let r = srv
        .client
        .get(srv.url("/probe.txt"))
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn replayed_nonce_is_refused() {
    let (srv, key, _) = alice_server(&[]).await;
    let body = srv.signed_body("alice", &key, None).await;
    assert_eq!(srv.token_request(&body).await.status(), 200);
    assert_401(
        srv.token_request(&body).await,
        "the same nonce and signature again",
    )
    .await;
    // A nonce that was never issued.
    let mut forged = body.clone();
    forged["nonce"] = json!("A".repeat(43));
    forged["signature"] = json!(sign_login(&key, &srv.server_id, "alice", &"A".repeat(43)));
    assert_401(srv.token_request(&forged).await, "a nonce never issued").await;
}

#[tokio::test]
async fn expired_nonce_is_refused() {
    let (srv, key, _) = alice_server(&["--nonce-ttl", "3"]).await;
    let c = srv.challenge("alice").await;
    assert_eq!(c["expires_in"], 3);
    let body = srv.signed_body("alice", &key, None).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_401(srv.token_request(&body).await, "expired nonce").await;
    // A fresh one, used at once, works.
    srv.login("alice", &key, None).await;
}

#[tokio::test]
async fn nonce_issued_for_another_user_is_refused() {
    let (srv, alice_key, _) = alice_server(&[]).await;
    let bob_key = srv.create_user("bob", &["main"], false);
    let c = srv.challenge("alice").await;
    let nonce = c["nonce"].as_str().unwrap();
    // Bob signs a correct message for himself, over Alice's nonce.
    let r = srv
        .token_request(&json!({
            "user": "bob",
            "nonce": nonce,
            "signature": sign_login(&bob_key, &srv.server_id, "bob", nonce),
        }))
        .await;
    assert_401(r, "bob with alice's nonce").await;
    // The nonce was used up by that attempt: Alice cannot use it either.
    let r = srv
        .token_request(&json!({
            "user": "alice",
            "nonce": nonce,
            "signature": sign_login(&alice_key, &srv.server_id, "alice", nonce),
        }))
        .await;
    assert_401(r, "a nonce used up by a failed attempt").await;
    srv.login("bob", &bob_key, None).await;
}

#[tokio::test]
async fn signature_by_another_key_or_over_another_message_is_refused() {
    let (srv, key, _) = alice_server(&[]).await;
    let other = new_signing_key();
    let other_server = format!("efs-{}", "0".repeat(32));
    let cases: Vec<(&str, SignFn)> = vec![
        (
            "another key",
            Box::new(|n: &str| sign_login(&other, &srv.server_id, "alice", n)),
        ),
        (
            "another server id",
            Box::new(|n: &str| sign_login(&key, &other_server, "alice", n)),
        ),
        (
            "another user name in the message",
            Box::new(|n: &str| sign_login(&key, &srv.server_id, "bob", n)),
        ),
        (
            "another label",
            Box::new(|n: &str| {
                use base64::Engine as _;
                use ed25519_dalek::Signer;
                let m = format!("efs-auth-v2\n{}\nalice\n{n}", srv.server_id);
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(key.sign(m.as_bytes()).to_bytes())
            }),
        ),
        (
            "a trailing newline",
            Box::new(|n: &str| {
                use base64::Engine as _;
                use ed25519_dalek::Signer;
                let m = format!("efs-auth-v1\n{}\nalice\n{n}\n", srv.server_id);
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(key.sign(m.as_bytes()).to_bytes())
            }),
        ),
    ];
    for (what, sign) in &cases {
        let c = srv.challenge("alice").await;
        let nonce = c["nonce"].as_str().unwrap();
        let r = srv
            .token_request(&json!({"user": "alice", "nonce": nonce, "signature": sign(nonce)}))
            .await;
        assert_401(r, what).await;
    }
    // Malformed fields are 400, not 401.
    let c = srv.challenge("alice").await;
    let r = srv
        .token_request(&json!({"user": "alice", "nonce": c["nonce"], "signature": "not base64!"}))
        .await;
    assert_error(r, 400, "bad_request").await;
    let r = srv.token_request(&json!({"user": "alice"})).await;
    assert_error(r, 400, "bad_request").await;
    srv.login("alice", &key, None).await;
}

#[tokio::test]
async fn unknown_user_gets_the_same_challenge_and_a_plain_401() {
    let (srv, key, _) = alice_server(&[]).await;
    let known = srv.challenge("alice").await;
    let unknown = srv.challenge("ghost").await;
    let shape = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        (
            k,
            v["nonce"].as_str().unwrap().len(),
            v["server"].clone(),
            v["expires_in"].clone(),
        )
    };
    assert_eq!(shape(&known), shape(&unknown));

    // The ghost's signed answer and Alice's wrong one get the very same answer.
    let nonce = unknown["nonce"].as_str().unwrap();
    let r = srv
        .token_request(&json!({
            "user": "ghost",
            "nonce": nonce,
            "signature": sign_login(&key, &srv.server_id, "ghost", nonce),
        }))
        .await;
    assert_eq!(r.status(), 401);
    let ghost_body = r.text().await.unwrap();
    let c = srv.challenge("alice").await;
    let nonce = c["nonce"].as_str().unwrap();
    let r = srv
        .token_request(&json!({
            "user": "alice",
            "nonce": nonce,
            "signature": sign_login(&new_signing_key(), &srv.server_id, "alice", nonce),
        }))
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().await.unwrap(), ghost_body);

    // A malformed name is a 400 for the challenge.
    for bad in ["", "a b", "x/y", &"n".repeat(65)] {
        let r = srv
            .client
            .post(srv.url("/_efs/auth/challenge"))
            .json(&json!({ "user": bad }))
            .send()
            .await
            .unwrap();
        assert_error(r, 400, "bad_request").await;
    }
}

/// Signs a login nonce some wrong way.
type SignFn<'a> = Box<dyn Fn(&str) -> String + 'a>;

fn hs256(secret: &[u8], signing_input: &str) -> String {
    use base64::Engine as _;
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(aws_lc_rs::hmac::sign(&k, signing_input.as_bytes()).as_ref())
}

#[tokio::test]
async fn forged_and_tampered_tokens_are_refused() {
    use base64::Engine as _;
    use ed25519_dalek::Signer;
    let (srv, key, token) = alice_server(&[]).await;
    let _bob = srv.create_user("bob", &["main"], false);
    let claims = jwt_claims(&token);
    let header = jwt_header(&token);
    let sig = token.rsplit('.').next().unwrap().to_owned();
    let pem = srv
        .client
        .get(srv.url("/_efs/auth/public-key"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let raw_pub = {
        use ed25519_dalek::pkcs8::DecodePublicKey;
        ed25519_dalek::VerifyingKey::from_public_key_pem(&pem)
            .unwrap()
            .to_bytes()
    };

    let mut forged: Vec<(String, String)> = Vec::new();
    // alg none, in several spellings, with and without a signature.
    for alg in ["none", "None", "NONE"] {
        let h = b64json(&json!({"alg": alg, "typ": "JWT"}));
        let c = b64json(&claims);
        forged.push((format!("alg {alg}, empty signature"), format!("{h}.{c}.")));
        forged.push((
            format!("alg {alg}, original signature"),
            format!("{h}.{c}.{sig}"),
        ));
    }
    // HS256 keyed with what an attacker knows: the public key (raw and PEM).
    for (what, secret) in [
        ("raw public key", raw_pub.to_vec()),
        ("PEM public key", pem.clone().into_bytes()),
    ] {
        let h = b64json(&json!({"alg": "HS256", "typ": "JWT"}));
        let input = format!("{h}.{}", b64json(&claims));
        let s = hs256(&secret, &input);
        forged.push((
            format!("HS256 keyed with the {what}"),
            format!("{input}.{s}"),
        ));
    }
    // EdDSA, signed by the user's own key instead of the server's.
    {
        let input = format!("{}.{}", b64json(&header), b64json(&claims));
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(key.sign(input.as_bytes()).to_bytes());
        forged.push(("EdDSA by the wrong key".into(), format!("{input}.{s}")));
    }
    // Tampered claims under the original signature.
    let tampers: Vec<(&str, Value)> = vec![
        ("sub", json!("bob")),
        ("fs", json!("other")),
        ("ren", json!(7)),
        ("exp", json!(claims["exp"].as_u64().unwrap() + 86_400)),
        ("gen", json!(claims["gen"].as_u64().unwrap_or(0) + 1)),
        ("iss", json!("efs-00000000000000000000000000000000")),
    ];
    for (field, value) in tampers {
        let mut c = claims.clone();
        if c[field] == value {
            c[field] = json!(12345);
        } else {
            c[field] = value;
        }
        forged.push((
            format!("tampered {field}"),
            format!("{}.{}.{sig}", b64json(&header), b64json(&c)),
        ));
    }
    // Same claims, re-serialised with a space: the bytes differ, the signature does not fit.
    {
        let c = serde_json::to_string_pretty(&claims).unwrap();
        let c = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c);
        forged.push((
            "re-serialised claims".into(),
            format!("{}.{c}.{sig}", b64json(&header)),
        ));
    }
    // A flipped signature bit, a truncated token, a header naming a key id.
    {
        let mut s = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sig)
            .unwrap();
        s[0] ^= 1;
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let (input, _) = token.rsplit_once('.').unwrap();
        forged.push(("flipped signature bit".into(), format!("{input}.{s}")));
        forged.push(("no signature".into(), input.to_owned()));
        let h = b64json(
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": "../../x", "jku": "https://evil/"}),
        );
        forged.push((
            "another header".into(),
            format!("{h}.{}.{sig}", b64json(&claims)),
        ));
    }
    for (what, t) in &forged {
        assert_token_refused(&srv, t, what).await;
    }
    // The genuine token still works, and nothing was written by the forgeries.
    assert_eq!(srv.get_ok("/probe.txt", &token).await, b"probe");
    assert_eq!(srv.get("/probe2.txt", &token).await.0, 404);
}

#[tokio::test]
async fn expired_token_is_refused() {
    let (srv, key, _) = alice_server(&["--token-ttl", "4"]).await;
    let t = srv.login_full("alice", &key, None).await;
    assert_eq!(t["expires_in"], 4);
    let token = t["token"].as_str().unwrap().to_owned();
    // Used (and cached) while valid…
    assert_eq!(srv.get_ok("/probe.txt", &token).await, b"probe");
    tokio::time::sleep(Duration::from_millis(4100)).await;
    // …refused once expired, cached or not.
    assert_token_refused(&srv, &token, "expired token").await;
}

#[tokio::test]
async fn token_from_another_server_is_refused() {
    let (a, key, token_a) = alice_server(&[]).await;
    // Another server with the same fs, user name and key.
    let b = TestServer::start(&[]);
    b.create_fs("main");
    b.create_user_with_key("alice", &["main"], false, &key);
    let token_b = b.login("alice", &key, None).await;
    assert_ne!(a.server_id, b.server_id);
    assert_eq!(jwt_claims(&token_b)["iss"], b.server_id.as_str());
    b.put_ok("/probe.txt", &token_b, "b's probe").await;
    assert_token_refused(&a, &token_b, "a token of server B on server A").await;
    assert_token_refused(&b, &token_a, "a token of server A on server B").await;
    // A challenge of B signed and sent to A.
    let c = b.challenge("alice").await;
    let nonce = c["nonce"].as_str().unwrap();
    let r = a
        .token_request(&json!({
            "user": "alice",
            "nonce": nonce,
            "signature": sign_login(&key, &b.server_id, "alice", nonce),
        }))
        .await;
    assert_401(r, "B's challenge answered to A").await;
}

/// Refreshes `max` times (renewals_left counting down), then the next one is 401.
async fn refresh_chain(srv: &TestServer, key: &SigningKey, max: u64) {
    let t = srv.login_full("alice", key, None).await;
    assert_eq!(t["renewals_left"], max);
    let mut token = t["token"].as_str().unwrap().to_owned();
    for i in 1..=max {
        let r = refresh(srv, &token).await;
        assert_eq!(r.status(), 200, "refresh {i}");
        let t: Value = r.json().await.unwrap();
        assert_eq!(t["renewals_left"], max - i, "after refresh {i}");
        assert_eq!(t["fs"], "main");
        let new = t["token"].as_str().unwrap().to_owned();
        assert_ne!(new, token);
        let c = jwt_claims(&new);
        assert_eq!(c["ren"], i);
        assert_eq!(c["sub"], "alice");
        token = new;
        // The renewed token works.
        assert_eq!(srv.get_ok("/probe.txt", &token).await, b"probe");
    }
    let r = refresh(srv, &token).await;
    assert_401(r, &format!("refresh {}", max + 1)).await;
    let exhausted = refresh(srv, &token).await.text().await.unwrap();
    // The last token still works for files until it expires.
    assert_eq!(srv.get_ok("/probe.txt", &token).await, b"probe");
    // Refresh needs a token.
    let refused = || srv.client.post(srv.url("/_efs/auth/refresh")).send();
    assert_401(refused().await.unwrap(), "refresh without a token").await;
    // One 401 body for every refused token (renewals used up was "authentication failed").
    assert_eq!(refused().await.unwrap().text().await.unwrap(), exhausted);
}

#[tokio::test]
async fn refresh_24_times_then_401() {
    let (srv, key, _) = alice_server(&[]).await;
    refresh_chain(&srv, &key, 24).await;
}

#[tokio::test]
async fn refresh_limit_follows_max_renewals() {
    let (srv, key, _) = alice_server(&["--max-renewals", "3"]).await;
    refresh_chain(&srv, &key, 3).await;
}

#[tokio::test]
async fn revoked_user_loses_its_tokens_at_once() {
    let (srv, key, token) = alice_server(&[]).await;
    let refreshed: Value = refresh(&srv, &token).await.json().await.unwrap();
    let refreshed = refreshed["token"].as_str().unwrap().to_owned();
    let out = srv.efsctl_ok(&["revoke", "alice"]);
    assert!(out.contains("Revoked every token of 'alice'"), "{out}");
    assert_token_refused(&srv, &token, "token issued before revoke").await;
    assert_token_refused(&srv, &refreshed, "refreshed token issued before revoke").await;
    // A new login works and its token does.
    let t = srv.login("alice", &key, None).await;
    assert_eq!(srv.get_ok("/probe.txt", &t).await, b"probe");
}

#[tokio::test]
async fn deleted_user_loses_its_tokens_even_when_the_name_comes_back() {
    let (srv, key, token) = alice_server(&[]).await;
    let out = srv.efsctl_ok(&["delete-user", "alice"]);
    assert!(out.contains("Deleted user 'alice'"), "{out}");
    assert_token_refused(&srv, &token, "token of a deleted user").await;
    let body = srv.signed_body("alice", &key, None).await;
    assert_401(srv.token_request(&body).await, "login of a deleted user").await;
    let users = srv.efsctl_ok(&["list-users"]);
    assert!(!users.contains("alice"), "{users}");

    // Someone else gets the name: the old holder's token must stay dead.
    let new_key = srv.create_user("alice", &["main"], false);
    assert_token_refused(&srv, &token, "token of the previous 'alice'").await;
    let body = srv.signed_body("alice", &key, None).await;
    assert_401(
        srv.token_request(&body).await,
        "the old key for the new 'alice'",
    )
    .await;
    let t = srv.login("alice", &new_key, None).await;
    assert_eq!(srv.get_ok("/probe.txt", &t).await, b"probe");
}

/// The user's row as `efsctl list-users --json` shows it.
fn listed_user(srv: &TestServer, name: &str) -> Value {
    let out = srv.efsctl_ok(&["--json", "list-users"]);
    let users: Value = serde_json::from_str(&out).unwrap();
    users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {out}"))
        .clone()
}

/// `efsctl audit show --json`'s admin entries whose detail starts with `cmd`.
fn admin_entries(srv: &TestServer, cmd: &str) -> Vec<Value> {
    let out = srv.efsctl_ok(&["--json", "audit", "show"]);
    let all: Value = serde_json::from_str(&out).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"] == "admin"
                && e["status"] == 200
                && e["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{cmd} "))
        })
        .cloned()
        .collect()
}

/// A stolen key: `revoke` ends its tokens but it logs in again; `replace-key` locks it out
/// at once (its tokens and refreshes too) and keeps the grants; the new key logs in; the
/// audit log names both keys by fingerprint.
#[tokio::test]
async fn replace_key_locks_a_stolen_key_out_and_keeps_the_grants() {
    let (srv, old_key, token) = alice_server(&[]).await;
    srv.create_fs("archive");
    srv.efsctl_ok(&["grant", "alice", "--fs", "archive", "--read-only"]);
    let token = {
        // The grant ended the first token; the thief logs in again.
        assert_token_refused(&srv, &token, "token from before the grant").await;
        srv.login("alice", &old_key, Some("main")).await
    };
    let refreshed: Value = refresh(&srv, &token).await.json().await.unwrap();
    let refreshed = refreshed["token"].as_str().unwrap().to_owned();
    let before = listed_user(&srv, "alice");
    // The same person's second role, with the same key: the replacement warns of it.
    srv.create_user_with_key("alice-ops", &["archive"], true, &old_key);

    let new_key = new_signing_key();
    let pub_path = srv.dir.path().join("alice-new.pub");
    std::fs::write(
        &pub_path,
        format!("{} alice@new\n", openssh_public_line(&new_key)),
    )
    .unwrap();
    let out = srv.efsctl_ok(&[
        "--json",
        "replace-key",
        "alice",
        "--pubkey",
        pub_path.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let old_fp = efs_server::auth::fingerprint_sha256(&old_key.verifying_key());
    let new_fp = efs_server::auth::fingerprint_sha256(&new_key.verifying_key());
    assert_eq!(v["user"], "alice", "{v}");
    assert_eq!(v["old_key_sha256"], old_fp.as_str(), "{v}");
    assert_eq!(v["new_key_sha256"], new_fp.as_str(), "{v}");
    assert_eq!(v["tokens_revoked"], true, "{v}");
    assert_eq!(v["old_key_still_logs_in_as"], json!(["alice-ops"]), "{v}");

    // At once, without a restart: the old tokens, their refreshes and the old key.
    assert_token_refused(&srv, &token, "token of the replaced key").await;
    assert_token_refused(&srv, &refreshed, "refreshed token of the replaced key").await;
    let body = srv.signed_body("alice", &old_key, Some("main")).await;
    assert_401(
        srv.token_request(&body).await,
        "login with the replaced key",
    )
    .await;
    let t = srv.login("alice", &new_key, Some("main")).await;
    assert_eq!(srv.get_ok("/probe.txt", &t).await, b"probe");
    let after = listed_user(&srv, "alice");
    assert_eq!(after["grants"], before["grants"]);
    assert_ne!(after["public_key"], before["public_key"]);

    // The same key again is refused (most likely the stolen key's own public half).
    let out = srv.efsctl(&[
        "replace-key",
        "alice",
        "--pubkey",
        pub_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the one 'alice' has now"), "{err}");
    srv.login("alice", &new_key, Some("main")).await;

    let replaced = admin_entries(&srv, "replace-key");
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    let detail = replaced[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&old_fp) && detail.contains(&new_fp),
        "{detail}"
    );
    assert_eq!(replaced[0]["client"], "admin-socket");
    let text = srv.efsctl_ok(&["audit", "verify"]);
    assert!(text.starts_with("audit verify: OK"), "{text}");
    // revoke says it is not the way to lock a key out.
    let help = srv.efsctl_ok(&["revoke", "--help"]);
    assert!(
        help.contains("can log in again") && help.contains("use replace-key"),
        "{help}"
    );
}

/// `replace-key` with the server stopped, generating the pair: the server started again
/// refuses the old token and key and takes the new one; a pair generated for a replacement
/// that is refused is removed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_key_without_a_server_generates_a_pair() {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let (mut srv, old_key, token) = alice_server(&[]).await;
    let before = listed_user(&srv, "alice");
    srv.create_user_with_key("alice-ops", &["main"], true, &old_key);
    srv.stop().await;

    let out_path = srv.dir.path().join("alice-2");
    let out = srv.efsctl_ok(&["replace-key", "alice", "--out", out_path.to_str().unwrap()]);
    assert!(
        out.contains("Generated an Ed25519 key pair for 'alice'"),
        "{out}"
    );
    let old_fp = efs_server::auth::fingerprint_sha256(&old_key.verifying_key());
    assert!(
        out.contains(&format!(
            "Replaced the public key of 'alice': {old_fp} -> SHA256:"
        )),
        "{out}"
    );
    let new_key = SigningKey::from_pkcs8_pem(
        &std::fs::read_to_string(format!("{}.pem", out_path.display())).unwrap(),
    )
    .unwrap();
    let new_fp = efs_server::auth::fingerprint_sha256(&new_key.verifying_key());
    assert!(out.contains(&new_fp), "{out}");
    assert!(
        out.contains("WARNING: user(s) alice-ops still have the old public key"),
        "{out}"
    );
    let replaced = admin_entries(&srv, "replace-key");
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_eq!(replaced[0]["client"], "data-dir");
    assert!(
        replaced[0]["detail"].as_str().unwrap().contains(&old_fp),
        "{replaced:?}"
    );

    // Refused (no such user): the pair generated for it goes again.
    let gone = srv.dir.path().join("nobody-key");
    let out = srv.efsctl(&["replace-key", "nobody", "--out", gone.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no user named 'nobody'"), "{err}");
    assert!(err.contains("the user's key was not replaced"), "{err}");
    assert!(!gone.exists());

    let srv = TestServer::start_in(srv.dir.clone(), &[], &[]);
    assert_token_refused(&srv, &token, "token of the key replaced offline").await;
    let body = srv.signed_body("alice", &old_key, None).await;
    assert_401(
        srv.token_request(&body).await,
        "login with the key replaced offline",
    )
    .await;
    let t = srv.login("alice", &new_key, None).await;
    assert_eq!(srv.get_ok("/probe.txt", &t).await, b"probe");
    assert_eq!(listed_user(&srv, "alice")["grants"], before["grants"]);
}

#[tokio::test]
async fn filesystem_no_longer_granted_is_401() {
    let srv = TestServer::start(&[]);
    srv.create_fs("one");
    srv.create_fs("two");
    let key = srv.create_user("carol", &["one", "two"], false);
    let t1 = srv.login("carol", &key, Some("one")).await;
    let t2 = srv.login("carol", &key, Some("two")).await;
    srv.put_ok("/in-one.txt", &t1, "1").await;
    srv.put_ok("/in-two.txt", &t2, "2").await;
    let out = srv.efsctl_ok(&["revoke", "carol", "--fs", "one"]);
    assert!(out.contains("Revoked 'carol' access to 'one'"), "{out}");
    assert_token_refused(&srv, &t1, "token for a revoked filesystem").await;
    let body = srv.signed_body("carol", &key, Some("one")).await;
    assert_401(
        srv.token_request(&body).await,
        "login to a revoked filesystem",
    )
    .await;
    // The remaining grant: now the only one, so "fs" may be left out.
    let t = srv.login_full("carol", &key, None).await;
    assert_eq!(t["fs"], "two");
    let t = t["token"].as_str().unwrap();
    assert_eq!(srv.get_ok("/in-two.txt", t).await, b"2");
    assert_eq!(srv.get("/in-one.txt", t).await.0, 404);
}

#[tokio::test]
async fn two_filesystems_need_fs_and_stay_apart() {
    let srv = TestServer::start(&[]);
    srv.create_fs("alpha");
    srv.create_fs("beta");
    srv.create_fs("gamma");
    let key = srv.create_user("dave", &["alpha", "beta"], false);
    let body = srv.signed_body("dave", &key, None).await;
    let msg = assert_error(srv.token_request(&body).await, 400, "fs_required").await;
    assert!(msg.contains("fs"), "{msg}");

    let ta = srv.login_full("dave", &key, Some("alpha")).await;
    assert_eq!(ta["fs"], "alpha");
    assert_eq!(jwt_claims(ta["token"].as_str().unwrap())["fs"], "alpha");
    let tb = srv.login_full("dave", &key, Some("beta")).await;
    assert_eq!(tb["fs"], "beta");
    let (ta, tb) = (ta["token"].as_str().unwrap(), tb["token"].as_str().unwrap());
    srv.put_ok("/same/name.txt", ta, "in alpha").await;
    assert_eq!(
        srv.get("/same/name.txt", tb).await.0,
        404,
        "filesystems are separate"
    );
    srv.put_ok("/same/name.txt", tb, "in beta").await;
    assert_eq!(srv.get_ok("/same/name.txt", ta).await, b"in alpha");
    assert_eq!(srv.get_ok("/same/name.txt", tb).await, b"in beta");
    // A filesystem that exists but is not granted, and one that does not exist.
    for fs in ["gamma", "nope"] {
        let body = srv.signed_body("dave", &key, Some(fs)).await;
        assert_401(srv.token_request(&body).await, fs).await;
    }
}

#[tokio::test]
async fn read_only_grant_and_its_upgrade() {
    let (srv, _, _) = alice_server(&[]).await;
    let key = srv.create_user("reader", &["main"], true);
    let t = srv.login("reader", &key, None).await;
    assert_eq!(srv.get_ok("/probe.txt", &t).await, b"probe");
    let r = srv.put("/probe.txt", &t, "overwritten").await;
    assert_error(r, 403, "forbidden").await;
    let r = srv.req("DELETE", "/probe.txt", &t).send().await.unwrap();
    assert_error(r, 403, "forbidden").await;
    // An upgrade revokes the old token; a new login may write.
    srv.efsctl_ok(&["grant", "reader", "--fs", "main"]);
    assert_token_refused(&srv, &t, "token issued before a grant change").await;
    let t = srv.login("reader", &key, None).await;
    srv.put_ok("/by-reader.txt", &t, "now writable").await;
    // And a downgrade takes write access away at once.
    srv.efsctl_ok(&["grant", "reader", "--fs", "main", "--read-only"]);
    let t = srv.login("reader", &key, None).await;
    assert_error(srv.put("/by-reader.txt", &t, "x").await, 403, "forbidden").await;
    assert_eq!(srv.get_ok("/by-reader.txt", &t).await, b"now writable");
}

#[tokio::test]
async fn brute_force_is_rate_limited_per_user_and_spares_others() {
    let (srv, key, _) = alice_server(&[]).await;
    let bob = srv.create_user("bob", &["main"], false);
    let wrong = new_signing_key();
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..15 {
        let body = srv.signed_body("alice", &wrong, None).await;
        let r = srv.token_request(&body).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    assert_eq!(statuses[..statuses.len() - 1], [401; 10], "{statuses:?}");
    let r = limited.unwrap_or_else(|| panic!("no 429 after {statuses:?}"));
    let retry: u64 = header(&r, "retry-after")
        .expect("Retry-After on 429")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_error(r, 429, "rate_limited").await;
    // The right key still logs in, from the same client: anyone can spend alice's failures,
    // nobody can guess her key (regression: it got 429 too, so anyone could keep her out).
    let t = srv.login("alice", &key, None).await;
    assert_eq!(srv.get_ok("/probe.txt", &t).await, b"probe");
    // Another user logs in normally.
    let t = srv.login("bob", &bob, None).await;
    assert_eq!(srv.get_ok("/probe.txt", &t).await, b"probe");
    // The per-address limit holds as before: 20 failures from this client (11 so far), then
    // even the right key gets 429.
    for _ in 11..20 {
        let body = srv.signed_body("alice", &wrong, None).await;
        assert_error(srv.token_request(&body).await, 429, "rate_limited").await;
    }
    let body = srv.signed_body("alice", &key, None).await;
    assert_error(srv.token_request(&body).await, 429, "rate_limited").await;
}

/// The limit engages, then lifts by itself when its window ends (a 6 s window here: the 11
/// failures must fall in one window, on a busy machine too).
#[tokio::test]
async fn brute_force_is_refused_then_the_user_recovers() {
    // 12 s: the 11 failures that engage the limit fit in it on a loaded machine too.
    let (srv, key, _) = alice_server(&["--login-fail-window", "12"]).await;
    let wrong = new_signing_key();
    let mut limited = None;
    for _ in 0..15 {
        let body = srv.signed_body("alice", &wrong, None).await;
        let r = srv.token_request(&body).await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the limit engages");
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "Retry-After {retry}");
    tokio::time::sleep(std::time::Duration::from_millis(retry * 1000 + 300)).await;
    // A wrong key is a plain 401 again, and the right key logs in.
    let body = srv.signed_body("alice", &wrong, None).await;
    assert_401(
        srv.token_request(&body).await,
        "a wrong key after the window",
    )
    .await;
    let t = srv.login("alice", &key, None).await;
    assert_eq!(srv.get_ok("/probe.txt", &t).await, b"probe");
}

#[tokio::test]
async fn brute_force_from_one_address_is_rate_limited() {
    let (srv, key, _) = alice_server(&[]).await;
    // 20 failures spread over many user names (each under its own per-user limit).
    let wrong = new_signing_key();
    for i in 0..20 {
        let user = format!("guess{i}");
        let body = srv.signed_body(&user, &wrong, None).await;
        assert_401(srv.token_request(&body).await, &user).await;
    }
    let body = srv.signed_body("guess99", &wrong, None).await;
    let r = srv.token_request(&body).await;
    assert!(header(&r, "retry-after").is_some());
    assert_error(r, 429, "rate_limited").await;
    // The address is blocked for everyone for now; tokens already issued keep working.
    let body = srv.signed_body("alice", &key, None).await;
    assert_error(srv.token_request(&body).await, 429, "rate_limited").await;
}

#[tokio::test]
async fn a_user_created_while_the_server_runs_logs_in_at_once() {
    let srv = TestServer::start(&[]);
    srv.create_fs("live");
    let key = new_signing_key();
    let body = srv.signed_body("erin", &key, None).await;
    assert_401(srv.token_request(&body).await, "before creation").await;
    srv.create_user_with_key("erin", &["live"], false, &key);
    // No restart, no wait.
    let t = srv.login("erin", &key, None).await;
    srv.put_ok("/hello.txt", &t, "hi").await;
    // A filesystem created while running is usable at once too.
    srv.create_fs("later");
    srv.efsctl_ok(&["grant", "erin", "--fs", "later"]);
    let t = srv.login("erin", &key, Some("later")).await;
    assert_eq!(srv.get("/hello.txt", &t).await.0, 404);
    srv.put_ok("/hello.txt", &t, "later").await;
}

#[tokio::test]
async fn openssl_pem_keys_log_in() {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let srv = TestServer::start(&[]);
    srv.create_fs("main");
    let dir = srv.dir.path();
    let key_pem = dir.join("frank.pem");
    let pub_pem = dir.join("frank.pub.pem");
    let st = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key_pem)
        .status()
        .expect("openssl is installed (scripts/test.sh)");
    assert!(st.success());
    let st = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key_pem)
        .arg("-out")
        .arg(&pub_pem)
        .status()
        .unwrap();
    assert!(st.success());
    let pub_text = std::fs::read_to_string(&pub_pem).unwrap();
    assert!(
        pub_text.starts_with("-----BEGIN PUBLIC KEY-----"),
        "{pub_text}"
    );
    let out = srv.efsctl_ok(&[
        "create-user",
        "frank",
        "--fs",
        "main",
        "--pubkey",
        pub_pem.to_str().unwrap(),
    ]);
    assert!(out.contains("Created user 'frank'"), "{out}");
    let key = SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&key_pem).unwrap())
        .expect("openssl's PKCS#8 Ed25519 key");
    let t = srv.login("frank", &key, None).await;
    srv.put_ok("/f.txt", &t, "frank").await;
    assert_eq!(srv.get_ok("/f.txt", &t).await, b"frank");

    // efsctl refuses a key that is not Ed25519.
    let rsa_pub = dir.join("rsa.pub.pem");
    let rsa = dir.join("rsa.pem");
    assert!(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out"
            ])
            .arg(&rsa)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&rsa)
            .arg("-out")
            .arg(&rsa_pub)
            .status()
            .unwrap()
            .success()
    );
    let out = srv.efsctl(&[
        "create-user",
        "ec",
        "--fs",
        "main",
        "--pubkey",
        rsa_pub.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an Ed25519 public key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_efsctl_generated_key_pair_logs_in() {
    let srv = TestServer::start(&[]);
    srv.create_fs("main");
    let key = srv.create_user_generated("gina", "main");
    let t = srv.login("gina", &key, None).await;
    srv.put_ok("/g.txt", &t, "gina").await;
    assert_eq!(srv.get_ok("/g.txt", &t).await, b"gina");
}

/// An upload is authorised again when its body ends, before it lands: a revoke or a
/// read-only grant while the body is still coming refuses it (401: a grant change ends the
/// user's earlier tokens), and nothing is stored. (An upload can last hours; the token was
/// checked only when it began.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_under_way_is_refused_once_its_access_is_withdrawn() {
    let (srv, key, _) = alice_server(&[]).await;
    let srv = std::sync::Arc::new(srv);
    let changes: [(&[&str], u16); 2] = [
        (&["revoke", "alice"], 401),
        (&["grant", "alice", "--fs", "main", "--read-only"], 401),
    ];
    for (change, status) in changes {
        let token = srv.login("alice", &key, None).await;
        let (tx, body) = body_channel();
        let put = srv.req("PUT", "/slow.txt", &token).body(body).send();
        let put = tokio::spawn(put);
        tx.send(Ok(b"the first half, ".to_vec())).await.unwrap();
        // The upload has begun (its token checked) well before the change.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (s, args) = (srv.clone(), change.to_vec());
        tokio::task::spawn_blocking(move || s.efsctl_ok(&args))
            .await
            .unwrap();
        // Sent unless the server refused the upload already (and dropped its body): on a
        // machine slow enough for the change to come first, the answer is a 401 too.
        let _ = tx.send(Ok(b"then the second".to_vec())).await;
        drop(tx);
        let r = put.await.unwrap().unwrap();
        let got = r.status().as_u16();
        assert_eq!(got, status, "{change:?}: {}", r.text().await.unwrap());
    }
    let token = srv.login("alice", &key, None).await;
    let (status, _) = srv.get("/slow.txt", &token).await;
    assert_eq!(status, 404, "nothing stored");
}

/// The same for a move (`POST /_efs/move`), whose JSON body may take up to
/// `--body-timeout`: authorised again once the body has arrived, so that a revoke or a
/// read-only grant meanwhile refuses it and nothing moves (it moved, and with `overwrite`
/// replaced the destination; from a review of authorization).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_under_way_is_refused_once_its_access_is_withdrawn() {
    let (srv, key, _) = alice_server(&[]).await;
    let srv = std::sync::Arc::new(srv);
    let token = srv.login("alice", &key, None).await;
    srv.put_ok("/a.txt", &token, "alpha").await;
    srv.put_ok("/b.txt", &token, "bravo").await;
    let changes: [&[&str]; 2] = [
        &["revoke", "alice"],
        &["grant", "alice", "--fs", "main", "--read-only"],
    ];
    for change in changes {
        let token = srv.login("alice", &key, None).await;
        let (tx, body) = body_channel();
        let mv = srv
            .client
            .post(srv.url("/_efs/move"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send();
        let mv = tokio::spawn(mv);
        tx.send(Ok(br#"{"from":"/a.txt","#.to_vec())).await.unwrap();
        // The move has begun (its token checked) well before the change.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (s, args) = (srv.clone(), change.to_vec());
        tokio::task::spawn_blocking(move || s.efsctl_ok(&args))
            .await
            .unwrap();
        let _ = tx
            .send(Ok(br#""to":"/b.txt","overwrite":true}"#.to_vec()))
            .await;
        drop(tx);
        let r = mv.await.unwrap().unwrap();
        let got = r.status().as_u16();
        assert_eq!(got, 401, "{change:?}: {}", r.text().await.unwrap());
        // Back to read-write for the next case and the check below.
        srv.efsctl_ok(&["grant", "alice", "--fs", "main"]);
    }
    let token = srv.login("alice", &key, None).await;
    assert_eq!(srv.get_ok("/a.txt", &token).await, b"alpha", "not moved");
    assert_eq!(srv.get_ok("/b.txt", &token).await, b"bravo", "not replaced");
}

/// A recursive DELETE is one commit, checked against the caller's access just before it: a
/// revoked caller deletes nothing (401), and an allowed one's tree is gone for every reader
/// the moment it answers, however large (it deleted page by page, and a revoke stopped it
/// part-way, leaving part of the tree).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_delete_is_whole_at_its_answer_and_refused_once_access_is_withdrawn() {
    let (srv, key, token) = alice_server(&[]).await;
    let srv = std::sync::Arc::new(srv);
    const FILES: usize = 2000;
    let mut puts = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (srv, token) = (srv.clone(), token.clone());
        puts.spawn(async move {
            for i in (t..FILES).step_by(16) {
                srv.put_ok(&format!("/tree/d{}/f{i}", i % 4), &token, "x")
                    .await;
                srv.put_ok(&format!("/kept/d{}/f{i}", i % 4), &token, "x")
                    .await;
            }
        });
    }
    while let Some(r) = puts.join_next().await {
        r.unwrap();
    }
    // Another user watches the trees.
    let bob_key = srv.create_user("bob", &["main"], true);
    let bob = srv.login("bob", &bob_key, None).await;
    let count = |srv: std::sync::Arc<TestServer>, bob: String, tree: &'static str| async move {
        let mut n = 0;
        for d in 0..4 {
            let dir = format!("/{tree}/d{d}/");
            if srv.get(&dir, &bob).await.0 == 404 {
                continue;
            }
            n += srv.list_all(&dir, &bob, 1000).await.len();
        }
        n
    };
    assert_eq!(count(srv.clone(), bob.clone(), "tree").await, FILES);
    let r = srv
        .req("DELETE", "/tree?recursive=true", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        count(srv.clone(), bob.clone(), "tree").await,
        0,
        "all gone at once"
    );
    assert_eq!(srv.get("/tree/", &bob).await.0, 404);
    // Revoked: the next delete does nothing.
    let s = srv.clone();
    tokio::task::spawn_blocking(move || s.efsctl_ok(&["revoke", "alice"]))
        .await
        .unwrap();
    let r = srv
        .req("DELETE", "/kept?recursive=true", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "{}", r.text().await.unwrap());
    assert_eq!(count(srv.clone(), bob.clone(), "kept").await, FILES);
    // Alice, logged in again, can delete it.
    let token = srv.login("alice", &key, None).await;
    let r = srv
        .req("DELETE", "/kept?recursive=true", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(count(srv.clone(), bob.clone(), "kept").await, 0);
}

/// A download under way is cut short once its caller's access is withdrawn (here a revoke),
/// whether it is streamed from the blob (checked before each batch of 256 KiB) or sent from
/// the cache (before each slice of 1 MiB), over HTTP/2 (the stream reset) and HTTP/1.1 (the
/// connection closed): the client gets fewer bytes than announced and an error. A download
/// begun after a new login runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_under_way_is_cut_short_once_its_access_is_withdrawn() {
    // Larger than what can be in flight when the revoke lands: over HTTP/2 the stream's
    // flow-control window, over HTTP/1.1 the loopback socket buffers (a receive buffer grows
    // to 32 MiB here), so that a download not cut would be seen to deliver every byte.
    const CACHED: usize = 64 << 20;
    const STREAMED: usize = 96 << 20;
    let (srv, key, token) = alice_server(&["--cache-max-file", &CACHED.to_string()]).await;
    let srv = std::sync::Arc::new(srv);
    let content = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i / 4096) as u8 ^ (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    };
    srv.put_ok("/big/cached.bin", &token, content(CACHED, 1))
        .await;
    srv.put_ok("/big/streamed.bin", &token, content(STREAMED, 2))
        .await;
    // A first download puts the smaller file in the cache (and shows the whole of it comes).
    let r = srv
        .req("GET", "/big/cached.bin", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == content(CACHED, 1));
    let http1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&srv.cert_pem).unwrap()])
        .no_proxy()
        .http1_only()
        .build()
        .unwrap();
    let mut token = token;
    for (client, proto) in [(&srv.client, "HTTP/2"), (&http1, "HTTP/1.1")] {
        for (path, len) in [("/big/cached.bin", CACHED), ("/big/streamed.bin", STREAMED)] {
            let get = |token: &str| client.get(srv.url(path)).bearer_auth(token).send();
            let mut r = get(&token).await.unwrap();
            assert_eq!(r.status(), 200, "{proto} {path}");
            let expected = if proto == "HTTP/2" {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            };
            assert_eq!(r.version(), expected);
            assert_eq!(r.content_length(), Some(len as u64), "{proto} {path}");
            let mut got = 0;
            while got < 1 << 20 {
                got += r.chunk().await.unwrap().expect("more of the body").len();
            }
            let s = srv.clone();
            tokio::task::spawn_blocking(move || s.efsctl_ok(&["revoke", "alice"]))
                .await
                .unwrap();
            let end = loop {
                match r.chunk().await {
                    Ok(Some(c)) => got += c.len(),
                    Ok(None) => break "the end of the body",
                    Err(_) => break "an error",
                }
            };
            assert_eq!(
                end, "an error",
                "{proto} {path}: {got} of {len} bytes came after the revoke"
            );
            assert!(
                got < len,
                "{proto} {path}: every byte came after the revoke"
            );
            // Logged in again, the same download runs to its end.
            token = srv.login("alice", &key, None).await;
            let r = get(&token).await.unwrap();
            assert_eq!(r.status(), 200, "{proto} {path}");
            assert_eq!(r.bytes().await.unwrap().len(), len, "{proto} {path}");
        }
    }
    // Each cut is in the audit log: a second `read` entry, 401, `cut_short`.
    for path in ["/big/cached.bin", "/big/streamed.bin"] {
        let out = srv.efsctl_ok(&["audit", "show", "--json", "--path", path]);
        let entries: Vec<Value> = serde_json::from_str(&out).unwrap();
        let cuts: Vec<&Value> = entries
            .iter()
            .filter(|e| e["detail"] == "cut_short")
            .collect();
        assert_eq!(cuts.len(), 2, "{path}: {out}");
        for e in cuts {
            assert_eq!(
                (&e["action"], &e["status"], &e["user"], &e["path"]),
                (&json!("read"), &json!(401), &json!("alice"), &json!(path)),
                "{e}"
            );
        }
    }
}

/// The login routes take requests from anyone: their bodies are small (8 KiB at most) and
/// must arrive within 10 s (not the 60 s of `--body-timeout`), so that stalled logins do not
/// hold the server's memory and connections for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_bodies_are_small_and_arrive_quickly() {
    let (srv, _, _) = alice_server(&[]).await;
    for route in ["/_efs/auth/challenge", "/_efs/auth/token"] {
        let big = json!({ "user": "a".repeat(9 << 10) }).to_string();
        let r = srv
            .client
            .post(srv.url(route))
            .body(big)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{route}");
        let text = r.text().await.unwrap();
        assert!(text.contains("larger than 8 KiB"), "{route}: {text}");
    }
    let (tx, body) = body_channel();
    tx.send(Ok(b"{\"user\":".to_vec())).await.unwrap();
    let r = srv
        .client
        .post(srv.url("/_efs/auth/token"))
        .body(body)
        .send()
        .await
        .unwrap();
    drop(tx);
    assert_eq!(r.status(), 408);
    let text = r.text().await.unwrap();
    assert!(text.contains("within 10 s"), "{text}");
}

/// At most 64 login bodies are read at once from one address: the 65th login while 64 stall
/// their bodies is answered 429 at once (with `Retry-After`), instead of holding one more
/// handler and its buffer; once the stalled ones end, logins from the address work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_login_bodies_from_one_address_are_capped() {
    let (srv, _, _) = alice_server(&[]).await;
    // A login whose body stops after its first bytes, and the sender that ends it.
    let stall = || {
        let (tx, body) = body_channel();
        tx.try_send(Ok(b"{\"user\":".to_vec())).unwrap();
        let req = srv.client.post(srv.url("/_efs/auth/challenge")).body(body);
        (tx, tokio::spawn(async move { req.send().await }))
    };
    let (mut senders, mut stalled): (Vec<_>, Vec<_>) = (0..64).map(|_| stall()).unzip();
    // The stalled requests reach their handlers one by one: the 65th is refused once all 64
    // hold their places (well within the 10 s a login body may take). While they arrive, a
    // probe holds a place for a moment, so a stalled one may be the one refused: it is sent
    // again.
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let refused = loop {
        let r = srv
            .client
            .post(srv.url("/_efs/auth/challenge"))
            .json(&json!({ "user": "alice" }))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 200);
        for i in 0..stalled.len() {
            if stalled[i].is_finished() {
                let (tx, t) = stall();
                let r = std::mem::replace(&mut stalled[i], t)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(r.status(), 429, "a stalled login ended early");
                senders[i] = tx;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "64 stalled login bodies did not keep a 65th login out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("1"));
    let text = refused.text().await.unwrap();
    assert!(
        text.contains("rate_limited") && text.contains("at most 64"),
        "{text}"
    );
    // The stalled bodies end (complete, valid): their places are given back.
    for tx in senders {
        tx.send(Ok(b"\"alice\"}".to_vec())).await.unwrap();
    }
    for t in stalled {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
    }
    srv.challenge("alice").await;
}

/// Once `efsctl revoke` (or `delete-user`) has answered, no write of the user lands: writes
/// already checked either land before the command's change or are refused after it. Twelve
/// clients upload (10 B to 1.5 MiB) while the user is revoked; every file stored must have
/// been committed before the revoke answered. Regression (concurrency review): uploads whose
/// last check had passed committed 3–17 ms after the command had answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_lands_after_a_revoke_has_answered() {
    for cmd in ["revoke", "delete-user"] {
        let (srv, _key, token) = alice_server(&[]).await;
        let srv = std::sync::Arc::new(srv);
        let reader = srv.create_user("reader", &["main"], true);
        let reader = srv.login("reader", &reader, None).await;
        let sizes = [10usize, 4096, 200 * 1024, 1536 * 1024];
        let mut tasks = Vec::new();
        for t in 0..12 {
            let (srv, token) = (srv.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let body = vec![b'x'; sizes[(t + n) % sizes.len()]];
                    let r = srv.put(&format!("/race/t{t}-{n}"), &token, body).await;
                    if !r.status().is_success() {
                        return;
                    }
                }
            }));
        }
        // The revoke comes once uploads are landing (more than 12 of them, polled: a loaded
        // machine lands them slowly), while the 12 writers keep sending.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (status, _) = srv.get("/race/", &reader).await;
            if status == 200 && srv.list_all("/race/", &reader, 1000).await.len() > 12 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no uploads land");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let done_ms = {
            let srv = srv.clone();
            tokio::task::spawn_blocking(move || {
                srv.efsctl_ok(&[cmd, "alice"]);
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i128
            })
            .await
            .unwrap()
        };
        for t in tasks {
            t.await.unwrap();
        }
        let entries = srv.list_all("/race/", &reader, 1000).await;
        assert!(entries.len() > 12, "uploads landed before the {cmd}");
        let late: Vec<String> = entries
            .iter()
            .filter(|e| {
                let m = time::OffsetDateTime::parse(
                    e["modified"].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap();
                m.unix_timestamp_nanos() / 1_000_000 > done_ms
            })
            .map(|e| format!("{} {}", e["name"], e["modified"]))
            .collect();
        assert!(
            late.is_empty(),
            "committed after `efsctl {cmd}` answered: {late:?}"
        );
    }
}
