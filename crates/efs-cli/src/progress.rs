//! Progress bars for copies: one per large file in flight and a total at the bottom, with
//! bytes, rate and ETA. Drawn on stderr, only when stdout and stderr are terminals and not
//! `-q`; otherwise everything here is a no-op and messages go straight to stderr (the `-v`
//! lines to stdout).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Files smaller than this get no bar of their own (thousands of tiny bars would only
/// flicker); they still count in the total.
const OWN_BAR_MIN: u64 = 1 << 20;

pub(crate) struct Progress {
    mp: MultiProgress,
    total: ProgressBar,
    visible: bool,
    files: u64,
    files_done: AtomicU64,
}

impl Progress {
    /// Progress for `files` files of `bytes` bytes in all; shown only on a terminal.
    pub fn new(quiet: bool, files: u64, bytes: u64) -> Arc<Progress> {
        let visible = !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let mp = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let total = mp.add(ProgressBar::new(bytes));
        total.set_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        if visible {
            // Keeps the rate and ETA moving while a large file has not reported progress.
            total.enable_steady_tick(Duration::from_millis(200));
        }
        let p = Progress {
            mp,
            total,
            visible,
            files,
            files_done: AtomicU64::new(0),
        };
        p.update_message();
        Arc::new(p)
    }

    /// A bar for one file (a hidden one for small files).
    pub fn file(self: &Arc<Self>, label: &str, size: u64) -> Arc<FileProgress> {
        let bar = if self.visible && size >= OWN_BAR_MIN {
            let bar = self.mp.insert_before(&self.total, ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template(
                    "  {wide_msg} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta:>3}",
                )
                .expect("a valid template"),
            );
            bar.set_message(label.to_owned());
            Some(bar)
        } else {
            None
        };
        Arc::new(FileProgress {
            parent: self.clone(),
            bar,
            sent: AtomicU64::new(0),
        })
    }

    /// A line above the bars (or on stderr when they are hidden).
    pub fn println(&self, msg: &str) {
        if self.visible {
            let _ = self.mp.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }

    /// A `-v` line (`copied A -> B`, `deleted X`): on stdout, as GNU `cp -v` and `rm -v` print
    /// theirs, with the bars (on stderr) taken away while it is written so that the two do not
    /// mix on one terminal. A reader that went away ends only these lines (see
    /// [`crate::exit::report_line`]), never the copy.
    pub fn verbose_line(&self, msg: &str) {
        if self.visible {
            self.mp.suspend(|| crate::exit::reportln!("{msg}"));
        } else {
            crate::exit::reportln!("{msg}");
        }
    }

    /// Replaces the "N/M files" message (when the number of files is not known up front).
    pub fn message(&self, msg: String) {
        self.total.set_message(msg);
    }

    pub fn finish(&self) {
        self.total.finish_and_clear();
    }

    fn update_message(&self) {
        let done = self.files_done.load(Ordering::Relaxed);
        self.total
            .set_message(format!("{done}/{} files", self.files));
    }
}

/// The progress of one file; [`FileProgress::callback`] is what the SDK calls.
pub(crate) struct FileProgress {
    parent: Arc<Progress>,
    bar: Option<ProgressBar>,
    /// Bytes of this file counted in the total so far (a retried transfer starts again
    /// from 0: the total goes back with it).
    sent: AtomicU64,
}

impl FileProgress {
    pub fn update(&self, n: u64) {
        let before = self.sent.swap(n, Ordering::Relaxed);
        if n >= before {
            self.parent.total.inc(n - before);
        } else {
            self.parent.total.dec(before - n);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(n);
        }
    }

    pub fn callback(self: &Arc<Self>) -> Arc<dyn Fn(u64) + Send + Sync> {
        let me = self.clone();
        Arc::new(move |n| me.update(n))
    }

    /// The file is done (`ok`: its whole size counts), or abandoned (it counts no more).
    pub fn finish(&self, ok: bool, size: u64) {
        self.update(if ok { size } else { 0 });
        if ok {
            self.parent.files_done.fetch_add(1, Ordering::Relaxed);
            self.parent.update_message();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            self.parent.mp.remove(bar);
        }
    }
}
