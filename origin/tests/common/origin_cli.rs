//! The `origin` binary driven as an outside user drives it: one origin directory, its offline
//! keys given as `--offline-keys` (a directory or a `pkcs11:` URI), extra environment for the
//! child (SoftHSM2's configuration), and a snapshot of every file to show that a refused command
//! changed nothing. Shared by `tests/python_tuf.rs` and `tests/hsm_cli.rs` (through `#[path]`).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// What one run printed, and whether it succeeded.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// An origin directory and where its offline keys are.
pub(crate) struct OriginCli {
    /// The origin directory (`--dir`).
    pub(crate) dir: PathBuf,
    /// `--offline-keys`: a directory or a `pkcs11:` URI.
    pub(crate) offline_keys: OsString,
    env: Vec<(OsString, OsString)>,
}

impl OriginCli {
    pub(crate) fn new(dir: impl Into<PathBuf>, offline_keys: impl Into<OsString>) -> Self {
        Self {
            dir: dir.into(),
            offline_keys: offline_keys.into(),
            env: Vec::new(),
        }
    }

    /// Runs every command with `name` set to `value` in its environment.
    pub(crate) fn with_env(mut self, name: &str, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Runs `origin --dir DIR --offline-keys KEYS ARGS…` at the system clock.
    pub(crate) fn run(&self, args: &[impl AsRef<str>]) -> Run {
        self.run_with_keys(&self.offline_keys, args)
    }

    /// [`Self::run`] with other `--offline-keys`.
    pub(crate) fn run_with_keys(
        &self,
        offline_keys: impl AsRef<std::ffi::OsStr>,
        args: &[impl AsRef<str>],
    ) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_origin"))
            .arg("--dir")
            .arg(&self.dir)
            .arg("--offline-keys")
            .arg(offline_keys)
            .args(args.iter().map(AsRef::as_ref))
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .output()
            .unwrap();
        Run {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// [`Self::run`], which must succeed.
    pub(crate) fn ok(&self, args: &[impl AsRef<str>]) -> Run {
        let run = self.run(args);
        assert!(
            run.ok,
            "origin {}: {}{}",
            command_line(args),
            run.stdout,
            run.stderr
        );
        run
    }

    /// The image repository (`metadata/`, `targets/`), as a file host serves it.
    pub(crate) fn image_repository(&self) -> PathBuf {
        self.dir.join("image")
    }

    /// The `signed` part of `repository`'s latest root.
    pub(crate) fn latest_root(&self, repository: &str) -> Value {
        let metadata = self.dir.join(repository).join("metadata");
        let version = (1..)
            .take_while(|version| metadata.join(format!("{version}.root.json")).exists())
            .last()
            .unwrap();
        let bytes = std::fs::read(metadata.join(format!("{version}.root.json"))).unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["signed"].clone()
    }

    /// Each top-level role of `repository`'s latest root and the type of its key.
    pub(crate) fn key_types(&self, repository: &str) -> BTreeMap<String, String> {
        let root = self.latest_root(repository);
        ["root", "targets", "snapshot", "timestamp"]
            .iter()
            .map(|role| {
                let keyid = root["roles"][role]["keyids"][0].as_str().unwrap();
                let keytype = root["keys"][keyid]["keytype"].as_str().unwrap();
                ((*role).to_owned(), keytype.to_owned())
            })
            .collect()
    }

    /// Every file under the origin directory and its bytes.
    pub(crate) fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        collect(&self.dir, &self.dir, &mut files);
        files
    }
}

fn collect(base: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(base, &path, files);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            files.insert(path.strip_prefix(base).unwrap().to_path_buf(), bytes);
        }
    }
}

/// `args` as one line, for messages.
pub(crate) fn command_line(args: &[impl AsRef<str>]) -> String {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    args.join(" ")
}

/// The arguments of `origin release FILE --name NAME` for hardware `brake-v2` at release
/// counter `counter`.
pub(crate) fn release_args(file: &Path, name: &str, counter: u64) -> Vec<String> {
    let file = file.to_str().unwrap();
    ["release", file, "--name", name, "--hardware-id", "brake-v2"]
        .into_iter()
        .map(str::to_owned)
        .chain(["--release-counter".to_owned(), counter.to_string()])
        .collect()
}

/// A test image of `length` bytes, different for each `seed`.
pub(crate) fn image(length: usize, seed: u32) -> Vec<u8> {
    let mut bytes = vec![0; length];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// Hex SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
