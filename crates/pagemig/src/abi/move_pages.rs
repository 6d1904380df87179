//! `move_pages(2)`: split by target node and run by the kernel path's executor where every
//! page keeps the kernel's answer, else passed to the kernel unchanged.

use std::collections::HashSet;
use std::ffi::{c_int, c_ulong, c_void};
use std::time::Instant;

use super::{Call, Context, Execution, MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, kernel_answers, process_of};
use crate::copy::Route;
use crate::migrate::Plan;
use crate::migrate::kernel;
use crate::procfs;
use crate::sys::{self, Errno, ForeignOut, HUGE_PAGE_SIZE};
use crate::topology::{self, NodeId};

/// More pages than this in one call go to the kernel unchanged (copying the arrays would take
/// 16 bytes per page).
const MAX_PAGES: u64 = 1 << 26;

/// Pages per call of the threads, at most.
const MAX_CALL: usize = 16384;
/// Pages per call of the threads, at least (unless a node's group is smaller).
const MIN_CALL: usize = 32;

/// The largest folio a page of any process can be part of now: a PMD-sized transparent huge
/// page, or the largest hugetlb page size that has pages in its pool.
fn largest_folio() -> usize {
    let pmd = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(HUGE_PAGE_SIZE);
    let hugetlb = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let size = hugetlb_page_size(e.file_name().to_str()?)?;
            let pages = std::fs::read_to_string(e.path().join("nr_hugepages")).ok()?;
            (pages.trim().parse::<u64>().ok()? > 0).then_some(size)
        })
        .max()
        .unwrap_or(0);
    pmd.max(hugetlb)
}

