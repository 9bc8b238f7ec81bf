//! Vehicle reports relayed through the depot: a vehicle in a yard with no route to the director
//! hands its signed version manifest to its depot over the mesh ([`send_report`]); the depot
//! stores it durably ([`ReportQueue`]) before it answers, and passes it on to the director when
//! it can (the depot daemon's relay loop).
//!
//! The relay is trusted with nothing but delivery. The manifest is signed by the vehicle's
//! primary and every report in it by its ECU, and answers a nonce the director signed for that
//! vehicle, so a depot that alters, forges or replays one is refused at the director. What a
//! depot can do is drop reports: the gates' report timeout notices silence, and the vehicle
//! sends directly again whenever it has a route.
//!
//! The queue is a directory of files `<sequence>-<blake3>.json`, each written whole (temporary
//! file, sync, rename, directory sync) before the vehicle hears "taken": a power cut loses no
//! report it acknowledged and leaves no torn one. The same bytes handed twice are queued once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use proto::wire::ErrorCode;
use proto::{BlobId, Vin};

use crate::net::NetHandle;
use crate::protocol::{self, ExchangeError};

/// Why a relay would not take a report: the code and words the sender hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The wire error code.
    pub code: ErrorCode,
    /// What was wrong.
    pub detail: String,
}

/// Where a node's server puts the reports vehicles hand it (a depot's [`ReportQueue`]).
pub trait ReportInbox: Send + Sync + 'static {
    /// Stores `manifest`, handed over by `from`, durably; returns its BLAKE3 hash. Called on a
    /// blocking thread.
    fn take(&self, from: &PeerId, manifest: &[u8]) -> Result<BlobId, Refusal>;
}

/// A report waiting in the queue.
#[derive(Clone, Debug)]
pub struct QueuedReport {
    /// The BLAKE3 hash of its bytes.
    pub digest: BlobId,
    /// The vehicle it names (`signed.vin`: the director checks that it signed it).
    pub vin: Vin,
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
}

/// What one sender may fill of the queue, so that one peer (a stranger, a vehicle gone wrong)
/// cannot take every other vehicle's place or the depot's disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Reports queued at most.
    pub max_reports: usize,
    /// Bytes the queued reports may take on disk.
    pub max_bytes: u64,
    /// Reports queued at most for one vehicle (its VIN) from one sender: a vehicle has a
    /// report or two pending (each install's), a few more after long without a route. Counted
    /// per sender too, so that a peer claiming another vehicle's VIN (the depot cannot check a
    /// report's signature) fills only its own share, never the vehicle's.
    pub per_vehicle: usize,
    /// Reports queued at most from one peer since the depot started (a vehicle hands over
    /// its own; more from one peer is a flood).
    pub per_peer: usize,
}

impl Quotas {
    /// At most `max_reports`, the other quotas their defaults.
    pub fn reports(max_reports: usize) -> Self {
        Self {
            max_reports,
            ..Self::default()
        }
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_reports: 100_000,
            max_bytes: 1 << 30,
            per_vehicle: 16,
            per_peer: 64,
        }
    }
}

/// A queued report as the index knows it.
#[derive(Clone, Debug)]
struct Entry {
    digest: BlobId,
    /// The vehicle it names; None for a file that no longer reads (dropped by `pending`).
    vin: Option<Vin>,
    bytes: u64,
    /// Who handed it over, if it was since the depot started.
    from: Option<PeerId>,
}

/// What the queued reports add up to, by vehicle and sender: the quotas' measure.
#[derive(Debug, Default)]
struct Tally {
    bytes: u64,
    /// By the VIN a report names and who handed it over (`None`: queued before the depot
    /// started).
    by_vehicle: HashMap<(Vin, Option<PeerId>), usize>,
    by_peer: HashMap<PeerId, usize>,
}

impl Tally {
    fn add(&mut self, entry: &Entry) {
        self.bytes += entry.bytes;
        if let Some(vin) = &entry.vin {
            *self
                .by_vehicle
                .entry((vin.clone(), entry.from))
                .or_default() += 1;
        }
        if let Some(from) = entry.from {
            *self.by_peer.entry(from).or_default() += 1;
        }
    }

