//! The asynchronous engine interface: the CPU offload engine and the queue's semantics
//! (ordering, partial failure, cancellation, leaving a scope while copies are in flight).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pagemig::copy::{
    AsyncCopyEngine, Completion, CopyEngine, CopyError, CopyOp, CopyStats, CpuEngine, EngineKind,
    Offload, OpStatus, Ticket, copy_and_wait, scope,
};

fn cpus(n: usize) -> Vec<u32> {
    let all: Vec<u32> = pagemig::sys::allowed_cpus().unwrap().iter().collect();
    all.into_iter().cycle().take(n).collect()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn offload_copies_every_byte_sync_and_async() {
    let engine = Offload::new(&crate::workers(), EngineKind::Nt, &cpus(2)).unwrap();
    let lens = [0usize, 1, 63, 4096, 4097, 300_000, 3 << 20];
    let srcs: Vec<Vec<u8>> = lens.iter().map(|&l| pattern(l, 7)).collect();
    let mut dsts: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0; l + 3]).collect();
    {
        let ops: Vec<CopyOp<'_>> = srcs
            .iter()
            .zip(dsts.iter_mut())
            .map(|(s, d)| CopyOp::new(s, &mut d[3..]))
            .collect();
        let stats = CopyEngine::copy(&engine, &ops).unwrap();
        assert_eq!(stats.bytes, lens.iter().sum::<usize>() as u64);
        assert!(
            stats.threads >= 1 && stats.worker_cpu > Duration::ZERO,
            "{stats:?}"
        );
    }
    for (s, d) in srcs.iter().zip(&dsts) {
        assert_eq!(&d[3..], &s[..]);
        assert_eq!(&d[..3], [0, 0, 0]);
    }
    // Asynchronously: the caller goes on while the copy runs.
    let src = pattern(16 << 20, 3);
    let mut dst = vec![0u8; 16 << 20];
    let done = scope(&engine, |q| {
        let t = q.submit(vec![CopyOp::new(&src, &mut dst)]).unwrap();
        let mut spins = 0u64;
        let done = loop {
            if let Some(c) = q.poll(t) {
                break c;
            }
            spins += 1;
            std::hint::spin_loop();
        };
        assert_eq!(q.in_flight(), 0);
        (done, spins)
    });
    assert_eq!(done.0.ops, [OpStatus::Done]);
    assert_eq!(src, dst);
}

#[test]
fn one_channel_starts_submissions_in_order_and_reports_them_in_order() {
    let engine = Offload::new(&crate::workers(), EngineKind::Memcpy, &cpus(1)).unwrap();
    let big = pattern(32 << 20, 1);
    let small = pattern(4096, 2);
    let (mut big_dst, mut small_dst) = (vec![0u8; big.len()], vec![0u8; small.len()]);
    scope(&engine, |q| {
        let b = q.submit(vec![CopyOp::new(&big, &mut big_dst)]).unwrap();
        let s = q.submit(vec![CopyOp::new(&small, &mut small_dst)]).unwrap();
        // The small copy waited behind every piece of the big one.
        let mut order = Vec::new();
        while order.len() < 2 {
            if let Some((t, c)) = q.next_in_order() {
                assert!(c.ops.iter().all(|o| *o == OpStatus::Done));
                order.push(t);
            }
        }
        assert_eq!(order, [b, s]);
    });
    assert_eq!(big, big_dst);
    assert_eq!(small, small_dst);

    let (mut big_dst, mut small_dst) = (vec![0u8; big.len()], vec![0u8; small.len()]);
    scope(&engine, |q| {
        let b = q.submit(vec![CopyOp::new(&big, &mut big_dst)]).unwrap();
        let s = q.submit(vec![CopyOp::new(&small, &mut small_dst)]).unwrap();
        q.wait(s);
        assert!(
            q.poll(b).is_some(),
            "a later submission finished before an earlier one"
        );
    });
}

