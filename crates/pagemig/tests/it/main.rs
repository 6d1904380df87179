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
