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

use crate::error::Result;
use crate::index::{Batch, ContentId, DirTag, EntryKey, Index, Op, SnapshotItem};

#[derive(Default)]
struct State {
    entries: BTreeMap<EntryKey, Vec<u8>>,
    inline: BTreeMap<ContentId, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
}

/// An [`Index`] held in memory (tests, reference model).
#[derive(Default)]
pub struct MemIndex {
    state: Mutex<State>,
}

impl MemIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
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
        for op in batch.ops {
            match op {
                Op::PutEntry(k, v) => {
                    st.entries.insert(k, v);
                }
                Op::DeleteEntry(k) => {
                    st.entries.remove(&k);
                }
                Op::PutInline(k, v) => {
                    st.inline.insert(k, v);
                }
                Op::DeleteInline(k) => {
                    st.inline.remove(&k);
                }
                Op::PutMeta(k, v) => {
                    st.meta.insert(k, v);
                }
            }
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
