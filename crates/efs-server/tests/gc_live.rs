//! gc on a live server: `efs-server --gc-every 1 --gc-grace 0` runs the gc of `efsctl gc`
//! on its filesystems every second, keeping nothing for its age, while concurrent clients
//! upload, overwrite, delete, rename and read back files stored inline and as blobs. gc
//! tells an orphan from live content only by the index and by the set of running uploads
//! (`Filesystem::gc`, `orphan_candidates`): with no grace, a blob written but not yet
//! committed, or a record renamed during its scan, is removed at once if gc misjudges it.
//! A lost blob shows as a failed read, during the load or after it (and after a restart).
//!
//! The model: each client owns the paths under `/cN/` and runs one request at a time, so
//! what every path holds (or that it holds nothing) is known exactly from the answers.
//! Every version's bytes come from (seed, length), so a read of another version, or of a
//! mix of two, matches nothing. Each write is read back at once: a version lost before
//! anything replaced it is seen.
//!
//! How sharp it is: a blob is between its shard and its commit for milliseconds, so a gc
//! blind to running uploads takes one (and fails the test) in most runs, not in every one;
//! the slow client has a partial write in progress during most runs of gc, so a gc that
//! removes those fails it every time, as does one that misses the records naming blobs.
//!
//! Seeded: the seed is printed; `EFS_GC_LIVE_SEED=N` replays the same choices (timing still
//! varies).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt as _;
use serde_json::Value;

/// Concurrent clients, each on its own paths; one more sends its uploads slowly.
const CLIENTS: u64 = 4;
/// How long the clients run at least.
const LOAD: Duration = Duration::from_secs(18);
/// gc runs that must have started and ended while the clients ran.
const MIN_RUNS: usize = 5;
/// How much longer the clients run, at most, while fewer runs than that have ended.
const RUNS_TIMEOUT: Duration = Duration::from_secs(60);
/// Directories per client that writes and file moves pick (`/cN/d0/` …), and file names
/// per directory (`f0` …).
const DIRS: u64 = 5;
const FILES: u64 = 6;
/// The largest content stored inline in the index (`FsOptions::inline_max`): one byte
/// more is a blob.
const INLINE_MAX: usize = 128 * 1024;
/// The slow client's uploads: the first bytes at once (past the inline limit, so that the
/// partial write exists from then on), the rest in pieces this far apart, [`SLOW_PIECES`]
/// of them: longer than a gc interval, so that every such upload runs across a gc.
const SLOW_PAUSE: Duration = Duration::from_millis(120);
const SLOW_PIECES: usize = 12;
const SLOW_FIRST: usize = 160_000;

/// One acknowledged file version: its bytes are `pattern(len, seed)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    seed: u64,
    len: usize,
}

impl Version {
    fn bytes(&self) -> Vec<u8> {
        pattern(self.len, self.seed)
    }
}

/// What the clients do, in turn (the targets and sizes are random): in each round four
/// uploads, two reads, two file moves, a delete and a directory move.
#[derive(Clone, Copy, Debug)]
enum Op {
    Put,
    Get,
    MoveFile,
    Delete,
    MoveDir,
}

const ROUND: [Op; 10] = [
    Op::Put,
    Op::Put,
    Op::Get,
    Op::MoveFile,
    Op::Put,
    Op::Delete,
    Op::Put,
    Op::Get,
    Op::MoveFile,
    Op::MoveDir,
];

/// What each kind of acknowledged request did, over all clients.
#[derive(Debug, Default)]
struct Counts {
    inline_puts: u64,
    blob_puts: u64,
    slow_puts: u64,
    overwrites: u64,
    reads: u64,
    deletes: u64,
    file_moves: u64,
    overwriting_moves: u64,
    dir_moves: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.inline_puts += o.inline_puts;
        self.blob_puts += o.blob_puts;
        self.slow_puts += o.slow_puts;
        self.overwrites += o.overwrites;
        self.reads += o.reads;
        self.deletes += o.deletes;
        self.file_moves += o.file_moves;
        self.overwriting_moves += o.overwriting_moves;
        self.dir_moves += o.dir_moves;
    }
}

