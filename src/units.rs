//! How sizes are printed in the effective configuration, shared by every module's settings.

use bytesize::ByteSize;

/// Print a size exactly, in the largest binary unit that divides it, so the
/// printed configuration reads back as the same values.
pub fn exact_size<S: serde::Serializer>(size: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&exact(size.as_u64()))
}

/// `4088KiB`, `64MiB`, `12345B`: exact, never rounded.
pub fn exact(bytes: u64) -> String {
    [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .iter()
        .find(|(_, unit)| bytes > 0 && bytes.is_multiple_of(*unit))
        .map_or_else(|| format!("{bytes}B"), |(name, unit)| format!("{}{name}", bytes / unit))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_print_exactly() {
        assert_eq!(super::exact(0), "0B");
        assert_eq!(super::exact(4 * 1024 * 1024 - 8 * 1024), "4088KiB");
        assert_eq!(super::exact(5 << 30), "5GiB");
        assert_eq!(super::exact(1_000_000_000), "1000000000B");
    }
}
