//! The system database (`system/system.redb`): filesystems, users and wrapped secrets.
//!
//! Keys are keyed hashes of names and values are sealed under starter subkeys, so the
//! file shows neither user names nor filesystem names nor public keys.

use std::path::Path;

use efs_format::{Key32, MacKey, wrap};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{CoreError, Result};
use crate::keyparts::StarterKey;
use crate::labels;

const USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("users");
const FILESYSTEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("filesystems");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");

/// A user's access to one filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// Filesystem name.
    pub fs: String,
    /// Read-only access.
    pub read_only: bool,
}

/// A user as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// Raw Ed25519 public key.
    pub public_key: [u8; 32],
    /// Filesystems granted.
    pub grants: Vec<GrantRecord>,
    /// Bumped to revoke every token issued before.
    pub generation: u64,
    /// Creation time, Unix ms.
    pub created_ms: i64,
    /// SHA-256 of the client certificate (DER) bound to this user, if any.
    #[serde(default)]
    pub cert_sha256: Option<[u8; 32]>,
}

/// A filesystem as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FsRecord {
    /// Name.
    pub name: String,
    /// Random id; also the name of its directory under `fs/`.
    pub id: [u8; 16],
    /// Creation time, Unix ms.
    pub created_ms: i64,
}

/// The open system database.
pub struct SystemDb {
    db: Database,
    tag: MacKey,
    record: Key32,
    secret: Key32,
}

fn ix<E: std::fmt::Display>(e: E) -> CoreError {
    CoreError::Index(e.to_string())
}

