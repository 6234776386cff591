//! The commands on remote paths that are one or two SDK calls each: ls, stat, cat, put, rm,
//! mv, mkdir, token.

use crate::exit::outln;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use efs_client::{Client, Entry, EntryType, PutOptions};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::exit::{self, fail, fail_hint, usage};
use crate::location::{self, RemotePath, parse_remote};
use crate::session::Session;
use crate::walk;

/// `NAME:/path`, or a usage error naming the command.
pub(crate) fn remote_arg(cmd: &str, arg: &str) -> Result<RemotePath> {
    parse_remote(arg)?.ok_or_else(|| {
        fail_hint(
            exit::USAGE,
            format!("efs {cmd} needs a remote path, not '{arg}'"),
            "write remote paths as NAME:/path (efs remote list shows the names)",
        )
    })
}

/// An entry as `ls --json` and `stat --json` print it.
#[derive(Serialize)]
pub(crate) struct JsonEntry<'a> {
    path: String,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    size: u64,
    modified: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
}

impl<'a> JsonEntry<'a> {
    pub fn new(path: String, e: &'a Entry) -> JsonEntry<'a> {
        JsonEntry {
            path,
            name: &e.name,
            kind: kind_name(e),
            size: e.size,
            modified: &e.modified,
            etag: e.etag.as_deref(),
            content_type: e.content_type.as_deref(),
        }
    }
}

fn kind_name(e: &Entry) -> &'static str {
    if e.kind == EntryType::Dir {
        "dir"
    } else {
        "file"
    }
}

/// One `ls -l` line: type, size, time, name (directories end with `/`).
pub(crate) fn long_line(e: &Entry, shown: &str) -> String {
    if e.kind == EntryType::Dir {
        format!("d {:>12}  {:<24}  {shown}/", "-", e.modified)
    } else {
        format!("- {:>12}  {:<24}  {shown}", e.size, e.modified)
    }
}

/// The entries of a directory, sorted by name; for a file, the file itself.
/// The entries of directory `path`, or the file itself. `remote`: the remote's name, which
/// errors name with the path as the user wrote it (`drive:/nope`); none in the shell, which
/// is on one remote.
pub(crate) async fn list_or_file(
    client: &Client,
    remote: Option<&str>,
    path: &str,
) -> Result<(bool, Vec<Entry>)> {
    let shown = match remote {
        Some(r) => format!("{r}:{path}"),
        None => path.to_owned(),
    };
    if path != "/" {
        let e = client
            .stat(path)
            .await
            .with_context(|| format!("reading {shown}"))?;
        if e.kind != EntryType::Dir {
            return Ok((false, vec![e]));
        }
    }
    let mut entries = client
        .list(path)
        .await
        .with_context(|| format!("listing {shown}"))?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((true, entries))
}

pub(crate) async fn ls(
    session: &Session,
    paths: &[String],
    long: bool,
    recursive: bool,
    json: bool,
) -> Result<()> {
    let mut all_json = Vec::new();
    let several = paths.len() > 1;
    let mut errors = Vec::new();
    let mut shown = 0;
    for arg in paths {
        let listed = ls_one(
            session,
            arg,
            several,
            shown,
            (long, recursive, json),
            &mut all_json,
        )
        .await;
        match listed {
            Ok(()) => shown += 1,
            Err(e) => errors.push(e),
        }
    }
    if json && (errors.is_empty() || !all_json.is_empty()) {
        outln!("{}", serde_json::to_string_pretty(&all_json)?);
    }
    each_path(errors, paths.len())
}

