//! Admin commands: one definition, run by `efsctl` either through the server's admin
//! socket (`system/admin.sock`, newline-delimited JSON, 0600) or directly on the data dir
//! when no server runs. Both paths call [`execute`], so they cannot drift apart.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::audit::{Action, AuditError, Filter, Record};
use crate::datadir::DataDir;
use crate::error::CoreError;
use crate::fs::reencrypt;
use crate::fs::rotation::{self, RotationState};
use crate::system::GrantRecord;
use crate::system::SystemTrust;

/// One admin command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AdminRequest {
    /// Create a filesystem.
    CreateFs {
        /// Its name.
        name: String,
    },
    /// List filesystems.
    ListFs,
    /// Create a user.
    CreateUser {
        /// Login name.
        name: String,
        /// Raw Ed25519 public key, base64 (the caller parsed the OpenSSH or PEM text).
        public_key: String,
        /// Initial grants.
        grants: Vec<GrantRecord>,
    },
    /// Grant (or change) a user's access to a filesystem.
    Grant {
        /// User.
        user: String,
        /// Filesystem.
        fs: String,
        /// Read-only.
        read_only: bool,
    },
    /// Revoke a grant, or (without `fs`) every token of the user.
    Revoke {
        /// User.
        user: String,
        /// Filesystem, or none for all tokens.
        fs: Option<String>,
    },
    /// Replace a user's public key (grants kept) and end every token of the user: locks a
    /// stolen key out, which `Revoke` does not.
    ReplaceKey {
        /// User.
        user: String,
        /// The new raw Ed25519 public key, base64 (the caller parsed the OpenSSH or PEM text,
        /// or generated the pair).
        public_key: String,
    },
    /// Delete a user.
    DeleteUser {
        /// User.
        name: String,
    },
    /// List users.
    ListUsers,
    /// Whether the running server can serve: its audit log still takes entries. Answered
    /// by the server alone ([`health`]), never recorded in the audit log: a container
    /// health check asks every 30 s and would otherwise add 2,880 entries a day.
    Health,
    /// Bind a client certificate (SHA-256 of its DER, hex) to a user, or unbind.
    BindCert {
        /// User.
        user: String,
        /// Hex SHA-256, or none to unbind.
        sha256: Option<String>,
    },
    /// Check a filesystem.
    Fsck {
        /// Filesystem.
        fs: String,
        /// Trust the index as it is now: recompute and store its digest and lift a hold
        /// (after a check reported the index differs from its digest).
        #[serde(default)]
        accept_index: bool,
    },
    /// Remove orphans.
    Gc {
        /// Filesystem.
        fs: String,
        /// Keep orphan blobs younger than this (uploads in flight).
        grace_secs: u64,
    },
    /// Empty the server's decrypted cache (server only).
    CacheClear,
    /// Read the server's `--tls-cert` and `--tls-key` again and serve them from the next
    /// handshake on (server only: answered by the server, which holds the certificate).
    ReloadTls,
    /// Add a keyring term and rewrap every data key to it (in the background unless
    /// `wait`).
    RotateKey {
        /// Filesystem.
        fs: String,
        /// Answer only once every data key is rewrapped.
        #[serde(default)]
        wait: bool,
    },
    /// Remove every keyring term but the current one for good (crypto-shredding of what
    /// they sealed), once every record and data key is under the current term. Only
    /// without a server: a running server holds the index and the keyring.
    RetireTerms {
        /// Filesystem.
        fs: String,
        /// Carry it out; without it, refused with what it would do.
        #[serde(default)]
        yes: bool,
    },
    /// Trust the system database as it is when it failed its check against its digest
    /// (refused at open otherwise), and print the digest's generation and anchor. Only
    /// without a server: a running server opened a database that matched.
    AcceptSystem,
    /// Replace the token-signing key by a fresh one: every token issued before is refused,
    /// and the server identity changes. Only without a server: a running server keeps the
    /// key it started with.
    RotateSigningKey,
    /// Remove the TLS key and certificate the server generated (it makes new ones at its next
    /// start). Only without a server: a running server serves the key it loaded.
    RotateTlsKey,
    /// Key terms and rotation progress of one filesystem or all.
    Status {
        /// Filesystem, or none for all.
        #[serde(default)]
        fs: Option<String>,
    },
    /// Rewrite every file under a fresh data key and a new keyring term (in the background
    /// unless `wait`).
    Reencrypt {
        /// Filesystem.
        fs: String,
        /// Answer only once every file is rewritten.
        #[serde(default)]
        wait: bool,
    },
    /// Back up a filesystem's encrypted store into a new directory (written by whoever
    /// runs the command: the server through the socket).
    Backup {
        /// Filesystem.
        fs: String,
        /// Absolute path of the new backup directory.
        dest: String,
        /// Include the keyring, sealed under the starter key.
        #[serde(default)]
        include_keys: bool,
        /// Leave damaged entries out (named) instead of stopping at the first.
        #[serde(default)]
        skip_damaged: bool,
    },
    /// Restore a backup into a new filesystem or an existing empty one.
    Restore {
        /// Name of the new (or empty) filesystem.
        fs: String,
        /// Absolute path of the backup directory.
        src: String,
        /// Key parts (`env:`/`file:` specs) of the data dir the backup was taken in, if
        /// not this one.
        #[serde(default)]
        backup_key_parts: Vec<String>,
        /// The same parts read by the sender (efsctl through the admin socket), in the same
        /// order: used instead of reading `backup_key_parts` here, where the environment
        /// and working directory are the server's. Never recorded.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        backup_key_given: Vec<SentKeyPart>,
        /// Restore a format-1 backup, which has no MAC (refused otherwise). Recorded in
        /// the audit entry's detail with the rest of the request.
        #[serde(default)]
        accept_unauthenticated_backup: bool,
    },
    /// Check the audit log: the whole chain, the anchor, and optionally a head kept
    /// elsewhere.
    AuditVerify {
        /// `SEQ:MAC-HEX`, as an earlier verify printed it.
        #[serde(default)]
        expect_head: Option<String>,
    },
    /// Start a new audit log on purpose, with the server stopped: the log moves aside
    /// (kept, under `system/`), the data dir forgets how far it went, and this command is
    /// the new log's first entry. Carried out when efsctl opens the data dir (see
    /// `OpenOptions::new_audit_log`); a running server refuses it.
    AuditNewLog,
    /// The newest audit entries matching a filter.
    AuditShow {
        /// What to match.
        #[serde(default)]
        filter: Filter,
        /// At most this many entries, the newest (default [`AUDIT_SHOW_DEFAULT`], at most
        /// [`AUDIT_SHOW_MAX`]).
        #[serde(default)]
        limit: Option<u64>,
    },
}

/// A key part read by efsctl (an `env:` or `file:` part's contents, or a passphrase typed
/// there) and handed to the server in a restore request ([`crate::keyparts::GivenPart`]): its
/// spec as given, its contents in base64.
/// Zeroized on drop; left out of `Debug` and of the audit entry.
#[derive(Clone, Serialize, Deserialize)]
pub struct SentKeyPart {
    /// `env:NAME`, `file:PATH` or `passphrase`, as efsctl was given it.
    pub spec: String,
    material: String,
}

impl SentKeyPart {
    /// Reads a backup's key part `spec` in this process (a passphrase from
    /// `EFS_BACKUP_PASSPHRASE`, else `prompt`).
    pub fn read(
        spec: &str,
        prompt: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Result<Self, CoreError> {
        let given = crate::keyparts::GivenPart::read(
            &crate::KeyPartSpec::parse(spec)?,
            crate::keyparts::BACKUP_PASSPHRASE_ENV,
            prompt,
        )?;
        Ok(Self {
            spec: spec.to_owned(),
            material: B64.encode(given.material()),
        })
    }

    /// The part, as the receiver uses it.
    pub fn to_spec(&self) -> Result<crate::KeyPartSpec, CoreError> {
        let material = zeroize::Zeroizing::new(B64.decode(&self.material).map_err(|_| {
            CoreError::Invalid(format!(
                "key part {}: its contents are not base64",
                self.spec
            ))
        })?);
        Ok(crate::KeyPartSpec::Given(crate::keyparts::GivenPart::new(
            &self.spec, material,
        )?))
    }
}

impl Drop for SentKeyPart {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.material);
    }
}

impl std::fmt::Debug for SentKeyPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentKeyPart")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Why `reload-tls` fails with no server running: only a running server holds a certificate.
pub const NO_SERVER_TO_RELOAD: &str = "no server is running on this data dir: there is no TLS certificate to reload; the next start reads the --tls-cert and --tls-key files";

/// Entries `efsctl audit show` returns unless told otherwise.
pub const AUDIT_SHOW_DEFAULT: u64 = 1_000;
/// The most entries one `audit show` returns: the answer is built in the server's memory
/// (about a kilobyte an entry, as text and JSON), and the log grows by an entry a request.
pub const AUDIT_SHOW_MAX: u64 = 100_000;

impl AdminRequest {
    /// The command and its arguments for the audit log; a public key appears as its
    /// fingerprint (`public_key_sha256`), which names it as `ssh-keygen -lf` does.
    pub fn summary(&self) -> String {
        self.summary_with(None)
    }

