//! Which pages of a range of this process hold data, as runs: what a migration has to move.
//!
//! One `PAGEMAP_SCAN` ioctl answers with runs of pages (Linux 6.7+); older kernels get the
//! pagemap entries read page by page. Nothing here reads a file whose size grows with the
//! process's mappings, except the fallback's huge-page check.

use std::ops::Range;

use serde::Serialize;

use crate::account::ScanMethod;
use crate::process::Process;
use crate::procfs;
use crate::sys::{self, Errno, PageCategories, PageRegion, Pagemap, SysError, pagemap_entry};

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

/// The pages of a range, as runs that cover it from start to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scan {
    /// The range scanned.
    pub range: Range<usize>,
    /// Runs in address order, covering `range` without gaps.
    pub runs: Vec<Run>,
    /// How the kernel was asked.
    pub method: ScanMethod,
}

impl Scan {
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
    pub fn merge_present(&mut self, later: &Scan) {
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
                match present {
                    Some(huge) => push(&mut runs, pos..end, PageState::Present, huge),
                    None => push(&mut runs, pos..end, a.state, a.huge),
                }
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
pub fn scan_own(pagemap: &Pagemap, range: Range<usize>) -> Result<Scan, SysError> {
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
) -> Result<Scan, SysError> {
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
fn from_regions(range: Range<usize>, regions: &[PageRegion]) -> Scan {
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
        push(
            &mut runs,
            r.range.clone(),
            state,
            c.contains(PageCategories::HUGE),
        );
        pos = r.range.end;
    }
    push(&mut runs, pos..range.end, PageState::Untouched, false);
    Scan {
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
fn read_entries(pagemap: &Pagemap, range: Range<usize>) -> Result<Scan, SysError> {
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
    Ok(Scan {
        range,
        runs,
        method: ScanMethod::PagemapRead,
    })
}

#[cfg(test)]
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
            assert_eq!(
                s.bytes(PageState::Present),
                5 * page + zero_as_present(&s, page)
            );
            assert_eq!(
                s.data_runs()[..2],
                [start..start + 4 * page, start + 8 * page..start + 9 * page]
            );
            assert!(!s.has_huge());
        }
    }

    /// The fallback cannot tell the zero page from a page of data.
    fn zero_as_present(s: &Scan, page: usize) -> usize {
        match s.method {
            ScanMethod::PagemapScan => {
                assert_eq!(s.bytes(PageState::Zero), page);
                0
            }
            ScanMethod::PagemapRead => page,
        }
    }

    #[test]
    fn a_later_scan_adds_pages_that_gained_data() {
        let p = PageCategories::PRESENT;
        let r = |a: usize, b: usize, c: PageCategories| PageRegion {
            range: a..b,
            categories: c,
        };
        let mut first = from_regions(
            0x0..0x10000,
            &[
                r(0x1000, 0x2000, p),
                r(0x4000, 0x5000, PageCategories::SWAPPED),
            ],
        );
        // Later: page 3 was written before the protection; the rest are markers ("swapped").
        let later = from_regions(
            0x0..0x10000,
            &[
                r(0x0, 0x1000, PageCategories::SWAPPED),
                r(0x1000, 0x2000, p),
                r(0x2000, 0x3000, PageCategories::SWAPPED),
                r(0x3000, 0x4000, p),
                r(0x4000, 0x10000, PageCategories::SWAPPED),
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
        let r = |a: usize, b: usize, c: PageCategories| PageRegion {
            range: a..b,
            categories: c,
        };
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
}