/// One path of [`ls`]; `shown`: how many were listed before (a blank line between
/// directories).
async fn ls_one(
    session: &Session,
    arg: &str,
    several: bool,
    shown: usize,
    (long, recursive, json): (bool, bool, bool),
    all_json: &mut Vec<serde_json::Value>,
) -> Result<()> {
    {
        let rp = remote_arg("ls", arg)?;
        let client = session.client(&rp.remote).await?;
        let (is_dir, entries) = list_or_file(&client, Some(&rp.remote), &rp.path).await?;
        if !is_dir && rp.dir_hint {
            return Err(rp.file_named_as_directory());
        }
        if !is_dir {
            let e = &entries[0];
            if json {
                all_json.push(serde_json::to_value(JsonEntry::new(rp.path.clone(), e))?);
            } else if long {
                outln!("{}", long_line(e, &e.name));
            } else {
                outln!("{}", e.name);
            }
            return Ok(());
        }
        if several && !json {
            if shown > 0 {
                outln!();
            }
            outln!("{}:", rp.display());
        }
        if recursive {
            // One walk, then the tree in order: each entry shown by its path below the
            // listed directory.
            let mut tree: Vec<_> = walk::walk_remote(&client, &rp.remote, &rp.path, false)
                .await?
                .into_iter()
                .collect();
            // Depth first, as find(1) lists: compare path by path component.
            tree.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
            for (rel, meta) in tree {
                let path = location::join(&rp.path, &rel);
                let e = Entry {
                    name: location::basename(&path).to_owned(),
                    kind: if meta.kind == walk::Kind::Dir {
                        EntryType::Dir
                    } else {
                        EntryType::File
                    },
                    size: meta.size,
                    modified: meta.modified.map(format_time).unwrap_or_default(),
                    etag: meta.etag.clone(),
                    content_type: meta.content_type.clone(),
                };
                print_entry(&e, &rel, &path, long, json, all_json)?;
            }
        } else {
            for e in &entries {
                let path = location::join(&rp.path, &e.name);
                print_entry(e, &e.name, &path, long, json, all_json)?;
            }
        }
    }
    Ok(())
}

fn print_entry(
    e: &Entry,
    shown: &str,
    path: &str,
    long: bool,
    json: bool,
    all_json: &mut Vec<serde_json::Value>,
) -> Result<()> {
    if json {
        all_json.push(serde_json::to_value(JsonEntry::new(path.to_owned(), e))?);
    } else if long {
        outln!("{}", long_line(e, shown));
    } else if e.kind == EntryType::Dir {
        outln!("{shown}/");
    } else {
        outln!("{shown}");
    }
    Ok(())
}

/// RFC 3339 in UTC with milliseconds, as the server writes times.
fn format_time(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The end of a command that goes on after a path failed, as coreutils do: nothing failed,
/// Ok; one failure, that error; several, each printed and a last one counting them, with the
/// first one's exit code. A hint is printed once, not once per path (`rm -r` of ten paths on
/// a read-only grant): when every failure has the same one, it ends the output, after the
/// count; otherwise each shows after the first failure that has it.
fn each_path(mut errors: Vec<anyhow::Error>, total: usize) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            let hints: Vec<Option<String>> = errors.iter().map(exit::hint_of).collect();
            let one_hint = hints[0].is_some() && hints.iter().all(|h| *h == hints[0]);
            let mut shown: Vec<&str> = Vec::new();
            for (e, hint) in errors.iter().zip(&hints) {
                eprintln!("efs: error: {e:#}");
                if let Some(hint) = hint
                    && !one_hint
                    && !shown.contains(&hint.as_str())
                {
                    eprintln!("efs: hint: {hint}");
                    shown.push(hint);
                }
            }
            let code = exit::code_of(&errors[0]);
            let summary = format!("{n} of {total} paths failed");
            Err(match &hints[0] {
                Some(h) if one_hint => fail_hint(code, summary, h),
                _ => fail(code, summary),
            })
        }
    }
}

