//! The registry in PostgreSQL: what a fleet run by several director processes, or backed up
//! and queried by a database team, keeps it in.
//!
//! The schema is the SQL files in `origin/migrations/`, built into the binary ([`MIGRATIONS`]):
//! each is applied once, in order, when the registry is opened, inside one transaction that
//! holds an advisory lock (two directors starting at once migrate once), and recorded in
//! `registry_migrations` with its SHA-256. A database whose recorded schema is newer than the
//! binary's, or was migrated by a different file under the same number, is refused.
//!
//! Records are kept in `json` columns, not `jsonb`: `json` gives back the very bytes the
//! director wrote and accepts every string JSON can hold (`jsonb` refuses `\u0000`, which a
//! vehicle's reported rollback reason may carry). Keys are `COLLATE "C"`, so every listing is in
//! byte order, as the embedded registry lists them. A vehicle's region, type and home depot are
//! also columns, for queries and indexes; the record is what the director reads.
//!
//! One director has a database open at a time, as sled's file lock allows one per directory:
//! its session holds an advisory lock, and a second director is refused (after a few seconds'
//! wait for a restarting one to go) until replicas share a registry. The lock is a session's, so
//! the registry needs a direct connection or a session-mode pooler, not a transaction-mode one.
//!
//! Every write is one statement, committed when it returns (durable: if the server's
//! `synchronous_commit` is `off`, the session turns it `on`). The client is the synchronous
//! `postgres` crate, which drives a small runtime of its own: it must be called from plain
//! threads or tokio's blocking threads (the HTTP service reaches the director through
//! `spawn_blocking`), never from a task on an async worker. A connection that was lost (a
//! database restart, a failover) is made again and the statement run once more: every write
//! replaces what it writes, so running it twice is running it once.

use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use postgres::{Client, Statement};
use proto::{CampaignId, Vin};
use sha2::Digest;

use super::database_url::PostgresTarget;
use super::{Registry, VehicleRecord};

/// One step of the registry's schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number: migrations are applied in this order, each once.
    pub version: i32,
    /// Its file's name, without `.sql`.
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
}

impl Migration {
    /// SHA-256 of its SQL, hex: recorded when it is applied, compared at every open.
    pub fn digest(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.sql.as_bytes()))
    }
}

/// The schema, oldest first: the files in `origin/migrations/`. A released migration never
/// changes; a change to the schema is a new file.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "0001_registry",
    sql: include_str!("../../migrations/0001_registry.sql"),
}];

/// The advisory lock migrations hold (`depotmes` in ASCII): any number would do, as long as
/// every director uses the same.
const MIGRATION_LOCK: i64 = 0x6465_706f_746d_6573;

/// The advisory lock a director's session holds while it has the registry open (`depotdir`):
/// one director acts on a database at a time, as sled's file lock gives one per directory; a
/// standby ([`PostgresRegistry::open_standby`]) waits for it and takes over when the session
/// holding it ends (its process killed, its host gone). A director whose session is lost gets
/// the lock back only if no standby took it: otherwise each of its registry calls fails from
/// then on, so it can neither store nor read (nor sign what it would have read) any more.
const DIRECTOR_LOCK: i64 = 0x6465_706f_7464_6972;

/// How long opening waits for another director's session to let go of the registry (a
/// restart whose old process is still on its way out).
const DIRECTOR_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The table that records which migrations a database has.
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS registry_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    sha256 text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Why a PostgreSQL registry could not be opened. Each names the database as
/// [`PostgresTarget::describe`] does, never with its password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No session could be opened.
    #[error("connecting to the registry database {database} (password {password})")]
    Connect {
        /// The database.
        database: String,
        /// Where the password came from.
        password: String,
        /// Why.
        #[source]
        source: postgres::Error,
    },
    /// The database was migrated by a newer origin.
    #[error(
        "the registry database {database} has schema version {found}, newer than this origin \
         knows ({known}): run the origin that migrated it (or a newer one)"
    )]
    SchemaNewer {
        /// The database.
        database: String,
        /// Its newest recorded migration.
        found: i32,
        /// This binary's newest.
        known: i32,
    },
    /// A recorded migration is not the one this binary has under that number.
    #[error(
        "the registry database {database} recorded migration {version} as {recorded}, which is \
         not this origin's {expected}: it was migrated by another build"
    )]
    MigrationDiffers {
        /// The database.
        database: String,
        /// The migration's number.
        version: i32,
        /// What the database recorded (name and SHA-256).
        recorded: String,
        /// What this binary has (name and SHA-256).
        expected: String,
    },
    /// Another director has the registry open.
    #[error(
        "another director has the registry database {database} open ({holder}): one director \
         per registry"
    )]
    Held {
        /// The database.
        database: String,
        /// Its session, as the server shows it (address, application, since when).
        holder: String,
    },
    /// A step of opening failed: a migration (none of them is then kept), the director's
    /// lock, preparing the session.
    #[error("the registry database {database}: {step}")]
    Step {
        /// The database.
        database: String,
        /// Which step failed.
        step: String,
        /// Why.
        #[source]
        source: postgres::Error,
    },
}

