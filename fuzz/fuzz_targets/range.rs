#![no_main]
//! The content endpoint's `Range` parser: a header is never "the whole blob",
//! a partial range lies inside the blob (`start <= end < len`), and a range
//! it accepts renders back to a header that parses to the same range.

use fleet_control_plane::content::range::{ByteRange, parse_range};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u64)| {
    let (header, len) = input;
    let range = parse_range(Some(header), len);
    assert_ne!(range, ByteRange::Full);
    if let ByteRange::Partial { start, end } = range {
        assert!(start <= end && end < len, "{range:?} outside {len} bytes");
        let again = parse_range(Some(&format!("bytes={start}-{end}")), len);
        assert_eq!(again, range);
    }
    assert_eq!(parse_range(None, len), ByteRange::Full);
});
