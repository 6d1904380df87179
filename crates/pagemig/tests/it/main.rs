//! Integration tests of the pagemig library on this machine (no second NUMA node needed).

mod damon;
mod engines;
mod fake_sysfs;
mod fuzz;
mod placement;
mod policy;
mod pool;
mod queue;
mod topology;
mod workers;

use std::sync::{Arc, OnceLock};

use pagemig::workers::Workers;

/// The test binary's one worker set, shared by every test as a program shares its own.
fn workers() -> Arc<Workers> {
    static WORKERS: OnceLock<Arc<Workers>> = OnceLock::new();
    Arc::clone(WORKERS.get_or_init(|| Arc::new(Workers::new())))
}
