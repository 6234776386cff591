//! The free-space reserve (`--reserve-space`): requests that add data are refused (507
//! `insufficient_storage`) while the data dir's volume, or the audit log's when it is another,
//! has less free space than the reserve, so that a disk filled by uploads still has room for
//! the audit log, the index commits of deletes and moves, and gc. Without it a full disk
//! failed the audit log, and the server then refused everything, deletes included: nothing
//! inside EFS could free space.
//!
//! Free space is `f_bavail × f_frsize` of `statvfs`: what an unprivileged process may still
//! write (the blocks kept for root are not counted on).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::http::StatusCode;

use crate::error::ApiError;

/// The default reserve's share of the data dir's volume: 1/20, 5 %.
const DEFAULT_SHARE: u64 = 20;

/// The default reserve's ceiling: 1 GiB is room for hours of audit entries and for the index
/// commits of many deletes, however large the volume.
pub const DEFAULT_MAX: u64 = 1 << 30;

/// How often a streaming upload checks the free space again: after each MiB of its body (a
/// `statvfs` is about a microsecond; encrypting and writing a MiB takes about a millisecond).
pub const UPLOAD_CHECK_EVERY: u64 = 1 << 20;

/// At most one log line a minute about a volume below the reserve, and one about a `statvfs`
/// that fails: every request that adds data would otherwise log one.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The 507 text for any writer: what is wrong and what to do, but no byte counts. Any user may
/// write, and the free space, read again and again, would tell how much the other tenants
/// upload; the numbers go to the operator (the server log, `efsctl health`, the metrics).
pub const REFUSED: &str = "new data is refused: the server's disk is below its free-space \
    reserve; ask the operator to free space; reads and deletes still work";

/// `/_efs/health`'s `uploads` while the reserve is reached (no byte counts, as [`REFUSED`]).
pub const HEALTH_REFUSED: &str = "refused: the server's disk is below its free-space reserve";

/// Free space under which `/_efs/health` answers not ok, reserve or not: a volume this full
/// fails the next audit entry or index commit. With the reserve off (`--reserve-space 0`),
/// health said `ok` on a full disk until a request had found the audit log failed. Small, so
/// that only a disk really full, not one merely below the reserve, fails the check.
pub const HEALTH_FLOOR: u64 = 1 << 20;

/// The default reserve for a volume of `volume_bytes`: 5 % of it, at most [`DEFAULT_MAX`].
pub fn default_reserve(volume_bytes: u64) -> u64 {
    (volume_bytes / DEFAULT_SHARE).min(DEFAULT_MAX)
}

/// `--reserve-space`: a whole number of bytes, as every size option of the server takes
/// (`--cache-size`, `--max-body-size`); `0` turns the reserve off.
pub fn parse_reserve(s: &str) -> Result<u64, String> {
    let t = s.trim();
    // Digits only: `str::parse` would also take `+5`.
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{s}` is not a number of bytes: give a whole number of bytes, e.g. 1073741824 for \
             1 GiB (0 turns the reserve off; leave the option out for 5 % of the data volume, \
             at most 1 GiB)"
        ));
    }
    t.parse()
        .map_err(|_| format!("`{s}` is too large a number of bytes"))
}

/// Bytes as a person reads them: `512 B`, `3.2 MiB`, `1.0 GiB`, `1.0 EiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A volume the reserve watches.
#[derive(Debug, Clone)]
struct Volume {
    /// How a message names it.
    what: &'static str,
    /// Its `volume` label in the metrics.
    label: &'static str,
    /// A path on it (followed through symlinks by `statvfs`).
    path: PathBuf,
    /// Bytes kept free on it: `--reserve-space`, or the default for its own size (an audit
    /// log on a small volume of its own gets a reserve sized for that volume, not the data
    /// volume's, which could exceed it and refuse every upload for good).
    reserve: u64,
    /// Its size at the start (`f_blocks × f_frsize`), for the start's warnings.
    size: u64,
}

/// A volume found below the reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Low {
    /// `"data volume"` or `"audit log's volume"`.
    pub what: &'static str,
    /// Its free space, in bytes.
    pub free: u64,
    /// The reserve, in bytes.
    pub reserve: u64,
}

impl Low {
    /// The reason, for `/_efs/health` and the admin socket's health answer.
    pub fn reason(&self) -> String {
        format!(
            "the {} has {} free, below the {} reserve (--reserve-space)",
            self.what,
            human(self.free),
            human(self.reserve)
        )
    }

