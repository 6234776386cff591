//! `efs tar` and `efs untar`: a portable backup of a remote tree, a gzip'd tar encrypted in
//! the age format (<https://age-encryption.org/v1>), so that the standard `age` tool opens
//! it without EFS: `age -d -i key.txt FILE | tar xz`.
//!
//! Both ways stream with constant memory: each file goes from the server into its tar entry
//! (the size is known from the listing), through gzip and the age encryptor into the output
//! file, and back. The synchronous tar/gzip/age chain runs on a blocking thread; file bodies
//! cross between it and the async SDK through bounded in-memory pipes.

use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use age::secrecy::SecretString;
use anyhow::{Context, Result};
use efs_client::{Client, PutOptions};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use crate::cli::{TarArgs, UntarArgs};
use crate::commands::remote_arg;
use crate::exit::{self, fail, fail_hint, usage};
use crate::location::{self, RemotePath};
use crate::progress::Progress;
use crate::session::Session;
use crate::walk::{self, Kind, Meta};

/// The size of the in-memory pipe between a transfer and the tar stream.
const PIPE: usize = 256 * 1024;

/// The passphrase: the first line of `file` (without its line ending).
fn read_passphrase(file: &Path) -> Result<SecretString> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(file)
            .with_context(|| format!("reading the passphrase file {}", file.display()))?,
    );
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(usage(format!(
            "the passphrase file {} is empty (its first line is the passphrase)",
            file.display()
        )));
    }
    Ok(SecretString::from(line.to_owned()))
}

/// The recipients of `-r` and of the files of `-R` (one `age1…` key a line, `#` comments).
fn read_recipients(args: &TarArgs) -> Result<Vec<age::x25519::Recipient>> {
    let mut out = Vec::new();
    for (i, k) in args.recipients.iter().enumerate() {
        out.push(parse_recipient(&format!("-r value {}", i + 1), k.trim())?);
    }
    for f in &args.recipients_files {
        // The file may hold a secret key by mistake: wiped once read.
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the recipients file {}", f.display()))?,
        );
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(parse_recipient(
                &format!("line {} of {}", n + 1, f.display()),
                line,
            )?);
        }
    }
    Ok(out)
}

/// The recipient `value`, found at `at` ("line 3 of keys.txt"). No message quotes `value`:
/// it may be a secret key put there by mistake, or a typo of one.
fn parse_recipient(at: &str, value: &str) -> Result<age::x25519::Recipient> {
    const SECRET_PREFIX: &str = "AGE-SECRET-KEY-";
    let is_secret = value
        .get(..SECRET_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SECRET_PREFIX));
    if is_secret {
        return Err(fail_hint(
            exit::USAGE,
            format!("{at} is an age secret key, not a recipient (its value is not shown)"),
            "recipients are public keys (age1…): `age-keygen -y KEYFILE` prints the one of a secret key; keep the secret key out of recipient lists and rotate it if it was shared",
        ));
    }
    value.parse::<age::x25519::Recipient>().map_err(|_| {
        fail_hint(
            exit::USAGE,
            format!("{at} is not an age recipient"),
            "a recipient is an age X25519 public key (age1…), as `age-keygen -y key.txt` prints it",
        )
    })
}

/// The encryptor for `efs tar`'s options.
fn encryptor(args: &TarArgs) -> Result<age::Encryptor> {
    if let Some(p) = &args.passphrase_file {
        return Ok(age::Encryptor::with_user_passphrase(read_passphrase(p)?));
    }
    let recipients = read_recipients(args)?;
    if recipients.is_empty() {
        return Err(usage("efs tar needs -p PASSFILE, -r RECIPIENT or -R FILE"));
    }
    age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| usage(format!("cannot encrypt to these recipients: {e}")))
}

/// A header for a directory or file entry.
fn header(meta: &Meta) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    if meta.kind == Kind::Dir {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
    } else {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(meta.size);
    }
    let mtime = meta
        .modified
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    h.set_mtime(mtime);
    h
}

