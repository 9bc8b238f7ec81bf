//! A RAUC system on this machine for tests: Debian's real `rauc` service on a private D-Bus,
//! two file-backed raw slots, a test keyring made with openssl, bundles made with `rauc bundle`,
//! and a bootloader that keeps RAUC's U-Boot semantics (`BOOT_ORDER`, three tries a slot) in
//! files, driven through RAUC's `custom` bootloader backend. [`System::power_on`] asks that
//! bootloader which slot to start and (re)starts the service in it. Shared through `#[path]`
//! (the includer declares `mod debian` from `origin/tests/common/debian.rs`).
//!
//! Needs root (RAUC mounts a bundle through a loop device); installs `rauc`, `squashfs-tools`,
//! `dbus` and `openssl` from Debian when missing.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vehicle_peer::rauc::Rauc;

use super::debian;

pub(crate) const SLOT_BYTES: usize = 2 << 20;
pub(crate) const COMPATIBLE: &str = "depotmesh-test-gateway";

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

pub(crate) fn run(command: &mut Command) -> String {
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
pub(crate) fn keyring(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
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
pub(crate) struct System {
    /// Everything of it.
    pub(crate) dir: tempfile::TempDir,
    /// The release keyring's certificate (in RAUC's keyring).
    pub(crate) cert: PathBuf,
    /// Its key.
    pub(crate) key: PathBuf,
    bus: Child,
    service: Option<Child>,
    /// The bootname of the slot the system booted last.
    pub(crate) booted: String,
}

impl System {
    pub(crate) fn start() -> Self {
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

    pub(crate) fn path(&self, name: &str) -> PathBuf {
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
    pub(crate) fn rauc(&self) -> Rauc {
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
    pub(crate) fn power_on(&mut self) {
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
    pub(crate) fn bundle(
        &self,
        name: &str,
        version: &str,
        image: &[u8],
        signer: (&Path, &Path),
    ) -> PathBuf {
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

    pub(crate) fn slot_holds(&self, slot: &str, image: &[u8]) -> bool {
        fs::read(self.path(&format!("slot{slot}.img"))).unwrap()[..image.len()] == *image
    }

    pub(crate) fn env_var(&self, name: &str) -> String {
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
