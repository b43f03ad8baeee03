//! The systemd unit in `deploy/` is one systemd accepts, and gives a shutdown the time the
//! application's own deadline allows.

use std::process::Command;
use std::time::Duration;

use cakelink::config::Config;

use crate::helpers::config_text;

const UNIT: &str = include_str!("../../deploy/cakelink.service");
const INSTALLED_BINARY: &str = "/usr/local/bin/cakelink";

/// The value of `key=` in the unit (the last one wins, as in systemd).
fn setting<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines().rev().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not installed: deploy/cakelink.service was not verified");
        return;
    }
    // The unit names the installed binary; here it is the one this test was built with.
    assert!(UNIT.contains(&format!("ExecStart={INSTALLED_BINARY} ")), "ExecStart runs {INSTALLED_BINARY}");
    let unit = UNIT.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_cakelink"));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cakelink.service");
    std::fs::write(&path, unit).expect("write the unit");
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // systemd only warns about an unknown key or a value it cannot parse, and ignores the
    // line: any remark about this unit is a failure. Remarks about the machine's own units
    // (verify loads the unit's dependencies) are not this unit's to fix.
    let about_unit: Vec<&str> = text.lines().filter(|l| l.contains("cakelink.service")).collect();
    assert!(out.status.success() && about_unit.is_empty(), "systemd-analyze verify: {}\n{text}", out.status);
    let others: Vec<&str> = text.lines().filter(|l| !l.contains("cakelink.service")).collect();
    if !others.is_empty() {
        eprintln!("systemd-analyze verify, about other units:\n{}", others.join("\n"));
    }
}

#[test]
fn systemd_waits_longer_than_the_application_takes_to_stop() {
    let config = Config::parse(&config_text("127.0.0.1:0", "backend = \"embedded\"", "", ""), |_| None)
        .unwrap_or_else(|e| panic!("config: {e}"));
    let app = config.server.shutdown_timeout;
    let stop = setting(UNIT, "TimeoutStopSec").expect("TimeoutStopSec");
    let stop = Duration::from_secs(stop.parse().expect("TimeoutStopSec in seconds"));
    assert!(stop > app + Duration::from_secs(5), "TimeoutStopSec {stop:?} leaves room past shutdown_timeout {app:?}");
    assert_eq!(setting(UNIT, "KillSignal"), Some("SIGTERM"));
    assert_eq!(setting(UNIT, "ExecReload"), Some("/bin/kill -HUP $MAINPID"), "SIGHUP reloads TLS and geo");
    // The relative default paths of the store and the spool land in the state directory.
    assert_eq!(setting(UNIT, "StateDirectory"), Some("cakelink"));
    assert_eq!(setting(UNIT, "WorkingDirectory"), Some("/var/lib/cakelink"));
}
