#![no_main]
//! Any accepted image reference is canonicalised stably.

use fleet_protocol::ImageRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(r) = ImageRef::parse(s) {
        let again = ImageRef::parse(&r.to_string());
        assert_eq!(again.ok(), Some(r));
    }
});
