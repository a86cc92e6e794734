#![no_main]
//! The OCI client's `WWW-Authenticate` parser: never panics, a bearer
//! challenge always has a non-empty realm, and a parsed challenge rendered
//! back (every value quoted) parses to the same challenge.

use fleet_agent::fetch::{Challenge, parse_challenge};
use libfuzzer_sys::fuzz_target;

fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

fn render(challenge: &Challenge) -> String {
    match challenge {
        Challenge::Basic => "Basic".into(),
        Challenge::Bearer {
            realm,
            service,
            scope,
        } => {
            let mut header = format!("Bearer realm={}", quote(realm));
            for (key, value) in [("service", service), ("scope", scope)] {
                if let Some(v) = value {
                    header.push_str(&format!(",{key}={}", quote(v)));
                }
            }
            header
        }
    }
}

fuzz_target!(|header: &str| {
    let Some(challenge) = parse_challenge(header) else {
        return;
    };
    if let Challenge::Bearer { realm, .. } = &challenge {
        assert!(!realm.is_empty(), "empty realm from {header:?}");
    }
    assert_eq!(parse_challenge(&render(&challenge)), Some(challenge));
});
