//! Writing results: stdout that survives a closed pipe, aligned tables, and the one JSON
//! document that `--json` promises.

use std::io::{self, Write};

use crate::fail::CliError;

/// Buffered stdout. A closed pipe (`credit-ledger export ... | head`) ends the program
/// quietly instead of panicking, the way Unix tools behave.
pub struct Out {
    inner: io::BufWriter<io::Stdout>,
}

impl Out {
    pub fn new() -> Self {
        Out {
            inner: io::BufWriter::new(io::stdout()),
        }
    }

    /// Write one line.
    pub fn line(&mut self, text: impl AsRef<str>) -> Result<(), CliError> {
        let r = self
            .inner
            .write_all(text.as_ref().as_bytes())
            .and_then(|()| self.inner.write_all(b"\n"));
        r.map_err(CliError::from_io)
    }

    /// Write `value` as one JSON document.
    pub fn json(&mut self, value: &serde_json::Value) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| CliError::internal(format!("cannot encode JSON: {e}")))?;
        self.line(text)
    }

    /// Write `value` as one compact JSON line (for `export --format jsonl`).
    pub fn json_line(&mut self, value: &serde_json::Value) -> Result<(), CliError> {
        let text = serde_json::to_string(value)
            .map_err(|e| CliError::internal(format!("cannot encode JSON: {e}")))?;
        self.line(text)
    }

    pub fn flush(&mut self) -> Result<(), CliError> {
        self.inner.flush().map_err(CliError::from_io)
    }
}

/// Text from the ledger (titles, messages, memos) made safe for one table cell: control
/// characters become `\n`-style escapes, so a stored message cannot break the layout.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Column alignment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// An aligned text table.
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Table {
            headers: columns.iter().map(|(h, _)| h.to_string()).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| clean(&c)).collect());
    }

    /// The table as lines: a header, then the rows, columns separated by two spaces.
    pub fn render(&self) -> Vec<String> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let fmt = |cells: &[String]| {
            let mut line = String::new();
            for (i, (width, align)) in widths.iter().zip(&self.align).enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                let pad = width.saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        if i + 1 < n {
                            line.push_str(&" ".repeat(pad));
                        }
                    }
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                }
            }
            line.trim_end().to_string()
        };
        let mut lines = vec![fmt(&self.headers)];
        lines.extend(self.rows.iter().map(|r| fmt(r)));
        lines
    }

    pub fn print(&self, out: &mut Out) -> Result<(), CliError> {
        for l in self.render() {
            out.line(l)?;
        }
        Ok(())
    }
}

/// Label/value pairs, labels padded to one width: the credit summary layout.
pub fn pairs(out: &mut Out, indent: &str, rows: &[(&str, String)]) -> Result<(), CliError> {
    let w = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    for (label, value) in rows {
        out.line(format!("{indent}{label:<w$}  {}", clean(value)))?;
    }
    Ok(())
}

/// `1234567` as `1,234,567`, for reports.
pub fn thousands(n: u128) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A signed amount as people read it: `+12`, `-12`.
pub fn signed(n: i64) -> String {
    if n > 0 {
        format!("+{n}")
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_escape() {
        let mut t = Table::new(&[
            ("id", Align::Right),
            ("title", Align::Left),
            ("n", Align::Right),
        ]);
        t.row(vec!["7".into(), "Quick Video".into(), "-12".into()]);
        t.row(vec!["12".into(), "a\nb".into(), "+100".into()]);
        let lines = t.render();
        assert_eq!(lines[0], "id  title           n");
        assert_eq!(lines[1], " 7  Quick Video   -12");
        assert_eq!(lines[2], "12  a\\nb         +100");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(signed(12), "+12");
        assert_eq!(signed(-12), "-12");
        assert_eq!(signed(0), "0");
    }
}
