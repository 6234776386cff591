//! `efs cp`: copies between local paths and remotes in any direction but local → local,
//! several files at a time, and `--sync`, which copies only what changed and deletes what the
//! source lacks.
//!
//! A copy is planned first (what to create, copy and delete), then carried out: files that
//! make room for a directory of the source are moved aside ([`move_aside`]), directories are
//! made, the copies run in parallel, files replacing a directory last
//! ([`copy_replacing_dir`]: only once the file is complete beside it), and last the
//! deletions: the files moved aside and the extras. Nothing is deleted once something failed
//! (see [`hold_replacements`]): a file moved aside is then kept, named in an error.
//! `--dry-run` prints the plan.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use efs_client::client::part_name;
use efs_client::{Client, PutOptions};
use futures_util::StreamExt;
use futures_util::stream;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::cli::CpArgs;
use crate::exit::{self, fail, fail_hint, reportln, usage};
use crate::location::{self, Location};
use crate::progress::{FileProgress, Progress};
use crate::session::Session;
use crate::walk::{self, Kind, Meta, Tree};

/// One end of a copy: a local path or a path on a remote.
#[derive(Clone)]
pub(crate) enum Endpoint {
    /// A local path, and how many of its last components the copy added below the path the
    /// user named (0: the named path itself). Those are entered without following links when
    /// written or deleted (see [`enter_dirs`]); the named part may be a link.
    Local(PathBuf, usize),
    Remote {
        client: Client,
        remote: String,
        path: String,
    },
}

/// Whether two remotes name one filesystem: the same remote, or two names for one server
/// URL whose logins are to the same filesystem (both have logged in by the time a copy
/// compares them).
async fn same_filesystem(a_name: &str, a: &Client, b_name: &str, b: &Client) -> Result<bool> {
    if a_name == b_name {
        return Ok(true);
    }
    if !a.base_url().eq_ignore_ascii_case(b.base_url()) {
        return Ok(false);
    }
    Ok(a.token().await?.fs == b.token().await?.fs)
}

impl Endpoint {
    async fn open(session: &Session, loc: &Location) -> Result<Endpoint> {
        Ok(match loc {
            Location::Local(p) => Endpoint::Local(p.clone(), 0),
            Location::Remote(r) => Endpoint::Remote {
                client: session.client(&r.remote).await?,
                remote: r.remote.clone(),
                path: r.path.clone(),
            },
        })
    }

    fn is_local(&self) -> bool {
        matches!(self, Endpoint::Local(..))
    }

    /// The path below this one (`rel` is `/`-separated, maybe from a server's listing). A
    /// local one must stay below: a `rel` with `..`, `.`, empty or absolute segments is
    /// refused before anything is written there.
    fn child(&self, rel: &str) -> Result<Endpoint> {
        Ok(match self {
            Endpoint::Local(p, below) => Endpoint::Local(
                location::local_child(p, rel).ok_or_else(|| {
                    fail(
                        exit::ERROR,
                        format!(
                            "refusing the name {:?} below {}: it is not a plain relative path",
                            rel.chars().take(80).collect::<String>(),
                            p.display()
                        ),
                    )
                })?,
                below + rel.split('/').count(),
            ),
            Endpoint::Remote {
                client,
                remote,
                path,
            } => Endpoint::Remote {
                client: client.clone(),
                remote: remote.clone(),
                path: location::join(path, rel),
            },
        })
    }

    /// The last component, for "copy into a directory". `None` for a root (its contents
    /// are copied).
    fn name(&self) -> Option<String> {
        match self {
            Endpoint::Local(p, _) => {
                let name = match p.file_name() {
                    Some(n) => Some(n.to_owned()),
                    // `.`, `..`, `dir/..`: the name of the directory they resolve to.
                    None => std::fs::canonicalize(p)
                        .ok()
                        .and_then(|c| c.file_name().map(|n| n.to_owned())),
                };
                name.map(|n| n.to_string_lossy().into_owned())
            }
            Endpoint::Remote { path, .. } => {
                Some(location::basename(path).to_owned()).filter(|n| !n.is_empty())
            }
        }
    }

    fn display(&self) -> String {
        match self {
            Endpoint::Local(p, _) => p.display().to_string(),
            Endpoint::Remote { remote, path, .. } => format!("{remote}:{path}"),
        }
    }

    async fn stat(&self) -> Result<Option<Meta>> {
        match self {
            Endpoint::Local(p, _) => walk::stat_local(p),
            Endpoint::Remote {
                client,
                remote,
                path,
            } => walk::stat_remote(client, remote, path).await,
        }
    }

    /// The tree below this directory, and what was left out of it (see [`walk::Walked`]; a
    /// remote walk leaves out only the temporary names of an unfinished copy, with a warning).
    /// `sync`: for a sync, whose messages say what it keeps.
    async fn walk(&self, sync: bool) -> Result<walk::Walked> {
        match self {
            Endpoint::Local(p, _) => walk::walk_local(p.clone(), sync).await,
            Endpoint::Remote {
                client,
                remote,
                path,
            } => Ok(walk::Walked {
                tree: walk::walk_remote(client, remote, path, true).await?,
                ..walk::Walked::default()
            }),
        }
    }
}

/// The direction of a copy decides how modification times compare (see [`needs_copy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Upload,
    Download,
    RemoteToRemote,
}

fn direction(src: &Endpoint, dst: &Endpoint) -> Direction {
    match (src.is_local(), dst.is_local()) {
        (true, _) => Direction::Upload,
        (false, true) => Direction::Download,
        (false, false) => Direction::RemoteToRemote,
    }
}

/// Whether `--sync` copies a file that exists at the destination (see `efs cp --help`):
/// when the sizes differ; for a download, when the local modification time (set to the
/// remote one by every download) is not the source's; otherwise when the source was
/// modified after the destination was written. Times count in whole seconds, because HTTP
/// dates and some filesystems have no more.
fn needs_copy(src: &Meta, dst: &Meta, dir: Direction) -> bool {
    if src.size != dst.size {
        return true;
    }
    match (src.modified_secs(), dst.modified_secs()) {
        (Some(s), Some(d)) => match dir {
            Direction::Download => s != d,
            Direction::Upload | Direction::RemoteToRemote => s > d,
        },
        _ => true,
    }
}

struct CopyJob {
    src: Endpoint,
    dst: Endpoint,
    meta: Meta,
    /// A directory is at `dst` (`--sync` replaces it): it is removed only once the file is
    /// complete beside it, right before it takes its place (see [`copy_replacing_dir`]).
    replaces_dir: bool,
}

/// What a copy will do, in the order it does it.
#[derive(Default)]
struct Plan {
    /// Destination files where the source has a directory (`--sync`): deleted right before
    /// the directories are made. (A directory where the source has a file is replaced by its
    /// copy job: [`CopyJob::replaces_dir`].)
    make_room: Vec<Endpoint>,
    mkdirs: Vec<Endpoint>,
    copies: Vec<CopyJob>,
    /// Destination entries the source lacks (`--sync` without `--no-delete`).
    deletes: Vec<(Endpoint, Kind)>,
    unchanged: u64,
    /// Destination entries kept although the source has none of their name, because the
    /// source's entry of that name was skipped (see [`walk::Walked::skipped`]).
    kept: u64,
    /// Source entries that cannot be copied, found while planning.
    failed: Vec<anyhow::Error>,
    /// Sources planned (the others are missing, could not be read, or were refused before
    /// anything was planned: a destination of the wrong kind, a copy onto itself): a sync
    /// (or a dry run) of which nothing was planned prints only its errors, no summary that
    /// would look like a success.
    sources_found: usize,
}

