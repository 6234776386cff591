//! The chain against every kind of hand edit: each test writes a real log with the real
//! writer, damages the files the way a person (or a crash) would, and checks what `verify`
//! says: the first bad entry, by number, file and line.

use std::path::{Path, PathBuf};

use super::*;

fn rec(i: u64) -> Record {
    Record {
        action: Action::Read,
        user: Some(format!("user{}", i % 3)),
        fs: Some("files".into()),
        path: Some(format!("/patients/{i}/report.pdf")),
        to: None,
        client: Some("127.0.0.1".into()),
        status: 200,
        detail: None,
    }
}

/// Writes `n` entries (numbered from `first`) with a fresh writer and closes it.
async fn write_entries(dir: &Path, keys: &AuditKeys, first: u64, n: u64, opts: AuditOptions) {
    let log = AuditLog::open(dir, keys, opts).unwrap();
    assert!(log.notes().is_empty(), "{:?}", log.notes());
    for i in first..first + n {
        log.submit(rec(i)).unwrap();
    }
    log.close();
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .split_inclusive('\n')
        .map(str::to_owned)
        .collect()
}

fn put_lines(p: &Path, l: &[String]) {
    std::fs::write(p, l.concat()).unwrap();
}

async fn log_of(n: u64) -> (tempfile::TempDir, PathBuf, AuditKeys) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("audit");
    let keys = AuditKeys::for_tests(7);
    write_entries(&dir, &keys, 1, n, AuditOptions::default()).await;
    (t, dir, keys)
}

fn problem(dir: &Path, keys: &AuditKeys) -> Problem {
    let r = verify(dir, keys, None).unwrap();
    r.problem
        .clone()
        .unwrap_or_else(|| panic!("verify found nothing wrong: {r:?}"))
}

#[tokio::test]
async fn clean_log_verifies_and_shows() {
    let (_t, dir, keys) = log_of(10).await;
    let r = verify(&dir, &keys, None).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.entries, 10);
    assert_eq!(r.anchor, AnchorCheck::Match);
    let s = show(
        &dir,
        &keys,
        &Filter {
            path: Some("/patients/4/report.pdf".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.entries.len(), 1);
    assert_eq!(s.entries[0].seq, 4);
    assert_eq!(s.entries[0].record, rec(4));
    assert_eq!(s.chain_broken_at, None);
    let by_user = show(
        &dir,
        &keys,
        &Filter {
            user: Some("user1".into()),
            path: Some("/patients/".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let seqs: Vec<u64> = by_user.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 4, 7, 10]);
}

/// `show_last` keeps the newest matches only, oldest first, and counts the rest; the
/// count covers matches only.
#[tokio::test]
async fn show_last_keeps_the_newest_matches_and_counts_the_rest() {
    let (_t, dir, keys) = log_of(10).await;
    let all = Filter::default();
    let s = show_last(&dir, &keys, &all, 3).unwrap();
    let seqs: Vec<u64> = s.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![8, 9, 10]);
    assert_eq!(s.omitted, 7);
    assert_eq!(s.chain_broken_at, None);
    let user1 = Filter {
        user: Some("user1".into()),
        ..Default::default()
    };
    let s = show_last(&dir, &keys, &user1, 2).unwrap();
    let seqs: Vec<u64> = s.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![7, 10]);
    assert_eq!(s.omitted, 2);
    let s = show_last(&dir, &keys, &user1, 4).unwrap();
    assert_eq!(s.entries.len(), 4);
    assert_eq!(s.omitted, 0);
    let s = show_last(&dir, &keys, &all, 0).unwrap();
    assert!(s.entries.is_empty());
    assert_eq!(s.omitted, 10);
    assert_eq!(show(&dir, &keys, &all).unwrap().entries.len(), 10);
}

#[tokio::test]
async fn no_plaintext_on_disk() {
    let (_t, dir, _keys) = log_of(5).await;
    for f in files(&dir) {
        let text = std::fs::read_to_string(&f).unwrap();
        for needle in ["patients", "user1", "files", "127.0.0.1", "report"] {
            assert!(!text.contains(needle), "{needle} in {}", f.display());
        }
    }
}

#[tokio::test]
async fn edited_byte_names_that_entry() {
    let (_t, dir, keys) = log_of(10).await;
    let f = &files(&dir)[0];
    let mut l = lines(f);
    // Line 1 is the header, so entry 6 is line 7. Change one character of its body.
    let mut b = l[6].clone().into_bytes();
    let i = b.iter().position(|&c| c == b' ').unwrap() + 1;
    let i = i + b[i..].iter().position(|&c| c == b' ').unwrap() + 3;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    l[6] = String::from_utf8(b).unwrap();
    put_lines(f, &l);
    let p = problem(&dir, &keys);
    assert_eq!((p.entry, p.line), (6, 7), "{p:?}");
    assert!(
        p.message
            .starts_with("entry 6 (file audit-000001.log line 7): MAC mismatch")
    );
}

