//! Intel Data Streaming Accelerator (DSA) through user-mode work queues (`/dev/dsa/wqD.Q`):
//! memmove and batch descriptors written to the queue's portal, completion records polled, a
//! partial completion (a page fault on the device) finished on the CPU, work split across every
//! usable queue of every device.
//!
//! The descriptor and completion-record layouts follow Intel's DSA specification (and Linux's
//! `include/uapi/linux/idxd.h`); they are tested without hardware.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{DmaKind, unavailable};
use crate::copy::{AsyncCopyEngine, Completion, CopyError, CopyOp, CopyStats, OpStatus, Ticket};
use crate::workers::lock;

/// Descriptor opcodes.
pub const OPCODE_BATCH: u8 = 0x01;
/// Memory move.
pub const OPCODE_MEMMOVE: u8 = 0x03;

/// Descriptor flags (bits 0..23 of bytes 4..6).
pub mod flags {
    /// Block on fault: the device waits for the page fault to be resolved.
    pub const BOF: u32 = 0x0002;
    /// Completion record address valid.
    pub const CRAV: u32 = 0x0004;
    /// Request a completion record.
    pub const RCR: u32 = 0x0008;
}

/// A 64-byte work descriptor, as the device reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Descriptor {
    bytes: [u8; 64],
}

impl Descriptor {
    /// A descriptor that asks for a completion record at `completion`.
    fn new(opcode: u8, completion: u64, a: u64, b: u64, size: u32) -> Self {
        let mut bytes = [0u8; 64];
        // Bytes 0..3: PASID (bits 0..19) and privilege (bit 31): zero; ENQCMD fills the PASID.
        let word = flags::CRAV | flags::RCR | (u32::from(opcode) << 24);
        bytes[4..8].copy_from_slice(&word.to_le_bytes());
        bytes[8..16].copy_from_slice(&completion.to_le_bytes());
        bytes[16..24].copy_from_slice(&a.to_le_bytes());
        bytes[24..32].copy_from_slice(&b.to_le_bytes());
        bytes[32..36].copy_from_slice(&size.to_le_bytes());
        Descriptor { bytes }
    }

    /// A memory move of `len` bytes, with a completion record at `completion`. Without block
    /// on fault: a page fault ends it early with the bytes done in the record.
    pub fn memmove(src: u64, dst: u64, len: u32, completion: u64) -> Self {
        Self::new(OPCODE_MEMMOVE, completion, src, dst, len)
    }

    /// A batch of `count` descriptors at `list` (64-byte aligned).
    pub fn batch(list: u64, count: u32, completion: u64) -> Self {
        Self::new(OPCODE_BATCH, completion, list, 0, count)
    }

    /// The 64 bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.bytes
    }
}

/// What a completion record's status byte says (bits 0..6; bit 7 tells a write fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not written yet.
    Pending,
    /// Done.
    Success,
    /// A page fault stopped the operation (no block on fault): `bytes_completed` are done.
    PageFault,
    /// One or more descriptors of a batch failed.
    BatchFail,
    /// Anything else, by its code.
    Error(u8),
}

/// A completion record as the device writes it (32 bytes, 32-byte aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct Record {
    bytes: [u8; 32],
}

/// A completion record's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The status.
    pub status: Status,
    /// The fault was on a write (status bit 7).
    pub write_fault: bool,
    /// Bytes done before a fault.
    pub bytes_completed: u32,
    /// Address that faulted.
    pub fault_addr: u64,
}

impl Record {
    /// A record the device has not written.
    pub const fn empty() -> Self {
        Record { bytes: [0; 32] }
    }

    /// Reads the fields; the status byte is read first, volatile, since the device writes it
    /// last.
    pub fn read(&self) -> Outcome {
        // SAFETY: a read of the record's first byte, which the device may write at any time.
        let code = unsafe { std::ptr::read_volatile(self.bytes.as_ptr()) };
        std::sync::atomic::fence(Ordering::Acquire);
        let status = match code & 0x7f {
            0 => Status::Pending,
            1 | 2 => Status::Success,
            3 => Status::PageFault,
            5 => Status::BatchFail,
            c => Status::Error(c),
        };
        Outcome {
            status,
            write_fault: code & 0x80 != 0,
            bytes_completed: u32::from_le_bytes(self.bytes[4..8].try_into().expect("4 bytes")),
            fault_addr: u64::from_le_bytes(self.bytes[8..16].try_into().expect("8 bytes")),
        }
    }
}

