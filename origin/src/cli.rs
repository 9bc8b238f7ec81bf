//! The `origin` binary's command line: its commands and flags as clap reads them and `--help`
//! prints them. A module of the binary (declared in `main.rs`), not of the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use proto::tuf::Time;
use proto::tuf::keys::KeyType;

/// depotmesh origin: signs releases the TUF/Uptane way and keeps the director's repository.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// The origin directory (repositories, online keys, mesh store).
    #[arg(long, global = true, default_value = "origin-data")]
    pub(crate) dir: PathBuf,
    /// Where the offline keys are, for init, release, delegate and rotate (which also take it
    /// after the subcommand; other commands do not read it).
    #[arg(long, value_name = "DIR|pkcs11:URI")]
    pub(crate) offline_keys: Option<origin::keystore::KeyStore>,
    /// The time to sign at, as YYYY-MM-DDTHH:MM:SSZ (default: now). For tests and rehearsals.
    #[arg(long, global = true)]
    pub(crate) now: Option<Time>,
    /// Who is acting, for the audit log (default: the user logged in, even through runuser,
    /// su or sudo; else sudo's user; else $USER unless that is a service's account).
    #[arg(long, global = true)]
    pub(crate) actor: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Make a new key file (mode 0600); prints its key id and public key object.
    Keygen {
        /// The key file to create.
        #[arg(long)]
        out: PathBuf,
        /// `ed25519`, `ecdsa` (P-256) or `rsa` (3072 bits, PSS with SHA-256).
        #[arg(long = "type", default_value = "ed25519")]
        kind: KeyType,
    },
    /// Make a new image repository and director with fresh keys: offline keys into
    /// --offline-keys, online keys into DIR/keys; and the director's TLS: a director CA
    /// (`DIR/tls/director-ca.pem`, the file clients trust), its server certificate for
    /// localhost, and an operator CA for operators' client certificates. With a pkcs11: URI
    /// as --offline-keys, the offline keys are made inside the token and never leave it.
    Init {
        #[command(flatten)]
        offline: OfflineKeysArg,
        /// The type of every new key: `ed25519`, `ecdsa` (P-256) or `rsa` (default: ed25519,
        /// or ecdsa when the offline keys are in a token).
        #[arg(long)]
        key_type: Option<KeyType>,
        /// Keep the repositories in object storage: `s3://BUCKET/PREFIX`, `gs://…`, `az://…`
        /// (or `file:///PATH`); recorded in DIR/storage.toml for every later command.
        /// Credentials come from the environment (AWS_ACCESS_KEY_ID, …), never from a flag.
        /// Default: in the origin directory.
        #[arg(long, value_name = "URL")]
        storage: Option<String>,
        /// A storage option, KEY=VALUE (`endpoint=https://…`, `region=…`,
        /// `allow_http=true` for a loopback test). Repeatable.
        #[arg(
            long = "storage-option",
            value_name = "KEY=VALUE",
            requires = "storage"
        )]
        storage_options: Vec<String>,
    },
    /// Issue the director's server certificate again from the origin's director CA, valid for
    /// localhost and each --name (the names and addresses clients reach it by). Clients trust
    /// the CA, so they need no change.
    DirectorCert {
        /// A DNS name or IP address of the director (repeatable).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Days the certificate is valid: 1 to 398 (199 by default, under the CA/Browser
        /// Forum's 200 since March 2026). `origin serve` renews it once fewer than 30 days are
        /// left.
        #[arg(long, default_value_t = origin::tls::CertificateDays::DEFAULT)]
        days: origin::tls::CertificateDays,
    },
    /// Release an image: store it (and its bao outboard) and sign new targets, snapshot and
    /// timestamp of the image repository.
    Release(ReleaseArgs),
    /// Delegate target names matching --path patterns (e.g. `brake/*`) to a new role of the
    /// image repository with its own key, for a supplier or an ECU family; a vehicle then
    /// trusts images under those names only when that role signs them.
    Delegate {
        #[command(flatten)]
        offline: OfflineKeysArg,
        /// The new role's name (a-z, 0-9, -, _).
        #[arg(long)]
        name: String,
        /// A target name pattern the role may sign for (`*` matches within one path segment).
        /// Repeatable.
        #[arg(long = "path", required = true)]
        paths: Vec<String>,
        /// The role's key file (from `origin keygen`, e.g. made by the supplier); by default a
        /// new one is made with the offline keys (in the token, if they are in one). Kept with
        /// the offline keys as image-<name>.
        #[arg(long, conflicts_with = "key_type")]
        key: Option<PathBuf>,
        /// The type of the key made when no --key is given (default: the offline store's).
        #[arg(long)]
        key_type: Option<KeyType>,
        /// A vehicle looking up a name this role matches looks no further, even if the role
        /// does not list it.
        #[arg(long)]
        terminating: bool,
    },
    /// Replace a role's key: a new root version signed by the old root key (and the new one
    /// for root), then the role's metadata re-signed.
    Rotate {
        #[command(flatten)]
        offline: OfflineKeysArg,
        /// `image` or `director`.
        #[arg(long, value_parser = ["image", "director"])]
        repository: String,
        /// `root`, `targets`, `snapshot` or `timestamp`.
        #[arg(long, value_parser = ["root", "targets", "snapshot", "timestamp"])]
        role: String,
        /// The new key file (from `origin keygen`); by default a new key is made where the
        /// role's key is kept (inside the token, if the offline keys are in one). The old key
        /// stays there, retired as <name>.retired-v<N>.
        #[arg(long, conflicts_with = "key_type")]
        new_key: Option<PathBuf>,
        /// The type of the key made when no --new-key is given (default: the store's).
        #[arg(long)]
        key_type: Option<KeyType>,
    },
    /// Tell one vehicle, through the director, which image each of its ECUs must install: a new
    /// director targets version for that vehicle (online key), checked against the image
    /// repository (the image must be released for the ECU's hardware).
    Assign {
        /// The vehicle's id (VIN).
        #[arg(long)]
        vin: proto::Vin,
        /// SERIAL,HARDWARE_ID,TARGET: install image repository target TARGET on ECU SERIAL.
        /// Repeatable; the assignment replaces the vehicle's previous one.
        #[arg(long = "ecu", required = true)]
        ecus: Vec<origin::director::Assignment>,
        /// The update's priority class, signed with the assignment: `security` may use cellular
        /// at once (within the vehicle's budget), `fix` waits for WiFi or a cellular window
        /// until its deadline, `feature` waits for WiFi.
        #[arg(long, default_value = "feature")]
        priority: node::policy::Priority,
    },
    /// Re-sign every repository's timestamp, each vehicle's director one too (run it hourly:
    /// they expire after a day).
    Timestamp,
    /// Check every repository (image, director, each vehicle's director targets) and list every
    /// problem, each naming its file. Exit 1 if any.
    Verify,
    /// Print the key ids and public keys of every role (never private keys).
    Keys,
    /// Write a repository's root metadata (the newest, or --version N) to standard output or
    /// --out: what a depot's `root`/`director_root` and a vehicle's roots start trust from,
    /// wherever the repositories are kept.
    Root {
        /// `image` or `director`.
        repository: RootRepository,
        /// The root version (default: the newest).
        #[arg(long)]
        version: Option<u64>,
        /// Write it to this file instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The audit log (`audit.log`: append-only, hash-chained, each entry signed).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the director service: the campaigns' HTTP API, vehicle manifests in, the dashboard at
    /// `/` and Prometheus metrics at `/metrics`. Runs until stopped.
    Serve {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
        /// The server certificate chain (PEM), e.g. from the company's PKI (default: the
        /// origin's own, `DIR/tls/director.pem`).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP instead of HTTPS: only on a loopback address (behind a TLS
        /// terminator on the same machine).
        #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
        plain_http: bool,
        /// Also take bearer tokens from the company's single sign-on: a TOML file with the
        /// OpenID provider's `issuer`, the `audience` tokens must name, `roles_claim` (default
        /// `roles`), `name_claim` (default `preferred_username`) and `ca` (optional PEM file).
        #[arg(long)]
        oidc: Option<PathBuf>,
        /// Requests a second each client address may make on average (a depot relays its
        /// whole yard's reports from one address).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rate: u32,
        /// Requests a client address may make at once.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        burst: u32,
        /// How often the gates are re-evaluated without a report (soak times, report timeouts).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        tick_secs: u64,
        /// Also serve the image repository and every vehicle's director repository on the mesh,
        /// live as they are signed, for depots to prefetch from (their `upstream`): a QUIC
        /// address to listen on, e.g. `/ip4/0.0.0.0/udp/7470/quic-v1` (repeatable). The node
        /// is a fleet member with a certificate from the origin's fleet key; its data is in
        /// DIR/mesh-node.
        #[arg(long = "mesh-listen", value_name = "MULTIADDR")]
        mesh_listen: Vec<libp2p::Multiaddr>,
        /// Keep the device registry in PostgreSQL: a libpq-style URL,
        /// `postgres://USER@HOST[:PORT]/DATABASE[?sslmode=require&sslrootcert=CA.pem]` (default:
        /// the embedded registry in DIR/registry). The password comes from
        /// --registry-password-file, PGPASSWORD or PGPASSFILE/~/.pgpass: keep it off the
        /// command line.
        #[arg(long, value_name = "URL")]
        registry: Option<String>,
        /// A file whose first line is the registry database's password.
        #[arg(long, requires = "registry", value_name = "FILE")]
        registry_password_file: Option<PathBuf>,
        /// Run as a standby replica: wait, not listening, until the director that holds the
        /// --registry database ends (killed, its host gone), then take over from where the
        /// registry stands. Several replicas may wait; one takes over.
        #[arg(long, requires = "registry")]
        standby: bool,
    },
    /// Staged rollouts, through a running `origin serve`.
    Campaign {
        #[command(flatten)]
        director: DirectorArgs,
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// The device registry, through a running `origin serve`.
    Vehicle {
        #[command(flatten)]
        director: DirectorArgs,
        #[command(subcommand)]
        command: VehicleCommand,
    },
    /// The operators of the director: who may do what, with which certificate and approval
    /// key (`DIR/operators.json`; `origin serve` reads it again when it changes).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// The fleet's mesh membership: certificates that a libp2p peer id is a member in a role,
    /// signed with the origin's fleet key, and the signed list of peers thrown out early
    /// (`DIR/fleet/revocations.json`). Every issue and revocation is in the audit log.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Print the peer id of the origin's mesh node (`origin serve --mesh-listen`), making its
    /// identity in DIR/mesh-node if it has none yet: with the address it listens on, what a
    /// depot's `upstream` names (`/ip4/ADDR/udp/7470/quic-v1/p2p/PEER`). Run it as the user
    /// `origin serve` runs as.
    MeshIdentity,
    /// Build a delta that rebuilds --to from --from (see the `delta` crate for the format): per
    /// 8 MiB segment, the smallest of zstd patch-from, a bsdiff-class match and an aligned
    /// word diff. Prints a JSON summary. Needs no repository.
    Delta(DeltaArgs),
}

/// Where the offline keys are: the commands that sign with them take it after the subcommand
/// too.
#[derive(Debug, Args)]
pub(crate) struct OfflineKeysArg {
    /// Where the offline keys (both roots, image targets) are. A directory (kept apart from
    /// the origin directory, e.g. on a USB stick), or a PKCS #11 token as a `pkcs11:` URI (RFC
    /// 7512), e.g.
    /// `pkcs11:token=depotmesh?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/pin`.
    #[arg(long = "offline-keys", value_name = "DIR|pkcs11:URI")]
    pub(crate) offline_keys: Option<origin::keystore::KeyStore>,
}

impl Command {
    /// The `--offline-keys` given after the subcommand, taken out.
    pub(crate) fn take_offline_keys(&mut self) -> Option<origin::keystore::KeyStore> {
        match self {
            Self::Init { offline, .. }
            | Self::Delegate { offline, .. }
            | Self::Rotate { offline, .. }
            | Self::Release(ReleaseArgs { offline, .. }) => offline.offline_keys.take(),
            _ => None,
        }
    }
}

/// How the CLI reaches a director service and who it is there.
#[derive(Debug, Args)]
pub(crate) struct DirectorArgs {
    /// The director service's URL (`https://`; plain `http://` only to a loopback address).
    #[arg(long, global = true, default_value = "https://127.0.0.1:8470")]
    pub(crate) director: String,
    /// The CA certificates (PEM) the director's certificate must chain to (default: the
    /// origin's `DIR/tls/director-ca.pem` if there is one, else the system's roots).
    #[arg(long, global = true)]
    pub(crate) director_ca: Option<PathBuf>,
    /// Your operator certificate (PEM), from `origin operator add`.
    #[arg(long, global = true, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, global = true, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
}

/// The memory budget of building deltas (`origin delta`, `origin release`).
#[derive(Debug, Args)]
pub(crate) struct MemoryBudgetArgs {
    /// At most this many MiB for the source window, its index and the segment workers: fewer
    /// segments are encoded at once when every --jobs worker would not fit (the index takes 5
    /// bytes per source byte; a worker 32 per segment byte and 6 per source byte up to 64 MiB);
    /// refused when not even one fits.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub(crate) memory_budget_mib: Option<u64>,
}

impl MemoryBudgetArgs {
    /// The budget in bytes, if one was given.
    pub(crate) fn bytes(&self) -> Option<u64> {
        self.memory_budget_mib.map(|mib| mib << 20)
    }
}

/// `origin release`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct ReleaseArgs {
    #[command(flatten)]
    pub(crate) offline: OfflineKeysArg,
    /// The image file.
    pub(crate) file: PathBuf,
    /// Its target name, e.g. ecu/brake-1.2.0.bin.
    #[arg(long)]
    pub(crate) name: String,
    /// Hardware it runs on. Repeatable.
    #[arg(long = "hardware-id", required = true)]
    pub(crate) hardware_ids: Vec<String>,
    /// Its release counter (vehicles never install a lower one).
    #[arg(long)]
    pub(crate) release_counter: u64,
    /// The targets role that signs it: `targets` (the image repository's own, offline key)
    /// or a role made with `origin delegate` (e.g. a supplier's), whose paths must allow
    /// the name.
    #[arg(long, default_value = "targets")]
    pub(crate) role: String,
    /// Also build a delta from this earlier release (a target name) and list it with the
    /// image, for vehicles running that release. Repeatable.
    #[arg(long = "delta-from")]
    pub(crate) deltas_from: Vec<String>,
    /// Build the deltas without the LZMA-with-source-dictionary pass (faster; see
    /// `origin delta --no-lzma-dict`).
    #[arg(long)]
    pub(crate) no_lzma_dict: bool,
    /// Do not build the image compressed. By default it is built (a delta from nothing, with
    /// the x86 converter for x86 code) and listed beside the image when it saves at least a
    /// sixteenth of it: a vehicle that runs nothing a listed delta applies to fetches that.
    #[arg(long)]
    pub(crate) no_compressed: bool,
    /// Leave the references in compiled code uncorrected (executable-aware matching off):
    /// for vehicles whose agents predate it, which refuse such deltas.
    #[arg(long)]
    pub(crate) no_references: bool,
    /// Segments of a delta (or of the image compressed) encoded at once, 1 to 256 (default:
    /// every core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) jobs: Option<u16>,
    #[command(flatten)]
    pub(crate) memory: MemoryBudgetArgs,
}

