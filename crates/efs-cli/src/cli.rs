//! The command line's grammar: every command, option and example `--help` shows.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The efs client: copy, sync and browse files on EFS servers.
///
/// `NAME:/path` is a path on the remote NAME (see `efs remote add`); anything else is a
/// local path (write `./a:b` for a local file with a colon in its name).
#[derive(Parser, Debug)]
#[command(
    name = "efs",
    version,
    propagate_version = true,
    after_help = concat!(
"Getting started:
  efs keygen                                   # then give the printed public line to the operator
  efs remote add drive https://files.example:8443 --user alice --fs drive
  efs cp ./Important-Document.pdf drive:/Documents/
  efs cp --sync --no-delete drive:/Documents ./Documents
  efs shell drive

Configuration: $EFS_CONFIG_DIR, else $XDG_CONFIG_HOME/efs, else ~/.config/efs (config.toml,
tokens/NAME.json). EFS_KEY_PASSPHRASE unlocks an encrypted key; SSH_AUTH_SOCK lets ssh-agent
sign; EFS_MAX_ATTEMPTS bounds the retries of transient failures; EFS_LOG=debug logs more.

", "Exit codes:
  0  success
  1  error
  2  bad usage (options, arguments, unknown remote, invalid path, removing the root)
  3  not found
  4  login refused, key unusable, or permission denied (401/403); a token refused during a
     streamed upload after which a new login succeeded (run the command again); a download
     to a stream cut short because the server ended the login's access (revoke, grant change)
  5  conflict or precondition failed (destination exists, directory not empty, file changed,
     a file named as a directory: NAME:/a.txt/)
  6  TLS trust failure (the certificate changed or is not trusted)
  7  network failure (connection refused/reset/timed out, server busy) after retries
  129, 130, 143  efs cp or efs tar stopped by SIGHUP, SIGINT (Ctrl-C) or SIGTERM; unfinished
                 downloads and archive removed (under nohup, SIGHUP stays ignored)")
)]
pub(crate) struct Cli {
    /// No progress bars, no summaries.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Say more: every file copied or deleted.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Create an Ed25519 key (OpenSSH format) and print the public line for the operator.
    #[command(after_help = "\
Examples:
  efs keygen                          # writes $EFS_CONFIG_DIR/id_ed25519 (~/.config/efs/id_ed25519) and .pub
  efs keygen -o ~/.ssh/id_ed25519_efs -C alice@laptop

An existing ~/.ssh/id_ed25519 works as it is: you need no new key if you have one.
The key is never overwritten; the private file is created with mode 0600.")]
    Keygen {
        /// Where to write the private key (FILE.pub gets the public key).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The key's comment (default: user@host); one line, no control characters.
        #[arg(short = 'C', long, value_parser = parse_key_comment)]
        comment: Option<String>,
    },

    /// Add, list or remove remotes (servers, with a user, a key and TLS trust).
    #[command(
        subcommand,
        after_help = "\
Examples:
  efs remote add drive https://files.example:8443 --user alice --ca ./tls-cert.pem
  efs ls drive:/                        # the remote's name, then a path
  efs remote list
  efs remote remove drive

`efs remote add --help` lists the ways to trust the server's certificate."
    )]
    Remote(RemoteCmd),

    /// Copy files and directories between local paths and remotes, or sync them.
    #[command(after_help = "\
Examples:
  efs cp ./Important-Document.pdf drive:/Documents/     # trailing '/': into that directory
  efs cp drive:/Documents/report.pdf .                  # download into the current directory
  efs cp -r ./photos drive:/backup/                     # a directory, 4 files at a time
  efs cp -r -j 8 drive:/backup/photos ./restore         # 8 at a time
  efs cp drive:/a.pdf archive:/2026/a.pdf               # remote to remote, streamed through this machine
  efs cp --sync --no-delete drive:/Documents ./Documents
  efs cp --sync --dry-run ./site drive:/www             # show what would change, change nothing

Destination: DST/NAME when DST is an existing directory, ends with '/', or there are several
sources; otherwise DST itself. With --sync, DST becomes a mirror of SRC (like
`rsync -r --delete SRC/ DST/`; --no-delete keeps files that exist only in DST).

