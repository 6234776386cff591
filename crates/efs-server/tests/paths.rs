//! Path normalisation at the edge: every bad path is `400 invalid_path` and writes nothing;
//! unusual but valid paths work. Bad paths are sent raw (HTTP/1.1 over TLS, or curl
//! `--path-as-is`): reqwest and the URL standard would normalise dot segments first.

mod common;

use common::*;
use serde_json::{Value, json};

/// Request targets that must be refused, each with why.
fn bad_targets() -> Vec<(String, &'static str)> {
    let mut v: Vec<(String, &'static str)> = [
        ("/a/../b", "dot-dot segment"),
        ("/../b", "dot-dot at the root"),
        ("/a/..", "trailing dot-dot"),
        ("/a/./b", "dot segment"),
        ("/./a", "leading dot segment"),
        ("/a/%2e%2e/b", "encoded dot-dot"),
        ("/a/%2E%2E/b", "encoded dot-dot, upper case"),
        ("/%2e%2e/etc/passwd", "encoded dot-dot at the root"),
        ("/a/.%2e/b", "half-encoded dot-dot"),
        ("/a/%2e/b", "encoded dot"),
        ("//a", "empty first segment"),
        ("//", "the root with an empty segment"),
        ("/a//b", "empty segment"),
        ("/a/b//", "empty last segment"),
        ("/a%5cb", "backslash"),
        ("/a%5C..%5Cb", "backslash traversal"),
        ("/a%00b", "NUL"),
        ("/a%00", "trailing NUL"),
        ("/a%0ab", "line feed"),
        ("/a%0d%0aSet-Cookie:x", "CR LF"),
        ("/a%09b", "tab"),
        ("/a%7fb", "DEL"),
        ("/a%c2%85b", "C1 control (NEL)"),
        ("/%ff", "invalid UTF-8"),
        ("/a%c3", "truncated UTF-8"),
        ("/%c3%28", "invalid UTF-8 continuation"),
        ("/%ed%a0%80", "UTF-8 surrogate"),
        ("/%c0%ae%c0%ae/x", "overlong UTF-8 dots"),
        ("/%zz", "bad escape"),
        ("/abc%4", "truncated escape"),
        ("/abc%", "lone percent"),
        ("/_efs/x", "reserved prefix"),
        ("/_efs", "reserved prefix itself"),
        ("/%5fefs/x", "encoded reserved prefix"),
    ]
    .iter()
    .map(|(t, w)| ((*t).to_owned(), *w))
    .collect();
    v.push((format!("/{}", "s".repeat(256)), "256-byte segment"));
    v.push((
        format!("/d/{}", "%C3%A9".repeat(128)),
        "256-byte segment after decoding",
    ));
    let long: String = (0..16).map(|_| format!("/{}", "p".repeat(255))).collect();
    assert_eq!(long.len(), 4096);
    v.push((format!("{long}/x"), "path over 4096 bytes"));
    v
}

/// Names and ETags of the root listing.
async fn root_state(srv: &TestServer, token: &str) -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> = srv
        .list_all("/", token, 1000)
        .await
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["etag"].as_str().map(str::to_owned),
            )
        })
        .collect();
    v.sort();
    v
}

fn assert_invalid_path(r: &RawResponse, what: &str) {
    assert_eq!(
        r.status,
        400,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: JSON error"
    );
    let v = r.json();
    assert_eq!(v["error"], "invalid_path", "{what}: {v}");
    let msg = v["message"].as_str().unwrap();
    assert!(!msg.is_empty());
}

