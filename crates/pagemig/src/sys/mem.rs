//! Anonymous memory mappings that unmap themselves on drop.

use std::ffi::c_void;
use std::hint::black_box;
use std::ptr::NonNull;

use rustix::mm::{Advice, MapFlags, ProtFlags};

use super::{Errno, SysError};
use crate::topology::NodeSet;

/// Size of a transparent huge page on x86_64 and most arm64 kernels.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// The kernel's base page size.
pub fn base_page_size() -> usize {
    rustix::param::page_size()
}

/// Private anonymous memory owned by this value, unmapped when it is dropped: like a `Vec<u8>`
/// zero-filled lazily, on the node its memory policy ([`Mapping::bind`]) says.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping owns its pages exclusively, like Vec<u8>; shared access is through &self
// (read-only slices) and writes need &mut self, so sending or sharing it is as safe as for Vec.
unsafe impl Send for Mapping {}
// SAFETY: see Send; &Mapping only gives out shared slices.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of private anonymous read-write memory; `len` must not be zero.
    pub fn anonymous(len: usize) -> Result<Self, SysError> {
        Self::anonymous_aligned(len, 1)
    }

    /// Maps `len` bytes whose start is a multiple of `align` (a power of two), so that 2 MB
    /// ranges can be backed by transparent huge pages.
    pub fn anonymous_aligned(len: usize, align: usize) -> Result<Self, SysError> {
        if len == 0 || !align.is_power_of_two() {
            return Err(SysError::new("mmap", Errno::INVAL));
        }
        let page = base_page_size();
        let slack = if align > page { align } else { 0 };
        // The kernel maps whole pages: `total` counts them, so the tail unmapped below is too.
        let total = len
            .checked_next_multiple_of(page)
            .and_then(|whole| whole.checked_add(slack))
            .ok_or(SysError::new("mmap", Errno::NOMEM))?;
        // SAFETY: a new anonymous mapping at an address the kernel picks aliases nothing.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| SysError::new("mmap", e))? as usize;
        let start = base.next_multiple_of(align);
        let end = start + len.next_multiple_of(page);
        for (at, piece) in [(base, start - base), (end, base + total - end)] {
            if piece > 0 {
                // SAFETY: both pieces lie inside the mapping made above and outside
                // [start, start+len).
                unsafe { rustix::mm::munmap(at as *mut c_void, piece) }
                    .map_err(|e| SysError::new("munmap", e))?;
            }
        }
        let ptr = NonNull::new(start as *mut u8).ok_or(SysError::new("mmap", Errno::NOMEM))?;
        Ok(Self { ptr, len })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Start address.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The memory as bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is mapped readable for the life of self; writes need &mut self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The memory as mutable bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: mapped read-write for the life of self, and &mut self makes this borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Asks for transparent huge pages (`MADV_HUGEPAGE`); the kernel may still use small pages.
    pub fn advise_huge_pages(&self) -> Result<(), SysError> {
        self.advise_range(0..self.len, Advice::LinuxHugepage, "madvise(MADV_HUGEPAGE)")
    }

    /// Asks for base pages only (`MADV_NOHUGEPAGE`), so that every page is a 4 KiB page.
    pub fn advise_no_huge_pages(&self) -> Result<(), SysError> {
        self.advise_range(
            0..self.len,
            Advice::LinuxNoHugepage,
            "madvise(MADV_NOHUGEPAGE)",
        )
    }

    /// Binds the mapping's memory to `nodes` (`mbind(MPOL_BIND)`), moving pages that are already
    /// present (`MPOL_MF_MOVE | MPOL_MF_STRICT`).
    pub fn bind(&self, nodes: &NodeSet) -> Result<(), SysError> {
        super::numa::mbind_bind(self.ptr.as_ptr() as usize, self.len, nodes)
    }

    /// Allocates every page now, under the mapping's memory policy, without changing any byte:
    /// `MADV_POPULATE_WRITE` (Linux 5.14+), else each page written with its own value (not read
    /// first: that would map the huge zero page, which a write then splits into small pages).
    pub fn populate(&mut self) {
        if self.populate_range(0..self.len).is_ok() {
            return;
        }
        let page = base_page_size();
        let bytes = self.as_mut_slice();
        for i in (0..bytes.len()).step_by(page) {
            // black_box keeps the store: the compiler cannot prove it writes the same value.
            bytes[i] = black_box(bytes[i]);
        }
    }

    /// `madvise` on `range` (byte offsets) of this mapping.
    fn advise_range(
        &self,
        range: std::ops::Range<usize>,
        advice: Advice,
        call: &'static str,
    ) -> Result<(), SysError> {
        if range.start >= range.end || range.end > self.len {
            return Err(SysError::new(call, Errno::INVAL));
        }
        // SAFETY: the range lies inside this mapping; the callers' advice (huge page hints,
        // populate) changes no byte or is taken under &mut self (discard).
        unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().add(range.start).cast(),
                range.end - range.start,
                advice,
            )
        }
        .map_err(|e| SysError::new(call, e))
    }

    /// Allocates the pages of `range` (byte offsets) now, under the mapping's memory policy
    /// (`MADV_POPULATE_WRITE`, which fails with `ENOMEM` where touching would fault).
    pub fn populate_range(&self, range: std::ops::Range<usize>) -> Result<(), SysError> {
        self.advise_range(
            range,
            Advice::LinuxPopulateWrite,
            "madvise(MADV_POPULATE_WRITE)",
        )
    }

    /// Drops the pages of `range` (byte offsets, page-aligned): they read as zero again and take
    /// no memory until written (`MADV_DONTNEED`).
    pub fn discard(&mut self, range: std::ops::Range<usize>) -> Result<(), SysError> {
        self.advise_range(range, Advice::LinuxDontNeed, "madvise(MADV_DONTNEED)")
    }

    /// Moves the pages of `[src, src + len)` (within one mapping, else `EFAULT`) to `offset` of
    /// this mapping (`mremap` with `MREMAP_FIXED | MREMAP_DONTUNMAP`), dropping the pages there;
    /// the source stays mapped without pages, so that its next access faults. A whole mapping
    /// moved over offset 0 keeps this one a single mapping, as [`Mapping::replace`] needs.
    ///
    /// # Safety
    /// `[src, src + len)` must be page-aligned private anonymous memory of this process that the
    /// caller owns and expects to lose its pages; no reference into it may be used as if it still
    /// held them.
    pub unsafe fn take_pages_from(
        &mut self,
        offset: usize,
        src: usize,
        len: usize,
    ) -> Result<(), SysError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(SysError::new("mremap(MREMAP_DONTUNMAP)", Errno::INVAL));
        }
        let flags = rustix::mm::MremapFlags::MAYMOVE | rustix::mm::MremapFlags::DONTUNMAP;
        // SAFETY: the destination lies inside this mapping, borrowed exclusively; the caller
        // vouches for the source.
        unsafe {
            rustix::mm::mremap_fixed(
                src as *mut c_void,
                len,
                len,
                flags,
                self.ptr.as_ptr().add(offset).cast(),
            )
        }
        .map(|_| ())
        .map_err(|e| SysError::new("mremap(MREMAP_DONTUNMAP)", e))
    }

    /// Moves this mapping's pages to `[at, at + len)` with `mremap(MREMAP_FIXED)`, replacing
    /// whatever was mapped there; the pages keep their contents and node.
    ///
    /// # Safety
    /// `[at, at + len)` must be page-aligned memory of this process that the caller owns and
    /// expects to change: any reference into it sees this mapping's bytes afterwards.
    pub unsafe fn replace(self, at: usize) -> Result<(), (Mapping, SysError)> {
        // SAFETY: the source is this mapping (consumed on success, so it is not unmapped twice);
        // the caller vouches for the destination.
        let moved = unsafe {
            rustix::mm::mremap_fixed(
                self.ptr.as_ptr().cast(),
                self.len,
                self.len,
                rustix::mm::MremapFlags::MAYMOVE,
                at as *mut c_void,
            )
        };
        match moved {
            Ok(_) => {
                std::mem::forget(self);
                Ok(())
            }
            Err(e) => Err((self, SysError::new("mremap", e))),
        }
    }
}

