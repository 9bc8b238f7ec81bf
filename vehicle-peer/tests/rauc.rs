//! The RAUC backend (`vehicle_peer::rauc`) against Debian's real `rauc`: a RAUC service on a
//! private D-Bus, two file-backed raw slots, bundles signed by a test keyring with `rauc
//! bundle`, and a bootloader that keeps RAUC's U-Boot semantics (`BOOT_ORDER`, three tries a
//! slot) in files, driven through RAUC's `custom` bootloader backend. Each simulated boot asks
//! that bootloader which slot to start and restarts the service in it.
//!
//! Needs root (RAUC mounts the bundle through a loop device) and installs `rauc` and
//! `squashfs-tools` from Debian when missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../origin/tests/common/debian.rs"]
mod debian;
mod sim_ecu;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use node::storage::SledIndex;
use vehicle_peer::boot::Slot;
use vehicle_peer::flasher::{
    FlashError, HealthError, InstalledImage, Outcome, Stage, journaled, running_image_of,
    version_report_of,
};
use vehicle_peer::rauc::{Rauc, RaucEcu, step};

const SLOT_BYTES: usize = 2 << 20;
const COMPATIBLE: &str = "depotmesh-test-gateway";

/// RAUC's U-Boot integration in a shell script: the environment's `BOOT_ORDER` and
/// `BOOT_<slot>_LEFT`, one file each, for RAUC's `custom` backend interface.
const BOOTLOADER: &str = r#"#!/bin/sh
set -e
D="$(dirname "$0")/env"
order() { cat "$D/BOOT_ORDER"; }
left() { cat "$D/BOOT_$1_LEFT"; }
case "$1" in
  get-primary)
    for s in $(order); do if [ "$(left "$s")" -gt 0 ]; then echo "$s"; exit 0; fi; done
    exit 1 ;;
  set-primary)
    rest=$(for s in $(order); do [ "$s" = "$2" ] || printf '%s ' "$s"; done)
    echo "$2 $rest" > "$D/BOOT_ORDER"; echo 3 > "$D/BOOT_$2_LEFT" ;;
  get-state)
    case " $(order) " in *" $2 "*) [ "$(left "$2")" -gt 0 ] && echo good && exit 0 ;; esac
    echo bad ;;
  set-state)
    if [ "$3" = good ]; then
      echo 3 > "$D/BOOT_$2_LEFT"
      case " $(order) " in *" $2 "*) ;; *) echo "$(order) $2" > "$D/BOOT_ORDER" ;; esac
    else
      echo 0 > "$D/BOOT_$2_LEFT"
      echo $(for s in $(order); do [ "$s" = "$2" ] || printf '%s ' "$s"; done) > "$D/BOOT_ORDER"
    fi ;;
  *) echo "unknown command $1" >&2; exit 2 ;;
esac
"#;

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn need_rauc() {
    debian::install_unless(|| debian::on_path("rauc"), "rauc");
    debian::install_unless(|| debian::on_path("mksquashfs"), "squashfs-tools");
    debian::install_unless(|| debian::on_path("dbus-daemon"), "dbus");
    debian::install_unless(|| debian::on_path("openssl"), "openssl");
}

