//! What a table bench measures: cells (GB/s over repetitions), rows and tables.

use serde::Serialize;

use crate::values::page_size_label;

/// A cell whose fastest sample is more than this many times its slowest is marked as noisy.
pub const NOISY: f64 = 1.25;

/// Where a cell's spread (max/min) is above this, comparisons use its minimum, not its median.
pub const SPREAD_TOLERATED: f64 = 1.10;

/// The mark after a noisy cell's median in tables.
pub const NOISY_MARK: char = '~';

/// One measured cell: GB/s over several repetitions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cell {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub samples: usize,
}

impl Cell {
    /// max / min: 1.0 for a steady cell (infinite when a sample measured nothing).
    pub fn spread(&self) -> f64 {
        if self.min > 0.0 {
            self.max / self.min
        } else {
            f64::INFINITY
        }
    }

    /// Whether the samples disagree by more than [`NOISY`].
    pub fn is_noisy(&self) -> bool {
        self.spread() > NOISY
    }

    /// The figure to compare against: the median, or the minimum where the spread is above
    /// [`SPREAD_TOLERATED`] (a noisy cell is held to what it surely reached).
    pub fn reference(&self) -> f64 {
        if self.spread() > SPREAD_TOLERATED {
            self.min
        } else {
            self.median
        }
    }
}

/// Which columns had noisy cells, per page size, for a note under the tables.
pub fn noise_note(tables: &[PageTable]) -> Option<String> {
    // Column name → "4K 3/13" per table where it had noisy cells, in first-seen order.
    let mut columns: Vec<(String, Vec<String>)> = Vec::new();
    for t in tables {
        for (c, name) in t.columns.iter().enumerate() {
            let noisy = t
                .rows
                .iter()
                .filter(|r| {
                    r.cells
                        .get(c)
                        .copied()
                        .flatten()
                        .is_some_and(|x| x.is_noisy())
                })
                .count();
            if noisy == 0 {
                continue;
            }
            let part = format!("{} {noisy}/{}", page_size_label(t.page_size), t.rows.len());
            match columns.iter_mut().find(|(n, _)| n == name) {
                Some((_, parts)) => parts.push(part),
                None => columns.push((name.clone(), vec![part])),
            }
        }
    }
    (!columns.is_empty()).then(|| {
        let named: Vec<String> = columns
            .iter()
            .map(|(name, parts)| format!("{name} ({})", parts.join(", ")))
            .collect();
        format!(
            "unstable columns, noisy rows of each table ({NOISY_MARK} marks cells whose max/min exceeds {NOISY}; min and max are in --json and --csv): {}",
            named.join("; ")
        )
    })
}

impl Cell {
    /// Summarises GB/s samples; `None` when there are none.
    pub fn from_samples(mut gbps: Vec<f64>) -> Option<Cell> {
        if gbps.is_empty() {
            return None;
        }
        gbps.sort_by(f64::total_cmp);
        let n = gbps.len();
        let median = if n % 2 == 1 {
            gbps[n / 2]
        } else {
            (gbps[n / 2 - 1] + gbps[n / 2]) / 2.0
        };
        Some(Cell {
            min: gbps[0],
            median,
            max: gbps[n - 1],
            samples: n,
        })
    }
}

/// A row: one migration size.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub pages: usize,
    /// One entry per column of the table; `None` where the column was not measured.
    pub cells: Vec<Option<Cell>>,
}

/// The table of one page size.
#[derive(Debug, Clone, Serialize)]
pub struct PageTable {
    pub page_size: usize,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_cells_are_marked_and_named() {
        let steady = Cell::from_samples(vec![10.0, 10.5, 11.0]);
        let noisy = Cell::from_samples(vec![4.0, 10.0, 12.0]);
        assert!(!steady.unwrap().is_noisy());
        assert!(noisy.unwrap().is_noisy());
        assert_eq!(noisy.unwrap().reference(), 4.0);
        assert_eq!(steady.unwrap().reference(), 10.5);
        let table = PageTable {
            page_size: 4096,
            columns: vec!["vanilla".into(), "nt".into()],
            rows: vec![
                Row {
                    pages: 1,
                    cells: vec![steady, noisy],
                },
                Row {
                    pages: 2,
                    cells: vec![steady, steady],
                },
            ],
        };
        let note = noise_note(std::slice::from_ref(&table)).unwrap();
        assert!(note.contains("nt (4K 1/2)"), "{note}");
        assert!(!note.contains("vanilla ("), "{note}");
        assert!(
            noise_note(&[PageTable {
                rows: vec![table.rows[1].clone()],
                ..table
            }])
            .is_none()
        );
    }

    #[test]
    fn cell_statistics() {
        let c = Cell::from_samples(vec![3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((c.min, c.median, c.max, c.samples), (1.0, 2.5, 10.0, 4));
        assert!(Cell::from_samples(vec![]).is_none());
    }
}
