//! Buffers that hold decrypted file content on its way out ([`PlainBuf`]): read into
//! (ciphertext), decrypted in place, sent, then wiped and kept for the next read.
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
//! wipe costs what the allocation's own zeroing did. Measured here (docs/benchmarks.md,
//! "Wiped, pooled read buffers"), alternating series on one machine: GET 1 GiB (direct reads)
//! 916–1,331 MB/s against 855–1,206 (medians 1,305 and 979); GET 1 MiB, GET 64 MiB and GET
//! 4 KiB with the cache off unchanged within noise.

use std::sync::Mutex;

use zeroize::Zeroize;

/// Buffers up to this capacity go into the small pool (an inline content, a segment).
const SMALL_CAP: usize = 16 << 10;
/// Buffers up to this capacity (and above [`SMALL_CAP`]) go into the large pool: a
/// streamed batch of four segments is 262,208 bytes. Larger ones (the cache's 16-segment
/// fills, a whole-file read) are freed.
const LARGE_CAP: usize = 320 << 10;
/// Idle buffers kept per pool: 48 large ones (15 MiB at most) cover 16 downloads with a
/// batch being sent, one read ahead and one in the socket.
const SMALL_MAX: usize = 64;
const LARGE_MAX: usize = 48;

/// Idle buffers, by size. One for the process ([`POOL`]); the tests make their own.
pub(crate) struct Pool {
    small: Mutex<Vec<Vec<u8>>>,
    large: Mutex<Vec<Vec<u8>>>,
}

/// The process's pool.
static POOL: Pool = Pool::new();

impl Pool {
    const fn new() -> Self {
        Self {
            small: Mutex::new(Vec::new()),
            large: Mutex::new(Vec::new()),
        }
    }

    /// The list for a buffer of `cap` bytes' capacity, and its limit; `None`: not pooled.
    fn list(&self, cap: usize) -> Option<(&Mutex<Vec<Vec<u8>>>, usize)> {
        match cap {
            0 => None,
            c if c <= SMALL_CAP => Some((&self.small, SMALL_MAX)),
            c if c <= LARGE_CAP => Some((&self.large, LARGE_MAX)),
            _ => None,
        }
    }

    /// An idle `Vec` with room for `len` bytes (its contents zero), if there is one.
    fn take(&self, len: usize) -> Option<Vec<u8>> {
        let (list, _) = self.list(len)?;
        let mut l = list.lock().ok()?;
        let i = l.iter().position(|v| v.capacity() >= len)?;
        Some(l.swap_remove(i))
    }

    fn zeroed(&self, len: usize) -> Vec<u8> {
        match self.take(len) {
            Some(mut v) => {
                // Only what the buffer did not already hold is written: its bytes are zero.
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

    /// Wipes `v` and keeps it if its size is pooled and there is room; frees it otherwise.
    fn give_back(&self, mut v: Vec<u8>) {
        if let Some((list, max)) = self.list(v.capacity()) {
            v.as_mut_slice().zeroize();
            if let Ok(mut l) = list.lock()
                && l.len() < max
            {
                l.push(v);
                return;
            }
        }
        v.zeroize();
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
    /// Takes over `v` (from [`zeroed`] or [`with_capacity`], or any `Vec`): it will be
    /// wiped with the content it holds then.
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
    /// both pools, asked for less or as much as it held; a freed one is reused.
    #[test]
    fn a_reused_buffer_holds_nothing_of_its_last_content() {
        for (first, second) in [
            (4096, 100),
            (4096, 4096),
            (262_208, 70_000),
            (262_208, 262_208),
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
            assert!(w.is_empty() && w.capacity() >= first);
        }
    }

    /// Too large for the pools: freed. A full pool frees the rest. The smallest buffer
    /// that fits is not required, any that fits is taken.
    #[test]
    fn only_pooled_sizes_are_kept_and_the_pools_are_bounded() {
        let pool = pool();
        let big = PlainBuf {
            v: vec![7u8; LARGE_CAP + 1],
            pool,
        };
        drop(big);
        assert!(pool.large.lock().unwrap().is_empty());
        let many: Vec<PlainBuf> = (0..LARGE_MAX + 8)
            .map(|_| PlainBuf {
                v: pool.zeroed(200_000),
                pool,
            })
            .collect();
        drop(many);
        assert_eq!(pool.large.lock().unwrap().len(), LARGE_MAX);
        let small: Vec<PlainBuf> = (0..SMALL_MAX + 1)
            .map(|_| PlainBuf {
                v: pool.zeroed(4096),
                pool,
            })
            .collect();
        drop(small);
        assert_eq!(pool.small.lock().unwrap().len(), SMALL_MAX);
        // A 200,000-byte buffer serves a 70,000-byte read; a 300,000-byte read finds none.
        assert!(pool.take(70_000).is_some());
        assert!(pool.take(300_000).is_none());
        assert!(pool.take(0).is_none());
    }
}
