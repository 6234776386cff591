//! `efs`, the EFS command line: keys, remotes, cp/sync, ls, stat, cat, put, rm, mv, mkdir,
//! token, tar/untar (age-encrypted backups), an interactive shell and shell completions, on top of the `efs-client` SDK.
//!
//! Errors are printed as `efs: error: …` (with the whole chain of causes) and, when there is
//! something to do about them, `efs: hint: …`; the exit code says what kind of failure it
//! was (see [`exit`]).

mod cli;
mod commands;
mod config;
mod copy;
mod exit;
mod keygen;
mod location;
mod progress;
mod remote;
mod session;
mod shell;
mod tar;
mod walk;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, RemoteCmd};
use crate::session::Session;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    init_tracing(cli.verbose);

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(&anyhow::Error::from(e)),
    };
    let mut session = None;
    let result = run(&rt, cli, &mut session);
    let code = match result {
        // A closed stdout (`efs cat big | head`) is handled, as success, where stdout is
        // written: a broken pipe seen here is an inner pipe whose reader failed, and that
        // failure is the error.
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            if let (Some(sdk), Some(s)) = (exit::sdk_error(&e), &session)
                && exit::is_tls(sdk)
            {
                rt.block_on(s.explain_tls_failure());
            }
            if let (Some(sdk), Some(s)) = (exit::sdk_error(&e), &session)
                && exit::is_identity_mismatch(sdk)
            {
                s.explain_identity_failure();
            }
            report(&e)
        }
    };
    // Do not wait for a blocked stdin reader (tokio reads stdin on a blocking thread).
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

fn run(rt: &tokio::runtime::Runtime, cli: Cli, slot: &mut Option<Session>) -> Result<()> {
    match cli.cmd {
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on any error writing (a closed pipe).
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "efs", &mut script);
            exit::out_bytes(&script);
            Ok(())
        }
        Command::Keygen { output, comment } => {
            keygen::run(&config::Dirs::from_env()?, output, comment)
        }
        cmd => {
            let session = slot.insert(Session::load()?);
            match cmd {
                Command::Shell { remote } => shell::run(rt, session, &remote),
                cmd => rt.block_on(dispatch(session, cmd, cli.quiet, cli.verbose)),
            }
        }
    }
}

async fn dispatch(session: &mut Session, cmd: Command, quiet: bool, verbose: bool) -> Result<()> {
    match cmd {
        Command::Remote(RemoteCmd::Add(args)) => remote::add(session, args).await,
        Command::Remote(RemoteCmd::List { json }) => remote::list(session, json),
        Command::Remote(RemoteCmd::Remove { name }) => remote::remove(session, &name),
        Command::Cp(args) => {
            until_signalled(
                copy::run(session, args, quiet, verbose),
                "files being copied were abandoned (those done are kept)".to_owned(),
            )
            .await
        }
        Command::Ls {
            long,
            recursive,
            json,
            paths,
        } => commands::ls(session, &paths, long, recursive, json).await,
        Command::Stat { json, paths } => commands::stat(session, &paths, json).await,
        Command::Cat { paths } => commands::cat(session, &paths).await,
        Command::Put {
            content_type,
            if_match,
            no_clobber,
            json,
            path,
        } => commands::put(session, &path, content_type, if_match, no_clobber, json).await,
        Command::Rm {
            recursive,
            force,
            paths,
        } => commands::rm(session, &paths, recursive, force, verbose).await,
        Command::Mv { force, paths } => commands::mv(session, &paths, force).await,
        Command::Mkdir { parents, paths } => commands::mkdir(session, &paths, parents).await,
        Command::Token { json, remote } => commands::token(session, &remote, json).await,
        Command::Tar(args) => {
            let what = format!(
                "the unfinished archive was removed; {} is kept as it was, if it existed",
                args.output.display()
            );
            until_signalled(tar::tar(session, args, quiet, verbose), what).await
        }
        Command::Untar(args) => tar::untar(session, args, quiet, verbose).await,
        Command::Keygen { .. } | Command::Completions { .. } | Command::Shell { .. } => {
            unreachable!("handled before the runtime")
        }
    }
}

