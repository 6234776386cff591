//! Tampering with the stored data of a real server (issue 6, item 2): blob files, inline
//! contents and index records are changed on disk the way someone holding the data dir
//! could — bytes flipped, truncated, extended, segments swapped, two files' content
//! swapped, an older version put back — and each change must be an error to the client
//! (never a 200 with wrong bytes; a download already started is cut off), a log line
//! that names the failure without the path, and an `efsctl fsck` error (exit 3).
//!
//! Blobs are read per request, so they are changed while the server runs (with the cache
//! off). The index is a redb file the server holds locked, so it is changed with the
//! server stopped, many cases at once (each on its own file), to restart it rarely.
//! Each test prints how many cases it tried.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use common::*;
use futures_util::StreamExt;

/// Plaintext bytes per segment, sealed bytes per full segment, header bytes.
const SEG: usize = 65_536;
const ENC_SEG: usize = SEG + 16;
const HDR: usize = 56;

/// What a GET gave.
#[derive(Debug)]
enum Got {
    /// An error status (the body was read).
    Status(u16),
    /// A 200/206 whose body was cut off: the bytes received before the cut.
    Aborted(Vec<u8>),
    /// A complete 200/206 body.
    Served(Vec<u8>),
}

async fn fetch(srv: &TestServer, path: &str, token: &str) -> Got {
    let r = match srv.req("GET", path, token).send().await {
        Ok(r) => r,
        Err(_) => return Got::Aborted(Vec::new()),
    };
    let status = r.status().as_u16();
    if status != 200 && status != 206 {
        let _ = r.bytes().await;
        return Got::Status(status);
    }
    let mut body = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => body.extend_from_slice(&c),
            Err(_) => return Got::Aborted(body),
        }
    }
    Got::Served(body)
}

/// Asserts that a GET of tampered content failed: an error status (5xx), or a cut-off
/// body that is a strict prefix of the honest content. Returns whether it was cut off.
fn assert_refused(got: &Got, honest: &[u8], case: &str) -> bool {
    match got {
        Got::Status(s) => {
            assert!(*s >= 500, "{case}: status {s}");
            false
        }
        Got::Aborted(prefix) => {
            assert!(
                prefix.len() < honest.len() && honest.starts_with(prefix),
                "{case}: a cut-off body must be a strict prefix of the honest content \
                 ({} bytes received)",
                prefix.len()
            );
            true
        }
        Got::Served(b) => panic!(
            "{case}: served {} bytes with a success status (honest: {} bytes, equal: {})",
            b.len(),
            honest.len(),
            b == honest
        ),
    }
}

/// Every blob file under the data dir's filesystems (not partial writes).
fn blob_files(data: &Path) -> Vec<PathBuf> {
    all_files(&data.join("fs"))
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| {
            let rel = p.strip_prefix(data).expect("under the data dir");
            rel.components().any(|c| c.as_os_str() == "blobs")
                && !rel.components().any(|c| c.as_os_str() == "tmp")
        })
        .collect()
}

/// The blob file that appeared since `before`.
fn new_blob(data: &Path, before: &[PathBuf]) -> PathBuf {
    let now = blob_files(data);
    let fresh: Vec<_> = now.into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(fresh.len(), 1, "one new blob: {fresh:?}");
    fresh.into_iter().next().unwrap()
}

