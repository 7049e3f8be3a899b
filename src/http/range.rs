//! `Range` header parsing for single byte ranges (RFC 9110 §14).

use std::ops::Range;

/// What a request's `Range` header asks of a blob of known size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole blob (no header, another unit, or
    /// several ranges, which we answer in full rather than as multipart).
    Full,
    /// One satisfiable byte range: answer 206.
    Partial(Range<u64>),
    /// A byte range that lies wholly past the end: answer 416.
    Unsatisfiable,
    /// A `bytes=` header we cannot parse: answer 416 with a clear error.
    Malformed,
}

/// Resolve a `Range` header value against a blob of `size` bytes.
pub fn parse(header: &str, size: u64) -> RangeRequest {
    let header = header.trim();
    let Some(spec) = header.strip_prefix("bytes=").or_else(|| {
        header
            .get(..6)
            .filter(|p| p.eq_ignore_ascii_case("bytes="))
            .map(|_| &header[6..])
    }) else {
        return RangeRequest::Full; // another range unit: ignored, as RFC 9110 allows
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Malformed;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match num(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(size.saturating_sub(n)..size),
            None => RangeRequest::Malformed,
        },
        // bytes=a-: from a to the end.
        (false, true) => match num(first) {
            Some(a) if a < size => RangeRequest::Partial(a..size),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Malformed,
        },
        // bytes=a-b: inclusive; b past the end is clipped.
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a > b => RangeRequest::Malformed,
            (Some(a), Some(_)) if a >= size => RangeRequest::Unsatisfiable,
            (Some(a), Some(b)) => RangeRequest::Partial(a..b.saturating_add(1).min(size)),
            _ => RangeRequest::Malformed,
        },
        (true, true) => RangeRequest::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(parse("bytes=0-0", 10), Partial(0..1));
        assert_eq!(parse("bytes=0-1023", 10), Partial(0..10));
        assert_eq!(parse("bytes=2-5", 10), Partial(2..6));
        assert_eq!(parse("bytes=7-", 10), Partial(7..10));
        assert_eq!(parse("bytes=-3", 10), Partial(7..10));
        assert_eq!(parse("bytes=-30", 10), Partial(0..10));
        assert_eq!(parse("BYTES=1-2", 10), Partial(1..3));
        assert_eq!(parse(" bytes= 1 - 2 ", 10), Partial(1..3));
    }

    #[test]
    fn unsatisfiable_and_malformed() {
        assert_eq!(parse("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(parse("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse("bytes=5-2", 10), Malformed);
        assert_eq!(parse("bytes=x-2", 10), Malformed);
        assert_eq!(parse("bytes=-", 10), Malformed);
        assert_eq!(parse("bytes=3", 10), Malformed);
        assert_eq!(parse("bytes=+1-2", 10), Malformed);
    }

    #[test]
    fn ignored_forms() {
        assert_eq!(parse("items=0-5", 10), Full);
        assert_eq!(parse("bytes=0-1,4-5", 10), Full);
    }
}
