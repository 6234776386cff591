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

/// The most of an upload's bytes that may be received but not yet on the disk, where a
/// `statvfs` cannot see them: the upload's sealed chunk (1 MiB) and the blob writer's two
/// buffers (the one being filled and the one being written, 8 MiB each). A check during an
/// upload counts them as already written, so that the upload stops before its buffers land in
/// the reserve, not after.
pub const UPLOAD_UNWRITTEN_MAX: u64 = 18 << 20;

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

/// Bytes as a person reads them: `512 B`, `3.2 MiB`, `1.0 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
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
            format!(
                "new data is refused: {}; free space or grow the volume (reads and deletes still work)",
                self.reason()
            ),
        )
    }

    /// 507 for an upload stopped while its body arrived (its content is not stored).
    pub fn upload_stopped(&self) -> ApiError {
        metrics::counter!("efs_requests_refused_total", "reason" => "reserve").increment(1);
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            efs_proto::codes::INSUFFICIENT_STORAGE,
            format!(
                "the upload was stopped and nothing of it stored: the {} would have {} free once \
                 its buffered bytes are written, below half the {} reserve (--reserve-space); \
                 free space or grow the volume (reads and deletes still work)",
                self.what,
                human(self.free),
                human(self.reserve)
            ),
        )
    }
}

/// The reserve and the volumes it watches.
#[derive(Debug, Clone)]
pub struct Reserve {
    /// Bytes kept free; 0: off.
    bytes: u64,
    /// The data dir's volume, then the audit log's if it is another.
    volumes: Vec<Volume>,
}

impl Reserve {
    /// No reserve (`--reserve-space 0`).
    pub fn off() -> Self {
        Self {
            bytes: 0,
            volumes: Vec::new(),
        }
    }

    /// The reserve of a data dir: `requested` bytes, or with `None` the default for its
    /// volume ([`default_reserve`]). The audit log's volume is watched too when
    /// `DATA/system/audit` (often a symlink) is on another filesystem.
    pub fn for_data_dir(data: &Path, requested: Option<u64>) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let bytes = match requested {
            Some(b) => b,
            None => {
                let s = rustix::fs::statvfs(data)?;
                default_reserve(s.f_blocks.saturating_mul(s.f_frsize))
            }
        };
        let mut volumes = vec![Volume {
            what: "data volume",
            label: "data",
            path: data.to_path_buf(),
        }];
        let audit = data.join(efs_core::audit::AUDIT_DIR);
        if let (Ok(d), Ok(a)) = (std::fs::metadata(data), std::fs::metadata(&audit))
            && d.dev() != a.dev()
        {
            volumes.push(Volume {
                what: "audit log's volume",
                label: "audit",
                path: audit,
            });
        }
        Ok(Self { bytes, volumes })
    }

    /// Bytes kept free (0: off).
    pub fn bytes(&self) -> u64 {
        self.bytes
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
            .map(|v| (v.label, free_bytes(&v.path)))
            .collect()
    }

    /// Before a request adds data: the first volume with less than the reserve free.
    ///
    /// One `statvfs` per watched volume per request, not cached: it is about a microsecond,
    /// a small upload's request costs tens, and a cached value would let a burst of uploads
    /// through for as long as it is kept.
    pub fn check(&self) -> Result<(), Low> {
        self.check_below(self.bytes, 0)
    }

    /// During an upload, with `unwritten` of its bytes not yet on the disk (at most
    /// [`UPLOAD_UNWRITTEN_MAX`] are counted): the first volume that would have less than half
    /// the reserve free once they are written.
    pub fn check_during_upload(&self, unwritten: u64) -> Result<(), Low> {
        self.check_below(self.bytes / 2, unwritten.min(UPLOAD_UNWRITTEN_MAX))
    }

    /// Before a background job writes `bytes` of new content (a re-encryption's rewrite of a
    /// file): the first volume that would have less than the reserve free after it.
    pub fn check_before_writing(&self, bytes: u64) -> Result<(), Low> {
        self.check_below(self.bytes, bytes)
    }

    fn check_below(&self, floor: u64, unwritten: u64) -> Result<(), Low> {
        if self.bytes == 0 {
            return Ok(());
        }
        for v in &self.volumes {
            // A volume whose free space cannot be read refuses nothing: the disk itself still
            // answers a full disk with 507 (ENOSPC), as without a reserve.
            let Some(free) = free_bytes(&v.path) else {
                continue;
            };
            let free = free.saturating_sub(unwritten);
            if free < floor {
                return Err(Low {
                    what: v.what,
                    free,
                    reserve: self.bytes,
                });
            }
        }
        Ok(())
    }
}

/// `f_bavail × f_frsize` of the volume holding `path`; `None` (logged) if `statvfs` fails.
fn free_bytes(path: &Path) -> Option<u64> {
    match rustix::fs::statvfs(path) {
        Ok(s) => Some(s.f_bavail.saturating_mul(s.f_frsize)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a volume's free space (statvfs); the reserve is not checked on it");
            None
        }
    }
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
        assert!(
            low.refusal()
                .message
                .contains("reads and deletes still work")
        );
        let r = Reserve::for_data_dir(dir.path(), Some(1)).unwrap();
        assert_eq!(r.check(), Ok(()));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(8 << 20), "8.0 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
