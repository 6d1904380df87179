//! The planner on fake topologies, loads and cost models; the model's JSON file.

use pagemig::copy::dma::DmaKind;
use pagemig::copy::{Copier, EngineKind, Placement, Route};
use pagemig::migrate::Threads;
use pagemig::policy::{
    CalibrateOptions, CopyPoint, CostModel, Effort, Job, KernelPoint, MachineId, ModelError,
    Planner, Resources, calibrate, worker_counts,
};
use pagemig::topology::{CpuSet, Topology};
use proptest::prelude::*;
use std::sync::LazyLock;

use crate::fake_sysfs;

const MIB: u64 = 1 << 20;

/// A model shaped like real machines: a fixed cost per call (more for pools, which hand work to
/// other threads), per-thread bandwidth, and a memory-bandwidth ceiling reached at 8 workers.
fn model(topo: &Topology) -> CostModel {
    let cpus = topo.online_cpus.len();
    let gbps = |overhead_us: f64, bw: f64, bytes: u64| {
        let b = bytes as f64;
        b / (overhead_us * 1e3 + b / bw)
    };
    let mut copy = Vec::new();
    for k in 0..8 {
        let bytes = 4096u64 << (2 * k);
        for engine in EngineKind::ALL {
            copy.push(CopyPoint {
                copier: Copier::Thread { engine },
                bytes,
                gbps: gbps(
                    0.05,
                    if engine == EngineKind::Nt { 9.0 } else { 8.0 },
                    bytes,
                ),
                median_gbps: None,
            });
            for w in worker_counts(cpus) {
                copy.push(CopyPoint {
                    copier: Copier::Pool { engine, workers: w },
                    bytes,
                    gbps: gbps(3.0, (9.0 * w as f64).min(72.0), bytes),
                    median_gbps: None,
                });
            }
        }
    }
    let kernel_path = [MIB, 64 * MIB, 1024 * MIB]
        .into_iter()
        .flat_map(|bytes| {
            worker_counts(cpus).into_iter().map(move |t| KernelPoint {
                threads: t,
                bytes,
                gbps: gbps(200.0, (2.0 * t as f64).min(30.0), bytes),
            })
        })
        .collect();
    CostModel {
        version: CostModel::VERSION,
        machine: MachineId::of(topo),
        kernel: "test".into(),
        created_unix: 0,
        effort: Effort::Quick,
        copy,
        kernel_path,
        saturation: Vec::new(),
        observed: Vec::new(),
        observed_kernel: Vec::new(),
        pool_handoff_us: None,
    }
}

fn idle(allowed: &str) -> Resources {
    Resources {
        allowed: allowed.parse().unwrap(),
        cpu_quota: None,
        busy_cpus: 0.0,
    }
}

/// Whether a plan gives a reason that starts with `prefix`.
fn gives(why: &[String], prefix: &str) -> bool {
    why.iter().any(|w| w.starts_with(prefix))
}

fn job(bytes: u64, from: u32, to: u32) -> Job {
    Job {
        bytes,
        route: Route {
            from: Some(from),
            to: Some(to),
        },
    }
}

#[test]
fn one_cpu_in_the_affinity_mask_gives_one_worker() {
    let t = fake_sysfs::epyc_2s().read();
    let m = model(&t);
    let p = Planner::new(&t, Some(&m), idle("5"));
    let copy = p.plan_copy(job(1 << 30, 0, 1)).unwrap();
    assert_eq!(copy.copier.threads(), 1, "{copy:?}");
    assert!(copy.cpus.iter().all(|&c| c == 5), "{copy:?}");
    let k = p.plan_kernel(job(1 << 30, 0, 1), 16 * MIB).unwrap();
    assert_eq!(k.cpus, [5], "{k:?}");
}

#[test]
fn half_a_cpu_of_quota_gives_one_worker() {
    let t = fake_sysfs::intel_2s().read();
    let m = model(&t);
    let mut r = idle("0-63");
    r.cpu_quota = Some(0.5);
    let p = Planner::new(&t, Some(&m), r);
    assert_eq!(p.worker_cap().0, 1);
    assert!(p.worker_cap().1.contains("cpu.max"), "{:?}", p.worker_cap());
    let copy = p.plan_copy(job(1 << 30, 0, 1)).unwrap();
    assert_eq!(copy.copier.threads(), 1, "{copy:?}");
    assert!(copy.why.iter().any(|w| w.contains("cpu.max")), "{copy:?}");
    assert_eq!(
        p.plan_kernel(job(1 << 30, 0, 1), MIB).unwrap().cpus.len(),
        1
    );
}

