use super::*;

#[test]
fn defaults_are_valid_and_env_overrides_the_file() {
    Config::default().validate().unwrap();
    let mut c: Config = toml::from_str(
        "state_dir = \"/tmp/s\"\n[runtime]\nkind = \"runc\"\n[deploy]\nprobation_secs = 5\n",
    )
    .unwrap();
    assert_eq!(c.runtime.kind, RuntimeKind::Runc);
    assert_eq!(c.deploy.crash_loop_restarts, 3);
    c.apply_env(|k| match k {
        "FLEET_AGENT_RUNTIME" => Some("crun".into()),
        "FLEET_AGENT_PROBATION_SECS" => Some("2".into()),
        "FLEET_AGENT_DEVICE_ID" => Some("cam-01".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.runtime.kind, RuntimeKind::Crun);
    assert_eq!(c.deploy.probation_secs, 2);
    assert_eq!(c.device_id().unwrap().as_str(), "cam-01");
    assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
}

#[test]
fn the_documented_device_config_parses() {
    let c: Config = toml::from_str(
        "device_id = \"cam-0042\"\nserver = \"http://10.0.0.2:8080/\"\n\
         broker = \"mqtt://10.0.0.2:1883\"\ntrust = \"/etc/fleet/trust.json\"\n\
         runtime = \"runc\"\ntoken = \"s3cret\"\n[labels]\nsite = \"north\"\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.runtime.kind, RuntimeKind::Runc);
    assert_eq!(c.runtime.backoff_max_ms, 60_000);
    assert_eq!(c.broker, "mqtt://10.0.0.2:1883");
    assert_eq!(c.labels.get("site").map(String::as_str), Some("north"));
    assert_eq!(c.plain_http_server().as_deref(), Some("10.0.0.2:8080"));
    assert_eq!(c.token.expose(), "s3cret");
    assert!(!format!("{c:?}").contains("s3cret"));
    assert!(toml::from_str::<Config>("runtime = \"docker\"").is_err());
    assert!(toml::from_str::<Config>("[runtime]\nbogus = 1").is_err());
    let d = Config::default();
    assert_eq!(d.broker, DEFAULT_BROKER);
    assert_eq!(d.status_interval_secs, 30);
}

#[test]
fn bad_values_are_reported_with_their_source() {
    let mut c = Config::default();
    let err = c
        .apply_env(|k| (k == "FLEET_AGENT_PROBATION_SECS").then(|| "soon".into()))
        .unwrap_err();
    assert!(
        err.to_string().contains("FLEET_AGENT_PROBATION_SECS"),
        "{err}"
    );
    assert!(toml::from_str::<Config>("bogus = 1").is_err());
    c.deploy.crash_loop_restarts = 0;
    assert!(c.validate().is_err());
}

#[test]
fn telemetry_interval_and_host_root_come_from_file_and_env() {
    let d = Config::default();
    assert_eq!(d.telemetry_interval_secs, 60);
    assert_eq!(d.host_root, PathBuf::from("/"));
    let mut c: Config =
        toml::from_str("telemetry_interval_secs = 5\nhost_root = \"/srv/jetson\"\n").unwrap();
    c.validate().unwrap();
    assert_eq!(c.telemetry_interval_secs, 5);
    assert_eq!(c.host_root, PathBuf::from("/srv/jetson"));
    c.apply_env(|k| match k {
        "FLEET_AGENT_TELEMETRY_INTERVAL_SECS" => Some("2".into()),
        "FLEET_AGENT_HOST_ROOT" => Some("/fixtures/orin-r36".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.telemetry_interval_secs, 2);
    assert_eq!(c.host_root, PathBuf::from("/fixtures/orin-r36"));
    c.telemetry_interval_secs = 0;
    let err = c.validate().unwrap_err();
    assert!(err.to_string().contains("telemetry_interval_secs"), "{err}");
    assert!(
        Config::default()
            .apply_env(|k| (k == "FLEET_AGENT_TELEMETRY_INTERVAL_SECS").then(|| "often".into()))
            .is_err()
    );
}
