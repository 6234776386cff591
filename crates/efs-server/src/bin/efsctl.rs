//! `efsctl`: administers an EFS data dir — through the running server's admin socket, or
//! directly on the data dir when no server runs.
//!
//! Exit codes: 0 success; 1 error; 2 bad usage; 3 `fsck` or `audit verify` found problems
//! (or `audit show` met a broken chain or left matching entries out, a backup or restore
//! left damaged entries out, or `status` lists a filesystem not served or on hold); 4 `retire-terms` dry run that would retire terms;
//! 5 `retire-terms` refused until something is done first, or any command refused by the
//! admin socket before it ran (the account is neither root nor the server's).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Parser, Subcommand};
use efs_core::admin::{AdminRequest, AdminResponse};
use efs_core::system::GrantRecord;
use efs_core::{DataDir, KeyPartSpec, OpenOptions};

/// Prints a line to stdout; a closed pipe (`efsctl list-users | head`) ends the program
/// successfully instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("writing to stdout failed: {e}");
        }
    }};
}

/// EFS admin tool.
///
/// While efs-server runs, commands go through its admin socket (DATA/system/admin.sock)
/// and take effect at once (a new user can log in immediately). When no server runs,
/// efsctl opens the data dir itself and needs the same --key-part options as the server.
#[derive(Parser, Debug)]
#[command(
    name = "efsctl",
    version,
    after_help = "Examples:
  efsctl --data ./efs-data create-fs user-data
  efsctl --data ./efs-data create-user app1 --fs user-data                 # generates a key pair
  efsctl --data ./efs-data create-user alice --fs user-data --pubkey ~/.ssh/id_ed25519.pub
  efsctl --data ./efs-data grant alice --fs archive --read-only
  efsctl --data ./efs-data replace-key alice --pubkey alice-new.pub   # a stolen key: locked out, grants kept
  efsctl --data ./efs-data fsck --fs user-data
  efsctl --data ./efs-data rotate-key --fs user-data   # new key term, data keys rewrapped in the background
  efsctl --data ./efs-data status                      # key terms, records sealed, rotation progress
  efsctl --data ./efs-data reencrypt --fs user-data    # every file under a fresh data key
  efsctl --data ./efs-data backup --fs user-data -o /backups/user-data-1 --include-keys
  efsctl --data ./efs-data restore --fs user-data-restored -i /backups/user-data-1
  efsctl --data ./efs-data --key-part file:/old.key rekey-starter --new-key-part file:/new.key   # server stopped
  efsctl --data ./efs-data rotate-signing-key          # server stopped: new token-signing key and server identity
  efsctl --data ./efs-data rotate-tls-key              # server stopped: a new generated TLS key at the next start
  efsctl --data ./efs-data retire-terms --fs user-data --yes   # server stopped, after rotate-key --wait: erase deleted files (then rekey-starter)
  efsctl --data ./efs-data audit show --path /patients/173/prescription.pdf --since 7d
  efsctl --data ./efs-data audit verify                # the audit log's chain and anchor
  efsctl --data ./efs-data reload-tls                  # serve the renewed --tls-cert/--tls-key files

