//! The remap path: migrate memory of the calling process without the kernel's one-thread copy.
//!
//! Per batch: stop writers with userfaultfd, allocate new pages on the target node, copy the
//! present pages with a copy engine (a pinned worker pool), `mremap` the new pages over the same
//! addresses, and wake the writers. Writers are stopped by write-protecting the range (readers go
//! on) or, for base pages with reservoirs, by moving the old pages out of it first (every access
//! waits; no page-table entry is changed one by one). Addresses and contents stay the same; pages
//! never touched stay untouched.
// Replacing the caller's pages in place is the point of this path: its entry is an `unsafe fn`
// whose contract the caller keeps, and the copy ops over raw addresses follow from it.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use super::plan::Plan;
use super::reservoir::Reservoirs;
use super::scan::{PageState, Runs, scan_own, scan_own_for};
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

/// What the remap path keeps open between calls: the userfaultfd that write-protects batches,
/// and the `/proc/self` files it asks about pages and mappings. Opened once (the
/// [`crate::Migrator`] keeps one for its lifetime), so that a call does not open them again.
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
fn holes(runs: &[Range<usize>], len: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut pos = 0;
    for r in runs {
        if r.start > pos {
            out.push(pos..r.start);
        }
        pos = r.end;
    }
    if pos < len {
        out.push(pos..len);
    }
    out
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
/// `mremap` moves whole page tables where it can; the range stays mapped but empty. `None`
/// where the range spans several mappings (earlier batches of other sizes), which one call
/// cannot move.
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
/// `unit`): a reservoir's chunk with the pages the copy will not overwrite dropped, or a new
/// mapping with the pages of `runs` (offsets) faulted in. The flag says which.
fn new_pages(
    reservoirs: Option<&Reservoirs>,
    to: NodeId,
    huge: bool,
    len: usize,
    unit: usize,
    runs: &[Range<usize>],
) -> Result<(Mapping, bool), SysError> {
    if let Some(mut m) = reservoirs.and_then(|r| r.take(to, huge, len)) {
        // Drop the stale pages the copy will not overwrite.
        for h in holes(runs, len) {
            m.discard(h)?;
        }
        return Ok((m, true));
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
    Ok((new, false))
}

/// The pages to ask about after a batch: every page of `runs` (absolute addresses) with
/// [`Verify::Full`]; otherwise one page per huge page of `huge` runs and up to
/// [`SAMPLE_BASE_PAGES`] base pages spread over the rest.
fn pages_to_verify(runs: &[(Range<usize>, bool)], mode: Verify) -> Vec<usize> {
    let page = sys::base_page_size();
    let all = |r: &Range<usize>| r.clone().step_by(page);
    if mode == Verify::Full {
        return runs.iter().flat_map(|(r, _)| all(r)).collect();
    }
    let mut out: Vec<usize> = runs
        .iter()
        .filter(|(_, huge)| *huge)
        // A different subpage in each huge page: a split page shows up wherever it split.
        .flat_map(|(r, _)| {
            r.clone()
                .step_by(HUGE_PAGE_SIZE)
                .enumerate()
                .map(|(i, h)| h + (i * 97 % (HUGE_PAGE_SIZE / page)) * page)
        })
        .collect();
    let base: usize = runs
        .iter()
        .filter(|(_, huge)| !*huge)
        .map(|(r, _)| r.len() / page)
        .sum();
    let step = base.div_ceil(SAMPLE_BASE_PAGES).max(1);
    out.extend(
        runs.iter()
            .filter(|(_, huge)| !*huge)
            .flat_map(|(r, _)| all(r))
            .step_by(step),
    );
    out
}

/// What the remap path works with besides its [`Plan`].
#[derive(Clone, Copy)]
pub struct Tools<'a> {
    /// Copies the pages, as the plan's copier says (a [`crate::copy::Pool`] for several
    /// workers).
    pub engine: &'a dyn CopyEngine,
    /// The userfaultfd and files, kept open between calls.
    pub handles: &'a Handles,
    /// Where new pages come from and old pages go, instead of being allocated and freed. With
    /// them, accesses to a batch's pages that are not there (never touched, or moved out) wait
    /// for the batch too, and base pages are moved out before the copy instead of being
    /// write-protected.
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
    let caller_cpu_start = sys::thread_cpu_time();
    let mut laps = Laps::start();
    let mut phases = Phases::default();
    let end = start
        .checked_add(len)
        .ok_or(RemapError::Misaligned { start, len })?;
    super::check_target(topology, to)?;
    let verify = plan.verify;
    let handles = tools.handles;
    check_range(&handles.pagemap, start, end)?;
    let (uffd, pagemap) = (&handles.uffd, &handles.pagemap);
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
            mode: verify,
            pages_checked: 0,
            batches_checked_in_full: 0,
        },
    };
    let (mut copied_total, mut untouched, mut on_target_total) = (0u64, 0u64, 0u64);
    let (mut copy_threads, mut worker_cpu) = (0usize, Duration::ZERO);
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

        // Before the protection: afterwards the kernel marks never-touched pages, and reports
        // its markers as swapped.
        let mut scan = scan_own(pagemap, pos..b_end).map_err(failed)?;
        laps.lap(&mut phases.scan);

        // Writers wait from here until the wake; with reservoirs, so do accesses to pages that
        // are not there.
        let reservoirs = tools.reservoirs.is_some();
        uffd.register(pos, b_len, reservoirs).map_err(failed)?;
        // On any failure below, put back the old pages where they were moved out, and lift the
        // protection, so that the batch stays usable where it is; the userfaultfd may outlive
        // this call, so the range is unregistered too.
        let undo = |e: RemapError, moved_out: Option<Mapping>| {
            if let Some(old) = moved_out {
                // SAFETY: [pos, b_end) was emptied by moving these very pages out, and accesses
                // to it wait until they are woken below.
                let _ = unsafe { old.replace(pos) };
            }
            let _ = uffd.unprotect(pos, b_len);
            let _ = uffd.unregister(pos, b_len);
            // Pages put back replace the registered range, so unregistering it finds nothing
            // registered and wakes nobody: the accesses that waited for them are woken here.
            let _ = uffd.wake(pos, b_len);
            e
        };
        let huge = aligned && scan.has_huge();
        // Base pages, with reservoirs: move the old pages out to a chunk of their own (`mremap`
        // moves page tables, whole ones for a 2 MB-aligned batch) and copy from there; every
        // access to the batch waits (missing pages) until the new pages are in. Write-protecting
        // costs a page-table entry per page, and so does giving the old pages write access back
        // before a reservoir hands them out again: together as much as the copy of a 4 KB page.
        // Huge pages are write-protected (an entry per 2 MB), and their readers go on.
        let mut moved_out = None;
        if reservoirs && !huge {
            // SAFETY: [pos, b_end) is the caller's anonymous private memory, registered for
            // missing pages: accesses wait until the new pages, or these on failure, are back.
            // Where one call cannot move it, it is write-protected instead.
            moved_out = unsafe { move_out(pos, b_len) }.map_err(|e| undo(failed(e), None))?;
        }
        if moved_out.is_none() {
            uffd.write_protect(pos, b_len)
                .map_err(|e| undo(failed(e), None))?;
        }
        laps.lap(&mut phases.protect);

        // Where the pages are copied from.
        let src = moved_out.as_ref().map_or(pos, |m| m.as_ptr() as usize);
        if moved_out.is_some() {
            // Nothing reaches the old pages any more: what is there now is what to copy.
            match scan_own(pagemap, src..src + b_len) {
                Ok(old) => scan = moved_to(old, pos),
                Err(e) => return Err(undo(failed(e), moved_out.take())),
            }
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
        // Old pages go to the reservoir of their node: only whole batches of data, whose chunk
        // then has no hole that a later copy would fault in under an old memory policy.
        let recycle_to = match (tools.reservoirs, runs.as_slice()) {
            (Some(_), [r]) if r.len() == b_len && scan.bytes(PageState::Swapped) == 0 => {
                match sys::query_page_nodes(0, &[src]) {
                    Ok(nodes) => match nodes[..] {
                        [PageNode::Node(n)] => Some(n),
                        _ => None,
                    },
                    Err(e) => return Err(undo(failed(e), moved_out.take())),
                }
            }
            _ => None,
        };
        laps.lap(&mut phases.scan);

        let reserved = tools.reservoirs.is_some_and(|r| r.holds(to, huge, b_len));
        if !reserved {
            // Keep a margin above the node's watermarks: filling a node that a mapping is bound
            // to invokes the OOM killer.
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

        let new = match new_pages(tools.reservoirs, to, huge, b_len, unit, &runs) {
            Ok((new, from_reservoir)) => {
                facts.pages_from_reservoir += u64::from(from_reservoir) * (b_len / page) as u64;
                new
            }
            Err(e) => return Err(undo(failed(e), moved_out.take())),
        };
        laps.lap(&mut phases.alloc);

        let ops: Vec<CopyOp<'_>> = runs
            .iter()
            // SAFETY: source pages are pages with data of the caller's range, or of the chunk
            // they were moved out to (readable; writers are blocked); destinations are pages of
            // `new`, which nothing else can reach; the mappings are distinct, so no op overlaps
            // another.
            .map(|r| unsafe {
                CopyOp::from_raw(
                    (src + r.start) as *const u8,
                    new.as_ptr().add(r.start).cast_mut(),
                    r.len(),
                )
            })
            .collect();
        let stats = match tools.engine.copy_before_remap(&ops) {
            Ok(stats) => stats,
            Err(source) => {
                let e = RemapError::Copy {
                    start,
                    end,
                    moved_until: pos,
                    source,
                };
                return Err(undo(e, moved_out.take()));
            }
        };
        worker_cpu += stats.worker_cpu;
        copy_threads = copy_threads.max(stats.threads);
        drop(ops);
        laps.lap(&mut phases.copy);

        // With reservoirs, old pages still in place move out into a chunk for the source
        // node's reservoir; the range stays mapped but empty, and accesses to it wait (MISSING).
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

        // Read the fault messages before waking: a woken fault takes its message with it. The
        // waiting threads are woken even where reading them failed.
        let drained = uffd.drain();
        uffd.wake(pos, b_len).map_err(failed)?;
        facts.writes_waited += drained.map_err(failed)? as u64;
        if let (Some(r), Some(node), Some(old)) = (tools.reservoirs, recycle_to, moved_out) {
            // After the wake: writers do not wait for this. Pages moved out of a write-protected
            // range keep read-only entries, and every first write to one would fault.
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

        let copied: Vec<(Range<usize>, bool)> = scan
            .runs
            .iter()
            .filter(|r| r.state.has_data())
            .map(|r| (r.range.clone(), r.huge))
            .collect();
        let on_target = |pages: &[usize]| -> Result<usize, RemapError> {
            let placed = sys::query_page_nodes(0, pages).map_err(failed)?;
            Ok(placed.iter().filter(|p| **p == PageNode::Node(to)).count())
        };
        let asked = pages_to_verify(&copied, verify);
        let mut checked = asked.len();
        let mut found = on_target(&asked)?;
        let copied_pages = present / page;
        if verify == Verify::Sample {
            if found == asked.len() {
                found = copied_pages;
            } else {
                let all = pages_to_verify(&copied, Verify::Full);
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
    let mut pages_skipped = BTreeMap::new();
    if untouched > 0 {
        pages_skipped.insert(SkipReason::NothingToMove, untouched);
    }
    let mut pages_failed = BTreeMap::new();
    if copied_total > on_target_total {
        pages_failed.insert(FailureCause::StillElsewhere, copied_total - on_target_total);
    }
    Ok(Report {
        path: Path::Remap,
        process: Process::Current,
        to,
        dry_run: false,
        page_size: page,
        pages_requested: len as u64 / page,
        pages_moved: on_target_total,
        pages_already_on_target: 0,
        pages_skipped,
        pages_failed,
        pages_left_by_node: BTreeMap::new(),
        bytes_moved: on_target_total * page,
        calls: CallStats {
            threads: copy_threads,
            cpu_time: worker_cpu,
            ..CallStats::default()
        },
        phases,
        wall: laps.wall(),
        caller_cpu: sys::thread_cpu_time().saturating_sub(caller_cpu_start),
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