pub(crate) async fn stat(session: &Session, paths: &[String], json: bool) -> Result<()> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut shown = 0;
    for arg in paths {
        let rp = match remote_arg("stat", arg) {
            Ok(rp) => rp,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let client = session.client(&rp.remote).await?;
        let e = if rp.path == "/" {
            Entry {
                name: String::new(),
                kind: EntryType::Dir,
                size: 0,
                modified: String::new(),
                etag: None,
                content_type: None,
            }
        } else {
            match client
                .stat(&rp.path)
                .await
                .with_context(|| format!("reading {}", rp.display()))
            {
                Ok(e) if rp.dir_hint && e.kind != EntryType::Dir => {
                    errors.push(rp.file_named_as_directory());
                    continue;
                }
                Ok(e) => e,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
        };
        if json {
            out.push(serde_json::to_value(JsonEntry::new(rp.path.clone(), &e))?);
            continue;
        }
        if shown > 0 {
            outln!();
        }
        shown += 1;
        outln!("path:          {}", rp.display());
        outln!("type:          {}", kind_name(&e));
        if e.kind != EntryType::Dir {
            outln!("size:          {}", e.size);
        }
        if !e.modified.is_empty() {
            outln!("modified:      {}", e.modified);
        }
        if let Some(etag) = &e.etag {
            outln!("etag:          {etag}");
        }
        if let Some(ct) = &e.content_type {
            outln!("content-type:  {ct}");
        }
    }
    if json && (!out.is_empty() || errors.is_empty()) {
        let v = if paths.len() == 1 {
            out.remove(0)
        } else {
            serde_json::Value::Array(out)
        };
        outln!("{}", serde_json::to_string_pretty(&v)?);
    }
    each_path(errors, paths.len())
}

pub(crate) async fn cat(session: &Session, paths: &[String]) -> Result<()> {
    let mut out = PipeWriter {
        inner: tokio::io::stdout(),
        broken: false,
    };
    let mut errors = Vec::new();
    for arg in paths {
        let rp = match remote_arg("cat", arg) {
            Ok(rp) => rp,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let client = session.client(&rp.remote).await?;
        // `NAME:/a.txt/` names a directory: a file there is not read through it. (A directory
        // or nothing there is told by the download, as without the '/'.)
        if rp.dir_hint && matches!(client.stat(&rp.path).await, Ok(e) if e.kind != EntryType::Dir) {
            errors.push(rp.file_named_as_directory());
            continue;
        }
        let r = client.download(&rp.path, &mut out, None, None).await;
        if out.broken {
            // The reader closed the pipe (`| head`): what it wanted, it has.
            return Ok(());
        }
        match r {
            Ok(_) => {}
            // The server's "this is a directory" conflict: a usage error here (exit 2).
            Err(efs_client::Error::Conflict(m)) if m.contains("directory") => {
                errors.push(fail_hint(
                    exit::USAGE,
                    format!("{} is a directory: efs cat reads files", rp.display()),
                    "efs ls lists a directory; efs cp -r copies one",
                ));
            }
            Err(e) => {
                errors.push(anyhow::Error::from(e).context(format!("reading {}", rp.display())))
            }
        }
        if let Err(e) = out.flush().await {
            if out.broken {
                return Ok(());
            }
            return Err(e).context("writing to stdout");
        }
    }
    each_path(errors, paths.len())
}

/// stdout, remembering whether the reader went away, however the SDK reports the failed
/// write.
struct PipeWriter {
    inner: tokio::io::Stdout,
    broken: bool,
}

impl PipeWriter {
    fn note<T>(&mut self, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            self.broken = true;
        }
        r
    }
}

impl AsyncWrite for PipeWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(r)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(r)
    }
}

/// The largest stdin body `efs put` holds in memory, so that it can be sent again; a longer
/// one streams and is sent once.
const PUT_REPLAYABLE_MAX: u64 = 4 << 20;

