//! How a script reports its progress, and how Studio reads it.
//!
//! Either way gives a fraction from 0 to 1 (`0.42`) or a percentage (`42%`):
//! - a line `STUDIO_PROGRESS=0.42` in the script's output (stdout or
//!   stderr; the last complete line wins; at most 256 bytes);
//! - `progress.json` in the checkpoint directory (`$STUDIO_CHECKPOINT_DIR`),
//!   `{"progress": 0.42}`, for scripts whose output is not theirs to shape.
//!
//! The worker records the last value on the job with its heartbeat;
//! `studio status --watch`, `studio run` and `studio ui` draw it.

/// The marker a progress line starts with.
pub const MARKER: &str = "STUDIO_PROGRESS=";
/// The file in the checkpoint directory.
pub const FILE: &str = "progress.json";
/// Largest `progress.json` read.
const FILE_LIMIT: u64 = 4096;

/// A value as a script writes it: `0.42` or `42%`, clamped to 0..=1;
/// `None` for anything else (a typo in a script never stops its job).
pub fn parse_value(v: &str) -> Option<f32> {
    let v = v.trim();
    let x = match v.strip_suffix('%') {
        Some(p) => p.trim().parse::<f32>().ok()? / 100.0,
        None => v.parse::<f32>().ok()?,
    };
    x.is_finite().then(|| x.clamp(0.0, 1.0))
}

/// Reads progress lines out of output as it comes, chunk by chunk, in
/// time proportional to the chunk: a line split between chunks is joined,
/// and a line still being written is not read until it ends.
#[derive(Debug, Default)]
pub struct Scanner {
    /// The start of the line being written (a progress line is short).
    line: Vec<u8>,
    /// The line being written is longer than [`Scanner::KEEP`]: not one.
    long: bool,
}

impl Scanner {
    /// Longest line read for a value.
    const KEEP: usize = 256;

    /// Feeds output; the value of the last progress line it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<f32> {
        let mut found = None;
        for part in chunk.split_inclusive(|b| *b == b'\n') {
            let (body, complete) = match part.strip_suffix(b"\n") {
                Some(b) => (b, true),
                None => (part, false),
            };
            if self.line.len() + body.len() <= Self::KEEP {
                self.line.extend_from_slice(body);
            } else {
                self.long = true;
            }
            if complete {
                if !self.long {
                    found = std::str::from_utf8(&self.line)
                        .ok()
                        .and_then(|l| l.trim_end_matches('\r').strip_prefix(MARKER))
                        .and_then(parse_value)
                        .or(found);
                }
                self.line.clear();
                self.long = false;
            }
        }
        found
    }
}

/// A script's progress from both sources, whichever spoke last: a new
/// progress line, or `progress.json` changed since it was last read (a file
/// that merely still holds an older value does not undo a newer line).
#[derive(Debug, Default)]
pub struct Reports {
    scanner: Scanner,
    /// What the file said when last read.
    file: Option<f32>,
    latest: Option<f32>,
}

impl Reports {
    /// Output as it comes; whether the progress changed.
    pub fn output(&mut self, chunk: &[u8]) -> bool {
        let found = self.scanner.feed(chunk);
        self.take(found)
    }

    /// Looks at `dir/progress.json` (see [`read_file`]); whether the
    /// progress changed.
    pub fn file(&mut self, dir: &std::path::Path, owner: Option<u32>) -> bool {
        let now = read_file(dir, owner);
        if now == self.file {
            return false;
        }
        self.file = now;
        self.take(now)
    }

    fn take(&mut self, found: Option<f32>) -> bool {
        match found {
            Some(p) if self.latest != Some(p) => {
                self.latest = Some(p);
                true
            }
            _ => false,
        }
    }

    /// The progress last reported, if any.
    pub fn latest(&self) -> Option<f32> {
        self.latest
    }
}

/// The progress in `dir/progress.json`, if the file is there and says one.
/// The script owns `dir`: neither it nor the file is followed if a link,
/// a FIFO or device is never opened (the worker reads this on the thread
/// that keeps the heartbeat), and, given an `owner`, only that uid's file
/// is read.
pub fn read_file(dir: &std::path::Path, owner: Option<u32>) -> Option<f32> {
    let bytes = crate::worker::jobfs::Dir::open(dir)
        .ok()?
        .read(std::path::Path::new(FILE), owner, FILE_LIMIT)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    match serde_json::from_str::<serde_json::Value>(&text)
        .ok()?
        .get("progress")?
    {
        serde_json::Value::Number(n) => parse_value(&n.to_string()),
        serde_json::Value::String(s) => parse_value(s),
        _ => None,
    }
}

