//! A GPU's copy engines through the CUDA driver API, loaded at run time (cudarc with dynamic
//! loading: no CUDA toolkit at build time, `libcuda.so` only where a GPU is): host ranges are
//! pinned (registered) for the copy, copied with asynchronous memcpy spread over several
//! streams, and unpinned when the submission completes. [`DeviceBuffer`] moves pages between
//! host memory and the GPU's memory, for GPU-attached memory tiers.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{DriverError, result, sys};

use super::{DmaKind, unavailable};
use crate::copy::{AsyncCopyEngine, Completion, CopyError, CopyOp, CopyStats, OpStatus, Ticket};
use crate::workers::lock;

/// Streams copies are spread over.
const STREAMS: usize = 4;

/// Bytes per asynchronous memcpy: large ops are split over the streams.
const PIECE: usize = 8 << 20;

/// `CU_MEMHOSTREGISTER_PORTABLE`.
const REGISTER_PORTABLE: u32 = 0x01;

/// What the driver answered to `what`.
fn driver(what: &str) -> impl FnOnce(DriverError) -> CopyError + '_ {
    move |e| unavailable(DmaKind::Cuda, format!("{what}: {e:?}"))
}

#[derive(Debug)]
struct Submission {
    events: Vec<sys::CUevent>,
    /// Host ranges this submission pinned (unpinned at completion).
    pinned: Vec<*mut c_void>,
    /// Per op: the first error enqueuing its copies.
    failed: Vec<Option<String>>,
    lens: Vec<usize>,
}

// SAFETY: the raw handles are CUDA driver objects, usable from any thread with the context
// current; the pinned pointers are only passed back to the driver.
unsafe impl Send for Submission {}

/// GPU 0's copy engines.
#[derive(Debug)]
pub struct Cuda {
    ctx: sys::CUcontext,
    device: sys::CUdevice,
    streams: Vec<sys::CUstream>,
    next: AtomicU64,
    subs: Mutex<HashMap<u64, Submission>>,
}

// SAFETY: a CUDA context and its streams may be used from any thread once made current there
// (every entry point does so first).
unsafe impl Send for Cuda {}
// SAFETY: as above; the mutable state is behind the mutex.
unsafe impl Sync for Cuda {}

impl Cuda {
    /// GPU 0 with its streams, or which check failed: no CUDA driver library, the driver does not
    /// start, no GPU.
    pub fn open() -> Result<Self, CopyError> {
        // SAFETY: looks for libcuda.so without loading any symbol from it.
        if !unsafe { sys::is_culib_present() } {
            return Err(unavailable(
                DmaKind::Cuda,
                "no CUDA driver found (libcuda.so is not installed: no NVIDIA driver on this machine)",
            ));
        }
        result::init().map_err(driver("cuInit"))?;
        let count = result::device::get_count().map_err(driver("cuDeviceGetCount"))?;
        if count == 0 {
            return Err(unavailable(DmaKind::Cuda, "the CUDA driver sees no GPU"));
        }
        let device = result::device::get(0).map_err(driver("cuDeviceGet"))?;
        // SAFETY: the device was just returned by the driver.
        let ctx = unsafe { result::primary_ctx::retain(device) }
            .map_err(driver("cuDevicePrimaryCtxRetain"))?;
        let mut cuda = Cuda {
            ctx,
            device,
            streams: Vec::new(),
            next: AtomicU64::new(0),
            subs: Mutex::new(HashMap::new()),
        };
        cuda.current()?;
        for _ in 0..STREAMS {
            cuda.streams.push(
                result::stream::create(result::stream::StreamKind::NonBlocking)
                    .map_err(driver("cuStreamCreate"))?,
            );
        }
        Ok(cuda)
    }

    /// Makes the context current on the calling thread.
    fn current(&self) -> Result<(), CopyError> {
        // SAFETY: the primary context retained in `open`, alive until drop.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(driver("cuCtxSetCurrent"))
    }

