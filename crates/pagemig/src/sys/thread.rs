//! CPU affinity of threads.

use std::time::Duration;

use rustix::thread::{CpuSet as RawCpuSet, sched_getaffinity, sched_setaffinity};
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
