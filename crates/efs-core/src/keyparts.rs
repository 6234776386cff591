//! The starter key: built at start-up from key parts kept in different places.
//!
//! Each part is turned into a 32-byte part key; the starter key is HKDF-SHA256 over the
//! concatenated part keys, salted with the data dir's random salt. All parts are needed;
//! the starter key is never stored. `system/keyparts.json` records, in clear, only what is
//! needed to give a helpful error: the salt, the kind of each part, its Argon2id
//! parameters, and a short check tag per part and for the whole (see docs/design.md); and
//! the path of a part file EFS generated itself, so that a later start finds it.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use efs_format::Key32;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::labels;

/// Environment variable read for a `passphrase` part when there is no terminal.
pub const PASSPHRASE_ENV: &str = "EFS_PASSPHRASE";

/// Environment variable read for a `passphrase` part of the data dir a backup was taken from
/// (`efsctl restore --backup-key-part passphrase`): not [`PASSPHRASE_ENV`], which is the
/// passphrase of the data dir restored into when efsctl opens it itself.
pub const BACKUP_PASSPHRASE_ENV: &str = "EFS_BACKUP_PASSPHRASE";

/// Shortest accepted raw material for an `env:` or `file:` part.
pub const MIN_PART_BYTES: usize = 16;

/// Where one key part comes from, as given on the command line.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyPartSpec {
    /// `env:NAME`: the value of an environment variable.
    Env(String),
    /// `file:PATH`: the contents of a file (a Docker secret, a USB key).
    File(PathBuf),
    /// `passphrase`: typed at a prompt, or read from `EFS_PASSPHRASE`; stretched with Argon2id.
    Passphrase,
    /// A part whose contents another process already read and handed over: `efsctl restore
    /// --backup-key-part` reads `env:` and `file:` parts in its own environment and working
    /// directory, and asks for a `passphrase` on its own terminal (or takes `EFS_PASSPHRASE`
    /// from its own environment), and sends them through the admin socket (the server's
    /// environment and terminal are not the operator's). Never parsed from text.
    Given(GivenPart),
}

/// The contents of a part, read by the caller ([`KeyPartSpec::Given`]): an `env:` or `file:`
/// part's bytes, or a passphrase as typed (stretched with Argon2id by the receiver, as a
/// passphrase part is).
/// Zeroized on drop; its `Debug` and `Display` show where it was read from, never the bytes.
#[derive(Clone)]
pub struct GivenPart {
    /// The `env:` or `file:` spec it was read from.
    from: Box<KeyPartSpec>,
    material: Zeroizing<Vec<u8>>,
}

impl GivenPart {
    /// Reads a part now, in this process: an `env:` or `file:` part's contents, or a
    /// passphrase from the environment variable `passphrase_env` or else `prompt`.
    pub fn read(
        spec: &KeyPartSpec,
        passphrase_env: &str,
        prompt: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Result<Self, KeyError> {
        match spec {
            KeyPartSpec::Env(_) | KeyPartSpec::File(_) | KeyPartSpec::Passphrase => {
                let PartMaterial(material) = read_part(1, spec, passphrase_env, prompt)?;
                Ok(Self {
                    from: Box::new(spec.clone()),
                    material,
                })
            }
            KeyPartSpec::Given(_) => Err(KeyError::Spec(
                "a part handed over cannot be handed over again".into(),
            )),
        }
    }

    /// A part handed over as `spec` (`env:NAME`, `file:PATH` or `passphrase`, as the sender
    /// was given it) with its contents.
    pub fn new(spec: &str, material: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        let from = KeyPartSpec::parse(spec)?;
        Ok(Self {
            from: Box::new(from),
            material,
        })
    }

    /// The contents, as read.
    pub fn material(&self) -> &[u8] {
        &self.material
    }

    /// The spec it was read from.
    pub fn from(&self) -> &KeyPartSpec {
        &self.from
    }
}

impl PartialEq for GivenPart {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.from == other.from
            && self.material.len() == other.material.len()
            && bool::from(self.material.ct_eq(&other.material))
    }
}

impl Eq for GivenPart {}

