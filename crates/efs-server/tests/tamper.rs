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

/// `efsctl fsck --fs files`: through the admin socket while the server runs, on the data
/// dir itself when it is stopped. Exit code and everything printed.
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
/// within 24 of every segment boundary and of the end, and a sample (every 251st) of the
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
    set.extend((HDR..len).step_by(251));
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
            let cut = assert_refused(&got, $honest, &format!("{} on {}", $kind, $path));
            // A file within the first batch (256 KiB) is checked before the answer starts.
            assert!(!cut, "{}: a clean error status, not a cut: {got:?}", $kind);
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
    cuts.extend([
        0,
        1,
        HDR - 1,
        HDR + 1000,
        a_bytes.len() - 1,
        a_bytes.len() - 17,
    ]);
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
        case!(
            "blob: two segments swapped",
            &a,
            &a_bytes,
            t,
            "/a.bin",
            &honest
        );
    }
    // Another file's segment or header in place of this one's.
    let mut t = a_bytes.clone();
    t[HDR..HDR + ENC_SEG].copy_from_slice(&b_bytes[HDR..HDR + ENC_SEG]);
    case!(
        "blob: another file's segment",
        &a,
        &a_bytes,
        t,
        "/a.bin",
        &honest
    );
    let mut t = a_bytes.clone();
    t[..HDR].copy_from_slice(&b_bytes[..HDR]);
    case!(
        "blob: another file's header",
        &a,
        &a_bytes,
        t,
        "/a.bin",
        &honest
    );
    // Two files' whole blobs swapped: both refused.
    std::fs::write(&a, &b_bytes).unwrap();
    std::fs::write(&b, &a_bytes).unwrap();
    assert_refused(
        &fetch(srv, "/a.bin", tok).await,
        &honest,
        "blobs swapped (a)",
    );
    assert_refused(
        &fetch(srv, "/b.bin", tok).await,
        &other,
        "blobs swapped (b)",
    );
    let (code, text) = fsck_text(srv);
    assert_eq!(code, Some(3), "blobs swapped: {text}");
    assert!(text.contains("2 errors"), "{text}");
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    *tried.entry("blob: two files' blobs swapped").or_default() += 2;
    // The old version's blob put back at the new one's name (same length: only its header
    // blob id and its data key tell).
    assert_eq!(old_blob.len(), a_bytes.len());
    case!(
        "blob: old version put back",
        &a,
        &a_bytes,
        &old_blob,
        "/a.bin",
        &honest
    );

    // Ranges: one that covers a broken segment is refused; one that does not is served,
    // and its bytes are the honest ones (authenticity is per segment).
    let mut t = a_bytes.clone();
    t[HDR + 2 * ENC_SEG + 7] ^= 0x01;
    std::fs::write(&a, &t).unwrap();
    for (range, covers) in [
        ("bytes=131072-196607", true),
        ("bytes=100000-140000", true),
        ("bytes=-10", false),
        ("bytes=0-65535", false),
    ] {
        let r = srv
            .req("GET", "/a.bin", tok)
            .header("range", range)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        if covers {
            assert_eq!(status, 500, "{range}");
            *tried.entry("blob: range over a flipped byte").or_default() += 1;
        } else {
            assert_eq!(status, 206, "{range}");
            let (lo, hi) = if range == "bytes=-10" {
                (len - 10, len)
            } else {
                (0, SEG)
            };
            assert_eq!(&body[..], &honest[lo..hi], "{range}");
        }
    }
    std::fs::write(&a, &a_bytes).unwrap();

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
    let curl_get = || {
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
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The server noted the damage where the cut came: the next GET is a 500 before any byte
    // (a client trying again is told the server failed, not cut again), a range before it is
    // served. Once the note is cleared (`efsctl cache-clear`), the next GET is cut again.
    let (_, w) = curl_get();
    assert!(w.starts_with("500 "), "refused before its 200: {w}");
    // The damage (segment 18) lies in the batch of segments 16 to 19: a range overlapping
    // that batch is refused, one before or after it is served (it was refused from the
    // damage on, readable segments after it too; the review's find).
    for (lo, hi, status) in [
        (0, 99, 206),
        (16 * SEG - 100, 16 * SEG - 1, 206),
        (16 * SEG - 100, 16 * SEG, 500),
        (17 * SEG, 17 * SEG + 10, 500),
        (20 * SEG - 1, 20 * SEG + 10, 500),
        (20 * SEG, 20 * SEG + 99, 206),
    ] {
        let r = srv
            .req("GET", "/long.bin", tok)
            .header("range", format!("bytes={lo}-{hi}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "bytes={lo}-{hi}");
        if status == 206 {
            assert_eq!(&r.bytes().await.unwrap()[..], &long[lo..=hi]);
        }
    }
    srv.efsctl_ok(&["cache-clear"]);
    let (ok, w) = curl_get();
    assert!(!ok, "curl sees the cut: {w}");
    assert!(w.starts_with("200 "), "the answer had started: {w}");
    let got_bytes: usize = w[4..].trim().parse().unwrap();
    assert!(got_bytes < long.len(), "{w}");
    // Each cut is in the audit log: a second `read` entry, 500, `cut_short`, after the
    // first's 200 (that first alone listed a read that delivered part of the file as whole);
    // a GET refused before its 200 has its one entry, 500.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let failed = loop {
        let failed: Vec<serde_json::Value> =
            audit_show(srv, &["--path", "/long.bin", "--status", "500"]);
        if failed.len() >= 6 || std::time::Instant::now() > deadline {
            break failed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // The two cuts, the GET refused before its 200 and the three ranges refused.
    assert_eq!(failed.len(), 6, "{failed:?}");
    let cuts: Vec<&serde_json::Value> = failed
        .iter()
        .filter(|e| e["detail"] == "cut_short")
        .collect();
    assert_eq!(cuts.len(), 2, "{failed:?}");
    for e in cuts {
        assert_eq!(
            (&e["action"], &e["detail"], &e["path"]),
            (
                &serde_json::json!("read"),
                &serde_json::json!("cut_short"),
                &serde_json::json!("/long.bin")
            ),
            "{e}"
        );
    }
    let (code, text) = fsck_text(srv);
    assert_eq!(code, Some(3), "{text}");
    std::fs::write(&l, &l_bytes).unwrap();
    *tried
        .entry("blob: late segment flipped (stream cut)")
        .or_default() += 2;

    // Everything put back: served again (once the server's note of the damage is cleared),
    // fsck clean.
    srv.efsctl_ok(&["cache-clear"]);
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

const ENTRIES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("entries");
const INLINE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("inline");

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// The one filesystem's index file.
fn index_file(data: &Path) -> PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir(data.join("fs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one filesystem");
    dirs.pop().unwrap().join("index.redb")
}

/// Every row of a table of a (closed) index file, opened with the redb crate.
fn read_table(path: &Path, t: redb::TableDefinition<&[u8], &[u8]>) -> Table {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::create(path).unwrap();
    let r = db.begin_read().unwrap();
    let table = r.open_table(t).unwrap();
    table
        .iter()
        .unwrap()
        .map(|row| {
            let (k, v) = row.unwrap();
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect()
}

/// One write transaction on a (closed) index file, behind EFS's back.
fn edit_index(
    path: &Path,
    f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>, &mut redb::Table<&[u8], &[u8]>),
) {
    let db = redb::Database::create(path).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut entries = w.open_table(ENTRIES).unwrap();
        let mut inline = w.open_table(INLINE).unwrap();
        f(&mut entries, &mut inline);
    }
    w.commit().unwrap();
}

/// The inline content of exactly `enc_len` sealed bytes (the tests give each tampered
/// inline file its own length).
fn inline_of_len(inline: &Table, enc_len: usize) -> Vec<u8> {
    let hits: Vec<_> = inline.iter().filter(|(_, v)| v.len() == enc_len).collect();
    assert_eq!(hits.len(), 1, "one inline content of {enc_len} bytes");
    hits[0].0.clone()
}

/// Sealed length of a one- or two-segment content of `p` plaintext bytes.
fn enc_len(p: usize) -> usize {
    HDR + p + 16 * p.div_ceil(SEG).max(1)
}

/// Maps the root directory's file names (as listed, in key order) to their index keys:
/// the root's entries are the largest group sharing a 16-byte directory tag, and a
/// listing is in key order.
fn root_keys(entries: &Table, listed: &[String]) -> HashMap<String, Vec<u8>> {
    let mut groups: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for k in entries.keys() {
        groups.entry(k[..16].to_vec()).or_default().push(k.clone());
    }
    let root = groups.into_values().max_by_key(Vec::len).unwrap();
    assert_eq!(root.len(), listed.len(), "the root listing and its entries");
    listed.iter().cloned().zip(root).collect()
}

/// Starts the server again on the same data dir.
fn restart(srv: &TestServer) -> TestServer {
    TestServer::start_in(srv.dir.clone(), &["--cache-size", "0"], &[])
}

/// After a start on an index that differs from its digest: every request on the
/// filesystem answers 503 integrity_hold (reads of `paths`, a listing, a write), fsck says
/// why, the log says it without a name; then `efsctl fsck --accept-index` lifts the hold
/// (`/ok-1`, never touched, is served again).
async fn held_until_accepted(srv: &TestServer, tok: &str, paths: &[&str]) {
    for p in paths {
        let r = srv.req("GET", p, tok).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503, "{p}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "integrity_hold", "{p}: {body}");
    }
    let r = srv.req("GET", "/", tok).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "listing");
    let r = srv
        .req("PUT", "/new-while-held", tok)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503, "write");
    // Nor are its counts published: a scrape starts a recount, which skips a held index.
    let _ = srv.metrics().await.text().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let m = srv.metrics().await.text().await.unwrap();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("efs_fs_files{fs=\"files\"}")),
        "counts of a held index:\n{m}"
    );
    let (code, text) = fsck_text(srv);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("differ from the index digest"), "{text}");
    // Nor does an admin operation launder the held index into a clean-digest copy.
    let dest = srv.dir.path().join(format!("held-backup-{}", paths.len()));
    for args in [
        vec!["backup", "--fs", "files", "-o", dest.to_str().unwrap()],
        vec!["gc", "--fs", "files"],
        vec!["rotate-key", "--fs", "files"],
    ] {
        let out = srv.efsctl(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(text.contains("on hold"), "{args:?}: {text}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !srv.stderr().contains("differs from its digest") {
        assert!(std::time::Instant::now() < deadline, "{}", srv.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = srv.efsctl(&["fsck", "--fs", "files", "--accept-index"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("accepted the index"), "{text}");
    // Accepted with what is damaged in it (every caller breaks some): said, and counted.
    let warning = text
        .lines()
        .find(|l| l.starts_with("WARNING: fsck finds "))
        .unwrap_or_else(|| panic!("no warning about the damaged entries: {text}"));
    let damaged: usize = warning["WARNING: fsck finds ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(damaged >= 1, "{warning}");
    assert!(warning.contains("they fail to read"), "{warning}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("error: entry "))
            .count(),
        damaged,
        "{text}"
    );
    let r = srv.req("GET", "/ok-1", tok).send().await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "an untouched file once the index is accepted"
    );
}

/// The `index digest: generation G, anchor A` line of a clean fsck.
fn digest_line(text: &str) -> (u64, String) {
    let line = text
        .lines()
        .find(|l| l.starts_with("index digest: generation "))
        .unwrap_or_else(|| panic!("no digest line in {text}"));
    let rest = &line["index digest: generation ".len()..];
    let (g, rest) = rest.split_once(", anchor ").unwrap();
    let anchor = rest.split_whitespace().next().unwrap();
    (g.parse().unwrap(), anchor.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_index_records_and_inline_content_are_never_served() {
    let s = session(&["--cache-size", "0"]).await;
    let key = s.key;
    let mut srv = s.srv;
    let mut tok = s.token;
    let started = std::time::Instant::now();
    // Version 1 of the files that will be rolled back; the attacker copies the data dir.
    let v1: Vec<(&str, Vec<u8>)> = vec![
        ("/s.txt", pattern(1000, 10)),
        ("/w.txt", pattern(1100, 11)),
        ("/l.bin", pattern(SEG * 3, 12)),
        ("/x.txt", pattern(1200, 13)),
    ];
    for (p, b) in &v1 {
        srv.put_ok(p, &tok, b.clone()).await;
    }
    let l_v1_blob = blob_files(&srv.data);
    assert_eq!(l_v1_blob.len(), 1);
    let l_v1_blob = (l_v1_blob[0].clone(), std::fs::read(&l_v1_blob[0]).unwrap());
    srv.stop().await;
    let ixf = index_file(&srv.data);
    let snap1 = srv.dir.path().join("snap1.redb");
    std::fs::copy(&ixf, &snap1).unwrap();
    let (fsck1_code, fsck1) = fsck_text(&srv);
    assert_eq!(fsck1_code, Some(0), "{fsck1}");
    let (gen1, anchor1) = digest_line(&fsck1);

    srv = restart(&srv);
    tok = srv.login("app", &key, None).await;
    let v2: Vec<(&str, Vec<u8>)> = vec![
        ("/s.txt", pattern(1000, 20)),
        ("/w.txt", pattern(1100, 21)),
        ("/l.bin", pattern(SEG * 3, 22)),
        ("/x.txt", pattern(1200, 23)),
    ];
    // The files tampered with, each with what is done to it, and their honest content.
    let mut files: Vec<(String, Vec<u8>)> =
        v2.iter().map(|(p, b)| (p.to_string(), b.clone())).collect();
    for i in 0..240 {
        files.push((format!("/rec-{i:03}"), pattern(10, 100 + i)));
    }
    for k in 0..HDR + 48 {
        files.push((format!("/in-{k:03}"), pattern(300 + k, 1000 + k as u64)));
    }
    for j in 0..16 {
        files.push((format!("/it-{j:03}"), pattern(500 + j, 2000 + j as u64)));
    }
    for j in 0..48 {
        files.push((format!("/i2-{j:03}"), pattern(66_000 + j, 3000 + j as u64)));
    }
    for n in 0..7 {
        files.push((format!("/tr-{n:03}"), pattern(67_000 + n, 4000 + n as u64)));
    }
    files.push(("/sw.bin".into(), pattern(2 * SEG, 5000)));
    files.push(("/p.txt".into(), pattern(700, 5001)));
    files.push(("/q.txt".into(), pattern(700, 5002)));
    for n in ["rs-a", "rs-b", "rt-1", "rt-2", "re-1", "re-2", "ok-1"] {
        files.push((format!("/{n}"), pattern(20, 6000 + n.len() as u64)));
    }
    files.push(("/dir/child.txt".into(), pattern(30, 7000)));
    // Uploads in parallel: group commits make this fast.
    let uploads = futures_util::stream::iter(files.iter().map(|(p, b)| {
        let (srv, tok) = (&srv, &tok);
        async move { srv.put_ok(p, tok, b.clone()).await }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>();
    uploads.await;
    let listed: Vec<String> = srv
        .list_all("/", &tok, 1000)
        .await
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    srv.stop().await;
    let pristine = srv.dir.path().join("pristine.redb");
    std::fs::copy(&ixf, &pristine).unwrap();
    let (code, text) = fsck_text(&srv);
    assert_eq!(code, Some(0), "{text}");
    let (gen2, anchor2) = digest_line(&text);
    assert!(gen2 > gen1, "{gen1} then {gen2}");

    let entries = read_table(&ixf, ENTRIES);
    let inline = read_table(&ixf, INLINE);
    let keys = root_keys(&entries, &listed);
    let key_of = |path: &str| keys[path.trim_start_matches('/')].clone();
    let record_len = entries[&key_of("/rec-000")].len();
    assert!(record_len < 240, "{record_len}");

    // Round A: everything that is not a rollback, at once, each on its own file.
    let mut tried: BTreeMap<&str, usize> = BTreeMap::new();
    let mut broken: Vec<String> = Vec::new();
    let snap1_inline = read_table(&snap1, INLINE);
    edit_index(&ixf, |e, il| {
        let mut put_e = |k: &[u8], v: &[u8]| {
            e.insert(k, v).unwrap();
        };
        // Every byte of a record, flipped (one record each).
        for i in 0..record_len {
            let k = key_of(&format!("/rec-{i:03}"));
            let mut v = entries[&k].clone();
            v[i] ^= 0x01;
            put_e(&k, &v);
            broken.push(format!("/rec-{i:03}"));
        }
        *tried.entry("record: byte flipped").or_default() += record_len;
        // Two records swapped, truncated, extended.
        let (a, b) = (key_of("/rs-a"), key_of("/rs-b"));
        put_e(&a, &entries[&b]);
        put_e(&b, &entries[&a]);
        broken.extend(["/rs-a".into(), "/rs-b".into()]);
        *tried.entry("record: two records swapped").or_default() += 2;
        let k = key_of("/rt-1");
        put_e(&k, &entries[&k][..entries[&k].len() - 1]);
        let k = key_of("/rt-2");
        put_e(&k, &entries[&k][..4]);
        broken.extend(["/rt-1".into(), "/rt-2".into()]);
        *tried.entry("record: truncated").or_default() += 2;
        let k = key_of("/re-1");
        put_e(&k, &[entries[&k].as_slice(), &[0]].concat());
        let k = key_of("/re-2");
        put_e(&k, &[entries[&k].as_slice(), &[0; 28]].concat());
        broken.extend(["/re-1".into(), "/re-2".into()]);
        *tried.entry("record: extended").or_default() += 2;
        // The directory's record: what is below it cannot be reached.
        let k = key_of("/dir");
        let mut v = entries[&k].clone();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        put_e(&k, &v);
        broken.push("/dir/child.txt".into());
        *tried.entry("record: directory's byte flipped").or_default() += 1;

        let mut put_i = |k: &[u8], v: &[u8]| {
            il.insert(k, v).unwrap();
        };
        // Inline content: every header byte and the first 48 of the segment; every tag byte.
        for k in 0..HDR + 48 {
            let id = inline_of_len(&inline, enc_len(300 + k));
            let mut v = inline[&id].clone();
            v[k] ^= 0x01;
            put_i(&id, &v);
            broken.push(format!("/in-{k:03}"));
        }
        for j in 0..16 {
            let id = inline_of_len(&inline, enc_len(500 + j));
            let mut v = inline[&id].clone();
            let at = v.len() - 1 - j;
            v[at] ^= 0x01;
            put_i(&id, &v);
            broken.push(format!("/it-{j:03}"));
        }
        *tried.entry("inline: byte flipped").or_default() += HDR + 48 + 16;
        // Around the segment boundary of two-segment contents.
        for j in 0..48 {
            let id = inline_of_len(&inline, enc_len(66_000 + j));
            let mut v = inline[&id].clone();
            v[HDR + ENC_SEG - 24 + j] ^= 0x01;
            put_i(&id, &v);
            broken.push(format!("/i2-{j:03}"));
        }
        *tried
            .entry("inline: byte flipped at a segment boundary")
            .or_default() += 48;
        // Truncated at the segment boundary, to the header, inside; extended.
        for n in 0..7 {
            let id = inline_of_len(&inline, enc_len(67_000 + n));
            let v = inline[&id].clone();
            let last_seg = v[HDR + ENC_SEG..].to_vec();
            let t = match n {
                0 => v[..HDR + ENC_SEG].to_vec(),
                1 => v[..HDR].to_vec(),
                2 => v[..HDR + ENC_SEG + 10].to_vec(),
                3 => Vec::new(),
                4 => [v.as_slice(), &[0]].concat(),
                5 => [v.as_slice(), &last_seg].concat(),
                _ => [v.as_slice(), &[0; 16]].concat(),
            };
            put_i(&id, &t);
            broken.push(format!("/tr-{n:03}"));
            *tried
                .entry(if n < 4 {
                    "inline: truncated"
                } else {
                    "inline: extended"
                })
                .or_default() += 1;
        }
        // Two segments swapped.
        let id = inline_of_len(&inline, enc_len(2 * SEG));
        let v = inline[&id].clone();
        let t = [&v[..HDR], &v[HDR + ENC_SEG..], &v[HDR..HDR + ENC_SEG]].concat();
        put_i(&id, &t);
        broken.push("/sw.bin".into());
        *tried.entry("inline: two segments swapped").or_default() += 1;
        // Two files' contents swapped (same length).
        let pq: Vec<_> = inline
            .iter()
            .filter(|(_, v)| v.len() == enc_len(700))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(pq.len(), 2);
        put_i(&pq[0].0, &pq[1].1);
        put_i(&pq[1].0, &pq[0].1);
        broken.extend(["/p.txt".into(), "/q.txt".into()]);
        *tried
            .entry("inline: two files' contents swapped")
            .or_default() += 2;
        // The old version's content put back under the new version's id.
        let new_id = inline_of_len(&inline, enc_len(1100));
        let old_id = inline_of_len(&snap1_inline, enc_len(1100));
        assert_ne!(new_id, old_id);
        put_i(&new_id, &snap1_inline[&old_id]);
        broken.push("/w.txt".into());
        *tried.entry("inline: old version put back").or_default() += 1;
    });

    let mut srv = restart(&srv);
    let tok = srv.login("app", &key, None).await;
    let honest: HashMap<&str, &[u8]> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    // The start-up check finds the index differs from its digest: the whole filesystem is
    // on hold, touched or not, until the operator has looked and accepts the index.
    held_until_accepted(&srv, &tok, &["/ok-1", &broken[0]]).await;
    for p in &broken {
        let got = fetch(&srv, p, &tok).await;
        let cut = assert_refused(&got, honest[p.as_str()], p);
        assert!(!cut, "{p}: a clean error status: {got:?}");
    }
    // What was not touched is served as it was.
    for p in ["/ok-1", "/rec-239", "/s.txt", "/l.bin"] {
        assert_eq!(srv.get_ok(p, &tok).await, honest[p], "{p}");
    }
    let (code, text) = fsck_text(&srv);
    assert_eq!(code, Some(3), "{text}");
    let errors = text.lines().filter(|l| l.starts_with("error: ")).count();
    assert!(
        errors >= broken.len(),
        "{errors} errors for {} files\n{text}",
        broken.len()
    );
    // Logged at start (the digest) and per request (integrity), never a name.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !srv.stderr().contains("differs from its digest") {
        assert!(std::time::Instant::now() < deadline, "{}", srv.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let alarms = log_alarms(&srv);
    assert!(alarms.len() > broken.len(), "{}", alarms.join("\n"));
    for l in &alarms {
        for needle in ["rec-", ".txt", ".bin", "child"] {
            assert!(!l.contains(needle), "a name in the log: {l}");
        }
    }
    srv.stop().await;

    // Round B: rollbacks, one at a time on the untouched index, each seen by fsck.
    let snap1_entries = read_table(&snap1, ENTRIES);
    let restore = || std::fs::copy(&pristine, &ixf).unwrap();
    let rollback_s = |e: &mut redb::Table<&[u8], &[u8]>, il: &mut redb::Table<&[u8], &[u8]>| {
        let k = key_of("/s.txt");
        e.insert(k.as_slice(), snap1_entries[&k].as_slice())
            .unwrap();
        let id = inline_of_len(&snap1_inline, enc_len(1000));
        il.insert(id.as_slice(), snap1_inline[&id].as_slice())
            .unwrap();
    };
    let rollback_l = |e: &mut redb::Table<&[u8], &[u8]>| {
        let k = key_of("/l.bin");
        e.insert(k.as_slice(), snap1_entries[&k].as_slice())
            .unwrap();
        std::fs::write(&l_v1_blob.0, &l_v1_blob.1).unwrap();
    };
    let rollback_x = |e: &mut redb::Table<&[u8], &[u8]>| {
        let k = key_of("/x.txt");
        e.insert(k.as_slice(), snap1_entries[&k].as_slice())
            .unwrap();
    };
    type Edit<'a> =
        Box<dyn Fn(&mut redb::Table<&[u8], &[u8]>, &mut redb::Table<&[u8], &[u8]>) + 'a>;
    let rollbacks: Vec<(&str, Edit)> = vec![
        (
            "rollback: inline record and content put back",
            Box::new(|e, il| rollback_s(e, il)),
        ),
        (
            "rollback: blob record and blob put back",
            Box::new(|e, _| rollback_l(e)),
        ),
        (
            "rollback: record put back without its content",
            Box::new(|e, _| rollback_x(e)),
        ),
    ];
    for (what, edit) in &rollbacks {
        restore();
        edit_index(&ixf, edit);
        let (code, text) = fsck_text(&srv);
        assert_eq!(code, Some(3), "{what}: {text}");
        assert!(
            text.contains("differ from the index digest"),
            "{what}: {text}"
        );
        *tried.entry(what).or_default() += 1;
        let _ = std::fs::remove_file(&l_v1_blob.0);
    }
    // The whole index put back, digest included: consistent with its digest, but below the
    // generation the data dir recorded (the one accepted in round A, past gen2), so an error
    // naming both (it was clean, and only the anchor kept elsewhere told); the anchor shows
    // it too.
    std::fs::copy(&snap1, &ixf).unwrap();
    for b in blob_files(&srv.data) {
        std::fs::remove_file(b).unwrap();
    }
    std::fs::write(&l_v1_blob.0, &l_v1_blob.1).unwrap();
    let (code, text) = fsck_text(&srv);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains(&format!(
            "the index is at generation {gen1}, the data dir last saw "
        )),
        "{text}"
    );
    let (g, a) = digest_line(&text);
    assert_eq!((g, a.as_str()), (gen1, anchor1.as_str()));
    assert!(g < gen2 && a != anchor2);
    std::fs::remove_file(&l_v1_blob.0).unwrap();

    // On the read path: all three at once; a record without its content is an error; a
    // record put back with its content is served as that older version (it cannot be
    // told from a current one without the whole index), and the start-up check logs it.
    restore();
    edit_index(&ixf, |e, il| {
        rollback_s(e, il);
        rollback_l(e);
        rollback_x(e);
    });
    let mut srv = restart(&srv);
    let tok = srv.login("app", &key, None).await;
    // Held first: a record put back with its content is never served as if current.
    held_until_accepted(&srv, &tok, &["/s.txt", "/l.bin", "/x.txt", "/ok-1"]).await;
    // Once the operator accepts the index as it is, the older versions are what it holds.
    assert_refused(
        &fetch(&srv, "/x.txt", &tok).await,
        &v2[3].1,
        "/x.txt rolled back without content",
    );
    let old: HashMap<&str, &[u8]> = v1.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    for p in ["/s.txt", "/l.bin"] {
        match fetch(&srv, p, &tok).await {
            Got::Served(b) => assert_eq!(b, old[p], "{p}: never anything but the old version"),
            other => panic!("{p}: {other:?}"),
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !srv.stderr().contains("differs from its digest") {
        assert!(std::time::Instant::now() < deadline, "{}", srv.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    srv.stop().await;

    let total: usize = tried.values().sum();
    eprintln!(
        "index tamper cases tried and detected: {total} in {:?}: {tried:#?}",
        started.elapsed()
    );
}

/// Regression: efsctl without a server finishes an interrupted key rotation before each
/// command but `status`; once that refused to rewrite a held index, it failed every
/// command, `efsctl fsck --accept-index` (the way out of a hold) included. Now a held
/// filesystem's rotation is left with a warning, fsck runs, a server started on it does
/// not resume it, and once the index is accepted the next command finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rotation_over_a_held_index_waits_for_fsck_accept_index() {
    let s = session(&["--cache-size", "0"]).await;
    let mut srv = s.srv;
    for i in 0..5u64 {
        srv.put_ok(&format!("/r{i}"), &s.token, pattern(100 + i as usize, i))
            .await;
    }
    srv.stop().await;
    {
        // The first step of a rotation only (a new term, nothing rewrapped): what a server
        // stopped in the middle of one leaves.
        let dd = srv.open_offline();
        dd.begin_rotation("files").await.unwrap();
    }
    let ixf = index_file(&srv.data);
    edit_index(&ixf, |entries, _| {
        entries.pop_first().unwrap().unwrap();
    });
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // Any other command runs, leaving the rotation with a warning (the lists finish
    // nothing: they may look at a system database on hold).
    let out = srv.efsctl(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("interrupted key rotation of 'files' was not finished"),
        "{}",
        text(&out)
    );
    let st = srv.efsctl_ok(&["status", "--fs", "files", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st[0]["rotation"]["state"], "running", "still pending: {st}");
    let (code, fsck) = fsck_text(&srv);
    assert_eq!(code, Some(3), "{fsck}");
    assert!(fsck.contains("differ from the index digest"), "{fsck}");
    // Nor does a server started on it resume the rotation (it would reseal the records
    // as they are, rolled back or not) before its index check holds.
    let mut again = restart(&srv);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !again.stderr().contains("key rotation not resumed") {
        assert!(std::time::Instant::now() < deadline, "{}", again.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    again.stop().await;
    let st = srv.efsctl_ok(&["status", "--fs", "files", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st[0]["rotation"]["state"], "running", "{st}");
    assert_eq!(st[0]["rotation"]["rewrapped"], 0, "{st}");
    let out = srv.efsctl(&["fsck", "--fs", "files", "--accept-index"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("accepted the index"), "{}", text(&out));
    assert!(
        !text(&out).contains("WARNING"),
        "nothing damaged: {}",
        text(&out)
    );
    // The next command finishes the rotation over the accepted index.
    let out = srv.efsctl(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("finished an interrupted key rotation of 'files'"),
        "{}",
        text(&out)
    );
    let st = srv.efsctl_ok(&["status", "--fs", "files", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st[0]["rotation"]["state"], "done", "{st}");
    assert_eq!(
        st[0]["rotation"]["rewrapped"], 4,
        "the 4 records left: {st}"
    );
    assert_eq!(st[0]["current_term"], 2, "{st}");
    // Every file left reads under the new term (the removed record's content is an orphan).
    let (_, fsck) = fsck_text(&srv);
    assert!(fsck.contains("4 files verified, 0 errors"), "{fsck}");
}

/// The system database changed while the server was stopped (a user's row from before a
/// revocation written back): the server refuses to start, and so does efsctl, until the
/// operator runs `efsctl accept-system`, which is recorded in the audit log.
#[tokio::test]
async fn an_old_user_row_put_back_stops_the_server_until_efsctl_accept_system() {
    use redb::{ReadableDatabase, ReadableTable};
    const USERS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("users");
    let mut srv = TestServer::start(&[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    srv.stop().await;
    let db_path = srv.data.join("system/system.redb");
    let granted: (Vec<u8>, Vec<u8>) = {
        let db = redb::Database::create(&db_path).unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(USERS).unwrap();
        let (k, v) = t.first().unwrap().unwrap();
        (k.value().to_vec(), v.value().to_vec())
    };
    srv.efsctl_ok(&["revoke", "app", "--fs", "files"]);
    {
        let db = redb::Database::create(&db_path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(USERS)
            .unwrap()
            .insert(granted.0.as_slice(), granted.1.as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    let f = TestServer::try_start_in(srv.dir.clone(), &[], &[])
        .err()
        .expect("a server started on a system database changed outside EFS");
    assert!(
        f.stderr.contains("differs from its digest") && f.stderr.contains("efsctl accept-system"),
        "{}",
        f.stderr
    );
    // What would be accepted can be looked at first: list-users and list-fs show the
    // database as it is (the old grant), with a warning, and change nothing.
    for _ in 0..2 {
        let out = srv.efsctl(&["list-users"]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("app\tfiles"), "{stdout}");
        assert!(
            stderr.contains("WARNING: the system database is not trusted")
                && stderr.contains("differs from its digest")
                && stderr.contains("efsctl accept-system would accept"),
            "{stderr}"
        );
    }
    assert!(srv.efsctl(&["list-fs"]).status.success());
    // And what was done meanwhile, in the audit log.
    let out = srv.efsctl(&["audit", "show"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoke"),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not trusted"),
        "{out:?}"
    );
    assert!(
        TestServer::try_start_in(srv.dir.clone(), &[], &[]).is_err(),
        "looking accepted nothing"
    );
    // The operator accepts the database as it is: the old grant is back.
    let out = srv.efsctl_ok(&["accept-system"]);
    assert!(
        out.contains("Accepted the system database as it is") && out.contains("anchor"),
        "{out}"
    );
    let shown = srv.efsctl_ok(&["audit", "show"]);
    assert_eq!(
        shown.matches("accept-system").count(),
        1,
        "the acceptance is recorded: {shown}"
    );
    assert!(
        shown.contains("differs from its digest") && shown.contains("\"anchor\""),
        "with what was found and the new digest: {shown}"
    );
    let srv2 = TestServer::start_in(srv.dir.clone(), &[], &[]);
    // Through the running server: nothing to accept.
    let out = srv2.efsctl_ok(&["accept-system"]);
    assert!(out.contains("nothing to accept"), "{out}");
    let token = srv2.login("app", &key, Some("files")).await;
    srv2.put_ok("/granted-again.txt", &token, b"x".to_vec())
        .await;
    // --json gives the same digest as the text (and the filesystems under their own key).
    // The running server writes the system database now and then (how far the audit log
    // and the indexes went), moving the digest: the two are read again until no write fell
    // between them.
    let mut agreed = false;
    for _ in 0..5 {
        let status = srv2.efsctl_ok(&["status"]);
        assert!(
            status.contains("system database digest: generation"),
            "{status}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&srv2.efsctl_ok(&["status", "--json"])).unwrap();
        let d = &json["system_digest"];
        assert_eq!(d["holds"], true, "{json}");
        assert_eq!(json["filesystems"][0]["name"], "files", "{json}");
        let (generation, anchor) = (
            d["generation"].as_u64().unwrap(),
            d["anchor"].as_str().unwrap(),
        );
        if status.contains(&format!("generation {generation}, anchor {anchor}")) {
            agreed = true;
            break;
        }
    }
    assert!(
        agreed,
        "status and status --json never gave the same digest"
    );
}

/// `cp -a DATA TO`: the whole data dir copied, as a volume snapshot would keep it.
fn copy_whole(data: &std::path::Path, to: &std::path::Path) {
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(data)
        .arg(to)
        .status()
        .unwrap();
    assert!(cp.success());
}

/// The whole data dir put back from an earlier copy (a volume snapshot: the system
/// database, its digest and the audit log agree with one another) was served, the user
/// revoked since logging in again. With `--rollback-witness` (here from the environment, as
/// efsctl gets it too) the server keeps the digest's generation outside the data dir and
/// refuses to start on a data dir behind it, until `efsctl accept-system`.
#[tokio::test]
async fn a_data_dir_put_back_whole_is_refused_by_its_rollback_witness() {
    let dir = std::sync::Arc::new(new_tempdir());
    let witness = dir.path().join("efs.witness");
    let w = witness.to_str().unwrap().to_owned();
    let envs = [("EFS_ROLLBACK_WITNESS", w.as_str())];
    let mut srv = TestServer::start_in(dir.clone(), &[], &envs);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, Some("files")).await;
    srv.put_ok("/before.txt", &token, b"x".to_vec()).await;
    srv.stop().await;
    let seen = || -> u64 {
        let text = std::fs::read_to_string(&witness).expect("the witness file");
        assert!(
            text.starts_with("efs rollback witness v2\n") && text.contains("\ndata-dir "),
            "{text}"
        );
        text.lines()
            .find_map(|l| l.strip_prefix("generation "))
            .and_then(|g| g.parse().ok())
            .expect("a generation line")
    };
    let snapshot = dir.path().join("snapshot");
    copy_whole(&srv.data, &snapshot);

    let mut srv = TestServer::start_in(dir.clone(), &[], &envs);
    srv.efsctl_ok(&["revoke", "app", "--fs", "files"]);
    srv.stop().await;
    let after_revoke = seen();

    // The snapshot put back in place of the data dir.
    std::fs::remove_dir_all(&srv.data).unwrap();
    std::fs::rename(&snapshot, &srv.data).unwrap();
    let f = TestServer::try_start_in(dir.clone(), &[], &envs)
        .err()
        .expect("a server started on a data dir put back whole");
    assert!(
        f.stderr.contains(&format!(
            "rollback witness {w} saw generation {after_revoke}"
        )) && f.stderr.contains("efsctl accept-system"),
        "{}",
        f.stderr
    );
    assert_eq!(seen(), after_revoke, "the refused start moved the witness");
    // Looking first: list-users shows the revoked grant back, with a warning.
    let out = srv.efsctl(&["list-users"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("app\tfiles"), "{stdout}");
    assert!(stderr.contains("rollback witness"), "{stderr}");
    assert!(TestServer::try_start_in(dir.clone(), &[], &envs).is_err());

    // Accepted on purpose (a restore of the whole data dir): the generation goes past the
    // witness's, the server starts, and the witness follows it again.
    let out = srv.efsctl_ok(&["accept-system"]);
    assert!(
        out.contains("Accepted the system database as it is"),
        "{out}"
    );
    let accepted: u64 = out
        .split("system database digest: generation ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|g| g.parse().ok())
        .expect("the new generation");
    assert!(accepted > after_revoke, "{out}");
    let mut srv = TestServer::start_in(dir.clone(), &[], &envs);
    let token = srv.login("app", &key, Some("files")).await;
    assert_eq!(srv.get_ok("/before.txt", &token).await, b"x");
    assert!(seen() >= accepted);
    // Where it is and whether it keeps up: status and the metrics.
    let status = srv.efsctl_ok(&["status"]);
    assert!(
        status.contains(&format!("rollback witness: {w}, at generation")),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&srv.efsctl_ok(&["status", "--json"])).unwrap();
    assert_eq!(json["rollback_witness"]["path"], w.as_str(), "{json}");
    assert_eq!(json["rollback_witness"]["failing"], false, "{json}");
    let metrics = srv.metrics().await.text().await.unwrap();
    assert!(
        metrics.contains("efs_rollback_witness_failing 0"),
        "{metrics}"
    );
    // efsctl without the option, on the stopped data dir, uses the witness recorded in it:
    // its writes move the witness on (they once went unseen).
    srv.stop().await;
    let without = |args: &[&str]| {
        let out = srv
            .efsctl_command(args)
            .env_remove("EFS_ROLLBACK_WITNESS")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = without(&["status"]);
    assert!(
        status.contains(&format!("rollback witness: {w}, at generation")),
        "{status}"
    );
    let before = seen();
    without(&["create-fs", "more"]);
    assert!(
        seen() > before,
        "a write without the option left the witness behind"
    );
    // And a server started without it is checked by it too.
    let snapshot = dir.path().join("snapshot-2");
    copy_whole(&srv.data, &snapshot);
    without(&["revoke", "app", "--fs", "files"]);
    std::fs::remove_dir_all(&srv.data).unwrap();
    std::fs::rename(&snapshot, &srv.data).unwrap();
    let f = TestServer::try_start_in(dir.clone(), &[], &[])
        .err()
        .expect("a server started without the option on a data dir put back whole");
    assert!(
        f.stderr.contains("rollback witness") && f.stderr.contains("saw generation"),
        "{}",
        f.stderr
    );
}

/// A restore of a backup that left many entries out names the first 100 and counts the rest.
#[tokio::test]
async fn a_restore_names_at_most_100_of_the_entries_its_backup_left_out() {
    let s = session(&["--cache-size", "0"]).await;
    let mut srv = s.srv;
    for i in 0..103u64 {
        srv.put_ok(&format!("/p{i}"), &s.token, "x").await;
    }
    srv.stop().await;
    // Every record damaged but one (the root's lies elsewhere): 102 left out.
    edit_index(&index_file(&srv.data), |entries, _| {
        use redb::ReadableTable;
        let all: Vec<(Vec<u8>, Vec<u8>)> = entries
            .iter()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.0.value().to_vec(), e.1.value().to_vec())
            })
            .collect();
        assert_eq!(all.len(), 103);
        for (k, mut v) in all.into_iter().skip(1) {
            *v.last_mut().unwrap() ^= 1;
            entries.insert(k.as_slice(), v.as_slice()).unwrap();
        }
    });
    srv.efsctl_ok(&["fsck", "--fs", "files", "--accept-index"]);
    let dest = srv.dir.path().join("backup");
    let dest_arg = dest.to_str().unwrap();
    let out = srv.efsctl(&["backup", "--fs", "files", "-o", dest_arg, "--skip-damaged"]);
    assert_eq!(out.status.code(), Some(3));
    let out = srv.efsctl(&["restore", "--fs", "restored", "-i", dest_arg]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("warning: a partial backup: 102 damaged entries"),
        "{text}"
    );
    assert_eq!(text.matches("warning: entry ").count(), 100, "{text}");
    assert!(text.contains("warning: and 2 more left out"), "{text}");
}

/// One damaged index record (a flipped byte, accepted with `fsck --accept-index` as an
/// operator would after a disk fault) stopped every backup of the filesystem, and no
/// command removes it. `efsctl backup --skip-damaged` backs up the rest, names what it left
/// out, exits 3; the backup restores into a new filesystem that fsck finds clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_skipping_damaged_entries_backs_up_the_rest() {
    let s = session(&["--cache-size", "0"]).await;
    let mut srv = s.srv;
    for i in 0..6u64 {
        srv.put_ok(
            &format!("/p{i}.pdf"),
            &s.token,
            pattern(100 + i as usize, i),
        )
        .await;
    }
    srv.stop().await;
    let ixf = index_file(&srv.data);
    let mut damaged = Vec::new();
    edit_index(&ixf, |entries, _| {
        use redb::ReadableTable;
        let (k, mut v) = {
            let first = entries.first().unwrap().unwrap();
            (first.0.value().to_vec(), first.1.value().to_vec())
        };
        *v.last_mut().unwrap() ^= 1;
        entries.insert(k.as_slice(), v.as_slice()).unwrap();
        damaged = k;
    });
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let out = srv.efsctl(&["fsck", "--fs", "files", "--accept-index"]);
    assert!(out.status.success(), "{}", text(&out));
    let dest = srv.dir.path().join("backup");
    let dest_arg = dest.to_str().unwrap();
    // As before: the first damaged entry stops the backup, which names it and the way on.
    let out = srv.efsctl(&["backup", "--fs", "files", "-o", dest_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let entry = hex::encode(&damaged);
    assert!(text(&out).contains(&entry), "{}", text(&out));
    assert!(text(&out).contains("--skip-damaged"), "{}", text(&out));
    assert!(!dest.exists());

    let out = srv.efsctl(&["backup", "--fs", "files", "-o", dest_arg, "--skip-damaged"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("warning: entry {entry} left out: does not open")),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("1 entries left out of this backup"),
        "{}",
        text(&out)
    );
    let out = srv.efsctl(&["restore", "--fs", "restored", "-i", dest_arg]);
    // Exit code 3, as the backup's: not a whole filesystem.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // The backup says it is partial, and what it left out, whenever it is restored.
    for line in [
        "warning: a partial backup: 1 damaged entries were left out when it was taken".to_owned(),
        format!("warning: entry {entry} was left out: does not open"),
    ] {
        assert!(text(&out).contains(&line), "{}", text(&out));
    }
    // With --json: the count in the data, the warning on standard error, exit code 3.
    let out = srv.efsctl(&["restore", "--fs", "restored2", "-i", dest_arg, "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["left_out"], 1, "{v}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: a partial backup: 1 damaged"),
        "{}",
        text(&out)
    );
    let out = srv.efsctl(&["fsck", "--fs", "restored"]);
    assert!(out.status.success(), "{}", text(&out));
    srv.efsctl_ok(&["grant", "app", "--fs", "restored"]);
    let again = TestServer::start_in(srv.dir.clone(), &["--cache-size", "0"], &[]);
    let token = again.login("app", &s.key, Some("restored")).await;
    let mut served = 0;
    for i in 0..6u64 {
        let (code, body) = again.get(&format!("/p{i}.pdf"), &token).await;
        if code == 200 {
            assert_eq!(body, pattern(100 + i as usize, i));
            served += 1;
        } else {
            assert_eq!(code, 404, "/p{i}.pdf");
        }
    }
    assert_eq!(served, 5, "every file but the damaged one");
}

/// One filesystem's index replaced while the server was stopped by another's (it holds the
/// other's keyring, which does not open here), and a third's by bytes that are no redb file:
/// the data dir still opens and serves the untouched filesystem, while those two answer 503
/// integrity_hold, and efsctl says which and why (the whole data dir refused to open, naming
/// neither: "decryption failed: stored data was altered or does not belong here").
#[tokio::test]
async fn a_replaced_index_holds_its_filesystem_not_the_data_dir() {
    let mut srv = TestServer::start(&[]);
    for fs in ["files", "swapped", "garbled"] {
        srv.create_fs(fs);
    }
    let key = srv.create_user("app", &["files", "swapped", "garbled"], false);
    for fs in ["files", "swapped", "garbled"] {
        let tok = srv.login("app", &key, Some(fs)).await;
        srv.put_ok(&format!("/in-{fs}.txt"), &tok, fs.as_bytes().to_vec())
            .await;
    }
    // `list-fs`: a line `NAME<TAB>ID` each.
    let ids: HashMap<String, String> = srv
        .efsctl_ok(&["list-fs"])
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, id)| (n.to_owned(), id.to_owned()))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    srv.stop().await;
    let index = |fs: &str| srv.data.join("fs").join(&ids[fs]).join("index.redb");
    std::fs::copy(index("files"), index("swapped")).unwrap();
    std::fs::write(index("garbled"), vec![0x5a; 64 << 10]).unwrap();

    let srv = restart(&srv);
    let tok = srv.login("app", &key, Some("files")).await;
    assert_eq!(srv.get_ok("/in-files.txt", &tok).await, b"files");
    for fs in ["swapped", "garbled"] {
        let tok = srv.login("app", &key, Some(fs)).await;
        let r = srv
            .req("GET", &format!("/in-{fs}.txt"), &tok)
            .send()
            .await
            .unwrap();
        assert_error(r, 503, "integrity_hold").await;
        let r = srv
            .req("PUT", "/new.txt", &tok)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_error(r, 503, "integrity_hold").await;
        let said = format!("{}/index.redb could not be opened", ids[fs]);
        srv.stderr_when(|e| e.contains(&said)).await;
        let out = srv.efsctl(&["fsck", "--fs", fs]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("filesystem '{fs}' is not served")) && err.contains("index.redb"),
            "{err}"
        );
    }
    // Listed, and the exit code says not clean (3, as fsck's): it was 0, while `status --fs`
    // of it fails.
    let out = srv.efsctl(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let status = String::from_utf8(out.stdout).unwrap();
    assert!(
        status.contains("swapped: NOT SERVED: its index")
            && status.contains("garbled: NOT SERVED: its index")
            && status.contains("files: current key term"),
        "{status}"
    );
}

/// A blob altered on disk (one bit of a segment flipped, its length unchanged) is a damaged
/// entry for a backup, as for fsck and a read: without --skip-damaged the backup stops and
/// names it; with it, the file is left out (exit 3) and the rest restores clean. The blob was
/// copied as it was, the backup said nothing, and its restore called the damage
/// "authenticated" (the manifest's MAC vouched for the copy).
#[tokio::test]
async fn a_backup_checks_the_contents_of_the_blobs_it_copies() {
    let s = session(&["--cache-size", "0"]).await;
    let mut srv = s.srv;
    let before = blob_files(&srv.data);
    srv.put_ok("/scan.pdf", &s.token, pattern(300_000, 7)).await;
    let blob = new_blob(&srv.data, &before);
    let before = blob_files(&srv.data);
    srv.put_ok("/intact.pdf", &s.token, pattern(300_001, 8))
        .await;
    new_blob(&srv.data, &before);
    srv.put_ok("/small.txt", &s.token, b"inline".to_vec()).await;
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&blob, &bytes).unwrap();
    let name = blob.file_name().unwrap().to_str().unwrap().to_owned();
    backup_refused_then_partial(
        &srv,
        "checked",
        &[&format!("blob {name}"), "decryption failed"],
    );
    srv.stop().await;
    let again = TestServer::start_in(srv.dir.clone(), &["--cache-size", "0"], &[]);
    let token = again.login("app", &s.key, Some("restored")).await;
    assert_eq!(
        again.get_ok("/intact.pdf", &token).await,
        pattern(300_001, 8)
    );
    assert_eq!(again.get_ok("/small.txt", &token).await, b"inline");
    assert_eq!(again.get("/scan.pdf", &token).await.0, 404, "left out");
}

/// With one damaged file in filesystem `files`: a backup into `dir` stops (exit 1) saying
/// each of `why` and leaves nothing; with `--skip-damaged` it leaves that one file out (exit
/// 3); its restore into `restored` is partial (exit 3) and fsck-clean, and `app` is granted it.
fn backup_refused_then_partial(srv: &TestServer, dir: &str, why: &[&str]) {
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let dest = srv.dir.path().join(dir);
    let dest_arg = dest.to_str().unwrap();
    let out = srv.efsctl(&["backup", "--fs", "files", "-o", dest_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for w in why {
        assert!(text(&out).contains(w), "{w}: {}", text(&out));
    }
    assert!(!dest.exists());
    let out = srv.efsctl(&["backup", "--fs", "files", "-o", dest_arg, "--skip-damaged"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("1 entries left out"), "{}", text(&out));
    let out = srv.efsctl(&["restore", "--fs", "restored", "-i", dest_arg]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = srv.efsctl(&["fsck", "--fs", "restored"]);
    assert!(out.status.success(), "{}", text(&out));
    srv.efsctl_ok(&["grant", "app", "--fs", "restored"]);
}

/// A backup checks the contents stored in the index (small files) as it checks blobs: a
/// flipped byte in one stops the backup naming its entry, `--skip-damaged` leaves that file
/// out (exit 3) and the restore of the rest is clean. It copied the damaged content and the
/// backup's MAC vouched for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_checks_the_contents_stored_in_the_index() {
    let s = session(&["--cache-size", "0"]).await;
    let mut srv = s.srv;
    srv.put_ok("/note.txt", &s.token, pattern(321, 4)).await;
    srv.put_ok("/kept.txt", &s.token, pattern(123, 5)).await;
    srv.stop().await;
    let ixf = index_file(&srv.data);
    let inline = read_table(&ixf, INLINE);
    let id = inline_of_len(&inline, enc_len(321));
    edit_index(&ixf, |_, t| {
        let mut v = inline[&id].clone();
        v[HDR + 10] ^= 0x01;
        t.insert(id.as_slice(), v.as_slice()).unwrap();
    });
    let srv = restart(&srv);
    backup_refused_then_partial(
        &srv,
        "checked-inline",
        &["its content (stored in the index) fails its check"],
    );
    let token = srv.login("app", &s.key, Some("restored")).await;
    assert_eq!(srv.get_ok("/kept.txt", &token).await, pattern(123, 5));
    assert_eq!(srv.get("/note.txt", &token).await.0, 404, "left out");
}

/// After an index put back to an older state, fsck names a damaged entry by its path too
/// when its record and its directories still open, so that the operator can tell users
/// which files to replace; an entry whose record does not open keeps its key alone. It
/// named them all by key only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_names_the_path_of_a_damaged_entry_whose_record_opens() {
    let s = session(&["--cache-size", "0"]).await;
    let mut srv = s.srv;
    let tok = s.token;
    srv.put_ok("/docs/q1/report.bin", &tok, pattern(SEG * 2, 1))
        .await;
    srv.stop().await;
    let ixf = index_file(&srv.data);
    let old = read_table(&ixf, ENTRIES);

    srv = restart(&srv);
    let tok = srv.login("app", &s.key, None).await;
    srv.put_ok("/docs/q1/report.bin", &tok, pattern(SEG * 2, 2))
        .await;
    srv.put_ok("/top.txt", &tok, pattern(50, 3)).await;
    srv.stop().await;
    let now = read_table(&ixf, ENTRIES);
    // The report's record is the one that changed; /top.txt's the one that is new.
    let changed: Vec<&Vec<u8>> = now
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k)
        .collect();
    let added: Vec<&Vec<u8>> = now.keys().filter(|k| !old.contains_key(*k)).collect();
    assert_eq!((changed.len(), added.len()), (1, 1));
    let (report, top) = (changed[0].clone(), added[0].clone());
    // The report's record put back without its content (its blob was removed with the
    // overwrite); /top.txt's record damaged.
    edit_index(&ixf, |e, _| {
        e.insert(report.as_slice(), old[&report].as_slice())
            .unwrap();
        let mut v = now[&top].clone();
        *v.last_mut().unwrap() ^= 1;
        e.insert(top.as_slice(), v.as_slice()).unwrap();
    });

    let (code, text) = fsck_text(&srv);
    assert_eq!(code, Some(3), "{text}");
    let (report, top) = (hex::encode(&report), hex::encode(&top));
    assert!(
        text.contains(&format!(
            "error: entry {report} (/docs/q1/report.bin): content:"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("error: entry {top}: record:")),
        "{text}"
    );
    let out = srv.efsctl(&["fsck", "--fs", "files", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["paths"][&report], "/docs/q1/report.bin", "{json}");
    assert!(json["paths"].get(&top).is_none(), "{json}");
}

/// Something other than a regular file in a blob's place, as someone who can write the data
/// dir could put there: a FIFO hung the GET (and its thread, and fsck, and the shutdown) for
/// good; a symbolic link to another blob was followed. Both are now a 500 and an fsck
/// `content:` error, at once. And a read leaves the blob's access time as it was (a copy of
/// the data dir would tell when each file was last read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_link_in_a_blobs_place_is_refused_and_reads_leave_no_access_time() {
    use std::os::unix::fs::MetadataExt;
    let s = session(&["--cache-size", "0"]).await;
    let srv = s.srv;
    let mut blobs = Vec::new();
    for (i, name) in ["/fifo.pdf", "/link.pdf", "/read.pdf"].iter().enumerate() {
        let before = blob_files(&srv.data);
        srv.put_ok(name, &s.token, pattern(200_000, i as u64)).await;
        blobs.push(new_blob(&srv.data, &before));
    }
    // The access time set back before the read, so that a read that moved it (relatime moves
    // an access time older than the modification time) would show.
    let read = &blobs[2];
    let set_back = std::process::Command::new("touch")
        .args(["-a", "-d", "2001-01-01"])
        .arg(read)
        .status()
        .unwrap();
    assert!(set_back.success());
    let atime = std::fs::metadata(read).unwrap().atime();
    assert_eq!(srv.get_ok("/read.pdf", &s.token).await, pattern(200_000, 2));
    assert_eq!(
        std::fs::metadata(read).unwrap().atime(),
        atime,
        "a GET moved the blob's access time"
    );

    std::fs::remove_file(&blobs[0]).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&blobs[0])
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::remove_file(&blobs[1]).unwrap();
    std::os::unix::fs::symlink(read, &blobs[1]).unwrap();
    for path in ["/fifo.pdf", "/link.pdf"] {
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            fetch(&srv, path, &s.token),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {path} hung"));
        assert!(matches!(got, Got::Status(500)), "{path}: {got:?}");
    }
    let (code, text) = fsck_text(&srv);
    assert_eq!(code, Some(3), "{text}");
    assert_eq!(text.matches("content:").count(), 2, "{text}");
    assert_eq!(text.matches("not a regular file").count(), 2, "{text}");
}

/// `(the index's digest generation, the generation the data dir last recorded)` from
/// `efsctl fsck --fs files` (clean).
fn generations(srv: &TestServer) -> (u64, Option<u64>) {
    let (code, text) = fsck_text(srv);
    assert_eq!(code, Some(0), "{text}");
    let (g, _) = digest_line(&text);
    let mark = text
        .lines()
        .find_map(|l| l.strip_prefix("index generation last recorded by the data dir: "))
        .map(|m| m.trim().parse().unwrap());
    (g, mark)
}

/// An earlier copy of the whole index file put back while the server is stopped (an
/// operator restoring one index from a snapshot, or someone reverting the files): its
/// digest holds, so before it was served as good; now the generation the data dir recorded
/// (a running server every few seconds, and at its stop) is higher, so the filesystem is
/// held, fsck names both generations (exit 3), and `fsck --accept-index` serves the earlier
/// state, for good (the next start is not held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_copy_of_the_whole_index_put_back_is_held_until_accepted() {
    let s = session(&["--cache-size", "0"]).await;
    let key = s.key;
    let mut srv = s.srv;
    let tok = s.token;
    srv.put_ok("/a.txt", &tok, b"a, earlier".to_vec()).await;
    srv.put_ok("/b.txt", &tok, b"b, earlier".to_vec()).await;
    // A clean stop records the generation.
    srv.stop().await;
    let index = index_file(&srv.data);
    let copy = srv.dir.path().join("index-copy.redb");
    std::fs::copy(&index, &copy).unwrap();
    let (earlier, mark) = generations(&srv);
    assert_eq!(mark, Some(earlier), "recorded at the stop");

    let mut srv = restart(&srv);
    let tok = srv.login("app", &key, Some("files")).await;
    srv.put_ok("/a.txt", &tok, b"a, later".to_vec()).await;
    let r = srv.req("DELETE", "/b.txt", &tok).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    srv.put_ok("/c.txt", &tok, b"c".to_vec()).await;
    // The running server records the new generation within a few seconds; killed after
    // that (no record at a stop), the mark is the one it recorded as it ran.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let later = loop {
        let (g, mark) = generations(&srv);
        if mark == Some(g) {
            break g;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded: {g} {mark:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(later > earlier, "{later} after {earlier}");
    // A backup without keys of the later state: restoring it needs this filesystem's keyring.
    let backup = srv.dir.path().join("backup-later");
    srv.efsctl_ok(&["backup", "--fs", "files", "-o", backup.to_str().unwrap()]);
    srv.kill();
    std::fs::copy(&copy, &index).unwrap();

    let mut srv = restart(&srv);
    let tok = srv.login("app", &key, Some("files")).await;
    for p in ["/a.txt", "/b.txt", "/c.txt"] {
        let r = srv.req("GET", p, &tok).send().await.unwrap();
        assert_error(r, 503, "integrity_hold").await;
    }
    let r = srv
        .req("PUT", "/d.txt", &tok)
        .body("d")
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "integrity_hold").await;
    let (code, text) = fsck_text(&srv);
    assert_eq!(code, Some(3), "{text}");
    let want = format!("the index is at generation {earlier}, the data dir last saw {later}");
    assert!(text.contains(&want), "{text}");
    assert!(text.contains("--accept-index"), "{text}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !srv.stderr().contains(&want) {
        assert!(std::time::Instant::now() < deadline, "{}", srv.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // status says so (exit 3, as fsck), with --fs too.
    for args in [&["status"][..], &["status", "--fs", "files"][..]] {
        let out = srv.efsctl(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {text}");
        assert!(text.contains("files: ON HOLD: its index failed"), "{text}");
    }
    let st: serde_json::Value =
        serde_json::from_slice(&srv.efsctl(&["--json", "status", "--fs", "files"]).stdout).unwrap();
    assert_eq!(st[0]["on_hold"], true, "{st}");
    // Nor is the held index's keyring used to restore a backup without keys: an older copy
    // put back may hold key terms since rotated away or retired.
    let (ok, text) = srv.efsctl_text(&["restore", "--fs", "copy", "-i", backup.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("'files', which is on hold"), "{text}");
    assert!(!srv.efsctl_ok(&["list-fs"]).contains("copy"));
    let out = srv.efsctl(&["fsck", "--fs", "files", "--accept-index"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("accepted the index"), "{text}");
    assert_eq!(srv.get_ok("/a.txt", &tok).await, b"a, earlier");
    assert_eq!(srv.get_ok("/b.txt", &tok).await, b"b, earlier");
    let r = srv.req("GET", "/c.txt", &tok).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(generations(&srv), (earlier + 1, Some(earlier + 1)));
    srv.stop().await;

    let srv = restart(&srv);
    let tok = srv.login("app", &key, Some("files")).await;
    assert_eq!(srv.get_ok("/a.txt", &tok).await, b"a, earlier");
    let (code, text) = fsck_text(&srv);
    assert_eq!(code, Some(0), "{text}");
}

/// With no server running, `status` says that an index put back from an earlier copy is
/// on hold (its digest's generation below the one the data dir recorded: what the server's
/// start holds), as the server's status does: a line `NAME: ON HOLD: …`, `on_hold` in
/// `--json`, exit 3. It said nothing (exit 0). No false alarm on the current index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_status_says_an_earlier_index_put_back_is_on_hold() {
    let s = session(&["--cache-size", "0"]).await;
    let mut srv = s.srv;
    srv.put_ok("/a.txt", &s.token, b"a".to_vec()).await;
    srv.stop().await;
    let index = index_file(&srv.data);
    let copy = srv.dir.path().join("index-copy.redb");
    std::fs::copy(&index, &copy).unwrap();
    let mut srv = restart(&srv);
    let tok = srv.login("app", &s.key, Some("files")).await;
    srv.put_ok("/b.txt", &tok, b"b".to_vec()).await;
    // A clean stop records the later generation.
    srv.stop().await;
    for args in [&["status"][..], &["status", "--fs", "files"][..]] {
        let out = srv.efsctl(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {text}");
        assert!(!text.contains("ON HOLD"), "{text}");
    }
    std::fs::copy(&copy, &index).unwrap();
    for args in [&["status"][..], &["status", "--fs", "files"][..]] {
        let out = srv.efsctl(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {text}");
        assert!(text.contains("files: ON HOLD: "), "{text}");
        assert!(text.contains("the data dir last saw"), "{text}");
        assert!(text.contains("--accept-index"), "{text}");
    }
    let out = srv.efsctl(&["--json", "status", "--fs", "files"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st[0]["on_hold"], true, "{st}");
    // Saying so changed nothing: the next start holds it.
    let srv = restart(&srv);
    let tok = srv.login("app", &s.key, Some("files")).await;
    let r = srv.req("GET", "/a.txt", &tok).send().await.unwrap();
    assert_error(r, 503, "integrity_hold").await;
}

/// A server killed right after writes (its last generations perhaps not recorded: the mark
/// behind the index) starts again without a hold: the mark is never ahead of what the index
/// committed, so a crash is no false alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_right_after_writes_is_not_held_at_its_restart() {
    let s = session(&["--cache-size", "0"]).await;
    let key = s.key;
    let mut srv = s.srv;
    let tok = s.token;
    srv.put_ok("/first.txt", &tok, b"first".to_vec()).await;
    srv.stop().await;
    let (before, mark) = generations(&srv);
    assert_eq!(mark, Some(before));
    for round in 0..3 {
        let mut next = restart(&srv);
        let tok = next.login("app", &key, Some("files")).await;
        for i in 0..20 {
            next.put_ok(&format!("/r{round}-{i}.txt"), &tok, vec![i as u8; 100 + i])
                .await;
        }
        next.kill();
        srv = next;
    }
    let srv = restart(&srv);
    let tok = srv.login("app", &key, Some("files")).await;
    assert_eq!(srv.get_ok("/first.txt", &tok).await, b"first");
    assert_eq!(srv.get_ok("/r2-19.txt", &tok).await, vec![19u8; 119]);
    let (g, mark) = generations(&srv);
    assert!(mark.is_some_and(|m| m <= g && m >= before), "{g} {mark:?}");
}
