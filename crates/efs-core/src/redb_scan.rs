//! The full scan of a redb index's entries for its digest check, on several threads.
//!
//! The check reads every entry once. With the index out of the page cache (a large index
//! after a reboot) it is bound by reading pages, and one reader keeps one read in flight,
//! which the disk serves far below what it can; from the page cache, by the HMACs, which one
//! thread does on one core. The multiset hash does not depend on order, so parts of the key
//! space are hashed apart, in one read transaction, and merged.
//!
//! Entry keys are a directory's keyed tag (16 bytes) and the name's keyed tag (16 bytes),
//! both uniform: the key space is first cut into equal ranges by first byte. One large
//! directory (a service keeping 100,000 patients under `/patients/`) then still falls in a
//! single range, so a thread whose range turns out long hands half of what it has left to a
//! thread that has run out of work, cutting inside the directory it is in when it is in one.

use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use redb::ReadOnlyTable;

use crate::digest::{Accumulator, DigestKey};
use crate::error::{CoreError, Result};
use crate::index::EntryKey;

/// Entries per thread, and most threads ([`parts`]): threads mostly wait for the disk, so
/// there are more of them than cores.
///
/// At 1,000,000 entries (300 MB of entry pages, 100,000 of them in one directory; 2-core VM,
/// virtio disk), with the index out of the page cache, the first answered request came
/// 6.2–6.8 s after the start with one thread, 2.7–3.0 s with 4 and 1.3–1.6 s with 16 to 64
/// cutting by first byte only (the large directory's thread ended last, alone), and
/// 1.16 s with 16, 0.99–1.02 s with 32 and 0.94–0.98 s with 64 once a long range is cut
/// for a thread that has run out of work; from the page cache 0.75 s with one thread and
/// 0.48 s with 4 to 32 (both cores hash). Small indexes keep one thread.
const ENTRIES_PER_PART: u64 = 8192;
const MAX_PARTS: u64 = 64;

/// Entries a thread hashes between two looks for a thread without work.
const SPLIT_EVERY: u64 = 256;

/// Threads for a full scan of `entries` entries. The count comes from the table's header,
/// which the scan does not trust: it only decides how the work is cut.
pub(crate) fn parts(entries: u64) -> usize {
    (entries / ENTRIES_PER_PART).clamp(1, MAX_PARTS) as usize
}

type Table = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Keys from a bound to a bound: a first byte, a key where a range was cut, or an end.
type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The digest accumulator of every row of `t`, and whether any key is not an entry key
/// (32 bytes: an element does not say where its key ends, so a row (K ‖ b, v) moved to
/// (K, b ‖ v) hashes the same; any other length is a change).
pub(crate) fn hash_entries(
    t: &Table,
    key: &DigestKey,
    threads: usize,
    err: fn(redb::StorageError) -> CoreError,
) -> Result<(Accumulator, bool)> {
    hash_entries_with(
        t,
        key,
        threads,
        err,
        &Work::new(threads, Cuts::WHEN_WAITED_FOR),
    )
}

fn hash_entries_with(
    t: &Table,
    key: &DigestKey,
    threads: usize,
    err: fn(redb::StorageError) -> CoreError,
    work: &Work,
) -> Result<(Accumulator, bool)> {
    let threads = threads.clamp(1, 256);
    let results: Vec<Result<(Accumulator, bool)>> = std::thread::scope(|s| {
        // A thread the system refuses is one fewer: the ranges stay in the queue for the
        // others (this one at least), so the scan is only slower.
        let handles: Vec<_> = (1..threads)
            .map_while(|_| {
                std::thread::Builder::new()
                    .name("efs-digest-scan".into())
                    .spawn_scoped(s, || work.run(t, key, err))
                    .ok()
            })
            .collect();
        let mut out = vec![work.run(t, key, err)];
        for h in handles {
            out.push(
                h.join()
                    .unwrap_or_else(|_| Err(CoreError::Index("a digest scan panicked".into()))),
            );
        }
        out
    });
    let mut found = Accumulator::empty();
    let mut odd_keys = false;
    for r in results {
        let (acc, odd) = r?;
        found.merge(&acc);
        odd_keys |= odd;
    }
    Ok((found, odd_keys))
}