impl KeyPartSpec {
    /// Parses `env:NAME`, `file:PATH` or `passphrase`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        if let Some(name) = s.strip_prefix("env:") {
            if name.is_empty() {
                return Err(KeyError::Spec(format!("'{s}': env: needs a variable name")));
            }
            Ok(Self::Env(name.to_owned()))
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(KeyError::Spec(format!("'{s}': file: needs a path")));
            }
            Ok(Self::File(PathBuf::from(path)))
        } else if s == "passphrase" {
            Ok(Self::Passphrase)
        } else {
            Err(KeyError::Spec(format!(
                "'{s}' is not a key part: use env:NAME, file:PATH or passphrase"
            )))
        }
    }

    /// Whether its contents are a passphrase (stretched with Argon2id), typed here or
    /// handed over.
    fn is_passphrase(&self) -> bool {
        match self {
            Self::Passphrase => true,
            Self::Given(g) => g.from.is_passphrase(),
            _ => false,
        }
    }

    /// The kind, as recorded in keyparts.json.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Env(_) => "env",
            Self::File(_) => "file",
            Self::Passphrase => "passphrase",
            Self::Given(g) => g.from.kind(),
        }
    }
}

/// Why new key parts read a second time (at a data dir's creation, a re-keying's new parts)
/// did not give what the first reading did, in those terms: "not the part this data dir was
/// created with" said nothing true of a data dir being created (black-box review).
pub fn not_read_the_same(e: &KeyError) -> String {
    match e {
        KeyError::WrongPart { index, spec, .. } if spec == "passphrase" => format!(
            "key part {index} (passphrase): the passphrase given the second time is not the one given first"
        ),
        KeyError::WrongPart { index, spec, .. } => {
            format!(
                "key part {index} ({spec}) read differently the second time: it changed meanwhile"
            )
        }
        other => other.to_string(),
    }
}

impl fmt::Display for KeyPartSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(n) => write!(f, "env:{n}"),
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Passphrase => f.write_str("passphrase"),
            Self::Given(g) => write!(f, "{}", g.from),
        }
    }
}

impl fmt::Debug for KeyPartSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Errors about key parts. Messages name the part and the check, never the secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A `--key-part` value that is not understood.
    #[error("{0}")]
    Spec(String),
    /// A part could not be read.
    #[error("key part {index} ({spec}): {reason}")]
    Unreadable {
        /// 1-based position.
        index: usize,
        /// The spec as given.
        spec: String,
        /// What went wrong.
        reason: String,
    },
    /// The number or kinds of parts differ from those the data dir was created with.
    #[error("{0}")]
    Mismatch(String),
    /// One part does not match what the data dir was created with.
    #[error(
        "key part {index} ({spec}) is wrong: it is not the part {dir} was created (or last re-keyed) with, or keyparts.json (which holds each part's check) was changed since"
    )]
    WrongPart {
        /// 1-based position.
        index: usize,
        /// The spec as given.
        spec: String,
        /// Whose parts: "this data dir", or the data dir a backup was taken from.
        dir: &'static str,
    },
    /// All parts pass their own check but the combination does not open the data dir.
    #[error(
        "the key parts do not open {dir} (the starter-key check failed); give the same parts, in the same order, as at creation"
    )]
    WrongStarter {
        /// Whose parts: "this data dir", or the data dir a backup was taken from.
        dir: &'static str,
    },
    /// keyparts.json is unreadable or malformed.
    #[error("{0}")]
    Corrupt(String),
}

/// The raw secret of one part, read from its source.
struct PartMaterial(Zeroizing<Vec<u8>>);

/// Argon2id parameters, recorded so that a later start stretches the same way.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        // OWASP's first recommended Argon2id setting: 19 MiB would do; we take 64 MiB, 3 passes.
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

/// What keyparts.json stores about one part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartRecord {
    /// `env`, `file` or `passphrase`.
    pub kind: String,
    /// 8-byte check tag of the part key (base64): lets a start say which part is wrong.
    pub check: String,
    /// The file path, only for the quick-start part that EFS generated itself, so that a
    /// later start without `--key-part` finds it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_file: Option<PathBuf>,
}

