//! Generates the signed fixtures in `tests/fixtures/` from fixed key seeds.
//!
//! ed25519 signatures and this JSON are deterministic, so the output is the
//! same on every run: `fixtures.rs` checks the committed files against it, and
//! `cargo test -p fleet-protocol --test fixtures -- --ignored regenerate_fixtures`
//! rewrites them after a deliberate change.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fleet_protocol::dsse::{
    self, COMMAND_PAYLOAD_TYPE, DESIRED_STATE_PAYLOAD_TYPE, Envelope, KeyId, RELEASE_PAYLOAD_TYPE,
    ROOT_PAYLOAD_TYPE, SigningKey,
};
use fleet_protocol::message::RuntimeSettings;
use fleet_protocol::trust::{PublicKey, ROOT_SCHEMA_VERSION, RoleKeys, Roles};
use fleet_protocol::{
    AppName, Command, CommandKind, DesiredApp, DesiredState, DeviceId, Digest, Release, Root,
    SCHEMA_VERSION,
};

/// The time every fixture is checked at: 2026-01-01T00:00:00Z.
pub const NOW: u64 = 1_767_225_600;
/// The generation the device applied last, for the replay fixture.
pub const LAST_GENERATION: u64 = 5;
/// The device the desired states are for.
pub const DEVICE: &str = "cam-01";
/// When the trust roots expire: 2036-01-01T00:00:00Z.
const ROOT_EXPIRES: u64 = 2_082_758_400;

pub struct Keys {
    pub root1: SigningKey,
    pub root2: SigningKey,
    pub release: SigningKey,
    pub director: SigningKey,
    pub director2: SigningKey,
    pub stranger: SigningKey,
}

pub fn keys() -> Keys {
    Keys {
        root1: SigningKey::from_bytes(&[0x11; 32]),
        root2: SigningKey::from_bytes(&[0x12; 32]),
        release: SigningKey::from_bytes(&[0x21; 32]),
        director: SigningKey::from_bytes(&[0x31; 32]),
        director2: SigningKey::from_bytes(&[0x32; 32]),
        stranger: SigningKey::from_bytes(&[0x66; 32]),
    }
}

pub struct Fixture {
    pub name: &'static str,
    pub about: &'static str,
    pub bytes: Vec<u8>,
}

fn id(k: &SigningKey) -> KeyId {
    KeyId::of(&k.verifying_key())
}

fn role(keys: &[&SigningKey], threshold: u32) -> RoleKeys {
    RoleKeys {
        keyids: keys.iter().map(|k| id(k)).collect(),
        threshold,
    }
}

