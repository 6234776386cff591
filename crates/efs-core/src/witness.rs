//! The rollback witness: how far the system database's digest went, kept outside the data
//! dir (`--rollback-witness PATH`).
//!
//! The system database's digest ([`crate::system`]) catches a row changed, removed or put
//! back on its own, and the audit log beside it catches the database put back alone
//! ([`crate::datadir`]). Neither can catch the *whole* data dir put back from an earlier
//! copy (a snapshot, a backup of the volume): the database, its digest and the audit log then
//! agree with one another, and a user deleted, a grant or a key revoked since is back. The
//! digest's generation only goes up and its anchor names one exact state, so a file on other
//! storage that keeps the last generation and anchor seen is enough to tell: a data dir whose
//! database is at an earlier generation than its witness, or at the same generation with
//! another anchor, was put back, and is held until an operator accepts it
//! (`efsctl accept-system`, which moves the generation past the witness's).
//!
//! The file holds no secret (a generation, and the anchor: a keyed fingerprint that opens
//! nothing): `efs rollback witness v1`, `generation G`, `anchor A`, a line each. It is
//! written whole (a temporary file of its own, fsynced, renamed over it, the directory
//! fsynced) after every write of the system database that a process with the option makes,
//! so it is never ahead of the database: a crash in between leaves it one write behind. It
//! is never written backwards, not even by a process that opened a rolled-back database to
//! look at it. A symbolic link is followed to its target (which is what gets replaced).
//!
//! The system database records its witness ([`SECRET_WITNESS`], a [`Recorded`]): an id of
//! its own, the witness file as the server was last given it, and the data dir's own path.
//! So a witness file gone missing (its storage not mounted, the file removed) is a hold too,
//! not a new witness started from whatever the data dir is now; an open without the option,
//! of the data dir at the path recorded, falls back to the recorded file (writes made without
//! the option would move the generation on unseen), and one of a copy elsewhere is refused
//! until given a witness (it would move the original's witness on, and hold the original as
//! put back); and the file names the data dir it witnesses (`data-dir ID`, a fourth line
//! since `v2`), so that a witness given to a second data dir is refused as another data
//! dir's instead of holding both as put back. Only the server (and an acceptance) records a
//! path: efsctl given another path, where the file is mounted elsewhere, uses it without
//! recording it. A witness on the same filesystem as the data dir is accepted with a warning
//! (a snapshot of that volume puts it back with the data dir). What it cannot do: someone
//! who can change the witness as well as the data dir can roll both back; a data dir put back
//! to a copy from before its first witness, with the witness removed, starts a new one; one
//! put back with its record removed and opened without the option is checked by nothing but
//! its digest (which differs: `accept-system` then says that no witness was consulted).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{CoreError, Result};

/// The first line of a witness file that names its data dir (`data-dir ID`, a fourth line).
const MAGIC: &str = "efs rollback witness v2";

/// The first line of a witness file written before witnesses named their data dir (read;
/// written only while the data dir's id is not known yet).
const MAGIC_V1: &str = "efs rollback witness v1";

/// Name of the system secret that records that the data dir has a rollback witness.
pub const SECRET_WITNESS: &str = "rollback-witness";

/// Generations beyond this are not a digest's (it counts writes): a witness claiming one is
/// refused, as it would hold the data dir for good.
const MAX_GENERATION: u64 = 1 << 48;

/// Bytes of a data dir's witness id.
pub const ID_LEN: usize = 16;

/// What a witness file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The highest generation of the system database's digest written with it.
    pub generation: u64,
    /// That generation's anchor (hex).
    pub anchor: String,
    /// The id of the data dir it witnesses ([`Recorded::id`]); `None` in a file of the first
    /// layout (`v1`), written before witnesses named their data dir.
    pub data_dir: Option<[u8; ID_LEN]>,
}

