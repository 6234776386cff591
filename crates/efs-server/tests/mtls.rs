//! Mutual TLS: `--client-ca` requires a client certificate signed by the CA, and a user
//! bound to a certificate (`efsctl bind-cert`) is served only over a connection that
//! presented exactly that certificate. Certificates are made with the openssl CLI.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl (installed by scripts/test.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and two client certificates signed by it (`c1`, `c2`), plus one from another CA (`x`).
fn make_pki(dir: &Path) {
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for ca in ["ca", "otherca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/CN={ca}"),
            ],
        );
    }
    for (c, ca) in [("c1", "ca"), ("c2", "ca"), ("x", "otherca")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{c}.key"),
                "-out",
                &format!("{c}.csr"),
                "-subj",
                &format!("/CN={c}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{c}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{c}.pem"),
                "-days",
                "30",
                "-extfile",
                "client.ext",
            ],
        );
    }
}

fn client_with(server: &TestServer, cert: Option<&str>) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(&server.cert_pem).unwrap();
    let mut b = reqwest::Client::builder().tls_certs_only([root]).no_proxy();
    if let Some(c) = cert {
        let mut pem = std::fs::read(server.dir.path().join(format!("{c}.pem"))).unwrap();
        pem.extend(std::fs::read(server.dir.path().join(format!("{c}.key"))).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

async fn login_with(
    server: &TestServer,
    client: &reqwest::Client,
    user: &str,
    key: &ed25519_dalek::SigningKey,
) -> reqwest::Response {
    let c: serde_json::Value = client
        .post(server.url("/_efs/auth/challenge"))
        .json(&serde_json::json!({ "user": user }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nonce = c["nonce"].as_str().unwrap();
    let body = serde_json::json!({
        "user": user,
        "nonce": nonce,
        "signature": sign_login(key, &server.server_id, user, nonce),
    });
    client
        .post(server.url("/_efs/auth/token"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_bound() {
    let dir = std::sync::Arc::new(new_tempdir());
    make_pki(dir.path());
    let ca = dir.path().join("ca.pem");
    let server = TestServer::start_in(dir.clone(), &["--client-ca", ca.to_str().unwrap()], &[]);
    server.create_fs("records");
    let key = server.create_user("app1", &["records"], false);

    // No certificate, or one from another CA: the TLS handshake is refused.
    for cert in [None, Some("x")] {
        let r = client_with(&server, cert)
            .get(server.url("/_efs/health"))
            .send()
            .await;
        assert!(r.is_err(), "a connection with {cert:?} must be refused");
    }

    // A certificate from the CA: served; an unbound user logs in with any such certificate.
    let c1 = client_with(&server, Some("c1"));
    let c2 = client_with(&server, Some("c2"));
    let r = c1.get(server.url("/_efs/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(login_with(&server, &c2, "app1", &key).await.status(), 200);

    // Bind app1 to c1: c2 can no longer log in, c1 can; a token from c1 is refused over c2.
    let c1_pem = dir.path().join("c1.pem");
    let out = server.efsctl_ok(&["bind-cert", "app1", "--cert", c1_pem.to_str().unwrap()]);
    assert!(out.contains("bound"), "{out}");
    let r = login_with(&server, &c2, "app1", &key).await;
    assert_eq!(r.status(), 401, "login over another certificate");
    let r = login_with(&server, &c1, "app1", &key).await;
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let put = c1
        .put(server.url("/a.txt"))
        .bearer_auth(&token)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let get = c2
        .get(server.url("/a.txt"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        get.status(),
        401,
        "the bound user's token over another certificate"
    );
    let get = c1
        .get(server.url("/a.txt"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.bytes().await.unwrap(), "hello");

    // The token over another certificate is recorded with its user (outside the budget of
    // refusals of callers that proved nobody, which other refusals from c2 cannot spend).
    let mut forged_answer = String::new();
    for _ in 0..40 {
        let r = c2
            .get(server.url("/a.txt"))
            .bearer_auth("forged")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        forged_answer = r.text().await.unwrap();
    }
    let get = c2
        .get(server.url("/a.txt"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 401);
    // The same answer as a forged token's: it does not tell a thief without the certificate
    // that the token is alive.
    assert_eq!(get.text().await.unwrap(), forged_answer);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = server.efsctl_ok(&[
            "audit", "show", "--path", "/a.txt", "--user", "app1", "--json",
        ]);
        let refused = serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "read" && e["status"] == 401)
            .count();
        if refused == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Unbind: c2 works again (with a new login: binding changes revoke earlier tokens).
    server.efsctl_ok(&["bind-cert", "app1", "--unbind"]);
    assert_eq!(login_with(&server, &c2, "app1", &key).await.status(), 200);
}