/// A bar of `width` cells for `p` (0..=1), e.g. `[######    ]  60%`.
pub fn bar(p: f32, width: usize) -> String {
    let filled = ((p.clamp(0.0, 1.0) * width as f32).round() as usize).min(width);
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        " ".repeat(width - filled),
        p * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_fractions_or_percentages_clamped() {
        assert_eq!(parse_value("0.42"), Some(0.42));
        assert_eq!(parse_value(" 42% "), Some(0.42));
        assert_eq!(parse_value("1.5"), Some(1.0));
        assert_eq!(parse_value("-3"), Some(0.0));
        assert_eq!(parse_value("NaN"), None);
        assert_eq!(parse_value("half"), None);
        assert_eq!(parse_value(""), None);
    }

    #[test]
    fn the_last_complete_line_wins() {
        let last = |out: &[u8]| Scanner::default().feed(out);
        let out =
            b"epoch 1\nSTUDIO_PROGRESS=0.25\nloss 3\nSTUDIO_PROGRESS=0.5\r\nSTUDIO_PROGRESS=0.7";
        assert_eq!(last(out), Some(0.5), "0.7 has no newline yet");
        assert_eq!(last(b"STUDIO_PROGRESS=0.7\n"), Some(0.7));
        assert_eq!(last(b"no progress here\n"), None);
        assert_eq!(
            last(b"  STUDIO_PROGRESS=0.7\n"),
            None,
            "a marker mid-line is output"
        );
        assert_eq!(
            last(b"STUDIO_PROGRESS=x\nSTUDIO_PROGRESS=0.1\nSTUDIO_PROGRESS=oops\n"),
            Some(0.1)
        );
    }

    #[test]
    fn lines_split_between_chunks_are_joined() {
        let mut s = Scanner::default();
        assert_eq!(s.feed(b"epoch 1\nSTUDIO_PRO"), None);
        assert_eq!(s.feed(b"GRESS=0."), None, "not ended yet");
        assert_eq!(s.feed(b"6\nmore"), Some(0.6));
        assert_eq!(s.feed(b" output\n"), None);
        let long = format!("{}STUDIO_PROGRESS=0.9\n", "x".repeat(300));
        assert_eq!(s.feed(long.as_bytes()), None);
        let mut marker_after_long = "y".repeat(300).into_bytes();
        marker_after_long.extend_from_slice(b"\nSTUDIO_PROGRESS=0.8\n");
        assert_eq!(
            s.feed(&marker_after_long),
            Some(0.8),
            "a long line ends, the next is read"
        );
    }

    #[test]
    fn whichever_source_spoke_last_wins() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Reports::default();
        assert!(r.output(b"STUDIO_PROGRESS=0.25\n"));
        assert!(!r.file(d.path(), None), "no file: nothing changes");
        std::fs::write(d.path().join(FILE), r#"{"progress": 0.6}"#).unwrap();
        assert!(r.file(d.path(), None));
        assert_eq!(r.latest(), Some(0.6));
        assert!(r.output(b"STUDIO_PROGRESS=1\n"));
        assert!(
            !r.file(d.path(), None),
            "the file still says 0.6, which is older"
        );
        assert_eq!(r.latest(), Some(1.0));
        assert!(
            !r.output(b"STUDIO_PROGRESS=1\n"),
            "the same value is no change"
        );
    }

    #[test]
    fn the_file_says_a_number_or_a_string() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_file(d.path(), None), None);
        std::fs::write(d.path().join(FILE), r#"{"progress": 0.3, "epoch": 3}"#).unwrap();
        assert_eq!(read_file(d.path(), None), Some(0.3));
        std::fs::write(d.path().join(FILE), r#"{"progress": "80%"}"#).unwrap();
        assert_eq!(read_file(d.path(), None), Some(0.8));
        std::fs::write(d.path().join(FILE), "{not json").unwrap();
        assert_eq!(read_file(d.path(), None), None);
    }

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0.0, 10), "[          ]   0%");
        assert_eq!(bar(0.42, 10), "[####      ]  42%");
        assert_eq!(bar(1.0, 4), "[####] 100%");
    }
}
