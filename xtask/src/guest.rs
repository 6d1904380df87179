//! `cargo xtask guest-test`: the guest test binary inside QEMU guests with several NUMA shapes.
//!
//! The development and CI machines have one NUMA node; a TCG-emulated guest with 2-4 nodes can
//! really move pages between nodes. Downloads (the guest kernel) are cached in `target/guest`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A guest machine layout.
struct Shape {
    name: &'static str,
    /// Nodes with CPUs and memory.
    cpu_nodes: u32,
    /// Memory per CPU node, MiB.
    node_mb: u32,
    /// Memory-only (CXL-like) nodes after the CPU nodes, and their memory.
    memory_only: u32,
    memory_only_mb: u32,
    /// vCPUs, split evenly over the CPU nodes.
    smp: u32,
    /// Automatic NUMA balancing on (it is on in production).
    balancing: bool,
    /// Only tests whose name contains one of these (all tests when empty).
    filters: &'static [&'static str],
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "2-nodes",
        cpu_nodes: 2,
        node_mb: 1024,
        memory_only: 0,
        memory_only_mb: 0,
        smp: 4,
        balancing: false,
        filters: &[],
    },
    Shape {
        name: "4-nodes",
        cpu_nodes: 4,
        node_mb: 512,
        memory_only: 0,
        memory_only_mb: 0,
        smp: 4,
        balancing: false,
        filters: &[],
    },
    Shape {
        name: "2-nodes-plus-memory-only",
        cpu_nodes: 2,
        node_mb: 768,
        memory_only: 1,
        memory_only_mb: 384,
        smp: 4,
        balancing: false,
        filters: &[],
    },
    Shape {
        name: "2-nodes-numa-balancing",
        cpu_nodes: 2,
        node_mb: 1024,
        memory_only: 0,
        memory_only_mb: 0,
        smp: 4,
        balancing: true,
        filters: &["another_process", "writers_lose"],
    },
];

