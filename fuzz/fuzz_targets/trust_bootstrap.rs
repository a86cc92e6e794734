//! Trust metadata: parse + bootstrap of a first root, and rotation from a trusted one.
#![no_main]

use fleet_protocol::TrustedRoot;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_767_225_600;
const TRUST: &[u8] = include_bytes!("../../protocol/tests/fixtures/trust.json");

fuzz_target!(|data: &[u8]| {
    if let Ok(root) = TrustedRoot::bootstrap(data, NOW) {
        // Anything accepted is internally consistent.
        assert!(root.root().validate().is_ok());
        assert!(root.expires_at() > NOW);
    }
    if let Ok(trusted) = TrustedRoot::bootstrap(TRUST, NOW)
        && let Ok(next) = trusted.rotate(data, NOW)
    {
        assert_eq!(next.version(), trusted.version() + 1);
    }
});