impl ReleaseArgs {
    /// The release these arguments ask for.
    pub(crate) fn release(&self) -> origin::Release {
        let mut options = delta::DeltaOptions {
            lzma_dict: !self.no_lzma_dict,
            memory_budget: self.memory.bytes(),
            references: !self.no_references,
            ..Default::default()
        };
        if let Some(jobs) = self.jobs {
            options.threads = usize::from(jobs);
        }
        origin::Release::new(
            &self.file,
            &self.name,
            &self.hardware_ids,
            self.release_counter,
        )
        .signed_by(&self.role)
        .with_deltas_from(&self.deltas_from)
        .delta_options(options)
        .compressed(!self.no_compressed)
    }
}

/// `origin delta`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct DeltaArgs {
    /// The image vehicles have now.
    #[arg(long)]
    pub(crate) from: PathBuf,
    /// The image they should have.
    #[arg(long)]
    pub(crate) to: PathBuf,
    /// The delta file to write (written beside it, fsynced, then renamed).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Segment size in KiB: a power of two from 16 to 16384. An interrupted apply resumes at
    /// a segment boundary; larger segments compress a little better.
    #[arg(long, default_value_t = 8192)]
    pub(crate) segment_kib: u64,
    /// zstd level of every stream (1..=22).
    #[arg(long, default_value_t = 22, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub(crate) level: i32,
    /// Segments encoded at once, 1 to 256 (default: every core). Each holds a segment, its
    /// streams and a compressor's state, on top of the source and its index (5 bytes per
    /// source byte): a 46 MB source peaked at 861 MiB with two.
    #[arg(long, visible_alias = "jobs", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) threads: Option<u16>,
    /// Skip the LZMA-with-source-dictionary pass: faster, 5–15 % larger deltas between far
    /// releases of compiled code.
    #[arg(long)]
    pub(crate) no_lzma_dict: bool,
    /// Try every codec on each segment's finalists instead of those that win in practice:
    /// a little smaller, slower (E3 esbuild: 0.3 % smaller, 2.3× the time to encode them).
    #[arg(long)]
    pub(crate) exhaustive: bool,
    /// Leave the references in compiled code uncorrected (executable-aware matching off):
    /// for vehicles whose agents predate it, which refuse such deltas.
    #[arg(long)]
    pub(crate) no_references: bool,
    #[command(flatten)]
    pub(crate) memory: MemoryBudgetArgs,
}