/// The statements every registry call runs, prepared once per session.
struct Statements {
    put_vehicle: Statement,
    vehicle: Statement,
    vehicles: Statement,
    put_campaign: Statement,
    campaigns: Statement,
    log_event: Statement,
    events: Statement,
    drop_events: Statement,
}

/// One connection and its prepared statements.
struct Session {
    client: Client,
    statements: Statements,
}

impl Session {
    /// Makes `client`, a new session with `database` (whose schema is up to date), ready for
    /// the registry's calls: the director's lock, durable commits, prepared statements.
    fn new(mut client: Client, database: &str) -> Result<Self, OpenError> {
        lock(&mut client, database, Some(DIRECTOR_LOCK_WAIT))?;
        Self::prepare(client, database)
    }

    /// Durable commits and the prepared statements, for a session holding the director's lock.
    fn prepare(client: Client, database: &str) -> Result<Self, OpenError> {
        Self::prepare_statements(client).map_err(|source| OpenError::Step {
            database: database.to_owned(),
            step: "preparing the session".into(),
            source,
        })
    }

    fn prepare_statements(mut client: Client) -> Result<Self, postgres::Error> {
        let synchronous: String = client
            .query_one("SHOW synchronous_commit", &[])?
            .try_get(0)?;
        if synchronous == "off" {
            tracing::warn!(
                "the registry database has synchronous_commit = off: this session turns it on \
                 (a registry write must be durable when it returns)"
            );
            client.batch_execute("SET synchronous_commit TO on")?;
        }
        let mut prepare = |sql: &str| client.prepare(sql);
        let statements = Statements {
            put_vehicle: prepare(
                "INSERT INTO vehicles (vin, region, vehicle_type, home_depot, record)
                 VALUES ($1, $2, $3, $4, $5::text::json)
                 ON CONFLICT (vin) DO UPDATE SET region = excluded.region,
                     vehicle_type = excluded.vehicle_type, home_depot = excluded.home_depot,
                     record = excluded.record",
            )?,
            vehicle: prepare("SELECT record::text FROM vehicles WHERE vin = $1")?,
            vehicles: prepare("SELECT vin, record::text FROM vehicles ORDER BY vin")?,
            put_campaign: prepare(
                "INSERT INTO campaigns (id, record) VALUES ($1, $2::text::json)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            )?,
            campaigns: prepare("SELECT id, record::text FROM campaigns ORDER BY id")?,
            log_event: prepare(
                "INSERT INTO campaign_events (campaign, seq, event) VALUES ($1, $2, $3::text::json)
                 ON CONFLICT (campaign, seq) DO UPDATE SET event = excluded.event",
            )?,
            events: prepare(
                "SELECT seq, event::text FROM campaign_events WHERE campaign = $1 ORDER BY seq",
            )?,
            drop_events: prepare("DELETE FROM campaign_events WHERE campaign = $1 AND seq <= $2")?,
        };
        Ok(Self { client, statements })
    }
}

/// The registry in a PostgreSQL database.
pub struct PostgresRegistry {
    target: PostgresTarget,
    /// The session; none after one was lost and could not be made again yet.
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for PostgresRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRegistry")
            .field("database", &self.target.describe())
            .finish_non_exhaustive()
    }
}

impl PostgresRegistry {
    /// Connects to `target` (its password resolved: [`PostgresTarget::resolve_password`]),
    /// takes the director's lock and brings the schema up to date. Blocking: call it from a
    /// plain thread or a blocking one.
    pub fn open(target: &PostgresTarget) -> Result<Self, OpenError> {
        Self::open_waiting(target, Some(DIRECTOR_LOCK_WAIT))
    }