/// One client: its own paths under `/cN/`, one request at a time, and the model of what
/// they hold after every acknowledged request.
struct Client {
    id: u64,
    /// Sends its uploads slowly (over 1.4 s): a partial write in progress at every gc.
    slow: bool,
    rng: Rng,
    run_seed: u64,
    http: reqwest::Client,
    base: String,
    token: String,
    t0: Instant,
    /// Every file of the client and its current version.
    files: BTreeMap<String, Version>,
    /// Every directory the client has (`/cN/dK/`): made by a write or a move into it, gone
    /// when moved away (deleting its files leaves it).
    dirs: BTreeSet<String>,
    /// Paths that held a file (deleted or moved away since) and hold none now: 404.
    gone: BTreeSet<String>,
    /// Requests that did not answer as the model says.
    failures: Vec<String>,
    /// Set when a change failed: its outcome is unknown, the client stopped, and the paths
    /// under these prefixes are not checked afterwards.
    unknown: Vec<String>,
    counts: Counts,
    versions: u64,
}

/// A request's status and whole body, or why there is none (a transport error, or a body
/// cut short).
async fn send(rb: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), String> {
    let r = rb.send().await.map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("{status}, body: {e:?}"))?;
    Ok((status, body.to_vec()))
}

/// Why `GET path` does not answer `expected` (`None`: 404), or `None` when it does.
async fn mismatch(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    expected: Option<&Version>,
) -> Option<String> {
    let got = send(http.get(format!("{base}{path}")).bearer_auth(token)).await;
    match (got, expected) {
        (Err(e), _) => Some(format!("GET {path}: {e}")),
        (Ok((404, _)), None) => None,
        (Ok((s, body)), None) => Some(format!(
            "GET {path}: {s} with {} bytes, expected 404 (deleted or moved away)",
            body.len()
        )),
        (Ok((200, body)), Some(v)) => {
            let want = v.bytes();
            if body == want {
                return None;
            }
            let at = body
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(body.len().min(want.len()));
            Some(format!(
                "GET {path}: {} bytes, expected {} ({v:?}), first difference at byte {at}",
                body.len(),
                v.len
            ))
        }
        (Ok((s, body)), Some(v)) => Some(format!(
            "GET {path}: {s} {}, expected 200 with {} bytes ({v:?})",
            String::from_utf8_lossy(&body[..body.len().min(300)]),
            v.len
        )),
    }
}

fn dir_of(path: &str) -> &str {
    &path[..=path.rfind('/').expect("an absolute path")]
}

impl Client {
    fn fail(&mut self, what: String) {
        let line = format!(
            "client {} at {:.1} s: {what}",
            self.id,
            self.t0.elapsed().as_secs_f64()
        );
        self.failures.push(line);
    }

    /// A change that did not answer `want`: recorded, and the client stops (what `paths`
    /// hold is not known any more).
    fn failed_change(&mut self, what: String, paths: &[&str]) {
        self.fail(what);
        self.unknown = paths.iter().map(|p| (*p).to_owned()).collect();
    }

    fn slot(&mut self) -> String {
        let (d, f) = (self.rng.below(DIRS), self.rng.below(FILES));
        format!("/c{}/d{d}/f{f}", self.id)
    }

    fn random_file(&mut self) -> Option<String> {
        let paths: Vec<String> = self.files.keys().cloned().collect();
        (!paths.is_empty()).then(|| self.rng.pick(&paths).clone())
    }

    /// Reads `path` back: it must hold what the model says.
    async fn check(&mut self, path: &str) {
        let expected = self.files.get(path).copied();
        if let Some(m) =
            mismatch(&self.http, &self.base, &self.token, path, expected.as_ref()).await
        {
            self.fail(m);
        }
        self.counts.reads += 1;
    }

    /// Inline (a few bytes to a few KiB, or exactly the largest inline size) or a blob
    /// (one byte over, 140 000 to 260 000 bytes, or now and then up to 600 000), half and
    /// half. Blobs mostly small: more of them, and so more commits of new blobs for gc to
    /// run into.
    fn random_len(&mut self) -> usize {
        match self.rng.below(20) {
            0 => INLINE_MAX,
            1 => INLINE_MAX + 1,
            2..=9 => self.rng.range(1, 3000) as usize,
            10..=17 => self.rng.range(140_000, 260_000) as usize,
            _ => self.rng.range(260_000, 600_000) as usize,
        }
    }

