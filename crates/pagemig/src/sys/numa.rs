//! NUMA memory policy and page placement: `mbind`, `move_pages`, `migrate_pages`.

use std::ffi::{c_int, c_long, c_ulong};

use super::{Errno, ForeignOut, SysError};
use crate::topology::NodeSet;

const MPOL_BIND: c_int = 2;
const MPOL_MF_STRICT: c_int = 1 << 0;
/// `MPOL_MF_MOVE`: move pages mapped by this process only.
pub const MPOL_MF_MOVE: c_int = 1 << 1;
/// `MPOL_MF_MOVE_ALL`: also move pages shared with other processes (needs `CAP_SYS_NICE`).
pub const MPOL_MF_MOVE_ALL: c_int = 1 << 2;

/// A node mask as the kernel reads it, and its `maxnode`: the kernel drops the last bit of
/// `maxnode`, so like libnuma we pass one more than the bits in the mask.
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
    SysError::check("mbind", rc).map(drop)
}

/// Where one page is, as `move_pages(2)` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageNode {
    /// The page is present on this node.
    Node(u32),
    /// The kernel gave an error for this page (`ENOENT`: not present; `EFAULT`: not mapped; ...).
    Error(Errno),
}

impl PageNode {
    /// Decodes one entry of a `move_pages` status array.
    pub fn from_status(status: i32) -> Self {
        if status >= 0 {
            PageNode::Node(status as u32)
        } else {
            PageNode::Error(Errno::from_raw_os_error(-status))
        }
    }
}

/// `move_pages(2)`: moves page `pages[i]` of process `pid` (0: the caller) to node `nodes[i]`
/// (`None`: only asks where it is) and writes its node, or `-errno`, into `status[i]`.
///
/// Returns the number of pages left behind for transient reasons (busy, locked). `move_all`
/// also moves pages shared with other processes. Moving pages never changes what they hold,
/// so any address may be passed.
///
/// # Panics
/// If `status` (or `nodes`) is not as long as `pages`.
pub fn move_pages(
    pid: i32,
    pages: &[usize],
    nodes: Option<&[i32]>,
    status: &mut [i32],
    move_all: bool,
) -> Result<usize, SysError> {
    // Checked here too, before the nodes: a call with both wrong names the status length.
    assert_eq!(pages.len(), status.len(), "move_pages: status length");
    if let Some(n) = nodes {
        assert_eq!(pages.len(), n.len(), "move_pages: nodes length");
    }
    let flags = if move_all {
        MPOL_MF_MOVE_ALL
    } else {
        MPOL_MF_MOVE
    };
    let count = pages.len() as c_ulong;
    let pages = pages.as_ptr() as usize;
    let nodes = nodes.map_or(0, |n| n.as_ptr() as usize);
    move_pages_unchanged(pid, count, pages, nodes, status.into(), flags)
}

/// `migrate_pages(2)`: moves every page of process `pid` on a node of `old` to the node of
/// `new` at the same position. `maxnode` is the kernel's argument (bits in the masks plus one).
/// Returns the number of pages that could not be moved.
///
/// # Panics
/// If a mask is shorter than `maxnode - 1` bits.
pub fn migrate_pages(
    pid: i32,
    maxnode: u64,
    old: &[c_ulong],
    new: &[c_ulong],
) -> Result<usize, SysError> {
    let words = (maxnode.saturating_sub(1) as usize).div_ceil(c_ulong::BITS as usize);
    assert!(
        old.len() >= words && new.len() >= words,
        "migrate_pages: masks shorter than maxnode"
    );
    migrate_pages_unchanged(pid, maxnode, old.as_ptr() as usize, new.as_ptr() as usize)
}

/// `move_pages(2)` with the caller's raw arguments, for callers (the C library) that must give
/// the kernel's own answer: `pages` and `nodes` are the addresses of the caller's arrays, which
/// the kernel checks itself (`EFAULT`); it writes only `status`, which must hold `count`
/// entries (`EINVAL` otherwise, nothing written).
pub fn move_pages_unchanged(
    pid: c_int,
    count: c_ulong,
    pages: usize,
    nodes: usize,
    status: ForeignOut<'_>,
    flags: c_int,
) -> Result<usize, SysError> {
    if count as usize != status.len() {
        return Err(SysError::new("move_pages", Errno::INVAL));
    }
    // SAFETY: the kernel reads `pages` and `nodes` with copy_from_user (EFAULT where bad) and
    // writes at most `count` entries of `status`, which was handed over to be written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            pid as c_long,
            count,
            pages,
            nodes,
            status.as_ptr(),
            flags as c_long,
        )
    };
    SysError::check("move_pages", rc)
}