    fn remove(&mut self, entry: &Entry) {
        self.bytes = self.bytes.saturating_sub(entry.bytes);
        if let Some(vin) = &entry.vin {
            decrement(&mut self.by_vehicle, &(vin.clone(), entry.from));
        }
        if let Some(from) = &entry.from {
            decrement(&mut self.by_peer, from);
        }
    }

    /// Why a report of `bytes` for `vin` from `from` may not join `queued` reports, if so.
    fn refuse(
        &self,
        quotas: &Quotas,
        queued: usize,
        from: &PeerId,
        vin: &Vin,
        bytes: u64,
    ) -> Option<String> {
        if queued >= quotas.max_reports {
            return Some(format!(
                "the relay queue is full ({} reports); send it later or directly",
                quotas.max_reports
            ));
        }
        if self.bytes + bytes > quotas.max_bytes {
            return Some(format!(
                "the relay queue is full ({} bytes); send it later or directly",
                quotas.max_bytes
            ));
        }
        let of_vehicle = (vin.clone(), Some(*from));
        if self.by_vehicle.get(&of_vehicle).copied().unwrap_or(0) >= quotas.per_vehicle {
            return Some(format!(
                "{} reports of {vin} from this peer wait already; send it later or directly",
                quotas.per_vehicle
            ));
        }
        if self.by_peer.get(from).copied().unwrap_or(0) >= quotas.per_peer {
            return Some(format!(
                "{} reports from this peer wait already; send it later or directly",
                quotas.per_peer
            ));
        }
        None
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

#[derive(Default)]
struct QueueIndex {
    next: u64,
    /// Sequence number → report, oldest first.
    order: BTreeMap<u64, Entry>,
    digests: BTreeSet<BlobId>,
    tally: Tally,
}

/// The depot's durable queue of reports to relay; see the module.
pub struct ReportQueue {
    dir: PathBuf,
    quotas: Quotas,
    index: Mutex<QueueIndex>,
    arrived: tokio::sync::Notify,
}

impl std::fmt::Debug for ReportQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportQueue")
            .field("dir", &self.dir)
            .field("queued", &self.len())
            .finish_non_exhaustive()
    }
}

/// Why a report is not a vehicle's signed manifest ([`vehicle_of`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// It does not parse as one (the parser's words).
    #[error("not a signed vehicle manifest ({0})")]
    NotAManifest(String),
    /// Its vehicle id is not one.
    #[error(transparent)]
    VehicleId(#[from] proto::IdError),
}

/// The vehicle a manifest names, checked enough to be used in the director's URL.
pub fn vehicle_of(manifest: &[u8]) -> Result<Vin, ManifestError> {
    #[derive(serde::Deserialize)]
    struct Signed {
        vin: String,
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        signed: Signed,
    }
    let envelope: Envelope = serde_json::from_slice(manifest)
        .map_err(|error| ManifestError::NotAManifest(error.to_string()))?;
    Ok(Vin::parse(&envelope.signed.vin)?)
}

impl ReportQueue {
    /// The queue in `dir` (created if missing), holding at most `max_reports` (the other
    /// quotas their defaults). Temporary files a power cut left behind are removed; queued
    /// reports are kept in their order.
    pub fn open(dir: &Path, max_reports: usize) -> std::io::Result<Self> {
        Self::with_quotas(dir, Quotas::reports(max_reports))
    }