Exit codes: 0 success, 1 error, 2 bad usage, 3 fsck or audit verify found problems (or audit show
met a broken chain or left matching entries out: --limit, a page of --from-entry, a backup --skip-damaged or the restore of one left damaged entries out, or
status lists a filesystem as NOT SERVED or ON HOLD), 4 retire-terms without --yes: it would
retire terms (nothing was retired), 5 retire-terms refused until something is done first (the
server stopped, a rotation finished, records rotated; the message says what), or any command the
admin socket refused before it ran (an account that is neither root nor the server's: nothing
was done, and a key pair create-user or replace-key generated is removed). retire-terms with
nothing to retire exits 0."
)]
struct Args {
    /// Data directory.
    #[arg(long, env = "EFS_DATA", default_value = "./efs-data")]
    data: PathBuf,
    /// Key parts, as for efs-server (only needed when no server runs).
    #[arg(long = "key-part", value_name = "SPEC", value_parser = parse_part)]
    key_parts: Vec<KeyPartSpec>,
    /// Free space to keep when no server runs (as efs-server's --reserve-space; 0: none; by
    /// default 5 % of each volume, at most 1 GiB): reencrypt and restore stop before a
    /// file or blob whose writing would leave less free. With a server running, its own
    /// reserve applies.
    #[arg(long, env = "EFS_RESERVE_SPACE", value_name = "BYTES", value_parser = efs_server::reserve::parse_reserve)]
    reserve_space: Option<u64>,
    /// The rollback witness, as efs-server's --rollback-witness (only used when no server
    /// runs: the commands then keep it up to date, and accept-system moves a data dir put
    /// back whole past it). Without it, the witness the server recorded in the data dir is
    /// used; given, it is used without being recorded (this machine may see the file under
    /// another path than the server), except by accept-system and when the data dir records
    /// no witness yet.
    #[arg(long, env = "EFS_ROLLBACK_WITNESS", value_name = "PATH")]
    rollback_witness: Option<PathBuf>,
    /// Talk to the server through this socket instead of DATA/system/admin.sock: its
    /// --auditor-socket, which answers `audit show` and `audit verify` only, to the members
    /// of its --auditor-group. Never opens the data dir itself (no server: an error).
    #[arg(long, env = "EFS_ADMIN_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a filesystem.
    CreateFs {
        /// Name (letters, digits, '.', '_', '-').
        name: String,
    },
    /// List filesystems.
    ListFs,
    /// Create a user. Without --pubkey, generates an Ed25519 key pair and writes the
    /// private key to files it names, fsynced before the user is created (removed again if
    /// the user is not created, or the request never reached a server or the data dir;
    /// never inside the data dir).
    CreateUser {
        /// Login name (letters, digits, '.', '_', '-'; not `efs-server`, the name the audit
        /// log records the server's own gc and key rotation under).
        name: String,
        /// Filesystem to grant (repeatable).
        #[arg(long = "fs", required = true)]
        fs: Vec<String>,
        /// Public key file: an OpenSSH `ssh-ed25519` line, a PEM public key, or the base64
        /// key `list-users` prints (to recreate a user after a lost disk); `-` for stdin.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// Grant read-only access.
        #[arg(long)]
        read_only: bool,
        /// Where to write a generated private key (default ./NAME_ed25519; a PKCS#8 PEM
        /// copy for openssl goes to the same path + .pem).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Grant a user access to a filesystem (or change it). Revokes the user's tokens.
    Grant {
        /// User.
        user: String,
        /// Filesystem.
        #[arg(long)]
        fs: String,
        /// Read-only.
        #[arg(long)]
        read_only: bool,
    },
    /// Revoke a user's access to a filesystem; without --fs, revoke every token of the user
    /// (its key can log in again).
    ///
    /// Without --fs, revoke ends the tokens the user holds now, but its key can log in again
    /// at once: to lock a key out (a stolen private key), use replace-key (grants kept) or
    /// delete-user.
    Revoke {
        /// User.
        user: String,
        /// Filesystem.
        #[arg(long)]
        fs: Option<String>,
    },
    /// Give a user a new public key, for a stolen private key: the old key no longer logs in,
    /// every token of the user stops working at once, its grants are kept.
    ///
    /// Without --pubkey, generates an Ed25519 key pair as create-user does and writes the
    /// private key to files it names (see --out), fsynced before the key is replaced (removed
    /// again if it is not; never inside the data dir). Prints the SHA-256 fingerprints of the
    /// old and the new key, which the audit log records too. Then see what was done with the
    /// old key: efsctl audit show --user USER; and efsctl audit verify.
    ReplaceKey {
        /// User.
        user: String,
        /// The new public key file: an OpenSSH `ssh-ed25519` line or a PEM public key; `-`
        /// for stdin.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// Where to write a generated private key (default ./USER_ed25519; a PKCS#8 PEM
        /// copy for openssl goes to the same path + .pem).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Delete a user (its tokens stop working at once).
    DeleteUser {
        /// User.
        name: String,
    },
    /// List users: name, grants and public key (base64, as `create-user --pubkey` reads it),
    /// tab-separated. Keep `list-users --json` outside the data dir: after a lost disk it
    /// recreates the users with their keys.
    ListUsers,
    /// Check that efs-server runs on this data dir and can serve (for container health
    /// checks): exit 0 and "ok", else 1. Not recorded in the audit log. Below the free-space
    /// reserve (--reserve-space) it still exits 0, with a warning that uploads are refused.
    Health,
    /// Bind a client certificate to a user: from then on it logs in only over a connection
    /// presenting that certificate, which needs efs-server --client-ca (a running server
    /// without it refuses; without a server, efsctl warns).
    #[command(group(clap::ArgGroup::new("binding").required(true).args(["cert", "sha256", "unbind"])))]
    BindCert {
        /// User.
        user: String,
        /// The client certificate (PEM).
        #[arg(long, conflicts_with_all = ["sha256", "unbind"])]
        cert: Option<PathBuf>,
        /// Its SHA-256 fingerprint (64 hex digits, colons optional).
        #[arg(long, conflicts_with = "unbind", value_parser = parse_sha256)]
        sha256: Option<String>,
        /// Remove the binding.
        #[arg(long)]
        unbind: bool,
    },
    /// Check a filesystem: every record and every byte of content decrypts; index and
    /// blobs agree; the index matches its digest (no record changed, removed, added or put
    /// back to an older version outside EFS); orphans are listed. Prints the digest's
    /// generation and anchor: note them elsewhere to detect a whole index put back. An index
    /// below the generation the data dir recorded (an earlier copy of the whole index put
    /// back) is an error. A damaged entry is named by its key, and by its path too when its
    /// record and directories decrypt.
    ///
    /// A server that finds at start that an index differs from its digest, or is below the
    /// recorded generation, holds that filesystem (every request answers 503 integrity_hold). Inspect with `fsck`, restore
    /// from a backup if you need to, then `fsck --accept-index` to trust the index as it is
    /// now and serve it again.
    Fsck {
        /// Filesystem.
        #[arg(long)]
        fs: String,
        /// Trust the index as it is now: recompute and store its digest, record its
        /// generation as the one the data dir last saw, lift a hold. Then
        /// checks it as fsck does and warns of damaged entries (accepted, they fail to read).
        #[arg(long)]
        accept_index: bool,
    },
    /// Trust the system database (users, grants, filesystems, secrets) as it is, when it
    /// failed its check against its digest.
    ///
    /// Every open checks the system database against a digest kept with it: a row changed,
    /// removed, added or put back outside EFS (an old user row written back to restore a
    /// revoked key, say) makes the server and efsctl refuse the data dir. Inspect it (who
    /// could write to it? `list-users`, `list-fs` work once accepted), restore the data dir
    /// from a backup if you need to, then run this with the server stopped. Prints the
    /// digest's generation and anchor: note them outside the data dir. Rows that do not
    /// decrypt (EFS did not write them) are never accepted: restore the data dir instead.
    AcceptSystem,
    /// Remove orphan blobs and inline contents (left by crashes).
    Gc {
        /// Filesystem.
        #[arg(long)]
        fs: String,
        /// Keep orphan blobs younger than this many seconds (uploads in flight).
        #[arg(long, default_value_t = 3600)]
        grace: u64,
    },
    /// Empty the running server's decrypted cache and its remembered path lookups, and forget
    /// the files it found damaged while sending them (which it answers 500 for 10 minutes):
    /// after a blob was put right by hand.
    CacheClear,
    /// Make the running server serve its renewed --tls-cert and --tls-key files, without a
    /// restart (as SIGHUP does).
    ///
    /// The server reads both files again and serves them from the next TLS handshake on; open
    /// connections keep the certificate they began with. Checked first: a PEM certificate and
    /// key, the key of that certificate, the certificate valid now. On any failure the server
    /// keeps serving the certificate it had, and efsctl exits 1 naming the problem. Prints the
    /// new certificate's SHA-256 fingerprint and end of validity (a WARNING when that is
    /// within 14 days). A server started with --client-ca reads that file again too (also
    /// with the generated certificate, then the only thing reloaded): the new CA is required
    /// from the next connection on, open ones keep theirs; a CA file that fails, or that holds
    /// no CA's certificate (only clients', CA:FALSE), refuses the whole reload, and one that
    /// holds a client's beside a CA's gets a WARNING naming it. Refused with the generated
    /// certificate and no --client-ca, and with no server running.
    ReloadTls,
    /// Rotate a filesystem's key: add a keyring term (new writes use it at once) and
    /// rewrap every file's data key to it in the background, without touching content.
    /// Resumable: an interrupted rotation continues at the next start. Old terms are kept.
    RotateKey {
        /// Filesystem.
        #[arg(long)]
        fs: String,
        /// Return only once every data key is rewrapped (always so without a server).
        #[arg(long)]
        wait: bool,
    },
    /// Show each filesystem's key terms, the records sealed under the current term (rotate
    /// before 2^32; a WARNING from 2^31), key-rotation and re-encryption progress. Exit code
    /// 3 when it lists a filesystem as NOT SERVED (its index did not open) or ON HOLD (its
    /// index failed the server's integrity check; with no server running, an earlier copy of
    /// the index put back, which the next start holds: a record changed inside an index is
    /// found only by fsck then).
    Status {
        /// Only this filesystem.
        #[arg(long)]
        fs: Option<String>,
    },
    /// Rewrite every file of a filesystem under a fresh data key (and a new key term),
    /// in the background while it serves. Resumable. ETags change (new content ids).
    Reencrypt {
        /// Filesystem.
        #[arg(long)]
        fs: String,
        /// Return only once every file is rewritten (always so without a server).
        #[arg(long)]
        wait: bool,
    },
    /// Back up a filesystem's encrypted store (a consistent snapshot, taken while the
    /// server serves) into a new directory. Without --include-keys the backup holds no
    /// key material and can only be restored into this data dir while the filesystem
    /// exists: see docs/operations.md. The manifest is authenticated (HMAC-SHA256 under a
    /// key derived from the filesystem's keyring) and holds the filesystem's name and
    /// counts only sealed; the MAC's first bytes are printed: note them to recognise the
    /// backup later.
    Backup {
        /// Filesystem.
        #[arg(long)]
        fs: String,
        /// New (or empty) directory to write (by the server, when one runs), outside the
        /// data dir.
        #[arg(short = 'o', long = "output", value_name = "DEST")]
        dest: PathBuf,
        /// Include the keyring, sealed under the starter key (restorable with the same key
        /// parts, in any data dir).
        #[arg(long)]
        include_keys: bool,
        /// Back up past damaged entries instead of stopping at the first: an entry that
        /// does not open, a file whose content cannot be read, and what lies below a
        /// directory left out are left out and named (entry keys, as fsck names them);
        /// exit code 3 when any was.
        #[arg(long)]
        skip_damaged: bool,
    },
    /// Restore a backup into a new filesystem, or into an existing empty one (then run
    /// fsck on it). Before anything is written, the manifest's MAC (HMAC-SHA256 under a
    /// key derived from the filesystem's keyring) is checked: a backup whose records,
    /// blobs or manifest were changed, or spliced from another backup, is refused. A
    /// backup alone does not prove it is the latest one: compare the MAC printed at
    /// backup time. A backup taken with --skip-damaged says so and names what it left out
    /// (exit code 3). Refused below the free-space reserve, and stopped before a blob that
    /// would reach it (a new filesystem is then removed): see --reserve-space.
    Restore {
        /// Name of the new (or empty) filesystem.
        #[arg(long)]
        fs: String,
        /// The backup directory.
        #[arg(short = 'i', long = "input", value_name = "SRC")]
        src: PathBuf,
        /// Key part of the data dir the backup was taken in (repeat, in that data dir's
        /// order: env:NAME, file:PATH or passphrase), when restoring a backup made with
        /// --include-keys into another data dir. Read by efsctl, in its environment and
        /// working directory, also when a server runs; a passphrase from
        /// EFS_BACKUP_PASSPHRASE in efsctl's environment, else asked for on its terminal (a
        /// line from a pipe; with the server stopped, after this data dir's own passphrase).
        #[arg(long = "backup-key-part", value_name = "SPEC")]
        backup_key_parts: Vec<String>,
        /// Restore a format-1 backup (efs-backup/1, made before backups were
        /// authenticated), whose manifest has no MAC: removed or rolled-back records would
        /// go unnoticed. Refused without this flag; recorded in the audit log.
        #[arg(long)]
        accept_unauthenticated_backup: bool,
    },
    /// Move the data dir to new key parts: every keyring and system secret is sealed
    /// again under the new starter key; afterwards only the new parts open it. The server
    /// must be stopped. The current parts are given with --key-part as usual. Every index
    /// and the system database are copied into new files (none keeps the keyring sealed
    /// under the old key in its freed pages): it needs free space about their size, and is
    /// refused before anything changes where that is missing. Crash-safe: an interruption leaves either the old parts or the new ones working. An
    /// error after the switch says "the data dir is re-keyed: only the NEW key parts open it
    /// now": keep them and start with them. A failure only to write its audit entry is a
    /// warning.
    RekeyStarter {
        /// A new key part (repeat; same syntax as --key-part). A file: part must exist
        /// already (at least 16 bytes, e.g. `head -c 32 /dev/urandom | base64 > FILE`, mode
        /// 0600): it is read, never created.
        #[arg(long = "new-key-part", value_name = "SPEC", value_parser = parse_part, required = true)]
        new_key_parts: Vec<KeyPartSpec>,
    },
    /// Erase deleted files, with the server stopped: retire every older key term (then
    /// rekey-starter).
    ///
    /// Removes every keyring term but the current one ("crypto-shredding"). Once they are
    /// gone, the deleted files' records and data keys sealed under them (in
    /// the index's freed pages: the index is rewritten into a fresh file, crash-safe; in
    /// backups made without --include-keys) no longer open with this filesystem's keyring.
    /// Copies of the keyring from before (snapshots of the data dir or of index.redb,
    /// backups made with --include-keys, the old index file's blocks on the disk) still give
    /// those keys to whoever has the current key parts: `efsctl rekey-starter` to new parts,
    /// with the old ones destroyed, cuts them off (take new backups afterwards). Covers the
    /// files deleted before the current term's rotation began. Run `efsctl rotate-key --fs
    /// FS --wait` first: refused while a rotation or re-encryption is unfinished, or while a
    /// live record or data key is under an older term, or when the new copy of the index
    /// (about the size of index.redb) would not fit above --reserve-space. Empties first what an unfinished
    /// recursive delete left, and names the other filesystems (restored from this one) that
    /// still hold a retired key. Without --yes, says what it would do and exits 4, retiring
    /// nothing. Exits 0 when there is nothing to retire, 5 when refused (the message says
    /// what to do first), 1 on other errors (no such filesystem). With --json, each of these
    /// answers a JSON object (a failure: `ok` false, `error`, `refused`, `exit_code`).
    RetireTerms {
        /// Filesystem.
        #[arg(long)]
        fs: String,
        /// Retire them (without it, nothing is changed).
        #[arg(long)]
        yes: bool,
    },
    /// Replace the token-signing key by a fresh one, with the server stopped: every token
    /// issued before is refused, and the server identity (efs-…, derived from the key)
    /// changes. Prints both identities. For a signing key that may have leaked (with a copy
    /// of the data dir and its key parts). Clients that pinned the old identity refuse to
    /// log in until told the new one (efs: remove the remote and add it again).
    RotateSigningKey,
    /// Remove the TLS key and certificate efs-server generated (started without --tls-cert),
    /// with the server stopped: it generates a new key and certificate at its next start and
    /// prints their fingerprint. Prints the old certificate's fingerprint. For a generated
    /// key that may have leaked (with a copy of the data dir and its key parts). Clients that
    /// trust the old certificate refuse the new one until given it (efs: remove the remote
    /// and add it again; curl: the new system/tls-cert.pem as --cacert).
    RotateTlsKey,
    /// The audit log: every login, file request and admin command, encrypted and chained.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Check the whole audit log (exit code 3 when something is wrong).
    ///
    /// Names the first edited, inserted, deleted or reordered entry, and detects a log cut
    /// short (through its HEAD anchor). Prints the head to keep elsewhere.
    Verify {
        /// A head printed by an earlier verify (SEQ:MAC): fails if the log no longer
        /// contains it (a rollback of both the log and its anchor).
        #[arg(long, value_name = "SEQ:MAC", value_parser = parse_head)]
        expect_head: Option<String>,
    },
    /// Start a new audit log, with the server stopped (after checking the old one, e.g.
    /// against a head kept elsewhere with verify --expect-head).
    ///
    /// The log and its anchor move aside, to DATA/system/audit-moved-MS (MS: the time, Unix
    /// milliseconds), kept: they are the evidence of what was done before. The data dir
    /// forgets how far the old log went, so that verify is clean again; this command is the new log's first entry. Moving
    /// system/audit aside by hand instead looks like a deleted log: verify keeps reporting it.
    NewLog,
    /// Who did what, when: "who read this file, and when".
    ///
    /// The newest matching entries (1,000 unless --limit says otherwise), oldest first:
    /// time, entry number, user, action, filesystem, path, HTTP status, client address,
    /// reason. With --from-entry, the oldest from that entry on instead: page through the
    /// whole log in order (each page's warning names the next). An answer that leaves
    /// matching entries out exits 3 (its warning is on standard error with --json).
    Show {
        /// Only this user: its requests and logins, and the admin commands about it
        /// (create-user, grant, revoke, replace-key, bind-cert, delete-user).
        #[arg(long)]
        user: Option<String>,
        /// Only this path (exact, decoded: /patients/173/rx.pdf); with a trailing '/', that
        /// directory and everything in it. Followed through moves: from a move on (of the
        /// file, of a directory above it) its new name matches too, and deletes and moves
        /// of a directory above it match.
        #[arg(long)]
        path: Option<String>,
        /// Only this filesystem.
        #[arg(long)]
        fs: Option<String>,
        /// Only these actions, separated by commas: read, write, delete, move, mkdir,
        /// list, stat, login-ok, login-failed, login-rate-limited, refresh-ok,
        /// refresh-failed, token-rejected, admin, other, unrecorded.
        #[arg(long, value_name = "A[,A…]", value_delimiter = ',')]
        action: Vec<String>,
        /// Only these HTTP statuses, separated by commas: codes (403) or classes (4xx;
        /// 4xx,5xx: every refused or failed request).
        #[arg(long, value_name = "S[,S…]", value_delimiter = ',')]
        status: Vec<String>,
        /// From this time: RFC 3339 (2026-12-01T09:00:00Z), a day (2026-12-01: its start,
        /// UTC) or an age (30m, 12h, 7d).
        #[arg(long, value_name = "T", value_parser = parse_time)]
        since: Option<i64>,
        /// Before this time (same forms as --since; a day: its start, so --until 2026-12-02
        /// ends with 1 December).
        #[arg(long, value_name = "T", value_parser = parse_time)]
        until: Option<i64>,
        /// Entries numbered N and later, the oldest first: --limit then keeps the first
        /// matching ones, and a warning names the entry to continue from.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        from_entry: Option<u64>,
        /// Show only the newest N matching entries (1 to 100000; with --from-entry the
        /// oldest N); the others are counted in a warning, and the exit code is 3.
        #[arg(
            long,
            value_name = "N",
            default_value_t = efs_core::admin::AUDIT_SHOW_DEFAULT,
            value_parser = clap::value_parser!(u64).range(1..=efs_core::admin::AUDIT_SHOW_MAX)
        )]
        limit: u64,
    },
}

