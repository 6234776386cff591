//! Helpers shared by the integration tests: a data dir on a tempdir with a `file:` key part,
//! whole-file writes and reads, and the blob files on disk.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use efs_core::fs::FsOptions;
use efs_core::keyparts::no_prompt;
use efs_core::{
    CoreError, DataDir, EfsPath, Entry, Filesystem, KeyPartSpec, OpenOptions, Precondition,
};

/// Files up to this size are inline; larger ones are blobs.
pub const INLINE_MAX: usize = 1024;

pub fn opts() -> OpenOptions {
    OpenOptions {
        fs: FsOptions {
            inline_max: INLINE_MAX,
            lookup_cache: 8,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Writes a new `file:` key part (32 random bytes, base64, newline) and returns its spec.
pub fn new_part(path: &Path) -> KeyPartSpec {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).unwrap();
    let text = format!("{}\n", base64::engine::general_purpose::STANDARD.encode(k));
    std::fs::write(path, text).unwrap();
    KeyPartSpec::File(path.to_path_buf())
}

pub fn open(root: &Path, parts: &[KeyPartSpec]) -> Result<DataDir, CoreError> {
    DataDir::open(root, parts, opts(), &no_prompt).map(|(dd, _)| dd)
}

/// Opens allowing the system database to be accepted as it is (what `efsctl
/// accept-system` opens with; nothing is accepted until [`DataDir::accept_system`]).
pub fn open_accepting_system(root: &Path, parts: &[KeyPartSpec]) -> Result<DataDir, CoreError> {
    let o = OpenOptions {
        accept_system: true,
        ..opts()
    };
    DataDir::open(root, parts, o, &no_prompt).map(|(dd, _)| dd)
}

/// What `efsctl accept-system` does without a server: opens, accepts, closes.
pub fn accept_system(root: &Path, parts: &[KeyPartSpec]) -> efs_core::system::SystemTrust {
    let dd = open_accepting_system(root, parts).unwrap();
    let trust = dd.accept_system().unwrap();
    assert!(
        matches!(trust, efs_core::system::SystemTrust::Accepted { .. }),
        "{trust:?}"
    );
    trust
}

/// Asserts that opening `root` is refused because its system database failed its digest.
pub fn assert_system_held(root: &Path, parts: &[KeyPartSpec]) {
    match open(root, parts) {
        Err(CoreError::SystemHold(why)) => assert!(why.contains("system database"), "{why}"),
        Err(e) => panic!("refused, but not for the system digest: {e}"),
        Ok(_) => panic!("a system database changed outside EFS was opened"),
    }
}

/// A data dir with one filesystem, `docs`.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub part: KeyPartSpec,
    pub dd: DataDir,
    pub fs: Arc<Filesystem>,
}

impl Env {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let part = new_part(&tmp.path().join("part.key"));
        let dd = open(&root, std::slice::from_ref(&part)).unwrap();
        dd.create_fs("docs").unwrap();
        let fs = dd.fs("docs").expect("the new filesystem is open");
        Self {
            tmp,
            root,
            part,
            dd,
            fs,
        }
    }

    /// `DATA/fs/<id>/blobs`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root
            .join("fs")
            .join(hex::encode(self.fs.id()))
            .join("blobs")
    }

    /// Where the blob of a file version would be.
    pub fn blob_path(&self, version: &[u8; 16]) -> PathBuf {
        let h = hex::encode(version);
        self.blobs_dir().join(&h[0..2]).join(&h[2..4]).join(h)
    }

    /// Every finished blob file on disk (the `tmp` directory excluded).
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for a in std::fs::read_dir(self.blobs_dir()).unwrap() {
            let a = a.unwrap();
            if a.file_name() == "tmp" {
                continue;
            }
            for b in std::fs::read_dir(a.path()).unwrap() {
                for f in std::fs::read_dir(b.unwrap().path()).unwrap() {
                    out.push(f.unwrap().path());
                }
            }
        }
        out.sort();
        out
    }

    /// Writes `data` to `path` (one writer at a time) and returns the blob file that
    /// the write created, if the content is not inline.
    pub async fn put_blob(&self, path: &str, data: &[u8]) -> (Entry, Option<PathBuf>) {
        let before = self.blob_files();
        let e = put(&self.fs, path, data).await;
        let new: Vec<PathBuf> = self
            .blob_files()
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        assert!(new.len() <= 1, "one write makes at most one blob");
        assert_eq!(new.is_empty(), data.len() <= INLINE_MAX, "inline iff small");
        (e, new.into_iter().next())
    }

    /// Files left in the blob store's temporary directory.
    pub fn tmp_files(&self) -> usize {
        std::fs::read_dir(self.blobs_dir().join("tmp"))
            .unwrap()
            .count()
    }
}

pub fn p(s: &str) -> EfsPath {
    EfsPath::parse(s).unwrap()
}

/// Deterministic, seed-dependent bytes (xorshift), so that contents differ everywhere.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `data` to `path` in uneven chunks.
pub async fn put_with(
    fs: &Arc<Filesystem>,
    path: &str,
    data: &[u8],
    content_type: Option<&str>,
    cond: Precondition,
) -> Result<Entry, CoreError> {
    let mut up = fs.begin_upload().await?;
    for chunk in data.chunks(10_007) {
        up.write(chunk).await?;
    }
    assert_eq!(up.size(), data.len() as u64);
    fs.commit(&p(path), up, content_type.map(str::to_owned), cond)
        .await
}

pub async fn put(fs: &Arc<Filesystem>, path: &str, data: &[u8]) -> Entry {
    put_with(fs, path, data, None, Precondition::None)
        .await
        .unwrap_or_else(|e| panic!("write {path}: {e}"))
}

/// Reads a whole file with `open` + `read_segments`.
pub async fn read_all(fs: &Filesystem, path: &str) -> Result<Vec<u8>, CoreError> {
    let r = fs.open(&p(path)).await?;
    read_reader(&r).await
}

pub async fn read_reader(r: &efs_core::FileReader) -> Result<Vec<u8>, CoreError> {
    let mut out = Vec::with_capacity(r.len() as usize);
    for seg in r.read_segments(0, r.segment_count()).await? {
        out.extend_from_slice(&seg);
    }
    assert_eq!(out.len() as u64, r.len(), "segments add up to the length");
    Ok(out)
}

/// Reads plaintext `[start, end)` through `segments_for`.
pub async fn read_range(
    r: &efs_core::FileReader,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, CoreError> {
    let segs = r.segments_for(start, end);
    let first = segs.start;
    let mut buf = Vec::new();
    for seg in r.read_segments(segs.start, segs.end).await? {
        buf.extend_from_slice(&seg);
    }
    let base = efs_core::fs::segment_offset(first);
    let end = end.min(r.len());
    if start >= end {
        return Ok(Vec::new());
    }
    Ok(buf[(start - base) as usize..(end - base) as usize].to_vec())
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}
