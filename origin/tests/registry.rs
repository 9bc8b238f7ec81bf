//! The device registry, one suite for both implementations: the embedded sled database and
//! PostgreSQL, a real server this binary starts (`common/postgres_server.rs`: Debian's
//! `postgresql`, a temporary directory, a loopback port, stopped when the binary exits). Each
//! suite test runs once per implementation (`on_sled::…`, `on_postgres::…`); then what only
//! PostgreSQL has (migrations, passwords, TLS, a lost connection, the blocking client under a
//! tokio runtime), a campaign run by the director on each, and `origin serve --registry
//! postgres://…` end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use origin::registry::{
    EcuRecord, LastReport, Location, MIGRATIONS, PostgresRegistry, PostgresTarget, Registry,
    SledRegistry, VehicleRecord,
};
use proto::director_api::InstallOutcome;
use proto::{CampaignId, Vin};

#[path = "common/dir_remote.rs"]
mod dir_remote;
#[path = "common/postgres_server.rs"]
mod postgres_server;
use postgres_server::server;

#[path = "common/sim_fleet.rs"]
mod sim_fleet;

// ---------------------------------------------------------------------------------------------
// The two stores the suite runs on.

/// Where a registry keeps its data, so the suite can open it, open it again, and damage it
/// behind its back.
trait Store {
    /// A registry on the store (the one opened before, if any, dropped first).
    fn open(&self) -> Box<dyn Registry>;
    /// Stores `record` as vehicle `vin`'s, bypassing the registry (none is open).
    fn write_raw_vehicle(&self, vin: &str, record: &str);
    /// Stores `record` as campaign `id`'s, bypassing the registry (none is open).
    fn write_raw_campaign(&self, id: &str, record: &str);
}

struct SledStore {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SledStore {
    fn new(_name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry");
        Self { _dir: dir, path }
    }

    /// The database, opened again after a registry on it was dropped in this process: sled's
    /// background flusher of the instance just dropped may hold its file lock a moment longer.
    fn retry<T>(&self, mut open: impl FnMut() -> anyhow::Result<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match open() {
                Ok(opened) => return opened,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("sled still locked, retrying: {error:#}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => panic!("{error:#}"),
            }
        }
    }

    fn write_raw(&self, tree: &str, key: &str, value: &str) {
        let db = self.retry(|| Ok(sled::open(&self.path)?));
        db.open_tree(tree).unwrap().insert(key, value).unwrap();
        db.flush().unwrap();
    }
}

impl Store for SledStore {
    fn open(&self) -> Box<dyn Registry> {
        Box::new(self.retry(|| SledRegistry::open(&self.path)))
    }

    fn write_raw_vehicle(&self, vin: &str, record: &str) {
        self.write_raw("vehicles", vin, record);
    }

    fn write_raw_campaign(&self, id: &str, record: &str) {
        self.write_raw("campaigns", id, record);
    }
}

struct PgStore {
    database: String,
    target: PostgresTarget,
}

impl PgStore {
    fn new(name: &str) -> Self {
        let database = server().database(name);
        Self {
            target: target(&server().url(&database, "sslmode=disable")),
            database,
        }
    }

    fn execute(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) {
        server().admin(&self.database).execute(sql, params).unwrap();
    }
}

impl Store for PgStore {
    fn open(&self) -> Box<dyn Registry> {
        Box::new(PostgresRegistry::open(&self.target).unwrap())
    }

    fn write_raw_vehicle(&self, vin: &str, record: &str) {
        self.execute(
            "UPDATE vehicles SET record = $2::text::json WHERE vin = $1",
            &[&vin, &record],
        );
    }

