//! The remap path: migrate memory of the calling process without the kernel's one-thread copy.
//!
//! Per batch: write-protect the range with userfaultfd (writers wait, readers do not), allocate
//! new pages on the target node, copy the present pages with a copy engine (a pinned worker pool),
//! `mremap` the new pages over the same addresses, and wake the writers. Addresses and contents
//! stay the same; pages never touched stay untouched.
// Replacing the caller's pages in place is the point of this path: its entry is an `unsafe fn`
// whose contract the caller keeps, and the copy ops over raw addresses follow from it.
#![allow(unsafe_code)]

use std::ops::Range;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::reservoir::Reservoirs;
use super::{Process, procfs};
use crate::copy::{CopyEngine, CopyError, CopyOp};
use crate::sys::{self, HUGE_PAGE_SIZE, Mapping, PageNode, SysError, Uffd};
use crate::topology::{NodeId, NodeSet, Topology};

/// Why a range could not be migrated by the remap path. Where part of it had already moved, the
/// error says up to where: every page is readable and writable either way.
#[derive(Debug, thiserror::Error)]
pub enum RemapError {
    /// userfaultfd write-protect is not available; [`migrate_own`] falls back to the kernel path.
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

/// Wall time of each step of the remap path, summed over batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RemapPhases {
    /// Registering and write-protecting.
    pub protect: Duration,
    /// Mapping, binding and populating the new pages.
    pub alloc: Duration,
    /// Copying.
    pub copy: Duration,
    /// `mremap` of the new pages over the old addresses.
    pub remap: Duration,
    /// Waking writers and reading their fault messages.
    pub wake: Duration,
}

impl RemapPhases {
    /// Protect, copy, remap and wake: the pipeline without allocation, which a reservoir of
    /// pre-faulted pages takes off the hot path.
    pub fn pipeline(&self) -> Duration {
        self.protect + self.copy + self.remap + self.wake
    }
}

/// What a remap migration did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemapReport {
    /// Target node.
    pub to: NodeId,
    /// Bytes in the range.
    pub bytes: u64,
    /// Pages that were present and were copied.
    pub pages_copied: u64,
    /// Pages that had never been written (untouched, or only read), left without memory.
    pub pages_untouched: u64,
    /// Copied pages that the kernel says are on the target node afterwards.
    pub pages_on_target: u64,
    /// Batches (one protect, copy, remap and wake each).
    pub batches: u64,
    /// Pages whose new memory came from a reservoir, already faulted in.
    pub pages_from_reservoir: u64,
    /// Old pages kept in a reservoir instead of being freed.
    pub pages_recycled: u64,
    /// Writes that waited for their batch.
    pub writes_waited: u64,
    /// Time per step.
    pub phases: RemapPhases,
    /// Wall time.
    pub wall: Duration,
    /// CPU time of the calling thread during the migration (its thread CPU clock).
    pub caller_cpu: Duration,
    /// CPU time of the copy engine's worker threads (zero for an engine that copies on the
    /// calling thread).
    pub worker_cpu: Duration,
}

/// Checks that the range is mapped anonymous private writable memory.
fn check_range(start: usize, end: usize) -> Result<(), RemapError> {
    let page = sys::base_page_size();
    if start >= end || !start.is_multiple_of(page) || !end.is_multiple_of(page) {
        return Err(RemapError::Misaligned {
            start,
            len: end.saturating_sub(start),
        });
    }
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
        let anonymous = a.path.is_empty() || a.path == "[heap]";
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
    if let Some(locked) = procfs::first_locked(Process::Current, start..end)
        .map_err(|_| RemapError::NotMapped { start, end })?
    {
        return Err(RemapError::Locked {
            start: locked.start,
            end: locked.end,
        });
    }
    Ok(())
}

