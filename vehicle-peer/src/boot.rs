//! Boot control in U-Boot's environment, the way RAUC's U-Boot integration drives it, so that a
//! real gateway bootloader reads what the flasher writes.
//!
//! # The environment
//!
//! A copy of `size` bytes is a CRC-32 (IEEE, little-endian) of its data area, then — in a
//! redundant environment — one flags byte, then the data area: `key=value\0` entries, an empty
//! entry (a second `\0`) after the last, zero padding to the end. The CRC covers the whole data
//! area, padding included. This is U-Boot's `env_t` as `fw_printenv`/`fw_setenv` (libubootenv)
//! read and write it.
//!
//! A redundant environment keeps two copies. A save writes the copy that is *not* current, with
//! flags one higher (modulo 256), and syncs it; a reader takes the copy whose CRC holds, and when
//! both hold, the one with the higher flags (255 is older than 0). A power cut during a save
//! leaves a torn copy whose CRC fails, so the reader keeps the previous one: a save is atomic.
//!
//! # Boot selection (RAUC's convention)
//!
//! `BOOT_ORDER` lists the slots in the order the bootloader tries them (`"A B"`); `BOOT_<slot>_LEFT`
//! counts the tries a slot has left. At each boot the bootloader's script takes the first slot in
//! order with tries left, decrements its count, saves, and boots it; when none has tries left it
//! resets every count to [`DEFAULT_TRIES`] and resets the board. The flasher therefore:
//! - starts a trial by putting the new slot first with one try left (the bootloader spends it);
//! - commits by restoring the new slot's count (it is then the normal first slot);
//! - rolls back by putting the old slot first and zeroing the new slot's count.

use std::collections::BTreeMap;
use std::fmt;

use delta::WriteAt;

/// Tries a slot gets when it is marked good (RAUC's script uses 3).
pub const DEFAULT_TRIES: u32 = 3;
/// The smallest environment copy accepted (a CRC, flags and a few entries).
pub const MIN_ENV_SIZE: usize = 64;
/// The largest environment copy accepted (U-Boot environments are a few KiB to 128 KiB).
pub const MAX_ENV_SIZE: usize = 1 << 20;

/// Why an environment or a boot-control step was refused. Every variant names what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// Reading or writing the medium failed.
    #[error("{what}: {source}")]
    Io {
        /// Which copy and what was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Neither copy holds a valid environment.
    #[error(
        "no valid U-Boot environment: {first}{}",
        .second.as_ref().map(|e| format!("; {e}")).unwrap_or_default()
    )]
    NoValidCopy {
        /// Why the first copy is not valid.
        first: CopyError,
        /// Why the second is not, for a redundant environment.
        second: Option<CopyError>,
    },
    /// The environment's content is not what a boot-control environment must hold.
    #[error("U-Boot environment: {0}")]
    Content(String),
    /// The entries do not fit the environment's size.
    #[error("the environment needs {needed} bytes, its copies hold {size}")]
    TooLarge {
        /// Bytes the entries need (with CRC, flags and terminators).
        needed: usize,
        /// Size of one copy.
        size: usize,
    },
}

/// Why one copy of the environment is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// Its CRC does not match its data (torn, blank or damaged).
    #[error("copy {copy} at {offset}: CRC {stored:#010x}, data gives {computed:#010x}")]
    Crc {
        /// Which copy (1 or 2).
        copy: usize,
        /// Where it is.
        offset: u64,
        /// The CRC it holds.
        stored: u32,
        /// The CRC of its data.
        computed: u32,
    },
    /// Its CRC holds but its entries do not parse.
    #[error("copy {copy} at {offset}: {source}")]
    Content {
        /// Which copy (1 or 2).
        copy: usize,
        /// Where it is.
        offset: u64,
        /// What is wrong with its entries.
        source: Box<BootError>,
    },
}

