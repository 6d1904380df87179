//! The scan step: which pages a [`Request`] moves, and where they are: for a process, the
//! present pages of the selected mappings and their nodes ([`Pages`]); for the caller's own
//! memory, which pages of each range hold data ([`Runs`]), from one `PAGEMAP_SCAN` ioctl (Linux
//! 6.7+) or else the pagemap entries page by page.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Serialize;

use super::request::{Memory, Request, Selection};
use super::{MigrateError, check_node, check_target};
use crate::account::{FailureCause, Laps, Phases, Report, ScanMethod, SkipReason};
use crate::process::Process;
use crate::procfs::{self, ProcfsError, VmArea};
use crate::sys::{
    self, Errno, PageCategories, PageNode, PageRegion, Pagemap, SysError, pagemap_entry,
};
use crate::topology::{NodeSet, Topology};

/// What the pages of a run are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PageState {
    /// In memory, with data of their own.
    Present,
    /// Swapped out: their data is on swap, and reading them brings it back.
    Swapped,
    /// Read but never written: they map the shared zero page and hold no memory.
    Zero,
    /// Never touched (or dropped): no memory and nothing to keep.
    Untouched,
}

impl PageState {
    /// Whether the pages hold data that a migration must carry.
    pub fn has_data(self) -> bool {
        matches!(self, PageState::Present | PageState::Swapped)
    }
}

/// Consecutive pages in the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// Their addresses.
    pub range: Range<usize>,
    /// What they are.
    pub state: PageState,
    /// Mapped by huge pages (transparent or hugetlb), one page-table entry per 2 MB.
    pub huge: bool,
}

/// The pages of a range of the caller's own memory, as runs that cover it from start to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Runs {
    /// The range scanned.
    pub range: Range<usize>,
    /// Runs in address order, covering `range` without gaps.
    pub runs: Vec<Run>,
    /// How the kernel was asked.
    pub method: ScanMethod,
}

impl Runs {
    /// The runs whose pages hold data ([`PageState::has_data`]), merged where they touch.
    pub fn data_runs(&self) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for r in self.runs.iter().filter(|r| r.state.has_data()) {
            match out.last_mut() {
                Some(last) if last.end == r.range.start => last.end = r.range.end,
                _ => out.push(r.range.clone()),
            }
        }
        out
    }

    /// Bytes of pages in `state`.
    pub fn bytes(&self, state: PageState) -> usize {
        self.runs
            .iter()
            .filter(|r| r.state == state)
            .map(|r| r.range.len())
            .sum()
    }

    /// Adds what a later look found: pages `later` (a scan of the same range, made after the
    /// range was write-protected) sees present with data of their own are present here too,
    /// whatever this scan said. Only its present runs count: after write protection, the
    /// kernel reports the markers it puts on never-touched pages as swapped.
    pub fn merge_present(&mut self, later: &Runs) {
        let mut runs = Vec::with_capacity(self.runs.len());
        let mut b = later.runs.iter().peekable();
        for a in &self.runs {
            let mut pos = a.range.start;
            while pos < a.range.end {
                while b.next_if(|r| r.range.end <= pos).is_some() {}
                let (end, present) = match b.peek() {
                    Some(r) if r.range.start <= pos => (
                        r.range.end.min(a.range.end),
                        (r.state == PageState::Present).then_some(r.huge),
                    ),
                    Some(r) => (r.range.start.min(a.range.end), None),
                    None => (a.range.end, None),
                };
                let (state, huge) = present.map_or((a.state, a.huge), |h| (PageState::Present, h));
                push(&mut runs, pos..end, state, huge);
                pos = end;
            }
        }
        self.runs = runs;
    }

    /// Whether any page is mapped by a huge page.
    pub fn has_huge(&self) -> bool {
        self.runs.iter().any(|r| r.huge)
    }
}

/// Scans `range` (page-aligned) of the calling process with `PAGEMAP_SCAN`, or by reading the
/// pagemap where the kernel does not have the ioctl.
pub fn scan_own(pagemap: &Pagemap, range: Range<usize>) -> Result<Runs, SysError> {
    scan_own_for(
        pagemap,
        range,
        PageCategories::PRESENT | PageCategories::SWAPPED,
    )
}

