//! The HTTP `Range` header of a blob request (RFC 9110, one `bytes=` range).

/// A parsed `Range` header against a blob of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// No (usable) Range header: the whole blob.
    Full,
    /// Inclusive `start..=end`.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// Parses a single `bytes=` range (RFC 9110). Several ranges, another unit
/// or a malformed spec are refused as unsatisfiable.
pub fn parse_range(value: Option<&str>, len: u64) -> ByteRange {
    let Some(value) = value else {
        return ByteRange::Full;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Unsatisfiable;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), num(first), num(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(suffix)) if suffix > 0 && len > 0 => ByteRange::Partial {
            start: len.saturating_sub(suffix),
            end: len - 1,
        },
        (false, Some(start), end) if start < len => {
            if !last.trim().is_empty() && end.is_none() {
                return ByteRange::Unsatisfiable;
            }
            match end {
                Some(end) if end < start => ByteRange::Unsatisfiable,
                Some(end) => ByteRange::Partial {
                    start,
                    end: end.min(len - 1),
                },
                None => ByteRange::Partial {
                    start,
                    end: len - 1,
                },
            }
        }
        _ => ByteRange::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use ByteRange::*;
        let p = |s, e| Partial { start: s, end: e };
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), p(0, 3));
        assert_eq!(parse_range(Some("bytes=4-"), 10), p(4, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), p(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), p(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), p(0, 9));
        assert_eq!(parse_range(Some("bytes=9-9"), 10), p(9, 9));
        for bad in [
            "bytes=10-",
            "bytes=10-12",
            "bytes=5-2",
            "bytes=-0",
            "bytes=a-b",
            "bytes=1-x",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=",
        ] {
            assert_eq!(parse_range(Some(bad), 10), Unsatisfiable, "{bad}");
        }
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
    }

    /// Checks what the content endpoint relies on: a partial range lies
    /// inside the blob, `start <= end < len`.
    fn assert_within(range: &ByteRange, len: u64) {
        if let ByteRange::Partial { start, end } = *range {
            assert!(start <= end && end < len, "{range:?} outside {len} bytes");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_header_parses_to_a_range_inside_the_blob(value in "( ?bytes=)?[ 0-9,=x-]{0,16}|\\PC{0,40}", len in 0u64..1 << 40) {
            let range = parse_range(Some(&value), len);
            proptest::prop_assert_ne!(&range, &ByteRange::Full);
            assert_within(&range, len);
        }

        #[test]
        fn numeric_ranges_are_clamped_to_the_blob(
            first in proptest::option::of(0u64..2000),
            last in proptest::option::of(0u64..2000),
            len in 0u64..1000,
        ) {
            let show = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
            let header = format!("bytes={}-{}", show(first), show(last));
            let range = parse_range(Some(&header), len);
            assert_within(&range, len);
            let expected = match (first, last) {
                (Some(s), Some(e)) if s < len && s <= e => {
                    ByteRange::Partial { start: s, end: e.min(len - 1) }
                }
                (Some(s), None) if s < len => ByteRange::Partial { start: s, end: len - 1 },
                (None, Some(n)) if n > 0 && len > 0 => {
                    ByteRange::Partial { start: len - n.min(len), end: len - 1 }
                }
                _ => ByteRange::Unsatisfiable,
            };
            proptest::prop_assert_eq!(range, expected, "{}", header);
        }
    }
}
