//! A filesystem on a real data dir: round trips at every edge size, the tree operations,
//! copy-on-write and readers, concurrency, and fsck/gc against damage made on disk.

mod common;

use std::collections::HashSet;

use common::{Env, INLINE_MAX, p, pattern, put, put_with, read_all, read_range, read_reader};
use efs_core::{CoreError, Kind, Precondition};

const SEG: usize = 65536;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_at_edge_sizes_inline_and_blob() {
    let env = Env::new();
    let fs = &env.fs;
    let sizes = [
        0,
        1,
        INLINE_MAX - 1,
        INLINE_MAX,
        INLINE_MAX + 1,
        SEG - 1,
        SEG,
        SEG + 1,
        3 * SEG + 7,
        // Past one and two of the direct blob writer's 8 MiB buffers, sealed straight into
        // them (`put_with` writes 10,007 bytes at a time).
        (8 << 20) + 1,
        2 * (8 << 20) + 3 * SEG + 7,
    ];
    let mut blobs_expected = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let path = format!("/sizes/f{n}");
        let data = pattern(i as u64 + 1, n);
        let ct = format!("application/x-test-{n}");
        let before = env.blob_files();
        let e = put_with(fs, &path, &data, Some(&ct), Precondition::None)
            .await
            .unwrap();
        assert_eq!(e.size, n as u64);
        assert_eq!(e.kind, Kind::File);
        assert_eq!(e.name, format!("f{n}"));

        // Small files live in the index, larger ones in a blob.
        let after = env.blob_files();
        if n > INLINE_MAX {
            blobs_expected += 1;
            let new: Vec<_> = after.iter().filter(|f| !before.contains(f)).collect();
            assert_eq!(new.len(), 1, "{n} bytes are a blob");
            // The ETag a client sees does not name the blob on disk.
            let file_name = new[0].file_name().unwrap().to_str().unwrap();
            assert_ne!(file_name, hex::encode(e.version));
        }
        assert_eq!(after.len(), blobs_expected, "{n} bytes");

        let st = fs.stat(&p(&path)).await.unwrap();
        assert_eq!(st.size, n as u64);
        assert_eq!(
            st.content_type.as_deref(),
            Some(ct.as_str()),
            "Content-Type kept"
        );
        assert_eq!(st.version, e.version);
        assert_eq!(st.etag(), format!("\"{}\"", hex::encode(e.version)));

        let r = fs.open(&p(&path)).await.unwrap();
        assert_eq!(r.len(), n as u64);
        assert_eq!(r.is_empty(), n == 0);
        assert_eq!(r.segment_count(), (n as u64).div_ceil(SEG as u64).max(1));
        assert_eq!(r.entry().content_type.as_deref(), Some(ct.as_str()));
        let back = read_reader(&r).await.unwrap();
        assert!(back == data, "{n} bytes read back whole");

        // Byte ranges, through the segments that cover them.
        let n64 = n as u64;
        let ranges = [
            (0, 1),
            (0, n64),
            (n64.saturating_sub(1), n64),
            (1, n64 / 2 + 1),
            (SEG as u64 - 3, SEG as u64 + 3),
            (SEG as u64, 2 * SEG as u64 + 1),
            (n64 / 3, 2 * n64 / 3 + 1),
            (n64, n64 + 10),
        ];
        for (a, b) in ranges {
            let got = read_range(&r, a, b).await.unwrap();
            let (a2, b2) = (a.min(n64) as usize, b.min(n64) as usize);
            let want = if a2 < b2 { &data[a2..b2] } else { &[][..] };
            assert!(got == want, "{n} bytes, range {a}..{b}");
        }
        assert!(r.segments_for(5, 5).is_empty());
    }
    assert_eq!(env.tmp_files(), 0, "no temporary file left behind");
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.files_verified, sizes.len() as u64);
    assert_eq!(rep.records, sizes.len() as u64 + 1, "the files and /sizes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_replaces_whole_and_removes_the_old_blob() {
    let env = Env::new();
    let fs = &env.fs;
    let v1 = pattern(1, 3 * SEG + 7);
    let e1 = put_with(fs, "/o/file", &v1, Some("text/a"), Precondition::None)
        .await
        .unwrap();
    let b1 = env.blob_files().pop().expect("a blob");

    // Shorter content: nothing of the longer one survives.
    let v2 = pattern(2, SEG + 1);
    let e2 = put_with(fs, "/o/file", &v2, Some("text/b"), Precondition::None)
        .await
        .unwrap();
    assert_ne!(e2.version, e1.version, "every write is a new version");
    assert_eq!(e2.created_ms, e1.created_ms, "creation time kept");
    assert!(!b1.exists(), "the old blob is removed after the commit");
    assert_eq!(env.blob_files().len(), 1, "only the new version's blob");
    assert!(read_all(fs, "/o/file").await.unwrap() == v2);
    let st = fs.stat(&p("/o/file")).await.unwrap();
    assert_eq!(st.content_type.as_deref(), Some("text/b"));
    assert_eq!(st.size, v2.len() as u64);

    // Blob → inline → inline → blob.
    let e3 = put(fs, "/o/file", b"small").await;
    assert!(
        env.blob_files().is_empty(),
        "no blob left once the file is inline"
    );
    assert_eq!(read_all(fs, "/o/file").await.unwrap(), b"small");
    assert_eq!(e3.content_type, None);
    put(fs, "/o/file", b"").await;
    assert_eq!(read_all(fs, "/o/file").await.unwrap(), b"");
    let v5 = pattern(5, 5000);
    let (_, b5) = env.put_blob("/o/file", &v5).await;
    assert_eq!(env.blob_files(), vec![b5.unwrap()]);
    assert!(read_all(fs, "/o/file").await.unwrap() == v5);

    let rep = fs.fsck().await.unwrap();
    assert!(
        rep.is_clean(),
        "old inline contents are removed too: {rep:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconditions() {
    let env = Env::new();
    let fs = &env.fs;
    let big = pattern(9, 4000);

    // If-None-Match: * creates, then refuses.
    let e1 = put_with(fs, "/c/f", b"first", None, Precondition::IfNoneMatch)
        .await
        .unwrap();
    let r = put_with(fs, "/c/f", &big, None, Precondition::IfNoneMatch).await;
    assert!(matches!(r, Err(CoreError::Precondition)), "{r:?}");
    assert_eq!(read_all(fs, "/c/f").await.unwrap(), b"first");

    // If-Match with the right version, then with the now stale one.
    let e2 = put_with(
        fs,
        "/c/f",
        b"second",
        None,
        Precondition::IfMatch(vec![e1.version]),
    )
    .await
    .unwrap();
    let r = put_with(
        fs,
        "/c/f",
        &big,
        None,
        Precondition::IfMatch(vec![e1.version]),
    )
    .await;
    assert!(matches!(r, Err(CoreError::Precondition)), "{r:?}");
    assert_eq!(read_all(fs, "/c/f").await.unwrap(), b"second");
    // Any of several tags.
    let e3 = put_with(
        fs,
        "/c/f",
        b"third",
        None,
        Precondition::IfMatch(vec![[7; 16], e2.version]),
    )
    .await
    .unwrap();
    assert_ne!(e3.version, e2.version);

    // If-Match: * needs a current version.
    let r = put_with(fs, "/c/missing", b"x", None, Precondition::IfExists).await;
    assert!(matches!(r, Err(CoreError::Precondition)), "{r:?}");
    let r = put_with(
        fs,
        "/c/missing",
        &big,
        None,
        Precondition::IfMatch(vec![e3.version]),
    )
    .await;
    assert!(matches!(r, Err(CoreError::Precondition)), "{r:?}");
    assert!(matches!(
        fs.stat(&p("/c/missing")).await,
        Err(CoreError::NotFound)
    ));
    put_with(fs, "/c/f", b"fourth", None, Precondition::IfExists)
        .await
        .unwrap();
    assert_eq!(read_all(fs, "/c/f").await.unwrap(), b"fourth");

    // Delete with a stale version is refused too.
    let r = fs
        .delete(&p("/c/f"), Precondition::IfMatch(vec![e3.version]), false)
        .await;
    assert!(matches!(r, Err(CoreError::Precondition)), "{r:?}");
    assert_eq!(read_all(fs, "/c/f").await.unwrap(), b"fourth");

    // Refused writes of blob size left no blob and no temporary file behind.
    assert!(env.blob_files().is_empty());
    assert_eq!(env.tmp_files(), 0);
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_are_created_and_a_file_is_no_parent() {
    let env = Env::new();
    let fs = &env.fs;
    put(fs, "/a/b/c/file.txt", b"deep").await;
    for d in ["/a", "/a/b", "/a/b/c"] {
        let e = fs.stat(&p(d)).await.unwrap();
        assert_eq!(e.kind, Kind::Dir, "{d}");
    }
    let (names, _) = fs.list(&p("/a/b/c"), None, 10).await.unwrap();
    assert_eq!(
        names.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["file.txt"]
    );

    for bad in ["/a/b/c/file.txt/x", "/a/b/c/file.txt/x/y"] {
        let r = put_with(fs, bad, b"x", None, Precondition::None).await;
        assert!(matches!(r, Err(CoreError::Conflict(_))), "{bad}: {r:?}");
        assert!(matches!(
            fs.mkdir(&p(bad)).await,
            Err(CoreError::Conflict(_))
        ));
    }
    // A file where a directory is, and the reverse.
    let r = put_with(fs, "/a/b", b"x", None, Precondition::None).await;
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");
    assert!(matches!(
        fs.mkdir(&p("/a/b/c/file.txt")).await,
        Err(CoreError::Conflict(_))
    ));
    assert!(matches!(
        fs.list(&p("/a/b/c/file.txt"), None, 10).await,
        Err(CoreError::Conflict(_))
    ));
    assert!(matches!(
        fs.open(&p("/a/b")).await,
        Err(CoreError::Conflict(_))
    ));
    assert_eq!(read_all(fs, "/a/b/c/file.txt").await.unwrap(), b"deep");

    // mkdir creates parents and is idempotent on a directory.
    let m = fs.mkdir(&p("/m/n/o")).await.unwrap();
    assert_eq!(m.kind, Kind::Dir);
    assert_eq!(fs.stat(&p("/m/n")).await.unwrap().kind, Kind::Dir);
    assert_eq!(fs.mkdir(&p("/m/n/o")).await.unwrap().version, m.version);
    let (empty, cursor) = fs.list(&p("/m/n/o"), None, 10).await.unwrap();
    assert!(empty.is_empty() && cursor.is_none());

    let root = fs.stat(&efs_core::EfsPath::root()).await.unwrap();
    assert_eq!(root.kind, Kind::Dir);
    let (top, _) = fs.list(&efs_core::EfsPath::root(), None, 10).await.unwrap();
    let mut top: Vec<_> = top.into_iter().map(|e| e.name).collect();
    top.sort();
    assert_eq!(top, ["a", "m"]);

    assert!(matches!(
        fs.stat(&p("/nope")).await,
        Err(CoreError::NotFound)
    ));
    assert!(matches!(
        fs.stat(&p("/a/nope/x")).await,
        Err(CoreError::NotFound)
    ));
    assert!(matches!(
        fs.open(&p("/a/b/nope")).await,
        Err(CoreError::NotFound)
    ));
    assert!(matches!(
        fs.list(&p("/nope"), None, 10).await,
        Err(CoreError::NotFound)
    ));
    assert!(fs.fsck().await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_see_every_entry_once() {
    let env = Env::new();
    let fs = env.fs.clone();
    fs.mkdir(&p("/many")).await.unwrap();
    // Written concurrently (16 at a time): siblings do not conflict.
    let mut set = tokio::task::JoinSet::new();
    for w in 0..16usize {
        let fs = fs.clone();
        set.spawn(async move {
            for i in (w..250).step_by(16) {
                let size = if i.is_multiple_of(50) {
                    INLINE_MAX + i
                } else {
                    i % 7
                };
                put(&fs, &format!("/many/n{i:03}"), &pattern(i as u64, size)).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    // A file elsewhere must not show up.
    put(&fs, "/other/n000", b"x").await;

    for limit in [7usize, 100, 250] {
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let (page, next) = fs.list(&p("/many"), cursor.as_ref(), limit).await.unwrap();
            assert!(page.len() <= limit);
            pages += 1;
            seen.extend(page.into_iter().map(|e| (e.name, e.size)));
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(pages, 250usize.div_ceil(limit), "limit {limit}");
        assert_eq!(seen.len(), 250, "limit {limit}");
        let names: HashSet<_> = seen.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names.len(), 250, "each name exactly once (limit {limit})");
        for i in 0..250 {
            assert!(names.contains(&format!("n{i:03}")));
        }
        for (n, size) in &seen {
            let i: usize = n[1..].parse().unwrap();
            let want = if i.is_multiple_of(50) {
                INLINE_MAX + i
            } else {
                i % 7
            };
            assert_eq!(*size, want as u64, "{n}");
        }
    }
    let (all, next) = fs.list(&p("/many"), None, 1000).await.unwrap();
    assert_eq!((all.len(), next), (250, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_file_and_directory() {
    let env = Env::new();
    let fs = &env.fs;
    let data = pattern(3, 70_000);
    let e = put_with(
        fs,
        "/r/a.bin",
        &data,
        Some("application/pdf"),
        Precondition::None,
    )
    .await
    .unwrap();
    let moved = fs
        .rename(&p("/r/a.bin"), &p("/r/new/b.bin"), false)
        .await
        .unwrap();
    assert_eq!(moved.name, "b.bin");
    assert_eq!(moved.version, e.version, "the content is not rewritten");
    assert!(matches!(
        fs.stat(&p("/r/a.bin")).await,
        Err(CoreError::NotFound)
    ));
    assert!(read_all(fs, "/r/new/b.bin").await.unwrap() == data);
    let st = fs.stat(&p("/r/new/b.bin")).await.unwrap();
    assert_eq!(st.content_type.as_deref(), Some("application/pdf"));

    // A directory with children moves as one entry.
    put(fs, "/d1/x/y.txt", b"child y").await;
    let z = pattern(4, 100_000);
    put(fs, "/d1/z.bin", &z).await;
    let d1 = fs.stat(&p("/d1")).await.unwrap();
    let d2 = fs.rename(&p("/d1"), &p("/d2/inner"), false).await.unwrap();
    assert_eq!(d2.kind, Kind::Dir);
    assert_eq!(d2.version, d1.version);
    assert_eq!(read_all(fs, "/d2/inner/x/y.txt").await.unwrap(), b"child y");
    assert!(read_all(fs, "/d2/inner/z.bin").await.unwrap() == z);
    for gone in ["/d1", "/d1/x", "/d1/x/y.txt", "/d1/z.bin"] {
        assert!(
            matches!(fs.stat(&p(gone)).await, Err(CoreError::NotFound)),
            "{gone}"
        );
    }
    let (kids, _) = fs.list(&p("/d2/inner"), None, 10).await.unwrap();
    let mut kids: Vec<_> = kids.into_iter().map(|e| e.name).collect();
    kids.sort();
    assert_eq!(kids, ["x", "z.bin"]);

    // Renaming to itself is a no-op; a missing source is NotFound.
    fs.rename(&p("/d2/inner"), &p("/d2/inner"), false)
        .await
        .unwrap();
    assert!(matches!(
        fs.rename(&p("/nope"), &p("/nope2"), false).await,
        Err(CoreError::NotFound)
    ));
    // A name that only starts with the same letters is not "inside".
    put(fs, "/ab", b"ab").await;
    fs.rename(&p("/ab"), &p("/abc/ab"), false).await.unwrap();
    assert_eq!(read_all(fs, "/abc/ab").await.unwrap(), b"ab");

    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(env.blob_files().len(), 2);
}

/// The lookup cache (on in these tests, 8 paths): a path looked up again with no write in
/// between is answered from memory; after any write (to that path or another, a rename of
/// a parent, a delete) it is looked up again and never shows an older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_lookups_never_outlive_a_write() {
    let env = Env::new();
    let fs = &env.fs;
    let v1 = put(fs, "/c/a.txt", b"one").await;
    let first = fs.look_up(&p("/c/a.txt")).await.unwrap();
    assert_eq!(first.entry().version, v1.version);
    let again = fs.look_up(&p("/c/a.txt")).await.unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "a hit is the remembered lookup"
    );

    // Overwritten: the new version at once, and its content.
    let v2 = put(fs, "/c/a.txt", b"two").await;
    let found = fs.look_up(&p("/c/a.txt")).await.unwrap();
    assert!(!std::sync::Arc::ptr_eq(&first, &found));
    assert_eq!(found.entry().version, v2.version);
    let r = fs.open_looked_up(&found).await.unwrap();
    assert_eq!(common::read_reader(&r).await.unwrap(), b"two");

    // A write elsewhere also ends the remembered lookups (the cache does not know what a
    // batch touched); the answer is the same version.
    fs.look_up(&p("/c/a.txt")).await.unwrap();
    put(fs, "/other.txt", b"x").await;
    let after = fs.look_up(&p("/c/a.txt")).await.unwrap();
    assert!(!std::sync::Arc::ptr_eq(&found, &after));
    assert_eq!(after.entry().version, v2.version);

    // A parent renamed: the old path is gone, the new one found.
    fs.look_up(&p("/c/a.txt")).await.unwrap();
    fs.rename(&p("/c"), &p("/d"), false).await.unwrap();
    assert!(matches!(
        fs.look_up(&p("/c/a.txt")).await,
        Err(CoreError::NotFound)
    ));
    assert_eq!(
        fs.look_up(&p("/d/a.txt")).await.unwrap().entry().version,
        v2.version
    );

    // Deleted: not found, though it was looked up just before.
    fs.look_up(&p("/d/a.txt")).await.unwrap();
    fs.delete(&p("/d/a.txt"), Precondition::None, false)
        .await
        .unwrap();
    assert!(matches!(
        fs.look_up(&p("/d/a.txt")).await,
        Err(CoreError::NotFound)
    ));

    // More paths than the cache holds: every answer is still right.
    for i in 0..20 {
        put(fs, &format!("/many/{i}"), format!("{i}").as_bytes()).await;
    }
    for round in 0..2 {
        for i in 0..20 {
            let f = fs.look_up(&p(&format!("/many/{i}"))).await.unwrap();
            let r = fs.open_looked_up(&f).await.unwrap();
            assert_eq!(
                common::read_reader(&r).await.unwrap(),
                format!("{i}").as_bytes(),
                "round {round}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_conflicts_and_overwrite() {
    let env = Env::new();
    let fs = &env.fs;
    put(fs, "/p/q/file", b"inside").await;
    for into in ["/p/q", "/p/q/r", "/p/x/y/z"] {
        let r = fs.rename(&p("/p"), &p(into), false).await;
        assert!(matches!(r, Err(CoreError::Conflict(_))), "{into}: {r:?}");
    }
    assert_eq!(read_all(fs, "/p/q/file").await.unwrap(), b"inside");

    let src = pattern(5, 2000);
    let old = pattern(6, 9000);
    let (es, bs) = env.put_blob("/s/src", &src).await;
    let (_, bd) = env.put_blob("/s/dst", &old).await;
    let bd = bd.unwrap();
    let r = fs.rename(&p("/s/src"), &p("/s/dst"), false).await;
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");
    assert!(read_all(fs, "/s/src").await.unwrap() == src);
    assert!(read_all(fs, "/s/dst").await.unwrap() == old);

    // A file cannot replace a directory, nor a directory a file, even with overwrite.
    fs.mkdir(&p("/s/dir")).await.unwrap();
    let r = fs.rename(&p("/s/src"), &p("/s/dir"), true).await;
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");
    let r = fs.rename(&p("/s/dir"), &p("/s/dst"), true).await;
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");

    let e = fs.rename(&p("/s/src"), &p("/s/dst"), true).await.unwrap();
    assert_eq!(e.version, es.version);
    assert!(read_all(fs, "/s/dst").await.unwrap() == src);
    assert!(matches!(
        fs.stat(&p("/s/src")).await,
        Err(CoreError::NotFound)
    ));
    assert!(!bd.exists(), "the replaced file's blob is removed");
    assert_eq!(env.blob_files(), vec![bs.unwrap()]);

    // Inline over inline: the replaced inline content goes too.
    put(fs, "/s/i1", b"one").await;
    put(fs, "/s/i2", b"two").await;
    fs.rename(&p("/s/i1"), &p("/s/i2"), true).await.unwrap();
    assert_eq!(read_all(fs, "/s/i2").await.unwrap(), b"one");

    assert!(matches!(
        fs.rename(&efs_core::EfsPath::root(), &p("/x"), false).await,
        Err(CoreError::Conflict(_))
    ));
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_files_and_directories() {
    let env = Env::new();
    let fs = &env.fs;
    let (_, big) = env.put_blob("/del/big", &pattern(1, 50_000)).await;
    put(fs, "/del/small", b"s").await;
    fs.delete(&p("/del/big"), Precondition::None, false)
        .await
        .unwrap();
    assert!(matches!(
        fs.stat(&p("/del/big")).await,
        Err(CoreError::NotFound)
    ));
    assert!(matches!(
        fs.open(&p("/del/big")).await,
        Err(CoreError::NotFound)
    ));
    assert!(!big.unwrap().exists());
    assert!(matches!(
        fs.delete(&p("/del/big"), Precondition::None, false).await,
        Err(CoreError::NotFound)
    ));

    // A non-empty tree: refused without `recursive`, gone with it.
    put(fs, "/tree/a/b/c.bin", &pattern(2, 3 * SEG + 7)).await;
    put(fs, "/tree/a/d", b"d").await;
    put(fs, "/tree/e.bin", &pattern(3, 5000)).await;
    fs.mkdir(&p("/tree/empty")).await.unwrap();
    let r = fs.delete(&p("/tree"), Precondition::None, false).await;
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");
    assert_eq!(read_all(fs, "/tree/a/d").await.unwrap(), b"d");
    assert_eq!(env.blob_files().len(), 2);
    fs.delete(&p("/tree"), Precondition::None, true)
        .await
        .unwrap();
    for gone in ["/tree", "/tree/a", "/tree/a/b/c.bin", "/tree/e.bin"] {
        assert!(
            matches!(fs.stat(&p(gone)).await, Err(CoreError::NotFound)),
            "{gone}"
        );
    }
    assert!(env.blob_files().is_empty(), "the tree's blobs are removed");
    // An empty directory goes without `recursive`.
    fs.mkdir(&p("/lonely")).await.unwrap();
    fs.delete(&p("/lonely"), Precondition::None, false)
        .await
        .unwrap();

    // The same path again is a new, empty directory.
    fs.mkdir(&p("/tree/a")).await.unwrap();
    let (kids, _) = fs.list(&p("/tree/a"), None, 10).await.unwrap();
    assert!(kids.is_empty());

    let r = fs
        .delete(&efs_core::EfsPath::root(), Precondition::None, true)
        .await;
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "nothing left over: {rep:?}");
    assert_eq!(rep.records, 4, "/del, /del/small, /tree, /tree/a");
}

/// Regression (a black-box review): a recursive delete of a tree as deep as a path allows
/// (2,040 levels of one-letter names below `/deep`, a 4,091-byte path) overflowed a runtime
/// thread's stack and aborted the server, and again at every start, which resumes the
/// delete. A move can put a tree deeper still (below a 200-byte name here). Deleted whole,
/// on the runtime's worker threads as the server runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_as_deep_as_a_path_allows_is_deleted_whole() {
    let env = Env::new();
    let fs = env.fs.clone();
    let deep = format!("/deep{}/f.txt", "/a".repeat(2040));
    assert!(deep.len() <= 4096, "{}", deep.len());
    put(&fs, &deep, b"x").await;
    let long = format!("/{}", "L".repeat(200));
    fs.mkdir(&p(&long)).await.unwrap();
    fs.rename(&p("/deep"), &p(&format!("{long}/deep")), false)
        .await
        .unwrap();
    // On a worker thread (2 MiB of stack), as a request's delete and the start's resumed
    // one run, not on the test's own thread.
    let (deleting, top) = (fs.clone(), long.clone());
    tokio::spawn(async move {
        deleting
            .delete(&p(&top), Precondition::None, true)
            .await
            .unwrap()
    })
    .await
    .unwrap();
    assert!(matches!(fs.stat(&p(&long)).await, Err(CoreError::NotFound)));
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.records, 0, "nothing of the tree is left");
}

/// `delete_dir` / `rename_dir_if` (HTTP `DELETE /a/`, `MOVE /a/`) act only on a directory,
/// checked on the record they commit against: a directory replaced by a file between the
/// check and the commit is not deleted (the server checked with a `stat` first, so a racing
/// writer's file could go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_only_deletes_and_moves_never_touch_a_file() {
    let env = Env::new();
    let fs = &env.fs;
    put(fs, "/f.pdf", b"file").await;
    let r = fs.delete_dir(&p("/f.pdf"), Precondition::None, true).await;
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");
    let r = fs
        .rename_dir_if(&p("/f.pdf"), &p("/g"), false, Precondition::None)
        .await;
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");
    let r = fs
        .rename_dir_if(&p("/f.pdf"), &p("/f.pdf"), false, Precondition::None)
        .await;
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");
    assert_eq!(read_all(fs, "/f.pdf").await.unwrap(), b"file");
    put(fs, "/d/x", b"x").await;
    let e = fs
        .rename_dir_if(&p("/d"), &p("/e"), false, Precondition::None)
        .await
        .unwrap();
    assert_eq!(e.kind, Kind::Dir);
    fs.delete_dir(&p("/e"), Precondition::None, true)
        .await
        .unwrap();
    assert!(matches!(fs.stat(&p("/e")).await, Err(CoreError::NotFound)));

    // The race: one task deletes `/x/` over and over while another turns `/x` from a
    // directory into a file and back. The file's owner must always find its file.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deleter = {
        let (fs, stop) = (fs.clone(), stop.clone());
        tokio::spawn(async move {
            let mut deleted = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match fs.delete_dir(&p("/x"), Precondition::None, true).await {
                    Ok(()) => deleted += 1,
                    Err(CoreError::NotFound | CoreError::Conflict(_)) => {}
                    Err(e) => panic!("{e}"),
                }
                tokio::task::yield_now().await;
            }
            deleted
        })
    };
    for i in 0..400u32 {
        match fs.mkdir(&p("/x")).await {
            Ok(_) | Err(CoreError::Exists(_) | CoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
        // The directory goes, then a file takes its name: on even rounds the deleter removes
        // it (so it is seen to work), on odd ones it goes here, racing the deleter.
        if i % 2 == 0 {
            let t = std::time::Instant::now();
            while fs.stat(&p("/x")).await.is_ok_and(|e| e.kind == Kind::Dir) {
                assert!(t.elapsed().as_secs() < 60, "the deleter never deleted /x/");
                tokio::task::yield_now().await;
            }
        } else {
            let _ = fs.delete(&p("/x"), Precondition::None, true).await;
        }
        let body = i.to_be_bytes();
        match put_with(fs, "/x", &body, None, Precondition::IfNoneMatch).await {
            Ok(_) => {}
            Err(CoreError::Precondition | CoreError::Conflict(_)) => continue,
            Err(e) => panic!("{e}"),
        }
        assert_eq!(
            read_all(fs, "/x").await.unwrap(),
            body,
            "round {i}: the file written is there"
        );
        let r = fs.delete(&p("/x"), Precondition::None, false).await;
        assert!(
            r.is_ok(),
            "round {i}: the file was deleted by `DELETE /x/`: {r:?}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let deleted = deleter.await.unwrap();
    assert!(deleted >= 200, "the deleter deleted /x/ {deleted} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_keeps_the_version_it_opened() {
    let env = Env::new();
    let fs = &env.fs;
    let v1 = pattern(1, 3 * SEG + 7);
    let v2 = pattern(2, 2 * SEG + 3);
    put(fs, "/doc", &v1).await;
    put(fs, "/tiny", b"tiny one").await;
    let r1 = fs.open(&p("/doc")).await.unwrap();
    let t1 = fs.open(&p("/tiny")).await.unwrap();
    // Start reading, then the file is replaced.
    assert!(read_range(&r1, 0, 10).await.unwrap() == v1[..10]);
    put(fs, "/doc", &v2).await;
    put(fs, "/tiny", b"tiny two").await;
    let r2 = fs.open(&p("/doc")).await.unwrap();
    fs.delete(&p("/doc"), Precondition::None, false)
        .await
        .unwrap();
    fs.delete(&p("/tiny"), Precondition::None, false)
        .await
        .unwrap();
    assert!(
        env.blob_files().is_empty(),
        "both versions are gone from the store"
    );

    assert!(
        read_reader(&r1).await.unwrap() == v1,
        "the first reader sees all of v1"
    );
    assert!(
        read_reader(&r2).await.unwrap() == v2,
        "the second reader sees all of v2"
    );
    assert_eq!(read_reader(&t1).await.unwrap(), b"tiny one");
    assert!(matches!(
        fs.open(&p("/doc")).await,
        Err(CoreError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_exactly_one_whole_version() {
    let env = Env::new();
    let fs = env.fs.clone();
    let contents: Vec<Vec<u8>> = (0..16)
        .map(|i| pattern(100 + i, SEG + 1000 * i as usize))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for c in contents.clone() {
        let fs = fs.clone();
        set.spawn(async move {
            put_with(&fs, "/race/file", &c, None, Precondition::None)
                .await
                .map(|e| e.version)
        });
    }
    let mut versions = Vec::new();
    while let Some(r) = set.join_next().await {
        versions.push(r.unwrap().expect("each write succeeds (retries)"));
    }
    let got = read_all(&fs, "/race/file").await.unwrap();
    let matches = contents.iter().filter(|c| **c == got).count();
    assert_eq!(
        matches, 1,
        "the final content is exactly one writer's, whole"
    );
    let st = fs.stat(&p("/race/file")).await.unwrap();
    assert!(versions.contains(&st.version));
    assert_eq!(st.size, got.len() as u64);
    assert_eq!(env.blob_files().len(), 1, "the losers' blobs are gone");
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.records, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_is_clean_on_a_healthy_filesystem() {
    let env = Env::new();
    let fs = &env.fs;
    put(fs, "/h/a", b"").await;
    put(fs, "/h/b", &pattern(1, 900)).await;
    put(fs, "/h/c/d", &pattern(2, 2 * SEG)).await;
    fs.mkdir(&p("/h/e")).await.unwrap();
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.files_verified, 3);
    assert_eq!(rep.records, 6);
    let st = fs.stats().await.unwrap();
    assert_eq!((st.files, st.dirs, st.bytes), (3, 3, 900 + 2 * SEG as u64));
    let gc = fs.gc(0).await.unwrap();
    assert_eq!(
        (gc.blobs_removed, gc.inline_removed, gc.blobs_kept_young),
        (0, 0, 0)
    );
    assert_eq!(read_all(fs, "/h/c/d").await.unwrap().len(), 2 * SEG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_blob_is_detected() {
    let env = Env::new();
    let fs = &env.fs;
    let data = pattern(7, 3 * SEG + 7);
    let (_, blob) = env.put_blob("/t/damaged", &data).await;
    let blob = blob.unwrap();
    put(fs, "/t/fine", &pattern(8, 5000)).await;
    let mut bytes = std::fs::read(&blob).unwrap();
    // A byte in the third segment's ciphertext.
    let at = 56 + 2 * (SEG + 16) + 100;
    bytes[at] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();

    let rep = fs.fsck().await.unwrap();
    assert_eq!(rep.errors.len(), 1, "{rep:?}");
    assert!(!rep.is_clean());
    assert_eq!(rep.files_verified, 1, "the other file still verifies");
    assert!(
        !rep.errors[0].contains("damaged"),
        "no names in fsck output"
    );

    let r = read_all(fs, "/t/damaged").await;
    assert!(matches!(r, Err(CoreError::Decrypt)), "{r:?}");
    // Random access: segments before the damage still read, the damaged one does not.
    let rd = fs.open(&p("/t/damaged")).await.unwrap();
    assert!(read_range(&rd, 0, 2 * SEG as u64).await.unwrap() == data[..2 * SEG]);
    assert!(matches!(
        rd.read_segments(2, 3).await,
        Err(CoreError::Decrypt)
    ));

    // A damaged header is caught as well.
    bytes[at] ^= 0x01;
    bytes[20] ^= 0x80;
    std::fs::write(&blob, &bytes).unwrap();
    let r = read_all(fs, "/t/damaged").await;
    assert!(matches!(r, Err(CoreError::Decrypt)), "{r:?}");
    // A truncated blob too.
    bytes[20] ^= 0x80;
    std::fs::write(&blob, &bytes[..bytes.len() - 1]).unwrap();
    let r = read_all(fs, "/t/damaged").await;
    assert!(matches!(r, Err(CoreError::Decrypt)), "{r:?}");
    // Restored, all is well again.
    std::fs::write(&blob, &bytes).unwrap();
    assert!(read_all(fs, "/t/damaged").await.unwrap() == data);
    assert!(fs.fsck().await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_blobs_are_listed_and_collected() {
    let env = Env::new();
    let fs = &env.fs;
    let data = pattern(1, 4000);
    let (_, kept) = env.put_blob("/g/kept", &data).await;
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id).unwrap();
    let orphan = env.blob_path(&id);
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::copy(kept.unwrap(), &orphan).unwrap();
    // A partial write left by a crash, in blobs/tmp.
    let partial = env.blobs_dir().join("tmp").join(hex::encode([9u8; 16]));
    std::fs::write(&partial, b"partial ciphertext").unwrap();

    let rep = fs.fsck().await.unwrap();
    assert_eq!(rep.orphan_blobs, vec![hex::encode(id)]);
    assert!(rep.errors.is_empty(), "{rep:?}");
    assert!(!rep.is_clean());
    // fsck counts the partial write (it said nothing of it: only gc did).
    assert_eq!(rep.partial_writes, (1, b"partial ciphertext".len() as u64));

    // Young orphans are kept (uploads in flight), old ones removed.
    let gc = fs.gc(3600).await.unwrap();
    assert_eq!((gc.blobs_removed, gc.blobs_kept_young), (0, 1));
    assert_eq!(gc.partials_removed, 0, "young partial writes are kept");
    assert!(orphan.exists() && partial.exists());
    let gc = fs.gc(0).await.unwrap();
    assert_eq!((gc.blobs_removed, gc.blobs_kept_young), (1, 0));
    assert_eq!(gc.partials_removed, 1);
    assert!(!orphan.exists());
    assert!(!partial.exists(), "gc removes stale partial writes");
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean());
    assert_eq!(rep.partial_writes, (0, 0));
    assert!(
        read_all(fs, "/g/kept").await.unwrap() == data,
        "referenced blobs stay"
    );
}

/// gc counts only what was left over: content that a delete or an overwrite committed away
/// between gc's listing of the candidates and its scan of the records, and removed itself,
/// is no orphan. Before, each such inline content, and each such blob the writer had already
/// unlinked, was counted as removed (and the server's own gc warned of it as crash
/// leftovers on a healthy, busy server). With no crash and no failed removal, the runs here
/// remove nothing (but for the blob window below) while the writes go on, and the
/// filesystem stays clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_counts_only_what_was_left_over() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let env = Env::new();
    let fs = env.fs.clone();
    // Records enough for the scan to take a moment, so that writes land inside it.
    for i in 0..1500 {
        put(&fs, &format!("/bulk/f{i}"), b"x").await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..2u64 {
        let (fs, stop, writes) = (fs.clone(), stop.clone(), writes.clone());
        writers.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let small = format!("/w{w}/small{}", n % 3);
                put(&fs, &small, &pattern(n, 100)).await;
                if n.is_multiple_of(4) {
                    let big = format!("/w{w}/big{}", n % 2);
                    put(&fs, &big, &pattern(n, INLINE_MAX + 1)).await;
                }
                if n.is_multiple_of(5) {
                    fs.delete(&p(&small), Precondition::None, false)
                        .await
                        .unwrap();
                }
                writes.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let (mut runs, mut counted) = (0u32, Vec::new());
    let started = std::time::Instant::now();
    while runs < 30 || writes.load(Ordering::Relaxed) < 200 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "{runs} gc runs, {} writes in 2 minutes",
            writes.load(Ordering::Relaxed)
        );
        let rep = fs.gc(0).await.unwrap();
        runs += 1;
        if rep.blobs_removed + rep.inline_removed > 0 {
            counted.push((rep.blobs_removed, rep.inline_removed));
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    // An inline content leaves with its record, in the same commit: never counted. A blob
    // is unlinked by its writer just after the commit, marked as being unlinked from before
    // that commit, so gc leaves it to the writer (before the mark, a gc whose scan ended in
    // between unlinked and counted it about once in 360 runs; before gc looked whether what
    // it removed was still there, inline contents or blobs were counted in 7 to 13 of every
    // 30 runs).
    assert!(
        counted.is_empty(),
        "gc counted (blobs, inline contents) removed with nothing left over, in {} of {runs} runs: {counted:?}",
        counted.len()
    );
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_blobs_fail_to_decrypt_never_give_wrong_bytes() {
    let env = Env::new();
    let fs = &env.fs;
    // Same size (so the lengths agree), then different sizes.
    let a = env
        .put_blob("/w/a", &pattern(1, 3 * SEG + 7))
        .await
        .1
        .unwrap();
    let b = env
        .put_blob("/w/b", &pattern(2, 3 * SEG + 7))
        .await
        .1
        .unwrap();
    let c = env.put_blob("/w/c", &pattern(3, 2000)).await.1.unwrap();
    let swap = |px: &std::path::Path, py: &std::path::Path| {
        let (bx, by) = (std::fs::read(px).unwrap(), std::fs::read(py).unwrap());
        std::fs::write(px, by).unwrap();
        std::fs::write(py, bx).unwrap();
    };
    swap(&a, &b);
    for f in ["/w/a", "/w/b"] {
        let r = read_all(fs, f).await;
        assert!(matches!(r, Err(CoreError::Decrypt)), "{f}: {r:?}");
    }
    let rep = fs.fsck().await.unwrap();
    assert_eq!(rep.errors.len(), 2, "{rep:?}");
    swap(&a, &b);
    swap(&a, &c);
    for f in ["/w/a", "/w/c"] {
        let r = read_all(fs, f).await;
        assert!(matches!(r, Err(CoreError::Decrypt)), "{f}: {r:?}");
    }
    // Only the header, swapped, is not enough either.
    swap(&a, &c);
    let (mut ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    ba[..56].copy_from_slice(&bb[..56]);
    std::fs::write(&a, &ba).unwrap();
    let r = read_all(fs, "/w/a").await;
    assert!(matches!(r, Err(CoreError::Decrypt)), "{r:?}");
    assert!(read_all(fs, "/w/b").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_and_abandoned_uploads_leave_nothing() {
    let env = Env::new();
    let fs = &env.fs;
    let mut up = fs.begin_upload().await.unwrap();
    up.set_max_size(100_000);
    up.write(&pattern(1, 90_000)).await.unwrap();
    assert_eq!(
        env.tmp_files(),
        1,
        "a blob upload writes to a temporary file"
    );
    let r = up.write(&pattern(2, 20_000)).await;
    assert!(matches!(r, Err(CoreError::TooLarge)), "{r:?}");
    drop(up);
    assert_eq!(
        env.tmp_files(),
        0,
        "a dropped upload removes its temporary file"
    );

    let mut up = fs.begin_upload().await.unwrap();
    up.write(&pattern(3, 2 * SEG)).await.unwrap();
    up.abort().await;
    assert_eq!(env.tmp_files(), 0);
    assert!(env.blob_files().is_empty());
    assert!(fs.fsck().await.unwrap().is_clean());
    assert!(matches!(
        fs.stat(&p("/anything")).await,
        Err(CoreError::NotFound)
    ));
}

/// Regression: a directory's delete checked for children, then deleted it, in two steps; a
/// file committed in between was acknowledged and then unreachable (its entry orphaned,
/// reported by fsck, its blob leaked). Most iterations lost the file before the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_directory_never_loses_a_file_written_into_it() {
    let env = Env::new();
    let fs = env.fs.clone();
    for i in 0..60 {
        let recursive = i % 2 == 1;
        let dir = format!("/race{i}");
        // The recursive case writes two levels down, below a subdirectory it deletes.
        let file = if recursive {
            format!("{dir}/sub/f")
        } else {
            format!("{dir}/f")
        };
        fs.mkdir(&p(&format!("{dir}/sub"))).await.unwrap();
        if !recursive {
            fs.delete(&p(&format!("{dir}/sub")), Precondition::None, false)
                .await
                .unwrap();
        }
        let data = pattern(i, if i.is_multiple_of(3) { 3000 } else { 10 });
        let (fs2, file2, data2) = (fs.clone(), file.clone(), data.clone());
        let writer =
            tokio::spawn(
                async move { put_with(&fs2, &file2, &data2, None, Precondition::None).await },
            );
        let deleted = fs.delete(&p(&dir), Precondition::None, recursive).await;
        let written = writer.await.unwrap();
        assert!(written.is_ok(), "{written:?}");
        match &deleted {
            Ok(()) | Err(CoreError::Conflict(_)) => {}
            Err(e) => panic!("delete: {e}"),
        }
        // An acknowledged write is readable, whichever came first, unless a recursive
        // delete that finished after it removed it (then with its whole tree).
        let got = read_all(&fs, &file).await;
        if recursive && deleted.is_ok() && matches!(got, Err(CoreError::NotFound)) {
            assert!(matches!(fs.stat(&p(&dir)).await, Err(CoreError::NotFound)));
        } else {
            assert!(
                matches!(&got, Ok(g) if *g == data),
                "iteration {i}: acknowledged write lost ({got:?}, delete: {deleted:?})"
            );
        }
    }
    // No entry left without its parent, no blob left without its entry.
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
}

/// The same race with a rename into the directory being deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_directory_never_loses_an_entry_moved_into_it() {
    let env = Env::new();
    let fs = env.fs.clone();
    for i in 0..40 {
        let dir = format!("/target{i}");
        let src = format!("/src/f{i}");
        put(&fs, &src, &pattern(i, 50)).await;
        fs.mkdir(&p(&dir)).await.unwrap();
        let (fs2, src2, dst2) = (fs.clone(), src.clone(), format!("{dir}/f"));
        let mover = tokio::spawn(async move { fs2.rename(&p(&src2), &p(&dst2), false).await });
        let deleted = fs.delete(&p(&dir), Precondition::None, false).await;
        let moved = mover.await.unwrap();
        assert!(moved.is_ok(), "{moved:?}");
        let got = read_all(&fs, &format!("{dir}/f")).await;
        assert!(
            matches!(&got, Ok(g) if *g == pattern(i, 50)),
            "iteration {i}: moved entry lost ({got:?}, delete: {deleted:?})"
        );
    }
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
}

/// A recursive delete racing a move of the tree: one of them wins, whole. Either the tree
/// is gone (the move finds nothing) or it moved whole and stays (the delete finds nothing
/// at /d, and a file written at its new place after the move stays). The delete went on
/// emptying a tree by its directory's id wherever it had gone, and then deleted page by
/// page, so a move in between left part of the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_delete_and_a_move_of_the_tree_never_split_it() {
    let env = Env::new();
    let fs = env.fs.clone();
    const N: usize = 200;
    for round in 0..6 {
        for i in 0..N {
            put(&fs, &format!("/d/sub/f{i}"), &pattern(i as u64, 20)).await;
        }
        let archive = format!("/archive{round}");
        let fs2 = fs.clone();
        let deleter =
            tokio::spawn(async move { fs2.delete(&p("/d"), Precondition::None, true).await });
        if round % 2 == 1 {
            tokio::task::yield_now().await;
        }
        let moved = fs.rename(&p("/d"), &p(&archive), false).await;
        let deleted = deleter.await.unwrap();
        match (&moved, &deleted) {
            (Ok(_), Err(CoreError::NotFound)) => {
                put(&fs, &format!("{archive}/sub/new.txt"), b"after the move").await;
                let (left, _) = fs
                    .list(&p(&format!("{archive}/sub/")), None, 10_000)
                    .await
                    .unwrap();
                assert_eq!(left.len(), N + 1, "round {round}: the moved tree is whole");
            }
            (Err(CoreError::NotFound), Ok(())) => {
                assert!(matches!(
                    fs.stat(&p(&archive)).await,
                    Err(CoreError::NotFound)
                ));
            }
            other => panic!("round {round}: {other:?}"),
        }
        assert!(matches!(fs.stat(&p("/d")).await, Err(CoreError::NotFound)));
    }
    fs.empty_trash().await.unwrap();
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
}

/// Regression: gc scanned the references first and listed inline contents after, so a
/// small file committed in between looked orphaned and its content was deleted (most
/// files written during a gc loop were lost). Blobs are protected by the grace period;
/// inline contents have none, so gc must only consider contents that existed before its
/// scan began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_during_writes_never_removes_fresh_content() {
    let env = Env::new();
    let fs = env.fs.clone();
    // Enough entries that a scan takes a moment.
    for i in 0..200 {
        put(&fs, &format!("/pre/f{i}"), b"x").await;
    }
    let fs2 = fs.clone();
    let writer = tokio::spawn(async move {
        for i in 0..150u64 {
            let size = if i.is_multiple_of(10) {
                2 * INLINE_MAX
            } else {
                5
            };
            put(&fs2, &format!("/w/f{i}"), &pattern(i, size)).await;
        }
    });
    let mut runs = 0;
    while !writer.is_finished() {
        let g = fs.gc(3600).await.unwrap();
        assert_eq!(
            (g.inline_removed, g.blobs_removed),
            (0, 0),
            "nothing was orphaned"
        );
        runs += 1;
    }
    writer.await.unwrap();
    assert!(runs > 1);
    for i in 0..150u64 {
        let size = if i.is_multiple_of(10) {
            2 * INLINE_MAX
        } else {
            5
        };
        let got = read_all(&fs, &format!("/w/f{i}")).await;
        assert!(
            matches!(&got, Ok(g) if *g == pattern(i, size)),
            "f{i}: {got:?}"
        );
    }
    assert!(fs.fsck().await.unwrap().is_clean());
}

/// Regression: gc collected live references page by page (1024 entries a page), not from
/// one snapshot, so a file renamed during gc from a key not yet scanned to a key already
/// scanned was never seen, and its content (inline: no grace period) was deleted. gc now
/// reads every reference from one snapshot of the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_never_removes_the_content_of_a_file_renamed_while_it_runs() {
    let env = Env::new();
    let fs = env.fs.clone();
    // More than one page of entries, so that a paged scan takes several reads.
    const N: u64 = 1500;
    for i in 0..N {
        put(&fs, &format!("/r/f{i}"), &pattern(i, 40)).await;
    }
    let fs2 = fs.clone();
    let renamer = tokio::spawn(async move {
        // Each file moves back and forth between two names: index keys jump around.
        for round in 0..3u64 {
            for i in 0..N {
                let (from, to) = if round % 2 == 0 {
                    (format!("/r/f{i}"), format!("/r/g{i}"))
                } else {
                    (format!("/r/g{i}"), format!("/r/f{i}"))
                };
                fs2.rename(&p(&from), &p(&to), false).await.unwrap();
            }
        }
    });
    while !renamer.is_finished() {
        fs.gc(0).await.unwrap();
    }
    renamer.await.unwrap();
    for i in 0..N {
        let got = read_all(&fs, &format!("/r/g{i}")).await;
        assert!(
            matches!(&got, Ok(g) if *g == pattern(i, 40)),
            "file {i} lost its content after a rename during gc: {got:?}"
        );
    }
    assert!(fs.fsck().await.unwrap().is_clean());
}

/// Regression: fsck read records page by page and listed blobs after its long verification,
/// so on a server that writes it reported a file committed meanwhile as an orphan blob, a
/// file replaced or deleted meanwhile as missing content, and a file renamed meanwhile
/// under no name or two: `clean = false` with nothing wrong. Each report during the writes
/// must be clean, and so must the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_during_writes_reports_nothing_that_is_not_wrong() {
    let env = Env::new();
    let fs = env.fs.clone();
    const N: u64 = 1200;
    for i in 0..N {
        let size = if i.is_multiple_of(8) {
            2 * INLINE_MAX
        } else {
            40
        };
        put(&fs, &format!("/w/f{i}"), &pattern(i, size)).await;
    }
    let fs2 = fs.clone();
    let writer = tokio::spawn(async move {
        for round in 1..4u64 {
            for i in 0..N {
                let path = format!("/w/f{i}");
                match i % 4 {
                    // Replaced (the old blob is removed), blob or inline.
                    0 | 1 => {
                        let size = if i.is_multiple_of(8) {
                            2 * INLINE_MAX
                        } else {
                            40
                        };
                        put(&fs2, &path, &pattern(i + round, size)).await;
                    }
                    // Renamed back and forth (index keys jump around).
                    2 => {
                        let (from, to) = if round % 2 == 1 {
                            (path.clone(), format!("/w/g{i}"))
                        } else {
                            (format!("/w/g{i}"), path.clone())
                        };
                        fs2.rename(&p(&from), &p(&to), false).await.unwrap();
                    }
                    // New files (blobs) under fresh names.
                    _ => {
                        put(
                            &fs2,
                            &format!("/n{round}/f{i}"),
                            &pattern(i, 2 * INLINE_MAX),
                        )
                        .await;
                    }
                }
            }
        }
    });
    let mut runs = 0;
    while !writer.is_finished() {
        let rep = fs.fsck().await.unwrap();
        assert!(rep.is_clean(), "fsck {runs} during writes: {rep:?}");
        runs += 1;
    }
    writer.await.unwrap();
    assert!(runs > 1, "fsck ran {runs} time(s) during the writes");
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.files_verified, N + 3 * (N / 4));
}

/// Regression: a commit whose caller is dropped (hyper drops the request of a client that
/// hangs up) was still applied by the index's committer, but its upload had already left
/// the set of running uploads, so a gc run at that moment took the blob for an orphan and
/// deleted it; the commit then landed and the file answered "content missing" for ever.
/// Whatever moment the caller is dropped at, a file that exists afterwards reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_dropped_midway_leaves_no_file_without_content() {
    let env = Env::new();
    let fs = env.fs.clone();
    let data = pattern(7, 3 * INLINE_MAX);
    for (i, wait_us) in [0u64, 50, 200, 500, 1_000, 2_000, 4_000, 8_000]
        .iter()
        .cycle()
        .take(24)
        .enumerate()
    {
        let path = format!("/drop/f{i}");
        let mut up = fs.begin_upload().await.unwrap();
        up.write(&data).await.unwrap();
        let target = p(&path);
        let commit = fs.commit_upload(&target, up, None, Precondition::None);
        let _ = tokio::time::timeout(std::time::Duration::from_micros(*wait_us), commit).await;
        // The caller is gone; gc runs at once, with no grace.
        fs.gc(0).await.unwrap();
        // The file is whole or absent (its commit may still land later).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        match read_all(&fs, &path).await {
            Ok(got) => assert!(got == data, "{path}: wrong content"),
            Err(CoreError::NotFound) => {}
            Err(e) => panic!("{path} exists without its content: {e}"),
        }
    }
    // Uploads that never committed left nothing behind once gc has run; commits still
    // running when the loop ended may land meanwhile, so this is asked until the files
    // listed and the files fsck verified agree (each listed one read back whole).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        fs.gc(0).await.unwrap();
        let listed = match fs.list(&p("/drop"), None, 100).await {
            Ok((entries, _)) => entries,
            Err(CoreError::NotFound) => Vec::new(),
            Err(e) => panic!("listing /drop: {e}"),
        };
        for e in &listed {
            let got = read_all(&fs, &format!("/drop/{}", e.name)).await.unwrap();
            assert!(got == data, "/drop/{}: wrong content", e.name);
        }
        let rep = fs.fsck().await.unwrap();
        assert!(rep.is_clean(), "{rep:?}");
        if rep.files_verified == listed.len() as u64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} listed, {} verified by fsck",
            listed.len(),
            rep.files_verified
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The versions a filesystem removes are told to `FsOptions::on_content_removed` (the server
/// drops them from its decrypted cache, so a deleted file's plaintext does not stay in
/// memory): a file replaced, deleted, moved over, or deleted with its directory, inline and
/// blob alike, once the change is committed. A new file or a plain move tells nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_versions_are_told_to_the_listener() {
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let removed = Arc::new(Mutex::new(Vec::<[u8; 16]>::new()));
    let listener = {
        let removed = removed.clone();
        efs_core::fs::ContentRemoved(Arc::new(move |v: &[u8; 16]| {
            removed.lock().unwrap().push(*v)
        }))
    };
    let base = common::opts();
    let opts = efs_core::OpenOptions {
        fs: efs_core::FsOptions {
            on_content_removed: Some(listener),
            ..base.fs.clone()
        },
        ..base
    };
    let part = common::new_part(&tmp.path().join("part.key"));
    let (dd, _) = efs_core::DataDir::open(
        &tmp.path().join("data"),
        &[part],
        opts,
        &efs_core::keyparts::no_prompt,
    )
    .unwrap();
    dd.create_fs("docs").unwrap();
    let fs = dd.fs("docs").unwrap();
    let take = || {
        let mut v = std::mem::take(&mut *removed.lock().unwrap());
        v.sort();
        v
    };
    let (small, big) = (pattern(1, 10), pattern(2, INLINE_MAX + 1));
    let a = put(&fs, "/a", &small).await;
    let b = put(&fs, "/b", &big).await;
    assert_eq!(take(), Vec::<[u8; 16]>::new(), "new files");
    let a2 = put(&fs, "/a", &big).await;
    assert_eq!(take(), vec![a.version], "inline replaced by a blob");
    let b2 = put(&fs, "/b", &small).await;
    assert_eq!(take(), vec![b.version], "blob replaced by inline");
    fs.delete(&p("/a"), Precondition::None, false)
        .await
        .unwrap();
    assert_eq!(take(), vec![a2.version], "deleted");
    let c = put(&fs, "/c", &big).await;
    fs.rename(&p("/c"), &p("/b"), true).await.unwrap();
    assert_eq!(take(), vec![b2.version], "moved over");
    fs.mkdir(&p("/d")).await.unwrap();
    fs.rename(&p("/b"), &p("/d/b"), false).await.unwrap();
    assert_eq!(take(), Vec::<[u8; 16]>::new(), "a plain move");
    let x = put(&fs, "/d/x", &small).await;
    fs.delete(&p("/d"), Precondition::None, true).await.unwrap();
    let mut want = vec![c.version, x.version];
    want.sort();
    assert_eq!(take(), want, "deleted with their directory");
}

/// A recursive delete is one commit: the tree is detached (gone for every reader) before the
/// call returns, and a crash before it is emptied leaves it gone, never half deleted (it
/// deleted entry by entry, one commit each, so a kill -9 left part of the tree). The
/// emptying resumes at the next open and removes the content; fsck is clean throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_delete_is_detached_at_once_and_emptied_after_a_crash() {
    let Env {
        tmp: _tmp,
        root,
        part,
        dd,
        fs,
    } = Env::new();
    put(&fs, "/keep/x", b"kept").await;
    put(&fs, "/tree/a/b/c.bin", &pattern(2, 3 * SEG + 7)).await;
    put(&fs, "/tree/a/d", b"d").await;
    put(&fs, "/tree/e.bin", &pattern(3, INLINE_MAX + 1)).await;
    for i in 0..300 {
        put(&fs, &format!("/tree/many/f{i}"), &pattern(i, 10)).await;
    }
    fs.mkdir(&p("/tree/empty")).await.unwrap();
    let blobs_of = |dir: &std::path::Path| {
        common::walk(dir)
            .into_iter()
            .filter(|f| !f.strip_prefix(dir).unwrap().starts_with("tmp"))
            .count()
    };
    let blobs_dir = root.join("fs").join(hex::encode(fs.id())).join("blobs");
    assert_eq!(blobs_of(&blobs_dir), 2);
    // The delete as the server makes it: the emptying is left to a task of its own, which
    // a crash (here: dropping everything) stops before it begins.
    fs.delete_while(&p("/tree"), Precondition::None, true, false, &|| true)
        .await
        .unwrap();
    assert!(matches!(
        fs.stat(&p("/tree")).await,
        Err(CoreError::NotFound)
    ));
    assert_eq!(
        blobs_of(&blobs_dir),
        2,
        "the detached tree is emptied afterwards, not by the delete itself"
    );
    drop(fs);
    drop(dd);

    let dd = common::open(&root, std::slice::from_ref(&part)).unwrap();
    let fs = dd.fs("docs").unwrap();
    for gone in [
        "/tree",
        "/tree/a",
        "/tree/a/d",
        "/tree/many/f7",
        "/tree/e.bin",
    ] {
        assert!(
            matches!(fs.stat(&p(gone)).await, Err(CoreError::NotFound)),
            "{gone}"
        );
    }
    let (top, _) = fs.list(&efs_core::EfsPath::root(), None, 10).await.unwrap();
    assert_eq!(
        top.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["keep"]
    );
    let st = fs.stats().await.unwrap();
    assert_eq!(
        (st.files, st.dirs),
        (1, 1),
        "what was deleted is not counted"
    );
    // Not emptied yet: its entries have a parent, its contents are referenced; they are
    // counted apart from the filesystem's records.
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.records, 2, "/keep, /keep/x");
    assert!(
        rep.pending_delete_records > 300,
        "{}",
        rep.pending_delete_records
    );
    let gc = fs.gc(0).await.unwrap();
    assert_eq!(gc.blobs_removed + gc.inline_removed, 0, "{gc:?}");
    assert_eq!(blobs_of(&blobs_dir), 2);

    // What the server does when it opens the filesystem.
    fs.empty_trash().await.unwrap();
    assert_eq!(blobs_of(&blobs_dir), 0, "the tree's blobs are removed");
    let rep = fs.fsck().await.unwrap();
    assert!(rep.is_clean(), "nothing left over: {rep:?}");
    assert_eq!(rep.records, 2, "/keep, /keep/x");
    assert_eq!(read_all(&fs, "/keep/x").await.unwrap(), b"kept");
    // A new tree at the same path is a new, empty directory.
    fs.mkdir(&p("/tree")).await.unwrap();
    assert!(fs.list(&p("/tree"), None, 10).await.unwrap().0.is_empty());
}
