//! One copy of `len` bytes from a source to a destination that does not overlap it.
#![allow(unsafe_code)]

use std::marker::PhantomData;

use super::kernels::Kernel;

/// A copy of `len` bytes from `src` to `dst`, borrowed for `'a`.
///
/// Built safely from slices, where the borrow checker proves that no two ops of a batch alias a
/// destination, or with [`CopyOp::from_raw`] for memory the borrow checker cannot see (another
/// mapping being migrated). Not `Sync`: an op cannot be handed to two copies at once.
#[derive(Debug)]
pub struct CopyOp<'a> {
    src: *const u8,
    dst: *mut u8,
    len: usize,
    _borrow: PhantomData<(&'a [u8], &'a mut [u8])>,
}

impl<'a> CopyOp<'a> {
    /// Copies all of `src` into `dst`.
    ///
    /// # Panics
    /// If the lengths differ, like [`slice::copy_from_slice`].
    pub fn new(src: &'a [u8], dst: &'a mut [u8]) -> Self {
        assert_eq!(
            src.len(),
            dst.len(),
            "CopyOp: source and destination lengths differ"
        );
        Self {
            src: src.as_ptr(),
            dst: dst.as_mut_ptr(),
            len: src.len(),
            _borrow: PhantomData,
        }
    }

    /// An op over raw addresses.
    ///
    /// # Safety
    /// For `'a`, `src..src+len` must be readable, `dst..dst+len` writable, the two ranges must not
    /// overlap, and nothing else may write to either range or read `dst` while an engine copies.
    pub unsafe fn from_raw(src: *const u8, dst: *mut u8, len: usize) -> Self {
        Self {
            src,
            dst,
            len,
            _borrow: PhantomData,
        }
    }

    /// Source start.
    pub fn src(&self) -> *const u8 {
        self.src
    }

    /// Destination start.
    pub fn dst(&self) -> *mut u8 {
        self.dst
    }

    /// Bytes to copy.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the op copies nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies with one call of `kernel` (with the contract of `ptr::copy_nonoverlapping`) per
    /// `piece` bytes (the last call takes what is left).
    pub(crate) fn run_pieces(&self, piece: usize, kernel: Kernel) {
        for (at, n) in self.pieces(piece) {
            // SAFETY: the constructors guarantee both ranges are valid, disjoint and exclusively
            // ours for 'a, which outlives &self; at..at + n is inside both.
            unsafe { kernel(self.dst.add(at), self.src.add(at), n) }
        }
    }

    /// The op cut into pieces of `piece` bytes (the last takes what is left), in order, as
    /// `(offset, length)`.
    pub(crate) fn pieces(&self, piece: usize) -> impl Iterator<Item = (usize, usize)> {
        let (len, piece) = (self.len, piece.max(1));
        (0..len)
            .step_by(piece)
            .map(move |at| (at, piece.min(len - at)))
    }
}
