//! `netsim yard`: the whole system on one machine, on loopback. An origin (image repository and
//! director, with its HTTP service), the origin's cache (a mesh node serving the origin's
//! repositories), a depot cache (the real daemon: prefetch, super-seeding tracker, report
//! relay) and N vehicle agents (the real daemon: Uptane verification, delta from the depot and
//! neighbours over libp2p QUIC, flasher with file-backed A/B banks and simulated boots). The
//! origin publishes firmware v1 → v2 with a delta; a campaign rolls v2 out (a canary wave, then
//! everyone), its gates deciding; the run ends when the campaign completes, or, with a failing
//! release, when it has halted and its canary vehicles have rolled back. The summary says
//! whether it ended as expected ([`Expected`]): `netsim yard` exits non-zero when not.
//!
//! Nothing here decides anything the real nodes do not: netsim only starts the parts, presses
//! the operator's buttons (create, approve) and watches.

use std::path::Path;

use anyhow::{Context, bail};
use proto::Vin;

use follow::Follow;
use options::Log;
use parts::{Yard, depot_config};
use summary::Finished;
use vehicle::{VehicleSetup, vin};

pub use campaign::campaign_plan;
pub use options::{Expected, UNEXPECTED_EXIT, YardOptions};
pub use summary::{
    CorruptPeer, Download, ReportFloodSummary, SlowReaderSummary, VehicleResult, YardSummary, table,
};

mod campaign;
mod follow;
mod options;
mod parts;
mod release;
mod report;
mod summary;
mod vehicle;

/// Prepares `out`: removes a previous run's output (marked by `.netsim-yard`), refuses to
/// touch a directory that holds anything else.
fn fresh_out(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let marker = out.join(".netsim-yard");
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        if !marker.exists() && !empty {
            bail!(
                "--out {}: the directory exists and was not made by netsim yard; give an empty or new one",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(
        out.join(".netsim-yard"),
        b"made by netsim yard; removed by the next run\n",
    )?;
    Ok(())
}

/// Runs the yard (see the module): prepares the origin; starts the director service, the
/// origin's cache and the depot, and waits for the depot's prefetch; adds the corrupt peer
/// when asked; registers and starts the vehicles, then the attackers when asked; creates and
/// approves the campaign; follows it until it ends; stops everything; writes the summary.
/// Whatever was started is stopped on every way out, an error's included (the running parts
/// stop when dropped).
pub fn run(options: &YardOptions) -> anyhow::Result<YardSummary> {
    options.check()?;
    let log = Log::new(options.verbose);
    let out = &options.out;
    fresh_out(out)?;
    let out = std::fs::canonicalize(out)?;
    log.say(&options.header());

    let vins: Vec<Vin> = (0..options.vehicles).map(vin).collect();
    let release = release::prepare(&out, &vins, options, log)?;
    let mut yard = Yard::new()?;
    let director = yard.start_director(&out, &release.origin, vins.len())?;
    let cache = yard.start_origin_cache(&release.origin)?;
    let depot = yard.start_depot(depot_config(
        &out, &release, &vins, cache, &director, options,
    )?)?;
    if options.corrupt_peer {
        yard.start_rogue(&out, &release, &depot, log)?;
    }
    depot.wait_for_prefetch(log)?;
    let setup = VehicleSetup::new(
        &release,
        (&director.url, &director.ca),
        &depot.addr,
        options,
    )?;
    let (events, vehicle_peers) = yard.start_vehicles(&out, &vins, &setup, &director)?;
    // At work before the campaign: every honest fetch runs beside them.
    yard.start_attackers(&out, &release, &depot, options, log)?;

    let campaign = campaign::create_and_approve(&director, &vins, options, log)?;
    let mut follow = Follow::new(
        &campaign,
        &vins,
        (&depot.peer, &vehicle_peers),
        yard.rogue().map(|r| r.peer.to_string()),
        log,
    );
    follow::until_end(&mut follow, &events, &director.api, options.timeout)?;
    let seconds = campaign.approved.elapsed().as_secs_f64();
    // Let the depot relay what it holds, then stop everything.
    let depot_status = yard.stop(&depot)?;
    follow.last_word(events.try_iter());

    summary::write(
        &out,
        &Finished {
            options,
            release: &release,
            follow: &follow,
            depot_status: &depot_status,
            rogue: yard.rogue(),
            attackers: yard.attackers(),
            seconds,
        },
    )
}
