//! The decrypted-content cache: in memory, bounded in bytes, keyed by file version.
//!
//! A key is a content id, and every write makes a new content id, so a cached entry can
//! never be a stale version of a path. Values are zeroized when the last reference goes
//! (eviction, clear, or the end of a response that was still sending them).

use std::sync::Arc;

use bytes::Bytes;
use efs_core::Entry;
use moka::sync::Cache;
use zeroize::Zeroizing;

/// One cached file version.
pub struct CachedFile {
    /// The version's metadata.
    pub entry: Entry,
    /// Its plaintext; zeroized on drop.
    pub data: Zeroizing<Vec<u8>>,
}

impl CachedFile {
    /// A `Bytes` view that keeps this entry alive while the response is being sent.
    pub fn slice(self: &Arc<Self>, start: usize, end: usize) -> Bytes {
        Bytes::from_owner(CachedSlice {
            file: self.clone(),
            start,
            end,
        })
    }
}

struct CachedSlice {
    file: Arc<CachedFile>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for CachedSlice {
    fn as_ref(&self) -> &[u8] {
        &self.file.data[self.start..self.end]
    }
}

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Total bytes; 0 turns the cache off.
    pub capacity: u64,
    /// Largest file cached.
    pub max_file: u64,
}

/// The cache.
#[derive(Clone)]
pub struct ContentCache {
    inner: Option<Cache<[u8; 16], Arc<CachedFile>>>,
    max_file: u64,
}

impl ContentCache {
    /// A cache with the given bounds.
    pub fn new(cfg: CacheConfig) -> Self {
        let inner = (cfg.capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(cfg.capacity)
                .weigher(|_k: &[u8; 16], v: &Arc<CachedFile>| {
                    u32::try_from(v.data.len() + 256).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self {
            inner,
            max_file: cfg.max_file,
        }
    }

    /// True if the cache may hold a file of `size` bytes.
    pub fn admits(&self, size: u64) -> bool {
        self.inner.is_some() && size <= self.max_file
    }

    /// A cached version.
    pub fn get(&self, version: &[u8; 16]) -> Option<Arc<CachedFile>> {
        let hit = self.inner.as_ref()?.get(version);
        if hit.is_some() {
            metrics::counter!("efs_cache_hits_total").increment(1);
        } else {
            metrics::counter!("efs_cache_misses_total").increment(1);
        }
        hit
    }

    /// Stores a version.
    pub fn insert(&self, file: Arc<CachedFile>) {
        if let Some(c) = &self.inner {
            c.insert(file.entry.version, file);
            metrics::gauge!("efs_cache_bytes").set(c.weighted_size() as f64);
        }
    }

    /// Empties the cache.
    pub fn clear(&self) {
        if let Some(c) = &self.inner {
            c.invalidate_all();
            c.run_pending_tasks();
            metrics::gauge!("efs_cache_bytes").set(c.weighted_size() as f64);
        }
    }

    /// Bytes held (pending maintenance is run first, so recent inserts are counted).
    pub fn weighted_size(&self) -> u64 {
        self.inner
            .as_ref()
            .map(|c| {
                c.run_pending_tasks();
                c.weighted_size()
            })
            .unwrap_or(0)
    }
}
