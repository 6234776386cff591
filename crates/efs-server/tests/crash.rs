//! Crash consistency: 32 concurrent clients create, overwrite, rename and delete files of
//! mixed sizes (bytes to megabytes) while the real server is killed with SIGKILL at random
//! moments, many times; after each restart every path is checked against a model of the
//! acknowledged operations.
//!
//! The model: each client owns four paths and runs one operation at a time on them, so
//! their state is exact except for the one operation in flight at the kill, which may or
//! may not have happened (a rename in flight: either name). Four shared paths take
//! concurrent overwrites from every client: a version stays possible until a put that
//! *started after it was acknowledged* is itself acknowledged (then it was overwritten).
//! A read after restart must be byte-exact one of the allowed states — content is derived
//! from (version, length), so a partial or mixed read matches none — and an in-flight
//! rename must have happened whole or not at all. What the read shows then becomes the
//! exact state for the next cycle. After the last cycle: `efsctl gc --grace 0`, then
//! `efsctl fsck` must be clean (server stopped).
//!
//! Seeded: the seed is printed; `EFS_CRASH_SEED=N` replays the same choices (timing still
//! varies). `EFS_CRASH_CYCLES=N` runs more kill cycles (default 15).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Rng, TestServer, env_u64, new_tempdir, pattern, seed_from_env};
use serde_json::json;

const CLIENTS: usize = 32;
const OWNED: usize = 4;
const SHARED: usize = 4;
const DEFAULT_CYCLES: usize = 15;

/// A path's content: absent, or the version `ver` of length `len` (bytes: `pattern`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Absent,
    File { ver: u64, len: usize },
}

impl State {
    fn bytes(&self) -> Option<Vec<u8>> {
        match *self {
            State::Absent => None,
            State::File { ver, len } => Some(pattern(len, ver)),
        }
    }
}

fn owned_path(client: usize, k: usize) -> String {
    format!("/c{client:02}/f{k}")
}

fn shared_path(k: usize) -> String {
    format!("/shared/s{k}")
}

/// Mixed sizes: inline-small, segment-sized, hundreds of KiB, megabytes.
fn random_len(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..=3 => rng.range(0, 1500) as usize,
        4..=6 => rng.range(1500, 70_000) as usize,
        7..=8 => rng.range(70_000, 600_000) as usize,
        _ => rng.range(1 << 20, 3 << 20) as usize,
    }
}

/// A candidate version of a shared path.
#[derive(Clone, Debug)]
struct Candidate {
    state: State,
    /// `seq` at acknowledgement; `None` while (or if, at a kill) in flight.
    acked: Option<u64>,
}

#[derive(Default)]
struct SharedModel {
    paths: Vec<Vec<Candidate>>,
}

impl SharedModel {
    /// Put `state` acknowledged at `acked`, started at `started`: every candidate
    /// acknowledged before `started` is overwritten.
    fn ack(&mut self, k: usize, state: State, started: u64, acked: u64) {
        let c = &mut self.paths[k];
        c.retain(|x| !matches!(x.acked, Some(a) if a < started) && x.state != state);
        c.push(Candidate {
            state,
            acked: Some(acked),
        });
    }
}

/// The operation a client had in flight when the server died.
#[derive(Debug, Clone)]
enum InFlight {
    Owned {
        /// (path index, state if it happened)
        changes: Vec<(usize, State)>,
    },
    Shared {
        k: usize,
        state: State,
    },
}

/// One client's exact knowledge of its paths, plus what was in flight.
#[derive(Clone, Debug)]
struct ClientModel {
    id: usize,
    /// Allowed states of each owned path (one element when exact).
    owned: Vec<Vec<State>>,
    /// A rename in flight: (from, to, moved state).
    rename: Option<(usize, usize, State)>,
    next_ver: u64,
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    puts: u64,
    gets: u64,
    deletes: u64,
    renames: u64,
    shared_puts: u64,
    in_flight_at_kill: u64,
    bytes_put: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.puts += o.puts;
        self.gets += o.gets;
        self.deletes += o.deletes;
        self.renames += o.renames;
        self.shared_puts += o.shared_puts;
        self.in_flight_at_kill += o.in_flight_at_kill;
        self.bytes_put += o.bytes_put;
    }
    fn acked(&self) -> u64 {
        self.puts + self.gets + self.deletes + self.renames + self.shared_puts
    }
}