#[test]
fn load_leaves_fewer_workers() {
    let t = fake_sysfs::epyc_1s().read();
    let m = model(&t);
    let mut r = idle("0-63");
    r.busy_cpus = 61.0;
    let p = Planner::new(&t, Some(&m), r);
    assert_eq!(p.worker_cap().0, 3);
    let copy = p.plan_copy(job(1 << 30, 0, 0)).unwrap();
    assert!(copy.copier.threads() <= 3, "{copy:?}");
    assert!(copy.why.iter().any(|w| w.contains("runnable")), "{copy:?}");
    // The alternatives a running copy may try are not held to the load's cap (a tried one is
    // kept only if it measures faster), but stay inside the affinity mask.
    let ranked = p.ranked_copiers(1 << 30);
    assert!(ranked.iter().any(|(c, _)| c.threads() > 3), "{ranked:?}");
    assert!(ranked.iter().all(|(c, _)| c.threads() <= 64), "{ranked:?}");
    assert!(ranked.windows(2).all(|w| w[0].1 >= w[1].1), "{ranked:?}");
}

#[test]
fn a_memory_only_target_puts_workers_near_the_source() {
    let t = fake_sysfs::cxl().read();
    let m = model(&t);
    let p = Planner::new(&t, Some(&m), idle("0-7"));
    assert_eq!(p.placement(job(0, 0, 1).route).0, Placement::NearSrc);
    let copy = p.plan_copy(job(1 << 30, 0, 1)).unwrap();
    assert!(copy.copier.threads() > 1, "{copy:?}");
    let node0 = &t.node(0).unwrap().cpus;
    assert!(copy.cpus.iter().all(|&c| node0.contains(c)), "{copy:?}");
    // A DRAM target with CPUs gets its own CPUs.
    let t = fake_sysfs::intel_2s().read();
    let m = model(&t);
    let p = Planner::new(&t, Some(&m), idle("0-63"));
    let copy = p.plan_copy(job(1 << 30, 0, 1)).unwrap();
    let node1 = &t.node(1).unwrap().cpus;
    assert!(copy.cpus.iter().all(|&c| node1.contains(c)), "{copy:?}");
}

#[test]
fn four_workers_on_eight_l3_domains_use_four_domains() {
    let t = fake_sysfs::epyc_1s().read();
    let m = model(&t);
    let mut r = idle("0-63");
    r.cpu_quota = Some(4.0);
    let p = Planner::new(&t, Some(&m), r);
    let copy = p.plan_copy(job(1 << 30, 0, 0)).unwrap();
    assert_eq!(copy.copier.threads(), 4, "{copy:?}");
    let mut domains: Vec<usize> = copy
        .cpus
        .iter()
        .map(|&c| t.cpu_domain(c).unwrap().index)
        .collect();
    domains.sort_unstable();
    domains.dedup();
    assert_eq!(domains.len(), 4, "{copy:?}");
}

#[test]
fn a_tiny_migration_gets_one_thread() {
    let t = fake_sysfs::epyc_2s().read();
    let m = model(&t);
    let p = Planner::new(&t, Some(&m), idle("0-63"));
    let copy = p.plan_copy(job(4096, 0, 1)).unwrap();
    assert!(matches!(copy.copier, Copier::Thread { .. }), "{copy:?}");
    assert!(copy.cpus.is_empty());
    assert_eq!(
        p.plan_kernel(job(4096, 0, 1), 4096 * 4096)
            .unwrap()
            .cpus
            .len(),
        1
    );
    // A large one gets many, up to where bandwidth stops growing.
    let copy = p.plan_copy(job(1 << 30, 0, 1)).unwrap();
    assert!(copy.copier.threads() >= 8, "{copy:?}");
    let k = p.plan_kernel(job(1 << 30, 0, 1), 16 * MIB).unwrap();
    assert!(k.cpus.len() >= 8, "{k:?}");
}

#[test]
fn without_a_model_one_thread_copies_and_the_reason_is_given() {
    let t = fake_sysfs::epyc_2s().read();
    let p = Planner::new(&t, None, idle("0-63"));
    let copy = p.plan_copy(job(1 << 30, 0, 1)).unwrap();
    assert_eq!(
        copy.copier,
        Copier::Thread {
            engine: EngineKind::Memcpy
        }
    );
    assert!(copy.why[0].contains("pagemig calibrate"), "{copy:?}");
    let k = p.plan_kernel(job(256 * MIB, 0, 1), 16 * MIB).unwrap();
    assert_eq!(k.cpus.len(), 4, "{k:?}");
    assert!(k.why[0].contains("not calibrated"), "{k:?}");
}

#[test]
fn a_model_from_another_machine_is_set_aside() {
    let t = fake_sysfs::epyc_2s().read();
    let mut m = model(&t);
    m.machine.online_cpus = 2;
    let p = Planner::new(&t, Some(&m), idle("0-63"));
    assert!(p.model().is_none());
    let copy = p.plan_copy(job(1 << 30, 0, 1)).unwrap();
    assert!(copy.why[0].contains("another machine"), "{copy:?}");
}