#[tokio::test]
async fn edited_time_is_detected() {
    let (_t, dir, keys) = log_of(4).await;
    let f = &files(&dir)[0];
    let mut l = lines(f);
    let fields: Vec<&str> = l[2].splitn(3, ' ').collect();
    let t: i64 = fields[1].parse().unwrap();
    l[2] = format!("{} {} {}", fields[0], t - 3_600_000, fields[2]);
    put_lines(f, &l);
    assert_eq!(problem(&dir, &keys).entry, 2);
}

#[tokio::test]
async fn inserted_line_is_detected_where_it_is() {
    let (_t, dir, keys) = log_of(6).await;
    let f = &files(&dir)[0];
    let mut l = lines(f);
    // A copy of entry 2 inserted after entry 3 (a replayed line).
    let copy = l[2].clone();
    l.insert(4, copy);
    put_lines(f, &l);
    let p = problem(&dir, &keys);
    assert_eq!((p.entry, p.line), (4, 5), "{p:?}");
}

#[tokio::test]
async fn deleted_line_is_detected() {
    let (_t, dir, keys) = log_of(6).await;
    let f = &files(&dir)[0];
    let mut l = lines(f);
    l.remove(3); // entry 3
    put_lines(f, &l);
    let p = problem(&dir, &keys);
    assert_eq!((p.entry, p.line), (3, 4), "{p:?}");
}

#[tokio::test]
async fn reordered_lines_are_detected() {
    let (_t, dir, keys) = log_of(6).await;
    let f = &files(&dir)[0];
    let mut l = lines(f);
    l.swap(2, 3); // entries 2 and 3
    put_lines(f, &l);
    let p = problem(&dir, &keys);
    assert_eq!((p.entry, p.line), (2, 3), "{p:?}");
}

#[tokio::test]
async fn truncated_tail_is_detected_by_the_anchor() {
    let (_t, dir, keys) = log_of(8).await;
    let f = &files(&dir)[0];
    let mut l = lines(f);
    l.truncate(1 + 5); // header + entries 1..=5
    put_lines(f, &l);
    let p = problem(&dir, &keys);
    assert!(
        p.message
            .contains("truncated: the anchor records entry 8 but the log ends at entry 5"),
        "{p:?}"
    );
    // A writer opened on the cut log continues from the anchor, so the gap stays visible.
    let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
    assert!(
        log.notes()[0].contains("entries were removed"),
        "{:?}",
        log.notes()
    );
    log.record(rec(99)).await.unwrap();
    log.close();
    let p = problem(&dir, &keys);
    assert_eq!(p.entry, 6, "{p:?}");
    assert!(p.file.ends_with("000002.log"), "{p:?}");
}

#[tokio::test]
async fn deleted_anchor_or_forged_anchor_is_reported() {
    let (_t, dir, keys) = log_of(3).await;
    let head = writer::head_path(&dir);
    let good = std::fs::read_to_string(&head).unwrap();
    std::fs::remove_file(&head).unwrap();
    assert!(problem(&dir, &keys).message.contains("anchor is missing"));
    // An anchor rewritten by hand to claim an earlier end (to hide a truncation).
    let forged = good.replacen(" 3 ", " 2 ", 1);
    std::fs::write(&head, forged).unwrap();
    assert!(problem(&dir, &keys).message.contains("anchor is damaged"));
    std::fs::write(&head, good).unwrap();
    assert!(verify(&dir, &keys, None).unwrap().is_clean());
}