pub(crate) async fn put(
    session: &Session,
    arg: &str,
    content_type: Option<String>,
    if_match: Option<String>,
    create_only: bool,
    json: bool,
) -> Result<()> {
    let rp = remote_arg("put", arg)?;
    if rp.dir_hint || rp.path == "/" {
        return Err(usage(format!(
            "{arg} names a directory: give the file's name (NAME:/dir/file)"
        )));
    }
    let client = session.client(&rp.remote).await?;
    let opts = PutOptions {
        content_type: content_type.or_else(|| {
            crate::copy::guess_content_type(std::path::Path::new(&rp.path)).map(str::to_owned)
        }),
        if_match: if_match.map(|t| quote_etag(&t)),
        create_only,
        ..PutOptions::default()
    };
    // A short body is read whole first, so that it can be sent again after a transient
    // failure or a refused token (a revoke or a grant change ends every token); a longer one
    // streams, with what was read already in front, and is sent once.
    let mut stdin = tokio::io::stdin();
    let mut head = Vec::new();
    (&mut stdin)
        .take(PUT_REPLAYABLE_MAX + 1)
        .read_to_end(&mut head)
        .await
        .context("reading standard input")?;
    let stored = if head.len() as u64 <= PUT_REPLAYABLE_MAX {
        client.put_bytes(&rp.path, head.into(), opts).await
    } else {
        let body = std::io::Cursor::new(head).chain(stdin);
        client.upload(&rp.path, body, None, opts).await
    };
    let e = match stored {
        Err(efs_client::Error::PreconditionFailed) if create_only => {
            return Err(fail_hint(
                exit::CONFLICT,
                format!(
                    "writing {}: {} exists (--no-clobber)",
                    rp.display(),
                    rp.display()
                ),
                "leave out --no-clobber to replace it, or choose another name",
            ));
        }
        Err(efs_client::Error::TokenRefusedNotResent) => {
            return Err(fail_hint(
                exit::AUTH,
                format!(
                    "writing {}: the server refused the token (revoked, grants changed or \
                     expired); a new login succeeded, but the body from standard input \
                     (over {} MiB, so streamed) could not be sent twice",
                    rp.display(),
                    PUT_REPLAYABLE_MAX >> 20
                ),
                "run the command again: the new login is in place",
            ));
        }
        Err(efs_client::Error::Transport(m)) if !exit::is_connect_failure(&m) => {
            // The request went out (its body, from stdin, cannot be sent again): whether the
            // server stored it before the connection broke is unknown, and the URL is fine.
            return Err(fail_hint(
                exit::NETWORK,
                format!(
                    "writing {}: the connection to {} was lost while sending or before the answer ({}): the file may or may not have been stored",
                    rp.display(),
                    client.base_url(),
                    exit::without_docs_links(&m)
                ),
                format!(
                    "look at the file (efs stat {}) before sending it again",
                    crate::session::shell_quoted(&rp.display().to_string())
                ),
            ));
        }
        r => r.with_context(|| format!("writing {}", rp.display()))?,
    };
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&JsonEntry::new(rp.path.clone(), &e))?
        );
    }
    Ok(())
}

/// ETags are quoted strings; accept one typed without its quotes.
fn quote_etag(t: &str) -> String {
    if t.starts_with('"') || t.starts_with("W/") || t == "*" {
        t.to_owned()
    } else {
        format!("\"{t}\"")
    }
}

/// With `verbose`, each path removed is named on stdout, as GNU `rm -v` and `efs cp -v` name
/// what they delete (`deleted NAME:/path`); a directory goes in one request (with `-r`, with
/// what is in it), so it is named once, and said to have had content only when it had.
pub(crate) async fn rm(
    session: &Session,
    paths: &[String],
    recursive: bool,
    force: bool,
    verbose: bool,
) -> Result<()> {
    // Every argument is checked before anything is removed: a usage error (a path that does
    // not parse, the root) refuses the whole command, exit 2, rather than leaving the paths
    // before it removed under an exit code that says "nothing was done".
    let mut parsed = Vec::new();
    let mut usage = Vec::new();
    for arg in paths {
        match remote_arg("rm", arg) {
            // Refused as a usage error: no grant makes it possible (the server keeps its
            // root), and `rm -r drive:/` is most likely a slip.
            Ok(rp) if rp.path == "/" => usage.push(fail_hint(
                exit::USAGE,
                format!("refusing to remove the root directory {}", rp.display()),
                format!(
                    "remove what is in it, path by path (efs ls {} lists it)",
                    rp.display()
                ),
            )),
            Ok(rp) => parsed.push(rp),
            Err(e) => usage.push(e),
        }
    }
    if !usage.is_empty() {
        if paths.len() > usage.len() {
            eprintln!("efs: nothing was removed: every path is checked first");
        }
        return each_path(usage, paths.len());
    }
    // Every remote named too (an unknown one, a login or connection that fails), before the
    // first path goes: the clients are kept by the session for the loop below.
    let mut seen = Vec::new();
    for rp in &parsed {
        if !seen.contains(&rp.remote) {
            if let Err(e) = session.client(&rp.remote).await {
                if paths.len() > 1 {
                    eprintln!("efs: nothing was removed: every path is checked first");
                }
                return Err(e);
            }
            seen.push(rp.remote.clone());
        }
    }
    let mut errors = Vec::new();
    for rp in parsed {
        let client = session.client(&rp.remote).await?;
        // `NAME:/a/` names a directory, as for `rm a/` (the server refuses a file there).
        let target = if rp.dir_hint {
            format!("{}/", rp.path)
        } else {
            rp.path.clone()
        };
        // The answer to a delete does not say what was there: asked first, only for -v.
        let was_dir = verbose
            && matches!(walk::stat_remote(&client, &rp.remote, &rp.path).await, Ok(Some(m)) if m.kind == walk::Kind::Dir);
        // With -r and -v, a directory is first removed as an empty one: whether it had
        // content is what the line says, and only a refusal ("not empty") tells.
        let empty_first = was_dir && recursive;
        let mut r = client.delete(&target, recursive && !empty_first).await;
        let mut had_content = false;
        if empty_first
            && matches!(&r, Err(efs_client::Error::Conflict(m)) if m.contains("not empty"))
        {
            had_content = true;
            r = client.delete(&target, true).await;
        }
        match r {
            Ok(()) if verbose => exit::reportln!(
                "deleted {}{}",
                rp.display(),
                match (was_dir, had_content) {
                    (false, _) => "",
                    (true, false) => "/",
                    (true, true) => "/ (and everything in it)",
                }
            ),
            Ok(()) => {}
            Err(efs_client::Error::NotFound) if force => {}
            Err(efs_client::Error::Conflict(m)) if !recursive && m.contains("not empty") => {
                errors.push(fail_hint(
                    exit::CONFLICT,
                    format!(
                        "cannot remove {}: a directory that is not empty",
                        rp.display()
                    ),
                    "use rm -r to remove it with everything in it",
                ));
            }
            Err(e) => {
                errors.push(anyhow::Error::from(e).context(format!("removing {}", rp.display())));
            }
        }
    }
    each_path(errors, paths.len())
}