    /// The body of an upload of `v`: at once, or, from the slow client, its first
    /// [`SLOW_FIRST`] bytes at once and the rest in [`SLOW_PIECES`] pieces [`SLOW_PAUSE`]
    /// apart (pacing the load, not waiting for anything).
    fn body(&self, v: &Version) -> reqwest::Body {
        let bytes = v.bytes();
        if !self.slow {
            return bytes.into();
        }
        let (first, rest) = bytes.split_at(SLOW_FIRST.min(bytes.len()));
        let mut pieces = vec![(Duration::ZERO, first.to_vec())];
        pieces.extend(
            rest.chunks(rest.len().div_ceil(SLOW_PIECES).max(1))
                .map(|p| (SLOW_PAUSE, p.to_vec())),
        );
        let stream = futures_util::stream::iter(pieces).then(|(pause, piece)| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::io::Error>(piece)
        });
        reqwest::Body::wrap_stream(stream)
    }

    /// `PUT` a new file or a new version of one: 201 or 200 as the model says.
    async fn put(&mut self) {
        let path = self.slot();
        self.versions += 1;
        let len = if self.slow {
            self.rng.range(300_000, 450_000) as usize
        } else {
            self.random_len()
        };
        let v = Version {
            seed: self.run_seed ^ (self.id << 56) ^ self.versions,
            len,
        };
        let replaces = self.files.contains_key(&path);
        let want = if replaces { 200 } else { 201 };
        let url = format!("{}{path}", self.base);
        let body = self.body(&v);
        match send(self.http.put(url).bearer_auth(&self.token).body(body)).await {
            Ok((s, _)) if s == want => {}
            Ok((s, body)) => {
                let what = format!(
                    "PUT {path} ({} bytes): {s} {}, expected {want}",
                    v.len,
                    String::from_utf8_lossy(&body)
                );
                return self.failed_change(what, &[&path]);
            }
            Err(e) => return self.failed_change(format!("PUT {path}: {e}"), &[&path]),
        }
        if self.slow {
            self.counts.slow_puts += 1;
        } else if v.len > INLINE_MAX {
            self.counts.blob_puts += 1;
        } else {
            self.counts.inline_puts += 1;
        }
        self.counts.overwrites += u64::from(replaces);
        self.files.insert(path.clone(), v);
        self.gone.remove(&path);
        self.dirs.insert(dir_of(&path).to_owned());
        self.check(&path).await;
    }

    /// `GET` a file of the client's, or now and then a path that held one: 404.
    async fn get(&mut self) {
        let gone: Vec<String> = self.gone.iter().cloned().collect();
        let path = if !gone.is_empty() && self.rng.below(5) == 0 {
            self.rng.pick(&gone).clone()
        } else if let Some(p) = self.random_file() {
            p
        } else {
            return self.put().await;
        };
        self.check(&path).await;
    }

    /// `DELETE` a file: 204, and it answers 404.
    async fn delete(&mut self) {
        let Some(path) = self.random_file() else {
            return self.put().await;
        };
        let url = format!("{}{path}", self.base);
        match send(self.http.delete(url).bearer_auth(&self.token)).await {
            Ok((204, _)) => {}
            Ok((s, body)) => {
                let what = format!(
                    "DELETE {path}: {s} {}, expected 204",
                    String::from_utf8_lossy(&body)
                );
                return self.failed_change(what, &[&path]);
            }
            Err(e) => return self.failed_change(format!("DELETE {path}: {e}"), &[&path]),
        }
        self.counts.deletes += 1;
        self.files.remove(&path);
        self.gone.insert(path.clone());
        self.check(&path).await;
    }

    /// `MOVE` a file to a free name (in its directory or another, made if missing), or,
    /// one time in three, onto another file of the client's (`Overwrite: T`).
    async fn move_file(&mut self) {
        let Some(from) = self.random_file() else {
            return self.put().await;
        };
        let others: Vec<String> = self.files.keys().filter(|p| **p != from).cloned().collect();
        let mut to = None;
        if others.is_empty() || self.rng.below(3) != 0 {
            for _ in 0..10 {
                let p = self.slot();
                if !self.files.contains_key(&p) {
                    to = Some(p);
                    break;
                }
            }
        }
        let to = match to {
            Some(p) => p,
            None if !others.is_empty() => self.rng.pick(&others).clone(),
            None => return self.put().await,
        };
        let overwrite = self.files.contains_key(&to);
        let mut rb = self.move_request(&from, &to);
        if overwrite {
            rb = rb.header("Overwrite", "T");
        }
        match send(rb).await {
            Ok((200, _)) => {}
            Ok((s, body)) => {
                let what = format!(
                    "MOVE {from} to {to} (overwrite: {overwrite}): {s} {}, expected 200",
                    String::from_utf8_lossy(&body)
                );
                return self.failed_change(what, &[&from, &to]);
            }
            Err(e) => {
                return self.failed_change(format!("MOVE {from} to {to}: {e}"), &[&from, &to]);
            }
        }
        self.counts.file_moves += 1;
        self.counts.overwriting_moves += u64::from(overwrite);
        let v = self.files.remove(&from).expect("a file of the model");
        self.files.insert(to.clone(), v);
        self.gone.insert(from.clone());
        self.gone.remove(&to);
        self.dirs.insert(dir_of(&to).to_owned());
        self.check(&to).await;
        self.check(&from).await;
    }

    /// A `MOVE` of `from` to `to` with this client's token.
    fn move_request(&self, from: &str, to: &str) -> reqwest::RequestBuilder {
        self.http
            .request(
                reqwest::Method::from_bytes(b"MOVE").unwrap(),
                format!("{}{from}", self.base),
            )
            .bearer_auth(&self.token)
            .header("Destination", to)
    }

    /// `MOVE` a directory with its files (one holding some, if any does) to a new name
    /// (`/cN/mK/`, which no write makes): 200, its files answer under the new name and 404
    /// under the old.
    async fn move_dir(&mut self) {
        let full: Vec<String> = self
            .dirs
            .iter()
            .filter(|d| self.files.keys().any(|p| p.starts_with(d.as_str())))
            .cloned()
            .collect();
        let all: Vec<String> = self.dirs.iter().cloned().collect();
        let from = match (full.is_empty(), all.is_empty()) {
            (false, _) => self.rng.pick(&full).clone(),
            (true, false) => self.rng.pick(&all).clone(),
            (true, true) => return self.put().await,
        };
        let to = format!("/c{}/m{}/", self.id, self.counts.dir_moves);
        let rb = self.move_request(&from, &to);
        match send(rb).await {
            Ok((200, _)) => {}
            Ok((s, body)) => {
                let what = format!(
                    "MOVE {from} to {to}: {s} {}, expected 200",
                    String::from_utf8_lossy(&body)
                );
                return self.failed_change(what, &[&from, &to]);
            }
            Err(e) => {
                return self.failed_change(format!("MOVE {from} to {to}: {e}"), &[&from, &to]);
            }
        }
        self.counts.dir_moves += 1;
        let moved: Vec<String> = self
            .files
            .keys()
            .filter(|p| p.starts_with(&from))
            .cloned()
            .collect();
        let mut renamed = Vec::new();
        for old in moved {
            let v = self.files.remove(&old).expect("listed above");
            let new = format!("{to}{}", &old[from.len()..]);
            self.gone.insert(old.clone());
            self.gone.remove(&new);
            self.files.insert(new.clone(), v);
            renamed.push((old, new));
        }
        self.dirs.remove(&from);
        self.dirs.insert(to);
        if let Some((old, new)) = renamed.first().cloned() {
            self.check(&new).await;
            self.check(&old).await;
        }
    }

    /// Runs rounds of [`ROUND`] until `stop`, or until a change failed.
    async fn run(mut self, stop: Arc<AtomicBool>) -> Client {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) && self.unknown.is_empty() {
            match ROUND[i % ROUND.len()] {
                Op::Put => self.put().await,
                Op::Get => self.get().await,
                Op::MoveFile => self.move_file().await,
                Op::Delete => self.delete().await,
                Op::MoveDir => self.move_dir().await,
            }
            i += 1;
        }
        self
    }

    fn is_unknown(&self, path: &str) -> bool {
        self.unknown.iter().any(|u| path.starts_with(u.as_str()))
    }
}