struct Opts {
    recursive: bool,
    sync: bool,
    delete: bool,
}

pub(crate) async fn run(session: &Session, args: CpArgs, quiet: bool, verbose: bool) -> Result<()> {
    let (dst_arg, src_args) = args.paths.split_last().expect("clap requires 2 paths");
    let dst_loc = Location::parse(dst_arg)?;
    let src_locs = src_args
        .iter()
        .map(|s| Location::parse(s))
        .collect::<Result<Vec<Location>>>()?;
    if args.sync && src_locs.len() != 1 {
        return Err(usage(
            "--sync takes one source: efs cp --sync SRC DST makes DST a mirror of SRC",
        ));
    }
    for (arg, loc) in src_args.iter().zip(&src_locs) {
        if matches!((loc, &dst_loc), (Location::Local(_), Location::Local(_))) {
            return Err(fail_hint(
                exit::USAGE,
                format!("'{arg}' and '{dst_arg}' are both local"),
                "one side must be a remote, written NAME:/path (efs remote list shows them); for local copies use cp",
            ));
        }
    }
    let opts = Opts {
        recursive: args.recursive || args.sync,
        sync: args.sync,
        delete: args.sync && !args.no_delete,
    };

    let dst = Endpoint::open(session, &dst_loc).await?;
    let dst_meta = dst.stat().await?;
    let dst_hint = match &dst_loc {
        Location::Local(p) => p.as_os_str().to_string_lossy().ends_with('/'),
        Location::Remote(r) => r.dir_hint,
    };
    let dst_is_dir = matches!(&dst_meta, Some(m) if m.kind == Kind::Dir);
    if (src_locs.len() > 1 || dst_hint) && matches!(&dst_meta, Some(m) if m.kind == Kind::File) {
        return Err(fail(
            exit::CONFLICT,
            format!("{} is a file, not a directory", dst.display()),
        ));
    }
    let into_dir = dst_is_dir || dst_hint || src_locs.len() > 1;

    let mut plan = Plan::default();
    let mut errors: Vec<anyhow::Error> = Vec::new();
    for loc in &src_locs {
        let src = Endpoint::open(session, loc).await?;
        // `NAME:/a.txt/` names a directory: a file there is not copied through it.
        if let Location::Remote(r) = loc
            && r.dir_hint
            && matches!(src.stat().await, Ok(Some(m)) if m.kind == Kind::File)
        {
            errors.push(r.file_named_as_directory());
            continue;
        }
        if let Err(e) = plan_source(&mut plan, &opts, src, &dst, dst_meta.as_ref(), into_dir).await
        {
            errors.push(e);
        }
    }

    errors.append(&mut plan.failed);
    // Two sources landing on one destination (the same name in two directories, two trees
    // with a path in common): the later one is refused, as GNU cp does ("will not overwrite
    // just-created"), instead of both racing to it and one being lost without a word.
    let mut landed = std::collections::HashSet::new();
    let mut copies = Vec::with_capacity(plan.copies.len());
    for job in std::mem::take(&mut plan.copies) {
        let to = job.dst.display();
        if landed.insert(to.clone()) {
            copies.push(job);
        } else {
            errors.push(fail(
                exit::CONFLICT,
                format!(
                    "will not overwrite just-created {to} with {}",
                    job.src.display()
                ),
            ));
        }
    }
    plan.copies = copies;
    if !errors.is_empty() {
        hold_replacements(&mut plan, &mut errors);
    }
    if args.dry_run {
        if plan.sources_found > 0 || errors.is_empty() {
            print_plan(&plan);
        }
        return finish(errors, 0);
    }
    // What failed before anything was done (a missing source, an entry the walk could not
    // read, a conflict, a replacement held back) counts among the operations, beside those
    // planned.
    let total_ops = errors.len()
        + plan.make_room.len()
        + plan.mkdirs.len()
        + plan.copies.len()
        + plan.deletes.len();
    let bytes: u64 = plan.copies.iter().map(|j| j.meta.size).sum();
    let progress = Progress::new(quiet, plan.copies.len() as u64, bytes);
    let jobs = usize::from(args.jobs);

    // Only when nothing failed (see hold_replacements), and right before the directories
    // that take their place are made: moved aside, deleted once everything else succeeded.
    let mut deleted = 0;
    let mut asides = Vec::new();
    for e in std::mem::take(&mut plan.make_room) {
        match move_aside(&e).await {
            Ok(aside) => asides.push((e, aside)),
            Err(err) => errors.push(err),
        }
    }
    for dir in std::mem::take(&mut plan.mkdirs) {
        if let Err(e) = mkdir(&dir).await {
            errors.push(e);
        }
    }
    // Files replacing a directory go last, and only if nothing failed until then (a copy
    // running beside them included): the directory is the destination's only copy of what
    // it holds.
    let (replacing, copies): (Vec<CopyJob>, Vec<CopyJob>) = std::mem::take(&mut plan.copies)
        .into_iter()
        .partition(|j| j.replaces_dir);
    let copied = copies.len() + replacing.len();
    let (mut copied_bytes, mut copy_errors) = copy_all(copies, jobs, &progress, verbose).await;
    if errors.is_empty() && copy_errors.is_empty() {
        let n = replacing.len();
        let (b, errs) = copy_all(replacing, jobs, &progress, verbose).await;
        copied_bytes += b;
        deleted += n - errs.len();
        copy_errors.extend(errs);
    } else {
        copy_errors.extend(replacing.iter().map(held_replacement));
    }
    let copied_ok = copied - copy_errors.len();
    errors.extend(copy_errors);
    // After a failure the destination is behind the source: deleting there now could
    // remove the only copy of something the user moved, so wait for a clean run.
    if errors.is_empty() {
        let old = asides.into_iter().map(|(_, a)| (a, Kind::File)).collect();
        let (n, errs) = delete_all(old, jobs, &progress, verbose).await;
        deleted += n;
        errors.extend(errs);
    } else {
        errors.extend(asides.iter().map(|(e, aside)| {
            fail(
                exit::ERROR,
                format!(
                    "{}: the file there is kept as {} because something failed (rename it back, or run the sync again and delete it)",
                    e.display(),
                    aside.display()
                ),
            )
        }));
    }
    let deletes = std::mem::take(&mut plan.deletes);
    if !errors.is_empty() && !deletes.is_empty() {
        progress.println(&format!(
            "efs: not deleting {} extra entries at the destination because something failed",
            deletes.len()
        ));
    } else {
        let (n, errs) = delete_all(deletes, jobs, &progress, verbose).await;
        deleted += n;
        errors.extend(errs);
    }
    progress.finish();

    if opts.sync && !quiet && plan.sources_found > 0 {
        reportln!(
            "sync: {copied_ok} copied ({}), {deleted} deleted, {} unchanged{}",
            human_bytes(copied_bytes),
            plan.unchanged,
            kept_note(plan.kept)
        );
    } else if verbose {
        reportln!(
            "{} copied ({})",
            files(copied_ok as u64),
            human_bytes(copied_bytes)
        );
    }
    finish(errors, total_ops)
}

