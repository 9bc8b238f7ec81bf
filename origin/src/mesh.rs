//! The origin's own mesh node: serves the image repository and every vehicle's director
//! repository to the depots (their prefetch `upstream`) live, as they are signed, with no import
//! and no restart. `origin serve --mesh-listen ADDR` runs it beside the director.
//!
//! A publisher thread keeps the node's store in step with the origin directory: at start it
//! imports every repository whole; then, every [`PUBLISH_POLL`], the repositories the publish
//! journal names ([`crate::publish`]: every signing notes its repository), importing only what
//! changed ([`node::import::Import::Changes`]); and every [`FULL_PASS`] every repository again,
//! changes only, for a note lost to a crash. When the repositories are in object storage, the
//! node imports from a local copy ([`crate::mirror`], `DIR/mesh-node/mirror`) brought up to the
//! store first; the image repository is then also looked at every [`IMAGE_POLL`], since a
//! release signed on another machine notes nothing in this one's journal. The node is a fleet member (role `origin-cache`),
//! its certificate issued with the origin's own fleet key at start and renewed by the publisher
//! before it expires.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use libp2p::Multiaddr;
use node::import::{Import, import_repo};
use node::mesh_config::{Mesh, MeshSection};
use node::net::{NetConfig, NetEvents, NetHandle};
use node::store::DiskStore;
use proto::membership::{MemberRole, MembershipCert};

use crate::mirror::Mirror;
use crate::{Actor, Origin, director, fleet, publish};

/// How often the publisher reads the journal.
pub const PUBLISH_POLL: Duration = Duration::from_millis(200);
/// How often the publisher looks at every repository anyway.
pub const FULL_PASS: Duration = Duration::from_secs(600);
/// How often the publisher looks at the image repository in object storage.
pub const IMAGE_POLL: Duration = Duration::from_secs(10);
/// Days the node's membership certificate is valid.
const CERTIFICATE_DAYS: u32 = 30;
/// Renewed when it has less than this left.
const RENEW_BEFORE_SECS: u64 = 7 * 86_400;

/// The running node: dropping it stops the publisher (the node stops with its runtime).
#[derive(Debug)]
pub struct OriginMesh {
    /// Where it listens, each with `/p2p/<its peer id>`: what depots name as `upstream`.
    pub addrs: Vec<Multiaddr>,
    /// Its store (for status and tests).
    pub store: Arc<DiskStore>,
    net: NetHandle,
    _events: NetEvents,
    stop: Arc<AtomicBool>,
}

impl Drop for OriginMesh {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The mesh name a repository of the origin is served under: `image`, `director/<vin>`.
pub fn mesh_name(repository: &str) -> Option<String> {
    if repository == "image" {
        return Some("image".to_owned());
    }
    repository
        .strip_prefix("director/vehicles/")
        .map(|vin| format!("director/{vin}"))
}

/// Starts the node of `origin` on the current tokio runtime, listening on `listen`, its data
/// (identity, store, certificate) in `DIR/mesh-node` (`DIR/mesh` is the releases' work store); imports every repository before it returns.
///
/// # Errors
/// When the data directory, the fleet key, the certificate, the network or the first import
/// fails.
pub async fn start(origin: &Origin, listen: Vec<Multiaddr>) -> anyhow::Result<OriginMesh> {
    let dir = node_dir(origin);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (store, _) = node::store::open_data_dir(&dir)
        .with_context(|| format!("opening the mesh store in {}", dir.display()))?;
    let store = Arc::new(store);
    let keypair = node::identity::load_or_create(&dir)
        .with_context(|| format!("the mesh identity in {}", dir.display()))?;
    let peer = keypair.public().to_peer_id();
    let certificate = issue(origin, &peer.to_string())?;
    let membership = membership(origin, &dir, &certificate)?;
    let (net, events, incoming) = node::net::start(NetConfig {
        keypair: Some(keypair),
        listen,
        mdns: false,
        membership: Some(membership),
        ..NetConfig::default()
    })
    .await
    .context("starting the origin's mesh node")?;
    node::serve::spawn_server(
        store.clone(),
        incoming,
        Arc::new(node::serve::ServeCounters::default()),
    );
    let mirror = origin
        .storage
        .local_dir()
        .is_none()
        .then(|| Mirror::new(origin.storage.clone(), &dir.join("mirror")));
    let mut publisher = Publisher {
        origin: origin.clone(),
        mirror,
        store: store.clone(),
        net: net.clone(),
        runtime: tokio::runtime::Handle::current(),
        certificate,
    };
    let publisher = tokio::task::spawn_blocking(move || {
        // The journal first (made, and emptied: the full pass covers what it held), so that
        // every signing from now on is noted.
        publish::drain(&publisher.origin.dir).context("starting the publish journal")?;
        publisher.full_pass(Import::All)?;
        Ok::<_, anyhow::Error>(publisher)
    })
    .await
    .context("the first import")??;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("origin-mesh-publisher".into())
        .spawn(move || publisher.run(&stopped))
        .context("starting the publisher")?;
    let addrs = net
        .listen_addrs()
        .await
        .into_iter()
        .map(|addr| match addr.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(_)) => addr,
            _ => addr.with(libp2p::multiaddr::Protocol::P2p(peer)),
        })
        .collect();
    Ok(OriginMesh {
        addrs,
        store,
        net,
        _events: events,
        stop,
    })
}

