//! Where the director's PostgreSQL registry is and how to log in to it: a libpq-style URL
//! (`postgres://USER@HOST:PORT/DATABASE?sslmode=require`), the password from the places libpq
//! looks for it (so that it never has to be on a command line), and TLS through rustls.
//!
//! TLS is never unauthenticated here. Where libpq's `prefer` and `require` accept any server
//! certificate, both check it against `sslrootcert=FILE` (the database's CA, PEM) or else
//! Mozilla's roots, and check that it names the host; `verify-full` is a synonym of `require`,
//! and `verify-ca` (a certificate for any name) is refused. A server without TLS is still
//! accepted under `prefer`, the default, as libpq does; `require` refuses it.
//!
//! Nothing here ever shows the password: errors and logs name the database as
//! [`PostgresTarget::describe`] writes it (`postgres://USER@HOST:PORT/DATABASE`).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long a connection attempt may take unless the URL says otherwise (`connect_timeout`):
/// a database that does not answer must not hang the director's start.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The application name the director's sessions carry unless the URL names one
/// (`pg_stat_activity` shows it).
const APPLICATION_NAME: &str = "origin-director";

/// Where libpq-style clients look for the server's Unix socket when a URL names no host
/// (Debian's default).
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Whether and how TLS is used to reach the database (the URL's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// `disable`: never.
    Disable,
    /// `prefer` (the default): when the server offers it, checked as under `Require`.
    Prefer,
    /// `require` or `verify-full`: always, the server's certificate checked against the roots
    /// and the host name.
    Require,
}

/// Why a registry URL, or the password for it, cannot be used. None of them holds the
/// password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// Not a `postgres://` URL.
    #[error(
        "the registry must be a postgres:// or postgresql:// URL (without one the director keeps \
         its embedded registry in DIR/registry)"
    )]
    NotAUrl,
    /// The URL does not parse (the parser's words; they never quote the password).
    #[error("the registry URL: {0}")]
    Url(String),
    /// The URL names no user.
    #[error("the registry URL names no user: postgres://USER@HOST/DATABASE")]
    NoUser,
    /// An `sslmode` this client does not offer.
    #[error(
        "the registry URL: sslmode={0} is not supported: use disable, prefer, require or \
         verify-full (TLS here always checks the certificate and the host name)"
    )]
    SslMode(String),
    /// A parameter's value is not percent-encoded UTF-8.
    #[error("the registry URL: the value of {0} is not percent-encoded UTF-8")]
    Encoding(&'static str),
    /// The `sslrootcert` file cannot be used.
    #[error("the registry URL's sslrootcert: {0}")]
    RootCert(String),
    /// The password file cannot be read.
    #[error("reading the registry password file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The password file holds no password.
    #[error("the registry password file {0} is empty")]
    EmptyPasswordFile(PathBuf),
}

/// Where the password came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PasswordSource {
    /// None was looked for yet.
    NotLooked,
    Url,
    File(PathBuf),
    Environment,
    PassFile(PathBuf),
    /// None found; the note says where it was looked for.
    None(String),
}

/// A PostgreSQL database to keep the registry in: the connection settings of its URL, the
/// password once [`resolve_password`](Self::resolve_password) found it, and the TLS settings.
#[derive(Clone)]
pub struct PostgresTarget {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    mode: TlsMode,
    /// The URL's `passfile`.
    passfile: Option<PathBuf>,
    password: PasswordSource,
}

impl fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("database", &self.describe())
            .field("tls", &self.mode)
            .field("password", &self.password_note())
            .finish_non_exhaustive()
    }
}