proptest! {
    /// Whatever the size and the CPUs, the plan is predicted at least as fast as one thread and
    /// stays inside the affinity mask.
    #[test]
    fn plans_never_lose_to_one_thread(log_bytes in 10u32..36, allowed in 0u32..64, width in 1u32..64, quota in proptest::option::of(0.1f64..80.0), busy in 0.0f64..80.0) {
        static MACHINE: LazyLock<(Topology, CostModel)> = LazyLock::new(|| {
            let t = fake_sysfs::epyc_2s().read();
            let m = model(&t);
            (t, m)
        });
        let (t, m) = &*MACHINE;
        let last = (allowed + width).min(63);
        let mask: CpuSet = format!("{allowed}-{last}").parse().unwrap();
        let r = Resources { allowed: mask.clone(), cpu_quota: quota, busy_cpus: busy };
        let p = Planner::new(t, Some(m), r);
        let bytes = 1u64 << log_bytes;
        let copy = p.plan_copy(job(bytes, 0, 1)).unwrap();
        prop_assert!(copy.predicted_gbps.unwrap() >= copy.baseline_gbps.unwrap());
        prop_assert!(copy.cpus.iter().all(|&c| mask.contains(c)));
        prop_assert!(copy.copier.threads() <= p.worker_cap().0);
        let k = p.plan_kernel(job(bytes, 0, 1), 4096 * 4096).unwrap();
        prop_assert!(k.cpus.iter().all(|&c| mask.contains(c)));
        prop_assert!(k.predicted_gbps.unwrap() >= m.predict_kernel(1, bytes).unwrap());
    }
}

#[test]
fn calibration_round_trips_through_its_json_file() {
    let t = Topology::detect().unwrap();
    let allowed = pagemig::sys::allowed_cpus().unwrap();
    let options = CalibrateOptions {
        effort: Effort::Builtin,
        ..CalibrateOptions::default()
    };
    let m = calibrate(&t, &allowed, &options, &Default::default(), &|_| {}).unwrap();
    let usable = allowed.intersection(&t.online_cpus).len();
    let copiers = m.copiers();
    assert!(copiers.contains(&Copier::Thread {
        engine: EngineKind::Memcpy
    }));
    assert!(copiers.contains(&Copier::Pool {
        engine: EngineKind::Nt,
        workers: usable
    }));
    assert!(m.copy.iter().all(|p| p.gbps > 0.0 && p.gbps.is_finite()));
    assert!(!m.saturation.is_empty());
    assert_eq!(m.kernel_path.is_empty(), t.memory_nodes().len() < 2);

    let dir = tempfile::tempdir().unwrap();
    // A path is used as given: no directory is made for it.
    let deep = dir.path().join("deep/model.json");
    let err = m.save(&deep).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
    assert!(!dir.path().join("deep").exists());
    let path = dir.path().join("model.json");
    m.save(&path).unwrap();
    assert_eq!(CostModel::load(&path).unwrap(), m);
    assert!(
        Planner::new(&t, Some(&m), Resources::detect().unwrap())
            .model()
            .is_some()
    );

    std::fs::write(&path, "{\"version\": 1}").unwrap();
    let err = CostModel::load(&path).unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }), "{err}");
    let mut old = serde_json::to_value(&m).unwrap();
    old["version"] = 0.into();
    std::fs::write(&path, old.to_string()).unwrap();
    assert!(
        CostModel::load(&path)
            .unwrap_err()
            .to_string()
            .contains("version 0")
    );
    assert!(matches!(
        CostModel::load(&dir.path().join("none.json")),
        Err(ModelError::Io { .. })
    ));
    // The version is checked before anything else.
    std::fs::write(&path, "{\"version\": 99}").unwrap();
    let err = CostModel::load(&path).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("is a cost model of version 99; this pagemig reads version 1"),
        "{err}"
    );
    // Figures that cannot be measurements are refused with the field named.
    for (bad, field) in [
        (-5.0, "copy[0].gbps is -5"),
        (0.0, "copy[0].gbps is 0"),
        (1e308, "copy[0].gbps is 1e308"),
    ] {
        let mut v = serde_json::to_value(&m).unwrap();
        v["copy"][0]["gbps"] = bad.into();
        std::fs::write(&path, v.to_string()).unwrap();
        let err = CostModel::load(&path).unwrap_err();
        assert!(matches!(err, ModelError::Figure { .. }), "{err}");
        assert!(err.to_string().contains(field), "{err}");
        assert!(err.to_string().contains("model.json"), "{err}");
    }
    let mut v = serde_json::to_value(&m).unwrap();
    v["saturation"][0]["workers"] = 0.into();
    std::fs::write(&path, v.to_string()).unwrap();
    assert!(
        CostModel::load(&path)
            .unwrap_err()
            .to_string()
            .contains("saturation[0].workers is 0")
    );
    // NaN and infinities are not JSON: serde refuses them as a format error.
    std::fs::write(
        &path,
        serde_json::to_string(&m)
            .unwrap()
            .replacen("\"gbps\":", "\"gbps\":NaN,\"x\":", 1),
    )
    .unwrap();
    assert!(matches!(
        CostModel::load(&path),
        Err(ModelError::Format { .. })
    ));
}