impl Seen {
    fn to_text(&self) -> String {
        match &self.data_dir {
            Some(id) => format!(
                "{MAGIC}\ngeneration {}\nanchor {}\ndata-dir {}\n",
                self.generation,
                self.anchor,
                hex::encode(id)
            ),
            None => format!(
                "{MAGIC_V1}\ngeneration {}\nanchor {}\n",
                self.generation, self.anchor
            ),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let named = match lines.next()? {
            MAGIC => true,
            MAGIC_V1 => false,
            _ => return None,
        };
        let generation: u64 = lines.next()?.strip_prefix("generation ")?.parse().ok()?;
        if generation > MAX_GENERATION {
            return None;
        }
        let anchor = lines.next()?.strip_prefix("anchor ")?;
        let hex_ok = !anchor.is_empty() && anchor.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok {
            return None;
        }
        let data_dir = if named {
            let mut id = [0u8; ID_LEN];
            hex::decode_to_slice(lines.next()?.strip_prefix("data-dir ")?, &mut id).ok()?;
            Some(id)
        } else {
            None
        };
        if lines.next().is_some() {
            return None;
        }
        Some(Self {
            generation,
            anchor: anchor.to_owned(),
            data_dir,
        })
    }
}

/// What the system database records of its witness ([`SECRET_WITNESS`]): the data dir's
/// witness id, which the witness file names; where the witness was last given to the server
/// (or to an acceptance), which an open without `--rollback-witness` uses; and where the data
/// dir was then, so that a copy of it elsewhere does not take over that witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Random, made when the data dir's first witness was started (or when one recorded
    /// before witnesses had ids was first trusted again).
    pub id: [u8; ID_LEN],
    /// The witness file (absolute, links resolved).
    pub path: PathBuf,
    /// The data dir (absolute, links resolved).
    pub root: PathBuf,
}

/// First bytes of a [`Recorded`] value: the first layout was one byte, `1`, which recorded
/// only that there was a witness.
const RECORDED_TAG: &[u8] = b"witness/2\0";

impl Recorded {
    /// A new id for the witness `path` of the data dir at `root`.
    pub fn new(path: &Path, root: &Path) -> Self {
        let mut id = [0u8; ID_LEN];
        aws_lc_rs::rand::fill(&mut id).expect("the system RNG does not fail on Linux");
        Self {
            id,
            path: path.to_path_buf(),
            root: root.to_path_buf(),
        }
    }

    /// The value stored: the tag, the id, the path's length (u32 big-endian) and bytes, the
    /// root's bytes.
    pub fn encode(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let path = self.path.as_os_str().as_bytes();
        let len = u32::try_from(path.len()).expect("a path is shorter than 4 GiB");
        [
            RECORDED_TAG,
            self.id.as_slice(),
            &len.to_be_bytes(),
            path,
            self.root.as_os_str().as_bytes(),
        ]
        .concat()
    }

    /// A stored value: `None` for the first layout (a witness recorded before they had ids
    /// and paths) or anything else.
    pub fn decode(value: &[u8]) -> Option<Self> {
        use std::os::unix::ffi::OsStrExt;
        let rest = value.strip_prefix(RECORDED_TAG)?;
        let (id, rest) = rest.split_at_checked(ID_LEN)?;
        let (len, rest) = rest.split_at_checked(4)?;
        let len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
        let (path, root) = rest.split_at_checked(len)?;
        if path.is_empty() || root.is_empty() {
            return None;
        }
        Some(Self {
            id: id.try_into().ok()?,
            path: PathBuf::from(std::ffi::OsStr::from_bytes(path)),
            root: PathBuf::from(std::ffi::OsStr::from_bytes(root)),
        })
    }
}

