//! The audit log: append-only, hash-chained, every entry signed.
//!
//! `audit.log` in the origin directory holds one entry per line, each a signed envelope in
//! TUF's format (`{"signatures": [...], "signed": {...}}`, ed25519 over canonical JSON) whose
//! `signed` part is `{"seq", "at", "actor", "action", "detail", "prev"}`: `seq` counts from 1,
//! `prev` is the BLAKE3 of the previous line's bytes (64 zeros for the first). Editing,
//! removing, reordering or inserting an entry breaks the chain or a signature at that entry,
//! and [`verify`] names the first bad one.
//!
//! Entries are signed with the origin's online audit key (`keys/audit-log.json`, made on first
//! use); `origin keys` prints its public half for auditors. An append writes the line and syncs
//! the file before returning; a line torn by a power cut (no final newline) was never
//! acknowledged and is cut off before the next append.
//!
//! When the repositories are in object storage ([`crate::storage`]), so is the log, beside
//! them: one object per entry, `audit/<seq, 20 digits>.json` holding the same line, so that
//! every machine and director replica sharing the store writes one chain. An entry is put only
//! if its name is free (a conditional put): of two writers racing for one place in the chain
//! exactly one gets it, and the other chains its entry after it.
//!
//! An operation that signs metadata on an operator's word ([`crate::Release::sign`],
//! [`crate::director::assign`]) signs, then appends its entry, in one call that takes the
//! [`Actor`], so no caller can sign without the entry.

use std::fmt;
use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Value, json};

use crate::repo::Origin;
use crate::storage::Storage;

/// Who acts, as the audit log records them: an operator, a vehicle or the director's gates.
/// Never empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actor(String);

/// An empty actor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an actor (who acts, for the audit log) must not be empty")]
#[non_exhaustive]
pub struct EmptyActor;

impl Actor {
    /// `name`, refused when empty.
    pub fn new(name: impl Into<String>) -> Result<Self, EmptyActor> {
        let name = name.into();
        if name.is_empty() {
            return Err(EmptyActor);
        }
        Ok(Self(name))
    }

    /// The name as recorded.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Actor {
    type Err = EmptyActor;

    fn from_str(name: &str) -> Result<Self, EmptyActor> {
        Self::new(name)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an operation that signs metadata and records itself in the audit log failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditedError {
    /// It failed before its entry was due, and recorded nothing. (A signing cut short part way
    /// leaves what `origin verify` reports.)
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
    /// The metadata is signed and published, but its entry could not be appended: the log does
    /// not have it. The entry is given here so that it can be recorded by hand.
    #[error(
        "{what} is signed but unaudited: its audit entry ({action:?}, {detail}) was not appended"
    )]
    Unaudited {
        /// What was signed.
        what: String,
        /// The entry's action.
        action: String,
        /// The entry's detail.
        detail: Value,
        /// Why the append failed.
        #[source]
        source: anyhow::Error,
    },
}

/// Signs with `sign`, then appends the entry `entry` makes of what it signed (a description of
/// it for an error, and the entry's detail): `actor` did `action`.
///
/// The log is checked first (its key, its last entry), so that what can fail after the
/// signing is only the write of the entry itself.
pub(crate) fn audited<T>(
    origin: &Origin,
    actor: &Actor,
    action: &str,
    sign: impl FnOnce() -> anyhow::Result<T>,
    entry: impl FnOnce(&T) -> (String, Value),
) -> Result<T, AuditedError> {
    match origin.storage.local_dir() {
        Some(_) => drop(open(origin)?),
        None => drop((key(origin)?, object_tail(&origin.storage)?)),
    }
    let signed = sign()?;
    let (what, detail) = entry(&signed);
    match append(origin, actor.as_str(), action, detail.clone()) {
        Ok(_) => Ok(signed),
        Err(source) => Err(AuditedError::Unaudited {
            what,
            action: action.to_owned(),
            detail,
            source,
        }),
    }
}

/// The log's file in `origin`.
pub fn log_path(origin: &Origin) -> PathBuf {
    origin.dir.join("audit.log")
}

