//! The remap path: migrate memory of the calling process without the kernel's one-thread copy.
//!
//! Per batch: stop writers with userfaultfd (write-protect, or for base pages with reservoirs,
//! move the old pages out so every access waits), allocate new pages on the target node, copy
//! the present pages with a copy engine, `mremap` the new pages over the same addresses, and
//! wake the writers. Addresses and contents stay the same; untouched pages stay untouched.
// Replacing the caller's pages in place is the point of this path: its entry is an `unsafe fn`
// whose contract the caller keeps, and the copy ops over raw addresses follow from it.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ops::Range;

use super::plan::Plan;
use super::reservoir::Reservoirs;
use super::scan::{PageState, Run, Runs, scan_own, scan_own_for};
use crate::account::{
    CallStats, Charge, ChargeTo, FailureCause, Laps, Path, Phases, RemapFacts, Report, ScanMethod,
    SkipReason, Verification, Verify,
};
use crate::copy::{CopyEngine, CopyError, CopyOp};
use crate::process::Process;
use crate::procfs;
use crate::sys::{
    self, HUGE_PAGE_SIZE, Mapping, PageCategories, PageNode, Pagemap, SysError, Uffd,
};
use crate::topology::{NodeId, NodeSet, Topology};

/// Why a range could not be migrated by the remap path. Where part of it had already moved, the
/// error says up to where: every page is readable and writable either way.
#[derive(Debug, thiserror::Error)]
pub enum RemapError {
    /// userfaultfd write-protect is not available: the planner chooses the kernel path instead.
    #[error(
        "the remap path needs userfaultfd write-protect of unpopulated pages (Linux 6.4+) and \
         permission to use userfaultfd (vm.unprivileged_userfaultfd, or user-mode faults): {source}"
    )]
    Unsupported {
        /// What the kernel answered.
        #[source]
        source: SysError,
    },
    /// The range is not page-aligned or is empty.
    #[error("range {start:#x}+{len:#x} is not a non-empty, page-aligned range")]
    Misaligned {
        /// Start.
        start: usize,
        /// Length.
        len: usize,
    },
    /// Part of the range is not mapped.
    #[error("{start:#x}-{end:#x} is not mapped in this process")]
    NotMapped {
        /// Start of the hole.
        start: usize,
        /// End of the hole.
        end: usize,
    },
    /// Part of the range is file-backed, shared or not writable: only anonymous private memory
    /// can be remapped.
    #[error(
        "{start:#x}-{end:#x} is {mapping} ({perms}): the remap path moves only anonymous private writable memory"
    )]
    NotAnonymousPrivate {
        /// Start of the mapping.
        start: usize,
        /// End.
        end: usize,
        /// Its path, or `anonymous`.
        mapping: String,
        /// Its permissions.
        perms: String,
    },
    /// Part of the range is locked in memory: a remap would drop the lock.
    #[error(
        "{start:#x}-{end:#x} is locked in memory (mlock): the remap path would drop the lock; unlock it or use the kernel path"
    )]
    Locked {
        /// Start of the locked mapping.
        start: usize,
        /// End.
        end: usize,
    },
    /// `/proc/self/pagemap` or `/proc/self/maps` could not be opened (no procfs mounted).
    #[error("the remap path reads /proc/self/pagemap and /proc/self/maps: {source}")]
    NoProcfs {
        /// What the kernel answered.
        #[source]
        source: SysError,
    },
    /// The fallback to the kernel path failed.
    #[error(transparent)]
    Kernel(#[from] super::MigrateError),
    /// The target node cannot hold the next batch: pages below `moved_until` are on it, the
    /// others where they were.
    #[error(
        "node {node} has {free} bytes free, too few for the next batch ({need} bytes of {start:#x}-{end:#x}); \
         pages below {moved_until:#x} are on node {node}, the others where they were"
    )]
    NoMemory {
        /// Target node.
        node: NodeId,
        /// Bytes the batch needs.
        need: u64,
        /// Bytes free on the node.
        free: u64,
        /// The range asked for.
        start: usize,
        /// Its end.
        end: usize,
        /// Pages below this address moved.
        moved_until: usize,
    },
    /// A system call failed in the middle: pages before `moved_until` are on the target node,
    /// the others on their old node.
    #[error(
        "{source} while moving {start:#x}-{end:#x}; pages below {moved_until:#x} are on the target node, the others where they were"
    )]
    Failed {
        /// The range asked for.
        start: usize,
        /// Its end.
        end: usize,
        /// Pages below this address moved.
        moved_until: usize,
        /// What failed.
        #[source]
        source: SysError,
    },
    /// The copy engine failed: the batch stays on its old node.
    #[error(
        "copy failed while moving {start:#x}-{end:#x}; pages below {moved_until:#x} are on the target node, the others where they were"
    )]
    Copy {
        /// The range asked for.
        start: usize,
        /// Its end.
        end: usize,
        /// Pages below this address moved.
        moved_until: usize,
        /// What the engine said.
        #[source]
        source: CopyError,
    },
}

