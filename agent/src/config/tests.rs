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
    assert_eq!(c.broker.to_string(), "mqtt://10.0.0.2:1883");
    assert_eq!(c.labels.get("site").map(String::as_str), Some("north"));
    assert_eq!(c.plain_http_server().as_deref(), Some("10.0.0.2:8080"));
    assert_eq!(c.token.expose(), "s3cret");
    assert!(!format!("{c:?}").contains("s3cret"));
    assert!(toml::from_str::<Config>("runtime = \"docker\"").is_err());
    assert!(toml::from_str::<Config>("[runtime]\nbogus = 1").is_err());
    let d = Config::default();
    assert_eq!(d.broker.to_string(), DEFAULT_BROKER);
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

#[test]
fn every_variable_overrides_its_field() {
    let mut c = Config::default();
    c.apply_env(|k| {
        let v = match k {
            "FLEET_AGENT_DEVICE_ID" => "cam-09",
            "FLEET_AGENT_STATE_DIR" => "/s",
            "FLEET_AGENT_TRUST" => "/t.json",
            "FLEET_AGENT_SERVER" => "http://h:1",
            "FLEET_AGENT_BROKER" => "mqtt://b:2",
            "FLEET_AGENT_TOKEN" => "tok",
            "FLEET_AGENT_STATUS_INTERVAL_SECS" => "3",
            "FLEET_AGENT_TELEMETRY_INTERVAL_SECS" => "4",
            "FLEET_AGENT_HOST_ROOT" => "/h",
            "FLEET_AGENT_RUNTIME" => "runc",
            "FLEET_AGENT_RUNTIME_BINARY" => "/bin/runc",
            "FLEET_AGENT_RUNTIME_ROOT" => "/run/r",
            "FLEET_AGENT_PROBATION_SECS" => "5",
            "FLEET_AGENT_CRASH_LOOP_RESTARTS" => "6",
            "FLEET_AGENT_RESERVE_BYTES" => "7",
            "FLEET_AGENT_DELTAS" => "false",
            _ => return None,
        };
        Some(v.into())
    })
    .unwrap();
    assert_eq!(c.device_id().unwrap().as_str(), "cam-09");
    assert_eq!(c.state_dir, PathBuf::from("/s"));
    assert_eq!(c.trust, PathBuf::from("/t.json"));
    assert_eq!(c.server.as_deref(), Some("http://h:1"));
    assert_eq!(c.broker.to_string(), "mqtt://b:2");
    assert_eq!(c.token.expose(), "tok");
    assert_eq!((c.status_interval_secs, c.telemetry_interval_secs), (3, 4));
    assert_eq!(c.host_root, PathBuf::from("/h"));
    assert_eq!(c.runtime.kind, RuntimeKind::Runc);
    assert_eq!(c.runtime.binary, Some(PathBuf::from("/bin/runc")));
    assert_eq!(c.runtime.root, Some(PathBuf::from("/run/r")));
    assert_eq!(
        (c.deploy.probation_secs, c.deploy.crash_loop_restarts),
        (5, 6)
    );
    assert_eq!(c.store.reserve_bytes, 7);
    assert!(!c.store.deltas);
    for (var, bad) in [
        ("FLEET_AGENT_RUNTIME", "docker"),
        ("FLEET_AGENT_DEVICE_ID", "Not A Device"),
    ] {
        let err = c.apply_env(|k| (k == var).then(|| bad.into())).unwrap_err();
        assert!(matches!(&err, ConfigError::Env(e) if e.var == var), "{err}");
        assert!(err.to_string().contains(var), "{err}");
    }
    assert_eq!(
        c.runtime.kind,
        RuntimeKind::Runc,
        "a bad value changes nothing"
    );
}

#[test]
fn an_enroll_token_needs_an_https_server_and_stays_out_of_debug() {
    let token = format!("fleet-enroll_{}_{}", "1".repeat(64), "a".repeat(64));
    let with = |server: Option<&str>, token: &str| Config {
        server: server.map(str::to_owned),
        enroll_token: Secret(token.to_owned()),
        ..Config::default()
    };
    let good = with(Some("https://fleet.example:8443"), &token);
    good.validate().unwrap();
    assert!(!format!("{good:?}").contains(&"1".repeat(64)));
    for (server, token) in [
        (Some("https://fleet.example"), "fleet_notenroll"),
        (Some("http://fleet.example"), token.as_str()),
        (None, token.as_str()),
    ] {
        let err = with(server, token).validate().unwrap_err();
        assert!(err.to_string().contains("enroll_token"), "{err}");
        assert!(!err.to_string().contains(&"1".repeat(64)), "{err}");
    }
    let mut c = Config::default();
    c.apply_env(|k| (k == "FLEET_AGENT_ENROLL_TOKEN").then(|| token.clone()))
        .unwrap();
    assert_eq!(c.enroll_token.expose(), token);
}
