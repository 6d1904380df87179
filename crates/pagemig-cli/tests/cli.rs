//! The `pagemig` binary as a user runs it: outputs, exit codes and error messages.

use std::fs;
use std::process::{Command, Output};

/// Runs pagemig without a saved cost model (the user's cache is not read).
fn pagemig(args: &[&str]) -> Output {
    pagemig_with_cache(
        std::path::Path::new("/nonexistent-pagemig-test-cache"),
        args,
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A tiny, fast `bench copy` run.
const TINY: &[&str] = &[
    "bench",
    "copy",
    "--quick",
    "--page-size",
    "4k,2m",
    "--pages",
    "1,4",
    "--reps",
    "1",
    "--threads",
    "1,2",
];

#[test]
fn topo_reads_a_saved_sysfs_tree() {
    let dir = tempfile::TempDir::new().unwrap();
    let w = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w("devices/system/cpu/online", "0-3\n");
    w("devices/system/node/online", "0-1\n");
    w("devices/system/node/has_memory", "0-1\n");
    w("devices/system/node/node0/cpulist", "0-3\n");
    w("devices/system/node/node0/distance", "10 20\n");
    w("devices/system/node/node1/cpulist", "\n");
    w("devices/system/node/node1/distance", "20 10\n");
    w(
        "devices/system/node/node1/meminfo",
        "Node 1 MemTotal: 1048576 kB\n",
    );
    let o = pagemig(&["topo", "--sysfs", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("memory-only"), "{text}");
    assert!(text.contains("not exposed"), "{text}");
    let o = pagemig(&["topo", "--json", "--sysfs", dir.path().to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["nodes"][1]["mem_total"], 1u64 << 30);
    assert_eq!(json["nodes"][0]["cpus"], "0-3");
}

#[test]
fn topo_of_a_missing_tree_is_an_error() {
    let o = pagemig(&["topo", "--sysfs", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("error: reading the topology under /nonexistent"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bench_copy_table_json_csv_and_plot() {
    let o = pagemig(TINY);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "machine:",
        "4K pages",
        "2M pages",
        "vanilla",
        "nt",
        "movsb",
        "mt_1",
        "mt_2",
        "auto",
        "limit",
        "Quick calibration of copy engines made now",
    ] {
        assert!(text.contains(want), "missing {want}: {text}");
    }

    let o = pagemig(&[TINY, &["--json"]].concat());
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tables = json["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 2);
    assert_eq!(tables[1]["page_size"], 2 << 20);
    let columns = tables[0]["columns"].as_array().unwrap();
    assert_eq!(columns.first().unwrap(), "vanilla");
    assert_eq!(columns.last().unwrap(), "limit");
    let cell = &tables[0]["rows"][1]["cells"][0];
    assert!(cell["min"].as_f64().unwrap() > 0.0);
    assert!(cell["min"].as_f64() <= cell["median"].as_f64());
    assert!(cell["median"].as_f64() <= cell["max"].as_f64());
    assert!(json["machine"]["kernel"].as_str().unwrap().len() > 1);

    let dir = tempfile::TempDir::new().unwrap();
    let png = dir.path().join("copy.png");
    let o = pagemig(&[TINY, &["--csv", "--plot", png.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = stdout(&o);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "bench,page_size,pages,column,min_gbps,median_gbps,max_gbps,samples"
    );
    // 2 page sizes x 2 rows x (vanilla, nt, movsb, mt_1, mt_2, auto, limit)
    assert_eq!(lines.count(), 2 * 2 * 7);
    assert_eq!(&fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn bad_input_names_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["bench", "copy", "--to", "4096"],
            "destination node 4096 does not exist",
        ),
        (
            &["bench", "copy", "--from", "999"],
            "source node 999 does not exist",
        ),
        (&["bench", "copy", "--page-size", "3k"], "power of two"),
        (
            &["bench", "copy", "--placement", "0-x"],
            "bad list \"0-x\": not a number in \"0-x\"",
        ),
        (
            &["bench", "copy", "--placement", "5000", "--quick"],
            "outside the allowed set",
        ),
        (
            &["bench", "copy", "--engines", "dma"],
            "unknown engine \"dma\" (expected memcpy, nt, movsb, movsq, nt512, offload, dsa or cuda)",
        ),
        (&["bench", "copy", "--threads", "0"], "at least one worker"),
        (
            &[
                "bench", "copy", "--quick", "--pages", "1", "--plot", "x.svg",
            ],
            "only .png",
        ),
    ];
    for (args, want) in cases {
        let o = pagemig(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn broken_pipe_is_not_an_error() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pagemig"))
        .args(["topo", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bench_migrate_remap_same_node_has_phases() {
    let o = pagemig(&[
        "bench",
        "migrate",
        "--path",
        "remap",
        "--same-node",
        "--quick",
        "--page-size",
        "2m",
        "--pages",
        "1,4",
        "--reps",
        "1",
        "--threads",
        "1",
        "--json",
    ]);
    if stderr(&o).contains("userfaultfd") {
        eprintln!("skipped: {}", stderr(&o));
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        json["tables"][0]["columns"],
        serde_json::json!(["mt_1", "auto", "copy"]),
        "no vanilla on one node; the copy engine alone last"
    );
    let phases = json["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 4, "2 rows x (mt_1, auto)");
    for p in phases {
        assert!(p["copy_ms"].as_f64().unwrap() > 0.0, "{p}");
        let share = p["copy_share"].as_f64().unwrap();
        assert!(share > 0.0 && share <= 1.0, "{p}");
        // The phases are laps inside the bench's own clock around each migration: never more
        // than it. How much of it they cover is timing (a preemption between the bench's clock
        // and the first lap of a 0.2 ms migration is outside them), so it is not asserted here;
        // the remap and guest tests check that a report's phases add up to its wall time.
        let accounted = p["accounted"].as_f64().unwrap();
        assert!(accounted > 0.0 && accounted <= 1.0, "{p}");
    }
}

fn pagemig_with_cache(cache: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pagemig"))
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .output()
        .unwrap()
}

#[test]
fn calibrate_saves_a_model_that_topo_and_bench_use() {
    let cache = tempfile::TempDir::new().unwrap();
    let o = pagemig_with_cache(cache.path(), &["calibrate", "--quick"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let path = cache.path().join("pagemig/model.json");
    assert!(
        stdout(&o).contains(&format!("saved {}", path.display())),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("reach 90% of its best bandwidth"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("pool hand-off:"), "{}", stdout(&o));
    let model: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert!(model["copy"].as_array().unwrap().len() >= 8);
    assert!(model["pool_handoff_us"].as_f64().unwrap() > 0.0, "{model}");

    // --update checks the model's choices and says what it found.
    let o = pagemig_with_cache(cache.path(), &["calibrate", "--quick", "--update"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("checked"), "{}", stdout(&o));

    let o = pagemig_with_cache(cache.path(), &["topo"]);
    assert!(
        stdout(&o).contains(&format!("cost model {}", path.display())),
        "{}",
        stdout(&o)
    );

    let mut args = TINY.to_vec();
    args.push("--json");
    let o = pagemig_with_cache(cache.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let notes = report["notes"].to_string();
    assert!(
        notes.contains(&format!("(cost model {})", path.display())),
        "{notes}"
    );
    assert!(notes.contains("auto reached 0.95"), "{notes}");
    for t in report["tables"].as_array().unwrap() {
        assert!(
            t["columns"].as_array().unwrap().contains(&"auto".into()),
            "{t}"
        );
    }

    // A damaged saved model is set aside with a warning (an_unusable_saved_model_is_set_aside_with_a_warning).
    fs::write(&path, "not json").unwrap();
    let o = pagemig_with_cache(cache.path(), &["topo"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("is not a pagemig cost model"),
        "{}",
        stderr(&o)
    );
    let o = pagemig(&["topo", "--model", "/nonexistent/model.json"]);
    assert!(
        stderr(&o).contains("/nonexistent/model.json: No such file"),
        "{}",
        stderr(&o)
    );
}

/// A process with some memory to point `migrate` at; killed on drop.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn new() -> Self {
        Sleeper(Command::new("sleep").arg("60").spawn().unwrap())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn migrate_explains_its_plan() {
    let cache = tempfile::TempDir::new().unwrap();
    let sleeper = Sleeper::new();
    let pid = sleeper.0.id().to_string();
    let o = pagemig_with_cache(
        cache.path(),
        &[
            "migrate",
            "--pid",
            &pid,
            "--to",
            "0",
            "--explain",
            "--best-effort",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("plan for process {pid}: 1 thread(s)")),
        "{out}"
    );
    assert!(out.contains("why: kernel path not calibrated"), "{out}");
    assert!(out.contains("charged to the caller"), "{out}");
}

#[test]
fn charge_target_bills_a_cgroup_made_by_the_test() {
    let Ok(root) = pagemig::cgroup::mount_point() else {
        eprintln!("skipped charge_target_bills_a_cgroup_made_by_the_test: no cgroup v2 hierarchy");
        return;
    };
    let dir = root.join(format!("pagemig-cli-test-{}", std::process::id()));
    if let Err(e) = fs::create_dir(&dir) {
        eprintln!(
            "skipped charge_target_bills_a_cgroup_made_by_the_test: cannot create {}: {e}",
            dir.display()
        );
        return;
    }
    let sleeper = Sleeper::new();
    let pid = sleeper.0.id().to_string();
    fs::write(dir.join("cgroup.procs"), &pid).unwrap();
    let o = pagemig(&[
        "migrate",
        "--pid",
        &pid,
        "--to",
        "0",
        "--charge",
        "target",
        "--json",
        "--best-effort",
    ]);
    drop(sleeper);
    let _ = fs::remove_dir(&dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &r[0]["charged_to"];
    assert_eq!(c["to"], "target", "{r}");
    assert_eq!(
        c["cgroup"],
        format!("/{}", dir.file_name().unwrap().to_str().unwrap()),
        "{r}"
    );
    // The helper process ran in the new cgroup: it has used CPU time since it was made empty.
    assert!(
        c["usage_after_usec"].as_u64().unwrap() > c["usage_before_usec"].as_u64().unwrap(),
        "{r}"
    );
}

#[test]
fn bench_copy_has_offload_and_dma_columns_where_they_can_run() {
    let mut args = TINY.to_vec();
    args.extend(["--engine", "nt,offload", "--json"]);
    let o = pagemig(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for t in report["tables"].as_array().unwrap() {
        let columns = t["columns"].to_string();
        assert!(columns.contains("\"offload\""), "{columns}");
        for row in t["rows"].as_array().unwrap() {
            for cell in row["cells"].as_array().unwrap() {
                assert!(cell["median"].as_f64().unwrap() > 0.0, "{row}");
            }
        }
    }
    // A DMA engine that is not here (not built in, or no device) is refused with the check
    // that failed, before anything is measured.
    for (engine, device) in [("dsa", "Intel DSA"), ("cuda", "CUDA GPU")] {
        let o = pagemig(&["bench", "copy", "--quick", "--engine", engine]);
        let err = stderr(&o);
        if o.status.success() {
            eprintln!("{engine} is present here: its column was measured");
            continue;
        }
        assert!(
            err.contains(&format!("the {engine} column: no usable {device} here:")),
            "{err}"
        );
    }
    let o = pagemig(&["bench", "copy", "--engine", "gpu"]);
    assert!(
        stderr(&o).contains("unknown engine \"gpu\""),
        "{}",
        stderr(&o)
    );
}

/// A process like a sleeping interpreter: 512 pages read but never written (the kernel's shared
/// zero page), 16 written, then asleep. Spawned from this test binary (`reader_entry`).
struct Reader(std::process::Child);

impl Reader {
    fn new() -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["reader_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env("PAGEMIG_TEST_READER", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // libtest writes "test reader_entry ... " before the line.
        while !line.contains("READY") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the reader exited");
        }
        Reader(child)
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn reader_entry() {
    if std::env::var_os("PAGEMIG_TEST_READER").is_none() {
        return;
    }
    // Large zeroed allocations come straight from mmap: untouched until read.
    let mut pages = vec![0u8; 528 * 4096];
    let sum: u64 = (0..512)
        .map(|i| u64::from(std::hint::black_box(pages[i * 4096])))
        .sum();
    for i in 512..528 {
        pages[i * 4096] = 1;
    }
    println!("READY {sum}");
    std::thread::sleep(std::time::Duration::from_secs(60));
    std::hint::black_box(&pages);
}

#[test]
fn pages_only_read_are_nothing_to_move_and_exit_0() {
    let reader = Reader::new();
    let o = pagemig(&["migrate", "--pid", &reader.pid(), "--to", "0"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(
        out.contains("pages skipped: nothing to move (never written"),
        "{out}"
    );
    assert!(out.contains("not moved: 0"), "{out}");
    // Already on the only node: nothing moved, so no thread ran (not "0.00 ms ()").
    assert!(
        out.contains("CPU time of the moving threads: none (nothing to move)"),
        "{out}"
    );
    let o = pagemig(&["migrate", "--pid", &reader.pid(), "--to", "0", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        json[0]["pages_skipped"]["nothing_to_move"]
            .as_u64()
            .unwrap()
            >= 500,
        "{json}"
    );
}

#[test]
fn thread_counts_are_bounded_by_the_cpus() {
    let sleeper = Sleeper::new();
    let pid = sleeper.0.id().to_string();
    for threads in ["18446744073709551615", "4294967295", "10000"] {
        let o = pagemig(&[
            "migrate",
            "--pid",
            &pid,
            "--to",
            "0",
            "--threads",
            threads,
            "--explain",
        ]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{threads}: {}", stderr(&o));
        assert!(
            out.contains(&format!(
                "--threads {threads}, but only {} CPU(s) may be used",
                std::thread::available_parallelism().unwrap()
            )),
            "{out}"
        );
        // The CPU list is summarised (0-1), never one entry per thread.
        assert!(out.len() < 4096, "{} bytes: {out}", out.len());
    }
}

/// `--placement` is named in the reasons as the user wrote it, after the planner's own
/// placement marked as such, and a CPU list holds one thread per CPU listed.
#[test]
fn a_placement_the_user_chose_is_explained_and_caps_the_threads() {
    let sleeper = Sleeper::new();
    let pid = sleeper.0.id().to_string();
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    let cpu = allowed.trim().split([',', '-']).next().unwrap();
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "migrate",
            "--pid",
            &pid,
            "--to",
            "0",
            "--dry-run",
            "--explain",
        ];
        args.extend(extra);
        let o = pagemig(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let out = explain(&["--placement", cpu, "--threads", "2"]);
    assert!(
        out.contains(&format!(
            "plan for process {pid}: 1 thread(s) on CPUs {cpu},"
        )),
        "{out}"
    );
    if std::thread::available_parallelism().unwrap().get() > 1 {
        assert!(
            out.contains(&format!(
                "why: 1 thread(s): --threads 2, but placement CPUs {cpu} has 1 CPU(s), one thread each"
            )),
            "{out}"
        );
    }
    assert!(
        out.contains(&format!("why: placement CPUs {cpu}: chosen by the user")),
        "{out}"
    );
    assert!(
        out.contains("why: the planner's own choice: workers on the target node 0's CPUs first"),
        "{out}"
    );
    assert!(!out.contains("why: workers on"), "{out}");
    for name in ["near-src", "spread", "near-dst"] {
        let out = explain(&["--placement", name]);
        assert!(
            out.contains(&format!(
                "why: placement {name}: chosen by the user: workers "
            )),
            "{out}"
        );
    }
}

/// Runs pagemig with its standard output closed before it writes.
fn with_stdout_closed(args: &[&str]) -> Output {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pagemig"))
        .args(args)
        .env("XDG_CACHE_HOME", "/nonexistent-pagemig-test-cache")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn json_into_a_closed_pipe_is_not_an_error() {
    let sleeper = Sleeper::new();
    let pid = sleeper.0.id().to_string();
    for args in [
        &["stat", "--pid", &pid, "--json"][..],
        &["migrate", "--pid", &pid, "--to", "0", "--json"],
        &["topo", "--json"],
    ] {
        let o = with_stdout_closed(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).is_empty(), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn zombies_and_kernel_threads_are_refused() {
    let mut zombie = Command::new("true").spawn().unwrap();
    let zpid = zombie.id().to_string();
    while !fs::read_to_string(format!("/proc/{zpid}/stat"))
        .unwrap()
        .contains(") Z ")
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["migrate", "--pid", "2", "--to", "0"],
            "process 2 is a kernel thread: it has no user memory".into(),
        ),
        (
            vec!["stat", "--pid", "2"],
            "process 2 is a kernel thread: it has no user memory".into(),
        ),
        (
            vec!["migrate", "--pid", &zpid, "--to", "0"],
            format!("process {zpid} is a zombie: it has no user memory"),
        ),
        (
            vec!["stat", "--pid", &zpid, "--json"],
            format!("process {zpid} is a zombie: it has no user memory"),
        ),
    ];
    for (args, want) in &cases {
        let o = pagemig(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(want.as_str()),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(o.stdout.is_empty(), "{args:?}: {}", stdout(&o));
    }
    zombie.wait().unwrap();
}

#[test]
fn every_pid_is_checked_before_any_moves() {
    let a = Sleeper::new();
    let b = Sleeper::new();
    let (a, b) = (a.0.id().to_string(), b.0.id().to_string());
    for pids in [format!("{a},999999"), format!("999999,{a}")] {
        let o = pagemig(&["migrate", "--pid", &pids, "--to", "0"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("process 999999 does not exist"),
            "{}",
            stderr(&o)
        );
        assert!(o.stdout.is_empty(), "moved before checking: {}", stdout(&o));
    }
    let o = pagemig(&[
        "migrate",
        "--pid",
        &format!("{a},{b}"),
        "--to",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2, "{json}");
    assert_eq!(json[1]["process"].to_string(), b, "{json}");
}

/// A range over exactly the kernel's own mappings ([vvar] … [vdso]) is refused with the reason
/// `--mapping '[vdso]'` gives, not as a range where nothing is mapped.
#[test]
fn a_range_over_the_kernels_own_mappings_says_so() {
    let sleeper = Sleeper::new();
    let pid = sleeper.0.id().to_string();
    // Right after the spawn, the child may not show the new program's mappings yet.
    let mut maps = String::new();
    for _ in 0..100 {
        maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        if maps.contains("[vdso]") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let kernel: Vec<&str> = maps
        .lines()
        .filter(|l| l.ends_with("[vvar]") || l.ends_with("[vvar_vclock]") || l.ends_with("[vdso]"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let (start, _) = kernel.first().expect(&maps).split_once('-').unwrap();
    let (_, end) = kernel.last().unwrap().split_once('-').unwrap();
    let range = format!("0x{start}-0x{end}");
    let o = pagemig(&[
        "migrate",
        "--pid",
        &pid,
        "--to",
        "0",
        "--dry-run",
        "--range",
        &range,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("only the kernel's own mapping(s)")
            && stderr(&o).contains("[vdso]")
            && stderr(&o).contains("whose pages cannot move"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn odd_arguments_name_the_argument_and_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["migrate", "--pid", "self", "--to", "0-1"],
            "expected one node number, got \"0-1\"",
        ),
        (
            &["migrate", "--pid", "self", "--to", "0", "--from="],
            "an empty node list selects no page",
        ),
        (
            &["migrate", "--pid", "self", "--to", "0", "--from=0,,1"],
            "bad list \"0,,1\": empty item (two commas in a row, or one at an end)",
        ),
        (
            &["migrate", "--pid", "self", "--to", "0", "--placement", ""],
            "empty: expected spread, near-dst, near-src or a CPU list",
        ),
        (
            &[
                "migrate",
                "--pid",
                "self",
                "--to",
                "0",
                "--mapping",
                "[vvar]",
            ],
            "selects only the kernel's own mapping [vvar]",
        ),
        (
            &[
                "migrate",
                "--pid",
                "self",
                "--to",
                "0",
                "--max-stall",
                "1e300",
            ],
            "--max-stall 1e300: too large",
        ),
        (
            &["bench", "copy", "--plot", "/nonexistent/dir/x.png"],
            "the directory /nonexistent/dir does not exist",
        ),
        (
            &["bench", "copy", "--quick", "--pages", "100000000"],
            "--pages: no row fits in the free memory of node",
        ),
        (
            &["bench", "copy", "--page-size", "99999999999999g"],
            "too large",
        ),
    ];
    let dir = tempfile::TempDir::new().unwrap();
    let png_dir = dir.path().join("d.png");
    fs::create_dir(&png_dir).unwrap();
    let png_dir = png_dir.to_str().unwrap();
    let is_dir = format!("{png_dir} is a directory");
    let plot_into_dir = ["bench", "copy", "--plot", png_dir];
    let cases = cases
        .iter()
        .copied()
        .chain([(&plot_into_dir[..], is_dir.as_str())]);
    for (args, want) in cases {
        let o = pagemig(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        // Refused before any measuring or moving.
        assert!(o.stdout.is_empty(), "{args:?}: {}", stdout(&o));
    }
}

#[test]
fn arguments_are_checked_before_anything_runs() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["bench", "migrate", "--no-reservoir"],
            "--no-reservoir applies to the remap path only: add --path remap",
        ),
        (
            &["bench", "migrate", "--verify", "full"],
            "--verify applies to the remap path only: add --path remap",
        ),
        (
            &["bench", "migrate", "--prefer-dma"],
            "--prefer-dma applies to the remap path only: add --path remap",
        ),
        (
            &[
                "bench",
                "migrate",
                "--path",
                "remap",
                "--same-node",
                "--pages",
                "100000000000",
            ],
            "--pages: no row fits in the free memory of node",
        ),
        (
            &["bench", "copy", "--page-size", "4k,4096"],
            "--page-size: 4K is given twice",
        ),
        (
            &["migrate", "--pid", "self", "--to", "0", "--mapping", ""],
            "an empty --mapping selects every named mapping",
        ),
        (
            &["migrate", "--pid", "self,self", "--to", "0"],
            "--pid: the calling process is given twice",
        ),
        (
            &["migrate", "--pid", "self", "--to", "0", "--from", "0,0"],
            "node 0 is given twice",
        ),
        (
            &["bench", "copy", "--engines", "nt,nt"],
            "--engines: nt is given twice",
        ),
        (
            &[
                "migrate",
                "--pid",
                "self",
                "--to",
                "0",
                "--placement",
                "0-1,1",
            ],
            "bad list \"0-1,1\": CPU 1 is given twice",
        ),
        (
            &["tier", "--pid", "self", "--fast", "0", "--slow", "1"],
            "tier watches other processes: expected a pid, not self",
        ),
        (&["bench", "copy", "--json", "--csv"], "cannot be used with"),
        (
            &["bench", "tier", "--hot", "10%"],
            "--hot must be a size of at least 2M",
        ),
        (
            &["bench", "tier", "--timeout", "inf"],
            "--interval and --timeout must be positive numbers of seconds",
        ),
        (
            &["topo", "--json", "--model", "m.json"],
            "cannot be used with",
        ),
        (
            &["topo", "--model", "/nonexistent/model.json"],
            "/nonexistent/model.json: No such file",
        ),
        (
            &["stat", "--pid", "self", "--json", "--mappings"],
            "cannot be used with",
        ),
    ];
    for (args, want) in cases {
        let o = pagemig(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        // Refused before anything is measured, moved or printed.
        assert!(o.stdout.is_empty(), "{args:?}: {}", stdout(&o));
    }
}

/// Runs pagemig as user nobody, when this test runs as root (it cannot switch users otherwise).
fn as_nobody(args: &[&str]) -> Option<Output> {
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running as another user needs root");
        return None;
    }
    Some(
        Command::new(env!("CARGO_BIN_EXE_pagemig"))
            .args(args)
            .env("XDG_CACHE_HOME", "/nonexistent-pagemig-test-cache")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap(),
    )
}

#[test]
fn move_all_without_cap_sys_nice_is_refused_up_front() {
    let Some(o) = as_nobody(&["migrate", "--pid", "self", "--to", "0", "--all"]) else {
        return;
    };
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs CAP_SYS_NICE"), "{}", stderr(&o));
}

#[test]
fn an_unusable_saved_model_is_set_aside_with_a_warning() {
    let cache = tempfile::TempDir::new().unwrap();
    let file = cache.path().join("pagemig/model.json");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    let sleeper = Sleeper::new();
    let pid = sleeper.0.id().to_string();
    for (text, why) in [
        ("garbage", "is not a pagemig cost model"),
        ("{\"version\":99}", "is a cost model of version 99"),
    ] {
        fs::write(&file, text).unwrap();
        for args in [
            &["migrate", "--pid", &pid, "--to", "0", "--threads", "1"][..],
            &["topo"],
        ] {
            let o = pagemig_with_cache(cache.path(), args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
            assert!(
                err.starts_with("warning: the saved cost model is not used: ")
                    && err.contains(file.to_str().unwrap())
                    && err.contains(why)
                    && err.contains("using the built-in defaults"),
                "{args:?}: {err}"
            );
        }
    }
    // A model named with --model must load: the user asked for it.
    let o = pagemig(&[
        "migrate",
        "--pid",
        &pid,
        "--to",
        "0",
        "--model",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is a cost model of version 99; this pagemig reads version 1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn calibrate_checks_its_model_path_before_measuring() {
    let dir = tempfile::TempDir::new().unwrap();
    let missing = dir.path().join("no/such/dir/m.json");
    let cases = [
        (
            missing.to_str().unwrap().to_owned(),
            format!(
                "the directory {} does not exist",
                missing.parent().unwrap().display()
            ),
        ),
        (
            dir.path().to_str().unwrap().to_owned(),
            format!("--model {}: is a directory", dir.path().display()),
        ),
    ];
    for (model, want) in &cases {
        let o = pagemig(&["calibrate", "--quick", "--model", model]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(want.as_str()), "{err}");
        // Said once, not twice through the error chain.
        assert_eq!(err.matches("directory").count(), 1, "{err}");
    }
    assert!(!dir.path().join("no").exists(), "a directory was made");
}

#[test]
fn charge_target_in_the_callers_own_cgroup_needs_no_helper() {
    let Some(o) = as_nobody(&[
        "migrate", "--pid", "self", "--to", "0", "--charge", "target", "--json",
    ]) else {
        return;
    };
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r[0]["charged_to"]["to"], "target", "{r}");
}

#[test]
fn nt512_column_runs_only_where_the_cpu_has_avx512() {
    let o = pagemig(&[TINY, &["--engines", "nt512"]].concat());
    #[cfg(target_arch = "x86_64")]
    let has = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let has = false;
    if has {
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("nt512"), "{}", stdout(&o));
    } else {
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("AVX-512"), "{}", stderr(&o));
        eprintln!("skipping the nt512 column: {}", stderr(&o).trim());
    }
}

#[test]
fn the_largest_batch_moves_as_one_call_per_thread() {
    let max = usize::MAX.to_string();
    for extra in [&["--dry-run"][..], &[], &["--threads", "2"]] {
        let mut args = vec!["migrate", "--pid", "self", "--to", "0", "--batch", &max];
        args.extend(extra);
        let o = pagemig(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn tier_refuses_bad_input_before_anything_starts() {
    let me = std::process::id().to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["tier", "--pid", &me, "--fast", "0", "--slow", "0"],
            "nodes 0 are in both --fast (0) and --slow (0)",
        ),
        (
            &["tier", "--pid", &me, "--fast", "0", "--slow", "63"],
            "slow tier: node 63 does not exist or is offline",
        ),
        (
            &["tier", "--pid", &me, "--slow", "1"],
            "--fast NODES is required",
        ),
        (
            &["tier", "--fast", "0", "--slow", "1"],
            "no process to tier",
        ),
        (
            &[
                "tier",
                "--pid",
                &me,
                "--fast",
                "0",
                "--slow",
                "1",
                "--fast-budget",
                "12Q",
            ],
            "bad size \"12Q\"",
        ),
        (
            &[
                "tier",
                "--pid",
                &me,
                "--fast",
                "0",
                "--slow",
                "1",
                "--interval",
                "0",
            ],
            "--interval 0: must be a positive number",
        ),
        (
            &[
                "tier",
                "--pid",
                &me,
                "--fast",
                "0",
                "--slow",
                "1",
                "--once",
                "--duration",
                "3",
            ],
            "cannot be used with",
        ),
        (
            &[
                "tier",
                "--comm",
                "no-such-command-here",
                "--fast",
                "0",
                "--slow",
                "1",
            ],
            "no process has this command name",
        ),
    ];
    for (args, want) in cases {
        let o = pagemig(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    // More seconds than a Duration holds (1e300), or a Duration past any deadline from now
    // (1e19, where `now + interval` would overflow later): an error, not a panic.
    let too_large = [
        "--interval",
        "--duration",
        "--max-stall",
        "--sample",
        "--aggregate",
    ]
    .map(|flag| (flag, "1e300"))
    .into_iter()
    .chain([("--interval", "1e19"), ("--duration", "1e19")]);
    for (flag, value) in too_large {
        let args = [
            "tier", "--pid", &me, "--fast", "0", "--slow", "1", flag, value,
        ];
        let o = pagemig(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let want = format!("{flag} {value}: too large");
        assert!(stderr(&o).contains(&want), "{args:?}: {}", stderr(&o));
    }
    let dir = tempfile::TempDir::new().unwrap();
    // Refused before anything starts: no log file is created, and the cause is said once.
    let log = dir.path().join("tier.jsonl");
    let args = [
        "tier",
        "--pid",
        &me,
        "--fast",
        "0",
        "--slow",
        "63",
        "--log",
        log.to_str().unwrap(),
    ];
    let o = pagemig(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).matches("does not exist").count(),
        1,
        "{}",
        stderr(&o)
    );
    assert!(!log.exists(), "the refused agent created its log");
    let config = dir.path().join("tier.toml");
    fs::write(&config, "fast = \"0\"\nslow = \"1\"\nfast-budgt = \"1G\"\n").unwrap();
    let o = pagemig(&["tier", "--pid", &me, "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown field `fast-budgt`"),
        "{}",
        stderr(&o)
    );
}

/// SIGINT while `migrate --json` runs with stdout piped: the reports of the processes done are
/// kept whole, the JSON array is closed, and the program exits with 130.
#[test]
fn an_interrupted_json_migration_keeps_what_finished_as_valid_json() {
    use std::io::{BufRead, BufReader, Read};
    // Many migrations one after another, so that the signal comes while some are left (each
    // process once: a pid given twice is refused).
    let sleepers: Vec<Sleeper> = (0..1000).map(|_| Sleeper::new()).collect();
    let pids: Vec<String> = sleepers.iter().map(|s| s.0.id().to_string()).collect();
    let pids = pids.join(",");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pagemig"))
        .args(["migrate", "--pid", &pids, "--to", "0", "--json"])
        .env("XDG_CACHE_HOME", "/nonexistent-pagemig-test-cache")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    // The first report is whole once the separator after it is written.
    while !text.lines().any(|l| l == "},") {
        assert!(reader.read_line(&mut text).unwrap() > 0, "{text}");
    }
    // SAFETY: kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(sent, 0, "cannot signal the child");
    reader.read_to_string(&mut text).unwrap();
    let status = child.wait().unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{e}: not JSON: ...{}",
            &text[text.len().saturating_sub(300)..]
        )
    });
    let reports = json.as_array().unwrap();
    assert!(
        !reports.is_empty() && reports.len() < 1000,
        "{} reports",
        reports.len()
    );
    assert!(
        reports
            .iter()
            .all(|r| r["process"].is_string() || r["process"].is_number())
    );
    assert_eq!(status.code(), Some(130), "{status:?}");
}