/// Something failed already (planning found a source entry that cannot be copied, a
/// conflict): the destination is behind the source, so nothing is deleted there, not even
/// an entry of the other kind that a copy would replace. Those replacements, and what would
/// go below a directory replacing a file, are left out, each with an error.
fn hold_replacements(plan: &mut Plan, errors: &mut Vec<anyhow::Error>) {
    let held: Vec<String> = plan.make_room.drain(..).map(|e| e.display()).collect();
    let below_held = |shown: &str| {
        held.iter().any(|h| {
            shown == h
                || shown
                    .strip_prefix(h.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    for h in &held {
        errors.push(fail(
            exit::ERROR,
            format!(
                "{h}: not replaced by the source's directory, because something else failed (a sync deletes nothing then)"
            ),
        ));
    }
    plan.mkdirs.retain(|d| !below_held(&d.display()));
    let mut kept = Vec::with_capacity(plan.copies.len());
    for job in std::mem::take(&mut plan.copies) {
        if job.replaces_dir {
            errors.push(held_replacement(&job));
        } else if !below_held(&job.dst.display()) {
            kept.push(job);
        }
    }
    plan.copies = kept;
}

/// The error of a file not copied over a directory because something else failed.
fn held_replacement(job: &CopyJob) -> anyhow::Error {
    fail(
        exit::ERROR,
        format!(
            "{}/: not replaced by the source's file, because something else failed (a sync deletes nothing then)",
            job.dst.display()
        ),
    )
}

/// Nothing failed: Ok. One error: that error. Several: each printed, and a summary with the
/// first one's exit code. The same server error for many files (a destination this user
/// cannot write) is printed once, with the first file's path and how many more had it: a
/// line per file would bury the error and its hint. The hint goes with the summary when all
/// errors share one (the last line, where it is seen), else under the error it belongs to.
fn finish(mut errors: Vec<anyhow::Error>, total: usize) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            // Each distinct error (the key) with its first line and how many had it.
            let mut groups: Vec<(String, String, Option<String>, usize)> = Vec::new();
            for e in &errors {
                let key = same_error_key(e);
                match groups.iter_mut().find(|g| g.0 == key) {
                    Some(g) => g.3 += 1,
                    None => groups.push((key, format!("{e:#}"), exit::hint_of(e), 1)),
                }
            }
            let one_hint = groups[0].2.is_some() && groups.iter().all(|g| g.2 == groups[0].2);
            for (_, line, hint, count) in &groups {
                match count {
                    1 => eprintln!("efs: error: {line}"),
                    c => eprintln!(
                        "efs: error: {line} (and {} more with the same error)",
                        c - 1
                    ),
                }
                if let Some(h) = hint
                    && !one_hint
                {
                    eprintln!("efs: hint: {h}");
                }
            }
            let code = exit::code_of(&errors[0]);
            let summary = format!(
                "{n} operations failed{}",
                if total > 0 {
                    format!(" (of {total})")
                } else {
                    String::new()
                }
            );
            Err(match &groups[0].2 {
                Some(h) if one_hint => fail_hint(code, summary, h),
                _ => fail(code, summary),
            })
        }
    }
}

/// What makes two failures "the same error" for [`finish`]: a server's answer (which never
/// names the path) with its exit code; for anything else, such as a local I/O error or an
/// entry that cannot be copied, the whole line, path included, because the path is what the
/// user must look at. So are the answers about one path (not found, a conflict with what is
/// there, a changed file, an invalid name): each is its own line.
fn same_error_key(e: &anyhow::Error) -> String {
    use efs_client::Error as E;
    match exit::sdk_error(e) {
        Some(sdk)
            if !matches!(
                sdk,
                E::Io(_)
                    | E::NotFound
                    | E::Conflict(_)
                    | E::PreconditionFailed
                    | E::InvalidPath(_)
                    | E::RangeNotSatisfiable
            ) =>
        {
            format!("{}\0{sdk}", exit::code_of(e))
        }
        _ => format!("{e:#}"),
    }
}

async fn plan_source(
    plan: &mut Plan,
    opts: &Opts,
    src: Endpoint,
    dst: &Endpoint,
    dst_meta: Option<&Meta>,
    into_dir: bool,
) -> Result<()> {
    let Some(src_meta) = src.stat().await? else {
        return Err(fail(
            exit::NOT_FOUND,
            format!("{}: no such file or directory", src.display()),
        ));
    };
    let dir = direction(&src, dst);
    // With --sync, a directory is mirrored onto DST itself (rsync's SRC/ DST/).
    let (target, target_meta) = if into_dir && !(opts.sync && src_meta.kind == Kind::Dir) {
        match src.name() {
            Some(name) => {
                let t = dst.child(&name)?;
                // A directory goes below the name it adds; a link there would take every file
                // elsewhere (each would then be refused when written): refused once, here.
                if let Endpoint::Local(p, _) = &t
                    && src_meta.kind == Kind::Dir
                    && std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
                {
                    return Err(fail(
                        exit::ERROR,
                        format!(
                            "{}: not written, it is a symbolic link and a copy never writes through one",
                            p.display()
                        ),
                    ));
                }
                let m = t.stat().await?;
                (t, m)
            }
            None => (dst.clone(), dst_meta.cloned()),
        }
    } else {
        (dst.clone(), dst_meta.cloned())
    };

    // A copy onto itself, or a directory into itself (GNU cp refuses both): it would
    // re-upload a file onto itself, or copy a tree into itself.
    if let (
        Endpoint::Remote {
            client: sc,
            remote: sr,
            path: sp,
        },
        Endpoint::Remote {
            client: tc,
            remote: tr,
            path: tp,
        },
    ) = (&src, &target)
        && same_filesystem(sr, sc, tr, tc).await?
    {
        if sp == tp {
            return Err(usage(format!(
                "{} and {} are the same file",
                src.display(),
                target.display()
            )));
        }
        if sp == "/" || tp.starts_with(&format!("{sp}/")) {
            return Err(usage(format!(
                "cannot copy {} into itself ({})",
                src.display(),
                target.display()
            )));
        }
    }
    match src_meta.kind {
        Kind::File => {
            let mut replaces_dir = false;
            match &target_meta {
                Some(m) if m.kind == Kind::Dir => {
                    if opts.delete {
                        replaces_dir = true;
                    } else {
                        return Err(fail(
                            exit::CONFLICT,
                            format!("{} is a directory", target.display()),
                        ));
                    }
                }
                _ => {}
            }
            plan.sources_found += 1;
            match &target_meta {
                Some(m) if m.kind == Kind::File && opts.sync && !needs_copy(&src_meta, m, dir) => {
                    plan.unchanged += 1;
                    return Ok(());
                }
                _ => {}
            }
            plan.copies.push(CopyJob {
                src,
                dst: target,
                meta: src_meta,
                replaces_dir,
            });
            Ok(())
        }
        Kind::Dir => {
            if !opts.recursive {
                return Err(fail_hint(
                    exit::USAGE,
                    format!("{} is a directory", src.display()),
                    "use -r to copy directories, or --sync to mirror one",
                ));
            }
            let dst_tree = match &target_meta {
                // The destination named (or the name a copy into a directory adds) is a
                // file: refused, as by `cp -r`, with or without --sync (which never replaces
                // the destination itself; only entries below it).
                Some(m) if m.kind == Kind::File => {
                    return Err(fail(
                        exit::CONFLICT,
                        format!("{} is a file, not a directory", target.display()),
                    ));
                }
                Some(_) if opts.sync => {
                    // At the destination, what the walk leaves out is only left alone.
                    let walked = target.walk(false).await?;
                    for e in walked.failed {
                        eprintln!("efs: warning: leaving alone {e:#}");
                    }
                    // A local destination's temporary files of an unfinished copy, links to
                    // directories, …: neither compared nor deleted, and said so.
                    for w in &walked.warnings {
                        eprintln!("efs: warning: {w} (left as it is at the destination)");
                    }
                    walked.tree
                }
                _ => Tree::new(),
            };
            plan.sources_found += 1;
            let walked = src.walk(opts.sync).await?;
            for w in &walked.warnings {
                if opts.sync {
                    eprintln!(
                        "efs: warning: {w} (a sync keeps what the destination has of that name)"
                    );
                } else {
                    eprintln!("efs: warning: {w}");
                }
            }
            // Each counts as a failed file: the copy goes on, and its exit code says so.
            plan.failed.extend(walked.failed);
            let target_exists = matches!(&target_meta, Some(m) if m.kind == Kind::Dir);
            plan_tree(
                plan,
                opts,
                &src,
                &target,
                target_exists,
                &Source {
                    tree: &walked.tree,
                    skipped: &walked.skipped,
                },
                &dst_tree,
                dir,
            )
        }
    }
}

/// A source tree and the names its walk skipped.
struct Source<'a> {
    tree: &'a Tree,
    skipped: &'a BTreeSet<String>,
}

