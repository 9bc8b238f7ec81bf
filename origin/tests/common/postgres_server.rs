//! A real PostgreSQL server for the registry's tests: Debian's `postgresql` (installed with
//! apt-get when missing: CI runs as root), `initdb`'d in a temporary directory, listening on a
//! loopback port picked here and on a Unix socket in that directory, with TLS on (a CA made
//! here), started once per test binary. As root its programs run as the `postgres` user
//! (`initdb` refuses root).
//!
//! It must not outlive the test binary, however that ends (every test done, a panic, a kill):
//! statics are never dropped, so no `Drop` could stop it. The server is started by a small shell,
//! the *keeper*, whose standard input is a pipe from this process, which never writes to it; the
//! keeper waits on it. When this process exits, by any means, the kernel closes its end: the
//! keeper's `read` returns, it stops the server (immediate shutdown: nothing of it is kept),
//! waits for it and removes the directory. Keeper and server have a process group of their own, so a
//! terminal's Ctrl-C reaches only the test binary and the pipe does the rest.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The superuser `initdb` makes (local socket, no password).
pub(crate) const SUPERUSER: &str = "depotmesh";
/// The role the registry logs in as over TCP, with a password.
pub(crate) const ROLE: &str = "director";

/// The running server.
pub(crate) struct PgServer {
    /// Its loopback port.
    pub(crate) port: u16,
    /// Its directory: data, socket, certificates, log.
    pub(crate) dir: PathBuf,
    /// The CA its TLS certificate (for `localhost` and 127.0.0.1) chains to.
    pub(crate) ca: PathBuf,
    /// [`ROLE`]'s password.
    pub(crate) password: String,
    /// A file holding it (what `--registry-password-file` takes).
    pub(crate) password_file: PathBuf,
    /// The keeper, holding the pipe whose closing stops the server.
    keeper: Mutex<Child>,
}

static SERVER: OnceLock<PgServer> = OnceLock::new();

/// The test binary's server, started at the first call.
pub(crate) fn server() -> &'static PgServer {
    SERVER.get_or_init(PgServer::start)
}

/// Debian's PostgreSQL programs (the newest installed version), installed when missing.
fn bin_dir() -> PathBuf {
    if let Some(dir) = installed() {
        return dir;
    }
    let install = Command::new("sh")
        .args([
            "-c",
            "export DEBIAN_FRONTEND=noninteractive; \
             apt-get install -y --no-install-recommends postgresql >/dev/null 2>&1 || \
             (apt-get update >/dev/null 2>&1 && \
              apt-get install -y --no-install-recommends postgresql >/dev/null 2>&1)",
        ])
        .status()
        .unwrap();
    assert!(
        install.success(),
        "this test needs PostgreSQL: `apt-get install postgresql` failed (run as root, with \
         Debian's archive reachable)"
    );
    installed().expect("postgresql is installed but /usr/lib/postgresql/*/bin/initdb is not")
}

/// `/usr/lib/postgresql/N/bin` of the newest N that has `initdb`.
fn installed() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Who the server's programs run as: the `postgres` user when this process is root (uid,
/// gid), else this process's own user.
fn server_user() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id(&["-u"])? != 0 {
        return None;
    }
    Some((
        id(&["-u", "postgres"]).expect("running as root, but there is no `postgres` user"),
        id(&["-g", "postgres"]).expect("the `postgres` user has no group"),
    ))
}

