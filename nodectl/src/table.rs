//! A minimal aligned-table printer: every column padded to its widest cell,
//! two spaces between columns, no trailing blanks. Enough for `kubectl`-like
//! output without pulling in a table crate.

/// Rows of cells under an optional header.
#[derive(Debug, Default, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

const GAP: &str = "  ";

impl Table {
    /// A table with these column titles.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// A header-less table (key/value listings).
    pub fn headless() -> Self {
        Self::default()
    }

    /// Appends a row; rows may be shorter or longer than the header.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let lines = self.lines();
        let widths = column_widths(&lines);
        let mut out = String::new();
        for line in lines {
            out.push_str(&render_line(line, &widths));
            out.push('\n');
        }
        out
    }

    fn lines(&self) -> Vec<&[String]> {
        let header = (!self.header.is_empty()).then_some(self.header.as_slice());
        header
            .into_iter()
            .chain(self.rows.iter().map(Vec::as_slice))
            .collect()
    }
}

/// Width of a cell as a terminal shows it, near enough: one column per char.
fn width(cell: &str) -> usize {
    cell.chars().count()
}

fn column_widths(lines: &[&[String]]) -> Vec<usize> {
    let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
    (0..columns)
        .map(|c| {
            lines
                .iter()
                .filter_map(|l| l.get(c))
                .map(|cell| width(cell))
                .max()
                .unwrap_or(0)
        })
        .collect()
}

fn render_line(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push_str(GAP);
        }
        line.push_str(cell);
        let pad = widths
            .get(i)
            .copied()
            .unwrap_or(0)
            .saturating_sub(width(cell));
        line.extend(std::iter::repeat_n(' ', pad));
    }
    line.truncate(line.trim_end().len());
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let mut t = Table::new(["NAME", "CPU", "STATE"]);
        t.row(["web", "500m", "RUNNING"]);
        t.row(["database-1", "2000m", "STOPPED"]);
        assert_eq!(
            t.render(),
            "NAME        CPU    STATE\n\
             web         500m   RUNNING\n\
             database-1  2000m  STOPPED\n"
        );
    }

    #[test]
    fn no_trailing_blanks_and_ragged_rows_are_fine() {
        let mut t = Table::headless();
        t.row(["key", ""]);
        t.row(["a-longer-key", "value", "extra"]);
        assert_eq!(t.render(), "key\na-longer-key  value  extra\n");
    }

    #[test]
    fn non_ascii_cells_count_characters() {
        let mut t = Table::new(["A", "B"]);
        t.row(["é", "x"]);
        t.row(["ab", "y"]);
        assert_eq!(t.render(), "A   B\né   x\nab  y\n");
    }

    #[test]
    fn an_empty_table_prints_only_its_header() {
        let t = Table::new(["ID", "NAME"]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "ID  NAME\n");
        assert_eq!(Table::headless().render(), "");
    }
}