/// The variables of an environment, in U-Boot's byte order of keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// Sets `key` to `value`. Keys may not be empty or hold `=` or NUL; values may not hold NUL.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), BootError> {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(BootError::Content(format!(
                "{key:?} is not a variable name"
            )));
        }
        if value.contains('\0') {
            return Err(BootError::Content(format!(
                "the value of {key} holds a NUL"
            )));
        }
        self.vars.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Every variable, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Parses a data area: entries up to the first empty one.
    pub fn parse_data(data: &[u8]) -> Result<Self, BootError> {
        let mut vars = BTreeMap::new();
        let mut at = 0;
        loop {
            let Some(len) = data[at..].iter().position(|&b| b == 0) else {
                return Err(BootError::Content(format!(
                    "entry at data offset {at} has no terminating NUL"
                )));
            };
            if len == 0 {
                break;
            }
            let entry = std::str::from_utf8(&data[at..at + len]).map_err(|_| {
                BootError::Content(format!("entry at data offset {at} is not UTF-8"))
            })?;
            let Some((key, value)) = entry.split_once('=') else {
                return Err(BootError::Content(format!(
                    "entry at data offset {at} ({entry:?}) has no '='"
                )));
            };
            if key.is_empty() {
                return Err(BootError::Content(format!(
                    "entry at data offset {at} has an empty name"
                )));
            }
            vars.insert(key.to_string(), value.to_string());
            at += len + 1;
        }
        Ok(Self { vars })
    }

    /// Bytes the entries take in a data area, the closing empty entry included.
    pub fn encoded_len(&self) -> usize {
        1 + self
            .vars
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
    }

    /// The data area of `len` bytes: entries, the empty entry, zero padding.
    pub fn data(&self, len: usize) -> Option<Vec<u8>> {
        let mut data = Vec::with_capacity(len);
        for (key, value) in &self.vars {
            data.extend_from_slice(key.as_bytes());
            data.push(b'=');
            data.extend_from_slice(value.as_bytes());
            data.push(0);
        }
        data.push(0);
        if data.len() > len {
            return None;
        }
        data.resize(len, 0);
        Some(data)
    }
}

/// How an environment is laid out on its medium.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvLayout {
    /// Size of each copy in bytes.
    pub size: usize,
    /// Offset of the first copy.
    pub first: u64,
    /// Offset of the second copy, for a redundant environment.
    pub second: Option<u64>,
}

impl EnvLayout {
    fn check(&self) -> Result<(), BootError> {
        if !(MIN_ENV_SIZE..=MAX_ENV_SIZE).contains(&self.size) {
            return Err(BootError::Content(format!(
                "an environment copy of {} bytes (allowed {MIN_ENV_SIZE}..={MAX_ENV_SIZE})",
                self.size
            )));
        }
        if let Some(second) = self.second {
            let size = self.size as u64;
            if second < self.first.saturating_add(size) && self.first < second.saturating_add(size)
            {
                return Err(BootError::Content(format!(
                    "the copies at {} and {second} overlap ({} bytes each)",
                    self.first, self.size
                )));
            }
        }
        Ok(())
    }

    fn header_len(&self) -> usize {
        if self.second.is_some() { 5 } else { 4 }
    }
}

/// One copy as read: its CRC verdict and, if it holds, its flags and variables.
#[derive(Debug)]
struct EnvCopy {
    flags: u8,
    env: Env,
}

/// A U-Boot environment on a medium, single or redundant. The medium is a region of a file or
/// block device, read and written at offsets inside it ([`WriteAt`]; its `sync` makes finished
/// writes durable).
#[derive(Debug)]
pub struct EnvStore<M> {
    medium: M,
    layout: EnvLayout,
    /// Which copy is current (0 or 1) and its flags, once read.
    current: Option<(usize, u8)>,
}

impl<M: WriteAt> EnvStore<M> {
    /// An environment on `medium` laid out as `layout`. Nothing is read yet.
    pub fn new(medium: M, layout: EnvLayout) -> Result<Self, BootError> {
        layout.check()?;
        Ok(Self {
            medium,
            layout,
            current: None,
        })
    }

