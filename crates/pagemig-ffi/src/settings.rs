//! What both C libraries run with (libpagemig and, through `#[path]`, the preload library,
//! which cannot link this crate: a Rust library named `pagemig` beside the `pagemig` crate would
//! collide): the settings read from the environment, the log line, and the entry points' bodies.

use std::ffi::{c_int, c_long, c_ulong, c_void};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use pagemig::Threads;
use pagemig::abi::{self, Call, Context};
use pagemig::policy::CostModel;
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
            .or_else(|| {
                CostModel::default_path(
                    std::env::var_os("XDG_CACHE_HOME"),
                    std::env::var_os("HOME"),
                )
            });
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