pub(crate) async fn mv(session: &Session, paths: &[String], force: bool) -> Result<()> {
    let (dst_arg, srcs) = paths.split_last().expect("clap requires 2 paths");
    let dst = remote_arg("mv", dst_arg)?;
    let client = session.client(&dst.remote).await?;
    let dst_meta = walk::stat_remote(&client, &dst.remote, &dst.path).await?;
    let dst_is_dir = matches!(&dst_meta, Some(m) if m.kind == walk::Kind::Dir);
    let into = dst_is_dir || dst.dir_hint || srcs.len() > 1;
    if into && !dst_is_dir && dst_meta.is_some() {
        return Err(fail(
            exit::CONFLICT,
            format!("{} is a file, not a directory", dst.display()),
        ));
    }
    // Several sources, or a file to a destination written as a directory (`…/`), go into an
    // existing directory, as GNU mv's do: one that does not exist is not made (a typo in the
    // last argument quietly made a new directory and moved everything into it). One directory
    // to a new name written with a `/` is renamed, as GNU mv renames it.
    let renaming_a_dir = srcs.len() == 1
        && dst.dir_hint
        && dst_meta.is_none()
        && {
            let src = remote_arg("mv", &srcs[0])?;
            matches!(walk::stat_remote(&client, &src.remote, &src.path).await?, Some(m) if m.kind == walk::Kind::Dir)
        };
    let into = into && !renaming_a_dir;
    if into && dst_meta.is_none() {
        return Err(fail_hint(
            exit::NOT_FOUND,
            format!("{} is not a directory: it does not exist", dst.display()),
            "moving several sources, or into a path ending in /, needs an existing directory: efs mkdir it first",
        ));
    }
    for arg in srcs {
        let src = remote_arg("mv", arg)?;
        if src.remote != dst.remote {
            return Err(fail_hint(
                exit::USAGE,
                format!("{arg} and {dst_arg} are on different remotes"),
                "mv works within one remote; copy with efs cp, then efs rm the source",
            ));
        }
        if src.path == "/" {
            return Err(usage("the root directory cannot be moved"));
        }
        if src.dir_hint
            && matches!(walk::stat_remote(&client, &src.remote, &src.path).await?, Some(m) if m.kind == walk::Kind::File)
        {
            return Err(src.file_named_as_directory());
        }
        let to = if into {
            location::join(&dst.path, location::basename(&src.path))
        } else {
            dst.path.clone()
        };
        // The server refuses it as a conflict, whose hint is about a file where a directory
        // is needed: said as GNU mv says it, and as `efs cp` refuses a copy into itself.
        if location::is_below(&to, &src.path) {
            return Err(usage(format!(
                "cannot move {} into itself ({}:{to})",
                src.display(),
                dst.remote
            )));
        }
        match client.rename(&src.path, &to, force).await {
            Ok(_) => {}
            Err(efs_client::Error::Conflict(m)) if !force && m.contains("destination exists") => {
                return Err(fail_hint(
                    exit::CONFLICT,
                    format!(
                        "moving {} to {}:{to}: {}:{to} exists",
                        src.display(),
                        dst.remote,
                        dst.remote
                    ),
                    "efs mv -f replaces a file there",
                ));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("moving {} to {}:{to}", src.display(), dst.remote));
            }
        }
    }
    Ok(())
}