/// RFC 3339, a day (`2026-12-01`: its first millisecond, UTC), or an age before now (`90s`,
/// `30m`, `12h`, `7d`, `2w`), as Unix ms.
fn parse_time(s: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let day = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(s, day) {
        return Ok(d.midnight().assume_utc().unix_timestamp() * 1000);
    }
    let unit = s.chars().last().unwrap_or(' ');
    let secs: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => 0,
    };
    let digits = &s[..s.len() - unit.len_utf8().min(s.len())];
    let ms = Some(digits)
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<i64>().ok())
        .and_then(|n| n.checked_mul(secs)?.checked_mul(1000));
    match ms {
        Some(ms) if secs > 0 => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
            Ok(now as i64 - ms)
        }
        _ => Err(format!(
            "'{s}' is neither an RFC 3339 time (2026-12-01T09:00:00Z), a day (2026-12-01) nor an age (30m, 12h, 7d)"
        )),
    }
}

/// `--expect-head`: checked here, so that a malformed head is bad usage (exit code 2).
fn parse_head(s: &str) -> Result<String, String> {
    efs_core::admin::parse_audit_head(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// `bind-cert --sha256`: 64 hex digits, colons optional (`ab:cd:…`, as openssl prints it).
fn parse_sha256(s: &str) -> Result<String, String> {
    let hex = s.replace(':', "");
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(format!(
            "'{s}' is not a SHA-256 fingerprint: give 64 hex digits (colons optional)"
        ))
    }
}

fn parse_part(s: &str) -> Result<KeyPartSpec, String> {
    KeyPartSpec::parse(s).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    efs_server::forbid_core_dumps();
    efs_server::init_logging();
    let args = Args::parse();
    if let Cmd::Audit {
        cmd:
            AuditCmd::Show {
                since: Some(since),
                until: Some(until),
                ..
            },
    } = &args.cmd
        && since >= until
    {
        use clap::CommandFactory;
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--since is not before --until: no entry could match",
            )
            .exit();
    }
    if let Some(problem) = usage_problem(&args.cmd) {
        use clap::CommandFactory;
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, problem)
            .exit();
    }
    match run(args) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("efsctl: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// A name or an `audit show` filter no data dir could accept, found before anything is done:
/// bad usage (exit 2, as `--help` says), by the same checks the data dir applies. The names
/// given to `audit show --user` and `--fs` are not checked: they match what was recorded,
/// and a refused login records the name it was given.
fn usage_problem(cmd: &Cmd) -> Option<String> {
    use efs_core::datadir::{check_name, check_new_user_name};
    let fs_name = |n: &str| check_name("filesystem", n).err().map(|e| e.to_string());
    let user_name = |n: &str| check_name("user", n).err().map(|e| e.to_string());
    match cmd {
        Cmd::CreateFs { name } => fs_name(name),
        Cmd::CreateUser { name, fs, .. } => check_new_user_name(name)
            .err()
            .map(|e| e.to_string())
            .or_else(|| fs.iter().find_map(|f| fs_name(f))),
        Cmd::Grant { user, fs, .. } => user_name(user).or_else(|| fs_name(fs)),
        Cmd::Revoke { user, fs } => user_name(user).or_else(|| fs.as_deref().and_then(fs_name)),
        Cmd::ReplaceKey { user, .. } | Cmd::BindCert { user, .. } => user_name(user),
        Cmd::DeleteUser { name } => user_name(name),
        Cmd::Fsck { fs, .. }
        | Cmd::Gc { fs, .. }
        | Cmd::RotateKey { fs, .. }
        | Cmd::Reencrypt { fs, .. }
        | Cmd::Backup { fs, .. }
        | Cmd::Restore { fs, .. }
        | Cmd::RetireTerms { fs, .. } => fs_name(fs),
        Cmd::Status { fs } => fs.as_deref().and_then(fs_name),
        Cmd::Audit {
            cmd:
                AuditCmd::Show {
                    path,
                    action,
                    status,
                    ..
                },
        } => efs_core::audit::check_filter(&efs_core::audit::Filter {
            path: path.clone(),
            actions: action.clone(),
            statuses: status.clone(),
            ..Default::default()
        })
        .err(),
        _ => None,
    }
}

fn run(args: Args) -> anyhow::Result<u8> {
    let json = args.json;
    // Another socket is an auditor's: only what it answers is sent there, before anything
    // else is done (no key pair generated, no health check of the data dir's server).
    if let Some(sock) = &args.socket
        && !matches!(
            args.cmd,
            Cmd::Audit {
                cmd: AuditCmd::Show { .. } | AuditCmd::Verify { .. }
            }
        )
    {
        bail!(
            "--socket {}: an auditor socket takes audit show and audit verify only (other commands: without --socket, as root or the server's account)",
            sock.display()
        );
    }
    if let Cmd::RekeyStarter { new_key_parts } = &args.cmd {
        return rekey_starter(
            &args.data,
            &args.key_parts,
            new_key_parts,
            args.rollback_witness.as_deref(),
            json,
        );
    }
    // A key pair `create-user` or `replace-key` generated: removed again if the server
    // refuses the user or the key, its description shown (on standard error with --json) once
    // the user has it.
    let mut generated: Option<GeneratedPair> = None;
    let mut extra_lines: Vec<String> = Vec::new();
    let req = match args.cmd {
        Cmd::CreateFs { name } => AdminRequest::CreateFs { name },
        Cmd::ListFs => AdminRequest::ListFs,
        Cmd::CreateUser {
            name,
            fs,
            pubkey,
            read_only,
            out,
        } => {
            // Checked here too, before a key pair named after it is written anywhere.
            efs_core::datadir::check_new_user_name(&name)?;
            let key = match pubkey {
                Some(p) => read_public_key(&p)?,
                None => {
                    let (key, pair) = generate_key_pair(&name, out, &args.data)?;
                    generated = Some(pair);
                    key
                }
            };
            extra_lines.push(format!(
                "Public key SHA-256 fingerprint: {}",
                efs_server::auth::fingerprint_sha256(&key)
            ));
            AdminRequest::CreateUser {
                name,
                public_key: base64::engine::general_purpose::STANDARD.encode(key.as_bytes()),
                grants: fs
                    .into_iter()
                    .map(|fs| GrantRecord { fs, read_only })
                    .collect(),
            }
        }
        Cmd::Grant {
            user,
            fs,
            read_only,
        } => AdminRequest::Grant {
            user,
            fs,
            read_only,
        },
        Cmd::Revoke { user, fs } => AdminRequest::Revoke { user, fs },
        Cmd::ReplaceKey { user, pubkey, out } => {
            // Checked here too, before a key pair named after it is written anywhere.
            efs_core::datadir::check_name("user", &user)?;
            let key = match pubkey {
                Some(p) => read_public_key(&p)?,
                None => {
                    let (key, pair) = generate_key_pair(&user, out, &args.data)?;
                    generated = Some(pair.replacing());
                    key
                }
            };
            AdminRequest::ReplaceKey {
                user,
                public_key: base64::engine::general_purpose::STANDARD.encode(key.as_bytes()),
            }
        }
        Cmd::DeleteUser { name } => AdminRequest::DeleteUser { name },
        Cmd::ListUsers => AdminRequest::ListUsers,
        Cmd::Health => return health(&args.data, json),
        Cmd::BindCert {
            user,
            cert,
            sha256,
            unbind,
        } => {
            let sha256 = match (cert, sha256, unbind) {
                (Some(c), _, _) => Some(cert_sha256(&c)?),
                (None, Some(h), _) => Some(h),
                (None, None, true) => None,
                (None, None, false) => bail!("give --cert FILE, --sha256 HEX or --unbind"),
            };
            AdminRequest::BindCert { user, sha256 }
        }
        Cmd::Fsck { fs, accept_index } => AdminRequest::Fsck { fs, accept_index },
        Cmd::Gc { fs, grace } => AdminRequest::Gc {
            fs,
            grace_secs: grace,
        },
        Cmd::CacheClear => AdminRequest::CacheClear,
        Cmd::ReloadTls => AdminRequest::ReloadTls,
        Cmd::RotateKey { fs, wait } => AdminRequest::RotateKey { fs, wait },
        Cmd::Status { fs } => AdminRequest::Status { fs },
        Cmd::AcceptSystem => AdminRequest::AcceptSystem,
        Cmd::RotateSigningKey => AdminRequest::RotateSigningKey,
        Cmd::RotateTlsKey => AdminRequest::RotateTlsKey,
        Cmd::RetireTerms { fs, yes } => AdminRequest::RetireTerms { fs, yes },
        Cmd::Reencrypt { fs, wait } => AdminRequest::Reencrypt { fs, wait },
        Cmd::RekeyStarter { .. } => unreachable!("handled above"),
        Cmd::Backup {
            fs,
            dest,
            include_keys,
            skip_damaged,
        } => AdminRequest::Backup {
            fs,
            // The server's working directory is not ours.
            dest: absolute(&dest)?,
            include_keys,
            skip_damaged,
        },
        Cmd::Restore {
            fs,
            src,
            backup_key_parts,
            accept_unauthenticated_backup,
        } => {
            for s in &backup_key_parts {
                parse_part(s).map_err(anyhow::Error::msg)?;
            }
            if accept_unauthenticated_backup {
                eprintln!(
                    "WARNING: --accept-unauthenticated-backup: a format-1 backup is restored without checking that it is whole and unaltered"
                );
            }
            AdminRequest::Restore {
                fs,
                src: absolute(&src)?,
                backup_key_parts,
                backup_key_given: Vec::new(),
                accept_unauthenticated_backup,
            }
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { expect_head },
        } => AdminRequest::AuditVerify { expect_head },
        Cmd::Audit {
            cmd: AuditCmd::NewLog,
        } => AdminRequest::AuditNewLog,
        Cmd::Audit {
            cmd:
                AuditCmd::Show {
                    user,
                    path,
                    fs,
                    action,
                    status,
                    since,
                    until,
                    from_entry,
                    limit,
                },
        } => AdminRequest::AuditShow {
            limit: Some(limit),
            filter: efs_core::audit::Filter {
                user,
                fs,
                path,
                since_ms: since,
                until_ms: until,
                actions: action,
                statuses: status,
                from_seq: from_entry,
            },
        },
    };
    // retire-terms answers JSON with --json also when it retires nothing (refused, failed).
    let retire_fs = match &req {
        AdminRequest::RetireTerms { fs, .. } => Some(fs.clone()),
        _ => None,
    };
    let sent = match &args.socket {
        // Another socket (the auditor's): the server answers, or nothing does (no data dir
        // is opened).
        Some(sock) => UnixStream::connect(sock)
            .map_err(|e| {
                anyhow::Error::from(NotDelivered(format!(
                    "cannot reach {}: {e} (is efs-server running with --auditor-socket {}?)",
                    sock.display(),
                    sock.display()
                )))
            })
            .and_then(|s| ask(s, &req)),
        None => send(
            &args.data,
            &args.key_parts,
            args.reserve_space,
            args.rollback_witness.as_deref(),
            req,
        ),
    };
    let resp = match sent {
        Ok(r) if r.ok => r,
        refused => {
            if let Some(pair) = &generated {
                match &refused {
                    Err(e) if e.downcast_ref::<NotDelivered>().is_some() => {
                        pair.remove("the request was not delivered (nothing was done)");
                    }
                    // Refused before it ran (the server's answer says so).
                    Ok(r) if r.exit == Some(efs_core::admin::EXIT_REFUSED) => {
                        pair.remove("the request was refused before anything was done");
                    }
                    _ => pair.settle(
                        &args.data,
                        &args.key_parts,
                        args.rollback_witness.as_deref(),
                    ),
                }
            }
            let (error, code) = match refused {
                Ok(resp) => (
                    resp.error.unwrap_or_else(|| "failed".into()),
                    resp.exit.unwrap_or(1),
                ),
                Err(e) if retire_fs.is_some() => (format!("{e:#}"), 1),
                Err(e) => return Err(e),
            };
            eprintln!("efsctl: error: {error}");
            if let (true, Some(fs)) = (json, &retire_fs) {
                let v = serde_json::json!({
                    "fs": fs,
                    "ok": false,
                    "refused": code == efs_core::admin::EXIT_REFUSED,
                    "error": error,
                    "exit_code": code,
                });
                say!("{}", serde_json::to_string_pretty(&v)?);
            }
            return Ok(code);
        }
    };
    if let Some(pair) = &generated {
        extra_lines.splice(0..0, pair.describe());
    }
    for l in &extra_lines {
        if json {
            eprintln!("{l}");
        } else {
            say!("{l}");
        }
    }
    if json {
        // The data stays a value scripts can parse; what would be lost with the text (a
        // broken audit chain, entries left out, a key shared by two users, a backup without
        // its keys) goes to standard error.
        for l in resp
            .lines
            .iter()
            .filter(|l| l.starts_with("warning: ") || l.contains("WARNING: "))
        {
            eprintln!("efsctl: {l}");
        }
        say!("{}", serde_json::to_string_pretty(&resp.data)?);
    } else {
        for l in &resp.lines {
            say!("{l}");
        }
    }
    Ok(if resp.clean == Some(false) {
        3
    } else {
        resp.exit.unwrap_or(0)
    })
}

/// An error of [`send`] from before the request reached anything that could carry it out:
/// no server answered and the data dir did not open (its lock refuses a second opener, so
/// no server was running either). Nothing was done. Other errors leave that unknown (an
/// answer lost after the server acted on it).
#[derive(Debug)]
struct NotDelivered(String);

impl std::fmt::Display for NotDelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotDelivered {}

/// A restore's `--backup-key-part`s, read by efsctl (env: and file: parts in its
/// environment and working directory, a passphrase from `EFS_BACKUP_PASSPHRASE` or its
/// terminal) and handed over with the request, to the server or to the data dir efsctl opens.
fn read_backup_key_parts(req: &mut AdminRequest) -> anyhow::Result<()> {
    if let AdminRequest::Restore {
        backup_key_parts,
        backup_key_given,
        ..
    } = req
    {
        for spec in backup_key_parts.iter() {
            backup_key_given.push(
                efs_core::admin::SentKeyPart::read(spec, &|_| {
                    prompt("EFS passphrase of the data dir the backup was taken from: ")
                })
                .with_context(|| "reading --backup-key-part".to_owned())?,
            );
        }
    }
    Ok(())
}

/// The free-space reserve of a command run on the data dir without a server; none (said on
/// stderr) if the volume's size cannot be read.
fn offline_reserve(data: &Path, requested: Option<u64>) -> efs_server::reserve::Reserve {
    efs_server::reserve::Reserve::for_data_dir(data, requested).unwrap_or_else(|e| {
        eprintln!(
            "efsctl: warning: cannot read the free space of {}'s volume ({e}): no free-space \
             reserve is kept (give --reserve-space BYTES to keep one)",
            data.display()
        );
        efs_server::reserve::Reserve::off()
    })
}

/// Sends a request to the running server, or runs it on the data dir (then keeping
/// `reserve_space` free, `None`: the default reserve, as efs-server would; and following the
/// rollback witness `witness`, if given). An error that is a [`NotDelivered`] (`downcast_ref`)
/// means nothing was done.
fn send(
    data: &Path,
    parts: &[KeyPartSpec],
    reserve_space: Option<u64>,
    witness: Option<&Path>,
    mut req: AdminRequest,
) -> anyhow::Result<AdminResponse> {
    let sock = efs_core::datadir::admin_socket_path(data);
    match UnixStream::connect(&sock) {
        Ok(s) => {
            // The server would read env: and file: parts in its own environment and working
            // directory, and has no terminal to ask for a passphrase: efsctl reads them here,
            // where the operator named them.
            read_backup_key_parts(&mut req)?;
            ask(s, &req)
        }
        Err(e) => {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return Err(NotDelivered(format!(
                    "cannot reach {}: permission denied: run efsctl as root or as the account \
                     efs-server runs as",
                    sock.display()
                ))
                .into());
            }
            if matches!(req, AdminRequest::ReloadTls) {
                // Only a running server holds a certificate; the data dir is not opened.
                return Err(NotDelivered(efs_core::admin::NO_SERVER_TO_RELOAD.to_owned()).into());
            }
            refuse_root_on_anothers_data_dir(data)?;
            if !is_data_dir(data)? {
                return Err(NotDelivered(format!(
                    "{} is not an EFS data dir (start efs-server --data {} once to create it)",
                    data.display(),
                    data.display()
                ))
                .into());
            }
            let opts = OpenOptions {
                // The lists and the audit log's commands open a database that failed its
                // check too, to show what accept-system would accept and what was done (read
                // only: nothing is written to it, see `held` below).
                accept_system: matches!(
                    req,
                    AdminRequest::AcceptSystem
                        | AdminRequest::ListUsers
                        | AdminRequest::ListFs
                        | AdminRequest::AuditShow { .. }
                        | AdminRequest::AuditVerify { .. }
                ),
                new_audit_log: matches!(req, AdminRequest::AuditNewLog),
                // The server's free-space reserve, here too: a re-encryption or a restore
                // stops before the file or blob that would reach it (`FsOptions::space_check`).
                fs: efs_core::fs::FsOptions {
                    space_check: Some(efs_server::reserve::space_check(std::sync::Arc::new(
                        offline_reserve(data, reserve_space).into(),
                    ))),
                    ..Default::default()
                },
                rollback_witness: witness.map(Path::to_path_buf),
                ..OpenOptions::default()
            };
            let (dd, _) =
                DataDir::open(data, parts, opts, &|p: &str| prompt(p)).with_context(|| {
                    NotDelivered(format!("cannot open the data dir {}", data.display()))
                })?;
            // After this data dir's parts (its passphrase from EFS_PASSPHRASE or the first
            // prompt), the backup's (from EFS_BACKUP_PASSPHRASE or the next prompt).
            read_backup_key_parts(&mut req).map_err(|e| NotDelivered(format!("{e:#}")))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            // Without a server nothing would carry on in the background: an unfinished key
            // rotation is finished first (except for `status`, which shows it), and a new
            // one runs to completion before efsctl returns.
            if let AdminRequest::RotateKey { wait, .. } | AdminRequest::Reencrypt { wait, .. } =
                &mut req
            {
                *wait = true;
            }
            // Nor for `fsck`: it is how an operator looks at (and accepts) an index on
            // hold, and finishing is refused on a held one.
            // What this run seals (finishing, then the command: a rotation, a
            // re-encryption, a restore) is counted in the index before efsctl exits, also
            // when it fails part way.
            // Then the generation each index it checked has committed, so that an earlier
            // copy of an index put back later is seen (a server records it as it runs).
            let store_counts = || {
                if let Err(e) = rt.block_on(dd.store_seal_counts()) {
                    eprintln!(
                        "efsctl: WARNING: could not store the counts of records sealed per key term: {e}"
                    );
                }
                if let Err(e) = rt.block_on(dd.record_index_generations()) {
                    eprintln!(
                        "efsctl: WARNING: could not record the indexes' digest generations in the system database: {e}"
                    );
                }
            };
            // Nor with a system database on hold (opened to be looked at, or accepted):
            // nothing is changed then but by accept-system itself.
            let held = matches!(
                dd.system_trust(),
                efs_core::system::SystemTrust::Pending { .. }
            );
            let looks = !matches!(req, AdminRequest::AcceptSystem);
            if !held
                && !matches!(
                    req,
                    AdminRequest::Status { .. }
                    | AdminRequest::Fsck { .. }
                    | AdminRequest::AcceptSystem
                    // Urgent after a leak, and about no filesystem: not held up by one.
                    | AdminRequest::RotateSigningKey
                    | AdminRequest::RotateTlsKey
                    | AdminRequest::ReplaceKey { .. }
                )
            {
                let finishing = rt
                    .block_on(dd.finish_rotations())
                    .and_then(|r| Ok((r, rt.block_on(dd.finish_reencryptions())?)));
                let (rotations, reencryptions) = match finishing {
                    Ok(f) => f,
                    Err(e) => {
                        store_counts();
                        return Err(e.into());
                    }
                };
                for (work, done) in [
                    ("key rotation", &rotations),
                    ("re-encryption", &reencryptions),
                ] {
                    for name in &done.done {
                        eprintln!("efsctl: finished an interrupted {work} of '{name}'");
                    }
                    for name in &done.held {
                        eprintln!(
                            "efsctl: WARNING: the interrupted {work} of '{name}' was not finished: its index is on hold (it differs from its digest, or the digest could not be checked; see efsctl fsck --fs {name})"
                        );
                    }
                    for (name, why) in &done.stopped {
                        eprintln!(
                            "efsctl: WARNING: the interrupted {work} of '{name}' was not finished ({why}); going on with the command"
                        );
                    }
                }
            }
            let op = efs_core::admin::Operator::this_process("data-dir");
            let binds = matches!(
                req,
                AdminRequest::BindCert {
                    sha256: Some(_),
                    ..
                }
            );
            let resp = rt.block_on(efs_core::admin::execute_as(&dd, req, &op));
            if !held {
                store_counts();
            }
            if let (true, efs_core::system::SystemTrust::Pending { found }) =
                (looks, dd.system_trust())
            {
                eprintln!(
                    "efsctl: WARNING: the system database is not trusted ({found}): this is what \
                     efsctl accept-system would accept; nothing was changed"
                );
            }
            if binds && resp.ok {
                // A running server refuses a binding it could never honour; efsctl on the data
                // dir cannot know the flags of the next start.
                eprintln!(
                    "efsctl: warning: from now on the user logs in only over a connection that \
                     presents this client certificate, verified by efs-server --client-ca: \
                     start the server with --client-ca, or the user cannot log in"
                );
            }
            Ok(resp)
        }
    }
}

