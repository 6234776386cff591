//! End-to-end tests of the file routes: a real efs-server process, a real HTTPS client.

mod common;

use std::collections::BTreeSet;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn seed_post_then_get_and_the_entry_it_creates() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let content = b"%PDF-1.7 prescription for patient 173\n".repeat(20);

    let r = srv
        .req("POST", "/patients/173/prescription.pdf", &s.token)
        .header("content-type", "application/pdf")
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "a new file is 201 Created");
    let etag = header(&r, "etag").expect("ETag on write");
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34,
        "{etag}"
    );
    let entry: Value = r.json().await.unwrap();
    assert_eq!(entry["name"], "prescription.pdf");
    assert_eq!(entry["type"], "file");
    assert_eq!(entry["size"], content.len());
    assert_eq!(entry["etag"], etag.as_str());
    assert_eq!(entry["content_type"], "application/pdf");
    assert!(
        entry["modified"].as_str().unwrap().ends_with('Z'),
        "{entry}"
    );

    let r = srv
        .req("GET", "/patients/173/prescription.pdf", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag").as_deref(), Some(etag.as_str()));
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/pdf")
    );
    assert_eq!(
        header(&r, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(header(&r, "accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(
        header(&r, "content-length").as_deref(),
        Some(content.len().to_string().as_str())
    );
    assert!(header(&r, "last-modified").is_some());
    assert_eq!(r.bytes().await.unwrap(), content);

    // HEAD: the same headers, no body.
    let r = srv
        .req("HEAD", "/patients/173/prescription.pdf", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag").as_deref(), Some(etag.as_str()));
    assert_eq!(
        header(&r, "content-length").as_deref(),
        Some(content.len().to_string().as_str())
    );
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/pdf")
    );
    assert!(r.bytes().await.unwrap().is_empty());

    // The parents were created, and list.
    let r = srv.req("GET", "/patients/", &s.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["path"], "/patients/");
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0]["name"], "173");
    assert_eq!(page["entries"][0]["type"], "dir");
    assert!(
        page["entries"][0].get("etag").is_none(),
        "directories have no ETag"
    );
    assert!(page.get("next_cursor").is_none());
    let page: Value = srv
        .req("GET", "/patients/173/", &s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["path"], "/patients/173/");
    assert_eq!(page["entries"][0]["name"], "prescription.pdf");
    assert_eq!(page["entries"][0]["size"], content.len());
    assert_eq!(page["entries"][0]["etag"], etag.as_str());
    assert_eq!(page["entries"][0]["content_type"], "application/pdf");

    // A directory read as a file, a missing file.
    assert_error(
        srv.req("GET", "/patients/173", &s.token)
            .send()
            .await
            .unwrap(),
        409,
        "conflict",
    )
    .await;
    assert_error(
        srv.req("GET", "/patients/174/prescription.pdf", &s.token)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        srv.req("GET", "/patients/174/", &s.token)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    // A file under a file.
    assert_error(
        srv.put("/patients/173/prescription.pdf/x", &s.token, "x")
            .await,
        409,
        "conflict",
    )
    .await;
}

#[tokio::test]
async fn no_token_or_a_garbage_token_is_401() {
    let s = session(&[]).await;
    let srv = &s.srv;
    srv.put_ok("/a.txt", &s.token, "secret").await;
    let r = srv.client.get(srv.url("/a.txt")).send().await.unwrap();
    assert_eq!(header(&r, "www-authenticate").as_deref(), Some("Bearer"));
    let msg = assert_error(r, 401, "unauthorized").await;
    assert!(!msg.contains("secret"));
    for bad in ["", "x", "a.b.c", &s.token[..s.token.len() - 2]] {
        let r = srv
            .client
            .get(srv.url("/a.txt"))
            .header("authorization", format!("Bearer {bad}"))
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    let r = srv
        .client
        .put(srv.url("/b.txt"))
        .header("authorization", format!("Basic {}", s.token))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    // Nothing was written by the refused PUT.
    assert_eq!(srv.get("/b.txt", &s.token).await.0, 404);
}

#[tokio::test]
async fn byte_exact_round_trips_of_every_size() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let sizes = [
        0usize,
        1,
        65_535,
        65_536,
        65_537,
        131_072,
        131_073,
        200_000,
        5 << 20,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let data = pattern(n, i as u64 + 1);
        let path = format!("/sizes/f{n}.bin");
        let r = srv.put(&path, &s.token, data.clone()).await;
        assert_eq!(r.status(), 201, "PUT {n} bytes");
        let entry: Value = r.json().await.unwrap();
        assert_eq!(entry["size"], n);
        // Twice: the second read may come from the cache.
        for round in 0..2 {
            let r = srv.req("GET", &path, &s.token).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(
                header(&r, "content-length").as_deref(),
                Some(n.to_string().as_str())
            );
            assert_eq!(
                header(&r, "content-type").as_deref(),
                Some("application/octet-stream"),
                "the default content type"
            );
            let got = r.bytes().await.unwrap();
            assert_eq!(got.len(), n, "size {n}, round {round}");
            assert!(got == data, "content of size {n}, round {round}");
        }
    }
    let listed = srv.list_all("/sizes/", &s.token, 100).await;
    let mut names: Vec<_> = listed
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["size"].as_u64().unwrap(),
            )
        })
        .collect();
    names.sort();
    let mut want: Vec<_> = sizes
        .iter()
        .map(|n| (format!("f{n}.bin"), *n as u64))
        .collect();
    want.sort();
    assert_eq!(names, want);
}

/// Range reads against one server (cache on or off).
async fn check_ranges(extra: &[&str]) {
    let s = session(extra).await;
    let srv = &s.srv;
    let len = 200_000usize;
    let data = pattern(len, 42);
    srv.put_ok("/r.bin", &s.token, data.clone()).await;
    let small = b"0123456789".to_vec();
    srv.put_ok("/small.txt", &s.token, small.clone()).await;
    srv.put_ok("/empty", &s.token, Vec::new()).await;

    let cases: &[(&str, usize, usize)] = &[
        ("bytes=0-99", 0, 100),                  // first
        ("bytes=70000-140000", 70_000, 140_001), // middle, across segments
        ("bytes=65535-65536", 65_535, 65_537),   // a segment boundary
        ("bytes=199900-199999", 199_900, len),   // last
        ("bytes=-500", len - 500, len),          // suffix
        ("bytes=-300000", 0, len),               // suffix longer than the file
        ("bytes=150000-", 150_000, len),         // open-ended
        ("bytes=199990-300000", 199_990, len),   // end clamped
        ("bytes=0-0", 0, 1),
    ];
    // Twice: a miss, then (with the cache on) a hit.
    for _ in 0..2 {
        for (range, a, b) in cases {
            let r = srv
                .req("GET", "/r.bin", &s.token)
                .header("range", *range)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206, "{range}");
            assert_eq!(
                header(&r, "content-range"),
                Some(format!("bytes {a}-{}/{len}", b - 1)),
                "{range}"
            );
            assert_eq!(
                header(&r, "content-length"),
                Some((b - a).to_string()),
                "{range}"
            );
            let got = r.bytes().await.unwrap();
            assert!(got == data[*a..*b], "{range}: {} bytes", got.len());
        }
    }
    let r = srv
        .req("GET", "/small.txt", &s.token)
        .header("range", "bytes=3-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range").as_deref(), Some("bytes 3-5/10"));
    assert_eq!(r.bytes().await.unwrap(), &small[3..6]);

    // HEAD with a range: the same status and headers.
    let r = srv
        .req("HEAD", "/r.bin", &s.token)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        header(&r, "content-range").as_deref(),
        Some("bytes 10-19/200000")
    );

    // Unsatisfiable: 416 with `bytes */len`.
    for (path, range, total) in [
        ("/r.bin", "bytes=200000-", len),
        ("/r.bin", "bytes=250000-260000", len),
        ("/r.bin", "bytes=-0", len),
        ("/small.txt", "bytes=10-", 10),
        ("/empty", "bytes=0-", 0),
        ("/empty", "bytes=-5", 0),
    ] {
        let r = srv
            .req("GET", path, &s.token)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes */{total}")),
            "{path} {range}"
        );
        assert_error(r, 416, "range_not_satisfiable").await;
    }
    // Malformed or multiple ranges are ignored: the whole file.
    for range in ["bytes=5-2", "items=0-1", "bytes=0-1,5-6", "bytes=x-y"] {
        let r = srv
            .req("GET", "/small.txt", &s.token)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{range}");
        assert!(header(&r, "content-range").is_none());
        assert_eq!(r.bytes().await.unwrap(), small);
    }
}

#[tokio::test]
async fn ranges_with_the_cache() {
    check_ranges(&[]).await;
}

#[tokio::test]
async fn ranges_without_the_cache() {
    check_ranges(&["--cache-size", "0"]).await;
}

/// A client resuming a download sends `If-Range` with the ETag it started with: if the file
/// was replaced since, it gets the whole new version (200), never a range of it joined to
/// the old bytes. With the current ETag it gets the range. A date, a weak tag or a list
/// gets the whole file.
#[tokio::test]
async fn if_range_sends_the_whole_file_once_it_changed() {
    for extra in [&[][..], &["--cache-size", "0"][..]] {
        let s = session(extra).await;
        let srv = &s.srv;
        let old_tag = srv
            .put_ok("/resume.bin", &s.token, pattern(100_000, 1))
            .await;
        let new = pattern(100_000, 2);
        let new_tag = srv.put_ok("/resume.bin", &s.token, new.clone()).await;
        assert_ne!(old_tag, new_tag);
        let get = |if_range: String| {
            srv.req("GET", "/resume.bin", &s.token)
                .header("range", "bytes=50000-")
                .header("if-range", if_range)
                .send()
        };
        let r = get(new_tag.clone()).await.unwrap();
        assert_eq!(r.status(), 206, "{extra:?}");
        assert!(r.bytes().await.unwrap() == new[50_000..]);
        for stale in [
            old_tag.clone(),
            format!("W/{new_tag}"),
            format!("{new_tag}, {old_tag}"),
            "Wed, 02 Dec 2026 04:00:00 GMT".to_owned(),
        ] {
            let r = get(stale.clone()).await.unwrap();
            assert_eq!(r.status(), 200, "If-Range: {stale} {extra:?}");
            assert!(header(&r, "content-range").is_none());
            assert!(r.bytes().await.unwrap() == new, "If-Range: {stale}");
        }
    }
}