/// The page size of a hugetlb pool from the name of its sysfs directory (`hugepages-2048kB`).
fn hugetlb_page_size(name: &str) -> Option<usize> {
    let kb: usize = name
        .strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// Whether splitting by node keeps every page's answer: the kernel's answer for a page depends
/// on the other entries of its folio (a second entry of a queued folio is `EBUSY`), so the
/// entries of each folio-sized region must be adjacent and go to one node (then one call).
fn split_keeps_answers(pages: &[usize], nodes: &[c_int], region: usize) -> Result<(), String> {
    let mut seen = HashSet::new();
    for i in 0..pages.len() {
        let r = pages[i] / region;
        if i > 0 && r == pages[i - 1] / region {
            if nodes[i] != nodes[i - 1] {
                return Err(format!(
                    "entries {} and {i} are in one {} KiB region but go to different nodes",
                    i - 1,
                    region >> 10
                ));
            }
        } else if !seen.insert(r) {
            return Err(format!(
                "entry {i} is in a {} KiB region that earlier, separate entries are in",
                region >> 10
            ));
        }
    }
    Ok(())
}

/// Checks the targets as the kernel does before it moves anything: a node without memory is
/// `ENODEV`, a node outside the process's cpuset `EACCES`, both for the whole call.
fn check_nodes(pid: c_int, nodes: &[c_int]) -> Result<(), String> {
    let memory = topology::node_state("has_memory").map_err(|e| e.to_string())?;
    let allowed = procfs::status(process_of(pid))
        .map_err(|e| e.to_string())?
        .mems_allowed;
    for &n in nodes {
        if n < 0 || !memory.contains(n as u32) {
            return Err(format!("node {n} has no memory or does not exist"));
        }
        if !allowed.contains(n as u32) {
            return Err(format!("node {n} is outside the process's cpuset"));
        }
    }
    Ok(())
}

/// `move_pages(pid, count, pages, nodes, status, flags)` with the system call's semantics
/// (`status` holds `count` entries, `EINVAL` otherwise; pagemig writes them only where the
/// kernel would have).
pub fn move_pages(
    ctx: &Context,
    pid: c_int,
    count: c_ulong,
    pages: *const *const c_void,
    nodes: *const c_int,
    status: ForeignOut<'_>,
    flags: c_int,
) -> Call {
    let started = Instant::now();
    let (result, execution) = split_move(ctx, pid, count, pages, nodes, status, flags)
        .unwrap_or_else(|reason| {
            let result = unchanged(pid, count, pages, nodes, status, flags);
            (result, Execution::Kernel(reason))
        });
    Call {
        request: format!("move_pages(pid {pid}, {count} pages, flags {flags:#x})"),
        result,
        execution,
        took: started.elapsed(),
    }
}

/// The caller's call, made as it is.
fn unchanged(
    pid: c_int,
    count: c_ulong,
    pages: *const *const c_void,
    nodes: *const c_int,
    status: ForeignOut<'_>,
    flags: c_int,
) -> Result<usize, Errno> {
    sys::move_pages_unchanged(pid, count, pages as usize, nodes as usize, status, flags)
        .map_err(|e| e.errno)
}

/// The call split and run by pagemig's threads: its result and execution, or why not.
fn split_move(
    ctx: &Context,
    pid: c_int,
    count: c_ulong,
    pages: *const *const c_void,
    nodes: *const c_int,
    status: ForeignOut<'_>,
    flags: c_int,
) -> Result<(Result<usize, Errno>, Execution), String> {
    ctx.usable()?;
    if status.len() as u64 != count {
        return Err(format!("a status array of {} entries", status.len()));
    }
    if flags & !(MPOL_MF_MOVE | MPOL_MF_MOVE_ALL) != 0 {
        return Err(format!(
            "flags {flags:#x} are not MPOL_MF_MOVE or MPOL_MF_MOVE_ALL"
        ));
    }
    if nodes.is_null() {
        return Err("no target nodes: a placement query".into());
    }
    if count == 0 || count > MAX_PAGES {
        return Err(format!("{count} pages"));
    }
    let bytes = count * sys::base_page_size() as u64;
    if ctx.min_split_bytes == u64::MAX {
        return Err("one thread planned for every size (the thread setting, or one CPU)".into());
    }
    if bytes < ctx.min_split_bytes {
        return Err(format!(
            "one thread planned ({} KiB: below {} KiB, the least the planner gives two threads)",
            bytes >> 10,
            ctx.min_split_bytes >> 10
        ));
    }
    let move_all = flags & MPOL_MF_MOVE_ALL != 0;
    // The kernel checks the flags' rights, the process and the caller's rights to it before it
    // reads any array: an empty call gets exactly those answers.
    if let Err(e) = sys::move_pages(pid, &[], Some(&[]), &mut [], move_all) {
        return Err(format!("the kernel refuses the call itself ({})", e.errno));
    }
    let count = count as usize;
    // Where every page is, asked before pagemig allocates or starts anything: an address
    // unmapped now is EFAULT for this call even if pagemig's own memory (a buffer, a thread's
    // stack) is mapped there afterwards.
    let at_entry = sys::query_pages_unchanged(pid, count, pages as usize)
        .map_err(kernel_answers("the placement query fails"))?;
    let route = Route {
        from: None,
        to: sys::read_own::<c_int>(nodes as usize, 1)
            .ok()
            .and_then(|n| u32::try_from(n[0]).ok()),
    };
    let cpus = ctx.threads_for(bytes, route)?;
    let all_pages: Vec<usize> = sys::read_own(pages as usize, count)
        .map_err(kernel_answers("the pages array cannot be read"))?;
    let all_nodes: Vec<c_int> = sys::read_own(nodes as usize, count)
        .map_err(kernel_answers("the nodes array cannot be read"))?;
    let held = status
        .read()
        .map_err(kernel_answers("the status array cannot be read"))?;
    // Writing back what it holds tells whether it is writable before anything moves.
    status
        .write(&held)
        .map_err(kernel_answers("the status array is not writable"))?;
    check_nodes(pid, &all_nodes)?;
    let region = largest_folio();
    split_keeps_answers(&all_pages, &all_nodes, region)?;
    // Unmapped when the call began: EFAULT, as the query said; the others move.
    let unmapped = |i: usize| at_entry[i] == -libc::EFAULT;
    let moving: Vec<usize> = (0..count).filter(|&i| !unmapped(i)).collect();
    let addrs: Vec<usize> = moving.iter().map(|&i| all_pages[i]).collect();
    let targets: Vec<NodeId> = moving.iter().map(|&i| all_nodes[i] as NodeId).collect();
    let groups = targets.iter().collect::<HashSet<_>>().len();
    let batch = count.div_ceil(cpus.len() * 4).clamp(MIN_CALL, MAX_CALL);
    // One call on another thread only adds a thread's start to the kernel's work. With one
    // target node, the first batch ends where the region of its last page ends.
    let one_call = groups < 2
        && addrs
            .get(batch - 1..)
            .is_none_or(|rest| rest.iter().all(|&a| a / region == rest[0] / region));
    if one_call {
        return Err("one kernel call: nothing to split".into());
    }
    let mut plan = Plan::parallel(cpus.clone(), batch);
    plan.region = region;
    plan.move_all = move_all;
    let finish_unchanged = |why: String| {
        // The kernel's own call answers from where the pages are now; the addresses that were
        // unmapped when the call began stay EFAULT.
        let result = unchanged(pid, count as c_ulong, pages, nodes, status, flags);
        if let Ok(mut now) = status.read() {
            for i in (0..count).filter(|&i| unmapped(i)) {
                now[i] = -libc::EFAULT;
            }
            // Readable, so writable: it was written before.
            let _ = status.write(&now);
        }
        Ok((result, Execution::Kernel(why)))
    };
    let mut moved = vec![0; addrs.len()];
    let calls = match kernel::move_pages(
        process_of(pid),
        &addrs,
        &targets,
        &mut moved,
        &plan,
        &ctx.workers,
        &|_| {},
    ) {
        Ok(calls) => calls,
        Err(e) => return finish_unchanged(format!("pagemig's calls stopped ({e})")),
    };
    let exited = kernel::process_exited(&moved);
    if exited || calls.left_behind > 0 || moved.contains(&-libc::ENOMEM) {
        return finish_unchanged(format!(
            "pagemig's calls left {} page(s) behind{}: the kernel's own call finished",
            calls.left_behind,
            if exited { ", the process exited" } else { "" }
        ));
    }
    // Every entry either was unmapped (EFAULT) or moved.
    let mut answers = vec![-libc::EFAULT; count];
    for (&i, &s) in moving.iter().zip(&moved) {
        answers[i] = s;
    }
    let execution = Execution::Split {
        cpus,
        groups,
        calls,
    };
    match status.write(&answers) {
        Ok(()) => Ok((Ok(0), execution)),
        Err(e) => Ok((Err(e.errno), execution)),
    }
}

#[cfg(test)]
#[allow(
    unsafe_code,
    reason = "status arrays are handed over as a C caller hands them"
)]
mod tests {
    use super::*;
    use crate::Threads;
    use crate::topology::Topology;