    /// [`AdminRequest::summary`], with why the command was refused or failed as an `error`
    /// field of its JSON object (one object, as `cmd {json}` is read back by `audit show
    /// --user`), e.g. `revoke {"error":"no user named 'nobody' …","user":"nobody"}`.
    pub fn summary_with(&self, error: Option<&str>) -> String {
        let mut v = match self {
            // Key parts' contents never reach the entry, not even in a value removed after.
            AdminRequest::Restore {
                backup_key_given, ..
            } if !backup_key_given.is_empty() => {
                let mut bare = self.clone();
                if let AdminRequest::Restore {
                    backup_key_given, ..
                } = &mut bare
                {
                    backup_key_given.clear();
                }
                serde_json::to_value(&bare)
            }
            _ => serde_json::to_value(self),
        }
        .expect("serialising JSON cannot fail");
        let obj = v
            .as_object_mut()
            .expect("a tagged enum serialises to an object");
        let cmd = obj
            .remove("cmd")
            .and_then(|c| c.as_str().map(str::to_owned))
            .unwrap_or_default();
        // A key part spec names where a part is (`env:NAME`, `file:PATH`, `passphrase`); one
        // that does not parse may be a secret typed in its place: not recorded.
        // The refusal's message quotes it too.
        let mut error = error.map(str::to_owned);
        if let Some(serde_json::Value::Array(specs)) = obj.get_mut("backup_key_parts") {
            for spec in specs.iter_mut() {
                let bad = match spec.as_str() {
                    Some(t) if crate::keyparts::KeyPartSpec::parse(t).is_ok() => continue,
                    Some(t) => t.to_owned(),
                    None => String::new(),
                };
                if let Some(e) = error.as_mut().filter(|_| !bad.is_empty()) {
                    *e = e.replace(&bad, "<not a key part spec>");
                }
                *spec = "<not a key part spec>".into();
            }
        }
        if let Some(key) = obj.remove("public_key") {
            let raw = key.as_str().and_then(decode_public_key);
            obj.insert(
                "public_key_sha256".into(),
                raw.map_or(serde_json::Value::Null, |k| {
                    crate::system::public_key_fingerprint(&k).into()
                }),
            );
        }
        if let Some(e) = error {
            obj.insert("error".into(), e.into());
        }
        if obj.is_empty() {
            cmd
        } else {
            format!("{cmd} {v}")
        }
    }

    /// Commands that change or export data for long (minutes to hours), or replace a key:
    /// recorded when they start as well as when they end.
    fn runs_long(&self) -> bool {
        matches!(
            self,
            AdminRequest::Backup { .. }
                | AdminRequest::Restore { .. }
                | AdminRequest::Gc { .. }
                | AdminRequest::RotateKey { .. }
                | AdminRequest::Reencrypt { .. }
                // Not long, but a crash between the new key and its entry must not leave the
                // key replaced without a record.
                | AdminRequest::RotateSigningKey
                | AdminRequest::RotateTlsKey
                | AdminRequest::ReplaceKey { .. }
                | AdminRequest::RetireTerms { yes: true, .. }
        )
    }

    fn fs(&self) -> Option<&str> {
        match self {
            AdminRequest::CreateFs { name } => Some(name),
            AdminRequest::Grant { fs, .. }
            | AdminRequest::Fsck { fs, .. }
            | AdminRequest::Gc { fs, .. }
            | AdminRequest::RotateKey { fs, .. }
            | AdminRequest::Reencrypt { fs, .. }
            | AdminRequest::RetireTerms { fs, .. }
            | AdminRequest::Backup { fs, .. }
            | AdminRequest::Restore { fs, .. } => Some(fs),
            AdminRequest::Revoke { fs, .. } | AdminRequest::Status { fs } => fs.as_deref(),
            _ => None,
        }
    }
}

/// Who runs an admin command, as the audit log records it.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The local account (`uid:N`).
    pub user: String,
    /// How it came: `admin-socket` or `data-dir` (efsctl with no server running).
    pub via: String,
}

impl Operator {
    /// The account running this process, for efsctl on the data dir.
    pub fn this_process(via: &str) -> Self {
        // Not the owner of /proc/self: a process made non-dumpable (efsctl is) shows root
        // there.
        let uid = rustix::process::getuid().as_raw();
        Self {
            user: format!("uid:{uid}"),
            via: via.to_owned(),
        }
    }
}

/// Records an admin command and its outcome in the audit log, and waits until it is written.
pub async fn record_admin(
    dd: &DataDir,
    op: &Operator,
    req: &AdminRequest,
    ok: bool,
) -> Result<(), AuditError> {
    record_admin_with(dd, op, req, ok, None).await
}

/// Records an admin command that was refused or failed (status 400), with why: `error`, the
/// message the operator was shown, as the `error` field of the command's JSON. The
/// messages name what is wrong (a user, a filesystem, a key part's spec, a file), never a
/// secret: core errors never carry a key (CONTRIBUTING.md), and a key part's errors name
/// the part and the check, not its contents.
pub async fn record_admin_failed(
    dd: &DataDir,
    op: &Operator,
    req: &AdminRequest,
    error: &str,
) -> Result<(), AuditError> {
    let mut rec = Record::new(Action::Admin, 400);
    rec.user = Some(op.user.clone());
    rec.client = Some(op.via.clone());
    rec.fs = req.fs().map(str::to_owned);
    rec.detail = Some(req.summary_with(Some(error)));
    dd.audit().record(rec).await
}

/// [`record_admin`] with the command's result appended to the entry's detail (JSON).
pub async fn record_admin_with(
    dd: &DataDir,
    op: &Operator,
    req: &AdminRequest,
    ok: bool,
    result: Option<&serde_json::Value>,
) -> Result<(), AuditError> {
    record_admin_status(dd, op, req, if ok { 200 } else { 400 }, result).await
}

/// An admin entry with `status`: 202 started, 200 done, 400 refused or failed.
async fn record_admin_status(
    dd: &DataDir,
    op: &Operator,
    req: &AdminRequest,
    status: u16,
    result: Option<&serde_json::Value>,
) -> Result<(), AuditError> {
    let mut rec = Record::new(Action::Admin, status);
    rec.user = Some(op.user.clone());
    rec.client = Some(op.via.clone());
    rec.fs = req.fs().map(str::to_owned);
    rec.detail = Some(match result {
        Some(r) => format!("{} {r}", req.summary()),
        None => req.summary(),
    });
    dd.audit().record(rec).await
}

/// The answer to an admin command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdminResponse {
    /// True on success.
    pub ok: bool,
    /// Human-readable lines to print.
    pub lines: Vec<String>,
    /// Structured result for `--json`.
    pub data: serde_json::Value,
    /// The error message, on failure.
    pub error: Option<String>,
    /// For fsck: whether the filesystem is clean.
    #[serde(default)]
    pub clean: Option<bool>,
    /// The exit code efsctl ends with, when not the usual one (0 done, 1 failed): 4 a dry
    /// run that would change something (`retire-terms` without `--yes`), 5 refused until
    /// something else is done first ([`CoreError::Refused`]; the message says what).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<u8>,
}

/// efsctl's exit code for a dry run that would change something ([`AdminResponse::exit`]).
pub const EXIT_DRY_RUN: u8 = 4;
/// efsctl's exit code for a command refused until something else is done first.
pub const EXIT_REFUSED: u8 = 5;

impl AdminResponse {
    fn ok(lines: Vec<String>, data: serde_json::Value) -> Self {
        Self {
            ok: true,
            lines,
            data,
            error: None,
            clean: None,
            exit: None,
        }
    }