/// The guest's init: mounts, describes the NUMA layout, runs the tests, reports their status.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
N=/sys/devices/system/node
echo "GUEST-UP kernel=$(uname -r) cpus=$(nproc) nodes=$(cat $N/online) has_memory=$(cat $N/has_memory) has_cpu=$(cat $N/has_cpu) numa_balancing=$(cat /proc/sys/kernel/numa_balancing)"
export PAGEMIG_BIN=/bin/pagemig RUST_BACKTRACE=1 LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
export PAGEMIG_PRELOAD=/usr/lib/pagemig/libpagemig_preload.so PAGEMIG_ABI_CASES=/usr/bin/abi_cases
set --
[ -f /test.args ] && while IFS= read -r a; do set -- "$@" "$a"; done < /test.args
cd /tmp
rc=0
for t in /tests/*; do
  "$t" --test-threads=1 "$@" || rc=$?
done
echo "GUEST-EXIT=$rc"
poweroff -f
"#;

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

/// QEMU, busybox, cpio, gcc (for the C test program) and the Debian tools that fetch the kernel,
/// installed with apt if missing.
fn ensure_tools() -> anyhow::Result<()> {
    let needed = ["qemu-system-x86_64", "cpio", "file", "gcc"];
    let busybox = Path::new("/bin/busybox").exists();
    if needed.iter().all(|p| have(p)) && busybox {
        return Ok(());
    }
    if !have("apt-get") || !is_root() {
        bail!(
            "guest tests need qemu-system-x86, busybox-static, cpio, file and gcc: run as root on Debian, or install them"
        );
    }
    eprintln!("xtask: installing qemu-system-x86 busybox-static cpio file gcc");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "qemu-system-x86",
            "busybox-static",
            "cpio",
            "file",
            "gcc",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The guest kernel: Debian's 6.12 image (userfaultfd write-protect, UFFDIO_MOVE), resolved
/// through its meta package because the ABI name rotates, cached in `dir`.
fn ensure_kernel(dir: &Path) -> anyhow::Result<PathBuf> {
    let kernel = dir.join("vmlinuz");
    if kernel.exists() {
        return Ok(kernel);
    }
    fs::create_dir_all(dir)?;
    let meta = std::env::var("PAGEMIG_GUEST_KERNEL_META")
        .unwrap_or_else(|_| "linux-image-6.12-amd64".into());
    let mut deps = output(Command::new("apt-cache").args(["depends", &meta]))?;
    if !deps.contains("Depends: linux-image-") {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        deps = output(Command::new("apt-cache").args(["depends", &meta]))?;
    }
    let package = deps
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("Depends: ").filter(|p| {
                p.starts_with("linux-image-")
                    && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
            })
        })
        .with_context(|| format!("apt-cache depends {meta} names no kernel package"))?
        .to_owned();
    eprintln!("xtask: downloading {package} for the guest kernel");
    run(Command::new("apt-get")
        .args(["download", &package])
        .current_dir(dir))?;
    let deb = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let script = format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -xOf - --wildcards './boot/vmlinuz-*' > '{}.part'",
        deb.display(),
        kernel.display()
    );
    run(Command::new("sh").args(["-c", &script]))?;
    fs::remove_file(&deb)?;
    fs::rename(kernel.with_extension("part"), &kernel)?;
    Ok(kernel)
}

/// Test binaries that run inside the guests.
const GUEST_TESTS: [&str; 4] = ["guest", "preload", "remap", "tier"];

/// Builds the guest test binaries and `pagemig`, statically linked and optimised (emulation is
/// slow enough); returns their paths.
fn build_static() -> anyhow::Result<(Vec<PathBuf>, PathBuf)> {
    let mut args = vec![
        "test",
        "--release",
        "-p",
        "pagemig-cli",
        "--no-run",
        "--target",
        "x86_64-unknown-linux-gnu",
        "--message-format=json-render-diagnostics",
    ];
    for t in GUEST_TESTS {
        args.extend(["--test", t]);
    }
    let out = Command::new(env!("CARGO"))
        .args(&args)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .stderr(Stdio::inherit())
        .output()
        .context("building the guest tests")?;
    if !out.status.success() {
        bail!("building the guest tests failed");
    }
    let mut tests = Vec::new();
    let mut bin = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        match msg["target"]["name"].as_str() {
            Some("pagemig") => bin = Some(PathBuf::from(exe)),
            Some(name) if GUEST_TESTS.contains(&name) => {
                tests.push((name.to_owned(), PathBuf::from(exe)))
            }
            _ => {}
        }
    }
    if tests.len() != GUEST_TESTS.len() {
        bail!(
            "cargo reported {} of the {} guest test binaries",
            tests.len(),
            GUEST_TESTS.len()
        );
    }
    tests.sort();
    let tests: Vec<PathBuf> = tests.into_iter().map(|(_, p)| p).collect();
    let bin = bin.unwrap_or_else(|| tests[0].parent().unwrap().parent().unwrap().join("pagemig"));
    for b in tests.iter().chain([&bin]) {
        let kind = output(Command::new("file").arg("-L").arg(b))?;
        if !kind.contains("statically linked") && !kind.contains("static-pie") {
            bail!("{} is not statically linked: {kind}", b.display());
        }
    }
    Ok((tests, bin))
}

/// numactl's programs and libnuma from Debian's packages (not installed: unpacked into `dir`),
/// for the preload tests; returns the unpacked root.
fn ensure_numactl(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("numactl");
    if root.join("usr/bin/migratepages").exists() {
        return Ok(root);
    }
    let debs = dir.join("numactl-debs");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs)?;
    eprintln!("xtask: downloading numactl and libnuma1 for the guests");
    let download = |cmd: &mut Command| run(cmd.args(["download", "numactl", "libnuma1"]));
    if download(Command::new("apt-get").current_dir(&debs)).is_err() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        download(Command::new("apt-get").current_dir(&debs))?;
    }
    let part = dir.join("numactl.part");
    let _ = fs::remove_dir_all(&part);
    for deb in fs::read_dir(&debs)? {
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb?.path())
            .arg(&part))?;
    }
    fs::remove_dir_all(&debs)?;
    fs::rename(&part, &root)?;
    Ok(root)
}

/// What the preload tests run in the guest: libpagemig, libpagemig_preload and the C program
/// `abi_cases`, dynamically linked (release builds).
struct Preload {
    libs: Vec<PathBuf>,
    cases: PathBuf,
    numactl: PathBuf,
}

fn build_preload(dir: &Path, target: &Path) -> anyhow::Result<Preload> {
    let numactl = ensure_numactl(dir)?;
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "pagemig-ffi",
            "-p",
            "pagemig-preload",
        ])
        .status()
        .context("building the C libraries")?;
    if !status.success() {
        bail!("building libpagemig and libpagemig_preload failed");
    }
    let release = target.join("release");
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("crates/pagemig-ffi");
    let cases = dir.join("abi_cases");
    run(Command::new("gcc")
        .args(["-O1", "-Wall", "-Werror", "-o"])
        .arg(&cases)
        .arg(crate_dir.join("tests/c/abi_cases.c"))
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg("-L")
        .arg(&release)
        .arg("-lpagemig")
        .arg("-L")
        .arg(numactl.join("usr/lib/x86_64-linux-gnu"))
        .args(["-l:libnuma.so.1", "-Wl,-rpath,/usr/lib/pagemig"]))?;
    Ok(Preload {
        libs: vec![
            release.join("libpagemig.so"),
            release.join("libpagemig_preload.so"),
        ],
        cases,
        numactl,
    })
}

/// Copies the dynamic programs of the preload tests into the guest's root, with every library
/// they load (from this machine, as `ldd` finds them) in /lib/x86_64-linux-gnu.
fn install_preload(root: &Path, p: &Preload) -> anyhow::Result<()> {
    let libdir = root.join("lib/x86_64-linux-gnu");
    let pagemig_dir = root.join("usr/lib/pagemig");
    let bin = root.join("usr/bin");
    for d in [&libdir, &pagemig_dir, &bin, &root.join("lib64")] {
        fs::create_dir_all(d)?;
    }
    let numa_lib = p.numactl.join("usr/lib/x86_64-linux-gnu");
    let mut programs = vec![p.cases.clone()];
    for name in ["numactl", "migratepages", "memhog"] {
        programs.push(p.numactl.join("usr/bin").join(name));
    }
    for prog in &programs {
        fs::copy(
            prog,
            bin.join(prog.file_name().context("a program without a name")?),
        )?;
    }
    for lib in &p.libs {
        fs::copy(
            lib,
            pagemig_dir.join(lib.file_name().context("a library without a name")?),
        )?;
    }
    fs::copy(numa_lib.join("libnuma.so.1"), libdir.join("libnuma.so.1"))?;
    let search = format!(
        "{}:{}",
        numa_lib.display(),
        p.libs[0].parent().unwrap().display()
    );
    for file in programs.iter().chain(&p.libs) {
        let listing = output(
            Command::new("ldd")
                .arg(file)
                .env("LD_LIBRARY_PATH", &search),
        )?;
        for line in listing.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|w| w.starts_with('/')),
            };
            let Some(path) = path.map(Path::new).filter(|p| p.is_absolute()) else {
                continue;
            };
            let name = path.file_name().context("a library without a name")?;
            if name.to_string_lossy().starts_with("ld-linux") {
                fs::copy(path, root.join("lib64").join(name))?;
            }
            if !libdir.join(name).exists() {
                fs::copy(path, libdir.join(name))?;
            }
        }
    }
    Ok(())
}

/// An uncompressed newc initramfs (gunzip is slow under emulation) with busybox, the init,
/// the tests, pagemig and the preload tests' programs.
fn initramfs(
    work: &Path,
    tests: &[PathBuf],
    bin: &Path,
    preload: &Preload,
    args: &[String],
) -> anyhow::Result<PathBuf> {
    let root = work.join("root");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "tests", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    for t in tests {
        let name = t.file_name().context("test binary without a name")?;
        fs::copy(t, root.join("tests").join(name))?;
    }
    fs::copy(bin, root.join("bin/pagemig"))?;
    install_preload(&root, preload)?;
    fs::write(root.join("init"), INIT)?;
    fs::write(
        root.join("test.args"),
        args.iter().map(|a| format!("{a}\n")).collect::<String>(),
    )?;
    run(Command::new("chmod").args(["755"]).arg(root.join("init")))?;
    let image = work.join("initrd.cpio");
    let script = format!(
        "cd '{}' && find . -print0 | cpio --null -o -H newc --quiet > '{}'",
        root.display(),
        image.display()
    );
    run(Command::new("sh").args(["-c", &script]))?;
    Ok(image)
}

/// Boots one guest, streams its console, returns the tests' exit status.
fn boot(
    shape: &Shape,
    kernel: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let mut cmd = Command::new("qemu-system-x86_64");
    let total = shape.cpu_nodes * shape.node_mb + shape.memory_only * shape.memory_only_mb;
    cmd.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        &shape.smp.to_string(),
        "-m",
        &format!("{total}M"),
    ]);
    let per = shape.smp / shape.cpu_nodes;
    for i in 0..shape.cpu_nodes + shape.memory_only {
        let mb = if i < shape.cpu_nodes {
            shape.node_mb
        } else {
            shape.memory_only_mb
        };
        cmd.args(["-object", &format!("memory-backend-ram,id=m{i},size={mb}M")]);
        if i < shape.cpu_nodes {
            let lo = i * per;
            let hi = if i == shape.cpu_nodes - 1 {
                shape.smp - 1
            } else {
                lo + per - 1
            };
            cmd.args([
                "-numa",
                &format!("node,nodeid={i},cpus={lo}-{hi},memdev=m{i}"),
            ]);
        } else {
            cmd.args(["-numa", &format!("node,nodeid={i},memdev=m{i}")]);
        }
    }
    let balancing = if shape.balancing {
        "numa_balancing=enable"
    } else {
        "numa_balancing=disable"
    };
    cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
    cmd.args([
        "-append",
        &format!("console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off {balancing}"),
    ]);
    cmd.args([
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-nodefaults",
    ]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let mut log_file = fs::File::create(log)?;
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut exit = None;
    loop {
        let left = timeout.checked_sub(started.elapsed()).unwrap_or_default();
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                println!("{line}");
                writeln!(log_file, "{line}")?;
                if let Some(code) = line.strip_prefix("GUEST-EXIT=") {
                    exit = code.trim().parse().ok();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                bail!("guest {} timed out after {timeout:?}", shape.name);
            }
        }
    }
    let _ = child.wait();
    exit.with_context(|| {
        format!(
            "guest {} ended without a GUEST-EXIT line (see {})",
            shape.name,
            log.display()
        )
    })
}

/// Boots that die before user space starts (no `GUEST-UP` line) are tried again, up to three
/// times: under multi-threaded TCG the kernel sometimes trips over its own code patching
/// (`Oops: int3`, during early boot and, more rarely, later in an idle CPU). A guest whose tests
/// started is booted again only when its kernel died that way: a test that fails, hangs or
/// crashes the guest any other way fails the run.
fn boot_until_user_space(
    shape: &Shape,
    kernel: &Path,
    initrd: &Path,
    log: &Path,
) -> anyhow::Result<i32> {
    const TRIES: u32 = 3;
    let mut attempt = 1;
    loop {
        match boot(shape, kernel, initrd, log, Duration::from_secs(900)) {
            Ok(code) => return Ok(code),
            Err(e) if attempt < TRIES => {
                let console = fs::read_to_string(log).unwrap_or_default();
                let why = if !console.contains("GUEST-UP") {
                    "the kernel died before user space"
                } else if console.contains("Oops: int3") {
                    "the emulated kernel tripped over its own code patching (Oops: int3)"
                } else {
                    return Err(e);
                };
                println!("==== guest {}: {why} ({e:#}); booting again", shape.name);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Builds, boots every shape (or those whose name contains `only`), fails if any test failed.
pub fn test(only: Option<&str>, extra_args: &[String]) -> anyhow::Result<()> {
    ensure_tools()?;
    let target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target");
    let dir = target.join("guest");
    let kernel = ensure_kernel(&dir)?;
    let (tests, bin) = build_static()?;
    let preload = build_preload(&dir, &target)?;
    let mut failed = Vec::new();
    for shape in SHAPES
        .iter()
        .filter(|s| only.is_none_or(|o| s.name.contains(o)))
    {
        let work = dir.join(shape.name);
        fs::create_dir_all(&work)?;
        let mut args: Vec<String> = shape.filters.iter().map(|f| (*f).to_owned()).collect();
        args.extend(extra_args.iter().cloned());
        let initrd = initramfs(&work, &tests, &bin, &preload, &args)?;
        println!(
            "==== guest {} ({} CPU nodes x {} MiB, {} memory-only x {} MiB, {} vCPUs, NUMA balancing {})",
            shape.name,
            shape.cpu_nodes,
            shape.node_mb,
            shape.memory_only,
            shape.memory_only_mb,
            shape.smp,
            if shape.balancing { "on" } else { "off" }
        );
        let started = Instant::now();
        let code = boot_until_user_space(shape, &kernel, &initrd, &work.join("console.log"))?;
        println!(
            "==== guest {}: exit {code} in {:.0?}",
            shape.name,
            started.elapsed()
        );
        if code != 0 {
            failed.push(shape.name);
        }
    }
    if !failed.is_empty() {
        bail!("guest tests failed in: {}", failed.join(", "));
    }
    Ok(())
}