/// `system/keyparts.json`: public facts about the starter key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyPartsFile {
    /// Layout version of this file.
    pub version: u32,
    /// 32-byte random salt (base64).
    pub salt: String,
    /// Argon2id parameters for passphrase parts.
    pub argon2: Argon2Params,
    /// The parts in order.
    pub parts: Vec<PartRecord>,
    /// Check tag of the starter key (base64).
    pub check: String,
}

/// The starter key. Never stored; zeroized on drop.
pub struct StarterKey(Key32);

impl StarterKey {
    /// A subkey for one purpose (labels in [`crate::labels`]).
    pub fn derive(&self, label: &[u8]) -> Key32 {
        self.0.derive(b"", label)
    }

    #[cfg(test)]
    pub(crate) fn for_tests(k: Key32) -> Self {
        Self(k)
    }
}

impl fmt::Debug for StarterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StarterKey(<redacted>)")
    }
}

/// The largest key part file read: a part is a few dozen bytes (32 random bytes in base64);
/// anything larger is a mistake (a whole disk named, `file:/dev/sdb1`), refused before it is
/// read.
pub const PART_FILE_MAX: u64 = 64 << 10;

/// A `file:` part's bytes: a regular file of at most [`PART_FILE_MAX`] bytes, or a pipe
/// (`file:<(gpg -d part.gpg)`, a named FIFO a secrets agent writes the part into, which the
/// start waits for) read up to that many, into a buffer that never reallocates (no copy of the
/// part left in freed memory). A device, a directory or a socket is refused before it is
/// opened: `/dev/zero` grew a process by gigabytes.
fn read_part_file(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, String> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let cannot = |e: std::io::Error| format!("cannot read the file: {e}");
    let kind = std::fs::metadata(path).map_err(cannot)?.file_type();
    let pipe = kind.is_fifo();
    if !kind.is_file() && !pipe {
        return Err(
            "not a regular file or a pipe (a device, a directory or a socket is refused: a key part is a small file)"
                .into(),
        );
    }
    let f = std::fs::File::open(path).map_err(cannot)?;
    // What was opened, not what the path named a moment before.
    let meta = f.metadata().map_err(cannot)?;
    if meta.file_type().is_fifo() != pipe || (!pipe && !meta.is_file()) {
        return Err("the file changed while it was opened".into());
    }
    if !pipe && meta.len() > PART_FILE_MAX {
        return Err(format!(
            "the file holds {} bytes: a key part file holds at most {PART_FILE_MAX} (a part is a few dozen bytes, e.g. 32 random bytes in base64)",
            meta.len()
        ));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(PART_FILE_MAX as usize + 1));
    f.take(PART_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > PART_FILE_MAX {
        return Err(format!(
            "more than {PART_FILE_MAX} bytes came: a key part file holds at most that many"
        ));
    }
    Ok(bytes)
}

/// Reads a part's raw material. `prompt` is asked for a passphrase when the environment
/// variable `passphrase_env` is unset.
fn read_part(
    index: usize,
    spec: &KeyPartSpec,
    passphrase_env: &str,
    prompt: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<PartMaterial, KeyError> {
    let unreadable = |reason: String| KeyError::Unreadable {
        index,
        spec: spec.to_string(),
        reason,
    };
    let bytes: Zeroizing<Vec<u8>> = match spec {
        KeyPartSpec::Env(name) => match std::env::var_os(name) {
            Some(v) => Zeroizing::new(v.into_encoded_bytes()),
            None => return Err(unreadable("the environment variable is not set".into())),
        },
        KeyPartSpec::File(path) => read_part_file(path).map_err(unreadable)?,
        KeyPartSpec::Passphrase => match std::env::var(passphrase_env) {
            Ok(v) => Zeroizing::new(v.into_bytes()),
            Err(_) => {
                let v = prompt("EFS passphrase: ").map_err(|e| {
                    unreadable(format!(
                        "no terminal to ask for it and {passphrase_env} is unset ({})",
                        e.kind()
                    ))
                })?;
                // Nothing typed, or an empty standard input that is no terminal: say so,
                // not "too short".
                if v.trim_end_matches(['\n', '\r']).is_empty() {
                    return Err(unreadable(format!(
                        "no passphrase given: {passphrase_env} is unset and nothing was typed \
                         or read from standard input"
                    )));
                }
                Zeroizing::new(v.into_bytes())
            }
        },
        KeyPartSpec::Given(g) => g.material.clone(),
    };
    // Trailing newlines from `echo … > file` or a secret manager are not part of the key.
    let mut bytes = bytes;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    let min = if spec.is_passphrase() {
        8
    } else {
        MIN_PART_BYTES
    };
    if bytes.len() < min {
        return Err(unreadable(format!(
            "too short: at least {min} bytes are needed"
        )));
    }
    Ok(PartMaterial(bytes))
}

fn part_key(
    spec: &KeyPartSpec,
    material: &PartMaterial,
    salt: &[u8],
    argon: Argon2Params,
) -> Result<Key32, KeyError> {
    match spec {
        _ if spec.is_passphrase() => {
            let params = argon2::Params::new(argon.m_kib, argon.t, argon.p, Some(32))
                .map_err(|e| KeyError::Corrupt(format!("bad Argon2id parameters: {e}")))?;
            let a =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = Zeroizing::new([0u8; 32]);
            a.hash_password_into(&material.0, salt, out.as_mut())
                .map_err(|e| KeyError::Corrupt(format!("Argon2id failed: {e}")))?;
            Ok(Key32::from_bytes(*out))
        }
        _ => {
            let ikm = Key32::from_bytes(sha256(&material.0));
            Ok(ikm.derive(salt, labels::KEYPART))
        }
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

fn check_tag(key: &Key32) -> String {
    let t = key.derive(b"", labels::CHECK);
    B64.encode(&t.as_bytes()[..8])
}

fn combine(part_keys: &[Key32], salt: &[u8]) -> Key32 {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * part_keys.len()));
    for k in part_keys {
        ikm.extend_from_slice(k.as_bytes());
    }
    // Key32::derive takes a Key32 as IKM; hash the concatenation down first.
    Key32::from_bytes(sha256(&ikm)).derive(salt, labels::STARTER)
}

/// Creates the starter key of a new data dir from `specs`, returning it and the public
/// record to store. Nothing is written here.
pub fn create(
    specs: &[KeyPartSpec],
    generated_file: Option<&Path>,
    argon: Argon2Params,
    prompt: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<(StarterKey, KeyPartsFile), KeyError> {
    if specs.is_empty() {
        return Err(KeyError::Spec("at least one key part is needed".into()));
    }
    let salt = Key32::random();
    let mut keys = Vec::new();
    let mut parts = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let m = read_part(i + 1, spec, PASSPHRASE_ENV, prompt)?;
        let k = part_key(spec, &m, salt.as_bytes(), argon)?;
        parts.push(PartRecord {
            kind: spec.kind().into(),
            check: check_tag(&k),
            generated_file: match spec {
                KeyPartSpec::File(p) if Some(p.as_path()) == generated_file => Some(p.clone()),
                _ => None,
            },
        });
        keys.push(k);
    }
    let starter = combine(&keys, salt.as_bytes());
    let file = KeyPartsFile {
        version: KEYPARTS_VERSION,
        salt: B64.encode(salt.as_bytes()),
        argon2: argon,
        parts,
        check: check_tag(&starter),
    };
    Ok((StarterKey(starter), file))
}

/// The `keyparts.json` layout this EFS writes and reads.
pub const KEYPARTS_VERSION: u32 = 1;

/// Largest Argon2id parameters a `keyparts.json` may ask for (EFS writes 64 MiB, 3 passes,
/// 1 lane): the file is not authenticated, and a start must not be made to allocate
/// without bound or to stretch for hours.
const ARGON2_MAX: Argon2Params = Argon2Params {
    m_kib: 4 << 20,
    t: 64,
    p: 64,
};

/// Refuses a `keyparts.json` of another layout, or Argon2id parameters beyond
/// [`ARGON2_MAX`] (before anything is derived).
fn check_file(file: &KeyPartsFile) -> Result<(), KeyError> {
    if file.version != KEYPARTS_VERSION {
        return Err(KeyError::Corrupt(format!(
            "keyparts.json has layout version {}; this EFS reads version {KEYPARTS_VERSION}",
            file.version
        )));
    }
    let a = file.argon2;
    if a.m_kib > ARGON2_MAX.m_kib || a.t > ARGON2_MAX.t || a.p > ARGON2_MAX.p {
        return Err(KeyError::Corrupt(format!(
            "keyparts.json asks for Argon2id with {} KiB, {} passes, {} lanes: beyond what EFS writes or accepts ({} KiB, {} passes, {} lanes at most)",
            a.m_kib, a.t, a.p, ARGON2_MAX.m_kib, ARGON2_MAX.t, ARGON2_MAX.p
        )));
    }
    Ok(())
}

/// Rebuilds the starter key of an existing data dir and checks it, part by part.
/// With no `specs`, uses the quick-start key file recorded at creation, if any.
pub fn open(
    file: &KeyPartsFile,
    specs: &[KeyPartSpec],
    prompt: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<StarterKey, KeyError> {
    open_of(file, specs, prompt, "this data dir")
}

/// [`open`] for the `keyparts.json` a backup carries (`efsctl restore --backup-key-part`):
/// its messages name the data dir the backup was taken from, not the one restored into.
pub fn open_backup(
    file: &KeyPartsFile,
    specs: &[KeyPartSpec],
    prompt: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<StarterKey, KeyError> {
    open_of(
        file,
        specs,
        prompt,
        "the data dir this backup was taken from",
    )
}

fn open_of(
    file: &KeyPartsFile,
    specs: &[KeyPartSpec],
    prompt: &dyn Fn(&str) -> std::io::Result<String>,
    dir: &'static str,
) -> Result<StarterKey, KeyError> {
    check_file(file)?;
    let defaulted: Vec<KeyPartSpec>;
    let specs = if specs.is_empty() {
        defaulted = file
            .parts
            .iter()
            .filter_map(|p| p.generated_file.clone().map(KeyPartSpec::File))
            .collect();
        if defaulted.len() != file.parts.len() || defaulted.is_empty() {
            return Err(KeyError::Mismatch(format!(
                "{dir} needs {} key part(s) ({}); give them with --key-part",
                file.parts.len(),
                kinds(file)
            )));
        }
        &defaulted[..]
    } else {
        specs
    };
    if specs.len() != file.parts.len() {
        return Err(KeyError::Mismatch(format!(
            "{dir} was created (or last re-keyed) with {} key part(s) ({}), but {} were given",
            file.parts.len(),
            kinds(file),
            specs.len()
        )));
    }
    for (i, (spec, rec)) in specs.iter().zip(&file.parts).enumerate() {
        if spec.kind() != rec.kind {
            return Err(KeyError::Mismatch(format!(
                "key part {} is {} part, but {dir} expects {} part there ({})",
                i + 1,
                with_article(spec.kind()),
                with_article(&rec.kind),
                kinds(file)
            )));
        }
    }
    let salt = B64
        .decode(&file.salt)
        .map_err(|_| KeyError::Corrupt("keyparts.json: bad salt".into()))?;
    let mut keys = Vec::new();
    for (i, (spec, rec)) in specs.iter().zip(&file.parts).enumerate() {
        let m = read_part(i + 1, spec, PASSPHRASE_ENV, prompt)?;
        let k = part_key(spec, &m, &salt, file.argon2)?;
        if !ct_eq_str(&check_tag(&k), &rec.check) {
            return Err(KeyError::WrongPart {
                index: i + 1,
                spec: spec.to_string(),
                dir,
            });
        }
        keys.push(k);
    }
    let starter = combine(&keys, &salt);
    if !ct_eq_str(&check_tag(&starter), &file.check) {
        return Err(KeyError::WrongStarter { dir });
    }
    Ok(StarterKey(starter))
}

/// "an env", "a file", "a passphrase".
fn with_article(kind: &str) -> String {
    let an = kind.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {kind}", if an { "an" } else { "a" })
}

fn ct_eq_str(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn kinds(file: &KeyPartsFile) -> String {
    file.parts
        .iter()
        .map(|p| p.kind.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Generates a new random key-part file (0600) for the quick start. Fails if it exists.
pub fn generate_part_file(path: &Path) -> std::io::Result<()> {
    let k = Key32::random();
    let mut text = Zeroizing::new(String::with_capacity(46));
    B64.encode_string(k.as_bytes(), &mut text);
    text.push('\n');
    write_key_file(path, text.as_bytes(), 0o600)
}

/// Writes a new file `path` (never over an existing one) with permissions `mode`, and makes
/// it durable before returning: its contents, then its name (an fsync of its directory).
/// Data stored under a key whose only copy a power cut could empty or unlink is lost, and
/// so is a user whose private key is. A file that could not be written whole is removed.
pub fn write_key_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // Exactly `mode`, whatever the umask took away (efs-server and efsctl run with 077: a
    // public key asked for 0644 came out 0600).
    let exact = {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
    };
    if let Err(e) = exact
        .and_then(|()| f.write_all(data))
        .and_then(|()| f.sync_all())
    {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // A file whose name may not survive a crash is no key to hand out either: the caller
    // fails, and finds no file left by this call.
    crate::blob::sync_dir(parent).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// A prompt that never works, for non-interactive callers.
pub fn no_prompt(_: &str) -> std::io::Result<String> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no terminal",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Argon2Params = Argon2Params {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    fn file_part(dir: &Path, name: &str, content: &str) -> KeyPartSpec {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        KeyPartSpec::File(p)
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(
            KeyPartSpec::parse("env:X").unwrap(),
            KeyPartSpec::Env("X".into())
        );
        assert_eq!(
            KeyPartSpec::parse("file:/a/b").unwrap(),
            KeyPartSpec::File("/a/b".into())
        );
        assert_eq!(
            KeyPartSpec::parse("passphrase").unwrap(),
            KeyPartSpec::Passphrase
        );
        for bad in ["", "env:", "file:", "pass", "usb:/x"] {
            assert!(KeyPartSpec::parse(bad).is_err(), "{bad}");
        }
    }

    /// A part read and handed over opens what the part itself opens, shows where it came
    /// from and never its contents, and a passphrase cannot be handed over.
    #[test]
    fn a_given_part_opens_like_the_part_it_was_read_from() {
        let d = tempfile::tempdir().unwrap();
        let a = file_part(d.path(), "a", "aaaaaaaaaaaaaaaaaaaaaaaa\n");
        let (k, rec) = create(std::slice::from_ref(&a), None, FAST, &no_prompt).unwrap();
        let given = KeyPartSpec::Given(GivenPart::read(&a, PASSPHRASE_ENV, &no_prompt).unwrap());
        assert_eq!(given.kind(), "file");
        let shown = format!("{given} {given:?}");
        assert!(!shown.contains("aaaa"), "{shown}");
        assert!(shown.contains(&a.to_string()), "{shown}");
        let k2 = open(&rec, &[given], &no_prompt).unwrap();
        assert_eq!(k.derive(b"x").as_bytes(), k2.derive(b"x").as_bytes());
        // Handed over as contents with its spec (what the admin socket carries).
        let sent = GivenPart::new(
            &a.to_string(),
            Zeroizing::new(b"aaaaaaaaaaaaaaaaaaaaaaaa".to_vec()),
        )
        .unwrap();
        assert!(open(&rec, &[KeyPartSpec::Given(sent)], &no_prompt).is_ok());
        let wrong = GivenPart::new(
            &a.to_string(),
            Zeroizing::new(b"bbbbbbbbbbbbbbbbbbbbbbbb".to_vec()),
        )
        .unwrap();
        let e = open(&rec, &[KeyPartSpec::Given(wrong)], &no_prompt).unwrap_err();
        assert!(matches!(e, KeyError::WrongPart { index: 1, .. }), "{e}");
        // An env part handed over is an env part: refused where a file part is expected.
        let env = GivenPart::new(
            "env:X",
            Zeroizing::new(b"aaaaaaaaaaaaaaaaaaaaaaaa".to_vec()),
        )
        .unwrap();
        let e = open(&rec, &[KeyPartSpec::Given(env)], &no_prompt).unwrap_err();
        assert!(e.to_string().contains("is an env part"), "{e}");
    }

    /// A passphrase read by one process (from its prompt) and handed over opens, in another,
    /// what the passphrase part opens (stretched with Argon2id there, as typed there), and a
    /// wrong one is the wrong part: it was refused ("only env: and file: parts can be read
    /// and handed over"), so a restore through a running server could not take a backup of a
    /// data dir with a passphrase part.
    #[test]
    fn a_passphrase_handed_over_opens_like_one_typed() {
        let d = tempfile::tempdir().unwrap();
        let a = file_part(d.path(), "a", "aaaaaaaaaaaaaaaaaaaaaaaa\n");
        let specs = [a.clone(), KeyPartSpec::Passphrase];
        let typed = |_: &str| Ok("correct horse battery".to_owned());
        let (k, rec) = create(&specs, None, FAST, &typed).unwrap();
        let read = GivenPart::read(&KeyPartSpec::Passphrase, PASSPHRASE_ENV, &typed).unwrap();
        assert_eq!(KeyPartSpec::Given(read.clone()).kind(), "passphrase");
        let shown = format!("{:?}", KeyPartSpec::Given(read.clone()));
        assert!(!shown.contains("horse"), "{shown}");
        let sent = GivenPart::new("passphrase", Zeroizing::new(read.material().to_vec())).unwrap();
        let k2 = open(&rec, &[a.clone(), KeyPartSpec::Given(sent)], &no_prompt).unwrap();
        assert_eq!(k.derive(b"x").as_bytes(), k2.derive(b"x").as_bytes());
        let wrong = GivenPart::new(
            "passphrase",
            Zeroizing::new(b"wrong horse battery".to_vec()),
        )
        .unwrap();
        let e = open(&rec, &[a, KeyPartSpec::Given(wrong)], &no_prompt).unwrap_err();
        assert!(matches!(e, KeyError::WrongPart { index: 2, .. }), "{e}");
    }

    /// Regression: keyparts.json (not authenticated) was read whatever its `version`, and
    /// its Argon2id parameters were used as found: a huge memory size made every start
    /// allocate it. Both are refused before anything is derived.
    #[test]
    fn a_keyparts_file_of_another_layout_or_with_huge_argon2_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let a = file_part(d.path(), "a", "aaaaaaaaaaaaaaaaaaaaaaaa\n");
        let (_, rec) = create(std::slice::from_ref(&a), None, FAST, &no_prompt).unwrap();
        assert_eq!(rec.version, KEYPARTS_VERSION);
        assert!(open(&rec, std::slice::from_ref(&a), &no_prompt).is_ok());
        let mut other = rec.clone();
        other.version = 2;
        let e = open(&other, std::slice::from_ref(&a), &no_prompt).unwrap_err();
        assert!(e.to_string().contains("layout version 2"), "{e}");
        for (m_kib, t, p) in [(u32::MAX, 3, 1), (64, 1_000_000, 1), (64, 3, 1000)] {
            let mut huge = rec.clone();
            huge.argon2 = Argon2Params { m_kib, t, p };
            let e = open(&huge, std::slice::from_ref(&a), &no_prompt).unwrap_err();
            assert!(e.to_string().contains("beyond what EFS"), "{e}");
        }
    }

    #[test]
    fn all_parts_needed_and_each_checked() {
        let d = tempfile::tempdir().unwrap();
        let a = file_part(d.path(), "a", "aaaaaaaaaaaaaaaaaaaaaaaa\n");
        let b = file_part(d.path(), "b", "bbbbbbbbbbbbbbbbbbbbbbbb");
        let (k, rec) = create(&[a.clone(), b.clone()], None, FAST, &no_prompt).unwrap();
        let k2 = open(&rec, &[a.clone(), b.clone()], &no_prompt).unwrap();
        assert_eq!(
            k.derive(b"x").as_bytes(),
            k2.derive(b"x").as_bytes(),
            "same parts, same key"
        );
        // Missing part.
        let e = open(&rec, std::slice::from_ref(&a), &no_prompt).unwrap_err();
        assert!(matches!(e, KeyError::Mismatch(_)), "{e}");
        // Wrong second part.
        let c = file_part(d.path(), "c", "cccccccccccccccccccccccc");
        let e = open(&rec, &[a.clone(), c], &no_prompt).unwrap_err();
        assert!(matches!(e, KeyError::WrongPart { index: 2, .. }), "{e}");
        // Swapped order.
        let e = open(&rec, &[b, a], &no_prompt).unwrap_err();
        assert!(matches!(e, KeyError::WrongPart { index: 1, .. }), "{e}");
    }

    #[test]
    fn passphrase_part_from_prompt() {
        let prompt_ok = |_: &str| Ok::<_, std::io::Error>("correct horse battery".to_string());
        let prompt_bad = |_: &str| Ok::<_, std::io::Error>("wrong horse battery".to_string());
        // SAFETY of the test: EFS_PASSPHRASE is not set by the test harness.
        let (_, rec) = create(&[KeyPartSpec::Passphrase], None, FAST, &prompt_ok).unwrap();
        assert!(open(&rec, &[KeyPartSpec::Passphrase], &prompt_ok).is_ok());
        let e = open(&rec, &[KeyPartSpec::Passphrase], &prompt_bad).unwrap_err();
        assert!(matches!(e, KeyError::WrongPart { index: 1, .. }));
        let e = open(&rec, &[KeyPartSpec::Passphrase], &no_prompt).unwrap_err();
        assert!(e.to_string().contains("EFS_PASSPHRASE"), "{e}");
    }

    #[test]
    fn short_and_missing_parts_refused() {
        let d = tempfile::tempdir().unwrap();
        let short = file_part(d.path(), "s", "short");
        assert!(matches!(
            create(&[short], None, FAST, &no_prompt),
            Err(KeyError::Unreadable { .. })
        ));
        let missing = KeyPartSpec::File(d.path().join("nope"));
        let e = create(&[missing], None, FAST, &no_prompt).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        assert!(e.to_string().contains("No such file"), "{e}");
    }

    /// A `file:` part that is a device or a directory, or larger than a part can be, is refused
    /// before it is read: `/dev/zero` grew efsctl by gigabytes (black-box review). A pipe is
    /// read (a part kept off the disk, `file:<(gpg -d …)`), up to the same size.
    #[test]
    fn a_part_file_is_a_small_regular_file_or_a_pipe() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'a'; PART_FILE_MAX as usize + 1]).unwrap();
        for (path, says) in [
            (PathBuf::from("/dev/zero"), "not a regular file or a pipe"),
            (d.path().to_path_buf(), "not a regular file or a pipe"),
            (big, "at most 65536"),
        ] {
            let started = std::time::Instant::now();
            let e = create(&[KeyPartSpec::File(path.clone())], None, FAST, &no_prompt).unwrap_err();
            assert!(e.to_string().contains(says), "{}: {e}", path.display());
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
        let fits = file_part(d.path(), "fits", &"a".repeat(PART_FILE_MAX as usize));
        create(&[fits], None, FAST, &no_prompt).unwrap();
        // A pipe with a writer: its bytes are the part, the same as a file's.
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                std::fs::write(&fifo, "cccccccccccccccccccccccc\n").unwrap();
            })
        };
        // The writer may open after the reader: wait until it has.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (_, file) = create(&[KeyPartSpec::File(fifo)], None, FAST, &no_prompt).unwrap();
        writer.join().unwrap();
        let same = file_part(d.path(), "same", "cccccccccccccccccccccccc\n");
        open(&file, &[same], &no_prompt).unwrap();
    }

    #[test]
    fn quick_start_file_is_remembered() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.keypart");
        generate_part_file(&p).unwrap();
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&p).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        // Its directory entry is made durable too (a power cut could unlink the only part).
        assert_eq!(crate::blob::synced::under(d.path()), [d.path()]);
        let (_, rec) = create(&[KeyPartSpec::File(p.clone())], Some(&p), FAST, &no_prompt).unwrap();
        assert!(open(&rec, &[], &no_prompt).is_ok());
        assert!(generate_part_file(&p).is_err(), "never overwrites a key");
    }
}
