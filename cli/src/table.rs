//! Output formats: aligned text tables, or JSON (`--output json`), and the
//! one way a table is fitted to a width (`status`, `status --watch`).

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

/// A column of a table that is fitted to a width: its header and its
/// cells in one or more forms, the widest first (a progress bar of 20
/// cells, of 10, a bare percentage).
pub(crate) struct Column {
    pub header: &'static str,
    /// `forms[f][row]`: every form has a cell for every row.
    pub forms: Vec<Vec<String>>,
}

impl Column {
    pub(crate) fn new(header: &'static str, cells: Vec<String>) -> Column {
        Column {
            header,
            forms: vec![cells],
        }
    }

    /// Adds a narrower form, used after a [`Step::Narrow`].
    pub(crate) fn or(mut self, cells: Vec<String>) -> Column {
        self.forms.push(cells);
        self
    }
}

/// What is given up, in order, while a table is wider than its width.
/// Columns no step drops are always there.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    /// Leave out this column (by header).
    Drop(&'static str),
    /// Use this column's next narrower form.
    Narrow(&'static str),
    /// Cut this column's cells to at most this many characters (`…`).
    Cut(&'static str, usize),
}

/// Separator between columns.
const GAP: usize = 2;

/// The lines of `columns` (headers first) within `width` characters, after
/// as few of `steps` (in their order) as it takes; `None`: no limit, every
/// column. Then the steps taken are undone, the latest first, wherever the
/// table still fits (ids shortened as a last resort leave room for what was
/// dropped before). A table still too wide when the steps are spent is left
/// so (its lines are not cut: what is left is what must be there).
pub(crate) fn fit(columns: Vec<Column>, steps: &[Step], width: Option<usize>) -> Vec<String> {
    let mut t = Fitting {
        form: vec![0; columns.len()],
        shown: vec![true; columns.len()],
        limit: vec![None; columns.len()],
        columns,
    };
    if let Some(width) = width {
        let mut taken = Vec::new();
        for step in steps {
            if t.total() <= width {
                break;
            }
            if let Some(undo) = t.apply(*step) {
                taken.push(undo);
            }
        }
        for undo in taken.into_iter().rev() {
            let redo = t.set(undo);
            if t.total() > width {
                t.set(redo);
            }
        }
    }
    t.lines()
}

/// A table being fitted: each column's form, whether it is shown, and
/// what its cells are cut to.
struct Fitting {
    columns: Vec<Column>,
    form: Vec<usize>,
    shown: Vec<bool>,
    limit: Vec<Option<usize>>,
}

/// One setting of one column.
#[derive(Clone, Copy)]
enum Setting {
    Shown(usize, bool),
    Form(usize, usize),
    Limit(usize, Option<usize>),
}

impl Fitting {
    fn at(&self, header: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.header == header)
    }

    /// Takes a step; the setting that undoes it.
    fn apply(&mut self, step: Step) -> Option<Setting> {
        Some(match step {
            Step::Drop(h) => self.set(Setting::Shown(self.at(h)?, false)),
            Step::Narrow(h) => {
                let i = self.at(h)?;
                let f = (self.form[i] + 1).min(self.columns[i].forms.len() - 1);
                self.set(Setting::Form(i, f))
            }
            Step::Cut(h, w) => {
                let i = self.at(h)?;
                let w = self.limit[i].map_or(w, |l| l.min(w));
                self.set(Setting::Limit(i, Some(w)))
            }
        })
    }

    /// Sets one setting; the one it replaced.
    fn set(&mut self, s: Setting) -> Setting {
        match s {
            Setting::Shown(i, v) => Setting::Shown(i, std::mem::replace(&mut self.shown[i], v)),
            Setting::Form(i, v) => Setting::Form(i, std::mem::replace(&mut self.form[i], v)),
            Setting::Limit(i, v) => Setting::Limit(i, std::mem::replace(&mut self.limit[i], v)),
        }
    }

    fn cell(&self, i: usize, row: usize) -> String {
        let v = &self.columns[i].forms[self.form[i]][row];
        match self.limit[i] {
            Some(w) if v.chars().count() > w => {
                let keep: String = v.chars().take(w.saturating_sub(1)).collect();
                format!("{keep}…")
            }
            _ => v.clone(),
        }
    }

    fn rows(&self) -> usize {
        self.columns.first().map_or(0, |c| c.forms[0].len())
    }

    fn width(&self, i: usize) -> usize {
        (0..self.rows())
            .map(|r| self.cell(i, r).chars().count())
            .chain([self.columns[i].header.chars().count()])
            .max()
            .unwrap_or(0)
    }

    fn total(&self) -> usize {
        let widths: Vec<usize> = (0..self.columns.len())
            .filter(|i| self.shown[*i])
            .map(|i| self.width(i))
            .collect();
        widths.iter().sum::<usize>() + GAP * widths.len().saturating_sub(1)
    }

    fn lines(&self) -> Vec<String> {
        let kept: Vec<usize> = (0..self.columns.len()).filter(|i| self.shown[*i]).collect();
        let mut table = vec![kept
            .iter()
            .map(|i| self.columns[*i].header.to_string())
            .collect::<Vec<_>>()];
        for r in 0..self.rows() {
            table.push(kept.iter().map(|i| self.cell(*i, r)).collect());
        }
        table_lines(&table)
    }
}

/// The shortest prefixes, at least `min` characters, that tell `ids`
/// apart (as git shortens hashes): the same order as `ids`.
pub(crate) fn unique_prefixes(ids: &[String], min: usize) -> Vec<String> {
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let common = |a: &str, b: &str| a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    ids.iter()
        .map(|id| {
            let i = sorted.binary_search(&id.as_str()).unwrap_or(0);
            let before = i.checked_sub(1).map_or(0, |j| common(sorted[j], id));
            let after = sorted.get(i + 1).map_or(0, |n| common(n, id));
            // One more character than any neighbour shares; a whole id
            // that is another's prefix stays whole.
            let n = (before.max(after) + 1).max(min);
            id.chars().take(n).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(h: &'static str, cells: &[&str]) -> Column {
        Column::new(h, cells.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn steps_are_taken_in_order_until_the_table_fits() {
        let cols = || {
            vec![
                col("ID", &["abcdef"]),
                col("SCRIPT", &["train.py --epochs 10"]),
                col("MACHINE", &["g4dn.xlarge"]),
                col("PROGRESS", &["[##########] 100%"]).or(vec!["100%".into()]),
            ]
        };
        let steps = [
            Step::Drop("MACHINE"),
            Step::Cut("SCRIPT", 10),
            Step::Narrow("PROGRESS"),
            Step::Drop("SCRIPT"),
        ];
        let all = fit(cols(), &steps, None);
        assert_eq!(
            all[1],
            "abcdef  train.py --epochs 10  g4dn.xlarge  [##########] 100%"
        );
        let w = fit(cols(), &steps, Some(50));
        assert_eq!(w[0], "ID      SCRIPT                PROGRESS");
        let w = fit(cols(), &steps, Some(38));
        assert_eq!(w[1], "abcdef  train.py …  [##########] 100%");
        let w = fit(cols(), &steps, Some(28));
        assert_eq!(w[1], "abcdef  train.py …  100%");
        let w = fit(cols(), &steps, Some(3));
        assert_eq!(
            w,
            ["ID      PROGRESS", "abcdef  100%"],
            "what must stay stays"
        );
    }

    #[test]
    fn what_a_later_step_made_room_for_comes_back() {
        let cols = vec![
            col(
                "ID",
                &["a-very-long-custom-id-1", "b-very-long-custom-id-2"],
            )
            .or(vec!["a".into(), "b".into()]),
            col("MACHINE", &["g4dn.xlarge", "local"]),
        ];
        let w = fit(cols, &[Step::Drop("MACHINE"), Step::Narrow("ID")], Some(20));
        assert_eq!(w, ["ID  MACHINE", "a   g4dn.xlarge", "b   local"]);
    }

    #[test]
    fn prefixes_are_the_shortest_unique_ones() {
        let ids: Vec<String> = ["01abc", "01abd", "01x", "zz"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(unique_prefixes(&ids, 2), ["01abc", "01abd", "01x", "zz"]);
        assert_eq!(unique_prefixes(&ids, 1)[3], "z");
        let ids = vec!["ab".to_string(), "abc".to_string()];
        assert_eq!(unique_prefixes(&ids, 1), ["ab", "abc"]);
    }
}