/// Environment shared by the clients of one cycle.
struct Ctx {
    client: reqwest::Client,
    base: String,
    token: String,
    seq: AtomicU64,
    shared: std::sync::Mutex<SharedModel>,
    seed: u64,
}

enum Outcome {
    Acked(reqwest::StatusCode, Vec<u8>),
    /// No answer: the server died (or the request never reached it).
    Lost,
}

impl Ctx {
    async fn send(&self, req: reqwest::RequestBuilder) -> Outcome {
        match req.bearer_auth(&self.token).send().await {
            Ok(r) => {
                let s = r.status();
                match r.bytes().await {
                    Ok(b) => Outcome::Acked(s, b.to_vec()),
                    Err(_) => Outcome::Lost,
                }
            }
            Err(_) => Outcome::Lost,
        }
    }
    fn url(&self, p: &str) -> String {
        format!("{}{}", self.base, p)
    }
}

/// Runs `m`'s operations until the server dies (a request gets no answer).
async fn run_client(ctx: Arc<Ctx>, mut m: ClientModel, cycle: usize) -> (ClientModel, Counts) {
    let mut rng = Rng(ctx.seed ^ ((cycle as u64) << 32) ^ ((m.id as u64 + 1) * 0x1000_0001));
    let mut n = Counts::default();
    let exact = |m: &ClientModel, k: usize| -> State {
        assert_eq!(m.owned[k].len(), 1, "client {} path {k} is exact", m.id);
        m.owned[k][0]
    };
    loop {
        let k = rng.below(OWNED as u64) as usize;
        let cur = exact(&m, k);
        let op = rng.below(10);
        let path = owned_path(m.id, k);
        m.next_ver += 1;
        let ver = ((m.id as u64 + 1) << 40) | m.next_ver;
        let new = State::File {
            ver,
            len: random_len(&mut rng),
        };
        let (inflight, out) = match (op, cur) {
            (0..=1, State::File { .. }) => {
                let out = ctx.send(ctx.client.get(ctx.url(&path))).await;
                if let Outcome::Acked(s, body) = &out {
                    assert_eq!(*s, 200, "GET {path}: {}", String::from_utf8_lossy(body));
                    assert!(
                        Some(body) == cur.bytes().as_ref(),
                        "GET {path} served {} bytes that are not the acknowledged {cur:?}",
                        body.len()
                    );
                    n.gets += 1;
                }
                (None, out)
            }
            (2, State::File { .. }) => {
                let out = ctx.send(ctx.client.delete(ctx.url(&path))).await;
                if let Outcome::Acked(s, body) = &out {
                    assert_eq!(*s, 204, "DELETE {path}: {}", String::from_utf8_lossy(body));
                    m.owned[k] = vec![State::Absent];
                    n.deletes += 1;
                }
                (
                    Some(InFlight::Owned {
                        changes: vec![(k, State::Absent)],
                    }),
                    out,
                )
            }
            (3, State::File { .. }) => {
                let to = (k + 1 + rng.below(OWNED as u64 - 1) as usize) % OWNED;
                let body = json!({"from": path, "to": owned_path(m.id, to), "overwrite": true});
                m.rename = Some((k, to, cur));
                let out = ctx
                    .send(ctx.client.post(ctx.url("/_efs/move")).json(&body))
                    .await;
                if let Outcome::Acked(s, body) = &out {
                    assert_eq!(*s, 200, "move {path}: {}", String::from_utf8_lossy(body));
                    m.owned[k] = vec![State::Absent];
                    m.owned[to] = vec![cur];
                    m.rename = None;
                    n.renames += 1;
                }
                (
                    Some(InFlight::Owned {
                        changes: vec![(k, State::Absent), (to, cur)],
                    }),
                    out,
                )
            }
            (4, _) => {
                let sk = rng.below(SHARED as u64) as usize;
                let State::File { len, .. } = new else {
                    unreachable!()
                };
                let started = ctx.seq.fetch_add(1, Ordering::SeqCst);
                let out = ctx
                    .send(
                        ctx.client
                            .put(ctx.url(&shared_path(sk)))
                            .body(pattern(len, ver)),
                    )
                    .await;
                if let Outcome::Acked(s, body) = &out {
                    assert!(
                        *s == 200 || *s == 201,
                        "PUT shared {sk}: {s} {}",
                        String::from_utf8_lossy(body)
                    );
                    let acked = ctx.seq.fetch_add(1, Ordering::SeqCst);
                    ctx.shared.lock().unwrap().ack(sk, new, started, acked);
                    n.shared_puts += 1;
                    n.bytes_put += len as u64;
                }
                (Some(InFlight::Shared { k: sk, state: new }), out)
            }
            _ => {
                let State::File { len, .. } = new else {
                    unreachable!()
                };
                let out = ctx
                    .send(ctx.client.put(ctx.url(&path)).body(pattern(len, ver)))
                    .await;
                if let Outcome::Acked(s, body) = &out {
                    assert!(
                        *s == 200 || *s == 201,
                        "PUT {path}: {s} {}",
                        String::from_utf8_lossy(body)
                    );
                    m.owned[k] = vec![new];
                    n.puts += 1;
                    n.bytes_put += len as u64;
                }
                (
                    Some(InFlight::Owned {
                        changes: vec![(k, new)],
                    }),
                    out,
                )
            }
        };
        if let Outcome::Lost = out {
            // The server is gone: the operation may or may not have happened.
            n.in_flight_at_kill += 1;
            match inflight {
                Some(InFlight::Owned { changes }) => {
                    for (k, s) in changes {
                        if !m.owned[k].contains(&s) {
                            m.owned[k].push(s);
                        }
                    }
                }
                Some(InFlight::Shared { k, state }) => {
                    ctx.shared.lock().unwrap().paths[k].push(Candidate { state, acked: None });
                }
                None => {}
            }
            break;
        }
    }
    (m, n)
}

