use pagemig::topology::{Topology, TopologyError};

use crate::fake_sysfs::{self, FakeSysfs};

fn ids(set: &pagemig::topology::IdSet) -> String {
    set.to_string()
}

#[test]
fn intel_two_socket() {
    let t = fake_sysfs::intel_2s().read();
    assert_eq!(t.nodes.len(), 2);
    assert_eq!(ids(&t.nodes[1].cpus), "16-31,48-63");
    assert_eq!(t.nodes[0].mem_total, 256 << 30);
    assert_eq!(t.nodes[0].mem_free, 128 << 30);
    assert_eq!(t.distance(0, 1), Some(21));
    assert_eq!(t.l3_domains.len(), 2);
    assert_eq!(ids(&t.l3_domains[1].cpus), "16-31,48-63");
    assert_eq!(ids(&t.l3_domains[1].nodes), "1");
    assert_eq!(t.l3_domains[0].size, Some(60 << 20));
    assert!(t.nodes.iter().all(|n| !n.is_memory_only()));
    assert!(t.tiers.is_empty());
    assert_eq!(t.cpu_node(40), Some(0));
}

#[test]
fn epyc_has_four_l3_domains_per_node() {
    let t = fake_sysfs::epyc_2s().read();
    assert_eq!(t.l3_domains.len(), 8);
    for (i, d) in t.l3_domains.iter().enumerate() {
        assert_eq!(d.index, i);
        assert_eq!(d.cpus.len(), 8);
        assert_eq!(ids(&d.nodes), if i < 4 { "0" } else { "1" });
    }
    assert_eq!(t.cpu_domain(17).unwrap().index, 2);
    assert_eq!(t.nodes_by_distance(1), [1, 0]);
}

#[test]
fn arm_memory_only_nodes_and_missing_caches() {
    let t = fake_sysfs::arm_memory_only().read();
    assert_eq!(t.nodes.len(), 3);
    assert!(!t.nodes[0].is_memory_only());
    assert!(t.nodes[1].is_memory_only() && t.nodes[2].is_memory_only());
    assert_eq!(ids(&t.memory_nodes()), "0-2");
    // No cache description: the node's CPUs form one domain.
    assert_eq!(t.l3_domains.len(), 1);
    assert_eq!(ids(&t.l3_domains[0].cpus), "0-71");
    assert_eq!(t.l3_domains[0].size, None);
    // Nodes with CPUs, nearest first: only node 0 has CPUs.
    assert_eq!(t.nodes_by_distance(2), [0]);
}

#[test]
fn cxl_node_is_memory_only_in_a_lower_tier() {
    let t = fake_sysfs::cxl().read();
    let cxl = t.node(1).unwrap();
    assert!(cxl.is_memory_only());
    assert_eq!(cxl.mem_total, 128 << 30);
    assert_eq!(t.tiers.len(), 2);
    assert_eq!(t.node_tier(0), Some(4));
    assert_eq!(t.node_tier(1), Some(22));
    assert_eq!(t.distance(1, 0), Some(14));
}

#[test]
fn one_node_machine() {
    let t = fake_sysfs::one_node().read();
    assert_eq!(t.nodes.len(), 1);
    assert_eq!(ids(&t.online_cpus), "0-1");
    assert_eq!(t.l3_domains.len(), 1);
    assert_eq!(ids(&t.memory_nodes()), "0");
}

#[test]
fn kernel_without_numa_gets_one_node() {
    let s = FakeSysfs::new("0-3");
    let t = s.read();
    assert_eq!(t.nodes.len(), 1);
    assert_eq!(ids(&t.nodes[0].cpus), "0-3");
}

#[test]
fn malformed_files_name_the_file() {
    let s = fake_sysfs::one_node();
    s.file("devices/system/node/node0/cpulist", "0-x");
    let err = Topology::from_sysfs(s.dir.path()).unwrap_err();
    assert!(matches!(err, TopologyError::Parse { .. }));
    assert!(err.to_string().contains("node0/cpulist"), "{err}");
    let empty = tempfile::TempDir::new().unwrap();
    let err = Topology::from_sysfs(empty.path()).unwrap_err();
    assert!(err.to_string().contains("cpu/online"), "{err}");
    // A missing file reads as every other failed read does.
    let chain = anyhow_like(&err);
    assert!(chain.contains("No such file or directory"), "{chain}");

    // Damaged trees are refused with the file named, not read as a smaller machine.
    let cases: [(&str, &str, &str); 3] = [
        (
            "devices/system/node/node0/meminfo",
            "garbage",
            "no \"Node N MemTotal",
        ),
        (
            "devices/system/node/node0/distance",
            "10 20",
            "2 distance(s) for 1 online node(s)",
        ),
        ("devices/system/node/online", "0-1", "node 1 is online but"),
    ];
    for (file, text, want) in cases {
        let s = fake_sysfs::one_node();
        s.file(file, text);
        let err = Topology::from_sysfs(s.dir.path()).unwrap_err();
        assert!(matches!(err, TopologyError::Parse { .. }), "{err}");
        let shown = err.to_string();
        assert!(shown.contains(want), "{shown}");
        assert!(shown.contains(file.rsplit('/').next().unwrap()), "{shown}");
    }
}

/// The error and its sources, as the CLI prints them.
fn anyhow_like(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

#[test]
fn this_machine() {
    let t = Topology::detect().unwrap();
    assert!(!t.nodes.is_empty());
    assert!(!t.memory_nodes().is_empty());
    for cpu in t.online_cpus.iter() {
        assert!(t.cpu_domain(cpu).is_some(), "cpu {cpu} has no L3 domain");
    }
    let allowed = pagemig::sys::allowed_cpus().unwrap();
    assert!(!allowed.intersection(&t.online_cpus).is_empty());
}
