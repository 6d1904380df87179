//! `migrate_pages(2)`: pagemig's threads move the pages first, between the node pairs the
//! kernel would use and in its order, then the caller's own call finishes and answers.

use std::ffi::{c_int, c_ulong};
use std::time::Instant;

use super::{Call, Context, Execution, MIGRATE_BATCH, kernel_answers, process_of};
use crate::copy::Route;
use crate::migrate::{Plan, Request, Selection, in_cgroup};
use crate::process::Process;
use crate::procfs;
use crate::sys;
use crate::topology::{self, NodeId, NodeSet};

/// The kernel's `node_remap`: the position of `node` among the set bits of `from` picks the bit
/// at that position (modulo its weight) of `to`.
fn node_remap(node: NodeId, from: &NodeSet, to: &NodeSet) -> NodeId {
    match from.iter().position(|n| n == node) {
        Some(pos) if !to.is_empty() => to.iter().nth(pos % to.len()).expect("within the weight"),
        _ => node,
    }
}

/// The (source, destination) pairs `do_migrate_pages` moves, in its order.
fn kernel_pairs(from: &NodeSet, to: &NodeSet) -> Vec<(NodeId, NodeId)> {
    let same_weight = from.len() == to.len();
    let mut left = from.clone();
    let mut pairs = Vec::new();
    loop {
        let mut chosen = None;
        for s in left.iter() {
            if !same_weight && to.contains(s) {
                continue;
            }
            let d = node_remap(s, from, to);
            if s == d {
                continue;
            }
            chosen = Some((s, d));
            if !left.contains(d) {
                break;
            }
        }
        let Some((s, d)) = chosen else { break };
        left = left.iter().filter(|&n| n != s).collect();
        pairs.push((s, d));
    }
    pairs
}

/// A node mask as the kernel reads it from `maxnode - 1` bits.
fn mask_nodes(words: &[c_ulong], bits: usize) -> NodeSet {
    let w = c_ulong::BITS as usize;
    (0..bits)
        .filter(|&b| words[b / w] & (1 << (b % w)) != 0)
        .map(|b| b as NodeId)
        .collect()
}

/// `migrate_pages(pid, maxnode, old_nodes, new_nodes)` with the system call's semantics; safe
/// with any arguments (the masks are only read, every address is checked).
pub fn migrate_pages(
    ctx: &Context,
    pid: c_int,
    maxnode: c_ulong,
    old_nodes: *const c_ulong,
    new_nodes: *const c_ulong,
) -> Call {
    let started = Instant::now();
    let execution = prepare_migration(ctx, pid, maxnode, old_nodes, new_nodes)
        .unwrap_or_else(Execution::Kernel);
    let result = sys::migrate_pages_unchanged(pid, maxnode, old_nodes as usize, new_nodes as usize);
    Call {
        request: format!("migrate_pages(pid {pid}, maxnode {maxnode})"),
        result: result.map_err(|e| e.errno),
        execution,
        took: started.elapsed(),
    }
}