/// A command that runs as the server's user, in `dir`.
fn as_server(program: &Path, dir: &Path, user: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

/// Writes `bytes` to `path`, readable by the server's user only.
fn write_private(path: &Path, bytes: &[u8], user: Option<(u32, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// The keeper: starts the server, waits for its standard input to close, stops the server and
/// removes the directory. Arguments: directory, port, programs' directory.
const KEEPER: &str = r#"
dir=$1; port=$2; bin=$3
"$bin/postgres" -D "$dir/data" -p "$port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$dir" -c ssl=on -c ssl_cert_file="$dir/server.crt" \
    -c ssl_key_file="$dir/server.key" -c max_connections=300 \
    </dev/null >"$dir/server.log" 2>&1 &
server=$!
while read -r _; do :; done
kill -QUIT "$server" 2>/dev/null
wait "$server"
rm -rf "$dir"
"#;

/// A random password (hex).
fn random_password() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// A loopback port free at the moment.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgServer {
    fn start() -> Self {
        let bin = bin_dir();
        let user = server_user();
        let dir = tempfile::Builder::new()
            .prefix("depotmesh-pg-")
            .tempdir()
            .unwrap()
            .keep();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        // initdb: the superuser gets a password (initdb asks for one when TCP logins need
        // one) but logs in over the socket without.
        let superuser_password = dir.join("superuser-password");
        write_private(&superuser_password, random_password().as_bytes(), user);
        let out = as_server(&bin.join("initdb"), &dir, user)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", SUPERUSER, "-E", "UTF8", "--no-locale", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", superuser_password.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ca = Self::certificates(&dir, user);
        // A port free now could be taken before the server binds it; the window is a few
        // milliseconds, and a failure says so.
        let port = free_port();
        let keeper = as_server(Path::new("/bin/sh"), &dir, user)
            .args(["-c", KEEPER, "keeper"])
            .arg(&dir)
            .arg(port.to_string())
            .arg(&bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        if let Err(log) = Self::wait_ready(&dir, port) {
            panic!("PostgreSQL did not start on port {port}:\n{log}");
        }
        let password = random_password();
        let password_file = dir.join("director-password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        let server = Self {
            port,
            ca,
            password,
            password_file,
            keeper: Mutex::new(keeper),
            dir,
        };
        server
            .admin("postgres")
            .batch_execute(&format!(
                "CREATE ROLE {ROLE} LOGIN PASSWORD '{}'",
                server.password
            ))
            .unwrap();
        server
    }

    /// Waits until the server takes a session on its socket; its log if it failed to start.
    fn wait_ready(dir: &Path, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if Self::socket_client(dir, port, "postgres").is_ok() {
                return Ok(());
            }
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            // (Not "FATAL": the server logs each session it refuses while starting up.)
            let failed = [
                "could not create",
                "aborting startup",
                "database system is shut down",
            ]
            .iter()
            .any(|sign| log.contains(sign));
            if failed || Instant::now() > deadline {
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn socket_client(
        dir: &Path,
        port: u16,
        database: &str,
    ) -> Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host_path(dir)
            .port(port)
            .user(SUPERUSER)
            .dbname(database)
            .connect(postgres::NoTls)
    }

    /// A CA and a server certificate for `localhost` and 127.0.0.1 (`server.crt`, `server.key`
    /// in `dir`); returns the CA's file.
    fn certificates(dir: &Path, user: Option<(u32, u32)>) -> PathBuf {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "registry test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        write_private(&dir.join("server.crt"), cert.pem().as_bytes(), user);
        write_private(
            &dir.join("server.key"),
            key.serialize_pem().as_bytes(),
            user,
        );
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        ca_file
    }

    /// A superuser session on `database`, over the socket.
    pub(crate) fn admin(&self, database: &str) -> postgres::Client {
        Self::socket_client(&self.dir, self.port, database).unwrap()
    }

    /// A new database owned by [`ROLE`], named after `hint`; returns its name.
    pub(crate) fn database(&self, hint: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let mut name: String = format!("t{n}_{hint}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        name.truncate(63);
        self.admin("postgres")
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {ROLE}"))
            .unwrap();
        name
    }

    /// The URL of `database` as [`ROLE`] over TCP, `params` appended (e.g. `sslmode=disable`).
    pub(crate) fn url(&self, database: &str, params: &str) -> String {
        let url = format!("postgres://{ROLE}@127.0.0.1:{}/{database}", self.port);
        if params.is_empty() {
            url
        } else {
            format!("{url}?{params}")
        }
    }

    /// The keeper's process id (the server runs as its child).
    pub(crate) fn keeper_pid(&self) -> u32 {
        self.keeper.lock().unwrap().id()
    }
}
