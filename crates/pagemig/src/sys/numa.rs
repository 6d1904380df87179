//! NUMA memory policy and page placement: `mbind`, `move_pages`.

use std::ffi::{c_int, c_long, c_uint, c_ulong};

use super::{Errno, SysError};
use crate::topology::NodeSet;

const MPOL_BIND: c_int = 2;
const MPOL_MF_STRICT: c_uint = 1 << 0;
const MPOL_MF_MOVE: c_uint = 1 << 1;

/// A node mask as the kernel reads it, and the `maxnode` argument that goes with it.
///
/// The kernel drops the last bit of `maxnode` (it decrements it before use), so like libnuma we
/// pass one more than the number of bits in the mask.
fn node_mask(nodes: &NodeSet) -> (Vec<c_ulong>, c_ulong) {
    let bits = c_ulong::BITS as usize;
    let words = nodes.max().map_or(1, |m| m as usize / bits + 1);
    let mut mask = vec![0 as c_ulong; words];
    for n in nodes.iter() {
        mask[n as usize / bits] |= 1 << (n as usize % bits);
    }
    (mask, (words * bits + 1) as c_ulong)
}

/// `mbind(addr, len, MPOL_BIND, nodes, MPOL_MF_MOVE | MPOL_MF_STRICT)`.
pub(super) fn mbind_bind(addr: usize, len: usize, nodes: &NodeSet) -> Result<(), SysError> {
    if nodes.is_empty() {
        return Err(SysError::new("mbind", Errno::INVAL));
    }
    let (mask, maxnode) = node_mask(nodes);
    // SAFETY: mbind changes the placement policy of pages, never their contents; the caller owns
    // the range (it is a Mapping), and mask outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len,
            MPOL_BIND as c_long,
            mask.as_ptr(),
            maxnode,
            (MPOL_MF_MOVE | MPOL_MF_STRICT) as c_long,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(SysError::last("mbind"))
    }
}

/// Where one page is, as `move_pages(2)` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageNode {
    /// The page is present on this node.
    Node(u32),
    /// The kernel gave an error for this page (`ENOENT`: not present; `EFAULT`: not mapped; ...).
    Error(Errno),
}

/// Asks the kernel on which node each page is (`move_pages` with no target nodes).
///
/// `pid` 0 is the calling process. Addresses are page addresses in that process; they are not
/// dereferenced here, so any value is safe to pass.
pub fn query_page_nodes(pid: i32, pages: &[usize]) -> Result<Vec<PageNode>, SysError> {
    let mut status = vec![0 as c_int; pages.len()];
    // SAFETY: with nodes == NULL move_pages only reads `pages` and writes `status`, both of
    // `pages.len()` entries and alive across the call; it changes no memory of any process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            pid as c_long,
            pages.len() as c_ulong,
            pages.as_ptr(),
            std::ptr::null::<c_int>(),
            status.as_mut_ptr(),
            0 as c_long,
        )
    };
    if rc < 0 {
        return Err(SysError::last("move_pages"));
    }
    Ok(status
        .into_iter()
        .map(|s| {
            if s >= 0 {
                PageNode::Node(s as u32)
            } else {
                PageNode::Error(Errno::from_raw_os_error(-s))
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Mapping;

    #[test]
    fn mask_has_one_extra_maxnode_bit() {
        let (mask, maxnode) = node_mask(&"0,2,65".parse().unwrap());
        assert_eq!(mask, [0b101, 0b10]);
        assert_eq!(maxnode, 129);
    }

    #[test]
    fn bound_pages_land_on_the_bound_node() {
        let nodes = crate::topology::Topology::detect().unwrap().memory_nodes();
        let node = nodes.iter().next().unwrap();
        let mut m = Mapping::anonymous(16 * 4096).unwrap();
        m.bind(&NodeSet::from_iter([node])).unwrap();
        m.populate();
        let pages: Vec<usize> = (0..16).map(|i| m.as_ptr() as usize + i * 4096).collect();
        let placed = query_page_nodes(0, &pages).unwrap();
        assert!(
            placed.iter().all(|p| *p == PageNode::Node(node)),
            "{placed:?}"
        );
    }

    #[test]
    fn untouched_and_unmapped_pages_are_reported() {
        let m = Mapping::anonymous(4096).unwrap();
        let placed = query_page_nodes(0, &[m.as_ptr() as usize, 4096]).unwrap();
        assert_eq!(placed[0], PageNode::Error(Errno::NOENT));
        assert_eq!(placed[1], PageNode::Error(Errno::FAULT));
    }
}