#[tokio::test]
async fn bad_paths_are_400_invalid_path_and_nothing_is_written() {
    let s = session(&[]).await;
    let srv = &s.srv;
    srv.put_ok("/keep.txt", &s.token, "keep").await;
    srv.put_ok("/a/existing", &s.token, "existing").await;
    let before = root_state(srv, &s.token).await;
    let a_before = srv.list_all("/a/", &s.token, 1000).await;

    for (target, what) in bad_targets() {
        for method in ["PUT", "POST"] {
            let r = srv.raw(method, &target, Some(&s.token), b"payload").await;
            assert_invalid_path(&r, &format!("{method} {what} ({target})"));
        }
        let r = srv.raw("GET", &target, Some(&s.token), b"").await;
        assert_invalid_path(&r, &format!("GET {what}"));
        let r = srv.raw("DELETE", &target, Some(&s.token), b"").await;
        assert_invalid_path(&r, &format!("DELETE {what}"));
        // A bad path is refused before the token is even looked at.
        let r = srv.raw("PUT", &target, None, b"payload").await;
        assert_invalid_path(&r, &format!("PUT {what} without a token"));
    }
    // Directory forms (mkdir) of a few.
    for target in ["/a/../b/", "/a/%2e%2e/", "/x%00/", "/_efs/dir/"] {
        let r = srv.raw("POST", target, Some(&s.token), b"").await;
        assert_invalid_path(&r, target);
    }

    // A bad Destination of MOVE, and bad paths in /_efs/move.
    for dest in ["/a/../b", "/a/%2e%2e/b", "/x%00y", "/_efs/x", "//y", "/%ff"] {
        let req = format!(
            "MOVE /keep.txt HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
             Destination: {dest}\r\nConnection: close\r\n\r\n",
            s.token
        );
        let r = srv.raw_http(req.into_bytes()).await;
        assert_invalid_path(&r, &format!("MOVE to {dest}"));
    }
    for (from, to) in [
        ("/keep.txt", "/a/../b"),
        ("/keep.txt", "/a/./b"),
        ("/keep.txt", "/_efs/b"),
        ("/keep.txt", "/a\\b"),
        ("/keep.txt", "/a\u{0}b"),
        ("/keep.txt", "relative"),
        ("/a/../keep.txt", "/b"),
    ] {
        let r = srv
            .req("POST", "/_efs/move", &s.token)
            .json(&json!({"from": from, "to": to}))
            .send()
            .await
            .unwrap();
        assert_error(r, 400, "invalid_path").await;
    }

    // Nothing was written, moved or deleted.
    assert_eq!(root_state(srv, &s.token).await, before);
    assert_eq!(srv.list_all("/a/", &s.token, 1000).await, a_before);
    assert_eq!(srv.get_ok("/keep.txt", &s.token).await, b"keep");
    assert_eq!(srv.get_ok("/a/existing", &s.token).await, b"existing");
    for p in ["/b", "/b/", "/etc/", "/x/"] {
        assert_eq!(srv.get(p, &s.token).await.0, 404, "{p}");
    }
}

#[tokio::test]
async fn curl_path_as_is_gets_the_same_answers() {
    let s = session(&[]).await;
    let srv = &s.srv;
    srv.put_ok("/keep.txt", &s.token, "keep").await;
    let before = root_state(srv, &s.token).await;
    let auth = format!("Authorization: Bearer {}", s.token);
    for target in [
        "/a/../b",
        "/a/./b",
        "/a/%2e%2e/b",
        "/a%00b",
        "//a",
        "/_efs/x",
    ] {
        let url = srv.url(target);
        // PUT over HTTP/1.1: curl 7.88 over HTTP/2 reports an early answer followed by
        // RST_STREAM(NO_ERROR) as error 92 instead of showing it (a curl quirk).
        let put: &[&str] = &["--http1.1", "-X", "PUT", "--data-binary", "payload"];
        for extra in [put, &["-X", "GET"][..], &["-X", "DELETE"][..]] {
            let mut args = vec!["--path-as-is", "-H", &auth, "-w", "\n%{http_code}"];
            args.extend_from_slice(extra);
            args.push(&url);
            let out = srv.curl(&args);
            assert!(
                out.status.success(),
                "curl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let (body, code) = text.rsplit_once('\n').unwrap();
            assert_eq!(code, "400", "{extra:?} {target}: {body}");
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["error"], "invalid_path", "{target}");
        }
    }
    assert_eq!(root_state(srv, &s.token).await, before);
    assert_eq!(srv.get_ok("/keep.txt", &s.token).await, b"keep");
}