/// Runs of consecutive pages of `[start, end)` that hold memory of their own, as byte offsets
/// from `start`, and the node of the first such page. Pages never touched, and pages only read
/// (which map the shared zero page) are left out: the kernel's placement query answers
/// `ENOENT`/`EFAULT` for both.
fn present_runs(start: usize, end: usize) -> Result<(Vec<Range<usize>>, Option<NodeId>), SysError> {
    let page = sys::base_page_size();
    let pages: Vec<usize> = (start..end).step_by(page).collect();
    let placed = sys::query_page_nodes(0, &pages)?;
    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut first = None;
    for (p, place) in pages.into_iter().zip(placed) {
        let PageNode::Node(node) = place else {
            continue;
        };
        first.get_or_insert(node);
        let off = p - start;
        match runs.last_mut() {
            Some(r) if r.end == off => r.end += page,
            _ => runs.push(off..off + page),
        }
    }
    Ok((runs, first))
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

/// How the remap path runs.
pub struct RemapPlan<'a> {
    /// Copies the pages (a [`crate::copy::Pool`] for several workers).
    pub engine: &'a dyn CopyEngine,
    /// Bytes per batch: writers to a batch wait while it moves. Rounded to 2 MB where the range
    /// is 2 MB aligned.
    pub batch_bytes: usize,
    /// Where new pages come from and old pages go, instead of being allocated and freed. With
    /// them, accesses to a batch's pages that are not there yet (never touched, or between the
    /// two remaps) wait for the batch too.
    pub reservoirs: Option<&'a Reservoirs>,
}