/// A signing certificate and key made with openssl, in `dir`.
fn keyring(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.cert.pem")),
        dir.join(format!("{name}.key.pem")),
    );
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30", "-subj"])
        .arg(format!("/O=depotmesh test/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

/// A RAUC system on this machine: slots, configuration, bootloader, D-Bus and the service.
struct System {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    bus: Child,
    service: Option<Child>,
    booted: String,
}

impl System {
    fn start() -> Self {
        need_rauc();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cert, key) = keyring(d, "release");
        for slot in ["A", "B"] {
            fs::write(d.join(format!("slot{slot}.img")), vec![0u8; SLOT_BYTES]).unwrap();
        }
        fs::create_dir_all(d.join("env")).unwrap();
        fs::write(d.join("env/BOOT_ORDER"), "A B\n").unwrap();
        fs::write(d.join("env/BOOT_A_LEFT"), "3\n").unwrap();
        fs::write(d.join("env/BOOT_B_LEFT"), "3\n").unwrap();
        let bootloader = d.join("bootloader.sh");
        fs::write(&bootloader, BOOTLOADER).unwrap();
        run(Command::new("chmod").arg("0755").arg(&bootloader));
        fs::create_dir_all(d.join("mnt")).unwrap();
        fs::create_dir_all(d.join("data")).unwrap();
        let p = |name: &str| d.join(name).display().to_string();
        fs::write(
            d.join("system.conf"),
            format!(
                "[system]\ncompatible={COMPATIBLE}\nbootloader=custom\nmountprefix={}\n\
                 data-directory={}\n\n[handlers]\nbootloader-custom-backend={}\n\n\
                 [keyring]\npath={}\n\n\
                 [slot.rootfs.0]\ndevice={}\ntype=raw\nbootname=A\n\n\
                 [slot.rootfs.1]\ndevice={}\ntype=raw\nbootname=B\n",
                p("mnt"),
                p("data"),
                bootloader.display(),
                cert.display(),
                p("slotA.img"),
                p("slotB.img"),
            ),
        )
        .unwrap();
        // A private bus: RAUC's client and service use the session bus when told to.
        let bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address=unix:path={}", p("bus")))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.join("bus").exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut system = Self {
            dir,
            cert,
            key,
            bus,
            service: None,
            booted: String::new(),
        };
        system.power_on();
        system
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env(&self, command: &mut Command) {
        command
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}", self.path("bus").display()),
            )
            .env("DBUS_STARTER_BUS_TYPE", "session");
    }

    /// The RAUC client as depotmesh runs it: the environment is inherited, so it is set for
    /// this test process (every test here uses the same variables; only the path differs, and
    /// each test's client is made from its own `System`).
    fn rauc(&self) -> Rauc {
        let wrapper = self.path("rauc-client.sh");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexport DBUS_SESSION_BUS_ADDRESS=unix:path={}\n\
                 export DBUS_STARTER_BUS_TYPE=session\nexec rauc \"$@\"\n",
                self.path("bus").display()
            ),
        )
        .unwrap();
        run(Command::new("chmod").arg("0755").arg(&wrapper));
        Rauc {
            program: wrapper,
            conf: Some(self.path("system.conf")),
        }
    }

    /// The bootloader's decision at power-on, as RAUC's U-Boot script takes it: the first slot
    /// in `BOOT_ORDER` with tries left, one try spent; then the service starts in that slot.
    fn power_on(&mut self) {
        if let Some(mut service) = self.service.take() {
            service.kill().ok();
            service.wait().ok();
        }
        let env = self.path("env");
        let order = fs::read_to_string(env.join("BOOT_ORDER")).unwrap();
        let booted = order
            .split_whitespace()
            .find(|slot| {
                let left: u32 = fs::read_to_string(env.join(format!("BOOT_{slot}_LEFT")))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                if left > 0 {
                    fs::write(
                        env.join(format!("BOOT_{slot}_LEFT")),
                        format!("{}\n", left - 1),
                    )
                    .unwrap();
                }
                left > 0
            })
            .expect("no slot has tries left")
            .to_string();
        let mut service = Command::new("rauc");
        self.env(&mut service);
        let log = fs::File::create(self.path(&format!("service-{booted}.log"))).unwrap();
        service
            .arg(format!("--conf={}", self.path("system.conf").display()))
            .arg("service")
            .arg(format!("--override-boot-slot={booted}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.service = Some(service.spawn().unwrap());
        self.booted = booted;
        // Ready once it answers.
        let rauc = self.rauc();
        let deadline = Instant::now() + Duration::from_secs(20);
        while rauc.status().is_err() {
            assert!(
                Instant::now() < deadline,
                "the RAUC service did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A bundle of `image` for the rootfs slots, signed with `cert`/`key`.
    fn bundle(&self, name: &str, version: &str, image: &[u8], signer: (&Path, &Path)) -> PathBuf {
        let content = self.path(&format!("{name}-content"));
        fs::create_dir_all(&content).unwrap();
        fs::write(content.join("rootfs.img"), image).unwrap();
        fs::write(
            content.join("manifest.raucm"),
            format!(
                "[update]\ncompatible={COMPATIBLE}\nversion={version}\n\n[bundle]\nformat=plain\n\n\
                 [image.rootfs]\nfilename=rootfs.img\n"
            ),
        )
        .unwrap();
        let bundle = self.path(&format!("{name}.raucb"));
        run(Command::new("rauc")
            .arg(format!("--cert={}", signer.0.display()))
            .arg(format!("--key={}", signer.1.display()))
            .arg("bundle")
            .arg(&content)
            .arg(&bundle));
        bundle
    }

    fn slot_holds(&self, slot: &str, image: &[u8]) -> bool {
        fs::read(self.path(&format!("slot{slot}.img"))).unwrap()[..image.len()] == *image
    }

    fn env_var(&self, name: &str) -> String {
        fs::read_to_string(self.path("env").join(name))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if let Some(mut service) = self.service.take() {
            service.kill().ok();
            service.wait().ok();
        }
        self.bus.kill().ok();
        self.bus.wait().ok();
    }
}

fn old_image() -> InstalledImage {
    InstalledImage {
        target: "gateway/rootfs-1.raucb".into(),
        sha256: "11".repeat(32),
        release_counter: 1,
    }
}

fn gateway(system: &System) -> RaucEcu {
    RaucEcu {
        serial: "GW-1".into(),
        hardware_id: "gateway-v1".into(),
        key: proto::tuf::signer::KeyPair::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[5; 32])),
        installed: Some(old_image()),
        class: "rootfs".into(),
        rauc: system.rauc(),
    }
}

fn healthy(_: &Slot) -> Result<(), HealthError> {
    Ok(())
}

fn journal(system: &System) -> SledIndex {
    SledIndex::open(&system.path("journal")).unwrap()
}

#[test]
fn a_bundle_installs_through_rauc_and_commits_after_a_healthy_trial() {
    let mut system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 1);
    let bundle = system.bundle("v2", "2.0.0", &image, (&system.cert, &system.key));
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);

    // Installed into B by RAUC, and B boots next.
    let outcome = step("g1", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap();
    assert_eq!(outcome, Outcome::Reboot);
    assert!(system.slot_holds("B", &image) && !system.slot_holds("A", &image));
    assert_eq!(system.env_var("BOOT_ORDER"), "B A");
    assert_eq!(
        journaled(&journal, "GW-1").unwrap().unwrap().stage,
        Stage::Trial
    );
    // A step before the reboot only asks for it again.
    let again = step("g1", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap();
    assert_eq!(again, Outcome::Reboot);

    system.power_on();
    assert_eq!(system.booted, "B");
    let mut checked = Vec::new();
    let outcome = step(
        "g1",
        &ecu,
        &approval,
        &bundle,
        &journal,
        &mut |slot: &Slot| {
            checked.push(slot.to_string());
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Committed);
    assert_eq!(checked, ["B"], "the health check ran once, in the new slot");
    // RAUC keeps B: good, three tries again (mark-good), first in the order.
    assert_eq!(system.env_var("BOOT_B_LEFT"), "3");
    let pair = ecu.pair().unwrap();
    assert_eq!(pair.primary.as_ref().map(Slot::as_str), Some("B"));
    // The ECU reports the bundle it runs now, signed.
    let running = running_image_of("GW-1", ecu.installed.as_ref(), &journal)
        .unwrap()
        .unwrap();
    assert_eq!(running.target, approval.target());
    let report =
        version_report_of("GW-1", ecu.installed.as_ref(), &ecu.key, &journal, "n").unwrap();
    assert_eq!(report["signed"]["installed_image"], approval.target());
    // Done stays done.
    assert_eq!(
        step("g1", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap(),
        Outcome::Committed
    );
    system.power_on();
    assert_eq!(system.booted, "B");
}

#[test]
fn a_failed_health_check_rolls_back_through_rauc() {
    let mut system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 2);
    let bundle = system.bundle("v2", "2.0.0", &image, (&system.cert, &system.key));
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);
    assert_eq!(
        step("g2", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap(),
        Outcome::Reboot
    );
    system.power_on();
    assert_eq!(system.booted, "B");
    let outcome = step("g2", &ecu, &approval, &bundle, &journal, &mut |_: &Slot| {
        Err(HealthError::Unhealthy(
            "the brake service did not start".into(),
        ))
    })
    .unwrap();
    let Outcome::RolledBack { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains("GW-1") && reason.contains("brake service"),
        "{reason}"
    );
    // RAUC marked B bad and A active: the next boot is the old slot, and B is never tried.
    assert_eq!(system.env_var("BOOT_ORDER"), "A");
    assert_eq!(system.env_var("BOOT_B_LEFT"), "0");
    system.power_on();
    assert_eq!(system.booted, "A");
    // The ECU reports what it ran before.
    let running = running_image_of("GW-1", ecu.installed.as_ref(), &journal)
        .unwrap()
        .unwrap();
    assert_eq!(running, old_image());
    assert!(matches!(
        step("g2", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap(),
        Outcome::RolledBack { .. }
    ));
}

#[test]
fn a_trial_that_never_comes_up_rolls_back_when_the_bootloader_goes_back() {
    let mut system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 3);
    let bundle = system.bundle("v2", "2.0.0", &image, (&system.cert, &system.key));
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);
    assert_eq!(
        step("g3", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap(),
        Outcome::Reboot
    );
    // The new software hangs before the agent runs, three times: the bootloader spends B's
    // tries and starts A.
    for _ in 0..3 {
        system.power_on();
        assert_eq!(system.booted, "B");
    }
    system.power_on();
    assert_eq!(system.booted, "A");
    let outcome = step("g3", &ecu, &approval, &bundle, &journal, &mut |_: &Slot| {
        panic!("no health check: the new slot is not running")
    })
    .unwrap();
    let Outcome::RolledBack { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("did not come up"), "{reason}");
    assert_eq!(system.env_var("BOOT_ORDER"), "A");
    system.power_on();
    assert_eq!(system.booted, "A");
}

#[test]
fn rauc_refuses_a_bundle_signed_by_another_key_and_nothing_switches() {
    let system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 4);
    let (cert, key) = keyring(system.dir.path(), "stranger");
    let bundle = system.bundle("forged", "2.0.0", &image, (&cert, &key));
    // Even approved by the director (a compromised or mistaken release), RAUC's keyring
    // refuses it.
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);
    let error = step("g4", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, FlashError::Rauc { .. }), "{text}");
    assert!(text.contains("GW-1") && text.contains("install"), "{text}");
    assert_eq!(system.env_var("BOOT_ORDER"), "A B");
    assert!(!system.slot_holds("B", &image));
    let record = journaled(&journal, "GW-1").unwrap().unwrap();
    assert!(matches!(record.stage, Stage::Writing { .. }), "{record:?}");
    assert_eq!(
        running_image_of("GW-1", ecu.installed.as_ref(), &journal).unwrap(),
        Some(old_image())
    );
}

