//! Criterion micro-benchmarks of the copy engines: one batch of pages per iteration.
//!
//! `cargo bench -p pagemig --bench engines`; the seed tables come from `pagemig bench copy`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pagemig::copy::{CopyEngine, CopyOp, CpuEngine, EngineKind, Pool};
use pagemig::sys::{HUGE_PAGE_SIZE, Mapping};
use pagemig::workers::Workers;
use std::sync::Arc;

/// (page size, pages per batch)
const SHAPES: [(usize, usize); 4] = [(4096, 1), (4096, 512), (65536, 32), (HUGE_PAGE_SIZE, 16)];

fn engines(c: &mut Criterion) {
    let cpus: Vec<u32> = pagemig::sys::allowed_cpus().unwrap().iter().collect();
    let workers = Arc::new(Workers::new());
    let mut contenders: Vec<Box<dyn CopyEngine>> = EngineKind::ALL
        .into_iter()
        .filter_map(|k| CpuEngine::new(k).ok())
        .map(|e| Box::new(e) as Box<dyn CopyEngine>)
        .collect();
    contenders.push(Box::new(
        Pool::new(&workers, CpuEngine::new(EngineKind::Nt).unwrap(), &cpus).unwrap(),
    ));

    for (page, pages) in SHAPES {
        let bytes = page * pages;
        let mut src = Mapping::anonymous_aligned(bytes, HUGE_PAGE_SIZE).unwrap();
        let mut dst = Mapping::anonymous_aligned(bytes, HUGE_PAGE_SIZE).unwrap();
        src.as_mut_slice().fill(1);
        dst.as_mut_slice().fill(0);
        let mut group = c.benchmark_group(format!("copy/{}x{}K", pages, page >> 10));
        group.throughput(Throughput::Bytes(bytes as u64));
        for engine in &contenders {
            group.bench_function(BenchmarkId::from_parameter(engine.name()), |b| {
                b.iter(|| {
                    let ops: Vec<CopyOp<'_>> = src
                        .as_slice()
                        .chunks_exact(page)
                        .zip(dst.as_mut_slice().chunks_exact_mut(page))
                        .map(|(s, d)| CopyOp::new(s, d))
                        .collect();
                    engine.copy(&ops).unwrap()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, engines);
criterion_main!(benches);