/// `n` ranges by first byte, the first and the last open-ended, so that every key (an empty
/// or odd one too) falls in exactly one.
fn first_cuts(n: usize) -> Vec<KeyRange> {
    let cut = |i: usize| vec![(256 * i / n) as u8];
    (0..n)
        .map(|i| {
            let lo = if i == 0 {
                Bound::Unbounded
            } else {
                Bound::Included(cut(i))
            };
            let hi = if i + 1 == n {
                Bound::Unbounded
            } else {
                Bound::Excluded(cut(i + 1))
            };
            (lo, hi)
        })
        .collect()
}

struct State {
    /// Ranges no thread has taken yet.
    queue: Vec<KeyRange>,
    /// Threads hashing a range.
    running: usize,
}

/// When a thread cuts what is left of its range.
#[derive(Clone, Copy)]
struct Cuts {
    /// Looks every this many rows.
    every: u64,
    /// Cuts even if no thread waits (tests: every path of the cut, whatever the timing).
    always: bool,
}

impl Cuts {
    const WHEN_WAITED_FOR: Cuts = Cuts {
        every: SPLIT_EVERY,
        always: false,
    };
}

struct Work {
    state: Mutex<State>,
    changed: Condvar,
    /// Threads waiting for a range (read without the lock, to decide whether to cut).
    waiting: AtomicUsize,
    cuts: Cuts,
    /// Ranges cut so far.
    made: AtomicUsize,
}

impl Work {
    /// Work for `threads` threads: the key space cut by first byte.
    fn new(threads: usize, cuts: Cuts) -> Self {
        Work {
            state: Mutex::new(State {
                queue: first_cuts(threads.clamp(1, 256)),
                running: 0,
            }),
            changed: Condvar::new(),
            waiting: AtomicUsize::new(0),
            cuts,
            made: AtomicUsize::new(0),
        }
    }

    /// One thread: takes ranges until none is left and no other thread can cut one off.
    fn run(
        &self,
        t: &Table,
        key: &DigestKey,
        err: fn(redb::StorageError) -> CoreError,
    ) -> Result<(Accumulator, bool)> {
        let mut acc = Accumulator::empty();
        let mut odd_keys = false;
        while let Some((range, _running)) = self.take() {
            self.hash_range(t, key, err, range, &mut acc, &mut odd_keys)?;
        }
        Ok((acc, odd_keys))
    }

    /// The next range, waiting while others still run (they may cut one off); `None` when
    /// every range is done. The range is held until the [`Running`] handed with it is
    /// dropped, however hashing it ends (an error, a panic): a thread waiting for a cut of
    /// it must not wait for ever.
    fn take(&self) -> Option<(KeyRange, Running<'_>)> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = st.queue.pop() {
                st.running += 1;
                return Some((r, Running(self)));
            }
            if st.running == 0 {
                self.changed.notify_all();
                return None;
            }
            self.waiting.fetch_add(1, Ordering::SeqCst);
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn hash_range(
        &self,
        t: &Table,
        key: &DigestKey,
        err: fn(redb::StorageError) -> CoreError,
        (mut lo, mut hi): KeyRange,
        acc: &mut Accumulator,
        odd_keys: &mut bool,
    ) -> Result<()> {
        'range: loop {
            let mut seen = 0u64;
            let iter = t
                .range::<&[u8]>((as_slice(&lo), as_slice(&hi)))
                .map_err(err)?;
            for item in iter {
                let (k, v) = item.map_err(err)?;
                let k = k.value();
                *odd_keys |= k.len() != std::mem::size_of::<EntryKey>();
                acc.insert(key, k, v.value());
                seen += 1;
                if seen.is_multiple_of(self.cuts.every)
                    && (self.cuts.always || self.waiting.load(Ordering::Relaxed) > 0)
                    && let Some(cut) = cut_after(k, &hi)
                {
                    // Hand [cut, hi) to a waiting thread; go on with (k, cut).
                    let rest = (Bound::Included(cut.to_vec()), hi);
                    {
                        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                        st.queue.push(rest);
                        self.changed.notify_one();
                    }
                    self.made.fetch_add(1, Ordering::Relaxed);
                    lo = Bound::Excluded(k.to_vec());
                    hi = Bound::Excluded(cut.to_vec());
                    continue 'range;
                }
            }
            return Ok(());
        }
    }
}