impl SystemDb {
    /// Opens or creates the database.
    pub fn open(path: &Path, starter: &StarterKey) -> Result<Self> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => CoreError::Index(
                "the data dir is in use by another process (is efs-server running? then efsctl talks to it through system/admin.sock)".into(),
            ),
            e => ix(e),
        })?;
        let w = db.begin_write().map_err(ix)?;
        {
            w.open_table(USERS).map_err(ix)?;
            w.open_table(FILESYSTEMS).map_err(ix)?;
            w.open_table(SECRETS).map_err(ix)?;
        }
        w.commit().map_err(ix)?;
        Ok(Self {
            db,
            tag: MacKey::new(&starter.derive(labels::SYSTEM_TAG)),
            record: starter.derive(labels::SYSTEM_RECORD),
            secret: starter.derive(labels::SYSTEM_SECRET_WRAP),
        })
    }

    fn name_tag(&self, table: &str, name: &str) -> [u8; 32] {
        self.tag.mac(&[table.as_bytes(), &[0], name.as_bytes()])
    }

    fn aad(table: &str, key: &[u8]) -> Vec<u8> {
        [labels::AAD_SYSTEM_RECORD, table.as_bytes(), &[0], key].concat()
    }

    fn put<T: Serialize>(
        &self,
        def: TableDefinition<&[u8], &[u8]>,
        table: &str,
        name: &str,
        v: &T,
    ) -> Result<()> {
        let key = self.name_tag(table, name);
        let plain =
            Zeroizing::new(postcard::to_allocvec(v).expect("serialising to a Vec cannot fail"));
        let sealed = wrap::seal(&self.record, &Self::aad(table, &key), &plain);
        let w = self.db.begin_write().map_err(ix)?;
        {
            let mut t = w.open_table(def).map_err(ix)?;
            t.insert(key.as_slice(), sealed.as_slice()).map_err(ix)?;
        }
        w.commit().map_err(ix)
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        def: TableDefinition<&[u8], &[u8]>,
        table: &str,
        name: &str,
    ) -> Result<Option<T>> {
        let key = self.name_tag(table, name);
        let r = self.db.begin_read().map_err(ix)?;
        let t = r.open_table(def).map_err(ix)?;
        let Some(v) = t.get(key.as_slice()).map_err(ix)? else {
            return Ok(None);
        };
        let plain = wrap::open(&self.record, &Self::aad(table, &key), v.value())?;
        Ok(Some(
            postcard::from_bytes(&plain).map_err(|_| CoreError::Corrupt("system record"))?,
        ))
    }

    fn remove(&self, def: TableDefinition<&[u8], &[u8]>, table: &str, name: &str) -> Result<bool> {
        let key = self.name_tag(table, name);
        let w = self.db.begin_write().map_err(ix)?;
        let existed = {
            let mut t = w.open_table(def).map_err(ix)?;
            t.remove(key.as_slice()).map_err(ix)?.is_some()
        };
        w.commit().map_err(ix)?;
        Ok(existed)
    }

    fn all<T: for<'de> Deserialize<'de>>(
        &self,
        def: TableDefinition<&[u8], &[u8]>,
        table: &str,
    ) -> Result<Vec<T>> {
        let r = self.db.begin_read().map_err(ix)?;
        let t = r.open_table(def).map_err(ix)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(ix)? {
            let (k, v) = item.map_err(ix)?;
            let plain = wrap::open(&self.record, &Self::aad(table, k.value()), v.value())?;
            out.push(
                postcard::from_bytes(&plain).map_err(|_| CoreError::Corrupt("system record"))?,
            );
        }
        Ok(out)
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.get(USERS, "users", name)
    }

    /// Inserts or replaces a user.
    pub fn put_user(&self, u: &UserRecord) -> Result<()> {
        self.put(USERS, "users", &u.name, u)
    }

    /// Removes a user; false if absent.
    pub fn remove_user(&self, name: &str) -> Result<bool> {
        self.remove(USERS, "users", name)
    }

    /// Every user.
    pub fn users(&self) -> Result<Vec<UserRecord>> {
        let mut v: Vec<UserRecord> = self.all(USERS, "users")?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// A filesystem by name.
    pub fn filesystem(&self, name: &str) -> Result<Option<FsRecord>> {
        self.get(FILESYSTEMS, "filesystems", name)
    }

    /// Inserts a filesystem.
    pub fn put_filesystem(&self, f: &FsRecord) -> Result<()> {
        self.put(FILESYSTEMS, "filesystems", &f.name, f)
    }

    /// Every filesystem.
    pub fn filesystems(&self) -> Result<Vec<FsRecord>> {
        let mut v: Vec<FsRecord> = self.all(FILESYSTEMS, "filesystems")?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Stores a secret (signing key, TLS key) sealed under the starter key.
    pub fn put_secret(&self, name: &str, secret: &[u8]) -> Result<()> {
        let aad = [labels::AAD_SYSTEM_SECRET, name.as_bytes()].concat();
        let sealed = wrap::seal(&self.secret, &aad, secret);
        let w = self.db.begin_write().map_err(ix)?;
        {
            let mut t = w.open_table(SECRETS).map_err(ix)?;
            t.insert(name, sealed.as_slice()).map_err(ix)?;
        }
        w.commit().map_err(ix)
    }

    /// A stored secret, unsealed.
    pub fn secret(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let aad = [labels::AAD_SYSTEM_SECRET, name.as_bytes()].concat();
        let r = self.db.begin_read().map_err(ix)?;
        let t = r.open_table(SECRETS).map_err(ix)?;
        let Some(v) = t.get(name).map_err(ix)? else {
            return Ok(None);
        };
        Ok(Some(wrap::open(&self.secret, &aad, v.value())?))
    }

    /// Copies everything into `other` (a database under another starter key: re-keying
    /// the starter key). Every table must be listed here.
    pub fn copy_to(&self, other: &SystemDb) -> Result<()> {
        for u in self.users()? {
            other.put_user(&u)?;
        }
        for f in self.filesystems()? {
            other.put_filesystem(&f)?;
        }
        let names: Vec<String> = {
            let r = self.db.begin_read().map_err(ix)?;
            let t = r.open_table(SECRETS).map_err(ix)?;
            let mut names = Vec::new();
            for item in t.iter().map_err(ix)? {
                names.push(item.map_err(ix)?.0.value().to_owned());
            }
            names
        };
        for name in names {
            let v = self
                .secret(&name)?
                .ok_or(CoreError::Corrupt("a secret vanished while copying"))?;
            other.put_secret(&name, &v)?;
        }
        Ok(())
    }
}
