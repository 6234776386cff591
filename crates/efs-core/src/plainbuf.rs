//! Buffers that hold decrypted file content on its way out ([`PlainBuf`]): read into
//! (ciphertext) and decrypted in place, or decrypted into from a large blob's direct-read
//! window ([`crate::blob::BlobReader::lend_at`]); sent, then wiped and kept for the next read.
//!
//! Why the wipe: before, the plaintext of a download stayed in freed memory until the
//! allocator reused it. A [`PlainBuf`] is zeroized when dropped (once hyper has sent the last
//! slice of it), before it goes back to the pool or is freed ([`zeroize`] 1.9: a `memset`
//! the compiler may not remove, on memory still in the CPU's cache). Every byte of a pooled
//! buffer that ever held content was inside its length when it was dropped, so it is zero
//! again.
//!
//! Why a pool: a streamed download reads its content in batches of four segments (262,208
//! bytes), each into a new buffer. A new buffer of that size is above glibc's `mmap`
//! threshold or at the top of a heap it trims, so it came with a page fault per 4 KiB and the
//! kernel zeroing each page; a pooled one is memory this process has touched already. The
//! wipe costs what the allocation's own zeroing did. Measured here (docs/benchmarks-history.md, run
//! 30's section, "Wiped, pooled read buffers"), alternating series on one machine: GET 1 GiB
//! (direct reads) 916–1,331 MB/s against 855–1,206 (medians 1,305 and 979); GET 1 MiB, GET
//! 64 MiB and GET 4 KiB with the cache off unchanged within noise.

use std::sync::{Mutex, MutexGuard, PoisonError};

use zeroize::Zeroize;

/// Shorter requests are not served from the pools (a blob's 56-byte header, read and freed).
const MIN_POOLED: usize = 1 << 10;
/// The small class: every buffer in it has this capacity (an inline content, a segment).
const SMALL_CAP: usize = 16 << 10;
/// The large class: a streamed batch of four segments is 262,208 bytes. Longer requests
/// (the cache's 16-segment fills, a whole-file read) get their own buffer, freed after use.
const LARGE_CAP: usize = 320 << 10;
/// Idle buffers kept per class: 64 small ones (1 MiB) and 48 large ones (15 MiB), enough for
/// 16 downloads with a batch being sent, one read ahead and one in the socket.
const SMALL_MAX: usize = 64;
const LARGE_MAX: usize = 48;

/// Idle buffers, by class; every buffer has its class's capacity, so any fits any request
/// of the class. One for the process ([`POOL`]); the tests make their own.
pub(crate) struct Pool {
    small: Mutex<Vec<Vec<u8>>>,
    large: Mutex<Vec<Vec<u8>>>,
}

/// The process's pool.
static POOL: Pool = Pool::new();

/// The list, recovered if a thread panicked holding it (it only ever holds zeroed buffers).
fn lock(list: &Mutex<Vec<Vec<u8>>>) -> MutexGuard<'_, Vec<Vec<u8>>> {
    list.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    const fn new() -> Self {
        Self {
            small: Mutex::new(Vec::new()),
            large: Mutex::new(Vec::new()),
        }
    }

    /// The class of a request of `len` bytes: its list and its buffers' capacity.
    fn class(&self, len: usize) -> Option<(&Mutex<Vec<Vec<u8>>>, usize)> {
        match len {
            l if l < MIN_POOLED => None,
            l if l <= SMALL_CAP => Some((&self.small, SMALL_CAP)),
            l if l <= LARGE_CAP => Some((&self.large, LARGE_CAP)),
            _ => None,
        }
    }

    /// An idle buffer of the class of `len` (its bytes zero), or a new one; `None` for a
    /// length no class takes.
    fn take(&self, len: usize) -> Option<Vec<u8>> {
        let (list, cap) = self.class(len)?;
        let v = lock(list).pop();
        Some(v.unwrap_or_else(|| Vec::with_capacity(cap)))
    }

    fn zeroed(&self, len: usize) -> Vec<u8> {
        match self.take(len) {
            Some(mut v) => {
                // Only what the buffer does not hold yet is written: its bytes are zero.
                if v.len() >= len {
                    v.truncate(len);
                } else {
                    v.resize(len, 0);
                }
                v
            }
            None => vec![0; len],
        }
    }

    fn with_capacity(&self, len: usize) -> Vec<u8> {
        match self.take(len) {
            Some(mut v) => {
                v.clear();
                v
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Wipes all of `v` (its length and its spare capacity), then keeps it if it is one of a
    /// class's buffers and that class has room; frees it otherwise.
    fn give_back(&self, mut v: Vec<u8>) {
        v.as_mut_slice().zeroize();
        v.spare_capacity_mut().zeroize();
        let (list, max) = match v.capacity() {
            SMALL_CAP => (&self.small, SMALL_MAX),
            LARGE_CAP => (&self.large, LARGE_MAX),
            _ => return,
        };
        let mut l = lock(list);
        if l.len() < max {
            l.push(v);
        }
    }
}

/// `len` zero bytes to read into, in a pooled buffer when one is free.
pub(crate) fn zeroed(len: usize) -> Vec<u8> {
    POOL.zeroed(len)
}

/// An empty buffer with room for `len` bytes, pooled when one is free.
pub(crate) fn with_capacity(len: usize) -> Vec<u8> {
    POOL.with_capacity(len)
}

/// Decrypted content (see the module's documentation): zeroed when dropped, and kept for
/// reuse when its size is one the pools keep. Give it to `bytes::Bytes::from_owner` to send
/// slices of it without a copy.
pub struct PlainBuf {
    v: Vec<u8>,
    pool: &'static Pool,
}

impl PlainBuf {
    /// Takes over `v` (from [`zeroed`] or [`with_capacity`], or any `Vec`): all of it, its
    /// spare capacity too, is wiped when this is dropped.
    pub(crate) fn from_vec(v: Vec<u8>) -> Self {
        Self { v, pool: &POOL }
    }

    /// A copy of `data`.
    pub(crate) fn copy_of(data: &[u8]) -> Self {
        let mut v = with_capacity(data.len());
        v.extend_from_slice(data);
        Self::from_vec(v)
    }
}

impl std::ops::Deref for PlainBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.v
    }
}