    /// Pins the page-rounded, merged ranges of the batch; returns those this call pinned (a
    /// range the caller had pinned already is left to the caller).
    fn pin(&self, batch: &[CopyOp<'_>]) -> Vec<*mut c_void> {
        let page = crate::sys::base_page_size();
        let mut ranges: Vec<(usize, usize)> = batch
            .iter()
            .filter(|o| !o.is_empty())
            .flat_map(|o| [(o.src() as usize, o.len()), (o.dst() as usize, o.len())])
            .map(|(a, len)| (a / page * page, (a + len).next_multiple_of(page)))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let pin = |(s, e): (usize, usize)| {
            // SAFETY: the range covers the ops' memory, valid until completion (submit's
            // contract); pinning does not change its contents.
            let rc =
                unsafe { sys::cuMemHostRegister_v2(s as *mut c_void, e - s, REGISTER_PORTABLE) };
            // Not pinned (already registered by the caller, or refused): the driver still
            // copies pageable memory, through its staging buffers.
            (rc == sys::CUresult::CUDA_SUCCESS).then_some(s as *mut c_void)
        };
        merged.into_iter().filter_map(pin).collect()
    }

    /// Allocates `len` bytes of GPU memory.
    pub fn alloc(&self, len: usize) -> Result<DeviceBuffer<'_>, CopyError> {
        self.current()?;
        // SAFETY: a plain device allocation, freed by DeviceBuffer's drop.
        let ptr = unsafe { result::malloc_sync(len.max(1)) }.map_err(driver("cuMemAlloc"))?;
        Ok(DeviceBuffer {
            gpu: self,
            ptr,
            len,
        })
    }

    fn finish(&self, sub: Submission) -> Completion {
        for &e in &sub.events {
            // SAFETY: events this engine created and recorded, complete now.
            let _ = unsafe { result::event::destroy(e) };
        }
        for &p in &sub.pinned {
            // SAFETY: ranges this submission pinned, its copies complete.
            let _ = unsafe { sys::cuMemHostUnregister(p) };
        }
        let mut bytes = 0;
        let ops = sub
            .failed
            .into_iter()
            .zip(&sub.lens)
            .map(|(f, &len)| match f {
                None => {
                    bytes += len as u64;
                    OpStatus::Done
                }
                Some(reason) => OpStatus::Failed { copied: 0, reason },
            })
            .collect();
        Completion {
            ops,
            stats: CopyStats {
                bytes,
                ops: sub.lens.len() as u64,
                ..CopyStats::default()
            },
        }
    }
}

impl AsyncCopyEngine for Cuda {
    fn name(&self) -> String {
        format!("cuda(gpu {}, {} streams)", self.device, self.streams.len())
    }

    unsafe fn submit(&self, batch: &[CopyOp<'_>]) -> Result<Ticket, CopyError> {
        self.current()?;
        let pinned = self.pin(batch);
        let mut failed = vec![None; batch.len()];
        let mut k = 0;
        for (i, op) in batch.iter().enumerate() {
            for (off, len) in op.pieces(PIECE) {
                let stream = self.streams[k % self.streams.len()];
                k += 1;
                // SAFETY: with unified addressing host pointers are valid copy addresses; the
                // ranges stay valid and untouched until completion (submit's contract).
                let rc = unsafe {
                    sys::cuMemcpyAsync(
                        (op.dst() as usize + off) as sys::CUdeviceptr,
                        (op.src() as usize + off) as sys::CUdeviceptr,
                        len,
                        stream,
                    )
                };
                if rc != sys::CUresult::CUDA_SUCCESS && failed[i].is_none() {
                    failed[i] = Some(format!("cuMemcpyAsync: {rc:?}"));
                }
            }
        }
        let record = |&s: &sys::CUstream| -> Result<sys::CUevent, CopyError> {
            let e = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(driver("cuEventCreate"))?;
            // SAFETY: an event and a stream of this context.
            unsafe { result::event::record(e, s) }.map_err(driver("cuEventRecord"))?;
            Ok(e)
        };
        let events = self.streams.iter().map(record).collect::<Result<_, _>>()?;
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.subs).insert(
            ticket,
            Submission {
                events,
                pinned,
                failed,
                lens: batch.iter().map(CopyOp::len).collect(),
            },
        );
        Ok(Ticket(ticket))
    }

