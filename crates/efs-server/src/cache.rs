//! The decrypted-content cache: in memory, bounded in bytes, keyed by file version.
//!
//! A key is a content id, and every write makes a new content id, so a cached entry can
//! never be a stale version of a path. A hit is also checked to belong to the filesystem
//! asking: a filesystem restored from another's backup keeps its content ids, and must not
//! be served the other's plaintext (which would hide its own blobs' damage, or serve what a
//! backup restored without authentication names but does not hold). Values are zeroized when the last reference goes
//! (eviction, clear, or the end of a response that was still sending them).
//!
//! A version replaced or deleted is dropped from the cache when the filesystem removes its
//! content ([`ContentCache::invalidate`], called from `FsOptions::on_content_removed`), and
//! an entry nobody reads expires after [`TIME_TO_IDLE`]: the plaintext of a deleted file
//! does not stay in memory until something evicts it.
//!
//! Every cached version holds a share of a byte budget ([`PLAINTEXT_OVERHEAD`] beyond the
//! cache's capacity) for as long as it lives, in the cache or only in responses still
//! sending it: a cache miss that finds the budget spent streams the file instead of
//! decrypting it whole into memory, so clients that stop reading cannot pin more than the
//! budget in evicted versions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use efs_core::Entry;
use moka::sync::Cache;
use zeroize::Zeroizing;

/// An entry not read for this long is dropped (and zeroized).
pub const TIME_TO_IDLE: Duration = Duration::from_secs(300);

/// Bytes of cached versions allowed beyond the cache's capacity: versions evicted while a
/// response still sends them, and versions being decrypted to fill the cache.
pub const PLAINTEXT_OVERHEAD: u64 = 64 << 20;

/// One cached file version.
pub struct CachedFile {
    /// The filesystem it was read from ([`efs_core::Filesystem::id`]).
    fs: [u8; 16],
    /// The version's metadata.
    pub entry: Entry,
    /// Its plaintext; zeroized on drop.
    pub data: Zeroizing<Vec<u8>>,
    /// Its share of the budget, given back when the last reference goes.
    _share: Share,
}

impl CachedFile {
    /// A version of filesystem `fs` to fill with `data` (at most the share's bytes; see
    /// [`ContentCache::reserve`]).
    pub fn new(fs: [u8; 16], entry: Entry, data: Zeroizing<Vec<u8>>, share: Share) -> Self {
        Self {
            fs,
            entry,
            data,
            _share: share,
        }
    }
}