/// The witness the data dir at `root` is opened with: the one given (`--rollback-witness`),
/// or else the one its system database records (`recorded`, the value of
/// [`SECRET_WITNESS`]; none when it has none or only the first layout's marker). The flag
/// says the path came from the record. A record made when the data dir was elsewhere (a
/// copy, or the data dir moved) is refused without the option: its witness is the
/// original's.
pub fn choose(
    given: Option<&Path>,
    recorded: Option<&[u8]>,
    root: &Path,
) -> Result<Option<(PathBuf, bool)>> {
    let recorded = recorded.and_then(Recorded::decode);
    let here = root.canonicalize()?;
    if let Some(p) = given {
        // A copy given the original's own file (a restore drill started with the same
        // environment) would move the original's witness on, and the original would then be
        // held as put back: refused while the original is still there.
        if let (Some(r), Ok(resolved)) = (&recorded, resolve(p))
            && r.root != here
            && resolved == r.path
            && r.root.join("system").join("keyparts.json").exists()
        {
            return Err(bad(
                p,
                format!(
                    "it is the witness of the data dir at {}, which is still there, and this data dir at {} is a copy of it: a copy needs a witness file of its own (give another file: the copy is then held as missing its witness until efsctl --rollback-witness FILE accept-system starts it; if the data dir at {} is retired, remove it first)",
                    r.root.display(),
                    here.display(),
                    r.root.display()
                ),
            ));
        }
        return Ok(Some((p.to_path_buf(), false)));
    }
    let Some(r) = recorded else {
        return Ok(None);
    };
    if r.root != here {
        return Err(CoreError::Invalid(format!(
            "this data dir records the rollback witness {} of the data dir at {}, and it is at {} now (a copy, moved, or seen under another path, as on a container's host?): give --rollback-witness (for a copy, a file of its own: the copy is then held until efsctl --rollback-witness FILE accept-system starts it; for the data dir moved, the same file: a start of the server with it records the new place)",
            r.path.display(),
            r.root.display(),
            here.display()
        )));
    }
    Ok(Some((r.path, true)))
}

/// Where a witness is and how its writes went (`efsctl status`, `/_efs/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessState {
    /// The file (made absolute, links resolved).
    pub path: PathBuf,
    /// The generation it holds (as this process last wrote or read it).
    pub generation: u64,
    /// Whether its last write failed (it stays at `generation` until one succeeds).
    pub failing: bool,
    /// Whether it is on the same filesystem (device) as the data dir: a snapshot of that
    /// volume puts it back with the data dir, and it then witnesses nothing.
    pub same_volume: bool,
}

/// The witness of one open data dir.
#[derive(Debug)]
pub struct Witness {
    path: PathBuf,
    /// The generation last written to the file or read from it: nothing at or below it is
    /// written (the file only goes forward).
    last: Mutex<u64>,
    /// Whether the last write failed (logged once per run of failures, not at every write).
    failing: Mutex<bool>,
    /// The id of the data dir it witnesses, written into the file with every generation once
    /// known ([`Recorded::id`]).
    data_dir: Mutex<Option<[u8; ID_LEN]>>,
    /// See [`WitnessState::same_volume`].
    same_volume: bool,
    /// The data dir it witnesses (absolute, links resolved).
    root: PathBuf,
    /// Whether this process records the witness's path in the data dir when it differs from
    /// the one recorded (the server does; efsctl, which may see the file elsewhere, does
    /// not).
    records: bool,
}