    /// The medium, for tests and for callers that share it.
    pub fn medium(&self) -> &M {
        &self.medium
    }

    fn offset(&self, copy: usize) -> u64 {
        match (copy, self.layout.second) {
            (1, Some(second)) => second,
            _ => self.layout.first,
        }
    }

    fn read_copy(&self, copy: usize) -> Result<Result<EnvCopy, CopyError>, BootError> {
        let offset = self.offset(copy);
        let mut bytes = vec![0u8; self.layout.size];
        self.medium
            .read_exact_at(offset, &mut bytes)
            .map_err(|source| BootError::Io {
                what: format!("reading environment copy {} at {offset}", copy + 1),
                source,
            })?;
        let header = self.layout.header_len();
        let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let computed = crc32fast::hash(&bytes[header..]);
        if stored != computed {
            return Ok(Err(CopyError::Crc {
                copy: copy + 1,
                offset,
                stored,
                computed,
            }));
        }
        let flags = if header == 5 { bytes[4] } else { 0 };
        Ok(Env::parse_data(&bytes[header..])
            .map(|env| EnvCopy { flags, env })
            .map_err(|e| CopyError::Content {
                copy: copy + 1,
                offset,
                source: Box::new(e),
            }))
    }

    /// Reads the current environment: the valid copy, or of two valid copies the newer.
    pub fn load(&mut self) -> Result<Env, BootError> {
        let first = self.read_copy(0)?;
        let Some(_) = self.layout.second else {
            let copy = first.map_err(|first| BootError::NoValidCopy {
                first,
                second: None,
            })?;
            self.current = Some((0, 0));
            return Ok(copy.env);
        };
        let second = self.read_copy(1)?;
        let (index, copy) = match (first, second) {
            (Ok(a), Ok(b)) => {
                if newer(b.flags, a.flags) {
                    (1, b)
                } else {
                    (0, a)
                }
            }
            (Ok(a), Err(_)) => (0, a),
            (Err(_), Ok(b)) => (1, b),
            (Err(first), Err(second)) => {
                return Err(BootError::NoValidCopy {
                    first,
                    second: Some(second),
                });
            }
        };
        self.current = Some((index, copy.flags));
        Ok(copy.env)
    }

    /// Saves `env`: into the copy that is not current (flags one higher) for a redundant
    /// environment, else over the single copy; then syncs.
    pub fn save(&mut self, env: &Env) -> Result<(), BootError> {
        let header = self.layout.header_len();
        let size = self.layout.size;
        let data = env.data(size - header).ok_or_else(|| BootError::TooLarge {
            needed: header + env.encoded_len(),
            size,
        })?;
        let (target, flags) = match (self.layout.second, self.current) {
            (None, _) => (0, 0),
            (Some(_), Some((current, flags))) => (1 - current, flags.wrapping_add(1)),
            // Never read: whichever copy is valid stays untouched.
            (Some(_), None) => {
                self.load().ok();
                match self.current {
                    Some((current, flags)) => (1 - current, flags.wrapping_add(1)),
                    None => (0, 1),
                }
            }
        };
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
        if header == 5 {
            bytes.push(flags);
        }
        bytes.extend_from_slice(&data);
        let offset = self.offset(target);
        let io = |what: &str| {
            let what = format!("{what} environment copy {} at {offset}", target + 1);
            move |source| BootError::Io { what, source }
        };
        self.medium
            .write_all_at(offset, &bytes)
            .map_err(io("writing"))?;
        self.medium.sync().map_err(io("syncing"))?;
        self.current = Some((target, flags));
        Ok(())
    }
}

/// Whether flags `a` are newer than `b` (U-Boot: the higher counter, with 0 after 255).
fn newer(a: u8, b: u8) -> bool {
    match (a, b) {
        (0, 255) => true,
        (255, 0) => false,
        _ => a > b,
    }
}

/// A slot name as RAUC's U-Boot script spells it (`A`, `B`, ...): ASCII letters and digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(String);

