//! Measures the re-encryption rate (MB/s) and the key-rotation rate (data keys/s) on a
//! data dir of mixed file sizes (docs/operations.md quotes the figures).
//!
//! ```text
//! cargo run --release -p efs-core --example ops_rates -- [DIR] [SCALE]
//! ```
//!
//! SCALE 1 (the default) writes 3,000 files of 4–124 KiB (inline in the index), 100 of
//! 1 MiB and 10 of 16 MiB: about 450 MB. DIR (default: a temporary directory) must not
//! exist yet; it is removed at the end.

use std::sync::Arc;
use std::time::Instant;

use efs_core::keyparts::no_prompt;
use efs_core::{DataDir, EfsPath, Filesystem, KeyPartSpec, OpenOptions, Precondition};

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn put(fs: &Arc<Filesystem>, path: &str, data: &[u8]) {
    let mut up = fs.begin_upload().await.expect("upload");
    for c in data.chunks(1 << 20) {
        up.write(c).await.expect("write");
    }
    fs.commit(
        &EfsPath::parse(path).expect("path"),
        up,
        None,
        Precondition::None,
    )
    .await
    .expect("commit");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("bench"));
    let scale: usize = args.next().map(|s| s.parse().expect("SCALE")).unwrap_or(1);
    std::fs::create_dir_all(&dir).expect("dir");
    let part = dir.join("part.key");
    efs_core::keyparts::generate_part_file(&part).expect("key part");
    let root = dir.join("data");
    let (dd, _) = DataDir::open(
        &root,
        &[KeyPartSpec::File(part)],
        OpenOptions::default(),
        &no_prompt,
    )
    .expect("data dir");
    dd.create_fs("bench").expect("fs");
    let fs = dd.fs("bench").expect("fs");

    // Mixed sizes, written by 4 tasks.
    let mut plan = Vec::new();
    for i in 0..3000 * scale {
        plan.push((
            format!("/small/d{}/f{i}", i % 30),
            4096 + (i * 7919) % (120 * 1024),
        ));
    }
    for i in 0..100 * scale {
        plan.push((format!("/medium/f{i}"), 1 << 20));
    }
    for i in 0..10 * scale {
        plan.push((format!("/large/f{i}"), 16 << 20));
    }
    let files = plan.len();
    let bytes: usize = plan.iter().map(|(_, l)| l).sum();
    let plan = Arc::new(plan);
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..4 {
        let (fs, plan) = (fs.clone(), plan.clone());
        set.spawn(async move {
            for (i, (path, len)) in plan.iter().enumerate().skip(t).step_by(4) {
                put(&fs, path, &pattern(i as u64, *len)).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("writer");
    }
    let mb = bytes as f64 / 1e6;
    let w = t0.elapsed().as_secs_f64();
    println!(
        "wrote {files} files, {mb:.0} MB in {w:.2} s ({:.0} MB/s)",
        mb / w
    );

    let t0 = Instant::now();
    let (_, p) = dd.reencrypt("bench", true).await.expect("reencrypt");
    let r = t0.elapsed().as_secs_f64();
    assert_eq!(p.files_done as usize, files);
    println!(
        "reencrypt: {} files, {mb:.0} MB in {r:.2} s: {:.0} MB/s, {:.0} files/s",
        p.files_done,
        mb / r,
        files as f64 / r
    );

    let t0 = Instant::now();
    let (_, p) = dd.rotate_key("bench", true).await.expect("rotate");
    let k = t0.elapsed().as_secs_f64();
    println!(
        "rotate-key: {} records ({files} data keys) in {k:.2} s: {:.0} data keys/s",
        p.rewrapped,
        files as f64 / k
    );
    drop(fs);
    drop(dd);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
