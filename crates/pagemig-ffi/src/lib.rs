//! libpagemig: `move_pages(2)` and `migrate_pages(2)` for C and C++ programs, with the system
//! calls' semantics (return value, `errno`, every status entry), executed by pagemig's planner:
//! pages grouped by target node, batches split over pinned threads. Calls pagemig cannot answer
//! exactly as the kernel would go to the kernel unchanged.
//!
//! Settings come from the environment, read once when the library is loaded (a constructor, so
//! that nothing is read, allocated or started for them during a call): `PAGEMIG_THREADS`
//! (`auto`, the default, or a thread count), `PAGEMIG_LOG=1` (one line per call on standard
//! error: what was planned and how long it took), `PAGEMIG_MODEL` (a cost model saved by
//! `pagemig calibrate`). The header is `include/pagemig.h`. `libpagemig_preload.so` uses this
//! crate's `settings` module (the settings, the log line and the entry points' bodies) too.
#![allow(unsafe_code)]

mod settings;

use std::ffi::{c_int, c_long, c_ulong, c_void};

use pagemig::sys::ForeignOut;
use settings::{load_settings, migrate_pages_c, move_pages_c};

// SAFETY: a function pointer in .init_array is called once by the dynamic loader when the
// library is loaded, with no arguments, before any entry point can be called.
#[used]
#[unsafe(link_section = ".init_array")]
static LOAD: extern "C" fn() = load_settings;

/// Moves page `pages[i]` of process `pid` (0: the caller) to node `nodes[i]` and writes the node
/// it is on afterwards, or a negative errno, to `status[i]`; with `nodes` NULL, only reports
/// where each page is. `flags` is `MPOL_MF_MOVE` or `MPOL_MF_MOVE_ALL`. Returns 0, the number of
/// pages left behind, or -1 with `errno` set, exactly as `move_pages(2)`.
///
/// # Safety
/// As for `move_pages(2)`: `status` is an array of `count` ints the function may write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pagemig_move_pages(
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

/// Moves every page of process `pid` on a node of `old_nodes` to the node at the same position
/// in `new_nodes` (`maxnode` is one more than the bits of each mask). Returns the number of
/// pages that could not be moved, or -1 with `errno` set, exactly as `migrate_pages(2)`.
///
/// # Safety
/// As for `migrate_pages(2)`: the masks are only read.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pagemig_migrate_pages(
    pid: c_int,
    maxnode: c_ulong,
    old_nodes: *const c_ulong,
    new_nodes: *const c_ulong,
) -> c_long {
    migrate_pages_c(pid, maxnode, old_nodes, new_nodes)
}
