//! The in-memory user directory: a snapshot of the system database's users, reloaded
//! after every admin change, so that a login or a token check is a map lookup.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use efs_core::DataDir;
use efs_core::system::UserRecord;

use crate::auth::{AuthUser, Grant, UserDirectory};

/// Users by name.
#[derive(Default)]
pub struct UserCache {
    users: RwLock<HashMap<String, Arc<AuthUser>>>,
}

impl UserCache {
    /// Reloads every user from the data dir. When that fails the cache is emptied (fail
    /// closed): until a reload succeeds every login and token is refused, rather than
    /// checked against a list that may still hold a deleted user, a removed grant or a
    /// revoked generation.
    pub fn reload(&self, data: &DataDir) -> efs_core::Result<()> {
        self.install(data.users())
    }

    /// Installs the outcome of reading the users: the new list, or on an error none at all.
    fn install(&self, users: efs_core::Result<Vec<UserRecord>>) -> efs_core::Result<()> {
        let users = match users {
            Ok(users) => users,
            Err(e) => {
                self.users.write().expect("lock poisoned").clear();
                return Err(e);
            }
        };
        let mut map = HashMap::new();
        for u in users {
            if let Some(a) = to_auth(&u) {
                map.insert(u.name.clone(), Arc::new(a));
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
            .and_then(|u| u.cert_sha256)
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
        cert_sha256: u.cert_sha256,
    })
}

/// The generation a token carries (`gen`). A deleted user's name given to a new user must not
/// bring the old user's tokens back to life: a new user's stored generation starts at a random
/// number (below 2^48; users created before that started at 1), and the creation time is mixed
/// in as well. 53 bits, so that the claim stays an exact number in any JSON reader.
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
    fn lookup(&self, user: &str) -> Option<Arc<AuthUser>> {
        self.users.read().expect("lock poisoned").get(user).cloned()
    }
}

/// Shared handle.
pub type Users = Arc<UserCache>;

#[cfg(test)]
mod tests {
    use super::*;
    use efs_core::CoreError;

    fn record(name: &str) -> UserRecord {
        UserRecord {
            name: name.to_owned(),
            public_key: ed25519_dalek::SigningKey::from_bytes(&[1; 32])
                .verifying_key()
                .to_bytes(),
            grants: Vec::new(),
            generation: 1,
            created_ms: 1,
            cert_sha256: Some([7; 32]),
        }
    }

    #[test]
    fn a_failed_reload_refuses_every_user_until_one_succeeds() {
        // Regression: a reload failing after an admin change (delete-user, revoke, grant)
        // left the old list in place, so a deleted or revoked user's tokens kept working.
        let cache = UserCache::default();
        cache.install(Ok(vec![record("alice")])).unwrap();
        assert!(cache.lookup("alice").is_some());
        let err = cache
            .install(Err(CoreError::Index("injected read failure".into())))
            .unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(cache.lookup("alice").is_none(), "stale user still served");
        assert!(!cache.exists("alice"));
        assert_eq!(cache.cert_binding("alice"), None);
        cache.install(Ok(vec![record("alice")])).unwrap();
        assert!(cache.lookup("alice").is_some());
    }
}