/// Moves `[start, start + len)` of the calling process to node `to`, keeping its addresses and
/// contents, one batch at a time.
///
/// # Safety
/// The range must be anonymous private memory of this process that no thread unmaps, remaps or
/// re-protects during the call, and that no live Rust reference (`&`/`&mut`) covers unless the
/// caller accepts that the bytes behind it are replaced by identical ones. Other threads may
/// read and write it through raw pointers or atomics: reads never wait, writes wait for their
/// batch and are never lost.
pub unsafe fn migrate_range(
    topology: &Topology,
    start: usize,
    len: usize,
    to: NodeId,
    plan: &RemapPlan<'_>,
) -> Result<RemapReport, RemapError> {
    let started = Instant::now();
    let end = start
        .checked_add(len)
        .ok_or(RemapError::Misaligned { start, len })?;
    super::check_target(topology, to)?;
    check_range(start, end)?;
    let uffd = Uffd::open_write_protect().map_err(|source| RemapError::Unsupported { source })?;
    let aligned = start.is_multiple_of(HUGE_PAGE_SIZE) && len.is_multiple_of(HUGE_PAGE_SIZE);
    let huge = aligned && procfs::anon_huge_bytes(Process::Current, start..end).unwrap_or(0) > 0;
    let unit = if aligned {
        HUGE_PAGE_SIZE
    } else {
        sys::base_page_size()
    };
    let batch = plan.batch_bytes.max(unit) / unit * unit;
    let mut report = RemapReport {
        to,
        bytes: len as u64,
        pages_copied: 0,
        pages_untouched: 0,
        pages_on_target: 0,
        batches: 0,
        pages_from_reservoir: 0,
        pages_recycled: 0,
        writes_waited: 0,
        phases: RemapPhases::default(),
        wall: Duration::ZERO,
        caller_cpu: Duration::ZERO,
        worker_cpu: Duration::ZERO,
    };
    let caller_cpu_start = sys::thread_cpu_time();
    let page = sys::base_page_size();
    let mut pos = start;
    while pos < end {
        let b_end = (pos + batch).min(end);
        let failed = |source| RemapError::Failed {
            start,
            end,
            moved_until: pos,
            source,
        };
        let (runs, from_node) = present_runs(pos, b_end).map_err(failed)?;
        let present: usize = runs.iter().map(|r| r.end - r.start).sum();
        // Read now, not from the topology: earlier batches used some. Keep a margin above the
        // node's watermarks: filling a node that a mapping is bound to invokes the OOM killer.
        let free = crate::topology::node_free_bytes(to).unwrap_or(0);
        let total = topology.node(to).map_or(0, |n| n.mem_total);
        let margin = (total / 16).max(32 << 20);
        let reserved = plan
            .reservoirs
            .is_some_and(|r| r.holds(to, huge, b_end - pos));
        if !reserved && present as u64 + margin > free {
            return Err(RemapError::NoMemory {
                node: to,
                need: present as u64,
                free,
                start,
                end,
                moved_until: pos,
            });
        }

        // Writers wait from here until the wake.
        let t = Instant::now();
        uffd.register(pos, b_end - pos, plan.reservoirs.is_some())
            .map_err(failed)?;
        uffd.write_protect(pos, b_end - pos).map_err(failed)?;
        report.phases.protect += t.elapsed();

        // On any failure below, lift the protection so that the batch stays usable where it is.
        let undo = |e: RemapError| {
            let _ = uffd.unprotect(pos, b_end - pos);
            e
        };
        let t = Instant::now();
        let reserved = plan.reservoirs.and_then(|r| r.take(to, huge, b_end - pos));
        let new = match reserved {
            Some(mut m) => {
                // Drop the stale pages the copy will not overwrite.
                for h in holes(&runs, b_end - pos) {
                    m.discard(h).map_err(|e| undo(failed(e)))?;
                }
                report.pages_from_reservoir += ((b_end - pos) / page) as u64;
                m
            }
            None => {
                let new =
                    Mapping::anonymous_aligned(b_end - pos, unit).map_err(|e| undo(failed(e)))?;
                // The new pages have the size of the old ones.
                if huge {
                    new.advise_huge_pages().map_err(|e| undo(failed(e)))?;
                } else {
                    new.advise_no_huge_pages().map_err(|e| undo(failed(e)))?;
                }
                new.bind(&NodeSet::from_iter([to]))
                    .map_err(|e| undo(failed(e)))?;
                for r in &runs {
                    new.populate_range(r.clone()).map_err(|e| undo(failed(e)))?;
                }
                new
            }
        };
        report.phases.alloc += t.elapsed();

        let t = Instant::now();
        let ops: Vec<CopyOp<'_>> = runs
            .iter()
            // SAFETY: source pages are present pages of the caller's range (readable; writers are
            // blocked), destinations are pages of `new`, which nothing else can reach; the two
            // mappings are distinct, so no op overlaps another.
            .map(|r| unsafe {
                CopyOp::from_raw(
                    (pos + r.start) as *const u8,
                    new.as_ptr().add(r.start).cast_mut(),
                    r.end - r.start,
                )
            })
            .collect();
        let stats = plan.engine.copy(&ops).map_err(|source| {
            undo(RemapError::Copy {
                start,
                end,
                moved_until: pos,
                source,
            })
        })?;
        report.worker_cpu += stats.worker_cpu;
        drop(ops);
        report.phases.copy += t.elapsed();

        let t = Instant::now();
        // With reservoirs, first move the old pages out into a chunk for the source node's
        // reservoir; the range stays mapped but empty, and accesses to it wait (MISSING).
        let mut recycled = None;
        if let (Some(_), Some(node)) = (plan.reservoirs, from_node) {
            let mut old =
                Mapping::anonymous_aligned(b_end - pos, unit).map_err(|e| undo(failed(e)))?;
            // SAFETY: [pos, b_end) is the caller's anonymous private memory, copied into `new`
            // above; it gets `new`'s pages right below, and accesses wait until then.
            match unsafe { old.take_pages_from(0, pos, b_end - pos) } {
                Ok(()) => recycled = Some((node, old)),
                // The range spans several mappings (earlier batches of other sizes): a chunk
                // made of pieces could not be remapped in one call later, so this batch's old
                // pages are freed by the remap instead.
                Err(e) if e.errno == sys::Errno::FAULT => {}
                Err(e) => return Err(undo(failed(e))),
            }
        }
        // SAFETY: the caller owns [pos, b_end) (checked anonymous private above) and accepts
        // identical bytes in place; writers are blocked until the wake below.
        if let Err((_, e)) = unsafe { new.replace(pos) } {
            // Put the old pages back where they were before waking anyone.
            if let Some((_, old)) = recycled {
                // SAFETY: [pos, b_end) is the caller's range, emptied just above by moving these
                // very pages out.
                let _ = unsafe { old.replace(pos) };
            }
            return Err(undo(failed(e)));
        }
        report.phases.remap += t.elapsed();

        // Read the fault messages before waking: a woken fault takes its message with it.
        let t = Instant::now();
        report.writes_waited += uffd.drain().map_err(failed)? as u64;
        uffd.wake(pos, b_end - pos).map_err(failed)?;
        report.phases.wake += t.elapsed();
        if let (Some(r), Some((node, old))) = (plan.reservoirs, recycled) {
            let pages = (old.len() / page) as u64;
            if r.give(node, huge, old) {
                report.pages_recycled += pages;
            }
        }

        let pages: Vec<usize> = runs
            .iter()
            .flat_map(|r| (r.start..r.end).step_by(page))
            .map(|o| pos + o)
            .collect();
        let placed = sys::query_page_nodes(0, &pages).map_err(failed)?;
        report.pages_on_target +=
            placed.iter().filter(|p| **p == PageNode::Node(to)).count() as u64;
        report.pages_copied += (present / page) as u64;
        report.pages_untouched += ((b_end - pos - present) / page) as u64;
        report.batches += 1;
        pos = b_end;
    }
    report.wall = started.elapsed();
    report.caller_cpu = sys::thread_cpu_time().saturating_sub(caller_cpu_start);
    Ok(report)
}

