use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::ThreadId;

use pagemig::copy::{
    CopyEngine, CopyError, CopyOp, CopyStats, CpuEngine, EngineKind, Pool, split_by_bytes,
};

use pagemig::workers::WorkerError;
use proptest::prelude::*;

fn cpus(n: usize) -> Vec<u32> {
    let allowed: Vec<u32> = pagemig::sys::allowed_cpus().unwrap().iter().collect();
    allowed.into_iter().cycle().take(n).collect()
}

proptest! {
    #[test]
    fn split_covers_every_byte_once(lens in proptest::collection::vec(0usize..10_000, 0..30), shares in 1usize..40, align in prop_oneof![Just(1usize), Just(64), Just(4096)]) {
        let split = split_by_bytes(&lens, shares, align);
        prop_assert_eq!(split.len(), shares);
        let mut seen: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
        let mut pos = 0usize;
        let offsets: Vec<usize> = lens.iter().scan(0, |acc, &l| { let o = *acc; *acc += l; Some(o) }).collect();
        for (i, share) in split.iter().enumerate() {
            for p in share {
                prop_assert!(p.len > 0);
                // Shares are contiguous and in batch order.
                prop_assert_eq!(offsets[p.op] + p.offset, pos);
                pos += p.len;
                for b in &mut seen[p.op][p.offset..p.offset + p.len] {
                    *b += 1;
                }
            }
            if i + 1 < shares {
                prop_assert_eq!(pos % align, 0, "boundary not aligned");
            }
        }
        prop_assert!(seen.iter().flatten().all(|&c| c == 1));
        // Shares are balanced to within one alignment unit.
        let total: usize = lens.iter().sum();
        for share in &split {
            let bytes: usize = share.iter().map(|p| p.len).sum();
            prop_assert!(bytes <= total / shares + align + 1, "share of {bytes} for total {total}");
        }
    }
}

#[test]
fn one_huge_page_is_shared_by_all_workers() {
    let split = split_by_bytes(&[2 << 20], 4, 64);
    assert!(split.iter().all(|s| s.len() == 1 && s[0].len == 512 << 10));
}

/// Records which threads ran it; panics on an op of 13 bytes.
#[derive(Default)]
struct Probe {
    threads: Mutex<HashSet<ThreadId>>,
    calls: AtomicUsize,
}

impl CopyEngine for Probe {
    fn name(&self) -> String {
        "probe".into()
    }
    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        self.threads
            .lock()
            .unwrap()
            .insert(std::thread::current().id());
        self.calls.fetch_add(1, Ordering::Relaxed);
        if batch.iter().any(|op| op.len() == 13) {
            panic!("probe refuses 13 bytes");
        }
        CpuEngine::new(EngineKind::Memcpy).unwrap().copy(batch)
    }
}

#[test]
fn workers_are_reused_across_calls() {
    let pool = Pool::new(&crate::workers(), Probe::default(), &cpus(2)).unwrap();
    let src = vec![3u8; 1 << 16];
    for _ in 0..50 {
        let mut dst = vec![0u8; 1 << 16];
        pool.copy(&[CopyOp::new(&src, &mut dst)]).unwrap();
        assert_eq!(src, dst);
    }
    assert_eq!(pool.engine().calls.load(Ordering::Relaxed), 100);
    // Two workers, and the caller where it ran on one of their CPUs (it copies that share
    // itself): no thread started per call.
    let mut threads = pool.engine().threads.lock().unwrap().clone();
    threads.remove(&std::thread::current().id());
    assert!(
        (1..=2).contains(&threads.len()),
        "{} threads besides the caller",
        threads.len()
    );
}

#[test]
fn a_panicking_worker_is_reported_and_the_pool_goes_on() {
    let pool = Pool::new(&crate::workers(), Probe::default(), &cpus(2)).unwrap();
    let src = vec![9u8; 13];
    let mut dst = vec![0u8; 13];
    // One worker gets the whole 13-byte op (shares split at 64-byte boundaries) and panics.
    let err = pool.copy(&[CopyOp::new(&src, &mut dst)]).unwrap_err();
    match err {
        CopyError::Workers(WorkerError::Panicked { job, message, .. }) => {
            assert_eq!(job, 1);
            assert!(message.contains("13 bytes"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut dst = vec![0u8; 100];
    pool.copy(&[CopyOp::new(&[5u8; 100], &mut dst)]).unwrap();
    assert_eq!(dst, [5u8; 100]);
}

#[test]
fn pinning_to_a_missing_cpu_is_an_error() {
    let err = Pool::new(&crate::workers(), Probe::default(), &[100_000]).unwrap_err();
    assert!(
        matches!(
            err,
            CopyError::Workers(WorkerError::Pin { cpu: 100_000, .. })
        ),
        "{err:?}"
    );
    assert!(matches!(
        Pool::new(&crate::workers(), Probe::default(), &[]).unwrap_err(),
        CopyError::NoCpu
    ));
}

#[test]
fn pool_names_its_workers_and_engine() {
    let pool = Pool::new(
        &crate::workers(),
        CpuEngine::new(EngineKind::Memcpy).unwrap(),
        &cpus(3),
    )
    .unwrap();
    assert_eq!(pool.name(), "pool(3 x memcpy)");
    assert_eq!(pool.cpus().len(), 3);
}
