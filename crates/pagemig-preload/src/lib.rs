//! libpagemig_preload.so: load it with `LD_PRELOAD` and a program's `move_pages(2)` and
//! `migrate_pages(2)` calls, through libnuma (`numa_move_pages`, `numa_migrate_pages`, and
//! libnuma's own `move_pages`/`migrate_pages` symbols) or not, are executed by pagemig, with
//! the system calls' semantics. Settings as for libpagemig: `PAGEMIG_THREADS`, `PAGEMIG_LOG=1`,
//! `PAGEMIG_MODEL`. Calls pagemig cannot answer exactly as the kernel would go to the kernel
//! unchanged. The settings and the log line are libpagemig's (its `settings` module, compiled
//! into this library too), read when the library is loaded.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_long, c_ulong, c_void};

#[path = "../../pagemig-ffi/src/settings.rs"]
mod settings;

use pagemig::sys::{Errno, ForeignOut, set_errno};
use settings::{load_settings, migrate_pages_c, move_pages_c};

// SAFETY: a function pointer in .init_array is called once by the dynamic loader when the
// library is loaded, with no arguments, before any entry point can be called.
#[used]
#[unsafe(link_section = ".init_array")]
static LOAD: extern "C" fn() = load_settings;

/// `move_pages(2)`, as libnuma declares it.
///
/// # Safety
/// As for `move_pages(2)`: `status` is an array of `count` ints the function may write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn move_pages(
    pid: c_int,
    count: c_ulong,
    pages: *mut *mut c_void,
    nodes: *const c_int,
    status: *mut c_int,
    flags: c_int,
) -> c_long {
    // SAFETY: the C caller handed `status` over to be written, as move_pages(2) asks.
    let status = unsafe { ForeignOut::new(status, count as usize) };
    move_pages_c(pid, count, pages, nodes, status, flags)
}

/// `migrate_pages(2)`, as libnuma declares it.
///
/// # Safety
/// As for `migrate_pages(2)`: the masks are only read.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn migrate_pages(
    pid: c_int,
    maxnode: c_ulong,
    old_nodes: *const c_ulong,
    new_nodes: *const c_ulong,
) -> c_long {
    migrate_pages_c(pid, maxnode, old_nodes, new_nodes)
}

/// libnuma's `numa_move_pages`: `move_pages` with an int result.
///
/// # Safety
/// As [`move_pages`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numa_move_pages(
    pid: c_int,
    count: c_ulong,
    pages: *mut *mut c_void,
    nodes: *const c_int,
    status: *mut c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's promise is move_pages's.
    unsafe { move_pages(pid, count, pages, nodes, status, flags) as c_int }
}

/// libnuma's `struct bitmask`.
#[repr(C)]
pub struct Bitmask {
    size: c_ulong,
    maskp: *mut c_ulong,
}

/// libnuma's `numa_migrate_pages`: `migrate_pages` with libnuma's node count (its
/// `numa_num_possible_nodes() + 1` as `maxnode`) and an int result.
///
/// # Safety
/// `from` and `to` are libnuma bitmasks, as for libnuma's function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numa_migrate_pages(
    pid: c_int,
    from: *mut Bitmask,
    to: *mut Bitmask,
) -> c_int {
    const NAME: &CStr = c"numa_num_possible_nodes";
    // SAFETY: dlsym with RTLD_NEXT looks the name up in the objects loaded after this one
    // (libnuma, which the caller of a libnuma function has loaded).
    let next = unsafe { libc::dlsym(libc::RTLD_NEXT, NAME.as_ptr()) };
    if next.is_null() {
        set_errno(Errno::NOSYS);
        return -1;
    }
    // SAFETY: libnuma's `int numa_num_possible_nodes(void)`.
    let possible: extern "C" fn() -> c_int = unsafe { std::mem::transmute(next) };
    let maxnode = possible() as c_ulong + 1;
    // SAFETY: the caller passes libnuma bitmasks; their mask words are only read, by the kernel
    // or through process_vm_readv.
    unsafe { migrate_pages(pid, maxnode, (*from).maskp, (*to).maskp) as c_int }
}