/// Plans the copy of `source` (below `src`) onto `target`, whose tree is `dst_tree`.
#[allow(clippy::too_many_arguments)]
fn plan_tree(
    plan: &mut Plan,
    opts: &Opts,
    src: &Endpoint,
    target: &Endpoint,
    target_exists: bool,
    source: &Source<'_>,
    dst_tree: &Tree,
    dir: Direction,
) -> Result<()> {
    let src_tree = source.tree;
    let local_target = target.is_local();
    if !target_exists && (local_target || src_tree.is_empty()) {
        plan.mkdirs.push(target.clone());
    }
    // Remote directories are created with the files in them; only empty ones need a mkdir.
    let mut has_children = BTreeSet::new();
    for rel in src_tree.keys() {
        if let Some((parent, _)) = rel.rsplit_once('/') {
            has_children.insert(parent);
        }
    }
    // Destination entries removed (to make room or as extras): their contents go with them.
    let mut removed: BTreeSet<&str> = BTreeSet::new();
    let mut conflicts = Vec::new();
    let local_root = match target {
        Endpoint::Local(p, _) => Some(p),
        Endpoint::Remote { .. } => None,
    };
    for (rel, m) in src_tree {
        // A link to a directory planted in a local destination would take the download
        // elsewhere (walk_local does not list such links, so nothing here replaces them).
        if let Some(root) = local_root
            && let Some(link) = linked_component(root, rel, m.kind == Kind::Dir)
        {
            plan.failed.push(fail(
                exit::ERROR,
                format!(
                    "{}: not written, {} is a symbolic link and a copy never writes through one",
                    target.child(rel)?.display(),
                    link.display()
                ),
            ));
            continue;
        }
        let d = dst_tree.get(rel);
        if let Some(d) = d
            && d.kind != m.kind
        {
            if opts.delete {
                if d.kind == Kind::File {
                    plan.make_room.push(target.child(rel)?);
                }
                removed.insert(rel);
            } else {
                conflicts.push(target.child(rel)?.display());
                continue;
            }
        }
        let same_kind = d.is_some_and(|d| d.kind == m.kind);
        match m.kind {
            Kind::Dir => {
                if !same_kind && (local_target || !has_children.contains(rel.as_str())) {
                    plan.mkdirs.push(target.child(rel)?);
                }
            }
            Kind::File => {
                if opts.sync
                    && same_kind
                    && let Some(d) = d
                    && !needs_copy(m, d, dir)
                {
                    plan.unchanged += 1;
                    continue;
                }
                plan.copies.push(CopyJob {
                    src: src.child(rel)?,
                    dst: target.child(rel)?,
                    meta: m.clone(),
                    replaces_dir: d.is_some_and(|d| d.kind == Kind::Dir),
                });
            }
        }
    }
    if opts.delete {
        // What the source walk skipped (a dangling link, a link to a directory, …) is there
        // at the source, only not copied: the destination's entry of that name, and what is
        // below it, are not extras.
        let skipped: BTreeSet<&str> = source.skipped.iter().map(String::as_str).collect();
        for (rel, d) in dst_tree {
            if src_tree.contains_key(rel)
                || has_removed_ancestor(&removed, rel)
                || skipped.contains(rel.as_str())
                || has_removed_ancestor(&skipped, rel)
            {
                if skipped.contains(rel.as_str()) {
                    plan.kept += 1;
                }
                continue;
            }
            plan.deletes.push((target.child(rel)?, d.kind));
            if d.kind == Kind::Dir {
                removed.insert(rel);
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(fail_hint(
            exit::CONFLICT,
            format!(
                "{} destination entries are of another kind than the source's (a file for a directory or the reverse): {}",
                conflicts.len(),
                conflicts.join(", ")
            ),
            "without --no-delete, sync replaces them",
        ));
    }
    Ok(())
}

/// The first of `root/a`, `root/a/b`, … (the parents of `root/rel`, and `root/rel` itself
/// when `with_self`) that is a symbolic link, if any. `root` itself, which the user named,
/// may be one.
fn linked_component(root: &Path, rel: &str, with_self: bool) -> Option<PathBuf> {
    let segments: Vec<&str> = rel.split('/').collect();
    let upto = if with_self {
        segments.len()
    } else {
        segments.len() - 1
    };
    let mut p = root.to_path_buf();
    for seg in &segments[..upto] {
        p.push(seg);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Some(p),
            Ok(_) => {}
            // Missing: nothing below it exists either, and it will be created as a directory.
            Err(_) => return None,
        }
    }
    None
}

fn has_removed_ancestor(removed: &BTreeSet<&str>, rel: &str) -> bool {
    let mut cur = rel;
    while let Some((parent, _)) = cur.rsplit_once('/') {
        if removed.contains(parent) {
            return true;
        }
        cur = parent;
    }
    false
}

fn print_plan(plan: &Plan) {
    for e in &plan.make_room {
        reportln!("would delete {}", e.display());
    }
    for j in plan.copies.iter().filter(|j| j.replaces_dir) {
        reportln!("would delete {}{}", j.dst.display(), dir_suffix(Kind::Dir));
    }
    for d in &plan.mkdirs {
        reportln!("would create {}/", d.display());
    }
    for j in &plan.copies {
        reportln!(
            "would copy {} -> {} ({})",
            j.src.display(),
            j.dst.display(),
            human_bytes(j.meta.size)
        );
    }
    for (e, kind) in &plan.deletes {
        reportln!("would delete {}{}", e.display(), dir_suffix(*kind));
    }
    let bytes: u64 = plan.copies.iter().map(|j| j.meta.size).sum();
    reportln!(
        "dry run: would copy {} ({}), delete {}, {} unchanged{}",
        files(plan.copies.len() as u64),
        human_bytes(bytes),
        plan.make_room.len()
            + plan.copies.iter().filter(|j| j.replaces_dir).count()
            + plan.deletes.len(),
        plan.unchanged,
        kept_note(plan.kept)
    );
}

/// `1 file`, `2 files`.
fn files(n: u64) -> String {
    if n == 1 {
        "1 file".to_owned()
    } else {
        format!("{n} files")
    }
}

/// The summary's mention of destination entries a sync kept because the source's entry of
/// that name was skipped (empty when there are none).
fn kept_note(kept: u64) -> String {
    match kept {
        0 => String::new(),
        n => format!(", {n} kept (skipped at the source, see the warnings)"),
    }
}

fn dir_suffix(kind: Kind) -> &'static str {
    if kind == Kind::Dir {
        "/ (and everything in it)"
    } else {
        ""
    }
}

async fn mkdir(dir: &Endpoint) -> Result<()> {
    match dir {
        Endpoint::Local(p, 0) => {
            let p = p.clone();
            tokio::task::spawn_blocking(move || {
                create_private_dir_all(&p).with_context(|| format!("creating {}", p.display()))
            })
            .await?
        }
        Endpoint::Local(p, below) => {
            let (p, below) = (p.clone(), *below);
            tokio::task::spawn_blocking(move || {
                let (top, comps) = split_named(&p, below)?;
                enter_dirs(&top, &comps, true).map(drop)
            })
            .await?
        }
        Endpoint::Remote { client, path, .. } => match client.mkdir(path).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
        },
    }
}

