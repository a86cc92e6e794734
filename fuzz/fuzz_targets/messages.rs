#![no_main]
//! Decoding untrusted bytes as any wire message never panics.

use fleet_protocol::message::{
    Command, DesiredState, Presence, Release, StatusReport, Telemetry, decode,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<DesiredState>(data);
    let _ = decode::<Release>(data);
    let _ = decode::<StatusReport>(data);
    let _ = decode::<Telemetry>(data);
    let _ = decode::<Command>(data);
    let _ = decode::<Presence>(data);
});
