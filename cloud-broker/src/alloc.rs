//! The broker's global allocator: the system allocator, except that very large allocations are
//! mapped lazily (`mmap` with `MAP_NORESERVE`) instead of being refused.
//!
//! Why: kafka-protocol 0.18 decodes an array by first calling `Vec::with_capacity(count)` with
//! the count read from the wire (before checking that the bytes for `count` elements exist).
//! A 14-byte Metadata request claiming 2^31 topics asks for ~150 GB; the system allocator
//! refuses, and Rust aborts the process — one client would take the broker down. Mapped
//! lazily, such a reservation costs address space only: no page is touched, the decoder soon
//! runs out of input, returns an error, and the mapping is released. Real allocations this
//! large do not occur (frames are capped at 100 MiB), so nothing else changes.
//!
//! Limits: with `vm.overcommit_memory = 2` (strict accounting) the kernel refuses even these
//! mappings; the broker then still aborts on such a frame.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at or above this size are mapped lazily.
pub const LAZY_THRESHOLD: usize = 256 << 20;

/// See the module docs.
#[derive(Debug)]
pub struct LazyHuge;

fn lazy(layout: Layout) -> bool {
    layout.size() >= LAZY_THRESHOLD && layout.align() <= 4096
}

unsafe impl GlobalAlloc for LazyHuge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if lazy(layout) {
            // SAFETY: an anonymous private mapping; the kernel picks the address.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    layout.size(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return std::ptr::null_mut();
            }
            return p.cast();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if lazy(layout) {
            // Fresh anonymous mappings are zero-filled.
            // SAFETY: as in `alloc`.
            return unsafe { self.alloc(layout) };
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if lazy(layout) {
            // SAFETY: `ptr` came from our `mmap` of exactly `layout.size()` bytes.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !lazy(layout) && !lazy(new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a fresh block, the old one is valid for `layout.size()` bytes, and the
        // copy covers only what both hold.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