impl std::str::FromStr for Slot {
    type Err = BootError;

    fn from_str(name: &str) -> Result<Self, BootError> {
        Self::new(name)
    }
}

impl Slot {
    /// A slot name; letters and digits only, 1 to 16 of them.
    pub fn new(name: &str) -> Result<Self, BootError> {
        if name.is_empty() || name.len() > 16 || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(BootError::Content(format!(
                "{name:?} is not a slot name (1-16 ASCII letters or digits)"
            )));
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn left_key(&self) -> String {
        format!("BOOT_{}_LEFT", self.0)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the boot-control variables say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootState {
    /// `BOOT_ORDER`, first slot first.
    pub order: Vec<Slot>,
    /// `BOOT_<slot>_LEFT` for each slot in the order.
    pub left: BTreeMap<Slot, u32>,
}

impl BootState {
    /// Reads the boot-control variables of `env`; each slot of `slots` must appear in the order
    /// and have a count.
    pub fn from_env(env: &Env, slots: &[Slot]) -> Result<Self, BootError> {
        let order_text = env
            .get("BOOT_ORDER")
            .ok_or_else(|| BootError::Content("BOOT_ORDER is not set".into()))?;
        let order = order_text
            .split_whitespace()
            .map(Slot::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BootError::Content(format!("BOOT_ORDER {order_text:?}: {e}")))?;
        if order.is_empty() {
            return Err(BootError::Content("BOOT_ORDER is empty".into()));
        }
        let mut left = BTreeMap::new();
        for slot in &order {
            let key = slot.left_key();
            let text = env
                .get(&key)
                .ok_or_else(|| BootError::Content(format!("{key} is not set")))?;
            let n = text
                .trim()
                .parse::<u32>()
                .map_err(|_| BootError::Content(format!("{key}={text:?} is not a count")))?;
            if left.insert(slot.clone(), n).is_some() {
                return Err(BootError::Content(format!(
                    "BOOT_ORDER {order_text:?} names {slot} twice"
                )));
            }
        }
        if let Some(missing) = slots.iter().find(|s| !left.contains_key(*s)) {
            return Err(BootError::Content(format!(
                "BOOT_ORDER {order_text:?} does not name slot {missing}"
            )));
        }
        Ok(Self { order, left })
    }

    /// Writes the variables into `env`.
    pub fn to_env(&self, env: &mut Env) -> Result<(), BootError> {
        let order: Vec<&str> = self.order.iter().map(Slot::as_str).collect();
        env.set("BOOT_ORDER", &order.join(" "))?;
        for (slot, n) in &self.left {
            env.set(&slot.left_key(), &n.to_string())?;
        }
        Ok(())
    }

    /// The slot the bootloader boots next: the first in order with tries left.
    pub fn next_boot(&self) -> Option<&Slot> {
        self.order
            .iter()
            .find(|s| self.left.get(*s).is_some_and(|n| *n > 0))
    }

    /// Puts `slot` first with `tries` left, the others after it in their order.
    pub fn put_first(&mut self, slot: &Slot, tries: u32) {
        self.order.retain(|s| s != slot);
        self.order.insert(0, slot.clone());
        self.left.insert(slot.clone(), tries);
    }

    /// What the bootloader does at power-on: take the first slot with tries left, spend one;
    /// when none has any, re-arm them all (RAUC's script then resets the board and boots again).
    /// `None` only for a state with no slots.
    pub fn boot(&mut self) -> Option<Slot> {
        if self.next_boot().is_none() {
            for n in self.left.values_mut() {
                *n = DEFAULT_TRIES;
            }
        }
        let slot = self.next_boot()?.clone();
        if let Some(n) = self.left.get_mut(&slot) {
            *n = n.saturating_sub(1);
        }
        Some(slot)
    }
}

/// Boot control through a U-Boot environment: the flasher's trial, commit and rollback, and
/// (for simulated ECUs) the bootloader's own step. Every change is one environment save, so it
/// is atomic in a redundant environment; variables it does not own are kept as they were.
#[derive(Debug)]
pub struct UbootBoot<M> {
    store: EnvStore<M>,
    slots: Vec<Slot>,
}

impl<M: WriteAt> UbootBoot<M> {
    /// Boot control over `store` for an ECU with `slots` (e.g. `A` and `B`).
    pub fn new(store: EnvStore<M>, slots: Vec<Slot>) -> Self {
        Self { store, slots }
    }

    /// The environment store.
    pub fn store(&self) -> &EnvStore<M> {
        &self.store
    }

    /// Writes a fresh boot-control state into the environment (keeping its other variables, or
    /// starting empty when no copy is valid): the slots in the given order, each with
    /// [`DEFAULT_TRIES`]. For provisioning a new or simulated ECU.
    pub fn provision(&mut self) -> Result<BootState, BootError> {
        let mut env = self.store.load().unwrap_or_default();
        let state = BootState {
            order: self.slots.clone(),
            left: self
                .slots
                .iter()
                .map(|s| (s.clone(), DEFAULT_TRIES))
                .collect(),
        };
        state.to_env(&mut env)?;
        self.store.save(&env)?;
        Ok(state)
    }

    /// The current boot-control state.
    pub fn state(&mut self) -> Result<BootState, BootError> {
        let env = self.store.load()?;
        BootState::from_env(&env, &self.slots)
    }

    fn update<T>(&mut self, change: impl FnOnce(&mut BootState) -> T) -> Result<T, BootError> {
        let mut env = self.store.load()?;
        let mut state = BootState::from_env(&env, &self.slots)?;
        let out = change(&mut state);
        state.to_env(&mut env)?;
        self.store.save(&env)?;
        Ok(out)
    }

    fn known(&self, slot: &Slot) -> Result<(), BootError> {
        if self.slots.contains(slot) {
            Ok(())
        } else {
            Err(BootError::Content(format!("this ECU has no slot {slot}")))
        }
    }

    /// Boots `slot` next, once: first in order with one try. If it does not come up and commit,
    /// the bootloader's next boot falls through to the slot after it.
    pub fn start_trial(&mut self, slot: &Slot) -> Result<(), BootError> {
        self.known(slot)?;
        self.update(|state| state.put_first(slot, 1))
    }

    /// Keeps `slot` (it booted and passed its health check): first in order with
    /// [`DEFAULT_TRIES`].
    pub fn commit(&mut self, slot: &Slot) -> Result<(), BootError> {
        self.known(slot)?;
        self.update(|state| state.put_first(slot, DEFAULT_TRIES))
    }

    /// Marks `slot` good, as RAUC's `mark-good` does after every boot outside a trial: its
    /// tries back to [`DEFAULT_TRIES`], the order as it is (the bootloader spends a try at
    /// every boot; without this a kept slot runs out after a few boots and the bootloader falls
    /// back to the other one). Saves only when a try was spent. Returns whether it saved.
    pub fn mark_good(&mut self, slot: &Slot) -> Result<bool, BootError> {
        self.known(slot)?;
        if self.state()?.left.get(slot) == Some(&DEFAULT_TRIES) {
            return Ok(false);
        }
        self.update(|state| {
            state.left.insert(slot.clone(), DEFAULT_TRIES);
        })?;
        Ok(true)
    }

    /// Goes back to `good`: first in order with [`DEFAULT_TRIES`], and `bad` gets no tries.
    pub fn roll_back(&mut self, bad: &Slot, good: &Slot) -> Result<(), BootError> {
        self.known(bad)?;
        self.known(good)?;
        self.update(|state| {
            state.put_first(good, DEFAULT_TRIES);
            state.left.insert(bad.clone(), 0);
        })
    }

    /// The bootloader's step at power-on (see [`BootState::boot`]), saved as its script does.
    pub fn boot(&mut self) -> Result<Slot, BootError> {
        self.update(BootState::boot)?
            .ok_or_else(|| BootError::Content("no slot to boot".into()))
    }
}