/// The test model with a DMA engine measured at `gbps_at_1g` for large batches (a fixed
/// 20 µs per submission).
fn model_with_dma(topo: &Topology, bandwidth: f64) -> CostModel {
    let mut m = model(topo);
    for k in 0..8 {
        let bytes = 4096u64 << (2 * k);
        let b = bytes as f64;
        m.copy.push(CopyPoint {
            copier: Copier::Dma {
                engine: DmaKind::Dsa,
            },
            bytes,
            gbps: b / (20.0 * 1e3 + b / bandwidth),
            median_gbps: None,
        });
    }
    m
}

#[test]
fn dma_is_picked_where_faster_or_where_the_user_prefers_it() {
    let t = fake_sysfs::intel_2s().read();
    let dsa = Copier::Dma {
        engine: DmaKind::Dsa,
    };
    // A DMA engine slower than the CPU workers but faster than one thread.
    let m = model_with_dma(&t, 20.0);
    let plan = |prefer: bool, bytes: u64| {
        Planner::new(&t, Some(&m), idle("0-63"))
            .prefer_dma(prefer)
            .plan_copy(job(bytes, 0, 1))
            .unwrap()
    };
    let cpu = plan(false, 64 * MIB);
    assert!(cpu.copier.threads() > 1, "{cpu:?}");
    let preferred = plan(true, 64 * MIB);
    assert_eq!(preferred.copier, dsa, "{preferred:?}");
    assert!(preferred.cpus.is_empty());
    assert!(
        preferred
            .why
            .iter()
            .any(|w| w.contains("prefer DMA") && w.contains("ms of CPU per batch")),
        "{preferred:?}"
    );
    // Small batches: the submission cost makes DMA slower than one thread; never chosen.
    let small = plan(true, 4096);
    assert_ne!(small.copier, dsa, "{small:?}");
    assert!(
        small.why.iter().any(|w| w.contains("the CPU plan stays")),
        "{small:?}"
    );

    // A DMA engine faster than every CPU plan is chosen without being asked.
    let m = model_with_dma(&t, 500.0);
    let fast = Planner::new(&t, Some(&m), idle("0-63"))
        .plan_copy(job(1 << 30, 0, 1))
        .unwrap();
    assert_eq!(fast.copier, dsa, "{fast:?}");
    // The model stores DMA points like any other.
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.contains("\"dma\""), "{json}");
}

/// A model that promises 1000 GB/s from one pool worker at every size: the check finds that 4 KB
/// batches handed to a worker run far under the calling thread's predicted figure, tries it,
/// keeps the faster, and the model learns the measured figures.
#[test]
fn the_check_corrects_a_plan_that_does_not_deliver() {
    let topo = Topology::detect().unwrap();
    let liar = Copier::Pool {
        engine: EngineKind::Memcpy,
        workers: 1,
    };
    let memcpy = Copier::Thread {
        engine: EngineKind::Memcpy,
    };
    let mut m = model(&topo);
    m.copy.retain(|p| p.copier == memcpy);
    let sizes: Vec<u64> = m.copy.iter().map(|p| p.bytes).collect();
    m.copy.extend(sizes.into_iter().map(|bytes| CopyPoint {
        copier: liar,
        bytes,
        gbps: 1000.0,
        median_gbps: None,
    }));
    let options = CalibrateOptions {
        effort: Effort::Builtin,
        ..CalibrateOptions::default()
    };
    let checks =
        pagemig::policy::check_choices(&topo, &mut m, idle("0"), &options, &Default::default())
            .unwrap();
    let small = checks
        .iter()
        .find(|c| c.bytes == 4096)
        .expect("4 KB checked");
    assert_eq!(small.planned, liar, "{small:?}");
    assert_eq!(small.current, memcpy, "{small:?}");
    assert!(!small.moves.is_empty(), "{small:?}");
    let learned = m.predict_copy(liar, 4096).unwrap();
    assert!(learned < 1000.0, "the model learned {learned} GB/s");
    assert!(
        m.observed
            .iter()
            .any(|p| p.copier == memcpy && p.bytes == 4096)
    );
}

/// A scan of the caller's own `buffer` that found all its pages present.
fn present(buffer: &pagemig::sys::Mapping) -> pagemig::migrate::Scan {
    use pagemig::account::{Phases, ScanMethod};
    use pagemig::migrate::scan::{PageState, Run, Runs};
    use pagemig::migrate::{Found, Scan};

    let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
    Scan {
        process: pagemig::process::Process::Current,
        found: Found::Runs(vec![Runs {
            range: range.clone(),
            runs: vec![Run {
                range,
                state: PageState::Present,
                huge: false,
            }],
            method: ScanMethod::PagemapScan,
        }]),
        phases: Phases::default(),
        caller_cpu: std::time::Duration::ZERO,
    }
}