/// A user work queue from sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkQueue {
    /// `wq0.0`.
    pub name: String,
    /// Shared (ENQCMD) or dedicated (MOVDIR64B).
    pub shared: bool,
    /// Descriptors it holds.
    pub size: usize,
    /// Largest transfer of one descriptor.
    pub max_transfer: u64,
    /// Largest batch.
    pub max_batch: usize,
    /// Its character device.
    pub device: PathBuf,
}

/// The enabled user work queues under `sysfs` (`/sys`) and `dev` (`/dev`), or which check
/// failed: no idxd driver, no enabled user queue.
pub fn work_queues(sysfs: &Path, dev: &Path) -> Result<Vec<WorkQueue>, CopyError> {
    let bus = sysfs.join("bus/dsa/devices");
    let entries = std::fs::read_dir(&bus).map_err(|_| {
        unavailable(
            DmaKind::Dsa,
            format!(
                "no idxd driver ({} does not exist; modprobe idxd, on a CPU with DSA)",
                bus.display()
            ),
        )
    })?;
    let read = |dir: &Path, f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let mut queues = Vec::new();
    let mut seen = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("wq") {
            continue;
        }
        let dir = e.path();
        let (kind, state) = (read(&dir, "type"), read(&dir, "state"));
        seen.push(format!("{name}: type {kind}, state {state}"));
        if kind != "user" || state != "enabled" {
            continue;
        }
        queues.push(WorkQueue {
            shared: read(&dir, "mode") == "shared",
            size: read(&dir, "size").parse().unwrap_or(0),
            max_transfer: read(&dir, "max_transfer_size").parse().unwrap_or(0),
            max_batch: read(&dir, "max_batch_size").parse().unwrap_or(0),
            device: dev.join("dsa").join(&name),
            name,
        });
    }
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    if queues.is_empty() {
        return Err(unavailable(
            DmaKind::Dsa,
            format!(
                "no enabled user work queue (configure one with accel-config){}",
                if seen.is_empty() {
                    String::new()
                } else {
                    format!("; found {}", seen.join("; "))
                }
            ),
        ));
    }
    Ok(queues)
}

/// A queue opened for submission.
#[derive(Debug)]
struct Open {
    queue: WorkQueue,
    portal: crate::sys::dsa::Portal,
    /// Descriptors in flight (dedicated queues must not take more than their size).
    in_flight: AtomicUsize,
}

/// The part of an op one memmove descriptor copies.
#[derive(Debug)]
struct Piece {
    op: usize,
    /// Offset in the op.
    off: usize,
    src: usize,
    dst: usize,
    len: usize,
    queue: usize,
    /// Boxed so that its address stays fixed while the device writes it.
    record: Box<Record>,
    /// The batch list it went in, if any.
    batch: Option<usize>,
}

/// The pieces and batch lists of one submission.
#[derive(Debug)]
struct Submission {
    pieces: Vec<Piece>,
    /// Batch descriptor lists and their records (kept alive, at fixed addresses, for the device).
    lists: Vec<(Box<[Descriptor]>, Box<Record>)>,
    ops: usize,
}

/// DSA as a copy engine: every enabled user work queue of every device.
#[derive(Debug)]
pub struct Dsa {
    queues: Vec<Open>,
    next_queue: AtomicUsize,
    next_ticket: AtomicU64,
    subs: Mutex<HashMap<u64, Submission>>,
}