/// Whether the kernel takes `madvise(MADV_COLD)` on `range` (page-aligned memory of this
/// process): it refuses (`EINVAL`) a range locked in memory, hugetlb or a PFN map; otherwise the
/// advice only moves the pages to the back of the reclaim order (splitting a huge page in part).
pub fn lru_advice_allowed(range: std::ops::Range<usize>) -> bool {
    // SAFETY: MADV_COLD changes no byte and no mapping; a range that is not mapped is refused.
    unsafe { rustix::mm::madvise(range.start as *mut c_void, range.len(), Advice::LinuxCold) }
        .is_ok()
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by anonymous_aligned and nothing borrows it any more.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_mapping_is_aligned_and_usable() {
        let mut m = Mapping::anonymous_aligned(3 * HUGE_PAGE_SIZE + 123, HUGE_PAGE_SIZE).unwrap();
        assert_eq!(m.as_ptr() as usize % HUGE_PAGE_SIZE, 0);
        assert!(m.as_slice().iter().all(|&b| b == 0));
        m.as_mut_slice().fill(7);
        m.populate();
        assert!(m.as_slice().iter().all(|&b| b == 7));
        m.advise_huge_pages().unwrap();
        m.advise_no_huge_pages().unwrap();
        // Not a whole number of pages, no alignment beyond a page's: the kernel maps whole pages.
        let mut odd = Mapping::anonymous(10).unwrap();
        odd.as_mut_slice().fill(3);
        assert_eq!(odd.as_slice(), [3; 10]);
        assert_eq!(
            Mapping::anonymous(usize::MAX).unwrap_err().errno,
            Errno::NOMEM
        );
    }

    #[test]
    fn replace_moves_pages_over_another_range() {
        let page = base_page_size();
        let mut old = Mapping::anonymous(4 * page).unwrap();
        old.as_mut_slice().fill(1);
        let mut new = Mapping::anonymous(4 * page).unwrap();
        new.as_mut_slice().fill(2);
        new.populate_range(0..page).unwrap();
        let at = old.as_ptr() as usize;
        // SAFETY: `old` owns the destination, and nothing borrows it.
        unsafe { new.replace(at) }.unwrap();
        assert!(old.as_slice().iter().all(|&b| b == 2));
        let small = Mapping::anonymous(page).unwrap();
        assert_eq!(
            small.populate_range(0..2 * page).unwrap_err().errno,
            Errno::INVAL
        );
    }

    #[test]
    fn zero_length_is_an_error() {
        assert_eq!(Mapping::anonymous(0).unwrap_err().errno, Errno::INVAL);
        assert_eq!(
            Mapping::anonymous_aligned(10, 3).unwrap_err().errno,
            Errno::INVAL
        );
    }
}
