//! The SDK against peers that misbehave at the transport level: a TLS server that accepts
//! and then never answers, or sends an answer's headers and stalls its body. Each peer is a
//! small tokio-rustls listener on 127.0.0.1 in the test itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use efs_client::{Client, Error, KeySigner, RetryPolicy, TokenInfo, Trust};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How a [`stalling_server`] treats a request.
#[derive(Clone, Copy)]
enum Stall {
    /// Reads everything, answers nothing.
    Silent,
    /// Answers `200` with a `Content-Length` of 1000 and 10 bytes of it, then nothing.
    MidBody,
    /// Answers `200` with this JSON body, whole.
    Answer(&'static str),
}

/// A TLS server on 127.0.0.1 (HTTP/1.1, a fresh self-signed certificate) that stalls every
/// connection as `how` says; its port and certificate fingerprint. It lives as long as the
/// test's runtime.
async fn stalling_server(how: Stall) -> (u16, [u8; 32]) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let der = ck.cert.der().to_vec();
    let fingerprint: [u8; 32] = Sha256::digest(&der).into();
    let key = rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der.into()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 64 * 1024];
                // Each request on the connection (a client reuses it): up to the end of its
                // headers (what precedes them, a request's small body, is skipped).
                loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = match how {
                        Stall::Silent => break,
                        Stall::MidBody => {
                            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                             content-length: 1000\r\n\r\n0123456789"
                                .to_owned()
                        }
                        Stall::Answer(json) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n\r\n{json}",
                            json.len()
                        ),
                    };
                    if tls.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = tls.flush().await;
                    if let Stall::MidBody = how {
                        break;
                    }
                }
                // Then nothing more, while the connection stays open.
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    (port, fingerprint)
}

fn client(port: u16, fingerprint: [u8; 32], idle: Option<Duration>, cached: bool) -> Client {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let mut b = Client::builder(&format!("https://127.0.0.1:{port}"))
        .user("app1")
        .signer(Arc::new(KeySigner::from_signing_key(key)))
        .trust(Trust::Fingerprint(fingerprint))
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .timeout_idle(idle)
        .timeout_login(Duration::from_secs(1));
    if cached {
        // A token that needs no login: requests go straight to the server.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        b = b.cached_token(TokenInfo {
            token: "not-a-jwt".into(),
            fs: "records".into(),
            expires_at_unix: now + 3600,
            renewals_left: 0,
        });
    }
    b.build().unwrap()
}

/// At most this long for a call that must give up by itself within seconds: a call that
/// waits forever fails the test here rather than hanging it.
const GUARD: Duration = Duration::from_secs(20);

