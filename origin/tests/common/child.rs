//! Running a test again in a child process with an environment of its own: the workspace
//! forbids `unsafe`, so a test cannot set a variable for itself (`SOFTHSM2_CONF` for a token,
//! `AWS_ACCESS_KEY_ID` for object storage), as the real services get them from systemd.
//! Shared through `#[path]` by origin's tests and the tests crate.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::ffi::OsStr;
use std::process::Command;

/// Runs test `name` (the caller, by its full name) of this test binary in a child process with
/// `env` added, and checks that it ran and passed (the child's output in the message when not).
pub fn rerun_with_env<K: AsRef<OsStr>, V: AsRef<OsStr>>(name: &str, env: &[(K, V)]) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .envs(env.iter().map(|(key, value)| (key, value)))
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{name} in its child process failed:\n{output}"
    );
    assert!(output.contains("1 passed"), "{name} did not run:\n{output}");
}
