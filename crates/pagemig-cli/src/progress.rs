//! The progress bar of every long measurement (benches, calibration), on stderr.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `steps` steps; hidden when stderr is not a terminal.
pub fn progress_bar(steps: u64) -> ProgressBar {
    ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("valid progress template"),
    )
}
