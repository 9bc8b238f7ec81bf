//! The built `vehicle-peer` allocates with mimalloc, its arenas committing lazily: the build-time
//! default in .cargo/config.toml that keeps a fetcher's peak RSS inside its bound
//! (docs/measurements.md). mimalloc prints its options when `MIMALLOC_VERBOSE` is set.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn arenas_commit_lazily_without_any_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_vehicle-peer"))
        .arg("--version")
        .env("MIMALLOC_VERBOSE", "1")
        .env_remove("MIMALLOC_ARENA_EAGER_COMMIT")
        .env_remove("MIMALLOC_EAGER_REGION_COMMIT")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("option 'arena_eager_commit': 0"),
        "mimalloc's options as the binary printed them:\n{stderr}"
    );
}