    fn write_raw_campaign(&self, id: &str, record: &str) {
        self.execute(
            "INSERT INTO campaigns (id, record) VALUES ($1, $2::text::json)",
            &[&id, &record],
        );
    }
}

/// `url` with the test server's password file.
fn target(url: &str) -> PostgresTarget {
    let mut target = PostgresTarget::parse(url).unwrap();
    target
        .resolve_password(Some(&server().password_file), &no_env)
        .unwrap();
    target
}

/// Why opening `target` fails, with its causes.
fn open_error(target: &PostgresTarget) -> String {
    format!(
        "{:#}",
        anyhow::Error::new(PostgresRegistry::open(target).unwrap_err())
    )
}

fn no_env(_: &str) -> Option<OsString> {
    None
}

// ---------------------------------------------------------------------------------------------
// The suite.

macro_rules! suite {
    ($backend:ident, $store:path) => {
        mod $backend {
            #[test]
            fn vehicles_are_kept_and_listed_by_vin() {
                super::vehicles_are_kept_and_listed_by_vin(&$store("vehicles"));
            }
            #[test]
            fn a_vehicle_is_replaced_whole() {
                super::a_vehicle_is_replaced_whole(&$store("replaced"));
            }
            #[test]
            fn campaign_records_are_kept_byte_for_byte() {
                super::campaign_records_are_kept_byte_for_byte(&$store("campaigns"));
            }
            #[test]
            fn the_event_log_appends_reads_and_drops() {
                super::the_event_log_appends_reads_and_drops(&$store("events"));
            }
            #[test]
            fn damaged_records_are_named() {
                super::damaged_records_are_named(&$store("damaged"));
            }
            #[test]
            fn everything_survives_a_reopen() {
                super::everything_survives_a_reopen(&$store("reopen"));
            }
            #[test]
            fn a_registered_vehicle_reads_nothing_assigned_and_keeps_its_assignment() {
                super::a_registered_vehicle_reads_nothing_assigned_and_keeps_its_assignment(
                    &$store("unassigned"),
                );
            }
        }
    };
}

suite!(on_sled, super::SledStore::new);
suite!(on_postgres, super::PgStore::new);

fn key(seed: u8) -> String {
    hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .verifying_key()
            .as_bytes(),
    )
}

fn vehicle(vin: &str) -> VehicleRecord {
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

fn vin(text: &str) -> Vin {
    text.parse().unwrap()
}

fn campaign(text: &str) -> CampaignId {
    text.parse().unwrap()
}

fn vins(registry: &dyn Registry) -> Vec<String> {
    registry
        .vehicles()
        .unwrap()
        .into_iter()
        .map(|v| v.vin.to_string())
        .collect()
}

fn vehicles_are_kept_and_listed_by_vin(store: &dyn Store) {
    let registry = store.open();
    assert!(registry.vehicles().unwrap().is_empty());
    for v in ["VIN-2", "VIN-10", "VIN-1", "vin-0", "VIN-A"] {
        registry.put_vehicle(&vehicle(v)).unwrap();
    }
    // Byte order, whatever the database's collation.
    assert_eq!(
        vins(registry.as_ref()),
        ["VIN-1", "VIN-10", "VIN-2", "VIN-A", "vin-0"]
    );
    assert_eq!(
        registry.vehicle(&vin("VIN-10")).unwrap(),
        Some(vehicle("VIN-10"))
    );
    assert_eq!(registry.vehicle(&vin("VIN-9")).unwrap(), None);
}

fn a_vehicle_is_replaced_whole(store: &dyn Store) {
    let registry = store.open();
    registry.put_vehicle(&vehicle("VIN-1")).unwrap();
    let mut moved = vehicle("VIN-1");
    moved.region = "eu-süd".into();
    moved.home_depot = "depot-9".into();
    moved.peer = Some("12D3KooWPeer".into());
    moved.ecus[0].installed = Some("gw/2.0.bin".into());
    // What a vehicle reports is kept as it said it, even a NUL (which PostgreSQL's jsonb
    // would refuse) and a string JSON must escape.
    moved.last_report = Some(LastReport {
        at: u64::MAX,
        nonce: "director-v3@1795000000".into(),
        manifest: "ab".repeat(32),
        outcome: Some(InstallOutcome::RolledBack),
        reason: "health check \u{0} \"timed out\" \\ ✗".into(),
    });
    registry.put_vehicle(&moved).unwrap();
    assert_eq!(
        registry.vehicle(&vin("VIN-1")).unwrap(),
        Some(moved.clone())
    );
    assert_eq!(registry.vehicles().unwrap(), [moved]);
}

fn campaign_records_are_kept_byte_for_byte(store: &dyn Store) {
    let registry = store.open();
    assert!(registry.campaigns().unwrap().is_empty());
    let odd = br#"{ "x" : 1,"y":[1.50, 2e3] ,"x":2, "nul":"a\u0000b" }"#;
    registry.put_campaign(&campaign("c2"), b"{}").unwrap();
    registry.put_campaign(&campaign("c10"), b"[]").unwrap();
    registry.put_campaign(&campaign("c1"), odd).unwrap();
    assert_eq!(
        registry.campaigns().unwrap(),
        [
            (campaign("c1"), odd.to_vec()),
            (campaign("c10"), b"[]".to_vec()),
            (campaign("c2"), b"{}".to_vec()),
        ]
    );
    // A snapshot replaces the record; one of a large campaign (members: tens of MB at 200K
    // vehicles) is kept whole.
    let members: Vec<String> = (0..100_000).map(|i| format!("VIN{i:07}")).collect();
    let large = serde_json::to_vec(&serde_json::json!({ "members": members })).unwrap();
    assert!(large.len() > 1_000_000);
    registry.put_campaign(&campaign("c1"), &large).unwrap();
    let stored = registry.campaigns().unwrap();
    assert_eq!(stored[0], (campaign("c1"), large));
    assert_eq!(stored.len(), 3);
}

fn the_event_log_appends_reads_and_drops(store: &dyn Store) {
    let registry = store.open();
    let c1 = campaign("c1");
    let c10 = campaign("c10");
    assert!(registry.campaign_events(&c1).unwrap().is_empty());
    for seq in [3, 1, 2, 1 << 40] {
        registry
            .log_campaign_event(&c1, seq, format!("{{\"n\":{seq}}}").as_bytes())
            .unwrap();
    }
    registry.log_campaign_event(&c10, 1, b"{\"c\":10}").unwrap();
    let events = |id: &CampaignId| -> Vec<(u64, String)> {
        registry
            .campaign_events(id)
            .unwrap()
            .into_iter()
            .map(|(seq, bytes)| (seq, String::from_utf8(bytes).unwrap()))
            .collect()
    };
    let logged = |seqs: &[u64]| -> Vec<(u64, String)> {
        seqs.iter()
            .map(|&s| (s, format!("{{\"n\":{s}}}")))
            .collect()
    };
    // Oldest first, and one campaign's log is not another's whose id it starts.
    assert_eq!(events(&c1), logged(&[1, 2, 3, 1 << 40]));
    assert_eq!(events(&c10), [(1, "{\"c\":10}".to_owned())]);
    // Logging a number again replaces its event.
    registry
        .log_campaign_event(&c1, 2, b"{\"again\":2}")
        .unwrap();
    assert_eq!(events(&c1)[1], (2, "{\"again\":2}".to_owned()));
    // A snapshot drops what it holds; other campaigns keep theirs.
    registry.drop_campaign_events(&c1, 2).unwrap();
    assert_eq!(events(&c1), logged(&[3, 1 << 40]));
    registry.drop_campaign_events(&c1, u64::MAX).unwrap();
    assert!(events(&c1).is_empty());
    assert_eq!(events(&c10).len(), 1);
    registry
        .drop_campaign_events(&campaign("unknown"), 5)
        .unwrap();
}

fn damaged_records_are_named(store: &dyn Store) {
    let registry = store.open();
    registry.put_vehicle(&vehicle("VIN-1")).unwrap();
    registry.put_vehicle(&vehicle("VIN-2")).unwrap();
    drop(registry);
    store.write_raw_vehicle("VIN-2", r#"{"vin":"VIN-2","ecus":"many"}"#);
    let registry = store.open();
    assert_eq!(
        registry.vehicle(&vin("VIN-1")).unwrap(),
        Some(vehicle("VIN-1"))
    );
    let error = format!("{:#}", registry.vehicle(&vin("VIN-2")).unwrap_err());
    assert!(error.contains("vehicle VIN-2 is damaged"), "{error}");
    let error = format!("{:#}", registry.vehicles().unwrap_err());
    assert!(error.contains("vehicle VIN-2 is damaged"), "{error}");
    drop(registry);
    store.write_raw_campaign("not a campaign id", "{}");
    let registry = store.open();
    let error = format!("{:#}", registry.campaigns().unwrap_err());
    assert!(error.contains("damaged id"), "{error}");
    assert!(error.contains("not a campaign id"), "{error}");
}

fn everything_survives_a_reopen(store: &dyn Store) {
    let registry = store.open();
    let mut reported = vehicle("VIN-2");
    reported.last_report = Some(LastReport {
        at: 1_795_000_000,
        nonce: "director-v1@1795000000".into(),
        manifest: "cd".repeat(32),
        outcome: Some(InstallOutcome::Committed),
        reason: String::new(),
    });
    registry.put_vehicle(&reported).unwrap();
    registry.put_vehicle(&vehicle("VIN-1")).unwrap();
    registry
        .put_campaign(&campaign("c1"), b"{\"x\":1}")
        .unwrap();
    registry
        .log_campaign_event(&campaign("c1"), 7, b"{\"e\":7}")
        .unwrap();
    drop(registry);
    let registry = store.open();
    assert_eq!(registry.vehicles().unwrap(), [vehicle("VIN-1"), reported]);
    assert_eq!(
        registry.campaigns().unwrap(),
        [(campaign("c1"), b"{\"x\":1}".to_vec())]
    );
    assert_eq!(
        registry.campaign_events(&campaign("c1")).unwrap(),
        [(7, b"{\"e\":7}".to_vec())]
    );
}

/// What vehicle `i` of `sim_fleet` (one gateway ECU running release 1) finds in its director
/// repository at `now`, checked as its agent checks it (Uptane's full verification from both
/// first roots): the director targets version and the images approved for it.
fn as_vehicle(origin: &origin::Origin, i: usize, now: u64) -> Result<(u64, Vec<String>), String> {
    use dir_remote::DirRemote;
    use proto::tuf::{BlockingUpdater, Limits, MemoryStore, Role as _, Time};
    let updater = |repository: &str, root: &str| {
        let mut store = MemoryStore::default();
        let root = std::fs::read(origin.dir.join(root)).unwrap();
        store.0.insert("root".into(), root);
        let now = Time::from_unix(i64::try_from(now).unwrap());
        let remote = DirRemote(origin.dir.join(repository));
        BlockingUpdater::new(remote, store, now, Limits::default()).unwrap()
    };
    let vin = sim_fleet::vin(i);
    let mut director = updater(
        &origin::director::vehicle_repository(&vin),
        "director/metadata/1.root.json",
    );
    let mut image = updater("image", "image/metadata/1.root.json");
    let ecus = std::collections::BTreeMap::from([(
        format!("GW-{vin}"),
        proto::uptane::EcuState {
            hardware_id: "gateway-v1".into(),
            installed_release_counter: 1,
        },
    )]);
    let approved = proto::uptane::verify_full(&mut director, &mut image, &ecus)
        .map_err(|error| error.to_string())?;
    let version = director
        .trusted()
        .targets("targets")
        .unwrap()
        .signed
        .version();
    Ok((
        version,
        approved.iter().map(|a| a.target().to_owned()).collect(),
    ))
}

/// A vehicle is registered with a director repository of its own: empty director targets,
/// snapshot and timestamp, which its agent verifies as "nothing to install". Registering it
/// again signs nothing, an assignment included; a vehicle in the registry without a repository
/// (registered before the director signed one at registration) gets its empty one from the
/// director's background work after a start, and `origin timestamp` keeps it fresh with the
/// others. Each signing is in the audit log.
fn a_registered_vehicle_reads_nothing_assigned_and_keeps_its_assignment(store: &dyn Store) {
    use origin::service::Director;
    use sim_fleet::{START, vehicle_record};
    let work = tempfile::tempdir().unwrap();
    let origin = sim_fleet::origin_with_releases(work.path());
    let audited = || origin::audit::entries(&origin::audit::log_path(&origin)).unwrap();
    let mut director = Director::with_registry(origin.clone(), store.open()).unwrap();
    assert_eq!(director.work_due(), 0);

    director
        .register(&vehicle_record(0, 1, 1), "ops", START)
        .unwrap();
    assert_eq!(as_vehicle(&origin, 0, START + 60), Ok((1, Vec::new())));
    let entry = audited().pop().unwrap();
    assert_eq!(entry["action"], "vehicle register", "{entry}");
    assert_eq!(entry["detail"]["director_targets_version"], 1, "{entry}");

    // Again: nothing signed, nothing said of the targets.
    director
        .register(&vehicle_record(0, 1, 1), "ops", START + 10)
        .unwrap();
    assert_eq!(
        origin::director::targets_version(&origin, &sim_fleet::vin(0)),
        1
    );
    let entry = audited().pop().unwrap();
    assert_eq!(entry["action"], "vehicle register", "{entry}");
    assert!(
        entry["detail"].get("director_targets_version").is_none(),
        "{entry}"
    );

    // Assigned, then registered again: the assignment stands.
    let gateway = origin::director::Assignment {
        serial: format!("GW-{}", sim_fleet::vin(0)).parse().unwrap(),
        hardware_id: "gateway-v1".into(),
        target: "gw/2.0.bin".into(),
    };
    let actor = origin::Actor::new("ops").unwrap();
    let priority = proto::custom::Priority::Fix;
    origin::director::assign(&origin, &actor, &sim_fleet::vin(0), &[gateway], priority).unwrap();
    director
        .register(&vehicle_record(0, 1, 1), "ops", START + 20)
        .unwrap();
    let assigned = Ok((2, vec!["gw/2.0.bin".to_owned()]));
    assert_eq!(as_vehicle(&origin, 0, START + 60), assigned);

    // Registered before the director signed at registration: in the registry, no repository.
    director
        .registry()
        .put_vehicle(&vehicle_record(1, 1, 1))
        .unwrap();
    drop(director);
    let missing = as_vehicle(&origin, 1, START + 60).unwrap_err();
    assert!(missing.contains("timestamp.json"), "{missing}");
    let mut director = Director::with_registry(origin.clone(), store.open()).unwrap();
    assert_eq!(director.work_due(), 1);
    assert_eq!(director.work_until_idle(START + 30).unwrap(), 1);
    assert_eq!(director.work_due(), 0);
    assert_eq!(as_vehicle(&origin, 1, START + 60), Ok((1, Vec::new())));
    assert_eq!(as_vehicle(&origin, 0, START + 60), assigned);
    let entry = audited().pop().unwrap();
    assert_eq!(entry["actor"], origin::service::DIRECTOR, "{entry}");
    assert_eq!(entry["action"], "vehicle repositories", "{entry}");
    let signed = &entry["detail"]["vehicles"];
    assert_eq!(
        signed,
        &serde_json::json!([{"vin": sim_fleet::vin(1), "director_targets_version": 1}]),
        "{entry}"
    );
    // Started again, nothing is due.
    drop(director);
    let mut director = Director::with_registry(origin.clone(), store.open()).unwrap();
    assert_eq!(director.work_due(), 0);

    // Its timestamp expires after a day; `origin timestamp` re-signs it with the others.
    let day = 86_400;
    assert!(as_vehicle(&origin, 1, START + day + 60).is_err());
    let mut hourly = origin.clone();
    hourly.now = proto::tuf::Time::from_unix(i64::try_from(START + day - 3600).unwrap());
    let refreshed = origin::admin::refresh_timestamps(&hourly).unwrap();
    for i in 0..2 {
        let repository = origin::director::vehicle_repository(&sim_fleet::vin(i));
        assert!(
            refreshed.contains(&repository),
            "{repository}: {refreshed:?}"
        );
    }
    assert_eq!(
        as_vehicle(&origin, 1, START + day + 60),
        Ok((1, Vec::new()))
    );

    // A repository the director will not sign on (its root is not the director's): the
    // registration is refused, saying so, and nothing is registered.
    let forged = origin
        .dir
        .join(origin::director::vehicle_repository(&sim_fleet::vin(2)))
        .join("metadata");
    std::fs::create_dir_all(&forged).unwrap();
    std::fs::write(forged.join("1.root.json"), b"{}").unwrap();
    let refused = director
        .register(&vehicle_record(2, 1, 1), "ops", START + 40)
        .unwrap_err();
    assert!(
        matches!(
            refused.downcast_ref(),
            Some(origin::service::EnrollError::Unsigned { .. })
        ),
        "{refused:#}"
    );
    assert!(
        format!("{refused:#}").contains("1.root.json"),
        "{refused:#}"
    );
    assert!(
        director
            .registry()
            .vehicle(&sim_fleet::vin(2))
            .unwrap()
            .is_none()
    );
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only.

/// The schema is applied once, even by two directors opening at once, and recorded; a database
/// migrated by a newer origin, or by another build's migration, is refused by name.
#[test]
fn postgres_migrations_run_once_and_a_newer_schema_is_refused() {
    let store = PgStore::new("migrations");
    let opening: Vec<_> = (0..3)
        .map(|_| {
            let target = store.target.clone();
            std::thread::spawn(move || PostgresRegistry::open(&target).map(drop))
        })
        .collect();
    for opening in opening {
        opening.join().unwrap().unwrap();
    }
    let mut admin = server().admin(&store.database);
    let recorded: Vec<(i32, String, String)> = admin
        .query(
            "SELECT version, name, sha256 FROM registry_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let expected: Vec<(i32, String, String)> = MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_owned(), m.digest()))
        .collect();
    assert_eq!(recorded, expected);
    // Opening again applies nothing and keeps the data.
    store.open().put_vehicle(&vehicle("VIN-1")).unwrap();
    assert_eq!(vins(store.open().as_ref()), ["VIN-1"]);

    let newer = MIGRATIONS.last().unwrap().version + 1;
    admin
        .execute(
            "INSERT INTO registry_migrations (version, name, sha256) VALUES ($1, 'later', 'x')",
            &[&newer],
        )
        .unwrap();
    let error = PostgresRegistry::open(&store.target)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!(
            "schema version {newer}, newer than this origin knows"
        )),
        "{error}"
    );
    assert!(
        error.contains(&server().url(&store.database, "")),
        "{error}"
    );
    admin
        .execute(
            "DELETE FROM registry_migrations WHERE version = $1",
            &[&newer],
        )
        .unwrap();
    admin
        .execute("UPDATE registry_migrations SET sha256 = 'edited'", &[])
        .unwrap();
    let error = PostgresRegistry::open(&store.target)
        .unwrap_err()
        .to_string();
    assert!(error.contains("another build"), "{error}");
}

/// One director per database: a second one is refused, naming the first's session, until
/// the first lets go.
#[test]
fn postgres_a_second_director_is_refused() {
    let store = PgStore::new("second");
    let first = store.open();
    let error = PostgresRegistry::open(&store.target)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("another director has the registry database"),
        "{error}"
    );
    assert!(error.contains("origin-director"), "{error}");
    drop(first);
    store.open().put_vehicle(&vehicle("VIN-1")).unwrap();
}

/// A session the server cut (a restart, a failover) is made again, and the call that found it
/// cut goes through.
#[test]
fn postgres_a_lost_session_is_made_again() {
    let store = PgStore::new("lost_session");
    let registry = store.open();
    registry.put_vehicle(&vehicle("VIN-1")).unwrap();
    let cut = server()
        .admin("postgres")
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&store.database],
        )
        .unwrap();
    assert!(!cut.is_empty());
    // The server closes the sessions as it ends them; give it the moment that takes.
    std::thread::sleep(Duration::from_millis(200));
    registry.put_vehicle(&vehicle("VIN-2")).unwrap();
    assert_eq!(vins(registry.as_ref()), ["VIN-1", "VIN-2"]);
}