/// The planner chooses the path: the remap path for own memory where it works and the model
/// does not predict the kernel path faster; the kernel path otherwise; each with its reason.
#[test]
fn the_planner_chooses_the_path_from_the_model() {
    use pagemig::account::Path;
    use pagemig::process::Process;
    use pagemig::sys::Mapping;
    use pagemig::{Request, Selection};

    let t = fake_sysfs::epyc_2s().read();
    let fast_copy = model(&t);
    let mut fast_kernel = fast_copy.clone();
    for p in &mut fast_kernel.kernel_path {
        p.gbps *= 100.0;
    }
    let mut buffer = Mapping::anonymous(64 * MIB as usize).unwrap();
    let scan = present(&buffer);
    let mut own = Request::mapping(&mut buffer, 0..64 * MIB as usize, 1);
    let planner = |m| Planner::new(&t, Some(m), idle("0-63")).remap_support(Ok(()));

    let plan = planner(&fast_copy).plan(&own, &scan).unwrap();
    assert_eq!(plan.path, Path::Remap, "{:?}", plan.why);
    assert!(
        plan.why[0].contains("against the kernel path's"),
        "{:?}",
        plan.why
    );
    assert!(plan.copier.is_some());
    assert!(!plan.threads_fixed);

    // Two copy threads fixed by the user: the prediction is for them.
    own.options.threads = Threads::Count(2);
    let batch_bytes = (own.options.batch() * pagemig::sys::base_page_size()) as u64;
    let plan = planner(&fast_copy).plan(&own, &scan).unwrap();
    own.options.threads = Threads::Auto;
    let copier = plan.copier.unwrap();
    assert_eq!(
        (plan.path, copier.threads()),
        (Path::Remap, 2),
        "{:?}",
        plan.why
    );
    assert!(plan.threads_fixed);
    assert_eq!(
        plan.predicted_gbps,
        fast_copy.predict_copy(copier, batch_bytes),
        "{:?}",
        plan.why
    );
    let g = plan.predicted_gbps.unwrap();
    assert!(plan.why[0].contains(&format!("predicted at {g:.2} GB/s")));
    assert!(
        plan.why
            .contains(&format!("{copier}: predicted {g:.2} GB/s")),
        "{:?}",
        plan.why
    );
    assert!(
        plan.why
            .iter()
            .any(|w| w.starts_with("the planner's own choice: ")),
        "{:?}",
        plan.why
    );

    let plan = planner(&fast_kernel).plan(&own, &scan).unwrap();
    assert_eq!(plan.path, Path::Kernel, "{:?}", plan.why);
    assert!(
        plan.why[0].contains("faster than the remap path's copy"),
        "{:?}",
        plan.why
    );

    let unsupported = Planner::new(&t, Some(&fast_copy), idle("0-63"))
        .remap_support(Err("no userfaultfd".into()))
        .plan(&own, &scan)
        .unwrap();
    assert_eq!(unsupported.path, Path::Kernel);
    assert!(
        unsupported.why[0].contains("no userfaultfd"),
        "{:?}",
        unsupported.why
    );

    let process = Request::process(Process::Pid(1), Selection::All, 1);
    let plan = planner(&fast_copy).plan(&process, &scan).unwrap();
    assert_eq!(plan.path, Path::Kernel);
}

#[test]
fn a_thread_count_the_user_fixed_is_predicted_for_itself_and_kept() {
    let t = fake_sysfs::epyc_2s().read();
    let m = model(&t);
    let p = Planner::new(&t, Some(&m), idle("0-63"));
    let (bytes, batch) = (1 << 30, 16 * MIB);
    let auto = p
        .plan_kernel_as(job(bytes, 0, 1), batch, Threads::Auto, None, "--threads")
        .unwrap();
    assert!(!auto.threads_fixed);
    let chosen = auto.cpus.len();
    assert_eq!(auto.predicted_gbps, m.predict_kernel(chosen, bytes));
    let fixed = p
        .plan_kernel_as(
            job(bytes, 0, 1),
            batch,
            Threads::Count(2),
            None,
            "--threads",
        )
        .unwrap();
    assert_ne!(chosen, 2, "{auto:?}");
    assert_eq!(fixed.cpus.len(), 2);
    assert!(fixed.threads_fixed);
    assert_eq!(
        fixed.predicted_gbps,
        m.predict_kernel(2, bytes),
        "{fixed:?}"
    );
    // The reasons name the user's count and its prediction; the planner's own is marked so.
    let g = fixed.predicted_gbps.unwrap();
    assert_eq!(fixed.why[0], "2 thread(s): --threads 2");
    assert_eq!(fixed.why[1], format!("2 thread(s): predicted {g:.2} GB/s"));
    let own = format!("the planner's own choice: {chosen} thread(s): predicted");
    assert!(gives(&fixed.why, &own), "{:?}", fixed.why);
}