Which files --sync copies: those missing at the destination, those whose size differs, and
 - upload (local -> remote): those modified locally after the remote copy was written;
 - download (remote -> local): those whose local modification time is not the remote's
   (every download sets the local file's modification time to the remote one);
 - remote -> remote: those written at the source after the destination copy.
Times are compared to the second. A change that keeps the size and happens within the same
second as the previous copy is not seen.")]
    Cp(CpArgs),

    /// List a remote directory.
    #[command(after_help = "\
Examples:
  efs ls drive:/
  efs ls -l drive:/Documents
  efs ls -R drive:/Documents
  efs ls --json drive:/Documents | jq '.[].name'

-l shows type (d or -), size in bytes, modification time (UTC, RFC 3339) and name.")]
    Ls {
        /// Type, size and modification time too.
        #[arg(short, long)]
        long: bool,
        /// Recurse into subdirectories.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// JSON: an array of entries with path, name, type, size, modified, etag, content_type.
        #[arg(long)]
        json: bool,
        /// NAME:/path (default NAME:/).
        #[arg(required = true, value_name = "REMOTE_PATH")]
        paths: Vec<String>,
    },

    /// Show a remote file's or directory's type, size, time, ETag and content type.
    #[command(after_help = "\
Examples:
  efs stat drive:/Documents/report.pdf
  efs stat --json drive:/Documents/report.pdf | jq -r .etag")]
    Stat {
        /// JSON output: one path, an object (path, name, type, size, modified, etag,
        /// content_type); several, an array of them in the order given (failed ones left out).
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "REMOTE_PATH")]
        paths: Vec<String>,
    },

    /// Write remote files to stdout, streaming.
    #[command(after_help = "\
Examples:
  efs cat drive:/notes/todo.txt
  efs cat drive:/logs/big.log | head        # a closed pipe is not an error
  efs cat drive:/a.tar | tar -x")]
    Cat {
        #[arg(required = true, value_name = "REMOTE_PATH")]
        paths: Vec<String>,
    },

    /// Store stdin as a remote file (read first if at most 4 MiB, else streamed).
    #[command(after_help = "\
Examples:
  echo hello | efs put drive:/notes/hello.txt
  tar -c ./project | efs put --content-type application/x-tar drive:/backup/project.tar
  efs put --no-clobber drive:/locks/job < /dev/null      # exit 5 if it exists
  efs put --if-match '\"ETAG\"' drive:/config.json < new.json   # exit 5 if it changed

A body of at most 4 MiB is read whole before it is sent, so it is sent again after a transient
failure or a refused token (efsctl revoke or grant ends tokens). A longer one streams and is
sent once: if the server refuses the token, efs logs in again and asks you to run the command
again (exit 4).")]
    Put {
        /// The Content-Type stored with the file (default: from the extension).
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
        /// Replace only if the current version has this ETag (as `efs stat` prints it).
        #[arg(long, value_name = "ETAG", conflicts_with = "no_clobber", value_parser = parse_etag)]
        if_match: Option<String>,
        /// Create only: fail (exit 5) if the file exists.
        #[arg(short = 'n', long)]
        no_clobber: bool,
        /// Print the stored entry as JSON.
        #[arg(long)]
        json: bool,
        #[arg(value_name = "REMOTE_PATH")]
        path: String,
    },

    /// Remove remote files or directories.
    #[command(after_help = "\
Examples:
  efs rm drive:/Documents/old.pdf
  efs rm -r drive:/Documents/2019
  efs rm -f drive:/tmp/maybe-there     # a missing file is not an error

Without -r, only files and empty directories are removed (a non-empty one: exit 5).
The root (NAME:/) is never removed (exit 2): remove what is in it, path by path.
-v names each path removed on stdout, a directory once: \"deleted NAME:/dir/\", with
\" (and everything in it)\" when -r removed what was in it.")]
    Rm {
        /// Remove directories and everything in them.
        #[arg(short, long)]
        recursive: bool,
        /// Ignore missing files.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true, value_name = "REMOTE_PATH")]
        paths: Vec<String>,
    },

    /// Move or rename remote files and directories (on one remote).
    #[command(after_help = "\
Examples:
  efs mv drive:/Documents/draft.pdf drive:/Documents/final.pdf
  efs mv drive:/a.pdf drive:/b.pdf drive:/Archive/      # into a directory
  efs mv -f drive:/new.cfg drive:/current.cfg           # replace an existing file

An existing destination file is refused (exit 5) unless -f.")]
    Mv {
        /// Replace an existing destination file.
        #[arg(short, long)]
        force: bool,
        /// SRC... DST
        #[arg(required = true, num_args = 2.., value_name = "REMOTE_PATH")]
        paths: Vec<String>,
    },

    /// Create remote directories.
    #[command(after_help = "\
Examples:
  efs mkdir drive:/Projects
  efs mkdir -p drive:/Projects/2026/q1     # parents too, and no error if it exists")]
    Mkdir {
        /// Create parents as needed; an existing directory is not an error.
        #[arg(short, long)]
        parents: bool,
        #[arg(required = true, value_name = "REMOTE_PATH")]
        paths: Vec<String>,
    },

    /// Print a valid access token of a remote, for curl and other HTTP clients.
    #[command(after_help = "\