/// A reservation of bytes of the plaintext budget; given back on drop.
pub struct Share {
    budget: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The latest removals, numbered: a fill decrypts for milliseconds after its lookup, and a
/// delete or replacement committed meanwhile found nothing in the cache to drop; the fill
/// looks here when it inserts, for a removal of its version numbered at or after the count
/// it read before its lookup ([`ContentCache::removal_epoch`]).
#[derive(Default)]
struct Removals {
    /// Each version's latest removal.
    latest: std::collections::HashMap<[u8; 16], u64>,
    /// The removals in order, at most [`REMOVALS_KEPT`].
    order: std::collections::VecDeque<(u64, [u8; 16])>,
    /// The number of the latest removal forgotten (beyond [`REMOVALS_KEPT`]): a fill that
    /// began before it cannot tell, and drops its version.
    forgotten: Option<u64>,
}

/// Removals remembered (about 60 bytes each).
const REMOVALS_KEPT: usize = 65_536;

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

/// How often [`ContentCache::upkeep`] runs: moka has no thread of its own, and frees what
/// was invalidated or expired only in the upkeep that a later call of the cache runs (and at
/// most every 300 ms): a quiet server would keep such plaintext indefinitely without it.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The cache.
#[derive(Clone)]
pub struct ContentCache {
    inner: Option<Cache<[u8; 16], Arc<CachedFile>>>,
    /// The latest removals (see [`Removals`]), and the number the next one gets.
    removals: Arc<Mutex<Removals>>,
    next_removal: Arc<AtomicU64>,
    max_file: u64,
    /// Bytes of plaintext held by cached versions (in the cache or not any more).
    held: Arc<AtomicU64>,
    /// The most `held` may reach: the capacity plus [`PLAINTEXT_OVERHEAD`].
    budget: u64,
    /// Versions found damaged part way through a download (see
    /// [`ContentCache::damaged_overlaps`]); kept with the cache off too.
    damaged: Arc<std::sync::RwLock<Damaged>>,
    /// Whether `damaged` may hold any: every GET asks, and almost always none is, so the
    /// lock is not taken then.
    any_damaged: Arc<std::sync::atomic::AtomicBool>,
}

/// Versions whose content failed to decrypt past the first batch of a download (damaged or
/// tampered with), by filesystem and version: the plaintext ranges of the batches that failed
/// (a batch is 256 KiB; at most [`DAMAGED_RANGES`] a version), and when they were last noted. A
/// download cut there has already said 200; the next request whose range overlaps one is
/// answered 500 before any byte (as a damaged first batch is), so that a client trying again
/// gets a status that says the server failed, not another cut that looks like the network's;
/// a range that does not overlap is served. Forgotten after [`DAMAGE_KEPT_FOR`] (a blob put
/// right by hand is served again, or at once after `efsctl cache-clear`), and beyond
/// [`DAMAGED_KEPT`] versions.
#[derive(Default)]
struct Damaged {
    ranges: std::collections::HashMap<DamageKey, (Vec<std::ops::Range<u64>>, std::time::Instant)>,
}

/// A filesystem's id and a version.
type DamageKey = ([u8; 16], [u8; 16]);

/// How long a version found damaged is answered 500 before any byte (see
/// [`ContentCache::damaged_overlaps`]).
pub const DAMAGE_KEPT_FOR: Duration = Duration::from_secs(600);

/// Versions found damaged that are remembered at most.
const DAMAGED_KEPT: usize = 4096;

/// Damaged ranges remembered per version at most (the first ones noted).
const DAMAGED_RANGES: usize = 16;

impl ContentCache {
    /// A cache with the given bounds.
    pub fn new(cfg: CacheConfig) -> Self {
        let inner = (cfg.capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(cfg.capacity)
                .weigher(|_k: &[u8; 16], v: &Arc<CachedFile>| {
                    u32::try_from(v.data.len() + 256).unwrap_or(u32::MAX)
                })
                .time_to_idle(TIME_TO_IDLE)
                .build()
        });
        Self {
            inner,
            removals: Arc::default(),
            next_removal: Arc::default(),
            max_file: cfg.max_file,
            held: Arc::new(AtomicU64::new(0)),
            budget: cfg.capacity.saturating_add(PLAINTEXT_OVERHEAD),
            damaged: Arc::default(),
            any_damaged: Arc::default(),
        }
    }