/// Whether `data` holds a data dir (its `system/keyparts.json`); an error, not `false`, when
/// that cannot be looked at (another account's 0700 data dir).
fn is_data_dir(data: &Path) -> Result<bool, NotDelivered> {
    data.join("system")
        .join("keyparts.json")
        .try_exists()
        .map_err(|e| {
            NotDelivered(format!(
                "cannot look into the data dir {}: {e}: run efsctl as root or as the account \
                 efs-server runs as",
                data.display()
            ))
        })
}

/// Without a server, efsctl works on the data dir itself, and the files it creates there (a
/// new filesystem's index, a re-keyed system database) are its own: root's, when run with
/// sudo, and the server's account could not open them at its next start. So root is refused
/// on a data dir another account owns (nothing done), and told to run as that account.
fn refuse_root_on_anothers_data_dir(data: &Path) -> Result<(), NotDelivered> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(data.join("system")) else {
        return Ok(());
    };
    match meta.uid() {
        0 => Ok(()),
        uid => Err(NotDelivered(format!(
            "no efs-server is running, and the data dir {} belongs to uid {uid}: run efsctl as \
             that account (e.g. sudo -u '#{uid}' efsctl …), so that the files it writes stay \
             readable by the server",
            data.display()
        ))),
    }
}

/// One request over the admin socket, and the server's answer.
fn ask(mut s: UnixStream, req: &AdminRequest) -> anyhow::Result<AdminResponse> {
    // A restore's key parts travel in it: the line is wiped once sent.
    let mut line = zeroize::Zeroizing::new(serde_json::to_vec(req)?);
    line.push(b'\n');
    s.write_all(&line).context("writing to the admin socket")?;
    let mut r = BufReader::new(s);
    let mut out = String::new();
    r.read_line(&mut out)
        .context("reading from the admin socket")?;
    if out.is_empty() {
        bail!("the server closed the admin socket without answering");
    }
    serde_json::from_str(&out).context("the server's answer is not valid JSON")
}

