//! Shared by the flasher's tests: banks and a boot environment on the crash-simulating disk,
//! and real deltas.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::cast_possible_truncation
)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use delta::{ReadAt, WriteAt};
use ed25519_dalek::SigningKey;
use node::storage::sim::{CrashFile, CrashStorage};
use node::storage::{Storage, StorageFile};
use proto::tuf::{Key, RoleKeys, Time, build};
use proto::uptane::{ApprovedImage, EcuState, PartialVerifier};
use serde_json::{Map, json};
use vehicle_peer::bank::Bank;

pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 29) as u8
        })
        .collect()
}

/// A real delta from `delta::create`, 16 KiB segments.
pub fn make_delta(dir: &Path, old: &[u8], new: &[u8]) -> Vec<u8> {
    std::fs::write(dir.join("old"), old).unwrap();
    std::fs::write(dir.join("new"), new).unwrap();
    let options = delta::DeltaOptions {
        segment_log: 14,
        level: 3,
        threads: 1,
        ..Default::default()
    };
    delta::create(
        &dir.join("old"),
        &dir.join("new"),
        &dir.join("patch"),
        &options,
    )
    .unwrap();
    std::fs::read(dir.join("patch")).unwrap()
}

/// A bank in a file of the crash-simulating disk; remembers where its first write went.
#[derive(Debug)]
pub struct SimBank {
    pub file: CrashFile,
    path: PathBuf,
    capacity: u64,
    pub first_write: Cell<Option<u64>>,
}

impl SimBank {
    pub fn open(storage: &CrashStorage, name: &str, capacity: u64) -> Self {
        let file = storage.open(name, true).unwrap();
        if file.len().unwrap() != capacity {
            file.set_len(capacity).unwrap();
            file.sync().unwrap();
        }
        Self {
            file,
            path: PathBuf::from(name),
            capacity,
            first_write: Cell::new(None),
        }
    }
}

impl Bank for SimBank {
    fn path(&self) -> &Path {
        &self.path
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl ReadAt for SimBank {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(offset, buf)
    }
}

impl WriteAt for SimBank {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        assert!(offset + data.len() as u64 <= self.capacity);
        if self.first_write.get().is_none() {
            self.first_write.set(Some(offset));
        }
        self.file.write_all_at(offset, data)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync()
    }
}

/// A boot environment in a file of the crash-simulating disk.
#[derive(Debug)]
pub struct SimEnv(pub CrashFile);

impl SimEnv {
    pub fn open(storage: &CrashStorage, name: &str, len: u64) -> Self {
        let file = storage.open(name, true).unwrap();
        if file.len().unwrap() != len {
            file.set_len(len).unwrap();
            file.sync().unwrap();
        }
        Self(file)
    }
}

impl ReadAt for SimEnv {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact_at(offset, buf)
    }
}

impl WriteAt for SimEnv {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all_at(offset, data)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.0.sync()
    }
}

/// The director's approval of `image` for ECU `serial` with `hardware`, through the secondary's
/// real partial verification.
pub fn approve(image: &[u8], serial: &str, hardware: &str, with_blake3: bool) -> ApprovedImage {
    let key = SigningKey::from_bytes(&[42; 32]);
    let mut entry = build::target_file(
        image,
        json!({"ecu_identifiers": {serial: {"hardware_id": hardware}}, "release_counter": 2}),
    );
    if !with_blake3 {
        entry["custom"].as_object_mut().unwrap().remove("blake3");
    }
    let now = Time::parse("2026-06-01T00:00:00Z").unwrap();
    let expires = Time::from_unix(now.unix() + 86_400);
    let targets = Map::from_iter([("ecu/brake.bin".to_string(), entry)]);
    let signed = build::sign(&build::targets(1, expires, targets, &[]), &[&key]).unwrap();
    let public = key.verifying_key();
    let keyid = build::key_id(&public);
    let mut verifier = PartialVerifier {
        keys: BTreeMap::from([(keyid.clone(), Key::Ed25519(public))]),
        role: RoleKeys {
            keyids: vec![keyid],
            threshold: 1,
        },
        last_version: 0,
        serial: serial.into(),
        ecu: EcuState {
            hardware_id: hardware.into(),
            installed_release_counter: 1,
        },
    };
    verifier.verify(&signed, now).unwrap().unwrap()
}
