//! The admin socket (`system/admin.sock`, mode 0600): `efsctl` sends one JSON
//! [`AdminRequest`] per line and reads one JSON [`AdminResponse`] per line. Only a local
//! user that can open the data dir can reach it, and only root and the server's own account
//! are answered (checked with `SO_PEERCRED`).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use efs_core::admin::{self, AdminRequest, AdminResponse, Operator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use zeroize::Zeroizing;

use crate::app::AppState;

/// The longest request line the socket reads (the connection is answered an error and
/// closed past it).
pub const MAX_REQUEST_LINE: u64 = 1 << 20;

/// Admin connections served at once; further ones wait to be accepted.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// How long an admin connection may take to send its next request line (efsctl sends its
/// one request at once; a command's own run time is not counted).
pub const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Binds the socket (replacing a stale one) and serves it until the task is dropped.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        // redb already refused a second server on this data dir, so the socket is stale.
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    // The data dir is 0700, so the socket is never reachable by others even before chmod.
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Binds the auditor socket at `path` (`--auditor-socket`, outside the data dir `data`):
/// group `gid`, mode 0660, so that the group's members reach it. The socket is made in a
/// directory of its own (0700, beside `path`), given its group and mode there, and renamed
/// into place: a path-based chmod or chown at `path` itself could be sent elsewhere by a
/// symbolic link swapped in by whoever else can write `path`'s directory. A socket left
/// there by an earlier run is replaced, one that answers (another server's) is refused, as is
/// any other file. Returns the listener and the socket's inode (removed at the stop only if
/// it is still this one).
pub async fn bind_auditor(
    path: &Path,
    gid: u32,
    data: &Path,
) -> anyhow::Result<(UnixListener, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if efs_core::datadir::is_inside_data_dir(data, path) {
        anyhow::bail!(
            "--auditor-socket {}: inside the data dir; give a path outside it (e.g. /run/efs/audit.sock)",
            path.display()
        );
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "--auditor-socket {}: another process listens there (another efs-server?)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "--auditor-socket {}: a file that is not a socket is there; remove it or name another path",
            path.display()
        ),
        Err(_) => {}
    }
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).expect("the system RNG does not fail on Linux");
    let private = parent.join(format!(".efs-auditor-{}", hex::encode(nonce)));
    std::fs::create_dir(&private)
        .with_context(|| format!("making {} beside the auditor socket", private.display()))?;
    let made = (|| -> anyhow::Result<UnixListener> {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
        let inner = private.join("s");
        let l = UnixListener::bind(&inner)
            .with_context(|| format!("binding the auditor socket {}", path.display()))?;
        std::os::unix::fs::chown(&inner, None, Some(gid))
            .with_context(|| format!("giving the auditor socket to group {gid}"))?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o660))?;
        std::fs::rename(&inner, path)
            .with_context(|| format!("moving the auditor socket to {}", path.display()))?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let l = made?;
    let ino = std::fs::symlink_metadata(path)?.ino();
    Ok((l, ino))
}

/// Removes the auditor socket at `path` at the stop, if it is still the one bound (`ino`).
pub fn remove_auditor(path: &Path, ino: u64) {
    use std::os::unix::fs::MetadataExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino) {
        let _ = std::fs::remove_file(path);
    }
}

/// Most entries one `audit show` returns through the auditor socket (10,000: a few MB), so
/// that the socket's few connections cannot hold the server's memory.
pub const AUDITOR_SHOW_MAX: u64 = 10_000;
/// Longest request line on the auditor socket (its requests are a filter at most).
pub const AUDITOR_REQUEST_LINE: u64 = 8 << 10;
/// Most connections to the auditor socket at once.
pub const AUDITOR_CONNECTIONS: usize = 4;

/// Who a socket answers, and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The admin socket: every command, to root and the server's own account.
    Admin,
    /// The auditor socket (`--auditor-socket`): `audit show` and `audit verify` only, to
    /// root, the server's account and processes whose group is `gid`.
    Auditor {
        /// `--auditor-group`.
        gid: u32,
    },
}

/// Serves admin connections.
pub async fn serve(listener: UnixListener, state: Arc<AppState>) {
    serve_as(listener, state, Role::Admin).await
}

