//! Boot control in a U-Boot environment: byte-compatible with U-Boot's own `mkenvimage`, atomic
//! under a power cut in the middle of any save, and RAUC's trial / commit / fall-back behaviour.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::cell::RefCell;
use std::rc::Rc;

use delta::{ReadAt, WriteAt};
use vehicle_peer::boot::{
    BootError, BootState, DEFAULT_TRIES, Env, EnvLayout, EnvStore, Slot, UbootBoot,
};

const DATA: &str = "tests/data/uboot";

fn slot(name: &str) -> Slot {
    Slot::new(name).unwrap()
}

fn slots() -> Vec<Slot> {
    vec![slot("A"), slot("B")]
}

/// Memory that can lose power: write number `cut_at` (counting from 0) lands only its first
/// `keep` bytes, and it and everything after fail.
#[derive(Clone, Debug, Default)]
struct Flash {
    bytes: Rc<RefCell<Vec<u8>>>,
    writes: Rc<RefCell<usize>>,
    cut: Option<(usize, usize)>,
}

impl Flash {
    fn new(len: usize) -> Self {
        Self {
            bytes: Rc::new(RefCell::new(vec![0xff; len])),
            ..Self::default()
        }
    }

    fn with_cut(&self, cut_at: usize, keep: usize) -> Self {
        *self.writes.borrow_mut() = 0;
        Self {
            cut: Some((cut_at, keep)),
            ..self.clone()
        }
    }

    fn powered(&self) -> Self {
        Self {
            cut: None,
            ..self.clone()
        }
    }

    fn cut_happened(&self) -> bool {
        self.cut.is_some_and(|(at, _)| *self.writes.borrow() > at)
    }
}

