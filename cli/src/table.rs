//! Output formats: aligned text tables, or JSON (`--output json`).

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

pub(crate) fn print_table(rows: &[Vec<String>]) {
    for l in table_lines(rows) {
        println!("{l}");
    }
}

/// Rows as aligned lines (columns as wide as their widest cell).
pub(crate) fn table_lines(rows: &[Vec<String>]) -> Vec<String> {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect();
            line.join("  ").trim_end().to_string()
        })
        .collect()
}