impl Witness {
    /// The witness at `path` for the data dir at `root`: refused inside the data dir (put
    /// back with it, it would witness nothing) or in a directory that does not exist. Returns
    /// what the file says, `None` if there is none yet; a file that is not a witness is
    /// refused (remove it to start a new one). `records`: see [`Witness::records`].
    pub fn open(path: &Path, root: &Path, records: bool) -> Result<(Self, Option<Seen>)> {
        let bad = |why: String| bad(path, why);
        let path = resolve(path)?;
        let root = root.canonicalize()?;
        if path.starts_with(&root) {
            return Err(bad(format!(
                "it is inside the data dir {}: put back with it, it would witness nothing; keep it on other storage",
                root.display()
            )));
        }
        let seen = match std::fs::read(&path) {
            Ok(bytes) => Some(
                std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(Seen::parse)
                    .ok_or_else(|| {
                        bad("this file is not a rollback witness (remove it to start a new one from this data dir)".into())
                    })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(bad(format!("cannot read it: {e}"))),
        };
        let last = seen.as_ref().map_or(0, |s| s.generation);
        let same_volume = same_device(path.parent().unwrap_or(Path::new("/")), &root);
        if same_volume {
            tracing::warn!(
                "the rollback witness {} is on the same filesystem as the data dir {}: a snapshot of that volume put back puts the witness back with it, and it then catches nothing; keep it on other storage",
                path.display(),
                root.display()
            );
        }
        Ok((
            Self {
                path,
                last: Mutex::new(last),
                failing: Mutex::new(false),
                // What the file names, until the open sets the data dir's own.
                data_dir: Mutex::new(seen.as_ref().and_then(|s| s.data_dir)),
                same_volume,
                root,
                records,
            },
            seen,
        ))
    }

    /// The id of the data dir it witnesses, written into the file from the next generation
    /// on.
    pub fn set_data_dir(&self, id: [u8; ID_LEN]) {
        *self.data_dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
    }

    /// The data dir it witnesses (absolute, links resolved).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this process records the witness's path in the data dir (the server's opens,
    /// `OpenOptions::record_witness`).
    pub fn records(&self) -> bool {
        self.records
    }

    /// The id of the data dir it witnesses: the one set, or else the one its file named.
    pub fn data_dir(&self) -> Option<[u8; ID_LEN]> {
        *self.data_dir.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the witness is (made absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where it is, the generation it holds, whether its last write failed.
    pub fn state(&self) -> WitnessState {
        let generation = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let failing = *self.failing.lock().unwrap_or_else(|e| e.into_inner());
        WitnessState {
            path: self.path.clone(),
            generation,
            failing,
            same_volume: self.same_volume,
        }
    }

    /// Refuses `path` as the witness of a data dir about to be created (at `root`): a file
    /// already there is another data dir's (this one's generations start again), and a
    /// directory that does not exist would fail only once the data dir is made.
    pub fn refuse_for_new_data_dir(path: &Path, root: &Path) -> Result<()> {
        let resolved = resolve(path)?;
        if std::fs::symlink_metadata(&resolved).is_ok() {
            return Err(bad(
                path,
                format!(
                    "the file exists, and the data dir {} is new: it is the witness of another data dir (remove it if that one is gone for good, or name another file)",
                    root.display()
                ),
            ));
        }
        Ok(())
    }

    /// Writes `generation` and `anchor` if `generation` is past what the file holds. A
    /// failure is logged (once until a write succeeds again) and otherwise ignored: the
    /// database's write it follows has been made, and the next one writes the witness again.
    pub fn record(&self, generation: u64, anchor: &str) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if generation <= *last {
            return;
        }
        let text = Seen {
            generation,
            anchor: anchor.to_owned(),
            data_dir: *self.data_dir.lock().unwrap_or_else(|e| e.into_inner()),
        }
        .to_text();
        let result = crate::datadir::write_atomic(&self.path, text.as_bytes());
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                *last = generation;
                if std::mem::replace(&mut *failing, false) {
                    tracing::info!(
                        "the rollback witness {} is written again (generation {generation})",
                        self.path.display()
                    );
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut *failing, true) {
                    tracing::warn!(
                        "cannot write the rollback witness {}: {e}; the data dir goes on, the witness stays at generation {} until a write succeeds",
                        self.path.display(),
                        *last
                    );
                }
            }
        }
    }
}

fn bad(path: &Path, why: String) -> CoreError {
    CoreError::Invalid(format!("--rollback-witness {}: {why}", path.display()))
}