/// A range of a file larger than one streamed batch that misses the cache is streamed (only
/// its segments decrypted) and does not fill the cache: only a whole-file read does. A burst of one-byte ranges on a cold cache then
/// cannot make the server decrypt whole files into memory.
#[tokio::test]
async fn a_range_that_misses_the_cache_does_not_fill_it() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let data = pattern(300_000, 3);
    srv.put_ok("/r.bin", &s.token, data.clone()).await;
    let counter = |m: &str, name: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let range = |r: &'static str| srv.req("GET", "/r.bin", &s.token).header("range", r).send();
    for _ in 0..3 {
        let r = range("bytes=0-0").await.unwrap();
        assert_eq!(r.status(), 206);
        assert!(r.bytes().await.unwrap() == data[..1]);
    }
    let m = srv.metrics().await.text().await.unwrap();
    assert_eq!(counter(&m, "efs_cache_hits_total"), 0, "{m}");
    assert_eq!(counter(&m, "efs_cache_misses_total"), 3, "{m}");
    // A whole read fills it; ranges then hit.
    assert!(srv.get_ok("/r.bin", &s.token).await == data);
    let r = range("bytes=1000-1999").await.unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap() == data[1000..2000]);
    let m = srv.metrics().await.text().await.unwrap();
    assert_eq!(counter(&m, "efs_cache_hits_total"), 1, "{m}");
    assert_eq!(counter(&m, "efs_cache_misses_total"), 4, "{m}");
    // A file no larger than one streamed batch (256 KiB) is filled by a range too: the range
    // costs a whole decryption anyway.
    let small = pattern(200_000, 4);
    srv.put_ok("/small.bin", &s.token, small.clone()).await;
    for _ in 0..2 {
        let r = srv
            .req("GET", "/small.bin", &s.token)
            .header("range", "bytes=5-9")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert!(r.bytes().await.unwrap() == small[5..10]);
    }
    let m = srv.metrics().await.text().await.unwrap();
    assert_eq!(counter(&m, "efs_cache_hits_total"), 2, "{m}");
    assert_eq!(counter(&m, "efs_cache_misses_total"), 5, "{m}");
}

