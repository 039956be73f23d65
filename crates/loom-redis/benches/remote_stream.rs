//! Remote stream benchmarks (see docs/performance.md).

fn main() {}
