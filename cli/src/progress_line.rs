//! The progress bar a waiting `run` keeps under the script's output.

use crate::term;
use studio_core::progress;

/// The progress bar a waiting `run` keeps under the script's output, on
/// the terminal's last line (stderr, so stdout never gets it).
/// It is cleared before anything else is written there, and drawn again
/// only where a line starts, so it never splits the script's output.
pub(crate) struct ProgressLine {
    pub(crate) on: bool,
    shown: Option<f32>,
    /// Whether the script's output ends at a line's start (stdout on the
    /// same terminal), so the bar can go below it.
    at_line_start: bool,
    stdout_tty: bool,
}

impl ProgressLine {
    pub(crate) fn new() -> ProgressLine {
        use std::io::IsTerminal;
        // Into a pipe, what reads it (`| tee log`) may print on this same
        // terminal at any moment, in the middle of the bar: no bar then.
        // A file or a terminal is fine.
        let stdout_pipe = {
            // SAFETY: fstat on fd 1 into a stat we own.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let ok = unsafe { libc::fstat(1, &mut st) } == 0;
            ok && matches!(st.st_mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFSOCK)
        };
        ProgressLine {
            on: std::io::stderr().is_terminal() && !stdout_pipe,
            shown: None,
            at_line_start: true,
            stdout_tty: std::io::stdout().is_terminal(),
        }
    }

    pub(crate) fn clear(&mut self) {
        if self.shown.take().is_some() {
            eprint!("\r\x1b[2K");
        }
    }

    pub(crate) fn after_output(&mut self, bytes: &[u8]) {
        if let Some(last) = bytes.last() {
            self.at_line_start = *last == b'\n';
        }
    }

    pub(crate) fn show(&mut self, p: Option<f32>) {
        let Some(p) = p.filter(|_| self.on) else {
            return;
        };
        if self.shown == Some(p) || (self.stdout_tty && !self.at_line_start) {
            return;
        }
        let cols = term::size(2).map_or(80, |(c, _)| c);
        let line = format!("{} studio: running", progress::bar(p, 30));
        eprint!("\r\x1b[2K{}", term::cut(&line, cols.saturating_sub(1)));
        self.shown = Some(p);
    }
}
