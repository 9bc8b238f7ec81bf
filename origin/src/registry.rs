//! The device registry: each vehicle with its ECUs (serial, hardware id, key, what it runs), its
//! region, type and home depot, and its last report; and the director's campaigns.
//!
//! The director reads and writes it only through [`Registry`], which has two implementations:
//! [`SledRegistry`], the embedded default, keeps everything in one sled database under the origin
//! directory, each write flushed before it returns, for one director process; and
//! [`PostgresRegistry`] keeps it in a PostgreSQL database (`origin serve --registry
//! postgres://…`) that can be backed up, replicated and queried. [`Location`] says which one a
//! director opens. `origin/tests/registry.rs` runs one suite against both.
//!
//! Both are blocking: the director calls them from plain threads and tokio's blocking threads,
//! never from an async task.

use std::path::Path;

use anyhow::Context;
use proto::{CampaignId, Vin};

pub use proto::director_api::{EcuRecord, LastReport, VehicleRecord};

mod database_url;
mod postgresql;

pub use database_url::{PostgresTarget, TargetError, TlsMode};
pub use postgresql::{MIGRATIONS, Migration, OpenError, PostgresRegistry};

/// Which registry a director keeps its vehicles and campaigns in.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Location {
    /// The embedded sled database at `DIR/registry`.
    #[default]
    Embedded,
    /// A PostgreSQL database.
    Postgres(Box<PostgresTarget>),
}

impl Location {
    /// Opens it for the origin at `origin_dir` (blocking).
    pub fn open(&self, origin_dir: &Path) -> anyhow::Result<Box<dyn Registry>> {
        Ok(match self {
            Self::Embedded => Box::new(SledRegistry::open(&origin_dir.join("registry"))?),
            Self::Postgres(target) => Box::new(PostgresRegistry::open(target)?),
        })
    }

    /// Opens it as a standby: waits until the director that holds it ends, then takes over.
    /// Only a shared database has standbys.
    pub fn open_standby(&self) -> anyhow::Result<Box<dyn Registry>> {
        match self {
            Self::Embedded => anyhow::bail!(
                "a standby director needs a shared registry: give --registry postgres://…"
            ),
            Self::Postgres(target) => Ok(Box::new(PostgresRegistry::open_standby(target)?)),
        }
    }
}

/// Parses a vehicle's registered primary or ECU key: ed25519 in hex, or a PEM `PUBLIC KEY` of
/// ECDSA P-256, RSA or Ed25519 ([`proto::director_api::parse_uptane_key`]).
pub fn parse_key(text: &str) -> anyhow::Result<proto::tuf::Key> {
    Ok(proto::director_api::parse_uptane_key(text)?)
}

/// Where the director keeps vehicles and campaigns. Every write is durable when it returns.
/// Calls block: they are made from threads that may block (plain ones, or tokio's blocking
/// threads), never from an async task.
pub trait Registry: Send + Sync {
    /// Adds or replaces a vehicle.
    fn put_vehicle(&self, vehicle: &VehicleRecord) -> anyhow::Result<()>;
    /// One vehicle.
    fn vehicle(&self, vin: &Vin) -> anyhow::Result<Option<VehicleRecord>>;
    /// Every vehicle, by VIN.
    fn vehicles(&self) -> anyhow::Result<Vec<VehicleRecord>>;
    /// Adds or replaces a campaign record (JSON: the director's own type).
    fn put_campaign(&self, id: &CampaignId, record: &[u8]) -> anyhow::Result<()>;
    /// Every campaign record, by id.
    fn campaigns(&self) -> anyhow::Result<Vec<(CampaignId, Vec<u8>)>>;
    /// Appends `event` to campaign `id`'s log under sequence number `seq` (see
    /// `service::Director`: reports between snapshots of a campaign record).
    fn log_campaign_event(&self, id: &CampaignId, seq: u64, event: &[u8]) -> anyhow::Result<()>;
    /// Campaign `id`'s logged events, oldest first.
    fn campaign_events(&self, id: &CampaignId) -> anyhow::Result<Vec<(u64, Vec<u8>)>>;
    /// Drops campaign `id`'s logged events up to and including `seq` (a snapshot holds them).
    /// Need not be durable: events a snapshot holds are skipped when read back.
    fn drop_campaign_events(&self, id: &CampaignId, through: u64) -> anyhow::Result<()>;
    /// The bytes the registry takes in its store, when it can tell (sled: its files on disk;
    /// PostgreSQL: the database's, `pg_database_size`): for planning a fleet's storage.
    fn stored_bytes(&self) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }
}

/// The embedded registry: a sled database.
#[derive(Debug)]
pub struct SledRegistry {
    db: sled::Db,
    vehicles: sled::Tree,
    campaigns: sled::Tree,
    /// Key: campaign id, a 0 byte, sequence number (8 bytes, big-endian).
    campaign_log: sled::Tree,
}

fn log_prefix(id: &CampaignId) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.push(0);
    key
}