fn root(version: u64, expires_at: u64, root_keys: &[&SigningKey], directors: RoleKeys) -> Root {
    let k = keys();
    let mut all = BTreeMap::new();
    for key in root_keys
        .iter()
        .copied()
        .chain([&k.release, &k.director, &k.director2])
    {
        all.insert(id(key), PublicKey::ed25519(&key.verifying_key()));
    }
    Root {
        schema: ROOT_SCHEMA_VERSION,
        version,
        expires_at,
        keys: all,
        roles: Roles {
            root: role(root_keys, 1),
            release: role(&[&k.release], 1),
            director: directors,
        },
        allow_privileged: false,
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn file(envelope: &Envelope) -> Vec<u8> {
    let mut out = envelope.to_json_pretty();
    out.push(b'\n');
    out
}

fn release(app: &str, version: &str, privileged: bool) -> Release {
    let runtime = RuntimeSettings {
        privileged,
        devices: if app == "model" {
            vec!["nvidia.com/gpu=all".into()]
        } else {
            vec![]
        },
        ..RuntimeSettings::default()
    };
    Release {
        schema: SCHEMA_VERSION,
        app: AppName::new(app).unwrap(),
        version: version.into(),
        repository: format!("registry.local:5000/edge/{app}"),
        manifest_digest: Digest::of(format!("{app}:{version} manifest").as_bytes()),
        runtime,
    }
}

fn signed_release(release: &Release, key: &SigningKey) -> Envelope {
    dsse::sign(RELEASE_PAYLOAD_TYPE, &json(release), &[key])
}

fn entry(app: &str, envelope: Envelope) -> DesiredApp {
    let digest = Digest::of(&envelope.payload_bytes().unwrap());
    DesiredApp {
        app: AppName::new(app).unwrap(),
        release_digest: digest,
        release: envelope,
    }
}

fn desired(device: &str, generation: u64, expires_at: u64, apps: Vec<DesiredApp>) -> DesiredState {
    DesiredState {
        schema: SCHEMA_VERSION,
        device: DeviceId::new(device).unwrap(),
        generation,
        issued_at: NOW - 60,
        expires_at,
        apps,
    }
}

/// Re-encodes `envelope` with its payload changed by `edit`, keeping the signatures.
fn tamper(envelope: &Envelope, edit: impl FnOnce(String) -> String) -> Envelope {
    let payload = String::from_utf8(envelope.payload_bytes().unwrap()).unwrap();
    let edited = edit(payload.clone());
    assert_ne!(edited, payload, "tamper edit changed nothing");
    Envelope {
        payload: STANDARD.encode(edited.as_bytes()),
        ..envelope.clone()
    }
}

pub fn generate() -> Vec<Fixture> {
    let k = keys();
    let director = || role(&[&k.director], 1);
    let sign_root =
        |r: &Root, with: &[&SigningKey]| file(&dsse::sign(ROOT_PAYLOAD_TYPE, &json(r), with));
    let sign_desired = |d: &DesiredState, with: &SigningKey| {
        dsse::sign(DESIRED_STATE_PAYLOAD_TYPE, &json(d), &[with])
    };

    let web = signed_release(&release("web", "v1", false), &k.release);
    let model = signed_release(&release("model", "v2", false), &k.release);
    let good_apps = || vec![entry("web", web.clone()), entry("model", model.clone())];
    let good = desired(DEVICE, LAST_GENERATION + 1, NOW + 3600, good_apps());
    let good_env = sign_desired(&good, &k.director);

    let mut out = Vec::new();
    let mut add = |name, about, bytes| out.push(Fixture { name, about, bytes });

    // Trust roots.
    let v1 = root(1, ROOT_EXPIRES, &[&k.root1], director());
    add(
        "trust.json",
        "good: root v1 (root, release and director keys, threshold 1 each)",
        sign_root(&v1, &[&k.root1]),
    );
    add(
        "trust_threshold2.json",
        "good: root v1 whose director role needs 2 of 2 signatures",
        sign_root(
            &root(
                1,
                ROOT_EXPIRES,
                &[&k.root1],
                role(&[&k.director, &k.director2], 2),
            ),
            &[&k.root1],
        ),
    );
    let v2 = root(2, ROOT_EXPIRES, &[&k.root2], director());
    add(
        "root_v2.json",
        "good: rotation of trust.json to v2 (new root key), signed by the old and the new root key",
        sign_root(&v2, &[&k.root1, &k.root2]),
    );
    add(
        "root_missing_link.json",
        "rejected by trust.json: v3 presented to a v1 device (root_missing_link)",
        sign_root(
            &root(3, ROOT_EXPIRES, &[&k.root2], director()),
            &[&k.root1, &k.root2],
        ),
    );
    add(
        "root_not_signed_by_old.json",
        "rejected by trust.json: v2 signed only by its own new root key (unknown_key)",
        sign_root(&v2, &[&k.root2]),
    );
    add(
        "root_expired.json",
        "rejected at bootstrap: a root that expired one second before now (root_expired)",
        sign_root(&root(1, NOW - 1, &[&k.root1], director()), &[&k.root1]),
    );
    let mut bad_threshold = v1.clone();
    bad_threshold.roles.release.threshold = 2;
    add(
        "root_invalid.json",
        "rejected at bootstrap: release threshold 2 with only one release key (invalid_root)",
        sign_root(&bad_threshold, &[&k.root1]),
    );

    // Good signed messages.
    add(
        "release.json",
        "good: release web:v1 signed by the release key",
        file(&web),
    );
    add(
        "desired.json",
        "good: desired state for cam-01, generation 6, apps web and model",
        file(&good_env),
    );
    let command = Command {
        schema: SCHEMA_VERSION,
        device: DeviceId::new(DEVICE).unwrap(),
        id: 1,
        issued_at: NOW - 60,
        expires_at: NOW + 600,
        kind: CommandKind::RestartApp {
            app: AppName::new("web").unwrap(),
        },
    };
    add(
        "command.json",
        "good: restart web on cam-01, signed by the director key",
        file(&dsse::sign(
            COMMAND_PAYLOAD_TYPE,
            &json(&command),
            &[&k.director],
        )),
    );

    // Rejected desired states (checked against trust.json unless noted).
    add(
        "tampered_payload.json",
        "desired.json with its generation changed after signing (bad_signature)",
        file(&tamper(&good_env, |p| {
            p.replace("\"generation\":6", "\"generation\":7")
        })),
    );
    add(
        "unknown_key.json",
        "desired state signed by a key the root does not list (unknown_key)",
        file(&sign_desired(&good, &k.stranger)),
    );
    add(
        "wrong_role.json",
        "desired state signed by the release key instead of the director key (wrong_role)",
        file(&sign_desired(&good, &k.release)),
    );
    add(
        "below_threshold.json",
        "checked against trust_threshold2.json: signed by one of two required director keys (below_threshold)",
        file(&sign_desired(&good, &k.director)),
    );
    add(
        "unsigned.json",
        "desired state with no signatures (below_threshold, have 0)",
        file(&Envelope {
            signatures: vec![],
            ..good_env.clone()
        }),
    );
    add(
        "expired.json",
        "desired state that expired one second before now (expired)",
        file(&sign_desired(
            &desired(DEVICE, LAST_GENERATION + 1, NOW - 1, good_apps()),
            &k.director,
        )),
    );
    add(
        "replayed_generation.json",
        "desired state with generation 5 when 5 was applied last (stale_generation)",
        file(&sign_desired(
            &desired(DEVICE, LAST_GENERATION, NOW + 3600, good_apps()),
            &k.director,
        )),
    );
    add(
        "wrong_device.json",
        "desired state for cam-02 given to cam-01 (wrong_device)",
        file(&sign_desired(
            &desired("cam-02", LAST_GENERATION + 1, NOW + 3600, good_apps()),
            &k.director,
        )),
    );
    add(
        "wrong_payload_type.json",
        "a desired state signed by the director key as a release payload type (wrong_payload_type)",
        file(&dsse::sign(
            RELEASE_PAYLOAD_TYPE,
            &json(&good),
            &[&k.director],
        )),
    );
    add(
        "malformed_envelope.json",
        "not a DSSE envelope: truncated JSON (malformed_envelope)",
        good_env.to_json()[..40].to_vec(),
    );
    add(
        "malformed_payload.json",
        "validly signed by the director key, but the payload is not a desired state (malformed_payload)",
        file(&dsse::sign(
            DESIRED_STATE_PAYLOAD_TYPE,
            b"{\"device\":\"cam-01\"}",
            &[&k.director],
        )),
    );
    let mut mismatch = good_apps();
    mismatch[0].release_digest = Digest::of(b"some other release");
    add(
        "release_digest_mismatch.json",
        "desired state whose release_digest for web does not match the release payload (release_digest_mismatch)",
        file(&sign_desired(
            &desired(DEVICE, LAST_GENERATION + 1, NOW + 3600, mismatch),
            &k.director,
        )),
    );
    add(
        "release_app_mismatch.json",
        "desired state listing the web release under the app name model (release_app_mismatch)",
        file(&sign_desired(
            &desired(
                DEVICE,
                LAST_GENERATION + 1,
                NOW + 3600,
                vec![entry("model", web.clone())],
            ),
            &k.director,
        )),
    );
    let tampered_web = tamper(&web, |p| p.replace("edge/web", "evil/web"));
    add(
        "release_tampered.json",
        "desired state (validly signed) carrying a release whose payload was changed after signing (bad_signature)",
        file(&sign_desired(
            &desired(
                DEVICE,
                LAST_GENERATION + 1,
                NOW + 3600,
                vec![entry("web", tampered_web)],
            ),
            &k.director,
        )),
    );
    add(
        "release_wrong_role.json",
        "desired state carrying a release signed by the director key (wrong_role)",
        file(&sign_desired(
            &desired(
                DEVICE,
                LAST_GENERATION + 1,
                NOW + 3600,
                vec![entry(
                    "web",
                    signed_release(&release("web", "v1", false), &k.director),
                )],
            ),
            &k.director,
        )),
    );
    add(
        "privileged_not_allowed.json",
        "desired state carrying a privileged release while the root does not allow it (privileged_not_allowed)",
        file(&sign_desired(
            &desired(
                DEVICE,
                LAST_GENERATION + 1,
                NOW + 3600,
                vec![entry(
                    "web",
                    signed_release(&release("web", "v1", true), &k.release),
                )],
            ),
            &k.director,
        )),
    );
    out
}

/// The fixtures folder's README, listing every file.
pub fn readme(fixtures: &[Fixture]) -> Vec<u8> {
    let mut s = String::from(
        "# Signed fixtures\n\n\
         Generated by `tests/fixture_gen/mod.rs` from fixed key seeds; do not edit by hand.\n\
         Regenerate with `cargo test -p fleet-protocol --test fixtures -- --ignored regenerate_fixtures`.\n\
         Checked at `now` = 1767225600 (2026-01-01T00:00:00Z) for device `cam-01` whose\n\
         last applied generation is 5; the expected error code is in parentheses.\n\n\
         | file | what |\n|---|---|\n",
    );
    for f in fixtures {
        s.push_str(&format!("| `{}` | {} |\n", f.name, f.about));
    }
    s.into_bytes()
}