impl Dsa {
    /// Opens every usable queue, or says which check failed (no idxd driver, no enabled user
    /// work queue, CPU without ENQCMD/MOVDIR64B, no permission on the device).
    pub fn open() -> Result<Self, CopyError> {
        let mut queues = Vec::new();
        let mut refused = Vec::new();
        for q in work_queues(Path::new("/sys"), Path::new("/dev"))? {
            if !crate::sys::dsa::cpu_can_submit(q.shared) {
                refused.push(format!(
                    "{}: the CPU lacks {}",
                    q.name,
                    if q.shared { "ENQCMD" } else { "MOVDIR64B" }
                ));
                continue;
            }
            match crate::sys::dsa::Portal::open(&q.device) {
                Ok(portal) => queues.push(Open {
                    queue: q,
                    portal,
                    in_flight: AtomicUsize::new(0),
                }),
                Err(e) => refused.push(format!(
                    "{}: {e}{}",
                    q.device.display(),
                    if e.errno == rustix::io::Errno::ACCESS || e.errno == rustix::io::Errno::PERM {
                        " (no permission: run as root or join the group that owns the device)"
                    } else {
                        ""
                    }
                )),
            }
        }
        if queues.is_empty() {
            return Err(unavailable(DmaKind::Dsa, refused.join("; ")));
        }
        Ok(Dsa {
            queues,
            next_queue: AtomicUsize::new(0),
            next_ticket: AtomicU64::new(0),
            subs: Mutex::new(HashMap::new()),
        })
    }

    /// Writes a descriptor to queue `q`, waiting while the queue is full.
    ///
    /// # Safety
    /// As [`crate::sys::dsa::Portal::enqcmd`].
    unsafe fn send(&self, q: usize, d: &Descriptor) {
        let open = &self.queues[q];
        if open.queue.shared {
            // SAFETY: the caller's promise; a full shared queue refuses and we try again.
            while !unsafe { open.portal.enqcmd(d.as_bytes()) } {
                std::hint::spin_loop();
            }
        } else {
            while open.in_flight.load(Ordering::Acquire) >= open.queue.size.max(1) {
                std::thread::yield_now();
            }
            // SAFETY: the caller's promise; the queue has room (counted above).
            unsafe { open.portal.movdir64b(d.as_bytes()) };
        }
        open.in_flight.fetch_add(1, Ordering::AcqRel);
    }
}

/// Finishes a piece the device stopped early (a page fault) on the CPU, or says why it failed.
fn finish(src: usize, dst: usize, len: usize, outcome: Outcome) -> Result<(), (usize, String)> {
    let done = outcome.bytes_completed as usize;
    match outcome.status {
        Status::Success => Ok(()),
        Status::PageFault if done <= len => {
            let (src, dst) = ((src + done) as *const u8, (dst + done) as *mut u8);
            // SAFETY: the submission's contract keeps both ranges valid, disjoint and ours; the
            // CPU's own access faults the page in.
            unsafe { std::ptr::copy_nonoverlapping(src, dst, len - done) };
            Ok(())
        }
        other => Err((done, format!("the device reported {other:?}"))),
    }
}

impl AsyncCopyEngine for Dsa {
    fn name(&self) -> String {
        format!("dsa({} queues)", self.queues.len())
    }