/// Regression: deleting the anchor together with cutting the log's end was hidden as soon as
/// a writer opened the log: it chained on from the cut end and wrote a fresh anchor, and
/// `verify` was clean. New entries now chain to a mark that `verify` names for good.
#[tokio::test]
async fn a_writer_after_a_lost_anchor_keeps_the_loss_visible() {
    for damage in ["deleted", "damaged"] {
        let (_t, dir, keys) = log_of(8).await;
        let f = &files(&dir)[0];
        let mut l = lines(f);
        l.truncate(1 + 5); // header + entries 1..=5: entries 6..=8 cut off
        put_lines(f, &l);
        let head = writer::head_path(&dir);
        if damage == "deleted" {
            std::fs::remove_file(&head).unwrap();
        } else {
            std::fs::write(&head, "efs-audit-head 1 5 00 00\n").unwrap();
        }
        let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
        assert!(
            log.notes()[0].contains("entries may have been cut off"),
            "{damage}: {:?}",
            log.notes()
        );
        log.record(rec(99)).await.unwrap();
        log.close();
        assert!(head.exists(), "{damage}: the writer wrote a new anchor");
        // Two more writers later, the first entry after the loss is still named.
        for _ in 0..2 {
            let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
            assert!(log.notes().is_empty(), "{damage}: {:?}", log.notes());
            log.record(rec(100)).await.unwrap();
            log.close();
        }
        let p = problem(&dir, &keys);
        assert_eq!((p.entry, p.line), (6, 2), "{damage}: {p:?}");
        assert!(p.file.ends_with("000002.log"), "{damage}: {p:?}");
        assert!(
            p.message
                .contains("found the HEAD anchor missing or damaged"),
            "{damage}: {p:?}"
        );
        // `show` still shows every entry, with the break.
        let shown = show(&dir, &keys, &Filter::default()).unwrap();
        assert_eq!(shown.entries.len(), 8, "{damage}");
        assert_eq!(shown.chain_broken_at, Some(6), "{damage}");
        // Damage made later is still found: the walk goes on past the mark, and the anchor
        // (now naming entry 8) shows the end cut off again.
        let last = files(&dir).last().unwrap().clone();
        let mut l = lines(&last);
        assert_eq!(l.len(), 2, "{damage}: header + entry 8");
        l.truncate(1);
        put_lines(&last, &l);
        let p = problem(&dir, &keys);
        assert!(
            p.message
                .contains("truncated: the anchor records entry 8 but the log ends at entry 7")
                && p.message.contains("found the HEAD anchor missing"),
            "{damage}: {p:?}"
        );
        // The same again (anchor deleted with the cut): a second mark, named beside the first
        // (entry 8 again: the cut entry's number is reused).
        std::fs::remove_file(&head).unwrap();
        let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
        log.record(rec(101)).await.unwrap();
        log.close();
        let p = problem(&dir, &keys);
        assert!(
            p.message.starts_with("entries 6, 8 (the first in file"),
            "{damage}: {p:?}"
        );
    }
}

/// A new log's anchor is written before its first entry: a log with entries and no anchor
/// is then always one whose anchor was removed, never one whose first writer crashed before
/// its first anchor update (which the mark above would report as a loss).
#[tokio::test]
async fn a_new_log_is_anchored_before_its_first_entry() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("audit");
    let keys = AuditKeys::for_tests(7);
    let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
    let head = writer::head_path(&dir);
    assert!(head.exists(), "anchored before any entry");
    let r = verify(&dir, &keys, None).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert!(matches!(r.anchor, AnchorCheck::Empty), "{r:?}");
    // The process dies right after its first entry, before its syncer updates the anchor
    // (simulated: the anchor put back as it was before that entry).
    let genesis = std::fs::read(&head).unwrap();
    log.record(rec(1)).await.unwrap();
    log.close();
    std::fs::write(&head, genesis).unwrap();
    let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
    assert!(log.notes().is_empty(), "{:?}", log.notes());
    log.record(rec(2)).await.unwrap();
    log.close();
    let r = verify(&dir, &keys, None).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.entries, 2);
}

#[tokio::test]
async fn a_log_or_anchor_respelled_in_uppercase_hex_is_reported() {
    // Same bytes once decoded, so the MACs would still check out: the readers accept one
    // spelling only, so that a file that verifies is the file that was written.
    let (_t, dir, keys) = log_of(3).await;
    let log = files(&dir).remove(0);
    let good = lines(&log);
    let mut l = good.clone();
    let (magic, salt) = l[0].trim_end().rsplit_once(' ').unwrap();
    assert!(salt.bytes().any(|b| b.is_ascii_lowercase()), "{salt}");
    l[0] = format!("{magic} {}\n", salt.to_ascii_uppercase());
    put_lines(&log, &l);
    assert_eq!(problem(&dir, &keys).entry, 1);
    put_lines(&log, &good);
    assert!(verify(&dir, &keys, None).unwrap().is_clean());

    let head = writer::head_path(&dir);
    let anchor = std::fs::read_to_string(&head).unwrap();
    let fields: Vec<&str> = anchor.trim_end().split(' ').collect();
    for i in [fields.len() - 2, fields.len() - 1] {
        let mut f = fields.clone();
        let upper = f[i].to_ascii_uppercase();
        assert_ne!(upper, f[i]);
        f[i] = &upper;
        std::fs::write(&head, f.join(" ") + "\n").unwrap();
        assert!(problem(&dir, &keys).message.contains("anchor is damaged"));
    }
    std::fs::write(&head, anchor).unwrap();
    assert!(verify(&dir, &keys, None).unwrap().is_clean());
}