impl PostgresTarget {
    /// Parses a libpq-style URL: `postgres://USER[:PASSWORD]@HOST[:PORT][,HOST…]/DATABASE`
    /// with libpq's parameters (`sslmode`, `sslrootcert`, `passfile`, `connect_timeout`,
    /// `application_name`, `options`, `host=/socket/dir`, …). A URL without a host reaches
    /// the local server's socket in /var/run/postgresql.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(TargetError::NotAUrl);
        }
        // The parameters the client library does not know are taken out here (it refuses
        // unknown ones); the rest it parses.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut mode = TlsMode::Prefer;
        let mut root_cert = None;
        let mut passfile = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    mode = match percent_decode(value, "sslmode")?.as_str() {
                        "disable" => TlsMode::Disable,
                        "prefer" => TlsMode::Prefer,
                        "require" | "verify-full" => TlsMode::Require,
                        other => return Err(TargetError::SslMode(other.to_owned())),
                    }
                }
                "sslrootcert" => {
                    root_cert = Some(PathBuf::from(percent_decode(value, "sslrootcert")?));
                }
                "passfile" => passfile = Some(PathBuf::from(percent_decode(value, "passfile")?)),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: postgres::Config = rest
            .parse()
            .map_err(|e: postgres::Error| TargetError::Url(error_chain(&e)))?;
        if config.get_user().is_none_or(str::is_empty) {
            return Err(TargetError::NoUser);
        }
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            config.host_path(DEFAULT_SOCKET_DIR);
        }
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        let password = if config.get_password().is_some() {
            PasswordSource::Url
        } else {
            PasswordSource::NotLooked
        };
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(tls_config(root_cert.as_deref())?),
            mode,
            passfile,
            password,
        })
    }

    /// The database as `postgres://USER@HOST:PORT/DATABASE`: what errors and logs name. Never
    /// the password.
    pub fn describe(&self) -> String {
        let config = &self.config;
        let user = config.get_user().unwrap_or_default();
        let ports = config.get_ports();
        let port = |i: usize| match ports {
            [] => 5432,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(5432),
        };
        let hosts: Vec<String> = if config.get_hosts().is_empty() {
            config
                .get_hostaddrs()
                .iter()
                .enumerate()
                .map(|(i, addr)| format!("{addr}:{}", port(i)))
                .collect()
        } else {
            config
                .get_hosts()
                .iter()
                .enumerate()
                .map(|(i, host)| match host {
                    Host::Tcp(name) => format!("{name}:{}", port(i)),
                    Host::Unix(dir) => format!("[{}]:{}", dir.display(), port(i)),
                })
                .collect()
        };
        let database = config.get_dbname().unwrap_or(user);
        format!("postgres://{user}@{}/{database}", hosts.join(","))
    }

    /// How TLS is used.
    pub fn tls_mode(&self) -> TlsMode {
        self.mode
    }

    /// Whether the URL itself holds the password (anyone who can list processes sees a
    /// command line).
    pub fn password_in_url(&self) -> bool {
        self.password == PasswordSource::Url
    }

    /// Finds the password where libpq would, unless the URL holds one: the first line of
    /// `password_file` (e.g. `origin serve --registry-password-file`), else `PGPASSWORD`, else
    /// the line for this host, port, database and user in the URL's `passfile`, `PGPASSFILE`
    /// or `~/.pgpass` (skipped, as libpq does, if others may read it). `env` reads the
    /// environment (`std::env::var_os` outside tests). No password found is not an error: the
    /// server may not ask for one.
    pub fn resolve_password(
        &mut self,
        password_file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<(), TargetError> {
        if self.password == PasswordSource::Url {
            return Ok(());
        }
        if let Some(path) = password_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| TargetError::PasswordFile {
                    path: path.to_owned(),
                    source,
                })?;
            let password = text.lines().next().unwrap_or_default();
            if password.is_empty() {
                return Err(TargetError::EmptyPasswordFile(path.to_owned()));
            }
            self.config.password(password);
            self.password = PasswordSource::File(path.to_owned());
            return Ok(());
        }
        if let Some(password) = env("PGPASSWORD").filter(|p| !p.is_empty()) {
            self.config.password(password.as_encoded_bytes());
            self.password = PasswordSource::Environment;
            return Ok(());
        }
        let passfile = self
            .passfile
            .clone()
            .or_else(|| env("PGPASSFILE").map(PathBuf::from))
            .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".pgpass")));
        let Some(passfile) = passfile else {
            self.password = PasswordSource::None(
                "not in the URL, no password file, PGPASSWORD unset, no HOME for ~/.pgpass".into(),
            );
            return Ok(());
        };
        match self.lookup_passfile(&passfile) {
            Ok(Some(password)) => {
                self.config.password(password);
                self.password = PasswordSource::PassFile(passfile);
            }
            Ok(None) => {
                self.password = PasswordSource::None(format!(
                    "not in the URL, no password file, PGPASSWORD unset, no line for {} in {}",
                    self.describe(),
                    passfile.display()
                ));
            }
            Err(why) => {
                tracing::warn!(passfile = %passfile.display(), "{why}");
                self.password = PasswordSource::None(format!(
                    "not in the URL, no password file, PGPASSWORD unset; {}: {why}",
                    passfile.display()
                ));
            }
        }
        Ok(())
    }

    /// The password of `passfile`'s first line matching this database; an error says why the
    /// file was not read (a missing file is no error: most have none).
    fn lookup_passfile(&self, passfile: &Path) -> Result<Option<String>, String> {
        let metadata = match std::fs::metadata(passfile) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("not read: {error}")),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if metadata.permissions().mode() & 0o077 != 0 {
                return Err("ignored: others may read it (libpq's rule; chmod 600 it)".to_owned());
            }
        }
        let text = std::fs::read_to_string(passfile).map_err(|e| format!("not read: {e}"))?;
        let user = self.config.get_user().unwrap_or_default();
        let database = self.config.get_dbname().unwrap_or(user);
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(name)) => name.clone(),
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => self
                .config
                .get_hostaddrs()
                .first()
                .map(ToString::to_string)
                .unwrap_or_default(),
        };
        let unix = matches!(self.config.get_hosts().first(), Some(Host::Unix(_)));
        Ok(pgpass_lookup(&text, &host, unix, port, database, user))
    }

    /// Where the password came from, for messages (never the password).
    pub fn password_note(&self) -> String {
        match &self.password {
            PasswordSource::NotLooked => "not looked for".into(),
            PasswordSource::Url => "from the URL".into(),
            PasswordSource::File(path) => format!("from {}", path.display()),
            PasswordSource::Environment => "from PGPASSWORD".into(),
            PasswordSource::PassFile(path) => format!("from {}", path.display()),
            PasswordSource::None(note) => format!("none: {note}"),
        }
    }

    /// Connects (blocking: on a thread that does not run async tasks).
    pub(super) fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        self.config.connect(self.tls.clone())
    }
}