    /// [`Self::open`] as a standby: waits as long as it takes for the director holding the
    /// registry to end, then takes over (a replica of `origin serve --standby`).
    pub fn open_standby(target: &PostgresTarget) -> Result<Self, OpenError> {
        Self::open_waiting(target, None)
    }

    fn open_waiting(
        target: &PostgresTarget,
        wait: Option<std::time::Duration>,
    ) -> Result<Self, OpenError> {
        let database = target.describe();
        let mut client = connect(target)?;
        // The lock first: a director never migrates the schema under another one.
        lock(&mut client, &database, wait)?;
        let applied = migrate(&mut client, &database)?;
        if applied > 0 {
            tracing::info!(%database, applied, "registry schema migrated");
        }
        let session = Session::prepare(client, &database)?;
        Ok(Self {
            target: target.clone(),
            session: Mutex::new(Some(session)),
        })
    }

    /// The database, as errors name it.
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    /// Runs `call` on the session; `what` names it in an error. A session found closed, or
    /// lost during the call, is made again and the call run once more.
    fn run<T>(
        &self,
        what: impl Fn() -> String,
        mut call: impl FnMut(&mut Session) -> Result<T, postgres::Error>,
    ) -> anyhow::Result<T> {
        let mut slot = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let mut retried = false;
        loop {
            if slot.as_ref().is_none_or(|s| s.client.is_closed()) {
                // Dropping the dead session here is safe: this is a thread that may block.
                *slot = None;
                let client = connect(&self.target).with_context(&what)?;
                let session = Session::new(client, &self.target.describe()).with_context(&what)?;
                *slot = Some(session);
            }
            let Some(session) = slot.as_mut() else {
                // Invariant: the slot was filled just above.
                anyhow::bail!("{}: no session", what());
            };
            match call(session) {
                Ok(value) => return Ok(value),
                Err(error) if !retried && lost(&session.client, &error) => {
                    tracing::warn!(
                        database = %self.target.describe(),
                        "{}: the session was lost ({:#}); connecting again",
                        what(),
                        anyhow::Error::new(error)
                    );
                    *slot = None;
                    retried = true;
                }
                Err(error) => return Err(anyhow::Error::new(error).context(what())),
            }
        }
    }
}

impl Drop for PostgresRegistry {
    fn drop(&mut self) {
        // The client says goodbye to the server by driving its own runtime, which tokio
        // refuses on a thread that runs async tasks (a director dropped with its service's
        // runtime): it is closed on a thread of its own.
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(session) = session {
            let closing = std::thread::Builder::new()
                .name("registry-close".into())
                .spawn(move || drop(session));
            if let Ok(closing) = closing {
                let _ = closing.join();
            }
        }
    }
}

/// Whether `error` means the session is gone (the server ended it, or the connection broke),
/// rather than that the statement failed: the client may not have seen the connection close
/// yet when the server's last word was the answer to the statement.
fn lost(client: &Client, error: &postgres::Error) -> bool {
    let ended = error.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        db.severity() == "FATAL" || code.starts_with("08") || code.starts_with("57P")
    });
    let broken =
        std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>());
    client.is_closed() || error.is_closed() || ended || broken
}

/// Takes the director's lock for `client`'s session, waiting up to `wait` (`None`: for ever, a
/// standby) for another session to let go of it.
fn lock(
    client: &mut Client,
    database: &str,
    wait: Option<std::time::Duration>,
) -> Result<(), OpenError> {
    let failed = |source| OpenError::Step {
        database: database.to_owned(),
        step: "taking the director's lock".into(),
        source,
    };
    let start = std::time::Instant::now();
    let mut said = None::<std::time::Instant>;
    loop {
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&DIRECTOR_LOCK])
            .and_then(|row| row.try_get(0))
            .map_err(failed)?;
        if taken {
            return Ok(());
        }
        match wait {
            Some(wait) if start.elapsed() >= wait => break,
            Some(_) => {}
            None => {
                if said.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60)) {
                    said = Some(std::time::Instant::now());
                    tracing::info!(
                        %database,
                        holder = %holder(client),
                        "standby: another director holds the registry; waiting to take over"
                    );
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(OpenError::Held {
        database: database.to_owned(),
        holder: holder(client),
    })
}

