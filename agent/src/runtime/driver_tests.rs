use super::*;

fn strs(args: Vec<OsString>) -> Vec<String> {
    args.into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn options_render_the_runtime_command_line() {
    let run = RunOpts {
        bundle: "/b".into(),
        pid_file: Some("/b/pid".into()),
        detach: true,
    };
    assert_eq!(
        strs(run.args("c1")),
        [
            "run",
            "--bundle",
            "/b",
            "--detach",
            "--pid-file",
            "/b/pid",
            "c1"
        ]
    );
    let create = CreateOpts {
        bundle: "/b".into(),
        pid_file: None,
    };
    assert_eq!(strs(create.args("c1")), ["create", "--bundle", "/b", "c1"]);
    assert_eq!(strs(StartOpts.args("c1")), ["start", "c1"]);
    assert_eq!(strs(StateOpts.args("c1")), ["state", "c1"]);
    let kill = KillOpts {
        signal: KillSignal::Term,
        all: true,
    };
    assert_eq!(strs(kill.args("c1")), ["kill", "--all", "c1", "TERM"]);
    assert_eq!(
        strs(DeleteOpts { force: true }.args("c1")),
        ["delete", "--force", "c1"]
    );
    let exec = ExecOpts {
        command: vec!["sh".into(), "-c".into(), "true".into()],
        env: vec!["A=1".into()],
        cwd: Some("/tmp".into()),
        user: Some("1000:1000".into()),
        detach: false,
    };
    assert_eq!(
        strs(exec.args("c1")),
        [
            "exec",
            "--env",
            "A=1",
            "--cwd",
            "/tmp",
            "--user",
            "1000:1000",
            "c1",
            "sh",
            "-c",
            "true"
        ]
    );
    assert_eq!(strs(ListOpts.args()), ["list", "--format", "json"]);
}

#[test]
fn log_option_differs_between_runtimes() {
    assert_eq!(
        strs(RuntimeKind::Crun.log_args(Path::new("/x/log"))),
        ["--log=file:/x/log"]
    );
    assert_eq!(
        strs(RuntimeKind::Runc.log_args(Path::new("/x/log"))),
        ["--log", "/x/log", "--log-format", "json"]
    );
}

#[test]
fn state_output_of_both_runtimes_parses() {
    let runc = r#"{"ociVersion":"1.0.2-dev","id":"a","pid":42,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"2024-01-01T00:00:00Z","owner":"root"}"#;
    let state: ContainerState = serde_json::from_str(runc).unwrap();
    assert_eq!((state.pid, state.status), (42, Status::Running));
    let crun = r#"{"ociVersion":"1.0.0","id":"a","pid":0,"status":"stopped","bundle":"/b","rootfs":"/b/rootfs","created":"x","owner":"","annotations":{"k":"v"}}"#;
    let state: ContainerState = serde_json::from_str(crun).unwrap();
    assert_eq!(state.status, Status::Stopped);
    let odd: ContainerState = serde_json::from_str(r#"{"id":"a","status":"frozen-ish"}"#).unwrap();
    assert_eq!(odd.status, Status::Unknown);
}

#[test]
fn runtime_json_logs_become_messages() {
    let log = "{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found\",\"time\":\"t\"}\nplain line\n";
    assert_eq!(
        runtime_log_text(log),
        "exec: \"nope\": not found\nplain line"
    );
}
