//! Host-side protection of the provider's secrets: no core dumps or same-user ptrace of the
//! serving process, freed memory wiped, and (`files`) one check of who may change or read the
//! files that hold or steer key material. See docs/security.md.
use std::alloc::{GlobalAlloc, Layout, System};

mod files;

pub(crate) use files::{check_permissions, refuse_untrusted, UntrustedFiles};

/// Marks the process non-dumpable (`PR_SET_DUMPABLE=0`): no core file holds plaintext, tokens
/// or the JWT even if `LimitCORE=` is raised, and `/proc/PID/mem` is readable by root only.
pub(crate) fn forbid_core_dumps() -> std::io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(std::io::Error::from)
}

/// The binary's global allocator: the system allocator, but every block is wiped before it is
/// freed. Plaintext, seeds, tokens and the JWT also pass through buffers we do not own (tonic's
/// and h2's frame buffers, hyper's, serde's); once those are freed no copy stays behind in the
/// heap. Blocks still in use (a live connection's read buffer) are named in docs/security.md.
pub struct WipingAllocator;

// SAFETY: every call is forwarded to `System` with the same layout; `dealloc` only writes
// zeros to the `layout.size()` bytes it is handing back, which the caller owns at that point.
// `realloc` keeps the default (alloc, copy, dealloc), so the old block is wiped too.
unsafe impl GlobalAlloc for WipingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Volatile writes (zeroize), so the compiler cannot drop them as dead stores before free.
        zeroize::Zeroize::zeroize(std::slice::from_raw_parts_mut(ptr, layout.size()));
        System.dealloc(ptr, layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_dumpable_after_forbid_core_dumps() {
        forbid_core_dumps().expect("prctl");
        assert_eq!(nix::sys::prctl::get_dumpable(), Ok(false));
    }
}