/// Where the user fixed the thread count (or, on the remap path, the engine), every reason the
/// planner gives for its own choice is marked so, on both paths: nothing it would have chosen
/// reads as the plan. The other reasons (placement) stay as they are.
#[test]
fn the_planners_own_reasons_are_marked_where_the_user_fixed_the_choice() {
    use pagemig::Request;
    use pagemig::sys::Mapping;

    let t = fake_sysfs::epyc_2s().read();
    let m = model(&t);
    let own = |w: &String| format!("the planner's own choice: {w}");

    // The kernel path, with a load that caps the planner's own count, so it says so too.
    let busy = Resources {
        busy_cpus: 60.0,
        ..idle("0-63")
    };
    let (bytes, batch) = (1 << 30, 16 * MIB);
    // The planner's own plan, and the plan with `--threads 2`.
    let plans = |p: &Planner<'_>| {
        let auto = p.plan_kernel(job(bytes, 0, 1), batch).unwrap();
        let fixed = p.plan_kernel_as(
            job(bytes, 0, 1),
            batch,
            Threads::Count(2),
            None,
            "--threads",
        );
        (auto, fixed.unwrap())
    };
    let (auto, fixed) = plans(&Planner::new(&t, Some(&m), busy));
    // Its count with its prediction, and the load's cap; then where the threads run.
    let [count, cap, place] = &auto.why[..] else {
        panic!("{:?}", auto.why)
    };
    let g = m.predict_kernel(2, bytes).unwrap();
    assert_eq!(
        fixed.why,
        [
            "2 thread(s): --threads 2".into(),
            format!("2 thread(s): predicted {g:.2} GB/s"),
            own(count),
            own(cap),
            place.clone(),
        ],
        "{:?}",
        auto.why
    );

    // Without a model, the planner's default count is its own choice too.
    let (auto, fixed) = plans(&Planner::new(&t, None, idle("0-63")));
    assert!(
        auto.why[0].starts_with("kernel path not calibrated"),
        "{:?}",
        auto.why
    );
    assert!(fixed.why.contains(&own(&auto.why[0])), "{:?}", fixed.why);

    // The remap path: the planner's copier, then the user's threads or engine.
    let p = Planner::new(&t, Some(&m), idle("0-63")).remap_support(Ok(()));
    let mut buffer = Mapping::anonymous(64 * MIB as usize).unwrap();
    let scan = present(&buffer);
    let mut request = Request::mapping(&mut buffer, 0..64 * MIB as usize, 1);
    let batch_bytes = (request.options.batch() * pagemig::sys::base_page_size()) as u64;
    let route = Route {
        from: None,
        to: Some(1),
    };
    let copy = p
        .plan_copy(Job {
            bytes: batch_bytes,
            route,
        })
        .unwrap();
    let (copier_why, rest) = copy.why.split_first().unwrap();
    for (threads, engine, user) in [
        (
            Threads::Count(2),
            None,
            "2 copy thread(s): --threads 2".into(),
        ),
        (
            Threads::Auto,
            Some(EngineKind::Nt),
            format!("engine {}: chosen by the user", EngineKind::Nt),
        ),
    ] {
        (request.options.threads, request.options.engine) = (threads, engine);
        let plan = p.plan(&request, &scan).unwrap();
        let copier = plan.copier.unwrap();
        let g = m.predict_copy(copier, batch_bytes).unwrap();
        let mut expected = vec![own(copier_why)];
        expected.extend(rest.iter().cloned());
        expected.extend([user, format!("{copier}: predicted {g:.2} GB/s")]);
        assert_eq!(plan.why[1..], expected, "{:?}", plan.why);
    }
}

/// The check measured every pool slower than one thread at 16 MiB, and the model learned it:
/// the next plan for 16 MiB batches is not a pool, whatever the pools did on smaller batches.
#[test]
fn a_pool_the_check_found_slower_is_not_planned_again() {
    let t = fake_sysfs::epyc_2s().read();
    let mut m = model(&t);
    let bytes = 16 * MIB;
    let plan = |m: &CostModel| {
        Planner::new(&t, Some(m), idle("0-63"))
            .plan_copy(job(bytes, 0, 1))
            .unwrap()
    };
    assert!(
        matches!(plan(&m).copier, Copier::Pool { .. }),
        "{:?}",
        plan(&m)
    );
    let slow: Vec<CopyPoint> = m
        .copiers()
        .into_iter()
        .filter(|c| matches!(c, Copier::Pool { .. }))
        .map(|copier| CopyPoint {
            copier,
            bytes,
            gbps: 1.0,
            median_gbps: None,
        })
        .collect();
    m.learn(&slow);
    let after = plan(&m);
    assert!(matches!(after.copier, Copier::Thread { .. }), "{after:?}");
}