fn fsck_text(srv: &TestServer) -> (Option<i32>, String) {
    let out = srv.efsctl(&["fsck", "--fs", "files"]);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Lines of the server's log (stderr) at warn or error level.
fn log_alarms(srv: &TestServer) -> Vec<String> {
    srv.stderr()
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .map(str::to_owned)
        .collect()
}

/// The offsets to flip in a content of `len` sealed bytes: every header byte, every byte
/// within 24 of every segment boundary and of the end, and a sample (every 997th) of the
/// rest.
fn flip_offsets(len: usize) -> Vec<usize> {
    let mut set = std::collections::BTreeSet::new();
    set.extend(0..HDR.min(len));
    let mut b = HDR + ENC_SEG;
    while b < len {
        set.extend(b.saturating_sub(24)..(b + 24).min(len));
        b += ENC_SEG;
    }
    set.extend(len.saturating_sub(24)..len);
    set.extend((HDR..len).step_by(997));
    set.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blobs_are_never_served() {
    let s = session(&["--cache-size", "0"]).await;
    let (srv, tok) = (&s.srv, s.token.as_str());
    // A 3.5-segment file, with an older version whose blob the attacker kept; another
    // file of the same length; a 20.5-segment file, longer than the first batch a GET
    // checks before answering.
    let len = SEG * 7 / 2;
    let old = pattern(len, 1);
    let honest = pattern(len, 2);
    let other = pattern(len, 3);
    let long = pattern(SEG * 41 / 2, 4);
    let b0 = blob_files(&srv.data);
    srv.put_ok("/a.bin", tok, old.clone()).await;
    let old_blob = std::fs::read(new_blob(&srv.data, &b0)).unwrap();
    srv.put_ok("/a.bin", tok, honest.clone()).await;
    let a = new_blob(&srv.data, &b0);
    let b1 = blob_files(&srv.data);
    srv.put_ok("/b.bin", tok, other.clone()).await;
    let b = new_blob(&srv.data, &b1);
    let b2 = blob_files(&srv.data);
    srv.put_ok("/long.bin", tok, long.clone()).await;
    let l = new_blob(&srv.data, &b2);
    let a_bytes = std::fs::read(&a).unwrap();
    let b_bytes = std::fs::read(&b).unwrap();
    let l_bytes = std::fs::read(&l).unwrap();
    assert_eq!(a_bytes.len(), HDR + len + 16 * 4);
    assert_eq!(srv.get_ok("/a.bin", tok).await, honest);
    let started = std::time::Instant::now();

    let mut tried: BTreeMap<&str, usize> = BTreeMap::new();
    let mut fsck_checked: BTreeMap<&str, bool> = BTreeMap::new();
    // Runs one case: `change` gives the new bytes of file `target`; the GET of `path` must
    // fail; the file is put back after. The first case of each kind is also run by fsck.
    macro_rules! case {
        ($kind:expr, $target:expr, $orig:expr, $new:expr, $path:expr, $honest:expr) => {{
            std::fs::write($target, $new).unwrap();
            let got = fetch(srv, $path, tok).await;
            assert_refused(&got, $honest, &format!("{} on {}", $kind, $path));
            if !fsck_checked.contains_key($kind) {
                let (code, text) = fsck_text(srv);
                assert_eq!(code, Some(3), "{}: fsck\n{text}", $kind);
                assert!(text.contains("content:"), "{}: {text}", $kind);
                fsck_checked.insert($kind, true);
            }
            std::fs::write($target, $orig).unwrap();
            *tried.entry($kind).or_default() += 1;
        }};
    }

    for off in flip_offsets(a_bytes.len()) {
        let mut t = a_bytes.clone();
        t[off] ^= 0x01;
        let kind = if off < HDR {
            "blob: header byte flipped"
        } else {
            "blob: segment byte flipped"
        };
        case!(kind, &a, &a_bytes, t, "/a.bin", &honest);
    }
    // Every segment boundary (the header alone, one, two, three full segments), inside a
    // segment, inside the header, empty.
    let mut cuts: Vec<usize> = (0..4).map(|i| HDR + i * ENC_SEG).collect();
    cuts.extend([0, 1, HDR - 1, HDR + 1000, a_bytes.len() - 1, a_bytes.len() - 17]);
    for cut in cuts {
        case!(
            "blob: truncated",
            &a,
            &a_bytes,
            &a_bytes[..cut],
            "/a.bin",
            &honest
        );
    }
    let last_seg = &a_bytes[HDR + 3 * ENC_SEG..];
    let extensions: Vec<Vec<u8>> = vec![
        vec![0],
        vec![0; 16],
        vec![0; 17],
        last_seg.to_vec(),
        a_bytes[HDR..HDR + ENC_SEG].to_vec(),
    ];
    for ext in extensions {
        let t = [a_bytes.as_slice(), &ext].concat();
        case!("blob: extended", &a, &a_bytes, t, "/a.bin", &honest);
    }
    for (i, j) in [(0usize, 1usize), (1, 2), (0, 2)] {
        let mut t = a_bytes.clone();
        let (si, sj) = (HDR + i * ENC_SEG, HDR + j * ENC_SEG);
        let seg_i = a_bytes[si..si + ENC_SEG].to_vec();
        t[si..si + ENC_SEG].copy_from_slice(&a_bytes[sj..sj + ENC_SEG]);
        t[sj..sj + ENC_SEG].copy_from_slice(&seg_i);
        case!("blob: two segments swapped", &a, &a_bytes, t, "/a.bin", &honest);
    }
    // Another file's segment or header in place of this one's.
    let mut t = a_bytes.clone();
    t[HDR..HDR + ENC_SEG].copy_from_slice(&b_bytes[HDR..HDR + ENC_SEG]);
    case!("blob: another file's segment", &a, &a_bytes, t, "/a.bin", &honest);
    let mut t = a_bytes.clone();
    t[..HDR].copy_from_slice(&b_bytes[..HDR]);
    case!("blob: another file's header", &a, &a_bytes, t, "/a.bin", &honest);
    // Two files' whole blobs swapped: both refused.
    std::fs::write(&a, &b_bytes).unwrap();
    std::fs::write(&b, &a_bytes).unwrap();
    assert_refused(&fetch(srv, "/a.bin", tok).await, &honest, "blobs swapped (a)");
    assert_refused(&fetch(srv, "/b.bin", tok).await, &other, "blobs swapped (b)");
    let (code, text) = fsck_text(srv);
    assert_eq!(code, Some(3), "blobs swapped: {text}");
    assert!(text.contains("2 errors"), "{text}");
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    *tried.entry("blob: two files' blobs swapped").or_default() += 2;
    // The old version's blob put back at the new one's name (same length: only its header
    // blob id and its data key tell).
    assert_eq!(old_blob.len(), a_bytes.len());
    case!("blob: old version put back", &a, &a_bytes, &old_blob, "/a.bin", &honest);

    // A long file broken after the first batch: the answer has started (200), and it is cut
    // off after the good bytes: reqwest (HTTP/2) and curl (HTTP/1.1) both see an error.
    let cut_at = HDR + 18 * ENC_SEG + 100;
    let mut t = l_bytes.clone();
    t[cut_at] ^= 0x80;
    std::fs::write(&l, &t).unwrap();
    let got = fetch(srv, "/long.bin", tok).await;
    assert!(
        assert_refused(&got, &long, "late segment flipped"),
        "a GET that started must be cut off, not answered with an error status: {got:?}"
    );
    let auth = format!("Authorization: Bearer {tok}");
    let out = srv.curl(&[
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        "-H",
        &auth,
        &srv.url("/long.bin"),
    ]);
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "curl sees the cut: {w}");
    assert!(w.starts_with("200 "), "the answer had started: {w}");
    let got_bytes: usize = w[4..].trim().parse().unwrap();
    assert!(got_bytes < long.len(), "{w}");
    let (code, text) = fsck_text(srv);
    assert_eq!(code, Some(3), "{text}");
    std::fs::write(&l, &l_bytes).unwrap();
    *tried.entry("blob: late segment flipped (stream cut)").or_default() += 2;

    // Everything put back: served again, fsck clean.
    assert_eq!(srv.get_ok("/a.bin", tok).await, honest);
    assert_eq!(srv.get_ok("/b.bin", tok).await, other);
    assert_eq!(srv.get_ok("/long.bin", tok).await, long);
    let (code, text) = fsck_text(srv);
    assert_eq!(code, Some(0), "{text}");

    // Logged: one alarm at least per refused request, and never the path.
    let total: usize = tried.values().sum();
    let alarms = log_alarms(srv);
    assert!(
        alarms.len() >= total,
        "{} alarms for {total} cases:\n{}",
        alarms.len(),
        alarms.join("\n")
    );
    assert!(
        alarms.iter().any(|l| l.contains("integrity")),
        "{}",
        alarms.join("\n")
    );
    assert!(
        alarms.iter().any(|l| l.contains("mid-stream")),
        "{}",
        alarms.join("\n")
    );
    for l in &alarms {
        assert!(!l.contains(".bin"), "a path in the log: {l}");
    }
    eprintln!(
        "blob tamper cases tried and refused: {total} in {:?}: {tried:#?}",
        started.elapsed()
    );
}