    #[test]
    fn hugetlb_sizes_are_read_from_the_kernels_directory_names() {
        assert_eq!(hugetlb_page_size("hugepages-2048kB"), Some(2 << 20));
        assert_eq!(hugetlb_page_size("hugepages-1048576kB"), Some(1 << 30));
        // Only the kernel's own spelling: a number of kB.
        for name in [
            "hugepages-2048",
            "hugepages-2M",
            "hugepages-2048KB",
            "hugepages-1GiB",
        ] {
            assert_eq!(hugetlb_page_size(name), None, "{name}");
        }
    }

    #[test]
    fn splitting_keeps_folio_regions_whole() {
        let r = 1 << 21;
        // Two regions, in order, one node each: fine.
        let pages = [0, 4096, r, r + 4096];
        assert!(split_keeps_answers(&pages, &[0, 0, 1, 1], r).is_ok());
        // A region split by another entry, or sent to two nodes: not.
        assert!(split_keeps_answers(&[0, r, 4096], &[0, 0, 0], r).is_err());
        assert!(split_keeps_answers(&[0, 4096], &[0, 1], r).is_err());
    }

    fn context(threads: Threads) -> Context {
        Context::with_topology(
            Topology::detect().unwrap(),
            threads,
            None,
            Default::default(),
        )
    }

