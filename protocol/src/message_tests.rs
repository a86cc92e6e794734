use std::fmt::Debug;

use serde_json::{Value, json};

use super::*;
use crate::dsse::{Envelope, Signature};
use crate::lifecycle::ErrorCode;

fn dev() -> DeviceId {
    DeviceId::new("cam-01").unwrap()
}

fn app(name: &str) -> AppName {
    AppName::new(name).unwrap()
}

fn full_runtime() -> RuntimeSettings {
    RuntimeSettings {
        args: Some(vec!["/bin/model".into(), "--port=8080".into()]),
        env: BTreeMap::from([("MODEL".into(), "v2".into())]),
        working_dir: Some("/srv".into()),
        user: Some("1000:1000".into()),
        mounts: vec![Mount {
            source: "/data".into(),
            destination: "/data".into(),
            read_only: true,
        }],
        read_only_rootfs: true,
        network: NetworkMode::None,
        devices: vec!["nvidia.com/gpu=all".into()],
        gpu: Some(GpuRequest::All),
        requires: serde_json::from_str(r#"{"l4t":">=36.3, <37","cuda":">=12.2","soc":"t234"}"#)
            .unwrap(),
        privileged: false,
        restart: RestartPolicy::OnFailure,
        health: Some(HealthCheck {
            probe: Probe::Http {
                port: 8080,
                path: "/healthz".into(),
            },
            interval_secs: 3,
            timeout_secs: 1,
            retries: 5,
            start_period_secs: 10,
        }),
        resources: Resources {
            memory_bytes: Some(512 << 20),
            cpu_millis: Some(1500),
            pids: Some(256),
        },
        probation_secs: Some(120),
        stop_grace_secs: Some(10),
    }
}

fn release() -> Release {
    Release {
        schema: SCHEMA_VERSION,
        app: app("model"),
        version: "v2".into(),
        repository: "registry.local:5000/ns/model".into(),
        manifest_digest: Digest::of(b"manifest"),
        runtime: full_runtime(),
    }
}

fn desired() -> DesiredState {
    DesiredState {
        schema: SCHEMA_VERSION,
        device: dev(),
        generation: 7,
        issued_at: 1_700_000_000,
        expires_at: 1_700_086_400,
        apps: vec![DesiredApp {
            app: app("model"),
            release_digest: Digest::of(b"payload"),
            release: Envelope {
                payload_type: "application/vnd.fleet.release+json".into(),
                payload: "e30=".into(),
                signatures: vec![Signature {
                    keyid: "ab".repeat(32),
                    sig: "c2ln".into(),
                }],
            },
        }],
    }
}

fn release_ref(v: &str) -> ReleaseRef {
    ReleaseRef {
        version: v.into(),
        release_digest: Digest::of(v.as_bytes()),
    }
}

fn status() -> StatusReport {
    StatusReport {
        schema: SCHEMA_VERSION,
        device: dev(),
        reported_at: 1_700_000_100,
        generation: Some(7),
        apps: vec![
            AppStatus {
                app: app("model"),
                phase: Phase::Probation {
                    deadline: 1_700_000_300,
                },
                running: Some(release_ref("v2")),
                target: Some(release_ref("v2")),
                previous: Some(release_ref("v1")),
                health: Health::Healthy,
                restarts: 1,
                progress: Some(Progress {
                    bytes_done: 10,
                    bytes_total: 20,
                    bytes_reused: 5,
                }),
                error: None,
                delta_fallbacks: vec![],
            },
            AppStatus {
                app: app("logger"),
                phase: Phase::Failed {
                    code: ErrorCode::DiskFull,
                },
                running: None,
                target: Some(release_ref("v9")),
                previous: None,
                health: Health::Unknown,
                restarts: 0,
                progress: None,
                error: Some(ErrorInfo::new(
                    ErrorCode::DiskFull,
                    "need 2 GiB, 1 GiB free",
                )),
                delta_fallbacks: vec![],
            },
        ],
        rejected: Some(ErrorInfo::new(
            ErrorCode::StaleGeneration,
            "generation 6 <= 7",
        )),
        info: Some(DeviceInfo {
            labels: BTreeMap::from([("site".into(), "a".into())]),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
            l4t_version: Some("R36.4.0".into()),
            soc: Some("tegra234".into()),
            model: Some("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit".into()),
            jetpack_version: Some("6.1".into()),
            cuda_version: Some("12.6.68".into()),
            cdi_devices: vec!["nvidia.com/gpu=0".into(), "nvidia.com/gpu=all".into()],
            agent_version: "0.1.0".into(),
        }),
    }
}

fn telemetry() -> Telemetry {
    Telemetry {
        device: Some(dev()),
        at: 1_700_000_000,
        uptime_secs: Some(3600),
        cpu_percent: Some(12.5),
        memory_used_bytes: Some(1 << 30),
        memory_total_bytes: Some(8 << 30),
        store_used_bytes: Some(3 << 30),
        disk_free_bytes: Some(20 << 30),
        net_rx_bytes: Some(1000),
        net_tx_bytes: Some(2000),
        temperatures: BTreeMap::from([("gpu-thermal".into(), 41.5)]),
        gpu_load_percent: Some(80.0),
        gpu_freq_hz: Some(918_000_000),
        emc_load_percent: Some(20.0),
        power_mw: BTreeMap::from([("VDD_GPU_SOC".into(), 4200)]),
        fetched_bytes_total: Some(5 << 20),
        reused_bytes_total: Some(40 << 20),
        delta_fetched_bytes_total: Some(1 << 20),
        delta_replaced_bytes_total: Some(30 << 20),
        delta_fallbacks_total: Some(1),
        apps: vec![AppTelemetry {
            app: Some(app("model")),
            running: true,
            restarts: 2,
            health: Health::Healthy,
            cpu_percent: Some(50.0),
            memory_bytes: Some(256 << 20),
        }],
        ..Telemetry::default()
    }
}

fn commands() -> Vec<Command> {
    [
        CommandKind::RestartApp { app: app("model") },
        CommandKind::CollectLogs {
            app: app("model"),
            max_bytes: 1 << 20,
        },
    ]
    .into_iter()
    .map(|kind| Command {
        schema: SCHEMA_VERSION,
        device: dev(),
        id: 3,
        issued_at: 1,
        expires_at: 2,
        kind,
    })
    .collect()
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &T) {
    let bytes = encode(msg).unwrap();
    assert_eq!(&decode::<T>(&bytes).unwrap(), msg);
}

/// Adds an unknown field to every JSON object that is a struct (not a map of
/// user data, where an extra key would be a real change).
fn add_future_fields(v: &mut Value) {
    const MAPS: [&str; 4] = ["env", "labels", "temperatures", "power_mw"];
    // The one deliberate exception: a requirement this agent cannot check
    // must refuse the release, not be ignored (requires_tests.rs).
    const STRICT: [&str; 1] = ["requires"];
    match v {
        Value::Object(obj) => {
            for (key, child) in obj.iter_mut() {
                if !MAPS.contains(&key.as_str()) && !STRICT.contains(&key.as_str()) {
                    add_future_fields(child);
                }
            }
            obj.insert(
                "zz_future".into(),
                json!({"nested": [1, {"deep": true}], "s": "x"}),
            );
        }
        Value::Array(items) => items.iter_mut().for_each(add_future_fields),
        _ => {}
    }
}

fn tolerates_future_fields<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &T) {
    let mut v = serde_json::to_value(msg).unwrap();
    add_future_fields(&mut v);
    let text = v.to_string();
    assert!(text.contains("zz_future"), "{text}");
    assert_eq!(&decode::<T>(text.as_bytes()).unwrap(), msg, "{text}");
}

