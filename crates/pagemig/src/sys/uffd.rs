//! userfaultfd in write-protect mode: stop writers to a range while its pages are copied.

use std::os::fd::{AsRawFd, OwnedFd};

use linux_raw_sys::general::{
    UFFD_API, UFFD_EVENT_PAGEFAULT, UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFD_FEATURE_WP_UNPOPULATED,
    UFFD_PAGEFAULT_FLAG_WRITE, UFFD_USER_MODE_ONLY, UFFDIO_REGISTER_MODE_MISSING,
    UFFDIO_REGISTER_MODE_WP, uffd_msg, uffdio_api, uffdio_range, uffdio_register,
    uffdio_writeprotect,
};
use linux_raw_sys::ioctl::{
    UFFDIO_API, UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_WAKE, UFFDIO_WRITEPROTECT,
};
use rustix::mm::UserfaultfdFlags;

use super::{Errno, SysError};

/// `UFFDIO_WRITEPROTECT_MODE_WP`.
const MODE_WP: u64 = 1;

/// `[start, start + len)` as the kernel's `uffdio_range`.
fn range(start: usize, len: usize) -> uffdio_range {
    uffdio_range {
        start: start as u64,
        len: len as u64,
    }
}

/// A userfaultfd that can write-protect ranges of this process, unpopulated pages included:
/// writers to a protected range (and, registered for missing pages, any access to a missing
/// page) block until [`Uffd::wake`] or drop; reading a page that is there never blocks.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

impl Uffd {
    /// Opens a userfaultfd with write-protect support for unpopulated pages (Linux 6.4+).
    /// Where this process may handle the kernel's own faults (`CAP_SYS_PTRACE`, or
    /// `vm.unprivileged_userfaultfd = 1`), a system call given a pointer into a registered range
    /// waits as user code does; elsewhere the userfaultfd handles faults of user code only, and
    /// such a call fails with `EFAULT` instead of waiting. Fails with `EPERM` where
    /// `vm.unprivileged_userfaultfd` forbids even that, and with `EINVAL` (from `UFFDIO_API`) on
    /// kernels without `WP_UNPOPULATED`.
    pub fn open_write_protect() -> Result<Self, SysError> {
        let flags = UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK;
        let user_mode_only = UserfaultfdFlags::from_bits_retain(UFFD_USER_MODE_ONLY);
        // SAFETY: a new userfaultfd registers nothing; only ranges this process passes to
        // register_write_protect are affected, and only while the fd lives.
        let fd = match unsafe { rustix::mm::userfaultfd(flags) } {
            // SAFETY: as above.
            Err(Errno::PERM) => unsafe { rustix::mm::userfaultfd(flags | user_mode_only) },
            opened => opened,
        }
        .map_err(|e| SysError::new("userfaultfd", e))?;
        let uffd = Uffd { fd };
        let mut api = uffdio_api {
            api: UFFD_API as u64,
            features: (UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_UNPOPULATED) as u64,
            ioctls: 0,
        };
        uffd.ioctl("ioctl(UFFDIO_API)", UFFDIO_API, &mut api)?;
        Ok(uffd)
    }

    fn ioctl<T>(&self, call: &'static str, request: u32, arg: &mut T) -> Result<(), SysError> {
        // SAFETY: every caller passes the argument struct that `request` is defined with; the
        // ranges it names are registered or write-protected, never read or written through.
        unsafe { super::ioctl(&self.fd, call, request, arg) }.map(drop)
    }

    /// Registers `[start, start + len)` for write-protect faults, and with `missing` also for
    /// faults on pages that are not there (those wait for [`Uffd::wake`] too). The range must be
    /// page-aligned anonymous memory of this process.
    pub fn register(&self, start: usize, len: usize, missing: bool) -> Result<(), SysError> {
        let missing = if missing {
            UFFDIO_REGISTER_MODE_MISSING
        } else {
            0
        };
        let mut reg = uffdio_register {
            range: range(start, len),
            mode: (UFFDIO_REGISTER_MODE_WP | missing) as u64,
            ioctls: 0,
        };
        self.ioctl("ioctl(UFFDIO_REGISTER)", UFFDIO_REGISTER, &mut reg)
    }

    /// Unregisters `[start, start + len)`: faults there no longer wait, and those waiting for a
    /// missing page are woken. Parts of the range that are not registered are left as they are.
    pub fn unregister(&self, start: usize, len: usize) -> Result<(), SysError> {
        self.ioctl(
            "ioctl(UFFDIO_UNREGISTER)",
            UFFDIO_UNREGISTER,
            &mut range(start, len),
        )
    }

    /// Write-protects a registered range: from now on writes to it wait for [`Uffd::wake`].
    pub fn write_protect(&self, start: usize, len: usize) -> Result<(), SysError> {
        self.set_write_protect(start, len, MODE_WP)
    }

    /// Lifts the write protection of a registered range and wakes its writers.
    pub fn unprotect(&self, start: usize, len: usize) -> Result<(), SysError> {
        self.set_write_protect(start, len, 0)
    }

    /// Makes the read-only page-table entries of `[start, start + len)` (anonymous memory, not
    /// registered) writable again in one pass: unregistering a write-protect range resolves its
    /// entries (Linux 6.2+), upgrading those of pages this process owns alone. Pages that
    /// `mremap` moves out of a protected range keep read-only entries, and every first write to
    /// one of them would otherwise fault.
    pub fn restore_write_access(&self, start: usize, len: usize) -> Result<(), SysError> {
        self.register(start, len, false)?;
        self.unregister(start, len)
    }

    fn set_write_protect(&self, start: usize, len: usize, mode: u64) -> Result<(), SysError> {
        let mut wp = uffdio_writeprotect {
            range: range(start, len),
            mode,
        };
        self.ioctl("ioctl(UFFDIO_WRITEPROTECT)", UFFDIO_WRITEPROTECT, &mut wp)
    }

    /// Wakes every writer waiting on `[start, start + len)`; they retry their write.
    pub fn wake(&self, start: usize, len: usize) -> Result<(), SysError> {
        self.ioctl("ioctl(UFFDIO_WAKE)", UFFDIO_WAKE, &mut range(start, len))
    }

    /// Reads and discards the fault messages queued so far; returns how many were writes (the
    /// writes that waited; reads of missing pages wait too, and are not counted).
    pub fn drain(&self) -> Result<usize, SysError> {
        let mut msgs = [std::mem::MaybeUninit::<uffd_msg>::uninit(); 16];
        let mut count = 0;
        loop {
            let size = std::mem::size_of_val(&msgs);
            // SAFETY: read writes at most `size` bytes into `msgs`; uffd_msg is plain data.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), msgs.as_mut_ptr().cast(), size) };
            if n < 0 {
                let e = SysError::last("read(userfaultfd)");
                return (e.errno == Errno::AGAIN).then_some(count).ok_or(e);
            }
            let read = n as usize / std::mem::size_of::<uffd_msg>();
            count += msgs[..read]
                .iter()
                .filter(|m| {
                    // SAFETY: the kernel wrote the first `read` messages whole; a page fault's
                    // message carries the `pagefault` member of the union.
                    let m = unsafe { m.assume_init_ref() };
                    u32::from(m.event) == UFFD_EVENT_PAGEFAULT
                        // SAFETY: as above, the event says which member is there.
                        && unsafe { m.arg.pagefault.flags } & u64::from(UFFD_PAGEFAULT_FLAG_WRITE) != 0
                })
                .count();
            if (n as usize) < size {
                return Ok(count);
            }
        }
    }
}
