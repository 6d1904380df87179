use pagemig::copy::{Placement, PlacementError, Route};
use pagemig::topology::{CpuSet, Topology};

use crate::fake_sysfs;

fn domains(t: &Topology, cpus: &[u32]) -> Vec<usize> {
    cpus.iter()
        .map(|&c| t.cpu_domain(c).unwrap().index)
        .collect()
}

fn all(t: &Topology) -> CpuSet {
    t.online_cpus.clone()
}

#[test]
fn spread_uses_one_cpu_per_domain_before_a_second() {
    let t = fake_sysfs::epyc_2s().read();
    let cpus = Placement::SpreadL3
        .choose(&t, Route::default(), &all(&t), 4)
        .unwrap();
    let mut d = domains(&t, &cpus);
    d.dedup();
    assert_eq!(d.len(), 4, "{cpus:?}");
    let cpus = Placement::SpreadL3
        .choose(&t, Route::default(), &all(&t), 16)
        .unwrap();
    let d = domains(&t, &cpus);
    for domain in 0..8 {
        assert_eq!(d.iter().filter(|&&x| x == domain).count(), 2, "{cpus:?}");
    }
    assert_eq!(&d[..8], &[0, 1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn near_dst_starts_on_the_destination_node() {
    let t = fake_sysfs::epyc_2s().read();
    let route = Route {
        from: Some(0),
        to: Some(1),
    };
    let cpus = Placement::NearDst.choose(&t, route, &all(&t), 4).unwrap();
    assert!(cpus.iter().all(|&c| t.cpu_node(c) == Some(1)), "{cpus:?}");
    assert_eq!(domains(&t, &cpus), [4, 5, 6, 7]);
    // More workers than the node has CPUs: the next nearest node fills in.
    let cpus = Placement::NearDst.choose(&t, route, &all(&t), 40).unwrap();
    assert!(cpus[..32].iter().all(|&c| t.cpu_node(c) == Some(1)));
    assert!(cpus[32..].iter().all(|&c| t.cpu_node(c) == Some(0)));
    let cpus = Placement::NearSrc.choose(&t, route, &all(&t), 2).unwrap();
    assert!(cpus.iter().all(|&c| t.cpu_node(c) == Some(0)));
}

#[test]
fn memory_only_target_uses_the_nearest_cpus() {
    let t = fake_sysfs::cxl().read();
    let route = Route {
        from: Some(0),
        to: Some(1),
    };
    let near_dst = Placement::NearDst.choose(&t, route, &all(&t), 3).unwrap();
    assert!(near_dst.iter().all(|&c| t.cpu_node(c) == Some(0)));
    let t = fake_sysfs::arm_memory_only().read();
    let cpus = Placement::NearSrc
        .choose(
            &t,
            Route {
                from: Some(1),
                to: Some(2),
            },
            &all(&t),
            2,
        )
        .unwrap();
    assert_eq!(cpus, [0, 1]);
}

#[test]
fn placement_stays_inside_the_affinity_mask() {
    let t = fake_sysfs::intel_2s().read();
    let allowed: CpuSet = "20-23".parse().unwrap();
    for p in [Placement::SpreadL3, Placement::NearDst, Placement::NearSrc] {
        let cpus = p
            .choose(
                &t,
                Route {
                    from: Some(0),
                    to: Some(0),
                },
                &allowed,
                6,
            )
            .unwrap();
        assert!(cpus.iter().all(|&c| allowed.contains(c)), "{p:?}: {cpus:?}");
        assert_eq!(cpus.len(), 6);
    }
    let explicit = Placement::Explicit("20,40".parse().unwrap());
    match explicit.choose(&t, Route::default(), &allowed, 2) {
        Err(PlacementError::OutsideMask { cpus, .. }) => assert_eq!(cpus.to_string(), "40"),
        other => panic!("{other:?}"),
    }
    let none: CpuSet = "100-101".parse().unwrap();
    assert!(matches!(
        Placement::SpreadL3.choose(&t, Route::default(), &none, 1),
        Err(PlacementError::NoUsableCpu { .. })
    ));
    assert_eq!(
        Placement::SpreadL3.choose(&t, Route::default(), &allowed, 0),
        Err(PlacementError::ZeroWorkers)
    );
    assert_eq!(
        Placement::NearDst.choose(
            &t,
            Route {
                from: None,
                to: Some(5)
            },
            &allowed,
            1
        ),
        Err(PlacementError::UnknownNode(5))
    );
}

#[test]
fn explicit_keeps_the_given_order_and_cycles() {
    let t = fake_sysfs::one_node().read();
    let cpus = Placement::Explicit("0-1".parse().unwrap())
        .choose(&t, Route::default(), &all(&t), 5)
        .unwrap();
    assert_eq!(cpus, [0, 1, 0, 1, 0]);
}
