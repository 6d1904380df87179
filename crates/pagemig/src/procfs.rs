//! What `/proc/PID` says about a process's memory: mappings, present pages, pages per node.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, ErrorKind};
use std::ops::Range;
use std::os::unix::fs::FileExt;

use serde::Serialize;

use crate::process::Process;
use crate::sys;
use crate::topology::{NodeId, NodeSet};

/// Why `/proc/PID` could not say what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProcfsError {
    /// The process does not exist, or exited.
    #[error("{process} does not exist (or has exited)")]
    NoSuchProcess {
        /// The process.
        process: Process,
    },
    /// The process has no user memory: a zombie or a kernel thread.
    #[error("{process} is {what}: it has no user memory")]
    NoUserMemory {
        /// The process.
        process: Process,
        /// `a zombie` or `a kernel thread`.
        what: &'static str,
    },
    /// The caller may not read the process's files.
    #[error("no permission to read /proc files of {process}")]
    PermissionDenied {
        /// The process.
        process: Process,
    },
    /// A file could not be read, or says something unexpected.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Whether the process has exited or is exiting: gone from /proc, a zombie, or without memory
/// any more (no `VmSize`, as a kernel thread); the kernel then answers `move_pages` with `EINVAL`.
pub fn has_exited(process: Process) -> bool {
    check_user_memory(process).is_err()
        || read_text(process, "status").map_or(true, |s| field(&s, "VmSize").is_none())
}

/// `PF_KTHREAD` in the flags of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Checks that the process exists and has user memory: not a zombie, not a kernel thread.
pub fn check_user_memory(process: Process) -> Result<(), ProcfsError> {
    let stat = read_text(process, "stat")?;
    // The fields after the command name, which is in parentheses and may contain spaces or
    // parentheses itself: the state first.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let bad = || invalid(process, "stat", &format!("unexpected contents {stat:?}"));
    let state = *fields.first().ok_or_else(bad)?;
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    // `X` and `x`: dead, a zombie being reaped.
    let what = if matches!(state, "Z" | "X" | "x") {
        "a zombie"
    } else if flags & PF_KTHREAD != 0 {
        "a kernel thread"
    } else {
        return Ok(());
    };
    Err(ProcfsError::NoUserMemory { process, what })
}

/// One mapping of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmArea {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// Permissions as the kernel writes them (`rw-p`).
    pub perms: String,
    /// File path, `[heap]`, `[stack]`, ...; empty for anonymous memory.
    pub path: String,
}

impl VmArea {
    /// The path, or `anonymous`.
    pub fn name(&self) -> &str {
        if self.path.is_empty() {
            "anonymous"
        } else {
            &self.path
        }
    }

    /// Whether the pattern of `--mapping` selects this area: `anonymous` (no path), or any part
    /// of the path (`[heap]`, `libc.so`, `/data/file`).
    pub fn matches(&self, pattern: &str) -> bool {
        if pattern == "anonymous" {
            self.path.is_empty()
        } else {
            !self.path.is_empty() && self.path.contains(pattern)
        }
    }

    /// Kernel-provided areas whose pages cannot migrate (`[vdso]`, `[vvar]`, `[vsyscall]`).
    pub fn is_special(&self) -> bool {
        matches!(
            self.path.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" | "[uprobes]"
        )
    }

    /// Whether the area is shared (`s` in the permissions) rather than private.
    pub fn is_shared(&self) -> bool {
        self.perms.ends_with('s')
    }
}

fn io_error(process: Process, file: &str, e: io::Error) -> ProcfsError {
    match (e.kind(), e.raw_os_error()) {
        (ErrorKind::NotFound, _) | (_, Some(libc::ESRCH)) => ProcfsError::NoSuchProcess { process },
        (ErrorKind::PermissionDenied, _) => ProcfsError::PermissionDenied { process },
        _ => ProcfsError::Read {
            path: process.proc_path(file),
            source: e,
        },
    }
}