/// Moves the pages `migrate_pages` would move with pagemig's threads, or says why not.
fn prepare_migration(
    ctx: &Context,
    pid: c_int,
    maxnode: c_ulong,
    old_nodes: *const c_ulong,
    new_nodes: *const c_ulong,
) -> Result<Execution, String> {
    let topology = ctx.usable()?;
    let page = sys::base_page_size();
    if maxnode > (page * 8) as c_ulong {
        return Err(format!("maxnode {maxnode} is more than the kernel takes"));
    }
    let bits = maxnode.saturating_sub(1) as usize;
    let words = bits.div_ceil(c_ulong::BITS as usize);
    let read = |ptr: *const c_ulong, what| -> Result<Vec<c_ulong>, String> {
        if ptr.is_null() {
            return Ok(vec![0; words]);
        }
        sys::read_own(ptr as usize, words).map_err(kernel_answers(what))
    };
    let old = read(old_nodes, "the old mask cannot be read")?;
    let new = read(new_nodes, "the new mask cannot be read")?;
    let (from, to) = (mask_nodes(&old, bits), mask_nodes(&new, bits));
    let possible = topology::node_state("possible").map_err(|e| e.to_string())?;
    if let Some(n) = from
        .iter()
        .chain(to.iter())
        .find(|&n| !possible.contains(n))
    {
        return Err(format!("node {n} is not a possible node"));
    }
    // Everything the kernel checks but the old mask's pages: the process, the caller's rights,
    // the new nodes against both cpusets. An empty old mask moves nothing.
    if let Err(e) = sys::migrate_pages(pid, maxnode, &vec![0; words], &new) {
        return Err(format!("the kernel refuses the call itself ({})", e.errno));
    }
    let own = procfs::status(Process::Current).map_err(|e| e.to_string())?;
    let to = to.intersection(&own.mems_allowed);
    let pairs = kernel_pairs(&from, &to);
    if pairs.is_empty() {
        return Err("no node maps to another".into());
    }
    if let Some(&(_, d)) = pairs
        .iter()
        .find(|(_, d)| pairs.iter().any(|(s, _)| s == d))
    {
        return Err(format!(
            "node {d} is both a source and a target: the kernel's order of moves decides"
        ));
    }
    let process = process_of(pid);
    let target = procfs::status(process).map_err(|e| e.to_string())?;
    let route = Route {
        from: Some(pairs[0].0),
        to: Some(pairs[0].1),
    };
    let cpus = ctx
        .threads_for(target.rss, route)
        .map_err(|why| format!("resident memory {} MiB: {why}", target.rss >> 20))?;
    let mut plan = Plan::parallel(cpus.clone(), MIGRATE_BATCH);
    plan.move_all = own.cap_sys_nice;
    let mut reports = Vec::new();
    let mut stopped = None;
    for &(s, d) in &pairs {
        let request =
            Request::process(process, Selection::All, d).from_nodes(NodeSet::from_iter([s]));
        match in_cgroup::scan_and_execute(topology, &request, &plan, &ctx.workers, &|_| {}) {
            Ok(report) => reports.push(report),
            Err(e) => {
                stopped = Some(e.to_string());
                break;
            }
        }
    }
    Ok(Execution::Prepared {
        cpus,
        pairs,
        reports,
        stopped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Threads;
    use crate::sys::Errno;
    use crate::topology::Topology;

    fn set(s: &str) -> NodeSet {
        s.parse().unwrap()
    }

    #[test]
    fn pairs_follow_the_kernel() {
        assert_eq!(kernel_pairs(&set("0"), &set("1")), [(0, 1)]);
        assert_eq!(kernel_pairs(&set("0-1"), &set("2-3")), [(0, 2), (1, 3)]);
        // 0->1 would land on a node still to be emptied: 1->2 goes first.
        assert_eq!(kernel_pairs(&set("0-1"), &set("1-2")), [(1, 2), (0, 1)]);
        // Different weights: sources that are targets stay.
        assert_eq!(kernel_pairs(&set("0-1"), &set("1")), [(0, 1)]);
        assert_eq!(kernel_pairs(&set("0-1"), &set("0-1")), []);
        assert_eq!(kernel_pairs(&set("0"), &set("")), []);
    }

    #[test]
    fn masks_read_only_maxnode_bits() {
        assert_eq!(mask_nodes(&[0b1011], 2), set("0-1"));
        assert_eq!(mask_nodes(&[0, 1], 65), set("64"));
        assert_eq!(mask_nodes(&[0, 2], 65), set(""));
    }

    #[test]
    fn a_process_that_does_not_exist_gets_the_kernels_answer() {
        let topology = Topology::detect().unwrap();
        let ctx = Context::with_topology(topology, Threads::Count(2), None, Default::default());
        let call = migrate_pages(&ctx, i32::MAX, 2, [1].as_ptr(), [1].as_ptr());
        assert_eq!(call.result, Err(Errno::SRCH));
    }
}
