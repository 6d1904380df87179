//! Starting a process directly inside a cgroup.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Starts `command` as a member of the cgroup whose `cgroup.procs` file is open for writing as
/// `procs`: the child writes `0` (itself) into it between fork and exec, so it never runs its
/// program outside the cgroup. A refused write (no permission, a cgroup that takes no processes)
/// fails the spawn with that error, and nothing runs.
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
