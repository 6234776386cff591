//! One suite, every implementation of [`Index`]: the embedded redb index and the in-memory
//! reference model must agree on every observable outcome.

use std::sync::Arc;

use efs_core::digest::{Accumulator, DigestCheck, DigestKey, META_DIGEST};
use efs_core::index::{Batch, ContentId, EntryKey, Expect, Index, Op, SnapshotItem};
use efs_core::mem_index::MemIndex;
use efs_core::redb_index::RedbIndex;
use efs_format::Key32;

/// A digest key every test can build again (a reopened index needs the same one).
fn digest_key() -> DigestKey {
    DigestKey::from_root(&Key32::from_bytes([42; 32]), &[3; 16])
}

/// An entry key: `dir` repeated over the 16-byte dir tag, then the 16-byte name tag.
fn key(dir: u8, name: [u8; 16]) -> EntryKey {
    let mut k = [dir; 32];
    k[16..].copy_from_slice(&name);
    k
}

/// A name tag whose bytes are all `b` except the last, `n` (keeps keys distinct and ordered).
fn name(b: u8, n: u8) -> [u8; 16] {
    let mut t = [b; 16];
    t[15] = n;
    t
}

fn put(k: EntryKey, v: &[u8]) -> Op {
    Op::PutEntry(k, v.to_vec())
}

fn batch(expect: Vec<Expect>, ops: Vec<Op>) -> Batch {
    Batch {
        expect,
        ops,
        ..Default::default()
    }
}

fn absent(k: EntryKey) -> Expect {
    Expect {
        key: k,
        value: None,
    }
}

fn is(k: EntryKey, v: &[u8]) -> Expect {
    Expect {
        key: k,
        value: Some(v.to_vec()),
    }
}

async fn write(ix: &dyn Index, ops: Vec<Op>) {
    assert!(
        ix.commit(batch(vec![], ops)).await.unwrap(),
        "an unconditional batch applies"
    );
}

/// Every page of `dir`, `page` entries at a time.
async fn list_all(ix: &dyn Index, dir: u8, page: usize) -> Vec<EntryKey> {
    let tag = [dir; 16];
    let mut out = Vec::new();
    let mut after: Option<EntryKey> = None;
    loop {
        let rows = ix.list_dir(&tag, after.as_ref(), page).await.unwrap();
        assert!(rows.len() <= page, "a page holds at most `limit` entries");
        let Some((last, _)) = rows.last() else { break };
        after = Some(*last);
        out.extend(rows.iter().map(|(k, _)| *k));
    }
    out
}

async fn scan_all(ix: &dyn Index, page: usize) -> Vec<EntryKey> {
    let mut out = Vec::new();
    let mut after: Option<EntryKey> = None;
    loop {
        let rows = ix.scan_entries(after.as_ref(), page).await.unwrap();
        assert!(rows.len() <= page);
        let Some((last, _)) = rows.last() else { break };
        after = Some(*last);
        out.extend(rows.iter().map(|(k, _)| *k));
    }
    out
}

/// The contract of [`Index`], on an empty index.
async fn suite(ix: &dyn Index) {
    empty(ix).await;
    entries(ix).await;
    listing(ix).await;
    conditional(ix).await;
    inline_and_meta(ix).await;
    scanning(ix).await;
    digest(ix).await;
}

fn holds(c: DigestCheck) -> (u64, u64) {
    match c {
        DigestCheck::Holds {
            generation,
            entries,
            ..
        } => (generation, entries),
        other => panic!("the digest does not hold: {other:?}"),
    }
}

/// The digest follows every batch: each one that changes entries or metadata counts once;
/// refused and inline-only batches change nothing; no batch may write the digest.
async fn digest(ix: &dyn Index) {
    let (g0, n0) = holds(ix.check_digest().await.unwrap());
    let all = ix.scan_entries(None, 100_000).await.unwrap().len() as u64;
    assert_eq!(n0, all, "the digest counts every entry");
    let (a, b) = (key(40, name(1, 1)), key(40, name(1, 2)));
    write(ix, vec![put(a, b"a"), put(b, b"b")]).await;
    assert_eq!(holds(ix.check_digest().await.unwrap()), (g0 + 1, n0 + 2));
    write(ix, vec![put(a, b"a2")]).await;
    assert_eq!(holds(ix.check_digest().await.unwrap()), (g0 + 2, n0 + 2));
    assert!(
        !ix.commit(batch(vec![absent(a)], vec![put(a, b"x")]))
            .await
            .unwrap()
    );
    write(ix, vec![Op::PutInline([40; 16], vec![1])]).await;
    write(ix, vec![Op::DeleteEntry(key(40, name(9, 9)))]).await;
    assert_eq!(
        holds(ix.check_digest().await.unwrap()),
        (g0 + 2, n0 + 2),
        "nothing that leaves the entries and metadata as they were counts"
    );
    // Metadata (the sealed keyring) is covered: a batch that writes it counts, its rows are
    // not entries.
    write(ix, vec![Op::PutMeta("other".into(), vec![1])]).await;
    assert_eq!(holds(ix.check_digest().await.unwrap()), (g0 + 3, n0 + 2));
    write(ix, vec![Op::PutMeta("other".into(), vec![2])]).await;
    assert_eq!(holds(ix.check_digest().await.unwrap()), (g0 + 4, n0 + 2));
    write(ix, vec![Op::DeleteEntry(b), Op::DeleteInline([40; 16])]).await;
    assert_eq!(holds(ix.check_digest().await.unwrap()), (g0 + 5, n0 + 1));
    let stored = ix.get_meta(META_DIGEST).await.unwrap().expect("stored");
    let e = ix
        .commit(batch(vec![], vec![Op::PutMeta(META_DIGEST.into(), stored)]))
        .await
        .expect_err("the digest is the index's own");
    assert!(e.to_string().contains("digest"), "{e}");
    write(ix, vec![Op::DeleteEntry(a)]).await;
    assert_eq!(holds(ix.check_digest().await.unwrap()), (g0 + 6, n0));
}