Examples:
  T=$(efs token drive)
  curl --cacert ca.pem -H \"Authorization: Bearer $T\" https://files.example:8443/Documents/report.pdf
  efs token --json drive        # with fs, expires_at_unix, renewals_left

The token is valid for at least a minute more (usually about an hour); it is cached in
tokens/NAME.json and renewed as needed.")]
    Token {
        /// JSON with the expiry and renewals left.
        #[arg(long)]
        json: bool,
        /// The remote's name.
        remote: String,
    },

    /// An interactive shell on a remote: ls, cd, get, post, rm, clear-cache, …
    #[command(after_help = "\
Examples:
  efs shell drive
  printf 'ls\\nget /notes/todo.txt\\n' | efs shell drive     # scripted

Inside, `help` lists the commands; Tab completes remote paths; history is kept in the
configuration directory. Downloads are cached in $XDG_CACHE_HOME/efs/shell-PID/ (removed when
the shell ends; `clear-cache` empties it earlier).")]
    Shell {
        /// The remote's name.
        remote: String,
    },

    /// Back up a remote tree into a gzip'd tar encrypted with age (the `age` tool opens it).
    #[command(after_help = "\
Examples:
  efs tar drive:/ -o /var/backups/drive.tar.gz.age -p ./password.txt
  efs tar drive:/Documents -o docs.tar.gz.age -r age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
  efs tar drive:/Documents -o docs.tar.gz.age -R ./recipients.txt --force

Open it without EFS:
  age -d -i key.txt docs.tar.gz.age | tar xz         # an identity (age-keygen -o key.txt)
  age -d drive.tar.gz.age | tar xz                   # asks for the passphrase

Paths inside the tar are relative to REMOTE:/path; directories are included (empty ones too).
The passphrase is the first line of PASSFILE. Each file is streamed from the server into the
archive: memory stays constant, whatever the sizes. FILE is written as a new
FILE.<random>.efs-part and renamed at the end; an existing FILE is refused (exit 5) unless
--force.")]
    Tar(TarArgs),

    /// Restore an `efs tar` backup (any gzip'd tar encrypted with age) into a remote directory.
    #[command(after_help = "\
Examples:
  efs untar /var/backups/drive.tar.gz.age drive:/restored -p ./password.txt
  efs untar docs.tar.gz.age drive:/Documents -i key.txt
  efs untar docs.tar.gz.age drive:/Documents -i key.txt --force    # replace existing files

Every file is read back after its upload and compared (size and SHA-256) with what the archive
holds. Entries with an absolute path or '..', links and other special entries are reported
and skipped. A wrong passphrase or identity is refused before anything is uploaded (exit 4).
Existing files are not replaced (reported, exit 5) unless --force. Any entry not restored or
not verified makes the exit code non-zero (1, or 5 if every problem was an existing file).")]
    Untar(UntarArgs),

    /// Print a completion script for a shell.
    #[command(after_help = "\
Examples:
  efs completions bash > ~/.local/share/bash-completion/completions/efs
  efs completions zsh > ~/.zfunc/_efs
  efs completions fish > ~/.config/fish/completions/efs.fish")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub(crate) struct CpArgs {
    /// Copy directories and their contents.
    #[arg(short, long)]
    pub recursive: bool,
    /// How many files to copy at the same time.
    #[arg(short, long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Make DST a mirror of SRC: copy only what changed, delete what SRC lacks.
    #[arg(long)]
    pub sync: bool,
    /// With --sync: keep files that exist only at the destination.
    #[arg(long, requires = "sync")]
    pub no_delete: bool,
    /// Print what would be copied and deleted; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// SRC... DST
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("key").required(true).multiple(true).args(["passphrase_file", "recipients", "recipients_files"])))]
pub(crate) struct TarArgs {
    /// The remote directory (or file) to back up: NAME:/path.
    #[arg(value_name = "REMOTE_PATH")]
    pub source: String,
    /// The archive to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Encrypt with the passphrase on the first line of this file (age's scrypt).
    #[arg(short, long, value_name = "PASSFILE", conflicts_with_all = ["recipients", "recipients_files"])]
    pub passphrase_file: Option<PathBuf>,
    /// Encrypt to this age public key (age1…); repeatable.
    #[arg(short, long = "recipient", value_name = "RECIPIENT")]
    pub recipients: Vec<String>,
    /// Encrypt to the public keys in this file (one a line, # comments); repeatable.
    #[arg(short = 'R', long = "recipients-file", value_name = "FILE")]
    pub recipients_files: Vec<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("key").required(true).args(["passphrase_file", "identity"])))]