/// Bytes of `dst` that differ from `before`.
fn changed(before: &[u8], dst: &[u8]) -> usize {
    before.iter().zip(dst).filter(|(a, b)| a != b).count()
}

#[test]
fn cancelled_ops_say_how_much_was_copied_and_nothing_more_is() {
    let engine = Offload::new(&crate::workers(), EngineKind::Memcpy, &cpus(1)).unwrap();
    let a = pattern(32 << 20, 5);
    let b = pattern(32 << 20, 9);
    let mut a_dst = vec![0u8; a.len()];
    let mut b_dst = vec![0u8; b.len()];
    let (done_a, done_b) = scope(&engine, |q| {
        let ta = q.submit(vec![CopyOp::new(&a, &mut a_dst)]).unwrap();
        let tb = q.submit(vec![CopyOp::new(&b, &mut b_dst)]).unwrap();
        q.cancel(tb);
        (q.wait(ta), q.wait(tb))
    });
    assert_eq!(done_a.ops, [OpStatus::Done]);
    assert_eq!(a, a_dst);
    let OpStatus::Cancelled { copied } = done_b.ops[0] else {
        panic!("{:?}", done_b.ops)
    };
    assert!(copied < b.len());
    assert_eq!(changed(&vec![0u8; b.len()], &b_dst), copied);
    assert_eq!(done_b.stats.bytes, copied as u64);
    assert!(matches!(
        done_b.into_result(),
        Err(CopyError::OpFailed { op: 0, .. })
    ));
}

#[test]
fn leaving_the_scope_cancels_and_waits_for_what_is_in_flight() {
    let engine = Offload::new(&crate::workers(), EngineKind::Memcpy, &cpus(2)).unwrap();
    let src = pattern(64 << 20, 11);
    let mut dst = vec![0u8; src.len()];
    scope(&engine, |q| {
        q.submit(vec![CopyOp::new(&src, &mut dst)]).unwrap();
        // Returns with the submission in flight.
    });
    let after = dst.clone();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(after, dst, "the engine wrote after the scope ended");
    // Whole pieces were copied or not at all: never a torn piece.
    let piece = 256 << 10;
    for (k, chunk) in dst.chunks(piece).enumerate() {
        let full = chunk == &src[k * piece..k * piece + chunk.len()];
        let none = chunk.iter().all(|&b| b == 0);
        assert!(full || none, "piece {k} half copied");
    }
    // And the engine is still usable.
    let mut again = vec![0u8; 4096];
    CopyEngine::copy(&engine, &[CopyOp::new(&src[..4096], &mut again)]).unwrap();
    assert_eq!(again, src[..4096]);
}

#[test]
fn an_engine_is_dropped_only_after_its_queue_is_drained() {
    let src = pattern(8 << 20, 4);
    let mut dst = vec![0u8; src.len()];
    {
        let engine = Offload::new(&crate::workers(), EngineKind::Nt, &cpus(2)).unwrap();
        scope(&engine, |q| {
            q.submit(vec![CopyOp::new(&src, &mut dst)]).unwrap();
        });
    }
    let before = dst.clone();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(before, dst);
}

/// An engine whose device refuses some ops: the queue must report them per op, and the
/// synchronous copy must name the first.
struct RefusesOddOps {
    done: Mutex<HashMap<u64, Completion>>,
}

impl AsyncCopyEngine for RefusesOddOps {
    fn name(&self) -> String {
        "refuses-odd".into()
    }

