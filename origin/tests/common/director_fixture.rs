//! A director to test against, served over HTTPS (its origin's own certificate) on loopback
//! with the gate and clock a test gives; its operators; the browser that looks at it. Shared by
//! `tests/director.rs` and `tests/console.rs` (through `#[path]`).

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use origin::Origin;
use origin::http::{Gate, RateLimit, Shared};
use origin::service::Director;

/// A loopback port taken for the director, so that its URL is known before it serves (an
/// OpenID provider must know the console's address to redirect to it).
pub(crate) struct Bound {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) listener: tokio::net::TcpListener,
    pub(crate) url: String,
}

pub(crate) fn bind() -> Bound {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    Bound {
        runtime,
        listener,
        url,
    }
}

impl Bound {
    /// Serves `origin`'s director on it, admitting who `gate` admits, each client held to
    /// `limit`, on `clock`; returns the runtime it runs on (dropping it stops the director).
    pub(crate) fn serve(
        self,
        origin: &Origin,
        gate: Gate,
        clock: Box<dyn Fn() -> u64 + Send + Sync>,
        limit: RateLimit,
    ) -> tokio::runtime::Runtime {
        let director = Director::open(origin.clone()).unwrap();
        let shared: Arc<Shared> = Shared::with_limit(director, clock, gate, limit);
        let transport = origin::http::transport(origin, &origin::http::Listen::OriginTls).unwrap();
        self.runtime.spawn(origin::http::serve(
            self.listener,
            transport,
            shared,
            std::time::Duration::from_millis(50),
        ));
        self.runtime
    }
}

/// Adds operator `name` with `roles` (certificate and key, and an approval key for an approver
/// or operator, written under `out`).
pub(crate) fn add_operator(
    origin: &Origin,
    out: &Path,
    name: &str,
    roles: &[origin::operators::Role],
) -> origin::operators::Added {
    origin::operators::add(
        origin,
        &origin::Actor::new("admin").unwrap(),
        &name.parse().unwrap(),
        &roles.iter().copied().collect(),
        30,
        out,
    )
    .unwrap()
}

/// The browser's pin for the director's key (`--ignore-certificate-errors-spki-list`): what
/// an operator's browser policy would carry for the embedded default.
pub(crate) fn director_pin(origin: &Origin) -> String {
    origin::tls::spki_pin(&origin::tls::TlsFiles::of(origin).director_key).unwrap()
}

/// Chromium, installed from Debian's archive when missing (the test needs it; CI runs as root).
pub(crate) fn chromium() -> std::path::PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !path.is_empty() {
                return path.into();
            }
        }
    }
    let install = std::process::Command::new("sh")
        .args([
            "-c",
            "export DEBIAN_FRONTEND=noninteractive; \
             apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
             (apt-get update >/dev/null 2>&1 && \
              apt-get install -y --no-install-recommends chromium >/dev/null 2>&1)",
        ])
        .status()
        .unwrap();
    assert!(
        install.success(),
        "this test needs Chromium: `apt-get install chromium` failed (run as root, with \
         Debian's archive reachable)"
    );
    "/usr/bin/chromium".into()
}

/// Where a test's screenshots and pages go: `name` under the target directory.
pub(crate) fn output_dir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
