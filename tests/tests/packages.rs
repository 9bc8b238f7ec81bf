//! The Debian packages that `packaging/build-debs.sh` builds hold what an operator installs, and
//! install. Built here from the debug binaries beside this test (target/debug/, where `cargo test
//! --workspace` puts them; when one is missing, the script builds them with `cargo build`), each
//! package is read with `dpkg-deb` and checked for
//! - its control fields: name, the workspace's version, the machine's architecture, a
//!   maintainer, `Depends` from `dpkg-shlibdeps` (plus systemd's sysusers where it makes a user);
//! - exactly the expected files, with their modes, all root's: the binary in /usr/bin, stripped
//!   (no symbol table, no debug sections: read from its ELF section headers), the units, the
//!   sysusers.d and tmpfiles.d files, the example configuration in /etc/depotmesh (its conffiles),
//!   the docs, copyright and changelog; the maintainer scripts parse and have every name filled in;
//! - its units: the same as `config/` (one source), running /usr/bin/<binary>, documented by files
//!   the package installs, hardened, accepted by `systemd-analyze verify` with the extracted
//!   binary, and within an exposure score of `systemd-analyze security`;
//! - its binary, extracted, answers `--version` with its name and the workspace's version.
//!
//! Then the three are installed for real into a throwaway root (`dpkg --root`, maintainer scripts
//! run outside it with DPKG_ROOT set, as for a system image): the users exist, the state
//! directories have their owners and modes, the conffiles are registered; a purge removes the
//! files and keeps the state. The checkers are tested on made-up input too, so that a checker
//! that can no longer fail is noticed.
//!
//! Needs Debian's dpkg, dpkg-dev (dpkg-shlibdeps), binutils (strip) and systemd
//! (systemd-analyze); the install needs root, as the rest of the suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One package as the script must build it.
#[derive(Debug)]
struct Expected {
    package: &'static str,
    binary: &'static str,
    /// Units in /lib/systemd/system.
    units: &'static [&'static str],
    /// Conffiles under /etc, with their modes.
    conffiles: &'static [(&'static str, u32)],
    /// Docs under /usr/share/doc/<package>/, besides copyright and changelog.gz.
    docs: &'static [&'static str],
    /// The system user it makes, if any.
    user: Option<&'static str>,
    /// Its state directory under /var/lib/depotmesh and that directory's mode.
    state: (&'static str, u32),
    /// The highest `systemd-analyze security` exposure its services may have, in tenths (the
    /// tool's `--threshold`: 20 is an exposure of 2.0).
    max_exposure: u32,
}

const PACKAGES: [Expected; 3] = [
    Expected {
        package: "depotmesh-origin",
        binary: "origin",
        units: &[
            "origin-serve.service",
            "origin-timestamp.service",
            "origin-timestamp.timer",
        ],
        conffiles: &[("/etc/depotmesh/origin-storage.env", 0o600)],
        docs: &[
            "README.md",
            "config/README.md",
            // The alert rules and dashboards an operator loads (config/monitoring/README.md).
            "config/monitoring/README.md",
            "config/monitoring/alerts.test.yml",
            "config/monitoring/alerts.yml",
            "config/monitoring/grafana/depots.json",
            "config/monitoring/grafana/director.json",
            "config/monitoring/grafana/fleet-cellular.json",
            "docs/architecture.md",
            "docs/director.md",
            "docs/operate.md",
            "docs/security.md",
            "docs/walkthrough.md",
            "examples/campaign.toml",
            "examples/vehicle-registration.toml",
        ],
        user: Some("depotmesh-origin"),
        state: ("origin", 0o700),
        max_exposure: 20,
    },
    Expected {
        package: "depotmesh-depot",
        binary: "depot-cache",
        units: &["depot-cache.service"],
        conffiles: &[("/etc/depotmesh/depot.toml", 0o644)],
        docs: &[
            "README.md",
            "config/README.md",
            "docs/architecture.md",
            "docs/operate.md",
            "docs/security.md",
        ],
        user: Some("depotmesh-depot"),
        state: ("depot", 0o750),
        max_exposure: 20,
    },
    Expected {
        package: "depotmesh-vehicle",
        binary: "vehicle-peer",
        units: &["vehicle-peer.service"],
        conffiles: &[
            ("/etc/depotmesh/ecu.toml", 0o644),
            ("/etc/depotmesh/vehicle.toml", 0o644),
        ],
        docs: &[
            "README.md",
            "config/README.md",
            "docs/architecture.md",
            "docs/flasher.md",
            "docs/operate.md",
            "docs/security.md",
        ],
        // Root: it writes ECU banks and the boot environment (config/vehicle-peer.service).
        user: None,
        state: ("vehicle", 0o700),
        max_exposure: 35,
    },
];