/// Deletes `entries`, `jobs` at a time; returns how many were deleted and the errors.
async fn delete_all(
    entries: Vec<(Endpoint, Kind)>,
    jobs: usize,
    progress: &Arc<Progress>,
    verbose: bool,
) -> (usize, Vec<anyhow::Error>) {
    let results: Vec<(String, Result<()>)> = stream::iter(entries)
        .map(|(e, kind)| async move {
            let shown = e.display();
            let r = delete(&e, kind).await;
            (shown, r)
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    let mut n = 0;
    let mut errors = Vec::new();
    for (shown, r) in results {
        match r {
            Ok(()) => {
                n += 1;
                if verbose {
                    progress.verbose_line(&format!("deleted {shown}"));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (n, errors)
}

async fn delete(e: &Endpoint, kind: Kind) -> Result<()> {
    let r = match e {
        Endpoint::Local(p, 0) => if kind == Kind::Dir {
            tokio::fs::remove_dir_all(p).await
        } else {
            tokio::fs::remove_file(p).await
        }
        .map_err(anyhow::Error::from),
        // Below the named destination: in the directory reached without following links.
        Endpoint::Local(p, below) => {
            let (p, below) = (p.clone(), *below);
            tokio::task::spawn_blocking(move || {
                let (top, mut comps) = split_named(&p, below)?;
                let name = comps.pop().context("a path below a copy's destination")?;
                let parent = enter_dirs(&top, &comps, false)?;
                if kind == Kind::Dir {
                    remove_tree_at(&parent, &name)?;
                } else {
                    rustix::fs::unlinkat(&parent, &name, rustix::fs::AtFlags::empty())
                        .map_err(std::io::Error::from)?;
                }
                Ok(())
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
        }
        Endpoint::Remote { client, path, .. } => client
            .delete(path, kind == Kind::Dir)
            .await
            .map_err(anyhow::Error::from),
    };
    r.with_context(|| format!("deleting {}", e.display()))
}

/// Runs the copies, `jobs` at a time, each on its own task; returns the bytes of those that
/// succeeded and the errors of the others.
async fn copy_all(
    copies: Vec<CopyJob>,
    jobs: usize,
    progress: &Arc<Progress>,
    verbose: bool,
) -> (u64, Vec<anyhow::Error>) {
    let results: Vec<Result<u64>> = stream::iter(copies)
        .map(|job| {
            let progress = progress.clone();
            AbortOnDrop(tokio::spawn(async move {
                let fp = progress.file(&job.dst.display(), job.meta.size);
                let r = copy_one(&job, &fp).await.with_context(|| {
                    format!("copying {} to {}", job.src.display(), job.dst.display())
                });
                fp.finish(r.is_ok(), job.meta.size);
                if r.is_ok() && verbose {
                    progress.verbose_line(&format!(
                        "copied {} -> {}",
                        job.src.display(),
                        job.dst.display()
                    ));
                }
                r.map(|()| job.meta.size)
            }))
        })
        .buffer_unordered(jobs)
        .map(|joined| joined.unwrap_or_else(|e| Err(anyhow::anyhow!("a copy task failed: {e}"))))
        .collect()
        .await;
    let mut bytes = 0;
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(n) => bytes += n,
            Err(e) => errors.push(e),
        }
    }
    (bytes, errors)
}

/// A spawned copy, cancelled when its handle is dropped (a dropped `JoinHandle` would let it
/// run on): when `efs cp` is interrupted, every copy stops, and a download's drop removes its
/// temporary file.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// How many times a remote → remote copy is tried (the SDK retries downloads and file
/// uploads itself, but not an upload from a stream, which it cannot rewind).
const STREAM_ATTEMPTS: u32 = 3;

async fn copy_one(job: &CopyJob, fp: &Arc<FileProgress>) -> Result<()> {
    if job.replaces_dir {
        return copy_replacing_dir(job, fp).await;
    }
    match (&job.src, &job.dst) {
        (Endpoint::Local(from, _), Endpoint::Remote { client, path, .. }) => {
            let opts = PutOptions {
                content_type: guess_content_type(from).map(str::to_owned),
                progress: Some(fp.callback()),
                ..PutOptions::default()
            };
            client.upload_file(path, from, opts).await?;
            Ok(())
        }
        (Endpoint::Remote { client, path, .. }, Endpoint::Local(to, below)) => {
            // A directory where the file goes (only a sync replaces one, planned as such):
            // the conflict it is, as for a single file, not the rename's "Is a directory".
            if std::fs::symlink_metadata(to).is_ok_and(|m| m.is_dir()) {
                return Err(fail(
                    exit::CONFLICT,
                    format!("{} is a directory", to.display()),
                ));
            }
            let (to, below) = (to.clone(), *below);
            let (dir, name) =
                tokio::task::spawn_blocking(move || open_dest_dir(&to, below)).await??;
            let cb = fp.callback();
            client
                .download_file_at(path, &dir, &name, job.meta.modified, Some(&*cb))
                .await?;
            Ok(())
        }
        (
            Endpoint::Remote {
                client: from_client,
                path: from,
                ..
            },
            Endpoint::Remote {
                client: to_client,
                path: to,
                ..
            },
        ) => {
            let mut attempt = 1;
            loop {
                match stream_copy(from_client, from, to_client, to, &job.meta, fp).await {
                    Err(e) if attempt < STREAM_ATTEMPTS && is_transient(&e) => {
                        tracing::info!("retrying the copy of {} after: {e:#}", job.src.display());
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                        attempt += 1;
                    }
                    r => return r,
                }
            }
        }
        (Endpoint::Local(..), Endpoint::Local(..)) => unreachable!("refused before planning"),
    }
}

/// A file copied where the destination has a directory (`--sync`), without a moment where
/// neither is there: the file is made complete beside the directory, the directory moved
/// aside (to `NAME.<random>.efs-part`, a name local walks skip), the file moved to `NAME`,
/// and only then the old directory deleted. A failure before the file is in place puts the
/// directory back; one after leaves the old directory at its temporary name, said in the
/// error.
async fn copy_replacing_dir(job: &CopyJob, fp: &Arc<FileProgress>) -> Result<()> {
    if let (Endpoint::Remote { client, path, .. }, Endpoint::Local(to, below)) =
        (&job.src, &job.dst)
    {
        let (to, below) = (to.clone(), *below);
        let (dir, name) = tokio::task::spawn_blocking(move || open_dest_dir(&to, below)).await??;
        let aside = part_name(&name, &random_hex()?);
        let cb = fp.callback();
        let moved = aside.clone();
        let got = client
            .download_file_at_then(
                path,
                &dir,
                &name,
                job.meta.modified,
                Some(&*cb),
                move |dir, name| match rustix::fs::renameat(dir, name, dir, &moved) {
                    // Gone meanwhile: nothing to replace.
                    Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                    Err(e) => Err(e.into()),
                },
            )
            .await;
        let dir2 = dir.try_clone()?;
        let (name2, aside2) = (name.clone(), aside.clone());
        if let Err(e) = got {
            // The directory back where it was, if it was moved and nothing took its place.
            tokio::task::spawn_blocking(move || {
                use rustix::fs::{AtFlags, statat};
                if statat(&dir2, &aside2, AtFlags::SYMLINK_NOFOLLOW).is_ok()
                    && statat(&dir2, &name2, AtFlags::SYMLINK_NOFOLLOW).is_err()
                {
                    let _ = rustix::fs::renameat(&dir2, &aside2, &dir2, &name2);
                }
            })
            .await?;
            return Err(e.into());
        }
        let shown = job.dst.display();
        return tokio::task::spawn_blocking(move || match remove_tree_at(&dir, &aside) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "removing the directory {shown} replaced (the file is in place; the old directory is left as {})",
                Path::new(&aside).display()
            ))),
        })
        .await?;
    }
    let Endpoint::Remote { client, path, .. } = &job.dst else {
        unreachable!("local → local is refused before planning");
    };
    let staged = remote_part(path, &random_hex()?);
    let aside = remote_part(path, &random_hex()?);
    let staged_job = CopyJob {
        src: job.src.clone(),
        dst: match &job.dst {
            Endpoint::Remote { client, remote, .. } => Endpoint::Remote {
                client: client.clone(),
                remote: remote.clone(),
                path: staged.clone(),
            },
            Endpoint::Local(..) => unreachable!("matched above"),
        },
        meta: job.meta.clone(),
        replaces_dir: false,
    };
    Box::pin(copy_one(&staged_job, fp)).await?;
    // `{path}/`: only a directory moves (the server checks it in the move's commit), should
    // the name have become a file since the plan.
    if let Err(e) = client.rename(&format!("{path}/"), &aside, false).await {
        // An error may hide a move that happened (a lost answer, a proxy's 502): go on from
        // what is there.
        if client.stat(&aside).await.is_err() {
            let _ = client.delete(&staged, false).await;
            return Err(e)
                .with_context(|| format!("moving the directory {path} aside to replace it"));
        }
    }
    if let Err(e) = client.rename(&staged, path, false).await {
        let back = client.rename(&aside, path, false).await;
        return Err(e).with_context(|| match back {
            Ok(_) => format!(
                "moving the copy from {staged} to {path} (the directory is back at {path}; the copy is at {staged})"
            ),
            Err(_) => format!(
                "moving the copy from {staged} to {path} (the directory is at {aside}; the copy at {staged})"
            ),
        });
    }
    client.delete(&aside, true).await.with_context(|| {
        format!("deleting the directory {path} replaced (the file is in place; what is left of the directory is at {aside})")
    })?;
    Ok(())
}

/// Moves a file that a directory replaces out of the way, to `NAME.<random>.efs-part` beside
/// it (a name walks skip): it is deleted only once every copy succeeded, and otherwise kept
/// there, named in an error, instead of lost with a directory whose files failed to copy.
/// Returns where it is now.
async fn move_aside(e: &Endpoint) -> Result<Endpoint> {
    let hex = random_hex()?;
    match e {
        Endpoint::Local(p, below) => {
            let (at, below, tag) = (p.clone(), *below, hex.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                let (dir, name) = open_dest_dir(&at, below)?;
                let aside = part_name(&name, &tag);
                rustix::fs::renameat(&dir, &name, &dir, &aside)
                    .with_context(|| format!("moving {} aside to replace it", at.display()))?;
                Ok(())
            })
            .await??;
            let name = p.file_name().unwrap_or(p.as_os_str());
            Ok(Endpoint::Local(
                p.with_file_name(part_name(name, &hex)),
                below,
            ))
        }
        Endpoint::Remote {
            client,
            remote,
            path,
        } => {
            let aside = remote_part(path, &hex);
            if let Err(e) = client.rename(path, &aside, false).await {
                // Moved after all (a lost answer): it is there, and kept track of.
                if client.stat(&aside).await.is_err() {
                    return Err(e).with_context(|| format!("moving {path} aside to replace it"));
                }
            }
            Ok(Endpoint::Remote {
                client: client.clone(),
                remote: remote.clone(),
                path: aside,
            })
        }
    }
}

/// 16 random hex digits, for temporary names.
/// `NAME.<hex>.efs-part` beside the remote `path`, its last segment cut to fit EFS's 255
/// bytes (a name of 230 to 255 bytes made one too long to move aside).
fn remote_part(path: &str, hex: &str) -> String {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let part = part_name(std::ffi::OsStr::new(name), hex);
    let part = part
        .to_str()
        .expect("cut at a character boundary of a UTF-8 name");
    format!("{dir}/{part}")
}

fn random_hex() -> Result<String> {
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("no random bytes"))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

fn is_transient(e: &anyhow::Error) -> bool {
    exit::sdk_error(e).is_some_and(efs_client::Error::is_transient)
}

/// Streams a remote file into another remote through a 256 KiB pipe: memory stays
/// constant whatever the size.
async fn stream_copy(
    from_client: &Client,
    from: &str,
    to_client: &Client,
    to: &str,
    meta: &Meta,
    fp: &Arc<FileProgress>,
) -> Result<()> {
    let (mut writer, reader) = tokio::io::duplex(256 * 1024);
    let failed = Arc::new(AtomicBool::new(false));
    let reader = FailOnEarlyEof {
        inner: reader,
        failed: failed.clone(),
    };
    let opts = PutOptions {
        content_type: meta.content_type.clone(),
        progress: Some(fp.callback()),
        ..PutOptions::default()
    };
    let down = async move {
        let r = from_client.download(from, &mut writer, None, None).await;
        match &r {
            Ok(_) => {
                let _ = writer.shutdown().await;
            }
            // Set before the writer is dropped: the reader then sees an error, not an EOF
            // that would store a truncated file.
            Err(_) => failed.store(true, Ordering::Release),
        }
        drop(writer);
        r
    };
    let up = to_client.upload(to, reader, Some(meta.size), opts);
    let (down, up) = tokio::join!(down, up);
    match (down, up) {
        (Ok(_), Ok(_)) => Ok(()),
        // The upload stopped reading (the destination refused it, or it failed): the
        // download's closed pipe follows from the upload's error, which is the one to tell.
        // Which side failed, not its path: the caller's context names both paths, with their
        // remotes (`copying drive:/a to other:/a`).
        (Err(d), Err(u)) if exit::is_broken_pipe(&d) => Err(u).context("writing the destination"),
        (Err(e), _) => Err(e).context("reading the source"),
        (Ok(_), Err(e)) => Err(e).context("writing the destination"),
    }
}

/// The reading half of the remote → remote pipe: an end of stream after the download
/// failed is an error, so the upload is abandoned instead of storing part of the file.
struct FailOnEarlyEof {
    inner: tokio::io::DuplexStream,
    failed: Arc<AtomicBool>,
}

impl AsyncRead for FailOnEarlyEof {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && buf.filled().len() == before
            && self.failed.load(Ordering::Acquire)
        {
            return Poll::Ready(Err(std::io::Error::other(
                "the download feeding this upload failed",
            )));
        }
        r
    }
}

