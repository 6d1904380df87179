//! PNG plots of bench reports: GB/s against pages per migration, one line per column.

use std::path::Path;
use std::sync::Once;

use anyhow::anyhow;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::table::PageTable;
use crate::values::page_size_label;

/// plotters draws text with a registered font; DejaVu Sans is compiled in, so drawing needs no
/// font installed on the machine.
fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is valid TrueType, so registration cannot fail.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws `tables` of the bench named `bench`, measured in `unit`, one panel per table.
pub fn draw(bench: &str, unit: &str, tables: &[PageTable], path: &Path) -> anyhow::Result<()> {
    register_fonts();
    let panels = tables.len().max(1);
    let root = BitMapBackend::new(path, (640 * panels as u32, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((1, panels));
    for (table, area) in tables.iter().zip(areas) {
        let max_pages = table.rows.iter().map(|r| r.pages).max().unwrap_or(1).max(2);
        let max_gbps = table
            .rows
            .iter()
            .flat_map(|r| r.cells.iter().flatten().map(|c| c.median))
            .fold(0.0f64, f64::max)
            .max(0.1)
            * 1.1;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "bench {}: {} pages",
                    bench,
                    page_size_label(table.page_size)
                ),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((1u32..max_pages as u32).log_scale(), 0.0..max_gbps)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("pages per migration")
            .y_desc(unit)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, column) in table.columns.iter().enumerate() {
            let color = Palette99::pick(i).stroke_width(2);
            let points: Vec<(u32, f64)> = table
                .rows
                .iter()
                .filter_map(|r| Some((r.pages as u32, r.cells.get(i).copied().flatten()?.median)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color))
                .map_err(|e| anyhow!("{e}"))?
                .label(column.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
