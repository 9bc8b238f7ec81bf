//! The log every binary writes on standard error, installed by its `main` (the libraries only
//! emit events): `RUST_LOG`, else the binary's default; colours only on a terminal; and no
//! timestamp of its own when standard error is the journal (systemd stamps each line itself).

use std::io::IsTerminal as _;
use std::os::unix::fs::MetadataExt as _;

/// Installs the log, `default` as the filter when `RUST_LOG` is not set (`warn`,
/// `warn,depot_cache=info,node=info`, …).
pub fn install(default: &str) {
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        // journald and log files keep the text as it is.
        .with_ansi(std::io::stderr().is_terminal());
    if stderr_is_journal() {
        log.without_time().init();
    } else {
        log.init();
    }
}

/// Whether standard error is systemd's journal: `JOURNAL_STREAM` names its device and inode
/// (systemd.exec(5)), which a child whose standard error went elsewhere inherits too, so both
/// are compared.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    is_stream(&stream.to_string_lossy(), stderr.dev(), stderr.ino())
}

/// Whether `JOURNAL_STREAM`'s `DEVICE:INODE` is `dev` and `ino`.
fn is_stream(stream: &str, dev: u64, ino: u64) -> bool {
    stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_the_stream_systemd_named() {
        assert!(is_stream("64768:123456", 64768, 123_456));
        assert!(!is_stream("64768:123456", 64768, 123_457));
        assert!(!is_stream("64768", 64768, 123_456));
        assert!(!is_stream("x:y", 0, 0));
    }
}