async fn empty(ix: &dyn Index) {
    let k = key(1, name(1, 1));
    assert_eq!(ix.get_entry(&k).await.unwrap(), None);
    assert!(ix.list_dir(&[1; 16], None, 10).await.unwrap().is_empty());
    assert!(ix.scan_entries(None, 10).await.unwrap().is_empty());
    assert!(ix.inline_ids().await.unwrap().is_empty());
    assert_eq!(ix.get_meta("keyring").await.unwrap(), None);
    assert_eq!(ix.get_inline(&[1; 16]).await.unwrap(), None);
}

async fn entries(ix: &dyn Index) {
    let k = key(2, name(1, 1));
    write(ix, vec![put(k, b"one")]).await;
    assert_eq!(
        ix.get_entry(&k).await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    write(ix, vec![put(k, b"two")]).await;
    assert_eq!(
        ix.get_entry(&k).await.unwrap().as_deref(),
        Some(&b"two"[..]),
        "replaced"
    );
    // An empty value is a present entry, not an absent one.
    write(ix, vec![put(k, b"")]).await;
    assert_eq!(ix.get_entry(&k).await.unwrap(), Some(Vec::new()));
    assert!(!ix.commit(batch(vec![absent(k)], vec![])).await.unwrap());
    assert!(ix.commit(batch(vec![is(k, b"")], vec![])).await.unwrap());
    write(ix, vec![Op::DeleteEntry(k)]).await;
    assert_eq!(ix.get_entry(&k).await.unwrap(), None);
    // Deleting an absent entry is not an error.
    write(ix, vec![Op::DeleteEntry(k)]).await;
    // Ops apply in order.
    write(ix, vec![put(k, b"a"), Op::DeleteEntry(k)]).await;
    assert_eq!(ix.get_entry(&k).await.unwrap(), None);
    write(ix, vec![put(k, b"a"), put(k, b"b")]).await;
    assert_eq!(ix.get_entry(&k).await.unwrap().as_deref(), Some(&b"b"[..]));
    write(ix, vec![Op::DeleteEntry(k)]).await;
}

async fn listing(ix: &dyn Index) {
    // Neighbours at the extremes of the adjacent directories' ranges.
    let before = key(0x10, [0xff; 16]);
    let after_dir = key(0x12, [0x00; 16]);
    let mut mine: Vec<EntryKey> = vec![key(0x11, [0x00; 16]), key(0x11, [0xff; 16])];
    for i in 0..40u8 {
        // Inserted out of order on purpose.
        mine.push(key(0x11, name(i.wrapping_mul(97), i)));
    }
    let mut ops = vec![put(before, b"x"), put(after_dir, b"y")];
    ops.extend(mine.iter().rev().map(|k| put(*k, &k[16..])));
    write(ix, ops).await;
    mine.sort();
    mine.dedup();

    let whole = ix.list_dir(&[0x11; 16], None, 1000).await.unwrap();
    let keys: Vec<EntryKey> = whole.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, mine, "exactly this directory, in key order");
    for (k, v) in &whole {
        assert_eq!(&v[..], &k[16..], "each value with its own key");
    }
    for page in [1, 3, 7, mine.len(), mine.len() + 1] {
        assert_eq!(list_all(ix, 0x11, page).await, mine, "pages of {page}");
    }
    assert_eq!(
        ix.list_dir(&[0x11; 16], None, 0).await.unwrap().len(),
        0,
        "limit 0 gives nothing"
    );
    // `after` need not be an existing key: strictly greater keys follow.
    let mid = key(0x11, [0x80; 16]);
    let rest: Vec<EntryKey> = ix
        .list_dir(&[0x11; 16], Some(&mid), 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let expected: Vec<EntryKey> = mine.iter().copied().filter(|k| *k > mid).collect();
    assert!(!expected.is_empty() && expected.len() < mine.len());
    assert_eq!(rest, expected);
    // After the last key: nothing, never the next directory.
    let last = *mine.last().unwrap();
    assert!(
        ix.list_dir(&[0x11; 16], Some(&last), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(list_all(ix, 0x10, 5).await, vec![before]);
    assert_eq!(list_all(ix, 0x12, 5).await, vec![after_dir]);
    assert!(list_all(ix, 0x13, 5).await.is_empty());

    let mut ops: Vec<Op> = mine.iter().map(|k| Op::DeleteEntry(*k)).collect();
    ops.push(Op::DeleteEntry(before));
    ops.push(Op::DeleteEntry(after_dir));
    write(ix, ops).await;
    assert!(ix.scan_entries(None, 10).await.unwrap().is_empty());
}

async fn conditional(ix: &dyn Index) {
    let a = key(3, name(1, 1));
    let b = key(3, name(2, 2));
    let c = key(3, name(3, 3));
    let id: ContentId = [0x33; 16];

    // Expectation of absence on an absent key.
    assert!(
        ix.commit(batch(vec![absent(a)], vec![put(a, b"a1")]))
            .await
            .unwrap()
    );
    // Expectation of absence on a present key: refused, nothing of the batch written.
    let refused = batch(
        vec![absent(a)],
        vec![
            put(a, b"a2"),
            put(b, b"b1"),
            Op::PutInline(id, b"inline".to_vec()),
            Op::PutMeta("m".into(), b"meta".to_vec()),
        ],
    );
    assert!(!ix.commit(refused).await.unwrap());
    assert_eq!(ix.get_entry(&a).await.unwrap().as_deref(), Some(&b"a1"[..]));
    assert_eq!(ix.get_entry(&b).await.unwrap(), None);
    assert_eq!(ix.get_inline(&id).await.unwrap(), None);
    assert_eq!(ix.get_meta("m").await.unwrap(), None);

    // Expectation of a value: right, then stale.
    assert!(
        ix.commit(batch(vec![is(a, b"a1")], vec![put(a, b"a2")]))
            .await
            .unwrap()
    );
    assert!(
        !ix.commit(batch(vec![is(a, b"a1")], vec![put(a, b"a3")]))
            .await
            .unwrap()
    );
    assert_eq!(ix.get_entry(&a).await.unwrap().as_deref(), Some(&b"a2"[..]));
    // A value expected of an absent key fails.
    assert!(
        !ix.commit(batch(vec![is(c, b"")], vec![put(c, b"c")]))
            .await
            .unwrap()
    );
    assert_eq!(ix.get_entry(&c).await.unwrap(), None);
    // A value that is a prefix of the current one is a mismatch.
    assert!(
        !ix.commit(batch(vec![is(a, b"a")], vec![put(c, b"c")]))
            .await
            .unwrap()
    );
    assert_eq!(ix.get_entry(&c).await.unwrap(), None);

    // Atomic: one failing expectation among holding ones writes none of the ops.
    let mixed = batch(
        vec![is(a, b"a2"), absent(b), is(c, b"nope")],
        vec![put(a, b"a9"), put(b, b"b9"), Op::DeleteEntry(a)],
    );
    assert!(!ix.commit(mixed).await.unwrap());
    assert_eq!(ix.get_entry(&a).await.unwrap().as_deref(), Some(&b"a2"[..]));
    assert_eq!(ix.get_entry(&b).await.unwrap(), None);
    // Whichever expectation fails (first, last), the result is the same.
    let first_fails = batch(vec![absent(a), absent(b)], vec![put(b, b"b9")]);
    assert!(!ix.commit(first_fails).await.unwrap());
    assert_eq!(ix.get_entry(&b).await.unwrap(), None);

    // All expectations hold: every op applies, a move in one batch.
    let moved = batch(
        vec![is(a, b"a2"), absent(b)],
        vec![Op::DeleteEntry(a), put(b, b"a2")],
    );
    assert!(ix.commit(moved).await.unwrap());
    assert_eq!(ix.get_entry(&a).await.unwrap(), None);
    assert_eq!(ix.get_entry(&b).await.unwrap().as_deref(), Some(&b"a2"[..]));
    // Expectations are checked against the state before the batch, not after its ops.
    assert!(
        ix.commit(batch(
            vec![is(b, b"a2")],
            vec![put(b, b"b3"), put(c, b"c3")]
        ))
        .await
        .unwrap()
    );
    assert_eq!(ix.get_entry(&c).await.unwrap().as_deref(), Some(&b"c3"[..]));

    write(ix, vec![Op::DeleteEntry(b), Op::DeleteEntry(c)]).await;
    assert!(ix.scan_entries(None, 10).await.unwrap().is_empty());
    empty_dirs(ix).await;
}

fn require_empty(dirs: &[u8], ops: Vec<Op>) -> Batch {
    Batch {
        empty_dirs: dirs.iter().map(|d| [*d; 16]).collect(),
        ops,
        ..Default::default()
    }
}

/// The condition that deleting a directory needs: no entry at all under its tag.
async fn empty_dirs(ix: &dyn Index) {
    let marker = key(0x70, name(9, 9));
    // Entries at the very ends of directory 0x41's range, and around directory 0x42.
    let first = key(0x41, [0x00; 16]);
    let last = key(0x41, [0xff; 16]);
    write(
        ix,
        vec![
            put(key(0x40, [0xff; 16]), b"x"),
            put(key(0x43, [0; 16]), b"x"),
        ],
    )
    .await;

    // An empty directory between two populated ones.
    assert!(
        ix.commit(require_empty(&[0x42], vec![put(marker, b"1")]))
            .await
            .unwrap()
    );
    assert_eq!(
        ix.get_entry(&marker).await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    for k in [first, last] {
        write(ix, vec![put(k, b"child")]).await;
        let refused = require_empty(&[0x42, 0x41], vec![put(marker, b"2")]);
        assert!(!ix.commit(refused).await.unwrap(), "one child is enough");
        assert_eq!(
            ix.get_entry(&marker).await.unwrap().as_deref(),
            Some(&b"1"[..])
        );
        write(ix, vec![Op::DeleteEntry(k)]).await;
    }
    // Checked before the batch's own ops: a batch may empty or fill the directory itself.
    assert!(
        ix.commit(require_empty(&[0x41], vec![put(first, b"c")]))
            .await
            .unwrap()
    );
    assert!(
        !ix.commit(require_empty(&[0x41], vec![Op::DeleteEntry(first)]))
            .await
            .unwrap()
    );
    assert_eq!(
        ix.get_entry(&first).await.unwrap().as_deref(),
        Some(&b"c"[..])
    );
    // Both kinds of condition together: each must hold.
    let both = Batch {
        expect: vec![is(marker, b"1")],
        empty_dirs: vec![[0x41; 16]],
        ops: vec![put(marker, b"3")],
    };
    assert!(!ix.commit(both).await.unwrap());
    write(ix, vec![Op::DeleteEntry(first)]).await;
    let both = Batch {
        expect: vec![is(marker, b"1")],
        empty_dirs: vec![[0x41; 16]],
        ops: vec![put(marker, b"3")],
    };
    assert!(ix.commit(both).await.unwrap());

    write(
        ix,
        vec![
            Op::DeleteEntry(marker),
            Op::DeleteEntry(key(0x40, [0xff; 16])),
            Op::DeleteEntry(key(0x43, [0; 16])),
        ],
    )
    .await;
    assert!(ix.scan_entries(None, 10).await.unwrap().is_empty());
}

async fn inline_and_meta(ix: &dyn Index) {
    let i1: ContentId = [0x01; 16];
    let i2: ContentId = [0xfe; 16];
    let big = vec![0x5a; 300_000];
    write(
        ix,
        vec![
            Op::PutInline(i2, b"second".to_vec()),
            Op::PutInline(i1, big.clone()),
        ],
    )
    .await;
    assert_eq!(ix.get_inline(&i1).await.unwrap(), Some(big));
    assert_eq!(
        ix.get_inline(&i2).await.unwrap().as_deref(),
        Some(&b"second"[..])
    );
    let mut ids = ix.inline_ids().await.unwrap();
    ids.sort();
    assert_eq!(ids, vec![i1, i2]);
    // Inline content and entries are separate spaces.
    assert!(ix.scan_entries(None, 10).await.unwrap().is_empty());

    write(
        ix,
        vec![Op::DeleteInline(i1), Op::PutInline(i2, Vec::new())],
    )
    .await;
    assert_eq!(ix.get_inline(&i1).await.unwrap(), None);
    assert_eq!(ix.get_inline(&i2).await.unwrap(), Some(Vec::new()));
    assert_eq!(ix.inline_ids().await.unwrap(), vec![i2]);
    write(ix, vec![Op::DeleteInline(i2), Op::DeleteInline(i1)]).await;
    assert!(ix.inline_ids().await.unwrap().is_empty());

    write(ix, vec![Op::PutMeta("keyring".into(), b"v1".to_vec())]).await;
    assert_eq!(
        ix.get_meta("keyring").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    write(ix, vec![Op::PutMeta("keyring".into(), b"v2".to_vec())]).await;
    assert_eq!(
        ix.get_meta("keyring").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(ix.get_meta("keyring2").await.unwrap(), None);
    assert_eq!(ix.get_meta("keyrin").await.unwrap(), None);
}

async fn scanning(ix: &dyn Index) {
    let mut all = Vec::new();
    for d in [0u8, 7, 0xff] {
        for n in 0..50u8 {
            all.push(key(d, name(n.wrapping_mul(31), n)));
        }
    }
    all.push([0u8; 32]);
    all.push([0xff; 32]);
    write(ix, all.iter().map(|k| put(*k, b"v")).collect()).await;
    all.sort();
    all.dedup();
    for page in [1, 7, 64, all.len(), 1000] {
        assert_eq!(scan_all(ix, page).await, all, "pages of {page}");
    }
    // The snapshot visit sees the same entries, in key order, with their values.
    let mut visited = Vec::new();
    ix.visit_entries(&mut |k, v| {
        assert_eq!(v, b"v");
        visited.push(*k);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(visited, all, "visit_entries");
    // The whole snapshot: meta first, then the same entries, then every inline content.
    write(ix, vec![Op::PutInline([9u8; 16], b"inline".to_vec())]).await;
    let (mut order, mut entries, mut inline, mut metas) = (Vec::new(), Vec::new(), Vec::new(), 0);
    ix.visit_snapshot(&mut |item| {
        match item {
            SnapshotItem::Meta(name, _) => {
                assert!(!name.is_empty());
                metas += 1;
                order.push(0);
            }
            SnapshotItem::Entry(k, v) => {
                assert_eq!(v, b"v");
                entries.push(*k);
                order.push(1);
            }
            SnapshotItem::Inline(id, v) => {
                assert_eq!(v, b"inline");
                inline.push(*id);
                order.push(2);
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    assert!(order.is_sorted(), "meta, then entries, then inline");
    assert_eq!(entries, all, "visit_snapshot entries");
    let mut ids = ix.inline_ids().await.unwrap();
    ids.sort();
    inline.sort();
    assert_eq!(inline, ids, "visit_snapshot inline contents");
    assert_eq!(inline, vec![[9u8; 16]]);
    assert!(metas >= 1, "the meta written by earlier steps");
    write(ix, vec![Op::DeleteInline([9u8; 16])]).await;
    assert!(
        ix.scan_entries(None, 0).await.unwrap().is_empty(),
        "limit 0 gives nothing"
    );
    assert!(
        ix.scan_entries(Some(&[0xff; 32]), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let mid = key(7, [0x00; 16]);
    let tail: Vec<EntryKey> = ix
        .scan_entries(Some(&mid), 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        tail,
        all.iter().copied().filter(|k| *k > mid).collect::<Vec<_>>()
    );
    write(ix, all.iter().map(|k| Op::DeleteEntry(*k)).collect()).await;
    assert!(ix.scan_entries(None, 10).await.unwrap().is_empty());
}

/// Many tasks increment one counter by compare-and-swap, retrying on `Ok(false)`, while
/// others create keys of their own: every increment counts and every key exists.
async fn concurrent(ix: Arc<dyn Index>) {
    const TASKS: u64 = 200;
    let counter = key(9, [0; 16]);
    let mut set = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let ix = ix.clone();
        set.spawn(async move {
            let mut n = [0u8; 16];
            n[14..].copy_from_slice(&(t as u16).to_be_bytes());
            let own = key(10, n);
            assert!(
                ix.commit(batch(vec![absent(own)], vec![put(own, &t.to_be_bytes())]))
                    .await
                    .unwrap()
            );
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                let cur = ix.get_entry(&counter).await.unwrap();
                let n = cur
                    .as_ref()
                    .map(|v| u64::from_be_bytes(v[..].try_into().unwrap()))
                    .unwrap_or(0);
                let b = batch(
                    vec![Expect {
                        key: counter,
                        value: cur,
                    }],
                    vec![put(counter, &(n + 1).to_be_bytes())],
                );
                if ix.commit(b).await.unwrap() {
                    return attempts;
                }
                tokio::task::yield_now().await;
            }
        });
    }
    let mut total_attempts = 0;
    while let Some(r) = set.join_next().await {
        total_attempts += r.expect("a task panicked");
    }
    let v = ix.get_entry(&counter).await.unwrap().unwrap();
    assert_eq!(u64::from_be_bytes(v[..].try_into().unwrap()), TASKS);
    assert!(total_attempts >= TASKS as u32);
    let own: Vec<_> = ix.list_dir(&[10; 16], None, 1000).await.unwrap();
    assert_eq!(own.len() as u64, TASKS, "every task's own key was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_index_conforms() {
    let ix = MemIndex::with_digest_key(digest_key());
    suite(&ix).await;
    concurrent(Arc::new(MemIndex::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_index_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let ix = RedbIndex::open(&dir.path().join("a.redb"), digest_key()).unwrap();
    suite(&ix).await;
    concurrent(Arc::new(
        RedbIndex::open(&dir.path().join("b.redb"), digest_key()).unwrap(),
    ))
    .await;
}

/// What a commit acknowledged is there after the index is closed and opened again, and
/// the file can be opened again as soon as the index is dropped (a filesystem is reopened
/// right after `create-fs`, and a data dir right after it is closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_index_reopens_at_once_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    for i in 0..30u8 {
        let ix = RedbIndex::open(&path, digest_key()).unwrap_or_else(|e| panic!("reopen {i}: {e}"));
        if i > 0 {
            let prev = key(1, name(0, i - 1));
            assert_eq!(ix.get_entry(&prev).await.unwrap(), Some(vec![i - 1]));
        }
        write(&ix, vec![put(key(1, name(0, i)), &[i])]).await;
        drop(ix);
    }
    let ix = RedbIndex::open(&path, digest_key()).unwrap();
    assert_eq!(list_all(&ix, 1, 8).await.len(), 30);
}

/// A second open of the same file is refused with a message that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_index_refuses_a_second_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let _ix = RedbIndex::open(&path, digest_key()).unwrap();
    let e = RedbIndex::open(&path, digest_key())
        .err()
        .expect("a second open is refused");
    assert!(e.to_string().contains("open in another process"), "{e}");
}

/// An index that cannot be opened is named in the error ("I/O error: Permission denied"
/// alone, at a start, left the operator to guess which file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_does_not_open_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("index.redb");
    let e = RedbIndex::open(&path, digest_key())
        .err()
        .expect("no directory to create it in");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

/// The digest after the concurrent suite still holds (group commits fold many batches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_holds_after_concurrent_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let ix = Arc::new(RedbIndex::open(&dir.path().join("c.redb"), digest_key()).unwrap());
    concurrent(ix.clone()).await;
    let (g, n) = holds(ix.check_digest().await.unwrap());
    assert_eq!(
        n,
        ix.scan_entries(None, 100_000).await.unwrap().len() as u64
    );
    assert!(g > 0);
    let mem = Arc::new(MemIndex::with_digest_key(digest_key()));
    concurrent(mem.clone()).await;
    holds(mem.check_digest().await.unwrap());
}

/// Values changed behind the index's back: an old value put back, two values swapped, an
/// entry removed or added, the digest removed: the check sees each, on the model.
#[tokio::test]
async fn mem_index_digest_sees_changes_behind_its_back() {
    let ix = MemIndex::with_digest_key(digest_key());
    let (a, b) = (key(1, name(1, 1)), key(1, name(1, 2)));
    write(&ix, vec![put(a, b"a-old"), put(b, b"b")]).await;
    write(&ix, vec![put(a, b"a-new")]).await;
    holds(ix.check_digest().await.unwrap());
    type Changes<'a> = Vec<(EntryKey, Option<&'a [u8]>)>;
    let cases: Vec<(&str, Changes)> = vec![
        ("an old value put back", vec![(a, Some(b"a-old"))]),
        (
            "two values swapped",
            vec![(a, Some(b"b")), (b, Some(b"a-new"))],
        ),
        ("an entry removed", vec![(b, None)]),
        ("an entry added", vec![(key(1, name(1, 3)), Some(b"c"))]),
    ];
    for (what, changes) in cases {
        let before: Vec<_> = changes.iter().map(|(k, _)| *k).collect();
        let mut saved = Vec::new();
        for k in &before {
            saved.push((*k, ix.get_entry(k).await.unwrap()));
        }
        for (k, v) in &changes {
            ix.tamper_entry(k, v.map(<[u8]>::to_vec));
        }
        let c = ix.check_digest().await.unwrap();
        assert!(matches!(c, DigestCheck::Differs { .. }), "{what}: {c:?}");
        for (k, v) in saved {
            ix.tamper_entry(&k, v);
        }
        holds(ix.check_digest().await.unwrap());
    }
    ix.tamper_meta(META_DIGEST, None);
    assert_eq!(ix.check_digest().await.unwrap(), DigestCheck::Unreadable);
}

/// Regression: the metadata rows (the sealed keyring above all) were outside the digest, so
/// an older keyring put back after a key rotation went unseen. Every metadata row is covered
/// now: one changed, put back, removed or added behind the index's back is seen, on the
/// model, and a later write does not hide it.
#[tokio::test]
async fn mem_index_digest_sees_metadata_changed_behind_its_back() {
    let ix = MemIndex::with_digest_key(digest_key());
    write(&ix, vec![Op::PutMeta("keyring".into(), b"term 1".to_vec())]).await;
    write(&ix, vec![put(key(1, name(1, 1)), b"a")]).await;
    write(
        &ix,
        vec![Op::PutMeta("keyring".into(), b"terms 1, 2".to_vec())],
    )
    .await;
    holds(ix.check_digest().await.unwrap());
    type Change<'a> = (&'a str, &'a str, Option<&'a [u8]>);
    let cases: Vec<Change> = vec![
        ("an older keyring put back", "keyring", Some(b"term 1")),
        ("the keyring removed", "keyring", None),
        ("a row added", "rotation", Some(b"x")),
    ];
    for (what, name, value) in cases {
        let saved = ix.get_meta(name).await.unwrap();
        ix.tamper_meta(name, value.map(<[u8]>::to_vec));
        let c = ix.check_digest().await.unwrap();
        assert!(matches!(c, DigestCheck::Differs { .. }), "{what}: {c:?}");
        ix.tamper_meta(name, saved);
        holds(ix.check_digest().await.unwrap());
    }
    ix.tamper_meta("keyring", Some(b"term 1".to_vec()));
    write(&ix, vec![Op::PutMeta("seal-counts".into(), vec![1])]).await;
    write(&ix, vec![put(key(1, name(1, 2)), b"b")]).await;
    assert!(!ix.check_digest().await.unwrap().holds());
    // The operator's accept path takes the index as it is.
    holds(ix.accept_digest().await.unwrap());
    holds(ix.check_digest().await.unwrap());
}

/// The same on disk: an old value put back into the redb file by someone else (the index
/// closed) is seen at the next check, and a later write does not hide it. An index without
/// a digest (an older version's) gets one at open, at generation 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_index_digest_sees_an_old_value_put_back_in_the_file() {
    const ENTRIES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("entries");
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let (a, b) = (key(1, name(1, 1)), key(1, name(1, 2)));
    {
        let ix = RedbIndex::open(&path, digest_key()).unwrap();
        write(&ix, vec![put(a, b"a-old"), put(b, b"b")]).await;
        write(&ix, vec![put(a, b"a-new")]).await;
        assert_eq!(holds(ix.check_digest().await.unwrap()), (2, 2));
    }
    let edit = |f: &dyn Fn(&redb::WriteTransaction)| {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        f(&w);
        w.commit().unwrap();
    };
    edit(&|w| {
        w.open_table(ENTRIES)
            .unwrap()
            .insert(a.as_slice(), b"a-old".as_slice())
            .unwrap();
    });
    {
        let ix = RedbIndex::open(&path, digest_key()).unwrap();
        let c = ix.check_digest().await.unwrap();
        assert_eq!(
            c,
            DigestCheck::Differs {
                generation: 2,
                claimed_entries: 2,
                entries: 2
            }
        );
        // A write on top of the rolled-back entry keeps the difference.
        write(&ix, vec![put(b, b"b2")]).await;
        assert!(!ix.check_digest().await.unwrap().holds());
        // Another key does not match either.
        drop(ix);
        let other = DigestKey::from_root(&Key32::from_bytes([43; 32]), &[3; 16]);
        let ix = RedbIndex::open(&path, other).unwrap();
        assert!(!ix.check_digest().await.unwrap().holds());
    }
    // An index from before digests: one is computed at open, from the entries as they are.
    edit(&|w| {
        w.open_table(META).unwrap().remove(META_DIGEST).unwrap();
    });
    let ix = RedbIndex::open(&path, digest_key()).unwrap();
    assert_eq!(holds(ix.check_digest().await.unwrap()), (0, 2));
}

/// Regression: the sealed keyring (a metadata row) was outside the digest, so an older one
/// put back into the file after a key rotation opened without a word. It is covered now, on
/// disk too; and a digest of layout 1 (entries only, as an older version wrote it) is
/// upgraded once at open, taking in the metadata as it is then: it holds, its generation
/// moves on by one, an entry that differed before still differs, and from then on the
/// metadata is covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_index_digest_covers_metadata_and_upgrades_a_layout_1_digest() {
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let a = key(1, name(1, 1));
    let keyring = |v: &[u8]| Op::PutMeta("keyring".into(), v.to_vec());
    {
        let ix = RedbIndex::open(&path, digest_key()).unwrap();
        write(&ix, vec![put(a, b"a"), keyring(b"term 1")]).await;
        write(&ix, vec![keyring(b"terms 1, 2")]).await;
        assert_eq!(holds(ix.check_digest().await.unwrap()), (2, 1));
    }
    let put_meta = |name: &str, v: &[u8]| {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(META).unwrap().insert(name, v).unwrap();
        w.commit().unwrap();
    };
    put_meta("keyring", b"term 1");
    {
        let ix = RedbIndex::open(&path, digest_key()).unwrap();
        assert_eq!(
            ix.check_digest().await.unwrap(),
            DigestCheck::Differs {
                generation: 2,
                claimed_entries: 1,
                entries: 1
            }
        );
        // A write on top keeps the difference; the operator's accept takes the index as is.
        write(&ix, vec![put(a, b"a2")]).await;
        assert!(!ix.check_digest().await.unwrap().holds());
        assert_eq!(holds(ix.accept_digest().await.unwrap()), (4, 1));
    }
    // A layout-1 digest over the entries as they are: upgraded at open, it holds.
    let layout_1 = |entries: &[(EntryKey, &[u8])], generation: u64| {
        let k = digest_key();
        let mut acc = Accumulator::empty();
        for (e, v) in entries {
            acc.insert(&k, e, v);
        }
        acc.set_generation(generation);
        acc.seal(&k)
    };
    put_meta(META_DIGEST, &layout_1(&[(a, b"a2")], 7));
    {
        let ix = RedbIndex::open(&path, digest_key()).unwrap();
        assert_eq!(holds(ix.check_digest().await.unwrap()), (8, 1));
        write(&ix, vec![keyring(b"terms 1, 2, 3")]).await;
        assert_eq!(holds(ix.check_digest().await.unwrap()), (9, 1));
    }
    // Once, not at every open.
    {
        let ix = RedbIndex::open(&path, digest_key()).unwrap();
        assert_eq!(holds(ix.check_digest().await.unwrap()), (9, 1));
    }
    // And the upgraded digest covers the keyring.
    put_meta("keyring", b"term 1");
    {
        let ix = RedbIndex::open(&path, digest_key()).unwrap();
        assert!(!ix.check_digest().await.unwrap().holds());
        holds(ix.accept_digest().await.unwrap());
    }
    // A layout-1 digest of other entries still differs after the upgrade.
    put_meta(META_DIGEST, &layout_1(&[(a, b"a-old")], 3));
    {
        let ix = RedbIndex::open(&path, digest_key()).unwrap();
        assert!(matches!(
            ix.check_digest().await.unwrap(),
            DigestCheck::Differs { generation: 4, .. }
        ));
        holds(ix.accept_digest().await.unwrap());
    }
    // A layout-2 digest relabelled layout 1 unmasks to noise: no upgrade makes it hold.
    let ix = RedbIndex::open(&path, digest_key()).unwrap();
    let mut stored = ix.get_meta(META_DIGEST).await.unwrap().unwrap();
    drop(ix);
    assert_eq!(stored[0], 2);
    stored[0] = 1;
    put_meta(META_DIGEST, &stored);
    let ix = RedbIndex::open(&path, digest_key()).unwrap();
    assert!(!ix.check_digest().await.unwrap().holds());
}

/// The check hashes the key space in parts, in parallel: entries spread over every first
/// byte are each counted once, and a change in any part is seen, at either end of the
/// key space and in between, as is a key of another length (empty, or past the last entry
/// key) that no part's bounds would be expected to hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_index_digest_check_covers_the_whole_key_space() {
    const ENTRIES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("entries");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    // 72 entries for each first byte, 0x00 to 0xff: 18,432, enough for the check to hash
    // on two threads (one per 8,192 entries).
    let keys: Vec<EntryKey> = (0..=255u8)
        .flat_map(|d| (0..72u8).map(move |n| key(d, name(d, n))))
        .collect();
    {
        let ix = RedbIndex::open(&path, digest_key()).unwrap();
        for chunk in keys.chunks(512) {
            write(&ix, chunk.iter().map(|k| put(*k, &k[..2])).collect()).await;
        }
        let (_, n) = holds(ix.check_digest().await.unwrap());
        assert_eq!(n, keys.len() as u64);
    }
    type Entries<'a> = redb::Table<'a, &'static [u8], &'static [u8]>;
    let edit = |f: &dyn Fn(&mut Entries)| {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        f(&mut w.open_table(ENTRIES).unwrap());
        w.commit().unwrap();
    };
    let check = || async {
        let ix = RedbIndex::open(&path, digest_key()).unwrap();
        ix.check_digest().await.unwrap()
    };
    for first in [0x00u8, 0x01, 0x3f, 0x40, 0x7f, 0x80, 0xbf, 0xc0, 0xfe, 0xff] {
        let k = key(first, name(first, 1));
        edit(&|t| {
            t.insert(k.as_slice(), b"changed".as_slice()).unwrap();
        });
        let c = check().await;
        assert!(
            matches!(c, DigestCheck::Differs { .. }),
            "a changed entry under first byte {first:#04x}: {c:?}"
        );
        edit(&|t| {
            t.insert(k.as_slice(), &k[..2]).unwrap();
        });
        holds(check().await);
    }
    let long = [0xffu8; 40];
    for odd in [&[][..], &[0x00][..], &[0x80; 31][..], &long[..]] {
        edit(&|t| {
            t.insert(odd, b"x".as_slice()).unwrap();
        });
        let c = check().await;
        assert!(
            matches!(c, DigestCheck::Differs { .. }),
            "a key of {} bytes: {c:?}",
            odd.len()
        );
        edit(&|t| {
            t.remove(odd).unwrap();
        });
        holds(check().await);
    }
}