#[tokio::test]
async fn unusual_but_valid_paths_work() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let seg255 = "m".repeat(255);
    let long: String = (0..16).map(|_| format!("/{}", "q".repeat(255))).collect();
    assert_eq!(long.len(), 4096);
    // (request path, decoded segments)
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            "/with%20space/file%20name.txt".into(),
            vec!["with space".into(), "file name.txt".into()],
        ),
        (
            "/caf%C3%A9/%C3%A9t%C3%A9.txt".into(),
            vec!["café".into(), "été.txt".into()],
        ),
        (
            "/emoji/%E2%9C%93%F0%9F%98%80".into(),
            vec!["emoji".into(), "✓😀".into()],
        ),
        ("/a/_efs".into(), vec!["a".into(), "_efs".into()]),
        (
            "/a/_efs2/x".into(),
            vec!["a".into(), "_efs2".into(), "x".into()],
        ),
        ("/_efsx".into(), vec!["_efsx".into()]),
        ("/_EFS".into(), vec!["_EFS".into()]),
        (
            "/once/%252e%252e".into(),
            vec!["once".into(), "%2e%2e".into()],
        ),
        ("/plus/a+b".into(), vec!["plus".into(), "a+b".into()]),
        ("/dots/...".into(), vec!["dots".into(), "...".into()]),
        (
            "/dots/.hidden".into(),
            vec!["dots".into(), ".hidden".into()],
        ),
        (
            format!("/long/{seg255}"),
            vec!["long".into(), seg255.clone()],
        ),
        (
            long.clone(),
            long[1..].split('/').map(str::to_owned).collect(),
        ),
    ];
    for (i, (path, segs)) in cases.iter().enumerate() {
        let content = format!("content {i}");
        let r = srv.put(path, &s.token, content.clone()).await;
        let status = r.status();
        let entry: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{path}: {entry}");
        assert_eq!(entry["name"], segs.last().unwrap().as_str(), "{path}");
        assert_eq!(
            srv.get_ok(path, &s.token).await,
            content.as_bytes(),
            "{path}"
        );
        // The parent lists the decoded name.
        let parent: String = segs[..segs.len() - 1]
            .iter()
            .map(|s| format!("/{}", percent_encode(s)))
            .collect::<String>()
            + "/";
        let names: Vec<String> = srv
            .list_all(&parent, &s.token, 1000)
            .await
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        assert!(names.contains(segs.last().unwrap()), "{path}: {names:?}");
    }
    // The root holds exactly the first segments.
    let mut root: Vec<String> = srv
        .list_all("/", &s.token, 1000)
        .await
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    root.sort();
    let mut want: Vec<String> = cases.iter().map(|(_, s)| s[0].clone()).collect();
    want.sort();
    want.dedup();
    assert_eq!(root, want);

    // A decoded path in JSON names the same file as the percent-encoded one in the URL.
    let r = srv
        .req("POST", "/_efs/move", &s.token)
        .json(&json!({"from": "/café/été.txt", "to": "/café/hiver é.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        srv.get_ok("/caf%C3%A9/hiver%20%C3%A9.txt", &s.token).await,
        b"content 1"
    );
    // And MOVE's Destination is percent-decoded once, like the path.
    let r = srv
        .req("MOVE", "/with%20space/file%20name.txt", &s.token)
        .header("destination", "/with%20space/%2541.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let names: Vec<String> = srv
        .list_all("/with%20space/", &s.token, 10)
        .await
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["%41.txt"]);
}

/// A new name may not hold invisible format characters (bidirectional controls, zero-width
/// characters, the BOM, the soft hyphen), line or paragraph separators, or noncharacters:
/// `\u{202E}fdp.exe` listed as `exe.pdf`, `a\u{200B}b` beside `ab` (from a review of
/// authorization). Refused (400 `invalid_path`, nothing written) for a new file, a new
/// directory, a parent made on the way, a move's new name; a read of such a name is a plain
/// 404 (names made before the rule stay readable).
#[tokio::test]
async fn new_names_with_invisible_characters_are_refused() {
    let s = session(&[]).await;
    let srv = &s.srv;
    srv.put_ok("/keep.txt", &s.token, "keep").await;
    for bad in [
        "%E2%80%AEfdp.exe",
        "a%E2%80%8Bb",
        "%EF%BB%BFx",
        "a%C2%ADb",
        "%E2%80%A8x",
        "%EF%BF%BE",
        "%F4%8F%BF%BF",
        "a%E2%81%A6b",
        "a%E2%80%8Db",
    ] {
        for (method, path) in [
            ("PUT", format!("/{bad}")),
            ("PUT", format!("/{bad}/child.txt")),
            ("MKCOL", format!("/{bad}")),
            ("PUT", format!("/{bad}/")),
        ] {
            // A directory is made without a body (a body is refused on its own).
            let content = if method == "MKCOL" || path.ends_with('/') {
                ""
            } else {
                "x"
            };
            let r = srv
                .req(method, &path, &s.token)
                .body(content)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, 400, "{method} {path}: {body}");
            assert_eq!(body["error"], "invalid_path", "{method} {path}: {body}");
        }
        let r = srv
            .req("MOVE", "/keep.txt", &s.token)
            .header("destination", format!("/{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "MOVE to {bad}");
        let (status, _) = srv.get(&format!("/{bad}"), &s.token).await;
        assert_eq!(status, 404, "GET {bad}");
    }
    let names: Vec<Value> = srv.list_all("/", &s.token, 100).await;
    assert_eq!(names.len(), 1, "nothing but keep.txt: {names:?}");
    // Other scripts, accents, emoji and private-use characters are names like any other.
    for good in [
        "caf%C3%A9",
        "%E6%97%A5%E6%9C%AC",
        "%F0%9F%98%80",
        "%EE%80%80",
    ] {
        srv.put_ok(&format!("/{good}"), &s.token, "ok").await;
    }
}

/// Percent-encodes everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
