//! Column-aligned tables as kubectl prints them: upper-case headers, columns
//! three spaces apart, no trailing spaces, `<none>`-style placeholders left to
//! the caller.

/// A table of text cells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Between two columns, as kubectl's printers do.
const GAP: &str = "   ";

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every line ends in `\n`; each line is prefixed with `indent`.
    pub fn render_indented(&self, indent: &str) -> String {
        let width = |cell: &str| cell.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::from(indent);
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - width(cell)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn render(&self) -> String {
        self.render_indented("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell_and_lines_have_no_trailing_space() {
        let mut t = Table::new(&["name", "phase", "age"]);
        t.row(["auth", "Draining", "5m"]);
        t.row(["auth-es256", "Idle", ""]);
        assert_eq!(
            t.render(),
            "NAME         PHASE      AGE\n\
             auth         Draining   5m\n\
             auth-es256   Idle\n"
        );
    }

    #[test]
    fn short_rows_are_padded_and_long_rows_cut() {
        let mut t = Table::new(&["a", "b"]);
        t.row(["1"]);
        t.row(["2", "x", "dropped"]);
        assert_eq!(t.render_indented("  "), "  A   B\n  1\n  2   x\n");
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new(&["wait", "end"]);
        t.row(["≤10m", "x"]);
        t.row(["12s", "y"]);
        assert_eq!(t.render(), "WAIT   END\n≤10m   x\n12s    y\n");
    }

    #[test]
    fn a_table_without_rows_is_its_header() {
        let t = Table::new(&["kid"]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "KID\n");
    }
}