    /// 507 for a request that would add data, refused before it began.
    pub fn refusal(&self) -> ApiError {
        metrics::counter!("efs_requests_refused_total", "reason" => "reserve").increment(1);
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            efs_proto::codes::INSUFFICIENT_STORAGE,
            REFUSED,
        )
    }

    /// 507 for an upload stopped while its body arrived (its content is not stored).
    pub fn upload_stopped(&self) -> ApiError {
        metrics::counter!("efs_requests_refused_total", "reason" => "reserve").increment(1);
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            efs_proto::codes::INSUFFICIENT_STORAGE,
            format!("the upload was stopped and nothing of it stored; {REFUSED}"),
        )
    }
}

/// The reserve and the volumes it watches. Clones share the count of upload bytes not yet
/// written ([`UploadBytes`]) and the log's rate limits.
#[derive(Debug, Clone)]
pub struct Reserve {
    /// Bytes kept free; 0: off.
    bytes: u64,
    /// The data dir's volume, then the audit log's if it is another.
    volumes: Vec<Volume>,
    /// Bytes received by the uploads running now but not yet handed to the kernel (sealed
    /// in memory, in a blob writer's buffers, or in a write in flight): a `statvfs` does not
    /// see them yet, and they land within moments. Counted by every check, so that many
    /// uploads started together just above the reserve do not each pass on the same free
    /// space and together flush past it.
    unwritten: Arc<AtomicU64>,
    /// When a volume below the reserve was last logged.
    low_logged: Arc<RateLimit>,
    /// When a failed `statvfs` was last logged.
    statvfs_logged: Arc<RateLimit>,
}

/// "At most once per [`LOG_EVERY`]", for log lines that every request could repeat.
#[derive(Debug)]
struct RateLimit {
    since: Instant,
    /// Milliseconds from `since` when it last let one through, plus one (0: never).
    last: AtomicU64,
}