/// Directives every service unit must set (each as a line starting with it).
const HARDENING: [&str; 13] = [
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelTunables=yes",
    "ProtectControlGroups=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Fails with the Debian package to install when `command` is missing.
fn require(command: &str, debian_package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "this test needs {command} (Debian's {debian_package} package: apt-get install {debian_package})"
    );
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(command: &mut Command) -> String {
    String::from_utf8(run(command).stdout).unwrap()
}

// ---- The control file ----

/// The single-line fields of a control file (continuation lines of Description left out).
fn control_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with(' '))
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// What is wrong with a package's control fields.
fn control_problems(
    fields: &BTreeMap<String, String>,
    expected: &Expected,
    version: &str,
    architecture: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or("");
    for (name, want) in [
        ("Package", expected.package),
        ("Version", version),
        ("Architecture", architecture),
    ] {
        if field(name) != want {
            problems.push(format!("{name} is {:?}, not {want:?}", field(name)));
        }
    }
    let maintainer = field("Maintainer");
    let well_formed = maintainer
        .split_once(" <")
        .is_some_and(|(name, mail)| !name.is_empty() && mail.ends_with('>') && mail.contains('@'));
    if !well_formed {
        problems.push(format!("Maintainer {maintainer:?} is not `Name <address>`"));
    }
    let depends = field("Depends");
    // What dpkg-shlibdeps finds for a Rust binary: glibc and the unwinder.
    for library in ["libc6 (>= ", "libgcc-s1 (>= "] {
        if !depends.contains(library) {
            problems.push(format!("Depends {depends:?} has no {library}…)"));
        }
    }
    let sysusers = "systemd | systemd-standalone-sysusers | systemd-sysusers";
    if expected.user.is_some() != depends.contains(sysusers) {
        problems.push(format!(
            "Depends {depends:?}: {sysusers} is needed exactly when the package makes a user"
        ));
    }
    if field("Installed-Size").parse::<u64>().is_err() {
        problems.push(format!("Installed-Size {:?}", field("Installed-Size")));
    }
    for name in ["Section", "Priority", "Description"] {
        if field(name).is_empty() {
            problems.push(format!("no {name}"));
        }
    }
    problems
}

// ---- The contents ----

/// One entry of `dpkg-deb --contents`: mode string, owner/group, size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    mode: String,
    owner: String,
    size: u64,
}

/// `dpkg-deb --contents` (tar's verbose listing) by path, without the leading `.`.
fn parse_listing(listing: &str) -> BTreeMap<String, Entry> {
    listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [mode, owner, size, _date, _time, path, ..] = fields[..] else {
                return None;
            };
            let path = path.strip_prefix('.')?.trim_end_matches('/');
            let path = if path.is_empty() { "/" } else { path };
            Some((
                path.to_owned(),
                Entry {
                    mode: mode.to_owned(),
                    owner: owner.to_owned(),
                    size: size.parse().ok()?,
                },
            ))
        })
        .collect()
}