/// Opens a directory only as the base of `*at` calls: `O_PATH` on Linux, so that one the
/// user may write into but not list (mode 0300) works as it did with paths.
#[cfg(target_os = "linux")]
const DIR_BASE: rustix::fs::OFlags = rustix::fs::OFlags::PATH
    .union(rustix::fs::OFlags::DIRECTORY)
    .union(rustix::fs::OFlags::CLOEXEC);
#[cfg(not(target_os = "linux"))]
const DIR_BASE: rustix::fs::OFlags = rustix::fs::OFlags::RDONLY
    .union(rustix::fs::OFlags::DIRECTORY)
    .union(rustix::fs::OFlags::CLOEXEC);

/// The mode of a local directory a download creates: decrypted records below it are the
/// user's alone (the files are 0600, see the SDK's `download_file_at`).
const PRIVATE_DIR: u32 = 0o700;

/// `mkdir -p` with new directories [`PRIVATE_DIR`] (an existing one is left as it is).
fn create_private_dir_all(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(path)
}

/// A local path the copy made, split into the path the user named and the `below`
/// components the copy added under it (see [`Endpoint::Local`]).
fn split_named(path: &Path, below: usize) -> Result<(PathBuf, Vec<std::ffi::OsString>)> {
    let mut top = path.to_path_buf();
    let mut comps = Vec::with_capacity(below);
    for _ in 0..below {
        let c = top
            .file_name()
            .with_context(|| format!("{}: not a path below a destination", path.display()))?;
        comps.push(c.to_owned());
        top.pop();
    }
    comps.reverse();
    if top.as_os_str().is_empty() {
        top = PathBuf::from(".");
    }
    Ok((top, comps))
}

