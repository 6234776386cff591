//! An in-memory [`Index`]: the reference model of the trait.
//!
//! Nothing is durable. It exists so that one conformance suite (`tests/index_conformance.rs`)
//! can hold every implementation to the same contract, and so that filesystem logic can be
//! tested without a disk. One mutex serialises commits, which is exactly the semantics a
//! durable implementation must reproduce: each batch sees every earlier one, whole.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;

use efs_format::Key32;

use crate::digest::{Accumulator, DigestCheck, DigestKey, Layout, META_DIGEST};
use crate::error::Result;
use crate::index::{Batch, ContentId, DirTag, EntryKey, Index, Op, SnapshotItem, check_reserved};

struct State {
    entries: BTreeMap<EntryKey, Vec<u8>>,
    inline: BTreeMap<ContentId, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
}

/// An [`Index`] held in memory (tests, reference model).
pub struct MemIndex {
    state: Mutex<State>,
    /// See [`Index::changes`].
    changes: std::sync::atomic::AtomicU64,
    digest: DigestKey,
}

impl Default for MemIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl MemIndex {
    /// An empty index whose digest is keyed by a random key.
    pub fn new() -> Self {
        Self::with_digest_key(DigestKey::from_root(&Key32::random(), &[0; 16]))
    }

    /// An empty index whose digest is keyed by `digest`.
    pub fn with_digest_key(digest: DigestKey) -> Self {
        let mut meta = BTreeMap::new();
        meta.insert(
            META_DIGEST.to_owned(),
            Accumulator::empty_with(Layout::INDEX).seal(&digest),
        );
        Self {
            state: Mutex::new(State {
                entries: BTreeMap::new(),
                inline: BTreeMap::new(),
                meta,
            }),
            changes: std::sync::atomic::AtomicU64::new(0),
            digest,
        }
    }

    /// Replaces a metadata value behind the index's back, as someone editing the stored
    /// index would (tamper tests).
    pub fn tamper_meta(&self, name: &str, value: Option<Vec<u8>>) {
        let mut st = self.state();
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        match value {
            Some(v) => st.meta.insert(name.to_owned(), v),
            None => st.meta.remove(name),
        };
    }

    /// Replaces (or removes) an entry behind the index's back, without updating the
    /// digest, as someone editing the stored index would (tamper tests).
    pub fn tamper_entry(&self, key: &EntryKey, value: Option<Vec<u8>>) {
        let mut st = self.state();
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        match value {
            Some(v) => st.entries.insert(*key, v),
            None => st.entries.remove(key),
        };
    }

