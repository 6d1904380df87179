//! CPU affinity of threads.

use std::time::Duration;

use rustix::thread::{CpuSet as RawCpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
use rustix::time::{ClockId, clock_gettime};

use super::{Errno, SysError};
use crate::topology::CpuSet;

/// CPUs the calling thread may run on (its affinity mask).
pub fn allowed_cpus() -> Result<CpuSet, SysError> {
    let raw = sched_getaffinity(None).map_err(|e| SysError::new("sched_getaffinity", e))?;
    Ok((0..RawCpuSet::MAX_CPU)
        .filter(|&c| raw.is_set(c))
        .map(|c| c as u32)
        .collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: u32) -> Result<(), SysError> {
    let cpu = cpu as usize;
    if cpu >= RawCpuSet::MAX_CPU {
        return Err(SysError::new("sched_setaffinity", Errno::INVAL));
    }
    let mut raw = RawCpuSet::new();
    raw.set(cpu);
    sched_setaffinity(None, &raw).map_err(|e| SysError::new("sched_setaffinity", e))
}

/// The CPU the calling thread runs on now (it may be moved right after, unless pinned).
pub fn current_cpu() -> u32 {
    sched_getcpu() as u32
}

/// The calling thread pinned to one CPU until this is dropped, which gives it back the
/// affinity mask it had, unless someone changed its mask meanwhile: that newer mask is kept.
#[derive(Debug)]
pub struct Pinned {
    saved: RawCpuSet,
    pinned: RawCpuSet,
    /// Not `Send`: dropped on another thread, it would set that thread's mask.
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl Pinned {
    /// Pins the calling thread to `cpu`, keeping its mask for the drop.
    pub fn here(cpu: u32) -> Result<Self, SysError> {
        let saved = sched_getaffinity(None).map_err(|e| SysError::new("sched_getaffinity", e))?;
        pin_current_thread(cpu)?;
        let mut pinned = RawCpuSet::new();
        pinned.set(cpu as usize);
        Ok(Pinned {
            saved,
            pinned,
            _this_thread: std::marker::PhantomData,
        })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // A mask someone set while the thread was pinned is theirs. The restore fails only where
        // a cpuset no longer has the saved CPUs: the kernel then keeps the thread where it is.
        if sched_getaffinity(None).is_ok_and(|now| now == self.pinned) {
            let _ = sched_setaffinity(None, &self.saved);
        }
    }
}

/// CPU time the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time this process (all its threads, since it was forked: its `exec` and start included)
/// has used so far (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn process_cpu_time() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
