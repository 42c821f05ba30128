//! The terminal, for the live views (`status --watch`, `run`'s progress
//! bar): its size, and a screen of our own that is given back as it was
//! on every way out (q, Ctrl-C, SIGTERM, an error, Ctrl-Z and `fg`).

use std::io::Write;

/// Columns and rows of the terminal on `fd`; `None` when it is not one.
pub fn size(fd: i32) -> Option<(usize, usize)> {
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

/// How wide a table printed on stdout may be: on a terminal, `COLUMNS`
/// when set (a number), else the terminal's width; into a pipe or a file,
/// no limit, whatever `COLUMNS` says (an exported one would otherwise cut
/// what grep reads), since what reads it wants every column.
pub fn width() -> Option<usize> {
    width_from(
        std::env::var("COLUMNS").ok().as_deref(),
        size(1).map(|(c, _)| c),
    )
}

fn width_from(columns: Option<&str>, terminal: Option<usize>) -> Option<usize> {
    let terminal = terminal?;
    Some(
        columns
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|c| *c > 0)
            .unwrap_or(terminal),
    )
}

/// A full-screen view: the alternate screen, no cursor, and keys read one
/// at a time without echo (signals such as Ctrl-C still work). Dropping it
/// gives the terminal back.
pub struct Screen {
    /// The input's settings before, when the input is a terminal.
    saved: Option<libc::termios>,
}

const ENTER: &[u8] = b"\x1b[?1049h\x1b[?25l";
const LEAVE: &[u8] = b"\x1b[?25h\x1b[?1049l";

impl Screen {
    pub fn enter() -> Screen {
        let mut s = Screen { saved: None };
        s.resume();
        s
    }

    /// Takes the terminal (again, after a stop).
    pub fn resume(&mut self) {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) == 1 && libc::tcgetattr(0, &mut t) == 0 {
                self.saved = Some(t);
                t.c_lflag &= !(libc::ICANON | libc::ECHO);
                t.c_cc[libc::VMIN] = 1;
                t.c_cc[libc::VTIME] = 0;
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(ENTER);
        let _ = out.flush();
    }

    /// Gives the terminal back as it was.
    pub fn suspend(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(LEAVE);
        let _ = out.flush();
        if let Some(t) = self.saved.take() {
            // SAFETY: restores the settings read in `resume`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }

    /// Draws `lines` over the previous frame: each line cleared to its end,
    /// anything below the last cleared, in one write (no flicker). Lines
    /// are cut to `cols` so none wraps and moves the frame.
    pub fn draw(&self, lines: &[String], cols: usize, rows: usize) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(4096);
        frame.extend_from_slice(b"\x1b[H");
        for (i, l) in lines.iter().take(rows).enumerate() {
            if i > 0 {
                frame.extend_from_slice(b"\r\n");
            }
            frame.extend_from_slice(cut(l, cols).as_bytes());
            frame.extend_from_slice(b"\x1b[K");
        }
        frame.extend_from_slice(b"\x1b[J");
        let mut out = std::io::stdout().lock();
        out.write_all(&frame)?;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.suspend();
    }
}

/// `s` cut to `cols` characters.
pub fn cut(s: &str, cols: usize) -> &str {
    match s.char_indices().nth(cols) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Stops this process the way Ctrl-Z would have (after the caller gave
/// the terminal back); returns when it is continued.
pub fn stop_self() {
    // SAFETY: raising a signal at ourselves.
    unsafe {
        libc::raise(libc::SIGSTOP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_by_characters() {
        assert_eq!(cut("abcdef", 3), "abc");
        assert_eq!(cut("ab", 3), "ab");
        assert_eq!(cut("ééé", 2), "éé");
    }

    #[test]
    fn width_is_columns_then_the_terminal_then_none() {
        assert_eq!(width_from(Some("120"), Some(80)), Some(120));
        assert_eq!(width_from(Some("x"), Some(80)), Some(80));
        assert_eq!(width_from(Some("0"), None), None);
        assert_eq!(
            width_from(Some("40"), None),
            None,
            "a pipe gets every column"
        );
        assert_eq!(width_from(None, None), None);
    }
}