/// Reads exactly `left` bytes from `inner`: fewer is an error (the download failed or the
/// file shrank), never a short tar entry.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the download ended {} bytes early", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// `efs tar REMOTE:/path -o FILE`.
pub(crate) async fn tar(
    session: &Session,
    args: TarArgs,
    quiet: bool,
    verbose: bool,
) -> Result<()> {
    let rp = remote_arg("tar", &args.source)?;
    let enc = encryptor(&args)?;
    let out_path = args.output.clone();
    if !args.force && out_path.exists() {
        return Err(fail_hint(
            exit::CONFLICT,
            format!("{} exists", out_path.display()),
            "use --force to replace it",
        ));
    }
    let client = session.client(&rp.remote).await?;
    let root = walk::stat_remote(&client, &rp.remote, &rp.path)
        .await?
        .ok_or_else(|| fail(exit::NOT_FOUND, format!("{} does not exist", rp.display())))?;
    // (relative path in the tar, remote path, meta)
    let mut items: Vec<(String, String, Meta)> = Vec::new();
    if root.kind == Kind::File {
        let name = location::basename(&rp.path).to_owned();
        items.push((name, rp.path.clone(), root));
    } else {
        let tree = walk::walk_remote(&client, &rp.remote, &rp.path, false).await?;
        for (rel, meta) in tree {
            let path = location::join(&rp.path, &rel);
            items.push((rel, path, meta));
        }
        // Depth first, parents before their contents.
        items.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
    }
    let files = items.iter().filter(|i| i.2.kind == Kind::File).count() as u64;
    let bytes: u64 = items
        .iter()
        .filter(|i| i.2.kind == Kind::File)
        .map(|i| i.2.size)
        .sum();
    let dirs = items.len() as u64 - files;

    let (part, file) = create_part(&out_path)?;
    // Removes the unfinished archive on every way out but the rename below, including this
    // future being dropped (`efs tar` stopped by a signal).
    let mut guard = RemoveOnDrop(Some(part.clone()));
    let progress = Progress::new(quiet, files, bytes);
    let handle = Handle::current();
    let job = {
        let part = part.clone();
        let progress = progress.clone();
        let remote = rp.remote.clone();
        tokio::task::spawn_blocking(move || {
            write_archive(
                &handle, &client, &remote, enc, file, &part, items, &progress, verbose,
            )
        })
    };
    job.await.context("the archive writer stopped")??;
    progress.finish();
    if !args.force && out_path.exists() {
        return Err(fail_hint(
            exit::CONFLICT,
            format!(
                "{} appeared while the backup was written",
                out_path.display()
            ),
            "use --force to replace it",
        ));
    }
    std::fs::rename(&part, &out_path)
        .with_context(|| format!("renaming {} to {}", part.display(), out_path.display()))?;
    guard.0 = None;
    if !quiet {
        eprintln!(
            "tar: {files} files, {dirs} directories, {} bytes from {} -> {}",
            bytes,
            rp.display(),
            out_path.display()
        );
    }
    Ok(())
}