/// Regression: a server that accepts and never answers hung `stat`, `download` and the
/// login forever; a stalled login held the token lock, so every other request of the
/// client (and its clones) hung behind it.
#[tokio::test]
async fn a_server_that_never_answers_is_given_up() {
    let (port, fp) = stalling_server(Stall::Silent).await;

    // The login: bounded by its own total timeout, even with the idle timeout off.
    // A second task sharing the client waits for the token lock the login holds: not for
    // long either.
    let c = client(port, fp, None, false);
    let started = Instant::now();
    let other = c.clone();
    let (login, stat) = tokio::time::timeout(GUARD, async {
        tokio::join!(c.login(), other.stat("/a.txt"))
    })
    .await
    .expect("the login, or a request behind it, waited forever");
    assert!(matches!(&login, Err(Error::Transport(_))), "{login:?}");
    assert!(matches!(&stat, Err(Error::Transport(_))), "{stat:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Requests: the idle timeout.
    let c = client(port, fp, Some(Duration::from_secs(1)), true);
    let started = Instant::now();
    let r = tokio::time::timeout(GUARD, c.stat("/a.txt"))
        .await
        .expect("stat waited forever");
    match &r {
        Err(e @ Error::Transport(m)) => {
            assert!(m.contains("timeout_idle"), "{m}");
            assert!(e.is_transient());
        }
        other => panic!("{other:?}"),
    }
    let mut out = Vec::new();
    let r = tokio::time::timeout(GUARD, c.download("/a.txt", &mut out, None, None))
        .await
        .expect("download waited forever");
    assert!(matches!(&r, Err(Error::Transport(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Regression: a server that sent an answer's headers and then stalled its body hung the
/// download forever.
#[tokio::test]
async fn a_body_that_stalls_is_given_up() {
    let (port, fp) = stalling_server(Stall::MidBody).await;
    let c = client(port, fp, Some(Duration::from_secs(1)), true);
    let r = tokio::time::timeout(GUARD, c.get_bytes("/a.txt"))
        .await
        .expect("get_bytes waited forever");
    match &r {
        Err(Error::Transport(m)) => assert!(m.contains("timeout_idle"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Regression: `load_signer_with` read the key and decrypted it (bcrypt KDF, about half a
/// second by design) on the runtime's thread: every other task of a current-thread runtime
/// stalled meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn loading_an_encrypted_key_does_not_stall_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let pair = ssh_key::private::Ed25519Keypair::from_seed(&[9u8; 32]);
    let encrypted = ssh_key::PrivateKey::from(pair)
        .encrypt(&mut ssh_key::rand_core::OsRng, "correct horse")
        .unwrap();
    let path = dir.path().join("id_ed25519");
    let text = encrypted.to_openssh(ssh_key::LineEnding::LF).unwrap();
    std::fs::write(&path, text.as_bytes()).unwrap();

    // Counts the ticks of another task while the key loads. On this one-thread runtime a
    // load that blocks the thread lets no other task run until it returns (0 ticks, and the
    // flag is cleared before the ticker runs again); a load on the blocking pool lets it run.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let loading = Arc::new(AtomicBool::new(true));
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let (loading, ticks) = (loading.clone(), ticks.clone());
        async move {
            while loading.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if loading.load(Ordering::SeqCst) {
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    tokio::task::yield_now().await;
    let signer = efs_client::signer::load_signer_with(&path, None, Some("correct horse"))
        .await
        .unwrap();
    loading.store(false, Ordering::SeqCst);
    ticker.await.unwrap();
    assert_eq!(
        signer.public_key(),
        ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])
            .verifying_key()
            .to_bytes()
    );
    assert!(
        ticks.load(Ordering::SeqCst) > 0,
        "no other task ran while the key was loaded: the load blocked the runtime"
    );
}

/// Regression: a challenge answer that is not the protocol's (not JSON, missing fields, a
/// server identity or nonce of another shape) was `Error::Server { status: 200, code:
/// "bad_response" }`, which a caller matching [`Error::InvalidAnswer`] missed.
#[tokio::test]
async fn a_malformed_challenge_is_an_invalid_answer() {
    for answer in [
        "not json",
        r#"{"nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}"#,
        r#"{"nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8","server":"garbage"}"#,
        r#"{"nonce":"short","server":"efs-39f713d0a644253f04529421b9f51b9b"}"#,
    ] {
        let (port, fp) = stalling_server(Stall::Answer(answer)).await;
        let c = client(port, fp, Some(Duration::from_secs(5)), false);
        let r = tokio::time::timeout(GUARD, c.login()).await.unwrap();
        assert!(
            matches!(&r, Err(Error::InvalidAnswer(_))),
            "{answer}: {r:?}"
        );
        let r = tokio::time::timeout(GUARD, c.server_identity())
            .await
            .unwrap();
        if answer.contains("server") {
            if answer.contains("garbage") {
                assert!(
                    matches!(&r, Err(Error::InvalidAnswer(_))),
                    "{answer}: {r:?}"
                );
            }
        } else {
            assert!(
                matches!(&r, Err(Error::InvalidAnswer(_))),
                "{answer}: {r:?}"
            );
        }
    }
}

/// What public signatures use is re-exported: a caller needs no `bytes`, `ed25519-dalek` or
/// `efs-proto` of its own at matching versions.
#[test]
fn public_signatures_need_no_other_crate() {
    let key = efs_client::SigningKey::from_bytes(&[1u8; 32]);
    let _signer = KeySigner::from_signing_key(key);
    let _data: efs_client::Bytes = efs_client::Bytes::from_static(b"x");
    let e = Error::Server {
        status: 503,
        code: efs_client::codes::INTEGRITY_HOLD.into(),
        message: String::new(),
    };
    assert!(!e.is_transient());
}
