//! `efs shell NAME`: the seed's interactive shell (`efsc`), on one remote — help, post, get,
//! ls, cd, pwd, rm, mkdir, mv, stat, clear-cache, stop — with line editing, history and Tab
//! completion of remote paths (rustyline).
//!
//! The REPL runs on the main thread, outside the runtime: each command is one
//! `block_on`, and the completer lists directories through the runtime's handle. `get`
//! keeps a decrypted copy in a cache directory of this shell only
//! (`$XDG_CACHE_HOME/efs/shell-PID/`), which `clear-cache` empties and the end of the shell
//! removes: decrypted copies do not outlive the session.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use efs_client::{Client, EntryType, PutOptions};
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};

use crate::commands::{list_or_file, long_line};
use crate::config;
use crate::copy::{guess_content_type, human_bytes};
use crate::exit::{self, outln};
use crate::location;
use crate::session::Session;

const HELP: &str = "\
post PATH [LOCAL]     create or replace the file at PATH with LOCAL's content, or with what
                      you paste (end with Ctrl-D on a line of its own; Ctrl-C cancels)
get PATH [LOCAL]      get the file at PATH: print it (text up to 1 MiB), or save it to
                      LOCAL; a copy stays in the local cache until the shell ends
ls [-l] [PATH]        list a directory
cd [PATH]             change directory (no PATH: /)
pwd                   print the current directory
stat PATH             type, size, time, ETag, content type
mkdir PATH            create a directory (and its parents)
mv FROM TO            move or rename
rm [-r] PATH          remove a file, or a directory with -r
clear-cache           delete the decrypted local copies of files (the cache)
help                  this help
stop, exit, quit      leave (Ctrl-D too)
Ctrl-C interrupts a running command; Tab completes remote paths.";

const COMMANDS: &[&str] = &[
    "cd",
    "clear-cache",
    "exit",
    "get",
    "help",
    "ls",
    "mkdir",
    "mv",
    "post",
    "pwd",
    "quit",
    "rm",
    "stat",
    "stop",
];

/// Files larger than this are not printed by `get` (they stay in the cache).
const PRINT_MAX: u64 = 1 << 20;

pub(crate) fn run(rt: &tokio::runtime::Runtime, session: &Session, name: &str) -> Result<()> {
    let name = name.strip_suffix(':').unwrap_or(name);
    let remote = session.remote(name)?.clone();
    let client = rt.block_on(session.client(name))?;
    // Log in now: a wrong key or an untrusted certificate shows before the prompt.
    let token = rt
        .block_on(client.token())
        .with_context(|| format!("connecting to remote '{name}'"))?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        outln!(
            "Connected to {} as {} (filesystem {}). Type help.",
            remote.url,
            remote.user,
            token.fs
        );
    }

    let cache = Cache::create()?;
    let cwd = Arc::new(Mutex::new("/".to_owned()));
    let helper = ShellHelper {
        handle: rt.handle().clone(),
        client: client.clone(),
        cwd: cwd.clone(),
        files: FilenameCompleter::new(),
    };
    let mut rl: Editor<ShellHelper, DefaultHistory> = Editor::with_config(
        rustyline::Config::builder()
            // Commands only: lines pasted for `post` stay out of the history.
            .auto_add_history(false)
            .max_history_size(1000)
            .context("history size")?
            .build(),
    )
    .context("starting the line editor")?;
    rl.set_helper(Some(helper));
    let history = session.dirs.history_file();
    if interactive {
        let _ = rl.load_history(&history);
    }

    let mut shell = Shell {
        rt,
        client,
        cwd,
        cache,
        interactive,
    };
    // Scripted (stdin not a terminal), the shell goes on after a failed command, as `sh`
    // does, and exits with the first failure's code: a script must not take a failed `post`
    // for a stored file.
    let mut failed: Option<(u8, usize)> = None;
    let mut note_failure = |code: u8| match &mut failed {
        Some((_, n)) => *n += 1,
        None => failed = Some((code, 1)),
    };
    loop {
        let prompt = format!("efs {name}:{}> ", shell.cwd());
        match rl.readline(&prompt) {
            Ok(line) => {
                if interactive && !line.trim().is_empty() {
                    let _ = rl.add_history_entry(line.as_str());
                }
                let words = match split_words(&line) {
                    Ok(w) => w,
                    Err(e) => {
                        eprintln!("error: {e}");
                        note_failure(exit::USAGE);
                        continue;
                    }
                };
                match shell.exec(&mut rl, &words) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop) => break,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        if let Some(h) = exit::hint_of(&e) {
                            eprintln!("hint: {h}");
                        }
                        note_failure(exit::code_of(&e));
                    }
                }
            }
            // Ctrl-C abandons the line, as in a shell.
            Err(ReadlineError::Interrupted) => {}
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading a command"),
        }
    }
    if interactive {
        if let Err(e) = save_history(&mut rl, &history) {
            eprintln!("efs: warning: the history was not saved: {e:#}");
        }
        outln!("Bye.");
    }
    match failed {
        Some((code, n)) if !interactive => Err(exit::fail(
            code,
            format!(
                "{n} command{} failed (the exit code is the first one's)",
                if n == 1 { "" } else { "s" }
            ),
        )),
        _ => Ok(()),
    }
}

