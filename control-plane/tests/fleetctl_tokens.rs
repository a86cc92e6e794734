//! `fleetctl tokens` and `fleetctl audit` against the real `fleet-server`
//! binary, and no secret anywhere: the server's whole log (at trace level),
//! every API error body, every fleetctl output but the one that creates a
//! token, and the audit records hold neither a token nor its sha256.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use common::*;
use fleet_control_plane::api::auth::hash_token;

/// `fleet-server` as a child process, its log (stderr) in a file.
struct ServerProcess {
    child: Child,
    log: PathBuf,
    stdout: PathBuf,
}

impl ServerProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Stops it with SIGTERM (a clean shutdown, all of its log written).
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "fleet-server exited with {exit}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the server; returns it, its URL, the admin token it printed and
/// its CA certificate's path.
async fn start_server(site: &Site) -> (ServerProcess, String, String, std::path::PathBuf) {
    let mut config = site.config();
    let http = free_port();
    config.http.listen = ([127, 0, 0, 1], http).into();
    config.broker.listen = ([127, 0, 0, 1], free_port()).into();
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let ca_path = config.ca_cert_path();
    let file = site.dir.path().join("server.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let log = site.dir.path().join("server.log");
    let stdout = site.dir.path().join("server.out");
    let child = Command::new(env!("CARGO_BIN_EXE_fleet-server"))
        .args(["--config", file.to_str().unwrap()])
        .env("RUST_LOG", "trace")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server = ServerProcess { child, log, stdout };
    let url = format!("https://127.0.0.1:{http}");
    let health = format!("{url}/healthz");
    eventually("the server answers", || {
        let (health, ca_path) = (health.clone(), ca_path.clone());
        async move {
            let ca = std::fs::read_to_string(&ca_path).ok()?;
            http_client(Some(&ca))
                .get(&health)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    let printed = std::fs::read_to_string(&server.stdout).unwrap();
    let token = printed
        .lines()
        .find_map(|l| l.strip_prefix("admin token (shown once, stored hashed): "))
        .unwrap_or_else(|| panic!("no admin token in {printed:?}"))
        .to_owned();
    (server, url, token, ca_path)
}

fn fleetctl(config_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env("FLEET_CONFIG_DIR", config_dir)
        .env_remove("FLEET_SERVER")
        .env_remove("FLEET_TOKEN")
        .output()
        .unwrap()
}

/// What fleetctl printed, both streams, and its exit code.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs fleetctl off the runtime's threads (the server keeps answering).
async fn fleetctl_async<S: AsRef<str>>(config_dir: &Path, args: &[S]) -> Run {
    let cfg = config_dir.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fleetctl(&cfg, &args)
    })
    .await
    .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Everything seen that may not hold a secret, and the secrets.
#[derive(Default)]
struct Seen {
    texts: Vec<(String, String)>,
}

impl Seen {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.texts.push((what.into(), text.into()));
    }

    fn run(&mut self, what: &str, run: &Run) {
        self.add(format!("{what} (stdout)"), run.stdout.clone());
        self.add(format!("{what} (stderr)"), run.stderr.clone());
    }

    /// No secret, nor its hex sha256 (as stored), nor either as a debug
    /// list of bytes (as sled's trace level prints keys), nor the raw
    /// sha256 as bytes, in anything seen.
    fn assert_free_of(&self, secrets: &[&str]) {
        let bytes = |b: &[u8]| format!("{b:?}").trim_matches(['[', ']']).to_owned();
        for secret in secrets {
            let hash = hash_token(secret);
            let forms = [
                ("a token", secret.to_string()),
                ("a token's hash", hash.clone()),
                ("a token as bytes", bytes(secret.as_bytes())),
                ("a token's hash as bytes", bytes(hash.as_bytes())),
                ("a token's raw hash", bytes(&hex::decode(&hash).unwrap())),
            ];
            for (what, text) in &self.texts {
                for (form, needle) in &forms {
                    assert!(!text.contains(needle), "{form} is in {what}:\n{text}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_roles_are_created_refused_revoked_and_audited_and_no_secret_leaks() {
    let site = Site::new();
    let (mut server, url, admin, ca_path) = start_server(&site).await;
    let ca = ca_path.display().to_string();
    let cfg = tempfile::tempdir().unwrap();
    let cfg = cfg.path();
    let mut seen = Seen::default();
    let as_token = |token: &str, args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend([
            "--server".into(),
            url.clone(),
            "--token".into(),
            token.into(),
        ]);
        all
    };

    let login = fleetctl_async(
        cfg,
        &["login", "--server", &url, "--token", &admin, "--ca", &ca],
    )
    .await;
    assert_eq!(login.code, Some(0), "{}", login.stderr);
    seen.run("login", &login);

    // Created tokens are printed once, on stdout (nothing else there).
    let create = fleetctl_async(
        cfg,
        &["tokens", "create", "--name", "ci", "--role", "operator"],
    )
    .await;
    assert_eq!(create.code, Some(0), "{}", create.stderr);
    let ci = create.stdout.trim().to_owned();
    assert!(ci.starts_with("fleet_") && !ci.contains('\n'), "{ci:?}");
    assert!(
        create.stderr.contains("shown only this once"),
        "{}",
        create.stderr
    );
    let create = fleetctl_async(
        cfg,
        &["tokens", "create", "--name", "dash", "--role", "viewer"],
    )
    .await;
    let dash = create.stdout.trim().to_owned();
    let create = fleetctl_async(
        cfg,
        &[
            "tokens", "create", "--name", "spare", "--role", "admin", "-o", "json",
        ],
    )
    .await;
    let spare: serde_json::Value = serde_json::from_str(&create.stdout).unwrap();
    assert_eq!(spare["role"], "admin");
    let spare = spare["token"].as_str().unwrap().to_owned();
    let bad_role =
        fleetctl_async(cfg, &["tokens", "create", "--name", "x", "--role", "root"]).await;
    assert_eq!(bad_role.code, Some(2), "{}", bad_role.stderr);
    seen.run("create with a bad role", &bad_role);
    let taken = fleetctl_async(
        cfg,
        &["tokens", "create", "--name", "ci", "--role", "viewer"],
    )
    .await;
    assert_eq!(taken.code, Some(3), "{}", taken.stderr);
    assert!(taken.stderr.contains("exists"), "{}", taken.stderr);
    seen.run("create a taken name", &taken);

    let list = fleetctl_async(cfg, &["tokens", "list"]).await;
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    for (name, role) in [
        ("admin", "admin"),
        ("ci", "operator"),
        ("dash", "viewer"),
        ("spare", "admin"),
    ] {
        assert!(
            list.stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains(role)),
            "{name} {role} in\n{}",
            list.stdout
        );
    }
    seen.run("tokens list", &list);
    seen.run(
        "tokens ls -o json",
        &fleetctl_async(cfg, &["tokens", "ls", "-o", "json"]).await,
    );

    // A viewer may read, not change; an operator may not manage tokens.
    let read = fleetctl_async(cfg, &as_token(&dash, &["devices", "ls"])).await;
    assert_eq!(read.code, Some(0), "{}", read.stderr);
    seen.run("viewer reads", &read);
    let refused = [
        (
            &dash,
            vec!["groups", "add", "cams", "-s", "role=camera"],
            "needs the admin role",
        ),
        (
            &dash,
            vec!["rollout", "pause", "1"],
            "needs the operator role",
        ),
        (&ci, vec!["tokens", "list"], "needs the admin role"),
        (&ci, vec!["audit"], "needs the admin role"),
    ];
    for (token, args, says) in refused {
        let run = fleetctl_async(cfg, &as_token(token, &args)).await;
        assert_eq!(run.code, Some(3), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        seen.run(&format!("refused {args:?}"), &run);
    }
    let wrong = format!("fleet_{}", "ab".repeat(32));
    let run = fleetctl_async(cfg, &as_token(&wrong, &["devices", "ls"])).await;
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(run.stderr.contains("log in again"), "{}", run.stderr);
    seen.run("a wrong token", &run);

    // Revocation: the token is refused from then on; the last admin token stays.
    let run = fleetctl_async(cfg, &["tokens", "revoke", "ci"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    seen.run("revoke ci", &run);
    let run = fleetctl_async(cfg, &as_token(&ci, &["devices", "ls"])).await;
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    seen.run("a revoked token", &run);
    let run = fleetctl_async(cfg, &["tokens", "revoke", "spare"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = fleetctl_async(cfg, &["tokens", "revoke", "admin"]).await;
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(run.stderr.contains("last admin token"), "{}", run.stderr);
    seen.run("revoke the last admin", &run);

    // The same refusals straight over HTTP: their bodies.
    let http = http_client(Some(&std::fs::read_to_string(&ca_path).unwrap()));
    for (token, method, path) in [
        (None, reqwest::Method::POST, "/api/v1/groups"),
        (Some(&wrong), reqwest::Method::GET, "/api/v1/devices"),
        (Some(&ci), reqwest::Method::POST, "/api/v1/rollouts/1/pause"),
        (Some(&dash), reqwest::Method::POST, "/api/v1/tokens"),
        (Some(&dash), reqwest::Method::DELETE, "/api/v1/tokens/admin"),
        (
            Some(&admin),
            reqwest::Method::DELETE,
            "/api/v1/tokens/admin",
        ),
    ] {
        let mut req = http.request(method.clone(), format!("{url}{path}"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.json(&serde_json::json!({})).send().await.unwrap();
        assert!(
            resp.status().is_client_error(),
            "{method} {path}: {}",
            resp.status()
        );
        seen.add(
            format!("the answer to {method} {path}"),
            resp.text().await.unwrap(),
        );
    }

    // The audit log: a table, and JSON.
    let audit = fleetctl_async(cfg, &["audit", "--limit", "1000"]).await;
    assert_eq!(audit.code, Some(0), "{}", audit.stderr);
    let lines: Vec<&str> = audit.stdout.lines().collect();
    assert!(
        lines[0].contains("WHO") && lines[0].contains("FROM"),
        "{}",
        audit.stdout
    );
    for (who, path, status) in [
        ("admin (admin)", "/api/v1/tokens", "201"),
        ("dash (viewer)", "/api/v1/groups", "403"),
        ("ci (operator)", "/api/v1/tokens", "403"),
        ("admin (admin)", "/api/v1/tokens/ci", "200"),
        ("anonymous", "/api/v1/devices", "401"),
        ("admin (admin)", "/api/v1/tokens/admin", "409"),
    ] {
        assert!(
            lines.iter().any(|l| l.contains(who)
                && l.contains(path)
                && l.contains(status)
                && l.contains("127.0.0.1:")),
            "{who} {path} {status} in\n{}",
            audit.stdout
        );
    }
    seen.run("audit", &audit);
    let json = fleetctl_async(cfg, &["audit", "--limit", "1000", "-o", "json"]).await;
    let records: Vec<serde_json::Value> = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(records.len(), lines.len() - 1);
    seen.run("audit -o json", &json);
    let run = fleetctl_async(cfg, &as_token(&dash, &["audit"])).await;
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    seen.run("audit as a viewer", &run);

    server.stop();
    let log = server.log();
    assert!(
        log.contains("request refused"),
        "the log has the refusals:\n{log}"
    );
    assert!(log.contains("TRACE"), "the log is at trace level");
    seen.add("the server's log", log);
    seen.assert_free_of(&[&admin, &ci, &dash, &spare, &wrong]);
}
