//! Reading the audit log: [`verify`] walks the chain and names the first bad entry;
//! [`show`] decrypts the entries that match a [`Filter`]. Both read the files as they are,
//! so they work beside a running writer (a group being written shows as a torn last line).

use std::path::Path;

use serde::Serialize;

use super::line::{self, ChainMac, FileKey, GENESIS, Head, UNANCHORED};
use super::writer::{HeadFile, list_files, read_head};
use super::{AuditKeys, Record};

/// The first thing wrong in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The entry number expected at that place (0: not about one entry).
    pub entry: u64,
    /// The file.
    pub file: String,
    /// The line (1-based; 0: not about one line).
    pub line: u64,
    /// What is wrong, for people.
    pub message: String,
}

/// What the HEAD anchor says about the end of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum AnchorCheck {
    /// The log ends exactly at the anchor.
    Match,
    /// The log goes on past the anchor (entries written since the last fsync group; normal
    /// while the server runs, or after a crash).
    Behind {
        /// The anchor's entry.
        anchor: u64,
    },
    /// The log has no anchor (and no entry either: a new log).
    Empty,
    /// Not checked: the chain broke before.
    NotChecked,
}

/// The result of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Audit files read.
    pub files: usize,
    /// Entries whose MAC checked out, in order, before any problem.
    pub entries: u64,
    /// The last good entry: number and MAC (hex). Keep it off the box to detect a later
    /// rollback of both the log and its anchor (`--expect-head`).
    pub head_seq: u64,
    /// See `head_seq`.
    pub head_mac: String,
    /// The anchor's verdict.
    pub anchor: AnchorCheck,
    /// Torn last lines (writes cut short by a crash, or in progress): "FILE line N".
    pub torn: Vec<String>,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    /// True when the chain, the anchor and the expected head (if given) all check out.
    pub fn is_clean(&self) -> bool {
        self.problem.is_none()
    }
}

/// One line of the log, as read.
enum Item {
    Header(Option<[u8; 16]>),
    Entry(Option<line::RawEntry>),
    Torn,
}

/// Calls `f(file, line_no, item)` for every line of every file, in order; stops early when
/// `f` returns false.
fn scan(
    dir: &Path,
    mut f: impl FnMut(&str, u64, Item) -> bool,
) -> std::io::Result<Vec<(u32, String)>> {
    let files = list_files(dir)?;
    for (_, name) in &files {
        let data = std::fs::read(dir.join(name))?;
        for (i, l) in data.split_inclusive(|&b| b == b'\n').enumerate() {
            let no = i as u64 + 1;
            let item = match l.strip_suffix(b"\n") {
                None => Item::Torn,
                Some(l) if i == 0 => Item::Header(line::parse_header(l)),
                Some(l) => Item::Entry(line::parse_entry(l)),
            };
            if !f(name, no, item) {
                return Ok(files);
            }
        }
    }
    Ok(files)
}

fn bad_line(entry: u64, file: &str, line: u64, what: &str) -> Problem {
    Problem {
        entry,
        file: file.to_owned(),
        line,
        message: format!(
            "entry {entry} (file {file} line {line}): {what} — edited, inserted or deleted from here on"
        ),
    }
}

/// Walks the whole chain and checks it against the anchor and, if given, against a head
/// (`seq`, MAC hex) that the operator kept elsewhere.
pub fn verify(
    dir: &Path,
    keys: &AuditKeys,
    expect_head: Option<(u64, &str)>,
) -> std::io::Result<VerifyReport> {
    verify_recorded(dir, keys, expect_head, None)
}