/// Every path of every client's model read through `srv` (each file byte for byte, each
/// path deleted or moved away 404), and each client's directories listed: exactly its
/// model's directories and files, nothing more. Returns how many paths were read and what
/// did not match.
async fn check_models(srv: &TestServer, token: &str, clients: &[Client]) -> (usize, Vec<String>) {
    let mut read = 0;
    let mut wrong = Vec::new();
    for c in clients {
        let expected = c
            .files
            .iter()
            .map(|(p, v)| (p, Some(v)))
            .chain(c.gone.iter().map(|p| (p, None)));
        for (path, v) in expected.filter(|(p, _)| !c.is_unknown(p)) {
            read += 1;
            if let Some(m) = mismatch(&srv.client, &srv.base, token, path, v).await {
                wrong.push(m);
            }
        }
        if !c.unknown.is_empty() {
            continue;
        }
        let root = format!("/c{}/", c.id);
        let mut dirs = BTreeSet::new();
        let mut files = BTreeSet::new();
        for e in srv.list_all(&root, token, 1000).await {
            let name = e["name"].as_str().expect("a name");
            match e["type"].as_str() {
                Some("dir") => {
                    dirs.insert(format!("{root}{name}/"));
                }
                _ => wrong.push(format!("{root}: an entry that is not a directory: {e}")),
            }
        }
        for d in &dirs {
            for e in srv.list_all(d, token, 1000).await {
                files.insert(format!("{d}{}", e["name"].as_str().expect("a name")));
            }
        }
        if dirs != c.dirs {
            wrong.push(format!(
                "{root} lists the directories {dirs:?}, expected {:?}",
                c.dirs
            ));
        }
        let want: BTreeSet<String> = c.files.keys().cloned().collect();
        if files != want {
            wrong.push(format!(
                "{root} lists the files {files:?}, expected {want:?}"
            ));
        }
    }
    (read, wrong)
}