/// Who holds the director's lock, as pg_stat_activity says.
fn holder(client: &mut Client) -> String {
    // A bigint advisory key shows in pg_locks as its high and low halves.
    client
        .query_opt(
            "SELECT format('session %s from %s, %s, since %s', a.pid,
                        coalesce(host(a.client_addr), 'the local socket'),
                        coalesce(nullif(a.application_name, ''), 'no application name'),
                        date_trunc('second', a.backend_start))
             FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                   SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid::bigint = ($1::bigint >> 32)
               AND l.objid::bigint = ($1::bigint & 4294967295)",
            &[&DIRECTOR_LOCK],
        )
        .and_then(|row| row.map(|row| row.try_get::<_, String>(0)).transpose())
        .map_or_else(
            |error| format!("its session could not be read: {error}"),
            |holder| holder.unwrap_or_else(|| "its session has just ended".to_owned()),
        )
}

/// A session with `target`.
fn connect(target: &PostgresTarget) -> Result<Client, OpenError> {
    target.connect().map_err(|source| OpenError::Connect {
        database: target.describe(),
        password: target.password_note(),
        source,
    })
}

/// Applies the migrations `client`'s database lacks, in one transaction; returns how many.
fn migrate(client: &mut Client, database: &str) -> Result<usize, OpenError> {
    let failed = |step: &str| {
        let step = step.to_owned();
        move |source| OpenError::Step {
            database: database.to_owned(),
            step,
            source,
        }
    };
    let mut transaction = client
        .transaction()
        .map_err(failed("starting a transaction"))?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(failed("taking the migration lock"))?;
    transaction
        .batch_execute(MIGRATIONS_TABLE)
        .map_err(failed("creating registry_migrations"))?;
    let rows = transaction
        .query(
            "SELECT version, name, sha256 FROM registry_migrations ORDER BY version",
            &[],
        )
        .map_err(failed("reading registry_migrations"))?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    let mut applied = std::collections::BTreeSet::new();
    for row in rows {
        let version: i32 = row
            .try_get(0)
            .map_err(failed("reading registry_migrations"))?;
        let name: String = row
            .try_get(1)
            .map_err(failed("reading registry_migrations"))?;
        let digest: String = row
            .try_get(2)
            .map_err(failed("reading registry_migrations"))?;
        if version > known {
            return Err(OpenError::SchemaNewer {
                database: database.to_owned(),
                found: version,
                known,
            });
        }
        let ours = MIGRATIONS.iter().find(|m| m.version == version);
        if ours.is_none_or(|m| m.name != name || m.digest() != digest) {
            return Err(OpenError::MigrationDiffers {
                database: database.to_owned(),
                version,
                recorded: format!("{name} (sha256 {digest})"),
                expected: ours.map_or_else(
                    || "(none)".to_owned(),
                    |m| format!("{} (sha256 {})", m.name, m.digest()),
                ),
            });
        }
        applied.insert(version);
    }
    let mut count = 0;
    for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let step = format!("applying migration {}", migration.name);
        transaction
            .batch_execute(migration.sql)
            .map_err(failed(&step))?;
        transaction
            .execute(
                "INSERT INTO registry_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                &[&migration.version, &migration.name, &migration.digest()],
            )
            .map_err(failed(&step))?;
        count += 1;
    }
    transaction
        .commit()
        .map_err(failed("committing the migrations"))?;
    Ok(count)
}

/// A record as the text of a `json` parameter: the director writes JSON, always UTF-8.
fn json_text<'a>(bytes: &'a [u8], what: &dyn Fn() -> String) -> anyhow::Result<&'a str> {
    std::str::from_utf8(bytes).with_context(|| format!("{}: the record is not UTF-8 JSON", what()))
}

/// A sequence number as the `bigint` the log keys on.
fn seq_key(seq: u64, what: &dyn Fn() -> String) -> anyhow::Result<i64> {
    i64::try_from(seq).with_context(|| format!("{}: sequence number over 2^63", what()))
}

impl Registry for PostgresRegistry {
    fn put_vehicle(&self, vehicle: &VehicleRecord) -> anyhow::Result<()> {
        let record = serde_json::to_string(vehicle)?;
        self.run(
            || format!("storing vehicle {}", vehicle.vin),
            |s| {
                s.client.execute(
                    &s.statements.put_vehicle,
                    &[
                        &vehicle.vin.as_str(),
                        &vehicle.region,
                        &vehicle.vehicle_type,
                        &vehicle.home_depot,
                        &record,
                    ],
                )
            },
        )?;
        Ok(())
    }