fn check_all<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &T) {
    round_trip(msg);
    tolerates_future_fields(msg);
}

#[test]
fn every_message_round_trips_and_ignores_unknown_fields_at_every_level() {
    check_all(&release());
    check_all(&Release {
        runtime: RuntimeSettings::default(),
        ..release()
    });
    check_all(&desired());
    let s = status();
    check_all(&s);
    let mut v = serde_json::to_value(&s).unwrap();
    add_future_fields(&mut v);
    // Unknown fields reach the nested objects too (app status, progress, phase).
    assert!(v["apps"][0]["progress"]["zz_future"].is_object());
    assert!(v["apps"][0]["phase"]["zz_future"].is_object());
    check_all(&telemetry());
    check_all(&Telemetry::default());
    for c in commands() {
        check_all(&c);
    }
    check_all(&Presence::online(dev()));
    check_all(&Presence::offline(dev()));
    for probe in [
        Probe::Exec {
            command: vec!["true".into()],
        },
        Probe::Tcp { port: 1 },
    ] {
        let mut r = release();
        if let Some(h) = r.runtime.health.as_mut() {
            h.probe = probe;
        }
        check_all(&r);
    }
}

#[test]
fn schema_is_serialized_and_defaults_when_absent() {
    let v = serde_json::to_value(status()).unwrap();
    assert_eq!(v["schema"], SCHEMA_VERSION);
    assert_eq!(Telemetry::default().schema, SCHEMA_VERSION);

    let minimal: StatusReport =
        decode(br#"{"device":"cam-01","reported_at":5,"generation":null}"#).unwrap();
    assert_eq!(minimal.schema, SCHEMA_VERSION);
    assert!(minimal.apps.is_empty());
    let t: Telemetry = decode(br#"{"at":1}"#).unwrap();
    assert_eq!(t.schema, SCHEMA_VERSION);
    let p: Presence = decode(br#"{"device":"cam-01","online":false}"#).unwrap();
    assert_eq!(p, Presence::offline(dev()));
    let r: Release = decode(
        format!(
            r#"{{"app":"model","version":"v2","repository":"r/m","manifest_digest":"{}"}}"#,
            Digest::of(b"m")
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.schema, SCHEMA_VERSION);
    assert_eq!(r.runtime, RuntimeSettings::default());

    // A newer schema is still decoded; the caller decides.
    let newer: Presence = decode(br#"{"schema":2,"device":"cam-01","online":true}"#).unwrap();
    assert_eq!(newer.schema, 2);
}

#[test]
fn absent_values_are_left_out_of_the_json() {
    let json = String::from_utf8(encode(&Telemetry::default()).unwrap()).unwrap();
    assert_eq!(json, r#"{"schema":1,"at":0}"#);
    let json = String::from_utf8(
        encode(&Release {
            runtime: RuntimeSettings::default(),
            ..release()
        })
        .unwrap(),
    )
    .unwrap();
    assert!(!json.contains("null"), "{json}");
    assert!(!json.contains("[]"), "{json}");
}

#[test]
fn error_info_codes_are_stable_strings_and_unknown_codes_decode() {
    let e = ErrorInfo::new(ErrorCode::HealthCheckFailed, "probe /healthz: 500");
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        json!({"code": "health_check_failed", "message": "probe /healthz: 500"})
    );
    let future: ErrorInfo = decode(br#"{"code":"quantum_flux","message":"?"}"#).unwrap();
    assert_eq!(future.code, ErrorCode::Unknown);
}

#[test]
fn decode_rejects_oversized_and_invalid_messages() {
    let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
    match decode::<Presence>(&big) {
        Err(DecodeError::TooLarge { what, len, max }) => {
            assert_eq!(
                (what, len, max),
                ("Presence", MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES)
            );
        }
        other => panic!("{other:?}"),
    }
    match decode::<Presence>(br#"{"device":"Bad/Id","online":true}"#) {
        Err(
            e @ DecodeError::Json {
                what: "Presence", ..
            },
        ) => {
            assert!(e.to_string().contains("Presence"));
        }
        other => panic!("{other:?}"),
    }
    assert!(decode::<StatusReport>(b"").is_err());
    assert!(decode::<StatusReport>(b"[]").is_err());
}