/// `rwxr-xr-x`-style permissions for a mode.
fn permissions(mode: u32) -> String {
    let mut text = String::new();
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// The regular files a package must hold, with their modes.
fn expected_files(expected: &Expected) -> BTreeMap<String, u32> {
    let mut files = BTreeMap::new();
    files.insert(format!("/usr/bin/{}", expected.binary), 0o755);
    for unit in expected.units {
        files.insert(format!("/lib/systemd/system/{unit}"), 0o644);
    }
    if expected.user.is_some() {
        files.insert(
            format!("/usr/lib/sysusers.d/{}.conf", expected.package),
            0o644,
        );
    }
    files.insert(
        format!("/usr/lib/tmpfiles.d/{}.conf", expected.package),
        0o644,
    );
    for (path, mode) in expected.conffiles {
        files.insert((*path).to_owned(), *mode);
    }
    let doc = format!("/usr/share/doc/{}", expected.package);
    for path in expected.docs.iter().chain(&["copyright", "changelog.gz"]) {
        files.insert(format!("{doc}/{path}"), 0o644);
    }
    files
}

/// What is wrong with a package's listing: missing, unexpected or mis-moded files, entries not
/// root's, directories other than 0755, empty files.
fn listing_problems(listing: &BTreeMap<String, Entry>, expected: &Expected) -> Vec<String> {
    let mut problems = Vec::new();
    let files = expected_files(expected);
    for (path, mode) in &files {
        match listing.get(path) {
            None => problems.push(format!("{path} is missing")),
            Some(entry) => {
                let want = format!("-{}", permissions(*mode));
                if entry.mode != want {
                    problems.push(format!("{path} is {}, not {want}", entry.mode));
                }
                if entry.size == 0 {
                    problems.push(format!("{path} is empty"));
                }
            }
        }
    }
    for (path, entry) in listing {
        if entry.owner != "root/root" {
            problems.push(format!("{path} belongs to {}, not root/root", entry.owner));
        }
        if entry.mode.starts_with('d') {
            if entry.mode != "drwxr-xr-x" {
                problems.push(format!("directory {path} is {}", entry.mode));
            }
        } else if !files.contains_key(path) {
            problems.push(format!("{path} ({}) is not expected", entry.mode));
        }
    }
    problems
}

// ---- The binary ----

/// The sections of a 64-bit little-endian ELF file: name, type, flags.
fn elf_sections(bytes: &[u8]) -> Result<Vec<(String, u32, u64)>, String> {
    let u16_at = |offset: usize| -> Result<u16, String> {
        let slice = bytes.get(offset..offset + 2).ok_or("truncated")?;
        Ok(u16::from_le_bytes(slice.try_into().unwrap()))
    };
    let u32_at = |offset: usize| -> Result<u32, String> {
        let slice = bytes.get(offset..offset + 4).ok_or("truncated")?;
        Ok(u32::from_le_bytes(slice.try_into().unwrap()))
    };
    let u64_at = |offset: usize| -> Result<usize, String> {
        let slice = bytes.get(offset..offset + 8).ok_or("truncated")?;
        usize::try_from(u64::from_le_bytes(slice.try_into().unwrap())).map_err(|e| e.to_string())
    };
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if bytes.get(4..6) != Some(&[2, 1]) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let table = u64_at(0x28)?;
    let entry_size = usize::from(u16_at(0x3a)?);
    let count = usize::from(u16_at(0x3c)?);
    let names_index = usize::from(u16_at(0x3e)?);
    let header = |index: usize| table + index * entry_size;
    let names_offset = u64_at(header(names_index) + 0x18)?;
    let mut sections = Vec::new();
    for index in 0..count {
        let name_offset = names_offset + usize::try_from(u32_at(header(index))?).unwrap();
        let name = bytes
            .get(name_offset..)
            .and_then(|rest| rest.split(|byte| *byte == 0).next())
            .ok_or("section name out of the file")?;
        let kind = u32_at(header(index) + 4)?;
        let flags = u64::try_from(u64_at(header(index) + 8)?).unwrap();
        sections.push((String::from_utf8_lossy(name).into_owned(), kind, flags));
    }
    Ok(sections)
}

/// The sections that make a binary unstripped: a symbol table (SHT_SYMTAB), and debug
/// information not loaded at run time (`.debug_*` without SHF_ALLOC; Rust's
/// `.debug_gdb_scripts` is loaded, and stays).
fn unstripped_sections(bytes: &[u8]) -> Result<Vec<String>, String> {
    const SHT_SYMTAB: u32 = 2;
    const SHF_ALLOC: u64 = 2;
    Ok(elf_sections(bytes)?
        .into_iter()
        .filter(|(name, kind, flags)| {
            *kind == SHT_SYMTAB || (name.starts_with(".debug") && flags & SHF_ALLOC == 0)
        })
        .map(|(name, _, _)| name)
        .collect())
}

/// The `@NAME@` placeholders of a maintainer script template left in `text`.
fn placeholders(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    for (start, _) in text.match_indices('@') {
        let rest = &text[start + 1..];
        let length = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(rest.len());
        if length > 0 && rest[length..].starts_with('@') {
            found.push(&text[start..start + length + 2]);
        }
    }
    found
}

// ---- The units ----

/// The values of `key=` in a unit, in order.
fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// What is wrong with one packaged unit, `root` being the extracted package.
fn unit_problems(name: &str, text: &str, root: &Path, binary: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let source = std::fs::read_to_string(workspace().join("config").join(name)).unwrap();
    if text != source {
        problems.push(format!("{name} differs from config/{name}"));
    }
    for uri in directive(text, "Documentation")
        .iter()
        .flat_map(|value| value.split_whitespace())
    {
        match uri.strip_prefix("file://") {
            Some(path) if root.join(path.trim_start_matches('/')).is_file() => {}
            Some(path) => problems.push(format!("{name}: {path} is not in the package")),
            None => problems.push(format!("{name}: Documentation={uri} is not a local file")),
        }
    }
    if directive(text, "Documentation").is_empty() {
        problems.push(format!("{name} has no Documentation="));
    }
    if name.ends_with(".service") {
        let exec = directive(text, "ExecStart");
        let program = exec.first().and_then(|line| line.split_whitespace().next());
        let want = format!("/usr/bin/{binary}");
        if program != Some(want.as_str()) {
            problems.push(format!("{name} runs {program:?}, not {want}"));
        }
        for setting in HARDENING {
            if !text.lines().any(|line| line.starts_with(setting)) {
                problems.push(format!("{name} does not set {setting}"));
            }
        }
        if text.contains("/usr/local/") {
            problems.push(format!("{name} names /usr/local"));
        }
    }
    problems
}

/// Runs `systemd-analyze verify` and `security` on a package's units, copied with
/// /usr/bin/<binary> pointed at the extracted binary (systemd checks that it is executable).
fn verify_units(root: &Path, expected: &Expected, work: &Path) {
    let dir = work.join(format!("{}-units", expected.package));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = root.join("usr/bin").join(expected.binary);
    let mut copies = Vec::new();
    for unit in expected.units {
        let text = std::fs::read_to_string(root.join("lib/systemd/system").join(unit)).unwrap();
        let text = text.replace(
            &format!("ExecStart=/usr/bin/{}", expected.binary),
            &format!("ExecStart={}", binary.display()),
        );
        let copy = dir.join(unit);
        std::fs::write(&copy, text).unwrap();
        copies.push(copy);
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(&copies)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify of {}'s units: {stderr}",
        expected.package
    );
    for copy in copies.iter().filter(|copy| {
        copy.extension()
            .is_some_and(|extension| extension == "service")
    }) {
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--threshold={}", expected.max_exposure))
            .arg(copy)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&security.stdout);
        let overall = report
            .lines()
            .find(|line| line.contains("Overall exposure level"))
            .unwrap_or("no overall exposure level");
        eprintln!("{}", overall.trim_start_matches(['→', ' ']));
        assert!(
            security.status.success(),
            "{}: exposure above {} tenths: {report}{}",
            copy.display(),
            expected.max_exposure,
            String::from_utf8_lossy(&security.stderr)
        );
    }
}

