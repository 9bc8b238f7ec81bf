//! SoftHSM2 for tests that run the `origin` binary: a configuration and token directory of the
//! test's own, handed to each child process as `SOFTHSM2_CONF` (the tests themselves never load
//! the module, so no re-execution is needed), tokens made with `softhsm2-util`, and OpenSC's
//! `pkcs11-tool` to look into a token or put a key in it the way another tool would. Both are
//! installed from Debian's archive when missing ([`crate::debian`]). Shared by `tests/hsm_cli.rs`
//! and `tests/python_tuf.rs` (through `#[path]`, beside `common/debian.rs`).

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::debian::{install_unless, on_path};

/// The user PIN of every test token.
pub(crate) const PIN: &str = "20261206";
/// The security officer's PIN of every test token.
pub(crate) const SO_PIN: &str = "0000";

/// Where Debian puts the module.
const MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];

/// The SoftHSM2 module (and `softhsm2-util`, `pkcs11-tool`), installed if missing.
pub(crate) fn module() -> PathBuf {
    static MODULE: OnceLock<PathBuf> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let found = || MODULES.iter().map(PathBuf::from).find(|path| path.exists());
            install_unless(|| found().is_some() && on_path("softhsm2-util"), "softhsm2");
            install_unless(|| on_path("pkcs11-tool"), "opensc");
            found().unwrap()
        })
        .clone()
}

/// A SoftHSM2 of the test's own: its configuration and token directory under a work directory.
pub(crate) struct SoftHsm {
    /// The configuration file, for `SOFTHSM2_CONF`.
    pub(crate) conf: PathBuf,
    /// The PKCS #11 module.
    pub(crate) module: PathBuf,
}

impl SoftHsm {
    /// A SoftHSM2 keeping its tokens under `work`.
    pub(crate) fn new(work: &Path) -> Self {
        let module = module();
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
        Self { conf, module }
    }

    /// Makes a new token labelled `label` with user PIN [`PIN`].
    pub(crate) fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", PIN, "--so-pin", SO_PIN])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The `pkcs11:` URI of token `label`, its PIN read from `pin_file`.
    pub(crate) fn uri(&self, label: &str, pin_file: &Path) -> String {
        format!(
            "pkcs11:token={label}?module-path={}&pin-source={}",
            self.module.display(),
            pin_file.display()
        )
    }

    /// Runs `pkcs11-tool` logged in to token `label` with `args`; returns what it printed.
    pub(crate) fn tool(&self, label: &str, args: &[&str]) -> String {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", label, "--login", "--pin", PIN])
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "pkcs11-tool {}: {printed}",
            args.join(" ")
        );
        printed
    }

    /// Every object in token `label`, as `pkcs11-tool --list-objects` describes it.
    pub(crate) fn objects(&self, label: &str) -> String {
        self.tool(label, &["--list-objects"])
    }
}