/// A range being hashed: dropped when it ends, however it ends.
struct Running<'a>(&'a Work);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.running -= 1;
        self.0.changed.notify_all();
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    b.as_ref().map(Vec::as_slice)
}

/// Where to cut what is left of a range after entry key `k` (up to `hi`, not included): the
/// middle of the rest of `k`'s directory (its keys share `k`'s first 16 bytes) if `hi` lies
/// beyond it and some of it is left, else the middle between `k` and `hi`. `None` if nothing lies between, or `k`
/// is not an entry key.
fn cut_after(k: &[u8], hi: &Bound<Vec<u8>>) -> Option<[u8; 32]> {
    let k: &EntryKey = k.try_into().ok()?;
    let mut dir_end = *k;
    dir_end[16..].fill(0xff);
    // The range's end as a 32-byte key no greater than any key past it: a shorter bound
    // padded with zeros (every key below [b] is below [b, 0, …]).
    let end = match hi {
        Bound::Unbounded => [0xff; 32],
        Bound::Excluded(h) | Bound::Included(h) => {
            let mut e = [0u8; 32];
            let n = h.len().min(32);
            e[..n].copy_from_slice(&h[..n]);
            e
        }
    };
    let mut cut = midpoint(k, &dir_end.min(end));
    if cut.as_slice() <= k.as_slice() {
        // Nothing left of the directory: between it and the range's end.
        cut = midpoint(k, &end);
    }
    // The cut must leave both sides a range: strictly after `k`, strictly before the end.
    (cut.as_slice() > k.as_slice() && bound_above(&cut, hi)).then_some(cut)
}

/// True if `cut` lies below the range's end `hi`.
fn bound_above(cut: &[u8; 32], hi: &Bound<Vec<u8>>) -> bool {
    match hi {
        Bound::Unbounded => true,
        Bound::Excluded(h) | Bound::Included(h) => cut.as_slice() < h.as_slice(),
    }
}