/// Moves the bytes `range` (page-aligned offsets) of `mapping` to node `to` with the remap path,
/// keeping their addresses: the owned, node-placed buffer of this library (see [`Mapping::bind`]).
pub fn migrate_mapping(
    topology: &Topology,
    mapping: &mut Mapping,
    range: Range<usize>,
    to: NodeId,
    plan: &RemapPlan<'_>,
) -> Result<RemapReport, RemapError> {
    let start = mapping.as_ptr() as usize + range.start;
    let len = range
        .end
        .min(mapping.len().next_multiple_of(sys::base_page_size()))
        .saturating_sub(range.start);
    // SAFETY: `mapping` is anonymous private memory that this exclusive borrow keeps every
    // other reference away from for the whole call; the range lies inside it.
    unsafe { migrate_range(topology, start, len, to, plan) }
}

/// How [`migrate_own`] moved the memory.
#[derive(Debug)]
pub enum OwnMigration {
    /// By the remap path.
    Remap(RemapReport),
    /// By the kernel path, because the remap path is not available here.
    Kernel {
        /// What the kernel path did.
        report: crate::account::Report,
        /// Why the remap path was not used.
        why: String,
    },
}

/// Moves `[start, start + len)` of the calling process to node `to` with the remap path, or with
/// the kernel path (`move_pages`) where userfaultfd write-protect is not available (an old
/// kernel, or a seccomp profile that forbids userfaultfd); the result says which and why.
///
/// # Safety
/// As [`migrate_range`].
pub unsafe fn migrate_own(
    topology: &Topology,
    start: usize,
    len: usize,
    to: NodeId,
    plan: &RemapPlan<'_>,
    kernel_plan: &super::kernel::KernelPlan,
) -> Result<OwnMigration, RemapError> {
    // SAFETY: forwarded from the caller.
    match unsafe { migrate_range(topology, start, len, to, plan) } {
        Ok(report) => Ok(OwnMigration::Remap(report)),
        Err(e @ RemapError::Unsupported { .. }) => {
            let range = start..start + len;
            let request = super::kernel::ProcessRequest {
                process: Process::Current,
                to,
                from: None,
                selection: super::kernel::Selection::Ranges(vec![range]),
                dry_run: false,
            };
            let report = super::kernel::migrate_process(topology, &request, kernel_plan, &|_| {})?;
            Ok(OwnMigration::Kernel {
                report,
                why: e.to_string(),
            })
        }
        Err(e) => Err(e),
    }
}