impl RateLimit {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            since: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    /// True at most once per [`LOG_EVERY`] (the first call included).
    fn due(&self) -> bool {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let every = LOG_EVERY.as_millis() as u64;
        (last == 0 || now.saturating_sub(last) >= every)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// An upload's share of [`Reserve`]'s count of bytes not yet written: [`UploadBytes::set`]
/// after each write, removed from the count when dropped, however the upload ends (committed,
/// aborted, failed, or its request dropped with its client gone).
#[derive(Debug)]
pub struct UploadBytes {
    total: Arc<AtomicU64>,
    counted: u64,
}

impl UploadBytes {
    /// This upload now holds `unwritten` bytes not yet written ([`efs_core::fs::Upload::unwritten`]).
    pub fn set(&mut self, unwritten: u64) {
        if unwritten > self.counted {
            self.total
                .fetch_add(unwritten - self.counted, Ordering::Relaxed);
        } else {
            self.total
                .fetch_sub(self.counted - unwritten, Ordering::Relaxed);
        }
        self.counted = unwritten;
    }
}

impl Drop for UploadBytes {
    fn drop(&mut self) {
        self.total.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

impl Reserve {
    /// No reserve (`--reserve-space 0`).
    pub fn off() -> Self {
        Self::with(0, Vec::new())
    }

    fn with(bytes: u64, volumes: Vec<Volume>) -> Self {
        Self {
            bytes,
            volumes,
            unwritten: Arc::new(AtomicU64::new(0)),
            low_logged: RateLimit::new(),
            statvfs_logged: RateLimit::new(),
        }
    }

    /// The reserve of a data dir: `requested` bytes on each watched volume, or with `None`
    /// the default for each volume's own size ([`default_reserve`]). The audit log's volume
    /// is watched too when `DATA/system/audit` (often a symlink) is on another filesystem.
    pub fn for_data_dir(data: &Path, requested: Option<u64>) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let volume = |what, label, path: PathBuf| -> std::io::Result<Volume> {
            // A volume's size is needed for the default only; with a reserve given (0
            // included: off, the free space still in the metrics), one that cannot be read is
            // of unknown size, with no start warning about it, and starts all the same.
            let size = match (rustix::fs::statvfs(&path), requested) {
                (Ok(s), _) => s.f_blocks.saturating_mul(s.f_frsize),
                (Err(_), Some(_)) => u64::MAX,
                (Err(e), None) => return Err(e.into()),
            };
            Ok(Volume {
                what,
                label,
                reserve: requested.unwrap_or_else(|| default_reserve(size)),
                size,
                path,
            })
        };
        let mut volumes = vec![volume("data volume", "data", data.to_path_buf())?];
        let audit = data.join(efs_core::audit::AUDIT_DIR);
        if let (Ok(d), Ok(a)) = (std::fs::metadata(data), std::fs::metadata(&audit))
            && d.dev() != a.dev()
        {
            volumes.push(volume("audit log's volume", "audit", audit)?);
        }
        let bytes = volumes.iter().map(|v| v.reserve).max().unwrap_or(0);
        Ok(Self::with(bytes, volumes))
    }

    /// Bytes kept free on the data volume (0: off).
    pub fn bytes(&self) -> u64 {
        self.volumes.first().map_or(0, |v| v.reserve)
    }

    /// Each watched volume's reserve by its metrics label, `data` or `audit`.
    pub fn reserves(&self) -> Vec<(&'static str, u64)> {
        self.volumes.iter().map(|v| (v.label, v.reserve)).collect()
    }

    /// The start's line saying the effective reserve; `default`: no `--reserve-space` given.
    pub fn describe(&self, default: bool) -> String {
        if self.bytes == 0 {
            return "Free-space reserve: off (--reserve-space 0): a full disk fails the audit log, \
                    and then every request"
                .to_owned();
        }
        let on: Vec<String> = self
            .volumes
            .iter()
            .map(|v| format!("{} on the {}", human(v.reserve), v.what))
            .collect();
        format!(
            "Free-space reserve: {}{}: uploads and new directories are refused below it",
            on.join(", "),
            if default {
                " (the default: 5 % of each volume, at most 1 GiB)"
            } else {
                ""
            }
        )
    }

    /// What the operator should know at the start: a reserve as large as its volume refuses
    /// every upload for good, and a volume already below its reserve refuses them until space
    /// is freed. Either used to pass silently, the first uploads' 507s being the only sign.
    pub fn start_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for v in &self.volumes {
            if v.reserve == 0 {
                continue;
            }
            if v.reserve >= v.size {
                out.push(format!(
                    "WARNING: the free-space reserve ({}) is as large as the {} itself ({}): \
                     every upload and new directory will be refused; give a smaller \
                     --reserve-space (or 0 for none)",
                    human(v.reserve),
                    v.what,
                    human(v.size)
                ));
            } else if let Some(free) = self.free_bytes(v)
                && free < v.reserve
            {
                out.push(format!(
                    "WARNING: the {} has {} free, already below its free-space reserve ({}): \
                     uploads and new directories are refused until space is freed{}",
                    v.what,
                    human(free),
                    human(v.reserve),
                    if v.label == "audit" {
                        " on it (deleting files does not free the audit log's volume)"
                    } else {
                        " (delete files, then efsctl gc) or the volume grown"
                    }
                ));
            }
        }
        out
    }

    /// Whether the audit log's volume is watched apart from the data volume.
    pub fn watches_audit_volume(&self) -> bool {
        self.volumes.len() > 1
    }

    /// Free bytes of each watched volume by its metrics label, `data` or `audit` (`None`:
    /// `statvfs` failed).
    pub fn free(&self) -> Vec<(&'static str, Option<u64>)> {
        self.volumes
            .iter()
            .map(|v| (v.label, self.free_bytes(v)))
            .collect()
    }

    /// A new upload's share of the bytes not yet written (none yet).
    pub fn upload_bytes(&self) -> UploadBytes {
        UploadBytes {
            total: self.unwritten.clone(),
            counted: 0,
        }
    }

    /// Before a request adds data: the first volume with less than the reserve free, less
    /// what the uploads running now have not yet written.
    ///
    /// One `statvfs` per watched volume per request, not cached: it is about a microsecond,
    /// a small upload's request costs tens, and a cached value would let a burst of uploads
    /// through for as long as it is kept.
    pub fn check(&self) -> Result<(), Low> {
        self.check_below(&[(false, 0)])
    }

    /// [`Reserve::check`] for a health answer: not logged (nothing is refused), so that
    /// polling it neither writes "new data refused" nor uses up the minute of a real refusal.
    pub fn check_for_health(&self) -> Result<(), Low> {
        self.check_below_logged(&[(false, 0)], false)
    }

    /// The first watched volume with less than [`HEALTH_FLOOR`] free, whether the reserve is
    /// on or off (`what`: how a message names it); `None` if none is, or its free space
    /// cannot be read. One `statvfs` per volume, not logged (nothing is refused).
    pub fn full_for_health(&self) -> Option<&'static str> {
        self.volumes
            .iter()
            .find(|v| self.free_bytes(v).is_some_and(|free| free < HEALTH_FLOOR))
            .map(|v| v.what)
    }

    /// Before an upload's body is read: [`Reserve::check`], and, when the request announces
    /// its length (`Content-Length`), whether the volume would keep half the reserve once
    /// that much is written too. An upload that cannot fit is refused before it begins rather
    /// than stopped part way. The same single `statvfs` per volume for both.
    pub fn check_upload_start(&self, announced: Option<u64>) -> Result<(), Low> {
        match announced {
            Some(len) => self.check_below(&[(false, 0), (true, len)]),
            None => self.check(),
        }
    }

    /// During an upload, whose bytes not yet written are in the count ([`UploadBytes::set`]):
    /// the first volume that would have less than half the reserve free once every running
    /// upload's buffered bytes are written.
    pub fn check_during_upload(&self) -> Result<(), Low> {
        self.check_below(&[(true, 0)])
    }

    /// Before a background job writes `bytes` of new content (a re-encryption's rewrite of a
    /// file, a restore's blob): the first volume that would have less than the reserve free
    /// after it.
    pub fn check_before_writing(&self, bytes: u64) -> Result<(), Low> {
        self.check_below(&[(false, bytes)])
    }

    /// The first volume whose free space, less the uploads' unwritten bytes and `more`, is
    /// below its reserve (`half`: half of it), for each `(half, more)`; one `statvfs` per
    /// volume. Logged (at most once a minute) with the numbers, which only the operator sees.
    fn check_below(&self, limits: &[(bool, u64)]) -> Result<(), Low> {
        self.check_below_logged(limits, true)
    }

    /// [`Reserve::check_below`], logging a refusal or not.
    fn check_below_logged(&self, limits: &[(bool, u64)], log: bool) -> Result<(), Low> {
        if self.bytes == 0 {
            return Ok(());
        }
        let unwritten = self.unwritten.load(Ordering::Relaxed);
        for v in &self.volumes {
            // A volume whose free space cannot be read refuses nothing: the disk itself still
            // answers a full disk with 507 (ENOSPC), as without a reserve.
            let Some(free) = self.free_bytes(v) else {
                continue;
            };
            // Content goes to the data volume only: an audit log's volume of its own is held
            // to its reserve as it is, not to what uploads and jobs are about to write.
            let (unwritten, content) = if v.label == "data" {
                (unwritten, true)
            } else {
                (0, false)
            };
            for &(half, more) in limits {
                let more = if content { more } else { 0 };
                let floor = if half { v.reserve / 2 } else { v.reserve };
                let left = free.saturating_sub(unwritten).saturating_sub(more);
                if left < floor {
                    let low = Low {
                        what: v.what,
                        free: left,
                        reserve: v.reserve,
                    };
                    if log && self.low_logged.due() {
                        tracing::warn!(
                            reason = %low.reason(),
                            free_now = %human(free),
                            uploads_unwritten = %human(unwritten),
                            "new data refused below the free-space reserve: free space or grow \
                             the volume (logged at most once a minute)"
                        );
                    }
                    return Err(low);
                }
            }
        }
        Ok(())
    }

    /// `f_bavail × f_frsize` of volume `v`; `None` if `statvfs` fails (logged at most once a
    /// minute: every request that adds data asks).
    fn free_bytes(&self, v: &Volume) -> Option<u64> {
        match rustix::fs::statvfs(&v.path) {
            Ok(s) => Some(s.f_bavail.saturating_mul(s.f_frsize)),
            Err(e) => {
                if self.statvfs_logged.due() {
                    tracing::warn!(
                        error = %e,
                        volume = v.what,
                        "cannot read a volume's free space (statvfs); the reserve is not checked \
                         on it until it can be (logged at most once a minute)"
                    );
                }
                None
            }
        }
    }
}

/// The [`efs_core::fs::SpaceCheck`] of the jobs that write content outside uploads (a
/// re-encryption's rewrite of each file, a restore's copy of each blob): an error once writing
/// `bytes` more would leave less than the reserve free, and the job stops there as on a full
/// disk. The error is the operator's (the server log, efsctl), with the numbers. The reserve is
/// read at each call from `reserve`, set once known (the server learns it once the data dir is
/// open; nothing asks before); unset, nothing is refused.
pub fn space_check(reserve: Arc<std::sync::OnceLock<Reserve>>) -> efs_core::fs::SpaceCheck {
    efs_core::fs::SpaceCheck(Arc::new(move |bytes| {
        let Some(r) = reserve.get() else {
            return Ok(());
        };
        r.check_before_writing(bytes).map_err(|low| {
            std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "stopped at the free-space reserve: writing {} more would leave the {} {} \
                     free, below the {} reserve (--reserve-space); free space or grow the \
                     volume, then run it again",
                    human(bytes),
                    low.what,
                    human(low.free),
                    human(low.reserve)
                ),
            )
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_reserve_is_five_percent_at_most_one_gib() {
        assert_eq!(default_reserve(0), 0);
        assert_eq!(default_reserve(19), 0);
        assert_eq!(default_reserve(48 << 20), (48 << 20) / 20);
        assert_eq!(default_reserve(100 << 30), DEFAULT_MAX);
        // The ceiling is reached at 20 GiB.
        assert_eq!(default_reserve(20 << 30), 1 << 30);
        assert_eq!(default_reserve((20 << 30) - 20), (1 << 30) - 1);
        assert_eq!(default_reserve(u64::MAX), DEFAULT_MAX);
    }

    #[test]
    fn reserve_sizes_are_whole_numbers_of_bytes() {
        assert_eq!(parse_reserve("0"), Ok(0));
        assert_eq!(parse_reserve("8388608"), Ok(8 << 20));
        assert_eq!(parse_reserve(" 1 "), Ok(1));
        assert_eq!(parse_reserve("18446744073709551615"), Ok(u64::MAX));
        for bad in ["", "+5", "-1", "5%", "1G", "1.5", "0x10"] {
            let e = parse_reserve(bad).unwrap_err();
            assert!(e.contains("whole number of bytes"), "{bad}: {e}");
        }
        assert!(parse_reserve("18446744073709551616").is_err());
    }

    #[test]
    fn off_refuses_nothing_and_a_huge_reserve_refuses() {
        assert_eq!(Reserve::off().check(), Ok(()));
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::for_data_dir(dir.path(), Some(u64::MAX)).unwrap();
        let low = r.check().unwrap_err();
        assert_eq!(low.what, "data volume");
        assert_eq!(low.refusal().message, REFUSED);
        let r = Reserve::for_data_dir(dir.path(), Some(1)).unwrap();
        assert_eq!(r.check(), Ok(()));
    }

    /// A volume with room passes the health floor, reserve on or off (a full one is in
    /// tests/disk_full.rs, on a real full tmpfs).
    #[test]
    fn health_passes_a_volume_with_room_reserve_on_or_off() {
        let dir = tempfile::tempdir().unwrap();
        for requested in [Some(0), Some(1), None] {
            let r = Reserve::for_data_dir(dir.path(), requested).unwrap();
            assert_eq!(r.full_for_health(), None, "{requested:?}");
        }
        assert_eq!(Reserve::off().full_for_health(), None);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(8 << 20), "8.0 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(1 << 60), "1.0 EiB");
        assert_eq!(human(u64::MAX), "16.0 EiB");
    }

    /// Regression: each check counted only its own upload's unwritten bytes, so uploads
    /// started together each passed on the same free space and together flushed past it.
    #[test]
    fn every_check_counts_the_bytes_all_uploads_have_not_yet_written() {
        let dir = tempfile::tempdir().unwrap();
        let free = rustix::fs::statvfs(dir.path()).unwrap();
        let free = free.f_bavail * free.f_frsize;
        // A reserve a quarter of the free space: passed with nothing buffered.
        let r = Reserve::for_data_dir(dir.path(), Some(free / 4)).unwrap();
        assert_eq!(r.check(), Ok(()));
        assert_eq!(r.check_during_upload(), Ok(()));
        let mut a = r.upload_bytes();
        let mut b = r.clone().upload_bytes();
        // Each upload alone leaves more than the reserve; both together do not.
        a.set(free / 2);
        assert_eq!(r.check(), Ok(()));
        b.set(free / 2);
        assert!(r.check().is_err());
        assert!(r.check_during_upload().is_err());
        // Written meanwhile: counted no more.
        b.set(0);
        assert_eq!(r.check(), Ok(()));
        // Dropped however the upload ended: its bytes leave the count.
        b.set(free / 2);
        drop(b);
        drop(a);
        assert_eq!(r.unwritten.load(Ordering::Relaxed), 0);
        assert_eq!(r.check(), Ok(()));
    }

    #[test]
    fn an_announced_length_that_would_take_half_the_reserve_is_refused_at_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let free = rustix::fs::statvfs(dir.path()).unwrap();
        let free = free.f_bavail * free.f_frsize;
        let r = Reserve::for_data_dir(dir.path(), Some(free / 4)).unwrap();
        assert_eq!(r.check_upload_start(None), Ok(()));
        assert_eq!(r.check_upload_start(Some(free / 2)), Ok(()));
        // Would leave less than half the reserve (an eighth of the free space).
        assert!(r.check_upload_start(Some(free - free / 16)).is_err());
        assert!(r.check_upload_start(Some(u64::MAX)).is_err());
    }

    /// Regression: the default was sized from the data volume and applied to the audit
    /// log's too, so an audit log on a volume smaller than that refused every upload for
    /// good, silently.
    /// Regression: the volume's size was read even with a reserve given, so a volume whose
    /// `statvfs` fails could not start even with `--reserve-space 0`, which the start's error
    /// said to give.
    #[test]
    fn a_volume_that_cannot_be_read_starts_with_a_reserve_given() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(Reserve::for_data_dir(&missing, None).is_err());
        let off = Reserve::for_data_dir(&missing, Some(0)).unwrap();
        assert_eq!(off.check(), Ok(()));
        let given = Reserve::for_data_dir(&missing, Some(1 << 20)).unwrap();
        assert_eq!(given.check(), Ok(()), "unreadable: refuses nothing");
        assert_eq!(given.start_warnings(), Vec::<String>::new());
    }

    #[test]
    fn each_volume_gets_its_own_default_and_the_start_warns_of_a_reserve_that_cannot_clear() {
        let dir = tempfile::tempdir().unwrap();
        let st = rustix::fs::statvfs(dir.path()).unwrap();
        let size = st.f_blocks * st.f_frsize;
        let r = Reserve::for_data_dir(dir.path(), None).unwrap();
        assert_eq!(r.reserves(), vec![("data", default_reserve(size))]);
        assert!(r.describe(true).contains("the default: 5 % of each volume"));
        // A reserve as large as its volume is named at the start.
        let r = Reserve::for_data_dir(dir.path(), Some(size)).unwrap();
        let w = r.start_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("as large as the data volume itself"), "{w:?}");
        // One the volume is already below: named too, with what to do.
        let free = st.f_bavail * st.f_frsize;
        let r = Reserve::for_data_dir(dir.path(), Some((free + (1 << 30)).min(size - 1))).unwrap();
        if free + (1 << 30) < size {
            let w = r.start_warnings();
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(
                w[0].contains("already below its free-space reserve"),
                "{w:?}"
            );
            assert!(w[0].contains("efsctl gc"), "{w:?}");
        }
        // A reserve with room: nothing to say.
        let r = Reserve::for_data_dir(dir.path(), Some(1)).unwrap();
        assert_eq!(r.start_warnings(), Vec::<String>::new());
        assert_eq!(Reserve::off().start_warnings(), Vec::<String>::new());
    }

    #[test]
    fn a_failed_statvfs_refuses_nothing_and_is_logged_at_most_once_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::for_data_dir(dir.path(), Some(u64::MAX)).unwrap();
        let gone = Reserve {
            volumes: vec![Volume {
                what: "data volume",
                label: "data",
                path: dir.path().join("missing"),
                reserve: u64::MAX,
                size: 1 << 30,
            }],
            ..r
        };
        assert_eq!(gone.check(), Ok(()));
        // The first failure was logged; the next ones within the minute are not.
        assert!(!gone.statvfs_logged.due());
        let limit = RateLimit::new();
        assert!(limit.due());
        assert!(!limit.due());
    }
}
