//! DAMON control against a fake sysfs tree laid out like `/sys/kernel/mm/damon/admin`.
//!
//! Plain files cannot act like the kernel's (writing `nr_kdamonds` creates no directory, `state`
//! keeps what was written), so each test lays out the directories the kernel would create and
//! checks what pagemig wrote into them.

use std::fs;
use std::path::Path;
use std::time::Duration;

use pagemig::tier::TierError;
use pagemig::tier::damon::{self, Damon, DamonAttrs};

/// Files of one kdamond directory, as the kernel creates them after `nr_kdamonds` and
/// `nr_contexts`, `nr_targets`, `nr_schemes` are written.
fn kdamond(admin: &Path, index: usize, state: &str, pid: i64) {
    let k = admin.join(format!("kdamonds/{index}"));
    let ctx = k.join("contexts/0");
    for d in [
        "monitoring_attrs/intervals",
        "monitoring_attrs/nr_regions",
        "targets/0",
        "schemes/0/access_pattern/sz",
        "schemes/0/access_pattern/nr_accesses",
        "schemes/0/access_pattern/age",
        "schemes/0/tried_regions",
    ] {
        fs::create_dir_all(ctx.join(d)).unwrap();
    }
    fs::write(k.join("state"), state).unwrap();
    fs::write(k.join("pid"), pid.to_string()).unwrap();
    fs::write(k.join("contexts/nr_contexts"), "0").unwrap();
    fs::write(ctx.join("avail_operations"), "vaddr\nfvaddr\npaddr\n").unwrap();
}

fn admin_with(nr: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("kdamonds")).unwrap();
    fs::write(dir.path().join("kdamonds/nr_kdamonds"), nr.to_string()).unwrap();
    dir
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap().trim().to_owned()
}

fn tried_region(admin: &Path, index: usize, n: usize, start: u64, end: u64, acc: u64, age: u64) {
    let r = admin.join(format!(
        "kdamonds/{index}/contexts/0/schemes/0/tried_regions/{n}"
    ));
    fs::create_dir_all(&r).unwrap();
    for (f, v) in [
        ("start", start),
        ("end", end),
        ("nr_accesses", acc),
        ("age", age),
    ] {
        fs::write(r.join(f), format!("{v}\n")).unwrap();
    }
}

fn attrs() -> DamonAttrs {
    DamonAttrs {
        sample: Duration::from_millis(5),
        aggr: Duration::from_millis(100),
        update: Duration::from_millis(500),
        min_regions: 10,
        max_regions: 1000,
    }
}

#[test]
fn start_configures_one_kdamond_per_process_after_those_of_others_and_drop_restores() {
    // Another tool left one kdamond directory, off: it must stay as it was.
    let admin = admin_with(1);
    kdamond(admin.path(), 0, "off", -1);
    fs::write(admin.path().join("kdamonds/0/contexts/nr_contexts"), "1").unwrap();
    kdamond(admin.path(), 1, "off", 4242);
    kdamond(admin.path(), 2, "off", 4243);
    let run = tempfile::tempdir().unwrap();
    let (mut d, cleaned) = Damon::start(admin.path(), run.path(), &[100, 200], attrs()).unwrap();
    assert!(cleaned.is_none());
    let a = admin.path();
    assert_eq!(read(a.join("kdamonds/nr_kdamonds")), "3");
    for (index, pid) in [(1, "100"), (2, "200")] {
        let ctx = a.join(format!("kdamonds/{index}/contexts/0"));
        assert_eq!(read(ctx.join("operations")), "vaddr");
        assert_eq!(read(ctx.join("targets/0/pid_target")), pid);
        assert_eq!(
            read(ctx.join("monitoring_attrs/intervals/sample_us")),
            "5000"
        );
        assert_eq!(
            read(ctx.join("monitoring_attrs/intervals/aggr_us")),
            "100000"
        );
        assert_eq!(read(ctx.join("monitoring_attrs/nr_regions/min")), "10");
        assert_eq!(read(ctx.join("schemes/0/action")), "stat");
        assert_eq!(
            read(ctx.join("schemes/0/access_pattern/age/max")),
            "4294967295"
        );
        assert_eq!(read(a.join(format!("kdamonds/{index}/state"))), "on");
    }
    assert_eq!(read(a.join("kdamonds/0/contexts/nr_contexts")), "1");
    assert_eq!(d.threads(), vec![(100, 4242), (200, 4243)]);
    // The record names exactly what is ours.
    let record = read(run.path().join("damon.json"));
    assert!(record.contains("\"base\":1"), "{record}");

    // Tried regions: frequency relative to aggr / sample = 20 samples.
    tried_region(a, 1, 0, 0x1000, 0x5000, 20, 3);
    tried_region(a, 1, 1, 0x5000, 0x9000, 5, 0);
    tried_region(a, 2, 0, 0x10000, 0x20000, 0, 9);
    let s = d.sample().unwrap();
    assert_eq!(
        read(a.join("kdamonds/1/state")),
        "update_schemes_tried_regions"
    );
    assert_eq!(s.len(), 3);
    assert_eq!(
        (s[0].pid, s[0].start, s[0].end, s[0].accesses, s[0].age),
        (100, 0x1000, 0x5000, 1.0, 3)
    );
    assert_eq!(s[1].accesses, 0.25);
    assert_eq!((s[2].pid, s[2].accesses), (200, 0.0));

    drop(d);
    assert_eq!(read(a.join("kdamonds/1/state")), "off");
    assert_eq!(read(a.join("kdamonds/2/state")), "off");
    assert_eq!(
        read(a.join("kdamonds/nr_kdamonds")),
        "1",
        "the count is as before"
    );
    assert_eq!(
        read(a.join("kdamonds/0/state")),
        "off",
        "the other tool's is untouched"
    );
    assert!(!run.path().join("damon.json").exists());
}