    unsafe fn submit(&self, batch: &[CopyOp<'_>]) -> Result<Ticket, CopyError> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let mut pieces = Vec::new();
        for (op, o) in batch.iter().enumerate() {
            let mut off = 0;
            while off < o.len() {
                let queue = self.next_queue.fetch_add(1, Ordering::Relaxed) % self.queues.len();
                let max = self.queues[queue].queue.max_transfer;
                let len = (max.clamp(4096, u32::MAX as u64) as usize).min(o.len() - off);
                pieces.push(Piece {
                    op,
                    off,
                    src: o.src() as usize + off,
                    dst: o.dst() as usize + off,
                    len,
                    queue,
                    record: Box::new(Record::empty()),
                    batch: None,
                });
                off += len;
            }
        }
        // Group each queue's pieces into batches (one descriptor when alone).
        let mut lists = Vec::new();
        for q in 0..self.queues.len() {
            let mine: Vec<usize> = (0..pieces.len())
                .filter(|&i| pieces[i].queue == q)
                .collect();
            for group in mine.chunks(self.queues[q].queue.max_batch.max(1)) {
                let descs: Vec<Descriptor> = group
                    .iter()
                    .map(|&i| {
                        let p = &pieces[i];
                        let record = &*p.record as *const Record as u64;
                        Descriptor::memmove(p.src as u64, p.dst as u64, p.len as u32, record)
                    })
                    .collect();
                if let [single] = descs[..] {
                    // SAFETY: the descriptor's addresses are the op's (valid until completion by
                    // submit's contract) and a boxed record that lives in the submission.
                    unsafe { self.send(q, &single) };
                    continue;
                }
                let list: Box<[Descriptor]> = descs.into_boxed_slice();
                let rec = Box::new(Record::empty());
                let record = &*rec as *const Record as u64;
                let d = Descriptor::batch(list.as_ptr() as u64, list.len() as u32, record);
                // SAFETY: as above; the list and its record are kept with the submission.
                unsafe { self.send(q, &d) };
                for &i in group {
                    pieces[i].batch = Some(lists.len());
                }
                lists.push((list, rec));
            }
        }
        let sub = Submission {
            pieces,
            lists,
            ops: batch.len(),
        };
        lock(&self.subs).insert(ticket, sub);
        Ok(Ticket(ticket))
    }

    fn poll(&self, ticket: Ticket) -> Option<Completion> {
        let mut subs = lock(&self.subs);
        let sub = subs.get(&ticket.0)?;
        // A batch that failed as a whole writes no record of its own descriptors.
        let batch_failed = |p: &Piece| {
            p.batch.is_some_and(|b| {
                !matches!(
                    sub.lists[b].1.read().status,
                    Status::Pending | Status::Success | Status::BatchFail
                )
            })
        };
        if (sub.pieces.iter())
            .any(|p| p.record.read().status == Status::Pending && !batch_failed(p))
        {
            return None;
        }
        let sub = subs.remove(&ticket.0).expect("present");
        drop(subs);
        let mut ops: Vec<OpStatus> = vec![OpStatus::Done; sub.ops];
        let mut bytes = 0u64;
        for p in &sub.pieces {
            self.queues[p.queue]
                .in_flight
                .fetch_sub(1, Ordering::AcqRel);
            let outcome = match (p.record.read(), p.batch) {
                (o, Some(b)) if o.status == Status::Pending => sub.lists[b].1.read(),
                (o, _) => o,
            };
            match finish(p.src, p.dst, p.len, outcome) {
                Ok(()) => bytes += p.len as u64,
                Err((done, reason)) => {
                    bytes += done as u64;
                    if ops[p.op] == OpStatus::Done {
                        ops[p.op] = OpStatus::Failed {
                            copied: p.off + done,
                            reason,
                        };
                    }
                }
            }
        }
        Some(Completion {
            ops,
            stats: CopyStats {
                bytes,
                ops: sub.ops as u64,
                ..CopyStats::default()
            },
        })
    }

    fn wait(&self, ticket: Ticket) -> Completion {
        loop {
            if let Some(c) = self.poll(ticket) {
                return c;
            }
            std::hint::spin_loop();
        }
    }

    /// Descriptors are handed to the device at submission and DSA has no per-descriptor abort:
    /// a cancelled submission still completes.
    fn cancel(&self, _: Ticket) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::CopyEngine;

    #[test]
    fn a_memmove_descriptor_has_the_specification_layout() {
        let d = Descriptor::memmove(
            0x1111_2222_3333_4444,
            0x5555_6666_7777_8888,
            0x10_0000,
            0xabc0,
        );
        let b = d.as_bytes();
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        assert_eq!(std::mem::size_of::<Descriptor>(), 64);
        assert_eq!(std::mem::align_of::<Descriptor>(), 64);
        // PASID and privilege: zero (ENQCMD supplies the PASID).
        assert_eq!(&b[0..4], &[0, 0, 0, 0]);
        // Flags in bytes 4..6 (CRAV | RCR = 0x0c), opcode in byte 7.
        assert_eq!(&b[4..8], &[0x0c, 0x00, 0x00, OPCODE_MEMMOVE]);
        assert_eq!(u64_at(8), 0xabc0);
        assert_eq!(u64_at(16), 0x1111_2222_3333_4444);
        assert_eq!(u64_at(24), 0x5555_6666_7777_8888);
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 0x10_0000);
        // Interrupt handle, reserved and operation-specific bytes: zero.
        assert!(b[36..].iter().all(|&x| x == 0));
        // No block on fault: a fault ends the descriptor early, the CPU finishes.
        assert_eq!(u32::from(b[4]) & flags::BOF, 0);
    }