#[tokio::test]
async fn wrong_key_fails_everything() {
    let (_t, dir, _keys) = log_of(3).await;
    let p = problem(&dir, &AuditKeys::for_tests(8));
    assert_eq!(p.entry, 1);
}

#[tokio::test]
async fn torn_last_line_is_reported_and_the_chain_continues() {
    let (_t, dir, keys) = log_of(5).await;
    let f = files(&dir)[0].clone();
    // A crash in the middle of a write: half a line, no newline.
    let mut text = std::fs::read(&f).unwrap();
    text.extend_from_slice(b"6 1700000000000 AAAA");
    std::fs::write(&f, &text).unwrap();
    let r = verify(&dir, &keys, None).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.torn, vec!["audit-000001.log line 7".to_owned()]);
    // The next writer starts a new file and continues from entry 5.
    write_entries(&dir, &keys, 6, 3, AuditOptions::default()).await;
    let r = verify(&dir, &keys, None).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!((r.entries, r.files), (8, 2));
    let all = show(&dir, &keys, &Filter::default()).unwrap();
    assert_eq!(all.entries.len(), 8);
    assert_eq!(all.entries[7].record, rec(8));
}

#[tokio::test]
async fn reopen_continues_the_chain_and_rotation_splits_files() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("audit");
    let keys = AuditKeys::for_tests(1);
    let small = AuditOptions {
        max_file_bytes: 600,
        ..Default::default()
    };
    for round in 0..3 {
        // One at a time: rotation is checked per written group.
        let log = AuditLog::open(&dir, &keys, small.clone()).unwrap();
        for i in 0..10 {
            log.record(rec(round * 10 + i + 1)).await.unwrap();
        }
    }
    let r = verify(&dir, &keys, None).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.entries, 30);
    assert!(
        r.files > 3,
        "rotation made more files than restarts: {}",
        r.files
    );
    // A head kept elsewhere: still in the log, so it verifies; a made-up one does not.
    let h = (r.head_seq, r.head_mac.clone());
    assert!(verify(&dir, &keys, Some((h.0, &h.1))).unwrap().is_clean());
    let other = "0".repeat(64);
    assert!(!verify(&dir, &keys, Some((12, &other))).unwrap().is_clean());
    // A whole middle file removed.
    let f = files(&dir);
    std::fs::remove_file(&f[1]).unwrap();
    let p = problem(&dir, &keys);
    assert!(
        p.file == f[2].file_name().unwrap().to_string_lossy(),
        "{p:?}"
    );
}

#[tokio::test]
async fn rollback_of_log_and_anchor_is_caught_only_by_an_expected_head() {
    let (t, dir, keys) = log_of(4).await;
    let saved = t.path().join("saved");
    std::fs::create_dir(&saved).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), saved.join(e.file_name())).unwrap();
    }
    write_entries(&dir, &keys, 5, 4, AuditOptions::default()).await;
    let head = verify(&dir, &keys, None).unwrap();
    // Roll back both the log and its anchor to the saved copy.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::rename(&saved, &dir).unwrap();
    assert!(verify(&dir, &keys, None).unwrap().is_clean());
    let r = verify(&dir, &keys, Some((head.head_seq, &head.head_mac))).unwrap();
    assert!(r.problem.unwrap().message.contains("rolled back"));
}