pub(crate) struct UntarArgs {
    /// The archive (age-encrypted gzip'd tar).
    #[arg(value_name = "FILE")]
    pub archive: PathBuf,
    /// Where to restore: NAME:/path (created if missing).
    #[arg(value_name = "REMOTE_PATH")]
    pub dest: String,
    /// Decrypt with the passphrase on the first line of this file.
    #[arg(short, long, value_name = "PASSFILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Decrypt with the age identities (AGE-SECRET-KEY-1…) in this file.
    #[arg(short, long, value_name = "IDENTITY_FILE")]
    pub identity: Option<PathBuf>,
    /// Replace existing files.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum RemoteCmd {
    /// Add a remote: a server URL, a user, a key, and how to trust its TLS certificate.
    #[command(after_help = "\
Examples:
  efs remote add drive https://files.example:8443 --user alice              # asks about the certificate
  efs remote add drive https://10.0.0.5:8443 --user alice --ca ./tls-cert.pem
  efs remote add drive https://10.0.0.5:8443 --user alice \\
      --fingerprint 3D:2E:96:…                                           # as the server printed it
  efs remote add ci https://10.0.0.5:8443 --user ci --key ./ci_ed25519 --accept-fingerprint
  efs remote add pub https://efs.example.org --user alice --system-roots   # a public CA's certificate

Without --ca, --fingerprint or --system-roots, efs shows the certificate's SHA-256 fingerprint and asks
(trust on first use, as ssh does), then pins it: a changed certificate is refused later (exit 6).
Without a terminal it refuses, unless --accept-fingerprint.
A server that answers with a certificate that --ca, --fingerprint or --system-roots does not
trust is refused (exit 6) and the remote is not added; a server that does not answer yet is
added with a warning.
The key defaults to $EFS_CONFIG_DIR/id_ed25519 if `efs keygen` made it, else ~/.ssh/id_ed25519.")]
    Add(RemoteAdd),
    /// List the remotes.
    #[command(after_help = "\
Examples:
  efs remote list
  efs remote list --json")]
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a remote and its cached token.
    #[command(after_help = "\
Examples:
  efs remote remove drive")]
    Remove {
        /// The remote's name.
        name: String,
    },
}

#[derive(Args, Debug)]
pub(crate) struct RemoteAdd {
    /// A short name, used as NAME:/path (letters, digits, '_', '-').
    pub name: String,
    /// The server, https://HOST:PORT (no path: the filesystem is chosen with --fs).
    pub url: String,
    /// The user name the operator created.
    #[arg(short, long)]
    pub user: String,
    /// The private key (OpenSSH or PKCS#8 PEM Ed25519), not its .pub.
    #[arg(short, long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The filesystem to use (needed when the user has several).
    #[arg(long, value_name = "FS")]
    pub fs: Option<String>,
    /// Trust certificates signed by this CA (PEM), e.g. the server's tls-cert.pem.
    #[arg(long, value_name = "FILE", group = "trust")]
    pub ca: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (colons optional).
    #[arg(long, value_name = "HEX", group = "trust")]
    pub fingerprint: Option<String>,
    /// Pin the certificate the server presents now, without asking (for scripts).
    #[arg(long, group = "trust")]
    pub accept_fingerprint: bool,
    /// Trust the system's root CAs (a server whose certificate comes from a public CA:
    /// it keeps working when the certificate is renewed).
    #[arg(long, group = "trust")]
    pub system_roots: bool,
}

/// A key comment: the end of the public key's one line, so no line break or other control
/// character (`-C $'a\nb'` wrote a `.pub` of two lines; black-box review).
fn parse_key_comment(s: &str) -> Result<String, String> {
    if s.chars().any(char::is_control) {
        Err("a key comment is one line without control characters".into())
    } else {
        Ok(s.to_owned())
    }
}

/// An ETag as `efs stat` prints it (quoted or not): an empty one, or one with a control
/// character, is bad usage (exit 2); it could only make the write fail as changed.
fn parse_etag(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("an ETag is not empty: give it as efs stat prints it".into())
    } else if s.chars().any(char::is_control) {
        Err("an ETag holds no control characters: give it as efs stat prints it".into())
    } else {
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_examples() {
        let mut cmd = Cli::command();
        cmd.build();
        fn check(cmd: &clap::Command) {
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                if sub.has_subcommands() {
                    check(sub);
                } else {
                    let help = sub
                        .get_after_help()
                        .map(|h| h.to_string())
                        .unwrap_or_default();
                    assert!(
                        help.contains("Examples:"),
                        "{} has no examples",
                        sub.get_name()
                    );
                }
            }
        }
        check(&cmd);
    }
}