pub(crate) async fn mkdir(session: &Session, paths: &[String], parents: bool) -> Result<()> {
    let mut errors = Vec::new();
    for arg in paths {
        if let Err(e) = mkdir_one(session, arg, parents).await {
            errors.push(e);
        }
    }
    each_path(errors, paths.len())
}

async fn mkdir_one(session: &Session, arg: &str, parents: bool) -> Result<()> {
    {
        let rp = remote_arg("mkdir", arg)?;
        let client = session.client(&rp.remote).await?;
        let existing = walk::stat_remote_for(&client, &rp.remote, &rp.path, "creating").await?;
        if matches!(&existing, Some(m) if m.kind == walk::Kind::File) {
            return Err(fail_hint(
                exit::CONFLICT,
                format!("{} is a file: no directory can be made there", rp.display()),
                "remove or move the file first (efs rm, efs mv), or choose another name",
            ));
        }
        if !parents {
            // The server creates parents as needed; plain mkdir keeps its usual meaning.
            if existing.is_some() {
                return Err(fail_hint(
                    exit::CONFLICT,
                    format!("{} exists already", rp.display()),
                    "mkdir -p accepts an existing directory",
                ));
            }
            let parent = location::parent(&rp.path);
            match walk::stat_remote(&client, &rp.remote, &parent).await? {
                Some(m) if m.kind == walk::Kind::Dir => {}
                Some(_) => {
                    return Err(fail(
                        exit::CONFLICT,
                        format!("{}:{parent} is a file", rp.remote),
                    ));
                }
                None => {
                    return Err(fail_hint(
                        exit::NOT_FOUND,
                        format!("{}:{parent}: no such directory", rp.remote),
                        "mkdir -p creates the parents too",
                    ));
                }
            }
        } else if existing.is_some() {
            return Ok(());
        }
        client
            .mkdir(&rp.path)
            .await
            .with_context(|| format!("creating {}", rp.display()))?;
    }
    Ok(())
}

pub(crate) async fn token(session: &Session, remote: &str, json: bool) -> Result<()> {
    let name = remote.strip_suffix(':').unwrap_or(remote);
    let client = session.client(name).await?;
    // A cached token the server no longer takes (revoked, its grant changed) would be
    // handed to curl: one request checks it, and a refusal logs in again (and caches the
    // new token) before it is printed.
    client
        .stat("/")
        .await
        .with_context(|| format!("logging in to remote '{name}'"))?;
    let t = client
        .token()
        .await
        .with_context(|| format!("logging in to remote '{name}'"))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        outln!("{}", t.token);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_quoted_once() {
        assert_eq!(quote_etag("abc"), "\"abc\"");
        assert_eq!(quote_etag("\"abc\""), "\"abc\"");
        assert_eq!(quote_etag("*"), "*");
    }

    #[test]
    fn long_lines_align() {
        let f = Entry {
            name: "a.pdf".into(),
            kind: EntryType::File,
            size: 12,
            modified: "2026-11-27T10:00:00.000Z".into(),
            etag: None,
            content_type: None,
        };
        assert_eq!(
            long_line(&f, "a.pdf"),
            "-           12  2026-11-27T10:00:00.000Z  a.pdf"
        );
        let d = Entry {
            kind: EntryType::Dir,
            name: "docs".into(),
            ..f
        };
        assert!(long_line(&d, "docs").ends_with("  docs/"));
    }
}
