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
//! crate's [`Settings`] and entry points as a Rust library.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_long, c_ulong, c_void};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use pagemig::abi::{self, Call, Context};
use pagemig::policy::{CostModel, Threads};
use pagemig::sys::ForeignOut;

/// What the C entry points run with: the abi's context and whether to log, from the
/// environment.
#[derive(Debug)]
pub struct Settings {
    /// The machine, the cost model and the thread setting.
    pub context: Context,
    /// `PAGEMIG_LOG`: one line per call on standard error.
    pub log: bool,
}

impl Settings {
    /// The running machine, its saved cost model (`PAGEMIG_MODEL` or the default path), and the
    /// settings `PAGEMIG_THREADS` (`auto` or a count) and `PAGEMIG_LOG` (`1`: describe calls),
    /// with what could not be used and what was used instead.
    pub fn from_env() -> (Settings, Vec<String>) {
        let mut warnings = Vec::new();
        let threads = match std::env::var("PAGEMIG_THREADS") {
            Ok(v) => v.parse().unwrap_or_else(|e| {
                warnings.push(format!("PAGEMIG_THREADS={v}: {e}; using auto"));
                Threads::Auto
            }),
            Err(_) => Threads::Auto,
        };
        let path = std::env::var_os("PAGEMIG_MODEL")
            .map(PathBuf::from)
            .or_else(CostModel::default_path);
        let model = path.and_then(|p| match CostModel::load(&p) {
            Ok(m) => Some(m),
            Err(e) if p.exists() => {
                warnings.push(format!("cost model {} not used: {e}", p.display()));
                None
            }
            Err(_) => None,
        });
        let log = std::env::var("PAGEMIG_LOG").is_ok_and(|v| !v.is_empty() && v != "0");
        let settings = Settings {
            context: Context::new(threads, model),
            log,
        };
        (settings, warnings)
    }

    /// This process's settings, made by [`Settings::from_env`] on first use (the libraries'
    /// constructors use them at load time); the warnings go to standard error then.
    pub fn of_process() -> &'static Settings {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        SETTINGS.get_or_init(|| {
            let (settings, warnings) = Settings::from_env();
            for w in warnings {
                let _ = writeln!(std::io::stderr(), "pagemig: {w}");
            }
            settings
        })
    }

    /// What the C entry points return for `call`: with `PAGEMIG_LOG` set, the call is described
    /// on standard error first; then the result, or -1 with `errno` set.
    pub fn answer(&self, call: &Call) -> c_long {
        if self.log {
            let _ = writeln!(std::io::stderr(), "pagemig: {call}");
        }
        call.c_return()
    }
}

/// Reads this process's settings: what a library's load-time constructor calls.
pub extern "C" fn load_settings() {
    Settings::of_process();
}

// SAFETY: a function pointer in .init_array is called once by the dynamic loader when the
// library is loaded, with no arguments, before any entry point can be called.
#[used]
#[unsafe(link_section = ".init_array")]
static LOAD: extern "C" fn() = load_settings;

/// [`abi::move_pages`] as this process's C entry points run it, with [`Settings::of_process`].
pub fn move_pages_c(
    pid: c_int,
    count: c_ulong,
    pages: *mut *mut c_void,
    nodes: *const c_int,
    status: ForeignOut<'_>,
    flags: c_int,
) -> c_long {
    let settings = Settings::of_process();
    settings.answer(&abi::move_pages(
        &settings.context,
        pid,
        count,
        pages.cast_const().cast(),
        nodes,
        status,
        flags,
    ))
}

/// [`abi::migrate_pages`] as this process's C entry points run it (see [`move_pages_c`]).
pub fn migrate_pages_c(
    pid: c_int,
    maxnode: c_ulong,
    old_nodes: *const c_ulong,
    new_nodes: *const c_ulong,
) -> c_long {
    let settings = Settings::of_process();
    settings.answer(&abi::migrate_pages(
        &settings.context,
        pid,
        maxnode,
        old_nodes,
        new_nodes,
    ))
}

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