/// The server's own gc runs on "files" in the audit log (a 202 when one starts, a 200 when
/// it ends, or an error), oldest first.
fn automatic_gc(srv: &TestServer) -> Vec<Value> {
    audit_show(srv, &["--action", "admin"])
        .into_iter()
        .filter(|e| {
            e["detail"].as_str().is_some_and(|d| d.starts_with("gc "))
                && e["user"] == "efs-server"
                && e["client"] == "automatic"
                && e["fs"] == "files"
        })
        .collect()
}

/// How many runs among `entries` both started and ended there (gc runs on a filesystem
/// one at a time: its entries alternate, 202 then 200).
fn whole_runs(entries: &[Value]) -> usize {
    let mut started = false;
    let mut n = 0;
    for e in entries {
        if e["status"] == 202 {
            started = true;
        } else if e["status"] == 200 && started {
            n += 1;
            started = false;
        }
    }
    n
}

/// The first 40 of `lines`, one a line, and how many more there are.
fn first_of(lines: &[impl AsRef<str>]) -> String {
    let mut out: Vec<&str> = lines.iter().take(40).map(AsRef::as_ref).collect();
    let more = format!("… and {} more", lines.len().saturating_sub(40));
    if lines.len() > 40 {
        out.push(&more);
    }
    out.join("\n")
}