/// Whether `a` and `b` are on one filesystem (the same device number; `false` when either
/// cannot be looked at).
fn same_device(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// Whether the witness file at `path`, which says `seen`, may witness a data dir whose
/// system database records `recorded` (the value of [`SECRET_WITNESS`]; `None`: no record at
/// all). A file naming another data dir than the one recorded is refused: a witness shared by
/// two data dirs would hold each as put back whenever the other wrote. A file naming a data
/// dir, for a data dir with no record, is a hold (`Ok(Some(why))`): another data dir's
/// witness, this data dir put back to a copy from before its witness, or its record removed
/// (which hides a put-back data dir from an open without the option). A file of the first
/// layout, or a data dir recorded before witnesses had ids, is judged by its generation alone
/// ([`judge`]).
pub fn check_data_dir(path: &Path, seen: &Seen, recorded: Option<&[u8]>) -> Result<Option<String>> {
    let Some(named) = seen.data_dir else {
        return Ok(None);
    };
    match recorded {
        None => Ok(Some(format!(
            "the rollback witness {} witnesses the data dir {}, and this data dir records no witness: it is another data dir's witness (give this one a file of its own), or this data dir was put back to a copy from before its witness, or its record was removed from the system database (a put-back copy: users, grants and keys removed since would be back); if this data dir is the one it witnesses and was restored on purpose, accept it with efsctl accept-system (with the same --rollback-witness)",
            path.display(),
            hex::encode(named)
        ))),
        Some(value) => match Recorded::decode(value) {
            Some(r) if r.id != named => Err(bad(
                path,
                format!(
                    "this file witnesses another data dir ({}; this one is {}): each data dir needs a witness file of its own; give this one its own file (a missing witness holds it: efsctl accept-system with the new file starts it)",
                    hex::encode(named),
                    hex::encode(r.id)
                ),
            )),
            _ => Ok(None),
        },
    }
}

/// `path` made absolute with its directory's symbolic links resolved, and, when it is itself
/// a symbolic link, its target (refused when the target cannot be resolved).
fn resolve(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| bad(path, "not a file name".into()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent
        .canonicalize()
        .map_err(|e| bad(path, format!("its directory {}: {e}", parent.display())))?;
    let joined = dir.join(name);
    match std::fs::symlink_metadata(&joined) {
        Ok(m) if m.file_type().is_symlink() => joined.canonicalize().map_err(|e| {
            bad(
                path,
                format!("a symbolic link whose target cannot be resolved: {e}"),
            )
        }),
        _ => Ok(joined),
    }
}

/// What a data dir whose system database is at `generation` is, by a witness that saw
/// `seen`: `Some(why)` when it was put back to an earlier state. `anchor` is the database's
/// anchor when its digest holds (`None`: only the generation its digest claims is known).
pub fn judge(path: &Path, seen: &Seen, generation: u64, anchor: Option<&str>) -> Option<String> {
    let tail = "put back from an earlier copy? (users, grants and keys removed since would be back); if it was restored on purpose, accept it with efsctl accept-system (with the same --rollback-witness)";
    if generation < seen.generation {
        Some(format!(
            "the system database is at generation {generation}, but the rollback witness {} saw generation {}: the data dir was {tail}",
            path.display(),
            seen.generation
        ))
    } else if let Some(anchor) = anchor
        && generation == seen.generation
        && !anchor.eq_ignore_ascii_case(&seen.anchor)
    {
        Some(format!(
            "the system database is at generation {generation} with anchor {anchor}, but the rollback witness {} saw anchor {} at that generation: another copy of the data dir, {tail}",
            path.display(),
            seen.anchor
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(generation: u64, anchor: &str) -> Seen {
        Seen {
            generation,
            anchor: anchor.into(),
            data_dir: None,
        }
    }

    #[test]
    fn a_witness_names_its_data_dir_and_the_first_layout_still_reads() {
        let id = [0xab; ID_LEN];
        let named = Seen {
            data_dir: Some(id),
            ..seen(7, "00ff")
        };
        let text = named.to_text();
        assert_eq!(
            text,
            format!(
                "efs rollback witness v2\ngeneration 7\nanchor 00ff\ndata-dir {}\n",
                "ab".repeat(ID_LEN)
            )
        );
        assert_eq!(Seen::parse(&text), Some(named));
        // The first layout: three lines, no data dir.
        let v1 = "efs rollback witness v1\ngeneration 7\nanchor 00ff\n";
        assert_eq!(Seen::parse(v1), Some(seen(7, "00ff")));
        assert_eq!(seen(7, "00ff").to_text(), v1);
        for bad in [
            "efs rollback witness v2\ngeneration 7\nanchor 00ff\n".to_owned(),
            "efs rollback witness v2\ngeneration 7\nanchor 00ff\ndata-dir abab\n".to_owned(),
            format!(
                "efs rollback witness v2\ngeneration 7\nanchor 00ff\ndata-dir {}\n",
                "zz".repeat(ID_LEN)
            ),
            format!(
                "efs rollback witness v1\ngeneration 7\nanchor 00ff\ndata-dir {}\n",
                "ab".repeat(ID_LEN)
            ),
        ] {
            assert_eq!(Seen::parse(&bad), None, "{bad:?}");
        }

        // What the database records: read back; the first layout's marker and other bytes
        // are not a record (an open then uses only the option).
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let r = Recorded::new(Path::new("/w/efs.witness"), &root);
        assert_eq!(Recorded::decode(&r.encode()), Some(r.clone()));
        assert_eq!(Recorded::decode(&[1]), None);
        assert_eq!(Recorded::decode(RECORDED_TAG), None);
        let cut = r.encode();
        assert_eq!(
            Recorded::decode(&cut[..cut.len() - root.as_os_str().len()]),
            None
        );
        assert_ne!(Recorded::new(Path::new("/w"), &root).id, r.id);
        let stored = r.encode();
        assert_eq!(
            choose(None, Some(&stored), &root).unwrap(),
            Some((PathBuf::from("/w/efs.witness"), true))
        );
        assert_eq!(
            choose(Some(Path::new("/x")), Some(&stored), &root).unwrap(),
            Some((PathBuf::from("/x"), false))
        );
        assert_eq!(choose(None, Some(&[1]), &root).unwrap(), None);
        assert_eq!(choose(None, None, &root).unwrap(), None);
        // A copy elsewhere does not fall back to the original's witness.
        let elsewhere = tempfile::tempdir().unwrap();
        let e = choose(None, Some(&stored), elsewhere.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("a copy, moved"), "{e}");
        assert_eq!(
            choose(Some(Path::new("/x")), Some(&stored), elsewhere.path()).unwrap(),
            Some((PathBuf::from("/x"), false))
        );

        // Which data dir a file may witness.
        let p = Path::new("/w");
        let mine = Seen {
            data_dir: Some(r.id),
            ..seen(7, "00ff")
        };
        let other = Seen {
            data_dir: Some([0xcd; ID_LEN]),
            ..seen(7, "00ff")
        };
        assert_eq!(check_data_dir(p, &mine, Some(&stored)).unwrap(), None);
        let e = check_data_dir(p, &other, Some(&stored))
            .unwrap_err()
            .to_string();
        assert!(e.contains("witnesses another data dir"), "{e}");
        // No record at all: held (another's, a copy from before the witness, or the record
        // removed), not refused outright.
        let held = check_data_dir(p, &mine, None).unwrap().expect("a hold");
        assert!(
            held.contains("records no witness") && held.contains("record was removed"),
            "{held}"
        );
        // A file of the first layout, or a data dir recorded before ids: by generation alone.
        assert_eq!(
            check_data_dir(p, &seen(7, "00ff"), Some(&stored)).unwrap(),
            None
        );
        assert_eq!(check_data_dir(p, &seen(7, "00ff"), None).unwrap(), None);
        assert_eq!(check_data_dir(p, &other, Some(&[1])).unwrap(), None);
    }

    #[test]
    fn a_witness_reads_back_what_it_wrote_and_refuses_anything_else() {
        let s = seen(41, "5e0c00ff");
        assert_eq!(Seen::parse(&s.to_text()), Some(s.clone()));
        for bad in [
            "",
            "efs rollback witness v2\ngeneration 41\nanchor 5e0c\n",
            "efs rollback witness v1\ngeneration -1\nanchor 5e0c\n",
            "efs rollback witness v1\ngeneration 41\nanchor \n",
            "efs rollback witness v1\ngeneration 41\nanchor 5e0g\n",
            "efs rollback witness v1\ngeneration 41\n",
            "efs rollback witness v1\ngeneration 41\nanchor 5e0c\nmore\n",
            "efs rollback witness v1\ngeneration 18446744073709551615\nanchor 5e0c\n",
        ] {
            assert_eq!(Seen::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_an_earlier_generation_or_another_anchor_is_a_rollback() {
        let p = Path::new("/w");
        let s = seen(41, "aaaa");
        let behind = judge(p, &s, 40, Some("bbbb")).expect("an earlier generation");
        assert!(
            behind.contains("generation 40") && behind.contains("saw generation 41"),
            "{behind}"
        );
        // A digest that does not hold: its claimed generation alone.
        assert!(judge(p, &s, 40, None).is_some());
        assert_eq!(judge(p, &s, 41, None), None);
        let other = judge(p, &s, 41, Some("bbbb")).expect("another anchor");
        assert!(
            other.contains("anchor bbbb") && other.contains("saw anchor aaaa"),
            "{other}"
        );
        assert_eq!(judge(p, &s, 41, Some("aaaa")), None);
        assert_eq!(judge(p, &s, 42, Some("bbbb")), None);
    }

    #[test]
    fn a_witness_only_goes_forward_and_stays_out_of_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        let inside = Witness::open(&root.join("w"), &root, false)
            .unwrap_err()
            .to_string();
        assert!(inside.contains("inside the data dir"), "{inside}");
        let missing = Witness::open(&dir.path().join("no/such/w"), &root, false)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("its directory"), "{missing}");

        let path = dir.path().join("w");
        let (w, none) = Witness::open(&path, &root, false).unwrap();
        assert_eq!(none, None);
        w.record(5, "aa");
        w.record(4, "bb");
        w.record(5, "cc");
        let (w, got) = Witness::open(&path, &root, false).unwrap();
        assert_eq!(got, Some(seen(5, "aa")));
        // Opened again, it still does not go back.
        w.record(3, "dd");
        assert_eq!(
            Witness::open(&path, &root, false).unwrap().1,
            Some(seen(5, "aa"))
        );
        w.record(6, "ee");
        assert_eq!(
            Witness::open(&path, &root, false).unwrap().1,
            Some(seen(6, "ee"))
        );

        // A link is followed: its target is what is written, and a link into the data dir
        // is refused.
        let target = dir.path().join("target.witness");
        let link = dir.path().join("link.witness");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dangling = Witness::open(&link, &root, false).unwrap_err().to_string();
        assert!(dangling.contains("symbolic link"), "{dangling}");
        std::fs::write(&target, seen(2, "ab").to_text()).unwrap();
        let (w, got) = Witness::open(&link, &root, false).unwrap();
        assert_eq!(got, Some(seen(2, "ab")));
        w.record(3, "cd");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            Seen::parse(&std::fs::read_to_string(&target).unwrap()),
            Some(seen(3, "cd"))
        );
        let into = dir.path().join("into.witness");
        std::fs::write(root.join("w"), seen(1, "ab").to_text()).unwrap();
        std::os::unix::fs::symlink(root.join("w"), &into).unwrap();
        let inside = Witness::open(&into, &root, false).unwrap_err().to_string();
        assert!(inside.contains("inside the data dir"), "{inside}");
        // No temporary file is left beside it.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        std::fs::write(&path, "not a witness").unwrap();
        let garbled = Witness::open(&path, &root, false).unwrap_err().to_string();
        assert!(garbled.contains("not a rollback witness"), "{garbled}");
    }
}