/// Query values are percent-decoded, and a value the server does not understand is a 400,
/// not a silent default: `?recursive=yes` was taken as false (a puzzling 409) and
/// `?limit=0` / `?limit=20000` were clamped.
#[tokio::test]
async fn query_values_are_decoded_and_checked() {
    let s = session(&[]).await;
    let srv = &s.srv;
    for name in ["a", "b", "c"] {
        srv.put_ok(&format!("/d/{name}"), &s.token, b"x".to_vec())
            .await;
    }
    let token = &s.token;
    let status = |method: &'static str, path: &'static str| async move {
        srv.req(method, path, token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // A parameter a route does not use is not its concern (a cache-buster, not UTF-8).
    for ok in [
        "/d/a?v=%E9",
        "/d/a?limit=0&recursive=yes",
        "/d/a?cursor=%FF",
    ] {
        assert_eq!(status("GET", ok).await, 200, "{ok}");
    }
    for bad in [
        "/d/?limit=0",
        "/d/?limit=10001",
        "/d/?limit=-1",
        "/d/?limit=two",
        "/d/?limit=%2B5",
        "/d/?limit=",
        "/d/?limit=%205",
    ] {
        let r = srv.req("GET", bad, &s.token).send().await.unwrap();
        assert_error(r, 400, "bad_request").await;
    }
    let page: Value = srv
        .req("GET", "/d/?%6Cimit=%32", &s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2, "{page}");
    let r = srv
        .req("DELETE", "/d/?recursive=yes", &s.token)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    // A parameter given twice is refused by the route that uses it (EFS took the last value,
    // a proxy or library may take the first: `?recursive=false&recursive=true` deleted the
    // tree); on a route that does not use it, it is nobody's concern.
    for twice in [
        ("DELETE", "/d/?recursive=false&recursive=true"),
        ("DELETE", "/d/?recursive=true&%72ecursive=true"),
        ("GET", "/d/?limit=2&limit=5"),
        ("GET", "/d/?cursor=a&cursor=b"),
    ] {
        let r = srv.req(twice.0, twice.1, &s.token).send().await.unwrap();
        let body = assert_error(r, 400, "bad_request").await;
        assert!(body.contains("more than once"), "{twice:?}: {body}");
    }
    assert_eq!(status("GET", "/d/a?limit=1&limit=2").await, 200);
    assert_eq!(status("DELETE", "/d/?recursive=false").await, 409);
    assert_eq!(status("DELETE", "/d/?recursive=%74rue").await, 204);
}

#[tokio::test]
async fn listing_pagination_returns_every_name_exactly_once() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let mut want = BTreeSet::new();
    for i in 0..25 {
        let name = format!("file-{i:02}.txt");
        srv.put_ok(&format!("/many/{name}"), &s.token, format!("content {i}"))
            .await;
        want.insert(name);
    }
    srv.req("POST", "/many/subdir/", &s.token)
        .send()
        .await
        .unwrap();
    want.insert("subdir".to_owned());

    // Page by page, by hand: 10, 10, 6.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut sizes = Vec::new();
    loop {
        let mut url = "/many/?limit=10".to_owned();
        if let Some(c) = &cursor {
            url = format!("{url}&cursor={c}");
        }
        let r = srv.req("GET", &url, &s.token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        assert_eq!(page["path"], "/many/");
        let entries = page["entries"].as_array().unwrap();
        sizes.push(entries.len());
        for e in entries {
            let name = e["name"].as_str().unwrap().to_owned();
            if name == "subdir" {
                assert_eq!(e["type"], "dir");
            } else {
                assert_eq!(e["type"], "file");
                let i: usize = name[5..7].parse().unwrap();
                assert_eq!(e["size"], format!("content {i}").len());
            }
            seen.push(name);
        }
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) => {
                assert_eq!(entries.len(), 10, "only the last page is short");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
        assert!(sizes.len() < 10, "pagination does not end");
    }
    assert_eq!(sizes, vec![10, 10, 6]);
    let seen_set: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), seen_set.len(), "no name twice: {seen:?}");
    assert_eq!(seen_set, want);

    // Without a limit: everything on one page, in the same order.
    let page: Value = srv
        .req("GET", "/many/", &s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: Vec<_> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(all, seen);
    assert!(page.get("next_cursor").is_none());

    // The root lists the directory.
    let root = srv.list_all("/", &s.token, 10).await;
    assert_eq!(root.len(), 1);
    assert_eq!(root[0]["name"], "many");
    assert_eq!(root[0]["type"], "dir");

    // Bad cursors and limits.
    assert_error(
        srv.req("GET", "/many/?cursor=zz", &s.token)
            .send()
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    assert_error(
        srv.req("GET", "/many/?limit=ten", &s.token)
            .send()
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    // Listing a file is a conflict.
    assert_error(
        srv.req("GET", "/many/file-00.txt/", &s.token)
            .send()
            .await
            .unwrap(),
        409,
        "conflict",
    )
    .await;
}

#[tokio::test]
async fn mkdir_and_delete() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let r = srv.req("POST", "/docs/", &s.token).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["name"], "docs");
    assert_eq!(e["type"], "dir");
    let r = srv
        .req("PUT", "/docs/2024/q1/", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "PUT with a trailing slash makes directories too"
    );
    let page: Value = srv
        .req("GET", "/docs/2024/q1/", &s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["entries"], json!([]));
    // HEAD on a directory.
    let r = srv.req("HEAD", "/docs/", &s.token).send().await.unwrap();
    assert_eq!(r.status(), 200);

    srv.put_ok("/docs/2024/q1/report.txt", &s.token, "report")
        .await;
    srv.put_ok("/docs/readme.txt", &s.token, "readme").await;
    // mkdir over a file.
    assert_error(
        srv.req("POST", "/docs/readme.txt/", &s.token)
            .send()
            .await
            .unwrap(),
        409,
        "conflict",
    )
    .await;
    // A file where a directory is.
    assert_error(srv.put("/docs/2024", &s.token, "x").await, 409, "conflict").await;

    // Delete a file.
    let r = srv
        .req("DELETE", "/docs/readme.txt", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(srv.get("/docs/readme.txt", &s.token).await.0, 404);
    assert_error(
        srv.req("DELETE", "/docs/readme.txt", &s.token)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;

    // A non-empty directory: 409 unless recursive.
    assert_error(
        srv.req("DELETE", "/docs/2024/", &s.token)
            .send()
            .await
            .unwrap(),
        409,
        "conflict",
    )
    .await;
    assert_error(
        srv.req("DELETE", "/docs/2024", &s.token)
            .send()
            .await
            .unwrap(),
        409,
        "conflict",
    )
    .await;
    assert_eq!(
        srv.get_ok("/docs/2024/q1/report.txt", &s.token).await,
        b"report"
    );
    let r = srv
        .req("DELETE", "/docs/2024/?recursive=true", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(srv.get("/docs/2024/q1/report.txt", &s.token).await.0, 404);
    assert_eq!(srv.get("/docs/2024/q1/", &s.token).await.0, 404);
    assert_eq!(srv.get("/docs/2024/", &s.token).await.0, 404);
    // An empty directory goes without recursive.
    let r = srv.req("DELETE", "/docs/", &s.token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(srv.list_all("/", &s.token, 10).await, Vec::<Value>::new());
    // The root cannot be deleted.
    assert_error(
        srv.req("DELETE", "/", &s.token).send().await.unwrap(),
        409,
        "conflict",
    )
    .await;
    // Unknown methods: 405 with the methods a path takes in `Allow` (RFC 9110 §15.5.6).
    for path in ["/x", "/dir/"] {
        let r = srv.req("PATCH", path, &s.token).send().await.unwrap();
        assert_eq!(
            header(&r, "allow").as_deref(),
            Some("GET, HEAD, PUT, POST, DELETE, MOVE, MKCOL"),
            "{path}"
        );
        assert_error(r, 405, "method_not_allowed").await;
    }
}

/// A `Destination` port is a number: `:0443` is the port 443 left out (it was compared as
/// text by nothing but parsed loosely: a port past 65535 counted as left out, so
/// `https://host:65979/…` was this server at `host:443`). An absolute-form target
/// (`MOVE https://host/… HTTP/1.1`) names the authority the request was sent to, over `Host`
/// (RFC 9112 §3.2.2), as origin-form names it by `Host`: any host is served either way (the
/// server has no list of its names), and the `Destination` must name the same one.
#[tokio::test]
async fn destination_ports_are_numbers_and_an_absolute_target_names_the_authority() {
    let s = session(&[]).await;
    let srv = &s.srv;
    srv.put_ok("/m/a.txt", &s.token, "alpha").await;
    let raw = |target: &str, host: &str, dest: Option<&str>| {
        let method = if dest.is_some() { "MOVE" } else { "GET" };
        let dest = dest.map_or(String::new(), |d| format!("Destination: {d}\r\n"));
        srv.raw_http(
            format!(
                "{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n{dest}Connection: close\r\n\r\n",
                s.token
            )
            .into_bytes(),
        )
    };
    // A leading zero: the same port.
    let r = raw(
        "/m/a.txt",
        "efs.example",
        Some("https://efs.example:0443/m/b.txt"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = raw(
        "/m/b.txt",
        "efs.example:0443",
        Some("https://efs.example/m/a.txt"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Past 65535: no port of this server's, refused as another server; nothing moves.
    for dest in [
        "https://efs.example:65979/m/b.txt",
        "https://efs.example:0444/m/b.txt",
    ] {
        let r = raw("/m/a.txt", "efs.example", Some(dest)).await;
        assert_eq!(r.status, 400, "{dest}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("names another server"),
            "{dest}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(srv.get_ok("/m/a.txt", &s.token).await, b"alpha", "{dest}");
    }
    // Absolute form: served as origin form is, whatever host it names.
    let r = raw("https://other.example/m/a.txt", "efs.example", None).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"alpha"[..]));
    // Its authority, not Host, is what the Destination is held to.
    let r = raw(
        "https://efs.example/m/a.txt",
        "other.example",
        Some("https://other.example/m/b.txt"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(srv.get_ok("/m/a.txt", &s.token).await, b"alpha");
    let r = raw(
        "https://efs.example:0443/m/a.txt",
        "other.example",
        Some("https://efs.example/m/b.txt"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(srv.get_ok("/m/b.txt", &s.token).await, b"alpha");
}

/// `Destination` is an absolute path or a URL on this server, nothing else; `If-Match` holds
/// a `MOVE` (and the JSON move) to the version the client saw; `If-None-Match: *` makes a
/// directory creation "create only".
#[tokio::test]
async fn move_destinations_and_conditions() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let etag = srv.put_ok("/m/a.txt", &s.token, "alpha").await;
    let stale = srv.put_ok("/m/old.txt", &s.token, "old").await;
    let mv = |dest: String| {
        srv.req("MOVE", "/m/a.txt", &s.token)
            .header("destination", dest)
            .send()
    };
    for dest in [
        "/x/http://y/z".to_owned(),
        "https://other.example/z".to_owned(),
        srv.url("/z?q=1"),
        srv.url("/z#frag"),
        "z.txt".to_owned(),
        "ftp://127.0.0.1/z".to_owned(),
    ] {
        let r = mv(dest.clone()).await.unwrap();
        assert_error(r, 400, "invalid_path").await;
        assert_eq!(srv.get_ok("/m/a.txt", &s.token).await, b"alpha", "{dest}");
    }
    assert_eq!(srv.get("/z", &s.token).await.0, 404);
    // The port left out is 443, as written out: the same server either way (the names
    // are compared without case). It was refused as "another server".
    // (HTTP/1.1, to choose the Host header.)
    let raw_move = |host: &str, from: &str, dest: &str| {
        srv.raw_http(
            format!(
                "MOVE {from} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nDestination: {dest}\r\nConnection: close\r\n\r\n",
                s.token
            )
            .into_bytes(),
        )
    };
    for (host, dest, from) in [
        ("efs.example", "https://efs.example:443/m/p.txt", "/m/a.txt"),
        ("efs.example:443", "https://EFS.example/m/a.txt", "/m/p.txt"),
    ] {
        let r = raw_move(host, from, dest).await;
        assert_eq!(r.status, 200, "{host} {dest}");
    }
    let r = raw_move(
        "efs.example:8443",
        "/m/a.txt",
        "https://efs.example/m/p.txt",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(srv.get_ok("/m/a.txt", &s.token).await, b"alpha");
    // Credentials in the URL are no part of a destination (they were ignored: 200).
    let r = raw_move("efs.example", "/m/a.txt", "https://u:p@efs.example/m/p.txt").await;
    assert_eq!(r.status, 400);
    assert_eq!(srv.get_ok("/m/a.txt", &s.token).await, b"alpha");
    // A move onto itself changes nothing (as rename(2)), with or without Overwrite.
    for (overwrite, want) in [("F", 200), ("T", 200)] {
        let r = srv
            .req("MOVE", "/m/a.txt", &s.token)
            .header("destination", "/m/a.txt")
            .header("overwrite", overwrite)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "Overwrite: {overwrite}");
    }
    // A path ending in '/' names a directory: a file is not deleted or moved through one,
    // nor moved to one (the file was deleted, moved, or became a file named "q").
    let r = srv.req("MKCOL", "/m/sub/", &s.token).send().await.unwrap();
    assert_eq!(r.status(), 201);
    for (method, path, dest) in [
        ("DELETE", "/m/a.txt/", None),
        ("MOVE", "/m/a.txt/", Some("/m/q.txt")),
        ("MOVE", "/m/a.txt", Some("/m/q/")),
    ] {
        let mut r = srv.req(method, path, &s.token);
        if let Some(d) = dest {
            r = r.header("destination", d);
        }
        assert_error(r.send().await.unwrap(), 409, "conflict").await;
        assert_eq!(
            srv.get_ok("/m/a.txt", &s.token).await,
            b"alpha",
            "{method} {path}"
        );
    }
    let r = srv
        .req("POST", "/_efs/move", &s.token)
        .json(&json!({"from": "/m/a.txt", "to": "/m/q/"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "conflict").await;
    assert_eq!(srv.get("/m/q", &s.token).await.0, 404);
    // Directories move and go through such paths as before.
    let r = srv
        .req("MOVE", "/m/sub/", &s.token)
        .header("destination", "/m/sub2/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = srv
        .req("DELETE", "/m/sub2/", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // If-Match on MOVE: a stale version is 412 and nothing moves; the current one moves.
    let r = srv
        .req("MOVE", "/m/a.txt", &s.token)
        .header("destination", "/m/b.txt")
        .header("if-match", &stale)
        .send()
        .await
        .unwrap();
    assert_error(r, 412, "precondition_failed").await;
    assert_eq!(srv.get_ok("/m/a.txt", &s.token).await, b"alpha");
    let r = srv
        .req("MOVE", "/m/a.txt", &s.token)
        .header("destination", "/m/b.txt")
        .header("if-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The JSON route takes the same header.
    let r = srv
        .req("POST", "/_efs/move", &s.token)
        .header("if-match", &stale)
        .json(&json!({"from": "/m/b.txt", "to": "/m/c.txt"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 412, "precondition_failed").await;
    assert_eq!(srv.get_ok("/m/b.txt", &s.token).await, b"alpha");
    // Create only: a new directory is 201, an existing one 412 (without the header, 201).
    for method in ["PUT", "MKCOL"] {
        let dir = format!("/made-by-{method}/");
        for (want, cond) in [(201, true), (412, true), (201, false)] {
            let mut r = srv.req(method, &dir, &s.token);
            if cond {
                r = r.header("if-none-match", "*");
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), want, "{method} {dir} create-only {cond}");
        }
    }
}

#[tokio::test]
async fn rename_files_and_directories_with_move_and_the_json_route() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let etag_a = srv.put_ok("/a.txt", &s.token, "alpha").await;

    // MOVE a file.
    let r = srv
        .req("MOVE", "/a.txt", &s.token)
        .header("destination", "/renamed/b.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "etag").as_deref(),
        Some(etag_a.as_str()),
        "a move keeps the version"
    );
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["name"], "b.txt");
    assert_eq!(srv.get("/a.txt", &s.token).await.0, 404);
    assert_eq!(srv.get_ok("/renamed/b.txt", &s.token).await, b"alpha");

    // MOVE with an absolute URL as destination.
    let r = srv
        .req("MOVE", "/renamed/b.txt", &s.token)
        .header("destination", srv.url("/c.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(srv.get_ok("/c.txt", &s.token).await, b"alpha");

    // Onto an existing file: 409, unless Overwrite: T.
    srv.put_ok("/d.txt", &s.token, "delta").await;
    let r = srv
        .req("MOVE", "/c.txt", &s.token)
        .header("destination", "/d.txt")
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "conflict").await;
    assert_eq!(srv.get_ok("/d.txt", &s.token).await, b"delta");
    let r = srv
        .req("MOVE", "/c.txt", &s.token)
        .header("destination", "/d.txt")
        .header("overwrite", "F")
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "conflict").await;
    let r = srv
        .req("MOVE", "/c.txt", &s.token)
        .header("destination", "/d.txt")
        .header("overwrite", "T")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(srv.get_ok("/d.txt", &s.token).await, b"alpha");
    assert_eq!(srv.get("/c.txt", &s.token).await.0, 404);
    // No Destination: 400. Missing source: 404.
    assert_error(
        srv.req("MOVE", "/d.txt", &s.token).send().await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    assert_error(
        srv.req("MOVE", "/nope.txt", &s.token)
            .header("destination", "/nope2.txt")
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;

    // MOVE a directory: its content follows.
    srv.put_ok("/dir1/sub/x.bin", &s.token, pattern(200_000, 9))
        .await;
    srv.put_ok("/dir1/y.txt", &s.token, "why").await;
    let r = srv
        .req("MOVE", "/dir1", &s.token)
        .header("destination", "/dir2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "dir");
    assert_eq!(srv.get("/dir1/", &s.token).await.0, 404);
    assert_eq!(
        srv.get_ok("/dir2/sub/x.bin", &s.token).await,
        pattern(200_000, 9)
    );
    assert_eq!(srv.get_ok("/dir2/y.txt", &s.token).await, b"why");
    // Into itself: 409.
    assert_error(
        srv.req("MOVE", "/dir2", &s.token)
            .header("destination", "/dir2/sub/inner")
            .send()
            .await
            .unwrap(),
        409,
        "conflict",
    )
    .await;

    // The JSON route: a file, then a directory.
    let mv = |from: &str, to: &str, overwrite: bool| {
        srv.req("POST", "/_efs/move", &s.token)
            .json(&json!({"from": from, "to": to, "overwrite": overwrite}))
            .send()
    };
    let r = mv("/dir2/y.txt", "/y2.txt", false).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "etag").is_some());
    assert_eq!(srv.get_ok("/y2.txt", &s.token).await, b"why");
    assert_eq!(srv.get("/dir2/y.txt", &s.token).await.0, 404);
    let r = mv("/dir2", "/moved/dir3", false).await.unwrap();
    assert_eq!(r.status(), 200);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["name"].as_str(), e["type"].as_str()),
        (Some("dir3"), Some("dir"))
    );
    assert_eq!(
        srv.get_ok("/moved/dir3/sub/x.bin", &s.token).await,
        pattern(200_000, 9)
    );
    assert_eq!(srv.get("/dir2/", &s.token).await.0, 404);
    // Overwrite through JSON.
    assert_error(
        mv("/y2.txt", "/d.txt", false).await.unwrap(),
        409,
        "conflict",
    )
    .await;
    assert_eq!(mv("/y2.txt", "/d.txt", true).await.unwrap().status(), 200);
    assert_eq!(srv.get_ok("/d.txt", &s.token).await, b"why");
    // A directory never replaces or is replaced.
    assert_error(mv("/moved", "/d.txt", true).await.unwrap(), 409, "conflict").await;
    // Bad JSON and bad paths.
    let r = srv
        .req("POST", "/_efs/move", &s.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    // A field of the wrong type: the message does not quote the value (a path, here).
    let r = srv
        .req("POST", "/_efs/move", &s.token)
        .json(&json!({"from": "/d.txt", "to": "/e.txt", "overwrite": "/patients/173"}))
        .send()
        .await
        .unwrap();
    let msg = assert_error(r, 400, "bad_request").await;
    assert!(!msg.contains("patients"), "{msg}");
    assert!(
        msg.contains("wrong type") && msg.contains("line 1"),
        "{msg}"
    );
    assert_error(
        mv("/d.txt", "/a/../b", false).await.unwrap(),
        400,
        "invalid_path",
    )
    .await;
    assert_error(
        mv("/d.txt", "/_efs/x", false).await.unwrap(),
        400,
        "invalid_path",
    )
    .await;
    assert_eq!(srv.get_ok("/d.txt", &s.token).await, b"why");

    // The final tree.
    let names: BTreeSet<String> = srv
        .list_all("/", &s.token, 100)
        .await
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["d.txt", "moved", "renamed"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[tokio::test]
async fn overwrite_etags_and_conditional_requests() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let r = srv.put("/c.txt", &s.token, "one").await;
    assert_eq!(r.status(), 201);
    let e1 = header(&r, "etag").unwrap();
    let r = srv.put("/c.txt", &s.token, "two").await;
    assert_eq!(r.status(), 200, "a replacement is 200");
    let e2 = header(&r, "etag").unwrap();
    assert_ne!(e1, e2, "every write is a new version");
    // The same bytes again: still a new version.
    let e3 = srv.put_ok("/c.txt", &s.token, "two").await;
    assert_ne!(e2, e3);

    // If-Match with a stale tag: 412, nothing changes.
    let r = srv
        .req("PUT", "/c.txt", &s.token)
        .header("if-match", &e1)
        .body("three")
        .send()
        .await
        .unwrap();
    assert_error(r, 412, "precondition_failed").await;
    assert_eq!(srv.get_ok("/c.txt", &s.token).await, b"two");
    // With the current one (in a list): 200.
    let r = srv
        .req("PUT", "/c.txt", &s.token)
        .header("if-match", format!("{e1}, {e3}"))
        .body("three")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e4 = header(&r, "etag").unwrap();
    assert_eq!(srv.get_ok("/c.txt", &s.token).await, b"three");
    // If-None-Match: * on an existing file: 412; on a new one: 201.
    let r = srv
        .req("PUT", "/c.txt", &s.token)
        .header("if-none-match", "*")
        .body("four")
        .send()
        .await
        .unwrap();
    assert_error(r, 412, "precondition_failed").await;
    let r = srv
        .req("PUT", "/new.txt", &s.token)
        .header("if-none-match", "*")
        .body("new")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // If-Match: * on a missing file: 412 and nothing is created.
    let r = srv
        .req("PUT", "/missing.txt", &s.token)
        .header("if-match", "*")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(r, 412, "precondition_failed").await;
    assert_eq!(srv.get("/missing.txt", &s.token).await.0, 404);
    let r = srv
        .req("PUT", "/c.txt", &s.token)
        .header("if-match", "*")
        .body("five")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e5 = header(&r, "etag").unwrap();
    assert_ne!(e4, e5);

    // Conditional GET.
    let r = srv
        .req("GET", "/c.txt", &s.token)
        .header("if-none-match", &e5)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag").as_deref(), Some(e5.as_str()));
    // As a 200 would say about caching; no length (a 304's would be the 200's, RFC 9110).
    assert_eq!(
        header(&r, "cache-control").as_deref(),
        Some("private, no-store")
    );
    assert_eq!(header(&r, "content-length"), None);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = srv
        .req("GET", "/c.txt", &s.token)
        .header("if-none-match", &e4)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), "five");
    // If-None-Match compares weakly (RFC 9110): the current tag made weak still gives 304;
    // If-Match compares strongly: the same weak tag matches nothing (412).
    let weak = format!("W/{e5}");
    let r = srv
        .req("GET", "/c.txt", &s.token)
        .header("if-none-match", &weak)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304, "a weak tag in If-None-Match");
    let r = srv
        .req("GET", "/c.txt", &s.token)
        .header("if-match", &weak)
        .send()
        .await
        .unwrap();
    assert_error(r, 412, "precondition_failed").await;
    let r = srv
        .req("GET", "/c.txt", &s.token)
        .header("if-match", &e4)
        .send()
        .await
        .unwrap();
    assert_error(r, 412, "precondition_failed").await;
    let r = srv
        .req("GET", "/c.txt", &s.token)
        .header("if-match", &e5)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let modified = header(&r, "last-modified").unwrap();
    let at = httpdate::parse_http_date(&modified).unwrap();
    let date = |t: std::time::SystemTime| httpdate::fmt_http_date(t);
    let (before, after) = (
        date(at - std::time::Duration::from_secs(1)),
        date(at + std::time::Duration::from_secs(1)),
    );
    // Dates (RFC 9110 §13.1.3, §13.1.4): If-Modified-Since gives 304 unless the file
    // changed after the date (Last-Modified's own value included); If-Unmodified-Since
    // gives 412 when it did. A date that does not parse is ignored.
    for (name, value, status) in [
        ("if-modified-since", &modified, 304),
        ("if-modified-since", &after, 304),
        ("if-modified-since", &before, 200),
        ("if-modified-since", &"yesterday".to_string(), 200),
        ("if-unmodified-since", &modified, 200),
        ("if-unmodified-since", &before, 412),
        ("if-unmodified-since", &"yesterday".to_string(), 200),
    ] {
        let r = srv
            .req("GET", "/c.txt", &s.token)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{name}: {value} (modified {modified})");
        if status == 304 {
            assert_eq!(header(&r, "etag").as_deref(), Some(e5.as_str()));
        }
    }
    // If-None-Match decides over If-Modified-Since, If-Match over If-Unmodified-Since.
    let r = srv
        .req("GET", "/c.txt", &s.token)
        .header("if-none-match", &e4)
        .header("if-modified-since", &after)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = srv
        .req("GET", "/c.txt", &s.token)
        .header("if-match", &e5)
        .header("if-unmodified-since", &before)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // On writes a date is refused, not ignored: the version is the condition.
    let r = srv
        .req("PUT", "/c.txt", &s.token)
        .header("if-unmodified-since", &after)
        .body("six")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    assert_eq!(srv.get_ok("/c.txt", &s.token).await, b"five");

    // Conditional DELETE.
    let r = srv
        .req("DELETE", "/c.txt", &s.token)
        .header("if-match", &e4)
        .send()
        .await
        .unwrap();
    assert_error(r, 412, "precondition_failed").await;
    assert_eq!(srv.get_ok("/c.txt", &s.token).await, b"five");
    let r = srv
        .req("DELETE", "/c.txt", &s.token)
        .header("if-match", &e5)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(srv.get("/c.txt", &s.token).await.0, 404);

    // A listing: a directory has no entity tag, so If-Match with one fails (412; it was
    // answered 200), `*` holds; a missing directory stays 404 (black-box review).
    srv.put_ok("/d/x.txt", &s.token, "x").await;
    for (method, tag, status) in [
        ("GET", e5.as_str(), 412),
        ("HEAD", e5.as_str(), 412),
        ("GET", "*", 200),
    ] {
        let r = srv
            .req(method, "/d/", &s.token)
            .header("if-match", tag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} /d/ If-Match: {tag}");
    }
    let r = srv
        .req("GET", "/nope/", &s.token)
        .header("if-match", &e5)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn content_type_is_kept_and_nosniff_is_sent() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let html = "<html><script>alert(1)</script></html>";
    let r = srv
        .req("PUT", "/page.html", &s.token)
        .header("content-type", "text/html; charset=utf-8")
        .body(html)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = srv.req("GET", "/page.html", &s.token).send().await.unwrap();
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        header(&r, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(
        header(&r, "cache-control").unwrap().contains("no-store"),
        "file content is not cached by intermediaries"
    );
    assert_eq!(r.text().await.unwrap(), html);
    // A replacement without a type gets the default.
    srv.put_ok("/page.html", &s.token, "plain").await;
    let r = srv.req("GET", "/page.html", &s.token).send().await.unwrap();
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        header(&r, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    // Two types: refused (the first was stored silently; black-box review), nothing written.
    let r = srv
        .req("PUT", "/page.html", &s.token)
        .header("content-type", "text/plain")
        .header("content-type", "text/html")
        .body("two types")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    assert_eq!(srv.get_ok("/page.html", &s.token).await, b"plain");
}

#[tokio::test]
async fn too_large_bodies_are_413_with_a_length_and_when_streamed() {
    let limit = 100_000usize;
    let s = session(&["--max-body-size", &limit.to_string()]).await;
    let srv = &s.srv;

    // Exactly the limit: accepted.
    let data = pattern(limit, 3);
    srv.put_ok("/exact.bin", &s.token, data.clone()).await;
    assert_eq!(srv.get_ok("/exact.bin", &s.token).await, data);

    // One byte more, with Content-Length.
    let r = srv.put("/big.bin", &s.token, pattern(limit + 1, 4)).await;
    assert_error(r, 413, "too_large").await;
    // Far more, with Content-Length: refused before the body is read.
    let r = srv.put("/big.bin", &s.token, pattern(3 * limit, 4)).await;
    assert_error(r, 413, "too_large").await;
    // An existing file is not replaced by a refused one.
    let r = srv.put("/exact.bin", &s.token, pattern(limit + 1, 5)).await;
    assert_error(r, 413, "too_large").await;
    assert_eq!(srv.get_ok("/exact.bin", &s.token).await, data);

    // A streamed body with no length (HTTP/2 DATA frames).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..30).map(|i| Ok(pattern(10_000, 100 + i))).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = srv
        .req("PUT", "/streamed.bin", &s.token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "too_large").await;

    // A chunked HTTP/1.1 body, sent raw.
    let mut req = format!(
        "PUT /chunked.bin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        s.token
    )
    .into_bytes();
    for i in 0..30 {
        let c = pattern(10_000, 200 + i);
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(&c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = srv.raw_http(req).await;
    assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "too_large");

    // A small streamed body is fine.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..5).map(|i| Ok(pattern(10_000, 300 + i))).collect();
    let want: Vec<u8> = (0..5).flat_map(|i| pattern(10_000, 300 + i)).collect();
    let r = srv
        .req("PUT", "/streamed-ok.bin", &s.token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(srv.get_ok("/streamed-ok.bin", &s.token).await, want);

    // Nothing of the refused uploads exists.
    for p in ["/big.bin", "/streamed.bin", "/chunked.bin"] {
        assert_eq!(srv.get(p, &s.token).await.0, 404, "{p}");
    }
    let names: BTreeSet<String> = srv
        .list_all("/", &s.token, 100)
        .await
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["exact.bin", "streamed-ok.bin"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[tokio::test]
async fn read_only_user_reads_but_cannot_write() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let etag = srv
        .put_ok("/shared/report.txt", &s.token, "the report")
        .await;
    let ro_key = srv.create_user("auditor", &["files"], true);
    let ro = srv.login("auditor", &ro_key, None).await;

    assert_eq!(srv.get_ok("/shared/report.txt", &ro).await, b"the report");
    let r = srv
        .req("HEAD", "/shared/report.txt", &ro)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag").as_deref(), Some(etag.as_str()));
    assert_eq!(srv.list_all("/shared/", &ro, 10).await.len(), 1);

    let refused = [
        srv.req("PUT", "/shared/report.txt", &ro).body("changed"),
        srv.req("POST", "/shared/new.txt", &ro).body("new"),
        srv.req("DELETE", "/shared/report.txt", &ro),
        srv.req("DELETE", "/shared/?recursive=true", &ro),
        srv.req("MOVE", "/shared/report.txt", &ro)
            .header("destination", "/moved.txt"),
        srv.req("POST", "/_efs/move", &ro)
            .json(&json!({"from": "/shared/report.txt", "to": "/moved.txt"})),
        srv.req("POST", "/newdir/", &ro),
    ];
    for rb in refused {
        let r = rb.send().await.unwrap();
        assert_error(r, 403, "forbidden").await;
    }
    // Nothing changed.
    let r = srv
        .req("GET", "/shared/report.txt", &ro)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "etag").as_deref(), Some(etag.as_str()));
    assert_eq!(r.bytes().await.unwrap(), "the report");
    let names: Vec<_> = srv
        .list_all("/", &ro, 10)
        .await
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["shared"]);
}

#[tokio::test]
async fn cache_on_and_off_serve_identical_bytes() {
    let on = session(&[]).await;
    let off = session(&["--cache-size", "0"]).await;
    let files: Vec<(String, Vec<u8>)> = [0usize, 1, 4096, 65_537, 200_000, 3 << 20]
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("/c/f{i}"), pattern(*n, 77 + i as u64)))
        .collect();
    for s in [&on, &off] {
        for (p, d) in &files {
            s.srv.put_ok(p, &s.token, d.clone()).await;
        }
    }
    for round in 0..3 {
        for (p, d) in &files {
            let a = on.srv.get_ok(p, &on.token).await;
            let b = off.srv.get_ok(p, &off.token).await;
            assert!(a == *d, "cache on, {p}, round {round}");
            assert!(b == *d, "cache off, {p}, round {round}");
            if d.len() > 10 {
                let range = format!("bytes=3-{}", d.len() - 4);
                for s in [&on, &off] {
                    let r = s
                        .srv
                        .req("GET", p, &s.token)
                        .header("range", &range)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 206);
                    assert!(r.bytes().await.unwrap() == d[3..d.len() - 3]);
                }
            }
        }
    }
    // An overwrite is seen at once (the cache is keyed by version).
    for s in [&on, &off] {
        s.srv.put_ok("/c/f4", &s.token, "replaced").await;
        assert_eq!(s.srv.get_ok("/c/f4", &s.token).await, b"replaced");
    }
    // The cached server did use its cache.
    let m = on.srv.metrics().await.text().await.unwrap();
    let hits: f64 = m
        .lines()
        .find(|l| l.starts_with("efs_cache_hits_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("efs_cache_hits_total in\n{m}"));
    assert!(hits >= 10.0, "cache hits: {hits}");
    let m = off.srv.metrics().await.text().await.unwrap();
    assert!(
        !m.lines().any(|l| l.starts_with("efs_cache_hits_total")),
        "no cache, no hits"
    );
}

#[tokio::test]
async fn a_64_mib_file_streams_up_and_down() {
    use sha2::{Digest, Sha256};
    const SIZE: usize = 64 << 20;
    const CHUNK: usize = 256 << 10;
    let s = session(&[]).await;
    let srv = &s.srv;

    // Generated chunk by chunk while hashing: never held whole.
    let hasher = std::sync::Arc::new(std::sync::Mutex::new(Sha256::new()));
    let h = hasher.clone();
    let stream =
        futures_util::stream::unfold((0usize, 0x1234_5678_9abc_def1u64), move |(sent, state)| {
            let h = h.clone();
            async move {
                if sent >= SIZE {
                    return None;
                }
                let mut chunk = vec![0u8; CHUNK.min(SIZE - sent)];
                let state = fill_pattern(&mut chunk, state);
                h.lock().unwrap().update(&chunk);
                Some((Ok::<_, std::io::Error>(chunk), (sent + CHUNK, state)))
            }
        });
    let r = srv
        .req("PUT", "/big/64mib.bin", &s.token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let entry: Value = r.json().await.unwrap();
    assert_eq!(entry["size"], SIZE);
    let sent = hex::encode(hasher.lock().unwrap().clone().finalize());

    let r = srv
        .req("GET", "/big/64mib.bin", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some(SIZE.to_string()));
    let mut body = r.bytes_stream();
    let mut got = Sha256::new();
    let mut n = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len();
        got.update(&chunk);
    }
    assert_eq!(n, SIZE);
    assert_eq!(hex::encode(got.finalize()), sent, "SHA-256 of the download");

    // A range near the end of the big file.
    let r = srv
        .req("GET", "/big/64mib.bin", &s.token)
        .header("range", format!("bytes={}-", SIZE - 100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);
}

/// Regression: the decrypted cache kept a replaced or deleted version's plaintext until
/// something evicted it (on a quiet server, days). The filesystem now tells the cache which
/// versions it removes; `efsctl cache-clear` says how many bytes it found to clear.
#[tokio::test]
async fn replaced_and_deleted_versions_leave_the_cache() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let cleared = |out: String| -> u64 {
        out.trim()
            .strip_prefix("Cleared the decrypted cache (")
            .and_then(|r| r.split_once(" bytes)"))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("cache-clear output: {out}"))
    };
    let (one, two) = (pattern(300_000, 1), pattern(300_000, 2));
    srv.put_ok("/kept.bin", &s.token, one.clone()).await;
    assert!(srv.get_ok("/kept.bin", &s.token).await == one);
    assert!(
        cleared(srv.efsctl_ok(&["cache-clear"])) >= 300_000,
        "a read fills the cache"
    );
    // Replaced after it was read.
    srv.put_ok("/a.bin", &s.token, one.clone()).await;
    assert!(srv.get_ok("/a.bin", &s.token).await == one);
    srv.put_ok("/a.bin", &s.token, two.clone()).await;
    assert_eq!(cleared(srv.efsctl_ok(&["cache-clear"])), 0, "replaced");
    // Deleted after it was read: freed within seconds with nothing else asked of the
    // cache (moka frees only when called; the server's upkeep calls it every second, and
    // reports the plaintext cached versions hold).
    assert!(srv.get_ok("/a.bin", &s.token).await == two);
    let plaintext = || async {
        let m = srv.metrics().await.text().await.unwrap();
        m.lines()
            .find(|l| l.starts_with("efs_cache_plaintext_bytes"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    // 30 s at most: moka's reclamation may take several upkeeps on a busy machine.
    let reaches = |want: fn(f64) -> bool| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if want(plaintext().await) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    assert!(
        reaches(|b| b >= 300_000.0).await,
        "the read version is held"
    );
    let r = srv.req("DELETE", "/a.bin", &s.token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(reaches(|b| b == 0.0).await, "the deleted version was freed");
    assert_eq!(cleared(srv.efsctl_ok(&["cache-clear"])), 0, "deleted");
    // Deleted with its directory.
    srv.put_ok("/d/b.bin", &s.token, one.clone()).await;
    assert!(srv.get_ok("/d/b.bin", &s.token).await == one);
    let r = srv
        .req("DELETE", "/d/?recursive=true", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Its content is removed (and dropped from the cache) by the emptying that follows the
    // delete's one commit, in the background.
    assert!(reaches(|b| b == 0.0).await, "freed with /d/");
    assert_eq!(
        cleared(srv.efsctl_ok(&["cache-clear"])),
        0,
        "deleted with /d/"
    );
}

/// Regression: the path lookups reads remembered (decrypted paths and records) stayed after
/// the file was deleted, until the next lookup on that filesystem: on a quiet one, for good.
/// A write now forgets them once it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forgets_the_remembered_path_lookups() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let lookups = |out: String| -> u64 {
        out.trim()
            .rsplit_once(" and ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cache-clear output: {out}"))
    };
    srv.put_ok("/p/a.txt", &s.token, b"a".to_vec()).await;
    assert_eq!(srv.get_ok("/p/a.txt", &s.token).await, b"a");
    assert_eq!(
        lookups(srv.efsctl_ok(&["cache-clear"])),
        1,
        "a read is remembered"
    );
    assert_eq!(srv.get_ok("/p/a.txt", &s.token).await, b"a");
    let r = srv
        .req("DELETE", "/p/a.txt", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        lookups(srv.efsctl_ok(&["cache-clear"])),
        0,
        "kept after the delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_clear_works_while_serving() {
    let s = session(&[]).await;
    let srv = std::sync::Arc::new(s.srv);
    let token = s.token.clone();
    let data = pattern(1 << 20, 5);
    srv.put_ok("/hot.bin", &token, data.clone()).await;
    assert!(srv.get_ok("/hot.bin", &token).await == data);

    let out = srv.efsctl_ok(&["cache-clear"]);
    let cleared: u64 = out
        .trim()
        .strip_prefix("Cleared the decrypted cache (")
        .and_then(|r| r.split_once(" bytes) and "))
        .and_then(|(n, rest)| Some((n.parse::<u64>().ok()?, rest)))
        .and_then(|(n, rest)| {
            let l = rest.strip_suffix(" remembered path lookups")?;
            Some((n, l.parse::<usize>().ok()?))
        })
        .map(|(n, _)| n)
        .unwrap_or_else(|| panic!("cache-clear output: {out}"));
    assert!(
        cleared >= 1 << 20,
        "the cached file was in the cache: {cleared}"
    );
    // The lookup of /hot.bin was remembered, and is forgotten now (a second clear finds
    // none left).
    assert!(
        out.trim().ends_with(" 1 remembered path lookups"),
        "cache-clear output: {out}"
    );
    let again = srv.efsctl_ok(&["cache-clear"]);
    assert!(
        again.trim().ends_with(" 0 remembered path lookups"),
        "cache-clear output: {again}"
    );

    // Readers keep reading while the cache is cleared again and again.
    let mut readers = Vec::new();
    for _ in 0..2 {
        let srv = srv.clone();
        let token = token.clone();
        let data = data.clone();
        readers.push(tokio::spawn(async move {
            for _ in 0..15 {
                assert!(srv.get_ok("/hot.bin", &token).await == data);
            }
        }));
    }
    for _ in 0..3 {
        let srv2 = srv.clone();
        let out = tokio::task::spawn_blocking(move || srv2.efsctl_ok(&["cache-clear"]))
            .await
            .unwrap();
        assert!(out.starts_with("Cleared the decrypted cache"), "{out}");
    }
    for r in readers {
        r.await.unwrap();
    }
    // Right after a clear, the cache is empty.
    let out = srv.efsctl_ok(&["cache-clear"]);
    let out2 = srv.efsctl_ok(&["cache-clear"]);
    assert!(out.starts_with("Cleared the decrypted cache"), "{out}");
    assert_eq!(
        out2.trim(),
        "Cleared the decrypted cache (0 bytes) and 0 remembered path lookups"
    );
    assert!(srv.get_ok("/hot.bin", &token).await == data);
}

#[tokio::test]
async fn fsck_is_clean_after_a_stop_and_finds_corruption() {
    let s = session(&[]).await;
    let mut srv = s.srv;
    let t = &s.token;
    srv.put_ok("/patients/173/prescription.pdf", t, pattern(1000, 1))
        .await;
    srv.put_ok("/patients/173/scan.bin", t, pattern(300_000, 2))
        .await;
    srv.put_ok("/patients/173/scan.bin", t, pattern(400_000, 3))
        .await; // replaces a blob
    srv.put_ok("/tmp/gone.bin", t, pattern(300_000, 4)).await;
    srv.req("DELETE", "/tmp/gone.bin", t).send().await.unwrap();
    srv.put_ok("/tmp/small", t, "small").await;
    srv.req("MOVE", "/tmp", t)
        .header("destination", "/archive/tmp")
        .send()
        .await
        .unwrap();

    // While running: through the admin socket.
    let out = srv.efsctl(&["fsck", "--fs", "files"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("0 errors, 0 orphan blobs, 0 orphan inline contents"),
        "{text}"
    );

    let status = srv.stop().await.expect("the server was running");
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    assert!(srv.stdout().contains("Stopped."));
    assert!(
        !srv.data.join("system").join("admin.sock").exists(),
        "the admin socket is removed at stop"
    );

    // Stopped: efsctl opens the data dir itself (the generated key part is found).
    let out = srv.efsctl(&["fsck", "--fs", "files"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("fsck 'files':"), "{text}");
    assert!(text.contains("3 files verified"), "{text}");
    assert!(
        text.contains("0 errors, 0 orphan blobs, 0 orphan inline contents"),
        "{text}"
    );
    let out = srv.efsctl_ok(&["gc", "--fs", "files", "--grace", "0"]);
    assert!(
        out.contains("removed 0 orphan blobs, 0 orphan inline contents and 0 stale partial writes"),
        "{out}"
    );

    // Flip one byte of a blob: fsck must say so, and exit 3.
    let blob = all_files(&srv.data.join("fs"))
        .into_iter()
        .filter(|(p, b)| p.components().any(|c| c.as_os_str() == "blobs") && b.len() > 300_000)
        .map(|(p, _)| p)
        .next()
        .expect("a blob file for the 400 kB scan");
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    let out = srv.efsctl(&["fsck", "--fs", "files"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(3),
        "fsck finds a flipped byte: {text}"
    );
    assert!(
        text.contains("1 errors") || text.contains("error:"),
        "{text}"
    );
}

/// An upload whose body stops arriving is abandoned after `--body-timeout` (here 1 s): 408,
/// nothing visible, no partial blob left; the previous version stays; the server serves on.
/// A JSON body that stops arriving gets 408 too.
#[tokio::test]
async fn a_stalled_upload_is_abandoned_and_leaves_nothing() {
    let s = session(&["--body-timeout", "1"]).await;
    let srv = &s.srv;
    srv.put_ok("/stall/kept.bin", &s.token, b"version 1".to_vec())
        .await;
    for (path, sent) in [("/stall/new.bin", 200_000), ("/stall/kept.bin", 10)] {
        // Announce 500,000 bytes, send `sent` (past the inline size for the first: a blob
        // is being written), then nothing more.
        let mut req = format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
             Content-Length: 500000\r\nConnection: close\r\n\r\n",
            s.token
        )
        .into_bytes();
        req.extend_from_slice(&pattern(sent, 9));
        let t0 = std::time::Instant::now();
        let r = srv.raw_http(req).await;
        assert_eq!(r.status, 408, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"], "request_timeout");
        assert!(t0.elapsed() < std::time::Duration::from_secs(30));
    }
    // A JSON body (a login challenge) that stops arriving: 408 too.
    let req = b"POST /_efs/auth/challenge HTTP/1.1\r\nHost: localhost\r\n\
        Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n\
        {\"user\": \"ap"
        .to_vec();
    let r = srv.raw_http(req).await;
    assert_eq!(r.status, 408, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "request_timeout");
    assert_eq!(srv.get("/stall/new.bin", &s.token).await.0, 404);
    assert_eq!(srv.get_ok("/stall/kept.bin", &s.token).await, b"version 1");
    for fs_dir in std::fs::read_dir(srv.data.join("fs")).unwrap() {
        let tmp = fs_dir.unwrap().path().join("blobs").join("tmp");
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
        assert!(left.is_empty(), "partial writes left in {}", tmp.display());
    }
    // A body that keeps coming, slower than the timeout in total, is fine (gaps of 125 ms,
    // far below the 1 s, so that a busy machine does not stretch one past it).
    let chunks = (0..12).map(|i| {
        let c = pattern(20_000, 40 + i);
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(125)).await;
            Ok::<_, std::io::Error>(c)
        }
    });
    let want: Vec<u8> = (0..12).flat_map(|i| pattern(20_000, 40 + i)).collect();
    let r = srv
        .req("PUT", "/stall/slow.bin", &s.token)
        .body(reqwest::Body::wrap_stream(
            futures_util::stream::iter(chunks).then(|f| f),
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(srv.get_ok("/stall/slow.bin", &s.token).await, want);
}

/// Without `--metrics-token-file` metrics are off (404, whatever the request carries); a token file
/// that is too short stops the server at start, naming the problem but not the token.
#[tokio::test]
async fn metrics_are_off_without_a_token_and_a_weak_token_is_refused() {
    let s = session(&[NO_METRICS]).await;
    s.srv.put_ok("/m/f", &s.token, "x").await;
    for token in [None, Some(METRICS_TOKEN), Some(s.token.as_str())] {
        let mut rb = s.srv.client.get(s.srv.url("/_efs/metrics"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let msg = assert_error(rb.send().await.unwrap(), 404, "not_found").await;
        assert!(msg.contains("--metrics-token-file"), "{msg}");
    }

    let dir = std::sync::Arc::new(new_tempdir());
    let weak = dir.path().join("weak-token");
    std::fs::write(&weak, "pass123\n").unwrap();
    let f = TestServer::try_start_in(
        dir,
        &[NO_METRICS, "--metrics-token-file", weak.to_str().unwrap()],
        &[],
    )
    .err()
    .expect("a 7-byte metrics token is refused");
    assert!(f.stderr.contains("shorter than 16 bytes"), "{}", f.stderr);
    assert!(!f.stderr.contains("pass123"), "{}", f.stderr);
}

/// The counters of refusals are in a fresh server's metrics at 0 (an alert rule on one
/// sees a series before the first refusal), with the labels they are counted under.
#[tokio::test]
async fn a_fresh_server_shows_its_refusal_counters_at_zero() {
    let srv = TestServer::start(&[]);
    let m = srv.metrics().await.text().await.unwrap();
    for series in [
        "efs_connections_refused_total{reason=\"per_address\"} 0",
        "efs_requests_refused_total{reason=\"open_files\"} 0",
        "efs_accept_failures_total 0",
    ] {
        assert!(m.lines().any(|l| l == series), "{series} in:\n{m}");
    }
}

/// The metrics token is read from `Authorization` with the scheme in any case, as login
/// tokens are; wrong tokens count against the address: past 20 in a minute, `/_efs/metrics`
/// answers 429 with `Retry-After` there, the right token included (else a guesser would
/// still learn when it hit), while logins and files go on.
#[tokio::test]
async fn metrics_token_guesses_are_limited_per_address() {
    let s = session(&[]).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = s
            .srv
            .client
            .get(s.srv.url("/_efs/metrics"))
            .header("authorization", format!("{scheme} {METRICS_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    // Requests with no token are not guesses: they do not count.
    for _ in 0..25 {
        let r = s
            .srv
            .client
            .get(s.srv.url("/_efs/metrics"))
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    for i in 0..20 {
        let r = s
            .srv
            .client
            .get(s.srv.url("/_efs/metrics"))
            .bearer_auth(format!("guess-{i:04}-0123456789abcdef"))
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    for _ in 0..2 {
        let r = s.srv.metrics().await;
        assert!(header(&r, "retry-after").is_some());
        let msg = assert_error(r, 429, "rate_limited").await;
        assert!(msg.contains("wrong metrics tokens"), "{msg}");
    }
    // Nothing else is refused to the address.
    s.srv.put_ok("/m/f", &s.token, "x").await;
    s.srv.login("app", &s.key, None).await;
}

#[tokio::test]
async fn control_routes() {
    let s = session(&[]).await;
    let srv = &s.srv;
    // Health: no token needed.
    let r = srv
        .client
        .get(srv.url("/_efs/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));

    // OpenAPI.
    let r = srv
        .client
        .get(srv.url("/_efs/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    let api: Value = r.json().await.unwrap();
    assert!(
        api["openapi"].as_str().unwrap().starts_with('3'),
        "{}",
        api["openapi"]
    );
    assert!(api["paths"].get("/_efs/auth/token").is_some());

    // The token-verification key verifies our token.
    let r = srv
        .client
        .get(srv.url("/_efs/auth/public-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pem = r.text().await.unwrap();
    use ed25519_dalek::Verifier;
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let vk = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem).expect("a PEM Ed25519 key");
    let (signed, sig) = s.token.rsplit_once('.').unwrap();
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    vk.verify(signed.as_bytes(), &sig)
        .expect("the published key verifies the token");
    assert_eq!(jwt_header(&s.token)["alg"], "EdDSA");
    assert_eq!(jwt_claims(&s.token)["iss"], srv.server_id.as_str());

    // Metrics, after some traffic; no path in any label.
    srv.put_ok("/patients/173/prescription.pdf", &s.token, "x")
        .await;
    srv.get_ok("/patients/173/prescription.pdf", &s.token).await;
    srv.get_ok("/patients/173/prescription.pdf", &s.token).await;
    // A failed login (a nonce never issued).
    let r = srv
        .client
        .post(srv.url("/_efs/auth/token"))
        .json(&serde_json::json!({
            "user": "nobody-here",
            "nonce": "A".repeat(43),
            "signature": "A".repeat(86),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Metrics only with the metrics token (a user's login is not it).
    for r in [
        srv.client.get(srv.url("/_efs/metrics")),
        srv.client
            .get(srv.url("/_efs/metrics"))
            .bearer_auth("test-metrics-token-012345678"),
        srv.client
            .get(srv.url("/_efs/metrics"))
            .bearer_auth(&s.token),
    ] {
        let r = r.send().await.unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    // Methods EFS does not serve share one label: no series per made-up method.
    for m in ["FROBNICATE", "XYZZY-1"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let r = srv
            .client
            .request(method, srv.url("/any/file"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{m}");
    }
    let r = srv.metrics().await;
    assert_eq!(r.status(), 200);
    assert!(
        header(&r, "content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let m = r.text().await.unwrap();
    assert!(m.contains("efs_http_requests_total{"), "{m}");
    assert!(m.contains("route=\"file\""), "{m}");
    assert!(m.contains("method=\"OTHER\""), "{m}");
    assert!(!m.contains("FROBNICATE") && !m.contains("XYZZY"), "{m}");
    assert!(m.contains("efs_logins_total{result=\"ok\"}"), "{m}");
    // Every series issue 4 names: failures, bytes both ways, latency as a histogram, cache.
    for series in [
        "efs_logins_total{result=\"failed\"}",
        "efs_bytes_in_total",
        "efs_bytes_out_total",
        "efs_http_request_duration_seconds_bucket{",
        "efs_http_request_duration_seconds_count{",
        "efs_cache_hits_total",
        "efs_cache_misses_total",
    ] {
        assert!(m.contains(series), "{series} missing from\n{m}");
    }
    assert!(
        !m.contains("patients") && !m.contains("prescription"),
        "{m}"
    );

    // An unknown control route is not a file.
    assert_error(
        srv.req("GET", "/_efs/nothing", &s.token)
            .send()
            .await
            .unwrap(),
        400,
        "invalid_path",
    )
    .await;
    // Control routes refuse other methods.
    let r = srv
        .client
        .get(srv.url("/_efs/auth/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn a_user_logged_in_with_an_efsctl_generated_key_uses_files() {
    let srv = TestServer::start(&[]);
    srv.create_fs("gen");
    let key = srv.create_user_generated("svc1", "gen");
    let token = srv.login("svc1", &key, None).await;
    srv.put_ok("/x.txt", &token, "hello").await;
    assert_eq!(srv.get_ok("/x.txt", &token).await, b"hello");
    let users = srv.efsctl_ok(&["list-users"]);
    assert!(users.lines().any(|l| l.starts_with("svc1\tgen")), "{users}");
    let fss = srv.efsctl_ok(&["list-fs"]);
    assert!(fss.lines().any(|l| l.starts_with("gen\t")), "{fss}");
}

#[tokio::test]
async fn a_reader_finishes_with_the_version_it_started_with() {
    use sha2::{Digest, Sha256};
    const SIZE: usize = 24 << 20;
    // No cache: the download streams from the blob while it is replaced and deleted.
    let s = session(&["--cache-size", "0"]).await;
    let srv = &s.srv;
    let old = pattern(SIZE, 61);
    let old_sha = sha256_hex(&old);
    srv.put_ok("/v.bin", &s.token, old).await;

    let r = srv.req("GET", "/v.bin", &s.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut h = Sha256::new();
    let mut n = 0;
    // Read a little, then replace the file, then delete it, then read the rest.
    while n < 64 * 1024 {
        let c = body.next().await.expect("more body").unwrap();
        n += c.len();
        h.update(&c);
    }
    let new = pattern(SIZE, 62);
    srv.put_ok("/v.bin", &s.token, new.clone()).await;
    assert!(
        srv.get_ok("/v.bin", &s.token).await == new,
        "new readers see the new version"
    );
    let r = srv.req("DELETE", "/v.bin", &s.token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    while let Some(c) = body.next().await {
        let c = c.expect("the old version keeps streaming");
        n += c.len();
        h.update(&c);
    }
    assert_eq!(n, SIZE);
    assert_eq!(hex::encode(h.finalize()), old_sha, "the old version, whole");
    assert_eq!(srv.get("/v.bin", &s.token).await.0, 404);
}

/// `--index-cache-size`: with a 64 KiB page cache the index is read mostly from the kernel's
/// page cache, every page evicted again and again; files, overwrites and listings come back
/// the same.
#[tokio::test]
async fn a_tiny_index_cache_serves_the_same() {
    let s = session(&["--index-cache-size", "65536"]).await;
    let (srv, tok) = (&s.srv, s.token.as_str());
    for i in 0..200u32 {
        srv.put_ok(
            &format!("/d{}/f{i}", i % 7),
            tok,
            pattern(100 + i as usize, i as u64),
        )
        .await;
    }
    for i in (0..200u32).step_by(3) {
        srv.put_ok(
            &format!("/d{}/f{i}", i % 7),
            tok,
            pattern(50, 1000 + i as u64),
        )
        .await;
    }
    for i in 0..200u32 {
        let want = if i % 3 == 0 {
            pattern(50, 1000 + i as u64)
        } else {
            pattern(100 + i as usize, i as u64)
        };
        assert_eq!(
            srv.get_ok(&format!("/d{}/f{i}", i % 7), tok).await,
            want,
            "f{i}"
        );
    }
    let listed: usize = {
        let mut n = 0;
        for d in 0..7 {
            n += srv.list_all(&format!("/d{d}/"), tok, 10).await.len();
        }
        n
    };
    assert_eq!(listed, 200);
    // A bad value is refused at start, with the option named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_efs-server"))
        .args(["--index-cache-size", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--index-cache-size"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A control route called with the wrong method answers 405 with the JSON error body every
/// error has (axum's own 405 had an empty body).
#[tokio::test]
async fn a_wrong_method_on_a_control_route_is_a_json_405() {
    let s = session(&[]).await;
    let srv = &s.srv;
    for (method, path) in [
        ("DELETE", "/_efs/health"),
        ("PUT", "/_efs/auth/challenge"),
        ("GET", "/_efs/move"),
    ] {
        let r = srv.req(method, path, &s.token).send().await.unwrap();
        let allow = header(&r, "allow");
        assert_error(r, 405, "method_not_allowed").await;
        assert!(allow.is_some(), "{method} {path}: no Allow header");
    }
}

/// A `HEAD` answer has no body over HTTP/2 as over HTTP/1.1, errors included (their JSON
/// body is dropped), and says how long the `GET` answer would be. Over HTTP/2 a body on a
/// `HEAD` answer makes the client reset the stream.
#[tokio::test]
async fn head_answers_carry_no_body_over_http2_and_http1() {
    let s = session(&[]).await;
    let srv = &s.srv;
    srv.put_ok("/docs/readme.txt", &s.token, "readme, 19 bytes...")
        .await;
    // A directory's HEAD announces the length of the listing its GET sends (it said 0).
    let listing = srv.req("GET", "/docs/", &s.token).send().await.unwrap();
    assert_eq!(
        header(&listing, "cache-control").as_deref(),
        Some("no-store")
    );
    let listed = listing.bytes().await.unwrap().len().to_string();
    let cases = [
        ("/docs/readme.txt", 200, Some("19")),
        ("/docs/", 200, Some(listed.as_str())),
        ("/missing.txt", 404, None),
        ("/docs", 409, None),
        ("/bad%2Fname", 400, None),
    ];
    for (path, status, length) in cases {
        let r = srv.req("HEAD", path, &s.token).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{path}");
        assert_eq!(r.status(), status, "{path}");
        let announced = header(&r, "content-length");
        if let Some(want) = length {
            assert_eq!(announced.as_deref(), Some(want), "{path}");
        }
        let body = r
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("HEAD {path}: the stream did not end cleanly: {e}"));
        assert!(body.is_empty(), "HEAD {path} over HTTP/2 sent a body");
        // curl, over each protocol: a clean end (exit 0) and the same status.
        for proto in ["--http2", "--http1.1"] {
            let url = srv.url(path);
            let auth = format!("Authorization: Bearer {}", s.token);
            let out = srv.curl(&[proto, "-I", "-H", &auth, &url]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "curl {proto} -I {path}: {}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.lines()
                    .next()
                    .is_some_and(|l| l.contains(&status.to_string())),
                "curl {proto} -I {path}: {text}"
            );
        }
    }
}

/// Regression: request headers could be 64 KiB over HTTP/1.1 but only 16 KiB over HTTP/2
/// (hyper's default there): a long path with its `Destination` was served over one and 431
/// over the other. Both take 64 KiB now, and refuse more.
#[tokio::test]
async fn request_headers_have_one_limit_over_http2_and_http1() {
    let s = session(&[]).await;
    let srv = &s.srv;
    srv.put_ok("/a.txt", &s.token, "a").await;
    let cert = reqwest::Certificate::from_pem(&srv.cert_pem).unwrap();
    let http1 = reqwest::Client::builder()
        .tls_certs_only([cert])
        .no_proxy()
        .http1_only()
        .build()
        .unwrap();
    for (pad, fits) in [(40 << 10, true), (100 << 10, false)] {
        let filler = "x".repeat(pad);
        let h2 = srv
            .req("GET", "/a.txt", &s.token)
            .header("x-filler", &filler);
        let h1 = http1
            .get(srv.url("/a.txt"))
            .bearer_auth(&s.token)
            .header("x-filler", &filler);
        for (proto, req) in [("HTTP/2", h2), ("HTTP/1.1", h1)] {
            match req.send().await {
                Ok(r) if fits => {
                    assert_eq!(r.status(), 200, "{proto}, {pad} bytes of headers");
                    assert_eq!(r.bytes().await.unwrap(), "a");
                }
                Ok(r) => assert_eq!(r.status(), 431, "{proto}, {pad} bytes of headers"),
                // Refused by closing the connection or resetting the stream: also a no.
                Err(e) => assert!(!fits, "{proto}, {pad} bytes of headers: {e}"),
            }
        }
    }
}

/// An upload its precondition or a directory at its path refuses is refused before its
/// body is read: a 100 MiB PUT announced with `If-None-Match: *` onto an existing file (or
/// onto a directory) was received, encrypted and written before the 412 (409). Here no body
/// is sent at all: the answer comes at once, where the server waited for it (408 after the
/// body timeout). The precondition comes first, as for directories: `If-None-Match: *` onto
/// a directory is 412.
#[tokio::test]
async fn a_refused_upload_is_refused_before_its_body() {
    let s = session(&["--body-timeout", "5"]).await;
    let srv = &s.srv;
    srv.put_ok("/exists.bin", &s.token, b"here".to_vec()).await;
    let r = srv.req("MKCOL", "/dir/", &s.token).send().await.unwrap();
    assert_eq!(r.status(), 201);
    for (path, cond, want) in [
        ("/exists.bin", "If-None-Match: *\r\n", 412),
        ("/dir", "", 409),
        ("/dir", "If-None-Match: *\r\n", 412),
        ("/new.bin", "If-Match: *\r\n", 412),
    ] {
        let r = srv
            .raw_http(
                format!(
                    "PUT {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n{cond}Content-Length: 104857600\r\nConnection: close\r\n\r\n",
                    s.token
                )
                .into_bytes(),
            )
            .await;
        // (Without the early check: 408, once the body timeout passed.)
        assert_eq!(
            r.status,
            want,
            "{path} {cond:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(srv.get_ok("/exists.bin", &s.token).await, b"here");
    assert_eq!(srv.get("/new.bin", &s.token).await.0, 404);
}

/// A listing's cursor is sealed: it was the hex of the index key the page ended at, which
/// beside the directory's path in the same URL (proxy and access logs keep both) tied that
/// directory to its entries in a copy of the data dir. Its bytes, read as hex or as
/// base64url, now appear nowhere in the data dir; it still pages, and a cursor the server
/// did not make (an old hex one included) is a 400.
#[tokio::test]
async fn listing_cursors_do_not_show_index_keys() {
    use base64::Engine as _;
    let s = session(&[]).await;
    let srv = &s.srv;
    for i in 0..5 {
        srv.put_ok(&format!("/p/173/r{i}.pdf"), &s.token, b"x".to_vec())
            .await;
    }
    let page: Value = srv
        .req("GET", "/p/173/?limit=2", &s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cursor = page["next_cursor"].as_str().expect("more pages").to_owned();
    let mut forms = Vec::new();
    if let Ok(b) = hex::decode(&cursor) {
        forms.push(b);
    }
    if let Ok(b) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&cursor) {
        forms.push(b);
    }
    assert!(!forms.is_empty(), "{cursor}");
    let mut files = vec![srv.data.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&p) {
            for f in &forms {
                assert!(
                    !bytes.windows(f.len()).any(|w| w == f.as_slice()),
                    "the cursor's bytes are in {}",
                    p.display()
                );
            }
        }
    }
    // It pages on.
    let rest = srv
        .req("GET", &format!("/p/173/?cursor={cursor}"), &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 200);
    let rest: Value = rest.json().await.unwrap();
    assert_eq!(rest["entries"].as_array().unwrap().len(), 3, "{rest}");
    // A cursor of another directory: 400 (it listed that one from its start or from past its
    // end, by where the two directories' tags sort).
    srv.put_ok("/p/174/s.pdf", &s.token, b"y".to_vec()).await;
    for dir in ["/p/174/", "/p/", "/"] {
        let r = srv
            .req("GET", &format!("{dir}?cursor={cursor}"), &s.token)
            .send()
            .await
            .unwrap();
        assert_error(r, 400, "bad_request").await;
    }
    // A cursor it did not make: 400.
    for bad in ["00".repeat(32), format!("{cursor}A"), "AAAA".into()] {
        let r = srv
            .req("GET", &format!("/p/173/?cursor={bad}"), &s.token)
            .send()
            .await
            .unwrap();
        assert_error(r, 400, "bad_request").await;
    }
}

/// Conditions and steering headers given twice, or together where they cannot both hold
/// (found by a black-box review):
/// - `If-Match: *` with `If-None-Match: *` on a PUT, DELETE or MOVE is 412 and changes
///   nothing (only `If-Match` was looked at: the file was replaced, deleted or moved);
/// - the lines of a list header are one list: `If-None-Match: "other"` and
///   `If-None-Match: <current>` on two lines give 304 (only the first line was read);
/// - two `If-Modified-Since` lines are ignored (RFC 9110 §13.1.3), not the first one taken;
/// - two `Destination` or `Overwrite` headers, or an `Overwrite` other than T or F, are 400
///   (the first one won; `Overwrite: X` was F); two `Authorization` headers are no token.
#[tokio::test]
async fn conditions_given_twice_or_both_are_all_checked() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let etag = srv.put_ok("/c.txt", &s.token, b"original".to_vec()).await;
    for method in ["PUT", "DELETE", "MOVE"] {
        let r = srv
            .req(method, "/c.txt", &s.token)
            .header("if-match", "*")
            .header("if-none-match", "*")
            .header("destination", "/moved.txt")
            .body("REPLACED")
            .send()
            .await
            .unwrap();
        assert_error(r, 412, "precondition_failed").await;
        assert_eq!(
            srv.get_ok("/c.txt", &s.token).await,
            b"original",
            "{method}"
        );
    }
    assert_eq!(srv.get("/moved.txt", &s.token).await.0, 404);

    let r = srv
        .req("GET", "/c.txt", &s.token)
        .header("if-none-match", "\"00000000000000000000000000000000\"")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304, "the second line's tag is the current one");
    let r = srv
        .req("GET", "/c.txt", &s.token)
        .header("if-modified-since", "Thu, 01 Jan 2099 00:00:00 GMT")
        .header("if-modified-since", "Thu, 01 Jan 2099 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "two If-Modified-Since lines are ignored");

    let r = srv
        .req("MOVE", "/c.txt", &s.token)
        .header("destination", "/d1.txt")
        .header("destination", "/d2.txt")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    for bad in ["X", "TRUE", ""] {
        let r = srv
            .req("MOVE", "/c.txt", &s.token)
            .header("destination", "/d1.txt")
            .header("overwrite", bad)
            .send()
            .await
            .unwrap();
        assert_error(r, 400, "bad_request").await;
    }
    let r = srv
        .req("MOVE", "/c.txt", &s.token)
        .header("destination", "/d1.txt")
        .header("overwrite", "T")
        .header("overwrite", "F")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    assert_eq!(srv.get("/d1.txt", &s.token).await.0, 404, "nothing moved");
    srv.put_ok("/d1.txt", &s.token, b"in the way".to_vec())
        .await;
    let r = srv
        .req("MOVE", "/c.txt", &s.token)
        .header("destination", "/d1.txt")
        .header("overwrite", "t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "t is T");
    assert_eq!(srv.get_ok("/d1.txt", &s.token).await, b"original");

    let r = srv
        .req("GET", "/d1.txt", &s.token)
        .header("authorization", format!("Bearer {}", s.token))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
}

/// An upload that waits for `100 Continue` before sending its body, refused by its condition
/// (or its announced size) before the body is read, gets the refusal at once and no `100`: it
/// got `100 Continue` (the refusal's answer read the small body first, for HTTP/2 clients),
/// sent its body for nothing and only then the 412.
#[tokio::test]
async fn a_refused_upload_waiting_for_100_continue_gets_no_100() {
    let s = session(&["--max-body-size", "1000"]).await;
    let srv = &s.srv;
    srv.put_ok("/exists.txt", &s.token, b"kept".to_vec()).await;
    for (extra, len, status) in [("If-None-Match: *\r\n", 5, 412), ("", 5000, 413)] {
        let head = format!(
            "PUT /exists.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nExpect: 100-continue\r\nContent-Length: {len}\r\n{extra}\r\n",
            s.token
        );
        let r = srv.raw_http(head.into_bytes()).await;
        assert_eq!(
            r.status, status,
            "the first answer is the refusal, not 100 Continue"
        );
    }
    assert_eq!(srv.get_ok("/exists.txt", &s.token).await, b"kept");
}

/// A body sent to make a directory (`PUT /dir/ --data-binary @file`: a file's upload whose
/// path ends in '/' by mistake) is refused, with its length announced or chunked, and
/// nothing is made: the directory was made and the body thrown away under a `201`.
#[tokio::test]
async fn a_directory_is_made_without_a_body() {
    let s = session(&[]).await;
    let srv = &s.srv;
    let r = srv
        .req("PUT", "/with-body/", &s.token)
        .body("content")
        .send()
        .await
        .unwrap();
    let msg = assert_error(r, 400, "bad_request").await;
    assert!(msg.contains("leave out the trailing '/'"), "{msg}");
    let head = format!(
        "POST /chunked/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n7\r\ncontent\r\n0\r\n\r\n",
        s.token
    );
    assert_eq!(srv.raw_http(head.into_bytes()).await.status, 400);
    for dir in ["/with-body/", "/chunked/"] {
        assert_eq!(srv.get(dir, &s.token).await.0, 404, "{dir} not made");
    }
    // Without a body (none, empty, an empty chunked one): made.
    let r = srv
        .req("PUT", "/empty/", &s.token)
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = srv.req("MKCOL", "/mkcol", &s.token).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let head = format!(
        "POST /empty-chunked/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        s.token
    );
    assert_eq!(srv.raw_http(head.into_bytes()).await.status, 201);
    for dir in ["/empty/", "/mkcol/", "/empty-chunked/"] {
        assert_eq!(srv.get(dir, &s.token).await.0, 200, "{dir} made");
    }
}

/// A refused move says what was wrong with it: a file moved below its own path, and a move
/// onto the root, were "cannot move a directory into itself" and "the root cannot be moved".
#[tokio::test]
async fn a_refused_move_names_its_reason() {
    let s = session(&[]).await;
    let srv = &s.srv;
    srv.put_ok("/f.txt", &s.token, b"x".to_vec()).await;
    let r = srv
        .req("MOVE", "/f.txt", &s.token)
        .header("destination", "/f.txt/below")
        .send()
        .await
        .unwrap();
    let msg = assert_error(r, 409, "conflict").await;
    assert!(msg.contains("inside what is moved"), "{msg}");
    let r = srv
        .req("POST", "/_efs/move", &s.token)
        .json(&serde_json::json!({"from": "/f.txt", "to": "/"}))
        .send()
        .await
        .unwrap();
    let msg = assert_error(r, 409, "conflict").await;
    assert!(msg.contains("onto the root"), "{msg}");
}

/// An HTTP/1.1 request must carry exactly one `Host` (RFC 9112 §3.2): without one, or with
/// two, it is a 400 before anything is read or written (hyper served it). HTTP/1.0 has no
/// such rule, and an absolute-form target is accepted as RFC 9112 §3.2.2 says.
#[tokio::test]
async fn an_http_1_1_request_needs_one_host() {
    let s = session(&[]).await;
    let srv = &s.srv;
    srv.put_ok("/h.txt", &s.token, b"here".to_vec()).await;
    let ask = |version: &str, target: &str, hosts: &str| {
        format!(
            "GET {target} {version}\r\n{hosts}Connection: close\r\n\
             Authorization: Bearer {}\r\n\r\n",
            s.token
        )
        .into_bytes()
    };
    for (hosts, status) in [
        ("", 400),
        ("Host: localhost\r\nHost: other\r\n", 400),
        ("Host: localhost\r\n", 200),
    ] {
        let r = srv.raw_http(ask("HTTP/1.1", "/h.txt", hosts)).await;
        assert_eq!(r.status, status, "hosts {hosts:?}");
        if status == 400 {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["error"], "bad_request", "{v}");
            assert!(v["message"].as_str().unwrap().contains("Host"), "{v}");
        } else {
            assert_eq!(r.body, b"here");
        }
    }
    let r = srv.raw_http(ask("HTTP/1.0", "/h.txt", "")).await;
    assert_eq!(r.status, 200);
    let absolute = format!("https://localhost:{}/h.txt", srv.addr.port());
    let r = srv
        .raw_http(ask("HTTP/1.1", &absolute, "Host: localhost\r\n"))
        .await;
    assert_eq!(r.status, 200);
    // A control route too.
    let r = srv
        .raw_http(b"GET /_efs/health HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec())
        .await;
    assert_eq!(r.status, 400);
}

/// A `Destination` with raw bytes above 0x7f (an unencoded `ü`) is said to be not ASCII
/// text, not missing ("MOVE needs a Destination header"); nothing moves.
#[tokio::test]
async fn a_destination_that_is_not_ascii_text_is_named() {
    let s = session(&[]).await;
    let srv = &s.srv;
    srv.put_ok("/from.txt", &s.token, b"stays".to_vec()).await;
    let mut req = format!(
        "MOVE /from.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nDestination: /to-",
        s.token
    )
    .into_bytes();
    req.extend_from_slice("ü.txt\r\n\r\n".as_bytes());
    let r = srv.raw_http(req).await;
    assert_eq!(r.status, 400);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("not ASCII text"),
        "{v}"
    );
    assert_eq!(srv.get_ok("/from.txt", &s.token).await, b"stays");
}