/// The directory `top` (opened as named: the user may name a link; created with its parents
/// when `create`), then each of `comps` below it, created if missing when `create`, entered
/// with `O_NOFOLLOW`: a link there, even one put there after planning (which refused the
/// links it saw), is refused, never followed out of the destination.
fn enter_dirs(top: &Path, comps: &[std::ffi::OsString], create: bool) -> Result<std::fs::File> {
    use rustix::fs::{CWD, Mode, OFlags, mkdirat, openat};
    if create {
        create_private_dir_all(top).with_context(|| format!("creating {}", top.display()))?;
    }
    let mut dir = openat(CWD, top, DIR_BASE, Mode::empty())
        .map(std::fs::File::from)
        .map_err(std::io::Error::from)
        .with_context(|| format!("opening the directory {}", top.display()))?;
    let mut at = top.to_path_buf();
    for seg in comps {
        at.push(seg);
        let enter =
            |dir: &std::fs::File| openat(dir, seg, DIR_BASE | OFlags::NOFOLLOW, Mode::empty());
        let mut entered = enter(&dir);
        if create && matches!(entered, Err(rustix::io::Errno::NOENT)) {
            match mkdirat(&dir, seg, Mode::from_bits_truncate(PRIVATE_DIR)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => entered = enter(&dir),
                Err(e) => {
                    return Err(std::io::Error::from(e))
                        .with_context(|| format!("creating {}", at.display()));
                }
            }
        }
        dir = match entered {
            Ok(fd) => std::fs::File::from(fd),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(fail(
                    exit::ERROR,
                    format!(
                        "{} is a symbolic link or not a directory, and a copy never writes through one",
                        at.display()
                    ),
                ));
            }
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("opening {}", at.display()));
            }
        };
    }
    Ok(dir)
}

/// The directory a download to `to` goes into, open, and the file's name in it: `to`'s
/// directories below the named destination are entered as [`enter_dirs`] does (created if
/// missing); for a file the user named (`below` 0), its directory as named.
fn open_dest_dir(to: &Path, below: usize) -> Result<(std::fs::File, std::ffi::OsString)> {
    let (top, comps, name) = if below == 0 {
        // `dir/`, `dir/.`, `..`: a directory, not a file name (file_name() would give one).
        let raw = to.as_os_str().as_encoded_bytes();
        if raw.ends_with(b"/") || raw.ends_with(b"/.") || raw == b"." {
            return Err(fail(
                exit::USAGE,
                format!("{} names a directory, not a file", to.display()),
            ));
        }
        let name = to
            .file_name()
            .with_context(|| format!("{} does not name a file", to.display()))?
            .to_owned();
        let top = match to.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (top, Vec::new(), name)
    } else {
        let (top, mut comps) = split_named(to, below)?;
        let name = comps.pop().context("a path below a copy's destination")?;
        (top, comps, name)
    };
    Ok((enter_dirs(&top, &comps, true)?, name))
}

/// Removes the directory `name` of `parent` and everything in it, each level opened with
/// `O_NOFOLLOW` relative to the one above: a link met on the way (or put where `name` was) is
/// removed itself, never what it points to.
fn remove_tree_at(parent: &std::fs::File, name: &std::ffi::OsStr) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, openat, unlinkat};
    use rustix::io::Errno;
    use std::os::unix::ffi::OsStrExt;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = match openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => std::fs::File::from(fd),
        Err(Errno::LOOP | Errno::NOTDIR) => {
            return unlinkat(parent, name, AtFlags::empty()).map_err(Into::into);
        }
        Err(e) => return Err(e.into()),
    };
    let mut entries = Vec::new();
    for e in Dir::read_from(&dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            entries.push((std::ffi::OsStr::from_bytes(n).to_owned(), e.file_type()));
        }
    }
    for (n, t) in entries {
        if t == FileType::Directory {
            remove_tree_at(&dir, &n)?;
        } else {
            match unlinkat(&dir, &n, AtFlags::empty()) {
                Ok(()) => {}
                // A directory the listing did not type as one.
                Err(Errno::ISDIR | Errno::PERM) => remove_tree_at(&dir, &n)?,
                Err(e) => return Err(e.into()),
            }
        }
    }
    unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(Into::into)
}

