//! This process's own pages and mappings, one range at a time: `PAGEMAP_SCAN` (runs of pages,
//! Linux 6.7+) and the entries of `/proc/self/pagemap`, `PROCMAP_QUERY` on `/proc/self/maps` (one
//! mapping, Linux 6.11+). The files stay open in a [`Pagemap`]: one system call per question,
//! whatever the number of mappings.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use linux_raw_sys::general::{
    PAGE_IS_HUGE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, page_region, pm_scan_arg,
    procmap_query, procmap_query_flags,
};

use super::{Errno, SysError};

/// An I/O error of `call` as a [`SysError`].
fn io_error(call: &'static str, e: &std::io::Error) -> SysError {
    SysError::new(call, Errno::from_io_error(e).unwrap_or(Errno::IO))
}

/// `_IOWR(ty, nr, size)` of the kernel's `ioctl.h` (x86_64 and arm64 layout).
const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    (3 << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `PAGEMAP_SCAN`, `_IOWR('f', 16, struct pm_scan_arg)` in `linux/fs.h`.
const PAGEMAP_SCAN: u32 = iowr(b'f', 16, size_of::<pm_scan_arg>());
/// `PROCMAP_QUERY`, `_IOWR('f', 17, struct procmap_query)` in `linux/fs.h`.
const PROCMAP_QUERY: u32 = iowr(b'f', 17, size_of::<procmap_query>());

/// Categories of pages that [`Pagemap::scan`] reports (the kernel's `PAGE_IS_*` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageCategories(pub u64);

impl PageCategories {
    /// The page is in memory.
    pub const PRESENT: Self = Self(PAGE_IS_PRESENT as u64);
    /// The page is swapped out.
    pub const SWAPPED: Self = Self(PAGE_IS_SWAPPED as u64);
    /// The page maps the shared zero page (read, never written).
    pub const PFNZERO: Self = Self(PAGE_IS_PFNZERO as u64);
    /// The page is part of a huge page mapped by one page-table entry (a THP or hugetlb page).
    pub const HUGE: Self = Self(PAGE_IS_HUGE as u64);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for PageCategories {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A run of pages with the same categories, as `PAGEMAP_SCAN` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRegion {
    /// Addresses of the run.
    pub range: Range<usize>,
    /// What its pages are (only the bits asked for).
    pub categories: PageCategories,
}

/// One mapping of this process, as `PROCMAP_QUERY` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// Its addresses.
    pub range: Range<usize>,
    /// Writable.
    pub writable: bool,
    /// Shared (`MAP_SHARED`).
    pub shared: bool,
    /// Backed by a file (inode not zero; shared anonymous memory is a file of shmem too).
    pub file_backed: bool,
}

/// Bits of a pagemap entry (`Documentation/admin-guide/mm/pagemap.rst`).
pub mod entry {
    /// The page is in memory.
    pub const PRESENT: u64 = 1 << 63;
    /// The page is swapped out.
    pub const SWAPPED: u64 = 1 << 62;
}

/// `/proc/self/pagemap` and `/proc/self/maps`, open for this process's lifetime.
#[derive(Debug)]
pub struct Pagemap {
    pagemap: File,
    maps: File,
}

impl Pagemap {
    /// Opens the two files of the calling process.
    pub fn open_own() -> Result<Self, SysError> {
        let open =
            |path| File::open(path).map_err(|e| io_error("open(/proc/self/pagemap or maps)", &e));
        Ok(Pagemap {
            pagemap: open("/proc/self/pagemap")?,
            maps: open("/proc/self/maps")?,
        })
    }

    /// Appends to `out` the runs of `range` (page-aligned) whose pages have any of the categories
    /// `any_of`, each with its categories among `returned`: one `PAGEMAP_SCAN` ioctl per 256
    /// runs. Fails with `ENOTTY` (or `EINVAL`) on kernels before 6.7.
    pub fn scan(
        &self,
        range: Range<usize>,
        any_of: PageCategories,
        returned: PageCategories,
        out: &mut Vec<PageRegion>,
    ) -> Result<(), SysError> {
        const CALL: &str = "ioctl(PAGEMAP_SCAN)";
        let mut regions = [page_region {
            start: 0,
            end: 0,
            categories: 0,
        }; 256];
        let mut arg = pm_scan_arg {
            size: size_of::<pm_scan_arg>() as u64,
            flags: 0,
            start: range.start as u64,
            end: range.end as u64,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: 0,
            category_anyof_mask: any_of.0,
            return_mask: returned.0,
        };
        let mut start = range.start;
        while start < range.end {
            arg.start = start as u64;
            // SAFETY: `arg` is the request's struct; its `vec` points at `regions`, which holds
            // `vec_len` page_region structs for the kernel to fill.
            let n = unsafe { super::ioctl(&self.pagemap, CALL, PAGEMAP_SCAN, &mut arg) }?;
            out.extend(regions[..n].iter().map(|r| PageRegion {
                range: r.start as usize..r.end as usize,
                categories: PageCategories(r.categories),
            }));
            let walk_end = arg.walk_end as usize;
            if walk_end <= start {
                // The kernel made no progress: never loop forever on a kernel that disagrees.
                return Err(SysError::new(CALL, Errno::INVAL));
            }
            start = walk_end;
        }
        Ok(())
    }

    /// Reads the pagemap entries of the pages from `start` (page-aligned) into `out`, one `u64`
    /// per page (see [`entry`]); works on every kernel.
    pub fn read_entries(&self, start: usize, out: &mut [u64]) -> Result<(), SysError> {
        let page = super::base_page_size();
        // SAFETY: u64 has no invalid bit patterns and the byte view covers exactly `out`.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), size_of_val(out))
        };
        self.pagemap
            .read_exact_at(bytes, (start / page * 8) as u64)
            .map_err(|e| io_error("pread(/proc/self/pagemap)", &e))
    }

    /// The mapping that contains `addr`, or the first one above it (`PROCMAP_QUERY`); `None`
    /// where there is none. Fails with `ENOTTY` on kernels before 6.11.
    pub fn vma_at_or_after(&self, addr: usize) -> Result<Option<Vma>, SysError> {
        // SAFETY: procmap_query is plain integers; all zero is a valid value.
        let mut q: procmap_query = unsafe { std::mem::zeroed() };
        q.size = size_of::<procmap_query>() as u64;
        q.query_flags = procmap_query_flags::PROCMAP_QUERY_COVERING_OR_NEXT_VMA as u64;
        q.query_addr = addr as u64;
        // SAFETY: `q` is the request's struct; its name and build-id sizes are zero, so the kernel
        // writes into nothing but `q`.
        match unsafe { super::ioctl(&self.maps, "ioctl(PROCMAP_QUERY)", PROCMAP_QUERY, &mut q) } {
            Err(e) if e.errno == Errno::NOENT => return Ok(None),
            done => done?,
        };
        Ok(Some(Vma {
            range: q.vma_start as usize..q.vma_end as usize,
            writable: q.vma_flags & procmap_query_flags::PROCMAP_QUERY_VMA_WRITABLE as u64 != 0,
            shared: q.vma_flags & procmap_query_flags::PROCMAP_QUERY_VMA_SHARED as u64 != 0,
            file_backed: q.inode != 0 || q.dev_major != 0 || q.dev_minor != 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{HUGE_PAGE_SIZE, Mapping, base_page_size};

    #[test]
    fn layouts_match_the_kernel_uapi() {
        // linux/fs.h: PAGEMAP_SCAN is 0xc0606610 and PROCMAP_QUERY 0xc0686611 on x86_64.
        assert_eq!(size_of::<page_region>(), 24);
        assert_eq!(size_of::<pm_scan_arg>(), 96);
        assert_eq!(size_of::<procmap_query>(), 104);
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        assert_eq!(PROCMAP_QUERY, 0xc068_6611);
    }

    /// A mapping of 8 base pages: 0-1 written, 2 read only (zero page), 3-7 never touched.
    fn sample() -> Mapping {
        let page = base_page_size();
        let mut m = Mapping::anonymous_aligned(8 * page, HUGE_PAGE_SIZE).unwrap();
        m.advise_no_huge_pages().unwrap();
        m.as_mut_slice()[..2 * page].fill(1);
        assert_eq!(std::hint::black_box(m.as_slice()[2 * page]), 0);
        m
    }

    #[test]
    fn scan_and_entries_agree_on_present_pages() {
        let page = base_page_size();
        let pm = Pagemap::open_own().unwrap();
        let m = sample();
        let start = m.as_ptr() as usize;
        let mut entries = vec![0u64; 8];
        pm.read_entries(start, &mut entries).unwrap();
        let present: Vec<bool> = entries.iter().map(|e| e & entry::PRESENT != 0).collect();
        assert_eq!(
            present,
            [true, true, true, false, false, false, false, false]
        );
        let mut out = Vec::new();
        let any = PageCategories::PRESENT | PageCategories::SWAPPED;
        match pm.scan(
            start..start + 8 * page,
            any,
            any | PageCategories::PFNZERO,
            &mut out,
        ) {
            Err(e) if e.errno == Errno::NOTTY || e.errno == Errno::INVAL => {
                eprintln!("skipped the PAGEMAP_SCAN half: this kernel has no PAGEMAP_SCAN ({e})");
            }
            r => {
                r.unwrap();
                assert_eq!(out.len(), 2, "{out:?}");
                assert_eq!(out[0].range, start..start + 2 * page);
                assert_eq!(out[0].categories, PageCategories::PRESENT);
                assert_eq!(out[1].range, start + 2 * page..start + 3 * page);
                assert_eq!(
                    out[1].categories,
                    PageCategories::PRESENT | PageCategories::PFNZERO
                );
            }
        }
    }

    #[test]
    fn procmap_query_describes_a_mapping() {
        let pm = Pagemap::open_own().unwrap();
        let m = sample();
        let start = m.as_ptr() as usize;
        match pm.vma_at_or_after(start) {
            Err(e) if e.errno == Errno::NOTTY => {
                eprintln!("skipped: this kernel has no PROCMAP_QUERY ({e})");
            }
            r => {
                let vma = r.unwrap().unwrap();
                assert!(vma.range.start <= start && vma.range.end >= start + m.len());
                assert!(vma.writable && !vma.shared && !vma.file_backed, "{vma:?}");
                assert!(pm.vma_at_or_after(usize::MAX & !4095).unwrap().is_none());
            }
        }
    }
}
