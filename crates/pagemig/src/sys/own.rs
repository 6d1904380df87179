//! The caller's own memory at addresses a C caller handed over, read and written through
//! `process_vm_readv`/`process_vm_writev`: a bad address gives `EFAULT` instead of a crash.

use std::ffi::{c_int, c_long, c_void};
use std::marker::PhantomData;

use super::{Errno, SysError};

/// Plain values that any bit pattern is a valid value of.
pub trait Plain: Copy + Default + private::Sealed {}

mod private {
    pub trait Sealed {}
}

macro_rules! plain {
    ($($t:ty),*) => {$(
        impl private::Sealed for $t {}
        impl Plain for $t {}
    )*};
}
plain!(i32, u64, usize);

/// Copies `len` values from address `addr` of this process, or fails with `EFAULT` where that
/// memory is not readable (where a plain read would crash).
///
/// A `len` no buffer of this process can hold fails with `ENOMEM`.
pub fn read_own<T: Plain>(addr: usize, len: usize) -> Result<Vec<T>, SysError> {
    let mut out = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|_| SysError::new("process_vm_readv", Errno::NOMEM))?;
    out.resize(len, T::default());
    let bytes = std::mem::size_of_val(out.as_slice());
    if bytes == 0 {
        return Ok(out);
    }
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast::<c_void>(),
        iov_len: bytes,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: bytes,
    };
    // SAFETY: the kernel writes at most `bytes` into `out`, which owns that many bytes of plain
    // values; it only reads the remote range, through the page tables, failing where it is not
    // mapped or readable.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if SysError::check("process_vm_readv", n as c_long)? != bytes {
        return Err(SysError::new("process_vm_readv", Errno::FAULT));
    }
    Ok(out)
}

/// An array of ints that a C caller handed over to be written (a status array): pagemig reads
/// and writes it through the kernel, so that a bad address is `EFAULT`, never a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignOut<'a> {
    addr: usize,
    len: usize,
    array: PhantomData<&'a mut [c_int]>,
}

impl ForeignOut<'_> {
    /// The `len` ints at `ptr`.
    ///
    /// # Safety
    /// The C caller handed this array over to be written for as long as the result is used (it
    /// may still be an invalid address), and nothing in this program holds a reference into it.
    pub unsafe fn new(ptr: *mut c_int, len: usize) -> Self {
        ForeignOut {
            addr: ptr as usize,
            len,
            array: PhantomData,
        }
    }

    /// The address, for the kernel.
    pub fn as_ptr(&self) -> *mut c_int {
        self.addr as *mut c_int
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What it holds now.
    pub fn read(&self) -> Result<Vec<c_int>, SysError> {
        read_own(self.addr, self.len)
    }

    /// Writes `values` over it, or fails with `EFAULT` where it is not writable (read-only or
    /// unmapped), having written nothing or a prefix.
    ///
    /// # Panics
    /// If `values` is not as long as the array.
    pub fn write(&self, values: &[c_int]) -> Result<(), SysError> {
        assert_eq!(values.len(), self.len, "ForeignOut::write: length");
        let bytes = std::mem::size_of_val(values);
        if bytes == 0 {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: values.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: bytes,
        };
        let remote = libc::iovec {
            iov_base: self.addr as *mut c_void,
            iov_len: bytes,
        };
        // SAFETY: the kernel only reads `values`; the array was handed over to be written (see
        // `new`), and the kernel fails with EFAULT where it is not mapped writable.
        let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
        if SysError::check("process_vm_writev", n as c_long)? != bytes {
            return Err(SysError::new("process_vm_writev", Errno::FAULT));
        }
        Ok(())
    }
}

impl<'a> From<&'a mut [c_int]> for ForeignOut<'a> {
    /// A Rust caller's status array.
    fn from(array: &'a mut [c_int]) -> Self {
        // SAFETY: the exclusive borrow hands the array over for as long as the result lives.
        unsafe { ForeignOut::new(array.as_mut_ptr(), array.len()) }
    }
}

/// Sets the calling thread's `errno`, as a C function reports failure.
pub fn set_errno(errno: Errno) {
    // SAFETY: __errno_location returns the calling thread's errno slot, valid for the thread's
    // lifetime.
    unsafe { *libc::__errno_location() = errno.raw_os_error() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_round_trips_and_bad_addresses_fail() {
        let mut buf = [1i32, 2, 3, 4];
        let addr = buf.as_mut_ptr() as usize;
        assert_eq!(read_own::<i32>(addr, 4).unwrap(), [1, 2, 3, 4]);
        // SAFETY: `buf` is ours, and no reference into it is alive while `out` is used.
        let out = unsafe { ForeignOut::new(buf.as_mut_ptr().wrapping_add(1), 2) };
        out.write(&[7, 8]).unwrap();
        assert_eq!(out.read().unwrap(), [7, 8]);
        assert_eq!(buf, [1, 7, 8, 4]);
        assert_eq!(read_own::<u64>(8, 1).unwrap_err().errno, Errno::FAULT);
        assert_eq!(read_own::<u64>(0, 0).unwrap(), Vec::<u64>::new());
        // More than any buffer holds: an error, not a capacity-overflow panic or an abort.
        for len in [usize::MAX, usize::MAX / 8 + 1, 1 << 60] {
            assert_eq!(read_own::<u64>(8, len).unwrap_err().errno, Errno::NOMEM);
        }
        // SAFETY: address 8 is never mapped; nothing is written.
        let bad = unsafe { ForeignOut::new(8 as *mut c_int, 1) };
        assert_eq!(bad.write(&[5]).unwrap_err().errno, Errno::FAULT);
    }
}
