//! The `origin` binary with its offline keys in a PKCS #11 token (SoftHSM2), as an operator
//! runs it: `--offline-keys 'pkcs11:token=…?module-path=…&pin-source=FILE'`. `init` makes the
//! offline keys inside the token (never extractable, as OpenSC's `pkcs11-tool` sees them),
//! `keys` lists their ids, `rotate --key-type rsa` makes the new key in the token too, a release
//! is signed there and `verify` is clean. Bad input is refused with an error naming what was
//! wrong, never the PIN, and changes no file and no token object: a wrong PIN, a PIN file that
//! is not there, a token label no token has (the message lists the tokens present), a URI
//! attribute the origin does not take, a key file offered to a token. A key pair whose private
//! half may leave the token, put there by another tool, is refused as extractable.

#![allow(clippy::unwrap_used)]

#[path = "common/debian.rs"]
mod debian;
#[path = "common/origin_cli.rs"]
mod origin_cli;
#[path = "common/softhsm.rs"]
mod softhsm;

use std::collections::BTreeMap;
use std::path::PathBuf;

use origin_cli::{OriginCli, Run, command_line, image, release_args};
use serde_json::Value;
use softhsm::{PIN, SoftHsm};

/// The token every test keeps its origin's offline keys in.
const TOKEN: &str = "depotmesh-origin";

/// A SoftHSM2 with one token, and an origin whose offline keys are in it (PIN from a file),
/// initialised.
struct TokenOrigin {
    work: tempfile::TempDir,
    hsm: SoftHsm,
    origin: OriginCli,
}

impl TokenOrigin {
    fn init() -> Self {
        let work = tempfile::tempdir().unwrap();
        let hsm = SoftHsm::new(work.path());
        hsm.init_token(TOKEN);
        let pin = work.path().join("token.pin");
        std::fs::write(&pin, format!("{PIN}\n")).unwrap();
        let origin = OriginCli::new(work.path().join("origin"), hsm.uri(TOKEN, &pin))
            .with_env("SOFTHSM2_CONF", &hsm.conf);
        let run = checked(origin.run(&["init"]));
        assert!(run.ok, "{}", run.stderr);
        Self { work, hsm, origin }
    }

    /// Each private key in the token by label, with its access flags as `pkcs11-tool` prints
    /// them (`sensitive, always sensitive, never extractable, local`).
    fn private_keys(&self) -> BTreeMap<String, String> {
        let listing = self.hsm.objects(TOKEN);
        let mut keys = BTreeMap::new();
        for object in listing.split("Private Key Object").skip(1) {
            // The object's own lines end where the next object starts.
            let object = object.split(" Key Object").next().unwrap_or_default();
            let field = |name: &str| {
                object
                    .lines()
                    .find_map(|line| line.trim().strip_prefix(name))
                    .map(|value| value.trim().to_owned())
                    .unwrap_or_default()
            };
            keys.insert(field("label:"), field("Access:"));
        }
        keys
    }

    /// Every file of the origin and every object of the token, to show that a refused
    /// command changed neither.
    fn state(&self) -> (BTreeMap<PathBuf, Vec<u8>>, String) {
        (self.origin.files(), self.hsm.objects(TOKEN))
    }

    /// `origin` with `--offline-keys URI`, which must fail naming each of `expected`, without
    /// the PIN, and change nothing.
    fn refused(&self, uri: &str, args: &[impl AsRef<str>], expected: &[&str]) -> String {
        let before = self.state();
        let run = checked(self.origin.run_with_keys(uri, args));
        assert!(
            !run.ok,
            "origin {} succeeded: {}",
            command_line(args),
            run.stdout
        );
        for wanted in expected {
            assert!(run.stderr.contains(wanted), "{wanted:?} in {}", run.stderr);
        }
        let after = self.state();
        let changed: Vec<_> = (before.0.iter().chain(&after.0))
            .map(|(file, _)| file)
            .filter(|file| before.0.get(*file) != after.0.get(*file))
            .collect();
        assert!(
            changed.is_empty(),
            "origin {} changed {changed:?}",
            command_line(args)
        );
        assert_eq!(
            before.1,
            after.1,
            "origin {} changed the token",
            command_line(args)
        );
        run.stderr
    }