/// Where each page of a caller's array (`pages`: the address of `count` page addresses) is,
/// asked before anything else of the call is mapped: an address unmapped when the call began
/// must be `EFAULT` whatever is mapped there later.
///
/// The answer goes into a mapping made for it, the one thing mapped before the kernel looks:
/// an address of this process inside it was unmapped when asked, so its entry is `-EFAULT`.
pub fn query_pages_unchanged(
    pid: c_int,
    count: usize,
    pages: usize,
) -> Result<Vec<c_int>, SysError> {
    let entry = std::mem::size_of::<c_int>();
    // A count no answer array can hold is the kernel's ENOMEM, not a wrapped (too small) size.
    let len = count
        .checked_mul(entry)
        .and_then(|bytes| {
            bytes
                .max(1)
                .checked_next_multiple_of(super::base_page_size())
        })
        .ok_or(SysError::new("move_pages", Errno::NOMEM))?;
    let answers = super::Mapping::anonymous(len)?;
    let own = answers.as_ptr() as usize..answers.as_ptr() as usize + answers.len();
    // SAFETY: the mapping is this function's own, page-aligned and at least `count` ints long;
    // only the kernel writes it, and it is read below only after the call.
    let status = unsafe { ForeignOut::new(answers.as_ptr().cast_mut().cast(), count) };
    move_pages_unchanged(pid, count as c_ulong, pages, 0, status, 0)?;
    let mut out: Vec<c_int> = answers.as_slice()[..count * entry]
        .chunks_exact(entry)
        .map(|b| c_int::from_ne_bytes(b.try_into().expect("one int")))
        .collect();
    if pid == 0 || pid as u32 == std::process::id() {
        let addrs = super::read_own::<usize>(pages, count)?;
        for (s, a) in out.iter_mut().zip(addrs) {
            if own.contains(&a) {
                *s = -libc::EFAULT;
            }
        }
    }
    Ok(out)
}

/// `migrate_pages(2)` with the caller's raw arguments (see [`move_pages_unchanged`]): `old` and
/// `new` are the addresses of the masks, which the kernel only reads, checking them.
pub fn migrate_pages_unchanged(
    pid: c_int,
    maxnode: c_ulong,
    old: usize,
    new: usize,
) -> Result<usize, SysError> {
    // SAFETY: migrate_pages only reads the two masks, with copy_from_user (EFAULT for a bad
    // pointer), and preserves the contents of every page it moves.
    let rc = unsafe { libc::syscall(libc::SYS_migrate_pages, pid as c_long, maxnode, old, new) };
    SysError::check("migrate_pages", rc)
}

/// Asks the kernel on which node each page (an address in process `pid`, 0: this one) is.
pub fn query_page_nodes(pid: i32, pages: &[usize]) -> Result<Vec<PageNode>, SysError> {
    let mut status = vec![0; pages.len()];
    move_pages(pid, pages, None, &mut status, false)?;
    Ok(status.into_iter().map(PageNode::from_status).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Mapping;

    #[test]
    fn a_count_no_answer_array_can_hold_is_refused() {
        for count in [usize::MAX, usize::MAX / 4 + 1, usize::MAX / 4] {
            let e = query_pages_unchanged(0, count, 0).unwrap_err();
            assert_eq!(
                (e.call, e.errno),
                ("move_pages", Errno::NOMEM),
                "count {count}"
            );
        }
    }

    #[test]
    fn a_status_array_not_count_long_is_einval() {
        let m = Mapping::anonymous(4 * 4096).unwrap();
        let pages: Vec<usize> = (0..4).map(|i| m.as_ptr() as usize + i * 4096).collect();
        for len in [0, 3, 5] {
            let mut status = vec![-7; len];
            let e = move_pages_unchanged(
                0,
                pages.len() as c_ulong,
                pages.as_ptr() as usize,
                0,
                (&mut status[..]).into(),
                0,
            )
            .unwrap_err();
            assert_eq!((e.call, e.errno), ("move_pages", Errno::INVAL), "{len}");
            assert!(status.iter().all(|&s| s == -7), "{len}");
        }
    }

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

    #[test]
    #[should_panic(expected = "move_pages: status length")]
    fn the_status_length_is_checked_before_the_nodes_length() {
        move_pages(0, &[4096], Some(&[]), &mut [], false).ok();
    }
}
