//! Per-filesystem gauges for `/_efs/metrics`: files and bytes, key terms, the progress of
//! key rotations and re-encryptions, and the last gc run.
//!
//! Counting files and bytes is a full index scan, so a scrape never does it: a scrape
//! starts a background recount only if the last one is older than [`RECOUNT_EVERY`],
//! and reports the last counts (a scrape right after a start therefore shows them a
//! moment later, once the filesystem's start-up index check has passed; a held
//! filesystem's are not counted). Progress is one index metadata read per filesystem and is current at
//! every scrape. Filesystem names are labels: they are chosen by the administrator and
//! are not personal data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use efs_core::DataDir;
use efs_core::fs::reencrypt;
use efs_core::fs::rotation::{self, RotationState};

use crate::admin_socket::GcRuns;

/// Least time between two recounts of files and bytes.
pub const RECOUNT_EVERY: Duration = Duration::from_secs(10);

static LAST_RECOUNT: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
static RECOUNTING: AtomicBool = AtomicBool::new(false);

/// Updates the gauges before a scrape is rendered (`gc_runs`: the last gc run of each
/// filesystem, kept by the admin socket's handler).
pub async fn before_render(data: &Arc<DataDir>, gc_runs: &GcRuns) {
    // The rollback witness (`--rollback-witness`): whether its last write failed, and the
    // generation it holds (an alert on `efs_rollback_witness_failing == 1`).
    if let Some(w) = data.rollback_witness() {
        metrics::gauge!("efs_rollback_witness_failing").set(if w.failing { 1.0 } else { 0.0 });
        metrics::gauge!("efs_rollback_witness_generation").set(w.generation as f64);
    }
    let names: Vec<String> = match data.list_fs() {
        Ok(all) => all.into_iter().map(|f| f.name).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot list filesystems");
            return;
        }
    };
    for name in &names {
        let Some(fs) = data.fs(name) else { continue };
        let label = name.clone();
        metrics::gauge!("efs_fs_key_term", "fs" => label.clone()).set(fs.current_term() as f64);
        // No series before the first run (automatic or efsctl gc) that the server knows of:
        // a time of 0 would read as a run in 1970. An alert on staleness can use absent().
        if let Some(run) = gc_runs.get(fs.id()) {
            metrics::gauge!("efs_gc_last_run_timestamp_seconds", "fs" => label.clone())
                .set(run.at_ms as f64 / 1000.0);
            if let Some(n) = run.blobs_removed {
                metrics::gauge!("efs_gc_last_blobs_removed", "fs" => label.clone()).set(n as f64);
            }
        }
        // A filesystem that never had a rotation (or re-encryption) shows 0s, as one whose
        // last has ended, rather than no series (an alert on it would never fire).
        if let Ok(p) = rotation::progress(&fs).await {
            let (running, rewrapped, seen) = p.map_or((false, 0, 0), |p| {
                (p.state == RotationState::Running, p.rewrapped, p.seen)
            });
            metrics::gauge!("efs_rotation_running", "fs" => label.clone())
                .set(f64::from(u8::from(running)));
            metrics::gauge!("efs_rotation_records_rewrapped", "fs" => label.clone())
                .set(rewrapped as f64);
            metrics::gauge!("efs_rotation_entries_seen", "fs" => label.clone()).set(seen as f64);
        }
        if let Ok(p) = reencrypt::progress(&fs).await {
            // A run stopped by an error (it resumes later) is not running.
            let stopped = reencrypt::stopped(&fs).is_some();
            let (running, done, total, bytes) = p.map_or((false, 0, 0, 0), |p| {
                (
                    p.state == RotationState::Running && !stopped,
                    p.files_done,
                    p.total_files,
                    p.bytes_done,
                )
            });
            metrics::gauge!("efs_reencryption_running", "fs" => label.clone())
                .set(f64::from(u8::from(running)));
            metrics::gauge!("efs_reencryption_files_done", "fs" => label.clone()).set(done as f64);
            metrics::gauge!("efs_reencryption_files_total", "fs" => label.clone())
                .set(total as f64);
            metrics::gauge!("efs_reencryption_bytes_done", "fs" => label.clone()).set(bytes as f64);
        }
    }
    let due = {
        let mut last = LAST_RECOUNT.lock().expect("metrics lock poisoned");
        let due = last.is_none_or(|t| t.elapsed() >= RECOUNT_EVERY);
        if due && !RECOUNTING.swap(true, Ordering::SeqCst) {
            *last = Some(Instant::now());
            true
        } else {
            false
        }
    };
    if due {
        let data = data.clone();
        tokio::spawn(async move {
            for name in names {
                let Some(fs) = data.fs(&name) else { continue };
                // Counted only from an index its start-up check has passed (waiting while the
                // check reads it): a held index's counts are not published.
                if fs.trusted().await.is_err() {
                    continue;
                }
                match fs.stats().await {
                    Ok(s) => {
                        metrics::gauge!("efs_fs_files", "fs" => name.clone()).set(s.files as f64);
                        metrics::gauge!("efs_fs_bytes", "fs" => name.clone()).set(s.bytes as f64);
                        metrics::gauge!("efs_fs_dirs", "fs" => name.clone()).set(s.dirs as f64);
                    }
                    Err(e) => tracing::warn!(fs = name, error = %e, "metrics: recount failed"),
                }
            }
            RECOUNTING.store(false, Ordering::SeqCst);
        });
    }
}