    fn poll(&self, ticket: Ticket) -> Option<Completion> {
        let _ = self.current();
        let mut subs = lock(&self.subs);
        let sub = subs.get(&ticket.0)?;
        let busy = |&e: &sys::CUevent| {
            // SAFETY: an event recorded by this engine, destroyed only in `finish`.
            unsafe { result::event::query(e) }.is_err()
        };
        if sub.events.iter().any(busy) {
            return None;
        }
        let sub = subs.remove(&ticket.0).expect("present");
        drop(subs);
        Some(self.finish(sub))
    }

    fn wait(&self, ticket: Ticket) -> Completion {
        let _ = self.current();
        let events = lock(&self.subs)
            .get(&ticket.0)
            .map(|s| s.events.clone())
            .expect("wait: the ticket is not in flight");
        for e in events {
            // SAFETY: events recorded by this engine, destroyed only in `finish`.
            let _ = unsafe { result::event::synchronize(e) };
        }
        self.poll(ticket).expect("complete after synchronizing")
    }

    /// Copies already queued on the GPU cannot be taken back: a cancelled submission completes.
    fn cancel(&self, _: Ticket) {}
}

impl Drop for Cuda {
    fn drop(&mut self) {
        let _ = self.current();
        for &s in &self.streams {
            // SAFETY: streams this engine created; submissions are complete (their scopes ended).
            unsafe {
                let _ = result::stream::synchronize(s);
                let _ = result::stream::destroy(s);
            }
        }
        // SAFETY: releases the retain of `open`.
        let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) };
    }
}

/// Memory on the GPU (a GPU-attached memory tier), freed on drop.
#[derive(Debug)]
pub struct DeviceBuffer<'a> {
    gpu: &'a Cuda,
    ptr: sys::CUdeviceptr,
    len: usize,
}

impl DeviceBuffer<'_> {
    /// Moves host bytes to the start of the buffer.
    pub fn upload(&mut self, host: &[u8]) -> Result<(), CopyError> {
        assert!(
            host.len() <= self.len,
            "upload: more bytes than the buffer holds"
        );
        self.gpu.current()?;
        // SAFETY: `host` is a live slice; the device range is ours and large enough.
        unsafe { result::memcpy_htod_sync(self.ptr, host) }.map_err(driver("cuMemcpyHtoD"))
    }

    /// Moves the buffer's first `host.len()` bytes back to host memory.
    pub fn download(&self, host: &mut [u8]) -> Result<(), CopyError> {
        assert!(
            host.len() <= self.len,
            "download: more bytes than the buffer holds"
        );
        self.gpu.current()?;
        // SAFETY: as above, in the other direction.
        unsafe { result::memcpy_dtoh_sync(host, self.ptr) }.map_err(driver("cuMemcpyDtoH"))
    }
}

impl Drop for DeviceBuffer<'_> {
    fn drop(&mut self) {
        let _ = self.gpu.current();
        // SAFETY: the allocation of `alloc`, no copy in flight (the copies are synchronous).
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::CopyEngine;

    fn gpu(test: &str) -> Option<Cuda> {
        match Cuda::open() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("skipped {test}: {e}");
                None
            }
        }
    }

    #[test]
    fn host_copies_through_the_gpu_copy_engines() {
        let Some(gpu) = gpu("host_copies_through_the_gpu_copy_engines") else {
            return;
        };
        let src: Vec<u8> = (0..(40 << 20) + 77).map(|i| (i * 31) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        let small = vec![9u8; 100];
        let mut small_dst = vec![0u8; 100];
        let stats = CopyEngine::copy(
            &gpu,
            &[
                CopyOp::new(&src, &mut dst),
                CopyOp::new(&small, &mut small_dst),
            ],
        )
        .unwrap();
        assert_eq!(stats.bytes, (src.len() + 100) as u64);
        assert_eq!(src, dst);
        assert_eq!(small, small_dst);
    }

    #[test]
    fn pages_go_to_gpu_memory_and_back() {
        let Some(gpu) = gpu("pages_go_to_gpu_memory_and_back") else {
            return;
        };
        let pages: Vec<u8> = (0..64 * 4096).map(|i| (i % 251) as u8).collect();
        let mut buf = gpu.alloc(pages.len()).unwrap();
        buf.upload(&pages).unwrap();
        let mut back = vec![0u8; pages.len()];
        buf.download(&mut back).unwrap();
        assert_eq!(pages, back);
    }
}