impl ReadAt for Flash {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let bytes = self.bytes.borrow();
        let start = offset as usize;
        let src = bytes
            .get(start..start + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl WriteAt for Flash {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let n = {
            let mut writes = self.writes.borrow_mut();
            *writes += 1;
            *writes - 1
        };
        let len = match self.cut {
            Some((at, _)) if n > at => return Err(std::io::Error::other("power is off")),
            Some((at, keep)) if n == at => keep.min(data.len()),
            _ => data.len(),
        };
        let start = offset as usize;
        self.bytes.borrow_mut()[start..start + len].copy_from_slice(&data[..len]);
        if len < data.len() {
            return Err(std::io::Error::other("power cut mid-write"));
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if self.cut_happened() {
            return Err(std::io::Error::other("power is off"));
        }
        Ok(())
    }
}

fn redundant(size: usize) -> EnvLayout {
    EnvLayout {
        size,
        first: 0,
        second: Some(size as u64),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DATA}/{name}")).unwrap()
}

fn expected_vars() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::fs::read_to_string(format!("{DATA}/env.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    vars.sort();
    vars
}

fn vars(env: &Env) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Marking the running slot good gives back the try its boot spent, keeps the order, and
/// writes nothing when no try was spent (a flash environment wears with every save).
#[test]
fn marking_the_booted_slot_good_gives_its_try_back() {
    let flash = Flash::new(0x4000);
    let mut boot = UbootBoot::new(
        EnvStore::new(flash.clone(), redundant(0x2000)).unwrap(),
        slots(),
    );
    boot.provision().unwrap();
    let booted = boot.boot().unwrap();
    assert_eq!(booted, slot("A"));
    assert_eq!(boot.state().unwrap().left[&slot("A")], DEFAULT_TRIES - 1);
    assert!(boot.mark_good(&booted).unwrap());
    let state = boot.state().unwrap();
    assert_eq!(state.left[&slot("A")], DEFAULT_TRIES);
    assert_eq!(state.order, vec![slot("A"), slot("B")]);
    let before = flash.bytes.borrow().clone();
    assert!(!boot.mark_good(&booted).unwrap());
    assert_eq!(*flash.bytes.borrow(), before);
    // Booting many times, each marked good: never falls over to B.
    for _ in 0..10 {
        let booted = boot.boot().unwrap();
        assert_eq!(booted, slot("A"));
        boot.mark_good(&booted).unwrap();
    }
    assert!(boot.mark_good(&slot("C")).is_err());
}

#[test]
fn reads_what_mkenvimage_writes() {
    // Single copy: CRC, data, 0xff padding.
    let single = Flash::new(0);
    *single.bytes.borrow_mut() = fixture("single.bin");
    let layout = EnvLayout {
        size: 0x2000,
        first: 0,
        second: None,
    };
    let env = EnvStore::new(single, layout).unwrap().load().unwrap();
    assert_eq!(vars(&env), expected_vars());

    // A redundant image is one copy; put it as the second, with an erased first copy.
    let flash = Flash::new(0x4000);
    flash.bytes.borrow_mut()[0x2000..].copy_from_slice(&fixture("redundant.bin"));
    let mut boot = UbootBoot::new(EnvStore::new(flash, redundant(0x2000)).unwrap(), slots());
    let state = boot.state().unwrap();
    assert_eq!(state.order, vec![slot("B"), slot("A")]);
    assert_eq!(state.left[&slot("B")], 1);
    assert_eq!(state.next_boot(), Some(&slot("B")));
}

#[test]
fn reads_what_libubootenv_fw_setenv_writes_and_continues_its_count() {
    let flash = Flash::new(0);
    *flash.bytes.borrow_mut() = fixture("libubootenv-setenv.bin");
    let mut boot = UbootBoot::new(
        EnvStore::new(flash.clone(), redundant(0x1000)).unwrap(),
        slots(),
    );
    // fw_setenv wrote copy 2 (flags 2), then copy 1 (flags 3): copy 1 is current.
    let state = boot.state().unwrap();
    assert_eq!(state.order, slots());
    assert_eq!(state.left[&slot("B")], 0);
    boot.start_trial(&slot("B")).unwrap();
    let bytes = flash.bytes.borrow().clone();
    assert_eq!(bytes[4], 3, "copy 1 is left as fw_setenv wrote it");
    assert_eq!(
        bytes[0x1004], 4,
        "our save goes to copy 2 with the next count"
    );
    assert_eq!(boot.state().unwrap().next_boot(), Some(&slot("B")));
}

#[test]
fn writes_what_mkenvimage_writes() {
    let flash = Flash::new(0x2000);
    let mut store = EnvStore::new(flash.clone(), redundant(0x1000)).unwrap();
    let mut env = Env::default();
    for (k, v) in expected_vars() {
        env.set(&k, &v).unwrap();
    }
    // Nothing valid yet: the first save goes to copy 1 with flags 1, as mkenvimage -r makes it.
    store.save(&env).unwrap();
    assert_eq!(
        flash.bytes.borrow()[..0x1000],
        fixture("redundant-sorted-zero.bin")[..]
    );
    // The next save goes to the other copy with flags 2; the first stays as it was.
    env.set("BOOT_B_LEFT", "0").unwrap();
    store.save(&env).unwrap();
    let bytes = flash.bytes.borrow().clone();
    assert_eq!(bytes[..0x1000], fixture("redundant-sorted-zero.bin")[..]);
    assert_eq!(bytes[0x1004], 2);
    assert_eq!(store.load().unwrap().get("BOOT_B_LEFT"), Some("0"));
}

#[test]
fn a_torn_or_corrupt_copy_falls_back_to_the_other() {
    let flash = Flash::new(0x800);
    let mut boot = UbootBoot::new(
        EnvStore::new(flash.clone(), redundant(0x400)).unwrap(),
        slots(),
    );
    boot.provision().unwrap();
    boot.start_trial(&slot("B")).unwrap();
    // Copy 2 holds the trial; flip a byte in its data: copy 1 (provisioned) is current again.
    flash.bytes.borrow_mut()[0x400 + 20] ^= 0x40;
    let state = boot.state().unwrap();
    assert_eq!(state.order, slots());
    // Both corrupt: a clear error naming both copies.
    flash.bytes.borrow_mut()[3] ^= 1;
    let error = boot.state().unwrap_err().to_string();
    assert!(
        error.contains("copy 1 at 0: CRC") && error.contains("copy 2 at 1024: CRC"),
        "{error}"
    );
}

#[test]
fn flags_wrap_from_255_to_0() {
    let flash = Flash::new(0x200);
    let mut store = EnvStore::new(flash.clone(), redundant(0x100)).unwrap();
    let mut env = Env::default();
    for round in 0..600u32 {
        env.set("round", &round.to_string()).unwrap();
        store.save(&env).unwrap();
        // A fresh reader (as after a reboot) sees the last save.
        let mut fresh = EnvStore::new(flash.powered(), redundant(0x100)).unwrap();
        assert_eq!(
            fresh.load().unwrap().get("round"),
            Some(round.to_string().as_str()),
            "round {round}"
        );
    }
}

#[test]
fn trial_commit_and_fall_back_follow_raucs_script() {
    let flash = Flash::new(0x2000);
    let mut boot = UbootBoot::new(EnvStore::new(flash, redundant(0x1000)).unwrap(), slots());
    boot.provision().unwrap();
    assert_eq!(boot.boot().unwrap(), slot("A"));

    // A trial that never commits (the new software hangs): one boot of B, then A again.
    boot.start_trial(&slot("B")).unwrap();
    assert_eq!(boot.boot().unwrap(), slot("B"));
    assert_eq!(boot.state().unwrap().left[&slot("B")], 0);
    assert_eq!(boot.boot().unwrap(), slot("A"));
    assert_eq!(boot.boot().unwrap(), slot("A"));

    // A trial that fails its health check: rolled back at once.
    boot.start_trial(&slot("B")).unwrap();
    assert_eq!(boot.boot().unwrap(), slot("B"));
    boot.roll_back(&slot("B"), &slot("A")).unwrap();
    let state = boot.state().unwrap();
    assert_eq!(state.order, slots());
    assert_eq!(state.left[&slot("A")], DEFAULT_TRIES);
    assert_eq!(state.left[&slot("B")], 0);
    assert_eq!(boot.boot().unwrap(), slot("A"));

    // A trial that commits: B from then on.
    boot.start_trial(&slot("B")).unwrap();
    assert_eq!(boot.boot().unwrap(), slot("B"));
    boot.commit(&slot("B")).unwrap();
    assert_eq!(boot.boot().unwrap(), slot("B"));
    assert_eq!(boot.boot().unwrap(), slot("B"));

    // Every slot out of tries: the script re-arms them all and boots the first.
    let mut state = BootState {
        order: slots(),
        left: slots().into_iter().map(|s| (s, 0)).collect(),
    };
    assert_eq!(state.boot(), Some(slot("A")));
    assert_eq!(state.left[&slot("B")], DEFAULT_TRIES);

    // Unknown slots are refused before anything is written.
    let error = boot.start_trial(&slot("C")).unwrap_err();
    assert!(error.to_string().contains("no slot C"), "{error}");
}

#[test]
fn a_power_cut_during_any_save_leaves_the_state_before_or_after_it() {
    // The flasher's boot-control steps and the bootloader's, in order.
    type Step = fn(&mut UbootBoot<Flash>) -> Result<(), BootError>;
    let steps: Vec<(&str, Step)> = vec![
        ("provision", |b| b.provision().map(|_| ())),
        ("boot", |b| b.boot().map(|_| ())),
        ("trial B", |b| b.start_trial(&slot("B"))),
        ("boot", |b| b.boot().map(|_| ())),
        ("commit B", |b| b.commit(&slot("B"))),
        ("boot", |b| b.boot().map(|_| ())),
        ("trial A", |b| b.start_trial(&slot("A"))),
        ("boot", |b| b.boot().map(|_| ())),
        ("roll back A", |b| b.roll_back(&slot("A"), &slot("B"))),
        ("boot", |b| b.boot().map(|_| ())),
    ];
    let layout = redundant(0x400);
    // The state after each step without cuts.
    let mut after = Vec::new();
    {
        let mut boot = UbootBoot::new(EnvStore::new(Flash::new(0x800), layout).unwrap(), slots());
        for (_, step) in &steps {
            step(&mut boot).unwrap();
            after.push(boot.state().unwrap());
        }
    }
    let mut cut_points = 0;
    for (i, (name, step)) in steps.iter().enumerate() {
        for keep in [0, 1, 5, 200, 0x3ff] {
            // Run the steps before this one with power, then this one with a cut in its save.
            let flash = Flash::new(0x800);
            let mut boot = UbootBoot::new(EnvStore::new(flash.clone(), layout).unwrap(), slots());
            for (_, earlier) in &steps[..i] {
                earlier(&mut boot).unwrap();
            }
            let cut = flash.with_cut(0, keep);
            let mut cut_boot = UbootBoot::new(EnvStore::new(cut.clone(), layout).unwrap(), slots());
            assert!(
                step(&mut cut_boot).is_err(),
                "step {i} ({name}) wrote nothing"
            );
            cut_points += 1;
            // Power back: a fresh reader finds the state before or after the step.
            let mut fresh =
                UbootBoot::new(EnvStore::new(flash.powered(), layout).unwrap(), slots());
            match fresh.state() {
                Ok(state) => assert!(
                    Some(&state) == after.get(i) || (i > 0 && Some(&state) == after.get(i - 1)),
                    "step {i} ({name}), {keep} bytes landed: {state:?}"
                ),
                // Only provisioning may leave nothing valid (there was nothing before it).
                Err(e) => assert_eq!(i, 0, "step {i} ({name}), {keep} bytes landed: {e}"),
            }
        }
    }
    assert_eq!(cut_points, steps.len() * 5);
}

#[test]
fn bad_environments_and_layouts_are_refused_by_name() {
    let cases: Vec<(EnvLayout, &str)> = vec![
        (
            EnvLayout {
                size: 16,
                first: 0,
                second: None,
            },
            "environment copy of 16 bytes",
        ),
        (
            EnvLayout {
                size: 0x1000,
                first: 0,
                second: Some(0x800),
            },
            "overlap",
        ),
    ];
    for (layout, want) in cases {
        let error = EnvStore::new(Flash::new(0x4000), layout).unwrap_err();
        assert!(error.to_string().contains(want), "{error}");
    }

    let write = |data: &[u8]| {
        let flash = Flash::new(0x100);
        let mut bytes = vec![0u8; 0x100];
        bytes[4..4 + data.len()].copy_from_slice(data);
        let crc = crc(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        *flash.bytes.borrow_mut() = bytes;
        let layout = EnvLayout {
            size: 0x100,
            first: 0,
            second: None,
        };
        UbootBoot::new(EnvStore::new(flash, layout).unwrap(), slots()).state()
    };
    for (data, want) in [
        (&b"BOOT_A_LEFT=3\0\0"[..], "BOOT_ORDER is not set"),
        (
            b"BOOT_ORDER=A B\0BOOT_A_LEFT=3\0\0",
            "BOOT_B_LEFT is not set",
        ),
        (
            b"BOOT_ORDER=A B\0BOOT_A_LEFT=x\0BOOT_B_LEFT=3\0\0",
            "BOOT_A_LEFT=\"x\" is not a count",
        ),
        (b"BOOT_ORDER=A\0BOOT_A_LEFT=3\0\0", "does not name slot B"),
        (b"BOOT_ORDER=A A-\0\0", "not a slot name"),
        (b"noequals\0\0", "has no '='"),
        (b"=x\0\0", "empty name"),
    ] {
        let error = write(data).unwrap_err().to_string();
        assert!(error.contains(want), "{error} (wanted {want})");
    }
    // No terminator anywhere: the data area is all entry.
    let error = write(&[b'a'; 0xfc]).unwrap_err().to_string();
    assert!(error.contains("no terminating NUL"), "{error}");

    // More variables than the copy holds.
    let mut store = EnvStore::new(Flash::new(0x200), redundant(0x100)).unwrap();
    let mut env = Env::default();
    env.set("big", &"x".repeat(300)).unwrap();
    let error = store.save(&env).unwrap_err().to_string();
    assert!(
        error.contains("needs 311 bytes, its copies hold 256"),
        "{error}"
    );
}

/// CRC-32 (IEEE), bit by bit: an independent check of the one the store uses.
fn crc(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
