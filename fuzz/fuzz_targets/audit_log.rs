//! The audit log reader: `efs_core::audit::verify` and `show` on a genuine log the fuzzer
//! edits.
//!
//! A genuine log of five entries and its HEAD anchor are written once per process, with fixed
//! keys. Each input is an edit script on the two files, 4 bytes per edit: position (u16,
//! little-endian, modulo the length), operation (its top bit picks the anchor instead of the
//! log; the rest: overwrite, insert or delete one byte, truncate there, or flip an ASCII
//! letter's case, which finds a parser that reads two spellings as one) and a byte. What is
//! left over (under 4 bytes) is appended to the log.
//!
//! Oracle: nothing panics; `verify` finds the log clean only when the anchor is the genuine
//! one and the log is the genuine one, or the genuine one followed by a torn line (bytes
//! without a newline: a write cut short, which the reader reports apart and does not count as
//! a problem). The lines are strict and the MAC chain and the anchor cover the rest, so any
//! other edit is a problem. A clean log shows its five entries.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use efs_core::audit::{Action, AuditKeys, AuditLog, AuditOptions, Filter, Record, show, verify};
use efs_format::Key32;
use libfuzzer_sys::fuzz_target;

const ENTRIES: usize = 5;

struct Genuine {
    keys: AuditKeys,
    /// A directory holding the genuine HEAD anchor; the log file is rewritten per input.
    dir: PathBuf,
    log_name: String,
    log: Vec<u8>,
    anchor: Vec<u8>,
    _tmp: tempfile::TempDir,
}

fn genuine() -> &'static Genuine {
    static G: OnceLock<Genuine> = OnceLock::new();
    G.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = tmp.path().join("audit");
        let keys = AuditKeys::derive(&Key32::from_bytes([0x41; 32]));
        let log = AuditLog::open(&dir, &keys, AuditOptions::default()).expect("open the log");
        for i in 0..ENTRIES {
            let mut r = Record::new(Action::Read, 200);
            r.user = Some(format!("user{i}"));
            r.path = Some(format!("/patients/{i}/report.pdf"));
            log.submit(r).expect("an entry is written");
        }
        log.close();
        let mut logs: Vec<String> = std::fs::read_dir(&dir)
            .expect("the log directory")
            .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .collect();
        assert_eq!(logs.len(), 1, "{logs:?}");
        let log_name = logs.remove(0);
        let log = std::fs::read(dir.join(&log_name)).expect("the log file");
        let anchor = std::fs::read(dir.join("HEAD")).expect("the anchor");
        let report = verify(&dir, &keys, None).expect("verify");
        assert!(report.is_clean() && report.entries == ENTRIES as u64, "{report:?}");
        Genuine { keys, dir, log_name, log, anchor, _tmp: tmp }
    })
}

/// The edited log and anchor.
fn edit(log: &[u8], anchor: &[u8], script: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut log, mut anchor) = (log.to_vec(), anchor.to_vec());
    let mut ops = script.chunks_exact(4);
    for op in ops.by_ref() {
        let out = if op[2] & 0x80 == 0 { &mut log } else { &mut anchor };
        let at = usize::from(u16::from_le_bytes([op[0], op[1]])) % (out.len() + 1);
        match (op[2] & 0x7f) % 5 {
            0 if at < out.len() => out[at] = op[3],
            1 => out.insert(at, op[3]),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 => out.truncate(at),
            4 if at < out.len() && out[at].is_ascii_alphabetic() => out[at] ^= 0x20,
            _ => {}
        }
    }
    log.extend_from_slice(ops.remainder());
    (log, anchor)
}

fuzz_target!(|script: &[u8]| {
    let g = genuine();
    let (edited, anchor) = edit(&g.log, &g.anchor, script);
    std::fs::write(g.dir.join(&g.log_name), &edited).expect("write the edited log");
    std::fs::write(g.dir.join("HEAD"), &anchor).expect("write the edited anchor");

    let report = verify(&g.dir, &g.keys, None).expect("verify reads the directory");
    let shown = show(&g.dir, &g.keys, &Filter::default()).expect("show reads the directory");
    if report.is_clean() {
        let torn_tail = edited
            .strip_prefix(g.log.as_slice())
            .is_some_and(|rest| !rest.contains(&b'\n'));
        assert!(
            torn_tail && anchor == g.anchor,
            "an edited log verified clean: {report:?}\n{}\nanchor: {}",
            String::from_utf8_lossy(&edited),
            String::from_utf8_lossy(&anchor)
        );
        assert_eq!(report.entries, ENTRIES as u64);
        assert_eq!(shown.entries.len(), ENTRIES);
    }
});