/// On the remap path with the user's thread count, no reason of the planner's own choice reads
/// as the plan's: its no-model default, and the placement of workers it would have used where
/// the user's count has none; and the placement of the user's workers is given where the
/// planner would have used none.
#[test]
fn on_the_remap_path_the_users_count_leaves_no_reason_of_the_planner_unmarked() {
    use pagemig::Request;
    use pagemig::sys::Mapping;

    let t = fake_sysfs::epyc_2s().read();
    let m = model(&t);
    let mut buffer = Mapping::anonymous(64 * MIB as usize).unwrap();
    let scan = present(&buffer);
    let mut request = Request::mapping(&mut buffer, 0..64 * MIB as usize, 1);
    let placed = "workers on the target node 1's CPUs first";

    // No model: the planner's one thread is its own choice, not the user's two.
    request.options.threads = Threads::Count(2);
    let p = Planner::new(&t, None, idle("0-63")).remap_support(Ok(()));
    let plan = p.plan(&request, &scan).unwrap();
    assert!(
        matches!(plan.copier, Some(Copier::Pool { workers: 2, .. })),
        "{plan:?}"
    );
    let own = "the planner's own choice: ";
    let no_model = format!("{own}no cost model: one thread");
    assert!(gives(&plan.why, &no_model), "{:?}", plan.why);
    assert!(
        gives(&plan.why, placed),
        "the user's workers are placed: {:?}",
        plan.why
    );

    let p = Planner::new(&t, Some(&m), idle("0-63")).remap_support(Ok(()));
    // The planner's pool, the user's one thread: the pool's placement is the planner's own.
    request.options.threads = Threads::Auto;
    let auto = p.plan(&request, &scan).unwrap();
    assert!(matches!(auto.copier, Some(Copier::Pool { .. })), "{auto:?}");
    request.options.threads = Threads::Count(1);
    let one = p.plan(&request, &scan).unwrap();
    assert!(matches!(one.copier, Some(Copier::Thread { .. })), "{one:?}");
    assert!(!gives(&one.why, placed), "{:?}", one.why);
    assert!(gives(&one.why, &format!("{own}{placed}")), "{:?}", one.why);

    // The planner's one thread (4 KiB batches), the user's four workers: they are placed
    // (the kernel path not calibrated, so that the remap path stays).
    let m = CostModel {
        kernel_path: Vec::new(),
        ..m
    };
    let p = Planner::new(&t, Some(&m), idle("0-63")).remap_support(Ok(()));
    request.options.batch = Some(1);
    request.options.threads = Threads::Auto;
    let auto = p.plan(&request, &scan).unwrap();
    assert!(
        matches!(auto.copier, Some(Copier::Thread { .. })),
        "{auto:?}"
    );
    request.options.threads = Threads::Count(4);
    let four = p.plan(&request, &scan).unwrap();
    assert!(
        matches!(four.copier, Some(Copier::Pool { workers: 4, .. })),
        "{four:?}"
    );
    assert!(gives(&four.why, placed), "{:?}", four.why);
}

/// A placement the user chose is named as text among the reasons, after the planner's own
/// placement marked as such; a CPU list caps the threads at one per CPU listed, whether the
/// count is the user's or the planner's.
#[test]
fn a_placement_the_user_chose_reads_as_text_and_caps_the_threads() {
    let t = fake_sysfs::epyc_2s().read();
    let m = model(&t);
    let p = Planner::new(&t, Some(&m), idle("0-63"));
    let (bytes, batch) = (1 << 30, 16 * MIB);
    let plan = |threads, placement: &Placement| {
        p.plan_kernel_as(
            job(bytes, 0, 1),
            batch,
            threads,
            Some(placement),
            "--threads",
        )
        .unwrap()
    };
    let one_cpu = Placement::Explicit("3".parse().unwrap());
    let fixed = plan(Threads::Count(4), &one_cpu);
    assert_eq!(fixed.cpus, [3], "{:?}", fixed.why);
    assert_eq!(
        fixed.why[0],
        "1 thread(s): --threads 4, but placement CPUs 3 has 1 CPU(s), one thread each"
    );
    assert_eq!(fixed.predicted_gbps, m.predict_kernel(1, bytes));
    let user = "placement CPUs 3: chosen by the user";
    assert_eq!(fixed.why.last().unwrap(), user, "{:?}", fixed.why);
    let planners = "the planner's own choice: workers on the target node 1's CPUs first";
    assert!(gives(&fixed.why, planners), "{:?}", fixed.why);
    assert!(!gives(&fixed.why, "workers on"), "{:?}", fixed.why);
    // The planner's own count stays within the CPUs listed.
    let two_cpus = Placement::Explicit("3,5".parse().unwrap());
    let auto = plan(Threads::Auto, &two_cpus);
    assert!(auto.cpus.len() <= 2, "{:?}", auto.why);
    assert_eq!(
        auto.predicted_gbps,
        m.predict_kernel(auto.cpus.len(), bytes)
    );
    for (placement, name) in [
        (Placement::NearSrc, "near-src"),
        (Placement::SpreadL3, "spread"),
        (Placement::NearDst, "near-dst"),
    ] {
        let why = plan(Threads::Auto, &placement).why;
        let user = format!("placement {name}: chosen by the user: workers ");
        assert!(gives(&why, &user), "{why:?}");
        assert!(
            !why.iter()
                .any(|w| w.contains("Near") || w.contains("Spread")),
            "{why:?}"
        );
    }
}

