//! How a script reports its progress, and how Studio reads it.
//!
//! Either way gives a fraction from 0 to 1 (`0.42`) or a percentage (`42%`):
//! - a line `STUDIO_PROGRESS=0.42` in the script's output (stdout or
//!   stderr; the last complete line wins);
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

/// The value of the last complete `STUDIO_PROGRESS=` line in `text`
/// (a line still being written, with no newline yet, is not read).
pub fn last_in_output(text: &[u8]) -> Option<f32> {
    let end = text.iter().rposition(|b| *b == b'\n')?;
    String::from_utf8_lossy(&text[..end])
        .lines()
        .rev()
        .find_map(|l| {
            l.trim_end_matches('\r')
                .strip_prefix(MARKER)
                .and_then(parse_value)
        })
}

/// The progress in `dir/progress.json`, if the file is there and says one.
pub fn read_file(dir: &std::path::Path) -> Option<f32> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(dir.join(FILE))
        .ok()?
        .take(FILE_LIMIT)
        .read_to_string(&mut text)
        .ok()?;
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
        let out =
            b"epoch 1\nSTUDIO_PROGRESS=0.25\nloss 3\nSTUDIO_PROGRESS=0.5\r\nSTUDIO_PROGRESS=0.7";
        assert_eq!(last_in_output(out), Some(0.5), "0.7 has no newline yet");
        assert_eq!(last_in_output(b"STUDIO_PROGRESS=0.7\n"), Some(0.7));
        assert_eq!(last_in_output(b"no progress here\n"), None);
        assert_eq!(
            last_in_output(b"  STUDIO_PROGRESS=0.7\n"),
            None,
            "a marker mid-line is output"
        );
        assert_eq!(
            last_in_output(b"STUDIO_PROGRESS=x\nSTUDIO_PROGRESS=0.1\nSTUDIO_PROGRESS=oops\n"),
            Some(0.1)
        );
    }

    #[test]
    fn the_file_says_a_number_or_a_string() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_file(d.path()), None);
        std::fs::write(d.path().join(FILE), r#"{"progress": 0.3, "epoch": 3}"#).unwrap();
        assert_eq!(read_file(d.path()), Some(0.3));
        std::fs::write(d.path().join(FILE), r#"{"progress": "80%"}"#).unwrap();
        assert_eq!(read_file(d.path()), Some(0.8));
        std::fs::write(d.path().join(FILE), "{not json").unwrap();
        assert_eq!(read_file(d.path()), None);
    }

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0.0, 10), "[          ]   0%");
        assert_eq!(bar(0.42, 10), "[####      ]  42%");
        assert_eq!(bar(1.0, 4), "[####] 100%");
    }
}