    fn vehicle(&self, vin: &Vin) -> anyhow::Result<Option<VehicleRecord>> {
        let row = self.run(
            || format!("reading vehicle {vin}"),
            |s| s.client.query_opt(&s.statements.vehicle, &[&vin.as_str()]),
        )?;
        let Some(row) = row else {
            return Ok(None);
        };
        let text: String = row
            .try_get(0)
            .with_context(|| format!("reading vehicle {vin}"))?;
        Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!("the registry's record of vehicle {vin} is damaged")
        })?))
    }

    fn vehicles(&self) -> anyhow::Result<Vec<VehicleRecord>> {
        let rows = self.run(
            || "reading the vehicles".to_owned(),
            |s| s.client.query(&s.statements.vehicles, &[]),
        )?;
        rows.iter()
            .map(|row| {
                let vin: String = row.try_get(0).context("reading the vehicles")?;
                let text: String = row.try_get(1).context("reading the vehicles")?;
                serde_json::from_str(&text)
                    .with_context(|| format!("the registry's record of vehicle {vin} is damaged"))
            })
            .collect()
    }

    fn put_campaign(&self, id: &CampaignId, record: &[u8]) -> anyhow::Result<()> {
        let what = || format!("storing campaign {id}");
        let text = json_text(record, &what)?;
        self.run(what, |s| {
            s.client
                .execute(&s.statements.put_campaign, &[&id.as_str(), &text])
        })?;
        Ok(())
    }

    fn campaigns(&self) -> anyhow::Result<Vec<(CampaignId, Vec<u8>)>> {
        let rows = self.run(
            || "reading the campaigns".to_owned(),
            |s| s.client.query(&s.statements.campaigns, &[]),
        )?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0).context("reading the campaigns")?;
                let text: String = row.try_get(1).context("reading the campaigns")?;
                let id = CampaignId::parse(&id)
                    .context("the registry holds a campaign under a damaged id")?;
                Ok((id, text.into_bytes()))
            })
            .collect()
    }

    fn log_campaign_event(&self, id: &CampaignId, seq: u64, event: &[u8]) -> anyhow::Result<()> {
        let what = || format!("logging event {seq} of campaign {id}");
        let text = json_text(event, &what)?;
        let key = seq_key(seq, &what)?;
        self.run(what, |s| {
            s.client
                .execute(&s.statements.log_event, &[&id.as_str(), &key, &text])
        })?;
        Ok(())
    }

    fn campaign_events(&self, id: &CampaignId) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        let what = || format!("reading the log of campaign {id}");
        let rows = self.run(what, |s| {
            s.client.query(&s.statements.events, &[&id.as_str()])
        })?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(0).with_context(what)?;
                let text: String = row.try_get(1).with_context(what)?;
                let seq = u64::try_from(seq).with_context(|| {
                    format!("the log of campaign {id} holds a damaged sequence number {seq}")
                })?;
                Ok((seq, text.into_bytes()))
            })
            .collect()
    }

    fn drop_campaign_events(&self, id: &CampaignId, through: u64) -> anyhow::Result<()> {
        // Past the largest key is every key.
        let through = i64::try_from(through).unwrap_or(i64::MAX);
        self.run(
            || format!("dropping logged events of campaign {id}"),
            |s| {
                s.client
                    .execute(&s.statements.drop_events, &[&id.as_str(), &through])
            },
        )?;
        Ok(())
    }

    fn stored_bytes(&self) -> anyhow::Result<Option<u64>> {
        let bytes: i64 = self.run(
            || "reading the database's size".to_owned(),
            |s| {
                s.client
                    .query_one("SELECT pg_database_size(current_database())", &[])?
                    .try_get(0)
            },
        )?;
        Ok(Some(u64::try_from(bytes).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every file in `origin/migrations/` is listed, in order, under its own name, and no
    /// listed one is missing: a migration added as a file but not built in would never run.
    #[test]
    fn the_migrations_are_the_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.name))
            .collect();
        assert_eq!(files, listed);
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(migration.version).unwrap(), i + 1);
            assert!(
                migration
                    .name
                    .starts_with(&format!("{:04}_", migration.version))
            );
            assert_eq!(
                std::fs::read_to_string(dir.join(format!("{}.sql", migration.name))).unwrap(),
                migration.sql
            );
        }
    }
}