impl OriginMesh {
    /// The node's network handle.
    pub fn net(&self) -> &NetHandle {
        &self.net
    }
}

/// The mesh node's data directory (identity, store, certificate): `DIR/mesh-node`.
pub fn node_dir(origin: &Origin) -> std::path::PathBuf {
    origin.dir.join("mesh-node")
}

/// A membership certificate for the node's `peer`, from the origin's fleet key (audited as
/// `member issue` by `origin serve`).
fn issue(origin: &Origin, peer: &str) -> anyhow::Result<MembershipCert> {
    let actor = Actor::new("origin serve")?;
    fleet::issue(
        origin,
        &actor,
        peer,
        MemberRole::OriginCache,
        CERTIFICATE_DAYS,
    )
}

/// What the node presents and accepts: `certificate`, the origin's fleet key, the origin's own
/// revocation list.
fn membership(
    origin: &Origin,
    dir: &Path,
    certificate: &MembershipCert,
) -> anyhow::Result<node::membership::MeshMembership> {
    let path = dir.join("member.json");
    crate::write_durably(&path, &certificate.encode())
        .with_context(|| format!("writing {}", path.display()))?;
    let section = MeshSection {
        open: false,
        fleet_keys: vec![fleet::describe_key(origin)?.fleet_key],
        certificate: Some(path),
        revocations: Some(fleet::revocations_path(origin)),
    };
    match MeshSection::load(Some(&section))? {
        Mesh::Fleet { membership, .. } => Ok(*membership),
        Mesh::Open => anyhow::bail!("the origin's mesh section is open"),
    }
}

/// Keeps the store in step with the origin's repositories.
struct Publisher {
    origin: Origin,
    /// The local copy imported from, when the repositories are in object storage.
    mirror: Option<Mirror>,
    store: Arc<DiskStore>,
    net: NetHandle,
    runtime: tokio::runtime::Handle,
    certificate: MembershipCert,
}

