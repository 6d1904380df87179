//! Every engine copies byte-exactly for any length and alignment, and writes nothing outside dst.

use pagemig::copy::{CopyEngine, CopyOp, CpuEngine, EngineKind, PageCopy, Pool};
use proptest::prelude::*;

const GUARD: usize = 64;
const CANARY: u8 = 0xA5;

fn engines() -> Vec<Box<dyn CopyEngine>> {
    let cpus: Vec<u32> = pagemig::sys::allowed_cpus().unwrap().iter().collect();
    let mut out: Vec<Box<dyn CopyEngine>> = vec![Box::new(PageCopy::new())];
    for kind in EngineKind::ALL {
        match CpuEngine::new(kind) {
            Ok(e) => {
                out.push(Box::new(e));
                // Three workers even on two CPUs: shares then do not line up with CPUs.
                let three: Vec<u32> = cpus.iter().copied().cycle().take(3).collect();
                out.push(Box::new(Pool::new(&crate::workers(), e, &three).unwrap()));
            }
            Err(why) => eprintln!("skipping engine {kind}: {why}"),
        }
    }
    out
}

/// Copies `len` bytes from offset `so` of a source buffer to offset `do_` of a guarded
/// destination with `engine`, and checks the copy and the guards.
fn check(engine: &dyn CopyEngine, len: usize, so: usize, do_: usize) -> Result<(), TestCaseError> {
    let src: Vec<u8> = (0..len + so).map(|i| (i * 31 + 7) as u8).collect();
    let mut dst = vec![CANARY; GUARD + do_ + len + GUARD];
    let expected_src = &src[so..];
    {
        let target = &mut dst[GUARD + do_..GUARD + do_ + len];
        let stats = engine.copy(&[CopyOp::new(expected_src, target)]).unwrap();
        prop_assert_eq!(stats.bytes, len as u64);
    }
    prop_assert!(
        dst[GUARD + do_..GUARD + do_ + len] == *expected_src,
        "{} len {len}",
        engine.name()
    );
    prop_assert!(
        dst[..GUARD + do_].iter().all(|&b| b == CANARY),
        "{} wrote before dst",
        engine.name()
    );
    prop_assert!(
        dst[GUARD + do_ + len..].iter().all(|&b| b == CANARY),
        "{} wrote after dst",
        engine.name()
    );
    Ok(())
}

fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..300,
        3 => 300usize..70_000,
        1 => (1usize << 20)..(3usize << 20),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_engine_is_byte_exact(len in lengths(), so in 0usize..64, do_ in 0usize..64) {
        for engine in engines() {
            check(&*engine, len, so, do_)?;
        }
    }

    #[test]
    fn batches_of_many_ops_are_exact(lens in proptest::collection::vec(0usize..20_000, 0..40), workers in 1usize..6) {
        let cpus: Vec<u32> = pagemig::sys::allowed_cpus().unwrap().iter().collect();
        let six: Vec<u32> = cpus.iter().copied().cycle().take(6).collect();
        let pool = Pool::new(&crate::workers(), CpuEngine::new(EngineKind::Nt).unwrap(), &six).unwrap();
        let total: usize = lens.iter().sum();
        let src: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; total];
        let mut ops = Vec::new();
        let (mut s, mut d) = (&src[..], &mut dst[..]);
        for &len in &lens {
            let (sh, st) = s.split_at(len);
            let (dh, dt) = std::mem::take(&mut d).split_at_mut(len);
            ops.push(CopyOp::new(sh, dh));
            (s, d) = (st, dt);
        }
        let stats = pool.copy_with(&ops, workers).unwrap();
        prop_assert_eq!(stats.bytes, total as u64);
        prop_assert!(stats.threads <= workers);
        drop(ops);
        prop_assert!(src == dst);
    }
}

#[test]
fn page_sized_copies_of_every_engine() {
    for engine in engines() {
        for len in [4096, 65536, 2 << 20] {
            check(&*engine, len, 0, 0).unwrap();
        }
    }
}

#[test]
fn nt512_exists_exactly_where_the_cpu_has_avx512() {
    #[cfg(target_arch = "x86_64")]
    let has = std::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let has = false;
    match CpuEngine::new(EngineKind::Nt512) {
        Ok(e) => {
            assert!(has, "nt512 opened on a CPU without AVX-512F");
            assert_eq!(e.name(), "nt-avx512");
        }
        Err(why) => {
            assert!(!has, "AVX-512F is there but nt512 refused: {why}");
            assert!(why.to_string().contains("AVX-512"), "{why}");
            eprintln!("skipping the AVX-512 copy: {why}");
        }
    }
}

#[test]
fn page_copy_calls_the_kernel_once_per_base_page() {
    let engine = PageCopy::new();
    assert_eq!(engine.page_size(), pagemig::sys::base_page_size());
    #[cfg(target_arch = "x86_64")]
    assert_eq!(engine.name(), "copy_page (rep movsq)");
    // A folio of 2 MB and ragged lengths around a page are copied exactly.
    for len in [1, 7, 4095, 4096, 4097, 3 * 4096 + 9, 2 << 20] {
        check(&engine, len, 3, 5).unwrap();
    }
}