/// How long `efsctl health` waits for the server's answer (less than the Dockerfile's
/// HEALTHCHECK timeout of 10 s, so that the probe's own message is what is seen).
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `health`: only a running server answers (no fallback to the data dir, which would need
/// the key parts and would not say whether anything serves).
///
/// A server that does not answer within [`HEALTH_TIMEOUT`] is not healthy: without a limit a
/// server whose admin socket accepts nothing (out of descriptors, every admin place taken)
/// made `health` wait for ever, and a probe without its own timeout with it.
fn health(data: &Path, json: bool) -> anyhow::Result<u8> {
    let s = UnixStream::connect(efs_core::datadir::admin_socket_path(data))
        .map_err(|_| anyhow::anyhow!("no efs-server is running on {}", data.display()))?;
    s.set_read_timeout(Some(HEALTH_TIMEOUT))?;
    s.set_write_timeout(Some(HEALTH_TIMEOUT))?;
    let resp = ask(s, &AdminRequest::Health).map_err(|e| {
        let timed_out = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            })
        });
        if timed_out {
            anyhow::anyhow!(
                "efs-server on {} did not answer within {} s",
                data.display(),
                HEALTH_TIMEOUT.as_secs()
            )
        } else {
            e
        }
    })?;
    match resp.error {
        None if resp.ok => {
            if json {
                say!("{}", serde_json::to_string_pretty(&resp.data)?);
            } else {
                say!("ok");
            }
            // Below the free-space reserve: still healthy (reads and deletes are served, and
            // a container health check must not restart the server for it), but said.
            if let Some(refused) = resp.data.get("uploads").and_then(|v| v.as_str()) {
                eprintln!(
                    "warning: uploads {refused}; free space or grow the volume (reads and deletes still work)"
                );
            }
            Ok(0)
        }
        e => bail!("efs-server cannot serve: {}", e.unwrap_or_default()),
    }
}