/// Serves the connections of a socket of `role`.
pub async fn serve_as(listener: UnixListener, state: Arc<AppState>, role: Role) {
    let slots = Arc::new(tokio::sync::Semaphore::new(match role {
        Role::Admin => MAX_ADMIN_CONNECTIONS,
        Role::Auditor { .. } => AUDITOR_CONNECTIONS,
    }));
    let max_line = match role {
        Role::Admin => MAX_REQUEST_LINE,
        Role::Auditor { .. } => AUDITOR_REQUEST_LINE,
    };
    loop {
        // At most so many connections at once: a process that opens them and sends
        // nothing holds no more than these (and each for IDLE at most).
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Without a pause, an error that persists (EMFILE) would spin a core.
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(crate::server::ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let st = state.clone();
        // The audit log names the local account on the other end of the socket.
        let cred = stream.peer_cred();
        let uid = cred.as_ref().ok().map(|c| c.uid());
        let peer_gid = cred.as_ref().ok().map(|c| c.gid());
        let op = Operator {
            user: uid
                .map(|u| format!("uid:{u}"))
                .unwrap_or_else(|| "uid:unknown".into()),
            via: match role {
                Role::Admin => "admin-socket".into(),
                Role::Auditor { .. } => "auditor-socket".into(),
            },
        };
        tokio::spawn(async move {
            let _slot = slot;
            let (r, mut w) = stream.into_split();
            // The socket's mode (0600) and the data dir's (0700) keep other accounts out;
            // this holds also when those were loosened by mistake (a volume mounted with
            // other permissions, a chmod -R): only root and the server's own account run
            // admin commands.
            let server_uid = rustix::process::geteuid().as_raw();
            let refused = match role {
                Role::Admin => allowed_peer(uid, server_uid).err(),
                Role::Auditor { gid } => allowed_peer(uid, server_uid)
                    .or_else(|e| match (peer_gid, uid) {
                        (Some(g), _) if g == gid => Ok(()),
                        // A supplementary member (`usermod -aG`): its process reached the
                        // socket through its mode, so it has the group; its account must be
                        // a member as /etc/group says.
                        (_, Some(u)) if configured_member(u, gid) => Ok(()),
                        _ => Err(format!(
                            "{e}, and neither its group nor its account (in /etc/group) is --auditor-group {gid}'s"
                        )),
                    })
                    .err(),
            };
            let mut r = LineReader::new(r);
            loop {
                // A request line is a few hundred bytes; one without an end is not read
                // into memory whole.
                let line = match tokio::time::timeout(IDLE, r.next_line()).await {
                    Ok(Ok(Some(line))) => line,
                    Ok(Ok(None) | Err(_)) | Err(_) => break,
                };
                // A refused peer's request is read (so that its client, which writes before
                // it reads, gets the answer rather than a broken pipe) but never parsed.
                if let Some(refusal) = &refused {
                    tracing::warn!(peer = %op.user, "admin socket: {refusal}");
                    // Refused before anything was read into a request: efsctl exits 5, and
                    // knows that nothing was done (a key pair it generated is removed).
                    let answer = AdminResponse {
                        exit: Some(admin::EXIT_REFUSED),
                        ..AdminResponse::err(refusal.clone())
                    };
                    let mut out =
                        serde_json::to_vec(&answer).expect("serialising JSON cannot fail");
                    out.push(b'\n');
                    let _ = w.write_all(&out).await;
                    break;
                }
                let too_long = line.len() as u64 > max_line;
                let resp = if too_long {
                    AdminResponse::err(format!("bad admin request: longer than {max_line} bytes"))
                } else {
                    match serde_json::from_slice::<AdminRequest>(&line) {
                        Ok(req) if role.refuses(&req).is_some() => {
                            let why = role.refuses(&req).unwrap_or_default();
                            tracing::warn!(peer = %op.user, "auditor socket: {why}");
                            if let Err(e) =
                                admin::record_admin_failed(&st.data, &op, &req, &why).await
                            {
                                tracing::warn!(error = %e, "could not record a refused auditor request");
                            }
                            AdminResponse::err(why)
                        }
                        Ok(req) => handle(&st, req, &op).await,
                        Err(e) => AdminResponse::err(format!("bad admin request: {e}")),
                    }
                };
                let mut out = serde_json::to_vec(&resp).expect("serialising JSON cannot fail");
                out.push(b'\n');
                if w.write_all(&out).await.is_err() || too_long {
                    break;
                }
            }
        });
    }
}

impl Role {
    /// Why a socket of this role does not run `req` (`None`: it does).
    pub fn refuses(&self, req: &AdminRequest) -> Option<String> {
        match (self, req) {
            (Role::Admin, _) | (Role::Auditor { .. }, AdminRequest::AuditVerify { .. }) => None,
            (Role::Auditor { .. }, AdminRequest::AuditShow { limit, .. }) => {
                (limit.unwrap_or(0) > AUDITOR_SHOW_MAX).then(|| {
                    format!(
                        "refused: at most {AUDITOR_SHOW_MAX} entries a request through the auditor socket (narrow it: --since, --until, --user, --path)"
                    )
                })
            }
            (Role::Auditor { .. }, _) => Some(
                "refused: the auditor socket answers audit show and audit verify only".to_owned(),
            ),
        }
    }
}

/// Reads request lines into buffers that are wiped once used (a restore's request carries
/// the contents of key parts): every buffer is zeroized before it is freed or grown.
struct LineReader<R> {
    r: R,
    /// Bytes read and not yet returned.
    pending: Zeroizing<Vec<u8>>,
}

impl<R: tokio::io::AsyncRead + Unpin> LineReader<R> {
    fn new(r: R) -> Self {
        Self {
            r,
            pending: Zeroizing::new(Vec::with_capacity(16 << 10)),
        }
    }

    /// The next line with its `\n`; past [`MAX_REQUEST_LINE`] bytes without one, those
    /// bytes (longer than the limit: the caller refuses them). `None` at the end.
    async fn next_line(&mut self) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
        let mut chunk = Zeroizing::new([0u8; 8 << 10]);
        let mut searched = 0;
        loop {
            if let Some(i) = self.pending[searched..].iter().position(|&b| b == b'\n') {
                let end = searched + i + 1;
                let line = Zeroizing::new(self.pending[..end].to_vec());
                let rest = Zeroizing::new(self.pending[end..].to_vec());
                self.pending = wiped_copy(&rest, rest.len().max(16 << 10));
                return Ok(Some(line));
            }
            searched = self.pending.len();
            if self.pending.len() as u64 > MAX_REQUEST_LINE {
                return Ok(Some(std::mem::take(&mut self.pending)));
            }
            let n = self.r.read(&mut chunk[..]).await?;
            if n == 0 {
                // A last line without its end is still a request.
                return Ok((!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending)));
            }
            if self.pending.len() + n > self.pending.capacity() {
                // Grown here, not by `Vec`, which would free the old buffer unwiped.
                let cap = (self.pending.len() + n).max(self.pending.capacity() * 2);
                self.pending = wiped_copy(&self.pending, cap);
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `bytes` in a new buffer of `capacity` (the old one is zeroized when dropped).
fn wiped_copy(bytes: &[u8], capacity: usize) -> Zeroizing<Vec<u8>> {
    let mut v = Vec::with_capacity(capacity);
    v.extend_from_slice(bytes);
    Zeroizing::new(v)
}

/// Whether the account on the other end of the socket may run admin commands: root, or
/// the account the server runs as (`server_uid`). An unknown peer is refused.
/// Whether the account `uid` is a member of group `gid` as the system's files say: its login
/// group in /etc/passwd, or named in the group's line of /etc/group (what `usermod -aG` and
/// `adduser USER GROUP` write). Read at each connection of the auditor socket, so that a
/// member removed from the group is refused from then on. Accounts and groups known only to
/// NSS (LDAP, sssd) are not seen: their members use the group as their process's own (`sg`).
fn configured_member(uid: u32, gid: u32) -> bool {
    match (
        std::fs::read_to_string("/etc/passwd"),
        std::fs::read_to_string("/etc/group"),
    ) {
        (Ok(passwd), Ok(group)) => member_in(&passwd, &group, uid, gid),
        _ => false,
    }
}

/// [`configured_member`] on the files' text.
fn member_in(passwd: &str, group: &str, uid: u32, gid: u32) -> bool {
    // name:password:uid:gid:gecos:home:shell, one account a line (several names may share
    // a uid).
    let mut names = Vec::new();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || f[0].is_empty() || f[2].parse::<u32>() != Ok(uid) {
            continue;
        }
        if f[3].parse::<u32>() == Ok(gid) {
            return true;
        }
        names.push(f[0]);
    }
    // name:password:gid:member,member,…
    !names.is_empty()
        && group.lines().any(|line| {
            let f: Vec<&str> = line.split(':').collect();
            f.len() >= 4
                && f[2].parse::<u32>() == Ok(gid)
                && f[3].split(',').any(|m| names.contains(&m.trim()))
        })
}

fn allowed_peer(peer: Option<u32>, server_uid: u32) -> Result<(), String> {
    match peer {
        Some(0) => Ok(()),
        Some(uid) if uid == server_uid => Ok(()),
        Some(uid) => Err(format!(
            "refused: uid {uid} is neither root nor the server's account (uid {server_uid})"
        )),
        None => Err("refused: the peer's account could not be read".to_owned()),
    }
}

/// How often the server looks for key terms due for rotation ([`rotate_when_due`]).
const ROTATION_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts a key rotation of every filesystem whose current key term has sealed half of the
/// records AES-GCM with random nonces allows one key ([`efs_core::Filesystem::rotation_due`]),
/// as an operator would with `efsctl rotate-key`, and recorded as that command by the
/// account `efs-server`, `automatic`: past the whole limit, writes would be refused. Looks
/// once a minute; a rotation that could not start (a re-encryption or a restore runs, the
/// index is on hold, a panic: `without_panics`) is tried again after a wait that doubles
/// each time, up to an hour, so that a long obstacle does not write two audit entries a minute.
pub async fn rotate_when_due(st: Arc<AppState>) {
    use std::time::{Duration, Instant};
    let mut tick = tokio::time::interval(ROTATION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per filesystem whose last try failed: when to try again, and the wait after that.
    let mut backoff: HashMap<String, (Instant, Duration)> = HashMap::new();
    loop {
        tick.tick().await;
        if st.detached.is_closed() {
            return;
        }
        for fs in st.data.open_filesystems() {
            if !fs.rotation_due() {
                backoff.remove(fs.name());
                continue;
            }
            if backoff
                .get(fs.name())
                .is_some_and(|(next, _)| Instant::now() < *next)
            {
                continue;
            }
            let name = fs.name().to_owned();
            let op = Operator {
                user: efs_core::datadir::SERVER_USER.into(),
                via: "automatic".into(),
            };
            let req = AdminRequest::RotateKey {
                fs: name.clone(),
                wait: false,
            };
            let r = {
                let st = st.clone();
                without_panics(async move { handle(&st, req, &op).await }).await
            };
            if r.ok {
                backoff.remove(&name);
                tracing::warn!(
                    fs = %name,
                    "started a key rotation: the current key term has sealed half of the 2^32 records AES-GCM allows it"
                );
            } else {
                let wait = backoff.get(&name).map_or(ROTATION_CHECK, |(_, w)| {
                    (*w * 2).min(Duration::from_secs(3600))
                });
                backoff.insert(name.clone(), (Instant::now() + wait, wait));
                tracing::warn!(fs = %name, error = ?r.error, retry_in_secs = wait.as_secs(), "a key rotation is due and could not start");
            }
        }
    }
}

/// When the server runs gc by itself (`--gc-every`, `--gc-grace`; [`gc_when_due`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcSchedule {
    /// Time between two runs on one filesystem; `None`: never (`--gc-every 0`).
    pub every: Option<std::time::Duration>,
    /// Orphans younger than this are kept (as `efsctl gc --grace`), and the first run on a
    /// filesystem comes this long after the server first sees it: by then whatever a crash
    /// before the start left is older than the grace.
    pub grace: std::time::Duration,
}

impl GcSchedule {
    /// The start-up line saying when gc runs.
    pub fn describe(&self) -> String {
        match self.every {
            Some(every) => format!(
                "Automatic gc: every {} s on each filesystem, the first {} s after the start, keeping orphans younger than {} s (--gc-every, --gc-grace); at once for a filesystem whose last run (kept in system/gc-last-runs) was that interval ago",
                every.as_secs(),
                self.grace.as_secs(),
                self.grace.as_secs()
            ),
            None => {
                "Automatic gc: off (--gc-every 0): after a crash, run efsctl gc on each filesystem"
                    .to_owned()
            }
        }
    }
}

/// The longest wait between two looks at the filesystems (a new one, the shutdown).
const GC_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// A gc that failed (a restore runs, the index is on hold) is tried again this long after,
/// or at the next run if that comes first.
const GC_RETRY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The file, in the data dir's `system/` directory, where the server keeps when gc last ran
/// on each filesystem (its own, or `efsctl gc` through it): one line per filesystem, its id
/// (32 hex digits), a space, the Unix time in ms, and (since the run's count is kept) a space
/// and how many orphan blobs the run removed. Not a secret (ids, times and counts only), not
/// sealed: a lost or altered file only moves the next automatic run (to `--gc-grace` after
/// the start, as without it) and the `/metrics` gauges of the last runs. Written whole and
/// durably after each run, with the filesystems the server serves then only
/// ([`GcRuns::record`]).
pub const GC_LAST_RUNS: &str = "gc-last-runs";

/// The last successful gc run on a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcRun {
    /// When it ended, Unix ms.
    pub at_ms: i64,
    /// How many orphan blobs it removed (`None`: a line written before the count was kept).
    pub blobs_removed: Option<u64>,
}

/// When gc last ran on each filesystem and what it removed, as kept in [`GC_LAST_RUNS`]: the
/// server's own runs and `efsctl gc` through the admin socket (both go through the same
/// handler). The automatic gc times its first run after a start from it, and `/metrics`
/// shows it (`efs_gc_last_run_timestamp_seconds`, `efs_gc_last_blobs_removed`).
pub struct GcRuns {
    /// `DATA/system/gc-last-runs`.
    file: PathBuf,
    /// A map of runs, each changed in one step: still whole after a panic elsewhere, so a
    /// poisoned lock is taken as it is.
    runs: std::sync::Mutex<HashMap<[u8; 16], GcRun>>,
}

impl GcRuns {
    /// What [`GC_LAST_RUNS`] in the data dir `root` says (nothing if it is missing or
    /// unreadable; lines that do not parse are skipped). Blocking: a file read.
    pub fn load(root: &Path) -> Self {
        let file = root.join("system").join(GC_LAST_RUNS);
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let runs = text
            .lines()
            .filter_map(|l| {
                let mut fields = l.split(' ');
                let id: [u8; 16] = hex::decode(fields.next()?).ok()?.try_into().ok()?;
                let at_ms = fields.next()?.parse().ok()?;
                let blobs_removed = match fields.next() {
                    Some(n) => Some(n.parse().ok()?),
                    None => None,
                };
                fields.next().is_none().then_some((
                    id,
                    GcRun {
                        at_ms,
                        blobs_removed,
                    },
                ))
            })
            .collect();
        Self {
            file,
            runs: std::sync::Mutex::new(runs),
        }
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], GcRun>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last run on filesystem `id`, if one is known.
    pub fn get(&self, id: &[u8; 16]) -> Option<GcRun> {
        self.runs().get(id).copied()
    }

    /// Records `run` as filesystem `id`'s last and writes the file whole and durably
    /// ([`efs_core::datadir::write_atomic`]: fsynced, renamed, its directory fsynced), with
    /// the filesystems in `served` only: those the server no longer serves (a filesystem
    /// whose directory was moved away, one whose index no longer opens) are dropped, from
    /// the file and from memory. Blocking (file writes and fsyncs); one call at a time (gc
    /// runs hold the lock of filesystem changes), so that the file is written in the order
    /// of the runs.
    pub fn record(
        &self,
        id: [u8; 16],
        run: GcRun,
        served: &HashSet<[u8; 16]>,
    ) -> efs_core::Result<()> {
        let text = {
            let mut runs = self.runs();
            runs.insert(id, run);
            runs.retain(|id, _| served.contains(id));
            let mut lines: Vec<String> = runs
                .iter()
                .map(|(id, r)| match r.blobs_removed {
                    Some(n) => format!("{} {} {n}\n", hex::encode(id), r.at_ms),
                    None => format!("{} {}\n", hex::encode(id), r.at_ms),
                })
                .collect();
            lines.sort();
            lines.concat()
        };
        efs_core::datadir::write_atomic(&self.file, text.as_bytes())
    }
}

/// Now, in Unix ms.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Records a successful gc of filesystem `fs` (its answer `r`) in [`AppState::gc_runs`] and
/// its file, on the blocking pool; a failure to write the file is logged (the run stays
/// known until the server stops).
async fn record_gc_run(st: &AppState, fs: &str, r: &AdminResponse) {
    let Some(id) = st.data.fs(fs).map(|f| *f.id()) else {
        return;
    };
    let run = GcRun {
        at_ms: unix_ms(),
        blobs_removed: r.data["blobs_removed"].as_u64(),
    };
    let served: HashSet<[u8; 16]> = st.data.open_filesystems().iter().map(|f| *f.id()).collect();
    let runs = st.gc_runs.clone();
    let written = tokio::task::spawn_blocking(move || runs.record(id, run, &served)).await;
    let failed = match written {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(error) = failed {
        tracing::warn!(fs, file = %st.gc_runs.file.display(), error, "could not record when gc ran; after a restart the automatic gc runs --gc-grace after the start");
    }
}

/// When a filesystem's first automatic gc in this process is due: `--gc-grace` after the
/// server first sees it, or at once if its last run (`last_ms`, kept across restarts) was
/// `--gc-every` ago or more, or when that comes if it is sooner than the grace (a server
/// restarted more often than the grace would otherwise never run it).
fn first_gc_due(
    now: tokio::time::Instant,
    now_ms: i64,
    every: std::time::Duration,
    grace: std::time::Duration,
    last_ms: Option<i64>,
) -> tokio::time::Instant {
    let after_grace = now + grace;
    let Some(last_ms) = last_ms else {
        return after_grace;
    };
    let since = std::time::Duration::from_millis(u64::try_from(now_ms - last_ms).unwrap_or(0));
    after_grace.min(now + every.saturating_sub(since))
}

/// Runs gc on every open filesystem as an operator would with `efsctl gc --grace`, recorded
/// as that command by the account `efs-server`, `automatic` (entries 202 and 200, as for
/// the command): what a crash leaves between a commit and its content's removal (an orphan
/// blob or inline content, a partial write) is removed without anyone running it. Each
/// filesystem's first run comes [`GcSchedule::grace`] after the server first sees it (it
/// looks at least once a minute), or sooner when its last run (its own, or an `efsctl gc`
/// through the server), kept in [`GC_LAST_RUNS`] across restarts, was
/// [`GcSchedule::every`] ago (`first_gc_due`), then one every
/// [`GcSchedule::every`]; a run that failed
/// (an index on hold) is tried again after an hour (or the interval, if shorter). Runs take
/// the lock of filesystem creations, restores and gc, as the command does: one waits for a
/// restore (of any filesystem) to end, and the filesystems after it wait with it. Started
/// after the server's start entry; stops at the shutdown. A run removing something warns of
/// what it removed; one that panics is a failed run (`without_panics`).
pub async fn gc_when_due(st: Arc<AppState>, schedule: GcSchedule) {
    use tokio::time::Instant;
    let Some(every) = schedule.every else {
        return;
    };
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        if st.detached.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut next = now + GC_CHECK;
        for fs in st.data.open_filesystems() {
            if st.detached.is_closed() {
                return;
            }
            let name = fs.name().to_owned();
            let when = *due.entry(name.clone()).or_insert_with(|| {
                let last = st.gc_runs.get(fs.id()).map(|r| r.at_ms);
                first_gc_due(now, unix_ms(), every, schedule.grace, last)
            });
            if when > now {
                next = next.min(when);
                continue;
            }
            let op = Operator {
                user: efs_core::datadir::SERVER_USER.into(),
                via: "automatic".into(),
            };
            let req = AdminRequest::Gc {
                fs: name.clone(),
                grace_secs: schedule.grace.as_secs(),
            };
            let r = {
                let st = st.clone();
                without_panics(async move { handle(&st, req, &op).await }).await
            };
            let after = if r.ok {
                let removed = ["blobs_removed", "inline_removed", "partials_removed"]
                    .iter()
                    .map(|k| r.data[*k].as_u64().unwrap_or(0))
                    .sum::<u64>();
                // Warned of: orphans are what a crash or a failed removal left.
                if removed > 0 {
                    tracing::warn!(fs = %name, "automatic {}", r.lines.join("; "));
                }
                // Recorded in `GcRuns` by `handle`, as an `efsctl gc` through the socket is.
                every
            } else if st.detached.is_closed() {
                // Refused (or cut short) by the shutdown: not a failure to warn of.
                return;
            } else {
                let error = r.error.as_deref().unwrap_or("unknown error");
                tracing::warn!(fs = %name, error, "the automatic gc could not run; it is tried again in an hour (or at the next run, if sooner)");
                every.min(GC_RETRY)
            };
            let again = Instant::now() + after;
            due.insert(name, again);
            next = next.min(again);
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Runs one of the server's own commands (the automatic gc and key rotation) in a task of its
/// own, a panic inside it answered as an error: the loop that runs it logs the failure and
/// tries again at its next time, instead of ending with the panic for the life of the process.
async fn without_panics(
    command: impl std::future::Future<Output = AdminResponse> + Send + 'static,
) -> AdminResponse {
    match tokio::spawn(command).await {
        Ok(r) => r,
        Err(e) => AdminResponse::err(match e.try_into_panic() {
            Ok(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                format!("it panicked ({what}); this is a bug, please report it")
            }
            Err(_) => "it was cancelled".to_owned(),
        }),
    }
}

async fn handle(st: &AppState, req: AdminRequest, op: &Operator) -> AdminResponse {
    if matches!(req, AdminRequest::Health) {
        // Not recorded: it reads nothing and changes nothing. Below the free-space reserve
        // the server is still healthy (it serves reads and deletes): the answer says uploads
        // are refused, and `efsctl health` warns without failing.
        let mut r = admin::health(&st.data);
        if r.ok
            && let Err(low) = st.reserve.check_for_health()
        {
            r.data["uploads"] = serde_json::Value::String(format!("refused: {}", low.reason()));
        }
        return r;
    }
    // A shutdown closes the audit log once the tracked work has ended (or its timeout has
    // passed): a command arriving after it began is refused, and one running is tracked
    // (the token taken before the check, so that a shutdown closing the tracker in between
    // still waits for it), so that its change is not carried out unrecorded after the log
    // closed.
    let _tracked = st.detached.token();
    if st.detached.is_closed() {
        return AdminResponse::err("the server is shutting down".to_owned());
    }
    if matches!(req, AdminRequest::AuditNewLog) {
        // The running server writes the log it would move aside.
        let refused = "efs-server is running: stop it first. audit new-log moves the log the running server writes aside";
        if let Err(e) = admin::record_admin_failed(&st.data, op, &req, refused).await {
            return AdminResponse::err(e.to_string());
        }
        return AdminResponse::err(refused.to_owned());
    }
    if matches!(req, AdminRequest::RetireTerms { .. }) {
        // The server holds the index open (it is rewritten into a fresh file) and the
        // keyring in memory.
        let refused = "efs-server is running: stop it first. retire-terms rewrites the filesystem's index and keyring, which the running server holds open (run efsctl rotate-key --fs FS --wait while it runs, then stop it and run retire-terms)";
        if let Err(e) = admin::record_admin_failed(&st.data, op, &req, refused).await {
            return AdminResponse::err(e.to_string());
        }
        // Refused until something is done first: efsctl exits 5, as for its other refusals.
        return AdminResponse {
            exit: Some(admin::EXIT_REFUSED),
            ..AdminResponse::err(refused.to_owned())
        };
    }
    if matches!(
        req,
        AdminRequest::RotateSigningKey | AdminRequest::RotateTlsKey
    ) {
        // The server signs and checks tokens with the key it started with, and serves the TLS
        // key it loaded; a new key stored under it would take effect only at the next start,
        // silently.
        let refused = if matches!(req, AdminRequest::RotateTlsKey) {
            "efs-server is running: stop it first. rotate-tls-key replaces the TLS key the running server serves"
        } else {
            "efs-server is running: stop it first. rotate-signing-key replaces the key the running server signs and checks tokens with"
        };
        if let Err(e) = admin::record_admin_failed(&st.data, op, &req, refused).await {
            return AdminResponse::err(e.to_string());
        }
        return AdminResponse::err(refused.to_owned());
    }
    if matches!(
        req,
        AdminRequest::Restore { .. } | AdminRequest::CreateFs { .. }
    ) && let Err(low) = st.reserve.check()
    {
        // Below the free-space reserve a restore would write its blobs and records into the
        // room kept for the audit log (and a new filesystem only takes uploads that are
        // refused). Deletes and gc, which free space, go on. (A restore begun above the
        // reserve stops before the blob that would reach it: `FsOptions::space_check`.)
        let refused = format!(
            "refused below the free-space reserve: {}. Free space or grow the volume first \
             (deletes and efsctl gc still work), then run it again",
            low.reason()
        );
        if let Err(e) = admin::record_admin_failed(&st.data, op, &req, &refused).await {
            return AdminResponse::err(e.to_string());
        }
        return AdminResponse::err(refused);
    }
    if matches!(
        req,
        AdminRequest::BindCert {
            sha256: Some(_),
            ..
        }
    ) && !st.client_ca
    {
        // Saved, the binding would make every later login of the user fail: no connection to
        // this server presents a client certificate.
        let refused = "efs-server runs without --client-ca: no connection presents a client \
            certificate, so a user bound to one could not log in any more. Start efs-server \
            with --client-ca CA.pem first, then bind the certificate";
        if let Err(e) = admin::record_admin_failed(&st.data, op, &req, refused).await {
            return AdminResponse::err(e.to_string());
        }
        return AdminResponse::err(refused.to_owned());
    }
    if matches!(req, AdminRequest::ReloadTls) {
        return reload_tls(st, op).await;
    }
    if matches!(req, AdminRequest::CacheClear) {
        if let Err(e) = admin::record_admin(&st.data, op, &req, true).await {
            return AdminResponse::err(e.to_string());
        }
        let before = st.cache.weighted_size();
        st.cache.clear();
        let lookups = st.data.forget_lookups();
        return AdminResponse {
            ok: true,
            lines: vec![format!(
                "Cleared the decrypted cache ({before} bytes) and {lookups} remembered path lookups"
            )],
            data: serde_json::json!({
                "cleared": true,
                "cache_bytes": before,
                "path_lookups": lookups,
            }),
            ..Default::default()
        };
    }
    // User and grant changes run one at a time, each with its reload: two concurrent
    // read-modify-writes of a user (a grant and a revoke) would otherwise lose one, and an
    // older snapshot of the users could be installed after a newer one, bringing back
    // revoked tokens. Filesystem creations (a restore makes one) and gc run one at a time
    // under a lock of their own, so that a revoke never waits behind an hours-long restore;
    // reading commands take no lock.
    let users_change = matches!(
        req,
        AdminRequest::CreateUser { .. }
            | AdminRequest::Grant { .. }
            | AdminRequest::Revoke { .. }
            | AdminRequest::DeleteUser { .. }
            | AdminRequest::ReplaceKey { .. }
            | AdminRequest::BindCert { .. }
    );
    let fs_change = matches!(
        req,
        AdminRequest::CreateFs { .. } | AdminRequest::Restore { .. } | AdminRequest::Gc { .. }
    );
    let _users = if users_change {
        Some(USER_CHANGES.lock().await)
    } else {
        None
    };
    // Writes whose last check of their caller passed hold the authority lock shared until
    // their commit ends: taken here until the change is loaded, so that once a revoke (or a
    // deletion, a grant, a new key) answers, every write checked before it has landed and
    // every later one sees it (`DataDir::authority`).
    let _authority = if users_change {
        Some(st.data.authority().clone().write_owned().await)
    } else {
        None
    };
    let _fs = if fs_change {
        Some(FS_CHANGES.lock().await)
    } else {
        None
    };
    // Checked again once the locks are held: a command that waited for one through the
    // start of a shutdown does not begin.
    if st.detached.is_closed() {
        return AdminResponse::err("the server is shutting down".to_owned());
    }
    let gc_of = match &req {
        AdminRequest::Gc { fs, .. } => Some(fs.clone()),
        _ => None,
    };
    // Backups, restores, gc, fsck and the audit commands read and write files for minutes
    // with blocking calls: on a thread of the blocking pool, not on one of the runtime's
    // workers (one per core), which would otherwise stop serving HTTPS meanwhile.
    let (data, op) = (st.data.clone(), op.clone());
    let rt = tokio::runtime::Handle::current();
    let command =
        tokio::task::spawn_blocking(move || rt.block_on(admin::execute_as(&data, req, &op)));
    let outcome = command.await;
    // Kept (for the automatic gc's schedule and /metrics) while the lock of filesystem
    // changes is held: runs are recorded one at a time, in order.
    if let (Some(fs), Ok(r)) = (&gc_of, &outcome)
        && r.ok
    {
        record_gc_run(st, fs, r).await;
    }
    // Reloaded after every user change, also one that answered an error or panicked: the
    // change may have been saved before something after it failed (its audit entry, say),
    // and a revoke saved but not loaded would leave the user's tokens working.
    if users_change {
        // On failure `reload` empties the user cache: every login and token is refused until
        // a later reload succeeds, never checked against the list from before the change.
        let reloaded = st.users.reload(&st.data);
        st.auth.invalidate_cache();
        if let Err(e) = reloaded {
            tracing::error!(
                error = %e,
                "reloading users after an admin change failed; refusing every login and token"
            );
            if let Err(failed) = outcome {
                // Whether the change was saved is not known: the panic goes on as it came.
                if let Ok(panic) = failed.try_into_panic() {
                    std::panic::resume_unwind(panic);
                }
            }
            return AdminResponse::err(format!(
                "the change was saved, but the server could not reload its users ({e}); it \
                 refuses every login and token until a reload succeeds: fix the cause, then \
                 restart the server (or run another user or grant change)"
            ));
        }
    }
    match outcome {
        Ok(resp) => resp,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => AdminResponse::err("the server is shutting down".to_owned()),
        },
    }
}

/// `efsctl reload-tls` and SIGHUP: reads `--tls-cert` and `--tls-key` again and serves them
/// from the next handshake on ([`crate::tls::ServedCert::begin_reload`]), and `--client-ca`
/// when the server was started with it, required from the next accepted connection on
/// ([`crate::tls::ServedTls::stage_client_ca`]); on any failure of either, nothing changes.
/// Recorded with the fingerprints before and after (or the error); never a key. Fail
/// closed: the new certificate and CA are used only once their entry is written, and the
/// reload lock is held until then, so that entries follow the swaps' order.
pub async fn reload_tls(st: &AppState, op: &Operator) -> AdminResponse {
    let req = AdminRequest::ReloadTls;
    // As every admin command: none runs once the shutdown closes the audit log.
    let _tracked = st.detached.token();
    if st.detached.is_closed() {
        return AdminResponse::err("the server is shutting down".to_owned());
    }
    // Fail closed, as every admin command: no certificate is replaced unrecorded.
    if st.data.audit().is_failed() {
        return AdminResponse::err(efs_core::audit::AuditError::Failed.to_string());
    }
    let tls = &st.tls;
    // With the generated certificate, only a client CA is there to reload.
    let turn = if tls.client_ca() {
        Ok(tls.cert.turn().await)
    } else {
        tls.cert.begin_reload().await
    };
    let staged = match &turn {
        Err(_) => None,
        Ok(turn) if turn.has_files() => Some(turn.stage().await),
        Ok(_) => None,
    };
    let staged_ca = match (&turn, staged.as_ref().map(|s| s.is_ok())) {
        // Read only when the certificate is (or there is none to read): one error at a time.
        (Ok(_), None | Some(true)) => tls.stage_client_ca().await,
        _ => None,
    };
    // What a failure says: what was to be reloaded, which part failed and why, and what
    // stays in use (a SIGHUP's log line has nothing else to go by).
    let reloading_cert = turn.as_ref().is_ok_and(|t| t.has_files());
    let what = match (reloading_cert, tls.client_ca()) {
        (true, true) => "the TLS certificate and the client CA (--client-ca) were not reloaded",
        (true, false) => "the TLS certificate was not reloaded",
        (false, _) => "the client CA (--client-ca) was not reloaded",
    };
    let kept = |served: String| {
        let cert = format!("the server keeps serving the certificate SHA-256 {served}");
        if tls.client_ca() {
            format!("{cert} and requiring the client CA it had")
        } else {
            cert
        }
    };
    let failed = match (&turn, &staged, &staged_ca) {
        (Err(e), _, _) => Some(e.to_string()),
        (Ok(turn), Some(Err(e)), _) => {
            let e = match e {
                crate::tls::ReloadError::Refused(e, _) => format!("{e:#}"),
                e => e.to_string(),
            };
            let part = if tls.client_ca() {
                "the certificate failed (the client CA was not read): "
            } else {
                ""
            };
            Some(format!("{what}: {part}{e}; {}", kept(turn.served())))
        }
        (Ok(turn), _, Some(Err(e))) => {
            let part = if reloading_cert {
                "the certificate was read, the client CA failed: "
            } else {
                ""
            };
            Some(format!("{what}: {part}{e:#}; {}", kept(turn.served())))
        }
        _ => None,
    };
    if let Some(error) = failed {
        // Still under the turn: a failure's entry is in order with the swaps too.
        let recorded = admin::record_admin_failed(&st.data, op, &req, &error).await;
        drop(turn);
        if let Err(e) = recorded {
            return AdminResponse::err(format!("{e} ({error})"));
        }
        return AdminResponse::err(error);
    }
    let turn = turn.expect("a failed turn returned above");
    let staged = staged.map(|s| s.expect("a failed stage returned above"));
    let staged_ca = staged_ca.map(|s| s.expect("a failed stage returned above"));
    let mut entry = serde_json::json!({ "reloaded": true });
    let mut lines = Vec::new();
    let mut warning = None;
    // Every warning, the certificate's and the client CA's, for `--json`.
    let mut warnings: Vec<String> = Vec::new();
    match &staged {
        Some(staged) => {
            let r = &staged.reloaded;
            let not_after = crate::tls::utc(r.not_after);
            entry["old_sha256"] = r.old_sha256.clone().into();
            entry["new_sha256"] = r.new_sha256.clone().into();
            entry["not_after"] = not_after.clone().into();
            lines.push(format!(
                "Reloaded the TLS certificate: SHA-256 fingerprint {}, valid until {not_after} (was {}); new connections get it, open ones keep theirs",
                r.new_sha256, r.old_sha256
            ));
            // One line per warning (`--json` has them joined by "; ").
            if let Some(w) = &r.warning {
                warnings.extend(w.split("; WARNING: ").enumerate().map(|(i, part)| {
                    if i == 0 {
                        part.to_owned()
                    } else {
                        format!("WARNING: {part}")
                    }
                }));
                lines.extend(warnings.iter().cloned());
            }
            warning = r.warning.clone();
        }
        None => lines.push(format!(
            "The TLS certificate is the one this server generated (SHA-256 {}): not reloaded (it lives in the data dir's system database; to serve your own, restart efs-server with --tls-cert and --tls-key)",
            turn.served()
        )),
    }
    if let Some(ca) = &staged_ca {
        entry["old_client_ca_sha256"] = ca.old_sha256.clone().into();
        entry["client_ca_sha256"] = ca.new_sha256.clone().into();
        lines.push(format!(
            "Reloaded the client CA (--client-ca): {} {} (was {}); new connections need a client certificate it signed, open ones keep the CA they were checked against",
            if ca.new_sha256.len() == 1 {
                "certificate, SHA-256"
            } else {
                "certificates, SHA-256"
            },
            ca.new_sha256.join(", "),
            ca.old_sha256.join(", ")
        ));
        lines.extend(ca.warnings.iter().cloned());
        warnings.extend(ca.warnings.iter().cloned());
    }
    if let Err(e) = admin::record_admin_with(&st.data, op, &req, true, Some(&entry)).await {
        return AdminResponse::err(format!("{e}: {what}; {}", kept(turn.served())));
    }
    // The entry's fields, the certificate's warnings joined (null without one) as before, and
    // every warning, the client CA's too, one string each, for `--json`.
    let mut data = entry;
    data["warning"] = warning.into();
    data["warnings"] = warnings.into();
    if let Some(ca) = staged_ca {
        tls.install_client_ca(ca);
    }
    if let Some(staged) = staged {
        turn.install(staged);
    }
    AdminResponse {
        ok: true,
        lines,
        data,
        ..Default::default()
    }
}

/// Serialises user and grant changes (see [`handle`]).
static USER_CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Serialises filesystem creations, restores and gc runs (see [`handle`]).
static FS_CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[cfg(test)]
mod tests {
    use super::{
        GC_LAST_RUNS, GcRun, GcRuns, allowed_peer, first_gc_due, member_in, without_panics,
    };
    use efs_core::admin::AdminResponse;
    use std::collections::HashSet;
    use std::time::Duration;

    /// A supplementary member of the auditor group, as /etc/passwd and /etc/group say.
    #[test]
    fn group_membership_is_read_from_passwd_and_group() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      dpo:x:1001:1001:Data protection:/home/dpo:/bin/bash\n\
                      alias:x:1001:1001::/:/bin/false\n\
                      clerk:x:1002:1002::/home/clerk:/bin/bash\n\
                      login:x:1003:600::/:/bin/false\n\
                      +nis\n\
                      broken:x\n";
        let group = "root:x:0:\n\
                     efs-audit:x:600:clerk2, dpo\n\
                     other:x:601:clerk\n\
                     aliased:x:602:alias\n";
        assert!(
            member_in(passwd, group, 1001, 600),
            "listed (after a space)"
        );
        assert!(member_in(passwd, group, 1003, 600), "its login group");
        assert!(
            member_in(passwd, group, 1001, 602),
            "by another name of its uid"
        );
        assert!(
            !member_in(passwd, group, 1002, 600),
            "a member of another group"
        );
        assert!(!member_in(passwd, group, 4242, 600), "no such account");
        assert!(!member_in(passwd, group, 1001, 777), "no such group");
        assert!(
            !member_in(passwd, "efs-audit:x:600:\n", 1001, 600),
            "no members"
        );
        assert!(!member_in("", group, 1001, 600));
    }

    /// The last-runs file kept the line of every filesystem it ever had: one the server no
    /// longer serves is dropped when the file is next written, from it and from memory; the
    /// served ones' lines stay, and no temporary file is left. Lines without a count (from
    /// before it was kept) are read, with no count.
    #[test]
    fn a_filesystem_no_longer_served_leaves_the_last_runs_file_at_its_next_write() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("system")).unwrap();
        let file = tmp.path().join("system").join(GC_LAST_RUNS);
        let (a, b, gone) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        let line = |id: &[u8; 16], rest: &str| format!("{} {rest}\n", hex::encode(id));
        let text = [line(&a, "1000 4"), line(&gone, "2000 0"), line(&b, "500")].concat();
        std::fs::write(&file, text + "not a line\n").unwrap();
        let runs = GcRuns::load(tmp.path());
        let run = |at_ms, blobs_removed| GcRun {
            at_ms,
            blobs_removed,
        };
        assert_eq!(runs.get(&gone), Some(run(2_000, Some(0))));
        assert_eq!(runs.get(&b), Some(run(500, None)));
        runs.record(a, run(3_000, Some(2)), &HashSet::from([a, b]))
            .unwrap();
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written, [line(&a, "3000 2"), line(&b, "500")].concat());
        assert_eq!(runs.get(&gone), None);
        let stray: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
        // What a restart reads.
        let again = GcRuns::load(tmp.path());
        assert_eq!(again.get(&a), Some(run(3_000, Some(2))));
        assert_eq!(again.get(&b), Some(run(500, None)));
        assert_eq!(again.get(&gone), None);
    }

    /// A server restarted more often than `--gc-grace` never ran its own gc: the first run
    /// came the grace after each start. With the last run kept, an overdue filesystem's
    /// comes at once; one not yet due comes when it is due or the grace after the start,
    /// whichever is sooner (as before); none recorded, the grace after the start.
    #[test]
    fn the_first_automatic_gc_comes_when_the_last_one_is_due() {
        let now = tokio::time::Instant::now();
        let (day, hour) = (Duration::from_secs(86_400), Duration::from_secs(3_600));
        let now_ms = 1_765_000_000_000i64;
        let ago = |d: Duration| Some(now_ms - d.as_millis() as i64);
        assert_eq!(first_gc_due(now, now_ms, day, hour, None), now + hour);
        assert_eq!(first_gc_due(now, now_ms, day, hour, ago(2 * day)), now);
        assert_eq!(first_gc_due(now, now_ms, day, hour, ago(day)), now);
        assert_eq!(
            first_gc_due(
                now,
                now_ms,
                day,
                hour,
                ago(day - 10 * Duration::from_secs(60))
            ),
            now + Duration::from_secs(600)
        );
        assert_eq!(first_gc_due(now, now_ms, day, hour, ago(hour)), now + hour);
        // A last run in the future (the clock went back): no sooner than the grace allows.
        assert_eq!(
            first_gc_due(now, now_ms, day, hour, Some(now_ms + 5_000)),
            now + hour
        );
    }

    /// The automatic gc and key rotation ended for the life of the process when their
    /// command panicked (the panic went on up their loop); it is now their failure, which
    /// they log and try again.
    #[tokio::test]
    async fn a_panicking_automatic_command_is_a_failure_not_the_end_of_its_loop() {
        let r = without_panics(async { panic!("boom in gc") }).await;
        assert!(!r.ok);
        let e = r.error.unwrap();
        assert!(e.contains("panicked (boom in gc)"), "{e}");
        let n = 7;
        let r = without_panics(async move { panic!("formatted {n}") }).await;
        assert!(r.error.unwrap().contains("panicked (formatted 7)"));
        // The loop goes on: the next command runs, and its answer comes back as it was.
        let done = || AdminResponse {
            ok: true,
            lines: vec!["done".into()],
            ..Default::default()
        };
        let r = without_panics(async move { done() }).await;
        assert!(r.ok && r.lines == ["done"], "{r:?}");
    }

    #[test]
    fn only_root_and_the_server_account_are_answered() {
        assert!(allowed_peer(Some(0), 1000).is_ok());
        assert!(allowed_peer(Some(1000), 1000).is_ok());
        assert!(allowed_peer(Some(0), 0).is_ok());
        let e = allowed_peer(Some(65534), 1000).unwrap_err();
        assert!(e.contains("uid 65534") && e.contains("uid 1000"), "{e}");
        assert!(allowed_peer(Some(1000), 0).is_err());
        assert!(allowed_peer(None, 0).is_err());
    }
}