/// As [`scan_own`], for the pages that have any of the categories `any` (present, swapped).
pub fn scan_own_for(
    pagemap: &Pagemap,
    range: Range<usize>,
    any: PageCategories,
) -> Result<Runs, SysError> {
    let mut regions = Vec::new();
    let returned = any | PageCategories::PFNZERO | PageCategories::HUGE;
    match pagemap.scan(range.clone(), any, returned, &mut regions) {
        Ok(()) => Ok(from_regions(range, &regions)),
        Err(e) if e.errno == Errno::NOTTY || e.errno == Errno::INVAL => {
            read_entries(pagemap, range)
        }
        Err(e) => Err(e),
    }
}

/// Runs from `PAGEMAP_SCAN`'s regions: the gaps between them are untouched pages.
fn from_regions(range: Range<usize>, regions: &[PageRegion]) -> Runs {
    let mut runs = Vec::with_capacity(2 * regions.len() + 1);
    let mut pos = range.start;
    for r in regions {
        push(&mut runs, pos..r.range.start, PageState::Untouched, false);
        let c = r.categories;
        let state = if c.contains(PageCategories::PFNZERO) {
            PageState::Zero
        } else if c.contains(PageCategories::PRESENT) {
            PageState::Present
        } else {
            PageState::Swapped
        };
        let huge = c.contains(PageCategories::HUGE);
        push(&mut runs, r.range.clone(), state, huge);
        pos = r.range.end;
    }
    push(&mut runs, pos..range.end, PageState::Untouched, false);
    Runs {
        range,
        runs,
        method: ScanMethod::PagemapScan,
    }
}

/// Appends a run, merging it into the previous one where it continues it.
fn push(runs: &mut Vec<Run>, range: Range<usize>, state: PageState, huge: bool) {
    if range.is_empty() {
        return;
    }
    match runs.last_mut() {
        Some(last) if last.range.end == range.start && last.state == state && last.huge == huge => {
            last.range.end = range.end;
        }
        _ => runs.push(Run { range, state, huge }),
    }
}

/// The fallback: every page's pagemap entry, 8 bytes each.
fn read_entries(pagemap: &Pagemap, range: Range<usize>) -> Result<Runs, SysError> {
    const CHUNK: usize = 4096;
    let page = sys::base_page_size();
    // The pagemap has no huge-page bit: smaps says whether the range's mappings have any.
    let huge = procfs::anon_huge_bytes(Process::Current, range.clone()).unwrap_or(0) > 0;
    let mut entries = vec![0u64; CHUNK];
    let mut runs = Vec::new();
    let mut addr = range.start;
    while addr < range.end {
        let n = ((range.end - addr) / page).min(CHUNK);
        pagemap.read_entries(addr, &mut entries[..n])?;
        for (i, e) in entries[..n].iter().enumerate() {
            let state = if e & pagemap_entry::PRESENT != 0 {
                PageState::Present
            } else if e & pagemap_entry::SWAPPED != 0 {
                PageState::Swapped
            } else {
                PageState::Untouched
            };
            let at = addr + i * page;
            push(&mut runs, at..at + page, state, huge && state.has_data());
        }
        addr += n * page;
    }
    Ok(Runs {
        range,
        runs,
        method: ScanMethod::PagemapRead,
    })
}

/// What the scan step found: the pages a [`Request`] would move, and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// Whose pages.
    pub process: Process,
    /// The pages.
    pub found: Found,
    /// Time spent, in the `check`, `scan` and `query` phases (and `plan`, once planned).
    pub phases: Phases,
    /// CPU time of the calling thread spent on them.
    pub caller_cpu: Duration,
}

/// The pages a scan found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// Present pages of a process and where they are (what the kernel path moves).
    Pages(Pages),
    /// Runs of each range of the caller's own memory (what the remap path moves).
    Runs(Vec<Runs>),
}

/// The selected, present pages of a process, sorted by what happens to them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pages {
    /// Pages not on the target yet (and on the `from` nodes, when given): these move.
    pub to_move: Vec<usize>,
    /// Present pages selected: `to_move`, `already_on_target`, `skipped` and `failed` add up
    /// to it.
    pub requested: u64,
    /// Pages on the target already.
    pub already_on_target: u64,
    /// Pages left where they are on purpose.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Pages the placement query could not place.
    pub failed: BTreeMap<FailureCause, u64>,
}

impl Scan {
    /// `report` with the time and CPU time of this scan (and its planning) added: what came
    /// before the execution that made it.
    pub fn add_to(&self, mut report: Report) -> Report {
        report.phases.add(&self.phases);
        report.wall += self.phases.total();
        report.caller_cpu += self.caller_cpu;
        report
    }