impl DeltaArgs {
    /// The delta options these arguments ask for.
    pub(crate) fn options(
        &self,
    ) -> Result<delta::DeltaOptions, origin::file_delta::SegmentSizeError> {
        let mut options = origin::file_delta::options(
            self.segment_kib,
            self.level,
            self.threads.map(usize::from),
            !self.no_lzma_dict,
            self.exhaustive,
        )?;
        options.memory_budget = self.memory.bytes();
        options.references = !self.no_references;
        Ok(options)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum CampaignCommand {
    /// Create a campaign from a TOML file (see config/campaign.toml); it waits for approval.
    Create {
        /// The campaign file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Sign your approval of a campaign (you must not be its creator); the second approver's
    /// signature starts its first wave.
    Approve {
        /// The campaign id.
        id: proto::CampaignId,
        /// Your approval key (`NAME.approval.key` from `origin operator add`).
        #[arg(long)]
        approval_key: PathBuf,
    },
    /// Print campaigns' standing (JSON): waves, counts per segment, decisions.
    Status {
        /// Only this campaign.
        id: Option<proto::CampaignId>,
    },
    /// Halt a campaign: no more vehicles get the release; those that have it not installed
    /// have it withdrawn.
    Halt {
        /// The campaign id.
        id: proto::CampaignId,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Sign your approval to resume a halted campaign; it resumes on the second signature.
    Resume {
        /// The campaign id.
        id: proto::CampaignId,
        /// Your approval key.
        #[arg(long)]
        approval_key: PathBuf,
    },
    /// Call a campaign off for good: vehicles that installed it are sent the fallback release.
    Abort {
        /// The campaign id.
        id: proto::CampaignId,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum VehicleCommand {
    /// Register a vehicle from a TOML file (see config/vehicle-registration.toml).
    Register {
        /// The vehicle file.
        #[arg(long)]
        file: PathBuf,
        /// Also write the vehicle's mesh membership certificate, from the director's answer,
        /// to this file (replacing it): the vehicle's `[mesh] certificate`. Refused when the
        /// file names no `peer`, as then no certificate is issued.
        #[arg(long, value_name = "FILE")]
        membership_out: Option<PathBuf>,
    },
    /// Print the registry (JSON).
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum OperatorCommand {
    /// Add an operator, or give one a new certificate and these roles: writes OUT/NAME.pem and
    /// OUT/NAME.key (their client certificate under the operator CA) and, for an approver or
    /// operator, OUT/NAME.approval.key (the key their approvals are signed with). Hand them over
    /// and delete them here.
    Add {
        /// Their name, as the audit log records them (a-z 0-9 . _ - @).
        name: origin::operators::OperatorName,
        /// What they may do (repeatable).
        #[arg(long = "role", required = true, value_enum)]
        roles: Vec<origin::operators::Role>,
        /// Days their certificate is valid.
        #[arg(long, default_value_t = origin::operators::DEFAULT_VALIDITY_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Where their files go.
        #[arg(long)]
        out: PathBuf,
    },
    /// Remove an operator: their certificates are refused from their next request on.
    Remove {
        /// Their name.
        name: origin::operators::OperatorName,
    },
    /// Print the registry (JSON).
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum MemberCommand {
    /// Certify that PEER is a fleet member in ROLE: prints the certificate (JSON), or writes it
    /// to --out, for the node to present to its peers.
    Issue {
        /// The node's libp2p peer id (`12D3Koo…`).
        #[arg(long)]
        peer: String,
        /// `vehicle`, `depot` or `origin-cache`.
        #[arg(long)]
        role: proto::membership::MemberRole,
        /// Days the certificate holds, from now.
        #[arg(long, default_value_t = origin::fleet::DEFAULT_VALIDITY_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(origin::fleet::MAX_VALIDITY_DAYS)))]
        days: u32,
        /// Write the certificate here (replacing the file) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Throw PEER out of the fleet before its certificate expires: the revocation list gains
    /// it under a new version, which nodes fetch with their metadata.
    Revoke {
        /// The peer id.
        peer: String,
    },
    /// Print the signed revocation list (JSON), as the director serves it.
    Revocations,
    /// Print the fleet key's public half (hex) and key id (JSON): nodes trust it as
    /// `fleet_key`.
    Key,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the whole chain and every signature; exit 1 naming the first bad entry.
    Verify {
        /// The audit key's public half (hex), as an auditor got it from `origin keys`
        /// (default: this origin's own key).
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Print every entry (JSON lines): who did what, when: releases, assignments (which
    /// software for which vehicle), approvals and wave decisions.
    Export,
}

/// The repositories `origin root` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RootRepository {
    /// The image repository.
    Image,
    /// The director repository (every vehicle's copies the same root).
    Director,
}

impl RootRepository {
    /// Its name under the origin.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Director => "director",
        }
    }
}
