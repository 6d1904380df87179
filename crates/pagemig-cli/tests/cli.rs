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
            "unknown engine \"dma\" (expected memcpy, nt, movsb, offload, dsa or cuda)",
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
        serde_json::json!(["mt_1", "auto"]),
        "no vanilla on one node"
    );
    let phases = json["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 4, "2 rows x (mt_1, auto)");
    for p in phases {
        assert!(p["copy_ms"].as_f64().unwrap() > 0.0, "{p}");
        let share = p["copy_share"].as_f64().unwrap();
        assert!(share > 0.0 && share <= 1.0, "{p}");
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
        stdout(&o).contains("bandwidth stops growing at"),
        "{}",
        stdout(&o)
    );
    let model: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert!(model["copy"].as_array().unwrap().len() >= 8);

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

    fs::write(&path, "not json").unwrap();
    let o = pagemig_with_cache(cache.path(), &["topo"]);
    assert_eq!(o.status.code(), Some(2));
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
    let dir = tempfile::TempDir::new().unwrap();
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