    /// A failure.
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

fn fmt_time(ms: i64) -> String {
    let secs = ms / 1000;
    format!("{secs}")
}

/// The answer to [`AdminRequest::Health`] of a server on `dd`: healthy while its audit log
/// takes entries (otherwise it refuses every request, so it is not).
pub fn health(dd: &DataDir) -> AdminResponse {
    if dd.audit().is_failed() {
        AdminResponse::err(AuditError::Failed.to_string())
    } else {
        AdminResponse::ok(vec!["ok".into()], serde_json::json!({ "status": "ok" }))
    }
}

/// Runs one command on an open data dir, recorded as run by this process's account (see
/// [`execute_as`]).
pub async fn execute(dd: &DataDir, req: AdminRequest) -> AdminResponse {
    execute_as(dd, req, &Operator::this_process("local")).await
}

/// Runs one command on an open data dir and records it in the audit log as run by `op`.
/// `CacheClear` is answered by the server itself. Refused when the audit log cannot be
/// written (fail closed).
pub async fn execute_as(dd: &DataDir, req: AdminRequest, op: &Operator) -> AdminResponse {
    if dd.audit().is_failed() {
        return AdminResponse::err(AuditError::Failed.to_string());
    }
    let recorded = req.clone();
    if req.runs_long() {
        // Recorded before it starts (status 202), and refused if that cannot be written: a
        // backup, a restore or a rotation interrupted by a crash, or by a failure of the
        // log while it runs, still has its entry.
        if let Err(e) = record_admin_status(dd, op, &recorded, 202, None).await {
            return AdminResponse::err(e.to_string());
        }
    }
    let resp = match run(dd, req, op).await {
        Ok(r) => r,
        Err(CoreError::Refused(m)) => AdminResponse {
            exit: Some(EXIT_REFUSED),
            ..AdminResponse::err(m)
        },
        Err(e) => AdminResponse::err(e.to_string()),
    };
    let recorded_ok = match (&recorded, resp.ok) {
        // What was accepted, and the digest it got, belong in the log with the command; so do
        // the server identities before and after a new token-signing key, the keys before
        // and after a user's new key (the old one names what a thief held), and what a gc
        // removed (stored content gone, even if only orphans).
        (
            AdminRequest::AcceptSystem
            | AdminRequest::RotateSigningKey
            | AdminRequest::RotateTlsKey
            | AdminRequest::ReplaceKey { .. }
            | AdminRequest::RetireTerms { .. }
            | AdminRequest::Gc { .. },
            true,
        ) => record_admin_with(dd, op, &recorded, true, Some(&resp.data)).await,
        (_, true) => record_admin(dd, op, &recorded, true).await,
        // Why it failed, as the operator was told.
        (_, false) => {
            let error = resp.error.as_deref().unwrap_or("failed");
            record_admin_failed(dd, op, &recorded, error).await
        }
    };
    match recorded_ok {
        Ok(()) => resp,
        Err(e) => AdminResponse::err(format!(
            "{e} (the command itself {})",
            if resp.ok { "was carried out" } else { "failed" }
        )),
    }
}

/// The line a rotation or re-encryption begins with when it first emptied what recursive
/// deletes had left (their files would otherwise have been `what`).
fn emptied_line(emptied: usize, what: &str) -> Vec<String> {
    match emptied {
        0 => Vec::new(),
        n => vec![format!(
            "First emptied {n} director{} of unfinished recursive deletes (their files would otherwise have been {what})",
            if n == 1 { "y" } else { "ies" }
        )],
    }
}

async fn run(dd: &DataDir, req: AdminRequest, op: &Operator) -> Result<AdminResponse, CoreError> {
    Ok(match req {
        AdminRequest::CreateFs { name } => {
            let mut lines = dd.create_fs(&name)?;
            let id = dd
                .list_fs()?
                .into_iter()
                .find(|f| f.name == name)
                .map(|f| hex::encode(f.id));
            let (line, digest) = system_digest_after(dd);
            lines.push(line);
            AdminResponse::ok(
                lines,
                serde_json::json!({ "name": name, "id": id, "system_digest": digest }),
            )
        }
        AdminRequest::ListFs => {
            let all = dd.list_fs()?;
            let lines = all
                .iter()
                .map(|f| format!("{}\t{}", f.name, hex::encode(f.id)))
                .collect();
            let data = all
                .iter()
                .map(|f| serde_json::json!({"name": f.name, "id": hex::encode(f.id), "created": fmt_time(f.created_ms)}))
                .collect();
            AdminResponse::ok(lines, serde_json::Value::Array(data))
        }
        AdminRequest::CreateUser {
            name,
            public_key,
            grants,
        } => {
            let raw = decode_public_key(&public_key).ok_or_else(bad_public_key)?;
            let u = dd.create_user(&name, raw, grants)?;
            let g: Vec<String> = u.grants.iter().map(grant_text).collect();
            let mut lines = vec![format!(
                "Created user '{}' with access to {}",
                u.name,
                g.join(", ")
            )];
            lines.extend(same_key_warning(dd, &u));
            let (line, digest) = system_digest_after(dd);
            lines.push(line);
            AdminResponse::ok(
                lines,
                serde_json::json!({"name": u.name, "system_digest": digest}),
            )
        }
        AdminRequest::ReplaceKey { user, public_key } => {
            let raw = decode_public_key(&public_key).ok_or_else(bad_public_key)?;
            let (old_raw, u) = dd.replace_key(&user, raw)?;
            let (old, new) = (
                crate::system::public_key_fingerprint(&old_raw),
                crate::system::public_key_fingerprint(&u.public_key),
            );
            let mut lines = vec![
                format!(
                    "Replaced the public key of '{}': {old} -> {new}; every token of '{}' is revoked, its grants are kept",
                    u.name, u.name
                ),
                format!(
                    "The old key no longer logs in as '{}'. What was done as '{}': efsctl audit show --user {}",
                    u.name, u.name, u.name
                ),
            ];
            // The old key still opens every other user that has it: the thief's way back in.
            let still: Vec<String> = dd
                .users()
                .unwrap_or_default()
                .into_iter()
                .filter(|o| o.public_key == old_raw)
                .map(|o| o.name)
                .collect();
            if !still.is_empty() {
                lines.push(format!(
                    "WARNING: user(s) {} still have the old public key: it still logs in as each of them (replace-key them too)",
                    still.join(", ")
                ));
            }
            lines.extend(same_key_warning(dd, &u));
            let (line, digest) = system_digest_after(dd);
            lines.push(line);
            AdminResponse::ok(
                lines,
                serde_json::json!({
                    "user": u.name,
                    "old_key_sha256": old,
                    "new_key_sha256": new,
                    "tokens_revoked": true,
                    "old_key_still_logs_in_as": still,
                    "system_digest": digest,
                }),
            )
        }
        AdminRequest::Grant {
            user,
            fs,
            read_only,
        } => {
            let u = dd.grant(&user, &fs, read_only)?;
            let (line, digest) = system_digest_after(dd);
            AdminResponse::ok(
                vec![
                    format!(
                        "User '{}' now has {} access to '{fs}' (its earlier tokens are revoked)",
                        u.name,
                        if read_only { "read-only" } else { "read-write" }
                    ),
                    line,
                ],
                serde_json::json!({
                    "user": u.name, "fs": fs, "read_only": read_only, "tokens_revoked": true,
                    "system_digest": digest,
                }),
            )
        }
        AdminRequest::Revoke { user, fs } => {
            let u = dd.revoke(&user, fs.as_deref())?;
            let line = match &fs {
                Some(fs) => format!(
                    "Revoked '{}' access to '{fs}'; its tokens are revoked",
                    u.name
                ),
                None => format!("Revoked every token of '{}'", u.name),
            };
            // The digest to note: a copy of the system database from before this revoke,
            // put back, would give the access back; it shows an earlier generation.
            let (digest_line, digest) = system_digest_after(dd);
            AdminResponse::ok(
                vec![line, digest_line],
                serde_json::json!({
                    "user": u.name, "fs": fs, "tokens_revoked": true, "system_digest": digest,
                }),
            )
        }
        AdminRequest::DeleteUser { name } => {
            dd.delete_user(&name)?;
            let (line, digest) = system_digest_after(dd);
            AdminResponse::ok(
                vec![format!("Deleted user '{name}'"), line],
                serde_json::json!({ "user": name, "deleted": true, "system_digest": digest }),
            )
        }
        AdminRequest::Health => AdminResponse::err(
            "health is answered by a running efs-server only (through its admin socket)",
        ),
        AdminRequest::ListUsers => {
            let users = dd.users()?;
            let lines = users
                .iter()
                .map(|u| {
                    let g: Vec<String> = u.grants.iter().map(grant_text).collect();
                    // The key as `--json` has it, which `create-user --pubkey` reads:
                    // this listing kept elsewhere recreates the users after a lost disk.
                    format!(
                        "{}\t{}\t{}{}",
                        u.name,
                        g.join(","),
                        B64.encode(u.public_key),
                        if u.cert_sha256.is_some() {
                            "\tclient certificate bound"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            let data = users
                .iter()
                .map(|u| serde_json::json!({"name": u.name, "grants": u.grants, "public_key": B64.encode(u.public_key), "cert_bound": u.cert_sha256.is_some()}))
                .collect();
            AdminResponse::ok(lines, serde_json::Value::Array(data))
        }
        AdminRequest::BindCert { user, sha256 } => {
            let hash = match sha256 {
                None => None,
                Some(h) => Some(
                    hex::decode(h.replace(':', ""))
                        .ok()
                        .and_then(|v| <[u8; 32]>::try_from(v).ok())
                        .ok_or_else(|| CoreError::Invalid("sha256 must be 64 hex digits".into()))?,
                ),
            };
            let u = dd.bind_cert(&user, hash)?;
            let (line, digest) = system_digest_after(dd);
            AdminResponse::ok(
                vec![
                    format!(
                        "User '{}': client certificate {}",
                        u.name,
                        if hash.is_some() { "bound" } else { "unbound" }
                    ),
                    line,
                ],
                serde_json::json!({
                    "user": u.name,
                    "cert_bound": hash.is_some(),
                    "sha256": hash.map(hex::encode),
                    "system_digest": digest,
                }),
            )
        }
        AdminRequest::Fsck { fs, accept_index } => {
            let f = dd.require_open_fs(&fs)?;
            if accept_index {
                let check = dd.accept_index(&fs).await?;
                let crate::digest::DigestCheck::Holds {
                    generation,
                    entries,
                    anchor,
                } = check
                else {
                    return Err(CoreError::Index(
                        "the new index digest does not hold (the index changed while it was computed?)".into(),
                    ));
                };
                let mut lines = vec![format!(
                    "accepted the index of '{fs}' as it is now: {entries} entries, digest generation {generation}, anchor {anchor}; the filesystem is served again"
                )];
                // Accepting trusts the index, not its entries: what fsck finds damaged in it
                // stays damaged, and the operator must hear so here (a request for one of
                // them fails). The filesystem is served meanwhile.
                let rep = f.fsck().await?;
                if !rep.errors.is_empty() {
                    lines.push(format!(
                        "WARNING: fsck finds {} damaged entr{} in '{fs}' (listed below): accepted as they are, they fail to read (the server answers 500) until replaced or deleted",
                        rep.errors.len(),
                        if rep.errors.len() == 1 { "y" } else { "ies" }
                    ));
                    lines.extend(rep.errors.iter().map(|e| fsck_error_line(e, &rep.paths)));
                }
                return Ok(AdminResponse::ok(
                    lines,
                    serde_json::json!({
                        "fs": fs,
                        "accepted": true,
                        "entries": entries,
                        "generation": generation,
                        "anchor": anchor,
                        "damaged": rep.errors,
                        "paths": rep.paths,
                    }),
                ));
            }
            let rep = f.fsck().await?;
            let mut lines = vec![format!(
                "fsck '{fs}': {} records, {} files verified, {} errors, {} orphan blobs, {} orphan inline contents",
                rep.records,
                rep.files_verified,
                rep.errors.len(),
                rep.orphan_blobs.len(),
                rep.orphan_inline.len()
            )];
            if let Some(crate::digest::DigestCheck::Holds {
                generation, anchor, ..
            }) = &rep.digest
            {
                lines.push(format!(
                    "index digest: generation {generation}, anchor {anchor} (keep both elsewhere: an index put back whole to an earlier state shows an earlier generation or another anchor)"
                ));
                if let Some(mark) = f.generation_mark() {
                    lines.push(format!(
                        "index generation last recorded by the data dir: {mark}"
                    ));
                }
            }
            if rep.pending_delete_records > 0 {
                lines.push(format!(
                    "{} of unfinished recursive deletes (not counted above; checked too: {} verified): the server removes them after the delete, and at its next start those a stop left; efsctl rotate-key, reencrypt and retire-terms --yes remove them first",
                    counted(rep.pending_delete_records, "record", "records"),
                    counted(rep.pending_delete_files_verified, "file", "files")
                ));
            }
            let (partials, partial_bytes) = rep.partial_writes;
            if partials > 0 {
                lines.push(format!(
                    "{} of uploads a crash cut short ({partial_bytes} bytes; not errors): efsctl gc --fs {fs} removes them once older than its --grace",
                    counted(partials, "partial write", "partial writes")
                ));
            }
            lines.extend(rep.errors.iter().map(|e| fsck_error_line(e, &rep.paths)));
            lines.extend(rep.orphan_blobs.iter().map(|b| format!("orphan blob: {b}")));
            lines.extend(
                rep.orphan_inline
                    .iter()
                    .map(|b| format!("orphan inline content: {b}")),
            );
            let mut r = AdminResponse::ok(
                lines,
                serde_json::json!({
                    "records": rep.records, "pending_delete_records": rep.pending_delete_records,
                    "files_verified": rep.files_verified,
                    "pending_delete_files_verified": rep.pending_delete_files_verified,
                    "errors": rep.errors, "paths": rep.paths, "orphan_blobs": rep.orphan_blobs, "orphan_inline": rep.orphan_inline,
                    "partial_writes": partials, "partial_write_bytes": partial_bytes,
                    "digest": digest_json(rep.digest.as_ref()),
                    "recorded_generation": f.generation_mark(),
                }),
            );
            r.clean = Some(rep.is_clean());
            r
        }
        AdminRequest::Gc { fs, grace_secs } => {
            let f = dd.require_open_fs(&fs)?;
            f.ensure_index_checked().await?;
            let rep = f.gc(grace_secs).await?;
            AdminResponse::ok(
                {
                    let mut lines = vec![format!(
                        "gc '{fs}': removed {} orphan blobs, {} orphan inline contents and {} stale partial writes; kept {} blobs younger than {grace_secs} s",
                        rep.blobs_removed,
                        rep.inline_removed,
                        rep.partials_removed,
                        rep.blobs_kept_young
                    )];
                    if rep.blobs_deferred > 0 {
                        lines.push(format!(
                            "{} more orphan blobs wait for a backup of '{fs}' to end, or are being removed as one has ended",
                            rep.blobs_deferred
                        ));
                    }
                    lines
                },
                serde_json::json!({"blobs_removed": rep.blobs_removed, "inline_removed": rep.inline_removed, "partials_removed": rep.partials_removed, "blobs_kept_young": rep.blobs_kept_young, "blobs_deferred": rep.blobs_deferred}),
            )
        }
        AdminRequest::RotateKey { fs, wait } => {
            let emptied = dd.finish_pending_deletes(&fs).await?;
            let (started, p) = dd.rotate_key(&fs, wait).await?;
            let mut lines = emptied_line(emptied, "re-sealed under the new term");
            lines.push(if started {
                format!(
                    "Added key term {} to '{fs}' ({} terms; older terms are kept for older backups until efsctl retire-terms); new writes use it now",
                    p.current_term, p.terms
                )
            } else {
                format!(
                    "A key rotation of '{fs}' to term {} was unfinished: resuming it (no new term added)",
                    p.current_term
                )
            });
            lines.push(match p.state {
                // Damaged entries skipped are said here too, not only by `status`.
                RotationState::Done => format!(
                    "Rewrapped {} data keys and records to term {} (content untouched){}; rotation done",
                    p.rewrapped,
                    p.current_term,
                    p.damaged.describe()
                ),
                RotationState::Running => format!(
                    "Rewrapping every data key in the background (content untouched); follow it with: efsctl status --fs {fs}"
                ),
            });
            AdminResponse::ok(
                lines,
                serde_json::json!({ "fs": fs, "started": started, "rotation": p, "emptied_pending_deletes": emptied }),
            )
        }
        AdminRequest::RetireTerms { fs, yes } => {
            let (plan, generation) = dd.retire_terms_by(&fs, yes, op).await.map_err(|e| match e {
                // Refused until an operator decides (exit 5), as the other refusals.
                CoreError::IndexHold => CoreError::Refused(format!(
                    "'{fs}' is on hold: its index failed its integrity check (changed outside EFS, or an older copy put back, which could hold terms already retired). Look with efsctl fsck --fs {fs} and put its own index back (accepting a copy from before a retirement, efsctl fsck --accept-index, brings the erased terms back), then retire"
                )),
                e => e,
            })?;
            let retired_before = plan
                .retired_before
                .iter()
                .map(|(n, at)| serde_json::json!({ "term": n, "retired_ms": at, "retired_at": rfc3339_ms(*at) }))
                .collect::<Vec<_>>();
            if plan.nothing_to_retire() {
                // Success: a script retiring after each rotation finds it already done.
                return Ok(AdminResponse::ok(
                    vec![plan.nothing_message(&fs)],
                    serde_json::json!({
                        "fs": fs,
                        "nothing_to_retire": true,
                        "retired_terms": [],
                        "current_term": plan.current,
                        "retired_before": retired_before,
                        "message": plan.nothing_message(&fs),
                    }),
                ));
            }
            let Some(generation) = generation else {
                // The dry run: what it would do, as an answer (JSON with --json), exit 4.
                let mut resp = AdminResponse::ok(
                    vec![plan.dry_run_message(&fs)],
                    serde_json::json!({
                        "fs": fs,
                        "dry_run": true,
                        "retired_terms": [],
                        "would_retire": plan.retire,
                        "current_term": plan.current,
                        "entries_checked": plan.entries,
                        "tag_term_retired": plan.tag_term_retired,
                        "being_deleted": plan.being_deleted,
                        "shared_with": plan.shared.iter().map(|(n, t)| serde_json::json!({ "fs": n, "terms": t })).collect::<Vec<_>>(),
                        "not_compared": plan.not_compared,
                        "covers_deleted_before_ms": plan.current_since_ms,
                        "message": plan.dry_run_message(&fs),
                    }),
                );
                resp.exit = Some(EXIT_DRY_RUN);
                return Ok(resp);
            };
            let mut lines = vec![format!(
                "Retired key {} of '{fs}' ({} entries checked, all under term {}; index rewritten into a fresh file, digest generation {generation}): what they sealed no longer opens with this filesystem's keyring, nor from backups of it made without --include-keys; {}",
                crate::retire::terms_phrase(&plan.retire),
                plan.entries,
                plan.current,
                plan.covers()
            )];
            lines.push(
                "Not erased yet: copies of the keyring from before (snapshots of the data dir or index.redb, backups made with --include-keys, the old file's blocks on disk) still open them with the current key parts. To finish: efsctl rekey-starter --new-key-part ... (server stopped), destroy the old key parts, then take new backups".into(),
            );
            if plan.emptied > 0 {
                lines.push(format!(
                    "First emptied {} director{} of unfinished recursive deletes (their files and blobs removed, as the server would have)",
                    plan.emptied,
                    if plan.emptied == 1 { "y" } else { "ies" }
                ));
            }
            if plan.tag_term_retired {
                lines.push("Names keep working (the name-tag key stays); listing cursors issued before now are refused: clients list those directories again from the start".into());
            }
            if let Some(w) = plan.shared_warning(&fs) {
                lines.push(w);
            }
            // The text whole, as the dry run's and the refusals' answers carry theirs: a
            // script shows what was done, and what is not erased yet, from the JSON alone.
            let message = lines.join("\n");
            AdminResponse::ok(
                lines,
                serde_json::json!({
                    "message": message,
                    "fs": fs,
                    "retired_terms": plan.retire,
                    "current_term": plan.current,
                    "entries_checked": plan.entries,
                    "tag_term_retired": plan.tag_term_retired,
                    "shared_with": plan.shared.iter().map(|(n, t)| serde_json::json!({ "fs": n, "terms": t })).collect::<Vec<_>>(),
                    "not_compared": plan.not_compared,
                    "index_generation": generation,
                    "covers_deleted_before_ms": plan.current_since_ms,
                    "emptied_pending_deletes": plan.emptied,
                }),
            )
        }
        AdminRequest::RotateSigningKey => {
            let (old, new) = dd.rotate_signing_key()?;
            let (line, digest) = system_digest_after(dd);
            AdminResponse::ok(
                vec![
                    format!("Replaced the token-signing key: server identity {old} -> {new}"),
                    "Every token issued before is refused once the server starts: clients log in again.".into(),
                    format!(
                        "Tell users the new identity: clients pinned to {old} refuse to sign for {new} (efs: remove the remote and add it again)"
                    ),
                    line,
                ],
                serde_json::json!({ "old_server_id": old, "server_id": new, "system_digest": digest }),
            )
        }
        AdminRequest::RotateTlsKey => {
            let old = dd.forget_generated_tls()?;
            let (line, digest) = system_digest_after(dd);
            AdminResponse::ok(
                vec![
                    format!(
                        "Removed the TLS key and certificate the server generated (certificate SHA-256 fingerprint {old}) and system/tls-cert.pem"
                    ),
                    "efs-server generates a new key and certificate at its next start, and prints the new fingerprint (TLS certificate SHA-256 fingerprint: …); its certificate is in system/tls-cert.pem again".into(),
                    format!(
                        "Give clients the new certificate or fingerprint: those that trust {old} refuse the new one (efs: remove the remote and add it again; curl: the new --cacert)"
                    ),
                    line,
                ],
                serde_json::json!({ "old_tls_cert_sha256": old, "system_digest": digest }),
            )
        }
        AdminRequest::AcceptSystem => {
            let (lines, data) = match dd.accept_system()? {
                SystemTrust::Accepted {
                    found,
                    generation,
                    anchor,
                } => {
                    let mut lines = vec![
                        format!("Accepted the system database as it is ({found})"),
                        format!(
                            "system database digest: generation {generation}, anchor {anchor} (note them outside the data dir)"
                        ),
                    ];
                    // Accepted without a witness: nothing told a whole data dir put back (its
                    // record of a witness removed with it, say) from one changed in place.
                    let witnessed = dd.rollback_witness().is_some();
                    if !witnessed {
                        lines.push(
                            "note: no rollback witness was consulted (none given with --rollback-witness, none recorded in the data dir): a data dir put back whole from an earlier copy is not told apart from one changed in place".into(),
                        );
                    }
                    (
                        lines,
                        serde_json::json!({ "accepted": true, "found": found, "generation": generation, "anchor": anchor, "witness_consulted": witnessed }),
                    )
                }
                SystemTrust::Holds { generation, anchor } => (
                    vec![
                        "The system database matches its digest: nothing to accept".into(),
                        format!("system database digest: generation {generation}, anchor {anchor}"),
                    ],
                    serde_json::json!({ "accepted": false, "generation": generation, "anchor": anchor }),
                ),
                other => {
                    return Err(CoreError::Invalid(format!(
                        "unexpected state of the system database: {other:?}"
                    )));
                }
            };
            AdminResponse::ok(lines, data)
        }
        AdminRequest::Status { fs } => {
            let all = fs.is_none();
            let names = match fs {
                Some(n) => vec![n],
                None => dd.list_fs()?.into_iter().map(|f| f.name).collect(),
            };
            let mut lines = Vec::new();
            let mut data = Vec::new();
            // A filesystem listed as not served makes the answer "checked, not clean" (exit
            // code 3, as fsck's), as `status --fs NAME` of it is an error.
            let mut not_served = false;
            // Whether an index was listed that nothing in this process checked (no server).
            let mut offline = false;
            for name in names {
                let f = match dd.unopened(&name) {
                    Some(why) if all => {
                        not_served = true;
                        lines.push(format!("{name}: NOT SERVED: {why}"));
                        data.push(serde_json::json!({ "name": name, "not_served": why }));
                        continue;
                    }
                    _ => dd.require_open_fs(&name)?,
                };
                let terms = f.term_numbers();
                let prog = rotation::progress(&f).await?;
                let re = reencrypt::progress(&f).await?;
                let rot = match &prog {
                    None => "no rotation yet".to_owned(),
                    Some(p) => format!(
                        "rotation to term {}: {} ({} records rewrapped, {} entries seen, pass {}{})",
                        p.current_term,
                        match p.state {
                            RotationState::Running => "running",
                            RotationState::Done => "done",
                        },
                        p.rewrapped,
                        p.seen,
                        p.pass,
                        p.damaged.describe()
                    ),
                };
                lines.push(format!(
                    "{name}: current key term {} ({} terms); {rot}",
                    f.current_term(),
                    terms.len()
                ));
                // Held (the server's start check found the index differs from its digest, or
                // is an older copy put back): said here too, not only by the requests' 503s.
                // Without a server nothing has checked the index: an older copy of it put
                // back is told by its digest's generation alone (what the start holds), a
                // record changed inside it only by a full scan (fsck).
                let unchecked = !f.index_check_started();
                if unchecked {
                    offline = true;
                }
                let earlier_copy = if unchecked {
                    f.stored_generation_behind_mark().await?
                } else {
                    None
                };
                let on_hold =
                    f.index_trust() == crate::fs::IndexTrust::Failed || earlier_copy.is_some();
                if on_hold {
                    not_served = true;
                    let why = match earlier_copy {
                        Some((at, mark)) => format!(
                            "its index is at generation {at}, the data dir last saw {mark}: an earlier copy of the index was put back? The server holds it at its start (every request on it answers 503 integrity_hold)"
                        ),
                        None => "its index failed its integrity check, every request on it answers 503 integrity_hold".to_owned(),
                    };
                    lines.push(format!(
                        "{name}: ON HOLD: {why}; look with efsctl fsck --fs {name}, then put its own index back or accept it (--accept-index; never a copy from before a retire-terms, which would bring the erased terms back)"
                    ));
                }
                let retired = f.retired_terms();
                if !retired.is_empty() {
                    let list: Vec<String> = retired
                        .iter()
                        .map(|(n, at)| format!("{n} (at {})", rfc3339_ms(*at)))
                        .collect();
                    lines.push(format!(
                        "{name}: retired key terms: {} (their keys are gone from this filesystem's keyring: what they sealed no longer opens with it)",
                        list.join(", ")
                    ));
                }
                let re_stopped = re
                    .as_ref()
                    .filter(|p| p.state == RotationState::Running)
                    .and_then(|_| reencrypt::stopped(&f));
                if let Some(p) = &re {
                    lines.push(format!(
                        "{name}: re-encryption to term {}: {} ({} of {} files, {} bytes rewritten; {} changed by clients first; pass {}{})",
                        p.current_term,
                        match (p.state, &re_stopped) {
                            (RotationState::Running, Some(why)) => format!(
                                "stopped ({why}); it resumes at the next start or efsctl reencrypt"
                            ),
                            (RotationState::Running, None) => "running".to_owned(),
                            (RotationState::Done, _) => "done".to_owned(),
                        },
                        p.files_done,
                        p.total_files,
                        p.bytes_done,
                        p.skipped,
                        p.pass,
                        p.damaged.describe()
                    ));
                }
                let seals = f.seal_counts();
                let current_seals = seals.get(&f.current_term()).copied().unwrap_or(0);
                lines.push(format!(
                    "{name}: {current_seals} records sealed under the current term (AES-GCM with random nonces allows one key {} seals; the server warns from {})",
                    crate::fs::SEAL_LIMIT,
                    crate::fs::SEAL_WARNING
                ));
                if current_seals >= crate::fs::SEAL_WARNING {
                    lines.push(format!(
                        "{name}: WARNING: past half of that limit: rotate the keyring now (efsctl rotate-key --fs {name})"
                    ));
                }
                data.push(serde_json::json!({
                    "name": name,
                    "on_hold": on_hold,
                    "current_term": f.current_term(),
                    "terms": terms.len(),
                    "term_numbers": terms,
                    "retired_terms": retired
                        .iter()
                        .map(|(n, at)| serde_json::json!({ "term": n, "retired_ms": at, "retired_at": rfc3339_ms(*at) }))
                        .collect::<Vec<_>>(),
                    "rotation": prog,
                    "reencryption": re,
                    "reencryption_stopped": re_stopped,
                    "records_sealed": seals
                        .iter()
                        .map(|(t, n)| (t.to_string(), serde_json::Value::from(*n)))
                        .collect::<serde_json::Map<String, serde_json::Value>>(),
                    "records_sealed_limit": crate::fs::SEAL_LIMIT,
                    "rotate_now": current_seals >= crate::fs::SEAL_WARNING,
                }));
            }
            if offline {
                lines.push(
                    "(no server runs: an index put back from an earlier copy is seen here, as the server's start would hold it; a record changed inside an index is found only by a check of every entry: efsctl fsck --fs FS)"
                        .to_owned(),
                );
            }
            if !all {
                let mut r = AdminResponse::ok(lines, serde_json::Value::Array(data));
                r.clean = Some(!not_served);
                return Ok(r);
            }
            // Every filesystem: the system database's digest too, the JSON an object then.
            let digest = match dd.system_digest()? {
                crate::digest::DigestCheck::Holds {
                    generation, anchor, ..
                } => {
                    lines.push(format!(
                        "system database digest: generation {generation}, anchor {anchor}"
                    ));
                    serde_json::json!({ "holds": true, "generation": generation, "anchor": anchor })
                }
                other => {
                    let found = crate::system::SystemDb::describe(&other);
                    lines.push(format!("WARNING: {found}"));
                    serde_json::json!({ "holds": false, "found": found })
                }
            };
            // And its rollback witness: where it is, and whether it keeps up.
            let state = dd.rollback_witness();
            let same_volume = state.as_ref().is_some_and(|w| w.same_volume);
            let witness = match state.clone() {
                Some(w) if w.failing => {
                    lines.push(format!(
                        "WARNING: rollback witness {}: its last write failed (see the server's log); it stays at generation {} until a write succeeds",
                        w.path.display(),
                        w.generation
                    ));
                    serde_json::json!({ "path": w.path, "generation": w.generation, "failing": true, "same_volume": same_volume })
                }
                Some(w) => {
                    lines.push(format!(
                        "rollback witness: {}, at generation {}",
                        w.path.display(),
                        w.generation
                    ));
                    serde_json::json!({ "path": w.path, "generation": w.generation, "failing": false, "same_volume": same_volume })
                }
                None if dd.has_had_witness()? => {
                    lines.push(
                        "WARNING: this data dir has a rollback witness, but was opened without it (--rollback-witness, EFS_ROLLBACK_WITNESS): nothing checks it, and writes move the generation on unseen (its record, made by an older EFS, has no path: a start of the server given the option once records it)"
                            .to_owned(),
                    );
                    serde_json::Value::Null
                }
                None => serde_json::Value::Null,
            };
            if let Some(w) = state.filter(|w| w.same_volume) {
                lines.push(format!(
                    "WARNING: rollback witness {}: on the same filesystem as the data dir (a snapshot of that volume put back puts the witness back with it): keep it on other storage",
                    w.path.display()
                ));
            }
            let mut r = AdminResponse::ok(
                lines,
                serde_json::json!({ "filesystems": data, "system_digest": digest, "rollback_witness": witness }),
            );
            r.clean = Some(!not_served);
            r
        }
        AdminRequest::AuditVerify { expect_head } => audit_verify(dd, expect_head.as_deref())?,
        AdminRequest::AuditShow { filter, limit } => audit_show(dd, &filter, limit)?,
        AdminRequest::AuditNewLog => match dd.moved_audit_log() {
            Some(moved) => AdminResponse::ok(
                vec![format!(
                    "Started a new audit log in {}; the previous one, and its anchor, are in {} (kept: the evidence of what was done before; this command is the new log's first entry)",
                    dd.audit().dir().display(),
                    moved.display()
                )],
                serde_json::json!({ "new_log": dd.audit().dir(), "moved_to": moved }),
            ),
            None if dd.audit_log_restarted() => AdminResponse::ok(
                vec![format!(
                    "Started a new audit log in {} (there was none to move aside)",
                    dd.audit().dir().display()
                )],
                serde_json::json!({ "new_log": dd.audit().dir(), "moved_to": null }),
            ),
            None => {
                return Err(CoreError::Invalid(
                    "a new audit log is started when efsctl opens the data dir for it, with the server stopped".into(),
                ));
            }
        },
        AdminRequest::ReloadTls => {
            return Err(CoreError::Invalid(NO_SERVER_TO_RELOAD.into()));
        }
        AdminRequest::CacheClear => AdminResponse::ok(
            vec!["No server is running: there is no cache to clear".into()],
            serde_json::json!({ "cleared": false, "reason": "no server is running" }),
        ),
        AdminRequest::Reencrypt { fs, wait } => {
            let emptied = dd.finish_pending_deletes(&fs).await?;
            let (started, p) = dd.reencrypt(&fs, wait).await?;
            let mut lines = emptied_line(emptied, "given fresh keys under the new term");
            lines.push(if started {
                format!(
                    "Added key term {} to '{fs}'; new writes use it now; every existing file is rewritten under a fresh data key",
                    p.current_term
                )
            } else {
                format!(
                    "A re-encryption of '{fs}' to term {} was unfinished: resuming it",
                    p.current_term
                )
            });
            lines.push(match p.state {
                // Damaged entries skipped are said here too, not only by `status`.
                RotationState::Done => format!(
                    "Re-encrypted {} files ({} bytes); {} were changed by clients first{}; done",
                    p.files_done,
                    p.bytes_done,
                    p.skipped,
                    p.damaged.describe()
                ),
                RotationState::Running => format!(
                    "Re-encrypting in the background; follow it with: efsctl status --fs {fs}"
                ),
            });
            AdminResponse::ok(
                lines,
                serde_json::json!({
                    "fs": fs,
                    "started": started,
                    "damaged": p.damaged,
                    "reencryption": p,
                    "emptied_pending_deletes": emptied,
                }),
            )
        }
        AdminRequest::Backup {
            fs,
            dest,
            include_keys,
            skip_damaged,
        } => {
            let rep = dd
                .backup_skipping_damaged(
                    &fs,
                    std::path::Path::new(&dest),
                    include_keys,
                    skip_damaged,
                )
                .await?;
            let m = &rep.manifest;
            let mut lines = vec![
                format!(
                    "Backed up '{fs}' to {dest}: {} entries, {} files ({} bytes), {} blobs; {} encrypted bytes written",
                    m.entries,
                    rep.summary.files,
                    rep.summary.bytes,
                    m.blobs.len(),
                    rep.stored_bytes
                ),
                format!(
                    "Manifest authenticated (HMAC-SHA256 under key term {}; name and counts sealed); MAC {} (note it to recognise this backup at restore)",
                    m.mac_term,
                    &m.mac[..32]
                ),
            ];
            lines.push(if include_keys {
                "The keyring is included, sealed under this data dir's starter key: restoring needs these key parts (and keys/keyparts.json, which is in the backup)".into()
            } else {
                "WARNING: no key material included. This backup can only be restored into this data dir while filesystem '".to_owned()
                    + &fs
                    + "' exists; to survive the loss of the data dir, back up with --include-keys"
            });
            for e in &rep.skipped {
                lines.push(format!("warning: entry {} left out: {}", e.entry, e.reason));
            }
            if !rep.skipped.is_empty() {
                lines.push(format!(
                    "warning: {} entries left out of this backup{} (efsctl fsck --fs {fs} names the damage); everything else is backed up and restores as usual",
                    rep.skipped.len(),
                    if rep.skipped_inline > 0 {
                        format!(
                            ", and {} inline contents no entry backed up names",
                            rep.skipped_inline
                        )
                    } else {
                        String::new()
                    }
                ));
            }
            // The manifest as written, with the summary it holds sealed.
            let mut data = serde_json::to_value(m).unwrap_or_default();
            if let Some(obj) = data.as_object_mut() {
                // The summary but its `left_out`, which is `skipped` below.
                obj.insert("fs_name".into(), rep.summary.fs_name.clone().into());
                obj.insert("files".into(), rep.summary.files.into());
                obj.insert("bytes".into(), rep.summary.bytes.into());
                if skip_damaged {
                    obj.insert(
                        "skipped".into(),
                        serde_json::to_value(&rep.skipped).unwrap_or_default(),
                    );
                    obj.insert("skipped_inline".into(), rep.skipped_inline.into());
                }
            }
            let mut resp = AdminResponse::ok(lines, data);
            // Exit code 3, as fsck's for damage: a nightly job must not take it for a
            // complete backup.
            resp.clean = Some(rep.skipped.is_empty());
            resp
        }
        AdminRequest::Restore {
            fs,
            src,
            backup_key_parts,
            backup_key_given,
            accept_unauthenticated_backup,
        } => {
            let parts = if backup_key_given.is_empty() {
                backup_key_parts
                    .iter()
                    .map(|s| crate::KeyPartSpec::parse(s).map_err(CoreError::from))
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                backup_key_given
                    .iter()
                    .map(SentKeyPart::to_spec)
                    .collect::<Result<Vec<_>, _>>()?
            };
            // Restored as a new filesystem, it is registered in the system database.
            let new_fs = dd.list_fs()?.iter().all(|f| f.name != fs);
            let mut lines = dd
                .restore(
                    &fs,
                    std::path::Path::new(&src),
                    &parts,
                    &crate::keyparts::no_prompt,
                    accept_unauthenticated_backup,
                )
                .await?;
            let authenticated = lines
                .iter()
                .any(|l| l.starts_with("Manifest authenticated"));
            // Entries the backup left out (`--skip-damaged`): not restored.
            let left_out: u64 = lines
                .iter()
                .find_map(|l| l.strip_prefix(crate::datadir::PARTIAL_BACKUP))
                .and_then(|rest| rest.split(' ').next()?.parse().ok())
                .unwrap_or(0);
            // The backup's date and the first bytes of its MAC, as the text prints them (to
            // compare with what `efsctl backup` printed).
            let taken_at = lines.iter().find_map(|l| {
                let rest = &l[l.find(" taken at ")? + " taken at ".len()..];
                Some(rest[..rest.find(": ")?].to_owned())
            });
            let mac = lines
                .iter()
                .filter(|l| l.starts_with("Manifest authenticated"))
                .find_map(|l| Some(l.rsplit_once("MAC ")?.1.to_owned()));
            let mut data = serde_json::json!({
                "fs": fs,
                "authenticated": authenticated,
                "left_out": left_out,
                "taken_at": taken_at,
                "mac": mac,
            });
            if new_fs {
                let (line, digest) = system_digest_after(dd);
                lines.push(line);
                data["system_digest"] = digest;
            }
            let mut resp = AdminResponse::ok(lines, data);
            // Exit code 3, as the backup's own: a restore drill must not take it for a whole
            // filesystem.
            resp.clean = Some(left_out == 0);
            resp
        }
    })
}

/// The system database's digest after a command changed it, to note outside the data dir
/// as `accept-system` and `rekey-starter` print theirs (a copy of the database put back
/// later shows an earlier generation or another anchor): the line, and `system_digest` for
/// `--json` as `status` has it. The change is saved already: a digest that cannot be read
/// is said in a warning, not made the command's failure.
fn system_digest_after(dd: &DataDir) -> (String, serde_json::Value) {
    match dd.system_digest() {
        Ok(crate::digest::DigestCheck::Holds {
            generation, anchor, ..
        }) => (
            format!(
                "system database digest: generation {generation}, anchor {anchor} (note them outside the data dir)"
            ),
            serde_json::json!({ "holds": true, "generation": generation, "anchor": anchor }),
        ),
        Ok(other) => {
            let found = crate::system::SystemDb::describe(&other);
            (
                format!("WARNING: {found}"),
                serde_json::json!({ "holds": false, "found": found }),
            )
        }
        Err(e) => (
            format!(
                "WARNING: the system database's digest could not be read ({e}): run efsctl status to see it"
            ),
            serde_json::json!({ "holds": false, "found": e.to_string() }),
        ),
    }
}

fn digest_json(d: Option<&crate::digest::DigestCheck>) -> serde_json::Value {
    use crate::digest::DigestCheck;
    match d {
        Some(DigestCheck::Holds {
            generation,
            entries,
            anchor,
        }) => {
            serde_json::json!({"holds": true, "generation": generation, "entries": entries, "anchor": anchor})
        }
        Some(DigestCheck::Differs { generation, .. }) => {
            serde_json::json!({"holds": false, "generation": generation})
        }
        Some(DigestCheck::Unreadable) | None => serde_json::json!({"holds": false}),
    }
}

/// `1 entry`, `2 entries`.
/// A raw Ed25519 public key from a request's base64, or `None` when it is not 32 bytes.
/// The 32 bytes of an Ed25519 public key sent through the socket, checked as `efsctl` and
/// the server check a key they parse: a point on the curve, not of small order (a weak key
/// would let anyone's signature pass as the user's). `efsctl` sends only checked keys; this
/// is for any other program speaking to the socket.
fn decode_public_key(b64: &str) -> Option<[u8; 32]> {
    let raw = B64
        .decode(b64.as_bytes())
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).ok()?;
    (!key.is_weak()).then_some(raw)
}

fn bad_public_key() -> CoreError {
    CoreError::Invalid(
        "public_key must be an Ed25519 public key: 32 bytes, base64, a point of the curve not of \
         small order"
            .into(),
    )
}

/// A warning when another user has `u`'s public key. Allowed (one person, two roles), but
/// whoever holds the key is both users, and revoking one (or replacing its key) leaves the
/// key working as the other: worth a second look. Best effort: `u` is saved by now, and this
/// must not turn that into an error.
fn same_key_warning(dd: &DataDir, u: &crate::system::UserRecord) -> Option<String> {
    let same: Vec<String> = dd
        .users()
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o.name != u.name && o.public_key == u.public_key)
        .map(|o| o.name)
        .collect();
    (!same.is_empty()).then(|| {
        format!(
            "WARNING: user(s) {} have the same public key: whoever holds the private key logs in as each of them (give every user a key of its own unless that is meant)",
            same.join(", ")
        )
    })
}

fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// An fsck error as efsctl prints it: `error: entry KEY (PATH): …` when the entry's path is
/// known (the operator tells users which files to replace by it), else as fsck wrote it.
/// Control characters of a name are escaped, so that a name cannot forge another line.
fn fsck_error_line(e: &str, paths: &std::collections::BTreeMap<String, String>) -> String {
    let named = e
        .strip_prefix("entry ")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(key, tail)| Some((key, paths.get(key)?, tail)));
    match named {
        Some((key, path, tail)) => {
            let mut shown = String::with_capacity(path.len());
            for c in path.chars() {
                if c.is_control() {
                    shown.extend(c.escape_default());
                } else {
                    shown.push(c);
                }
            }
            format!("error: entry {key} ({shown}):{tail}")
        }
        None => format!("error: {e}"),
    }
}

fn grant_text(g: &GrantRecord) -> String {
    format!("{}{}", g.fs, if g.read_only { " (read-only)" } else { "" })
}

/// A head as `audit verify` prints it, `SEQ:MAC` (64 hex digits): its number and MAC.
pub fn parse_audit_head(head: &str) -> Result<(u64, &str), CoreError> {
    head.split_once(':')
        .and_then(|(s, m)| Some((s.parse::<u64>().ok()?, m)))
        .filter(|(_, m)| m.len() == 64 && m.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            CoreError::Invalid(
                "--expect-head takes SEQ:MAC as audit verify printed it (e.g. 42:3fa1…, 64 hex digits)"
                    .into(),
            )
        })
}

fn audit_verify(dd: &DataDir, expect: Option<&str>) -> Result<AdminResponse, CoreError> {
    let expect = expect.map(parse_audit_head).transpose()?;
    let rep = dd.audit_verify(expect)?;
    let mut lines = Vec::new();
    match &rep.problem {
        Some(p) => lines.push(format!("audit verify: FAILED: {}", p.message)),
        None => lines.push(format!(
            "audit verify: OK: {} in {}, chain intact",
            counted(rep.entries, "entry", "entries"),
            counted(rep.files as u64, "file", "files")
        )),
    }
    use crate::audit::AnchorCheck;
    match &rep.anchor {
        AnchorCheck::Match => lines.push("anchor: matches the last entry".into()),
        AnchorCheck::Behind { anchor } => lines.push(format!(
            "anchor: at entry {anchor}; {} after it {} written since the last fsync group (normal while the server runs, or after a crash)",
            counted(rep.entries - anchor, "entry", "entries"),
            if rep.entries - anchor == 1 { "was" } else { "were" }
        )),
        AnchorCheck::Empty => lines.push("anchor: none yet (empty log)".into()),
        AnchorCheck::NotChecked => {}
    }
    for t in &rep.torn {
        lines.push(format!(
            "torn last line (a write cut short by a crash, or in progress; not an entry): {t}"
        ));
    }
    if rep.is_clean() {
        lines.push(format!(
            "head: entry {} mac {} (keep it off this machine; later: efsctl audit verify --expect-head {}:{})",
            rep.head_seq, rep.head_mac, rep.head_seq, rep.head_mac
        ));
    } else {
        // Not offered for keeping: it is the head of a log that failed its check.
        lines.push(format!(
            "head: entry {} mac {} (of a log that failed its check: do not keep it as a trusted head)",
            rep.head_seq, rep.head_mac
        ));
    }
    let mut r = AdminResponse::ok(
        lines,
        serde_json::to_value(&rep).expect("serialising JSON cannot fail"),
    );
    r.clean = Some(rep.is_clean());
    Ok(r)
}

/// A path as one unambiguous column of `audit show`'s text: as it is, unless it holds a
/// space (the columns' separator: `/a  200  10.9.9.9` would pass for other columns, `/a -> /b`
/// for a move), a quote, a backslash, or a character that prints as nothing or reorders the
/// line (controls, U+202E and the other bidirectional overrides, U+2028, zero-width ones):
/// then quoted and escaped as Rust's `{:?}` writes it (`"/a  200"`, `"/x\u{202e}y"`). A
/// caller chooses the paths its reads and stats name, so they are the reader's, not the
/// log's, to trust; `--json` carries them exactly.
fn shown_path(p: &str) -> std::borrow::Cow<'_, str> {
    let plain = p
        .chars()
        .all(|c| c != ' ' && c != '"' && c != '\\' && c.escape_debug().count() == 1);
    if plain {
        std::borrow::Cow::Borrowed(p)
    } else {
        std::borrow::Cow::Owned(format!("{p:?}"))
    }
}

