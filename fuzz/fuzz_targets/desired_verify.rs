//! Desired-state verification (the bytes a device receives over MQTT).
#![no_main]

use fleet_protocol::{DeviceId, TrustedRoot, verify_desired_state};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_767_225_600;
const TRUST: &[u8] = include_bytes!("../../protocol/tests/fixtures/trust.json");

fuzz_target!(|data: &[u8]| {
    let (Ok(root), Ok(device)) = (TrustedRoot::bootstrap(TRUST, NOW), DeviceId::new("cam-01"))
    else {
        return;
    };
    if let Ok(state) = verify_desired_state(&root, data, &device, Some(5), NOW) {
        assert!(state.generation > 5);
        assert_eq!(state.releases().len(), state.apps.len());
    }
});
