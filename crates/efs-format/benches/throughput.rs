//! Throughput of the content format against raw AES-256-GCM on the same 16 MiB buffer.
//!
//! Baseline: aws-lc-rs AES-256-GCM sealing/opening in 64 KiB chunks, in place, with no copies.
//! `Encryptor::update` adds one copy of the plaintext into the output and the per-segment
//! nonce and bookkeeping; `Encryptor::seal_in_place` does the same in-place work as the
//! baseline. The ratio format/raw is what this measures.
//!
//! Run: `cargo bench -p efs-format -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use efs_format::{Decryptor, Encryptor, HEADER_LEN, Key32, SEGMENT_SIZE, TAG_LEN};

const LEN: usize = 16 << 20;

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn bench(c: &mut Criterion) {
    let plain: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let raw_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let key = Key32::from_bytes([7u8; 32]);
    let id = [1u8; 16];

    let mut g = c.benchmark_group("seal_16MiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(20);
    let mut buf = plain.clone();
    g.bench_function("raw_aes256gcm_64KiB_chunks", |b| {
        b.iter(|| {
            for (i, chunk) in buf.chunks_mut(SEGMENT_SIZE).enumerate() {
                let tag = raw_key
                    .seal_in_place_separate_tag(nonce(i as u64), Aad::empty(), chunk)
                    .unwrap();
                black_box(tag.as_ref());
            }
        })
    });
    let mut out = Vec::with_capacity(LEN + LEN / SEGMENT_SIZE * TAG_LEN + 128);
    // The baseline plus the one copy the format's API implies (input slice -> output buffer),
    // to separate that copy from the format's own overhead.
    g.bench_function("raw_aes256gcm_copy_then_seal", |b| {
        b.iter(|| {
            out.clear();
            for (i, chunk) in plain.chunks(SEGMENT_SIZE).enumerate() {
                let start = out.len();
                out.extend_from_slice(chunk);
                let tag = raw_key
                    .seal_in_place_separate_tag(nonce(i as u64), Aad::empty(), &mut out[start..])
                    .unwrap();
                out.extend_from_slice(tag.as_ref());
            }
            black_box(out.len());
        })
    });
    g.bench_function("efs_encryptor_update_finish", |b| {
        b.iter(|| {
            out.clear();
            let mut enc = Encryptor::new(&key, id);
            out.extend_from_slice(&enc.header());
            enc.update(black_box(&plain), &mut out);
            enc.finish(&mut out).unwrap();
            black_box(out.len());
        })
    });
    // The same in-place work as the raw baseline, through the format: the caller's own
    // segment buffers, no copy (`Encryptor::seal_in_place` / `finish_in_place`).
    let mut segs: Vec<Vec<u8>> = plain
        .chunks(SEGMENT_SIZE)
        .map(|c| {
            let mut v = Vec::with_capacity(SEGMENT_SIZE + TAG_LEN);
            v.extend_from_slice(c);
            v
        })
        .collect();
    g.bench_function("efs_encryptor_seal_in_place", |b| {
        b.iter(|| {
            let mut enc = Encryptor::new(&key, id);
            black_box(enc.header());
            let n = segs.len();
            for (i, seg) in segs.iter_mut().enumerate() {
                seg.truncate(SEGMENT_SIZE.min(seg.len()));
                if i + 1 < n {
                    enc.seal_in_place(seg).unwrap();
                }
            }
            let last = segs.last_mut().unwrap();
            enc.finish_in_place(last).unwrap();
            black_box(last.len());
        })
    });
    g.finish();

    // Raw ciphertext to open: every chunk sealed with its own nonce.
    let mut raw_ct: Vec<Vec<u8>> = plain
        .chunks(SEGMENT_SIZE)
        .enumerate()
        .map(|(i, chunk)| {
            let mut v = chunk.to_vec();
            raw_key
                .seal_in_place_append_tag(nonce(i as u64), Aad::empty(), &mut v)
                .unwrap();
            v
        })
        .collect();
    let mut enc = Encryptor::new(&key, id);
    let mut ct = enc.header().to_vec();
    enc.update(&plain, &mut ct);
    enc.finish(&mut ct).unwrap();
    let dec = Decryptor::new(&key, &ct[..HEADER_LEN], ct.len() as u64, &id).unwrap();

    let mut g = c.benchmark_group("open_16MiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(20);
    let mut scratch = Vec::with_capacity(SEGMENT_SIZE + TAG_LEN);
    g.bench_function("raw_aes256gcm_64KiB_chunks", |b| {
        b.iter(|| {
            for (i, seg) in raw_ct.iter_mut().enumerate() {
                // Same copy-in as the format path, so both open from a fresh read buffer.
                scratch.clear();
                scratch.extend_from_slice(seg);
                let p = raw_key
                    .open_in_place(nonce(i as u64), Aad::empty(), &mut scratch)
                    .unwrap();
                black_box(p.len());
            }
        })
    });
    g.bench_function("efs_decryptor_open_segment", |b| {
        b.iter(|| {
            for i in 0..dec.segment_count() {
                let (off, len) = dec.segment_location(i).unwrap();
                scratch.clear();
                scratch.extend_from_slice(&ct[off as usize..off as usize + len]);
                dec.open_segment(i, &mut scratch).unwrap();
                black_box(scratch.len());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
