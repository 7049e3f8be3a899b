//! Chunks: a blob is cached, checked and read again in fixed-size chunks. This is
//! their arithmetic (which chunks a byte range touches) and their digest, the
//! check recorded for each chunk when the whole blob was verified against its MD5.

use std::ops::Range;

/// How many chunks a blob of `size` bytes has.
pub fn count(size: u64, chunk_size: u64) -> u32 {
    u32::try_from(size.div_ceil(chunk_size)).expect("chunk count fits u32")
}

/// The byte range of chunk `index` in a blob of `size` bytes.
pub fn bounds(index: u32, size: u64, chunk_size: u64) -> Range<u64> {
    let start = u64::from(index) * chunk_size;
    start..(start + chunk_size).min(size)
}

/// The chunks that hold the bytes of `range` (empty for an empty range).
pub fn covering(range: &Range<u64>, chunk_size: u64) -> Range<u32> {
    if range.is_empty() {
        return 0..0;
    }
    let first = range.start / chunk_size;
    let last = (range.end - 1) / chunk_size;
    u32::try_from(first).expect("chunk index fits u32")..u32::try_from(last + 1).expect("chunk index fits u32")
}

/// The part of chunk `index` (as offsets inside the chunk) that lies in `range`.
pub fn slice_within(index: u32, range: &Range<u64>, chunk_size: u64) -> Range<usize> {
    let chunk_start = u64::from(index) * chunk_size;
    let start = range.start.saturating_sub(chunk_start).min(chunk_size);
    let end = (range.end - chunk_start).min(chunk_size);
    start as usize..end as usize
}

/// The digest of one chunk's bytes. Recorded when the whole blob matched its
/// MD5 (at ingest, or when a fill from the store completes), and checked
/// whenever the chunk is read again from the spool or the store. xxh3 runs at
/// many GB/s, so the check costs next to nothing beside the MD5 of the blob.
pub fn digest(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

/// The chunk digests of a whole blob, in chunk order.
pub type Digests = std::sync::Arc<[u64]>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bounds() {
        assert_eq!(count(0, 10), 0);
        assert_eq!(count(1, 10), 1);
        assert_eq!(count(10, 10), 1);
        assert_eq!(count(11, 10), 2);
        assert_eq!(bounds(0, 25, 10), 0..10);
        assert_eq!(bounds(2, 25, 10), 20..25);
    }

    #[test]
    fn covering_ranges() {
        assert_eq!(covering(&(0..0), 10), 0..0);
        assert_eq!(covering(&(0..1), 10), 0..1);
        assert_eq!(covering(&(0..10), 10), 0..1);
        assert_eq!(covering(&(9..11), 10), 0..2);
        assert_eq!(covering(&(10..20), 10), 1..2);
        assert_eq!(covering(&(15..35), 10), 1..4);
    }

    #[test]
    fn slices() {
        assert_eq!(slice_within(0, &(3..7), 10), 3..7);
        assert_eq!(slice_within(1, &(15..35), 10), 5..10);
        assert_eq!(slice_within(2, &(15..35), 10), 0..10);
        assert_eq!(slice_within(3, &(15..35), 10), 0..5);
    }
}