    unsafe fn submit(&self, batch: &[CopyOp<'_>]) -> Result<Ticket, CopyError> {
        let cpu = CpuEngine::new(EngineKind::Memcpy)?;
        let mut ops = Vec::new();
        let mut bytes = 0;
        for (i, op) in batch.iter().enumerate() {
            if i % 2 == 0 {
                // SAFETY: the op's ranges are valid and ours for the call (submit's contract).
                let same = unsafe { CopyOp::from_raw(op.src(), op.dst(), op.len()) };
                cpu.copy(&[same])?;
                bytes += op.len() as u64;
                ops.push(OpStatus::Done);
            } else {
                ops.push(OpStatus::Failed {
                    copied: 0,
                    reason: "refused".into(),
                });
            }
        }
        let mut done = self.done.lock().unwrap();
        let t = done.len() as u64;
        done.insert(
            t,
            Completion {
                ops,
                stats: CopyStats {
                    bytes,
                    ops: batch.len() as u64,
                    threads: 1,
                    worker_cpu: Duration::ZERO,
                },
            },
        );
        Ok(Ticket(t))
    }

    fn poll(&self, t: Ticket) -> Option<Completion> {
        self.done.lock().unwrap().get(&t.0).cloned()
    }

    fn wait(&self, t: Ticket) -> Completion {
        self.poll(t).expect("completed at submission")
    }

    fn cancel(&self, _: Ticket) {}
}

#[test]
fn a_partial_failure_is_reported_per_op() {
    let engine = RefusesOddOps {
        done: Mutex::default(),
    };
    let srcs: Vec<Vec<u8>> = (0..4).map(|i| pattern(1000, i)).collect();
    let mut dsts = vec![vec![0u8; 1000]; 4];
    let ops: Vec<CopyOp<'_>> = srcs
        .iter()
        .zip(dsts.iter_mut())
        .map(|(s, d)| CopyOp::new(s, d))
        .collect();
    let err = copy_and_wait(&engine, &ops).unwrap_err();
    assert!(
        matches!(&err, CopyError::OpFailed { op: 1, copied: 0, reason } if reason == "refused"),
        "{err}"
    );
    drop(ops);
    assert_eq!(dsts[0], srcs[0]);
    assert_eq!(dsts[2], srcs[2]);
    assert!(dsts[1].iter().all(|&b| b == 0));
}

#[test]
fn an_offload_engine_needs_a_cpu() {
    let err = Offload::new(&crate::workers(), EngineKind::Memcpy, &[]).unwrap_err();
    assert!(err.to_string().contains("at least one CPU"), "{err}");
}

/// An engine whose first wait panics, as a device that fails while copying may: what it was
/// copying into can still be written, so the wait is made again before the memory is let go.
#[derive(Default)]
struct PanicsOnFirstWait {
    waits: AtomicUsize,
}

impl AsyncCopyEngine for PanicsOnFirstWait {
    fn name(&self) -> String {
        "panics-on-first-wait".into()
    }

    unsafe fn submit(&self, _: &[CopyOp<'_>]) -> Result<Ticket, CopyError> {
        Ok(Ticket(7))
    }

    fn poll(&self, _: Ticket) -> Option<Completion> {
        None
    }

    fn wait(&self, _: Ticket) -> Completion {
        if self.waits.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the device failed");
        }
        Completion {
            ops: Vec::new(),
            stats: CopyStats {
                bytes: 0,
                ops: 0,
                threads: 1,
                worker_cpu: Duration::ZERO,
            },
        }
    }

    fn cancel(&self, _: Ticket) {}
}

#[test]
fn a_wait_that_panics_is_made_again_before_the_memory_is_let_go() {
    let engine = PanicsOnFirstWait::default();
    let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
        scope(&engine, |q| {
            let t = q.submit(Vec::new()).unwrap();
            q.wait(t)
        })
    }));
    assert!(panicked.is_err());
    assert_eq!(
        engine.waits.load(Ordering::SeqCst),
        2,
        "the scope waited again"
    );
    let engine = PanicsOnFirstWait::default();
    let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| copy_and_wait(&engine, &[])));
    assert!(panicked.is_err());
    assert_eq!(
        engine.waits.load(Ordering::SeqCst),
        2,
        "copy_and_wait waited again"
    );
}