/// The password comes from the URL, a file, PGPASSWORD or a passfile; a wrong one is refused
/// by the server, and no error shows it.
#[test]
fn postgres_passwords_come_from_where_libpq_looks_and_are_never_shown() {
    let database = server().database("passwords");
    let url = server().url(&database, "sslmode=disable");
    let password = &server().password;
    let open = |target: &PostgresTarget| PostgresRegistry::open(target).map(drop);

    // In the URL.
    let with_password = url.replacen("director@", &format!("director:{password}@"), 1);
    let target = PostgresTarget::parse(&with_password).unwrap();
    assert!(target.password_in_url());
    open(&target).unwrap();
    // PGPASSWORD.
    let mut target = PostgresTarget::parse(&url).unwrap();
    let env = |key: &str| (key == "PGPASSWORD").then(|| OsString::from(password));
    target.resolve_password(None, &env).unwrap();
    open(&target).unwrap();
    // A passfile (PGPASSFILE), for this host, port, database and user.
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "127.0.0.1:{}:{database}:director:{password}\n",
            server().port
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut target = PostgresTarget::parse(&url).unwrap();
    let env = |key: &str| (key == "PGPASSFILE").then(|| passfile.clone().into_os_string());
    target.resolve_password(None, &env).unwrap();
    open(&target).unwrap();

    // A wrong one, and none.
    let wrong = "not-the-password-4711";
    let file = dir.path().join("wrong");
    std::fs::write(&file, wrong).unwrap();
    let mut target = PostgresTarget::parse(&url).unwrap();
    target.resolve_password(Some(&file), &no_env).unwrap();
    let error = open_error(&target);
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(error.contains(&format!("director@127.0.0.1:{}/{database}", server().port)));
    assert!(error.contains(&file.display().to_string()), "{error}");
    assert!(!error.contains(wrong), "{error}");
    let wrong_url = url.replacen("director@", &format!("director:{wrong}@"), 1);
    let error = open_error(&PostgresTarget::parse(&wrong_url).unwrap());
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(!error.contains(wrong), "{error}");
    let mut target = PostgresTarget::parse(&url).unwrap();
    target.resolve_password(None, &no_env).unwrap();
    let error = open_error(&target);
    assert!(error.contains("password none"), "{error}");
}

