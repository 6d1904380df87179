//! Per-node reservoirs of pre-faulted pages, so that the remap path allocates and zeroes no page
//! on its hot path.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::sys::{HUGE_PAGE_SIZE, Mapping, SysError};
use crate::topology::{NodeId, NodeSet};

/// Chunks of pages already faulted in on their node, by (node, huge pages, length), up to a
/// memory cap; threads may share them. Chunks hold stale data: the remap path overwrites a
/// chunk's pages by copying or drops them, so no byte of a previous owner is seen.
#[derive(Debug)]
pub struct Reservoirs {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    held: usize,
    chunks: HashMap<(NodeId, bool, usize), Vec<Mapping>>,
}

impl Reservoirs {
    /// Empty reservoirs that will hold at most `cap_bytes` in all.
    pub fn new(cap_bytes: usize) -> Self {
        Reservoirs {
            cap: cap_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).held
    }

    /// Pre-faults up to `count` chunks of `len` bytes on `node` (2 MB pages with `huge`), off the
    /// hot path; stops at the cap. Returns the chunks added.
    pub fn fill(
        &self,
        node: NodeId,
        huge: bool,
        len: usize,
        count: usize,
    ) -> Result<usize, SysError> {
        let mut added = 0;
        for _ in 0..count {
            if self.held() + len > self.cap {
                break;
            }
            // 2 MB-aligned also for base pages: `mremap` then moves whole page tables (16 MiB of
            // 4 KB pages: 6 us aligned, 65 us not).
            let mut m = Mapping::anonymous_aligned(len, HUGE_PAGE_SIZE)?;
            if huge {
                m.advise_huge_pages()?;
            } else {
                m.advise_no_huge_pages()?;
            }
            m.bind(&NodeSet::from_iter([node]))?;
            m.populate();
            if !self.give(node, huge, m) {
                break;
            }
            added += 1;
        }
        Ok(added)
    }

    /// A chunk of exactly `len` bytes on `node`, if one is held.
    pub(crate) fn take(&self, node: NodeId, huge: bool, len: usize) -> Option<Mapping> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let m = inner.chunks.get_mut(&(node, huge, len))?.pop()?;
        inner.held -= len;
        Some(m)
    }

    /// Keeps `chunk` for later if it fits under the cap (returns true); drops it otherwise.
    pub(crate) fn give(&self, node: NodeId, huge: bool, chunk: Mapping) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let len = chunk.len();
        if inner.held + len > self.cap {
            return false;
        }
        inner.held += len;
        inner
            .chunks
            .entry((node, huge, len))
            .or_default()
            .push(chunk);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_and_chunks_come_back_by_size() {
        let node = crate::topology::Topology::detect()
            .unwrap()
            .memory_nodes()
            .iter()
            .next()
            .unwrap();
        let r = Reservoirs::new(3 << 20);
        assert_eq!(r.fill(node, false, 1 << 20, 5).unwrap(), 3);
        assert_eq!(r.held(), 3 << 20);
        assert!(r.take(node, false, 2 << 20).is_none());
        assert!(r.take(node, true, 1 << 20).is_none());
        let m = r.take(node, false, 1 << 20).unwrap();
        assert_eq!(r.held(), 2 << 20);
        assert!(r.give(node, false, m));
        assert!(
            !r.give(node, false, Mapping::anonymous(1 << 20).unwrap()),
            "over the cap"
        );
    }
}
