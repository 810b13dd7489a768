//! Decision informed: the request path's clock (`runtime::clock::now`, the TSC moving a
//! per-thread anchor) instead of `Instant::now` (a vDSO `clock_gettime`). A call reads it about
//! five times. Where the kernel's clocksource is not `tsc`, `clock::now` is `Instant::now` and
//! both lines read the same.
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::runtime::clock;

fn reads(c: &mut Criterion) {
    clock::init();
    c.bench_function("clock/std_instant_now", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    c.bench_function("clock/runtime_clock_now", |b| {
        b.iter(|| black_box(clock::now()))
    });
}

criterion_group!(benches, reads);
criterion_main!(benches);