    /// The digest of the entries and metadata rows as they are (generation 0).
    fn recompute(&self, st: &State) -> Accumulator {
        let mut acc = Accumulator::empty_with(Layout::INDEX);
        for (k, v) in &st.entries {
            acc.insert(&self.digest, k, v);
        }
        for (name, v) in &st.meta {
            if name != META_DIGEST {
                acc.insert_meta(&self.digest, name, v);
            }
        }
        acc
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch: batches are
        // checked before any op is applied, and ops on BTreeMaps do not panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Entries strictly after `after` (or from the start), in key order, while `keep` holds.
fn range_after(
    map: &BTreeMap<EntryKey, Vec<u8>>,
    from: Bound<EntryKey>,
    keep: impl Fn(&EntryKey) -> bool,
    limit: usize,
) -> Vec<(EntryKey, Vec<u8>)> {
    map.range((from, Bound::Unbounded))
        .take_while(|(k, _)| keep(k))
        .take(limit)
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

#[async_trait]
impl Index for MemIndex {
    async fn get_entry(&self, key: &EntryKey) -> Result<Option<Vec<u8>>> {
        Ok(self.state().entries.get(key).cloned())
    }

    fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn list_dir(
        &self,
        dir: &DirTag,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, Vec<u8>)>> {
        let mut lo = [0u8; 32];
        lo[..16].copy_from_slice(dir);
        let from = match after {
            Some(a) if *a >= lo => Bound::Excluded(*a),
            _ => Bound::Included(lo),
        };
        let st = self.state();
        Ok(range_after(
            &st.entries,
            from,
            |k| k[..16] == dir[..],
            limit,
        ))
    }

    async fn get_inline(&self, id: &ContentId) -> Result<Option<Vec<u8>>> {
        Ok(self.state().inline.get(id).cloned())
    }

    async fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state().meta.get(name).cloned())
    }

    async fn commit(&self, batch: Batch) -> Result<bool> {
        check_reserved(&batch)?;
        let mut st = self.state();
        let holds = batch
            .expect
            .iter()
            .all(|e| st.entries.get(&e.key) == e.value.as_ref())
            && batch.empty_dirs.iter().all(|dir| {
                let mut lo = [0u8; 32];
                lo[..16].copy_from_slice(dir);
                st.entries
                    .range(lo..)
                    .next()
                    .is_none_or(|(k, _)| k[..16] != dir[..])
            });
        if !holds {
            return Ok(false);
        }
        // Under the state lock, so no read sees the new state with the old count.
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // As in the redb index: an unreadable digest is left as it is, for fsck to report.
        let mut digest = st
            .meta
            .get(META_DIGEST)
            .and_then(|v| Accumulator::open(&self.digest, v))
            .filter(|d| d.layout() == Layout::INDEX);
        let mut touched = false;
        for op in batch.ops {
            match op {
                Op::PutEntry(k, v) => {
                    if let Some(d) = digest.as_mut() {
                        if let Some(old) = st.entries.get(&k) {
                            d.remove(&self.digest, &k, old);
                        }
                        d.insert(&self.digest, &k, &v);
                    }
                    st.entries.insert(k, v);
                    touched = true;
                }
                Op::DeleteEntry(k) => {
                    if let Some(old) = st.entries.remove(&k) {
                        if let Some(d) = digest.as_mut() {
                            d.remove(&self.digest, &k, &old);
                        }
                        touched = true;
                    }
                }
                Op::PutInline(k, v) => {
                    st.inline.insert(k, v);
                }
                Op::DeleteInline(k) => {
                    st.inline.remove(&k);
                }
                Op::PutMeta(k, v) => {
                    if let Some(d) = digest.as_mut() {
                        if let Some(old) = st.meta.get(&k) {
                            d.remove_meta(&self.digest, &k, old);
                        }
                        d.insert_meta(&self.digest, &k, &v);
                    }
                    st.meta.insert(k, v);
                    touched = true;
                }
            }
        }
        if touched && let Some(mut d) = digest {
            d.bump();
            st.meta.insert(META_DIGEST.to_owned(), d.seal(&self.digest));
        }
        Ok(true)
    }

    async fn scan_entries(
        &self,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, Vec<u8>)>> {
        let from = match after {
            Some(a) => Bound::Excluded(*a),
            None => Bound::Unbounded,
        };
        let st = self.state();
        Ok(range_after(&st.entries, from, |_| true, limit))
    }

    async fn inline_ids(&self) -> Result<Vec<ContentId>> {
        Ok(self.state().inline.keys().copied().collect())
    }

    async fn visit_entries(
        &self,
        visit: &mut (dyn for<'k, 'v> FnMut(&'k EntryKey, &'v [u8]) -> Result<()> + Send),
    ) -> Result<()> {
        // A copy taken under the lock is the snapshot.
        let entries: Vec<(EntryKey, Vec<u8>)> = self
            .state()
            .entries
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (k, v) in &entries {
            visit(k, v)?;
        }
        Ok(())
    }

    async fn accept_digest(&self) -> Result<DigestCheck> {
        let mut st = self.state.lock().expect("index lock poisoned");
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let generation = st
            .meta
            .get(META_DIGEST)
            .and_then(|v| Accumulator::open(&self.digest, v))
            .map_or(0, |a| a.generation());
        let mut acc = self.recompute(&st);
        acc.set_generation(generation);
        acc.bump();
        let sealed = acc.seal(&self.digest);
        st.meta.insert(META_DIGEST.to_owned(), sealed.clone());
        Ok(DigestCheck::compare(&self.digest, Some(&sealed), &acc))
    }

    async fn check_digest(&self) -> Result<DigestCheck> {
        let st = self.state();
        Ok(DigestCheck::compare(
            &self.digest,
            st.meta.get(META_DIGEST).map(Vec::as_slice),
            &self.recompute(&st),
        ))
    }

    async fn visit_snapshot(
        &self,
        visit: &mut (dyn for<'a> FnMut(SnapshotItem<'a>) -> Result<()> + Send),
    ) -> Result<()> {
        let (meta, entries, inline) = {
            let st = self.state();
            (st.meta.clone(), st.entries.clone(), st.inline.clone())
        };
        for (k, v) in &meta {
            visit(SnapshotItem::Meta(k, v))?;
        }
        for (k, v) in &entries {
            visit(SnapshotItem::Entry(k, v))?;
        }
        for (k, v) in &inline {
            visit(SnapshotItem::Inline(k, v))?;
        }
        Ok(())
    }
}
