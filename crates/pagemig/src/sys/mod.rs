//! Every raw system call pagemig makes (`mmap`, `mbind`, `move_pages`, ...), the only module that
//! talks to the kernel directly: safe, typed wrappers that turn the errno into a [`SysError`].
#![allow(unsafe_code)]

#[cfg(all(feature = "dsa", target_arch = "x86_64"))]
pub mod dsa;
mod mem;
mod numa;
mod own;
mod pagemap;
mod process;
mod thread;
mod uffd;

pub use mem::{HUGE_PAGE_SIZE, Mapping, base_page_size, lru_advice_allowed};
pub use numa::{
    MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, PageNode, migrate_pages, migrate_pages_unchanged, move_pages,
    move_pages_unchanged, query_page_nodes, query_pages_unchanged,
};
pub use own::{ForeignOut, Plain, read_own, set_errno};
pub use pagemap::{PageCategories, PageRegion, Pagemap, Vma, entry as pagemap_entry};
pub use process::spawn_in_cgroup;
pub use rustix::io::Errno;
pub use thread::{
    Pinned, allowed_cpus, current_cpu, pin_current_thread, process_cpu_time, thread_cpu_time,
};
pub use uffd::Uffd;

/// A system call that failed, with the kernel's error number kept as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed: {errno}")]
pub struct SysError {
    /// The system call, as named in its man page.
    pub call: &'static str,
    /// What the kernel returned.
    pub errno: Errno,
}

impl SysError {
    pub(crate) fn new(call: &'static str, errno: Errno) -> Self {
        Self { call, errno }
    }

    /// Captures `errno` after a raw libc call returned -1.
    fn last(call: &'static str) -> Self {
        let raw = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        Self::new(call, Errno::from_raw_os_error(raw))
    }

    /// What a raw system call's return value says: the count it returned, or the errno it left.
    fn check(call: &'static str, rc: std::ffi::c_long) -> Result<usize, Self> {
        usize::try_from(rc).map_err(|_| Self::last(call))
    }
}

/// `ioctl(fd, request, arg)`, named `call` in its error.
///
/// # Safety
/// `arg` is the struct that `request` is defined with, and any memory it points at is valid for
/// what the kernel does with it.
unsafe fn ioctl<T>(
    fd: &impl std::os::fd::AsRawFd,
    call: &'static str,
    request: u32,
    arg: &mut T,
) -> Result<usize, SysError> {
    // SAFETY: the caller vouches for the argument.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, std::ptr::from_mut(arg)) };
    SysError::check(call, rc.into())
}
