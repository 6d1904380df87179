/* libpagemig: move_pages(2) and migrate_pages(2) with the system calls' semantics, executed by
 * pagemig (pages grouped by target node, batches split over pinned threads). Flags are those of
 * <numaif.h>: MPOL_MF_MOVE (2), MPOL_MF_MOVE_ALL (4). Settings from the environment:
 * PAGEMIG_THREADS (auto or a count), PAGEMIG_LOG=1 (one line per call on stderr), PAGEMIG_MODEL. */

#ifndef PAGEMIG_H
#define PAGEMIG_H

/* Generated from crates/pagemig-ffi/src/lib.rs by cbindgen: edit that file, then run
   PAGEMIG_BLESS=1 cargo test -p pagemig-ffi --test header */

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/*
 Moves page `pages[i]` of process `pid` (0: the caller) to node `nodes[i]` and writes the node
 it is on afterwards, or a negative errno, to `status[i]`; with `nodes` NULL, only reports
 where each page is. `flags` is `MPOL_MF_MOVE` or `MPOL_MF_MOVE_ALL`. Returns 0, the number of
 pages left behind, or -1 with `errno` set, exactly as `move_pages(2)`.

 # Safety
 As for `move_pages(2)`: `status` is an array of `count` ints the function may write.
 */
long pagemig_move_pages(int pid,
                        unsigned long count,
                        void **pages,
                        const int *nodes,
                        int *status,
                        int flags);

/*
 Moves every page of process `pid` on a node of `old_nodes` to the node at the same position
 in `new_nodes` (`maxnode` is one more than the bits of each mask). Returns the number of
 pages that could not be moved, or -1 with `errno` set, exactly as `migrate_pages(2)`.

 # Safety
 As for `migrate_pages(2)`: the masks are only read.
 */
long pagemig_migrate_pages(int pid,
                           unsigned long maxnode,
                           const unsigned long *old_nodes,
                           const unsigned long *new_nodes);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* PAGEMIG_H */