fn audit_show(
    dd: &DataDir,
    filter: &Filter,
    limit: Option<u64>,
) -> Result<AdminResponse, CoreError> {
    let limit = limit.unwrap_or(AUDIT_SHOW_DEFAULT);
    if !(1..=AUDIT_SHOW_MAX).contains(&limit) {
        return Err(CoreError::Invalid(format!(
            "--limit {limit}: give 1 to {AUDIT_SHOW_MAX} (narrow a larger answer with --since, --until, --user, --fs or --path)"
        )));
    }
    crate::audit::check_filter(filter).map_err(CoreError::Invalid)?;
    let rep = dd.audit_show_last(filter, limit as usize)?;
    let mut lines = Vec::new();
    let mut data = Vec::new();
    for e in &rep.entries {
        let r = &e.record;
        let time = rfc3339_ms(e.time_ms);
        let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let what = match (&r.path, &r.to) {
            (Some(p), Some(t)) => format!("{} -> {}", shown_path(p), shown_path(t)),
            (Some(p), None) => shown_path(p).into_owned(),
            _ => "-".into(),
        };
        lines.push(format!(
            "{time}  #{}  {}  {}  {}  {}  {}  {}{}",
            e.seq,
            dash(&r.user),
            r.action.name(),
            dash(&r.fs),
            what,
            r.status,
            dash(&r.client),
            r.detail
                .as_ref()
                .map(|d| format!("  {d}"))
                .unwrap_or_default()
        ));
        let mut v = serde_json::to_value(e).expect("serialising JSON cannot fail");
        v["time"] = serde_json::Value::String(time);
        data.push(v);
    }
    if rep.entries.is_empty() {
        lines.push("no entry matches".into());
        if let Some(p) = filter.path.as_deref().filter(|p| looks_encoded(p)) {
            lines.push(format!(
                "note: paths are recorded decoded: --path {p:?} looks percent-encoded (a name \
                 with a space is given with the space, quoted)"
            ));
        }
    }
    if let Some(next) = rep.next_from {
        lines.push(format!(
            "warning: {} after these not shown (the first {limit} from entry {} are): continue with --from-entry {next}",
            counted(rep.omitted, "newer matching entry", "newer matching entries"),
            filter.from_seq.unwrap_or(1),
        ));
    } else if rep.omitted > 0 {
        lines.push(format!(
            "warning: {} not shown (the newest {limit} are): narrow with --since, --until, --user, --fs, --path, --action or --status, raise --limit (at most {AUDIT_SHOW_MAX}), or page through them all in order with --from-entry 1",
            counted(rep.omitted, "older matching entry", "older matching entries")
        ));
    }
    if rep.untracked_names > 0 {
        lines.push(format!(
            "warning: the path was moved to more names than a show follows ({}): entries about {} later names are missing from this answer; ask for those names with --path",
            crate::audit::read::MAX_TRACKED,
            rep.untracked_names
        ));
    }
    if let Some(n) = rep.chain_broken_at {
        lines.push(format!(
            "warning: the audit chain breaks at entry {n}: entries from there on cannot be trusted (run efsctl audit verify)"
        ));
    }
    if rep.undecryptable > 0 {
        lines.push(format!(
            "warning: {} entries did not decrypt (run efsctl audit verify)",
            rep.undecryptable
        ));
    }
    let mut r = AdminResponse::ok(lines, serde_json::Value::Array(data));
    // A broken chain makes the answer untrustworthy, and entries left out (by --limit, or
    // names not followed) make it incomplete: said in the exit code too (3), since with
    // --json the warning is on standard error only, and an export saved from standard
    // output alone would pass for the whole answer.
    r.clean = Some(
        rep.chain_broken_at.is_none()
            && rep.undecryptable == 0
            && rep.untracked_names == 0
            && rep.omitted == 0,
    );
    Ok(r)
}

