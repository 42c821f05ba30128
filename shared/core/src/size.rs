//! Size strings as Studio users write them: `16g`, `3.75 GiB`, `512Mb`.
//!
//! Every unit is a binary multiple (1k = 1024 bytes, 1g = 1 GiB), whatever
//! its spelling: `Gb`, `GB` and `GiB` all mean GiB, as in the original Studio.
//! That is why this parser is hand-written: `bytesize` reads `GB` as 10^9.

use thiserror::Error;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    #[error("empty size: give a number and a unit, e.g. 16g")]
    Empty,
    #[error("size '{0}' has no unit: add a unit, e.g. {0}g")]
    NoUnit(String),
    #[error("'{0}' is not a size: expected a number and a unit, e.g. 16g")]
    NotANumber(String),
    #[error("unknown unit '{unit}' in '{input}': use k, m, g or t (all binary, 1g = 1 GiB)")]
    UnknownUnit { input: String, unit: String },
    #[error("size '{0}' must be greater than zero")]
    NotPositive(String),
    #[error("size '{0}' is too large")]
    TooLarge(String),
}

/// Parses a size into bytes, rounding a fractional byte count up.
///
/// # Errors
/// [`SizeError`] for an empty string, a bare number, an unknown unit, a
/// value that is zero, negative or not a number, or one past 2^62 bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    if s.starts_with('-') {
        return Err(SizeError::NotPositive(s.to_string()));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    if number.is_empty() || number.starts_with('+') {
        return Err(SizeError::NotANumber(s.to_string()));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| SizeError::NotANumber(s.to_string()))?;
    if unit.is_empty() {
        return Err(SizeError::NoUnit(number.to_string()));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(SizeError::UnknownUnit {
                input: s.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    let bytes = (value * multiplier as f64).ceil();
    if !bytes.is_finite() || bytes > (1u64 << 62) as f64 {
        return Err(SizeError::TooLarge(s.to_string()));
    }
    if bytes <= 0.0 {
        return Err(SizeError::NotPositive(s.to_string()));
    }
    Ok(bytes as u64)
}

/// Rounds a byte count up to a whole number of `step` bytes.
pub fn round_up(bytes: u64, step: u64) -> u64 {
    bytes.div_ceil(step) * step
}

/// A byte count for people: `0 B`, `812 B`, `4.0 KiB`, `101 MiB`,
/// `1.2 GiB` (three significant figures at most).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ if v >= 100.0 => format!("{v:.0} {}", UNITS[unit]),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

/// The value of the first `NAME: N kB` line of a `/proc` file
/// (`/proc/meminfo`, `status`, `smaps_rollup`), in KiB.
pub fn proc_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Formats mebibytes the way users write them: `16g`, `1.25g`, `512m`.
pub fn format_mib(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{}g", mib / 1024)
    } else if mib >= 1024 {
        format!("{}g", (mib as f64 / 1024.0 * 1000.0).round() / 1000.0)
    } else {
        format!("{mib}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(812), "812 B");
        assert_eq!(format_bytes(4096), "4.0 KiB");
        assert_eq!(format_bytes(101 * 1024 * 1024 + 5), "101 MiB");
        assert_eq!(format_bytes(1288490188), "1.2 GiB");
    }

    #[test]
    fn accepts_every_documented_unit_in_any_case_with_or_without_space() {
        let k = 1u64 << 10;
        let cases: &[(&str, u64)] = &[
            ("1k", k),
            ("1kb", k),
            ("1KiB", k),
            ("1 K", k),
            ("2m", 2 * MIB),
            ("2M", 2 * MIB),
            ("2Mb", 2 * MIB),
            ("2MB", 2 * MIB),
            ("2MiB", 2 * MIB),
            ("2 mib", 2 * MIB),
            ("16g", 16 * GIB),
            ("16G", 16 * GIB),
            ("16Gb", 16 * GIB),
            ("16GB", 16 * GIB),
            ("16GiB", 16 * GIB),
            ("16 GiB", 16 * GIB),
            ("16gib", 16 * GIB),
            ("1t", 1 << 40),
            ("1T", 1 << 40),
            ("1TiB", 1 << 40),
            ("1 tb", 1 << 40),
            ("3.75g", 3 * GIB + 3 * GIB / 4),
            ("0.5g", GIB / 2),
            (" 8g ", 8 * GIB),
            ("1.5k", 1536),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), Ok(*want), "input {input:?}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_size_with_a_reason() {
        let cases: &[(&str, SizeError)] = &[
            ("", SizeError::Empty),
            ("   ", SizeError::Empty),
            ("16", SizeError::NoUnit("16".into())),
            ("3.5", SizeError::NoUnit("3.5".into())),
            ("lots", SizeError::NotANumber("lots".into())),
            ("g", SizeError::NotANumber("g".into())),
            ("1.2.3g", SizeError::NotANumber("1.2.3g".into())),
            ("+4g", SizeError::NotANumber("+4g".into())),
            ("-4g", SizeError::NotPositive("-4g".into())),
            ("0g", SizeError::NotPositive("0g".into())),
            ("0.0m", SizeError::NotPositive("0.0m".into())),
            (
                "16xb",
                SizeError::UnknownUnit {
                    input: "16xb".into(),
                    unit: "xb".into(),
                },
            ),
            (
                "16 bytes",
                SizeError::UnknownUnit {
                    input: "16 bytes".into(),
                    unit: "bytes".into(),
                },
            ),
            ("99999999999t", SizeError::TooLarge("99999999999t".into())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input).as_ref(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn bare_number_hint_names_the_fix() {
        let msg = parse_size("16").unwrap_err().to_string();
        assert!(msg.contains("add a unit, e.g. 16g"), "{msg}");
    }

    #[test]
    fn round_up_and_format() {
        assert_eq!(round_up(1, 256 * MIB), 256 * MIB);
        assert_eq!(round_up(256 * MIB, 256 * MIB), 256 * MIB);
        assert_eq!(round_up(256 * MIB + 1, 256 * MIB), 512 * MIB);
        assert_eq!(format_mib(16384), "16g");
        assert_eq!(format_mib(3840), "3.75g");
        assert_eq!(format_mib(512), "512m");
    }
}
