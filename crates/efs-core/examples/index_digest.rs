//! What the index digest costs (a measurement, not a test): one element HMAC (the work a
//! write adds per entry written or removed), a seal (once per changed batch), and a full
//! check of an index of N entries (what `fsck` and each server start pay).
//!
//! `cargo run --release -p efs-core --example index_digest [N]` (default 100,000 entries
//! of 160-byte values, about the size of a sealed file record).

use std::time::Instant;

use efs_core::digest::{Accumulator, DigestKey};
use efs_core::index::{Batch, Index, Op};
use efs_core::redb_index::RedbIndex;
use efs_format::Key32;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let key = || DigestKey::from_root(&Key32::from_bytes([9; 32]), &[1; 16]);
    let value = vec![0xA5u8; 160];

    let k = key();
    let mut acc = Accumulator::empty();
    let rounds = 200_000u32;
    let t = Instant::now();
    for i in 0..rounds {
        let mut entry = [0u8; 32];
        entry[..4].copy_from_slice(&i.to_be_bytes());
        acc.insert(&k, &entry, &value);
    }
    let per = t.elapsed() / rounds;
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(acc.seal(&k));
    }
    let seal = t.elapsed() / rounds;
    println!("element HMAC (32-byte key, 160-byte value): {per:?}; seal: {seal:?}");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let ix = RedbIndex::open(&dir.path().join("index.redb"), key()).expect("open");
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let ops = chunk
            .iter()
            .map(|i| {
                let mut entry = [0u8; 32];
                entry[..8].copy_from_slice(&(*i as u64).to_be_bytes());
                Op::PutEntry(entry, value.clone())
            })
            .collect();
        let ok = ix
            .commit(Batch {
                ops,
                ..Default::default()
            })
            .await
            .expect("commit");
        assert!(ok);
    }
    println!("filled {n} entries in {:?} (1,000 per batch)", t.elapsed());
    let t = Instant::now();
    let c = ix.check_digest().await.expect("check");
    assert!(c.holds(), "{c:?}");
    println!("full check of {n} entries: {:?}", t.elapsed());
}