/// `rekey-starter`: only on a stopped data dir (see efs_core::rekey).
fn rekey_starter(
    data: &Path,
    old: &[KeyPartSpec],
    new: &[KeyPartSpec],
    witness: Option<&Path>,
    json: bool,
) -> anyhow::Result<u8> {
    if UnixStream::connect(efs_core::datadir::admin_socket_path(data)).is_ok() {
        bail!(
            "efs-server is running on {}: stop it first. rekey-starter rewrites the system \
             database and every filesystem's keyring, which the running server holds open \
             with the old starter key",
            data.display()
        );
    }
    refuse_root_on_anothers_data_dir(data)?;
    if !is_data_dir(data)? {
        bail!("{} is not an EFS data dir", data.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lines = rt
        .block_on(efs_core::rekey::rekey_starter_witnessed(
            data,
            old,
            new,
            efs_core::keyparts::Argon2Params::default(),
            &|p: &str| prompt(p),
            witness,
        ))
        .context("re-keying the starter key")?;
    if json {
        // Warnings (an audit entry not written, an env: part to remove) also where a script's
        // operator sees them.
        for l in lines.iter().filter(|l| l.starts_with("WARNING")) {
            eprintln!("efsctl: {l}");
        }
        let v = serde_json::json!({ "done": true, "lines": lines });
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for l in lines {
            say!("{l}");
        }
    }
    Ok(0)
}

fn absolute(p: &Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))?;
    abs.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", abs.display()))
}