/// Runs `op` unless SIGINT, SIGTERM or SIGHUP comes first; then `op` is dropped, which
/// removes its unfinished output (a download's temporary file, which holds decrypted data and
/// which a later upload would otherwise find; `efs tar`'s unfinished archive), and the exit
/// code says which signal it was; the message ends with `what`, what became of the
/// command's output.
async fn until_signalled(
    op: impl std::future::Future<Output = Result<()>>,
    what: String,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    // A handler for SIGHUP would replace the `SIG_IGN` that `nohup efs cp …` relies on to
    // outlive its terminal: installed only when the signal is not ignored already.
    let mut hup = if hangup_ignored() {
        None
    } else {
        Some(signal(SignalKind::hangup())?)
    };
    let hangup = async {
        match hup.as_mut() {
            Some(h) => h.recv().await,
            None => std::future::pending().await,
        }
    };
    let stopped = |code, name| exit::fail(code, format!("{name}: stopped; {what}"));
    tokio::select! {
        r = op => r,
        _ = int.recv() => Err(stopped(exit::INTERRUPTED, "interrupted")),
        _ = term.recv() => Err(stopped(exit::TERMINATED, "terminated")),
        _ = hangup => Err(stopped(exit::HANGUP, "hang-up")),
    }
}

/// Whether this process inherited SIGHUP as ignored (`nohup`), read from the `SigIgn` mask of
/// `/proc/self/status` (asking `sigaction` would take unsafe code). Where that file cannot be
/// read, the signal counts as ignored: better a part file left behind than a `nohup` run
/// killed by the hang-up it was started to survive.
fn hangup_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    sighup_in_mask(&status).unwrap_or(true)
}

/// The SIGHUP bit (signal 1: the lowest bit) of the `SigIgn:` line of a `/proc/PID/status`.
fn sighup_in_mask(status: &str) -> Option<bool> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))?
        .trim();
    let low = u64::from_str_radix(mask.get(mask.len().saturating_sub(16)..)?, 16).ok()?;
    Some(low & 1 == 1)
}

/// Prints `efs: error: …` and the hint, and returns the exit code.
/// A stderr that cannot be written (the terminal of a hang-up answers EIO) loses the
/// message, not the exit code: `eprintln!` would panic (exit 101).
fn report(err: &anyhow::Error) -> ExitCode {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(
        stderr,
        "efs: error: {}",
        exit::without_docs_links(&format!("{err:#}"))
    );
    if let Some(hint) = exit::hint_of(err) {
        let _ = writeln!(stderr, "efs: hint: {hint}");
    }
    ExitCode::from(exit::code_of(err))
}

/// Logs go to stderr: efs's own warnings by default (`-v`: its info messages too), never
/// those of the libraries it uses (rustls logs a refused certificate as an error, which efs
/// reports itself, better); `EFS_LOG` (a tracing filter, e.g. `debug`) shows more. Colour
/// only on a terminal.
fn init_tracing(verbose: bool) {
    use std::io::IsTerminal;
    let default = if verbose {
        "efs=info,efs_client=info"
    } else {
        "efs=warn,efs_client=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::sighup_in_mask;

    #[test]
    fn the_sighup_bit_is_read_from_the_ignored_mask() {
        let nohup = "Name:\tefs\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000001\n";
        assert_eq!(sighup_in_mask(nohup), Some(true));
        let plain = "SigPnd:\t0000000000000001\nSigIgn:\t0000000000001000\nSigCgt:\t1\n";
        assert_eq!(sighup_in_mask(plain), Some(false));
        assert_eq!(sighup_in_mask("SigIgn:\t1\n"), Some(true));
        assert_eq!(sighup_in_mask("SigIgn:\tzz\n"), None);
        assert_eq!(sighup_in_mask("Name:\tefs\n"), None);
    }
}