    /// Bytes of the pages that would move.
    pub fn bytes_to_move(&self) -> u64 {
        match &self.found {
            Found::Pages(p) => p.to_move.len() as u64 * sys::base_page_size() as u64,
            Found::Runs(runs) => runs
                .iter()
                .map(|r| (r.bytes(PageState::Present) + r.bytes(PageState::Swapped)) as u64)
                .sum(),
        }
    }
}

/// The scan step of `request`: the process's pages and where they are, or the runs of the
/// caller's own ranges. Checks the target and the `from` nodes first.
pub fn scan(topology: &Topology, request: &Request<'_>) -> Result<Scan, MigrateError> {
    let mut laps = Laps::start();
    let mut phases = Phases::default();
    check_target(topology, request.to)?;
    let process = request.process_moved();
    let found = match request.memory() {
        Memory::Process {
            selection, from, ..
        } => {
            for node in from.iter().flat_map(NodeSet::iter) {
                check_node(topology, node)?;
            }
            laps.lap(&mut phases.check);
            check_process(process)?;
            let ranges = select(process, procfs::read_maps(process)?, selection)?;
            let present = present_pages(process, ranges)?;
            laps.lap(&mut phases.scan);
            let before = query(process, &present)?;
            laps.lap(&mut phases.query);
            let mut pages = Pages::default();
            let selected = |place: &PageNode| match *place {
                PageNode::Node(n) => from.as_ref().is_none_or(|f| f.contains(n)),
                PageNode::Error(_) => from.is_none(),
            };
            for (&page, place) in present.iter().zip(&before).filter(|(_, p)| selected(p)) {
                pages.requested += 1;
                match *place {
                    PageNode::Node(n) if n == request.to => pages.already_on_target += 1,
                    PageNode::Node(_) => pages.to_move.push(page),
                    // Present in the page tables but no page the kernel can move: the shared zero
                    // page of memory read but never written (`EFAULT`), or freed since the scan
                    // (`ENOENT`).
                    PageNode::Error(Errno::FAULT | Errno::NOENT) => {
                        *pages.skipped.entry(SkipReason::NothingToMove).or_default() += 1;
                    }
                    PageNode::Error(e) => {
                        *pages.failed.entry(FailureCause::from_errno(e)).or_default() += 1;
                    }
                }
            }
            laps.lap(&mut phases.scan);
            Found::Pages(pages)
        }
        Memory::Own(own) => {
            let sys_error = |source| MigrateError::Sys { process, source };
            let pagemap = Pagemap::open_own().map_err(sys_error)?;
            laps.lap(&mut phases.check);
            let runs = own.iter().map(|r| scan_own(&pagemap, r.clone()));
            let runs = runs.collect::<Result<_, _>>().map_err(sys_error)?;
            laps.lap(&mut phases.scan);
            Found::Runs(runs)
        }
    };
    Ok(Scan {
        process,
        found,
        phases,
        caller_cpu: laps.cpu(),
    })
}

/// The present pages of `ranges` of `process`, in order (a mapping gone meanwhile has none).
pub(crate) fn present_pages(
    process: Process,
    ranges: impl IntoIterator<Item = Range<usize>>,
) -> Result<Vec<usize>, MigrateError> {
    let mut present = Vec::new();
    for r in ranges {
        match procfs::present_pages(process, r, &mut present) {
            Err(ProcfsError::Read { .. }) => {}
            other => other?,
        }
    }
    Ok(present)
}

/// Pages per placement query.
const QUERY_CHUNK: usize = 1 << 16;

/// Whether a failed call means the process is gone: `ESRCH`, or `EINVAL` from a process that is
/// exiting (its memory is freed before /proc shows it as a zombie).
pub(crate) fn is_gone(process: Process, e: &SysError) -> bool {
    e.errno == Errno::SRCH || (e.errno == Errno::INVAL && procfs::has_exited(process))
}

pub(crate) fn sys_error(process: Process, e: SysError) -> MigrateError {
    match e.errno {
        _ if is_gone(process, &e) => MigrateError::NoSuchProcess { process },
        Errno::PERM | Errno::ACCESS => MigrateError::PermissionDenied { process },
        _ => MigrateError::Sys { process, source: e },
    }
}

/// Where each page is (`move_pages` without nodes), in chunks.
pub fn query(process: Process, pages: &[usize]) -> Result<Vec<PageNode>, MigrateError> {
    let mut out = Vec::with_capacity(pages.len());
    for chunk in pages.chunks(QUERY_CHUNK) {
        out.extend(sys::query_page_nodes(process.raw(), chunk).map_err(|e| sys_error(process, e))?);
    }
    Ok(out)
}