#[test]
fn a_file_that_is_not_the_approved_bundle_never_reaches_rauc() {
    let system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 5);
    let bundle = system.bundle("v2", "2.0.0", &image, (&system.cert, &system.key));
    let other = system.bundle(
        "v3",
        "3.0.0",
        &sim_ecu::noise(SLOT_BYTES / 2, 6),
        (&system.cert, &system.key),
    );
    // Approved: v2. Handed over: v3, validly signed for RAUC, but not what the director approved.
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);
    let error = step("g5", &ecu, &approval, &other, &journal, &mut healthy).unwrap_err();
    assert!(matches!(error, FlashError::NotApproved { .. }), "{error}");
    assert!(
        error.to_string().contains("not the approved bundle"),
        "{error}"
    );
    // RAUC never installed anything.
    assert!(!system.slot_holds("B", &image));
    assert_eq!(system.env_var("BOOT_ORDER"), "A B");
    assert!(
        !system.path("data/central.raucs").exists() || {
            let status = fs::read_to_string(system.path("data/central.raucs")).unwrap();
            !status.contains("3.0.0")
        }
    );
    // Approvals for another ECU or hardware, or without a BLAKE3, are refused before that.
    for (approval, expect) in [
        (
            sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-2", "gateway-v1", true),
            "ECU GW-2",
        ),
        (
            sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v2", true),
            "hardware",
        ),
        (
            sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", false),
            "BLAKE3",
        ),
    ] {
        let error = step("g5", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap_err();
        assert!(error.to_string().contains(expect), "{error}");
    }
}

#[test]
fn a_commit_cut_before_rauc_was_told_is_finished_after_the_power_returns() {
    let mut system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 7);
    let bundle = system.bundle("v2", "2.0.0", &image, (&system.cert, &system.key));
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);
    assert_eq!(
        step("g6", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap(),
        Outcome::Reboot
    );
    system.power_on();
    // The rollback was journaled, then the power failed before RAUC heard of it: B is still
    // first with tries left.
    let mut record = journaled(&journal, "GW-1").unwrap().unwrap();
    record.stage = Stage::RolledBack {
        reason: "ECU GW-1: unhealthy".into(),
    };
    node::storage::Index::put(
        &journal,
        b"flasher/GW-1",
        &serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    assert!(system.env_var("BOOT_ORDER").starts_with('B'));
    let outcome = step("g6", &ecu, &approval, &bundle, &journal, &mut |_: &Slot| {
        panic!("decided already: no second health check")
    })
    .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    assert_eq!(system.env_var("BOOT_ORDER"), "A");
    system.power_on();
    assert_eq!(system.booted, "A");
}