/// Base pages asked about per batch by [`Verify::Sample`].
pub const SAMPLE_BASE_PAGES: usize = 16;

/// What the remap path keeps open between calls (a [`crate::Migrator`] keeps one): the
/// userfaultfd that write-protects batches, and the `/proc/self` files it asks about pages.
#[derive(Debug)]
pub struct Handles {
    uffd: Uffd,
    pagemap: Pagemap,
}

impl Handles {
    /// Opens the userfaultfd (write-protect of unpopulated pages) and the files.
    pub fn open() -> Result<Self, RemapError> {
        let uffd =
            Uffd::open_write_protect().map_err(|source| RemapError::Unsupported { source })?;
        let pagemap = Pagemap::open_own().map_err(|source| RemapError::NoProcfs { source })?;
        Ok(Handles { uffd, pagemap })
    }
}

/// Checks that `[start, end)` is mapped anonymous private writable memory that is not locked:
/// per mapping, one `PROCMAP_QUERY` and one `madvise(MADV_COLD)` probe (see
/// [`sys::lru_advice_allowed`]). `/proc/self/maps` and `smaps` are read only to name a problem,
/// or where the kernel has no `PROCMAP_QUERY` (before 6.11).
fn check_range(pagemap: &Pagemap, start: usize, end: usize) -> Result<(), RemapError> {
    let page = sys::base_page_size();
    if start >= end || !start.is_multiple_of(page) || !end.is_multiple_of(page) {
        return Err(RemapError::Misaligned {
            start,
            len: end.saturating_sub(start),
        });
    }
    let (mut pos, mut fine) = (start, true);
    while fine && pos < end {
        fine = match pagemap.vma_at_or_after(pos) {
            Ok(Some(v)) if v.range.start <= pos && v.writable && !v.shared && !v.file_backed => {
                // Advice on part of a huge page would split it: probe all of it, or one base page.
                let block_start = pos - pos % HUGE_PAGE_SIZE;
                let block = block_start..block_start + HUGE_PAGE_SIZE;
                let in_huge_page = v.range.start <= block.start
                    && block.end <= v.range.end
                    && scan_own_for(pagemap, pos..pos + page, PageCategories::HUGE)
                        .is_ok_and(|s| s.has_huge());
                let probe = if in_huge_page { block } else { pos..pos + page };
                pos = v.range.end;
                sys::lru_advice_allowed(probe)
            }
            _ => false,
        };
    }
    if !fine {
        check_range_in_maps(start, end)?;
        if let Some(locked) = procfs::first_locked(Process::Current, start..end)
            .map_err(|_| RemapError::NotMapped { start, end })?
        {
            return Err(RemapError::Locked {
                start: locked.start,
                end: locked.end,
            });
        }
    }
    Ok(())
}

/// As [`check_range`], from `/proc/self/maps`, naming the mapping that is in the way.
fn check_range_in_maps(start: usize, end: usize) -> Result<(), RemapError> {
    let areas =
        procfs::read_maps(Process::Current).map_err(|_| RemapError::NotMapped { start, end })?;
    let mut pos = start;
    for a in areas.iter().filter(|a| a.end > start && a.start < end) {
        if a.start > pos {
            return Err(RemapError::NotMapped {
                start: pos,
                end: a.start,
            });
        }
        let anonymous = a.path.is_empty() || a.path.starts_with('[');
        if !anonymous || a.is_shared() || !a.perms.starts_with("rw") {
            return Err(RemapError::NotAnonymousPrivate {
                start: a.start,
                end: a.end,
                mapping: a.name().to_owned(),
                perms: a.perms.clone(),
            });
        }
        pos = a.end;
    }
    if pos < end {
        return Err(RemapError::NotMapped { start: pos, end });
    }
    Ok(())
}

