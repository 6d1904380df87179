//! Criterion benchmarks of the copy engines.
fn main() {}