/// Asks for a passphrase without echo on a terminal; reads a line from a pipe (scripts).
fn prompt(p: &str) -> std::io::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(p);
    }
    let mut s = String::new();
    std::io::stdin().read_line(&mut s)?;
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

fn read_public_key(p: &Path) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let text = if p == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
    };
    // The parser's error says what was expected: said once, after the file's name.
    // (An RSA or EC PEM key's error says only that the PEM is not one it reads.)
    efs_server::auth::parse_public_key(&text).map_err(|e| {
        let e = e.to_string();
        if e.contains("not an Ed25519 public key") {
            anyhow::anyhow!("{}: {e}", p.display())
        } else {
            anyhow::anyhow!("{}: not an Ed25519 public key: {e}", p.display())
        }
    })
}

/// The three files of a key pair `create-user` or `replace-key` wrote.
struct GeneratedPair {
    name: String,
    /// For `replace-key` (an existing user's new key), not a new user: what the messages
    /// after a failure say.
    replacing: bool,
    /// The public key, base64, as the user list shows it.
    public_b64: String,
    openssh: PathBuf,
    pem: PathBuf,
    public: PathBuf,
}

impl GeneratedPair {
    /// The pair is an existing user's new key (`replace-key`).
    fn replacing(self) -> Self {
        Self {
            replacing: true,
            ..self
        }
    }

