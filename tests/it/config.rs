//! The binary's answer to a config it cannot use: exit status 64 (`EX_USAGE`) and every
//! bad key named on stderr, for `serve` as for `check-config`; other failures stay 1.

use std::process::{Command, Output, Stdio};

use crate::helpers::{config_text, serve_command};

/// Wrong in several sections at once: a bad address and a typo in `[server]`, an unknown
/// backend, missing secrets, a link to a `javascript:` URL, a destination without type.
const BAD: &str = r#"
[server]
listen = "nowhere"
lisen = "typo"

[store]
backend = "postgres"

[security]
secret = "a-long-enough-secret-value"

[[links]]
slug = "demo"
offer = "javascript:alert(1)"

[[destinations]]
name = "hook"
"#;

const BAD_KEYS: &[&str] = &[
    "server.listen",
    "server.lisen",
    "store.backend",
    "security.admin_token",
    "security.postback_key",
    "links[0].offer",
    "destinations[0].type",
];

/// Runs the binary with `args` and no `CAKELINK_*` variables from the test's
/// environment.
fn cakelink(args: &[&str], config: &std::path::Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cakelink"));
    command.args(args).arg("--config").arg(config);
    for (name, _) in std::env::vars() {
        if name.starts_with("CAKELINK_") {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null()).output().expect("the binary runs")
}

fn assert_names_every_bad_key(stderr: &str) {
    for key in BAD_KEYS {
        assert!(stderr.contains(&format!("{key}: ")), "{key} missing from stderr:\n{stderr}");
    }
}

#[test]
fn check_config_exits_64_naming_every_bad_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, BAD).expect("write config");
    let out = cakelink(&["check-config"], &path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{stderr}");
    assert_names_every_bad_key(&stderr);
}

#[test]
fn serve_exits_64_naming_every_bad_key_before_binding() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    let log = dir.path().join("stderr.log");
    std::fs::write(&path, BAD).expect("write config");
    let status = serve_command(&path, &log).status().expect("the binary runs");
    let stderr = std::fs::read_to_string(&log).expect("stderr log");
    assert_eq!(status.code(), Some(64), "stderr:\n{stderr}");
    assert_names_every_bad_key(&stderr);
}

#[test]
fn an_unreadable_config_is_a_config_error_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = cakelink(&["check-config"], &dir.path().join("missing.toml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn other_failures_still_exit_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("good.toml");
    let store = format!("path = {:?}", dir.path().join("db").display().to_string());
    std::fs::write(&path, config_text("127.0.0.1:0", &store, "", "")).expect("write config");
    let ok = cakelink(&["check-config"], &path);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let out = cakelink(&["postback-url", "--network", "no-such-network"], &path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("no-such-network"), "{stderr}");
}

/// `store.replicas_ack` and `store.replicas_ack_timeout_ms`: defaults, bounds, and the
/// embedded store, which has no replicas to wait for.
#[test]
fn replicas_ack_keys_have_defaults_bounds_and_need_redis() {
    use std::time::Duration;

    use cakelink::config::Config;
    use cakelink::store::{Backend, ReplicaAck};

    let parse = |store: &str| Config::parse(&config_text("127.0.0.1:0", store, "", ""), |_| None);
    let replicas_of = |store: &str| match parse(store).unwrap_or_else(|e| panic!("{store}: {e}")).store.backend {
        Backend::Redis { replicas, .. } | Backend::RedisCluster { replicas, .. } => replicas,
        Backend::Embedded { .. } => panic!("{store}: not redis"),
    };
    let redis = "backend = \"redis\"\nurl = \"redis://127.0.0.1:6379/\"\n";
    let cluster = "backend = \"redis\"\nurls = [\"redis://127.0.0.1:7000/\", \"redis://127.0.0.1:7001/\"]\n";

    let default = ReplicaAck { replicas: 0, timeout: Duration::from_millis(100) };
    assert_eq!(replicas_of(redis), default);
    assert_eq!(ReplicaAck::default(), default);
    let one = ReplicaAck { replicas: 1, timeout: Duration::from_millis(250) };
    assert_eq!(replicas_of(&format!("{redis}replicas_ack = 1\nreplicas_ack_timeout_ms = 250\n")), one);
    assert_eq!(replicas_of(&format!("{cluster}replicas_ack = 1\nreplicas_ack_timeout_ms = 250\n")), one);
    let limits = ReplicaAck { replicas: 16, timeout: Duration::from_millis(1000) };
    assert_eq!(replicas_of(&format!("{redis}replicas_ack = 16\nreplicas_ack_timeout_ms = 1000\n")), limits);

    let bad_keys = |store: &str| {
        let mut keys: Vec<String> =
            parse(store).err().unwrap_or_else(|| panic!("{store}: accepted")).0.into_iter().map(|e| e.key).collect();
        keys.sort();
        keys
    };
    // WAIT with a timeout of 0 would wait for ever; more than a second eats the request's.
    assert_eq!(
        bad_keys(&format!("{redis}replicas_ack = 17\nreplicas_ack_timeout_ms = 0\n")),
        ["store.replicas_ack", "store.replicas_ack_timeout_ms"]
    );
    assert_eq!(
        bad_keys(&format!("{redis}replicas_ack = -1\nreplicas_ack_timeout_ms = 1001\n")),
        ["store.replicas_ack", "store.replicas_ack_timeout_ms"]
    );
    assert_eq!(bad_keys(&format!("{redis}replicas_ack = \"one\"\n")), ["store.replicas_ack"]);

    // The embedded store has no replicas: asking for one is an error naming the key,
    // not a setting silently ignored; 0 (the default) is fine.
    let embedded = "backend = \"embedded\"\npath = \"x\"\n";
    assert_eq!(bad_keys(&format!("{embedded}replicas_ack = 1\n")), ["store.replicas_ack"]);
    let Err(errors) = parse(&format!("{embedded}replicas_ack = 1\n")) else { panic!("replicas_ack accepted") };
    let errors = errors.to_string();
    assert!(errors.contains("redis"), "{errors}");
    assert!(parse(&format!("{embedded}replicas_ack = 0\n")).is_ok());
}
