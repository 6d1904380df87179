//! Starting a process directly inside a cgroup.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Starts `command` in the cgroup whose `cgroup.procs` is open for writing as `procs`: the child
/// writes `0` (itself) into it between fork and exec, so it never runs outside the cgroup; a
/// refused write fails the spawn with that error, and nothing runs.
pub fn spawn_in_cgroup(command: &mut Command, procs: &OwnedFd) -> io::Result<Child> {
    let fd = procs.as_raw_fd();
    // SAFETY: the hook runs in the forked child before exec and only calls write(2), which is
    // async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    command.spawn()
}