/// Checks that the process exists, has user memory (not a zombie or a kernel thread) and that
/// the caller may move its pages (by an empty `move_pages` call).
pub fn check_process(process: Process) -> Result<(), MigrateError> {
    procfs::check_user_memory(process)?;
    sys::move_pages(process.raw(), &[], None, &mut [], false)
        .map(drop)
        .map_err(|e| sys_error(process, e))
}

/// The parts of the selected mappings to scan.
fn select(
    process: Process,
    areas: Vec<VmArea>,
    selection: &Selection,
) -> Result<Vec<Range<usize>>, MigrateError> {
    let (special, areas): (Vec<VmArea>, Vec<VmArea>) =
        areas.into_iter().partition(VmArea::is_special);
    match selection {
        Selection::All => Ok(areas.iter().map(|a| a.start..a.end).collect()),
        Selection::Mappings(pattern) => {
            let picked: Vec<_> = areas
                .iter()
                .filter(|a| a.matches(pattern))
                .map(|a| a.start..a.end)
                .collect();
            if !picked.is_empty() {
                return Ok(picked);
            }
            let pattern = pattern.clone();
            match special.iter().find(|a| a.matches(&pattern)) {
                Some(area) => Err(MigrateError::KernelMapping {
                    process,
                    pattern,
                    mapping: area.path.clone(),
                }),
                None => Err(MigrateError::NoMatchingMapping { process, pattern }),
            }
        }
        Selection::Ranges(ranges) => {
            let page = sys::base_page_size();
            let mut out = Vec::new();
            for r in ranges {
                let bad = |reason| MigrateError::BadRange {
                    start: r.start,
                    end: r.end,
                    reason,
                };
                if r.start >= r.end {
                    return Err(bad("the end is not after the start"));
                }
                // An end in the last page of the address space cannot be rounded up: clamp it
                // (no process maps that page).
                let end = r
                    .end
                    .checked_next_multiple_of(page)
                    .unwrap_or(usize::MAX / page * page);
                let start = r.start / page * page;
                let before = out.len();
                let overlaps = |a: &&VmArea| a.start < end && start < a.end;
                out.extend(
                    areas
                        .iter()
                        .filter(overlaps)
                        .map(|a| a.start.max(start)..a.end.min(end)),
                );
                if out.len() == before {
                    let kernel: Vec<&str> = special
                        .iter()
                        .filter(overlaps)
                        .map(|a| a.path.as_str())
                        .collect();
                    if !kernel.is_empty() {
                        return Err(MigrateError::KernelRange {
                            process,
                            start: r.start,
                            end: r.end,
                            mappings: kernel.join(", "),
                        });
                    }
                    return Err(bad("nothing is mapped there in this process"));
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::single_range_in_vec_init,
    reason = "a selection is a list of ranges"
)]
mod tests {
    use super::*;
    use crate::sys::{HUGE_PAGE_SIZE, Mapping};

    #[test]
    fn runs_cover_the_range_and_name_each_state() {
        let page = sys::base_page_size();
        let mut m = Mapping::anonymous_aligned(16 * page, HUGE_PAGE_SIZE).unwrap();
        m.advise_no_huge_pages().unwrap();
        m.as_mut_slice()[..4 * page].fill(1);
        m.as_mut_slice()[8 * page..9 * page].fill(2);
        assert_eq!(std::hint::black_box(m.as_slice()[12 * page]), 0);
        let start = m.as_ptr() as usize;
        let pm = Pagemap::open_own().unwrap();
        let scans = [
            scan_own(&pm, start..start + 16 * page).unwrap(),
            read_entries(&pm, start..start + 16 * page).unwrap(),
        ];
        for s in scans {
            assert_eq!(s.runs.first().unwrap().range.start, start);
            assert_eq!(s.runs.last().unwrap().range.end, start + 16 * page);
            assert!(
                s.runs
                    .windows(2)
                    .all(|w| w[0].range.end == w[1].range.start)
            );
            // The fallback cannot tell the zero page from a page of data.
            let zero_as_present = match s.method {
                ScanMethod::PagemapScan => {
                    assert_eq!(s.bytes(PageState::Zero), page);
                    0
                }
                ScanMethod::PagemapRead => page,
            };
            assert_eq!(s.bytes(PageState::Present), 5 * page + zero_as_present);
            assert_eq!(
                s.data_runs()[..2],
                [start..start + 4 * page, start + 8 * page..start + 9 * page]
            );
            assert!(!s.has_huge());
        }
    }

    fn r(a: usize, b: usize, categories: PageCategories) -> PageRegion {
        PageRegion {
            range: a..b,
            categories,
        }
    }

    #[test]
    fn a_later_scan_adds_pages_that_gained_data() {
        let (p, swapped) = (PageCategories::PRESENT, PageCategories::SWAPPED);
        let mut first = from_regions(
            0..0x10000,
            &[r(0x1000, 0x2000, p), r(0x4000, 0x5000, swapped)],
        );
        // Later: page 3 was written before the protection; the rest are markers ("swapped").
        let later = from_regions(
            0..0x10000,
            &[
                r(0x0, 0x1000, swapped),
                r(0x1000, 0x2000, p),
                r(0x2000, 0x3000, swapped),
                r(0x3000, 0x4000, p),
                r(0x4000, 0x10000, swapped),
            ],
        );
        first.merge_present(&later);
        assert_eq!(first.data_runs(), [0x1000..0x2000, 0x3000..0x5000]);
        assert_eq!(first.bytes(PageState::Swapped), 0x1000);
        assert_eq!(first.bytes(PageState::Untouched), 0x10000 - 0x3000);
        assert_eq!(first.runs.last().unwrap().range.end, 0x10000);
    }

    #[test]
    fn regions_become_runs_with_untouched_gaps() {
        let p = PageCategories::PRESENT;
        let regions = [
            r(0x2000, 0x4000, p),
            r(0x4000, 0x5000, p | PageCategories::PFNZERO),
            r(0x5000, 0x6000, PageCategories::SWAPPED),
            r(0x200000, 0x600000, p | PageCategories::HUGE),
        ];
        let s = from_regions(0x1000..0x800000, &regions);
        let states: Vec<(usize, PageState, bool)> = s
            .runs
            .iter()
            .map(|r| (r.range.start, r.state, r.huge))
            .collect();
        assert_eq!(
            states,
            [
                (0x1000, PageState::Untouched, false),
                (0x2000, PageState::Present, false),
                (0x4000, PageState::Zero, false),
                (0x5000, PageState::Swapped, false),
                (0x6000, PageState::Untouched, false),
                (0x200000, PageState::Present, true),
                (0x600000, PageState::Untouched, false),
            ]
        );
        assert_eq!(
            s.data_runs(),
            [0x2000..0x4000, 0x5000..0x6000, 0x200000..0x600000]
        );
        assert!(s.has_huge());
    }

    #[test]
    fn selections_are_checked() {
        let m = Mapping::anonymous(4 * 4096).unwrap();
        let start = m.as_ptr() as usize;
        let areas = procfs::read_maps(Process::Current).unwrap();
        let pick = |selection| select(Process::Current, areas.clone(), &selection);
        let ranges = |r: Range<usize>| pick(Selection::Ranges(vec![r]));
        let picked = ranges(start + 10..start + 4096 + 1).unwrap();
        assert_eq!(picked, [start..start + 2 * 4096]);
        for (range, why) in [
            (start..start, "the end is not after the start"),
            (4096..8192, "nothing is mapped there in this process"),
        ] {
            let e = ranges(range);
            assert!(matches!(e, Err(MigrateError::BadRange { reason, .. }) if reason == why));
        }
        assert!(matches!(
            pick(Selection::Mappings("no-such-file".into())),
            Err(MigrateError::NoMatchingMapping { .. })
        ));
        // A range over the kernel's own mappings alone says so, not that nothing is mapped.
        let kernel: Vec<&VmArea> = areas
            .iter()
            .filter(|a| a.is_special() && a.path != "[vsyscall]")
            .collect();
        let (first, last) = (kernel[0], kernel[kernel.len() - 1]);
        let e = ranges(first.start..last.end).unwrap_err();
        assert!(
            matches!(e, MigrateError::KernelRange { ref mappings, .. } if mappings.contains("[vdso]")),
            "{e}"
        );
        let e = pick(Selection::Mappings("[vdso]".into())).unwrap_err();
        assert!(
            e.to_string()
                .contains("selects only the kernel's own mapping [vdso] of the calling process"),
            "{e}"
        );
        // An end in the last page of the address space is clamped, not wrapped.
        let to_the_top = ranges(0..usize::MAX).unwrap();
        assert!(
            to_the_top.iter().any(|r| r.contains(&start)),
            "{to_the_top:x?}"
        );
        let all = pick(Selection::All).unwrap();
        assert!(all.iter().any(|r| r.contains(&start)));
    }
}