fn read_text(process: Process, file: &str) -> Result<String, ProcfsError> {
    std::fs::read_to_string(process.proc_path(file)).map_err(|e| io_error(process, file, e))
}

/// A file whose contents are not what the kernel writes.
fn invalid(process: Process, file: &str, what: &str) -> ProcfsError {
    ProcfsError::Read {
        path: process.proc_path(file),
        source: io::Error::new(ErrorKind::InvalidData, what),
    }
}

/// The value of the `name:` line of a status-like file, trimmed.
fn field<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// A `kB` value of a status-like file (`VmRSS:  1024 kB`) in bytes; 0 where there is none.
fn kb_field(text: &str, name: &str) -> u64 {
    field(text, name)
        .and_then(|v| v.strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// What `/proc/PID/status` says about a process's NUMA rights and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Nodes its cpuset lets it use (`Mems_allowed_list`).
    pub mems_allowed: NodeSet,
    /// Its effective capabilities include `CAP_SYS_NICE` (in its user namespace).
    pub cap_sys_nice: bool,
    /// Resident memory, bytes (`VmRSS`; 0 for a process without memory).
    pub rss: u64,
}

/// Reads `/proc/PID/status`.
pub fn status(process: Process) -> Result<Status, ProcfsError> {
    let missing = || invalid(process, "status", "no Mems_allowed_list or CapEff line");
    parse_status(&read_text(process, "status")?).ok_or_else(missing)
}

fn parse_status(text: &str) -> Option<Status> {
    const CAP_SYS_NICE: u32 = 23;
    let caps = u64::from_str_radix(field(text, "CapEff")?, 16).ok()?;
    Some(Status {
        mems_allowed: field(text, "Mems_allowed_list")?.parse().ok()?,
        cap_sys_nice: caps & (1 << CAP_SYS_NICE) != 0,
        rss: kb_field(text, "VmRSS"),
    })
}

fn parse_hex_range(text: &str) -> Option<(usize, usize)> {
    let (a, b) = text.split_once('-')?;
    Some((
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    ))
}

/// The mappings of a process, in address order.
pub fn read_maps(process: Process) -> Result<Vec<VmArea>, ProcfsError> {
    let text = read_text(process, "maps")?;
    text.lines()
        .map(|line| {
            let mut f = line.splitn(6, ' ');
            let range = f.next().unwrap_or_default();
            let perms = f.next().unwrap_or_default();
            let path = f.nth(3).unwrap_or_default().trim_start();
            let (start, end) = parse_hex_range(range)
                .ok_or_else(|| invalid(process, "maps", &format!("bad line {line:?}")))?;
            Ok(VmArea {
                start,
                end,
                perms: perms.to_owned(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// Appends to `out` the addresses of the pages of `range` that are present in memory (not
/// swapped out, never touched or freed), from `/proc/PID/pagemap`.
pub fn present_pages(
    process: Process,
    range: Range<usize>,
    out: &mut Vec<usize>,
) -> Result<(), ProcfsError> {
    const CHUNK: usize = 1 << 16;
    let page = sys::base_page_size();
    let file =
        File::open(process.proc_path("pagemap")).map_err(|e| io_error(process, "pagemap", e))?;
    let mut buf = vec![0u8; CHUNK * 8];
    let mut addr = range.start / page * page;
    while addr < range.end {
        let n = ((range.end - addr).div_ceil(page)).min(CHUNK);
        let bytes = &mut buf[..n * 8];
        file.read_exact_at(bytes, (addr / page * 8) as u64)
            .map_err(|e| io_error(process, "pagemap", e))?;
        for (i, entry) in bytes.chunks_exact(8).enumerate() {
            let entry = u64::from_ne_bytes(entry.try_into().expect("8-byte chunk"));
            if entry & sys::pagemap_entry::PRESENT != 0 {
                out.push(addr + i * page);
            }
        }
        addr += n * page;
    }
    Ok(())
}

/// `f` of each line of `/proc/PID/smaps` about a mapping that overlaps `range` (and of that
/// mapping), until it returns `Some`.
fn smaps_find<T>(
    process: Process,
    range: Range<usize>,
    mut f: impl FnMut(&Range<usize>, &str) -> Option<T>,
) -> Result<Option<T>, ProcfsError> {
    let smaps = read_text(process, "smaps")?;
    let mut current = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if let Some((start, end)) = parse_hex_range(first) {
            current = (start < range.end && range.start < end).then_some(start..end);
        } else if let Some(found) = current.as_ref().and_then(|area| f(area, line)) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Bytes of transparent huge pages (`AnonHugePages` in `/proc/PID/smaps`) in the mappings that
/// overlap `range` (whole mappings: smaps counts no finer).
pub fn anon_huge_bytes(process: Process, range: Range<usize>) -> Result<u64, ProcfsError> {
    let mut total = 0;
    smaps_find(process, range, |_, line| -> Option<()> {
        total += kb_field(line, "AnonHugePages");
        None
    })?;
    Ok(total)
}

/// The first mapping overlapping `range` that is locked in memory (`lo` in the `VmFlags` of
/// `/proc/PID/smaps`: mlock, mlockall, MAP_LOCKED), if any.
pub fn first_locked(
    process: Process,
    range: Range<usize>,
) -> Result<Option<Range<usize>>, ProcfsError> {
    smaps_find(process, range, |area, line| {
        let flags = line.strip_prefix("VmFlags:")?;
        flags
            .split_whitespace()
            .any(|f| f == "lo")
            .then(|| area.clone())
    })
}

/// Memory of one mapping per node, from `/proc/PID/numa_maps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AreaPlacement {
    /// The mapping.
    pub area: VmArea,
    /// Bytes present on each node.
    pub bytes_per_node: BTreeMap<NodeId, u64>,
    /// Size of the pages the kernel counts in (4 KiB, or the hugetlb page size).
    pub kernel_page_size: u64,
}

/// Where the memory of each mapping of a process is: what `numastat -p` shows.
pub fn placement(process: Process) -> Result<Vec<AreaPlacement>, ProcfsError> {
    // A mapping merged with its neighbour between the reads of `maps` and `numa_maps` would show
    // no memory: both are read again (up to 3 times) until every start of `numa_maps` is known.
    let mut reads = 0;
    let (maps, mut by_start) = loop {
        let maps = read_maps(process)?;
        let by_start = parse_numa_maps(&read_text(process, "numa_maps")?);
        reads += 1;
        let starts: BTreeSet<usize> = maps.iter().map(|a| a.start).collect();
        if reads == 3 || by_start.keys().all(|s| starts.contains(s)) {
            break (maps, by_start);
        }
    };
    Ok(maps
        .into_iter()
        .map(|area| {
            let (bytes_per_node, kernel_page_size) = by_start
                .remove(&area.start)
                .unwrap_or((BTreeMap::new(), 4096));
            AreaPlacement {
                area,
                bytes_per_node,
                kernel_page_size,
            }
        })
        .collect())
}

/// Bytes per node and the kernel's page size of each mapping in `numa_maps`, by start address.
fn parse_numa_maps(text: &str) -> BTreeMap<usize, (BTreeMap<NodeId, u64>, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let start = usize::from_str_radix(words.next()?, 16).ok()?;
            let mut counts = BTreeMap::new();
            let mut page_kb = 4;
            for (key, value) in words.filter_map(|w| w.split_once('=')) {
                if key == "kernelpagesize_kB" {
                    page_kb = value.parse().unwrap_or(4);
                } else if let (Some(Ok(node)), Ok(n)) = (
                    key.strip_prefix('N').map(str::parse::<NodeId>),
                    value.parse::<u64>(),
                ) {
                    counts.insert(node, n);
                }
            }
            let size = page_kb * 1024;
            let bytes = counts.into_iter().map(|(n, c)| (n, c * size)).collect();
            Some((start, (bytes, size)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_maps_and_present_pages() {
        let maps = read_maps(Process::Current).unwrap();
        assert!(maps.iter().any(|a| a.path == "[stack]"));
        assert!(maps.windows(2).all(|w| w[0].end <= w[1].start));
        let mut m = sys::Mapping::anonymous(8 * 4096).unwrap();
        m.as_mut_slice()[3 * 4096] = 1;
        m.as_mut_slice()[5 * 4096 + 17] = 1;
        let start = m.as_ptr() as usize;
        let mut pages = Vec::new();
        present_pages(Process::Current, start..start + 8 * 4096, &mut pages).unwrap();
        assert_eq!(pages, [start + 3 * 4096, start + 5 * 4096]);
        let area = maps.iter().find(|a| a.path == "[stack]").unwrap();
        assert!(area.matches("[stack]") && area.matches("stack") && !area.matches("anonymous"));
    }

    #[test]
    fn huge_page_bytes_follow_madvise() {
        let mut m =
            sys::Mapping::anonymous_aligned(4 * sys::HUGE_PAGE_SIZE, sys::HUGE_PAGE_SIZE).unwrap();
        m.advise_no_huge_pages().unwrap();
        m.as_mut_slice().fill(1);
        let start = m.as_ptr() as usize;
        assert_eq!(
            anon_huge_bytes(Process::Current, start..start + m.len()).unwrap(),
            0
        );
        assert_eq!(anon_huge_bytes(Process::Current, 4096..8192).unwrap(), 0);
    }

    #[test]
    fn numa_maps_counts_touched_pages() {
        let mut m = sys::Mapping::anonymous(64 * 4096).unwrap();
        m.as_mut_slice()[..10 * 4096].fill(3);
        let start = m.as_ptr() as usize;
        let areas = placement(Process::Current).unwrap();
        let area = areas
            .iter()
            .find(|a| a.area.start <= start && start < a.area.end)
            .unwrap();
        let total: u64 = area.bytes_per_node.values().sum();
        assert!(total >= 10 * 4096, "{area:?}");
    }

    #[test]
    fn status_names_nodes_capabilities_and_size() {
        let text = "Name:\tcat\nVmRSS:\t    1024 kB\nCapEff:\t0000000000800000\nMems_allowed:\t00000003\nMems_allowed_list:\t0-1\n";
        let s = parse_status(text).unwrap();
        assert_eq!(s.mems_allowed, "0-1".parse().unwrap());
        assert!(s.cap_sys_nice);
        assert_eq!(s.rss, 1 << 20);
        let own = status(Process::Current).unwrap();
        assert!(own.rss > 0);
        assert!(!own.mems_allowed.is_empty());
    }

    #[test]
    fn exited_processes_are_recognised() {
        assert!(!has_exited(Process::Current));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Process::Pid(child.id());
        // Until it is reaped, the child is a zombie.
        while !has_exited(pid) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.wait().unwrap();
        assert!(has_exited(pid));
    }

    #[test]
    fn zombies_and_kernel_threads_have_no_user_memory() {
        check_user_memory(Process::Current).unwrap();
        let e = check_user_memory(Process::Pid(2)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "process 2 is a kernel thread: it has no user memory"
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Process::Pid(child.id());
        // `has_exited` turns true as soon as the child drops its memory, a moment before the
        // kernel marks it a zombie; until it is reaped, it then stays a zombie.
        let e = loop {
            match check_user_memory(pid) {
                Ok(()) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(e) => break e,
            }
        };
        child.wait().unwrap();
        assert!(
            e.to_string()
                .ends_with("is a zombie: it has no user memory"),
            "{e}"
        );
    }

    #[test]
    fn missing_process_is_reported() {
        let gone = Process::Pid(u32::MAX / 2);
        assert!(matches!(
            read_maps(gone),
            Err(ProcfsError::NoSuchProcess { .. })
        ));
    }
}
