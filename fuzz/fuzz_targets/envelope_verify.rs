//! Envelope JSON parse + signature verification for every role and payload type.
#![no_main]

use fleet_protocol::dsse::{self, Envelope};
use fleet_protocol::trust::Role;
use fleet_protocol::{DeviceId, TrustedRoot, verify};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_767_225_600;
const TRUST: &[u8] = include_bytes!("../../protocol/tests/fixtures/trust.json");

fuzz_target!(|data: &[u8]| {
    let Ok(root) = TrustedRoot::bootstrap(TRUST, NOW) else {
        return;
    };
    if let Ok(envelope) = Envelope::from_json(data, verify::MAX_ENVELOPE_BYTES) {
        let _ = envelope.payload_bytes();
        let _ = envelope.pae();
        let _ = verify::verify_release_envelope(&root, &envelope, NOW);
    }
    for role in Role::ALL {
        for payload_type in [
            dsse::RELEASE_PAYLOAD_TYPE,
            dsse::DESIRED_STATE_PAYLOAD_TYPE,
            dsse::COMMAND_PAYLOAD_TYPE,
            dsse::ROOT_PAYLOAD_TYPE,
        ] {
            let _ = verify::verify_bytes(&root, role, payload_type, data, NOW);
        }
    }
    let _ = verify::verify_release(&root, data, NOW);
    if let Ok(device) = DeviceId::new("cam-01") {
        let _ = verify::verify_command(&root, data, &device, NOW);
    }
});