/// An error and its causes, as one line (the client's parse errors name the option, never the
/// value).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The rustls settings: `root_cert`'s certificates, or Mozilla's roots, as the trust anchors.
fn tls_config(root_cert: Option<&Path>) -> Result<rustls::ClientConfig, TargetError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            for cert in
                crate::tls::read_certs(path).map_err(|e| TargetError::RootCert(format!("{e:#}")))?
            {
                roots.add(cert).map_err(|e| {
                    TargetError::RootCert(format!("{}: not a CA certificate: {e}", path.display()))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TargetError::RootCert(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Percent-decodes the value of URL parameter `key`.
fn percent_decode(value: &str, key: &'static str) -> Result<String, TargetError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(TargetError::Encoding(key))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| TargetError::Encoding(key))
}

/// The password of the first line of a libpq password file (`HOST:PORT:DATABASE:USER:PASSWORD`,
/// `*` matching anything in the first four, `\:` and `\\` for a colon and a backslash, `#`
/// starting a comment line) that matches. A Unix socket's host matches `localhost` too, as
/// libpq's does.
pub(crate) fn pgpass_lookup(
    text: &str,
    host: &str,
    unix: bool,
    port: u16,
    database: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = pgpass_fields(line)?;
            let [f_host, f_port, f_database, f_user, password] = fields;
            let matches = |field: &str, value: &str| field == "*" || field == value;
            let host_matches = matches(&f_host, host) || (unix && f_host == "localhost");
            (host_matches
                && matches(&f_port, &port)
                && matches(&f_database, database)
                && matches(&f_user, user))
            .then_some(password)
        })
}

/// A password file line's five fields, unescaped; none for a line that has fewer.
fn pgpass_fields(line: &str) -> Option<[String; 5]> {
    let mut fields: Vec<String> = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut()?.push(next);
                }
            }
            // The fifth field, the password, takes the rest of the line.
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    fields.try_into().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn a_url_is_described_without_its_password() {
        let target = PostgresTarget::parse(
            "postgres://director:s3cret@db.example:6543/fleet?sslmode=disable",
        )
        .unwrap();
        assert_eq!(
            target.describe(),
            "postgres://director@db.example:6543/fleet"
        );
        assert!(target.password_in_url());
        assert!(!format!("{target:?}").contains("s3cret"));
        assert_eq!(target.tls_mode(), TlsMode::Disable);
        let target = PostgresTarget::parse("postgresql://director@a,b:7/x").unwrap();
        assert_eq!(target.describe(), "postgres://director@a:5432,b:7/x");
        assert_eq!(target.tls_mode(), TlsMode::Prefer);
        let target = PostgresTarget::parse("postgres://director@/fleet").unwrap();
        assert_eq!(
            target.describe(),
            "postgres://director@[/var/run/postgresql]:5432/fleet"
        );
        let target =
            PostgresTarget::parse("postgres://director@h/fleet?sslmode=verify-full").unwrap();
        assert_eq!(target.tls_mode(), TlsMode::Require);
    }

    #[test]
    fn bad_urls_are_named_without_their_password() {
        for (url, needle) in [
            ("mysql://root:s3cret@h/db", "postgres://"),
            ("/var/lib/registry", "postgres://"),
            ("postgres://:s3cret@h/db", "no user"),
            ("postgres://u:s3cret@h/db?sslmode=verify-ca", "verify-ca"),
            ("postgres://u:s3cret@h/db?sslmode=sometimes", "sometimes"),
            ("postgres://u:s3cret@h/db?flavour=mint", "flavour"),
            ("postgres://u:s3cret@h:port/db", "port"),
            ("postgres://u:s3cret@h/db?sslrootcert=%zz", "sslrootcert"),
            (
                "postgres://u:s3cret@h/db?sslrootcert=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
        ] {
            let error = PostgresTarget::parse(url).unwrap_err().to_string();
            assert!(error.contains(needle), "{url}: {error}");
            assert!(!error.contains("s3cret"), "{url}: {error}");
        }
    }

    #[test]
    fn the_password_comes_from_a_file_the_environment_or_a_passfile() {
        let dir = tempfile::tempdir().unwrap();
        let url = "postgres://director@db.example:6543/fleet";
        // A password file: its first line.
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let mut target = PostgresTarget::parse(url).unwrap();
        let env = |key: &str| (key == "PGPASSWORD").then(|| OsString::from("from-env"));
        target.resolve_password(Some(&file), &env).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"from-file"[..]));
        assert!(target.password_note().contains("password"));
        // PGPASSWORD, when there is no file.
        let mut target = PostgresTarget::parse(url).unwrap();
        target.resolve_password(None, &env).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"from-env"[..]));
        // The URL's own wins over both.
        let mut target = PostgresTarget::parse("postgres://director:url@h/fleet").unwrap();
        target.resolve_password(Some(&file), &env).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"url"[..]));
        // PGPASSFILE, only while others cannot read it.
        let passfile = dir.path().join("pgpass");
        std::fs::write(
            &passfile,
            "# comment\nother:*:*:*:no\ndb.example:6543:fleet:director:pass\\:word\n",
        )
        .unwrap();
        let env = |key: &str| (key == "PGPASSFILE").then(|| passfile.clone().into_os_string());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
            let mut target = PostgresTarget::parse(url).unwrap();
            target.resolve_password(None, &env).unwrap();
            assert_eq!(target.config.get_password(), None);
            assert!(target.password_note().contains("chmod 600"), "{target:?}");
            std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut target = PostgresTarget::parse(url).unwrap();
        target.resolve_password(None, &env).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"pass:word"[..]));
        // Nothing anywhere: no password, and the note says where it looked.
        let mut target = PostgresTarget::parse(url).unwrap();
        target.resolve_password(None, &no_env).unwrap();
        assert_eq!(target.config.get_password(), None);
        assert!(target.password_note().contains("PGPASSWORD"));
        // An empty or missing password file is an error naming it.
        std::fs::write(&file, "\n").unwrap();
        let mut target = PostgresTarget::parse(url).unwrap();
        let error = target.resolve_password(Some(&file), &no_env).unwrap_err();
        assert!(error.to_string().contains("empty"), "{error}");
        let missing = dir.path().join("missing");
        let error = target
            .resolve_password(Some(&missing), &no_env)
            .unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn passfile_lines_match_as_libpq_matches_them() {
        let text = "# host:port:db:user:password\n\
                    db1:5432:fleet:director:one\n\
                    *:*:fleet:director:two\n\
                    localhost:5432:*:*:three\n\
                    short:line\n\
                    db\\:x:5432:*:*:four\\\\\n";
        let look = |host, unix, port, db| pgpass_lookup(text, host, unix, port, db, "director");
        assert_eq!(look("db1", false, 5432, "fleet").as_deref(), Some("one"));
        assert_eq!(look("db2", false, 5433, "fleet").as_deref(), Some("two"));
        assert_eq!(look("db2", false, 5432, "other"), None);
        assert_eq!(
            look("/run/pg", true, 5432, "other").as_deref(),
            Some("three")
        );
        assert_eq!(
            look("db:x", false, 5432, "other").as_deref(),
            Some("four\\")
        );
    }
}