#[tokio::test]
async fn failed_write_refuses_every_later_entry() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("audit");
    let keys = AuditKeys::for_tests(3);
    let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
    log.record(rec(1)).await.unwrap();
    // The directory swapped for a file: the next anchor update cannot be written.
    std::fs::rename(&dir, t.path().join("moved")).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let mut refused = false;
    for i in 2..200 {
        if log.record(rec(i)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(refused, "the log never failed");
    assert!(log.is_failed());
    assert!(log.submit(rec(500)).is_err());
    assert!(log.sync_point(log.mark()).await.is_err());
}

#[tokio::test]
async fn a_failed_log_recovers_once_it_can_be_written_and_the_chain_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("audit");
    let keys = AuditKeys::for_tests(4);
    let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
    for i in 1..=3 {
        log.record(rec(i)).await.unwrap();
    }
    let healthy = log.mark();
    assert!(log.sync_point(healthy).await.is_ok());
    assert!(
        !log.recover().unwrap(),
        "a working log has nothing to recover"
    );
    // The directory swapped for a file: the next anchor update fails the log.
    let moved = t.path().join("moved");
    std::fs::rename(&dir, &moved).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let mut written = 3;
    for i in 4..400 {
        if log.record(rec(i)).await.is_err() {
            break;
        }
        written = i;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(log.is_failed(), "the log never failed");
    let during = log.mark();
    // Still unwritable: the recovery fails and the log stays failed.
    assert!(log.recover().is_err());
    assert!(log.is_failed());
    assert!(log.record(rec(1000)).await.is_err());
    // Repaired: the log recovers and takes entries again, in a new file, chained on.
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&moved, &dir).unwrap();
    assert!(log.recover().unwrap());
    assert!(!log.is_failed());
    for i in 0..3 {
        log.record(rec(2000 + i)).await.unwrap();
    }
    // A mark from before the failure, or from during it, never passes again: an entry
    // submitted then may be missing.
    assert!(log.sync_point(healthy).await.is_err());
    assert!(log.sync_point(during).await.is_err());
    assert!(log.sync_point(log.mark()).await.is_ok());
    // A closed log passes no sync point (the hook's entries are refused from then on).
    let before_close = log.mark();
    log.close();
    assert!(log.sync_point(before_close).await.is_err());
    assert!(log.sync_point(log.mark()).await.is_err());
    drop(log);
    let r = verify(&dir, &keys, None).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.entries, written + 3, "{r:?}");
    assert_eq!(r.files, 2, "the recovery started a new file: {r:?}");
    // A syncer ran after the recovery: the anchor names the last entry.
    assert_eq!(r.anchor, crate::audit::AnchorCheck::Match, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_make_one_clean_chain() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("audit");
    let keys = AuditKeys::for_tests(5);
    let log = std::sync::Arc::new(AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8u64 {
        let log = log.clone();
        tasks.spawn(async move {
            for i in 0..250u64 {
                log.record(rec(w * 1000 + i)).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    log.close();
    let r = verify(&dir, &keys, None).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!((r.entries, r.anchor.clone()), (2000, AnchorCheck::Match));
    // Every record is there exactly once, and each writer's records are in its order.
    let all = show(&dir, &keys, &Filter::default()).unwrap().entries;
    let mut per_writer = vec![Vec::new(); 8];
    for e in &all {
        let p = e.record.path.as_deref().unwrap();
        let n: u64 = p.split('/').nth(2).unwrap().parse().unwrap();
        per_writer[(n / 1000) as usize].push(n % 1000);
    }
    for (w, got) in per_writer.iter().enumerate() {
        assert_eq!(*got, (0..250u64).collect::<Vec<_>>(), "writer {w}");
    }
}

/// The anchor follows a running writer: written right after the first fsync, then at most
/// every `anchor_interval`, and caught up once the writer goes idle (not only at close).
#[tokio::test]
async fn the_anchor_follows_a_running_writer_within_its_interval() {
    use super::writer::{HeadFile, read_head};
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("audit");
    let keys = AuditKeys::for_tests(9);
    let opts = AuditOptions {
        anchor_interval: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let log = AuditLog::open(&dir, &keys, opts).unwrap();
    let anchored = |dir: &Path| match read_head(dir, &keys).unwrap() {
        HeadFile::Valid(h) => h.seq,
        HeadFile::Missing => 0,
        HeadFile::Invalid => panic!("the anchor is damaged"),
    };
    log.record(rec(1)).await.unwrap();
    // The first fsync group writes the anchor at once (10 s at most: a busy disk).
    let mut first = 0;
    for _ in 0..2000 {
        first = anchored(&dir);
        if first == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(first, 1, "the first entry was never anchored");
    // More entries right after: synced, but the anchor waits for its interval...
    log.record(rec(2)).await.unwrap();
    log.record(rec(3)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        anchored(&dir),
        1,
        "the anchor was rewritten before its interval"
    );
    // ...and then catches up although nothing more is written and the log stays open.
    let mut caught_up = false;
    for _ in 0..3000 {
        if anchored(&dir) == 3 {
            caught_up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(caught_up, "the anchor never caught up with an idle writer");
    assert!(verify(&dir, &keys, None).unwrap().is_clean());
    log.close();
}

/// A writer opened on a log whose last entry is where the chain goes on offers that entry as
/// the head to record at once (the open made it durable): entries a crashed writer left
/// unrecorded are recorded at the next open, not only once the new writer writes. Regression
/// (re-test by a helper): a crash, a quiet restart of over two minutes, a burst and a second
/// crash made the next open take the system database for an older copy. Not for a cut log
/// (it chains to its anchor) nor an empty one.
#[tokio::test]
async fn a_reopened_log_offers_its_last_entry_as_the_head_to_record() {
    let (_t, dir, keys) = log_of(5).await;
    let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
    let head = log.anchored().expect("the last entry, before any new one");
    assert_eq!(head.seq, 5);
    assert_eq!(head, log.found_end().0);
    drop(log);

    let f = &files(&dir)[0];
    let mut l = lines(f);
    l.truncate(1 + 3);
    put_lines(f, &l);
    let cut = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
    assert_eq!(cut.anchored(), None, "a cut log chains to its anchor");
    drop(cut);

    let t = tempfile::tempdir().unwrap();
    let empty = AuditLog::open(&t.path().join("audit"), &keys, AuditOptions::default()).unwrap();
    assert_eq!(empty.anchored(), None);
}

/// An entry of `action` on `path` (and `to`) in filesystem `fs`, by `user`, with `status`.
fn entry(action: Action, fs: &str, path: &str, to: Option<&str>, status: u16) -> Record {
    Record {
        action,
        user: Some("app".into()),
        fs: Some(fs.into()),
        path: Some(path.into()),
        to: to.map(str::to_owned),
        client: Some("127.0.0.1".into()),
        status,
        detail: None,
    }
}

async fn log_with(records: &[Record]) -> (tempfile::TempDir, PathBuf, AuditKeys) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("audit");
    let keys = AuditKeys::for_tests(7);
    let log = AuditLog::open(&dir, &keys, AuditOptions::default()).unwrap();
    for r in records {
        log.submit(r.clone()).unwrap();
    }
    log.close();
    (t, dir, keys)
}

fn seqs(dir: &Path, keys: &AuditKeys, filter: Filter) -> Vec<u64> {
    show(dir, keys, &filter)
        .unwrap()
        .entries
        .iter()
        .map(|e| e.seq)
        .collect()
}

fn by_path(path: &str) -> Filter {
    Filter {
        path: Some(path.into()),
        ..Default::default()
    }
}

/// "Who read or deleted patient 200's file": the answer follows the file through a move of
/// its own, a move of a directory above it, and a recursive delete of a directory above it;
/// a name it left is no longer followed (a new file there is another file), but the name
/// asked for always is; a move that was refused renames nothing; other filesystems' same
/// names are not the file.
#[tokio::test]
async fn a_path_is_followed_through_moves_and_deletes_above_it() {
    use Action::*;
    let (_t, dir, keys) = log_with(&[
        entry(Write, "f", "/patients/200/a.pdf", None, 201), // 1
        entry(Move, "f", "/patients/200", Some("/old/200"), 201), // 2: the directory
        entry(Read, "f", "/old/200/a.pdf", None, 200),       // 3
        entry(Move, "f", "/old/200/a.pdf", Some("/old/200/b.pdf"), 201), // 4: the file
        entry(Read, "f", "/old/200/b.pdf", None, 200),       // 5
        entry(Read, "f", "/old/200/a.pdf", None, 404),       // 6: the name it left
        entry(Move, "f", "/old", Some("/x"), 412),           // 7: refused: nothing moved
        entry(Read, "f", "/x/200/b.pdf", None, 404),         // 8
        entry(Read, "g", "/old/200/b.pdf", None, 200),       // 9: another filesystem
        entry(Delete, "f", "/old", None, 204),               // 10: a directory above
        entry(Write, "f", "/old/200/b.pdf", None, 201),      // 11: a new file, not it
        entry(Write, "f", "/patients/200/a.pdf", None, 201), // 12: the name asked for
        entry(Read, "f", "/patients/2000/a.pdf", None, 200), // 13: not under /patients/200
    ])
    .await;
    assert_eq!(
        seqs(&dir, &keys, by_path("/patients/200/a.pdf")),
        [1, 2, 3, 4, 5, 7, 10, 12]
    );
    // The directory asked with '/': everything in it, wherever it went; a file moved out of
    // it is followed under its new name.
    let (_t2, dir2, keys2) = log_with(&[
        entry(Write, "f", "/patients/173/rx.pdf", None, 201), // 1
        entry(
            Move,
            "f",
            "/patients/173/rx.pdf",
            Some("/archive/rx-173.pdf"),
            201,
        ), // 2
        entry(Read, "f", "/archive/rx-173.pdf", None, 200),   // 3
        entry(Move, "f", "/patients", Some("/p"), 201),       // 4: above it
        entry(List, "f", "/p/173", None, 200),                // 5
        entry(Read, "f", "/p/1730/x", None, 200),             // 6: another directory
        entry(Delete, "f", "/archive/rx-173.pdf", None, 204), // 7
        entry(Read, "f", "/archive/rx-173.pdf", None, 404),   // 8: gone: not followed
    ])
    .await;
    assert_eq!(
        seqs(&dir2, &keys2, by_path("/patients/173/")),
        [1, 2, 3, 4, 5, 7]
    );
    // Limited to one filesystem, the other's moves rename nothing.
    let only_g = Filter {
        fs: Some("g".into()),
        ..by_path("/patients/200/a.pdf")
    };
    assert_eq!(seqs(&dir, &keys, only_g), Vec::<u64>::new());
}

/// `--action`, `--status`, `--from-entry` (oldest first, with the next page's start), the
/// admin commands about a user found by `--user`, and the filters that can match nothing
/// refused.
#[tokio::test]
async fn actions_statuses_pages_and_the_user_an_admin_command_is_about() {
    use Action::*;
    let mut grant = Record::new(Admin, 200);
    grant.user = Some("uid:0".into());
    grant.fs = Some("records".into());
    grant.detail = Some(r#"grant {"user":"nurse","fs":"records","read_only":true}"#.into());
    let mut create = Record::new(Admin, 200);
    create.user = Some("uid:0".into());
    create.detail = Some(
        r#"create-user {"name":"nurse","grants":[{"fs":"records","read_only":true}],"public_key_sha256":"ab"}"#
            .into(),
    );
    let mut replaced = Record::new(Admin, 200);
    replaced.user = Some("uid:0".into());
    replaced.detail = Some(
        r#"replace-key {"public_key_sha256":"SHA256:n","user":"nurse"} {"old_key_sha256":"SHA256:o","new_key_sha256":"SHA256:n"}"#
            .into(),
    );
    let mut failed = Record::new(Admin, 400);
    failed.user = Some("uid:0".into());
    failed.detail = Some(r#"revoke {"user":"nursery","fs":null}"#.into());
    let (_t, dir, keys) = log_with(&[
        create,                                    // 1
        entry(Read, "records", "/a", None, 200),   // 2
        entry(Write, "records", "/a", None, 403),  // 3
        entry(Read, "records", "/b", None, 404),   // 4
        grant,                                     // 5
        failed,                                    // 6
        entry(Delete, "records", "/a", None, 204), // 7
        entry(Read, "records", "/a", None, 401),   // 8
        replaced,                                  // 9
    ])
    .await;
    let f = |actions: &[&str], statuses: &[&str]| Filter {
        actions: actions.iter().map(|s| s.to_string()).collect(),
        statuses: statuses.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(seqs(&dir, &keys, f(&["read"], &[])), [2, 4, 8]);
    assert_eq!(seqs(&dir, &keys, f(&["read", "delete"], &["2xx"])), [2, 7]);
    assert_eq!(seqs(&dir, &keys, f(&[], &["4xx"])), [3, 4, 6, 8]);
    assert_eq!(seqs(&dir, &keys, f(&["admin"], &["2xx"])), [1, 5, 9]);
    assert_eq!(seqs(&dir, &keys, f(&[], &["403", "401"])), [3, 8]);
    let nurse = Filter {
        user: Some("nurse".into()),
        ..Default::default()
    };
    assert_eq!(seqs(&dir, &keys, nurse), [1, 5, 9]);
    // A create-user granting the filesystem is about it (it has none of its own).
    let records = Filter {
        fs: Some("records".into()),
        actions: vec!["admin".into()],
        ..Default::default()
    };
    assert_eq!(seqs(&dir, &keys, records), [1, 5]);

    // Paging from an entry: the oldest first, and where the next page starts.
    let page = |from: u64| Filter {
        from_seq: Some(from),
        ..f(&["read"], &[])
    };
    let s = show_last(&dir, &keys, &page(1), 2).unwrap();
    assert_eq!(s.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 4]);
    assert_eq!((s.omitted, s.next_from), (1, Some(8)));
    let s = show_last(&dir, &keys, &page(8), 2).unwrap();
    assert_eq!(s.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [8]);
    assert_eq!((s.omitted, s.next_from), (0, None));
    // Without it, the newest, as before, and no next page.
    let s = show_last(&dir, &keys, &f(&["read"], &[]), 2).unwrap();
    assert_eq!(s.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 8]);
    assert_eq!((s.omitted, s.next_from), (1, None));

    for (bad, why) in [
        (by_path("patients/173/rx.pdf"), "not a path EFS records"),
        (by_path("/patients//173/rx.pdf"), "not a path EFS records"),
        (by_path("/patients/./173"), "not a path EFS records"),
        (f(&["reads"], &[]), "no such action"),
        (f(&[], &["4x"]), "give a status code"),
        (f(&[], &["600"]), "give a status code"),
    ] {
        let e = check_filter(&bad).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
    check_filter(&by_path("/patients/173/")).unwrap();
    check_filter(&by_path("/")).unwrap();
    check_filter(&f(&["login-failed", "admin"], &["5XX", "201"])).unwrap();
}

/// With the head the data dir recorded: an entry edited in the middle of a log that still
/// holds the recorded entry is named as an edit alone; a log that ends before it is named as
/// deleted or put back (the edit read as both).
#[tokio::test]
async fn an_edit_before_the_recorded_head_is_not_called_a_log_put_back() {
    let (_t, dir, keys) = log_of(10).await;
    let r = verify(&dir, &keys, None).unwrap();
    let mut mac = [0u8; 32];
    mac.copy_from_slice(&hex::decode(&r.head_mac).unwrap());
    let recorded = line::Head {
        seq: r.head_seq,
        mac,
    };
    let f = &files(&dir)[0];
    let clean = lines(f);
    let mut l = clean.clone();
    let mut b = l[4].clone().into_bytes();
    let i = b.iter().position(|&c| c == b' ').unwrap() + 1;
    let i = i + b[i..].iter().position(|&c| c == b' ').unwrap() + 3;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    l[4] = String::from_utf8(b).unwrap();
    put_lines(f, &l);
    let edited = read::verify_recorded(&dir, &keys, None, Some(recorded))
        .unwrap()
        .problem
        .unwrap();
    assert!(edited.message.contains("entry 4"), "{edited:?}");
    assert!(edited.message.contains("MAC mismatch"), "{edited:?}");
    assert!(
        !edited.message.contains("put back"),
        "an edit read as a log put back: {edited:?}"
    );
    // The recorded entry itself edited (the usual head after a clean stop: the last entry):
    // an edit too (it was called a log put back).
    let mut last = clean.clone();
    let mut b = last[10].clone().into_bytes();
    let i = b.iter().position(|&c| c == b' ').unwrap() + 1;
    let i = i + b[i..].iter().position(|&c| c == b' ').unwrap() + 3;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    last[10] = String::from_utf8(b).unwrap();
    put_lines(f, &last);
    let at_head = read::verify_recorded(&dir, &keys, None, Some(recorded))
        .unwrap()
        .problem
        .unwrap();
    assert!(at_head.message.contains("entry 10"), "{at_head:?}");
    assert!(!at_head.message.contains("put back"), "{at_head:?}");
    // The same edit in a log that ends before the recorded entry: both said.
    put_lines(f, &l[..7]);
    let cut = read::verify_recorded(&dir, &keys, None, Some(recorded))
        .unwrap()
        .problem
        .unwrap();
    assert!(cut.message.contains("MAC mismatch"), "{cut:?}");
    assert!(
        cut.message.contains("this data dir recorded entry 10"),
        "{cut:?}"
    );
}

/// The names are found by path, not by a prefix of the text: `/a b` is not under `/a`;
/// a recorded move of the root renames nothing (it panicked on a slice); past the most names
/// followed, the ones not followed are counted (the answer said nothing).
#[test]
fn names_are_followed_by_path_and_counted_past_the_cap() {
    use Action::*;
    let asked = |p: &str| {
        read::PathTrack::new(&Filter {
            path: Some(p.into()),
            ..Default::default()
        })
        .unwrap()
    };
    let mut t = asked("/a/");
    assert!(t.matches(&entry(Read, "f", "/a/x", None, 200)));
    assert!(!t.matches(&entry(Read, "f", "/a b/x", None, 200)));
    assert!(!t.matches(&entry(Read, "f", "/ab", None, 200)));
    // A move of a sibling whose name extends the asked one's renames nothing.
    t.follow(&entry(Move, "f", "/a b", Some("/c"), 201));
    assert!(!t.matches(&entry(Read, "f", "/c/x", None, 200)));
    // A delete of a sibling is not about it either.
    assert!(!t.matches(&entry(Delete, "f", "/a b", None, 204)));
    assert!(t.matches(&entry(Delete, "f", "/", None, 204)));
    t.follow(&entry(Move, "f", "/", Some("/z"), 201));
    assert!(!t.matches(&entry(Read, "f", "/z/a/x", None, 200)));

    let mut t = asked("/out/");
    t.cap = 3;
    for i in 0..4 {
        t.follow(&entry(
            Move,
            "f",
            &format!("/out/{i}"),
            Some(&format!("/moved/{i}")),
            201,
        ));
    }
    // The asked name and one moved file (an exact and a directory name) fit; the rest not.
    assert!(t.matches(&entry(Read, "f", "/moved/0", None, 200)));
    assert!(!t.matches(&entry(Read, "f", "/moved/3", None, 200)));
    assert_eq!(t.dropped, 6);
}

/// The audit directory a writer creates (a first start; `efsctl audit new-log`, which moved
/// the old one aside) is synced into its parent, so that a power cut cannot take it, and the
/// entries in it, away. Only that the sync is issued can be checked here (no power cut).
#[tokio::test]
async fn a_new_audit_directory_is_synced_into_its_parent() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("audit");
    let keys = AuditKeys::for_tests(7);
    write_entries(&dir, &keys, 1, 1, AuditOptions::default()).await;
    let synced = crate::blob::synced::under(t.path());
    assert!(synced.iter().any(|d| d == t.path()), "{synced:?}");
}