#[test]
fn a_kdamond_of_another_program_refuses_the_start_and_changes_nothing() {
    let admin = admin_with(1);
    kdamond(admin.path(), 0, "on", 77);
    let run = tempfile::tempdir().unwrap();
    let e = Damon::start(admin.path(), run.path(), &[100], attrs()).unwrap_err();
    assert!(
        matches!(
            e,
            TierError::DamonBusy {
                index: 0,
                pid: Some(77)
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("kdamond 0 is running (thread pid 77)"),
        "{e}"
    );
    assert_eq!(read(admin.path().join("kdamonds/nr_kdamonds")), "1");
    assert!(!run.path().join("damon.json").exists());
}

#[test]
fn a_killed_agents_kdamonds_are_found_by_its_record_and_turned_off() {
    let admin = admin_with(3);
    let a = admin.path();
    // kdamond 0 belongs to someone else and is off; 1 and 2 were ours, still running.
    kdamond(a, 0, "off", -1);
    kdamond(a, 1, "on", 501);
    kdamond(a, 2, "on", 502);
    fs::write(a.join("kdamonds/2/contexts/0/targets/0/pid_target"), "200").unwrap();
    let run = tempfile::tempdir().unwrap();
    // Recorded by an agent that is gone (pid 0 is never a user process); kdamond 2's thread
    // was not recorded yet, so its target identifies it.
    fs::write(
        run.path().join("damon.json"),
        r#"{"agent":0,"agent_start":1,"base":1,"kdamonds":[{"index":1,"target":100,"thread":501},{"index":2,"target":200,"thread":null}]}"#,
    )
    .unwrap();
    let cleaned = damon::clean_stale(a, run.path()).unwrap().unwrap();
    assert_eq!(cleaned.kdamonds, vec![1, 2]);
    assert_eq!(cleaned.turned_off, vec![1, 2]);
    assert_eq!(read(a.join("kdamonds/1/state")), "off");
    assert_eq!(read(a.join("kdamonds/2/state")), "off");
    assert_eq!(read(a.join("kdamonds/nr_kdamonds")), "1");
    assert!(!run.path().join("damon.json").exists());
}

#[test]
fn a_recorded_index_now_used_by_another_program_is_left_alone() {
    let admin = admin_with(2);
    let a = admin.path();
    kdamond(a, 0, "off", -1);
    // Index 1 was ours (thread 501), but now runs thread 900 for another program.
    kdamond(a, 1, "on", 900);
    let run = tempfile::tempdir().unwrap();
    fs::write(
        run.path().join("damon.json"),
        r#"{"agent":0,"agent_start":1,"base":1,"kdamonds":[{"index":1,"target":100,"thread":501}]}"#,
    )
    .unwrap();
    let cleaned = damon::clean_stale(a, run.path()).unwrap().unwrap();
    assert!(cleaned.turned_off.is_empty());
    assert_eq!(read(a.join("kdamonds/1/state")), "on");
}

#[test]
fn a_live_agent_with_the_same_runtime_dir_refuses_the_start() {
    let admin = admin_with(0);
    let run = tempfile::tempdir().unwrap();
    // Process 1 (init) is alive; its start time is read from /proc.
    let stat = fs::read_to_string("/proc/1/stat").unwrap();
    let start: u64 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    fs::write(
        run.path().join("damon.json"),
        format!(r#"{{"agent":1,"agent_start":{start},"base":0,"kdamonds":[]}}"#),
    )
    .unwrap();
    let e = Damon::start(admin.path(), run.path(), &[100], attrs()).unwrap_err();
    assert!(matches!(e, TierError::AgentRunning { pid: 1, .. }), "{e:?}");
}

#[test]
fn missing_damon_and_bad_attributes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let e = Damon::start(&dir.path().join("admin"), run.path(), &[1], attrs()).unwrap_err();
    assert!(e.to_string().contains("DAMON is not available"), "{e}");
    let admin = admin_with(0);
    let bad = DamonAttrs {
        aggr: Duration::from_millis(1),
        ..attrs()
    };
    let e = Damon::start(admin.path(), run.path(), &[1], bad).unwrap_err();
    assert!(
        e.to_string().contains("aggregation at least one sample"),
        "{e}"
    );
}

#[test]
fn migrate_schemes_are_written_and_their_applied_bytes_summed() {
    use pagemig::tier::damon::{Action, Scheme};
    let admin = admin_with(0);
    let a = admin.path();
    kdamond(a, 0, "off", 300);
    for j in 0..2 {
        let s = a.join(format!("kdamonds/0/contexts/0/schemes/{j}"));
        for d in [
            "access_pattern/sz",
            "access_pattern/nr_accesses",
            "access_pattern/age",
            "stats",
            "filters/0",
        ] {
            fs::create_dir_all(s.join(d)).unwrap();
        }
    }
    let run = tempfile::tempdir().unwrap();
    let schemes = [
        Scheme {
            action: Action::MigrateCold(2),
            accesses: 0..=0,
            age: 5..=u32::MAX,
            anon_only: true,
        },
        Scheme {
            action: Action::MigrateHot(0),
            accesses: 1..=20,
            age: 0..=u32::MAX,
            anon_only: false,
        },
    ];
    let (d, _) = Damon::start_schemes(a, run.path(), &[42], attrs(), &schemes).unwrap();
    let s = a.join("kdamonds/0/contexts/0/schemes");
    assert_eq!(read(s.join("nr_schemes")), "2");
    assert_eq!(read(s.join("0/action")), "migrate_cold");
    assert_eq!(read(s.join("0/target_nid")), "2");
    assert_eq!(read(s.join("0/access_pattern/nr_accesses/max")), "0");
    assert_eq!(read(s.join("0/access_pattern/age/min")), "5");
    assert_eq!(read(s.join("1/action")), "migrate_hot");
    assert_eq!(read(s.join("1/target_nid")), "0");
    assert_eq!(read(s.join("1/access_pattern/nr_accesses/min")), "1");
    // Only the first is limited to anonymous pages: a filter that drops what is not anonymous.
    assert_eq!(read(s.join("0/filters/nr_filters")), "1");
    assert_eq!(read(s.join("0/filters/0/type")), "anon");
    assert_eq!(read(s.join("0/filters/0/matching")), "N");
    assert!(!s.join("1/filters/nr_filters").exists());
    fs::write(s.join("0/stats/sz_applied"), "4096\n").unwrap();
    fs::write(s.join("1/stats/sz_applied"), "8192\n").unwrap();
    assert_eq!(d.applied_bytes().unwrap(), 12288);
    assert_eq!(read(a.join("kdamonds/0/state")), "update_schemes_stats");
    d.stop().unwrap();
    assert_eq!(read(a.join("kdamonds/0/state")), "off");
    assert_eq!(read(a.join("kdamonds/nr_kdamonds")), "0");
}
