//! Per-call cost of the C ABI (`pagemig_move_pages`, and the preload library, which runs the
//! same code) against the raw `move_pages(2)` system call, for calls of 1 and 8 pages that
//! the planner gives one thread: what a program pays for loading pagemig when its calls are
//! small.
//!
//! `cargo bench -p pagemig --bench abi`. The pages are moved to the node they are on, so it
//! runs on any machine; `PAGEMIG_THREADS` and `PAGEMIG_MODEL` apply as in the libraries.

use std::ffi::{c_int, c_ulong, c_void};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pagemig::Threads;
use pagemig::abi::{self, Context, MPOL_MF_MOVE};
use pagemig::policy::CostModel;
use pagemig::sys::{self, ForeignOut, Mapping};

fn abi_call_overhead(c: &mut Criterion) {
    let threads = std::env::var("PAGEMIG_THREADS").map_or(Ok(Threads::Auto), |v| v.parse());
    let model = std::env::var_os("PAGEMIG_MODEL").map(|p| CostModel::load(p.as_ref()).unwrap());
    let ctx = Context::new(threads.unwrap(), model);
    let page = sys::base_page_size();
    let mut m = Mapping::anonymous(8 * page).unwrap();
    m.as_mut_slice().fill(1);
    let pages: Vec<*const c_void> = (0..8)
        .map(|i| m.as_ptr().wrapping_add(i * page).cast())
        .collect();
    let here = sys::query_page_nodes(0, &[m.as_ptr() as usize]).unwrap()[0];
    let node = match here {
        sys::PageNode::Node(n) => n as c_int,
        sys::PageNode::Error(e) => panic!("the page is not placed: {e}"),
    };
    let nodes = [node; 8];
    let mut status = [0; 8];
    let mut group = c.benchmark_group("move_pages call");
    for n in [1usize, 8] {
        group.bench_function(BenchmarkId::new("raw system call", n), |b| {
            b.iter(|| {
                sys::move_pages_unchanged(
                    0,
                    n as c_ulong,
                    pages.as_ptr() as usize,
                    nodes.as_ptr() as usize,
                    ForeignOut::from(&mut status[..n]),
                    MPOL_MF_MOVE,
                )
                .unwrap()
            });
        });
        group.bench_function(BenchmarkId::new("pagemig", n), |b| {
            b.iter(|| {
                let call = abi::move_pages(
                    &ctx,
                    0,
                    n as c_ulong,
                    pages.as_ptr(),
                    nodes.as_ptr(),
                    ForeignOut::from(&mut status[..n]),
                    MPOL_MF_MOVE,
                );
                assert_eq!(call.result, Ok(0), "{call}");
            });
        });
    }
    group.finish();
}

criterion_group!(benches, abi_call_overhead);
criterion_main!(benches);