fn log_key(id: &CampaignId, seq: u64) -> Vec<u8> {
    let mut key = log_prefix(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

impl SledRegistry {
    /// Opens (or creates) the registry at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = sled::open(path).with_context(|| {
            format!(
                "opening the registry {} (is another `origin serve` running on it?)",
                path.display()
            )
        })?;
        let vehicles = db
            .open_tree("vehicles")
            .context("opening the vehicles tree")?;
        let campaigns = db
            .open_tree("campaigns")
            .context("opening the campaigns tree")?;
        let campaign_log = db
            .open_tree("campaign-log")
            .context("opening the campaign log tree")?;
        Ok(Self {
            db,
            vehicles,
            campaigns,
            campaign_log,
        })
    }

    fn flush(&self) -> anyhow::Result<()> {
        self.db.flush().context("flushing the registry")?;
        Ok(())
    }
}

impl Registry for SledRegistry {
    fn put_vehicle(&self, vehicle: &VehicleRecord) -> anyhow::Result<()> {
        self.vehicles
            .insert(vehicle.vin.as_bytes(), serde_json::to_vec(vehicle)?)
            .with_context(|| format!("storing vehicle {}", vehicle.vin))?;
        self.flush()
    }

    fn vehicle(&self, vin: &Vin) -> anyhow::Result<Option<VehicleRecord>> {
        let Some(bytes) = self
            .vehicles
            .get(vin.as_bytes())
            .with_context(|| format!("reading vehicle {vin}"))?
        else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("the registry's record of vehicle {vin} is damaged")
        })?))
    }

    fn vehicles(&self) -> anyhow::Result<Vec<VehicleRecord>> {
        let mut out = Vec::new();
        for entry in &self.vehicles {
            let (key, bytes) = entry.context("reading the vehicles")?;
            out.push(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "the registry's record of vehicle {} is damaged",
                    String::from_utf8_lossy(&key)
                )
            })?);
        }
        Ok(out)
    }

    fn put_campaign(&self, id: &CampaignId, record: &[u8]) -> anyhow::Result<()> {
        self.campaigns
            .insert(id.as_str().as_bytes(), record)
            .with_context(|| format!("storing campaign {id}"))?;
        self.flush()
    }

    fn campaigns(&self) -> anyhow::Result<Vec<(CampaignId, Vec<u8>)>> {
        let mut out = Vec::new();
        for entry in &self.campaigns {
            let (key, bytes) = entry.context("reading the campaigns")?;
            let id = CampaignId::parse(&String::from_utf8_lossy(&key))
                .context("the registry holds a campaign under a damaged id")?;
            out.push((id, bytes.to_vec()));
        }
        Ok(out)
    }

    fn log_campaign_event(&self, id: &CampaignId, seq: u64, event: &[u8]) -> anyhow::Result<()> {
        self.campaign_log
            .insert(log_key(id, seq), event)
            .with_context(|| format!("logging event {seq} of campaign {id}"))?;
        self.flush()
    }

    fn campaign_events(&self, id: &CampaignId) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        let prefix = log_prefix(id);
        let mut out = Vec::new();
        for entry in self.campaign_log.scan_prefix(&prefix) {
            let (key, bytes) =
                entry.with_context(|| format!("reading the log of campaign {id}"))?;
            let seq = key
                .get(prefix.len()..)
                .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
                .map(u64::from_be_bytes)
                .with_context(|| format!("the log of campaign {id} holds a damaged key"))?;
            out.push((seq, bytes.to_vec()));
        }
        Ok(out)
    }

    fn drop_campaign_events(&self, id: &CampaignId, through: u64) -> anyhow::Result<()> {
        let mut batch = sled::Batch::default();
        for entry in self
            .campaign_log
            .range(log_key(id, 0)..=log_key(id, through))
        {
            let (key, _) = entry.with_context(|| format!("reading the log of campaign {id}"))?;
            batch.remove(key);
        }
        self.campaign_log
            .apply_batch(batch)
            .with_context(|| format!("dropping logged events of campaign {id}"))
    }

    fn stored_bytes(&self) -> anyhow::Result<Option<u64>> {
        Ok(Some(
            self.db
                .size_on_disk()
                .context("reading the registry's size on disk")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vehicle(vin: &str) -> VehicleRecord {
        let key = |seed: u8| {
            hex::encode(
                ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                    .verifying_key()
                    .as_bytes(),
            )
        };
        VehicleRecord {
            vin: vin.parse().unwrap(),
            region: "eu-north".into(),
            vehicle_type: "tractor".into(),
            home_depot: "depot-7".into(),
            primary_key: key(1),
            ecus: vec![EcuRecord {
                serial: "GW-1".parse().unwrap(),
                hardware_id: "gateway-v1".into(),
                public_key: key(2),
                installed: Some("gw/1.0.bin".into()),
            }],
            peer: None,
            last_report: None,
        }
    }

    #[test]
    fn bad_records_are_refused_by_field() {
        let mut bad = vehicle("VIN-1");
        bad.primary_key = "zz".into();
        assert!(format!("{:#}", bad.check().unwrap_err()).contains("primary_key"));
        let mut bad = vehicle("VIN-1");
        bad.ecus.push(bad.ecus[0].clone());
        assert!(bad.check().unwrap_err().to_string().contains("twice"));
        // A VIN that is not one cannot even be held by a record.
        assert!("VIN 1".parse::<Vin>().is_err());
        let mut bad = vehicle("VIN-1");
        bad.region = String::new();
        assert!(bad.check().unwrap_err().to_string().contains("region"));
        vehicle("VIN-1").check().unwrap();
    }
}