    fn first_memory_node() -> c_int {
        let nodes = topology::node_state("has_memory").unwrap();
        nodes.iter().next().unwrap() as c_int
    }

    /// pagemig's call on this process: `pages` to `nodes` (as many), answers in `status`.
    fn call_here(
        ctx: &Context,
        pages: &[*const c_void],
        nodes: &[c_int],
        status: ForeignOut<'_>,
        flags: c_int,
    ) -> Call {
        let count = pages.len() as c_ulong;
        move_pages(ctx, 0, count, pages.as_ptr(), nodes.as_ptr(), status, flags)
    }

    /// The same call (on this process, `MPOL_MF_MOVE`) made by the kernel and by pagemig: the
    /// kernel's result and status array, then pagemig's call and status array.
    fn kernel_and_ours(
        ctx: &Context,
        pages: &[*const c_void],
        nodes: &[c_int],
    ) -> (Result<usize, Errno>, Vec<c_int>, Call, Vec<c_int>) {
        let count = pages.len() as c_ulong;
        let (mut kernel, mut ours) = (vec![-1; pages.len()], vec![-1; pages.len()]);
        let k = sys::move_pages_unchanged(
            0,
            count,
            pages.as_ptr() as usize,
            nodes.as_ptr() as usize,
            ForeignOut::from(&mut kernel[..]),
            MPOL_MF_MOVE,
        );
        let o = call_here(ctx, pages, nodes, (&mut ours[..]).into(), MPOL_MF_MOVE);
        (k.map_err(|e| e.errno), kernel, o, ours)
    }

    #[test]
    fn a_split_move_answers_as_the_kernel() {
        let node = first_memory_node();
        // Every fourth page of 4 MiB: at least two 2 MiB regions, so at least two calls.
        let mut m = sys::Mapping::anonymous(1024 * 4096).unwrap();
        m.as_mut_slice()[..800 * 4096].fill(3);
        let mut pages: Vec<*const c_void> = (0..256)
            .map(|i| m.as_ptr().wrapping_add(i * 4 * 4096).cast())
            .collect();
        pages.push(8 as *const c_void);
        let ctx = context(Threads::Count(2));
        let (k, kernel, o, ours) = kernel_and_ours(&ctx, &pages, &vec![node; pages.len()]);
        assert_eq!(k, o.result);
        assert_eq!(kernel, ours);
        assert!(
            matches!(&o.execution, Execution::Split { calls, .. } if calls.calls >= 2),
            "{o:?}"
        );
        assert_eq!(ours[0], node);
        assert_eq!(ours[255], -libc::ENOENT);
        assert_eq!(ours[256], -libc::EFAULT);
    }