fn save_history(rl: &mut Editor<ShellHelper, DefaultHistory>, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        config::create_private_dir(dir)?;
    }
    rl.save_history(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // Paths are personal data: the history is for this user only.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

enum Flow {
    Continue,
    Stop,
}

struct Shell<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: Client,
    cwd: Arc<Mutex<String>>,
    cache: Cache,
    interactive: bool,
}

impl Shell<'_> {
    fn cwd(&self) -> String {
        self.cwd.lock().expect("not poisoned").clone()
    }

    fn path(&self, arg: &str) -> String {
        location::resolve(&self.cwd(), arg)
    }

    /// Runs one request to its end, or until Ctrl-C, which abandons it and returns to the
    /// prompt (the shell stays).
    fn block<T, E>(&self, fut: impl std::future::Future<Output = Result<T, E>>) -> Result<T>
    where
        E: Into<anyhow::Error>,
    {
        self.rt.block_on(async {
            tokio::select! {
                r = fut => r.map_err(Into::into),
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            }
        })
    }

    fn exec(
        &mut self,
        rl: &mut Editor<ShellHelper, DefaultHistory>,
        words: &[String],
    ) -> Result<Flow> {
        let Some((cmd, args)) = words.split_first() else {
            return Ok(Flow::Continue);
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match (cmd.as_str(), args.as_slice()) {
            ("help" | "?", _) => outln!("{HELP}"),
            ("stop" | "exit" | "quit", _) => return Ok(Flow::Stop),
            ("pwd", []) => outln!("{}", self.cwd()),
            ("cd", []) => *self.cwd.lock().expect("not poisoned") = "/".to_owned(),
            ("cd", [dir]) => {
                let path = self.path(dir);
                if path != "/" {
                    let e = self
                        .block(self.client.stat(&path))
                        .with_context(|| format!("cd {path}"))?;
                    if e.kind != EntryType::Dir {
                        // A conflict, as `efs ls`/`efs cp` exit for a file where a directory
                        // is needed (it exited 1).
                        return Err(exit::fail(
                            exit::CONFLICT,
                            format!("{path} is not a directory"),
                        ));
                    }
                }
                *self.cwd.lock().expect("not poisoned") = path;
            }
            ("ls", rest) => self.ls(rest)?,
            ("stat", [p]) => {
                let path = self.path(p);
                let e = self.block(self.client.stat(&path))?;
                outln!("{}", long_line(&e, &path));
                if let Some(etag) = &e.etag {
                    outln!("etag: {etag}");
                }
                if let Some(ct) = &e.content_type {
                    outln!("content-type: {ct}");
                }
            }
            ("get", [p]) => self.get(p, None)?,
            ("get", [p, local]) => self.get(p, Some(Path::new(local)))?,
            ("post", [p]) => self.post_pasted(rl, p)?,
            ("post", [p, local]) => self.post_file(p, Path::new(local))?,
            ("rm", [p]) => self.rm(p, false)?,
            ("rm", ["-r", p]) => self.rm(p, true)?,
            ("mkdir", [p]) => {
                let path = self.path(p);
                self.block(self.client.mkdir(&path))?;
            }
            ("mv", [from, to_arg]) => {
                refuse_dot_segments("mv", from)?;
                let (from, mut to) = (self.path(from), self.path(to_arg));
                let to_is_dir =
                    matches!(self.block(self.client.stat(&to)), Ok(e) if e.kind == EntryType::Dir);
                if to_is_dir {
                    to = location::join(&to, location::basename(&from));
                } else if to_arg.ends_with('/') {
                    // As `efs mv`: a destination written as a directory must be one (a file
                    // was renamed to a mistyped directory's name); a directory is renamed.
                    let from_is_dir = matches!(self.block(self.client.stat(&from)), Ok(e) if e.kind == EntryType::Dir);
                    if !from_is_dir {
                        return Err(exit::fail(
                            exit::NOT_FOUND,
                            format!("{to} is not a directory: it does not exist"),
                        ));
                    }
                }
                // As `efs mv` says it: the server refuses it as a conflict, whose hint is
                // about a file where a directory is needed.
                if from == "/" {
                    return Err(exit::usage("the root directory cannot be moved"));
                }
                if location::is_below(&to, &from) {
                    return Err(exit::usage(format!(
                        "cannot move {from} into itself ({to})"
                    )));
                }
                self.block(self.client.rename(&from, &to, false))?;
            }
            ("clear-cache", []) => self.clear_cache(rl)?,
            (c, _) if COMMANDS.contains(&c) => {
                return Err(exit::usage(format!("wrong arguments for {c}: see help")));
            }
            (c, _) => return Err(exit::usage(format!("unknown command '{c}': type help"))),
        }
        Ok(Flow::Continue)
    }

    fn ls(&self, args: &[&str]) -> Result<()> {
        let (long, rest) = match args {
            ["-l", rest @ ..] => (true, rest),
            rest => (false, rest),
        };
        let path = match rest {
            [] => self.cwd(),
            [p] => self.path(p),
            _ => return Err(exit::usage("ls takes one path")),
        };
        let (_, entries) = self.block(list_or_file(&self.client, None, &path))?;
        for e in &entries {
            if long {
                outln!("{}", long_line(e, &e.name));
            } else if e.kind == EntryType::Dir {
                outln!("{}/", e.name);
            } else {
                outln!("{}", e.name);
            }
        }
        Ok(())
    }

    fn get(&self, arg: &str, local: Option<&Path>) -> Result<()> {
        let path = self.path(arg);
        if let Some(local) = local {
            let dest = if local.is_dir() {
                local.join(location::basename(&path))
            } else {
                local.to_path_buf()
            };
            // As `efs cp` downloads: a temporary file renamed into place, so the destination
            // is never truncated in place, a link at its name is replaced rather than
            // followed, a failure leaves it as it was, and a file it replaces keeps its
            // permissions (a new one is 0600).
            // Named by both ends: a missing remote file was reported as "writing LOCAL".
            let n = self
                .block(self.client.download_file(&path, &dest, None))
                .with_context(|| format!("getting {path} into {}", dest.display()))?;
            outln!("Saved {path} to {} ({}).", dest.display(), human_bytes(n));
            return Ok(());
        }
        let cached = self.cache.path_for(&path);
        if let Some(dir) = cached.parent() {
            config::create_private_dir(dir)?;
        }
        let n = self
            .block(self.client.download_file(&path, &cached, None))
            .with_context(|| format!("getting {path}"))?;
        match local {
            Some(_) => unreachable!("saved above"),
            None => {
                let printable = n <= PRINT_MAX && {
                    let data = std::fs::read(&cached)
                        .with_context(|| format!("reading {}", cached.display()))?;
                    match std::str::from_utf8(&data) {
                        Ok(text) => {
                            if !text.is_empty() {
                                outln!("{}", text.strip_suffix('\n').unwrap_or(text));
                            }
                            true
                        }
                        Err(_) => false,
                    }
                };
                if !printable {
                    // The cache goes with the shell (at once, for a scripted one): a copy
                    // that looked saved was lost. Said so, with how to keep one.
                    outln!(
                        "{path}: {} of binary or large content, not printed; a copy is in {} until the shell ends, which removes it (to keep the file: get {} LOCAL)",
                        human_bytes(n),
                        cached.display(),
                        escape_word(&path.to_string())
                    );
                }
            }
        }
        Ok(())
    }

    fn post_file(&self, arg: &str, local: &Path) -> Result<()> {
        let path = self.path(arg);
        let opts = PutOptions {
            content_type: guess_content_type(local).map(str::to_owned),
            ..PutOptions::default()
        };
        let e = self
            .block(self.client.upload_file(&path, local, opts))
            .with_context(|| format!("storing {} as {path}", local.display()))?;
        outln!("Encrypted and stored {path} ({}).", human_bytes(e.size));
        Ok(())
    }

    fn post_pasted(&self, rl: &mut Editor<ShellHelper, DefaultHistory>, arg: &str) -> Result<()> {
        let path = self.path(arg);
        if self.interactive {
            outln!("Paste content (end with Ctrl-D on a line of its own; Ctrl-C cancels):");
        }
        // Line by line through the editor: Ctrl-D on an empty line ends (Eof), Ctrl-C
        // cancels; from a pipe, the rest of the input is the content.
        let mut data = String::new();
        loop {
            match rl.readline("") {
                Ok(line) => {
                    data.push_str(&line);
                    data.push('\n');
                }
                Err(ReadlineError::Eof) => break,
                Err(ReadlineError::Interrupted) => {
                    outln!("Cancelled: nothing stored.");
                    return Ok(());
                }
                Err(e) => return Err(e).context("reading the content"),
            }
        }
        let opts = PutOptions {
            content_type: guess_content_type(Path::new(&path)).map(str::to_owned),
            ..PutOptions::default()
        };
        let n = data.len() as u64;
        self.block(self.client.put_bytes(&path, data.into_bytes().into(), opts))
            .with_context(|| format!("storing {path}"))?;
        outln!("Encrypted and stored {path} ({}).", human_bytes(n));
        Ok(())
    }

    fn rm(&self, arg: &str, recursive: bool) -> Result<()> {
        refuse_dot_segments("rm", arg)?;
        let path = self.path(arg);
        if path == "/" {
            bail!("refusing to remove the root directory");
        }
        if let Err(e) = self.block(self.client.delete(&path, recursive)) {
            // As `efs rm` says it: the generic hint of a conflict is about files and
            // directories in each other's place.
            if !recursive
                && matches!(e.downcast_ref::<efs_client::Error>(),
                    Some(efs_client::Error::Conflict(m)) if m.contains("not empty"))
            {
                return Err(exit::fail_hint(
                    exit::CONFLICT,
                    format!("cannot remove {path}: a directory that is not empty"),
                    "use rm -r to remove it with everything in it",
                ));
            }
            return Err(e.context(format!("removing {path}")));
        }
        let cached = self.cache.path_for(&path);
        let _ = std::fs::remove_file(&cached).or_else(|_| std::fs::remove_dir_all(&cached));
        Ok(())
    }

    fn clear_cache(&self, rl: &mut Editor<ShellHelper, DefaultHistory>) -> Result<()> {
        let question = format!(
            "`rm -rf {}/*` will be performed. Continue ? (y/N) : ",
            self.cache.dir.display()
        );
        if !self.interactive {
            // rustyline shows no prompt when reading from a pipe.
            // A closed stdout shows at the next line written (outln!), not here.
            let _ = write!(std::io::stdout(), "{question}");
            let _ = std::io::stdout().flush();
        }
        let answer = match rl.readline(&question) {
            Ok(a) => a,
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => String::new(),
            Err(e) => return Err(e).context("reading the answer"),
        };
        if !self.interactive {
            outln!();
        }
        if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            self.cache.clear()?;
            outln!("Cache cleared.");
        } else {
            outln!("Nothing deleted.");
        }
        Ok(())
    }
}