/// Removes the file it names when dropped (unless emptied first).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A new, empty file next to `out` for the archive being written:
/// `<out>.<16 random hex digits>.efs-part`, created exclusively (`O_CREAT | O_EXCL`), so an
/// existing file is never emptied and a link planted there never followed.
fn create_part(out: &Path) -> Result<(PathBuf, std::fs::File)> {
    for _ in 0..8 {
        let mut random = [0u8; 8];
        aws_lc_rs::rand::fill(&mut random)
            .map_err(|_| anyhow::anyhow!("no random bytes for a temporary file name"))?;
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        // Cut to fit NAME_MAX beside an output whose own name is long.
        let file_name = out.file_name().unwrap_or(out.as_os_str());
        let part = out.with_file_name(efs_client::client::part_name(file_name, &hex));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
        {
            Ok(file) => return Ok((part, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // Named as the output the user gave (the temporary name is ours): a missing
            // directory is "creating /nonexistent/t.age", not its `.efs-part`.
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", out.display()));
            }
        }
    }
    Err(anyhow::anyhow!(
        "every temporary file name tried next to {} exists",
        out.display()
    ))
}

/// The blocking half of `efs tar`: tar -> gzip -> age -> `file` (at `part`). `remote`: the
/// remote's name, which errors name with each path (`drive:/a.pdf`).
#[allow(clippy::too_many_arguments)]
fn write_archive(
    handle: &Handle,
    client: &Client,
    remote: &str,
    enc: age::Encryptor,
    file: std::fs::File,
    part: &Path,
    items: Vec<(String, String, Meta)>,
    progress: &Arc<Progress>,
    verbose: bool,
) -> Result<()> {
    let out = std::io::BufWriter::with_capacity(PIPE, file);
    let aged = enc
        .wrap_output(out)
        .with_context(|| format!("writing {}", part.display()))?;
    let gz = flate2::write::GzEncoder::new(aged, flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    builder.mode(tar::HeaderMode::Deterministic);
    for (rel, path, meta) in items {
        let mut h = header(&meta);
        if meta.kind == Kind::Dir {
            builder
                .append_data(&mut h, format!("{rel}/"), std::io::empty())
                .with_context(|| format!("writing the entry of {path}"))?;
            continue;
        }
        let fp = progress.file(&rel, meta.size);
        if meta.size == 0 {
            builder
                .append_data(&mut h, &rel, std::io::empty())
                .with_context(|| format!("writing the entry of {path}"))?;
            fp.finish(true, 0);
            continue;
        }
        let (reader, mut writer) = tokio::io::duplex(PIPE);
        let task = {
            let client = client.clone();
            let path = path.clone();
            let cb = fp.callback();
            handle.spawn(async move {
                let n = client
                    .download(&path, &mut writer, None, Some(&*cb))
                    .await?;
                writer.shutdown().await.map_err(efs_client::Error::Io)?;
                Ok::<u64, efs_client::Error>(n)
            })
        };
        let body = Exact {
            inner: SyncIoBridge::new_with_handle(reader, handle.clone()),
            left: meta.size,
        };
        let appended = builder.append_data(&mut h, &rel, body);
        let downloaded = handle.block_on(task).context("a download stopped")?;
        let size = meta.size;
        fp.finish(
            matches!((&appended, &downloaded), (Ok(()), Ok(n)) if *n == size),
            size,
        );
        let changed = || {
            fail_hint(
                exit::ERROR,
                format!(
                    "{remote}:{path} changed while it was read (the listing said {size} bytes)"
                ),
                "run the backup again",
            )
        };
        match (appended, downloaded) {
            (Ok(()), Ok(n)) if n == size => {}
            // Writing the archive failed (a full disk, a size limit): the download's closed
            // pipe, or its success, follows from it; the write's error is the one to tell.
            (Err(e), Ok(n)) if n == size => {
                return Err(e).with_context(|| format!("writing {}", part.display()));
            }
            (Err(e), Err(d)) if exit::is_broken_pipe(&d) => {
                return Err(e).with_context(|| format!("writing {}", part.display()));
            }
            (_, Ok(_)) => return Err(changed()),
            // More than `size` bytes came: the tar entry stopped reading.
            (Ok(()), Err(d)) if exit::is_broken_pipe(&d) => return Err(changed()),
            (_, Err(e)) => {
                return Err(e).with_context(|| format!("downloading {remote}:{path}"));
            }
        }
        if verbose {
            progress.verbose_line(&format!("added {rel}"));
        }
    }
    let gz = builder.into_inner().context("finishing the tar stream")?;
    let aged = gz.finish().context("finishing the gzip stream")?;
    let out = aged.finish().context("finishing the age stream")?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", part.display()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", part.display()))?;
    Ok(())
}

/// The identities for `efs untar`'s options.
fn identities(args: &UntarArgs) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>> {
    if let Some(p) = &args.passphrase_file {
        return Ok(vec![Box::new(age::scrypt::Identity::new(read_passphrase(
            p,
        )?))]);
    }
    let Some(file) = &args.identity else {
        return Err(usage("efs untar needs -p PASSFILE or -i IDENTITY_FILE"));
    };
    let ids = age::IdentityFile::from_file(file.to_string_lossy().into_owned())
        .with_context(|| format!("reading the identity file {}", file.display()))?
        .into_identities()
        .map_err(|e| {
            fail(
                exit::AUTH,
                format!("the identity file {} is unusable: {e}", file.display()),
            )
        })?;
    if ids.is_empty() {
        return Err(fail(
            exit::AUTH,
            format!("no identity in {}", file.display()),
        ));
    }
    Ok(ids)
}

