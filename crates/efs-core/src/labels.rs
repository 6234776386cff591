//! Every key-derivation label and associated-data prefix used by efs-core, in one place.
//!
//! DO NOT CHANGE any of these: they are part of the on-disk format. A new layout gets a
//! new label (`…/v2`) and the old one keeps its reader. The content format's own labels
//! live in `efs_format::labels`.

/// Part key from an `env:` or `file:` part's raw bytes (HKDF info).
pub const KEYPART: &[u8] = b"efs/keypart/v1";
/// Short public check tag of a part key or of the starter key (HKDF info).
pub const CHECK: &[u8] = b"efs/check/v1";
/// Starter key from the concatenated part keys (HKDF info).
pub const STARTER: &[u8] = b"efs/starter/v1";

/// Starter subkey that wraps each filesystem's keyring.
pub const KEYRING_WRAP: &[u8] = b"efs/starter/keyring-wrap/v1";
/// Starter subkey that wraps the token-signing key and the TLS private key.
pub const SYSTEM_SECRET_WRAP: &[u8] = b"efs/starter/system-secret-wrap/v1";
/// Starter subkey that keys the tags of the system database (user and filesystem names).
pub const SYSTEM_TAG: &[u8] = b"efs/starter/system-tag/v1";
/// Starter subkey that encrypts the records of the system database.
pub const SYSTEM_RECORD: &[u8] = b"efs/starter/system-record/v1";

/// A filesystem's index-digest key (HKDF info; the salt is the filesystem id).
pub const INDEX_DIGEST: &[u8] = b"efs/index-digest/v1";
/// Starter subkey that keys the system database's digest (its users, filesystems and
/// secrets; see `digest`).
pub const SYSTEM_DIGEST: &[u8] = b"efs/starter/system-digest/v1";

/// Term subkey that wraps per-file data keys.
pub const TERM_DATA_KEY_WRAP: &[u8] = b"efs/term/data-key-wrap/v1";
/// Term subkey that keys name tags (index keys).
pub const TERM_NAME_TAG: &[u8] = b"efs/term/name-tag/v1";
/// Term subkey that encrypts index records (names, sizes, times, wrapped keys).
pub const TERM_INDEX_RECORD: &[u8] = b"efs/term/index-record/v1";
/// Term subkey that authenticates a backup's manifest (HMAC-SHA256; the term is the one
/// current when the backup was taken, named in the manifest as `mac_term`).
pub const TERM_BACKUP_MANIFEST: &[u8] = b"efs/term/backup-manifest/v1";
/// Term subkey that seals a backup's summary (filesystem name, file count, bytes).
pub const TERM_BACKUP_SUMMARY: &[u8] = b"efs/term/backup-summary/v1";
/// Term subkey (of the tag term) that seals a listing's cursor: the index key a page ends
/// at, which in clear would tie a directory's plaintext path (in the same URL) to its
/// entries' keys on disk.
pub const TERM_LIST_CURSOR: &[u8] = b"efs/term/list-cursor/v1";
/// Term subkey (of the tag term) that stands in for the tag term's key in
/// [`TERM_LIST_CURSOR`] once that term is retired (`efsctl retire-terms`): kept in the
/// keyring in its place, so cursors can still be sealed without the retired key.
pub const TERM_LIST_CURSOR_ROOT: &[u8] = b"efs/term/list-cursor-root/v1";

/// AAD prefix of a wrapped keyring (followed by the filesystem id).
pub const AAD_KEYRING: &[u8] = b"efs-keyring-v1";
/// AAD prefix of a wrapped data key (followed by filesystem id and content id).
pub const AAD_DATA_KEY: &[u8] = b"efs-data-key-v1";
/// AAD prefix of an index record (followed by filesystem id and the entry key).
pub const AAD_RECORD: &[u8] = b"efs-record-v1";
/// AAD prefix of a system-database record (followed by table name and key).
pub const AAD_SYSTEM_RECORD: &[u8] = b"efs-system-record-v1";
/// AAD prefix of a backup's sealed summary (followed by the filesystem id).
pub const AAD_BACKUP_SUMMARY: &[u8] = b"efs-backup-summary-v1";
/// AAD prefix of a sealed listing cursor (followed by the filesystem id).
pub const AAD_LIST_CURSOR: &[u8] = b"efs-list-cursor-v1";
/// AAD of a wrapped system secret (followed by its name).
pub const AAD_SYSTEM_SECRET: &[u8] = b"efs-system-secret-v1";

/// Domain byte of a directory tag (HMAC input prefix).
pub const TAG_DIR: &[u8] = b"d";
/// Domain byte of a name tag (HMAC input prefix).
pub const TAG_NAME: &[u8] = b"n";
/// Domain byte of an ETag (HMAC input prefix).
pub const TAG_ETAG: &[u8] = b"e";

/// Audit-root subkey that keys the audit log's hash chain (HMAC-SHA256).
pub const AUDIT_MAC: &[u8] = b"efs/audit/mac/v1";
/// Audit-root subkey from which each audit file's body key is derived (with the file's salt).
pub const AUDIT_RECORD: &[u8] = b"efs/audit/record/v1";
/// Audit-root subkey that authenticates the audit log's head anchor (HMAC-SHA256).
pub const AUDIT_HEAD: &[u8] = b"efs/audit/head/v1";
/// HKDF info of one audit file's body key (salt: the file's random 16-byte salt).
pub const AUDIT_FILE_KEY: &[u8] = b"efs/audit/file-key/v1";
/// AAD prefix of an audit entry's sealed body (followed by seq and time, big-endian).
pub const AAD_AUDIT_ENTRY: &[u8] = b"efs-audit-entry-v1";