/// This shell's download cache, removed when the shell ends.
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn create() -> Result<Cache> {
        let parent = config::cache_home()?.join("efs");
        remove_abandoned(&parent);
        let dir = parent.join(format!("shell-{}", std::process::id()));
        config::create_private_dir(&dir)?;
        Ok(Cache { dir })
    }

    /// Where the copy of remote `path` goes: the same tree below the cache directory.
    fn path_for(&self, path: &str) -> PathBuf {
        self.dir.join(path.trim_start_matches('/'))
    }

    /// Empties the directory.
    fn clear(&self) -> Result<()> {
        for item in std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?
        {
            let item = item?;
            let p = item.path();
            if item.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("removing {}", p.display()))?;
        }
        Ok(())
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the caches (`shell-PID` below `parent`) of shells that ended without removing
/// theirs (SIGHUP, SIGTERM, a crash): decrypted copies must not outlive their shell. A
/// process is alive when `/proc/PID` exists; without `/proc` nothing can be told, so nothing
/// is removed. A PID reused since only keeps a dead shell's cache until the next start.
fn remove_abandoned(parent: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(items) = std::fs::read_dir(parent) else {
        return;
    };
    for item in items.flatten() {
        let name = item.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shell-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || proc.join(pid.to_string()).exists() {
            continue;
        }
        // remove_dir_all removes a link itself, never what it points to.
        match std::fs::remove_dir_all(item.path()) {
            Ok(()) => tracing::info!("removed the cache of an ended shell (PID {pid})"),
            Err(e) => tracing::warn!(
                "cannot remove {}, the cache of an ended shell: {e}",
                item.path().display()
            ),
        }
    }
}