impl Publisher {
    fn run(mut self, stop: &AtomicBool) {
        let mut last_full = Instant::now();
        let mut last_image = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if self.mirror.is_some() && last_image.elapsed() >= IMAGE_POLL {
                last_image = Instant::now();
                if let Err(error) = self.import("image", Import::Changes) {
                    tracing::warn!("publishing the image repository: {error:#}");
                }
            }
            match publish::drain(&self.origin.dir) {
                Ok(repositories) => {
                    for repository in repositories {
                        if let Err(error) = self.import(&repository, Import::Changes) {
                            tracing::warn!(%repository, "publishing: {error:#}");
                        }
                    }
                }
                Err(error) => tracing::warn!("reading the publish journal: {error}"),
            }
            if last_full.elapsed() >= FULL_PASS {
                last_full = Instant::now();
                if let Err(error) = self.full_pass(Import::Changes) {
                    tracing::warn!("publishing every repository: {error:#}");
                }
                if let Err(error) = self.renew() {
                    tracing::warn!("renewing the origin mesh node's certificate: {error:#}");
                }
            }
            std::thread::sleep(PUBLISH_POLL);
        }
    }

    /// Imports the image repository and every vehicle's director repository. In object
    /// storage, the copy is first brought up to the store: one listing per root, and only the
    /// repositories that changed fetched ([`Mirror::changed`]); then, for [`Import::All`],
    /// every repository copied, and for [`Import::Changes`] those that changed.
    fn full_pass(&mut self, what: Import) -> anyhow::Result<()> {
        let repositories = match &mut self.mirror {
            Some(mirror) => {
                let mut changed = mirror.changed("image")?;
                changed.extend(mirror.changed("director/vehicles")?);
                for repository in &changed {
                    if let Err(error) = mirror.sync(repository) {
                        if repository == "image" {
                            return Err(error);
                        }
                        tracing::warn!(%repository, "copying from the store: {error:#}");
                    }
                }
                mirror.save()?;
                match what {
                    Import::All => mirror.repositories(),
                    Import::Changes => changed,
                }
            }
            None => {
                let mut all = vec!["image".to_owned()];
                all.extend(
                    director::vehicles(&self.origin)?
                        .iter()
                        .map(director::vehicle_repository),
                );
                all
            }
        };
        for repository in repositories {
            if let Err(error) = self.import_copied(&repository, what) {
                if repository == "image" {
                    return Err(error);
                }
                tracing::warn!(%repository, "publishing: {error:#}");
            }
        }
        Ok(())
    }

    /// Imports `repository` (in object storage, its copy brought up to the store first).
    fn import(&mut self, repository: &str, what: Import) -> anyhow::Result<()> {
        if let Some(mirror) = &mut self.mirror {
            if !mirror.sync(repository)? && what == Import::Changes {
                return Ok(());
            }
        }
        self.import_copied(repository, what)
    }

    /// Imports `repository` from the origin directory or the copy as it stands.
    fn import_copied(&self, repository: &str, what: Import) -> anyhow::Result<()> {
        let Some(name) = mesh_name(repository) else {
            return Ok(());
        };
        let dir = match (&self.mirror, self.origin.storage.local_dir()) {
            (Some(mirror), _) => mirror.repository_dir(repository),
            (None, Some(root)) => root.join(repository),
            (None, None) => return Ok(()),
        };
        if !dir.join("metadata").exists() {
            return Ok(());
        }
        let imported = import_repo(&self.store, &name, &dir, what)?;
        tracing::debug!(%repository, files = imported.len(), "published");
        Ok(())
    }

    /// A new certificate when the one presented has less than [`RENEW_BEFORE_SECS`] left.
    fn renew(&mut self) -> anyhow::Result<()> {
        let now = node::clock::unix_now();
        if self.certificate.membership.expires > now + RENEW_BEFORE_SECS {
            return Ok(());
        }
        let peer = self.net.peer_id().to_string();
        let certificate = issue(&self.origin, &peer)?;
        self.runtime
            .block_on(self.net.renew_certificate(certificate.clone()))?;
        let path = node_dir(&self.origin).join("member.json");
        crate::write_durably(&path, &certificate.encode())
            .with_context(|| format!("writing {}", path.display()))?;
        self.certificate = certificate;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_served_under_the_names_depots_ask_for() {
        assert_eq!(mesh_name("image").as_deref(), Some("image"));
        assert_eq!(
            mesh_name("director/vehicles/VIN-1").as_deref(),
            Some("director/VIN-1")
        );
        // The director's own repository is copied into each vehicle's; it is not served.
        assert_eq!(mesh_name("director"), None);
    }
}
