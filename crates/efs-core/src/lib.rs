//! EFS core: everything that stores and protects data, and nothing that speaks HTTP.
//!
//! Map of the crate:
//! - [`path`]: the one place where a caller's path is validated ([`EfsPath`]).
//! - [`keyparts`]: the starter key, built from key parts kept in different places.
//! - [`keyring`]: each filesystem's numbered key terms and their subkeys.
//! - [`record`]: sealed index records (names, sizes, wrapped data keys).
//! - [`index`] / [`redb_index`]: the index trait and its embedded redb implementation;
//!   [`mem_index`]: an in-memory one, the reference model for the conformance tests.
//! - [`digest`]: the keyed digest of all index entries (rollback detection in fsck).
//! - [`blob`]: the blob store trait and its sharded local-directory implementation.
//! - [`fs`]: a filesystem's operations (stat, list, write, read, move, delete, fsck, gc).
//! - [`system`] / [`datadir`]: users, filesystems and secrets; the data dir's layout.
//! - [`rotation`]: key rotation while serving (new term, background rewrap, resumable).
//! - [`rekey`]: moving a stopped data dir to new key parts (crash-safe switch).
//! - [`fs::backup`] / [`fs::reencrypt`]: backups while serving and their restore;
//!   every file rewritten under a fresh data key while serving.
//! - [`audit`]: the tamper-evident, encrypted audit log and its verification.
//! - [`admin`]: the admin commands shared by `efsctl` and the server's admin socket.
//! - [`labels`]: every key-derivation label (frozen).
//! - [`plainbuf`]: the buffers decrypted content is read into, wiped and reused.

#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod blob;
pub mod datadir;
pub mod digest;
pub mod error;
pub mod fs;
pub mod index;
pub mod keyparts;
pub mod keyring;
pub mod labels;
pub mod mem_index;
pub mod path;
pub mod plainbuf;
pub mod record;
pub mod redb_index;
mod redb_scan;
pub mod rekey;
pub use fs::retire;
pub use fs::rotation;
pub mod system;
pub mod witness;

pub use datadir::{DataDir, Finished, OpenOptions, OpenReport};
pub use error::{CoreError, Result};
pub use fs::{Entry, FileReader, Filesystem, FsOptions, IndexTrust, Precondition, Upload};
pub use keyparts::KeyPartSpec;
pub use path::{EfsPath, PathError};
pub use record::Kind;