/// GETs `path`: its state, which must be one of `allowed`, byte-exact.
async fn observe(srv: &TestServer, token: &str, path: &str, allowed: &[State], seed: u64) -> State {
    let (status, body) = srv.get(path, token).await;
    let got = match status {
        404 => State::Absent,
        200 => allowed
            .iter()
            .copied()
            .find(|s| s.bytes().as_ref() == Some(&body))
            .unwrap_or_else(|| {
                panic!(
                    "seed {seed}: {path} served {} bytes matching none of the allowed states \
                     {allowed:?} (partial or mixed content)",
                    body.len()
                )
            }),
        s => panic!(
            "seed {seed}: GET {path} after restart: {s} {}",
            String::from_utf8_lossy(&body)
        ),
    };
    assert!(
        allowed.contains(&got),
        "seed {seed}: {path} is {got:?}, allowed {allowed:?}"
    );
    got
}

/// Checks every path after a restart and collapses the model to what was observed.
async fn verify(
    srv: &TestServer,
    token: &str,
    clients: &mut [ClientModel],
    shared: &mut SharedModel,
    seed: u64,
) -> u64 {
    let mut reads = 0;
    for m in clients.iter_mut() {
        let mut seen = Vec::new();
        for k in 0..OWNED {
            let path = owned_path(m.id, k);
            let got = observe(srv, token, &path, &m.owned[k], seed).await;
            reads += 1;
            m.owned[k] = vec![got];
            seen.push(got);
        }
        if let Some((from, to, moved)) = m.rename.take() {
            let happened = seen[to] == moved;
            assert_eq!(
                seen[from] == State::Absent,
                happened,
                "seed {seed}: client {} rename f{from} -> f{to} half-applied: {seen:?}",
                m.id
            );
        }
        // The directory listing agrees with the reads.
        let r = srv
            .req("GET", &format!("/c{:02}/", m.id), token)
            .send()
            .await
            .unwrap();
        let listed: BTreeSet<(String, u64)> = if r.status() == 404 {
            BTreeSet::new()
        } else {
            assert_eq!(r.status(), 200);
            let page: serde_json::Value = r.json().await.unwrap();
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().to_owned(),
                        e["size"].as_u64().unwrap(),
                    )
                })
                .collect()
        };
        let expected: BTreeSet<(String, u64)> = seen
            .iter()
            .enumerate()
            .filter_map(|(k, s)| match s {
                State::File { len, .. } => Some((format!("f{k}"), *len as u64)),
                State::Absent => None,
            })
            .collect();
        assert_eq!(listed, expected, "seed {seed}: listing of /c{:02}/", m.id);
    }
    for k in 0..SHARED {
        let mut allowed: Vec<State> = shared.paths[k].iter().map(|c| c.state).collect();
        allowed.sort();
        allowed.dedup();
        let got = observe(srv, token, &shared_path(k), &allowed, seed).await;
        reads += 1;
        shared.paths[k] = vec![Candidate {
            state: got,
            acked: Some(0),
        }];
    }
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_concurrent_writes_loses_nothing_acknowledged() {
    let seed = seed_from_env("EFS_CRASH_SEED");
    let cycles = env_u64("EFS_CRASH_CYCLES").unwrap_or(DEFAULT_CYCLES as u64) as usize;
    println!("crash: seed {seed} (replay with EFS_CRASH_SEED={seed}), {cycles} kill cycles");
    let t0 = Instant::now();
    let mut rng = Rng(seed);

    let dir = Arc::new(new_tempdir());
    let srv = TestServer::start_in(dir.clone(), &[], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    let mut srv = Some(srv);

    let mut clients: Vec<ClientModel> = (0..CLIENTS)
        .map(|id| ClientModel {
            id,
            owned: vec![vec![State::Absent]; OWNED],
            rename: None,
            next_ver: 0,
        })
        .collect();
    let mut shared = SharedModel {
        paths: vec![
            vec![Candidate {
                state: State::Absent,
                acked: Some(0),
            }];
            SHARED
        ],
    };
    let mut total = Counts::default();
    let mut reads = 0;

    for cycle in 0..cycles {
        let s = srv.take().expect("a running server");
        let ctx = Arc::new(Ctx {
            client: s.client.clone(),
            base: s.base.clone(),
            token: token.clone(),
            // Above every `acked` of the previous cycle's survivors (0).
            seq: AtomicU64::new(1),
            shared: std::sync::Mutex::new(std::mem::take(&mut shared)),
            seed,
        });
        let tasks: Vec<_> = clients
            .drain(..)
            .map(|m| tokio::spawn(run_client(ctx.clone(), m, cycle)))
            .collect();
        let delay = rng.range(50, 500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // SIGKILL: dropping the harness's server kills it (-9) and waits for it.
        drop(s);
        for t in tasks {
            let (m, n) = t.await.expect("a client task panicked");
            clients.push(m);
            total.add(&n);
        }
        clients.sort_by_key(|m| m.id);
        shared = std::mem::take(&mut *ctx.shared.lock().unwrap());

        let s = TestServer::start_in(dir.clone(), &[], &[]);
        reads += verify(&s, &token, &mut clients, &mut shared, seed).await;
        srv = Some(s);
    }

    // The end: no client runs. gc with no grace, then fsck must be clean (server stopped).
    let mut s = srv.take().unwrap();
    s.stop().await;
    let gc = s.efsctl_ok(&["gc", "--fs", "files", "--grace", "0"]);
    let fsck = s.efsctl_ok(&["fsck", "--fs", "files"]);
    assert!(
        fsck.contains("0 errors, 0 orphan blobs, 0 orphan inline contents"),
        "seed {seed}: fsck after gc: {fsck}\n(gc: {gc})"
    );
    println!(
        "crash: {cycles} SIGKILL cycles survived in {:.1}s; acknowledged operations: {} \
         ({} puts, {} shared overwrites, {} renames, {} deletes, {} reads; {:.1} MiB written); \
         {} in flight at a kill; {} post-restart reads checked; gc: {}; fsck clean",
        t0.elapsed().as_secs_f64(),
        total.acked(),
        total.puts,
        total.shared_puts,
        total.renames,
        total.deletes,
        total.gets,
        total.bytes_put as f64 / (1 << 20) as f64,
        total.in_flight_at_kill,
        reads,
        gc.trim().replace('\n', "; ")
    );
    assert!(
        total.acked() > 0,
        "seed {seed}: no operation was acknowledged at all"
    );
}

/// A server killed with SIGKILL leaves its index open: the next start has redb check and
/// repair it before the filesystem opens (which reads the whole file), says so in the log
/// instead of looking like a start that hangs, and serves what was acknowledged. A clean
/// stop leaves nothing to repair, and the log says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_servers_index_is_repaired_at_the_next_start_and_the_log_says_so() {
    const SAID: &str = "the database was not closed cleanly";
    let dir = Arc::new(new_tempdir());
    let srv = TestServer::start_in(dir.clone(), &[], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    srv.put_ok("/files/a.txt", &token, "acknowledged").await;
    // SIGKILL: dropping the harness's server kills it (-9) and waits for it.
    drop(srv);
    let srv = TestServer::start_in(dir.clone(), &[], &[]);
    let token = srv.login("app", &key, None).await;
    assert_eq!(srv.get_ok("/files/a.txt", &token).await, b"acknowledged");
    // Both files the server holds open: the filesystem's index and the system database.
    // Logged before it listens, on stderr, which is read apart from stdout: waited for.
    let log = srv
        .stderr_when(|log| {
            ["index.redb", "system.redb"].iter().all(|file| {
                log.lines()
                    .any(|l| l.contains("repaired and is open") && l.contains(file))
            })
        })
        .await;
    for file in ["index.redb", "system.redb"] {
        assert!(
            log.lines()
                .any(|l| l.contains(SAID) && l.contains(file) && l.contains("progress")),
            "the repair of {file} is not in the log:\n{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains("repaired and is open") && l.contains(file)),
            "the end of {file}'s repair is not in the log:\n{log}"
        );
    }
    // Killed again, then efsctl without a server: it repairs the index and says so too.
    let mut srv = srv;
    srv.kill();
    let out = srv.efsctl(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "efsctl status: {err}");
    assert!(err.contains(SAID), "efsctl does not say it repairs:\n{err}");
    let srv = TestServer::start_in(dir.clone(), &[], &[]);
    let token = srv.login("app", &key, None).await;
    assert_eq!(srv.get_ok("/files/a.txt", &token).await, b"acknowledged");
    assert!(
        !srv.stderr().contains(SAID),
        "efsctl closed the repaired index"
    );
    // A clean stop (SIGTERM) closes the index: nothing to repair at the next start.
    let mut srv = srv;
    assert!(srv.stop().await.expect("it was running").success());
    drop(srv);
    let srv = TestServer::start_in(dir.clone(), &[], &[]);
    let token = srv.login("app", &key, None).await;
    assert_eq!(srv.get_ok("/files/a.txt", &token).await, b"acknowledged");
    let log = srv.stderr();
    assert!(!log.contains(SAID), "a repair after a clean stop:\n{log}");
}

/// A recursive delete killed part-way (SIGKILL) leaves the tree whole or gone, never part
/// of it: it is detached in one commit, then emptied in the background, and the emptying
/// resumes at the next start. (It deleted entry by entry, one commit each: a kill left a
/// half-deleted tree.) Eventually fsck is clean: nothing of the tree is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recursive_delete_killed_part_way_leaves_the_tree_whole_or_gone() {
    const DIRS: usize = 10;
    const PER_DIR: usize = 100;
    let dir = Arc::new(new_tempdir());
    let srv = TestServer::start_in(dir.clone(), &[], &[]);
    srv.create_fs("files");
    let key = srv.create_user("app", &["files"], false);
    let token = srv.login("app", &key, None).await;
    srv.put_ok("/files/keep.txt", &token, "kept").await;
    let srv = Arc::new(srv);
    let mut writers = tokio::task::JoinSet::new();
    for d in 0..DIRS {
        let (srv, token) = (srv.clone(), token.clone());
        writers.spawn(async move {
            for f in 0..PER_DIR {
                // Some blobs among the inline files.
                let len = if f % 25 == 0 { 200_000 } else { 100 };
                srv.put_ok(
                    &format!("/files/tree/d{d}/f{f}"),
                    &token,
                    pattern(len, (d * PER_DIR + f) as u64),
                )
                .await;
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    let srv = Arc::into_inner(srv).expect("the writers are done");
    // What fsck says of the whole tree (its counts are the ones to expect if it is whole).
    let whole = srv.efsctl_ok(&["fsck", "--fs", "files"]);
    let whole = whole.lines().next().unwrap().to_owned();
    let delete = srv
        .req("DELETE", "/files/tree/?recursive=true", &token)
        .send();
    let deleting = tokio::spawn(delete);
    // Long enough for the DELETE to reach the server, short of emptying 1,000 entries.
    tokio::time::sleep(Duration::from_millis(150)).await;
    // SIGKILL: dropping the harness's server kills it (-9) and waits for it.
    drop(srv);
    let answer = deleting.await.unwrap();
    println!(
        "DELETE before the kill: {:?}",
        answer.as_ref().map(|r| r.status())
    );

    let srv = TestServer::start_in(dir.clone(), &[], &[]);
    let token = srv.login("app", &key, None).await;
    let (status, _) = srv.get("/files/tree/", &token).await;
    let left = if status == 404 {
        0
    } else {
        assert_eq!(status, 200);
        let mut n = 0;
        for d in srv.list_all("/files/tree/", &token, 1000).await {
            let name = d["name"].as_str().unwrap();
            n += srv
                .list_all(&format!("/files/tree/{name}/"), &token, 1000)
                .await
                .len();
        }
        n
    };
    assert!(
        left == 0 || left == DIRS * PER_DIR,
        "a part of the tree is left: {left} of {} files",
        DIRS * PER_DIR
    );
    if let Ok(r) = &answer
        && r.status() == 204
    {
        assert_eq!(left, 0, "an acknowledged delete is whole");
    }
    assert_eq!(srv.get_ok("/files/keep.txt", &token).await, b"kept");
    // The emptying resumed at the start: eventually only what is left is in the index, and
    // no content of the deleted tree remains.
    let (tree_files, tree_dirs) = (DIRS * PER_DIR, 1 + DIRS);
    let records_whole: usize = whole
        .strip_prefix("fsck 'files': ")
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{whole}"));
    let want = if left == 0 {
        let records = records_whole - tree_files - tree_dirs;
        format!(
            "fsck 'files': {records} records, 1 files verified, 0 errors, 0 orphan blobs, \
             0 orphan inline contents"
        )
    } else {
        whole.clone()
    };
    assert!(
        whole.contains(&format!("{} files verified, 0 errors", 1 + tree_files)),
        "{whole}"
    );
    // The counts fsck gives once the emptying is over, but for orphan blobs: a kill between
    // an entry's commit and the removal of its blob leaves that blob an orphan (the emptying
    // removes one entry at a time: at most one), as after any delete (docs/design.md), for
    // gc to remove.
    let (counts, end) = want
        .split_once(", 0 orphan blobs, ")
        .unwrap_or_else(|| panic!("{want}"));
    // Waited for as long as the emptying makes progress (one fsynced commit per entry: slow
    // on a loaded disk), at most a minute without any.
    let (mut since, mut seen) = (Instant::now(), String::new());
    let orphans = loop {
        let out = srv.efsctl(&["fsck", "--fs", "files"]);
        let fsck = String::from_utf8_lossy(&out.stdout).into_owned();
        // The records and files of a delete not emptied yet are counted apart: wait for
        // them to go too. While the server empties it, a blob whose record it has just
        // removed is an orphan for a moment (exit 3, checked and not clean).
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "fsck failed: {fsck}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let first = fsck.lines().next().unwrap_or_default();
        let orphans = first
            .strip_prefix(&format!("{counts}, "))
            .and_then(|rest| rest.strip_suffix(&format!(" orphan blobs, {end}")))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(n) = orphans
            && !fsck.contains("of unfinished recursive deletes")
        {
            break n;
        }
        if fsck != seen {
            (since, seen) = (Instant::now(), fsck.clone());
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "fsck after the restart, never {want} (but for orphan blobs), and no progress for a minute:\n{fsck}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(orphans <= 1, "{orphans} orphan blobs after the emptying");
    let gc = srv.efsctl_ok(&["gc", "--fs", "files", "--grace", "0"]);
    assert!(
        gc.contains(&format!(
            "removed {orphans} orphan blobs, 0 orphan inline contents"
        )),
        "{gc}"
    );
    let fsck = srv.efsctl_ok(&["fsck", "--fs", "files"]);
    assert_eq!(fsck.lines().next(), Some(want.as_str()), "{fsck}");
}