/// Whether `p` holds a `%XX` escape (a path given as in a URL).
fn looks_encoded(p: &str) -> bool {
    let b = p.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// Unix ms as RFC 3339 UTC with three digits of milliseconds always (a fixed width, so that
/// columns of times line up: `…:18.280Z`, not `…:18.28Z`).
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(FORMAT).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// A panic inside the server's own gc or key rotation (caught there: the run is a failure
    /// tried again later) while it held a std lock that they take poisoned it, and every
    /// later run panicked on that lock. The locks whose state stays whole after a panic (the
    /// tables of filesystems, a filesystem's pins and keyring) are now taken as they are:
    /// the next automatic runs work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gc_and_key_rotation_run_again_after_a_panic_poisoned_their_locks() {
        use super::{AdminRequest, Operator, execute_as};
        let (_tmp, dd, fs) = crate::fs::rotation::tests::env();
        crate::fs::rotation::tests::put(&fs, "/a", &[7u8; 300_000]).await;
        dd.poison_fs_tables();
        fs.poison_locks();
        let op = Operator {
            user: crate::datadir::SERVER_USER.into(),
            via: "automatic".into(),
        };
        let gc = |fs: &str| AdminRequest::Gc {
            fs: fs.into(),
            grace_secs: 0,
        };
        let terms = fs.term_numbers().len();
        for _ in 0..2 {
            let r = execute_as(&dd, gc("docs"), &op).await;
            assert!(r.ok, "{:?}", r.error);
            let rotate = AdminRequest::RotateKey {
                fs: "docs".into(),
                wait: true,
            };
            let r = execute_as(&dd, rotate, &op).await;
            assert!(r.ok, "{:?}", r.error);
        }
        assert_eq!(fs.term_numbers().len(), terms + 2);
        // A name that is not served is still told apart (the table of unopened ones).
        let r = execute_as(&dd, gc("nope"), &op).await;
        let e = r.error.unwrap();
        assert!(e.contains("no filesystem named 'nope'"), "{e}");
        assert_eq!(dd.open_filesystems().len(), 1);
    }

    /// A key part spec that does not parse may be a passphrase typed in its place: neither the
    /// entry's arguments nor its error text carry it (both did).
    #[test]
    fn a_mistyped_key_part_spec_is_not_recorded() {
        let req = super::AdminRequest::Restore {
            fs: "records".into(),
            src: "/backups/b".into(),
            backup_key_parts: vec!["MyS3cret".into(), "env:EFS_OLD_PART".into()],
            backup_key_given: Vec::new(),
            accept_unauthenticated_backup: false,
        };
        let error = crate::keyparts::KeyPartSpec::parse("MyS3cret")
            .unwrap_err()
            .to_string();
        assert!(error.contains("MyS3cret"), "{error}");
        let entry = req.summary_with(Some(&error));
        assert!(!entry.contains("MyS3cret"), "{entry}");
        assert!(entry.contains("env:EFS_OLD_PART"), "{entry}");
        assert!(entry.contains("<not a key part spec>"), "{entry}");
    }

    /// Times have one width, so that columns of them line up (`…:18.280Z`, never `…:18.28Z`).
    #[test]
    fn times_have_three_digits_of_milliseconds() {
        assert_eq!(
            super::rfc3339_ms(1_796_366_778_280),
            "2026-12-04T06:46:18.280Z"
        );
        assert_eq!(
            super::rfc3339_ms(1_796_366_778_000),
            "2026-12-04T06:46:18.000Z"
        );
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }

    /// A path a caller chose could pass for other columns of `audit show`'s text (a fake
    /// status and address after two spaces, a fake move) or reorder the line (U+202E): such
    /// paths are quoted and escaped; ordinary ones, non-ASCII included, are not.
    #[test]
    fn shown_path_quotes_what_could_mislead() {
        use super::shown_path;
        for plain in ["/patients/173/prescription.pdf", "/ü/日本/файл", "/a-b_c.d"] {
            assert_eq!(shown_path(plain), plain);
        }
        assert_eq!(
            shown_path("/fake  200  10.9.9.9  forged"),
            "\"/fake  200  10.9.9.9  forged\""
        );
        assert_eq!(shown_path("/a -> /b"), "\"/a -> /b\"");
        assert_eq!(shown_path("/inj\u{202e}RTL"), "\"/inj\\u{202e}RTL\"");
        assert_eq!(shown_path("/ls\u{2028}x"), "\"/ls\\u{2028}x\"");
        assert_eq!(shown_path("/zw\u{200b}"), "\"/zw\\u{200b}\"");
        assert_eq!(shown_path("/bom\u{feff}"), "\"/bom\\u{feff}\"");
        assert_eq!(shown_path("/q\"x"), "\"/q\\\"x\"");
    }

    /// A damaged entry's path goes after its key; a name's control characters are escaped
    /// (a newline would start a line of its own); an entry without a path keeps its key alone.
    #[test]
    fn fsck_errors_name_the_path_when_known() {
        let paths = [("ab".to_owned(), "/d/new\nline".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(
            super::fsck_error_line("entry ab: content: decryption failed", &paths),
            "error: entry ab (/d/new\\nline): content: decryption failed"
        );
        assert_eq!(
            super::fsck_error_line("entry cd: record: decryption failed", &paths),
            "error: entry cd: record: decryption failed"
        );
        assert_eq!(
            super::fsck_error_line("index: the index digest is unreadable", &paths),
            "error: index: the index digest is unreadable"
        );
    }
}