    /// The key ids `origin keys` lists for `repository`'s `role`.
    fn listed(&self, repository: &str, role: &str) -> Vec<String> {
        let run = checked(self.origin.run(&["keys"]));
        assert!(run.ok, "{}", run.stderr);
        run.stdout
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|key| key["repository"] == repository && key["role"] == role)
            .map(|key| {
                assert_eq!(
                    key["offline"],
                    role == "root" || (role == "targets" && repository == "image")
                );
                key["keyid"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// The key ids `repository`'s latest root lists for `role`.
    fn in_root(&self, repository: &str, role: &str) -> Vec<String> {
        let root = self.origin.latest_root(repository);
        root["roles"][role]["keyids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_owned())
            .collect()
    }
}

/// `run`, checked never to print the token's PIN.
fn checked(run: Run) -> Run {
    assert!(
        !run.stdout.contains(PIN) && !run.stderr.contains(PIN),
        "the PIN was printed: {}{}",
        run.stdout,
        run.stderr
    );
    run
}

fn rotate_targets_to_rsa() -> [&'static str; 7] {
    [
        "rotate",
        "--repository",
        "image",
        "--role",
        "targets",
        "--key-type",
        "rsa",
    ]
}

#[test]
fn the_cli_keeps_the_offline_keys_in_a_token_whose_pin_is_in_a_file() {
    let t = TokenOrigin::init();
    let origin = &t.origin;
    // Offline keys are the token's ECDSA P-256 keys; online ones, ed25519 files.
    let types = origin.key_types("image");
    let types: Vec<(&str, &str)> = types
        .iter()
        .map(|(r, t)| (r.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("root", "ecdsa"),
            ("snapshot", "ed25519"),
            ("targets", "ecdsa"),
            ("timestamp", "ed25519")
        ]
    );
    for (repository, role) in [
        ("image", "root"),
        ("image", "targets"),
        ("image", "snapshot"),
        ("director", "root"),
        ("director", "targets"),
    ] {
        assert_eq!(
            t.listed(repository, role),
            t.in_root(repository, role),
            "{repository} {role}"
        );
    }
    // The token holds them, never extractable; no offline key is a file on the origin.
    let keys = t.private_keys();
    for label in ["image-root", "image-targets", "director-root"] {
        let access = &keys[label];
        assert!(
            access.contains("sensitive") && access.contains("never extractable"),
            "{label}: {access}"
        );
    }
    let key_files: Vec<String> = origin
        .files()
        .into_keys()
        .filter(|file| file.starts_with("keys"))
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        key_files
            .iter()
            .all(|file| !file.contains("-root") && !file.contains("image-targets")),
        "{key_files:?}"
    );

    // The image targets key moves to RSA, made in the token; the old one stays, retired.
    let old_targets = t.in_root("image", "targets");
    let run = checked(origin.run(&rotate_targets_to_rsa()));
    assert!(
        run.ok && run.stdout.contains("root v2"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(origin.key_types("image")["targets"], "rsa");
    let new_targets = t.listed("image", "targets");
    assert_eq!(new_targets, t.in_root("image", "targets"));
    assert_ne!(new_targets, old_targets);
    let keys = t.private_keys();
    assert!(
        keys["image-targets"].contains("never extractable"),
        "{keys:?}"
    );
    assert!(keys.contains_key("image-targets.retired-v1"), "{keys:?}");
    assert!(t.hsm.objects(TOKEN).contains("Private Key Object; RSA"));

    // A release signed by the token's RSA key; every repository verifies.
    let file = t.work.path().join("brake.bin");
    std::fs::write(&file, image(50_000, 1)).unwrap();
    let run = checked(origin.run(&release_args(&file, "ecu/brake-1.0.0.bin", 1)));
    assert!(
        run.ok && run.stdout.contains("image targets v3"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let run = checked(origin.run(&["verify"]));
    assert!(
        run.ok && run.stdout.contains("every repository verifies"),
        "{}{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn bad_token_input_is_refused_naming_it_and_changes_nothing() {
    let t = TokenOrigin::init();
    // `origin keys` makes the audit key on first use: made before the state is compared.
    t.listed("image", "root");
    let work = t.work.path();
    let module = t.hsm.module.display();
    let rotate = rotate_targets_to_rsa();

    let wrong_pin = work.join("wrong.pin");
    std::fs::write(&wrong_pin, "11112222\n").unwrap();
    let stderr = t.refused(
        &t.hsm.uri(TOKEN, &wrong_pin),
        &rotate,
        &[&format!("pkcs11:token={TOKEN}"), "logging in", "PIN"],
    );
    assert!(!stderr.contains("11112222"), "{stderr}");
    // The same with a release: refused before a byte is stored or signed, and the audit log
    // (made by a first release, with the right PIN) gains no entry.
    let first = work.join("brake-1.bin");
    std::fs::write(&first, image(10_000, 2)).unwrap();
    let run = checked(
        t.origin
            .run(&release_args(&first, "ecu/brake-1.0.0.bin", 1)),
    );
    assert!(run.ok, "{}", run.stderr);
    let second = work.join("brake-2.bin");
    std::fs::write(&second, image(10_000, 3)).unwrap();
    t.refused(
        &t.hsm.uri(TOKEN, &wrong_pin),
        &release_args(&second, "ecu/brake-2.0.0.bin", 2),
        &["logging in"],
    );

    let missing = work.join("no-such.pin");
    t.refused(
        &t.hsm.uri(TOKEN, &missing),
        &rotate,
        &["cannot read the PIN from", &missing.display().to_string()],
    );

    t.refused(
        &t.hsm.uri("no-such-token", &work.join("token.pin")),
        &rotate,
        &[
            "token=no-such-token",
            "0 tokens match",
            // Only initialised tokens: not SoftHSM2's blank free one.
            &format!("(present: {TOKEN});"),
        ],
    );

    let with_object = format!(
        "pkcs11:token={TOKEN};object=image-root?module-path={module}&pin-source={}",
        work.join("token.pin").display()
    );
    t.refused(
        &with_object,
        &rotate,
        &["--offline-keys", "attribute object is not taken here"],
    );

    // A key file offered for a key kept in the token.
    let key_file = work.join("new-targets.json");
    let run = checked(t.origin.run(&[
        "keygen",
        "--out",
        key_file.to_str().unwrap(),
        "--type",
        "rsa",
    ]));
    assert!(run.ok, "{}", run.stderr);
    let uri = t.origin.offline_keys.to_str().unwrap().to_owned();
    t.refused(
        &uri,
        &[
            "rotate",
            "--repository",
            "image",
            "--role",
            "targets",
            "--new-key",
            key_file.to_str().unwrap(),
        ],
        &[&format!("pkcs11:token={TOKEN}"), "takes no key from a file"],
    );

    // After all that, the right PIN still works, with a URI that names no token: the one
    // initialised token is the only match.
    let any_token = format!(
        "pkcs11:?module-path={module}&pin-source={}",
        work.join("token.pin").display()
    );
    let run = checked(t.origin.run_with_keys(&any_token, &rotate));
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(t.origin.key_types("image")["targets"], "rsa");
}

#[test]
fn a_key_that_can_leave_the_token_is_refused() {
    let t = TokenOrigin::init();
    t.listed("image", "root");
    // Someone replaces the image root key with a key pair of their own making, its private half
    // extractable (as OpenSC's tool makes it when asked).
    for kind in ["privkey", "pubkey"] {
        t.hsm.tool(
            TOKEN,
            &["--delete-object", "--type", kind, "--label", "image-root"],
        );
    }
    t.hsm.tool(
        TOKEN,
        &[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "image-root",
            "--usage-sign",
            "--extractable",
        ],
    );
    let access = &t.private_keys()["image-root"];
    assert!(
        access.contains("extractable") && !access.contains("never extractable"),
        "{access}"
    );
    // Every command that signs with the root refuses the key, naming it.
    let uri = t.origin.offline_keys.to_str().unwrap().to_owned();
    for role in ["targets", "root"] {
        t.refused(
            &uri,
            &[
                "rotate",
                "--repository",
                "image",
                "--role",
                role,
                "--key-type",
                "ecdsa",
            ],
            &[
                r#"key "image-root" is extractable"#,
                &format!("pkcs11:token={TOKEN}"),
            ],
        );
    }
    // What needs no root key still works.
    let run = checked(t.origin.run(&["verify"]));
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
}