    /// After `create-user` or `replace-key` failed, but maybe not before it was delivered
    /// (else [`GeneratedPair::remove`]): removes the files if the user does not exist with
    /// this key (refused, nothing saved: the keys would name no one); keeps them if it does
    /// (an error came after the user was saved: its audit entry, the server's reload, a lost
    /// answer) or if that cannot be told, and says which.
    fn settle(&self, data: &Path, parts: &[KeyPartSpec], witness: Option<&Path>) {
        let created = send(data, parts, None, witness, AdminRequest::ListUsers).and_then(|r| {
            if !r.ok {
                bail!("{}", r.error.unwrap_or_else(|| "failed".into()));
            }
            Ok(r.data.as_array().is_some_and(|users| {
                users.iter().any(|u| {
                    u["name"].as_str() == Some(self.name.as_str())
                        && u["public_key"].as_str() == Some(self.public_b64.as_str())
                })
            }))
        });
        let name = &self.name;
        let private = self.openssh.display();
        match (created, self.replacing) {
            (Ok(false), false) => self.remove("the user was not created"),
            (Ok(false), true) => self.remove("the user's key was not replaced"),
            (Ok(true), false) => eprintln!(
                "efsctl: the user '{name}' was created with the generated key despite the error \
                 below; its private key is {private}"
            ),
            (Ok(true), true) => eprintln!(
                "efsctl: the user '{name}' has the generated key despite the error below; its \
                 private key is {private}"
            ),
            (Err(e), false) => eprintln!(
                "efsctl: could not tell whether the user '{name}' was created ({e:#}); the key \
                 pair stays at {private}: remove it if efsctl list-users does not show the user"
            ),
            (Err(e), true) => eprintln!(
                "efsctl: could not tell whether the key of '{name}' was replaced ({e:#}); the \
                 key pair stays at {private}: remove it if the public_key efsctl list-users \
                 --json shows for the user is not the one in {}",
                self.public.display()
            ),
        }
    }

    /// Removes the files: the user certainly does not exist with this key (`why`).
    fn remove(&self, why: &str) {
        for p in [&self.openssh, &self.pem, &self.public] {
            if let Err(e) = std::fs::remove_file(p) {
                eprintln!("efsctl: could not remove {}: {e}", p.display());
            }
        }
        eprintln!("efsctl: {why}; the key pair generated for the user is removed");
    }

    fn describe(&self) -> Vec<String> {
        vec![
            format!("Generated an Ed25519 key pair for '{}':", self.name),
            format!(
                "  private key (OpenSSH, for the efs client): {} (mode 0600)",
                self.openssh.display()
            ),
            format!(
                "  private key (PKCS#8 PEM, for openssl):     {} (mode 0600)",
                self.pem.display()
            ),
            format!(
                "  public key:                                {}",
                self.public.display()
            ),
            "Give the private key to the user only, over a safe channel.".into(),
        ]
    }
}

/// Generates a key pair for user `name` and writes it next to `out` (default
/// `NAME_ed25519` in the working directory), never inside the data dir `data`.
fn generate_key_pair(
    name: &str,
    out: Option<PathBuf>,
    data: &Path,
) -> anyhow::Result<(ed25519_dalek::VerifyingKey, GeneratedPair)> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let chosen = out.is_some();
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}_ed25519")));
    let pem_path = PathBuf::from(format!("{}.pem", out.display()));
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    for p in [&out, &pem_path, &pub_path] {
        if p.exists() {
            // Often the key of an earlier create-user of the same name: said, since a user
            // that exists is refused anyway, whatever --out says (black-box review).
            bail!(
                "{} exists; refusing to overwrite a key (one made for {name} before? efsctl list-users shows whether {name} exists): {}",
                p.display(),
                if chosen {
                    "choose another --out or remove it"
                } else {
                    "write the key elsewhere with --out, or remove it"
                }
            );
        }
    }
    // A private key in the data dir would sit beside the data it opens, in every copy of it.
    if efs_core::datadir::is_inside_data_dir(data, &out) {
        bail!(
            "{} is inside the data dir {}; write the private key elsewhere (--out)",
            out.display(),
            data.display()
        );
    }
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(seed.as_mut()).map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let kp = ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let private = ssh_key::PrivateKey::new(
        ssh_key::private::KeypairData::Ed25519(kp),
        format!("efs:{name}"),
    )
    .context("building the OpenSSH key")?;
    let openssh = private
        .to_openssh(ssh_key::LineEnding::LF)
        .context("encoding the OpenSSH key")?;
    // PKCS#8 v1 (no embedded public key): OpenSSL 3.0 refuses the v2 form.
    let pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: *seed,
        public_key: None,
    }
    .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
    .context("encoding the PEM key")?;
    // Durable (file and directory) before the request is sent: the user's row is, and a
    // user whose private key a power cut emptied could never log in.
    let write = |p: &Path, data: &[u8], mode: u32| -> anyhow::Result<()> {
        efs_core::keyparts::write_key_file(p, data, mode)
            .with_context(|| format!("cannot write {}", p.display()))
    };
    let vk = signing.verifying_key();
    let line = format!("{} efs:{name}\n", efs_server::auth::openssh_public_key(&vk));
    let files: [(&Path, &[u8], u32); 3] = [
        (&out, openssh.as_bytes(), 0o600),
        (&pem_path, pem.as_bytes(), 0o600),
        (&pub_path, line.as_bytes(), 0o644),
    ];
    for (i, (p, data, mode)) in files.iter().enumerate() {
        if let Err(e) = write(p, data, *mode) {
            // All three or none: the ones written already go again.
            for (written, _, _) in &files[..i] {
                let _ = std::fs::remove_file(written);
            }
            return Err(e);
        }
    }
    Ok((
        vk,
        GeneratedPair {
            name: name.to_owned(),
            replacing: false,
            public_b64: base64::engine::general_purpose::STANDARD.encode(vk.as_bytes()),
            openssh: out,
            pem: pem_path,
            public: pub_path,
        },
    ))
}

fn cert_sha256(p: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .with_context(|| format!("{} is not a PEM certificate", p.display()))?;
    if der.is_empty() {
        bail!("{} holds no certificate", p.display());
    }
    Ok(hex::encode(sha2::Sha256::digest(&der)))
}