/// Splits a command line into words: blanks separate, `'…'` and `"…"` quote, `\` escapes.
fn split_words(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                cur.push(chars.next().ok_or("a '\\' ends the line")?);
                in_word = true;
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("a quote is not closed");
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Escapes what [`split_words`] would split or unquote.
fn escape_word(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_whitespace() || matches!(c, '\\' | '\'' | '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Line editing support: Tab completes command names, remote paths, and the local file of
/// `get PATH LOCAL` / `post PATH LOCAL`.
struct ShellHelper {
    handle: tokio::runtime::Handle,
    client: Client,
    cwd: Arc<Mutex<String>>,
    files: FilenameCompleter,
}

impl ShellHelper {
    fn remote_candidates(&self, word: &str) -> Vec<Pair> {
        let (dir_part, prefix) = match word.rfind('/') {
            Some(i) => (&word[..=i], &word[i + 1..]),
            None => ("", word),
        };
        let cwd = self.cwd.lock().expect("not poisoned").clone();
        let dir = location::resolve(&cwd, if dir_part.is_empty() { "." } else { dir_part });
        let listed = self.handle.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), self.client.list(&dir)).await
        });
        let Ok(Ok(mut entries)) = listed else {
            return Vec::new();
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries
            .into_iter()
            .filter(|e| e.name.starts_with(prefix))
            .map(|e| {
                let is_dir = e.kind == EntryType::Dir;
                Pair {
                    display: if is_dir {
                        format!("{}/", e.name)
                    } else {
                        e.name.clone()
                    },
                    replacement: format!(
                        "{dir_part}{}{}",
                        escape_word(&e.name),
                        if is_dir { "/" } else { "" }
                    ),
                }
            })
            .collect()
    }
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map(|(i, c)| i + c.len_utf8())
            .unwrap_or(0);
        let word = &before[start..];
        let earlier: Vec<&str> = before[..start].split_whitespace().collect();
        let Some(cmd) = earlier.first() else {
            let cands = COMMANDS
                .iter()
                .filter(|c| c.starts_with(word))
                .map(|c| Pair {
                    display: (*c).to_owned(),
                    replacement: format!("{c} "),
                })
                .collect();
            return Ok((start, cands));
        };
        let positional = earlier[1..].iter().filter(|w| !w.starts_with('-')).count();
        if matches!(*cmd, "get" | "post") && positional == 1 {
            return self.files.complete(line, pos, ctx);
        }
        Ok((start, self.remote_candidates(word)))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

/// `rm` and `mv` take no `.` or `..` in what they act on, as `rm` refuses them: `rm -r
/// /a/b/..` would remove `/a` (`cd ..` and the other commands resolve them as usual). Such a
/// path is an invalid one, a usage error (exit 2), as everywhere else in `efs`.
fn refuse_dot_segments(cmd: &str, arg: &str) -> Result<()> {
    // An empty argument (`rm -r ''`) would resolve to the current directory.
    if arg.is_empty() {
        return Err(exit::usage(format!("{cmd}: refusing an empty path")));
    }
    if arg.split('/').any(|s| s == "." || s == "..") {
        return Err(exit::usage(format!(
            "{cmd}: refusing a path with '.' or '..' in it ({arg}): name what to {cmd} itself"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_like_a_shell() {
        assert_eq!(split_words("  ls  -l /a ").unwrap(), ["ls", "-l", "/a"]);
        assert_eq!(
            split_words(r#"get "/My Docs/a b.txt" 'x y' c\ d"#).unwrap(),
            ["get", "/My Docs/a b.txt", "x y", "c d"]
        );
        assert_eq!(split_words(r#"post "" x"#).unwrap(), ["post", "", "x"]);
        assert!(split_words("get 'open").is_err());
        assert!(split_words("get x\\").is_err());
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn escaped_words_split_back() {
        let name = "a b'c\"d\\e";
        assert_eq!(split_words(&escape_word(name)).unwrap(), [name]);
    }
}