impl std::ops::DerefMut for PlainBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.v
    }
}

impl AsRef<[u8]> for PlainBuf {
    fn as_ref(&self) -> &[u8] {
        &self.v
    }
}

impl Drop for PlainBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> &'static Pool {
        Box::leak(Box::new(Pool::new()))
    }

    /// A buffer handed out again reads as zeros, whatever its last user left in it, for
    /// both classes, asked for less or more than it held; a dropped buffer is reused.
    #[test]
    fn a_reused_buffer_holds_nothing_of_its_last_content() {
        for (first, second) in [
            (4096, 2000),
            (2000, 4096),
            (262_208, 70_000),
            (70_000, 262_208),
        ] {
            let pool = pool();
            let mut b = PlainBuf {
                v: pool.zeroed(first),
                pool,
            };
            b.fill(0xa5);
            let addr = b.as_ptr();
            drop(b);
            let v = pool.zeroed(second);
            assert_eq!(v.as_ptr(), addr, "{first} then {second}: not reused");
            assert_eq!(v.len(), second);
            assert!(
                v.iter().all(|&x| x == 0),
                "{first} then {second}: stale bytes"
            );
            let mut b = PlainBuf { v, pool };
            b.fill(0x5a);
            drop(b);
            let w = pool.with_capacity(first);
            assert_eq!(w.as_ptr(), addr);
            assert!(w.is_empty() && w.capacity() >= first.max(second));
        }
    }

    /// Only a class's own buffers are kept (by capacity, whatever their length), at most a
    /// class's limit; too short or too long a request gets a buffer of its own.
    #[test]
    fn only_class_buffers_are_kept_and_the_classes_are_bounded() {
        let pool = pool();
        for v in [
            vec![7u8; 200_000],
            vec![7u8; LARGE_CAP + 1],
            Vec::with_capacity(SMALL_CAP - 1),
        ] {
            drop(PlainBuf { v, pool });
        }
        assert!(pool.large.lock().unwrap().is_empty());
        assert!(pool.small.lock().unwrap().is_empty());
        let many: Vec<PlainBuf> = (0..LARGE_MAX + 8)
            .map(|i| PlainBuf {
                v: pool.zeroed(SMALL_CAP + 1 + i * 1000),
                pool,
            })
            .collect();
        drop(many);
        assert_eq!(pool.large.lock().unwrap().len(), LARGE_MAX);
        let small: Vec<PlainBuf> = (0..SMALL_MAX + 1)
            .map(|_| PlainBuf {
                v: pool.zeroed(MIN_POOLED),
                pool,
            })
            .collect();
        drop(small);
        assert_eq!(pool.small.lock().unwrap().len(), SMALL_MAX);
        assert!(pool.take(MIN_POOLED - 1).is_none());
        assert!(pool.take(LARGE_CAP + 1).is_none());
        assert_eq!(pool.zeroed(100).capacity(), 100);
        assert_eq!(pool.take(LARGE_CAP).map(|v| v.capacity()), Some(LARGE_CAP));
    }
}