/// The audit key, made on first use (by `origin init`). Not made when the log is in object
/// storage and already holds entries: they were signed with a key made on another machine,
/// which this one must be given (its `keys/`), or the chain would change keys midway.
pub fn key(origin: &Origin) -> anyhow::Result<SigningKey> {
    let path = origin.online_keys_dir().join("audit-log.json");
    if !path.exists() {
        if origin.storage.local_dir().is_none() && !object_entries(&origin.storage)?.is_empty() {
            bail!(
                "{} is missing, and the audit log in {} holds entries signed with the origin's \
                 audit key: copy keys/ from the machine the origin was made on",
                path.display(),
                origin.storage.describe("audit")
            );
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::keys::save(&crate::keys::generate(), &path)?;
    }
    crate::keys::load(&path)
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends an entry: `actor` (who: an operator, a vehicle, or the campaign gates) did `action`
/// with `detail`, at `origin.now`. Numbers that are not integers are recorded as strings.
/// Returns its sequence number.
pub fn append(origin: &Origin, actor: &str, action: &str, detail: Value) -> anyhow::Result<u64> {
    if actor.is_empty() || action.is_empty() {
        bail!("an audit entry needs an actor and an action");
    }
    let detail = integers_only(detail);
    if origin.storage.local_dir().is_none() {
        return append_object(origin, actor, action, &detail);
    }
    let Tail {
        key,
        mut file,
        path,
        seq,
        prev,
    } = open(origin)?;
    let line = entry_line(origin, &key, seq, &prev, actor, action, &detail)?;
    file.seek(std::io::SeekFrom::End(0))?;
    file.write_all(&line)
        .with_context(|| format!("appending to {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(seq)
}

/// Entry `seq` chained to `prev`, signed with `key`, as its line (with its newline).
fn entry_line(
    origin: &Origin,
    key: &SigningKey,
    seq: u64,
    prev: &str,
    actor: &str,
    action: &str,
    detail: &Value,
) -> anyhow::Result<Vec<u8>> {
    let signed = json!({
        "seq": seq,
        "at": origin.now.to_string(),
        "actor": actor,
        "action": action,
        "detail": detail,
        "prev": prev,
    });
    let envelope: Value = serde_json::from_slice(&proto::tuf::build::sign(&signed, &[key])?)?;
    let mut line = serde_json::to_vec(&envelope)?;
    line.push(b'\n');
    Ok(line)
}

/// How many times an append to object storage chains again after losing its place to another
/// writer.
const RACES: usize = 32;

/// The name of entry `seq` in object storage.
fn entry_key(seq: u64) -> String {
    format!("audit/{seq:020}.json")
}

/// [`append`] to the log in object storage.
fn append_object(
    origin: &Origin,
    actor: &str,
    action: &str,
    detail: &Value,
) -> anyhow::Result<u64> {
    let key = key(origin)?;
    for _ in 0..RACES {
        let (seq, prev) = object_tail(&origin.storage)?;
        let line = entry_line(origin, &key, seq, &prev, actor, action, detail)?;
        if origin.storage.create(&entry_key(seq), &line)? {
            return Ok(seq);
        }
    }
    bail!(
        "{}: {RACES} other entries took the next place first; the entry was not written",
        origin.storage.describe("audit")
    )
}

/// The sequence numbers of the entries in object storage, in order.
fn object_entries(storage: &Storage) -> anyhow::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = storage
        .list("audit")?
        .iter()
        .filter_map(|name| name.strip_suffix(".json")?.parse().ok())
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Where the next entry goes in object storage: its sequence number and what it chains to.
fn object_tail(storage: &Storage) -> anyhow::Result<(u64, String)> {
    let Some(&last) = object_entries(storage)?.last() else {
        return Ok((1, GENESIS.to_string()));
    };
    let name = entry_key(last);
    let bytes = storage
        .read(&name)?
        .with_context(|| format!("{}: listed, then gone", storage.describe(&name)))?;
    let line = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let value: Value = serde_json::from_slice(line)
        .with_context(|| format!("{}: the last entry is not JSON", storage.describe(&name)))?;
    if value["signed"]["seq"].as_u64() != Some(last) {
        bail!(
            "{}: holds seq {}, not {last}",
            storage.describe(&name),
            value["signed"]["seq"]
        );
    }
    Ok((last + 1, blake3::hash(line).to_hex().to_string()))
}

/// The whole log's bytes, one line per entry, and where it is (for messages).
fn log_bytes(origin: &Origin) -> anyhow::Result<(Vec<u8>, String)> {
    if origin.storage.local_dir().is_some() {
        let path = log_path(origin);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        return Ok((bytes, path.display().to_string()));
    }
    let storage = &origin.storage;
    let mut bytes = Vec::new();
    for seq in object_entries(storage)? {
        let name = entry_key(seq);
        let entry = storage
            .read(&name)?
            .with_context(|| format!("{}: listed, then gone", storage.describe(&name)))?;
        bytes.extend_from_slice(&entry);
    }
    Ok((bytes, storage.describe("audit")))
}

/// The log opened for the next entry, with what that entry chains to.
struct Tail {
    key: SigningKey,
    file: fs::File,
    path: PathBuf,
    /// The next entry's sequence number.
    seq: u64,
    /// The BLAKE3 of the last entry's line (or the genesis value).
    prev: String,
}

/// Opens the log (made, with its key, on first use) and reads where the next entry goes.
fn open(origin: &Origin) -> anyhow::Result<Tail> {
    let key = key(origin)?;
    let path = log_path(origin);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // The CLI (a release, an operator added) appends while `origin serve` does: one writer at
    // a time, or two entries would claim the same place in the chain. Released when the file
    // is closed, after the entry is synced.
    fs2::FileExt::lock_exclusive(&file).with_context(|| format!("locking {}", path.display()))?;
    let (seq, prev) = match last_line(&mut file, &path)? {
        Some(line) => {
            let value: Value = serde_json::from_slice(&line)
                .with_context(|| format!("{}: the last entry is not JSON", path.display()))?;
            let seq = value["signed"]["seq"]
                .as_u64()
                .with_context(|| format!("{}: the last entry has no seq", path.display()))?;
            (seq + 1, blake3::hash(&line).to_hex().to_string())
        }
        None => (1, GENESIS.to_string()),
    };
    Ok(Tail {
        key,
        file,
        path,
        seq,
        prev,
    })
}

/// `value` with every number that is not an integer written as a string (`0.05` → `"0.05"`):
/// entries are signed over canonical JSON, which has integers only.
fn integers_only(value: Value) -> Value {
    match value {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => Value::String(n.to_string()),
        Value::Array(items) => Value::Array(items.into_iter().map(integers_only).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, integers_only(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The last complete line of the log (without its newline), reading only the log's tail; a torn
/// last line (never acknowledged) is cut off first.
fn last_line(file: &mut fs::File, path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    const CHUNK: u64 = 64 * 1024;
    let len = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    // Grow the tail backwards until it holds the newline ending the last complete line and
    // the one before it, or reaches the file's start.
    let mut start = len;
    let mut tail = Vec::new();
    while start > 0 {
        let from = start.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(start - from)?];
        file.seek(std::io::SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)
            .with_context(|| format!("reading {}", path.display()))?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        start = from;
        let last = tail.iter().rposition(|&b| b == b'\n');
        if last.is_some_and(|last| tail[..last].contains(&b'\n')) {
            break;
        }
    }
    let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < tail.len() {
        file.set_len(start + complete as u64)
            .with_context(|| format!("cutting the torn last line of {}", path.display()))?;
    }
    let body = &tail[..complete.saturating_sub(1)];
    Ok(body
        .rsplit(|&b| b == b'\n')
        .next()
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec))
}

/// Checks the whole chain at `path` against `key`; returns the number of entries, or the first
/// bad entry and what is wrong with it.
pub fn verify(path: &Path, key: &VerifyingKey) -> anyhow::Result<u64> {
    let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    verify_bytes(&text, &path.display().to_string(), key)
}

/// [`verify`] over the log's bytes, read from `place`.
fn verify_bytes(text: &[u8], place: &str, key: &VerifyingKey) -> anyhow::Result<u64> {
    let mut prev = GENESIS.to_string();
    let mut count = 0u64;
    let mut lines = text.split(|&b| b == b'\n').peekable();
    let mut number = 0u64;
    while let Some(line) = lines.next() {
        number += 1;
        if line.is_empty() && lines.peek().is_none() {
            break;
        }
        let bad = |why: String| anyhow::anyhow!("{place}: entry {number} (line {number}): {why}");
        if lines.peek().is_none() {
            return Err(bad("torn: the line has no end (a write cut short)".into()));
        }
        let value: Value =
            serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        proto::uptane::check_signed_by(&value, &proto::tuf::Key::Ed25519(*key))
            .map_err(|e| bad(e.to_string()))?;
        let signed = &value["signed"];
        if signed["seq"].as_u64() != Some(number) {
            return Err(bad(format!(
                "seq is {}, expected {number}: an entry was removed, inserted or moved",
                signed["seq"]
            )));
        }
        if signed["prev"].as_str() != Some(prev.as_str()) {
            return Err(bad(format!(
                "prev is {}, but the entry before hashes to {prev}: the entry before was changed",
                signed["prev"]
            )));
        }
        prev = blake3::hash(line).to_hex().to_string();
        count += 1;
    }
    Ok(count)
}

/// A public key, as an auditor gives it, that is not an ed25519 public key in hex.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublicKeyError {
    /// Not 32 bytes in hex.
    #[error("--public-key must be 32 bytes in hex")]
    NotHex,
    /// 32 bytes, but no ed25519 public key.
    #[error("--public-key is not an ed25519 public key")]
    NotEd25519(#[source] ed25519_dalek::SignatureError),
}

/// Reads an audit key's public half from hex (as `origin keys` prints it).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, PublicKeyError> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(PublicKeyError::NotHex)?;
    VerifyingKey::from_bytes(&bytes).map_err(PublicKeyError::NotEd25519)
}

/// Checks `origin`'s whole log (see [`verify`]) against `key`, by default the origin's own audit
/// key; returns the number of entries.
pub fn verify_origin(origin: &Origin, key: Option<&VerifyingKey>) -> anyhow::Result<u64> {
    let key = match key {
        Some(key) => *key,
        None => self::key(origin)?.verifying_key(),
    };
    let (text, place) = log_bytes(origin)?;
    verify_bytes(&text, &place, &key)
}

/// The entries of the log file at `path`: one JSON value each, as signed.
pub fn entries(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    entries_in(&text, &path.display().to_string())
}

/// The entries of `origin`'s log wherever it is kept, for `origin audit export`.
pub fn entries_of(origin: &Origin) -> anyhow::Result<Vec<Value>> {
    let (text, place) = log_bytes(origin)?;
    entries_in(&text, &place)
}

fn entries_in(text: &[u8], place: &str) -> anyhow::Result<Vec<Value>> {
    text.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice::<Value>(line)
                .map(|v| v["signed"].clone())
                .with_context(|| format!("{place}: an entry is not JSON"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(dir: &Path) -> Origin {
        Origin::new(
            dir.join("origin"),
            Some(dir.join("usb").into()),
            proto::tuf::Time::parse("2026-11-22T10:00:00Z").unwrap(),
        )
    }

    fn log(dir: &Path) -> (Origin, VerifyingKey) {
        let origin = origin(dir);
        fs::create_dir_all(&origin.dir).unwrap();
        append(
            &origin,
            "alice@ops",
            "campaign.approve",
            json!({"campaign": "brake-2.0"}),
        )
        .unwrap();
        append(
            &origin,
            "gate",
            "wave.advance",
            json!({"wave": 2, "reason": "98 % committed"}),
        )
        .unwrap();
        append(
            &origin,
            "VIN1",
            "install",
            json!({"ecu": "BRK-1", "image": "brake-2.0.bin"}),
        )
        .unwrap();
        let key = key(&origin).unwrap().verifying_key();
        (origin, key)
    }

    #[test]
    fn an_intact_log_verifies_and_every_kind_of_tampering_names_the_first_bad_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (origin, key) = log(dir.path());
        let path = log_path(&origin);
        assert_eq!(verify(&path, &key).unwrap(), 3);
        let good = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        let cases: Vec<(String, &str)> = vec![
            // An edited detail: the signature of entry 2 fails.
            (good.replace("98 % committed", "99 % committed"), "entry 2"),
            // Entry 2 removed: entry 3 says seq 3 at position 2.
            (format!("{}\n{}\n", lines[0], lines[2]), "entry 2"),
            // Two entries swapped.
            (
                format!("{}\n{}\n{}\n", lines[0], lines[2], lines[1]),
                "entry 2",
            ),
            // A torn last line.
            (good[..good.len() - 10].to_string(), "entry 3"),
            // Not JSON.
            (format!("{}\nrubbish\n{}\n", lines[0], lines[2]), "entry 2"),
        ];
        for (text, first_bad) in cases {
            fs::write(&path, &text).unwrap();
            let error = verify(&path, &key).unwrap_err().to_string();
            assert!(error.contains(first_bad), "{error}");
        }
        // Re-signed with another key: refused at entry 1.
        fs::write(&path, &good).unwrap();
        let other = crate::keys::generate().verifying_key();
        let error = verify(&path, &other).unwrap_err().to_string();
        assert!(error.contains("entry 1"), "{error}");
    }

    #[test]
    fn an_append_after_a_torn_write_cuts_the_torn_line_and_keeps_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (origin, key) = log(dir.path());
        let path = log_path(&origin);
        let good = fs::read(&path).unwrap();
        // A power cut halfway through a fourth line.
        let mut torn = good.clone();
        torn.extend_from_slice(&good[..40]);
        fs::write(&path, &torn).unwrap();
        assert!(verify(&path, &key).is_err());
        assert_eq!(
            append(&origin, "bob@ops", "campaign.resume", json!({})).unwrap(),
            4
        );
        assert_eq!(verify(&path, &key).unwrap(), 4);
        let entries = entries(&path).unwrap();
        assert_eq!(entries[3]["actor"], "bob@ops");
        assert_eq!(entries[0]["action"], "campaign.approve");
    }

    #[test]
    fn an_audited_signing_is_refused_before_it_signs_or_named_unaudited_after() {
        let dir = tempfile::tempdir().unwrap();
        let (origin, key) = log(dir.path());
        let carol = Actor::new("carol").unwrap();
        let signed = audited(
            &origin,
            &carol,
            "assign",
            || Ok(7),
            |n| (format!("version {n}"), json!({"version": n})),
        );
        assert_eq!(signed.unwrap(), 7);
        assert_eq!(
            entries(&log_path(&origin)).unwrap()[3]["detail"]["version"],
            7
        );
        assert_eq!(verify(&log_path(&origin), &key).unwrap(), 4);

        // A log whose last entry does not read: nothing is signed.
        let good = fs::read(log_path(&origin)).unwrap();
        fs::write(log_path(&origin), b"rubbish\n").unwrap();
        let mut called = false;
        let refused = audited(
            &origin,
            &carol,
            "assign",
            || {
                called = true;
                Ok(8)
            },
            |n| (format!("version {n}"), json!({})),
        );
        assert!(matches!(refused, Err(AuditedError::Failed(_))));
        assert!(!called);

        // The log breaks while signing: what was signed is named, unaudited, with its entry.
        fs::write(log_path(&origin), &good).unwrap();
        let refused = audited(
            &origin,
            &carol,
            "assign",
            || {
                fs::write(log_path(&origin), b"rubbish\n")?;
                Ok(9)
            },
            |n| (format!("director targets v{n}"), json!({"version": n})),
        );
        let error = refused.unwrap_err();
        assert!(matches!(error, AuditedError::Unaudited { .. }));
        let message = format!("{error:#}");
        assert!(
            message.contains("director targets v9 is signed but unaudited"),
            "{message}"
        );
        assert!(message.contains("{\"version\":9}"), "{message}");
        assert!(Actor::new("").is_err());
    }

    #[test]
    fn entries_larger_than_the_tail_read_and_torn_ones_chain_correctly() {
        let dir = tempfile::tempdir().unwrap();
        let (origin, key) = log(dir.path());
        let big = "x".repeat(200_000);
        append(&origin, "bob", "big", json!({"blob": big})).unwrap();
        append(&origin, "bob", "after-big", json!({})).unwrap();
        append(&origin, "bob", "big-again", json!({"blob": big})).unwrap();
        // A torn write of another large entry, then an append: it is cut, the chain holds.
        let path = log_path(&origin);
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&vec![b'{'; 150_000]).unwrap();
        drop(file);
        assert_eq!(append(&origin, "bob", "last", json!({})).unwrap(), 7);
        assert_eq!(verify(&path, &key).unwrap(), 7);
    }
}
