//! A Python venv with pinned packages from PyPI, made the first time a test needs it and kept
//! beside the test binaries (`target/<profile>/<name>`) while its requirements file is
//! unchanged. Debian's python3 makes a venv only with python3-venv (ensurepip): installed when
//! missing. Shared through `#[path]` (python-tuf, moto), beside `common/debian.rs` in the
//! including module.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::debian;

fn make_venv(venv: &Path) -> bool {
    let _ = std::fs::remove_dir_all(venv);
    Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The Python of venv `name`, with `requirements_file` installed.
pub(crate) fn python_with(name: &str, requirements_file: &Path) -> PathBuf {
    let requirements = std::fs::read(requirements_file).unwrap();
    let exe = std::env::current_exe().unwrap();
    let venv = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join(name);
    let python = venv.join("bin").join("python");
    let installed = venv.join("installed-requirements.txt");
    if python.exists() && std::fs::read(&installed).ok().as_ref() == Some(&requirements) {
        return python;
    }
    debian::install_unless(|| make_venv(&venv), "python3 python3-venv");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "-r",
        ])
        .arg(requirements_file)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "pip install -r {} into {} failed (PyPI must be reachable the first time)",
        requirements_file.display(),
        venv.display()
    );
    std::fs::write(&installed, &requirements).unwrap();
    python
}
