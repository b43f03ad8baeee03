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