    /// Notes that version `version` of filesystem `fs` failed to decrypt in the plaintext
    /// range `bad` (a batch of a download; see [`ContentCache::damaged_overlaps`]).
    pub fn note_damaged(&self, fs: &[u8; 16], version: &[u8; 16], bad: std::ops::Range<u64>) {
        let mut d = self
            .damaged
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        // What expired goes here, not in the lookups every GET makes.
        d.ranges
            .retain(|_, (_, at)| now.duration_since(*at) < DAMAGE_KEPT_FOR);
        if d.ranges.len() >= DAMAGED_KEPT
            && let Some(oldest) = d
                .ranges
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k)
        {
            d.ranges.remove(&oldest);
        }
        let (ranges, at) = d
            .ranges
            .entry((*fs, *version))
            .or_insert_with(|| (Vec::new(), now));
        if !ranges.contains(&bad) && ranges.len() < DAMAGED_RANGES {
            ranges.push(bad);
        }
        *at = now;
        self.any_damaged.store(true, Ordering::Release);
    }

    /// Whether the plaintext range `start..end` of version `version` of filesystem `fs`
    /// overlaps a range a download of it failed to decrypt in within [`DAMAGE_KEPT_FOR`]. A
    /// download cut there has already said 200; the server answers the next request that
    /// overlaps it 500 before any byte (as it does a damaged first batch), so that a client
    /// trying again is told the server failed, not cut again as by the network; a range clear
    /// of every damaged one is served. At most 4,096 versions are kept; [`ContentCache::clear`]
    /// forgets them (a blob put right by hand is served at once).
    pub fn damaged_overlaps(
        &self,
        fs: &[u8; 16],
        version: &[u8; 16],
        start: u64,
        end: u64,
    ) -> bool {
        if !self.any_damaged.load(Ordering::Acquire) {
            return false;
        }
        let d = self
            .damaged
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        d.ranges
            .get(&(*fs, *version))
            .filter(|(_, at)| at.elapsed() < DAMAGE_KEPT_FOR)
            .is_some_and(|(ranges, _)| ranges.iter().any(|r| start < r.end && r.start < end))
    }

    /// Reserves `bytes` of the plaintext budget for a version about to be decrypted into
    /// the cache; `None` when it is spent (serve that request without the cache).
    pub fn reserve(&self, bytes: u64) -> Option<Share> {
        self.inner.as_ref()?;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&n| n <= self.budget)
            })
            .ok()?;
        Some(Share {
            budget: self.held.clone(),
            bytes,
        })
    }

    /// Drops a version (its content was removed: the file was replaced or deleted). Its
    /// plaintext is freed (and zeroized) by the next [`ContentCache::upkeep`], or when the
    /// last response sending it ends.
    pub fn invalidate(&self, version: &[u8; 16]) {
        let Some(c) = &self.inner else { return };
        // Noted first: a fill inserting it after this invalidation sees the note.
        {
            let mut r = self.removals.lock().unwrap_or_else(|e| e.into_inner());
            let n = self.next_removal.fetch_add(1, Ordering::SeqCst);
            r.latest.insert(*version, n);
            r.order.push_back((n, *version));
            while r.order.len() > REMOVALS_KEPT {
                let (old, v) = r.order.pop_front().expect("longer than the limit");
                if r.latest.get(&v) == Some(&old) {
                    r.latest.remove(&v);
                }
                r.forgotten = r.forgotten.max(Some(old));
            }
        }
        c.invalidate(version);
    }

    /// Runs moka's pending work: frees what was invalidated or has expired. Called every
    /// [`UPKEEP_INTERVAL`] by the server.
    pub fn upkeep(&self) {
        if let Some(c) = &self.inner {
            drain(c);
            metrics::gauge!("efs_cache_bytes").set(c.weighted_size() as f64);
            metrics::gauge!("efs_cache_plaintext_bytes").set(self.held_bytes() as f64);
        }
    }

    /// Plaintext bytes held by cached versions, in the cache or in responses still sending
    /// them.
    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// True if the cache may hold a file of `size` bytes.
    pub fn admits(&self, size: u64) -> bool {
        self.inner.is_some() && size <= self.max_file
    }

    /// A cached version of filesystem `fs` (one of another filesystem with the same content
    /// id is a miss; the fill that follows replaces it).
    pub fn get(&self, fs: &[u8; 16], version: &[u8; 16]) -> Option<Arc<CachedFile>> {
        let hit = self.inner.as_ref()?.get(version).filter(|c| c.fs == *fs);
        if hit.is_some() {
            metrics::counter!("efs_cache_hits_total").increment(1);
        } else {
            metrics::counter!("efs_cache_misses_total").increment(1);
        }
        hit
    }

    /// The count of removals so far: read before the lookup that leads to a fill, and given
    /// to [`ContentCache::insert`].
    pub fn removal_epoch(&self) -> u64 {
        self.next_removal.load(Ordering::SeqCst)
    }

    /// Stores a version, unless it was removed since `epoch` ([`ContentCache::removal_epoch`]
    /// read before the lookup that found it): a fill decrypts for milliseconds, and a delete or
    /// replacement committed meanwhile found nothing in the cache to drop.
    pub fn insert(&self, file: Arc<CachedFile>, epoch: u64) {
        let Some(c) = &self.inner else { return };
        let version = file.entry.version;
        c.insert(version, file);
        let removed = {
            let r = self.removals.lock().unwrap_or_else(|e| e.into_inner());
            r.forgotten.is_some_and(|f| f >= epoch)
                || r.latest.get(&version).is_some_and(|n| *n >= epoch)
        };
        if removed {
            c.invalidate(&version);
        }
        metrics::gauge!("efs_cache_bytes").set(c.weighted_size() as f64);
    }

    /// Empties the cache: every entry is dropped (and zeroized unless a response still sends
    /// it) before this returns. (moka's `invalidate_all` alone only hides the entries and
    /// leaves their removal to later maintenance.) A fill that began before (decrypting while
    /// this runs) drops its version when it inserts it: the clear counts as a removal of
    /// every version.
    pub fn clear(&self) {
        {
            let mut d = self
                .damaged
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            d.ranges.clear();
            self.any_damaged.store(false, Ordering::Release);
        }
        if let Some(c) = &self.inner {
            {
                let mut r = self.removals.lock().unwrap_or_else(|e| e.into_inner());
                let n = self.next_removal.fetch_add(1, Ordering::SeqCst);
                r.forgotten = r.forgotten.max(Some(n));
            }
            for (k, _) in c.iter() {
                c.invalidate(&*k);
            }
            c.invalidate_all();
            drain(c);
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

/// Runs moka's pending work until its queues are empty: one run handles a bounded batch of
/// the writes queued (inserts, invalidations), each of which may hold a version's plaintext
/// until it is handled (a single run left one behind under load).
fn drain(c: &Cache<[u8; 16], Arc<CachedFile>>) {
    for _ in 0..8 {
        c.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the upkeep until the plaintext held satisfies `ok`: moka frees a removed entry's
    /// value once its queues are handled and its concurrent map's epoch-based reclamation
    /// lets go of it, which on a loaded machine can take more than one upkeep.
    fn settles(cache: &ContentCache, ok: impl Fn(u64) -> bool) -> bool {
        for _ in 0..5000 {
            cache.upkeep();
            if ok(cache.held_bytes()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// The filesystem the tests' versions belong to.
    const FS: [u8; 16] = [0xf5; 16];

    fn file(cache: &ContentCache, version: u8, len: usize) -> Option<Arc<CachedFile>> {
        let share = cache.reserve(len as u64)?;
        let entry = Entry {
            name: "f".into(),
            kind: efs_core::Kind::File,
            size: len as u64,
            created_ms: 0,
            modified_ms: 0,
            content_type: None,
            version: [version; 16],
        };
        Some(Arc::new(CachedFile::new(
            FS,
            entry,
            Zeroizing::new(vec![version; len]),
            share,
        )))
    }

    /// Cached versions hold the budget (capacity + PLAINTEXT_OVERHEAD) for as long as they
    /// live, in the cache or only in a response: a fill past it is refused (and streamed).
    #[test]
    fn the_plaintext_budget_bounds_evicted_versions_still_in_use() {
        const MIB: usize = 1 << 20;
        let cache = ContentCache::new(CacheConfig {
            capacity: 16 << 20,
            max_file: 8 << 20,
        });
        let budget = (16 << 20) + PLAINTEXT_OVERHEAD as usize;
        // Versions handed to responses that never finish: the cache evicts most of them,
        // the responses keep them.
        let mut in_use = Vec::new();
        while let Some(f) = file(&cache, in_use.len() as u8, 4 * MIB) {
            cache.insert(f.clone(), cache.removal_epoch());
            in_use.push(f);
        }
        assert_eq!(in_use.len(), budget / (4 * MIB));
        assert_eq!(cache.held_bytes(), (in_use.len() * 4 * MIB) as u64);
        assert!(cache.weighted_size() <= 16 << 20, "the oldest were evicted");
        // Refused even for one byte more, until a response of an evicted one ends.
        assert!(cache.reserve(1).is_none());
        let evicted = in_use
            .iter()
            .position(|f| {
                cache
                    .inner
                    .as_ref()
                    .unwrap()
                    .get(&f.entry.version)
                    .is_none()
            })
            .expect("most were evicted");
        in_use.remove(evicted);
        assert!(settles(&cache, |held| held <= (budget - 4 * MIB) as u64));
        assert!(cache.reserve(4 * MIB as u64).is_some());
        in_use.clear();
        cache.clear();
        assert!(settles(&cache, |held| held == 0), "every share given back");
    }

    #[test]
    fn an_invalidated_version_leaves_the_cache_and_gives_its_bytes_back() {
        let cache = ContentCache::new(CacheConfig {
            capacity: 1 << 20,
            max_file: 1 << 20,
        });
        let f = file(&cache, 1, 1000).unwrap();
        cache.insert(f, cache.removal_epoch());
        assert!(cache.get(&FS, &[1; 16]).is_some());
        assert_eq!(cache.held_bytes(), 1000);
        cache.invalidate(&[1; 16]);
        assert!(cache.get(&FS, &[1; 16]).is_none());
        assert!(settles(&cache, |held| held == 0));
    }

    /// A version cached for one filesystem is not served to another with the same content id
    /// (a filesystem restored from the other's backup); the other's fill replaces it.
    #[test]
    fn a_version_is_served_only_to_its_filesystem() {
        let cache = ContentCache::new(CacheConfig {
            capacity: 1 << 20,
            max_file: 1 << 20,
        });
        cache.insert(file(&cache, 1, 1000).unwrap(), cache.removal_epoch());
        assert!(cache.get(&FS, &[1; 16]).is_some());
        let other = [0x0f; 16];
        assert!(cache.get(&other, &[1; 16]).is_none());
        let theirs = cache.reserve(1000).unwrap();
        let entry = cache.get(&FS, &[1; 16]).unwrap().entry.clone();
        let f = CachedFile::new(other, entry, Zeroizing::new(vec![2; 1000]), theirs);
        cache.insert(Arc::new(f), cache.removal_epoch());
        assert_eq!(cache.get(&other, &[1; 16]).unwrap().data[0], 2);
        assert!(cache.get(&FS, &[1; 16]).is_none());
    }

    /// A version found damaged refuses the ranges that overlap what failed, and only those,
    /// per filesystem, with the cache off too, until a clear.
    #[test]
    fn damaged_ranges_are_known_until_cleared() {
        let cache = ContentCache::new(CacheConfig {
            capacity: 0,
            max_file: 0,
        });
        let v = [1; 16];
        assert!(!cache.damaged_overlaps(&FS, &v, 0, u64::MAX));
        cache.note_damaged(&FS, &v, 1000..2000);
        cache.note_damaged(&FS, &v, 5000..6000);
        cache.note_damaged(&FS, &v, 1000..2000);
        assert_eq!(cache.damaged.read().unwrap().ranges[&(FS, v)].0.len(), 2);
        for (start, end, refused) in [
            (0, 1000, false),
            (0, 1001, true),
            (1999, 2000, true),
            (2000, 5000, false),
            (2500, 7000, true),
            (6000, 9000, false),
            (0, u64::MAX, true),
        ] {
            assert_eq!(
                cache.damaged_overlaps(&FS, &v, start, end),
                refused,
                "{start}..{end}"
            );
        }
        assert!(!cache.damaged_overlaps(&[0x0f; 16], &v, 0, u64::MAX));
        assert!(!cache.damaged_overlaps(&FS, &[2; 16], 0, u64::MAX));
        for n in 0..(DAMAGED_KEPT + 10) {
            let mut version = [0; 16];
            version[..8].copy_from_slice(&(n as u64).to_be_bytes());
            cache.note_damaged(&[0x0f; 16], &version, 0..1);
        }
        assert!(cache.damaged.read().unwrap().ranges.len() <= DAMAGED_KEPT);
        cache.clear();
        assert!(!cache.damaged_overlaps(&FS, &v, 0, u64::MAX));
        assert!(!cache.any_damaged.load(Ordering::Acquire));
    }

    /// A fill whose version was removed after its lookup (before or while it decrypts)
    /// does not put it back; one removed before its lookup could not have found it, and a
    /// version removed long ago and written again is cached.
    #[test]
    fn a_version_removed_during_its_fill_is_not_kept() {
        let cache = ContentCache::new(CacheConfig {
            capacity: 1 << 20,
            max_file: 1 << 20,
        });
        let epoch = cache.removal_epoch(); // read before the lookup
        cache.invalidate(&[2; 16]); // the delete commits before the fill even starts
        let f = file(&cache, 2, 1000).unwrap();
        cache.insert(f, epoch);
        assert!(cache.get(&FS, &[2; 16]).is_none());
        assert!(settles(&cache, |held| held == 0));
        // Another version, and one removed before this fill's lookup, are cached as usual.
        cache.insert(file(&cache, 3, 1000).unwrap(), cache.removal_epoch());
        assert!(cache.get(&FS, &[3; 16]).is_some());
        cache.insert(file(&cache, 2, 1000).unwrap(), cache.removal_epoch());
        assert!(cache.get(&FS, &[2; 16]).is_some());
    }

    /// Beyond the removals kept, a fill older than the forgotten ones drops its version;
    /// later fills cache as usual (a flood of removals does not stop caching).
    #[test]
    fn a_fill_older_than_the_removals_kept_drops_its_version() {
        let cache = ContentCache::new(CacheConfig {
            capacity: 1 << 20,
            max_file: 1 << 20,
        });
        let old = cache.removal_epoch();
        for i in 0..=REMOVALS_KEPT as u32 {
            let mut v = [9u8; 16];
            v[..4].copy_from_slice(&i.to_be_bytes());
            cache.invalidate(&v);
        }
        cache.insert(file(&cache, 5, 1000).unwrap(), old);
        assert!(
            cache.get(&FS, &[5; 16]).is_none(),
            "it cannot tell: dropped"
        );
        cache.insert(file(&cache, 6, 1000).unwrap(), cache.removal_epoch());
        assert!(cache.get(&FS, &[6; 16]).is_some());
    }

    /// Regression: a fill decrypting while `efsctl cache-clear` ran inserted its plaintext
    /// after the clear had reported success; it now drops it. Fills begun after the clear
    /// cache as usual.
    #[test]
    fn a_fill_begun_before_a_clear_drops_its_version() {
        let cache = ContentCache::new(CacheConfig {
            capacity: 1 << 20,
            max_file: 1 << 20,
        });
        let before = cache.removal_epoch();
        cache.clear();
        cache.insert(file(&cache, 7, 1000).unwrap(), before);
        assert!(
            cache.get(&FS, &[7; 16]).is_none(),
            "a fill from before the clear stayed"
        );
        cache.insert(file(&cache, 8, 1000).unwrap(), cache.removal_epoch());
        assert!(cache.get(&FS, &[8; 16]).is_some());
        // A later invalidation does not lower what the clear set.
        let after_clear = cache.removal_epoch();
        cache.invalidate(&[1; 16]);
        cache.insert(file(&cache, 9, 1000).unwrap(), after_clear);
        assert!(cache.get(&FS, &[9; 16]).is_some());
    }

    /// `upkeep` frees an invalidated version without any other call of the cache (moka
    /// only does that work when called).
    #[test]
    fn upkeep_frees_an_invalidated_version() {
        let cache = ContentCache::new(CacheConfig {
            capacity: 1 << 20,
            max_file: 1 << 20,
        });
        cache.insert(file(&cache, 4, 1000).unwrap(), cache.removal_epoch());
        cache.invalidate(&[4; 16]);
        assert!(settles(&cache, |held| held == 0));
    }

    #[test]
    fn a_cache_that_is_off_reserves_nothing() {
        let cache = ContentCache::new(CacheConfig {
            capacity: 0,
            max_file: 1 << 20,
        });
        assert!(cache.reserve(1).is_none());
    }
}
