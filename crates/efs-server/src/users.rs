//! The in-memory user directory: a snapshot of the system database's users, reloaded
//! after every admin change, so that a login or a token check is a map lookup.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use efs_core::DataDir;
use efs_core::system::UserRecord;

use crate::auth::{AuthUser, Grant, UserDirectory};

/// A user as the server needs it: login facts and the bound client certificate.
type Cached = (AuthUser, Option<[u8; 32]>);

/// Users by name.
#[derive(Default)]
pub struct UserCache {
    users: RwLock<HashMap<String, Cached>>,
}

impl UserCache {
    /// Reloads every user from the data dir.
    pub fn reload(&self, data: &DataDir) -> efs_core::Result<()> {
        let mut map = HashMap::new();
        for u in data.users()? {
            if let Some(a) = to_auth(&u) {
                map.insert(u.name.clone(), (a, u.cert_sha256));
            } else {
                tracing::warn!("a stored user has an invalid public key; it cannot log in");
            }
        }
        *self.users.write().expect("lock poisoned") = map;
        Ok(())
    }

    /// The client-certificate hash bound to `user`, if any.
    pub fn cert_binding(&self, user: &str) -> Option<[u8; 32]> {
        self.users
            .read()
            .expect("lock poisoned")
            .get(user)
            .and_then(|(_, c)| *c)
    }

    /// Whether `user` exists.
    pub fn exists(&self, user: &str) -> bool {
        self.users.read().expect("lock poisoned").contains_key(user)
    }
}

fn to_auth(u: &UserRecord) -> Option<AuthUser> {
    Some(AuthUser {
        name: u.name.clone(),
        public_key: ed25519_dalek::VerifyingKey::from_bytes(&u.public_key).ok()?,
        grants: u
            .grants
            .iter()
            .map(|g| Grant {
                fs: g.fs.clone(),
                read_only: g.read_only,
            })
            .collect(),
        generation: token_generation(u),
    })
}

/// The generation a token carries (`gen`). The stored generation restarts at 1 when a
/// deleted user's name is given to a new user, which would bring the old user's tokens back
/// to life; mixing in the creation time tells the two users apart. 53 bits, so that the
/// claim stays an exact number in any JSON reader.
fn token_generation(u: &UserRecord) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"efs-token-generation-v1");
    h.update(u.created_ms.to_be_bytes());
    h.update(u.generation.to_be_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) >> 11
}

impl UserDirectory for UserCache {
    fn lookup(&self, user: &str) -> Option<AuthUser> {
        self.users
            .read()
            .expect("lock poisoned")
            .get(user)
            .map(|(a, _)| a.clone())
    }
}

/// Shared handle.
pub type Users = Arc<UserCache>;
