//! Copy loops: plain memcpy, non-temporal stores (AVX-512, AVX2, SSE2), `rep movsb`, and the
//! kernel's `copy_page` (`rep movsq`).
//!
//! Each has the contract of `ptr::copy_nonoverlapping(src, dst, len)` with the arguments in
//! `(dst, src, len)` order: `src` readable and `dst` writable for `len` bytes, no overlap.
#![allow(unsafe_code)]

/// Plain `memcpy` from the C library (through `ptr::copy_nonoverlapping`).
///
/// # Safety
/// As `ptr::copy_nonoverlapping`.
pub(super) unsafe fn memcpy(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// `rep movsb`, which CPUs with ERMS/FSRM run as a fast microcoded copy.
///
/// # Safety
/// As `ptr::copy_nonoverlapping`.
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
///
/// # Safety
/// As `ptr::copy_nonoverlapping`.
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

/// Non-temporal copy with 64-byte AVX-512 streaming stores: the destination bypasses the caches.
///
/// # Safety
/// As `ptr::copy_nonoverlapping`, and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn stream_avx512(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m512i, _mm_sfence, _mm512_loadu_si512, _mm512_stream_si512};
    const V: usize = 64;
    let head = dst.align_offset(V).min(len);
    // SAFETY: all offsets stay below len; the caller guarantees the ranges, and the streaming
    // stores go to 64-byte aligned addresses (dst + head is aligned).
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        let (mut s, mut d, mut n) = (src.add(head), dst.add(head), len - head);
        while n >= 4 * V {
            let a = _mm512_loadu_si512(s.cast::<__m512i>());
            let b = _mm512_loadu_si512(s.add(V).cast::<__m512i>());
            let c = _mm512_loadu_si512(s.add(2 * V).cast::<__m512i>());
            let e = _mm512_loadu_si512(s.add(3 * V).cast::<__m512i>());
            _mm512_stream_si512(d.cast::<__m512i>(), a);
            _mm512_stream_si512(d.add(V).cast::<__m512i>(), b);
            _mm512_stream_si512(d.add(2 * V).cast::<__m512i>(), c);
            _mm512_stream_si512(d.add(3 * V).cast::<__m512i>(), e);
            (s, d, n) = (s.add(4 * V), d.add(4 * V), n - 4 * V);
        }
        while n >= V {
            _mm512_stream_si512(d.cast::<__m512i>(), _mm512_loadu_si512(s.cast::<__m512i>()));
            (s, d, n) = (s.add(V), d.add(V), n - V);
        }
        std::ptr::copy_nonoverlapping(s, d, n);
        _mm_sfence();
    }
}

/// The AVX-512 kernel where the CPU has AVX-512F, or why not.
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512_stream_kernel() -> Result<unsafe fn(*mut u8, *const u8, usize), String> {
    if std::is_x86_feature_detected!("avx512f") {
        Ok(stream_avx512 as unsafe fn(*mut u8, *const u8, usize))
    } else {
        Err("this CPU has no AVX-512F (cpuid leaf 7: avx512f not set)".into())
    }
}

/// Non-temporal copy with 32-byte AVX2 streaming stores: the destination bypasses the caches.
///
/// # Safety
/// As `ptr::copy_nonoverlapping`, and the CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn stream_avx2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm_sfence, _mm256_loadu_si256, _mm256_stream_si256};
    const V: usize = 32;
    let head = dst.align_offset(V).min(len);
    // SAFETY: all offsets stay below len; the caller guarantees the ranges, and the streaming
    // stores go to 32-byte aligned addresses (dst + head is aligned).
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        let (mut s, mut d, mut n) = (src.add(head), dst.add(head), len - head);
        while n >= 4 * V {
            let a = _mm256_loadu_si256(s.cast::<__m256i>());
            let b = _mm256_loadu_si256(s.add(V).cast::<__m256i>());
            let c = _mm256_loadu_si256(s.add(2 * V).cast::<__m256i>());
            let e = _mm256_loadu_si256(s.add(3 * V).cast::<__m256i>());
            _mm256_stream_si256(d.cast::<__m256i>(), a);
            _mm256_stream_si256(d.add(V).cast::<__m256i>(), b);
            _mm256_stream_si256(d.add(2 * V).cast::<__m256i>(), c);
            _mm256_stream_si256(d.add(3 * V).cast::<__m256i>(), e);
            (s, d, n) = (s.add(4 * V), d.add(4 * V), n - 4 * V);
        }
        while n >= V {
            _mm256_stream_si256(d.cast::<__m256i>(), _mm256_loadu_si256(s.cast::<__m256i>()));
            (s, d, n) = (s.add(V), d.add(V), n - V);
        }
        std::ptr::copy_nonoverlapping(s, d, n);
        // Streaming stores are weakly ordered: make them visible before the copy counts as done.
        _mm_sfence();
    }
}

/// Non-temporal copy with 16-byte SSE2 streaming stores (every x86_64 CPU has SSE2).
///
/// # Safety
/// As `ptr::copy_nonoverlapping`.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn stream_sse2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    const V: usize = 16;
    let head = dst.align_offset(V).min(len);
    // SAFETY: as in stream_avx2, with 16-byte aligned streaming stores.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        let (mut s, mut d, mut n) = (src.add(head), dst.add(head), len - head);
        while n >= 4 * V {
            let a = _mm_loadu_si128(s.cast::<__m128i>());
            let b = _mm_loadu_si128(s.add(V).cast::<__m128i>());
            let c = _mm_loadu_si128(s.add(2 * V).cast::<__m128i>());
            let e = _mm_loadu_si128(s.add(3 * V).cast::<__m128i>());
            _mm_stream_si128(d.cast::<__m128i>(), a);
            _mm_stream_si128(d.add(V).cast::<__m128i>(), b);
            _mm_stream_si128(d.add(2 * V).cast::<__m128i>(), c);
            _mm_stream_si128(d.add(3 * V).cast::<__m128i>(), e);
            (s, d, n) = (s.add(4 * V), d.add(4 * V), n - 4 * V);
        }
        while n >= V {
            _mm_stream_si128(d.cast::<__m128i>(), _mm_loadu_si128(s.cast::<__m128i>()));
            (s, d, n) = (s.add(V), d.add(V), n - V);
        }
        std::ptr::copy_nonoverlapping(s, d, n);
        _mm_sfence();
    }
}

/// The AVX2 kernel where the CPU has AVX2 (a safe fn pointer to a `target_feature` fn needs the
/// run-time check first).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx2_stream_kernel() -> Option<unsafe fn(*mut u8, *const u8, usize)> {
    if std::is_x86_feature_detected!("avx2") {
        Some(stream_avx2 as unsafe fn(*mut u8, *const u8, usize))
    } else {
        None
    }
}