/// `sslmode=require` speaks TLS, checked against `sslrootcert`; TLS is never unchecked: without
/// the database's CA, `require` and the default `prefer` are refused.
#[test]
fn postgres_tls_is_used_and_checked() {
    let database = server().database("tls");
    let ca = server().ca.display().to_string();
    let registry = PostgresRegistry::open(&target(
        &server().url(&database, &format!("sslmode=require&sslrootcert={ca}")),
    ))
    .unwrap();
    registry.put_vehicle(&vehicle("VIN-1")).unwrap();
    let encrypted: Vec<bool> = server()
        .admin("postgres")
        .query(
            "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE datname = $1",
            &[&database],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(encrypted, [true]);
    drop(registry);
    // `localhost` is in the certificate too; verify-full is require.
    let by_name = server()
        .url(&database, &format!("sslmode=verify-full&sslrootcert={ca}"))
        .replace("127.0.0.1", "localhost");
    PostgresRegistry::open(&target(&by_name)).unwrap();
    for params in ["sslmode=require", ""] {
        let error = open_error(&target(&server().url(&database, params)));
        assert!(
            error.contains("TLS") && error.contains("certificate"),
            "{params}: {error}"
        );
    }
}

/// The blocking client runs on tokio's blocking threads and on plain threads, and a registry
/// dropped inside an async task (a director dropped with its service's runtime) does not
/// panic.
#[test]
fn postgres_runs_on_blocking_threads_and_drops_inside_a_runtime() {
    let store = PgStore::new("runtime");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target = store.target.clone();
    let registry = runtime
        .block_on(runtime.spawn_blocking(move || {
            let registry = PostgresRegistry::open(&target).unwrap();
            registry.put_vehicle(&vehicle("VIN-1")).unwrap();
            registry
        }))
        .unwrap();
    let registry = std::thread::spawn(move || {
        registry.put_vehicle(&vehicle("VIN-2")).unwrap();
        registry
    })
    .join()
    .unwrap();
    runtime
        .block_on(runtime.spawn(async move { drop(registry) }))
        .unwrap();
    assert_eq!(vins(store.open().as_ref()), ["VIN-1", "VIN-2"]);
}

// ---------------------------------------------------------------------------------------------
// The director on each.

/// A campaign of 24 vehicles, every vehicle of its open waves reporting, run by the director on
/// each registry, ends the same, and reads back the same after a restart.
#[test]
fn a_campaign_runs_the_same_on_sled_and_postgres() {
    use sim_fleet::{START, approve_as_two, gateway_campaign, manifest, vehicle_record};
    const VEHICLES: usize = 24;
    const ID: &str = "same";
    let store = PgStore::new("director");
    let run = |location: &Location, dir: &Path| {
        let origin = sim_fleet::origin_with_releases(dir);
        let mut director = origin::service::Director::open_at(origin.clone(), location).unwrap();
        director.set_snapshot_min_events(5);
        for i in 0..VEHICLES {
            director
                .register(&vehicle_record(i, 3, 2), "ops", START)
                .unwrap();
        }
        let spec = gateway_campaign(ID, &[10.0, 50.0, 100.0], 0.5, 0.5, 1);
        director.create(spec, "alice", START).unwrap();
        approve_as_two(&mut director, ID, START);
        let mut now = START + 60;
        let mut reported = [false; VEHICLES];
        loop {
            // What the decisions made due is signed in the background (`origin::jobs`).
            director.work_until_idle(now).unwrap();
            let due: Vec<(usize, u64)> = {
                let record = &director.campaigns()[ID];
                (0..VEHICLES)
                    .filter(|&i| !reported[i])
                    .filter_map(|i| Some((i, *record.assigned.get(&sim_fleet::vin(i))?)))
                    .collect()
            };
            if due.is_empty() {
                if director.tick(now).unwrap().is_empty() {
                    break;
                }
                continue;
            }
            for (i, version) in due {
                let (installed, outcome) = if i % 11 == 5 {
                    ("gw/1.0.bin", "rolled_back")
                } else {
                    ("gw/2.0.bin", "committed")
                };
                let bytes = serde_json::json!({ "yard-wifi": 1000 + i });
                let signed = manifest(i, version, now, installed, outcome, bytes);
                director
                    .accept_manifest(&sim_fleet::vin(i), &signed, now)
                    .unwrap();
                reported[i] = true;
                now += 1;
            }
        }
        let record = director.campaigns()[ID].clone();
        drop(director);
        let reopened = origin::service::Director::open_at(origin, location).unwrap();
        let again = reopened.campaigns()[ID].clone();
        assert_eq!(again.campaign, record.campaign);
        assert_eq!(again.bytes, record.bytes);
        assert_eq!(again.decisions, record.decisions);
        let vehicles = reopened.registry().vehicles().unwrap();
        assert_eq!(vehicles.len(), VEHICLES);
        (record, vehicles)
    };
    let work = tempfile::tempdir().unwrap();
    let (on_sled, sled_vehicles) = run(&Location::Embedded, &work.path().join("sled"));
    let (on_postgres, postgres_vehicles) = run(
        &Location::Postgres(Box::new(store.target.clone())),
        &work.path().join("postgres"),
    );
    // The gates decided: waves opened, and a rollback in a region's small second wave halted
    // the campaign (the same on both).
    let state = on_sled.campaign.as_ref().unwrap().state();
    assert!(
        matches!(state, origin::campaign::State::Halted { .. }),
        "{state:?}"
    );
    assert!(on_sled.decisions.len() > 1, "{:?}", on_sled.decisions);
    assert_eq!(on_postgres.campaign, on_sled.campaign);
    assert_eq!(on_postgres.bytes, on_sled.bytes);
    assert_eq!(on_postgres.decisions, on_sled.decisions);
    assert_eq!(postgres_vehicles, sled_vehicles);
    // The embedded registry was not touched by the run on PostgreSQL.
    assert!(!work.path().join("postgres/origin/registry").exists());
}

// ---------------------------------------------------------------------------------------------
// `origin serve --registry postgres://…` end to end.

/// A running `origin serve`, killed when dropped.
struct Serving {
    child: std::process::Child,
    url: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn origin_command(dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_origin"));
    command
        .arg("--dir")
        .arg(dir.join("origin"))
        .arg("--offline-keys")
        .arg(dir.join("offline"));
    command
}

/// Runs `origin ARGS` to the end; its stdout, or a panic with its stderr.
fn origin_ok(dir: &Path, args: &[&str]) -> String {
    let out = origin_command(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "origin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `origin serve` with `args` (and `env`), once it listens; its stderr goes to `log`.
fn serve(dir: &Path, args: &[&str], env: &[(&str, &Path)], log: &Path) -> Serving {
    use std::io::BufRead;
    let mut command = origin_command(dir);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--tick-secs", "1"])
        .args(args)
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(url) = line.trim().strip_prefix("director listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "origin serve did not start: {line}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    Serving {
        url: url.to_owned(),
        child,
    }
}

/// `origin vehicle ARGS` through `serving`, as operator `who`.
fn vehicle_cli(dir: &Path, serving: &Serving, who: &str, args: &[&str]) -> String {
    let ops = dir.join("ops");
    let cert = ops.join(format!("{who}.pem"));
    let key = ops.join(format!("{who}.key"));
    let mut all = vec!["vehicle"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--director", &serving.url]);
    all.extend_from_slice(&["--cert", cert.to_str().unwrap()]);
    all.extend_from_slice(&["--key", key.to_str().unwrap()]);
    origin_ok(dir, &all)
}

/// A vehicle registered over HTTP with the director on PostgreSQL is still there after a
/// restart (the password from a file, then from PGPASSFILE); nothing is written to the
/// embedded registry; a wrong password stops the start with an error that does not show it.
#[test]
fn serve_keeps_its_registry_in_postgres_across_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    origin_ok(dir, &["init"]);
    let ops = dir.join("ops");
    for (name, role) in [("provisioning", "provisioner"), ("dave", "viewer")] {
        origin_ok(
            dir,
            &[
                "operator",
                "add",
                name,
                "--role",
                role,
                "--out",
                ops.to_str().unwrap(),
            ],
        );
    }
    let database = server().database("serve");
    let url = server().url(&database, "sslmode=disable");
    let password_file = server().password_file.display().to_string();
    let registration = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/vehicle-registration.toml")
        .display()
        .to_string();
    let vin = "WDB9634031L123456";

    let serving = serve(
        dir,
        &[
            "--registry",
            &url,
            "--registry-password-file",
            &password_file,
        ],
        &[],
        &dir.join("serve-1.log"),
    );
    vehicle_cli(
        dir,
        &serving,
        "provisioning",
        &["register", "--file", &registration],
    );
    assert!(vehicle_cli(dir, &serving, "dave", &["list"]).contains(vin));
    drop(serving);
    assert!(!dir.join("origin/registry").exists());
    let stored: Vec<String> = server()
        .admin(&database)
        .query("SELECT vin FROM vehicles", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(stored, [vin]);

    // Restarted, the password from PGPASSFILE this time.
    let passfile = dir.join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "127.0.0.1:{}:*:director:{}\n",
            server().port,
            server().password
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let serving = serve(
        dir,
        &["--registry", &url],
        &[("PGPASSFILE", &passfile)],
        &dir.join("serve-2.log"),
    );
    let listed = vehicle_cli(dir, &serving, "dave", &["list"]);
    assert!(listed.contains(vin), "{listed}");
    // A second director on the same database is refused while this one runs.
    let out = origin_command(dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--registry", &url])
        .args(["--registry-password-file", &password_file])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("another director"), "{stderr}");
    drop(serving);

    // A wrong password: the service does not start, and says why without showing it.
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "wrong-password-4711\n").unwrap();
    let out = origin_command(dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--registry", &url])
        .args(["--registry-password-file", wrong.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(stderr.contains(&database), "{stderr}");
    assert!(!stderr.contains("wrong-password-4711"), "{stderr}");
    // Not a URL: refused, pointing at the embedded default.
    let out = origin_command(dir)
        .args(["serve", "--registry", "/var/lib/registry"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("postgres://"), "{stderr}");
}
