//! The `rimir-operator` binary.

fn main() {}
