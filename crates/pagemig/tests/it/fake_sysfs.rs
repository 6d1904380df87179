//! Fake sysfs trees with the layouts of real machines.

use std::fs;
use std::path::Path;

use pagemig::topology::{CpuSet, Topology};
use tempfile::TempDir;

/// A sysfs tree under a temporary directory.
pub struct FakeSysfs {
    pub dir: TempDir,
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, format!("{text}\n")).unwrap();
}

impl FakeSysfs {
    pub fn new(online_cpus: &str) -> Self {
        let s = FakeSysfs {
            dir: TempDir::new().unwrap(),
        };
        s.file("devices/system/cpu/online", online_cpus);
        s
    }

    pub fn file(&self, rel: &str, text: &str) {
        write(&self.dir.path().join(rel), text);
    }

    /// Node `id` with CPUs, memory in MiB and its distance row (one entry per online node).
    pub fn node(&self, id: u32, cpus: &str, mem_mib: u64, distances: &[u32]) {
        let d = format!("devices/system/node/node{id}");
        self.file(&format!("{d}/cpulist"), cpus);
        self.file(
            &format!("{d}/meminfo"),
            &format!(
                "Node {id} MemTotal:       {} kB\nNode {id} MemFree:        {} kB\nNode {id} MemUsed:        0 kB",
                mem_mib * 1024,
                mem_mib * 512
            ),
        );
        let row: Vec<String> = distances.iter().map(u32::to_string).collect();
        self.file(&format!("{d}/distance"), &row.join(" "));
    }

    /// Every CPU of `shared` gets an L3 shared with all of `shared`, plus an L2 of its own
    /// (to check that the reader picks level 3 and not the last index).
    pub fn l3(&self, shared: &str, size: &str) {
        let cpus: CpuSet = shared.parse().unwrap();
        for cpu in cpus.iter() {
            let c = format!("devices/system/cpu/cpu{cpu}/cache");
            self.file(&format!("{c}/index2/level"), "2");
            self.file(&format!("{c}/index2/shared_cpu_list"), &cpu.to_string());
            self.file(&format!("{c}/index3/level"), "3");
            self.file(&format!("{c}/index3/shared_cpu_list"), shared);
            self.file(&format!("{c}/index3/size"), size);
        }
    }

    pub fn read(&self) -> Topology {
        Topology::from_sysfs(self.dir.path()).unwrap()
    }
}

/// Two-socket Intel Xeon: 2 nodes, 16 cores + 16 SMT siblings each, one L3 per socket.
pub fn intel_2s() -> FakeSysfs {
    let s = FakeSysfs::new("0-63");
    s.file("devices/system/node/online", "0-1");
    s.file("devices/system/node/has_memory", "0-1");
    s.node(0, "0-15,32-47", 262_144, &[10, 21]);
    s.node(1, "16-31,48-63", 262_144, &[21, 10]);
    s.l3("0-15,32-47", "61440K");
    s.l3("16-31,48-63", "61440K");
    s
}

/// AMD EPYC, 2 sockets in NPS1: each node has 4 CCDs (L3 domains) of 8 cores.
pub fn epyc_2s() -> FakeSysfs {
    let s = FakeSysfs::new("0-63");
    s.file("devices/system/node/online", "0-1");
    s.file("devices/system/node/has_memory", "0-1");
    s.node(0, "0-31", 393_216, &[10, 32]);
    s.node(1, "32-63", 393_216, &[32, 10]);
    for ccd in 0..8 {
        s.l3(&format!("{}-{}", ccd * 8, ccd * 8 + 7), "32768K");
    }
    s
}

/// An ARM server without cache descriptions, with two memory-only nodes (HBM and a GPU).
pub fn arm_memory_only() -> FakeSysfs {
    let s = FakeSysfs::new("0-71");
    s.file("devices/system/node/online", "0-2");
    s.file("devices/system/node/has_memory", "0-2");
    s.file("devices/system/node/has_cpu", "0");
    s.node(0, "0-71", 491_520, &[10, 40, 80]);
    s.node(1, "", 98_304, &[40, 10, 80]);
    s.node(2, "", 98_304, &[80, 80, 10]);
    s
}

/// One socket with a CXL memory expander as node 1, in a lower memory tier.
pub fn cxl() -> FakeSysfs {
    let s = FakeSysfs::new("0-7");
    s.file("devices/system/node/online", "0-1");
    s.file("devices/system/node/has_memory", "0-1");
    s.node(0, "0-7", 65_536, &[10, 14]);
    s.node(1, "", 131_072, &[14, 10]);
    s.l3("0-7", "16384K");
    s.file("devices/virtual/memory_tiering/memory_tier4/nodelist", "0");
    s.file("devices/virtual/memory_tiering/memory_tier22/nodelist", "1");
    s
}

/// The development machine: one node, two CPUs sharing one L3.
pub fn one_node() -> FakeSysfs {
    let s = FakeSysfs::new("0-1");
    s.file("devices/system/node/online", "0");
    s.file("devices/system/node/has_memory", "0");
    s.node(0, "0-1", 24_576, &[10]);
    s.l3("0-1", "491520K");
    s
}

/// One AMD EPYC socket in NPS1: one node, 8 CCDs (L3 domains) of 8 cores.
pub fn epyc_1s() -> FakeSysfs {
    let s = FakeSysfs::new("0-63");
    s.file("devices/system/node/online", "0");
    s.file("devices/system/node/has_memory", "0");
    s.node(0, "0-63", 393_216, &[10]);
    for ccd in 0..8 {
        s.l3(&format!("{}-{}", ccd * 8, ccd * 8 + 7), "32768K");
    }
    s
}
