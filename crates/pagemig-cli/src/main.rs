//! The `pagemig` command.
fn main() {}