/// The path of a tar entry below the destination, or why it is refused. `Ok(None)`: the
/// entry is the archive's root (`./`).
fn safe_rel(path: &Path) -> std::result::Result<Option<String>, String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => match s.to_str() {
                // Refused here, as `efs cp` refuses such a local name, rather than by the
                // server after an upload began.
                Some(s) => match crate::walk::name_problem(s) {
                    Some(why) => return Err(why.into()),
                    None => parts.push(s.to_owned()),
                },
                None => return Err("the name is not UTF-8".into()),
            },
            Component::CurDir => {}
            Component::ParentDir => return Err("it contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("it is an absolute path".into());
            }
        }
    }
    if parts.is_empty() {
        Ok(None)
    } else {
        Ok(Some(parts.join("/")))
    }
}

/// Counts and hashes what goes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    len: u64,
    /// Set when reading `inner` failed (the archive, not the upload it feeds).
    read_failed: bool,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| {
            // `io::copy` tries an interrupted read again: not a failure of the archive.
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.read_failed = true;
            }
        })?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// What an archive that fails to read is said to be, before the error that says how: age
/// authenticates it chunk by chunk, so a byte changed or the end cut off fails there (it said
/// "local I/O: the upload's source ended" and age's "last chunk has been processed"; black-box
/// review); the same words fit a file that is no tar inside, or a local read error, whose own
/// error follows.
const ARCHIVE_BROKEN: &str =
    "reading the archive failed (damaged, altered or cut short, or not an efs tar archive)";

/// An `AsyncWrite` that only hashes and counts (to verify a re-download).
struct HashSink {
    hash: Sha256,
    len: u64,
}

impl tokio::io::AsyncWrite for HashSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.hash.update(buf);
        self.len += buf.len() as u64;
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// What went wrong with some entries of an untar (the rest was restored).
#[derive(Default)]
struct Problems {
    count: u64,
    /// Every problem was an existing destination file.
    only_conflicts: bool,
}

/// `efs untar FILE REMOTE:/path`.
pub(crate) async fn untar(
    session: &Session,
    args: UntarArgs,
    quiet: bool,
    verbose: bool,
) -> Result<()> {
    let rp = remote_arg("untar", &args.dest)?;
    let ids = identities(&args)?;
    let file = std::fs::File::open(&args.archive)
        .with_context(|| format!("opening {}", args.archive.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Decrypt the header first: a wrong passphrase or identity stops here, before anything
    // is uploaded.
    let archive = args.archive.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let dec = age::Decryptor::new_buffered(BufReader::with_capacity(PIPE, file))
            .map_err(|e| decrypt_error(&archive, e))?;
        dec.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| decrypt_error(&archive, e))
    })
    .await
    .context("the decryptor stopped")??;
    let client = session.client(&rp.remote).await?;
    if let Some(m) = walk::stat_remote(&client, &rp.remote, &rp.path).await?
        && m.kind != Kind::Dir
    {
        return Err(fail(
            exit::CONFLICT,
            format!("{} is a file, not a directory", rp.display()),
        ));
    }
    // The archive's size stands for the work: the bar follows the bytes read from it.
    let progress = Progress::new(quiet, 0, total);
    let handle = Handle::current();
    let job = {
        let progress = progress.clone();
        let root = rp.clone();
        let force = args.force;
        tokio::task::spawn_blocking(move || {
            read_archive(&handle, &client, reader, &root, force, &progress, verbose)
        })
    };
    let result = job.await.context("the archive reader stopped")?;
    progress.finish();
    let (restored, problems) = result?;
    if !quiet {
        eprintln!(
            "untar: {restored} files restored and verified into {}{}",
            rp.display(),
            if problems.count > 0 {
                format!(", {} problems", problems.count)
            } else {
                String::new()
            }
        );
    }
    if problems.count > 0 {
        let code = if problems.only_conflicts {
            exit::CONFLICT
        } else {
            exit::ERROR
        };
        return Err(fail(
            code,
            format!(
                "{} entries of {} were not restored or did not verify (see above)",
                problems.count,
                args.archive.display()
            ),
        ));
    }
    Ok(())
}

fn decrypt_error(archive: &Path, e: age::DecryptError) -> anyhow::Error {
    match e {
        age::DecryptError::NoMatchingKeys
        | age::DecryptError::DecryptionFailed
        | age::DecryptError::KeyDecryptionFailed => fail_hint(
            exit::AUTH,
            format!("cannot decrypt {}: {e}", archive.display()),
            "check the passphrase file (-p) or the identity file (-i)",
        ),
        age::DecryptError::Io(io) => {
            anyhow::Error::from(io).context(format!("reading {}", archive.display()))
        }
        e => fail(
            exit::ERROR,
            format!("{} is not an age file EFS can read: {e}", archive.display()),
        ),
    }
}