    #[test]
    fn a_batch_descriptor_points_at_its_list() {
        let d = Descriptor::batch(0x7000, 17, 0x8000);
        let b = d.as_bytes();
        assert_eq!(b[7], OPCODE_BATCH);
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 0x7000);
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 0);
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 17);
    }

    fn record(status: u8, done: u32, fault: u64) -> Record {
        let mut bytes = [0u8; 32];
        bytes[0] = status;
        bytes[4..8].copy_from_slice(&done.to_le_bytes());
        bytes[8..16].copy_from_slice(&fault.to_le_bytes());
        Record { bytes }
    }

    #[test]
    fn completion_records_parse() {
        assert_eq!(std::mem::size_of::<Record>(), 32);
        assert_eq!(std::mem::align_of::<Record>(), 32);
        assert_eq!(Record::empty().read().status, Status::Pending);
        assert_eq!(record(1, 0, 0).read().status, Status::Success);
        let o = record(0x83, 8192, 0xdead_b000).read();
        assert_eq!(o.status, Status::PageFault);
        assert!(o.write_fault);
        assert_eq!(o.bytes_completed, 8192);
        assert_eq!(o.fault_addr, 0xdead_b000);
        assert_eq!(record(5, 0, 0).read().status, Status::BatchFail);
        assert_eq!(record(0x10, 0, 0).read().status, Status::Error(0x10));
    }

    #[test]
    fn a_page_fault_is_finished_on_the_cpu() {
        let src: Vec<u8> = (0..20_000).map(|i| i as u8 | 1).collect();
        let mut dst = vec![0u8; 20_000];
        // The device copied the first 8192 bytes, then faulted.
        dst[..8192].copy_from_slice(&src[..8192]);
        let (s, d) = (src.as_ptr() as usize, dst.as_mut_ptr() as usize);
        finish(s, d, 20_000, record(3, 8192, 0).read()).unwrap();
        assert_eq!(src, dst);
        let err = finish(s, d, 20_000, record(0x13, 100, 0).read()).unwrap_err();
        assert_eq!(err.0, 100);
        assert!(err.1.contains("Error(19)"), "{}", err.1);
    }

    #[test]
    fn work_queues_say_which_check_failed() {
        let dir = tempfile::tempdir().unwrap();
        let err = work_queues(dir.path(), dir.path()).unwrap_err().to_string();
        assert!(err.contains("no idxd driver"), "{err}");
        let wq = dir.path().join("bus/dsa/devices/wq0.0");
        std::fs::create_dir_all(&wq).unwrap();
        for (f, v) in [("type", "kernel"), ("state", "enabled")] {
            std::fs::write(wq.join(f), v).unwrap();
        }
        let err = work_queues(dir.path(), dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("no enabled user work queue") && err.contains("wq0.0: type kernel"),
            "{err}"
        );
        for (f, v) in [
            ("type", "user"),
            ("mode", "shared"),
            ("size", "128"),
            ("max_transfer_size", "2097152"),
            ("max_batch_size", "32"),
        ] {
            std::fs::write(wq.join(f), v).unwrap();
        }
        let qs = work_queues(dir.path(), Path::new("/dev")).unwrap();
        assert_eq!(
            qs,
            [WorkQueue {
                name: "wq0.0".into(),
                shared: true,
                size: 128,
                max_transfer: 2 << 20,
                max_batch: 32,
                device: "/dev/dsa/wq0.0".into(),
            }]
        );
    }

    #[test]
    fn copies_through_dsa_where_present() {
        let dsa = match Dsa::open() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipped copies_through_dsa_where_present: {e}");
                return;
            }
        };
        let src: Vec<u8> = (0..(6 << 20) + 123).map(|i| (i * 7) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        let stats = CopyEngine::copy(&dsa, &[CopyOp::new(&src, &mut dst)]).unwrap();
        assert_eq!(stats.bytes, src.len() as u64);
        assert_eq!(src, dst);
    }
}