    /// [`Self::open`] with `quotas`. The reports already queued count towards them (read
    /// once, here), but not towards any sender's: who handed them over is not stored.
    pub fn with_quotas(dir: &Path, quotas: Quotas) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut index = QueueIndex::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
                continue;
            }
            let Some((sequence, digest)) = parse_name(&name) else {
                tracing::warn!(file = %entry.path().display(), "not a queued report; left alone");
                continue;
            };
            index.next = index.next.max(sequence + 1);
            let entry = Entry {
                digest,
                vin: std::fs::read(entry.path())
                    .ok()
                    .and_then(|bytes| vehicle_of(&bytes).ok()),
                bytes: entry.metadata()?.len(),
                from: None,
            };
            index.tally.add(&entry);
            index.order.insert(sequence, entry);
            index.digests.insert(digest);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            quotas,
            index: Mutex::new(index),
            arrived: tokio::sync::Notify::new(),
        })
    }

    /// Reports waiting.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// True when no report waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until a report is taken (or returns at once if one was taken since the last wait).
    pub async fn arrival(&self) {
        self.arrived.notified().await;
    }

    /// The reports waiting, oldest first. A file that no longer reads as a manifest (damaged on
    /// disk) is dropped with a warning: it could never be delivered.
    pub fn pending(&self) -> std::io::Result<Vec<QueuedReport>> {
        let order: Vec<(u64, BlobId)> = self
            .lock()
            .order
            .iter()
            .map(|(s, e)| (*s, e.digest))
            .collect();
        let mut reports = Vec::with_capacity(order.len());
        for (sequence, digest) in order {
            let path = self.path(sequence, &digest);
            let manifest = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            let vin = if BlobId::of(&manifest) == digest {
                vehicle_of(&manifest).map_err(|error| error.to_string())
            } else {
                Err("its bytes no longer match its name".into())
            };
            match vin {
                Ok(vin) => reports.push(QueuedReport {
                    digest,
                    vin,
                    manifest,
                }),
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason, "dropping a damaged queued report");
                    self.remove(&digest)?;
                }
            }
        }
        Ok(reports)
    }

    /// Removes a report (delivered, or refused for good), durably.
    pub fn remove(&self, digest: &BlobId) -> std::io::Result<()> {
        let mut index = self.lock();
        let Some(sequence) = index
            .order
            .iter()
            .find_map(|(sequence, queued)| (queued.digest == *digest).then_some(*sequence))
        else {
            return Ok(());
        };
        match std::fs::remove_file(self.path(sequence, digest)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        std::fs::File::open(&self.dir)?.sync_all()?;
        if let Some(entry) = index.order.remove(&sequence) {
            index.tally.remove(&entry);
        }
        index.digests.remove(digest);
        Ok(())
    }

    fn path(&self, sequence: u64, digest: &BlobId) -> PathBuf {
        self.dir.join(format!("{sequence:012}-{}.json", digest))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueIndex> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn parse_name(name: &str) -> Option<(u64, BlobId)> {
    let stem = name.strip_suffix(".json")?;
    let (sequence, digest) = stem.split_once('-')?;
    let sequence = sequence.parse().ok()?;
    let digest = digest.parse().ok()?;
    Some((sequence, digest))
}

impl ReportInbox for ReportQueue {
    fn take(&self, from: &PeerId, manifest: &[u8]) -> Result<BlobId, Refusal> {
        let refuse = |code, detail: String| Refusal { code, detail };
        let vin = vehicle_of(manifest).map_err(|e| refuse(ErrorCode::BadRequest, e.to_string()))?;
        let digest = BlobId::of(manifest);
        // Held across the write: two copies of the same report cannot both be queued, and the
        // sequence numbers follow the order reports were taken in.
        let mut index = self.lock();
        if index.digests.contains(&digest) {
            return Ok(digest);
        }
        let bytes = manifest.len() as u64;
        let queued = index.order.len();
        if let Some(why) = index.tally.refuse(&self.quotas, queued, from, &vin, bytes) {
            return Err(refuse(ErrorCode::Busy, why));
        }
        let sequence = index.next;
        crate::storage::replace_file(&self.path(sequence, &digest), manifest).map_err(|error| {
            tracing::error!(%error, "storing a report to relay");
            refuse(
                ErrorCode::Internal,
                "the relay could not store the report".into(),
            )
        })?;
        index.next += 1;
        let entry = Entry {
            digest,
            vin: Some(vin.clone()),
            bytes,
            from: Some(*from),
        };
        index.tally.add(&entry);
        index.order.insert(sequence, entry);
        index.digests.insert(digest);
        drop(index);
        tracing::info!(%from, %vin, report = %digest, "report queued for the director");
        self.arrived.notify_one();
        Ok(digest)
    }
}

/// Tries a relay again after it reset the stream (a burst of new streams), this many times.
const RESET_RETRIES: u32 = 4;

/// Why no relay took a report ([`send_report`]); each names what every relay tried did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendReportError {
    /// No relay was given.
    #[error("no relay is configured")]
    NoRelay,
    /// Every relay was unreachable or refused.
    #[error("no relay took the report: {}", tried.join("; "))]
    Refused {
        /// Per relay, what happened.
        tried: Vec<String>,
    },
    /// Time ran out.
    #[error("no relay took the report within {} s{}", timeout.as_secs_f64(), listed(tried))]
    TimedOut {
        /// The time allowed.
        timeout: Duration,
        /// Per relay tried by then, what happened.
        tried: Vec<String>,
    },
}

/// `tried` after a colon, or nothing.
fn listed(tried: &[String]) -> String {
    if tried.is_empty() {
        String::new()
    } else {
        format!(": {}", tried.join("; "))
    }
}

/// Hands `manifest` to the first of `relays` (addresses with `/p2p/`, in order) that takes it,
/// all within `timeout`. Returns the peer that took it, or what each one did.
pub async fn send_report(
    net: &NetHandle,
    relays: &[Multiaddr],
    manifest: &[u8],
    timeout: Duration,
) -> Result<PeerId, SendReportError> {
    let mut tried = Vec::new();
    let attempt = async {
        for addr in relays {
            let peer = match net.dial(addr.clone()).await {
                Ok(peer) => peer,
                Err(error) => {
                    tried.push(format!("{addr}: {error}"));
                    continue;
                }
            };
            let mut wait = Duration::from_millis(10);
            let mut retries = 0;
            loop {
                let result = match net.open_stream(peer).await {
                    Ok(stream) => protocol::hand_report(stream, manifest).await,
                    Err(error) => Err(ExchangeError::Io(std::io::Error::other(error))),
                };
                match result {
                    Ok(_) => return Some(peer),
                    Err(error) if error.is_reset() && retries < RESET_RETRIES => {
                        retries += 1;
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    Err(error) => {
                        tried.push(format!("{peer}: {error}"));
                        break;
                    }
                }
            }
        }
        None
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Some(peer)) => Ok(peer),
        Ok(None) if relays.is_empty() => Err(SendReportError::NoRelay),
        Ok(None) => Err(SendReportError::Refused { tried }),
        Err(_) => Err(SendReportError::TimedOut { timeout, tried }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn manifest(vin: &str, n: u32) -> Vec<u8> {
        format!(r#"{{"signatures":[],"signed":{{"vin":"{vin}","n":{n}}}}}"#).into_bytes()
    }

    #[test]
    fn reports_are_queued_once_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        let queue = ReportQueue::open(dir.path(), 10).unwrap();
        let first = queue.take(&peer, &manifest("VIN-1", 1)).unwrap();
        let second = queue.take(&peer, &manifest("VIN-2", 2)).unwrap();
        assert_eq!(queue.take(&peer, &manifest("VIN-1", 1)).unwrap(), first);
        assert_eq!(queue.len(), 2);
        // A temporary file left by a power cut mid-write is cleared at the next open.
        std::fs::write(dir.path().join(".000000000009-x.json.tmp"), b"{").unwrap();
        drop(queue);
        let queue = ReportQueue::open(dir.path(), 10).unwrap();
        let pending = queue.pending().unwrap();
        let order: Vec<_> = pending.iter().map(|r| (r.digest, r.vin.as_str())).collect();
        assert_eq!(order, [(first, "VIN-1"), (second, "VIN-2")]);
        assert_eq!(pending[0].manifest, manifest("VIN-1", 1));
        assert!(!dir.path().join(".000000000009-x.json.tmp").exists());
        queue.remove(&first).unwrap();
        let third = queue.take(&peer, &manifest("VIN-3", 3)).unwrap();
        let order: Vec<_> = queue.pending().unwrap().iter().map(|r| r.digest).collect();
        assert_eq!(
            order,
            [second, third],
            "new reports queue after the old ones"
        );
        drop(queue);
        let queue = ReportQueue::open(dir.path(), 10).unwrap();
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn bad_reports_and_a_full_queue_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        let queue = ReportQueue::open(dir.path(), 1).unwrap();
        for (bad, words) in [
            (&b"not json"[..], "not a signed vehicle manifest"),
            (br#"{"signed":{}}"#, "missing field `vin`"),
            (br#"{"signed":{"vin":"../../etc"}}"#, "must be 1 to 64"),
        ] {
            let refusal = queue.take(&peer, bad).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::BadRequest);
            assert!(refusal.detail.contains(words), "{}", refusal.detail);
        }
        queue.take(&peer, &manifest("VIN-1", 1)).unwrap();
        let full = queue.take(&peer, &manifest("VIN-1", 2)).unwrap_err();
        assert_eq!(full.code, ErrorCode::Busy);
        assert!(full.detail.contains("full (1 reports)"), "{}", full.detail);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn one_peer_or_one_vehicle_cannot_fill_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let quotas = Quotas {
            max_reports: 100,
            max_bytes: 10_000,
            per_vehicle: 3,
            per_peer: 4,
        };
        let queue = ReportQueue::with_quotas(dir.path(), quotas).unwrap();
        let (flooder, vehicle) = (PeerId::random(), PeerId::random());
        // One peer floods with reports of many vehicles: four taken, then refused.
        for n in 0..4 {
            queue
                .take(&flooder, &manifest(&format!("VIN-F{n}"), n))
                .unwrap();
        }
        let refused = queue.take(&flooder, &manifest("VIN-F9", 9)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Busy);
        assert!(
            refused.detail.contains("from this peer"),
            "{}",
            refused.detail
        );
        // A vehicle's own report is still taken; its fourth waiting one is not.
        for n in 0..3 {
            queue.take(&vehicle, &manifest("VIN-1", n)).unwrap();
        }
        let refused = queue.take(&vehicle, &manifest("VIN-1", 3)).unwrap_err();
        assert!(
            refused.detail.contains("reports of VIN-1"),
            "{}",
            refused.detail
        );
        // Delivered reports free their place.
        let first = queue.pending().unwrap()[0].digest;
        queue.remove(&first).unwrap();
        queue.take(&flooder, &manifest("VIN-F9", 9)).unwrap();
        // The bytes on disk are bounded too, counted again after a reopen.
        let big = format!(
            r#"{{"signatures":[],"signed":{{"vin":"VIN-2","pad":"{}"}}}}"#,
            "x".repeat(9_800)
        );
        let refused = queue.take(&PeerId::random(), big.as_bytes()).unwrap_err();
        assert!(refused.detail.contains("10000 bytes"), "{}", refused.detail);
        drop(queue);
        let queue = ReportQueue::with_quotas(dir.path(), quotas).unwrap();
        assert!(queue.take(&PeerId::random(), big.as_bytes()).is_err());
        // The vehicle's share is its own after a reopen too (what waited before counts for
        // nobody in particular).
        queue.take(&vehicle, &manifest("VIN-1", 7)).unwrap();
    }

    #[test]
    fn a_peer_claiming_another_vehicles_vin_fills_only_its_own_share() {
        let dir = tempfile::tempdir().unwrap();
        let quotas = Quotas {
            max_reports: 100,
            max_bytes: 1 << 20,
            per_vehicle: 3,
            per_peer: 10,
        };
        let queue = ReportQueue::with_quotas(dir.path(), quotas).unwrap();
        let (flooder, vehicle) = (PeerId::random(), PeerId::random());
        for n in 0..3 {
            queue.take(&flooder, &manifest("VIN-1", n)).unwrap();
        }
        let refused = queue.take(&flooder, &manifest("VIN-1", 3)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Busy);
        assert!(
            refused.detail.contains("reports of VIN-1 from this peer"),
            "{}",
            refused.detail
        );
        // The vehicle VIN-1 itself still hands over its reports.
        for n in 10..13 {
            queue.take(&vehicle, &manifest("VIN-1", n)).unwrap();
        }
        assert_eq!(queue.len(), 6);
    }

    #[test]
    fn a_report_damaged_on_disk_is_dropped_not_relayed() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        let queue = ReportQueue::open(dir.path(), 10).unwrap();
        let digest = queue.take(&peer, &manifest("VIN-1", 1)).unwrap();
        let good = queue.take(&peer, &manifest("VIN-2", 1)).unwrap();
        let path = dir.path().join(format!("{:012}-{}.json", 0, digest));
        std::fs::write(&path, manifest("VIN-9", 1)).unwrap();
        let pending = queue.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].digest, good);
        assert!(!path.exists());
        assert_eq!(queue.len(), 1);
    }
}
