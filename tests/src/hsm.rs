//! SoftHSM2, the PKCS #11 token tests keep the origin's keys in: installed from Debian's archive
//! when missing (CI runs as root), with a configuration and token directory of the test's own
//! ([`in_softhsm`]), and fresh tokens ([`token`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The user PIN of every test token.
pub const PIN: &str = "20261206";

/// Where Debian puts the module.
const MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];

/// Set in the child process [`in_softhsm`] runs a test in.
const CHILD: &str = "DEPOTMESH_SOFTHSM_CHILD";

/// The SoftHSM2 module, installed if missing.
pub fn module() -> PathBuf {
    static MODULE: OnceLock<PathBuf> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let found = || MODULES.iter().map(PathBuf::from).find(|path| path.exists());
            if found().is_none() {
                let install = Command::new("sh")
                    .args([
                        "-c",
                        "export DEBIAN_FRONTEND=noninteractive; \
                         apt-get install -y --no-install-recommends softhsm2 >/dev/null 2>&1 || \
                         (apt-get update >/dev/null 2>&1 && \
                          apt-get install -y --no-install-recommends softhsm2 >/dev/null 2>&1)",
                    ])
                    .status()
                    .unwrap();
                assert!(
                    install.success(),
                    "this test needs SoftHSM2: `apt-get install softhsm2` failed (run as root, \
                     with Debian's archive reachable)"
                );
            }
            found().expect("softhsm2 is installed but its module is not where Debian puts it")
        })
        .clone()
}

/// Runs the test `name` of this test binary with SoftHSM2 configured: the module reads
/// `SOFTHSM2_CONF` once, and this workspace forbids the `unsafe` that setting a process's own
/// environment takes, so the test runs again in a child process of the same binary with its own
/// configuration and token directory under `work`, and `body` runs there. The child's output is
/// shown when it fails.
pub fn in_softhsm(name: &str, work: &Path, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    module();
    let tokens = work.join("softhsm-tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = work.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    crate::child::rerun_with_env(
        name,
        &[
            (OsStr::new("SOFTHSM2_CONF"), conf.as_os_str()),
            (OsStr::new(CHILD), OsStr::new("1")),
        ],
    );
}

/// A new token labelled `label` (user PIN [`PIN`]), inside [`in_softhsm`]; returns its
/// `pkcs11:` URI for `--offline-keys`.
pub fn token(label: &str) -> String {
    let module = module();
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            "0000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "softhsm2-util --init-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "pkcs11:token={label}?module-path={}&pin-value={PIN}",
        module.display()
    )
}