/// The parts of `0..len` not covered by `runs` (sorted, disjoint).
fn holes(runs: &[Range<usize>], len: usize) -> impl Iterator<Item = Range<usize>> {
    let starts = std::iter::once(0).chain(runs.iter().map(|r| r.end));
    let ends = runs.iter().map(|r| r.start).chain([len]);
    starts
        .zip(ends)
        .map(|(a, b)| a..b)
        .filter(|h| !h.is_empty())
}

/// `runs`, scanned where pages were moved out to, as if scanned at `at`, where they came from.
fn moved_to(mut runs: Runs, at: usize) -> Runs {
    let shift =
        |r: &Range<usize>| at + (r.start - runs.range.start)..at + (r.end - runs.range.start);
    for r in &mut runs.runs {
        r.range = shift(&r.range);
    }
    runs.range = shift(&runs.range);
    runs
}

/// Moves the pages of `[pos, pos + len)` out into a chunk of their own, 2 MB-aligned so that
/// `mremap` moves whole page tables; the range stays mapped but empty. `None` where the range
/// spans several mappings (earlier batches of other sizes), which one call cannot move.
///
/// # Safety
/// As [`Mapping::take_pages_from`]: `[pos, pos + len)` is page-aligned private anonymous memory
/// of this process that the caller expects to lose its pages.
unsafe fn move_out(pos: usize, len: usize) -> Result<Option<Mapping>, SysError> {
    let mut old = Mapping::anonymous_aligned(len, HUGE_PAGE_SIZE)?;
    // SAFETY: the caller vouches for the range.
    match unsafe { old.take_pages_from(0, pos, len) } {
        Ok(()) => Ok(Some(old)),
        Err(e) if e.errno == sys::Errno::FAULT => Ok(None),
        Err(e) => Err(e),
    }
}

/// New pages for a batch of `len` bytes on `to` (`huge` pages or base pages, aligned to
/// `unit`): the reservoir's `chunk` with the pages the copy will not overwrite dropped, or a
/// new mapping with the pages of `runs` (offsets) faulted in.
fn new_pages(
    chunk: Option<Mapping>,
    to: NodeId,
    huge: bool,
    len: usize,
    unit: usize,
    runs: &[Range<usize>],
) -> Result<Mapping, SysError> {
    if let Some(mut m) = chunk {
        for h in holes(runs, len) {
            m.discard(h)?;
        }
        return Ok(m);
    }
    let new = Mapping::anonymous_aligned(len, unit)?;
    // The new pages have the size of the old ones.
    if huge {
        new.advise_huge_pages()?;
    } else {
        new.advise_no_huge_pages()?;
    }
    new.bind(&NodeSet::from_iter([to]))?;
    for r in runs {
        new.populate_range(r.clone())?;
    }
    Ok(new)
}

/// The pages to ask about after a batch: every page with data in `scan` with [`Verify::Full`];
/// otherwise one page per huge page and up to [`SAMPLE_BASE_PAGES`] base pages spread over the
/// rest.
fn pages_to_verify(scan: &Runs, mode: Verify) -> Vec<usize> {
    let page = sys::base_page_size();
    let copied = scan.runs.iter().filter(|r| r.state.has_data());
    let all = |r: &Run| r.range.clone().step_by(page);
    if mode == Verify::Full {
        return copied.flat_map(all).collect();
    }
    let (huge, base): (Vec<&Run>, Vec<&Run>) = copied.partition(|r| r.huge);
    let mut out: Vec<usize> = huge
        .iter()
        // A different subpage in each huge page: a split page shows up wherever it split.
        .flat_map(|r| {
            r.range
                .clone()
                .step_by(HUGE_PAGE_SIZE)
                .enumerate()
                .map(|(i, h)| h + (i * 97 % (HUGE_PAGE_SIZE / page)) * page)
        })
        .collect();
    let base_pages: usize = base.iter().map(|r| r.range.len() / page).sum();
    let step = base_pages.div_ceil(SAMPLE_BASE_PAGES).max(1);
    out.extend(base.into_iter().flat_map(all).step_by(step));
    out
}

/// What the remap path works with besides its [`Plan`].
#[derive(Clone, Copy)]
pub struct Tools<'a> {
    /// Copies the pages, as the plan's copier says.
    pub engine: &'a dyn CopyEngine,
    /// The userfaultfd and files, kept open between calls.
    pub handles: &'a Handles,
    /// Where new pages come from and old pages go, instead of being allocated and freed. With
    /// them, base pages are moved out before the copy instead of being write-protected, and
    /// every access to a batch's absent pages waits for the batch.
    pub reservoirs: Option<&'a Reservoirs>,
}