/// [`verify`], also against the head the data dir recorded of its log (`recorded`, from the
/// system database): a log that ends before it, or holds another entry there, was deleted,
/// or put back from an older copy (its own anchor with it), or replaced.
pub(crate) fn verify_recorded(
    dir: &Path,
    keys: &AuditKeys,
    expect_head: Option<(u64, &str)>,
    recorded: Option<Head>,
) -> std::io::Result<VerifyReport> {
    // The anchor first: it only ever names entries already written, so reading it before
    // the files never makes a log that grows meanwhile look truncated.
    let anchor = read_head(dir, keys)?;
    let anchor_seq = match &anchor {
        HeadFile::Valid(h) => Some(h.seq),
        _ => None,
    };
    let expect_seq = expect_head.map(|(s, _)| s);
    let mac = ChainMac::new(keys);
    let mut prev = GENESIS;
    let mut expected = 1u64;
    let mut salt: Option<[u8; 16]> = None;
    let mut problem = None;
    let mut torn = Vec::new();
    let mut mac_at_anchor = None;
    let mut mac_at_expect = None;
    let mut mac_at_recorded = None;
    let recorded_seq = recorded.map(|r| r.seq);
    // Every first entry of a writer that found the anchor lost: (entry, file, line).
    let mut lost_anchor: Vec<(u64, String, u64)> = Vec::new();
    // Whether a line at or past the first problem carries the recorded head's number and
    // MAC (not checked): with a break in place (below), the log then still holds that entry,
    // and the break reads as an edit, not as a log deleted or put back (one put back, then
    // written on past the head's number, has other MACs there).
    let mut holds_recorded = false;
    // A line that carries the recorded head's number and MAC (not checked against the chain).
    let is_recorded = |e: &line::RawEntry| {
        recorded.is_some_and(|r| e.seq == r.seq && line::mac_eq(&e.mac, &r.mac))
    };
    // Whether the chain broke at a line with the number expected there (its body, time or
    // MAC changed in place), not at a jump in the numbering (lines removed, or a writer that
    // went on from the recorded head after the log was deleted or put back).
    let mut edited_in_place = false;
    let files = scan(dir, |file, no, item| {
        if problem.is_some() {
            if let Item::Entry(Some(e)) = item {
                holds_recorded |= is_recorded(&e);
            }
            return recorded_seq.is_some() && !holds_recorded;
        }
        match item {
            Item::Torn => torn.push(format!("{file} line {no}")),
            Item::Header(s) => {
                salt = s;
                if s.is_none() {
                    problem = Some(bad_line(expected, file, no, "damaged file header"));
                }
            }
            Item::Entry(None) => {
                problem = Some(bad_line(expected, file, no, "unreadable line"));
            }
            Item::Entry(Some(e)) => {
                let s = salt.expect("a header precedes every entry of a file");
                let m = mac.compute(&prev, e.seq, e.time_ms, &s, &e.sealed);
                let chained = line::mac_eq(&m, &e.mac) && e.seq == expected;
                // The first entry of a writer that found the anchor lost: named (for good),
                // and the walk goes on, so that damage after it is still found.
                let unanchored = !chained
                    && e.seq == expected
                    && line::mac_eq(
                        &mac.compute(&UNANCHORED, e.seq, e.time_ms, &s, &e.sealed),
                        &e.mac,
                    );
                if unanchored {
                    lost_anchor.push((expected, file.to_owned(), no));
                }
                if !chained && !unanchored {
                    edited_in_place = e.seq == expected;
                    // The recorded entry itself, its body or time changed: its line still
                    // carries the recorded MAC.
                    holds_recorded |= is_recorded(&e);
                    problem = Some(bad_line(expected, file, no, "MAC mismatch"));
                } else {
                    if Some(e.seq) == anchor_seq {
                        mac_at_anchor = Some(e.mac);
                    }
                    if Some(e.seq) == expect_seq {
                        mac_at_expect = Some(e.mac);
                    }
                    if Some(e.seq) == recorded_seq {
                        mac_at_recorded = Some(e.mac);
                    }
                    prev = e.mac;
                    expected += 1;
                }
            }
        }
        problem.is_none() || recorded_seq.is_some()
    })?;
    let head = Head {
        seq: expected - 1,
        mac: prev,
    };
    let last_file = files.last().map(|(_, n)| n.clone()).unwrap_or_default();
    let mut check = AnchorCheck::NotChecked;
    if problem.is_none() {
        let at_end = |message: String| Problem {
            entry: head.seq + 1,
            file: last_file.clone(),
            line: 0,
            message,
        };
        match anchor {
            HeadFile::Missing if head.seq == 0 => check = AnchorCheck::Empty,
            HeadFile::Missing => {
                problem = Some(at_end(format!(
                    "the HEAD anchor is missing (the log has {} entries): it was deleted, or the log was copied without it",
                    head.seq
                )))
            }
            HeadFile::Invalid => {
                problem = Some(at_end(
                    "the HEAD anchor is damaged or was not written with this data dir's key".into(),
                ))
            }
            HeadFile::Valid(a) if a.seq > head.seq => {
                problem = Some(at_end(format!(
                    "truncated: the anchor records entry {} but the log ends at entry {} — entries were removed from the end",
                    a.seq, head.seq
                )))
            }
            HeadFile::Valid(a) => match mac_at_anchor {
                Some(m) if line::mac_eq(&m, &a.mac) => {
                    check = if a.seq == head.seq {
                        AnchorCheck::Match
                    } else {
                        AnchorCheck::Behind { anchor: a.seq }
                    }
                }
                _ if a.seq == 0 && head.seq == 0 => check = AnchorCheck::Empty,
                _ if a.seq == 0 => check = AnchorCheck::Behind { anchor: 0 },
                _ => {
                    problem = Some(at_end(format!(
                        "entry {} differs from the one the anchor records — the log was replaced or rewritten",
                        a.seq
                    )))
                }
            },
        }
    }
    // A log that breaks, or ends, before the head the data dir recorded: the walk's problem
    // says where, and this what it means.
    if let (Some(p), Some(r)) = (problem.as_mut(), recorded)
        && r.seq > head.seq
        && !(edited_in_place && holds_recorded)
    {
        p.message.push_str(&format!(
            " (this data dir recorded entry {} of its log, in the system database: the log was deleted, or an older copy of it put back, or it was changed before that entry)",
            r.seq
        ));
    }
    if problem.is_none()
        && let Some(r) = recorded
        && r.seq > 0
    {
        let message = if r.seq > head.seq {
            Some(format!(
                "the log ends at entry {} but this data dir recorded entry {} of it (in the system database): the log was deleted, or an older copy of it put back",
                head.seq, r.seq
            ))
        } else if !mac_at_recorded.is_some_and(|m| line::mac_eq(&m, &r.mac)) {
            Some(format!(
                "entry {} differs from the one this data dir recorded (in the system database) — the log was replaced or rewritten",
                r.seq
            ))
        } else {
            None
        };
        problem = message.map(|message| Problem {
            entry: r.seq.min(head.seq + 1),
            file: last_file.clone(),
            line: 0,
            message,
        });
    }
    if problem.is_none()
        && let Some((seq, want)) = expect_head
    {
        let ok =
            seq == 0 || mac_at_expect.is_some_and(|m| want.eq_ignore_ascii_case(&hex::encode(m)));
        if !ok {
            problem = Some(Problem {
                entry: seq,
                file: last_file.clone(),
                line: 0,
                message: format!(
                    "the expected head (entry {seq}) is not in this log — it was rolled back or replaced"
                ),
            });
        }
    }
    // Lost anchors are reported (each of them: a second loss must not hide behind a first
    // one already looked into) when nothing else is, and beside what else is found.
    let lost = lost_anchor.first().map(|(entry, file, line)| {
        let which = match lost_anchor.len() {
            1 => format!("entry {entry} (file {file} line {line})"),
            _ => format!(
                "entries {} (the first in file {file} line {line})",
                lost_anchor
                    .iter()
                    .map(|(e, ..)| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Problem {
            entry: *entry,
            file: file.clone(),
            line: *line,
            message: format!(
                "{which}: written by a writer that found the HEAD anchor missing or damaged — entries may have been cut off the log's end before it, which the lost anchor would have shown"
            ),
        }
    });
    problem = match (problem, lost) {
        (None, lost) => lost,
        (Some(mut p), Some(lost)) => {
            p.message = format!("{}; and {}", p.message, lost.message);
            Some(p)
        }
        (p, None) => p,
    };
    Ok(VerifyReport {
        files: files.len(),
        entries: head.seq,
        head_seq: head.seq,
        head_mac: hex::encode(head.mac),
        anchor: check,
        torn,
        problem,
    })
}

/// Which entries [`show`] returns. Every set field must match.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    /// The user, exactly: the caller of a request, the operator of an admin command, and the
    /// user an admin command is about (`create-user`, `grant`, `revoke`, `replace-key`,
    /// `bind-cert`, `delete-user`).
    pub user: Option<String>,
    /// The filesystem, exactly (also a `create-user` granting it).
    pub fs: Option<String>,
    /// A path, exactly; with a trailing `/`, that directory and everything under it. Followed
    /// through moves: a move matches by its source or its destination, and from a move on
    /// the new name matches too (a move of a directory above it included); a delete or a
    /// move of a directory above it matches (see [`PathTrack`]).
    pub path: Option<String>,
    /// Entries at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Entries before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// Only these actions (their names, [`super::Action::name`]); empty: every action.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Only these statuses: codes (`403`) or classes (`4xx`); empty: every status.
    #[serde(default)]
    pub statuses: Vec<String>,
    /// Entries numbered from this one on; the limit then keeps the oldest matching ones (a
    /// cursor to page through the whole log in order), not the newest.
    #[serde(default)]
    pub from_seq: Option<u64>,
}

/// Why a [`Filter`] can match nothing: a path EFS never records, an unknown action or status.
pub fn check_filter(f: &Filter) -> Result<(), String> {
    if let Some(p) = &f.path
        && let Err(e) = crate::path::EfsPath::parse(p)
    {
        return Err(format!(
            "--path {p:?}: not a path EFS records ({e}): paths are absolute and normalised, \
             as in /patients/173/rx.pdf, or /patients/173/ for the directory and everything \
             under it; names are given decoded (a space, not %20)"
        ));
    }
    for a in &f.actions {
        if super::Action::from_name(a).is_none() {
            return Err(format!(
                "--action {a:?}: no such action (give one or more of {}, separated by commas)",
                super::Action::ALL
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for s in &f.statuses {
        if status_pattern(s).is_none() {
            return Err(format!(
                "--status {s:?}: give a status code (403) or a class (4xx), separated by commas"
            ));
        }
    }
    Ok(())
}

/// A status code (`403`: `(403, 1)`) or class (`4xx`: `(400, 100)`), as `(low, width)`.
fn status_pattern(s: &str) -> Option<(u16, u16)> {
    let b = s.as_bytes();
    if b.len() != 3 || !(b'1'..=b'5').contains(&b[0]) {
        return None;
    }
    if s[1..].eq_ignore_ascii_case("xx") {
        return Some((u16::from(b[0] - b'0') * 100, 100));
    }
    let code: u16 = s.parse().ok()?;
    Some((code, 1))
}

/// The user and the filesystems an admin entry is about, from its detail (`cmd {json}`).
fn admin_subject(r: &Record) -> (Option<String>, Vec<String>) {
    let Some((cmd, json)) = r.detail.as_deref().and_then(|d| d.split_once(' ')) else {
        return (None, Vec::new());
    };
    // The command's own object first; a command that is done may add its result after it
    // (`replace-key {…} {"old_key_sha256":…}`).
    let Some(Ok(v)) = serde_json::Deserializer::from_str(json)
        .into_iter::<serde_json::Value>()
        .next()
    else {
        return (None, Vec::new());
    };
    let field = match cmd {
        "create-user" | "delete-user" => "name",
        _ => "user",
    };
    let user = v.get(field).and_then(|u| u.as_str()).map(str::to_owned);
    let fss = match cmd {
        "create-user" => v
            .get("grants")
            .and_then(|g| g.as_array())
            .map(|g| {
                g.iter()
                    .filter_map(|x| x.get("fs").and_then(|f| f.as_str()).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    (user, fss)
}

/// Most names a path is followed under ([`PathTrack`]): a directory from which files are moved
/// out by the hundred thousand stops adding names rather than growing without bound, and
/// says so ([`ShowReport::untracked_names`]).
pub const MAX_TRACKED: usize = 1 << 20;

/// How one name is followed: in which filesystem (`None`: the asked path, in every
/// filesystem), exactly or as a directory and everything under it, and whether it is the name
/// asked for (kept whatever happens to it: a new file may take it again).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Name {
    fs: Option<String>,
    prefix: bool,
    asked: bool,
}

impl Name {
    fn in_fs(&self, fs: &Option<String>) -> bool {
        self.fs.is_none() || self.fs == *fs
    }
}

/// Whether `path` is strictly below directory `dir` (both recorded paths, no trailing `/`).
fn under(path: &str, dir: &str) -> bool {
    if dir == "/" {
        return path != "/";
    }
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// `path` itself, then each directory above it, as recorded (`/a/b/c`, `/a/b`, `/a`), then
/// `""`, the key of the whole tree (`--path /`).
fn self_and_ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let cur = next?;
        next = match cur.rfind('/') {
            _ if cur.is_empty() => None,
            Some(0) if cur.len() > 1 => Some("/"),
            Some(0) => Some(""),
            Some(i) => Some(&cur[..i]),
            None => Some(""),
        };
        Some(cur)
    })
}

/// The names a [`Filter`]'s path goes by as the log goes on: the asked path, then the names
/// moves gave it (a move of the file itself, of a directory above it, or, for a directory
/// asked with `/`, of something out of it). A name that moves on is dropped (another file
/// may take it later); the asked one is kept. Fed every entry, in order, whatever the
/// other filters say: a move before `--since` still renames what comes after. Kept by path,
/// so that an entry is matched by looking up its path and the directories above it, and a
/// move or delete by the names under its path, whatever the number of names.
#[derive(Debug, Clone)]
pub struct PathTrack {
    names: std::collections::BTreeMap<String, Vec<Name>>,
    count: usize,
    /// The most names followed: [`MAX_TRACKED`] (tests set fewer).
    pub(crate) cap: usize,
    /// Names not followed because `cap` were.
    pub(crate) dropped: u64,
}

impl PathTrack {
    /// The track of `filter`'s path, or `None` without one.
    pub fn new(filter: &Filter) -> Option<Self> {
        let p = filter.path.as_deref()?;
        let (path, prefix) = match p.strip_suffix('/') {
            Some("") => (String::new(), true),
            Some(d) => (d.to_owned(), true),
            None => (p.to_owned(), false),
        };
        let mut t = Self {
            names: std::collections::BTreeMap::new(),
            count: 0,
            cap: MAX_TRACKED,
            dropped: 0,
        };
        t.add(
            path,
            Name {
                fs: filter.fs.clone(),
                prefix,
                asked: true,
            },
        );
        Some(t)
    }

    fn add(&mut self, path: String, name: Name) {
        let at = self.names.entry(path).or_default();
        if at.contains(&name) {
            return;
        }
        if self.count >= self.cap {
            self.dropped += 1;
            return;
        }
        at.push(name);
        self.count += 1;
    }

    /// The names at `dir` or below it, as (path, name): the key `dir` itself, then the keys
    /// from `dir/` up to `dir0` (`0` follows `/`: exactly the paths under `dir`, not its
    /// siblings such as `dir b`); for the root, every key.
    fn at_or_under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, &'a Name)> {
        let (itself, lo, hi) = if dir == "/" {
            ("", "/".to_owned(), "0".to_owned())
        } else {
            (dir, format!("{dir}/"), format!("{dir}0"))
        };
        self.names
            .get_key_value(itself)
            .into_iter()
            .chain(self.names.range(lo..hi))
            .flat_map(|(k, v)| v.iter().map(move |n| (k, n)))
    }

    /// Whether `got` (a recorded path) is one of the names: exactly, or under a directory
    /// followed with everything in it.
    fn covers(&self, got: &str, fs: &Option<String>) -> bool {
        self_and_ancestors(got).any(|k| {
            self.names.get(k).is_some_and(|v| {
                v.iter()
                    .any(|n| n.in_fs(fs) && (n.prefix || (k == got && !k.is_empty())))
            })
        })
    }

    /// Whether entry `r` is about the path under one of its names: by its path or a move's
    /// destination, or as a delete or move of a directory above a name.
    pub(crate) fn matches(&self, r: &Record) -> bool {
        use super::Action;
        r.path.as_deref().is_some_and(|g| self.covers(g, &r.fs))
            || r.to.as_deref().is_some_and(|g| self.covers(g, &r.fs))
            || (matches!(r.action, Action::Delete | Action::Move)
                && r.path
                    .as_deref()
                    .is_some_and(|g| self.at_or_under(g).any(|(_, n)| n.in_fs(&r.fs))))
    }

    /// Removes every name at `from` or below it in `fs` but the asked ones.
    fn drop_at_or_under(&mut self, from: &str, fs: &Option<String>) {
        let keys: Vec<String> = self.at_or_under(from).map(|(k, _)| k.clone()).collect();
        for k in keys {
            if let Some(v) = self.names.get_mut(&k) {
                let before = v.len();
                v.retain(|n| n.asked || !n.in_fs(fs));
                self.count -= before - v.len();
                if v.is_empty() {
                    self.names.remove(&k);
                }
            }
        }
    }

    /// Follows a move or a delete that happened (status 2xx).
    pub(crate) fn follow(&mut self, r: &Record) {
        use super::Action;
        if !(200..300).contains(&r.status) {
            return;
        }
        let (Some(from), Some(fs)) = (r.path.as_deref(), &r.fs) else {
            return;
        };
        if from == "/" {
            // The root is never moved or deleted; an entry saying so renames nothing.
            return;
        }
        match r.action {
            Action::Delete => self.drop_at_or_under(from, &r.fs),
            Action::Move => {
                let Some(to) = r.to.as_deref() else {
                    return;
                };
                let mut new: Vec<(String, Name)> = self
                    .at_or_under(from)
                    .filter(|(_, n)| n.in_fs(&r.fs))
                    .map(|(k, n)| {
                        let name = Name {
                            fs: Some(fs.clone()),
                            prefix: n.prefix,
                            asked: false,
                        };
                        (format!("{to}{}", &k[from.len()..]), name)
                    })
                    .collect();
                // Moved out of a directory followed with everything in it: the file (or
                // directory) and whatever it holds, under its new name.
                let out_of_followed = self_and_ancestors(from).skip(1).any(|k| {
                    self.names
                        .get(k)
                        .is_some_and(|v| v.iter().any(|n| n.prefix && n.in_fs(&r.fs)))
                        && !(k.is_empty() || to == k || under(to, k))
                });
                if out_of_followed {
                    for prefix in [false, true] {
                        let name = Name {
                            fs: Some(fs.clone()),
                            prefix,
                            asked: false,
                        };
                        new.push((to.to_owned(), name));
                    }
                }
                self.drop_at_or_under(from, &r.fs);
                for (path, name) in new {
                    self.add(path, name);
                }
            }
            _ => {}
        }
    }
}

impl Filter {
    fn matches(&self, time_ms: i64, r: &Record, track: Option<&PathTrack>) -> bool {
        let eq = |want: &Option<String>, got: &Option<String>| {
            want.as_ref().is_none_or(|w| got.as_deref() == Some(w))
        };
        let subject = || {
            if r.action == super::Action::Admin {
                admin_subject(r)
            } else {
                (None, Vec::new())
            }
        };
        let user_ok = eq(&self.user, &r.user)
            || self
                .user
                .as_ref()
                .is_some_and(|u| subject().0.as_ref() == Some(u));
        let fs_ok = eq(&self.fs, &r.fs)
            || self
                .fs
                .as_ref()
                .is_some_and(|f| r.fs.is_none() && subject().1.contains(f));
        user_ok
            && fs_ok
            && self.since_ms.is_none_or(|t| time_ms >= t)
            && self.until_ms.is_none_or(|t| time_ms < t)
            && (self.actions.is_empty() || self.actions.iter().any(|a| a == r.action.name()))
            && (self.statuses.is_empty()
                || self.statuses.iter().any(|s| {
                    status_pattern(s).is_some_and(|(lo, w)| (lo..lo + w).contains(&r.status))
                }))
            && track.is_none_or(|t| t.matches(r))
    }
}

/// One decrypted entry.
#[derive(Debug, Clone, Serialize)]
pub struct ShownEntry {
    /// Entry number.
    pub seq: u64,
    /// Time, Unix ms.
    pub time_ms: i64,
    /// The record.
    #[serde(flatten)]
    pub record: Record,
}

/// The result of [`show`].
#[derive(Debug, Clone, Serialize)]
pub struct ShowReport {
    /// Matching entries, oldest first (the newest `limit` of them, see [`show_last`]).
    pub entries: Vec<ShownEntry>,
    /// Matching entries left out by the limit: older than those in `entries`, or, with
    /// [`Filter::from_seq`], newer.
    pub omitted: u64,
    /// With [`Filter::from_seq`] and entries left out: the first of them (the next page's
    /// `from_seq`).
    pub next_from: Option<u64>,
    /// Names the path was moved to that were not followed, past the most a show follows
    /// (entries about them are missing from the answer).
    pub untracked_names: u64,
    /// Entries whose body did not decrypt (not shown).
    pub undecryptable: u64,
    /// The first entry where the chain breaks, if it does (entries from there on are shown
    /// but cannot be trusted: run `efsctl audit verify`).
    pub chain_broken_at: Option<u64>,
}

/// Decrypts every entry and returns those matching `filter`.
pub fn show(dir: &Path, keys: &AuditKeys, filter: &Filter) -> std::io::Result<ShowReport> {
    show_last(dir, keys, filter, usize::MAX)
}

/// Decrypts every entry and returns the newest `limit` of those matching `filter` (oldest
/// first), counting the older ones in [`ShowReport::omitted`]: the memory it takes is
/// bounded by `limit`, not by the log (which grows by an entry per request).
pub fn show_last(
    dir: &Path,
    keys: &AuditKeys,
    filter: &Filter,
    limit: usize,
) -> std::io::Result<ShowReport> {
    let mac = ChainMac::new(keys);
    let mut prev = GENESIS;
    let mut expected = 1u64;
    let mut file: Option<([u8; 16], FileKey)> = None;
    let mut kept = std::collections::VecDeque::new();
    let mut out = ShowReport {
        entries: Vec::new(),
        omitted: 0,
        next_from: None,
        untracked_names: 0,
        undecryptable: 0,
        chain_broken_at: None,
    };
    let mut track = PathTrack::new(filter);
    scan(dir, |_, _, item| {
        match item {
            Item::Torn => {}
            Item::Header(s) => file = s.map(|s| (s, FileKey::new(keys, &s))),
            Item::Entry(None) => {
                out.chain_broken_at.get_or_insert(expected);
            }
            Item::Entry(Some(e)) => {
                let Some((salt, key)) = &file else {
                    out.undecryptable += 1;
                    return true;
                };
                if out.chain_broken_at.is_none() {
                    let m = mac.compute(&prev, e.seq, e.time_ms, salt, &e.sealed);
                    if line::mac_eq(&m, &e.mac) && e.seq == expected {
                        prev = e.mac;
                        expected += 1;
                    } else {
                        out.chain_broken_at = Some(expected);
                    }
                }
                match key.open(e.seq, e.time_ms, &e.sealed) {
                    Some(r) => {
                        let hit = filter.from_seq.is_none_or(|f| e.seq >= f)
                            && filter.matches(e.time_ms, &r, track.as_ref());
                        if let Some(t) = track.as_mut() {
                            t.follow(&r);
                        }
                        if !hit {
                            return true;
                        }
                        if filter.from_seq.is_some() && kept.len() >= limit {
                            // Paging from an entry: the oldest `limit`, then the count of
                            // the rest and where the next page starts.
                            out.omitted += 1;
                            out.next_from.get_or_insert(e.seq);
                        } else {
                            if kept.len() == limit {
                                // The oldest kept one, or (with a limit of 0) this one.
                                kept.pop_front();
                                out.omitted += 1;
                            }
                            if limit > 0 {
                                kept.push_back(ShownEntry {
                                    seq: e.seq,
                                    time_ms: e.time_ms,
                                    record: r,
                                });
                            }
                        }
                    }
                    None => out.undecryptable += 1,
                }
            }
        }
        true
    })?;
    out.entries = kept.into();
    out.untracked_names = track.map_or(0, |t| t.dropped);
    Ok(out)
}