/// Counts the bytes read from the archive file for the progress bar.
struct Counting<R> {
    inner: R,
    progress: Arc<crate::progress::FileProgress>,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        self.progress.update(self.n);
        Ok(n)
    }
}

/// The blocking half of `efs untar`: age -> gunzip -> tar -> uploads, each verified.
/// Returns the number of files restored and the problems.
fn read_archive<R: Read>(
    handle: &Handle,
    client: &Client,
    reader: age::stream::StreamReader<R>,
    root: &RemotePath,
    force: bool,
    progress: &Arc<Progress>,
    verbose: bool,
) -> Result<(u64, Problems)> {
    let mut problems = Problems {
        count: 0,
        only_conflicts: true,
    };
    let mut report = |msg: String, conflict: bool| {
        progress.println(&format!("efs: error: {msg}"));
        problems.count += 1;
        problems.only_conflicts &= conflict;
    };
    let fp = progress.file("", 0);
    progress.message("0 files".into());
    // The progress follows the decrypted (compressed) stream: close enough to the file.
    let gz = flate2::read::GzDecoder::new(Counting {
        inner: reader,
        progress: fp,
        n: 0,
    });
    let mut archive = tar::Archive::new(gz);
    let mut restored = 0u64;
    let entries = archive.entries().context("reading the archive")?;
    for entry in entries {
        let entry = entry.context(ARCHIVE_BROKEN)?;
        let raw = entry.path().context("reading the archive")?.into_owned();
        let rel = match safe_rel(&raw) {
            Ok(Some(rel)) => rel,
            Ok(None) => continue,
            Err(why) => {
                report(
                    format!("refusing the entry '{}': {why}", crate::walk::shown(&raw)),
                    false,
                );
                continue;
            }
        };
        let path = location::join(&root.path, &rel);
        // Errors name the remote, as the user wrote the destination.
        let shown = format!("{}:{path}", root.remote);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                handle
                    .block_on(client.mkdir(&path))
                    .with_context(|| format!("creating {shown}"))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                match restore_file(handle, client, entry, (&path, &shown), size, force) {
                    Ok(()) => {
                        restored += 1;
                        progress.message(format!("{restored} files"));
                        if verbose {
                            progress.verbose_line(&format!("restored {rel}"));
                        }
                    }
                    Err(e) => {
                        let conflict = matches!(
                            exit::sdk_error(&e),
                            Some(efs_client::Error::PreconditionFailed)
                        );
                        if conflict {
                            report(format!("{shown} exists (use --force to replace it)"), true);
                        } else if exit::sdk_error(&e).is_some() || e.is::<Mismatch>() {
                            report(format!("{e:#}"), false);
                        } else {
                            // The archive itself is unreadable: stop.
                            return Err(e);
                        }
                    }
                }
            }
            other => report(
                format!("skipping '{rel}': a {other:?} entry is not a file or a directory"),
                false,
            ),
        }
    }
    // Read to the end, so that the age stream's final tag is checked.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).context(ARCHIVE_BROKEN)?;
    Ok((restored, problems))
}