/// gc running every second with no grace, on a server that clients keep writing to, loses
/// nothing: four clients upload new files and new versions (inline and blobs, and the
/// sizes on either side of the inline limit), delete, move files (onto free names and over
/// other files) and directories, and read back what they wrote, and a fifth does the same
/// with uploads sent slowly, each across a run of gc, for at least 18 s while at least
/// five runs of gc start and end; every request answers as the model of acknowledged
/// changes says, every path reads back exactly its bytes (404 once deleted or moved away),
/// each client's directories list exactly its files, every run of gc succeeded, and fsck
/// finds no error and no orphan. After a restart, every path reads the same again. A gc that
/// took a blob being written (uploaded, not yet committed) or one named by a record it
/// missed in its scan for an orphan would make a read fail, here or after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_running_every_second_under_writes_loses_nothing() {
    let seed = seed_from_env("EFS_GC_LIVE_SEED");
    println!("gc_live: seed {seed} (replay with EFS_GC_LIVE_SEED={seed})");
    // The server looks for filesystems made while it runs once a minute: "files" is made
    // first, and the server under test finds it at its start (its first gc comes at once).
    let s = session(&[]).await;
    let mut made = s.srv;
    made.stop().await;
    let mut srv = TestServer::start_in(
        made.dir.clone(),
        &["--gc-every", "1", "--gc-grace", "0"],
        &[],
    );
    let token = srv.login("app", &s.key, None).await;
    assert!(
        srv.stdout().contains(
            "Automatic gc: every 1 s on each filesystem, the first 0 s after the start, keeping orphans younger than 0 s"
        ),
        "{}",
        srv.stdout()
    );
    // Runs recorded before the load are not counted.
    let before = automatic_gc(&srv).len();

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..=CLIENTS {
        let c = Client {
            id,
            slow: id == CLIENTS,
            rng: Rng(seed ^ (id + 1).wrapping_mul(0x1000_0001)),
            run_seed: seed,
            http: srv.client.clone(),
            base: srv.base.clone(),
            token: token.clone(),
            t0,
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
            gone: BTreeSet::new(),
            failures: Vec::new(),
            unknown: Vec::new(),
            counts: Counts::default(),
            versions: 0,
        };
        tasks.spawn(c.run(stop.clone()));
    }
    // The load runs LOAD, then on until MIN_RUNS runs of gc have started and ended during
    // it (or RUNS_TIMEOUT more has passed: the assertion below then fails).
    tokio::time::sleep_until((t0 + LOAD).into()).await;
    loop {
        let runs = whole_runs(&tokio::task::block_in_place(|| automatic_gc(&srv))[before..]);
        if runs >= MIN_RUNS || t0.elapsed() > LOAD + RUNS_TIMEOUT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    while let Some(c) = tasks.join_next().await {
        clients.push(c.expect("a client task ends"));
    }
    clients.sort_by_key(|c| c.id);
    let load_secs = t0.elapsed().as_secs_f64();
    let gc = automatic_gc(&srv);
    let runs = whole_runs(&gc[before..]);
    let mut counts = Counts::default();
    for c in &clients {
        counts.add(&c.counts);
    }
    let failures: Vec<&String> = clients.iter().flat_map(|c| &c.failures).collect();
    let stderr = srv.stderr();
    let removals: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("automatic gc 'files': removed"))
        .collect();
    eprintln!(
        "gc_live: seed {seed}, load of {load_secs:.1} s: {runs} gc runs started and ended during it \
         ({} gc entries in all), {counts:?}, {} failed requests; runs that removed something: {removals:#?}",
        gc.len(),
        failures.len()
    );
    // What the server holds now, and fsck, before any assertion: a failure shows all.
    let (read, wrong) = check_models(&srv, &token, &clients).await;
    let (fsck_ok, fsck) = srv.efsctl_text(&["fsck", "--fs", "files"]);
    eprintln!(
        "gc_live: {read} paths read back after the load, {} wrong",
        wrong.len()
    );
    assert!(
        failures.is_empty() && wrong.is_empty(),
        "seed {seed}: {} requests failed during the load:\n{}\n\
         {} of {read} paths differ from the model after it:\n{}",
        failures.len(),
        first_of(&failures),
        wrong.len(),
        first_of(&wrong)
    );
    assert!(
        fsck_ok
            && fsck.contains(" 0 errors, 0 orphan blobs, 0 orphan inline")
            && !fsck.contains("partial"),
        "seed {seed}: {fsck}"
    );
    assert!(
        runs >= MIN_RUNS,
        "seed {seed}: only {runs} runs of gc started and ended during a load of {load_secs:.1} s: {gc:#?}"
    );
    for e in &gc {
        assert!(
            e["status"] == 202 || e["status"] == 200,
            "seed {seed}: a gc run failed: {e}"
        );
    }
    assert!(
        counts.inline_puts > 0
            && counts.blob_puts > 0
            && counts.slow_puts > 0
            && counts.overwrites > 0
            && counts.deletes > 0
            && counts.file_moves > 0
            && counts.overwriting_moves > 0
            && counts.dir_moves > 0,
        "seed {seed}: every kind of change was made: {counts:?}"
    );

    // Durable: the same after a restart (whose gc waits the default hour).
    srv.stop().await;
    let again = TestServer::start_in(srv.dir.clone(), &[], &[]);
    let token = again.login("app", &s.key, None).await;
    let (read_again, wrong) = check_models(&again, &token, &clients).await;
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} of {read_again} paths differ from the model after a restart:\n{}",
        wrong.len(),
        first_of(&wrong)
    );
    let fsck = again.efsctl_ok(&["fsck", "--fs", "files"]);
    assert!(
        fsck.contains(" 0 errors, 0 orphan blobs, 0 orphan inline"),
        "seed {seed}: {fsck}"
    );
}
