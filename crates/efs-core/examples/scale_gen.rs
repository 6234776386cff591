//! Fills a filesystem with many small files, fast, for the scale runs (`bench/scale.sh`).
//!
//! A million HTTP PUTs at fsync rate would take hours on a small machine, so this writes
//! through efs-core directly, with exactly the code path the server's PUT uses
//! (`begin_upload` → `write` → `commit`): every file gets its own data key, sealed record
//! and inline content, and each commit is durable. Many commits run at once so that the
//! index's group commit shares one fsync among up to 256 of them; that is the only
//! difference from a service writing one file after another.
//!
//! ```text
//! cargo run --release -p efs-core --example scale_gen -- DATA_DIR FILES [DIRS] [BIG_DIR_ENTRIES]
//! ```
//!
//! Makes filesystem `bench` (the data dir is initialised with a generated key part beside
//! it if new), files `/records/dNNNN/fNNNNNNN.bin` spread evenly over DIRS directories
//! (default 1,000), each 512 bytes to 2 KiB, and, if BIG_DIR_ENTRIES > 0, that many
//! more files in the one directory `/bigdir/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use efs_core::{DataDir, EfsPath, Filesystem, OpenOptions, Precondition};

/// Commits in flight at once: enough to fill the index's groups of 256.
const IN_FLIGHT: u64 = 512;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: scale_gen DATA_DIR FILES [DIRS] [BIG_DIR_ENTRIES]");
        std::process::exit(2);
    }
    let data = PathBuf::from(&args[0]);
    let files: u64 = args[1].parse()?;
    let dirs: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let big: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);

    let no_prompt = |_: &str| Err(std::io::Error::other("no passphrase parts here"));
    let (dd, _) = DataDir::open(&data, &[], OpenOptions::default(), &no_prompt)?;
    if dd.fs("bench").is_none() {
        dd.create_fs("bench")?;
    }
    let fs = dd.fs("bench").expect("just created");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let t0 = Instant::now();
        for d in 0..dirs {
            fs.mkdir(&path(&format!("/records/d{d:04}"))).await?;
        }
        if big > 0 {
            fs.mkdir(&path("/bigdir")).await?;
        }
        let total = files + big;
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let (fs, next) = (fs.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<(), efs_core::CoreError>(());
                    }
                    let p = if i < files {
                        format!("/records/d{:04}/f{i:07}.bin", i % dirs)
                    } else {
                        format!("/bigdir/e{:07}.bin", i - files)
                    };
                    write_one(&fs, &p, i).await?;
                    if i > 0 && i % 100_000 == 0 {
                        eprintln!("{i} files, {:.0} s", t0.elapsed().as_secs_f64());
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "wrote {total} files in {secs:.1} s ({:.0} files/s)",
            total as f64 / secs
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}

fn path(s: &str) -> EfsPath {
    EfsPath::parse(s).expect("the generator's paths are valid")
}

/// One file of 512 to 2,047 bytes whose content depends on its number.
async fn write_one(fs: &Arc<Filesystem>, p: &str, i: u64) -> efs_core::Result<()> {
    let len = 512 + (i * 7919 % 1536) as usize;
    let body: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
    let mut up = fs.begin_upload().await?;
    up.write(&body).await?;
    fs.commit(&path(p), up, None, Precondition::None).await?;
    Ok(())
}
