//! The operator's TOML files (a campaign, a vehicle's registration; see `config/`), read and
//! checked before they go to the director. Errors name the file.

use std::path::Path;

use anyhow::Context;

use crate::campaign::CampaignSpec;
use crate::registry::VehicleRecord;

/// A campaign file, checked as far as it can be without the repositories.
pub fn campaign(file: &Path) -> anyhow::Result<CampaignSpec> {
    let spec: CampaignSpec = read_toml(file)?;
    spec.check()
        .with_context(|| format!("{}", file.display()))?;
    Ok(spec)
}

/// A vehicle registration file, checked field by field.
pub fn vehicle(file: &Path) -> anyhow::Result<VehicleRecord> {
    let vehicle: VehicleRecord = read_toml(file)?;
    vehicle
        .check()
        .with_context(|| format!("{}", file.display()))?;
    Ok(vehicle)
}

fn read_toml<T: serde::de::DeserializeOwned>(file: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    toml::from_str(&text).with_context(|| format!("{}", file.display()))
}