/// The middle of `a` and `b` read as 256-bit big-endian numbers, rounded down.
fn midpoint(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut sum = [0u16; 32];
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        sum[i] = s & 0xff;
        carry = s >> 8;
    }
    // Shift the 257-bit sum right by one.
    let mut out = [0u8; 32];
    let mut high = carry;
    for i in 0..32 {
        out[i] = ((high << 7) | (sum[i] >> 1)) as u8;
        high = sum[i] & 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use efs_format::Key32;
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

    const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");

    fn storage(e: redb::StorageError) -> CoreError {
        CoreError::Index(e.to_string())
    }

    fn digest_key() -> DigestKey {
        DigestKey::from_root(&Key32::from_bytes([7; 32]), &[1; 16])
    }

    fn write(db: &Database, rows: &[Vec<u8>]) {
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(ENTRIES).unwrap();
            for k in rows {
                t.insert(k.as_slice(), b"v".as_slice()).unwrap();
            }
        }
        w.commit().unwrap();
    }

    type Found = (([u8; 32], u64), bool);

    /// The parallel scan with `cuts`, and how many ranges it cut.
    fn scan_with(db: &Database, threads: usize, cuts: Cuts) -> (Found, usize) {
        let r = db.begin_read().unwrap();
        let t = r.open_table(ENTRIES).unwrap();
        let work = Work::new(threads, cuts);
        let (acc, odd) = hash_entries_with(&t, &digest_key(), threads, storage, &work).unwrap();
        ((acc.state(), odd), work.made.load(Ordering::Relaxed))
    }

    fn scan(db: &Database, threads: usize) -> Found {
        scan_with(db, threads, Cuts::WHEN_WAITED_FOR).0
    }

    /// One thread, one plain iteration: what every scan must find.
    fn reference(db: &Database) -> Found {
        let r = db.begin_read().unwrap();
        let t = r.open_table(ENTRIES).unwrap();
        let key = digest_key();
        let mut acc = Accumulator::empty();
        let mut odd = false;
        for item in t.iter().unwrap() {
            let (k, v) = item.unwrap();
            odd |= k.value().len() != std::mem::size_of::<EntryKey>();
            acc.insert(&key, k.value(), v.value());
        }
        (acc.state(), odd)
    }

    /// However many threads, every row is hashed once: the same set, the same size; a key
    /// of another length (empty, one byte on a first-byte cut, at either end) is found and
    /// reported. One directory of 20,000 entries, cut inside while others wait.
    #[test]
    fn every_thread_count_hashes_the_same_set() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("ix.redb")).unwrap();
        let mut rows: Vec<Vec<u8>> = (0..=255u8)
            .flat_map(|b| (0..5u8).map(move |n| [[b; 31].as_slice(), &[n]].concat()))
            .collect();
        let mut rng = Rng(0x5eed);
        rows.extend((0..20_000).map(|_| [[0x42; 16].as_slice(), &rng.bytes(16)].concat()));
        write(&db, &rows);
        let whole = reference(&db);
        assert_eq!(whole.0.1, rows.len() as u64);
        assert!(!whole.1);
        for threads in [1, 2, 3, 4, 7, 16, 32, 255, 256, 1000] {
            assert_eq!(scan(&db, threads), whole, "{threads} threads");
        }
        for odd in [
            vec![],
            vec![0x00],
            vec![0x40],
            vec![0x80],
            vec![0x80; 33],
            vec![0xff; 40],
        ] {
            write(&db, std::slice::from_ref(&odd));
            let one = reference(&db);
            assert_eq!(one.0.1, rows.len() as u64 + 1, "key of {} bytes", odd.len());
            assert!(one.1, "key of {} bytes", odd.len());
            for threads in [1, 2, 3, 32, 256] {
                assert_eq!(
                    scan(&db, threads),
                    one,
                    "{threads} threads, key of {} bytes",
                    odd.len()
                );
            }
            let w = db.begin_write().unwrap();
            w.open_table(ENTRIES)
                .unwrap()
                .remove(odd.as_slice())
                .unwrap();
            w.commit().unwrap();
        }
    }

    /// xorshift64: the same "random" keys in every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Keys an attacker editing the file could write, beside entry keys: any length, runs
    /// of 0x00 and 0xff, one byte on a first-byte cut, entry keys extended, dense name
    /// tags in a few directories, and keys on the points a cut would choose.
    fn odd_key_set(rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
        let mut dirs: Vec<Vec<u8>> = (0..1 + rng.below(5)).map(|_| rng.bytes(16)).collect();
        dirs.push(vec![0xff; 16]);
        dirs.push(vec![0x00; 16]);
        let mut keys = std::collections::BTreeSet::new();
        while keys.len() < n {
            let d = dirs[rng.below(dirs.len() as u64) as usize].clone();
            let k = match rng.below(10) {
                0 => {
                    let l = rng.below(70) as usize;
                    rng.bytes(l)
                }
                1 => vec![0xff; rng.below(40) as usize],
                2 => vec![0x00; rng.below(40) as usize],
                3 => {
                    let mut k = vec![rng.next() as u8];
                    let l = rng.below(3) as usize;
                    k.extend(rng.bytes(l));
                    k
                }
                4 => {
                    let mut k = [d, rng.bytes(16)].concat();
                    k.extend(vec![0u8; rng.below(3) as usize]);
                    k
                }
                5 => {
                    let mut k = d;
                    k.extend([0u8; 14]);
                    k.push((rng.below(2) as u8) * 0xff);
                    k.push(rng.next() as u8);
                    k
                }
                6 => {
                    // On the cut of an entry key before the end of the key space.
                    let k: [u8; 32] = [d, rng.bytes(16)].concat().try_into().unwrap();
                    keys.insert(k.to_vec());
                    match cut_after(&k, &Bound::Unbounded) {
                        Some(c) => c.to_vec(),
                        None => continue,
                    }
                }
                _ => [d, rng.bytes(16)].concat(),
            };
            keys.insert(k);
        }
        keys.into_iter().collect()
    }

    /// Random key sets of odd keys, hashed with cuts forced (every row, every few rows) and
    /// as the server cuts, on 1 to 256 threads: always exactly the rows a plain iteration
    /// finds. A cut that counted its key twice, or lost the row on the cut, fails here.
    #[test]
    fn forced_cuts_hash_every_row_once_whatever_the_keys() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut made = 0;
        for round in 0..12 {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::create(dir.path().join("ix.redb")).unwrap();
            let n = 50 + rng.below(1500) as usize;
            let rows = odd_key_set(&mut rng, n);
            write(&db, &rows);
            let want = reference(&db);
            assert_eq!(want.0.1, rows.len() as u64);
            for every in [1, 1 + rng.below(7), SPLIT_EVERY] {
                let cuts = Cuts {
                    every,
                    always: every != SPLIT_EVERY,
                };
                for threads in [1, 2, 3, 5, 8, 17, 64, 256] {
                    let (got, m) = scan_with(&db, threads, cuts);
                    assert_eq!(
                        got, want,
                        "round {round}, cuts every {every}, {threads} threads"
                    );
                    made += m;
                }
            }
        }
        assert!(made > 10_000, "the cuts were exercised ({made})");
    }

    #[test]
    fn a_range_is_cut_inside_the_directory_it_is_in_or_before_its_end() {
        let k = |b: u8, n: u8| {
            let mut k = [b; 32];
            k[16..].fill(n);
            k
        };
        // Inside the directory: the cut keeps k's first 16 bytes.
        let c = cut_after(&k(0x10, 0x00), &Bound::Excluded(vec![0x20])).unwrap();
        assert_eq!(&c[..16], &[0x10; 16]);
        assert!(c.as_slice() > k(0x10, 0x00).as_slice());
        // At the end of a directory: between it and the range's end.
        let c = cut_after(&k(0x10, 0xff), &Bound::Excluded(vec![0x20])).unwrap();
        assert!(c.as_slice() > k(0x10, 0xff).as_slice() && c.as_slice() < [0x20].as_slice());
        // Nothing between: no cut.
        let mut last = [0x1f; 32];
        last[16..].fill(0xff);
        let mut after = last.to_vec();
        after.push(0);
        assert_eq!(cut_after(&last, &Bound::Excluded(after)), None);
        assert_eq!(cut_after(&[0xff; 32], &Bound::Unbounded), None);
        assert_eq!(cut_after(&[1; 31], &Bound::Unbounded), None);
        assert_eq!(midpoint(&[0xff; 32], &[0xff; 32]), [0xff; 32]);
        let mut one = [0u8; 32];
        one[31] = 1;
        let mut half = [0u8; 32];
        half[0] = 0x80;
        assert_eq!(midpoint(&[0; 32], &[0xff; 32]), {
            let mut m = [0xff; 32];
            m[0] = 0x7f;
            m
        });
        assert_eq!(midpoint(&one, &one), one);
        assert_eq!(midpoint(&half, &[0; 32])[0], 0x40);
    }

    /// A thread that panics while it holds a range (as `run` holds it, from `take`) still
    /// ends it: a thread waiting for a cut sees that nothing is left, instead of waiting
    /// for ever.
    #[test]
    fn a_thread_that_panics_does_not_leave_the_others_waiting() {
        let work: &'static Work = Box::leak(Box::new(Work::new(1, Cuts::WHEN_WAITED_FOR)));
        let held = work.take().expect("one range");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(work.take().is_none()).unwrap());
        // The other thread waits for a cut before the holder panics.
        let t0 = std::time::Instant::now();
        while work.waiting.load(Ordering::SeqCst) == 0 {
            assert!(t0.elapsed().as_secs() < 10, "the other thread never waited");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let panicked = std::thread::spawn(move || {
            let _held = held;
            panic!("hashing failed (on purpose)");
        })
        .join();
        assert!(panicked.is_err());
        let ended = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the waiting thread returned");
        assert!(ended, "nothing is left to take");
    }

    #[test]
    fn threads_grow_with_the_index_up_to_a_bound() {
        assert_eq!(parts(0), 1);
        assert_eq!(parts(ENTRIES_PER_PART * 3), 3);
        assert_eq!(parts(u64::MAX), MAX_PARTS as usize);
    }
}