    /// Every fourth page of 4 MiB, touched, then a page unmapped just before the call: the
    /// lowest mapping, where the next one (a thread's stack, a buffer) would be placed.
    #[test]
    fn an_address_freed_before_the_call_stays_efault() {
        // Other tests of this process map memory too and could take the freed address: the
        // check runs alone, in a process of its own.
        const ALONE: &str = "PAGEMIG_TEST_ALONE";
        if std::env::var_os(ALONE).is_none() {
            let name = module_path!().split_once("::").expect("in a crate").1;
            let name = format!("{name}::an_address_freed_before_the_call_stays_efault");
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", &name, "--test-threads", "1", "--nocapture"])
                .env(ALONE, "1")
                .output()
                .unwrap();
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let node = first_memory_node();
        let mut m = sys::Mapping::anonymous(1024 * 4096).unwrap();
        m.as_mut_slice().fill(1);
        let mut pages: Vec<*const c_void> = (0..256)
            .map(|i| m.as_ptr().wrapping_add(i * 4 * 4096).cast())
            .collect();
        let nodes = vec![node; pages.len() + 1];
        for threads in [2, 4] {
            let ctx = context(Threads::Count(threads));
            let freed = sys::Mapping::anonymous(4096).unwrap();
            pages.push(freed.as_ptr().cast());
            drop(freed);
            let (k, kernel, o, ours) = kernel_and_ours(&ctx, &pages, &nodes);
            assert_eq!(k, o.result);
            assert_eq!(kernel[256], -libc::EFAULT);
            assert_eq!(kernel, ours, "{threads} threads: {o}");
            assert!(matches!(o.execution, Execution::Split { .. }), "{o}");
            pages.pop();
        }
    }

    #[test]
    fn small_calls_go_to_the_kernel_decided_from_their_size() {
        let auto = context(Threads::Auto);
        let page = sys::base_page_size() as u64;
        // Without a model, one thread per 64 MiB: the first size with two is 128 MiB.
        if sys::allowed_cpus().unwrap().len() >= 2 {
            assert_eq!(auto.min_split_bytes, 64 << 20, "{}", auto.min_split_bytes);
        }
        assert_eq!(context(Threads::Count(1)).min_split_bytes, u64::MAX);
        assert_eq!(context(Threads::Count(2)).min_split_bytes, 0);
        let mut m = sys::Mapping::anonymous(4 * page as usize).unwrap();
        m.as_mut_slice().fill(1);
        let node = match sys::query_page_nodes(0, &[m.as_ptr() as usize]).unwrap()[0] {
            sys::PageNode::Node(n) => n as c_int,
            other => panic!("{other:?}"),
        };
        let pages: Vec<*const c_void> = (0..4)
            .map(|i| m.as_ptr().wrapping_add(i * page as usize).cast())
            .collect();
        let mut status = [0; 4];
        for (ctx, why) in [
            (&auto, "one thread planned (16 KiB: below 65536 KiB"),
            (
                &context(Threads::Count(2)),
                "one kernel call: nothing to split",
            ),
        ] {
            let call = call_here(
                ctx,
                &pages,
                &[node; 4],
                (&mut status[..]).into(),
                MPOL_MF_MOVE,
            );
            assert_eq!(call.result, Ok(0));
            assert_eq!(status, [node; 4]);
            if ctx.min_split_bytes != u64::MAX {
                assert!(
                    matches!(&call.execution, Execution::Kernel(r) if r.starts_with(why)),
                    "{call}"
                );
            }
        }
    }

    #[test]
    fn what_cannot_be_split_goes_to_the_kernel() {
        let ctx = context(Threads::Count(2));
        let m = sys::Mapping::anonymous(4096).unwrap();
        let pages = [m.as_ptr().cast::<c_void>()];
        let mut status = [0];
        let call = call_here(&ctx, &pages, &[0], (&mut status[..]).into(), 8);
        assert_eq!(call.result, Err(Errno::INVAL));
        assert!(matches!(call.execution, Execution::Kernel(ref r) if r.contains("flags")));
        // SAFETY: address 8 is never mapped: the kernel answers EFAULT.
        let bad = unsafe { ForeignOut::new(8 as *mut c_int, 1) };
        let call = call_here(&ctx, &pages, &[0], bad, MPOL_MF_MOVE);
        assert_eq!(call.result, Err(Errno::FAULT));
        assert!(matches!(call.execution, Execution::Kernel(_)), "{call:?}");
    }

    #[test]
    fn a_status_array_shorter_or_longer_than_count_is_einval() {
        let node = first_memory_node();
        let mut m = sys::Mapping::anonymous(1024 * 4096).unwrap();
        m.as_mut_slice().fill(5);
        let pages: Vec<*const c_void> = (0..1024)
            .map(|i| m.as_ptr().wrapping_add(i * 4096).cast())
            .collect();
        let nodes = vec![node; pages.len()];
        for threads in [Threads::Count(1), Threads::Count(2)] {
            let ctx = context(threads);
            for len in [1, pages.len() + 1] {
                let mut status = vec![-7; len];
                let call = call_here(&ctx, &pages, &nodes, (&mut status[..]).into(), MPOL_MF_MOVE);
                assert_eq!(call.result, Err(Errno::INVAL), "{len}: {call}");
                assert!(status.iter().all(|&s| s == -7), "{len}: {status:?}");
            }
        }
        assert!(m.as_slice().iter().all(|&b| b == 5));
    }
}
