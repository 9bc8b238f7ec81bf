//! Tools a test needs from Debian's archive, installed when missing (CI runs as root, as the
//! chromium helper of `director_fixture.rs` does for the browser). Shared through `#[path]`.

#![allow(dead_code, clippy::unwrap_used)]

use std::process::Command;

/// Whether `command` is on the PATH.
pub(crate) fn on_path(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command} >/dev/null")])
        .status()
        .is_ok_and(|status| status.success())
}

/// Installs Debian's `packages` (space-separated) unless `present` already holds; panics,
/// naming them, when that fails.
pub(crate) fn install_unless(present: impl Fn() -> bool, packages: &str) {
    if present() {
        return;
    }
    let status = Command::new("sh")
        .args([
            "-c",
            &format!(
                "export DEBIAN_FRONTEND=noninteractive; \
                 apt-get install -y --no-install-recommends {packages} >/dev/null 2>&1 || \
                 (apt-get update >/dev/null 2>&1 && \
                  apt-get install -y --no-install-recommends {packages} >/dev/null 2>&1)"
            ),
        ])
        .status()
        .unwrap();
    assert!(
        status.success() && present(),
        "this test needs {packages}: `apt-get install {packages}` failed (run as root, with \
         Debian's archive reachable)"
    );
}
