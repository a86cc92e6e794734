#![no_main]
//! Topic parsing never panics, and what parses renders back to the input.

use fleet_protocol::TopicScheme;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let scheme = TopicScheme::default();
    if let Ok(topic) = scheme.parse(s) {
        assert_eq!(scheme.render(&topic), s);
    }
    let _ = TopicScheme::new(s);
});