/// A Content-Type for common extensions, so that services reading the file get a useful
/// one; anything else is left to the server's default.
pub(crate) fn guess_content_type(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    let table: BTreeMap<&str, &str> = [
        ("pdf", "application/pdf"),
        ("txt", "text/plain; charset=utf-8"),
        ("md", "text/markdown; charset=utf-8"),
        ("csv", "text/csv; charset=utf-8"),
        ("html", "text/html; charset=utf-8"),
        ("htm", "text/html; charset=utf-8"),
        ("json", "application/json"),
        ("xml", "application/xml"),
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("jpeg", "image/jpeg"),
        ("gif", "image/gif"),
        ("webp", "image/webp"),
        ("svg", "image/svg+xml"),
        ("tif", "image/tiff"),
        ("tiff", "image/tiff"),
        ("dcm", "application/dicom"),
        ("zip", "application/zip"),
        ("gz", "application/gzip"),
        ("tar", "application/x-tar"),
        ("doc", "application/msword"),
        (
            "docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        (
            "xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
        ("odt", "application/vnd.oasis.opendocument.text"),
        ("mp4", "video/mp4"),
        ("mp3", "audio/mpeg"),
    ]
    .into_iter()
    .collect();
    table.get(ext.as_str()).copied()
}

/// `1.5 MiB`, `12 B`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn file(size: u64, secs: u64) -> Meta {
        Meta {
            kind: Kind::File,
            size,
            modified: Some(UNIX_EPOCH + Duration::from_millis(secs * 1000 + 300)),
            content_type: None,
            etag: None,
        }
    }

    /// The same refusal for many files is one error; an answer about each path is its own.
    #[test]
    fn only_errors_that_do_not_depend_on_the_path_are_merged() {
        let at = |path: &str, e: efs_client::Error| anyhow::Error::new(e).context(path.to_owned());
        let forbidden = || efs_client::Error::Forbidden("read-only access".into());
        assert_eq!(
            same_error_key(&at("copying a", forbidden())),
            same_error_key(&at("copying b", forbidden()))
        );
        for e in [
            || efs_client::Error::NotFound,
            || efs_client::Error::Conflict("a directory is there".into()),
            || efs_client::Error::PreconditionFailed,
        ] {
            assert_ne!(
                same_error_key(&at("copying a", e())),
                same_error_key(&at("copying b", e()))
            );
        }
    }

    #[test]
    fn sync_rule() {
        // Sizes differ: always.
        assert!(needs_copy(&file(1, 10), &file(2, 10), Direction::Upload));
        // Upload: only when the local file is newer than the remote copy.
        assert!(!needs_copy(&file(1, 10), &file(1, 10), Direction::Upload));
        assert!(!needs_copy(&file(1, 9), &file(1, 10), Direction::Upload));
        assert!(needs_copy(&file(1, 11), &file(1, 10), Direction::Upload));
        // Download: whenever the times differ (downloads set the local time).
        assert!(!needs_copy(&file(1, 10), &file(1, 10), Direction::Download));
        assert!(needs_copy(&file(1, 10), &file(1, 11), Direction::Download));
        assert!(needs_copy(&file(1, 11), &file(1, 10), Direction::Download));
        // Unknown times: copy.
        let mut m = file(1, 10);
        m.modified = None;
        assert!(needs_copy(&m, &file(1, 10), Direction::RemoteToRemote));
    }

    #[test]
    fn removed_ancestors() {
        let removed: BTreeSet<&str> = ["a", "x/y"].into_iter().collect();
        assert!(has_removed_ancestor(&removed, "a/b"));
        assert!(has_removed_ancestor(&removed, "x/y/z/w"));
        assert!(!has_removed_ancestor(&removed, "a"));
        assert!(!has_removed_ancestor(&removed, "ab/c"));
        assert!(!has_removed_ancestor(&removed, "x/z"));
    }

    #[test]
    fn local_children_never_leave_their_directory() {
        let dir = Endpoint::Local(PathBuf::from("/tmp/dl"), 0);
        assert_eq!(dir.child("a/b").unwrap().display(), "/tmp/dl/a/b");
        for bad in ["../x", "/etc/passwd", "a/../../x", ".", ""] {
            assert!(dir.child(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn links_below_a_local_destination_are_found() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("real/deeper")).unwrap();
        std::fs::create_dir_all(d.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), root.join("link")).unwrap();
        assert_eq!(linked_component(&root, "real/deeper/f.txt", false), None);
        assert_eq!(linked_component(&root, "new/dir/f.txt", false), None);
        assert_eq!(
            linked_component(&root, "link/f.txt", false),
            Some(root.join("link"))
        );
        assert_eq!(
            linked_component(&root, "link", true),
            Some(root.join("link"))
        );
        // A file's own name may be a link: the download is renamed over it, not through it.
        assert_eq!(linked_component(&root, "link", false), None);
        // The named root may be a link.
        let via = d.path().join("via");
        std::os::unix::fs::symlink(&root, &via).unwrap();
        assert_eq!(linked_component(&via, "real/x", false), None);
    }

    /// A download's directories below the destination are created and entered without
    /// following links: a link put there after planning is refused and nothing is created
    /// through it; the destination itself, and a single file's directory, may be links the
    /// user named; a name that is a directory's is refused.
    #[test]
    fn downloads_enter_the_destination_without_following_links() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let same = |f: &std::fs::File, p: &Path| {
            f.metadata().unwrap().ino() == std::fs::metadata(p).unwrap().ino()
        };
        // Missing directories are made, the destination's own too.
        let (dir, name) = open_dest_dir(&root.join("a/b/f.txt"), 3).unwrap();
        assert_eq!(name, "f.txt");
        assert!(same(&dir, &root.join("a/b")));
        // A link in the way.
        std::os::unix::fs::symlink(&outside, root.join("l")).unwrap();
        let e = open_dest_dir(&root.join("l/x/f.txt"), 3).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // A file where a directory goes.
        std::fs::write(root.join("file"), b"x").unwrap();
        assert!(open_dest_dir(&root.join("file/f.txt"), 2).is_err());
        // Named by the user: followed.
        let via = d.path().join("via");
        std::os::unix::fs::symlink(&root, &via).unwrap();
        let (dir, _) = open_dest_dir(&via.join("a/f.txt"), 2).unwrap();
        assert!(same(&dir, &root.join("a")));
        let (dir, _) = open_dest_dir(&root.join("l/one.txt"), 0).unwrap();
        assert!(same(&dir, &outside));
        for bad in ["dir/", "dir/.", "..", ".", "a/.."] {
            assert!(open_dest_dir(Path::new(bad), 0).is_err(), "{bad}");
        }
        let (dir, name) = open_dest_dir(&root.join("notes.."), 0).unwrap();
        assert_eq!(name, "notes..");
        assert!(same(&dir, &root));
    }

    /// Every path a copy adds below the named destination counts its components: the name
    /// a copy into a directory adds, and the tree's paths below it.
    #[test]
    fn local_children_count_what_the_copy_added() {
        let dst = Endpoint::Local(PathBuf::from("dest"), 0);
        let below = |e: &Endpoint| match e {
            Endpoint::Local(_, b) => *b,
            Endpoint::Remote { .. } => unreachable!(),
        };
        let x = dst.child("x").unwrap();
        assert_eq!(below(&x), 1);
        assert_eq!(below(&x.child("a/b/f.txt").unwrap()), 4);
        let (top, comps) = split_named(Path::new("dest/x/a/f.txt"), 3).unwrap();
        assert_eq!(top, Path::new("dest"));
        assert_eq!(comps, ["x", "a", "f.txt"]);
        assert_eq!(split_named(Path::new("x/f"), 2).unwrap().0, Path::new("."));
    }

    /// Deleting and creating below the destination goes through the directories reached
    /// without following links: a directory swapped for a link after planning is refused,
    /// and nothing outside is deleted or created; a tree is removed with what is in it, a
    /// link inside it removed itself (not what it points to).
    #[tokio::test]
    async fn deletes_and_mkdirs_below_the_destination_never_follow_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(outside.join("keep")).unwrap();
        std::fs::write(outside.join("keep/f"), b"keep").unwrap();
        std::fs::create_dir_all(root.join("t/sub/deeper")).unwrap();
        std::fs::write(root.join("t/sub/deeper/f"), b"x").unwrap();
        std::fs::write(root.join("t/file"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("t/sub/link")).unwrap();
        let dst = Endpoint::Local(root.clone(), 0);
        // A tree, with a link in it.
        delete(&dst.child("t/sub").unwrap(), Kind::Dir)
            .await
            .unwrap();
        assert!(!root.join("t/sub").exists());
        assert!(
            outside.join("keep/f").exists(),
            "a link in a tree is removed itself"
        );
        // A directory on the way swapped for a link: refused, nothing outside touched.
        std::fs::rename(root.join("t"), root.join("t-real")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("t")).unwrap();
        assert!(
            delete(&dst.child("t/keep").unwrap(), Kind::Dir)
                .await
                .is_err()
        );
        assert!(
            delete(&dst.child("t/keep/f").unwrap(), Kind::File)
                .await
                .is_err()
        );
        assert!(mkdir(&dst.child("t/new").unwrap()).await.is_err());
        assert!(outside.join("keep/f").exists());
        assert!(!outside.join("new").exists());
        // Without the link: a file, a new directory.
        delete(&dst.child("t-real/file").unwrap(), Kind::File)
            .await
            .unwrap();
        assert!(!root.join("t-real/file").exists());
        mkdir(&dst.child("t-real/n1/n2").unwrap()).await.unwrap();
        assert!(root.join("t-real/n1/n2").is_dir());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }

    #[test]
    fn content_types() {
        assert_eq!(
            guess_content_type(Path::new("a/Report.PDF")),
            Some("application/pdf")
        );
        assert_eq!(guess_content_type(Path::new("noext")), None);
    }

    #[tokio::test]
    async fn early_eof_after_a_failed_download_is_an_error() {
        use tokio::io::AsyncReadExt;
        let (mut w, r) = tokio::io::duplex(64);
        let failed = Arc::new(AtomicBool::new(false));
        let mut reader = FailOnEarlyEof {
            inner: r,
            failed: failed.clone(),
        };
        w.write_all(b"abc").await.unwrap();
        failed.store(true, Ordering::Release);
        drop(w);
        let mut buf = Vec::new();
        assert!(reader.read_to_end(&mut buf).await.is_err());
        assert_eq!(buf, b"abc");
    }
}