/// On the remap path too, a placement the user chose puts the copy's workers where it says (a
/// CPU list caps them at one per CPU listed, their prediction for that count), after the
/// planner's own placement marked as such; where the copy runs on the calling thread, the
/// reasons say the placement is not used.
#[test]
fn on_the_remap_path_the_users_placement_places_the_workers() {
    use pagemig::Request;
    use pagemig::sys::Mapping;

    let t = fake_sysfs::epyc_2s().read();
    let m = CostModel {
        kernel_path: Vec::new(),
        ..model(&t)
    };
    let mut buffer = Mapping::anonymous(64 * MIB as usize).unwrap();
    let scan = present(&buffer);
    let mut request = Request::mapping(&mut buffer, 0..64 * MIB as usize, 1);
    let p = Planner::new(&t, Some(&m), idle("0-63")).remap_support(Ok(()));
    request.options.threads = Threads::Count(4);
    request.options.placement = Some(Placement::Explicit("3,5".parse().unwrap()));
    let plan = p.plan(&request, &scan).unwrap();
    assert_eq!(plan.cpus, [3, 5], "{:?}", plan.why);
    let Some(Copier::Pool { workers: 2, engine }) = plan.copier else {
        panic!("{plan:?}")
    };
    let copier = Copier::Pool { engine, workers: 2 };
    assert_eq!(
        plan.predicted_gbps,
        m.predict_copy(copier, plan.batch as u64 * 4096)
    );
    assert_eq!(
        plan.placement,
        Some(Placement::Explicit("3,5".parse().unwrap()))
    );
    assert!(
        gives(
            &plan.why,
            "2 copy thread(s): placement CPUs 3,5 has 2 CPU(s), one worker each"
        ),
        "{:?}",
        plan.why
    );
    assert!(
        gives(&plan.why, "placement CPUs 3,5: chosen by the user"),
        "{:?}",
        plan.why
    );
    assert!(!gives(&plan.why, "workers on"), "{:?}", plan.why);
    assert!(
        gives(
            &plan.why,
            "the planner's own choice: workers on the target node 1's CPUs first"
        ),
        "{:?}",
        plan.why
    );
    // The planner's own count, capped by the list: its pool reads as its own choice.
    request.options.threads = Threads::Auto;
    let plan = p.plan(&request, &scan).unwrap();
    assert_eq!(plan.cpus, [3, 5], "{:?}", plan.why);
    let own = "the planner's own choice: memcpy on 8 pool worker(s): predicted";
    assert!(gives(&plan.why, own), "{:?}", plan.why);
    assert!(!gives(&plan.why, "memcpy on 8"), "{:?}", plan.why);
    // A named placement, the planner's own count.
    request.options.placement = Some(Placement::NearSrc);
    let plan = p.plan(&request, &scan).unwrap();
    assert!(matches!(plan.copier, Some(Copier::Pool { .. })), "{plan:?}");
    assert_eq!(plan.placement, Some(Placement::NearSrc));
    assert!(
        gives(&plan.why, "placement near-src: chosen by the user: "),
        "{:?}",
        plan.why
    );
    let predictions = plan.why.iter().filter(|w| w.contains("predicted"));
    assert_eq!(
        predictions.count(),
        1,
        "the planner's count, once: {:?}",
        plan.why
    );
    // One thread copies: no worker to place.
    request.options.threads = Threads::Count(1);
    let plan = p.plan(&request, &scan).unwrap();
    assert!(
        matches!(plan.copier, Some(Copier::Thread { .. })),
        "{plan:?}"
    );
    assert_eq!(plan.placement, None);
    assert!(
        gives(
            &plan.why,
            "placement near-src: not used: the copy runs on the calling thread"
        ),
        "{:?}",
        plan.why
    );
    // A DMA engine copies: no worker either.
    request.options.threads = Threads::Auto;
    let dma = model_with_dma(&t, 1000.0);
    let p = Planner::new(&t, Some(&dma), idle("0-63"))
        .remap_support(Ok(()))
        .prefer_dma(true);
    let plan = p.plan(&request, &scan).unwrap();
    assert!(matches!(plan.copier, Some(Copier::Dma { .. })), "{plan:?}");
    assert!(
        gives(
            &plan.why,
            "placement near-src: not used: the copy runs on the DMA engine dsa"
        ),
        "{:?}",
        plan.why
    );
}
