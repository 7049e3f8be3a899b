//! The process's allocator: the system's (glibc), keeping a few large freed
//! blocks for the next allocation of about their size.
//!
//! Chunks are 4 MiB buffers, and every chunk read back from the disk tier, from
//! the spool or from the store lands in a new one (foyer reads an entry into
//! one buffer and decodes it into another). Blocks this large are mappings of
//! their own (main.rs fixes glibc's mmap threshold, so that freed chunks go
//! back to the system), and each new mapping costs a page fault and the
//! zeroing of a page for every 4 KiB written to it: 41 % of the CPU of a stream
//! from the disk tier went there. Handing the next chunk a block that was just
//! freed skips both. At most [`KEPT_BYTES`] wait in the cache, so peak RSS
//! stays bounded; everything else goes to glibc unchanged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Blocks at least this large are kept when freed: glibc's mmap threshold
/// (main.rs), above which every block is a mapping of its own.
const LARGE: usize = 1024 * 1024;

/// The most freed blocks kept at once.
const SLOTS: usize = 4;

/// The most bytes the kept blocks take together: four 4 MiB chunks.
pub const KEPT_BYTES: usize = 16 * 1024 * 1024;

/// A kept block may be this much larger than the request it serves
/// (a fraction of the request), so a small request does not pin a big block.
const SLACK_DIVISOR: usize = 8;

#[global_allocator]
static GLOBAL: KeepLarge = KeepLarge::new();

/// glibc's allocator, with a small cache of large freed blocks.
pub struct KeepLarge {
    kept: Mutex<Kept>,
}

/// Freed blocks: (address, usable size); an address of 0 is an empty slot.
struct Kept {
    blocks: [(usize, usize); SLOTS],
    bytes: usize,
    /// The slot to give up next when all are taken (round robin).
    next: usize,
}

impl Kept {
    const EMPTY: Kept = Kept {
        blocks: [(0, 0); SLOTS],
        bytes: 0,
        next: 0,
    };

    /// Take a block for `layout`, if one of about its size is kept.
    fn take(&mut self, layout: Layout) -> Option<usize> {
        let (size, align) = (layout.size(), layout.align());
        let slot = self.blocks.iter_mut().find(|(addr, usable)| {
            *addr != 0 && *usable >= size && *usable - size <= size / SLACK_DIVISOR && *addr % align == 0
        })?;
        let (addr, usable) = std::mem::take(slot);
        self.bytes -= usable;
        Some(addr)
    }

    /// Keep a freed block. Returns the block to free instead, if any: the
    /// one it replaces (round robin, when the slots or the bytes are all
    /// taken), or this one if even that leaves no room.
    fn keep(&mut self, addr: usize, usable: usize) -> Option<usize> {
        if let Some(i) = self.blocks.iter().position(|(a, _)| *a == 0)
            && self.bytes + usable <= KEPT_BYTES
        {
            self.blocks[i] = (addr, usable);
            self.bytes += usable;
            return None;
        }
        let i = self.next;
        let (old, old_usable) = self.blocks[i];
        if self.bytes - old_usable + usable > KEPT_BYTES {
            return Some(addr);
        }
        self.next = (i + 1) % SLOTS;
        self.blocks[i] = (addr, usable);
        self.bytes = self.bytes - old_usable + usable;
        (old != 0).then_some(old)
    }
}

impl KeepLarge {
    pub const fn new() -> Self {
        KeepLarge {
            kept: Mutex::new(Kept::EMPTY),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held in freed blocks kept for reuse.
    #[cfg(test)]
    pub fn kept_bytes(&self) -> usize {
        self.kept().bytes
    }
}

impl Default for KeepLarge {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a block of `layout` is one this allocator keeps and reuses. Larger
/// alignments than a page are left to glibc.
fn large(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= 4096
}

// SAFETY: every block comes from glibc (through `System`, or `malloc`-family
// calls `System` makes), and glibc's `free` takes any of them whatever its
// layout. A kept block is handed out again only if its usable size covers the
// request and its address meets the request's alignment, and only once: it
// leaves the cache under the lock.
unsafe impl GlobalAlloc for KeepLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if large(layout)
            && let Some(addr) = self.kept().take(layout)
        {
            return addr as *mut u8;
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // A fresh mapping is zero already: cheaper than clearing a kept block.
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if large(layout) {
            // SAFETY: `ptr` is a live glibc block (see above).
            let usable = unsafe { libc::malloc_usable_size(ptr.cast()) };
            let free = self.kept().keep(ptr as usize, usable);
            if let Some(addr) = free {
                // SAFETY: a glibc block no one holds any more.
                unsafe { libc::free(addr as *mut libc::c_void) };
            }
            return;
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // glibc moves a large block by remapping it, without copying.
        // SAFETY: the caller's contract, passed on; `ptr` is a glibc block.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn a_freed_block_serves_the_next_request_of_its_size() {
        let mut kept = Kept::EMPTY;
        let four = Layout::from_size_align(4 * MIB, 1).unwrap();
        assert_eq!(kept.keep(0x1000, 4 * MIB + 4000), None);
        assert_eq!(kept.bytes, 4 * MIB + 4000);
        // Too small a request for the block, or an alignment it does not meet.
        assert_eq!(kept.take(Layout::from_size_align(MIB, 1).unwrap()), None);
        assert_eq!(kept.take(Layout::from_size_align(4 * MIB, 8192).unwrap()), None);
        assert_eq!(kept.take(four), Some(0x1000));
        assert_eq!(kept.bytes, 0);
        assert_eq!(kept.take(four), None);
    }

    #[test]
    fn the_kept_bytes_stay_bounded() {
        let mut kept = Kept::EMPTY;
        let mut freed = Vec::new();
        for i in 1..=20 {
            if let Some(addr) = kept.keep(i * 0x1000, 5 * MIB) {
                freed.push(addr);
            }
            assert!(kept.bytes <= KEPT_BYTES);
        }
        // Three 5 MiB blocks fit in 16 MiB; the other seventeen were freed.
        assert_eq!(kept.bytes, 3 * 5 * MIB);
        assert_eq!(freed.len(), 17);
        let mut all: Vec<usize> = kept.blocks.iter().map(|b| b.0).filter(|a| *a != 0).collect();
        all.extend(&freed);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20, "every block is either kept or freed, once");
        assert_eq!(kept.keep(1, KEPT_BYTES + 1), Some(1));
    }

    #[test]
    fn large_buffers_are_reused_and_correct() {
        // Through the real global allocator: write, free, allocate again.
        for round in 0..4u8 {
            let mut v = vec![0u8; 0];
            v.reserve_exact(4 * MIB);
            v.resize(4 * MIB, round);
            assert!(v.iter().all(|b| *b == round));
            let z = vec![0u8; 4 * MIB];
            assert!(z.iter().all(|b| *b == 0), "zeroed allocations are zero");
        }
        assert!(GLOBAL.kept_bytes() <= KEPT_BYTES);
    }
}