// ---- The test ----

#[test]
fn packages_hold_their_files_and_units_and_install() {
    for (command, package) in [
        ("dpkg-deb", "dpkg"),
        ("dpkg", "dpkg"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("strip", "binutils"),
        ("systemd-analyze", "systemd"),
    ] {
        require(command, package);
    }
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("debs");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut script = Command::new("bash");
    script
        .arg(workspace().join("packaging/build-debs.sh"))
        .args(["--profile", "dev", "--compression", "gzip", "--out"])
        .arg(&out)
        .env("CARGO", cargo);
    // target/debug/deps/packages-… is this test; the roles' binaries are in target/debug/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    if PACKAGES
        .iter()
        .all(|expected| profile_dir.join(expected.binary).is_file())
    {
        script.arg("--bin-dir").arg(profile_dir);
    }
    let built = run(&mut script);
    let debs: Vec<PathBuf> = String::from_utf8(built.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    let version = env!("CARGO_PKG_VERSION");
    let architecture = stdout(Command::new("dpkg").arg("--print-architecture"));
    let architecture = architecture.trim();

    for expected in &PACKAGES {
        let deb = out.join(format!("{}_{version}_{architecture}.deb", expected.package));
        assert!(debs.contains(&deb), "{} not among {debs:?}", deb.display());
        let info = stdout(Command::new("dpkg-deb").arg("--field").arg(&deb));
        let problems = control_problems(&control_fields(&info), expected, version, architecture);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}\n{info}",
            deb.display()
        );

        let listing = stdout(Command::new("dpkg-deb").arg("--contents").arg(&deb));
        let problems = listing_problems(&parse_listing(&listing), expected);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}\n{listing}",
            deb.display()
        );

        // The maintainer scripts and conffiles.
        let control = work.path().join(format!("{}-control", expected.package));
        run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
        let conffiles: BTreeSet<String> = std::fs::read_to_string(control.join("conffiles"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let want: BTreeSet<String> = expected
            .conffiles
            .iter()
            .map(|(path, _)| (*path).to_owned())
            .collect();
        assert_eq!(conffiles, want, "{}'s conffiles", expected.package);
        for script in ["postinst", "prerm", "postrm"] {
            let path = control.join(script);
            let text = std::fs::read_to_string(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{} {script}", expected.package);
            assert!(text.starts_with("#!/bin/sh\n"), "{script}: {text}");
            assert!(text.contains("\nset -e\n"), "{script}: {text}");
            let unfilled = placeholders(&text);
            assert!(unfilled.is_empty(), "{script}: {unfilled:?} left: {text}");
            assert!(text.contains(expected.package), "{script}: {text}");
            run(Command::new("sh").arg("-n").arg(&path));
        }

        // The files themselves.
        let root = work.path().join(expected.package);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        let binary = root.join("usr/bin").join(expected.binary);
        let unstripped = unstripped_sections(&std::fs::read(&binary).unwrap()).unwrap();
        assert!(
            unstripped.is_empty(),
            "{} is not stripped: {unstripped:?}",
            binary.display()
        );
        let answer = stdout(Command::new(&binary).arg("--version"));
        assert_eq!(answer.trim(), format!("{} {version}", expected.binary));
        for unit in expected.units {
            let text = std::fs::read_to_string(root.join("lib/systemd/system").join(unit)).unwrap();
            let problems = unit_problems(unit, &text, &root, expected.binary);
            assert!(problems.is_empty(), "{problems:#?}");
        }
        verify_units(&root, expected, work.path());
    }

    install_into_a_throwaway_root(&debs, work.path());
}

/// `dpkg --root`: what the maintainer scripts make, and what a purge leaves.
fn install_into_a_throwaway_root(debs: &[PathBuf], work: &Path) {
    let uid = stdout(Command::new("id").arg("-u"));
    if uid.trim() != "0" {
        eprintln!("not installing the packages into a throwaway root: that needs root");
        return;
    }
    let root = work.join("root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // Outside a chroot the dependencies (libc6, systemd) are not in the root: only this
    // package's own steps are checked. The scripts run here with DPKG_ROOT set, as for an image.
    let dpkg = |args: &[&str]| {
        let mut command = Command::new("dpkg");
        command
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-not-root",
                "--log=/dev/null",
            ])
            .args(args);
        command
    };
    let mut install = dpkg(&["--install"]);
    install.args(debs);
    run(&mut install);
    // Again, as an upgrade to the same version: the scripts' upgrade path.
    let mut reinstall = dpkg(&["--install"]);
    reinstall.args(debs);
    run(&mut reinstall);

    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let uid_of = |user: &str| -> u32 {
        let line = passwd
            .lines()
            .find(|line| line.starts_with(&format!("{user}:")))
            .unwrap_or_else(|| panic!("no user {user} in {passwd}"));
        let fields: Vec<&str> = line.split(':').collect();
        assert_eq!(fields[6], "/usr/sbin/nologin", "{line}");
        fields[2].parse().unwrap()
    };
    for expected in &PACKAGES {
        let status = stdout(
            Command::new("dpkg")
                .arg(format!("--root={}", root.display()))
                .args(["--status", expected.package]),
        );
        assert!(status.contains("Status: install ok installed"), "{status}");
        for (path, _) in expected.conffiles {
            assert!(status.contains(&format!("\n {path} ")), "{path}: {status}");
        }
        let (name, mode) = expected.state;
        let state = root.join("var/lib/depotmesh").join(name);
        let metadata = std::fs::metadata(&state)
            .unwrap_or_else(|error| panic!("{}: {error}", state.display()));
        assert_eq!(metadata.mode() & 0o7777, mode, "{}", state.display());
        let owner = expected.user.map_or(0, uid_of);
        assert_eq!(metadata.uid(), owner, "{}", state.display());
        assert_eq!(metadata.gid(), owner, "{}", state.display());
        let binary = root.join("usr/bin").join(expected.binary);
        stdout(Command::new(&binary).arg("--version"));
    }

    let mut purge = dpkg(&["--purge"]);
    purge.args(PACKAGES.iter().map(|expected| expected.package));
    run(&mut purge);
    for expected in &PACKAGES {
        assert!(!root.join("usr/bin").join(expected.binary).exists());
        for (path, _) in expected.conffiles {
            assert!(!root.join(path.trim_start_matches('/')).exists(), "{path}");
        }
        // Keys, repositories, stores and journals outlive the package.
        assert!(
            root.join("var/lib/depotmesh")
                .join(expected.state.0)
                .is_dir()
        );
    }
    let enabled = root.join("var/lib/systemd/deb-systemd-helper-enabled");
    let left: Vec<_> = std::fs::read_dir(&enabled)
        .map(|entries| entries.map(|entry| entry.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "deb-systemd-helper state left: {left:?}");
}

// ---- The checkers on made-up input ----

#[test]
fn the_checkers_find_a_missing_file_a_stray_one_and_an_unstripped_binary() {
    let expected = &PACKAGES[1];
    let mut listing = String::from("drwxr-xr-x root/root 0 2026-01-01 00:00 ./\n");
    for (path, mode) in expected_files(expected) {
        listing.push_str(&format!(
            "-{} root/root 10 2026-01-01 00:00 .{path}\n",
            permissions(mode)
        ));
    }
    assert_eq!(
        listing_problems(&parse_listing(&listing), expected),
        Vec::<String>::new()
    );

    let missing = listing.replace(
        "./etc/depotmesh/depot.toml\n",
        "./etc/depotmesh/other.toml\n",
    );
    let problems = listing_problems(&parse_listing(&missing), expected);
    assert!(
        problems.contains(&"/etc/depotmesh/depot.toml is missing".to_owned()),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|problem| problem.starts_with("/etc/depotmesh/other.toml")),
        "{problems:?}"
    );
    let writable = listing.replace("-rwxr-xr-x root/root", "-rwxrwxrwx root/root");
    assert_eq!(
        listing_problems(&parse_listing(&writable), expected).len(),
        1
    );
    let owned = listing.replace("root/root 10", "builder/builder 10");
    assert!(!listing_problems(&parse_listing(&owned), expected).is_empty());

    let mut fields = control_fields(
        "Package: depotmesh-depot\nVersion: 0.1.0\nArchitecture: amd64\n\
         Maintainer: A <a@example.invalid>\nInstalled-Size: 1\n\
         Depends: libc6 (>= 2.34), libgcc-s1 (>= 4.2), systemd | systemd-standalone-sysusers | systemd-sysusers\n\
         Section: admin\nPriority: optional\nDescription: d\n long\n",
    );
    assert_eq!(
        control_problems(&fields, expected, "0.1.0", "amd64"),
        Vec::<String>::new()
    );
    fields.insert("Version".into(), "0.0.9".into());
    fields.insert("Maintainer".into(), "nobody".into());
    assert_eq!(
        control_problems(&fields, expected, "0.1.0", "amd64").len(),
        2
    );

    // What Cargo builds is not stripped (symbols and line tables, as this test's own binary):
    // the check tells it apart from what the packages hold.
    let built = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let sections = unstripped_sections(&built).unwrap();
    assert!(sections.contains(&".symtab".to_owned()), "{sections:?}");
    assert!(sections.contains(&".debug_line".to_owned()), "{sections:?}");
    assert!(unstripped_sections(b"#!/bin/sh\n").is_err());

    assert_eq!(
        placeholders("#!/bin/sh\n# mail a@example.invalid @ 9\nfor unit in @UNITS@; do"),
        ["@UNITS@"]
    );
}
