//! `origin`: keys, the image and director repositories, releases and their checks.
//!
//! Reads the command line ([`cli`]), hands each command to one call of the `origin` library (or
//! of the director's HTTP client), prints what it returns and maps a failure to the exit code.

mod cli;
mod who;

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use node::director_client::{ClientError, ClientTls, DirectorClient};
use origin::http::Listen;
use origin::keystore::NewKey;
use origin::storage::{Storage, StorageConfig};
use origin::{Actor, Origin, Released};
use proto::director_api::{ActionRequest, CampaignAction, CreateCampaign, RegisterVehicle};
use proto::tuf::signer::Signer as _;

use cli::{
    AuditCommand, CampaignCommand, Cli, Command, DirectorArgs, MemberCommand, OperatorCommand,
    VehicleCommand,
};

/// How long the CLI waits for the director.
const DIRECTOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        // The reader of standard output went away (`| head`): nothing more to say.
        Err(error) if node::stdout::is_closed_pipe(error.as_ref()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("origin: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    let offline_keys = match (cli.offline_keys.take(), cli.command.take_offline_keys()) {
        (Some(_), Some(_)) => {
            anyhow::bail!("--offline-keys is given twice, before and after the subcommand")
        }
        (before, after) => before.or(after),
    };
    if let Command::Init {
        storage: Some(url),
        storage_options,
        ..
    } = &cli.command
    {
        // Refused before anything is written when the store cannot be opened.
        let config = StorageConfig::from_flags(url, storage_options)?;
        Storage::open(&config, "--storage")?;
        origin::storage::record(&cli.dir, &config)?;
    }
    let origin = Origin::open(
        cli.dir,
        offline_keys,
        cli.now.unwrap_or_else(node::clock::now),
    )?;
    // Asked for only by the commands the audit log records.
    let actor_flag = cli.actor;
    let actor = move || -> anyhow::Result<Actor> {
        Ok(Actor::new(who::choose(who::seen(actor_flag.clone()))?)?)
    };
    match cli.command {
        Command::Keygen { out, kind } => {
            print_key(&origin::keys::create_pair(&out, kind)?.public_key())?
        }
        Command::Init { key_type, .. } => {
            origin::init(&origin, key_type)?;
            let dir = origin.dir.display();
            let storage = &origin.storage;
            node::say!("initialised {dir} (image and director repositories in {storage})")?;
        }
        Command::Release(args) => {
            let Released {
                blob,
                length,
                targets_version,
                compressed,
                deltas,
            } = args.release().sign(&origin, &actor()?)?;
            let (name, role) = (&args.name, &args.role);
            let compressed = match compressed {
                Some(c) => format!("  compressed {} bytes ({})", c.length, c.blake3),
                None => String::new(),
            };
            node::say!(
                "{blob}  {name}  {length} bytes  image {role} v{targets_version}{compressed}"
            )?;
            for (from, delta) in &deltas {
                node::say!(
                    "{}  delta from {from}  {} bytes",
                    delta.blake3,
                    delta.length
                )?;
            }
        }
        Command::Delegate {
            name,
            paths,
            key,
            key_type,
            terminating,
            ..
        } => {
            let key = new_key(&origin, "image", &name, key, key_type)?;
            let (version, key_id) =
                origin::admin::delegate(&origin, &actor()?, &name, &paths, &key, terminating)?;
            let paths = paths.join(", ");
            node::say!("image targets v{version} delegates {paths} to {name} (key {key_id})")?;
        }
        Command::Rotate {
            repository,
            role,
            new_key: file,
            key_type,
            ..
        } => {
            let key = new_key(&origin, &repository, &role, file, key_type)?;
            let version = origin::admin::rotate(&origin, &actor()?, &repository, &role, &key)?;
            node::say!("{repository} {role} key rotated: root v{version}")?;
        }
        Command::Assign {
            vin,
            ecus,
            priority,
        } => {
            let version = origin::director::assign(&origin, &actor()?, &vin, &ecus, priority)?;
            let ecus: Vec<String> = ecus
                .iter()
                .map(|ecu| format!("{} <- {}", ecu.serial, ecu.target))
                .collect();
            node::say!("director targets v{version} for {vin}: {}", ecus.join(", "))?;
        }
        Command::Timestamp => {
            for repository in origin::admin::refresh_timestamps(&origin)? {
                node::say!("{repository}: timestamp re-signed")?;
            }
        }
        Command::Verify => return Ok(print_problems(&origin::admin::verify(&origin)?)?),
        Command::Delta(args) => {
            let summary =
                origin::file_delta::build(&args.from, &args.to, &args.out, &args.options()?)?;
            node::say!("{summary}")?;
        }
        Command::Root {
            repository,
            version,
            out,
        } => {
            let repository = repository.name();
            let version = match version {
                Some(version) => version,
                None => origin
                    .latest_version(repository, "root")?
                    .with_context(|| format!("{} holds no root", origin.storage))?,
            };
            let root = origin.read_metadata(repository, &format!("{version}.root.json"))?;
            match out {
                Some(out) => origin::write_durably(&out, &root)
                    .with_context(|| format!("writing {}", out.display()))?,
                None => std::io::Write::write_all(&mut std::io::stdout(), &root)
                    .context("writing standard output")?,
            }
        }
        Command::MeshIdentity => {
            let dir = origin::mesh::node_dir(&origin);
            let keypair = node::identity::load_or_create(&dir)
                .with_context(|| format!("loading the identity in {}", dir.display()))?;
            node::say!("{}", keypair.public().to_peer_id())?;
        }
        Command::Keys => {
            for key in origin::admin::describe_keys(&origin)? {
                node::say!("{key}")?;
            }
        }
        Command::DirectorCert { names, days } => {
            origin::admin::director_cert(&origin, &actor()?, &names, days)?;
            let file = origin::tls::TlsFiles::of(&origin).director_cert;
            node::say!(
                "{}: valid for localhost and {}",
                file.display(),
                names.join(", ")
            )?;
        }
        Command::Serve {
            listen,
            tick_secs,
            tls_cert,
            tls_key,
            plain_http,
            oidc,
            rate,
            burst,
            mesh_listen,
            registry,
            registry_password_file,
            standby,
        } => {
            // The log first: finding the registry's password may already warn.
            install_log();
            let registry = registry_location(registry.as_deref(), registry_password_file)?;
            let how = match (&tls_cert, &tls_key) {
                _ if plain_http => Listen::PlainLoopback,
                (Some(cert), Some(key)) => Listen::Tls { cert, key },
                _ => Listen::OriginTls,
            };
            let bearer = oidc.as_deref().map(oidc_verifier).transpose()?;
            let limit = origin::http::RateLimit {
                per_sec: f64::from(rate),
                burst: f64::from(burst),
            };
            serve(
                origin,
                ServeArgs {
                    registry,
                    standby,
                    listen,
                    how,
                    bearer,
                    limit,
                    tick_secs,
                    mesh_listen,
                },
            )?;
        }
        Command::Campaign { director, command } => {
            campaign(&client(&origin, &director)?, command)?;
        }
        Command::Vehicle { director, command } => {
            vehicle(&client(&origin, &director)?, command)?;
        }
        Command::Operator { command } => operator(&origin, &actor, command)?,
        Command::Member { command } => member(&origin, &actor, command)?,
        Command::Audit { command } => audit(&origin, command)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A public key as `origin keygen` prints it: its key id and its key object.
fn print_key(public: &proto::tuf::Key) -> std::io::Result<()> {
    node::say!("{}  {}", public.id(), public.to_json())
}

/// The new key of `repository`'s `role`: the key file given, or one to make of `kind` (by
/// default the type the role's store makes).
fn new_key(
    origin: &Origin,
    repository: &str,
    role: &str,
    file: Option<std::path::PathBuf>,
    kind: Option<proto::tuf::keys::KeyType>,
) -> anyhow::Result<NewKey> {
    if let Some(file) = file {
        return Ok(NewKey::File(file));
    }
    let (store, _) = origin.key_store(repository, role)?;
    Ok(NewKey::Make(
        kind.unwrap_or_else(|| store.default_key_type()),
    ))
}

/// `origin verify`'s output: each problem, then a count on stderr and exit 1 if there are any.
fn print_problems(problems: &[String]) -> std::io::Result<ExitCode> {
    for problem in problems {
        node::say!("{problem}")?;
    }
    if problems.is_empty() {
        node::say!("ok: every repository verifies")?;
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("origin: {} problem(s)", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

/// The client of the director `args` name, trusting its CA and presenting the operator's
/// certificate.
fn client(origin: &Origin, args: &DirectorArgs) -> anyhow::Result<DirectorClient> {
    let own_ca = origin::tls::TlsFiles::of(origin).director_ca;
    let ca = args
        .director_ca
        .clone()
        .or_else(|| own_ca.exists().then_some(own_ca));
    let mut tls = ClientTls::roots(ca.as_deref())?;
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.with_identity(cert, key)?;
    }
    Ok(DirectorClient::new(&args.director, DIRECTOR_TIMEOUT, &tls)?)
}

/// The OpenID provider `file` (TOML: issuer, audience, roles_claim, name_claim, ca) configures,
/// its keys fetched now.
fn oidc_verifier(
    file: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<dyn origin::http::BearerVerifier>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let config: origin::oidc::OidcConfig =
        toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
    let verifier = origin::oidc::OidcVerifier::discover(config, DIRECTOR_TIMEOUT)
        .with_context(|| format!("the OpenID provider of {}", file.display()))?;
    Ok(std::sync::Arc::new(verifier))
}

/// The registry `origin serve --registry URL --registry-password-file FILE` names: the
/// embedded one without a URL; the URL's password, else the file's, PGPASSWORD's or
/// PGPASSFILE's.
fn registry_location(
    url: Option<&str>,
    password_file: Option<std::path::PathBuf>,
) -> anyhow::Result<origin::registry::Location> {
    let Some(url) = url else {
        return Ok(origin::registry::Location::Embedded);
    };
    let mut target = origin::registry::PostgresTarget::parse(url).context("--registry")?;
    target.resolve_password(password_file.as_deref(), &|key| std::env::var_os(key))?;
    Ok(origin::registry::Location::Postgres(Box::new(target)))
}

/// The log of `origin serve`, on stderr (`RUST_LOG`, default `info`). The subscriber is the
/// binary's to install: the library only emits events.
fn install_log() {
    node::logging::install("info");
}

/// What `origin serve` was asked for.
struct ServeArgs<'a> {
    registry: origin::registry::Location,
    standby: bool,
    listen: SocketAddr,
    how: Listen<'a>,
    bearer: Option<std::sync::Arc<dyn origin::http::BearerVerifier>>,
    limit: origin::http::RateLimit,
    tick_secs: u64,
    mesh_listen: Vec<libp2p::Multiaddr>,
}

/// `origin serve`.
fn serve(origin: Origin, args: ServeArgs<'_>) -> anyhow::Result<()> {
    if let origin::registry::Location::Postgres(target) = &args.registry {
        if target.password_in_url() {
            tracing::warn!(
                "the --registry URL holds the database password, which anyone who can list \
                 processes sees: give it in --registry-password-file, PGPASSWORD or PGPASSFILE"
            );
        }
        tracing::info!(database = %target.describe(), "registry in PostgreSQL");
    }
    if args.standby {
        node::say!("standby: waiting for the director that holds the registry to end")?;
    }
    let server = origin::http::Server::bind(
        origin.clone(),
        &args.registry,
        args.standby,
        args.listen,
        &args.how,
        args.bearer,
        args.limit,
    )?;
    node::say!("director listening on {}", server.url()?)?;
    // Held until the service stops.
    let _mesh = if args.mesh_listen.is_empty() {
        None
    } else {
        let mesh = server.block_on(origin::mesh::start(&origin, args.mesh_listen))?;
        for addr in &mesh.addrs {
            node::say!("mesh: serving the repositories on {addr}")?;
        }
        Some(mesh)
    };
    server.run(std::time::Duration::from_secs(args.tick_secs));
    Ok(())
}

/// `origin campaign`, through the director `client` reaches, as the operator its certificate
/// proves.
fn campaign(client: &DirectorClient, command: CampaignCommand) -> anyhow::Result<()> {
    let decide = |id: &proto::CampaignId, action, reason: String| {
        let reason = Some(reason);
        print_answer(client.decide(id, action, &ActionRequest { reason }))
    };
    let sign = |id: &proto::CampaignId, action, key: &std::path::Path| {
        let key = origin::operators::load_approval_key(key)?;
        print_answer(client.sign_approval(id, action, &key))
    };
    match command {
        CampaignCommand::Create { file } => {
            let spec = origin::operator_file::campaign(&file)?;
            print_answer(client.create_campaign(&CreateCampaign { spec }))
        }
        CampaignCommand::Approve { id, approval_key } => {
            sign(&id, CampaignAction::Approve, &approval_key)
        }
        CampaignCommand::Halt { id, reason } => decide(&id, CampaignAction::Halt, reason),
        CampaignCommand::Resume { id, approval_key } => {
            sign(&id, CampaignAction::Resume, &approval_key)
        }
        CampaignCommand::Abort { id, reason } => decide(&id, CampaignAction::Abort, reason),
        CampaignCommand::Status { id: None } => print_answer(client.campaigns()),
        CampaignCommand::Status { id: Some(id) } => {
            let all = client.campaigns().map_err(explain)?;
            let one = all
                .campaign(&id)
                .with_context(|| format!("there is no campaign {id}"))?;
            node::say!("{}", serde_json::to_string_pretty(one)?)?;
            Ok(())
        }
    }
}

/// `origin vehicle`, through the director `client` reaches.
fn vehicle(client: &DirectorClient, command: VehicleCommand) -> anyhow::Result<()> {
    match command {
        VehicleCommand::Register {
            file,
            membership_out,
        } => {
            let vehicle = origin::operator_file::vehicle(&file)?;
            if membership_out.is_some() && vehicle.peer.is_none() {
                anyhow::bail!(
                    "--membership-out: {} names no `peer`, so the director issues no membership \
                     certificate",
                    file.display()
                );
            }
            let answer = client
                .register(&RegisterVehicle { vehicle })
                .map_err(explain)?;
            if let (Some(out), Some(cert)) = (&membership_out, &answer.membership) {
                origin::write_durably(out, &cert.encode())
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            print_answer(Ok(answer))
        }
        VehicleCommand::List => print_answer(client.vehicles()),
    }
}

/// `origin operator`: the operator registry of this origin directory.
/// Who acts, asked only by the commands the audit log records.
type ActorOf<'a> = &'a dyn Fn() -> anyhow::Result<Actor>;

fn operator(origin: &Origin, actor: ActorOf<'_>, command: OperatorCommand) -> anyhow::Result<()> {
    use origin::operators;
    match command {
        OperatorCommand::Add {
            name,
            roles,
            days,
            out,
        } => {
            let roles = roles.into_iter().collect();
            let added = operators::add(origin, &actor()?, &name, &roles, days, &out)?;
            node::say!(
                "{name}: certificate {} (key {})",
                added.certificate.display(),
                added.key.display()
            )?;
            if let Some(key) = &added.approval_key {
                node::say!("{name}: approval key {}", key.display())?;
            }
            node::say!("sha256 {}", added.fingerprint)?;
        }
        OperatorCommand::Remove { name } => {
            operators::remove(origin, &actor()?, &name)?;
            node::say!("{name} removed: their certificates are refused from now on")?;
        }
        OperatorCommand::List => {
            let registry = operators::Operators::load(&operators::Operators::path(origin))?;
            node::say!("{}", serde_json::to_string_pretty(&registry)?)?;
        }
    }
    Ok(())
}

/// `origin member`: the fleet's membership, signed with this origin's fleet key (made first,
/// and said so, on an origin made before fleet membership).
fn member(origin: &Origin, actor: ActorOf<'_>, command: MemberCommand) -> anyhow::Result<()> {
    use origin::fleet;
    if fleet::ensure_key(origin)? {
        eprintln!(
            "origin: this origin had no fleet key; made {} (give nodes its public half: \
             `origin member key`)",
            fleet::key_path(origin).display()
        );
    }
    match command {
        MemberCommand::Issue {
            peer,
            role,
            days,
            out,
        } => {
            let cert = fleet::issue(origin, &actor()?, &peer, role, days)?;
            match out {
                Some(file) => {
                    origin::write_durably(&file, &cert.encode())
                        .with_context(|| format!("writing {}", file.display()))?;
                    let m = &cert.membership;
                    node::say!(
                        "{}: {} is a fleet {} until {}",
                        file.display(),
                        m.peer,
                        m.role,
                        proto::tuf::Time::from_unix(i64::try_from(m.expires)?)
                    )?;
                }
                None => node::say!("{}", serde_json::to_string_pretty(&cert)?)?,
            }
        }
        MemberCommand::Revoke { peer } => {
            let revoked = fleet::revoke(origin, &actor()?, &peer)?;
            let version = revoked.list.revocations.version;
            if revoked.already {
                eprintln!(
                    "origin: {peer} was revoked already; nothing changed (revocations v{version})"
                );
            } else {
                node::say!("{peer} revoked: revocations v{version}")?;
            }
        }
        MemberCommand::Revocations => {
            node::say!(
                "{}",
                serde_json::to_string_pretty(&fleet::revocations(origin)?)?
            )?;
        }
        MemberCommand::Key => {
            node::say!(
                "{}",
                serde_json::to_string_pretty(&fleet::describe_key(origin)?)?
            )?;
        }
    }
    Ok(())
}

/// `origin audit`.
fn audit(origin: &Origin, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { public_key } => {
            let key = public_key
                .as_deref()
                .map(origin::audit::parse_public_key)
                .transpose()?;
            let entries = origin::audit::verify_origin(origin, key.as_ref())?;
            let log = origin::audit::entries_of(origin)?;
            let decisions = origin::approvals::audit(&log)?;
            node::say!(
                "ok: {entries} entries, chain and signatures intact; {decisions} campaign \
                 start(s) and resume(s), each signed by {} approvers other than its creator",
                origin::approvals::NEEDED
            )?;
        }
        AuditCommand::Export => {
            for entry in origin::audit::entries_of(origin)? {
                node::say!("{entry}")?;
            }
        }
    }
    Ok(())
}

/// A failed request, as the operator reads it: an unreachable director is explained.
fn explain(error: ClientError) -> anyhow::Error {
    match error {
        ClientError::Unreachable { .. } => {
            anyhow::anyhow!("{error} (is `origin serve` running?)")
        }
        other => other.into(),
    }
}

/// The director's answer as the operator sees it: pretty JSON.
fn print_answer<T: serde::Serialize>(answer: Result<T, ClientError>) -> anyhow::Result<()> {
    let answer = answer.map_err(explain)?;
    node::say!("{}", serde_json::to_string_pretty(&answer)?)?;
    Ok(())
}
