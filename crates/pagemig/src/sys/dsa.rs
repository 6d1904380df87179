//! Intel DSA user work queues: the mapped submission portal and the two instructions that write
//! a 64-byte descriptor to it (`ENQCMD` for shared queues, `MOVDIR64B` for dedicated ones).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::ptr::NonNull;

use rustix::fs::{Mode, OFlags, open};
use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

use super::SysError;

/// Bytes of a work queue's portal mapping.
const PORTAL: usize = 4096;

/// Whether the CPU can submit to a `shared` queue (`ENQCMD`: CPUID.(EAX=7,ECX=0):ECX bit 29) or
/// a dedicated one (`MOVDIR64B`: bit 28).
pub fn cpu_can_submit(shared: bool) -> bool {
    let bit = if shared { 29 } else { 28 };
    std::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << bit) != 0
}

/// A work queue's submission portal, mapped; unmapped and closed on drop.
#[derive(Debug)]
pub struct Portal {
    ptr: NonNull<u8>,
    _fd: OwnedFd,
}

// SAFETY: the portal is device memory written only with whole 64-byte atomic stores
// (ENQCMD/MOVDIR64B), which any thread may issue at the same time.
unsafe impl Send for Portal {}
// SAFETY: as above; `&Portal` only submits.
unsafe impl Sync for Portal {}

impl Portal {
    /// Opens the work queue's character device (`/dev/dsa/wq0.0`) and maps its portal.
    pub fn open(device: &Path) -> Result<Self, SysError> {
        let fd = open(device, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| SysError::new("open", e))?;
        // SAFETY: a new shared mapping of the device's portal page, owned by the result.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                PORTAL,
                ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::POPULATE,
                &fd,
                0,
            )
        }
        .map_err(|e| SysError::new("mmap", e))?;
        let ptr =
            NonNull::new(ptr.cast()).ok_or(SysError::new("mmap", rustix::io::Errno::FAULT))?;
        Ok(Portal { ptr, _fd: fd })
    }

    /// Submits a descriptor to a shared queue with `ENQCMD`; `false` when the queue did not take
    /// it (full: try again).
    ///
    /// # Safety
    /// The descriptor must be a valid DSA descriptor whose addresses (source, destination,
    /// completion record, descriptor list) stay valid and untouched by anyone else until the
    /// device writes its completion record; the CPU must have ENQCMD.
    pub unsafe fn enqcmd(&self, descriptor: &[u8; 64]) -> bool {
        let retry: u8;
        // SAFETY: ENQCMD (F2 0F 38 F8 /r, here [rdx] -> portal in rax) reads 64 bytes from the
        // descriptor and writes them atomically to the portal; the caller vouches for the rest.
        unsafe {
            std::arch::asm!(
                ".byte 0xf2, 0x0f, 0x38, 0xf8, 0x02",
                "setz {retry}",
                in("rax") self.ptr.as_ptr(),
                in("rdx") descriptor.as_ptr(),
                retry = out(reg_byte) retry,
                options(nostack),
            );
        }
        retry == 0
    }

    /// Submits a descriptor to a dedicated queue with `MOVDIR64B` (the caller keeps no more
    /// descriptors in flight than the queue holds).
    ///
    /// # Safety
    /// As [`Portal::enqcmd`], with MOVDIR64B instead of ENQCMD.
    pub unsafe fn movdir64b(&self, descriptor: &[u8; 64]) {
        // SAFETY: MOVDIR64B (66 0F 38 F8 /r) copies 64 bytes from [rdx] to the 64-byte aligned
        // portal in rax as one write; the caller vouches for the descriptor.
        unsafe {
            std::arch::asm!(
                ".byte 0x66, 0x0f, 0x38, 0xf8, 0x02",
                in("rax") self.ptr.as_ptr(),
                in("rdx") descriptor.as_ptr(),
                options(nostack),
            );
        }
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        // SAFETY: the portal mapping is ours and nothing refers to it after drop.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), PORTAL) };
    }
}
