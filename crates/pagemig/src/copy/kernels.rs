//! Copy loops: plain memcpy, non-temporal stores (AVX-512, AVX2, SSE2), `rep movsb`, and the
//! kernel's `copy_page` (`rep movsq`).
//!
//! # Safety
//! Each has the contract of `ptr::copy_nonoverlapping(src, dst, len)` with the arguments in
//! `(dst, src, len)` order: `src` readable and `dst` writable for `len` bytes, no overlap; the
//! CPU must have the instructions a kernel uses.
#![allow(unsafe_code)]

/// A copy loop: `(dst, src, len)`, with the contract of `ptr::copy_nonoverlapping`.
pub(crate) type Kernel = unsafe fn(*mut u8, *const u8, usize);

/// Plain `memcpy` from the C library (through `ptr::copy_nonoverlapping`).
pub(super) unsafe fn memcpy(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// `rep movsb`, which CPUs with ERMS/FSRM run as a fast microcoded copy.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn rep_movsb(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: rep movsb copies rcx bytes from [rsi] to [rdi] with the direction flag clear (the
    // ABI guarantees DF = 0 on entry); the caller guarantees both ranges.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
}

/// `rep movsq` over the whole quadwords, then the remaining bytes: what Linux's x86-64
/// `copy_page` (arch/x86/lib/copy_page_64.S) runs on CPUs with `REP_GOOD`, for one 4 KB page.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn rep_movsq(dst: *mut u8, src: *const u8, len: usize) {
    let words = len / 8;
    // SAFETY: rep movsq copies rcx quadwords from [rsi] to [rdi] with the direction flag clear
    // (DF = 0 on entry by the ABI), then the tail below; all within the caller's ranges.
    unsafe {
        std::arch::asm!(
            "rep movsq",
            inout("rcx") words => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
        std::ptr::copy_nonoverlapping(src.add(words * 8), dst.add(words * 8), len % 8);
    }
}

/// A non-temporal copy with `$v`-byte streaming stores: the destination bypasses the caches.
/// The three vector widths differ only in their types and intrinsics.
macro_rules! stream_kernel {
    ($(#[$attr:meta])* $name:ident, $v:literal, $vec:ident, $load:ident, $store:ident) => {
        $(#[$attr])*
        #[cfg(target_arch = "x86_64")]
        pub(super) unsafe fn $name(dst: *mut u8, src: *const u8, len: usize) {
            use std::arch::x86_64::{$load, $store, $vec, _mm_sfence};
            const V: usize = $v;
            let head = dst.align_offset(V).min(len);
            // SAFETY: all offsets stay below len; the caller guarantees the ranges, and the
            // streaming stores go to V-byte aligned addresses (dst + head is aligned).
            unsafe {
                std::ptr::copy_nonoverlapping(src, dst, head);
                let (mut s, mut d, mut n) = (src.add(head), dst.add(head), len - head);
                while n >= 4 * V {
                    let a = $load(s.cast::<$vec>());
                    let b = $load(s.add(V).cast::<$vec>());
                    let c = $load(s.add(2 * V).cast::<$vec>());
                    let e = $load(s.add(3 * V).cast::<$vec>());
                    $store(d.cast::<$vec>(), a);
                    $store(d.add(V).cast::<$vec>(), b);
                    $store(d.add(2 * V).cast::<$vec>(), c);
                    $store(d.add(3 * V).cast::<$vec>(), e);
                    (s, d, n) = (s.add(4 * V), d.add(4 * V), n - 4 * V);
                }
                while n >= V {
                    $store(d.cast::<$vec>(), $load(s.cast::<$vec>()));
                    (s, d, n) = (s.add(V), d.add(V), n - V);
                }
                std::ptr::copy_nonoverlapping(s, d, n);
                // Streaming stores are weakly ordered: make them visible before the copy counts
                // as done.
                _mm_sfence();
            }
        }
    };
}

stream_kernel!(
    /// Non-temporal copy with 64-byte AVX-512 streaming stores (AVX-512F).
    #[target_feature(enable = "avx512f")]
    stream_avx512, 64, __m512i, _mm512_loadu_si512, _mm512_stream_si512
);
stream_kernel!(
    /// Non-temporal copy with 32-byte AVX2 streaming stores (AVX2).
    #[target_feature(enable = "avx2")]
    stream_avx2, 32, __m256i, _mm256_loadu_si256, _mm256_stream_si256
);
stream_kernel!(
    /// Non-temporal copy with 16-byte SSE2 streaming stores (every x86_64 CPU has SSE2).
    stream_sse2, 16, __m128i, _mm_loadu_si128, _mm_stream_si128
);