/// A restored file that did not read back as it was written.
#[derive(Debug)]
struct Mismatch(String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Mismatch {}

/// Uploads one entry, hashing it on the way, then downloads it again and compares.
fn restore_file<R: Read>(
    handle: &Handle,
    client: &Client,
    entry: tar::Entry<'_, R>,
    (path, shown): (&str, &str),
    size: u64,
    force: bool,
) -> Result<()> {
    let (reader, writer) = tokio::io::duplex(PIPE);
    let opts = PutOptions {
        create_only: !force,
        ..PutOptions::default()
    };
    let task = {
        let client = client.clone();
        let path = path.to_owned();
        handle.spawn(async move { client.upload(&path, reader, Some(size), opts).await })
    };
    let mut src = Hashing {
        inner: entry,
        hash: Sha256::new(),
        len: 0,
        read_failed: false,
    };
    let mut dst = SyncIoBridge::new_with_handle(writer, handle.clone());
    let copied = std::io::copy(&mut src, &mut dst).and_then(|_| dst.shutdown());
    drop(dst);
    let uploaded = handle.block_on(task).context("an upload stopped")?;
    if let Err(e) = copied {
        // The archive failed (the upload then failed for want of its bytes: not stored), or
        // the upload stopped reading (its error says why).
        if src.read_failed {
            return Err(e).with_context(|| format!("{ARCHIVE_BROKEN}; {shown} was not stored"));
        }
        uploaded.with_context(|| format!("uploading {shown}"))?;
        return Err(e).context("reading the archive");
    }
    let stored = uploaded.with_context(|| format!("uploading {shown}"))?;
    let want = src.hash.finalize();
    let mut sink = HashSink {
        hash: Sha256::new(),
        len: 0,
    };
    if size > 0 {
        handle
            .block_on(client.download(path, &mut sink, None, None))
            .with_context(|| format!("reading back {shown}"))?;
    }
    let got = sink.hash.finalize();
    if src.len != size || stored.size != size || sink.len != size || got != want {
        return Err(Mismatch(format!(
            "{shown} does not verify: {size} bytes in the archive, {} read, {} stored, {} read back{}",
            src.len,
            stored.size,
            sink.len,
            if got == want { "" } else { ", contents differ" }
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unsafe_entries() {
        assert_eq!(safe_rel(Path::new("a/b.txt")), Ok(Some("a/b.txt".into())));
        assert_eq!(safe_rel(Path::new("./a/./b")), Ok(Some("a/b".into())));
        assert_eq!(safe_rel(Path::new("./")), Ok(None));
        assert!(safe_rel(Path::new("../evil")).is_err());
        assert!(safe_rel(Path::new("a/../../evil")).is_err());
        assert!(safe_rel(Path::new("/etc/passwd")).is_err());
        // Names EFS cannot hold are refused before an upload begins, and shown escaped (a
        // line break was printed raw by the server's refusal; black-box review).
        let e = safe_rel(Path::new("a/nl\nname.txt")).unwrap_err();
        assert!(e.contains("control characters"), "{e}");
        assert!(safe_rel(Path::new("back\\slash")).is_err());
        assert_eq!(
            crate::walk::shown(Path::new("a/nl\nname.txt")),
            "a/nl\\nname.txt"
        );
    }

    fn tar_args(recipients: &[&str], files: &[&Path]) -> TarArgs {
        TarArgs {
            source: "drive:/x".into(),
            output: PathBuf::from("out.age"),
            passphrase_file: None,
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            recipients_files: files.iter().map(|f| f.to_path_buf()).collect(),
            force: false,
        }
    }

    #[test]
    fn a_secret_key_among_recipients_is_refused_unquoted() {
        const SECRET: &str =
            "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";
        const PUBLIC: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("recipients.txt");
        std::fs::write(&file, format!("# team\n{PUBLIC}\n\n{SECRET}\n")).unwrap();
        let e = read_recipients(&tar_args(&[], &[&file])).unwrap_err();
        let shown = format!("{e:#} {:?}", exit::hint_of(&e));
        assert!(shown.contains("line 4 of"), "{shown}");
        assert!(shown.contains("secret key"), "{shown}");
        assert!(!shown.contains("GFPYYSJZ"), "{shown}");
        assert_eq!(exit::code_of(&e), exit::USAGE);
        // Lower case, and on the command line, too.
        let e = read_recipients(&tar_args(&[PUBLIC, &SECRET.to_lowercase()], &[])).unwrap_err();
        let shown = format!("{e:#}");
        assert!(
            shown.contains("-r value 2") && shown.contains("secret key"),
            "{shown}"
        );
        assert!(!shown.to_lowercase().contains("gfpyysjz"), "{shown}");
        // Anything else unparsable is named by its place, never quoted.
        std::fs::write(&file, format!("{PUBLIC}\nage1-almost-a-key\n")).unwrap();
        let e = read_recipients(&tar_args(&[], &[&file])).unwrap_err();
        let shown = format!("{e:#}");
        assert!(
            shown.contains("line 2 of") && !shown.contains("almost"),
            "{shown}"
        );
        // And good ones parse.
        std::fs::write(&file, format!("# team\n  {PUBLIC}  \n")).unwrap();
        assert_eq!(
            read_recipients(&tar_args(&[PUBLIC], &[&file]))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn short_bodies_are_errors() {
        let mut r = Exact {
            inner: &b"abc"[..],
            left: 5,
        };
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        let mut r = Exact {
            inner: &b"abcdef"[..],
            left: 3,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
    }
}
