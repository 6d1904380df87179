//! Property tests that feed the parsers of user input and of kernel files anything: they
//! return a value or an error, never panic, and what they accept means what it says. Short
//! runs, so that the normal test command covers them.

use std::fs;

use pagemig::Threads;
use pagemig::policy::CostModel;
use pagemig::process::Process;
use pagemig::topology::{IdSet, Topology};
use proptest::prelude::*;

use crate::fake_sysfs::FakeSysfs;

/// Text made of the characters these parsers care about, and some they do not.
fn list_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[0-9,\\- xa-f\\n]{0,24}|[0-9]{1,25}|.{0,12}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn node_and_cpu_lists(text in list_text()) {
        if let Ok(set) = text.parse::<IdSet>() {
            // What is accepted prints back as a list that parses to the same set.
            let again: IdSet = set.to_string().parse().unwrap();
            prop_assert_eq!(again, set);
        }
    }

    #[test]
    fn pids_and_thread_counts(text in list_text()) {
        if let Ok(Process::Pid(p)) = text.parse::<Process>() {
            prop_assert!(p > 0 && p <= i32::MAX as u32);
        }
        if let Ok(Threads::Count(n)) = text.parse::<Threads>() {
            prop_assert!(n > 0);
        }
    }
}

/// A sysfs file's contents: well-formed, damaged, or anything.
fn sysfs_text(good: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(good.to_owned()),
        Just(String::new()),
        list_text(),
        proptest::string::string_regex("Node 0 MemTotal: +[0-9a-z]{0,22} kB\n.{0,10}").unwrap(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sysfs_trees(
        online in sysfs_text("0-3"),
        nodes in sysfs_text("0-1"),
        memory in sysfs_text("0-1"),
        cpulist in sysfs_text("0-1"),
        distance in sysfs_text("10 20"),
        meminfo in sysfs_text("Node 0 MemTotal: 1024 kB\nNode 0 MemFree: 512 kB"),
        second_node in any::<bool>(),
    ) {
        let s = FakeSysfs::new(&online);
        s.file("devices/system/node/online", &nodes);
        s.file("devices/system/node/has_memory", &memory);
        s.file("devices/system/node/node0/cpulist", &cpulist);
        s.file("devices/system/node/node0/distance", &distance);
        s.file("devices/system/node/node0/meminfo", &meminfo);
        if second_node {
            s.node(1, "2-3", 64, &[20, 10]);
        }
        if let Ok(topo) = Topology::from_sysfs(s.dir.path()) {
            // Every node it reports is one the tree says is online.
            let online: IdSet = nodes.parse().unwrap();
            for n in &topo.nodes {
                prop_assert!(online.contains(n.id), "node {} is not online in {nodes:?}", n.id);
            }
        }
    }

    #[test]
    fn cost_model_files(text in prop_oneof![
        list_text(),
        proptest::string::string_regex("\\{\"version\": ?[0-9-]{1,4}(, ?\"[a-z_]{1,8}\": ?[0-9.e-]{1,8})?\\}").unwrap(),
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        fs::write(&path, text).unwrap();
        prop_assert!(CostModel::load(&path).is_err());
    }
}