/// Moves `[start, start + len)` of the calling process to node `to` as `plan` says, keeping
/// its addresses and contents, one batch at a time; checks the new pages as `plan.verify` says.
///
/// # Safety
/// The range must be anonymous private memory of this process that no thread unmaps, remaps or
/// re-protects during the call, and that no live Rust reference (`&`/`&mut`) covers unless the
/// caller accepts that the bytes behind it are replaced by identical ones. Other threads may
/// read and write it through raw pointers or atomics: writes wait for their batch and are never
/// lost; reads wait only where base pages are moved out before the copy (with reservoirs).
/// System calls given a pointer into the range wait likewise where the process may handle the
/// kernel's faults with userfaultfd (`CAP_SYS_PTRACE`, or `vm.unprivileged_userfaultfd = 1`);
/// elsewhere, while its batch moves, one that writes there, or with reservoirs one that reads a
/// 4 KB page there (`write(2)` from a buffer), fails with `EFAULT`.
pub unsafe fn migrate_range(
    topology: &Topology,
    start: usize,
    len: usize,
    to: NodeId,
    plan: &Plan,
    tools: Tools<'_>,
) -> Result<Report, RemapError> {
    let mut laps = Laps::start();
    let mut phases = Phases::default();
    let end = start
        .checked_add(len)
        .ok_or(RemapError::Misaligned { start, len })?;
    super::check_target(topology, to)?;
    let Handles { uffd, pagemap } = tools.handles;
    check_range(pagemap, start, end)?;
    let aligned = start.is_multiple_of(HUGE_PAGE_SIZE) && len.is_multiple_of(HUGE_PAGE_SIZE);
    let page = sys::base_page_size();
    let unit = if aligned { HUGE_PAGE_SIZE } else { page };
    let batch = plan.batch.saturating_mul(page).max(unit) / unit * unit;
    let mut facts = RemapFacts {
        batches: 0,
        pages_from_reservoir: 0,
        pages_recycled: 0,
        writes_waited: 0,
        scan: ScanMethod::PagemapScan,
        verification: Verification {
            mode: plan.verify,
            pages_checked: 0,
            batches_checked_in_full: 0,
        },
    };
    let (mut copied_total, mut untouched, mut on_target_total) = (0u64, 0u64, 0u64);
    // Only the copy's threads and their CPU time: no kernel calls.
    let mut calls = CallStats::default();
    // Free memory on the target, read once where a batch first needs new pages, then counted
    // down: earlier batches of this call used some.
    let mut free: Option<u64> = None;
    laps.lap(&mut phases.check);
    let mut pos = start;
    while pos < end {
        let b_end = (pos + batch).min(end);
        let b_len = b_end - pos;
        let failed = |source| RemapError::Failed {
            start,
            end,
            moved_until: pos,
            source,
        };

        // Before the protection, whose markers on never-touched pages read as swapped.
        let mut scan = scan_own(pagemap, pos..b_end).map_err(failed)?;
        laps.lap(&mut phases.scan);

        // Writers wait from here until the wake; with reservoirs, so do accesses to absent pages.
        let reservoirs = tools.reservoirs.is_some();
        uffd.register(pos, b_len, reservoirs).map_err(failed)?;
        // On any failure below, put back the old pages moved out, lift the protection and
        // unregister (the userfaultfd outlives this call): the batch stays usable where it is.
        let undo = |e: RemapError, moved_out: Option<Mapping>| {
            if let Some(old) = moved_out {
                // SAFETY: [pos, b_end) was emptied by moving these very pages out, and accesses
                // to it wait until they are woken below.
                let _ = unsafe { old.replace(pos) };
            }
            let _ = uffd.unprotect(pos, b_len);
            let _ = uffd.unregister(pos, b_len);
            // Pages put back replace the registered range, so unregistering wakes nobody.
            let _ = uffd.wake(pos, b_len);
            e
        };
        let huge = aligned && scan.has_huge();
        // Base pages, with reservoirs: move the old pages out (`mremap` moves whole page tables)
        // and copy from there; every access waits until the new pages are in. Write-protecting
        // and later restoring write access cost a page-table entry per page each: together as
        // much as copying a 4 KB page. Huge pages are write-protected; their readers go on.
        let mut moved_out = None;
        if reservoirs && !huge {
            // SAFETY: [pos, b_end) is the caller's anonymous private memory, registered for
            // missing pages: accesses wait until the new pages, or these on failure, are back.
            moved_out = unsafe { move_out(pos, b_len) }.map_err(|e| undo(failed(e), None))?;
        }
        if moved_out.is_none() {
            uffd.write_protect(pos, b_len)
                .map_err(|e| undo(failed(e), None))?;
        }
        laps.lap(&mut phases.protect);

        let src = moved_out.as_ref().map_or(pos, |m| m.as_ptr() as usize);
        if moved_out.is_some() {
            // Nothing reaches the old pages any more: what is there now is what to copy.
            let old = scan_own(pagemap, src..src + b_len)
                .map_err(|e| undo(failed(e), moved_out.take()))?;
            scan = moved_to(old, pos);
        } else {
            // Pages written between the scan and the protection have data too.
            let later = scan_own_for(pagemap, pos..b_end, PageCategories::PRESENT)
                .map_err(|e| undo(failed(e), None))?;
            scan.merge_present(&later);
        }
        facts.scan = scan.method;
        // Huge pages faulted in between the two looks count.
        let huge = aligned && scan.has_huge();
        // Offsets from `pos` of the pages to copy.
        let runs: Vec<Range<usize>> = scan
            .data_runs()
            .into_iter()
            .map(|r| r.start - pos..r.end - pos)
            .collect();
        let present: usize = runs.iter().map(|r| r.len()).sum();
        // Only whole batches of data are recycled: a hole in a chunk would later fault in under
        // the old memory policy.
        let whole = matches!(runs.as_slice(), [r] if r.len() == b_len);
        let recycle_to = if reservoirs && whole && scan.bytes(PageState::Swapped) == 0 {
            let nodes =
                sys::query_page_nodes(0, &[src]).map_err(|e| undo(failed(e), moved_out.take()))?;
            match nodes[..] {
                [PageNode::Node(n)] => Some(n),
                _ => None,
            }
        } else {
            None
        };
        laps.lap(&mut phases.scan);

        let chunk = tools.reservoirs.and_then(|r| r.take(to, huge, b_len));
        if chunk.is_none() {
            // A margin above the watermarks: filling a node a mapping is bound to calls the OOM
            // killer.
            let left =
                *free.get_or_insert_with(|| crate::topology::node_free_bytes(to).unwrap_or(0));
            let total = topology.node(to).map_or(0, |n| n.mem_total);
            let margin = (total / 16).max(32 << 20);
            if present as u64 + margin > left {
                return Err(undo(
                    RemapError::NoMemory {
                        node: to,
                        need: present as u64,
                        free: left,
                        start,
                        end,
                        moved_until: pos,
                    },
                    moved_out.take(),
                ));
            }
            free = Some(left - present as u64);
            laps.lap(&mut phases.check);
        }

        facts.pages_from_reservoir += u64::from(chunk.is_some()) * (b_len / page) as u64;
        let new = new_pages(chunk, to, huge, b_len, unit, &runs)
            .map_err(|e| undo(failed(e), moved_out.take()))?;
        laps.lap(&mut phases.alloc);

        let ops: Vec<CopyOp<'_>> = runs
            .iter()
            // SAFETY: sources are pages of the caller's range or of the chunk they were moved
            // out to (readable; writers are blocked); destinations are pages of `new`, which
            // nothing else reaches; the mappings are distinct, so no ops overlap.
            .map(|r| unsafe {
                CopyOp::from_raw(
                    (src + r.start) as *const u8,
                    new.as_ptr().add(r.start).cast_mut(),
                    r.len(),
                )
            })
            .collect();
        let stats = tools.engine.copy_before_remap(&ops).map_err(|source| {
            let e = RemapError::Copy {
                start,
                end,
                moved_until: pos,
                source,
            };
            undo(e, moved_out.take())
        })?;
        calls.cpu_time += stats.worker_cpu;
        calls.threads = calls.threads.max(stats.threads);
        drop(ops);
        laps.lap(&mut phases.copy);

        // Old pages still in place move out into a chunk for the source node's reservoir;
        // accesses to the emptied range wait (MISSING).
        let write_protected = moved_out.is_none();
        if let (None, Some(_)) = (&moved_out, recycle_to) {
            // SAFETY: [pos, b_end) is the caller's anonymous private memory, copied into `new`
            // above; it gets `new`'s pages right below, and accesses wait until then. Where one
            // call cannot move it, its old pages are freed by the remap instead of recycled.
            moved_out = unsafe { move_out(pos, b_len) }.map_err(|e| undo(failed(e), None))?;
        }
        // SAFETY: the caller owns [pos, b_end) (checked anonymous private above) and accepts
        // identical bytes in place; writers are blocked until the wake below.
        if let Err((_, e)) = unsafe { new.replace(pos) } {
            // The old pages go back where they were before anyone is woken.
            return Err(undo(failed(e), moved_out));
        }
        // The batch is now the new mapping, which is not registered: nothing to unregister.
        laps.lap(&mut phases.remap);

        // Read the fault messages before waking (a woken fault takes its message); wake even
        // where reading failed.
        let drained = uffd.drain();
        uffd.wake(pos, b_len).map_err(failed)?;
        facts.writes_waited += drained.map_err(failed)? as u64;
        if let (Some(r), Some(node), Some(old)) = (tools.reservoirs, recycle_to, moved_out) {
            // After the wake, so writers do not wait: pages moved out of a write-protected range
            // keep read-only entries, and every first write to one would fault.
            if write_protected {
                uffd.restore_write_access(old.as_ptr() as usize, old.len())
                    .map_err(failed)?;
            }
            let pages = (old.len() / page) as u64;
            if r.give(node, huge, old) {
                facts.pages_recycled += pages;
            }
        }
        laps.lap(&mut phases.wake);

        let on_target = |pages: &[usize]| -> Result<usize, RemapError> {
            let placed = sys::query_page_nodes(0, pages).map_err(failed)?;
            Ok(placed.iter().filter(|p| **p == PageNode::Node(to)).count())
        };
        let asked = pages_to_verify(&scan, plan.verify);
        let mut checked = asked.len();
        let mut found = on_target(&asked)?;
        let copied_pages = present / page;
        if plan.verify == Verify::Sample {
            if found == asked.len() {
                found = copied_pages;
            } else {
                let all = pages_to_verify(&scan, Verify::Full);
                checked += all.len();
                found = on_target(&all)?;
                facts.verification.batches_checked_in_full += 1;
            }
        }
        facts.verification.pages_checked += checked as u64;
        on_target_total += found as u64;
        copied_total += copied_pages as u64;
        untouched += ((b_len - present) / page) as u64;
        facts.batches += 1;
        pos = b_end;
        laps.lap(&mut phases.verify);
    }
    let page = page as u64;
    let skipped = (untouched > 0).then_some((SkipReason::NothingToMove, untouched));
    let elsewhere = copied_total.saturating_sub(on_target_total);
    let failed = (elsewhere > 0).then_some((FailureCause::StillElsewhere, elsewhere));
    Ok(Report {
        path: Path::Remap,
        process: Process::Current,
        to,
        dry_run: false,
        page_size: page,
        pages_requested: len as u64 / page,
        pages_moved: on_target_total,
        pages_already_on_target: 0,
        pages_skipped: skipped.into_iter().collect(),
        pages_failed: failed.into_iter().collect(),
        pages_left_by_node: BTreeMap::new(),
        bytes_moved: on_target_total * page,
        calls,
        phases,
        wall: laps.wall(),
        caller_cpu: laps.cpu(),
        process_exited: false,
        charged_to: Charge {
            to: ChargeTo::Caller,
            cgroup: None,
            usage_before_usec: None,
            usage_after_usec: None,
        },
        remap: Some(facts),
        why: plan.why.clone(),
    })
}

/// Moves the bytes `range` (page-aligned offsets) of `mapping` to node `to` with the remap path,
/// keeping their addresses: the owned, node-placed buffer of this library (see [`Mapping::bind`]).
pub fn migrate_mapping(
    topology: &Topology,
    mapping: &mut Mapping,
    range: Range<usize>,
    to: NodeId,
    plan: &Plan,
    tools: Tools<'_>,
) -> Result<Report, RemapError> {
    let start = mapping.as_ptr() as usize + range.start;
    let len = range
        .end
        .min(mapping.len().next_multiple_of(sys::base_page_size()))
        .saturating_sub(range.start);
    // SAFETY: `mapping` is anonymous private memory that this exclusive borrow keeps every
    // other reference away from for the whole call; the range lies inside it.
    unsafe { migrate_range(topology, start, len, to, plan, tools) }
}
